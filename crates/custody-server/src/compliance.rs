//! Compliance reports: what the store itself holds, judged against the
//! policies and holds as of an instant (invariants 3 and 4).
//!
//! The scan lists `segments/` (or one camera's prefix), parses every key with
//! the store layout, authenticates every header (deep mode: every chunk and
//! the footer digest too) with bounded concurrency, and compares what it found
//! with the catalog, so objects the index lost and index entries whose object
//! is gone are both reported. The pure judgement of one segment lives in
//! [`Judge`] and [`kind_of`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use custody_core::{
    CameraId, Hold, HoldId, HoldIndex, PolicyBook, SegmentId, TimeRange, Timestamp,
};
use custody_crypto::StreamDecryptor;
use custody_store::{layout, ObjectInfo, ObjectPath, SegmentKey};
use futures::StreamExt;
use serde::Serialize;

use crate::{Node, ServerError};

/// What is wrong with a piece of footage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Unheld footage past its expiry beyond the sweep bound.
    ExpiredUnheld,
    /// As above, for an object the index lost (the sweeper cannot see it).
    ExpiredUnindexed,
    /// Unheld footage past its expiry and past its policy's privacy ceiling.
    PastCeiling,
    /// Held footage whose object is missing.
    HeldMissing,
    /// Held footage whose object fails authentication.
    HeldCorrupt,
    /// Unheld footage whose object fails authentication.
    Corrupt,
    /// A segment object without an index entry.
    UnindexedObject,
    /// An index entry without an object.
    MissingObject,
    /// An object under `segments/` whose key is not a segment key.
    ForeignObject,
}

impl ViolationKind {
    /// The kind's name in JSON and HTML (`expired_unheld`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::ExpiredUnheld => "expired_unheld",
            ViolationKind::ExpiredUnindexed => "expired_unindexed",
            ViolationKind::PastCeiling => "past_ceiling",
            ViolationKind::HeldMissing => "held_missing",
            ViolationKind::HeldCorrupt => "held_corrupt",
            ViolationKind::Corrupt => "corrupt",
            ViolationKind::UnindexedObject => "unindexed_object",
            ViolationKind::MissingObject => "missing_object",
            ViolationKind::ForeignObject => "foreign_object",
        }
    }
}

/// One segment a violation concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationSegment {
    /// Segment id (empty for a foreign object).
    pub segment_id: String,
    /// Stream name (empty for a foreign object).
    pub stream: String,
    /// Time range, when known.
    pub range: Option<TimeRange>,
    /// Object key in the store.
    pub object_key: String,
    /// Expiry under the current policies (`None`: kept forever or unknown).
    pub expires_at: Option<Timestamp>,
    /// Active holds covering it.
    pub hold_ids: Vec<String>,
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What is wrong.
    pub kind: ViolationKind,
    /// The camera (empty for a foreign object).
    pub camera: String,
    /// What exactly is wrong, in words.
    pub detail: String,
    /// The segments concerned.
    pub segments: Vec<ViolationSegment>,
}

/// One camera's footage as of the report's instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CameraCompliance {
    /// The camera.
    pub camera: String,
    /// The policy in force, in words (empty: none, footage is kept forever).
    pub policy: String,
    /// Segment objects in the store.
    pub segments: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Of those, segments an active hold covers.
    pub held_segments: u64,
    /// Their stored bytes.
    pub held_bytes: u64,
    /// The earliest expiry after the report's instant among unheld footage.
    pub next_expiry: Option<Timestamp>,
    /// Recording gaps: (stream, hole) longer than the gap tolerance.
    pub gaps: Vec<(String, TimeRange)>,
}

/// The audit chain's verification result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditStatus {
    /// Whether the chain was verified intact.
    pub verified: bool,
    /// What was checked, or why not.
    pub detail: String,
}

/// Progress of a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Objects examined.
    pub scanned: u64,
    /// Objects to examine.
    pub total: u64,
    /// Stored bytes read so far.
    pub bytes_read: u64,
}

