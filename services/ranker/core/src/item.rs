//! Catalog items, request filters and interaction events, validated.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::RankError;

/// Longest item id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// A product as the ranker stores it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub id: String,
    pub title: String,
    pub description: String,
    /// Category path from the root.
    pub category: Vec<String>,
    pub brand: String,
    pub price: f64,
    pub attributes: Attributes,
    pub in_stock: bool,
}

/// An item's attributes, name -> value, sorted by name with one value per name (as a
/// `BTreeMap` would hold them, and stored the same way: a JSON object), in one allocation
/// of exactly the pairs held. A `BTreeMap` allocates a whole node (11 pairs, ~550 bytes) for
/// the first pair, which was ~20% of the ranker's memory per item at a million items with
/// one attribute each (BENCHMARKS.md, "Session 30").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes(Box<[(String, String)]>);

impl Attributes {
    /// The value of `name` (exact, case and all).
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Every `(name, value)`, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.into_iter()
    }

    /// Sets `name`'s value, handing back the one it replaces (a `BTreeMap`'s `insert`; it
    /// copies the pairs, which is fine at an item's handful).
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&name)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                let mut pairs = std::mem::take(&mut self.0).into_vec();
                pairs.insert(i, (name, value));
                self.0 = pairs.into_boxed_slice();
                None
            }
        }
    }

    /// Keeps the pairs `keep` says yes to (a `BTreeMap`'s `retain`).
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &String) -> bool) {
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        pairs.retain(|(k, v)| keep(k, v));
        self.0 = pairs.into_boxed_slice();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Pairs in any order; of two with one name the later is kept, as a `BTreeMap` keeps it.
impl FromIterator<(String, String)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: pairs with one name stay in the order given, so the last of each run wins.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Self(kept.into_boxed_slice())
    }
}

impl<const N: usize> From<[(String, String); N]> for Attributes {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl serde::Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

/// Checks an item id.
///
/// # Errors
/// `InvalidInput` when it is empty, too long or holds control characters.
pub fn validate_id(id: &str) -> Result<(), RankError> {
    if id.trim().is_empty() {
        return Err(RankError::InvalidInput("item id is empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(RankError::InvalidInput(format!(
            "item id is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(RankError::InvalidInput(format!(
            "item id {id:?} contains a control character"
        )));
    }
    Ok(())
}

/// Removes control characters (tabs, newlines, NUL) and trims: they would break the graph's
/// entity names and the TSV exports.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refuses two attribute names that are one attribute once whitespace is normalised and case
/// is folded ("color" and "Color "): filters and facets read them as one, and which of the
/// two values to keep is not the ranker's to guess (a request's map has no order).
///
/// # Errors
/// `InvalidInput` naming the item and the two names.
pub fn one_attribute_per_name<'a>(
    id: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), RankError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for name in names {
        let folded = clean(name).to_lowercase();
        if folded.is_empty() {
            continue;
        }
        if let Some(other) = seen.insert(folded, name) {
            let (a, b) = if other <= name {
                (other, name)
            } else {
                (name, other)
            };
            return Err(RankError::InvalidInput(if a == b {
                format!("item {id:?}: attribute {a:?} is given twice; give it once")
            } else {
                format!(
                    "item {id:?}: attributes {a:?} and {b:?} are one attribute (names are read \
                     without case or extra spaces); give it once"
                )
            }));
        }
    }
    Ok(())
}

