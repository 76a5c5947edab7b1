//! Per-node journals: what each node committed (segments stored, segments
//! deleted), as numbered, create-only batch objects
//! `cluster/journal/{node}/{seq:020}` that peers tail with `start-after`.
//! The payload is opaque here (the server seals and encodes it). A batch is
//! appended before the segments in it are acknowledged, so every
//! acknowledged segment is in its node's journal; a node that dies leaves a
//! journal its peers still read.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody_store::{ObjectPath, Store, StoreError};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;
use tracing::info;

use crate::{ClusterError, NodeName};

/// Prefix of every journal.
const JOURNAL_PREFIX: &str = "cluster/journal";

/// One batch read from a journal.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Whose journal.
    pub node: NodeName,
    /// Its number (1, 2, ... without holes, until compaction).
    pub seq: u64,
    /// The encoded entries.
    pub payload: Bytes,
    /// When the engine stored it.
    pub written_at: DateTime<Utc>,
}

/// This node's journal, for appending; and reading any node's.
#[derive(Debug)]
pub struct Journal {
    store: Store,
    node: NodeName,
    /// The last batch appended; appends are serialised so numbers are dense.
    head: Mutex<u64>,
}

fn prefix(node: &NodeName) -> ObjectPath {
    ObjectPath::from(format!("{JOURNAL_PREFIX}/{node}"))
}

fn batch_key(node: &NodeName, seq: u64) -> ObjectPath {
    ObjectPath::from(format!("{JOURNAL_PREFIX}/{node}/{seq:020}"))
}

fn seq_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    if name.len() != 20 {
        return None;
    }
    name.parse().ok()
}

impl Journal {
    /// Opens `node`'s journal for appending after its last batch.
    pub async fn open(store: Store, node: NodeName) -> Result<Journal, ClusterError> {
        let last = Self::last_seq(&store, &node).await?;
        info!(node = %node, head = last, "journal opened");
        Ok(Journal {
            store,
            node,
            head: Mutex::new(last),
        })
    }

    /// The number of the last batch in `node`'s journal (0 when empty).
    pub async fn last_seq(store: &Store, node: &NodeName) -> Result<u64, ClusterError> {
        let seqs: Vec<u64> = store
            .list(&prefix(node))
            .try_filter_map(|o| async move { Ok(seq_of(&o.key)) })
            .try_collect()
            .await?;
        Ok(seqs.into_iter().max().unwrap_or(0))
    }

    /// The number of the last batch appended by this process.
    pub async fn head(&self) -> u64 {
        *self.head.lock().await
    }

