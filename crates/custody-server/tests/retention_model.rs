//! Model-based test of retention and legal holds (ARCHITECTURE.md, invariants 3 and 4).
//!
//! Random histories of ingests (and byte-identical re-uploads), policy
//! changes, holds, releases, clock moves, sweeps and restarts run against a real [`Node`] (file store and RocksDB
//! catalog in a temporary directory, manual clock). A small reference model,
//! written independently of `custody_core::PolicyBook`, tracks which segments
//! must exist, which holds are active and what the policies are; after every
//! step the node is compared with it.
//!
//! # How the model judges expiry
//!
//! The node runs with `policy_grace_secs = 0`. For a segment of camera `c`
//! ending at `end`, at clock time `now`:
//!
//! * The policy in force is the camera scope of `c` if one was ever set,
//!   else the default scope; with neither, the segment never expires.
//! * `retain` is that policy's `retain_for_secs`. A policy is only accepted
//!   when `floor <= retain_for <= ceiling`, so clamping `retain_for` by the
//!   policy's own floor and ceiling leaves it unchanged; the model still
//!   clamps, for clarity.
//! * Locked floors outlive their policy (the core's rule): whenever the
//!   policy in force for `c` changes (another scope takes over, or a new
//!   version of the same scope) at effective time `t`, and the policy that
//!   governed until `t` was locked with floor `f`, the model records the
//!   binding `(t, f)` for `c`. A segment with `end <= t` may not go before
//!   `end + f`. Within one scope this never matters (a locked floor can only
//!   grow and `retain_for >= floor`); it matters when a camera scope takes
//!   over from a locked default. This rule is modelled, not avoided.
//! * Expired at `now` ⇔ a policy is in force, `end + clamp(retain) <= now`,
//!   and `end + f <= now` for every binding `(t, f)` of `c` with `end <= t`.
//!
//! The grace rule is not modelled, and need not be: with a zero grace the
//! core keeps footage at least until `min(previous expiry, t)` where `t` is
//! the effective time of the change that set the current policy, and that
//! bound is `<= t <= now` whenever `t <= now`, so it never changes whether a
//! segment is expired *now*. Effective times are `max(now, latest + 1 ns)`
//! (the model computes them and checks the node agrees), so `t > now` only
//! right after two policy changes at the same clock instant. The model
//! therefore treats "expired" as exact only when `now >= latest effective
//! time`; before that it still asserts "deleted ⇒ expired" (the rule only
//! delays deletion) but not "expired ⇒ deleted" (such sweeps are counted as
//! "judged partially" in the printed summary).
//!
//! The ceiling check is separate and needs no such care: after a sweep no
//! unheld segment remains whose `end + ceiling` (ceiling of the policy in
//! force) has passed, unless a locked-floor binding (above) still keeps it.
//!
//! Cases: `RETENTION_CASES` (default 256), e.g. `RETENTION_CASES=5000`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custody_core::{
    CameraId, HoldCameras, HoldId, ManualClock, MediaType, Policy, PolicyScope, ScopeKey,
    SegmentId, StreamName, TimeRange, Timestamp, MAX_RETENTION_SECS,
};
use custody_server::{IngestHeader, IngestPart, Node, ServerConfig, ServerError};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const CAMS: [&str; 3] = ["cam-a", "cam-b", "cam-c"];
/// 2030-01-01T00:00:00Z.
const T0_SECS: i64 = 1_893_456_000;
const NS: i64 = 1_000_000_000;
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("RETENTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn cam(i: usize) -> CameraId {
    CameraId::parse(CAMS[i]).unwrap()
}

fn plus_secs(t: Timestamp, secs: u64) -> Timestamp {
    let s = i64::try_from(secs).unwrap_or(i64::MAX);
    Timestamp::from_nanos(t.as_nanos().saturating_add(s.saturating_mul(NS)))
}

// ---------------------------------------------------------------- steps

