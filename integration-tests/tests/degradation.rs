//! Rank keeps answering when a dependency dies, and says which signal it lost.
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;

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
}
