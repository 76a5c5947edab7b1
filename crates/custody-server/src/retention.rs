//! Retention enforcement: policies, legal holds, the sweeper and the hold fence.
//!
//! Policies, holds and releases are sealed, create-only records in the store
//! (`policies/`, `holds/`, `releases/`), mirrored in the catalog. The sweeper
//! reads the holds from the store before deleting, and deletes only while
//! that view is younger than the fence F. The in-memory view only grows
//! (holds and releases are never removed from it), and a hold is added to it
//! under a write lock that every deletion holds for reading across its
//! check-and-delete, so once `create_hold` returns no deletion on this node
//! can miss the hold.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use custody_catalog::SegmentRecord;
use custody_core::{
    CameraId, ChangeEffect, Hold, HoldCameras, HoldId, HoldIndex, Policy, PolicyBook, PolicyScope,
    PolicyVersion, Release, ScopeKey, SegmentId, TimeRange, Timestamp,
};
use custody_crypto::{open_record, seal_record};
use custody_store::ObjectPath;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{Node, RetentionConfig, ServerError};

const POLICIES: &str = "policies";
const HOLDS: &str = "holds";
const RELEASES: &str = "releases";
const DELETIONS: &str = "deletions";
/// Expired segments examined per sweep batch.
const SWEEP_BATCH: usize = 512;
/// Object deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;

/// Holds and releases as this node knows them.
#[derive(Default)]
pub(crate) struct HoldsView {
    holds: BTreeMap<HoldId, Hold>,
    releases: BTreeMap<HoldId, Release>,
    index: HoldIndex,
}

impl HoldsView {
    fn reindex(&mut self) {
        let releases = &self.releases;
        self.index = HoldIndex::build(
            self.holds
                .values()
                .filter(|h| !releases.contains_key(&h.id)),
        );
    }
}

/// Retention state of a node.
pub(crate) struct Retention {
    pub(crate) config: RetentionConfig,
    pub(crate) book: RwLock<PolicyBook>,
    policy_history: Mutex<Vec<PolicyVersion>>,
    pub(crate) holds: tokio::sync::RwLock<HoldsView>,
    known: Mutex<HashSet<String>>,
    /// When the last complete read of the holds from the store started.
    fresh_since: Mutex<Option<Instant>>,
    policy_lock: tokio::sync::Mutex<()>,
}

impl Retention {
    pub(crate) fn new(config: RetentionConfig) -> Retention {
        Retention {
            config,
            book: RwLock::new(PolicyBook::new()),
            policy_history: Mutex::new(Vec::new()),
            holds: tokio::sync::RwLock::new(HoldsView::default()),
            known: Mutex::new(HashSet::new()),
            fresh_since: Mutex::new(None),
            policy_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy book, for reading.
    fn book(&self) -> std::sync::RwLockReadGuard<'_, PolicyBook> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    fn view_is_fresh(&self) -> bool {
        lock(&self.fresh_since).is_some_and(|t| t.elapsed() < self.config.hold_fence())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hold with its release, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    /// The hold.
    pub hold: Hold,
    /// Its release, once released.
    pub release: Option<Release>,
}

/// What a new hold covers right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldCoverage {
    /// Segments covered.
    pub segments: u64,
    /// Plaintext bytes covered.
    pub bytes: u64,
    /// Contiguous covered footage, per camera: (camera, range, segments, bytes).
    pub spans: Vec<(CameraId, TimeRange, u64, u64)>,
    /// Parts of the requested range (up to now) with no footage, per camera.
    pub missing: Vec<(CameraId, TimeRange)>,
}

/// One segment a sweep deleted (or would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// The segment.
    pub segment_id: SegmentId,
    /// Its camera.
    pub camera: CameraId,
    /// Its time range.
    pub range: TimeRange,
    /// Its object key.
    pub object_key: String,
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// When its retention ended.
    pub expired_at: Timestamp,
    /// The policy scope that set the expiry.
    pub policy_scope: String,
    /// The policy version that set the expiry.
    pub policy_version: u64,
    /// When it was deleted.
    pub deleted_at: Timestamp,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Segments deleted (or, in a dry run, that would be).
    pub deleted: Vec<Deletion>,
    /// Expired segments kept because a hold covers them.
    pub kept_by_hold: u64,
    /// True if the sweep stopped early because the hold view went stale and
    /// could not be refreshed.
    pub stopped_by_fence: bool,
}

