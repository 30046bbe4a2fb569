//! What one `Rank` costs inside the ranker at a given catalog size, with the encoder and the
//! graph answered in memory (so the figure is the ranker's own CPU: candidates, BM25, CF,
//! popularity, fusion, diversity). A generated shop: titles of brand, colour, material and
//! product words (so a colour matches a tenth of the catalog, as "black" does in a real one),
//! 384-dimensional clustered unit vectors, shoppers with skewed picks; the HNSW graph is built
//! once, after loading, as a store reload does. Twelve request kinds, 400 each: a search by an
//! anonymous visitor, the same search sorted by price, the same search misspelt (two letters swapped), the search by a known
//! shopper, a recommendation (no query), an item's page (anonymous and for a known shopper),
//! and the anonymous search filtered to a department
//! (a twelfth of the items), by a price cap (an eighth), to one colour attribute (a tenth),
//! or under 60 in two colours, and the anonymous search with facet counts (brand, category,
//! colour).
//!
//! `cargo run --release -p souk-ranker-core --example rank_cost -- 100000 10000`
//! (items, shoppers; defaults 100000 and 10000; env `ANN_MIN` sets the HNSW threshold, and
//! `UPSERTS=1` times adding items one at a time against batches, and
//! `AGREEMENT=1` ranks every request again by exact scans and reports how much of each top 10
//! the candidate pool found, and `KIND=colour` runs only the kinds whose name holds it, and
//! `SYNONYMS=1` sets the product words as equivalent pairs, "shoe, jacket", so that every
//! query's product word also matches another common word's items: the dearest synonyms), and
//! `ANSWERS=path` writes every answer's ids there (to compare two builds' rankings), and
//! `DESCRIBED=1` gives every item a ~550-byte description and five attributes, and
//! `PINS=1` pins 16 items for each query's search (see `souk_ranker_core::pins`), and
//! `BOOSTS=1` gives each query's search three boosts (a colour, a price cap, a department), and
//! `EVERYWHERE=1` sets a rule for every ranking (64 items hidden; in stock +0.05, one
//! department -0.1), and
//! `GUEST=N` gives one shared id ("guest", as a shop may send every anonymous visitor) N
//! distinct items and adds two kinds, its search and its recommendation, and
//! `COLLAPSE=1` adds the anonymous search and its price order collapsed to one result per
//! colour, and `POPULAR=1` the anonymous search listed by popularity, and `DIMS=N` cuts every
//! vector to its first N values, renormalised, as `--embedding-dimensions N` does).
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use souk_ranker_core::UserKey;
use souk_ranker_core::catalog::{Catalog, DEFAULT_ANN_MIN_ITEMS};
use souk_ranker_core::facet::FacetField;
use souk_ranker_core::item::{Filters, Interaction, InteractionKind, Item};
use souk_ranker_core::pins::{Boost, MAX_PINNED, PinRule, Pins};
use souk_ranker_core::rank::{EmbeddingSource, NoGraph, RankQuery, Ranker, SortOrder, SourceError};
use souk_ranker_core::synonyms::{SynonymRule, Synonyms};

const DIM: usize = 384;
const CLUSTERS: usize = 200;
const COLOURS: &[&str] = &[
    "black", "white", "red", "blue", "green", "grey", "pink", "brown", "navy", "beige",
];
const MATERIALS: &[&str] = &[
    "cotton",
    "leather",
    "steel",
    "wooden",
    "plastic",
    "glass",
    "wool",
    "ceramic",
    "bamboo",
    "nylon",
    "silk",
    "linen",
    "rubber",
    "aluminium",
    "copper",
    "canvas",
];
const NOUNS: &[&str] = &[
    "shoe",
    "jacket",
    "lamp",
    "mug",
    "chair",
    "table",
    "backpack",
    "watch",
    "scarf",
    "glove",
    "kettle",
    "pan",
    "knife",
    "bottle",
    "towel",
    "pillow",
    "blanket",
    "rug",
    "mirror",
    "clock",
    "speaker",
    "headphone",
    "charger",
    "cable",
    "keyboard",
    "mouse",
    "monitor",
    "desk",
    "shelf",
    "basket",
    "vase",
    "candle",
    "frame",
    "hat",
    "belt",
    "wallet",
    "sock",
    "boot",
    "sandal",
    "dress",
    "shirt",
    "sweater",
    "hoodie",
    "jean",
    "short",
    "skirt",
    "coat",
    "umbrella",
    "tent",
    "helmet",
];

