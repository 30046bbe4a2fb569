//! What the ranker's `Paths` call costs the graph: a triples file loaded into a `Graph`, then
//! 300 path searches shaped like a known shopper's `Rank` (20 source items, 300 target items,
//! at most 2 hops, one path per target), sources and targets drawn from the file's `item:`
//! entities. Prints the mean and p50/p99 per search and how many paths were found.
//!
//! `cargo run --release -p souk-kg-core --example paths_cost -- /tmp/shop100k/triples.tsv`
//! (a shop from `python3 scripts/gen_demo_data.py --scale 320 --users 10000 --out /tmp/shop100k`).
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use souk_kg_core::parse::tsv_line;
use souk_kg_core::{Graph, PathQuery};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: paths_cost TRIPLES.tsv")?;
    let text = std::fs::read_to_string(&path)?;
    let mut triples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(t) = tsv_line(line).map_err(|e| format!("{path}:{}: {e}", n + 1))? {
            triples.push(t);
        }
    }
    let mut graph = Graph::default();
    graph.insert(&triples);
    let mut items: Vec<String> = triples
        .iter()
        .flat_map(|t| [&t.head, &t.tail])
        .filter(|e| e.starts_with("item:"))
        .cloned()
        .collect();
    items.sort_unstable();
    items.dedup();
    println!(
        "{} triples, {} entities, {} items",
        graph.triple_count(),
        graph.entity_count(),
        items.len()
    );
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut pick = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let queries: Vec<PathQuery> = (0..300)
        .map(|_| PathQuery {
            sources: (0..20).map(|_| items[pick(items.len())].clone()).collect(),
            targets: (0..300).map(|_| items[pick(items.len())].clone()).collect(),
            max_hops: 2,
            limit: 1,
            relations: Vec::new(),
        })
        .collect();
    let mut micros = Vec::new();
    let (mut paths, mut truncated) = (0, 0);
    // Every path found, hashed in order: two builds that find the same paths print the same.
    let mut digest = DefaultHasher::new();
    // Two rounds; the second is reported (the first warms caches and the allocator).
    for _ in 0..2 {
        micros.clear();
        (paths, truncated) = (0, 0);
        digest = DefaultHasher::new();
        for query in &queries {
            let started = Instant::now();
            let found = graph.paths(query)?;
            micros.push(started.elapsed().as_secs_f64() * 1e6);
            paths += found.paths.len();
            truncated += usize::from(found.truncated);
            for p in &found.paths {
                (&p.source, &p.target).hash(&mut digest);
                for step in &p.steps {
                    (
                        &step.relation,
                        step.direction == souk_kg_core::Direction::Out,
                        &step.entity,
                    )
                        .hash(&mut digest);
                }
            }
        }
    }
    micros.sort_by(f64::total_cmp);
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "paths: mean {mean:.0} us, p50 {:.0} us, p99 {:.0} us per search; {:.1} paths per search, \
         {truncated} of {} truncated; digest {:016x}",
        micros[micros.len() / 2],
        micros[micros.len() * 99 / 100],
        paths as f64 / queries.len() as f64,
        queries.len(),
        digest.finish()
    );
    Ok(())
}
