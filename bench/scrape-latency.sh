#!/bin/bash
# Scrape latency with N idle connections held.
N=${1:-19000}
RT=${RT:-target/release/rtedge}
port=$((27000 + RANDOM % 2000)); mport=$((port + 1))
cat > /tmp/scr.toml <<EOT
workers = 2
[[listen]]
transport = "ws"
address = "127.0.0.1:$port"
[websocket]
sub_protocols = ["echo"]
[reactor]
pin_workers = false
[region]
path = "/tmp/scr.region"
[mgmt]
enabled = true
listen = "127.0.0.1:$mport"
EOT
$RT run --config /tmp/scr.toml 2>/dev/null &
P=$!; sleep 0.5
${LG:-target/release/rtedge-loadgen} ws-connect --url ws://127.0.0.1:$port/ --subprotocol echo -c $N --duration 25s --quiet --json /tmp/scr.json >/dev/null 2>&1 &
L=$!
for i in $(seq 1 40); do
  n=$(curl -s http://127.0.0.1:$mport/metrics | awk '/^rtedge_connections_active\{transport="ws"\}/ {print $2}')
  [ "${n%.*}" -ge "$N" ] 2>/dev/null && break; sleep 0.5
done
echo "active ws connections: $n"
for i in 1 2 3 4 5; do
  curl -s -o /dev/null -w "metrics %{time_total}s %{size_download}B\n" http://127.0.0.1:$mport/metrics
  curl -s -o /dev/null -w "dump(limit=50) %{time_total}s %{size_download}B\n" "http://127.0.0.1:$mport/api/ws/connections?limit=50"
  curl -s -o /dev/null -w "dump(all) %{time_total}s %{size_download}B\n" "http://127.0.0.1:$mport/api/ws/connections?limit=100000"
done
kill $L $P 2>/dev/null; wait 2>/dev/null