fn principal_or_default(p: &str) -> String {
    if p.trim().is_empty() {
        "unauthenticated@loopback".to_string()
    } else {
        p.to_string()
    }
}

impl Node {
    /// Loads policies and holds from the catalog mirror, then from the store.
    pub(crate) async fn load_retention(&self) -> Result<(), ServerError> {
        {
            let mut view = self.retention.holds.write().await;
            for (key, bytes) in self.catalog.records()? {
                if let Err(e) = self.apply_record_locked(&key, &bytes, &mut view) {
                    warn!(key, error = %e, "mirrored record unreadable; the store copy will be used");
                }
            }
            view.reindex();
        }
        self.finish_policy_load()?;
        if let Err(e) = self.refresh_retention().await {
            warn!(error = %e, "store unreadable at start: nothing will be deleted until it is");
        }
        Ok(())
    }

    fn finish_policy_load(&self) -> Result<(), ServerError> {
        let history = lock(&self.retention.policy_history).clone();
        let book = PolicyBook::from_history(history).map_err(|e| {
            ServerError::DataLoss(format!("policy history in the store is inconsistent: {e}"))
        })?;
        *self
            .retention
            .book
            .write()
            .unwrap_or_else(|p| p.into_inner()) = book;
        Ok(())
    }

    /// Reads every hold, release and policy record from the store (fetching
    /// only keys not seen before) and marks the view fresh from the moment
    /// the read began. On failure the view stays as stale as it was.
    pub(crate) async fn refresh_retention(&self) -> Result<(), ServerError> {
        let started = Instant::now();
        let mut new_keys = Vec::new();
        for prefix in [POLICIES, HOLDS, RELEASES] {
            let mut list = self.store.list(&ObjectPath::from(prefix));
            while let Some(obj) = list.next().await {
                let key = obj?.key.to_string();
                if !lock(&self.retention.known).contains(&key) {
                    new_keys.push(key);
                }
            }
        }
        let mut new_policies = false;
        if !new_keys.is_empty() {
            let mut fetched = Vec::with_capacity(new_keys.len());
            for key in new_keys {
                let bytes = self.store.get(&ObjectPath::from(key.as_str())).await?;
                fetched.push((key, bytes));
            }
            let mut view = self.retention.holds.write().await;
            for (key, bytes) in fetched {
                let payload_kind = key.split('/').next().unwrap_or_default().to_string();
                // Apply under the write lock we hold.
                let is_new = self.apply_record_locked(&key, &bytes, &mut view)?;
                if is_new {
                    self.catalog.put_record(&key, &bytes)?;
                    new_policies |= payload_kind == POLICIES;
                }
            }
            view.reindex();
        }
        if new_policies {
            self.finish_policy_load()?;
            self.recompute_expiry()?;
        }
        *lock(&self.retention.fresh_since) = Some(started);
        Ok(())
    }

    fn apply_record_locked(
        &self,
        key: &str,
        sealed: &[u8],
        view: &mut HoldsView,
    ) -> Result<bool, ServerError> {
        if lock(&self.retention.known).contains(key) {
            return Ok(false);
        }
        let kind = key.split('/').next().unwrap_or_default();
        let bad = |e: String| ServerError::DataLoss(format!("record {key}: {e}"));
        match kind {
            POLICIES => {
                let p =
                    open_record(&self.keyring, "policy", sealed).map_err(|e| bad(e.to_string()))?;
                let v: PolicyVersion =
                    serde_json::from_slice(&p).map_err(|e| bad(e.to_string()))?;
                lock(&self.retention.policy_history).push(v);
            }
            HOLDS => {
                let p =
                    open_record(&self.keyring, "hold", sealed).map_err(|e| bad(e.to_string()))?;
                let h: Hold = serde_json::from_slice(&p).map_err(|e| bad(e.to_string()))?;
                view.holds.insert(h.id, h);
            }
            RELEASES => {
                let p = open_record(&self.keyring, "release", sealed)
                    .map_err(|e| bad(e.to_string()))?;
                let r: Release = serde_json::from_slice(&p).map_err(|e| bad(e.to_string()))?;
                view.releases.insert(r.hold_id, r);
            }
            _ => return Ok(false),
        }
        lock(&self.retention.known).insert(key.to_string());
        Ok(true)
    }

    /// Writes a sealed record create-only (durable on return) and mirrors it.
    async fn put_record<T: Serialize>(
        &self,
        prefix: &str,
        name: &str,
        kind: &str,
        value: &T,
    ) -> Result<String, ServerError> {
        self.put_record_at(&[prefix, name], kind, value).await
    }

