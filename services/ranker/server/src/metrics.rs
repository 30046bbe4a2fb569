//! The ranker's own Prometheus metrics, next to the per-RPC ones every souk server has:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `souk_rank_first_pass_total{pass}` | counter | where each `Rank`'s first pass looked: `given` (candidate_ids), `members` (a narrow filter's items), `pool` (the HNSW candidate pool), `scan` (every item: a catalog under the graph's threshold), `pool_then_scan` (a filter left the pool short of the page tier, so every item: a costly fallback), `pool_then_matches` (a common word matched more items than the pool takes, so the graph also walked among its matches), `pool_then_passing_matches` (the same, but few enough of the matches pass the request's filter to score them all) |
//! | `souk_rank_missing_signals_total{signal}` | counter | `Rank` answers without the `dense` (encoder) or `kg` (graph) signal: the dependency was down or late |
//! | `souk_rank_candidates` | histogram | candidates scored per `Rank` |
//! | `souk_rank_searches_total{words}` | counter | `Rank` requests with a query, by whether any item holds any of its words (`matched`) or none (`none`: ranked by its vector alone; `Stats.unmatched_queries` lists the commonest; `Stats.corrected_queries` those the spelling check read otherwise) |
//! | `souk_rank_shop_rules_total{effect}` | counter | `Rank` answers the shop's rules changed, by effect on the results returned: `pinned` (an item placed by a pin rule), `promoted` / `lowered` (an item's score moved up / down by a boost), `redirected` (the search's rule sends the shopper to another page), `banner` (a rule's banner returned); an answer may count under several (is a promotion live, and how often does it show?) |
//! | `souk_catalog_items`, `souk_catalog_users` | gauges (read at scrape) | items in the catalog, shoppers with events |
//! | `souk_store_write_failed{reason}` | gauge | 1 once the store failed a write on its disk (`disk_full`, `io_error`): writes are refused until the service restarts (`souk_shared::storage::WriteLatch`, registered in `lib.rs`) |
//! | `souk_encoder_model_differs` | gauge | 1 while the encoder serves another model than the catalog's vectors come from (set in `lib.rs::Ready::compare_model`; `soukctl reembed` clears it) |
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use souk_proto::ranker::v1 as pb;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::rank::{FirstPass, Ranking, Signal};

/// Counters and the histogram every `Rank` reports into.
pub struct RankMetrics {
    first_pass: IntCounterVec,
    missing: IntCounterVec,
    candidates: Histogram,
    searches: IntCounterVec,
    events: IntCounterVec,
    shop_rules: IntCounterVec,
    /// The searches `Stats` lists: this process's, and on a primary its replicas'.
    pub queries: Mutex<Searches>,
    /// On a replica: the same, counted since they were last sent to the primary
    /// (`RecordSearches`); `None` on a primary.
    pub unsent: Option<Mutex<Searches>>,
}

/// Searches that matched no item's words, by query, and searches the spelling check read as
/// another query, by (typed, read).
#[derive(Debug, Default)]
pub struct Searches {
    pub unmatched: QueryCounts<String>,
    pub corrected: QueryCounts<(String, String)>,
}

impl Searches {
    pub fn is_empty(&self) -> bool {
        self.unmatched.total() == 0 && self.corrected.total() == 0
    }

    /// Counts one search: unmatched, read as another query, or both.
    fn record(&mut self, unmatched: Option<&String>, corrected: Option<&(String, String)>) {
        if let Some(query) = unmatched {
            self.unmatched.record(query.clone());
        }
        if let Some(reading) = corrected {
            self.corrected.record(reading.clone());
        }
    }

    /// Adds searches counted elsewhere (a replica's, or a message kept for the next try).
    pub fn add(&mut self, message: &pb::RecordSearchesRequest) {
        let counted = |count, over_by| Counted { count, over_by };
        for q in &message.unmatched {
            self.unmatched
                .add(q.query.clone(), counted(q.count, q.over_by));
        }
        for q in &message.corrected {
            let key = (q.query.clone(), q.read_as.clone());
            self.corrected.add(key, counted(q.count, q.over_by));
        }
    }

