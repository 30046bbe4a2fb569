//! Requests drawn at random, valid and not, against the demo shop over gRPC: every `Rank`
//! answer is a ranking that keeps the request's promises or an InvalidArgument that says what
//! was wrong, never another code (a panic in a handler answers Unknown or Internal, or kills
//! the connection); every admin write is taken or refused whole, with nothing stored changed;
//! and the ranker serves normally afterwards. The knowledge graph's requests get the same
//! treatment. Each field is drawn valid most of the time and now and then from a list of
//! faults, so about half the requests hold one. Then answers held to the catalog file itself:
//! filtered listings and their facet counts, and the graph's facts of items written.
use std::collections::HashSet;

use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;
use souk_ranker_core::rng::XorShift;

use crate::common::*;

/// A small random source for drawing request fields.
pub(crate) struct Draw(pub(crate) XorShift);

impl Draw {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.0.unit() * n as f64) as usize
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.0.unit() < p
    }

    pub(crate) fn one<T: Clone>(&mut self, of: &[T]) -> T {
        of[self.below(of.len())].clone()
    }

    fn some<T: Clone>(&mut self, of: &[T], most: usize) -> Vec<T> {
        (0..self.below(most + 1)).map(|_| self.one(of)).collect()
    }

    /// One of `valid`, or now and then (1 in 30) one of `bad`: a request draws about a dozen
    /// such fields, so about half the requests hold a fault.
    fn mostly<T: Clone>(&mut self, valid: &[T], bad: &[T]) -> T {
        if self.chance(1.0 / 30.0) {
            self.one(bad)
        } else {
            self.one(valid)
        }
    }
}

const IDS: &[&str] = &[
    "p00001", "p00030", "p00107", "p00110", "p00141", "p00159", "p00300", "p99999", "", " ",
    "p\u{0}1", "é",
];

const WORDS: &[&str] = &[
    "tent",
    "sleeping",
    "bags",
    "wireless",
    "headphones",
    "cofee",
    "grindr",
    "desk",
    "la",
    "under",
    "150",
    "between",
    "50",
    "and",
    "$10-$20",
    "over",
    "-5",
    "rucksack",
    "keurig",
    "returns",
    "the",
    "a",
    "🎒",
    "\u{0}",
    "\t",
    "\u{fffd}",
    "ß",
    "@",
    "..",
    "mac",
    "book",
    "1e400",
    "NaN",
    // Letters whose lower case or compatibility form is longer, other scripts' digits,
    // combining and direction marks, a family emoji, budgets of odd numbers.
    "İ",
    "ﬁ",
    "Ⅻ",
    "²",
    "１５０",
    "١٥٠",
    "a\u{308}",
    "\u{202e}",
    "👩‍👩‍👧",
    "under 1e400",
    "under NaN",
    "between 10 and 5",
    "€30",
    "30$",
    "1,000",
];

const FACETS: &[&str] = &[
    "brand",
    "category",
    "attribute:color",
    "price",
    "price:25,50,100",
];

const BAD_FACETS: &[&str] = &[
    "attribute:",
    "price:50,25",
    "price:",
    "price:0",
    "price:-1,5",
    "price:nan",
    "bogus",
];

