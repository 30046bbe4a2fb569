//! Explicit backpressure: at most N requests in flight; the next one is answered
//! RESOURCE_EXHAUSTED at once instead of queueing without bound.
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either, Ready, ready};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// Sheds load above `limit` concurrent requests. Health and reflection (`/grpc.*`) are never
/// shed, so an overloaded server still answers its probes.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl LoadShedLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LoadShed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        BoxFuture<'static, Result<S::Response, S::Error>>,
        Ready<Result<S::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.") {
            let future = self.inner.call(request);
            return Either::Left(Box::pin(future));
        }
        match self.layer.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(request);
                Either::Left(Box::pin(async move {
                    let response = future.await;
                    drop(permit);
                    response
                }))
            }
            Err(_) => {
                let status = tonic::Status::resource_exhausted(format!(
                    "server busy: {} requests in flight; retry with backoff",
                    self.layer.limit
                ));
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}
