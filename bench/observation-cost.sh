#!/bin/bash
# Cost of observation: echo (case a) with and without /metrics + dump every second.
LG=${LG:-target/release/rtedge-loadgen}
RT=${RT:-target/release/rtedge}
run() { # $1 = scrape(0|1)
  port=$((23000 + RANDOM % 4000)); mport=$((port + 1))
  cat > /tmp/obs.toml <<EOT
workers = 1
[[listen]]
transport = "ws"
address = "127.0.0.1:$port"
[websocket]
sub_protocols = ["echo"]
[reactor]
pin_workers = false
[region]
path = "/tmp/obs.region"
[mgmt]
enabled = true
listen = "127.0.0.1:$mport"
EOT
  taskset -c 1 $RT run --config /tmp/obs.toml 2>/dev/null &
  P=$!; sleep 0.5
  if [ "$1" = 1 ]; then
    ( for i in $(seq 1 8); do curl -s -o /dev/null http://127.0.0.1:$mport/metrics; curl -s -o /dev/null "http://127.0.0.1:$mport/api/ws/connections?limit=50"; sleep 1; done ) &
    S=$!
  fi
  taskset -c 0 $LG ws-echo --url ws://127.0.0.1:$port/ --subprotocol echo --connections 10 --window 16 --size 64 --duration 5s --warmup 1s --quiet --server-pid $P --json /tmp/obs.json >/dev/null 2>&1
  python3 -c "
import json; d=json.load(open('/tmp/obs.json'))
print('scrape=$1', round(d['throughput']['msg_per_s']), round(d['server']['cpu_us_per_msg'],3))"
  [ -n "$S" ] && kill $S 2>/dev/null; S=
  kill $P; wait $P 2>/dev/null
}
for r in 1 2 3; do run 0; run 1; done
