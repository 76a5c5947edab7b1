//! Retention enforcement: policies, legal holds, the sweeper and the hold fence.
//!
//! This module owns a node's retention state ([`Retention`]) and everything
//! that reads or changes it:
//!
//! - [`records`]: the sealed, create-only records in the store (`policies/`,
//!   `holds/`, `releases/`, `deletions/`), mirrored in the catalog: their
//!   versioned on-bucket format and writing them.
//! - [`fence`]: the hold fence: reading the records back from the store into
//!   this node's view, and whether that view is fresh enough to delete by.
//! - [`policies`]: setting and resolving policies, and the expiry of indexed
//!   segments.
//! - [`holds`]: placing, releasing and listing holds.
//! - [`sweep`]: the sweeper, which deletes expired footage no hold covers.
//!
//! The sweeper reads the holds from the store before deleting, and deletes
//! only while that view is younger than the fence F. The in-memory view only
//! grows (holds and releases are never removed from it), and a hold is added
//! to it under a write lock that every deletion holds for reading across its
//! check-and-delete, so once `create_hold` returns no deletion on this node
//! can miss the hold.
//!
//! Catalog work (RocksDB: scans, synced writes) runs on blocking threads
//! ([`blocking`]), never on the async runtime's.

mod fence;
mod holds;
mod policies;
mod records;
mod sweep;

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use custody_core::{PolicyBook, PolicyVersion};

use crate::{RetentionConfig, ServerError};

pub use holds::{HoldCoverage, HoldState};
pub(crate) use policies::index_records;
pub use sweep::{Deletion, SweepReport};

use fence::HoldFence;
use holds::HoldsView;

/// Retention state of a node.
pub(crate) struct Retention {
    pub(crate) config: RetentionConfig,
    pub(crate) book: RwLock<PolicyBook>,
    policy_history: Mutex<Vec<PolicyVersion>>,
    holds: tokio::sync::RwLock<HoldsView>,
    /// Keys of the records already applied to this node's state.
    known: Mutex<HashSet<String>>,
    /// When the holds were last read from the store, against the fence.
    fence: HoldFence,
    policy_lock: tokio::sync::Mutex<()>,
}

impl Retention {
    pub(crate) fn new(config: RetentionConfig) -> Retention {
        Retention {
            fence: HoldFence::new(config.hold_fence()),
            config,
            book: RwLock::new(PolicyBook::new()),
            policy_history: Mutex::new(Vec::new()),
            holds: tokio::sync::RwLock::new(HoldsView::default()),
            known: Mutex::new(HashSet::new()),
            policy_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy book, for reading.
    fn book(&self) -> std::sync::RwLockReadGuard<'_, PolicyBook> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy book, for writing.
    fn book_mut(&self) -> std::sync::RwLockWriteGuard<'_, PolicyBook> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking work (catalog scans and synced writes) on a blocking
/// thread, so it does not stall the async runtime.
async fn blocking<T, F>(f: F) -> Result<T, ServerError>
where
    F: FnOnce() -> Result<T, ServerError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("retention task: {e}")))?
}

fn principal_or_default(p: &str) -> String {
    if p.trim().is_empty() {
        "unauthenticated@loopback".to_string()
    } else {
        p.to_string()
    }
}
