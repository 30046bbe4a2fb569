//! What JSON over HTTP costs against gRPC for the same `Rank` calls, measured in one run on
//! one suite: `souk up` with `--http-listen` on a temporary store with `kg-data/` loaded.
//!
//! ```text
//! cargo run --release -p souk --example http_cost -- [ROUNDS]
//! ```
//! Each round sends every case once over gRPC (one tonic channel), once as JSON over HTTP/1.1
//! (one keep-alive connection) and once as JSON over cleartext HTTP/2 (one connection, prior
//! knowledge), in turn, ROUNDS times (default 2,000) after 100 rounds of warm-up; prints p50,
//! p99 and mean latency per case and protocol, and the ratios to gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use souk::{Cli, Command, Suite};
use souk_proto::ranker::v1 as rk;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection that posts JSON and reads `content-length` bodies.
struct Http {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            addr,
        }
    }

    async fn post(&mut self, path: &str, json: &str) -> String {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            self.addr,
            json.len()
        );
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut length = 0;
        let mut status = String::new();
        self.stream.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    }
}

struct Case {
    name: &'static str,
    json: &'static str,
    request: rk::RankRequest,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "search k=10 explain",
            json: r#"{"query": "trail running shoes", "k": 10, "explain": true}"#,
            request: rk::RankRequest {
                query: "trail running shoes".into(),
                k: 10,
                explain: true,
                ..Default::default()
            },
        },
        Case {
            name: "search k=100 explain",
            json: r#"{"query": "coffee", "k": 100, "explain": true}"#,
            request: rk::RankRequest {
                query: "coffee".into(),
                k: 100,
                explain: true,
                ..Default::default()
            },
        },
        Case {
            name: "listing by price k=10",
            json: r#"{"query": "tent", "k": 10, "sort": "SORT_PRICE_ASCENDING"}"#,
            request: rk::RankRequest {
                query: "tent".into(),
                k: 10,
                sort: rk::Sort::PriceAscending as i32,
                ..Default::default()
            },
        },
    ]
}

fn summary(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64;
    (
        us(times[times.len() / 2]),
        us(times[times.len() * 99 / 100]),
        mean,
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().unwrap().to_string();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http_listen = format!("127.0.0.1:{http_port}");
    let cli = Cli::parse_from([
        "souk",
        "up",
        "--data-dir",
        &data_dir,
        "--encoder-listen",
        "127.0.0.1:0",
        "--kg-listen",
        "127.0.0.1:0",
        "--ranker-listen",
        "127.0.0.1:0",
        "--http-listen",
        &http_listen,
    ]);
    let Command::Up(up) = cli.command else {
        unreachable!()
    };
    let mut suite = Suite::start(&up).await?;
    suite.wait_ready(Duration::from_secs(300)).await?;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kg-data");
    let options = soukctl::LoadOptions {
        batch_size: None,
        dry_run: false,
        max_errors: 0,
        quiet: true,
    };
    let connect = |addr: SocketAddr| async move {
        soukctl::connect(&format!("http://{addr}"), "server").await
    };
    soukctl::load_triples(
        connect(suite.kg).await?,
        &data.join("triples.tsv"),
        None,
        &options,
        &None,
    )
    .await?;
    soukctl::load_catalog(
        connect(suite.ranker).await?,
        &data.join("products.csv"),
        &options,
        &None,
    )
    .await?;
    soukctl::load_events(
        connect(suite.ranker).await?,
        &data.join("events.csv"),
        &options,
        &None,
    )
    .await?;

    let mut grpc = rk::ranker_client::RankerClient::new(connect(suite.ranker).await?);
    let mut http = Http::connect(http_listen.parse()?).await;
    let (http2, _connection) = souk_testkit::h2_connect(http_listen.parse()?).await;
    let json = [("content-type", "application/json")];
    let cases = cases();
    println!(
        "{rounds} rounds of {} Rank calls per protocol, alternating; demo shop (312 items)",
        cases.len()
    );
    println!(
        "| case | gRPC p50 / p99 / mean (us) | JSON over HTTP/1.1 p50 / p99 / mean (us) | JSON over HTTP/2 p50 / p99 / mean (us) | p50 HTTP/1.1 / gRPC | p50 HTTP/2 / gRPC | response bytes (JSON) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        let mut times = (
            Vec::with_capacity(rounds),
            Vec::with_capacity(rounds),
            Vec::with_capacity(rounds),
        );
        let mut bytes = 0;
        for round in 0..rounds + 100 {
            let started = Instant::now();
            let answer = grpc.rank(case.request.clone()).await?.into_inner();
            let over_grpc = started.elapsed();
            let started = Instant::now();
            let body = http.post("/souk.ranker.v1.Ranker/Rank", case.json).await;
            let over_http = started.elapsed();
            let started = Instant::now();
            let (_, _, body2) = souk_testkit::h2_call(
                &http2,
                "POST",
                "/souk.ranker.v1.Ranker/Rank",
                &json,
                case.json,
            )
            .await;
            let over_http2 = started.elapsed();
            if round >= 100 {
                times.0.push(over_grpc);
                times.1.push(over_http);
                times.2.push(over_http2);
            } else if round == 0 {
                assert_eq!(body2, body, "{}: HTTP/2 and HTTP/1.1 disagree", case.name);
                let json: serde_json::Value = serde_json::from_str(&body)?;
                let ids: Vec<&str> = json["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap())
                    .collect();
                let expected: Vec<&str> = answer.items.iter().map(|i| i.id.as_str()).collect();
                assert_eq!(ids, expected, "{}: the two protocols disagree", case.name);
                bytes = body.len();
            }
        }
        let (g, h, h2) = (summary(times.0), summary(times.1), summary(times.2));
        println!(
            "| {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2} | {:.2} | {bytes} |",
            case.name,
            g.0,
            g.1,
            g.2,
            h.0,
            h.1,
            h.2,
            h2.0,
            h2.1,
            h2.2,
            h.0 / g.0,
            h2.0 / g.0
        );
    }
    suite.stop().await
}
