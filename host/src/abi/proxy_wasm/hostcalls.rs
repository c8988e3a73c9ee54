//! The `env` imports of the proxy-wasm ABI (0.1.0, 0.2.0 and 0.2.1: the union
//! of their hostcalls is linked for every module). Each translates to the host
//! API or to the instance's request state; none panics on what a module hands
//! it: a bad pointer or argument is a status code the module can handle.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use wasmtime::{Caller, Linker};

use super::maps::{self, Edit};
use super::memory::{give, read, with_guest_bytes, write_u32, write_u64};
use super::pairs;
use super::properties;
use super::status::{Status, buffer};
use super::vm::{Phase, VmState};
use crate::filter::LocalResponse;
use crate::plugin::host::{MetricKind, PluginMetric};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

fn code(r: Result<(), Status>) -> i32 {
    match r {
        Ok(()) => Status::Ok as i32,
        Err(s) => s as i32,
    }
}

macro_rules! tryst {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(s as i32),
        }
    };
}

/// Every `env` import weir provides, for load-time checks.
pub const NAMES: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_call_foreign_function",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_size",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_get_configuration",
    "proxy_send_local_response",
    "proxy_get_status",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_set_property",
    "emscripten_notify_memory_growth",
    "pthread_equal",
];

/// Links every `env` import.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    link_context(linker)?;
    link_buffers_and_maps(linker)?;
    link_stream_control(linker)?;
    link_calls(linker)?;
    link_shared(linker)?;
    link_metrics_and_properties(linker)?;
    linker.func_wrap(
        "env",
        "emscripten_notify_memory_growth",
        |_: C<'_>, _: i32| {},
    )?;
    linker.func_wrap("env", "pthread_equal", |_: C<'_>, a: i32, b: i32| -> i32 {
        i32::from(a == b)
    })?;
    Ok(())
}

