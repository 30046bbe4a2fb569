//! `Rank`, end to end: candidates, features, fusion, the knowledge-graph signal, filters,
//! diversity and explanations. Generic over where query vectors and graph paths come from, so
//! the service plugs in gRPC clients and tests plug in fakes.
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};

use crate::bm25::Matches;
use crate::catalog::{Catalog, FacetScope, HistoryEntry, IdHash, ListOrder};
use crate::facet::{FacetCounts, FacetField, Filter, MAX_FACETS};
use crate::item::{Filters, InteractionKind, Item, entity_item, item_entity};
use crate::pins::Applied;
use crate::query::{PricePhrase, price_phrase};
use crate::{RankError, UserKey};

/// Most results one request may ask for.
pub const MAX_K: usize = 1_000;
/// The longest query a search (or `Suggest`) may send: a search box's text. A query's cost
/// grows with its words (spelling, synonyms, and the words each result holds, for its
/// explanation): 700 KB of misspelt words held a core for 9 s (BENCHMARKS.md "Session 56").
pub const MAX_QUERY_BYTES: usize = 1024;

/// A search's text checked against [`MAX_QUERY_BYTES`], for `Rank` and `Suggest` alike.
///
/// # Errors
/// `InvalidInput` for a query (of `Rank` or `Suggest`) over [`MAX_QUERY_BYTES`], with its size.
pub fn check_query_length(query: &str) -> Result<(), RankError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(RankError::InvalidInput(format!(
            "query is {} bytes; the limit is {MAX_QUERY_BYTES}",
            query.len()
        )));
    }
    Ok(())
}

/// Candidates sent to the graph for paths after the first scoring pass.
const KG_CANDIDATES: usize = 300;
/// History items the graph signal starts from.
const KG_SOURCES: usize = 20;
/// Candidates compared with the user's history in embedding space (the best of the shortlist:
/// a RotatE-500 vector is 4 KB, so the lookup stays ~0.4 MB per `Rank`).
const KG_EMBEDDED_CANDIDATES: usize = 100;
/// History items compared with them (the most recent).
const KG_EMBEDDED_SOURCES: usize = 5;
/// An embedding neighbour counts at most this much of the graph feature: a stated relation
/// (same brand, accessory: 0.7-1.0) stays stronger than a learned resemblance.
const KG_EMBEDDING_WEIGHT: f32 = 0.6;
/// Recent history items whose directly related items (accessories, complements) join the
/// candidates, and how many of each: the pool of a large catalog holds nearest, lexical,
/// CF and popular items, and without these an accessory of the phone just bought, which the
/// graph signal ranks first, was never scored.
const KG_RELATED_SOURCES: usize = 10;
const KG_RELATED_PER_ITEM: usize = 50;

/// Where query vectors come from (the encoder service, or a fake in tests).
pub trait EmbeddingSource: Send + Sync {
    /// One L2-normalised vector for `text`.
    fn embed_query(&self, text: &str)
    -> impl Future<Output = Result<Vec<f32>, SourceError>> + Send;
}

/// Where relation paths come from (the knowledge-graph service, or a fake in tests).
pub trait GraphSource: Send + Sync {
    /// Shortest paths from any of `sources` to each of `targets`, at most `max_hops` edges.
    fn paths(
        &self,
        sources: Vec<String>,
        targets: Vec<String>,
        max_hops: u32,
    ) -> impl Future<Output = Result<Vec<GraphPath>, SourceError>> + Send;

    /// Trained entity embeddings (TransE/DistMult/RotatE) of the entities that have one. A
    /// graph without trained embeddings answers an empty map, not an error.
    fn entity_vectors(
        &self,
        _entities: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, Vec<f32>>, SourceError>> + Send {
        async { Ok(HashMap::new()) }
    }

    /// Item entities joined to any of `items` (item entities) by one edge, either way
    /// (accessory of, goes with), at most `per_item` from each: candidates for the shopper's
    /// graph signal that no other signal proposes. Unknown items have none.
    fn related_items(
        &self,
        _items: Vec<String>,
        _per_item: usize,
    ) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send {
        async { Ok(Vec::new()) }
    }
}

impl<T: EmbeddingSource> EmbeddingSource for Arc<T> {
    fn embed_query(
        &self,
        text: &str,
    ) -> impl Future<Output = Result<Vec<f32>, SourceError>> + Send {
        (**self).embed_query(text)
    }
}

impl<T: GraphSource> GraphSource for Arc<T> {
    fn paths(
        &self,
        sources: Vec<String>,
        targets: Vec<String>,
        max_hops: u32,
    ) -> impl Future<Output = Result<Vec<GraphPath>, SourceError>> + Send {
        (**self).paths(sources, targets, max_hops)
    }

    fn entity_vectors(
        &self,
        entities: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, Vec<f32>>, SourceError>> + Send {
        (**self).entity_vectors(entities)
    }

    fn related_items(
        &self,
        items: Vec<String>,
        per_item: usize,
    ) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send {
        (**self).related_items(items, per_item)
    }
}

/// A graph that relates nothing: for a ranker run without the graph service (benchmarks,
/// evaluations on data with no graph over its ids). Not "down": nothing is reported missing.
pub struct NoGraph;

impl GraphSource for NoGraph {
    async fn paths(
        &self,
        _sources: Vec<String>,
        _targets: Vec<String>,
        _max_hops: u32,
    ) -> Result<Vec<GraphPath>, SourceError> {
        Ok(Vec::new())
    }
}

/// A dependency that could not answer (down, late, or refused).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// One edge of a path as walked: `forward` when from head to tail.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphStep {
    pub relation: String,
    pub forward: bool,
    pub entity: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphPath {
    pub source: String,
    pub target: String,
    pub steps: Vec<GraphStep>,
}

/// The signals a score is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Dense,
    Bm25,
    Cf,
    Kg,
    Popularity,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::Dense,
        Signal::Bm25,
        Signal::Cf,
        Signal::Kg,
        Signal::Popularity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Dense => "dense",
            Signal::Bm25 => "bm25",
            Signal::Cf => "cf",
            Signal::Kg => "kg",
            Signal::Popularity => "popularity",
        }
    }
}

/// Linear fusion: one weight set for requests with a query, one for recommendations, one for
/// an item's page (a request that names an item and has no query).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FusionModel {
    pub version: String,
    pub with_query: [f32; 5],
    pub without_query: [f32; 5],
    /// Models stored before item pages had no such set: they read the default.
    #[serde(default = "default_with_item")]
    pub with_item: [f32; 5],
}

/// The default weights of an item's page: items bought with it, related to it in the graph
/// and like it, with popularity weighed most. Measured (`soukctl eval page`, ML-100k, each
/// test user's latest item as the page, online co-occurrence): Recall@20 0.1914 against
/// popularity alone 0.1697 and the first hand-set [0.40, 0, 0.30, 0.20, 0.10] 0.1357; heavier
/// popularity scores higher there ([0.0, 0, 0.3, 0, 0.7]: 0.2082) but fills a page with the
/// shop's bestsellers whatever the item (the demo's boots page showed a phone case), and
/// movie titles say too little for the dense weight to be measured there.
pub fn default_with_item() -> [f32; 5] {
    [0.15, 0.0, 0.30, 0.15, 0.40]
}

impl Default for FusionModel {
    /// Hand-set weights (order: dense, bm25, cf, kg, popularity). With a query, relevance to it
    /// dominates and personal signals break ties; without one, the user's history does.
    fn default() -> Self {
        Self {
            version: "default-v1".into(),
            with_query: [0.55, 0.20, 0.10, 0.10, 0.05],
            without_query: [0.0, 0.0, 0.45, 0.35, 0.20],
            with_item: default_with_item(),
        }
    }
}

impl FusionModel {
    /// # Errors
    /// `InvalidInput` naming the problem: a version that is not 1..64 characters of
    /// `[A-Za-z0-9._-]`, a weight not finite or outside -10..10, a weight set with no positive
    /// weight (it could not rank anything by relevance).
    pub fn validate(&self) -> Result<(), RankError> {
        let bad = |m: String| Err(RankError::InvalidInput(m));
        if self.version.is_empty()
            || self.version.len() > 64
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(format!(
                "version must be 1..64 characters of [A-Za-z0-9._-], got {:?}",
                self.version
            ));
        }
        for (set, weights) in [
            ("with_query", &self.with_query),
            ("without_query", &self.without_query),
            ("with_item", &self.with_item),
        ] {
            validate_weights(set, weights)?;
        }
        Ok(())
    }
}

/// # Errors
/// `InvalidInput` naming the weight (`{set}.{signal}`) that is not finite or outside
/// -10..10, or saying the set has no positive weight (it could not rank anything by
/// relevance).
pub fn validate_weights(set: &str, weights: &[f32; 5]) -> Result<(), RankError> {
    for (signal, w) in Signal::ALL.iter().zip(weights) {
        if !w.is_finite() || w.abs() > 10.0 {
            return Err(RankError::InvalidInput(format!(
                "{set}.{} must be a number in -10..10, got {w}",
                signal.name()
            )));
        }
    }
    if !weights.iter().any(|w| *w > 0.0) {
        return Err(RankError::InvalidInput(format!(
            "{set} has no positive weight"
        )));
    }
    Ok(())
}

/// How a request's results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Best first, by the fused score.
    #[default]
    Relevance,
    /// The items the search matches (what its facets count: its word matches and its nearest
    /// items by vector, or every item a browse's filters pass), cheapest first.
    PriceAscending,
    /// The same items, dearest first.
    PriceDescending,
    /// The same items, most popular first ("best sellers": the popularity signal).
    Popularity,
}

impl SortOrder {
    /// How a listing orders the items (`None`: by relevance, a ranking).
    pub fn listing(self) -> Option<ListOrder> {
        match self {
            SortOrder::Relevance => None,
            SortOrder::PriceAscending => Some(ListOrder::PriceAscending),
            SortOrder::PriceDescending => Some(ListOrder::PriceDescending),
            SortOrder::Popularity => Some(ListOrder::Popularity),
        }
    }
}

/// The `model_version` of a ranking scored by the request's own weights.
pub const REQUEST_WEIGHTS: &str = "request";

