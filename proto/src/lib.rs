//! The gRPC contract between souk's services, generated from `proto/souk/**/v1/*.proto`.
//!
//! ```
//! use souk_proto::ranker::v1::RankRequest;
//! let request = RankRequest { query: "trail shoes".into(), k: 10, ..Default::default() };
//! assert_eq!(request.k, 10);
//! ```

/// `souk.encoder.v1`: text to vectors.
pub mod encoder {
    pub mod v1 {
        tonic::include_proto!("souk.encoder.v1");
    }
}

/// `souk.kg.v1`: the knowledge graph.
pub mod kg {
    pub mod v1 {
        tonic::include_proto!("souk.kg.v1");
    }
}

/// `souk.ranker.v1`: ranking, catalog and interactions.
pub mod ranker {
    pub mod v1 {
        tonic::include_proto!("souk.ranker.v1");
    }
}

/// Encoded `FileDescriptorSet` of every souk proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/souk_descriptor.bin"));
