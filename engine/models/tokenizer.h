/* tokenizer.h - the CLIP byte-level BPE tokenizer, id for id equal to
 * transformers' slow CLIPTokenizer (4.57, without ftfy, as diffusers runs it).
 *
 * The pipeline, in the order transformers applies it:
 *   1. split the text on added tokens (the special tokens, e.g. "<|endoftext|>",
 *      or "!" for SD-2.x tokenizers whose pad token is "!"); those map to
 *      their ids directly, the pieces between go through steps 2-5;
 *   2. BasicTokenizer: drop U+0000, U+FFFD and category C* (but turn \t \n \r
 *      and Zs into spaces), put spaces around CJK ideographs, NFC, split on
 *      whitespace, Python str.lower() each word (U+0130 -> "i" U+0307, final sigma);
 *   3. the CLIP regex: <|startoftext|> | <|endoftext|> | 's 't 're 've 'm 'll 'd
 *      (ignoring case) | letter runs | one digit | runs of other characters;
 *   4. each piece's UTF-8 bytes as bytes_to_unicode symbols, the last one with
 *      "</w>", merged by BPE rank (merges.txt order);
 *   5. symbols to ids through vocab.json.
 * Unicode data comes from utf8proc, pinned to the oracle's Unicode 14.0 (Python
 * 3.11) where utf8proc 2.8 knows newer characters; see tokenizer.c. */
#ifndef PF_TOKENIZER_H
#define PF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct pf_tokenizer pf_tokenizer;

typedef struct pf_tokenizer_info {
    int32_t bos_id;       /* "<|startoftext|>" in CLIP */
    int32_t eos_id;       /* "<|endoftext|>" */
    int32_t pad_id;       /* eos_id for SD-1.x, the id of "!" (0) for SD-2.x */
    int32_t unk_id;       /* for symbols missing from vocab.json (never with CLIP's own) */
    int model_max_length; /* tokenizer_config.json's, 77 when absent */
    int vocab_size;       /* entries in vocab.json */
} pf_tokenizer_info;

/* Loads a tokenizer directory as CLIPTokenizer.from_pretrained does: DIR/vocab.json
 * and DIR/merges.txt (required), DIR/tokenizer_config.json and
 * DIR/special_tokens_map.json (optional: special tokens, added tokens,
 * model_max_length; defaults are CLIPTokenizer's). On success *out owns the
 * tokenizer (free with pf_tokenizer_free) and 0 is returned. On error -1 is
 * returned, *out is NULL and err names the file (and line, where there is one). */
int pf_tokenizer_load(pf_tokenizer **out, const char *dir, pf_error *err);

/* Frees a tokenizer; NULL is allowed. */
void pf_tokenizer_free(pf_tokenizer *tok);

/* Special ids and sizes; valid while tok lives. */
const pf_tokenizer_info *pf_tokenizer_get_info(const pf_tokenizer *tok);

/* Tokenizes NUL-terminated UTF-8 text without BOS, EOS, truncation or padding,
 * like convert_tokens_to_ids(tokenize(text)). On success *ids_out is a
 * malloc'ed array the caller frees (non-NULL even when *n_out is 0) and 0 is
 * returned. Text that is not valid UTF-8 (Python strings cannot hold it) returns
 * -1 with the byte offset in err and leaves *ids_out NULL. Time is O(n log n)
 * in the text length, whatever the text. */
int pf_tokenizer_tokenize(const pf_tokenizer *tok, const char *text, int32_t **ids_out, size_t *n_out,
                          pf_error *err);

/* Writes exactly max_length ids to ids: BOS, the text's tokens truncated to
 * max_length - 2, EOS, then pad ids; that is tokenizer(text,
 * padding="max_length", max_length=max_length, truncation=True).input_ids.
 * Only the tokens that fit are computed, so huge texts cost little. Returns 0,
 * or -1 with err set for invalid UTF-8 or max_length < 2 (ids then undefined). */
int pf_tokenizer_encode(const pf_tokenizer *tok, const char *text, int32_t *ids, int max_length, pf_error *err);

#endif
