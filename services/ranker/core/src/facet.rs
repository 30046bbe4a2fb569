//! The catalog's facet index: the slots under each category level and of each brand, so that a
//! filtered `Rank` knows which items can pass before it looks at any vector.
//!
//! Why: the first pass's candidate pool (the query's nearest items by the HNSW graph, the best
//! BM25 hits, popular items) is drawn from the whole catalog and filtered afterwards. A filter
//! that 4% of a 100k catalog passes ("Headphones") kept a few of the pool's items, not the
//! best ones in the category: through the real model, 30 of 300 filtered searches returned a
//! different top 10 than an exact scan, most of them sharing no item with it (BENCHMARKS.md,
//! "filtered searches"). With the index a filter that few items pass is answered by scoring
//! exactly those items, and one that many pass by a graph search that only answers with items
//! the filter accepts (qdrant decides the same way, by the filter's cardinality).
use std::collections::{HashMap, HashSet};

use crate::catalog::IdHash;
use crate::item::{Filters, Item};

/// Slots, unordered.
pub type SlotSet = HashSet<u32, IdHash>;

/// Slots by lower-cased category level (every level of an item's path) and by lower-cased
/// brand (items without a brand are under none).
#[derive(Debug, Default)]
pub struct Facets {
    categories: HashMap<String, SlotSet>,
    brands: HashMap<String, SlotSet>,
}

/// The keys an item is filed under: its category levels and its brand, lower-cased, as
/// [`Filters::accepts`] compares them.
fn keys(item: &Item) -> (Vec<String>, Option<String>) {
    let mut categories: Vec<String> = item.category.iter().map(|c| c.to_lowercase()).collect();
    categories.sort_unstable();
    categories.dedup();
    let brand = Some(item.brand.to_lowercase()).filter(|b| !b.is_empty());
    (categories, brand)
}

impl Facets {
    /// Files `slot` under `item`'s category levels and brand.
    pub fn add(&mut self, slot: u32, item: &Item) {
        let (categories, brand) = keys(item);
        for c in categories {
            self.categories.entry(c).or_default().insert(slot);
        }
        if let Some(b) = brand {
            self.brands.entry(b).or_default().insert(slot);
        }
    }

    /// Takes `slot` out from under `item`'s category levels and brand (what [`Self::add`]
    /// filed it under); a key left without items goes.
    pub fn remove(&mut self, slot: u32, item: &Item) {
        fn take(map: &mut HashMap<String, SlotSet>, key: &str, slot: u32) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&slot);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        let (categories, brand) = keys(item);
        for c in &categories {
            take(&mut self.categories, c, slot);
        }
        if let Some(b) = brand {
            take(&mut self.brands, &b, slot);
        }
    }

    /// A request's filters against this index.
    pub fn resolve<'a>(&'a self, filters: &'a Filters) -> Filter<'a> {
        let category = filters
            .category
            .as_ref()
            .map(|c| self.categories.get(c.as_str()));
        let mut brands: Vec<&str> = filters.brands.iter().map(String::as_str).collect();
        brands.sort_unstable();
        brands.dedup();
        let brands: Vec<&SlotSet> = brands.iter().filter_map(|b| self.brands.get(*b)).collect();
        let nothing =
            matches!(category, Some(None)) || (!filters.brands.is_empty() && brands.is_empty());
        Filter {
            filters,
            category: category.flatten(),
            brands,
            nothing,
        }
    }
}

/// A request's [`Filters`] resolved against the facet index: which slots pass, without
/// lower-casing any item's strings.
pub struct Filter<'a> {
    filters: &'a Filters,
    /// The items under the filter's category, when it names one the index has.
    category: Option<&'a SlotSet>,
    /// The items of each brand the filter names that the index has (disjoint).
    brands: Vec<&'a SlotSet>,
    /// The filter names a category, or only brands, that no item has: nothing passes.
    nothing: bool,
}