pub(crate) fn draw_request(d: &mut Draw) -> rk::RankRequest {
    // The longest query taken (1,024 bytes), or a byte over it.
    let long = "tent ".repeat(204) + if d.chance(0.5) { "tent" } else { "tents" };
    let query = match d.below(12) {
        0 => String::new(),
        1 => long,
        _ => d.some(WORDS, 5).join(" "),
    };
    let price = |d: &mut Draw| {
        d.chance(0.3).then(|| {
            d.mostly(
                &[0.0, 10.0, 99.5, 300.0, 1e300],
                &[-1.0, f64::NAN, f64::INFINITY],
            )
        })
    };
    let filters = d.chance(0.4).then(|| rk::Filters {
        category: d
            .one(&["", "Tents", "Coffee", "Outdoor", "Nowhere", "\u{0}"])
            .into(),
        brands: (0..d.below(3))
            .map(|_| {
                d.mostly(&["Trailhound", "Pinecrest", "nobody"], &["", " "])
                    .into()
            })
            .collect(),
        min_price: price(d),
        max_price: price(d),
        in_stock_only: d.chance(0.3),
        attributes: (0..d.below(2))
            .map(|_| rk::AttributeFilter {
                name: d.mostly(&["color", "grind", "size"], &["", "\u{0}"]).into(),
                values: (0..d.mostly(&[1, 2], &[0]))
                    .map(|_| d.mostly(&["black", "navy", "burr"], &["", " "]).into())
                    .collect(),
            })
            .collect(),
    });
    let weight = |d: &mut Draw| d.mostly(&[0.0f32, 0.5, 1.0, -1.0], &[11.0, f32::NAN]);
    let weights = d.chance(0.15).then(|| rk::FusionWeights {
        dense: weight(d),
        bm25: weight(d),
        cf: weight(d),
        kg: weight(d),
        popularity: weight(d),
    });
    let ids = |d: &mut Draw, most| {
        d.some(IDS, most)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    rk::RankRequest {
        user_id: d.one(&["", "u010", "u020", "someone-new", "\u{0}"]).into(),
        query,
        k: d.mostly(&[1, 5, 20, 100], &[0, 1_000, 1_001, u32::MAX]),
        filters,
        exclude: ids(d, 3),
        item_id: if d.chance(0.2) {
            d.mostly(&IDS[..7], &IDS[7..]).into()
        } else {
            String::new()
        },
        weights,
        sort: d.mostly(&[0, 0, 1, 2, 3], &[4, -1]),
        candidate_ids: if d.chance(0.15) {
            ids(d, 6)
        } else {
            Vec::new()
        },
        explain: d.chance(0.5),
        diversity: d.mostly(&[0.0, 0.0, 0.3, 1.0], &[1.5, -0.1, f32::NAN]),
        include_purchased: d.chance(0.2),
        offset: d.mostly(&[0, 0, 5, 40], &[995, 1_000, u32::MAX]),
        all_signals: d.chance(0.2),
        verbatim: d.chance(0.2),
        prefix: d.chance(0.3),
        facets: (0..d.below(3))
            .map(|_| d.mostly(FACETS, BAD_FACETS).into())
            .collect(),
        rules_at_ms: d
            .chance(0.2)
            .then(|| d.mostly(&[0, 2_000_000_000_000], &[-1, i64::MAX])),
        collapse: if d.chance(0.25) {
            d.mostly(
                &["brand", "attribute:color", " brand "],
                &["category", "price", "bogus", "attribute:"],
            )
            .into()
        } else {
            String::new()
        },
    }
}

/// What a ranking promised, checked: at most k results, none excluded or the page's own
/// item, each once, scores finite, a price order in price order, the filters' price bounds
/// and brands kept.
fn assert_kept(request: &rk::RankRequest, answer: &rk::RankResponse) {
    let items = &answer.items;
    assert!(items.len() <= request.k as usize, "{request:?}");
    // A budget typed in the words ("tent under 150") bounds the prices as a filter does.
    if let Some(budget) = &answer.price_from_query {
        for item in items {
            assert!(
                budget.min_price.is_none_or(|min| item.price >= min)
                    && budget.max_price.is_none_or(|max| item.price <= max),
                "{} at {} outside {budget:?}: {request:?}",
                item.id,
                item.price
            );
        }
    }
    let mut seen = HashSet::new();
    for item in items {
        assert!(seen.insert(&item.id), "{} twice: {request:?}", item.id);
        assert!(!request.exclude.contains(&item.id), "{request:?}");
        assert_ne!(item.id, request.item_id, "{request:?}");
        assert!(item.score.is_finite(), "{request:?}");
        if let Some(filters) = &request.filters {
            if let Some(min) = filters.min_price {
                assert!(item.price >= min, "{request:?}");
            }
            if let Some(max) = filters.max_price {
                assert!(item.price <= max, "{request:?}");
            }
            if !filters.brands.is_empty() {
                assert!(
                    filters
                        .brands
                        .iter()
                        .any(|b| b.trim().eq_ignore_ascii_case(&item.brand)),
                    "{request:?}"
                );
            }
        }
    }
    if request.collapse.trim() == "brand" {
        // One result per brand, but for the shop's pins (which may share one): each takes
        // its brand's place.
        let mut brands: HashSet<String> = items
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.brand.to_lowercase())
            .collect();
        for item in items.iter().filter(|i| !i.pinned && !i.brand.is_empty()) {
            assert!(
                brands.insert(item.brand.to_lowercase()),
                "{} twice: {request:?}",
                item.brand
            );
        }
    }
    let prices: Vec<f64> = items.iter().map(|i| i.price).collect();
    match request.sort {
        1 => assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{request:?}"),
        2 => assert!(prices.windows(2).all(|w| w[0] >= w[1]), "{request:?}"),
        _ => {}
    }
}

/// Fetched page by page (`size` results a page), `request`'s ranking is `answer`'s: pages
/// neither repeat nor skip an item.
async fn assert_pages_continue(
    client: &mut RankerClient<tonic::transport::Channel>,
    request: &rk::RankRequest,
    answer: &rk::RankResponse,
    size: usize,
) {
    let whole: Vec<&str> = answer.items.iter().map(|i| i.id.as_str()).collect();
    let mut paged = Vec::new();
    for start in (0..request.k as usize).step_by(size) {
        let page = rk::RankRequest {
            offset: request.offset + start as u32,
            k: size.min(request.k as usize - start) as u32,
            ..request.clone()
        };
        let items = client.rank(page).await.unwrap().into_inner().items;
        paged.extend(items.into_iter().map(|i| i.id));
    }
    assert_eq!(paged, whole, "pages of {size} for {request:?}");
}

/// 600 random `Rank` requests: each answered with a ranking that keeps what it asked for
/// (and, for one in five, the same ranking fetched page by page), or refused as
/// InvalidArgument with a message; both kinds occur; the ranker still ranks.
#[tokio::test(flavor = "multi_thread")]
async fn random_rank_requests_are_ranked_or_refused_never_failed() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut d = Draw(XorShift::new(42));
    let (mut ranked, mut refused) = (0, 0);
    for n in 0..600 {
        let request = draw_request(&mut d);
        match client.rank(request.clone()).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                assert_kept(&request, &answer);
                if d.chance(0.2) {
                    assert_pages_continue(&mut client, &request, &answer, 1 + d.below(7)).await;
                }
                ranked += 1;
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "request {n}: {status:?} for {request:?}"
                );
                assert!(!status.message().is_empty());
                refused += 1;
            }
        }
    }
    assert!(
        ranked > 150 && refused > 50,
        "{ranked} ranked, {refused} refused"
    );
    let after = client
        .rank(rk::RankRequest {
            query: "sleeping bag".into(),
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.items.len(), 5);
}

