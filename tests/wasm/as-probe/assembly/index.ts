// A proxy-wasm filter written in AssemblyScript with Solo.io's SDK
// (@solo-io/proxy-runtime 0.1.8, AssemblyScript 0.14.9), as an Envoy user
// would write one. Its module has the shape of that toolchain's output, unlike
// the Rust SDK's: ABI 0.2.0, no _start or _initialize (the start section runs
// the top level), `wasi_unstable.proc_exit`, and `malloc` as the allocator.
// tests/proxy_wasm.rs runs it through weir and asserts what Envoy 1.40 did
// with the same module.
//
// - every request: adds what it reads upstream (x-as-*: pseudo-headers,
//   properties, `host`, the names of all pairs, the map's size and the sum
//   of its pairs' lengths) and removes x-drop-me; every response: adds
//   x-as-status (`:status`) and x-as-code (`response.code`, hex);
// - `/deny`: answers 403 locally, with header x-as-denied;
// - `/rewrite`: rewrites `:path` to `/rewritten` before routing;
// - `/callout`: calls cluster `auth` at /auth-check through the root
//   context, pauses, and on the reply adds x-as-callout-status upstream and
//   continues;
// - the counter `as_probe_requests` counts requests.

export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  stream_context, send_local_response, log, LogLevelValues, Headers, HeaderPair, Counter,
} from "@solo-io/proxy-runtime";
import {
  get_property, get_header_map_size, HeaderMapTypeValues,
} from "@solo-io/proxy-runtime/runtime";

class ProbeRoot extends RootContext {
  requests: Counter | null = null;
  createContext(context_id: u32): Context {
    return new Probe(context_id, this);
  }
  onConfigure(configuration_size: u32): bool {
    super.onConfigure(configuration_size);
    this.requests = new Counter("as_probe_requests");
    log(LogLevelValues.info, "as-probe configured with " + this.getConfiguration());
    return true;
  }
}

function hex(b: ArrayBuffer): string {
  let s = "";
  const v = Uint8Array.wrap(b);
  for (let i = 0; i < v.length; i++) {
    s += (v[i] < 16 ? "0" : "") + v[i].toString(16);
  }
  return s;
}

function pair(k: string, v: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(k), String.UTF8.encode(v));
}

class Probe extends Context {
  root: ProbeRoot;
  constructor(context_id: u32, root_context: ProbeRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const request = stream_context.headers.request;
    const size = get_header_map_size(HeaderMapTypeValues.RequestHeaders);
    const all = request.get_headers();
    let names = "";
    let sum = 0;
    for (let i = 0; i < all.length; i++) {
      names += (i > 0 ? "," : "") + String.UTF8.decode(all[i].key);
      sum += all[i].key.byteLength + all[i].value.byteLength;
    }
    const counter = this.root.requests;
    if (counter) counter.increment(1);
    const path = request.get(":path");
    request.add("x-as-path", path);
    request.add("x-as-method", request.get(":method"));
    request.add("x-as-authority", request.get(":authority"));
    request.add("x-as-host", request.get("host"));
    request.add("x-as-eos", end_of_stream ? "1" : "0");
    request.add("x-as-names", names);
    request.add("x-as-size", size.toString() + " " + sum.toString());
    request.add("x-as-prop-path", String.UTF8.decode(get_property("request\0path")));
    request.add("x-as-prop-port", hex(get_property("destination\0port")));
    request.add("x-as-plugin-name", String.UTF8.decode(get_property("plugin_name")));
    request.add("x-as-config", this.root.getConfiguration());
    request.remove("x-drop-me");
    if (path == "/deny") {
      const h: Headers = [];
      h.push(pair("x-as-denied", "yes"));
      send_local_response(403, "as-denied", String.UTF8.encode("denied by as-probe\n"), h, 0);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (path == "/rewrite") {
      request.replace(":path", "/rewritten");
    }
    if (path == "/callout") {
      const h: Headers = [];
      h.push(pair(":method", "GET"));
      h.push(pair(":path", "/auth-check"));
      h.push(pair(":authority", "auth"));
      this.root_context.httpCall("auth", h, new ArrayBuffer(0), [], 5000, this,
        (origin: Context, headers: u32, body_size: usize, trailers: u32): void => {
          const status = stream_context.headers.http_callback.get(":status");
          stream_context.headers.request.add("x-as-callout-status", status);
          origin.continueRequest();
        });
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const response = stream_context.headers.response;
    response.add("x-as-status", response.get(":status"));
    response.add("x-as-code", hex(get_property("response\0code")));
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new ProbeRoot(context_id); }, "");
