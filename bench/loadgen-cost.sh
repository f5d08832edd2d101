#!/bin/bash
# CPU the load generator spends per message, against one rtedge core, in
# ws-echo pipelined (10 × 64 B, 16 in flight) and ping-pong (100 × 64 B,
# window 1). rtedge (workers = 1) on CPU 1, the loadgen (--threads 1) on
# CPU 0; each run a fresh server. Every case is run with progress off
# (--quiet) and on (plain lines with the live p99), interleaved, RUNS times.
#
#   bench/loadgen-cost.sh    # LG= RT= RUNS= DUR= CASES= select binaries, runs, cases
#
# Output: one line per run: case, progress, msg/s, loadgen and server CPU
# µs/msg and CPU % of one core, and their ratio (loadgen ÷ server).
set -u
LG=${LG:-target/release/rtedge-loadgen}
RT=${RT:-target/release/rtedge}
RUNS=${RUNS:-3}
DUR=${DUR:-5s}
CASES=${CASES:-pipelined pingpong}
TMP=$(mktemp -d /tmp/lgcost.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

run() { # $1 = case (pipelined|pingpong), $2 = progress (quiet|live)
  local port=$((23000 + RANDOM % 4000))
  cat > "$TMP/rt.toml" <<EOT
workers = 1
[[listen]]
transport = "ws"
address = "127.0.0.1:$port"
[websocket]
sub_protocols = ["echo"]
[reactor]
pin_workers = false
[mgmt]
enabled = false
[region]
path = "$TMP/rt.region"
EOT
  taskset -c 1 "$RT" run --config "$TMP/rt.toml" 2>/dev/null &
  local P=$!
  sleep 0.5
  local shape
  case $1 in
    pipelined) shape="--connections 10 --window 16" ;;
    pingpong) shape="--connections 100 --window 1" ;;
  esac
  local prog="--quiet"
  [ "$2" = live ] && prog="--plain"
  # shellcheck disable=SC2086
  taskset -c 0 "$LG" ws-echo --url "ws://127.0.0.1:$port/" --subprotocol echo $shape \
    --size 64 --duration "$DUR" --warmup 1s --threads 1 $prog --server-pid $P \
    --json "$TMP/r.json" >/dev/null 2>"$TMP/progress.txt"
  python3 - "$TMP/r.json" "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d["timing"]["measured_s"]
c, s = d["client"], d["server"]
cc = c["cpu_measure"]["user_s"] + c["cpu_measure"]["sys_s"]
sc = s["cpu_measure"]["user_s"] + s["cpu_measure"]["sys_s"]
print(f'{sys.argv[2]:9} {sys.argv[3]:5} ok={d["ok"]!s:5} msg/s={d["throughput"]["msg_per_s"]:>9.0f} '
      f'loadgen={c["cpu_us_per_msg"]:.3f}us/msg ({100*cc/w:3.0f}%) '
      f'server={s["cpu_us_per_msg"]:.3f}us/msg ({100*sc/w:3.0f}%) '
      f'ratio={c["cpu_us_per_msg"]/s["cpu_us_per_msg"]:.2f} '
      f'p99={d["latency_us"]["p99"]}us')
PY
  kill $P
  wait $P 2>/dev/null
}

echo "# $(date -u '+%F %H:%M UTC'), nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq 1 "$RUNS"); do
  for c in $CASES; do
    run $c quiet
    run $c live
  done
done
echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