/// A compliance report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComplianceReport {
    /// When the report was made.
    pub generated_at: Timestamp,
    /// The instant it judges against.
    pub as_of: Timestamp,
    /// The store scanned.
    pub store_url: String,
    /// Whether every object's bytes were authenticated (not only headers).
    pub deep: bool,
    /// The cameras asked for (empty: all).
    pub requested_cameras: Vec<String>,
    /// Objects listed and examined.
    pub objects_scanned: u64,
    /// Index entries compared.
    pub index_entries: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Sweep interval plus hold fence, in seconds.
    pub sweep_bound_secs: u64,
    /// Gap tolerance, in seconds.
    pub gap_tolerance_secs: u64,
    /// Per camera, by camera id.
    pub cameras: Vec<CameraCompliance>,
    /// Violations, by camera, kind and time.
    pub violations: Vec<Violation>,
    /// The audit chain.
    pub audit: AuditStatus,
}

/// How a segment stands against policies and holds at an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Holds active at the instant that cover it.
    pub hold_ids: Vec<HoldId>,
    /// Its expiry under the current policies.
    pub expires_at: Option<Timestamp>,
    /// Unheld, and past expiry (or its last hold's release) plus the sweep bound.
    pub overdue: bool,
    /// Overdue, and also past end + ceiling (plus the bound).
    pub past_ceiling: bool,
}

/// What the scan found of a segment's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Object present and authentic; `indexed` says if the catalog has it.
    Intact { indexed: bool },
    /// Object present but fails authentication (or disagrees with the index).
    Corrupt,
    /// Index entry without an object.
    Missing,
}

/// The violation, if any, of a segment: one kind per segment, the most
/// specific one.
pub(crate) fn kind_of(presence: Presence, s: &Standing) -> Option<ViolationKind> {
    let held = !s.hold_ids.is_empty();
    match presence {
        Presence::Missing if held => Some(ViolationKind::HeldMissing),
        Presence::Missing => Some(ViolationKind::MissingObject),
        Presence::Corrupt if held => Some(ViolationKind::HeldCorrupt),
        Presence::Corrupt => Some(ViolationKind::Corrupt),
        Presence::Intact { .. } if s.past_ceiling => Some(ViolationKind::PastCeiling),
        Presence::Intact { indexed: true } if s.overdue => Some(ViolationKind::ExpiredUnheld),
        Presence::Intact { indexed: false } if s.overdue => Some(ViolationKind::ExpiredUnindexed),
        Presence::Intact { indexed: false } => Some(ViolationKind::UnindexedObject),
        Presence::Intact { indexed: true } => None,
    }
}

fn plus_secs(t: Timestamp, secs: u64) -> Timestamp {
    t.saturating_add_nanos(
        i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000_000),
    )
}

/// Judges segments against a snapshot of policies and holds at `as_of`.
pub(crate) struct Judge {
    book: PolicyBook,
    grace: Duration,
    bound_secs: u64,
    as_of: Timestamp,
    active: HoldIndex,
    /// Holds released at or before `as_of`, with their release time.
    released: Vec<(Hold, Timestamp)>,
}

impl Judge {
    /// A judge over `holds` (with their releases) at `as_of`.
    pub(crate) fn new(
        book: PolicyBook,
        grace: Duration,
        bound_secs: u64,
        as_of: Timestamp,
        holds: &[crate::HoldState],
    ) -> Judge {
        let active: Vec<&Hold> = holds
            .iter()
            .filter(|s| s.release.as_ref().is_none_or(|r| r.released_at > as_of))
            .map(|s| &s.hold)
            .collect();
        let released = holds
            .iter()
            .filter_map(|s| {
                let r = s.release.as_ref().filter(|r| r.released_at <= as_of)?;
                Some((s.hold.clone(), r.released_at))
            })
            .collect();
        Judge {
            book,
            grace,
            bound_secs,
            as_of,
            active: HoldIndex::build(active),
            released,
        }
    }

