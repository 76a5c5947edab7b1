//! Membership: one heartbeat object per node, replaced every interval.
//! Liveness is judged from the engine's modification times only: a member
//! is alive while its heartbeat is younger than the timeout, measured
//! against the engine's time of the observer's own latest heartbeat. Node
//! clocks never enter the judgement, so a node with a wrong clock cannot
//! make a dead peer look alive or a live one dead.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody_store::{ObjectPath, Store};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::{ClusterError, NodeName};

/// Prefix of the heartbeat objects.
const MEMBERS_PREFIX: &str = "cluster/members";

/// What a node publishes about itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node.
    pub node: NodeName,
    /// Addresses clients reach it on.
    pub advertise: Vec<String>,
    /// When this process started, by the node's own clock (for operators
    /// only; never used to judge liveness).
    pub started_at: String,
    /// The custodyd version.
    pub version: String,
    /// The last batch the node appended to its journal.
    pub journal_head: u64,
    /// For each peer, the last batch of its journal this node applied.
    pub applied: BTreeMap<String, u64>,
    /// Singleton duties the node holds (e.g. `sweeper`).
    pub duties: Vec<String>,
}

/// A member as another node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its latest heartbeat.
    pub heartbeat: Heartbeat,
    /// When the engine stored that heartbeat.
    pub last_seen: DateTime<Utc>,
    /// How old the heartbeat was, by the engine's clock, at the observer's
    /// latest heartbeat.
    pub age: Duration,
    /// Whether its heartbeat is younger than the member timeout.
    pub alive: bool,
}

/// Heartbeats of the cluster, as one node writes and reads them.
#[derive(Debug, Clone)]
pub struct Membership {
    store: Store,
    me: NodeName,
    timeout: Duration,
}

fn member_key(node: &NodeName) -> ObjectPath {
    ObjectPath::from(format!("{MEMBERS_PREFIX}/{node}"))
}

impl Membership {
    /// Membership for node `me`, judging members down after `timeout`.
    pub fn new(store: Store, me: NodeName, timeout: Duration) -> Membership {
        Membership { store, me, timeout }
    }

    /// This node's name.
    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// Replaces this node's heartbeat; returns the engine's time of it,
    /// which is "now" by the engine's clock for every judgement that follows.
    pub async fn beat(&self, hb: &Heartbeat) -> Result<DateTime<Utc>, ClusterError> {
        let bytes = serde_json::to_vec_pretty(hb).map_err(|e| ClusterError::Corrupt {
            key: member_key(&self.me).to_string(),
            why: e.to_string(),
        })?;
        let info = self
            .store
            .put_replace(&member_key(&self.me), Bytes::from(bytes))
            .await?;
        Ok(info.last_modified)
    }

    /// Every node that ever sent a heartbeat (and was not removed), judged
    /// against `engine_now` (from [`Membership::beat`]).
    pub async fn members(&self, engine_now: DateTime<Utc>) -> Result<Vec<Member>, ClusterError> {
        let prefix = ObjectPath::from(MEMBERS_PREFIX);
        let keys: Vec<ObjectPath> = self
            .store
            .list(&prefix)
            .map_ok(|o| o.key)
            .try_collect()
            .await?;
        let store = &self.store;
        let mut members: Vec<Member> = futures::stream::iter(keys)
            .map(|key| async move {
                let (bytes, info) = match store.get_with_info(&key).await {
                    Ok(x) => x,
                    // Removed between the listing and the read.
                    Err(custody_store::StoreError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(ClusterError::from(e)),
                };
                let heartbeat: Heartbeat =
                    serde_json::from_slice(&bytes).map_err(|e| ClusterError::Corrupt {
                        key: key.to_string(),
                        why: e.to_string(),
                    })?;
                let age = (engine_now - info.last_modified)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                Ok(Some(Member {
                    heartbeat,
                    last_seen: info.last_modified,
                    age,
                    alive: age <= self.timeout,
                }))
            })
            .buffer_unordered(8)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        members.sort_by(|a, b| a.heartbeat.node.cmp(&b.heartbeat.node));
        Ok(members)
    }

    /// Removes a member's heartbeat (an operator retiring a node for good).
    pub async fn forget(&self, node: &NodeName) -> Result<(), ClusterError> {
        Ok(self.store.delete(&member_key(node)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str) -> Heartbeat {
        Heartbeat {
            node: NodeName::new(node).unwrap(),
            advertise: vec!["127.0.0.1:1".into()],
            started_at: String::new(),
            version: "test".into(),
            journal_head: 0,
            applied: BTreeMap::new(),
            duties: vec![],
        }
    }

    #[tokio::test]
    async fn liveness_is_judged_by_the_engine_clock() {
        let store = Store::memory();
        let a = Membership::new(
            store.clone(),
            NodeName::new("a").unwrap(),
            Duration::from_secs(5),
        );
        let b = Membership::new(store, NodeName::new("b").unwrap(), Duration::from_secs(5));
        let t_b = b.beat(&hb("b")).await.unwrap();
        let now = a.beat(&hb("a")).await.unwrap();
        let members = a.members(now).await.unwrap();
        assert_eq!(members.len(), 2);
        assert!(members.iter().all(|m| m.alive));
        // The same heartbeats judged 6 s of engine time later: b is down.
        let later = t_b + chrono::Duration::seconds(6);
        let members = a.members(later).await.unwrap();
        let b_seen = members
            .iter()
            .find(|m| m.heartbeat.node.as_str() == "b")
            .unwrap();
        assert!(!b_seen.alive);
        assert!(b_seen.age >= Duration::from_secs(6));
    }
}
