//! Custody's object store: where the truth lives.
//!
//! This crate owns the object layout (camera, stream and time in every
//! segment's key, so the catalog can be rebuilt by listing) and durable writes
//! over [`object_store`]: `file://` (the embedded default, fsync'd before a
//! write returns), `memory://` (tests) and `s3://` (any S3-compatible store).
//! It does not know about encryption or the index.

mod error;
pub mod layout;
mod probe;
mod store;
mod versioned;

pub use error::StoreError;
pub use layout::SegmentKey;
pub use object_store::path::Path as ObjectPath;
pub use store::{ObjectInfo, ObjectWriter, PendingSync, StagedObject, Store, StoreConfig};
