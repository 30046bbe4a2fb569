//! Pins: items a shop puts first for a query, in its order ("tent" -> the tent on promotion,
//! then its footprint), what merchandisers call a pinned or promoted result. The ranking goes
//! on after them without them. A rule may also hide items from its search (a lamp that the
//! word "tent" in its description brings up): they are left out of it, by relevance or by
//! price.
//!
//! A rule applies to a search whose words, as the index reads them (folded, plural-free, stop
//! words skipped: "Tents" and "a tent" are "tent"), are exactly the rule's; after spelling
//! correction, a one-way synonym or the completion of a half-typed word, so "tnet" and "ten"
//! (typing) reach "tent"'s pins too. A pinned item still has to pass the request's filters and
//! exclusions (and is left out once bought, as every result is): pins never show what the
//! shopper asked not to see. Lists sorted by price, and re-rankings of the caller's own
//! candidates, are not pinned.
//!
//! A rule may name a category instead of a search: it applies to that category's page, a
//! `Rank` without a query or an item whose category filter is the rule's (case and the
//! surrounding spaces aside; "Tents" is not "Outdoor", though the "Outdoor" page lists
//! tents too): a shop's landing pages are merchandised as its searches are.
//!
//! A rule may also **boost** the items that pass a filter (a brand, a category, an attribute's
//! value, in stock, a price range): their score in its search or page moves by the boost's
//! amount, up (a brand on promotion) or down (an accessory that crowds out the thing
//! searched). Unlike a pin, a boost only reorders what the search finds: an item the search
//! does not bring is not brought by it.
//!
//! One rule may apply **everywhere**: to every ranking the shop asks for (searches, category
//! pages, item pages, a shopper's own picks; not re-rankings of the caller's candidates), on
//! top of the search's or the page's own rule. It hides and boosts (in stock a little
//! ahead everywhere, a recalled item out of every list) but pins nothing: what leads is
//! decided per search or page.
//!
//! A search's rule may **contain** its words instead of being exactly them: it then applies
//! to every search that holds all its words, in any order and among others ("tent" to "tent
//! pegs" and "family tent"), on top of that search's own rule, as the rule for every ranking
//! is. Like it, it hides and boosts but pins nothing.
//!
//! A rule may be **scheduled**: in force from `starts_ms` (included) until `ends_ms` (not
//! included), milliseconds since the Unix epoch, either end open (a spring promotion, a
//! weekend's sale). A search, a page or every ranking may have one standing rule (no
//! schedule) and any number of scheduled ones whose times do not overlap: while a scheduled
//! rule is in force it replaces the standing one, which applies again when it ends.
//!
//! A search's own rule may **redirect** it: the shop's front end goes to that address
//! instead of showing results ("returns" to the returns policy, "black friday" to the sale's
//! page while it runs). The ranking is still computed and returned (pins, hidden items and
//! boosts applied), so a caller that ignores the redirect shows results as before. A rule
//! for a category's page, for every ranking or for searches containing words does not
//! redirect: a redirect answers one search.
//!
//! Any rule may carry a **banner**: text (or a snippet of data) the shop's front end shows
//! above the results while the rule applies ("Free shipping on every tent this week").
//! A ranking returns the banners of every rule that applied to it, the search's or page's
//! own first, then those of the rules containing its words, then the rule for every
//! ranking's, each once.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::RankError;
use crate::bm25::terms;
use crate::item::{Filters, category_key, validate_id};

/// Most rules a shop may set.
pub const MAX_PIN_RULES: usize = 10_000;
/// Most items one rule pins: the top of the first page.
pub const MAX_PINNED: usize = 16;
/// Most items one rule hides.
pub const MAX_HIDDEN: usize = 256;
/// Longest query or category of a rule, in bytes.
pub const MAX_PIN_QUERY_BYTES: usize = 256;
/// Most boosts one rule holds.
pub const MAX_BOOSTS: usize = 16;
/// The largest amount a boost moves a score by, up or down: a fused score is a weighted sum
/// of features in 0..1 whose weights sum to about 1, so 1 lifts an item over any other.
pub const MAX_BOOST: f32 = 1.0;
/// Longest redirect address, in bytes (what browsers and proxies take in a URL).
pub const MAX_REDIRECT_BYTES: usize = 2_048;
/// Longest banner, in bytes.
pub const MAX_BANNER_BYTES: usize = 1_024;

/// Items whose score a rule moves: those that pass every condition given (a category at any
/// level of the path, one of the brands, one of each attribute's values, in stock, the
/// price range; names and values as a request's filters read them), by `amount`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Boost {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brands: Vec<String>,
    /// Attribute names with the values each may take (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, Vec<String>)>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_stock: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<f64>,
    /// Added to the score of each item that passes: -1..=1, not 0.
    pub amount: f32,
}

impl Boost {
    /// The items it applies to, as a request's filters (see [`Filters`]).
    ///
    /// # Errors
    /// What [`Filters::new`] and [`Filters::with_attributes`] refuse, or no condition.
    pub fn filters(&self) -> Result<Filters, RankError> {
        let filters = Filters::new(
            &self.category,
            &self.brands,
            self.min_price,
            self.max_price,
            self.in_stock,
        )?
        .with_attributes(self.attributes.iter().cloned())?;
        if filters.is_empty() {
            return Err(RankError::InvalidInput(
                "names no condition (a category, a brand, an attribute value, in stock or a price bound)"
                    .into(),
            ));
        }
        Ok(filters)
    }

    /// The condition in words, for a reason shown with a result: `brand Santoro`,
    /// `color black or white`, `in stock`, `under 50`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.category.trim().is_empty() {
            parts.push(format!("category {}", self.category.trim()));
        }
        if !self.brands.is_empty() {
            parts.push(format!("brand {}", self.brands.join(" or ")));
        }
        for (name, values) in &self.attributes {
            parts.push(format!("{name} {}", values.join(" or ")));
        }
        if self.in_stock {
            parts.push("in stock".into());
        }
        match (self.min_price, self.max_price) {
            (Some(lo), Some(hi)) => parts.push(format!("priced {lo}-{hi}")),
            (Some(lo), None) => parts.push(format!("from {lo}")),
            (None, Some(hi)) => parts.push(format!("under {hi}")),
            (None, None) => {}
        }
        parts.join(", ")
    }
}

impl PinRule {
    /// What the rule applies to, as its faults and reasons name it: `query "tent"` or
    /// `category "Tents"`.
    pub fn target(&self) -> String {
        match self.category.trim() {
            _ if self.everywhere => "every ranking".into(),
            "" if self.contains => format!("any search with {:?}", self.query.trim()),
            "" => format!("query {:?}", self.query.trim()),
            category => format!("category {category:?}"),
        }
    }