    /// The policy in force for `camera`, in words (empty: none).
    pub(crate) fn policy_text(&self, camera: &CameraId) -> String {
        let Some(v) = self.book.resolve(camera) else {
            return String::new();
        };
        let p = &v.policy;
        let mut s = format!(
            "{} v{}: retain {} s",
            v.scope.key(),
            v.version,
            p.retain_for_secs
        );
        if let Some(f) = p.floor_secs {
            s.push_str(&format!(", floor {f} s"));
        }
        if let Some(c) = p.ceiling_secs {
            s.push_str(&format!(", ceiling {c} s"));
        }
        if p.locked {
            s.push_str(", locked");
        }
        s
    }

    /// How a segment of `camera` over `range` stands.
    pub(crate) fn standing(&self, camera: &CameraId, range: &TimeRange) -> Standing {
        let hold_ids = self.active.covering_all(camera, range);
        let expires_at = self
            .book
            .expiry(camera, range.end(), self.grace)
            .map(|e| e.at);
        if !hold_ids.is_empty() {
            return Standing {
                hold_ids,
                expires_at,
                ..Standing::default()
            };
        }
        // A hold released before as_of kept it until its release.
        let released_at = self
            .released
            .iter()
            .filter(|(h, _)| h.covers(camera, range))
            .map(|(_, at)| *at)
            .max();
        let due = |at: Timestamp| {
            let from = released_at.map_or(at, |r| r.max(at));
            plus_secs(from, self.bound_secs) < self.as_of
        };
        let overdue = expires_at.is_some_and(due);
        let ceiling = self
            .book
            .resolve(camera)
            .and_then(|v| v.policy.ceiling_secs);
        let past_ceiling = overdue && ceiling.is_some_and(|c| due(plus_secs(range.end(), c)));
        Standing {
            hold_ids,
            expires_at,
            overdue,
            past_ceiling,
        }
    }
}

/// What the index says about a segment, kept small for million-segment scans.
struct IndexEntry {
    size: u64,
    sha256: [u8; 32],
    range: TimeRange,
}

/// The result of examining one listed object.
struct Examined {
    info: ObjectInfo,
    key: Option<SegmentKey>,
    /// The range its authenticated header states, when the header opened.
    range: Option<TimeRange>,
    /// `Ok(plaintext length, footer digest if deep)` or why it failed.
    check: Result<(u64, Option<[u8; 32]>), String>,
    bytes_read: u64,
}

/// What examined objects are compared with: the index, the uploads in
/// flight, and the judgement of policies and holds.
struct Baseline {
    index: HashMap<SegmentId, IndexEntry>,
    in_flight: HashSet<SegmentId>,
    judge: Judge,
}

/// Accumulates the report while results come in.
#[derive(Default)]
struct Tally {
    cameras: BTreeMap<String, CameraCompliance>,
    spans: HashMap<(String, String), Vec<TimeRange>>,
    violations: Vec<Violation>,
    /// Segments whose object the store listing holds.
    seen: HashSet<SegmentId>,
}

impl Tally {
    /// The entry of `camera`, created empty on first use.
    fn camera(&mut self, camera: &str) -> &mut CameraCompliance {
        self.cameras
            .entry(camera.to_string())
            .or_insert_with(|| CameraCompliance {
                camera: camera.to_string(),
                ..CameraCompliance::default()
            })
    }

