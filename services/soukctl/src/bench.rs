//! `soukctl bench rank`: an open-loop load generator for `Rank`.
//!
//! Requests are scheduled at a fixed rate whatever the server does (open loop), and latency is
//! measured from each request's *scheduled* time, so a stalled server shows up in the tail
//! instead of silently slowing the generator (coordinated omission). The mix follows a shop:
//! half searches by a known user, a quarter recommendations for a known user, a quarter
//! anonymous searches; queries are 1-3 words taken from catalog titles, users from the events
//! file; `--filtered-share` of the requests also filter to a category (a level of a random
//! catalog row's path, as a shop's category pages and facets do).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use souk_proto::ranker::v1 as rk;

#[derive(Debug, Args)]
pub struct RankBenchArgs {
    /// Catalog CSV whose titles seed the queries.
    #[arg(long, default_value = "kg-data/products.csv")]
    pub catalog: PathBuf,
    /// Events CSV whose users make the personalised requests.
    #[arg(long, default_value = "kg-data/events.csv")]
    pub events: PathBuf,
    /// Requests per second to send.
    #[arg(long, default_value_t = 200.0)]
    pub qps: f64,
    /// Seconds to send for (after a 2 s warm-up that is not counted).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Results per request.
    #[arg(short, long, default_value_t = 10)]
    pub k: u32,
    /// Connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Distinct queries in the pool (a shop's query log repeats itself; the ranker caches
    /// query vectors).
    #[arg(long, default_value_t = 2000)]
    pub distinct_queries: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of requests (0..1) that also filter to a category.
    #[arg(long, default_value_t = 0.0)]
    pub filtered_share: f64,
    /// Send the same requests as JSON over HTTP/1.1 to this address (the ranker's
    /// `--http-listen`, e.g. 127.0.0.1:8053) instead of gRPC: a pool of keep-alive
    /// connections, one call at a time on each, as an HTTP client library holds them.
    #[arg(long)]
    pub http: Option<String>,
}

/// Where the load goes: gRPC channels, or an HTTP/1.1 connection pool.
#[derive(Clone)]
enum Target {
    Grpc(Vec<rk::ranker_client::RankerClient<tonic::transport::Channel>>),
    Http {
        client: Box<
            hyper_util::client::legacy::Client<
                hyper_util::client::legacy::connect::HttpConnector,
                http_body_util::Full<bytes::Bytes>,
            >,
        >,
        url: http::Uri,
        /// `RankRequest`'s descriptor: each request is sent as its proto3 JSON.
        request: prost_reflect::MessageDescriptor,
    },
}

impl Target {
    /// Sends request `n`; the failure's code (gRPC's, or the JSON error's) when it fails.
    async fn rank(&self, n: u64, request: rk::RankRequest) -> Result<(), String> {
        match self {
            Target::Grpc(clients) => {
                let mut client = clients[(n as usize) % clients.len()].clone();
                client
                    .rank(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}", s.code()))
            }
            Target::Http {
                client,
                url,
                request: desc,
            } => {
                use http_body_util::BodyExt;
                use prost::Message;
                let wire = request.encode_to_vec();
                let message = prost_reflect::DynamicMessage::decode(desc.clone(), wire.as_slice())
                    .map_err(|e| e.to_string())?;
                let body = serde_json::to_string(&message).map_err(|e| e.to_string())?;
                let call = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let response = client
                    .request(call)
                    .await
                    .map_err(|e| format!("http: {e}"))?;
                let status = response.status();
                let text = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("http: {e}"))?
                    .to_bytes();
                if status.is_success() {
                    return Ok(());
                }
                let code = serde_json::from_slice::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(String::from));
                Err(code.unwrap_or_else(|| status.to_string()))
            }
        }
    }
}

struct Pools {
    queries: Vec<String>,
    users: Vec<String>,
    /// Every level of every catalog row's category path (so a draw is weighted by items).
    categories: Vec<String>,
}

/// What a catalog seeds the load with, read in one pass: each title's lower-cased words, and
/// every level of every row's category path (none without a category column), in file order.
struct CatalogSeeds {
    titles: Vec<Vec<String>>,
    categories: Vec<String>,
}

