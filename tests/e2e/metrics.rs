//! Prometheus metrics on the three-network deployment of
//! `deploy/three-networks.toml` (loopback addresses, mutual TLS with
//! certificates made by `custody certs init`): `/metrics` scraped over
//! HTTP/1.1 like Prometheus does and parsed by `prometheus_client`'s
//! parsers (tests/python/scrape_metrics.py); counters move by exactly the
//! traffic sent; only auditors and admins may scrape, only where `node` or
//! `metrics` is served; and every metric the alert rules of
//! `deploy/prometheus/alerts.yml` name is in a real scrape.

use crate::testkit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use custody_server::{ServerConfig, ServiceKind};
use serde_json::Value;

/// Panics with the install hint when the Python parsers are missing.
fn require_python_parsers() {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with prometheus_client and PyYAML is required: run scripts/setup --test"
    );
}

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Scrapes `/metrics` at `addr` as principal `who` (certificates in
/// `certs`); with `deploy` it also reads the Prometheus files of deploy/.
fn scrape_with(addr: &str, certs: &Path, who: &str, deploy: bool) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/python/scrape_metrics.py"))
        .arg(addr)
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{who}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{who}.key")));
    if deploy {
        cmd.arg("--rules")
            .arg(root().join("deploy/prometheus/alerts.yml"))
            .arg("--config")
            .arg(root().join("deploy/prometheus/prometheus.yml"));
    }
    let out = cmd.output().expect("run python3");
    assert!(
        out.status.success(),
        "scrape_metrics.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("scrape_metrics.py prints JSON")
}

fn scrape(addr: &str, certs: &Path, who: &str) -> Value {
    scrape_with(addr, certs, who, false)
}

/// The value of the sample `name` whose labels include `labels`; 0 when
/// there is none (a counter not yet created).
fn value(s: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|x| x[0] == name)
        .filter(|x| labels.iter().all(|(k, v)| x[1][*k] == *v))
        .map(|x| x[2].as_f64().expect("numeric value"))
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

fn has_sample(s: &Value, name: &str) -> bool {
    s["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .any(|x| x[0] == name)
}

struct Deployment {
    _tmp: tempfile::TempDir,
    _daemon: testkit::Daemon,
    dir: PathBuf,
    certs: PathBuf,
    addrs: BTreeMap<String, String>,
    config: ServerConfig,
}

fn deploy() -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    testkit::certs_init(
        &certs,
        &["cam-a"],
        &[
            "op:operator",
            "inv:investigator",
            "aud:auditor",
            "adm:admin",
        ],
    );
    let mut config =
        ServerConfig::from_toml(include_str!("../../deploy/three-networks.toml")).unwrap();
    for l in &mut config.listeners {
        l.addr = "127.0.0.1:0".to_string();
        let tls = l.tls.as_mut().expect("every deployed listener has TLS");
        tls.cert = certs.join("server.pem");
        tls.key = certs.join("server.key");
        tls.client_ca = certs.join("ca.pem");
    }
    config.auth.revoked_serials_file = None;
    // Sweeps run when the test says (a policy change takes effect at once).
    config.retention.sweeper_enabled = false;
    config.retention.policy_grace_secs = 0;
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(&cfg, toml::to_string(&config).unwrap()).unwrap();
    let (daemon, addrs) =
        testkit::start_listeners(&cfg, &tmp.path().join("data"), config.listeners.len());
    Deployment {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        _daemon: daemon,
        certs,
        addrs,
        config,
    }
}

/// Unix time at which the PEM certificate at `path` expires.
fn not_after(path: &Path) -> i64 {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    pem.parse_x509().unwrap().validity().not_after.timestamp()
}

#[test]
fn counters_move_by_exactly_the_traffic_sent_and_only_where_and_for_whom_allowed() {
    require_python_parsers();
    let d = deploy();
    let (cameras, operators, admin) = (
        &d.addrs["cameras"],
        &d.addrs["operators"],
        &d.addrs["admin"],
    );
    let before = scrape(admin, &d.certs, "aud");
    assert_eq!(before["status"], 200, "{before}");
    assert!(
        before["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{before}"
    );

    // Traffic: three uploads on the camera network...
    let sizes = [1000usize, 2000, 3000];
    let files: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let f = d.dir.join(format!("seg{i}.ts"));
            std::fs::write(&f, vec![i as u8 + 1; *n]).unwrap();
            f
        })
        .collect();
    let mut args = vec!["--json", "ingest"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend([
        "--camera",
        "cam-a",
        "--start",
        "2026-01-01T10:00:00Z",
        "--segment-duration",
        "2",
    ]);
    let out = testkit::custody_tls(cameras, &d.certs, "cam-a", &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["segment_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    // ...one read and one refused call on the operators' network.
    let got = d.dir.join("got.ts");
    let out = testkit::custody_tls(
        operators,
        &d.certs,
        "op",
        &["get", &ids[1], "-o", got.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&got).unwrap().len(), sizes[1]);
    let out = testkit::custody_tls(operators, &d.certs, "op", &["hold", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PermissionDenied"),
        "an operator may not list holds: {err}"
    );

    let after = scrape(admin, &d.certs, "aud");
    assert_eq!(after["status"], 200, "{after}");
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let cams = [("listener", "cameras")];
    let ops = [("listener", "operators")];
    assert_eq!(delta("custody_ingest_segments_total", &cams), 3.0);
    assert_eq!(
        delta("custody_ingest_bytes_total", &cams),
        sizes.iter().sum::<usize>() as f64
    );
    assert_eq!(delta("custody_ingest_duration_seconds_count", &cams), 3.0);
    assert_eq!(delta("custody_ingest_duplicates_total", &cams), 0.0);
    // Each stored segment was acknowledged by exactly one group-commit round.
    assert_eq!(delta("custody_commit_round_segments_sum", &[]), 3.0);
    let rounds = delta("custody_commit_round_duration_seconds_count", &[]);
    assert!(
        (1.0..=3.0).contains(&rounds),
        "{rounds} rounds for 3 segments"
    );
    assert_eq!(delta("custody_read_duration_seconds_count", &ops), 1.0);
    assert_eq!(
        delta(
            "custody_refusals_total",
            &[("listener", "operators"), ("reason", "role")]
        ),
        1.0
    );
    assert_eq!(value(&after, "custody_catalog_segments", &[]), 3.0);
    assert_eq!(value(&after, "custody_catalog_cameras", &[]), 1.0);
    assert_eq!(value(&after, "custody_catalog_bytes", &[]), 6000.0);
    assert_eq!(value(&after, "custody_holds_active", &[]), 0.0);
    assert_eq!(
        value(&after, "custody_disk_reserve_bytes", &[]),
        64.0 * 1024.0 * 1024.0
    );
    for dir in ["catalog", "objects"] {
        assert!(
            value(&after, "custody_disk_free_bytes", &[("dir", dir)]) > 0.0,
            "{dir}"
        );
    }
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&after, "custody_audit_flush_duration_seconds_count", &[]) >= 1.0);
    let expiry = not_after(&d.certs.join("server.pem")) as f64;
    for l in ["cameras", "operators", "admin"] {
        assert_eq!(
            value(
                &after,
                "custody_listener_certificate_not_after_timestamp_seconds",
                &[("listener", l)]
            ),
            expiry
        );
    }

    // The sweeper: a 1 s retention expires all three segments; a hold
    // keeps the first; one sweep deletes the other two.
    let ok = |addr: &str, who: &str, args: &[&str]| {
        let out = testkit::custody_tls(addr, &d.certs, who, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        admin,
        "adm",
        &["policy", "set", "--camera", "cam-a", "--retain-for", "1s"],
    );
    ok(
        operators,
        "inv",
        &[
            "hold",
            "create",
            "--cameras",
            "cam-a",
            "--from",
            "2026-01-01T10:00:00Z",
            "--to",
            "2026-01-01T10:00:01Z",
            "--case",
            "C-1",
            "--reason",
            "metrics test",
        ],
    );
    ok(admin, "adm", &["sweep"]);
    let swept = scrape(admin, &d.certs, "aud");
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&swept, name, labels) - value(&after, name, labels)
    };
    assert_eq!(moved("custody_sweep_deleted_segments_total", &[]), 2.0);
    assert_eq!(
        moved("custody_sweeps_total", &[("outcome", "complete")]),
        1.0
    );
    assert_eq!(
        value(&swept, "custody_sweep_kept_by_hold_segments", &[]),
        1.0
    );
    assert_eq!(value(&swept, "custody_holds_active", &[]), 1.0);
    assert_eq!(value(&swept, "custody_catalog_segments", &[]), 1.0);
    assert_eq!(value(&swept, "custody_sweeper_enabled", &[]), 0.0);
    // Just swept through: the lag is the seconds since, not since the start.
    assert!(value(&swept, "custody_sweep_lag_seconds", &[]) < 30.0);
    assert!(value(&swept, "custody_sweep_last_run_timestamp_seconds", &[]) > 1.7e9);

    // Who may scrape: an operator's certificate is refused and counted.
    let refused = scrape(admin, &d.certs, "op");
    assert_eq!(refused["status"], 403, "{refused}");
    let body = refused["body"].as_str().unwrap();
    assert!(body.contains("op") && body.contains("auditor"), "{body}");
    let adm = scrape(admin, &d.certs, "adm");
    assert_eq!(adm["status"], 200, "an admin may scrape");
    assert_eq!(
        value(
            &adm,
            "custody_refusals_total",
            &[("listener", "admin"), ("reason", "role")]
        ) - value(
            &after,
            "custody_refusals_total",
            &[("listener", "admin"), ("reason", "role")]
        ),
        1.0
    );
    // Where: listeners without node or metrics have no /metrics, whoever
    // asks. Those without any HTTP route speak no HTTP/1.1 (the handshake
    // offers only h2); the others answer 404...
    for l in &d.config.listeners {
        if ServiceKind::serves_metrics(&l.services) {
            continue;
        }
        let http = l.services.iter().any(|s| s.has_http_routes());
        for who in ["cam-a", "op", "aud"] {
            let none = scrape(&d.addrs[&l.name], &d.certs, who);
            if http {
                assert_eq!(none["status"], 404, "{}: {none}", l.name);
            } else {
                assert_eq!(none["status"], "tls-refused", "{}: {none}", l.name);
            }
        }
    }
    // ...and over HTTP/2 the path does not exist there.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (addr, who) in [(cameras, "cam-a"), (operators, "aud")] {
        assert_eq!(rt.block_on(http2_get(addr, &d.certs, who)), 404);
    }
    assert_eq!(rt.block_on(http2_get(admin, &d.certs, "aud")), 200);

    // The alert rules parse and name only metrics a real scrape has.
    let deployed = scrape_with(admin, &d.certs, "aud", true);
    check_prometheus_files(&deployed);
}

