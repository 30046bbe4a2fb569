//! The gRPC bootstrap every souk server shares: health tied to readiness, reflection over the
//! souk descriptor set, tower layers (metrics, load shedding, admin auth, timeout, tracing),
//! an optional Prometheus endpoint and graceful shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::Error;
use crate::auth::AdminAuthLayer;
use crate::deadline::DeadlineLayer;
use crate::gateway::{Cors, Gateway};
use crate::metrics::Metrics;
use crate::shed::LoadShedLayer;

/// Accepted connections with Nagle's algorithm off: tonic ignores its own TCP settings for a
/// caller-provided listener, and with Nagle on, small responses wait ~40 ms for a delayed ACK.
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// How a server behaves under load and who may call its admin RPCs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Deadline of one request (a client's shorter `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// Requests in flight at once; more are answered RESOURCE_EXHAUSTED.
    pub concurrency_limit: usize,
    /// Bearer token admin RPCs require; `None` leaves them open.
    pub admin_token: Option<String>,
    /// Where `/metrics` is served; `None` disables the endpoint (metrics are still recorded).
    pub metrics_listen: Option<SocketAddr>,
    /// Where the unary methods are also served as JSON over HTTP/1.1 ([`crate::gateway`]);
    /// `None`: gRPC only.
    pub http_listen: Option<SocketAddr>,
    /// Browser origins allowed to call the HTTP gateway (`*`: any); empty: none.
    pub http_cors_origins: Vec<String>,
    /// The only methods the HTTP gateway answers (`Rank` or `souk.ranker.v1.Ranker/Rank`);
    /// empty: every method HTTP can serve (those whose answer does not stream).
    pub http_methods: Vec<String>,
    /// Seconds a GET answer may be kept by browsers and CDNs (`cache-control`); 0: no header.
    pub http_cache_max_age_s: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 256,
            admin_token: None,
            metrics_listen: None,
            http_listen: None,
            http_cors_origins: Vec::new(),
            http_methods: Vec::new(),
            http_cache_max_age_s: 0,
        }
    }
}

