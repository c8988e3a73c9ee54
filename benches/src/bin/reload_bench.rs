//! The plugin reload bench: how long from a plugin file written into the
//! plugins folder to its new version answering requests, and what reloading
//! every second does to latency under load.
//!
//! ```text
//! cargo run --release -p weir-benches --bin reload_bench -- [--trials 15] [--load-seconds 60] [--rounds 3] [--reload-cached] [--no-disk-cache] [--instance-slots N] [--pin]
//! ```
//!
//! Runs a release weir (built first) on 127.0.0.1 with the built-in echo route
//! and one plugin that adds `x-version` to responses. For a small (about 100 KB)
//! and a large (about 2 MB) plugin it writes new versions (write-then-rename,
//! as deployment tools do) and polls on a keep-alive connection until the new
//! value shows: "cold" versions are new bytes (compiled), "cached" ones were
//! loaded before (taken from the module cache). It prints the median, min and
//! max of each. Then, if wrk is installed, it runs wrk for `--load-seconds`
//! (32 connections, 2 threads) `--rounds` times in pairs: once without
//! reloads, once with a new version of the small plugin every second (with
//! --reload-cached: one of two versions loaded before the first round,
//! alternately, so no compilation),
//! the order within a pair alternating from round to round. It prints p50,
//! p99 and the non-2xx count of every run (with reloads: how many versions
//! were written and how many went live meanwhile, from weir's /metrics), the ratio of the p99 medians, and
//! the median of the rounds' own p99 ratios. weir keeps compiled modules in
//! a disk cache folder, as `weir run` does by default; `--no-disk-cache`
//! runs it without one. `--instance-slots N` sets `[plugins]
//! instance_slots` (0: instances without the pooling allocator). `--pin` (Linux, needs `taskset`) runs weir, all its
//! threads, on CPU 1 and wrk on CPU 0, so that where the scheduler places
//! wrk's threads against weir's worker does not decide the result; on a
//! 2-core machine it leaves weir's background threads only what the worker
//! leaves of its core. Everything stays on loopback and is bounded in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PORT: u16 = 18_401;
const ADMIN: u16 = 18_491;

/// `--pin`: weir on CPU 1, wrk on CPU 0.
static PIN: AtomicBool = AtomicBool::new(false);

/// `program`, run under `taskset -c <cpu>` when pinning.
fn pinned(program: &Path, cpu: &str) -> Command {
    if PIN.load(Ordering::Relaxed) {
        let mut c = Command::new("taskset");
        c.args(["-c", cpu]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A proxy-wasm module adding `x-version: <version>` to responses, padded with
/// `fillers` compute functions so that it is realistically big to compile.
fn module(version: &str, fillers: usize) -> Vec<u8> {
    let mut text = format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-version")
  (data (i32.const 256) "{version}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 9) (i32.const 256) (i32.const {len})))
    i32.const 0)
"#,
        len = version.len()
    );
    for i in 0..fillers {
        // A loop with arithmetic and memory traffic: code the compiler must work on.
        text.push_str(&format!(
            "(func $f{i} (param $n i32) (result i32) (local $acc i32) (local $j i32)
  (block $done (loop $next
    (br_if $done (i32.ge_u (local.get $j) (local.get $n)))
    (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const {m})) (local.get $j)))
    (local.set $acc (i32.xor (local.get $acc) (i32.shr_u (local.get $acc) (i32.const 13))))
    (i32.store (i32.and (local.get $j) (i32.const 4092)) (local.get $acc))
    (local.set $acc (i32.add (local.get $acc) (i32.load (i32.and (local.get $acc) (i32.const 4092)))))
    (local.set $j (i32.add (local.get $j) (i32.const 1)))
    (br $next)))
  (local.get $acc))\n",
            m = 31 + i % 97
        ));
    }
    text.push(')');
    wat::parse_str(text).expect("the generated module is valid")
}

/// How many filler functions make a module of about `bytes`.
fn fillers_for(bytes: usize) -> usize {
    let one = module("v", 1).len();
    let ten = module("v", 11).len();
    let per = (ten - one) / 10;
    bytes.saturating_sub(one) / per
}

fn write_then_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// How many plugin versions have gone live so far: the sum of weir's
/// `weir_plugin_reloads_total{outcome="success"}` counters on /metrics.
fn live_reloads() -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", ADMIN)).expect("weir's admin listens");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("weir_plugin_reloads_total{") && l.contains("outcome=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A keep-alive HTTP/1.1 client for one header.
struct Probe {
    reader: BufReader<TcpStream>,
}

