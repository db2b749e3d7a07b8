#!/usr/bin/env bash
# Sets up (installs missing Debian packages), builds and runs the whole test suite.
#   tools/test.sh [--sanitize address,undefined|thread] [--label LABEL] [--build-dir DIR]
# CI=true turns warnings into errors. Each build configuration gets its own build directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sanitize=""
label=""
build_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$build_dir" ]; then
  build_dir="$root/build"
  [ -n "$sanitize" ] && build_dir="$root/build-$(echo "$sanitize" | tr ',;' '--')"
fi

"$root/tools/setup.sh"

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
# CI builds from scratch every time and debugs nothing in place: line tables are enough for its
# backtraces. (A changed SLUICE_WERROR rebuilds the tree anyway, so this costs a user nothing.)
line_tables=OFF
[ "${CI:-}" = "true" ] && line_tables=ON
benches=ON
[ -n "$sanitize" ] && benches=OFF
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_WERROR="$werror" \
  -DSLUICE_LINE_TABLES_ONLY="$line_tables" \
  -DSLUICE_SANITIZE="$(echo "$sanitize" | tr ',' ';')" -DSLUICE_BUILD_BENCHMARKS="$benches" >/dev/null
targets=""
[ -n "$label" ] && targets=$(cmake --build "$build_dir" --target help)
if [ -n "$label" ] && grep -q "sluice_tests_$label\b" <<<"$targets"; then
  cmake --build "$build_dir" -j"$(nproc)" --target "sluice_tests_$label"  # only what the label runs
else
  cmake --build "$build_dir" -j"$(nproc)"
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# tests/tsan.supp: a descriptor false positive of the uninstrumented libuv (see the file).
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp}"
ctest_args=(--test-dir "$build_dir" --output-on-failure -j2 --timeout 600)
[ -n "$label" ] && ctest_args+=(-L "$label")
# The tests get a scratch TMPDIR of their own, which must be empty when they end: no secret,
# spill file, socket or run directory may outlive the test that made it.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/sluice-tests.XXXXXX")
chmod 1777 "$scratch"  # like /tmp: hostile-peer tests reach sockets in it as another uid
# Nor may a test use sluiced's default state directory (a daemon started without state_dir
# puts its secret, metrics token, socket and spill root there): checked when it is absent before.
default_state=/var/lib/sluice
state_absent=0
[ -e "$default_state" ] || state_absent=1
status=0
TMPDIR="$scratch" TEST_TMPDIR="$scratch" ctest "${ctest_args[@]}" || status=$?
if [ -n "$(ls -A "$scratch")" ]; then
  echo "test.sh: the tests left files in their TMPDIR; each test must remove what it makes:" >&2
  find "$scratch" -mindepth 1 | head -20 >&2
  status=1
fi
if [ "$state_absent" = 1 ] && [ -e "$default_state" ]; then
  echo "test.sh: a test used the default state directory $default_state; give every daemon a" \
    "state_dir of its own (found: $(find "$default_state" | head -5 | tr '\n' ' '))" >&2
  rm -rf "$default_state"
  status=1
fi
rm -rf "$scratch"
exit "$status"
