//! Rank keeps answering when a dependency dies, and says which signal it lost.
use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;

use clap::Parser;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn rank_degrades_when_the_encoder_or_the_graph_dies() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let (ranker, metrics_port) =
        start_ranker_metrics(&dir.path().join("ranker"), &encoder.url(), &kg.url()).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let search = |q: &str| rk::RankRequest {
        query: q.into(),
        k: 5,
        explain: true,
        ..Default::default()
    };
    let healthy = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    assert!(healthy.missing_signals.is_empty());
    assert_eq!(healthy.words_matched, Some(true));

    encoder.stop().await.unwrap();
    // A query never seen before, so no cached vector can hide the outage.
    let r = client
        .rank(search("cast iron skillet"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_signals, vec!["dense"]);
    assert!(
        r.items[0].title.contains("Cast Iron Skillet"),
        "BM25 still finds it: {}",
        r.items[0].title
    );

    let user = rk::RankRequest {
        user_id: "u010".into(),
        k: 5,
        explain: true,
        ..Default::default()
    };
    let with_graph = client.rank(user.clone()).await.unwrap().into_inner();
    assert!(with_graph.missing_signals.is_empty());
    assert_eq!(with_graph.words_matched, None, "no query, no words");
    kg.stop().await.unwrap();
    let started = std::time::Instant::now();
    let r = client.rank(user).await.unwrap().into_inner();
    assert_eq!(r.missing_signals, vec!["kg"]);
    assert_eq!(r.items.len(), 5, "CF and popularity still rank");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "within the dependency deadline"
    );
    // Each lost signal is counted for the operator, beside how the first pass looked and the
    // catalog's size (the demo shop is under the graph's threshold: every Rank scanned).
    let scrape = scrape_metrics(metrics_port).await;
    let value = |series: &str| metric_value(&scrape, series);
    assert_eq!(
        value("souk_rank_missing_signals_total{signal=\"dense\"}"),
        1.0
    );
    assert_eq!(value("souk_rank_missing_signals_total{signal=\"kg\"}"), 1.0);
    assert_eq!(value("souk_rank_first_pass_total{pass=\"scan\"}"), 4.0);
    assert_eq!(
        value("souk_rank_first_pass_total{pass=\"pool_then_scan\"}"),
        0.0
    );
    assert_eq!(value("souk_rank_candidates_count"), 4.0);
    assert_eq!(value("souk_catalog_items"), 312.0);
    assert_eq!(value("souk_catalog_users"), 100.0);
    // What became of the events sent: the demo's file, each recorded once.
    assert_eq!(value("souk_events_total{outcome=\"recorded\"}"), 3242.0);
    assert_eq!(value("souk_events_total{outcome=\"duplicate\"}"), 0.0);

    // Searches whose words no item holds are counted, and listed for the shop by query.
    for q in ["Blendtec", "blendtec", "kobo ereader"] {
        let r = client.rank(search(q)).await.unwrap().into_inner();
        assert_eq!(r.words_matched, Some(false), "{q}");
    }
    // The file sent again: every event counted as a duplicate, none recorded.
    soukctl::load_events(
        channel(&ranker.url()).await,
        &repo_root().join("kg-data/events.csv"),
        &quiet(),
        &None,
    )
    .await
    .unwrap();
    let scrape = scrape_metrics(metrics_port).await;
    let value = |series: &str| metric_value(&scrape, series);
    assert_eq!(value("souk_events_total{outcome=\"recorded\"}"), 3242.0);
    assert_eq!(value("souk_events_total{outcome=\"duplicate\"}"), 3242.0);
    assert_eq!(value("souk_rank_searches_total{words=\"none\"}"), 3.0);
    assert_eq!(value("souk_rank_searches_total{words=\"matched\"}"), 2.0);
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(&str, u64, u64)> = stats
        .unmatched_queries
        .iter()
        .map(|q| (q.query.as_str(), q.count, q.over_by))
        .collect();
    assert_eq!(listed, [("blendtec", 2, 0), ("kobo ereader", 1, 0)]);

    // Answers the shop's rules changed, by effect: none yet; then the demo's rules pin the
    // "sleeping bag" search, pin and lift on the Coffee page and send "returns" to the
    // shop's returns page.
    let shop_rules = async |effect: &str| {
        metric_value(
            &scrape_metrics(metrics_port).await,
            &format!("souk_rank_shop_rules_total{{effect=\"{effect}\"}}"),
        )
    };
    assert_eq!(shop_rules("pinned").await, 0.0);
    let rules = soukctl::files::read_pins(&repo_root().join("kg-data/pins.txt"))
        .unwrap()
        .messages();
    client.set_pins(rk::SetPinsRequest { rules }).await.unwrap();
    client.rank(search("sleeping bag")).await.unwrap();
    let coffee = rk::RankRequest {
        filters: Some(rk::Filters {
            category: "Coffee".into(),
            ..Default::default()
        }),
        k: 20,
        ..Default::default()
    };
    let page = client.rank(coffee).await.unwrap().into_inner();
    assert!(page.items.iter().any(|i| i.boost > 0.0));
    assert_eq!(page.banners, ["Espresso week: burr grinders up front"]);
    client.rank(search("kobo ereader")).await.unwrap();
    let returns = client.rank(search("returns")).await.unwrap().into_inner();
    assert_eq!(returns.redirect, "/help/returns");
    assert_eq!(shop_rules("pinned").await, 2.0);
    assert_eq!(shop_rules("promoted").await, 1.0);
    assert_eq!(shop_rules("lowered").await, 0.0);
    assert_eq!(shop_rules("redirected").await, 1.0);
    assert_eq!(shop_rules("banner").await, 1.0, "the Coffee page's");
}

