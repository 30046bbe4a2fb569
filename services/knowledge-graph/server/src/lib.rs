//! The knowledge-graph gRPC service (`souk.kg.v1.KnowledgeGraph`): triples persisted in sled
//! ([`store::SledStore`]) and mirrored in a petgraph [`souk_kg_core::Graph`] for traversal.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! let args = souk_kg::KgArgs::parse_from(["souk-kg", "--data-dir", "/tmp/kg"]);
//! souk_kg::run(args, souk_shared::shutdown::signal()).await
//! # }
//! ```
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::{Stream, StreamExt};
use souk_kg_core::{
    Change, Direction, Graph, KgError, NeighborQuery, PathQuery, Triple, TripleStore,
};
use souk_proto::kg::v1 as pb;
use souk_shared::config::ServerArgs;
use souk_shared::server::GrpcServer;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

pub mod embeddings;
mod metrics;
pub mod store;

use embeddings::Served;
use souk_kg_embed::{Config, Model, Side};
use store::SledStore;

/// Flags of `souk-kg`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "souk-kg",
    version,
    about = "souk's knowledge-graph service (gRPC)"
)]
pub struct KgArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SOUK_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Directory of the sled store (created when missing).
    #[arg(long, env = "SOUK_DATA_DIR", default_value = "souk-data/kg")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Removed triples from which the service compacts its store while it serves (and an
    /// eighth of its log at least): it writes the live graph into a new store inside
    /// `--data-dir` and switches to it; loads wait only while it takes in the batches loaded
    /// during its last catch-up (13-28 ms at 5M triples). 0: never.
    #[arg(long, env = "SOUK_COMPACT_AFTER", default_value_t = store::COMPACT_AFTER)]
    pub compact_after: u64,
    /// Instead of serving: write the graph of `--data-dir` into a new store at this directory,
    /// without the triples removed over time (names, ids and trained embeddings unchanged),
    /// and exit (a compact copy, for a backup). Stop the service first.
    #[arg(long, value_name = "DIR")]
    pub compact_into: Option<PathBuf>,
}

/// Binds `args.listen` and serves until `shutdown` (or, with `--compact-into`, compacts the
/// store and returns).
///
/// # Errors
/// When the address cannot be bound, the store cannot be opened or the server fails.
pub async fn run(args: KgArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(into) = args.compact_into {
        let from = args.data_dir;
        return tokio::task::spawn_blocking(move || compact(&from, &into)).await?;
    }
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "knowledge graph listening");
    serve(listener, args, shutdown).await
}

/// Writes the store at `from` into a new one at `into` without its removed triples.
fn compact(from: &std::path::Path, into: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let store = SledStore::open_data_dir(from)?;
    let before = store.size_on_disk();
    let done = store.compact_into(into)?;
    tracing::info!(
        from = %from.display(),
        into = %into.display(),
        triples = done.triples,
        removed = done.removed,
        records = done.records,
        bytes_before = before,
        bytes_after = done.bytes,
        bytes_copied = done.payload,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store compacted into a new directory"
    );
    Ok(())
}

