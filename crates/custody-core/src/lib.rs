//! Custody's domain types and pure logic.
//!
//! This crate owns what every other crate agrees on: validated identifiers
//! ([`CameraId`], [`StreamName`], [`SegmentId`], [`MediaType`]), instants and
//! half-open time ranges ([`Timestamp`], [`TimeRange`]), the configured
//! [`Limits`], the [`Clock`] seam that lets tests control time, retention
//! policies and expiry ([`PolicyBook`]), and legal holds with their coverage
//! index ([`HoldIndex`]).
//! It does no I/O and holds no wire (protobuf) types.

mod clock;
mod error;
mod holds;
mod ids;
mod limits;
mod retention;
mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::InvalidInput;
pub use holds::{
    Hold, HoldCameras, HoldError, HoldId, HoldIndex, Release, MAX_CASE_ID_LEN, MAX_REASON_LEN,
};
pub use ids::{CameraId, MediaType, SegmentId, StreamName};
pub use limits::Limits;
pub use retention::{
    ChangeEffect, Expiry, Policy, PolicyBook, PolicyError, PolicyScope, PolicyVersion, ScopeKey,
    MAX_GROUP_NAME_LEN, MAX_PRINCIPAL_LEN, MAX_RETENTION_SECS,
};
pub use time::{TimeRange, Timestamp};
