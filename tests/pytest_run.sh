# pytest_run.sh - what the wrappers of the pytest suites against real servers
# (tests/test_storage.sh, tests/test_worker.sh) share; sourced by them, not run.
#
# Sets ROOT (the repository: $PERFLOW_ROOT, else the folder above the calling
# script's) and PY (its .venv's python), and defines:
#   pytest_need MODULE... -- TOOL...   exits 1 with a line saying what to install
#                                      unless PY imports every MODULE and every
#                                      TOOL is on the PATH or in /usr/sbin
#   pytest_perflow                     exports PERFLOW (default bin/perflow) as an
#                                      absolute path
#   pytest_run SUITE SIGNAL [ARG...]   runs pytest on tests/SUITE with ARGs in a
#                                      scratch folder of its own; its summary line
#                                      (and each skip's reason) is printed and its
#                                      exit status returned (the wrapper's last command)
# The servers the suites start register their pids in $PERFLOW_TEST_PIDDIR;
# pytest_run sends SIGNAL to the process group of each that a crashed or
# interrupted run left behind, on the way out.
ROOT=${PERFLOW_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
PY=$ROOT/.venv/bin/python

pytest_need() {
    imports='' names='' last=''
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        imports="${imports:+$imports, }$1"
        [ -n "$last" ] && names="${names:+$names, }$last"
        last=$1
        shift
    done
    [ $# -gt 0 ] && shift
    if ! "$PY" -c "import $imports" 2>/dev/null; then
        echo "FAIL: $PY lacks ${names:+$names or }$last: run 'sh ops/install-deps.sh'"
        exit 1
    fi
    for tool in "$@"; do
        command -v "$tool" > /dev/null || [ -x "/usr/sbin/$tool" ] ||
            { echo "FAIL: $tool is not installed: run 'sh ops/install-deps.sh'"; exit 1; }
    done
    export PATH="$PATH:/usr/sbin" PYTHONDONTWRITEBYTECODE=1
}

pytest_perflow() {
    export PERFLOW="${PERFLOW:-$ROOT/bin/perflow}"
    case "$PERFLOW" in /*) ;; *) PERFLOW="$ROOT/$PERFLOW" ;; esac
}

pytest_cleanup() {
    for f in "$PERFLOW_TEST_PIDDIR"/*; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "-$pytest_signal" -- "-$pid" 2>/dev/null || kill "-$pytest_signal" "$pid" 2>/dev/null
    done
    rm -rf "$PERFLOW_TEST_PIDDIR"
}

pytest_run() {
    suite=$1 pytest_signal=$2
    shift 2
    PERFLOW_TEST_PIDDIR=$(mktemp -d)
    export PERFLOW_TEST_PIDDIR
    pytest_pid=
    trap pytest_cleanup EXIT
    trap '[ -n "$pytest_pid" ] && kill -TERM "$pytest_pid" 2>/dev/null; exit 130' INT TERM
    cd "$ROOT/tests/$suite" || exit 1
    # A scratch folder of this run's own: pytest's default one under /tmp keeps
    # only the last three runs of a user, so concurrent runs delete each other's
    # live files. Kept when the run fails (its logs), removed when it passes.
    pytest_tmp=$(mktemp -d "${TMPDIR:-/tmp}/perflow-pytest.XXXXXX")
    # -rs: each skip with its reason in the summary (tests/run_tests.sh counts them)
    "$PY" -m pytest -q -rs -p no:cacheprovider -o console_output_style=classic --durations=5 \
        --basetemp="$pytest_tmp/t" "$@" . &
    pytest_pid=$!
    wait "$pytest_pid"
    pytest_rc=$?
    if [ "$pytest_rc" -eq 0 ]; then rm -rf "$pytest_tmp"; else echo "scratch files kept in $pytest_tmp"; fi
    return "$pytest_rc"
}