/// Serves on `listener`; health turns SERVING once the store is open and the graph rebuilt.
///
/// # Errors
/// When the store cannot be opened or the transport fails.
pub async fn serve(
    listener: TcpListener,
    args: KgArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = Arc::new(KgService {
        loaded: OnceLock::new(),
    });
    let mut server = GrpcServer::new("knowledge-graph", args.server.options()).await?;
    server.add_service(
        pb::knowledge_graph_server::KnowledgeGraphServer::from_arc(state.clone())
            .max_decoding_message_size(64 * 1024 * 1024),
        &[],
    )?;
    let health = server.health();
    let metrics = metrics::KgMetrics::register(server.metrics().registry())?;
    // Open the store before serving traffic (a missing or locked directory stops startup), but
    // keep the port open meanwhile so probes see NOT_SERVING rather than a refused connection.
    let data_dir = args.data_dir.clone();
    let compact_after = args.compact_after;
    let opening = tokio::task::spawn_blocking(move || -> Result<Loaded, KgError> {
        let started = std::time::Instant::now();
        let store = SledStore::open_data_dir(&data_dir)?;
        store.report_to(&metrics.store_write_failed);
        let graph = Graph::from_snapshot(store.snapshot()?)?;
        let served = embeddings::load(store.db())?;
        tracing::info!(
            entities = graph.entity_count(),
            triples = graph.triple_count(),
            embeddings = served.as_ref().map(|s| s.config.model.name()),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graph rebuilt from the store"
        );
        Ok(Loaded {
            store: RwLock::new(Arc::new(store)),
            data_dir,
            compact_after,
            compacting: Mutex::new(()),
            compaction_failed: Mutex::new(None),
            metrics,
            graph: RwLock::new(graph),
            writer: Mutex::new(()),
            embeddings: RwLock::new(served),
            training: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        })
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server.serve(listener, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    let opened = tokio::select! {
        result = &mut serving => return result.map_err(Into::into),
        () = &mut shutdown => {
            let _ = stop_tx.send(());
            return serving.await.map_err(Into::into);
        }
        opened = opening => opened,
    };
    let loaded = match opened {
        Ok(Ok(loaded)) => {
            let loaded = Arc::new(loaded);
            let _ = state.loaded.set(loaded.clone());
            health.set_ready().await;
            // A store churned before this start (by an older build, or a stop that came
            // first) is compacted now.
            compact_when_due(loaded.clone());
            loaded
        }
        Ok(Err(error)) => {
            let _ = stop_tx.send(());
            serving.await?;
            return Err(anyhow::anyhow!("cannot open the graph store: {error}"));
        }
        Err(join) => {
            let _ = stop_tx.send(());
            serving.await?;
            return Err(anyhow::anyhow!("store opening panicked: {join}"));
        }
    };
    let served = tokio::select! {
        result = &mut serving => result,
        () = &mut shutdown => {
            let _ = stop_tx.send(());
            serving.await
        }
    };
    wind_down(loaded).await;
    served.map_err(Into::into)
}

/// Waits, once the server has stopped, for what still works on the data directory: a
/// compaction that runs (to its end; none starts after this) and a training run (its caller
/// gone, it stops at its next epoch and stores nothing). A process exiting would wait for them
/// anyway (the runtime joins its blocking threads); a caller of [`serve`] that opens the
/// directory again at once (a restart within one process) must not find the old service still
/// switching its stores: the new one would open the store being removed.
async fn wind_down(loaded: Arc<Loaded>) {
    loaded.stopping.store(true, Ordering::SeqCst);
    let waited = tokio::task::spawn_blocking(move || {
        drop(loaded.after_compaction());
        while loaded.training.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .await;
    if let Err(error) = waited {
        tracing::error!(%error, "waiting for the store's last compaction failed");
    }
}

struct Loaded {
    /// Swapped for a compacted one while serving (under `writer`).
    store: RwLock<Arc<SledStore>>,
    data_dir: PathBuf,
    /// `--compact-after`.
    compact_after: u64,
    /// Held by the one compaction that runs, from its start to the removal of the old
    /// store's files (a second one would write beside what that removal sweeps); the
    /// embeddings' save waits on it, since the compaction copies their trees without
    /// holding writes off.
    compacting: Mutex<()>,
    /// When the last compaction failed (cleared by one that succeeds): loads do not set off
    /// another before [`COMPACTION_RETRY`] has passed.
    compaction_failed: Mutex<Option<(std::time::Instant, std::time::SystemTime)>>,
    metrics: metrics::KgMetrics,
    graph: RwLock<Graph>,
    /// One writer at a time: the store assigns ids and the graph must mirror them in order.
    writer: Mutex<()>,
    /// The trained embeddings in service, if any.
    embeddings: RwLock<Option<Arc<Served>>>,
    /// Set while a training run holds the trainer (one at a time: it uses every core).
    training: AtomicBool,
    /// Set once the server has stopped: no compaction starts after it ([`wind_down`]).
    stopping: AtomicBool,
}

impl Loaded {
    /// The store in use (a compaction may replace it; a caller holding this one across that
    /// only delays closing the old one).
    fn store(&self) -> Result<Arc<SledStore>, KgError> {
        self.store
            .read()
            .map(|store| store.clone())
            .map_err(|_| KgError::Storage("store lock poisoned".into()))
    }

    /// Replaces the store in use (under `writer`, by a compaction).
    fn switch_store(&self, new: SledStore) -> Result<(), KgError> {
        *self
            .store
            .write()
            .map_err(|_| KgError::Storage("store lock poisoned".into()))? = Arc::new(new);
        Ok(())
    }

    /// Waits for a compaction that runs, and holds the next one off.
    fn after_compaction(&self) -> Result<std::sync::MutexGuard<'_, ()>, KgError> {
        self.compacting
            .lock()
            .map_err(|_| KgError::Storage("compaction lock poisoned".into()))
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, ()>, KgError> {
        self.writer
            .lock()
            .map_err(|_| KgError::Storage("writer lock poisoned".into()))
    }

    fn graph(&self) -> Result<std::sync::RwLockReadGuard<'_, Graph>, KgError> {
        self.graph
            .read()
            .map_err(|_| KgError::Storage("graph lock poisoned".into()))
    }

    fn graph_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Graph>, KgError> {
        self.graph
            .write()
            .map_err(|_| KgError::Storage("graph lock poisoned".into()))
    }

    /// Whether the store's log holds enough removed triples to compact it.
    fn compaction_due(&self) -> Result<bool, KgError> {
        let live = self.graph()?.triple_count() as u64;
        Ok(self.store()?.compaction_due(live, self.compact_after))
    }
}

/// How long after a failed compaction (a full disk, say) loads set off the next one: each
/// try costs a copy of the graph, so it is not retried after every load.
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// Compacts the store in the background when [`Loaded::compaction_due`] says so, unless one
/// failed less than [`COMPACTION_RETRY`] ago.
fn compact_when_due(loaded: Arc<Loaded>) {
    if let Ok(store) = loaded.store() {
        loaded.metrics.removed_in_store(store.removed_in_log());
    }
    if !loaded.compaction_due().unwrap_or(false) {
        return;
    }
    let failed_lately = loaded.compaction_failed.lock().is_ok_and(|failed| {
        failed
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < COMPACTION_RETRY)
    });
    if failed_lately {
        return;
    }
    tokio::task::spawn_blocking(move || {
        let result = compact_store(&loaded);
        if let Err(error) = &result {
            loaded.metrics.compaction_failed();
            tracing::error!(
                %error,
                retry_after_s = COMPACTION_RETRY.as_secs(),
                "store compaction failed; the store in use is unchanged, and loads try again \
                 after retry_after_s (a start tries at once)"
            );
        }
        if let Ok(mut failed) = loaded.compaction_failed.lock() {
            *failed = result
                .err()
                .map(|_| (std::time::Instant::now(), std::time::SystemTime::now()));
        }
    });
}

/// Writes the live graph into a new store inside the data directory and switches to it, then
/// closes the old store and removes its files. Writes go on while the graph is copied (from a
/// mark in the log) and while the records written since are copied after it (up to a second
/// mark); they are held off only while those written during that catch-up are copied and the
/// new store is named. Reads go on throughout (they use the in-memory graph and embeddings).
fn compact_store(loaded: &Loaded) -> Result<(), KgError> {
    // One at a time; the next load after this one looks again. Held to the end: the
    // embeddings' save waits on it (their trees are copied without the writer lock).
    let Ok(_compacting) = loaded.compacting.try_lock() else {
        return Ok(());
    };
    // Not after the service stopped (a restart in this process may be opening the directory).
    if loaded.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    // Another compaction may have come first.
    if !loaded.compaction_due()? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let old = loaded.store()?;
    let before = old.size_on_disk();
    tracing::info!(
        removed = old.removed_in_log(),
        "compacting the store while serving"
    );
    // Where the log stands, read with loads held off for that moment only.
    let mark = || {
        let _writer = loaded.writer()?;
        old.mark()
    };
    let next = old.begin_generation(&loaded.data_dir, &mark()?)?;
    // The batches loaded while the graph was copied (a long load's can be many), copied while
    // loads go on: only those loaded during this catch-up wait for the lock below.
    let next = old.catch_up(&loaded.data_dir, next, &mark()?)?;
    let writer = loaded.writer()?;
    let held = std::time::Instant::now();
    let (new, done) = old.finish_generation(&loaded.data_dir, next)?;
    let removed_since = new.removed_in_log();
    new.report_to(&loaded.metrics.store_write_failed);
    loaded.switch_store(new)?;
    drop(writer);
    let writes_held = held.elapsed();
    loaded.metrics.compacted(writes_held);
    loaded.metrics.removed_in_store(removed_since);
    tracing::info!(
        triples = done.triples,
        removed = done.removed,
        caught_up_records = done.caught_up,
        records_copied_while_held = done.held,
        bytes_before = before,
        bytes_after = done.bytes,
        bytes_copied = done.payload,
        seconds = started.elapsed().as_secs_f32(),
        writes_held_ms = writes_held.as_millis() as u64,
        "store compacted while serving"
    );
    // A call that took the old store just before the switch (Stats) is done with it soon.
    let mut old = old;
    for _ in 0..6_000 {
        match Arc::try_unwrap(old) {
            Ok(closed) => {
                drop(closed);
                return store::remove_stale(&loaded.data_dir);
            }
            Err(held) => old = held,
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!("the old store is still in use after 60 s; its files go at the next start");
    Ok(())
}

/// Clears `Loaded::training` when a run ends, however it ends.
struct TrainingSlot(Arc<Loaded>);

impl Drop for TrainingSlot {
    fn drop(&mut self) {
        self.0.training.store(false, Ordering::Release);
    }
}

struct KgService {
    loaded: OnceLock<Arc<Loaded>>,
}

/// Maps graph errors to gRPC codes; internal detail is logged, not sent.
fn status(error: KgError) -> Status {
    match error {
        KgError::InvalidInput(m) => Status::invalid_argument(m),
        KgError::NotFound(m) => Status::not_found(m),
        KgError::FailedPrecondition(m) => Status::failed_precondition(m),
        KgError::Storage(m) => {
            tracing::error!(error = %m, "graph storage failure");
            Status::internal("graph storage failure; see the service log")
        }
        // gRPC's code for a file system out of space; any other failure of the disk passes
        // when the service restarts (on another node, or after a repair).
        failed @ KgError::StoreFailed { full: true, .. } => {
            Status::resource_exhausted(failed.to_string())
        }
        failed @ KgError::StoreFailed { .. } => Status::unavailable(failed.to_string()),
    }
}

fn lock_poisoned() -> Status {
    Status::internal("graph lock poisoned by an earlier failure; restart the service")
}

impl KgService {
    fn loaded(&self) -> Result<Arc<Loaded>, Status> {
        self.loaded
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the graph store is still opening"))
    }
}

fn direction(d: i32) -> Direction {
    match pb::Direction::try_from(d) {
        Ok(pb::Direction::Out) => Direction::Out,
        Ok(pb::Direction::In) => Direction::In,
        _ => Direction::Both,
    }
}

fn neighbors_pb(found: Vec<souk_kg_core::Neighbor>) -> Vec<pb::Neighbor> {
    found
        .into_iter()
        .map(|n| pb::Neighbor {
            entity: n.entity,
            relation: n.relation,
            direction: direction_pb(n.direction),
        })
        .collect()
}

fn direction_pb(d: Direction) -> i32 {
    match d {
        Direction::Out => pb::Direction::Out as i32,
        Direction::In => pb::Direction::In as i32,
        Direction::Both => pb::Direction::Both as i32,
    }
}

/// Plans a batch against the in-memory mirror (ids, duplicates, removals: no disk reads),
/// persists the plan atomically and durably, then mirrors it. The writer lock keeps plans in
/// order.
fn apply_batch(
    loaded: &Loaded,
    remove: &[Triple],
    clear: &[String],
    insert: &[Triple],
) -> Result<Change, KgError> {
    let _writer = loaded.writer()?;
    let plan = loaded.graph()?.plan_edit(remove, clear, insert);
    loaded.store()?.persist(&plan)?;
    loaded.graph_mut()?.apply(&plan)?;
    Ok(plan)
}

/// Checks a batch's triples, naming the first bad one.
fn triples_of(batch: Vec<pb::Triple>, what: &str, batch_no: u64) -> Result<Vec<Triple>, Status> {
    batch
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let triple = Triple {
                head: t.head,
                relation: t.relation,
                tail: t.tail,
            };
            triple
                .validate()
                .map(|()| triple)
                .map_err(|e| refused_in_batch(batch_no, what, i, e))
        })
        .collect()
}

/// A batch refused for its `i`-th `what`; the stream's earlier batches stay applied.
fn refused_in_batch(batch_no: u64, what: &str, i: usize, error: KgError) -> Status {
    Status::invalid_argument(format!(
        "batch {batch_no}, {what} {i}: {error}; this batch was not applied, {batch_no} earlier batches were"
    ))
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::TrainProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::knowledge_graph_server::KnowledgeGraph for KgService {
    async fn load_triples(
        &self,
        request: Request<Streaming<pb::LoadTriplesRequest>>,
    ) -> Result<Response<pb::LoadTriplesResponse>, Status> {
        let loaded = self.loaded()?;
        let mut stream = request.into_inner();
        let mut response = pb::LoadTriplesResponse::default();
        while let Some(message) = stream.next().await {
            let message = message?;
            let batch_no = response.batches;
            let remove = triples_of(message.remove, "removal", batch_no)?;
            let clear = message.remove_entities;
            for (i, entity) in clear.iter().enumerate() {
                souk_kg_core::validate_field("entity", entity)
                    .map_err(|e| refused_in_batch(batch_no, "entity to remove", i, e))?;
            }
            let triples = triples_of(message.triples, "triple", batch_no)?;
            let received = triples.len() as u64;
            let writer = loaded.clone();
            let change = tokio::task::spawn_blocking(move || {
                apply_batch(&writer, &remove, &clear, &triples)
            })
            .await
            .map_err(|e| Status::internal(format!("load task failed: {e}")))?
            .map_err(status)?;
            response.received += received;
            response.inserted += change.new_triples.len() as u64;
            response.removed += change.removed.len() as u64;
            response.not_found += change.absent as u64;
            response.batches += 1;
        }
        compact_when_due(loaded);
        Ok(Response::new(response))
    }

    async fn neighbors(
        &self,
        request: Request<pb::NeighborsRequest>,
    ) -> Result<Response<pb::NeighborsResponse>, Status> {
        let request = request.into_inner();
        let query = NeighborQuery {
            entity: request.entity,
            relation: Some(request.relation).filter(|r| !r.is_empty()),
            direction: direction(request.direction),
            limit: request.limit as usize,
            prefix: None,
        };
        let loaded = self.loaded()?;
        let found = {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            graph.neighbors(&query).map_err(status)?
        };
        Ok(Response::new(pb::NeighborsResponse {
            neighbors: neighbors_pb(found.neighbors),
            total: found.total as u64,
        }))
    }

    async fn neighbors_of_each(
        &self,
        request: Request<pb::NeighborsOfEachRequest>,
    ) -> Result<Response<pb::NeighborsOfEachResponse>, Status> {
        let request = request.into_inner();
        if request.entities.is_empty() || request.entities.len() > 256 {
            return Err(Status::invalid_argument(format!(
                "entities must list 1..=256 entities, got {}",
                request.entities.len()
            )));
        }
        let loaded = self.loaded()?;
        let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
        let mut results = Vec::with_capacity(request.entities.len());
        for entity in request.entities {
            let query = NeighborQuery {
                entity: entity.clone(),
                relation: Some(request.relation.clone()).filter(|r| !r.is_empty()),
                direction: direction(request.direction),
                limit: request.limit as usize,
                prefix: Some(request.prefix.clone()).filter(|p| !p.is_empty()),
            };
            let found = match graph.neighbors(&query) {
                Ok(found) => found,
                // An entity (or relation) the graph does not hold has no edges.
                Err(KgError::NotFound(_)) => Default::default(),
                Err(error) => return Err(status(error)),
            };
            results.push(pb::EntityNeighbors {
                entity,
                neighbors: neighbors_pb(found.neighbors),
                total: found.total as u64,
            });
        }
        Ok(Response::new(pb::NeighborsOfEachResponse { results }))
    }

    async fn paths(
        &self,
        request: Request<pb::PathsRequest>,
    ) -> Result<Response<pb::PathsResponse>, Status> {
        let request = request.into_inner();
        let query = PathQuery {
            sources: request.sources,
            targets: request.targets,
            max_hops: request.max_hops,
            limit: request.limit as usize,
            relations: request.relations,
        };
        let loaded = self.loaded()?;
        let found = tokio::task::spawn_blocking(move || {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            graph.paths(&query).map_err(status)
        })
        .await
        .map_err(|e| Status::internal(format!("path task failed: {e}")))??;
        Ok(Response::new(pb::PathsResponse {
            paths: found
                .paths
                .into_iter()
                .map(|p| pb::Path {
                    source: p.source,
                    target: p.target,
                    steps: p
                        .steps
                        .into_iter()
                        .map(|s| pb::PathStep {
                            relation: s.relation,
                            direction: direction_pb(s.direction),
                            entity: s.entity,
                        })
                        .collect(),
                })
                .collect(),
            truncated: found.truncated,
            unknown: found.unknown,
        }))
    }

    async fn entity_embeddings(
        &self,
        request: Request<pb::EntityEmbeddingsRequest>,
    ) -> Result<Response<pb::EntityEmbeddingsResponse>, Status> {
        let request = request.into_inner();
        if request.entities.len() > MAX_LOOKUP {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_LOOKUP} entities per request, got {}",
                request.entities.len()
            )));
        }
        let loaded = self.loaded()?;
        let served = served(&loaded)?;
        let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
        let mut response = pb::EntityEmbeddingsResponse {
            model: pb::EmbeddingModel::from(served.config.model) as i32,
            ..Default::default()
        };
        for entity in request.entities {
            // An entity whose triples were all removed is no longer in the graph: its old
            // row would score a discontinued brand or a deleted item as if it were there.
            match graph
                .entity_id(&entity)
                .filter(|&id| graph.has_edges(id))
                .and_then(|id| served.embeddings.entity(id))
            {
                Some(row) => response.embeddings.push(pb::EntityEmbedding {
                    entity,
                    values: row.to_vec(),
                }),
                None => response.missing.push(entity),
            }
        }
        Ok(Response::new(response))
    }

    async fn similar_entities(
        &self,
        request: Request<pb::SimilarEntitiesRequest>,
    ) -> Result<Response<pb::SimilarEntitiesResponse>, Status> {
        let request = request.into_inner();
        let limit = check_limit(request.limit)?;
        let loaded = self.loaded()?;
        let served = served(&loaded)?;
        let found = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            let id = known_entity(&graph, &request.entity)?;
            let row = trained_row(&served, id, &request.entity)?;
            let norm = served.norms[id as usize].max(f32::MIN_POSITIVE);
            let width = served.embeddings.entity_width();
            let scored = served
                .embeddings
                .entities
                .chunks_exact(width)
                .zip(&served.norms)
                .enumerate()
                .filter(|&(other, _)| other as u32 != id && graph.has_edges(other as u32))
                .filter(|&(other, _)| {
                    request.prefix.is_empty()
                        || graph
                            .entity_name(other as u32)
                            .is_some_and(|n| n.starts_with(&request.prefix))
                })
                .map(|(other, (v, n))| {
                    let dot: f32 = v.iter().zip(row).map(|(a, b)| a * b).sum();
                    (other as u32, dot / (norm * n.max(f32::MIN_POSITIVE)))
                });
            Ok(named_top(&graph, scored, limit))
        })
        .await
        .map_err(|e| Status::internal(format!("similarity task failed: {e}")))??;
        Ok(Response::new(pb::SimilarEntitiesResponse {
            entities: found,
        }))
    }

    async fn predict_links(
        &self,
        request: Request<pb::PredictLinksRequest>,
    ) -> Result<Response<pb::PredictLinksResponse>, Status> {
        let request = request.into_inner();
        let limit = check_limit(request.limit)?;
        let (side, known_name) = match (request.head.is_empty(), request.tail.is_empty()) {
            (false, true) => (Side::Tail, request.head),
            (true, false) => (Side::Head, request.tail),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of head (to predict tails) or tail (to predict heads)",
                ));
            }
        };
        if request.relation.is_empty() {
            return Err(Status::invalid_argument("relation is required"));
        }
        let loaded = self.loaded()?;
        let served = served(&loaded)?;
        let found = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            let known = known_entity(&graph, &known_name)?;
            trained_row(&served, known, &known_name)?;
            let relation = graph.relation_id(&request.relation).ok_or_else(|| {
                Status::not_found(format!("unknown relation {:?}", request.relation))
            })?;
            let scores = served.embeddings.score_all(side, known, relation);
            if scores.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "relation {:?} was added after the embeddings were trained; train again",
                    request.relation
                )));
            }
            let exclude: std::collections::HashSet<u32> = if request.filter_known {
                let direction = match side {
                    Side::Tail => Direction::Out,
                    Side::Head => Direction::In,
                };
                graph
                    .linked(known, relation, direction)
                    .into_iter()
                    .collect()
            } else {
                Default::default()
            };
            // The entities the graph has at the predicted end of this relation.
            let seen: Option<std::collections::HashSet<u32>> = (!request.any_entity).then(|| {
                graph
                    .triples()
                    .filter(|&(_, r, _)| r == relation)
                    .map(|(h, _, t)| match side {
                        Side::Tail => t,
                        Side::Head => h,
                    })
                    .collect()
            });
            let scored = scores
                .into_iter()
                .enumerate()
                .map(|(id, s)| (id as u32, s))
                .filter(|(id, _)| graph.has_edges(*id) && !exclude.contains(id))
                .filter(|(id, _)| seen.as_ref().is_none_or(|seen| seen.contains(id)));
            Ok(named_top(&graph, scored, limit))
        })
        .await
        .map_err(|e| Status::internal(format!("prediction task failed: {e}")))??;
        Ok(Response::new(pb::PredictLinksResponse { entities: found }))
    }

    type TrainEmbeddingsStream = ProgressStream;

    async fn train_embeddings(
        &self,
        request: Request<pb::TrainEmbeddingsRequest>,
    ) -> Result<Response<Self::TrainEmbeddingsStream>, Status> {
        let config = train_config(&request.into_inner())?;
        let loaded = self.loaded()?;
        let (triples, entities, relations) = {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            let triples: Vec<[u32; 3]> = graph.triples().map(|(h, r, t)| [h, r, t]).collect();
            (triples, graph.entity_count(), graph.relation_count())
        };
        if triples.is_empty() {
            return Err(Status::failed_precondition(
                "the graph is empty: load triples before training",
            ));
        }
        if loaded
            .training
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Status::aborted(
                "a training run is already in progress; wait for it to finish",
            ));
        }
        let slot = TrainingSlot(loaded);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::TrainProgress, Status>>(16);
        tokio::task::spawn_blocking(move || {
            let loaded = &slot.0;
            let started = std::time::Instant::now();
            let result =
                souk_kg_embed::train::train(&config, entities, relations, &triples, |report, _| {
                    // A caller that went away cancels the run: nothing is stored.
                    tx.blocking_send(Ok(pb::TrainProgress {
                        epoch: report.epoch as u32,
                        epochs: report.epochs as u32,
                        loss: report.loss,
                        triples_per_second: report.triples_per_second,
                        done: false,
                    }))
                    .is_ok()
                });
            let trained = match result {
                Ok(trained) if trained.stopped_early => {
                    tracing::info!("embedding training cancelled: the caller went away");
                    return;
                }
                Ok(trained) => trained,
                Err(error) => {
                    let _ = tx.blocking_send(Err(Status::invalid_argument(error.to_string())));
                    return;
                }
            };
            let served = Served::new(config, trained.embeddings, triples.len());
            // After any compaction (it copies the embeddings' trees while writes go on, and
            // must not miss these rows), and under the writer lock.
            let saved = loaded.after_compaction().and_then(|_compaction| {
                let _writer = loaded.writer()?;
                loaded.store()?.save_embeddings(&served)
            });
            if let Err(error) = saved {
                let _ = tx.blocking_send(Err(status(error)));
                return;
            }
            let model = served.config.model.name();
            match loaded.embeddings.write() {
                Ok(mut current) => *current = Some(Arc::new(served)),
                Err(_) => {
                    let _ = tx.blocking_send(Err(lock_poisoned()));
                    return;
                }
            }
            tracing::info!(
                model,
                triples = triples.len(),
                seconds = started.elapsed().as_secs_f32(),
                "embeddings trained and serving"
            );
            let last = trained.reports.last();
            let _ = tx.blocking_send(Ok(pb::TrainProgress {
                epoch: last.map_or(0, |r| r.epoch as u32),
                epochs: last.map_or(0, |r| r.epochs as u32),
                loss: last.map_or(0.0, |r| r.loss),
                triples_per_second: last.map_or(0.0, |r| r.triples_per_second),
                done: true,
            }));
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let loaded = self.loaded()?;
        // Counts come from the in-memory mirror, which takes a batch only after the store has
        // flushed it: Stats never reports a batch that a crash could still lose.
        let (entities, isolated, relations, triples) = {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            (
                graph.entity_count() as u64,
                graph.isolated_count() as u64,
                graph.relation_count() as u64,
                graph.triple_count() as u64,
            )
        };
        let store = loaded.store().map_err(status)?;
        Ok(Response::new(pb::StatsResponse {
            entities: entities.saturating_sub(isolated),
            entities_without_triples: isolated,
            relations,
            triples,
            store_bytes: store.size_on_disk(),
            removed_triples_in_store: store.removed_in_log(),
            // When, not why: the reason (paths, the OS error) goes to the service log.
            compaction_failed_at: loaded
                .compaction_failed
                .lock()
                .map_err(|_| lock_poisoned())?
                .and_then(|(_, at)| at.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |since| since.as_secs()),
            embedding_model: loaded
                .embeddings
                .read()
                .map_err(|_| lock_poisoned())?
                .as_ref()
                .map_or(pb::EmbeddingModel::Unspecified, |s| {
                    pb::EmbeddingModel::from(s.config.model)
                }) as i32,
        }))
    }
}

