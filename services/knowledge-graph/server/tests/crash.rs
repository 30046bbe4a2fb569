//! kill -9 in the middle of a load, against the real `souk-kg` process: the store reopens,
//! every batch the server applied is there, no batch is there in part, and loading everything
//! again ends in exactly the state of an uninterrupted load. The same for a stream of
//! removals. And a write that fails on the disk: every later write is refused at once, reads
//! go on, and a restart with room takes writes again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
use souk_testkit::{
    Process, assert_disk_refused, connect_when, free_port, store_write_failed, with_file_limit,
};
use tonic::transport::Channel;

const BATCH: usize = 2_000;
const BATCHES: usize = 60;

fn batch(i: usize) -> kg::LoadTriplesRequest {
    kg::LoadTriplesRequest {
        triples: (0..BATCH)
            .map(|j| kg::Triple {
                head: format!("b{i}:e{j}"),
                relation: format!("r{}", j % 7),
                tail: format!("b{i}:e{}", j + 1),
            })
            .collect(),
        ..Default::default()
    }
}

/// Batch `i`'s triples as removals.
fn removal(i: usize) -> kg::LoadTriplesRequest {
    kg::LoadTriplesRequest {
        remove: batch(i).triples,
        ..Default::default()
    }
}

fn spawn(dir: &std::path::Path, port: u16) -> Process {
    Process::spawn(graph(dir, port))
}

fn graph(dir: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_souk-kg"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir);
    command
}

async fn connect(port: u16) -> KnowledgeGraphClient<Channel> {
    connect_when(port, "souk-kg", async |channel| {
        let mut client = KnowledgeGraphClient::new(channel);
        client
            .stats(kg::StatsRequest {})
            .await
            .is_ok()
            .then_some(client)
    })
    .await
}

