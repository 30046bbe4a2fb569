//! What a ranker replica costs, over real gRPC on loopback with real sled stores:
//!
//! 1. **Copy**: a new replica's time from start to holding the primary's catalog (snapshot
//!    streamed, catalog and HNSW graph rebuilt), against the primary's own cold start on the
//!    same store (replay, graph built) in the same run.
//! 2. **Lag**: how long after a write is sent to the primary the replica serves it, against
//!    the write's own round trip.
//!    Bulk events sent through the replica (passed on) against sent to the primary.
//! 3. **Write cost**: bulk `RecordInteractions` throughput on the primary with a replica
//!    following and with none, alternating.
//! 4. **Copy under load**: a new replica's copy while four clients keep sending one-event
//!    writes to the primary (more of them than the primary's journal holds): the time to in
//!    sync, and that the replica then holds every event the primary does.
//! 5. **Outbox**: the primary stopped, 100,000 events sent through the replica (queued on its
//!    disk), the primary started again: how soon the outbox reaches it, and how soon the
//!    replica is in sync again holding every event (it resumes: the primary stopped cleanly).
//!    The stop comes 0.5 s into another new replica's copy: how long the graceful stop takes.
//! 6. **Restart** (run before 5): the replica of part 4 stopped, 50,000 events written to the
//!    primary, the replica started again: its time to in sync (its own store replayed, then
//!    the writes it missed), against a new replica's copy of the same primary.
//!
//! ```text
//! cargo run --release -p souk-ranker --example replica_cost -- ITEMS EVENTS WRITES
//! ```
//! Items get synthetic 384-d vectors and 4-word titles; no encoder runs (the ranker serves
//! without one), so the figures are the replication's own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use souk_proto::ranker::v1 as pb;
use souk_proto::ranker::v1::ranker_client::RankerClient;
use souk_ranker::{RankerArgs, serve};
use tokio::net::TcpListener;
use tonic::transport::Channel;

mod common;
use common::{DIM, KEY, fill};

struct Server {
    addr: std::net::SocketAddr,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &Path, primary: Option<String>) -> Server {
    start_at("127.0.0.1:0".parse().unwrap(), dir, primary).await
}

async fn start_at(at: std::net::SocketAddr, dir: &Path, primary: Option<String>) -> Server {
    let listener = TcpListener::bind(at).await.unwrap();
    let listener_addr = listener.local_addr().unwrap();
    let url = format!("http://{listener_addr}");
    let args = RankerArgs {
        listen: listener.local_addr().unwrap(),
        data_dir: dir.to_path_buf(),
        encoder_url: "http://127.0.0.1:9".into(),
        kg_url: "http://127.0.0.1:9".into(),
        dependency_timeout_ms: 100,
        load_timeout_ms: 1_000,
        query_cache_ttl_s: 300,
        embedding_dimensions: None,
        ann_min_items: souk_ranker::DEFAULT_ANN_MIN_ITEMS,
        popularity_half_life_days: souk_ranker::POPULARITY_HALF_LIFE_DAYS,
        user_id_key: Some(KEY.into()),
        encoder_check_ms: 60_000,
        reembed_on_model_change: false,
        primary,
        accept_new_primary_store: false,
        restore_from: None,
        prepare_downgrade: false,
        server: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, args, async move {
        let _ = stopped.await;
    }));
    Server {
        addr: listener_addr,
        url,
        stop,
        task,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn client(url: &str) -> RankerClient<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect_lazy();
    RankerClient::new(channel)
}