    /// Whether it holds only for a time (see the module's documentation).
    pub fn is_scheduled(&self) -> bool {
        self.starts_ms.is_some() || self.ends_ms.is_some()
    }

    /// Whether it is in force at `now_ms`.
    pub fn in_force_at(&self, now_ms: i64) -> bool {
        self.starts_ms.is_none_or(|s| s <= now_ms) && self.ends_ms.is_none_or(|e| now_ms < e)
    }

    /// Where a scheduled rule stands at `now_ms` (`None` for a standing rule).
    pub fn standing_at(&self, now_ms: i64) -> Option<Standing> {
        if !self.is_scheduled() {
            None
        } else if self.in_force_at(now_ms) {
            Some(Standing::InForce)
        } else if self.ends_ms.is_some_and(|end| end <= now_ms) {
            Some(Standing::Ended)
        } else {
            Some(Standing::StartsLater)
        }
    }

    /// Whether it and `other` are both in force at some time.
    fn overlaps(&self, other: &PinRule) -> bool {
        let (a0, a1) = (
            self.starts_ms.unwrap_or(i64::MIN),
            self.ends_ms.unwrap_or(i64::MAX),
        );
        let (b0, b1) = (
            other.starts_ms.unwrap_or(i64::MIN),
            other.ends_ms.unwrap_or(i64::MAX),
        );
        a0 < b1 && b0 < a1
    }

    /// The first reason a pinned item gives.
    pub fn reason(&self) -> String {
        match self.category.trim() {
            "" => format!("featured by the shop for \"{}\"", self.query.trim()),
            category => format!("featured by the shop in {category}"),
        }
    }
}

/// Where a scheduled rule stands at a time ([`PinRule::standing_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    InForce,
    Ended,
    StartsLater,
}

/// What a rule is looked up by.
enum Key {
    /// A search's words as the index reads them.
    Terms(Vec<String>),
    /// A category as a request's filter holds it ([`category_key`]).
    Category(String),
    /// Every search holding these words (as the index reads them, each once).
    Contains(Vec<String>),
    /// Every ranking.
    Everywhere,
}

/// One rule as the shop wrote it: for a search or for a category's page (one of the two).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PinRule {
    /// The search it applies to (empty for a category's rule).
    pub query: String,
    /// The category whose page it applies to (empty for a search's rule).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,
    /// Item ids, first shown first.
    pub items: Vec<String>,
    /// Item ids never shown for the search, by relevance or by price.
    #[serde(default)]
    pub hidden: Vec<String>,
    /// Scores moved for the items that pass a filter, in a ranking by relevance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boosts: Vec<Boost>,
    /// For every ranking, beside its search's or page's rule (no query, no category, no
    /// pins): see the module's documentation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub everywhere: bool,
    /// For every search holding the query's words, not only for that search (no pins): see
    /// the module's documentation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub contains: bool,
    /// In force from this time on (ms since the Unix epoch; `None`: since always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_ms: Option<i64>,
    /// In force until this time, not included (`None`: for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_ms: Option<i64>,
    /// Where the search's page goes instead (a path such as `/help/returns`, or an http(s)
    /// URL); empty: it shows its results. See the module's documentation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redirect: String,
    /// What the front end shows above the results while the rule applies; empty: none. See
    /// the module's documentation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub banner: String,
}

/// Why a set of rules was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinError {
    /// The rule at fault, counted from 0 (`None`: the set as a whole).
    pub rule: Option<usize>,
    pub reason: String,
    /// The earlier rule for the same search, when that is the fault.
    pub named_by: Option<usize>,
}

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(rule) = self.rule {
            write!(f, "pin rule {rule}: ")?;
        }
        f.write_str(&self.reason)?;
        match self.named_by {
            Some(other) => write!(f, " (pin rule {other})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for PinError {}

impl From<PinError> for RankError {
    fn from(error: PinError) -> Self {
        RankError::InvalidInput(error.to_string())
    }
}

/// The rules in force, by their query's terms or their category.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    rules: Vec<PinRule>,
    /// Each rule's boosts as filters with their amounts, by rule.
    boosts: Vec<Vec<(Filters, f32)>>,
    /// The rules of each search (its standing rule and its scheduled ones), by its terms.
    by_terms: HashMap<Vec<String>, Vec<usize>>,
    by_category: HashMap<String, Vec<usize>>,
    /// The rules for every ranking.
    everywhere: Vec<usize>,
    /// The rules for searches containing words, by those words.
    by_words: HashMap<Vec<String>, Vec<usize>>,
    /// The keys of `by_words` by their first word: a search finds those of its words.
    words_first: HashMap<String, Vec<Vec<String>>>,
    /// Rankings each rule applied to since the set was made (see [`Self::apply`]).
    applied: Arc<Vec<AtomicU64>>,
}

/// A rule in force: as written, and its boosts ready to apply.
#[derive(Debug, Clone, Copy)]
pub struct Rule<'a> {
    pub rule: &'a PinRule,
    pub boosts: &'a [(Filters, f32)],
    /// Its place in the set, counted from 0.
    pub index: usize,
}

impl std::ops::Deref for Rule<'_> {
    type Target = PinRule;

    fn deref(&self) -> &PinRule {
        self.rule
    }
}

/// What the shop's rules do to one ranking: the pins of its search's or page's rule, and the
/// hidden items and boosts of that rule and of the rule for every ranking.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Items to lead a ranking by relevance with, in order.
    pub pinned: Vec<String>,
    /// The reason a pinned item gives ([`PinRule::reason`]).
    pub pin_reason: String,
    /// Items left out of the ranking, by relevance or by price.
    pub hidden: Vec<String>,
    /// The boosts as filters with their amounts.
    pub boosts: Vec<(Filters, f32)>,
    /// The same boosts as the shop wrote them, for the reasons they give.
    pub written: Vec<Boost>,
    /// Where the search's rule sends the shopper instead ([`PinRule::redirect`]).
    pub redirect: Option<String>,
    /// The banners of the rules, in their order, each once ([`PinRule::banner`]).
    pub banners: Vec<String>,
}