    /// As `put_record`, with the key given as its path parts.
    async fn put_record_at<T: Serialize>(
        &self,
        parts: &[&str],
        kind: &str,
        value: &T,
    ) -> Result<String, ServerError> {
        let payload =
            serde_json::to_vec(value).map_err(|e| ServerError::Internal(e.to_string()))?;
        let sealed = seal_record(self.keyring.active(), kind, &payload)?;
        let key = ObjectPath::from_iter(parts.iter().copied());
        match self
            .store
            .put_create_only(&key, Bytes::from(sealed.clone()))
            .await
        {
            Ok(()) => {}
            Err(custody_store::StoreError::AlreadyExists { key }) => {
                return Err(ServerError::AlreadyExists(format!(
                    "record {key} already exists"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.catalog.put_record(key.as_ref(), &sealed)?;
        lock(&self.retention.known).insert(key.to_string());
        Ok(key.to_string())
    }

    /// The expiry of a segment under the current policies (`None`: no policy applies).
    pub(crate) fn expiry_of(&self, camera: &CameraId, end: Timestamp) -> Option<Timestamp> {
        let book = self.retention.book();
        book.expiry(camera, end, self.retention.config.policy_grace())
            .map(|e| e.at)
    }

    /// Indexes a segment with its expiry, atomically with respect to policy changes.
    pub(crate) fn index_segment(
        &self,
        mut rec: SegmentRecord,
    ) -> Result<SegmentRecord, ServerError> {
        let book = self.retention.book();
        rec.expires_at = book
            .expiry(
                &rec.camera,
                rec.range.end(),
                self.retention.config.policy_grace(),
            )
            .map(|e| e.at);
        self.catalog.put_segment(&rec)?;
        Ok(rec)
    }

    /// Recomputes every segment's expiry under the current policies.
    fn recompute_expiry(&self) -> Result<u64, ServerError> {
        let mut changed = 0;
        for cam in self.catalog.cameras()? {
            for rec in self.catalog.camera_segments(&cam.camera)? {
                let at = self.expiry_of(&rec.camera, rec.range.end());
                if at != rec.expires_at {
                    self.catalog.set_expiry(&rec.segment_id, at)?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Sets the policy of a scope. Refused if it would shorten a locked
    /// floor, unlock a policy, or put the ceiling below the floor. Returns the
    /// new version and how much footage it makes expire sooner.
    pub async fn set_policy(
        &self,
        scope: PolicyScope,
        policy: Policy,
        principal: &str,
    ) -> Result<(PolicyVersion, ChangeEffect), ServerError> {
        let _serial = self.retention.policy_lock.lock().await;
        let now = self.clock.now();
        let (new, effect) = {
            let book = self.retention.book();
            let version = book.current(&scope.key()).map_or(1, |v| v.version + 1);
            let effective_at = match book.latest_effective_at() {
                Some(latest) if latest >= now => latest.saturating_add_nanos(1),
                _ => now,
            };
            let new = PolicyVersion {
                scope,
                version,
                policy,
                effective_at,
                set_by: principal_or_default(principal),
            };
            new.validate().map_err(policy_error)?;
            book.check_change(&new).map_err(policy_error)?;
            let mut segments = Vec::new();
            self.catalog.for_each_segment(|r| {
                segments.push((r.camera, r.range, r.size));
                true
            })?;
            let effect = book
                .expiring_sooner(
                    &new,
                    segments.into_iter(),
                    now,
                    self.retention.config.policy_grace(),
                )
                .map_err(policy_error)?;
            (new, effect)
        };
        let name = format!("{:020}-{}.rec", new.effective_at.as_nanos(), new.version);
        self.put_record(POLICIES, &name, "policy", &new).await?;
        lock(&self.retention.policy_history).push(new.clone());
        self.retention
            .book
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(new.clone())
            .map_err(policy_error)?;
        let changed = self.recompute_expiry()?;
        info!(scope = %new.scope.key(), version = new.version, by = new.set_by, changed, "policy set");
        Ok((new, effect))
    }

    /// The current version of a scope's policy.
    pub fn policy(&self, scope: &ScopeKey) -> Option<PolicyVersion> {
        let book = self.retention.book();
        book.current(scope).cloned()
    }

    /// Every scope's current policy.
    pub fn policies(&self) -> Vec<PolicyVersion> {
        let book = self.retention.book();
        book.current_versions().cloned().collect()
    }

    /// The policy in force for a camera.
    pub fn resolve_policy(&self, camera: &CameraId) -> Option<PolicyVersion> {
        let book = self.retention.book();
        book.resolve(camera).cloned()
    }

    /// Places a hold. Returns only once the hold is durable in the store and
    /// this node's sweeper can no longer delete what it covers (single node:
    /// the node itself is every member). Cameras in an explicit list must
    /// have footage unless `future_cameras` is set.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_hold(
        &self,
        cameras: HoldCameras,
        start: Timestamp,
        end: Option<Timestamp>,
        case_id: String,
        reason: String,
        principal: &str,
        future_cameras: bool,
    ) -> Result<(Hold, HoldCoverage), ServerError> {
        if let HoldCameras::List(list) = &cameras {
            if !future_cameras {
                for c in list {
                    if !self.catalog.has_camera(c)? {
                        return Err(ServerError::NotFound(format!(
                            "camera {c} has no footage in this archive; set future_cameras (custody hold create --future-cameras) to hold footage still to come"
                        )));
                    }
                }
            }
        }
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let hold = Hold {
            id: HoldId::from_bytes(id),
            cameras,
            start,
            end,
            case_id,
            reason,
            placed_by: principal_or_default(principal),
            placed_at: self.clock.now(),
        };
        hold.validate()
            .map_err(|e| ServerError::Invalid(e.to_string()))?;
        self.put_record(HOLDS, &format!("{}.rec", hold.id), "hold", &hold)
            .await?;
        {
            // Waits for every in-flight deletion; later ones see the hold.
            let mut view = self.retention.holds.write().await;
            view.holds.insert(hold.id, hold.clone());
            view.reindex();
        }
        info!(hold = %hold.id, case = hold.case_id, by = hold.placed_by, "hold placed");
        let coverage = self.coverage(&hold)?;
        Ok((hold, coverage))
    }

    /// The cameras a hold names: its list, or every camera the catalog knows.
    pub(crate) fn hold_cameras(&self, hold: &Hold) -> Result<Vec<CameraId>, ServerError> {
        Ok(match &hold.cameras {
            HoldCameras::All => self
                .catalog
                .cameras()?
                .into_iter()
                .map(|c| c.camera)
                .collect(),
            HoldCameras::List(l) => l.clone(),
        })
    }

    fn coverage(&self, hold: &Hold) -> Result<HoldCoverage, ServerError> {
        let cameras = self.hold_cameras(hold)?;
        let now = self.clock.now();
        let mut cov = HoldCoverage::default();
        for camera in cameras {
            let mut segs: Vec<SegmentRecord> = self
                .catalog
                .camera_segments(&camera)?
                .into_iter()
                .filter(|r| hold.covers(&camera, &r.range))
                .collect();
            segs.sort_by_key(|r| r.range.start());
            let mut spans: Vec<(Timestamp, Timestamp, u64, u64)> = Vec::new();
            for r in &segs {
                cov.segments += 1;
                cov.bytes += r.size;
                match spans.last_mut() {
                    Some(last) if r.range.start() <= last.1 => {
                        last.1 = last.1.max(r.range.end());
                        last.2 += 1;
                        last.3 += r.size;
                    }
                    _ => spans.push((r.range.start(), r.range.end(), 1, r.size)),
                }
            }
            // Missing: the requested range up to now, minus the spans.
            let until = hold.end.unwrap_or(now).min(now.max(hold.start));
            let mut cursor = hold.start;
            for (s, e, _, _) in &spans {
                if *s > cursor {
                    if let Ok(r) = TimeRange::new(cursor, (*s).min(until)) {
                        cov.missing.push((camera.clone(), r));
                    }
                }
                cursor = cursor.max(*e);
            }
            if let Ok(r) = TimeRange::new(cursor, until) {
                cov.missing.push((camera.clone(), r));
            }
            for (s, e, n, b) in spans {
                if let Ok(r) = TimeRange::new(s, e) {
                    cov.spans.push((camera.clone(), r, n, b));
                }
            }
        }
        Ok(cov)
    }

    /// Releases a hold; its footage becomes subject to retention again.
    pub async fn release_hold(
        &self,
        id: &HoldId,
        reason: String,
        principal: &str,
    ) -> Result<HoldState, ServerError> {
        let hold = {
            let view = self.retention.holds.read().await;
            let hold = view
                .holds
                .get(id)
                .cloned()
                .ok_or_else(|| ServerError::NotFound(format!("hold {id} not found")))?;
            if let Some(r) = view.releases.get(id) {
                return Err(ServerError::FailedPrecondition(format!(
                    "hold {id} was already released by {} at {}",
                    r.released_by, r.released_at
                )));
            }
            hold
        };
        let release = Release {
            hold_id: *id,
            released_by: principal_or_default(principal),
            reason,
            released_at: self.clock.now(),
        };
        release
            .validate()
            .map_err(|e| ServerError::Invalid(e.to_string()))?;
        match self
            .put_record(RELEASES, &format!("{id}.rec"), "release", &release)
            .await
        {
            Err(ServerError::AlreadyExists(_)) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "hold {id} was already released"
                )))
            }
            other => other?,
        };
        let mut view = self.retention.holds.write().await;
        view.releases.insert(*id, release.clone());
        view.reindex();
        info!(hold = %id, by = release.released_by, "hold released");
        Ok(HoldState {
            hold,
            release: Some(release),
        })
    }

    /// One hold and its release.
    pub async fn hold(&self, id: &HoldId) -> Result<HoldState, ServerError> {
        let view = self.retention.holds.read().await;
        let hold = view
            .holds
            .get(id)
            .cloned()
            .ok_or_else(|| ServerError::NotFound(format!("hold {id} not found")))?;
        Ok(HoldState {
            hold,
            release: view.releases.get(id).cloned(),
        })
    }

    /// Every hold, oldest first; released ones too when asked.
    pub async fn holds(&self, include_released: bool) -> Vec<HoldState> {
        let view = self.retention.holds.read().await;
        let mut out: Vec<HoldState> = view
            .holds
            .values()
            .map(|h| HoldState {
                hold: h.clone(),
                release: view.releases.get(&h.id).cloned(),
            })
            .filter(|s| include_released || s.release.is_none())
            .collect();
        out.sort_by_key(|s| (s.hold.placed_at, s.hold.id));
        out
    }

    /// Deletes every expired segment no active hold covers, in batches:
    /// objects, then index entries (one synced batch), then one deletion
    /// record per batch in the store. With `dry_run` it only reports. Deletes
    /// nothing unless the holds were read from the store less than the hold
    /// fence ago; the hold view is read-locked across each batch's check and
    /// deletion, so a hold placed meanwhile waits for the batch and is then
    /// seen by every later one.
    pub async fn sweep(&self, dry_run: bool) -> Result<SweepReport, ServerError> {
        self.refresh_retention().await?;
        let now = self.clock.now();
        let grace = self.retention.config.policy_grace();
        let mut report = SweepReport::default();
        let mut after = None;
        loop {
            let batch = self.catalog.expired(now, after, SWEEP_BATCH)?;
            let Some(last) = batch.last() else { break };
            after = Some(*last);
            // The index is a work list; the policy book decides.
            let mut due = Vec::with_capacity(batch.len());
            for (_, id) in batch {
                let Some(rec) = self.catalog.get(&id)? else {
                    continue;
                };
                let expiry = {
                    let book = self.retention.book();
                    book.expiry(&rec.camera, rec.range.end(), grace)
                };
                match expiry {
                    Some(e) if e.at <= now => due.push((rec, e)),
                    other => {
                        self.catalog.set_expiry(&id, other.map(|e| e.at))?;
                    }
                }
            }
            if due.is_empty() {
                continue;
            }
            if !self.retention.view_is_fresh() && self.refresh_retention().await.is_err() {
                report.stopped_by_fence = true;
                warn!(
                    "hold view is older than the fence and the store is unreadable: sweep stopped"
                );
                return Ok(report);
            }
            let view = self.retention.holds.read().await;
            if !self.retention.view_is_fresh() {
                report.stopped_by_fence = true;
                return Ok(report);
            }
            let mut doomed = Vec::with_capacity(due.len());
            for (rec, expiry) in due {
                if view.index.covering(&rec.camera, &rec.range).is_some() {
                    report.kept_by_hold += 1;
                    continue;
                }
                doomed.push(Deletion {
                    segment_id: rec.segment_id,
                    camera: rec.camera.clone(),
                    range: rec.range,
                    object_key: rec.object_key.clone(),
                    size: rec.size,
                    sha256: hex::encode(rec.sha256),
                    expired_at: expiry.at,
                    policy_scope: expiry.scope.key().to_string(),
                    policy_version: expiry.policy_version,
                    deleted_at: now,
                });
            }
            if dry_run || doomed.is_empty() {
                report.deleted.extend(doomed);
                continue;
            }
            let keys: Vec<ObjectPath> = doomed
                .iter()
                .map(|d| ObjectPath::from(d.object_key.as_str()))
                .collect();
            // Audited before anything goes: no deletion without its durable record.
            self.audit
                .record_durable(doomed.iter().map(deletion_event).collect())
                .await?;
            let results = self.delete_objects(keys).await;
            let mut failure = None;
            let mut deleted = Vec::with_capacity(doomed.len());
            let mut failed = Vec::new();
            for (d, r) in doomed.into_iter().zip(results) {
                match r {
                    Ok(()) => deleted.push(d),
                    Err(e) => {
                        let mut ev = deletion_event(&d);
                        ev.outcome = custody_audit::Outcome::Failed;
                        ev.reason = e.to_string();
                        failed.push(ev);
                        failure = Some(e);
                    }
                }
            }
            if !failed.is_empty() {
                self.audit.record_durable(failed).await?;
            }
            let ids: Vec<SegmentId> = deleted.iter().map(|d| d.segment_id).collect();
            self.catalog.delete_segments(&ids)?;
            drop(view);
            if !deleted.is_empty() {
                self.record_deletions(now, &deleted).await?;
                info!(deleted = deleted.len(), "expired segments deleted");
            }
            report.deleted.extend(deleted);
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
        Ok(report)
    }

    /// Writes the deletion record of one sweep batch under a fresh name
    /// (`deletions/DAY/NANOS-RANDOM.rec`), retrying a name collision.
    async fn record_deletions(
        &self,
        now: Timestamp,
        deleted: &[Deletion],
    ) -> Result<(), ServerError> {
        let day = now.to_datetime().format("%Y-%m-%d").to_string();
        let mut last = None;
        for _ in 0..3 {
            let mut suffix = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
            let name = format!("{:020}-{}.rec", now.as_nanos(), hex::encode(suffix));
            match self
                .put_record_at(&[DELETIONS, &day, &name], "deletion", &deleted)
                .await
            {
                Err(e @ ServerError::AlreadyExists(_)) => last = Some(e),
                other => return other.map(|_| ()),
            }
        }
        Err(last.unwrap_or_else(|| ServerError::Internal("deletion record not written".into())))
    }

    /// Deletes objects, `DELETE_CONCURRENCY` at a time, in order of `keys`.
    async fn delete_objects(
        &self,
        keys: Vec<ObjectPath>,
    ) -> Vec<Result<(), custody_store::StoreError>> {
        let store = self.store.clone();
        let futs: Vec<_> = keys
            .into_iter()
            .map(move |key| {
                let store = store.clone();
                async move { store.delete(&key).await }
            })
            .collect();
        futures::stream::iter(futs)
            .buffered(DELETE_CONCURRENCY)
            .collect()
            .await
    }

    /// Runs the sweeper every `sweep_interval_secs` until the node is dropped.
    pub fn spawn_sweeper(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.retention.config.sweeper_enabled {
            return None;
        }
        let node = self.clone();
        let every = Duration::from_secs(self.retention.config.sweep_interval_secs.max(1));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match node.sweep(false).await {
                    Ok(r) if !r.deleted.is_empty() || r.stopped_by_fence => {
                        info!(
                            deleted = r.deleted.len(),
                            kept_by_hold = r.kept_by_hold,
                            fenced = r.stopped_by_fence,
                            "sweep done"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "sweep failed; nothing more deleted until the next one")
                    }
                }
            }
        }))
    }
}

/// The audit record of one swept segment.
fn deletion_event(d: &Deletion) -> crate::AuditEvent {
    let mut e = crate::AuditEvent::node("sweep.delete");
    e.cameras = vec![d.camera.to_string()];
    e.segment = d.segment_id.to_string();
    e.detail = format!(
        "{} expired at {} under policy {} v{}; {} B, sha256 {}",
        d.range, d.expired_at, d.policy_scope, d.policy_version, d.size, d.sha256
    );
    e
}

fn policy_error(e: custody_core::PolicyError) -> ServerError {
    use custody_core::PolicyError as P;
    match e {
        P::LockRemoved { .. }
        | P::FloorShortened { .. }
        | P::VersionNotIncreasing { .. }
        | P::EffectiveAtNotAfterLatest { .. } => ServerError::FailedPrecondition(e.to_string()),
        other => ServerError::Invalid(other.to_string()),
    }
}
