//! The ranker's in-memory state: items with their vectors, the BM25 index, popularity, user
//! histories and item co-occurrence (the online item-kNN collaborative filter). The server
//! persists items and events in sled and replays them into a `Catalog` at start.
use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::Arc;

use crate::ann::AnnIndex;
use crate::bm25::Bm25;
use crate::cf::TrainedCf;
use crate::item::{Interaction, InteractionKind, Item};
use crate::{RankError, UserKey};

/// Items of a user's history that feed CF and the graph signal.
pub const HISTORY_WINDOW: usize = 50;

#[derive(Debug, Clone)]
struct Entry {
    item: Item,
    /// Mirror of `Catalog::popularity` for this id, so a scan reads it without hashing.
    popularity: f32,
}

/// One item in a user's history (merged over events).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub item_id: String,
    /// The strongest thing the user did with it.
    pub kind: InteractionKind,
    /// Summed event weights.
    pub weight: f32,
    pub last_ms: i64,
}

#[derive(Debug)]
pub struct Catalog {
    slots: Vec<Option<Entry>>,
    /// Every slot's vector, row-major (`slot * dimension`): a full scan streams one array
    /// instead of chasing 10k heap pointers (it was memory-bound: ~4 ms per `Rank` at 10k items).
    vectors: Vec<f32>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    dimension: Option<usize>,
    bm25: Bm25,
    popularity: HashMap<String, f32>,
    /// Distinct users per item, the CF normaliser.
    item_users: HashMap<String, u32>,
    histories: HashMap<UserKey, Vec<HistoryEntry>>,
    cooccurrence: HashMap<String, HashMap<String, f32>>,
    interactions: u64,
    /// The collaborative filter fitted by `TrainCf`, when one was.
    trained_cf: Option<Arc<TrainedCf>>,
    /// Bumped whenever a slot's item is replaced or deleted; ANN points carry the version they
    /// were inserted for.
    slot_versions: Vec<u32>,
    /// The HNSW graph over item vectors, once the catalog has `ann_min_items` items.
    ann: Option<AnnIndex>,
    ann_min_items: usize,
}

/// Catalog size from which `Rank` takes dense candidates from the HNSW graph instead of scanning
/// every vector (measured in BENCHMARKS.md, "Rank under load").
pub const DEFAULT_ANN_MIN_ITEMS: usize = 5_000;

impl Default for Catalog {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            vectors: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            dimension: None,
            bm25: Bm25::default(),
            popularity: HashMap::new(),
            item_users: HashMap::new(),
            histories: HashMap::new(),
            cooccurrence: HashMap::new(),
            interactions: 0,
            trained_cf: None,
            slot_versions: Vec::new(),
            ann: None,
            ann_min_items: DEFAULT_ANN_MIN_ITEMS,
        }
    }
}

fn kind_rank(kind: InteractionKind) -> u8 {
    match kind {
        InteractionKind::View => 0,
        InteractionKind::Click => 1,
        InteractionKind::Rating => 2,
        InteractionKind::Cart => 3,
        InteractionKind::Purchase => 4,
    }
}

impl Catalog {
    /// Adds or replaces an item with its text vector.
    ///
    /// # Errors
    /// `InvalidInput` when the vector's length differs from the catalog's.
    pub fn upsert(&mut self, item: Item, vector: Vec<f32>) -> Result<(), RankError> {
        match self.dimension {
            Some(d) if d != vector.len() => {
                return Err(RankError::InvalidInput(format!(
                    "item {:?}: vector has {} dimensions, the catalog {d} (was the encoder model changed?)",
                    item.id,
                    vector.len()
                )));
            }
            None => self.dimension = Some(vector.len()),
            _ => {}
        }
        let slot = match self.by_id.get(&item.id) {
            Some(&slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or(self.slots.len() as u32);
                if slot as usize == self.slots.len() {
                    self.slots.push(None);
                }
                self.by_id.insert(item.id.clone(), slot);
                slot
            }
        };
        self.bm25.insert(slot, &item.text());
        let popularity = self.popularity(&item.id);
        let d = vector.len();
        let start = slot as usize * d;
        if self.vectors.len() < start + d {
            self.vectors.resize(start + d, 0.0);
        }
        self.vectors[start..start + d].copy_from_slice(&vector);
        let replaced = self.slots[slot as usize]
            .replace(Entry { item, popularity })
            .is_some();
        let version = self.bump_version(slot);
        if let Some(ann) = &mut self.ann {
            if replaced {
                ann.mark_stale();
            }
            ann.insert(slot, version, &self.vectors[start..start + d]);
        }
        self.maintain_ann();
        Ok(())
    }

