#!/bin/bash
# check.sh - the CUDA backend's device check, one script for one run on a lent
# GPU machine (an H100/H200 with nvcc, gcc and python3 + torch, but none of our
# Debian libraries and no registry): build, parity tests, tiny pipelines against
# the goldens, then real-size SD-1.5 benchmarks of perflow against diffusers.
#
#   bash tests/device/check.sh            (from anywhere; writes under $OUT)
#
# Needs, carried beside the working tree: .debroot.tar.xz or .debs/ (sh ops/fetch-device-debs.sh),
# and for the diffusers side .whl/diffusers-*.whl. Writes three files to $OUT
# (default build-device/out): check.log (everything printed), build.log, and
# device_report.json (environment, each step's result, every test line, both
# sides' timings and memory, and their ratios; made by tests/device/report.py).
# Intermediate files stay in /tmp/pf-check. Each step has its own time limit,
# cut to what is left of a 560-second budget, so the whole stays under 10 minutes
# (normally about 3); a failed step is recorded and the later ones still run.
# Exit status: the number of failed steps.
#
# CHECK_BUILD_ONLY=1 stops after the build: to try the unpack-and-build flow on
# a machine without a GPU. CHECK_WORKER_ONLY=1 builds and runs only the worker
# job (it needs neither the diffusers wheel nor the goldens).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build-device/out}
W=/tmp/pf-check # intermediate files: $OUT brings back few files
rm -rf "$W"      # nothing of an earlier run may pass for this one's
mkdir -p "$OUT" "$W"
B=build-device
R=/tmp/debroot
MODELS=/tmp/pf-models
T0=$(date +%s)
DEADLINE=$((T0 + 560))
: > "$W/steps.txt"
failed=0

# limit CAP: a step's timeout, CAP seconds or what is left of the budget (at least 15).
limit() {
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -lt "$1" ] && set -- "$left"
    [ "$1" -lt 15 ] && set -- 15
    echo "$1"
}

step() { echo; echo "=== [$(($(date +%s) - T0))s] $*"; }
# record NAME RC: one line per step in steps.txt, read back by the report.
record() {
    echo "$1 $2 $(($(date +%s) - T0))" >> "$W/steps.txt"
    if [ "$2" -ne 0 ]; then
        failed=$((failed + 1))
        echo "--- step $1 FAILED (exit $2)"
    fi
}

