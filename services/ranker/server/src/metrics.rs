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
use std::collections::HashMap;
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
/// memory only, never stored (a query may hold anything a shopper typed), and bounded: past
/// [`UNMATCHED_DISTINCT`] distinct keys, new ones are only counted in `others`.
#[derive(Debug)]
pub struct QueryCounts<K> {
    counts: HashMap<K, u64>,
    others: u64,
}

impl<K> Default for QueryCounts<K> {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
            others: 0,
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
        let full = self.counts.len() >= UNMATCHED_DISTINCT;
        match self.counts.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => self.others += 1,
            None => {
                self.counts.insert(key, 1);
            }
        }
    }

    /// The `n` commonest, most searched first (ties in key order).
    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut all: Vec<(K, u64)> = self.counts.iter().map(|(q, &c)| (q.clone(), c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Searches counted past the distinct-key bound.
    pub fn others(&self) -> u64 {
        self.others
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
        assert_eq!(
            u.top(2),
            [("blendtec".to_string(), 3), ("kobo ereader".to_string(), 2)]
        );
        for i in 0..UNMATCHED_DISTINCT + 5 {
            u.record(format!("q{i}"));
        }
        assert_eq!(u.counts.len(), UNMATCHED_DISTINCT);
        assert_eq!(u.others(), 8, "3 + 5 past the bound");
        u.record("blendtec".to_string());
        assert_eq!(u.top(1)[0].1, 4, "known queries still count");
    }
}