impl Applied {
    /// The rules `rules` together: pins from the first that pins (a search's or page's rule:
    /// the rule for every ranking pins nothing), the redirect of the first that redirects (a
    /// search's own rule: no other may), the hidden items, boosts and banners of all.
    pub fn of<'a>(rules: impl IntoIterator<Item = Rule<'a>>) -> Self {
        let mut applied = Applied::default();
        for rule in rules {
            if applied.pinned.is_empty() && !rule.items.is_empty() {
                applied.pinned.clone_from(&rule.items);
                applied.pin_reason = rule.reason();
            }
            if applied.redirect.is_none() && !rule.redirect.is_empty() {
                applied.redirect = Some(rule.redirect.clone());
            }
            if !rule.banner.is_empty() && !applied.banners.contains(&rule.banner) {
                applied.banners.push(rule.banner.clone());
            }
            applied.hidden.extend(rule.hidden.iter().cloned());
            applied.boosts.extend(rule.boosts.iter().cloned());
            applied.written.extend(rule.rule.boosts.iter().cloned());
        }
        applied
    }

    /// The reasons the boosts that `item` passes give, lifts and lowerings apart:
    /// `promoted by the shop: brand Santoro`, `placed lower by the shop: in stock`.
    pub fn boost_reasons(&self, item: &crate::item::Item) -> (Vec<String>, Vec<String>) {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for (boost, (when, _)) in self.written.iter().zip(&self.boosts) {
            if when.accepts(item) {
                let what = boost.describe();
                if boost.amount > 0.0 {
                    up.push(format!("promoted by the shop: {what}"));
                } else {
                    down.push(format!("placed lower by the shop: {what}"));
                }
            }
        }
        (up, down)
    }
}