/// Stops `encoder` and starts one serving `model` on its address (what a rollout of another
/// model looks like to the ranker), serving when returned.
async fn swap_encoder(encoder: Running, model: std::path::PathBuf) -> Running {
    let addr = encoder.addr;
    encoder.stop().await.unwrap();
    let swapped = start_encoder_at(addr, encoder_args(model)).await;
    wait_serving(&swapped.url()).await;
    swapped
}

/// The encoder restarted with another model: its query vectors are not comparable with the
/// catalog's, so the ranker stops embedding queries (dense reported missing, words still
/// rank), refuses loads that would mix the two models' vectors, and `Reembed` moves the
/// whole catalog to the new model, which a restart keeps.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_encoder_model_is_caught_and_the_catalog_re_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let other_model = five_layer_model(dir.path());
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let ranker_dir = dir.path().join("ranker");
    let (ranker, metrics_port) = start_ranker_metrics(&ranker_dir, &encoder.url(), &kg.url()).await;
    let differs_gauge = async || {
        metric_value(
            &scrape_metrics(metrics_port).await,
            "souk_encoder_model_differs",
        )
    };
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let state = async |client: &mut RankerClient<_>, want: &str| {
        // The ranker checks every 200 ms in tests (30 s by default).
        for _ in 0..200 {
            let stats = client
                .stats(rk::StatsRequest {})
                .await
                .unwrap()
                .into_inner();
            if stats.encoder == want {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("Stats.encoder never said {want:?}");
    };
    state(&mut client, "matches").await;
    let search = |q: &str| rk::RankRequest {
        query: q.into(),
        k: 5,
        explain: true,
        ..Default::default()
    };
    let before = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    assert!(before.missing_signals.is_empty());

    let other = swap_encoder(encoder, other_model.clone()).await;
    state(&mut client, "differs").await;
    assert_eq!(differs_gauge().await, 1.0, "the operator's alert");
    let r = client
        .rank(search("cast iron skillet"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.missing_signals,
        ["dense"],
        "vectors of two models are not compared"
    );
    assert!(
        r.items[0].title.contains("Cast Iron Skillet"),
        "{}",
        r.items[0].title
    );
    // A load would store the new model's vectors beside the old one's: refused, nothing kept.
    let item = rk::Item {
        id: "new-1".into(),
        title: "Moka Pot".into(),
        category: vec!["Kitchen".into()],
        price: 30.0,
        in_stock: true,
        ..Default::default()
    };
    let refused = client
        .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items: vec![item.clone()],
        }]))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("soukctl reembed"),
        "{}",
        refused.message()
    );
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.items, 312);

    let done = client
        .reembed(rk::ReembedRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.items, done.dimension), (312, 384));
    assert_eq!(state(&mut client, "matches").await.items, 312);
    assert_eq!(differs_gauge().await, 0.0);
    let after = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    assert!(after.missing_signals.is_empty());
    assert!(
        after.items[0].title.contains("Espresso"),
        "{}",
        after.items[0].title
    );
    client
        .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items: vec![item],
        }]))
        .await
        .unwrap();

    // The new vectors and the new model's probe are stored: a restarted ranker agrees with
    // the new model and ranks as before its restart, and the old model now differs.
    ranker.stop().await.unwrap();
    let ranker = start_ranker(&ranker_dir, &other.url(), &kg.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    assert_eq!(state(&mut client, "matches").await.items, 313);
    let again = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    let ids = |r: &rk::RankResponse| r.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&after));
    let _first = swap_encoder(other, model_dir()).await;
    state(&mut client, "differs").await;

    // An emptied catalog has no vectors to compare: the next load is taken, and its model
    // becomes the catalog's.
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let mut every: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    every.push("new-1".into());
    let deleted = client
        .delete_items(rk::DeleteItemsRequest { ids: every })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 313);
    state(&mut client, "unknown").await;
    client
        .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items: vec![rk::Item {
                id: "again-1".into(),
                title: "Espresso Machine".into(),
                price: 200.0,
                in_stock: true,
                ..Default::default()
            }],
        }]))
        .await
        .unwrap();
    assert_eq!(state(&mut client, "matches").await.items, 1);
}