    /// Appends one batch, create-only; returns its number. If the number is
    /// taken, another process is appending as this node: that is an error,
    /// never an overwrite.
    pub async fn append(&self, payload: Bytes) -> Result<u64, ClusterError> {
        let mut head = self.head.lock().await;
        let seq = *head + 1;
        let key = batch_key(&self.node, seq);
        match self.store.put_create_only(&key, payload).await {
            Ok(()) => {
                *head = seq;
                Ok(seq)
            }
            Err(StoreError::AlreadyExists { .. }) => Err(ClusterError::NodeIdInUse {
                node: self.node.to_string(),
                key: key.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `max` batches of `node`'s journal after batch `after`, in order.
    /// The first may be later than `after + 1` when older batches were
    /// compacted away: the caller must then rebuild from the bucket.
    pub async fn read_after(
        store: &Store,
        node: &NodeName,
        after: u64,
        max: usize,
    ) -> Result<Vec<Batch>, ClusterError> {
        let mut seqs: Vec<u64> = store
            .list_after(&prefix(node), &batch_key(node, after))
            .try_filter_map(|o| async move { Ok(seq_of(&o.key).filter(|s| *s > after)) })
            .try_collect()
            .await?;
        seqs.sort_unstable();
        seqs.truncate(max);
        futures::stream::iter(seqs)
            .map(|seq| async move {
                let key = batch_key(node, seq);
                let (payload, info) = store.get_with_info(&key).await?;
                Ok::<_, ClusterError>(Batch {
                    node: node.clone(),
                    seq,
                    payload,
                    written_at: info.last_modified,
                })
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Every node that has a journal (one delimited listing: the batches
    /// themselves are not listed).
    pub async fn nodes(store: &Store) -> Result<Vec<NodeName>, ClusterError> {
        let dirs = store.list_dirs(&ObjectPath::from(JOURNAL_PREFIX)).await?;
        let mut nodes: Vec<NodeName> = dirs
            .iter()
            .filter_map(|k| k.filename())
            .filter_map(|p| NodeName::new(p).ok())
            .collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// Deletes this node's batches the engine stored more than `keep`
    /// before `engine_now`, always keeping the newest (it carries the
    /// numbering across restarts). Returns how many went.
    pub async fn compact(
        &self,
        engine_now: DateTime<Utc>,
        keep: Duration,
    ) -> Result<usize, ClusterError> {
        let head = self.head().await;
        let cutoff = engine_now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let old: Vec<ObjectPath> = self
            .store
            .list(&prefix(&self.node))
            .try_filter_map(|o| {
                let key = o.key;
                let seq = seq_of(&key);
                let old = o.last_modified < cutoff;
                async move { Ok(seq.filter(|s| old && *s < head).map(|_| key)) }
            })
            .try_collect()
            .await?;
        let n = old.len();
        for key in old {
            self.store.delete(&key).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn appends_are_dense_and_survive_reopening() {
        let store = Store::memory();
        let j = Journal::open(store.clone(), node("a")).await.unwrap();
        for i in 1..=3u64 {
            assert_eq!(j.append(Bytes::from(vec![i as u8])).await.unwrap(), i);
        }
        drop(j);
        let j = Journal::open(store.clone(), node("a")).await.unwrap();
        assert_eq!(j.head().await, 3);
        assert_eq!(j.append(Bytes::from_static(b"4")).await.unwrap(), 4);
        let got = Journal::read_after(&store, &node("a"), 1, 10)
            .await
            .unwrap();
        let seqs: Vec<u64> = got.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(got[2].payload, Bytes::from_static(b"4"));
        let got = Journal::read_after(&store, &node("a"), 1, 2).await.unwrap();
        assert_eq!(got.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(Journal::nodes(&store).await.unwrap(), vec![node("a")]);
    }

    #[tokio::test]
    async fn a_second_process_with_the_same_id_is_refused() {
        let store = Store::memory();
        let first = Journal::open(store.clone(), node("a")).await.unwrap();
        let second = Journal::open(store.clone(), node("a")).await.unwrap();
        first.append(Bytes::from_static(b"x")).await.unwrap();
        let err = second.append(Bytes::from_static(b"y")).await.unwrap_err();
        assert!(matches!(err, ClusterError::NodeIdInUse { .. }), "{err}");
        let got = Journal::read_after(&store, &node("a"), 0, 10)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, Bytes::from_static(b"x"));
    }

    #[tokio::test]
    async fn compaction_keeps_the_newest_batch() {
        let store = Store::memory();
        let j = Journal::open(store.clone(), node("a")).await.unwrap();
        for _ in 0..3 {
            j.append(Bytes::new()).await.unwrap();
        }
        let far_future = Utc::now() + chrono::Duration::days(1);
        assert_eq!(
            j.compact(far_future, Duration::from_secs(60))
                .await
                .unwrap(),
            2
        );
        let got = Journal::read_after(&store, &node("a"), 0, 10)
            .await
            .unwrap();
        assert_eq!(got.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![3]);
        // Nothing young is deleted.
        assert_eq!(
            j.compact(Utc::now(), Duration::from_secs(60))
                .await
                .unwrap(),
            0
        );
    }
}
