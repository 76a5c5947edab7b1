//! Errors of the catalog.

/// What can go wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// RocksDB failed (I/O, corruption, lock held by another process).
    #[error("catalog database error: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value does not decode: the catalog is corrupt and should be rebuilt.
    #[error("catalog entry {key} is corrupt ({reason}); run `custodyd catalog rebuild`")]
    Corrupt {
        /// Hex of the key.
        key: String,
        /// Decoder message.
        reason: String,
    },
    /// A paging token that this catalog did not issue.
    #[error("invalid page token")]
    BadPageToken,
}

impl CatalogError {
    /// Whether RocksDB failed for want of space (a full file system or an
    /// exhausted quota under the catalog).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            CatalogError::Db(e) => {
                let m = e.to_string();
                m.contains("No space left on device") || m.contains("Disk quota exceeded")
            }
            _ => false,
        }
    }
}
