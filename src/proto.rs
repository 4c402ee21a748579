//! The gRPC contract compiled from `proto/` (see `build.rs`): the generic
//! publisher, the messaging options, and the o5-compatible bridge.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod outbox {
    pub mod messaging {
        pub mod v1 {
            tonic::include_proto!("outbox.messaging.v1");
        }
    }
    pub mod v1 {
        tonic::include_proto!("outbox.v1");
    }
}

pub mod o5 {
    pub mod messaging {
        pub mod v1 {
            tonic::include_proto!("o5.messaging.v1");
            pub mod topic {
                tonic::include_proto!("o5.messaging.v1.topic");
            }
        }
    }
}

/// The contract's FileDescriptorSet, for server reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/outbox_descriptors.bin"));
