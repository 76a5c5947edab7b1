//! End-to-end retention and legal holds with the real server: footage expires
//! and disappears from the store directory, held footage survives until its
//! hold is released, and bad requests change nothing.

use std::time::Duration;

use crate::testkit::{files_under, stored_objects, ts, Server};
use custody_core::{Clock, SystemClock, Timestamp};
use custody_proto::v1 as pb;
use custody_proto::v1::hold_service_client::HoldServiceClient;
use custody_proto::v1::policy_service_client::PolicyServiceClient;
use tonic::Code;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("custodyd.toml");
    std::fs::write(
        &p,
        "[retention]\nsweep_interval_secs = 1\npolicy_grace_secs = 0\nhold_fence_secs = 30\n",
    )
    .unwrap();
    p
}

/// Polls `f` every 100 ms until it holds or `limit` passes; the condition ends the wait.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unheld_footage_expires_held_footage_survives_until_release() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let server = Server::start(&tmp.path().join("data"), Some(&cfg));
    server.custody_ok(&[
        "policy",
        "set",
        "--camera",
        "cam-r",
        "--retain-for",
        "12s",
        "--principal",
        "admin:alice",
    ]);

    // Four 2 s segments that ended 8..2 s ago: they expire 4..10 s from now.
    let now = SystemClock.now();
    let src = tmp.path().join("seg.bin");
    let mut ids = Vec::new();
    for i in 0..4i64 {
        std::fs::write(&src, format!("segment {i} bytes").repeat(100)).unwrap();
        let start = now.saturating_add_nanos((-10 + 2 * i) * 1_000_000_000);
        let end = start.saturating_add_nanos(2_000_000_000);
        let out = server.custody_ok(&[
            "--json",
            "ingest",
            src.to_str().unwrap(),
            "--camera",
            "cam-r",
            "--start",
            &start.to_string(),
            "--end",
            &end.to_string(),
            "--media-type",
            "video/mp2t",
        ]);
        ids.push(json(&out)["segment_id"].as_str().unwrap().to_string());
    }
    // Hold the last two segments' time (a hold overlapping any part of a segment holds it).
    let hold_from = now.saturating_add_nanos(-5_000_000_000).to_string();
    let hold_to = now.saturating_add_nanos(-3_000_000_000).to_string();
    let created = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-r",
        "--from",
        &hold_from,
        "--to",
        &hold_to,
        "--case",
        "CASE-2026-0042",
        "--reason",
        "assault near gate 4",
        "--principal",
        "investigator:bob",
    ]));
    assert_eq!(created["covered_segments"], 2, "{created}");
    let hold_id = created["hold"]["hold_id"].as_str().unwrap().to_string();

    // The real sweeper (every second) removes the unheld two from the store directory.
    let data_dir = server.data_dir.clone();
    let gone = eventually(Duration::from_secs(60), || {
        stored_objects(&data_dir).len() == 2
    })
    .await;
    assert!(
        gone,
        "unheld segments not deleted: {:?}",
        stored_objects(&data_dir)
    );
    let remaining: Vec<String> = stored_objects(&data_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    for id in &ids[2..] {
        assert!(
            remaining.iter().any(|p| p.contains(id.as_str())),
            "held segment {id} was deleted"
        );
    }
    // Past their expiry, a sweep keeps the held two and says why.
    assert!(
        eventually(Duration::from_secs(30), || SystemClock.now()
            > now.saturating_add_nanos(11_000_000_000))
        .await
    );
    let sweep = json(&server.custody_ok(&["--json", "sweep"]));
    assert_eq!(sweep["kept_by_hold"], 2, "{sweep}");
    assert_eq!(stored_objects(&data_dir).len(), 2);
    for id in &ids[2..] {
        server.custody_ok(&[
            "get",
            id,
            "-o",
            tmp.path().join("out.bin").to_str().unwrap(),
        ]);
    }
    // Deletions are on record in the store.
    let records: Vec<u8> = files_under(&data_dir.join("objects/deletions"))
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    let records = String::from_utf8_lossy(&records);
    for id in &ids[..2] {
        assert!(records.contains(id.as_str()), "no deletion record for {id}");
    }
    for id in &ids[2..] {
        assert!(
            !records.contains(id.as_str()),
            "deletion record for held {id}"
        );
    }

    // Release: a separate record with its own principal; then the footage goes.
    server.custody_ok(&[
        "hold",
        "release",
        &hold_id,
        "--reason",
        "case closed",
        "--principal",
        "supervisor:carol",
    ]);
    let shown = json(&server.custody_ok(&["--json", "hold", "show", &hold_id]));
    assert_eq!(shown["released"], true);
    assert_eq!(shown["placed_by"], "local:investigator:bob");
    assert_eq!(shown["released_by"], "local:supervisor:carol");
    let gone = eventually(Duration::from_secs(60), || {
        stored_objects(&data_dir).is_empty()
    })
    .await;
    assert!(gone, "released footage not deleted");
    let listed = json(&server.custody_ok(&["--json", "hold", "ls", "--all"]));
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "released holds stay listed"
    );
    assert!(json(&server.custody_ok(&["--json", "hold", "ls"]))
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retention_requests_get_precise_status_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let server = Server::start(&tmp.path().join("data"), Some(&cfg));
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut holds = HoldServiceClient::new(channel.clone());
    let mut policies = PolicyServiceClient::new(channel);
    let now = SystemClock.now();
    let hold = |cams: Vec<&str>, start: Timestamp, end: Option<Timestamp>, future: bool| {
        pb::CreateHoldRequest {
            camera_ids: cams.into_iter().map(String::from).collect(),
            start: Some(ts(start)),
            end: end.map(ts),
            case_id: "CASE-1".into(),
            reason: "test".into(),
            principal: "investigator:bob".into(),
            future_cameras: future,
            ..Default::default()
        }
    };
    let e = holds
        .create_hold(hold(vec!["cam-x"], now, Some(now), true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = holds
        .create_hold(hold(vec!["cam-unknown"], now, None, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("future_cameras"));
    let e = holds
        .create_hold(hold(vec!["bad/camera"], now, None, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(holds
        .list_holds(pb::ListHoldsRequest {
            include_released: true
        })
        .await
        .unwrap()
        .into_inner()
        .holds
        .is_empty());
    assert!(files_under(&server.data_dir.join("objects/holds")).is_empty());

    // An explicit future camera is accepted, open-ended.
    let h = holds
        .create_hold(hold(vec!["cam-future"], now, None, true))
        .await
        .unwrap()
        .into_inner();
    let id = h.hold.unwrap().hold_id;
    let release = |id: &str| pb::ReleaseHoldRequest {
        hold_id: id.into(),
        reason: "done".into(),
        principal: "supervisor:carol".into(),
    };
    holds.release_hold(release(&id)).await.unwrap();
    let e = holds.release_hold(release(&id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = holds.release_hold(release("0123")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = holds
        .release_hold(release(&"ab".repeat(16)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let set = |retain: u64, floor: Option<u64>, ceiling: Option<u64>, locked: bool| {
        pb::SetPolicyRequest {
            scope: Some(pb::PolicyScope::default()),
            policy: Some(pb::Policy {
                retain_for_secs: retain,
                floor_secs: floor,
                ceiling_secs: ceiling,
                locked,
            }),
            principal: "admin:alice".into(),
        }
    };
    let v1 = policies
        .set_policy(set(30 * 86400, Some(30 * 86400), None, true))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    let e = policies
        .set_policy(set(7 * 86400, Some(7 * 86400), None, true))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "shortening a locked floor: {e:?}"
    );
    let e = policies
        .set_policy(set(30 * 86400, Some(30 * 86400), None, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "unlocking: {e:?}");
    let e = policies
        .set_policy(set(30 * 86400, Some(30 * 86400), Some(86400), true))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "ceiling below floor: {e:?}"
    );
    let now_policy = policies
        .get_policy(pb::GetPolicyRequest {
            scope: Some(pb::PolicyScope::default()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now_policy, v1, "refused changes changed the policy");
    // Lengthening a locked floor is allowed.
    let v2 = policies
        .set_policy(set(60 * 86400, Some(60 * 86400), None, true))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(v2.version, 2);
}
