//! Whether popularity should fade: the popularity recommender (each shopper's 20 most
//! popular unseen items, `Catalog::most_popular`) on MovieLens-100k split by time, the
//! way a live shop meets it: trained on the first 80% of ratings, tested on the items each
//! shopper rated later (the last 20%; items they had rated before left out). The half-life
//! (`Catalog::set_popularity_half_life`) is picked on a validation split of the training
//! part (its first 80% / last 20% by time), then the test part is scored with every
//! half-life of the grid. Every rating is a positive (the datasets README's protocol).
//!
//! `cargo run --release -p souk-ranker-core --example popularity_decay -- [ML-100K .inter]`
use std::collections::{HashMap, HashSet};

use souk_ranker_core::UserKey;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::eval::recall_ndcg_at;
use souk_ranker_core::item::{Interaction, InteractionKind, Item};

type Rating = (i64, String, String);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/datasets/rec/ml-100k/ml-100k.inter".into());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut ratings: Vec<Rating> = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [user, item, _, time] = fields[..] else {
            return Err(format!("{path}:{}: not 4 tab-separated fields", n + 1).into());
        };
        let seconds: f64 = time.parse().map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        ratings.push(((seconds * 1000.0) as i64, user.into(), item.into()));
    }
    ratings.sort();
    let items: HashSet<&str> = ratings.iter().map(|(_, _, i)| i.as_str()).collect();
    let cut = ratings.len() * 4 / 5;
    let (train, test) = ratings.split_at(cut);
    let (fit, valid) = train.split_at(train.len() * 4 / 5);
    let grid: [Option<f64>; 7] = [
        None,
        Some(90.0),
        Some(30.0),
        Some(14.0),
        Some(7.0),
        Some(3.0),
        Some(1.0),
    ];
    let name = |h: Option<f64>| h.map_or("all-time".to_string(), |d| format!("{d} days"));
    println!(
        "ML-100k by time: {} ratings to fit / {} to validate on; {} to train / {} to test",
        fit.len(),
        valid.len(),
        train.len(),
        test.len()
    );
    println!("| half-life | validation recall@20 | test recall@20 | test NDCG@20 |");
    println!("|---|---|---|---|");
    for half_life in grid {
        let (v, _, _) = score(fit, valid, &items, half_life);
        let (r, n, users) = score(train, test, &items, half_life);
        println!(
            "| {} | {v:.4} | {r:.4} | {n:.4} | ({users} test shoppers)",
            name(half_life)
        );
    }
    Ok(())
}

/// Recall@20 and NDCG@20 of the popularity recommender fitted on `train`, over the shoppers
/// of `test` with items they had not rated in `train`; and how many such shoppers.
fn score(
    train: &[Rating],
    test: &[Rating],
    items: &HashSet<&str>,
    half_life: Option<f64>,
) -> (f64, f64, usize) {
    let mut catalog = Catalog::default();
    catalog.set_popularity_half_life(half_life);
    let mut sorted: Vec<&&str> = items.iter().collect();
    sorted.sort();
    for id in sorted {
        let item = Item {
            id: id.to_string(),
            title: String::new(),
            description: String::new(),
            category: Vec::new(),
            brand: String::new(),
            price: 1.0,
            attributes: Default::default(),
            in_stock: true,
        };
        if catalog.upsert(item, vec![1.0, 0.0]).is_err() {
            continue;
        }
    }
    let event = |(at, user, item): &Rating| Interaction {
        user: UserKey::from_stored(user.clone()),
        item_id: item.clone(),
        kind: InteractionKind::View,
        value: 1.0,
        timestamp_ms: *at,
    };
    catalog.replay(train.iter().map(event));
    let mut seen: HashMap<&str, HashSet<u32>> = HashMap::new();
    for (_, user, item) in train {
        if let Some(slot) = catalog.slot_of(item) {
            seen.entry(user).or_default().insert(slot);
        }
    }
    let mut held: HashMap<&str, HashSet<u32>> = HashMap::new();
    for (_, user, item) in test {
        if let Some(slot) = catalog.slot_of(item)
            && !seen.get(user.as_str()).is_some_and(|s| s.contains(&slot))
        {
            held.entry(user).or_default().insert(slot);
        }
    }
    let order = catalog.most_popular(usize::MAX);
    let (mut recall, mut ndcg) = (0.0, 0.0);
    for (user, relevant) in &held {
        let none = HashSet::new();
        let seen = seen.get(user).unwrap_or(&none);
        let top: Vec<u32> = order
            .iter()
            .copied()
            .filter(|s| !seen.contains(s))
            .take(20)
            .collect();
        let (r, n) = recall_ndcg_at(&top, relevant, 20);
        recall += r;
        ndcg += n;
    }
    let users = held.len().max(1) as f64;
    (recall / users, ndcg / users, held.len())
}
