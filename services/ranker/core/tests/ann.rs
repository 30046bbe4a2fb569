//! The HNSW candidate pool against the exact scan, through `Ranker::rank` on a 6,000-item
//! catalog of clustered random vectors: the same answers (recall of the exact top 10), and
//! inserts and deletes seen at once, and filtered searches (category, department, price) that
//! answer as the exact scan does.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use souk_ranker_core::UserKey;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::item::{Filters, Interaction, InteractionKind, Item};
use souk_ranker_core::rank::{
    EmbeddingSource, FirstPass, GraphPath, GraphSource, GraphStep, NoGraph, RankQuery, Ranker,
    SourceError,
};

const DIM: usize = 32;

/// SplitMix64: deterministic vectors without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

struct Queries(HashMap<String, Vec<f32>>);
impl EmbeddingSource for Queries {
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, SourceError> {
        self.0
            .get(text)
            .cloned()
            .ok_or_else(|| SourceError("unknown".into()))
    }
}

const COLORS: [&str; 5] = ["red", "blue", "green", "black", "white"];

/// Item `i` is in cluster `i % 60`, in department `d{i % 2}` and its category `c{i % 10}`
/// (six whole clusters), of colour `COLORS[i % 5]` (twelve whole clusters), priced 1 to 7, a
/// third out of stock.
fn item(i: usize) -> Item {
    Item {
        id: format!("x{i:05}"),
        title: "Thing".into(),
        description: String::new(),
        category: vec![format!("d{}", i % 2), format!("c{}", i % 10)],
        brand: if i.is_multiple_of(500) {
            "Rare".into()
        } else {
            String::new()
        },
        price: (1 + i % 7) as f64,
        attributes: [("Color".to_string(), COLORS[i % 5].to_string())].into(),
        in_stock: !i.is_multiple_of(3),
    }
}

/// A ranker, its query names, and the vector each query embeds to.
type Shop = (
    Ranker<Queries, NoGraph>,
    Vec<String>,
    HashMap<String, Vec<f32>>,
);

fn shop(min_items: usize) -> Shop {
    let mut rng = Rng(7);
    let centers: Vec<Vec<f32>> = (0..60)
        .map(|_| unit((0..DIM).map(|_| rng.next()).collect()))
        .collect();
    let mut catalog = Catalog::default();
    catalog.set_ann_min_items(min_items);
    for i in 0..6_000 {
        let c = &centers[i % centers.len()];
        let v = unit(c.iter().map(|x| x + 0.35 * rng.next()).collect());
        catalog.upsert(item(i).validated().unwrap(), v).unwrap();
    }
    // Every 31st item has been bought: a popular few in every category.
    for i in (0..6_000).step_by(31) {
        catalog.record(&Interaction {
            user: UserKey::from_stored(format!("{i:016x}")),
            item_id: item(i).id,
            kind: InteractionKind::Purchase,
            value: 1.0,
            timestamp_ms: i as i64,
        });
    }
    let mut queries = HashMap::new();
    let names: Vec<String> = (0..50).map(|q| format!("query {q}")).collect();
    for (q, name) in names.iter().enumerate() {
        let c = &centers[(q * 7) % centers.len()];
        queries.insert(
            name.clone(),
            unit(c.iter().map(|x| x + 0.35 * rng.next()).collect()),
        );
    }
    let ranker = Ranker::new(
        Arc::new(RwLock::new(catalog)),
        Queries(queries.clone()),
        NoGraph,
    );
    (ranker, names, queries)
}

async fn ids(ranker: &Ranker<Queries, NoGraph>, request: &RankQuery) -> Vec<String> {
    let r = ranker.rank(request).await.unwrap();
    assert!(r.missing_signals.is_empty());
    r.items.into_iter().map(|i| i.id).collect()
}

async fn top(ranker: &Ranker<Queries, NoGraph>, query: &str, k: usize) -> Vec<String> {
    let request = RankQuery {
        query: Some(query.into()),
        k,
        ..Default::default()
    };
    ids(ranker, &request).await
}

