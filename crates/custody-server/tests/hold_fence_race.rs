//! The hold fence under a racing sweeper (ARCHITECTURE.md, invariant 3 and "The hold
//! fence"): once `create_hold` has returned, no sweep deletes footage the hold
//! covers — even when the hold lands while a sweep is busy deleting exactly
//! that footage.
//!
//! Each iteration opens a fresh node (file store, RocksDB catalog, manual
//! clock, no background sweeper), sets a default policy of 60 s and ingests
//! 2 s segments on three cameras. A task runs `sweep(false)` back to back
//! while the test places a hold over a random set of cameras and a random
//! time window, in one of two ways (see [`Mode`]): with the clock at the
//! newest expiry (everything due, the newest segments exactly now) once a
//! random number of segments is gone; or with the clock ticking one second at
//! a time from the oldest expiry, so footage comes due right at the current
//! clock while the sweeper chases it. Right after `create_hold` returns, the
//! covered segments still indexed are recorded; the clock then moves to the
//! newest expiry and the sweeper completes at least three more whole sweeps
//! (counted, never slept for). Every recorded segment must still be indexed,
//! in the store directory and read back intact, none may appear in any sweep
//! report, and every segment the hold does not cover must be gone.
//!
//! Iterations: `HOLD_RACE_ITERATIONS` (default 50); seed: `HOLD_RACE_SEED`
//! (printed, random by default).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use custody_core::{
    CameraId, HoldCameras, ManualClock, MediaType, Policy, PolicyScope, SegmentId, StreamName,
    TimeRange, Timestamp,
};
use custody_server::{IngestHeader, IngestPart, Node, ServerConfig, ServerError};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CAMS: [&str; 3] = ["cam-a", "cam-b", "cam-c"];
/// Segments per camera.
const PER_CAMERA: i64 = 12;
/// Seconds per segment.
const SEG_SECS: i64 = 2;
const RETAIN_SECS: u64 = 60;
/// 2030-01-01T00:00:00Z.
const T0: i64 = 1_893_456_000;
/// Whole sweeps the sweeper must complete after the hold is acknowledged.
const SWEEPS_AFTER_HOLD: u64 = 3;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_secs(secs)
}

struct Seg {
    camera: usize,
    range: TimeRange,
    object_key: String,
    payload: Vec<u8>,
}

async fn read_back(node: &Node, id: &SegmentId) -> Result<Vec<u8>, ServerError> {
    let seg = node.open_segment(id).await?;
    let mut body = node.read_plaintext(seg, 0..u64::MAX);
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

/// What the iterations saw, to show the race was really run.
#[derive(Default, Debug)]
struct Tally {
    /// Covered segments still indexed when `create_hold` returned (all must survive).
    protected: usize,
    /// Of those, segments already past their expiry at that moment: footage
    /// the sweeper was entitled to delete a moment earlier.
    protected_due_at_ack: usize,
    /// Covered segments deleted before the hold was acknowledged (allowed).
    covered_deleted_before_ack: usize,
    /// Uncovered segments, all expired by the end: every one must be deleted.
    uncovered_deleted: usize,
    /// Holds whose `create_hold` call overlapped a running sweep.
    placed_during_a_sweep: usize,
    /// Sweeps run in total.
    sweeps: u64,
    /// Times `Catalog::get`, racing the sweeper, failed (a catalog bug: a
    /// concurrent delete makes it report corruption instead of "absent").
    get_races: u64,
}

/// How the footage comes due while the sweeper runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// The clock stands at the newest expiry: everything is due at once, and
    /// the hold is placed once a random number of segments is gone (with 0,
    /// at once, racing the sweeper's first sweep, which starts after a
    /// random number of yields).
    AllDue { trigger: usize },
    /// The clock starts at the oldest expiry and a ticker task moves it one
    /// second per sweep (per completed sweep with `lockstep`, else per
    /// started one), so footage comes due right at the current clock while
    /// the sweeper chases it, also while `create_hold` runs; the hold is
    /// placed after a random number of ticks.
    Rolling { ticks: i64, lockstep: bool },
}

