//! The hold fence: this node's view of the holds, as read from the store,
//! and whether it is fresh enough to delete by.
//!
//! This module is the one home of the fence state ([`HoldFence`]: when the
//! last complete read of the store began) and of the freshness check. The
//! sweeper deletes only while [`HoldFence::is_fresh`]; [`Node::refresh_retention`]
//! is the read that makes the view fresh again. It reads policies and
//! releases too: they come from the same records.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use custody_core::PolicyBook;
use custody_store::ObjectPath;
use futures::StreamExt;
use tracing::warn;

use super::holds::HoldsView;
use super::records::{self, StoredRecord};
use super::{blocking, lock};
use crate::{Node, ServerError};

/// When the holds were last read from the store, and how long that read
/// may be trusted (the fence F).
pub(super) struct HoldFence {
    /// When the last complete read of the holds from the store started.
    fresh_since: Mutex<Option<Instant>>,
    /// The fence F.
    fence: Duration,
}

impl HoldFence {
    pub(super) fn new(fence: Duration) -> HoldFence {
        HoldFence {
            fresh_since: Mutex::new(None),
            fence,
        }
    }

    /// Whether the view of the holds was read from the store less than the
    /// fence ago: only then may anything be deleted.
    pub(super) fn is_fresh(&self) -> bool {
        lock(&self.fresh_since).is_some_and(|t| t.elapsed() < self.fence)
    }

    /// Records a complete read of the store that began at `started`.
    fn mark_fresh(&self, started: Instant) {
        *lock(&self.fresh_since) = Some(started);
    }
}

impl Node {
    /// Loads policies and holds from the catalog mirror, then from the store.
    pub(crate) async fn load_retention(&self) -> Result<(), ServerError> {
        let catalog = self.catalog.clone();
        let mirrored = blocking(move || Ok(catalog.records()?)).await?;
        {
            let mut view = self.retention.holds.write().await;
            for (key, bytes) in mirrored {
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

    /// In a cluster, reads policy, hold and release records other nodes
    /// wrote before answering about them or changing them (alone, this
    /// node's view is every record there is).
    pub(crate) async fn sync_retention_view(&self) -> Result<(), ServerError> {
        if self.cluster.journals() {
            self.refresh_retention().await?;
        }
        Ok(())
    }

    /// Rebuilds the policy book from the policy history read so far.
    fn finish_policy_load(&self) -> Result<(), ServerError> {
        let history = lock(&self.retention.policy_history).clone();
        let book = PolicyBook::from_history(history).map_err(|e| {
            ServerError::DataLoss(format!("policy history in the store is inconsistent: {e}"))
        })?;
        *self.retention.book_mut() = book;
        Ok(())
    }

    /// Reads every hold, release and policy record from the store (fetching
    /// only keys not seen before) and marks the view fresh from the moment
    /// the read began. On failure the view stays as stale as it was; records
    /// read before the failure are applied (and indexed) all the same.
    pub(crate) async fn refresh_retention(&self) -> Result<(), ServerError> {
        let started = Instant::now();
        let mut new_keys = Vec::new();
        for prefix in [records::POLICIES, records::HOLDS, records::RELEASES] {
            let mut list = self.store.list(&ObjectPath::from(prefix));
            while let Some(obj) = list.next().await {
                let key = obj?.key.to_string();
                if !lock(&self.retention.known).contains(&key) {
                    new_keys.push(key);
                }
            }
        }
        if new_keys.is_empty() {
            self.retention.fence.mark_fresh(started);
            return Ok(());
        }
        let mut fetched = Vec::with_capacity(new_keys.len());
        for key in new_keys {
            let bytes = self.store.get(&ObjectPath::from(key.as_str())).await?;
            fetched.push((key, bytes));
        }
        let mut applied = Vec::new();
        let mut failure = None;
        let mut new_policies = false;
        {
            let mut view = self.retention.holds.write().await;
            for (key, bytes) in fetched {
                match self.apply_record_locked(&key, &bytes, &mut view) {
                    Ok(true) => {
                        new_policies |= records::kind_of(&key) == records::POLICIES;
                        applied.push((key, bytes));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            // Whatever was applied is indexed before anything can fail.
            view.reindex();
        }
        if new_policies {
            self.finish_policy_load()?;
        }
        let node = self.clone();
        blocking(move || {
            let recomputed = if new_policies {
                node.recompute_expiry().map(|_| ())
            } else {
                Ok(())
            };
            for (key, bytes) in &applied {
                node.catalog.put_record(key, bytes)?;
            }
            recomputed
        })
        .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.retention.fence.mark_fresh(started);
        Ok(())
    }

    /// Applies one sealed record to this node's state, unless already
    /// applied. Returns whether it was new.
    fn apply_record_locked(
        &self,
        key: &str,
        sealed: &[u8],
        view: &mut HoldsView,
    ) -> Result<bool, ServerError> {
        if lock(&self.retention.known).contains(key) {
            return Ok(false);
        }
        match records::open(&self.keyring, key, sealed)? {
            Some(StoredRecord::Policy(v)) => lock(&self.retention.policy_history).push(v),
            Some(StoredRecord::Hold(h)) => {
                view.holds.insert(h.id, h);
            }
            Some(StoredRecord::Release(r)) => {
                view.releases.insert(r.hold_id, r);
            }
            None => return Ok(false),
        }
        lock(&self.retention.known).insert(key.to_string());
        Ok(true)
    }
}
