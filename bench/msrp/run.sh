#!/usr/bin/env bash
# MSRP relay comparison: rtedge vs Kamailio 5.6 (msrp + websocket modules),
# same load from `rtedge-loadgen msrp-relay`, one server after the other in
# one run. Run by hand from the workspace root (never from CI):
#
#     bench/msrp/run.sh [--runs 3] [--duration 5s] [--warmup 1s]
#                       [--cases all|tcp|ws|quick] [--servers rtedge,kamailio]
#                       [--children 2] [--out DIR] [--write-results]
#
# * Installs Debian's kamailio + kamailio-websocket-modules with apt-get if
#   `kamailio` is missing (root needed for that step only).
# * Kamailio runs in the foreground (-DD, logs to stderr) from
#   bench/msrp/kamailio-msrp.cfg with its own pid file and control socket in
#   a temporary directory; rtedge from a generated config (workers = 1,
#   msrp + ws listeners, users file). Both are pinned to CPU 1 (taskset;
#   Kamailio's forked children inherit it) and stopped at the end.
# * The loadgen is pinned to CPU 0, one thread. Cases: 1 and 10 pairs ×
#   100 B and 4 KiB × TCP and WebSocket, 32 SENDs in flight per pair. For
#   each case the servers alternate (rtedge, Kamailio, rtedge, ...) --runs
#   times; every cell is the median with the min–max spread.
# * Server CPU per message: utime+stime from /proc/PID/stat over the
#   measured window, summed over the server process and all its descendants
#   (`--server-tree`: Kamailio works in ~10 processes), ÷ messages delivered
#   in the window.
#
# Binaries: $RTEDGE and $LOADGEN, else ${CARGO_TARGET_DIR:-target}/release/
# (built with `cargo build --release -p rtedge -p rtedge-loadgen` if absent).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=3
DURATION=5s
WARMUP=1s
CASES=all
SERVERS=rtedge,kamailio
CHILDREN=2
OUT=""
WRITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --write-results) WRITE=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

TARGET=${CARGO_TARGET_DIR:-target}
RTEDGE=${RTEDGE:-$TARGET/release/rtedge}
LOADGEN=${LOADGEN:-$TARGET/release/rtedge-loadgen}
if [ ! -x "$RTEDGE" ] || [ ! -x "$LOADGEN" ]; then
  echo "== building rtedge and rtedge-loadgen (release)"
  cargo build --release -p rtedge -p rtedge-loadgen
fi

if [[ ,$SERVERS, == *,kamailio,* ]] && ! command -v kamailio >/dev/null; then
  echo "== installing kamailio (Debian packages)"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    kamailio kamailio-websocket-modules
fi

WORK=$(mktemp -d /tmp/rtedge-msrp-bench.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
PASS="bench-$(date +%s)"
USER_NAME=loadgen

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT: until something listens (10 s)
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

RT_PID=""
KAM_PID=""
cleanup() {
  # Only the processes this script started, by pid.
  if [ -n "$RT_PID" ]; then kill "$RT_PID" 2>/dev/null || true; fi
  if [ -n "$KAM_PID" ]; then
    kill "$KAM_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$KAM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$KAM_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- rtedge
RT_MSRP=$(free_port); RT_WS=$(free_port)
. bench/msrp/rtedge-config.sh
write_rtedge_config "$WORK" "$USER_NAME" "$PASS" "$RT_MSRP" "$RT_WS"

# -------------------------------------------------------------- Kamailio
KAM_PORT=$(free_port)
sed -e "s/KAM_PORT/$KAM_PORT/g; s/KAM_PASS/$PASS/g; s/KAM_CHILDREN/$CHILDREN/g; s#KAM_RUNDIR#$WORK#g" \
  bench/msrp/kamailio-msrp.cfg >"$WORK/kamailio.cfg"

start_servers() {
  if [[ ,$SERVERS, == *,rtedge,* ]]; then
    taskset -c 1 "$RTEDGE" run --config "$WORK/rtedge.toml" >"$WORK/rtedge.log" 2>&1 &
    RT_PID=$!
    wait_port "$RT_MSRP" && wait_port "$RT_WS" || { cat "$WORK/rtedge.log"; exit 1; }
  fi
  if [[ ,$SERVERS, == *,kamailio,* ]]; then
    kamailio -c -f "$WORK/kamailio.cfg" >"$WORK/kamailio-check.log" 2>&1 \
      || { cat "$WORK/kamailio-check.log"; exit 1; }
    # -DD: stay in the foreground (no daemon, no system service); -E: log
    # to stderr; -m/-M: shared/private memory (MB).
    taskset -c 1 kamailio -DD -E -f "$WORK/kamailio.cfg" -P "$WORK/kamailio.pid" \
      -m 256 -M 32 >"$WORK/kamailio.log" 2>&1 &
    KAM_PID=$!
    wait_port "$KAM_PORT" || { cat "$WORK/kamailio.log"; exit 1; }
    sleep 0.5 # children finish forking
  fi
}

# case id, pairs, size, transport
ALL_CASES=(
  "tcp-1x100 1 100 tcp" "tcp-10x100 10 100 tcp" "tcp-1x4k 1 4096 tcp" "tcp-10x4k 10 4096 tcp"
  "ws-1x100 1 100 ws" "ws-10x100 10 100 ws" "ws-1x4k 1 4096 ws" "ws-10x4k 10 4096 ws"
)
SELECTED=()
for c in "${ALL_CASES[@]}"; do
  id=${c%% *}
  case "$CASES" in
    all) SELECTED+=("$c") ;;
    tcp|ws) [[ $id == $CASES-* ]] && SELECTED+=("$c") ;;
    quick) [[ $id == *-10x* ]] && SELECTED+=("$c") ;;
    *) [[ ,$CASES, == *,$id,* ]] && SELECTED+=("$c") ;;
  esac
