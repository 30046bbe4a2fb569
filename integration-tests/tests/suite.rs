//! The three services together on the demo shop.
use std::collections::HashMap;

use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;

use crate::common::*;

fn rank(user: &str, query: &str, k: u32) -> rk::RankRequest {
    rk::RankRequest {
        user_id: user.into(),
        query: query.into(),
        k,
        explain: true,
        ..Default::default()
    }
}

/// Records that `user` bought `item` (at time 0) through `RecordInteractions`.
async fn purchase(
    client: &mut RankerClient<tonic::transport::Channel>,
    user: &str,
    item: &str,
) -> rk::RecordInteractionsResponse {
    let event = rk::Interaction {
        user_id: user.into(),
        item_id: item.into(),
        kind: rk::InteractionKind::Purchase as i32,
        value: 1.0,
        timestamp_ms: 0,
    };
    client
        .record_interactions(futures::stream::iter(vec![rk::RecordInteractionsRequest {
            interactions: vec![event],
        }]))
        .await
        .unwrap()
        .into_inner()
}

/// A response's item ids, in rank order.
fn ids(response: &rk::RankResponse) -> Vec<String> {
    response.items.iter().map(|i| i.id.clone()).collect()
}

/// Popularity as the contract defines it: summed event weights (view 1, click 2, cart 3,
/// purchase 5), computed here from the file independently of the service.
fn popularity_from_events() -> HashMap<String, f32> {
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/events.csv")).unwrap();
    let mut pop = HashMap::new();
    for record in reader.records() {
        let record = record.unwrap();
        let w = match &record[2] {
            "view" => 1.0,
            "click" => 2.0,
            "cart" => 3.0,
            "purchase" => 5.0,
            other => panic!("unexpected kind {other}"),
        };
        *pop.entry(record[1].to_string()).or_insert(0.0) += w;
    }
    pop
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_shop_ranks_with_reasons() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);

    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.items, stats.users, stats.dimension), (312, 100, 384));

    // A search: boots first, each with its reason.
    let r = client
        .rank(rank("", "waterproof hiking boots", 5))
        .await
        .unwrap()
        .into_inner();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    assert_eq!(r.items.len(), 5);
    for item in &r.items[..3] {
        assert_eq!(
            item.category.last().map(String::as_str),
            Some("Hiking Boots"),
            "{}",
            item.title
        );
        // It holds the words (all of them, or those named): not a match by meaning alone.
        assert!(
            item.reasons[0].starts_with("matches")
                && item.reasons[0].contains("your search \"waterproof hiking boots\""),
            "{:?}",
            item.reasons
        );
    }
    // No title or description says "portable": the results are near in meaning only,
    // and say so rather than that they match.
    let r = client
        .rank(rank("", "portable", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.words_matched, Some(false));
    assert!(
        r.items
            .iter()
            .all(|i| i.reasons[0] == "close in meaning to your search \"portable\""),
        "{r:?}"
    );

    // A returning shopper: the graph explains at least one result by a path from their history.
    let r = client
        .rank(rank("u010", "", 10))
        .await
        .unwrap()
        .into_inner();
    let graph_reasons: Vec<&String> = r
        .items
        .iter()
        .flat_map(|i| &i.reasons)
        .filter(|x| x.contains("same brand") || x.contains("goes with") || x.contains("accessory"))
        .collect();
    assert!(
        !graph_reasons.is_empty(),
        "no graph reason in {:#?}",
        r.items
    );
    assert!(
        r.items
            .iter()
            .any(|i| i.contributions.iter().any(|c| c.signal == "kg"))
    );

    // A new shopper without a query gets the most popular items, in order.
    let pop = popularity_from_events();
    let r = client
        .rank(rank("nobody-seen-before", "", 5))
        .await
        .unwrap()
        .into_inner();
    let mut expected: Vec<(&String, &f32)> = pop.iter().collect();
    expected.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
    assert_eq!(r.items[0].id, *expected[0].0, "most popular first");
    let got: Vec<f32> = r.items.iter().map(|i| pop[&i.id]).collect();
    assert!(
        got.windows(2).all(|w| w[0] >= w[1]),
        "popularity must not increase: {got:?}"
    );
    assert_eq!(r.items[0].reasons, vec!["popular with shoppers"]);
}

/// An admin loading the events file a second time (a load that failed halfway and is run
/// again, a retry) changes nothing: every event is already stored, and counted once.
#[tokio::test(flavor = "multi_thread")]
async fn loading_the_events_file_again_changes_nothing() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let stats = async |client: &mut RankerClient<_>| {
        let s = client
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        (s.users, s.interactions)
    };
    let before = stats(&mut client).await;
    let rows = csv::Reader::from_path(repo_root().join("kg-data/events.csv"))
        .unwrap()
        .records()
        .count() as u64;
    assert_eq!(before, (100, rows));
    let popular = ids(&client.rank(rank("", "", 10)).await.unwrap().into_inner());
    let theirs = ids(&client
        .rank(rank("u010", "", 10))
        .await
        .unwrap()
        .into_inner());
    let (_, again) = soukctl::load_events(
        channel(&shop.ranker.url()).await,
        &repo_root().join("kg-data/events.csv"),
        &quiet(),
        &None,
    )
    .await
    .unwrap();
    let again = again.unwrap();
    assert_eq!((again.recorded, again.duplicates), (0, rows), "{again:?}");
    assert_eq!(stats(&mut client).await, before);
    let popular_again = client.rank(rank("", "", 10)).await.unwrap().into_inner();
    assert_eq!(ids(&popular_again), popular);
    let theirs_again = client
        .rank(rank("u010", "", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&theirs_again), theirs);
    // A new event is still recorded.
    let new = purchase(&mut client, "u010", "p00001").await;
    assert_eq!((new.recorded, new.duplicates), (1, 0));
}

/// An item's page through gRPC: items like the hiking boots (most of them boots), the item
/// the triples file says complements them, the first results explained by the page's item, and
/// the item itself never among them; an unknown item is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_item_page_ranks_what_is_like_it_and_goes_with_it() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    // Its partners, read from the triples file rather than asked of the graph.
    let partners: Vec<String> = std::fs::read_to_string(repo_root().join("kg-data/triples.tsv"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let [head, relation, tail] = line.split('\t').collect::<Vec<_>>()[..] else {
                return None;
            };
            let other = match (head, tail) {
                ("item:p00141", other) | (other, "item:p00141") => other,
                _ => return None,
            };
            let related = matches!(relation, "complements" | "goes_with" | "accessory_of");
            other
                .strip_prefix("item:")
                .filter(|_| related)
                .map(String::from)
        })
        .collect();
    assert!(!partners.is_empty());
    let page = rk::RankRequest {
        item_id: "p00141".into(),
        k: 10,
        explain: true,
        ..Default::default()
    };
    let r = client.rank(page.clone()).await.unwrap().into_inner();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    assert_eq!(r.items.len(), 10);
    assert!(!ids(&r).contains(&"p00141".to_string()), "{:?}", ids(&r));
    // The first five are there for the page's item, and say so.
    for item in &r.items[..5] {
        assert!(
            item.reasons
                .iter()
                .any(|x| x.contains("Trailhound Peak Hiking Boots 700")),
            "{}: {:?}",
            item.title,
            item.reasons
        );
    }
    let boots = r.items[..5]
        .iter()
        .filter(|i| i.category.last().map(String::as_str) == Some("Hiking Boots"))
        .count();
    assert!(
        boots >= 3,
        "{boots} of the first 5 are boots: {:#?}",
        r.items
    );
    let partner = r
        .items
        .iter()
        .find(|i| partners.contains(&i.id))
        .unwrap_or_else(|| panic!("none of {partners:?} in {:?}", ids(&r)));
    assert!(
        partner
            .reasons
            .iter()
            .any(|x| x == "goes with this Trailhound Peak Hiking Boots 700"),
        "{:?}",
        partner.reasons
    );
    // Its "similar items" shelf: the request's own weights, dense alone.
    let dense = |dense: f32| rk::FusionWeights {
        dense,
        ..Default::default()
    };
    let similar = client
        .rank(rk::RankRequest {
            weights: Some(dense(1.0)),
            ..page.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(similar.model_version, "request");
    for item in &similar.items[..5] {
        assert_eq!(
            item.category.last().map(String::as_str),
            Some("Hiking Boots"),
            "{}",
            item.title
        );
    }
    let bad = client
        .rank(rk::RankRequest {
            weights: Some(dense(f32::INFINITY)),
            ..page.clone()
        })
        .await
        .unwrap_err();
    assert_invalid(&bad, "weights.dense must be a number in -10..10");
    let unknown = client
        .rank(rk::RankRequest {
            item_id: "p99999".into(),
            ..page
        })
        .await
        .unwrap_err();
    assert_invalid(&unknown, "item_id \"p99999\" is not in the catalog");
}

/// A search sorted by price through gRPC lists every product of the demo file whose text
/// matches a query word (recounted from the file), cheapest first, paged; an unknown order is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_sorted_by_price_lists_its_matches_cheapest_first() {
    use souk_ranker_core::bm25::terms;
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let matching: Vec<String> = reader
        .records()
        .map(|r| r.unwrap())
        .filter(|r| {
            terms(&format!("{} {}", &r[1], &r[2]))
                .iter()
                .any(|w| w == "espresso")
        })
        .map(|r| r[0].to_string())
        .collect();
    assert!(matching.len() > 3);
    let sorted = |offset: u32, k: u32| rk::RankRequest {
        query: "espresso".into(),
        sort: rk::Sort::PriceAscending as i32,
        offset,
        k,
        ..Default::default()
    };
    let all = client.rank(sorted(0, 1000)).await.unwrap().into_inner();
    let listed = ids(&all);
    for id in &matching {
        assert!(listed.contains(id), "{id} missing from {listed:?}");
    }
    let prices: Vec<f64> = all.items.iter().map(|i| i.price).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    assert_eq!(all.candidates as usize, all.items.len());
    assert!(
        listed.len() < 50,
        "only what the search matches: {listed:?}"
    );
    let page = client.rank(sorted(2, 3)).await.unwrap().into_inner();
    assert_eq!(ids(&page), listed[2..5].to_vec());
    let bad = client
        .rank(rk::RankRequest {
            sort: 7,
            ..sorted(0, 5)
        })
        .await
        .unwrap_err();
    assert_invalid(&bad, "unknown sort 7");

    // By popularity: the same items, in the order of a recount of events.csv (each event
    // weighed by its kind, as `Interaction::weight`; identical rows once), ties by id.
    let weight = |kind: &str, value: f32| match kind {
        "view" => 1.0,
        "click" => 2.0,
        "cart" => 3.0,
        "purchase" => 5.0,
        _ => (value.clamp(0.0, 5.0) - 1.0).max(0.25),
    };
    let mut events = csv::Reader::from_path(repo_root().join("kg-data/events.csv")).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut popularity: std::collections::HashMap<String, f32> = Default::default();
    for row in events.records().map(Result::unwrap) {
        if seen.insert(row.iter().collect::<Vec<_>>().join(",")) {
            *popularity.entry(row[1].to_string()).or_default() +=
                weight(&row[2], row[3].parse().unwrap());
        }
    }
    let mut want = listed.clone();
    want.sort_by(|a, b| {
        let (pa, pb) = (popularity.get(a), popularity.get(b));
        let (pa, pb) = (pa.copied().unwrap_or(0.0), pb.copied().unwrap_or(0.0));
        pb.total_cmp(&pa).then_with(|| a.cmp(b))
    });
    let popular = client
        .rank(rk::RankRequest {
            sort: rk::Sort::Popularity as i32,
            ..sorted(0, 1000)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&popular), want);
    assert!(popularity.get(&want[0]).is_some_and(|&p| p > 0.0));

    // A budget in the words keeps the results to it: the listing above cut at 100, and the
    // response says what it read; a ranked search keeps to it too.
    let under: Vec<&str> = listed
        .iter()
        .zip(&prices)
        .filter(|(_, p)| **p <= 100.0)
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        !under.is_empty() && under.len() < listed.len(),
        "{prices:?}"
    );
    let budget = client
        .rank(rk::RankRequest {
            query: "espresso under $100".into(),
            ..sorted(0, 1000)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&budget), under);
    let read = budget.price_from_query.unwrap();
    assert_eq!((read.min_price, read.max_price), (None, Some(100.0)));
    assert_eq!(read.phrase, "under $100");
    let ranked = client
        .rank(rk::RankRequest {
            query: "espresso machine under 100".into(),
            k: 5,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        ranked.items.iter().all(|i| i.price <= 100.0),
        "{:?}",
        ranked.items
    );
    assert!(!ranked.items.is_empty());
}

