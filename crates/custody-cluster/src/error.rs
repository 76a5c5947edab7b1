//! Errors of the cluster layer.

use custody_store::StoreError;

/// What can go wrong coordinating through the bucket.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The bucket could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The `[cluster]` configuration is unusable.
    #[error("invalid [cluster] configuration: {0}")]
    Config(String),
    /// An object of the cluster's own layout could not be decoded.
    #[error("cluster object {key} is unreadable: {why}")]
    Corrupt {
        /// Object key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// Another process appended to this node's journal: two processes run
    /// with one node id.
    #[error(
        "journal batch {key} already exists: another process is running as node {node}; \
         each node needs its own [cluster] node_id"
    )]
    NodeIdInUse {
        /// The node id.
        node: String,
        /// The batch that was already there.
        key: String,
    },
}