    fn bump_version(&mut self, slot: u32) -> u32 {
        let i = slot as usize;
        if self.slot_versions.len() <= i {
            self.slot_versions.resize(i + 1, 0);
        }
        self.slot_versions[i] = self.slot_versions[i].wrapping_add(1);
        self.slot_versions[i]
    }

    /// Builds the HNSW graph once the catalog reaches the threshold, rebuilds it when a quarter
    /// of its points are stale, drops it when the catalog falls under half the threshold.
    fn maintain_ann(&mut self) {
        let n = self.len();
        let build = match &self.ann {
            None => n >= self.ann_min_items && n > 0,
            Some(ann) => ann.needs_rebuild() && n >= self.ann_min_items,
        };
        if build {
            let d = self.dimension.unwrap_or(0);
            let versions = &self.slot_versions;
            let vectors = &self.vectors;
            let live = self.by_id.values().map(|&slot| {
                let start = slot as usize * d;
                (
                    slot,
                    versions.get(slot as usize).copied().unwrap_or(0),
                    &vectors[start..start + d],
                )
            });
            let started = std::time::Instant::now();
            self.ann = Some(AnnIndex::build(live));
            tracing::info!(
                items = n,
                seconds = started.elapsed().as_secs_f64(),
                "built the HNSW graph over item vectors"
            );
        } else if self.ann.is_some() && n * 2 < self.ann_min_items {
            self.ann = None;
        }
    }

    /// Dense candidates come from the HNSW graph from `min_items` items on (0: always; above
    /// any catalog: never, an exact scan). Builds or drops the graph now if needed.
    pub fn set_ann_min_items(&mut self, min_items: usize) {
        self.ann_min_items = min_items;
        if self.len() < min_items {
            self.ann = None;
        }
        self.maintain_ann();
    }

    /// Whether `Rank` takes dense candidates from the HNSW graph.
    pub fn uses_ann(&self) -> bool {
        self.ann.is_some()
    }

    /// The `k` live items whose vectors are closest to `query` by the HNSW graph (beam `ef`),
    /// nearest first; `None` when the catalog scans instead.
    pub(crate) fn ann_search(&self, query: &[f32], k: usize, ef: usize) -> Option<Vec<u32>> {
        let ann = self.ann.as_ref()?;
        Some(ann.search(query, k, ef, |slot, version| {
            self.slot_versions.get(slot as usize) == Some(&version) && self.slot(slot).is_some()
        }))
    }

