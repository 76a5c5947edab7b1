//! Retention policies: setting and resolving them, and the expiry they give
//! indexed segments.

use custody_catalog::{Catalog, SegmentRecord};
use custody_core::{
    CameraId, ChangeEffect, Policy, PolicyScope, PolicyVersion, ScopeKey, Timestamp,
};
use tracing::info;

use super::{blocking, lock, principal_or_default, Retention};
use crate::{Node, ServerError};

/// Segments whose expiry changes are written in one synced batch.
const EXPIRY_BATCH: usize = 1000;

impl Node {
    /// The expiry of a segment under the current policies (`None`: no policy applies).
    pub(crate) fn expiry_of(&self, camera: &CameraId, end: Timestamp) -> Option<Timestamp> {
        let book = self.retention.book();
        book.expiry(camera, end, self.retention.config.policy_grace())
            .map(|e| e.at)
    }

    /// Indexes a segment with its expiry, atomically with respect to policy
    /// changes. Returns the record as indexed: the one already there when
    /// the id was indexed before.
    pub(crate) fn index_segment(&self, rec: SegmentRecord) -> Result<SegmentRecord, ServerError> {
        let rec = index_records(&self.catalog, &self.retention, vec![rec])?
            .pop()
            .ok_or_else(|| ServerError::Internal("indexing returned no record".into()))?;
        Ok(rec)
    }

    /// Recomputes every segment's expiry under the current policies.
    /// Changes are written in synced batches of [`EXPIRY_BATCH`], not one
    /// fsync per segment. Blocking: call it from a blocking thread.
    pub(super) fn recompute_expiry(&self) -> Result<u64, ServerError> {
        let mut changed = 0;
        let mut batch = Vec::with_capacity(EXPIRY_BATCH);
        for camera in self.catalog.map_cameras(|c| c.camera.clone())? {
            for rec in self.catalog.camera_segments(&camera)? {
                let at = self.expiry_of(&rec.camera, rec.range.end());
                if at != rec.expires_at {
                    batch.push((rec.segment_id, at));
                    changed += 1;
                    if batch.len() == EXPIRY_BATCH {
                        self.catalog.set_expiries(&batch)?;
                        batch.clear();
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.catalog.set_expiries(&batch)?;
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
        let node = self.clone();
        let set_by = principal_or_default(principal);
        let (new, effect) = blocking(move || node.plan_policy(scope, policy, set_by)).await?;
        self.put_policy(&new).await?;
        lock(&self.retention.policy_history).push(new.clone());
        self.retention
            .book_mut()
            .apply(new.clone())
            .map_err(policy_error)?;
        let node = self.clone();
        let changed = blocking(move || node.recompute_expiry()).await?;
        info!(scope = %new.scope.key(), version = new.version, by = new.set_by, changed, "policy set");
        Ok((new, effect))
    }

    /// The next version of a scope's policy, checked against the book, and
    /// how much indexed footage it makes expire sooner. Scans the catalog:
    /// call it from a blocking thread.
    fn plan_policy(
        &self,
        scope: PolicyScope,
        policy: Policy,
        set_by: String,
    ) -> Result<(PolicyVersion, ChangeEffect), ServerError> {
        let now = self.clock.now();
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
            set_by,
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

/// Indexes segments with their expiries in one synced batch, atomically with
/// respect to policy changes (the policy book is held throughout). Returns
/// each record as indexed: the one already there when its id was indexed
/// before.
pub(crate) fn index_records(
    catalog: &Catalog,
    retention: &Retention,
    mut recs: Vec<SegmentRecord>,
) -> Result<Vec<SegmentRecord>, ServerError> {
    let book = retention.book();
    for rec in &mut recs {
        rec.expires_at = book
            .expiry(
                &rec.camera,
                rec.range.end(),
                retention.config.policy_grace(),
            )
            .map(|e| e.at);
    }
    let added = catalog.put_segments(&recs)?;
    drop(book);
    if added == recs.len() {
        return Ok(recs);
    }
    recs.into_iter()
        .map(|rec| {
            catalog.get(&rec.segment_id)?.ok_or_else(|| {
                ServerError::Unavailable(format!(
                    "segment {} vanished from the index while being indexed",
                    rec.segment_id
                ))
            })
        })
        .collect()
}
