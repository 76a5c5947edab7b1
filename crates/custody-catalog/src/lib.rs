//! Custody's catalog: a RocksDB index derived from the object store.
//!
//! This crate owns the column families and key encodings that answer
//! "camera X, stream S, between 10:00 and 10:05" and "where is segment Y", the
//! per-camera summaries, and the write intents that let a restarted node
//! finish or forget uploads a crash interrupted. It holds nothing that cannot
//! be rebuilt from the store (see `custody_server::rebuild`).

mod catalog;
mod error;
mod record;

pub use catalog::{CameraView, Catalog, CatalogState, SegmentPage, SCHEMA_VERSION};
pub use error::CatalogError;
pub use record::{CameraSummary, SegmentRecord};
