//! The `[cluster]` section of `custodyd`'s configuration, and node names.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// Most bytes in a node name.
pub(crate) const MAX_NODE_NAME_LEN: usize = 63;

/// A node's id in the cluster: 1–63 of `a-z 0-9 -`, not starting or ending
/// with `-` (it is part of object keys and of certificates' names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Checks and wraps a node name.
    pub fn new(s: &str) -> Result<NodeName, ClusterError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NODE_NAME_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(NodeName(s.to_string()))
        } else {
            Err(ClusterError::Config(format!(
                "node id {s:?} must be 1-{MAX_NODE_NAME_LEN} characters of a-z, 0-9 and '-', \
                 not starting or ending with '-'"
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = ClusterError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeName::new(&s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

/// The `[cluster]` section. Field names are the config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Addresses cameras and operators reach this node on (`host:port`),
    /// published in its heartbeat and shown by `custody cluster status`.
    pub advertise: Vec<String>,
    /// How often this node replaces its heartbeat object.
    pub heartbeat_interval_ms: u64,
    /// A member whose heartbeat is older than this, by the engine's clock,
    /// is down.
    pub member_timeout_ms: u64,
    /// How often peers' journals are polled for new batches.
    pub journal_poll_ms: u64,
    /// This node's journal batches older than this are deleted; a node away
    /// for longer rebuilds its index from the bucket when it returns.
    pub journal_keep_secs: u64,
    /// How long a singleton duty's lease lasts without renewal.
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            advertise: Vec::new(),
            heartbeat_interval_ms: 1_000,
            member_timeout_ms: 10_000,
            journal_poll_ms: 200,
            journal_keep_secs: 6 * 3600,
            lease_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// Checks the section; returns the node's name.
    pub fn validate(&self) -> Result<NodeName, ClusterError> {
        let name = NodeName::new(&self.node_id)?;
        let bad = |m: String| Err(ClusterError::Config(m));
        if self.heartbeat_interval_ms == 0 || self.journal_poll_ms == 0 {
            return bad("heartbeat_interval_ms and journal_poll_ms must be above 0".into());
        }
        // The engine's timestamps have one-second resolution on S3 (HEAD's
        // Last-Modified), so a timeout must span several heartbeats and
        // more than that resolution.
        if self.member_timeout_ms < 3 * self.heartbeat_interval_ms.max(1_000) {
            return bad(format!(
                "member_timeout_ms = {} must be at least 3 × max(heartbeat_interval_ms, 1000)",
                self.member_timeout_ms
            ));
        }
        if self.lease_ms < 3 * self.heartbeat_interval_ms.max(1_000) {
            return bad(format!(
                "lease_ms = {} must be at least 3 × max(heartbeat_interval_ms, 1000)",
                self.lease_ms
            ));
        }
        if self.journal_keep_secs < 60 {
            return bad("journal_keep_secs must be at least 60".into());
        }
        Ok(name)
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The member timeout.
    pub fn member_timeout(&self) -> Duration {
        Duration::from_millis(self.member_timeout_ms)
    }

    /// The journal poll interval.
    pub fn journal_poll(&self) -> Duration {
        Duration::from_millis(self.journal_poll_ms)
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["a", "node-1", "n0", &"x".repeat(63)] {
            assert!(NodeName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a/b", "a.b", "a b", &"x".repeat(64)] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation() {
        let mut c = ClusterConfig {
            node_id: "n1".into(),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        c.member_timeout_ms = 1_500;
        assert!(c.validate().is_err());
    }
}
