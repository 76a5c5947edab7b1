//! The same node on an S3-compatible store: a real SeaweedFS (master,
//! volume servers, filer, S3 gateway) on loopback, started by the test.
//! Ingest, read back, rebuild the catalog from the bucket, create-only
//! records (holds) through the S3 API, and a sweep (and, its audit record
//! unwritable, a listing) refused while the engine is unreachable.

use crate::testkit;

use std::process::Command;

use crate::seaweed::{Seaweed, REGION};
use crate::testkit::Server;
use custody_core::Timestamp;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_on_s3_ingests_reads_rebuilds_and_holds() {
    let mut sw = Seaweed::start().await;
    let endpoint = sw.endpoint.clone();
    let url = format!("s3://{}/city", sw.bucket);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[retention]\npolicy_grace_secs = 0\nsweeper_enabled = false\n",
            sw.store_toml("city")
        ),
    )
    .unwrap();
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
        &url,
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        REGION,
        "--s3-allow-http",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("audit chain OK"),
        "{said}"
    );
    // The engine becomes unreachable: the S3 gateway is killed.
    sw.stop_s3();
    let out = server.custody(&["sweep"]);
    assert!(
        !out.status.success(),
        "sweep succeeded with the bucket down"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("object store"), "{err}");
    let to = t0.saturating_add_nanos(60_000_000_000).to_string();
    let ls = [
        "--json",
        "ls",
        "cam-s3",
        "--from",
        &t0.to_string(),
        "--to",
        &to,
    ];
    // Its audit record cannot be written either: footage (and its index)
    // is not served unaudited.
    let out = server.custody(&ls);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unaudited"),
        "listing with the audit log unwritable: {err}"
    );
    // The engine is back: the audit writer catches up, listings resume,
    // and nothing was deleted meanwhile.
    sw.start_s3().await;
    let listed = testkit::eventually(
        std::time::Duration::from_secs(30),
        "listings after the engine came back",
        || async {
            let out = server.custody(&ls);
            out.status
                .success()
                .then(|| json(&String::from_utf8_lossy(&out.stdout)))
        },
    )
    .await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "nothing may be deleted while the store is unreadable"
    );
}