impl Pins {
    /// The rules, checked: each names a query with a word search reads or a category (not
    /// both; at most [`MAX_PIN_QUERY_BYTES`]) or applies everywhere (pinning nothing), up to
    /// [`MAX_PINNED`] items to pin, [`MAX_HIDDEN`] to hide and [`MAX_BOOSTS`] boosts (at
    /// least one of any; valid ids, each named once; each boost a filter with a condition
    /// and an amount in -1..1, not 0), a schedule that starts from 1970 and ends after it
    /// starts, and no two rules for the same search, category or every ranking both
    /// standing or both scheduled for a common time (which would win is not for the engine
    /// to guess). Ids are not looked up: an item may be loaded after its rule (see
    /// [`Self::missing`]).
    ///
    /// # Errors
    /// The rule at fault (counted from 0) and what is wrong with it.
    pub fn new(rules: Vec<PinRule>) -> Result<Self, PinError> {
        if rules.len() > MAX_PIN_RULES {
            return Err(PinError {
                rule: None,
                reason: format!("{} rules; the limit is {MAX_PIN_RULES}", rules.len()),
                named_by: None,
            });
        }
        let mut by_terms: HashMap<Vec<String>, Vec<usize>> = HashMap::with_capacity(rules.len());
        let mut by_category: HashMap<String, Vec<usize>> = HashMap::new();
        let mut everywhere: Vec<usize> = Vec::new();
        let mut by_words: HashMap<Vec<String>, Vec<usize>> = HashMap::new();
        let mut boosts = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let bad = |reason: String| PinError {
                rule: Some(i),
                reason,
                named_by: None,
            };
            let (query, category) = (rule.query.trim(), rule.category.trim());
            // A rule for many searches (every ranking, or every search containing words)
            // hides and boosts: what leads is set per search or page.
            let pins_nothing = || match rule.items.len() {
                0 => Ok(()),
                n => Err(bad(format!(
                    "the rule for {} pins {} (pins are set per search or category; it hides and boosts)",
                    rule.target(),
                    if n == 1 {
                        "an item".to_string()
                    } else {
                        format!("{n} items")
                    }
                ))),
            };
            let key = match (query.is_empty(), category.is_empty()) {
                _ if rule.everywhere => {
                    if !query.is_empty() || !category.is_empty() {
                        return Err(bad(format!(
                            "applies everywhere yet names {}; a rule for every ranking names no query and no category",
                            if query.is_empty() {
                                format!("category {category:?}")
                            } else {
                                format!("query {query:?}")
                            }
                        )));
                    }
                    pins_nothing()?;
                    if rule.contains {
                        return Err(bad(
                            "applies everywhere and to searches containing words; it is one or the other".into(),
                        ));
                    }
                    Key::Everywhere
                }
                (_, false) if rule.contains => {
                    return Err(bad(format!(
                        "category {category:?} with `contains`: only a search's words are contained"
                    )));
                }
                (true, true) => {
                    return Err(bad(
                        "names no query and no category (and does not apply everywhere)".into(),
                    ));
                }
                (false, false) => {
                    return Err(bad(format!(
                        "names both query {query:?} and category {category:?}; a rule is for one"
                    )));
                }
                (false, true) => {
                    if query.len() > MAX_PIN_QUERY_BYTES {
                        return Err(bad(format!(
                            "a query of {} bytes; the limit is {MAX_PIN_QUERY_BYTES}",
                            query.len()
                        )));
                    }
                    let mut read = terms(query);
                    if read.is_empty() {
                        return Err(bad(format!(
                            "query {query:?} has no word that search reads (stop words and punctuation are skipped)"
                        )));
                    }
                    if rule.contains {
                        pins_nothing()?;
                        read.sort_unstable();
                        read.dedup();
                        Key::Contains(read)
                    } else {
                        Key::Terms(read)
                    }
                }
                (true, false) => {
                    if category.len() > MAX_PIN_QUERY_BYTES {
                        return Err(bad(format!(
                            "a category of {} bytes; the limit is {MAX_PIN_QUERY_BYTES}",
                            category.len()
                        )));
                    }
                    if category.chars().any(char::is_control) {
                        return Err(bad(format!(
                            "category {category:?} holds a control character"
                        )));
                    }
                    Key::Category(category_key(category))
                }
            };
            let target = rule.target();
            if !rule.redirect.is_empty() {
                if !matches!(key, Key::Terms(_)) {
                    return Err(bad(format!(
                        "the rule for {target} redirects; a redirect answers one search (a query's own rule)"
                    )));
                }
                check_redirect(&rule.redirect).map_err(bad)?;
            }
            if !rule.banner.is_empty() {
                check_banner(&rule.banner).map_err(bad)?;
            }
            if rule.items.is_empty()
                && rule.hidden.is_empty()
                && rule.boosts.is_empty()
                && rule.redirect.is_empty()
                && rule.banner.is_empty()
            {
                return Err(bad(format!(
                    "{target} pins, hides, boosts, redirects and shows nothing"
                )));
            }
            if rule.boosts.len() > MAX_BOOSTS {
                return Err(bad(format!(
                    "{} boosts; the limit is {MAX_BOOSTS}",
                    rule.boosts.len()
                )));
            }
            let mut filters = Vec::with_capacity(rule.boosts.len());
            for (n, boost) in rule.boosts.iter().enumerate() {
                let amount = boost.amount;
                if !amount.is_finite() || amount == 0.0 || amount.abs() > MAX_BOOST {
                    return Err(bad(format!(
                        "boost {n}: amount {amount}; it moves a score by -{MAX_BOOST}..{MAX_BOOST}, not 0"
                    )));
                }
                let when = boost.filters().map_err(|e| {
                    let reason = match e {
                        RankError::InvalidInput(reason) => reason,
                        other => other.to_string(),
                    };
                    bad(format!("boost {n}: {reason}"))
                })?;
                filters.push((when, amount));
            }
            boosts.push(filters);
            if rule.items.len() > MAX_PINNED {
                return Err(bad(format!(
                    "{} items pinned; the limit is {MAX_PINNED}",
                    rule.items.len()
                )));
            }
            if rule.hidden.len() > MAX_HIDDEN {
                return Err(bad(format!(
                    "{} items hidden; the limit is {MAX_HIDDEN}",
                    rule.hidden.len()
                )));
            }
            for (n, id) in rule.items.iter().enumerate() {
                validate_id(id).map_err(|e| bad(format!("item {n}: {e}")))?;
                if rule.items[..n].contains(id) {
                    return Err(bad(format!("item {id:?} is pinned twice")));
                }
            }
            let mut hidden: HashSet<&str> = HashSet::with_capacity(rule.hidden.len());
            for (n, id) in rule.hidden.iter().enumerate() {
                validate_id(id).map_err(|e| bad(format!("hidden item {n}: {e}")))?;
                if rule.items.contains(id) {
                    return Err(bad(format!("item {id:?} is both pinned and hidden")));
                }
                if !hidden.insert(id) {
                    return Err(bad(format!("item {id:?} is hidden twice")));
                }
            }
            match (rule.starts_ms, rule.ends_ms) {
                (Some(start), _) if start < 0 => {
                    return Err(bad(format!("starts at {start} ms, before 1970")));
                }
                (Some(start), Some(end)) if end <= start => {
                    return Err(bad(format!(
                        "ends at {end} ms, not after it starts ({start} ms)"
                    )));
                }
                _ => {}
            }
            let same = match key {
                Key::Terms(read) => by_terms.entry(read).or_default(),
                Key::Category(category) => by_category.entry(category).or_default(),
                Key::Everywhere => &mut everywhere,
                Key::Contains(words) => by_words.entry(words).or_default(),
            };
            // One standing rule, and scheduled ones that never hold at once.
            let clash = same.iter().copied().find(|&other| {
                let other = &rules[other];
                other.is_scheduled() == rule.is_scheduled() && other.overlaps(rule)
            });
            if let Some(other) = clash {
                let reason = if rule.is_scheduled() {
                    format!("{target} has a scheduled rule already for part of that time")
                } else {
                    format!("{target} has a rule already")
                };
                return Err(PinError {
                    named_by: Some(other),
                    ..bad(reason)
                });
            }
            same.push(i);
        }
        Ok(Self {
            applied: Arc::new(rules.iter().map(|_| AtomicU64::new(0)).collect()),
            rules,
            boosts,
            words_first: by_words.keys().fold(HashMap::new(), |mut first, words| {
                if let Some(word) = words.first() {
                    first
                        .entry(word.clone())
                        .or_insert_with(Vec::new)
                        .push(words.clone());
                }
                first
            }),
            by_terms,
            by_category,
            everywhere,
            by_words,
        })
    }

    /// The rules `rules` (looked up in this set) applied to one ranking: merged as
    /// [`Applied::of`] merges them, and each counted (see [`Self::applied_counts`]).
    pub fn apply<'a>(&'a self, rules: impl IntoIterator<Item = Rule<'a>>) -> Applied {
        let rules: Vec<Rule<'a>> = rules.into_iter().collect();
        for rule in &rules {
            if let Some(count) = self.applied.get(rule.index) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Applied::of(rules)
    }

    /// How many rankings each rule (in set order) applied to since the set was made: a
    /// merchandiser's check that a rule is live and how often it shows. Counted by this
    /// process alone, from 0 at each `SetPins` and each start.
    pub fn applied_counts(&self) -> Vec<u64> {
        self.applied
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The rule in force at `now_ms` for a search (as typed or as corrected), if one names
    /// it.
    pub fn for_query(&self, query: &str, now_ms: i64) -> Option<Rule<'_>> {
        if self.by_terms.is_empty() {
            return None;
        }
        self.by_terms
            .get(&terms(query))
            .and_then(|rules| self.in_force(rules, now_ms))
    }

    /// Of one search's (or page's) rules, the scheduled one in force at `now_ms`, else its
    /// standing one.
    fn in_force(&self, rules: &[usize], now_ms: i64) -> Option<Rule<'_>> {
        let mut standing = None;
        for &i in rules {
            let rule = self.rules.get(i)?;
            if !rule.is_scheduled() {
                standing = Some(i);
            } else if rule.in_force_at(now_ms) {
                return self.rule(i);
            }
        }
        standing.and_then(|i| self.rule(i))
    }

    fn rule(&self, i: usize) -> Option<Rule<'_>> {
        Some(Rule {
            rule: self.rules.get(i)?,
            boosts: self.boosts.get(i)?,
            index: i,
        })
    }

    /// The rule in force at `now_ms` for a category's page, if one names it; `category` as a
    /// request's filter holds it (see [`crate::item::Filters`]).
    pub fn for_category(&self, category: &str, now_ms: i64) -> Option<Rule<'_>> {
        if self.by_category.is_empty() {
            return None;
        }
        self.by_category
            .get(&category_key(category))
            .and_then(|rules| self.in_force(rules, now_ms))
    }

    /// The rules in force at `now_ms` for searches containing words that `query` (as typed or
    /// as corrected) holds, each once.
    pub fn containing(&self, query: &str, now_ms: i64) -> Vec<Rule<'_>> {
        if self.words_first.is_empty() {
            return Vec::new();
        }
        let mut held = terms(query);
        held.sort_unstable();
        held.dedup();
        let mut found = Vec::new();
        for word in &held {
            for words in self.words_first.get(word).into_iter().flatten() {
                if words.iter().all(|w| held.binary_search(w).is_ok())
                    && let Some(rule) = self
                        .by_words
                        .get(words)
                        .and_then(|rules| self.in_force(rules, now_ms))
                {
                    found.push(rule);
                }
            }
        }
        found
    }

    /// The rule for every ranking in force at `now_ms`, if one is set.
    pub fn everywhere(&self, now_ms: i64) -> Option<Rule<'_>> {
        self.in_force(&self.everywhere, now_ms)
    }

    /// The rules as they were set.
    pub fn rules(&self) -> &[PinRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The pinned or hidden ids `known` says are not in the catalog, each once, in rule
    /// order: allowed (the item may come later, and until then the rule shows the others)
    /// but worth a warning.
    pub fn missing(&self, known: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in self
            .rules
            .iter()
            .flat_map(|r| r.items.iter().chain(&r.hidden))
        {
            if !known(id) && !out.contains(id) {
                out.push(id.clone());
            }
        }
        out
    }
}

