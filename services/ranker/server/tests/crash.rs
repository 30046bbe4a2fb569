//! kill -9 of a primary ranker, against real `souk-ranker` processes: started again, it numbers
//! its writes on from the last one its store kept, so a replica that held exactly those writes
//! takes the later ones instead of copying the whole store again; killed in the middle of a
//! stream of writes, every write it answered is still there and the replica, never handed a
//! write before its flush, resumes and ends with exactly the primary's log; a replica that was down meanwhile, a few
//! writes behind, takes them from the primary's store, also when its copy was as of a write
//! an earlier run of the primary numbered. A ranker started on a store with another
//! user-id key (or with its key file lost) refuses to start. And a write that fails on the
//! disk: every later write is refused at once, reads go on, a restart with room writes again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use souk_proto::ranker::v1 as rk;
use souk_proto::ranker::v1::ranker_client::RankerClient;
use souk_testkit::{
    Process, assert_disk_refused, connect_when, free_port, store_write_failed, with_file_limit,
};
use tonic::transport::Channel;

/// A ranker on `port` with its store in `dir`, following `primary` if given. No encoder or
/// graph runs (events need neither).
fn spawn(dir: &std::path::Path, port: u16, primary: Option<u16>) -> Process {
    let mut command = ranker(dir, port, Some("crash-test"));
    if let Some(primary) = primary {
        command.args(["--primary", &format!("http://127.0.0.1:{primary}")]);
    }
    Process::spawn(command)
}

/// The command of a ranker on `port` with its store in `dir`, pseudonymising user ids with
/// `user_id_key` (`None`: the key file in `dir`).
fn ranker(dir: &std::path::Path, port: u16, user_id_key: Option<&str>) -> Command {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_souk-ranker"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args(["--encoder-url", &nowhere, "--kg-url", &nowhere]);
    if let Some(key) = user_id_key {
        command.args(["--user-id-key", key]);
    }
    command
}

async fn connect(port: u16) -> RankerClient<Channel> {
    connect_when(port, "souk-ranker", async |channel| {
        let mut client = RankerClient::new(channel);
        client
            .stats(rk::StatsRequest {})
            .await
            .is_ok()
            .then_some(client)
    })
    .await
}

