#!/bin/sh
# fetch-device-debs.sh - downloads into .debs/ the Debian packages (runtime + dev)
# that the engine, its tests and its benches link against, for a machine that lacks
# them and cannot reach a registry: the lent GPU machine. tests/device/check.sh
# unpacks them with `dpkg -x` into /tmp/debroot (never into /) and builds against
# that tree through EXTRA_CFLAGS / EXTRA_LDFLAGS.
#
# Run from the repository root on a Debian/Ubuntu x86-64 machine with apt:
#     sh ops/fetch-device-debs.sh
# .debs/ is git-ignored; name it in the device run's carry list.
set -e
cd "$(dirname "$0")/.."
PKGS="libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libgfortran5 libquadmath0
      libjansson4 libjansson-dev libutf8proc2 libutf8proc-dev libpng16-16 libpng-dev
      libjpeg62-turbo libjpeg62-turbo-dev
      libcmocka0 libcmocka-dev zlib1g-dev make"
mkdir -p .debs
cd .debs
rm -f ./*.deb
# apt-get download fetches exactly these packages (no dependencies) for this
# machine's architecture, without installing anything.
# shellcheck disable=SC2086
apt-get download $PKGS
ls -l ./*.deb | awk '{ s += $5; print } END { printf "%.1f MiB in .debs/\n", s / 1048576 }'