    /// The `k` most popular items' slots (any order).
    pub(crate) fn most_popular(&self, k: usize) -> Vec<u32> {
        let mut all: Vec<(f32, u32)> = self
            .by_id
            .values()
            .map(|&slot| (self.popularity_at(slot), slot))
            .filter(|(p, _)| *p > 0.0)
            .collect();
        if k < all.len() {
            all.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            all.truncate(k);
        }
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Removes an item from every index it ranks in. Returns false when it was not there.
    pub fn delete(&mut self, id: &str) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        self.bm25.remove(slot);
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.bump_version(slot);
        if let Some(ann) = &mut self.ann {
            ann.mark_stale();
        }
        self.maintain_ann();
        true
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn dimension(&self) -> Option<usize> {
        self.dimension
    }

    pub fn get(&self, id: &str) -> Option<&Item> {
        self.by_id
            .get(id)
            .and_then(|&s| self.slot(s))
            .map(|e| &e.item)
    }

    fn slot(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn item_at(&self, slot: u32) -> Option<(&Item, &[f32])> {
        let d = self.dimension.unwrap_or(0);
        let start = slot as usize * d;
        self.slot(slot)
            .map(|e| (&e.item, self.vectors.get(start..start + d).unwrap_or(&[])))
    }

    /// Every live slot.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.values().copied()
    }

    pub(crate) fn bm25(&self, query: &str) -> HashMap<u32, f32> {
        self.bm25.scores(query)
    }

    /// Popularity of the item in `slot` (0 for an empty slot).
    pub(crate) fn popularity_at(&self, slot: u32) -> f32 {
        self.slot(slot).map_or(0.0, |e| e.popularity)
    }

    pub fn popularity(&self, id: &str) -> f32 {
        self.popularity.get(id).copied().unwrap_or(0.0)
    }

    pub(crate) fn max_popularity(&self) -> f32 {
        self.popularity.values().copied().fold(0.0, f32::max)
    }

    pub fn users(&self) -> usize {
        self.histories.len()
    }

    pub fn interactions(&self) -> u64 {
        self.interactions
    }

    /// The user's history, most recent first.
    pub fn history(&self, user: &UserKey) -> Vec<HistoryEntry> {
        let mut h = self.histories.get(user).cloned().unwrap_or_default();
        h.sort_by(|a, b| {
            b.last_ms
                .cmp(&a.last_ms)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        h
    }

    /// Records an event: popularity, the user's history and co-occurrence all move at once,
    /// so the next `Rank` sees it.
    pub fn record(&mut self, event: &Interaction) {
        self.interactions += 1;
        let weight = event.weight();
        let popularity = self.popularity.entry(event.item_id.clone()).or_default();
        *popularity += weight;
        let popularity = *popularity;
        if let Some(&slot) = self.by_id.get(&event.item_id)
            && let Some(Some(entry)) = self.slots.get_mut(slot as usize)
        {
            entry.popularity = popularity;
        }
        let history = self.histories.entry(event.user.clone()).or_default();
        if let Some(entry) = history.iter_mut().find(|e| e.item_id == event.item_id) {
            entry.weight += weight;
            entry.last_ms = entry.last_ms.max(event.timestamp_ms);
            if kind_rank(event.kind) > kind_rank(entry.kind) {
                entry.kind = event.kind;
            }
            return;
        }
        // First time this user touches this item: it co-occurs with their recent items.
        *self.item_users.entry(event.item_id.clone()).or_default() += 1;
        let mut recent: Vec<&HistoryEntry> = history.iter().collect();
        recent.sort_by_key(|e| std::cmp::Reverse(e.last_ms));
        let neighbours: Vec<String> = recent
            .iter()
            .take(HISTORY_WINDOW)
            .map(|e| e.item_id.clone())
            .collect();
        history.push(HistoryEntry {
            item_id: event.item_id.clone(),
            kind: event.kind,
            weight,
            last_ms: event.timestamp_ms,
        });
        for other in neighbours {
            *self
                .cooccurrence
                .entry(other.clone())
                .or_default()
                .entry(event.item_id.clone())
                .or_default() += 1.0;
            *self
                .cooccurrence
                .entry(event.item_id.clone())
                .or_default()
                .entry(other)
                .or_default() += 1.0;
        }
    }

    /// Every user's distinct items, the input of a CF fit (taken under the read lock, fitted
    /// outside it).
    pub fn user_item_sets(&self) -> Vec<Vec<String>> {
        self.histories
            .values()
            .map(|h| h.iter().map(|e| e.item_id.clone()).collect())
            .collect()
    }

    /// Serves `model` from now on (`None`: online co-occurrence only).
    pub fn set_trained_cf(&mut self, model: Option<Arc<TrainedCf>>) {
        self.trained_cf = model;
    }

    pub fn trained_cf(&self) -> Option<&TrainedCf> {
        self.trained_cf.as_deref()
    }

    /// CF scores from the history, each with the history item that contributed most. Online
    /// item-kNN: for each candidate c, the sum over history items h of
    /// w(h) x co(h, c) / sqrt(users(h) x users(c)) (cosine on the user-item matrix, moved by
    /// every event). With a trained model, its neighbour weights summed over the history are
    /// added, each part scaled to a maximum of 1 so neither drowns the other.
    pub fn cf_scores(&self, history: &[HistoryEntry]) -> HashMap<String, (f32, String)> {
        let mut online: HashMap<&str, (f32, &str, f32)> = HashMap::new();
        for h in history.iter().take(HISTORY_WINDOW) {
            let Some(row) = self.cooccurrence.get(&h.item_id) else {
                continue;
            };
            let uh = self.item_users.get(&h.item_id).copied().unwrap_or(1).max(1) as f32;
            let wh = h.weight.ln_1p();
            for (c, &count) in row {
                let uc = self.item_users.get(c).copied().unwrap_or(1).max(1) as f32;
                add_score(&mut online, c, wh * count / (uh * uc).sqrt(), &h.item_id);
            }
        }
        let Some(trained) = self.trained_cf.as_deref() else {
            return online
                .into_iter()
                .map(|(c, (s, by, _))| (c.to_string(), (s, by.to_string())))
                .collect();
        };
        let mut fitted: HashMap<&str, (f32, &str, f32)> = HashMap::new();
        for h in history.iter().take(HISTORY_WINDOW) {
            for (c, w) in trained.neighbours.get(&h.item_id).into_iter().flatten() {
                add_score(&mut fitted, c, *w, &h.item_id);
            }
        }
        let max =
            |m: &HashMap<&str, (f32, &str, f32)>| m.values().map(|v| v.0).fold(0.0f32, f32::max);
        let (online_max, fitted_max) = (max(&online), max(&fitted));
        let mut out: HashMap<&str, (f32, &str, f32)> = HashMap::new();
        for (part, part_max) in [(online, online_max), (fitted, fitted_max)] {
            if part_max <= 0.0 {
                continue;
            }
            for (c, (s, by, best)) in part {
                let e = out.entry(c).or_insert((0.0, by, 0.0));
                e.0 += s / part_max;
                if best / part_max > e.2 {
                    e.1 = by;
                    e.2 = best / part_max;
                }
            }
        }
        out.into_iter()
            .filter(|(_, (s, _, _))| *s > 0.0)
            .map(|(c, (s, by, _))| (c.to_string(), (s, by.to_string())))
            .collect()
    }

    /// The user's top categories, brands and attributes, weighted by their events.
    pub fn profile(&self, user: &UserKey, limit: usize) -> Profile {
        let history = self.history(user);
        let mut categories: BTreeMap<String, f32> = BTreeMap::new();
        let mut brands: BTreeMap<String, f32> = BTreeMap::new();
        let mut attributes: BTreeMap<String, f32> = BTreeMap::new();
        for h in &history {
            let Some(item) = self.get(&h.item_id) else {
                continue;
            };
            for c in &item.category {
                *categories.entry(c.clone()).or_default() += h.weight;
            }
            if !item.brand.is_empty() {
                *brands.entry(item.brand.clone()).or_default() += h.weight;
            }
            for (k, v) in &item.attributes {
                *attributes.entry(format!("{k}={v}")).or_default() += h.weight;
            }
        }
        let top = |m| top(m, limit);
        Profile {
            interactions: history.len() as u64,
            categories: top(categories),
            brands: top(brands),
            attributes: top(attributes),
            recent_items: history
                .iter()
                .take(limit)
                .map(|h| h.item_id.clone())
                .collect(),
        }
    }
}

/// Names with their weighted interaction counts, strongest first.
pub type Affinities = Vec<(String, f32)>;

/// The user's top categories, brands and attributes from knowledge-graph facts: `edges` holds
/// the out-edges (relation, entity) of the history items' entities and of every category
/// reached; each item adds its history weight to its brand, attributes, category and every
/// ancestor along `parent` edges (cycles cut, at most 16 levels).
pub fn graph_profile(
    history: &[HistoryEntry],
    edges: &HashMap<String, Vec<(String, String)>>,
    limit: usize,
) -> (Affinities, Affinities, Affinities) {
    let mut categories: BTreeMap<String, f32> = BTreeMap::new();
    let mut brands: BTreeMap<String, f32> = BTreeMap::new();
    let mut attributes: BTreeMap<String, f32> = BTreeMap::new();
    let strip = |e: &str, prefix: &str| e.strip_prefix(prefix).unwrap_or(e).to_string();
    for h in history {
        let entity = crate::item::item_entity(&h.item_id);
        for (relation, tail) in edges.get(&entity).into_iter().flatten() {
            match relation.as_str() {
                "brand" => *brands.entry(strip(tail, "brand:")).or_default() += h.weight,
                "attribute" => *attributes.entry(strip(tail, "attr:")).or_default() += h.weight,
                "category" => {
                    let mut seen: HashSet<&str> = HashSet::new();
                    let mut node = Some(tail.as_str());
                    while let Some(c) = node.filter(|c| seen.len() < 16 && seen.insert(c)) {
                        let name = c.rsplit('/').next().unwrap_or(c);
                        *categories.entry(strip(name, "category:")).or_default() += h.weight;
                        node = edges
                            .get(c)
                            .into_iter()
                            .flatten()
                            .find(|(r, _)| r == "parent")
                            .map(|(_, p)| p.as_str());
                    }
                }
                _ => {}
            }
        }
    }
    (
        top(categories, limit),
        top(brands, limit),
        top(attributes, limit),
    )
}

fn top(m: BTreeMap<String, f32>, limit: usize) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

/// What [`Catalog::profile`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub interactions: u64,
    pub categories: Vec<(String, f32)>,
    pub brands: Vec<(String, f32)>,
    pub attributes: Vec<(String, f32)>,
    pub recent_items: Vec<String>,
}

/// Adds `s` to candidate `c`'s score, remembering the history item that gave the most.
fn add_score<'a>(
    scores: &mut HashMap<&'a str, (f32, &'a str, f32)>,
    c: &'a str,
    s: f32,
    by: &'a str,
) {
    let e = scores.entry(c).or_insert((0.0, by, f32::MIN));
    e.0 += s;
    if s > e.2 {
        e.1 = by;
        e.2 = s;
    }
}
