//! Generated code for `transferguard.v1`: messages, tonic clients and servers,
//! and their canonical proto3 JSON (pbjson).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/transferguard.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/transferguard.v1.serde.rs"));

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/transferguard_descriptor.bin"));
