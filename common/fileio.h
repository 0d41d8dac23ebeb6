/* fileio.h - writing files whole: every byte of a buffer, and a file written
 * aside (a temporary name in the same folder) put in place, so that a reader of
 * the final name never sees half of it.
 *
 * Used by the safetensors writer and by storage's cache. */
#ifndef PF_FILEIO_H
#define PF_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Writes the n bytes at buf to fd, going on after short writes and EINTR.
 * Returns 0, or -1 when a write fails (errno says why: ENOSPC, EFBIG, EIO,
 * ...), after which fd may hold any prefix of the bytes. */
int pf_write_all(int fd, const void *buf, size_t n);

/* Puts the file written aside at tmp, still open as fd, in place at path:
 * fsync(fd), then rename(tmp, path), so that path holds its old content or all
 * of the new, never a part. fd stays open (a caller may hold a lock on it, or
 * read on) and is the caller's to close; making the rename itself durable
 * (fsync of the folder) is the caller's choice too. Returns 0, or -1 with err
 * naming the file and the cause ("TMP: write failed: ...", "PATH: cannot
 * rename TMP into place: ..."); path is then as it was, and removing tmp is
 * the caller's part of its cleanup. */
int pf_fsync_rename(int fd, const char *tmp, const char *path, pf_error *err);

/* The cap on every JSON or text file the engine reads whole (tokenizer
 * vocab.json and merges.txt, config.json, scheduler and tokenizer configs,
 * weight indexes) and on a safetensors header: PERFLOW_MAX_JSON_BYTES (bytes,
 * read once), default PF_TEXT_LIMIT_DEFAULT. Real files are far smaller (CLIP's
 * vocab.json is 1 MB, an SDXL UNet's safetensors header under 1 MB); without a
 * cap a 50 MB vocab.json took 1 GB of memory and a 100 MiB header 2 GB. */
#define PF_TEXT_LIMIT_DEFAULT (16u << 20)
size_t pf_text_limit(void);

/* Reads the regular file at path whole into a malloc'd buffer with a NUL after
 * its *len bytes. A file over max bytes is refused from its size, before
 * anything is read; that and a path that is not a regular file are errors of
 * kind PF_ERROR_PERMANENT. found NULL: a missing file is an error; else it is
 * not, and *found says whether the file was there (*out NULL when not). On
 * error -1 with err naming the file, *out NULL. */
int pf_read_whole_file(uint8_t **out, size_t *len, const char *path, size_t max, int *found, pf_error *err);

/* Reads the file at path whole into a malloc'd, NUL-terminated buffer (*len
 * excludes the NUL). Error naming the file when it cannot be read or is over
 * pf_text_limit(), checked from its size before anything is read. */
int pf_read_text_file(char **out, size_t *len, const char *path, pf_error *err);

#endif