/// The shop's state as an admin write may change it: item and event counts, the rules and
/// the synonyms in use.
#[derive(Debug, PartialEq)]
struct Stored {
    items: u64,
    interactions: u64,
    pins: Vec<rk::PinRule>,
    synonyms: Vec<rk::Synonym>,
}

async fn stored(client: &mut RankerClient<tonic::transport::Channel>) -> Stored {
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    Stored {
        items: stats.items,
        interactions: stats.interactions,
        pins: client
            .get_pins(rk::GetPinsRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules,
        synonyms: client
            .get_synonyms(rk::GetSynonymsRequest {})
            .await
            .unwrap()
            .into_inner()
            .synonyms,
    }
}

fn draw_rule(d: &mut Draw) -> rk::PinRule {
    let ids = |d: &mut Draw| -> Vec<String> {
        (0..d.below(3))
            .map(|_| d.mostly(&IDS[..7], &IDS[7..]).into())
            .collect()
    };
    let time = |d: &mut Draw| {
        d.chance(0.2)
            .then(|| d.mostly(&[0, 1_000, 2_000_000_000_000], &[-5, i64::MIN]))
    };
    let (query, category, everywhere, contains) = match d.below(4) {
        0 => (
            String::new(),
            d.one(&["Tents", "Coffee", " "]).into(),
            false,
            false,
        ),
        1 => (String::new(), String::new(), true, false),
        2 => (d.some(WORDS, 3).join(" "), String::new(), false, true),
        _ => (d.some(WORDS, 3).join(" "), String::new(), false, false),
    };
    rk::PinRule {
        query,
        category,
        items: ids(d),
        hidden: ids(d),
        boosts: (0..d.below(2))
            .map(|_| rk::Boost {
                when: d.chance(0.9).then(|| rk::Filters {
                    brands: vec![d.mostly(&["Trailhound", "Pinecrest"], &[""]).into()],
                    in_stock_only: d.chance(0.5),
                    ..Default::default()
                }),
                amount: d.mostly(&[0.1f32, -0.3, 1.0], &[0.0, f32::NAN, 2.0]),
            })
            .collect(),
        everywhere,
        starts_ms: time(d),
        ends_ms: time(d),
        contains,
        redirect: if d.chance(0.2) {
            d.mostly(
                &["/help", "https://shop.example/x"],
                &["help", "https://", "/a b"],
            )
            .into()
        } else {
            String::new()
        },
        banner: if d.chance(0.2) {
            d.mostly(
                &["Free shipping on tents", "{\"promo\": 7}"],
                &[" ", "a\nb"],
            )
            .into()
        } else {
            String::new()
        },
    }
}

fn draw_item(d: &mut Draw) -> rk::Item {
    let long = "x".repeat(70_000);
    rk::Item {
        id: d
            .mostly(
                &["p00001", "p00107", "pnew1", "pnew2"],
                &["", " ", "p\u{0}1"],
            )
            .into(),
        title: d
            .mostly(
                &["Trail Tent 2", "Ultralight Stove", "Café Mug"],
                &["", long.as_str()],
            )
            .into(),
        description: d.mostly(&["", "A good one."], &["\u{0}\u{1}"]).into(),
        category: d
            .mostly(
                &[vec!["Outdoor".to_string(), "Tents".to_string()], Vec::new()],
                &[vec![String::new()]],
            )
            .clone(),
        brand: d.mostly(&["Trailhound", ""], &["\u{0}"]).into(),
        price: d.mostly(&[10.0, 0.0, 249.99], &[f64::NAN, -1.0, f64::INFINITY]),
        attributes: [(
            d.mostly(&["color", "grind"], &[""]).to_string(),
            d.mostly(&["black", "burr"], &[""]).to_string(),
        )]
        .into_iter()
        .take(d.below(2))
        .collect(),
        in_stock: d.chance(0.7),
    }
}

fn draw_event(d: &mut Draw) -> rk::Interaction {
    let now = souk_ranker_core::item::now_ms();
    rk::Interaction {
        user_id: d
            .mostly(&["u010", "u020", "newcomer"], &["", "\u{0}"])
            .into(),
        item_id: d.mostly(&IDS[..6], &IDS[7..]).into(),
        kind: d.mostly(&[0, 1, 2, 3], &[9, -1]),
        value: d.mostly(&[1.0, 0.5, 4.0], &[f32::NAN, f32::INFINITY]),
        timestamp_ms: d.mostly(&[0, now - 60_000], &[-5, now + 1_000_000_000_000]),
    }
}

/// 200 random admin writes (rules, synonyms, items, events; valid and not): each is taken,
/// or refused as InvalidArgument with what was stored left exactly as it was; a rule set or
/// synonym set taken reads back as sent.
#[tokio::test(flavor = "multi_thread")]
async fn random_admin_writes_are_taken_or_refused_whole() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut d = Draw(XorShift::new(9));
    let (mut taken, mut refused) = (0, 0);
    for n in 0..200 {
        let before = stored(&mut client).await;
        let kind = d.below(4);
        let (answer, rules, synonyms) = match kind {
            0 => {
                let rules: Vec<rk::PinRule> = (0..d.below(4)).map(|_| draw_rule(&mut d)).collect();
                let answer = client
                    .set_pins(rk::SetPinsRequest {
                        rules: rules.clone(),
                    })
                    .await
                    .map(drop);
                (answer, Some(rules), None)
            }
            1 => {
                let synonyms: Vec<rk::Synonym> = (0..d.below(3))
                    .map(|_| rk::Synonym {
                        phrases: d.some(WORDS, 3).into_iter().map(String::from).collect(),
                        replacement: d.chance(0.3).then(|| d.one(WORDS).into()),
                    })
                    .collect();
                let answer = client
                    .set_synonyms(rk::SetSynonymsRequest {
                        synonyms: synonyms.clone(),
                    })
                    .await
                    .map(drop);
                (answer, None, Some(synonyms))
            }
            2 => {
                let items = (0..1 + d.below(3)).map(|_| draw_item(&mut d)).collect();
                let message = rk::UpsertItemsRequest { items };
                let answer = client
                    .upsert_items(futures::stream::iter(vec![message]))
                    .await
                    .map(drop);
                (answer, None, None)
            }
            _ => {
                let interactions = (0..1 + d.below(3)).map(|_| draw_event(&mut d)).collect();
                let message = rk::RecordInteractionsRequest { interactions };
                let answer = client
                    .record_interactions(futures::stream::iter(vec![message]))
                    .await
                    .map(drop);
                (answer, None, None)
            }
        };
        let after = stored(&mut client).await;
        match answer {
            Ok(()) => {
                taken += 1;
                if let Some(rules) = rules {
                    assert_eq!(after.pins, rules, "write {n}");
                }
                if let Some(synonyms) = synonyms {
                    assert_eq!(after.synonyms.len(), synonyms.len(), "write {n}");
                }
                assert!(after.items >= before.items, "write {n}");
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "write {n} (kind {kind}): {status:?}"
                );
                assert!(!status.message().is_empty());
                assert_eq!(after, before, "write {n} refused: {}", status.message());
                refused += 1;
            }
        }
    }
    assert!(
        taken > 40 && refused > 40,
        "{taken} taken, {refused} refused"
    );
    // The shop still ranks.
    let r = client
        .rank(rk::RankRequest {
            query: "tent".into(),
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 3);
}