async fn triples(client: &mut KnowledgeGraphClient<Channel>) -> u64 {
    client
        .stats(kg::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .triples
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_load_keeps_whole_batches_and_reload_completes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn(dir.path(), port);
    let mut watcher = connect(port).await;
    let mut loader = watcher.clone();
    // Stream batches with a pause between them, so the kill lands mid-stream.
    let stream = async_stream(BATCHES, batch);
    let load = tokio::spawn(async move { loader.load_triples(stream).await });
    let started = Instant::now();
    let seen = loop {
        let n = triples(&mut watcher).await;
        if n >= (BATCH * 5) as u64 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "load made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill_9();
    assert!(
        load.await.unwrap().is_err(),
        "the interrupted stream must not report success"
    );

    let _server = spawn(dir.path(), port);
    let mut client = connect(port).await;
    let after = triples(&mut client).await;
    assert!(
        after >= seen,
        "applied batches survive: saw {seen}, after restart {after}"
    );
    assert_eq!(after % BATCH as u64, 0, "no partial batch: {after} triples");
    assert!(
        after < (BATCH * BATCHES) as u64,
        "the kill interrupted the load"
    );

    // Load everything again: exactly the uninterrupted state.
    let all: Vec<_> = (0..BATCHES).map(batch).collect();
    let response = client
        .load_triples(futures_iter(all))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.inserted, (BATCH * BATCHES) as u64 - after);
    let stats = client
        .stats(kg::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.triples, (BATCH * BATCHES) as u64);
    assert_eq!(stats.entities, (BATCHES * (BATCH + 1)) as u64);
    drop(_server);

    // A stream of removals, killed midway: whole batches removed or none of one.
    let mut server = spawn(dir.path(), port);
    let mut watcher = connect(port).await;
    let mut remover = watcher.clone();
    let total = (BATCH * BATCHES) as u64;
    let remove =
        tokio::spawn(async move { remover.load_triples(async_stream(BATCHES, removal)).await });
    let started = Instant::now();
    let seen = loop {
        let n = triples(&mut watcher).await;
        if n <= total - (BATCH * 5) as u64 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "removals made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill_9();
    assert!(remove.await.unwrap().is_err());
    let server = spawn(dir.path(), port);
    let mut client = connect(port).await;
    let after = triples(&mut client).await;
    assert!(
        after <= seen,
        "applied removals survive: saw {seen}, after {after}"
    );
    assert_eq!(after % BATCH as u64, 0, "no partial batch: {after} triples");
    assert!(after > 0, "the kill interrupted the removals");
    let all: Vec<_> = (0..BATCHES).map(removal).collect();
    let response = client
        .load_triples(futures_iter(all))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (response.removed, response.not_found),
        (after, total - after)
    );
    assert_eq!(triples(&mut client).await, 0);
    // Replaying the removal records at the next start agrees.
    drop(server);
    let _server = spawn(dir.path(), port);
    let mut client = connect(port).await;
    assert_eq!(triples(&mut client).await, 0);
}

/// `n` triples of one load request (~20 bytes each once stored).
fn triples_of(prefix: &str, n: usize) -> kg::LoadTriplesRequest {
    kg::LoadTriplesRequest {
        triples: (0..n)
            .map(|j| kg::Triple {
                head: format!("{prefix}:e{j}"),
                relation: "next".into(),
                tail: format!("{prefix}:e{}", j + 1),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_failed_on_the_disk_refuses_later_writes_at_once_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let mut command = graph(dir.path(), port);
    command.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    let mut server = Process::spawn(with_file_limit(&command, 100));
    let mut client = connect(port).await;
    let failed = async |reason| store_write_failed(metrics_port, reason).await;
    assert_eq!(failed("io_error").await, 0.0);
    let small = || futures_iter(vec![triples_of("small", 1_000)]);
    let big = || futures_iter(vec![triples_of("big", 20_000)]);
    client.load_triples(small()).await.unwrap();

    // A 20k-triple batch is a ~400 KiB record: past the limit.
    assert_disk_refused(&client.load_triples(big()).await.unwrap_err());
    // Refused at once, and again: sled, called after such a failure, may wait forever.
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        client.load_triples(futures_iter(vec![triples_of("later", 10)])),
    )
    .await
    .expect("a write after the failure is answered")
    .unwrap_err();
    assert_disk_refused(&again);
    // Reads are answered from memory.
    let neighbors = client
        .neighbors(kg::NeighborsRequest {
            entity: "small:e1".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(neighbors.neighbors.len(), 2, "{neighbors:?}");
    assert_eq!(triples(&mut client).await, 1_000);
    // An operator's alert sees it.
    assert_eq!(failed("io_error").await, 1.0);
    assert_eq!(failed("disk_full").await, 0.0);
    // And the service stops when told to (sled's flush may wait forever after the failure).
    assert!(server.terminate(10), "the graph stops on SIGTERM");

    // Restarted with room: the acknowledged batch is there, the failed one is not, and
    // writes are taken again.
    let _server = spawn(dir.path(), port);
    let mut client = connect(port).await;
    assert_eq!(triples(&mut client).await, 1_000);
    let loaded = client.load_triples(big()).await.unwrap().into_inner();
    assert_eq!(loaded.inserted, 20_000);
    assert_eq!(triples(&mut client).await, 21_000);
}

fn futures_iter(
    batches: Vec<kg::LoadTriplesRequest>,
) -> impl tokio_stream::Stream<Item = kg::LoadTriplesRequest> {
    tokio_stream::iter(batches)
}

fn async_stream(
    n: usize,
    make: fn(usize) -> kg::LoadTriplesRequest,
) -> impl tokio_stream::Stream<Item = kg::LoadTriplesRequest> {
    use tokio_stream::StreamExt;
    tokio_stream::iter(0..n).then(move |i| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        make(i)
    })
}

/// What the graph holds of [`batch`]es: Stats' triples and entities with triples, and for
/// each batch of `0..upto` whether its first edge is there.
async fn batches_held(
    client: &mut KnowledgeGraphClient<Channel>,
    upto: usize,
) -> (u64, u64, Vec<usize>) {
    let stats = client
        .stats(kg::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut held = Vec::new();
    for i in 0..upto {
        let found = client
            .neighbors(kg::NeighborsRequest {
                entity: format!("b{i}:e0"),
                direction: kg::Direction::Out as i32,
                limit: 10,
                ..Default::default()
            })
            .await;
        if found.is_ok_and(|f| !f.into_inner().neighbors.is_empty()) {
            held.push(i);
        }
    }
    (stats.triples, stats.entities, held)
}

/// kill -9 at random moments while the service loads batches, removes whole batches and
/// compacts its store (at least 2,000 removed triples and an eighth of the log): each start
/// holds exactly the batches it acknowledged, the one in flight at the kill whole or not at
/// all, whichever step of a compaction the kill cut (the copy, the catch-up, the switch, the
/// sweep of the old store).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_compactions_keeps_exactly_the_acknowledged_batches() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spawn_compacting = || {
        let mut command = graph(dir.path(), port);
        command.args(["--compact-after", "2000"]);
        Process::spawn(command)
    };
    let mut server = spawn_compacting();
    let mut client = connect(port).await;
    const START: usize = 30;
    client
        .load_triples(futures_iter((0..START).map(batch).collect()))
        .await
        .unwrap();
    // (acknowledged batches held, the next batch to add, the edit in flight: (batch, added))
    let model = Arc::new(Mutex::new((
        (0..START).collect::<BTreeSet<usize>>(),
        START,
        None::<(usize, bool)>,
    )));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut cut_copies = 0;
    for cycle in 0..8 {
        // Edits one batch at a time, each acknowledged before the next: removing a held
        // batch and adding a new one by turns.
        let mut editor = client.clone();
        let shared = model.clone();
        let edits = tokio::spawn(async move {
            for n in 0.. {
                let (id, add) = {
                    let mut m = shared.lock().unwrap();
                    let edit = if n % 2 == 0 && m.0.len() > 4 {
                        (*m.0.iter().nth(n % m.0.len()).unwrap(), false)
                    } else {
                        m.1 += 1;
                        (m.1 - 1, true)
                    };
                    m.2 = Some(edit);
                    edit
                };
                let message = if add { batch(id) } else { removal(id) };
                if editor
                    .load_triples(futures_iter(vec![message]))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut m = shared.lock().unwrap();
                if add {
                    m.0.insert(id);
                } else {
                    m.0.remove(&id);
                }
                m.2 = None;
            }
        });
        tokio::time::sleep(Duration::from_millis(100 + next(700))).await;
        server.kill_9();
        let _ = edits.await;
        let names = souk_testkit::dir_names(dir.path());
        let named = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap_or_default();
        cut_copies += names
            .iter()
            .filter(|n| n.starts_with("compacted-") && **n != named.trim())
            .count();

        server = spawn_compacting();
        client = connect(port).await;
        let (acked, upto, in_flight) = model.lock().unwrap().clone();
        let (triples, entities, held) = batches_held(&mut client, upto + 1).await;
        let mut with_in_flight = acked.clone();
        if let Some((id, add)) = in_flight {
            if add {
                with_in_flight.insert(id);
            } else {
                with_in_flight.remove(&id);
            }
        }
        let held: BTreeSet<usize> = held.into_iter().collect();
        assert!(
            held == acked || held == with_in_flight,
            "cycle {cycle}: held {held:?}\nacknowledged {acked:?}\nin flight {in_flight:?}"
        );
        assert_eq!(
            (triples, entities),
            (
                (BATCH * held.len()) as u64,
                ((BATCH + 1) * held.len()) as u64
            ),
            "cycle {cycle}: whole batches only"
        );
        // What the kill left in flight is settled either way now.
        let mut m = model.lock().unwrap();
        m.0 = held;
        m.2 = None;
    }
    eprintln!("kills that cut a compaction's copy: {cut_copies}");
}
