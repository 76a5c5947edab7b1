//! Custody's domain types and pure logic.
//!
//! This crate owns what every other crate agrees on: validated identifiers
//! ([`CameraId`], [`StreamName`], [`SegmentId`], [`MediaType`]), instants and
//! half-open time ranges ([`Timestamp`], [`TimeRange`]), the configured
//! [`Limits`], and the [`Clock`] seam that lets tests control time.
//! It does no I/O and holds no wire (protobuf) types.

mod clock;
mod error;
mod ids;
mod limits;
mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::InvalidInput;
pub use ids::{CameraId, MediaType, SegmentId, StreamName};
pub use limits::Limits;
pub use time::{TimeRange, Timestamp};
