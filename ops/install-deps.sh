#!/bin/sh
# install-deps.sh - installs what perflow builds and tests with, on Debian 12.
#   sh ops/install-deps.sh              Debian packages + .venv with the test tools
#   sh ops/install-deps.sh --reference  also the reference stack (torch, diffusers,
#                                       transformers; several GB) for goldens and benchmarks
# Installs only what is missing, so it is cheap to run again.
set -e
cd "$(dirname "$0")/.."
PKGS="build-essential pkg-config clang libclang-rt-14-dev libopenblas-dev libjansson-dev
      libutf8proc-dev libpng-dev libcmocka-dev python3-venv"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ "$1" = "--reference" ]; then
    .venv/bin/pip install -q -r tests/reference/requirements.txt
    # open_clip ships the original CLIP BPE vocabulary; installed without its
    # dependencies (ftfy among them would change CLIPTokenizer's text cleanup).
    .venv/bin/pip install -q --no-deps -r tests/reference/requirements-nodeps.txt
fi