/// The encoder replaced between two of the ranker's periodic checks (an hour apart here):
/// every answer names the model that made it, so no query vector of the new model is
/// compared with the catalog's, and the first such answer has the model checked at once.
/// Back on the catalog's model, dense relevance returns with its first answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_model_is_caught_at_its_first_answer() {
    use souk_proto::encoder::v1::{InfoRequest, encoder_client::EncoderClient};
    let dir = tempfile::tempdir().unwrap();
    let other_model = five_layer_model(dir.path());
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let fingerprint = async |url: &str| {
        let mut client = EncoderClient::new(channel(url).await);
        let info = client.info(InfoRequest {}).await.unwrap().into_inner();
        assert_ne!(info.model_fingerprint, 0, "the encoder names its model");
        info.model_fingerprint
    };
    let first_model = fingerprint(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let hourly = ModelWatch {
        every_ms: 3_600_000,
        reembed: false,
        ..WATCH
    };
    let ranker = start_ranker_watching(
        &dir.path().join("ranker"),
        &encoder.url(),
        &kg.url(),
        hourly,
    )
    .await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let encoder_state = async |client: &mut RankerClient<_>| {
        let stats = client.stats(rk::StatsRequest {}).await.unwrap();
        stats.into_inner().encoder
    };
    assert_eq!(encoder_state(&mut client).await, "matches");
    // Each search a query never asked before, so that no cached vector answers it.
    let mut asked = 0;
    let mut search = async |client: &mut RankerClient<_>| {
        asked += 1;
        let request = rk::RankRequest {
            query: format!("cast iron skillet {asked}"),
            k: 5,
            ..Default::default()
        };
        client.rank(request).await.unwrap().into_inner()
    };
    assert!(search(&mut client).await.missing_signals.is_empty());

    let other = swap_encoder(encoder, other_model).await;
    assert_ne!(fingerprint(&other.url()).await, first_model);
    let mut caught = false;
    for _ in 0..100 {
        let r = search(&mut client).await;
        assert_eq!(
            r.missing_signals,
            ["dense"],
            "no vector of the new model is compared with the catalog's"
        );
        assert!(r.items[0].title.contains("Cast Iron Skillet"), "words rank");
        if encoder_state(&mut client).await == "differs" {
            caught = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        caught,
        "the new model's answers had it checked before the hour"
    );

    let again = swap_encoder(other, model_dir()).await;
    assert_eq!(
        fingerprint(&again.url()).await,
        first_model,
        "the same files, the same fingerprint"
    );
    let back = soon(async || search(&mut client).await.missing_signals.is_empty()).await;
    assert!(
        back,
        "the catalog's model is used again at its first answer"
    );
    let matches = soon(async || encoder_state(&mut client).await == "matches").await;
    assert!(matches, "and checked again before the hour");
}

/// With `--reembed-on-model-change`, an encoder rolled out with another model has the
/// catalog re-embedded by the ranker itself: dense relevance comes back with no admin step,
/// and the new model's vectors are stored.
#[tokio::test(flavor = "multi_thread")]
async fn the_ranker_can_re_embed_on_its_own_when_the_model_changes() {
    let dir = tempfile::tempdir().unwrap();
    let other_model = five_layer_model(dir.path());
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let data = dir.path().join("ranker");
    let watch = ModelWatch {
        every_ms: 200,
        reembed: true,
        ..WATCH
    };
    let ranker = start_ranker_watching(&data, &encoder.url(), &kg.url(), watch).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let search = |q: &str| rk::RankRequest {
        query: q.into(),
        k: 5,
        ..Default::default()
    };
    let before = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    assert!(before.missing_signals.is_empty());

    let other = swap_encoder(encoder, other_model).await;
    // The new model is seen, the 312 items re-embedded (a few seconds on 2 cores), and
    // queries are embedded again, with no Reembed call.
    let mut asked = 0;
    let back = soon_within(60, async || {
        asked += 1;
        let r = client
            .rank(search(&format!("espresso machine {asked}")))
            .await
            .unwrap()
            .into_inner();
        r.missing_signals.is_empty()
    })
    .await;
    assert!(back, "dense relevance came back on its own");
    let stats = client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.encoder.as_str(), stats.items), ("matches", 312));
    let r = client
        .rank(search("espresso machine"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.items[0].title.contains("Espresso"),
        "{}",
        r.items[0].title
    );

    // Stored: a restarted ranker agrees with the new model at once.
    ranker.stop().await.unwrap();
    let ranker = start_ranker_watching(&data, &other.url(), &kg.url(), watch).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let matches = soon(async || {
        let stats = client
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        stats.encoder == "matches"
    })
    .await;
    assert!(matches);
}