/// Most entities one `EntityEmbeddings` call may ask for.
const MAX_LOOKUP: usize = 10_000;
/// Most results of `SimilarEntities` and `PredictLinks`.
const MAX_RESULTS: u32 = 1_000;

fn check_limit(limit: u32) -> Result<usize, Status> {
    if (1..=MAX_RESULTS).contains(&limit) {
        Ok(limit as usize)
    } else {
        Err(Status::invalid_argument(format!(
            "limit must be 1..={MAX_RESULTS}, got {limit}"
        )))
    }
}

fn served(loaded: &Loaded) -> Result<Arc<Served>, Status> {
    loaded
        .embeddings
        .read()
        .map_err(|_| lock_poisoned())?
        .clone()
        .ok_or_else(|| {
            Status::failed_precondition(
                "no entity embeddings are trained in this graph; run `soukctl kg train`",
            )
        })
}

/// The id of an entity still in the graph: `NotFound` for a name never loaded and for one
/// whose triples were all removed.
fn known_entity(graph: &Graph, name: &str) -> Result<u32, Status> {
    let id = graph
        .entity_id(name)
        .ok_or_else(|| Status::not_found(format!("unknown entity {name:?}")))?;
    if graph.has_edges(id) {
        Ok(id)
    } else {
        Err(Status::not_found(format!(
            "entity {name:?} has no triples left (all were removed)"
        )))
    }
}