/// Whether `url` is an address a front end can go to: a path on the shop's own site
/// (`/help/returns`) or an http(s) URL, at most [`MAX_REDIRECT_BYTES`], with no space or
/// control character (written `%20` in a URL).
fn check_redirect(url: &str) -> Result<(), String> {
    if url.len() > MAX_REDIRECT_BYTES {
        return Err(format!(
            "a redirect of {} bytes; the limit is {MAX_REDIRECT_BYTES}",
            url.len()
        ));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "redirect {url:?} holds {c:?}; a URL writes it escaped (a space is %20)"
        ));
    }
    let lower = url.to_ascii_lowercase();
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme));
    match rest {
        Some(host) if host.is_empty() || host.starts_with('/') => {
            Err(format!("redirect {url:?} names no host after its scheme"))
        }
        Some(_) => Ok(()),
        None if url.starts_with('/') => Ok(()),
        None => Err(format!(
            "redirect {url:?}: expected a path on the shop's site (/help/returns) or an http(s) URL"
        )),
    }
}

/// Whether `banner` is something a front end can show: at most [`MAX_BANNER_BYTES`], no
/// control character (one line), not only spaces.
fn check_banner(banner: &str) -> Result<(), String> {
    if banner.len() > MAX_BANNER_BYTES {
        return Err(format!(
            "a banner of {} bytes; the limit is {MAX_BANNER_BYTES}",
            banner.len()
        ));
    }
    if banner.chars().any(char::is_control) {
        return Err(format!("banner {banner:?} holds a control character"));
    }
    if banner.trim().is_empty() {
        return Err("a banner of spaces only".into());
    }
    Ok(())
}

/// The rules as `SetPins` takes them and `GetPins` lists them.
#[cfg(feature = "proto")]
mod wire {
    use souk_proto::ranker::v1 as pb;

    use super::{Boost, PinRule};

    impl From<pb::PinRule> for PinRule {
        fn from(rule: pb::PinRule) -> Self {
            PinRule {
                query: rule.query,
                category: rule.category,
                items: rule.items,
                hidden: rule.hidden,
                boosts: rule.boosts.into_iter().map(Boost::from).collect(),
                everywhere: rule.everywhere,
                contains: rule.contains,
                starts_ms: rule.starts_ms,
                ends_ms: rule.ends_ms,
                redirect: rule.redirect,
                banner: rule.banner,
            }
        }
    }

    impl From<&PinRule> for pb::PinRule {
        fn from(rule: &PinRule) -> Self {
            pb::PinRule {
                query: rule.query.clone(),
                category: rule.category.clone(),
                items: rule.items.clone(),
                hidden: rule.hidden.clone(),
                boosts: rule.boosts.iter().map(pb::Boost::from).collect(),
                everywhere: rule.everywhere,
                contains: rule.contains,
                starts_ms: rule.starts_ms,
                ends_ms: rule.ends_ms,
                redirect: rule.redirect.clone(),
                banner: rule.banner.clone(),
            }
        }
    }

    impl From<pb::Boost> for Boost {
        fn from(boost: pb::Boost) -> Self {
            let when = boost.when.unwrap_or_default();
            Boost {
                category: when.category,
                brands: when.brands,
                attributes: when
                    .attributes
                    .into_iter()
                    .map(|a| (a.name, a.values))
                    .collect(),
                in_stock: when.in_stock_only,
                min_price: when.min_price,
                max_price: when.max_price,
                amount: boost.amount,
            }
        }
    }

