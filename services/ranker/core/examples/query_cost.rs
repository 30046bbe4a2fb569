//! What a search's words cost `Rank` at the longest query it takes
//! ([`souk_ranker_core::rank::MAX_QUERY_BYTES`]): catalog words, misspelt words, and distinct
//! two-letter words (the most words a query can hold), each with k 10 and k 1000 explained,
//! on the demo shop (`kg-data/products.csv`, stand-in vectors). The median of 5 calls each.
//! `cargo run --release -p souk-ranker-core --example query_cost [BYTES]`
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::{Arc, RwLock};

use souk_ranker_core::UserHasher;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::item::{Interaction, InteractionKind, Item};
use souk_ranker_core::pins::{Boost, PinRule, Pins};
use souk_ranker_core::rank::{
    EmbeddingSource, GraphPath, GraphSource, RankQuery, Ranker, SourceError,
};
use souk_ranker_core::rng::XorShift;
use souk_ranker_core::synonyms::{SynonymRule, Synonyms};

const DIM: usize = 32;

/// Hashed bag of words, normalised: texts sharing words are near.
fn vector(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for word in text.split_whitespace() {
        let h = blake3::hash(word.to_lowercase().as_bytes());
        v[h.as_bytes()[0] as usize % DIM] += 1.0;
    }
    v[DIM - 1] += 0.1;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct Encoder;

impl EmbeddingSource for Encoder {
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, SourceError> {
        Ok(vector(text))
    }
}

struct Graph;

impl GraphSource for Graph {
    async fn paths(
        &self,
        _sources: Vec<String>,
        _targets: Vec<String>,
        _hops: u32,
    ) -> Result<Vec<GraphPath>, SourceError> {
        Ok(Vec::new())
    }
}

fn demo_items() -> Vec<Item> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../kg-data/products.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            Item {
                id: row[0].into(),
                title: row[1].into(),
                description: row[2].into(),
                category: row[3].split(" > ").map(str::to_string).collect(),
                brand: row[4].into(),
                price: row[5].parse().unwrap(),
                attributes: row[6]
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
                in_stock: &row[7] == "true",
            }
        })
        .collect()
}

fn pick<'a>(rng: &mut XorShift, from: &'a [&'a str]) -> &'a str {
    from[below(rng, from.len())]
}

fn below(rng: &mut XorShift, n: usize) -> usize {
    ((rng.unit() * n as f64) as usize).min(n.saturating_sub(1))
}

/// One edit at a random character: dropped, doubled, swapped with the next, or replaced.
fn misspell(rng: &mut XorShift, word: &str) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    if chars.is_empty() {
        return String::new();
    }
    let at = below(rng, chars.len());
    match below(rng, 4) {
        0 => {
            chars.remove(at);
        }
        1 => chars.insert(at, chars[at]),
        2 if at + 1 < chars.len() => chars.swap(at, at + 1),
        _ => {
            chars[at] = pick(rng, &["x", "é", "0", "ß", "İ"])
                .chars()
                .next()
                .unwrap()
        }
    }
    chars.into_iter().collect()
}

/// The words of the items' titles, lower-cased, each once, sorted.
fn title_words(items: &[Item]) -> Vec<String> {
    let mut words: Vec<String> = items
        .iter()
        .flat_map(|i| i.title.split_whitespace().map(str::to_lowercase))
        .collect();
    words.sort();
    words.dedup();
    words
}

fn shop(items: &[Item], hasher: &UserHasher) -> Ranker<Encoder, Graph> {
    let mut catalog = Catalog::default();
    catalog.set_ann_min_items(50); // the HNSW graph answers, as in a large shop
    for item in items {
        catalog
            .upsert(item.clone().validated().unwrap(), vector(&item.text()))
            .unwrap();
    }
    let rule = |phrases: &[&str], replacement: Option<&str>| SynonymRule {
        phrases: phrases.iter().map(|p| p.to_string()).collect(),
        replacement: replacement.map(str::to_string),
    };
    catalog.set_synonyms(Arc::new(
        Synonyms::new(vec![
            rule(&["backpack", "rucksack", "knapsack"], None),
            rule(&["running shoes", "trainers", "sneakers"], None),
            rule(&["smartphone", "cell phone", "mobile phone"], None),
            rule(&["keurig", "nespresso"], Some("coffee maker")),
        ])
        .unwrap(),
    ));
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    catalog.set_pins(Arc::new(
        Pins::new(vec![
            PinRule {
                query: "sleeping bag".into(),
                items: ids[..3].to_vec(),
                hidden: vec![ids[3].clone()],
                banner: "Spring".into(),
                ..Default::default()
            },
            PinRule {
                category: items[10].category[0].clone(),
                items: vec![ids[10].clone()],
                boosts: vec![Boost {
                    in_stock: true,
                    amount: 0.1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            PinRule {
                query: "returns".into(),
                redirect: "/help/returns".into(),
                ..Default::default()
            },
            PinRule {
                everywhere: true,
                hidden: vec![ids[5].clone()],
                boosts: vec![Boost {
                    brands: vec![items[6].brand.to_lowercase()],
                    amount: -0.2,
                    ..Default::default()
                }],
                ..Default::default()
            },
            PinRule {
                query: "tent".into(),
                contains: true,
                boosts: vec![Boost {
                    max_price: Some(100.0),
                    amount: 0.05,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ])
        .unwrap(),
    ));
    // A few shoppers with histories, so the collaborative signal has rows to read.
    let kinds = [
        InteractionKind::View,
        InteractionKind::Click,
        InteractionKind::Purchase,
    ];
    let mut rng = XorShift::new(99);
    for user in 0..20 {
        for n in 0..15 {
            catalog.record(&Interaction {
                user: hasher.key(&format!("u{user}")),
                item_id: ids[below(&mut rng, ids.len())].clone(),
                kind: kinds[n % 3],
                value: 1.0,
                timestamp_ms: 1_700_000_000_000 + n as i64 * 1000,
            });
        }
    }
    Ranker::new(Arc::new(RwLock::new(catalog)), Encoder, Graph)
}

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