impl Item {
    /// Validates and normalises an item: id rules, a finite non-negative price, a title, and
    /// whitespace-normalised category, brand and attribute names.
    ///
    /// # Errors
    /// `InvalidInput` naming the item and the field.
    pub fn validated(mut self) -> Result<Self, RankError> {
        validate_id(&self.id)?;
        let bad = |why: String| RankError::InvalidInput(format!("item {:?}: {why}", self.id));
        if !self.price.is_finite() || self.price < 0.0 {
            return Err(bad(format!(
                "price must be finite and >= 0, got {}",
                self.price
            )));
        }
        if self.title.trim().is_empty() {
            return Err(bad("title is empty".into()));
        }
        self.category = self
            .category
            .iter()
            .map(|c| clean(c))
            .filter(|c| !c.is_empty())
            .collect();
        self.brand = clean(&self.brand);
        self.attributes = self
            .attributes
            .iter()
            .map(|(k, v)| (clean(k), clean(v)))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .collect();
        for (what, value) in std::iter::once(("brand", &self.brand))
            .chain(self.category.iter().map(|c| ("category", c)))
        {
            if value.len() > 512 {
                return Err(bad(format!(
                    "{what} is {} bytes; the limit is 512",
                    value.len()
                )));
            }
        }
        Ok(self)
    }