/// 300 random `Suggest` and `UserProfile` requests (half-typed words, control characters,
/// limits in and out of range): each answered within its limit, or refused as
/// InvalidArgument, never another code.
#[tokio::test(flavor = "multi_thread")]
async fn random_suggest_and_profile_requests_are_answered_or_refused() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut d = Draw(XorShift::new(5));
    let (mut answered, mut refused) = (0, 0);
    let mut outcome = |n: usize, what: &str, status: Option<tonic::Status>| match status {
        None => answered += 1,
        Some(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what} {n}: {status:?}"
            );
            assert!(!status.message().is_empty());
            refused += 1;
        }
    };
    for n in 0..300 {
        if d.chance(0.5) {
            let mut query = d.some(WORDS, 3).join(" ");
            // Half a word typed, cut anywhere (inside a character is not possible in a
            // string: cut at a character).
            let cut = d.below(query.chars().count() + 1);
            query = query.chars().take(cut).collect();
            let k = d.mostly(&[0, 1, 5, 16], &[17, u32::MAX]);
            let request = rk::SuggestRequest {
                query: query.clone(),
                k,
            };
            match client.suggest(request).await {
                Ok(answer) => {
                    let most = if k == 0 { 5 } else { k as usize };
                    assert!(answer.into_inner().suggestions.len() <= most, "{query:?}");
                    outcome(n, "suggest", None);
                }
                Err(status) => outcome(n, "suggest", Some(status)),
            }
        } else {
            let request = rk::UserProfileRequest {
                user_id: d
                    .mostly(&["u010", "u020", "someone-new"], &["", "\u{0}", " "])
                    .into(),
                limit: d.mostly(&[0, 1, 3, 10], &[u32::MAX]),
            };
            let answer = client.user_profile(request).await;
            outcome(n, "profile", answer.err());
        }
    }
    assert!(
        answered > 150 && refused > 0,
        "{answered} answered, {refused} refused"
    );
}

/// Entity names for the graph's requests: the demo's (items, brands, categories, attribute
/// values, with a `/` and a `=`), and names it does not hold.
const ENTITIES: &[&str] = &[
    "item:p00001",
    "item:p00030",
    "item:p00107",
    "item:p00300",
    "brand:Pixelon",
    "category:Electronics",
    "category:Electronics/Audio",
    "attr:color=navy",
    "item:p99999",
    "",
    " ",
    "item:p\u{0}1",
    "é",
    "🎒",
];

const RELATIONS: &[&str] = &[
    "",
    "brand",
    "category",
    "attribute",
    "parent",
    "complements",
    "accessory_of",
    "bought",
    "\u{0}",
];

