//! Ranking metrics, as the evaluation protocols define them.

/// NDCG@k with graded gains: `gains[i]` is the gain of the item ranked at position i (already
/// in ranked order); the ideal ordering sorts all `gains`. Queries whose ideal DCG is 0 score 0.
pub fn ndcg_at(gains_in_ranked_order: &[f64], k: usize) -> f64 {
    let dcg = |g: &[f64]| -> f64 {
        g.iter()
            .take(k)
            .enumerate()
            .map(|(i, g)| g / ((i + 2) as f64).log2())
            .sum()
    };
    let mut ideal = gains_in_ranked_order.to_vec();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let best = dcg(&ideal);
    if best > 0.0 {
        dcg(gains_in_ranked_order) / best
    } else {
        0.0
    }
}

/// The Crowdflower gain of a 1..4 relevance label: 2^(label-1) - 1 (0, 1, 3, 7).
pub fn graded_gain(label: u8) -> f64 {
    f64::from(2u32.pow(u32::from(label.saturating_sub(1)))) - 1.0
}

/// Recall@k and NDCG@k with binary relevance for one user: `ranked` are recommended items in
/// order, `relevant` the held-out ones. Recall divides hits by the number of relevant items.
pub fn recall_ndcg_at(
    ranked: &[u32],
    relevant: &std::collections::HashSet<u32>,
    k: usize,
) -> (f64, f64) {
    if relevant.is_empty() {
        return (0.0, 0.0);
    }
    let mut hits = 0usize;
    let mut dcg = 0.0;
    for (i, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((i + 2) as f64).log2();
        }
    }
    let ideal: f64 = (0..relevant.len().min(k))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    (hits as f64 / relevant.len() as f64, dcg / ideal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_is_one_for_the_ideal_order_and_less_otherwise() {
        assert!((ndcg_at(&[7.0, 3.0, 0.0], 10) - 1.0).abs() < 1e-12);
        let swapped = ndcg_at(&[0.0, 3.0, 7.0], 10);
        assert!(swapped < 1.0 && swapped > 0.0);
        // Hand-computed: dcg = 3/log2(3) + 7/log2(4) = 1.8928 + 3.5; ideal = 7 + 3/log2(3) = 8.8928
        let r = ndcg_at(&[0.0, 3.0, 7.0], 10);
        assert!((r - (3.0 / 3f64.log2() + 3.5) / (7.0 + 3.0 / 3f64.log2())).abs() < 1e-9);
        assert_eq!(ndcg_at(&[0.0, 0.0], 10), 0.0);
        assert_eq!(graded_gain(1), 0.0);
        assert_eq!(graded_gain(4), 7.0);
    }

    #[test]
    fn recall_and_binary_ndcg() {
        let relevant = [1u32, 2, 3, 4].into_iter().collect();
        let (recall, ndcg) = recall_ndcg_at(&[1, 9, 2], &relevant, 2);
        assert!(
            (recall - 0.25).abs() < 1e-12,
            "one hit of four in the top 2"
        );
        assert!((ndcg - 1.0 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12);
    }
}

/// A fixed train/test split over dense item indexes: the protocol's implicit-feedback setting.
#[derive(Debug, Clone, Default)]
pub struct RecSplit {
    pub train: crate::cf::Interactions,
    /// (user index into `train.users`, held-out items).
    pub test: Vec<(usize, std::collections::HashSet<u32>)>,
    /// Original item ids by index.
    pub item_ids: Vec<String>,
}

impl RecSplit {
    /// Builds a split from (user, item) pairs of the two files; items are indexed over both
    /// files, so an item seen only in test is still a candidate (it scores 0 for pure CF).
    pub fn from_pairs(train: &[(String, String)], test: &[(String, String)]) -> Self {
        use std::collections::{BTreeMap, HashMap, HashSet};
        let mut items: BTreeMap<&str, u32> = BTreeMap::new();
        for (_, i) in train.iter().chain(test) {
            let next = items.len() as u32;
            items.entry(i.as_str()).or_insert(next);
        }
        let mut users: HashMap<&str, usize> = HashMap::new();
        let mut histories: Vec<Vec<u32>> = Vec::new();
        for (u, i) in train {
            let idx = *users.entry(u.as_str()).or_insert_with(|| {
                histories.push(Vec::new());
                histories.len() - 1
            });
            histories[idx].push(items[i.as_str()]);
        }
        for h in &mut histories {
            h.sort_unstable();
            h.dedup();
        }
        let mut held: BTreeMap<usize, HashSet<u32>> = BTreeMap::new();
        for (u, i) in test {
            let idx = *users.entry(u.as_str()).or_insert_with(|| {
                histories.push(Vec::new());
                histories.len() - 1
            });
            held.entry(idx).or_default().insert(items[i.as_str()]);
        }
        let mut item_ids = vec![String::new(); items.len()];
        for (name, idx) in items {
            item_ids[idx as usize] = name.to_string();
        }
        Self {
            train: crate::cf::Interactions {
                n_items: item_ids.len(),
                users: histories,
            },
            test: held.into_iter().collect(),
            item_ids,
        }
    }

    /// Mean Recall@k and NDCG@k over test users, scoring every item the user did not see in
    /// train with `score(history)`. Runs on `threads` threads.
    pub fn evaluate<F>(&self, k: usize, threads: usize, score: F) -> (f64, f64)
    where
        F: Fn(&[u32]) -> Vec<f64> + Sync,
    {
        let chunks: Vec<&[(usize, std::collections::HashSet<u32>)]> = self
            .test
            .chunks(self.test.len().div_ceil(threads.max(1)).max(1))
            .collect();
        let sums: Vec<(f64, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    let score = &score;
                    scope.spawn(move || {
                        let mut sum = (0.0, 0.0);
                        for (user, relevant) in *chunk {
                            let history = &self.train.users[*user];
                            let seen: std::collections::HashSet<u32> =
                                history.iter().copied().collect();
                            let ranked = crate::cf::top_k(&score(history), &seen, k);
                            let (r, n) = recall_ndcg_at(&ranked, relevant, k);
                            sum.0 += r;
                            sum.1 += n;
                        }
                        sum
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((0.0, 0.0)))
                .collect()
        });
        let n = self.test.len().max(1) as f64;
        let total = sums.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        (total.0 / n, total.1 / n)
    }
}

/// Knowledge-graph facts as item groups for [`crate::cf::Ease::fit_with_side`]: for every
/// (relation, other entity) pair, the items whose entity has that edge. `item_entity` maps item
/// ids to entity ids; groups with fewer than two items carry no signal and are dropped.
pub fn kg_item_groups(
    split: &RecSplit,
    item_entity: &std::collections::HashMap<String, String>,
    triples: &[(String, String, String)],
) -> Vec<Vec<u32>> {
    use std::collections::{BTreeMap, HashMap};
    let mut entity_items: HashMap<&str, Vec<u32>> = HashMap::new();
    for (idx, id) in split.item_ids.iter().enumerate() {
        if let Some(e) = item_entity.get(id) {
            entity_items.entry(e.as_str()).or_default().push(idx as u32);
        }
    }
    let mut groups: BTreeMap<(String, String, bool), Vec<u32>> = BTreeMap::new();
    for (h, r, t) in triples {
        if let Some(items) = entity_items.get(h.as_str()) {
            groups
                .entry((r.clone(), t.clone(), true))
                .or_default()
                .extend(items);
        }
        if let Some(items) = entity_items.get(t.as_str()) {
            groups
                .entry((r.clone(), h.clone(), false))
                .or_default()
                .extend(items);
        }
    }
    groups
        .into_values()
        .map(|mut g| {
            g.sort_unstable();
            g.dedup();
            g
        })
        .filter(|g| g.len() >= 2)
        .collect()
}

/// Holds out a seeded `fraction` of each user's training items (users with >= 5 items) as a
/// validation set, for choosing hyper-parameters without touching the test split.
pub fn validation_split(split: &RecSplit, fraction: f64, seed: u64) -> RecSplit {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut users = Vec::with_capacity(split.train.users.len());
    let mut test = Vec::new();
    for (u, items) in split.train.users.iter().enumerate() {
        let mut items = items.clone();
        if items.len() >= 5 {
            for i in (1..items.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                items.swap(i, j);
            }
            let held = ((items.len() as f64) * fraction).round().max(1.0) as usize;
            let rest = items.split_off(held);
            test.push((u, items.into_iter().collect()));
            items = rest;
        }
        items.sort_unstable();
        users.push(items);
    }
    RecSplit {
        train: crate::cf::Interactions {
            n_items: split.train.n_items,
            users,
        },
        test,
        item_ids: split.item_ids.clone(),
    }
}
