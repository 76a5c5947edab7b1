//! The server's error type and its one mapping to gRPC statuses.

use custody_catalog::CatalogError;
use custody_core::InvalidInput;
use custody_crypto::CryptoError;
use custody_store::StoreError;

/// Every way a request can fail, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or breaks a configured limit.
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already, differently.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but not possible in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent operation conflicts; retry later.
    #[error("{0}")]
    Aborted(String),
    /// Stored data is missing or fails authentication: never served.
    #[error("{0}")]
    DataLoss(String),
    /// The caller was too slow (an upload that went silent).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A dependency (store, catalog) is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The node's storage is full: nothing was stored; retry once space is
    /// freed (retention deletes expired footage, or the disk grows).
    #[error("{0}")]
    OutOfSpace(String),
    /// A bug or an unexpected internal failure.
    #[error("{0}")]
    Internal(String),
}

impl From<InvalidInput> for ServerError {
    fn from(e: InvalidInput) -> Self {
        ServerError::Invalid(e.to_string())
    }
}

/// A write refused for want of space, logged where operators look: every
/// write fails until space is freed.
fn out_of_space(what: &str, e: &dyn std::fmt::Display) -> ServerError {
    tracing::error!(error = %e, "the {what}'s file system is full: writes fail until space is freed");
    ServerError::OutOfSpace(format!(
        "the node's storage is full ({what}: {e}); nothing was stored; retry once space is freed"
    ))
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        crate::metrics::store_error(&e);
        match e {
            StoreError::Config(m) => ServerError::FailedPrecondition(m),
            e @ StoreError::NotFound { .. } => ServerError::NotFound(e.to_string()),
            e @ StoreError::AlreadyExists { .. } => ServerError::AlreadyExists(e.to_string()),
            e @ StoreError::Conflict { .. } => ServerError::Aborted(e.to_string()),
            e @ StoreError::NoConditionalWrites { .. } => {
                ServerError::FailedPrecondition(e.to_string())
            }
            e if e.is_out_of_space() => out_of_space("object store", &e),
            other => ServerError::Unavailable(other.to_string()),
        }
    }
}

impl From<CatalogError> for ServerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::BadPageToken => ServerError::Invalid(e.to_string()),
            CatalogError::Corrupt { .. } => ServerError::Internal(e.to_string()),
            CatalogError::Db(_) if e.is_out_of_space() => out_of_space("catalog", &e),
            CatalogError::Db(_) => ServerError::Unavailable(e.to_string()),
        }
    }
}

impl From<CryptoError> for ServerError {
    /// Each case by what the caller can do: stored bytes that fail
    /// verification are data loss; a key the keyring lacks or a bad key file
    /// is the node's configuration; a record the node itself could not seal
    /// is a bug; a reading failure is the store's.
    fn from(e: CryptoError) -> Self {
        use CryptoError as C;
        match e {
            C::NotASegment
            | C::UnsupportedVersion(_)
            | C::Malformed(_)
            | C::Truncated { .. }
            | C::Authentication { .. }
            | C::Mismatch { .. }
            | C::WrongRecordKind { .. }
            | C::BadSignature(_) => {
                ServerError::DataLoss(format!("stored data failed verification: {e}"))
            }
            C::UnknownKey(_)
            | C::InvalidKeyId(_)
            | C::KeyFileIo { .. }
            | C::KeyFilePermissions { .. }
            | C::KeyFileExists(_)
            | C::InvalidKeyring { .. }
            | C::DuplicateKeyId(_) => ServerError::FailedPrecondition(format!("keyring: {e}")),
            C::InvalidPublicKey(_) => ServerError::Invalid(e.to_string()),
            C::ChunkOutOfRange { .. } => ServerError::Invalid(e.to_string()),
            C::Read(_) => ServerError::Unavailable(e.to_string()),
            C::InvalidChunkSize(_) | C::InvalidRecordKind(_) | C::RecordTooLarge(_) => {
                ServerError::Internal(format!("sealing: {e}"))
            }
        }
    }
}

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        use tonic::Status;
        match e {
            ServerError::Invalid(m) => Status::invalid_argument(m),
            ServerError::NotFound(m) => Status::not_found(m),
            ServerError::AlreadyExists(m) => Status::already_exists(m),
            ServerError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServerError::Aborted(m) => Status::aborted(m),
            ServerError::DataLoss(m) => Status::data_loss(m),
            ServerError::Unavailable(m) => Status::unavailable(m),
            ServerError::OutOfSpace(m) => Status::resource_exhausted(m),
            ServerError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ServerError::Internal(m) => Status::internal(m),
        }
    }
}