/// The ranker's spelling lexicon (`Stats.lexicon_words`), once it has read it from the
/// encoder (asked for in the background at start; 10 s at most).
async fn lexicon_words(client: &mut RankerClient<tonic::transport::Channel>) -> u32 {
    let started = std::time::Instant::now();
    loop {
        let stats = client
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if stats.lexicon_words > 0 || started.elapsed().as_secs() >= 10 {
            return stats.lexicon_words;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A misspelt search through gRPC is ranked as the shopper meant it, and says so; `verbatim`
/// ranks it as typed; a search without the accents of a title finds it with nothing corrected.
#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_search_is_ranked_as_meant() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let meant = client
        .rank(rank("", "wireless headphones", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meant.corrected_query, "", "nothing to correct");
    let typed = client
        .rank(rank("", "Wireles hedphones", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(typed.corrected_query, "wireless headphones");
    assert_eq!(ids(&typed), ids(&meant));
    // Two edits in a long word ("ph" typed "f"): read as meant too.
    let two = client
        .rank(rank("", "wireless headfones", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.corrected_query, "wireless headphones");
    assert_eq!(ids(&two), ids(&meant));
    // A real word the catalog lacks is no misspelling, once the ranker has the encoder's
    // words: "lover" was read as "over" (pour-over sets are found with "coffee").
    let lexicon = lexicon_words(&mut client).await;
    assert!(lexicon > 20_000, "{lexicon} words");
    for (typed, read) in [
        ("gift for a coffee lover", ""),
        ("gift for a cofee lover", "gift for a coffee lover"),
    ] {
        let r = client.rank(rank("", typed, 5)).await.unwrap().into_inner();
        assert_eq!(r.corrected_query, read, "{typed:?}");
    }
    // Search as you type: a half-typed last word is completed (in the context of the words
    // before it, which are corrected), unless the word is finished or the query verbatim.
    let completed = |query: &str, verbatim: bool| rk::RankRequest {
        prefix: true,
        verbatim,
        ..rank("", query, 5)
    };
    let singular = client
        .rank(rank("", "wireless headphone", 5))
        .await
        .unwrap()
        .into_inner();
    for (typed, read) in [
        ("wireless headp", "wireless headphone"),
        ("Wireles headpho", "wireless headphone"),
        // The demo's texts say "material" and "last" more often than "maker" and "lamp",
        // but not beside "coffee" and "desk".
        ("coffee ma", "coffee maker"),
        ("desk la", "desk lamp"),
        // Every yoga text says "material" too, as every other text does; "mat" only them.
        ("yoga ma", "yoga mat"),
        // Nothing "lo" begins goes with "coffee": left alone ("lover" is coming).
        ("gift for a coffee lo", ""),
        ("wireless headphones", ""),
        // Begins no term: misspelt, so corrected.
        ("wireless hedphones", "wireless headphones"),
    ] {
        let r = client
            .rank(completed(typed, false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.corrected_query, read, "{typed:?}");
        if read == "wireless headphone" {
            assert_eq!(ids(&r), ids(&singular), "{typed:?}");
        }
    }
    for request in [
        completed("wireless headp ", false),
        completed("wireless headp", true),
    ] {
        let r = client.rank(request).await.unwrap().into_inner();
        assert_ne!(r.corrected_query, "wireless headphone");
    }
    // Suggestions for the search box: "desk lamp" first, with as many items as the demo
    // file has titles and descriptions holding both words.
    let both = {
        use souk_ranker_core::bm25::terms;
        let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
        reader
            .records()
            .map(|r| r.unwrap())
            .filter(|r| {
                let words = terms(&format!("{} {}", &r[1], &r[2]));
                words.iter().any(|w| w == "desk") && words.iter().any(|w| w == "lamp")
            })
            .count() as u64
    };
    let suggest = |query: &str, k: u32| rk::SuggestRequest {
        query: query.into(),
        k,
    };
    let got = client
        .suggest(suggest("Dessk la", 3))
        .await
        .unwrap()
        .into_inner()
        .suggestions;
    assert!(got.len() <= 3 && both > 1, "{got:?}");
    assert_eq!((got[0].query.as_str(), got[0].items), ("desk lamp", both));
    for finished in ["desk lamp ", "desk l", ""] {
        let got = client.suggest(suggest(finished, 0)).await.unwrap();
        assert!(got.into_inner().suggestions.is_empty(), "{finished:?}");
    }
    for (request, message) in [
        (suggest("desk la", 17), "k must be 1..=16, got 17"),
        (
            suggest(&"a".repeat(1025), 5),
            "query is 1025 bytes; the limit is 1024",
        ),
    ] {
        assert_invalid(&client.suggest(request).await.unwrap_err(), message);
    }
    assert!(
        typed.items[0].reasons[0].contains("matches your search \"wireless headphones\""),
        "{:?}",
        typed.items[0].reasons
    );
    let verbatim = client
        .rank(rk::RankRequest {
            verbatim: true,
            ..rank("", "Wireles hedphones", 5)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verbatim.corrected_query, "");
    assert!(
        verbatim.items[0].reasons[0].contains("Wireles hedphones"),
        "{:?}",
        verbatim.items[0].reasons
    );
    // A missing accent is no typo: "creme brulee" matches "Crème Brûlée" as written, with
    // nothing to correct, and so does the upper-cased, accented query.
    let accented = rk::UpsertItemsRequest {
        items: vec![rk::Item {
            id: "torch-1".into(),
            title: "Crème Brûlée Torch".into(),
            category: vec!["Kitchen".into()],
            price: 24.0,
            in_stock: true,
            ..Default::default()
        }],
    };
    client
        .upsert_items(futures::stream::iter(vec![accented]))
        .await
        .unwrap();
    for query in ["creme brulee", "CRÈME BRÛLÉE"] {
        let found = client.rank(rank("", query, 3)).await.unwrap().into_inner();
        assert_eq!(found.corrected_query, "", "{query}");
        assert_eq!(ids(&found)[0], "torch-1", "{query}");
        let bm25 = found.items[0]
            .contributions
            .iter()
            .find(|c| c.signal == "bm25")
            .map_or(0.0, |c| c.value);
        assert_eq!(bm25, 1.0, "{query}: {:?}", found.items[0].contributions);
    }
}

/// One row of the demo shop's catalog file, as the facet recount reads it.
struct Row {
    brand: String,
    levels: Vec<String>,
    color: String,
    price: f64,
    in_stock: bool,
    /// Title and description: what BM25 reads.
    words: Vec<String>,
    /// Its vector from the encoder, as the ranker stored it.
    vector: Vec<f32>,
}

/// `texts` embedded through `Embed` as the ranker asks for them (truncated, normalised), 32
/// to a request.
async fn embed(encoder_url: &str, texts: &[String]) -> Vec<Vec<f32>> {
    use souk_proto::encoder::v1 as enc;
    use souk_proto::encoder::v1::encoder_client::EncoderClient;
    let mut client = EncoderClient::new(channel(encoder_url).await);
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let request = enc::EmbedRequest {
            texts: chunk.to_vec(),
            truncate: Some(true),
            normalize: Some(true),
            kind: enc::TextKind::Document.into(),
            ..Default::default()
        };
        let response = client.embed(request).await.unwrap().into_inner();
        vectors.extend(response.embeddings.into_iter().map(|e| e.values));
    }
    vectors
}

/// The demo shop's catalog file, each row embedded through `Embed` as the ranker embeds it
/// (`Item::text`).
async fn demo_rows(encoder_url: &str) -> Vec<Row> {
    use souk_ranker_core::bm25::terms;
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let mut rows = Vec::new();
    let mut texts = Vec::new();
    for record in reader.records() {
        let r = record.unwrap();
        rows.push(Row {
            brand: r[4].to_string(),
            levels: r[3].split('>').map(|l| l.trim().to_string()).collect(),
            color: r[6]
                .split(';')
                .filter_map(|kv| kv.trim().strip_prefix("color="))
                .map(str::to_string)
                .next()
                .unwrap_or_default(),
            price: r[5].parse().unwrap(),
            in_stock: r[7].trim() == "true",
            words: terms(&format!("{} {}", &r[1], &r[2])),
            vector: Vec::new(),
        });
        texts.push(if r[2].is_empty() {
            r[1].to_string()
        } else {
            format!("{}. {}", &r[1], &r[2])
        });
    }
    for (row, vector) in rows.iter_mut().zip(embed(encoder_url, &texts).await) {
        row.vector = vector;
    }
    rows
}

/// The rows a facet of a search counts, recounted: those among `candidates` that hold a word
/// of `query`, and the 64 nearest `vector` among `candidates` that are at least 3/4 as near
/// as the nearest (the ranker's `FACET_NEAREST` and `NEAR_MATCH_RATIO`).
fn facet_rows<'a>(
    rows: &'a [Row],
    query: &str,
    vector: Option<&[f32]>,
    candidates: impl Fn(&Row) -> bool,
) -> Vec<&'a Row> {
    let wanted: std::collections::HashSet<String> =
        souk_ranker_core::bm25::terms(query).into_iter().collect();
    let dot = |row: &Row, vector: &[f32]| -> f32 {
        row.vector.iter().zip(vector).map(|(a, b)| a * b).sum()
    };
    let mut near: Vec<(f32, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| candidates(r))
        .filter_map(|(i, r)| Some((dot(r, vector?), i)))
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0));
    let floor = 0.75 * near.first().map_or(0.0, |n| n.0);
    // Nothing within float noise of a cut, or the recount could differ from the ranker's
    // f32 sums in the last bit.
    assert!(near.iter().take(64).all(|(s, _)| (s - floor).abs() > 1e-4));
    assert!(near.len() <= 64 || (near[63].0 - near[64].0).abs() > 1e-5);
    let near: std::collections::HashSet<usize> = near
        .into_iter()
        .take(64)
        .filter(|(s, _)| *s >= floor)
        .map(|(_, i)| i)
        .collect();
    rows.iter()
        .enumerate()
        .filter(|(i, r)| {
            candidates(r) && (near.contains(i) || r.words.iter().any(|w| wanted.contains(w)))
        })
        .map(|(_, r)| r)
        .collect()
}

/// The 20 most common values, most items first (ties by value), as a facet lists them.
fn top<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for v in values.into_iter().filter(|v| !v.is_empty()) {
        *counts.entry(v).or_insert(0) += 1;
    }
    let mut counts: Vec<(String, u64)> = counts
        .into_iter()
        .map(|(v, n)| (v.to_string(), n))
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(20);
    counts
}

/// A facet's values as (value, count).
fn values(facet: &rk::Facet) -> Vec<(String, u64)> {
    facet
        .values
        .iter()
        .map(|v| (v.value.clone(), v.count))
        .collect()
}

/// Facet counts through gRPC equal a recount of the catalog file: the in-stock items whose
/// title or description holds a query word (terms as BM25 reads them) and those nearest the
/// query's vector (embedded through the encoder), each facet without its own filter (the
/// brand facet of a one-brand search lists every brand), price buckets included; a query
/// that no word matches is counted over its nearest items.
#[tokio::test(flavor = "multi_thread")]
async fn facet_counts_match_a_recount_of_the_catalog_file() {
    let shop = demo_shop().await;
    let rows = demo_rows(&shop.encoder_url).await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let embed_one = |text: &str| {
        let (url, texts) = (shop.encoder_url.clone(), vec![text.to_string()]);
        async move { embed(&url, &texts).await.remove(0) }
    };
    let query = "wireless headphones";
    let vector = embed_one(query).await;
    let brand = "Pixelon";
    let request = rk::RankRequest {
        filters: Some(rk::Filters {
            brands: vec![brand.to_uppercase()],
            in_stock_only: true,
            ..Default::default()
        }),
        facets: vec![
            "brand".into(),
            "category".into(),
            "attribute:Color".into(),
            "price".into(),
            "price:50,100".into(),
        ],
        ..rank("", query, 5)
    };
    let response = client.rank(request).await.unwrap().into_inner();
    let got: Vec<(String, Vec<(String, u64)>)> = response
        .facets
        .iter()
        .map(|f| (f.name.clone(), values(f)))
        .collect();
    // The brand facet lifts the brand filter; the others keep it (and count the brand's own
    // nearest items).
    let all_brands = facet_rows(&rows, query, Some(&vector), |r| r.in_stock);
    let of_brand = facet_rows(&rows, query, Some(&vector), |r| {
        r.in_stock && r.brand == brand
    });
    let buckets = ["*-50", "50-100", "100-*"]
        .iter()
        .zip([(0.0, 50.0), (50.0, 100.0), (100.0, f64::INFINITY)])
        .map(|(label, (low, high))| {
            let n = of_brand
                .iter()
                .filter(|r| low <= r.price && r.price < high)
                .count();
            (label.to_string(), n as u64)
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "brand".to_string(),
                top(all_brands.iter().map(|r| r.brand.as_str()))
            ),
            (
                "category".to_string(),
                top(of_brand
                    .iter()
                    .flat_map(|r| r.levels.iter().map(String::as_str)))
            ),
            (
                "attribute:color".to_string(),
                top(of_brand.iter().map(|r| r.color.as_str()))
            ),
            ("price".to_string(), Vec::new()),
            ("price:50,100".to_string(), buckets),
        ]
    );
    assert!(got[0].1.len() > 1, "every brand, not only {brand}: {got:?}");
    assert!(response.items.iter().all(|i| i.brand == brand));
    // An item the request excludes is not listed, so not counted: its brand's count falls
    // by one, every other count stays (all of them listed: fewer than 20 brands).
    assert!(got[0].1.len() < 20, "{got:?}");
    let gone = response.items[0].id.clone();
    let without = client
        .rank(rk::RankRequest {
            exclude: vec![gone.clone()],
            filters: Some(rk::Filters {
                brands: vec![brand.to_uppercase()],
                in_stock_only: true,
                ..Default::default()
            }),
            facets: vec!["brand".into()],
            ..rank("", query, 5)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ids(&without).contains(&gone));
    let expected: Vec<(String, u64)> = got[0]
        .1
        .iter()
        .map(|(b, n)| (b.clone(), if b == brand { n - 1 } else { *n }))
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut counted = values(&without.facets[0]);
    counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut expected = expected;
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    assert_eq!(counted, expected, "{gone} excluded");
    let price = &response.facets[3];
    let low = of_brand
        .iter()
        .map(|r| r.price)
        .fold(f64::INFINITY, f64::min);
    let high = of_brand.iter().map(|r| r.price).fold(0.0, f64::max);
    assert_eq!((price.min_price, price.max_price), (Some(low), Some(high)));
    assert!(low < high);
    let bounds: Vec<(Option<f64>, Option<f64>)> = response.facets[4]
        .values
        .iter()
        .map(|v| (v.price_from, v.price_to))
        .collect();
    assert_eq!(
        bounds,
        [
            (None, Some(50.0)),
            (Some(50.0), Some(100.0)),
            (Some(100.0), None)
        ]
    );
    // A facet asked for twice, one that does not exist, bad price edges: InvalidArgument
    // naming it.
    for (facets, message) in [
        (
            vec!["brand", "brand"],
            "facets[1]: brand is asked for twice",
        ),
        (
            vec!["category", "size"],
            "facets[1]: unknown facet \"size\"",
        ),
        (
            vec!["price", "price:100,50"],
            "facets[1]: price facet edges must rise: 50 after 100",
        ),
    ] {
        let request = rk::RankRequest {
            facets: facets.into_iter().map(String::from).collect(),
            ..rank("", query, 5)
        };
        assert_invalid(&client.rank(request).await.unwrap_err(), message);
    }
    // No word of this query is in the catalog: the counts are over the items nearest its
    // vector (every item a candidate: no filter), which hold what the page shows.
    let query = "music listening";
    let vector = embed_one(query).await;
    let near = facet_rows(&rows, query, Some(&vector), |_| true);
    assert!(near.iter().all(|r| !r.words.iter().any(|w| w == "music")));
    let request = rk::RankRequest {
        facets: vec!["brand".into(), "category".into()],
        verbatim: true,
        ..rank("", query, 5)
    };
    let response = client.rank(request).await.unwrap().into_inner();
    assert_eq!(
        values(&response.facets[0]),
        top(near.iter().map(|r| r.brand.as_str()))
    );
    assert!(near.len() > 5 && near.len() < 64, "{}", near.len());
    for item in &response.items {
        let counted =
            |facet: &rk::Facet, value: &str| facet.values.iter().any(|v| v.value == value);
        assert!(counted(&response.facets[0], &item.brand), "{}", item.brand);
        for level in &item.category {
            assert!(counted(&response.facets[1], level), "{level}");
        }
    }
}

/// Pages through gRPC, for a returning shopper (graph paths rescore) with diversity: ten pages
/// of 10 are the one list of 100 a single request gives, no item twice. Before the ranking was
/// built in tiers each page's MMR drew from a pool sized by its own depth and re-picked.
#[tokio::test(flavor = "multi_thread")]
async fn pages_are_slices_of_one_ranking() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    for (user, query) in [("u010", ""), ("u010", "lamp"), ("", "bag")] {
        let page = |offset: u32, k: u32| rk::RankRequest {
            offset,
            diversity: 0.5,
            ..rank(user, query, k)
        };
        let whole = ids(&client.rank(page(0, 100)).await.unwrap().into_inner());
        assert_eq!(whole.len(), 100);
        let distinct: std::collections::HashSet<&String> = whole.iter().collect();
        assert_eq!(distinct.len(), 100, "{user} {query:?}: an item twice");
        let mut paged = Vec::new();
        for offset in (0..100).step_by(10) {
            let r = client.rank(page(offset, 10)).await.unwrap().into_inner();
            assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
            paged.extend(ids(&r));
        }
        assert_eq!(paged, whole, "{user} {query:?}");
    }
    // Collapsed on brand: each brand once, and the pages slice that list too.
    for (user, query) in [("u010", ""), ("", "bag")] {
        let page = |offset: u32, k: u32| rk::RankRequest {
            offset,
            diversity: 0.5,
            collapse: "brand".into(),
            ..rank(user, query, k)
        };
        let whole = client.rank(page(0, 100)).await.unwrap().into_inner().items;
        let brands: std::collections::HashSet<String> =
            whole.iter().map(|i| i.brand.to_lowercase()).collect();
        // Each stands for its brand's items in the catalog file.
        for item in &whole {
            let of_brand =
                demo_products_where(|r| r[4].eq_ignore_ascii_case(&item.brand)).len() as u32;
            assert_eq!(item.group_size, of_brand, "{}", item.brand);
        }
        assert_eq!(brands.len(), whole.len(), "{user} {query:?}: a brand twice");
        assert!(
            whole.len() >= 10,
            "{user} {query:?}: {} brands",
            whole.len()
        );
        let whole: Vec<String> = whole.into_iter().map(|i| i.id).collect();
        let mut paged = Vec::new();
        for offset in (0..whole.len() as u32).step_by(4) {
            paged.extend(ids(&client
                .rank(page(offset, 4))
                .await
                .unwrap()
                .into_inner()));
        }
        assert_eq!(paged, whole, "{user} {query:?} collapsed");
    }
}

/// An attribute filter through gRPC: black or navy (any case), in stock. Every item of the
/// file that passes comes back (read independently of the service), nothing else does, and
/// the search still puts headphones first.
#[tokio::test(flavor = "multi_thread")]
async fn attribute_filters_return_exactly_the_items_that_have_the_values() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let mut request = rank("", "wireless headphones", 1000);
    request.filters = Some(rk::Filters {
        in_stock_only: true,
        attributes: vec![rk::AttributeFilter {
            name: "COLOR".into(),
            values: vec!["Black".into(), "navy".into()],
        }],
        ..Default::default()
    });
    let items = client.rank(request).await.unwrap().into_inner().items;
    let want = demo_products_where(|r| {
        &r[7] == "true"
            && r[6]
                .split(';')
                .any(|kv| matches!(kv.trim(), "color=black" | "color=navy"))
    });
    assert!(want.len() >= 10, "the demo data has black and navy items");
    for item in &items[..3] {
        assert_eq!(
            item.category.last().map(String::as_str),
            Some("Headphones"),
            "{item:?}"
        );
    }
    let mut ids: Vec<String> = items.into_iter().map(|i| i.id).collect();
    ids.sort();
    assert_eq!(ids, want);
}