fn catalog_seeds(catalog: &std::path::Path) -> anyhow::Result<CatalogSeeds> {
    let mut reader =
        csv::Reader::from_path(catalog).with_context(|| catalog.display().to_string())?;
    let headers = reader.headers()?.clone();
    let title = headers
        .iter()
        .position(|h| h == "title" || h == "product_name")
        .context("the catalog has no title column")?;
    let category = headers.iter().position(|h| h == "category");
    let mut seeds = CatalogSeeds {
        titles: Vec::new(),
        categories: Vec::new(),
    };
    for record in reader.records().filter_map(Result::ok) {
        if let Some(t) = record.get(title) {
            let words: Vec<String> = t.split_whitespace().map(str::to_lowercase).collect();
            if !words.is_empty() {
                seeds.titles.push(words);
            }
        }
        if let Some(path) = category.and_then(|c| record.get(c)) {
            seeds.categories.extend(crate::files::category_path(path));
        }
    }
    anyhow::ensure!(
        !seeds.titles.is_empty(),
        "no titles in {}",
        catalog.display()
    );
    Ok(seeds)
}

/// `count` queries of 1-3 consecutive words from the catalog's titles.
fn queries(titles: &[Vec<String>], count: usize, seed: u64) -> Vec<String> {
    let mut rng = souk_kg_embed::SplitMix64::new(seed);
    (0..count.max(1))
        .map(|_| {
            let words = &titles[rng.below(titles.len() as u32) as usize];
            let n = 1 + rng.below(3) as usize;
            let start = rng.below(words.len() as u32) as usize;
            words[start..(start + n).min(words.len())].join(" ")
        })
        .collect()
}

fn pools(args: &RankBenchArgs) -> anyhow::Result<Pools> {
    let CatalogSeeds { titles, categories } = catalog_seeds(&args.catalog)?;
    let queries = queries(&titles, args.distinct_queries, args.seed);
    let mut reader =
        csv::Reader::from_path(&args.events).with_context(|| args.events.display().to_string())?;
    let user = reader
        .headers()?
        .iter()
        .position(|h| h == "user_id")
        .context("the events file has no user_id column")?;
    let mut users: Vec<String> = reader
        .records()
        .filter_map(Result::ok)
        .filter_map(|r| r.get(user).map(String::from))
        .collect();
    users.sort();
    users.dedup();
    anyhow::ensure!(!users.is_empty(), "no users in {}", args.events.display());
    anyhow::ensure!(
        args.filtered_share <= 0.0 || !categories.is_empty(),
        "--filtered-share needs a category column in {}",
        args.catalog.display()
    );
    Ok(Pools {
        queries,
        users,
        categories,
    })
}