impl Filter<'_> {
    /// Whether `item`, in `slot`, passes: what [`Filters::accepts`] answers for it.
    pub fn accepts(&self, slot: u32, item: &Item) -> bool {
        if self.nothing {
            return false;
        }
        let f = self.filters;
        if (f.in_stock_only && !item.in_stock)
            || f.min_price.is_some_and(|lo| item.price < lo)
            || f.max_price.is_some_and(|hi| item.price > hi)
        {
            return false;
        }
        if self.category.is_some_and(|set| !set.contains(&slot)) {
            return false;
        }
        f.brands.is_empty() || self.brands.iter().any(|set| set.contains(&slot))
    }

    /// At most this many items pass, when the category or brands narrow it (`None`: only the
    /// price or stock, which the index does not count).
    pub fn bound(&self) -> Option<usize> {
        if self.nothing {
            return Some(0);
        }
        let category = self.category.map(HashSet::len);
        let brands = (!self.filters.brands.is_empty())
            .then(|| self.brands.iter().map(|s| s.len()).sum::<usize>());
        match (category, brands) {
            (Some(c), Some(b)) => Some(c.min(b)),
            (c, b) => c.or(b),
        }
    }

    /// The slots that may pass (the smaller side of category and brands; `bound()` of them),
    /// to be checked with [`Self::accepts`], in slot order (the scan then walks the catalog's
    /// vector array forwards); empty when `bound()` is `None`.
    pub fn members(&self) -> Vec<u32> {
        if self.nothing {
            return Vec::new();
        }
        let brands = || self.brands.iter().flat_map(|s| s.iter().copied());
        let by_brand = !self.filters.brands.is_empty();
        let mut members: Vec<u32> = match self.category {
            Some(c) if !by_brand || c.len() <= self.bound().unwrap_or(0) => {
                c.iter().copied().collect()
            }
            _ if by_brand => brands().collect(),
            _ => Vec::new(),
        };
        members.sort_unstable();
        members
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(category: &[&str], brand: &str, price: f64, in_stock: bool) -> Item {
        Item {
            id: "x".into(),
            title: "t".into(),
            category: category.iter().map(|c| (*c).to_string()).collect(),
            brand: brand.into(),
            price,
            in_stock,
            ..Item::default()
        }
    }

    /// Every filter over a small catalog: the index answers as `Filters::accepts` does, its
    /// members hold every item that passes, and a replaced or removed item is filed anew.
    #[test]
    fn the_index_accepts_what_the_filters_accept() {
        let items = [
            item(&["Outdoor", "Camping", "Tents"], "Trailhound", 120.0, true),
            item(
                &["Outdoor", "Camping", "Camp Stoves"],
                "Northpeak",
                45.0,
                false,
            ),
            item(&["Outdoor", "Hiking"], "trailhound", 80.0, true),
            item(&["Kitchen", "Knives"], "", 30.0, true),
            item(&["Kitchen", "Kitchen"], "Santoro", 300.0, true),
        ];
        let mut facets = Facets::default();
        for (slot, it) in items.iter().enumerate() {
            facets.add(slot as u32, it);
        }
        let filters = [
            Filters::new("camping", &[], None, None, false),
            Filters::new("OUTDOOR", &["TrailHound".into()], None, Some(100.0), false),
            Filters::new(
                "",
                &["santoro".into(), "northpeak".into()],
                None,
                None,
                true,
            ),
            Filters::new("kitchen", &[], Some(10.0), None, false),
            Filters::new("garden", &[], None, None, false),
            Filters::new("", &["nobody".into()], None, None, false),
            Filters::new("", &["nobody".into(), "santoro".into()], None, None, false),
            Filters::new("", &[], Some(50.0), None, true),
        ];
        for f in filters {
            let f = f.unwrap();
            let resolved = facets.resolve(&f);
            let members = resolved.members();
            let mut passing = 0;
            for (slot, it) in items.iter().enumerate() {
                let slot = slot as u32;
                assert_eq!(resolved.accepts(slot, it), f.accepts(it), "{f:?} on {it:?}");
                if f.accepts(it) {
                    passing += 1;
                    if resolved.bound().is_some() {
                        assert!(members.contains(&slot), "{f:?}: {slot} not a member");
                    }
                }
            }
            if let Some(bound) = resolved.bound() {
                assert!(passing <= bound && members.len() == bound, "{f:?}");
            }
        }
        let camping = Filters::new("camping", &[], None, None, false).unwrap();
        assert_eq!(facets.resolve(&camping).bound(), Some(2));
        // Slot 0 becomes a knife: out of Camping and of Trailhound's items.
        facets.remove(0, &items[0]);
        facets.add(0, &item(&["Kitchen", "Knives"], "Santoro", 20.0, true));
        assert_eq!(facets.resolve(&camping).bound(), Some(1));
        let trailhound = Filters::new("", &["trailhound".into()], None, None, false).unwrap();
        assert_eq!(facets.resolve(&trailhound).members(), vec![2]);
        facets.remove(2, &items[2]);
        assert_eq!(facets.resolve(&trailhound).bound(), Some(0));
        assert!(!facets.brands.contains_key("trailhound"), "empty keys go");
    }
}
