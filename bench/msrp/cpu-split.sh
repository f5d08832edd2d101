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
# $RTEDGE may name several builds (space-separated): each case then runs
# them in turn, $RUNS times (default 1), for an A/B in one session.
# Transports: SENDERS=msrp|msrps|ws and RECEIVERS=msrp|msrps|ws (default
# msrp; ws = MSRP over a plain WebSocket); TLS uses a throwaway
# self-signed certificate (openssl).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
RTEDGE=${RTEDGE:-$TARGET/release/rtedge}
LOADGEN=${LOADGEN:-$TARGET/release/rtedge-loadgen}
RUNS=${RUNS:-1}
SENDERS=${SENDERS:-msrp}
RECEIVERS=${RECEIVERS:-msrp}
[ $# -gt 0 ] || set -- 10 100 10 4096 1 100

WORK=$(mktemp -d /tmp/rtedge-cpu-split.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TLS_PORT=$(free_port)
WS_PORT=$(free_port)
. bench/msrp/rtedge-config.sh
write_rtedge_config "$WORK" loadgen split "$PORT" "$WS_PORT"
if [ "$SENDERS" = msrps ] || [ "$RECEIVERS" = msrps ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  printf '\n[[listen]]\ntransport = "msrps"\naddress = "127.0.0.1:%s"\ntls_cert = "%s"\ntls_key = "%s"\n' \
    "$TLS_PORT" "$WORK/cert.pem" "$WORK/key.pem" >>"$WORK/rtedge.toml"
fi
url() {
  case "$1" in
    msrps) echo "msrps://127.0.0.1:$TLS_PORT" ;;
    ws) echo "ws://127.0.0.1:$WS_PORT/" ;;
    *) echo "msrp://127.0.0.1:$PORT" ;;
  esac
}
ROUTE=(--url "$(url "$SENDERS")")
[ "$SENDERS" = "$RECEIVERS" ] || ROUTE+=(--receiver-url "$(url "$RECEIVERS")")
TCK=$(getconf CLK_TCK)
echo "senders $SENDERS, receivers $RECEIVERS"
echo
echo "| pairs × size | build | msg/s | user µs/msg | kernel µs/msg | total µs/msg |"
echo "|---|---|---|---|---|---|"
while [ $# -ge 2 ]; do
  PAIRS=$1; SIZE=$2; shift 2
  for _run in $(seq "$RUNS"); do
    for BIN in $RTEDGE; do
      taskset -c 1 "$BIN" run --config "$WORK/rtedge.toml" >"$WORK/rtedge.log" 2>&1 &
      PID=$!
      for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
      ( sleep 2; a=$(cut -d' ' -f14,15 "/proc/$PID/stat"); sleep 4
        b=$(cut -d' ' -f14,15 "/proc/$PID/stat"); echo "$a $b" >"$WORK/ticks" ) &
      SAMPLER=$!
      taskset -c 0 "$LOADGEN" msrp-relay "${ROUTE[@]}" --insecure --user loadgen --password split \
        --pairs "$PAIRS" --size "$SIZE" --window 32 --duration 6s --warmup 1s --threads 1 \
        --quiet --json "$WORK/out.json" >/dev/null
      wait "$SAMPLER"
      kill "$PID"; wait "$PID" 2>/dev/null || true
      python3 - "$TCK" "$WORK" "$PAIRS" "$SIZE" "$BIN" <<'PY'
import json, sys
tck, work, pairs, size, build = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
u0, s0, u1, s1 = map(int, open(f"{work}/ticks").read().split())
rate = json.load(open(f"{work}/out.json"))["throughput"]["msg_per_s"]
msgs = rate * 4
u, k = (u1 - u0) / tck / msgs * 1e6, (s1 - s0) / tck / msgs * 1e6
print(f"| {pairs} × {size} B | {build} | {rate/1000:.0f}k | {u:.2f} | {k:.2f} | {u + k:.2f} |")
PY
    done
  done
done
rm -rf "$WORK"