/// Runs the load and prints the latency distribution; returns the p99 in milliseconds.
///
/// # Errors
/// Unreadable seed files or an unreachable ranker.
pub async fn rank(args: RankBenchArgs, ranker_url: &str) -> anyhow::Result<f64> {
    anyhow::ensure!(
        args.qps > 0.0 && args.qps <= 100_000.0,
        "--qps must be in (0, 100000]"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.filtered_share),
        "--filtered-share must be in [0, 1]"
    );
    let pools = Arc::new(pools(&args)?);
    let connections = args.connections.max(1);
    let target = match &args.http {
        None => {
            let mut clients = Vec::new();
            for _ in 0..connections {
                clients.push(rk::ranker_client::RankerClient::new(
                    crate::connect(ranker_url, "ranker").await?,
                ));
            }
            Target::Grpc(clients)
        }
        Some(addr) => {
            let url: http::Uri = format!("http://{addr}/souk.ranker.v1.Ranker/Rank")
                .parse()
                .with_context(|| format!("--http {addr}: not an address"))?;
            let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
            connector.set_nodelay(true);
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(connector);
            let request = prost_reflect::DescriptorPool::decode(souk_proto::FILE_DESCRIPTOR_SET)?
                .get_message_by_name("souk.ranker.v1.RankRequest")
                .context("RankRequest is not in souk's descriptor set")?;
            Target::Http {
                client: Box::new(client),
                url,
                request,
            }
        }
    };
    println!(
        "rank load over {}: {} qps for {} s (+2 s warm-up), {} connections, {} distinct queries, {} users, {:.0}% filtered to a category",
        match &args.http {
            None => "gRPC".to_string(),
            Some(addr) => format!("JSON/HTTP at {addr}"),
        },
        args.qps,
        args.seconds,
        match &target {
            Target::Grpc(clients) => clients.len().to_string(),
            Target::Http { .. } => "pooled".to_string(),
        },
        pools.queries.len(),
        pools.users.len(),
        args.filtered_share * 100.0
    );
    let interval = Duration::from_secs_f64(1.0 / args.qps);
    let warmup = Duration::from_secs(2);
    let total = warmup + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Result<(), String>)>();
    let mut rng = souk_kg_embed::SplitMix64::new(args.seed ^ 0xBE4C);
    let mut n: u64 = 0;
    loop {
        let scheduled = started + interval.mul_f64(n as f64);
        if scheduled.duration_since(started) >= total {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let kind = rng.below(4);
        let user = if kind == 3 {
            String::new()
        } else {
            pools.users[rng.below(pools.users.len() as u32) as usize].clone()
        };
        let query = if kind == 2 {
            String::new()
        } else {
            pools.queries[rng.below(pools.queries.len() as u32) as usize].clone()
        };
        // (No draw at share 0, so unfiltered runs send what they always sent.)
        let filtered = args.filtered_share > 0.0
            && f64::from(rng.below(1_000_000)) < args.filtered_share * 1e6;
        let filters = filtered.then(|| rk::Filters {
            category: pools.categories[rng.below(pools.categories.len() as u32) as usize].clone(),
            ..Default::default()
        });
        let request = rk::RankRequest {
            user_id: user,
            query,
            k: args.k,
            explain: true,
            filters,
            ..Default::default()
        };
        let target = target.clone();
        let tx = tx.clone();
        let counted = scheduled.duration_since(started) >= warmup;
        tokio::spawn(async move {
            let result = target.rank(n, request).await;
            if counted {
                let _ = tx.send((scheduled.elapsed(), result));
            }
        });
        n += 1;
    }
    drop(tx);
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some((latency, result)) = rx.recv().await {
        match result {
            Ok(()) => latencies.push(latency.as_secs_f64() * 1e3),
            Err(code) => *errors.entry(code).or_default() += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64() - warmup.as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            f64::NAN
        } else {
            latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
        }
    };
    let failed: u64 = errors.values().sum();
    println!(
        "sent {} in {:.1} s: {} ok ({:.1} ok/s), {} failed {:?}",
        latencies.len() as u64 + failed,
        elapsed,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        failed,
        errors
    );
    println!(
        "latency ms (from scheduled send): p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    Ok(pct(0.99))
}

#[derive(Debug, Args)]
pub struct EmbedBenchArgs {
    /// Sequential single-text requests to time (after 20 untimed ones).
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Catalog CSV whose titles seed the short queries.
    #[arg(long, default_value = "kg-data/products.csv")]
    pub catalog: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One short query at a time through `Embed` over one connection: the latency a search
/// request pays for its query vector. Prints p50/p90/p99 in milliseconds.
///
/// # Errors
/// An unreadable catalog or an unreachable encoder.
pub async fn embed(args: EmbedBenchArgs, encoder_url: &str) -> anyhow::Result<()> {
    let titles = catalog_seeds(&args.catalog)?.titles;
    let queries = queries(&titles, args.requests + 20, args.seed);
    let mut client = souk_proto::encoder::v1::encoder_client::EncoderClient::new(
        crate::connect(encoder_url, "encoder").await?,
    );
    let mut latencies = Vec::with_capacity(args.requests);
    for (i, query) in queries.iter().enumerate() {
        let started = Instant::now();
        client
            .embed(souk_proto::encoder::v1::EmbedRequest {
                texts: vec![query.clone()],
                truncate: None,
                normalize: None,
                kind: souk_proto::encoder::v1::TextKind::Query.into(),
                prompt_name: String::new(),
                dimensions: None,
            })
            .await?;
        if i >= 20 {
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "embed, one short query at a time, {} requests: p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The demo catalog's paths have three levels each: every level of every row is drawn from,
    /// trimmed; a catalog without a category column gives none (and `--filtered-share` refuses).
    #[test]
    fn category_levels_are_every_level_of_every_row() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let seeds = catalog_seeds(&root.join("kg-data/products.csv")).unwrap();
        assert_eq!(seeds.titles.len(), 312);
        let levels = seeds.categories;
        assert_eq!(levels.len(), 312 * 3);
        assert_eq!(levels.iter().filter(|l| *l == "Hiking Boots").count(), 13);
        assert_eq!(levels.iter().filter(|l| *l == "Outdoor").count(), 13 * 5);
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare.csv");
        std::fs::write(&bare, "id,title\np1,Tent\n").unwrap();
        assert!(catalog_seeds(&bare).unwrap().categories.is_empty());
    }
}