    /// Counts one examined object: its camera's totals, its span for the
    /// gap search, and its violation if any.
    fn add(&mut self, ex: Examined, baseline: &Baseline) {
        let object_key = ex.info.key.to_string();
        let Some(key) = ex.key else {
            self.violations.push(foreign_object(object_key));
            return;
        };
        self.seen.insert(key.segment_id);
        if baseline.in_flight.contains(&key.segment_id) {
            return;
        }
        let judge = &baseline.judge;
        let entry = baseline.index.get(&key.segment_id);
        // The range from the authenticated header; for an object whose
        // header does not open, what the index says, else its start.
        let range = ex
            .range
            .or(entry.map(|e| e.range))
            .unwrap_or_else(|| point_range(key.start));
        // Compare with the index: the size (and in deep mode the digest) must agree.
        let check = ex.check.and_then(|(len, sha)| match entry {
            Some(e) if e.size != len => Err(format!(
                "object holds {len} bytes, the index says {}",
                e.size
            )),
            Some(e) if sha.is_some_and(|s| s != e.sha256) => {
                Err("plaintext digest differs from the index".to_string())
            }
            _ => Ok(()),
        });
        let presence = match &check {
            Ok(()) => Presence::Intact {
                indexed: entry.is_some(),
            },
            Err(_) => Presence::Corrupt,
        };
        let standing = judge.standing(&key.camera, &range);
        let policy = judge.policy_text(&key.camera);
        let cam = self.camera(key.camera.as_str());
        cam.policy = policy;
        cam.segments += 1;
        cam.bytes += ex.info.size;
        if !standing.hold_ids.is_empty() {
            cam.held_segments += 1;
            cam.held_bytes += ex.info.size;
        } else if let Some(at) = standing.expires_at.filter(|&at| at > judge.as_of) {
            cam.next_expiry = Some(cam.next_expiry.map_or(at, |n| n.min(at)));
        }
        self.spans
            .entry((key.camera.to_string(), key.stream.to_string()))
            .or_default()
            .push(range);
        if let Some(kind) = kind_of(presence, &standing) {
            self.violations.push(Violation {
                kind,
                camera: key.camera.to_string(),
                detail: detail_of(kind, &standing, check.as_ref().err().map(String::as_str)),
                segments: vec![segment_of(&key, range, &object_key, &standing)],
            });
        }
    }

    /// Records the recording gaps longer than `tolerance_secs`, per camera
    /// stream, from the spans the store holds.
    fn find_gaps(&mut self, tolerance_secs: u64) {
        let tolerance = i64::try_from(tolerance_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000_000);
        let mut spans: Vec<_> = std::mem::take(&mut self.spans).into_iter().collect();
        spans.sort_by(|a, b| a.0.cmp(&b.0));
        for ((camera, stream), mut ranges) in spans {
            ranges.sort_by_key(|r| (r.start(), r.end()));
            let mut covered_to = ranges[0].end();
            let mut gaps = Vec::new();
            for r in &ranges[1..] {
                if r.start().as_nanos().saturating_sub(covered_to.as_nanos()) > tolerance {
                    if let Ok(hole) = TimeRange::new(covered_to, r.start()) {
                        gaps.push((stream.clone(), hole));
                    }
                }
                covered_to = covered_to.max(r.end());
            }
            self.camera(&camera).gaps.extend(gaps);
        }
    }

    /// Names the policy of every camera asked for, so that one without
    /// footage is listed too.
    fn add_requested(&mut self, cameras: &[CameraId], judge: &Judge) {
        for c in cameras {
            let policy = judge.policy_text(c);
            self.camera(c.as_str()).policy = policy;
        }
    }
}

/// The violation of an object under `segments/` whose key is not a segment key.
fn foreign_object(object_key: String) -> Violation {
    Violation {
        kind: ViolationKind::ForeignObject,
        camera: String::new(),
        detail: detail_of(ViolationKind::ForeignObject, &Standing::default(), None),
        segments: vec![ViolationSegment {
            segment_id: String::new(),
            stream: String::new(),
            range: None,
            object_key,
            expires_at: None,
            hold_ids: Vec::new(),
        }],
    }
}

/// Orders violations by camera, kind, start and object key.
fn sort_violations(violations: &mut [Violation]) {
    violations.sort_by(|a, b| {
        let start = |v: &Violation| v.segments.first().and_then(|s| s.range.map(|r| r.start()));
        (&a.camera, a.kind, start(a), &a.segments[0].object_key).cmp(&(
            &b.camera,
            b.kind,
            start(b),
            &b.segments[0].object_key,
        ))
    });
}

fn segment_of(
    key: &SegmentKey,
    range: TimeRange,
    object_key: &str,
    s: &Standing,
) -> ViolationSegment {
    ViolationSegment {
        segment_id: key.segment_id.to_string(),
        stream: key.stream.to_string(),
        range: Some(range),
        object_key: object_key.to_string(),
        expires_at: s.expires_at,
        hold_ids: s.hold_ids.iter().map(ToString::to_string).collect(),
    }
}