    /// The `n` commonest of each list, most searched first, as `Stats` and `RecordSearches`
    /// carry them.
    pub fn top(&self, n: usize) -> pb::RecordSearchesRequest {
        pb::RecordSearchesRequest {
            unmatched: self
                .unmatched
                .top(n)
                .into_iter()
                .map(|(query, c)| pb::QueryCount {
                    query,
                    count: c.count,
                    over_by: c.over_by,
                })
                .collect(),
            corrected: self
                .corrected
                .top(n)
                .into_iter()
                .map(|((query, read_as), c)| pb::QueryReading {
                    query,
                    read_as,
                    count: c.count,
                    over_by: c.over_by,
                })
                .collect(),
        }
    }
}

/// Searches counted by what was typed (lower-cased, spaces collapsed: see [`normal`]) since
/// the ranker started: those whose words no item holds (what shoppers look for that the shop
/// lacks or names otherwise), and those the spelling check read as another query (keyed by
/// both, "blendtec" read as "blended": a reading to confirm, or to fix with a synonym). In
/// memory only, never stored (a query may hold anything a shopper typed), and bounded to
/// [`UNMATCHED_DISTINCT`] keys by the Space-Saving algorithm (Metwally, Agrawal and El Abbadi,
/// 2005): a new key past the bound takes the place of the least counted one, starting from
/// its count, which it may overstate by at most that much (`over_by`). So a query that
/// becomes common late (a trend, a product the shop stopped selling) is listed as it grows,
/// where a table of the first keys seen stops listing new queries once full; and any query
/// searched more often than 1 in [`UNMATCHED_DISTINCT`] of the counted searches is held.
#[derive(Debug)]
pub struct QueryCounts<K> {
    /// Each key's count and the most it may overstate it.
    counts: HashMap<K, Counted>,
    /// The keys by count, least first, for the eviction.
    by_count: BTreeSet<(u64, K)>,
    /// Searches counted, held or not.
    total: u64,
}

/// A key's count in [`QueryCounts`]: at least its true count, at most `over_by` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub count: u64,
    pub over_by: u64,
}

impl<K> Default for QueryCounts<K> {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
            by_count: BTreeSet::new(),
            total: 0,
        }
    }
}

/// Distinct queries kept per list.
pub const UNMATCHED_DISTINCT: usize = 1_000;

/// A query as a shopper would read it: lower-cased, spaces collapsed; `None` when blank.
pub fn normal(query: &str) -> Option<String> {
    let key = query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    (!key.is_empty()).then_some(key)
}

impl<K: std::hash::Hash + Eq + Ord + Clone> QueryCounts<K> {
    pub fn record(&mut self, key: K) {
        self.add(
            key,
            Counted {
                count: 1,
                over_by: 0,
            },
        );
    }

    /// Adds `counted` searches of `key` (another process's count of it, which may overstate
    /// it by `counted.over_by`): the weighted form of [`QueryCounts::record`], so a key
    /// past the bound starts from the evicted least count, and may overstate by that more.
    pub fn add(&mut self, key: K, counted: Counted) {
        self.total += counted.count;
        if let Some(held) = self.counts.get_mut(&key) {
            let mut entry = (held.count, key);
            self.by_count.remove(&entry);
            held.count += counted.count;
            held.over_by += counted.over_by;
            entry.0 = held.count;
            self.by_count.insert(entry);
            return;
        }
        let mut counted = counted;
        if self.counts.len() >= UNMATCHED_DISTINCT
            && let Some((least, evicted)) = self.by_count.pop_first()
        {
            self.counts.remove(&evicted);
            counted = Counted {
                count: least + counted.count,
                over_by: least + counted.over_by,
            };
        }
        self.counts.insert(key.clone(), counted);
        self.by_count.insert((counted.count, key));
    }

