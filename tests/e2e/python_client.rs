//! A third-party client: Python grpcio, with stubs generated from `proto/`
//! by grpc_tools, ingests as a camera and lists and reads back as an
//! operator, over mutual TLS on the three-network deployment. Proves the API
//! works beyond our own Rust client.

use crate::testkit;

use std::process::Command;

use custody_server::ServerConfig;

#[test]
fn python_grpcio_client_ingests_and_lists_over_mtls() {
    let have = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have,
        "python3 with grpcio and grpcio-tools is required: run ./scripts/setup --test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stubs = tmp.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let mut protoc = Command::new("python3");
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", root.join("proto").display()))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()));
    for f in std::fs::read_dir(root.join("proto/custody/v1")).unwrap() {
        protoc.arg(f.unwrap().path());
    }
    let out = protoc.output().unwrap();
    assert!(
        out.status.success(),
        "grpc_tools.protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let certs = tmp.path().join("certs");
    testkit::certs_init(&certs, &["cam-py", "cam-other"], &["op:operator"]);
    let mut config =
        ServerConfig::from_toml(include_str!("../../deploy/three-networks.toml")).unwrap();
    for l in &mut config.listeners {
        l.addr = "127.0.0.1:0".to_string();
        let tls = l.tls.as_mut().unwrap();
        tls.cert = certs.join("server.pem");
        tls.key = certs.join("server.key");
        tls.client_ca = certs.join("ca.pem");
    }
    config.auth.revoked_serials_file = None;
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(&cfg, toml::to_string(&config).unwrap()).unwrap();
    let (_daemon, addrs) =
        testkit::start_listeners(&cfg, &tmp.path().join("data"), config.listeners.len());

    let seg = testkit::ffmpeg_segments(&tmp.path().join("video"), 1, 2).remove(0);
    let out = Command::new("python3")
        .arg(root.join("tests/python/custody_client.py"))
        .arg("--stubs")
        .arg(&stubs)
        .arg("--certs")
        .arg(&certs)
        .args(["--cameras-addr", &addrs["cameras"]])
        .args(["--operators-addr", &addrs["operators"]])
        .args([
            "--camera",
            "cam-py",
            "--other-camera",
            "cam-other",
            "--operator",
            "op",
        ])
        .arg("--file")
        .arg(&seg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = r["segment_id"].as_str().unwrap();
    assert_eq!(r["listed"], serde_json::json!([id]), "{r}");
    assert_eq!(r["read_back_identical"], true, "{r}");
    assert_eq!(r["other_camera"], "PERMISSION_DENIED", "{r}");
    assert!(r["stored_bytes"].as_u64().unwrap() > std::fs::metadata(&seg).unwrap().len());
}