    /// This item with its price, stock and attributes changed where given (`UpdateItems`):
    /// an attribute set to an empty value is removed, the others are kept; a name matches the
    /// item's whatever its case; validated as [`Item::validated`]. Its text does not change,
    /// so neither does its vector.
    ///
    /// # Errors
    /// `InvalidInput` naming the item: a price that is not finite and >= 0, an empty
    /// attribute name, two names of one attribute ([`one_attribute_per_name`]).
    pub fn updated(
        mut self,
        price: Option<f64>,
        in_stock: Option<bool>,
        attributes: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, RankError> {
        if let Some(price) = price {
            self.price = price;
        }
        if let Some(in_stock) = in_stock {
            self.in_stock = in_stock;
        }
        let attributes: Vec<(String, String)> = attributes.into_iter().collect();
        one_attribute_per_name(&self.id, attributes.iter().map(|(k, _)| k.as_str()))?;
        for (name, value) in attributes {
            let name = clean(&name);
            if name.is_empty() {
                return Err(RankError::InvalidInput(format!(
                    "item {:?}: an attribute name is empty",
                    self.id
                )));
            }
            // One attribute whatever the case of its name, as filters and facets read it: a
            // feed writing "Color" replaces (or removes) the item's "color", and the case
            // given is kept.
            let folded = name.to_lowercase();
            self.attributes.retain(|k, _| k.to_lowercase() != folded);
            self.attributes.insert(name, value);
        }
        self.validated()
    }

    /// The text the encoder embeds and BM25 indexes.
    pub fn text(&self) -> String {
        if self.description.is_empty() {
            self.title.clone()
        } else {
            format!("{}. {}", self.title, self.description)
        }
    }

    /// The knowledge-graph entity of this item.
    pub fn entity(&self) -> String {
        item_entity(&self.id)
    }

    /// Facts about the item for the knowledge graph: brand, category chain, attributes. A
    /// fact naming an entity over [`GRAPH_NAME_BYTES`] (a very long attribute value, a deep
    /// category path) is left out: the graph would refuse the whole batch it came in.
    pub fn facts(&self) -> Vec<Fact> {
        let me = self.entity();
        let mut facts = Vec::new();
        if !self.brand.is_empty() {
            facts.push((me.clone(), "brand".into(), format!("brand:{}", self.brand)));
        }
        let mut path = String::new();
        let mut parent: Option<String> = None;
        for level in &self.category {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(level);
            let node = format!("category:{path}");
            if let Some(p) = &parent {
                facts.push((node.clone(), "parent".into(), p.clone()));
            }
            parent = Some(node);
        }
        if let Some(leaf) = parent {
            facts.push((me.clone(), "category".into(), leaf));
        }
        for (k, v) in &self.attributes {
            facts.push((me.clone(), "attribute".into(), format!("attr:{k}={v}")));
        }
        facts.retain(|(head, _, tail)| {
            head.len() <= GRAPH_NAME_BYTES && tail.len() <= GRAPH_NAME_BYTES
        });
        facts
    }
}

/// Longest entity name the knowledge graph takes, in bytes (`souk_kg_core::MAX_FIELD_BYTES`).
pub const GRAPH_NAME_BYTES: usize = 1024;

/// A knowledge-graph triple: (head, relation, tail).
pub type Fact = (String, String, String);

/// The facts `before` stated about the item that `after` (its new version) no longer states:
/// what a load or update removes from the graph, so a recoloured item loses its old colour.
/// Only the item's own edges: the category chain's `parent` edges are shared by every item
/// of the category. Facts loaded into the graph by hand are not the catalog's and stay.
pub fn dropped_facts(before: &Item, after: &Item) -> Vec<Fact> {
    let me = before.entity();
    let kept: HashSet<Fact> = after.facts().into_iter().collect();
    before
        .facts()
        .into_iter()
        .filter(|fact| fact.0 == me && !kept.contains(fact))
        .collect()
}

/// The relations of an item's own edges, which the catalog states (see [`Item::facts`]): the
/// graph's edges of these from an item are the catalog's to keep true.
pub const ITEM_RELATIONS: [&str; 3] = ["brand", "category", "attribute"];

/// Where the graph's out-edges of `item` (`stated`: `(relation, tail)`, any relation) differ
/// from its own facts: `(stale, missing)`, the edges of [`ITEM_RELATIONS`] it states and the
/// item does not, and the item's own facts it lacks, each in the order found. Edges of other
/// relations (loaded by hand: "accessory_of", ...) are not the catalog's.
pub fn graph_difference(item: &Item, stated: &[(String, String)]) -> (Vec<Fact>, Vec<Fact>) {
    let me = item.entity();
    let own: Vec<Fact> = item.facts().into_iter().filter(|f| f.0 == me).collect();
    let held: HashSet<(&str, &str)> = own
        .iter()
        .map(|(_, relation, tail)| (relation.as_str(), tail.as_str()))
        .collect();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut stale = Vec::new();
    for (relation, tail) in stated {
        if !ITEM_RELATIONS.contains(&relation.as_str()) {
            continue;
        }
        let edge = (relation.as_str(), tail.as_str());
        if !held.contains(&edge) && seen.insert(edge) {
            stale.push((me.clone(), relation.clone(), tail.clone()));
        }
    }
    let found: HashSet<(&str, &str)> = stated
        .iter()
        .map(|(relation, tail)| (relation.as_str(), tail.as_str()))
        .collect();
    let missing = own
        .into_iter()
        .filter(|(_, relation, tail)| !found.contains(&(relation.as_str(), tail.as_str())))
        .collect();
    (stale, missing)
}

/// Now, in ms since the Unix epoch: the clock events are timed by and scheduled pin rules
/// are read at (0 on a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The earliest event time taken, 1973-03-03T09:46:40Z: a time under it is almost surely Unix
/// seconds sent for milliseconds (today's seconds stay under it until the year 5138), which
/// would date the event to January 1970.
pub const MIN_EVENT_MS: i64 = 100_000_000_000;

/// How far ahead of the clock an event's time may be (clocks of shops' servers drift;
/// microseconds sent for milliseconds are centuries ahead).
pub const MAX_EVENT_AHEAD_MS: i64 = 24 * 3_600_000;

/// Checks an event's time (`timestamp_ms`) against `now_ms`: 0 (which means "now"), or Unix
/// milliseconds from [`MIN_EVENT_MS`] to a day ahead.
///
/// # Errors
/// The reason, naming the likely mistake (seconds or microseconds for milliseconds).
pub fn check_event_ms(timestamp_ms: i64, now_ms: i64) -> Result<(), String> {
    let t = timestamp_ms;
    if (1..MIN_EVENT_MS).contains(&t) {
        return Err(format!(
            "timestamp_ms {t} would be in 1970-1973: Unix seconds? (send milliseconds, or 0 for now)"
        ));
    }
    if t < 0 || t > now_ms.saturating_add(MAX_EVENT_AHEAD_MS) {
        return Err(format!(
            "timestamp_ms {t} is not Unix time in milliseconds up to a day from now ({now_ms})"
        ));
    }
    Ok(())
}

/// `item:<id>`, how items are named in the knowledge graph.
pub fn item_entity(id: &str) -> String {
    format!("item:{id}")
}

/// The item id inside an `item:<id>` entity.
pub fn entity_item(entity: &str) -> Option<&str> {
    entity.strip_prefix("item:")
}

/// A category as a filter holds it (and a category page's pin rule is keyed by it):
/// trimmed, lower-cased.
pub(crate) fn category_key(category: &str) -> String {
    category.trim().to_lowercase()
}

/// Restrictions on what `Rank` may return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Lower-cased; matches any level of the category path.
    pub category: Option<String>,
    /// Lower-cased brands; empty means any.
    pub brands: Vec<String>,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    pub in_stock_only: bool,
    /// Attribute names with the values each may take (any of them), all cleaned as item
    /// attributes are and lower-cased; sorted by name, values sorted and deduplicated.
    pub attributes: Vec<(String, Vec<String>)>,
}

