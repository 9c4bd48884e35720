#!/usr/bin/env bash
# Runs the test suite against a C core built with AddressSanitizer and
# UndefinedBehaviorSanitizer, then rebuilds the ordinary core.
#
#   tools/sanitize.sh [pytest arguments]      (default: the whole suite)
#
# The core is built with SHMMAP_SANITIZE=1 (cext/build.py): -fsanitize=
# address,undefined and -fno-wrapv, since Python's -fwrapv would hide
# signed overflow. The interpreter is not built with ASan, so libasan is
# preloaded into it (and, inherited, into every daemon and client process
# the tests start). Python keeps memory until exit by design: leak checks
# are off. ASan leaves SIGSEGV and SIGBUS alone: tests expect them (a write
# through a read-only mapping); its checks do not need them. Every report, from any process, is written under a log
# directory; the run fails if there is one, whatever pytest says.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CC=${CC:-cc}

rebuild() { "$PY" -m pip install -q -e '.[test]'; }
trap rebuild EXIT
SHMMAP_SANITIZE=1 "$PY" -m pip install -q -e '.[test]'

logs=$(mktemp -d "${TMPDIR:-/tmp}/shmmap-sanitize.XXXXXX")
status=0
LD_PRELOAD="$("$CC" -print-file-name=libasan.so)" \
ASAN_OPTIONS="detect_leaks=0:handle_segv=0:handle_sigbus=0:abort_on_error=1:log_path=$logs/asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan" \
    "$PY" -m pytest -q "$@" || status=$?

if compgen -G "$logs/*" > /dev/null; then
    echo "sanitizer reports (in $logs):" >&2
    cat "$logs"/* >&2
    exit 1
fi
rmdir "$logs"
echo "no sanitizer reports"
exit "$status"
