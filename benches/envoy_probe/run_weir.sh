#!/bin/bash
cd /tmp/rig/probe
BIN=${BIN:-/work/main/target/release/weir}
pkill -f "weir run --config /tmp/rig/probe" ; sleep 0.3
cp probe.wasm plugins/probe.wasm
(setsid $BIN run --config /tmp/rig/probe/weir.toml > weir.log 2>&1 &)
for i in $(seq 100); do curl -s -o /dev/null -f http://127.0.0.1:18902/ready && break; sleep 0.1; done
curl -s -m 3 -H 'x-a: 1' -H 'x-a: 2' -H 'x-empty;' -H 'user-agent: ua1' 'http://127.0.0.1:18201/a?q=1' -D - | tr ';' '\n'
