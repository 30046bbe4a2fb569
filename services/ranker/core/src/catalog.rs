//! The ranker's in-memory state: items with their vectors, the BM25 index, popularity, user
//! histories and item co-occurrence (the online item-kNN collaborative filter). The server
//! persists items and events in sled and replays them into a `Catalog` at start.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use std::ops::Range;
use std::sync::Arc;

use crate::ann::{AnnIndex, Decoded, Walk, write_f16};
use crate::bm25::{Bm25, Matches};
use crate::cf::TrainedCf;
use crate::cooccur::{CoRow, prefetch, prefetch_slice};
use crate::facet::{FacetCounts, FacetField, Facets, Filter, SlotBits, Tally};
use crate::item::{Filters, Interaction, InteractionKind, Item};
use crate::names::NameIndex;
use crate::rank::{dot_f16, filtered_scan_limit};
use crate::{RankError, UserKey};

/// A filter one of whose sides holds at most 1 / this of the catalog lists the slots that
/// pass as bits before the request checks any ([`Filter::with_passing_bits`]): building them
/// costs a hash lookup per member of that side and per other side, while a search checks a
/// common word's matches (~100k at 1M items) and every item its graph walk visits, each
/// otherwise a read of the item (a cache miss) and a hash lookup per side. A broader side
/// (in stock, when nearly everything is) would cost more to list than most requests check.
pub const PASSING_BITS_SHARE: usize = 2;

/// Items of a user's history that feed CF and the graph signal.
pub const HISTORY_WINDOW: usize = 50;

/// Most recent items of a history that a trained model (`TrainCf`) scores from. The online
/// co-occurrence keeps to [`HISTORY_WINDOW`] (its cost grows with every item's co-occurrence
/// list); the trained models read 200: on ML-100k (85 training items per user) the CF signal
/// as served reaches Recall@20 0.343 instead of 0.324 with EASE, and iALS's fold-in loses
/// 0.002 to its full-history figure instead of 0.031 (BENCHMARKS.md). On validation carve-outs
/// of the train splits 200 is within 0.0001 of 400 and well above 100 (the `rec_datasets` test
/// checks it).
pub const TRAINED_CF_WINDOW: usize = 200;

/// How much the online co-occurrence counts beside a trained model (each part first scaled to
/// a maximum of 1). It still carries what the model has not seen (items and events since the
/// fit) but counts less than the model: a quarter gives the best served CF signal on
/// validation carve-outs of ML-100k's and Last.FM's train splits, averaged over EASE and
/// iALS, among 0, 1/8, 1/4, 1/2, 3/4 and 1 (the `rec_datasets` test checks it; BENCHMARKS.md).
pub const ONLINE_SHARE_WITH_MODEL: f32 = 0.25;

/// Items a factor model (iALS) adds to a `Rank` from its folded-in scores: the strongest
/// ones, each credited to the history item that contributed most (BENCHMARKS.md has the
/// cost per `Rank`).
pub const FOLD_IN_CANDIDATES: usize = 500;
/// Co-occurring items kept per item by the online co-occurrence: a row past this that fills
/// its table (`cooccur.rs`) is cut back to its highest counts rather than growing it.
/// Without it the counts grow with every new pair: 1M events of 10,000 shoppers on 100k
/// items held ~100M pairs. Picked on validation splits (the `rec_datasets` test).
pub const COOCCURRENCE_ROW: usize = 256;
/// Days after which an event counts half as much in an item's popularity, as of the latest
/// event recorded (0: every event counts alike, forever: the default). With one, "popular"
/// means popular lately. On MovieLens-100k split by time the validation pick, 3 days, lifts
/// the popularity recommender's test recall@20 from 0.1230 to 0.1816
/// (`examples/popularity_decay.rs`; BENCHMARKS.md, "Session 27: popularity that fades"), but
/// as a default it moved the demo shop's rankings under fusion weights fitted to all-time
/// counts (a coffee-beans item into the top 5 of "coffee maker"), so it stays opt-in
/// (`--popularity-half-life-days 3`) until the weights are fitted with it.
pub const POPULARITY_HALF_LIFE_DAYS: f64 = 0.0;

/// A half-life of `days` in milliseconds; `None` (every event alike) for 0, less, or NaN.
fn half_life_ms(days: f64) -> Option<f64> {
    (days > 0.0).then_some(days * 86_400_000.0)
}

/// Half-lives past the popularity reference time after which stored popularity is moved to
/// a later reference (each value multiplied down): the weight of an event is 2^(half-lives
/// since the reference), which f32 holds up to 2^127.
const RESCALE_HALF_LIVES: f64 = 32.0;

const NO_ROW: u32 = u32::MAX;
/// A CF id whose item is not in the catalog.
const NO_SLOT: u32 = u32::MAX;

/// A nearest item counts as a match of the query's vector for facets when its similarity is
/// at least this share of the nearest item's. Without a floor the 64 nearest items of
/// "wireless headphones" in the 312-item demo shop held coffee grinders and desk lamps
/// (cosine 0.13-0.17 against the best earbuds' 0.57), and a brand facet listed coffee brands.
/// A share rather than a fixed cosine: short queries sit lower ("music listening": 0.29 at
/// best, the audio items down to ~0.22, then phones and sleeves at 0.11). Chosen by reading
/// such lists (BENCHMARKS.md, "facets count the query's nearest items"), not fitted.
pub const NEAR_MATCH_RATIO: f32 = 0.75;

/// The items a search's facets count (see [`Catalog::facet_counts`]): as Elasticsearch counts
/// a hybrid search's aggregations, the union of what its words match and its vector's
/// nearest items (with a floor on their similarity, as Elasticsearch's kNN `similarity`),
/// so that a query no title word matches still gets counts over what the dense signal ranks
/// for it. A re-rank request's candidates instead, when given; every item when the scope has
/// neither words nor a vector.
#[derive(Debug, Clone, Copy, Default)]
pub struct FacetScope<'a> {
    /// The query's words: every item any of them matches by BM25.
    pub words: Option<&'a str>,
    /// The query's vector and how many of its nearest items (among those each facet's
    /// filters pass) count, at most: those at least [`NEAR_MATCH_RATIO`] as similar to it
    /// as the nearest one.
    pub nearest: Option<(&'a [f32], usize)>,
    /// A re-rank request's candidate ids: these and nothing else.
    pub among: Option<&'a [String]>,
    /// Slots never counted nor listed, ascending (a request's exclusions, its page's item,
    /// what the shop hides, what the shopper bought).
    pub except: &'a [u32],
}

#[derive(Debug, Clone)]
struct Entry {
    item: Item,
    /// Mirror of `Catalog::popularity` for this id, so a scan reads it without hashing.
    popularity: f32,
}

/// How far ahead of a scan [`Catalog::prefetching`] asks for items.
const PREFETCH_AHEAD: usize = 8;

/// See [`Catalog::prefetching`].
pub(crate) struct Prefetching<'a, I> {
    catalog: &'a Catalog,
    vectors: bool,
    slots: std::iter::Fuse<I>,
    /// Slots asked for and not yet yielded: `len` of them from `first`, wrapping.
    ahead: [u32; PREFETCH_AHEAD],
    first: usize,
    len: usize,
}

impl<I: Iterator<Item = u32>> Iterator for Prefetching<'_, I> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.len < PREFETCH_AHEAD {
            let Some(slot) = self.slots.next() else {
                break;
            };
            self.catalog.prefetch_slot(slot, self.vectors);
            self.ahead[(self.first + self.len) % PREFETCH_AHEAD] = slot;
            self.len += 1;
        }
        if self.len == 0 {
            return None;
        }
        let slot = self.ahead[self.first];
        self.first = (self.first + 1) % PREFETCH_AHEAD;
        self.len -= 1;
        Some(slot)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.slots.size_hint();
        (
            low.saturating_add(self.len),
            high.and_then(|h| h.checked_add(self.len)),
        )
    }
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

/// From this many items, a shopper's history keeps an index for [`Catalog::record`]: one
/// shopper id with a huge history (a guest id shared by every anonymous visitor, a bot)
/// would otherwise make each of their events scan and sort all of it, and replaying the log
/// at start quadratic in their events (BENCHMARKS.md, "Ranker replicas").
const LONG_HISTORY: usize = 256;

/// One item of a shopper's history as memory keeps it: the item by CF id (its name is in
/// `Catalog::cf_names`), 24 bytes, where a [`HistoryEntry`] takes 40 and a heap copy of
/// the item's id (~90 bytes a touched item in all; BENCHMARKS.md, "Session 36"). Readers get
/// [`HistoryEntry`]s ([`Catalog::recent_history`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Touch {
    last_ms: i64,
    /// Summed event weights.
    weight: f32,
    /// The item's CF id: what [`Catalog::record`] compares and walks instead of item ids
    /// (comparing ids was ~40% of a replay's CPU: BENCHMARKS.md, "Session 24: a start's
    /// rebuild from the store").
    cf: u32,
    /// The strongest thing the user did with it.
    kind: InteractionKind,
}

/// A shopper's history: items in the order first touched, and for a long one an index.
#[derive(Debug, Default)]
struct History {
    entries: Vec<Touch>,
    long: Option<Box<LongHistory>>,
}

impl History {
    /// Takes in one event of item `item` (CF id) weighing `weight`: `None` when the user
    /// touched the item before; the first time, the CF ids of their recent items it now
    /// co-occurs with ([`Catalog::record`] counts each pair). Depends on this history alone,
    /// so [`Catalog::forget`] finds the pairs a user's events counted by taking them again.
    fn take(&mut self, event: &Interaction, item: u32, weight: f32) -> Option<Vec<u32>> {
        let known = match &self.long {
            Some(long) => long.position.get(&item).map(|&p| p as usize),
            None => self.entries.iter().position(|e| e.cf == item),
        };
        if let Some(at) = known {
            let entry = &mut self.entries[at];
            entry.weight += weight;
            entry.last_ms = entry.last_ms.max(event.timestamp_ms);
            if kind_rank(event.kind) > kind_rank(entry.kind) {
                entry.kind = event.kind;
            }
            let last_ms = entry.last_ms;
            if let Some(long) = &mut self.long {
                long.touched(at as u32, item, last_ms);
            }
            return None;
        }
        // First time this user touches this item: it co-occurs with their recent items.
        let neighbours: Vec<u32> = match &self.long {
            Some(long) => long.recent.iter().map(|&(_, _, cf)| cf).collect(),
            // The HISTORY_WINDOW most recent, in the order a stable sort by recency gives
            // (most recent first, of equal times the first touched first), as a long
            // history's index keeps them.
            None => {
                let mut recent: Vec<(Reverse<i64>, u32, u32)> = self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (Reverse(e.last_ms), i as u32, e.cf))
                    .collect();
                if recent.len() > HISTORY_WINDOW {
                    recent.select_nth_unstable(HISTORY_WINDOW);
                    recent.truncate(HISTORY_WINDOW);
                }
                recent.sort_unstable();
                recent.into_iter().map(|(_, _, cf)| cf).collect()
            }
        };
        let at = self.entries.len() as u32;
        self.entries.push(Touch {
            last_ms: event.timestamp_ms,
            weight,
            cf: item,
            kind: event.kind,
        });
        match &mut self.long {
            Some(long) => {
                long.position.insert(item, at);
                long.touched(at, item, event.timestamp_ms);
            }
            None if self.entries.len() >= LONG_HISTORY => {
                self.long = Some(Box::new(LongHistory::new(&self.entries)));
            }
            None => {}
        }
        Some(neighbours)
    }
}

/// What [`Catalog::record`] reads of a long history without scanning it.
#[derive(Debug, Default)]
struct LongHistory {
    /// Each item's position in `entries`, by CF id.
    position: HashMap<u32, u32, IdHash>,
    /// The [`HISTORY_WINDOW`] most recent entries as `(Reverse(last_ms), position, CF id)`,
    /// in order: most recent first, and of equal times the first touched first (the order
    /// a stable sort of the whole history by recency gives). An entry's key only improves
    /// (its time only grows), so an entry outside the window enters it only when touched.
    recent: Vec<(Reverse<i64>, u32, u32)>,
}

impl LongHistory {
    /// `entries`' index.
    fn new(entries: &[Touch]) -> Self {
        let position = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.cf, i as u32))
            .collect();
        let mut recent: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (Reverse(e.last_ms), i as u32, e.cf))
            .collect();
        recent.sort_unstable();
        recent.truncate(HISTORY_WINDOW);
        Self { position, recent }
    }

    /// Entry `position` (CF id `cf`) was touched at `last_ms` (its time now).
    fn touched(&mut self, position: u32, cf: u32, last_ms: i64) {
        let key = (Reverse(last_ms), position, cf);
        if let Some(at) = self.recent.iter().position(|e| e.1 == position) {
            self.recent.remove(at);
        } else if self.recent.len() >= HISTORY_WINDOW {
            match self.recent.last() {
                Some(worst) if key < *worst => {
                    self.recent.pop();
                }
                _ => return,
            }
        }
        let at = self.recent.partition_point(|e| *e < key);
        self.recent.insert(at, key);
    }
}

/// How a listing orders a search's items instead of by relevance ([`Catalog::listing`]);
/// ties by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    PriceAscending,
    PriceDescending,
    /// Most popular first (the popularity signal: shoppers' events, weighed by kind and
    /// fading when a half-life is set).
    Popularity,
}