/// A validated `Rank` request.
#[derive(Debug, Clone, Default)]
pub struct RankQuery {
    pub user: Option<UserKey>,
    pub query: Option<String>,
    /// The item whose page is shown: items like it and items bought or related with it are
    /// ranked (it leads the shopper's history; without a query its vector stands in for the
    /// query's), and it is left out of the results.
    pub item: Option<String>,
    pub k: usize,
    /// Results skipped before the k returned (a later page).
    pub offset: usize,
    pub filters: Filters,
    pub exclude: HashSet<String>,
    pub candidate_ids: Vec<String>,
    pub explain: bool,
    /// Every signal in `contributions`, zero-weighted and zero-valued ones too.
    pub all_signals: bool,
    /// 0..=1.
    pub diversity: f32,
    pub include_purchased: bool,
    /// Rank the query as typed: no spelling correction (and no completion).
    pub verbatim: bool,
    /// The query's last word may be half typed (search as you type): unless the query ends
    /// in a space or punctuation, it is completed to the term it most likely begins.
    pub prefix: bool,
    /// Counts to show beside the results (see [`Catalog::facet_counts`]; over `candidate_ids`
    /// when given), each field once.
    pub facets: Vec<FacetField>,
    /// This request's fusion weights instead of the model's set for its kind (an A/B arm, or
    /// one shelf of a page: dense alone for "similar items").
    pub weights: Option<[f32; 5]>,
    /// Relevance, or the matched items by price (no scores: `score` is 0).
    pub sort: SortOrder,
    /// Ids left out of the results and of the facet counts: `Ranker::rank` sets them from
    /// the shop's pin rules for the search (see [`crate::pins`]), beside the caller's
    /// `exclude`.
    pub hidden: Vec<String>,
    /// The time the shop's scheduled rules are read at, ms since the Unix epoch (`None`:
    /// now, by the wall clock). Set, the ranking is a preview: its rules are not counted
    /// ([`crate::pins::Pins::applied_counts`]).
    pub now_ms: Option<i64>,
    /// At most one result per value of this field (brand, or an attribute such as a
    /// product's style code: its variants in one place): the first the ranking places, by
    /// relevance or by price; an item without a value stands alone. See [`collapse`].
    pub collapse: Option<FacetField>,
}

impl RankQuery {
    /// How many results are ranked: the skipped ones and the k returned.
    pub fn depth(&self) -> usize {
        self.offset.saturating_add(self.k)
    }

    /// # Errors
    /// `InvalidInput` for a query over [`MAX_QUERY_BYTES`], k outside 1..=1000, offset + k
    /// over 1000 or diversity outside 0..=1.
    pub fn validate(&self) -> Result<(), RankError> {
        if let Some(query) = &self.query {
            check_query_length(query)?;
        }
        if self.k == 0 || self.k > MAX_K {
            return Err(RankError::InvalidInput(format!(
                "k must be 1..={MAX_K}, got {}",
                self.k
            )));
        }
        if self.depth() > MAX_K {
            return Err(RankError::InvalidInput(format!(
                "offset + k must be at most {MAX_K}, got {} + {}",
                self.offset, self.k
            )));
        }
        if !(0.0..=1.0).contains(&self.diversity) {
            return Err(RankError::InvalidInput(format!(
                "diversity must be between 0 and 1, got {}",
                self.diversity
            )));
        }
        if let Some(weights) = &self.weights {
            validate_weights("weights", weights)?;
        }
        if self.facets.len() > MAX_FACETS {
            return Err(RankError::InvalidInput(format!(
                "at most {MAX_FACETS} facets, got {}",
                self.facets.len()
            )));
        }
        for (i, field) in self.facets.iter().enumerate() {
            if self.facets[..i].contains(field) {
                return Err(RankError::InvalidInput(format!(
                    "facets[{i}]: {} is asked for twice",
                    field.name()
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub signal: Signal,
    pub value: f32,
    pub contribution: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RankedItem {
    pub id: String,
    pub score: f32,
    pub title: String,
    pub brand: String,
    pub category: Vec<String>,
    pub price: f64,
    pub contributions: Vec<Contribution>,
    pub reasons: Vec<String>,
    /// Placed here by the shop's pin rule for the query or the category page, not by its
    /// score.
    pub pinned: bool,
    /// What the shop's boosts for the query or the page added to `score` (negative:
    /// lowered); 0 when none applies.
    pub boost: f32,
    /// In a collapsed ranking, how many items of the catalog share its value (it included;
    /// "in 4 colours", "3 more from Acme"), whatever the request's filters; 0 otherwise.
    pub group_size: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    pub items: Vec<RankedItem>,
    pub missing_signals: Vec<Signal>,
    pub candidates: usize,
    pub model_version: String,
    /// Where the first pass looked (for metrics: a fallback scan is worth an alert).
    pub first_pass: FirstPass,
    /// The query as ranked when spelling correction changed it ("showing results for").
    pub corrected_query: Option<String>,
    /// The request's facets, in its order.
    pub facets: Vec<FacetCounts>,
    /// A price phrase read from the query ("under 300"): the ranking kept to its bounds and
    /// ranked the query's other words.
    pub price_from_query: Option<PricePhrase>,
    /// With a query: whether any item holds any of its words (as ranked, corrected); a
    /// search that matched none was ranked by its vector and the other signals alone, and
    /// is worth a merchandiser's look ("blendtec" in a shop without the brand).
    pub words_matched: Option<bool>,
    /// Whether the spelling check changed the query (not the shop's synonyms alone, nor the
    /// completion of a half-typed word): a reading a merchandiser may want to confirm or fix
    /// with a synonym ("blendtec" read as "blended").
    pub spelling_corrected: bool,
    /// What the query's words were widened to (see [`crate::bm25::Bm25::widened_to`]): the
    /// shop's equivalent phrases as it wrote them ("backpack", "knapsack" for "rucksack"),
    /// then the words as the texts write them together or apart ("macbook" for "mac book").
    pub widened_to: Vec<String>,
    /// Where the shop's rule for the search sends the shopper instead of these results
    /// ([`crate::pins::PinRule::redirect`]); they are ranked all the same.
    pub redirect: Option<String>,
    /// The banners of the shop's rules that applied ([`crate::pins::PinRule::banner`]).
    pub banners: Vec<String>,
}

/// Which items a `Rank`'s first pass scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FirstPass {
    /// The request's `candidate_ids` (re-rank mode).
    Given,
    /// The items a narrow filter may pass (its smallest side, or what its sides share).
    Members,
    /// The candidate pool: the HNSW graph's nearest items, BM25 hits, CF and popular items.
    Pool,
    /// Every item (a catalog below the HNSW threshold).
    #[default]
    Scan,
    /// The candidate pool, then every item: fewer of the pool passed than the page tier holds
    /// (a filter that few items pass, or many exclusions).
    PoolThenScan,
    /// The candidate pool, then the graph's nearest items among the query's matches: a common
    /// word matched more items than the pool takes, and one it left out could have reached
    /// the page tier.
    PoolThenMatches,
    /// The candidate pool, then every one of the query's matches that its filter passes: a
    /// common word matched more items than the pool takes, one it left out could have
    /// reached the page tier, and few enough of them pass to score them all (exactly, and
    /// cheaper than a graph walk kept to them).
    PoolThenPassingMatches,
}

impl FirstPass {
    pub const ALL: [FirstPass; 7] = [
        FirstPass::Given,
        FirstPass::Members,
        FirstPass::Pool,
        FirstPass::Scan,
        FirstPass::PoolThenScan,
        FirstPass::PoolThenMatches,
        FirstPass::PoolThenPassingMatches,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FirstPass::Given => "given",
            FirstPass::Members => "members",
            FirstPass::Pool => "pool",
            FirstPass::Scan => "scan",
            FirstPass::PoolThenScan => "pool_then_scan",
            FirstPass::PoolThenMatches => "pool_then_matches",
            FirstPass::PoolThenPassingMatches => "pool_then_passing_matches",
        }
    }
}

/// Per-candidate working state.
#[derive(Debug, Clone)]
struct Candidate {
    slot: u32,
    id: String,
    features: [f32; 5],
    cf_by: Option<String>,
    kg_path: Option<GraphPath>,
    /// The history entity this candidate is closest to in embedding space, when that (not a
    /// path) set the graph feature.
    kg_similar: Option<String>,
    score: f32,
    /// Placed by the shop's pin rule for the query (see [`crate::pins`]).
    pinned: bool,
    /// What the shop's rule adds to the score (its boosts the item passes), in `score`.
    boost: f32,
}

/// The ranker's logic over a shared catalog and two sources.
pub struct Ranker<E, G> {
    catalog: Arc<RwLock<Catalog>>,
    encoder: E,
    graph: G,
    model: RwLock<FusionModel>,
}

fn poisoned() -> RankError {
    RankError::Internal("catalog lock poisoned".into())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    souk_lanes::dot(a, b)
}

/// The dense scan's kernel (dot product; cosine for the catalog's unit vectors) and the CF
/// fold-in's: the AVX2 build of [`souk_lanes::dot`] where the CPU has it (8 floats
/// per instruction instead of SSE2's 4; the scan over a 10k-item catalog is most of a `Rank`).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // std caches the CPUID answer: these are atomic loads.
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { dot_avx2(a, b) };
        }
    }
    souk_lanes::dot(a, b)
}

/// `each(i, row_i . v)` for every row of the row-major `rows` (rows of `v.len()` numbers), in
/// order: the CF fold-in's score pass over every item vector. The CPU check runs once per
/// scan rather than once per row, and the AVX2 build inlines `each`.
pub(crate) fn scan(rows: &[f32], v: &[f32], mut each: impl FnMut(usize, f32)) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn scan_avx2(rows: &[f32], v: &[f32], each: &mut impl FnMut(usize, f32)) {
            scan_with(rows, v, each);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { scan_avx2(rows, v, &mut each) };
        }
    }
    scan_with(rows, v, &mut each);
}

/// The dot product of a query with one row of f16 numbers (as bits), the catalog's vectors;
/// 0 when their lengths differ.
pub(crate) fn dot_f16(q: &[f32], row: &[u16]) -> f32 {
    if q.len() != row.len() {
        return 0.0;
    }
    let mut s = 0.0;
    scan_f16(row, q, |_, d| s = d);
    s
}

/// [`scan`] over rows of f16 numbers (as bits): the CF fold-in's pass over a model's item
/// vectors kept in half precision. AVX2 with F16C converts 8 at a time where the CPU has it
/// (every x86-64 CPU since 2013); elsewhere each number is widened on its own.
pub(crate) fn scan_f16(rows: &[u16], v: &[f32], mut each: impl FnMut(usize, f32)) {
    if v.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { scan_f16_avx2(rows, v, &mut each) };
        }
    }
    scan_f16_portable(rows, v, &mut each);
}

