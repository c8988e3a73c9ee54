//! The WASI preview1 imports that proxy-wasm SDK builds pull in, linked under
//! both `wasi_snapshot_preview1` and `wasi_unstable`. They grant no
//! filesystem, sockets or environment: stdout and stderr go to the log,
//! clocks and randomness work, everything else answers an error code.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use wasmtime::{Caller, FuncType, Linker, Val, ValType};

use super::memory::{read, write, write_u32, write_u64};
use super::vm::VmState;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// The modules these are linked under.
pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

/// Functions with no access to grant: (name, params; 'i' = i32, 'I' = i64), answering `errno`.
const DENIED: &[(&str, &str, i32)] = &[
    ("fd_advise", "iIIi", BADF),
    ("fd_allocate", "iII", BADF),
    ("fd_close", "i", SUCCESS),
    ("fd_datasync", "i", BADF),
    ("fd_fdstat_set_flags", "ii", NOSYS),
    ("fd_fdstat_set_rights", "iII", NOSYS),
    ("fd_filestat_get", "ii", BADF),
    ("fd_filestat_set_size", "iI", BADF),
    ("fd_filestat_set_times", "iIIi", BADF),
    ("fd_pread", "iiiIi", NOSYS),
    ("fd_prestat_get", "ii", BADF),
    ("fd_prestat_dir_name", "iii", NOSYS),
    ("fd_pwrite", "iiiIi", NOSYS),
    ("fd_read", "iiii", NOSYS),
    ("fd_readdir", "iiiIi", NOSYS),
    ("fd_renumber", "ii", NOSYS),
    ("fd_seek", "iIii", SUCCESS),
    ("fd_sync", "i", BADF),
    ("fd_tell", "ii", BADF),
    ("path_create_directory", "iii", NOSYS),
    ("path_filestat_get", "iiiii", NOSYS),
    ("path_filestat_set_times", "iiiiIIi", NOSYS),
    ("path_link", "iiiiiii", NOSYS),
    ("path_open", "iiiiiIIii", NOSYS),
    ("path_readlink", "iiiiii", NOSYS),
    ("path_remove_directory", "iii", NOSYS),
    ("path_rename", "iiiiii", NOSYS),
    ("path_symlink", "iiiii", NOSYS),
    ("path_unlink_file", "iii", NOSYS),
    ("proc_raise", "i", NOSYS),
    ("sock_accept", "iii", NOSYS),
    ("sock_recv", "iiiiii", NOSYS),
    ("sock_send", "iiiii", NOSYS),
    ("sock_shutdown", "ii", NOSYS),
];

/// Every WASI function weir provides, for load-time checks.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&str> = DENIED.iter().map(|d| d.0).collect();
    v.extend([
        "fd_write",
        "clock_time_get",
        "clock_res_get",
        "random_get",
        "environ_sizes_get",
        "environ_get",
        "args_sizes_get",
        "args_get",
        "proc_exit",
        "sched_yield",
        "poll_oneoff",
        "fd_fdstat_get",
    ]);
    v
}

fn errno(r: Result<(), super::status::Status>) -> i32 {
    if r.is_ok() { SUCCESS } else { FAULT }
}

/// Links the WASI imports under both module names.
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    for m in MODULES {
        link_module(linker, m)?;
    }
    Ok(())
}

fn link_module(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: Caller<'_, VmState>, fd: i32, iovs: i32, n: i32, ret: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return BADF;
            }
            let Ok(list) = read(&mut c, iovs, n.saturating_mul(8)) else {
                return FAULT;
            };
            let mut text = Vec::new();
            for iov in list.chunks_exact(8) {
                let ptr = i32::from_le_bytes(iov[..4].try_into().expect("4 bytes"));
                let len = i32::from_le_bytes(iov[4..].try_into().expect("4 bytes"));
                let Ok(bytes) = read(&mut c, ptr, len) else {
                    return FAULT;
                };
                text.extend_from_slice(&bytes);
            }
            let written = text.len() as u32;
            let line =
                String::from_utf8_lossy(text.strip_suffix(b"\n").unwrap_or(&text)).to_string();
            let plugin = c.data().name.clone();
            if fd == 1 {
                tracing::info!(plugin.name = %plugin, "{line}");
            } else {
                tracing::error!(plugin.name = %plugin, "{line}");
            }
            errno(write_u32(&mut c, ret, written))
        },
    )?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: Caller<'_, VmState>, id: i32, _precision: i64, ret: i32| -> i32 {
            let ns = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1 => monotonic_ns(),
                _ => return NOTSUP,
            };
            errno(write_u64(&mut c, ret, ns))
        },
    )?;
    l.func_wrap(
        m,
        "clock_res_get",
        |mut c: Caller<'_, VmState>, id: i32, ret: i32| -> i32 {
            if !(0..=1).contains(&id) {
                return NOTSUP;
            }
            errno(write_u64(&mut c, ret, 1))
        },
    )?;
    l.func_wrap(
        m,
        "random_get",
        |mut c: Caller<'_, VmState>, ptr: i32, len: i32| -> i32 {
            if len as u32 > 64 * 1024 {
                return INVAL;
            }
            let mut buf = vec![0u8; len as u32 as usize];
            rand::rng().fill_bytes(&mut buf);
            errno(write(&mut c, ptr, &buf))
        },
    )?;
    for name in ["environ_sizes_get", "args_sizes_get"] {
        l.func_wrap(
            m,
            name,
            |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
                errno(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
            },
        )?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(m, name, |_: Caller<'_, VmState>, _: i32, _: i32| -> i32 {
            SUCCESS
        })?;
    }
    l.func_wrap(
        m,
        "proc_exit",
        |c: Caller<'_, VmState>, status: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin {} called proc_exit({status})",
                c.data().name
            )))
        },
    )?;
    l.func_wrap(m, "sched_yield", |_: Caller<'_, VmState>| -> i32 {
        SUCCESS
    })?;
    // Never sleep on a proxy worker: report that no event fired.
    l.func_wrap(
        m,
        "poll_oneoff",
        |mut c: Caller<'_, VmState>, _in: i32, _out: i32, _n: i32, ret: i32| -> i32 {
            errno(write_u32(&mut c, ret, 0))
        },
    )?;
    l.func_wrap(
        m,
        "fd_fdstat_get",
        |mut c: Caller<'_, VmState>, fd: i32, ret: i32| -> i32 {
            if !(0..=2).contains(&fd) {
                return BADF;
            }
            let mut stat = [0u8; 24];
            let rights: u64 = if fd == 0 { 2 } else { 64 };
            stat[8..16].copy_from_slice(&rights.to_le_bytes());
            errno(write(&mut c, ret, &stat))
        },
    )?;
    for (name, params, answer) in DENIED {
        let ty = FuncType::new(
            l.engine(),
            params
                .chars()
                .map(|p| if p == 'I' { ValType::I64 } else { ValType::I32 }),
            [ValType::I32],
        );
        let answer = *answer;
        l.func_new(m, name, ty, move |_, _, results: &mut [Val]| {
            results[0] = Val::I32(answer);
            Ok(())
        })?;
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
