//! Wire types of the Custody API, generated from `proto/custody/v1`.
//!
//! This crate owns code generation only; conversions to domain types live at
//! the server and client edges.

/// `custody.v1`: messages and services.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("custody.v1");
}

/// Encoded `FileDescriptorSet` of every Custody proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/custody_descriptor.bin"));