/// xorshift64: deterministic without a rand dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn unit_noise(&mut self) -> f32 {
        self.below(1 << 24) as f32 / (1 << 24) as f32 - 0.5
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn near(centre: &[f32], spread: f32, rng: &mut Rng) -> Vec<f32> {
    let mut v: Vec<f32> = centre
        .iter()
        .map(|c| c + spread * rng.unit_noise())
        .collect();
    v.truncate(kept_dimensions());
    unit(v)
}

/// `DIMS=N`: every item and query vector cut to its first N values and normalised again, as
/// the encoder cuts them for the ranker's `--embedding-dimensions` (default: all 384).
fn kept_dimensions() -> usize {
    static KEPT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEPT.get_or_init(|| {
        std::env::var("DIMS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(DIM, |d| d.clamp(1, DIM))
    })
}

/// A product of `cluster`: a title of brand, colour, material and the cluster's noun, and a
/// vector near the cluster's centre. `described`: also a description of ~550 bytes (80
/// words of a 5,000-word vocabulary, common ones more often: Flipkart's descriptions average
/// 548 bytes) and four more attributes, as a real shop's products have.
fn product(
    id: String,
    cluster: usize,
    centres: &[Vec<f32>],
    rng: &mut Rng,
    described: bool,
) -> (Item, Vec<f32>) {
    let noun = NOUNS[cluster % NOUNS.len()];
    let brand = rng.below(300);
    let colour = COLOURS[rng.below(COLOURS.len())];
    let material = MATERIALS[rng.below(MATERIALS.len())];
    let title = format!("Brand{brand} {colour} {material} {noun}");
    let mut attributes = vec![("colour".to_string(), colour.to_string())];
    let mut description = String::new();
    if described {
        for _ in 0..80 {
            let word = rng.below(5_000).min(rng.below(5_000));
            description.push_str(&format!("word{word} "));
        }
        attributes.extend([
            ("material".to_string(), material.to_string()),
            (
                "size".to_string(),
                ["S", "M", "L", "XL"][rng.below(4)].to_string(),
            ),
            (
                "season".to_string(),
                ["summer", "winter", "all"][rng.below(3)].to_string(),
            ),
            (
                "warranty".to_string(),
                format!("{} months", 6 * (1 + rng.below(4))),
            ),
        ]);
    }
    let item = Item {
        id,
        title,
        description,
        category: vec![format!("dept{}", cluster % 12), noun.to_string()],
        brand: String::new(),
        price: 5.0 + rng.below(200) as f64,
        attributes: attributes.into_iter().collect(),
        in_stock: true,
    };
    (item, near(&centres[cluster], 0.08, rng))
}

/// Queries embed to a vector near one cluster's centre, chosen by the query's words.
struct Encoder(Vec<Vec<f32>>);
impl EmbeddingSource for Encoder {
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, SourceError> {
        let h = text
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31) + u64::from(b));
        let mut rng = Rng(h | 1);
        Ok(near(&self.0[h as usize % CLUSTERS], 0.05, &mut rng))
    }
}

