//! The knowledge-graph gRPC service, its sled store and the souk-kg binary.