/// A one-nanosecond range at `t`: where a segment is known only by its start.
fn point_range(t: Timestamp) -> TimeRange {
    let start = t.as_nanos().min(i64::MAX - 1);
    TimeRange::new(
        Timestamp::from_nanos(start),
        Timestamp::from_nanos(start + 1),
    )
    .expect("start < start + 1 for start < i64::MAX")
}

fn detail_of(kind: ViolationKind, s: &Standing, why: Option<&str>) -> String {
    let exp = s
        .expires_at
        .map_or_else(|| "never".to_string(), |t| t.to_string());
    match kind {
        ViolationKind::ExpiredUnheld => format!("unheld, expired at {exp}, still stored"),
        ViolationKind::ExpiredUnindexed => {
            format!("unheld, expired at {exp}, still stored; the index lost it, so the sweeper cannot delete it")
        }
        ViolationKind::PastCeiling => {
            format!("unheld, expired at {exp}, kept past the privacy ceiling of its policy")
        }
        ViolationKind::HeldMissing => "held, but its object is missing from the store".into(),
        ViolationKind::HeldCorrupt => format!(
            "held, but its object fails authentication: {}",
            why.unwrap_or("")
        ),
        ViolationKind::Corrupt => format!("object fails authentication: {}", why.unwrap_or("")),
        ViolationKind::UnindexedObject => "segment object without an index entry".into(),
        ViolationKind::MissingObject => "index entry without an object in the store".into(),
        ViolationKind::ForeignObject => {
            "object under segments/ whose key is not a segment key".into()
        }
    }
}

impl Node {
    /// The audit chain's verification result for reports: every object
    /// under `audit/` in the store, verified as `custody audit verify` does
    /// (after flushing records still in flight).
    pub async fn audit_chain_status(&self) -> AuditStatus {
        let objects = match self.audit().flush().await {
            Ok(()) => crate::audit::read_objects(&self.store).await,
            Err(e) => Err(e),
        };
        let objects = match objects {
            Ok(o) => o,
            Err(e) => {
                return AuditStatus {
                    verified: false,
                    detail: format!("not verified: the audit chain could not be read: {e}"),
                }
            }
        };
        let report = custody_audit::verify(&objects, &self.keyring, None);
        if report.ok() {
            AuditStatus {
                verified: true,
                detail: format!(
                    "intact: {} records in {} objects, head {} (sha256 {})",
                    report.records, report.batches, report.last_seq, report.last_digest
                ),
            }
        } else {
            let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
            AuditStatus {
                verified: false,
                detail: format!("{} problem(s): {}", problems.len(), problems.join("; ")),
            }
        }
    }

    /// Scans the store (one prefix per camera in `cameras`, or all of
    /// `segments/`) and reports footage, holds, expiries, violations and
    /// recording gaps as of `as_of` (default: now). `progress` is called as
    /// objects are examined.
    pub async fn compliance_report(
        &self,
        cameras: &[CameraId],
        as_of: Option<Timestamp>,
        deep: bool,
        progress: &(dyn Fn(ScanProgress) + Send + Sync),
    ) -> Result<ComplianceReport, ServerError> {
        let generated_at = self.clock.now();
        let judge = self.judge_at(as_of.unwrap_or(generated_at)).await;
        // The store listing: the truth.
        let objects = self.list_segment_objects(cameras).await?;
        let baseline = Baseline {
            index: self.load_index(cameras)?,
            in_flight: self.uploads_in_flight()?,
            judge,
        };
        let mut tally = Tally::default();
        let done = self
            .examine_objects(objects, deep, progress, &baseline, &mut tally)
            .await?;
        self.find_missing_objects(&baseline, &mut tally)?;
        tally.find_gaps(self.compliance.gap_tolerance_secs);
        tally.add_requested(cameras, &baseline.judge);
        Ok(self
            .assemble(cameras, generated_at, deep, &baseline, done, tally)
            .await)
    }

