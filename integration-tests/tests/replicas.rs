//! Ranker replicas (`--primary`): a replica copies its primary's store, takes every later
//! write, serves the same rankings, passes events on, refuses admin writes, and catches up
//! after either side restarts.
use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;
use tonic::transport::Channel;

use crate::common::*;

use crate::random_requests::Draw;

async fn client(url: &str) -> RankerClient<Channel> {
    RankerClient::new(channel(url).await)
}

async fn stats(client: &mut RankerClient<Channel>) -> rk::StatsResponse {
    client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// What a shopper would see: ids, scores and reasons of a search and a recommendation.
async fn rankings(client: &mut RankerClient<Channel>) -> Vec<(String, String, Vec<String>)> {
    let mut seen = Vec::new();
    for (user, query) in [("u066", "tent"), ("u066", ""), ("", "wireless headphones")] {
        let request = rk::RankRequest {
            user_id: user.into(),
            query: query.into(),
            k: 8,
            explain: true,
            ..Default::default()
        };
        let response = client.rank(request).await.unwrap().into_inner();
        assert!(response.missing_signals.is_empty(), "{response:?}");
        for item in response.items {
            seen.push((item.id, format!("{:.5}", item.score), item.reasons));
        }
    }
    seen
}

/// Whether the replica's catalog, log and models are the primary's, as `Stats` counts them.
async fn same_counts(
    primary: &mut RankerClient<Channel>,
    replica: &mut RankerClient<Channel>,
) -> bool {
    let (p, r) = (stats(primary).await, stats(replica).await);
    r.in_sync
        && (
            p.items,
            p.users,
            p.interactions,
            &p.model_version,
            &p.cf_version,
            p.synonyms,
            p.pin_rules,
        ) == (
            r.items,
            r.users,
            r.interactions,
            &r.model_version,
            &r.cf_version,
            r.synonyms,
            r.pin_rules,
        )
}

fn purchase(user: &str, item: &str) -> rk::RecordInteractionsRequest {
    rk::RecordInteractionsRequest {
        interactions: vec![rk::Interaction {
            user_id: user.into(),
            item_id: item.into(),
            kind: rk::InteractionKind::Purchase as i32,
            value: 1.0,
            timestamp_ms: 0,
        }],
    }
}

/// `message`'s events stamped at `ms` (Unix ms).
fn stamped(mut message: rk::RecordInteractionsRequest, ms: i64) -> rk::RecordInteractionsRequest {
    for event in &mut message.interactions {
        event.timestamp_ms = ms;
    }
    message
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn replica_of<'a>(primary: &'a str) -> Replica<'a> {
    Replica {
        at: "127.0.0.1:0".parse().unwrap(),
        primary: Some(primary),
        user_id_key: "test-secret",
        ann_min_items: souk_ranker::DEFAULT_ANN_MIN_ITEMS,
        accept_new_store: false,
        restore_from: None,
    }
}

/// The shared encoder, a graph and a primary ranker (in `dir`/primary, graphs from
/// `ann_min_items` items) with the demo shop loaded.
async fn demo_primary(dir: &std::path::Path, ann_min_items: usize) -> (String, Running, Running) {
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.join("kg"), None).await;
    let primary = start_ranker_ann(&dir.join("primary"), &encoder, &kg.url(), ann_min_items).await;
    load_demo(&kg.url(), &primary.url()).await;
    (encoder, kg, primary)
}

/// A ranker without `--primary` on `dir` at `at` (a primary started again where the last
/// one listened), restoring its store from `restore_from` when given.
async fn primary_at(
    dir: &std::path::Path,
    (encoder, kg): (&str, &str),
    at: std::net::SocketAddr,
    restore_from: Option<&str>,
) -> Running {
    let primary = Replica {
        at,
        primary: None,
        restore_from,
        ..replica_of("")
    };
    start_ranker_replica(dir, encoder, kg, primary).await
}

