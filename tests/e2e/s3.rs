//! The same node on an S3-compatible store: a real S3 server (moto) on
//! loopback, started by the test. Ingest, read back, rebuild the catalog
//! from the bucket, and create-only records (holds) through the S3 API.

use crate::testkit;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::testkit::Server;
use custody_core::Timestamp;

struct S3Server(Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

/// Starts moto's S3 server on a free loopback port and creates `bucket`.
fn start_s3(bucket: &str) -> (S3Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ok = Command::new("python3")
        .args(["-c", "import moto.server"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "moto is required for this test: run scripts/setup --test (pip install 'moto[server]')"
    );
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // moto logs " * Running on http://127.0.0.1:PORT" once it listens.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("moto exited").unwrap();
        if line.contains("Running on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let endpoint = format!("http://127.0.0.1:{port}");
    let create = format!(
        "import boto3; boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')"
    );
    let st = Command::new("python3")
        .args(["-c", &create])
        .status()
        .unwrap();
    assert!(st.success(), "could not create bucket");
    (S3Server(child), endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_on_s3_ingests_reads_rebuilds_and_holds() {
    let (s3, endpoint) = start_s3("custody-test");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(
        &cfg,
        format!("[store]\nurl = \"s3://custody-test/city\"\ns3_endpoint = \"{endpoint}\"\ns3_region = \"us-east-1\"\ns3_allow_http = true\n[retention]\npolicy_grace_secs = 0\nsweeper_enabled = false\n"),
    )
    .unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let data_dir = tmp.path().join("data");
    let server = Server::start(&data_dir, Some(&cfg));

    // A multi-part sized segment (12 MB) and a small one.
    let t0 = Timestamp::parse_rfc3339("2026-01-01T10:00:00Z").unwrap();
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let small = b"small segment".repeat(1000);
    let mut ids = Vec::new();
    for (i, data) in [&big[..], &small[..]].iter().enumerate() {
        let f = tmp.path().join(format!("in{i}.ts"));
        std::fs::write(&f, data).unwrap();
        let start = t0.saturating_add_nanos(i as i64 * 6_000_000_000);
        let end = start.saturating_add_nanos(6_000_000_000);
        let out = server.custody_ok(&[
            "--json",
            "ingest",
            f.to_str().unwrap(),
            "--camera",
            "cam-s3",
            "--start",
            &start.to_string(),
            "--end",
            &end.to_string(),
        ]);
        ids.push(json(&out)["segment_id"].as_str().unwrap().to_string());
    }
    // Nothing landed locally: objects live in the bucket.
    assert!(testkit::stored_objects(&data_dir).is_empty());
    let check = |s: &Server| {
        for (id, data) in ids.iter().zip([&big[..], &small[..]]) {
            let out = tmp.path().join("out.bin");
            s.custody_ok(&["get", id, "-o", out.to_str().unwrap()]);
            assert!(std::fs::read(&out).unwrap() == data, "segment {id} differs");
        }
    };
    check(&server);

    // A hold is a create-only record in the bucket.
    server.custody_ok(&[
        "hold",
        "create",
        "--cameras",
        "cam-s3",
        "--from",
        &t0.to_string(),
        "--case",
        "C-1",
        "--reason",
        "s3 test",
    ]);

    // Rebuild the catalog from the bucket alone.
    let mut server = server;
    server.kill9();
    std::fs::remove_dir_all(data_dir.join("catalog")).unwrap();
    let out = Command::new(testkit::CUSTODYD)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "catalog",
            "rebuild",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 segments indexed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let server = Server::start(&data_dir, Some(&cfg));
    check(&server);
    let holds = json(&server.custody_ok(&["--json", "hold", "ls"]));
    assert_eq!(
        holds.as_array().unwrap().len(),
        1,
        "hold not restored from the bucket"
    );

    // Release the hold and let the footage expire; with the bucket unreachable
    // the sweeper refuses to work from a view of the holds it cannot refresh.
    let hold_id = holds[0]["hold_id"].as_str().unwrap().to_string();
    server.custody_ok(&["hold", "release", &hold_id, "--reason", "done"]);
    server.custody_ok(&["policy", "set", "--retain-for", "1s"]);
    let dry = json(&server.custody_ok(&["--json", "sweep", "--dry-run"]));
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2, "{dry}");
    // The audit chain in the bucket (across a kill -9 and a restart) verifies
    // offline, straight from the bucket with the key file.
    let key = data_dir.join("keys/keyring.toml");
    let out = testkit::custody_offline(&[
        "audit",
        "verify",
        "--store",
        "s3://custody-test/city",
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-allow-http",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("audit chain OK"),
        "{said}"
    );
    drop(s3);
    let out = server.custody(&["sweep"]);
    assert!(
        !out.status.success(),
        "sweep succeeded with the bucket down"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("object store"), "{err}");
    let to = t0.saturating_add_nanos(60_000_000_000).to_string();
    let listed = json(&server.custody_ok(&[
        "--json",
        "ls",
        "cam-s3",
        "--from",
        &t0.to_string(),
        "--to",
        &to,
    ]));
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "nothing may be deleted while the store is unreadable"
    );
}