#[derive(Debug, Clone)]
enum Step {
    /// A segment of camera `cam` starting `back_secs` before now.
    Ingest {
        cam: usize,
        back_secs: u64,
        dur_secs: u64,
    },
    /// `scope`: `None` = default scope, `Some(i)` = camera `i`.
    SetPolicy {
        scope: Option<usize>,
        retain: u64,
        floor: Option<u64>,
        ceiling: Option<u64>,
        locked: bool,
    },
    /// `cams`: `None` = all cameras. The range starts `back_secs` before now.
    CreateHold {
        cams: Option<BTreeSet<usize>>,
        back_secs: i64,
        len_secs: Option<u64>,
        future_cameras: bool,
    },
    /// Uploads the `idx % n`-th accepted upload again, byte for byte (a
    /// recorder retrying): a duplicate if still stored, stored anew if swept.
    Reingest {
        idx: usize,
    },
    /// Releases the `idx % n`-th hold ever created (or an unknown id).
    ReleaseHold {
        idx: usize,
    },
    AdvanceClock {
        secs: u64,
    },
    Sweep,
    Restart,
}

/// A locked default policy handing a camera over to a shorter camera scope,
/// then a sweep inside the window the outlived locked floor still protects:
/// rare in random histories, so generated on purpose now and then.
fn locked_handover() -> impl Strategy<Value = Vec<Step>> {
    (
        0..CAMS.len(),
        prop::sample::select(vec![600u64, 1800, 3600, 7200]),
        prop::sample::select(vec![1u64, 30, 60, 300]),
        0u64..3000,
        1u64..=600,
        prop::sample::select(vec![1u64, 60, 300, 900, 1800, 3600, 7200]),
    )
        .prop_map(|(cam, floor, short, back_secs, dur_secs, wait)| {
            vec![
                Step::SetPolicy {
                    scope: None,
                    retain: floor,
                    floor: Some(floor),
                    ceiling: None,
                    locked: true,
                },
                Step::Ingest {
                    cam,
                    back_secs,
                    dur_secs,
                },
                Step::AdvanceClock { secs: 1 },
                Step::SetPolicy {
                    scope: Some(cam),
                    retain: short,
                    floor: None,
                    ceiling: Some(short),
                    locked: false,
                },
                Step::AdvanceClock { secs: wait },
                Step::Sweep,
            ]
        })
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            30 => step().prop_map(|s| vec![s]),
            1 => locked_handover(),
        ],
        1..60,
    )
    .prop_map(|chunks| chunks.into_iter().flatten().collect())
}

fn duration_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => prop::sample::select(vec![1u64, 30, 60, 120, 300, 600]),
        3 => prop::sample::select(vec![900u64, 1800, 3600, 7200]),
        1 => Just(86_400u64),
        1 => Just(0u64),
        1 => Just(MAX_RETENTION_SECS),
        1 => Just(MAX_RETENTION_SECS + 1),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let ingest = (
        0..CAMS.len(),
        0u64..4000,
        prop_oneof![20 => 1u64..=600, 1 => 601u64..=700],
    )
        .prop_map(|(cam, back_secs, dur_secs)| Step::Ingest {
            cam,
            back_secs,
            dur_secs,
        });
    let policy = (
        prop::option::weighted(0.5, 0..CAMS.len()),
        duration_value(),
        duration_value(),
        duration_value(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.35),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(scope, a, b, c, has_floor, has_ceiling, locked, sorted)| {
            let mut v = [a, b, c];
            if sorted {
                v.sort_unstable();
            }
            Step::SetPolicy {
                scope,
                floor: has_floor.then_some(v[0]),
                retain: v[1],
                ceiling: has_ceiling.then_some(v[2]),
                locked,
            }
        });
    let hold = (
        prop_oneof![
            1 => Just(None),
            3 => prop::collection::btree_set(0..CAMS.len(), 1..=CAMS.len()).prop_map(Some),
        ],
        -600i64..6000,
        prop::option::weighted(0.7, 1u64..4000),
        prop::bool::weighted(0.7),
    )
        .prop_map(
            |(cams, back_secs, len_secs, future_cameras)| Step::CreateHold {
                cams,
                back_secs,
                len_secs,
                future_cameras,
            },
        );
    let advance = prop_oneof![
        10 => prop::sample::select(vec![1u64, 5, 30, 60, 120, 300, 600, 1800, 3600]),
        2 => prop::sample::select(vec![86_400u64, 7 * 86_400]),
        1 => Just(365 * 86_400u64),
    ]
    .prop_map(|secs| Step::AdvanceClock { secs });
    prop_oneof![
        6 => ingest,
        1 => any::<usize>().prop_map(|idx| Step::Reingest { idx }),
        3 => policy,
        2 => hold,
        1 => any::<usize>().prop_map(|idx| Step::ReleaseHold { idx }),
        4 => advance,
        3 => Just(Step::Sweep),
        1 => Just(Step::Restart),
    ]
}