    /// The judge of the current policies and the holds at `as_of`, with the
    /// sweep bound (sweep interval plus hold fence).
    async fn judge_at(&self, as_of: Timestamp) -> Judge {
        let rc = &self.retention.config;
        let bound_secs = rc.sweep_interval_secs.saturating_add(rc.hold_fence_secs);
        let book = self
            .retention
            .book
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Judge::new(
            book,
            rc.policy_grace(),
            bound_secs,
            as_of,
            &self.holds(true).await,
        )
    }

    /// Lists the segment objects in the store: one prefix per camera in
    /// `cameras`, or all of `segments/`.
    async fn list_segment_objects(
        &self,
        cameras: &[CameraId],
    ) -> Result<Vec<ObjectInfo>, ServerError> {
        let prefixes: Vec<ObjectPath> = if cameras.is_empty() {
            vec![layout::segments_prefix()]
        } else {
            cameras.iter().map(layout::camera_prefix).collect()
        };
        let mut objects = Vec::new();
        for p in &prefixes {
            let mut list = self.store.list(p);
            while let Some(obj) = list.next().await {
                objects.push(obj?);
            }
        }
        Ok(objects)
    }

    /// What the index says about the segments of `cameras` (or of all), to
    /// compare the listing with.
    fn load_index(
        &self,
        cameras: &[CameraId],
    ) -> Result<HashMap<SegmentId, IndexEntry>, ServerError> {
        let mut index: HashMap<SegmentId, IndexEntry> = HashMap::new();
        let mut keep = |r: custody_catalog::SegmentRecord| {
            index.insert(
                r.segment_id,
                IndexEntry {
                    size: r.size,
                    sha256: r.sha256,
                    range: r.range,
                },
            );
            true
        };
        if cameras.is_empty() {
            self.catalog.for_each_segment(&mut keep)?;
        } else {
            for c in cameras {
                for r in self.catalog.camera_segments(c)? {
                    keep(r);
                }
            }
        }
        Ok(index)
    }