    /// The `n` commonest, most searched first (ties in key order).
    pub fn top(&self, n: usize) -> Vec<(K, Counted)> {
        if n == 0 {
            return Vec::new();
        }
        // Every key counted at least the n-th highest count, so that ties are cut in key
        // order, not the set's.
        let floor = self.by_count.iter().rev().nth(n - 1).map_or(0, |(c, _)| *c);
        let mut top: Vec<(K, Counted)> = self
            .by_count
            .iter()
            .rev()
            .take_while(|(count, _)| *count >= floor)
            .filter_map(|(_, key)| Some((key.clone(), *self.counts.get(key)?)))
            .collect();
        top.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Searches counted, the keys held or not.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl RankMetrics {
    /// Creates and registers them; every label value starts at 0, so a dashboard sees the
    /// series before the first fallback or outage. A `replica` also keeps the searches it has
    /// not sent to its primary yet ([`RankMetrics::unsent`]).
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry, replica: bool) -> Result<Self, prometheus::Error> {
        let first_pass = IntCounterVec::new(
            Opts::new(
                "rank_first_pass_total",
                "Rank requests by where the first pass looked (pool_then_scan: a filter left \
                 the candidate pool short, every item was scored).",
            ),
            &["pass"],
        )?;
        let missing = IntCounterVec::new(
            Opts::new(
                "rank_missing_signals_total",
                "Rank answers without a signal because its service was down or late.",
            ),
            &["signal"],
        )?;
        let candidates = Histogram::with_opts(
            HistogramOpts::new("rank_candidates", "Candidates scored per Rank.").buckets(vec![
                10.0,
                100.0,
                500.0,
                1_000.0,
                2_500.0,
                5_000.0,
                10_000.0,
                25_000.0,
                100_000.0,
                1_000_000.0,
            ]),
        )?;
        for pass in FirstPass::ALL {
            first_pass.with_label_values(&[pass.name()]);
        }
        for signal in [Signal::Dense, Signal::Kg] {
            missing.with_label_values(&[signal.name()]);
        }
        let searches = IntCounterVec::new(
            Opts::new(
                "rank_searches_total",
                "Rank requests with a query, by whether any item holds any of its words \
                 (none: ranked by its vector alone).",
            ),
            &["words"],
        )?;
        for words in ["matched", "none"] {
            searches.with_label_values(&[words]);
        }
        let events = IntCounterVec::new(
            Opts::new(
                "events_total",
                "Events RecordInteractions took on this primary, by outcome: recorded, \
                 duplicate (identical to a stored one: a file loaded again, a retry) or \
                 forgotten (of a shopper forgotten after them).",
            ),
            &["outcome"],
        )?;
        for outcome in ["recorded", "duplicate", "forgotten"] {
            events.with_label_values(&[outcome]);
        }
        let shop_rules = IntCounterVec::new(
            Opts::new(
                "rank_shop_rules_total",
                "Rank answers the shop's rules changed: an item pinned, an item's score \
                 raised (promoted) or lowered by a boost, the search redirected, a banner shown.",
            ),
            &["effect"],
        )?;
        for effect in ["pinned", "promoted", "lowered", "redirected", "banner"] {
            shop_rules.with_label_values(&[effect]);
        }
        registry.register(Box::new(shop_rules.clone()))?;
        registry.register(Box::new(first_pass.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(missing.clone()))?;
        registry.register(Box::new(candidates.clone()))?;
        registry.register(Box::new(searches.clone()))?;
        Ok(Self {
            first_pass,
            missing,
            candidates,
            searches,
            events,
            shop_rules,
            queries: Mutex::new(Searches::default()),
            unsent: replica.then(|| Mutex::new(Searches::default())),
        })
    }

    /// A replica's searches counted since the last call, as a `RecordSearches` message (none
    /// when there were none, or on a primary).
    pub fn take_unsent(&self) -> Option<pb::RecordSearchesRequest> {
        let mut unsent = self.unsent.as_ref()?.lock().ok()?;
        if unsent.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut *unsent).top(UNMATCHED_DISTINCT))
    }

    /// Adds searches counted elsewhere (a replica's, or a message that could not be sent
    /// and is kept for the next try) to `unsent` when given, else to the listed ones.
    pub fn add(&self, searches: &pb::RecordSearchesRequest, to_unsent: bool) {
        let target = if to_unsent {
            self.unsent.as_ref()
        } else {
            Some(&self.queries)
        };
        if let Some(Ok(mut target)) = target.map(|t| t.lock()) {
            target.add(searches);
        }
    }

    /// Counts what became of a batch of events (`souk_events_total`).
    pub fn events(&self, recorded: u64, duplicates: u64, forgotten: u64) {
        for (outcome, n) in [
            ("recorded", recorded),
            ("duplicate", duplicates),
            ("forgotten", forgotten),
        ] {
            self.events.with_label_values(&[outcome]).inc_by(n);
        }
    }