/// `--embedding-dimensions` cuts every vector the ranker stores and asks for: the demo's
/// searches still find their items with 128 of MiniLM's 384 values. Those vectors are another
/// space: a ranker restarted on the store with whole vectors sees the encoder "differ" and,
/// with `--reembed-on-model-change`, re-embeds the catalog at 384.
#[tokio::test(flavor = "multi_thread")]
async fn vectors_cut_by_the_ranker_are_a_space_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let data = dir.path().join("ranker");
    let cut = ModelWatch {
        dimensions: Some(128),
        ..WATCH
    };
    let ranker = start_ranker_watching(&data, &encoder, &kg.url(), cut).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let stats = |client: &mut RankerClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .stats(rk::StatsRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let s = stats(&mut client).await;
    assert_eq!((s.items, s.dimension), (312, 128));
    let espresso = rk::RankRequest {
        query: "espresso machine".into(),
        k: 5,
        ..Default::default()
    };
    let r = client.rank(espresso.clone()).await.unwrap().into_inner();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    assert!(
        r.items[0].title.contains("Espresso"),
        "{}",
        r.items[0].title
    );
    ranker.stop().await.unwrap();

    let whole = ModelWatch {
        reembed: true,
        ..WATCH
    };
    let ranker = start_ranker_watching(&data, &encoder, &kg.url(), whole).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let mut last = None;
    let back = soon_within(60, async || {
        let s = stats(&mut client).await;
        let done = (s.dimension, s.encoder.as_str()) == (384, "matches");
        last = Some((s.dimension, s.encoder));
        done
    })
    .await;
    assert!(back, "re-embedded at 384: last {last:?}");
    let r = client.rank(espresso).await.unwrap().into_inner();
    assert!(r.missing_signals.is_empty(), "{:?}", r.missing_signals);
    assert!(
        r.items[0].title.contains("Espresso"),
        "{}",
        r.items[0].title
    );
}

