//! Common code of souk's servers: the gRPC bootstrap every service shares (health, reflection,
//! tower layers for timeouts, load shedding, admin auth and metrics, graceful shutdown),
//! Prometheus metrics over HTTP, telemetry, and the flags every server takes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), souk_shared::Error> {
//! use souk_shared::server::{GrpcServer, ServerOptions};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = GrpcServer::new("demo", ServerOptions::default()).await?;
//! // server.add_service(MyServiceServer::new(handler), &["OpenWrite"])?;
//! server.health().set_ready().await;
//! server.serve(listener, souk_shared::shutdown::signal()).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod config;
pub mod deadline;
pub mod gateway;
pub mod metrics;
pub mod server;
pub mod shed;
pub mod shutdown;
pub mod storage;
pub mod telemetry;

/// What can go wrong while bootstrapping or running a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {0} for {1}: {2}")]
    Bind(std::net::SocketAddr, &'static str, std::io::Error),
    #[error("descriptor set: {0}")]
    Descriptors(String),
    #[error("invalid address {0:?}: {1}")]
    Address(String, String),
}
