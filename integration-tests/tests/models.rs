//! Fitted models through the real services: `TrainCf`, `SetFusion`/`GetFusion` and
//! `soukctl train fusion` are stored with a version, used by the next `Rank`, and survive a
//! restart; bad settings are refused without touching what is served.
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;

use crate::common::*;

fn recommend(user: &str) -> rk::RankRequest {
    rk::RankRequest {
        user_id: user.into(),
        k: 10,
        explain: true,
        ..Default::default()
    }
}

fn cf_values(r: &rk::RankResponse) -> Vec<(String, f32)> {
    r.items
        .iter()
        .map(|i| {
            let cf = i
                .contributions
                .iter()
                .find(|c| c.signal == "cf")
                .map_or(0.0, |c| c.value);
            (i.id.clone(), cf)
        })
        .collect()
}

async fn get_stats(client: &mut RankerClient<tonic::transport::Channel>) -> rk::StatsResponse {
    client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn get_fusion(client: &mut RankerClient<tonic::transport::Channel>) -> rk::FusionModel {
    client
        .get_fusion(rk::GetFusionRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Trains the demo shop's collaborative filter with `request`, then ranks for u066: the fit
/// covers the shop's 100 shoppers, is stored under a version named for its algorithm, and
/// the results it backs still explain themselves.
async fn train_cf_and_rank(
    client: &mut RankerClient<tonic::transport::Channel>,
    request: rk::TrainCfRequest,
    version_prefix: &str,
) -> (rk::TrainCfResponse, rk::RankResponse) {
    let trained = client.train_cf(request).await.unwrap().into_inner();
    assert!(trained.version.starts_with(version_prefix), "{trained:?}");
    assert!(trained.items > 100 && trained.users == 100, "{trained:?}");
    let ranked = client.rank(recommend("u066")).await.unwrap().into_inner();
    assert!(
        ranked.items.iter().any(|i| i
            .reasons
            .iter()
            .any(|r| r.contains("shoppers who liked the"))),
        "{version_prefix} CF-backed results explain themselves: {:#?}",
        ranked.items
    );
    (trained, ranked)
}

#[tokio::test(flavor = "multi_thread")]
async fn trained_cf_and_fusion_are_versioned_used_and_survive_a_restart() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let stats = get_stats(&mut client).await;
    assert_eq!(stats.cf_version, "", "no CF trained yet");
    assert_eq!(stats.model_version, "default-v1");
    let before = client.rank(recommend("u066")).await.unwrap().into_inner();

    // Refused settings change nothing.
    for (bad, what) in [
        (
            rk::TrainCfRequest {
                max_items: 1,
                ..Default::default()
            },
            "max_items must be 2..=",
        ),
        (
            rk::TrainCfRequest {
                lambda: f32::NAN,
                ..Default::default()
            },
            "lambda must be a positive number, got NaN",
        ),
        (
            rk::TrainCfRequest {
                algorithm: 7,
                ..Default::default()
            },
            "unknown algorithm 7",
        ),
        (
            rk::TrainCfRequest {
                algorithm: rk::CfAlgorithm::Ials as i32,
                dim: 5_000,
                ..Default::default()
            },
            "dim must be 1..=1024, got 5000",
        ),
        (
            rk::TrainCfRequest {
                algorithm: rk::CfAlgorithm::Ials as i32,
                unobserved: -1.0,
                ..Default::default()
            },
            "unobserved weight must be a positive number, got -1",
        ),
    ] {
        assert_invalid(&client.train_cf(bad).await.unwrap_err(), what);
    }

    let (_, after) = train_cf_and_rank(
        &mut client,
        rk::TrainCfRequest {
            lambda: 20.0,
            ..Default::default()
        },
        "ease-",
    )
    .await;
    assert_ne!(
        cf_values(&before),
        cf_values(&after),
        "the fitted model moves the CF signal"
    );
    // iALS replaces EASE's neighbours with its own; it is the model checked after the restart.
    let (trained, with_ials) = train_cf_and_rank(
        &mut client,
        rk::TrainCfRequest {
            algorithm: rk::CfAlgorithm::Ials as i32,
            ..Default::default()
        },
        "ials-",
    )
    .await;
    assert_ne!(
        cf_values(&after),
        cf_values(&with_ials),
        "the iALS fit serves other CF scores than EASE's"
    );

    // Fusion weights: refused, then set.
    let weights = |dense: f32, bm25: f32| rk::FusionWeights {
        dense,
        bm25,
        cf: 0.1,
        kg: 0.1,
        popularity: 0.05,
    };
    let bad = client
        .set_fusion(rk::SetFusionRequest {
            model: Some(rk::FusionModel {
                version: "x".into(),
                with_query: Some(weights(f32::INFINITY, 0.2)),
                without_query: Some(weights(0.0, 0.0)),
                with_item: None,
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(&bad, "with_query.dense");
    let bad = client
        .set_fusion(rk::SetFusionRequest {
            model: Some(rk::FusionModel {
                version: "x".into(),
                with_query: Some(weights(0.5, 0.2)),
                without_query: Some(weights(0.0, 0.0)),
                with_item: Some(weights(f32::NAN, 0.0)),
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(&bad, "with_item.dense");
    let bad = client
        .set_fusion(rk::SetFusionRequest {
            model: Some(rk::FusionModel {
                version: "no spaces".into(),
                with_query: Some(weights(0.5, 0.2)),
                without_query: Some(weights(0.0, 0.0)),
                with_item: None,
            }),
        })
        .await
        .unwrap_err();
    assert_invalid(&bad, "version must be 1..64 characters");
    let set = client
        .set_fusion(rk::SetFusionRequest {
            model: Some(rk::FusionModel {
                version: "lexical-only-v2".into(),
                with_query: Some(weights(0.0, 0.75)),
                without_query: Some(weights(0.0, 0.0)),
                // Unset: the item page's weights in use (the defaults) stay.
                with_item: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.version, "lexical-only-v2");
    let search = rk::RankRequest {
        query: "waterproof hiking boots".into(),
        k: 5,
        explain: true,
        ..Default::default()
    };
    let r = client.rank(search.clone()).await.unwrap().into_inner();
    assert_eq!(r.model_version, "lexical-only-v2");
    assert!(
        r.items
            .iter()
            .all(|i| i.contributions.iter().all(|c| c.signal != "dense")),
        "a zero dense weight leaves dense out of every explanation: {:#?}",
        r.items
    );

    let served = client.rank(recommend("u066")).await.unwrap().into_inner();

    // Both survive a restart.
    let ranker_dir = shop._dir.path().join("ranker");
    let Shop {
        kg, ranker, _dir, ..
    } = shop;
    ranker.stop().await.unwrap();
    let ranker = start_ranker(&ranker_dir, &shared_encoder().await, &kg.url()).await;
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let stats = get_stats(&mut client).await;
    assert_eq!(stats.cf_version, trained.version);
    assert_eq!(stats.model_version, "lexical-only-v2");
    let fusion = get_fusion(&mut client).await;
    assert_eq!(fusion.with_query, Some(weights(0.0, 0.75)));
    let [dense, bm25, cf, kg, popularity] = souk_ranker_core::rank::default_with_item();
    let page = rk::FusionWeights {
        dense,
        bm25,
        cf,
        kg,
        popularity,
    };
    assert_eq!(
        fusion.with_item,
        Some(page),
        "the default page weights kept"
    );
    let again = client.rank(recommend("u066")).await.unwrap().into_inner();
    assert_eq!(
        again.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        served.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        "the stored CF and fusion rank the same after a restart"
    );
}

/// Graded judgements built from the demo catalog: for each leaf category as a query, its
/// products are relevant (4) and as many products of other categories are not (1).
fn demo_labels(path: &std::path::Path) {
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let rows: Vec<(String, String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let leaf = r[3].rsplit('>').next().unwrap().trim().to_lowercase();
            (leaf, r[1].to_string(), r[2].to_string())
        })
        .collect();
    let mut leaves: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    leaves.sort_unstable();
    leaves.dedup();
    let mut out = csv::Writer::from_path(path).unwrap();
    out.write_record([
        "query",
        "product_title",
        "product_description",
        "median_relevance",
    ])
    .unwrap();
    for (q, leaf) in leaves.iter().enumerate() {
        let inside = rows.iter().filter(|r| r.0 == *leaf).take(6);
        let outside = rows.iter().skip(q * 7).filter(|r| r.0 != *leaf).take(6);
        for (label, r) in inside.map(|r| ("4", r)).chain(outside.map(|r| ("1", r))) {
            out.write_record([leaf, r.1.as_str(), r.2.as_str(), label])
                .unwrap();
        }
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn soukctl_train_fusion_learns_from_labels_and_stores_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let ranker = start_ranker(&dir.path().join("ranker"), &encoder, &kg.url()).await;
    let labels = dir.path().join("labels.csv");
    demo_labels(&labels);
    let ep = soukctl::Endpoints {
        ranker: ranker.url(),
        kg: kg.url(),
        encoder: encoder.clone(),
        token: None,
        timeout_s: soukctl::DEFAULT_TIMEOUT_S,
    };
    let mut args = soukctl::train::FusionArgs {
        labels: Some(labels.clone()),
        feedback: None,
        position_bias: None,
        min_lists: 20,
        folds: 3,
        min_judged: 5,
        cache: None,
        version: "from-labels-1".into(),
        dry_run: true,
    };
    let dry = soukctl::train::learn_fusion(&args, &ep).await.unwrap();
    assert!(dry.queries >= 10, "{dry:?}");
    assert_eq!(dry.version, None);
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let stats = get_stats(&mut client).await;
    assert_eq!(
        stats.model_version, "default-v1",
        "a dry run changes nothing"
    );

    args.dry_run = false;
    let report = soukctl::train::learn_fusion(&args, &ep).await.unwrap();
    assert_eq!(report.version.as_deref(), Some("from-labels-1"));
    assert!(
        report.learned_ndcg > 0.8,
        "category queries are easy for dense + BM25: {report:?}"
    );
    let fusion = get_fusion(&mut client).await;
    assert_eq!(fusion.version, "from-labels-1");
    let q = fusion.with_query.unwrap();
    assert_eq!((q.dense, q.bm25), (report.weights[0], report.weights[1]));
    assert!(
        ((q.dense.abs() + q.bm25.abs()) - 0.75).abs() < 1e-4,
        "relevance keeps the default's share of the score: {q:?}"
    );
    assert_eq!(
        (q.cf, q.kg, q.popularity),
        (0.10, 0.10, 0.05),
        "personal weights kept"
    );
}

/// A click log as a shop's backend would write it: `Rank` with `all_signals` for each list
/// shown, one row per item with the signal values it returned. The simulated shoppers look at
/// rank r with probability 1/r and click the most popular item of the list when they see it.
async fn popularity_click_log(
    client: &mut RankerClient<tonic::transport::Channel>,
    path: &std::path::Path,
) {
    let queries = [
        "headphones",
        "earbuds",
        "desk lamp",
        "tent",
        "hiking boots",
        "coffee grinder",
        "kettle",
        "frying pan",
        "stove",
        "phone",
        "phone case",
        "backpack",
        "jacket",
        "mug",
        "blender",
        "speaker",
        "sleeping bag",
        "knife",
        "lamp",
        "camera",
    ];
    let mut rng = souk_ranker_core::rng::XorShift::new(42);
    let mut uniform = move || rng.unit();
    let mut out = csv::Writer::from_path(path).unwrap();
    out.write_record([
        "request_id",
        "position",
        "item_id",
        "clicked",
        "query",
        "dense",
        "bm25",
        "cf",
        "kg",
        "popularity",
        "page_item",
    ])
    .unwrap();
    // (query, shopper, the page's item)
    let mut requests: Vec<(String, String, String)> = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        for u in 0..6 {
            let user = format!("u{:03}", 1 + (i * 7 + u * 13) % 100);
            requests.push((q.to_string(), user, String::new()));
        }
    }
    for u in 1..=100 {
        requests.push((String::new(), format!("u{u:03}"), String::new()));
    }
    // The pages of 100 of the demo's items, each for a shopper.
    for p in 0..100 {
        let page = format!("p{:05}", 1 + p * 3);
        requests.push((String::new(), format!("u{:03}", 1 + p), page));
    }
    for (n, (query, user, page)) in requests.into_iter().enumerate() {
        let ranked = client
            .rank(rk::RankRequest {
                user_id: user,
                query: query.clone(),
                item_id: page.clone(),
                k: 10,
                all_signals: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let signals: Vec<[f32; 5]> = ranked
            .items
            .iter()
            .map(|item| {
                assert_eq!(
                    item.contributions.len(),
                    5,
                    "all_signals: every signal, {item:?}"
                );
                let value = |name: &str| {
                    item.contributions
                        .iter()
                        .find(|c| c.signal == name)
                        .unwrap()
                        .value
                };
                ["dense", "bm25", "cf", "kg", "popularity"].map(value)
            })
            .collect();
        let favourite = (0..signals.len())
            .max_by(|a, b| signals[*a][4].total_cmp(&signals[*b][4]).then(b.cmp(a)))
            .unwrap();
        let seen = uniform() < 1.0 / (favourite + 1) as f64;
        for (r, (item, s)) in ranked.items.iter().zip(&signals).enumerate() {
            let clicked = if seen && r == favourite { "1" } else { "0" };
            let mut row = vec![
                format!("r{n}"),
                (r + 1).to_string(),
                item.id.clone(),
                clicked.to_string(),
                query.clone(),
            ];
            row.extend(s.iter().map(|v| v.to_string()));
            row.push(page.clone());
            out.write_record(&row).unwrap();
        }
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn soukctl_train_fusion_learns_from_a_click_log() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let log = shop._dir.path().join("clicks.csv");
    popularity_click_log(&mut client, &log).await;
    let ep = soukctl::Endpoints {
        ranker: shop.ranker.url(),
        kg: shop.kg.url(),
        encoder: shop.encoder_url.clone(),
        token: None,
        timeout_s: soukctl::DEFAULT_TIMEOUT_S,
    };
    let options = soukctl::feedback::FeedbackOptions {
        position_bias: Some(1.0),
        min_lists: 10,
        folds: 3,
    };
    let dry = soukctl::feedback::learn(&log, &options, "from-clicks-1", true, &ep)
        .await
        .unwrap();
    assert_eq!(dry.version, None);
    let stats = get_stats(&mut client).await;
    assert_eq!(
        stats.model_version, "default-v1",
        "a dry run changes nothing"
    );

    let report = soukctl::feedback::learn(&log, &options, "from-clicks-1", false, &ep)
        .await
        .unwrap();
    assert_eq!(report.version.as_deref(), Some("from-clicks-1"));
    let fusion = get_fusion(&mut client).await;
    for (set, stored, default_popularity) in [
        (&report.with_query, fusion.with_query.unwrap(), 0.05),
        (&report.without_query, fusion.without_query.unwrap(), 0.20),
        (&report.with_item, fusion.with_item.unwrap(), 0.40),
    ] {
        let learned = set.weights.unwrap();
        assert_eq!(stored.popularity, learned[4]);
        // Shoppers clicked for popularity, so it gains weight, and the learned weights order
        // the held-out lists' clicks better than the defaults.
        assert!(
            learned[4] > 2.0 * default_popularity,
            "popularity {} (default {default_popularity}): {set:?}",
            learned[4]
        );
        assert!(
            set.learned_agreement.unwrap() > set.current_agreement.unwrap() + 0.05,
            "{set:?}"
        );
    }

    // A bad log is refused with the line, and nothing changes.
    let bad = shop._dir.path().join("bad.csv");
    let header = "request_id,position,item_id,clicked,query,dense,bm25,cf,kg,popularity";
    for (log, why) in [
        (
            format!(
                "{header}\n\
                 r1,1,p00001,0,tent,0.5,0.1,0,0,0.2\n\
                 r1,1,p00002,1,tent,0.4,0.1,0,0,0.3\n"
            ),
            "bad.csv:3: request \"r1\" shows position 1 twice (also line 2)",
        ),
        (
            format!("{header}\nr1,1,p00001,perhaps,tent,0.5,0.1,0,0,0.2\n"),
            "bad.csv:2: clicked \"perhaps\" is not 1/0 or true/false",
        ),
        (
            format!(
                "{header},page_item\n\
                 r1,1,p00001,0,,0.5,0.1,0,0,0.2,p00010\n\
                 r1,2,p00002,1,,0.4,0.1,0,0,0.3,p00011\n"
            ),
            "bad.csv:3: request \"r1\" has page_item \"p00011\" here and \"p00010\" on line 2",
        ),
    ] {
        std::fs::write(&bad, log).unwrap();
        let err = soukctl::feedback::learn(&bad, &options, "x", false, &ep)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    let fusion_after = get_fusion(&mut client).await;
    assert_eq!(fusion_after.version, "from-clicks-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_profile_comes_through_the_graph_and_falls_back_to_the_catalog() {
    use souk_proto::kg::v1 as kg;
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    let profile = |limit| rk::UserProfileRequest {
        user_id: "u066".into(),
        limit,
    };
    let catalog_view = client
        .user_profile(profile(100))
        .await
        .unwrap()
        .into_inner();
    assert!(catalog_view.missing_signals.is_empty());
    assert!(!catalog_view.categories.is_empty() && !catalog_view.brands.is_empty());

    // A fact that exists only in the graph (not in the catalog CSV) shows in the profile.
    let mut graph =
        kg::knowledge_graph_client::KnowledgeGraphClient::new(channel(&shop.kg.url()).await);
    graph
        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
            triples: vec![kg::Triple {
                head: "item:p00006".into(),
                relation: "attribute".into(),
                tail: "attr:warranty=two-years".into(),
            }],
            ..Default::default()
        }]))
        .await
        .unwrap();
    let p = client
        .user_profile(profile(100))
        .await
        .unwrap()
        .into_inner();
    assert!(p.missing_signals.is_empty(), "{:?}", p.missing_signals);
    assert!(
        p.attributes.iter().any(|a| a.name == "warranty=two-years"),
        "{:?}",
        p.attributes
    );
    // Category ancestors come from the graph's parent edges: the top level is there.
    assert_eq!(
        p.categories.iter().map(|a| &a.name).collect::<Vec<_>>()[..1],
        catalog_view
            .categories
            .iter()
            .map(|a| &a.name)
            .collect::<Vec<_>>()[..1]
    );
    assert_eq!(p.brands, catalog_view.brands);

    // Without the graph: the catalog's lists, flagged.
    let Shop {
        kg, ranker, _dir, ..
    } = shop;
    kg.stop().await.unwrap();
    let mut client = RankerClient::new(channel(&ranker.url()).await);
    let p = client
        .user_profile(profile(100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.missing_signals, vec!["kg".to_string()]);
    assert_eq!(p.categories, catalog_view.categories);
    assert!(p.attributes.iter().all(|a| a.name != "warranty=two-years"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_new_users_and_new_items_are_reachable() {
    let shop = demo_shop().await;
    let mut client = RankerClient::new(channel(&shop.ranker.url()).await);
    // A new user: the query and popularity carry a search, popularity a recommendation.
    let r = client
        .rank(rk::RankRequest {
            user_id: "someone-new".into(),
            query: "noise cancelling headphones".into(),
            k: 5,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 5);
    assert!(r.items[0].contributions.iter().any(|c| c.signal == "dense"));
    let r = client
        .rank(rk::RankRequest {
            user_id: "someone-new".into(),
            k: 5,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 5);
    assert!(
        r.items
            .iter()
            .all(|i| i.contributions.iter().any(|c| c.signal == "popularity")),
        "{:#?}",
        r.items
    );

    // A new item with no events: found by its text, and by the graph through its brand.
    let bought = "p00074"; // u043 purchased it (kg-data/events.csv)
    let mut reader = csv::Reader::from_path(repo_root().join("kg-data/products.csv")).unwrap();
    let brand = reader
        .records()
        .map(|r| r.unwrap())
        .find(|r| &r[0] == bought)
        .map(|r| r[4].to_string())
        .unwrap();
    let item = rk::Item {
        id: "new-pole".into(),
        title: "Carbon Trekking Pole".into(),
        description: "A light carbon trekking pole for long trails.".into(),
        category: vec!["Outdoor".into(), "Trekking Poles".into()],
        brand: brand.clone(),
        price: 49.0,
        in_stock: true,
        ..Default::default()
    };
    client
        .upsert_items(futures::stream::iter(vec![rk::UpsertItemsRequest {
            items: vec![item],
        }]))
        .await
        .unwrap();
    let r = client
        .rank(rk::RankRequest {
            query: "carbon trekking pole".into(),
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items[0].id, "new-pole");
    let signals: Vec<&str> = r.items[0]
        .contributions
        .iter()
        .map(|c| c.signal.as_str())
        .collect();
    assert!(
        signals.contains(&"dense") && signals.contains(&"bm25"),
        "{signals:?}"
    );
    let r = client
        .rank(rk::RankRequest {
            user_id: "u043".into(),
            candidate_ids: vec!["new-pole".into(), "p00001".into(), "p00150".into()],
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pole = r.items.iter().find(|i| i.id == "new-pole").unwrap();
    assert!(
        pole.contributions
            .iter()
            .any(|c| c.signal == "kg" && c.value > 0.0),
        "{pole:#?}"
    );
    assert!(
        pole.reasons.iter().any(|r| r.contains(&brand)),
        "the graph path through the brand explains it: {:?}",
        pole.reasons
    );
}
