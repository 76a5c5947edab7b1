//! The sweeper: deletes expired footage no active hold covers.

use std::time::Duration;

use custody_catalog::SegmentRecord;
use custody_core::{CameraId, Expiry, SegmentId, TimeRange, Timestamp};
use custody_store::ObjectPath;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::blocking;
use crate::{Node, ServerError};

/// Expired segments examined per sweep batch.
const SWEEP_BATCH: usize = 512;
/// Object deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;
/// Staged parts of a large write older than this belong to a writer that
/// died (an upload lasts at most `upload_idle_timeout_secs` between
/// messages, and far less than this in all).
const STALE_STAGING: Duration = Duration::from_secs(3600);
/// How often a cluster's sweeper confirms a fresh view of the holds.
const CONFIRM_EVERY: Duration = Duration::from_millis(250);

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

/// One batch of the expiry index: where the next batch starts (`None`: the
/// index is exhausted) and the segments the policy book says are due.
type DueBatch = (Option<(Timestamp, SegmentId)>, Vec<(SegmentRecord, Expiry)>);

impl Node {
    /// Deletes every expired segment no active hold covers, in batches:
    /// objects, then index entries (one synced batch), then one deletion
    /// record per batch in the store. With `dry_run` it only reports. Deletes
    /// nothing unless the holds were read from the store less than the hold
    /// fence ago; the hold view is read-locked across each batch's check and
    /// deletion, so a hold placed meanwhile waits for the batch and is then
    /// seen by every later one.
    pub async fn sweep(&self, dry_run: bool) -> Result<SweepReport, ServerError> {
        let as_of = self.clock.now().to_parts().0;
        let result = self.sweep_once(dry_run).await;
        if !dry_run {
            let outcome = result
                .as_ref()
                .map(|r| (r.kept_by_hold, r.stopped_by_fence));
            let now = self.clock.now().to_parts().0;
            self.metrics.swept(as_of, outcome.map_err(|_| ()), now);
        }
        result
    }

    /// One sweep, as [`Node::sweep`] describes, without its metrics.
    async fn sweep_once(&self, dry_run: bool) -> Result<SweepReport, ServerError> {
        if !dry_run && !self.cluster.may_sweep() {
            return Err(ServerError::FailedPrecondition(
                "this node does not hold the cluster's sweeper lease: retention is enforced by the \
                 node that does (see `custody cluster status`); a dry run works anywhere"
                    .into(),
            ));
        }
        self.refresh_retention().await?;
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let mut after = None;
        loop {
            let node = self.clone();
            let (next, due) = blocking(move || node.due_batch(now, after)).await?;
            let Some(next) = next else { break };
            after = Some(next);
            if due.is_empty() {
                continue;
            }
            if !self.retention.fence.is_fresh() && self.refresh_retention().await.is_err() {
                report.stopped_by_fence = true;
                warn!(
                    "hold view is older than the fence and the store is unreadable: sweep stopped"
                );
                return Ok(report);
            }
            let view = self.retention.holds.read().await;
            if !self.retention.fence.is_fresh() || !(dry_run || self.cluster.may_sweep()) {
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
            let catalog = self.catalog.clone();
            // Still under the read lock of the hold view.
            let journaled = ids.clone();
            blocking(move || Ok(catalog.delete_segments(&ids)?)).await?;
            drop(view);
            self.announce_deleted(&journaled).await;
            if !deleted.is_empty() {
                self.put_deletions(now, &deleted).await?;
                info!(deleted = deleted.len(), "expired segments deleted");
            }
            self.metrics.deleted(deleted.len());
            report.deleted.extend(deleted);
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(report)
    }

    /// Reads the next batch of the expiry index after `after` and keeps the
    /// segments the policy book says are due at `now`; the others get their
    /// expiry corrected in the index. The index is a work list; the policy
    /// book decides. Blocking: call it from a blocking thread.
    fn due_batch(
        &self,
        now: Timestamp,
        after: Option<(Timestamp, SegmentId)>,
    ) -> Result<DueBatch, ServerError> {
        let grace = self.retention.config.policy_grace();
        let batch = self.catalog.expired(now, after, SWEEP_BATCH)?;
        let next = batch.last().copied();
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
        Ok((next, due))
    }

    /// Deletes objects, `DELETE_CONCURRENCY` at a time, in order of `keys`.
    /// Each deletion first checks, again, that this node still holds the
    /// sweeper lease and a fresh view of the holds: a sweeper paused (GC,
    /// SIGSTOP) after its batch check wakes to a grant that ran out.
    async fn delete_objects(&self, keys: Vec<ObjectPath>) -> Vec<Result<(), ServerError>> {
        let futs: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let node = self.clone();
                async move {
                    if !node.cluster.may_sweep() || !node.retention.fence.is_fresh() {
                        return Err(ServerError::FailedPrecondition(format!(
                            "{key} not deleted: this node's sweeper lease or hold view ran out"
                        )));
                    }
                    node.store.delete(&key).await.map_err(ServerError::from)
                }
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
        // In a cluster the sweeper also confirms, four times a second, a fresh
        // view of the holds, which is what lets a hold placed on another
        // node be acknowledged without waiting the whole fence.
        let tick_every = if self.cluster.journals() {
            every.min(CONFIRM_EVERY)
        } else {
            every
        };
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(tick_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sweep: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                if !node.cluster.may_sweep() {
                    continue;
                }
                if node.cluster.journals() {
                    if let Err(e) = node.confirm_holds().await {
                        warn!(error = %e, "could not confirm a fresh view of the holds");
                    }
                }
                if last_sweep.is_some_and(|t| t.elapsed() < every) {
                    continue;
                }
                last_sweep = Some(tokio::time::Instant::now());
                node.remove_stale_staging().await;
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

impl Node {
    /// Deletes staged parts of large writes whose writer died (any node's):
    /// those the store wrote more than [`STALE_STAGING`] ago.
    async fn remove_stale_staging(&self) {
        let now = match self.cluster.store_now().await {
            Ok(Some(t)) => t,
            _ => chrono::Utc::now(),
        };
        let cutoff = now - chrono::Duration::from_std(STALE_STAGING).unwrap_or_default();
        match self.store.remove_stale_staging(cutoff).await {
            Ok(0) => {}
            Ok(n) => info!(
                objects = n,
                "removed staged parts of uploads whose writer died"
            ),
            Err(e) => warn!(error = %e, "could not clean staged parts"),
        }
    }

    /// Reads the holds from the store, having first taken the store's time,
    /// and publishes that the view includes every hold written before it.
    async fn confirm_holds(&self) -> Result<(), ServerError> {
        let started = self.cluster.store_now().await?;
        self.refresh_retention().await?;
        if let Some(t) = started {
            self.cluster.confirm_fence(t).await?;
        }
        Ok(())
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