/// The process's resident memory in MB (Linux; 0 elsewhere).
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let items = args.next().transpose()?.unwrap_or(100_000);
    let users = args.next().transpose()?.unwrap_or(10_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| unit((0..DIM).map(|_| rng.unit_noise()).collect()))
        .collect();

    let started = Instant::now();
    let mut catalog = Catalog::default();
    catalog.set_ann_min_items(usize::MAX);
    let described = std::env::var("DESCRIBED").is_ok_and(|v| v == "1");
    for i in 0..items {
        let (item, vector) = product(
            format!("p{i:06}"),
            i % CLUSTERS,
            &centres,
            &mut rng,
            described,
        );
        catalog.upsert(item, vector)?;
    }
    let loaded = started.elapsed().as_secs_f64();
    let rss_items = rss_mb();
    // Shoppers stay mostly inside a few clusters; picks are skewed to popular items.
    let mut timestamp_ms = 0;
    for u in 0..users {
        let user = UserKey::from_stored(format!("{u:016x}"));
        let home = rng.below(CLUSTERS);
        for _ in 0..5 + rng.below(30) {
            let cluster = if rng.below(10) < 8 {
                home
            } else {
                rng.below(CLUSTERS)
            };
            let per = items / CLUSTERS;
            let pick = rng.below(per).min(rng.below(per)).min(rng.below(per));
            timestamp_ms += 1;
            catalog.record(&Interaction {
                user: user.clone(),
                item_id: format!("p{:06}", (pick * CLUSTERS + cluster).min(items - 1)),
                kind: if rng.below(5) == 0 {
                    InteractionKind::Purchase
                } else {
                    InteractionKind::View
                },
                value: 1.0,
                timestamp_ms,
            });
        }
    }
    // GUEST=N: one id with N distinct items, one in five bought.
    let guest = std::env::var("GUEST")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    for j in 0..guest {
        timestamp_ms += 1;
        catalog.record(&Interaction {
            user: UserKey::from_stored("guest".into()),
            item_id: format!("p{:06}", (j * 7_919) % items),
            kind: if j % 5 == 0 {
                InteractionKind::Purchase
            } else {
                InteractionKind::View
            },
            value: 1.0,
            timestamp_ms,
        });
    }
    let rss_events = rss_mb();
    let started_ann = Instant::now();
    // ANN_MIN=1000000000: no graph, every `Rank` an exact scan (what a catalog serves below
    // the threshold, or if it had to serve before its graph is built).
    let min_items = std::env::var("ANN_MIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ANN_MIN_ITEMS);
    catalog.set_ann_min_items(min_items);
    println!(
        "{items} items ({loaded:.1} s), {users} shoppers, {} events; HNSW {:.1} s",
        catalog.interactions(),
        started_ann.elapsed().as_secs_f64()
    );
    println!(
        "resident: {rss_items} MB with the items, {rss_events} MB with the events, {} MB with the graph",
        rss_mb()
    );

    if std::env::var("SYNONYMS").is_ok_and(|v| v == "1") {
        let rules = NOUNS
            .chunks_exact(2)
            .map(|pair| SynonymRule {
                phrases: pair.iter().map(|w| w.to_string()).collect(),
                replacement: None,
            })
            .collect();
        catalog.set_synonyms(Arc::new(Synonyms::new(rules)?));
        println!(
            "synonyms: {} equivalent pairs of product words",
            NOUNS.len() / 2
        );
    }
    let ranker = Ranker::new(
        Arc::new(RwLock::new(catalog)),
        Encoder(centres.clone()),
        NoGraph,
    );
    let queries: Vec<String> = (0..400)
        .map(|i| {
            let noun = NOUNS[i % NOUNS.len()];
            match i % 3 {
                0 => format!("{} {noun}", COLOURS[i % COLOURS.len()]),
                1 => format!("{} {noun}s", MATERIALS[i % MATERIALS.len()]),
                _ => noun.to_string(),
            }
        })
        .collect();
    // The same queries with two letters swapped in a word of 4+ letters (`Bm25::correct`
    // puts them back; "mug" alone stays as typed).
    let misspelt: Vec<String> = queries
        .iter()
        .map(|q| {
            let words: Vec<String> = q
                .split(' ')
                .map(|w| {
                    let mut b = w.as_bytes().to_vec();
                    if b.len() >= 4 {
                        b.swap(1, 2);
                    }
                    String::from_utf8_lossy(&b).into_owned()
                })
                .collect();
            words.join(" ")
        })
        .collect();
    // PINS=1: every query's search pins 16 items spread over the catalog (mostly far from
    // it: they join the pool and are scored wherever they are), what a pinned search costs.
    // BOOSTS=1: every query's search lifts one colour (a tenth of the items) and a
    // department (a twelfth) and lowers what is under 60 (about a quarter): every candidate
    // checked against three filters.
    let pinning = std::env::var("PINS").is_ok_and(|v| v == "1");
    let boosting = std::env::var("BOOSTS").is_ok_and(|v| v == "1");
    // EVERYWHERE=1: one rule for every ranking, as a shop would set it: a recall's worth of
    // items off every list, what is in stock a little ahead (every item here) and one
    // department a little lower.
    let everywhere = std::env::var("EVERYWHERE").is_ok_and(|v| v == "1");
    if pinning || boosting || everywhere {
        let boosts = |i: usize| {
            if !boosting {
                return Vec::new();
            }
            vec![
                Boost {
                    attributes: vec![("colour".into(), vec![COLOURS[i % COLOURS.len()].into()])],
                    amount: 0.1,
                    ..Default::default()
                },
                Boost {
                    max_price: Some(60.0),
                    amount: -0.05,
                    ..Default::default()
                },
                Boost {
                    category: format!("dept{}", i % 12),
                    amount: 0.05,
                    ..Default::default()
                },
            ]
        };
        let mut seen = HashSet::new();
        let mut rules: Vec<PinRule> = queries
            .iter()
            .enumerate()
            .filter(|_| pinning || boosting)
            .filter(|(_, q)| seen.insert(souk_ranker_core::bm25::terms(q)))
            .map(|(i, q)| PinRule {
                query: q.clone(),
                items: (0..MAX_PINNED)
                    .filter(|_| pinning)
                    .map(|j| format!("p{:06}", (i * 7_919 + j * 104_729) % items))
                    .collect(),
                boosts: boosts(i),
                ..Default::default()
            })
            .collect();
        println!(
            "pins: {} searches pin {} items each, with {} boosts",
            rules.len(),
            if pinning { MAX_PINNED } else { 0 },
            if boosting { 3 } else { 0 }
        );
        if everywhere {
            println!("pins: a rule for every ranking hides 64 items, with 2 boosts");
            rules.push(PinRule {
                hidden: (0..64)
                    .map(|j| format!("p{:06}", (j * (items / 64).max(1) + 7) % items))
                    .collect(),
                boosts: vec![
                    Boost {
                        in_stock: true,
                        amount: 0.05,
                        ..Default::default()
                    },
                    Boost {
                        category: "dept3".into(),
                        amount: -0.1,
                        ..Default::default()
                    },
                ],
                everywhere: true,
                ..Default::default()
            });
        }
        let pins = Arc::new(Pins::new(rules)?);
        ranker
            .catalog()
            .write()
            .map_err(|_| "catalog lock poisoned")?
            .set_pins(pins);
    }
    let shopper = |i: usize| Some(UserKey::from_stored(format!("{:016x}", (i * 7919) % users)));
    // Item pages: items spread over the catalog (every cluster).
    let page_item = |i: usize| Some(format!("p{:06}", (i * 7_919) % items));
    let guest_user = || Some(UserKey::from_stored("guest".into()));
    let guest_kinds: [(&str, &dyn Fn(usize) -> RankQuery); 2] = [
        ("search, guest", &|i| RankQuery {
            user: guest_user(),
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("recommendation, guest", &|_| RankQuery {
            user: guest_user(),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
    ];
    let kinds: [(&str, &dyn Fn(usize) -> RankQuery); 12] = [
        ("search, anonymous", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("search, cheapest first", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            sort: SortOrder::PriceAscending,
            ..RankQuery::default()
        }),
        ("search, misspelt", &|i| RankQuery {
            query: Some(misspelt[i].clone()),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("search, known shopper", &|i| RankQuery {
            user: shopper(i),
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("recommendation", &|i| RankQuery {
            user: shopper(i),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("item page, anonymous", &|i| RankQuery {
            item: page_item(i),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        ("item page, known shopper", &|i| RankQuery {
            user: shopper(i),
            item: page_item(i),
            k: 10,
            explain: true,
            ..RankQuery::default()
        }),
        // A department (1/12 of the items), mostly not the query's: a shop's category facet.
        ("search, department", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            filters: Filters::new(&format!("dept{}", i % 12), &[], None, None, false)
                .unwrap_or_default(),
            ..RankQuery::default()
        }),
        // A price cap an eighth of the items pass: at 100k items over the scan limit (the
        // graph walk), at 10k under it (its members scored).
        ("search, under 30", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            filters: Filters::new("", &[], None, Some(30.0), false).unwrap_or_default(),
            ..RankQuery::default()
        }),
        // An attribute facet: one colour (a tenth of the items, scored as members).
        ("search, one colour", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            filters: Filters::default()
                .with_attributes([(
                    "colour".to_string(),
                    vec![COLOURS[i % COLOURS.len()].to_string()],
                )])
                .unwrap_or_default(),
            ..RankQuery::default()
        }),
        // Two broad facets together: under 60 (28% pass) in two colours (20%): each side
        // over the scan limit at 100k, ~5.5k pass both.
        ("search, under 60 in two colours", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            filters: Filters::new("", &[], None, Some(60.0), false)
                .and_then(|f| {
                    f.with_attributes([(
                        "colour".to_string(),
                        vec![
                            COLOURS[i % COLOURS.len()].to_string(),
                            COLOURS[(i + 1) % COLOURS.len()].to_string(),
                        ],
                    )])
                })
                .unwrap_or_default(),
            ..RankQuery::default()
        }),
        // The anonymous search with the counts a search page shows beside it.
        ("search, three facet counts", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            facets: vec![
                FacetField::Brand,
                FacetField::Category,
                FacetField::Attribute("colour".into()),
            ],
            ..RankQuery::default()
        }),
    ];
    // COLLAPSE=1: the anonymous search and its price order, one result per colour (ten
    // groups, most of every pool dropped: the dearest case for the groups' lookups).
    let colour = FacetField::Attribute("colour".into());
    let collapsed_kinds: [(&str, &dyn Fn(usize) -> RankQuery); 2] = [
        ("search, one per colour", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            collapse: Some(colour.clone()),
            ..RankQuery::default()
        }),
        ("search, cheapest first, one per colour", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            sort: SortOrder::PriceAscending,
            collapse: Some(colour.clone()),
            ..RankQuery::default()
        }),
    ];
    let collapsing = std::env::var("COLLAPSE").is_ok_and(|v| v == "1");
    let collapsed_kinds = if collapsing {
        &collapsed_kinds[..]
    } else {
        &[]
    };
    // POPULAR=1: the anonymous search listed by popularity (best sellers first).
    let popular_kinds: [(&str, &dyn Fn(usize) -> RankQuery); 1] =
        [("search, most popular first", &|i| RankQuery {
            query: Some(queries[i].clone()),
            k: 10,
            explain: true,
            sort: SortOrder::Popularity,
            ..RankQuery::default()
        })];
    let popular = std::env::var("POPULAR").is_ok_and(|v| v == "1");
    let popular_kinds = if popular { &popular_kinds[..] } else { &[] };
    // KIND=department: only the kinds whose name holds it (for a profile of one).
    let only = std::env::var("KIND").unwrap_or_default();
    let guest_kinds = if guest > 0 { &guest_kinds[..] } else { &[] };
    let kinds: Vec<_> = kinds
        .iter()
        .chain(guest_kinds)
        .chain(collapsed_kinds)
        .chain(popular_kinds)
        .filter(|(name, _)| name.contains(&only))
        .collect();
    let mut by_kind: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut answers: HashMap<&str, Vec<Vec<String>>> = HashMap::new();
    let mut scores: HashMap<&str, Vec<Vec<f32>>> = HashMap::new();
    let mut passes: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    // Two rounds; the last is reported (the first warms caches and the allocator).
    // ROUNDS=n runs more, long enough for a profiler to attach.
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2)
        .max(2);
    for round in 0..rounds {
        for (name, request) in &kinds {
            let mut micros = Vec::with_capacity(queries.len());
            let mut ids = Vec::with_capacity(queries.len());
            let mut scored = Vec::with_capacity(queries.len());
            for i in 0..queries.len() {
                let request = request(i);
                let started = Instant::now();
                let ranking = futures::executor::block_on(ranker.rank(&request))?;
                micros.push(started.elapsed().as_secs_f64() * 1e6);
                if round + 1 == rounds {
                    *passes
                        .entry(name)
                        .or_default()
                        .entry(ranking.first_pass.name())
                        .or_default() += 1;
                }
                if ranking.items.is_empty() {
                    return Err(format!("{name}: no results for request {i}").into());
                }
                scored.push(ranking.items.iter().map(|r| r.score).collect());
                ids.push(ranking.items.into_iter().map(|r| r.id).collect());
            }
            if round + 1 == rounds {
                by_kind.insert(name, micros);
                answers.insert(name, ids);
                scores.insert(name, scored);
            }
        }
    }
    // ANSWERS=path: every answer's ids and scores, a line per request
    // ("kind<TAB>i<TAB>id,id,...<TAB>score,score,..."), to compare two builds' rankings.
    if let Ok(path) = std::env::var("ANSWERS") {
        let mut lines = String::new();
        for (name, _) in &kinds {
            let scored = scores.get(name).into_iter().flatten();
            for (i, (ids, scored)) in answers
                .get(name)
                .into_iter()
                .flatten()
                .zip(scored)
                .enumerate()
            {
                let scored: Vec<String> = scored.iter().map(f32::to_string).collect();
                lines.push_str(&format!(
                    "{name}\t{i}\t{}\t{}\n",
                    ids.join(","),
                    scored.join(",")
                ));
            }
        }
        std::fs::write(path, lines)?;
    }
    // AGREEMENT=1: the same requests again by exact scans over every item; how much of each
    // top 10 the candidate pool found.
    let mut agreement: HashMap<&str, f64> = HashMap::new();
    if std::env::var("AGREEMENT").is_ok_and(|v| v == "1") {
        ranker
            .catalog()
            .write()
            .map_err(|_| "poisoned")?
            .set_ann_min_items(usize::MAX);
        for (name, request) in &kinds {
            let pooled = answers.remove(name).unwrap_or_default();
            let mut overlap = 0.0;
            for (i, pooled) in pooled.iter().enumerate() {
                let exact = futures::executor::block_on(ranker.rank(&request(i)))?;
                let found = exact
                    .items
                    .iter()
                    .filter(|r| pooled.contains(&r.id))
                    .count();
                overlap += found as f64 / exact.items.len().max(1) as f64;
            }
            agreement.insert(name, overlap / pooled.len().max(1) as f64);
        }
    }
    for (name, _) in &kinds {
        let mut m = by_kind.remove(name).unwrap_or_default();
        m.sort_by(f64::total_cmp);
        let mean = m.iter().sum::<f64>() / m.len().max(1) as f64;
        let at = |q: f64| {
            m.get(((m.len() as f64 * q) as usize).min(m.len() - 1))
                .copied()
        };
        let agrees = agreement
            .get(name)
            .map(|a| format!("  top 10 as the exact scan's: {:.1}%", a * 100.0))
            .unwrap_or_default();
        // Where the first passes looked, when not all in one place.
        let mut looked: Vec<(&str, usize)> = passes
            .remove(name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        looked.sort();
        let looked = if looked.len() > 1 {
            let each: Vec<String> = looked.iter().map(|(p, n)| format!("{p} {n}")).collect();
            format!("  ({})", each.join(", "))
        } else {
            looked
                .first()
                .map(|(p, _)| format!("  ({p})"))
                .unwrap_or_default()
        };
        println!(
            "{name:<22} mean {mean:>7.0} us  p50 {:>7.0} us  p99 {:>7.0} us{agrees}{looked}",
            at(0.5).unwrap_or(0.0),
            at(0.99).unwrap_or(0.0)
        );
    }
    // UPSERTS=1: what a catalog load's batch costs under the write lock, new items into the
    // graph one at a time (`upsert`) against batches of 64 (`upsert_many`, what `UpsertItems`
    // does), alternating, 640 items each way per round.
    if std::env::var("UPSERTS").is_ok_and(|v| v == "1") {
        let mut catalog = ranker.catalog().write().map_err(|_| "poisoned")?;
        catalog.set_ann_min_items(min_items);
        let (mut single, mut batched) = (0.0, 0.0);
        let mut next = 0;
        for _ in 0..3 {
            for one_by_one in [true, false] {
                let batch: Vec<(Item, Vec<f32>)> = (0..640)
                    .map(|j| {
                        next += 1;
                        product(
                            format!("n{next:06}"),
                            j % CLUSTERS,
                            &centres,
                            &mut rng,
                            described,
                        )
                    })
                    .collect();
                let started = Instant::now();
                if one_by_one {
                    for (item, vector) in batch {
                        catalog.upsert(item, vector)?;
                    }
                    single += started.elapsed().as_secs_f64();
                } else {
                    let mut batch = batch;
                    while !batch.is_empty() {
                        let rest = batch.split_off(batch.len().min(64));
                        catalog.upsert_many(std::mem::replace(&mut batch, rest))?;
                    }
                    batched += started.elapsed().as_secs_f64();
                }
            }
        }
        println!(
            "new items into the graph: one at a time {:.0} us each, in batches of 64 {:.0} us each",
            single * 1e6 / 1920.0,
            batched * 1e6 / 1920.0
        );
    }
    Ok(())
}
