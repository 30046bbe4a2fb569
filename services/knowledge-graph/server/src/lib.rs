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
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use futures::{Stream, StreamExt};
use souk_kg_core::{Direction, Graph, KgError, NeighborQuery, PathQuery, Triple, TripleStore};
use souk_proto::kg::v1 as pb;
use souk_shared::config::ServerArgs;
use souk_shared::server::GrpcServer;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

pub mod store;

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
}

/// Binds `args.listen` and serves until `shutdown`.
///
/// # Errors
/// When the address cannot be bound, the store cannot be opened or the server fails.
pub async fn run(args: KgArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "knowledge graph listening");
    serve(listener, args, shutdown).await
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
        &["LoadTriples", "TrainEmbeddings"],
    );
    let health = server.health();
    // Open the store before serving traffic (a missing or locked directory stops startup), but
    // keep the port open meanwhile so probes see NOT_SERVING rather than a refused connection.
    let data_dir = args.data_dir.clone();
    let opening = tokio::task::spawn_blocking(move || -> Result<Loaded, KgError> {
        let started = std::time::Instant::now();
        let store = SledStore::open(&data_dir)?;
        let graph = Graph::from_snapshot(store.snapshot()?)?;
        tracing::info!(
            entities = graph.entity_count(),
            triples = graph.triple_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graph rebuilt from the store"
        );
        Ok(Loaded {
            store,
            graph: RwLock::new(graph),
            writer: Mutex::new(()),
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
    match opened {
        Ok(Ok(loaded)) => {
            let _ = state.loaded.set(Arc::new(loaded));
            health.set_ready().await;
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
    }
    tokio::select! {
        result = &mut serving => return result.map_err(Into::into),
        () = &mut shutdown => {}
    }
    let _ = stop_tx.send(());
    serving.await?;
    Ok(())
}

struct Loaded {
    store: SledStore,
    graph: RwLock<Graph>,
    /// One writer at a time: the store assigns ids and the graph must mirror them in order.
    writer: Mutex<()>,
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

fn direction_pb(d: Direction) -> i32 {
    match d {
        Direction::Out => pb::Direction::Out as i32,
        Direction::In => pb::Direction::In as i32,
        Direction::Both => pb::Direction::Both as i32,
    }
}

/// Plans a batch against the in-memory mirror (ids, duplicates: no disk reads), persists the
/// plan atomically and durably, then mirrors it. The writer lock keeps plans in order.
fn insert_batch(loaded: &Loaded, triples: &[Triple]) -> Result<usize, KgError> {
    let _writer = loaded
        .writer
        .lock()
        .map_err(|_| KgError::Storage("writer lock poisoned".into()))?;
    let plan = loaded
        .graph
        .read()
        .map_err(|_| KgError::Storage("graph lock poisoned".into()))?
        .plan(triples);
    loaded.store.persist(&plan)?;
    loaded
        .graph
        .write()
        .map_err(|_| KgError::Storage("graph lock poisoned".into()))?
        .apply(&plan)?;
    Ok(plan.new_triples.len())
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
            let triples = message
                .triples
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    let triple = Triple { head: t.head, relation: t.relation, tail: t.tail };
                    triple.validate().map(|()| triple).map_err(|e| {
                        Status::invalid_argument(format!(
                            "batch {batch_no}, triple {i}: {e}; this batch was not applied, {batch_no} earlier batches were"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            let received = triples.len() as u64;
            let writer = loaded.clone();
            let inserted = tokio::task::spawn_blocking(move || insert_batch(&writer, &triples))
                .await
                .map_err(|e| Status::internal(format!("load task failed: {e}")))?
                .map_err(status)?;
            response.received += received;
            response.inserted += inserted as u64;
            response.batches += 1;
        }
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
        };
        let loaded = self.loaded()?;
        let found = {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            graph.neighbors(&query).map_err(status)?
        };
        Ok(Response::new(pb::NeighborsResponse {
            neighbors: found
                .neighbors
                .into_iter()
                .map(|n| pb::Neighbor {
                    entity: n.entity,
                    relation: n.relation,
                    direction: direction_pb(n.direction),
                })
                .collect(),
            total: found.total as u64,
        }))
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
        }))
    }

    async fn entity_embeddings(
        &self,
        _request: Request<pb::EntityEmbeddingsRequest>,
    ) -> Result<Response<pb::EntityEmbeddingsResponse>, Status> {
        self.loaded()?;
        Err(no_embeddings())
    }

    async fn similar_entities(
        &self,
        _request: Request<pb::SimilarEntitiesRequest>,
    ) -> Result<Response<pb::SimilarEntitiesResponse>, Status> {
        self.loaded()?;
        Err(no_embeddings())
    }

    async fn predict_links(
        &self,
        _request: Request<pb::PredictLinksRequest>,
    ) -> Result<Response<pb::PredictLinksResponse>, Status> {
        self.loaded()?;
        Err(no_embeddings())
    }

    type TrainEmbeddingsStream = ProgressStream;

    async fn train_embeddings(
        &self,
        _request: Request<pb::TrainEmbeddingsRequest>,
    ) -> Result<Response<Self::TrainEmbeddingsStream>, Status> {
        Err(Status::unimplemented(
            "embedding training is not built yet (tracked by the knowledge-graph issue)",
        ))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let loaded = self.loaded()?;
        // Counts come from the in-memory mirror, which takes a batch only after the store has
        // flushed it: Stats never reports a batch that a crash could still lose.
        let (entities, relations, triples) = {
            let graph = loaded.graph.read().map_err(|_| lock_poisoned())?;
            (
                graph.entity_count() as u64,
                graph.relation_count() as u64,
                graph.triple_count() as u64,
            )
        };
        Ok(Response::new(pb::StatsResponse {
            entities,
            relations,
            triples,
            store_bytes: loaded.store.size_on_disk(),
            embedding_model: pb::EmbeddingModel::Unspecified as i32,
        }))
    }
}

fn no_embeddings() -> Status {
    Status::failed_precondition("no entity embeddings are trained in this graph")
}
