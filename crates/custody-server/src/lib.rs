//! Custody's server: the node and its gRPC services.
//!
//! This crate owns the wiring of store, catalog and keyring into a [`Node`]
//! (ingest, read, export, startup recovery, catalog rebuild), the gRPC
//! services over it, and the one mapping from domain errors to gRPC statuses.
//! Binaries (`custodyd`) live in `custody-cli`.

mod audit;
pub mod authz;
mod caller;
mod cluster;
mod commit;
mod compliance;
mod config;
mod error;
mod evidence;
pub mod grpc;
pub mod identity;
mod ingest;
mod metrics;
mod node;
mod playback;
mod read;
mod rebuild;
mod retention;

pub use audit::{AuditEvent, AuditLog};
pub use caller::{Caller, CameraScope, Role};
pub use cluster::{ClusterView, MemberView};
pub use compliance::{
    AuditStatus, CameraCompliance, ComplianceReport, ScanProgress, Violation, ViolationKind,
    ViolationSegment,
};
pub use config::{
    AuditConfig, AuthConfig, CatalogConfig, ComplianceConfig, KeysConfig, ListenerConfig,
    ListenerTls, RetentionConfig, ServerConfig, ServiceKind,
};
pub use error::ServerError;
pub use evidence::{signing_key_path, BundlePart, EvidenceScope};
pub use ingest::{IngestHeader, IngestPart, IngestReceipt};
pub use node::{load_keyring, Node};
pub use read::{OpenSegment, DEFAULT_READ_PIECE};
pub use rebuild::RebuildReport;
pub use retention::{Deletion, HoldCoverage, HoldState, SweepReport};
