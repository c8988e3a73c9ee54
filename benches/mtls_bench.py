#!/usr/bin/env python3
"""The mTLS bench: weir and Envoy terminating mTLS with the same certificates.

Makes a mesh CA and two workload certificates with `weir ca` (server: localhost,
client: another identity), starts one nginx upstream (a small fixed body), then
weir and Envoy 1.40 as mTLS proxies in front of it (one worker each, client
certificate required, verified against the CA), and drives both with
benches/src/bin/mtls_load.rs (wrk cannot present a client certificate):

  handshake: a new TCP connection and a full TLS 1.3 handshake (no resumption)
             per request: new handshakes per second;
  keepalive: requests on keep-alive mTLS connections: req/s.

Rounds interleave weir and Envoy. It prints the median rate, p50/p99 latency
and the proxy's own CPU per request, and weir's ratio to Envoy. Everything
listens on 127.0.0.1; every run is bounded by --duration.

    python3 benches/mtls_bench.py [--duration 10] [--rounds 3] [--connections 16]
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_bench import ROOT, cpu_seconds, envoy_binary, nginx_conf, pids_of, sh, wait_port  # noqa: E402

UPSTREAM_PORT, WEIR_PORT, ENVOY_PORT, WEIR_ADMIN = 18100, 18443, 18444, 18991


def weir_conf(tmp, server):
    conf = tmp / "weir-mtls.toml"
    conf.write_text(f"""
[server]
workers = 1
[admin]
listen = "127.0.0.1:{WEIR_ADMIN}"
[plugins]
dir = "{tmp / 'no-plugins'}"
[[listener]]
name = "mtls"
listen = "127.0.0.1:{WEIR_PORT}"
http2 = false
tls = {{ cert = "{server}/cert.pem", key = "{server}/key.pem", client_ca = "{server}/ca.pem", require_client_cert = true }}
[[cluster]]
name = "upstream"
endpoints = ["127.0.0.1:{UPSTREAM_PORT}"]
[[route]]
name = "all"
cluster = "upstream"
""")
    return conf


def envoy_conf(tmp, server):
    conf = tmp / "envoy-mtls.yaml"
    conf.write_text(f"""
static_resources:
  listeners:
  - name: mtls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_PORT} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: ["http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{server}/cert.pem" }}
              private_key: {{ filename: "{server}/key.pem" }}
            validation_context:
              trusted_ca: {{ filename: "{server}/ca.pem" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }} }}
""")
    return conf


def run_load(load, port, client, mode, conns, duration):
    out = subprocess.run(
        [str(load), "--port", str(port), "--certs", str(client), "--mode", mode,
         "--connections", str(conns), "--duration", str(duration)],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout
    m = dict(re.findall(r"(\w+)=([\d.]+)", out))
    if "requests" not in m:
        raise SystemExit(f"mtls_load gave no result:\n{out}")
    return int(m["requests"]), float(m["rate"]), float(m["p50_us"]), float(m["p99_us"]), int(m["errors"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--modes", default="handshake,keepalive")
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is missing: apt-get install nginx")
    sh(["cargo", "build", "--release", "-q", "-p", "weir", "-p", "weir-benches", "--bin", "weir", "--bin", "mtls_load"], cwd=ROOT)
    weir = ROOT / "target" / "release" / "weir"
    load = ROOT / "target" / "release" / "mtls_load"
    tmp = Path(tempfile.mkdtemp(prefix="weir-mtls-bench-"))
    procs = {}
    try:
        ca, server, client = tmp / "ca", tmp / "server", tmp / "client"
        sh([str(weir), "ca", "init", "--dir", str(ca), "--trust-domain", "bench.local"], stdout=subprocess.DEVNULL)
        sh([str(weir), "ca", "issue", "--dir", str(ca), "--spiffe", "spiffe://bench.local/sa/server", "--dns", "localhost", "--out", str(server)], stdout=subprocess.DEVNULL)
        sh([str(weir), "ca", "issue", "--dir", str(ca), "--spiffe", "spiffe://bench.local/sa/client", "--out", str(client)], stdout=subprocess.DEVNULL)
        up = nginx_conf(tmp, "upstream", f"server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 'hello from the upstream\\n'; }} }}")
        procs["upstream"] = subprocess.Popen([nginx, "-c", str(up), "-p", str(tmp)], stderr=subprocess.DEVNULL)
        wait_port(UPSTREAM_PORT)
        procs["weir"] = subprocess.Popen([str(weir), "--log-level", "warn", "run", "--config", str(weir_conf(tmp, server))])
        wait_port(WEIR_PORT)
        procs["envoy"] = subprocess.Popen(
            [envoy_binary(), "-c", str(envoy_conf(tmp, server)), "--concurrency", "1", "--log-level", "error", "--base-id", str(os.getpid() % 10000)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(ENVOY_PORT)
        ports = {"weir": WEIR_PORT, "envoy": ENVOY_PORT}
        results = {}
        time.sleep(0.5)
        for mode in args.modes.split(","):
            for name in ports:  # warm-up
                run_load(load, ports[name], client, mode, args.connections, 2)
            for rnd in range(args.rounds):
                for name in ports:
                    pids = pids_of(procs[name])
                    before = cpu_seconds(pids)
                    requests, rate, p50, p99, errors = run_load(load, ports[name], client, mode, args.connections, args.duration)
                    cpu_us = (cpu_seconds(pids) - before) * 1e6 / max(requests, 1)
                    results.setdefault((mode, name), []).append((rate, p50, p99, cpu_us, errors))
                    print(f"round {rnd + 1} {mode:9} {name:5} {rate:9.0f}/s  p50 {p50:7.0f} µs  p99 {p99:7.0f} µs  cpu {cpu_us:6.1f} µs/req  errors {errors}", flush=True)
        print()
        print(f"medians over {args.rounds} rounds of {args.duration}s, {args.connections} connections, 127.0.0.1, {os.cpu_count()} cores")
        print(f"{'mode':9} {'proxy':5} {'rate/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'cpu µs/req':>10}")
        med = {}
        for key, rows in results.items():
            m = tuple(statistics.median(r[i] for r in rows) for i in range(4))
            med[key] = m
            print(f"{key[0]:9} {key[1]:5} {m[0]:9.0f} {m[1]:8.0f} {m[2]:8.0f} {m[3]:10.1f}")
        print()
        for mode in args.modes.split(","):
            w, e = med.get((mode, "weir")), med.get((mode, "envoy"))
            if w and e:
                print(f"{mode}: weir/envoy: rate x{w[0] / e[0]:.2f}, p99 x{w[2] / e[2]:.2f}, cpu/req x{w[3] / e[3]:.2f}")
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
