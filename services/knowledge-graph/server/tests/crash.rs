//! kill -9 in the middle of a load, against the real `souk-kg` process: the store reopens,
//! every batch the server applied is there, no batch is there in part, and loading everything
//! again ends in exactly the state of an uninterrupted load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use souk_proto::kg::v1 as kg;
use souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient;
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
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process, killed when the test ends however it ends (a failed assertion must not
/// leave a `souk-kg` running).
struct Server(Child);

impl Server {
    fn kill_9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &std::path::Path, port: u16) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_souk-kg"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn connect(port: u16) -> KnowledgeGraphClient<Channel> {
    let started = Instant::now();
    loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
        {
            let mut client = KnowledgeGraphClient::new(channel);
            if client.stats(kg::StatsRequest {}).await.is_ok() {
                return client;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "souk-kg did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let stream = async_stream(BATCHES);
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
}

fn futures_iter(
    batches: Vec<kg::LoadTriplesRequest>,
) -> impl tokio_stream::Stream<Item = kg::LoadTriplesRequest> {
    tokio_stream::iter(batches)
}

fn async_stream(n: usize) -> impl tokio_stream::Stream<Item = kg::LoadTriplesRequest> {
    use tokio_stream::StreamExt;
    tokio_stream::iter(0..n).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        batch(i)
    })
}
