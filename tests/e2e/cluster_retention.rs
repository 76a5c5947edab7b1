//! Retention across a cluster of `custodyd` processes on one SeaweedFS
//! bucket: one sweeper at a time (a lease), holds placed on a node that is
//! not the sweeper racing the sweeper over footage that is just expiring,
//! the sweeper SIGSTOPped across its lease's expiry and resumed, and one
//! audit chain written by every node.

use std::process::Command;
use std::time::{Duration, Instant};

use custody_core::Timestamp;

use crate::cluster::{cluster_status, put_range, Nodes};
use crate::testkit::{now, read_from, Server, CUSTODY};

/// Sweeps every second, fence F = 6 s, policy changes effective at once.
const SWEEPS: &str =
    "[retention]\nsweep_interval_secs = 1\nhold_fence_secs = 6\npolicy_grace_secs = 0\n";
/// The same without a sweeper: where holds are placed.
const NO_SWEEPER: &str =
    "[retention]\nsweeper_enabled = false\nhold_fence_secs = 6\npolicy_grace_secs = 0\n";
/// Retention of the test's footage.
const RETAIN_SECS: i64 = 2;

fn plus_ms(t: Timestamp, ms: i64) -> Timestamp {
    t.saturating_add_nanos(ms * 1_000_000)
}

/// The node holding the sweeper duty, as `addr` sees the cluster.
async fn sweeper(addr: &str) -> Option<String> {
    cluster_status(addr)
        .await
        .members
        .into_iter()
        .find(|m| m.alive && m.duties.iter().any(|d| d == "sweeper"))
        .map(|m| m.node_id)
}

