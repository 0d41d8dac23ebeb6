#!/bin/sh
# install-deps.sh - installs what perflow builds and tests with, on Debian 12.
#   sh ops/install-deps.sh              Debian packages + .venv with the test tools,
#                                       the CUDA compile toolchain (.cuda), Apache Kafka (.kafka)
#   sh ops/install-deps.sh --reference  also the reference stack (torch, diffusers,
#                                       transformers; several GB) for goldens and benchmarks
# Installs only what is missing, so it is cheap to run again.
set -e
cd "$(dirname "$0")/.."
PKGS="build-essential pkg-config libarchive-dev clang libclang-rt-14-dev libomp-14-dev libopenblas-dev libjansson-dev
      libutf8proc-dev libpng-dev libjpeg62-turbo-dev libcmocka-dev python3-venv
      libcurl4-openssl-dev libhiredis-dev libssl-dev redis-server nginx-light curl openssl
      librdkafka-dev libsystemd-dev libmicrohttpd-dev systemd procps socat iproute2 util-linux man-db
      openjdk-17-jre-headless maven"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    # redis-server and nginx are for the tests, which start their own on free
    # ports: keep the packages from starting system-wide ones where no init
    # policy says otherwise.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d > /dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing || { [ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import moto, boto3, pytest, confluent_kafka, jsonschema, prometheus_client, PIL" 2>/dev/null; then
    echo "installing the test tools into .venv (tests/requirements.txt)"
    .venv/bin/pip install -q -r tests/requirements.txt
fi
# The CUDA compile toolchain (nvcc, the runtime and its headers, cuBLAS) from NVIDIA's
# PyPI wheels into .cuda/ (pinned in ops/cuda-requirements.txt), so that the kernels
# compile and link on machines without a CUDA toolkit; the Makefile finds nvcc there.
# The wheels ship only versioned libraries (libcudart.so.13): the link names -lcudart
# and -lcublas need the unversioned links made here. PERFLOW_NO_CUDA_TOOLCHAIN=1 skips it.
CUDA_TOP=.cuda/nvidia/cu13
if [ "${PERFLOW_NO_CUDA_TOOLCHAIN:-0}" != 1 ] && [ ! -x "$CUDA_TOP/bin/nvcc" ]; then
    echo "installing the CUDA compile toolchain into .cuda (ops/cuda-requirements.txt)"
    rm -rf .cuda
    .venv/bin/pip install -q --no-deps --target .cuda -r ops/cuda-requirements.txt
fi
if [ -d "$CUDA_TOP/lib" ]; then
    for l in cudart cublas cublasLt; do
        [ -e "$CUDA_TOP/lib/lib$l.so" ] || ln -s "lib$l.so.13" "$CUDA_TOP/lib/lib$l.so"
    done
fi
# Apache Kafka, the broker the worker suites and `make chaos` run against (ops/kafka.sh):
# the jars of the version ops/kafka/pom.xml pins, from Maven Central into .kafka/libs.
# Copied again only when the pom changes (its checksum is kept beside the jars).
KAFKA_POM_SUM=$(sha256sum ops/kafka/pom.xml | cut -d' ' -f1)
if [ "$(cat .kafka/libs/.pom-sha256 2>/dev/null)" != "$KAFKA_POM_SUM" ]; then
    echo "installing Apache Kafka into .kafka/libs (ops/kafka/pom.xml)"
    rm -rf .kafka/libs
    (cd ops/kafka && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$PWD/../../.kafka/libs")
    echo "$KAFKA_POM_SUM" > .kafka/libs/.pom-sha256
fi
if [ "$1" = "--reference" ]; then
    .venv/bin/pip install -q -r tests/reference/requirements.txt
    # open_clip ships the original CLIP BPE vocabulary; installed without its
    # dependencies (ftfy among them would change CLIPTokenizer's text cleanup).
    .venv/bin/pip install -q --no-deps -r tests/reference/requirements-nodeps.txt
fi
