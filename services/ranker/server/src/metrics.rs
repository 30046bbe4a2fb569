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
//! | `souk_encoder_model_differs` | gauge | 1 while the encoder serves another model than the catalog's vectors come from (set in `lib.rs::Ready::compare_model`; `soukctl reembed` clears it) |
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
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
    /// Searches that matched no item's words, by query.
    pub unmatched: Mutex<QueryCounts<String>>,
    /// Searches the spelling check read as another query, by (typed, read).
    pub corrected: Mutex<QueryCounts<(String, String)>>,
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
        self.total += 1;
        if let Some(counted) = self.counts.get_mut(&key) {
            let mut entry = (counted.count, key);
            self.by_count.remove(&entry);
            counted.count += 1;
            entry.0 = counted.count;
            self.by_count.insert(entry);
            return;
        }
        let mut counted = Counted {
            count: 1,
            over_by: 0,
        };
        if self.counts.len() >= UNMATCHED_DISTINCT
            && let Some((least, evicted)) = self.by_count.pop_first()
        {
            self.counts.remove(&evicted);
            counted = Counted {
                count: least + 1,
                over_by: least,
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
    /// series before the first fallback or outage.
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
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
            unmatched: Mutex::new(QueryCounts::default()),
            corrected: Mutex::new(QueryCounts::default()),
        })
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
            if let (false, Some(query), Ok(mut unmatched)) =
                (matched, query.and_then(normal), self.unmatched.lock())
            {
                unmatched.record(query);
            }
        }
        if ranking.spelling_corrected
            && let (Some(typed), Some(read), Ok(mut corrected)) = (
                query.and_then(normal),
                ranking.corrected_query.as_deref().and_then(normal),
                self.corrected.lock(),
            )
        {
            corrected.record((typed, read));
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