#[derive(Debug)]
pub struct Catalog {
    slots: Vec<Option<Entry>>,
    /// Every slot's vector, row-major (`slot * dimension`): a full scan streams one array
    /// instead of chasing 10k heap pointers (it was memory-bound: ~4 ms per `Rank` at 10k items).
    /// In f16 (as bits): half the memory of f32 (1.5 GB at a million 384-d items), and a
    /// query's dot product with a unit vector moves by ~1e-5 (BENCHMARKS.md, "Session 30");
    /// the store keeps the f32 vectors the encoder gave.
    vectors: Vec<u16>,
    free: Vec<u32>,
    /// Each item's slot by id (the id is the slot's item's: see [`slot_id`]).
    by_id: NameIndex,
    dimension: Option<usize>,
    bm25: Bm25,
    /// The shop's pinned results (see [`crate::pins`]).
    pins: Arc<crate::pins::Pins>,
    /// Slots by category level, brand, attribute, price and stock: what a filtered `Rank` may
    /// return.
    facets: Facets,
    /// Every CF id's popularity (summed event weights, in the units of
    /// `popularity_reference_ms`): by id, not by item id, as no string key need be held
    /// again for it (~70 bytes an item with events; BENCHMARKS.md, "Session 36").
    popularity: Vec<f32>,
    /// The catalog's items with popularity > 0, most popular first (ties by slot): the popular
    /// candidates of a `Rank` are the head of it. Keyed by the f32's bits, which order like the
    /// numbers for positive floats. Scanning every item for them was ~40% of a search's CPU
    /// at 100k items (BENCHMARKS.md, "the ranker's own cost per `Rank`").
    by_popularity: BTreeSet<(Reverse<u32>, u32)>,
    /// The largest popularity of any item id (events only add, so it only grows).
    max_popularity: f32,
    /// With a half-life ([`POPULARITY_HALF_LIFE_DAYS`]), popularity is stored in the units of
    /// `popularity_reference_ms`: an event at time t adds weight x 2^((t - reference) / half
    /// life), so no stored value changes as time passes (only the rescales past
    /// [`RESCALE_HALF_LIVES`] move them all), and the popularity as of the latest event is
    /// the stored value x [`Catalog::popularity_scale`].
    popularity_half_life_ms: Option<f64>,
    popularity_reference_ms: Option<i64>,
    /// The latest event time recorded: what "now" is for popularity.
    latest_event_ms: i64,
    /// Item ids seen by the collaborative filter (events may name items not in the catalog),
    /// interned so the per-request CF walk indexes arrays instead of hashing strings: each
    /// id's CF id, found through `cf_names` (the ids are held there only).
    cf_ids: NameIndex,
    cf_names: Vec<String>,
    /// The catalog slot of each CF id ([`NO_SLOT`] while the item is not in the catalog), so
    /// that `cf_scores` hands back slots without hashing an item id per scored item.
    cf_slots: Vec<u32>,
    /// Distinct users per item (by CF id), the CF normaliser.
    item_users: Vec<u32>,
    histories: HashMap<UserKey, History>,
    /// Co-occurrence counts by CF id.
    cooccurrence: Vec<CoRow>,
    /// The trained model's neighbours by CF id (EASE, item-kNN).
    trained_rows: Vec<Vec<(u32, f32)>>,
    /// A factor model's (iALS) row of each CF id ([`NO_ROW`] when it has none; ids interned
    /// after the fit are past the end) and the CF id of each row.
    factor_rows: Vec<u32>,
    factor_ids: Vec<u32>,
    interactions: u64,
    /// The collaborative filter fitted by `TrainCf`, when one was.
    trained_cf: Option<Arc<TrainedCf>>,
    /// What online co-occurrence counts beside it ([`ONLINE_SHARE_WITH_MODEL`]).
    online_share: f32,
    /// Recent history items the trained model scores from ([`TRAINED_CF_WINDOW`]).
    trained_window: usize,
    /// Co-occurring items kept per item ([`COOCCURRENCE_ROW`]).
    cooccurrence_row: usize,
    /// Bumped whenever a slot's item is replaced or deleted; ANN points carry the version they
    /// were inserted for.
    slot_versions: Vec<u32>,
    /// The HNSW graph over item vectors, once the catalog has `ann_min_items` items.
    ann: Option<AnnIndex>,
    ann_min_items: usize,
    /// Bumped on every change to the graph (insert, stale point, build, drop): the server
    /// saves it when this moved since its last save.
    ann_changes: u64,
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
            by_id: NameIndex::default(),
            dimension: None,
            bm25: Bm25::default(),
            pins: Arc::default(),
            facets: Facets::default(),
            popularity: Vec::new(),
            by_popularity: BTreeSet::new(),
            max_popularity: 0.0,
            popularity_half_life_ms: half_life_ms(POPULARITY_HALF_LIFE_DAYS),
            popularity_reference_ms: None,
            latest_event_ms: i64::MIN,
            cf_ids: NameIndex::default(),
            cf_names: Vec::new(),
            cf_slots: Vec::new(),
            item_users: Vec::new(),
            histories: HashMap::new(),
            cooccurrence: Vec::new(),
            trained_rows: Vec::new(),
            factor_rows: Vec::new(),
            factor_ids: Vec::new(),
            interactions: 0,
            trained_cf: None,
            online_share: ONLINE_SHARE_WITH_MODEL,
            trained_window: TRAINED_CF_WINDOW,
            cooccurrence_row: COOCCURRENCE_ROW,
            slot_versions: Vec::new(),
            ann: None,
            ann_min_items: DEFAULT_ANN_MIN_ITEMS,
            ann_changes: 0,
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

/// The id of the item in `slot` ("" for an empty slot): the name [`Catalog`]'s `by_id`
/// indexes each slot under.
fn slot_id(slots: &[Option<Entry>], slot: u32) -> &str {
    slots
        .get(slot as usize)
        .and_then(Option::as_ref)
        .map_or("", |e| e.item.id.as_str())
}

/// Slot `slot`'s vector in the catalog's row-major array of `d`-dimensional vectors (a free
/// function, so that it borrows only the array while the graph is borrowed mutably).
fn row(vectors: &[u16], d: usize, slot: u32) -> &[u16] {
    let start = slot as usize * d;
    &vectors[start..start + d]
}

/// The items a filtered graph walk keeps to (see [`Walk::keep_to`]): those `filter`'s bits
/// pass (see [`Filter::with_passing_bits`]), every item when it has none.
fn kept_to<'f>(filter: Option<&'f Filter<'_>>) -> impl Fn(u32) -> bool + 'f {
    move |slot| filter.and_then(|f| f.passes_slot(slot)) != Some(false)
}

/// A graph walk from `seeds` answering dot products of at least `min_dot`, kept to `keep_to`
/// (see [`kept_to`]) when `filter` has its bits and so its spread members: a filter with
/// bits (a side at most half the catalog) may pass none of the query's own region (a
/// department not the query's), and the walk starts from its spread members too.
fn filtered_walk<'w>(
    filter: Option<&Filter>,
    keep_to: &'w dyn Fn(u32) -> bool,
    seeds: &'w [u32],
    min_dot: f32,
) -> Walk<'w> {
    let has_bits = filter.is_some_and(|f| !f.spread().is_empty());
    Walk {
        seeds,
        min_dot,
        keep_to: has_bits.then_some(keep_to),
    }
}

impl Catalog {
    /// Adds or replaces an item with its text vector. Its description is indexed for word
    /// matches but not kept: [`Catalog::get`] and [`Catalog::items`] give items without one.
    ///
    /// # Errors
    /// `InvalidInput` when the vector's length differs from the catalog's.
    pub fn upsert(&mut self, item: Item, vector: Vec<f32>) -> Result<(), RankError> {
        self.upsert_many(vec![(item, vector)])
    }

    /// Adds or replaces items with their text vectors, then links their points into the HNSW
    /// graph in one batch (in parallel, instead of one search per item under the caller's
    /// write lock).
    ///
    /// # Errors
    /// `InvalidInput` when a vector's length differs from the catalog's (or from the first
    /// item's, in an empty catalog); then no item of the batch is taken.
    pub fn upsert_many(&mut self, items: Vec<(Item, Vec<f32>)>) -> Result<(), RankError> {
        self.check_vectors(&items)?;
        let Some(d) = self.batch_dimension(&items) else {
            return Ok(());
        };
        if self.dimension != Some(d) {
            // An emptied catalog taking vectors of another size: no row is in use.
            self.vectors.clear();
            if self.ann.take().is_some() {
                self.ann_changes += 1;
            }
        }
        self.dimension = Some(d);
        // Items whose vector did not change (a price or stock update) keep their point in
        // the graph: neither linked again nor counted stale.
        let placed: Vec<(u32, u32)> = items
            .into_iter()
            .filter_map(|(item, vector)| self.place(item, &vector))
            .collect();
        if let Some(ann) = &mut self.ann
            && !placed.is_empty()
        {
            let vectors = &self.vectors;
            ann.add_all(
                placed
                    .iter()
                    .map(|&(slot, version)| (slot, version, row(vectors, d, slot))),
            );
            self.ann_changes += 1;
        }
        self.maintain_ann();
        Ok(())
    }

    /// What [`Self::upsert_many`] would refuse: a vector whose length differs from the
    /// catalog's (or from the first item's, in an empty catalog).
    ///
    /// # Errors
    /// `InvalidInput` naming the first such item.
    pub fn check_vectors(&self, items: &[(Item, Vec<f32>)]) -> Result<(), RankError> {
        let Some(d) = self.batch_dimension(items) else {
            return Ok(());
        };
        match items.iter().find(|(_, v)| v.len() != d) {
            Some((item, vector)) => Err(RankError::InvalidInput(format!(
                "item {:?}: vector has {} dimensions, the catalog {d} (was the encoder model changed?)",
                item.id,
                vector.len()
            ))),
            None => Ok(()),
        }
    }

    /// The dimension a batch's vectors must have: the catalog's, or in an empty catalog the
    /// first item's, whatever the items it held before had (`None`: an empty batch in an
    /// empty catalog).
    fn batch_dimension(&self, items: &[(Item, Vec<f32>)]) -> Option<usize> {
        let first = items.first().map(|(_, v)| v.len());
        if self.is_empty() {
            first
        } else {
            self.dimension.or(first)
        }
    }

