use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, "test.toml", Path::new("/etc/weir"))
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default();
    assert_eq!(c.listeners[0].addr.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9901");
    assert!(matches!(c.routes.last().unwrap().action, RouteAction::Echo));
}

#[test]
fn reports_every_error_at_once_with_places_and_hints() {
    let text = r#"
[[listener]]
name = "l"
listen = "127.0.0.1:8080"

[[cluster]]
name = "backend"
endpoints = ["127.0.0.1:9000"]
lb = "round_robbin"

[[route]]
name = "a"
cluster = "bakend"

[[route]]
name = "a"
match = { regex = "(" }
cluster = "backend"
"#;
    let err = parse(text).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(r#"test.toml:9:1: cluster[0].lb: unknown lb "round_robbin" (did you mean "round_robin"?)"#), "{text}");
    assert!(text.contains(r#"test.toml:13:1: route[0].cluster: no cluster named "bakend" (did you mean "backend"?)"#), "{text}");
    assert!(
        text.contains(r#"route[1].name: another route is already named "a""#),
        "{text}"
    );
    assert!(
        text.contains("route[1].match.regex: invalid regex \"(\""),
        "{text}"
    );
    assert_eq!(err.errors.len(), 4, "{text}");
}

#[test]
fn unknown_keys_are_all_rejected() {
    let text =
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\nlisen = 1\n[admin]\nlsten = \"x\"\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.errors.len(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("test.toml:4:1: listener[0].lisen: unknown key \"lisen\" in listener[0]"),
        "{text}"
    );
    assert!(text.contains("admin.lsten: unknown key"), "{text}");
}

#[test]
fn type_errors_name_their_place() {
    let err = parse(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\nmax_request_body = \"10 parsecs\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("test.toml:4:"), "{err}");
    assert!(err.to_string().contains("unknown unit"), "{err}");
}

#[test]
fn relative_paths_are_taken_from_the_config_folder() {
    let c = parse(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\ntls = { cert = \"a.pem\", key = \"/abs/a.key\" }\n",
    )
    .unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.default.cert, Path::new("/etc/weir/a.pem"));
    assert_eq!(tls.default.key, Path::new("/abs/a.key"));
    assert_eq!(c.plugins_dir, Path::new("/etc/weir/plugins"));
}

/// Every file in host/tests/config-ui/*.toml is invalid; its expected error text sits beside it as .err.
/// Set WEIR_BLESS=1 to rewrite the .err files.
#[test]
fn invalid_configs_match_their_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-ui");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let got = Config::from_toml(&text, &name, Path::new("."))
            .expect_err(&name)
            .to_string()
            + "\n";
        let expected_path = path.with_extension("err");
        if std::env::var_os("WEIR_BLESS").is_some() {
            std::fs::write(&expected_path, &got).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(
            got,
            expected,
            "{name}: error text differs from {}",
            expected_path.display()
        );
    }
    assert!(seen >= 5, "expected the config-ui snapshots, found {seen}");
}

#[test]
fn mtls_settings_are_checked() {
    let text = r#"
[[listener]]
name = "in"
listen = "127.0.0.1:15006"
tls = { cert = "c.pem", key = "k.pem", require_client_cert = true }

[[listener]]
name = "in2"
listen = "127.0.0.1:15007"
tls = { cert = "c.pem", key = "k.pem", client_ca = "ca.pem" }

[[cluster]]
name = "b"
endpoints = ["127.0.0.1:9000"]
tls = { cert = "c.pem", allowed_identities = ["spiffe://Example.org/x", "spiffe://example.org/ns/*", "*"] }

[[route]]
name = "r"
cluster = "b"
"#;
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("listener[0].tls.require_client_cert: client certificates cannot be checked without a CA"), "{err}");
    assert!(
        err.contains("cluster[0].tls.cert: a client certificate needs its key"),
        "{err}"
    );
    assert!(
        err.contains("cluster[0].tls.allowed_identities[0]"),
        "{err}"
    );
    assert!(err.contains("lowercase"), "{err}");
    assert!(
        !err.contains("allowed_identities[1]") && !err.contains("allowed_identities[2]"),
        "{err}"
    );
    assert!(!err.contains("listener[1]"), "{err}");

    let ok = parse(
        &text
            .replace(", require_client_cert = true", "")
            .replace(
                "cert = \"c.pem\", allowed",
                "cert = \"c.pem\", key = \"k.pem\", allowed",
            )
            .replace("Example", "example"),
    )
    .unwrap();
    let tls = ok.listeners[1].tls.as_ref().unwrap();
    assert!(
        tls.require_client_cert,
        "client_ca alone requires a client certificate"
    );
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(Path::new("/etc/weir/ca.pem"))
    );
    assert!(!ok.listeners[0].tls.as_ref().unwrap().require_client_cert);
    let ctls = ok.clusters[0].tls.as_ref().unwrap();
    assert_eq!(
        ctls.client_cert.as_ref().unwrap().key,
        Path::new("/etc/weir/k.pem")
    );
    assert_eq!(ctls.allowed_identities.len(), 3);
}

