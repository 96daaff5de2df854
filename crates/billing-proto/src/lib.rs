//! Generated protobuf messages and gRPC stubs for `billing.v1`; nothing else.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("billing.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("billing_descriptor");
}
