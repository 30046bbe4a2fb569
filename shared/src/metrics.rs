//! Prometheus metrics: per-RPC request counts and latency histograms recorded by a tower layer,
//! and a minimal HTTP endpoint that serves `/metrics` in the text exposition format.
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Layer, Service};

use crate::Error;

/// How long a client of the metrics endpoint has to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The metrics endpoint's answer to the request whose head is `head`: the metrics (`render`)
/// for `GET` or `HEAD /metrics` (a query string is ignored), 405 for another method on it,
/// 404 for any other path (a probe or a scrape pointed at the wrong path fails instead of
/// passing on the metrics).
fn reply(head: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default();
    let path = words
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let (status, extra, body, send_body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "content-type: text/plain; version=0.0.4\r\n",
            render(),
            method == "GET",
        ),
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "allow: GET, HEAD\r\n",
            "only GET and HEAD read /metrics\n".to_string(),
            true,
        ),
        _ => (
            "404 Not Found",
            "",
            "not found: the metrics are at /metrics\n".to_string(),
            true,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// One service's registry with the per-RPC metrics every server records.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    /// A registry whose metrics carry `service="<service>"`.
    ///
    /// # Errors
    /// When `service` is not a valid label value (never for a literal name).
    pub fn new(service: &str) -> Result<Self, Error> {
        let labels = std::iter::once(("service".to_string(), service.to_string())).collect();
        let registry = Registry::new_custom(Some("souk".into()), Some(labels))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "grpc_requests_total",
                "gRPC requests by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "grpc_request_duration_seconds",
                "gRPC request latency until response headers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
        })
    }

    /// The registry, for a service to add its own metrics (queue depth, batch sizes...).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn layer(self: &Arc<Self>) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    /// The text exposition of every metric in the registry.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Serves `GET /metrics` on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                // Read the request head (bounded in size and time: a client that sends none
                // does not hold a task and a socket for good).
                let reading = async {
                    let mut head = [0u8; 4096];
                    let mut read = 0;
                    while read < head.len() {
                        match stream.read(&mut head[read..]).await {
                            Ok(0) | Err(_) => return None,
                            Ok(n) => read += n,
                        }
                        if head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Some(head[..read].to_vec())
                };
                let Ok(Some(head)) = tokio::time::timeout(HEAD_TIMEOUT, reading).await else {
                    return;
                };
                let response = reply(&head, || metrics.render());
                let _ = stream.write_all(&response).await;
            });
        }
    }

    /// Binds `addr` and serves metrics on it in a background task; returns the bound address.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn spawn_http(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((local, tokio::spawn(self.serve_http(listener))))
    }
}

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            // Errors answered before any message carry grpc-status in the headers
            // ("trailers-only"); a stream that fails later reports it in trailers.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".to_string()),
                Err(_) => "TransportError".to_string(),
            };
            metrics
                .latency
                .with_label_values(&[method.as_str()])
                .observe(started.elapsed().as_secs_f64());
            metrics
                .requests
                .with_label_values(&[method.as_str(), code.as_str()])
                .inc();
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reply;

    fn answer(request: &str) -> String {
        String::from_utf8(reply(request.as_bytes(), || "souk_x 1\n".to_string())).unwrap()
    }

    #[test]
    fn only_the_metrics_path_answers_the_metrics() {
        let got = answer("GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nsouk_x 1\n"), "{got}");
        let got = answer("GET /metrics?name[]=souk_x HTTP/1.1\r\n\r\n");
        assert!(got.ends_with("souk_x 1\n"), "{got}");
        // HEAD: the length of what GET sends, and no body.
        let got = answer("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            got.contains("content-length: 9\r\n") && got.ends_with("\r\n\r\n"),
            "{got}"
        );

        let got = answer("POST /metrics HTTP/1.1\r\n\r\n");
        assert!(
            got.starts_with("HTTP/1.1 405 ") && got.contains("allow: GET, HEAD"),
            "{got}"
        );
        for other in [
            "GET / HTTP/1.1",
            "GET /healthz HTTP/1.1",
            "GET /metricsx HTTP/1.1",
            "\u{1}",
        ] {
            let got = answer(&format!("{other}\r\n\r\n"));
            assert!(
                got.starts_with("HTTP/1.1 404 ") && !got.contains("souk_x"),
                "{got}"
            );
        }
    }
}
