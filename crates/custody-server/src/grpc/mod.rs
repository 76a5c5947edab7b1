//! The gRPC edge: wire ↔ domain conversion, the services, and serving them.

mod accept;
mod archive;
mod audit;
mod compliance;
mod convert;
mod evidence;
mod ingest;
mod node;
mod retention;
mod serve;

pub use archive::ArchiveApi;
pub use audit::AuditApi;
pub use compliance::{report_to_proto, ComplianceApi};
pub use convert::{from_proto_ts, segment_info, to_proto_ts};
pub use evidence::EvidenceApi;
pub use ingest::IngestApi;
pub use node::NodeApi;
pub use retention::RetentionApi;
pub use serve::{serve, Serving};
