//! A reduced search evaluation on real data (Crowdflower, first 60 queries, titles only), through
//! the same code as `soukctl eval search` and the real encoder: the learned fusion, scored only on
//! queries it was not trained on, must beat every signal alone.
use std::collections::BTreeSet;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn fused_search_beats_every_single_signal_on_held_out_queries() {
    let source = repo_root().join("../shared/datasets/search/crowdflower-dev.csv");
    if !source.is_file() {
        eprintln!(
            "skipped: {} is absent (it is present in CI)",
            source.display()
        );
        return;
    }
    let mut reader = csv::Reader::from_path(&source).unwrap();
    let headers = reader.headers().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let reduced = dir.path().join("reduced.csv");
    let mut writer = csv::Writer::from_path(&reduced).unwrap();
    writer.write_record(&headers).unwrap();
    let mut queries = BTreeSet::new();
    for record in reader.records() {
        let record = record.unwrap();
        let query = record.get(1).unwrap().to_string();
        if queries.len() < 60 || queries.contains(&query) {
            queries.insert(query);
            writer.write_record(&record).unwrap();
        }
    }
    writer.flush().unwrap();
    let args = soukctl::eval::SearchArgs {
        dataset: Some(reduced),
        folds: 5,
        train: None,
        test: None,
        k: 10,
        min_judged: 5,
        cache: None,
        titles_only: true,
    };
    let report = soukctl::eval::search_report(&args, &shared_encoder().await, false)
        .await
        .unwrap();
    assert!(report.queries >= 50, "{} queries evaluated", report.queries);
    let dense = report
        .signals
        .iter()
        .find(|(n, _)| n == "dense(title)")
        .unwrap()
        .1;
    assert!(
        dense > 0.75,
        "MiniLM alone is far above random (0.72): {dense}"
    );
    assert!(
        report.fused > report.best_single,
        "fused {:.4} must beat the best single signal {:.4}: {:?}",
        report.fused,
        report.best_single,
        report.signals
    );
}