/// Most attributes one request may filter on.
pub const MAX_ATTRIBUTE_FILTERS: usize = 32;
/// Most values one attribute filter may list.
pub const MAX_ATTRIBUTE_VALUES: usize = 256;

impl Filters {
    /// # Errors
    /// `InvalidInput` for a negative or non-finite price bound, min above max, or an empty
    /// brand.
    pub fn new(
        category: &str,
        brands: &[String],
        min_price: Option<f64>,
        max_price: Option<f64>,
        in_stock_only: bool,
    ) -> Result<Self, RankError> {
        for (name, v) in [
            ("filters.min_price", min_price),
            ("filters.max_price", max_price),
        ] {
            if let Some(v) = v
                && (!v.is_finite() || v < 0.0)
            {
                return Err(RankError::InvalidInput(format!(
                    "{name} must be finite and >= 0, got {v}"
                )));
            }
        }
        if let (Some(lo), Some(hi)) = (min_price, max_price)
            && lo > hi
        {
            return Err(RankError::InvalidInput(format!(
                "filters.min_price ({lo}) is above filters.max_price ({hi})"
            )));
        }
        // An empty name would read as no brand filter at all: every brand passing where the
        // caller meant one (a shop front end sending an unset selection).
        if let Some(i) = brands.iter().position(|b| b.trim().is_empty()) {
            return Err(RankError::InvalidInput(format!(
                "filters.brands[{i}] is empty"
            )));
        }
        Ok(Self {
            category: Some(category_key(category)).filter(|c| !c.is_empty()),
            brands: brands.iter().map(|b| b.trim().to_lowercase()).collect(),
            min_price,
            max_price,
            in_stock_only,
            attributes: Vec::new(),
        })
    }

