// A proxy-wasm 0.2.1 module, written as WAT, that hands every hostcall taking
// a pointer (and the WASI calls SDK builds use) bad pointers. Each call is made once with every argument good (the
// control), then once per pointer argument with only that argument bad: the
// pointer past the end of the module's one page of memory, the pointer good
// but its length past the end, and the pair as (0, 0), which a host takes as
// empty. Each status is written down as two digits; the last call of the
// request-body callback sends them back as a local reply's body.
//
// Included by tests/proxy_wasm.rs, whose test reads the statuses by the labels
// made here.

/// Where a probe's bad argument is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Every argument good.
    Control,
    /// Argument `n` (a pointer) past the end of memory.
    OutOfBounds(usize),
    /// The length after argument `n` (a pointer) past the end of memory.
    TooLong(usize),
    /// Argument `n` and its length as (0, 0).
    Empty(usize),
}

/// One status the module reports: the hostcall, and how it was called.
#[derive(Clone, Debug)]
pub struct Label {
    pub call: &'static str,
    pub variant: Variant,
}

/// The module's text and, in order, what each reported status is.
pub struct Probe {
    pub wat: String,
    pub labels: Vec<Label>,
}

/// A pointer past the end of the module's memory (one page, not growable).
const OOB: &str = "(i32.const 0x7ffffff0)";
/// A length that runs past the end from any good pointer.
const TOO_LONG: &str = "(i32.const 0x7fffffff)";
/// Where the statuses are written, three bytes each ("NN,").
const RESULTS: u32 = 16384;
/// Stands for the statuses' length until it is known.
const RESULTS_LEN: &str = "RESULTS_LEN";
/// Out-parameter slots, 8 bytes each: `^a`, `^b`, `^c`, and the queue's and
/// metric's ids, which later calls read.
const SLOTS: [(&str, u32); 5] = [
    ("^a", 32768),
    ("^b", 32776),
    ("^c", 32784),
    ("^q", 32792),
    ("^m", 32800),
];

/// The data the good pointers point at (`@name` is its address, `#name` its length).
fn data() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hi", b"hello".to_vec()),
        ("path", b":path".to_vec()),
        ("key", b"x-probe".to_vec()),
        ("prop", b"plugin_name".to_vec()),
        ("setprop", b"probe_key".to_vec()),
        ("queue", b"probe-queue".to_vec()),
        ("vm", b"probe".to_vec()),
        ("metric", b"probe_counter".to_vec()),
        ("func", b"no_such_function".to_vec()),
        ("cluster", b"dead".to_vec()),
        (
            "callheaders",
            pairs(&[(":method", "GET"), (":path", "/"), (":authority", "x")]),
        ),
        ("trailers", pairs(&[("x-t", "1")])),
        ("pairs", pairs(&[("x-probe", "1")])),
        ("reply", pairs(&[("x-reply", "1")])),
        // One WASI iovec: no bytes, at address 0.
        ("iovec", vec![0; 8]),
    ]
}

