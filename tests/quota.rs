//! The quota service through the real binary: the ratelimit plugin on the
//! local backend (exact across workers), proxy-wasm's foreign function, and
//! the redis backend shared by two weir processes against a real Redis
//! server, with its failure policies when Redis goes away.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Upstream, Weir, free_port, sdk_plugin, test_filter};

/// A weir with the ratelimit plugin configured by `limits` (TOML of `[[config.limits]]`) and `quota` (a `[quota]` table).
async fn weir_with_ratelimit(limits: &str, quota: &str, up: &Upstream) -> Weir {
    weir_with_workers(2, limits, quota, up).await
}

/// As [`weir_with_ratelimit`], with `workers` worker threads.
async fn weir_with_workers(workers: usize, limits: &str, quota: &str, up: &Upstream) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(sdk_plugin("ratelimit"), plugins.join("40-ratelimit.wasm")).unwrap();
    std::fs::write(plugins.join("40-ratelimit.toml"), limits).unwrap();
    std::fs::copy(test_filter("pw-test"), plugins.join("50-pw-test.wasm")).unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "[server]\nworkers = {workers}\n\n{quota}\n\n{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

/// How weir calls plugin `name`, as /plugins shows it.
async fn calls_of(w: &Weir, name: &str) -> String {
    w.plugin_status(name).await["calls"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn statuses(urls: &[String]) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for u in urls {
        out.push(client.get(u).send().await.unwrap().status().as_u16());
    }
    out
}

#[tokio::test]
async fn the_local_backend_holds_a_limit_exactly_across_concurrent_clients() {
    let up = Upstream::start("app").await;
    let w = weir_with_ratelimit(
        "[[config.limits]]\nname = \"everyone\"\ndescriptor = [\"literal:all\"]\ntokens = 20\nperiod = \"1h\"\n",
        "",
        &up,
    )
    .await;
    // 8 clients, 5 requests each, at once: exactly 20 get through.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = w.url("/hello");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut got = Vec::new();
                for _ in 0..5 {
                    let r = client.get(&url).send().await.unwrap();
                    got.push((
                        r.status().as_u16(),
                        r.headers().get("retry-after").is_some(),
                    ));
                }
                got
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        for (status, retry_after) in t.await.unwrap() {
            match status {
                200 => ok += 1,
                429 => {
                    assert!(retry_after, "a 429 says when to retry");
                    limited += 1
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!((ok, limited), (20, 20));
    // A local take never waits: the plugin is called without a fiber.
    assert_eq!(calls_of(&w, "ratelimit").await, "synchronous");
    assert_eq!(up.hits(), 20, "limited requests never reached the upstream");
    let m = w.metrics().await;
    assert!(
        m.contains("weir_quota_decisions_total{backend=\"local\",outcome=\"denied\"} 20"),
        "{m}"
    );
}

#[tokio::test]
async fn proxy_wasm_plugins_reach_the_quota_through_a_foreign_function() {
    let up = Upstream::start("app").await;
    let w = weir_with_ratelimit("", "", &up).await;
    let client = reqwest::Client::new();
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = client.get(w.url("/quota")).send().await.unwrap();
        got.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    assert_eq!(got[0].0, 200, "{got:?}");
    assert!(
        got[0].1.contains("\"allowed\":true") && got[0].1.contains("\"remaining\":1"),
        "{got:?}"
    );
    assert_eq!(got[1].0, 200);
    assert_eq!(got[2].0, 429, "{got:?}");
    assert!(got[2].1.contains("\"allowed\":false"), "{got:?}");

    // The same take as an http call to `weir.quota`: the decision comes back
    // in on_http_call_response as a 200 with the same JSON.
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = client.get(w.url("/quota-async")).send().await.unwrap();
        let quota_status = r.headers()["x-quota-status"].to_str().unwrap().to_string();
        got.push((r.status().as_u16(), quota_status, r.text().await.unwrap()));
    }
    assert_eq!((got[0].0, got[0].1.as_str()), (200, "200"), "{got:?}");
    assert!(
        got[0].2.contains("\"allowed\":true") && got[0].2.contains("\"remaining\":1"),
        "{got:?}"
    );
    assert_eq!(got[1].0, 200, "{got:?}");
    assert_eq!((got[2].0, got[2].1.as_str()), (429, "200"), "{got:?}");
    assert!(got[2].2.contains("\"allowed\":false"), "{got:?}");
    // A bad argument fails the call at once, and the log says why.
    let r = client.get(w.url("/quota-bad")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "dispatch failed: BadArgument\n");
    assert!(
        w.logs()
            .contains("http call to weir.quota: bad argument: invalid type: integer `1`"),
        "{}",
        w.logs()
    );
}

/// A proxy-wasm take through an http call to `weir.quota` waits for Redis on
/// its own task, not in a callback: with one worker thread and Redis paused,
/// another request is served while the take waits. (The foreign function
/// `weir.quota.take` would hold that worker until Redis answered.)
#[tokio::test]
async fn a_redis_take_through_an_http_call_leaves_the_worker_serving() {
    use std::io::{Read, Write};
    let redis = Redis::start();
    let up = Upstream::start("app").await;
    let quota = format!(
        "[quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\ntimeout = \"20s\"\n",
        redis.port
    );
    let w = weir_with_workers(1, "", &quota, &up).await;
    let client = reqwest::Client::new();
    // One take first, so that weir's Redis connection is open before the pause.
    let r = client.get(w.url("/quota-async")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let mut admin = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    admin
        .write_all(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$4\r\n5000\r\n")
        .unwrap();
    let mut ok = [0u8; 5];
    admin.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n", "CLIENT PAUSE");

    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), w.url("/quota-async"));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    // Let the take reach Redis, then ask the same worker for something else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client.get(w.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !waiting.is_finished(),
        "the take answered before Redis's pause ended"
    );
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"remaining\":0"),
        "the second take of two: {body}"
    );
}

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for the global quota test (apt-get install redis-server; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_weirs_share_one_budget_through_redis_and_follow_their_failure_policy_without_it() {
    let mut redis = Redis::start();
    let up = Upstream::start("app").await;
    let limits = "[[config.limits]]\nname = \"global\"\ndescriptor = [\"literal:all\"]\ntokens = 10\nperiod = \"1h\"\n";
    let quota = |failure: &str| {
        format!(
            "[quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\ntimeout = \"200ms\"\nfailure = \"{failure}\"\n",
            redis.port
        )
    };
    let a = weir_with_ratelimit(limits, &quota("open"), &up).await;
    let b = weir_with_ratelimit(limits, &quota("closed"), &up).await;
    // 16 requests alternating between the two weirs: 10 in all get through.
    let urls: Vec<String> = (0..16)
        .map(|i| if i % 2 == 0 { a.url("/x") } else { b.url("/x") })
        .collect();
    let got = statuses(&urls).await;
    // A Redis take waits on the network: the plugin's callbacks run on fibers.
    assert_eq!(calls_of(&a, "ratelimit").await, "async");
    assert_eq!(got.iter().filter(|s| **s == 200).count(), 10, "{got:?}");
    assert_eq!(got.iter().filter(|s| **s == 429).count(), 6, "{got:?}");
    assert!(
        got[..10].iter().all(|s| *s == 200),
        "the first ten, from both weirs, got through: {got:?}"
    );

    // Redis goes away: "open" lets requests through, "closed" refuses them; both count it.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let got = statuses(&[a.url("/x"), b.url("/x")]).await;
    assert_eq!(got, [200, 429], "open allows, closed denies");
    for w in [&a, &b] {
        let m = w.metrics().await;
        assert!(
            m.contains("weir_quota_backend_errors_total{backend=\"redis\"}"),
            "{m}"
        );
    }
    assert!(
        a.logs()
            .contains("quota backend failed, the request is allowed"),
        "{}",
        a.logs()
    );
    assert!(
        b.logs()
            .contains("quota backend failed, the request is denied"),
        "{}",
        b.logs()
    );
}
