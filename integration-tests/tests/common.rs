//! Starting real services for tests.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use souk_shared::config::ServerArgs;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub use souk_testkit::{model_dir, repo_root};

/// A running server and the switch that stops it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop; returns what the server ended with.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn spawn<F, Fut>(listener: TcpListener, serve: F) -> Running
where
    F: FnOnce(TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, rx));
    Running {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

pub fn server_args(admin_token: Option<&str>) -> ServerArgs {
    ServerArgs {
        admin_token: admin_token.map(String::from),
        ..ServerArgs::default()
    }
}

pub fn encoder_args(model_dir: PathBuf) -> souk_encoder::EncoderArgs {
    souk_encoder::EncoderArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_dir,
        device: "cpu".into(),
        dtype: "f32".into(),
        engine: "auto".into(),
        max_batch_tokens: 16_384,
        max_batch_texts: 512,
        queue_capacity: 256,
        inference_workers: 1,
        server: server_args(None),
    }
}

pub async fn start_encoder(args: souk_encoder::EncoderArgs) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn(listener, move |l, stop| {
        souk_encoder::serve(l, args, async move {
            let _ = stop.await;
        })
    })
}

/// An encoder of the default model that also serves Prometheus `/metrics` on the returned
/// port, once it answers.
pub async fn start_encoder_metrics() -> (Running, u16) {
    let port = free_port();
    let mut args = encoder_args(model_dir());
    args.server.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let server = start_encoder(args).await;
    wait_serving(&server.url()).await;
    (server, port)
}

/// An encoder on `addr` (one stopped there a moment ago: a restart with another model).
pub async fn start_encoder_at(addr: SocketAddr, args: souk_encoder::EncoderArgs) -> Running {
    let listener = TcpListener::bind(addr).await.unwrap();
    let running = spawn(listener, move |l, stop| {
        souk_encoder::serve(l, args, async move {
            let _ = stop.await;
        })
    });
    wait_serving(&running.url()).await;
    running
}

/// Another model of the same size: the default model cut to its first five layers (a copy
/// of its files in `dir` with `num_hidden_layers` 5; the sixth layer's weights are unused).
/// Its vectors have the default model's dimension but are not comparable with them.
pub fn five_layer_model(dir: &Path) -> PathBuf {
    let source = model_dir();
    let target = dir.join("minilm-5-layers");
    std::fs::create_dir_all(target.join("1_Pooling")).unwrap();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(source.join(file), target.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["num_hidden_layers"] = 5.into();
    std::fs::write(target.join("config.json"), config.to_string()).unwrap();
    target
}

/// One encoder for the whole test binary, on its own runtime thread (the model is 90 MB;
/// loading it once keeps the suite fast). Tests that kill the encoder start their own.
pub async fn shared_encoder() -> String {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    let addr = *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let model = model_dir();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                souk_encoder::serve(listener, encoder_args(model), std::future::pending()).await
            })
        });
        rx.recv().unwrap()
    });
    let url = format!("http://{addr}");
    wait_serving(&url).await;
    url
}

pub async fn start_kg(data_dir: &Path, admin_token: Option<&str>) -> Running {
    start_kg_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        data_dir,
        admin_token,
    )
    .await
}

/// A graph on `addr` (one stopped there a moment ago: a restart).
pub async fn start_kg_at(addr: SocketAddr, data_dir: &Path) -> Running {
    start_kg_on(TcpListener::bind(addr).await.unwrap(), data_dir, None).await
}

async fn start_kg_on(listener: TcpListener, data_dir: &Path, admin_token: Option<&str>) -> Running {
    let args = kg_args(&listener, data_dir, admin_token);
    start_kg_with(listener, args).await
}

fn kg_args(listener: &TcpListener, data_dir: &Path, admin_token: Option<&str>) -> souk_kg::KgArgs {
    souk_kg::KgArgs {
        listen: listener.local_addr().unwrap(),
        data_dir: data_dir.to_path_buf(),
        server: server_args(admin_token),
        compact_after: souk_kg::store::COMPACT_AFTER,
        compact_into: None,
    }
}

/// A graph that compacts its store from `removed` removed triples (and an eighth of its log),
/// and serves Prometheus `/metrics` on the returned port.
pub async fn start_kg_compacting_after(data_dir: &Path, removed: u64) -> (Running, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free_port();
    let mut args = souk_kg::KgArgs {
        compact_after: removed,
        ..kg_args(&listener, data_dir, None)
    };
    args.server.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    (start_kg_with(listener, args).await, port)
}

async fn start_kg_with(listener: TcpListener, args: souk_kg::KgArgs) -> Running {
    let running = spawn(listener, move |l, stop| {
        souk_kg::serve(l, args, async move {
            let _ = stop.await;
        })
    });
    wait_serving(&running.url()).await;
    running
}

pub async fn start_ranker(data_dir: &Path, encoder_url: &str, kg_url: &str) -> Running {
    start_ranker_ann(
        data_dir,
        encoder_url,
        kg_url,
        souk_ranker::DEFAULT_ANN_MIN_ITEMS,
    )
    .await
}

