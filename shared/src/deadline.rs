//! Request deadlines: the server's default (`--request-timeout-ms`) or the caller's shorter
//! `grpc-timeout`, whichever comes first, answered DEADLINE_EXCEEDED.
//!
//! Bulk admin RPCs (a 5M-triple `LoadTriples` stream, a catalog upload) run as long as their
//! input does: they get no server default, only a deadline their caller sets. tonic's built-in
//! `Server::timeout` cannot tell them apart, and cut every load at 30 s.
use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::{Layer, Service};

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default: Duration,
    exempt: Arc<HashSet<String>>,
}

impl DeadlineLayer {
    /// `exempt` holds full method paths (`/souk.kg.v1.KnowledgeGraph/LoadTriples`).
    pub fn new(default: Duration, exempt: &[String]) -> Self {
        Self {
            default,
            exempt: Arc::new(exempt.iter().cloned().collect()),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

/// The `grpc-timeout` header: digits (at most 8) and a unit, `H M S m u n`.
fn grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let caller = request.headers().get("grpc-timeout").and_then(grpc_timeout);
        let server =
            (!self.layer.exempt.contains(request.uri().path())).then_some(self.layer.default);
        let deadline = match (caller, server) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match deadline {
                None => future.await,
                Some(limit) => match tokio::time::timeout(limit, future).await {
                    Ok(response) => response,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded",
                        limit.as_millis()
                    ))
                    .into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units_and_rejects_junk() {
        let v = |s: &'static str| grpc_timeout(&http::HeaderValue::from_static(s));
        assert_eq!(v("250m"), Some(Duration::from_millis(250)));
        assert_eq!(v("2S"), Some(Duration::from_secs(2)));
        assert_eq!(v("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(v("5x"), None);
        assert_eq!(v("m"), None);
        assert_eq!(v("123456789S"), None, "more than 8 digits");
    }
}
