//! Unary RPCs over HTTP/1.1 with JSON bodies, for callers that do not speak gRPC (a shop's PHP
//! or Node backend, `curl`). The wire format is the Connect protocol's unary call:
//!
//! ```text
//! POST /souk.ranker.v1.Ranker/Rank HTTP/1.1
//! content-type: application/json
//!
//! {"query": "trail shoes", "k": 5}
//! ```
//!
//! answered `200` with the response message as proto3 JSON (camelCase names, enums by name,
//! 64-bit integers as strings, default values left out), or an error status with
//! `{"code": "invalid_argument", "message": "..."}` (the gRPC code in snake case, its message
//! unchanged). Every call is transcoded in process into a gRPC request and sent through the
//! same tower stack as a gRPC call: metrics, load shedding, admin auth and deadlines treat the
//! two protocols alike, and both share one concurrency limit. `authorization` and other
//! metadata travel as headers; `connect-timeout-ms` becomes `grpc-timeout`.
//!
//! Browsers (a shop's search box calling `Suggest` as the shopper types) may call it from the
//! origins `--http-cors-origin` names: their preflight `OPTIONS` is answered and every answer
//! to them carries `access-control-allow-origin`.
//!
//! The JSON mapping comes from the descriptor set the servers already carry for reflection
//! (prost-reflect), so every unary method of a hosted service is reachable without generated
//! code. A method that takes a stream and answers once (the shop's events, bulk loads) takes
//! one message per call, one batch; methods whose answer streams stay gRPC only.
//! `--http-method` narrows what a port answers (`Rank,Suggest` for one browsers reach).
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::Error;

pub mod json;

/// Largest request body read: tonic's own default for a decoded gRPC message.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long open HTTP calls may finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// The in-process gRPC stack a call is sent through (routes behind the server's layers).
pub type GrpcStack = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE_S: &str = "7200";

/// Request headers a browser may send cross-origin: Connect's, and the admin token.
const CORS_HEADERS: &str =
    "content-type, connect-protocol-version, connect-timeout-ms, authorization";

/// Which browser origins may call the gateway (CORS).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// Origins as `https://shop.example` (scheme, host and any port; compared without case,
    /// a trailing `/` ignored), or `*` for any. Empty: no browser origin is allowed.
    pub fn new(origins: &[String]) -> Self {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins,
        }
    }

    /// The `access-control-allow-origin` value for a request's `origin`, when it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.origins.contains(&text).then(|| origin.clone())
    }
}

/// Serves the unary methods of `services` as JSON over HTTP/1.1.
pub struct Gateway {
    pool: DescriptorPool,
    services: Vec<String>,
    stack: GrpcStack,
    cors: Cors,
    /// How each unary method's reply is written as JSON, by the reply's type name (types
    /// holding a well-known type have none and take the dynamic path).
    plans: HashMap<String, json::JsonPlan>,
    /// Paths of the methods marked `idempotency_level = NO_SIDE_EFFECTS`: GET may call them.
    without_side_effects: HashSet<String>,
    /// Paths of the only methods answered (`--http-method`); `None`: every one HTTP can serve.
    served: Option<HashSet<String>>,
    /// Seconds a GET answer may be kept (`cache-control: max-age`); 0: no header.
    cache_max_age_s: u64,
}

/// The paths (`/service/Method`) of `methods` among the methods of `services` that HTTP can
/// serve (those whose answer does not stream); `None` when `methods` is empty (every one is
/// served).
fn served_methods(
    pool: &DescriptorPool,
    services: &[String],
    methods: &[String],
) -> Result<Option<HashSet<String>>, Error> {
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m.trim().trim_start_matches('/'))
        .filter(|m| !m.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let hosted: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| services.iter().any(|n| n == s.full_name()))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    let mut served = HashSet::new();
    for name in names {
        let bad = |why: String| Error::Descriptors(format!("--http-method {name}: {why}"));
        let found: Vec<&MethodDescriptor> = hosted
            .iter()
            .filter(|m| match name.split_once('/') {
                Some((service, method)) => {
                    m.parent_service().full_name() == service && m.name() == method
                }
                None => m.name() == name,
            })
            .collect();
        let method = match found[..] {
            [one] => one,
            [] => {
                // What HTTP can serve: every method whose answer does not stream.
                let mut servable: Vec<&str> = hosted
                    .iter()
                    .filter(|m| !m.is_server_streaming())
                    .map(|m| m.name())
                    .collect();
                servable.sort_unstable();
                servable.dedup();
                return Err(bad(format!(
                    "no such method on this server; it has {}",
                    servable.join(", ")
                )));
            }
            _ => {
                return Err(bad(
                    "more than one service has it: name it as <service>/<method>".into(),
                ));
            }
        };
        if method.is_server_streaming() {
            return Err(bad(
                "it streams its answer, which HTTP does not serve".into()
            ));
        }
        served.insert(format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ));
    }
    Ok(Some(served))
}