/// `grpc.health.v1` for one server: NOT_SERVING from the start until [`Health::set_ready`].
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    /// Marks the server and every service it hosts SERVING.
    pub async fn set_ready(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Marks the server and every service it hosts NOT_SERVING.
    pub async fn set_not_ready(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// The full paths of the methods of `service` (a full name, `souk.ranker.v1.Ranker`) that
/// need the admin token: those with side effects (not marked `NO_SIDE_EFFECTS` in souk's
/// protos), less the ones `open` names.
///
/// # Errors
/// When `service` is not in souk's descriptor set or `open` names a method it lacks.
pub fn admin_methods(service: &str, open: &[&str]) -> Result<Vec<String>, Error> {
    let pool = prost_reflect::DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| Error::Descriptors(e.to_string()))?;
    let Some(descriptor) = pool.get_service_by_name(service) else {
        return Err(Error::Descriptors(format!(
            "service {service} is not in souk's protos"
        )));
    };
    if let Some(missing) = open
        .iter()
        .find(|m| !descriptor.methods().any(|d| d.name() == **m))
    {
        return Err(Error::Descriptors(format!(
            "{service} has no method {missing} to leave open"
        )));
    }
    Ok(descriptor
        .methods()
        .filter(|m| !crate::gateway::has_no_side_effects(m) && !open.contains(&m.name()))
        .map(|m| format!("/{service}/{}", m.name()))
        .collect())
}

/// A server under construction: add services, mark it ready when its state is loaded, serve.
pub struct GrpcServer {
    options: ServerOptions,
    routes: Routes,
    health: Health,
    metrics: Arc<Metrics>,
    admin_methods: Vec<String>,
}

impl GrpcServer {
    /// A server named `name` (the `service` label of its metrics) with health (NOT_SERVING until
    /// ready) routed; reflection is added when it serves.
    ///
    /// # Errors
    /// When the reflection descriptor set cannot be decoded or the metrics cannot be registered.
    pub async fn new(name: &str, options: ServerOptions) -> Result<Self, Error> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let routes = Routes::new(health_service);
        Ok(Self {
            options,
            routes,
            health: Health {
                reporter,
                services: Vec::new(),
            },
            metrics: Arc::new(Metrics::new(name)?),
            admin_methods: Vec::new(),
        })
    }

    /// Routes a tonic service. Every method of it that changes state needs the admin token:
    /// each one its proto does not mark `idempotency_level = NO_SIDE_EFFECTS`, except those
    /// `open` names (by name, e.g. `"RecordInteractions"`: shop backends send events). So a
    /// write added to a proto is guarded from the start, without a list to remember (the
    /// ranker's `SetPins`, once left off such a list, took anyone's rules). Admin methods are
    /// bulk operations (streamed loads, training): they get no server-side default deadline,
    /// only the one their caller sets.
    ///
    /// # Errors
    /// When the service is not in souk's descriptor set, or `open` names a method it lacks.
    pub fn add_service<S>(&mut self, service: S, open: &[&str]) -> Result<&mut Self, Error>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let name = S::NAME;
        self.admin_methods.extend(admin_methods(name, open)?);
        self.health.services.push(name);
        let routes = std::mem::take(&mut self.routes);
        self.routes = routes.add_service(service);
        Ok(self)
    }

    /// The health handle: mark the server ready once its model or store is loaded.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The registry, for service-specific metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves on `listener` (and JSON over HTTP on `http_listen`, when set) until `shutdown`
    /// completes, then drains open calls.
    ///
    /// # Errors
    /// When the metrics or HTTP address cannot be bound or the transport fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let options = self.options;
        // Reflection advertises exactly the services this server hosts (plus health). v1 for
        // current tools; v1alpha for grpcio-reflection and older grpcurl.
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(souk_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            self.health
                .services
                .iter()
                .fold(builder, |b, name| b.with_service_name(*name))
        };
        let routes = self
            .routes
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        let metrics_task = match options.metrics_listen {
            Some(addr) => {
                let (bound, task) = self.metrics.clone().spawn_http(addr).await?;
                tracing::info!(%bound, "metrics on http://{bound}/metrics");
                Some(task)
            }
            None => None,
        };
        let layers = ServiceBuilder::new()
            .layer(self.metrics.layer())
            .layer(LoadShedLayer::new(options.concurrency_limit))
            .layer(AdminAuthLayer::new(
                options.admin_token.as_deref(),
                &self.admin_methods,
            ))
            .layer(DeadlineLayer::new(
                options.request_timeout,
                &self.admin_methods,
            ))
            .into_inner();
        // The HTTP gateway sends each call through the same layers (one concurrency limit,
        // one token check) into the same routes.
        let gateway = match options.http_listen {
            Some(addr) => {
                let http = TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::Bind(addr, "JSON over HTTP", e))?;
                let stack = ServiceBuilder::new()
                    .layer(layers.clone())
                    .service(routes.clone());
                let gateway = Gateway::new(
                    &[
                        souk_proto::FILE_DESCRIPTOR_SET,
                        tonic_health::pb::FILE_DESCRIPTOR_SET,
                    ],
                    std::iter::once("grpc.health.v1.Health")
                        .chain(self.health.services.iter().copied())
                        .map(String::from)
                        .collect(),
                    BoxCloneSyncService::new(stack),
                    Cors::new(&options.http_cors_origins),
                    &options.http_methods,
                )?
                .with_cache_max_age(options.http_cache_max_age_s);
                if !options.http_cors_origins.is_empty() && options.http_methods.is_empty() {
                    tracing::warn!(
                        "browsers of the allowed origins may call every method over HTTP \
                         (Stats, UserProfile, the shop's rules): --http-method Rank,Suggest \
                         serves only those"
                    );
                }
                let bound = http.local_addr()?;
                tracing::info!(%bound, "JSON over HTTP on http://{bound}/<service>/<method>");
                Some((Arc::new(gateway), http))
            }
            None => None,
        };
        let shutdown = shutdown.shared();
        let grpc = Server::builder()
            .tcp_nodelay(true)
            .trace_fn(|request| tracing::debug_span!("grpc", path = %request.uri().path()))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listener), shutdown.clone());
        let http = async {
            if let Some((gateway, http)) = gateway {
                gateway.serve(http, shutdown.clone()).await;
            }
        };
        let (result, ()) = tokio::join!(grpc, http);
        if let Some(task) = metrics_task {
            task.abort();
        }
        self.health.set_not_ready().await;
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic_health::pb::HealthCheckRequest;

    #[test]
    fn every_write_needs_the_token_unless_left_open() {
        let ranker = admin_methods("souk.ranker.v1.Ranker", &["RecordInteractions"]).unwrap();
        let path = |m: &str| format!("/souk.ranker.v1.Ranker/{m}");
        for write in [
            "UpsertItems",
            "UpdateItems",
            "DeleteItems",
            "ForgetUsers",
            "TrainCf",
            "SetFusion",
            "Reembed",
            "SetSynonyms",
            "SetPins",
            "Follow",
            "RecordSearches",
        ] {
            assert!(ranker.contains(&path(write)), "{write}: {ranker:?}");
        }
        for open in ["Rank", "Suggest", "Stats", "GetPins", "RecordInteractions"] {
            assert!(!ranker.contains(&path(open)), "{open}: {ranker:?}");
        }
        let kg = admin_methods("souk.kg.v1.KnowledgeGraph", &[]).unwrap();
        assert_eq!(
            kg,
            [
                "/souk.kg.v1.KnowledgeGraph/LoadTriples",
                "/souk.kg.v1.KnowledgeGraph/TrainEmbeddings"
            ]
        );
        assert!(
            admin_methods("souk.encoder.v1.Encoder", &[])
                .unwrap()
                .is_empty()
        );
        let err = admin_methods("souk.ranker.v1.Ranker", &["RecordEvents"]).unwrap_err();
        assert!(err.to_string().contains("no method RecordEvents"), "{err}");
        let err = admin_methods("souk.shop.v1.Shop", &[]).unwrap_err();
        assert!(err.to_string().contains("souk.shop.v1.Shop"), "{err}");
    }
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;

    /// A bare server on 127.0.0.1:0, running; a health client to it; its stop switch.
    struct Running {
        health: Health,
        metrics: Arc<Metrics>,
        client: HealthClient<tonic::transport::Channel>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), Error>>,
    }

    /// Waits (2 s at most) for the HTTP gateway, bound inside `serve`, to take connections.
    async fn listening(addr: SocketAddr) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the HTTP gateway never listened on {addr}");
    }

    async fn start() -> Running {
        start_with(ServerOptions::default()).await
    }

    async fn start_with(options: ServerOptions) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = GrpcServer::new("test", options).await.unwrap();
        let (health, metrics) = (server.health(), server.metrics());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        let channel =
            crate::client::lazy_channel(&addr.to_string(), Duration::from_secs(5)).unwrap();
        let client = HealthClient::new(channel);
        Running {
            health,
            metrics,
            client,
            stop,
            task,
        }
    }

    #[tokio::test]
    async fn health_says_serving_only_after_ready() {
        let Running {
            health,
            metrics: _,
            mut client,
            stop,
            task,
        } = start().await;
        let check = |c: &mut HealthClient<_>| {
            let mut c = c.clone();
            async move {
                c.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
            }
        };
        assert_eq!(check(&mut client).await, Wire::NotServing as i32);
        health.set_ready().await;
        assert_eq!(check(&mut client).await, Wire::Serving as i32);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn every_rpc_is_counted_and_timed_on_the_metrics_endpoint() {
        let Running {
            health: _,
            metrics,
            mut client,
            stop,
            task,
        } = start().await;
        let (http, _task) = metrics
            .clone()
            .spawn_http("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for _ in 0..3 {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
        }
        let _ = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await;
        let reply = souk_testkit::http_call(http, "GET", "/metrics", &[], b"").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = reply.body;
        let ok = body
            .lines()
            .find(|l| {
                l.starts_with("souk_grpc_requests_total")
                    && l.contains("Health/Check")
                    && l.contains("code=\"Ok\"")
            })
            .unwrap_or_else(|| panic!("no request counter in {body}"));
        assert!(ok.ends_with(" 3"), "three successful checks: {ok}");
        assert!(
            body.contains("code=\"NotFound\""),
            "the failed check is counted by its code"
        );
        assert!(
            body.contains("souk_grpc_request_duration_seconds_bucket"),
            "latency histogram"
        );
        assert!(body.contains("service=\"test\""));
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// The health service's `Check` over the HTTP gateway: the JSON a caller without gRPC sends
    /// and gets, and each way a call can be wrong answered with its HTTP status and a Connect
    /// error body naming what was wrong.
    #[tokio::test]
    async fn unary_methods_answer_json_over_http_and_bad_calls_say_why() {
        use souk_testkit::{http_call, post_json};
        let http: SocketAddr = format!("127.0.0.1:{}", souk_testkit::free_port())
            .parse()
            .unwrap();
        let Running {
            health,
            metrics,
            client: _,
            stop,
            task,
        } = start_with(ServerOptions {
            http_listen: Some(http),
            ..ServerOptions::default()
        })
        .await;
        let check = "/grpc.health.v1.Health/Check";
        listening(http).await;
        let reply = post_json(http, check, "{}").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.body, r#"{"status":"NOT_SERVING"}"#);
        health.set_ready().await;
        let reply = post_json(http, check, r#"{"service": ""}"#).await;
        assert_eq!(reply.body, r#"{"status":"SERVING"}"#);
        // An empty body is the empty message.
        let reply = post_json(http, check, "").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"status":"SERVING"}"#)
        );

        let error = |reply: &souk_testkit::HttpReply| -> (u16, String, String) {
            let body: serde_json::Value =
                serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
            (
                reply.status,
                body["code"].as_str().unwrap().to_string(),
                body["message"].as_str().unwrap().to_string(),
            )
        };
        // The service's own error keeps its code and message.
        let (status, code, message) =
            error(&post_json(http, check, r#"{"service": "no.such.Service"}"#).await);
        assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
        // A misspelt field, a wrong type and trailing text are the caller's fault.
        for (body, names) in [
            (r#"{"servce": ""}"#, "servce"),
            (r#"{"service": 7}"#, "line 1 column"),
            (r#"{"service": ""} {}"#, "trailing"),
            ("{", "EOF"),
        ] {
            let (status, code, message) = error(&post_json(http, check, body).await);
            assert_eq!(
                (status, code.as_str()),
                (400, "invalid_argument"),
                "{body}: {message}"
            );
            assert!(message.contains("HealthCheckRequest"), "{message}");
            assert!(message.contains(names), "{body}: {message} lacks {names:?}");
        }
        let reply = http_call(http, "GET", check, &[], b"").await;
        assert_eq!(reply.status, 405, "{reply:?}");
        assert_eq!(reply.header("allow"), Some("POST"));
        let reply = http_call(
            http,
            "POST",
            check,
            &[("content-type", "text/plain")],
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 415, "{reply:?}");
        assert_eq!(reply.header("accept-post"), Some("application/json"));
        // A compressed body is refused as such, not read as broken JSON; identity is read.
        let encoded = async |coding: &str| {
            let headers = [
                ("content-type", "application/json"),
                ("content-encoding", coding),
            ];
            http_call(http, "POST", check, &headers, b"{}").await
        };
        let reply = encoded("gzip").await;
        assert_eq!(reply.status, 415, "{reply:?}");
        assert_eq!(reply.header("accept-encoding"), Some("identity"));
        assert!(
            reply.body.contains("unimplemented")
                && reply.body.contains("gzip")
                && reply.body.contains("send the body uncompressed"),
            "{reply:?}"
        );
        let reply = encoded("identity").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let (status, code, message) =
            error(&post_json(http, "/grpc.health.v1.Health/Watch", "{}").await);
        assert_eq!((status, code.as_str()), (501, "unimplemented"));
        assert!(message.contains("streams"), "{message}");
        for path in [
            "/no.such.Service/Check",
            "/grpc.health.v1.Health/Nope",
            "/",
            "/x",
        ] {
            let (status, code, message) = error(&post_json(http, path, "{}").await);
            assert_eq!((status, code.as_str()), (404, "unimplemented"), "{path}");
            assert!(message.contains(path), "{message}");
        }
        let big = format!(
            r#"{{"service": "{}"}}"#,
            "x".repeat(crate::gateway::MAX_BODY_BYTES)
        );
        let (status, code, _) = error(&post_json(http, check, &big).await);
        assert_eq!((status, code.as_str()), (413, "resource_exhausted"));
        let reply = http_call(
            http,
            "POST",
            check,
            &[
                ("content-type", "application/json"),
                ("connect-timeout-ms", "soon"),
            ],
            b"{}",
        )
        .await;
        let (status, _, message) = error(&reply);
        assert_eq!(status, 400);
        assert!(message.contains("connect-timeout-ms"), "{message}");
        let reply = http_call(
            http,
            "POST",
            check,
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("connect-timeout-ms", "5000"),
            ],
            b"{}",
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");

        // HTTP calls pass through the same layers as gRPC calls: they are counted.
        let rendered = metrics.render();
        let ok = rendered
            .lines()
            .find(|l| {
                l.starts_with("souk_grpc_requests_total")
                    && l.contains("Health/Check")
                    && l.contains("code=\"Ok\"")
            })
            .unwrap_or_else(|| panic!("no request counter in {rendered}"));
        assert!(ok.ends_with(" 5"), "five answered checks: {ok}");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// A shop's page calling from a browser: the preflight of an allowed origin is answered
    /// with what it may send, and its calls carry the origin back; another origin gets no
    /// CORS header (the browser then refuses the answer) and its preflight is refused.
    /// `--http-method` names the only methods HTTP answers; a name the server cannot serve
    /// stops it at start, saying why.
    #[tokio::test]
    async fn only_the_named_methods_answer_over_http_and_bad_names_stop_the_start() {
        let addr: SocketAddr = format!("127.0.0.1:{}", souk_testkit::free_port())
            .parse()
            .unwrap();
        let running = start_with(ServerOptions {
            http_listen: Some(addr),
            http_methods: vec!["grpc.health.v1.Health/Check".into()],
            ..ServerOptions::default()
        })
        .await;
        listening(addr).await;
        let reply = souk_testkit::post_json(addr, "/grpc.health.v1.Health/Check", "{}").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        running.stop.send(()).unwrap();
        running.task.await.unwrap().unwrap();

        for (methods, why) in [
            (vec!["Watch"], "--http-method Watch: it streams"),
            (
                vec!["Check", "Rank"],
                "--http-method Rank: no such method on this server; it has Check",
            ),
            (
                vec!["souk.ranker.v1.Ranker/Rank"],
                "--http-method souk.ranker.v1.Ranker/Rank: no such method",
            ),
        ] {
            let addr: SocketAddr = format!("127.0.0.1:{}", souk_testkit::free_port())
                .parse()
                .unwrap();
            let running = start_with(ServerOptions {
                http_listen: Some(addr),
                http_methods: methods.iter().map(|m| m.to_string()).collect(),
                ..ServerOptions::default()
            })
            .await;
            let error = running.task.await.unwrap().unwrap_err().to_string();
            assert!(error.contains(why), "{methods:?}: {error}");
        }
    }

    #[tokio::test]
    async fn browsers_may_call_from_the_allowed_origins_only() {
        use souk_testkit::http_call;
        let free = || -> SocketAddr {
            format!("127.0.0.1:{}", souk_testkit::free_port())
                .parse()
                .unwrap()
        };
        let (shop, anyone) = (free(), free());
        let one = start_with(ServerOptions {
            http_listen: Some(shop),
            http_cors_origins: vec!["https://Shop.example/".into()],
            ..ServerOptions::default()
        })
        .await;
        let any = start_with(ServerOptions {
            http_listen: Some(anyone),
            http_cors_origins: vec!["*".into()],
            ..ServerOptions::default()
        })
        .await;
        for addr in [shop, anyone] {
            listening(addr).await;
        }
        let check = "/grpc.health.v1.Health/Check";
        let preflight = |addr, origin| async move {
            http_call(
                addr,
                "OPTIONS",
                check,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
                b"",
            )
            .await
        };
        let post = |addr, origin| async move {
            http_call(
                addr,
                "POST",
                check,
                &[("origin", origin), ("content-type", "application/json")],
                b"{}",
            )
            .await
        };
        let reply = preflight(shop, "https://shop.example").await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(
            reply.header("access-control-allow-methods"),
            Some("GET, POST")
        );
        let allowed = reply.header("access-control-allow-headers").unwrap();
        assert!(allowed.contains("content-type") && allowed.contains("authorization"));
        let reply = post(shop, "https://shop.example").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(reply.header("vary"), Some("origin"));

        let reply = preflight(shop, "https://elsewhere.example").await;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert_eq!(reply.header("access-control-allow-origin"), None);
        let reply = post(shop, "https://elsewhere.example").await;
        assert_eq!(
            reply.status, 200,
            "a caller outside a browser still gets its answer"
        );
        assert_eq!(reply.header("access-control-allow-origin"), None);

        let reply = preflight(anyone, "https://elsewhere.example").await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        let reply = post(anyone, "https://elsewhere.example").await;
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        for running in [one, any] {
            running.stop.send(()).unwrap();
            running.task.await.unwrap().unwrap();
        }
    }
}