    /// Counts a ranking of `query` (the request's text, as typed).
    pub fn observe(&self, ranking: &Ranking, query: Option<&str>) {
        if let Some(matched) = ranking.words_matched {
            let words = if matched { "matched" } else { "none" };
            self.searches.with_label_values(&[words]).inc();
        }
        let unmatched = (ranking.words_matched == Some(false))
            .then(|| query.and_then(normal))
            .flatten();
        let corrected = ranking
            .spelling_corrected
            .then(|| {
                query
                    .and_then(normal)
                    .zip(ranking.corrected_query.as_deref().and_then(normal))
            })
            .flatten();
        if unmatched.is_some() || corrected.is_some() {
            for searches in std::iter::once(&self.queries).chain(&self.unsent) {
                if let Ok(mut searches) = searches.lock() {
                    searches.record(unmatched.as_ref(), corrected.as_ref());
                }
            }
        }
        self.first_pass
            .with_label_values(&[ranking.first_pass.name()])
            .inc();
        for signal in &ranking.missing_signals {
            self.missing.with_label_values(&[signal.name()]).inc();
        }
        self.candidates.observe(ranking.candidates as f64);
        for (effect, shown) in [
            ("pinned", ranking.items.iter().any(|i| i.pinned)),
            ("promoted", ranking.items.iter().any(|i| i.boost > 0.0)),
            ("lowered", ranking.items.iter().any(|i| i.boost < 0.0)),
            ("redirected", ranking.redirect.is_some()),
            ("banner", !ranking.banners.is_empty()),
        ] {
            if shown {
                self.shop_rules.with_label_values(&[effect]).inc();
            }
        }
    }
}

/// `souk_catalog_items` and `souk_catalog_users`, read from the catalog at scrape time.
pub struct CatalogSize {
    catalog: Arc<RwLock<Catalog>>,
    items: IntGauge,
    users: IntGauge,
    descs: Vec<Desc>,
}

impl CatalogSize {
    /// # Errors
    /// When the gauges' options are invalid (they are constants).
    pub fn new(catalog: Arc<RwLock<Catalog>>) -> Result<Self, prometheus::Error> {
        let items = IntGauge::new("catalog_items", "Items in the catalog.")?;
        let users = IntGauge::new("catalog_users", "Shoppers with recorded events.")?;
        let descs = items
            .desc()
            .into_iter()
            .chain(users.desc())
            .cloned()
            .collect();
        Ok(Self {
            catalog,
            items,
            users,
            descs,
        })
    }
}

