#!/usr/bin/env bash
# Where rtedge's CPU per relayed MSRP message goes: user vs kernel time of
# the server (utime/stime from /proc/PID/stat over the middle 4 s of a 6 s
# `rtedge-loadgen msrp-relay` run), same setup as bench/msrp/run.sh (server
# on CPU 1, loadgen on CPU 0, workers = 1, digest AUTH). Run by hand from the
# workspace root (never from CI):
#
#     bench/msrp/cpu-split.sh [PAIRS SIZE]...      # default: 10 100  10 4096  1 100
#
# Binaries: $RTEDGE and $LOADGEN, else ${CARGO_TARGET_DIR:-target}/release/.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
RTEDGE=${RTEDGE:-$TARGET/release/rtedge}
LOADGEN=${LOADGEN:-$TARGET/release/rtedge-loadgen}
[ $# -gt 0 ] || set -- 10 100 10 4096 1 100

WORK=$(mktemp -d /tmp/rtedge-cpu-split.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
. bench/msrp/rtedge-config.sh
write_rtedge_config "$WORK" loadgen split "$PORT"
TCK=$(getconf CLK_TCK)
echo "| pairs × size | msg/s | user µs/msg | kernel µs/msg |"
echo "|---|---|---|---|"
while [ $# -ge 2 ]; do
  PAIRS=$1; SIZE=$2; shift 2
  taskset -c 1 "$RTEDGE" run --config "$WORK/rtedge.toml" >"$WORK/rtedge.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  ( sleep 2; a=$(cut -d' ' -f14,15 "/proc/$PID/stat"); sleep 4
    b=$(cut -d' ' -f14,15 "/proc/$PID/stat"); echo "$a $b" >"$WORK/ticks" ) &
  SAMPLER=$!
  taskset -c 0 "$LOADGEN" msrp-relay --url "msrp://127.0.0.1:$PORT" --user loadgen --password split \
    --pairs "$PAIRS" --size "$SIZE" --window 32 --duration 6s --warmup 1s --threads 1 \
    --quiet --json "$WORK/out.json" >/dev/null
  wait "$SAMPLER"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  python3 - "$TCK" "$WORK" "$PAIRS" "$SIZE" <<'PY'
import json, sys
tck, work, pairs, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
u0, s0, u1, s1 = map(int, open(f"{work}/ticks").read().split())
rate = json.load(open(f"{work}/out.json"))["throughput"]["msg_per_s"]
msgs = rate * 4
print(f"| {pairs} × {size} B | {rate/1000:.0f}k | {(u1-u0)/tck/msgs*1e6:.2f} | {(s1-s0)/tck/msgs*1e6:.2f} |")
PY
done
rm -rf "$WORK"
