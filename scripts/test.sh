#!/bin/sh
# test.sh - the README's test command: every test tier, twice.
#
#   1. build/       optimised build, warnings are errors
#   2. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer
# In each: the cmocka unit tests and the fuzz-corpus replays (meson test),
# then the end-to-end suite (pytest against real PostgreSQL, psql, psycopg2,
# pgbench). Ends with one line "N passed, N failed".
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip the sanitizer tier
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
scripts/deps.sh || { echo "test.sh: dependencies missing"; exit 1; }

PASSED=0
FAILED=0
LOG=$(mktemp -d /tmp/sluice-test.XXXXXX)
trap 'rm -rf "$LOG"' EXIT

count() {  # file pattern -> number
    n=$(grep -Eo "$2" "$1" | tail -1 | grep -Eo '[0-9]+' | head -1)
    echo "${n:-0}"
}

setup() {  # dir, extra meson options...
    dir=$1; shift
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" "$@" >"$LOG/setup.log" 2>&1
    else
        rm -rf "$dir"
        meson setup "$dir" "$@" >"$LOG/setup.log" 2>&1
    fi || { cat "$LOG/setup.log"; return 1; }
    ninja -C "$dir" >"$LOG/ninja.log" 2>&1 || { tail -40 "$LOG/ninja.log"; return 1; }
}

tier() {  # name dir
    name=$1; dir=$2
    echo "== $name: unit tests and fuzz corpus replay"
    meson test -C "$dir" --print-errorlogs >"$LOG/$name-unit.log" 2>&1
    tail -8 "$LOG/$name-unit.log"
    ok=$(count "$LOG/$name-unit.log" '^Ok: +[0-9]+')
    fail=$(count "$LOG/$name-unit.log" '^Fail: +[0-9]+')
    to=$(count "$LOG/$name-unit.log" '^Timeout: +[0-9]+')
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + fail + to))
    if [ "$fail" != 0 ] || [ "$to" != 0 ]; then
        grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$LOG/$name-unit.log" || true
    fi
    echo "== $name: end-to-end (pytest)"
    SLUICE_BIN="$ROOT/$dir/sluice" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
        tests/e2e >"$LOG/$name-e2e.log" 2>&1
    tail -15 "$LOG/$name-e2e.log"
    ok=$(count "$LOG/$name-e2e.log" '[0-9]+ passed')
    fail=$(count "$LOG/$name-e2e.log" '[0-9]+ failed')
    err=$(count "$LOG/$name-e2e.log" '[0-9]+ error')
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + fail + err))
    if [ "$ok" = 0 ] && [ "$fail" = 0 ]; then
        FAILED=$((FAILED + 1)); echo "e2e tier did not run"
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
        tier asan build-asan
    else
        echo "asan build failed"; FAILED=$((FAILED + 1))
    fi
fi
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