#[test]
fn original_dst_clusters_have_no_endpoints() {
    let base = r#"
[[listener]]
name = "captured"
listen = "127.0.0.1:15002"
transparent = true

[[cluster]]
name = "passthrough"
original_dst = true
ENDPOINTS

[[route]]
name = "r"
cluster = "passthrough"
"#;
    let ok = parse(&base.replace("ENDPOINTS", "")).unwrap();
    assert!(ok.listeners[0].transparent);
    assert!(ok.clusters[0].original_dst && ok.clusters[0].endpoints.is_empty());
    let err = parse(&base.replace("ENDPOINTS", "endpoints = [\"127.0.0.1:1\"]"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "cluster[0].original_dst: an original_dst cluster has no endpoints of its own"
        ),
        "{err}"
    );
    let err = parse(&base.replace("original_dst = true\nENDPOINTS", ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster[0].endpoints: no endpoints"), "{err}");
}

#[test]
fn bundled_plugins_are_named_ones() {
    let text = "[plugins]\nbundled = [\"telemetry\", \"telemetri\"]\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"e\"\necho = true\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.contains(
            "plugins.bundled[1]: no bundled plugin named \"telemetri\"; weir bundles telemetry, authn-jwt, authz-rbac, ratelimit"
        ),
        "{err}"
    );
    let ok = parse(&text.replace(", \"telemetri\"", "")).unwrap();
    assert_eq!(
        ok.plugin_defaults.bundled,
        ["telemetry"],
        "this weir is built with it"
    );
    let embedded = Config::embedded_default().plugin_defaults;
    assert_eq!(
        embedded.bundled,
        ["telemetry", "authn-jwt", "authz-rbac", "ratelimit"]
    );
    // Their settings, as the TOML a NAME.toml would hold.
    let authn: toml::Table = toml::from_str(&embedded.bundled_settings["authn-jwt"]).unwrap();
    assert_eq!(authn["routes"].as_array().unwrap()[0].as_str(), Some("api"));
    assert!(authn["config"]["providers"].is_array());
    assert!(!embedded.bundled_settings.contains_key("telemetry"));
}

#[test]
fn settings_of_a_plugin_not_bundled_are_refused() {
    let text = "[plugins]\nbundled = [\"telemetry\"]\n[plugins.settings.ratelimit]\nroutes = [\"api\"]\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"e\"\necho = true\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.contains("plugins.settings.ratelimit: settings for \"ratelimit\", which plugins.bundled does not run"),
        "{err}"
    );
}

#[test]
fn instance_slots_are_bounded() {
    let base = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\necho = true\n";
    let c = parse(base).unwrap();
    assert_eq!(c.plugin_instance_slots, None, "sized from the workers");
    let c = parse(&format!("[plugins]\ninstance_slots = 0\n{base}")).unwrap();
    assert_eq!(c.plugin_instance_slots, Some(0), "0: no pool");
    let err = parse(&format!("[plugins]\ninstance_slots = 5000\n{base}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "plugins.instance_slots: 5000 slots would reserve 39 TiB of address space; at most 4096"
        ),
        "{err}"
    );
}

#[test]
fn max_concurrent_streams_is_for_http2_clusters_and_at_least_one() {
    let base = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n";
    let c = parse(&format!(
        "{base}[[cluster]]\nname = \"h2\"\nendpoints = [\"127.0.0.1:2\"]\nprotocol = \"http2\"\n"
    ))
    .unwrap();
    assert_eq!(c.clusters[0].max_concurrent_streams, 100, "the default");
    let text = parse(&format!(
        "{base}[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:2\"]\nmax_concurrent_streams = 8\n\n[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:2\"]\nprotocol = \"http2\"\nmax_concurrent_streams = 0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("cluster[0].max_concurrent_streams: only HTTP/2 connections carry concurrent streams: set protocol = \"http2\""),
        "{text}"
    );
    assert!(
        text.contains("cluster[1].max_concurrent_streams: 0 streams would send nothing"),
        "{text}"
    );
}

#[test]
fn http2_keepalive_needs_an_interval_and_an_http2_cluster() {
    let base = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n";
    let c = parse(&format!(
        "{base}[[cluster]]\nname = \"h2\"\nendpoints = [\"127.0.0.1:2\"]\nprotocol = \"http2\"\nkeepalive_interval = \"30s\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.clusters[0].keepalive,
        Some((
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(20)
        )),
        "the timeout's default"
    );
    let text = parse(&format!(
        "{base}[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:2\"]\nkeepalive_interval = \"30s\"\n\n[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:2\"]\nprotocol = \"http2\"\nkeepalive_timeout = \"5s\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("cluster[0].keepalive_interval: HTTP/2 pings keep HTTP/2 connections: set protocol = \"http2\""),
        "{text}"
    );
    assert!(
        text.contains("cluster[1].keepalive_timeout: no pings are sent without keepalive_interval"),
        "{text}"
    );
}

#[test]
fn the_quota_services_call_name_is_no_cluster_name() {
    let text = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:8080"

[[cluster]]
name = "weir.quota"
endpoints = ["127.0.0.1:9000"]

[[route]]
name = "r"
cluster = "weir.quota"
"#;
    let err = parse(text).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(r#"cluster[0].name: "weir.quota" is the quota service's name for proxy-wasm http calls: name the cluster otherwise"#),
        "{text}"
    );
    assert_eq!(err.errors.len(), 1, "{text}");
}

#[test]
fn max_response_header_size_defaults_to_60_kib_and_is_bounded() {
    let text = |size: &str| {
        format!(
            "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:9000\"]\n{size}\n\n[[route]]\nname = \"r\"\ncluster = \"b\"\n"
        )
    };
    let c = parse(&text("")).unwrap();
    assert_eq!(c.clusters[0].max_response_header_size, 60 * 1024);
    let c = parse(&text("max_response_header_size = \"1MiB\"")).unwrap();
    assert_eq!(c.clusters[0].max_response_header_size, 1 << 20);
    let err = parse(&text("max_response_header_size = \"100MiB\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster[0].max_response_header_size: must be between 1KiB and 16MiB"),
        "{err}"
    );
}