    /// Segments with an upload in flight (or interrupted, resolved at the
    /// next start): an object and no index entry yet is not a violation.
    fn uploads_in_flight(&self) -> Result<HashSet<SegmentId>, ServerError> {
        Ok(self
            .catalog
            .pending()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Examines every listed object with bounded concurrency, counting each
    /// result into `tally` and calling `progress` on the way.
    async fn examine_objects(
        &self,
        objects: Vec<ObjectInfo>,
        deep: bool,
        progress: &(dyn Fn(ScanProgress) + Send + Sync),
        baseline: &Baseline,
        tally: &mut Tally,
    ) -> Result<ScanProgress, ServerError> {
        let total = objects.len() as u64;
        let mut done = ScanProgress {
            total,
            ..ScanProgress::default()
        };
        progress(done);
        let concurrency = self.compliance.scan_concurrency.max(1);
        // Each object on its own task, so header and chunk authentication
        // spread over the runtime's threads.
        let mut results = futures::stream::iter(objects)
            .map(|info| {
                let node = self.clone();
                tokio::spawn(async move { node.examine(info, deep).await })
            })
            .buffer_unordered(concurrency);
        let mut last_report = std::time::Instant::now();
        while let Some(ex) = results.next().await {
            let ex = ex.map_err(|e| ServerError::Internal(format!("scan task: {e}")))?;
            done.scanned += 1;
            done.bytes_read += ex.bytes_read;
            if last_report.elapsed() >= PROGRESS_EVERY || done.scanned == total {
                progress(done);
                last_report = std::time::Instant::now();
            }
            tally.add(ex, baseline);
        }
        Ok(done)
    }

    /// Reports the index entries whose object the listing did not hold.
    fn find_missing_objects(
        &self,
        baseline: &Baseline,
        tally: &mut Tally,
    ) -> Result<(), ServerError> {
        let judge = &baseline.judge;
        let seen = std::mem::take(&mut tally.seen);
        for id in baseline.index.keys().filter(|id| !seen.contains(id)) {
            let Some(rec) = self.catalog.get(id)? else {
                continue;
            };
            let key = SegmentKey {
                camera: rec.camera.clone(),
                stream: rec.stream.clone(),
                start: rec.range.start(),
                sequence: rec.sequence,
                segment_id: rec.segment_id,
            };
            let standing = judge.standing(&rec.camera, &rec.range);
            let policy = judge.policy_text(&rec.camera);
            tally.camera(rec.camera.as_str()).policy = policy;
            if let Some(kind) = kind_of(Presence::Missing, &standing) {
                tally.violations.push(Violation {
                    kind,
                    camera: rec.camera.to_string(),
                    detail: detail_of(kind, &standing, None),
                    segments: vec![segment_of(&key, rec.range, &rec.object_key, &standing)],
                });
            }
        }
        Ok(())
    }

    /// The report from the finished tally, with the audit chain's status.
    async fn assemble(
        &self,
        cameras: &[CameraId],
        generated_at: Timestamp,
        deep: bool,
        baseline: &Baseline,
        done: ScanProgress,
        tally: Tally,
    ) -> ComplianceReport {
        let mut violations = tally.violations;
        sort_violations(&mut violations);
        ComplianceReport {
            generated_at,
            as_of: baseline.judge.as_of,
            store_url: self.store.url().to_string(),
            deep,
            requested_cameras: cameras.iter().map(ToString::to_string).collect(),
            objects_scanned: done.scanned,
            index_entries: baseline.index.len() as u64,
            bytes_read: done.bytes_read,
            sweep_bound_secs: baseline.judge.bound_secs,
            gap_tolerance_secs: self.compliance.gap_tolerance_secs,
            cameras: tally.cameras.into_values().collect(),
            violations,
            audit: self.audit_chain_status().await,
        }
    }

    /// Authenticates one listed object: its header (against its key), and in
    /// deep mode every chunk and the footer digest.
    async fn examine(&self, info: ObjectInfo, deep: bool) -> Examined {
        let Some(key) = SegmentKey::parse(&info.key) else {
            return Examined {
                info,
                key: None,
                range: None,
                check: Ok((0, None)),
                bytes_read: 0,
            };
        };
        let mut bytes_read = 0;
        let mut range = None;
        let check = self
            .check_object(&info, &key, deep, &mut bytes_read, &mut range)
            .await
            .map_err(|e| e.to_string());
        Examined {
            info,
            key: Some(key),
            range,
            check,
            bytes_read,
        }
    }

    async fn check_object(
        &self,
        info: &ObjectInfo,
        key: &SegmentKey,
        deep: bool,
        bytes_read: &mut u64,
        range: &mut Option<TimeRange>,
    ) -> Result<(u64, Option<[u8; 32]>), ServerError> {
        let opened = self.open_object_sized(&info.key, info.size).await?;
        *bytes_read += opened.prefix_len();
        opened.check_expected(&key.camera, &key.segment_id)?;
        let meta = opened.meta();
        *range = Some(meta.range);
        if meta.stream != key.stream
            || meta.range.start() != key.start
            || meta.sequence != key.sequence
        {
            return Err(ServerError::DataLoss(
                "header does not match the object key".into(),
            ));
        }
        let len = opened.plaintext_len();
        if !deep {
            return Ok((len, None));
        }
        // Whole pieces by range reads: a local store streams in 8 KiB
        // blocking reads otherwise.
        let mut at = opened.prefix_len();
        let mut dec = StreamDecryptor::new(opened);
        while at < info.size {
            let end = at.saturating_add(DEEP_READ_PIECE).min(info.size);
            let piece = self.store.get_range(&info.key, at..end).await?;
            *bytes_read += piece.len() as u64;
            // Authenticating megabytes is CPU work: off the runtime threads.
            dec = tokio::task::spawn_blocking(move || dec.push(&piece).map(|_| dec))
                .await
                .map_err(|e| ServerError::Internal(format!("deep-scan task: {e}")))??;
            at = end;
        }
        let footer = dec.finish()?;
        Ok((footer.plaintext_len, Some(footer.sha256)))
    }
}

/// Bytes read at once per object in deep mode.
const DEEP_READ_PIECE: u64 = 4 * 1024 * 1024;

/// How often a scan reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use custody_core::{HoldCameras, Policy, PolicyScope, PolicyVersion, Release};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn book(ceiling: Option<u64>) -> PolicyBook {
        PolicyBook::from_history(vec![PolicyVersion {
            scope: PolicyScope::Default,
            version: 1,
            policy: Policy {
                retain_for_secs: 100,
                floor_secs: None,
                ceiling_secs: ceiling,
                locked: false,
            },
            effective_at: t(0),
            set_by: "admin".into(),
        }])
        .unwrap()
    }

