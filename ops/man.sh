#!/bin/sh
# man.sh - man pages from the programs' own --help texts, for `make install`:
#   sh ops/man.sh BINDIR OUTDIR
# writes OUTDIR/perflow.1, OUTDIR/perflow-COMMAND.1 for each subcommand that
# `perflow --help` lists, OUTDIR/perflow-worker.1 and OUTDIR/perflow-dev-broker.1.
# The --help text is the documentation (kept next to the code it describes); a
# page holds it verbatim (no-fill), so `man perflow-submit` shows what
# `perflow submit --help` shows.
set -e
BIN=$1
OUT=$2
[ -x "$BIN/perflow" ] && [ -d "$OUT" ] || {
    echo "usage: sh ops/man.sh BINDIR OUTDIR (BINDIR holding the built perflow programs)" >&2
    exit 2
}
date=$(date -u +%Y-%m-%d)

# page NAME SUMMARY < help text
page() {
    {
        printf '.TH %s 1 "%s" perflow "perflow manual"\n' "$(echo "$1" | tr a-z A-Z)" "$date"
        printf '.SH NAME\n%s \\- %s\n.SH DESCRIPTION\n.nf\n' "$1" "$2"
        # roff: a leading dot or quote would be a request; backslashes are escapes
        sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
        printf '.fi\n.SH SEE ALSO\nperflow(1), perflow-worker(1); the README.md and ops/README.md of the sources.\n'
    } > "$OUT/$1.1"
}

"$BIN/perflow" --help | page perflow "PeRFlow Stable Diffusion: generate, refine, submit jobs to the worker fleet"
"$BIN/perflow" --help | sed -n 's/^  \([a-z][a-z]*\)  *\(.*\)$/\1 \2/p' | while read -r cmd summary; do
    "$BIN/perflow" "$cmd" --help | page "perflow-$cmd" "$summary"
done
"$BIN/perflow-worker" --help | page perflow-worker "the PeRFlow generation worker: Kafka jobs in, images and statuses out"
"$BIN/perflow-dev-broker" --help | page perflow-dev-broker "a Kafka broker for development and tests only"
