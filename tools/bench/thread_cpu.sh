#!/bin/bash
# CPU per record of each thread of a `sluice-bench --mode remote --latency` run: how much of a
# core the producer thread, the producer's IO loop and the consumer's IO thread (and any other
# thread that ran) spend per record. Samples the threads' CPU time (schedstat, nanoseconds) of
# both processes over SECONDS seconds in the middle of the run, at RATE records/s.
#
#   tools/bench/thread_cpu.sh [SLUICE_BENCH] [extra sluice-bench flags...]
#   RATE=10000 SECONDS_SAMPLED=3 tools/bench/thread_cpu.sh build-rel/tools/bench/sluice-bench \
#     --consume-on io
#
# Prints one line per thread name with its microseconds of CPU per record and its context
# switches per record (voluntary and not: a sleep and its wake-up count one; threads under
# 0.05 us are left out). Thread names: `sluice-bench` is the producer thread (and the
# consumer's main thread, idle in push mode), `bench-producer-` the producer's IO loop,
# `bench-consumer-` the consumer's IO thread. Linux only.
set -euo pipefail
BENCH=${1:-build-rel/tools/bench/sluice-bench}
shift || true
RATE=${RATE:-10000}
SAMPLED=${SECONDS_SAMPLED:-3}
BENCH=$(readlink -f "$BENCH")
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
"$BENCH" --mode remote --latency --channels 1 --rate "$RATE" --rounds 1 --warmup 1 \
  --seconds $((SAMPLED + 3)) --baselines off "$@" > "$OUT" 2>&1 &
RUN=$!
# Sample inside the measured window: it starts when the warm-up's interval line is printed
# (the consumer flushes each line), however long start-up took on a loaded machine.
for _ in $(seq 600); do
  grep -q '(warm-up)' "$OUT" && break
  if ! kill -0 "$RUN" 2>/dev/null; then break; fi
  sleep 0.1
done
if ! grep -q '(warm-up)' "$OUT"; then
  echo "thread_cpu.sh: sluice-bench printed no warm-up line within 60 s:" >&2
  cat "$OUT" >&2
  exit 1
fi
sleep 0.5
snapshot() {
  for p in $(pgrep -f "^$BENCH"); do
    for t in /proc/"$p"/task/*; do
      switches=$(awk '/ctxt_switches/ { n += $2 } END { print n + 0 }' "$t/status")
      echo "$(basename "$t") $(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat") $switches"
    done 2>/dev/null
  done
}
BEFORE=$(snapshot | sort)
sleep "$SAMPLED"
AFTER=$(snapshot | sort)
join <(echo "$BEFORE") <(echo "$AFTER") |
  awk -v n=$((RATE * SAMPLED)) '{
    us = ($6 - $3) / 1e3 / n
    if (us > 0.05) printf "  %-16s %6.1f us/record %5.2f switches/record\n", $2, us, ($7 - $4) / n
  }'
if ! wait "$RUN"; then
  echo "sluice-bench failed:" >&2
  cat "$OUT" >&2
  exit 1
fi