fn trained_row<'a>(served: &'a Served, id: u32, name: &str) -> Result<&'a [f32], Status> {
    served.embeddings.entity(id).ok_or_else(|| {
        Status::failed_precondition(format!(
            "entity {name:?} was added after the embeddings were trained; train again"
        ))
    })
}

/// The `limit` best `(id, score)` pairs, named, best first (NaN scores are dropped).
fn named_top(
    graph: &Graph,
    scored: impl Iterator<Item = (u32, f32)>,
    limit: usize,
) -> Vec<pb::ScoredEntity> {
    let mut all: Vec<(u32, f32)> = scored.filter(|(_, s)| !s.is_nan()).collect();
    let cut = limit.min(all.len());
    if cut < all.len() {
        all.select_nth_unstable_by(cut, |a, b| b.1.total_cmp(&a.1));
        all.truncate(cut);
    }
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.into_iter()
        .filter_map(|(id, score)| {
            graph.entity_name(id).map(|name| pb::ScoredEntity {
                entity: name.to_owned(),
                score,
            })
        })
        .collect()
}

/// A training request as a [`Config`]: zero means the documented default.
fn train_config(request: &pb::TrainEmbeddingsRequest) -> Result<Config, Status> {
    let model = Model::from_pb(request.model)
        .ok_or_else(|| Status::invalid_argument("model must be TRANSE, DISTMULT or ROTATE"))?;
    let defaults = Config::default();
    let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
    let config = Config {
        model,
        dim: or(request.dim, defaults.dim),
        epochs: or(request.epochs, defaults.epochs),
        batch_size: or(request.batch_size, defaults.batch_size),
        negatives: or(request.negatives, defaults.negatives),
        learning_rate: if request.learning_rate == 0.0 {
            defaults.learning_rate
        } else {
            request.learning_rate
        },
        margin: if request.margin == 0.0 {
            defaults.margin
        } else {
            request.margin
        },
        adversarial_temperature: request
            .adversarial_temperature
            .unwrap_or(defaults.adversarial_temperature),
        lr_drop_epoch: request.lr_drop_epoch as usize,
        regularization: request.regularization,
        subsampling: request.subsampling,
        seed: request.seed,
        threads: request.threads as usize,
    };
    config
        .validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(config)
}