/// The HTTP status of `GET /metrics` over HTTP/2 with mutual TLS as `who`.
async fn http2_get(addr: &str, certs: &Path, who: &str) -> u16 {
    use tonic::codegen::Service;
    let mut channel = testkit::tls_channel(addr, certs, who).await.unwrap();
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let req = tonic::codegen::http::Request::get(format!("https://{addr}/metrics"))
        .body(tonic::body::Body::empty())
        .unwrap();
    channel.call(req).await.unwrap().status().as_u16()
}

/// `deploy/prometheus`: the scrape config points at `/metrics` over mutual
/// TLS and loads the rules; every rule is complete; every metric an alert
/// expression names is in `scraped`.
fn check_prometheus_files(scraped: &Value) {
    let config = &scraped["config"];
    assert_eq!(config["rule_files"][0], "alerts.yml");
    let job = &config["scrape_configs"][0];
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["scheme"], "https");
    for k in ["ca_file", "cert_file", "key_file"] {
        assert!(job["tls_config"][k].is_string(), "tls_config.{k}");
    }
    let rules: Vec<&Value> = scraped["rules"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    let alerts: Vec<&str> = rules
        .iter()
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    for want in [
        "CustodySweeperNotRunning",
        "CustodyRetentionLag",
        "CustodyAuditFlushFailing",
        "CustodyStoreErrors",
        "CustodyCertificateExpiring",
        "CustodyDiskNearlyFull",
    ] {
        assert!(alerts.contains(&want), "{want} missing from alerts.yml");
    }
    let mut named = 0;
    for r in rules {
        let alert = r["alert"].as_str().unwrap();
        assert!(r["for"].is_string(), "{alert}: for");
        assert!(r["labels"]["severity"].is_string(), "{alert}: severity");
        assert!(r["annotations"]["summary"].is_string(), "{alert}: summary");
        let expr = r["expr"].as_str().expect("expr");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("custody_") || word.starts_with("process_") {
                assert!(
                    has_sample(scraped, word),
                    "{alert}: {word} is not in a scrape"
                );
                named += 1;
            }
        }
    }
    assert!(named >= 8, "the rules name {named} metrics");
    if let Ok(out) = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(root().join("deploy/prometheus/alerts.yml"))
        .output()
    {
        // Where Prometheus's own checker is installed, it agrees.
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