main() {
step "environment"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee "$W/gpu.txt"
nvcc --version | tail -2
gcc --version | head -1
python3 --version
nproc

step "unpack .debs into $R"
rm -rf "$R"
mkdir -p "$R"
n=0
if [ -f .debroot.tar.xz ]; then # ops/fetch-device-debs.sh: the packages already unpacked and pruned
    for t in .debroot.tar.xz .debroot-worker.tar.xz; do
        [ -f $t ] && python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' $t "$R" &&
            echo "unpacked $t"
    done
    n=packed
fi
[ "$n" = packed ] || for f in .debs/*.deb; do
    [ -e "$f" ] || { echo "no .debs/: run 'sh ops/fetch-device-debs.sh' here and carry .debs"; break; }
    if command -v dpkg >/dev/null; then
        dpkg -x "$f" "$R"
    else # a Debian package is an ar archive holding data.tar.xz
        ar p "$f" data.tar.xz | tar -xJ -C "$R"
    fi
    n=$((n + 1))
done
echo "$n packages unpacked"
ML=$R/usr/lib/x86_64-linux-gnu
# Debian's alternatives (cblas.h, libopenblas.so) are not set up by dpkg -x: name
# the openblas-pthread folder itself.
EXTRA_CFLAGS="-I$R/usr/include -I$R/usr/include/x86_64-linux-gnu -I$R/usr/include/x86_64-linux-gnu/openblas-pthread"
EXTRA_LDFLAGS="-L$ML/openblas-pthread -L$ML -Wl,-rpath,$ML/openblas-pthread:$ML"
# For running what we built: libopenblas needs libgfortran from $ML too (a
# dependency of a dependency, which an executable's RUNPATH does not cover).
# Set only for our binaries, never for python (torch brings its own libraries).
RUN_LD="$ML/openblas-pthread:$ML${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MAKE=make
command -v make >/dev/null || MAKE=$R/usr/bin/make

step "build ($MAKE -j16)"
timeout "$(limit 240)" $MAKE -j16 -k B=$B BIN=$B/bin EXTRA_CFLAGS="$EXTRA_CFLAGS" EXTRA_LDFLAGS="$EXTRA_LDFLAGS" info \
    $B/bin/perflow $B/bin/perflow-worker $B/bin/perflow-dev-broker $B/tests/test_cuda_ops $B/tests/test_cuda_pipeline \
    $B/bench/bench_gpu > "$OUT/build.log" 2>&1
rc=$?
grep -E "warning:|error:|\*\*\*|perflow build" "$OUT/build.log" | head -40
record build $rc
if [ "${CHECK_BUILD_ONLY:-0}" = 1 ]; then
    ls -l $B/bin/perflow $B/tests/test_cuda_ops $B/tests/test_cuda_pipeline $B/bench/bench_gpu
    return $failed
fi

if [ "${CHECK_WORKER_ONLY:-0}" != 1 ]; then
step "test_cuda_ops: every op against the CPU backend"
LD_LIBRARY_PATH=$RUN_LD OMP_NUM_THREADS=16 PERFLOW_ROOT=$ROOT timeout "$(limit 150)" $B/tests/test_cuda_ops > "$W/test_cuda_ops.txt" 2>&1
rc=$?
cat "$W/test_cuda_ops.txt"
record test_cuda_ops $rc

step "test_cuda_pipeline: tiny models and pipelines against the diffusers goldens"
LD_LIBRARY_PATH=$RUN_LD OMP_NUM_THREADS=16 PERFLOW_ROOT=$ROOT PERFLOW=$ROOT/$B/bin/perflow timeout "$(limit 150)" \
    $B/tests/test_cuda_pipeline > "$W/test_cuda_pipeline.txt" 2>&1
rc=$?
cat "$W/test_cuda_pipeline.txt"
record test_cuda_pipeline $rc

step "diffusers: install the carried wheel"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    record wheel $?
else
    echo "no .whl/ carried: relying on an installed diffusers"
fi

step "diffusers: random SD-1.5 folder and timings (fp16, SDPA)"
PYTHONUNBUFFERED=1 timeout "$(limit 260)" python3 tests/device/bench_diffusers.py --models $MODELS --out "$W/diffusers.json"
record bench_diffusers $?

step "perflow: the same shapes on the CUDA backend"
if [ -f $MODELS/sd15-random/model_index.json ]; then
    LD_LIBRARY_PATH=$RUN_LD timeout "$(limit 200)" $B/bench/bench_gpu $MODELS/sd15-random 10 > "$W/perflow.json"
    record bench_gpu $?
else
    echo "no model folder: bench_diffusers.py failed before writing it"
    record bench_gpu 1
fi

step "perflow: time per op of a 4-step 512 px CFG image at batch 1 and 8 (PERFLOW_PROFILE=1)"
if [ -f $MODELS/sd15-random/model_index.json ]; then
    LD_LIBRARY_PATH=$RUN_LD PERFLOW_PROFILE=1 timeout "$(limit 90)" $B/bench/bench_gpu $MODELS/sd15-random 1 profile \
        > "$W/profile.json"
    record profile $?
    cat "$W/profile.json"
else
    record profile 1
fi

step "SDXL: diffusers at 1024 px (fp16, PeRFlow sampler), then perflow on the same folder"
PYTHONUNBUFFERED=1 timeout "$(limit 200)" python3 tests/device/bench_diffusers_sdxl.py --models $MODELS \
    --out "$W/diffusers_sdxl.json"
record bench_diffusers_sdxl $?
if [ -f $MODELS/sdxl-random/model_index.json ]; then
    LD_LIBRARY_PATH=$RUN_LD timeout "$(limit 200)" $B/bench/bench_gpu $MODELS/sdxl-random 3 sdxl > "$W/perflow_sdxl.json"
    record bench_gpu_sdxl $?
else
    record bench_gpu_sdxl 1
fi

fi # CHECK_WORKER_ONLY

step "the worker on the GPU: one refine job through the dev broker, Redis and perflow-worker (ops/worker-demo.sh)"
# redis-server and redis-cli come from the unpacked packages; any python3 serves the model.
if [ ! -x $B/bin/perflow-worker ]; then
    echo "skipped: no worker was built (carry .debroot-worker.tar.xz from ops/fetch-device-debs.sh)"
else
PY=$(command -v python3) BIN=$B/bin WORKER_DEMO_OUT="$W/worker-demo" DEMO_WAIT_S=30 DEMO_JOB_TIMEOUT_S=90 \
    LD_LIBRARY_PATH=$RUN_LD PATH=$PATH:$R/usr/bin:$R/usr/sbin PERFLOW_DEVICE=cuda \
    timeout "$(limit 150)" sh ops/worker-demo.sh > "$W/worker_demo.txt" 2>&1
rc=$?
cat "$W/worker_demo.txt"
tail -20 "$W/worker-demo/worker.log" 2>/dev/null
ls -l "$W/worker-demo/images" 2>/dev/null
record worker_demo $rc
fi

step "report"
python3 tests/device/report.py "$W" "$OUT/device_report.json"
record report $?
echo
echo "=== done in $(($(date +%s) - T0))s, $failed failed step(s); steps:"
cat "$W/steps.txt"
return $failed
}

# tee through a pipe, not a process substitution: the pipe is waited for, so
# check.log is complete when the script exits.
main 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