fn scan_f16_portable(rows: &[u16], v: &[f32], each: &mut impl FnMut(usize, f32)) {
    for (i, row) in rows.chunks_exact(v.len()).enumerate() {
        let s = row
            .iter()
            .zip(v)
            .map(|(&h, &x)| half::f16::from_bits(h).to_f32() * x)
            .sum();
        each(i, s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn scan_f16_avx2(rows: &[u16], v: &[f32], each: &mut impl FnMut(usize, f32)) {
    use std::arch::x86_64::{
        __m128i, __m256, _mm_loadu_si128, _mm256_add_ps, _mm256_cvtph_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let d = v.len();
    let body = d - d % 8;
    let wide = d - d % 32;
    // The products of 8 numbers from `j`: row j..j + 8 widened, times v j..j + 8, added to acc.
    // SAFETY (of each call): j + 8 <= body <= d, and `row` and `v` both hold d numbers, so
    // both unaligned 8-lane loads stay inside them.
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn step(row: &[u16], v: &[f32], j: usize, acc: __m256) -> __m256 {
        unsafe {
            let h = _mm_loadu_si128(row.as_ptr().add(j).cast::<__m128i>());
            let x = _mm256_loadu_ps(v.as_ptr().add(j));
            _mm256_fmadd_ps(_mm256_cvtph_ps(h), x, acc)
        }
    }
    for (i, row) in rows.chunks_exact(d).enumerate() {
        // Four sums so that four FMAs are in flight instead of each waiting on the last
        // (one chain of 48 for 384 numbers was bound by the FMA's latency, not its rate).
        let mut acc = [_mm256_setzero_ps(); 4];
        for j in (0..wide).step_by(32) {
            // SAFETY: j + 32 <= wide <= body, so every step's j + 8 <= body (see `step`).
            #[allow(unsafe_code)]
            unsafe {
                acc[0] = step(row, v, j, acc[0]);
                acc[1] = step(row, v, j + 8, acc[1]);
                acc[2] = step(row, v, j + 16, acc[2]);
                acc[3] = step(row, v, j + 24, acc[3]);
            }
        }
        for j in (wide..body).step_by(8) {
            // SAFETY: j + 8 <= body (see `step`).
            #[allow(unsafe_code)]
            unsafe {
                acc[0] = step(row, v, j, acc[0]);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds the 8 floats stored.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum)
        };
        let mut s: f32 = lanes.iter().sum();
        for (&h, &x) in row[body..].iter().zip(&v[body..]) {
            s += half::f16::from_bits(h).to_f32() * x;
        }
        each(i, s);
    }
}

#[inline(always)]
fn scan_with(rows: &[f32], v: &[f32], each: &mut impl FnMut(usize, f32)) {
    if v.is_empty() {
        return;
    }
    for (i, row) in rows.chunks_exact(v.len()).enumerate() {
        each(i, souk_lanes::dot(row, v));
    }
}

impl<E: EmbeddingSource, G: GraphSource> Ranker<E, G> {
    pub fn new(catalog: Arc<RwLock<Catalog>>, encoder: E, graph: G) -> Self {
        Self {
            catalog,
            encoder,
            graph,
            model: RwLock::new(FusionModel::default()),
        }
    }

    pub fn catalog(&self) -> &Arc<RwLock<Catalog>> {
        &self.catalog
    }

    /// The fusion weights in use.
    pub fn model(&self) -> FusionModel {
        self.model.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Ranks with `model` from the next request on.
    ///
    /// # Errors
    /// `InvalidInput` when the model does not validate; the old one stays.
    pub fn set_model(&self, model: FusionModel) -> Result<(), RankError> {
        model.validate()?;
        *self.model.write().map_err(|_| poisoned())? = model;
        Ok(())
    }

    pub fn model_version(&self) -> String {
        self.model
            .read()
            .map(|m| m.version.clone())
            .unwrap_or_default()
    }

    /// Ranks the catalog for one request.
    ///
    /// # Errors
    /// `InvalidInput` for a bad request. A failing encoder or graph is not an error: the
    /// ranking comes from the other signals and `missing_signals` names the lost ones.
    pub async fn rank(&self, request: &RankQuery) -> Result<Ranking, RankError> {
        request.validate()?;
        // A budget in the words ("tents under 300") is a price filter on the other words,
        // unless the query is to be ranked as typed.
        let phrase = match &request.query {
            Some(q) if !request.verbatim => price_phrase(q),
            _ => None,
        };
        let Some(phrase) = phrase else {
            return self.rank_read(request).await;
        };
        let mut read = request.clone();
        read.query = Some(phrase.rest.clone()).filter(|rest| !rest.is_empty());
        // Typing the budget, not the words before it: no word is half typed.
        read.prefix = request.prefix && !phrase.ends_query;
        let filters = &mut read.filters;
        filters.min_price = match (filters.min_price, phrase.min) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        filters.max_price = match (filters.max_price, phrase.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut ranking = self.rank_read(&read).await?;
        ranking.price_from_query = Some(phrase);
        Ok(ranking)
    }

    /// [`Self::rank`] of a request whose words are all to be ranked.
    async fn rank_read(&self, request: &RankQuery) -> Result<Ranking, RankError> {
        let model = self.model.read().map_err(|_| poisoned())?.clone();
        let mut missing = Vec::new();
        let typed = request
            .query
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty());
        let (
            corrected,
            words_matched,
            spelling_corrected,
            widened_to,
            history,
            page_vector,
            mut applied,
        ) = {
            let catalog = self.catalog.read().map_err(|_| poisoned())?;
            // Misspelt words corrected against the catalog's texts, for every signal: on
            // Crowdflower with one typo per query, correcting both the lexical and the dense
            // signal's query recovered most of the loss (BENCHMARKS.md, "misspelt queries").
            let completing = request.prefix
                && request
                    .query
                    .as_deref()
                    .is_some_and(|q| q.ends_with(char::is_alphanumeric));
            let corrected = match typed {
                Some(q) if !request.verbatim => catalog.read_query(q, completing),
                _ => None,
            };
            let words_matched =
                typed.map(|q| catalog.matches_any_word(corrected.as_deref().unwrap_or(q)));
            let synonyms = catalog.synonyms();
            let widened_to = corrected
                .as_deref()
                .or(typed)
                .map(|q| catalog.widened_to(q))
                .unwrap_or_default();
            // The shop's rule for the search as ranked, or for the category's page when
            // there is no search and no item (not for a re-ranking of the caller's own
            // candidates).
            // And the shop's rule for every ranking, beside it; each as in force now.
            let pins = catalog.pins();
            let applied = if !request.candidate_ids.is_empty() || pins.is_empty() {
                Applied::default()
            } else {
                let now = request.now_ms.unwrap_or_else(crate::item::now_ms);
                let searched = corrected.as_deref().or(typed);
                let own = if let Some(q) = searched {
                    pins.for_query(q, now)
                } else if request.item.is_none() {
                    request
                        .filters
                        .category
                        .as_deref()
                        .and_then(|c| pins.for_category(c, now))
                } else {
                    None
                };
                // Then the rules for searches containing some of its words.
                let containing = searched
                    .map(|q| pins.containing(q, now))
                    .unwrap_or_default();
                let found = own
                    .into_iter()
                    .chain(containing)
                    .chain(pins.everywhere(now));
                // A preview at another time is no shopper's ranking: not counted.
                if request.now_ms.is_some() {
                    Applied::of(found)
                } else {
                    pins.apply(found)
                }
            };
            let spelling_corrected = match (typed, &corrected) {
                (Some(q), Some(read)) if !completing => {
                    synonyms.rewrite(q).as_deref() != Some(read.as_str())
                }
                _ => false,
            };
            // The recent part only: a long history (a shared guest id) is not copied whole.
            let mut history = request
                .user
                .as_ref()
                .map(|u| catalog.recent_history(u, catalog.rank_window()))
                .unwrap_or_default();
            // An item's page without a query: items like the item are near its own vector.
            let mut page_vector = None;
            if let Some(item) = &request.item {
                lead_with(&catalog, &mut history, item)?;
                page_vector = typed
                    .is_none()
                    .then(|| catalog.slot_of(item).and_then(|slot| catalog.item_at(slot)))
                    .flatten()
                    .map(|(_, vector)| crate::ann::widen(vector))
                    .filter(|v| !v.is_empty());
            }
            (
                corrected,
                words_matched,
                spelling_corrected,
                widened_to,
                history,
                page_vector,
                applied,
            )
        };
        let query = corrected.as_deref().or(typed);
        // Items the shop hides from this search are left out as the request's own
        // exclusions are, in any order, and of its facet counts; its pins lead a relevance
        // ranking only.
        let with_hidden: RankQuery;
        let request = if applied.hidden.is_empty() {
            request
        } else {
            with_hidden = RankQuery {
                hidden: std::mem::take(&mut applied.hidden),
                ..request.clone()
            };
            &with_hidden
        };
        let pins: &[String] = match request.sort.listing() {
            None => &applied.pinned,
            Some(_) => &[],
        };
        let weights = match (request.weights, query, &request.item) {
            (Some(weights), _, _) => weights,
            (None, Some(_), _) => model.with_query,
            (None, None, Some(_)) => model.with_item,
            (None, None, None) => model.without_query,
        };
        // The graph entities of the shopper's most recent items, for every graph call. A list
        // sorted by price uses no relevance signal but the query's matches: the graph is not
        // asked, so it is neither waited for nor reported missing.
        let rescores = request.sort.listing().is_none() && graph_rescores(&history, &weights);
        let recent: Vec<String> = if rescores {
            history
                .iter()
                .take(KG_SOURCES)
                .map(|h| item_entity(&h.item_id))
                .collect()
        } else {
            Vec::new()
        };
        // The query's vector and the items related to the shopper's recent ones, at once.
        let sources = recent[..recent.len().min(KG_RELATED_SOURCES)].to_vec();
        let embed = async {
            match query {
                Some(q) => Some(self.encoder.embed_query(q).await),
                None => None,
            }
        };
        let related = async {
            if sources.is_empty() {
                Ok(Vec::new())
            } else {
                self.graph.related_items(sources, KG_RELATED_PER_ITEM).await
            }
        };
        let (query_vector, related) = futures::join!(embed, related);
        let query_vector = match query_vector {
            Some(Ok(v)) => Some(v),
            None => page_vector,
            Some(Err(error)) => {
                tracing::warn!(%error, "encoder unavailable; ranking without the dense signal");
                missing.push(Signal::Dense);
                None
            }
        };
        // A graph that cannot list neighbours is not asked for paths either: a second
        // deadline would double the wait.
        let (related, graph_up): (Vec<String>, bool) = match related {
            Ok(entities) => (
                entities
                    .iter()
                    .filter_map(|e| entity_item(e).map(str::to_string))
                    .collect(),
                true,
            ),
            Err(error) => {
                tracing::warn!(%error, "knowledge graph unavailable; ranking without it");
                missing.push(Signal::Kg);
                (Vec::new(), false)
            }
        };
        let shopper = Shopper {
            history: &history,
            recent: &recent,
            related: &related,
            graph: graph_up && rescores,
        };
        if let Some(order) = request.sort.listing() {
            let catalog = self.catalog.read().map_err(|_| poisoned())?;
            let left_out = left_out_slots(&catalog, request);
            let scope = matched_scope(request, query, query_vector.as_deref(), &left_out);
            let (items, listed) = listing(&catalog, request, &scope, query, &history, order);
            let facets = facets_over(&catalog, request, &scope, None);
            return Ok(Ranking {
                items,
                missing_signals: missing,
                candidates: listed,
                model_version: model.version,
                first_pass: FirstPass::Members,
                corrected_query: corrected,
                facets,
                price_from_query: None,
                words_matched,
                spelling_corrected,
                widened_to,
                redirect: applied.redirect,
                banners: applied.banners,
            });
        }

        // The ranking is built tier by tier (`PAGE_TIERS`): positions up to 64 from a pool
        // sized for 64, the next ones from a pool sized for 256 without the items already
        // placed, and so on, so every page is a slice of the same list, however deep.
        let depth = request.depth();
        let mut chosen: Vec<Candidate> = Vec::with_capacity(depth);
        let (mut total, mut pass) = (0, FirstPass::default());
        let mut counted = None;
        let mut start = 0;
        for tier in PAGE_TIERS {
            if chosen.len() >= depth || chosen.len() < start {
                // Done, or an earlier tier ran out of items that pass.
                break;
            }
            let placed = self
                .rank_tier(
                    request,
                    query,
                    query_vector.as_deref(),
                    &weights,
                    shopper,
                    Tier {
                        start,
                        end: tier,
                        placed: &chosen,
                        picks: depth.min(tier) - chosen.len(),
                        pinned: if start == 0 { pins } else { &[] },
                        boosts: &applied.boosts,
                    },
                )
                .await?;
            if placed.graph_missing && !missing.contains(&Signal::Kg) {
                missing.push(Signal::Kg);
            }
            total = total.max(placed.scored);
            pass = placed.pass;
            counted = counted.or(placed.facets);
            chosen.extend(placed.picked);
            start = tier;
        }

        let catalog = self.catalog.read().map_err(|_| poisoned())?;
        let page = request.item.as_deref();
        let facets = counted
            .unwrap_or_else(|| facets(&catalog, request, query, query_vector.as_deref(), None));
        let items = chosen
            .into_iter()
            .skip(request.offset)
            .filter_map(|c| {
                let (item, _) = catalog.item_at(c.slot)?;
                let contribution = |i: usize| Contribution {
                    signal: Signal::ALL[i],
                    value: c.features[i],
                    contribution: weights[i] * c.features[i],
                };
                // The signals that carried the score, and the rest (for `all_signals`).
                let (carrying, rest): (Vec<usize>, Vec<usize>) =
                    (0..Signal::ALL.len()).partition(|&i| weights[i] > 0.0 && c.features[i] > 0.0);
                let mut contributions: Vec<Contribution> =
                    carrying.into_iter().map(contribution).collect();
                contributions.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
                let mut reasons = if request.explain {
                    explain(&catalog, &c, &contributions, query, &history, page)
                } else {
                    Vec::new()
                };
                if request.explain && c.pinned {
                    reasons.insert(0, applied.pin_reason.clone());
                } else if request.explain && c.boost != 0.0 {
                    // Each boost that moved it: a lift first, a lowering last.
                    let (up, down) = applied.boost_reasons(item);
                    reasons.splice(0..0, up);
                    reasons.extend(down);
                }
                if request.all_signals {
                    // The carrying signals first, as with `explain`, then the rest.
                    contributions.extend(rest.into_iter().map(contribution));
                }
                Some(RankedItem {
                    id: c.id.clone(),
                    score: c.score,
                    title: item.title.clone(),
                    brand: item.brand.clone(),
                    category: item.category.clone(),
                    price: item.price,
                    contributions: if request.explain || request.all_signals {
                        contributions
                    } else {
                        Vec::new()
                    },
                    reasons,
                    pinned: c.pinned,
                    boost: c.boost,
                    group_size: group_size(&catalog, request, item),
                })
            })
            .collect();
        Ok(Ranking {
            items,
            missing_signals: missing,
            candidates: total,
            // Weights given with the request scored it, not the model.
            model_version: if request.weights.is_some() {
                REQUEST_WEIGHTS.to_string()
            } else {
                model.version
            },
            first_pass: pass,
            corrected_query: corrected,
            facets,
            price_from_query: None,
            words_matched,
            spelling_corrected,
            widened_to,
            redirect: applied.redirect,
            banners: applied.banners,
        })
    }

    /// The picks of one tier of the ranking: the best `tier.picks` items (by MMR with diversity)
    /// of a first pass sized for the tier's end, the items placed by earlier tiers excluded
    /// and, for MMR, counted as already picked.
    async fn rank_tier(
        &self,
        request: &RankQuery,
        query: Option<&str>,
        query_vector: Option<&[f32]>,
        weights: &[f32; 5],
        shopper: Shopper<'_>,
        tier: Tier<'_>,
    ) -> Result<TierPicks, RankError> {
        let history = shopper.history;
        // First pass, under the lock: candidates and every feature but the graph's; the
        // first tier counts the facets too, from the query's word matches it found (a common
        // word's ~100k at 1M items: finding them again was ~1/5 of the counting).
        let (mut candidates, scored, pass, facets) = {
            let catalog = self.catalog.read().map_err(|_| poisoned())?;
            let (candidates, scored, pass, matches) = first_pass(
                &catalog,
                request,
                query,
                query_vector,
                shopper,
                weights,
                tier,
            );
            let facets = (tier.start == 0)
                .then(|| facets(&catalog, request, query, query_vector, Some(&matches)));
            (candidates, scored, pass, facets)
        };

        // The graph signal for the best candidates: paths from the user's recent items.
        let mut graph_missing = false;
        if shopper.graph && !candidates.is_empty() {
            let mut shortlist = candidates.len().min(graph_shortlist(tier.end));
            // Related items the first pass scored low join the shortlist (they are there
            // for their graph feature), within the graph's 1,000 targets.
            if !shopper.related.is_empty() && shortlist < candidates.len() {
                let related: HashSet<&str> = shopper.related.iter().map(String::as_str).collect();
                let room = MAX_K.saturating_sub(shortlist);
                let (mut lifted, mut rest): (Vec<Candidate>, Vec<Candidate>) = candidates
                    .drain(shortlist..)
                    .partition(|c| related.contains(c.id.as_str()));
                if lifted.len() > room {
                    rest.extend(lifted.drain(room..));
                }
                shortlist += lifted.len();
                candidates.extend(lifted);
                candidates.extend(rest);
            }
            let targets: Vec<String> = candidates[..shortlist]
                .iter()
                .map(|c| item_entity(&c.id))
                .collect();
            let recent_embedded = &shopper.recent[..shopper.recent.len().min(KG_EMBEDDED_SOURCES)];
            let embedded: Vec<String> = recent_embedded
                .iter()
                .chain(targets.iter().take(KG_EMBEDDED_CANDIDATES))
                .cloned()
                .collect();
            let (paths, vectors) = futures::join!(
                self.graph.paths(shopper.recent.to_vec(), targets, 2),
                self.graph.entity_vectors(embedded)
            );
            match paths {
                Ok(paths) => apply_paths(&mut candidates[..shortlist], paths, history, weights),
                Err(error) => {
                    tracing::warn!(%error, "knowledge graph unavailable; ranking without it");
                    graph_missing = true;
                }
            }
            match vectors {
                Ok(vectors) if !vectors.is_empty() => {
                    let limit = shortlist.min(KG_EMBEDDED_CANDIDATES);
                    apply_similarity(&mut candidates[..limit], &vectors, recent_embedded, weights);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "no entity embeddings for this ranking"),
            }
            candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        }

        // The shop's pins first, in its order; the rest by score and diversity, with the
        // pins counted as picked.
        let (pins, candidates): (Vec<Candidate>, Vec<Candidate>) =
            candidates.into_iter().partition(|c| c.pinned);
        let mut picked = in_pinned_order(pins, tier.pinned, tier.picks);
        let with_pins: Vec<Candidate>;
        let placed = if picked.is_empty() {
            tier.placed
        } else {
            with_pins = tier.placed.iter().chain(&picked).cloned().collect();
            &with_pins
        };
        let catalog = self.catalog.read().map_err(|_| poisoned())?;
        let candidates = match &request.collapse {
            // As many as the picks below read: the MMR pool, or the picks themselves.
            Some(field) => {
                let read = if request.diversity > 0.0 {
                    mmr_pool(tier.end)
                } else {
                    tier.picks - picked.len()
                };
                collapse(&catalog, field, candidates, placed, read)
            }
            None => candidates,
        };
        picked.extend(diversify(
            &catalog,
            candidates,
            placed,
            tier.picks - picked.len(),
            mmr_pool(tier.end),
            request.diversity,
        ));
        Ok(TierPicks {
            picked,
            scored,
            pass,
            graph_missing,
            facets,
        })
    }
}

/// `candidates` (best first) with only the first of each group of `field`
/// ([`FacetField::group_of`]), and none of a group an item of `placed` holds (pinned, or
/// placed by an earlier tier): one result per group, its best (as Elasticsearch's `collapse`
/// and Algolia's `distinct`). The shop's pinned items all stay, each taking its group.
/// Groups are found among the candidates a tier scored, so a ranking of few groups may
/// return fewer than k items. Only the first `read` that stay are kept (what the picks read
/// of them), so a page's few groups do not cost a group lookup per candidate.
fn collapse(
    catalog: &Catalog,
    field: &FacetField,
    candidates: Vec<Candidate>,
    placed: &[Candidate],
    read: usize,
) -> Vec<Candidate> {
    let group = |slot: u32| {
        catalog
            .item_at(slot)
            .and_then(|(item, _)| field.group_of(item))
    };
    let mut taken: HashSet<String> = placed.iter().filter_map(|c| group(c.slot)).collect();
    candidates
        .into_iter()
        .filter(|c| group(c.slot).is_none_or(|g| taken.insert(g)))
        .take(read)
        .collect()
}

/// Where each tier of a ranking ends: positions `0..64` come from a first pass sized for 64
/// results, `64..256` from one sized for 256 and `256..1000` from one sized for 1,000, each
/// without the items placed before it. A page is a slice of this one list whatever its offset
/// and k, so pages continue one another (diversity included) for as long as the catalog, the
/// log and the shopper stay the same; a page in tier t costs the first passes of tiers
/// 0..=t. (Sizing the pool by the request's own depth made a page at offset 64 come from a
/// larger pool than the page before it, which could show an item twice or skip one.)
const PAGE_TIERS: [usize; 3] = [64, 256, MAX_K];

/// Positions `start..end` of a ranking, the items placed before them, and how many of its
/// positions the request reaches.
#[derive(Debug, Clone, Copy)]
struct Tier<'a> {
    start: usize,
    end: usize,
    placed: &'a [Candidate],
    picks: usize,
    /// The ids the shop pins for the query, in its order: placed first (the first tier
    /// only; later tiers find them placed).
    pinned: &'a [String],
    /// The shop's boosts for the query: added to the score of the items that pass each,
    /// in every tier.
    boosts: &'a [(Filters, f32)],
}

/// What one tier placed.
struct TierPicks {
    picked: Vec<Candidate>,
    scored: usize,
    pass: FirstPass,
    graph_missing: bool,
    /// The request's facet counts, from the first tier (see [`facets`]).
    facets: Option<Vec<FacetCounts>>,
}

/// The shopper's side of a request: recent history (newest first,
/// [`Catalog::rank_window`] entries and the page's item), the graph entities of its
/// [`KG_SOURCES`] most recent items (empty when the graph does not rescore), the items the
/// graph relates to them (ids), and whether the graph signal rescores (a history, a graph
/// weight and a graph that answered).
#[derive(Debug, Clone, Copy)]
struct Shopper<'a> {
    history: &'a [HistoryEntry],
    recent: &'a [String],
    related: &'a [String],
    graph: bool,
}

/// What a request's facets count and a price-sorted request lists: its candidates when given,
/// else the query's word matches and its vector's nearest items (see [`FacetScope`]), less
/// `left_out` ([`left_out_slots`]).
fn matched_scope<'a>(
    request: &'a RankQuery,
    query: Option<&'a str>,
    query_vector: Option<&'a [f32]>,
    left_out: &'a [u32],
) -> FacetScope<'a> {
    FacetScope {
        words: query,
        nearest: query_vector.map(|q| (q, FACET_NEAREST)),
        among: (!request.candidate_ids.is_empty()).then_some(&request.candidate_ids[..]),
        except: left_out,
    }
}

/// The slots no ranking of `request` lists, ascending, each once: its exclusions, the
/// page's item, what the shop hides and (unless kept) what the shopper bought.
fn left_out_slots(catalog: &Catalog, request: &RankQuery) -> Vec<u32> {
    let mut slots = catalog.sorted_slots(
        request
            .exclude
            .iter()
            .chain(&request.hidden)
            .chain(&request.item),
    );
    let purchased = left_out_purchases(catalog, request);
    if !purchased.is_empty() {
        slots.extend(purchased);
        slots.sort_unstable();
        slots.dedup();
    }
    slots
}

/// The request's facets (none asked: none computed), counted over what it may list (see
/// [`matched_scope`]), so a count is what the shopper finds on choosing the value;
/// `matches`: the query's word matches when already found, under the same read of the
/// catalog.
fn facets(
    catalog: &Catalog,
    request: &RankQuery,
    query: Option<&str>,
    query_vector: Option<&[f32]>,
    matches: Option<&Matches>,
) -> Vec<FacetCounts> {
    if request.facets.is_empty() {
        return Vec::new();
    }
    let left_out = left_out_slots(catalog, request);
    let scope = matched_scope(request, query, query_vector, &left_out);
    facets_over(catalog, request, &scope, matches)
}

/// [`facets`] over a scope already built (a price listing's).
fn facets_over(
    catalog: &Catalog,
    request: &RankQuery,
    scope: &FacetScope<'_>,
    matches: Option<&Matches>,
) -> Vec<FacetCounts> {
    if request.facets.is_empty() {
        return Vec::new();
    }
    catalog.facet_counts_matched(scope, matches, &request.filters, &request.facets)
}

/// The slots of what the request's shopper bought, over the whole history (a request's
/// history is its recent part), unless the request includes purchases.
fn left_out_purchases(catalog: &Catalog, request: &RankQuery) -> HashSet<u32, IdHash> {
    match &request.user {
        Some(user) if !request.include_purchased => catalog.purchased_slots(user),
        _ => HashSet::default(),
    }
}

/// A request sorted by price or popularity (`order`): the page of the items `scope`
/// matches that its filters pass (`scope` leaves out its exclusions, the page's item, what
/// the shop hides and, unless kept, what the shopper bought: [`left_out_slots`]), each with
/// score 0 and the reason it is listed; and how many are listed in all.
fn listing(
    catalog: &Catalog,
    request: &RankQuery,
    scope: &FacetScope<'_>,
    query: Option<&str>,
    history: &[HistoryEntry],
    order: ListOrder,
) -> (Vec<RankedItem>, usize) {
    let page = request.offset..request.offset.saturating_add(request.k);
    let (slots, listed) = catalog.listing(
        scope,
        &request.filters,
        order,
        page,
        request.collapse.as_ref(),
    );
    // Whether a listed item matches the query's words, to tell a word match from a match
    // by meaning alone: asked for the page's items only.
    let matcher = match (query, request.explain) {
        (Some(q), true) => Some(catalog.word_matcher(q)),
        _ => None,
    };
    let matched = |slot: u32| matcher.as_ref().is_some_and(|m| m(slot));
    // Without a query, every item's reason is the same.
    let browsed = match request.item.as_deref() {
        Some(item) => format!(
            "similar to {}",
            your_item(catalog, history, Some(item), item)
        ),
        None if !request.filters.is_empty() => "passes your filters".into(),
        None => "in the catalog".into(),
    };
    let items = slots
        .iter()
        .filter_map(|&slot| catalog.item_at(slot).map(|(item, _)| (slot, item)))
        .map(|(slot, item)| RankedItem {
            id: item.id.clone(),
            score: 0.0,
            title: item.title.clone(),
            brand: item.brand.clone(),
            category: item.category.clone(),
            price: item.price,
            contributions: Vec::new(),
            reasons: if request.explain {
                // Why it is listed at all; first, for a best seller, what placed it there.
                let listed = match query {
                    Some(q) => search_reason(catalog, slot, q, matched(slot)),
                    None => browsed.clone(),
                };
                if order == ListOrder::Popularity && catalog.popularity_at(slot) > 0.0 {
                    vec!["popular with shoppers".to_string(), listed]
                } else {
                    vec![listed]
                }
            } else {
                Vec::new()
            },
            pinned: false,
            boost: 0.0,
            group_size: group_size(catalog, request, item),
        })
        .collect();
    (items, listed)
}

/// [`RankedItem::group_size`] of `item` for `request`.
fn group_size(catalog: &Catalog, request: &RankQuery, item: &Item) -> u32 {
    request.collapse.as_ref().map_or(0, |field| {
        u32::try_from(catalog.group_size(field, item)).unwrap_or(u32::MAX)
    })
}

/// Puts the item of a page first in `history` (newest, and weighed as the strongest event in
/// it, at least a purchase's), so that its bought-with neighbours and graph relations lead
/// the CF and graph signals; the shopper's own events follow.
///
/// # Errors
/// `InvalidInput` when the id is too long or the catalog has no such item.
fn lead_with(
    catalog: &Catalog,
    history: &mut Vec<HistoryEntry>,
    item: &str,
) -> Result<(), RankError> {
    if item.len() > crate::item::MAX_ID_BYTES {
        return Err(RankError::InvalidInput(format!(
            "item_id is {} bytes; the limit is {}",
            item.len(),
            crate::item::MAX_ID_BYTES
        )));
    }
    if catalog.get(item).is_none() {
        return Err(RankError::InvalidInput(format!(
            "item_id {item:?} is not in the catalog"
        )));
    }
    // A purchase's weight (`Interaction::weight`), or the history's strongest.
    let weight = history.iter().map(|h| h.weight).fold(5.0, f32::max);
    history.retain(|h| h.item_id != item);
    history.insert(
        0,
        HistoryEntry {
            item_id: item.to_string(),
            kind: InteractionKind::View,
            weight,
            last_ms: i64::MAX,
        },
    );
    Ok(())
}

/// Whether the graph signal will rescore this shopper's candidates (the first pass keeps its
/// shortlist then).
fn graph_rescores(history: &[HistoryEntry], weights: &[f32; 5]) -> bool {
    !history.is_empty() && weights[3] > 0.0
}

/// Candidates the graph is asked about for `k` results (the best of the first pass).
fn graph_shortlist(k: usize) -> usize {
    KG_CANDIDATES.max(k * 2).min(1_000)
}

/// Candidates the first pass must keep for `k` results: the MMR pool (`5k + 20`) and, when the
/// graph signal will rescore, its shortlist; both come from the top. Nothing below them can
/// reach the answer (the graph only raises scores, and only inside the shortlist), and each
/// kept candidate costs an id copy: keeping 1,000 for every request was ~7% of a search.
fn keep_for(k: usize, graph: bool) -> usize {
    let mmr = mmr_pool(k);
    if graph {
        mmr.max(graph_shortlist(k))
    } else {
        mmr
    }
}

fn fuse(features: &[f32; 5], weights: &[f32; 5]) -> f32 {
    features.iter().zip(weights).map(|(f, w)| f * w).sum()
}

/// Dense candidates asked of the HNSW graph per request (at least; 2k for large k).
const ANN_CANDIDATES: usize = 128;

/// Nearest items by the query's vector that a search's facets count beside its words'
/// matches: the first tier of the ranking (see [`PAGE_TIERS`]), which the dense signal alone
/// can fill, so a query that no title word matches still gets counts over what it shows.
const FACET_NEAREST: usize = PAGE_TIERS[0];

/// Best BM25 hits added to the pool of a search (at least; 2k for large k). 1024, not 256:
/// a one-word query matching thousands of titles with near-equal BM25 ("420", "Lite") had
/// its best items outside both lists; through the real model at 100k items the pool then
/// held 89.9% of an exact scan's top 10s, with 1024 95.6% (`scripts/bench/pool-agreement.sh`,
/// BENCHMARKS.md "Pending"), for ~0.3 ms more per search at 100k items.
const BM25_CANDIDATES: usize = 1024;

/// Up to this many BM25 matches, a search's pool takes all of them instead of the best
/// [`BM25_CANDIDATES`]: a model number matching ~2-4k titles with near-equal BM25 then has
/// its best items by dense score in the pool (real model, 100k items: 96.3% -> 97.5% of exact
/// top 10s; 8192 gave 98.9% at 1.9x a search's mean cost and 3x its p99, BENCHMARKS.md).
const BM25_ALL_MATCHES: usize = 4096;

/// Most popular items added to the pool of a search (a recommendation takes `keep` of them):
/// with a query, popularity only breaks ties among relevant items.
const POPULAR_WITH_QUERY: usize = 100;

/// Up to how many members a filter (by one of its sides: category, brands, an attribute, price
/// range or stock, or by the items its sides share) is answered by scoring exactly those
/// items instead of the candidate pool, in a catalog of `items`. Scoring costs about 0.3 us per member (reading its f32 vector); the pool's graph
/// walk, which passes the items the filter refuses, about 0.4 ms / (the share that passes).
/// Scanning is cheaper while `members^2 < ~1,400 * items`: up to ~10k members at 100k items,
/// ~3k at 10k (measured with `rank_cost`, BENCHMARKS.md "filtered searches"), and it is exact.
pub(crate) fn filtered_scan_limit(items: usize) -> usize {
    (1024.0 * items as f64).sqrt() as usize
}

/// Where the first pass looks when the catalog has an HNSW graph: the query's nearest items
/// by the graph, the best BM25 hits, every CF neighbour and the `keep` most popular items: the
/// items that can carry a signal into the top `keep`, instead of every item. The graph's and
/// BM25's lists hold only items `filter` accepts, so a filter that a tenth of the catalog
/// passes still gets its own nearest items. `None`: scan all.
fn candidate_pool(
    catalog: &Catalog,
    query_vector: Option<&[f32]>,
    matches: &Matches,
    cf: &HashMap<u32, (f32, &str), IdHash>,
    filter: Option<&Filter>,
    keep: usize,
    k: usize,
) -> Option<CandidatePool> {
    let n = ANN_CANDIDATES.max(2 * k);
    let mut pool = match query_vector {
        Some(q) => catalog.ann_search(q, n, n, filter)?,
        None if catalog.uses_ann() => Vec::new(),
        None => return None,
    };
    // The graph's farthest answer bounds the dense score of every item it did not give
    // (1 when it gave fewer than asked: a filter few items pass).
    let dense_beyond = match (query_vector, pool.last()) {
        (Some(q), Some(&far)) if pool.len() >= n => catalog
            .item_at(far)
            .map_or(1.0, |(_, v)| dot_f16(q, v).max(0.0)),
        _ => 1.0,
    };
    // The most relevant word matches only: a common word ("black") matches thousands of
    // items.
    let mut lexical: Vec<(u32, f32)> = matches
        .iter()
        .filter(|(s, _)| catalog.passes(filter, *s))
        .collect();
    let cap = if lexical.len() <= BM25_ALL_MATCHES {
        lexical.len()
    } else {
        BM25_CANDIDATES.max(2 * k)
    };
    let mut left_out = None;
    if lexical.len() > cap {
        lexical.select_nth_unstable_by(cap - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let best_left = lexical[cap..].iter().map(|(_, v)| *v).fold(0.0, f32::max);
        left_out = Some(LeftOut {
            dense: dense_beyond,
            lexical: best_left,
            popularity: 0.0,
        });
        lexical.truncate(cap);
    }
    pool.extend(lexical.into_iter().map(|(s, _)| s));
    pool.extend(cf.keys());
    let popular = if query_vector.is_some() {
        POPULAR_WITH_QUERY
    } else {
        keep
    };
    let most_popular = catalog.most_popular(popular);
    if let Some(left) = &mut left_out
        && most_popular.len() == popular
        && let Some(&least) = most_popular.last()
    {
        left.popularity = catalog.popularity_at(least);
    }
    pool.extend(most_popular);
    pool.sort_unstable();
    pool.dedup();
    Some(CandidatePool {
        slots: pool,
        left_out,
    })
}

/// A search's candidate pool (sorted slots).
struct CandidatePool {
    slots: Vec<u32>,
    /// Set when the query matched more items than the pool takes.
    left_out: Option<LeftOut>,
}

/// Bounds on the raw features of a match the pool left out: its dense score is at most the
/// graph's farthest answer's, its lexical relevance at most the best match not taken's, its
/// popularity at most the least popular item taken for popularity; every CF neighbour is in
/// the pool.
struct LeftOut {
    dense: f32,
    lexical: f32,
    popularity: f32,
}

/// Starting points spread over a common word's matches for the graph walk among them (see
/// [`AnnIndex::search_from`](crate::ann::AnnIndex::search_from)).
const MATCH_SEEDS: usize = 128;

/// At most this many of a common word's matches that a filter with bits passes are all
/// scored instead of walked to (`FirstPass::PoolThenPassingMatches`): half the walk's
/// distance budget, and a scored item is read in slot order, not hopped to. At 1M items
/// (`rank_cost`, BENCHMARKS.md "Session 35") a department went 4.2 -> 2.9 ms mean, p99 21 ->
/// 6 ms, exact top 10s 86.3 -> 92.5%; 8,192 left most "under 30" searches (~12k passing
/// matches) walking.
const PASSING_MATCHES_SCORED: usize = 16_384;

/// Candidates (the caller's ids; the candidate pool of a catalog with an HNSW graph; or the
/// whole catalog: an exact scan) that pass filters and exclusions, with dense, BM25, CF and
/// popularity features normalised to 0..1 and a first score: the best `keep` of them, best
/// first, how many were scored, where they came from, and the query's word matches (which
/// the first tier's facets count).
fn first_pass(
    catalog: &Catalog,
    request: &RankQuery,
    query: Option<&str>,
    query_vector: Option<&[f32]>,
    shopper: Shopper<'_>,
    weights: &[f32; 5],
    tier: Tier<'_>,
) -> (Vec<Candidate>, usize, FirstPass, Matches) {
    let history = shopper.history;
    let keep = keep_for(tier.end, shopper.graph);
    // Items the graph relates to the shopper's recent ones: in the pool, and kept below
    // `keep` too, so that the graph can score them.
    let related: HashSet<u32> = shopper
        .related
        .iter()
        .filter_map(|id| catalog.slot_of(id))
        .collect();
    // The shop's pins for the query: in the pool and kept below `keep` too, to be placed
    // first whatever their score (if they pass the filters and exclusions). Sorted, as
    // every candidate is looked up in it.
    let pinned = catalog.sorted_slots(tier.pinned);
    let is_pinned = |slot: &u32| !pinned.is_empty() && pinned.binary_search(slot).is_ok();
    // The shop's boosts for the query, against the facet index: each item's score moves by
    // the amounts of those it passes.
    let boosts: Vec<(Filter<'_>, f32)> = tier
        .boosts
        .iter()
        .map(|(filters, amount)| (catalog.filter(filters), *amount))
        .collect();
    let boost_of = |slot: u32, item: &Item| -> f32 {
        boosts
            .iter()
            .filter(|(when, _)| when.accepts(slot, item))
            .map(|(_, amount)| amount)
            .sum()
    };
    // The most any item gains: what a left-out match may add to its bound.
    let most_gained: f32 = boosts.iter().map(|(_, a)| a.max(0.0)).sum();
    let purchased = left_out_purchases(catalog, request);
    // The caller's exclusions, what the shop hides from the search and what earlier tiers
    // placed (by id: the catalog may have changed between tiers).
    let excluded: HashSet<u32, IdHash> = request
        .exclude
        .iter()
        .chain(&request.hidden)
        .chain(&request.item)
        .chain(tier.placed.iter().map(|c| &c.id))
        .filter_map(|id| catalog.slot_of(id))
        .collect();
    let matches = query.map(|q| catalog.matches(q)).unwrap_or_default();
    // CF neighbours by slot: the scan below must not hash an item id per item.
    let cf_by_slot: HashMap<u32, (f32, &str), IdHash> = if history.is_empty() {
        HashMap::default()
    } else {
        catalog.cf_scores(history)
    };
    let cf_max = cf_by_slot.values().map(|(s, _)| *s).fold(0.0, f32::max);
    let mut filter = (!request.filters.is_empty()).then(|| catalog.filter(&request.filters));
    let members = if request.candidate_ids.is_empty() {
        filter
            .as_ref()
            .and_then(|f| f.members_within(filtered_scan_limit(catalog.len())))
    } else {
        None
    };
    let mut left_out = None;
    // Where the first pass looks (`None`: every item).
    let (pool, mut pass) = if !request.candidate_ids.is_empty() {
        let mut seen = HashSet::new();
        let given = request
            .candidate_ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .filter_map(|id| catalog.slot_of(id))
            .collect();
        (Some(given), FirstPass::Given)
    } else if let Some(members) = members {
        // The items a narrow filter may pass, all scored: exact.
        (Some(members), FirstPass::Members)
    } else {
        // The pool checks the filter on every match and every item the graph walk visits.
        filter = filter.map(|f| catalog.filter_checked_often(f));
        let filter = filter.as_ref();
        let pool = candidate_pool(
            catalog,
            query_vector,
            &matches,
            &cf_by_slot,
            filter,
            keep,
            tier.end,
        );
        let pass = if pool.is_some() {
            FirstPass::Pool
        } else {
            FirstPass::Scan
        };
        let pool = pool.map(|mut pool| {
            if !related.is_empty() || !pinned.is_empty() {
                pool.slots.extend(&related);
                pool.slots.extend(&pinned);
                pool.slots.sort_unstable();
                pool.slots.dedup();
            }
            left_out = pool.left_out.take();
            pool.slots
        });
        (pool, pass)
    };
    // Popularity as a feature: as of the latest event, log-scaled to the most popular item's.
    let pop_scale = catalog.popularity_scale();
    let pop_norm = (catalog.max_popularity() * pop_scale).ln_1p();
    let popularity_feature = |popularity: f32| {
        if pop_norm > 0.0 {
            (popularity * pop_scale).ln_1p() / pop_norm
        } else {
            0.0
        }
    };
    // A filter's members are exactly the items that pass it (`Filter::members_within`): not
    // checked again, item by item.
    let unchecked = (pass != FirstPass::Members)
        .then_some(filter.as_ref())
        .flatten();
    // Scores first, without allocating: a 10k-item scan that cloned every id and sorted all
    // of them by (score, id) spent most of its ~10 ms there.
    let score = |slots: &mut dyn Iterator<Item = u32>| {
        let mut scored: Vec<(u32, f32, [f32; 5])> = Vec::with_capacity(slots.size_hint().0);
        for slot in catalog.prefetching(slots, query_vector.is_some()) {
            let Some((item, vector)) = catalog.item_at(slot) else {
                continue;
            };
            if excluded.contains(&slot)
                || purchased.contains(&slot)
                || unchecked.is_some_and(|f| !f.accepts(slot, item))
            {
                continue;
            }
            let dense = query_vector
                .map(|q| dot_f16(q, vector).max(0.0))
                .unwrap_or(0.0);
            let lexical = matches.relevance(slot);
            let cf_score = match cf_by_slot.get(&slot) {
                Some((s, _)) if cf_max > 0.0 => s / cf_max,
                _ => 0.0,
            };
            let popularity = popularity_feature(catalog.popularity_at(slot));
            let features = [dense, lexical, cf_score, 0.0, popularity];
            let mut score = fuse(&features, weights);
            if !boosts.is_empty() {
                score += boost_of(slot, item);
            }
            scored.push((slot, score, features));
        }
        scored
    };
    let mut scored = match &pool {
        Some(pool) => score(&mut pool.iter().copied()),
        None => score(&mut catalog.slots()),
    };
    // A filter can leave the candidate pool short of the tier (the graph gives up on one that
    // few items pass): the whole catalog then. Judged on the whole tier, not the request's
    // depth, so that every page of the tier comes from the same candidates.
    let place = tier.end - tier.start;
    if scored.len() < place && pass == FirstPass::Pool {
        scored = score(&mut catalog.filtered_slots(filter.as_ref()));
        pass = FirstPass::PoolThenScan;
    }
    // A common word ("Lite", "Pro") matches thousands of titles with near-equal BM25; the
    // pool took the best 1,024 by BM25 and the graph's nearest items overall, so a match
    // with a middling BM25 and a dense score just under the nearest items' was in neither,
    // yet its sum can beat theirs (the real model at 100k items: 98.4% of exact top 10s,
    // with this walk 99.6%; BENCHMARKS.md "common words").
    // When the bounds on such a match reach the score at the tier's last place, the graph
    // walks among the matches too, from seeds spread over them (a walk from one entry stays
    // in the nearest region, and a generic word's matches are near in many).
    if let (Some(q), Some(left), Some(pool)) = (query_vector, &left_out, &pool)
        && pass == FirstPass::Pool
        && weights[0] > 0.0
        && place > 0
        && scored.len() >= place
    {
        // All but the dense feature of a left-out match, at most.
        let rest = fuse(
            &[
                0.0,
                left.lexical,
                0.0,
                0.0,
                popularity_feature(left.popularity),
            ],
            weights,
        ) + most_gained;
        // The score at the tier's last place.
        let mut scores: Vec<f32> = scored.iter().map(|(_, s, _)| *s).collect();
        let last = *scores
            .select_nth_unstable_by(place - 1, |a, b| b.total_cmp(a))
            .1;
        if rest + weights[0] * left.dense >= last {
            // The dense score a left-out match needs to reach the tier (a little under it:
            // the graph walks 8-bit vectors, whose dot products move by up to ~1e-3).
            let min_dot = (last - rest) / weights[0] - 0.01;
            // A filter with its bits that few matches pass: all of them scored, not walked.
            let passing = filter
                .as_ref()
                .and_then(Filter::passing)
                .filter(|bits| bits.count_and(matches.bits()) <= PASSING_MATCHES_SCORED);
            if let Some(bits) = passing {
                let mut more = bits
                    .iter_and(matches.bits())
                    .filter(|slot| pool.binary_search(slot).is_err());
                scored.extend(score(&mut more));
                pass = FirstPass::PoolThenPassingMatches;
            } else {
                let seeds: Vec<u32> = matches
                    .spread(MATCH_SEEDS)
                    .filter(|&s| catalog.passes(filter.as_ref(), s))
                    .collect();
                let more = catalog
                    .ann_search_from(
                        q,
                        ANN_CANDIDATES.max(2 * tier.end),
                        &seeds,
                        min_dot,
                        filter.as_ref(),
                        |slot| {
                            matches.contains(slot)
                                && pool.binary_search(&slot).is_err()
                                && catalog.passes(filter.as_ref(), slot)
                        },
                    )
                    .unwrap_or_default();
                scored.extend(score(&mut more.into_iter()));
                pass = FirstPass::PoolThenMatches;
            }
        }
    }
    let total = scored.len();
    // Only the best `keep` can reach the answer: the graph shortlist and the MMR pool are
    // both drawn from the top of this order (ties broken by id, as everywhere).
    let keep = keep.min(total);
    let id_of = |slot: u32| catalog.item_at(slot).map_or("", |(i, _)| i.id.as_str());
    let order = |a: &(u32, f32, [f32; 5]), b: &(u32, f32, [f32; 5])| {
        b.1.total_cmp(&a.1).then_with(|| id_of(a.0).cmp(id_of(b.0)))
    };
    if keep < total && keep > 0 {
        scored.select_nth_unstable_by(keep - 1, order);
        let mut below = scored.split_off(keep);
        below.retain(|(slot, _, _)| related.contains(slot) || is_pinned(slot));
        scored.extend(below);
    }
    scored.sort_by(order);
    let candidates = scored
        .into_iter()
        .map(|(slot, score, features)| Candidate {
            slot,
            id: id_of(slot).to_owned(),
            score,
            boost: match catalog.item_at(slot) {
                Some((item, _)) if !boosts.is_empty() => boost_of(slot, item),
                _ => 0.0,
            },
            features,
            cf_by: cf_by_slot
                .get(&slot)
                .filter(|_| cf_max > 0.0)
                .map(|(_, by)| (*by).to_string()),
            kg_path: None,
            kg_similar: None,
            pinned: is_pinned(&slot),
        })
        .collect();
    (candidates, total, pass, matches)
}

/// The pinned candidates in the order of `ids`, at most `picks` of them.
fn in_pinned_order(mut pins: Vec<Candidate>, ids: &[String], picks: usize) -> Vec<Candidate> {
    pins.sort_by_key(|c| ids.iter().position(|id| *id == c.id));
    pins.truncate(picks);
    pins
}

/// How much a path says: a direct item-to-item relation (accessory, complement) most, a shared
/// brand more than a shared category, an attribute least.
fn path_strength(path: &GraphPath) -> f32 {
    match path.steps.as_slice() {
        [_] => 1.0,
        [a, b] if a.relation == b.relation => match a.relation.as_str() {
            "brand" => 0.7,
            "category" => 0.5,
            "attribute" => 0.15,
            _ => 0.5,
        },
        _ => 0.25,
    }
}

/// Sets the graph feature of each candidate from its strongest path (plus a little for every
/// further history item that reaches it) and rescoring.
fn apply_paths(
    candidates: &mut [Candidate],
    paths: Vec<GraphPath>,
    history: &[HistoryEntry],
    weights: &[f32; 5],
) {
    let recency: HashMap<String, usize> = history
        .iter()
        .enumerate()
        .map(|(i, h)| (item_entity(&h.item_id), i))
        .collect();
    let mut best: HashMap<String, (f32, GraphPath, HashSet<String>)> = HashMap::new();
    for path in paths {
        let strength = path_strength(&path);
        let entry = best
            .entry(path.target.clone())
            .or_insert_with(|| (0.0, path.clone(), HashSet::new()));
        entry.2.insert(path.source.clone());
        let newer = recency.get(&path.source) < recency.get(&entry.1.source);
        if strength > entry.0 || (strength == entry.0 && newer) {
            entry.0 = strength;
            entry.1 = path;
        }
    }
    for c in candidates.iter_mut() {
        if let Some((strength, path, sources)) = best.remove(&item_entity(&c.id)) {
            c.features[3] = (strength + 0.1 * (sources.len() as f32 - 1.0)).min(1.0);
            c.kg_path = Some(path);
            c.score = fuse(&c.features, weights) + c.boost;
        }
    }
}

/// The graph feature from embeddings: each candidate's best cosine with the user's recent
/// items, scaled by [`KG_EMBEDDING_WEIGHT`], where it beats the path-based value.
fn apply_similarity(
    candidates: &mut [Candidate],
    vectors: &HashMap<String, Vec<f32>>,
    recent: &[String],
    weights: &[f32; 5],
) {
    let unit = |v: &[f32]| -> Option<Vec<f32>> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
    };
    let history: Vec<(&String, Vec<f32>)> = recent
        .iter()
        .filter_map(|e| vectors.get(e).and_then(|v| unit(v)).map(|u| (e, u)))
        .collect();
    if history.is_empty() {
        return;
    }
    for c in candidates.iter_mut() {
        let entity = item_entity(&c.id);
        let Some(v) = vectors.get(&entity).and_then(|v| unit(v)) else {
            continue;
        };
        let best = history
            .iter()
            .filter(|(e, u)| **e != entity && u.len() == v.len())
            .map(|(e, u)| (*e, dot(u, &v)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((source, similarity)) = best {
            let value = KG_EMBEDDING_WEIGHT * similarity.max(0.0);
            if value > c.features[3] {
                c.features[3] = value;
                c.kg_path = None;
                c.kg_similar = Some(source.clone());
                c.score = fuse(&c.features, weights) + c.boost;
            }
        }
    }
}

/// Top k by maximal marginal relevance: each pick maximises
/// (1 - diversity) x score - diversity x similarity to what is already picked, where two items
/// in the same leaf category are similar (1) and in the same top category half so.
///
/// The similarity to the picked items is looked up in the sets of picked leaves and tops, so a
/// pick costs one pass over the pool: comparing with every picked item made k = 1,000 at
/// diversity 0.5 take 4.1 s on a 100k catalog (a pool of 5,020 x 1,000 picks x up to 1,000
/// picked).
fn diversify(
    catalog: &Catalog,
    candidates: Vec<Candidate>,
    placed: &[Candidate],
    k: usize,
    pool_size: usize,
    diversity: f32,
) -> Vec<Candidate> {
    if diversity <= 0.0 || candidates.is_empty() {
        return candidates.into_iter().take(k).collect();
    }
    let categories = |slot: u32| {
        catalog
            .item_at(slot)
            .map(|(i, _)| {
                (
                    i.category.first().cloned().unwrap_or_default(),
                    i.category.last().cloned().unwrap_or_default(),
                )
            })
            .unwrap_or_default()
    };
    let pool_size = candidates.len().min(pool_size);
    // (candidate, top category, leaf category); picked ones are taken out.
    let mut pool: Vec<Option<(Candidate, String, String)>> = candidates
        .into_iter()
        .take(pool_size)
        .map(|c| {
            let (top, leaf) = categories(c.slot);
            Some((c, top, leaf))
        })
        .collect();
    // What earlier tiers placed counts as picked.
    let mut picked_tops: HashSet<String> = HashSet::new();
    let mut picked_leaves: HashSet<String> = HashSet::new();
    for c in placed {
        let (top, leaf) = catalog.slot_of(&c.id).map(categories).unwrap_or_default();
        picked_tops.insert(top);
        picked_leaves.insert(leaf);
    }
    let mut out = Vec::with_capacity(k.min(pool_size));
    while out.len() < k {
        let mut best: Option<(usize, f32)> = None;
        for (i, entry) in pool.iter().enumerate() {
            let Some((c, top, leaf)) = entry else {
                continue;
            };
            let similarity = if !leaf.is_empty() && picked_leaves.contains(leaf) {
                1.0
            } else if !top.is_empty() && picked_tops.contains(top) {
                0.5
            } else {
                0.0
            };
            let value = (1.0 - diversity) * c.score - diversity * similarity;
            // The first of equals: the pool is in score order, ties broken by id.
            if best.is_none_or(|(_, v)| value > v) {
                best = Some((i, value));
            }
        }
        let Some((c, top, leaf)) = best.and_then(|(i, _)| pool[i].take()) else {
            break;
        };
        picked_tops.insert(top);
        picked_leaves.insert(leaf);
        out.push(c);
    }
    out
}

/// Candidates maximal marginal relevance picks `k` results from: the best `5k + 20`.
fn mmr_pool(k: usize) -> usize {
    k * 5 + 20
}

fn display(entity: &str) -> String {
    if let Some(b) = entity.strip_prefix("brand:") {
        b.to_string()
    } else if let Some(c) = entity.strip_prefix("category:") {
        c.rsplit('/').next().unwrap_or(c).to_string()
    } else if let Some(a) = entity.strip_prefix("attr:") {
        a.replacen('=', " ", 1)
    } else {
        entity.to_string()
    }
}

/// "the Trail Tent you bought", from a history item; "this Trail Tent" for the item of the
/// page (`page`).
fn your_item(
    catalog: &Catalog,
    history: &[HistoryEntry],
    page: Option<&str>,
    entity: &str,
) -> String {
    let id = entity_item(entity).unwrap_or(entity);
    let title = catalog.get(id).map(|i| i.title.as_str()).unwrap_or(id);
    if page == Some(id) {
        return format!("this {title}");
    }
    let verb = history
        .iter()
        .find(|h| h.item_id == id)
        .map(|h| h.kind.past_tense())
        .unwrap_or("viewed");
    format!("the {title} you {verb}")
}

/// Turns a path into words.
pub fn describe_path(path: &GraphPath, yours: &str) -> String {
    match path.steps.as_slice() {
        [step] => match (step.relation.as_str(), step.forward) {
            ("accessory_of", false) => format!("an accessory for {yours}"),
            ("accessory_of", true) => format!("{yours} is an accessory for it"),
            ("complements" | "goes_with", _) => format!("goes with {yours}"),
            (rel, _) => format!("linked to {yours} ({})", rel.replace('_', " ")),
        },
        [a, b] if a.relation == b.relation && a.forward && !b.forward => {
            let via = display(&a.entity);
            match a.relation.as_str() {
                "brand" => format!("same brand ({via}) as {yours}"),
                "category" => format!("same category ({via}) as {yours}"),
                "attribute" => format!("shares {via} with {yours}"),
                rel => format!("same {} ({via}) as {yours}", rel.replace('_', " ")),
            }
        }
        steps => {
            let chain: Vec<String> = steps.iter().map(|s| s.relation.replace('_', " ")).collect();
            format!("related to {yours} via {}", chain.join(" > "))
        }
    }
}

/// Why item `slot` answers the search `query`: it holds every word (or, with `matched`, an
/// equivalent by the shop's synonyms or by writing), some of them (named), or none, when
/// only its meaning is near.
fn search_reason(catalog: &Catalog, slot: u32, query: &str, matched: bool) -> String {
    let (held, words) = catalog.held_words(query, slot);
    if !held.is_empty() && held.len() < words {
        let named: Vec<String> = held.iter().map(|w| format!("\"{w}\"")).collect();
        format!("matches {} of your search \"{query}\"", named.join(", "))
    } else if matched || !held.is_empty() {
        format!("matches your search \"{query}\"")
    } else {
        format!("close in meaning to your search \"{query}\"")
    }
}

fn explain(
    catalog: &Catalog,
    candidate: &Candidate,
    contributions: &[Contribution],
    query: Option<&str>,
    history: &[HistoryEntry],
    page: Option<&str>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let mut said_search = false;
    // Only the signals that carried the score: at least a fifth of it, at most three.
    let total: f32 = contributions.iter().map(|c| c.contribution).sum();
    for c in contributions
        .iter()
        .filter(|c| c.contribution >= 0.2 * total)
        .take(3)
    {
        let reason = match c.signal {
            Signal::Dense | Signal::Bm25 => match (query, page) {
                (Some(q), _) if !said_search => {
                    said_search = true;
                    // The feature, whatever its weight: a word match is one.
                    let lexical = candidate.features[1] > 0.0;
                    Some(search_reason(catalog, candidate.slot, q, lexical))
                }
                (None, Some(item)) => Some(format!(
                    "similar to {}",
                    your_item(catalog, history, page, item)
                )),
                _ => None,
            },
            Signal::Kg => candidate
                .kg_path
                .as_ref()
                .map(|p| describe_path(p, &your_item(catalog, history, page, &p.source)))
                .or_else(|| {
                    candidate.kg_similar.as_ref().map(|source| {
                        format!(
                            "close in the product graph to {}",
                            your_item(catalog, history, page, source)
                        )
                    })
                }),
            Signal::Cf => candidate.cf_by.as_ref().map(|by| {
                let title = catalog.get(by).map(|i| i.title.as_str()).unwrap_or(by);
                format!("shoppers who liked the {title} also chose this")
            }),
            Signal::Popularity => Some("popular with shoppers".to_string()),
        };
        if let Some(r) = reason {
            reasons.push(r);
        }
    }
    if reasons.is_empty() {
        reasons.push("in the catalog (no signal favoured it)".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set-based MMR picks what comparing with every picked item picks (the definition),
    /// at several diversities and depths, over items with shared leaves under different
    /// tops, empty categories and tied scores.
    /// A fusion model stored before item pages (no `with_item`) still loads, with the default
    /// page weights; a stored one keeps its own.
    #[test]
    fn a_stored_fusion_model_without_page_weights_reads_the_defaults() {
        let old = r#"{"version":"fusion-1","with_query":[0.5,0.2,0.1,0.1,0.1],"without_query":[0.0,0.0,0.5,0.3,0.2]}"#;
        let model: FusionModel = serde_json::from_str(old).unwrap();
        assert_eq!(model.with_item, default_with_item());
        assert_eq!(model.with_query, [0.5, 0.2, 0.1, 0.1, 0.1]);
        let tuned = FusionModel {
            with_item: [0.1, 0.0, 0.6, 0.2, 0.1],
            ..model
        };
        let back: FusionModel =
            serde_json::from_str(&serde_json::to_string(&tuned).unwrap()).unwrap();
        assert_eq!(back, tuned);
    }

    #[test]
    fn diversify_picks_what_pairwise_mmr_picks() {
        use crate::item::Item;
        let mut rng = crate::rng::XorShift::new(5);
        let mut below = |n: usize| ((rng.uniform() * n as f64) as usize).min(n - 1);
        let mut catalog = Catalog::default();
        let tops = [
            "Outdoor", "Kitchen", "Home", "Garden", "Toys", "Sport", "Office", "",
        ];
        let leaves = [
            "Knives", "Tents", "Lamps", "Pans", "Mugs", "Balls", "Pens", "Chairs", "Hoses", "",
        ];
        let mut candidates = Vec::new();
        for i in 0..300u32 {
            let top = tops[below(tops.len())];
            let leaf = leaves[below(leaves.len())];
            let category: Vec<String> = [top, leaf]
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| (*c).to_string())
                .collect();
            let item = Item {
                id: format!("i{i:03}"),
                title: "t".into(),
                category,
                ..Item::default()
            };
            catalog.upsert(item, vec![1.0, 0.0]).unwrap();
            let slot = catalog.slot_of(&format!("i{i:03}")).unwrap();
            candidates.push(Candidate {
                slot,
                id: format!("i{i:03}"),
                features: [0.0; 5],
                cf_by: None,
                kg_path: None,
                kg_similar: None,
                pinned: false,
                boost: 0.0,
                // Hundredths, so equal values happen.
                score: below(100) as f32 / 100.0,
            });
        }
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        let keys = |c: &Candidate| {
            let (item, _) = catalog.item_at(c.slot).unwrap();
            let first = item.category.first().cloned().unwrap_or_default();
            let last = item.category.last().cloned().unwrap_or_default();
            (first, last)
        };
        for diversity in [0.1f32, 0.5, 0.9, 1.0] {
            for k in [1, 5, 40, 300] {
                let mut pool: Vec<&Candidate> = candidates.iter().take(mmr_pool(k)).collect();
                let mut picked: Vec<(String, String)> = Vec::new();
                let mut want = Vec::new();
                while want.len() < k && !pool.is_empty() {
                    let value = |c: &Candidate| {
                        let (top, leaf) = keys(c);
                        let similarity = picked
                            .iter()
                            .map(|(t, l)| {
                                if *l == leaf && !leaf.is_empty() {
                                    1.0
                                } else if *t == top && !top.is_empty() {
                                    0.5
                                } else {
                                    0.0
                                }
                            })
                            .fold(0.0, f32::max);
                        (1.0 - diversity) * c.score - diversity * similarity
                    };
                    let mut best = 0;
                    for i in 1..pool.len() {
                        if value(pool[i]) > value(pool[best]) {
                            best = i;
                        }
                    }
                    let c = pool.remove(best);
                    picked.push(keys(c));
                    want.push(c.id.clone());
                }
                let got: Vec<String> =
                    diversify(&catalog, candidates.clone(), &[], k, mmr_pool(k), diversity)
                        .into_iter()
                        .map(|c| c.id)
                        .collect();
                assert_eq!(got, want, "diversity {diversity}, k {k}");
            }
        }
    }

    /// The catalog keeps vectors in f16: a query's dot product with a 384-d unit vector
    /// moves by ~1e-5 (at most 1e-4 here), far below what separates two results' scores, and
    /// a query of another length scores 0 instead of reading past the row.
    #[test]
    fn a_dot_with_an_f16_row_stays_within_1e_4_of_the_f32_one() {
        let mut rng = crate::rng::XorShift::new(7);
        let mut unit = || {
            let v: Vec<f32> = (0..384).map(|_| rng.uniform() as f32 - 0.5).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let mut worst = 0.0f32;
        let mut sum = 0.0f32;
        for _ in 0..2_000 {
            let (q, v) = (unit(), unit());
            let row = crate::ann::to_f16_row(&v);
            let error = (dot_f16(&q, &row) - dot(&q, &v)).abs();
            worst = worst.max(error);
            sum += error;
        }
        assert!(worst <= 1e-4, "worst {worst}");
        assert!(sum / 2_000.0 <= 2e-5, "mean {}", sum / 2_000.0);
        assert_eq!(dot_f16(&[1.0; 3], &crate::ann::to_f16_row(&[1.0; 4])), 0.0);
    }

    /// The half-precision scan (AVX2 with F16C where the CPU has it, and the portable loop)
    /// gives each row's dot product with its f16-rounded values, at every length: whole
    /// 32-number blocks (four sums), 8-lane blocks after them, remainders, and rows shorter
    /// than one block.
    #[test]
    fn the_f16_scan_is_the_dot_of_the_widened_rows() {
        for d in 1..=72 {
            let rows: Vec<f32> = (0..d * 5)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 23.0)
                .collect();
            let v: Vec<f32> = (0..d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 7.0).collect();
            let bits: Vec<u16> = rows
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect();
            let widened: Vec<f32> = bits
                .iter()
                .map(|&h| half::f16::from_bits(h).to_f32())
                .collect();
            let mut want = Vec::new();
            scan(&widened, &v, |_, s| want.push(s));
            let (mut fast, mut portable) = (Vec::new(), Vec::new());
            scan_f16(&bits, &v, |i, s| fast.push((i, s)));
            scan_f16_portable(&bits, &v, &mut |i, s| portable.push((i, s)));
            assert_eq!(want.len(), 5);
            for (got, name) in [(&fast, "dispatched"), (&portable, "portable")] {
                let rows: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
                assert_eq!(rows, [0, 1, 2, 3, 4], "{name}, d {d}");
                for ((_, s), w) in got.iter().zip(&want) {
                    assert!(
                        (s - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{name}, d {d}: {s} vs {w}"
                    );
                }
            }
        }
    }
}