    impl From<&Boost> for pb::Boost {
        fn from(boost: &Boost) -> Self {
            pb::Boost {
                when: Some(pb::Filters {
                    category: boost.category.clone(),
                    brands: boost.brands.clone(),
                    min_price: boost.min_price,
                    max_price: boost.max_price,
                    in_stock_only: boost.in_stock,
                    attributes: boost
                        .attributes
                        .iter()
                        .map(|(name, values)| pb::AttributeFilter {
                            name: name.clone(),
                            values: values.clone(),
                        })
                        .collect(),
                }),
                amount: boost.amount,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(query: &str, items: &[&str]) -> PinRule {
        PinRule {
            query: query.into(),
            items: items.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn in_category(category: &str, items: &[&str]) -> PinRule {
        PinRule {
            query: String::new(),
            category: category.into(),
            ..rule("", items)
        }
    }

    fn hiding(query: &str, items: &[&str], hidden: &[&str]) -> PinRule {
        PinRule {
            hidden: hidden.iter().map(|s| s.to_string()).collect(),
            ..rule(query, items)
        }
    }

    #[test]
    fn a_rule_answers_its_search_however_it_is_written_and_no_other() {
        let pins = Pins::new(vec![
            rule("tent", &["t1", "t2"]),
            rule("hiking boots", &["b1"]),
        ])
        .unwrap();
        for query in ["tent", "Tents", " a TENT ", "tent!"] {
            assert_eq!(
                pins.for_query(query, 0).map(|r| r.items.clone()),
                Some(vec!["t1".to_string(), "t2".to_string()]),
                "{query}"
            );
        }
        assert_eq!(pins.for_query("Hiking Boot", 0).unwrap().items, ["b1"]);
        // Only the whole search: a longer or shorter one is not the rule's.
        for query in ["tent pegs", "boots", "hiking", "", "the"] {
            assert!(pins.for_query(query, 0).is_none(), "{query}");
        }
        assert!(Pins::default().for_query("tent", 0).is_none());
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_the_fault() {
        let refused = |rules: Vec<PinRule>| Pins::new(rules).unwrap_err().to_string();
        let ok = rule("tent", &["t1"]);
        assert_eq!(
            refused(vec![ok.clone(), rule("the", &["x"])]),
            "pin rule 1: query \"the\" has no word that search reads (stop words and punctuation are skipped)"
        );
        assert_eq!(
            refused(vec![rule("tent", &[])]),
            "pin rule 0: query \"tent\" pins, hides, boosts, redirects and shows nothing"
        );
        assert!(
            Pins::new(vec![hiding("tent", &[], &["lamp"])]).is_ok(),
            "hiding alone"
        );
        assert_eq!(
            refused(vec![hiding("tent", &["t1"], &["t1"])]),
            "pin rule 0: item \"t1\" is both pinned and hidden"
        );
        assert_eq!(
            refused(vec![hiding("tent", &[], &["x", "x"])]),
            "pin rule 0: item \"x\" is hidden twice"
        );
        assert!(
            refused(vec![hiding("tent", &[], &["x", ""])])
                .starts_with("pin rule 0: hidden item 1: ")
        );
        let hidden: Vec<String> = (0..=MAX_HIDDEN).map(|i| format!("h{i}")).collect();
        let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
        assert_eq!(
            refused(vec![hiding("tent", &[], &hidden)]),
            format!("pin rule 0: 257 items hidden; the limit is {MAX_HIDDEN}")
        );
        let many: Vec<String> = (0..=MAX_PINNED).map(|i| format!("i{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            refused(vec![rule("tent", &many)]),
            format!("pin rule 0: 17 items pinned; the limit is {MAX_PINNED}")
        );
        assert_eq!(
            refused(vec![rule("tent", &["t1", "t1"])]),
            "pin rule 0: item \"t1\" is pinned twice"
        );
        assert!(refused(vec![rule("tent", &["t1", ""])]).starts_with("pin rule 0: item 1: "));
        assert!(refused(vec![rule("tent", &["a\u{0}b"])]).contains("control character"));
        assert_eq!(
            refused(vec![ok.clone(), rule("Tents", &["t2"])]),
            "pin rule 1: query \"Tents\" has a rule already (pin rule 0)"
        );
        let long = "tent ".repeat(60);
        assert!(refused(vec![rule(&long, &["t1"])]).contains("the limit is 256"));
        let rules = vec![ok; MAX_PIN_RULES + 1];
        assert_eq!(refused(rules), "10001 rules; the limit is 10000");
    }

    #[test]
    fn a_category_rule_answers_its_page_only() {
        let pins = Pins::new(vec![
            in_category(" Tents ", &["t1"]),
            rule("tent", &["t2"]),
            in_category("Desk Lamps", &["l1"]),
        ])
        .unwrap();
        // As a request's category filter holds it (trimmed, lower-cased).
        for category in ["tents", "TENTS", " Tents"] {
            assert_eq!(
                pins.for_category(category, 0).unwrap().items,
                ["t1"],
                "{category}"
            );
        }
        assert_eq!(pins.for_category("desk lamps", 0).unwrap().items, ["l1"]);
        for category in ["tent", "outdoor", "desk lamp", ""] {
            assert!(pins.for_category(category, 0).is_none(), "{category}");
        }
        // The search and the page are two rules.
        assert_eq!(pins.for_query("tents", 0).unwrap().items, ["t2"]);
        assert!(pins.for_query("desk lamps", 0).is_none());
        assert_eq!(
            pins.for_category("tents", 0).unwrap().reason(),
            "featured by the shop in Tents"
        );
        assert_eq!(
            pins.for_query("tent", 0).unwrap().reason(),
            "featured by the shop for \"tent\""
        );

        let refused = |rules: Vec<PinRule>| Pins::new(rules).unwrap_err().to_string();
        assert_eq!(
            refused(vec![
                in_category("Tents", &["t1"]),
                in_category("tents", &["t2"])
            ]),
            "pin rule 1: category \"tents\" has a rule already (pin rule 0)"
        );
        assert_eq!(
            refused(vec![PinRule {
                category: "Tents".into(),
                ..rule("tent", &["t1"])
            }]),
            "pin rule 0: names both query \"tent\" and category \"Tents\"; a rule is for one"
        );
        assert_eq!(
            refused(vec![in_category("  ", &["t1"])]),
            "pin rule 0: names no query and no category (and does not apply everywhere)"
        );
        assert_eq!(
            refused(vec![in_category("Tents", &[])]),
            "pin rule 0: category \"Tents\" pins, hides, boosts, redirects and shows nothing"
        );
        assert!(refused(vec![in_category("a\u{7}b", &["t1"])]).contains("control character"));
        assert!(refused(vec![in_category(&"x".repeat(257), &["t1"])]).contains("the limit is 256"));
    }

    #[test]
    fn boosts_are_checked_and_described() {
        let boosted = |boosts: Vec<Boost>| PinRule {
            boosts,
            ..rule("tent", &[])
        };
        let brand = |amount: f32| Boost {
            brands: vec!["Acme".into()],
            amount,
            ..Default::default()
        };
        let pins = Pins::new(vec![boosted(vec![brand(0.2), brand(-1.0)])]).unwrap();
        let found = pins.for_query("tents", 0).unwrap();
        assert_eq!(found.boosts.len(), 2);
        assert_eq!(
            found.boosts[0].0.brands,
            ["acme"],
            "read as a filter reads it"
        );
        assert_eq!(found.boosts[1].1, -1.0);

        let refused =
            |boosts: Vec<Boost>| Pins::new(vec![boosted(boosts)]).unwrap_err().to_string();
        for amount in [0.0, 1.5, -1.01, f32::NAN, f32::INFINITY] {
            assert!(
                refused(vec![brand(0.1), brand(amount)]).starts_with(&format!(
                    "pin rule 0: boost 1: amount {amount}; it moves a score by -1..1, not 0"
                )),
                "{amount}"
            );
        }
        assert_eq!(
            refused(vec![Boost {
                amount: 0.1,
                ..Default::default()
            }]),
            "pin rule 0: boost 0: names no condition (a category, a brand, an attribute value, in stock or a price bound)"
        );
        assert!(
            refused(vec![Boost {
                attributes: vec![("color".into(), vec![])],
                amount: 0.1,
                ..Default::default()
            }])
            .starts_with("pin rule 0: boost 0: filters.attributes[0] (color) lists no value")
        );
        assert!(
            refused(vec![Boost {
                min_price: Some(50.0),
                max_price: Some(10.0),
                amount: 0.1,
                ..Default::default()
            }])
            .starts_with("pin rule 0: boost 0: ")
        );
        assert_eq!(
            refused(vec![brand(0.1); MAX_BOOSTS + 1]),
            "pin rule 0: 17 boosts; the limit is 16"
        );

        let described = Boost {
            category: " Tents ".into(),
            brands: vec!["Acme".into(), "Bigtop".into()],
            attributes: vec![("color".into(), vec!["green".into(), "black".into()])],
            in_stock: true,
            max_price: Some(50.0),
            amount: 0.1,
            ..Default::default()
        };
        assert_eq!(
            described.describe(),
            "category Tents, brand Acme or Bigtop, color green or black, in stock, under 50"
        );
    }

    #[test]
    fn the_rule_for_every_ranking_hides_and_boosts_beside_a_searchs_own() {
        let in_stock = Boost {
            in_stock: true,
            amount: 0.05,
            ..Default::default()
        };
        let everywhere = PinRule {
            hidden: vec!["recalled".into()],
            boosts: vec![in_stock.clone()],
            everywhere: true,
            ..rule("", &[])
        };
        let tent = PinRule {
            boosts: vec![Boost {
                brands: vec!["Acme".into()],
                amount: -0.2,
                ..Default::default()
            }],
            ..hiding("tent", &["t1"], &["lamp"])
        };
        let pins = Pins::new(vec![tent, everywhere.clone()]).unwrap();
        assert!(pins.everywhere(0).is_some_and(|r| r.everywhere));
        // It is no search's and no page's rule.
        assert!(pins.for_query("", 0).is_none());
        assert!(pins.for_category("", 0).is_none());

        let both = Applied::of(
            pins.for_query("tents", 0)
                .into_iter()
                .chain(pins.everywhere(0)),
        );
        assert_eq!(both.pinned, ["t1"]);
        assert_eq!(both.pin_reason, "featured by the shop for \"tent\"");
        assert_eq!(both.hidden, ["lamp", "recalled"]);
        assert_eq!(
            both.boosts.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
            [-0.2, 0.05]
        );
        assert_eq!(both.written.len(), 2);
        assert_eq!(both.written[1], in_stock);
        let alone = Applied::of(
            pins.for_query("stove", 0)
                .into_iter()
                .chain(pins.everywhere(0)),
        );
        assert!(alone.pinned.is_empty(), "it pins nothing");
        assert_eq!(alone.hidden, ["recalled"]);
        assert_eq!(alone.boosts.len(), 1);
        assert!(Applied::of(None).boosts.is_empty());

        let refused = |rules: Vec<PinRule>| Pins::new(rules).unwrap_err().to_string();
        assert_eq!(
            refused(vec![everywhere.clone(), everywhere.clone()]),
            "pin rule 1: every ranking has a rule already (pin rule 0)"
        );
        assert_eq!(
            refused(vec![PinRule {
                items: vec!["t1".into()],
                ..everywhere.clone()
            }]),
            "pin rule 0: the rule for every ranking pins an item (pins are set per search or category; it hides and boosts)"
        );
        assert_eq!(
            refused(vec![PinRule {
                query: "tent".into(),
                ..everywhere.clone()
            }]),
            "pin rule 0: applies everywhere yet names query \"tent\"; a rule for every ranking names no query and no category"
        );
        assert_eq!(
            refused(vec![PinRule {
                hidden: vec![],
                boosts: vec![],
                ..everywhere
            }]),
            "pin rule 0: every ranking pins, hides, boosts, redirects and shows nothing"
        );
    }

    #[test]
    fn a_scheduled_rule_replaces_the_standing_one_while_in_force() {
        let (march, april, may) = (1_000, 2_000, 3_000);
        let during = |from: Option<i64>, until: Option<i64>, items: &[&str]| PinRule {
            starts_ms: from,
            ends_ms: until,
            ..rule("tent", items)
        };
        let pins = Pins::new(vec![
            rule("tent", &["standing"]),
            during(Some(march), Some(april), &["march"]),
            during(Some(may), None, &["from may"]),
            PinRule {
                query: String::new(),
                hidden: vec!["x".into()],
                everywhere: true,
                ..during(Some(april), Some(may), &[])
            },
        ])
        .unwrap();
        let at = |now: i64| pins.for_query("tents", now).map(|r| r.items.clone());
        let one = |id: &str| Some(vec![id.to_string()]);
        assert_eq!(at(0), one("standing"));
        assert_eq!(at(march - 1), one("standing"));
        assert_eq!(at(march), one("march"), "from its start, included");
        assert_eq!(at(april - 1), one("march"));
        assert_eq!(at(april), one("standing"), "until its end, not included");
        assert_eq!(at(may), one("from may"));
        assert_eq!(at(i64::MAX), one("from may"));
        // Every ranking's rule only in April; no standing one.
        assert!(pins.everywhere(march).is_none());
        assert_eq!(pins.everywhere(april).unwrap().hidden, ["x"]);
        assert!(pins.everywhere(may).is_none());

        let refused = |rules: Vec<PinRule>| Pins::new(rules).unwrap_err().to_string();
        assert_eq!(
            refused(vec![
                during(Some(march), Some(may), &["a"]),
                during(Some(april), None, &["b"]),
            ]),
            "pin rule 1: query \"tent\" has a scheduled rule already for part of that time (pin rule 0)"
        );
        assert!(
            Pins::new(vec![
                during(None, Some(april), &["a"]),
                during(Some(april), None, &["b"]),
                rule("tent", &["c"]),
            ])
            .is_ok(),
            "back to back, and a standing rule beside them"
        );
        assert_eq!(
            refused(vec![during(Some(april), Some(april), &["a"])]),
            "pin rule 0: ends at 2000 ms, not after it starts (2000 ms)"
        );
        assert_eq!(
            refused(vec![during(Some(-1), None, &["a"])]),
            "pin rule 0: starts at -1 ms, before 1970"
        );
        assert_eq!(
            refused(vec![rule("tent", &["a"]), rule("Tents", &["b"])]),
            "pin rule 1: query \"Tents\" has a rule already (pin rule 0)"
        );
    }

    #[test]
    fn a_rule_containing_words_applies_to_every_search_holding_them() {
        let holding = |query: &str, hidden: &[&str]| PinRule {
            contains: true,
            ..hiding(query, &[], hidden)
        };
        let pins = Pins::new(vec![
            rule("tent", &["t1"]),
            holding("Tents", &["lamp"]),
            holding("sleeping bag", &["pad"]),
            holding("bag", &["purse"]),
        ])
        .unwrap();
        let hidden = |query: &str| -> Vec<String> {
            let mut all: Vec<String> = pins
                .containing(query, 0)
                .iter()
                .flat_map(|r| r.hidden.clone())
                .collect();
            all.sort();
            all
        };
        assert_eq!(hidden("tent"), ["lamp"]);
        assert_eq!(hidden("family tents for 4"), ["lamp"]);
        assert_eq!(
            hidden("bag for sleeping"),
            ["pad", "purse"],
            "any order, both rules"
        );
        assert_eq!(
            hidden("sleeping pad"),
            Vec::<String>::new(),
            "every word, not one"
        );
        assert_eq!(hidden("stove"), Vec::<String>::new());
        // The search's own rule is apart: it still pins.
        assert_eq!(pins.for_query("tent", 0).unwrap().items, ["t1"]);
        assert!(pins.for_query("bag", 0).is_none());

        let refused = |rules: Vec<PinRule>| Pins::new(rules).unwrap_err().to_string();
        assert_eq!(
            refused(vec![holding("tent", &["a"]), holding("Tents", &["b"])]),
            "pin rule 1: any search with \"Tents\" has a rule already (pin rule 0)"
        );
        assert_eq!(
            refused(vec![PinRule {
                contains: true,
                ..rule("tent", &["t1"])
            }]),
            "pin rule 0: the rule for any search with \"tent\" pins an item (pins are set per search or category; it hides and boosts)"
        );
        assert_eq!(
            refused(vec![PinRule {
                contains: true,
                ..in_category("Tents", &["t1"])
            }]),
            "pin rule 0: category \"Tents\" with `contains`: only a search's words are contained"
        );
        assert_eq!(
            refused(vec![PinRule {
                query: String::new(),
                everywhere: true,
                ..holding("", &["a"])
            }]),
            "pin rule 0: applies everywhere and to searches containing words; it is one or the other"
        );
    }

    #[test]
    fn a_searchs_rule_may_redirect_and_no_other_rule_may() {
        let returns = PinRule {
            query: "returns".into(),
            redirect: "/help/returns".into(),
            ..Default::default()
        };
        let everywhere = PinRule {
            everywhere: true,
            hidden: vec!["recalled".into()],
            ..Default::default()
        };
        let pins = Pins::new(vec![returns.clone(), everywhere.clone()]).unwrap();
        let applied = Applied::of(
            pins.for_query("Returns", 0)
                .into_iter()
                .chain(pins.everywhere(0)),
        );
        assert_eq!(applied.redirect.as_deref(), Some("/help/returns"));
        assert!(applied.pinned.is_empty(), "a redirect alone pins nothing");
        assert_eq!(applied.hidden, ["recalled"]);
        assert_eq!(Applied::of(pins.everywhere(0)).redirect, None);

        let refused = |rule: PinRule| Pins::new(vec![rule]).unwrap_err().to_string();
        let to = |redirect: &str| PinRule {
            redirect: redirect.into(),
            ..returns.clone()
        };
        for fine in [
            "/",
            "/help/returns?from=search",
            "https://help.example.com/returns",
            "HTTP://example.com",
        ] {
            assert!(Pins::new(vec![to(fine)]).is_ok(), "{fine}");
        }
        assert_eq!(
            refused(to("help/returns")),
            "pin rule 0: redirect \"help/returns\": expected a path on the shop's site (/help/returns) or an http(s) URL"
        );
        assert_eq!(
            refused(to("/help/free returns")),
            "pin rule 0: redirect \"/help/free returns\" holds ' '; a URL writes it escaped (a space is %20)"
        );
        assert_eq!(
            refused(to("https://")),
            "pin rule 0: redirect \"https://\" names no host after its scheme"
        );
        assert_eq!(
            refused(to("javascript:alert(1)")),
            "pin rule 0: redirect \"javascript:alert(1)\": expected a path on the shop's site (/help/returns) or an http(s) URL"
        );
        assert_eq!(
            refused(to(&format!("/{}", "a".repeat(MAX_REDIRECT_BYTES)))),
            "pin rule 0: a redirect of 2049 bytes; the limit is 2048"
        );
        for (rule, target) in [
            (
                PinRule {
                    redirect: "/x".into(),
                    ..everywhere
                },
                "every ranking",
            ),
            (
                PinRule {
                    redirect: "/x".into(),
                    ..in_category("Tents", &["t1"])
                },
                "category \"Tents\"",
            ),
            (
                PinRule {
                    contains: true,
                    hidden: vec!["lamp".into()],
                    ..to("/x")
                },
                "any search with \"returns\"",
            ),
        ] {
            assert_eq!(
                refused(rule),
                format!(
                    "pin rule 0: the rule for {target} redirects; a redirect answers one search (a query's own rule)"
                )
            );
        }
    }

    #[test]
    fn banners_come_from_every_rule_applied_each_once() {
        let with_banner = |rule: PinRule, banner: &str| PinRule {
            banner: banner.into(),
            ..rule
        };
        let pins = Pins::new(vec![
            with_banner(rule("tent", &["t1"]), "Tents: free shipping"),
            with_banner(
                PinRule {
                    contains: true,
                    hidden: vec!["lamp".into()],
                    ..rule("tent", &[])
                },
                "Camping week",
            ),
            with_banner(
                PinRule {
                    everywhere: true,
                    ..Default::default()
                },
                "Camping week",
            ),
            with_banner(
                PinRule {
                    query: "stove".into(),
                    ..Default::default()
                },
                "Stoves, with a comma",
            ),
        ])
        .unwrap();
        let banners = |query: &str| {
            Applied::of(
                pins.for_query(query, 0)
                    .into_iter()
                    .chain(pins.containing(query, 0))
                    .chain(pins.everywhere(0)),
            )
            .banners
        };
        assert_eq!(banners("tents"), ["Tents: free shipping", "Camping week"]);
        assert_eq!(banners("tent pegs"), ["Camping week"], "each once");
        assert_eq!(banners("stove"), ["Stoves, with a comma", "Camping week"]);
        assert_eq!(banners("lamp"), ["Camping week"]);

        let refused = |banner: &str| {
            Pins::new(vec![with_banner(rule("tent", &[]), banner)])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("two\nlines"),
            "pin rule 0: banner \"two\\nlines\" holds a control character"
        );
        assert_eq!(refused("   "), "pin rule 0: a banner of spaces only");
        assert_eq!(
            refused(&"b".repeat(MAX_BANNER_BYTES + 1)),
            "pin rule 0: a banner of 1025 bytes; the limit is 1024"
        );
        assert_eq!(
            Pins::new(vec![rule("tent", &[])]).unwrap_err().to_string(),
            "pin rule 0: query \"tent\" pins, hides, boosts, redirects and shows nothing"
        );
    }

    #[test]
    fn each_rule_counts_the_rankings_it_applied_to() {
        let pins = Pins::new(vec![
            rule("tent", &["t1"]),
            PinRule {
                everywhere: true,
                hidden: vec!["recalled".into()],
                ..Default::default()
            },
            rule("stove", &["s1"]),
        ])
        .unwrap();
        assert_eq!(pins.applied_counts(), [0, 0, 0]);
        for query in ["tent", "Tents", "lamp"] {
            let applied = pins.apply(
                pins.for_query(query, 0)
                    .into_iter()
                    .chain(pins.everywhere(0)),
            );
            assert_eq!(applied.hidden, ["recalled"]);
        }
        assert_eq!(pins.applied_counts(), [2, 3, 0]);
        // A copy of the set shares its counts (the catalog's rebuilds keep one set).
        let copy = pins.clone();
        copy.apply(copy.for_query("stove", 0));
        assert_eq!(pins.applied_counts(), [2, 3, 1]);
        // A new set starts from 0.
        let again = Pins::new(pins.rules().to_vec()).unwrap();
        assert_eq!(again.applied_counts(), [0, 0, 0]);
    }

    #[test]
    fn ids_not_in_the_catalog_are_named_once() {
        let pins = Pins::new(vec![
            rule("tent", &["t1", "gone", "t2"]),
            hiding("stove", &["gone", "s1", "later"], &["s2", "hid"]),
        ])
        .unwrap();
        let known = |id: &str| id.starts_with('t') || id.starts_with('s');
        assert_eq!(pins.missing(known), ["gone", "later", "hid"]);
        assert!(pins.missing(|_| true).is_empty());
    }
}
