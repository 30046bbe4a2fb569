//! What a search's words cost `Rank` at the longest query it takes
//! ([`souk_ranker_core::rank::MAX_QUERY_BYTES`]): catalog words, misspelt words, and distinct
//! two-letter words (the most words a query can hold), each with k 10 and k 1000 explained,
//! on the demo shop (`kg-data/products.csv`, stand-in vectors). The median of 5 calls each.
//! `cargo run --release -p souk-ranker-core --example query_cost [BYTES]`
#![allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../tests/demo_shop/mod.rs"]
mod demo_shop;

use demo_shop::{below, demo_items, misspell, shop, title_words};
use souk_ranker_core::UserHasher;
use souk_ranker_core::rank::RankQuery;
use souk_ranker_core::rng::XorShift;

fn main() {
    let items = demo_items();
    let hasher = UserHasher::new(b"fuzz");
    let ranker = shop(&items, &hasher);
    let words = title_words(&items);
    let bytes: usize = std::env::args().nth(1).map_or(1024, |a| a.parse().unwrap());
    let mut rng = XorShift::new(3);
    for k in [10usize, 1000] {
        for label in ["catalog words", "misspelt", "distinct two-letter words"] {
            let mut q = String::new();
            loop {
                let w = match label {
                    "catalog words" => words[below(&mut rng, words.len())].clone(),
                    "misspelt" => {
                        let at = below(&mut rng, words.len());
                        misspell(&mut rng, &words[at])
                    }
                    _ => {
                        let n = below(&mut rng, 26 * 36);
                        format!(
                            "{}{}",
                            (b'a' + (n / 36) as u8) as char,
                            char::from_digit((n % 36) as u32, 36).unwrap()
                        )
                    }
                };
                if q.len() + w.len() + 1 > bytes {
                    break;
                }
                if !q.is_empty() {
                    q.push(' ');
                }
                q.push_str(&w);
            }
            let request = RankQuery {
                query: Some(q.clone()),
                k,
                explain: true,
                ..Default::default()
            };
            let mut times = Vec::new();
            let mut got = 0;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let r = futures::executor::block_on(ranker.rank(&request));
                times.push(t.elapsed());
                got = r.map(|r| r.items.len()).unwrap_or(0);
            }
            times.sort();
            println!(
                "k {k}, {label}, {} bytes, {} words: median {:?} -> {got} results",
                q.len(),
                q.split(' ').count(),
                times[2]
            );
        }
    }
}
