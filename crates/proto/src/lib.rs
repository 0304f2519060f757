//! Tollgate's v1 gRPC contracts, generated from `proto/` at build time.

/// `tollgate.keys.v1`: accounts, applications, groups, models, keys, audit, key state.
pub mod keys {
    pub mod v1 {
        tonic::include_proto!("tollgate.keys.v1");
    }
}

/// `tollgate.authz.v1`: the Authorize hot path.
pub mod authz {
    pub mod v1 {
        tonic::include_proto!("tollgate.authz.v1");
    }
}

/// `tollgate.metering.v1`: usage reports, balances and usage queries.
pub mod metering {
    pub mod v1 {
        tonic::include_proto!("tollgate.metering.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Tollgate proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");