fn link_context(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> R {
            let msg = tryst!(read(&mut c, ptr, len));
            let msg = String::from_utf8_lossy(&msg);
            let plugin = c.data().name.clone();
            match level {
                0 => tracing::trace!(plugin.name = %plugin, "{msg}"),
                1 => tracing::debug!(plugin.name = %plugin, "{msg}"),
                2 => tracing::info!(plugin.name = %plugin, "{msg}"),
                3 => tracing::warn!(plugin.name = %plugin, "{msg}"),
                4 | 5 => tracing::error!(plugin.name = %plugin, "{msg}"),
                _ => return Ok(Status::BadArgument as i32),
            }
            Ok(0)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ret: i32| -> R {
            let level = match tracing::level_filters::LevelFilter::current() {
                tracing::level_filters::LevelFilter::TRACE => 0,
                tracing::level_filters::LevelFilter::DEBUG => 1,
                tracing::level_filters::LevelFilter::INFO => 2,
                tracing::level_filters::LevelFilter::WARN => 3,
                tracing::level_filters::LevelFilter::ERROR => 4,
                _ => 5,
            };
            Ok(code(write_u32(&mut c, ret, level)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> R {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Ok(code(write_u64(&mut c, ret, now)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> R {
            c.data_mut().tick_request = Some(Duration::from_millis(period as u32 as u64));
            Ok(0)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, ctx: i32| -> R {
            let ctx = ctx as u32;
            let s = c.data_mut();
            if ctx != s.root && !s.streams.contains_key(&ctx) {
                return Ok(Status::BadArgument as i32);
            }
            s.effective = Some(ctx);
            Ok(0)
        },
    )?;
    // Roots are never left pending (on_done's answer is not waited for), so there is nothing to finish.
    l.func_wrap("env", "proxy_done", |_: C<'_>| -> R {
        Ok(Status::NotFound as i32)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, rp: i32, rl: i32| -> R {
            let name = tryst!(read(&mut c, np, nl));
            let args = tryst!(read(&mut c, ap, al));
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            match name.as_slice() {
                b"weir.quota.take" => match quota_take(plugin.host.quota(), &args) {
                    Ok(reply) => Ok(code(give(&mut c, &reply, rp, rl)?)),
                    Err(e) => {
                        tracing::warn!(plugin.name = %plugin.spec.name, "weir.quota.take: {e}");
                        Ok(Status::BadArgument as i32)
                    }
                },
                _ => Ok(Status::NotFound as i32),
            }
        },
    )?;
    Ok(())
}

/// `weir.quota.take`, proxy-wasm's synchronous way to the quota service:
/// the argument and answer are [`crate::quota::TakeArgs`]'s and
/// [`crate::quota::Decision`]'s JSON. On the redis backend it holds the
/// worker until Redis answers (bounded by `[quota] timeout`); an http call to
/// [`crate::quota::CALL_UPSTREAM`] does not.
fn quota_take(quota: &crate::quota::Quota, args: &[u8]) -> Result<Vec<u8>, String> {
    let a = crate::quota::TakeArgs::from_json(args)?;
    Ok(quota.take(&a.key, a.cost, a.limit)?.to_json())
}

fn buffer_bytes(s: &mut VmState, kind: i32) -> Result<Bytes, Status> {
    let plugin = s.plugin.upgrade().ok_or(Status::InternalFailure)?;
    match kind {
        // Envoy gives the VM configuration at any time.
        buffer::VM_CONFIGURATION => Ok(plugin.spec.vm_config.clone()),
        buffer::PLUGIN_CONFIGURATION if s.phase == Phase::Configure => {
            Ok(plugin.spec.config.clone())
        }
        buffer::HTTP_CALL_RESPONSE_BODY => s
            .call_response
            .as_ref()
            .map(|r| r.body.clone())
            .ok_or(Status::NotFound),
        buffer::GRPC_CALL_MESSAGE => s.grpc_message.clone().ok_or(Status::NotFound),
        buffer::HTTP_REQUEST_BODY if s.phase == Phase::RequestBody => s
            .stream()
            .and_then(|st| st.body.clone())
            .ok_or(Status::NotFound),
        buffer::HTTP_RESPONSE_BODY if s.phase == Phase::ResponseBody => s
            .stream()
            .and_then(|st| st.body.clone())
            .ok_or(Status::NotFound),
        // Outside their callbacks a stream's bodies read as empty, as in Envoy.
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY if s.stream().is_some() => {
            Ok(Bytes::new())
        }
        0..=8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn link_buffers_and_maps(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, rp: i32, rl: i32| -> R {
            let bytes = tryst!(buffer_bytes(c.data_mut(), kind));
            let (start, max) = (start as u32 as u64, max as u32 as u64);
            let len = bytes.len() as u64;
            let from = start.min(len) as usize;
            let to = start.saturating_add(max).min(len) as usize;
            Ok(code(give(&mut c, &bytes[from..to.max(from)], rp, rl)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, rl: i32, rf: i32| -> R {
            let bytes = tryst!(buffer_bytes(c.data_mut(), kind));
            Ok(code(
                write_u32(&mut c, rl, bytes.len() as u32).and_then(|()| write_u32(&mut c, rf, 0)),
            ))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let data = tryst!(read(&mut c, ptr, len));
            let s = c.data_mut();
            let phase_ok = matches!(
                (kind, s.phase),
                (buffer::HTTP_REQUEST_BODY, Phase::RequestBody)
                    | (buffer::HTTP_RESPONSE_BODY, Phase::ResponseBody)
            );
            if !phase_ok {
                // Envoy: BadArgument for a body outside its callback too.
                let body = kind == buffer::HTTP_REQUEST_BODY || kind == buffer::HTTP_RESPONSE_BODY;
                return Ok(if (0..=8).contains(&kind) && !body {
                    Status::NotFound
                } else {
                    Status::BadArgument
                } as i32);
            }
            let Some(st) = s.stream() else {
                return Ok(Status::NotFound as i32);
            };
            let old = st.body.clone().unwrap_or_default();
            let from = (start as u32 as usize).min(old.len());
            let to = from.saturating_add(size as u32 as usize).min(old.len());
            let mut new = Vec::with_capacity(old.len() - (to - from) + data.len());
            new.extend_from_slice(&old[..from]);
            new.extend_from_slice(&data);
            new.extend_from_slice(&old[to..]);
            st.body = Some(Bytes::from(new));
            Ok(0)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, rp: i32, rl: i32| -> R {
            let pairs = match maps::pairs(c.data_mut(), map) {
                Ok(p) => p,
                Err(Status::BadArgument) if c.data().phase == Phase::Log => Vec::new(),
                Err(s) => return Ok(s as i32),
            };
            let bytes = pairs::encode(&pairs);
            Ok(code(give(&mut c, &bytes, rp, rl)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> R {
            let bytes = tryst!(read(&mut c, ptr, len));
            let pairs = tryst!(pairs::decode(&bytes).ok_or(Status::BadArgument));
            Ok(code(maps::replace_all(c.data_mut(), map, pairs)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, rp: i32, rl: i32| -> R {
            // The value is copied into the instance's scratch buffer (no
            // allocation once it has grown), then handed to the module.
            let mut out = std::mem::take(&mut c.data_mut().scratch);
            out.clear();
            let looked = with_guest_bytes(&mut c, (kp, kl), (0, 0), |key, _, state| {
                maps::value(state, map, key, &mut out)
            });
            let found = match looked {
                Ok(found) => found,
                Err(Status::BadArgument) if c.data().phase == Phase::Log => false,
                Err(s) => {
                    c.data_mut().scratch = out;
                    return Ok(s as i32);
                }
            };
            let answer = if found {
                code(give(&mut c, &out, rp, rl)?)
            } else if c.data().abi == super::AbiVersion::V0_1_0 {
                // ABI 0.1.0 answers a missing key with an empty value.
                code(give(&mut c, b"", rp, rl)?)
            } else {
                Status::NotFound as i32
            };
            c.data_mut().scratch = out;
            Ok(answer)
        },
    )?;
    for (name, how) in [
        ("proxy_add_header_map_value", Edit::Add),
        ("proxy_replace_header_map_value", Edit::Replace),
    ] {
        l.func_wrap(
            "env",
            name,
            move |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
                let edited = with_guest_bytes(&mut c, (kp, kl), (vp, vl), |key, value, state| {
                    maps::edit(state, map, key, value, how)
                });
                Ok(code(edited))
            },
        )?;
    }
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32| -> R {
            let edited = with_guest_bytes(&mut c, (kp, kl), (0, 0), |key, _, state| {
                maps::edit(state, map, key, b"", Edit::Remove)
            });
            Ok(code(edited))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, map: i32, ret: i32| -> R {
            // Envoy's answer: the map's byte size, its names' and values'
            // lengths summed (not the size of the encoded pairs).
            let pairs = tryst!(maps::pairs(c.data_mut(), map));
            let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            Ok(code(write_u32(&mut c, ret, size as u32)))
        },
    )?;
    Ok(())
}

fn resume(s: &mut VmState, kind: i32) -> Result<(), Status> {
    let st = s.stream().ok_or(Status::NotFound)?;
    match kind {
        0 => st.continue_request = true,
        1 => st.continue_response = true,
        2 | 3 => return Err(Status::Unimplemented),
        _ => return Err(Status::BadArgument),
    }
    s.wake = true;
    Ok(())
}

fn link_stream_control(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> R { Ok(code(resume(c.data_mut(), kind))) },
    )?;
    l.func_wrap("env", "proxy_continue_request", |mut c: C<'_>| -> R {
        Ok(code(resume(c.data_mut(), 0)))
    })?;
    l.func_wrap("env", "proxy_continue_response", |mut c: C<'_>| -> R {
        Ok(code(resume(c.data_mut(), 1)))
    })?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, kind: i32| -> R {
            if !(0..=3).contains(&kind) {
                return Ok(Status::BadArgument as i32);
            }
            match c.data_mut().stream() {
                Some(st) => {
                    st.closed = true;
                    c.data_mut().wake = true;
                    Ok(0)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap("env", "proxy_clear_route_cache", |_: C<'_>| -> R { Ok(0) })?;
    l.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut c: C<'_>, rp: i32, rl: i32| -> R {
            let kind = match c.data().phase {
                Phase::VmStart => buffer::VM_CONFIGURATION,
                _ => buffer::PLUGIN_CONFIGURATION,
            };
            let bytes = tryst!(buffer_bytes(c.data_mut(), kind));
            Ok(code(give(&mut c, &bytes, rp, rl)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> R {
            let body = tryst!(read(&mut c, bp, bl));
            let hbytes = tryst!(read(&mut c, hp, hl));
            let pairs = tryst!(pairs::decode(&hbytes).ok_or(Status::BadArgument));
            let status =
                tryst!(StatusCode::from_u16(status as u32 as u16).map_err(|_| Status::BadArgument));
            let details = tryst!(read(&mut c, dp, dl));
            let mut headers = Vec::with_capacity(pairs.len() + 3);
            for (k, v) in pairs {
                let name = tryst!(HeaderName::from_bytes(&k).map_err(|_| Status::BadArgument));
                let value = tryst!(HeaderValue::from_bytes(&v).map_err(|_| Status::BadArgument));
                headers.push((name, value));
            }
            let by = c.data().name.to_string();
            let Some(st) = c.data_mut().stream() else {
                return Ok(Status::NotFound as i32);
            };
            // A second local reply on the same stream is ignored, as in Envoy.
            if st.local.is_none() {
                let info = st.info.as_deref();
                if let Some(i) = info {
                    i.request.set_details(&String::from_utf8_lossy(&details));
                }
                st.local = Some(local_reply(
                    status,
                    headers,
                    Bytes::from(body),
                    grpc,
                    info.is_some_and(|i| i.grpc),
                    by,
                ));
            }
            c.data_mut().wake = true;
            Ok(0)
        },
    )?;
    Ok(())
}

/// A plugin's local reply as Envoy sends it. To a gRPC request: HTTP 200,
/// `grpc-status` (the plugin's, else the one its HTTP status maps to) and
/// the body as `grpc-message`, no body. To any other: the body as
/// `text/plain` unless the plugin named a content-type, and no `grpc-status`
/// whatever the plugin passed.
fn local_reply(
    status: StatusCode,
    mut headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    grpc_status: i32,
    grpc_request: bool,
    by: String,
) -> LocalResponse {
    let content_type = http::header::CONTENT_TYPE;
    if grpc_request {
        let code = if (0..=16).contains(&grpc_status) {
            i64::from(grpc_status)
        } else {
            super::properties::http_to_grpc(status.as_u16())
        };
        headers.push((content_type, HeaderValue::from_static("application/grpc")));
        headers.push((
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(code),
        ));
        if !body.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&grpc_message(&body))
        {
            headers.push((HeaderName::from_static("grpc-message"), v));
        }
        return LocalResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            by,
        };
    }
    if !body.is_empty() && !headers.iter().any(|(k, _)| *k == content_type) {
        headers.push((content_type, HeaderValue::from_static("text/plain")));
    }
    LocalResponse {
        status,
        headers,
        body,
        by,
    }
}

/// gRPC's percent-encoding of a status message: printable ASCII but `%` as
/// it is, every other byte as `%XX`.
fn grpc_message(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn link_calls(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, rc: i32, rp: i32, rl: i32| -> R {
            if let Some((status, msg)) = c.data().grpc_status.clone() {
                tryst!(write_u32(&mut c, rc, status));
                return Ok(code(give(&mut c, msg.as_bytes(), rp, rl)?));
            }
            let (status, msg) = match &c.data().call_response {
                // A call that failed after its response head: Envoy's
                // BrokenConnection, "reset" (the cause went to the log).
                Some(r) if r.failure.is_some() => (11u32, "reset".to_string()),
                // A call that succeeded, or none made: Envoy answers OK with
                // code 0 and no message (the SDKs panic on NotFound here).
                _ => (0, String::new()),
            };
            tryst!(write_u32(&mut c, rc, status));
            Ok(code(give(&mut c, msg.as_bytes(), rp, rl)?))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         ret: i32|
         -> R {
            let upstream = String::from_utf8_lossy(&tryst!(read(&mut c, up, ul))).to_string();
            let hbytes = tryst!(read(&mut c, hp, hl));
            let body = tryst!(read(&mut c, bp, bl));
            let tbytes = tryst!(read(&mut c, tp, tl));
            let pairs = tryst!(pairs::decode(&hbytes).ok_or(Status::BadArgument));
            let mut trailers = http::HeaderMap::new();
            for (k, v) in tryst!(pairs::decode(&tbytes).ok_or(Status::BadArgument)) {
                let name = tryst!(HeaderName::from_bytes(&k).map_err(|_| Status::BadArgument));
                let value = tryst!(HeaderValue::from_bytes(&v).map_err(|_| Status::BadArgument));
                trailers.append(name, value);
            }
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            if upstream == crate::quota::CALL_UPSTREAM {
                let take = match crate::quota::TakeArgs::from_json(&body) {
                    Ok(take) => take,
                    Err(e) => {
                        tracing::warn!(plugin.name = %plugin.spec.name, "http call to {upstream}: {e}");
                        return Ok(Status::BadArgument as i32);
                    }
                };
                let s = c.data_mut();
                let token = s.call_token();
                plugin.start_quota_call(s.index, s.generation, token, take);
                return Ok(code(write_u32(&mut c, ret, token)));
            }
            if !plugin.host.has_cluster(&upstream) {
                return Ok(Status::BadArgument as i32);
            }
            let mut builder = Request::builder();
            let (mut method, mut path, mut authority) = (None, None, None);
            for (k, v) in &pairs {
                match k.as_slice() {
                    b":method" => method = Some(v.clone()),
                    b":path" => path = Some(v.clone()),
                    b":authority" => authority = Some(v.clone()),
                    k if k.first() == Some(&b':') => {}
                    _ => builder = builder.header(k.as_slice(), v.as_slice()),
                }
            }
            let (Some(method), Some(path), Some(authority)) = (method, path, authority) else {
                return Ok(Status::BadArgument as i32);
            };
            let req = builder
                .method(method.as_slice())
                .uri(String::from_utf8_lossy(&path).as_ref())
                .header(http::header::HOST, authority.as_slice())
                .body(crate::body::full_with_trailers(body, trailers));
            let Ok(req) = req else {
                return Ok(Status::BadArgument as i32);
            };
            let s = c.data_mut();
            let token = s.call_token();
            let timeout = (timeout > 0).then(|| Duration::from_millis(timeout as u32 as u64));
            plugin.start_call(s.index, s.generation, token, upstream, req, timeout);
            Ok(code(write_u32(&mut c, ret, token)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         sp: i32,
         sl: i32,
         mp: i32,
         ml: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         timeout: i32,
         ret: i32|
         -> R {
            let upstream = String::from_utf8_lossy(&tryst!(read(&mut c, up, ul))).to_string();
            let service = String::from_utf8_lossy(&tryst!(read(&mut c, sp, sl))).to_string();
            let method = String::from_utf8_lossy(&tryst!(read(&mut c, mp, ml))).to_string();
            let metadata =
                tryst!(pairs::decode(&tryst!(read(&mut c, hp, hl))).ok_or(Status::BadArgument));
            let message = tryst!(read(&mut c, bp, bl));
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            if !plugin.host.has_cluster(&upstream) {
                return Ok(Status::ParseFailure as i32);
            }
            let s = c.data_mut();
            let token = s.call_token();
            let timeout = (timeout > 0).then(|| Duration::from_millis(timeout as u32 as u64));
            plugin.start_grpc_call(
                s.index,
                s.generation,
                token,
                upstream,
                format!("/{service}/{method}"),
                metadata,
                message,
                timeout,
            );
            Ok(code(write_u32(&mut c, ret, token)))
        },
    )?;
    // gRPC streams are not implemented yet: modules link, and opening one answers Unimplemented.
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R {
            Ok(Status::Unimplemented as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(Status::NotFound as i32) },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |_: C<'_>, _: i32| -> R {
        Ok(Status::NotFound as i32)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |_: C<'_>, _: i32| -> R {
        Ok(Status::NotFound as i32)
    })?;
    Ok(())
}

fn link_shared(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, rp: i32, rl: i32, rc: i32| -> R {
            let key = tryst!(read(&mut c, kp, kl));
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            let Some((value, cas)) = plugin.host.get_data(&plugin.spec.vm_id, &key) else {
                return Ok(Status::NotFound as i32);
            };
            tryst!(give(&mut c, &value, rp, rl)?);
            Ok(code(write_u32(&mut c, rc, cas)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let key = tryst!(read(&mut c, kp, kl));
            let value = tryst!(read(&mut c, vp, vl));
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            match plugin
                .host
                .set_data(&plugin.spec.vm_id, &key, Bytes::from(value), cas as u32)
            {
                Ok(()) => Ok(0),
                Err(_) => Ok(Status::CasMismatch as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> R {
            let name = String::from_utf8_lossy(&tryst!(read(&mut c, np, nl))).to_string();
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            let (index, generation) = (c.data().index, c.data().generation);
            let weak = std::sync::Arc::downgrade(&plugin);
            let notify = std::sync::Arc::new(move |id: u32| {
                if let Some(p) = weak.upgrade() {
                    p.notify_queue(index, generation, id);
                }
            });
            let id = plugin
                .host
                .register_queue(&plugin.spec.vm_id, &name, notify);
            Ok(code(write_u32(&mut c, ret, id)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> R {
            let vm_id = String::from_utf8_lossy(&tryst!(read(&mut c, vp, vl))).to_string();
            let name = String::from_utf8_lossy(&tryst!(read(&mut c, np, nl))).to_string();
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            let vm_id = if vm_id.is_empty() {
                plugin.spec.vm_id.clone()
            } else {
                vm_id
            };
            match plugin.host.resolve_queue(&vm_id, &name) {
                Some(id) => Ok(code(write_u32(&mut c, ret, id))),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: i32, vp: i32, vl: i32| -> R {
            let value = tryst!(read(&mut c, vp, vl));
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            Ok(if plugin.host.enqueue(id as u32, Bytes::from(value)) {
                0
            } else {
                Status::NotFound as i32
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, rp: i32, rl: i32| -> R {
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            match plugin.host.dequeue(id as u32) {
                Err(()) => Ok(Status::NotFound as i32),
                Ok(None) => Ok(Status::Empty as i32),
                Ok(Some(item)) => Ok(code(give(&mut c, &item, rp, rl)?)),
            }
        },
    )?;
    Ok(())
}

/// The metric the module defined as `id`.
fn metric<'a>(c: &'a C<'_>, id: i32) -> Option<&'a PluginMetric> {
    (id as u32)
        .checked_sub(1)
        .and_then(|i| c.data().metrics.get(i as usize))
}

fn link_metrics_and_properties(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, ret: i32| -> R {
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(Status::BadArgument as i32),
            };
            let name = String::from_utf8_lossy(&tryst!(read(&mut c, np, nl))).to_string();
            let Some(plugin) = c.data().plugin.upgrade() else {
                return Ok(Status::InternalFailure as i32);
            };
            let metric = plugin.host.define_metric(&plugin.spec.name, &name, kind);
            let s = c.data_mut();
            s.metrics.push(metric);
            let id = s.metrics.len() as u32;
            Ok(code(write_u32(&mut c, ret, id)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| -> R {
            let Some(m) = metric(&c, id) else {
                return Ok(Status::NotFound as i32);
            };
            match m {
                PluginMetric::Counter(ctr) if delta > 0 => {
                    ctr.inc_by(delta as u64);
                }
                PluginMetric::Gauge(g) => {
                    g.inc_by(delta);
                }
                PluginMetric::Counter(_) | PluginMetric::Histogram(_) => {
                    return Ok(Status::BadArgument as i32);
                }
            }
            Ok(0)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let Some(m) = metric(&c, id) else {
                return Ok(Status::NotFound as i32);
            };
            match m {
                PluginMetric::Counter(ctr) => {
                    ctr.inc_by(value as u64);
                }
                PluginMetric::Gauge(g) => {
                    g.set(value);
                }
                PluginMetric::Histogram(h) => h.observe(value as u64 as f64),
            }
            Ok(0)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> R {
            let value = match metric(&c, id) {
                None => return Ok(Status::NotFound as i32),
                Some(PluginMetric::Counter(ctr)) => ctr.get(),
                Some(PluginMetric::Gauge(g)) => g.get() as u64,
                Some(PluginMetric::Histogram(_)) => return Ok(Status::BadArgument as i32),
            };
            Ok(code(write_u64(&mut c, ret, value)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, rp: i32, rl: i32| -> R {
            let path = tryst!(read(&mut c, pp, pl));
            match properties::get(c.data_mut(), &path) {
                Ok(v) => Ok(code(give(&mut c, &v, rp, rl)?)),
                Err(status) => Ok(status as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> R {
            let path = tryst!(read(&mut c, pp, pl));
            let value = tryst!(read(&mut c, vp, vl));
            let key = path.strip_suffix(&[0]).unwrap_or(&path).to_vec();
            let s = c.data_mut();
            match s.stream() {
                Some(st) => {
                    // As Envoy's filter state: other plugins of the request see it
                    // (names weir computes stay this plugin's own).
                    let name = properties::segments(&key).join(".");
                    let shared = st
                        .info
                        .as_ref()
                        .is_some_and(|i| i.attributes.set(&name, value.clone()).is_ok());
                    if !shared {
                        st.props.insert(key, value);
                    }
                    Ok(0)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    Ok(())
}