    /// Puts an item and its vector (of the catalog's dimension) in its slot, in every index
    /// but the HNSW graph (where its old point, if any, is counted stale); returns the slot
    /// and its new version, for the graph, or `None` when the item was there already with
    /// this vector (as the catalog keeps it, in f16): its point in the graph still stands. The description is indexed by BM25 and then
    /// dropped: nothing in memory reads it again, and at a real shop's ~550 bytes a
    /// description (Flipkart's average) it would be the largest thing an item holds after its
    /// vector (the ranker's store keeps it, for `Reembed`).
    fn place(&mut self, mut item: Item, vector: &[f32]) -> Option<(u32, u32)> {
        let popularity = self.popularity(&item.id);
        let known = self.slot_of(&item.id);
        let slot = match known {
            Some(slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or(self.slots.len() as u32);
                if slot as usize == self.slots.len() {
                    self.slots.push(None);
                }
                if let Some(cf) = self.cf_of(&item.id) {
                    self.cf_slots[cf as usize] = slot;
                }
                self.rank_popularity(slot, 0.0, popularity);
                slot
            }
        };
        self.bm25
            .insert_titled(slot, &item.title, &item.description);
        item.description = String::new();
        if let Some(old) = &self.slots[slot as usize] {
            self.facets.remove(slot, &old.item);
        }
        self.facets.add(slot, &item);
        let d = vector.len();
        let start = slot as usize * d;
        if self.vectors.len() < start + d {
            self.vectors.resize(start + d, 0);
        }
        let mut written = vec![0u16; d];
        write_f16(&mut written, vector);
        let same_vector = self.vectors[start..start + d] == written[..];
        self.vectors[start..start + d].copy_from_slice(&written);
        let replaced = self.slots[slot as usize]
            .replace(Entry { item, popularity })
            .is_some();
        if known.is_none() {
            // Indexed once the slot holds the item: the index reads ids from the slots.
            let slots = &self.slots;
            let id = slot_id(slots, slot);
            self.by_id.insert(id, slot, |s| slot_id(slots, s));
        }
        if replaced && same_vector && known.is_some() {
            return None;
        }
        if replaced && let Some(ann) = &mut self.ann {
            ann.mark_stale();
        }
        Some((slot, self.bump_version(slot)))
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
            let live = self.scattered_slots().into_iter().map(|slot| {
                (
                    slot,
                    versions.get(slot as usize).copied().unwrap_or(0),
                    row(vectors, d, slot),
                )
            });
            let started = std::time::Instant::now();
            self.ann = Some(AnnIndex::build(live));
            self.ann_changes += 1;
            tracing::info!(
                items = n,
                seconds = started.elapsed().as_secs_f64(),
                "built the HNSW graph over item vectors"
            );
        } else if self.ann.is_some() && n * 2 < self.ann_min_items {
            self.ann = None;
            self.ann_changes += 1;
        }
    }

    /// How many times the HNSW graph has changed: equal counts, same graph.
    pub fn ann_changes(&self) -> u64 {
        self.ann_changes
    }

    /// The HNSW graph as bytes to save (see [`AnnIndex::encode`]), `None` without one.
    pub fn ann_snapshot(&self) -> Option<Vec<u8>> {
        let ann = self.ann.as_ref()?;
        Some(ann.encode(|slot, version| {
            if self.slot_versions.get(slot as usize) != Some(&version) {
                return None;
            }
            self.slot(slot).map(|e| e.item.id.as_str())
        }))
    }

    /// Takes a saved HNSW graph instead of building one: each saved point stands again for
    /// the item of its id when that item's vector is the one it was linked by (as the graph
    /// stores it, see [`crate::ann::SavedVector::is`]; else it is stale), and items the graph
    /// lacks are added to it. Call after the items are loaded; [`Self::set_ann_min_items`]
    /// then keeps it, or rebuilds when too much of it is stale. Returns the points read, the
    /// stale ones, and the items added.
    ///
    /// # Errors
    /// Why the bytes cannot be used (damaged, other settings, other dimension); the catalog
    /// is unchanged.
    pub fn restore_ann(&mut self, bytes: &[u8]) -> Result<(Decoded, usize), String> {
        let d = self.dimension.unwrap_or(0);
        let mut claimed = vec![false; self.slots.len()];
        let (mut ann, decoded) = AnnIndex::decode(bytes, |id, vector| {
            let slot = self.slot_of(id)?;
            let same = vector.is(row(&self.vectors, d, slot));
            // A slot is claimed by the first point whose vector is its vector, only.
            if !same || std::mem::replace(&mut claimed[slot as usize], true) {
                return None;
            }
            Some((slot, self.slot_versions[slot as usize]))
        })?;
        if decoded.points > 0 && ann.dim() != d {
            return Err(format!(
                "saved for {} dimensions, the catalog has {d}",
                ann.dim()
            ));
        }
        let mut missing = self.scattered_slots();
        missing.retain(|&slot| !claimed[slot as usize]);
        if decoded.stale * 4 > decoded.points + missing.len() {
            // It would be rebuilt at once (see `needs_rebuild`): skip adding to it.
            return Err(format!(
                "{} of its {} points are stale: building anew is cheaper",
                decoded.stale, decoded.points
            ));
        }
        let versions = &self.slot_versions;
        let vectors = &self.vectors;
        ann.add_all(
            missing
                .iter()
                .map(|&slot| (slot, versions[slot as usize], row(vectors, d, slot))),
        );
        self.ann = Some(ann);
        self.ann_changes += 1;
        Ok((decoded, missing.len()))
    }

    /// Dense candidates come from the HNSW graph from `min_items` items on (0: always; above
    /// any catalog: never, an exact scan). Builds or drops the graph now if needed.
    pub fn set_ann_min_items(&mut self, min_items: usize) {
        self.ann_min_items = min_items;
        if self.len() < min_items && self.ann.take().is_some() {
            self.ann_changes += 1;
        }
        self.maintain_ann();
    }

    /// Whether `Rank` takes dense candidates from the HNSW graph.
    pub fn uses_ann(&self) -> bool {
        self.ann.is_some()
    }

    /// The `k` live items that pass `filter` whose vectors are closest to `query` by the HNSW
    /// graph (beam `ef`), nearest first; `None` when the catalog scans instead. Fewer than `k`
    /// when few items pass (see [`AnnIndex::search`]).
    pub(crate) fn ann_search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&Filter>,
    ) -> Option<Vec<u32>> {
        let ann = self.ann.as_ref()?;
        let keep_to = kept_to(filter);
        let seeds = filter.map_or(&[][..], Filter::spread);
        let walk = filtered_walk(filter, &keep_to, seeds, f32::NEG_INFINITY);
        Some(ann.search_from(query, k, ef, walk, |slot, version| {
            self.is_live(slot, version) && self.passes(filter, slot)
        }))
    }

    /// Whether a graph point linked at `version` of `slot` stands for the item in it: a slot's
    /// version moves on every replace and delete (no need to read the item).
    fn is_live(&self, slot: u32, version: u32) -> bool {
        self.slot_versions.get(slot as usize) == Some(&version)
    }

    /// The `k` live items that `accept` by slot whose vectors are closest to `query`, with a
    /// dot product of at least `min_dot`, walked from `seeds` too (slots) and kept to the items
    /// `filter` passes when it has their bits (see [`AnnIndex::search_from`]; `accept` must
    /// refuse what `filter` refuses).
    pub(crate) fn ann_search_from(
        &self,
        query: &[f32],
        k: usize,
        seeds: &[u32],
        min_dot: f32,
        filter: Option<&Filter>,
        accept: impl Fn(u32) -> bool,
    ) -> Option<Vec<u32>> {
        let ann = self.ann.as_ref()?;
        let keep_to = kept_to(filter);
        let walk = filtered_walk(filter, &keep_to, seeds, min_dot);
        Some(ann.search_from(query, k, k, walk, |slot, version| {
            self.is_live(slot, version) && accept(slot)
        }))
    }

    /// The `k` items that pass `filter` whose vectors are nearest `query` (highest dot
    /// product), nearest first, each with that dot product (of the f32 vectors): by the HNSW
    /// graph when the catalog has one and the filter is broad, else exactly, scanning the
    /// filter's members or every item (also when the graph finds fewer than `k` that pass).
    pub(crate) fn nearest(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Vec<(u32, f32)> {
        if k == 0 || self.dimension != Some(query.len()) {
            return Vec::new();
        }
        let similarity = |slot: u32| Some((slot, dot_f16(query, self.item_at(slot)?.1)));
        let members = filter.and_then(|f| f.members_within(filtered_scan_limit(self.len())));
        // The graph's answer (ordered by its 8-bit copies) or a scan's, ordered below by
        // these vectors.
        let mut scored: Vec<(u32, f32)> = if members.is_none()
            && let Some(found) = self.ann_search(query, k, k, filter)
            && found.len() >= k
        {
            found.into_iter().filter_map(similarity).collect()
        } else {
            // A filter's members all pass (see `Filter::members_within`).
            let exact = members.is_some();
            let scan: Box<dyn Iterator<Item = u32>> = match members {
                Some(members) => Box::new(members.into_iter()),
                None => self.filtered_slots(filter),
            };
            self.prefetching(scan, true)
                .filter(|&slot| exact || self.passes(filter, slot))
                .filter_map(similarity)
                .collect()
        };
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_score);
        scored
    }

    /// A request's filters against the catalog's facet index.
    pub(crate) fn filter<'a>(&'a self, filters: &'a Filters) -> Filter<'a> {
        self.facets.resolve(filters)
    }

    /// [`Self::filter`] for a request that checks many slots against it (a common word's
    /// matches, a filtered graph walk): with the slots that pass as bits when its smallest
    /// side, not a price range, holds at most 1 / [`PASSING_BITS_SHARE`] of the catalog (see
    /// [`Filter::with_passing_bits`]).
    pub(crate) fn filter_checked_often<'a>(&self, filter: Filter<'a>) -> Filter<'a> {
        filter.with_passing_bits(self.len() / PASSING_BITS_SHARE)
    }

    /// Counts for a search page's facets over the items a search matches (see
    /// [`FacetScope`]) that pass `filters`, each facet without its own side (see
    /// [`FacetField::others`]). Values differing only in case are one, shown as one of its
    /// items writes it.
    ///
    /// # Complexity
    /// One BM25 pass; for each distinct set of remaining filters, one nearest-items search
    /// (when the scope has a vector) and a filter check per match; then per facet its passing
    /// matches' values or its index entries (see `count_facet`).
    pub fn facet_counts(
        &self,
        scope: &FacetScope<'_>,
        filters: &Filters,
        fields: &[FacetField],
    ) -> Vec<FacetCounts> {
        self.facet_counts_matched(scope, None, filters, fields)
    }

    /// [`Self::facet_counts`], with the scope's word matches when the caller already found
    /// them in this catalog (`Rank`'s first pass did).
    pub fn facet_counts_matched(
        &self,
        scope: &FacetScope<'_>,
        matches: Option<&Matches>,
        filters: &Filters,
        fields: &[FacetField],
    ) -> Vec<FacetCounts> {
        let lexical = self.lexical_scope(scope, matches);
        // Facets whose filters (the request's, less their own side) are the same share the
        // set of matches that pass them: all of them when the request filters nothing they
        // count.
        let others: Vec<Filters> = fields.iter().map(|f| f.others(filters)).collect();
        let mut counts: Vec<Option<FacetCounts>> = vec![None; fields.len()];
        for first in 0..fields.len() {
            if counts[first].is_some() {
                continue;
            }
            let filter = (!others[first].is_empty())
                .then(|| self.filter_checked_often(self.filter(&others[first])));
            let passing = self.scope_passing(scope, &lexical, filter.as_ref());
            let mut bits = SlotBits::with_slots(self.slots.len());
            for &slot in &passing {
                bits.insert(slot);
            }
            for i in first..fields.len() {
                if counts[i].is_none() && others[i] == others[first] {
                    counts[i] = Some(self.count_facet(&fields[i], &passing, &bits));
                }
            }
        }
        counts.into_iter().flatten().collect()
    }

    /// The slots a scope starts from before its vector's nearest items, ascending, each once: a re-rank
    /// request's candidates, the query words' BM25 matches (`matches`, when already found),
    /// every item (no words and no vector), or none (a vector alone).
    fn lexical_scope(&self, scope: &FacetScope<'_>, matches: Option<&Matches>) -> Vec<u32> {
        match (scope.among, scope.words) {
            (Some(ids), _) => self.sorted_slots(ids),
            (None, Some(_)) if let Some(matches) = matches => matches.docs().collect(),
            (None, Some(q)) => self.matches(q).docs().collect(),
            (None, None) if scope.nearest.is_none() => self.slots().collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The items of `scope` that `filter` passes: `lexical` (see [`Catalog::lexical_scope`])
    /// and, unless the scope is a re-rank request's, the vector's nearest items among those
    /// the filter passes, at least [`NEAR_MATCH_RATIO`] as similar as the nearest; each once.
    fn scope_passing(
        &self,
        scope: &FacetScope<'_>,
        lexical: &[u32],
        filter: Option<&Filter>,
    ) -> Vec<u32> {
        // The dense signal's matches, among the items these filters pass (the ones a search
        // so filtered ranks from).
        let except = scope.except;
        let listed = |slot: u32| except.is_empty() || except.binary_search(&slot).is_err();
        let mut near: Vec<u32> = Vec::new();
        if let Some((vector, k)) = scope.nearest.filter(|_| scope.among.is_none()) {
            // The floor is set by the nearest item the ranking may list: an item's page
            // (its own vector the query) is not its own nearest match.
            let mut nearest = self.nearest(vector, k, filter);
            nearest.retain(|&(slot, _)| listed(slot));
            let best = nearest.first().map_or(0.0, |&(_, similarity)| similarity);
            if best > 0.0 {
                let floor = NEAR_MATCH_RATIO * best;
                near = nearest
                    .into_iter()
                    .filter(|&(_, similarity)| similarity >= floor)
                    .map(|(slot, _)| slot)
                    .collect();
                // A few dozen, merged into the ascending word matches rather than sorted
                // with them (a common word's 20k+ at 300k items: 3.6% of such a search).
                near.sort_unstable();
                near.dedup();
            }
        }
        union_ascending(lexical, &near)
            .filter(|&slot| self.passes(filter, slot) && listed(slot))
            .collect()
    }

    /// The items a search lists when sorted by price or popularity instead of relevance:
    /// those its facets count (the query's word matches and nearest items less its `except`,
    /// see [`FacetScope`]) that `filters` pass, in `order` (ties by id): the positions `page`
    /// of that list, and how many it lists in all.
    ///
    /// # Complexity
    /// The scope's items and a selection of the page's end among them; only the items up to
    /// the page's end (and their key's ties) are sorted.
    pub fn listing(
        &self,
        scope: &FacetScope<'_>,
        filters: &Filters,
        order: ListOrder,
        page: Range<usize>,
        collapse: Option<&FacetField>,
    ) -> (Vec<u32>, usize) {
        let filter = (!filters.is_empty()).then(|| self.filter_checked_often(self.filter(filters)));
        let lexical = self.lexical_scope(scope, None);
        // Each item's key, rising in the list's order. Prices from the facet index's array
        // (an item's key orders as its price), not from each item: a common word's ~100k
        // matches at 1M items were as many cache misses.
        let key = |slot: u32| -> Option<u64> {
            match order {
                ListOrder::PriceAscending => self.facets.price_key_of(slot),
                ListOrder::PriceDescending => self.facets.price_key_of(slot).map(|k| u64::MAX - k),
                // Most popular first; a popularity is >= 0, whose f32 bits order as it does.
                ListOrder::Popularity => self.slot(slot).map(|e| {
                    let bits = if e.popularity > 0.0 {
                        e.popularity.to_bits()
                    } else {
                        0
                    };
                    u64::from(u32::MAX - bits)
                }),
            }
        };
        let mut keyed: Vec<(u64, u32)> = self
            .scope_passing(scope, &lexical, filter.as_ref())
            .into_iter()
            .filter_map(|slot| Some((key(slot)?, slot)))
            .collect();
        let id_of = |slot: u32| self.slot(slot).map_or("", |e| e.item.id.as_str());
        let in_order =
            |a: &(u64, u32), b: &(u64, u32)| a.0.cmp(&b.0).then_with(|| id_of(a.1).cmp(id_of(b.1)));
        if let Some(field) = collapse {
            // One item per group, the first in the list's order (cheapest, dearest or most
            // popular, then by id), as a relevance ranking keeps a group's best. The list is
            // ordered a prefix at a time, four times longer each round, until its groups fill
            // the page: a page's few groups do not cost a group lookup per match.
            let listed = keyed.len();
            let mut take = page.end.saturating_mul(4).max(64);
            loop {
                let prefix = Self::key_prefix(&mut keyed, take);
                keyed[..prefix].sort_by(in_order);
                let mut groups: HashSet<String> = HashSet::new();
                let firsts: Vec<u32> = keyed[..prefix]
                    .iter()
                    .filter(|&&(_, slot)| {
                        let group = self.slot(slot).and_then(|e| field.group_of(&e.item));
                        group.is_none_or(|g| groups.insert(g))
                    })
                    .take(page.end)
                    .map(|&(_, slot)| slot)
                    .collect();
                if firsts.len() >= page.end || prefix == listed {
                    let page = firsts.get(page.start..).unwrap_or_default().to_vec();
                    return (page, listed);
                }
                take = take.saturating_mul(4);
            }
        }
        let listed = keyed.len();
        let end = page.end.min(listed);
        if page.start >= end {
            return (Vec::new(), listed);
        }
        // Only the page's items and those before it are ordered.
        let prefix = Self::key_prefix(&mut keyed, end);
        keyed[..prefix].sort_by(in_order);
        let slots = keyed[page.start..end].iter().map(|&(_, s)| s).collect();
        (slots, listed)
    }

    /// Moves to the front of `keyed` the first `take` items by key and every other item of
    /// the last one's key (which the ties' order by id may place before it): a prefix of the
    /// list in its whole order (key, then id), unordered. Its length.
    fn key_prefix(keyed: &mut [(u64, u32)], take: usize) -> usize {
        if take >= keyed.len() {
            return keyed.len();
        }
        if take == 0 {
            return 0;
        }
        keyed.select_nth_unstable_by_key(take - 1, |&(key, _)| key);
        let last = keyed[take - 1].0;
        let mut kept = take;
        for i in take..keyed.len() {
            if keyed[i].0 == last {
                keyed.swap(kept, i);
                kept += 1;
            }
        }
        kept
    }

    /// One facet's counts over `passing` (`passing_bits` holds the same slots). Two ways, the
    /// cheaper for the sizes: each passing item's values (a few pointer hops per item), or
    /// each value's items in the facet index counted against `passing_bits` (a bit per item
    /// of a sparse value, a word per 64 slots of a dense one, see [`crate::facet::SlotSet::count_within`],
    /// and one item read per value for its spelling), which wins once the matches are more
    /// than ~1/256 of the index's steps for the field: `rank_cost -- 100000 10000`, three
    /// facets over 5-15k matches, cost a search +7.9 ms item by item, +4.6 ms switching at
    /// 1/16, +1.2 ms at 1/64, +1.0 ms at 1/256 (BENCHMARKS.md, "facet counts").
    fn count_facet(
        &self,
        field: &FacetField,
        passing: &[u32],
        passing_bits: &SlotBits,
    ) -> FacetCounts {
        match field {
            FacetField::Price => {
                return FacetCounts {
                    price_range: self.facets.price_range(passing),
                    ..Tally::default().finish(FacetField::Price)
                };
            }
            FacetField::PriceBuckets(edges) => {
                let values = self
                    .facets
                    .price_buckets(passing, edges)
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, n)| Some((field.price_bucket(i)?.2, n)))
                    .collect();
                return FacetCounts {
                    field: field.clone(),
                    values,
                    other_values: 0,
                    price_range: self.facets.price_range(passing),
                };
            }
            _ => {}
        }
        let sets = self.facets.value_sets(field);
        let walk: usize = sets.iter().map(|(_, slots)| slots.walk_cost()).sum();
        let mut tally = Tally::default();
        if walk > 256 * passing.len() {
            for &slot in passing {
                if let Some(entry) = self.slot(slot) {
                    for value in field.values(&entry.item) {
                        tally.add(value);
                    }
                }
            }
        } else {
            for (value, slots) in sets {
                let (n, Some(first)) = slots.count_within(passing_bits) else {
                    continue;
                };
                // Shown as the lowest passing slot's item writes it.
                let shown = self.slot(first).and_then(|e| {
                    field
                        .values(&e.item)
                        .into_iter()
                        .find(|v| v.to_lowercase() == value)
                });
                tally.add_n(shown.unwrap_or(value), n as u64);
            }
        }
        tally.finish(field.clone())
    }

    /// How many items of the catalog fall in `item`'s group of `field` (see
    /// [`FacetField::group_of`]), `item` included: 0 when it has no value.
    pub fn group_size(&self, field: &FacetField, item: &Item) -> usize {
        field
            .group_of(item)
            .map_or(0, |group| self.facets.value_count(field, &group))
    }

    /// Whether the item in `slot` passes `filter` (false for an empty slot); without a filter
    /// every slot passes, and none is read.
    pub(crate) fn passes(&self, filter: Option<&Filter>, slot: u32) -> bool {
        filter.is_none_or(|f| {
            f.passes_slot(slot)
                .unwrap_or_else(|| self.slot(slot).is_some_and(|e| f.accepts(slot, &e.item)))
        })
    }

    /// The `k` most popular items' slots, most popular first (ties by slot); items without
    /// events are not among them.
    pub fn most_popular(&self, k: usize) -> Vec<u32> {
        self.by_popularity.iter().take(k).map(|&(_, s)| s).collect()
    }

    /// Moves `slot` in the popularity order from `old` to `new` (0: not in it).
    fn rank_popularity(&mut self, slot: u32, old: f32, new: f32) {
        if old > 0.0 {
            self.by_popularity.remove(&(Reverse(old.to_bits()), slot));
        }
        if new > 0.0 {
            self.by_popularity.insert((Reverse(new.to_bits()), slot));
        }
    }

    /// Removes an item from every index it ranks in. Returns false when it was not there.
    pub fn delete(&mut self, id: &str) -> bool {
        let slots = &self.slots;
        let Some(slot) = self.by_id.remove(id, |s| slot_id(slots, s)) else {
            return false;
        };
        if let Some(cf) = self.cf_of(id) {
            self.cf_slots[cf as usize] = NO_SLOT;
        }
        self.rank_popularity(slot, self.popularity_at(slot), 0.0);
        self.bm25.remove(slot);
        if let Some(old) = self.slots[slot as usize].take() {
            self.facets.remove(slot, &old.item);
        }
        self.free.push(slot);
        self.bump_version(slot);
        if let Some(ann) = &mut self.ann {
            ann.mark_stale();
            self.ann_changes += 1;
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

    /// The item `id`, without its description (see [`Catalog::upsert`]).
    pub fn get(&self, id: &str) -> Option<&Item> {
        self.slot_of(id).and_then(|s| self.slot(s)).map(|e| &e.item)
    }

    fn slot(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The slot an item id lives in: what [`Catalog::cf_scores`] keys its scores by.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id, |s| slot_id(&self.slots, s))
    }

    /// The slots of the ids the catalog holds, ascending, each once: a set a scan looks
    /// slots up in by binary search (pins, hidden items, a re-rank's candidates).
    pub fn sorted_slots<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<u32> {
        let mut slots: Vec<u32> = ids.into_iter().filter_map(|id| self.slot_of(id)).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// The CF id of item id `id`, once an event named it.
    fn cf_of(&self, id: &str) -> Option<u32> {
        self.cf_ids
            .get(id, |cf| self.cf_names[cf as usize].as_str())
    }

    /// The catalog slot of CF id `cf`, while its item is in the catalog: what
    /// [`Self::slot_of`] gives for its id, read from an array kept in step with loads and
    /// deletes instead of looking the id up again.
    fn cf_slot(&self, cf: u32) -> Option<u32> {
        self.cf_slots
            .get(cf as usize)
            .copied()
            .filter(|&slot| slot != NO_SLOT)
    }

    /// Every item's slot and id, in slot order.
    fn live_slots(&self) -> impl Iterator<Item = (u32, &str)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| Some((slot as u32, e.as_ref()?.item.id.as_str())))
    }

    /// Asks the CPU for the item in `slot`, and its vector when `vector`, ahead of
    /// [`Self::item_at`].
    fn prefetch_slot(&self, slot: u32, vector: bool) {
        if let Some(entry) = self.slots.get(slot as usize) {
            prefetch(entry);
        }
        if !vector {
            return;
        }
        let d = self.dimension.unwrap_or(0);
        let start = slot as usize * d;
        if let Some(row) = self.vectors.get(start..start + d) {
            prefetch_slice(row);
        }
    }

    /// `slots`, each one's item (and its vector when `vectors`: only a scan that reads them
    /// should ask, a recommendation's pool without a query vector spent 25% more at 1M
    /// items fetching vectors it never read) asked for [`PREFETCH_AHEAD`] slots before it is
    /// yielded: a scan of a filter's members (ascending, but kilobytes apart) otherwise waits
    /// on one cache miss after another.
    pub(crate) fn prefetching<I: Iterator<Item = u32>>(
        &self,
        slots: I,
        vectors: bool,
    ) -> Prefetching<'_, I> {
        Prefetching {
            catalog: self,
            vectors,
            slots: slots.fuse(),
            ahead: [0; PREFETCH_AHEAD],
            first: 0,
            len: 0,
        }
    }

    pub(crate) fn item_at(&self, slot: u32) -> Option<(&Item, &[u16])> {
        let d = self.dimension.unwrap_or(0);
        let start = slot as usize * d;
        self.slot(slot)
            .map(|e| (&e.item, self.vectors.get(start..start + d).unwrap_or(&[])))
    }

    /// An item's vector, as kept: rounded to f16.
    pub fn vector(&self, id: &str) -> Option<Vec<f32>> {
        self.item_at(self.slot_of(id)?)
            .map(|(_, v)| crate::ann::widen(v))
    }

    /// Every item (without its description), in no particular order.
    pub fn items(&self) -> impl Iterator<Item = &Item> + '_ {
        self.slots.iter().flatten().map(|e| &e.item)
    }

    /// Gives every item a new vector (the encoder's model changed: see the ranker server's
    /// `Reembed`), of any one dimension, and builds the HNSW graph again over them. Ids the
    /// catalog does not hold are skipped (deleted since they were read).
    ///
    /// # Errors
    /// `InvalidInput` when an item has no vector, or the vectors differ in length; then
    /// nothing changes.
    pub fn replace_vectors(
        &mut self,
        vectors: &HashMap<String, Vec<f32>>,
    ) -> Result<(), RankError> {
        let mut d = None;
        for (_, id) in self.live_slots() {
            let Some(v) = vectors.get(id) else {
                return Err(RankError::InvalidInput(format!(
                    "item {id:?} has no new vector"
                )));
            };
            match d {
                None => d = Some(v.len()),
                Some(d) if d != v.len() => {
                    return Err(RankError::InvalidInput(format!(
                        "item {id:?}: new vector has {} dimensions, the others {d}",
                        v.len()
                    )));
                }
                Some(_) => {}
            }
        }
        let Some(d) = d else {
            return Ok(());
        };
        let mut rows = vec![0; self.slots.len() * d];
        for (slot, id) in self.live_slots() {
            if let Some(v) = vectors.get(id) {
                let start = slot as usize * d;
                write_f16(&mut rows[start..start + d], v);
            }
        }
        self.vectors = rows;
        self.dimension = Some(d);
        // Every point of the old graph is stale: new versions, and a graph built afresh.
        let live: Vec<u32> = self.live_slots().map(|(slot, _)| slot).collect();
        for slot in live {
            self.bump_version(slot);
        }
        if self.ann.take().is_some() {
            self.ann_changes += 1;
        }
        self.maintain_ann();
        Ok(())
    }

    /// Every live slot, in order: a scan reads the vectors' array front to back.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is_some())
            .map(|(slot, _)| slot as u32)
    }

    /// Every live slot in the order the HNSW graph links them: one fixed shuffle of the
    /// slots, so that every process builds the same graph (the id map's order, used before,
    /// is random per process: two starts, or two replicas rebuilding, linked different graphs
    /// and answered ~0.5% of top 10s differently; BENCHMARKS.md, "Session 30"), and a catalog
    /// loaded one category after another is still linked in mixed order (HNSW links sorted
    /// input poorly).
    fn scattered_slots(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = self.slots().collect();
        // Multiplying by an odd number permutes the u32s: a shuffle with no state.
        slots.sort_unstable_by_key(|&slot| slot.wrapping_mul(0x9E37_79B9));
        slots
    }

    /// What an exact pass over the items `filter` may pass walks: the filter's members when
    /// it can list them and they are at most half the catalog (a department of a 1M-item
    /// catalog: 83k slots instead of 1M filter checks), else every item. Callers still check
    /// `filter` on each.
    pub(crate) fn filtered_slots<'a>(
        &'a self,
        filter: Option<&Filter>,
    ) -> Box<dyn Iterator<Item = u32> + 'a> {
        match filter.and_then(|f| f.members_within(self.len() / 2)) {
            Some(members) => Box::new(members.into_iter()),
            None => Box::new(self.slots()),
        }
    }

    /// Whether the query's words match an item (one of [`Self::matches`]), asked per slot.
    pub(crate) fn word_matcher(&self, query: &str) -> impl Fn(u32) -> bool + '_ {
        self.bm25.matcher(query)
    }

    /// The items the query's words match, with their lexical relevance (see
    /// [`Matches::relevance`]).
    pub(crate) fn matches(&self, query: &str) -> Matches {
        self.bm25.matches(query)
    }

    /// The language's words, which spelling correction leaves as typed (see
    /// [`Bm25::set_lexicon`]).
    pub fn set_lexicon(&mut self, words: Option<Arc<HashSet<String>>>) {
        self.bm25.set_lexicon(words);
    }

    /// The spelling lexicon in use, if any (a replica's catalog rebuilt from its primary's
    /// store keeps the words its encoder gave).
    pub fn lexicon(&self) -> Option<Arc<HashSet<String>>> {
        self.bm25.lexicon()
    }

    /// Words in the spelling lexicon (0 without one).
    pub fn lexicon_len(&self) -> usize {
        self.bm25.lexicon_len()
    }

    /// The query's words item `slot` holds, and how many words count (see
    /// [`Bm25::held_words`]).
    pub(crate) fn held_words<'q>(&self, query: &'q str, slot: u32) -> (Vec<&'q str>, usize) {
        self.bm25.held_words(query, slot)
    }

    /// Whether any item holds any of the query's words (see [`Bm25::matches_any`]).
    pub fn matches_any_word(&self, query: &str) -> bool {
        self.bm25.matches_any(query)
    }

    /// Search-as-you-type suggestions for `query` (see [`Bm25::suggest`]).
    pub fn suggest(&self, query: &str, k: usize) -> Vec<(String, usize)> {
        self.bm25.suggest(query, k)
    }

    /// The shop's synonyms, for every query from now on (see [`crate::synonyms`]).
    pub fn set_synonyms(&mut self, synonyms: Arc<crate::synonyms::Synonyms>) {
        self.bm25.set_synonyms(synonyms);
    }

    pub fn synonyms(&self) -> &crate::synonyms::Synonyms {
        self.bm25.synonyms()
    }

    /// The shop's pinned results, for every search from now on (see [`crate::pins`]).
    pub fn set_pins(&mut self, pins: Arc<crate::pins::Pins>) {
        self.pins = pins;
    }

    pub fn pins(&self) -> &crate::pins::Pins {
        &self.pins
    }

    /// Whether one item's words hold every one of `terms`.
    pub fn holds_all(&self, terms: &[String]) -> bool {
        self.bm25.holds_all(terms)
    }

    /// What a search for `query` is widened to beyond its words (see [`Bm25::widened_to`]).
    pub fn widened_to(&self, query: &str) -> Vec<String> {
        self.bm25.widened_to(query)
    }

    /// `query` as the catalog's texts read it (see [`Bm25::read`]).
    pub fn read_query(&self, query: &str, typing: bool) -> Option<String> {
        self.bm25.read(query, typing)
    }

    /// Popularity of the item in `slot` (0 for an empty slot).
    pub(crate) fn popularity_at(&self, slot: u32) -> f32 {
        self.slot(slot).map_or(0.0, |e| e.popularity)
    }

    pub fn popularity(&self, id: &str) -> f32 {
        self.cf_of(id)
            .and_then(|cf| self.popularity.get(cf as usize))
            .copied()
            .unwrap_or(0.0)
    }

    pub(crate) fn max_popularity(&self) -> f32 {
        self.max_popularity
    }

    pub fn users(&self) -> usize {
        self.histories.len()
    }

    pub fn interactions(&self) -> u64 {
        self.interactions
    }

    /// The user's history, most recent first.
    pub fn history(&self, user: &UserKey) -> Vec<HistoryEntry> {
        self.recent_history(user, usize::MAX)
    }

    /// The user's `n` most recent history entries, newest first (ties by item id), as
    /// [`Self::history`] begins: what `Rank` reads ([`Self::rank_window`]), without copying or
    /// sorting the rest of a long history (a shared guest id may hold the whole catalog).
    pub fn recent_history(&self, user: &UserKey, n: usize) -> Vec<HistoryEntry> {
        let Some(history) = self.histories.get(user) else {
            return Vec::new();
        };
        let name = |t: &Touch| self.cf_names[t.cf as usize].as_str();
        let newest_first =
            |a: &&Touch, b: &&Touch| b.last_ms.cmp(&a.last_ms).then_with(|| name(a).cmp(name(b)));
        let mut recent: Vec<&Touch> = history.entries.iter().collect();
        if recent.len() > n {
            recent.select_nth_unstable_by(n, newest_first);
            recent.truncate(n);
        }
        recent.sort_by(newest_first);
        recent
            .into_iter()
            .map(|t| HistoryEntry {
                item_id: name(t).to_string(),
                kind: t.kind,
                weight: t.weight,
                last_ms: t.last_ms,
            })
            .collect()
    }

    /// How many of a history's most recent entries `Rank` reads: the trained model's window
    /// ([`TRAINED_CF_WINDOW`]), which holds the online co-occurrence's and the graph's.
    pub fn rank_window(&self) -> usize {
        self.trained_window.max(HISTORY_WINDOW)
    }

    /// The catalog slots of the items the user bought (over the whole history, not only the
    /// recent part `Rank` reads): what a ranking leaves out unless asked to include them.
    pub fn purchased_slots(&self, user: &UserKey) -> HashSet<u32, IdHash> {
        let Some(history) = self.histories.get(user) else {
            return HashSet::default();
        };
        // By CF id: thousands of item ids hashed per `Rank` took 9 ms at 20k purchases.
        history
            .entries
            .iter()
            .filter(|e| e.kind == InteractionKind::Purchase)
            .filter_map(|e| self.cf_slot(e.cf))
            .collect()
    }

    /// Records an event: popularity, the user's history and co-occurrence all move at once,
    /// so the next `Rank` sees it.
    pub fn record(&mut self, event: &Interaction) {
        self.record_event(event, true);
    }

    /// Sets popularity's half-life in days (`None`, 0 or less: every event counts alike,
    /// forever). Set it before recording events: stored popularity is not recomputed.
    pub fn set_popularity_half_life(&mut self, days: Option<f64>) {
        self.popularity_half_life_ms = days.and_then(half_life_ms);
    }

    /// What an event of `weight` at `at_ms` adds to popularity, in the stored units.
    fn popularity_weight(&self, weight: f32, at_ms: i64) -> f32 {
        match (self.popularity_half_life_ms, self.popularity_reference_ms) {
            (Some(half_life), Some(reference)) => {
                (f64::from(weight) * ((at_ms as f64 - reference as f64) / half_life).exp2()) as f32
            }
            _ => weight,
        }
    }

    /// Takes the first event's time as the reference, and moves the reference to `at_ms`
    /// when an event there would weigh past 2^[`RESCALE_HALF_LIVES`]: every stored value is
    /// multiplied down to the new units (the same operations on a replay of the same log).
    fn move_popularity_reference(&mut self, at_ms: i64) {
        let Some(half_life) = self.popularity_half_life_ms else {
            return;
        };
        let Some(reference) = self.popularity_reference_ms else {
            self.popularity_reference_ms = Some(at_ms);
            return;
        };
        if (at_ms as f64 - reference as f64) / half_life <= RESCALE_HALF_LIVES {
            return;
        }
        let factor = ((reference as f64 - at_ms as f64) / half_life).exp2();
        let scaled = |value: f32| (f64::from(value) * factor) as f32;
        for value in &mut self.popularity {
            *value = scaled(*value);
        }
        for entry in self.slots.iter_mut().flatten() {
            entry.popularity = scaled(entry.popularity);
        }
        self.max_popularity = scaled(self.max_popularity);
        self.by_popularity = self.popular_order();
        self.popularity_reference_ms = Some(at_ms);
    }

    /// Stored popularity times this is popularity as of the latest event (1 without a
    /// half-life).
    pub(crate) fn popularity_scale(&self) -> f32 {
        match (self.popularity_half_life_ms, self.popularity_reference_ms) {
            (Some(half_life), Some(reference)) => {
                ((reference as f64 - self.latest_event_ms as f64) / half_life).exp2() as f32
            }
            _ => 1.0,
        }
    }

    /// The catalog's items with popularity > 0, most popular first (ties by slot).
    fn popular_order(&self) -> BTreeSet<(Reverse<u32>, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| {
                let popularity = entry.as_ref()?.popularity;
                (popularity > 0.0).then_some((Reverse(popularity.to_bits()), slot as u32))
            })
            .collect()
    }

    /// Forgets shoppers (a request to erase them): `events`, every stored event of some
    /// users in the order they were recorded, are taken out of what they moved. Each of
    /// those users' history goes, and what their events added is subtracted: popularity,
    /// users per item, the event count, and each co-occurrence pair their histories counted
    /// (found by taking their events again into an empty history: a history's pairs depend
    /// on it alone). The result is what a replay of the log without them gives, except where
    /// a co-occurrence row was cut back (see [`COOCCURRENCE_ROW`]): a pair the cut dropped
    /// stays out, and one it kept instead of a pair the replay keeps stays in, until the next
    /// start replays the log. A trained CF model keeps what it learnt from them until it is
    /// trained again. Events of users with no history here are skipped. Returns the events
    /// taken out.
    pub fn forget(&mut self, events: &[Interaction]) -> usize {
        let mut taken: HashMap<UserKey, History> = HashMap::new();
        for event in events {
            if !taken.contains_key(&event.user) && self.histories.remove(&event.user).is_some() {
                taken.insert(event.user.clone(), History::default());
            }
        }
        let mut forgotten = 0;
        for event in events {
            let Some(history) = taken.get_mut(&event.user) else {
                continue;
            };
            forgotten += 1;
            self.interactions = self.interactions.saturating_sub(1);
            let weight = event.weight();
            let added = self.popularity_weight(weight, event.timestamp_ms);
            let Some(item) = self.cf_of(&event.item_id) else {
                continue;
            };
            if let Some(popularity) = self.popularity.get_mut(item as usize)
                && *popularity > 0.0
            {
                let old = *popularity;
                // Without a half-life weights are small multiples of 1/4, and sums and
                // differences exact; with one, what is left of a value all of whose events
                // went is rounding.
                let mut new = old - added;
                if new <= old * 1e-5 {
                    new = 0.0;
                }
                *popularity = new;
                if let Some(slot) = self.cf_slot(item)
                    && let Some(Some(entry)) = self.slots.get_mut(slot as usize)
                {
                    entry.popularity = new;
                    self.rank_popularity(slot, old, new);
                }
            }
            let Some(neighbours) = history.take(event, item, weight) else {
                continue;
            };
            if let Some(users) = self.item_users.get_mut(item as usize) {
                *users = users.saturating_sub(1);
            }
            for other in neighbours {
                if let Some(row) = self.cooccurrence.get_mut(item as usize) {
                    row.subtract(other, 1);
                }
                if let Some(row) = self.cooccurrence.get_mut(other as usize) {
                    row.subtract(item, 1);
                }
            }
        }
        if forgotten > 0 {
            self.max_popularity = self.popularity.iter().copied().fold(0.0, f32::max);
        }
        forgotten
    }

    /// Records every event of a log as [`Self::record`] does, in order, and orders the items
    /// by popularity once at the end instead of moving one item per event: what a start's
    /// replay of the stored log does.
    pub fn replay<E: std::borrow::Borrow<Interaction>>(
        &mut self,
        events: impl IntoIterator<Item = E>,
    ) {
        for event in events {
            self.record_event(event.borrow(), false);
        }
        self.by_popularity = self.popular_order();
    }

    /// [`Self::record`]; `rank`: whether to move the item in the popularity order now.
    fn record_event(&mut self, event: &Interaction, rank: bool) {
        self.interactions += 1;
        let weight = event.weight();
        self.latest_event_ms = self.latest_event_ms.max(event.timestamp_ms);
        self.move_popularity_reference(event.timestamp_ms);
        let added = self.popularity_weight(weight, event.timestamp_ms);
        let item = self.cf_id(&event.item_id);
        let popularity = &mut self.popularity[item as usize];
        let old = *popularity;
        *popularity += added;
        let popularity = *popularity;
        self.max_popularity = self.max_popularity.max(popularity);
        if let Some(slot) = self.cf_slot(item)
            && let Some(Some(entry)) = self.slots.get_mut(slot as usize)
        {
            entry.popularity = popularity;
            if rank {
                self.rank_popularity(slot, old, popularity);
            }
        }
        let history = self.histories.entry(event.user.clone()).or_default();
        let Some(neighbours) = history.take(event, item, weight) else {
            return;
        };
        self.item_users[item as usize] += 1;
        let keep = self.cooccurrence_row;
        // Each count waits on memory (a row of 100k, a slot in it): the rows and then the
        // slots are prefetched for all neighbours before any is counted, so that the misses
        // overlap. Each row takes its counts in the order of `neighbours`.
        for &other in &neighbours {
            prefetch(&self.cooccurrence[other as usize]);
        }
        let row = &mut self.cooccurrence[item as usize];
        for &other in &neighbours {
            row.prefetch(other);
        }
        for &other in &neighbours {
            row.count(other, keep);
        }
        for &other in &neighbours {
            self.cooccurrence[other as usize].prefetch(item);
        }
        for &other in &neighbours {
            self.cooccurrence[other as usize].count(item, keep);
        }
    }

    /// Co-occurring items kept per item: [`COOCCURRENCE_ROW`] unless set (at least 1). Rows
    /// are cut back as they grow, so set it before recording events. For measurements (the
    /// `rec_datasets` test picks the default on validation splits with it).
    pub fn set_cooccurrence_row(&mut self, keep: usize) {
        self.cooccurrence_row = keep.max(1);
    }

    /// Item pairs the online co-occurrence counts (each direction once).
    pub fn cooccurrence_pairs(&self) -> usize {
        self.cooccurrence.iter().map(CoRow::len).sum()
    }

    /// The CF id of an item id, interning it on first sight.
    fn cf_id(&mut self, item_id: &str) -> u32 {
        if let Some(id) = self.cf_of(item_id) {
            return id;
        }
        let id = self.cf_names.len() as u32;
        self.cf_names.push(item_id.to_string());
        let names = &self.cf_names;
        self.cf_ids
            .insert(item_id, id, |cf| names[cf as usize].as_str());
        self.cf_slots.push(self.slot_of(item_id).unwrap_or(NO_SLOT));
        self.item_users.push(0);
        self.popularity.push(0.0);
        self.cooccurrence.push(CoRow::default());
        self.trained_rows.push(Vec::new());
        id
    }

    /// Every user's distinct items, the input of a CF fit (taken under the read lock, fitted
    /// outside it).
    pub fn user_item_sets(&self) -> Vec<Vec<String>> {
        self.histories
            .values()
            .map(|h| {
                h.entries
                    .iter()
                    .map(|e| self.cf_names[e.cf as usize].clone())
                    .collect()
            })
            .collect()
    }

    /// Serves `model` from now on (`None`: online co-occurrence only).
    pub fn set_trained_cf(&mut self, model: Option<Arc<TrainedCf>>) {
        self.trained_rows.iter_mut().for_each(Vec::clear);
        self.factor_ids.clear();
        if let Some(model) = &model {
            for (item, row) in &model.neighbours {
                let from = self.cf_id(item);
                let row: Vec<(u32, f32)> = row.iter().map(|(c, w)| (self.cf_id(c), *w)).collect();
                self.trained_rows[from as usize] = row;
            }
            if let Some(factors) = &model.factors {
                self.factor_ids = factors.items.iter().map(|i| self.cf_id(i)).collect();
            }
        }
        self.factor_rows = vec![NO_ROW; self.cf_names.len()];
        for (row, &id) in self.factor_ids.iter().enumerate() {
            self.factor_rows[id as usize] = row as u32;
        }
        self.trained_cf = model;
    }

    /// What online co-occurrence counts beside a trained model, relative to it (both scaled
    /// to a maximum of 1 first): [`ONLINE_SHARE_WITH_MODEL`] unless set. For measurements
    /// (the `rec_datasets` test picks the default on a validation split with it); a negative
    /// or non-finite share counts as 0.
    pub fn set_online_share(&mut self, share: f32) {
        self.online_share = if share.is_finite() {
            share.max(0.0)
        } else {
            0.0
        };
    }

    /// How many of a history's most recent items a trained model scores from:
    /// [`TRAINED_CF_WINDOW`] unless set; never fewer than the online part's
    /// [`HISTORY_WINDOW`]. For measurements (the `rec_datasets` test picks the default on a
    /// validation split with it).
    pub fn set_trained_window(&mut self, window: usize) {
        self.trained_window = window.max(HISTORY_WINDOW);
    }

    pub fn trained_cf(&self) -> Option<&TrainedCf> {
        self.trained_cf.as_deref()
    }

    /// CF scores from the history for the catalog's items (by slot), each with the history item
    /// that contributed most. Online item-kNN: for each candidate c, the sum over history items
    /// h of w(h) x co(h, c) / sqrt(users(h) x users(c)) (cosine on the user-item matrix, moved
    /// by every event). With a trained model, its scores from the [`TRAINED_CF_WINDOW`] most
    /// recent items are added: its neighbour weights summed over them (EASE, item-kNN) or its
    /// [`FOLD_IN_CANDIDATES`] best scores with them folded in (iALS). Each part is scaled to a
    /// maximum of 1, the online one then to [`ONLINE_SHARE_WITH_MODEL`].
    pub fn cf_scores(&self, history: &[HistoryEntry]) -> HashMap<u32, (f32, &str), IdHash> {
        type Scores = HashMap<u32, (f32, u32, f32), IdHash>;
        // The history's CF ids with their weights, most recent first, looked up once: the
        // first HISTORY_WINDOW entries feed the online co-occurrence (and name the reasons),
        // a trained model reads up to TRAINED_CF_WINDOW.
        let window = if self.trained_cf.is_some() {
            self.trained_window
        } else {
            HISTORY_WINDOW
        };
        let known: Vec<(u32, f32, bool)> = history
            .iter()
            .take(window)
            .enumerate()
            .filter_map(|(at, h)| {
                let id = self.cf_of(&h.item_id)?;
                Some((id, h.weight, at < HISTORY_WINDOW))
            })
            .collect();
        let recent = &known[..known.partition_point(|k| k.2)];
        let mut online = Scores::default();
        for &(h, weight, _) in recent {
            let uh = self.item_users[h as usize].max(1) as f32;
            let wh = weight.ln_1p();
            for (c, count) in self.cooccurrence[h as usize].iter() {
                let uc = self.item_users[c as usize].max(1) as f32;
                add_score(&mut online, c, wh * count / (uh * uc).sqrt(), h);
            }
        }
        let mut fitted = Scores::default();
        match self.trained_cf.as_ref().and_then(|m| m.factors.as_ref()) {
            Some(factors) => {
                let row = |&(id, _, _): &(u32, f32, bool)| {
                    let row = *self.factor_rows.get(id as usize)?;
                    (row != NO_ROW).then_some(row)
                };
                let rows: Vec<u32> = known.iter().filter_map(row).collect();
                // Reasons name one of the most recent items (crediting all 200 would cost
                // 500 x 200 dot products per `Rank`).
                let credited = recent.iter().filter_map(row).count();
                let folded = factors.model.fold(&rows, credited);
                // The history's own items score highest (the fold-in reconstructs them) and
                // would set the scale the others are divided by: they are not candidates.
                for (row, score) in folded.best(FOLD_IN_CANDIDATES, &rows) {
                    if let Some((by, share)) = folded.strongest_source(row) {
                        let (c, by) = (self.factor_ids[row as usize], self.factor_ids[by as usize]);
                        fitted.insert(c, (score, by, share));
                    }
                }
            }
            None if self.trained_cf.is_some() => {
                for &(h, _, _) in &known {
                    for &(c, w) in &self.trained_rows[h as usize] {
                        add_score(&mut fitted, c, w, h);
                    }
                }
            }
            None => {}
        }
        let max = |m: &Scores| m.values().map(|v| v.0).fold(0.0f32, f32::max);
        let (online_max, fitted_max) = (max(&online), max(&fitted));
        let mut out = Scores::default();
        let online_share = if fitted_max > 0.0 {
            self.online_share
        } else {
            1.0
        };
        for (part, scale) in [
            (online, online_share / online_max),
            (fitted, 1.0 / fitted_max),
        ] {
            if !scale.is_finite() {
                continue;
            }
            for (c, (s, by, best)) in part {
                let e = out.entry(c).or_insert((0.0, by, 0.0));
                e.0 += s * scale;
                if best * scale > e.2 {
                    e.1 = by;
                    e.2 = best * scale;
                }
            }
        }
        out.into_iter()
            .filter(|(_, (s, _, _))| *s > 0.0)
            .filter_map(|(c, (s, by, _))| {
                Some((self.cf_slot(c)?, (s, self.cf_names[by as usize].as_str())))
            })
            .collect()
    }

    /// The user's top categories, brands and attributes, weighted by their events.
    pub fn profile(&self, user: &UserKey, limit: usize) -> Profile {
        let history = self
            .histories
            .get(user)
            .map_or(&[][..], |h| h.entries.as_slice());
        let mut categories: BTreeMap<String, f32> = BTreeMap::new();
        let mut brands: BTreeMap<String, f32> = BTreeMap::new();
        let mut attributes: BTreeMap<String, f32> = BTreeMap::new();
        for h in history {
            let Some(item) = self
                .cf_slot(h.cf)
                .and_then(|slot| self.slot(slot))
                .map(|e| &e.item)
            else {
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
            recent_items: self
                .recent_history(user, limit)
                .into_iter()
                .map(|h| h.item_id)
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
fn add_score(scores: &mut HashMap<u32, (f32, u32, f32), IdHash>, c: u32, s: f32, by: u32) {
    let e = scores.entry(c).or_insert((0.0, by, f32::MIN));
    e.0 += s;
    if s > e.2 {
        e.1 = by;
        e.2 = s;
    }
}

/// The slots of two ascending lists without repeats, ascending, each once.
fn union_ascending<'a>(a: &'a [u32], b: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(&x), Some(&y)) => {
            i += usize::from(x <= y);
            j += usize::from(y <= x);
            Some(x.min(y))
        }
        (Some(&x), None) => {
            i += 1;
            Some(x)
        }
        (None, Some(&y)) => {
            j += 1;
            Some(y)
        }
        (None, None) => None,
    })
}

