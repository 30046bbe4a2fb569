//! The ranker's logic with fake sources: the real catalog, scoring, graph signal, filters,
//! diversity and explanations; only the encoder and the graph service are replaced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::collapsible_if)]
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::item::{Filters, Interaction, InteractionKind, Item};
use souk_ranker_core::rank::{
    EmbeddingSource, GraphPath, GraphSource, GraphStep, MAX_QUERY_BYTES, RankQuery, Ranker, Signal,
    SourceError,
};
use souk_ranker_core::{RankError, UserHasher};

const VOCAB: &[&str] = &[
    "tent", "stove", "shoe", "running", "camping", "jacket", "lamp", "pegs",
];

/// Bag of words over a tiny vocabulary, normalised: enough to tell texts apart.
fn fake_vector(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let mut v: Vec<f32> = VOCAB
        .iter()
        .map(|w| if lower.contains(w) { 1.0 } else { 0.0 })
        .collect();
    v.push(0.1);
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct FakeEncoder {
    down: Arc<AtomicBool>,
}

impl EmbeddingSource for FakeEncoder {
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError("encoder down".into()));
        }
        Ok(fake_vector(text))
    }
}

/// A graph that knows which items share a brand, and one accessory link.
struct FakeGraph {
    brands: HashMap<String, String>,
    accessories: Vec<(String, String)>,
    /// Entity embeddings, as a trained graph would serve them.
    vectors: HashMap<String, Vec<f32>>,
    down: Arc<AtomicBool>,
}

impl GraphSource for FakeGraph {
    async fn paths(
        &self,
        sources: Vec<String>,
        targets: Vec<String>,
        _hops: u32,
    ) -> Result<Vec<GraphPath>, SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError("graph down".into()));
        }
        let mut out = Vec::new();
        for s in &sources {
            for t in &targets {
                let (si, ti) = (s.trim_start_matches("item:"), t.trim_start_matches("item:"));
                if self
                    .accessories
                    .iter()
                    .any(|(acc, of)| acc == ti && of == si)
                {
                    out.push(GraphPath {
                        source: s.clone(),
                        target: t.clone(),
                        steps: vec![GraphStep {
                            relation: "accessory_of".into(),
                            forward: false,
                            entity: t.clone(),
                        }],
                    });
                } else if let (Some(a), Some(b)) = (self.brands.get(si), self.brands.get(ti)) {
                    if a == b && s != t {
                        out.push(GraphPath {
                            source: s.clone(),
                            target: t.clone(),
                            steps: vec![
                                GraphStep {
                                    relation: "brand".into(),
                                    forward: true,
                                    entity: format!("brand:{a}"),
                                },
                                GraphStep {
                                    relation: "brand".into(),
                                    forward: false,
                                    entity: t.clone(),
                                },
                            ],
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    async fn entity_vectors(
        &self,
        entities: Vec<String>,
    ) -> Result<HashMap<String, Vec<f32>>, SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError("graph down".into()));
        }
        Ok(entities
            .into_iter()
            .filter_map(|e| self.vectors.get(&e).map(|v| (e, v.clone())))
            .collect())
    }

    async fn related_items(
        &self,
        _items: Vec<String>,
        _per_item: usize,
    ) -> Result<Vec<String>, SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError("graph down".into()));
        }
        Ok(Vec::new())
    }
}

fn item(id: &str, title: &str, category: &[&str], brand: &str, price: f64) -> Item {
    Item {
        id: id.into(),
        title: title.into(),
        description: String::new(),
        category: category.iter().map(|c| c.to_string()).collect(),
        brand: brand.into(),
        price,
        attributes: Default::default(),
        in_stock: id != "p9",
    }
}

/// Switches that take the fake dependencies down.
struct Switches {
    encoder_down: Arc<AtomicBool>,
    graph_down: Arc<AtomicBool>,
}

fn shop() -> (Ranker<FakeEncoder, FakeGraph>, UserHasher, Switches) {
    let items = vec![
        item("p1", "Trail Tent", &["Outdoor", "Tents"], "Acme", 120.0),
        item("p2", "Camping Stove", &["Outdoor", "Stoves"], "Acme", 45.0),
        item("p3", "Running Shoe", &["Sports", "Shoes"], "Swift", 80.0),
        item(
            "p4",
            "Running Jacket",
            &["Sports", "Jackets"],
            "Swift",
            95.0,
        ),
        item("p5", "Desk Lamp", &["Home", "Lamps"], "Glow", 30.0),
        item("p6", "Tent Pegs", &["Outdoor", "Tents"], "Pegco", 8.0),
        item("p7", "Family Tent", &["Outdoor", "Tents"], "Bigtop", 300.0),
        item("p8", "Floor Lamp", &["Home", "Lamps"], "Glow", 60.0),
        item(
            "p9",
            "Trail Running Shoe",
            &["Sports", "Shoes"],
            "Swift",
            110.0,
        ),
    ];
    let mut catalog = Catalog::default();
    let mut brands = HashMap::new();
    for i in items {
        brands.insert(i.id.clone(), i.brand.clone());
        let v = fake_vector(&i.text());
        catalog.upsert(i.validated().unwrap(), v).unwrap();
    }
    let switches = Switches {
        encoder_down: Arc::default(),
        graph_down: Arc::default(),
    };
    let graph = FakeGraph {
        brands,
        accessories: vec![("p6".into(), "p1".into())],
        vectors: HashMap::new(),
        down: switches.graph_down.clone(),
    };
    let encoder = FakeEncoder {
        down: switches.encoder_down.clone(),
    };
    let ranker = Ranker::new(Arc::new(RwLock::new(catalog)), encoder, graph);
    (ranker, UserHasher::new(b"test"), switches)
}

fn record(
    ranker: &Ranker<FakeEncoder, FakeGraph>,
    hasher: &UserHasher,
    user: &str,
    item: &str,
    kind: InteractionKind,
    ts: i64,
) {
    ranker.catalog().write().unwrap().record(&Interaction {
        user: hasher.key(user),
        item_id: item.into(),
        kind,
        value: 1.0,
        timestamp_ms: ts,
    });
}

/// A search for `query`'s first `k` results, with their reasons.
fn explained(query: &str, k: usize) -> RankQuery {
    RankQuery {
        query: Some(query.into()),
        k,
        explain: true,
        ..Default::default()
    }
}

fn ids(r: &souk_ranker_core::rank::Ranking) -> Vec<&str> {
    r.items.iter().map(|i| i.id.as_str()).collect()
}

/// The values the first facet counts (the brands, when it is the brand facet).
fn brands(r: &souk_ranker_core::rank::Ranking) -> HashSet<String> {
    r.facets[0]
        .values
        .iter()
        .map(|(brand, _)| brand.clone())
        .collect()
}

#[tokio::test]
async fn a_new_user_without_a_query_gets_popular_items() {
    let (ranker, h, _) = shop();
    for (u, ts) in [("a", 1), ("b", 2), ("c", 3)] {
        record(&ranker, &h, u, "p5", InteractionKind::Purchase, ts);
    }
    record(&ranker, &h, "a", "p3", InteractionKind::View, 4);
    let r = ranker
        .rank(&RankQuery {
            user: Some(h.key("new")),
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&r)[..2], ["p5", "p3"], "most popular first");
    assert!(r.items[0].reasons.iter().any(|x| x.contains("popular")));
    assert!(r.missing_signals.is_empty());
}

#[tokio::test]
async fn a_query_ranks_matching_items_first_and_survives_a_dead_encoder() {
    let (ranker, _, switches) = shop();
    let q = RankQuery {
        query: Some("camping stove".into()),
        k: 3,
        explain: true,
        ..Default::default()
    };
    let r = ranker.rank(&q).await.unwrap();
    assert_eq!(r.items[0].id, "p2");
    assert!(r.items[0].reasons[0].contains("matches your search \"camping stove\""));
    assert!(
        r.items[0]
            .contributions
            .iter()
            .any(|c| c.signal == Signal::Dense)
    );

    switches.encoder_down.store(true, Ordering::SeqCst);
    let r = ranker.rank(&q).await.unwrap();
    assert_eq!(r.missing_signals, vec![Signal::Dense]);
    assert_eq!(r.items[0].id, "p2", "BM25 alone still finds the stove");
}

