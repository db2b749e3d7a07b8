#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan in build-fuzz/ and runs the frame
# decoder fuzzer for N seconds (default 60). Exits non-zero when the fuzzer finds a crash, leak
# or undefined behaviour; the reproducer is left in build-fuzz/artifacts/.
# Usage: tools/fuzz.sh [seconds]
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SLUICE_FUZZ_BUILD_DIR:-${root}/build-fuzz}"
jobs="${SLUICE_JOBS:-2}"

CC=clang CXX=clang++ cmake -S "${root}" -B "${build}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link" \
  -DSLUICE_SANITIZE="address;undefined" \
  -DSLUICE_BUILD_FUZZERS=ON \
  -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_TOOLS=OFF -DSLUICE_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "${build}" -j"${jobs}" --target frame_decoder_fuzz

fuzzer="${build}/tests/fuzz/frame_decoder_fuzz"
corpus="${build}/corpus/frame_decoder"
artifacts="${build}/artifacts"
mkdir -p "${corpus}" "${artifacts}"
# Seed the corpus with valid streams generated from the current schema.
SLUICE_FUZZ_WRITE_SEEDS="${corpus}" "${fuzzer}"

echo "fuzz: running frame_decoder_fuzz for ${seconds}s (corpus ${corpus})"
"${fuzzer}" "${corpus}" \
  -max_total_time="${seconds}" \
  -max_len=8192 \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -print_final_stats=1 \
  -artifact_prefix="${artifacts}/"
echo "fuzz: no crash in ${seconds}s"
