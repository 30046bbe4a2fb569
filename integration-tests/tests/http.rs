//! JSON over HTTP (`--http-listen`): a shop backend without gRPC calls the ranker with `curl`
//! or any HTTP client and gets what a gRPC client gets, under the same rules (admin token,
//! bad input named).
use std::net::SocketAddr;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;
use souk_ranker_core::rng::XorShift;
use souk_testkit::{h2_call, h2_connect, http_call, post_json};

use crate::common::*;
use crate::random_requests::{Draw, draw_request};

const TOKEN: &str = "http-test-token";
const RANK: &str = "/souk.ranker.v1.Ranker/Rank";

/// The demo shop behind a ranker that needs an admin token and serves JSON on `http`.
async fn shop_over_http() -> (Running, Running, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let encoder_url = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = server_args(Some(TOKEN));
    server.http_listen = Some(http);
    let ranker =
        start_ranker_serving(&dir.path().join("ranker"), &encoder_url, &kg.url(), server).await;
    load_demo_with_token(&kg.url(), &ranker.url(), &Some(TOKEN.to_string())).await;
    (kg, ranker, http, dir)
}

/// `text` with every byte but ASCII letters and digits as `%XX`, as `encodeURIComponent`
/// leaves fewer.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// (id, title, price, reasons) of each item of a JSON `RankResponse` (proto3 JSON leaves
/// out an empty list).
fn json_items(body: &Value) -> Vec<(String, String, f64, Vec<String>)> {
    assert!(body.is_object() && body.get("code").is_none(), "{body}");
    let none = Vec::new();
    body["items"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .map(|item| {
            (
                item["id"].as_str().unwrap().to_string(),
                item["title"].as_str().unwrap().to_string(),
                item["price"].as_f64().unwrap(),
                item["reasons"]
                    .as_array()
                    .map(|r| r.iter().map(|r| r.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn grpc_items(response: &rk::RankResponse) -> Vec<(String, String, f64, Vec<String>)> {
    response
        .items
        .iter()
        .map(|i| (i.id.clone(), i.title.clone(), i.price, i.reasons.clone()))
        .collect()
}

fn parse(reply: &souk_testkit::HttpReply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

/// A backend (or a proxy in front) that speaks cleartext HTTP/2 to the JSON port sends its
/// calls on one connection at once, and each gets what gRPC gives; GETs revalidate there too.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_speaking_http2_sends_many_calls_on_one_connection() {
    let (_kg, ranker, http, _dir) = shop_over_http().await;
    let mut grpc = RankerClient::new(channel(&ranker.url()).await);
    let (client, connection) = h2_connect(http).await;
    let queries = [
        "tent",
        "coffee",
        "headphones",
        "boots",
        "backpack",
        "grinder",
        "stove",
        "jacket",
    ];
    let calls = queries.iter().map(|query| {
        let client = client.clone();
        async move {
            let json = format!(r#"{{"query": "{query}", "k": 5}}"#);
            let json_headers = [("content-type", "application/json")];
            h2_call(&client, "POST", RANK, &json_headers, &json).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (query, (status, headers, body)) in queries.iter().zip(answers) {
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        let over_grpc = grpc
            .rank(rk::RankRequest {
                query: (*query).into(),
                k: 5,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let over_h2 = json_items(&serde_json::from_str(&body).unwrap());
        assert!(!over_h2.is_empty(), "{query}");
        assert_eq!(over_h2, grpc_items(&over_grpc), "{query}");
    }
    let path = format!(
        "{RANK}?encoding=json&message={}",
        percent_encoded(r#"{"query": "tent", "k": 3}"#)
    );
    let (status, headers, body) = h2_call(&client, "GET", &path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    let tag = headers["etag"].to_str().unwrap().to_string();
    let (status, _, body) = h2_call(&client, "GET", &path, &[("if-none-match", &tag)], "").await;
    assert_eq!((status, body.as_str()), (304, ""));
    // Refusals are said the same way as over HTTP/1.1.
    let (status, _, body) = h2_call(
        &client,
        "POST",
        RANK,
        &[("content-type", "application/json")],
        r#"{"query": "tent", "k": 0}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("k must be 1..=1000"), "{body}");
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shop_backend_ranks_over_json_and_gets_what_grpc_gets() {
    let (_kg, ranker, http, _dir) = shop_over_http().await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    // The same requests written both ways: proto3 JSON (camelCase or the proto's own names,
    // enums by name) and the generated message.
    let cases = [
        (
            r#"{"query": "trail running shoes", "k": 5, "explain": true}"#,
            rk::RankRequest {
                query: "trail running shoes".into(),
                k: 5,
                explain: true,
                ..Default::default()
            },
        ),
        (
            r#"{"query": "coffee", "k": 4, "sort": "SORT_PRICE_ASCENDING",
                "filters": {"max_price": 40}, "offset": 2, "explain": true}"#,
            rk::RankRequest {
                query: "coffee".into(),
                k: 4,
                sort: rk::Sort::PriceAscending as i32,
                filters: Some(rk::Filters {
                    max_price: Some(40.0),
                    ..Default::default()
                }),
                offset: 2,
                explain: true,
                ..Default::default()
            },
        ),
        (
            r#"{"query": "headphones", "k": 6, "collapse": "brand", "userId": "u001"}"#,
            rk::RankRequest {
                query: "headphones".into(),
                k: 6,
                collapse: "brand".into(),
                user_id: "u001".into(),
                ..Default::default()
            },
        ),
    ];
    for (json, request) in cases {
        let reply = post_json(http, RANK, json).await;
        assert_eq!(reply.status, 200, "{json}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let over_http = json_items(&parse(&reply));
        let over_grpc = grpc_items(&client.rank(request).await.unwrap().into_inner());
        assert!(!over_grpc.is_empty(), "{json}");
        assert_eq!(over_http, over_grpc, "{json}");
        // Rank has no side effects, so a GET (cacheable by a CDN) asks the same.
        let path = format!("{RANK}?encoding=json&message={}", percent_encoded(json));
        let reply = http_call(http, "GET", &path, &[], b"").await;
        assert_eq!(reply.status, 200, "{json}: {reply:?}");
        assert_eq!(json_items(&parse(&reply)), over_grpc, "GET {json}");
        assert_eq!(reply.header("cache-control"), None, "not unless configured");
    }
    // A method that changes state is never called by a GET.
    let path = format!(
        "/souk.ranker.v1.Ranker/DeleteItems?encoding=json&message={}",
        percent_encoded(r#"{"ids": ["p00168"]}"#)
    );
    let reply = http_call(http, "GET", &path, &[], b"").await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), Some("POST"));

    // Bad input is the caller's fault, said as gRPC says it.
    for (json, says) in [
        (r#"{"query": "coffee", "k": 0}"#, "k must be 1..=1000"),
        (
            r#"{"query": "coffee", "k": 5, "collapse": "price"}"#,
            "collapse",
        ),
        (r#"{"qurey": "coffee", "k": 5}"#, "qurey"),
        (
            r#"{"query": "coffee", "k": 5, "sort": "SORT_BY_MOOD"}"#,
            "SORT_BY_MOOD",
        ),
        (r#"{"query": "coffee", "k": -1}"#, "RankRequest"),
    ] {
        let reply = post_json(http, RANK, json).await;
        let body = parse(&reply);
        assert_eq!(
            (reply.status, body["code"].as_str()),
            (400, Some("invalid_argument")),
            "{json}: {reply:?}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{json}: {message} lacks {says:?}");
    }
    // Answers that stream stay gRPC only.
    let reply = post_json(http, "/souk.ranker.v1.Ranker/Follow", "{}").await;
    assert_eq!(reply.status, 501, "{reply:?}");
}

/// A shop backend without gRPC sends its shoppers' events and its new items as JSON: each
/// call one batch of the streamed method (`RecordInteractions`, `UpsertItems`), stored as a
/// one-message stream would be: counted, deduplicated, checked, under the same token rule.
#[tokio::test(flavor = "multi_thread")]
async fn a_shop_backend_sends_events_and_items_over_json() {
    let (_kg, ranker, http, _dir) = shop_over_http().await;
    let record = "/souk.ranker.v1.Ranker/RecordInteractions";
    let events = r#"{"interactions": [
        {"userId": "u900", "itemId": "p00168", "kind": "INTERACTION_KIND_PURCHASE", "timestampMs": "1764000000000"},
        {"userId": "u900", "itemId": "p00170", "kind": "INTERACTION_KIND_CLICK", "timestampMs": "1764000001000"}
    ]}"#;
    let reply = post_json(http, record, events).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(parse(&reply)["recorded"], "2");
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let profile = client
        .user_profile(rk::UserProfileRequest {
            user_id: "u900".into(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.recent_items, ["p00170", "p00168"]);
    // The same batch again (a retry): stored once.
    let reply = post_json(http, record, events).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(parse(&reply)["duplicates"], "2");
    assert_eq!(parse(&reply).get("recorded"), None, "0 is left out");
    let reply = post_json(
        http,
        record,
        r#"{"interactions": [{"userId": "u900", "itemId": "p00168"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = parse(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("interactions[0]: kind 0 is not one of view"),
        "{message}"
    );

    // Items need the admin token, as over gRPC.
    let upsert = "/souk.ranker.v1.Ranker/UpsertItems";
    let item = r#"{"items": [{"id": "p09001", "title": "Quokka Trail Bivvy Shelter", "category": ["Outdoors", "Tents"], "brand": "Quokka", "price": 149.0, "inStock": true}]}"#;
    let reply = post_json(http, upsert, item).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let bearer = format!("Bearer {TOKEN}");
    let admin = |path: &'static str, body: &'static str| {
        let bearer = bearer.clone();
        async move {
            http_call(
                http,
                "POST",
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &bearer),
                ],
                body.as_bytes(),
            )
            .await
        }
    };
    let reply = admin(upsert, item).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(parse(&reply)["upserted"], "1");
    let reply = post_json(http, RANK, r#"{"query": "quokka bivvy shelter", "k": 3}"#).await;
    let ids: Vec<String> = json_items(&parse(&reply))
        .into_iter()
        .map(|i| i.0)
        .collect();
    assert_eq!(ids.first().map(String::as_str), Some("p09001"), "{ids:?}");

    // A price feed of the changed fields; a bad update refuses its whole batch.
    let update = "/souk.ranker.v1.Ranker/UpdateItems";
    let call = |body: &'static str| admin(update, body);
    let reply =
        call(r#"{"updates": [{"id": "p09001", "price": 99.5, "inStock": false}, {"id": "nope"}]}"#)
            .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = parse(&reply);
    assert_eq!(
        (&body["updated"], &body["unknown"]),
        (&"1".into(), &"1".into())
    );
    assert_eq!(body["unknownIds"], serde_json::json!(["nope"]));
    let reply =
        call(r#"{"updates": [{"id": "p09001", "price": 5}, {"id": "p09001", "price": -5}]}"#).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = parse(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message
            .contains("batch 0, update 1: item \"p09001\": price must be finite and >= 0, got -5"),
        "{message}"
    );
    // One attribute named twice (case, spaces) in an update or an item: refused, not guessed.
    let reply =
        call(r#"{"updates": [{"id": "p09001", "price": 7, "attributes": {"color": "red", "Color": "blue"}}]}"#)
            .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = parse(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("item \"p09001\": attributes \"Color\" and \"color\" are one attribute"),
        "{message}"
    );
    let twice = r#"{"items": [{"id": "p09001", "title": "Quokka Trail Bivvy Shelter", "price": 3, "attributes": {"size": "2", " Size": "3"}}]}"#;
    let reply = admin(upsert, twice).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = parse(&reply)["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("attributes \" Size\" and \"size\" are one attribute"),
        "{message}"
    );
    let reply = post_json(http, RANK, r#"{"query": "quokka bivvy shelter", "k": 3}"#).await;
    let first = json_items(&parse(&reply)).into_iter().next();
    assert_eq!(
        first.map(|i| (i.0, i.2)),
        Some(("p09001".to_string(), 99.5)),
        "the first update stands, the refused batch changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_over_http_need_the_token_as_over_grpc() {
    let (_kg, ranker, http, _dir) = shop_over_http().await;
    let delete = "/souk.ranker.v1.Ranker/DeleteItems";
    let body = br#"{"ids": ["p00168"]}"#;
    let json = ("content-type", "application/json");
    for authorization in [None, Some("Bearer wrong-token")] {
        let headers: Vec<_> = [Some(json), authorization.map(|a| ("authorization", a))]
            .into_iter()
            .flatten()
            .collect();
        let reply = http_call(http, "POST", delete, &headers, body).await;
        assert_eq!(reply.status, 401, "{authorization:?}: {reply:?}");
        assert_eq!(parse(&reply)["code"], "unauthenticated");
    }
    let stats = || async {
        let mut client = RankerClient::new(channel(&ranker.url()).await);
        client
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .items
    };
    assert_eq!(stats().await, 312, "a refused delete removed nothing");
    let bearer = format!("Bearer {TOKEN}");
    let reply = http_call(
        http,
        "POST",
        delete,
        &[json, ("authorization", &bearer)],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(stats().await, 311);
    let reply = post_json(http, RANK, r#"{"query": "drip coffee maker", "k": 20}"#).await;
    let ids: Vec<String> = json_items(&parse(&reply))
        .into_iter()
        .map(|i| i.0)
        .collect();
    assert!(!ids.is_empty());
    assert!(!ids.contains(&"p00168".to_string()), "{ids:?}");
    // Read-only calls need no token; 64-bit counts are strings in proto3 JSON.
    let reply = post_json(http, "/souk.ranker.v1.Ranker/Stats", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(parse(&reply)["items"], "311");
}

/// The HTTP status a gRPC code is answered with (the gateway's table, written out again).
fn status_of(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 400,
        tonic::Code::Unauthenticated => 401,
        tonic::Code::NotFound => 404,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Unavailable => 503,
        tonic::Code::DeadlineExceeded => 504,
        other => panic!("no status expected for {other:?}"),
    }
}

/// The random `Rank` requests of `random_requests` (valid, and about half with a fault),
/// each sent over gRPC and, written as proto3 JSON, over HTTP: the same ranking, or the same
/// refusal with the same message. Then the same JSON texts cut short or with a character
/// changed: each answered 200 or 400 with a Connect error body, never a server error.
#[tokio::test(flavor = "multi_thread")]
async fn random_rank_requests_get_the_same_answer_over_json_as_over_grpc() {
    let (_kg, ranker, http, _dir) = shop_over_http().await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let pool = DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool
        .get_message_by_name("souk.ranker.v1.RankRequest")
        .unwrap();
    let mut d = Draw(XorShift::new(44));
    let (mut ranked, mut refused) = (0, 0);
    let mut texts = Vec::new();
    for n in 0..300 {
        let request = draw_request(&mut d);
        let json = serde_json::to_string(
            &DynamicMessage::decode(desc.clone(), request.encode_to_vec().as_slice()).unwrap(),
        )
        .unwrap();
        let reply = post_json(http, RANK, &json).await;
        match client.rank(request).await {
            Ok(answer) => {
                assert_eq!(reply.status, 200, "request {n}: {json}: {reply:?}");
                let answer = answer.into_inner();
                assert_eq!(
                    json_items(&parse(&reply)),
                    grpc_items(&answer),
                    "request {n}"
                );
                ranked += 1;
            }
            Err(status) => {
                let body = parse(&reply);
                assert_eq!(
                    reply.status,
                    status_of(status.code()),
                    "request {n}: {json}"
                );
                assert_eq!(body["message"], status.message(), "request {n}: {json}");
                refused += 1;
            }
        }
        texts.push(json);
    }
    assert!(
        ranked > 100 && refused > 30,
        "{ranked} ranked, {refused} refused"
    );

    let mut rng = XorShift::new(7);
    let mut below = |n: usize| ((rng.unit() * n as f64) as usize).min(n.saturating_sub(1));
    const JUNK: &[char] = &[
        '{', '}', '[', ']', '"', ':', ',', '\\', '0', '-', 'e', 'x', ' ', 'é',
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for (n, text) in texts.iter().enumerate() {
        let chars: Vec<char> = text.chars().collect();
        let at = below(chars.len());
        let broken: String = if n % 3 == 0 {
            chars[..at].iter().collect()
        } else {
            let mut changed = chars.clone();
            changed[at] = JUNK[below(JUNK.len())];
            changed.into_iter().collect()
        };
        let reply = post_json(http, RANK, &broken).await;
        *statuses.entry(reply.status).or_insert(0) += 1;
        assert!(
            reply.status == 200 || reply.status == 400,
            "{broken}: {reply:?}"
        );
        if reply.status == 400 {
            let body = parse(&reply);
            assert_eq!(body["code"], "invalid_argument", "{broken}");
            assert!(!body["message"].as_str().unwrap().is_empty());
        }
    }
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );
    let reply = post_json(http, RANK, r#"{"query": "sleeping bag", "k": 5}"#).await;
    assert_eq!(
        json_items(&parse(&reply)).len(),
        5,
        "the ranker still ranks"
    );
}

/// Every method of the ranker that changes state, called over gRPC without the token (an
/// empty message, which each would otherwise answer, or a real write), is refused before it
/// runs, whichever list of methods the server was built with: each method the proto does not
/// mark `NO_SIDE_EFFECTS`, except `RecordInteractions` (shop backends send events). The shop's
/// rules were open to anyone until this test: a stranger could redirect a search.
#[tokio::test(flavor = "multi_thread")]
async fn every_write_of_the_ranker_needs_the_token() {
    let (_kg, ranker, _http, _dir) = shop_over_http().await;
    let channel = channel(&ranker.url()).await;
    let pool = DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET).unwrap();
    let service = pool.get_service_by_name("souk.ranker.v1.Ranker").unwrap();
    let mut writes = Vec::new();
    for method in service.methods() {
        let level = method
            .options()
            .get_field_by_name("idempotency_level")
            .and_then(|v| v.as_enum_number());
        let read = level == Some(1) || method.name() == "RecordInteractions";
        let path = format!("/souk.ranker.v1.Ranker/{}", method.name());
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        // An empty message of any type is an empty body; streams take it as one message.
        let reply = grpc
            .unary(
                tonic::Request::new(()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await;
        let code = reply.err().map(|status| status.code());
        if read {
            assert_ne!(code, Some(tonic::Code::Unauthenticated), "{path}");
        } else {
            assert_eq!(code, Some(tonic::Code::Unauthenticated), "{path}");
            writes.push(method.name().to_string());
        }
    }
    assert!(writes.len() >= 9, "{writes:?}");
    assert!(writes.contains(&"SetPins".to_string()), "{writes:?}");

    // A stranger's rules: refused, and the shop's searches unchanged.
    let mut client = RankerClient::new(channel);
    let rank = rk::RankRequest {
        query: "tent".into(),
        k: 5,
        ..Default::default()
    };
    let before = client.rank(rank.clone()).await.unwrap().into_inner();
    let status = client
        .set_pins(rk::SetPinsRequest {
            rules: vec![rk::PinRule {
                query: "tent".into(),
                redirect: "https://attacker.example/".into(),
                hidden: before.items.iter().map(|i| i.id.clone()).collect(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let after = client.rank(rank).await.unwrap().into_inner();
    assert_eq!(after.redirect, "");
    let ids = |r: &rk::RankResponse| r.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
}

/// A ranker whose HTTP port faces browsers serves only the shopper's methods over it
/// (`--http-method Rank,Suggest`): those answer as before, by POST and GET, the rest (the
/// shop's numbers and rules, a shopper's profile) are refused with the reason, and gRPC
/// still serves every method.
#[tokio::test(flavor = "multi_thread")]
async fn a_public_http_port_serves_only_the_methods_named() {
    let dir = tempfile::tempdir().unwrap();
    let encoder_url = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = server_args(None);
    server.http_listen = Some(http);
    server.http_cors_origins = vec!["https://shop.example".into()];
    server.http_methods = vec!["Rank".into(), "souk.ranker.v1.Ranker/Suggest".into()];
    server.http_cache_max_age_s = 60;
    let ranker =
        start_ranker_serving(&dir.path().join("ranker"), &encoder_url, &kg.url(), server).await;
    load_demo(&kg.url(), &ranker.url()).await;

    let reply = post_json(http, RANK, r#"{"query": "tent", "k": 3}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json_items(&parse(&reply)).len(), 3);
    let reply = http_call(
        http,
        "GET",
        &format!(
            "/souk.ranker.v1.Ranker/Suggest?encoding=json&message={}",
            percent_encoded(r#"{"query": "hea"}"#)
        ),
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("head"), "{reply:?}");
    // GET answers may be kept a minute: by anyone, or by the shopper's browser alone when
    // they are the shopper's own; POSTs and refusals carry no such header.
    assert_eq!(reply.header("cache-control"), Some("public, max-age=60"));
    let get = |json: &str| {
        let path = format!("{RANK}?encoding=json&message={}", percent_encoded(json));
        async move { http_call(http, "GET", &path, &[], b"").await }
    };
    let reply = get(r#"{"query": "tent", "k": 3}"#).await;
    assert_eq!(reply.header("cache-control"), Some("public, max-age=60"));
    let reply = get(r#"{"query": "tent", "k": 3, "userId": "u010"}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("private, max-age=60"));
    let reply = get(r#"{"query": "tent", "k": 0}"#).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.header("cache-control"), None);
    let reply = post_json(http, RANK, r#"{"query": "tent", "k": 3}"#).await;
    assert_eq!(reply.header("cache-control"), None);
    assert_eq!(reply.header("etag"), None, "a POST is not revalidated");

    // A GET answer names its bytes: asked again with that tag, the same answer is a bodiless
    // 304 (what a CDN or browser revalidating an expired copy gets); once the catalog changes
    // what the search shows, a full answer with a new tag.
    let first = get(r#"{"query": "tent", "k": 3}"#).await;
    let tag = first
        .header("etag")
        .expect("a GET answer has a tag")
        .to_string();
    assert!(
        tag.len() == 34 && tag.starts_with('"') && tag.ends_with('"'),
        "{tag}"
    );
    let path = format!(
        "{RANK}?encoding=json&message={}",
        percent_encoded(r#"{"query": "tent", "k": 3}"#)
    );
    let revalidate = |asked: String| {
        let path = path.clone();
        async move { http_call(http, "GET", &path, &[("if-none-match", &asked)], b"").await }
    };
    for asked in [tag.clone(), format!("\"0000\", W/{tag}"), "*".to_string()] {
        let reply = revalidate(asked.clone()).await;
        assert_eq!(reply.status, 304, "if-none-match: {asked}: {reply:?}");
        assert!(reply.body.is_empty(), "{reply:?}");
        assert_eq!(reply.header("etag"), Some(tag.as_str()));
        assert_eq!(reply.header("cache-control"), Some("public, max-age=60"));
    }
    let reply = revalidate("\"0000\"".into()).await;
    assert_eq!(reply.status, 200, "another tag: {reply:?}");
    assert_eq!(
        (reply.body.as_str(), reply.header("etag")),
        (first.body.as_str(), Some(tag.as_str()))
    );
    let reply = get(r#"{"query": "tent", "k": 0}"#).await;
    assert_eq!(reply.header("etag"), None, "a refusal has no tag");
    let top = parse(&first)["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    client
        .update_items(futures::stream::iter(vec![rk::UpdateItemsRequest {
            updates: vec![rk::ItemUpdate {
                id: top.clone(),
                price: Some(1.25),
                ..Default::default()
            }],
        }]))
        .await
        .unwrap();
    let reply = revalidate(tag.clone()).await;
    assert_eq!(reply.status, 200, "{top} repriced: {reply:?}");
    assert!(reply.body.contains("1.25"), "{reply:?}");
    assert_ne!(reply.header("etag"), Some(tag.as_str()));

    for (path, body) in [
        ("/souk.ranker.v1.Ranker/Stats", "{}"),
        (
            "/souk.ranker.v1.Ranker/UserProfile",
            r#"{"userId": "u010"}"#,
        ),
        ("/souk.ranker.v1.Ranker/GetPins", "{}"),
        (
            "/souk.ranker.v1.Ranker/DeleteItems",
            r#"{"ids": ["p00001"]}"#,
        ),
    ] {
        let reply = post_json(http, path, body).await;
        assert_eq!(reply.status, 403, "{path}: {reply:?}");
        let error = parse(&reply);
        assert_eq!(error["code"], "permission_denied");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("not served over HTTP here")
                && message.contains("souk.ranker.v1.Ranker/Rank, souk.ranker.v1.Ranker/Suggest"),
            "{message}"
        );
    }
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stats.items, 312,
        "gRPC serves every method, and nothing was deleted"
    );
}
