#!/bin/bash
# The external shuffle service end to end, as issue 13 states its target: LINES lines (default
# 10 million, about 1 GiB) through `sluice put` into one of three daemons (blocking mode, two
# subpartitions keyed by the second field), read back with `sluice get` by two concurrent
# reader processes, one per subpartition. Each daemon runs with NETWORK_MEMORY (default 64m).
#
# Prints: input size, put and get seconds (and MB/s), how much the store spilled, each daemon's
# peak RSS (VmHWM) against network memory + 32 MiB, and whether the output holds every input
# line exactly once (sorted comparison). Exits 1 when a check fails.
#
#   tools/bench/external_put_get.sh [BUILD_DIR]      (default: build)
#   LINES=1000000 NETWORK_MEMORY=64m tools/bench/external_put_get.sh build-rel
#
# Needs about 4x the input size free in $TMPDIR (input, spill files, outputs, sort).
set -euo pipefail
BUILD=${1:-build}
LINES=${LINES:-10000000}
MEM=${NETWORK_MEMORY:-64m}
T=$(readlink -f "$BUILD")/tools
for b in daemon/sluiced sluice/sluice control/sluicectl; do
  [[ -x $T/$b ]] || { echo "no $T/$b: build the tools first (cmake --build $BUILD)" >&2; exit 2; }
done
D=$(mktemp -d "${TMPDIR:-/tmp}/sluice-put-get.XXXXXX")
chmod 700 "$D"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
BASE=$((20000 + RANDOM % 20000))
for i in 0 1 2; do
  "$T/daemon/sluiced" --port $((BASE + i)) --state-dir "$D" --node-name "n$i" \
    --network-memory "$MEM" 2>>"$D/n$i.log" &
  PIDS+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 100); do [[ -S $D/sluiced-$((BASE + i)).sock ]] && break; sleep 0.05; done
done
python3 - "$LINES" >"$D/in.txt" <<'EOF'
import sys
pad = 'x' * 90
w = sys.stdout.write
for i in range(int(sys.argv[1])):
    w(f'k{i % 1000:04d},{i:09d},{pad}\n')
EOF
BYTES=$(stat -c %s "$D/in.txt")
now() { date +%s.%N; }
rate() { python3 -c "import sys; b,s=float(sys.argv[1]),float(sys.argv[2]); print(f'{s:.2f} s, {b/s/1e6:.0f} MB/s')" "$@"; }
s=$(now)
"$T/sluice/sluice" --state-dir "$D" put --daemon $BASE --job big --partition 0 \
  --subpartitions 2 --key-field 1 --delimiter , --mode blocking <"$D/in.txt" >"$D/map-output"
e=$(now)
echo "input: $LINES lines, $BYTES bytes; network memory per daemon: $MEM"
echo "put: $(rate "$BYTES" "$(echo "$e - $s" | bc)")"
s=$(now)
"$T/sluice/sluice" --state-dir "$D" get --from 127.0.0.1:$BASE --job big --subpartition 0 >"$D/out0" &
g0=$!
"$T/sluice/sluice" --state-dir "$D" get --from 127.0.0.1:$BASE --job big --subpartition 1 >"$D/out1" &
g1=$!
wait $g0
wait $g1
e=$(now)
echo "get (two readers at once): $(rate "$BYTES" "$(echo "$e - $s" | bc)")"
"$T/control/sluicectl" --state-dir "$D" --port $BASE jobs | grep -A1 "^EXTERNAL JOB" || true
fail=0
mem_kib=$(numfmt --from=iec "${MEM^^}")
bound=$(( mem_kib / 1024 + 32 * 1024 ))
for i in 0 1 2; do
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[$i]}/status")
  echo "n$i peak RSS: $((hwm / 1024)) MiB (bound: network memory + 32 MiB = $((bound / 1024)) MiB)"
  (( hwm <= bound )) || fail=1
done
if sort "$D/out0" "$D/out1" | cmp -s - <(sort "$D/in.txt"); then
  echo "output: every input line exactly once"
else
  echo "output: DIFFERS from the input"; fail=1
fi
"$T/control/sluicectl" --state-dir "$D" --port $BASE release big
left=$(find "$D" -name 'sluice-spill-*' | wc -l)
echo "spill files left after release: $left"
(( left == 0 )) || fail=1
exit $fail