// ---------------------------------------------------------------- model

#[derive(Debug, Clone)]
struct MSeg {
    cam: usize,
    range: TimeRange,
    object_key: String,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct MHold {
    id: HoldId,
    cams: Option<BTreeSet<usize>>,
    start: Timestamp,
    end: Option<Timestamp>,
    released: bool,
}

impl MHold {
    fn covers(&self, s: &MSeg) -> bool {
        !self.released
            && self.cams.as_ref().is_none_or(|c| c.contains(&s.cam))
            && self.start < s.range.end()
            && self.end.is_none_or(|e| s.range.start() < e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MScope {
    Default,
    Camera(usize),
}

impl MScope {
    fn key(self) -> ScopeKey {
        match self {
            MScope::Default => ScopeKey::Default,
            MScope::Camera(i) => ScopeKey::Camera(cam(i)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MPolicy {
    scope: MScope,
    version: u64,
    policy: Policy,
}

#[derive(Default)]
struct Model {
    now_ns: i64,
    segs: BTreeMap<SegmentId, MSeg>,
    holds: Vec<MHold>,
    default: Option<MPolicy>,
    camera: [Option<MPolicy>; 3],
    latest_effective: Option<Timestamp>,
    /// Per camera: `(t, floor)` — a locked policy with this floor governed
    /// the camera until `t`.
    bindings: [Vec<(Timestamp, u64)>; 3],
    next_sequence: u64,
    /// Every accepted upload: (camera, range, sequence, payload).
    uploads: Vec<(usize, TimeRange, u64, Vec<u8>)>,
}

impl Model {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.now_ns)
    }

    fn governing(&self, c: usize) -> Option<MPolicy> {
        self.camera[c].or(self.default)
    }

    fn scope_policy(&self, s: MScope) -> Option<MPolicy> {
        match s {
            MScope::Default => self.default,
            MScope::Camera(i) => self.camera[i],
        }
    }

    fn held(&self, s: &MSeg) -> bool {
        self.holds.iter().any(|h| h.covers(s))
    }

    /// Latest instant at which a locked floor that outlived its policy keeps `s`.
    fn binding_bound(&self, s: &MSeg) -> Option<Timestamp> {
        let end = s.range.end();
        self.bindings[s.cam]
            .iter()
            .filter(|(t, _)| end <= *t)
            .map(|(_, f)| plus_secs(end, *f))
            .max()
    }

    /// The model's expiry of `s` (see the module docs); `None` = never.
    fn expiry(&self, s: &MSeg) -> Option<Timestamp> {
        let p = self.governing(s.cam)?.policy;
        let mut retain = p.retain_for_secs;
        if let Some(c) = p.ceiling_secs {
            retain = retain.min(c);
        }
        if let Some(f) = p.floor_secs {
            retain = retain.max(f);
        }
        let at = plus_secs(s.range.end(), retain);
        Some(self.binding_bound(s).map_or(at, |b| b.max(at)))
    }

    fn expired(&self, s: &MSeg) -> bool {
        self.expiry(s).is_some_and(|e| e <= self.now())
    }

    /// Whether "expired" is exact now (see the module docs).
    fn expiry_exact(&self) -> bool {
        self.latest_effective.is_none_or(|t| t <= self.now())
    }

    /// Why a policy change must be refused, if it must.
    fn refusal(&self, scope: MScope, p: &Policy) -> Option<&'static str> {
        let too_long = [Some(p.retain_for_secs), p.floor_secs, p.ceiling_secs]
            .into_iter()
            .flatten()
            .any(|v| v > MAX_RETENTION_SECS);
        if p.retain_for_secs == 0 || too_long {
            return Some("invalid");
        }
        if p.locked && p.floor_secs.is_none() {
            return Some("invalid");
        }
        if let (Some(f), Some(c)) = (p.floor_secs, p.ceiling_secs) {
            if c < f {
                return Some("invalid");
            }
        }
        if p.floor_secs.is_some_and(|f| p.retain_for_secs < f)
            || p.ceiling_secs.is_some_and(|c| p.retain_for_secs > c)
        {
            return Some("invalid");
        }
        if let Some(cur) = self.scope_policy(scope) {
            if cur.policy.locked
                && (!p.locked || p.floor_secs.unwrap_or(0) < cur.policy.floor_secs.unwrap_or(0))
            {
                return Some("precondition");
            }
        }
        None
    }

    /// Applies an accepted change at effective time `t`.
    fn apply_policy(&mut self, scope: MScope, policy: Policy, t: Timestamp) {
        let before: Vec<Option<MPolicy>> = (0..CAMS.len()).map(|c| self.governing(c)).collect();
        let version = self.scope_policy(scope).map_or(1, |p| p.version + 1);
        let new = Some(MPolicy {
            scope,
            version,
            policy,
        });
        match scope {
            MScope::Default => self.default = new,
            MScope::Camera(i) => self.camera[i] = new,
        }
        for (c, old) in before.into_iter().enumerate() {
            if old != self.governing(c) {
                if let Some(old) = old.filter(|o| o.policy.locked) {
                    self.bindings[c].push((t, old.policy.floor_secs.unwrap_or(0)));
                }
            }
        }
        self.latest_effective = Some(t);
    }
}

// ---------------------------------------------------------------- stats

#[derive(Default)]
struct Stats {
    cases: AtomicU64,
    steps: AtomicU64,
    sweeps: AtomicU64,
    partial_sweeps: AtomicU64,
    deleted: AtomicU64,
    kept_by_hold: AtomicU64,
    policies_set: AtomicU64,
    policies_refused: AtomicU64,
    floor_bindings_used: AtomicU64,
    restarts: AtomicU64,
}

static STATS: Stats = Stats {
    cases: AtomicU64::new(0),
    steps: AtomicU64::new(0),
    sweeps: AtomicU64::new(0),
    partial_sweeps: AtomicU64::new(0),
    deleted: AtomicU64::new(0),
    kept_by_hold: AtomicU64::new(0),
    policies_set: AtomicU64::new(0),
    policies_refused: AtomicU64::new(0),
    floor_bindings_used: AtomicU64::new(0),
    restarts: AtomicU64::new(0),
};

thread_local! {
    /// Off while replaying regressions, so the printed numbers describe the proptest run.
    static RECORD: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn bump(c: &AtomicU64, n: u64) {
    if RECORD.with(|r| r.get()) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- harness

fn config(dir: &Path) -> ServerConfig {
    let mut c = ServerConfig {
        data_dir: dir.to_path_buf(),
        ..ServerConfig::default()
    };
    c.keys.env_var = String::new();
    c.retention.policy_grace_secs = 0;
    c.retention.hold_fence_secs = 3600;
    c.retention.sweeper_enabled = false;
    c
}

async fn open(config: &ServerConfig, clock: &ManualClock) -> Result<Node, TestCaseError> {
    Node::open_with_clock(config, Arc::new(clock.clone()))
        .await
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))
}

fn object_file(node: &Node, key: &str) -> std::path::PathBuf {
    node.store().local_root().expect("file store").join(key)
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

fn kind(e: &ServerError) -> &'static str {
    match e {
        ServerError::Invalid(_) => "invalid",
        ServerError::NotFound(_) => "not found",
        ServerError::AlreadyExists(_) => "already exists",
        ServerError::FailedPrecondition(_) => "precondition",
        ServerError::Aborted(_) => "aborted",
        ServerError::DataLoss(_) => "data loss",
        ServerError::Unavailable(_) => "unavailable",
        ServerError::OutOfSpace(_) => "out of space",
        ServerError::DeadlineExceeded(_) => "deadline exceeded",
        ServerError::Internal(_) => "internal",
    }
}

/// Every model segment is indexed, its object exists and reads back intact.
async fn check_all_readable(node: &Node, m: &Model) -> Result<(), TestCaseError> {
    for (id, s) in &m.segs {
        prop_assert!(
            object_file(node, &s.object_key).is_file(),
            "object of kept segment {id} ({}) is missing from the store directory",
            s.range
        );
        match read_back(node, id).await {
            Ok(bytes) => prop_assert_eq!(&bytes, &s.payload, "segment {} read back wrong", id),
            Err(e) => prop_assert!(false, "kept segment {id} does not read back: {e}"),
        }
    }
    Ok(())
}

/// Cheap checks after every step: catalog contents, policies, holds.
async fn check_state(
    node: &Node,
    m: &Model,
    observed_locks: &mut BTreeMap<ScopeKey, (u64, u64)>,
) -> Result<(), TestCaseError> {
    for (c, name) in CAMS.iter().enumerate() {
        let in_catalog: BTreeSet<SegmentId> = node
            .catalog()
            .camera_segments(&cam(c))
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_iter()
            .map(|r| r.segment_id)
            .collect();
        let in_model: BTreeSet<SegmentId> = m
            .segs
            .iter()
            .filter(|(_, s)| s.cam == c)
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(
            in_catalog,
            in_model,
            "catalog segments of {} differ from the model",
            name
        );
    }
    let scopes = std::iter::once(MScope::Default).chain((0..CAMS.len()).map(MScope::Camera));
    for scope in scopes {
        let key = scope.key();
        let got = node.policy(&key).map(|v| (v.version, v.policy));
        let want = m.scope_policy(scope).map(|p| (p.version, p.policy));
        prop_assert_eq!(got, want, "policy of {} differs from the model", key);
        // Observed independently of the model: a locked floor never shrinks.
        if let Some((v, p)) = got {
            if let Some(&(lv, lfloor)) = observed_locks.get(&key) {
                prop_assert!(
                    p.locked && p.floor_secs.unwrap_or(0) >= lfloor,
                    "{key} was locked with floor {lfloor} at version {lv}, now version {v} is {p:?}"
                );
            }
            if p.locked {
                observed_locks.insert(key, (v, p.floor_secs.unwrap_or(0)));
            }
        }
    }
    let active: BTreeSet<HoldId> = node
        .holds(false)
        .await
        .into_iter()
        .map(|h| h.hold.id)
        .collect();
    let want: BTreeSet<HoldId> = m
        .holds
        .iter()
        .filter(|h| !h.released)
        .map(|h| h.id)
        .collect();
    prop_assert_eq!(active, want, "active holds differ from the model");
    Ok(())
}

async fn ingest(
    node: &Node,
    c: usize,
    range: TimeRange,
    sequence: u64,
    payload: &[u8],
) -> Result<custody_server::IngestReceipt, ServerError> {
    let header = IngestHeader {
        camera: cam(c),
        stream: StreamName::main(),
        range,
        media_type: MediaType::parse("video/mp2t").unwrap(),
        sequence,
        sha256: None,
        size: None,
    };
    let parts = futures::stream::iter(vec![
        Ok(IngestPart::Chunk(Bytes::copy_from_slice(payload))),
        Ok(IngestPart::Finish { sha256: None }),
    ]);
    node.ingest(header, Box::pin(parts)).await
}

async fn run_case(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cfg = config(dir.path());
    let clock = ManualClock::new(Timestamp::from_secs(T0_SECS));
    let mut m = Model {
        now_ns: T0_SECS * NS,
        ..Model::default()
    };
    let mut node = open(&cfg, &clock).await?;
    let mut observed_locks = BTreeMap::new();

    for (n, step) in steps.iter().enumerate() {
        bump(&STATS.steps, 1);
        match step {
            Step::Ingest {
                cam: c,
                back_secs,
                dur_secs,
            } => {
                let start = Timestamp::from_nanos(m.now_ns - (*back_secs as i64) * NS);
                let range = TimeRange::new(start, plus_secs(start, *dur_secs)).unwrap();
                let sequence = m.next_sequence;
                m.next_sequence += 1;
                let payload = format!("seg {sequence} of {}", CAMS[*c]).into_bytes();
                let res = ingest(&node, *c, range, sequence, &payload).await;
                // limits.max_clock_skew_secs (default 300): no footage ending
                // more than 5 minutes after the server's clock.
                let from_future = range.end().as_nanos() > m.now_ns + 300 * NS;
                if *dur_secs > 600 || from_future {
                    prop_assert!(
                        matches!(res, Err(ServerError::Invalid(_))),
                        "step {n}: a {dur_secs} s segment ending {} must be refused as invalid, got {res:?}",
                        range.end()
                    );
                } else {
                    let receipt =
                        res.map_err(|e| TestCaseError::fail(format!("step {n}: ingest: {e}")))?;
                    prop_assert!(!receipt.duplicate);
                    let rec = node
                        .catalog()
                        .get(&receipt.segment_id)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .ok_or_else(|| TestCaseError::fail("acknowledged segment not indexed"))?;
                    m.uploads.push((*c, range, sequence, payload.clone()));
                    m.segs.insert(
                        receipt.segment_id,
                        MSeg {
                            cam: *c,
                            range,
                            object_key: rec.object_key,
                            payload,
                        },
                    );
                }
            }
            Step::Reingest { idx } => {
                if m.uploads.is_empty() {
                    continue;
                }
                let (c, range, sequence, payload) = m.uploads[idx % m.uploads.len()].clone();
                let receipt = ingest(&node, c, range, sequence, &payload)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {n}: re-ingest: {e}")))?;
                let present = m.segs.contains_key(&receipt.segment_id);
                prop_assert_eq!(
                    receipt.duplicate,
                    present,
                    "step {}: re-ingest of {} answered duplicate = {}",
                    n,
                    receipt.segment_id,
                    receipt.duplicate
                );
                if !present {
                    let rec = node
                        .catalog()
                        .get(&receipt.segment_id)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .ok_or_else(|| TestCaseError::fail("acknowledged segment not indexed"))?;
                    m.segs.insert(
                        receipt.segment_id,
                        MSeg {
                            cam: c,
                            range,
                            object_key: rec.object_key,
                            payload,
                        },
                    );
                }
            }
            Step::SetPolicy {
                scope,
                retain,
                floor,
                ceiling,
                locked,
            } => {
                let scope = scope.map_or(MScope::Default, MScope::Camera);
                let policy = Policy {
                    retain_for_secs: *retain,
                    floor_secs: *floor,
                    ceiling_secs: *ceiling,
                    locked: *locked,
                };
                let pscope = match scope {
                    MScope::Default => PolicyScope::Default,
                    MScope::Camera(i) => PolicyScope::Camera(cam(i)),
                };
                let before = node.policy(&scope.key());
                let res = node.set_policy(pscope, policy, "admin@test").await;
                match (m.refusal(scope, &policy), res) {
                    (None, Ok((v, _effect))) => {
                        bump(&STATS.policies_set, 1);
                        let eff = match m.latest_effective {
                            Some(l) if l >= m.now() => l.saturating_add_nanos(1),
                            _ => m.now(),
                        };
                        prop_assert_eq!(v.effective_at, eff, "step {}: effective time", n);
                        m.apply_policy(scope, policy, eff);
                    }
                    (None, Err(e)) => {
                        prop_assert!(false, "step {n}: valid policy {policy:?} for {scope:?} refused: {e}")
                    }
                    (Some(why), Ok((v, _))) => prop_assert!(
                        false,
                        "step {n}: policy {policy:?} for {scope:?} must be refused ({why}), was accepted as {v:?}"
                    ),
                    (Some(why), Err(e)) => {
                        bump(&STATS.policies_refused, 1);
                        prop_assert_eq!(kind(&e), why, "step {}: refusal kind: {}", n, e);
                        let after = node.policy(&scope.key());
                        prop_assert_eq!(before, after, "step {}: a refused change altered the policy", n);
                    }
                }
            }
            Step::CreateHold {
                cams,
                back_secs,
                len_secs,
                future_cameras,
            } => {
                let start = Timestamp::from_nanos(m.now_ns - back_secs * NS);
                let end = len_secs.map(|l| plus_secs(start, l));
                let hc = match cams {
                    None => HoldCameras::All,
                    Some(set) => HoldCameras::list(set.iter().map(|&i| cam(i))).unwrap(),
                };
                let missing_camera = cams
                    .as_ref()
                    .is_some_and(|set| set.iter().any(|&c| !m.segs.values().any(|s| s.cam == c)));
                let res = node
                    .create_hold(
                        hc,
                        start,
                        end,
                        format!("CASE-{n}"),
                        "subpoena".into(),
                        "legal@test",
                        *future_cameras,
                    )
                    .await;
                if missing_camera && !future_cameras {
                    prop_assert!(
                        matches!(res, Err(ServerError::NotFound(_))),
                        "step {n}: hold on a camera without footage must be refused, got {res:?}"
                    );
                } else {
                    let (hold, _) = res
                        .map_err(|e| TestCaseError::fail(format!("step {n}: create_hold: {e}")))?;
                    m.holds.push(MHold {
                        id: hold.id,
                        cams: cams.clone(),
                        start,
                        end,
                        released: false,
                    });
                }
            }
            Step::ReleaseHold { idx } => {
                if m.holds.is_empty() {
                    let id = HoldId::from_bytes([*idx as u8; 16]);
                    let res = node
                        .release_hold(&id, "done".into(), "supervisor@test")
                        .await;
                    prop_assert!(
                        matches!(res, Err(ServerError::NotFound(_))),
                        "step {n}: {res:?}"
                    );
                } else {
                    let i = idx % m.holds.len();
                    let id = m.holds[i].id;
                    let res = node
                        .release_hold(&id, "case closed".into(), "supervisor@test")
                        .await;
                    if m.holds[i].released {
                        prop_assert!(
                            matches!(res, Err(ServerError::FailedPrecondition(_))),
                            "step {n}: second release must be refused, got {res:?}"
                        );
                    } else {
                        res.map_err(|e| TestCaseError::fail(format!("step {n}: release: {e}")))?;
                        m.holds[i].released = true;
                    }
                }
            }
            Step::AdvanceClock { secs } => {
                clock.advance(Duration::from_secs(*secs));
                m.now_ns += *secs as i64 * NS;
            }
            Step::Sweep => {
                bump(&STATS.sweeps, 1);
                let report = node
                    .sweep(false)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {n}: sweep: {e}")))?;
                prop_assert!(
                    !report.stopped_by_fence,
                    "step {n}: sweep stopped by the fence"
                );
                let now = m.now();
                let mut seen = BTreeSet::new();
                for d in &report.deleted {
                    prop_assert!(
                        seen.insert(d.segment_id),
                        "step {n}: {} deleted twice",
                        d.segment_id
                    );
                    let Some(s) = m.segs.get(&d.segment_id) else {
                        return Err(TestCaseError::fail(format!(
                            "step {n}: sweep deleted unknown segment {}",
                            d.segment_id
                        )));
                    };
                    // Invariant 3: held footage is never deleted.
                    let holder = m.holds.iter().find(|h| h.covers(s));
                    prop_assert!(
                        holder.is_none(),
                        "step {n}: HELD segment {} ({} {}) deleted; covered by hold {:?}",
                        d.segment_id,
                        CAMS[s.cam],
                        s.range,
                        holder
                    );
                    // Never before its expiry.
                    prop_assert!(
                        m.expired(s),
                        "step {n}: segment {} ({} {}) deleted at {now} before its expiry {:?} (core said {})",
                        d.segment_id,
                        CAMS[s.cam],
                        s.range,
                        m.expiry(s),
                        d.expired_at
                    );
                    prop_assert!(d.expired_at <= now);
                    prop_assert_eq!(d.camera.as_str(), CAMS[s.cam]);
                    prop_assert_eq!(d.range, s.range);
                    let gov = m.governing(s.cam).unwrap();
                    prop_assert_eq!(&d.policy_scope, &gov.scope.key().to_string());
                    prop_assert_eq!(d.policy_version, gov.version);
                }
                let mut gone = Vec::new();
                for id in &seen {
                    let s = m.segs.remove(id).unwrap();
                    gone.push((*id, s));
                }
                for (id, s) in &gone {
                    let in_catalog = node
                        .catalog()
                        .get(id)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(in_catalog.is_none(), "step {n}: deleted {id} still indexed");
                    prop_assert!(
                        !object_file(&node, &s.object_key).exists(),
                        "step {n}: deleted {id}: object still in the store directory"
                    );
                }
                bump(&STATS.deleted, gone.len() as u64);
                bump(&STATS.kept_by_hold, report.kept_by_hold);
                // Invariant 4 and the ceiling, for what remains.
                let exact = m.expiry_exact();
                if !exact {
                    bump(&STATS.partial_sweeps, 1);
                }
                let mut expired_held = 0u64;
                for (id, s) in &m.segs {
                    let held = m.held(s);
                    if held {
                        if m.expired(s) {
                            expired_held += 1;
                        }
                        continue;
                    }
                    let by_policy_alone = m
                        .governing(s.cam)
                        .is_some_and(|p| plus_secs(s.range.end(), p.policy.retain_for_secs) <= now);
                    if by_policy_alone && m.binding_bound(s).is_some_and(|b| b > now) {
                        bump(&STATS.floor_bindings_used, 1);
                    }
                    if exact && m.expired(s) {
                        let indexed = node
                            .catalog()
                            .get(id)
                            .ok()
                            .flatten()
                            .and_then(|r| r.expires_at);
                        prop_assert!(
                            false,
                            "step {n}: expired unheld segment {id} ({} {}) remains at {now}; \
                             model expiry {:?}, catalog expires_at {:?}, policy in force {:?}",
                            CAMS[s.cam],
                            s.range,
                            m.expiry(s).map(|t| t.to_string()),
                            indexed.map(|t| t.to_string()),
                            node.resolve_policy(&cam(s.cam))
                        );
                    }
                    if let Some(c) = m.governing(s.cam).and_then(|p| p.policy.ceiling_secs) {
                        let past = plus_secs(s.range.end(), c) <= now;
                        let floor_binds = m.binding_bound(s).is_some_and(|b| b > now);
                        prop_assert!(
                            !past || floor_binds,
                            "step {n}: unheld segment {id} ({} {}) kept past end + ceiling ({c} s) at {now}",
                            CAMS[s.cam],
                            s.range
                        );
                    }
                }
                if exact {
                    prop_assert_eq!(
                        report.kept_by_hold,
                        expired_held,
                        "step {}: kept_by_hold",
                        n
                    );
                }
                check_all_readable(&node, &m).await?;
            }
            Step::Restart => {
                bump(&STATS.restarts, 1);
                drop(node);
                node = open(&cfg, &clock).await?;
                check_all_readable(&node, &m).await?;
            }
        }
        check_state(&node, &m, &mut observed_locks).await?;
    }
    check_all_readable(&node, &m).await?;
    drop(node);
    Ok(())
}

fn print_stats(configured: u32) {
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "retention_model: {} cases ran and passed (configured {configured}); {} steps, {} sweeps ({} judged partially), \
         {} deletions, {} kept by hold, {} policies set, {} refused, {} times an unheld segment was kept only by an outlived locked floor, {} restarts",
        g(&STATS.cases),
        g(&STATS.steps),
        g(&STATS.sweeps),
        g(&STATS.partial_sweeps),
        g(&STATS.deleted),
        g(&STATS.kept_by_hold),
        g(&STATS.policies_set),
        g(&STATS.policies_refused),
        g(&STATS.floor_bindings_used),
        g(&STATS.restarts),
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    })]

    #[test]
    fn retention_matches_model(steps in history()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_case(steps))?;
        // Proptest stops at the first failure, so this count reaches the
        // configured number only when every case passed.
        let passed = STATS.cases.fetch_add(1, Ordering::Relaxed) + 1;
        if passed == u64::from(cases()) {
            print_stats(cases());
        }
    }
}

/// Histories that once failed, replayed on every run.
#[test]
fn retention_regressions() {
    RECORD.with(|r| r.set(false));
    let histories = vec![
        // Footage whose expiry is clamped to the policy's effective time (the
        // grace rule) must go at exactly that instant. Failed once against a
        // working-tree state of the server; passes since.
        vec![
            Step::SetPolicy {
                scope: None,
                retain: 1,
                floor: Some(1),
                ceiling: None,
                locked: false,
            },
            Step::Ingest {
                cam: 0,
                back_secs: 290,
                dur_secs: 1,
            },
            Step::Ingest {
                cam: 0,
                back_secs: 0,
                dur_secs: 1,
            },
            Step::Sweep,
        ],
        // A recorder re-sends a segment the sweeper already deleted; the
        // second deletion, at the same clock instant, must not fail the sweep
        // (its deletion record name must not collide with the first one's).
        vec![
            Step::SetPolicy {
                scope: None,
                retain: 1,
                floor: None,
                ceiling: None,
                locked: false,
            },
            Step::Ingest {
                cam: 0,
                back_secs: 100,
                dur_secs: 1,
            },
            Step::Sweep,
            Step::Reingest { idx: 0 },
            Step::Sweep,
        ],
    ];
    let mut failures = Vec::new();
    for (i, steps) in histories.into_iter().enumerate() {
        for attempt in 0..5 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(run_case(steps.clone())) {
                failures.push(format!("regression history {i}, attempt {attempt}: {e}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