done
[ ${#SELECTED[@]} -gt 0 ] || { echo "no case selected by --cases $CASES" >&2; exit 2; }

url_of() { # server transport
  case "$1:$2" in
    rtedge:tcp) echo "msrp://127.0.0.1:$RT_MSRP" ;;
    rtedge:ws) echo "ws://127.0.0.1:$RT_WS/" ;;
    kamailio:tcp) echo "msrp://127.0.0.1:$KAM_PORT" ;;
    kamailio:ws) echo "ws://127.0.0.1:$KAM_PORT/" ;;
  esac
}
pid_of() { case "$1" in rtedge) echo "$RT_PID" ;; kamailio) echo "$KAM_PID" ;; esac; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
start_servers
echo "== servers: rtedge pid ${RT_PID:-none} (msrp $RT_MSRP, ws $RT_WS), kamailio pid ${KAM_PID:-none} (port $KAM_PORT, children=$CHILDREN)"
CMD_EXAMPLE=""
IFS=, read -r -a SRV <<<"$SERVERS"
for c in "${SELECTED[@]}"; do
  read -r id pairs size transport <<<"$c"
  for run in $(seq "$RUNS"); do
    for s in "${SRV[@]}"; do
      url=$(url_of "$s" "$transport")
      pid=$(pid_of "$s")
      json="$OUT/$id.$s.$run.json"
      args=(msrp-relay --url "$url" --user "$USER_NAME" --password "$PASS"
            --pairs "$pairs" --size "$size" --window 32
            --duration "$DURATION" --warmup "$WARMUP" --threads 1
            --server-pid "$pid" --server-tree --quiet --json "$json")
      [ -n "$CMD_EXAMPLE" ] || CMD_EXAMPLE="taskset -c 0 rtedge-loadgen ${args[*]//$PASS/PASSWORD}"
      set +e
      taskset -c 0 "$LOADGEN" "${args[@]}" >"$OUT/$id.$s.$run.txt" 2>&1
      rc=$?
      set -e
      printf '%-11s %-8s run %s: exit %s  %s\n' "$id" "$s" "$run" "$rc" \
        "$(grep -E '^  throughput' "$OUT/$id.$s.$run.txt" | sed 's/^  throughput *//')"
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "$s died; log:" >&2; tail -20 "$WORK/$s.log" >&2; exit 1
      fi
    done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

KAM_VERSION=$(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //; s/ *$//' || echo "kamailio: not installed")

HEAD=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export OUT RUNS DURATION WARMUP CHILDREN SERVERS STARTED LOAD_START LOAD_END KAM_VERSION HEAD CMD_EXAMPLE
CASE_IDS="$(for c in "${SELECTED[@]}"; do echo "${c%% *}"; done | paste -sd,)"
export CASE_IDS
export CMDLINE="bench/msrp/run.sh --runs $RUNS --duration $DURATION --warmup $WARMUP --cases $CASES --servers $SERVERS --children $CHILDREN"
python3 bench/msrp/summarize.py >"$OUT/summary.md"
cat "$OUT/summary.md"
if [ "$WRITE" = 1 ]; then
  python3 bench/msrp/summarize.py --write bench/RESULTS.md <"$OUT/summary.md"
  echo "== bench/RESULTS.md section msrp-vs-kamailio updated"
fi
echo "== raw results in $OUT"
