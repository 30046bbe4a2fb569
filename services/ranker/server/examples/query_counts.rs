//! How well `Stats.unmatched_queries` finds a shop's commonest unmatched searches when more
//! distinct queries come than the ranker keeps (1,000), against the table it replaced (the
//! first 1,000 distinct queries seen, later ones only counted as "others"), on the same
//! stream in the same run; and what one count costs each way.
//!
//! ```text
//! cargo run --release -p souk-ranker --example query_counts -- [SEARCHES] [TERMS]
//! ```
//! The stream: SEARCHES (default 500,000) searches over TERMS (default 50,000) distinct
//! queries, Zipf-like (term r drawn with weight ~1/r), in four periods whose commonest
//! queries differ (each period ranks the terms by another permutation: trends). Printed: of
//! the true 20 commonest queries over the whole stream, how many each table lists in its top
//! 20, and the mean time of one `record`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Instant;

use souk_ranker::metrics::{QueryCounts, UNMATCHED_DISTINCT};
use souk_ranker_core::rng::XorShift;

/// The table `QueryCounts` replaced: the first `UNMATCHED_DISTINCT` keys seen, counted
/// exactly; later keys only in a total.
#[derive(Default)]
struct FirstSeen {
    counts: HashMap<String, u64>,
    others: u64,
}

impl FirstSeen {
    fn record(&mut self, key: String) {
        let full = self.counts.len() >= UNMATCHED_DISTINCT;
        match self.counts.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => self.others += 1,
            None => {
                self.counts.insert(key, 1);
            }
        }
    }

    fn top(&self, n: usize) -> Vec<String> {
        let mut all: Vec<(&String, u64)> = self.counts.iter().map(|(k, &c)| (k, c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter().take(n).map(|(k, _)| k.clone()).collect()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let searches = arg(1, 500_000);
    let terms = arg(2, 50_000);
    const PERIODS: usize = 4;
    let mut rng = XorShift::new(42);
    // Each period's permutation of the terms (Fisher-Yates).
    let permutations: Vec<Vec<usize>> = (0..PERIODS)
        .map(|_| {
            let mut p: Vec<usize> = (0..terms).collect();
            for i in (1..terms).rev() {
                let j = (rng.unit() * (i + 1) as f64) as usize;
                p.swap(i, j.min(i));
            }
            p
        })
        .collect();
    let stream: Vec<String> = (0..searches)
        .map(|i| {
            let r = ((terms as f64).powf(rng.unit()) as usize).clamp(1, terms) - 1;
            let period = i * PERIODS / searches;
            format!("query {}", permutations[period][r])
        })
        .collect();

    let mut truth: HashMap<&str, u64> = HashMap::new();
    for key in &stream {
        *truth.entry(key.as_str()).or_default() += 1;
    }
    let mut exact: Vec<(&str, u64)> = truth.into_iter().collect();
    exact.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let true_top: Vec<&str> = exact.iter().take(20).map(|(k, _)| *k).collect();
    let found = |listed: &[String]| {
        true_top
            .iter()
            .filter(|k| listed.iter().any(|l| l == *k))
            .count()
    };

    let started = Instant::now();
    let mut first_seen = FirstSeen::default();
    for key in &stream {
        first_seen.record(key.clone());
    }
    let first_seen_ns = started.elapsed().as_nanos() as f64 / searches as f64;
    let started = Instant::now();
    let mut space_saving = QueryCounts::default();
    for key in &stream {
        space_saving.record(key.clone());
    }
    let space_saving_ns = started.elapsed().as_nanos() as f64 / searches as f64;

    let listed: Vec<String> = space_saving.top(20).into_iter().map(|(k, _)| k).collect();
    println!(
        "{searches} searches, {} distinct queries, {PERIODS} periods; the true top 20 hold {}..{} searches each",
        exact.len(),
        exact[19.min(exact.len() - 1)].1,
        exact[0].1
    );
    println!(
        "first {UNMATCHED_DISTINCT} seen (before):  {:>2} of the true top 20 in its top 20, {:.0} ns per search",
        found(&first_seen.top(20)),
        first_seen_ns
    );
    println!(
        "space-saving (now):     {:>2} of the true top 20 in its top 20, {:.0} ns per search",
        found(&listed),
        space_saving_ns
    );
}