/// The codes a graph read may answer with besides OK: a bad field, an entity or relation the
/// graph does not hold, or embeddings that do not cover it. Never Internal or Unknown.
fn assert_refused(n: usize, what: &str, status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{what} {n}: {status:?}"
    );
    assert!(!status.message().is_empty(), "{what} {n}: {status:?}");
}

fn draw_triple(d: &mut Draw) -> kg::Triple {
    let long = "x".repeat(1025);
    let field = |d: &mut Draw, of: &[&str]| -> String {
        if d.chance(1.0 / 30.0) {
            d.one(&["", "\u{0}", long.as_str(), "a\tb", "a\nb"]).into()
        } else {
            d.one(of).into()
        }
    };
    kg::Triple {
        head: field(d, &ENTITIES[..8]),
        relation: field(d, &RELATIONS[1..7]),
        tail: field(d, &ENTITIES[..8]),
    }
}

/// 400 random requests to the knowledge graph (neighbours, paths, embeddings, similar
/// entities, predicted links, loads and removals, training runs; valid and not) over gRPC:
/// each is answered within what it asked for (limits, directions, relations, hops, prefixes,
/// scores best first), or refused with a message as InvalidArgument, NotFound or
/// FailedPrecondition, never another code; a refused load leaves the graph as it was.
#[tokio::test(flavor = "multi_thread")]
async fn random_graph_requests_are_answered_or_refused() {
    let (server, _dir) = demo_graph().await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let train = |dim: u32, epochs: u32| kg::TrainEmbeddingsRequest {
        model: kg::EmbeddingModel::Rotate as i32,
        dim,
        epochs,
        negatives: 8,
        threads: 1,
        ..Default::default()
    };
    let mut progress = client
        .train_embeddings(train(16, 2))
        .await
        .unwrap()
        .into_inner();
    while progress.message().await.unwrap().is_some() {}

    let mut d = Draw(XorShift::new(17));
    let (mut answered, mut refused) = (0, 0);
    let directions = [0, 1, 2, 3];
    for n in 0..400 {
        let kind = d.below(8);
        let outcome: Result<(), tonic::Status> = match kind {
            0 => {
                let request = kg::NeighborsRequest {
                    entity: d.one(ENTITIES).into(),
                    relation: d.one(RELATIONS).into(),
                    direction: d.mostly(&directions, &[4, -1, i32::MAX]),
                    limit: d.mostly(&[1, 3, 50, 10_000], &[0, 10_001, u32::MAX]),
                };
                client.neighbors(request.clone()).await.map(|answer| {
                    let answer = answer.into_inner();
                    assert!(answer.neighbors.len() <= request.limit as usize, "{n}");
                    assert!(answer.total >= answer.neighbors.len() as u64, "{n}");
                    for neighbor in &answer.neighbors {
                        if !request.relation.is_empty() {
                            assert_eq!(neighbor.relation, request.relation, "{n}");
                        }
                        if matches!(request.direction, 1 | 2) {
                            assert_eq!(neighbor.direction, request.direction, "{n}");
                        }
                    }
                })
            }
            1 => {
                let many: Vec<String> = ENTITIES
                    .iter()
                    .map(|e| e.to_string())
                    .cycle()
                    .take(257)
                    .collect();
                let entities = if d.chance(1.0 / 30.0) {
                    d.one(&[Vec::new(), many])
                } else {
                    (0..1 + d.below(4))
                        .map(|_| d.one(ENTITIES).into())
                        .collect()
                };
                let request = kg::NeighborsOfEachRequest {
                    entities,
                    relation: d.one(RELATIONS).into(),
                    direction: d.mostly(&directions, &[9]),
                    limit: d.mostly(&[1, 3, 50], &[0, u32::MAX]),
                    prefix: d
                        .one(&["", "item:", "brand:", "category:Electronics/", "\u{0}"])
                        .into(),
                };
                client
                    .neighbors_of_each(request.clone())
                    .await
                    .map(|answer| {
                        let answer = answer.into_inner();
                        let asked: Vec<&String> = request.entities.iter().collect();
                        let got: Vec<&String> = answer.results.iter().map(|r| &r.entity).collect();
                        assert_eq!(got, asked, "{n}: one result per entity, in order");
                        for result in &answer.results {
                            assert!(result.neighbors.len() <= request.limit as usize, "{n}");
                            assert!(result.total >= result.neighbors.len() as u64, "{n}");
                            for neighbor in &result.neighbors {
                                assert!(neighbor.entity.starts_with(&request.prefix), "{n}");
                            }
                        }
                    })
            }
            2 => {
                let request = kg::PathsRequest {
                    sources: d.some(ENTITIES, 3).into_iter().map(String::from).collect(),
                    targets: d.some(ENTITIES, 4).into_iter().map(String::from).collect(),
                    max_hops: d.mostly(&[1, 2, 3, 4], &[0, 5, u32::MAX]),
                    limit: d.mostly(&[1, 2, 10, 1_000], &[0, 1_001]),
                    relations: d.some(RELATIONS, 2).into_iter().map(String::from).collect(),
                };
                client.paths(request.clone()).await.map(|answer| {
                    let answer = answer.into_inner();
                    let mut per_target = std::collections::HashMap::new();
                    for path in &answer.paths {
                        assert!(request.sources.contains(&path.source), "{n}: {path:?}");
                        assert!(request.targets.contains(&path.target), "{n}: {path:?}");
                        assert!(!path.steps.is_empty(), "{n}: {path:?}");
                        assert!(
                            path.steps.len() <= request.max_hops as usize,
                            "{n}: {path:?}"
                        );
                        assert_eq!(path.steps.last().unwrap().entity, path.target, "{n}");
                        for step in &path.steps {
                            assert!(
                                request.relations.iter().all(String::is_empty)
                                    || request.relations.contains(&step.relation),
                                "{n}: {path:?} for {request:?}"
                            );
                        }
                        *per_target.entry(&path.target).or_insert(0u32) += 1;
                    }
                    assert!(per_target.values().all(|&c| c <= request.limit), "{n}");
                })
            }
            3 => {
                let request = kg::EntityEmbeddingsRequest {
                    entities: d.some(ENTITIES, 4).into_iter().map(String::from).collect(),
                };
                client
                    .entity_embeddings(request.clone())
                    .await
                    .map(|answer| {
                        let answer = answer.into_inner();
                        assert_eq!(
                            answer.embeddings.len() + answer.missing.len(),
                            request.entities.len(),
                            "{n}"
                        );
                        let widths: HashSet<usize> =
                            answer.embeddings.iter().map(|e| e.values.len()).collect();
                        assert!(widths.len() <= 1, "{n}: {widths:?}");
                    })
            }
            4 => {
                let request = kg::SimilarEntitiesRequest {
                    entity: d.one(ENTITIES).into(),
                    limit: d.mostly(&[1, 5, 1_000], &[0, 1_001]),
                    prefix: d.one(&["", "item:", "brand:", "nothing:"]).into(),
                };
                client
                    .similar_entities(request.clone())
                    .await
                    .map(|answer| {
                        let found = answer.into_inner().entities;
                        assert!(found.len() <= request.limit as usize, "{n}");
                        assert!(
                            found.iter().all(|e| e.entity.starts_with(&request.prefix)),
                            "{n}"
                        );
                        assert!(found.iter().all(|e| e.entity != request.entity), "{n}");
                        assert!(found.windows(2).all(|w| w[0].score >= w[1].score), "{n}");
                    })
            }
            5 => {
                let (head, tail) = match d.below(4) {
                    0 => (d.one(ENTITIES).into(), String::new()),
                    1 => (String::new(), d.one(ENTITIES).into()),
                    2 => (String::new(), String::new()),
                    _ => (d.one(ENTITIES).into(), d.one(ENTITIES).into()),
                };
                let request = kg::PredictLinksRequest {
                    head,
                    relation: d.one(RELATIONS).into(),
                    tail,
                    limit: d.mostly(&[1, 5, 1_000], &[0, 1_001]),
                    filter_known: d.chance(0.5),
                    any_entity: d.chance(0.5),
                };
                client.predict_links(request.clone()).await.map(|answer| {
                    let found = answer.into_inner().entities;
                    assert!(found.len() <= request.limit as usize, "{n}");
                    assert!(found.windows(2).all(|w| w[0].score >= w[1].score), "{n}");
                })
            }
            6 => {
                let before = kg_stats(&mut client).await;
                let message = kg::LoadTriplesRequest {
                    triples: (0..d.below(4)).map(|_| draw_triple(&mut d)).collect(),
                    remove: (0..d.below(2)).map(|_| draw_triple(&mut d)).collect(),
                    remove_entities: d
                        .some(&ENTITIES[4..], 1)
                        .into_iter()
                        .map(String::from)
                        .collect(),
                };
                let answer = client
                    .load_triples(futures::stream::iter(vec![message]))
                    .await
                    .map(drop);
                if answer.is_err() {
                    let after = kg_stats(&mut client).await;
                    assert_eq!(after, before, "{n}: a refused load changed the graph");
                }
                answer
            }
            _ => {
                let mut request = train(d.mostly(&[4, 8], &[4_097]), 1);
                request.model = d.mostly(&[1, 2, 3], &[0, 4]);
                request.learning_rate = d.mostly(&[0.0, 0.01], &[-1.0, f32::NAN, 10.0]);
                request.margin = d.mostly(&[0.0, 6.0], &[-1.0, f32::INFINITY]);
                request.lr_drop_epoch = d.mostly(&[0, 1], &[2]);
                match client.train_embeddings(request).await {
                    Ok(progress) => {
                        let mut progress = progress.into_inner();
                        let mut done = false;
                        loop {
                            match progress.message().await {
                                Ok(Some(p)) => done |= p.done,
                                Ok(None) => break,
                                Err(status) => {
                                    assert_refused(n, "training", &status);
                                    break;
                                }
                            }
                        }
                        assert!(done, "{n}: a training run ended without `done`");
                        Ok(())
                    }
                    Err(status) => Err(status),
                }
            }
        };
        match outcome {
            Ok(()) => answered += 1,
            Err(status) => {
                assert_refused(n, &format!("kind {kind}"), &status);
                refused += 1;
            }
        }
    }
    assert!(
        answered > 150 && refused > 50,
        "{answered} answered, {refused} refused"
    );
    let stats = kg_stats(&mut client).await;
    assert!(stats.triples > 1_000, "{stats:?}");
}

