//! Errors of the object store layer.

/// What can go wrong talking to the object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// Object key.
        key: String,
    },
    /// A create-only write found the object already there.
    #[error("object {key} already exists")]
    AlreadyExists {
        /// Object key.
        key: String,
    },
    /// A conditional replace found another version than the one it read.
    #[error("object {key} changed since it was read")]
    Conflict {
        /// Object key.
        key: String,
    },
    /// The engine does not honour create-only writes (`If-None-Match: *`):
    /// a second create-only write of one key succeeded, so nothing written
    /// through it is protected from being replaced.
    #[error(
        "the object store at {url} ignores If-None-Match (create-only writes): {detail}; \
         it cannot run as a cluster member without conditional writes"
    )]
    NoConditionalWrites {
        /// The store URL.
        url: String,
        /// What the probe saw.
        detail: String,
    },
    /// The store URL or its settings are unusable.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The backend failed (network, permissions, ...).
    #[error("object store error on {key}: {source}")]
    Backend {
        /// Object key (or prefix).
        key: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the failure is a full file system (or an exhausted disk
    /// quota): a matter of space, not of the request. Looks through the
    /// error's causes, so a local engine's error wrapped by `object_store`
    /// counts too.
    pub fn is_out_of_space(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) {
                    return true;
                }
            }
            cause = e.source();
        }
        false
    }

    pub(crate) fn backend(key: impl ToString, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists {
                key: key.to_string(),
            },
            source => StoreError::Backend {
                key: key.to_string(),
                source,
            },
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