/// Hashes the u32 ids of the CF maps with one multiply (Fibonacci hashing): SipHash's
/// resistance to chosen keys is not needed for ids the catalog hands out itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The hasher of maps keyed by ids the catalog hands out (CF ids, slots).
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cf::{CfAlgorithm, CfOptions, IalsOptions, fit_served};
    use crate::facet::FACET_VALUES;

    fn item(id: String) -> Item {
        Item {
            id,
            price: 1.0,
            in_stock: true,
            ..Item::default()
        }
    }

    /// A facet scope's word matches and nearest items are merged, not sorted together: the
    /// merge yields every slot of either list once, ascending, whichever list is longer,
    /// empty or holds the other's slots.
    #[test]
    fn the_union_of_two_ascending_lists_is_ascending_and_each_once() {
        let cases: [(&[u32], &[u32]); 6] = [
            (&[], &[]),
            (&[1, 4, 9], &[]),
            (&[], &[2, 3]),
            (&[1, 4, 9, 12], &[0, 4, 5, 12, 40]),
            (&[3, 5, 7], &[3, 5, 7]),
            (&[10, 20], &[1, 2, 3, 30]),
        ];
        for (a, b) in cases {
            let mut want: Vec<u32> = a.iter().chain(b).copied().collect();
            want.sort_unstable();
            want.dedup();
            assert_eq!(
                union_ascending(a, b).collect::<Vec<_>>(),
                want,
                "{a:?} {b:?}"
            );
        }
    }

    /// A prefetching scan yields every slot it is given, once, in the order given, whatever
    /// the count against its window (none, fewer, exactly, more, many times more), and slots
    /// past the catalog's end pass through without being read.
    #[test]
    fn a_prefetching_scan_yields_its_slots_in_order() {
        let mut catalog = Catalog::default();
        for i in 0..5 {
            catalog
                .upsert(item(format!("p{i}")), vec![1.0, 0.0])
                .unwrap();
        }
        for n in [
            0,
            1,
            PREFETCH_AHEAD - 1,
            PREFETCH_AHEAD,
            PREFETCH_AHEAD + 1,
            100,
        ] {
            let slots: Vec<u32> = (0..n as u32).map(|i| i * 7 % 13 + i / 13 * 13).collect();
            let mut scan = catalog.prefetching(slots.iter().copied(), n % 2 == 0);
            assert_eq!(scan.size_hint().0, n, "{n} slots");
            let got: Vec<u32> = scan.by_ref().collect();
            assert_eq!(got, slots, "{n} slots");
            assert_eq!(scan.next(), None);
        }
    }

    /// A description is searched but not kept: its words still find the item after the
    /// catalog dropped it, and a replacement without them stops finding it.
    #[test]
    fn a_description_is_indexed_then_dropped() {
        let mut catalog = Catalog::default();
        let bottle = Item {
            title: "Trail Bottle".into(),
            description: "Folds flat when empty".into(),
            ..item("p1".into())
        };
        catalog.upsert(bottle.clone(), vec![1.0]).unwrap();
        assert_eq!(catalog.get("p1").unwrap().description, "");
        assert_eq!(catalog.matches("folds").docs().collect::<Vec<_>>(), [0]);
        let plain = Item {
            description: "Holds a litre".into(),
            ..bottle
        };
        catalog.upsert(plain, vec![1.0]).unwrap();
        assert_eq!(catalog.matches("folds").len(), 0);
        assert_eq!(catalog.matches("litre").docs().collect::<Vec<_>>(), [0]);
        assert_eq!(catalog.get("p1").unwrap().title, "Trail Bottle");
    }

    /// An item every shopper touches (a bestseller) co-occurs with everything: its row is cut
    /// back to the items bought with it most instead of growing with every new pair, and a
    /// shopper who holds it is still recommended those.
    #[test]
    fn a_cooccurrence_row_keeps_its_strongest_pairs_within_its_table() {
        let mut catalog = Catalog::default();
        catalog.set_cooccurrence_row(8);
        let ids = (0..300).map(|n| format!("once{n}"));
        let ids = ids.chain([
            "bestseller".into(),
            "strong0".into(),
            "strong1".into(),
            "strong2".into(),
        ]);
        for id in ids {
            catalog.upsert(item(id), vec![1.0]).unwrap();
        }
        let mut t = 0;
        let mut touch = |catalog: &mut Catalog, user: &str, item: &str| {
            t += 1;
            catalog.record(&Interaction {
                user: UserKey::from_stored(user.into()),
                item_id: item.into(),
                kind: InteractionKind::Purchase,
                value: 1.0,
                timestamp_ms: t,
            });
        };
        // Three items bought with the bestseller by five shoppers each, then 300 bought
        // with it once, interleaved.
        for n in 0..300 {
            let user = format!("u{n}");
            touch(&mut catalog, &user, "bestseller");
            touch(&mut catalog, &user, &format!("once{n}"));
            if n % 20 < 15 {
                touch(&mut catalog, &user, &format!("strong{}", n % 3));
            }
        }
        let hub = catalog.cf_of("bestseller").unwrap() as usize;
        let row = &catalog.cooccurrence[hub];
        assert!(
            row.len() <= 32 && row.capacity() <= 32,
            "{} pairs in a table for {} (kept: 8)",
            row.len(),
            row.capacity()
        );
        for strong in ["strong0", "strong1", "strong2"] {
            let id = catalog.cf_of(strong).unwrap();
            assert!(row.get(id).is_some_and(|n| n >= 60.0), "{strong} lost");
        }
        let shopper = catalog.history(&UserKey::from_stored("newcomer".into()));
        assert!(shopper.is_empty());
        touch(&mut catalog, "newcomer", "bestseller");
        let shopper = catalog.history(&UserKey::from_stored("newcomer".into()));
        let mut scored: Vec<(f32, u32, &str)> = catalog
            .cf_scores(&shopper)
            .into_iter()
            .map(|(slot, (score, by))| (score, slot, by))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut top: Vec<(&str, &str)> = scored[..3]
            .iter()
            .map(|&(_, slot, by)| {
                (
                    catalog.item_at(slot).map_or("?", |(i, _)| i.id.as_str()),
                    by,
                )
            })
            .collect();
        top.sort_unstable();
        assert_eq!(
            top,
            [
                ("strong0", "bestseller"),
                ("strong1", "bestseller"),
                ("strong2", "bestseller")
            ]
        );
    }

    /// 6,000 events: 400 item ids (the last 100 not in the catalog), popular ones more
    /// often; 40 shoppers and a guest id that passes the long-history size; views, clicks,
    /// purchases and `fourth` events of `value`.
    fn mixed_log(seed: u64, fourth: InteractionKind, value: f32) -> Vec<Interaction> {
        let mut rng = crate::rng::XorShift::new(seed);
        (0..6000)
            .map(|e| {
                let item = ((rng.unit() * rng.unit()) * 400.0) as usize;
                let user = if e % 3 == 0 {
                    "guest".to_string()
                } else {
                    format!("u{}", (rng.unit() * 40.0) as usize)
                };
                let kind = [
                    InteractionKind::View,
                    InteractionKind::Click,
                    fourth,
                    InteractionKind::Purchase,
                ][(rng.unit() * 4.0) as usize % 4];
                Interaction {
                    user: UserKey::from_stored(user),
                    item_id: format!("p{item}"),
                    kind,
                    value,
                    timestamp_ms: e as i64 / 4,
                }
            })
            .collect()
    }

    /// A start replays the stored log (`Catalog::replay`, the popularity order built once at
    /// the end): the catalog it leaves serves what recording each event as it came does:
    /// the same popular items, histories, co-occurrence (rows cut back included) and counts.
    #[test]
    fn a_replayed_log_serves_what_recording_each_event_does() {
        let events = mixed_log(5, InteractionKind::Cart, 1.0);
        let shop = || {
            let mut catalog = Catalog::default();
            catalog.set_cooccurrence_row(8);
            for i in 0..300 {
                catalog
                    .upsert(item(format!("p{i}")), vec![1.0, (i % 7) as f32])
                    .unwrap();
            }
            catalog
        };
        let mut recorded = shop();
        for event in &events {
            recorded.record(event);
        }
        let mut replayed = shop();
        replayed.replay(&events);
        assert!(
            replayed.histories[&UserKey::from_stored("guest".into())]
                .long
                .is_some()
        );
        assert_eq!(replayed.interactions(), recorded.interactions());
        assert_eq!(replayed.users(), recorded.users());
        assert_eq!(replayed.max_popularity(), recorded.max_popularity());
        assert_eq!(replayed.most_popular(400), recorded.most_popular(400));
        assert_eq!(replayed.cooccurrence_pairs(), recorded.cooccurrence_pairs());
        let mut users: Vec<&UserKey> = recorded.histories.keys().collect();
        users.sort();
        for user in users {
            let history = recorded.history(user);
            assert_eq!(replayed.history(user), history);
            let scores = |catalog: &Catalog| {
                let mut scores: Vec<(u32, f32)> = catalog
                    .cf_scores(&history)
                    .into_iter()
                    .map(|(slot, (score, _))| (slot, score))
                    .collect();
                scores.sort_by_key(|&(slot, _)| slot);
                scores
            };
            assert_eq!(scores(&replayed), scores(&recorded), "{user:?}");
        }
    }

    /// Forgetting shoppers leaves what a replay of the log without their events gives (rows
    /// not cut back): the same counts, popular items, histories, users per item and every
    /// co-occurrence pair, a long history's (the guest id's) included; others' events stay.
    #[test]
    fn forgetting_shoppers_leaves_what_a_log_without_them_gives() {
        let events = mixed_log(9, InteractionKind::Rating, 3.5);
        let shop = || {
            let mut catalog = Catalog::default();
            catalog.set_cooccurrence_row(usize::MAX);
            // Every event alike: popularity sums are exact, so equal to the replay's.
            catalog.set_popularity_half_life(None);
            for i in 0..300 {
                catalog
                    .upsert(item(format!("p{i}")), vec![1.0, (i % 7) as f32])
                    .unwrap();
            }
            catalog
        };
        let gone = [
            UserKey::from_stored("guest".into()),
            UserKey::from_stored("u3".into()),
        ];
        let (theirs, others): (Vec<Interaction>, Vec<Interaction>) =
            events.iter().cloned().partition(|e| gone.contains(&e.user));
        let mut forgot = shop();
        for event in &events {
            forgot.record(event);
        }
        assert!(forgot.histories[&gone[0]].long.is_some());
        let before = forgot.cooccurrence_pairs();
        assert_eq!(forgot.forget(&theirs), theirs.len());
        let mut replayed = shop();
        replayed.replay(&others);
        assert!(forgot.cooccurrence_pairs() < before);
        assert_eq!(forgot.interactions(), replayed.interactions());
        assert_eq!(forgot.users(), replayed.users());
        assert_eq!(forgot.max_popularity(), replayed.max_popularity());
        assert_eq!(forgot.most_popular(400), replayed.most_popular(400));
        for id in (0..400).map(|i| format!("p{i}")) {
            assert_eq!(forgot.popularity(&id), replayed.popularity(&id), "{id}");
        }
        assert!(forgot.history(&gone[0]).is_empty() && forgot.history(&gone[1]).is_empty());
        for user in replayed.histories.keys() {
            assert_eq!(forgot.history(user), replayed.history(user));
        }
        // By item id: CF ids are interned in the order items were first seen.
        let pairs = |catalog: &Catalog| {
            let mut pairs: Vec<(String, String, f32)> = Vec::new();
            for (item, row) in catalog.cooccurrence.iter().enumerate() {
                for (other, count) in row.iter() {
                    let name = |cf: u32| catalog.cf_names[cf as usize].clone();
                    pairs.push((name(item as u32), name(other), count));
                }
            }
            pairs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            pairs
        };
        assert_eq!(pairs(&forgot), pairs(&replayed));
        let users = |catalog: &Catalog| {
            let mut users: Vec<(String, u32)> = (0..catalog.item_users.len())
                .map(|cf| (catalog.cf_names[cf].clone(), catalog.item_users[cf]))
                .filter(|&(_, n)| n > 0)
                .collect();
            users.sort();
            users
        };
        assert_eq!(users(&forgot), users(&replayed));
        // Forgetting them again, or events of nobody known, changes nothing.
        assert_eq!(forgot.forget(&theirs), 0);
        assert_eq!(forgot.interactions(), replayed.interactions());
    }

    /// Popularity fades with its half-life, as of the latest event: four views two
    /// half-lives old weigh one view now; past [`RESCALE_HALF_LIVES`] the stored values move
    /// to a later reference, and a replay of the log ends with the same values bit for bit.
    /// Forgetting a shopper leaves each item's share of the most popular one's as a replay
    /// without them does.
    #[test]
    fn popularity_fades_with_its_half_life() {
        let day = 86_400_000;
        let view = |user: &str, item: &str, at: i64| Interaction {
            user: UserKey::from_stored(user.into()),
            item_id: item.into(),
            kind: InteractionKind::View,
            value: 1.0,
            timestamp_ms: at,
        };
        let shop = |half_life: Option<f64>| {
            let mut catalog = Catalog::default();
            catalog.set_popularity_half_life(half_life);
            for id in ["old", "new", "p2", "p3"] {
                catalog.upsert(item(id.into()), vec![1.0, 0.0]).unwrap();
            }
            catalog
        };
        let slot = |catalog: &Catalog, id: &str| catalog.slot_of(id).unwrap();
        let mut faded = shop(Some(7.0));
        let mut counted = shop(None);
        let mut log = Vec::new();
        for user in ["a", "b", "c", "d"] {
            log.push(view(user, "old", 0));
        }
        log.extend([view("e", "new", 14 * day), view("f", "new", 14 * day)]);
        for event in &log {
            faded.record(event);
            counted.record(event);
        }
        let now = |catalog: &Catalog, id: &str| catalog.popularity(id) * catalog.popularity_scale();
        assert!(
            (now(&faded, "old") - 1.0).abs() < 1e-6,
            "{}",
            now(&faded, "old")
        );
        assert!((now(&faded, "new") - 2.0).abs() < 1e-6);
        assert_eq!(
            faded.most_popular(2),
            vec![slot(&faded, "new"), slot(&faded, "old")]
        );
        assert_eq!(
            counted.most_popular(2),
            vec![slot(&counted, "old"), slot(&counted, "new")]
        );
        // A year of events, past the rescale point several times.
        let mut rng = crate::rng::XorShift::new(4);
        for e in 0..3000 {
            let item = ["new", "p2", "p3"][(rng.unit() * 3.0) as usize % 3];
            let at = 14 * day + e * 365 * day / 3000;
            log.push(view(&format!("u{}", e % 50), item, at));
        }
        for event in &log[6..] {
            faded.record(event);
        }
        assert!(
            faded.popularity_reference_ms > Some(200 * day),
            "never rescaled"
        );
        let mut replayed = shop(Some(7.0));
        replayed.replay(&log);
        for id in ["old", "new", "p2", "p3"] {
            assert_eq!(
                faded.popularity(id).to_bits(),
                replayed.popularity(id).to_bits()
            );
        }
        assert_eq!(faded.most_popular(4), replayed.most_popular(4));
        assert_eq!(faded.max_popularity(), replayed.max_popularity());
        assert!(
            now(&faded, "old") < 1e-6,
            "a year-old item's views are gone"
        );
        // The latest event is u49's (2999 % 50); forget u7 and compare shares.
        let gone = UserKey::from_stored("u7".into());
        let theirs: Vec<Interaction> = log.iter().filter(|e| e.user == gone).cloned().collect();
        let others: Vec<Interaction> = log.iter().filter(|e| e.user != gone).cloned().collect();
        assert!(faded.forget(&theirs) > 0);
        let mut without = shop(Some(7.0));
        without.replay(&others);
        for id in ["new", "p2", "p3"] {
            let share = |c: &Catalog| c.popularity(id) / c.max_popularity();
            let (a, b) = (share(&faded), share(&without));
            assert!((a - b).abs() < 1e-4 * b.max(1e-3), "{id}: {a} vs {b}");
        }
    }

    /// A shopper with thousands of events (a shared guest id) is recorded through the long
    /// history's index: the co-occurrence it builds is exactly what scanning and sorting the
    /// whole history at each event gives (ties in time, events out of order, items touched
    /// again and again), as is the history itself.
    #[test]
    fn a_long_history_records_as_a_short_one_would() {
        let mut catalog = Catalog::default();
        // The reference counts every pair.
        catalog.set_cooccurrence_row(usize::MAX);
        let mut rng = crate::rng::XorShift::new(11);
        let mut events = Vec::new();
        for e in 0..3000 {
            // 600 items, some touched often; times mostly rising, with ties and late events.
            let item = ((rng.unit() * rng.unit()) * 600.0) as usize;
            let t = e as i64 / 3 - if rng.unit() < 0.1 { 40 } else { 0 };
            let user = if e % 5 == 0 { "light" } else { "guest" };
            let kind = if rng.unit() < 0.3 {
                InteractionKind::Purchase
            } else {
                InteractionKind::View
            };
            events.push(Interaction {
                user: UserKey::from_stored(user.into()),
                item_id: format!("p{item}"),
                kind,
                value: 1.0,
                timestamp_ms: t,
            });
        }
        for event in &events {
            catalog.record(event);
        }
        // The reference: every history scanned and sorted by recency (stable) at each event.
        let mut histories: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        let mut expected: HashMap<(String, String), f32> = HashMap::new();
        for event in &events {
            let history = histories
                .entry(event.user.as_str().to_string())
                .or_default();
            if let Some(entry) = history.iter_mut().find(|(i, _)| *i == event.item_id) {
                entry.1 = entry.1.max(event.timestamp_ms);
                continue;
            }
            let mut recent: Vec<&(String, i64)> = history.iter().collect();
            recent.sort_by_key(|(_, t)| Reverse(*t));
            for (other, _) in recent.into_iter().take(HISTORY_WINDOW) {
                *expected
                    .entry((other.clone(), event.item_id.clone()))
                    .or_default() += 1.0;
                *expected
                    .entry((event.item_id.clone(), other.clone()))
                    .or_default() += 1.0;
            }
            history.push((event.item_id.clone(), event.timestamp_ms));
        }
        let guest = &catalog.histories[&UserKey::from_stored("guest".into())];
        assert!(guest.long.is_some() && guest.entries.len() > LONG_HISTORY);
        let mut got: HashMap<(String, String), f32> = HashMap::new();
        for (from, row) in catalog.cooccurrence.iter().enumerate() {
            for (to, count) in row.iter() {
                let pair = (
                    catalog.cf_names[from].clone(),
                    catalog.cf_names[to as usize].clone(),
                );
                got.insert(pair, count);
            }
        }
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);
        let times: Vec<(String, i64)> = guest
            .entries
            .iter()
            .map(|e| (catalog.cf_names[e.cf as usize].clone(), e.last_ms))
            .collect();
        assert_eq!(times, histories["guest"]);
        // What `Rank` reads: the most recent part, in the order of the whole history sorted.
        let key = UserKey::from_stored("guest".into());
        let mut sorted: Vec<(Reverse<i64>, &str)> = times
            .iter()
            .map(|(id, last_ms)| (Reverse(*last_ms), id.as_str()))
            .collect();
        sorted.sort();
        let sorted: Vec<&str> = sorted.iter().map(|e| e.1).collect();
        for n in [0, 1, 50, 200, sorted.len(), sorted.len() + 5] {
            let recent = catalog.recent_history(&key, n);
            let recent: Vec<&str> = recent.iter().map(|e| e.item_id.as_str()).collect();
            assert_eq!(recent, sorted[..n.min(sorted.len())], "{n} most recent");
        }
        // Purchases over the whole history, not only the recent part.
        for event in &events {
            catalog
                .upsert(item(event.item_id.clone()), vec![1.0])
                .unwrap();
        }
        let bought: HashSet<u32, IdHash> = events
            .iter()
            .filter(|e| e.user == key && e.kind == InteractionKind::Purchase)
            .filter_map(|e| catalog.slot_of(&e.item_id))
            .collect();
        assert!(bought.len() > 100, "{} bought", bought.len());
        assert_eq!(catalog.purchased_slots(&key), bought);
    }

    /// Two processes (or two replicas) holding the same items build the same graph, point
    /// for point, and so answer alike: the build follows the slots, not the id map's order,
    /// which is random per map.
    #[test]
    fn the_same_items_build_the_same_graph() {
        let build = || {
            let mut catalog = Catalog::default();
            catalog.set_ann_min_items(usize::MAX);
            let mut rng = crate::rng::XorShift::new(3);
            for i in 0..3_000 {
                let v: Vec<f32> = (0..8).map(|_| rng.uniform() as f32 - 0.5).collect();
                catalog.upsert(item(format!("i{i}")), v).unwrap();
            }
            catalog.set_ann_min_items(100);
            catalog.ann_snapshot().unwrap()
        };
        let first = build();
        assert!(first == build(), "two builds differ");
    }

    /// A feed that changes items' prices or stock but not their vectors keeps their points in
    /// the graph: nothing linked again, nothing counted stale, so no rebuild however often it
    /// comes; the new prices are served. A changed vector is linked again.
    #[test]
    fn an_unchanged_vector_keeps_its_point_in_the_graph() {
        let mut catalog = Catalog::default();
        catalog.set_ann_min_items(20);
        let unit = |i: usize| {
            let mut v: Vec<f32> = (0..4)
                .map(|j| ((i + 1) as f32 * (j + 1) as f32 * 0.37).sin())
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        };
        for i in 0..40 {
            catalog.upsert(item(format!("i{i}")), unit(i)).unwrap();
        }
        assert!(catalog.uses_ann());
        let changes = catalog.ann_changes();
        // Three whole feeds: were their points stale, the first would already rebuild.
        for round in 0..3 {
            let feed = (0..40)
                .map(|i| {
                    let priced = Item {
                        price: 10.0 * (round + 2) as f64,
                        in_stock: round % 2 == 0,
                        ..item(format!("i{i}"))
                    };
                    (priced, unit(i))
                })
                .collect();
            catalog.upsert_many(feed).unwrap();
        }
        assert_eq!(catalog.ann_changes(), changes, "the graph is untouched");
        assert_eq!(catalog.get("i3").map(|i| i.price), Some(40.0));
        assert_eq!(catalog.get("i3").map(|i| i.in_stock), Some(true));
        let first = |catalog: &Catalog, query: &[f32]| {
            let found = catalog.nearest(query, 1, None);
            catalog.item_at(found[0].0).unwrap().0.id.clone()
        };
        assert_eq!(first(&catalog, &unit(10)), "i10");

        catalog.upsert(item("i10".into()), unit(99)).unwrap();
        assert!(catalog.ann_changes() > changes, "a new vector is linked");
        assert_eq!(first(&catalog, &unit(99)), "i10");
        assert_ne!(first(&catalog, &unit(10)), "i10", "its old point is stale");
    }

    /// A new model's vectors replace every item's (another dimension too): the nearest item
    /// is then found by the new vectors, through a graph built over them; an incomplete set
    /// changes nothing.
    #[test]
    fn every_vector_is_replaced_and_the_graph_rebuilt() {
        let mut catalog = Catalog::default();
        catalog.set_ann_min_items(20);
        let unit = |d: usize, i: usize| {
            let mut v: Vec<f32> = (0..d)
                .map(|j| ((i + 1) as f32 * (j + 1) as f32 * 0.37).sin())
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            v
        };
        for i in 0..40 {
            catalog.upsert(item(format!("i{i}")), unit(4, i)).unwrap();
        }
        assert!(catalog.uses_ann());
        // In the new space item i lies where item (i + 1) % 40 lay in the old one, at 6
        // dimensions.
        let new: HashMap<String, Vec<f32>> = (0..40)
            .map(|i| (format!("i{i}"), unit(6, (i + 1) % 40)))
            .collect();
        let mut short = new.clone();
        short.remove("i3");
        assert!(catalog.replace_vectors(&short).is_err());
        assert_eq!(catalog.dimension(), Some(4), "nothing changed");
        let changes = catalog.ann_changes();
        catalog.replace_vectors(&new).unwrap();
        assert_eq!(catalog.dimension(), Some(6));
        assert!(catalog.uses_ann() && catalog.ann_changes() > changes);
        let first = |catalog: &Catalog, query: &[f32]| {
            let found = catalog.nearest(query, 1, None);
            catalog.item_at(found[0].0).unwrap().0.id.clone()
        };
        assert_eq!(first(&catalog, &unit(6, 10)), "i9");
        assert!(
            catalog.nearest(&unit(4, 10), 1, None).is_empty(),
            "old space"
        );
        assert_eq!(catalog.items().count(), 40);

        // Emptied, it takes vectors of any size again (a new model's first load).
        for i in 0..40 {
            assert!(catalog.delete(&format!("i{i}")));
        }
        catalog.upsert(item("j0".into()), unit(3, 0)).unwrap();
        catalog.upsert(item("j1".into()), unit(3, 1)).unwrap();
        assert!(catalog.upsert(item("j2".into()), unit(6, 2)).is_err());
        assert_eq!(catalog.dimension(), Some(3));
        assert_eq!(first(&catalog, &unit(3, 1)), "j1");
    }

    /// A listing by price: every page of it, cheapest or dearest first, is the matching slice
    /// of the whole list sorted by (price, id), whatever the page's bounds cut through a run
    /// of equal prices (ids out of slot order, so a tie kept by slot would show); the count
    /// is the whole list's; a filter and exclusions apply before the page.
    #[test]
    fn a_listing_by_price_pages_through_the_whole_order() {
        use crate::rng::XorShift;
        let mut rng = XorShift::new(7);
        let mut catalog = Catalog::default();
        let prices = [0.0, 5.0, 5.0, 9.5, 12.0, 12.0, 12.0, 40.0];
        for n in 0..300 {
            // Ids count down while slots count up.
            let mut it = item(format!("i{:03}", 999 - n));
            it.title = if n % 5 == 0 { "plain mug" } else { "blue mug" }.into();
            it.price = prices[(rng.unit() * prices.len() as f64) as usize];
            it.category = vec![if n % 3 == 0 { "Cups" } else { "Home" }.into()];
            // Seven brands (in two spellings) and, for one item in eleven, none.
            if n % 11 != 0 {
                it.brand = format!("{}{}", if n % 2 == 0 { "b" } else { "B" }, n % 7);
            }
            catalog
                .upsert(it.validated().unwrap(), vec![1.0, 0.0])
                .unwrap();
        }
        let mut exclude = vec![catalog.slot_of("i999").unwrap(), 7];
        exclude.sort_unstable();
        let scope = FacetScope {
            words: Some("blue mug"),
            except: &exclude,
            ..FacetScope::default()
        };
        let cups = Filters::new("cups", &[], None, None, false).unwrap();
        for (filters, passes) in [
            (
                Filters::default(),
                &(|_: &Item| true) as &dyn Fn(&Item) -> bool,
            ),
            (cups, &|it: &Item| it.category[0] == "Cups"),
        ] {
            for descending in [false, true] {
                let mut whole: Vec<(f64, String, u32)> = catalog
                    .slots()
                    .filter(|s| !exclude.contains(s))
                    .filter_map(|s| Some((s, &catalog.slot(s)?.item)))
                    .filter(|(_, it)| passes(it))
                    .map(|(s, it)| (it.price, it.id.clone(), s))
                    .collect();
                whole.sort_by(|a, b| {
                    let order = a.0.total_cmp(&b.0);
                    let order = if descending { order.reverse() } else { order };
                    order.then_with(|| a.1.cmp(&b.1))
                });
                let whole: Vec<u32> = whole.into_iter().map(|(_, _, s)| s).collect();
                assert!(whole.len() > 50, "{}", whole.len());
                // Collapsed on brand: each brand's first in that order, and every item
                // without one (its prefix grows past the first 64 for the later pages).
                let mut brands = HashSet::new();
                let firsts: Vec<u32> = whole
                    .iter()
                    .copied()
                    .filter(|&s| {
                        let brand = catalog.slot(s).unwrap().item.brand.to_lowercase();
                        brand.is_empty() || brands.insert(brand)
                    })
                    .collect();
                assert!(firsts.len() > 12 && firsts.len() < 40, "{}", firsts.len());
                let passing = whole.len();
                for (collapse, whole) in [(None, &whole), (Some(FacetField::Brand), &firsts)] {
                    for page in [
                        0..10,
                        3..17,
                        10..20,
                        15..40,
                        40..41,
                        0..1000,
                        50..60,
                        290..400,
                        10..10,
                    ] {
                        let order = if descending {
                            ListOrder::PriceDescending
                        } else {
                            ListOrder::PriceAscending
                        };
                        let (slots, listed) = catalog.listing(
                            &scope,
                            &filters,
                            order,
                            page.clone(),
                            collapse.as_ref(),
                        );
                        // How many items pass, collapsed or not.
                        assert_eq!(listed, passing, "{page:?}");
                        let end = page.end.min(whole.len());
                        let expected = whole.get(page.start.min(end)..end).unwrap_or(&[]);
                        assert_eq!(
                            slots, expected,
                            "{filters:?} {descending} {page:?} {collapse:?}"
                        );
                    }
                }
            }
        }
    }

    /// Facet counts: over the query's matches only (all items without one), case variants
    /// merged under the majority's spelling, each facet without its own filter but with the
    /// others, the 20 most common values and a count of the rest; names parse or are refused.
    #[test]
    fn facet_counts_are_over_the_matches_and_the_other_filters() {
        let mut catalog = Catalog::default();
        let rows: [(&str, &str, &str, &str); 7] = [
            ("Desk lamp", "Acme", "Lighting", "black"),
            ("Floor lamp", "ACME", "Lighting", "white"),
            ("Lamp shade", "Acme", "Decor", "Black"),
            ("Reading lamp", "Zeta", "Lighting", "black"),
            ("Kettle", "Zeta", "Kitchen", "black"),
            ("Lamp oil", "", "Kitchen", ""),
            ("Toaster", "Acme", "Kitchen", "red"),
        ];
        for (i, (title, brand, category, color)) in rows.into_iter().enumerate() {
            let mut it = item(format!("i{i}"));
            it.title = title.into();
            it.brand = brand.into();
            it.category = vec!["Home".into(), category.into()];
            if !color.is_empty() {
                it.attributes.insert("Color".into(), color.into());
            }
            catalog
                .upsert(it.validated().unwrap(), vec![1.0, 0.0])
                .unwrap();
        }
        let fields = [
            FacetField::Brand,
            FacetField::Category,
            FacetField::parse("attribute:color").unwrap(),
        ];
        let words = |words: Option<&'static str>| FacetScope {
            words,
            ..FacetScope::default()
        };
        let counts = |catalog: &Catalog, query: Option<&'static str>, filters: &Filters| {
            catalog
                .facet_counts(&words(query), filters, &fields)
                .into_iter()
                .map(|f| f.values)
                .collect::<Vec<_>>()
        };
        let v = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(s, n)| ((*s).to_string(), *n)).collect()
        };
        assert_eq!(
            counts(&catalog, Some("lamps"), &Filters::default()),
            [
                v(&[("Acme", 3), ("Zeta", 1)]),
                v(&[("Home", 5), ("Lighting", 3), ("Decor", 1), ("Kitchen", 1)]),
                v(&[("black", 3), ("white", 1)]),
            ]
        );
        // One brand picked: the brand facet still counts every brand, the others only Zeta's.
        let zeta = Filters::new("", &["zeta".to_string()], None, None, false).unwrap();
        assert_eq!(
            counts(&catalog, None, &zeta),
            [
                v(&[("Acme", 4), ("Zeta", 2)]),
                v(&[("Home", 2), ("Kitchen", 1), ("Lighting", 1)]),
                v(&[("black", 2)]),
            ]
        );
        // Past 20 values: the 20 most common, and how many more.
        for i in 0..30 {
            let mut it = item(format!("b{i}"));
            it.title = "lamp".into();
            it.brand = format!("Brand {i:02}");
            it.price = if i == 7 { 9.0 } else { 2.0 };
            catalog
                .upsert(it.validated().unwrap(), vec![1.0, 0.0])
                .unwrap();
        }
        let brands =
            &catalog.facet_counts(&words(Some("lamp")), &Filters::default(), &fields[..1])[0];
        assert_eq!(brands.values.len(), FACET_VALUES);
        assert_eq!(brands.values[0], ("Acme".to_string(), 3));
        assert_eq!(brands.other_values, 32 - FACET_VALUES as u64);
        // One match among 300 more items: counted item by item, not through the index's
        // sets (the two ways answer alike).
        for i in 0..300 {
            let mut it = item(format!("w{i}"));
            it.title = "widget".into();
            it.brand = "Filler".into();
            it.category = vec!["Home".into()];
            catalog
                .upsert(it.validated().unwrap(), vec![1.0, 0.0])
                .unwrap();
        }
        assert_eq!(
            counts(&catalog, Some("kettle"), &Filters::default()),
            [
                v(&[("Zeta", 1)]),
                v(&[("Home", 1), ("Kitchen", 1)]),
                v(&[("black", 1)]),
            ]
        );
        assert_eq!(
            counts(&catalog, Some("widget"), &zeta)[0],
            v(&[("Filler", 300)])
        );
        assert_eq!(
            FacetField::parse(" attribute: Size ").unwrap().name(),
            "attribute:size"
        );
        // The price facet: the range of what the other filters pass, its own bound ignored.
        let cheap = Filters::new("", &[], None, Some(1.5), false).unwrap();
        let price = &catalog.facet_counts(&words(Some("lamp")), &cheap, &[FacetField::Price])[0];
        assert_eq!(price.price_range, Some((1.0, 9.0)));
        assert!(price.values.is_empty());
        let none = &catalog.facet_counts(&words(Some("nothing")), &cheap, &[FacetField::Price])[0];
        assert_eq!(none.price_range, None);
        // Price buckets, the price filter lifted too: 5 lamps at 1, 29 at 2, one at 9; a
        // bucket holds its lower edge; every bucket listed in price order, the empty one too.
        let buckets = FacetField::parse("price: 2, 9,20").unwrap();
        assert_eq!(buckets.name(), "price:2,9,20");
        let counted = &catalog.facet_counts(&words(Some("lamp")), &cheap, &[buckets])[0];
        assert_eq!(
            counted.values,
            v(&[("*-2", 5), ("2-9", 29), ("9-20", 1), ("20-*", 0)])
        );
        assert_eq!(counted.price_range, Some((1.0, 9.0)));
        // A re-rank request's candidates are what is counted, whatever the query matches
        // (unknown and repeated ids ignored).
        let among: Vec<String> = ["i4", "i6", "i6", "gone"].map(String::from).to_vec();
        let scope = FacetScope {
            among: Some(&among),
            nearest: Some((&[1.0, 0.0], 3)),
            ..words(Some("lamp"))
        };
        let given = catalog.facet_counts(&scope, &Filters::default(), &fields);
        assert_eq!(given[0].values, v(&[("Acme", 1), ("Zeta", 1)]));
        assert_eq!(given[1].values, v(&[("Home", 2), ("Kitchen", 2)]));
        for bad in ["", "size", "attribute:", "attribute: ", "Brand"] {
            assert!(FacetField::parse(bad).is_err(), "{bad:?}");
        }
        let huge = "x".repeat(1_000_000);
        let error = FacetField::parse(&huge).unwrap_err();
        assert!(error.len() < 200 && error.contains("xxx\"... ("), "{error}");
        let error = FacetField::parse(&format!("attribute:{huge}")).unwrap_err();
        assert_eq!(
            error,
            "attribute name of 1000000 bytes in a facet (at most 256)"
        );
    }

    /// Facet counts over a catalog large enough that its common values are bitmaps in the
    /// facet index (the department, two colours, the stock) while its brands stay hash sets:
    /// every count equals one made item by item, before and after a third of the items are
    /// deleted and some replaced, and after all but a tenth are (thinned-out sets turn back
    /// into hash sets).
    #[test]
    fn facet_counts_agree_with_counting_item_by_item_at_any_density() {
        use crate::rng::XorShift;
        let mut rng = XorShift::new(34);
        let mut pick = |n: usize| (rng.unit() * n as f64) as usize;
        const BRANDS: [&str; 12] = [
            "Acme", "Zeta", "Nova", "Orbit", "Pixel", "Quill", "Rune", "Sable", "Tarn", "Umber",
            "Vale", "",
        ];
        const COLOURS: [&str; 4] = ["black", "white", "red", "teal"];
        const SUBS: [&str; 3] = ["Lighting", "Decor", "Kitchen"];
        let mut make = |i: usize| {
            let mut it = item(format!("i{i}"));
            it.title = ["desk lamp", "widget", "lamp shade"][pick(3)].into();
            it.brand = BRANDS[pick(12)].into();
            it.category = vec!["Home".into(), SUBS[pick(3)].into()];
            // Black and white on most items, red and teal on few.
            let colour = [0, 0, 0, 1, 1, 1, 2, 3][pick(8)];
            it.attributes.insert("Color".into(), COLOURS[colour].into());
            it.in_stock = pick(5) > 0;
            it
        };
        let mut catalog = Catalog::default();
        let mut items: HashMap<String, Item> = HashMap::new();
        for i in 0..3000 {
            let it = make(i).validated().unwrap();
            items.insert(it.id.clone(), it.clone());
            catalog.upsert(it, vec![1.0, 0.0]).unwrap();
        }
        let fields = [
            FacetField::Brand,
            FacetField::Category,
            FacetField::parse("attribute:color").unwrap(),
        ];
        let check = |catalog: &Catalog, items: &HashMap<String, Item>| {
            let filter_sets = [
                Filters::default(),
                Filters::new("lighting", &[], None, None, false).unwrap(),
                Filters::new(
                    "",
                    &["zeta".to_string(), "acme".to_string()],
                    None,
                    None,
                    true,
                )
                .unwrap(),
                Filters::default()
                    .with_attributes([("color".to_string(), vec!["black".to_string()])])
                    .unwrap(),
            ];
            for query in [None, Some("lamp"), Some("widget")] {
                for filters in &filter_sets {
                    let scope = FacetScope {
                        words: query,
                        ..FacetScope::default()
                    };
                    let counted = catalog.facet_counts(&scope, filters, &fields);
                    for (field, got) in fields.iter().zip(&counted) {
                        let others = field.others(filters);
                        let mut want: HashMap<String, u64> = HashMap::new();
                        for it in items.values() {
                            let matched =
                                query.is_none_or(|q| it.title.contains(q.trim_end_matches('s')));
                            if matched && others.accepts(it) {
                                for value in field.values(it) {
                                    *want.entry(value.to_string()).or_default() += 1;
                                }
                            }
                        }
                        let mut want: Vec<(String, u64)> = want.into_iter().collect();
                        want.sort();
                        let mut got_values = got.values.clone();
                        got_values.sort();
                        assert_eq!(got_values, want, "{field:?} {query:?} {filters:?}");
                        assert_eq!(got.other_values, 0);
                    }
                }
            }
        };
        check(&catalog, &items);
        // A third deleted and a sixth replaced (new colours, brands and stock).
        for i in 0..3000 {
            let id = format!("i{i}");
            if i % 3 == 0 {
                assert!(catalog.delete(&id));
                items.remove(&id);
            } else if i % 6 == 1 {
                let it = make(i).validated().unwrap();
                items.insert(id, it.clone());
                catalog.upsert(it, vec![1.0, 0.0]).unwrap();
            }
        }
        check(&catalog, &items);
        // All but every tenth deleted: the colours' bitmaps turn back into hash sets.
        for i in (0..3000).filter(|i| i % 10 != 0) {
            let id = format!("i{i}");
            if items.remove(&id).is_some() {
                assert!(catalog.delete(&id));
            }
        }
        assert!(items.len() < 300, "{} left", items.len());
        check(&catalog, &items);
    }

    /// A search's facets count its vector's nearest items beside its words' matches, each
    /// facet's nearest among what its other filters pass, alike by scan and by the graph.
    #[test]
    fn facet_counts_take_the_vector_s_nearest_items_too() {
        let mut catalog = Catalog::default();
        // (title, brand, category, angle of the item's vector from the query's, in degrees:
        // the floor lamp's cosine 0.82 is over 3/4 of the candle's 1, the desk lamp's 0 not)
        let rows: [(&str, &str, &str, f32); 6] = [
            ("Desk lamp", "Acme", "Lighting", 90.0),
            ("Floor lamp", "Zeta", "Lighting", 35.0),
            ("Candle", "Acme", "Decor", 0.0),
            ("Lantern", "Zeta", "Outdoor", 10.0),
            ("Torch", "Bolt", "Outdoor", 20.0),
            ("Kettle", "Zeta", "Kitchen", 180.0),
        ];
        for (i, (title, brand, category, angle)) in rows.into_iter().enumerate() {
            let mut it = item(format!("i{i}"));
            it.title = title.into();
            it.brand = brand.into();
            it.category = vec![category.into()];
            let (sin, cos) = angle.to_radians().sin_cos();
            catalog
                .upsert(it.validated().unwrap(), vec![cos, sin])
                .unwrap();
        }
        let fields = [FacetField::Brand, FacetField::Category];
        let v = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(s, n)| ((*s).to_string(), *n)).collect()
        };
        let query = [1.0, 0.0];
        let counts = |catalog: &Catalog, words: Option<&str>, k: usize, filters: &Filters| {
            let scope = FacetScope {
                words,
                nearest: (k > 0).then_some((&query[..], k)),
                among: None,
                except: &[],
            };
            catalog
                .facet_counts(&scope, filters, &fields)
                .into_iter()
                .map(|f| f.values)
                .collect::<Vec<_>>()
        };
        let zeta = Filters::new("", &["zeta".to_string()], None, None, false).unwrap();
        for graph in [false, true] {
            if graph {
                catalog.set_ann_min_items(1);
                assert!(catalog.uses_ann());
            }
            // No word matches: without the vector nothing is counted, with it its two nearest.
            assert_eq!(
                counts(&catalog, Some("glowing"), 0, &Filters::default()),
                [v(&[]), v(&[])]
            );
            assert_eq!(
                counts(&catalog, Some("glowing"), 2, &Filters::default()),
                [
                    v(&[("Acme", 1), ("Zeta", 1)]),
                    v(&[("Decor", 1), ("Outdoor", 1)])
                ],
                "graph {graph}"
            );
            // Only items at least 3/4 as similar as the nearest: the desk lamp (cosine 0)
            // is not counted among the five nearest.
            assert_eq!(
                counts(&catalog, Some("glowing"), 5, &Filters::default())[0],
                v(&[("Zeta", 2), ("Acme", 1), ("Bolt", 1)]),
                "graph {graph}"
            );
            // One brand picked: the brand facet counts the nearest items of every brand, the
            // category facet Zeta's nearest (the floor lamp, beyond the torch, too; the
            // kettle, opposite the query, not).
            assert_eq!(
                counts(&catalog, Some("glowing"), 3, &zeta),
                [
                    v(&[("Acme", 1), ("Bolt", 1), ("Zeta", 1)]),
                    v(&[("Lighting", 1), ("Outdoor", 1)])
                ],
                "graph {graph}"
            );
            // Words and vector: the union.
            assert_eq!(
                counts(&catalog, Some("lamp"), 2, &Filters::default())[0],
                v(&[("Acme", 2), ("Zeta", 2)]),
                "graph {graph}"
            );
        }
    }

    /// A batch goes into the graph whole (each item found again by its own vector, a replaced
    /// one by its new vector only), and a batch with a vector of the wrong size is refused
    /// whole, before anything of it is taken.
    #[test]
    fn batches_are_linked_into_the_graph_or_refused_whole() {
        let mut rng = crate::rng::XorShift::new(4);
        let mut vector = || {
            let v: Vec<f32> = (0..16).map(|_| rng.uniform() as f32).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let mut catalog = Catalog::default();
        catalog.set_ann_min_items(100);
        let first: Vec<(Item, Vec<f32>)> = (0..1500)
            .map(|i| (item(format!("a{i}")), vector()))
            .collect();
        catalog.upsert_many(first.clone()).unwrap();
        assert!(catalog.uses_ann());
        let mut again: Vec<(Item, Vec<f32>)> = (1500..3000)
            .map(|i| (item(format!("a{i}")), vector()))
            .collect();
        again.push((item("a7".into()), vector()));
        catalog.upsert_many(again.clone()).unwrap();
        assert_eq!(catalog.len(), 3000);
        let found = |catalog: &Catalog, v: &[f32]| {
            let slot = catalog.ann_search(v, 1, 64, None).unwrap()[0];
            catalog.item_at(slot).unwrap().0.id.clone()
        };
        for (item, v) in first
            .iter()
            .skip(1)
            .step_by(50)
            .chain(again.iter().step_by(50))
        {
            assert_eq!(found(&catalog, v), item.id);
        }
        assert_eq!(found(&catalog, &again[1500].1), "a7");
        assert_ne!(
            found(&catalog, &first[7].1),
            "a7",
            "the old vector is stale"
        );

        let changes = catalog.ann_changes();
        let bad = vec![
            (item("b1".into()), vector()),
            (item("b2".into()), vec![0.5; 8]),
        ];
        let err = catalog.upsert_many(bad).unwrap_err().to_string();
        assert!(
            err.contains("\"b2\": vector has 8 dimensions, the catalog 16"),
            "{err}"
        );
        assert_eq!(catalog.len(), 3000);
        assert!(catalog.slot_of("b1").is_none());
        assert_eq!(catalog.ann_changes(), changes);
    }

    /// Two taste groups of six items (p0-p5, p6-p11); each of 40 shoppers takes four of
    /// their group's. A shopper with p0 and p1 gets the rest of group one from the fold-in,
    /// each credited to p0 or p1, and never their own items back from the model.
    #[test]
    fn a_factor_model_scores_the_shoppers_group_and_credits_their_items() {
        let mut catalog = Catalog::default();
        for i in 0..12 {
            catalog
                .upsert(item(format!("p{i}")), vec![1.0, 0.0])
                .unwrap();
        }
        let mut t = 0;
        let mut event = |catalog: &mut Catalog, user: String, i: u32| {
            t += 1;
            catalog.record(&Interaction {
                user: UserKey::from_stored(user),
                item_id: format!("p{i}"),
                kind: InteractionKind::Purchase,
                value: 1.0,
                timestamp_ms: t,
            });
        };
        for u in 0..40u32 {
            let base = if u % 2 == 0 { 0 } else { 6 };
            for k in 0..4 {
                event(&mut catalog, format!("{u:08x}"), base + (u / 2 + k) % 6);
            }
        }
        let options = CfOptions {
            algorithm: CfAlgorithm::Ials,
            ials: IalsOptions {
                dim: 4,
                ..IalsOptions::default()
            },
            ..CfOptions::default()
        };
        let model = fit_served(&catalog.user_item_sets(), &options, "v".into()).unwrap();
        assert_eq!(model.items(), 12);
        event(&mut catalog, "shopper".into(), 0);
        event(&mut catalog, "shopper".into(), 1);
        let history = catalog.history(&UserKey::from_stored("shopper".into()));
        let owned = |catalog: &Catalog| -> HashMap<u32, (f32, String)> {
            catalog
                .cf_scores(&history)
                .into_iter()
                .map(|(slot, (s, by))| (slot, (s, by.to_string())))
                .collect()
        };
        let online = owned(&catalog);
        catalog.set_trained_cf(Some(Arc::new(model)));
        let scores = owned(&catalog);
        assert_ne!(online, scores, "the model moves the CF scores");
        let name = |slot: &u32| {
            catalog.slots[*slot as usize]
                .as_ref()
                .unwrap()
                .item
                .id
                .clone()
        };
        let mut ranked: Vec<(String, f32, &str)> = scores
            .iter()
            .map(|(slot, (s, by))| (name(slot), *s, by.as_str()))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<&str> = ranked[..4].iter().map(|r| r.0.as_str()).collect();
        for want in ["p2", "p3", "p4", "p5"] {
            assert!(
                top.contains(&want),
                "{want} missing from the top 4: {ranked:?}"
            );
        }
        assert!(
            ranked[..4].iter().all(|r| r.2 == "p0" || r.2 == "p1"),
            "credited to the shopper's items: {ranked:?}"
        );
        // Back to online co-occurrence only.
        catalog.set_trained_cf(None);
        assert_eq!(owned(&catalog), online);
    }

    /// Events may name items the catalog does not hold yet (or any more): their CF scores
    /// reach `Rank` from the moment the item is loaded, at its slot, and stop when it is
    /// deleted, even when its slot goes to another item.
    #[test]
    fn cf_scores_follow_items_into_and_out_of_the_catalog() {
        let mut catalog = Catalog::default();
        catalog.upsert(item("p0".into()), vec![1.0, 0.0]).unwrap();
        for (t, (user, id)) in [
            ("a", "p0"),
            ("a", "p1"),
            ("b", "p0"),
            ("b", "p1"),
            ("s", "p0"),
        ]
        .into_iter()
        .enumerate()
        {
            catalog.record(&Interaction {
                user: UserKey::from_stored(user.into()),
                item_id: id.into(),
                kind: InteractionKind::Purchase,
                value: 1.0,
                timestamp_ms: t as i64,
            });
        }
        let history = catalog.history(&UserKey::from_stored("s".into()));
        let scored = |catalog: &Catalog| -> Vec<(u32, String)> {
            let mut v: Vec<(u32, String)> = catalog
                .cf_scores(&history)
                .into_iter()
                .map(|(slot, (_, by))| (slot, by.to_string()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(scored(&catalog), [], "p1 is not in the catalog yet");
        catalog.upsert(item("p1".into()), vec![0.0, 1.0]).unwrap();
        let p1 = catalog.slot_of("p1").unwrap();
        assert_eq!(scored(&catalog), [(p1, "p0".to_string())]);
        assert!(catalog.delete("p1"));
        catalog.upsert(item("p2".into()), vec![0.0, 1.0]).unwrap();
        assert_eq!(catalog.slot_of("p2"), Some(p1), "the freed slot is reused");
        assert_eq!(scored(&catalog), [], "the deleted p1 is not scored as p2");
        catalog.upsert(item("p1".into()), vec![0.0, 1.0]).unwrap();
        let again = catalog.slot_of("p1").unwrap();
        assert_ne!(again, p1);
        assert_eq!(scored(&catalog), [(again, "p0".to_string())]);
    }

    /// The popular candidates of a `Rank` come from an order kept up to date by events,
    /// loads and deletes: after each change it equals every catalog item's popularity sorted,
    /// and items without events or outside the catalog are not in it.
    #[test]
    fn most_popular_follows_events_loads_and_deletes() {
        let mut catalog = Catalog::default();
        let mut t = 0;
        let mut event = |catalog: &mut Catalog, id: &str, kind| {
            t += 1;
            catalog.record(&Interaction {
                user: UserKey::from_stored(format!("u{}", t % 7)),
                item_id: id.into(),
                kind,
                value: 1.0,
                timestamp_ms: t,
            });
        };
        let sorted = |catalog: &Catalog| -> Vec<(String, f32)> {
            let mut all: Vec<(String, f32)> = (0..12)
                .map(|i| format!("p{i}"))
                .filter(|id| catalog.get(id).is_some())
                .map(|id| {
                    let p = catalog.popularity(&id);
                    (id, p)
                })
                .filter(|(_, p)| *p > 0.0)
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all
        };
        let head = |catalog: &Catalog, k: usize| -> Vec<(String, f32)> {
            let mut got: Vec<(String, f32)> = catalog
                .most_popular(k)
                .into_iter()
                .map(|slot| {
                    let (item, _) = catalog.item_at(slot).unwrap();
                    (item.id.clone(), catalog.popularity_at(slot))
                })
                .collect();
            // Ties come by slot; compare as the reference orders them.
            got.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            got
        };
        for i in 0..10 {
            catalog
                .upsert(item(format!("p{i}")), vec![1.0, 0.0])
                .unwrap();
        }
        assert!(
            catalog.most_popular(5).is_empty(),
            "no events, no popular items"
        );
        for (i, kind) in [
            (3, InteractionKind::Purchase),
            (1, InteractionKind::View),
            (3, InteractionKind::View),
            (7, InteractionKind::Cart),
            (11, InteractionKind::Purchase),
            (1, InteractionKind::Click),
            (5, InteractionKind::Cart),
        ] {
            event(&mut catalog, &format!("p{i}"), kind);
        }
        assert_eq!(head(&catalog, 100), sorted(&catalog));
        assert_eq!(
            head(&catalog, 2),
            [("p3".to_string(), 6.0), ("p1".to_string(), 3.0)],
            "p11 (5) has events but is not in the catalog"
        );
        assert_eq!(catalog.max_popularity(), 6.0);
        assert!(catalog.delete("p3"));
        assert_eq!(head(&catalog, 100), sorted(&catalog));
        assert_eq!(
            head(&catalog, 1)[0].0,
            "p1",
            "p3 left with its slot; p1 and p7 tie at 3"
        );
        catalog.upsert(item("p11".into()), vec![1.0, 0.0]).unwrap();
        catalog.upsert(item("p3".into()), vec![1.0, 0.0]).unwrap();
        event(&mut catalog, "p7", InteractionKind::View);
        // Replacing an item keeps its place.
        catalog.upsert(item("p7".into()), vec![0.0, 1.0]).unwrap();
        assert_eq!(head(&catalog, 100), sorted(&catalog));
        assert_eq!(
            head(&catalog, 3),
            [
                ("p3".to_string(), 6.0),
                ("p11".to_string(), 5.0),
                ("p7".to_string(), 4.0)
            ],
            "loaded items come in with the events they already had"
        );
    }
}