#[tokio::test]
async fn history_brings_same_brand_and_accessories_with_reasons() {
    let (ranker, h, _) = shop();
    record(&ranker, &h, "u", "p1", InteractionKind::Purchase, 10);
    let r = ranker
        .rank(&RankQuery {
            user: Some(h.key("u")),
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !ids(&r).contains(&"p1"),
        "already bought: dropped by default"
    );
    assert_eq!(r.items[0].id, "p6", "the accessory of the tent comes first");
    assert_eq!(
        r.items[0].reasons[0],
        "an accessory for the Trail Tent you bought"
    );
    let stove = r
        .items
        .iter()
        .find(|i| i.id == "p2")
        .expect("same brand as the tent");
    assert!(
        stove
            .reasons
            .iter()
            .any(|x| x == "same brand (Acme) as the Trail Tent you bought"),
        "{:?}",
        stove.reasons
    );

    let with_bought = ranker
        .rank(&RankQuery {
            user: Some(h.key("u")),
            k: 9,
            include_purchased: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ids(&with_bought).contains(&"p1"));
}

/// A lamp bought; the other lamp shares its brand (a path), the family tent shares nothing but
/// sits next to the lamp in embedding space: the embedding neighbour is lifted above the
/// unrelated items and explained, and the stated relation still beats it.
#[tokio::test]
async fn entity_embeddings_lift_graph_neighbours_without_a_path() {
    let (mut ranker, h, switches) = shop();
    let near = vec![1.0, 0.1, 0.0];
    let far = vec![-1.0, 0.0, 0.2];
    let vectors: HashMap<String, Vec<f32>> = [
        ("item:p5", vec![1.0, 0.0, 0.0]),
        ("item:p7", near),
        ("item:p8", far.clone()),
        ("item:p3", far.clone()),
        ("item:p4", far),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let catalog = ranker.catalog().clone();
    ranker = Ranker::new(
        catalog,
        FakeEncoder {
            down: switches.encoder_down.clone(),
        },
        FakeGraph {
            brands: [("p5", "Glow"), ("p8", "Glow"), ("p7", "Bigtop")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            accessories: Vec::new(),
            vectors,
            down: switches.graph_down.clone(),
        },
    );
    record(&ranker, &h, "u", "p5", InteractionKind::Purchase, 10);
    let r = ranker
        .rank(&RankQuery {
            user: Some(h.key("u")),
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&r)[..2], ["p8", "p7"], "{:?}", ids(&r));
    let tent = &r.items[1];
    assert!(
        tent.reasons
            .iter()
            .any(|x| x == "close in the product graph to the Desk Lamp you bought"),
        "{:?}",
        tent.reasons
    );
}

#[tokio::test]
async fn a_dead_graph_is_flagged_not_fatal() {
    let (ranker, h, switches) = shop();
    record(&ranker, &h, "u", "p1", InteractionKind::Purchase, 10);
    switches.graph_down.store(true, Ordering::SeqCst);
    let r = ranker
        .rank(&RankQuery {
            user: Some(h.key("u")),
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.missing_signals, vec![Signal::Kg]);
    assert_eq!(r.items.len(), 3);
}

#[tokio::test]
async fn a_click_changes_the_next_ranking() {
    let (ranker, h, _) = shop();
    // Other shoppers who looked at the shoe also looked at the jacket.
    for (u, ts) in [("x", 1), ("y", 3)] {
        record(&ranker, &h, u, "p3", InteractionKind::View, ts);
        record(&ranker, &h, u, "p4", InteractionKind::View, ts + 1);
    }
    let before = ranker
        .rank(&RankQuery {
            user: Some(h.key("me")),
            k: 9,
            ..Default::default()
        })
        .await
        .unwrap();
    let jacket_before = ids(&before).iter().position(|i| *i == "p4");
    record(&ranker, &h, "me", "p3", InteractionKind::Click, 10);
    let after = ranker
        .rank(&RankQuery {
            user: Some(h.key("me")),
            k: 9,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let jacket_after = ids(&after).iter().position(|i| *i == "p4");
    assert_eq!(after.items[0].id, "p4", "co-viewed jacket jumps to the top");
    assert!(jacket_after < jacket_before);
    assert!(
        after.items[0]
            .reasons
            .iter()
            .any(|r| r.contains("shoppers who liked the Running Shoe"))
    );
}

#[tokio::test]
async fn filters_exclusions_and_candidate_ids() {
    let (ranker, _, _) = shop();
    let filters = Filters::new("tents", &[], None, Some(200.0), true).unwrap();
    let r = ranker
        .rank(&RankQuery {
            query: Some("tent".into()),
            k: 10,
            filters,
            exclude: HashSet::from(["p6".to_string()]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&r),
        vec!["p1"],
        "p7 is too expensive, p6 excluded, others not tents"
    );

    let stock = Filters::new("", &[], None, None, true).unwrap();
    let r = ranker
        .rank(&RankQuery {
            query: Some("running shoe".into()),
            k: 10,
            filters: stock,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!ids(&r).contains(&"p9"), "out of stock");

    let r = ranker
        .rank(&RankQuery {
            query: Some("lamp".into()),
            k: 10,
            candidate_ids: vec!["p3".into(), "p8".into(), "nope".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&r),
        vec!["p8", "p3"],
        "re-rank mode ranks only the given ids"
    );
}

#[tokio::test]
async fn diversity_spreads_categories() {
    let (ranker, _, _) = shop();
    let q = |d| RankQuery {
        query: Some("tent camping".into()),
        k: 3,
        diversity: d,
        ..Default::default()
    };
    let plain = ranker.rank(&q(0.0)).await.unwrap();
    let diverse = ranker.rank(&q(0.9)).await.unwrap();
    let leaves = |r: &souk_ranker_core::rank::Ranking| {
        r.items
            .iter()
            .map(|i| i.category.last().cloned().unwrap_or_default())
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(
        leaves(&diverse) > leaves(&plain),
        "{:?} vs {:?}",
        ids(&diverse),
        ids(&plain)
    );
}

#[tokio::test]
async fn bad_k_and_diversity_are_invalid() {
    let (ranker, _, _) = shop();
    for k in [0, 1001] {
        let e = ranker
            .rank(&RankQuery {
                k,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(e, RankError::InvalidInput(ref m) if m.contains("k must be")),
            "{e}"
        );
    }
    let e = ranker
        .rank(&RankQuery {
            k: 1,
            diversity: 2.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("diversity"));
    let e = ranker
        .rank(&RankQuery {
            k: 10,
            offset: 995,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("offset + k must be at most 1000, got 995 + 10"),
        "{e}"
    );
}

/// A search box's text is ranked, up to the limit's last byte; a document pasted into it is
/// refused with its size before any of its words cost anything.
#[tokio::test]
async fn a_query_over_the_limit_is_invalid() {
    let (ranker, _, _) = shop();
    let at_limit = format!("{} tent", "x".repeat(MAX_QUERY_BYTES - 5));
    assert_eq!(at_limit.len(), MAX_QUERY_BYTES);
    let request = |query: &str| RankQuery {
        query: Some(query.to_string()),
        k: 3,
        ..Default::default()
    };
    let ranking = ranker.rank(&request(&at_limit)).await.unwrap();
    assert_eq!(ranking.items.len(), 3);
    let over = format!("{at_limit}s");
    let e = ranker.rank(&request(&over)).await.unwrap_err();
    assert!(
        matches!(e, RankError::InvalidInput(ref m) if m == "query is 1025 bytes; the limit is 1024"),
        "{e}"
    );
}

/// An item's page: items like it (its own vector stands in for a query's, so a dead encoder
/// costs nothing), its accessory and its brand's other items, each explained by the item;
/// the item itself is never returned, and an unknown one is refused.
#[tokio::test]
async fn an_item_page_ranks_what_is_like_it_and_goes_with_it() {
    let (ranker, h, switches) = shop();
    switches.encoder_down.store(true, Ordering::SeqCst);
    // The shopper bought the tent before: it is still no result on its own page.
    record(&ranker, &h, "u", "p1", InteractionKind::Purchase, 10);
    let page = |item: &str| RankQuery {
        user: Some(h.key("u")),
        item: Some(item.into()),
        k: 8,
        explain: true,
        include_purchased: true,
        ..Default::default()
    };
    let r = ranker.rank(&page("p1")).await.unwrap();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    assert!(!ids(&r).contains(&"p1"), "{:?}", ids(&r));
    let reasons = |id: &str| {
        r.items
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.reasons.clone())
            .unwrap_or_else(|| panic!("{id} missing from {:?}", ids(&r)))
    };
    assert_eq!(ids(&r)[0], "p6", "the tent's accessory, a tent item too");
    assert!(
        reasons("p6").contains(&"an accessory for this Trail Tent".to_string()),
        "{:?}",
        reasons("p6")
    );
    assert!(
        reasons("p7").contains(&"similar to this Trail Tent".to_string()),
        "{:?}",
        reasons("p7")
    );
    assert!(
        reasons("p2").contains(&"same brand (Acme) as this Trail Tent".to_string()),
        "{:?}",
        reasons("p2")
    );
    // Items like the page's rank above unrelated ones: the tents before the lamps.
    let at = |id: &str| ids(&r).iter().position(|x| *x == id).unwrap_or(usize::MAX);
    assert!(at("p7") < at("p5") && at("p7") < at("p8"), "{:?}", ids(&r));
    // Another page, another ranking: the lamp's page shows the other lamp first (the tent,
    // the shop's only popular item, is left out as bought).
    let lamp = ranker
        .rank(&RankQuery {
            include_purchased: false,
            ..page("p5")
        })
        .await
        .unwrap();
    assert_eq!(ids(&lamp)[0], "p8", "{:?}", ids(&lamp));
    // The request's own weights: dense alone is the page's "similar items" shelf, scored by
    // the request, not the model.
    let similar = ranker
        .rank(&RankQuery {
            weights: Some([1.0, 0.0, 0.0, 0.0, 0.0]),
            ..page("p1")
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&similar)[0],
        "p7",
        "the other plain tent: {:?}",
        ids(&similar)
    );
    assert_eq!(similar.model_version, "request");
    assert_eq!(r.model_version, "default-v1");
    for (weights, message) in [
        (
            [f32::NAN, 0.0, 0.0, 0.0, 0.0],
            "weights.dense must be a number in -10..10, got NaN",
        ),
        ([0.0, 0.0, -1.0, 0.0, 0.0], "weights has no positive weight"),
    ] {
        match ranker
            .rank(&RankQuery {
                weights: Some(weights),
                ..page("p1")
            })
            .await
        {
            Err(RankError::InvalidInput(m)) => assert_eq!(m, message),
            other => panic!("{weights:?}: {other:?}"),
        }
    }
    for (item, message) in [
        ("nope", "item_id \"nope\" is not in the catalog"),
        (&"x".repeat(300), "item_id is 300 bytes; the limit is 256"),
    ] {
        match ranker.rank(&page(item)).await {
            Err(RankError::InvalidInput(m)) => assert_eq!(m, message),
            other => panic!("{item:.10}: {other:?}"),
        }
    }
}

/// Sorted by price: the items the search matches (its word matches and nearest items), and
/// only those, cheapest or dearest first, paged; filters and exclusions still apply; without
/// a query, every item the filters pass.
#[tokio::test]
async fn a_search_sorted_by_price_lists_its_matches_by_price() {
    use souk_ranker_core::rank::SortOrder;
    let (ranker, hasher, switches) = shop();
    let by_price = |query: Option<&str>, sort: SortOrder| RankQuery {
        query: query.map(String::from),
        k: 20,
        explain: true,
        sort,
        ..Default::default()
    };
    // "tent" matches the two tents and the pegs by word; the vector's nearest items add
    // nothing unlike them.
    let cheap = ranker
        .rank(&by_price(Some("tent"), SortOrder::PriceAscending))
        .await
        .unwrap();
    assert_eq!(ids(&cheap), ["p6", "p1", "p7"], "{:?}", cheap.items);
    let dear = ranker
        .rank(&by_price(Some("tent"), SortOrder::PriceDescending))
        .await
        .unwrap();
    assert_eq!(ids(&dear), ["p7", "p1", "p6"]);
    assert!(cheap.items.iter().all(|i| i.score == 0.0));
    assert_eq!(cheap.items[0].reasons, ["matches your search \"tent\""]);
    let prices: Vec<f64> = cheap.items.iter().map(|i| i.price).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    // Pages, filters and exclusions as with relevance.
    let second = ranker
        .rank(&RankQuery {
            k: 1,
            offset: 1,
            ..by_price(Some("tent"), SortOrder::PriceAscending)
        })
        .await
        .unwrap();
    assert_eq!(ids(&second), ["p1"]);
    let capped = ranker
        .rank(&RankQuery {
            filters: Filters::new("", &[], None, Some(100.0), false).unwrap(),
            exclude: HashSet::from(["p5".to_string()]),
            ..by_price(None, SortOrder::PriceDescending)
        })
        .await
        .unwrap();
    assert_eq!(ids(&capped), ["p4", "p3", "p8", "p2", "p6"]);
    assert_eq!(capped.items[0].reasons, ["passes your filters"]);

    // The graph plays no part in a price order: a shopper's sorted list does not wait for it
    // and does not report it missing when it is down (a relevance list does).
    record(&ranker, &hasher, "u", "p1", InteractionKind::Purchase, 10);
    switches.graph_down.store(true, Ordering::SeqCst);
    let shopper = |sort| RankQuery {
        user: Some(hasher.key("u")),
        ..by_price(Some("tent"), sort)
    };
    let sorted = ranker
        .rank(&shopper(SortOrder::PriceAscending))
        .await
        .unwrap();
    assert_eq!(ids(&sorted), ["p6", "p7"], "the bought tent is left out");
    assert!(
        sorted.missing_signals.is_empty(),
        "{:?}",
        sorted.missing_signals
    );
    let relevance = ranker.rank(&shopper(SortOrder::Relevance)).await.unwrap();
    assert_eq!(relevance.missing_signals, [Signal::Kg]);
}

/// A ranking's facets count what its words and vector match, whichever order it lists them
/// in: a relevance ranking counts them from its first pass's word matches, a price listing
/// finds the matches again; both count the same (a misspelt query, corrected, and a filter
/// on one facet too).
#[tokio::test]
async fn facets_count_the_same_matches_in_either_order() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::rank::SortOrder;
    let (ranker, _, _) = shop();
    for (query, filters) in [
        ("tent", Filters::default()),
        (
            "running",
            Filters::new("", &["Swift".to_string()], None, None, false).unwrap(),
        ),
        ("runing shoe", Filters::default()),
        (
            "lamp",
            Filters::new("", &[], None, Some(50.0), false).unwrap(),
        ),
    ] {
        let request = |sort| RankQuery {
            query: Some(query.into()),
            k: 3,
            filters: filters.clone(),
            facets: vec![FacetField::Brand, FacetField::Category, FacetField::Price],
            sort,
            ..Default::default()
        };
        let ranked = ranker.rank(&request(SortOrder::Relevance)).await.unwrap();
        let listed = ranker
            .rank(&request(SortOrder::PriceAscending))
            .await
            .unwrap();
        assert!(
            ranked.facets.iter().any(|f| !f.values.is_empty()),
            "{query}: nothing counted"
        );
        assert_eq!(ranked.facets, listed.facets, "{query}");
    }
}

/// A budget typed in the query is a price filter on the other words: "tent under 100" ranks
/// "tent" among the items up to 100, tightening (never widening) the request's own bounds;
/// `verbatim` ranks the words as typed.
#[tokio::test]
async fn a_budget_in_the_query_keeps_the_results_to_it() {
    let (ranker, _, _) = shop();
    let search = |query: &str| explained(query, 10);
    let cheap = ranker.rank(&search("tent under 100")).await.unwrap();
    assert_eq!(
        ids(&cheap)[0],
        "p6",
        "the pegs, the only tent item under 100"
    );
    assert!(
        cheap.items.iter().all(|i| i.price <= 100.0),
        "{:?}",
        cheap.items
    );
    let phrase = cheap.price_from_query.unwrap();
    assert_eq!((phrase.min, phrase.max), (None, Some(100.0)));
    assert_eq!(phrase.phrase, "under 100");
    assert_eq!(cheap.items[0].reasons, ["matches your search \"tent\""]);

    let dear = ranker.rank(&search("tent over $200")).await.unwrap();
    assert_eq!(ids(&dear)[0], "p7");
    assert!(dear.items.iter().all(|i| i.price >= 200.0));

    let tighter = ranker
        .rank(&RankQuery {
            filters: Filters::new("", &[], None, Some(50.0), false).unwrap(),
            ..search("tent under 100")
        })
        .await
        .unwrap();
    assert!(tighter.items.iter().all(|i| i.price <= 50.0));

    let typed = ranker
        .rank(&RankQuery {
            verbatim: true,
            ..search("tent under 100")
        })
        .await
        .unwrap();
    assert_eq!(typed.price_from_query, None);
    assert!(typed.items.iter().any(|i| i.price > 100.0));

    // All budget: the items under it, by the usual signals.
    let browse = ranker.rank(&search("under 10")).await.unwrap();
    assert_eq!(ids(&browse), ["p6"]);
}

/// A search's reasons say how each result answers it: every word, which words, or only its
/// meaning (a result that holds none of the words does not "match your search").
#[tokio::test]
async fn reasons_say_which_words_of_the_search_a_result_holds() {
    let (ranker, _, _) = shop();
    let reason = |r: &souk_ranker_core::rank::Ranking, id: &str| {
        r.items
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.reasons[0].clone())
    };
    let q = RankQuery {
        query: Some("trail running shoe".into()),
        k: 9,
        explain: true,
        include_purchased: true,
        ..Default::default()
    };
    let r = ranker.rank(&q).await.unwrap();
    assert_eq!(
        reason(&r, "p9").as_deref(),
        Some("matches your search \"trail running shoe\"")
    );
    assert_eq!(
        reason(&r, "p3").as_deref(),
        Some("matches \"running\", \"shoe\" of your search \"trail running shoe\"")
    );
    assert_eq!(
        reason(&r, "p1").as_deref(),
        Some("matches \"trail\" of your search \"trail running shoe\"")
    );
    assert_eq!(
        reason(&r, "p5").as_deref(),
        Some("close in meaning to your search \"trail running shoe\"")
    );
    // Sorted by price, the same words are named.
    let by_price = ranker
        .rank(&RankQuery {
            sort: souk_ranker_core::rank::SortOrder::PriceAscending,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(
        reason(&by_price, "p3").as_deref(),
        Some("matches \"running\", \"shoe\" of your search \"trail running shoe\"")
    );
}

/// A shopper with a long history (a shared guest id) is ranked from its recent part, but
/// what it bought long ago is still left out: of a search, of recommendations and of a
/// price-sorted list.
#[tokio::test]
async fn a_long_history_still_leaves_out_what_was_bought_long_ago() {
    use souk_ranker_core::rank::SortOrder;
    let (ranker, h, _) = shop();
    {
        let mut catalog = ranker.catalog().write().unwrap();
        for i in 0..600 {
            let gadget = item(&format!("g{i:03}"), "Gadget", &["Gadgets"], "Gizmo", 20.0);
            let v = fake_vector(&gadget.text());
            catalog.upsert(gadget.validated().unwrap(), v).unwrap();
        }
    }
    for (u, ts) in [("a", 1), ("b", 2), ("guest", 3)] {
        record(&ranker, &h, u, "p5", InteractionKind::Purchase, ts);
    }
    for i in 0..600 {
        record(
            &ranker,
            &h,
            "guest",
            &format!("g{i:03}"),
            InteractionKind::View,
            10 + i,
        );
    }
    // Recommendations in the lamps' department (the guest's own gadgets would fill any
    // page); searches over the whole shop.
    let ask = |user: &str, query: Option<&str>, sort: SortOrder, include_purchased: bool| {
        let filters = match query {
            None => Filters::new("Home", &[], None, None, false).unwrap(),
            Some(_) => Filters::default(),
        };
        let request = RankQuery {
            user: Some(h.key(user)),
            query: query.map(String::from),
            k: 30,
            sort,
            include_purchased,
            filters,
            ..Default::default()
        };
        let ranker = &ranker;
        async move { ranker.rank(&request).await.unwrap() }
    };
    let newcomer = ask("new", None, SortOrder::Relevance, false).await;
    assert_eq!(
        ids(&newcomer),
        ["p5", "p8"],
        "the shop's most bought item first"
    );
    for (query, sort) in [
        (None, SortOrder::Relevance),
        (Some("lamp"), SortOrder::Relevance),
        (Some("lamp"), SortOrder::PriceAscending),
    ] {
        let guest = ask("guest", query, sort, false).await;
        assert!(
            !ids(&guest).contains(&"p5"),
            "{query:?} {sort:?}: bought 600 items ago, listed: {:?}",
            ids(&guest)
        );
        let included = ask("guest", query, sort, true).await;
        assert!(
            ids(&included).contains(&"p5"),
            "{query:?} {sort:?} with include_purchased: {:?}",
            ids(&included)
        );
    }
}

fn pin(ranker: &Ranker<FakeEncoder, FakeGraph>, query: &str, items: &[&str]) {
    pin_and_hide(ranker, query, items, &[]);
}

fn pin_and_hide(
    ranker: &Ranker<FakeEncoder, FakeGraph>,
    query: &str,
    items: &[&str],
    hidden: &[&str],
) {
    use souk_ranker_core::pins::{PinRule, Pins};
    let strings = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
    let pins = Pins::new(vec![PinRule {
        query: query.into(),
        items: strings(items),
        hidden: strings(hidden),
        ..Default::default()
    }])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
}

/// A rule's boosts move the scores of the items that pass their filters in its search or
/// page, by their amounts, up or down; the ranking is otherwise the same, pages are slices
/// of it, pins still lead, and nothing else (another search, a price order) moves.
#[tokio::test]
async fn boosts_lift_and_lower_the_items_that_pass_their_filters() {
    use souk_ranker_core::pins::{Boost, PinRule, Pins};
    use souk_ranker_core::rank::SortOrder;
    let (ranker, hasher, _) = shop();
    let search = |query: &str| explained(query, 9);
    // A shopper who viewed the trail tent: the graph relates the pegs to it (an accessory),
    // and rescores them.
    record(&ranker, &hasher, "u", "p1", InteractionKind::View, 1);
    let shopper = |query: &str| RankQuery {
        user: Some(hasher.key("u")),
        ..search(query)
    };
    let known = ranker.rank(&shopper("tent")).await.unwrap();
    let set = |rules: Vec<PinRule>| {
        let pins = Pins::new(rules).unwrap();
        ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    };
    let brand = |brand: &str, amount: f32| Boost {
        brands: vec![brand.into()],
        amount,
        ..Default::default()
    };
    let rule = |query: &str, items: &[&str], boosts: Vec<Boost>| PinRule {
        query: query.into(),
        items: items.iter().map(|s| s.to_string()).collect(),
        boosts,
        ..Default::default()
    };
    let organic = ranker.rank(&search("tent")).await.unwrap();
    let score = |r: &souk_ranker_core::rank::Ranking, id: &str| {
        r.items.iter().find(|i| i.id == id).map(|i| i.score)
    };
    let top = ids(&organic)[0];
    assert_ne!(top, "p7");
    assert!(
        ids(&organic).iter().position(|&id| id == "p6") < Some(3),
        "the pegs match \"tent\" well: {:?}",
        ids(&organic)
    );
    // The family tent's maker on promotion; the pegs' maker lowered.
    set(vec![rule(
        "tent",
        &[],
        vec![brand("BIGTOP", 0.5), brand("Pegco", -0.5)],
    )]);
    let boosted = ranker.rank(&search("Tents")).await.unwrap();
    assert_eq!(ids(&boosted)[0], "p7");
    let first = &boosted.items[0];
    assert!(!first.pinned);
    assert_eq!(first.boost, 0.5);
    assert!((first.score - score(&organic, "p7").unwrap() - 0.5).abs() < 1e-5);
    assert_eq!(first.reasons[0], "promoted by the shop: brand BIGTOP");
    let pegs = boosted.items.iter().find(|i| i.id == "p6").unwrap();
    assert_eq!(pegs.boost, -0.5);
    assert!((pegs.score - score(&organic, "p6").unwrap() + 0.5).abs() < 1e-5);
    assert_eq!(
        pegs.reasons.last().unwrap(),
        "placed lower by the shop: brand Pegco"
    );
    // Every other item keeps its score, and the list is ordered by the scores as moved.
    for item in &boosted.items {
        if item.id != "p6" && item.id != "p7" {
            assert_eq!(item.boost, 0.0);
            assert_eq!(Some(item.score), score(&organic, &item.id), "{}", item.id);
        }
    }
    assert!(boosted.items.windows(2).all(|w| w[0].score >= w[1].score));
    // For the shopper too, after the graph rescored the pegs.
    let theirs = ranker.rank(&shopper("tent")).await.unwrap();
    let pegs = theirs.items.iter().find(|i| i.id == "p6").unwrap();
    assert!(pegs.contributions.iter().any(|c| c.signal == Signal::Kg));
    assert!((pegs.score - score(&known, "p6").unwrap() + 0.5).abs() < 1e-5);
    for offset in 0..4 {
        let page = ranker
            .rank(&RankQuery {
                k: 2,
                offset,
                ..search("tent")
            })
            .await
            .unwrap();
        assert_eq!(
            ids(&page),
            ids(&boosted)[offset..offset + 2],
            "page {offset}"
        );
    }
    // Pins still lead; the boosts order the rest.
    set(vec![rule("tent", &["p1"], vec![brand("Bigtop", 0.5)])]);
    let both = ranker.rank(&search("tent")).await.unwrap();
    assert_eq!(ids(&both)[..2], ["p1", "p7"]);
    assert!(both.items[0].pinned && !both.items[1].pinned);
    // Not moved: another search, a price order.
    let pegs_search = ranker.rank(&search("tent pegs")).await.unwrap();
    assert!(pegs_search.items.iter().all(|i| i.boost == 0.0));
    let cheap = ranker
        .rank(&RankQuery {
            sort: SortOrder::PriceAscending,
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&cheap), ["p6", "p1", "p7"]);
    // A category's page: what is under 50 lifted on the Outdoor page.
    set(vec![PinRule {
        query: String::new(),
        category: "Outdoor".into(),
        boosts: vec![Boost {
            max_price: Some(50.0),
            amount: 1.0,
            ..Default::default()
        }],
        ..rule("", &[], vec![])
    }]);
    let page = ranker
        .rank(&RankQuery {
            filters: Filters::new("Outdoor", &[], None, None, false).unwrap(),
            k: 9,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut cheap_first: Vec<&str> = ids(&page)[..2].to_vec();
    cheap_first.sort_unstable();
    assert_eq!(cheap_first, ["p2", "p6"], "{:?}", ids(&page));
    assert_eq!(page.items[0].reasons[0], "promoted by the shop: under 50");
}

/// The shop's rule for every ranking hides its items from and moves its boosts' items in
/// every ranking (a search, beside the search's own rule; a category's page; an item's page;
/// a shopper's picks; a price order hides only), and leaves a re-ranking of the caller's own
/// candidates alone.
#[tokio::test]
async fn the_rule_for_every_ranking_moves_every_ranking_but_a_re_ranking() {
    use souk_ranker_core::pins::{Boost, PinRule, Pins};
    use souk_ranker_core::rank::{Ranking, SortOrder};
    let (ranker, hasher, _) = shop();
    record(&ranker, &hasher, "u", "p3", InteractionKind::View, 1);
    let everything = RankQuery {
        k: 9,
        explain: true,
        ..Default::default()
    };
    let asks = [
        (
            "search",
            RankQuery {
                query: Some("tent".into()),
                ..everything.clone()
            },
        ),
        (
            "another search",
            RankQuery {
                query: Some("running".into()),
                ..everything.clone()
            },
        ),
        (
            "category page",
            RankQuery {
                filters: Filters::new("Home", &[], None, None, false).unwrap(),
                ..everything.clone()
            },
        ),
        (
            "item page",
            RankQuery {
                item: Some("p8".into()),
                ..everything.clone()
            },
        ),
        (
            "shopper's picks",
            RankQuery {
                user: Some(hasher.key("u")),
                ..everything.clone()
            },
        ),
    ];
    let mut organic = Vec::new();
    for (_, ask) in &asks {
        organic.push(ranker.rank(ask).await.unwrap());
    }
    let brand = |brand: &str, amount: f32| Boost {
        brands: vec![brand.into()],
        amount,
        ..Default::default()
    };
    let pins = Pins::new(vec![
        PinRule {
            query: "tent".into(),
            items: vec!["p7".into()],
            boosts: vec![brand("Pegco", -0.5)],
            ..Default::default()
        },
        PinRule {
            hidden: vec!["p5".into()],
            boosts: vec![brand("Swift", 0.5)],
            everywhere: true,
            ..Default::default()
        },
    ])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    let score = |r: &Ranking, id: &str| r.items.iter().find(|i| i.id == id).map(|i| i.score);
    for ((what, ask), organic) in asks.iter().zip(&organic) {
        let now = ranker.rank(ask).await.unwrap();
        assert!(!ids(&now).contains(&"p5"), "{what}: hidden {:?}", ids(&now));
        let listed = |r: &Ranking| -> Vec<String> {
            let mut ids: Vec<String> = r
                .items
                .iter()
                .filter(|i| i.id != "p5")
                .map(|i| i.id.clone())
                .collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(listed(&now), listed(organic), "{what}: the same items");
        assert!(
            now.items
                .windows(2)
                .all(|w| w[0].pinned || w[0].score >= w[1].score)
        );
        for item in now.items.iter().filter(|i| !i.pinned) {
            let moved = match item.brand.as_str() {
                "Swift" => 0.5,
                "Pegco" if *what == "search" => -0.5,
                _ => 0.0,
            };
            assert_eq!(item.boost, moved, "{what}: {}", item.id);
            let before = score(organic, &item.id).unwrap();
            assert!(
                (item.score - before - moved).abs() < 1e-5,
                "{what}: {} {} -> {}",
                item.id,
                before,
                item.score
            );
            if moved > 0.0 {
                assert_eq!(item.reasons[0], "promoted by the shop: brand Swift");
            }
        }
        // The Home page holds no Swift item; every other ranking lists some.
        assert_eq!(
            now.items.iter().any(|i| i.boost == 0.5),
            *what != "category page",
            "{what}: {:?}",
            ids(&now)
        );
        // The search's own rule still pins; nothing else is pinned.
        let pinned: Vec<&str> = now
            .items
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.id.as_str())
            .collect();
        let expected: &[&str] = if *what == "search" { &["p7"] } else { &[] };
        assert_eq!(pinned, expected, "{what}");
    }
    // Asked for the Swift items and others, the shoes lead everywhere the words allow.
    let running = ranker.rank(&asks[1].1).await.unwrap();
    assert!(running.items.iter().take(3).all(|i| i.brand == "Swift"));
    // A price order hides, and moves nothing.
    let cheap = ranker
        .rank(&RankQuery {
            query: Some("lamp".into()),
            sort: SortOrder::PriceAscending,
            ..everything.clone()
        })
        .await
        .unwrap();
    assert_eq!(ids(&cheap), ["p8"]);
    // A re-ranking of the caller's own candidates is the caller's: not hidden, not moved.
    let mine = ranker
        .rank(&RankQuery {
            query: Some("lamp".into()),
            candidate_ids: vec!["p5".into(), "p8".into(), "p3".into()],
            ..everything
        })
        .await
        .unwrap();
    assert!(ids(&mine).contains(&"p5"), "{:?}", ids(&mine));
    assert!(mine.items.iter().all(|i| i.boost == 0.0));
}

/// A scheduled rule pins while in force, at the request's time (the wall clock when it
/// gives none), and the standing rule again after it.
#[tokio::test]
async fn a_scheduled_rule_pins_only_while_in_force() {
    use souk_ranker_core::pins::{PinRule, Pins};
    let (ranker, _, _) = shop();
    let rule = |items: &[&str], starts_ms: Option<i64>, ends_ms: Option<i64>| PinRule {
        query: "tent".into(),
        items: items.iter().map(|s| s.to_string()).collect(),
        starts_ms,
        ends_ms,
        ..Default::default()
    };
    let pins = Pins::new(vec![
        rule(&["p6"], None, None),
        rule(&["p7"], Some(1_000), Some(2_000)),
    ])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    let pinned_at = async |now_ms: Option<i64>| {
        let r = ranker
            .rank(&RankQuery {
                query: Some("tent".into()),
                k: 5,
                now_ms,
                ..Default::default()
            })
            .await
            .unwrap();
        r.items
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pinned_at(Some(999)).await, ["p6"]);
    assert_eq!(pinned_at(Some(1_000)).await, ["p7"]);
    assert_eq!(pinned_at(Some(1_999)).await, ["p7"]);
    assert_eq!(pinned_at(Some(2_000)).await, ["p6"]);
    assert_eq!(
        pinned_at(None).await,
        ["p6"],
        "the wall clock is long past 2 s"
    );
}

/// A search's rule may send it to another page: the ranking names the address while the
/// rule is in force, for that search however written and by price too, and is ranked as
/// it would be without it (a caller that stays shows the same results); other searches, a
/// category's page and a re-ranking of the caller's candidates are not redirected.
#[tokio::test]
async fn a_redirected_search_names_its_page_and_is_ranked_all_the_same() {
    use souk_ranker_core::pins::{PinRule, Pins};
    let (ranker, _, _) = shop();
    let before = ranker.rank(&explained("tent", 9)).await.unwrap();
    assert_eq!(before.redirect, None);
    let pins = Pins::new(vec![
        PinRule {
            query: "tent".into(),
            redirect: "/sale/tents".into(),
            ..Default::default()
        },
        PinRule {
            query: "tent".into(),
            redirect: "https://shop.example/spring".into(),
            starts_ms: Some(1_000),
            ends_ms: Some(2_000),
            ..Default::default()
        },
    ])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    let at = |query: &str, now_ms: i64| RankQuery {
        now_ms: Some(now_ms),
        ..explained(query, 9)
    };
    let redirected = ranker.rank(&at("tent", 0)).await.unwrap();
    assert_eq!(redirected.redirect.as_deref(), Some("/sale/tents"));
    assert_eq!(
        redirected.items, before.items,
        "the results are ranked as without the rule"
    );
    let spring = ranker.rank(&at("tent", 1_500)).await.unwrap();
    let written_otherwise = ranker.rank(&at("Tents", 0)).await.unwrap();
    assert_eq!(written_otherwise.redirect.as_deref(), Some("/sale/tents"));
    assert_eq!(
        spring.redirect.as_deref(),
        Some("https://shop.example/spring"),
        "the scheduled rule in force replaces the standing one"
    );
    assert_eq!(
        ranker
            .rank(&at("tent", 2_000))
            .await
            .unwrap()
            .redirect
            .as_deref(),
        Some("/sale/tents")
    );
    let by_price = RankQuery {
        sort: souk_ranker_core::rank::SortOrder::PriceAscending,
        ..at("tent", 0)
    };
    assert_eq!(
        ranker.rank(&by_price).await.unwrap().redirect.as_deref(),
        Some("/sale/tents")
    );
    assert!(redirected.banners.is_empty());
    for (what, request) in [
        ("another search", at("tent pegs", 0)),
        (
            "a re-ranking",
            RankQuery {
                candidate_ids: vec!["p1".into(), "p7".into()],
                ..at("tent", 0)
            },
        ),
        (
            "the Tents page",
            RankQuery {
                query: None,
                filters: Filters::new("Tents", &[], None, None, false).unwrap(),
                ..at("", 0)
            },
        ),
    ] {
        let ranking = ranker.rank(&request).await.unwrap();
        assert_eq!(ranking.redirect, None, "{what}");
        assert!(!ranking.items.is_empty(), "{what}");
    }
}

/// The banners of the rules that apply come back with the ranking (the search's own first,
/// then the rule for every ranking's), also by price, and not with a re-ranking.
#[tokio::test]
async fn a_rankings_banners_are_those_of_its_rules() {
    use souk_ranker_core::pins::{PinRule, Pins};
    let (ranker, _, _) = shop();
    let pins = Pins::new(vec![
        PinRule {
            query: "tent".into(),
            banner: "Tents ship free".into(),
            ..Default::default()
        },
        PinRule {
            everywhere: true,
            banner: "Spring sale".into(),
            ..Default::default()
        },
    ])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    let banners = async |request: RankQuery| ranker.rank(&request).await.unwrap().banners;
    assert_eq!(
        banners(explained("tents", 5)).await,
        ["Tents ship free", "Spring sale"]
    );
    assert_eq!(banners(explained("lamp", 5)).await, ["Spring sale"]);
    assert_eq!(
        banners(RankQuery {
            sort: souk_ranker_core::rank::SortOrder::PriceAscending,
            ..explained("tent", 5)
        })
        .await,
        ["Tents ship free", "Spring sale"]
    );
    assert_eq!(
        banners(RankQuery {
            k: 5,
            ..Default::default()
        })
        .await,
        ["Spring sale"],
        "a shopper's picks"
    );
    assert!(
        banners(RankQuery {
            candidate_ids: vec!["p1".into()],
            ..explained("tent", 5)
        })
        .await
        .is_empty()
    );
}

/// A rule for the searches containing a word moves every search that holds it, beside the
/// search's own rule (which alone pins), and no other search.
#[tokio::test]
async fn a_rule_containing_a_word_moves_every_search_holding_it() {
    use souk_ranker_core::pins::{Boost, PinRule, Pins};
    let (ranker, _, _) = shop();
    let search = |query: &str| explained(query, 9);
    let queries = ["tent", "tent pegs", "family tents", "trail running"];
    let mut organic = Vec::new();
    for q in queries {
        organic.push(ranker.rank(&search(q)).await.unwrap());
    }
    let pins = Pins::new(vec![
        PinRule {
            query: "tent".into(),
            items: vec!["p1".into()],
            ..Default::default()
        },
        PinRule {
            query: "Tents".into(),
            contains: true,
            hidden: vec!["p6".into()],
            boosts: vec![Boost {
                brands: vec!["Bigtop".into()],
                amount: 0.4,
                ..Default::default()
            }],
            ..Default::default()
        },
    ])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    for (q, before) in queries.iter().zip(&organic) {
        let now = ranker.rank(&search(q)).await.unwrap();
        let holds = q.contains("tent");
        assert_eq!(
            ids(&now).contains(&"p6"),
            !holds && ids(before).contains(&"p6"),
            "{q}"
        );
        for item in now.items.iter().filter(|i| !i.pinned) {
            let moved = if holds && item.brand == "Bigtop" {
                0.4
            } else {
                0.0
            };
            assert_eq!(item.boost, moved, "{q}: {}", item.id);
            let was = before.items.iter().find(|i| i.id == item.id).unwrap().score;
            assert!((item.score - was - moved).abs() < 1e-5, "{q}: {}", item.id);
        }
        let pinned: Vec<&str> = now
            .items
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.id.as_str())
            .collect();
        let expected: &[&str] = if *q == "tent" { &["p1"] } else { &[] };
        assert_eq!(pinned, expected, "{q}: only the search's own rule pins");
        if holds {
            assert_eq!(ids(&now)[usize::from(*q == "tent")], "p7", "{q}: lifted");
        }
    }
}

/// A facet's counts are what the shopper finds on choosing the value: the request's own
/// exclusions, the page's item and what the shopper bought (unless kept) are not counted, as
/// they are not listed, by relevance or by price.
#[tokio::test]
async fn facet_counts_leave_out_what_the_ranking_leaves_out() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::rank::{Ranking, SortOrder};
    let (ranker, hasher, _) = shop();
    record(&ranker, &hasher, "u", "p1", InteractionKind::Purchase, 10);
    let outdoor = RankQuery {
        filters: Filters::new("Outdoor", &[], None, None, false).unwrap(),
        k: 9,
        facets: vec![FacetField::Brand],
        ..Default::default()
    };
    let counts = |r: &Ranking| -> Vec<(String, u64)> {
        let mut values = r.facets[0].values.clone();
        values.sort();
        values
    };
    let listed_brands = |r: &Ranking| -> Vec<(String, u64)> {
        let mut by_brand: HashMap<String, u64> = HashMap::new();
        for item in &r.items {
            *by_brand.entry(item.brand.clone()).or_default() += 1;
        }
        let mut values: Vec<(String, u64)> = by_brand.into_iter().collect();
        values.sort();
        values
    };
    let all = ranker.rank(&outdoor).await.unwrap();
    let owned = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|&(b, n)| (b.to_string(), n)).collect()
    };
    assert_eq!(
        counts(&all),
        owned(&[("Acme", 2), ("Bigtop", 1), ("Pegco", 1)])
    );
    for sort in [SortOrder::Relevance, SortOrder::PriceAscending] {
        let asks = [
            (
                "excluded",
                RankQuery {
                    exclude: ["p2".to_string()].into(),
                    sort,
                    ..outdoor.clone()
                },
                &[("Acme", 1), ("Bigtop", 1), ("Pegco", 1)][..],
            ),
            (
                "bought",
                RankQuery {
                    user: Some(hasher.key("u")),
                    sort,
                    ..outdoor.clone()
                },
                &[("Acme", 1), ("Bigtop", 1), ("Pegco", 1)][..],
            ),
            (
                "bought and kept",
                RankQuery {
                    user: Some(hasher.key("u")),
                    include_purchased: true,
                    sort,
                    ..outdoor.clone()
                },
                &[("Acme", 2), ("Bigtop", 1), ("Pegco", 1)][..],
            ),
            (
                "both",
                RankQuery {
                    user: Some(hasher.key("u")),
                    exclude: ["p2".to_string(), "p7".to_string()].into(),
                    sort,
                    ..outdoor.clone()
                },
                &[("Pegco", 1)][..],
            ),
        ];
        for (what, ask, expected) in asks {
            let r = ranker.rank(&ask).await.unwrap();
            assert_eq!(counts(&r), owned(expected), "{what} {sort:?}");
            assert_eq!(counts(&r), listed_brands(&r), "{what} {sort:?}: as listed");
        }
        // An item's page (its vector the query: the items nearest it count) counts the
        // items like it, not the item itself, nor only those as like it as itself.
        let page = ranker
            .rank(&RankQuery {
                item: Some("p6".into()),
                sort,
                ..outdoor.clone()
            })
            .await
            .unwrap();
        let listed = listed_brands(&page);
        assert!(!counts(&page).is_empty(), "{sort:?}");
        for (brand, n) in counts(&page) {
            assert_ne!(brand, "Pegco", "{sort:?}: the page's item counted");
            assert!(
                listed.iter().any(|(b, m)| *b == brand && *m >= n),
                "{sort:?}: {brand} {n} counted, listed {listed:?}"
            );
        }
    }
}

/// A category's page (no query, no item, that category as the filter) is merchandised as a
/// search is: the shop's pins first, its hidden items left out of the page and its facet
/// counts, in any order; another category, a search within the category and an item's page
/// are not touched.
#[tokio::test]
async fn a_category_page_leads_with_its_pins_and_hides_what_the_shop_hides() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::pins::{PinRule, Pins};
    use souk_ranker_core::rank::SortOrder;
    let (ranker, _, _) = shop();
    let browse = |category: &str| RankQuery {
        filters: Filters::new(category, &[], None, None, false).unwrap(),
        k: 9,
        explain: true,
        facets: vec![FacetField::Brand],
        ..Default::default()
    };
    let organic = ranker.rank(&browse("Outdoor")).await.unwrap();
    assert_eq!(ids(&organic).len(), 4, "{:?}", ids(&organic));
    let strings = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
    // The family tent first on the Outdoor page, then the stove; the pegs hidden there; the
    // lamp pinned there too, but no filter of "Outdoor" passes it.
    let pins = Pins::new(vec![PinRule {
        query: String::new(),
        category: "Outdoor ".into(),
        items: strings(&["p7", "p5", "p2"]),
        hidden: strings(&["p6"]),
        ..Default::default()
    }])
    .unwrap();
    ranker.catalog().write().unwrap().set_pins(Arc::new(pins));
    let page = ranker.rank(&browse(" OUTDOOR")).await.unwrap();
    assert_eq!(ids(&page), ["p7", "p2", "p1"]);
    assert!(page.items[0].pinned && page.items[1].pinned && !page.items[2].pinned);
    assert_eq!(page.items[0].reasons[0], "featured by the shop in Outdoor");
    assert!(!brands(&page).contains("Pegco"), "hidden from the counts");
    assert!(brands(&organic).contains("Pegco"));
    // By price: hidden, not pinned.
    let cheap = ranker
        .rank(&RankQuery {
            sort: SortOrder::PriceAscending,
            ..browse("outdoor")
        })
        .await
        .unwrap();
    assert_eq!(ids(&cheap), ["p2", "p1", "p7"]);
    // The shopper's other filters still hold: a brand the pins lack.
    let acme = ranker
        .rank(&RankQuery {
            filters: Filters::new("Outdoor", &["Acme".into()], None, None, false).unwrap(),
            ..browse("Outdoor")
        })
        .await
        .unwrap();
    assert_eq!(ids(&acme)[0], "p2", "the stove: pinned and Acme's");
    assert_eq!(ids(&acme).len(), 2);
    // Untouched: a narrower category, a search in the category, an item's page in it.
    let tents = ranker.rank(&browse("Tents")).await.unwrap();
    assert!(ids(&tents).contains(&"p6"));
    assert!(tents.items.iter().all(|i| !i.pinned));
    let search = ranker
        .rank(&RankQuery {
            query: Some("tent".into()),
            ..browse("Outdoor")
        })
        .await
        .unwrap();
    assert!(ids(&search).contains(&"p6"));
    assert!(search.items.iter().all(|i| !i.pinned));
    let item_page = ranker
        .rank(&RankQuery {
            item: Some("p1".into()),
            ..browse("Outdoor")
        })
        .await
        .unwrap();
    assert!(item_page.items.iter().all(|i| !i.pinned));
    assert!(ids(&item_page).contains(&"p6"));
}

/// Items a shop hides from a search are left out of it by relevance and by price, on every
/// page, and of its facet counts, and shown again for any other search; the rule's pins
/// still lead.
#[tokio::test]
async fn hidden_items_leave_their_search_in_any_order() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::rank::SortOrder;
    let (ranker, _, _) = shop();
    let search = |query: &str, sort| RankQuery {
        query: Some(query.into()),
        k: 9,
        sort,
        facets: vec![FacetField::Brand],
        ..Default::default()
    };
    let organic = ranker
        .rank(&search("tent", SortOrder::Relevance))
        .await
        .unwrap();
    assert!(ids(&organic).contains(&"p6"), "the pegs match \"tent\"");
    assert!(brands(&organic).contains("Pegco"));
    // The pegs hidden, the family tent pinned.
    pin_and_hide(&ranker, "tent", &["p7"], &["p6"]);
    let r = ranker
        .rank(&search("Tents", SortOrder::Relevance))
        .await
        .unwrap();
    assert_eq!(ids(&r)[0], "p7");
    let rest: Vec<&str> = ids(&organic)
        .into_iter()
        .filter(|id| !["p6", "p7"].contains(id))
        .collect();
    assert_eq!(ids(&r)[1..], rest[..]);
    assert!(
        !brands(&r).contains("Pegco"),
        "the pegs' brand counted nothing"
    );
    let cheap = ranker
        .rank(&search("tent", SortOrder::PriceAscending))
        .await
        .unwrap();
    assert_eq!(
        ids(&cheap),
        ["p1", "p7"],
        "hidden by price too; no pin there"
    );
    assert_eq!(brands(&cheap), brands(&r));
    for offset in 0..8 {
        let page = ranker
            .rank(&RankQuery {
                k: 1,
                offset,
                ..search("tent", SortOrder::Relevance)
            })
            .await
            .unwrap();
        assert!(!ids(&page).contains(&"p6"), "page {offset}");
    }
    let pegs = ranker
        .rank(&search("tent pegs", SortOrder::Relevance))
        .await
        .unwrap();
    assert_eq!(ids(&pegs)[0], "p6", "another search still finds them");
    // Hiding alone.
    pin_and_hide(&ranker, "tent", &[], &["p6", "p1"]);
    let r = ranker
        .rank(&search("tent", SortOrder::Relevance))
        .await
        .unwrap();
    assert!(
        r.items
            .iter()
            .all(|i| !i.pinned && i.id != "p6" && i.id != "p1")
    );
}

/// A shop's pins for a search come first, in its order, and the ranking goes on without
/// them; pages continue the same list; filters, exclusions and purchases still hold; a
/// price order, a re-ranking of given ids and any other search are not pinned.
#[tokio::test]
async fn pinned_items_lead_their_search_and_the_ranking_goes_on_without_them() {
    use souk_ranker_core::rank::SortOrder;
    let (ranker, hasher, _) = shop();
    let search = |query: &str| explained(query, 9);
    let organic = ranker.rank(&search("tent")).await.unwrap();
    assert!(organic.items.iter().all(|i| !i.pinned));
    assert!(!ids(&organic)[..3].contains(&"p5"), "a lamp is no tent");
    // A lamp the shop promotes for "tent", the family tent, and an id not (yet) in the shop.
    pin(&ranker, "tent", &["p5", "nope", "p7"]);
    let pinned = ranker.rank(&search("Tents")).await.unwrap();
    assert_eq!(ids(&pinned)[..2], ["p5", "p7"]);
    assert!(pinned.items[0].pinned && pinned.items[1].pinned);
    assert!(pinned.items[2..].iter().all(|i| !i.pinned));
    assert_eq!(
        pinned.items[0].reasons[0],
        "featured by the shop for \"tent\""
    );
    let rest: Vec<&str> = ids(&organic)
        .into_iter()
        .filter(|id| !["p5", "p7"].contains(id))
        .collect();
    assert_eq!(ids(&pinned)[2..], rest[..], "the ranking after the pins");
    // A page of it is a slice of it; one result is the first pin.
    let page = ranker
        .rank(&RankQuery {
            k: 3,
            offset: 1,
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&page), ids(&pinned)[1..4]);
    let one = ranker
        .rank(&RankQuery {
            k: 1,
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&one), ["p5"]);
    // Pins pass the request's filters and exclusions like every result.
    let tents = ranker
        .rank(&RankQuery {
            filters: Filters::new("Tents", &[], None, None, false).unwrap(),
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&tents)[0], "p7", "the lamp is not in Tents");
    assert!(!ids(&tents).contains(&"p5"));
    let excluded = ranker
        .rank(&RankQuery {
            exclude: HashSet::from(["p5".to_string()]),
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&excluded)[0], "p7");
    assert!(!ids(&excluded).contains(&"p5"));
    record(&ranker, &hasher, "u", "p5", InteractionKind::Purchase, 1);
    let bought = ranker
        .rank(&RankQuery {
            user: Some(hasher.key("u")),
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&bought)[0], "p7", "the shopper bought the lamp");
    assert!(!ids(&bought).contains(&"p5"));
    // Not pinned: a price order, given candidates, another search.
    let cheap = ranker
        .rank(&RankQuery {
            sort: SortOrder::PriceAscending,
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&cheap), ["p6", "p1", "p7"]);
    let given = ranker
        .rank(&RankQuery {
            candidate_ids: vec!["p1".into(), "p5".into()],
            ..search("tent")
        })
        .await
        .unwrap();
    assert_eq!(ids(&given), ["p1", "p5"]);
    assert!(given.items.iter().all(|i| !i.pinned));
    let pegs = ranker.rank(&search("tent pegs")).await.unwrap();
    assert_eq!(ids(&pegs)[0], "p6");
    assert!(pegs.items.iter().all(|i| !i.pinned));
}

/// In a catalog large enough for the candidate pool (the HNSW graph's nearest items, the
/// best word matches, popular items), a pinned item that none of them brings is still
/// placed first.
#[tokio::test]
async fn an_item_the_candidate_pool_would_not_hold_is_still_pinned() {
    let (ranker, _, _) = shop();
    {
        let mut catalog = ranker.catalog().write().unwrap();
        catalog.set_ann_min_items(100);
        for i in 0..2_000 {
            let gadget = item(
                &format!("g{i:04}"),
                &format!("Gadget {i} widget"),
                &["Gadgets"],
                "Gizmo",
                20.0,
            );
            // Scattered; the pinned one points away from the query.
            let mut v: Vec<f32> = if i == 1234 {
                fake_vector("camping stove").iter().map(|x| -x).collect()
            } else {
                (0..=VOCAB.len())
                    .map(|d| ((i * 7919 + d * 104_729) % 1_000) as f32 / 500.0 - 1.0)
                    .collect()
            };
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            catalog.upsert(gadget.validated().unwrap(), v).unwrap();
        }
    }
    pin(&ranker, "camping stove", &["g1234", "p2"]);
    let r = ranker
        .rank(&RankQuery {
            query: Some("camping stove".into()),
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&r)[..2], ["g1234", "p2"]);
    assert_eq!(r.first_pass, souk_ranker_core::rank::FirstPass::Pool);
    // A word all 2,000 gadgets hold: more candidates than the first pass keeps for a page;
    // the pinned lamp, which holds no word of it, is kept and placed all the same.
    pin(&ranker, "widget", &["p5"]);
    let r = ranker
        .rank(&RankQuery {
            query: Some("widget".into()),
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.candidates > 1_000, "{}", r.candidates);
    assert_eq!(ids(&r)[0], "p5");
    assert!(ids(&r)[1..].iter().all(|id| id.starts_with('g')));
}

/// A ranking collapsed on a field keeps each value's first item and drops the rest: it is
/// the uncollapsed ranking less each value's later items, by relevance and by price; pages
/// are slices of it; an item without the field stands alone; the shop's pins all stay, each
/// taking its value's place.
#[tokio::test]
async fn a_collapsed_ranking_keeps_each_values_first_item() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::rank::SortOrder;
    let (ranker, _, _) = shop();
    // Two colours of one style, and a tent of none.
    for (id, title, style) in [
        ("v1", "Trail Tent Green", Some("TT-1")),
        ("v2", "Trail Tent Blue", Some("tt-1")),
        ("v3", "Dome Tent", None),
    ] {
        let mut item = item(id, title, &["Outdoor", "Tents"], "Acme", 99.0);
        if let Some(style) = style {
            item.attributes.insert("style".into(), style.into());
        }
        let v = fake_vector(&item.text());
        ranker
            .catalog()
            .write()
            .unwrap()
            .upsert(item.validated().unwrap(), v)
            .unwrap();
    }
    let brand = FacetField::parse_collapse("brand").unwrap();
    let style = FacetField::parse_collapse("attribute:Style").unwrap();
    let brand_of = |id: &str| {
        ranker
            .catalog()
            .read()
            .unwrap()
            .get(id)
            .unwrap()
            .brand
            .clone()
    };
    let style_of = |id: &str| {
        let catalog = ranker.catalog().read().unwrap();
        catalog
            .get(id)
            .unwrap()
            .attributes
            .get("style")
            .map(|s| s.to_lowercase())
    };
    let mut rankings_collapsed = 0;
    for query in [Some("tent"), Some("running"), Some("lamp"), None] {
        for sort in [
            SortOrder::Relevance,
            SortOrder::PriceAscending,
            SortOrder::PriceDescending,
        ] {
            for (field, group) in [
                (&brand, &brand_of as &dyn Fn(&str) -> String),
                (&style, &|id: &str| {
                    style_of(id).unwrap_or_else(|| id.to_string())
                }),
            ] {
                let request = RankQuery {
                    query: query.map(String::from),
                    k: 20,
                    sort,
                    ..Default::default()
                };
                let whole = ranker.rank(&request).await.unwrap();
                let collapsed = RankQuery {
                    collapse: Some(field.clone()),
                    ..request.clone()
                };
                let got = ranker.rank(&collapsed).await.unwrap();
                let mut seen = HashSet::new();
                let want: Vec<&str> = ids(&whole)
                    .into_iter()
                    .filter(|id| seen.insert(group(id)))
                    .collect();
                assert_eq!(ids(&got), want, "{query:?} {sort:?} {field:?}");
                if want.len() < whole.items.len() {
                    rankings_collapsed += 1;
                }
                // Pages are slices of the collapsed list.
                let mut paged = Vec::new();
                for offset in (0..want.len()).step_by(2) {
                    let page = ranker
                        .rank(&RankQuery {
                            k: 2,
                            offset,
                            ..collapsed.clone()
                        })
                        .await
                        .unwrap();
                    paged.extend(page.items.into_iter().map(|i| i.id));
                }
                assert_eq!(paged, want, "{query:?} {sort:?} {field:?} paged");
            }
        }
    }
    // Every brand ranking (12) drops items, and so does every style ranking that lists both
    // styled tents (20 of the 24 in all).
    assert!(rankings_collapsed >= 18, "{rankings_collapsed}");
    // Both styled tents are Acme's and of one style: collapsed, only one is listed, which
    // says its group holds two; a tent of no style stands alone (0).
    let tents = RankQuery {
        query: Some("tent".into()),
        k: 20,
        collapse: Some(style.clone()),
        ..Default::default()
    };
    let listed = ranker.rank(&tents).await.unwrap();
    let sizes: HashMap<&str, u32> = listed
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.group_size))
        .collect();
    let styled = sizes.iter().find(|(id, _)| ["v1", "v2"].contains(*id));
    assert_eq!(styled.map(|(_, n)| *n), Some(2), "{sizes:?}");
    assert_eq!((sizes["v3"], sizes["p1"]), (0, 0));
    // By brand, by price too: Acme has five items; uncollapsed, no group is given.
    for sort in [SortOrder::Relevance, SortOrder::PriceDescending] {
        let by_brand = RankQuery {
            collapse: Some(brand.clone()),
            sort,
            ..tents.clone()
        };
        let ranking = ranker.rank(&by_brand).await.unwrap();
        let acme = ranking.items.iter().find(|i| i.brand == "Acme").unwrap();
        assert_eq!(acme.group_size, 5, "{sort:?}");
        let whole = RankQuery {
            collapse: None,
            ..by_brand
        };
        let ranking = ranker.rank(&whole).await.unwrap();
        assert!(ranking.items.iter().all(|i| i.group_size == 0));
    }
    let styled = ids(&listed)
        .iter()
        .filter(|id| id.starts_with("v") && **id != "v3")
        .count();
    assert_eq!(styled, 1, "{:?}", ids(&listed));
    assert!(ids(&listed).contains(&"v3") && ids(&listed).contains(&"p1"));

    // Pins stay, each taking its brand's place: "running" pins a Swift jacket, and no other
    // Swift item follows; two pinned Swift items both stay.
    let running = RankQuery {
        query: Some("running".into()),
        k: 20,
        collapse: Some(brand.clone()),
        ..Default::default()
    };
    pin(&ranker, "running", &["p4"]);
    let pinned = ranker.rank(&running).await.unwrap();
    assert_eq!(ids(&pinned)[0], "p4");
    assert!(
        pinned.items[1..].iter().all(|i| i.brand != "Swift"),
        "{:?}",
        ids(&pinned)
    );
    pin(&ranker, "running", &["p4", "p3"]);
    let pinned = ranker.rank(&running).await.unwrap();
    assert_eq!(ids(&pinned)[..2], ["p4", "p3"]);
    assert!(
        pinned.items[2..].iter().all(|i| i.brand != "Swift"),
        "{:?}",
        ids(&pinned)
    );
}

/// Sorted by popularity, a search lists the same items as by price, best sellers first and
/// ties by id, each with score 0; a browse lists every item so; pages slice it, and a
/// collapsed listing keeps each brand's most popular.
#[tokio::test]
async fn a_search_sorted_by_popularity_lists_its_best_sellers_first() {
    use souk_ranker_core::facet::FacetField;
    use souk_ranker_core::rank::SortOrder;
    let (ranker, hasher, _) = shop();
    record(&ranker, &hasher, "a", "p7", InteractionKind::Purchase, 1);
    record(&ranker, &hasher, "b", "p7", InteractionKind::Purchase, 2);
    record(&ranker, &hasher, "c", "p6", InteractionKind::View, 3);
    record(&ranker, &hasher, "c", "p2", InteractionKind::Purchase, 4);
    let listed = |query: Option<&str>| RankQuery {
        query: query.map(String::from),
        k: 20,
        explain: true,
        sort: SortOrder::Popularity,
        ..Default::default()
    };
    let tents = ranker.rank(&listed(Some("tent"))).await.unwrap();
    assert_eq!(ids(&tents), ["p7", "p6", "p1"], "{:?}", tents.items);
    assert!(tents.items.iter().all(|i| i.score == 0.0));
    // A bought or viewed item says so first; one no shopper touched only why it is listed.
    assert_eq!(
        tents.items[0].reasons,
        ["popular with shoppers", "matches your search \"tent\""]
    );
    assert_eq!(tents.items[2].reasons, ["matches your search \"tent\""]);
    let popularity = |id: &str| ranker.catalog().read().unwrap().popularity(id);
    assert!(popularity("p7") > popularity("p6") && popularity("p6") > 0.0);
    // Every item: the three bought or viewed first (p7's two purchases, then p2's one, then
    // p6's view), the rest by id.
    let all = ranker.rank(&listed(None)).await.unwrap();
    assert_eq!(
        ids(&all),
        ["p7", "p2", "p6", "p1", "p3", "p4", "p5", "p8", "p9"]
    );
    let mut paged = Vec::new();
    for offset in (0..9).step_by(4) {
        let page = ranker
            .rank(&RankQuery {
                k: 4,
                offset,
                ..listed(None)
            })
            .await
            .unwrap();
        paged.extend(page.items.into_iter().map(|i| i.id));
    }
    assert_eq!(paged, ids(&all));
    // One per brand: Acme's most popular is p2 (a purchase), before its tent p1.
    let by_brand = ranker
        .rank(&RankQuery {
            collapse: Some(FacetField::Brand),
            ..listed(None)
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_brand), ["p7", "p2", "p6", "p3", "p5"]);
}
