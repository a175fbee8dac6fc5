#!/bin/sh
# test.sh - the README's test command: every test tier, twice.
#
#   1. build/       optimised build, warnings are errors
#   2. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer (leaks are errors)
# In each: the cmocka unit tests and the fuzz-corpus replays (meson test),
# then the end-to-end suite (pytest against real PostgreSQL, psql, psycopg2,
# pgbench, with SLUICE_BIN pointing at that build's binary).
# Ends with one line "N passed, N failed" summing all tiers; exits 1 if
# anything failed, did not build or did not run.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip the sanitizer tier
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
QUICK=0
case "${1:-}" in
--quick) QUICK=1 ;;
"") ;;
*) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
esac
scripts/deps.sh || { echo "test.sh: dependencies missing"; echo "0 passed, 1 failed"; exit 1; }

PASSED=0
FAILED=0
LOG=$(mktemp -d /tmp/sluice-test.XXXXXX)
trap 'rm -rf "$LOG"' EXIT
START=$(date +%s)

count() {  # file pattern -> the number in the last line matching pattern, or 0
    n=$(grep -Eo "$2" "$1" | tail -1 | grep -Eo '[0-9]+' | head -1)
    echo "${n:-0}"
}

setup() {  # dir, extra meson options...
    # Always reconfigure: sources are discovered by listing at configure time.
    dir=$1; shift
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" "$@" >"$LOG/setup.log" 2>&1
    else
        rm -rf "$dir"
        meson setup "$dir" "$@" >"$LOG/setup.log" 2>&1
    fi || { tail -40 "$LOG/setup.log"; return 1; }
    ninja -C "$dir" >"$LOG/ninja.log" 2>&1 || { grep -E 'error|FAILED' "$LOG/ninja.log" | head -40; return 1; }
}

tier() {  # name dir [meson test args...]
    name=$1; dir=$2; shift 2
    echo "== $name: unit tests and fuzz corpus replay"
    meson test -C "$dir" --print-errorlogs "$@" >"$LOG/$name-unit.log" 2>&1
    rc=$?
    tail -8 "$LOG/$name-unit.log"
    ok=$(count "$LOG/$name-unit.log" '^Ok: +[0-9]+')
    fail=$(count "$LOG/$name-unit.log" '^Fail: +[0-9]+')
    to=$(count "$LOG/$name-unit.log" '^Timeout: +[0-9]+')
    up=$(count "$LOG/$name-unit.log" '^Unexpected Pass: +[0-9]+')
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + fail + to + up))
    if [ "$fail" != 0 ] || [ "$to" != 0 ]; then
        grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$LOG/$name-unit.log" || true
    fi
    if [ "$rc" != 0 ] && [ $((fail + to + up)) = 0 ]; then
        echo "meson test failed to run (exit $rc)"; tail -30 "$LOG/$name-unit.log"
        FAILED=$((FAILED + 1))
    fi

    echo "== $name: end-to-end (pytest)"
    # A hung gateway must not hang CI: the whole e2e tier gets 25 minutes.
    SLUICE_BIN="$ROOT/$dir/sluice" timeout -k 10 1500 /usr/bin/python3 -m pytest -q \
        -p no:cacheprovider tests/e2e >"$LOG/$name-e2e.log" 2>&1
    rc=$?
    grep -E '^(FAILED|ERROR) ' "$LOG/$name-e2e.log" || true
    tail -1 "$LOG/$name-e2e.log"
    # pytest's summary is its last line: "3 failed, 85 passed, 1 error in 70.5s"
    tail -1 "$LOG/$name-e2e.log" >"$LOG/$name-e2e.sum"
    ok=$(count "$LOG/$name-e2e.sum" '[0-9]+ passed')
    fail=$(count "$LOG/$name-e2e.sum" '[0-9]+ failed')
    err=$(count "$LOG/$name-e2e.sum" '[0-9]+ errors?')
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + fail + err))
    if [ "$rc" != 0 ] && [ $((fail + err)) = 0 ]; then
        [ "$rc" = 124 ] && echo "e2e tier timed out"
        echo "e2e tier did not complete (exit $rc)"; tail -30 "$LOG/$name-e2e.log"
        FAILED=$((FAILED + 1))
    elif [ "$ok" = 0 ] && [ "$fail" = 0 ]; then
        echo "e2e tier ran no tests"; FAILED=$((FAILED + 1))
    fi
    if [ "$rc" != 0 ] && [ -n "${SLUICE_TEST_VERBOSE:-}" ]; then
        cat "$LOG/$name-e2e.log"
    elif [ $((fail + err)) != 0 ]; then
        # what failed and why (the gateway's log is in the assertion text);
        # the whole log is kept for a look afterwards
        sed -n '/^=* \(ERRORS\|FAILURES\) =*$/,/short test summary/p' "$LOG/$name-e2e.log" | tail -120
        cp "$LOG/$name-e2e.log" "/tmp/sluice-e2e-$name.log" 2>/dev/null &&
            echo "(full log: /tmp/sluice-e2e-$name.log)"
    fi
}

if setup build -Dbuildtype=debugoptimized -Dwerror=true; then
    tier release build
else
    echo "build failed"; FAILED=$((FAILED + 1))
fi
if [ "$QUICK" = 0 ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    if setup build-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false; then
        tier asan build-asan --timeout-multiplier 3
    else
        echo "asan build failed"; FAILED=$((FAILED + 1))
    fi
fi
echo "== took $(( $(date +%s) - START ))s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