/// A replica of `primary` in `dir`, once it holds the primary's state.
async fn replica_in_sync(
    dir: &std::path::Path,
    (encoder, kg): (&str, &str),
    primary: &str,
) -> (Running, RankerClient<Channel>) {
    let replica = start_ranker_replica(dir, encoder, kg, replica_of(primary)).await;
    let (mut p, mut r) = (client(primary).await, client(&replica.url()).await);
    assert!(soon_within(20, async || same_counts(&mut p, &mut r).await).await);
    (replica, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_serves_its_primarys_shop_and_follows_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let replica_dir = dir.path().join("replica");
    let replica =
        start_ranker_replica(&replica_dir, &encoder, &kg.url(), replica_of(&primary_url)).await;
    let (mut p, mut r) = (client(&primary.url()).await, client(&replica.url()).await);

    // The copy: SERVING means the whole catalog and log are there, and rankings match.
    let at_start = stats(&mut r).await;
    assert_eq!(at_start.follows, primary.url());
    assert!(same_counts(&mut p, &mut r).await, "{at_start:?}");
    assert!(
        at_start.items > 100 && at_start.interactions > 1000,
        "{at_start:?}"
    );
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);

    // Live writes of every kind reach it: a deletion, events sent to the replica (passed on
    // to the primary), synonyms, pinned results, fusion weights and a fitted collaborative
    // filter.
    let first_tent = p
        .rank(rk::RankRequest {
            query: "tent".into(),
            k: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items[0]
        .id
        .clone();
    let deleted = p
        .delete_items(rk::DeleteItemsRequest {
            ids: vec![first_tent.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let updated = p
        .update_items(futures::stream::iter(vec![rk::UpdateItemsRequest {
            updates: vec![rk::ItemUpdate {
                id: "p00002".into(),
                price: Some(7.25),
                ..Default::default()
            }],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.updated, 1);
    let recorded = r
        .record_interactions(futures::stream::iter(vec![purchase(
            "new-shopper",
            "p00002",
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        recorded.recorded, 1,
        "the replica passes events on to the primary"
    );
    p.set_synonyms(rk::SetSynonymsRequest {
        synonyms: vec![rk::Synonym {
            phrases: vec!["rucksack".into()],
            replacement: Some("backpack".into()),
        }],
    })
    .await
    .unwrap();
    p.set_pins(rk::SetPinsRequest {
        rules: vec![
            rk::PinRule {
                query: "sleeping bag".into(),
                items: vec!["p00110".into()],
                ..Default::default()
            },
            rk::PinRule {
                query: String::new(),
                category: "Coffee".into(),
                items: vec!["p00176".into()],
                ..Default::default()
            },
        ],
    })
    .await
    .unwrap();
    let weights = |dense| rk::FusionWeights {
        dense,
        bm25: 0.3,
        cf: 0.1,
        kg: 0.1,
        popularity: 0.05,
    };
    p.set_fusion(rk::SetFusionRequest {
        model: Some(rk::FusionModel {
            version: "replicated-1".into(),
            with_query: Some(weights(0.7)),
            without_query: Some(weights(0.0)),
            with_item: None,
        }),
    })
    .await
    .unwrap();
    let trained = p
        .train_cf(rk::TrainCfRequest {
            algorithm: rk::CfAlgorithm::ItemKnn as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        soon(async || same_counts(&mut p, &mut r).await).await,
        "{:?}",
        stats(&mut r).await
    );
    let now = stats(&mut r).await;
    assert_eq!(
        (now.items, now.interactions),
        (at_start.items - 1, at_start.interactions + 1)
    );
    let price_of = async |client: &mut RankerClient<Channel>| {
        client
            .rank(rk::RankRequest {
                candidate_ids: vec!["p00002".into()],
                k: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .items
            .first()
            .map(|i| i.price)
    };
    assert_eq!(
        price_of(&mut r).await,
        Some(7.25),
        "the update reached the replica"
    );
    assert_eq!(
        (
            now.model_version.as_str(),
            now.cf_version.as_str(),
            now.synonyms
        ),
        ("replicated-1", trained.version.as_str(), 1)
    );
    let tents = r
        .rank(rk::RankRequest {
            query: "tent".into(),
            k: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        tents.items.iter().all(|i| i.id != first_tent),
        "the deleted item is still served"
    );
    let bags = r
        .rank(rk::RankRequest {
            query: "sleeping bags".into(),
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        bags.items[0].pinned && bags.items[0].id == "p00110",
        "{bags:?}"
    );
    let coffee = r
        .rank(rk::RankRequest {
            filters: Some(rk::Filters {
                category: "Coffee".into(),
                ..Default::default()
            }),
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        coffee.items[0].pinned && coffee.items[0].id == "p00176",
        "the category page's rule is copied: {coffee:?}"
    );
    let profile = r
        .user_profile(rk::UserProfileRequest {
            user_id: "new-shopper".into(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.recent_items, vec!["p00002".to_string()]);
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);

    // A shopper asks to be forgotten: their events leave the primary's store and memory
    // and the replica's (`rankings` ranks for u066: both serve the same lists again).
    async fn recent(client: &mut RankerClient<Channel>, user: &str) -> Vec<String> {
        let request = rk::UserProfileRequest {
            user_id: user.into(),
            limit: 5,
        };
        client
            .user_profile(request)
            .await
            .unwrap()
            .into_inner()
            .recent_items
    }
    assert!(!recent(&mut r, "u066").await.is_empty());
    let before = stats(&mut p).await;
    let forget = |ids: &[&str]| rk::ForgetUsersRequest {
        user_ids: ids.iter().map(|id| id.to_string()).collect(),
    };
    // Stamped before the forget: as the events a replica's outbox still held would be.
    let before_forget = stamped(purchase("u066", "p00012"), unix_ms());
    // Ids are trimmed as `RecordInteractions` trims them.
    let forgot = p
        .forget_users(forget(&[" u066 ", "nobody-here"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forgot.users, 1);
    assert!(forgot.events > 0);
    assert!(
        soon(async || same_counts(&mut p, &mut r).await).await,
        "{:?}",
        stats(&mut r).await
    );
    let after = stats(&mut r).await;
    assert_eq!(
        (after.users, after.interactions),
        (before.users - 1, before.interactions - forgot.events)
    );
    assert!(recent(&mut p, "u066").await.is_empty());
    assert!(recent(&mut r, "u066").await.is_empty());
    assert_eq!(
        recent(&mut r, "new-shopper").await,
        vec!["p00002".to_string()]
    );
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);
    for bad in [forget(&[]), forget(&["u001", " "])] {
        let refused = p.forget_users(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    let refused = r.forget_users(forget(&["u001"])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // An event of theirs from before the forget that arrives now is turned away, passed
    // on by the replica as by the primary itself.
    let late = r
        .record_interactions(futures::stream::iter([before_forget.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((late.recorded, late.forgotten), (0, 1), "{late:?}");
    assert_eq!(stats(&mut p).await.interactions, after.interactions);
    assert!(recent(&mut p, "u066").await.is_empty());
    let now = after;

    // Admin writes are the primary's: refused, naming it, and nothing changes.
    let refused = r
        .delete_items(rk::DeleteItemsRequest {
            ids: vec!["p00001".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains(&primary.url()), "{refused:?}");
    let refused = r
        .upsert_items(futures::stream::iter(Vec::<rk::UpsertItemsRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(stats(&mut r).await.items, now.items);

    // The replica restarts while the primary changes: it serves its last copy at once, then
    // takes the writes it missed from the primary, which kept them: no copy.
    assert_eq!((now.replica_copies, now.replica_resumes), (1, 0), "{now:?}");
    replica.stop().await.unwrap();
    p.delete_items(rk::DeleteItemsRequest {
        ids: vec!["p00001".into()],
    })
    .await
    .unwrap();
    p.record_interactions(futures::stream::iter(vec![
        purchase("u066", "p00004"),
        purchase("new-shopper", "p00005"),
    ]))
    .await
    .unwrap();
    // Many writes to take: a replica reports in sync only once it took them all.
    const MISSED: u64 = 300;
    for i in 0..MISSED {
        let item = format!("p{:05}", 10 + i % 50);
        p.record_interactions(futures::stream::iter(vec![purchase("u070", &item)]))
            .await
            .unwrap();
    }
    let replica =
        start_ranker_replica(&replica_dir, &encoder, &kg.url(), replica_of(&primary_url)).await;
    let mut r = client(&replica.url()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first_in_sync = loop {
        let s = stats(&mut r).await;
        if s.in_sync {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    assert_eq!(
        (first_in_sync.items, first_in_sync.interactions),
        (now.items - 1, now.interactions + 2 + MISSED),
        "a resumed replica reports in sync only once it holds every write it missed"
    );
    assert!(same_counts(&mut p, &mut r).await, "{first_in_sync:?}");
    let resumed = stats(&mut r).await;
    assert_eq!(
        (resumed.replica_copies, resumed.replica_resumes),
        (0, 1),
        "a restarted replica takes only the writes it missed"
    );
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);

    // The primary restarts (a graceful stop does not wait on its replica's stream): the
    // replica serves meanwhile, reconnects, copies again and takes later writes.
    let primary_addr = primary.addr;
    let before = stats(&mut p).await.interactions;
    primary.stop().await.unwrap();
    assert_eq!(
        stats(&mut r).await.items,
        now.items - 1,
        "a replica serves while its primary is away"
    );
    // Events sent to the replica meanwhile wait in its outbox, on its disk: a replica
    // restarted in between still holds them.
    // The forgotten shopper's event from before the forget among them is turned away
    // when the outbox delivers it.
    let away = vec![
        purchase("u901", "p00010"),
        before_forget,
        purchase("u902", "p00011"),
    ];
    let queued = r
        .record_interactions(futures::stream::iter(away))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((queued.recorded, queued.queued), (0, 3), "{queued:?}");
    let bad = r
        .record_interactions(futures::stream::iter(vec![purchase("", "p00010")]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    replica.stop().await.unwrap();
    let replica =
        start_ranker_replica(&replica_dir, &encoder, &kg.url(), replica_of(&primary_url)).await;
    let mut r = client(&replica.url()).await;
    assert_eq!(stats(&mut r).await.outbox, 3);
    let primary = primary_at(
        &dir.path().join("primary"),
        (&encoder, &kg.url()),
        primary_addr,
        None,
    )
    .await;
    let mut p = client(&primary.url()).await;
    p.delete_items(rk::DeleteItemsRequest {
        ids: vec!["p00003".into()],
    })
    .await
    .unwrap();
    assert!(
        soon_within(20, async || same_counts(&mut p, &mut r).await
            && stats(&mut r).await.outbox == 0)
        .await,
        "{:?}",
        stats(&mut r).await
    );
    let resumed = stats(&mut r).await;
    assert_eq!(resumed.items, now.items - 2);
    assert_eq!(
        (resumed.replica_copies, resumed.replica_resumes),
        (0, 1),
        "a primary stopped cleanly numbers on from its last write: the replica resumes"
    );
    assert_eq!(
        stats(&mut p).await.interactions,
        before + 2,
        "the events sent while the primary was away reached it, once, but the forgotten \
         shopper's"
    );
    assert_eq!(recent(&mut p, "u066").await, vec!["p00004".to_string()]);
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);
}

/// The primary's volume is lost and it starts again empty: its replicas keep their copies
/// (and say why they do not follow), hold the events sent to them, and a replica's store
/// started as the primary serves the shop again, those events recorded; the other replica
/// takes the promoted store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_lost_its_store_empties_no_replica_and_a_replica_takes_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let primary_addr = primary.addr;
    let (one_dir, two_dir) = (dir.path().join("one"), dir.path().join("two"));
    let one = start_ranker_replica(&one_dir, &encoder, &kg.url(), replica_of(&primary_url)).await;
    let two = start_ranker_replica(&two_dir, &encoder, &kg.url(), replica_of(&primary_url)).await;
    let mut p = client(&primary_url).await;
    let (mut r1, mut r2) = (client(&one.url()).await, client(&two.url()).await);
    assert!(
        soon_within(20, async || same_counts(&mut p, &mut r1).await
            && same_counts(&mut p, &mut r2).await)
        .await
    );
    let shop = stats(&mut p).await;
    assert!(shop.items > 100 && shop.interactions > 100, "{shop:?}");
    let shown = rankings(&mut p).await;

    // The primary comes back on an empty volume.
    primary.stop().await.unwrap();
    let empty = primary_at(
        &dir.path().join("lost"),
        (&encoder, &kg.url()),
        primary_addr,
        None,
    )
    .await;
    let mut e = client(&empty.url()).await;
    assert!(
        soon_within(30, async || !stats(&mut r1)
            .await
            .replica_refused
            .is_empty()
            && !stats(&mut r2).await.replica_refused.is_empty())
        .await,
        "{:?}",
        stats(&mut r1).await
    );
    let refusing = stats(&mut r1).await;
    assert!(
        refusing
            .replica_refused
            .contains("--accept-new-primary-store"),
        "{refusing:?}"
    );
    assert!(!refusing.in_sync);
    assert_eq!(
        (refusing.items, refusing.interactions),
        (shop.items, shop.interactions),
        "the replica keeps its copy"
    );
    assert_eq!(rankings(&mut r1).await, shown, "and serves it");
    // Events sent to a refusing replica wait in its outbox, not in the empty store.
    let held = r1
        .record_interactions(futures::stream::iter(vec![purchase("u901", "p00010")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((held.recorded, held.queued), (0, 1), "{held:?}");
    assert_eq!(stats(&mut e).await.interactions, 0);

    // Replica one's store is started as the primary (in a cluster: its volume copied to the
    // primary's); replica two takes it, and the held event is recorded once.
    empty.stop().await.unwrap();
    one.stop().await.unwrap();
    let promoted = primary_at(&one_dir, (&encoder, &kg.url()), primary_addr, None).await;
    let mut p = client(&promoted.url()).await;
    let now = stats(&mut p).await;
    assert_eq!(
        (now.items, now.interactions),
        (shop.items, shop.interactions + 1),
        "the promoted store holds the shop and the event its outbox held"
    );
    assert!(
        soon_within(30, async || same_counts(&mut p, &mut r2).await).await,
        "{:?}",
        stats(&mut r2).await
    );
    let taken = stats(&mut r2).await;
    assert!(taken.replica_refused.is_empty(), "{taken:?}");
    assert_eq!(
        taken.replica_copies, 2,
        "the promoted store's numbering is new: a copy"
    );
    assert_eq!(rankings(&mut r2).await, rankings(&mut p).await);
}

/// The primary's volume is lost; it starts again with `--restore-from` a replica: it copies
/// the replica's store before serving, keeping the events it took while empty, and the
/// replica then follows it (a copy of the same history), its held events delivered. A
/// replica in sync refuses to be restored from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_lost_its_store_restores_it_from_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let primary_addr = primary.addr;
    let (one, mut r) =
        replica_in_sync(&dir.path().join("one"), (&encoder, &kg.url()), &primary_url).await;
    let mut p = client(&primary_url).await;
    let refused = r
        .follow(rk::FollowRequest {
            restore: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let shop = stats(&mut p).await;

    primary.stop().await.unwrap();
    let empty = primary_at(
        &dir.path().join("lost"),
        (&encoder, &kg.url()),
        primary_addr,
        None,
    )
    .await;
    assert!(soon_within(30, async || !stats(&mut r).await.replica_refused.is_empty()).await);
    let held = r
        .record_interactions(futures::stream::iter(vec![purchase("u901", "p00010")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.queued, 1, "{held:?}");
    // A shop's event reaches the empty primary itself: kept over the restore.
    let mut e = client(&empty.url()).await;
    let direct = e
        .record_interactions(futures::stream::iter(vec![purchase("u902", "p00011")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(direct.recorded, 1, "{direct:?}");
    empty.stop().await.unwrap();

    let one_url = one.url();
    // Pod 0 starts again on the same volume, told to restore.
    let restored = primary_at(
        &dir.path().join("lost"),
        (&encoder, &kg.url()),
        primary_addr,
        Some(&one_url),
    )
    .await;
    let mut p = client(&restored.url()).await;
    let now = stats(&mut p).await;
    assert_eq!(
        (&now.cf_version, now.synonyms, now.items),
        (&shop.cf_version, shop.synonyms, shop.items),
        "restored before serving"
    );
    // The replica's held event may reach it at once.
    assert!(now.interactions > shop.interactions, "{now:?}");
    assert!(
        soon_within(30, async || same_counts(&mut p, &mut r).await
            && stats(&mut r).await.outbox == 0)
        .await,
        "{:?}",
        stats(&mut r).await
    );
    assert_eq!(
        stats(&mut p).await.interactions,
        shop.interactions + 2,
        "the event the empty store took and the one the replica held are both recorded"
    );
    assert!(stats(&mut r).await.replica_refused.is_empty());
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);
}

/// `from`, every file under it, copied to `to` (a backup of a stopped ranker's data).
/// Shoppers `who`0.. buy an item, each purchase its own write.
async fn purchases(primary: &mut RankerClient<Channel>, who: &str, count: usize) {
    for n in 0..count {
        let message = purchase(&format!("{who}{n}"), "p00010");
        primary
            .record_interactions(futures::stream::iter(vec![message]))
            .await
            .unwrap();
    }
}

/// The replica's `Stats` once it refuses its primary's store for a reason saying `why`.
async fn refusing_for(replica: &mut RankerClient<Channel>, why: &str) -> rk::StatsResponse {
    assert!(
        soon_within(30, async || stats(replica)
            .await
            .replica_refused
            .contains(why))
        .await,
        "{:?}",
        stats(replica).await
    );
    stats(replica).await
}

/// An older backup of the primary's store is put back in its place: the replica, whose
/// copy holds the writes the backup lacks, keeps serving it instead of copying the backup,
/// also once the backup took more writes of its own than it lacked; the primary started on
/// an empty volume and restored from the replica brings them back, and the replica follows
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_put_back_from_an_older_backup_empties_no_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let kg_url = kg.url();
    let services = (encoder.as_str(), kg_url.as_str());
    let primary_addr = primary.addr;
    let (primary_dir, backup) = (dir.path().join("primary"), dir.path().join("backup"));
    primary.stop().await.unwrap();
    souk_testkit::copy_dir(&primary_dir, &backup);
    let primary = primary_at(&primary_dir, services, primary_addr, None).await;
    let primary_url = primary.url();
    let (one, mut r) = replica_in_sync(&dir.path().join("one"), services, &primary_url).await;
    let mut p = client(&primary.url()).await;
    purchases(&mut p, "u91", 5).await;
    assert!(soon_within(20, async || same_counts(&mut p, &mut r).await).await);
    let shop = stats(&mut r).await;
    let at_primary = stats(&mut p).await;
    assert!(
        !shop.history.is_empty() && shop.history_write > 5,
        "{shop:?}"
    );
    assert_eq!(
        (&shop.history, shop.history_write),
        (&at_primary.history, at_primary.history_write),
        "a replica in sync holds its primary's history up to its last write"
    );
    primary.stop().await.unwrap();

    let put_back = primary_at(&backup, services, primary_addr, None).await;
    let mut b = client(&put_back.url()).await;
    assert_eq!(stats(&mut b).await.interactions, shop.interactions - 5);
    let refusing = refusing_for(&mut r, "lacks writes").await;
    assert!(!refusing.in_sync);
    let backup_stats = stats(&mut b).await;
    assert_eq!(backup_stats.history, refusing.history);
    assert_eq!(
        backup_stats.history_write + 5,
        refusing.history_write,
        "what an operator compares: the replica holds 5 writes more"
    );
    assert_eq!(
        (refusing.items, refusing.interactions),
        (shop.items, shop.interactions),
        "the replica keeps its copy"
    );
    // The backup's numbering passes the copy's while the replica is away.
    let one_dir = dir.path().join("one");
    one.stop().await.unwrap();
    purchases(&mut b, "u92", 8).await;
    let one =
        start_ranker_replica(&one_dir, services.0, services.1, replica_of(&primary_url)).await;
    let mut r = client(&one.url()).await;
    let refusing = refusing_for(&mut r, "writes of its own").await;
    assert_eq!(refusing.interactions, shop.interactions);

    put_back.stop().await.unwrap();
    let one_url = one.url();
    let restored = primary_at(
        &dir.path().join("restored"),
        services,
        primary_addr,
        Some(&one_url),
    )
    .await;
    let mut p = client(&restored.url()).await;
    assert_eq!(stats(&mut p).await.interactions, shop.interactions);
    assert!(
        soon_within(30, async || same_counts(&mut p, &mut r).await).await,
        "{:?}",
        stats(&mut r).await
    );
    assert!(stats(&mut r).await.replica_refused.is_empty());
}

/// The primary's store is lost and the copy of a replica that stopped early is started as
/// the primary: a replica that took later writes refuses to copy it (they would be lost),
/// keeps serving its copy, and copies it only when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_further_ahead_than_the_promoted_one_keeps_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let kg_url = kg.url();
    let services = (encoder.as_str(), kg_url.as_str());
    let (primary_url, primary_addr) = (primary.url(), primary.addr);
    let (one_dir, two_dir) = (dir.path().join("one"), dir.path().join("two"));
    let (one, _) = replica_in_sync(&one_dir, services, &primary_url).await;
    one.stop().await.unwrap();
    let mut p = client(&primary_url).await;
    purchases(&mut p, "u91", 3).await;
    let (two, mut r2) = replica_in_sync(&two_dir, services, &primary_url).await;
    let shop = stats(&mut r2).await;
    primary.stop().await.unwrap();

    let promoted = primary_at(&one_dir, services, primary_addr, None).await;
    let mut p = client(&promoted.url()).await;
    assert_eq!(stats(&mut p).await.interactions, shop.interactions - 3);
    let refusing = refusing_for(&mut r2, "promoted").await;
    assert_ne!(
        stats(&mut p).await.history,
        refusing.history,
        "the promoted copy goes on as a history of its own"
    );
    assert_eq!(refusing.interactions, shop.interactions, "its copy is kept");

    two.stop().await.unwrap();
    let promoted_url = promoted.url();
    let told = Replica {
        accept_new_store: true,
        ..replica_of(&promoted_url)
    };
    let two = start_ranker_replica(&two_dir, services.0, services.1, told).await;
    let mut r2 = client(&two.url()).await;
    assert!(soon_within(30, async || same_counts(&mut p, &mut r2).await).await);
}

/// A primary started with `--restore-from` while its replica still follows the old primary
/// (a supervisor's restart at once, before the replica has seen the old process go) asks
/// again until the replica lets it copy, instead of failing its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_waits_for_the_replica_to_see_its_primary_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let (one, _) =
        replica_in_sync(&dir.path().join("one"), (&encoder, &kg.url()), &primary_url).await;
    let shop = stats(&mut client(&primary_url).await).await;
    let one_url = one.url();
    // The old primary goes a second after the new one first asks.
    let (lost, kg_url) = (dir.path().join("lost"), kg.url());
    let restoring = primary_at(
        &lost,
        (&encoder, &kg_url),
        "127.0.0.1:0".parse().unwrap(),
        Some(&one_url),
    );
    let stop_later = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        primary.stop().await.unwrap();
    };
    let (restored, ()) = tokio::join!(restoring, stop_later);
    let now = stats(&mut client(&restored.url()).await).await;
    assert_eq!(
        (now.items, now.interactions),
        (shop.items, shop.interactions),
        "{now:?}"
    );
}

/// A restore cut short (the primary stopped mid-copy: its store holds part of one) is taken
/// again at the next start, though the store then holds items.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_cut_short_is_taken_again() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let primary_addr = primary.addr;
    let (one, mut r) =
        replica_in_sync(&dir.path().join("one"), (&encoder, &kg.url()), &primary_url).await;
    let mut p = client(&primary_url).await;
    let shop = stats(&mut p).await;
    primary.stop().await.unwrap();
    // What a copy stopped midway leaves: the mark, and one of the items.
    let lost = dir.path().join("lost");
    {
        let store = souk_ranker::store::RankerStore::open(&lost).unwrap();
        store.begin_sync().unwrap();
        let item = souk_ranker_core::item::Item {
            id: "p00001".into(),
            title: "half copied".into(),
            ..Default::default()
        };
        store.put_items(&[(item, vec![0.1; 384])]).unwrap();
    }
    let one_url = one.url();
    let restored = primary_at(&lost, (&encoder, &kg.url()), primary_addr, Some(&one_url)).await;
    let mut p = client(&restored.url()).await;
    let now = stats(&mut p).await;
    assert_eq!(
        (now.items, now.interactions),
        (shop.items, shop.interactions),
        "{now:?}"
    );
    assert!(soon_within(30, async || same_counts(&mut p, &mut r).await).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_another_user_id_key_refuses_to_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let primary_url = primary.url();
    let wrong = Replica {
        user_id_key: "another-secret",
        ..replica_of(&primary_url)
    };
    let replica =
        spawn_ranker_replica(&dir.path().join("replica"), &encoder, &kg.url(), wrong).await;
    // A replica with the right key copies the demo shop in well under this.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut r = client(&replica.url()).await;
    let s = stats(&mut r).await;
    assert!(!s.in_sync && s.items == 0, "{s:?}");
    assert_ne!(soukctl::health(&replica.url()).await.unwrap(), "SERVING");
}

/// The encoder moved to another model and the primary re-embedded its catalog: the replica
/// takes the new vectors and the new model's probe, and ranks with the new model as the
/// primary does (no signal lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_embedding_on_the_primary_reaches_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let other_model = five_layer_model(dir.path());
    let encoder = start_encoder(encoder_args(model_dir())).await;
    wait_serving(&encoder.url()).await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let primary = start_ranker(&dir.path().join("primary"), &encoder.url(), &kg.url()).await;
    load_demo(&kg.url(), &primary.url()).await;
    let primary_url = primary.url();
    let replica = start_ranker_replica(
        &dir.path().join("replica"),
        &encoder.url(),
        &kg.url(),
        replica_of(&primary_url),
    )
    .await;
    let (mut p, mut r) = (client(&primary.url()).await, client(&replica.url()).await);
    let before = rankings(&mut r).await;
    assert_eq!(before, rankings(&mut p).await);

    let addr = encoder.addr;
    encoder.stop().await.unwrap();
    let _other = start_encoder_at(addr, encoder_args(other_model)).await;
    let matches = async |c: &mut RankerClient<Channel>| stats(c).await.encoder == "matches";
    assert!(
        soon(async || !matches(&mut r).await).await,
        "the replica sees the new model"
    );
    let reembedded = p.reembed(rk::ReembedRequest {}).await.unwrap().into_inner();
    assert_eq!(reembedded.items, stats(&mut p).await.items);
    assert!(
        soon(async || matches(&mut r).await).await,
        "{:?}",
        stats(&mut r).await
    );
    let after = rankings(&mut r).await;
    assert_eq!(after, rankings(&mut p).await);
    assert_ne!(after, before, "the new model's vectors rank");
}

/// A catalog served through an HNSW graph: the replica takes the primary's graph with the
/// copy (saved as its own, read back instead of built) and ranks as the primary does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_reads_the_primarys_hnsw_graph_back() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), 0).await;
    let primary_url = primary.url();
    let replica_dir = dir.path().join("replica");
    let replica = start_ranker_replica(
        &replica_dir,
        &encoder,
        &kg.url(),
        Replica {
            ann_min_items: 0,
            ..replica_of(&primary_url)
        },
    )
    .await;
    let graph = std::fs::metadata(replica_dir.join("hnsw.graph")).unwrap();
    assert!(
        graph.len() > 311 * 384,
        "the primary's graph, {} bytes",
        graph.len()
    );
    let (mut p, mut r) = (client(&primary.url()).await, client(&replica.url()).await);
    assert_eq!(rankings(&mut r).await, rankings(&mut p).await);
}

/// (query, count) of a Stats' unmatched searches.
fn unmatched(stats: &rk::StatsResponse) -> Vec<(String, u64)> {
    stats
        .unmatched_queries
        .iter()
        .map(|q| (q.query.clone(), q.count))
        .collect()
}

/// A shop's searches go to whichever ranker the load balancer picks: the primary's Stats
/// lists the searches its replicas served too (each sends its counts every few seconds),
/// and a replica's its own. Both need an admin token, which the replica follows with and
/// sends its counts with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primarys_stats_list_the_searches_its_replicas_served() {
    const TOKEN: &str = "replica-test-token";
    let dir = tempfile::tempdir().unwrap();
    let encoder = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let primary = start_ranker_replica_with_token(
        &dir.path().join("primary"),
        &encoder,
        &kg.url(),
        Replica {
            primary: None,
            ..replica_of("")
        },
        TOKEN,
    )
    .await;
    load_demo_with_token(&kg.url(), &primary.url(), &Some(TOKEN.to_string())).await;
    let primary_url = primary.url();
    let _replica = start_ranker_replica_with_token(
        &dir.path().join("replica"),
        &encoder,
        &kg.url(),
        replica_of(&primary_url),
        TOKEN,
    )
    .await;
    let mut p = client(&primary.url()).await;
    let mut r = client(&_replica.url()).await;
    assert!(soon_within(20, async || same_counts(&mut p, &mut r).await).await);
    let search = |query: &str| rk::RankRequest {
        query: query.into(),
        k: 3,
        ..Default::default()
    };
    for query in ["Kobo eReader", "kobo  ereader", "cofee grindr", "tent"] {
        r.rank(search(query)).await.unwrap();
    }
    p.rank(search("kobo ereader")).await.unwrap();
    assert_eq!(
        unmatched(&stats(&mut r).await),
        [("kobo ereader".into(), 2)]
    );
    let whole_shop = [("kobo ereader".to_string(), 3)];
    assert!(
        soon_within(20, async || unmatched(&stats(&mut p).await) == whole_shop).await,
        "{:?}",
        stats(&mut p).await.unmatched_queries
    );
    let corrected: Vec<(String, String, u64)> = stats(&mut p)
        .await
        .corrected_queries
        .into_iter()
        .map(|q| (q.query, q.read_as, q.count))
        .collect();
    assert_eq!(
        corrected,
        [("cofee grindr".into(), "coffee grinder".into(), 1)]
    );
    // Each count is sent once: seconds later the primary still says 3, the replica 2.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(unmatched(&stats(&mut p).await), whole_shop);
    assert_eq!(
        unmatched(&stats(&mut r).await),
        [("kobo ereader".into(), 2)]
    );

    // Only replicas' counts in their own words are taken, and only by a primary.
    let bad = rk::RecordSearchesRequest {
        unmatched: vec![rk::QueryCount {
            query: "Kobo".into(),
            count: 1,
            over_by: 0,
        }],
        corrected: vec![],
    };
    let refused = p.record_searches(bad.clone()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "an admin call"
    );
    let with_token = |message: rk::RecordSearchesRequest| {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {TOKEN}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    };
    let refused = p.record_searches(with_token(bad)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("unmatched[0]"), "{refused:?}");
    let on_replica = r
        .record_searches(with_token(rk::RecordSearchesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(on_replica.code(), tonic::Code::FailedPrecondition);
}

/// What a ranker holds, as its callers read it: `Stats`' counts of the shop, every item
/// (title, brand, categories, price; read by re-ranking all listed ids), the shop's rules and
/// synonyms, some shoppers' profiles, and the rankings of [`rankings`].
async fn holdings(client: &mut RankerClient<Channel>) -> String {
    let s = stats(client).await;
    let (ids, items) = every_item(client).await;
    let items: Vec<_> = items
        .into_iter()
        .map(|i| (i.id, i.title, i.brand, i.category, i.price))
        .collect();
    // The rules, not how often each applied (each server counts its own rankings).
    let pins = client
        .get_pins(rk::GetPinsRequest {})
        .await
        .unwrap()
        .into_inner()
        .rules;
    let synonyms = client
        .get_synonyms(rk::GetSynonymsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut profiles = Vec::new();
    for user in SHOPPERS {
        let profile = client
            .user_profile(rk::UserProfileRequest {
                user_id: user.into(),
                limit: 5,
            })
            .await
            .unwrap()
            .into_inner();
        profiles.push((profile.interactions, profile.recent_items));
    }
    format!(
        "counts {:?}\nids {ids:?}\nitems {items:?}\npins {pins:?}\nsynonyms {synonyms:?}\n\
         profiles {profiles:?}\nrankings {:?}",
        (s.items, s.users, s.interactions, s.synonyms, s.pin_rules),
        rankings(client).await
    )
}

/// Every item's id, in order, and the item as `Rank` answers it (read by re-ranking all the
/// listed ids), in the same order.
async fn every_item(client: &mut RankerClient<Channel>) -> (Vec<String>, Vec<rk::RankedItem>) {
    let mut ids = Vec::new();
    loop {
        let page = client
            .list_item_ids(rk::ListItemIdsRequest {
                after: ids.last().cloned().unwrap_or_default(),
                limit: 1_000,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.ids);
        if !page.more {
            break;
        }
    }
    let mut items = client
        .rank(rk::RankRequest {
            k: ids.len() as u32,
            candidate_ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    items.sort_by(|a, b| a.id.cmp(&b.id));
    (ids, items)
}

/// Where the graph at `kg_url` does not state the brand and category leaf the catalog holds,
/// for the items [`random_write`] writes (also those deleted and added again under their
/// ids: the graph keeps a deleted item's facts, and the new ones replace them):
/// `(id, the graph's, the catalog's)`.
async fn graph_differs(
    client: &mut RankerClient<Channel>,
    kg_url: &str,
) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut differs = Vec::new();
    for item in every_item(client).await.1 {
        let written = item.id.starts_with("new-") || item.id.as_str() <= "p00060";
        if !written {
            continue;
        }
        let entity = format!("item:{}", item.id);
        let mut stated = out_edges(kg_url, &entity, "brand").await;
        stated.extend(out_edges(kg_url, &entity, "category").await);
        let mut held: Vec<String> = (!item.brand.is_empty())
            .then(|| format!("brand:{}", item.brand))
            .into_iter()
            .collect();
        held.push(format!("category:{}", item.category.join("/")));
        if stated != held {
            differs.push((item.id, stated, held));
        }
    }
    differs
}

/// A random test's draw and number of rounds: `SEED=N ROUNDS=M` from the environment, else
/// `seed` and 8.
fn seeded_rounds(seed: u64) -> (Draw, usize) {
    let seed = std::env::var("SEED").map_or(seed, |s| s.parse().unwrap());
    let rounds = std::env::var("ROUNDS").map_or(8, |s| s.parse().unwrap());
    (Draw(souk_ranker_core::rng::XorShift::new(seed)), rounds)
}

/// The shoppers of [`random_write`]'s events, whose profiles [`holdings`] reads.
const SHOPPERS: [&str; 5] = ["u010", "u066", "u901", "shopper-1", "shopper-2"];

/// One random write to the primary `p` (or, for events, through the replica `r` when
/// `through` is given): items added, renamed, repriced, restocked or deleted, shoppers'
/// events, shoppers forgotten, pinned results, synonyms.
async fn random_write(
    d: &mut Draw,
    p: &mut RankerClient<Channel>,
    through: Option<&mut RankerClient<Channel>>,
) {
    let item = |d: &mut Draw| match d.below(3) {
        0 => format!("new-{}", d.below(20)),
        _ => format!("p{:05}", 1 + d.below(60)),
    };
    let user = |d: &mut Draw| d.one(&SHOPPERS).to_string();
    match d.below(7) {
        0 => {
            let items = (0..1 + d.below(2))
                .map(|_| rk::Item {
                    id: item(d),
                    title: d
                        .one(&["trail tent", "camp stove", "wool socks", "kettle"])
                        .into(),
                    brand: d.one(&["Acme", "Pixelon", ""]).into(),
                    category: vec![d.one(&["Outdoor", "Kitchen"]).into()],
                    price: 5.0 + d.below(100) as f64,
                    in_stock: d.chance(0.8),
                    ..Default::default()
                })
                .collect();
            let message = rk::UpsertItemsRequest { items };
            p.upsert_items(futures::stream::iter(vec![message]))
                .await
                .unwrap();
        }
        1 => {
            let updates = (0..1 + d.below(3))
                .map(|_| rk::ItemUpdate {
                    id: item(d),
                    price: d.chance(0.7).then(|| 1.0 + d.below(500) as f64 / 4.0),
                    in_stock: d.chance(0.3).then(|| d.chance(0.5)),
                    ..Default::default()
                })
                .collect();
            let message = rk::UpdateItemsRequest { updates };
            p.update_items(futures::stream::iter(vec![message]))
                .await
                .unwrap();
        }
        2 => {
            let ids: Vec<String> = (0..1 + d.below(2)).map(|_| item(d)).collect();
            p.delete_items(rk::DeleteItemsRequest { ids })
                .await
                .unwrap();
        }
        3 => {
            p.forget_users(rk::ForgetUsersRequest {
                user_ids: vec![user(d)],
            })
            .await
            .unwrap();
        }
        4 => {
            let rules = ["tent", "stove", "socks"][..d.below(4)]
                .iter()
                .map(|query| rk::PinRule {
                    query: (*query).into(),
                    items: vec![item(d)],
                    ..Default::default()
                })
                .collect();
            p.set_pins(rk::SetPinsRequest { rules }).await.unwrap();
        }
        5 => {
            let synonyms = (0..d.below(2))
                .map(|_| rk::Synonym {
                    phrases: vec![d.one(&["rucksack", "cooker", "hose"]).into()],
                    replacement: Some(d.one(&["backpack", "stove", "socks"]).into()),
                })
                .collect();
            p.set_synonyms(rk::SetSynonymsRequest { synonyms })
                .await
                .unwrap();
        }
        _ => {
            let events: Vec<_> = (0..1 + d.below(3))
                .map(|_| purchase(&user(d), &item(d)))
                .collect();
            let to = match through {
                Some(r) if d.chance(0.5) => r,
                _ => p,
            };
            to.record_interactions(futures::stream::iter(events))
                .await
                .unwrap();
        }
    }
}

/// Random writes of every kind to the primary (some events through the replica), with the
/// replica or the primary stopped and started again at random between rounds (events sent
/// to the replica while its primary is away): after each round the replica holds what the
/// primary holds, as `holdings` reads them: counts, every item's fields, rules, synonyms,
/// profiles and rankings; and a primary restarted with nothing sent meanwhile holds what it
/// held. `SEED=N ROUNDS=M` draws another or a longer run (40 rounds of seeds 1-16 passed when
/// it was written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_writes_and_restarts_leave_the_replica_what_the_primary_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let kg_url = kg.url();
    let (primary_dir, replica_dir) = (dir.path().join("primary"), dir.path().join("replica"));
    let (primary_url, primary_addr) = (primary.url(), primary.addr);
    let mut primary = Some(primary);
    let (replica, mut r) = replica_in_sync(&replica_dir, (&encoder, &kg_url), &primary_url).await;
    let mut replica = Some(replica);
    let mut p = client(&primary_url).await;
    let (mut d, rounds) = seeded_rounds(11);
    for round in 0..rounds {
        for _ in 0..1 + d.below(10) {
            random_write(&mut d, &mut p, Some(&mut r)).await;
        }
        match d.below(5) {
            0 => {
                replica.take().unwrap().stop().await.unwrap();
                for _ in 0..d.below(4) {
                    random_write(&mut d, &mut p, None).await;
                }
                // More writes while it starts again (resumes or copies).
                let writes = async {
                    for _ in 0..d.below(6) {
                        random_write(&mut d, &mut p, None).await;
                    }
                };
                let (started, ()) = tokio::join!(
                    start_ranker_replica(&replica_dir, &encoder, &kg_url, replica_of(&primary_url)),
                    writes
                );
                r = client(&started.url()).await;
                replica = Some(started);
            }
            1 => {
                primary.take().unwrap().stop().await.unwrap();
                // Events sent meanwhile wait in the replica's outbox.
                for _ in 0..d.below(3) {
                    let event = purchase(d.one(&["u010", "shopper-1"]), "p00012");
                    r.record_interactions(futures::stream::iter(vec![event]))
                        .await
                        .unwrap();
                }
                let started =
                    primary_at(&primary_dir, (&encoder, &kg_url), primary_addr, None).await;
                p = client(&started.url()).await;
                primary = Some(started);
            }
            2 => {
                // A restart changes nothing a caller reads.
                let before = holdings(&mut p).await;
                primary.take().unwrap().stop().await.unwrap();
                let started =
                    primary_at(&primary_dir, (&encoder, &kg_url), primary_addr, None).await;
                p = client(&started.url()).await;
                primary = Some(started);
                let after = holdings(&mut p).await;
                assert!(
                    before == after,
                    "round {round}, the primary restarted:\nbefore {before}\nafter {after}"
                );
            }
            _ => {}
        }
        replica_holds_the_primarys(round, &mut p, &mut r).await;
    }
}

/// Waits for the replica `r` to catch up with the primary `p` (the same counts, its outbox
/// empty), asserts that it holds what the primary holds ([`holdings`]), and returns that.
async fn replica_holds_the_primarys(
    round: usize,
    p: &mut RankerClient<Channel>,
    r: &mut RankerClient<Channel>,
) -> String {
    assert!(
        soon_within(30, async || {
            same_counts(p, r).await && stats(r).await.outbox == 0
        })
        .await,
        "round {round}: primary {:?}\nreplica {:?}",
        stats(p).await,
        stats(r).await
    );
    let (held, copied) = (holdings(p).await, holdings(r).await);
    assert!(
        held == copied,
        "round {round}:\nprimary {held}\nreplica {copied}"
    );
    held
}

/// Random writes whose callers give up at a random moment (the call dropped after 0.1-400 ms, as
/// a deadline or a killed client drops it), some two at once: whatever the primary stored, it
/// serves, and its replica (which applies the store's writes) holds the same; a restart
/// changes nothing a caller reads. `SEED=N ROUNDS=M` as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_cut_short_leave_the_primary_serving_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (encoder, kg, primary) = demo_primary(dir.path(), souk_ranker::DEFAULT_ANN_MIN_ITEMS).await;
    let kg_url = kg.url();
    let (primary_dir, replica_dir) = (dir.path().join("primary"), dir.path().join("replica"));
    let (primary_url, primary_addr) = (primary.url(), primary.addr);
    let mut primary = Some(primary);
    let (_replica, mut r) = replica_in_sync(&replica_dir, (&encoder, &kg_url), &primary_url).await;
    let mut p = client(&primary_url).await;
    let (mut d, rounds) = seeded_rounds(5);
    let mut cut = 0;
    for round in 0..rounds {
        for _ in 0..10 + d.below(20) {
            // 0.1-400 ms, as often under 1 ms as over 100: a write is cut at any of its
            // steps (an upsert's embedding takes tens of ms, an event's store write one).
            let within = |d: &mut Draw| {
                let scale = 100 << d.below(12);
                std::time::Duration::from_micros((scale + d.below(scale)) as u64)
            };
            let first = within(&mut d);
            if d.chance(0.3) {
                // Two at once, each cut on its own.
                let mut other = Draw(souk_ranker_core::rng::XorShift::new(
                    1 + d.below(1 << 30) as u64,
                ));
                let second = within(&mut other);
                let (mut p2, mut r2) = (p.clone(), r.clone());
                let (a, b) = tokio::join!(
                    tokio::time::timeout(first, random_write(&mut d, &mut p, Some(&mut r))),
                    tokio::time::timeout(second, random_write(&mut other, &mut p2, Some(&mut r2))),
                );
                cut += usize::from(a.is_err()) + usize::from(b.is_err());
            } else {
                let write = random_write(&mut d, &mut p, Some(&mut r));
                if tokio::time::timeout(first, write).await.is_err() {
                    cut += 1;
                }
            }
        }
        let held = replica_holds_the_primarys(round, &mut p, &mut r).await;
        // Every stored batch's facts reached the graph (at once or through its outbox).
        assert!(
            soon(async || graph_differs(&mut p, &kg_url).await.is_empty()).await,
            "round {round}: the graph differs from the catalog: {:?}",
            graph_differs(&mut p, &kg_url).await
        );
        if d.chance(0.5) {
            primary.take().unwrap().stop().await.unwrap();
            let started = primary_at(&primary_dir, (&encoder, &kg_url), primary_addr, None).await;
            p = client(&started.url()).await;
            primary = Some(started);
            let after = holdings(&mut p).await;
            assert!(
                held == after,
                "round {round}, the primary restarted:\nbefore {held}\nafter {after}"
            );
        }
    }
    assert!(cut > rounds, "only {cut} writes were cut short");
}