    /// Adds attribute filters: an item passes when, for every named attribute, its value is
    /// one of those listed (names and values compared as item attributes are stored, cleaned
    /// of control characters and extra spaces, and case-insensitively).
    ///
    /// # Errors
    /// `InvalidInput` naming the filter (`filters.attributes[i]`) for an empty name, a name
    /// given twice, no value, an empty value, or more than [`MAX_ATTRIBUTE_FILTERS`]
    /// attributes or [`MAX_ATTRIBUTE_VALUES`] values.
    pub fn with_attributes(
        mut self,
        attributes: impl IntoIterator<Item = (String, Vec<String>)>,
    ) -> Result<Self, RankError> {
        let bad = RankError::InvalidInput;
        let mut parsed: Vec<(String, Vec<String>)> = Vec::new();
        for (i, (name, values)) in attributes.into_iter().enumerate() {
            let at = format!("filters.attributes[{i}]");
            if i >= MAX_ATTRIBUTE_FILTERS {
                return Err(bad(format!(
                    "{at}: at most {MAX_ATTRIBUTE_FILTERS} attributes may be filtered on"
                )));
            }
            let key = clean(&name).to_lowercase();
            if key.is_empty() {
                return Err(bad(format!("{at}: the attribute name is empty")));
            }
            if values.len() > MAX_ATTRIBUTE_VALUES {
                return Err(bad(format!(
                    "{at} ({key}): {} values; the limit is {MAX_ATTRIBUTE_VALUES}",
                    values.len()
                )));
            }
            let mut wanted = Vec::with_capacity(values.len());
            for (j, v) in values.iter().enumerate() {
                let v = clean(v).to_lowercase();
                if v.is_empty() {
                    return Err(bad(format!("{at} ({key}): value {j} is empty")));
                }
                wanted.push(v);
            }
            if wanted.is_empty() {
                return Err(bad(format!("{at} ({key}) lists no value")));
            }
            if parsed.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!(
                    "{at}: attribute {key:?} is named twice (list all its values in one filter)"
                )));
            }
            wanted.sort_unstable();
            wanted.dedup();
            parsed.push((key, wanted));
        }
        parsed.sort_unstable();
        self.attributes = parsed;
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `item` passes (the reference the ranker's facet index answers by, see
    /// `facet::Filter::accepts`).
    pub fn accepts(&self, item: &Item) -> bool {
        if !self.accepts_stock_and_price(item) {
            return false;
        }
        if !self.brands.is_empty() && !self.brands.contains(&item.brand.to_lowercase()) {
            return false;
        }
        if let Some(category) = &self.category
            && !item.category.iter().any(|c| c.to_lowercase() == *category)
        {
            return false;
        }
        self.attributes.iter().all(|(key, values)| {
            item.attributes.iter().any(|(k, v)| {
                k.to_lowercase() == *key && values.binary_search(&v.to_lowercase()).is_ok()
            })
        })
    }

    /// The part of [`Self::accepts`] that reads numbers, not names: stock and price.
    pub fn accepts_stock_and_price(&self, item: &Item) -> bool {
        !(self.in_stock_only && !item.in_stock
            || self.min_price.is_some_and(|lo| item.price < lo)
            || self.max_price.is_some_and(|hi| item.price > hi))
    }
}

/// What a shopper did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InteractionKind {
    View,
    Click,
    Cart,
    Purchase,
    Rating,
}

impl InteractionKind {
    /// Parses `view`, `click`, `cart`, `purchase` or `rating` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "view" => Some(Self::View),
            "click" => Some(Self::Click),
            "cart" | "add_to_cart" => Some(Self::Cart),
            "purchase" | "buy" | "bought" => Some(Self::Purchase),
            "rating" | "rate" => Some(Self::Rating),
            _ => None,
        }
    }

    /// The verb explanations use ("the X you bought").
    pub fn past_tense(self) -> &'static str {
        match self {
            Self::View | Self::Click => "viewed",
            Self::Cart => "added to your cart",
            Self::Purchase => "bought",
            Self::Rating => "rated",
        }
    }
}

/// One event, with the user already pseudonymised.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interaction {
    pub user: crate::UserKey,
    pub item_id: String,
    pub kind: InteractionKind,
    pub value: f32,
    pub timestamp_ms: i64,
}

