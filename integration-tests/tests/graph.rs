//! The knowledge-graph service: loading (good, bad, twice, guarded by the admin token),
//! queries and their errors, and a restart that rebuilds the graph from sled.
use std::collections::{BTreeSet, HashSet};

use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
use tonic::Code;

use crate::common::*;
use crate::random_requests::Draw;

fn triple(h: &str, r: &str, t: &str) -> kg::Triple {
    kg::Triple {
        head: h.into(),
        relation: r.into(),
        tail: t.into(),
    }
}

fn batch(triples: Vec<kg::Triple>) -> kg::LoadTriplesRequest {
    kg::LoadTriplesRequest {
        triples,
        ..Default::default()
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_is_idempotent_atomic_per_batch_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_kg(dir.path(), None).await;
    let file = repo_root().join("kg-data/triples.tsv");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let (_, first) =
        soukctl::load_triples(channel(&server.url()).await, &file, None, &quiet(), &None)
            .await
            .unwrap();
    assert_eq!(first.unwrap().inserted, lines);
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let stats = kg_stats(&mut client).await;
    let (_, second) =
        soukctl::load_triples(channel(&server.url()).await, &file, None, &quiet(), &None)
            .await
            .unwrap();
    assert_eq!(second.unwrap().inserted, 0, "second load adds nothing");
    let again = kg_stats(&mut client).await;
    assert_eq!(
        (again.entities, again.relations, again.triples),
        (stats.entities, stats.relations, stats.triples)
    );
    assert_eq!(stats.triples, lines);

    // Batch 0 is good, batch 1 has an empty relation: batch 0 stays, nothing of batch 1 lands.
    let stream = futures::stream::iter(vec![
        batch(vec![triple("x:a", "likes", "x:b")]),
        batch(vec![
            triple("x:c", "likes", "x:d"),
            triple("x:e", "", "x:f"),
        ]),
    ]);
    let status = client.load_triples(stream).await.unwrap_err();
    assert_invalid(&status, "batch 1, triple 1: relation is empty");
    let after_bad = kg_stats(&mut client).await;
    assert_eq!(after_bad.triples, lines + 1);
    let missing = client
        .neighbors(kg::NeighborsRequest {
            entity: "x:c".into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "x:c came only in the rejected batch"
    );

    server.stop().await.unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let reopened = kg_stats(&mut client).await;
    assert_eq!(
        reopened.triples,
        lines + 1,
        "everything acknowledged is back after restart"
    );
    let paths = client
        .paths(kg::PathsRequest {
            sources: vec!["item:p00040".into(), "item:gone".into()],
            targets: vec!["item:p00029".into(), "item:nope".into()],
            max_hops: 2,
            limit: 1,
            relations: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        paths.paths[0].steps[0].relation, "accessory_of",
        "the rebuilt graph still traverses"
    );
    assert_eq!(
        paths.unknown,
        ["item:gone", "item:nope"],
        "the answer names what has no path because the graph lacks it"
    );
    // Several entities' item neighbours in one call, in the order asked; an unknown one has
    // none.
    let each = client
        .neighbors_of_each(kg::NeighborsOfEachRequest {
            entities: vec!["item:p00029".into(), "ghost".into()],
            direction: kg::Direction::Both as i32,
            limit: 50,
            prefix: "item:".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = each.results.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(names, ["item:p00029", "ghost"]);
    let related: Vec<&str> = each.results[0]
        .neighbors
        .iter()
        .map(|n| n.entity.as_str())
        .collect();
    assert!(related.contains(&"item:p00040"), "{related:?}");
    assert!(
        related.iter().all(|e| e.starts_with("item:")),
        "{related:?}"
    );
    assert_eq!(each.results[0].total as usize, related.len());
    assert!(each.results[1].neighbors.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_reject_bad_arguments_and_unknown_entities() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    client
        .load_triples(futures::stream::iter(vec![batch(vec![triple(
            "a", "r", "b",
        )])]))
        .await
        .unwrap();
    let paths = |max_hops, limit| kg::PathsRequest {
        sources: vec!["a".into()],
        targets: vec!["b".into()],
        max_hops,
        limit,
        relations: vec![],
    };
    for (request, message) in [
        (paths(5, 1), "max_hops must be 1..=4"),
        (paths(0, 1), "max_hops"),
        (paths(2, 0), "limit must be 1..=1000"),
        (paths(2, 100_000), "limit"),
    ] {
        let status = client.paths(request).await.unwrap_err();
        assert_invalid(&status, message);
    }
    let status = client
        .neighbors(kg::NeighborsRequest {
            entity: "a".into(),
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, "limit must be 1..=");
    let status = client
        .neighbors(kg::NeighborsRequest {
            entity: "ghost".into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    for (request, message) in [
        (
            kg::NeighborsOfEachRequest {
                limit: 5,
                ..Default::default()
            },
            "entities must list 1..=256 entities, got 0",
        ),
        (
            kg::NeighborsOfEachRequest {
                entities: vec!["a".into(); 257],
                limit: 5,
                ..Default::default()
            },
            "got 257",
        ),
        (
            kg::NeighborsOfEachRequest {
                entities: vec!["ghost".into()],
                limit: 0,
                ..Default::default()
            },
            "limit must be 1..=",
        ),
    ] {
        let status = client.neighbors_of_each(request).await.unwrap_err();
        assert_invalid(&status, message);
    }
    let status = client
        .entity_embeddings(kg::EntityEmbeddingsRequest {
            entities: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_rpcs_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_kg(dir.path(), Some("s3cret")).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let load = || futures::stream::iter(vec![batch(vec![triple("a", "r", "b")])]);
    let status = client.load_triples(load()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .load_triples(authed(load(), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    client.load_triples(authed(load(), "s3cret")).await.unwrap();
    // Reads stay open.
    let n = client
        .neighbors(kg::NeighborsRequest {
            entity: "a".into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.total, 1);
}

/// Trains RotatE through `TrainEmbeddings` on the demo graph, then checks what a user of the
/// embeddings would notice: the stored brand of an item is among the top predictions for most
/// items (random would put it at ~1/1000), similar entities respect the prefix, vectors survive
/// a restart bit for bit, and bad requests get the right codes.
#[tokio::test(flavor = "multi_thread")]
async fn trained_embeddings_predict_known_links_and_survive_restart() {
    let (server, dir) = demo_graph().await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);

    let request = |model: kg::EmbeddingModel| kg::TrainEmbeddingsRequest {
        model: model as i32,
        dim: 32,
        epochs: 60,
        batch_size: 256,
        negatives: 64,
        learning_rate: 0.01,
        seed: 7,
        ..Default::default()
    };
    let status = client
        .train_embeddings(request(kg::EmbeddingModel::Unspecified))
        .await
        .expect_err("an unspecified model is refused");
    assert_invalid(&status, "model must be TRANSE, DISTMULT or ROTATE");
    let mut bad = request(kg::EmbeddingModel::Rotate);
    bad.learning_rate = -1.0;
    assert_invalid(
        &client.train_embeddings(bad).await.expect_err("refused"),
        "learning rate must be in (0, 10), got -1",
    );

    let mut stream = client
        .train_embeddings(request(kg::EmbeddingModel::Rotate))
        .await
        .unwrap()
        .into_inner();
    let mut progress = Vec::new();
    while let Some(p) = stream.message().await.unwrap() {
        progress.push(p);
    }
    assert_eq!(progress.len(), 61, "one message per epoch, then done");
    assert!(progress.last().unwrap().done);
    assert!(
        progress[59].loss < progress[0].loss * 0.5,
        "loss {} -> {}",
        progress[0].loss,
        progress[59].loss
    );
    let stats = kg_stats(&mut client).await;
    assert_eq!(stats.embedding_model, kg::EmbeddingModel::Rotate as i32);

    // Known links: for every item, where does its stored brand rank among predicted tails?
    let text = std::fs::read_to_string(repo_root().join("kg-data/triples.tsv")).unwrap();
    let brands: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1] == "brand").then(|| (f[0], f[2]))
        })
        .take(60)
        .collect();
    let mut reciprocal = 0.0;
    for (item, brand) in &brands {
        let predicted = client
            .predict_links(kg::PredictLinksRequest {
                head: (*item).into(),
                relation: "brand".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(rank) = predicted.entities.iter().position(|e| e.entity == *brand) {
            reciprocal += 1.0 / (rank + 1) as f64;
        }
    }
    let mrr = reciprocal / brands.len() as f64;
    assert!(mrr > 0.5, "brand MRR@10 on trained links {mrr:.3}");

    let new_only = client
        .predict_links(kg::PredictLinksRequest {
            head: brands[0].0.into(),
            relation: "brand".into(),
            limit: 5,
            filter_known: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(new_only.entities.iter().all(|e| e.entity != brands[0].1));

    // Candidates are the entities the graph has at that end of the relation: brands for a
    // `brand` link, unless any entity is asked for.
    let every = |any_entity| kg::PredictLinksRequest {
        head: brands[0].0.into(),
        relation: "brand".into(),
        limit: 1_000,
        any_entity,
        ..Default::default()
    };
    let typed = client
        .predict_links(every(false))
        .await
        .unwrap()
        .into_inner();
    let named = |r: &kg::PredictLinksResponse, prefix: &str| {
        r.entities
            .iter()
            .filter(|e| e.entity.starts_with(prefix))
            .count()
    };
    let brand_count = brands.iter().map(|(_, b)| *b).collect::<HashSet<_>>().len();
    assert!(
        named(&typed, "brand:") >= brand_count,
        "every brand is a candidate"
    );
    assert_eq!(named(&typed, "brand:"), typed.entities.len(), "only brands");
    let any = client
        .predict_links(every(true))
        .await
        .unwrap()
        .into_inner();
    assert!(
        named(&any, "item:") > 0,
        "items too when any entity is asked for"
    );

    let similar = client
        .similar_entities(kg::SimilarEntitiesRequest {
            entity: "item:p00001".into(),
            limit: 5,
            prefix: "item:".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(similar.entities.len(), 5);
    assert!(
        similar
            .entities
            .iter()
            .all(|e| e.entity.starts_with("item:") && e.entity != "item:p00001")
    );
    assert!(
        similar
            .entities
            .windows(2)
            .all(|w| w[0].score >= w[1].score)
    );

    for (request, code) in [
        (
            kg::SimilarEntitiesRequest {
                entity: "ghost".into(),
                limit: 5,
                prefix: String::new(),
            },
            Code::NotFound,
        ),
        (
            kg::SimilarEntitiesRequest {
                entity: "item:p00001".into(),
                limit: 0,
                prefix: String::new(),
            },
            Code::InvalidArgument,
        ),
    ] {
        assert_eq!(
            client.similar_entities(request).await.unwrap_err().code(),
            code
        );
    }
    let both = client
        .predict_links(kg::PredictLinksRequest {
            head: "item:p00001".into(),
            tail: "brand:Pixelon".into(),
            relation: "brand".into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&both, "give exactly one of head");

    let lookup = kg::EntityEmbeddingsRequest {
        entities: vec!["item:p00001".into(), "ghost".into()],
    };
    let before = client
        .entity_embeddings(lookup.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.missing, ["ghost"]);
    assert_eq!(
        before.embeddings[0].values.len(),
        64,
        "RotatE: 32 complex numbers"
    );

    server.stop().await.unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let after = client.entity_embeddings(lookup).await.unwrap().into_inner();
    assert_eq!(after.embeddings[0].values, before.embeddings[0].values);
    assert_eq!(after.model, kg::EmbeddingModel::Rotate as i32);

    // A discontinued brand, cleared after training, is out of every answer: its trained row
    // would otherwise still be predicted for items and listed as similar to other brands.
    let (item, gone) = brands[0];
    let other_brand = brands.iter().map(|(_, b)| *b).find(|b| *b != gone).unwrap();
    let stats_before = kg_stats(&mut client).await;
    assert_eq!(stats_before.entities_without_triples, 0);
    let cleared = soukctl::clear_entities(channel(&server.url()).await, vec![gone.into()], &None)
        .await
        .unwrap();
    assert!(cleared.removed > 0);
    let all_brands = |head: &str, relation: &str| kg::PredictLinksRequest {
        head: head.into(),
        relation: relation.into(),
        limit: 1_000,
        ..Default::default()
    };
    let answers_without_it = |client: KnowledgeGraphClient<_>| async move {
        let mut client: KnowledgeGraphClient<tonic::transport::Channel> = client;
        let predicted = client
            .predict_links(all_brands(item, "brand"))
            .await
            .unwrap()
            .into_inner();
        assert!(!predicted.entities.is_empty());
        assert!(
            predicted.entities.iter().all(|e| e.entity != gone),
            "a cleared brand is predicted for {item}"
        );
        let similar = client
            .similar_entities(kg::SimilarEntitiesRequest {
                entity: other_brand.into(),
                limit: 1_000,
                prefix: "brand:".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!similar.entities.is_empty());
        assert!(similar.entities.iter().all(|e| e.entity != gone));
        let asked = client
            .similar_entities(kg::SimilarEntitiesRequest {
                entity: gone.into(),
                limit: 5,
                prefix: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(asked.code(), Code::NotFound);
        assert!(asked.message().contains("no triples left"), "{asked:?}");
        let rows = client
            .entity_embeddings(kg::EntityEmbeddingsRequest {
                entities: vec![gone.into(), other_brand.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rows.missing, [gone]);
        assert_eq!(rows.embeddings.len(), 1);
        let stats = kg_stats(&mut client).await;
        assert_eq!(
            (stats.entities, stats.entities_without_triples),
            (stats_before.entities - 1, 1)
        );
        client
    };
    let client = answers_without_it(client).await;
    drop(client);
    server.stop().await.unwrap();
    // The store replays to the same graph: the brand is still out after a restart.
    let server = start_kg(dir.path(), None).await;
    let client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let mut client = answers_without_it(client).await;

    // Loading a triple that names it brings it back, with its trained row.
    client
        .load_triples(futures::stream::iter(vec![batch(vec![triple(
            item, "brand", gone,
        )])]))
        .await
        .unwrap();
    let predicted = client
        .predict_links(all_brands(item, "brand"))
        .await
        .unwrap()
        .into_inner();
    assert!(predicted.entities.iter().any(|e| e.entity == gone));
    let stats = kg_stats(&mut client).await;
    assert_eq!(
        (stats.entities, stats.entities_without_triples),
        (stats_before.entities, 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_triples_takes_them_out_for_good_and_refuses_bad_lines() {
    let (server, dir) = demo_graph().await;
    let file = repo_root().join("kg-data/triples.tsv");
    let lines = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let attributes =
        async |server: &Running| out_edges(&server.url(), "item:p00001", "attribute").await;
    let count =
        async |client: &mut KnowledgeGraphClient<_>| -> u64 { kg_stats(client).await.triples };
    assert_eq!(
        attributes(&server).await,
        ["attr:color=navy", "attr:connectivity=bluetooth"]
    );

    // A bad line stops the file before its batch is sent: nothing is removed.
    let deletions = dir.path().join("gone.tsv");
    std::fs::write(
        &deletions,
        "item:p00001\tattribute\tattr:color=navy\nitem:p00001\tattribute\n",
    )
    .unwrap();
    let error = soukctl::delete_triples(
        channel(&server.url()).await,
        &deletions,
        None,
        &quiet(),
        &None,
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}")
            .contains("gone.tsv: stopped after 1 bad line(s) (--max-errors 0); nothing was sent"),
        "{error:#}"
    );
    assert_eq!(count(&mut client).await, lines);

    // Two held triples and one the graph never had.
    std::fs::write(
        &deletions,
        "item:p00001\tattribute\tattr:color=navy\n\
         item:p00001\tbrand\tbrand:Pixelon\n\
         item:p00001\tattribute\tattr:color=never-loaded\n",
    )
    .unwrap();
    let (_, response) = soukctl::delete_triples(
        channel(&server.url()).await,
        &deletions,
        None,
        &quiet(),
        &None,
    )
    .await
    .unwrap();
    let response = response.unwrap();
    assert_eq!((response.removed, response.not_found), (2, 1));
    assert_eq!(count(&mut client).await, lines - 2);
    assert_eq!(attributes(&server).await, ["attr:connectivity=bluetooth"]);
    let pixelon = client
        .neighbors(kg::NeighborsRequest {
            entity: "brand:Pixelon".into(),
            direction: kg::Direction::In as i32,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        pixelon.neighbors.iter().all(|n| n.entity != "item:p00001"),
        "the brand no longer lists the item"
    );

    // A bad removal refuses its batch with the index named; the graph is unchanged.
    let status = client
        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
            triples: vec![triple("x:a", "likes", "x:b")],
            remove: vec![triple("item:p00001", "", "brand:Pixelon")],
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_invalid(&status, "batch 0, removal 0: relation is empty");
    assert_eq!(count(&mut client).await, lines - 2);

    // After a restart the removals hold; loading the file again brings back exactly them.
    server.stop().await.unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    assert_eq!(count(&mut client).await, lines - 2);
    assert_eq!(attributes(&server).await, ["attr:connectivity=bluetooth"]);
    let (_, again) =
        soukctl::load_triples(channel(&server.url()).await, &file, None, &quiet(), &None)
            .await
            .unwrap();
    assert_eq!(again.unwrap().inserted, 2);
    assert_eq!(count(&mut client).await, lines);

    // A discontinued brand: every edge of the entity goes in one batch.
    let edges_of = async |client: &mut KnowledgeGraphClient<_>, entity: &str| -> u64 {
        client
            .neighbors(kg::NeighborsRequest {
                entity: entity.into(),
                direction: kg::Direction::Both as i32,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .total
    };
    let auralis = edges_of(&mut client, "brand:Auralis").await;
    assert!(auralis > 5, "{auralis}");
    let cleared = soukctl::clear_entities(
        channel(&server.url()).await,
        vec!["brand:Auralis".into(), "brand:nobody".into()],
        &None,
    )
    .await
    .unwrap();
    assert_eq!((cleared.removed, cleared.not_found), (auralis, 1));
    assert_eq!(edges_of(&mut client, "brand:Auralis").await, 0);
    assert_eq!(count(&mut client).await, lines - auralis);
    let status = client
        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
            remove_entities: vec!["brand:\tAuralis".into()],
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_invalid(
        &status,
        "batch 0, entity to remove 0: entity contains a control character",
    );
}

/// Every colour's items, in the order the graph lists them.
async fn colour_lists(
    client: &mut KnowledgeGraphClient<tonic::transport::Channel>,
) -> Vec<Vec<String>> {
    let mut lists = Vec::new();
    for c in 0..7 {
        let found = client
            .neighbors(kg::NeighborsRequest {
                entity: format!("color:{c}"),
                relation: "color".into(),
                direction: kg::Direction::In as i32,
                limit: 10_000,
            })
            .await
            .unwrap()
            .into_inner();
        lists.push(found.neighbors.into_iter().map(|n| n.entity).collect());
    }
    lists
}

/// Items of the churn tests' shop: each with a colour and one of 13 brands.
const ITEMS: usize = 10_000;

/// Item `i`'s colour after `round` recolourings.
fn colour(i: usize, round: usize) -> String {
    format!("color:{}", (i + round) % 7)
}

/// Loads the shop: [`ITEMS`] items, 1,000 a batch.
async fn load_shop(client: &mut KnowledgeGraphClient<tonic::transport::Channel>) {
    let facts = |i: usize| {
        let item = format!("item:{i}");
        vec![
            triple(&item, "color", &colour(i, 0)),
            triple(&item, "brand", &format!("brand:{}", i % 13)),
        ]
    };
    let load: Vec<_> = (0..ITEMS)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|ids| batch(ids.iter().flat_map(|&i| facts(i)).collect()))
        .collect();
    client
        .load_triples(futures::stream::iter(load))
        .await
        .unwrap();
}

/// A feed's batches that recolour `items` from their first colour to the next, 1,000 a batch:
/// each removes the old colour and adds the new one.
fn recolouring(items: std::ops::Range<usize>) -> Vec<kg::LoadTriplesRequest> {
    recolouring_from(items, 0)
}

/// [`recolouring`] from the colour of `round` to the next.
fn recolouring_from(items: std::ops::Range<usize>, round: usize) -> Vec<kg::LoadTriplesRequest> {
    items
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|ids| kg::LoadTriplesRequest {
            remove: ids
                .iter()
                .map(|&i| triple(&format!("item:{i}"), "color", &colour(i, round)))
                .collect(),
            triples: ids
                .iter()
                .map(|&i| triple(&format!("item:{i}"), "color", &colour(i, round + 1)))
                .collect(),
            ..Default::default()
        })
        .collect()
}

/// Loads [`recolouring`] of `items` and returns the colour lists after it, every item still
/// in exactly one.
async fn recolour(
    client: &mut KnowledgeGraphClient<tonic::transport::Channel>,
    items: std::ops::Range<usize>,
) -> Vec<Vec<String>> {
    client
        .load_triples(futures::stream::iter(recolouring(items)))
        .await
        .unwrap();
    let lists = colour_lists(client).await;
    assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), ITEMS);
    lists
}

/// Trains small TransE embeddings and returns two entities' rows (and the request for them).
async fn train_and_look_up(
    client: &mut KnowledgeGraphClient<tonic::transport::Channel>,
) -> (kg::EntityEmbeddingsRequest, kg::EntityEmbeddingsResponse) {
    let mut progress = client
        .train_embeddings(kg::TrainEmbeddingsRequest {
            model: kg::EmbeddingModel::Transe as i32,
            dim: 8,
            epochs: 2,
            seed: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while progress.message().await.unwrap().is_some() {}
    let lookup = kg::EntityEmbeddingsRequest {
        entities: vec!["item:42".into(), "brand:3".into()],
    };
    let rows = client
        .entity_embeddings(lookup.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rows.embeddings.len(), 2);
    (lookup, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compacted_store_serves_the_same_graph_and_embeddings_without_its_removals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    load_shop(&mut client).await;
    // A feed recolours 5,000 items, 1,000 a batch; a brand is discontinued.
    let mut edits = recolouring(0..5_000);
    edits.push(kg::LoadTriplesRequest {
        remove_entities: vec!["brand:12".into()],
        ..Default::default()
    });
    let done = client
        .load_triples(futures::stream::iter(edits))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.removed,
        5_000 + 769,
        "recoloured, and brand 12's items"
    );
    let (lookup, rows) = train_and_look_up(&mut client).await;
    let lists = colour_lists(&mut client).await;
    assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), ITEMS);
    let stats = kg_stats(&mut client).await;
    assert_eq!(stats.entities_without_triples, 1, "brand 12");
    drop(client);
    server.stop().await.unwrap();

    // `souk-kg --data-dir DIR --compact-into NEW`.
    let into = tempfile::tempdir().unwrap();
    let compact = |into: std::path::PathBuf| souk_kg::KgArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        server: server_args(None),
        compact_after: 0,
        compact_into: Some(into),
    };
    souk_kg::run(compact(into.path().to_path_buf()), std::future::pending())
        .await
        .unwrap();
    let again = souk_kg::run(compact(into.path().to_path_buf()), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("already holds a store"),
        "{again}"
    );
    {
        let store = souk_kg::store::SledStore::open(into.path()).unwrap();
        let (plain, removing) = store.log_records().unwrap();
        assert_eq!(removing, 0, "{plain} plain records and no removal record");
        let old = souk_kg::store::SledStore::open(dir.path()).unwrap();
        assert_eq!(
            old.log_records().unwrap().1,
            6,
            "the old store is left as it was"
        );
    }
    let server = start_kg(into.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    assert_eq!(
        colour_lists(&mut client).await,
        lists,
        "the compacted store lists the same items in the same order"
    );
    let compacted = kg_stats(&mut client).await;
    assert_eq!(
        (
            compacted.entities,
            compacted.entities_without_triples,
            compacted.relations,
            compacted.triples,
            compacted.embedding_model
        ),
        (
            stats.entities,
            stats.entities_without_triples,
            stats.relations,
            stats.triples,
            kg::EmbeddingModel::Transe as i32
        )
    );
    let after = client.entity_embeddings(lookup).await.unwrap().into_inner();
    assert_eq!(
        after.embeddings, rows.embeddings,
        "ids and trained rows unchanged"
    );
    // Loads and removals go on in the new store and survive a restart.
    let one_more = kg::LoadTriplesRequest {
        remove: vec![triple("item:0", "color", &colour(0, 1))],
        triples: vec![triple("item:0", "color", &colour(0, 2))],
        ..Default::default()
    };
    client
        .load_triples(futures::stream::iter(vec![one_more]))
        .await
        .unwrap();
    let after = colour_lists(&mut client).await;
    assert_eq!(after[2].first().map(String::as_str), Some("item:0"));
    drop(client);
    server.stop().await.unwrap();
    let server = start_kg(into.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    assert_eq!(colour_lists(&mut client).await, after);
}

/// Waits (up to 30 s) for the service (serving metrics on `metrics`) to have compacted its
/// store once: no removed triple left in it, one compaction counted. Returns its Stats then.
async fn compacted_once(
    client: &mut KnowledgeGraphClient<tonic::transport::Channel>,
    metrics: u16,
) -> kg::StatsResponse {
    assert!(
        soon_within(30, async || {
            kg_stats(client).await.removed_triples_in_store == 0
        })
        .await,
        "compacted"
    );
    // Counted once the new store is in use, a moment after Stats shows it.
    let ok = r#"souk_kg_compactions_total{result="ok"}"#;
    assert!(soon(async || metric_value(&scrape_metrics(metrics).await, ok) == 1.0).await);
    kg_stats(client).await
}

/// A store whose log holds enough removed triples is compacted by the service itself while it
/// serves: answers stay the same, the trained rows go along, the next write lands in the new
/// store, a restart opens that one, and the old store's files are gone from the directory.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_compacts_a_churned_store_while_serving_and_restarts_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = start_kg_compacting_after(dir.path(), 1_000).await;
    std::fs::write(dir.path().join("notes.txt"), "an operator's").unwrap();
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    load_shop(&mut client).await;
    let (lookup, rows) = train_and_look_up(&mut client).await;
    // 1,000 removed, but under an eighth of the log (21k triples listed): not yet.
    client
        .load_triples(futures::stream::iter(recolouring(0..1_000)))
        .await
        .unwrap();
    let churned = kg_stats(&mut client).await;
    assert_eq!(churned.removed_triples_in_store, 1_000);
    assert!(!dir.path().join("CURRENT").exists());
    // 5,000 removed of 25k listed: compacted once this stream is in.
    let lists = recolour(&mut client, 1_000..5_000).await;
    let churned = kg_stats(&mut client).await;
    let compacted = compacted_once(&mut client, metrics).await;
    assert_eq!(
        (compacted.entities, compacted.relations, compacted.triples),
        (churned.entities, churned.relations, churned.triples)
    );
    assert!(
        compacted.store_bytes < churned.store_bytes,
        "{} bytes after, {} before",
        compacted.store_bytes,
        churned.store_bytes
    );
    assert_eq!(colour_lists(&mut client).await, lists);
    let after = client
        .entity_embeddings(lookup.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.embeddings, rows.embeddings, "trained rows unchanged");
    // The old store's files go once it is closed; an operator's own file stays.
    let listing = || souk_testkit::dir_names(dir.path());
    assert!(
        soon(async || listing() == ["CURRENT", "compacted-1", "notes.txt"]).await,
        "{:?}",
        listing()
    );
    // The next write goes to the new store, and a restart opens it.
    client
        .load_triples(futures::stream::iter(recolouring(5_000..5_001)))
        .await
        .unwrap();
    let lists = colour_lists(&mut client).await;
    assert_eq!(kg_stats(&mut client).await.removed_triples_in_store, 1);
    drop(client);
    server.stop().await.unwrap();
    let server = start_kg(dir.path(), None).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    assert_eq!(colour_lists(&mut client).await, lists);
    let restarted = kg_stats(&mut client).await;
    assert_eq!(
        (restarted.triples, restarted.removed_triples_in_store),
        (compacted.triples, 1)
    );
    let after = client.entity_embeddings(lookup).await.unwrap().into_inner();
    assert_eq!(after.embeddings, rows.embeddings);
}

/// A compaction that fails (here it cannot name its new store: `CURRENT.new` is taken by a
/// directory, as a full disk or a read-only mount would fail it) leaves the store in use as it
/// was, removes what it wrote, says so in `Stats`, and the next start compacts.
#[tokio::test(flavor = "multi_thread")]
async fn a_compaction_that_fails_keeps_the_store_in_use_and_removes_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("CURRENT.new")).unwrap();
    let (server, metrics) = start_kg_compacting_after(dir.path(), 1_000).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    load_shop(&mut client).await;
    client
        .load_triples(futures::stream::iter(recolouring(0..5_000)))
        .await
        .unwrap();
    assert!(
        soon_within(30, async || kg_stats(&mut client)
            .await
            .compaction_failed_at
            > 0)
        .await,
        "the failure is reported"
    );
    let failed = kg_stats(&mut client).await;
    assert_eq!(failed.removed_triples_in_store, 5_000);
    let scrape = scrape_metrics(metrics).await;
    assert_eq!(
        metric_value(&scrape, r#"souk_kg_compactions_total{result="failed"}"#),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, r#"souk_kg_compactions_total{result="ok"}"#),
        0.0
    );
    assert_eq!(
        metric_value(&scrape, "souk_kg_removed_triples_in_store"),
        5_000.0
    );
    let listing = souk_testkit::dir_names(dir.path());
    assert!(
        !listing
            .iter()
            .any(|n| n.starts_with("compacted-") || n == "CURRENT"),
        "{listing:?}"
    );
    // The store in use takes the next load and keeps what it held.
    let lists = recolour(&mut client, 5_000..6_000).await;
    for i in [0, 4_999, 5_000, 5_999] {
        let c = (i + 1) % 7;
        assert!(
            lists[c].contains(&format!("item:{i}")),
            "item {i} recoloured"
        );
    }
    drop(client);
    server.stop().await.unwrap();

    std::fs::remove_dir(dir.path().join("CURRENT.new")).unwrap();
    let (server, metrics) = start_kg_compacting_after(dir.path(), 1_000).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    let compacted = compacted_once(&mut client, metrics).await;
    assert_eq!(compacted.compaction_failed_at, 0);
    let scrape = scrape_metrics(metrics).await;
    assert_eq!(
        metric_value(&scrape, "souk_kg_removed_triples_in_store"),
        0.0
    );
    assert_eq!(
        metric_value(&scrape, "souk_kg_compaction_writes_held_seconds_count"),
        1.0
    );
    assert_eq!(compacted.triples, failed.triples);
    assert_eq!(colour_lists(&mut client).await, lists);
}

/// A graceful stop waits for the compaction its last load set off: once `stop` returns the
/// directory holds one store, named by `CURRENT`, or the uncompacted one; never a copy under
/// way. A service started on the directory at once (a restart in one process) serves the whole
/// graph. Before, the compaction went on after the stop, and the new service could open the
/// old store as the compaction removed it, and serve an empty graph. Three rounds of churn,
/// stop and start: each a chance to stop in the middle of a compaction.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_waits_for_the_compaction_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = start_kg_compacting_after(dir.path(), 1_000).await;
    let mut client = KnowledgeGraphClient::new(channel(&server.url()).await);
    load_shop(&mut client).await;
    for round in 0..3 {
        // 5,000 removed, at least an eighth of the log: the last batch of this stream sets a
        // compaction off.
        client
            .load_triples(futures::stream::iter(recolouring_from(0..5_000, round)))
            .await
            .unwrap();
        server.stop().await.unwrap();
        let names = souk_testkit::dir_names(dir.path());
        let current = std::fs::read_to_string(dir.path().join("CURRENT")).ok();
        let settled = match current {
            Some(named) => names == ["CURRENT".to_string(), named.trim().to_string()],
            None => !names.iter().any(|n| n.starts_with("compacted-")),
        };
        assert!(
            settled,
            "round {round}: a compaction under way after the stop: {names:?}"
        );

        (server, _) = start_kg_compacting_after(dir.path(), 1_000).await;
        client = KnowledgeGraphClient::new(channel(&server.url()).await);
        let mut expected = vec![0; 7];
        for i in 0..ITEMS {
            expected[(i + if i < 5_000 { round + 1 } else { 0 }) % 7] += 1;
        }
        let lists = colour_lists(&mut client).await;
        assert_eq!(
            lists.iter().map(Vec::len).collect::<Vec<_>>(),
            expected,
            "round {round}"
        );
    }
}

/// The triples of one client's eight entities (`cK:e0`..`cK:e7`), read back both ways.
async fn triples_of_client(
    client: &mut KnowledgeGraphClient<tonic::transport::Channel>,
    k: usize,
) -> (BTreeSet<Fact>, BTreeSet<Fact>) {
    let entities: Vec<String> = (0..8).map(|i| format!("c{k}:e{i}")).collect();
    let mut both = (BTreeSet::new(), BTreeSet::new());
    for (direction, found) in [
        (kg::Direction::Out, &mut both.0),
        (kg::Direction::In, &mut both.1),
    ] {
        let answer = client
            .neighbors_of_each(kg::NeighborsOfEachRequest {
                entities: entities.clone(),
                direction: direction as i32,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for result in answer.results {
            for n in result.neighbors {
                let (head, tail) = match direction {
                    kg::Direction::Out => (result.entity.clone(), n.entity),
                    _ => (n.entity, result.entity.clone()),
                };
                found.insert((head, n.relation, tail));
            }
        }
    }
    both
}

type Fact = (String, String, String);

/// Three clients at once, each loading random batches (new triples, removals of triples held
/// and not, entities cleared) over its own eight entities, with an occasional training run,
/// into a service that compacts after every few removals; the service is stopped and started
/// again between rounds. After every batch and every start each client's triples are exactly
/// what its batches leave (a set model of the same edits), read both ways, and each answer
/// counts what was inserted and removed. (A longer run of this found the compaction that
/// outlived its service's stop: `a_stop_waits_for_the_compaction_under_way`.)
#[tokio::test(flavor = "multi_thread")]
async fn random_loads_keep_exactly_their_triples_through_compactions_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut models: Vec<BTreeSet<Fact>> = vec![BTreeSet::new(); 3];
    for round in 0..4u64 {
        let (server, metrics) = start_kg_compacting_after(dir.path(), 3).await;
        let url = server.url();
        let mut client = KnowledgeGraphClient::new(channel(&url).await);
        for (k, model) in models.iter().enumerate() {
            let read = triples_of_client(&mut client, k).await;
            assert_eq!(
                (&read.0, &read.1),
                (model, model),
                "round {round} start, client {k}"
            );
        }
        let mut clients = Vec::new();
        for (k, mut model) in models.into_iter().enumerate() {
            let mut client = KnowledgeGraphClient::new(channel(&url).await);
            clients.push(tokio::spawn(async move {
                let mut d = Draw(souk_ranker_core::rng::XorShift::new(
                    round * 10 + k as u64 + 1,
                ));
                let entity = |d: &mut Draw| format!("c{k}:e{}", d.below(8));
                let fact = |d: &mut Draw| (entity(d), format!("r{}", d.below(3)), entity(d));
                for step in 0..60 {
                    let inserts: Vec<Fact> = (0..d.below(6)).map(|_| fact(&mut d)).collect();
                    let mut removes: Vec<Fact> = (0..d.below(3)).map(|_| fact(&mut d)).collect();
                    if let Some(held) = model.iter().nth(d.below(model.len().max(1))) {
                        removes.push(held.clone());
                    }
                    let clears: Vec<String> = (0..usize::from(d.chance(0.15)))
                        .map(|_| entity(&mut d))
                        .collect();
                    let answer = client
                        .load_triples(futures::stream::iter(vec![kg::LoadTriplesRequest {
                            triples: inserts.iter().map(|(h, r, t)| triple(h, r, t)).collect(),
                            remove: removes.iter().map(|(h, r, t)| triple(h, r, t)).collect(),
                            remove_entities: clears.clone(),
                        }]))
                        .await
                        .unwrap()
                        .into_inner();
                    // Removals first, then the cleared entities' edges, then the new triples.
                    let before = model.len();
                    model.retain(|f| !removes.contains(f));
                    model.retain(|(h, _, t)| !clears.contains(h) && !clears.contains(t));
                    let removed = before - model.len();
                    let inserted = inserts
                        .iter()
                        .filter(|f| model.insert((*f).clone()))
                        .count();
                    let at = format!("round {round}, client {k}, step {step}");
                    assert_eq!(
                        (answer.removed, answer.inserted),
                        (removed as u64, inserted as u64),
                        "{at}"
                    );
                    let read = triples_of_client(&mut client, k).await;
                    assert_eq!((&read.0, &read.1), (&model, &model), "{at}");
                    if d.chance(0.05) {
                        let run = client
                            .train_embeddings(kg::TrainEmbeddingsRequest {
                                model: kg::EmbeddingModel::Rotate as i32,
                                dim: 4,
                                epochs: 1,
                                negatives: 2,
                                threads: 1,
                                ..Default::default()
                            })
                            .await;
                        match run {
                            Ok(progress) => {
                                let mut progress = progress.into_inner();
                                while progress.message().await.unwrap().is_some() {}
                            }
                            // Another client's run holds the trainer.
                            Err(status) => assert_eq!(status.code(), Code::Aborted, "{at}"),
                        }
                    }
                }
                model
            }));
        }
        models = Vec::new();
        for client in clients {
            models.push(client.await.unwrap());
        }
        let stats = kg_stats(&mut client).await;
        let held: usize = models.iter().map(BTreeSet::len).sum();
        assert_eq!(stats.triples, held as u64, "round {round}");
        let compacted = r#"souk_kg_compactions_total{result="ok"}"#;
        let compactions = metric_value(&scrape_metrics(metrics).await, compacted);
        assert!(
            compactions >= 1.0,
            "round {round}: {compactions} compactions"
        );
        server.stop().await.unwrap();
    }
}
