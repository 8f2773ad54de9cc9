#!/bin/bash
# Hits at a fixed rate, alone and beside a miss flood, for each UDP backend
# (README "UDP backends"). Run from the repository root after `npm run build`:
#   [FLOOD_QPS=500] bench/io-flood/run.sh [AGENT_CPUS]   (agent on CPU 1 by default; generator and upstream on CPU 0)
# Prints per backend: the hit probe's round trips alone and beside the flood
# (p50/p99/p99.9 in us, answered of sent), and the misses/s the flood got.
# Loopback only: the agent's upstream is upstream.mjs on 127.0.0.1.
set -u
cd "$(dirname "$0")"
PIN=${1:-1}; UP=15891; port=15880
[ -f misses.txt ] || for i in $(seq 0 299999); do echo "m$i.example A"; done > misses.txt
taskset -c 0 node upstream.mjs $UP & UPID=$!
sleep 1
for v in "dgram:--io dgram" "batched1:--io batched --workers 1" "batched2:--io batched --workers 2"; do
  name=${v%%:*}; args=${v#*:}; port=$((port+1))
  taskset -c "$PIN" node ../../dist/src/main.js --listen 127.0.0.1:$port --upstream-nameservers 127.0.0.1:$UP --resolv-conf /dev/null \
    --no-kube --metrics-listen-address off --health-port 0 --log-level warn $args 2>agent-$name.log & APID=$!
  for i in $(seq 1 60); do dig +short +time=1 +tries=1 @127.0.0.1 -p $port h1.example >/dev/null 2>&1 && break; sleep 0.5; done
  taskset -c 0 node probe.mjs $port 2000 2 > /dev/null   # every worker's cache warm
  alone=$(taskset -c 0 node probe.mjs $port 2000 5)
  taskset -c 0 dnsperf -s 127.0.0.1 -p $port -d misses.txt -c 200 -q 500 -Q ${FLOOD_QPS:-500} -l 8 > flood-$name.txt 2>&1 & FPID=$!
  sleep 1.5
  flood=$(taskset -c 0 node probe.mjs $port 2000 5)
  wait $FPID
  echo "$name alone=$alone flood=$flood misses/s=$(grep 'Queries per second' flood-$name.txt | awk '{print $4}')"
  kill $APID; wait $APID 2>/dev/null
done
kill $UPID
