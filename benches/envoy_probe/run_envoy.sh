#!/bin/bash
# usage: LO= HI= ./run_envoy.sh -> prints the /a response, or CRASH
cd /tmp/rig/probe
pkill -f "envoy -c envoy.yaml" ; sleep 0.3
python3 gen.py probe.wat && /tmp/rig/w2w/target/release/w2w probe.wat probe.wasm || exit 1
(setsid /tmp/rig/envoy-dl/envoy/_bin/envoy -c envoy.yaml --concurrency 1 -l info > envoy.log 2>&1 &)
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18901/ready && break; sleep 0.1; done
out=$(curl -s -m 3 -H 'x-a: 1' -H 'x-a: 2' -H 'x-empty;' -H 'user-agent: ua1' 'http://127.0.0.1:18101/a?q=1' -D -)
if grep -aq "Caught" envoy.log; then echo CRASH; else echo "$out"; fi