async fn stats(client: &mut RankerClient<Channel>) -> rk::StatsResponse {
    client
        .stats(rk::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn events(from: usize, n: usize) -> rk::RecordInteractionsRequest {
    rk::RecordInteractionsRequest {
        interactions: (from..from + n)
            .map(|i| rk::Interaction {
                user_id: format!("u{}", i % 97),
                item_id: format!("p{}", i % 31),
                kind: rk::InteractionKind::Click as i32,
                value: 1.0,
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect(),
    }
}

async fn record(client: &mut RankerClient<Channel>, from: usize, n: usize) -> tonic::Result<u64> {
    let response = client
        .record_interactions(futures::stream::iter(vec![events(from, n)]))
        .await?;
    Ok(response.into_inner().recorded)
}

/// Waits until the replica says it is in sync and holds the primary's log; its stats then.
async fn caught_up(
    primary: &mut RankerClient<Channel>,
    replica: &mut RankerClient<Channel>,
) -> rk::StatsResponse {
    let started = Instant::now();
    loop {
        let (p, r) = (stats(primary).await, stats(replica).await);
        if r.in_sync && r.interactions == p.interactions {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replica did not catch up: primary {p:?}, replica {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_resumes_after_its_primary_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (primary_port, replica_port) = (free_port(), free_port());
    let mut primary = spawn(&dir.path().join("primary"), primary_port, None);
    let mut p = connect(primary_port).await;
    let mut replica = spawn(
        &dir.path().join("replica"),
        replica_port,
        Some(primary_port),
    );
    let mut r = connect(replica_port).await;
    for i in 0..20 {
        assert_eq!(record(&mut p, 10 * i, 10).await.unwrap(), 10);
    }
    let before = caught_up(&mut p, &mut r).await;
    assert_eq!(before.interactions, 200);
    assert_eq!((before.replica_copies, before.replica_resumes), (1, 0));

    // Killed while quiet: the store kept every write the replica holds; the replica resumes.
    primary.kill_9();
    let mut primary = spawn(&dir.path().join("primary"), primary_port, None);
    let mut p = connect(primary_port).await;
    assert_eq!(stats(&mut p).await.interactions, 200);
    assert_eq!(record(&mut p, 200, 10).await.unwrap(), 10);
    let after = caught_up(&mut p, &mut r).await;
    assert_eq!(after.interactions, 210);
    assert_eq!(
        (after.replica_copies, after.replica_resumes),
        (1, 1),
        "a replica holding every write the killed primary kept resumes instead of copying"
    );

    // Killed in the middle of a stream of writes: whatever the primary answered is kept, and
    // the replica, handed only writes the store had flushed, is never ahead of it: it resumes
    // and ends with exactly the primary's log.
    let writer = tokio::spawn(async move {
        let mut answered = 0;
        let mut from = 1_000;
        while record(&mut p, from, 5).await.is_ok() {
            answered += 5;
            from += 5;
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    primary.kill_9();
    let answered = writer.await.unwrap();
    assert!(answered > 0, "no write reached the primary before the kill");
    let mut primary = spawn(&dir.path().join("primary"), primary_port, None);
    let mut p = connect(primary_port).await;
    let kept = stats(&mut p).await.interactions;
    assert!(kept >= 210 + answered, "kept {kept}, answered {answered}");
    assert_eq!(record(&mut p, 100_000, 3).await.unwrap(), 3);
    let last = caught_up(&mut p, &mut r).await;
    assert_eq!(last.interactions, kept + 3);
    assert_eq!(
        (last.replica_copies, last.replica_resumes),
        (1, 2),
        "a replica following a primary killed mid-stream resumes"
    );

    // The replica is down while the primary takes writes and dies: started again, both find
    // the writes the replica lacks only in the primary's store, and it takes them from there.
    replica.kill_9();
    for i in 0..5 {
        assert_eq!(record(&mut p, 200_000 + 10 * i, 10).await.unwrap(), 10);
    }
    primary.kill_9();
    let mut primary = spawn(&dir.path().join("primary"), primary_port, None);
    let mut p = connect(primary_port).await;
    let _replica = spawn(
        &dir.path().join("replica"),
        replica_port,
        Some(primary_port),
    );
    let mut r = connect(replica_port).await;
    let behind = caught_up(&mut p, &mut r).await;
    assert_eq!(behind.interactions, kept + 3 + 50);
    assert_eq!(
        (behind.replica_copies, behind.replica_resumes),
        (0, 1),
        "a replica five writes behind a killed primary's store takes them from it"
    );

    // A new replica copies from the restarted primary before its first write, and is down
    // while the primary takes writes and dies: its copy is as of a write the primary's
    // earlier run numbered, and the primary's next run still knows it by that name.
    let second_port = free_port();
    let second_dir = dir.path().join("second");
    let mut second = spawn(&second_dir, second_port, Some(primary_port));
    let mut s = connect(second_port).await;
    let copied = caught_up(&mut p, &mut s).await;
    assert_eq!((copied.replica_copies, copied.replica_resumes), (1, 0));
    second.kill_9();
    for i in 0..3 {
        assert_eq!(record(&mut p, 300_000 + 10 * i, 10).await.unwrap(), 10);
    }
    primary.kill_9();
    let _primary = spawn(&dir.path().join("primary"), primary_port, None);
    let mut p = connect(primary_port).await;
    let _second = spawn(&second_dir, second_port, Some(primary_port));
    let mut s = connect(second_port).await;
    let resumed = caught_up(&mut p, &mut s).await;
    assert_eq!(resumed.interactions, kept + 3 + 50 + 30);
    assert_eq!(
        (resumed.replica_copies, resumed.replica_resumes),
        (0, 1),
        "a replica that copied before the primary's first write resumes after its next crash"
    );
}

/// What a ranker that must not start printed: it exits within 30 s, unsuccessfully.
fn refused_start(mut command: Command) -> String {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("the ranker started, and would find nobody's history");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn items_of(client: &mut RankerClient<Channel>, user: &str) -> u64 {
    let request = rk::UserProfileRequest {
        user_id: user.into(),
        ..Default::default()
    };
    client
        .user_profile(request)
        .await
        .unwrap()
        .into_inner()
        .interactions
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ranker_with_another_user_id_key_refuses_to_start_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = Process::spawn(ranker(dir.path(), port, None));
    let mut client = connect(port).await;
    assert_eq!(record(&mut client, 0, 97 * 3).await.unwrap(), 97 * 3);
    let held = items_of(&mut client, "u5").await;
    assert_eq!(held, 3, "u5's three items");
    first.kill_9();

    // The key file drawn at the first start, lost: no new key is drawn in its place.
    let key_file = dir.path().join("user-id.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let said = refused_start(ranker(dir.path(), free_port(), None));
    assert!(said.contains("user-id.key is missing or empty"), "{said}");
    assert!(!key_file.exists());
    let said = refused_start(ranker(dir.path(), free_port(), Some("another")));
    assert!(
        said.contains("--user-id-key (SOUK_USER_ID_KEY) given is not the key"),
        "{said}"
    );

    // The same key, as a flag: every shopper's history is there.
    let port = free_port();
    let _again = Process::spawn(ranker(dir.path(), port, Some(&key)));
    let mut client = connect(port).await;
    assert_eq!(items_of(&mut client, "u5").await, held);
    assert_eq!(stats(&mut client).await.interactions, 97 * 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_failed_on_the_disk_refuses_later_writes_at_once_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let mut command = ranker(dir.path(), port, Some("crash-test"));
    command.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    // sled's log fills its first 512 KiB segment first.
    let mut server = Process::spawn(with_file_limit(&command, 600));
    let mut client = connect(port).await;
    let failed = async |reason| store_write_failed(metrics_port, reason).await;
    assert_eq!(failed("io_error").await, 0.0);
    assert_eq!(record(&mut client, 0, 100).await.unwrap(), 100);

    assert_disk_refused(&record(&mut client, 100, 20_000).await.unwrap_err());
    // Refused at once: sled, called after such a failure, may wait forever.
    let again = tokio::time::timeout(Duration::from_secs(10), record(&mut client, 30_000, 10))
        .await
        .expect("a write after the failure is answered")
        .unwrap_err();
    assert_disk_refused(&again);
    assert_eq!(stats(&mut client).await.interactions, 100, "reads go on");
    // An operator's alert sees it.
    assert_eq!(failed("io_error").await, 1.0);
    assert_eq!(failed("disk_full").await, 0.0);
    // And the service stops when told to: its close skips sled's flush, which may wait
    // forever after the failure.
    assert!(server.terminate(10), "the ranker stops on SIGTERM");

    let _server = spawn(dir.path(), port, None);
    let mut client = connect(port).await;
    assert_eq!(stats(&mut client).await.interactions, 100);
    assert_eq!(record(&mut client, 100, 20_000).await.unwrap(), 20_000);
    assert_eq!(stats(&mut client).await.interactions, 20_100);
}
