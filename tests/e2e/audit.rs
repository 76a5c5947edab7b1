//! The audit chain end to end: every RPC leaves the record it should, the
//! chain survives the loss of the catalog, and `custody audit verify` —
//! offline, on the store directory and the key file — names every record
//! that was edited, removed, reordered, inserted or cut from the tail.

use std::path::{Path, PathBuf};

use crate::testkit::{audit_verify as verify, custody_offline, ffmpeg_segments, Server};
use custody_core::{Clock, SystemClock, Timestamp};
use custody_proto::v1 as pb;
use custody_proto::v1::audit_service_client::AuditServiceClient;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

fn config(dir: &Path) -> PathBuf {
    let p = dir.join("custodyd.toml");
    std::fs::write(
        &p,
        "[retention]\nsweeper_enabled = false\npolicy_grace_secs = 0\n[audit]\nflush_interval_ms = 50\n",
    )
    .unwrap();
    p
}

/// `custody audit ls --json` with extra filter arguments.
fn audit_ls(server: &Server, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json", "audit", "ls"];
    args.extend_from_slice(filters);
    json(&server.custody_ok(&args))
        .as_array()
        .expect("array")
        .clone()
}

/// The batch objects, by first sequence number.
fn batches(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("objects/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The first sequence number a batch's name says it holds.
fn first_seq(p: &Path) -> u64 {
    name(p)[..20].parse().unwrap()
}

/// Copies a directory tree (small: the audit objects).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Runs `tamper` on the audit objects, checks what verify says, restores them.
fn tampered(data: &Path, pristine: &Path, tamper: impl FnOnce(&Path), expect: &[&str]) {
    let audit = data.join("objects/audit");
    tamper(&audit);
    let (ok, out) = verify(data, None);
    assert!(!ok, "tampering went unnoticed:\n{out}");
    for e in expect {
        assert!(out.contains(e), "verify should say {e:?}:\n{out}");
    }
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(pristine, &audit);
    let (ok, out) = verify(data, None);
    assert!(ok, "restored chain must verify:\n{out}");
}

/// One segment of real video, ended an hour ago: (file, start, end).
fn old_segment(dir: &Path) -> (PathBuf, Timestamp, Timestamp) {
    let file = ffmpeg_segments(&dir.join("video"), 1, 2).remove(0);
    let end = SystemClock.now().saturating_add_nanos(-3_600_000_000_000);
    let start = end.saturating_add_nanos(-2_000_000_000);
    (file, start, end)
}

/// What one RPC should leave in the chain.
struct Expect {
    action: &'static str,
    outcome: &'static str,
    principal: &'static str,
    camera: Option<&'static str>,
    segment: Option<String>,
    hold: Option<String>,
    reason: Option<&'static str>,
}

fn expect(action: &'static str, outcome: &'static str) -> Expect {
    Expect {
        action,
        outcome,
        principal: "local",
        camera: None,
        segment: None,
        hold: None,
        reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_leaves_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, Some(&cfg));
    let (file, start, end) = old_segment(tmp.path());
    let (from, to) = (
        start.saturating_add_nanos(-1_000_000_000).to_string(),
        end.saturating_add_nanos(1_000_000_000).to_string(),
    );
    let out_file = tmp.path().join("out.ts");
    let out = out_file.to_str().unwrap();
    let mut table: Vec<Expect> = Vec::new();

    // Ingest.
    let r = json(&server.custody_ok(&[
        "--json",
        "ingest",
        file.to_str().unwrap(),
        "--camera",
        "cam-a",
        "--start",
        &start.to_string(),
        "--end",
        &end.to_string(),
    ]));
    let seg = r["segment_id"].as_str().unwrap().to_string();
    table.push(Expect {
        camera: Some("cam-a"),
        segment: Some(seg.clone()),
        ..expect("ingest.put_segment", "ok")
    });

    // Archive.
    server.custody_ok(&["ls"]);
    table.push(expect("archive.list_cameras", "ok"));
    server.custody_ok(&["ls", "cam-a", "--from", &from, "--to", &to]);
    table.push(Expect {
        camera: Some("cam-a"),
        ..expect("archive.list_segments", "ok")
    });
    assert!(!server
        .custody(&["ls", "cam-nope", "--from", &from, "--to", &to])
        .status
        .success());
    table.push(Expect {
        camera: Some("cam-nope"),
        reason: Some("NotFound"),
        ..expect("archive.list_segments", "refused")
    });
    server.custody_ok(&["get", &seg, "-o", out]);
    table.push(Expect {
        camera: Some("cam-a"),
        segment: Some(seg.clone()),
        ..expect("archive.read_segment", "ok")
    });
    assert!(!server
        .custody(&["get", "not-an-id", "-o", out])
        .status
        .success());
    table.push(Expect {
        segment: Some("not-an-id".into()),
        reason: Some("InvalidArgument"),
        ..expect("archive.read_segment", "refused")
    });
    server.custody_ok(&["export", "cam-a", "--from", &from, "--to", &to, "-o", out]);
    table.push(Expect {
        camera: Some("cam-a"),
        ..expect("archive.export_clip", "ok")
    });

    // Policies.
    server.custody_ok(&[
        "policy",
        "set",
        "--camera",
        "cam-a",
        "--retain-for",
        "1s",
        "--principal",
        "admin:alice",
    ]);
    table.push(Expect {
        camera: Some("cam-a"),
        principal: "local:admin:alice",
        ..expect("policy.set", "ok")
    });
    assert!(!server
        .custody(&["policy", "set", "--camera", "cam-a", "--retain-for", "0s"])
        .status
        .success());
    table.push(Expect {
        camera: Some("cam-a"),
        reason: Some("InvalidArgument"),
        ..expect("policy.set", "refused")
    });
    server.custody_ok(&["policy", "get", "--camera", "cam-a"]);
    table.push(Expect {
        camera: Some("cam-a"),
        ..expect("policy.get", "ok")
    });
    server.custody_ok(&["policy", "ls"]);
    table.push(expect("policy.list", "ok"));
    server.custody_ok(&["policy", "resolve", "cam-a"]);
    table.push(Expect {
        camera: Some("cam-a"),
        ..expect("policy.resolve", "ok")
    });

    // Holds.
    let h = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-a",
        "--from",
        &from,
        "--case",
        "case-9",
        "--reason",
        "inquiry",
        "--principal",
        "inv:bob",
    ]));
    let hold = h["hold"]["hold_id"].as_str().unwrap().to_string();
    table.push(Expect {
        camera: Some("cam-a"),
        hold: Some(hold.clone()),
        principal: "local:inv:bob",
        ..expect("hold.create", "ok")
    });
    assert!(!server
        .custody(&[
            "hold",
            "create",
            "--cameras",
            "cam-zzz",
            "--from",
            &from,
            "--case",
            "c",
            "--reason",
            "r"
        ])
        .status
        .success());
    table.push(Expect {
        camera: Some("cam-zzz"),
        reason: Some("NotFound"),
        ..expect("hold.create", "refused")
    });
    server.custody_ok(&["hold", "show", &hold]);
    table.push(Expect {
        hold: Some(hold.clone()),
        ..expect("hold.get", "ok")
    });
    server.custody_ok(&["hold", "ls", "--all"]);
    table.push(expect("hold.list", "ok"));
    // Held: the sweep keeps it.
    server.custody_ok(&["sweep"]);
    table.push(expect("retention.sweep", "ok"));
    server.custody_ok(&[
        "hold",
        "release",
        &hold,
        "--reason",
        "closed",
        "--principal",
        "sup:carol",
    ]);
    table.push(Expect {
        camera: Some("cam-a"),
        hold: Some(hold.clone()),
        principal: "local:sup:carol",
        ..expect("hold.release", "ok")
    });
    assert!(!server
        .custody(&["hold", "release", &hold, "--reason", "again"])
        .status
        .success());
    table.push(Expect {
        hold: Some(hold.clone()),
        reason: Some("FailedPrecondition"),
        ..expect("hold.release", "refused")
    });

    // Retention: the sweep deletes the segment, and records the deletion.
    let r = json(&server.custody_ok(&["--json", "sweep"]));
    assert_eq!(r["deleted"].as_array().map(Vec::len), Some(1), "{r}");
    table.push(Expect {
        camera: Some("cam-a"),
        segment: Some(seg.clone()),
        principal: "custodyd",
        ..expect("sweep.delete", "ok")
    });
    table.push(expect("retention.sweep", "ok"));

    // Audit.
    let mut audit = AuditServiceClient::connect(server.addr.clone())
        .await
        .unwrap();
    let v = audit
        .verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{:?}", v.problems);
    table.push(expect("audit.verify", "ok"));
    let bad = audit
        .list_audit_records(pb::ListAuditRecordsRequest {
            page_token: "x".into(),
            ..Default::default()
        })
        .await;
    assert!(bad.is_err());
    table.push(Expect {
        reason: Some("InvalidArgument"),
        ..expect("audit.list", "refused")
    });

    // Every expectation, in order, in the chain.
    let records = audit_ls(&server, &[]);
    let mut at = records
        .iter()
        .position(|r| r["action"] == "node.start")
        .expect("node.start");
    for e in &table {
        let i = records[at + 1..]
            .iter()
            .position(|r| r["action"] == e.action)
            .map(|i| i + at + 1)
            .unwrap_or_else(|| panic!("no {} record after seq {at}: {records:#?}", e.action));
        let r = &records[i];
        let what = format!("{} record {r}", e.action);
        assert_eq!(r["outcome"], e.outcome, "{what}");
        assert_eq!(r["principal"], e.principal, "{what}");
        assert!(!r["listener"].as_str().unwrap().is_empty(), "{what}");
        if let Some(c) = e.camera {
            assert!(
                r["cameras"].as_array().unwrap().iter().any(|x| x == c),
                "{what}: camera {c}"
            );
        }
        if let Some(s) = &e.segment {
            assert_eq!(r["segment"], s.as_str(), "{what}");
        }
        if let Some(h) = &e.hold {
            assert_eq!(r["hold"], h.as_str(), "{what}");
        }
        match e.reason {
            Some(why) => assert!(r["reason"].as_str().unwrap().contains(why), "{what}"),
            None if e.outcome == "ok" => assert_eq!(r["reason"], "", "{what}"),
            None => assert_ne!(r["reason"], "", "{what}"),
        }
        at = i;
    }
    // Sequence numbers are consecutive and chained.
    for w in records.windows(2) {
        assert_eq!(w[1]["seq"].as_u64(), w[0]["seq"].as_u64().map(|s| s + 1));
        assert_eq!(w[1]["prev"], w[0]["digest"]);
    }

    // Filters.
    let cam = audit_ls(&server, &["--camera", "cam-a"]);
    assert!(cam.len() >= 10);
    assert!(cam.iter().all(|r| r["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "cam-a" || c == "*")));
    let holds = audit_ls(&server, &["--action", "hold"]);
    let actions: Vec<&str> = holds
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "hold.create",
            "hold.create",
            "hold.get",
            "hold.list",
            "hold.release",
            "hold.release"
        ]
    );
    let bob = audit_ls(&server, &["--principal", "local:inv:bob"]);
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0]["action"], "hold.create");
    let future = SystemClock.now().saturating_add_nanos(3_600_000_000_000);
    assert!(audit_ls(&server, &["--since", &future.to_string()]).is_empty());
    let past = audit_ls(&server, &["--until", &start.to_string()]);
    assert!(past.is_empty());

    // A clean shutdown flushes group-committed reads and records the stop.
    server.custody_ok(&["ls"]);
    server.stop();
    let (ok, out) = verify(&data, None);
    assert!(ok, "{out}");
    let restarted = Server::start(&data, Some(&cfg));
    let all = audit_ls(&restarted, &[]);
    let stop = all
        .iter()
        .rposition(|r| r["action"] == "node.stop")
        .expect("node.stop recorded");
    assert_eq!(all[stop - 1]["action"], "archive.list_cameras");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_tampered_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, Some(&cfg));
    let (file, start, end) = old_segment(tmp.path());
    server.custody_ok(&[
        "ingest",
        file.to_str().unwrap(),
        "--camera",
        "cam-t",
        "--start",
        &start.to_string(),
        "--end",
        &end.to_string(),
    ]);
    for i in 0..3 {
        server.custody_ok(&[
            "policy",
            "set",
            "--camera",
            "cam-t",
            "--retain-for",
            &format!("{}d", i + 1),
        ]);
    }
    server.stop();
    let (ok, out) = verify(&data, None);
    assert!(ok, "{out}");
    assert!(out.contains("audit chain OK"), "{out}");

    // A head kept outside the store.
    let key = data.join("keys/keyring.toml");
    let head = custody_offline(&[
        "audit",
        "head",
        "--store",
        data.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(head.status.success());
    let head_file = tmp.path().join("head.json");
    std::fs::write(&head_file, &head.stdout).unwrap();
    let head_seq = json(&String::from_utf8_lossy(&head.stdout))["seq"]
        .as_u64()
        .unwrap();

    // The catalog is lost; the chain continues from the store.
    std::fs::remove_dir_all(data.join("catalog")).unwrap();
    let mut server = Server::start(&data, Some(&cfg));
    server.custody_ok(&[
        "hold",
        "create",
        "--cameras",
        "cam-t",
        "--future-cameras",
        "--from",
        &start.to_string(),
        "--case",
        "c-1",
        "--reason",
        "r",
    ]);
    server.custody_ok(&["policy", "ls"]);
    let all = audit_ls(&server, &[]);
    assert_eq!(all[0]["seq"], 1);
    assert!(all
        .iter()
        .any(|r| r["seq"].as_u64() == Some(head_seq + 1) && r["action"] == "node.start"));
    server.stop();
    let (ok, out) = verify(&data, Some(&head_file));
    assert!(ok, "an earlier head stays valid as the chain grows: {out}");
    let head2 = custody_offline(&[
        "audit",
        "head",
        "--store",
        data.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(head2.status.success());
    let head2_file = tmp.path().join("head2.json");
    std::fs::write(&head2_file, &head2.stdout).unwrap();
    let head2_seq = json(&String::from_utf8_lossy(&head2.stdout))["seq"]
        .as_u64()
        .unwrap();

    let pristine = tmp.path().join("pristine");
    copy_dir(&data.join("objects/audit"), &pristine);
    let b = batches(&data);
    assert!(b.len() >= 7, "{b:?}");
    let (b2, b3, b4) = (b[2].clone(), b[3].clone(), b[4].clone());
    // How verify names a batch's records.
    let n = |p: &Path| {
        let (a, b) = (first_seq(p), name(p)[21..41].parse::<u64>().unwrap());
        if a == b {
            format!("record {a} ")
        } else {
            format!("records {a}..={b} ")
        }
    };

    // Edit one byte of a record's payload.
    tampered(
        &data,
        &pristine,
        |_| {
            let mut bytes = std::fs::read(&b3).unwrap();
            let at = bytes.len() - 40;
            bytes[at] ^= 0x01;
            std::fs::write(&b3, bytes).unwrap();
        },
        &[
            &format!(
                "edited: record {} ",
                name(&b3)[21..41].parse::<u64>().unwrap()
            ),
            &name(&b3),
        ],
    );
    // Delete a record.
    tampered(
        &data,
        &pristine,
        |_| std::fs::remove_file(&b3).unwrap(),
        &["removed", &n(&b3)],
    );
    // Reorder: swap two records' objects.
    tampered(
        &data,
        &pristine,
        |_| {
            let (x, y) = (std::fs::read(&b2).unwrap(), std::fs::read(&b4).unwrap());
            std::fs::write(&b2, y).unwrap();
            std::fs::write(&b4, x).unwrap();
        },
        &["reordered", &n(&b2), &n(&b4)],
    );
    // Insert a forged record claiming an existing sequence number.
    tampered(
        &data,
        &pristine,
        |audit| {
            let s = first_seq(&b3);
            let forged = audit.join(format!("{s:020}-{s:020}.rec"));
            let forged = if forged == b3 {
                // b3 holds exactly record s: claim s-1..s instead.
                audit.join(format!("{:020}-{s:020}.rec", s - 1))
            } else {
                forged
            };
            let mut bytes = std::fs::read(&b3).unwrap();
            let at = bytes.len() - 30;
            bytes[at] ^= 0x02;
            std::fs::write(forged, bytes).unwrap();
        },
        &["inserted"],
    );
    // Insert a copy of a genuine record after the end.
    tampered(
        &data,
        &pristine,
        |audit| {
            let last = batches(&data).last().cloned().unwrap();
            let next = name(&last)[21..41].parse::<u64>().unwrap() + 1;
            std::fs::copy(&b2, audit.join(format!("{next:020}-{next:020}.rec"))).unwrap();
        },
        &["inserted", "a copy of records"],
    );

    // Cut the records of the second run, heads included: only a head kept
    // from before the cut notices.
    for p in batches(&data) {
        if first_seq(&p) > head_seq {
            std::fs::remove_file(p).unwrap();
        }
    }
    for e in std::fs::read_dir(data.join("objects/audit/heads")).unwrap() {
        let p = e.unwrap().path();
        if name(&p)[..20].parse::<u64>().unwrap() > head_seq {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (ok, out) = verify(&data, None);
    assert!(ok, "without a kept head the cut is invisible: {out}");
    let (ok, out) = verify(&data, Some(&head2_file));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "truncated: records {}..={head2_seq}",
            head_seq + 1
        )),
        "{out}"
    );
    assert!(out.contains(&format!("names record {head2_seq}")), "{out}");
    // ... and a cut that leaves the store's heads is noticed without one.
    std::fs::remove_dir_all(data.join("objects/audit")).unwrap();
    copy_dir(&pristine, &data.join("objects/audit"));
    let last = batches(&data).last().cloned().unwrap();
    std::fs::remove_file(&last).unwrap();
    let (ok, out) = verify(&data, None);
    assert!(!ok, "{out}");
    assert!(out.contains("truncated: record"), "{out}");
    assert!(out.contains(&format!(" {}", first_seq(&last))), "{out}");
}