/// The ids of `kg-data/products.csv`'s rows that `keep` (columns: id, title, description,
/// category, brand, price, attributes, in_stock), sorted: what a filter should pass, read
/// independently of the service.
fn demo_products_where(keep: impl Fn(&csv::StringRecord) -> bool) -> Vec<String> {
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let mut ids: Vec<String> = reader
        .records()
        .map(Result::unwrap)
        .filter(|r| keep(r))
        .map(|r| r[0].to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_argument_with_the_reason() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let cases = [
        (
            rk::RankRequest {
                k: 0,
                ..Default::default()
            },
            "k must be 1..=1000",
        ),
        (
            rk::RankRequest {
                k: 1001,
                ..Default::default()
            },
            "k must be 1..=1000",
        ),
        (
            rk::RankRequest {
                k: 5,
                filters: Some(rk::Filters {
                    min_price: Some(50.0),
                    max_price: Some(10.0),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filters.min_price (50) is above filters.max_price (10)",
        ),
        (
            rk::RankRequest {
                k: 5,
                filters: Some(rk::Filters {
                    max_price: Some(f64::NAN),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filters.max_price must be finite",
        ),
        (
            rk::RankRequest {
                k: 5,
                diversity: 3.0,
                ..Default::default()
            },
            "diversity must be between 0 and 1",
        ),
        (
            rk::RankRequest {
                k: 5,
                filters: Some(rk::Filters {
                    attributes: vec![rk::AttributeFilter {
                        name: "Color".into(),
                        values: vec![],
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filters.attributes[0] (color) lists no value",
        ),
        (
            rk::RankRequest {
                k: 100,
                offset: 901,
                ..Default::default()
            },
            "offset + k must be at most 1000, got 901 + 100",
        ),
        (
            rk::RankRequest {
                k: 5,
                collapse: "category".into(),
                ..Default::default()
            },
            "collapse: cannot collapse on \"category\": brand or attribute:<name>",
        ),
    ];
    for (request, message) in cases {
        let status = client.rank(request).await.unwrap_err();
        assert_invalid(&status, message);
    }
    // A bad item in a stream is named, and nothing of its batch is stored.
    let bad = rk::UpsertItemsRequest {
        items: vec![
            rk::Item {
                id: "ok-1".into(),
                title: "Fine".into(),
                price: 1.0,
                ..Default::default()
            },
            rk::Item {
                id: "bad".into(),
                title: "Broken".into(),
                price: -3.0,
                ..Default::default()
            },
        ],
    };
    let status = client
        .upsert_items(futures::stream::iter(vec![bad]))
        .await
        .unwrap_err();
    assert_invalid(&status, "batch 0, item 1");
    let r = client
        .rank(rk::RankRequest {
            k: 5,
            candidate_ids: vec!["ok-1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        r.into_inner().items.is_empty(),
        "the batch with the bad item left nothing behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_click_moves_the_next_rank_and_user_ids_stay_off_disk() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let user = "alice.distinctive@example.com";
    let before = client.rank(rank(user, "", 10)).await.unwrap().into_inner();
    // Alice looks at a phone: the phone's accessories and co-viewed items should surface.
    let recorded = purchase(&mut client, user, "p00030").await;
    assert_eq!(recorded.recorded, 1);
    let after = client.rank(rank(user, "", 10)).await.unwrap().into_inner();
    assert_ne!(
        before.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        after.items.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    assert!(
        after.items.iter().all(|i| i.id != "p00030"),
        "bought items are not recommended again"
    );
    assert!(
        after
            .items
            .iter()
            .flat_map(|i| &i.reasons)
            .any(|r| r.contains("you bought")),
        "{:#?}",
        after.items
    );
    let profile = client
        .user_profile(rk::UserProfileRequest {
            user_id: user.into(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        profile.categories.first().map(|a| a.name.as_str()),
        Some("Electronics")
    );
    let too_many = rk::UserProfileRequest {
        user_id: user.into(),
        limit: 101,
    };
    let status = client.user_profile(too_many).await.unwrap_err();
    assert_invalid(&status, "limit must be 1..=100, got 101");

    // The raw id is nowhere in the ranker's files.
    shop.ranker.stop().await.unwrap();
    let mut stack = vec![shop._dir.path().join("ranker")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(user.len()).any(|w| w == user.as_bytes()),
                    "raw user id found in {}",
                    p.display()
                );
            }
        }
    }
}

/// With the candidate pool (an HNSW graph from the first item, as a large shop has), an item
/// the graph relates to what the shopper bought is recommended and explained although no
/// other signal proposes it: p00107 complements p00100 and has no events (not popular, no
/// co-occurrence). The ranker asks the real graph service for the neighbours.
#[tokio::test(flavor = "multi_thread")]
async fn the_graph_proposes_related_items_as_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let ranker = start_ranker_ann(&dir.path().join("ranker"), &encoder, &kg.url(), 0).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let user = "bought-one-lamp";
    purchase(&mut client, user, "p00100").await;
    // Its only signal is the graph's (0.35 of 1 by default), under the tents that CF and
    // popularity carry, so a long list.
    let r = client.rank(rank(user, "", 40)).await.unwrap().into_inner();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    let related = r
        .items
        .iter()
        .find(|i| i.id == "p00107")
        .unwrap_or_else(|| panic!("p00107 missing from {:#?}", r.items));
    assert!(
        related.reasons.iter().any(|x| x.contains("goes with")),
        "{:?}",
        related.reasons
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart_and_deletes_stick() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    // With an HNSW graph from the first item: a graceful stop saves it beside the store and
    // the next start reads it (a damaged file is rebuilt instead); rankings stay the same.
    let data = dir.path().join("ranker");
    let ranker = start_ranker_ann(&data, &encoder, &kg.url(), 0).await;
    soukctl::load_catalog(
        channel(&ranker.url()).await,
        &repo_root().join("kg-data/products.csv"),
        &quiet(),
        &None,
    )
    .await
    .unwrap();
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let d = client
        .delete_items(rk::DeleteItemsRequest {
            ids: vec!["p00141".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.deleted, d.not_found), (1, 1));
    let before = boots(&ranker).await;
    let before_filtered = trailhound_hiking(&ranker).await;
    ranker.stop().await.unwrap();
    let graph = data.join("hnsw.graph");
    let saved = std::fs::read(&graph).expect("the graph is saved at a graceful stop");

    let ranker = start_ranker_ann(&data, &encoder, &kg.url(), 0).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.items, 311);
    let after = boots(&ranker).await;
    assert_eq!(before, after, "same ranking after restart");
    assert!(
        after.iter().all(|id| id != "p00141"),
        "deleted item stays deleted"
    );
    assert_eq!(
        before_filtered,
        trailhound_hiking(&ranker).await,
        "the facet index is rebuilt from the store as it was"
    );
    ranker.stop().await.unwrap();
    assert_eq!(
        std::fs::read(&graph).unwrap(),
        saved,
        "read back unchanged, so not written again"
    );

    let mut damaged = saved.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&graph, &damaged).unwrap();
    let ranker = start_ranker_ann(&data, &encoder, &kg.url(), 0).await;
    assert_eq!(
        before,
        boots(&ranker).await,
        "a damaged graph file is rebuilt, not served"
    );
    ranker.stop().await.unwrap();
    let rewritten = std::fs::read(&graph).unwrap();
    assert_ne!(
        rewritten, damaged,
        "the rebuilt graph replaces the damaged file"
    );
    assert!(
        souk_ranker_core::ann::AnnIndex::decode(&rewritten, |_, _| None).is_ok(),
        "and reads back"
    );
}

/// The ids a search for boots ranks first: the yardstick across the restarts above.
async fn boots(ranker: &Running) -> Vec<String> {
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let response = client
        .rank(rank("", "waterproof hiking boots", 5))
        .await
        .unwrap()
        .into_inner();
    ids(&response)
}

/// A search filtered to Trailhound's hiking gear under 200: every result passes (checked on
/// what the response says of each item), the deleted Trailhound boots (p00141) never come
/// back, and the ids, for comparing across restarts.
async fn trailhound_hiking(ranker: &Running) -> Vec<String> {
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let mut request = rank("", "waterproof hiking boots", 10);
    request.filters = Some(rk::Filters {
        category: "HIKING".into(),
        brands: vec!["trailhound".into()],
        max_price: Some(200.0),
        ..Default::default()
    });
    let items = client.rank(request).await.unwrap().into_inner().items;
    for item in &items {
        assert!(item.category.iter().any(|c| c == "Hiking"), "{item:?}");
        assert_eq!(item.brand, "Trailhound");
        assert!(item.price <= 200.0, "{item:?}");
    }
    // Every item of the file that passes, read independently of the service, is there.
    let want = demo_products_where(|r| {
        &r[4] == "Trailhound"
            && r[3].contains("Hiking")
            && r[5].parse::<f64>().unwrap() <= 200.0
            && &r[0] != "p00141"
    });
    let mut ids: Vec<String> = items.into_iter().map(|i| i.id).collect();
    let order = ids.clone();
    ids.sort();
    assert_eq!(ids, want, "the passing items, less the deleted p00141");
    order
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_every_service_to_a_client_that_knows_only_the_address() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let shop = demo_shop().await;
    for (url, expected) in [
        (shop.ranker.url(), "souk.ranker.v1.Ranker"),
        (shop.kg.url(), "souk.kg.v1.KnowledgeGraph"),
        (shop.encoder_url.clone(), "souk.encoder.v1.Encoder"),
    ] {
        let mut client = ServerReflectionClient::new(channel(&url).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(futures::stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&expected.to_string()), "{url}: {names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
    }
}

/// The shop's synonyms (`kg-data/synonyms.txt`, read as `soukctl synonyms load` reads it):
/// a word the texts lack finds the items of its equivalents, a brand the shop lacks is read
/// as what it sells, a bad set is refused whole with its fault named, and the set survives
/// a restart until an empty one clears it.
#[tokio::test(flavor = "multi_thread")]
async fn synonyms_find_what_the_shop_calls_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let data = dir.path().join("ranker");
    let ranker = start_ranker(&data, &encoder, &kg.url()).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let search = |q: &str| rk::RankRequest {
        query: q.into(),
        k: 5,
        ..Default::default()
    };
    // Five results, every one called a backpack (a laptop backpack too: its title holds the
    // word, where a daypack's description only says "in backpacks").
    let five_backpacks = |r: &rk::RankResponse| {
        r.items.len() == 5 && r.items.iter().all(|i| i.title.contains("Backpack"))
    };
    let categories = |r: &rk::RankResponse| {
        r.items
            .iter()
            .map(|i| i.category.last().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let before = client.rank(search("rucksack")).await.unwrap().into_inner();
    assert_eq!(before.words_matched, Some(false), "no title says rucksack");
    let before_keurig = client.rank(search("keurig")).await.unwrap().into_inner();
    assert_eq!(before_keurig.corrected_query, "");
    // By words alone, so that the model's sense of "mobile phone" does not hide them.
    let by_words = |q: &str| rk::RankRequest {
        weights: Some(rk::FusionWeights {
            bm25: 1.0,
            ..Default::default()
        }),
        ..search(q)
    };
    let phone = client
        .rank(by_words("mobile phone"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        categories(&phone)[0],
        "Phone Cases",
        "\"phone\" alone matched"
    );
    // Words the titles write together or apart find them, with no synonym set: "back pack"
    // the Backpacks, "overear" the Over-Ear headphones; the page is told.
    let r = client
        .rank(by_words("back pack"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.widened_to, ["backpack"]);
    assert_eq!(categories(&r), ["Backpacks"; 5], "{r:?}");
    let r = client
        .rank(by_words("overear headphones"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.widened_to, ["over ear"]);
    assert!(
        r.items.iter().all(|i| i.title.contains("Over-Ear")),
        "{r:?}"
    );

    let file = repo_root().join("kg-data/synonyms.txt");
    let synonyms = soukctl::files::read_synonyms(&file).unwrap().messages();
    let set = client
        .set_synonyms(rk::SetSynonymsRequest {
            synonyms: synonyms.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.synonyms as usize, synonyms.len());
    assert!(set.finding_nothing.is_empty(), "each finds items");

    let r = client.rank(search("rucksack")).await.unwrap().into_inner();
    assert_eq!(r.words_matched, Some(true));
    assert_eq!(r.widened_to, ["backpack", "knapsack"], "said, for the page");
    assert!(five_backpacks(&r), "{r:?}");
    let r = client.rank(search("keurig")).await.unwrap().into_inner();
    assert_eq!(r.corrected_query, "coffee maker");
    assert_eq!(categories(&r), ["Coffee Makers"; 5], "{r:?}");
    // A phrase of two words finds what says its one-word equivalent.
    let r = client
        .rank(by_words("mobile phone"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(categories(&r)[..2], ["Smartphones"; 2], "{r:?}");
    // Typed letter by letter: a synonym the texts lack is completed too.
    let suggested = client
        .suggest(rk::SuggestRequest {
            query: "ruck".into(),
            k: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suggested.suggestions[0].query, "rucksack", "{suggested:?}");
    for (typed, read, found) in [
        ("ruck", "rucksack", "Backpack"),
        ("keur", "coffee maker", "Coffee Makers"),
    ] {
        let typing = rk::RankRequest {
            prefix: true,
            ..search(typed)
        };
        let r = client.rank(typing).await.unwrap().into_inner();
        assert_eq!(r.corrected_query, read);
        // Backpacks by title, coffee makers by category.
        assert!(
            r.items.len() == 5
                && r.items
                    .iter()
                    .all(|i| i.title.contains(found)
                        || i.category.last().is_some_and(|c| c == found)),
            "{r:?}"
        );
    }
    // What the spelling check read otherwise is listed for the shop, by typed and read
    // query; a synonym's reading and a half-typed word completed are not.
    for q in ["cofee grindr", "Cofee  Grindr", "cofee grindr"] {
        let r = client.rank(search(q)).await.unwrap().into_inner();
        let read: Vec<&str> = r.corrected_query.split_whitespace().collect();
        assert_eq!(read, ["coffee", "grinder"], "as typed, spacing kept");
    }
    let typing = rk::RankRequest {
        prefix: true,
        ..search("desk la")
    };
    let r = client.rank(typing).await.unwrap().into_inner();
    assert_eq!(r.corrected_query, "desk lamp");
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(&str, &str, u64)> = stats
        .corrected_queries
        .iter()
        .map(|q| (q.query.as_str(), q.read_as.as_str(), q.count))
        .collect();
    assert_eq!(listed, [("cofee grindr", "coffee grinder", 3)]);
    assert_eq!(stats.synonyms as usize, synonyms.len());

    // Refused whole, fault named; the set in use stays.
    let mut bad = synonyms.clone();
    bad.push(rk::Synonym {
        phrases: vec!["Rucksacks".into(), "bag".into()],
        replacement: None,
    });
    let refused = client
        .set_synonyms(rk::SetSynonymsRequest { synonyms: bad })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains(&format!("synonym {}: \"Rucksacks\"", synonyms.len())),
        "{}",
        refused.message()
    );
    let listed = client
        .get_synonyms(rk::GetSynonymsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.synonyms, synonyms);

    ranker.stop().await.unwrap();
    let ranker = start_ranker(&data, &encoder, &kg.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let listed = client
        .get_synonyms(rk::GetSynonymsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.synonyms, synonyms, "stored");
    let r = client.rank(search("rucksack")).await.unwrap().into_inner();
    assert_eq!(r.widened_to, ["backpack", "knapsack"], "read back");
    assert!(five_backpacks(&r), "{r:?}");

    // A synonym nothing in the shop answers is taken, and named for the admin.
    let mut idle = synonyms.clone();
    idle.push(rk::Synonym {
        phrases: vec!["divan".into(), "ottoman".into()],
        replacement: None,
    });
    let set = client
        .set_synonyms(rk::SetSynonymsRequest { synonyms: idle })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.finding_nothing, [synonyms.len() as u32]);
    client
        .set_synonyms(rk::SetSynonymsRequest { synonyms: vec![] })
        .await
        .unwrap();
    let r = client.rank(search("rucksack")).await.unwrap().into_inner();
    assert_eq!(r.words_matched, Some(false), "cleared");
}

/// The shop's pinned results (`kg-data/pins.txt`, read as `soukctl pins load` reads it):
/// its items lead their search in its order and the ranking goes on without them, they still
/// pass the shopper's filters, a bad set is refused whole with its fault named, an id the
/// catalog lacks is named, and the set survives a restart until an empty one clears it.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_results_lead_their_search_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let data = dir.path().join("ranker");
    let ranker = start_ranker(&data, &encoder, &kg.url()).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    // The shop's rules set (the response), refused (with exactly `fault`, the set in use
    // kept) and as in use, through gRPC.
    let put = |client: &mut RankerClient<tonic::transport::Channel>, rules: Vec<rk::PinRule>| {
        let mut client = client.clone();
        async move {
            client
                .set_pins(rk::SetPinsRequest { rules })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let refuse = |client: &mut RankerClient<tonic::transport::Channel>,
                  rules: Vec<rk::PinRule>,
                  fault: &str| {
        let (mut client, fault) = (client.clone(), fault.to_string());
        async move {
            let status = client
                .set_pins(rk::SetPinsRequest { rules })
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), fault);
        }
    };
    let in_use = |client: &mut RankerClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .get_pins(rk::GetPinsRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let search = |q: &str| rk::RankRequest {
        query: q.into(),
        k: 8,
        explain: true,
        ..Default::default()
    };
    let ids = |r: &rk::RankResponse| r.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    let by_price_of = |client: &mut RankerClient<tonic::transport::Channel>, request| {
        let mut client = client.clone();
        async move {
            let request = rk::RankRequest {
                k: 20,
                sort: rk::Sort::PriceAscending as i32,
                ..request
            };
            client.rank(request).await.unwrap().into_inner()
        }
    };
    let organic = client
        .rank(search("sleeping bag"))
        .await
        .unwrap()
        .into_inner();
    assert!(organic.items.iter().all(|i| !i.pinned));
    assert_ne!(
        ids(&organic)[..2],
        ["p00110", "p00107"],
        "pinned by the file, not by score"
    );

    let file = repo_root().join("kg-data/pins.txt");
    let rules = soukctl::files::read_pins(&file).unwrap().messages();
    let set = put(&mut client, rules.clone()).await;
    assert_eq!((set.rules, set.missing_items.len()), (3, 0));
    let pinned = |r: &rk::RankResponse| {
        r.items
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    let shown = |client: &mut RankerClient<tonic::transport::Channel>, request| {
        let mut client = client.clone();
        async move { client.rank(request).await.unwrap().into_inner() }
    };
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(ids(&r)[..2], ["p00110", "p00107"]);
    assert_eq!(pinned(&r), ["p00110", "p00107"]);
    assert_eq!(
        r.items[0].reasons[0],
        "featured by the shop for \"sleeping bag\""
    );
    let rest: Vec<String> = ids(&organic)
        .into_iter()
        .filter(|id| id != "p00110" && id != "p00107")
        .collect();
    assert_eq!(ids(&r)[2..], rest[..6], "the ranking goes on without them");
    // The same search written otherwise.
    let plural = shown(&mut client, search("Sleeping Bags")).await;
    assert_eq!(pinned(&plural), ["p00110", "p00107"]);
    // A budget keeps the 274.10 bag out; the 85.79 one still leads.
    let cheap = shown(&mut client, search("sleeping bags under 100")).await;
    assert_eq!(pinned(&cheap), ["p00110"]);
    assert_eq!(ids(&cheap)[0], "p00110");
    assert!(cheap.items.iter().all(|i| i.price <= 100.0));
    // Another search is not pinned.
    let bag = shown(&mut client, search("down sleeping bag")).await;
    assert!(pinned(&bag).is_empty());
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.pin_rules, 3);
    // The Coffee page (the category as the filter, no search) opens on the file's picks,
    // then the page as it was; a search within Coffee, and Coffee by price, are not pinned.
    let coffee = |category: &str| rk::RankRequest {
        filters: Some(rk::Filters {
            category: category.into(),
            ..Default::default()
        }),
        ..search("")
    };
    put(&mut client, vec![]).await;
    let page = shown(
        &mut client,
        rk::RankRequest {
            k: 50,
            ..coffee("Coffee")
        },
    )
    .await;
    put(&mut client, rules.clone()).await;
    let picks = ["p00159", "p00176", "p00194"];
    let r = shown(
        &mut client,
        rk::RankRequest {
            k: 50,
            ..coffee("coffee")
        },
    )
    .await;
    assert_eq!(pinned(&r), picks);
    assert_eq!(ids(&r)[..3], picks);
    assert_eq!(r.items[0].reasons[0], "featured by the shop in Coffee");
    assert_eq!(r.banners, ["Espresso week: burr grinders up front"]);
    // Then the page as it was, burr grinders lifted by 0.1 (the file's boost).
    let organic_score = |id: &str| page.items.iter().find(|i| i.id == id).unwrap().score;
    let burr = [
        "p00170", "p00172", "p00174", "p00175", "p00178", "p00180", "p00181",
    ];
    let rest = &r.items[3..];
    assert_eq!(rest.len() + 3, page.items.len());
    for item in rest {
        let lifted = burr.contains(&item.id.as_str());
        assert_eq!(item.boost, if lifted { 0.1 } else { 0.0 }, "{}", item.id);
        assert!((item.score - organic_score(&item.id) - item.boost).abs() < 1e-4);
        if lifted {
            assert_eq!(item.reasons[0], "promoted by the shop: grind burr");
        }
    }
    assert!(rest.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(
        burr.contains(&rest[0].id.as_str()),
        "a burr grinder leads the rest: {:?}",
        ids(&r)
    );
    let searched = shown(
        &mut client,
        rk::RankRequest {
            query: "grinder".into(),
            ..coffee("Coffee")
        },
    )
    .await;
    assert!(pinned(&searched).is_empty());
    let cheapest = shown(
        &mut client,
        rk::RankRequest {
            sort: rk::Sort::PriceAscending as i32,
            ..coffee("Coffee")
        },
    )
    .await;
    assert!(pinned(&cheapest).is_empty());
    assert!(pinned(&shown(&mut client, coffee("Grinders")).await).is_empty());

    // Refused whole, fault named; the set in use stays.
    let mut bad = rules.clone();
    bad.push(rk::PinRule {
        query: "Sleeping-bags!".into(),
        items: vec!["p00105".into()],
        ..Default::default()
    });
    refuse(
        &mut client,
        bad,
        "pin rule 3: query \"Sleeping-bags!\" has a rule already (pin rule 0); the previous set stays",
    )
    .await;
    for (boost, fault) in [
        (
            rk::Boost {
                when: Some(rk::Filters {
                    brands: vec!["Santoro".into()],
                    ..Default::default()
                }),
                amount: f32::NAN,
            },
            "amount NaN; it moves a score by -1..1, not 0",
        ),
        (
            rk::Boost {
                when: None,
                amount: 0.1,
            },
            "names no condition (a category, a brand, an attribute value, in stock or a price bound)",
        ),
    ] {
        let mut bad = rules.clone();
        bad[1].boosts.push(boost);
        refuse(
            &mut client,
            bad,
            &format!("pin rule 1: boost 1: {fault}; the previous set stays"),
        )
        .await;
    }
    let listed = in_use(&mut client).await;
    assert_eq!(listed.rules, rules);
    // The rankings each rule applied to since this set was made: the Coffee page and
    // Coffee by price (not pinned, but the rule's hidden items would be left out), not a
    // search within Coffee or the Grinders page; no "sleeping bag" search since.
    assert_eq!(listed.applied, [0, 2, 0]);

    ranker.stop().await.unwrap();
    let ranker = start_ranker(&data, &encoder, &kg.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let listed = in_use(&mut client).await;
    assert_eq!(listed.rules, rules, "stored");
    assert_eq!(listed.applied, [0, 0, 0], "counted from each start");
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(pinned(&r), ["p00110", "p00107"], "read back");
    let r = shown(&mut client, coffee("Coffee")).await;
    assert_eq!(pinned(&r), picks, "read back");

    // An id the catalog lacks is taken, and named for the admin; the rule shows the rest.
    // The search's first result by score hidden: gone from it, by relevance and by price.
    let first = ids(&organic)[0].clone();
    let set = put(
        &mut client,
        vec![rk::PinRule {
            query: "sleeping bag".into(),
            items: vec!["p99999".into(), "p00107".into()],
            hidden: vec![first.clone()],
            ..Default::default()
        }],
    )
    .await;

    assert_eq!(set.missing_items, ["p99999"]);
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(pinned(&r), ["p00107"]);
    assert!(!ids(&r).contains(&first), "{first} hidden: {:?}", ids(&r));
    let by_price = shown(
        &mut client,
        rk::RankRequest {
            k: 20,
            sort: rk::Sort::PriceAscending as i32,
            ..search("sleeping bag")
        },
    )
    .await;
    assert!(by_price.items.len() > 5);
    assert!(!ids(&by_price).contains(&first), "hidden by price too");

    // The rule for every ranking: the search's second result hidden from every list, and
    // one maker's items a little ahead wherever they are ranked, beside the search's own
    // rule (which still pins).
    let (second, maker) = (
        ids(&organic)[1].clone(),
        organic.items[organic.items.len() - 1].brand.clone(),
    );
    let everywhere = rk::PinRule {
        hidden: vec![second.clone()],
        boosts: vec![rk::Boost {
            when: Some(rk::Filters {
                brands: vec![maker.clone()],
                ..Default::default()
            }),
            amount: 0.3,
        }],
        everywhere: true,
        ..Default::default()
    };
    let rules = vec![
        rk::PinRule {
            query: "sleeping bag".into(),
            items: vec!["p00107".into()],
            ..Default::default()
        },
        everywhere.clone(),
    ];
    put(&mut client, rules.clone()).await;
    let page_of = |item: &str| rk::RankRequest {
        item_id: item.into(),
        k: 20,
        ..search("")
    };
    let similar = shown(&mut client, page_of("p00110")).await;
    for (what, r) in [
        ("search", shown(&mut client, search("sleeping bag")).await),
        ("item page", similar.clone()),
        (
            "by price",
            by_price_of(&mut client, search("sleeping bag")).await,
        ),
    ] {
        assert!(
            !ids(&r).contains(&second),
            "{what}: {second} hidden: {:?}",
            ids(&r)
        );
        let lifted: Vec<&rk::RankedItem> = r.items.iter().filter(|i| i.brand == maker).collect();
        if what == "by price" {
            assert!(
                lifted.iter().all(|i| i.boost == 0.0),
                "a price order is not moved"
            );
            continue;
        }
        assert!(
            !lifted.is_empty(),
            "{what}: no {maker} item in {:?}",
            ids(&r)
        );
        for item in lifted.iter().filter(|i| !i.pinned) {
            assert_eq!(item.boost, 0.3, "{what}: {}", item.id);
            assert_eq!(
                item.reasons[0],
                format!("promoted by the shop: brand {maker}")
            );
        }
        assert!(
            r.items
                .iter()
                .filter(|i| i.brand != maker)
                .all(|i| i.boost == 0.0),
            "{what}"
        );
    }
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(pinned(&r), ["p00107"], "the search's rule still pins");
    let listed = in_use(&mut client).await;
    assert_eq!(listed.rules, rules);
    refuse(
        &mut client,
        vec![everywhere.clone(), everywhere],
        "pin rule 1: every ranking has a rule already (pin rule 0); the previous set stays",
    )
    .await;

    // Scheduled rules, read at the server's clock: the one in force now replaces the
    // standing rule; one that ended, or is yet to start, does not.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    let bag = |item: &str, starts_ms: Option<i64>, ends_ms: Option<i64>| rk::PinRule {
        query: "sleeping bag".into(),
        items: vec![item.into()],
        starts_ms,
        ends_ms,
        ..Default::default()
    };
    let scheduled = vec![
        bag("p00107", None, None),
        bag("p00110", Some(now_ms - hour), Some(now_ms + hour)),
        bag(&first, None, Some(now_ms - hour)),
        bag(&second, Some(now_ms + hour), None),
    ];
    put(&mut client, scheduled.clone()).await;
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(pinned(&r), ["p00110"], "the rule in force now");
    // A preview at another time: the rule in force then.
    let at = |ms: i64| rk::RankRequest {
        rules_at_ms: Some(ms),
        ..search("sleeping bag")
    };
    assert_eq!(
        pinned(&shown(&mut client, at(now_ms + 2 * hour)).await),
        std::slice::from_ref(&second)
    );
    assert_eq!(
        pinned(&shown(&mut client, at(now_ms - 2 * hour)).await),
        std::slice::from_ref(&first)
    );
    let status = client.rank(at(-1)).await.unwrap_err();
    assert_invalid(&status, "rules_at_ms -1 is not a time from 1970 to 9999");
    // Previews are not counted as the rules' rankings; the shopper's search above is
    // (the scheduled rule in force now).
    let applied = in_use(&mut client).await.applied;
    assert_eq!(applied, [0, 1, 0, 0]);
    let listed = in_use(&mut client).await;
    assert_eq!(listed.rules, scheduled);
    put(
        &mut client,
        vec![scheduled[0].clone(), scheduled[2].clone()],
    )
    .await;
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(
        pinned(&r),
        ["p00107"],
        "the standing rule, the other one ended"
    );
    let mut overlapping = scheduled[1].clone();
    overlapping.items = vec!["p00105".into()];
    refuse(
        &mut client,
        vec![scheduled[1].clone(), overlapping],
        "pin rule 1: query \"sleeping bag\" has a scheduled rule already for part of that time (pin rule 0); the previous set stays",
    )
    .await;

    // A rule for every search containing "bag": the organic third result hidden from
    // "sleeping bag" and from "bags under 100" alike, kept in a search without the word.
    let third = ids(&organic)[2].clone();
    let bags = vec![rk::PinRule {
        query: "Bags".into(),
        contains: true,
        hidden: vec![third.clone()],
        ..Default::default()
    }];
    put(&mut client, bags.clone()).await;
    for q in ["sleeping bag", "down sleeping bags"] {
        let r = shown(&mut client, search(q)).await;
        assert!(
            !ids(&r).contains(&third),
            "{q}: {third} hidden: {:?}",
            ids(&r)
        );
    }
    let r = shown(&mut client, search("sleeping")).await;
    assert!(ids(&r).contains(&third), "no \"bag\" here: {:?}", ids(&r));
    assert_eq!(in_use(&mut client).await.rules, bags);

    // A search sent to another page: the address comes back with the results, which are
    // ranked as without the rule; another search is not sent; a bad address is refused.
    let sent = vec![rk::PinRule {
        query: "Sleeping Bags".into(),
        redirect: "/guides/sleeping-bags".into(),
        ..Default::default()
    }];
    put(&mut client, sent.clone()).await;
    let r = shown(&mut client, search("sleeping bag")).await;
    assert_eq!(r.redirect, "/guides/sleeping-bags");
    assert_eq!(ids(&r), ids(&organic), "ranked as without the rule");
    assert_eq!(
        by_price_of(&mut client, search("sleeping bag"))
            .await
            .redirect,
        "/guides/sleeping-bags"
    );
    assert_eq!(shown(&mut client, search("sleeping")).await.redirect, "");
    refuse(
        &mut client,
        vec![rk::PinRule {
            redirect: "guides/sleeping-bags".into(),
            ..sent[0].clone()
        }],
        "pin rule 0: redirect \"guides/sleeping-bags\": expected a path on the shop's site (/help/returns) or an http(s) URL; the previous set stays",
    )
    .await;
    assert_eq!(in_use(&mut client).await.rules, sent);
    put(&mut client, vec![]).await;
    let r = shown(&mut client, search("sleeping bag")).await;
    assert!(pinned(&r).is_empty(), "cleared");
    assert_eq!(ids(&r), ids(&organic));
}

/// A shop streaming one event per message: the ranker stores the messages that arrived
/// together in one write, and still stores exactly those before a bad message, none after,
/// naming the bad event as its own message numbers it; a large message among them is
/// stored whole, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_single_events_is_stored_whole_up_to_a_bad_one() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let interactions = async |client: &mut RankerClient<tonic::transport::Channel>| {
        client
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .interactions
    };
    let before = interactions(&mut client).await;
    let one = |user: String| rk::RecordInteractionsRequest {
        interactions: vec![rk::Interaction {
            user_id: user,
            item_id: "p00030".into(),
            kind: rk::InteractionKind::View as i32,
            value: 1.0,
            timestamp_ms: 0,
        }],
    };
    let mut messages: Vec<_> = (0..300).map(|i| one(format!("streamer{i}"))).collect();
    messages.push(one(String::new()));
    messages.extend((0..50).map(|i| one(format!("late{i}"))));
    let status = client
        .record_interactions(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_invalid(&status, "interactions[0]: user_id is empty");
    assert_eq!(interactions(&mut client).await, before + 300);
    // A message larger than what is gathered goes alone, between single events.
    let mut messages: Vec<_> = (0..500).map(|i| one(format!("whole{i}"))).collect();
    let large = (0..1500).flat_map(|i| one(format!("bulk{i}")).interactions);
    messages.push(rk::RecordInteractionsRequest {
        interactions: large.collect(),
    });
    messages.extend((0..10).map(|i| one(format!("after{i}"))));
    let whole = client
        .record_interactions(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.recorded, 2010);
    assert_eq!(interactions(&mut client).await, before + 2310);
    // Microseconds sent for milliseconds: years ahead, refused, nothing stored (popularity
    // fades as of the latest event: one such event would fade all the others).
    let mut future = one("clockless".into());
    future.interactions[0].timestamp_ms = 1_788_238_930_000_000;
    let status = client
        .record_interactions(futures::stream::iter(vec![future.clone()]))
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "interactions[0]: timestamp_ms 1788238930000000 is not",
    );
    // Seconds sent for milliseconds: January 1970, refused the same way (the event would
    // count for nothing once popularity fades).
    let mut past = future;
    past.interactions[0].timestamp_ms = 1_788_238_930;
    let status = client
        .record_interactions(futures::stream::iter(vec![past]))
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "interactions[0]: timestamp_ms 1788238930 would be in 1970-1973: Unix seconds?",
    );
    assert_eq!(interactions(&mut client).await, before + 2310);
}

/// An update and a delete of one item sent at once, many times over: whichever runs first,
/// the item ends deleted (an update of a deleted item finds nothing; a delete after an
/// update removes it), never brought back by an update that read it before the delete.
#[tokio::test(flavor = "multi_thread")]
async fn an_update_never_brings_back_an_item_deleted_meanwhile() {
    let shop = demo_shop().await;
    let client = RankerClient::new(channel(&shop.ranker.url()).await);
    let item = rk::Item {
        id: "p-race".into(),
        title: "Racing Stripe Water Bottle".into(),
        price: 10.0,
        in_stock: true,
        ..Default::default()
    };
    for round in 0..40 {
        let mut c = client.clone();
        c.upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items: vec![item.clone()],
        }]))
        .await
        .unwrap();
        let (mut updater, mut deleter) = (client.clone(), client.clone());
        let update = tokio::spawn(async move {
            updater
                .update_items(futures::stream::iter(vec![rk::UpdateItemsRequest {
                    updates: vec![rk::ItemUpdate {
                        id: "p-race".into(),
                        price: Some(round as f64 + 1.0),
                        ..Default::default()
                    }],
                }]))
                .await
                .unwrap()
                .into_inner()
        });
        let delete = tokio::spawn(async move {
            deleter
                .delete_items(rk::DeleteItemsRequest {
                    ids: vec!["p-race".into()],
                })
                .await
                .unwrap()
                .into_inner()
        });
        let (updated, deleted) = (update.await.unwrap(), delete.await.unwrap());
        assert_eq!(deleted.deleted, 1, "round {round}");
        assert_eq!(updated.updated + updated.unknown, 1, "round {round}");
        let left = c
            .rank(rk::RankRequest {
                candidate_ids: vec!["p-race".into()],
                k: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            left.items.is_empty(),
            "round {round}: the deleted item is back ({updated:?})"
        );
    }
}

/// A full feed loaded with `--delete-missing` removes the items it no longer lists, and only
/// those; a cut-off file (most of the catalog missing) or one with a bad line deletes
/// nothing unless told. `ListItemIds` pages through the catalog's ids in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_feed_deletes_the_items_it_no_longer_lists() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let catalog = std::fs::read_to_string(repo_root().join("kg-data/products.csv")).unwrap();
    let gone = ["p00010,", "p00020,", "p00030,"];
    let feed = shop._dir.path().join("feed.csv");
    let kept: Vec<&str> = catalog
        .lines()
        .filter(|line| !gone.iter().any(|g| line.starts_with(g)))
        .collect();
    std::fs::write(&feed, kept.join("\n")).unwrap();
    let (deleted, held) =
        soukctl::delete_missing(channel(&shop.ranker.url()).await, &feed, &None, false)
            .await
            .unwrap();
    assert_eq!((deleted, held), (3, 312));

    // Every id, in pages of 100, in byte order, each once; the three are gone.
    let mut ids: Vec<String> = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_item_ids(rk::ListItemIdsRequest {
                after: after.clone(),
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.ids.len() <= 100);
        ids.extend(page.ids.iter().cloned());
        match page.ids.last() {
            Some(last) if page.more => after = last.clone(),
            _ => break,
        }
    }
    assert_eq!(ids.len(), 309);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered, no repeats");
    assert!(!ids.contains(&"p00020".to_string()));
    let status = client
        .list_item_ids(rk::ListItemIdsRequest {
            after: String::new(),
            limit: 10_001,
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "limit must be 1..=10000, got 10001");

    // A file cut off after 100 rows: refused, nothing deleted; then allowed.
    let cut = shop._dir.path().join("cut.csv");
    std::fs::write(&cut, kept[..101].join("\n")).unwrap();
    let error = soukctl::delete_missing(channel(&shop.ranker.url()).await, &cut, &None, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("leaves out 209 of the catalog's 309 items, more than 20%: nothing deleted"),
        "{error}"
    );
    // A bad line: the file may not list every item, so nothing is deleted.
    let bad = shop._dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{}\np09999,,1,,,,,\n", kept[..101].join("\n")),
    )
    .unwrap();
    let error = soukctl::delete_missing(channel(&shop.ranker.url()).await, &bad, &None, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bad.csv:102: item \"p09999\": title is empty"),
        "{error}"
    );
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.items, 309);
    let (deleted, _) =
        soukctl::delete_missing(channel(&shop.ranker.url()).await, &cut, &None, true)
            .await
            .unwrap();
    assert_eq!(deleted, 209);
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.items, 100);
}

/// `SyncGraph` sets the graph's brand, category and attribute edges of every catalog item to
/// what the catalog holds, a page of 256 items at a time: a stale brand loaded by hand goes,
/// a lost category and colour come back (with the category chain), edges of other relations
/// and a deleted item's facts stay; a dry run counts the same and changes nothing; a second
/// run finds nothing; an item with more edges than a read takes is set right by runs again;
/// with the graph stopped it answers UNAVAILABLE.
#[tokio::test(flavor = "multi_thread")]
async fn sync_graph_sets_the_items_facts_to_the_catalogs() {
    use souk_proto::kg::v1 as kg;
    let shop = demo_shop().await;
    let kg_url = shop.kg.url();
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let sync = async |client: &mut RankerClient<tonic::transport::Channel>, dry_run: bool| {
        client
            .sync_graph(rk::SyncGraphRequest { dry_run })
            .await
            .map(tonic::Response::into_inner)
    };
    let in_step = sync(&mut client, false).await.unwrap();
    assert_eq!(
        (in_step.items, in_step.differing, in_step.partly_read),
        (312, 0, 0),
        "the demo's graph states what its catalog holds: {in_step:?}"
    );

    // Deleted from the catalog: its facts stay in the graph, for histories.
    client
        .delete_items(rk::DeleteItemsRequest {
            ids: vec!["p00005".into()],
        })
        .await
        .unwrap();
    // Drift made in the graph by hand.
    let triple = |h: &str, r: &str, t: &str| kg::Triple {
        head: h.into(),
        relation: r.into(),
        tail: t.into(),
    };
    let mut graph = kg::knowledge_graph_client::KnowledgeGraphClient::new(channel(&kg_url).await);
    let drift = kg::LoadTriplesRequest {
        triples: vec![
            triple("item:p00001", "brand", "brand:Auralis"),
            triple("item:p00001", "accessory_of", "item:p00002"),
            triple("item:p00005", "brand", "brand:Auralis"),
        ],
        remove: vec![
            triple(
                "item:p00002",
                "category",
                "category:Electronics/Audio/Headphones",
            ),
            triple("item:p00002", "attribute", "attr:color=black"),
        ],
        remove_entities: vec![],
    };
    graph
        .load_triples(futures::stream::iter(vec![drift]))
        .await
        .unwrap();
    let stated = async |entity: &str| {
        let mut edges = Vec::new();
        for relation in ["brand", "category", "attribute", "accessory_of"] {
            for tail in out_edges(&kg_url, entity, relation).await {
                edges.push(format!("{relation} {tail}"));
            }
        }
        edges
    };
    let drifted = (stated("item:p00001").await, stated("item:p00002").await);

    let counted = sync(&mut client, true).await.unwrap();
    let want = rk::SyncGraphResponse {
        items: 311,
        differing: 2,
        differing_ids: vec!["p00001".into(), "p00002".into()],
        stale_facts: 1,
        missing_facts: 2,
        partly_read: 0,
        queued_batches: 0,
    };
    assert_eq!(counted, want);
    assert_eq!(
        (stated("item:p00001").await, stated("item:p00002").await),
        drifted,
        "a dry run changes nothing"
    );

    assert_eq!(sync(&mut client, false).await.unwrap(), want);
    assert_eq!(
        stated("item:p00001").await,
        [
            "brand brand:Pixelon",
            "category category:Electronics/Audio/Headphones",
            "attribute attr:color=navy",
            "attribute attr:connectivity=bluetooth",
            "accessory_of item:p00002",
        ]
    );
    assert_eq!(
        stated("item:p00002").await,
        [
            "brand brand:Auralis",
            "category category:Electronics/Audio/Headphones",
            "attribute attr:color=black",
            "attribute attr:connectivity=bluetooth",
        ]
    );
    assert_eq!(
        out_edges(&kg_url, "item:p00005", "brand").await,
        ["brand:Auralis", "brand:Nimbus"],
        "a deleted item is not the catalog's to set right"
    );
    let again = sync(&mut client, false).await.unwrap();
    assert_eq!((again.items, again.differing), (311, 0));

    // Over 1,000 colours on one item: read 1,000 at a time, so a run sets right what it read
    // and says the item was read in part; runs again end in step.
    let colours = (0..1_200)
        .map(|i| triple("item:p00003", "attribute", &format!("attr:color=c{i}")))
        .collect();
    graph
        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
            triples: colours,
            ..Default::default()
        }]))
        .await
        .unwrap();
    let first = sync(&mut client, false).await.unwrap();
    assert_eq!(
        (first.differing_ids, first.partly_read),
        (vec!["p00003".to_string()], 1)
    );
    assert!(first.stale_facts >= 998, "{}", first.stale_facts);
    let mut runs = 1;
    while sync(&mut client, false).await.unwrap().differing > 0 {
        runs += 1;
        assert!(runs < 4, "not in step after {runs} runs");
    }
    assert_eq!(
        out_edges(&kg_url, "item:p00003", "attribute").await,
        ["attr:color=black", "attr:connectivity=bluetooth"]
    );

    shop.kg.stop().await.unwrap();
    let status = sync(&mut client, true).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("the knowledge graph did not answer"),
        "{status:?}"
    );
}

/// A graph that refuses the ranker's batches (its admin token is not the ranker's): loads are
/// stored all the same (the graph is told nothing), a dry run of `SyncGraph` finds every item
/// missing from the graph, and the sync itself answers FAILED_PRECONDITION saying the graph
/// refused, instead of reporting facts added.
#[tokio::test(flavor = "multi_thread")]
async fn sync_graph_says_when_the_graph_refuses_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), Some("graph-token")).await;
    let ranker = start_ranker_serving(
        &dir.path().join("ranker"),
        &encoder,
        &kg.url(),
        server_args(Some("shop-token")),
    )
    .await;
    let authed = |message| {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", "Bearer shop-token".parse().unwrap());
        request
    };
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let items = (1..=3)
        .map(|i| rk::Item {
            id: format!("t{i}"),
            title: "trail tent".into(),
            brand: "Acme".into(),
            category: vec!["Outdoor".into()],
            price: 10.0,
            in_stock: true,
            ..Default::default()
        })
        .collect();
    let mut upsert = tonic::Request::new(futures::stream::iter(vec![rk::UpsertItemsRequest {
        items,
    }]));
    upsert
        .metadata_mut()
        .insert("authorization", "Bearer shop-token".parse().unwrap());
    let loaded = client.upsert_items(upsert).await.unwrap().into_inner();
    assert_eq!((loaded.upserted, loaded.graph_synced), (3, 0));

    let counted = client
        .sync_graph(authed(rk::SyncGraphRequest { dry_run: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counted.differing, counted.missing_facts), (3, 6));
    let status = client
        .sync_graph(authed(rk::SyncGraphRequest { dry_run: false }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("the knowledge graph refused a batch of item facts"),
        "{status:?}"
    );
    let after = client
        .sync_graph(authed(rk::SyncGraphRequest { dry_run: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.missing_facts, 6, "the graph took nothing");
}

/// A model that embeds searches and products with different prompts (e5's "query: " and
/// "passage: ", on the tiny XLM-RoBERTa of `services/encoder/candle/tests/data`): the ranker
/// asks for products as documents and for searches as queries, so a search's dense signal is
/// the cosine of the two prompted vectors, not of the bare texts'.
#[tokio::test(flavor = "multi_thread")]
async fn searches_and_products_are_embedded_with_the_models_prompts() {
    use souk_proto::encoder::v1 as enc;
    use souk_proto::encoder::v1::encoder_client::EncoderClient;
    let tiny = repo_root().join("services/encoder/candle/tests/data/tiny-xlm-roberta");
    let encoder = start_encoder(encoder_args(tiny)).await;
    wait_serving(&encoder.url()).await;
    let (kg, _kg_dir) = demo_graph().await;
    let dir = tempfile::tempdir().unwrap();
    let ranker = start_ranker(dir.path(), &encoder.url(), &kg.url()).await;
    wait_serving(&ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let titles = [
        "lightweight hiking boots",
        "espresso machine",
        "rechargeable desk lamp",
        "organic coffee beans",
    ];
    let items = titles
        .iter()
        .enumerate()
        .map(|(i, title)| rk::Item {
            id: format!("t{i}"),
            title: (*title).into(),
            category: vec!["Things".into()],
            price: 10.0,
            in_stock: true,
            ..Default::default()
        })
        .collect();
    client
        .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items,
        }]))
        .await
        .unwrap();
    let query = "boots for hiking";
    let ranked = client
        .rank(rk::RankRequest {
            query: query.into(),
            k: 4,
            all_signals: true,
            verbatim: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ranked.items.len(), 4, "{:?}", ranked.missing_signals);

    let mut encoder_client = EncoderClient::new(channel(&encoder.url()).await);
    let mut vectors = async |texts: Vec<String>, kind: enc::TextKind| -> Vec<Vec<f32>> {
        encoder_client
            .embed(enc::EmbedRequest {
                texts,
                kind: kind.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .embeddings
            .into_iter()
            .map(|e| e.values)
            .collect()
    };
    let titles: Vec<String> = titles.iter().map(|t| (*t).to_string()).collect();
    let as_query = vectors(vec![query.into()], enc::TextKind::Query).await;
    let as_documents = vectors(titles.clone(), enc::TextKind::Document).await;
    let bare_query = vectors(vec![query.into()], enc::TextKind::Unspecified).await;
    let bare_titles = vectors(titles, enc::TextKind::Unspecified).await;
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut apart = 0.0f32;
    for item in &ranked.items {
        let i: usize = item.id[1..].parse().unwrap();
        let dense = item
            .contributions
            .iter()
            .find(|c| c.signal == "dense")
            .map(|c| c.value)
            .unwrap();
        let want = dot(&as_query[0], &as_documents[i]).max(0.0);
        // The catalog keeps f16 vectors: a few thousandths at most.
        assert!(
            (dense - want).abs() < 2e-3,
            "{}: dense {dense}, the prompted vectors' cosine {want}",
            item.id
        );
        apart = apart.max((want - dot(&bare_query[0], &bare_titles[i]).max(0.0)).abs());
    }
    assert!(
        apart > 0.02,
        "the prompts must move the cosine for this check to mean anything ({apart})"
    );
    // `soukctl stats` says which prompts the encoder's model has.
    let report = soukctl::stats::report(&soukctl::Endpoints {
        ranker: ranker.url(),
        kg: kg.url(),
        encoder: encoder.url(),
        token: None,
        timeout_s: soukctl::DEFAULT_TIMEOUT_S,
    })
    .await;
    assert!(
        report
            .text
            .contains(r#"encoder: prompts passage "passage: ", query "query: ""#),
        "{}",
        report.text
    );
}
