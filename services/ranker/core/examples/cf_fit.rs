//! How long `soukctl train cf` takes per algorithm at a given `--max-items`, how large the
//! served model is, and what it costs a `Rank`: the served fit (`fit_served`) on a generated
//! log, every algorithm on the same log in one run, then the catalog's CF scoring
//! (`Catalog::cf_scores`, online co-occurrence plus the model) for 500 shoppers' histories.
//! Each shopper has a taste block of 500 items and picks 5-30 items, 80% inside it;
//! popularity is skewed (each pick is the smallest of three uniform draws). Algorithms whose
//! cap (`CfAlgorithm::max_items`) is under the item count are skipped.
//!
//! `cargo run --release -p souk-ranker-core --example cf_fit -- 3000 20000 [ials,ease]`
//! (items, users, algorithms; defaults 3000, 20000 and item-knn,ials,ease).
use std::sync::Arc;
use std::time::Instant;

use souk_ranker_core::UserKey;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::cf::{CfAlgorithm, CfOptions, TrainedCf, fit_served};
use souk_ranker_core::item::{Interaction, InteractionKind, Item};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let items = args.next().transpose()?.unwrap_or(3_000);
    let users = args.next().transpose()?.unwrap_or(20_000);
    let only = std::env::args()
        .nth(3)
        .unwrap_or_else(|| "item-knn,ials,ease".into());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    // Skewed pick in 0..n (popular items first): the smallest of three uniform draws.
    let skewed = |n: usize, next: &mut dyn FnMut(usize) -> usize| next(n).min(next(n)).min(next(n));
    let log: Vec<Vec<String>> = (0..users)
        .map(|_| {
            let block = next(items.div_ceil(500)) * 500;
            let count = 5 + next(26);
            (0..count)
                .map(|_| {
                    let id = if next(10) < 8 {
                        (block + skewed(500, &mut next)).min(items - 1)
                    } else {
                        skewed(items, &mut next)
                    };
                    format!("p{id:05}")
                })
                .collect()
        })
        .collect();
    let events: usize = log.iter().map(Vec::len).sum();
    println!("{items} items, {users} users, {events} events, 2 threads where a fit uses them");
    let mut catalog = Catalog::default();
    for id in 0..items {
        let item = Item {
            id: format!("p{id:05}"),
            price: 1.0,
            in_stock: true,
            ..Item::default()
        };
        catalog.upsert(item, vec![1.0, 0.0, 0.0, 0.0])?;
    }
    let mut timestamp_ms = 0;
    for (u, picks) in log.iter().enumerate() {
        for item_id in picks {
            timestamp_ms += 1;
            catalog.record(&Interaction {
                user: UserKey::from_stored(format!("{u:016x}")),
                item_id: item_id.clone(),
                kind: InteractionKind::Purchase,
                value: 1.0,
                timestamp_ms,
            });
        }
    }
    let shoppers: Vec<_> = (0..500.min(users))
        .map(|u| catalog.history(&UserKey::from_stored(format!("{u:016x}"))))
        .collect();
    let per_rank = |catalog: &mut Catalog, model: Option<Arc<TrainedCf>>| {
        catalog.set_trained_cf(model);
        let started = Instant::now();
        let found: usize = shoppers.iter().map(|h| catalog.cf_scores(h).len()).sum();
        let micros = started.elapsed().as_secs_f64() * 1e6 / shoppers.len() as f64;
        (micros, found / shoppers.len())
    };
    let (micros, found) = per_rank(&mut catalog, None);
    println!(
        "{:<9} {:>8} {micros:>10.0} us per Rank ({found} items scored)",
        "online", ""
    );
    for algorithm in [CfAlgorithm::ItemKnn, CfAlgorithm::Ials, CfAlgorithm::Ease] {
        if !only.split(',').any(|a| a == algorithm.name()) {
            continue;
        }
        if items > algorithm.max_items() {
            println!(
                "{:<9} skipped: over its cap of {} items",
                algorithm.name(),
                algorithm.max_items()
            );
            continue;
        }
        let options = CfOptions {
            algorithm,
            max_items: items,
            ..CfOptions::default()
        };
        let started = Instant::now();
        let fitted = fit_served(&log, &options, "bench".into())?;
        let seconds = started.elapsed().as_secs_f64();
        let size = match &fitted.factors {
            // What the ranker keeps and stores of it: the f32 vectors and the ids.
            Some(f) => {
                let vectors = f.model.vectors().len() * 4;
                let ids: usize = f.items.iter().map(String::len).sum();
                format!(
                    "{} item vectors of {}: {:.1} MB of f32 + {:.2} MB of ids",
                    f.items.len(),
                    f.model.dim(),
                    vectors as f64 / 1e6,
                    ids as f64 / 1e6
                )
            }
            // The lists as strings, one JSON record.
            None => {
                let entries: usize = fitted.neighbours.values().map(Vec::len).sum();
                format!(
                    "{} items with neighbours, {entries} entries: {:.1} MB of heap as strings, \
                     {:.1} MB of JSON stored",
                    fitted.neighbours.len(),
                    heap_bytes(&fitted) as f64 / 1e6,
                    serde_json::to_vec(&fitted.neighbours)?.len() as f64 / 1e6,
                )
            }
        };
        let (micros, found) = per_rank(&mut catalog, Some(Arc::new(fitted)));
        println!(
            "{:<9} {seconds:>8.2} s fit {micros:>8.0} us per Rank ({found} items scored)  {size}",
            algorithm.name(),
        );
    }
    Ok(())
}

/// Heap bytes of the neighbour lists as held in memory: the map's slots, each key, each list
/// and each neighbour's id (allocator overhead not counted, so a lower bound).
fn heap_bytes(model: &TrainedCf) -> usize {
    use std::mem::size_of;
    let slot = size_of::<(String, Vec<(String, f32)>)>();
    model.neighbours.capacity() * slot
        + model
            .neighbours
            .iter()
            .map(|(key, row)| {
                key.capacity()
                    + row.capacity() * size_of::<(String, f32)>()
                    + row.iter().map(|(id, _)| id.capacity()).sum::<usize>()
            })
            .sum::<usize>()
}
