//! Leases for singleton duties (one sweeper per cluster): an object
//! `cluster/leases/{duty}` naming the holder and an epoch, created
//! create-only and afterwards replaced only with `If-Match` on the version
//! that was read, so two nodes can never both win one round.
//!
//! Timing, and why a paused or cut-off holder cannot act on a lost lease:
//! - a taker replaces the lease only once the engine's time (of the taker's
//!   own latest heartbeat) is more than `duration` past the engine's time of
//!   the lease's last write;
//! - the holder measures on its own monotonic clock from *before* it sent
//!   the write, and trusts the grant for `duration − margin` only, where the
//!   margin covers the one-second resolution of S3 timestamps and clock-rate
//!   drift (1 s + 10 % of the duration);
//! - a holder checks [`LeaseGrant::is_valid`] immediately before each act
//!   (each delete batch), and an act is short against the margin. A holder
//!   paused (GC, SIGSTOP) past its grant finds it invalid when it resumes.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody_store::{ObjectPath, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{ClusterError, NodeName};

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The duty.
    pub duty: String,
    /// Who holds it.
    pub holder: NodeName,
    /// Increases with every change of holder: fences a holder that lost it.
    pub epoch: u64,
    /// How long it lasts without renewal.
    pub duration_ms: u64,
}

/// A lease this node holds, until [`LeaseGrant::valid_until`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The epoch held.
    pub epoch: u64,
    /// Local monotonic deadline after which the holder must not act.
    pub valid_until: Instant,
    version: String,
}

impl LeaseGrant {
    /// Whether the holder may still act.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// One duty's lease, as this node takes, renews and reads it.
#[derive(Debug, Clone)]
pub struct Lease {
    store: Store,
    duty: String,
    me: NodeName,
    duration: Duration,
}

impl Lease {
    /// The lease of `duty` for node `me`.
    pub fn new(store: Store, duty: &str, me: NodeName, duration: Duration) -> Lease {
        Lease {
            store,
            duty: duty.to_string(),
            me,
            duration,
        }
    }

    fn key(&self) -> ObjectPath {
        ObjectPath::from(format!("cluster/leases/{}", self.duty))
    }

    /// How long a grant is trusted by its holder.
    fn trusted(&self) -> Duration {
        let margin = Duration::from_secs(1) + self.duration / 10;
        self.duration.saturating_sub(margin)
    }

    /// The lease as stored, with the engine's time of its last write.
    pub async fn read(&self) -> Result<Option<(LeaseRecord, DateTime<Utc>)>, ClusterError> {
        match self.store.get_with_info(&self.key()).await {
            Ok((bytes, info)) => {
                let rec = serde_json::from_slice(&bytes).map_err(|e| ClusterError::Corrupt {
                    key: self.key().to_string(),
                    why: e.to_string(),
                })?;
                Ok(Some((rec, info.last_modified)))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lease if it is free or expired, or renews `current`.
    /// `engine_now` is the engine's time of this node's latest heartbeat.
    /// Returns the grant, or `None` when another node holds it.
    pub async fn acquire(
        &self,
        current: Option<&LeaseGrant>,
        engine_now: DateTime<Utc>,
    ) -> Result<Option<LeaseGrant>, ClusterError> {
        let sent = Instant::now();
        let key = self.key();
        let record = |epoch| LeaseRecord {
            duty: self.duty.clone(),
            holder: self.me.clone(),
            epoch,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        };
        let encode = |r: &LeaseRecord| {
            serde_json::to_vec(r)
                .map(Bytes::from)
                .map_err(|e| ClusterError::Corrupt {
                    key: key.to_string(),
                    why: e.to_string(),
                })
        };
        let stored = match self.store.get_with_info(&key).await {
            Ok(x) => Some(x),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some((bytes, info)) = stored else {
            let rec = record(1);
            return match self.store.put_create_only(&key, encode(&rec)?).await {
                Ok(()) => {
                    let version = self.store.head(&key).await?.version.unwrap_or_default();
                    Ok(Some(self.grant(1, sent, version)))
                }
                Err(StoreError::AlreadyExists { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        let rec: LeaseRecord =
            serde_json::from_slice(&bytes).map_err(|e| ClusterError::Corrupt {
                key: key.to_string(),
                why: e.to_string(),
            })?;
        let version = info.version.clone().unwrap_or_default();
        let mine = rec.holder == self.me
            && current.is_some_and(|g| g.epoch == rec.epoch && g.version == version);
        let expired = (engine_now - info.last_modified)
            .to_std()
            .is_ok_and(|age| age > Duration::from_millis(rec.duration_ms));
        let epoch = if mine {
            rec.epoch
        } else if expired || rec.holder == self.me {
            // Expired, or held by an earlier run of this node (which is
            // gone: its journal would refuse a second process): a new epoch.
            rec.epoch + 1
        } else {
            return Ok(None);
        };
        match self
            .store
            .put_if_version(&key, encode(&record(epoch))?, &version)
            .await
        {
            Ok(version) => Ok(Some(self.grant(epoch, sent, version))),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn grant(&self, epoch: u64, sent: Instant, version: String) -> LeaseGrant {
        LeaseGrant {
            epoch,
            valid_until: sent + self.trusted(),
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(store: &Store, node: &str) -> Lease {
        Lease::new(
            store.clone(),
            "sweeper",
            NodeName::new(node).unwrap(),
            Duration::from_secs(10),
        )
    }

    #[tokio::test]
    async fn one_holder_until_expiry_then_a_new_epoch() {
        let store = Store::memory();
        let (a, b) = (lease(&store, "a"), lease(&store, "b"));
        let now = Utc::now();
        let ga = a.acquire(None, now).await.unwrap().expect("free lease");
        assert_eq!(ga.epoch, 1);
        assert!(ga.is_valid());
        assert!(b.acquire(None, now).await.unwrap().is_none(), "held by a");
        let ga = a.acquire(Some(&ga), now).await.unwrap().expect("renewal");
        assert_eq!(ga.epoch, 1);
        // 11 s of engine time later, without a renewal, b takes it over.
        let later = Utc::now() + chrono::Duration::seconds(11);
        let gb = b.acquire(None, later).await.unwrap().expect("expired");
        assert_eq!(gb.epoch, 2);
        // a's renewal now fails: its version is stale, and b's write is fresh.
        assert!(a.acquire(Some(&ga), Utc::now()).await.unwrap().is_none());
        let (rec, _) = a.read().await.unwrap().unwrap();
        assert_eq!(rec.holder.as_str(), "b");
    }

    #[tokio::test]
    async fn concurrent_takers_get_one_winner() {
        let store = Store::memory();
        let takers: Vec<Lease> = (0..8).map(|i| lease(&store, &format!("n{i}"))).collect();
        let now = Utc::now();
        let results = futures::future::join_all(takers.iter().map(|l| l.acquire(None, now))).await;
        let winners = results
            .into_iter()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count();
        assert_eq!(winners, 1);
    }
}