/// A ranker that takes dense candidates from an HNSW graph from `ann_min_items` items on.
pub async fn start_ranker_ann(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    ann_min_items: usize,
) -> Running {
    let server = server_args(None);
    start_ranker_with(data_dir, encoder_url, kg_url, ann_min_items, server, WATCH).await
}

/// A ranker with the server flags `server` (an admin token, JSON over HTTP).
pub async fn start_ranker_serving(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    server: ServerArgs,
) -> Running {
    let ann = souk_ranker::DEFAULT_ANN_MIN_ITEMS;
    start_ranker_with(data_dir, encoder_url, kg_url, ann, server, WATCH).await
}

/// How a test ranker watches the encoder's model.
#[derive(Debug, Clone, Copy)]
pub struct ModelWatch {
    /// `--encoder-check-ms`.
    pub every_ms: u64,
    /// `--reembed-on-model-change`.
    pub reembed: bool,
    /// `--embedding-dimensions`: the length vectors are cut to (`None`: whole).
    pub dimensions: Option<u32>,
}

/// Every 200 ms (30 s by default outside tests), no re-embedding of its own.
pub const WATCH: ModelWatch = ModelWatch {
    every_ms: 200,
    reembed: false,
    dimensions: None,
};

/// A ranker that watches the encoder's model as `watch` says.
pub async fn start_ranker_watching(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    watch: ModelWatch,
) -> Running {
    let ann = souk_ranker::DEFAULT_ANN_MIN_ITEMS;
    let server = server_args(None);
    start_ranker_with(data_dir, encoder_url, kg_url, ann, server, watch).await
}

/// A ranker that also serves Prometheus `/metrics` on the returned port.
pub async fn start_ranker_metrics(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
) -> (Running, u16) {
    let port = free_port();
    let mut server = server_args(None);
    server.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let ranker = start_ranker_with(
        data_dir,
        encoder_url,
        kg_url,
        souk_ranker::DEFAULT_ANN_MIN_ITEMS,
        server,
        WATCH,
    )
    .await;
    (ranker, port)
}

async fn start_ranker_with(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    ann_min_items: usize,
    server: ServerArgs,
    watch: ModelWatch,
) -> Running {
    let replica = Replica {
        at: "127.0.0.1:0".parse().unwrap(),
        primary: None,
        user_id_key: "test-secret",
        ann_min_items,
        accept_new_store: false,
        restore_from: None,
    };
    start_ranker_as(data_dir, encoder_url, kg_url, server, watch, replica).await
}

/// Where a test ranker listens and whose replica it is.
pub struct Replica<'a> {
    /// Its address (port 0: any; a ranker stopped there a moment ago: a restart).
    pub at: SocketAddr,
    /// `--primary`.
    pub primary: Option<&'a str>,
    /// `--user-id-key`: a replica must use its primary's.
    pub user_id_key: &'a str,
    /// `--ann-min-items`.
    pub ann_min_items: usize,
    /// `--accept-new-primary-store`.
    pub accept_new_store: bool,
    /// `--restore-from`.
    pub restore_from: Option<&'a str>,
}

/// A ranker as `replica` says, with the demo's settings otherwise; waits for SERVING (a
/// replica reports it once it holds its primary's copy).
pub async fn start_ranker_replica(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    replica: Replica<'_>,
) -> Running {
    let server = server_args(None);
    start_ranker_as(data_dir, encoder_url, kg_url, server, WATCH, replica).await
}

/// [`start_ranker_replica`] requiring `token` for admin calls (and sending it to its primary).
pub async fn start_ranker_replica_with_token(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    replica: Replica<'_>,
    token: &str,
) -> Running {
    let server = server_args(Some(token));
    start_ranker_as(data_dir, encoder_url, kg_url, server, WATCH, replica).await
}

/// [`start_ranker_replica`] without waiting for SERVING.
pub async fn spawn_ranker_replica(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    replica: Replica<'_>,
) -> Running {
    let listener = TcpListener::bind(replica.at).await.unwrap();
    let server = server_args(None);
    spawn_ranker(
        listener,
        data_dir,
        encoder_url,
        kg_url,
        server,
        WATCH,
        &replica,
    )
}

async fn start_ranker_as(
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    server: ServerArgs,
    watch: ModelWatch,
    replica: Replica<'_>,
) -> Running {
    let listener = TcpListener::bind(replica.at).await.unwrap();
    let running = spawn_ranker(
        listener,
        data_dir,
        encoder_url,
        kg_url,
        server,
        watch,
        &replica,
    );
    wait_serving(&running.url()).await;
    running
}

