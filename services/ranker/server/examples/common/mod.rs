//! The synthetic shop the ranker server's examples measure: items with random unit 384-d
//! vectors and 4-word titles, clicks of 10,000 shoppers on uniformly drawn items, written
//! straight into a sled store.
use std::path::Path;

use souk_ranker::store::RankerStore;
use souk_ranker_core::UserHasher;
use souk_ranker_core::item::{Interaction, InteractionKind, Item};
use souk_ranker_core::rng::XorShift;

pub const DIM: usize = 384;
pub const KEY: &str = "replica-cost";
const WORDS: [&str; 24] = [
    "wireless", "steel", "portable", "leather", "camping", "coffee", "desk", "lamp", "boots",
    "hiking", "travel", "smart", "cotton", "kitchen", "knife", "backpack", "tent", "chair",
    "office", "running", "shoes", "speaker", "mug", "jacket",
];

/// Writes `items` items and `events` clicks into a new store in `dir`.
pub fn fill(dir: &Path, items: usize, events: usize) {
    let store = RankerStore::open(dir).unwrap();
    let mut rng = XorShift::new(7);
    let word = |rng: &mut XorShift| WORDS[(rng.unit() * WORDS.len() as f64) as usize % 24];
    for start in (0..items).step_by(512) {
        let batch: Vec<(Item, Vec<f32>)> = (start..(start + 512).min(items))
            .map(|i| {
                let title = (0..4).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ");
                let item = Item {
                    id: format!("p{i:06}"),
                    title,
                    description: String::new(),
                    category: vec![format!("c{}", i % 50)],
                    brand: format!("b{}", i % 200),
                    price: 10.0 + (i % 90) as f64,
                    attributes: Default::default(),
                    in_stock: true,
                };
                let v: Vec<f32> = (0..DIM).map(|_| rng.uniform() as f32).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                (item, v.iter().map(|x| x / n).collect())
            })
            .collect();
        store.put_items(&batch).unwrap();
    }
    let hasher = UserHasher::new(KEY.as_bytes());
    for start in (0..events).step_by(1000) {
        let batch: Vec<Interaction> = (start..(start + 1000).min(events))
            .map(|_| Interaction {
                user: hasher.key(&format!("u{}", (rng.unit() * 10_000.0) as usize)),
                item_id: format!("p{:06}", (rng.unit() * items as f64) as usize % items),
                kind: InteractionKind::Click,
                value: 1.0,
                timestamp_ms: 1_700_000_000_000,
            })
            .collect();
        store.append_events(&batch).unwrap();
    }
}
