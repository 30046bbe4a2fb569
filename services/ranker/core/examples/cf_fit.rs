//! How long `soukctl train cf` takes per algorithm at a given `--max-items`, and how large the
//! served neighbour lists are: the served fit (`fit_served`, lists included) on a generated
//! log, every algorithm on the same log in one run. Each shopper has a taste block of 500
//! items and picks 5-30 items, 80% inside it; popularity is skewed (each pick is the smallest
//! of three uniform draws).
//!
//! `cargo run --release -p souk-ranker-core --example cf_fit -- 3000 20000`
//! (items, users; defaults 3000 and 20000).
use std::time::Instant;

use souk_ranker_core::cf::{CfAlgorithm, CfOptions, fit_served};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let items = args.next().transpose()?.unwrap_or(3_000);
    let users = args.next().transpose()?.unwrap_or(20_000);
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
    for algorithm in [CfAlgorithm::ItemKnn, CfAlgorithm::Ials, CfAlgorithm::Ease] {
        let options = CfOptions {
            algorithm,
            max_items: items,
            ..CfOptions::default()
        };
        let started = Instant::now();
        let fitted = fit_served(&log, &options, "bench".into())?;
        let seconds = started.elapsed().as_secs_f64();
        // What the ranker keeps and stores of it: the lists as strings, one JSON record.
        let entries: usize = fitted.neighbours.values().map(Vec::len).sum();
        println!(
            "{:<9} {seconds:>8.2} s  ({} items with neighbours, {entries} entries: {:.1} MB \
             of heap as strings, {:.1} MB of JSON stored)",
            algorithm.name(),
            fitted.neighbours.len(),
            heap_bytes(&fitted) as f64 / 1e6,
            serde_json::to_vec(&fitted)?.len() as f64 / 1e6,
        );
    }
    Ok(())
}

/// Heap bytes of the neighbour lists as held in memory: the map's slots, each key, each list
/// and each neighbour's id (allocator overhead not counted, so a lower bound).
fn heap_bytes(model: &souk_ranker_core::cf::TrainedCf) -> usize {
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