fn spawn_ranker(
    listener: TcpListener,
    data_dir: &Path,
    encoder_url: &str,
    kg_url: &str,
    server: ServerArgs,
    watch: ModelWatch,
    replica: &Replica<'_>,
) -> Running {
    let args = souk_ranker::RankerArgs {
        listen: listener.local_addr().unwrap(),
        data_dir: data_dir.to_path_buf(),
        encoder_url: encoder_url.to_string(),
        kg_url: kg_url.to_string(),
        dependency_timeout_ms: 2_000,
        load_timeout_ms: 60_000,
        query_cache_ttl_s: 300,
        embedding_dimensions: watch.dimensions,
        ann_min_items: replica.ann_min_items,
        popularity_half_life_days: souk_ranker::POPULARITY_HALF_LIFE_DAYS,
        user_id_key: Some(replica.user_id_key.into()),
        encoder_check_ms: watch.every_ms,
        reembed_on_model_change: watch.reembed,
        primary: replica.primary.map(String::from),
        accept_new_primary_store: replica.accept_new_store,
        restore_from: replica.restore_from.map(String::from),
        prepare_downgrade: false,
        server,
    };
    spawn(listener, move |l, stop| {
        souk_ranker::serve(l, args, async move {
            let _ = stop.await;
        })
    })
}

/// Polls grpc.health.v1 until SERVING (60 s at most).
pub async fn wait_serving(url: &str) {
    let started = Instant::now();
    loop {
        if soukctl::health(url)
            .await
            .is_ok_and(|status| status == "SERVING")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn channel(url: &str) -> Channel {
    soukctl::connect(url, "test server").await.unwrap()
}

pub fn quiet() -> soukctl::LoadOptions {
    soukctl::LoadOptions {
        batch_size: None,
        dry_run: false,
        max_errors: 0,
        quiet: true,
    }
}

/// A graph service on a fresh data directory with kg-data/triples.tsv loaded through
/// soukctl's loader; the directory lives as long as the returned guard.
pub async fn demo_graph() -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_kg(dir.path(), None).await;
    load_demo_triples(&server.url()).await;
    (server, dir)
}

/// Loads kg-data/triples.tsv into the graph at `kg_url` through soukctl's loader.
pub async fn load_demo_triples(kg_url: &str) {
    soukctl::load_triples(
        channel(kg_url).await,
        &repo_root().join("kg-data/triples.tsv"),
        None,
        &quiet(),
        &None,
    )
    .await
    .unwrap();
}

/// Loads kg-data/ (graph, catalog, events) through soukctl's loaders, as `souk demo` does.
pub async fn load_demo(kg_url: &str, ranker_url: &str) {
    load_demo_with_token(kg_url, ranker_url, &None).await;
}

/// [`load_demo`] into a ranker that needs the admin token `ranker_token`.
pub async fn load_demo_with_token(kg_url: &str, ranker_url: &str, ranker_token: &Option<String>) {
    let data = repo_root().join("kg-data");
    load_demo_triples(kg_url).await;
    soukctl::load_catalog(
        channel(ranker_url).await,
        &data.join("products.csv"),
        &quiet(),
        ranker_token,
    )
    .await
    .unwrap();
    soukctl::load_events(
        channel(ranker_url).await,
        &data.join("events.csv"),
        &quiet(),
        ranker_token,
    )
    .await
    .unwrap();
}

/// A graph and a ranker with the demo shop loaded, on the shared encoder.
pub struct Shop {
    pub kg: Running,
    pub ranker: Running,
    pub encoder_url: String,
    pub _dir: tempfile::TempDir,
}

pub async fn demo_shop() -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let encoder_url = shared_encoder().await;
    let kg = start_kg(&dir.path().join("kg"), None).await;
    let ranker = start_ranker(&dir.path().join("ranker"), &encoder_url, &kg.url()).await;
    load_demo(&kg.url(), &ranker.url()).await;
    Shop {
        kg,
        ranker,
        encoder_url,
        _dir: dir,
    }
}

/// Asserts that a call was refused with InvalidArgument and a message naming `what`: how every
/// service must answer bad input.
#[track_caller]
pub fn assert_invalid(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(what),
        "{:?} lacks {what:?}",
        status.message()
    );
}

/// A port nothing listens on now, never handed out before in this run.
pub use souk_testkit::free_port;

pub use souk_testkit::{metric_value, scrape_metrics};

/// Whether `done` answers yes within about 5 s (asks 50 ms apart).
pub async fn soon(done: impl AsyncFnMut() -> bool) -> bool {
    soon_within(5, done).await
}

/// Whether `done` answers yes within about `seconds` (asks 50 ms apart).
pub async fn soon_within(seconds: u64, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The graph's `Stats`.
pub async fn kg_stats(
    client: &mut souk_proto::kg::v1::knowledge_graph_client::KnowledgeGraphClient<Channel>,
) -> souk_proto::kg::v1::StatsResponse {
    client
        .stats(souk_proto::kg::v1::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The entities `entity`'s out-edges of `relation` reach in the graph at `kg_url`, sorted
/// (what the graph says of an item's attributes, brand or category).
pub async fn out_edges(kg_url: &str, entity: &str, relation: &str) -> Vec<String> {
    use souk_proto::kg::v1 as kg;
    let mut client = kg::knowledge_graph_client::KnowledgeGraphClient::new(channel(kg_url).await);
    let mut found: Vec<String> = client
        .neighbors(kg::NeighborsRequest {
            entity: entity.into(),
            relation: relation.into(),
            direction: kg::Direction::Out as i32,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .neighbors
        .into_iter()
        .map(|n| n.entity)
        .collect();
    found.sort();
    found
}