async fn iteration(it: usize, rng: &mut StdRng, tally: &mut Tally) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    config.keys.env_var = String::new();
    config.retention.policy_grace_secs = 0;
    config.retention.hold_fence_secs = 30;
    config.retention.sweeper_enabled = false;
    let clock = ManualClock::new(ts(T0));
    let node = Node::open_with_clock(&config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let root = node.store().local_root().unwrap().to_path_buf();

    node.set_policy(
        PolicyScope::Default,
        Policy {
            retain_for_secs: RETAIN_SECS,
            floor_secs: None,
            ceiling_secs: None,
            locked: false,
        },
        "admin@test",
    )
    .await
    .unwrap();

    // Footage: PER_CAMERA consecutive segments per camera.
    let media = MediaType::parse("video/mp2t").unwrap();
    let mut segs: BTreeMap<SegmentId, Seg> = BTreeMap::new();
    for (c, name) in CAMS.iter().enumerate() {
        for k in 0..PER_CAMERA {
            let range = TimeRange::new(ts(T0 + SEG_SECS * k), ts(T0 + SEG_SECS * (k + 1))).unwrap();
            let payload = format!("{it}/{name}/{k}").into_bytes();
            let header = IngestHeader {
                camera: CameraId::parse(name).unwrap(),
                stream: StreamName::main(),
                range,
                media_type: media.clone(),
                sequence: k as u64,
                sha256: None,
                size: None,
            };
            let parts = futures::stream::iter(vec![
                Ok(IngestPart::Chunk(Bytes::from(payload.clone()))),
                Ok(IngestPart::Finish { sha256: None }),
            ]);
            let receipt = node.ingest(header, Box::pin(parts)).await.unwrap();
            let rec = node.catalog().get(&receipt.segment_id).unwrap().unwrap();
            assert_eq!(
                rec.expires_at,
                Some(ts(
                    range.end().as_nanos() / 1_000_000_000 + RETAIN_SECS as i64
                )),
                "expiry is end + retain_for"
            );
            segs.insert(
                receipt.segment_id,
                Seg {
                    camera: c,
                    range,
                    object_key: rec.object_key,
                    payload,
                },
            );
        }
    }
    let expiry = |s: &Seg| ts(s.range.end().as_nanos() / 1_000_000_000 + RETAIN_SECS as i64);
    let oldest_expiry = ts(T0 + SEG_SECS + RETAIN_SECS as i64);
    let newest_expiry = ts(T0 + SEG_SECS * PER_CAMERA + RETAIN_SECS as i64);

    // The hold: random cameras, random window, sometimes open-ended.
    let cameras: Option<BTreeSet<usize>> = if rng.gen_bool(0.2) {
        None
    } else {
        let mut set = BTreeSet::new();
        while set.is_empty() {
            for c in 0..CAMS.len() {
                if rng.gen_bool(0.45) {
                    set.insert(c);
                }
            }
        }
        Some(set)
    };
    let a = rng.gen_range(0..PER_CAMERA * SEG_SECS);
    let start = ts(T0 + a);
    let end = if rng.gen_bool(0.25) {
        None
    } else {
        Some(ts(T0 + rng.gen_range(a + 1..=PER_CAMERA * SEG_SECS + 1)))
    };
    let covers = |s: &Seg| {
        cameras.as_ref().is_none_or(|set| set.contains(&s.camera))
            && start < s.range.end()
            && end.is_none_or(|e| s.range.start() < e)
    };
    let hold_cameras = match &cameras {
        None => HoldCameras::All,
        Some(set) => {
            HoldCameras::list(set.iter().map(|&c| CameraId::parse(CAMS[c]).unwrap())).unwrap()
        }
    };

    // Deletion order of an unheld sweep: by expiry, then id.
    let mut order: Vec<SegmentId> = segs.keys().copied().collect();
    order.sort_by_key(|id| (expiry(&segs[id]), *id));
    let mode = if rng.gen_bool(0.5) {
        Mode::AllDue {
            trigger: if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..=order.len())
            },
        }
    } else {
        Mode::Rolling {
            ticks: rng.gen_range(0..=PER_CAMERA * SEG_SECS),
            lockstep: rng.gen_bool(0.5),
        }
    };
    match mode {
        Mode::AllDue { .. } => clock.set(newest_expiry),
        Mode::Rolling { .. } => clock.set(oldest_expiry),
    }
    // Footage due right now exists from the start.
    assert!(segs.values().any(|s| expiry(s) == clock_now(&clock)));

    // When the hold is placed at once, the sweeper starts after a random
    // number of yields, so either may reach the hold view first.
    let start_delay = match mode {
        Mode::AllDue { trigger: 0 } => rng.gen_range(0..20_000u32),
        _ => 0,
    };
    // The sweeper: back-to-back sweeps, counting started and completed ones.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
    let deleted_log: Arc<Mutex<Vec<(u64, SegmentId)>>> = Arc::default();
    let sweeper = {
        let node = node.clone();
        let stop = stop.clone();
        let started = started.clone();
        let log = deleted_log.clone();
        tokio::spawn(async move {
            for _ in 0..start_delay {
                tokio::task::yield_now().await;
            }
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                started.fetch_add(1, Ordering::SeqCst);
                let report = node.sweep(false).await.expect("sweep failed");
                assert!(!report.stopped_by_fence, "sweep stopped by the fence");
                n += 1;
                log.lock()
                    .unwrap()
                    .extend(report.deleted.iter().map(|d| (n, d.segment_id)));
                done_tx.send_replace(n);
            }
            n
        })
    };

    // In rolling mode a ticker moves the clock one second per sweep (started
    // or completed), also while `create_hold` runs, until the newest expiry.
    let stop_ticker = Arc::new(AtomicBool::new(false));
    let ticker = match mode {
        Mode::AllDue { .. } => None,
        Mode::Rolling { lockstep, .. } => {
            let clock = clock.clone();
            let stop = stop_ticker.clone();
            let started = started.clone();
            let mut done_rx = done_rx.clone();
            Some(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) && clock_now(&clock) < newest_expiry {
                    if lockstep {
                        let d = *done_rx.borrow();
                        done_rx.wait_for(|&n| n > d).await.unwrap();
                    } else {
                        let s = started.load(Ordering::SeqCst);
                        while started.load(Ordering::SeqCst) == s && !stop.load(Ordering::SeqCst) {
                            tokio::task::yield_now().await;
                        }
                    }
                    clock.advance(std::time::Duration::from_secs(1));
                }
            }))
        }
    };

    match mode {
        Mode::AllDue { trigger: 0 } => {}
        Mode::AllDue { trigger } => {
            let target = order[trigger - 1];
            // Polls the catalog (no sleeping): segments go in `order`, so
            // once `target` is gone about `trigger` segments are. The first
            // sweep deletes everything, so this ends by then at the latest.
            loop {
                if *done_rx.borrow() > 0 {
                    break;
                }
                match node.catalog().get(&target) {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    // Catalog::get reads id → key, then key → record, without
                    // a snapshot: a delete in between is reported as corruption.
                    Err(e) => {
                        tally.get_races += 1;
                        if tally.get_races == 1 {
                            eprintln!(
                                "hold_fence_race: iteration {it}: Catalog::get racing the sweeper failed: {e:?}"
                            );
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        Mode::Rolling { ticks, .. } => {
            let due = ts(oldest_expiry.as_nanos() / 1_000_000_000 + ticks);
            while clock_now(&clock) < due.min(newest_expiry) {
                tokio::task::yield_now().await;
            }
        }
    }

    let in_sweep_before = started.load(Ordering::SeqCst) > *done_rx.borrow();
    let (hold, _coverage) = node
        .create_hold(
            hold_cameras,
            start,
            end,
            format!("CASE-{it}"),
            "race test".into(),
            "legal@test",
            // The sweeper may already have emptied a listed camera.
            true,
        )
        .await
        .unwrap();
    // Acknowledged: from here on, nothing covered may go.
    let ack_now = clock_now(&clock);
    stop_ticker.store(true, Ordering::SeqCst);
    let done_at_ack = *done_rx.borrow();
    if in_sweep_before || started.load(Ordering::SeqCst) > done_at_ack + 1 {
        tally.placed_during_a_sweep += 1;
    }
    // The sweeper is still running: read each camera from one iterator
    // (a consistent RocksDB snapshot) rather than with Catalog::get.
    let mut indexed = BTreeSet::new();
    for name in CAMS {
        let camera = CameraId::parse(name).unwrap();
        for r in node.catalog().camera_segments(&camera).unwrap() {
            indexed.insert(r.segment_id);
        }
    }
    let mut protected = Vec::new();
    let mut covered_gone = 0;
    for (id, s) in &segs {
        match (covers(s), indexed.contains(id)) {
            (true, true) => protected.push(*id),
            (true, false) => covered_gone += 1,
            _ => {}
        }
    }

    // Everything comes due; then three whole sweeps that began after that.
    if let Some(t) = ticker {
        t.await.unwrap();
    }
    clock.set(newest_expiry);
    let begun = started.load(Ordering::SeqCst);
    done_rx
        .wait_for(|&n| n >= begun + SWEEPS_AFTER_HOLD)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let sweeps = sweeper.await.unwrap();
    assert!(sweeps >= done_at_ack + SWEEPS_AFTER_HOLD);
    tally.sweeps += sweeps;

    let log = deleted_log.lock().unwrap().clone();
    let deleted: BTreeSet<SegmentId> = log.iter().map(|(_, id)| *id).collect();
    let ctx = format!(
        "iteration {it} ({mode:?}): hold {} on {:?} over [{start}, {}) acknowledged at {ack_now} after sweep {done_at_ack}",
        hold.id,
        cameras
            .as_ref()
            .map(|s| s.iter().map(|&c| CAMS[c]).collect::<Vec<_>>()),
        end.map_or("open".to_string(), |e| e.to_string()),
    );
    for id in &protected {
        let s = &segs[id];
        let when = log.iter().find(|(_, d)| d == id).map(|(n, _)| *n);
        assert!(
            when.is_none(),
            "{ctx}: HELD segment {id} ({} {}) was deleted by sweep {when:?} after the hold was acknowledged",
            CAMS[s.camera],
            s.range
        );
        assert!(
            node.catalog().get(id).unwrap().is_some(),
            "{ctx}: held segment {id} ({} {}) vanished from the catalog",
            CAMS[s.camera],
            s.range
        );
        assert!(
            root.join(&s.object_key).is_file(),
            "{ctx}: held segment {id}: object missing from the store directory"
        );
        let bytes = read_back(&node, id)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: held segment {id} does not read back: {e}"));
        assert_eq!(bytes, s.payload, "{ctx}: held segment {id} read back wrong");
    }
    for (id, s) in &segs {
        if covers(s) {
            continue;
        }
        assert!(
            deleted.contains(id) && node.catalog().get(id).unwrap().is_none(),
            "{ctx}: expired unheld segment {id} ({} {}) was not deleted",
            CAMS[s.camera],
            s.range
        );
        assert!(
            !root.join(&s.object_key).exists(),
            "{ctx}: deleted segment {id}: object still in the store directory"
        );
    }

    tally.protected += protected.len();
    tally.protected_due_at_ack += protected
        .iter()
        .filter(|id| expiry(&segs[id]) <= ack_now)
        .count();
    tally.covered_deleted_before_ack += covered_gone;
    tally.uncovered_deleted += segs.values().filter(|s| !covers(s)).count();
    drop(node);
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    custody_core::Clock::now(clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_hold_survives_a_racing_sweeper() {
    let iterations: usize = std::env::var("HOLD_RACE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("HOLD_RACE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("hold_fence_race: seed {seed} (HOLD_RACE_SEED), {iterations} iterations");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for it in 0..iterations {
        iteration(it, &mut rng, &mut tally).await;
    }
    eprintln!("hold_fence_race: {iterations} iterations passed: {tally:?}");
    assert!(
        tally.protected_due_at_ack > 0,
        "no hold ever saved footage that was already due: the race was never run"
    );
    assert!(
        tally.covered_deleted_before_ack > 0,
        "no sweep ever deleted covered footage before the hold: the race was never run"
    );
    assert!(tally.uncovered_deleted > 0, "the sweeper deleted nothing");
}