async fn wait_for_sweeper(addr: &str, not: Option<&str>, limit: Duration) -> (String, Duration) {
    let began = Instant::now();
    loop {
        if let Some(s) = sweeper(addr).await {
            if Some(s.as_str()) != not {
                return (s, began.elapsed());
            }
        }
        assert!(
            began.elapsed() < limit,
            "no sweeper (other than {not:?}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Places a hold on `camera` over `[from, to)` through `addr` with the
/// CLI (with --future-cameras: its only segment may be gone already);
/// returns how long the acknowledgement took.
fn hold(addr: &str, camera: &str, from: Timestamp, to: Timestamp) -> Duration {
    let began = Instant::now();
    let out = Command::new(CUSTODY)
        .args(["--server", addr, "hold", "create", "--cameras", camera])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--case", "race", "--reason", "test", "--future-cameras"])
        .output()
        .unwrap();
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "hold on {camera}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Whether a segment can still be read (through `addr`).
async fn present(addr: &str, id: &str) -> bool {
    read_from(addr, id).await.is_ok()
}

/// Waits until every segment in `ids` is gone (read through `addr`).
async fn wait_deleted(addr: &str, ids: &[String], limit: Duration) {
    let began = Instant::now();
    for id in ids {
        while present(addr, id).await {
            assert!(
                began.elapsed() < limit,
                "expired, unheld segment {id} still there after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Raced {
    id: String,
    expires: Timestamp,
    acked_at: Timestamp,
    present_at_ack: bool,
}

/// Stores a segment of `camera` on `addr` whose retention ends
/// `expires_in_ms` from now (negative: already over).
async fn expiring(addr: &str, camera: &str, expires_in_ms: i64) -> (String, Timestamp) {
    let expires = plus_ms(now(), expires_in_ms);
    let end = plus_ms(expires, -RETAIN_SECS * 1000);
    let start = plus_ms(end, -1000);
    let data = format!("{camera} expiring footage").repeat(200);
    let r = put_range(addr, camera, start, end, data.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("store {camera}: {e}"));
    (r.segment_id, expires)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_race_the_sweeper_across_nodes_and_a_paused_sweeper_deletes_nothing() {
    let mut nodes = Nodes::new().await;
    let n1 = nodes.start_with("n1", SWEEPS);
    let n2 = nodes.start_with("n2", NO_SWEEPER);
    let n3 = nodes.start_with("n3", SWEEPS);
    let (a1, a2, a3) = (n1.addr.clone(), n2.addr.clone(), n3.addr.clone());
    n2.custody_ok(&["policy", "set", "--retain-for", &format!("{RETAIN_SECS}s")]);
    // A policy set through n2 binds n1 at once.
    let resolved =
        crate::testkit::json(&n1.custody_ok(&["--json", "policy", "resolve", "any-camera"]));
    assert_eq!(
        resolved["retain_for_secs"].as_u64(),
        Some(RETAIN_SECS as u64),
        "{resolved}"
    );
    let (first, _) = wait_for_sweeper(&a2, None, Duration::from_secs(20)).await;
    assert_ne!(first, "n2", "n2 runs no sweeper");

    // The race: segments whose retention ends from 1 s before to 1 s after
    // they are stored, held from n2 (not the sweeper) 0 to 1.8 s after
    // that: some are gone before their hold, some expired and are kept.
    let mut raced = Vec::new();
    let mut acks = Vec::new();
    for i in 0..16i64 {
        let camera = format!("race-{i}");
        let (id, expires) = expiring(&a2, &camera, (i % 5) * 500 - 1000).await;
        // The scenario's timing, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis((i % 4) as u64 * 600)).await;
        let from = plus_ms(expires, -(RETAIN_SECS * 1000 + 2000));
        acks.push(hold(&a2, &camera, from, plus_ms(from, 10_000)));
        let acked_at = now();
        raced.push(Raced {
            present_at_ack: present(&a2, &id).await,
            id,
            expires,
            acked_at,
        });
    }
    // Unheld footage expiring now: the sweeper is really deleting.
    let mut control = Vec::new();
    for i in 0..4 {
        control.push(expiring(&a2, &format!("control-{i}"), 0).await.0);
    }
    wait_deleted(&a2, &control, Duration::from_secs(30)).await;
    // Several more sweeps pass over every raced segment.
    let mut later = Vec::new();
    for i in 0..2 {
        later.push(expiring(&a2, &format!("later-{i}"), 0).await.0);
    }
    wait_deleted(&a2, &later, Duration::from_secs(30)).await;

    for r in &raced {
        if r.present_at_ack {
            for addr in [&a1, &a3] {
                assert!(
                    present(addr, &r.id).await,
                    "segment {} was there when its hold was acknowledged, then deleted",
                    r.id
                );
            }
        }
    }
    // Holds placed through n2 are listed by n3 at once.
    let holds = crate::testkit::json(&n3.custody_ok(&["--json", "hold", "ls"]));
    let race_holds = holds
        .as_array()
        .expect("a JSON array of holds")
        .iter()
        .filter(|h| h["case_id"] == "race")
        .count();
    assert_eq!(race_holds, raced.len(), "{holds}");
    let lost = raced.iter().filter(|r| !r.present_at_ack).count();
    let won_expired = raced
        .iter()
        .filter(|r| r.present_at_ack && r.expires < r.acked_at)
        .count();
    acks.sort();
    eprintln!(
        "race: {} holds on a non-sweeper node; {lost} segments deleted before their hold, {won_expired} \
         already expired and kept by it; hold acknowledgement p50 {:?}, max {:?}",
        raced.len(),
        acks[acks.len() / 2],
        acks[acks.len() - 1]
    );
    assert!(
        lost > 0 && won_expired > 0,
        "no real race: {lost} lost, {won_expired} expired-and-kept"
    );

    // The sweeper paused past its lease: another node takes the duty; the
    // paused one, resumed, deletes nothing its successor's holds cover.
    let (paused, other) = if first == "n1" {
        (&n1, &a3)
    } else {
        (&n3, &a1)
    };
    signal(paused, "STOP");
    let (successor, took) = wait_for_sweeper(other, Some(&first), Duration::from_secs(30)).await;
    eprintln!("sweeper {first} stopped; {successor} took the duty after {took:?}");
    let held = hold_expiring(&a2, "paused").await;
    signal(paused, "CONT");
    check_held_kept(&a2, &held, "after-pause").await;
    assert_eq!(
        sweeper(&a2).await.as_deref(),
        Some(successor.as_str()),
        "one sweeper"
    );

    // The engine unreachable for longer than the lease: no node can renew
    // or delete; once it is back, holds placed through n2 bind whoever
    // sweeps next, and sweeping resumes.
    nodes.sw.stop_s3();
    // The outage's length, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(5)).await;
    nodes.sw.start_s3().await;
    let held_after_outage = hold_expiring(&a2, "outage").await;
    check_held_kept(&a2, &held_after_outage, "after-outage").await;
    check_held_kept(&a2, &held, "after-outage-2").await;

    // One audit chain, written by three nodes, verifies offline over the
    // bucket, and each record names its node.
    nodes.verify_audit_chain();
    let listed = n2.custody_ok(&["--json", "audit", "ls"]);
    let writers: std::collections::BTreeSet<String> = crate::testkit::json(&listed)
        .as_array()
        .expect("a JSON array of records")
        .iter()
        .map(|r| r["node"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in ["n1", "n2", "n3"] {
        assert!(
            writers.contains(n),
            "no audit record names {n}: {writers:?}"
        );
    }
}

/// Stores four segments on `addr` expiring in 1.5 s and holds each from
/// `addr`; returns their ids.
async fn hold_expiring(addr: &str, prefix: &str) -> Vec<String> {
    let mut held = Vec::new();
    for i in 0..4 {
        let camera = format!("{prefix}-{i}");
        let (id, expires) = expiring(addr, &camera, 1500).await;
        hold(
            addr,
            &camera,
            plus_ms(expires, -10_000),
            plus_ms(expires, 10_000),
        );
        held.push(id);
    }
    held
}

/// Waits until unheld footage expiring now is deleted (a sweeper is
/// running), then checks every held segment is still there.
async fn check_held_kept(addr: &str, held: &[String], control: &str) {
    let mut gone = Vec::new();
    for i in 0..2 {
        gone.push(expiring(addr, &format!("{control}-{i}"), 0).await.0);
    }
    wait_deleted(addr, &gone, Duration::from_secs(40)).await;
    for id in held {
        assert!(present(addr, id).await, "held segment {id} was deleted");
    }
}

fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}
