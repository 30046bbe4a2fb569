//! The ranker gRPC service, its sled store, encoder/graph clients and the souk-ranker binary.
