//! Admin authorization as a tower layer: the RPCs that change or retrain state require
//! `authorization: Bearer <token>` when a token is configured.
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

/// Rejects calls to `admin_methods` (full gRPC paths, e.g. `/souk.kg.v1.KnowledgeGraph/LoadTriples`)
/// that lack the configured bearer token. With no token configured, it lets everything through.
#[derive(Debug, Clone)]
pub struct AdminAuthLayer {
    expected: Option<Arc<str>>,
    admin_methods: Arc<[String]>,
}

impl AdminAuthLayer {
    pub fn new(token: Option<&str>, admin_methods: &[String]) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").as_str())),
            admin_methods: admin_methods.into(),
        }
    }
}

impl<S> Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminAuth {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminAuth<S> {
    inner: S,
    layer: AdminAuthLayer,
}

/// Compares in time independent of where the strings first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AdminAuth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(expected) = &self.layer.expected {
            let path = request.uri().path();
            if self.layer.admin_methods.iter().any(|m| m == path) {
                let presented = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if !constant_time_eq(presented, expected.as_bytes()) {
                    let status = tonic::Status::unauthenticated(
                        "admin RPC: send `authorization: Bearer <token>` with the deployment's SOUK_ADMIN_TOKEN",
                    );
                    return Either::Right(ready(Ok(status.into_http())));
                }
            }
        }
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_rejects_prefixes_and_accepts_equal() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"", b"Bearer abc"));
    }
}