/// proxy-wasm's serialized header map: a count, the sizes, then each name
/// and value NUL-terminated.
fn pairs(list: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (list.len() as u32).to_le_bytes().to_vec();
    for (k, v) in list {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in list {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

/// A hostcall probed: its name, its arguments (`@x`/`#x` data and length,
/// `^x` an out slot, anything else a WAT expression), and a call to make
/// before each of its calls (dropped), if any.
struct Call {
    name: &'static str,
    args: &'static [&'static str],
    before: Option<&'static str>,
}

const ENQUEUE: &str = "(call $proxy_enqueue_shared_queue (i32.load (i32.const 32792)) (i32.const {@hi}) (i32.const {#hi}))";

/// The calls of the request-headers callback, in order.
const HEADERS_PHASE: &[Call] = &[
    call("proxy_log", &["(i32.const 2)", "@hi", "#hi"]),
    call("proxy_get_log_level", &["^a"]),
    call("proxy_get_current_time_nanoseconds", &["^a"]),
    // Buffer 6 is the VM configuration, readable in any callback.
    call(
        "proxy_get_buffer_bytes",
        &[
            "(i32.const 6)",
            "(i32.const 0)",
            "(i32.const 100)",
            "^a",
            "^b",
        ],
    ),
    call("proxy_get_buffer_status", &["(i32.const 6)", "^a", "^b"]),
    call("proxy_get_header_map_pairs", &["(i32.const 0)", "^a", "^b"]),
    call(
        "proxy_get_header_map_value",
        &["(i32.const 0)", "@path", "#path", "^a", "^b"],
    ),
    call("proxy_get_header_map_size", &["(i32.const 0)", "^a"]),
    call(
        "proxy_add_header_map_value",
        &["(i32.const 0)", "@key", "#key", "@hi", "#hi"],
    ),
    call(
        "proxy_replace_header_map_value",
        &["(i32.const 0)", "@key", "#key", "@hi", "#hi"],
    ),
    call(
        "proxy_remove_header_map_value",
        &["(i32.const 0)", "@key", "#key"],
    ),
    call("proxy_get_property", &["@prop", "#prop", "^a", "^b"]),
    call(
        "proxy_set_property",
        &["@setprop", "#setprop", "@hi", "#hi"],
    ),
    call(
        "proxy_set_shared_data",
        &["@key", "#key", "@hi", "#hi", "(i32.const 0)"],
    ),
    call("proxy_get_shared_data", &["@key", "#key", "^a", "^b", "^c"]),
    call("proxy_register_shared_queue", &["@queue", "#queue", "^q"]),
    call(
        "proxy_resolve_shared_queue",
        &["@vm", "#vm", "@queue", "#queue", "^a"],
    ),
    call(
        "proxy_enqueue_shared_queue",
        &["(i32.load (i32.const 32792))", "@hi", "#hi"],
    ),
    Call {
        name: "proxy_dequeue_shared_queue",
        args: &["(i32.load (i32.const 32792))", "^a", "^b"],
        before: Some(ENQUEUE),
    },
    call(
        "proxy_define_metric",
        &["(i32.const 0)", "@metric", "#metric", "^m"],
    ),
    call("proxy_get_metric", &["(i32.load (i32.const 32800))", "^a"]),
    // An unknown function: NotFound once its name and arguments are read.
    call(
        "proxy_call_foreign_function",
        &[
            "@func",
            "#func",
            "@hi",
            "#hi",
            "(i32.const 32768)",
            "(i32.const 32776)",
        ],
    ),
    // WASI: an empty write to stdout, random bytes, the (empty) environment
    // and arguments.
    call(
        "fd_write",
        &["(i32.const 1)", "@iovec", "(i32.const 1)", "^a"],
    ),
    call("random_get", &["^a", "(i32.const 8)"]),
    call("environ_sizes_get", &["^a", "^b"]),
    call("args_sizes_get", &["^a", "^b"]),
    // Cluster `dead` (nothing listens there): the call is made, and fails later.
    call(
        "proxy_http_call",
        &[
            "@cluster",
            "#cluster",
            "@callheaders",
            "#callheaders",
            "@hi",
            "#hi",
            "@trailers",
            "#trailers",
            "(i32.const 1000)",
            "^a",
        ],
    ),
];

/// The calls of the request-body callback (the body "abc" has arrived whole).
const BODY_PHASE: &[Call] = &[
    // The request head has gone on by now: BadArgument, once the pairs are
    // read. (Here, not before: in Envoy a request whose head was replaced
    // whole in its headers callback found no route.)
    call(
        "proxy_set_header_map_pairs",
        &["(i32.const 0)", "@pairs", "#pairs"],
    ),
    call(
        "proxy_get_buffer_bytes",
        &[
            "(i32.const 0)",
            "(i32.const 0)",
            "(i32.const 100)",
            "^a",
            "^b",
        ],
    ),
    call(
        "proxy_set_buffer_bytes",
        &[
            "(i32.const 0)",
            "(i32.const 0)",
            "(i32.const 0)",
            "@hi",
            "#hi",
        ],
    ),
];

/// The local reply's arguments; its body is the statuses, so the bad calls
/// come first and the good one last.
const REPLY: &[&str] = &[
    "(i32.const 200)",
    "@hi",
    "#hi",
    "@results",
    "#results",
    "@reply",
    "#reply",
    "(i32.const -1)",
];

const fn call(name: &'static str, args: &'static [&'static str]) -> Call {
    Call {
        name,
        args,
        before: None,
    }
}

/// The module, and the label of each status it reports.
pub fn probe() -> Probe {
    let mut addr = 1024u32;
    let mut segments = String::new();
    let mut place = std::collections::HashMap::new();
    for (name, bytes) in data() {
        let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        segments.push_str(&format!("  (data (i32.const {addr}) \"{escaped}\")\n"));
        place.insert(name, (addr, bytes.len() as u32));
        addr += (bytes.len() as u32 + 7) & !7;
    }
    let resolve = |arg: &str| -> String {
        if let Some((_, a)) = SLOTS.iter().find(|(s, _)| *s == arg) {
            return format!("(i32.const {a})");
        }
        if let Some(name) = arg.strip_prefix('@') {
            return format!("(i32.const {})", place[name].0);
        }
        if let Some(name) = arg.strip_prefix('#') {
            return format!("(i32.const {})", place[name].1);
        }
        arg.to_string()
    };
    let fill = |text: &str| -> String {
        let mut out = text.to_string();
        for (name, (a, len)) in &place {
            out = out.replace(&format!("{{@{name}}}"), &a.to_string());
            out = out.replace(&format!("{{#{name}}}"), &len.to_string());
        }
        out
    };

    let mut labels = Vec::new();
    let body_of = |calls: &[Call], labels: &mut Vec<Label>| -> String {
        let mut body = String::new();
        for c in calls {
            for variant in variants(c.args) {
                let args: Vec<String> = c
                    .args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| bad(variant, i, a).unwrap_or_else(|| resolve(a)))
                    .collect();
                if let Some(before) = c.before {
                    body.push_str(&format!("    (drop {})\n", fill(before)));
                }
                body.push_str(&format!(
                    "    (call $rec (call ${} {}))\n",
                    c.name,
                    args.join(" ")
                ));
                labels.push(Label {
                    call: c.name,
                    variant,
                });
            }
        }
        body
    };
    let headers_body = body_of(HEADERS_PHASE, &mut labels);
    let mut request_body = body_of(BODY_PHASE, &mut labels);
    // The reply: its bad forms first (each must leave the request unanswered;
    // an empty one is a good reply, so it is not made here).
    let reply_variants: Vec<Variant> = variants(REPLY)
        .into_iter()
        .filter(|v| matches!(v, Variant::OutOfBounds(_) | Variant::TooLong(_)))
        .collect();
    for variant in &reply_variants {
        let args: Vec<String> = REPLY
            .iter()
            .enumerate()
            .map(|(i, a)| bad(*variant, i, a).unwrap_or_else(|| reply_arg(a, &resolve)))
            .collect();
        request_body.push_str(&format!(
            "    (call $rec (call $proxy_send_local_response {}))\n",
            args.join(" ")
        ));
        labels.push(Label {
            call: "proxy_send_local_response",
            variant: *variant,
        });
    }
    let reply: Vec<String> = REPLY.iter().map(|a| reply_arg(a, &resolve)).collect();
    request_body.push_str(&format!(
        "    (drop (call $proxy_send_local_response {}))\n",
        reply.join(" ")
    ));

    let mut imports = String::new();
    let mut seen = Vec::new();
    for c in HEADERS_PHASE.iter().chain(BODY_PHASE) {
        if !seen.contains(&c.name) {
            seen.push(c.name);
            imports.push_str(&import(c.name, c.args.len()));
        }
    }
    imports.push_str(&import("proxy_send_local_response", REPLY.len()));

    let wat = format!(
        r#"(module
{imports}
  (memory (export "memory") 1 1)
{segments}
  (global $n (mut i32) (i32.const 0))
  (global $bump (mut i32) (i32.const 40960))
  (func $rec (param $c i32)
    (i32.store8 (i32.add (i32.const {RESULTS}) (global.get $n))
      (i32.add (i32.const 48) (i32.div_u (local.get $c) (i32.const 10))))
    (i32.store8 (i32.add (i32.const {r1}) (global.get $n))
      (i32.add (i32.const 48) (i32.rem_u (local.get $c) (i32.const 10))))
    (i32.store8 (i32.add (i32.const {r2}) (global.get $n)) (i32.const 44))
    (global.set $n (i32.add (global.get $n) (i32.const 3))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (if (i32.gt_u (i32.add (global.get $bump) (local.get $size)) (i32.const 65000))
      (then (global.set $bump (i32.const 40960))))
    (local.set $at (global.get $bump))
    (global.set $bump (i32.and (i32.add (i32.add (global.get $bump) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $n (i32.const 0))
{headers_body}    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
{request_body}    (i32.const 1)))
"#,
        r1 = RESULTS + 1,
        r2 = RESULTS + 2,
    );
    // The reply's body: every status written.
    let wat = wat.replace(RESULTS_LEN, &(3 * labels.len()).to_string());
    Probe { wat, labels }
}

/// The reply's arguments, where `@results`/`#results` are the statuses.
fn reply_arg(arg: &str, resolve: &dyn Fn(&str) -> String) -> String {
    match arg {
        "@results" => format!("(i32.const {RESULTS})"),
        "#results" => format!("(i32.const {RESULTS_LEN})"),
        a => resolve(a),
    }
}

/// The control, then each pointer argument's bad forms.
fn variants(args: &[&str]) -> Vec<Variant> {
    let mut out = vec![Variant::Control];
    for (i, a) in args.iter().enumerate() {
        let sized = args.get(i + 1).is_some_and(|n| n.starts_with('#'));
        if a.starts_with('@') && sized {
            out.extend([
                Variant::OutOfBounds(i),
                Variant::TooLong(i),
                Variant::Empty(i),
            ]);
        } else if a.starts_with('@') || a.starts_with('^') {
            out.push(Variant::OutOfBounds(i));
        }
    }
    out
}

/// Argument `i` (`arg`) as `variant` makes it, if it changes it.
fn bad(variant: Variant, i: usize, arg: &str) -> Option<String> {
    match variant {
        Variant::Control => None,
        Variant::OutOfBounds(n) if n == i => Some(OOB.to_string()),
        Variant::TooLong(n) if n + 1 == i && arg.starts_with('#') => Some(TOO_LONG.to_string()),
        Variant::Empty(n) if n == i || (n + 1 == i && arg.starts_with('#')) => {
            Some("(i32.const 0)".to_string())
        }
        _ => None,
    }
}

/// The import of hostcall `name`, taking `params` i32s and answering an i32.
fn import(name: &str, params: usize) -> String {
    let params = vec!["i32"; params].join(" ");
    let module = if WASI.contains(&name) {
        "wasi_snapshot_preview1"
    } else {
        "env"
    };
    format!("  (import \"{module}\" \"{name}\" (func ${name} (param {params}) (result i32)))\n")
}

/// The WASI calls probed (imported from `wasi_snapshot_preview1`): a bad
/// pointer gets errno FAULT (21) there.
pub const WASI: [&str; 4] = [
    "fd_write",
    "random_get",
    "environ_sizes_get",
    "args_sizes_get",
];