impl Interaction {
    /// How much the event says about taste: a purchase means more than a view; a rating
    /// counts by how high it is (a 1-star rating adds almost nothing).
    pub fn weight(&self) -> f32 {
        match self.kind {
            InteractionKind::View => 1.0,
            InteractionKind::Click => 2.0,
            InteractionKind::Cart => 3.0,
            InteractionKind::Purchase => 5.0,
            InteractionKind::Rating => (self.value.clamp(0.0, 5.0) - 1.0).max(0.25),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_refuse_seconds_and_microseconds_sent_for_milliseconds() {
        let now = 1_788_238_930_000; // 2026-09-01
        assert_eq!(check_event_ms(now, now), Ok(()));
        assert_eq!(check_event_ms(0, now), Ok(()), "0 means now");
        assert_eq!(check_event_ms(MIN_EVENT_MS, now), Ok(()));
        assert_eq!(check_event_ms(now + MAX_EVENT_AHEAD_MS, now), Ok(()));
        let seconds = check_event_ms(now / 1000, now).unwrap_err();
        assert!(seconds.contains("Unix seconds?"), "{seconds}");
        assert!(check_event_ms(MIN_EVENT_MS - 1, now).is_err());
        let micros = check_event_ms(now * 1000, now).unwrap_err();
        assert!(micros.contains("up to a day from now"), "{micros}");
        assert!(check_event_ms(now + MAX_EVENT_AHEAD_MS + 1, now).is_err());
        assert!(check_event_ms(-5, now).is_err());
    }

    fn item() -> Item {
        Item {
            id: "p1".into(),
            title: "Trail Tent".into(),
            description: String::new(),
            category: vec!["Outdoor".into(), " Tents\t".into()],
            brand: "Acme".into(),
            price: 120.0,
            attributes: [("color".to_string(), "green".to_string())].into(),
            in_stock: true,
        }
    }

    /// An update changes what it names and keeps the rest: the title, the text and so the
    /// vector never change; an empty value removes an attribute; a bad price is refused.
    #[test]
    fn an_update_changes_only_what_it_names() {
        let item = Item {
            id: "p1".into(),
            title: "Trail Tent".into(),
            description: "Two people.".into(),
            category: vec!["Outdoor".into(), "Tents".into()],
            brand: "Northpeak".into(),
            price: 199.0,
            attributes: [
                ("color".to_string(), "green".to_string()),
                ("size".to_string(), "2".to_string()),
            ]
            .into(),
            in_stock: true,
        };
        let updated = item
            .clone()
            .updated(
                Some(149.5),
                None,
                [
                    ("color".to_string(), " red ".to_string()),
                    ("size".to_string(), String::new()),
                    (" weight ".to_string(), "2 kg".to_string()),
                ],
            )
            .unwrap();
        assert_eq!(updated.price, 149.5);
        assert!(updated.in_stock, "stock unchanged");
        let attributes: Vec<(&str, &str)> = updated
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(attributes, [("color", "red"), ("weight", "2 kg")]);
        assert_eq!(updated.text(), item.text());
        assert_eq!(
            (&updated.title, &updated.category, &updated.brand),
            (&item.title, &item.category, &item.brand)
        );
        // A name in another case is the same attribute: replaced in the case given, or removed.
        let recased = item
            .clone()
            .updated(
                None,
                None,
                [
                    ("Color".to_string(), "red".to_string()),
                    ("SIZE".to_string(), String::new()),
                ],
            )
            .unwrap();
        let attributes: Vec<(&str, &str)> = recased
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(attributes, [("Color", "red")]);
        let out = item.clone().updated(None, Some(false), []).unwrap();
        assert!(!out.in_stock);
        assert_eq!(out.price, 199.0);
        for (price, attributes, says) in [
            (Some(-1.0), vec![], "price must be finite and >= 0, got -1"),
            (Some(f64::NAN), vec![], "price must be finite"),
            (
                None,
                vec![(" ".to_string(), "x".to_string())],
                "an attribute name is empty",
            ),
            (
                None,
                vec![
                    ("color".to_string(), "red".to_string()),
                    ("Color".to_string(), String::new()),
                ],
                "attributes \"Color\" and \"color\" are one attribute",
            ),
        ] {
            let err = item
                .clone()
                .updated(price, None, attributes)
                .unwrap_err()
                .to_string();
            assert!(err.contains("item \"p1\"") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn facts_chain_the_category_path() {
        let facts = item().validated().unwrap().facts();
        assert!(facts.contains(&("item:p1".into(), "brand".into(), "brand:Acme".into())));
        assert!(facts.contains(&(
            "category:Outdoor/Tents".into(),
            "parent".into(),
            "category:Outdoor".into()
        )));
        assert!(facts.contains(&(
            "item:p1".into(),
            "category".into(),
            "category:Outdoor/Tents".into()
        )));
        assert!(facts.contains(&(
            "item:p1".into(),
            "attribute".into(),
            "attr:color=green".into()
        )));
    }

    #[test]
    fn a_fact_the_graph_would_refuse_is_left_out() {
        let mut long = item().validated().unwrap();
        long.attributes.insert("notes".into(), "x".repeat(2_000));
        let facts = long.facts();
        assert!(
            facts
                .iter()
                .all(|(_, _, tail)| !tail.starts_with("attr:notes="))
        );
        assert!(facts.iter().any(|(_, _, tail)| tail == "attr:color=green"));
        assert_eq!(facts.len(), item().validated().unwrap().facts().len());
    }

    #[test]
    fn a_new_version_drops_the_old_values_but_not_the_shared_category_chain() {
        let before = item().validated().unwrap();
        assert!(dropped_facts(&before, &before).is_empty());
        let mut after = before.clone();
        after.attributes.insert("color".into(), "red".into());
        after.attributes.insert("size".into(), "xl".into());
        after.brand = "Borealis".into();
        after.category = vec!["Outdoor".into(), "Shelters".into()];
        let mut dropped = dropped_facts(&before, &after);
        dropped.sort();
        let fact = |r: &str, t: &str| ("item:p1".to_string(), r.to_string(), t.to_string());
        assert_eq!(
            dropped,
            vec![
                fact("attribute", "attr:color=green"),
                fact("brand", "brand:Acme"),
                fact("category", "category:Outdoor/Tents"),
            ],
            "the old colour, brand and leaf category; not Tents' parent edge"
        );
        // An attribute taken away is dropped too; an added one drops nothing.
        let mut fewer = before.clone();
        fewer.attributes = Attributes::default();
        assert_eq!(
            dropped_facts(&before, &fewer),
            vec![fact("attribute", "attr:color=green")]
        );
        assert!(dropped_facts(&fewer, &before).is_empty());
    }

    /// What the graph states of an item against its own facts: another brand and a colour
    /// it no longer has are stale, its size missing; the edges of other relations (loaded by
    /// hand) and the category chain's parent edges are not the item's to judge.
    #[test]
    fn the_graphs_edges_of_an_item_are_judged_by_its_own_facts_only() {
        let mut item = item().validated().unwrap();
        item.attributes.insert("size".into(), "xl".into());
        let edge = |r: &str, t: &str| (r.to_string(), t.to_string());
        let stated = vec![
            edge("brand", "brand:Acme"),
            edge("brand", "brand:Borealis"),
            edge("category", "category:Outdoor/Tents"),
            edge("attribute", "attr:color=green"),
            edge("attribute", "attr:color=red"),
            edge("accessory_of", "item:p2"),
            edge("parent", "category:Outdoor"),
        ];
        let fact = |r: &str, t: &str| ("item:p1".to_string(), r.to_string(), t.to_string());
        assert_eq!(
            graph_difference(&item, &stated),
            (
                vec![
                    fact("brand", "brand:Borealis"),
                    fact("attribute", "attr:color=red")
                ],
                vec![fact("attribute", "attr:size=xl")]
            )
        );
        let own: Vec<(String, String)> = item
            .facts()
            .into_iter()
            .filter(|f| f.0 == "item:p1")
            .map(|(_, r, t)| (r, t))
            .collect();
        assert_eq!(
            graph_difference(&item, &own),
            (vec![], vec![]),
            "a graph in step"
        );
        let (stale, missing) = graph_difference(&item, &[]);
        assert!(stale.is_empty());
        assert_eq!(missing.len(), own.len(), "a graph that lost the item");
    }

    #[test]
    fn bad_items_are_rejected_with_the_field() {
        let mut i = item();
        i.price = f64::NAN;
        assert!(i.validated().unwrap_err().to_string().contains("price"));
        let mut i = item();
        i.id = String::new();
        assert!(i.validated().unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn filters_check_price_brand_category_stock() {
        let f = Filters::new("tents", &["ACME".into()], Some(100.0), Some(150.0), true).unwrap();
        assert!(f.accepts(&item().validated().unwrap()));
        let mut cheap = item();
        cheap.price = 10.0;
        assert!(!f.accepts(&cheap));
        assert!(Filters::new("", &[], Some(5.0), Some(1.0), false).is_err());
        let unset = Filters::new("", &["Acme".into(), " ".into()], None, None, false);
        assert_eq!(
            unset.unwrap_err().to_string(),
            RankError::InvalidInput("filters.brands[1] is empty".into()).to_string(),
            "an empty brand is not read as any brand"
        );
        assert!(Filters::new("", &[], Some(-1.0), None, false).is_err());
    }

    fn attrs(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(k, vs)| {
                (
                    (*k).to_string(),
                    vs.iter().map(|v| (*v).to_string()).collect(),
                )
            })
            .collect()
    }

    /// Attributes hold what a `BTreeMap` held: sorted by name, the later of two values for
    /// one name, and stored as the same JSON object (items already in a store read back).
    #[test]
    fn attributes_behave_and_store_as_the_map_they_replace() {
        let pairs = [
            ("size", "M"),
            ("Color", "red"),
            ("fit", "slim"),
            ("size", "L"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let ours: Attributes = pairs.clone().into_iter().collect();
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        let listed: Vec<(&String, &String)> = ours.iter().collect();
        assert_eq!(listed, map.iter().collect::<Vec<_>>());
        assert_eq!(ours.len(), 3);
        assert_eq!(ours.get("size").map(String::as_str), Some("L"));
        assert_eq!(ours.get("color"), None, "names are exact");
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Attributes = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(back, ours);

        let mut grown = ours.clone();
        assert_eq!(grown.insert("brim".into(), "wide".into()), None);
        assert_eq!(
            grown.insert("fit".into(), "loose".into()).as_deref(),
            Some("slim")
        );
        let names: Vec<&str> = grown.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Color", "brim", "fit", "size"]);
        assert_eq!(grown.get("fit").map(String::as_str), Some("loose"));
        assert!(Attributes::default().is_empty());
    }

    /// Attribute filters: every named attribute must hold one of its values, compared the
    /// way items store them (cleaned, any case); bad filters are refused by position.
    #[test]
    fn attribute_filters_need_every_attribute_and_any_value() {
        let mut tent = item();
        tent.attributes = [("Color", "Forest  Green"), ("season", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let tent = tent.validated().unwrap();
        let with =
            |pairs: &[(&str, &[&str])]| Filters::default().with_attributes(attrs(pairs)).unwrap();
        assert!(with(&[("color", &["black", "forest green"])]).accepts(&tent));
        assert!(with(&[(" COLOR ", &["Forest\tGreen"]), ("Season", &["3", "4"])]).accepts(&tent));
        assert!(!with(&[("color", &["forest green"]), ("season", &["4"])]).accepts(&tent));
        assert!(
            !with(&[("weight", &["2kg"])]).accepts(&tent),
            "no such attribute"
        );
        assert!(
            !with(&[("color", &["green"])]).accepts(&tent),
            "whole values only"
        );
        assert!(Filters::default().accepts(&tent));

        let refused = |pairs: &[(&str, &[&str])], why: &str| {
            let e = Filters::default()
                .with_attributes(attrs(pairs))
                .unwrap_err();
            assert!(e.to_string().contains(why), "{e} should say {why}");
        };
        refused(
            &[("color", &["red"]), (" ", &["x"])],
            "filters.attributes[1]: the attribute name is empty",
        );
        refused(
            &[("color", &[])],
            "filters.attributes[0] (color) lists no value",
        );
        refused(&[("color", &["red", "\n"])], "value 1 is empty");
        refused(&[("color", &["red"]), ("Color", &["blue"])], "named twice");
        let many: Vec<(String, Vec<String>)> = (0..=MAX_ATTRIBUTE_FILTERS)
            .map(|i| (format!("a{i}"), vec!["x".into()]))
            .collect();
        assert!(Filters::default().with_attributes(many).is_err());
        let values = vec!["x".to_string(); MAX_ATTRIBUTE_VALUES + 1];
        assert!(
            Filters::default()
                .with_attributes([("a".to_string(), values)])
                .is_err()
        );
    }
}