#[tokio::test]
async fn hnsw_candidates_find_what_the_exact_scan_finds() {
    let (exact, queries, _) = shop(usize::MAX);
    let (ann, _, vectors) = shop(0);
    assert!(!exact.catalog().read().unwrap().uses_ann());
    assert!(ann.catalog().read().unwrap().uses_ann());
    let (mut hits, mut total) = (0usize, 0usize);
    for q in &queries {
        let want = top(&exact, q, 10).await;
        let got = top(&ann, q, 10).await;
        hits += got.iter().filter(|id| want.contains(id)).count();
        total += want.len();
    }
    let recall = hits as f64 / total as f64;
    assert!(
        recall >= 0.95,
        "recall@10 of the HNSW pool vs exact: {recall:.3}"
    );

    // A filter that few items pass (a brand of 12) fills k: its members are scored.
    let rare = RankQuery {
        query: Some(queries[1].clone()),
        k: 5,
        filters: Filters {
            brands: vec!["rare".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let want = ids(&exact, &rare).await;
    let got = ids(&ann, &rare).await;
    assert_eq!(want.len(), 5);
    assert_eq!(got, want, "filtered searches answer as the exact scan does");

    // Filters, with the query's own cluster outside them (the nearest items that pass are in
    // other clusters, and popular items that pass are in the pool): a category (600 items,
    // scored exactly), a price cap (857, scored exactly), a department (3,000, the graph
    // walk), in stock (4,000, the graph walk: more than the ~2,500 a scan may take), a colour
    // (1,200, scored exactly), three colours (3,600, the graph walk), and a department in
    // three colours (1,800 of 3,000 x 3,600: intersected, scored exactly).
    let (mut hits, mut total) = (0usize, 0usize);
    for (q, name) in queries.iter().enumerate() {
        let cluster = (q * 7) % 60;
        let other = (cluster + 1 + q % 9) % 10;
        for filters in [
            Filters::new(&format!("c{other}"), &[], None, None, false),
            Filters::new(&format!("d{}", (cluster + 1) % 2), &[], None, None, false),
            Filters::new("", &[], None, Some(1.0), false),
            Filters::new("", &[], None, None, true),
            Filters::default().with_attributes([(
                "color".to_string(),
                vec![COLORS[(cluster + 1) % 5].to_string()],
            )]),
            Filters::default().with_attributes([(
                "COLOR".to_string(),
                (1..4)
                    .map(|d| COLORS[(cluster + d) % 5].to_uppercase())
                    .collect(),
            )]),
            // The department and three colours: both sides over the limit, 1,800 pass both
            // (intersected, then scored exactly).
            Filters::new(&format!("d{}", (cluster + 1) % 2), &[], None, None, false).and_then(
                |f| {
                    f.with_attributes([(
                        "color".to_string(),
                        (1..4)
                            .map(|d| COLORS[(cluster + d) % 5].to_string())
                            .collect(),
                    )])
                },
            ),
        ] {
            let request = RankQuery {
                query: Some(name.clone()),
                k: 10,
                filters: filters.unwrap(),
                ..Default::default()
            };
            let want = ids(&exact, &request).await;
            let got = ids(&ann, &request).await;
            assert_eq!(want.len(), 10);
            let scored_exactly = request
                .filters
                .category
                .as_deref()
                .is_some_and(|c| c.starts_with('c'))
                || request
                    .filters
                    .attributes
                    .first()
                    .is_some_and(|(_, v)| v.len() == 1)
                || (request.filters.category.is_some() && !request.filters.attributes.is_empty());
            if scored_exactly {
                assert_eq!(got, want, "{:?}", request.filters);
            }
            hits += got.iter().filter(|id| want.contains(id)).count();
            total += want.len();
        }
    }
    let recall = hits as f64 / total as f64;
    assert!(recall >= 0.95, "filtered recall@10 vs exact: {recall:.3}");
    // Where each first pass looked (what the ranker's metrics count).
    let pass = |ranker: &Ranker<Queries, NoGraph>, filters: Filters| {
        let request = RankQuery {
            query: Some(queries[0].clone()),
            k: 10,
            filters,
            ..Default::default()
        };
        futures::executor::block_on(ranker.rank(&request))
            .unwrap()
            .first_pass
    };
    let category = || Filters::new("c3", &[], None, None, false).unwrap();
    let department = || Filters::new("d1", &[], None, None, false).unwrap();
    assert_eq!(pass(&ann, category()), FirstPass::Members);
    assert_eq!(pass(&ann, department()), FirstPass::Pool);
    let dark_department = department()
        .with_attributes([(
            "color".to_string(),
            vec!["black".into(), "white".into(), "red".into()],
        )])
        .unwrap();
    assert_eq!(pass(&ann, dark_department), FirstPass::Members);
    assert_eq!(pass(&ann, Filters::default()), FirstPass::Pool);
    assert_eq!(pass(&exact, department()), FirstPass::Scan);

    // Every page is a slice of one ranking, however deep and with diversity too: pages of
    // 16 concatenate to the first 128 results, and pages that cross the tiers' ends (64, 256)
    // give what a request for all 1,000 results holds at their positions, no item twice.
    for q in queries.iter().take(6) {
        for diversity in [0.0, 0.5] {
            let page = |offset: usize, k: usize| RankQuery {
                query: Some(q.clone()),
                k,
                offset,
                diversity,
                ..Default::default()
            };
            let whole = ids(&ann, &page(0, 1000)).await;
            assert_eq!(whole.len(), 1000, "{q}");
            let distinct: std::collections::HashSet<&String> = whole.iter().collect();
            assert_eq!(distinct.len(), 1000, "{q}: an item twice");
            let mut paged = Vec::new();
            for offset in (0..128).step_by(16) {
                paged.extend(ids(&ann, &page(offset, 16)).await);
            }
            assert_eq!(paged, whole[..128], "{q}, diversity {diversity}");
            for (offset, k) in [
                (0, 10),
                (48, 32),
                (60, 200),
                (250, 20),
                (300, 1),
                (900, 100),
            ] {
                assert_eq!(
                    ids(&ann, &page(offset, k)).await,
                    whole[offset..offset + k],
                    "{q}, diversity {diversity}, offset {offset}, k {k}"
                );
            }
        }
    }

    // A new item is found at once; a deleted one is gone at once.
    let q = &queries[0];
    let target = vectors[q].clone();
    ann.catalog()
        .write()
        .unwrap()
        .upsert(item(99_999).validated().unwrap(), target)
        .unwrap();
    let first = top(&ann, q, 10).await;
    assert_eq!(first[0], "x99999");
    assert!(ann.catalog().write().unwrap().delete("x99999"));
    let after = top(&ann, q, 10).await;
    assert!(!after.contains(&"x99999".to_string()));
    assert_eq!(after[0], first[1], "the runner-up moves up");
}

/// A graph in which x04321 is an accessory of x00100 and nothing else is related; it lists
/// that neighbour only when `lists_related` (as a graph before `related_items` did not).
struct Accessory {
    lists_related: bool,
}

impl GraphSource for Accessory {
    async fn paths(
        &self,
        sources: Vec<String>,
        targets: Vec<String>,
        _: u32,
    ) -> Result<Vec<GraphPath>, SourceError> {
        let (from, to) = ("item:x00100".to_string(), "item:x04321".to_string());
        Ok(if sources.contains(&from) && targets.contains(&to) {
            vec![GraphPath {
                source: from,
                target: to.clone(),
                steps: vec![GraphStep {
                    relation: "accessory_of".into(),
                    forward: false,
                    entity: to,
                }],
            }]
        } else {
            Vec::new()
        })
    }

    async fn related_items(
        &self,
        items: Vec<String>,
        _per_item: usize,
    ) -> Result<Vec<String>, SourceError> {
        Ok(
            if self.lists_related && items.contains(&"item:x00100".to_string()) {
                vec!["item:x04321".to_string()]
            } else {
                Vec::new()
            },
        )
    }
}

/// In a catalog ranked from the candidate pool, a shopper who bought x00100 is recommended its
/// accessory x04321 first, explained, although no other signal (nearest, lexical, CF, popular)
/// proposes it: the graph's related items are candidates. Without them it is never scored.
#[tokio::test]
async fn related_items_from_the_graph_are_candidates() {
    let (ann, _, queries) = shop(1_000);
    let shopper = UserKey::from_stored("00000000000000ff".to_string());
    ann.catalog().write().unwrap().record(&Interaction {
        user: shopper.clone(),
        item_id: "x00100".into(),
        kind: InteractionKind::Purchase,
        value: 1.0,
        timestamp_ms: 1_000_000,
    });
    let recommend = RankQuery {
        user: Some(shopper),
        k: 10,
        explain: true,
        ..Default::default()
    };
    for lists_related in [true, false] {
        let ranker = Ranker::new(
            ann.catalog().clone(),
            Queries(queries.clone()),
            Accessory { lists_related },
        );
        let ranking = ranker.rank(&recommend).await.unwrap();
        assert_eq!(ranking.first_pass, FirstPass::Pool);
        assert!(ranking.missing_signals.is_empty());
        let ids: Vec<&str> = ranking.items.iter().map(|i| i.id.as_str()).collect();
        if lists_related {
            assert_eq!(ids[0], "x04321", "{ids:?}");
            assert!(
                ranking.items[0].reasons[0].contains("accessory for the Thing you bought"),
                "{:?}",
                ranking.items[0].reasons
            );
        } else {
            assert!(!ids.contains(&"x04321"), "{ids:?}");
        }
    }
}

/// "lite" is in 11,000 of 12,000 titles, most of them short (the best BM25); the 300 whose
/// vectors are near the query have long titles, and 1,000 items without the word are nearer
/// still. The exact top 10 are those 300's best (dense and a little BM25 beat dense alone),
/// yet the pool's graph answers are the 1,000 and its 1,024 BM25 hits the short titles: the
/// pool alone ranks the nearest non-matching items first. The graph's walk among the matches
/// finds them, a department's share of them (half the catalog: bits, not members) is scored
/// whole, and a rarer word's search needs no walk.
#[tokio::test]
async fn a_common_word_s_best_matches_are_found_among_thousands() {
    let mut rng = Rng(11);
    let query = unit((0..DIM).map(|_| rng.next()).collect());
    let aside = unit((0..DIM).map(|_| rng.next()).collect());
    let near = unit(query.iter().zip(&aside).map(|(q, a)| q + 0.5 * a).collect());
    let far: Vec<Vec<f32>> = (0..20)
        .map(|_| unit((0..DIM).map(|_| rng.next()).collect()))
        .collect();
    let fillers = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"];
    let catalog = |min_items: usize| {
        let mut rng = Rng(13);
        let mut catalog = Catalog::default();
        catalog.set_ann_min_items(min_items);
        for i in 0..12_000 {
            let (title, centre) = match i {
                0..1_000 => ("Thing".to_string(), &query),
                1_000..1_300 => (format!("Lite {}", fillers.join(" ")), &near),
                _ => {
                    let words = &fillers[..i % 4];
                    let rare = if i % 4 == 0 { " rare" } else { "" };
                    (format!("Lite {}{rare}", words.join(" ")), &far[i % 20])
                }
            };
            let v = unit(centre.iter().map(|x| x + 0.2 * rng.next()).collect());
            let item = Item {
                id: format!("x{i:05}"),
                title,
                ..item(i)
            };
            catalog.upsert(item.validated().unwrap(), v).unwrap();
        }
        Arc::new(RwLock::new(catalog))
    };
    let queries: HashMap<String, Vec<f32>> = [
        ("lite".to_string(), query.clone()),
        ("rare".to_string(), query.clone()),
    ]
    .into();
    let exact = Ranker::new(catalog(usize::MAX), Queries(queries.clone()), NoGraph);
    let ann = Ranker::new(catalog(0), Queries(queries), NoGraph);
    let search = |q: &str| RankQuery {
        query: Some(q.into()),
        k: 10,
        ..Default::default()
    };
    // Half the catalog in one department (bits, not members: too many to score all), 5,500
    // of the word's matches in it: more than the pool takes whole (4,096), few enough to
    // score them all instead of walking to them.
    let in_department = RankQuery {
        filters: Filters::new("d0", &[], None, None, false).unwrap(),
        ..search("lite")
    };
    for (request, pass) in [
        (search("lite"), FirstPass::PoolThenMatches),
        (in_department, FirstPass::PoolThenPassingMatches),
    ] {
        let ranking = ann.rank(&request).await.unwrap();
        assert_eq!(ranking.first_pass, pass);
        let found: Vec<String> = ranking.items.into_iter().map(|i| i.id).collect();
        let wanted = ids(&exact, &request).await;
        assert!(
            wanted
                .iter()
                .all(|id| ("x01000".."x01300").contains(&id.as_str())),
            "{wanted:?}"
        );
        assert_eq!(found, wanted);
    }
    // 2,675 matches: all in the pool, nothing left out.
    let ranking = ann.rank(&search("rare")).await.unwrap();
    assert_eq!(ranking.first_pass, FirstPass::Pool);
    let found: Vec<String> = ranking.items.into_iter().map(|i| i.id).collect();
    assert_eq!(found, ids(&exact, &search("rare")).await);
}