    fn hold(start: i64, end: i64) -> Hold {
        Hold {
            id: HoldId::from_bytes([7; 16]),
            cameras: HoldCameras::All,
            start: t(start),
            end: Some(t(end)),
            case_id: "C-1".into(),
            reason: "r".into(),
            placed_by: "inv".into(),
            placed_at: t(0),
        }
    }

    #[test]
    fn overdue_only_past_expiry_plus_bound() {
        let cam = CameraId::parse("cam-1").unwrap();
        let seg = TimeRange::new(t(1000), t(1010)).unwrap();
        // Expires at 1110; bound 30: overdue only after 1140.
        let at = |as_of| Judge::new(book(None), Duration::ZERO, 30, t(as_of), &[]);
        assert!(!at(1140).standing(&cam, &seg).overdue);
        let s = at(1141).standing(&cam, &seg);
        assert!(s.overdue && !s.past_ceiling);
        assert_eq!(s.expires_at, Some(t(1110)));
        assert_eq!(
            kind_of(Presence::Intact { indexed: true }, &s),
            Some(ViolationKind::ExpiredUnheld)
        );
        assert_eq!(
            kind_of(Presence::Intact { indexed: false }, &s),
            Some(ViolationKind::ExpiredUnindexed)
        );
        let fresh = at(1100).standing(&cam, &seg);
        assert_eq!(kind_of(Presence::Intact { indexed: true }, &fresh), None);
        assert_eq!(
            kind_of(Presence::Intact { indexed: false }, &fresh),
            Some(ViolationKind::UnindexedObject)
        );
        assert_eq!(
            kind_of(Presence::Missing, &fresh),
            Some(ViolationKind::MissingObject)
        );
    }

    #[test]
    fn ceiling_and_holds() {
        let cam = CameraId::parse("cam-1").unwrap();
        let seg = TimeRange::new(t(1000), t(1010)).unwrap();
        let s = Judge::new(book(Some(100)), Duration::ZERO, 30, t(2000), &[]).standing(&cam, &seg);
        assert_eq!(
            kind_of(Presence::Intact { indexed: true }, &s),
            Some(ViolationKind::PastCeiling)
        );
        // An active hold: nothing overdue; missing or corrupt is a held violation.
        let active = crate::HoldState {
            hold: hold(1005, 1006),
            release: None,
        };
        let j = Judge::new(
            book(None),
            Duration::ZERO,
            30,
            t(5000),
            std::slice::from_ref(&active),
        );
        let s = j.standing(&cam, &seg);
        assert!(!s.overdue && s.hold_ids.len() == 1);
        assert_eq!(kind_of(Presence::Intact { indexed: true }, &s), None);
        assert_eq!(
            kind_of(Presence::Missing, &s),
            Some(ViolationKind::HeldMissing)
        );
        assert_eq!(
            kind_of(Presence::Corrupt, &s),
            Some(ViolationKind::HeldCorrupt)
        );
        // Released at 4000: due from max(expiry, release) + bound = 4030.
        let released = crate::HoldState {
            release: Some(Release {
                hold_id: active.hold.id,
                released_by: "sup".into(),
                reason: "done".into(),
                released_at: t(4000),
            }),
            ..active
        };
        let at = |as_of| {
            Judge::new(
                book(None),
                Duration::ZERO,
                30,
                t(as_of),
                std::slice::from_ref(&released),
            )
        };
        assert!(at(3990).standing(&cam, &seg).hold_ids.len() == 1);
        assert!(!at(4030).standing(&cam, &seg).overdue);
        assert!(at(4031).standing(&cam, &seg).overdue);
    }
}
