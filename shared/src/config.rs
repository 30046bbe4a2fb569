//! Flags every server takes, as a clap group to `#[command(flatten)]`.
use std::net::SocketAddr;
use std::time::Duration;

use crate::server::ServerOptions;

/// Settings common to every souk server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address the Prometheus `/metrics` endpoint listens on; unset disables it.
    #[arg(long, env = "SOUK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address where the unary RPCs are also answered as JSON over HTTP/1.1 (`POST
    /// /souk.ranker.v1.Ranker/Rank`, `content-type: application/json`); unset: gRPC only.
    #[arg(long, env = "SOUK_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Browser origin allowed to call the HTTP endpoint (CORS), e.g. `https://shop.example`;
    /// repeat the flag or separate with commas; `*` allows any. Unset: no browser origin.
    #[arg(
        long = "http-cors-origin",
        env = "SOUK_HTTP_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub http_cors_origins: Vec<String>,
    /// The only methods answered over HTTP (`Rank`, or `souk.ranker.v1.Ranker/Rank`); repeat
    /// the flag or separate with commas. Unset: every method HTTP serves. Name the shopper's
    /// methods (`Rank,Suggest`) when browsers or the internet reach the HTTP port, so that
    /// `Stats`, `UserProfile` and the shop's rules stay behind it.
    #[arg(long = "http-method", env = "SOUK_HTTP_METHODS", value_delimiter = ',')]
    pub http_methods: Vec<String>,
    /// Lets browsers and CDNs keep a GET answer this many seconds (`cache-control:
    /// max-age`; `private` when the request names a `user_id`, else `public`). 0: no
    /// `cache-control` header. A catalog change shows once the kept answers expire.
    #[arg(long, env = "SOUK_HTTP_CACHE_MAX_AGE_S", default_value_t = 0)]
    pub http_cache_max_age_s: u64,
    /// Deadline for one request, in milliseconds.
    #[arg(long, env = "SOUK_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Requests served at once; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "SOUK_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Token that admin RPCs (loading and training) require as `authorization: Bearer <token>`.
    /// Unset: admin RPCs are open (fine on one machine, not in a shared cluster).
    #[arg(long, env = "SOUK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            metrics_listen: None,
            http_listen: None,
            http_cors_origins: Vec::new(),
            http_methods: Vec::new(),
            http_cache_max_age_s: 0,
            request_timeout_ms: 30_000,
            concurrency_limit: 256,
            admin_token: None,
        }
    }
}

impl ServerArgs {
    /// The options [`crate::server::GrpcServer`] takes.
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            concurrency_limit: self.concurrency_limit.max(1),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            metrics_listen: self.metrics_listen,
            http_listen: self.http_listen,
            http_cors_origins: self.http_cors_origins.clone(),
            http_methods: self.http_methods.clone(),
            http_cache_max_age_s: self.http_cache_max_age_s,
        }
    }
}
