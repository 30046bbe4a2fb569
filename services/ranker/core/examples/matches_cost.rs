//! What a query's BM25 matches cost at a given catalog size, apart from the rest of `Rank`:
//! building them ([`Bm25::matches`]), what the first pass then reads of them (each match's
//! relevance, and membership of items a graph walk visits), and dropping them. Titles as
//! `rank_cost` makes them (brand, colour, material, product word: a colour matches a tenth
//! of the catalog, a product word a fortieth). Before the queries, a tenth of the documents
//! are indexed again (same text, another text) and removed, timed.
//!
//! `cargo run --release -p souk-ranker-core --example matches_cost -- 1000000`
//! (documents; default 1,000,000; 200 rounds of each query kind, the second 100 reported).
use std::hint::black_box;
use std::time::Instant;

use souk_ranker_core::bm25::Bm25;

const COLOURS: &[&str] = &[
    "black", "white", "red", "blue", "green", "grey", "pink", "brown", "navy", "beige",
];
const MATERIALS: &[&str] = &[
    "cotton", "leather", "steel", "wooden", "plastic", "glass", "wool", "ceramic",
];

/// xorshift64*, seeded: the same index every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let docs = std::env::args()
        .nth(1)
        .map(|a| a.parse::<usize>())
        .transpose()?
        .unwrap_or(1_000_000);
    let mut rng = Rng(0x5eed);
    let title = |rng: &mut Rng| {
        format!(
            "Brand{} {} {} noun{}",
            rng.below(300),
            COLOURS[rng.below(COLOURS.len())],
            MATERIALS[rng.below(MATERIALS.len())],
            rng.below(40),
        )
    };
    let titles: Vec<String> = (0..docs).map(|_| title(&mut rng)).collect();
    let mut index = Bm25::default();
    let started = Instant::now();
    for (doc, title) in titles.iter().enumerate() {
        index.insert(doc as u32, title);
    }
    println!(
        "{docs} documents indexed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // A tenth of the documents, scattered, indexed again: with their own text (a catalog
    // loaded again), with another (an edited title), then removed and put back.
    let tenth: Vec<usize> = (0..docs / 10).map(|_| rng.below(docs)).collect();
    let started = Instant::now();
    for &doc in &tenth {
        index.insert(doc as u32, &titles[doc]);
    }
    let same = started.elapsed().as_secs_f64();
    let others: Vec<String> = tenth.iter().map(|_| title(&mut rng)).collect();
    let started = Instant::now();
    for (&doc, text) in tenth.iter().zip(&others) {
        index.insert(doc as u32, text);
    }
    let edited = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for &doc in &tenth {
        index.remove(doc as u32);
    }
    let removed = started.elapsed().as_secs_f64();
    for &doc in &tenth {
        index.insert(doc as u32, &titles[doc]);
    }
    println!(
        "{} scattered documents: indexed again with their text {same:.3} s, with another \
         {edited:.3} s, removed {removed:.3} s",
        tenth.len()
    );
    let kinds: [(&str, &[&str]); 4] = [
        ("one colour", &["black", "white", "navy"]),
        (
            "colour and product",
            &["black noun3", "red noun7", "beige noun12"],
        ),
        ("product and material", &["noun5 leather", "noun9 glass"]),
        ("brand", &["brand17", "brand250"]),
    ];
    for (kind, queries) in kinds {
        let (mut build, mut read, mut freed, mut found) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for round in 0..200 {
            let query = queries[round % queries.len()];
            let t = Instant::now();
            let matches = index.matches(query);
            let built = t.elapsed();
            let t = Instant::now();
            // The pool reads every match's relevance; a walk asks about ~30k items.
            let best = matches.iter().map(|(_, r)| r).fold(0.0, f32::max);
            let held = (0..docs as u32)
                .step_by((docs / 30_000).max(1))
                .filter(|&d| matches.contains(d))
                .count();
            black_box((best, held));
            let reading = t.elapsed();
            found = matches.len();
            let t = Instant::now();
            drop(matches);
            let dropped = t.elapsed();
            if round >= 100 {
                build.push(built.as_secs_f64() * 1e6);
                read.push(reading.as_secs_f64() * 1e6);
                freed.push(dropped.as_secs_f64() * 1e6);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{kind:<22} {found:>7} matches  build {:>8.0} us  read {:>8.0} us  free {:>6.0} us",
            mean(&build),
            mean(&read),
            mean(&freed)
        );
    }
    Ok(())
}