impl Collector for CatalogSize {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A poisoned lock (a writer panicked) leaves the last values.
        if let Ok(catalog) = self.catalog.read() {
            self.items.set(catalog.len() as i64);
            self.users.set(catalog.users() as i64);
        }
        let mut families = self.items.collect();
        families.extend(self.users.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counted by query as a shopper would read it, commonest first; bounded.
    #[test]
    fn counts_from_elsewhere_add_up_and_overstate_past_the_bound() {
        let counted = |count, over_by| Counted { count, over_by };
        let mut u = QueryCounts::default();
        u.record("tent".to_string());
        u.add("tent".to_string(), counted(4, 1));
        u.add("stove".to_string(), counted(2, 0));
        assert_eq!(
            u.top(2),
            [
                ("tent".to_string(), counted(5, 1)),
                ("stove".to_string(), counted(2, 0))
            ]
        );
        assert_eq!(u.total(), 7);
        // Full: a new key takes the least one's place and starts from its count.
        for i in 0..UNMATCHED_DISTINCT - 2 {
            u.add(format!("q{i}"), counted(3, 0));
        }
        u.add("late".to_string(), counted(10, 2));
        assert_eq!(u.counts.len(), UNMATCHED_DISTINCT);
        assert_eq!(
            u.top(1)[0],
            ("late".to_string(), counted(12, 4)),
            "stove (2) evicted"
        );
        assert!(u.top(UNMATCHED_DISTINCT).iter().all(|(q, _)| q != "stove"));
    }

    #[test]
    fn a_replica_hands_over_what_it_counted_once() {
        let registry = Registry::new();
        let metrics = RankMetrics::register(&registry, true).unwrap();
        assert!(metrics.take_unsent().is_none());
        let unsent = metrics.unsent.as_ref().unwrap();
        unsent
            .lock()
            .unwrap()
            .unmatched
            .record("kobo ereader".into());
        unsent
            .lock()
            .unwrap()
            .corrected
            .record(("cofee".into(), "coffee".into()));
        let sent = metrics.take_unsent().unwrap();
        assert_eq!(sent.unmatched.len(), 1);
        assert_eq!(
            (sent.corrected[0].query.as_str(), sent.corrected[0].count),
            ("cofee", 1)
        );
        assert!(metrics.take_unsent().is_none(), "taken once");
        // Not delivered: kept for the next message; delivered to a primary: its lists.
        metrics.add(&sent, true);
        assert_eq!(metrics.take_unsent().unwrap(), sent);
        let primary = RankMetrics::register(&Registry::new(), false).unwrap();
        primary.add(&sent, false);
        primary.add(&sent, false);
        let listed = primary.queries.lock().unwrap().unmatched.top(1);
        assert_eq!(
            listed,
            [(
                "kobo ereader".to_string(),
                Counted {
                    count: 2,
                    over_by: 0
                }
            )]
        );
        assert!(primary.take_unsent().is_none());
    }

    #[test]
    fn unmatched_queries_are_counted_commonest_first_and_bounded() {
        let mut u = QueryCounts::default();
        for q in [
            "Blendtec",
            "blendtec ",
            "kobo  ereader",
            "blendtec",
            "kobo ereader",
            "zz",
            "  ",
        ] {
            if let Some(q) = normal(q) {
                u.record(q);
            }
        }
        let exact = |count| Counted { count, over_by: 0 };
        assert_eq!(
            u.top(2),
            [
                ("blendtec".to_string(), exact(3)),
                ("kobo ereader".to_string(), exact(2))
            ]
        );
        assert_eq!(u.top(5).len(), 3);
        assert_eq!(u.top(0), []);
        // Ties in key order, whichever the table met first.
        for q in ["b", "a", "c"] {
            u.record(q.to_string());
        }
        let firsts: Vec<String> = u.top(4).into_iter().map(|(q, _)| q).collect();
        assert_eq!(firsts, ["blendtec", "kobo ereader", "a", "b"]);

        // Past the bound: the table stays bounded, the common ones stay listed.
        for i in 0..UNMATCHED_DISTINCT + 5 {
            u.record(format!("q{i}"));
        }
        assert_eq!(u.counts.len(), UNMATCHED_DISTINCT);
        assert_eq!(u.by_count.len(), UNMATCHED_DISTINCT);
        assert_eq!(u.total(), 6 + 3 + UNMATCHED_DISTINCT as u64 + 5);
        u.record("blendtec".to_string());
        assert_eq!(u.top(1)[0], ("blendtec".to_string(), exact(4)));

        // A query that becomes common only once the table is full (a trend) is listed as it
        // grows, its count bounded on both sides; a table of the first keys seen never listed it.
        for i in 0..50 {
            u.record("stanley cup".to_string());
            u.record(format!("late{i}"));
        }
        let (query, counted) = &u.top(1)[0];
        assert_eq!(query, "stanley cup");
        assert!(
            counted.count >= 50 && counted.count - counted.over_by <= 50,
            "{counted:?}"
        );
        assert_eq!(u.top(2)[1], ("blendtec".to_string(), exact(4)));
    }

    /// Against exact counts on a long-tailed stream whose common queries change halfway:
    /// every count held is an upper bound, less `over_by` a lower one, and every query
    /// searched more than 1 in `UNMATCHED_DISTINCT` times is held (Space-Saving's guarantees).
    #[test]
    fn counts_stay_within_their_bounds_on_a_long_tailed_stream() {
        let mut rng = souk_ranker_core::rng::XorShift::new(7);
        let mut u = QueryCounts::default();
        let mut truth: HashMap<String, u64> = HashMap::new();
        let searches = 200_000u64;
        for i in 0..searches {
            // Zipf-like: term r drawn with weight ~1/r over 50k terms; the second half's
            // commonest terms are other terms.
            let r = (50_000f64.powf(rng.unit())) as u64;
            let term = if i < searches / 2 { r } else { 50_000 - r };
            let key = format!("t{term}");
            *truth.entry(key.clone()).or_default() += 1;
            u.record(key);
        }
        assert_eq!(u.total(), searches);
        let held = u.top(UNMATCHED_DISTINCT);
        assert_eq!(held.len(), UNMATCHED_DISTINCT);
        for (key, counted) in &held {
            let t = truth[key];
            assert!(
                counted.count >= t && counted.count - counted.over_by <= t,
                "{key}: true {t}, {counted:?}"
            );
        }
        let threshold = searches / UNMATCHED_DISTINCT as u64;
        let frequent: Vec<&String> = truth
            .iter()
            .filter(|&(_, &t)| t > threshold)
            .map(|(k, _)| k)
            .collect();
        assert!(frequent.len() > 20, "{}", frequent.len());
        for key in frequent {
            assert!(held.iter().any(|(k, _)| k == key), "{key} not held");
        }
    }
}
