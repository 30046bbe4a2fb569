//! End-to-end tests: real servers on 127.0.0.1:0 with the real model and real sled stores,
//! called through generated tonic clients. One test binary (modules below) to save link time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod degradation;
mod encoder;
mod eval;
mod graph;
mod http;
mod models;
mod random_requests;
mod replicas;
mod suite;
