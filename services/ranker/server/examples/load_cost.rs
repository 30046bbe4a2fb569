//! What a ranker's start costs: the catalog rebuilt from its sled store (items into BM25,
//! facets and vectors, every event replayed, the saved HNSW graph read back), as every start
//! and every replica's copy does it.
//!
//! ```text
//! cargo run --release -p souk-ranker --example load_cost -- DIR ITEMS EVENTS [RUNS]
//! ```
//! A store in DIR is filled first when DIR does not exist yet (the shop of `replica_cost`:
//! synthetic 384-d vectors, 4-word titles, clicks of 10,000 shoppers), and its graph is
//! built and saved once; then `RankerStore::served_catalog` runs RUNS times (default 3).
//! `RUST_LOG=souk_ranker=info` shows each run's split.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use souk_ranker::store::RankerStore;

mod common;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR ITEMS EVENTS [RUNS]"));
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (items, events, runs) = (arg(2, 100_000), arg(3, 1_000_000), arg(4, 3));
    if !dir.exists() {
        let started = Instant::now();
        common::fill(&dir, items, events);
        let store = RankerStore::open(&dir).unwrap();
        let (catalog, _) = store
            .served_catalog(souk_ranker::DEFAULT_ANN_MIN_ITEMS)
            .unwrap();
        if let Some(graph) = catalog.ann_snapshot() {
            store.save_ann(&graph).unwrap();
        }
        store.close().unwrap();
        println!(
            "store: {items} items, {events} events, written and its graph saved in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let store = RankerStore::open(&dir).unwrap();
    for run in 1..=runs {
        let started = Instant::now();
        let (catalog, saved) = store
            .served_catalog(souk_ranker::DEFAULT_ANN_MIN_ITEMS)
            .unwrap();
        println!(
            "run {run}: {} items, {} events: {:.2} s (graph read back as saved: {})",
            catalog.len(),
            catalog.interactions(),
            started.elapsed().as_secs_f64(),
            saved != souk_ranker::store::ANN_NOT_SAVED
        );
    }
    store.close().unwrap();
}
