#!/bin/sh
# fetch-device-debs.sh - downloads into .debs/ the Debian packages (runtime + dev)
# that the engine, its tests and its benches link against, and those of the CLI,
# the worker and its services (librdkafka, hiredis, libcurl, redis-server) for the
# device check's worker job, for a machine that lacks
# them and cannot reach a registry: the lent GPU machine. tests/device/check.sh
# unpacks them with `dpkg -x` into /tmp/debroot (never into /) and builds against
# that tree through EXTRA_CFLAGS / EXTRA_LDFLAGS.
#
# Run from the repository root on a Debian/Ubuntu x86-64 machine with apt:
#     sh ops/fetch-device-debs.sh
# .debs/ and .debroot*.tar.xz (the same, unpacked and pruned: what the device run
# carries) are git-ignored; name .debroot.tar.xz (and .debroot-worker.tar.xz for the
# worker job) in the device run's carry list.
set -e
cd "$(dirname "$0")/.."
# The engine, its tests and benches (the device check's core steps).
PKGS="libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libgfortran5 libquadmath0
      libjansson4 libjansson-dev libutf8proc2 libutf8proc-dev libpng16-16 libpng-dev
      libjpeg62-turbo libjpeg62-turbo-dev
      libcmocka0 libcmocka-dev zlib1g-dev make"
# The CLI, the worker and its services, for the worker job (the rest of their
# runtime dependencies, TLS and compression libraries, are taken from the machine).
PKGS_WORKER="librdkafka1 librdkafka-dev libhiredis0.14 libhiredis-dev libcurl4 libcurl4-openssl-dev
      libssl3 libssl-dev libsystemd0 libsystemd-dev libmicrohttpd12 libmicrohttpd-dev
      libssh2-1 libldap-2.5-0 libsasl2-2 libsasl2-modules-db
      redis-server redis-tools libjemalloc2 liblzf1
      libarchive13 libarchive-dev libxml2 libicu72 libacl1"
mkdir -p .debs
cd .debs
rm -f ./*.deb
# apt-get download fetches exactly these packages (no dependencies) for this
# machine's architecture, without installing anything.
# shellcheck disable=SC2086
apt-get download $PKGS
mkdir -p worker
(cd worker && rm -f ./*.deb && apt-get download $PKGS_WORKER)
ls -l ./*.deb | awk '{ s += $5; print } END { printf "%.1f MiB in .debs/\n", s / 1048576 }'
# The device tool carries at most 64 MiB with the working tree: the same packages
# unpacked, without docs, static libraries and unused programs, fit in a third:
# .debroot.tar.xz (the engine's) and .debroot-worker.tar.xz (the worker's).
cd ..
pack() { # pack OUT DEB...: the packages unpacked into one pruned tree, xz-compressed
    out=$1
    shift
    R=$(mktemp -d)
    for f in "$@"; do dpkg -x "$f" "$R"; done
    rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/locale" "$R/usr/share/lintian" "$R/usr/share/info" \
        "$R/usr/bin/redis-check-aof" "$R/usr/bin/redis-benchmark" "$R"/usr/lib/x86_64-linux-gnu/openblas-pthread/liblapack.so*
    find "$R" -name '*.a' -delete
    tar -cf - -C "$R" . | xz -9 -T2 > "$out"
    rm -rf "$R"
    ls -l "$out"
}
pack .debroot.tar.xz .debs/*.deb
pack .debroot-worker.tar.xz .debs/worker/*.deb