/// A shop's price and stock feed sends every item again with only prices and stock changed:
/// the items whose text is unchanged keep their vectors, so the feed needs no encoder (it
/// is stored while the encoder is down) and rankings show the new prices at once; an item
/// whose text changed still needs the encoder, and its batch is refused, not half stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_price_and_stock_feed_keeps_the_vectors_and_needs_no_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let ranker = start_ranker_ann(&dir.path().join("ranker"), &encoder.url(), &kg.url(), 0).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let search = rk::RankRequest {
        query: "wireless earbuds".into(),
        k: 5,
        ..Default::default()
    };
    let before = client.rank(search.clone()).await.unwrap().into_inner();
    assert!(before.missing_signals.is_empty());
    let ids = |r: &rk::RankResponse| r.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();

    // The demo's catalog with every price halved and p00001 out of stock.
    let feed = |path: &std::path::Path, retitle: bool| {
        let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
        let headers = reader.headers().unwrap().clone();
        let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let (id, title, price, stock) = (
            column("id"),
            column("title"),
            column("price"),
            column("in_stock"),
        );
        let mut writer = csv::Writer::from_path(path).unwrap();
        writer.write_record(&headers).unwrap();
        for record in reader.records() {
            let record = record.unwrap();
            let mut row: Vec<String> = record.iter().map(String::from).collect();
            let halved = row[price].parse::<f64>().unwrap() / 2.0;
            row[price] = format!("{halved:.2}");
            if row[id] == "p00001" {
                row[stock] = "false".into();
                if retitle {
                    row[title] = "Pixelon Flow Wireless Earbuds 100 (2027 edition)".into();
                }
            }
            writer.write_record(&row).unwrap();
        }
        writer.flush().unwrap();
    };
    let prices = dir.path().join("prices.csv");
    feed(&prices, false);

    encoder.stop().await.unwrap();
    let (_, response) =
        soukctl::load_catalog(channel(&ranker.url()).await, &prices, &quiet(), &None)
            .await
            .unwrap();
    let response = response.unwrap();
    assert_eq!((response.upserted, response.kept_vectors), (312, 312));
    assert_eq!(
        (response.graph_synced, response.graph_facts_removed),
        (312, 0),
        "same facts: nothing leaves the graph"
    );
    // The same search (its vector cached from before the outage).
    let after = client.rank(search.clone()).await.unwrap().into_inner();
    assert_eq!(ids(&after), ids(&before), "the same vectors rank alike");
    let price =
        |r: &rk::RankResponse, id: &str| r.items.iter().find(|i| i.id == id).map(|i| i.price);
    for item in &before.items {
        if let Some(now) = price(&after, &item.id) {
            assert!(
                (now - item.price / 2.0).abs() < 0.006,
                "{}: {} -> {now}",
                item.id,
                item.price
            );
        }
    }
    let in_stock = rk::RankRequest {
        filters: Some(rk::Filters {
            in_stock_only: true,
            ..Default::default()
        }),
        k: 50,
        ..search.clone()
    };
    let listed = client.rank(in_stock).await.unwrap().into_inner();
    assert!(!listed.items.is_empty());
    assert!(
        listed.items.iter().all(|i| i.id != "p00001"),
        "out of stock now"
    );

    // A changed title needs the encoder: refused, and nothing of its batch is stored.
    let retitled = dir.path().join("retitled.csv");
    feed(&retitled, true);
    let error = soukctl::load_catalog(channel(&ranker.url()).await, &retitled, &quiet(), &None)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("cannot embed items"),
        "{error:#}"
    );
    // p00001 as a search for it finds it: (title, price).
    let p00001 = async |client: &mut RankerClient<tonic::transport::Channel>| {
        client
            .rank(rk::RankRequest {
                query: "pixelon flow earbuds".into(),
                k: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .find(|i| i.id == "p00001")
            .map(|i| (i.title, i.price))
    };
    let (title, _) = p00001(&mut client).await.unwrap();
    assert_eq!(title, "Pixelon Flow Wireless Earbuds 100");

    // A feed of the changed fields alone (`soukctl catalog update`), still without the
    // encoder: prices, stock and attributes change, the rest stays; unknown ids are listed;
    // a bad line is named by file and line and nothing of its batch is stored.
    // A fact loaded into the graph by hand is not the catalog's: an update leaves it.
    let mut graph = KnowledgeGraphClient::new(channel(&kg.url()).await);
    graph
        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
            triples: vec![kg::Triple {
                head: "item:p00002".into(),
                relation: "attribute".into(),
                tail: "attr:warranty=two-years".into(),
            }],
            ..Default::default()
        }]))
        .await
        .unwrap();
    let updates = dir.path().join("updates.csv");
    std::fs::write(
        &updates,
        "id,price,in_stock,attributes\n\
         p00001,12.50,true,\n\
         p00002,,,color=crimson; connectivity=\n\
         p99999,1,,\n",
    )
    .unwrap();
    let (_, response) =
        soukctl::update_catalog(channel(&ranker.url()).await, &updates, &quiet(), &None)
            .await
            .unwrap();
    let response = response.unwrap();
    assert_eq!(
        (response.updated, response.unknown, response.unknown_ids),
        (2, 1, vec!["p99999".to_string()])
    );
    // The old colour and the removed connectivity leave the graph with the update, so no
    // profile or explanation cites them.
    assert_eq!(
        (response.graph_synced, response.graph_facts_removed),
        (2, 2)
    );
    assert_eq!(
        out_edges(&kg.url(), "item:p00002", "attribute").await,
        ["attr:color=crimson", "attr:warranty=two-years"]
    );
    let crimson = client
        .rank(rk::RankRequest {
            query: "earbuds".into(),
            k: 10,
            filters: Some(rk::Filters {
                attributes: vec![rk::AttributeFilter {
                    name: "color".into(),
                    values: vec!["crimson".into()],
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let found: Vec<(&str, &str)> = crimson
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.title.as_str()))
        .collect();
    assert_eq!(
        found,
        [("p00002", "Auralis Lite Over-Ear Headphones 750")],
        "the new colour is filtered on, the title kept"
    );
    let listed = client
        .rank(rk::RankRequest {
            query: "pixelon flow earbuds".into(),
            k: 3,
            filters: Some(rk::Filters {
                in_stock_only: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p1 = listed.items.iter().find(|i| i.id == "p00001");
    assert_eq!(p1.map(|i| i.price), Some(12.5), "back in stock at 12.50");

    // A whole row again (same text: no encoder needed) with another brand and colour: the
    // old brand and colour leave the graph in the load's own batch.
    let row = dir.path().join("rebranded.csv");
    {
        let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
        let headers = reader.headers().unwrap().clone();
        let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let mut writer = csv::Writer::from_path(&row).unwrap();
        writer.write_record(&headers).unwrap();
        let record = reader
            .records()
            .map(Result::unwrap)
            .find(|r| &r[column("id")] == "p00002")
            .unwrap();
        let mut fields: Vec<String> = record.iter().map(String::from).collect();
        fields[column("brand")] = "Sonora".into();
        // The id twice in one batch: the item ends as the last row, and so does the graph.
        fields[column("attributes")] = "color=white".into();
        writer.write_record(&fields).unwrap();
        fields[column("attributes")] = "color=black".into();
        writer.write_record(&fields).unwrap();
        writer.flush().unwrap();
    }
    let (_, response) = soukctl::load_catalog(channel(&ranker.url()).await, &row, &quiet(), &None)
        .await
        .unwrap();
    let response = response.unwrap();
    assert_eq!(
        (response.kept_vectors, response.graph_facts_removed),
        (2, 2)
    );
    let mut edges: Vec<(String, String)> = graph
        .neighbors(kg::NeighborsRequest {
            entity: "item:p00002".into(),
            direction: kg::Direction::Out as i32,
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .neighbors
        .into_iter()
        .map(|n| (n.relation, n.entity))
        .collect();
    edges.sort();
    let edge = |r: &str, e: &str| (r.to_string(), e.to_string());
    assert_eq!(
        edges,
        [
            edge("attribute", "attr:color=black"),
            edge("attribute", "attr:warranty=two-years"),
            edge("brand", "brand:Sonora"),
            edge("category", "category:Electronics/Audio/Headphones"),
        ]
    );

    std::fs::write(&updates, "id,price\np00001,1\np00003,free\n").unwrap();
    let error = soukctl::update_catalog(channel(&ranker.url()).await, &updates, &quiet(), &None)
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains(
            "updates.csv: stopped after 1 bad line(s) (--max-errors 0); nothing was sent: \
             the 1 good updates read before it were held back"
        ),
        "{error:#}"
    );
    assert_eq!(
        p00001(&mut client).await.map(|(_, price)| price),
        Some(12.5),
        "the bad line's batch was not sent"
    );

    // One row a batch: the first is sent (and stays) before the bad line stops the file, and
    // the message says so rather than counting what was only read.
    let one_a_batch = soukctl::LoadOptions {
        batch_size: Some(1),
        ..quiet()
    };
    let error =
        soukctl::update_catalog(channel(&ranker.url()).await, &updates, &one_a_batch, &None)
            .await
            .unwrap_err();
    assert!(
        format!("{error:#}").ends_with(
            "updates.csv: stopped after 1 bad line(s) (--max-errors 0); \
             1 updates in 1 batch(es) were sent before it and stay applied"
        ),
        "{error:#}"
    );
    assert_eq!(
        p00001(&mut client).await.map(|(_, price)| price),
        Some(1.0),
        "the batch sent before the stop was applied"
    );
}

/// The graph away during a feed: the ranker stores the items, keeps their fact batches on
/// disk (through its own restart) and sends them in order once the graph is back, so the
/// graph ends with the last colour and without the earlier ones.
#[tokio::test(flavor = "multi_thread")]
async fn item_facts_wait_for_a_graph_that_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let encoder_url = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let kg_addr = kg.addr;
    let ranker = start_ranker(&dir.path().join("ranker"), &encoder_url, &kg.url()).await;
    load_demo(&kg.url(), &ranker.url()).await;
    let updates = dir.path().join("updates.csv");
    let update = async |ranker: &Running, color: &str| -> rk::UpdateItemsResponse {
        std::fs::write(&updates, format!("id,attributes\np00002,color={color}\n")).unwrap();
        let (_, response) =
            soukctl::update_catalog(channel(&ranker.url()).await, &updates, &quiet(), &None)
                .await
                .unwrap();
        response.unwrap()
    };
    kg.stop().await.unwrap();
    // Two recolourings while the graph is away: stored, their facts queued.
    for color in ["crimson", "teal"] {
        let response = update(&ranker, color).await;
        assert_eq!((response.updated, response.graph_synced), (1, 0), "{color}");
    }
    let waiting = async |ranker: &Running| -> u64 {
        RankerClient::new(channel(&ranker.url()).await)
            .stats(rk::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .graph_outbox
    };
    assert_eq!(
        waiting(&ranker).await,
        2,
        "Stats shows the two batches waiting"
    );
    // The queue outlives the ranker.
    ranker.stop().await.unwrap();
    let kg_url = format!("http://{kg_addr}");
    let ranker = start_ranker(&dir.path().join("ranker"), &encoder_url, &kg_url).await;
    let kg = start_kg_at(kg_addr, &dir.path().join("kg")).await;
    let expected = ["attr:color=teal", "attr:connectivity=bluetooth"];
    let mut seen = Vec::new();
    let caught_up = soon_within(30, async || {
        seen = out_edges(&kg.url(), "item:p00002", "attribute").await;
        seen == expected
    })
    .await;
    assert!(caught_up, "the graph lists {seen:?}");
    assert!(soon(async || waiting(&ranker).await == 0).await);
    // With nothing queued, the next update goes straight through.
    let response = update(&ranker, "olive").await;
    assert_eq!(
        (response.graph_synced, response.graph_facts_removed),
        (1, 1)
    );
}

/// `soukctl stats` during an incident: with the ranker down, the graph's and the encoder's
/// stats are still printed, the ranker's section says it could not be read, and the command
/// fails naming it.
#[tokio::test(flavor = "multi_thread")]
async fn stats_reads_every_service_that_answers() {
    let Shop {
        kg,
        ranker,
        encoder_url,
        _dir,
    } = demo_shop().await;
    let ep = soukctl::Endpoints {
        ranker: ranker.url(),
        kg: kg.url(),
        encoder: encoder_url.clone(),
        token: None,
        timeout_s: soukctl::DEFAULT_TIMEOUT_S,
    };
    let graph = kg_stats(&mut KnowledgeGraphClient::new(channel(&kg.url()).await)).await;
    let info =
        souk_proto::encoder::v1::encoder_client::EncoderClient::new(channel(&encoder_url).await)
            .info(souk_proto::encoder::v1::InfoRequest {})
            .await
            .unwrap()
            .into_inner();
    let graph_line = format!(
        "graph: {} entities, {} relations, {} triples",
        graph.entities, graph.relations, graph.triples
    );
    let encoder_line = format!("encoder: {} (384-d vectors, mean pooling", info.model_id);

    let all = soukctl::stats::report(&ep).await;
    assert!(all.unread.is_empty(), "{}", all.text);
    for line in [
        "catalog: 312 items (384-d vectors), 100 users",
        graph_line.as_str(),
        encoder_line.as_str(),
        "encoder model: the one the catalog's vectors come from",
    ] {
        assert!(all.text.contains(line), "{line:?} not in\n{}", all.text);
    }
    assert!(!all.text.contains("NOT READ"), "{}", all.text);

    let ranker_url = ranker.url();
    ranker.stop().await.unwrap();
    let without = soukctl::stats::report(&ep).await;
    assert_eq!(without.unread, ["ranker"], "{}", without.text);
    assert!(
        without.text.starts_with(&format!(
            "ranker: NOT READ from {ranker_url}: cannot reach the ranker"
        )),
        "{}",
        without.text
    );
    for line in [graph_line.as_str(), encoder_line.as_str()] {
        assert!(
            without.text.contains(line),
            "{line:?} not in\n{}",
            without.text
        );
    }
    assert!(!without.text.contains("catalog:"), "{}", without.text);
    let error = soukctl::stats::print(&ep).await.unwrap_err();
    assert_eq!(error.to_string(), "could not read the ranker");
}

/// A service that takes the connection and never answers (a stopped process, another program
/// on its port) does not hold `soukctl health`, `soukctl stats` or a read command: each gives
/// up on it after `--timeout`, names it with the reason, and still reports the other services.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_stats_give_up_on_a_service_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let encoder_url = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    // Connections to it complete in the kernel's backlog; nothing ever reads them.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = soukctl::Endpoints {
        ranker: format!("http://{}", mute.local_addr().unwrap()),
        kg: kg.url(),
        encoder: encoder_url,
        token: None,
        // `--timeout 5`: shorter, so the test waits 2 x 5 s, not 2 x 10 s; the services that
        // answer do so in milliseconds.
        timeout_s: 5,
    };
    let limit = ep.answer_timeout() + std::time::Duration::from_secs(10);
    let ((health, serving), stats) = tokio::time::timeout(limit, async {
        tokio::join!(soukctl::health_report(&ep), soukctl::stats::report(&ep))
    })
    .await
    .expect("health and stats waited on the mute ranker");

    assert!(!serving, "{health}");
    let lines: Vec<&str> = health.lines().collect();
    assert_eq!(lines.len(), 3, "{health}");
    assert!(
        lines[0].starts_with("encoder") && lines[0].ends_with(" SERVING"),
        "{health}"
    );
    assert!(
        lines[1].starts_with("knowledge-graph") && lines[1].ends_with(" SERVING"),
        "{health}"
    );
    assert!(
        lines[2].starts_with("ranker") && lines[2].ends_with("UNREACHABLE (no answer within 5 s)"),
        "{health}"
    );

    assert_eq!(stats.unread, ["ranker"], "{}", stats.text);
    assert!(
        stats.text.starts_with(&format!(
            "ranker: NOT READ from {}: no answer within 5 s\n",
            ep.ranker
        )),
        "{}",
        stats.text
    );
    assert!(stats.text.contains("\ngraph: 0 entities"), "{}", stats.text);
    assert!(stats.text.contains("\nencoder: "), "{}", stats.text);

    // The read commands give up on it too, naming it (they waited forever before), while the
    // same command against a service that answers gets that service's own answer (the empty
    // graph's NotFound, passed through as it was).
    let command = |args: &[&str]| {
        let mut argv = vec![
            "soukctl",
            "--timeout",
            "5",
            "--ranker-url",
            ep.ranker.as_str(),
            "--kg-url",
        ];
        argv.extend(args);
        soukctl::run(soukctl::Cli::try_parse_from(argv).unwrap())
    };
    let (rank, neighbors_mute, neighbors) = tokio::time::timeout(limit, async {
        tokio::join!(
            command(&[ep.kg.as_str(), "rank", "--query", "desk"]),
            command(&[ep.ranker.as_str(), "kg", "neighbors", "brand:acme"]),
            command(&[ep.kg.as_str(), "kg", "neighbors", "brand:acme"]),
        )
    })
    .await
    .expect("the read commands waited on the mute service");
    let rank = rank.unwrap_err();
    assert_eq!(
        format!("{rank:#}"),
        "the ranker did not answer within 5 s",
        "{rank:?}"
    );
    let neighbors_mute = neighbors_mute.unwrap_err();
    assert_eq!(
        format!("{neighbors_mute:#}"),
        "the knowledge graph did not answer within 5 s"
    );
    let neighbors = neighbors.unwrap_err();
    assert!(
        format!("{neighbors:#}").contains(r#"unknown entity \"brand:acme\""#),
        "{neighbors:#}"
    );
    drop(mute);
}
