//! Segmented networks for real: the server in its own network namespace,
//! joined to a camera, an operator and an admin namespace by one veth pair
//! each, on its own subnet, with one mutual-TLS listener per segment (the
//! layout of `deploy/three-networks.toml`). From the camera segment ingest
//! works and the operator and admin addresses are unreachable; from the
//! admin segment holds work; from the operator segment footage is listed.
//!
//! Needs root and a kernel that allows network namespaces; where `ip netns
//! add` is refused the test says so and skips. It creates and removes its
//! namespaces itself and sends traffic only to addresses on its own veths.

use crate::testkit;

use std::path::Path;
use std::process::{Command, Output};

use custody_server::ServerConfig;

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces created by this test, deleted (with their veths) on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// (segment, listener name, subnet octet)
const SEGMENTS: [(&str, &str, u8); 3] = [
    ("c", "cameras", 1),
    ("o", "operators", 2),
    ("a", "admin", 3),
];

fn addr(octet: u8, host: u8) -> String {
    format!("10.231.{octet}.{host}")
}

/// Runs `custody` inside namespace `ns` against `https://{server}` as `name`.
fn custody_in(ns: &str, server: &str, certs: &Path, name: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, testkit::CUSTODY])
        .arg("--server")
        .arg(format!("https://{server}"))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{name}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{name}.key")))
        .args(args)
        .output()
        .expect("run custody in namespace")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_network_segment_reaches_only_its_listener() {
    let tag = std::process::id() % 100_000;
    let server_ns = format!("cst{tag}s");
    let probe = ip(&["netns", "add", &server_ns]);
    if !probe.status.success() {
        eprintln!(
            "SKIPPED: the kernel refused a network namespace (ip netns add: {}); this test needs root and netns support",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    let mut spaces = Namespaces(vec![server_ns.clone()]);
    ip_ok(&["-n", &server_ns, "link", "set", "lo", "up"]);
    for (seg, _, octet) in SEGMENTS {
        let ns = format!("cst{tag}{seg}");
        ip_ok(&["netns", "add", &ns]);
        spaces.0.push(ns.clone());
        let (outer, inner) = (format!("cv{tag}{seg}s"), format!("cv{tag}{seg}c"));
        ip_ok(&[
            "link", "add", &outer, "netns", &server_ns, "type", "veth", "peer", "name", &inner,
            "netns", &ns,
        ]);
        ip_ok(&[
            "-n",
            &server_ns,
            "addr",
            "add",
            &format!("{}/24", addr(octet, 1)),
            "dev",
            &outer,
        ]);
        ip_ok(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", addr(octet, 2)),
            "dev",
            &inner,
        ]);
        ip_ok(&["-n", &server_ns, "link", "set", &outer, "up"]);
        ip_ok(&["-n", &ns, "link", "set", &inner, "up"]);
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let mut init = Command::new(testkit::CUSTODY);
    init.args(["certs", "init", "--dir"]).arg(&certs);
    for (_, _, octet) in SEGMENTS {
        init.args(["--server-host", &addr(octet, 1)]);
    }
    init.args(["--camera", "cam-7"]);
    for u in [
        "op:operator",
        "inv:investigator",
        "sup:supervisor",
        "adm:admin",
    ] {
        init.args(["--user", u]);
    }
    ok(init.output().unwrap(), "certs init");

    let mut config =
        ServerConfig::from_toml(include_str!("../../deploy/three-networks.toml")).unwrap();
    let mut listen = std::collections::BTreeMap::new();
    for l in &mut config.listeners {
        let (_, _, octet) = SEGMENTS
            .iter()
            .find(|(_, name, _)| *name == l.name)
            .expect("a segment per deployed listener");
        l.addr = format!("{}:7421", addr(*octet, 1));
        listen.insert(l.name.clone(), l.addr.clone());
        let tls = l.tls.as_mut().unwrap();
        tls.cert = certs.join("server.pem");
        tls.key = certs.join("server.key");
        tls.client_ca = certs.join("ca.pem");
    }
    let revoked = tmp.path().join("revoked.txt");
    std::fs::write(&revoked, "").unwrap();
    config.auth.revoked_serials_file = Some(revoked);
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(&cfg, toml::to_string(&config).unwrap()).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &server_ns, testkit::CUSTODYD]);
    let (_daemon, bound) = testkit::start_listeners_with(cmd, &cfg, &tmp.path().join("data"), 3);
    assert_eq!(bound, listen, "each listener bound its segment's address");

    let segs = testkit::ffmpeg_segments(&tmp.path().join("video"), 1, 2);
    let cam_ns = format!("cst{tag}c");
    let ops_ns = format!("cst{tag}o");
    let adm_ns = format!("cst{tag}a");

    // The camera segment: ingest works on its listener...
    let seg = segs[0].to_str().unwrap();
    ok(
        custody_in(
            &cam_ns,
            &listen["cameras"],
            &certs,
            "cam-7",
            &[
                "ingest",
                "--camera",
                "cam-7",
                "--start",
                "2026-11-24T10:00:00Z",
                "--end",
                "2026-11-24T10:00:02Z",
                seg,
            ],
        ),
        "ingest from the camera segment",
    );
    // ...and the other listeners do not exist as far as it can tell.
    for other in ["operators", "admin"] {
        let out = custody_in(&cam_ns, &listen[other], &certs, "adm", &["status"]);
        assert!(
            !out.status.success(),
            "{other} reachable from the camera segment"
        );
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("unreachable"), "{other} from cameras: {err}");
    }

    // The admin segment: holds are placed and released there.
    let created = ok(
        custody_in(
            &adm_ns,
            &listen["admin"],
            &certs,
            "inv",
            &[
                "hold",
                "create",
                "--cameras",
                "cam-7",
                "--from",
                "2026-11-24T09:00:00Z",
                "--case",
                "NET-1",
                "--reason",
                "netns test",
                "--json",
            ],
        ),
        "hold from the admin segment",
    );
    let hold: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(hold["covered_segments"], 1, "{hold}");
    let id = hold["hold"]["hold_id"].as_str().unwrap();
    ok(
        custody_in(
            &adm_ns,
            &listen["admin"],
            &certs,
            "sup",
            &["hold", "release", id, "--reason", "done"],
        ),
        "release from the admin segment",
    );
    let out = custody_in(&adm_ns, &listen["cameras"], &certs, "cam-7", &["ls"]);
    assert!(
        !out.status.success(),
        "cameras listener reachable from admin"
    );

    // The operator segment lists the footage the camera pushed.
    let cams = ok(
        custody_in(
            &ops_ns,
            &listen["operators"],
            &certs,
            "op",
            &["ls", "--json"],
        ),
        "ls from the operator segment",
    );
    assert!(cams.contains("\"cam-7\""), "{cams}");
    let out = custody_in(&ops_ns, &listen["admin"], &certs, "adm", &["status"]);
    assert!(
        !out.status.success(),
        "admin listener reachable from operators"
    );
}
