//! End-to-end tests: the three services over real gRPC on loopback. Tests live in tests/.