async fn stats(client: &mut RankerClient<Channel>) -> Option<pb::StatsResponse> {
    client
        .stats(pb::StatsRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls until `done` holds of the stats (1 ms apart).
async fn wait(client: &mut RankerClient<Channel>, done: impl Fn(&pb::StatsResponse) -> bool) {
    loop {
        if stats(client).await.is_some_and(|s| done(&s)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn events(n: usize, user: &str) -> pb::RecordInteractionsRequest {
    pb::RecordInteractionsRequest {
        interactions: (0..n)
            .map(|i| pb::Interaction {
                user_id: format!("{user}-{i}"),
                item_id: format!("p{:06}", i % 1000),
                kind: pb::InteractionKind::View as i32,
                value: 1.0,
                timestamp_ms: 0,
            })
            .collect(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Bulk events per second into `client`: `batches` streams of one 1,000-event batch.
async fn bulk_rate(client: &mut RankerClient<Channel>, batches: usize, tag: &str) -> f64 {
    let started = Instant::now();
    for b in 0..batches {
        client
            .record_interactions(futures::stream::iter(vec![events(
                1000,
                &format!("{tag}{b}"),
            )]))
            .await
            .unwrap();
    }
    (batches * 1000) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=info` shows the replica's split of a copy: receiving and storing the records
    // (`receive_seconds`) against the whole (`seconds`, the rebuild from the store after).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (items, events_n, writes) = (arg(1, 10_000), arg(2, 100_000), arg(3, 200));
    let dir = tempfile::tempdir().unwrap();
    let primary_dir = dir.path().join("primary");
    let started = Instant::now();
    fill(&primary_dir, items, events_n);
    println!(
        "store: {items} items ({DIM}-d), {events_n} events, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. The primary's cold start on this store, then a replica's copy of it.
    let t = Instant::now();
    let primary = start(&primary_dir, None).await;
    let mut p = client(&primary.url).await;
    wait(&mut p, |s| s.items == items as u64).await;
    let primary_start = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let replica = start(&dir.path().join("replica"), Some(primary.url.clone())).await;
    let mut r = client(&replica.url).await;
    wait(&mut r, |s| s.in_sync && s.items == items as u64).await;
    let copy = t.elapsed().as_secs_f64();
    let (ps, rs) = (stats(&mut p).await.unwrap(), stats(&mut r).await.unwrap());
    assert_eq!(
        (ps.items, ps.interactions, ps.users),
        (rs.items, rs.interactions, rs.users)
    );
    println!(
        "copy: primary cold start {primary_start:.2} s, replica start to in sync {copy:.2} s ({:.2}x)",
        copy / primary_start
    );

    // 2. Lag of single-event writes.
    let (mut rtt, mut lag) = (Vec::new(), Vec::new());
    for w in 0..writes {
        let expected = rs.interactions + w as u64 + 1;
        let t = Instant::now();
        p.record_interactions(futures::stream::iter(vec![events(1, &format!("lag{w}"))]))
            .await
            .unwrap();
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
        wait(&mut r, |s| s.interactions == expected).await;
        lag.push(t.elapsed().as_secs_f64() * 1e3);
    }
    rtt.sort_by(f64::total_cmp);
    lag.sort_by(f64::total_cmp);
    println!(
        "lag over {writes} one-event writes: write round trip p50 {:.2} / p99 {:.2} ms; served by the replica p50 {:.2} / p99 {:.2} ms after the send (Stats polled 1 ms apart)",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99),
        percentile(&lag, 0.5),
        percentile(&lag, 0.99)
    );

    // 2b. Bulk events sent through the replica (passed on to the primary) against sent to
    // the primary itself, alternating.
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for round in 0..2 {
        through.push(bulk_rate(&mut r, 20, &format!("through{round}")).await);
        direct.push(bulk_rate(&mut p, 20, &format!("direct{round}")).await);
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "bulk events/s (20 x 1,000) sent through the replica {}, to the primary {}",
        fmt(&through),
        fmt(&direct)
    );
    // One stream of 2,000 one-event messages (a shop forwarding each event as it happens).
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for round in 0..2 {
        for (client, rates) in [(&mut r, &mut through), (&mut p, &mut direct)] {
            let messages: Vec<_> = (0..2000)
                .map(|i| events(1, &format!("single{round}-{i}")))
                .collect();
            let t = Instant::now();
            client
                .record_interactions(futures::stream::iter(messages))
                .await
                .unwrap();
            rates.push(2000.0 / t.elapsed().as_secs_f64());
        }
    }
    println!(
        "one stream of 2,000 one-event messages, events/s: through the replica {}, to the primary {}",
        fmt(&through),
        fmt(&direct)
    );

    // 3. Bulk writes with and without a replica following, alternating.
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut replica = Some(replica);
    for round in 0..2 {
        if replica.is_none() {
            let started = start(&dir.path().join("replica"), Some(primary.url.clone())).await;
            let mut r = client(&started.url).await;
            wait(&mut r, |s| s.in_sync).await;
            replica = Some(started);
        }
        with.push(bulk_rate(&mut p, 20, &format!("with{round}")).await);
        if let Some(replica) = replica.take() {
            replica.stop().await;
        }
        without.push(bulk_rate(&mut p, 20, &format!("without{round}")).await);
    }
    println!(
        "bulk events/s into the primary (20 x 1,000): with a replica following {}, with none {}",
        fmt(&with),
        fmt(&without)
    );

    // 4. A copy while writes keep coming.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Four clients, each sending one-event writes one after another.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut p, writing) = (p.clone(), writing.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    p.record_interactions(futures::stream::iter(vec![events(
                        1,
                        &format!("load{w}-{sent}"),
                    )]))
                    .await
                    .unwrap();
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let t = Instant::now();
    let replica = start(&dir.path().join("loaded"), Some(primary.url.clone())).await;
    let mut r = client(&replica.url).await;
    let synced = tokio::time::timeout(Duration::from_secs(120), wait(&mut r, |s| s.in_sync))
        .await
        .is_ok();
    let copy = t.elapsed().as_secs_f64();
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for writer in writers {
        sent += writer.await.unwrap();
    }
    if synced {
        let expected = stats(&mut p).await.unwrap().interactions;
        wait(&mut r, |s| s.interactions == expected).await;
        println!(
            "copy under load: in sync after {copy:.2} s while {sent} one-event writes were sent ({:.0}/s); then holds all {expected} events",
            sent as f64 / copy
        );
    } else {
        println!(
            "copy under load: NOT in sync after {copy:.2} s while {sent} one-event writes were sent ({:.0}/s)",
            sent as f64 / copy
        );
    }
    // 6. The replica restarts while 50,000 events reach the primary: it replays its own store
    // and takes the writes it missed (the primary kept them), against a new replica's copy.
    let replica_addr = replica.addr;
    replica.stop().await;
    let missed = bulk_rate(&mut p, 50, "missed").await;
    let expected = stats(&mut p).await.unwrap().interactions;
    let t = Instant::now();
    let replica = start_at(
        replica_addr,
        &dir.path().join("loaded"),
        Some(primary.url.clone()),
    )
    .await;
    let mut r = client(&replica.url).await;
    wait(&mut r, |s| s.in_sync && s.interactions == expected).await;
    let restart = t.elapsed().as_secs_f64();
    let s = stats(&mut r).await.unwrap();
    let t = Instant::now();
    let fresh = start(&dir.path().join("fresh"), Some(primary.url.clone())).await;
    let mut f = client(&fresh.url).await;
    wait(&mut f, |s| s.in_sync && s.interactions == expected).await;
    let copy = t.elapsed().as_secs_f64();
    fresh.stop().await;
    println!(
        "replica restart while 50,000 events were written ({missed:.0}/s): in sync after {restart:.2} s ({} copies, {} resumes); a new replica's copy {copy:.2} s ({:.2}x)",
        s.replica_copies,
        s.replica_resumes,
        restart / copy
    );

    // 5. The primary away: events sent through the replica go to its outbox, and reach the
    // primary once it is back.
    let mut r = client(&replica.url).await;
    let expected = stats(&mut p).await.unwrap().interactions + 100_000;
    let addr = primary.addr;
    // The stop comes while another new replica copies the primary.
    let copying = start(&dir.path().join("copying"), Some(primary.url.clone())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    primary.stop().await;
    let stop = t.elapsed().as_secs_f64();
    copying.stop().await;
    println!("the primary's graceful stop, 0.5 s into a new replica's copy: {stop:.2} s");
    let queue = bulk_rate(&mut r, 100, "away").await;
    let queued = stats(&mut r).await.unwrap().outbox;
    let t = Instant::now();
    let primary = start_at(addr, &primary_dir, None).await;
    let mut p = client(&primary.url).await;
    wait(&mut p, |_| true).await;
    let back = t.elapsed().as_secs_f64();
    wait(&mut r, |s| s.outbox == 0).await;
    let drained = t.elapsed().as_secs_f64() - back;
    wait(&mut p, |s| s.interactions == expected).await;
    wait(&mut r, |s| s.in_sync && s.interactions == expected).await;
    let synced = t.elapsed().as_secs_f64();
    let s = stats(&mut r).await.unwrap();
    println!(
        "primary away: {queued} events queued on the replica at {queue:.0}/s; primary serving again after {back:.2} s, the outbox delivered {drained:.2} s later ({:.0} events/s); the replica in sync with all of them {synced:.2} s after the primary's start ({} copies, {} resumes since its start)",
        queued as f64 / drained,
        s.replica_copies,
        s.replica_resumes,
    );
    replica.stop().await;
    primary.stop().await;
}