impl Probe {
    fn connect() -> Probe {
        let s = TcpStream::connect(("127.0.0.1", PORT)).expect("weir listens");
        s.set_nodelay(true).unwrap();
        Probe {
            reader: BufReader::new(s),
        }
    }

    /// The `x-version` header of one GET /.
    fn version(&mut self) -> Option<String> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            .ok()?;
        let (mut version, mut length) = (None, 0usize);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("x-version:") {
                version = Some(v.trim().to_string());
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).ok()?;
        version
    }
}

/// Writes `bytes` as the plugin and returns how long until `version` answers.
fn swap(file: &Path, bytes: &[u8], version: &str, probe: &mut Probe) -> Duration {
    write_then_rename(file, bytes);
    let written = Instant::now();
    loop {
        if probe.version().as_deref() == Some(version) {
            return written.elapsed();
        }
        assert!(
            written.elapsed() < Duration::from_secs(30),
            "version {version} never served"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<28} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   ({} trials)",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

struct Weir(Child);

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_weir(root: &Path, dir: &Path, disk_cache: bool, instance_slots: Option<u32>) -> Weir {
    let config = dir.join("weir.toml");
    let cache = if disk_cache {
        dir.join("cache").display().to_string()
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{ADMIN}\"\n[server]\nworkers = 1\n[plugins]\ncache_dir = \"{}\"\n{}[[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:{PORT}\"\n[[route]]\nname = \"echo\"\necho = true\n",
            cache,
            instance_slots.map_or(String::new(), |n| format!("instance_slots = {n}\n"))
        ),
    )
    .unwrap();
    let child = pinned(&root.join("target/release/weir"), "1")
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting weir");
    let weir = Weir(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", ADMIN)).is_err() {
        assert!(Instant::now() < deadline, "weir did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    weir
}

/// wrk's p50 and p99 (ms), requests, and non-2xx responses plus socket errors.
fn wrk(seconds: u64) -> (f64, f64, u64, u64) {
    let out = pinned(Path::new("wrk"), "0")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{PORT}/"))
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in wrk output:\n{text}"));
        let v = line.split_whitespace().nth(1).unwrap();
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
        let n: f64 = num.parse().unwrap();
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let bad: u64 = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    (ms("50%"), ms("99%"), requests, bad)
}

fn main() {
    let mut trials = 15usize;
    let mut load_seconds = 60u64;
    let mut reload_cached = false;
    let mut rounds = 3;
    let mut disk_cache = true;
    let mut instance_slots = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--trials" => trials = args.next().and_then(|v| v.parse().ok()).unwrap_or(trials),
            "--load-seconds" => {
                load_seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(load_seconds)
            }
            "--reload-cached" => reload_cached = true,
            "--no-disk-cache" => disk_cache = false,
            "--instance-slots" => {
                instance_slots = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--instance-slots takes a number"),
                )
            }
            "--pin" => PIN.store(true, Ordering::Relaxed),
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            other => panic!("unknown argument {other}; see the file's doc comment"),
        }
    }
    if PIN.load(Ordering::Relaxed) {
        let ok = Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "--pin needs taskset (util-linux)");
    }
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new("cargo")
        .args(["build", "--release", "-p", "weir"])
        .current_dir(&root)
        .status()
        .expect("running cargo");
    assert!(built.success(), "building weir failed");

    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let file = plugins.join("10-version.wasm");
    std::fs::write(&file, module("start", 0)).unwrap();
    let _weir = start_weir(&root, dir.path(), disk_cache, instance_slots);
    let mut probe = Probe::connect();
    assert_eq!(probe.version().as_deref(), Some("start"));

    let sizes: &[(&str, usize)] = if trials == 0 {
        &[]
    } else {
        &[("small", 100 * 1024), ("large", 2 * 1024 * 1024)]
    };
    for &(label, size) in sizes {
        let fillers = fillers_for(size);
        let kb = module("x", fillers).len() / 1024;
        let mut cold = Vec::new();
        for i in 0..trials {
            let v = format!("{label}-cold-{i}");
            cold.push(swap(&file, &module(&v, fillers), &v, &mut probe));
        }
        summary(&format!("{label} ({kb} KB), cold"), cold);
        // Two versions seen before, alternately: both in the module cache.
        let a = module(&format!("{label}-cold-0"), fillers);
        let b = module(&format!("{label}-cold-1"), fillers);
        let mut cached = Vec::new();
        for i in 0..trials {
            let (bytes, v) = if i % 2 == 0 {
                (&a, format!("{label}-cold-0"))
            } else {
                (&b, format!("{label}-cold-1"))
            };
            cached.push(swap(&file, bytes, &v, &mut probe));
        }
        summary(&format!("{label} ({kb} KB), cached"), cached);
    }

    if Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk is not installed (apt-get install wrk): skipping the load part");
        return;
    }
    std::fs::write(&file, module("steady", fillers_for(100 * 1024))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Made beforehand: generating modules during a run would take CPU from it.
    let fillers = fillers_for(100 * 1024);
    let per_run = if reload_cached {
        2
    } else {
        load_seconds as usize + 5
    };
    let mut versions = (0..rounds * per_run).map(|v| module(&format!("load-{v}"), fillers));
    // Cached: the same two versions in every round, each loaded once
    // beforehand, so that no run compiles.
    let cached: Option<Vec<Vec<u8>>> = reload_cached.then(|| {
        ["cached-a", "cached-b"]
            .iter()
            .map(|v| {
                let bytes = module(v, fillers);
                swap(&file, &bytes, v, &mut probe);
                bytes
            })
            .collect()
    });
    // Interleaved in pairs, the order alternating (without reloads first in
    // odd rounds, with reloads first in even ones), so that drift on the
    // machine or in the long-running weir process hits both alike.
    let (mut plain, mut reloading) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let batch: Vec<Vec<u8>> = match &cached {
            Some(both) => both.clone(),
            None => versions.by_ref().take(per_run).collect(),
        };
        for reloads_now in [round.is_multiple_of(2), !round.is_multiple_of(2)] {
            if reloads_now {
                reloading.push(loaded_run(round, load_seconds, &file, batch.clone()));
            } else {
                let (p50, p99, n, bad) = wrk(load_seconds);
                println!(
                    "round {round}: wrk {load_seconds}s, no reloads:      p50 {p50:.3} ms  p99 {p99:.3} ms  {n} requests, {bad} non-2xx or errors"
                );
                plain.push((p50, p99, n, bad));
            }
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        let mid = xs.len() / 2;
        if xs.len().is_multiple_of(2) {
            (xs[mid - 1] + xs[mid]) / 2.0
        } else {
            xs[mid]
        }
    };
    let p99 = median(plain.iter().map(|r| r.1).collect());
    let p99r = median(reloading.iter().map(|r| r.1).collect());
    let pairwise = median(
        plain
            .iter()
            .zip(&reloading)
            .map(|(p, r)| r.1 / p.1)
            .collect(),
    );
    let above = plain
        .iter()
        .zip(&reloading)
        .filter(|(p, r)| r.1 > p.1 * 1.1)
        .count();
    let n = median(plain.iter().map(|r| r.2 as f64).collect());
    let nr = median(reloading.iter().map(|r| r.2 as f64).collect());
    let bad: u64 = reloading.iter().map(|r| r.3).sum();
    println!(
        "medians of {rounds}: p99 {p99:.3} ms without reloads, {p99r:.3} ms with: x{:.2}; median of the rounds' ratios x{pairwise:.2} ({above} of {rounds} rounds above x1.10); req/s with / without: x{:.2}; non-2xx or errors with reloads: {bad}",
        p99r / p99,
        nr / n
    );
}

/// One wrk run while a new plugin version from `batch` is written every
/// second; prints and returns wrk's figures.
fn loaded_run(
    round: usize,
    seconds: u64,
    file: &Path,
    batch: Vec<Vec<u8>>,
) -> (f64, f64, u64, u64) {
    let live_before = live_reloads();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (stop, file) = (stop.clone(), file.to_path_buf());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_then_rename(&file, &batch[n % batch.len()]);
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            n
        })
    };
    let (p50, p99, n, bad) = wrk(seconds);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = reloader.join().unwrap();
    // Counted before the last write settles: it may still be loading.
    let live = live_reloads() - live_before;
    println!(
        "round {round}: wrk {seconds}s, reload every 1s:  p50 {p50:.3} ms  p99 {p99:.3} ms  {n} requests, {bad} non-2xx or errors ({reloads} versions written, {live} went live during the run)"
    );
    (p50, p99, n, bad)
}