/// A product of kg-data/products.csv as the filters read it (names and values lower case).
struct Product {
    id: String,
    categories: Vec<String>,
    brand: String,
    price: f64,
    attributes: Vec<(String, String)>,
    in_stock: bool,
}

fn demo_products() -> Vec<Product> {
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            Product {
                id: row[0].into(),
                categories: row[3].split(" > ").map(str::to_lowercase).collect(),
                brand: row[4].to_lowercase(),
                price: row[5].parse().unwrap(),
                attributes: row[6]
                    .split("; ")
                    .filter_map(|a| a.split_once('='))
                    .map(|(k, v)| (k.to_lowercase(), v.to_lowercase()))
                    .collect(),
                in_stock: &row[7] == "true",
            }
        })
        .collect()
}

/// 300 random filters (a category at any level, brands, a price range, in stock only, an
/// attribute value) without a query, for a new shopper and a known one, k 1,000: the answer
/// lists every item of the demo shop that passes, and nothing else (a category page shows
/// the whole category; sorted by price when asked), and its facets (brand, category, colour,
/// price buckets) count, for each value, the items that pass every filter but the facet's
/// own, as counted here from the catalog file.
#[tokio::test(flavor = "multi_thread")]
async fn random_filters_without_a_query_list_and_count_every_item_that_passes() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let products = demo_products();
    fn distinct<T: Ord>(mut values: Vec<T>) -> Vec<T> {
        values.sort();
        values.dedup();
        values
    }
    let categories = distinct(products.iter().flat_map(|p| p.categories.clone()).collect());
    let brands = distinct(products.iter().map(|p| p.brand.clone()).collect());
    let attributes = distinct(products.iter().flat_map(|p| p.attributes.clone()).collect());
    let mut d = Draw(XorShift::new(3));
    for n in 0..300 {
        let category = if d.chance(0.5) {
            d.one(&categories)
        } else {
            String::new()
        };
        let brands = if d.chance(0.3) {
            d.some(&brands, 2)
        } else {
            Vec::new()
        };
        let min_price = d.chance(0.3).then(|| d.below(200) as f64);
        let max_price = d.chance(0.3).then(|| 200.0 + d.below(400) as f64);
        let in_stock_only = d.chance(0.5);
        let attribute = d.chance(0.3).then(|| d.one(&attributes));
        // Whether `p` passes every filter but the one a facet named `skip` counts over.
        let passes_but = |p: &Product, skip: &str| {
            (skip == "category" || category.is_empty() || p.categories.contains(&category))
                && (skip == "brand" || brands.is_empty() || brands.contains(&p.brand))
                && (skip == "price"
                    || (min_price.is_none_or(|m| p.price >= m)
                        && max_price.is_none_or(|m| p.price <= m)))
                && (!in_stock_only || p.in_stock)
                && attribute.as_ref().is_none_or(|a| {
                    skip == format!("attribute:{}", a.0) || p.attributes.contains(a)
                })
        };
        let expected: HashSet<String> = products
            .iter()
            .filter(|p| passes_but(p, ""))
            .map(|p| p.id.clone())
            .collect();
        let request = rk::RankRequest {
            user_id: d.one(&["", "u010"]).into(),
            k: 1_000,
            // A known shopper's purchases are left out otherwise.
            include_purchased: true,
            sort: d.below(4) as i32,
            facets: ["brand", "category", "attribute:color", "price:50,100,200"]
                .map(String::from)
                .to_vec(),
            filters: Some(rk::Filters {
                category: category.clone(),
                brands: brands.clone(),
                min_price,
                max_price,
                in_stock_only,
                attributes: attribute
                    .iter()
                    .map(|(name, value)| rk::AttributeFilter {
                        name: name.clone(),
                        values: vec![value.clone()],
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let answer = client.rank(request.clone()).await.unwrap().into_inner();
        let prices: Vec<f64> = answer.items.iter().map(|i| i.price).collect();
        let in_order = match rk::Sort::try_from(request.sort) {
            Ok(rk::Sort::PriceAscending) => prices.is_sorted(),
            Ok(rk::Sort::PriceDescending) => prices.is_sorted_by(|a, b| a >= b),
            _ => true,
        };
        assert!(in_order, "request {n}: {prices:?} for {request:?}");
        let got: HashSet<String> = answer.items.into_iter().map(|i| i.id).collect();
        assert_eq!(got, expected, "request {n}: {request:?}");
        assert_eq!(answer.facets.len(), 4, "request {n}");
        for facet in &answer.facets {
            let skip = match facet.name.as_str() {
                "price:50,100,200" => "price",
                name => name,
            };
            let mut counted: std::collections::BTreeMap<String, u64> = Default::default();
            for p in products.iter().filter(|p| passes_but(p, skip)) {
                let values: Vec<String> = match skip {
                    "brand" => vec![p.brand.clone()],
                    "category" => p.categories.clone(),
                    "attribute:color" => p
                        .attributes
                        .iter()
                        .filter(|(name, _)| name == "color")
                        .map(|(_, value)| value.clone())
                        .collect(),
                    _ => vec![
                        match p.price {
                            x if x < 50.0 => "*-50",
                            x if x < 100.0 => "50-100",
                            x if x < 200.0 => "100-200",
                            _ => "200-*",
                        }
                        .into(),
                    ],
                };
                for value in values {
                    *counted.entry(value).or_default() += 1;
                }
            }
            let listed: std::collections::BTreeMap<String, u64> = facet
                .values
                .iter()
                .filter(|v| v.count > 0)
                .map(|v| (v.value.to_lowercase(), v.count))
                .collect();
            let at = format!("request {n}, facet {}: {request:?}", facet.name);
            // The 20 most common values are listed, the rest counted in other_values.
            assert!(
                listed.iter().all(|(v, c)| counted.get(v) == Some(c)),
                "{at}"
            );
            assert_eq!(
                listed.len() as u64 + facet.other_values,
                counted.len() as u64,
                "{at}"
            );
            assert_eq!(listed.len(), counted.len().min(20), "{at}");
        }
    }
}

/// 120 random item writes through the ranker (upserts that change an item's brand, category
/// and attributes; updates that set or remove attributes, named in either case; deletes,
/// and loads again under a deleted id): after each, the knowledge graph states of every
/// item written exactly what the catalog holds: its brand, its category's leaf and its
/// attributes, old values gone (the facts a path cites, "same brand as ..."); of a deleted
/// item, what it held when deleted (histories and profiles read them). Found an update
/// naming "Color" adding a second colour beside the item's "color" (both then matched
/// filters and stood in the graph), and an item loaded again after its delete stating its
/// old brand beside its new one.
#[tokio::test(flavor = "multi_thread")]
async fn random_item_writes_leave_the_graph_the_facts_the_catalog_holds() {
    use std::collections::BTreeMap;
    let shop = demo_shop().await;
    let kg_url = shop.kg.url();
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut d = Draw(XorShift::new(21));
    // (brand, category path, attributes) as the catalog holds them.
    type Held = (String, Vec<String>, BTreeMap<String, String>);
    let mut catalog: BTreeMap<String, Held> = BTreeMap::new();
    // Deleted items, as they were when deleted.
    let mut gone: BTreeMap<String, Held> = BTreeMap::new();
    let categories: [&[&str]; 4] = [
        &["Outdoor"],
        &["Outdoor", "Tents"],
        &["Kitchen", "Kettles"],
        &["Electronics", "Audio", "Headphones"],
    ];
    let attributes = |d: &mut Draw| -> BTreeMap<String, String> {
        let mut held = BTreeMap::new();
        for (name, values) in [
            ("color", &["red", "blue", "navy"][..]),
            ("size", &["s", "m"][..]),
        ] {
            if d.chance(0.5) {
                held.insert(name.to_string(), d.one(values).to_string());
            }
        }
        held
    };
    for n in 0..120 {
        let id = format!("g{}", d.below(8));
        match catalog.get_mut(&id) {
            Some(_) if d.chance(0.2) => {
                let deleted = client
                    .delete_items(rk::DeleteItemsRequest {
                        ids: vec![id.clone()],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(deleted.deleted, 1);
                gone.extend(catalog.remove_entry(&id));
            }
            Some((_, _, held)) if d.chance(0.5) => {
                // Set one attribute, or remove it (an empty value).
                let name = d.one(&["color", "size", "Color"]).to_string();
                let value = d.one(&["", "green", "l"]).to_string();
                let update = rk::ItemUpdate {
                    id: id.clone(),
                    attributes: [(name.clone(), value.clone())].into(),
                    ..Default::default()
                };
                client
                    .update_items(futures::stream::iter(vec![rk::UpdateItemsRequest {
                        updates: vec![update],
                    }]))
                    .await
                    .unwrap();
                // Names are one whatever their case; the last written case stays.
                held.retain(|k, _| !k.eq_ignore_ascii_case(&name));
                if !value.is_empty() {
                    held.insert(name, value);
                }
            }
            _ => {
                let brand = d.one(&["Acme", "Pixelon", "Voltix", ""]).to_string();
                let category: Vec<String> =
                    d.one(&categories).iter().map(|c| c.to_string()).collect();
                let held = attributes(&mut d);
                let item = rk::Item {
                    id: id.clone(),
                    title: format!("{} thing {n}", category.last().unwrap()),
                    brand: brand.clone(),
                    category: category.clone(),
                    price: 10.0,
                    in_stock: true,
                    attributes: held.clone().into_iter().collect(),
                    ..Default::default()
                };
                client
                    .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
                        items: vec![item],
                    }]))
                    .await
                    .unwrap();
                gone.remove(&id);
                catalog.insert(id.clone(), (brand, category, held));
            }
        }
        for (id, (brand, category, held)) in catalog.iter().chain(&gone) {
            let entity = format!("item:{id}");
            let want_brand: Vec<String> = (!brand.is_empty())
                .then(|| format!("brand:{brand}"))
                .into_iter()
                .collect();
            let want_category = vec![format!("category:{}", category.join("/"))];
            let want_attributes: Vec<String> =
                held.iter().map(|(k, v)| format!("attr:{k}={v}")).collect();
            let want = (want_brand, want_category, want_attributes);
            let stated = async || {
                (
                    out_edges(&kg_url, &entity, "brand").await,
                    out_edges(&kg_url, &entity, "category").await,
                    out_edges(&kg_url, &entity, "attribute").await,
                )
            };
            assert!(
                soon(async || stated().await == want).await,
                "write {n}, {id}: the graph states {:?}, the catalog {want:?}",
                stated().await
            );
        }
    }
}