/// Whether the proto marks `method` `idempotency_level = NO_SIDE_EFFECTS`: a read, which GET
/// may call and which needs no admin token.
pub(crate) fn has_no_side_effects(method: &prost_reflect::MethodDescriptor) -> bool {
    let level = method
        .options()
        .get_field_by_name("idempotency_level")
        .and_then(|v| v.as_enum_number());
    // google.protobuf.MethodOptions.IdempotencyLevel.NO_SIDE_EFFECTS
    level == Some(1)
}

/// A call that cannot be answered 200: its HTTP status and the Connect error body.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: tonic::Code,
    message: String,
}

impl Failure {
    fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            code,
            message: message.into(),
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    fn into_response(self) -> http::Response<Full<Bytes>> {
        let body = serde_json::json!({
            "code": connect_code(self.code),
            "message": self.message,
        });
        let mut response = json_response(self.status, body.to_string().into());
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            response.headers_mut().insert(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::new(status.code(), status.message())
    }
}

/// A strong entity tag for an answer's bytes: 128 bits of their BLAKE3 hash, quoted. The same
/// answer gets the same tag from every replica and build.
pub fn entity_tag(body: &[u8]) -> String {
    let hash = blake3::hash(body);
    let hex: String = hash.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Whether an `if-none-match` value names `tag` (or is `*`), by the weak comparison RFC 9110
/// asks of it (a `W/` prefix is ignored).
fn matches_any(asked: &HeaderValue, tag: &str) -> bool {
    let Ok(asked) = asked.to_str() else {
        return false;
    };
    asked.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The HTTP status of a gRPC code (the mapping of `google.rpc.Code`, which Connect follows).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Connect's name of a gRPC code.
fn connect_code(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "canceled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Request headers that describe the HTTP call itself and are not passed on as metadata.
fn is_transport_header(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "content-type"
            | "content-length"
            | "content-encoding"
            | "accept"
            | "accept-encoding"
            | "expect"
    ) || name.as_str().starts_with("connect-")
        || name.as_str().starts_with("grpc-")
}

/// `connect-timeout-ms` (at most 10 digits) as a `grpc-timeout` value (at most 8 digits, so
/// longer waits are said in seconds).
fn grpc_timeout(value: &HeaderValue) -> Result<HeaderValue, Failure> {
    let bad = || {
        Failure::new(
            tonic::Code::InvalidArgument,
            "connect-timeout-ms: expected a whole number of milliseconds (at most 10 digits)",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms: u64 = text.parse().map_err(|_| bad())?;
    let grpc = if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", ms.div_ceil(1000).min(99_999_999))
    };
    HeaderValue::from_str(&grpc).map_err(|_| bad())
}

/// A POST's JSON body (4 MiB at most).
async fn post_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Failure::new(
            tonic::Code::InvalidArgument,
            "content-type: send application/json",
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    // A compressed body would otherwise be read as JSON and refused as "expected value at
    // line 1 column 1"; Connect's answer to a compression the server lacks is `unimplemented`,
    // and HTTP's is 415 with the codings it reads (RFC 9110, 15.5.16).
    if let Some(coding) = headers.get(header::CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("?").trim();
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            return Err(Failure::new(
                tonic::Code::Unimplemented,
                format!("content-encoding {coding:?}: send the body uncompressed"),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
    }
    Ok(Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Failure::new(
                    tonic::Code::ResourceExhausted,
                    format!("request body over {MAX_BODY_BYTES} bytes"),
                )
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                Failure::new(tonic::Code::Cancelled, format!("request body: {e}"))
            }
        })?
        .to_bytes())
}

/// The request message of a GET (Connect's form): `?encoding=json&message=<percent-encoded
/// JSON>`, or the JSON in URL-safe base64 with `base64=1`; no message is the empty request.
fn query_message(query: &str) -> Result<Bytes, Failure> {
    let bad = |what: String| Failure::new(tonic::Code::InvalidArgument, what);
    let (mut message, mut base64, mut encoding) = (None, false, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decoded(value)
            .ok_or_else(|| bad(format!("query: {name} is not percent-encoded")))?;
        match name {
            "message" => message = Some(value),
            "base64" => base64 = value == b"1",
            "encoding" => encoding = Some(value),
            "compression" if value.is_empty() || value == b"identity" => {}
            "compression" => {
                return Err(Failure::new(
                    tonic::Code::Unimplemented,
                    "compression: messages are sent uncompressed",
                )
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            }
            _ => {}
        }
    }
    if encoding.as_deref() != Some(b"json".as_slice()) {
        return Err(Failure::new(
            tonic::Code::InvalidArgument,
            "encoding: a GET says encoding=json (and the request as message=<JSON>)",
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let message = message.unwrap_or_default();
    if !base64 {
        return Ok(message.into());
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    base64::Engine::decode(&engine, &message)
        .map(Bytes::from)
        .map_err(|e| bad(format!("message: not URL-safe base64 ({e})")))
}

/// `%XX` escapes (and `+` for a space) decoded; `None` for a broken escape.
fn percent_decoded(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits, each checked (`u8::from_str_radix` would take "+f" as 0x0f).
                let digit = |at: usize| char::from(*bytes.get(at)?).to_digit(16);
                out.push((digit(i + 1)? * 16 + digit(i + 2)?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The one message of a unary gRPC response body: a 5-byte prefix (compressed flag, length)
/// and the message.
fn unframe(mut body: Bytes) -> Result<Bytes, Failure> {
    let internal = |what: &str| Failure::new(tonic::Code::Internal, format!("response: {what}"));
    if body.len() < 5 {
        return Err(internal("no message in the gRPC response"));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(internal("compressed gRPC message"));
    }
    if body.len() != length {
        return Err(internal("gRPC message length does not match its frame"));
    }
    Ok(body)
}

fn frame(message: &[u8]) -> Result<Bytes, Failure> {
    let length = u32::try_from(message.len())
        .map_err(|_| Failure::new(tonic::Code::ResourceExhausted, "request too large"))?;
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(length);
    framed.put_slice(message);
    Ok(framed.freeze())
}

impl Gateway {
    /// A gateway to the unary methods of `services` (full names, e.g. `souk.ranker.v1.Ranker`)
    /// described in `descriptor_sets` (encoded `FileDescriptorSet`s), sent through `stack`.
    ///
    /// `methods`, when not empty, are the only ones answered: each a method's name (`Rank`)
    /// or its service and name (`souk.ranker.v1.Ranker/Rank`).
    ///
    /// # Errors
    /// When a descriptor set cannot be decoded, or `methods` names a method the services do
    /// not hold, a streaming one, or a bare name two services hold.
    pub fn new(
        descriptor_sets: &[&[u8]],
        services: Vec<String>,
        stack: GrpcStack,
        cors: Cors,
        methods: &[String],
    ) -> Result<Self, Error> {
        let mut pool = DescriptorPool::new();
        for set in descriptor_sets {
            pool.decode_file_descriptor_set(*set)
                .map_err(|e| Error::Descriptors(e.to_string()))?;
        }
        let mut plans = HashMap::new();
        let mut without_side_effects = HashSet::new();
        for service in pool
            .services()
            .filter(|s| services.iter().any(|n| n == s.full_name()))
        {
            for method in service.methods() {
                if has_no_side_effects(&method) {
                    without_side_effects.insert(format!(
                        "/{}/{}",
                        service.full_name(),
                        method.name()
                    ));
                }
                let output = method.output();
                if let Ok(plan) = json::JsonPlan::new(&output) {
                    plans.insert(output.full_name().to_string(), plan);
                }
            }
        }
        let served = served_methods(&pool, &services, methods)?;
        Ok(Self {
            pool,
            services,
            stack,
            cors,
            plans,
            without_side_effects,
            served,
            cache_max_age_s: 0,
        })
    }

    /// Lets browsers and CDNs keep each successful GET answer `seconds` (0: no
    /// `cache-control` header): `private` when the request names a `user_id` (a shopper's
    /// own ranking: their browser may keep it, a shared cache may not), else `public`.
    pub fn with_cache_max_age(mut self, seconds: u64) -> Self {
        self.cache_max_age_s = seconds;
        self
    }

    /// Answers one HTTP request.
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let allowed = self.cors.allow(request.headers().get(header::ORIGIN));
        let mut response = if request.method() == Method::OPTIONS {
            self.preflight(allowed.is_some())
        } else {
            match self.call(request).await {
                Ok(response) => response,
                Err(failure) => failure.into_response(),
            }
        };
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = allowed {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        response
    }

    /// A browser's CORS preflight: 204 with what it may send, when its origin is allowed.
    fn preflight(&self, allowed: bool) -> http::Response<Full<Bytes>> {
        if !allowed {
            return Failure::new(
                tonic::Code::PermissionDenied,
                "this origin may not call from a browser: the server allows the origins \
                 --http-cors-origin names",
            )
            .into_response();
        }
        let mut response = http::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
        );
        response
    }

    fn method(&self, path: &str) -> Result<MethodDescriptor, Failure> {
        let not_found = || {
            Failure::new(
                tonic::Code::Unimplemented,
                format!(
                    "no method {path}: POST to /<service>/<method>, e.g. /{}/<method>",
                    self.services.first().map_or("souk.ranker.v1.Ranker", |s| s)
                ),
            )
            .with_status(StatusCode::NOT_FOUND)
        };
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .ok_or_else(not_found)?;
        if !self.services.iter().any(|s| s == service) {
            return Err(not_found());
        }
        let method = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .ok_or_else(not_found)?;
        // A stream of messages in, one answer out (a bulk load, the shop's events) takes one
        // message here, in the unary form: on the wire a one-message client stream is a
        // unary call, so the call below is the same. Answers that stream need gRPC.
        if method.is_server_streaming() {
            return Err(Failure::new(
                tonic::Code::Unimplemented,
                format!("{path} streams its answer: call it over gRPC (soukctl does)"),
            ));
        }
        Ok(method)
    }

    async fn call<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<Full<Bytes>>, Failure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        let not_allowed = |why: String| {
            Failure::new(tonic::Code::Unimplemented, why)
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
        };
        if parts.method != Method::POST && parts.method != Method::GET {
            return Err(not_allowed(format!(
                "{} is not served: call a method with POST",
                parts.method
            )));
        }
        let method = self.method(parts.uri.path())?;
        if let Some(served) = &self.served
            && !served.contains(parts.uri.path())
        {
            let mut names: Vec<&str> = served.iter().map(|p| p.trim_start_matches('/')).collect();
            names.sort_unstable();
            return Err(Failure::new(
                tonic::Code::PermissionDenied,
                format!(
                    "{} is not served over HTTP here (--http-method: {}); call it over gRPC",
                    parts.uri.path().trim_start_matches('/'),
                    names.join(", ")
                ),
            ));
        }
        let body = if parts.method == Method::GET {
            if !self.without_side_effects.contains(parts.uri.path()) {
                return Err(not_allowed(format!(
                    "GET is for methods without side effects; POST to {}",
                    parts.uri.path()
                )));
            }
            query_message(parts.uri.query().unwrap_or_default())?
        } else {
            post_body(&parts.headers, body).await?
        };
        let message = if body.iter().all(u8::is_ascii_whitespace) {
            DynamicMessage::new(method.input())
        } else {
            let mut reader = serde_json::Deserializer::from_slice(&body);
            DynamicMessage::deserialize(method.input(), &mut reader)
                .and_then(|m| reader.end().map(|()| m))
                .map_err(|e| {
                    Failure::new(
                        tonic::Code::InvalidArgument,
                        format!("request body (a {} in JSON): {e}", method.input().name()),
                    )
                })?
        };
        let get = parts.method == Method::GET;
        let if_none_match = parts.headers.get(header::IF_NONE_MATCH).cloned();
        let cache_control = (get && self.cache_max_age_s > 0).then(|| {
            let personal = message
                .get_field_by_name("user_id")
                .is_some_and(|v| v.as_str().is_some_and(|id| !id.trim().is_empty()));
            let scope = if personal { "private" } else { "public" };
            format!("{scope}, max-age={}", self.cache_max_age_s)
        });
        let grpc = self.grpc_request(&parts.uri, &parts.headers, &message)?;
        let response = self
            .stack
            .clone()
            .oneshot(grpc)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status.into());
        }
        let collected = body.collect().await.map_err(Failure::from)?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = tonic::Status::from_header_map(&trailers).ok_or_else(|| {
            Failure::new(
                tonic::Code::Internal,
                "response: no grpc-status from the service",
            )
        })?;
        if status.code() != tonic::Code::Ok {
            return Err(status.into());
        }
        let reply = unframe(collected.to_bytes())?;
        let mut text = String::with_capacity(reply.len() * 2);
        let written = self
            .plans
            .get(method.output().full_name())
            .map(|plan| plan.write(&reply, &mut text));
        if !matches!(written, Some(Ok(()))) {
            // A well-known type, or bytes the direct writer cannot read: the dynamic message
            // writes the first and says what is wrong with the second.
            let reply = DynamicMessage::decode(method.output(), reply)
                .map_err(|e| Failure::new(tonic::Code::Internal, format!("response: {e}")))?;
            text = serde_json::to_string(&reply)
                .map_err(|e| Failure::new(tonic::Code::Internal, format!("response: {e}")))?;
        }
        // A GET answer names its bytes, so a browser or CDN holding it asks again with
        // `if-none-match` and gets a bodiless 304 while the answer is the same.
        let tag = get.then(|| entity_tag(text.as_bytes()));
        let unchanged = tag
            .as_ref()
            .zip(if_none_match)
            .is_some_and(|(tag, asked)| matches_any(&asked, tag));
        let mut response = if unchanged {
            let mut response = http::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            json_response(StatusCode::OK, text.into())
        };
        let headers = response.headers_mut();
        if let Some(value) = cache_control.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(header::CACHE_CONTROL, value);
        }
        if let Some(value) = tag.and_then(|t| HeaderValue::from_str(&t).ok()) {
            headers.insert(header::ETAG, value);
        }
        Ok(response)
    }

    fn grpc_request(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        message: &DynamicMessage,
    ) -> Result<http::Request<tonic::body::Body>, Failure> {
        let body = frame(&message.encode_to_vec())?;
        let mut request = http::Request::new(tonic::body::Body::new(Full::new(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path())
            .build()
            .map_err(|e| Failure::new(tonic::Code::InvalidArgument, format!("path: {e}")))?;
        *request.version_mut() = http::Version::HTTP_2;
        let out = request.headers_mut();
        for (name, value) in headers {
            if !is_transport_header(name) {
                out.append(name.clone(), value.clone());
            }
        }
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        out.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(timeout) = headers.get("connect-timeout-ms") {
            out.insert("grpc-timeout", grpc_timeout(timeout)?);
        }
        Ok(request)
    }

    /// Serves HTTP/1.1 and cleartext HTTP/2 (prior knowledge, as a proxy or a Connect client
    /// speaks it to a backend: many calls on one connection) on `listener` until `shutdown`
    /// completes, then lets open calls finish (for at most 10 s).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let service = hyper::service::service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "http: connection ended");
                }
            });
        }
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("http: calls still open {DRAIN:?} after shutdown began; closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_tag_weakly_in_a_list_or_by_star() {
        let tag = entity_tag(b"{}");
        assert_eq!(tag, entity_tag(b"{}"));
        assert_ne!(tag, entity_tag(b"{ }"));
        let asked = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(matches_any(&asked(&tag), &tag));
        assert!(matches_any(&asked(&format!("W/{tag}")), &tag));
        assert!(matches_any(&asked(&format!("\"a\" ,{tag} , \"b\"")), &tag));
        assert!(matches_any(&asked("*"), &tag));
        assert!(!matches_any(&asked("\"a\", W/\"b\""), &tag));
        assert!(
            !matches_any(&asked(tag.trim_matches('"')), &tag),
            "unquoted"
        );
        let opaque = HeaderValue::from_bytes(b"\"\xff\"").unwrap();
        assert!(!matches_any(&opaque, &tag));
    }

    #[test]
    fn a_get_carries_its_request_in_the_query() {
        let json =
            |query: &str| query_message(query).map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(
            json("encoding=json&message=%7B%22query%22%3A%22tent+poles%22%7D").ok(),
            Some(r#"{"query":"tent poles"}"#.into())
        );
        // URL-safe base64 of {"k":5}, with and without padding; connect=v1 is ignored.
        assert_eq!(
            json("connect=v1&encoding=json&base64=1&message=eyJrIjo1fQ").ok(),
            Some(r#"{"k":5}"#.into())
        );
        assert_eq!(
            json("encoding=json&base64=1&message=eyJrIjo1fQ%3D%3D").ok(),
            Some(r#"{"k":5}"#.into())
        );
        assert_eq!(
            json("encoding=json").ok(),
            Some(String::new()),
            "the empty request"
        );
        for (query, status) in [
            ("message=%7B%7D", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (
                "encoding=proto&message=",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "encoding=json&compression=gzip&message=x",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            ("encoding=json&message=%7", StatusCode::BAD_REQUEST),
            ("encoding=json&message=%zz", StatusCode::BAD_REQUEST),
            ("encoding=json&message=%+f", StatusCode::BAD_REQUEST),
            (
                "encoding=json&base64=1&message=%%%",
                StatusCode::BAD_REQUEST,
            ),
            (
                "encoding=json&base64=1&message=not*base64",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let failure = query_message(query).err();
            assert_eq!(failure.map(|f| f.status), Some(status), "{query}");
        }
    }
}
