//! Custody's cluster: N stateless nodes on one bucket, with no consensus
//! service of their own. Everything they share is an object in the bucket,
//! judged by the engine's clock and written with its conditional writes:
//!
//! - **membership** ([`Membership`]): each node replaces its heartbeat object
//!   `cluster/members/{node}` every interval; a member is alive while its
//!   heartbeat is younger than the timeout, measured against the engine's
//!   timestamp of the observer's own latest heartbeat, never a node's clock;
//! - **journals** ([`Journal`]): each node appends its committed segments
//!   (and deletions) as create-only, numbered batch objects
//!   `cluster/journal/{node}/{seq}`; peers tail them with `start-after`.
//!   A second process claiming the same node id fails on its first append;
//! - **leases** ([`Lease`]): a singleton duty (the sweeper) held through an
//!   object replaced only with `If-Match`, carrying an epoch that fences a
//!   holder that lost it.
//!
//! It depends on core and store only; the server reaches it through its own
//! small trait, with a single-node implementation when there is no cluster.

mod config;
mod error;
mod journal;
mod lease;
mod membership;

pub use config::{ClusterConfig, NodeName};
pub use error::ClusterError;
pub use journal::{Batch, Journal};
pub use lease::{Lease, LeaseGrant, LeaseRecord};
pub use membership::{Heartbeat, Member, Membership};
