//! The ranker gRPC service (`souk.ranker.v1.Ranker`): the catalog and event log in sled
//! ([`store::RankerStore`]), replayed into the in-memory catalog of `souk-ranker-core`, and
//! `Rank` over the encoder and knowledge-graph services ([`sources`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! let args = souk_ranker::RankerArgs::parse_from(["souk-ranker", "--data-dir", "/tmp/ranker"]);
//! souk_ranker::run(args, souk_shared::shutdown::signal()).await
//! # }
//! ```
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use souk_proto::ranker::v1 as pb;
use souk_ranker_core::catalog::{HISTORY_WINDOW, graph_profile};
use souk_ranker_core::cf::{CfAlgorithm, CfOptions, IalsOptions, fit_served};
use souk_ranker_core::facet::{FacetField, MAX_FACETS};
use souk_ranker_core::item::{
    Fact, Filters, ITEM_RELATIONS, Interaction, InteractionKind, Item, dropped_facts,
    graph_difference, item_entity, one_attribute_per_name, validate_id,
};
use souk_ranker_core::pins::{PinRule, Pins};
use souk_ranker_core::rank::{FusionModel, RankQuery, Ranker, SortOrder, check_query_length};
use souk_ranker_core::synonyms::{SynonymRule, Synonyms};
use souk_ranker_core::{RankError, UserHasher};
use souk_shared::config::ServerArgs;
use souk_shared::server::GrpcServer;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

pub use souk_ranker_core::catalog::{DEFAULT_ANN_MIN_ITEMS, POPULARITY_HALF_LIFE_DAYS};

mod graph_outbox;
pub mod metrics;
mod outbox;
pub mod replica;
pub mod sources;
pub mod store;

use graph_outbox::Sent;
use sources::{GrpcEncoder, GrpcGraph};
use store::RankerStore;

/// Flags of `souk-ranker`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "souk-ranker", version, about = "souk's ranker (gRPC)")]
pub struct RankerArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SOUK_LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// Directory of the sled store (created when missing).
    #[arg(long, env = "SOUK_DATA_DIR", default_value = "souk-data/ranker")]
    pub data_dir: PathBuf,
    /// The encoder service.
    #[arg(
        long,
        env = "SOUK_ENCODER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub encoder_url: String,
    /// The knowledge-graph service.
    #[arg(long, env = "SOUK_KG_URL", default_value = "http://127.0.0.1:50052")]
    pub kg_url: String,
    /// Deadline for the encoder and the graph inside one `Rank`, in milliseconds; past it the
    /// ranking goes on without that signal.
    #[arg(long, env = "SOUK_DEPENDENCY_TIMEOUT_MS", default_value_t = 300)]
    pub dependency_timeout_ms: u64,
    /// Deadline for embedding and graph writes while loading the catalog, in milliseconds.
    #[arg(long, env = "SOUK_LOAD_TIMEOUT_MS", default_value_t = 120_000)]
    pub load_timeout_ms: u64,
    /// Keep only the first this many values of every vector the encoder makes, items' and
    /// queries' alike (Matryoshka truncation, `EmbedRequest.dimensions`): less memory and a
    /// faster dense scan, for a model trained to keep its quality that way. Unset: whole
    /// vectors. Changing it changes the vector space: the catalog is re-embedded as for a new
    /// model (`soukctl reembed`, or `--reembed-on-model-change`).
    #[arg(long, env = "SOUK_EMBEDDING_DIMENSIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub embedding_dimensions: Option<u32>,
    /// How long a query's vector is reused, in seconds.
    #[arg(long, env = "SOUK_QUERY_CACHE_TTL_S", default_value_t = 300)]
    pub query_cache_ttl_s: u64,
    /// Catalog size from which dense candidates come from an HNSW graph over item vectors
    /// instead of a scan of every vector (0: always; a huge number: never).
    #[arg(long, env = "SOUK_ANN_MIN_ITEMS", default_value_t = DEFAULT_ANN_MIN_ITEMS)]
    pub ann_min_items: usize,
    /// Days after which an event counts half as much in an item's popularity, as of the
    /// latest event (0: every event counts alike, forever).
    #[arg(long, env = "SOUK_POPULARITY_HALF_LIFE_DAYS", default_value_t = POPULARITY_HALF_LIFE_DAYS)]
    pub popularity_half_life_days: f64,
    /// Secret for pseudonymising user ids. Unset: a random one is created in the data
    /// directory (`user-id.key`) on first start and reused. A store refuses to start with a
    /// key other than the one its shoppers were filed under.
    #[arg(long, env = "SOUK_USER_ID_KEY", hide_env_values = true)]
    pub user_id_key: Option<String>,
    /// How often the encoder is asked whether it still serves the model the catalog's
    /// vectors come from (and, when its model changed, for its words), in milliseconds.
    #[arg(long, env = "SOUK_ENCODER_CHECK_MS", default_value_t = 30_000)]
    pub encoder_check_ms: u64,
    /// When the encoder's model is found to be another than the catalog's, re-embed the
    /// catalog at once (what `soukctl reembed` does) instead of waiting for an admin: dense
    /// relevance is back after one pass over the items (~165 items/s on 2 cores for MiniLM).
    /// Off by default: a model deployed by mistake would then move the catalog to it too.
    #[arg(
        long,
        env = "SOUK_REEMBED_ON_MODEL_CHANGE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub reembed_on_model_change: bool,
    /// Makes this ranker a replica of the primary ranker at this URL: it copies the
    /// primary's store, applies each of its writes as they are stored, serves reads, passes
    /// `RecordInteractions` on to it and refuses admin writes (send them to the primary).
    /// Its `--user-id-key` and `--admin-token` must be the primary's. A ranker whose host name
    /// (`HOSTNAME`) is the URL host's first label is that primary and follows no one, so every
    /// pod of a StatefulSet can be given the same URL (ARCHITECTURE.md, "Ranker replicas").
    #[arg(long, env = "SOUK_RANKER_PRIMARY")]
    pub primary: Option<String>,
    /// On a replica: copy the primary's store even when it holds another history than this
    /// replica's copy (the primary's store was lost, or replaced by a new one on purpose) or
    /// lacks writes the copy holds (an older backup put back, a replica further behind
    /// promoted). Without it such a replica keeps serving its copy and says why in `Stats`
    /// and its log, so that a primary restarted on an empty volume does not empty every
    /// replica.
    #[arg(
        long,
        env = "SOUK_ACCEPT_NEW_PRIMARY_STORE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub accept_new_primary_store: bool,
    /// On the primary, when its store holds no item (its volume was lost): first copy the
    /// store of the ranker at this URL (a replica, which keeps its copy when its primary's
    /// store is lost), record again the events the empty store took, then serve as the
    /// primary. Ignored when the store holds items (unless a restore was cut short), and on
    /// a replica.
    #[arg(long, env = "SOUK_RESTORE_FROM")]
    pub restore_from: Option<String>,
    /// Ready the stopped store in `--data-dir` for a build before session 25 (a rollback:
    /// those builds cannot read the records this one keeps beside each write), then exit.
    #[arg(long)]
    pub prepare_downgrade: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The primary a ranker started with `primary` follows: none when `primary` is unset or
/// empty, or names this host (`hostname`, the first label of the URL's host).
pub fn follows(primary: Option<&str>, hostname: Option<&str>) -> Option<String> {
    let url = primary.map(str::trim).filter(|u| !u.is_empty())?;
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    let first_label = host.split('.').next().unwrap_or_default();
    let is_me = hostname.is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(first_label));
    (!is_me).then(|| url.to_string())
}

/// Binds `args.listen` and serves until `shutdown`.
///
/// # Errors
/// When the address cannot be bound, the store cannot be opened or the server fails.
pub async fn run(args: RankerArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if args.prepare_downgrade {
        let store = RankerStore::open(&args.data_dir)?;
        let removed = store.prepare_downgrade()?;
        tracing::info!(
            data_dir = %args.data_dir.display(),
            removed,
            "store ready for a build before session 25"
        );
        return Ok(());
    }
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        reembed_on_model_change = args.reembed_on_model_change,
        "ranker listening"
    );
    serve(listener, args, shutdown).await
}

type CoreRanker = Ranker<Arc<GrpcEncoder>, Arc<GrpcGraph>>;

struct Ready {
    ranker: CoreRanker,
    store: RankerStore,
    hasher: UserHasher,
    encoder: Arc<GrpcEncoder>,
    graph: Arc<GrpcGraph>,
    load_timeout: Duration,
    /// The probe text's vector from the model the catalog's vectors come from (see
    /// [`RankerStore::probe`]); `None` until the catalog has one.
    catalog_probe: RwLock<Option<Vec<f32>>>,
    /// Whether the encoder has answered the probe since start.
    encoder_checked: AtomicBool,
    /// How often the encoder's model is checked.
    encoder_check: Duration,
    /// Whether the watcher re-embeds the catalog itself when the model changed.
    reembed_on_change: bool,
    /// `souk_encoder_model_differs`: 1 while the encoder serves another model than the
    /// catalog's (an operator's alert: search runs on words alone until `Reembed`).
    model_differs: prometheus::IntGauge,
    /// The four locks below order writes. Each is held until its write is done in the store
    /// *and* in memory: the guard moves into the task that does both, which runs to its end
    /// even when the caller goes away (a deadline or a cancelled call drops the handler at
    /// its next await). Before session 58 a caller that gave up between the two left the
    /// store changed and memory not: a forgotten shopper still served, events stored (and
    /// copied to replicas) but not counted, settings stored but not in force.
    ///
    /// Held by `UpsertItems`, `UpdateItems` and `Reembed`: a re-embedding must see every
    /// item, and a load must not add vectors of the old model after it.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Held by `UpdateItems` through each batch (read, change, store), by `UpsertItems` and
    /// `Reembed` from each store write to memory, and by `DeleteItems`, so that an update does not
    /// bring back an item deleted in its middle, and a delete does not fall between a load's
    /// store and memory (memory then kept the deleted item). (A delete does not wait for
    /// `writing`: a whole catalog's load takes minutes.)
    editing: Arc<tokio::sync::Mutex<()>>,
    /// Held by `SetFusion` and `SetSynonyms` from their store write to their swap in
    /// memory: two calls at once must leave memory as the store, not one each.
    settings: Arc<tokio::sync::Mutex<()>>,
    /// Held shared by `RecordInteractions` from its store write to memory, and alone by
    /// `ForgetUsers` from its read of the log to memory: an event of a shopper being
    /// forgotten is either in the log it reads or recorded after it, never stored before
    /// and counted in memory after.
    events: Arc<tokio::sync::RwLock<()>>,
    /// A replica's store is a copy of its primary's: it writes nothing of its own.
    replica: bool,
    /// A replica's events that wait for its primary (`None` on a primary).
    outbox: Option<Arc<outbox::Outbox>>,
    /// Item fact batches that wait for the knowledge graph (`None` on a replica, which
    /// stores no items of its own).
    graph_outbox: Option<Arc<graph_outbox::GraphOutbox>>,
}

/// Unmatched (and corrected) queries `Stats` lists.
const UNMATCHED_SHOWN: usize = 20;
/// How often a replica sends the searches it counted to its primary.
const SEARCHES_EVERY: Duration = Duration::from_secs(5);
/// The longest query a `RecordSearches` message may name.
const MAX_SEARCH_BYTES: usize = 1024;

/// A `RecordSearches` message as a replica writes it: at most [`metrics::UNMATCHED_DISTINCT`]
/// queries a list, each as Stats lists it (lower-cased, spaces collapsed, not blank, at most
/// [`MAX_SEARCH_BYTES`]), counted at least once and overstated by less than its count.
fn check_searches(request: &pb::RecordSearchesRequest) -> Result<(), Status> {
    let check = |list: &str, i: usize, texts: &[&str], count: u64, over_by: u64| {
        for text in texts {
            if text.len() > MAX_SEARCH_BYTES || metrics::normal(text).as_deref() != Some(*text) {
                return Err(Status::invalid_argument(format!(
                    "{list}[{i}]: a query must be lower-cased, its spaces collapsed, not blank \
                     and at most {MAX_SEARCH_BYTES} bytes"
                )));
            }
        }
        if count == 0 || over_by >= count {
            return Err(Status::invalid_argument(format!(
                "{list}[{i}]: count {count} (over by {over_by}): at least 1, over by less"
            )));
        }
        Ok(())
    };
    for (list, n) in [
        ("unmatched", request.unmatched.len()),
        ("corrected", request.corrected.len()),
    ] {
        if n > metrics::UNMATCHED_DISTINCT {
            return Err(Status::invalid_argument(format!(
                "{list}: {n} queries, at most {}",
                metrics::UNMATCHED_DISTINCT
            )));
        }
    }
    for (i, q) in request.unmatched.iter().enumerate() {
        check("unmatched", i, &[&q.query], q.count, q.over_by)?;
    }
    for (i, q) in request.corrected.iter().enumerate() {
        check("corrected", i, &[&q.query, &q.read_as], q.count, q.over_by)?;
    }
    Ok(())
}

/// On a replica: every [`SEARCHES_EVERY`], sends the searches it counted since to the primary
/// (`RecordSearches`, with the admin token), so that the primary's Stats lists the whole
/// shop's. While the primary is unreachable they are kept and added to the next; a refusal
/// drops them (logged). The last few seconds' are lost when the replica stops.
async fn send_searches(
    state: Arc<RankerService>,
    primary: pb::ranker_client::RankerClient<tonic::transport::Channel>,
    token: Option<String>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SEARCHES_EVERY) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let Some(searches) = state.metrics.take_unsent() else {
            continue;
        };
        let mut request = match sources::with_token(searches.clone(), &token) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "cannot send this replica's search counts");
                continue;
            }
        };
        request.set_timeout(SEARCHES_EVERY);
        let mut primary = primary.clone();
        let sent = tokio::select! {
            sent = primary.record_searches(request) => sent,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        match sent {
            Ok(_) => {}
            Err(status) if outbox::unreachable(&status) => state.metrics.add(&searches, true),
            Err(status) => tracing::error!(
                code = ?status.code(),
                message = status.message(),
                "the primary refused this replica's search counts; dropped"
            ),
        }
    }
}

/// Cosine from which two vectors of the probe text come from the same model: f16 and bf16
/// runs of one model agree with its f32 vectors to 0.99985 and better (BENCHMARKS.md, the GPU
/// run); MiniLM cut to five layers falls under it (`degradation.rs`, tested).
const SAME_MODEL_COSINE: f32 = 0.999;

/// Whether two probe vectors come from the same model.
fn same_model(a: &[f32], b: &[f32]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot >= SAME_MODEL_COSINE * norm(a) * norm(b)
}

/// What [`Ready::compare_model`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelCheck {
    /// The catalog's vectors come from the encoder's model.
    Same,
    /// They come from another model: not comparable with the encoder's.
    Other,
    /// The catalog is empty: its next items store their model's probe with them.
    EmptyCatalog,
}

impl Ready {
    /// Compares the encoder's probe vector with the catalog's and marks the encoder as
    /// serving another model or not; returns what it found. An empty catalog has no
    /// vectors to compare with (its next items store their model's probe); a catalog stored
    /// before the check existed (items, no probe) takes this model as its own.
    ///
    /// `model` is the fingerprint the probe's answer came with; what was found is recorded
    /// under it, so that a query answered by it is admitted or not at once
    /// ([`GrpcEncoder::record_model`]).
    ///
    /// # Errors
    /// When the store cannot take the probe.
    fn compare_model(&self, probe: &[f32], model: u64) -> Result<ModelCheck, RankError> {
        let stored = self
            .catalog_probe
            .read()
            .map_err(|_| lock_poisoned())?
            .clone();
        let items = self
            .ranker
            .catalog()
            .read()
            .map_err(|_| lock_poisoned())?
            .len();
        let check = match stored {
            _ if items == 0 => ModelCheck::EmptyCatalog,
            Some(stored) if same_model(&stored, probe) => ModelCheck::Same,
            Some(_) => ModelCheck::Other,
            // A replica takes the probe its primary stored, never one of its own.
            None if self.replica => ModelCheck::Same,
            None => {
                self.store.put_probe(probe)?;
                self.set_catalog_model(probe.to_vec(), model)?;
                tracing::info!(
                    items,
                    "the catalog's vectors are taken to be the encoder's model's (stored before models were checked)"
                );
                ModelCheck::Same
            }
        };
        let differs = check == ModelCheck::Other;
        let was = self.encoder.differs();
        self.encoder.record_model(model, !differs);
        self.model_differs.set(i64::from(differs));
        self.encoder_checked.store(true, Ordering::Relaxed);
        if differs && !was {
            tracing::error!(
                "the encoder serves another model than the one the catalog's vectors come from: queries are not embedded until `soukctl reembed` re-embeds the catalog"
            );
        } else if was && !differs {
            tracing::info!("the encoder serves the catalog's model again");
        }
        Ok(check)
    }

    /// The catalog's vectors now come from the model whose probe vector is `probe` and
    /// fingerprint `model` (already stored).
    ///
    /// # Errors
    /// When a lock is poisoned.
    fn set_catalog_model(&self, probe: Vec<f32>, model: u64) -> Result<(), RankError> {
        *self.catalog_probe.write().map_err(|_| lock_poisoned())? = Some(probe);
        self.encoder.adopt_model(model);
        Ok(())
    }

    /// What `Stats.encoder` says of a catalog that is `empty` or not.
    fn model_state(&self, empty: bool) -> &'static str {
        let known = self
            .catalog_probe
            .read()
            .map(|p| p.is_some())
            .unwrap_or(false);
        if !self.encoder_checked.load(Ordering::Relaxed) || !known || empty {
            "unknown"
        } else if self.encoder.differs() {
            "differs"
        } else {
            "matches"
        }
    }
}

struct RankerService {
    ready: OnceLock<Arc<Ready>>,
    metrics: Arc<metrics::RankMetrics>,
    /// Held while a CF fit runs, to its end: one at a time (each holds an items x items
    /// matrix).
    fitting: Arc<tokio::sync::Mutex<()>>,
    /// On a replica: the primary's URL, and a client of it (`RecordInteractions` is passed on).
    follows: Option<(
        String,
        pb::ranker_client::RankerClient<tonic::transport::Channel>,
    )>,
    /// On a replica: whether it is in sync with the primary.
    replica: Arc<replica::ReplicaState>,
    /// Turns true when the server stops: ends the `Follow` streams, which would otherwise
    /// hold the graceful shutdown open.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Serves on `listener`; health turns SERVING once the store is open and replayed. The
/// encoder and graph need not be up: `Rank` degrades without them.
///
/// # Errors
/// When the store cannot be opened or the transport fails.
pub async fn serve(
    listener: TcpListener,
    args: RankerArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut server = GrpcServer::new("ranker", args.server.options()).await?;
    let registry = server.metrics();
    // Kubernetes sets HOSTNAME to the pod's name; a shell may not export it.
    let hostname = std::env::var("HOSTNAME").ok().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
    });
    let primary = follows(args.primary.as_deref(), hostname.as_deref());
    let follows = match &primary {
        Some(url) => Some((
            url.clone(),
            pb::ranker_client::RankerClient::new(souk_shared::client::lazy_channel(
                url,
                Duration::from_secs(5),
            )?),
        )),
        None => None,
    };
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    let state = Arc::new(RankerService {
        ready: OnceLock::new(),
        metrics: Arc::new(metrics::RankMetrics::register(
            registry.registry(),
            primary.is_some(),
        )?),
        fitting: Default::default(),
        follows,
        replica: Arc::new(match &primary {
            Some(_) => replica::ReplicaState::registered(registry.registry())?,
            None => replica::ReplicaState::default(),
        }),
        stopping,
    });
    server.add_service(
        pb::ranker_server::RankerServer::from_arc(state.clone())
            .max_decoding_message_size(64 * 1024 * 1024),
        // Shop backends send events; every other write needs the admin token.
        &["RecordInteractions"],
    )?;
    let health = server.health();
    let timeout = Duration::from_millis(args.dependency_timeout_ms.max(1));
    let encoder = Arc::new(GrpcEncoder::new(
        souk_shared::client::lazy_channel(&args.encoder_url, timeout)?,
        timeout,
        Duration::from_secs(args.query_cache_ttl_s),
        args.embedding_dimensions,
    ));
    let graph = Arc::new(GrpcGraph::new(
        souk_shared::client::lazy_channel(&args.kg_url, timeout)?,
        timeout,
        args.server.admin_token.clone(),
    ));
    let data_dir = args.data_dir.clone();
    let secret = args.user_id_key.clone();
    let ann_min_items = args.ann_min_items;
    let half_life = args.popularity_half_life_days;
    let is_primary = primary.is_none();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, RankError> {
        let store = RankerStore::open(&data_dir)?.with_popularity_half_life(Some(half_life));
        // Named at a primary's start, so that a backup of its store carries the name too; a
        // replica's copy started as the primary goes on as a history of its own.
        if is_primary {
            let lineage = store.lineage_as_primary()?;
            tracing::info!(lineage = format!("{lineage:016x}"), "the store's history");
        }
        let given = secret.filter(|s| !s.is_empty());
        let hasher = store.user_hasher(
            given.as_deref().map(str::as_bytes),
            &data_dir.join("user-id.key"),
        )?;
        let mid_sync = store.mid_sync()?;
        let (catalog, ann_saved) = store.served_catalog(ann_min_items)?;
        let fusion = store.fusion()?;
        let probe = store.probe()?;
        tracing::info!(
            items = catalog.len(),
            users = catalog.users(),
            synonyms = catalog.synonyms().rules().len(),
            pin_rules = catalog.pins().rules().len(),
            cf = catalog.trained_cf().map_or("none", |m| m.version.as_str()),
            fusion = fusion.as_ref().map_or("default", |m| m.version.as_str()),
            "catalog replayed from the store"
        );
        *store.lock_ann_file()? = ann_saved;
        Ok((store, catalog, fusion, probe, hasher, mid_sync))
    })
    .await
    .map_err(|e| anyhow::anyhow!("store opening panicked: {e}"))?
    .map_err(|e| anyhow::anyhow!("cannot open the ranker store: {e}"))?;
    let (store, catalog, fusion, probe, hasher, mid_sync) = opened;
    // A replica serves an earlier copy at once, but not a half-taken one or none at all: it
    // reports SERVING once it holds the primary's catalog.
    let serve_at_once = primary.is_none() || (!mid_sync && !catalog.is_empty());
    let catalog = Arc::new(RwLock::new(catalog));
    registry
        .registry()
        .register(Box::new(metrics::CatalogSize::new(catalog.clone())?))?;
    store
        .latch()
        .report_to(&souk_shared::storage::write_failed_gauge(
            registry.registry(),
        )?);
    let outbox = match &primary {
        Some(_) => Some(Arc::new(outbox::Outbox::open(
            store.outbox_tree()?,
            registry.registry(),
            store.latch(),
        )?)),
        None => None,
    };
    let graph_outbox = match &primary {
        Some(_) => None,
        None => Some(Arc::new(graph_outbox::GraphOutbox::open(
            store.graph_outbox_tree()?,
            registry.registry(),
            store.latch(),
        )?)),
    };
    let model_differs = prometheus::IntGauge::new(
        "encoder_model_differs",
        "1 while the encoder serves another model than the one the catalog's vectors come \
         from: queries are not embedded and loads are refused until Reembed.",
    )?;
    registry
        .registry()
        .register(Box::new(model_differs.clone()))?;
    let ranker = Ranker::new(catalog, encoder.clone(), graph.clone());
    if let Some(model) = fusion {
        ranker
            .set_model(model)
            .map_err(|e| anyhow::anyhow!("stored fusion model is invalid: {e}"))?;
    }
    let ready = Arc::new(Ready {
        ranker,
        store,
        hasher,
        encoder,
        graph,
        load_timeout: Duration::from_millis(args.load_timeout_ms.max(1)),
        catalog_probe: RwLock::new(probe),
        encoder_checked: AtomicBool::new(false),
        encoder_check: Duration::from_millis(args.encoder_check_ms.max(1)),
        // A replica's primary re-embeds; the replica copies its vectors.
        reembed_on_change: args.reembed_on_model_change && primary.is_none(),
        model_differs,
        writing: Default::default(),
        editing: Default::default(),
        settings: Default::default(),
        events: Default::default(),
        replica: primary.is_some(),
        outbox: outbox.clone(),
        graph_outbox,
    });
    if primary.is_none()
        && let Some(url) = args.restore_from.as_deref().map(str::trim)
        && !url.is_empty()
    {
        let taken = replica::restore(&ready, url, &args.server.admin_token, ann_min_items)
            .await
            .map_err(|e| anyhow::anyhow!("cannot restore the store from {url}: {e}"))?;
        if !taken.is_empty() {
            // The events the empty store took meanwhile, over the copy (once: those the
            // copy holds too are duplicates).
            let mut recorded = pb::RecordInteractionsResponse::default();
            record_checked(&ready, &state.metrics, taken, &mut recorded)
                .await
                .map_err(|e| anyhow::anyhow!("cannot record the events taken before: {e}"))?;
            tracing::info!(
                recorded = recorded.recorded,
                duplicates = recorded.duplicates,
                "recorded the events the empty store took before the restore"
            );
        }
    }
    let _ = state.ready.set(ready.clone());
    if primary.is_none() {
        let left = record_left_in_outbox(&ready, &state.metrics)
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the events left in the outbox: {e}"))?;
        if left.recorded + left.duplicates + left.forgotten > 0 {
            tracing::info!(
                recorded = left.recorded,
                duplicates = left.duplicates,
                forgotten = left.forgotten,
                "recorded the events this store's outbox held (it was a replica's)"
            );
        }
    }
    if serve_at_once {
        health.set_ready().await;
    }
    let (stop_keeper, stopped) = tokio::sync::watch::channel(false);
    // A replica saves its own too: it resumes after a restart instead of copying the
    // primary's graph again.
    let keeper = tokio::spawn(keep_ann_saved(ready.clone(), stopped.clone()));
    let follower = primary.map(|url| {
        tokio::spawn(replica::follow(
            ready.clone(),
            url,
            args.server.admin_token.clone(),
            state.replica.clone(),
            (ann_min_items, args.accept_new_primary_store),
            health.clone(),
            stopped.clone(),
        ))
    });
    let drain = match (outbox, &state.follows) {
        (Some(outbox), Some((_, client))) => Some(tokio::spawn(outbox::drain(
            outbox,
            client.clone(),
            state.replica.clone(),
            stopped.clone(),
        ))),
        _ => None,
    };
    let searches = state.follows.as_ref().map(|(_, client)| {
        tokio::spawn(send_searches(
            state.clone(),
            client.clone(),
            args.server.admin_token.clone(),
            stopped.clone(),
        ))
    });
    let graph_drain = ready.graph_outbox.clone().map(|outbox| {
        tokio::spawn(graph_outbox::drain(
            outbox,
            ready.graph.clone(),
            ready.load_timeout,
            stopped.clone(),
        ))
    });
    let watcher = tokio::spawn(watch_encoder(ready.clone(), stopped));
    let served = server.serve(listener, shutdown).await;
    // Stopped and awaited (it saves the last changes first), not aborted: an aborted task is
    // dropped later, and while it holds `ready` the store stays open, so a new server on the
    // same directory cannot open it.
    let _ = stop_keeper.send(true);
    let _ = keeper.await;
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    if let Some(drain) = drain {
        let _ = drain.await;
    }
    if let Some(searches) = searches {
        let _ = searches.await;
    }
    if let Some(drain) = graph_drain {
        let _ = drain.await;
    }
    let _ = watcher.await;
    // Where the journal stands is kept for the next start: replicas that hold every write
    // resume after a restart instead of copying the store.
    if let Err(error) = ready.store.close() {
        tracing::warn!(%error, "cannot keep the journal's position: replicas will copy the store");
    }
    served?;
    Ok(())
}

/// Asks the encoder for the probe's vector now and compares it with the catalog's: a
/// replica's copy, or a re-embedding copied from its primary, may come from another model
/// than the last check's. Cached query vectors are dropped, and when the encoder's model is
/// the catalog's new one, what was recorded of other models is forgotten (as the primary's
/// own re-embedding does).
async fn check_model_now(ready: &Arc<Ready>) {
    ready.encoder.clear_cache();
    match ready.encoder.probe(ready.load_timeout).await {
        Ok((probe, model)) => {
            let adopted = ready
                .catalog_probe
                .read()
                .is_ok_and(|p| p.as_ref().is_some_and(|p| same_model(p, &probe)));
            if adopted {
                ready.encoder.adopt_model(model);
            }
            if let Err(error) = ready.compare_model(&probe, model) {
                tracing::warn!(%error, "cannot compare the encoder's model with the catalog's");
            }
        }
        Err(error) => tracing::warn!(%error, "the encoder did not answer the model check"),
    }
}

/// Shortest time between two checks of the encoder's model that answers from an unchecked
/// model asked for: encoder replicas serving two models in turn (a rolling update) would
/// otherwise have every query ask for one.
const RECHECK_GAP: Duration = Duration::from_millis(250);

/// Longest wait between two asks while the encoder is down or loading.
const ENCODER_RETRY_MAX: Duration = Duration::from_secs(5);

/// Watches the encoder's model: asks for its probe vector from start (retrying from 100 ms,
/// doubling to [`ENCODER_RETRY_MAX`], while it is down) and then every `encoder_check`,
/// until `stopped`. Each new model's words become the spelling lexicon (real words the
/// catalog lacks are then no misspellings) and cached query vectors of the previous model
/// are dropped; a model other than the catalog's is flagged ([`Ready::compare_model`]).
/// A query answered by another model than the last probe's wakes it early (at most every
/// [`RECHECK_GAP`]), so a replaced model is checked at its first answer, not up to a period
/// later.
async fn watch_encoder(ready: Arc<Ready>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut seen: Option<Vec<f32>> = None;
    let mut retry = Duration::from_millis(100);
    loop {
        let probed = tokio::select! {
            probed = ready.encoder.probe(ready.load_timeout) => probed,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let wait = match probed {
            Ok((probe, model)) => {
                if seen.as_ref().is_none_or(|s| !same_model(s, &probe)) {
                    let asked = tokio::select! {
                        asked = ready.encoder.words(ready.load_timeout) => asked,
                        _ = stopped.wait_for(|stop| *stop) => return,
                    };
                    match asked {
                        Ok(words) => {
                            let count = words.len();
                            match ready.ranker.catalog().write() {
                                Ok(mut catalog) => catalog.set_lexicon(Some(words)),
                                Err(_) => return,
                            }
                            tracing::info!(words = count, "spelling lexicon read from the encoder");
                            if seen.is_some() {
                                ready.encoder.clear_cache();
                            }
                            seen = Some(probe.clone());
                        }
                        Err(e) => tracing::debug!(error = %e.0, "no spelling lexicon yet"),
                    }
                }
                match ready.compare_model(&probe, model) {
                    Ok(ModelCheck::Other) if ready.reembed_on_change => {
                        tracing::warn!(
                            "re-embedding the catalog with the encoder's new model (--reembed-on-model-change)"
                        );
                        let done = tokio::select! {
                            done = reembed(&ready) => done,
                            _ = stopped.wait_for(|stop| *stop) => return,
                        };
                        match done {
                            Ok(r) => tracing::info!(
                                items = r.items,
                                dimension = r.dimension,
                                seconds = r.seconds,
                                "catalog re-embedded on its own after the model changed"
                            ),
                            // Tried again at the next check.
                            Err(status) => tracing::warn!(
                                error = %status.message(),
                                "re-embedding after the model changed failed"
                            ),
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "cannot store the encoder's probe vector"),
                }
                if seen.is_some() {
                    retry = Duration::from_millis(100);
                    ready.encoder_check
                } else {
                    retry
                }
            }
            Err(e) => {
                tracing::debug!(error = %e.0, "encoder not answering yet");
                retry
            }
        };
        let earliest = tokio::time::Instant::now() + RECHECK_GAP;
        let woken = async {
            ready.encoder.recheck_wanted().await;
            tokio::time::sleep_until(earliest).await;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = woken => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        retry = (retry * 2).min(ENCODER_RETRY_MAX);
    }
}

/// Embeds every item again with the encoder's model and swaps all vectors at once (the
/// `Reembed` RPC, and the watcher's own when `--reembed-on-model-change` is set).
///
/// # Errors
/// UNAVAILABLE when the encoder cannot embed, ABORTED when its model changed meanwhile
/// (nothing changed either way), INTERNAL when its answers are malformed or the store fails.
async fn reembed(ready: &Arc<Ready>) -> Result<pb::ReembedResponse, Status> {
    let writing = ready.writing.clone().lock_owned().await;
    let started = Instant::now();
    let unavailable = |e: souk_ranker_core::rank::SourceError| {
        Status::unavailable(format!("cannot embed the catalog, nothing changed: {e}"))
    };
    let (probe, model) = ready
        .encoder
        .probe(ready.load_timeout)
        .await
        .map_err(unavailable)?;
    // From the store: the catalog in memory keeps no descriptions. Under `writing`, the
    // two hold the same items.
    let (ids, texts): (Vec<String>, Vec<String>) =
        blocking(ready, |ready| ready.store.item_texts())
            .await?
            .into_iter()
            .unzip();
    let embedded = ready
        .encoder
        .embed_many(texts, ready.load_timeout)
        .await
        .map_err(unavailable)?;
    // A model swapped while the items were embedded would leave vectors of two models:
    // every answer names its model (`embed_many` refuses answers from two), and an
    // encoder that does not is asked for the probe again.
    let swapped = if model != 0 {
        embedded.model != model
    } else {
        let (after, _) = ready
            .encoder
            .probe(ready.load_timeout)
            .await
            .map_err(unavailable)?;
        !same_model(&probe, &after)
    };
    if swapped {
        return Err(Status::aborted(
            "the encoder's model changed while the catalog was embedded; nothing changed, run it again",
        ));
    }
    let vectors = embedded.vectors;
    if vectors.len() != ids.len() {
        return Err(Status::internal(
            "encoder returned the wrong number of vectors",
        ));
    }
    let dimension = probe.len();
    if let Some(bad) = vectors.iter().position(|v| v.len() != dimension) {
        return Err(Status::internal(format!(
            "encoder returned a vector of {} dimensions for item {:?}, {dimension} for the probe",
            vectors[bad].len(),
            ids[bad]
        )));
    }
    let count = ids.len() as u64;
    let vectors: HashMap<String, Vec<f32>> = ids.into_iter().zip(vectors).collect();
    // Stored, then swapped in memory and the model adopted, in one task that runs to its
    // end: a caller gone in between left the new vectors without their model in memory
    // (queries not embedded until a restart). Under `editing` too: a delete between the
    // store's check that an item is there and its write left a vector without its item.
    let editing = ready.editing.clone().lock_owned().await;
    blocking(ready, move |ready| {
        let _held = (writing, editing);
        // Stored first and at once (vectors and probe in one batch): a crash leaves
        // either the old model's catalog or the new one's, never a mix.
        ready.store.put_vectors(&vectors, &probe)?;
        ready
            .ranker
            .catalog()
            .write()
            .map_err(|_| lock_poisoned())?
            .replace_vectors(&vectors)?;
        ready.set_catalog_model(probe.clone(), model)?;
        ready.encoder.clear_cache();
        ready.compare_model(&probe, model)
    })
    .await?;
    tracing::info!(
        items = count,
        dimension,
        seconds = started.elapsed().as_secs_f64(),
        "catalog re-embedded with the encoder's model"
    );
    Ok(pb::ReembedResponse {
        items: count,
        dimension: dimension as u32,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// How often the saver looks at the HNSW graph, and the longest a changed graph waits while
/// it keeps changing (a catalog load): it is saved at the first look that finds it as the
/// previous look did, or once it has waited this long.
const ANN_SAVE_CHECK: Duration = Duration::from_secs(10);
const ANN_SAVE_MAX_WAIT: Duration = Duration::from_secs(300);

fn lock_poisoned() -> RankError {
    RankError::Internal("lock poisoned".into())
}

/// Writes `hnsw.graph` if the graph changed since the file was written (see
/// [`RankerStore::ann_saved`]), so that a restart reads it (under a second at 100k items)
/// instead of building one (~8 s on 2 cores). False when the save failed (logged; the graph
/// is then rebuilt at the next start, as without a file).
async fn save_ann(ready: &Arc<Ready>) -> bool {
    let ready = ready.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<_, RankError> {
        let started = Instant::now();
        let mut saved = ready.store.lock_ann_file()?;
        let (changes, bytes) = {
            let catalog = ready.ranker.catalog().read().map_err(|_| lock_poisoned())?;
            let changes = catalog.ann_changes();
            if changes == *saved {
                return Ok(None);
            }
            (changes, catalog.ann_snapshot())
        };
        // Without a graph (a small catalog, or the graph turned off) the file is left as it
        // is: a later start that wants a graph can still use what of it matches.
        let Some(bytes) = bytes else {
            *saved = changes;
            return Ok(None);
        };
        // Writers (loads) wait for the copy above; `Rank` does not.
        let copied = started.elapsed();
        ready.store.save_ann(&bytes)?;
        *saved = changes;
        Ok(Some((bytes.len(), copied, started.elapsed())))
    })
    .await;
    match written {
        Ok(Ok(Some((bytes, copied, took)))) => {
            tracing::info!(
                bytes,
                copy_seconds = copied.as_secs_f64(),
                seconds = took.as_secs_f64(),
                "saved the HNSW graph"
            );
            true
        }
        Ok(Ok(None)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot save the HNSW graph");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "saving the HNSW graph panicked");
            false
        }
    }
}

/// When to write the graph: at the first look that finds it changed since the last save and
/// unchanged since the previous look, or once a change has waited [`ANN_SAVE_MAX_WAIT`] (a
/// catalog load changes it at every look).
#[derive(Debug, Default)]
struct SavePolicy {
    last_look: Option<u64>,
    waiting_since: Option<Instant>,
}

impl SavePolicy {
    fn due(&mut self, changes: u64, saved: u64, now: Instant) -> bool {
        let quiet = self.last_look == Some(changes);
        self.last_look = Some(changes);
        if changes == saved {
            self.waiting_since = None;
            return false;
        }
        let since = *self.waiting_since.get_or_insert(now);
        let due = quiet || now.duration_since(since) >= ANN_SAVE_MAX_WAIT;
        if due {
            self.waiting_since = None;
        }
        due
    }
}

/// Keeps `hnsw.graph` close to the served graph (see [`SavePolicy`]) until `stop`, then saves
/// the last changes.
async fn keep_ann_saved(ready: Arc<Ready>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ANN_SAVE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut policy = SavePolicy::default();
    // After a failed save (a full or read-only disk) the next try waits the longest wait,
    // instead of a warning every look.
    let mut next_try = Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        if stopping {
            save_ann(&ready).await;
            return;
        }
        let Ok(changes) = ready.ranker.catalog().read().map(|c| c.ann_changes()) else {
            return;
        };
        // Busy: a replica is taking a copy; looked at again at the next tick.
        let Some(saved) = ready.store.ann_saved() else {
            continue;
        };
        let now = Instant::now();
        if now >= next_try && policy.due(changes, saved, now) && !save_ann(&ready).await {
            next_try = now + ANN_SAVE_MAX_WAIT;
        }
    }
}

/// Maps ranker errors to gRPC codes; internal detail is logged, not sent.
/// Runs `work` on `ready` off the async workers (store writes flush; catalog changes may
/// link HNSW points on all cores), its error as [`status`] gives it.
/// Stores a batch of items with their vectors (and, for a catalog's first items, the probe
/// vector of the model that embedded them, with that model), then takes them into the
/// catalog, whose part links new vectors into the HNSW graph on all cores: so it runs off
/// the async workers (`UpsertItems`, `UpdateItems`).
async fn store_items(
    ready: &Arc<Ready>,
    pairs: Vec<(Item, Vec<f32>)>,
    probe: Option<(Vec<f32>, u64)>,
) -> Result<(), Status> {
    blocking(ready, move |ready| {
        // Refused before it is stored: a vector of another size in the store would stop the
        // next start's replay.
        let catalog = ready.ranker.catalog();
        catalog
            .read()
            .map_err(|_| lock_poisoned())?
            .check_vectors(&pairs)?;
        ready
            .store
            .put_items_embedded_by(&pairs, probe.as_ref().map(|(v, _)| v.as_slice()))?;
        if let Some((probe, model)) = probe {
            ready.set_catalog_model(probe, model)?;
        }
        catalog
            .write()
            .map_err(|_| lock_poisoned())?
            .upsert_many(pairs)
    })
    .await
}

/// A load's batch refused for its `i`-th `what`; the stream's earlier batches stay stored.
fn refused_in_batch(batch: u64, what: &str, i: usize, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!(
        "batch {batch}, {what} {i}: {error}; this batch was not stored, {batch} earlier batches were"
    ))
}

/// The graph batch for `items` about to be stored (ids distinct): as removals, the facts
/// their versions in the catalog state and they drop (a recoloured item's old colour); to
/// add, all their facts. Read before the store, from the catalog (under `writing`, as the
/// store holds them). For an item the catalog lacks, its version last deleted stands for the
/// old one: the graph keeps a deleted item's facts, and an item loaded again under its id
/// would otherwise state its old brand beside its new one for good.
async fn graph_change<'a>(
    ready: &Arc<Ready>,
    items: impl IntoIterator<Item = &'a Item>,
) -> Result<(Vec<Fact>, Vec<Fact>), Status> {
    let (mut remove, mut add) = (Vec::new(), Vec::new());
    let mut absent: Vec<&Item> = Vec::new();
    {
        let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
        for item in items {
            match catalog.get(&item.id) {
                Some(old) => remove.extend(dropped_facts(old, item)),
                None => absent.push(item),
            }
            add.extend(item.facts());
        }
    }
    if !absent.is_empty() {
        // Only the ids go to the store's task (a first load's items are all absent).
        let ids: Vec<String> = absent.iter().map(|item| item.id.clone()).collect();
        let deleted = blocking(ready, move |ready| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            ready.store.deleted_items(&ids)
        })
        .await?;
        for (item, old) in absent.into_iter().zip(deleted) {
            if let Some(old) = old {
                remove.extend(dropped_facts(&old, item));
            }
        }
    }
    Ok((remove, add))
}

/// Sends a stored batch's facts to the knowledge graph, with the facts its items dropped as
/// removals, in one graph batch; one the graph cannot take now waits in the graph outbox
/// (sent in order when it answers). The catalog is the truth: a graph that is away is not an
/// error of the load. Says what became of the batch (a replica has no outbox, and sends
/// nothing: refused).
async fn send_facts(ready: &Ready, remove: Vec<Fact>, add: Vec<Fact>) -> Sent {
    let Some(outbox) = &ready.graph_outbox else {
        return Sent::Refused;
    };
    match outbox
        .send(&ready.graph, remove, add, ready.load_timeout)
        .await
    {
        Ok(sent) => sent,
        Err(error) => {
            tracing::error!(%error, "item facts could not be sent nor queued for the graph");
            Sent::Refused
        }
    }
}

/// Runs `write` (a batch stored, applied in memory and sent to the graph) as a task of its
/// own, which goes on to its end when the caller goes away meanwhile (a deadline or a
/// cancelled call drops the handler at its next await): a batch the store took then reaches
/// memory and the graph too. `held`, the guards that order such writes, is handed back when
/// it is done; if the caller went, the task releases it then, not before.
async fn to_the_end<H: Send + 'static, T: Send + 'static>(
    held: H,
    write: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<(H, T), Status> {
    tokio::spawn(async move { write.await.map(|done| (held, done)) })
        .await
        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
}

async fn blocking<T: Send + 'static>(
    ready: &Arc<Ready>,
    work: impl FnOnce(&Ready) -> Result<T, RankError> + Send + 'static,
) -> Result<T, Status> {
    let ready = ready.clone();
    tokio::task::spawn_blocking(move || work(&ready))
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(status)
}

fn status(error: RankError) -> Status {
    match error {
        RankError::InvalidInput(m) => Status::invalid_argument(m),
        RankError::NotFound(m) => Status::not_found(m),
        RankError::Internal(m) => {
            tracing::error!(error = %m, "ranker failure");
            Status::internal("ranker failure; see the service log")
        }
        // gRPC's code for a file system out of space; any other failure of the disk passes
        // when the service restarts (on another node, or after a repair).
        failed @ RankError::StoreFailed { full: true, .. } => {
            Status::resource_exhausted(failed.to_string())
        }
        failed @ RankError::StoreFailed { .. } => Status::unavailable(failed.to_string()),
    }
}

/// Time since the Unix epoch, the suffix of generated model versions (zero on a clock set
/// before 1970).
fn unix_time() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A proto3 float setting: 0 (unset) means the default.
fn or_default(value: f32, default: f64) -> f64 {
    if value == 0.0 {
        default
    } else {
        f64::from(value)
    }
}

/// A proto3 count setting: 0 (unset) means the default.
fn count_or_default(value: u32, default: usize) -> usize {
    match value {
        0 => default,
        n => n as usize,
    }
}

fn poisoned() -> Status {
    Status::internal("catalog lock poisoned; restart the service")
}

impl RankerService {
    /// Refuses `what` on a replica: the primary's store is the one written.
    fn primary_only(&self, what: &str) -> Result<(), Status> {
        match &self.follows {
            Some((url, _)) => Err(Status::failed_precondition(format!(
                "this ranker is a replica of {url}: send {what} to the primary"
            ))),
            None => Ok(()),
        }
    }

    fn ready(&self) -> Result<Arc<Ready>, Status> {
        self.ready
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the ranker store is still opening"))
    }
}

fn item_from_pb(item: pb::Item) -> Result<Item, RankError> {
    validate_id(&item.id)?;
    one_attribute_per_name(&item.id, item.attributes.keys().map(String::as_str))?;
    Item {
        id: item.id,
        title: item.title,
        description: item.description,
        category: item.category,
        brand: item.brand,
        price: item.price,
        attributes: item.attributes.into_iter().collect(),
        in_stock: item.in_stock,
    }
    .validated()
}

/// A request's count `name` (how many results): `default` for 0 (unset), else 1..=`max`.
fn count_argument(name: &str, value: u32, default: usize, max: u32) -> Result<usize, Status> {
    match value {
        0 => Ok(default),
        n if n <= max => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "{name} must be 1..={max}, got {n}"
        ))),
    }
}

/// Unknown ids `UpdateItems` lists (it counts them all).
const MAX_UNKNOWN_IDS: usize = 100;

/// Items `SyncGraph` checks per page: one `NeighborsOfEach` call (its limit) and one graph
/// batch.
const SYNC_PAGE: usize = 256;

/// The most user ids one `ForgetUsers` takes (each call reads the whole log once).
const MAX_FORGET_USERS: usize = 1000;

/// The last time `RankRequest.rules_at_ms` may name: 9999-12-31T23:59:59.999 UTC.
const LAST_RULES_AT_MS: i64 = 253_402_300_799_999;

fn rank_query(request: pb::RankRequest, hasher: &UserHasher) -> Result<RankQuery, RankError> {
    let filters = match request.filters {
        Some(f) => Filters::new(
            &f.category,
            &f.brands,
            f.min_price,
            f.max_price,
            f.in_stock_only,
        )?
        .with_attributes(f.attributes.into_iter().map(|a| (a.name, a.values)))?,
        None => Filters::default(),
    };
    if !request.diversity.is_finite() {
        return Err(RankError::InvalidInput(
            "diversity must be a number between 0 and 1".into(),
        ));
    }
    if request.candidate_ids.len() > 10_000 {
        return Err(RankError::InvalidInput(format!(
            "candidate_ids holds {} ids; the limit is 10000",
            request.candidate_ids.len()
        )));
    }
    if request.facets.len() > MAX_FACETS {
        return Err(RankError::InvalidInput(format!(
            "at most {MAX_FACETS} facets, got {}",
            request.facets.len()
        )));
    }
    let facets = request
        .facets
        .iter()
        .enumerate()
        .map(|(i, name)| {
            FacetField::parse(name)
                .map_err(|e| RankError::InvalidInput(format!("facets[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let user = Some(request.user_id.trim())
        .filter(|u| !u.is_empty())
        .map(|u| hasher.key(u));
    if let Some(at) = request.rules_at_ms
        && !(0..=LAST_RULES_AT_MS).contains(&at)
    {
        return Err(RankError::InvalidInput(format!(
            "rules_at_ms {at} is not a time from 1970 to 9999 in ms since the Unix epoch"
        )));
    }
    Ok(RankQuery {
        user,
        // Set by the ranker from the shop's pin rules, not by a request.
        hidden: Vec::new(),
        // The shop's scheduled rules are read at the server's clock, or at the time the
        // request previews.
        now_ms: request.rules_at_ms,
        query: Some(request.query).filter(|q| !q.trim().is_empty()),
        item: Some(request.item_id).filter(|i| !i.is_empty()),
        weights: request
            .weights
            .map(|w| [w.dense, w.bm25, w.cf, w.kg, w.popularity]),
        sort: match pb::Sort::try_from(request.sort) {
            Ok(pb::Sort::Relevance) => SortOrder::Relevance,
            Ok(pb::Sort::PriceAscending) => SortOrder::PriceAscending,
            Ok(pb::Sort::PriceDescending) => SortOrder::PriceDescending,
            Ok(pb::Sort::Popularity) => SortOrder::Popularity,
            Err(_) => {
                return Err(RankError::InvalidInput(format!(
                    "unknown sort {}",
                    request.sort
                )));
            }
        },
        k: request.k as usize,
        offset: request.offset as usize,
        filters,
        exclude: request.exclude.into_iter().collect(),
        candidate_ids: request.candidate_ids,
        explain: request.explain,
        all_signals: request.all_signals,
        diversity: request.diversity,
        include_purchased: request.include_purchased,
        verbatim: request.verbatim,
        prefix: request.prefix,
        facets,
        collapse: match request.collapse.trim() {
            "" => None,
            name => Some(
                FacetField::parse_collapse(name)
                    .map_err(|e| RankError::InvalidInput(format!("collapse: {e}")))?,
            ),
        },
    })
}

/// Stores checked events on a primary and takes them into memory (what `RecordInteractions`
/// does with each gathered batch), counting them into `response`.
async fn record_checked(
    ready: &Arc<Ready>,
    metrics: &Arc<metrics::RankMetrics>,
    events: Vec<Interaction>,
    response: &mut pb::RecordInteractionsResponse,
) -> Result<(), Status> {
    let recording = ready.events.clone().read_owned().await;
    let metrics = metrics.clone();
    // Stored and counted in memory in one task: events stored but not counted would stay
    // so (sent again, they are duplicates), and replicas, which apply the store's writes,
    // would count them.
    let (recorded, unknown_items) = blocking(ready, move |ready| {
        let _recording = recording;
        let recorded = ready.store.record(events)?;
        metrics.events(
            recorded.events.len() as u64,
            recorded.duplicates,
            recorded.forgotten,
        );
        let mut unknown_items = 0;
        // All sent before (a file loaded again): `Rank` is not held up for nothing.
        if !recorded.events.is_empty() {
            let mut catalog = ready
                .ranker
                .catalog()
                .write()
                .map_err(|_| lock_poisoned())?;
            for event in &recorded.events {
                if catalog.get(&event.item_id).is_none() {
                    unknown_items += 1;
                }
                catalog.record(event);
            }
        }
        Ok((recorded, unknown_items))
    })
    .await?;
    response.forgotten += recorded.forgotten;
    response.duplicates += recorded.duplicates;
    response.unknown_items += unknown_items;
    response.recorded += recorded.events.len() as u64;
    Ok(())
}

/// A primary whose store was a replica's (promoted: ARCHITECTURE.md, "Ranker replicas")
/// records the events that replica's outbox still held for the primary it lost, oldest
/// first, as `RecordInteractions` would have (duplicates and forgotten shoppers' events
/// turned away), and empties the outbox. A message that does not decode or check is logged
/// and dropped, as the outbox's own delivery drops one its primary refuses.
async fn record_left_in_outbox(
    ready: &Arc<Ready>,
    metrics: &Arc<metrics::RankMetrics>,
) -> Result<pb::RecordInteractionsResponse, Status> {
    let tree = ready.store.outbox_tree().map_err(status)?;
    let mut response = pb::RecordInteractionsResponse::default();
    for entry in tree.iter() {
        let (key, value) = entry.map_err(|e| Status::internal(format!("outbox: {e}")))?;
        let checked = <pb::RecordInteractionsRequest as prost::Message>::decode(value.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|message| {
                interactions_from_pb(message, &ready.hasher).map_err(|e| e.to_string())
            });
        match checked {
            Ok(events) => record_checked(ready, metrics, events, &mut response).await?,
            Err(error) => {
                tracing::error!(%error, "a message left in the outbox cannot be recorded; dropped");
            }
        }
        tree.remove(key)
            .map_err(|e| Status::internal(format!("outbox: {e}")))?;
    }
    tree.flush()
        .map_err(|e| Status::internal(format!("outbox: {e}")))?;
    Ok(response)
}

/// A replica's `RecordInteractions`: each message checked as the primary checks it, then
/// passed on to the primary ([`Gathered`] with the messages that arrived with it), the
/// replica taking the events with the primary's next writes like every other replica. While the primary cannot be reached, or while earlier messages
/// still wait for it (their order is kept), or while `hold` (the replica refuses its
/// primary's store), a message goes to the replica's outbox instead (`queued`), which
/// passes it on once the primary is back.
async fn pass_on(
    ready: &Ready,
    primary: &pb::ranker_client::RankerClient<tonic::transport::Channel>,
    hold: bool,
    stream: Streaming<pb::RecordInteractionsRequest>,
) -> Result<Response<pb::RecordInteractionsResponse>, Status> {
    let Some(outbox) = &ready.outbox else {
        return Err(Status::internal("a replica without an outbox"));
    };
    let checked = |message: pb::RecordInteractionsRequest| {
        for (i, event) in message.interactions.iter().enumerate() {
            interaction_from_pb(event.clone(), &ready.hasher, i).map_err(status)?;
        }
        Ok::<_, Status>(message.interactions)
    };
    let mut response = pb::RecordInteractionsResponse::default();
    let mut failed = None;
    // The messages that already arrived go on together: one call, and one store write at
    // the primary, for many one-event messages.
    let mut stream = Gatherer::new(stream);
    while failed.is_none()
        && let Some(gathered) = stream.next(&checked).await?
    {
        failed = gathered.failed;
        let mut message = pb::RecordInteractionsRequest {
            interactions: gathered.events,
        };
        if outbox.is_empty() && !hold {
            let sent = primary
                .clone()
                .record_interactions(futures::stream::iter([message.clone()]))
                .await;
            match sent {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    response.recorded += answer.recorded;
                    response.unknown_items += answer.unknown_items;
                    response.forgotten += answer.forgotten;
                    response.duplicates += answer.duplicates;
                    continue;
                }
                Err(error) if outbox::unreachable(&error) => {
                    tracing::warn!(%error, "the primary is unreachable: events go to the outbox");
                }
                Err(error) => return Err(error),
            }
        }
        // An event without a time is given its arrival here, not its later delivery.
        let now = unix_time().as_millis() as i64;
        for event in &mut message.interactions {
            if event.timestamp_ms == 0 {
                event.timestamp_ms = now;
            }
        }
        let events = message.interactions.len() as u64;
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || outbox.push(&message))
            .await
            .map_err(|e| Status::internal(format!("outbox task failed: {e}")))??;
        response.queued += events;
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(Response::new(response)),
    }
}

/// Events `RecordInteractions` gathers from messages that arrived together: into one store
/// write on a primary, into one message for the primary on a replica.
const GATHER_EVENTS: usize = 1000;

/// The events of a `RecordInteractions` stream's next message and of the messages that had
/// already arrived after it, as long as they come to at most [`GATHER_EVENTS`] (a larger
/// message goes alone), each message checked as it is taken.
struct Gathered<T> {
    events: Vec<T>,
    /// A bad message after them: the stream ends with its error once they are stored, as
    /// it would have one message at a time.
    failed: Option<Status>,
}

/// A `RecordInteractions` stream read as [`Gathered`] events.
struct Gatherer {
    stream: Streaming<pb::RecordInteractionsRequest>,
    /// A message taken that did not fit the events before it: the first of the next.
    held: Option<pb::RecordInteractionsRequest>,
}

impl Gatherer {
    fn new(stream: Streaming<pb::RecordInteractionsRequest>) -> Self {
        Self { stream, held: None }
    }

    /// The next gathered events; `None` at the end of the stream; a bad first message's
    /// error.
    async fn next<T>(
        &mut self,
        check: &impl Fn(pb::RecordInteractionsRequest) -> Result<Vec<T>, Status>,
    ) -> Result<Option<Gathered<T>>, Status> {
        let first = match self.held.take() {
            Some(held) => held,
            None => match self.stream.next().await {
                Some(first) => first?,
                None => return Ok(None),
            },
        };
        let mut events = check(first)?;
        while events.len() < GATHER_EVENTS {
            let next = match futures::FutureExt::now_or_never(self.stream.next()) {
                Some(Some(Ok(next))) => next,
                Some(Some(Err(error))) => {
                    return Ok(Some(Gathered {
                        events,
                        failed: Some(error),
                    }));
                }
                Some(None) | None => break,
            };
            if events.len() + next.interactions.len() > GATHER_EVENTS {
                self.held = Some(next);
                break;
            }
            match check(next) {
                Ok(next) => events.extend(next),
                Err(error) => {
                    return Ok(Some(Gathered {
                        events,
                        failed: Some(error),
                    }));
                }
            }
        }
        Ok(Some(Gathered {
            events,
            failed: None,
        }))
    }
}

/// A `RecordInteractions` message's events as the store keeps them; the first bad one is
/// the error (naming its index).
fn interactions_from_pb(
    message: pb::RecordInteractionsRequest,
    hasher: &UserHasher,
) -> Result<Vec<Interaction>, RankError> {
    message
        .interactions
        .into_iter()
        .enumerate()
        .map(|(i, e)| interaction_from_pb(e, hasher, i))
        .collect()
}

fn interaction_from_pb(
    event: pb::Interaction,
    hasher: &UserHasher,
    index: usize,
) -> Result<Interaction, RankError> {
    let bad = |why: String| RankError::InvalidInput(format!("interactions[{index}]: {why}"));
    if event.user_id.trim().is_empty() {
        return Err(bad("user_id is empty".into()));
    }
    validate_id(&event.item_id).map_err(|e| bad(e.to_string()))?;
    let kind = match pb::InteractionKind::try_from(event.kind) {
        Ok(pb::InteractionKind::View) => InteractionKind::View,
        Ok(pb::InteractionKind::Click) => InteractionKind::Click,
        Ok(pb::InteractionKind::Cart) => InteractionKind::Cart,
        Ok(pb::InteractionKind::Purchase) => InteractionKind::Purchase,
        Ok(pb::InteractionKind::Rating) => InteractionKind::Rating,
        _ => {
            return Err(bad(format!(
                "kind {} is not one of view, click, cart, purchase, rating",
                event.kind
            )));
        }
    };
    if !event.value.is_finite() {
        return Err(bad("value is not a finite number".into()));
    }
    let now_ms = souk_ranker_core::item::now_ms();
    let timestamp_ms = match event.timestamp_ms {
        0 => now_ms,
        t => {
            souk_ranker_core::item::check_event_ms(t, now_ms).map_err(bad)?;
            t
        }
    };
    Ok(Interaction {
        user: hasher.key(event.user_id.trim()),
        item_id: event.item_id,
        kind,
        value: event.value,
        timestamp_ms,
    })
}

fn affinities(list: Vec<(String, f32)>) -> Vec<pb::Affinity> {
    list.into_iter()
        .map(|(name, weight)| pb::Affinity { name, weight })
        .collect()
}

#[tonic::async_trait]
impl pb::ranker_server::Ranker for RankerService {
    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        let ready = self.ready()?;
        let query = rank_query(request.into_inner(), &ready.hasher).map_err(status)?;
        let ranking = ready.ranker.rank(&query).await.map_err(status)?;
        self.metrics.observe(&ranking, query.query.as_deref());
        Ok(Response::new(pb::RankResponse {
            items: ranking
                .items
                .into_iter()
                .map(|i| pb::RankedItem {
                    id: i.id,
                    score: i.score,
                    title: i.title,
                    brand: i.brand,
                    category: i.category,
                    price: i.price,
                    contributions: i
                        .contributions
                        .into_iter()
                        .map(|c| pb::Contribution {
                            signal: c.signal.name().to_string(),
                            value: c.value,
                            contribution: c.contribution,
                        })
                        .collect(),
                    reasons: i.reasons,
                    pinned: i.pinned,
                    boost: i.boost,
                    group_size: i.group_size,
                })
                .collect(),
            missing_signals: ranking
                .missing_signals
                .iter()
                .map(|s| s.name().to_string())
                .collect(),
            candidates: ranking.candidates as u32,
            model_version: ranking.model_version,
            corrected_query: ranking.corrected_query.unwrap_or_default(),
            words_matched: ranking.words_matched,
            widened_to: ranking.widened_to,
            redirect: ranking.redirect.unwrap_or_default(),
            banners: ranking.banners,
            price_from_query: ranking.price_from_query.map(|p| pb::QueryPrice {
                min_price: p.min,
                max_price: p.max,
                phrase: p.phrase,
            }),
            facets: ranking
                .facets
                .into_iter()
                .map(|f| pb::Facet {
                    name: f.field.name(),
                    values: f
                        .values
                        .into_iter()
                        .enumerate()
                        .map(|(i, (value, count))| {
                            let (price_from, price_to) = f
                                .field
                                .price_bucket(i)
                                .map_or((None, None), |(from, to, _)| (from, to));
                            pb::FacetValue {
                                value,
                                count,
                                price_from,
                                price_to,
                            }
                        })
                        .collect(),
                    other_values: f.other_values,
                    min_price: f.price_range.map(|(low, _)| low),
                    max_price: f.price_range.map(|(_, high)| high),
                })
                .collect(),
        }))
    }

    async fn upsert_items(
        &self,
        request: Request<Streaming<pb::UpsertItemsRequest>>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        self.primary_only("UpsertItems")?;
        let ready = self.ready()?;
        let mut stream = request.into_inner();
        let mut response = pb::UpsertItemsResponse::default();
        let mut batch_no = 0u64;
        let mut writing = ready.writing.clone().lock_owned().await;
        // The encoder's model is checked once per stream, before its first vector is stored;
        // the first items of an empty catalog store their model's probe with them.
        let mut checked = false;
        // The probe's vector and fingerprint when this stream brings a catalog its first items.
        let mut first_probe: Option<(Vec<f32>, u64)> = None;
        // The fingerprint of the model the stream's probe came from.
        let mut stream_model = 0;
        while let Some(message) = stream.next().await {
            let message = message?;
            let items = message
                .items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    item_from_pb(item).map_err(|e| refused_in_batch(batch_no, "item", i, e))
                })
                .collect::<Result<Vec<_>, Status>>()?;
            batch_no += 1;
            if items.is_empty() {
                continue;
            }
            // An item whose text the catalog embedded already keeps its vector: a price or
            // stock feed sends every item again, and embedding is most of a load's cost (and
            // needs the encoder up). Only new and changed texts are embedded.
            let mut vectors = {
                let texts: Vec<(String, String)> =
                    items.iter().map(|i| (i.id.clone(), i.text())).collect();
                let dimension = ready
                    .ranker
                    .catalog()
                    .read()
                    .map_err(|_| poisoned())?
                    .dimension();
                blocking(&ready, move |ready| {
                    ready.store.vectors_of_same_texts(&texts, dimension)
                })
                .await?
            };
            let to_embed: Vec<usize> = (0..items.len()).filter(|&i| vectors[i].is_none()).collect();
            response.kept_vectors += (items.len() - to_embed.len()) as u64;
            if !to_embed.is_empty() {
                if !checked {
                    let (probe, model) = ready
                        .encoder
                        .probe(ready.load_timeout)
                        .await
                        .map_err(|e| Status::unavailable(format!("cannot embed items: {e}")))?;
                    stream_model = model;
                    match ready.compare_model(&probe, model).map_err(status)? {
                        ModelCheck::Other => {
                            // Earlier batches of this stream may have been stored: theirs
                            // were texts the catalog had embedded already.
                            let stored = batch_no - 1;
                            return Err(Status::failed_precondition(if stored == 0 {
                                format!("{}; this stream stored nothing", sources::OTHER_MODEL)
                            } else {
                                format!(
                                    "{}; batch {stored} (new or changed texts) was not stored, \
                                     the {stored} before it (unchanged texts) were",
                                    sources::OTHER_MODEL
                                )
                            }));
                        }
                        // The first items of a catalog (or the first after it was emptied)
                        // store their model's probe with them.
                        ModelCheck::EmptyCatalog => first_probe = Some((probe, model)),
                        ModelCheck::Same => {}
                    }
                    checked = true;
                }
                let texts = to_embed.iter().map(|&i| items[i].text()).collect();
                let embedded = ready
                    .encoder
                    .embed_many(texts, ready.load_timeout)
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "cannot embed items (batch {}): {e}",
                            batch_no - 1
                        ))
                    })?;
                // Checked per answer, not only at the stream's start: an encoder replaced
                // during a long load would otherwise leave vectors of two models in the
                // catalog.
                if embedded.model != stream_model && embedded.model != 0 && stream_model != 0 {
                    return Err(Status::aborted(format!(
                        "the encoder's model changed during this load: batch {} was not stored, {} earlier batches were (`soukctl stats` says whether the new model is the catalog's)",
                        batch_no - 1,
                        batch_no - 1
                    )));
                }
                if embedded.vectors.len() != to_embed.len() {
                    return Err(Status::internal(
                        "encoder returned the wrong number of vectors",
                    ));
                }
                for (i, vector) in to_embed.into_iter().zip(embedded.vectors) {
                    vectors[i] = Some(vector);
                }
            }
            let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
            if vectors.len() != items.len() {
                return Err(Status::internal("an item was left without a vector"));
            }
            // An id sent twice in a batch ends as its last row, so only that row's facts count.
            let (remove, add) = {
                let mut seen = HashSet::new();
                let last: Vec<&Item> = items
                    .iter()
                    .rev()
                    .filter(|item| seen.insert(item.id.as_str()))
                    .collect();
                graph_change(&ready, last).await?
            };
            let pairs: Vec<(Item, Vec<f32>)> = items.into_iter().zip(vectors).collect();
            let count = pairs.len() as u64;
            let probe = first_probe.take();
            // Under `writing`: graph batches of items go in the order the catalog took them.
            let (held, synced) = to_the_end(writing, {
                let ready = ready.clone();
                async move {
                    // No delete between the store and memory: memory would keep an item the
                    // store deleted.
                    let editing = ready.editing.clone().lock_owned().await;
                    store_items(&ready, pairs, probe).await?;
                    drop(editing);
                    Ok(send_facts(&ready, remove, add).await)
                }
            })
            .await?;
            writing = held;
            response.upserted += count;
            if let Sent::Taken(removed) = synced {
                response.graph_synced += count;
                response.graph_facts_removed += removed;
            }
        }
        Ok(Response::new(response))
    }

    async fn update_items(
        &self,
        request: Request<Streaming<pb::UpdateItemsRequest>>,
    ) -> Result<Response<pb::UpdateItemsResponse>, Status> {
        self.primary_only("UpdateItems")?;
        let ready = self.ready()?;
        let mut stream = request.into_inner();
        let mut response = pb::UpdateItemsResponse::default();
        let mut batch_no = 0u64;
        // One writer at a time with UpsertItems and Reembed: an update applies to the item
        // as the last load left it.
        let mut writing = ready.writing.clone().lock_owned().await;
        while let Some(message) = stream.next().await {
            let updates = message?.updates;
            let batch = batch_no;
            batch_no += 1;
            let bad = |i: usize, e: RankError| refused_in_batch(batch, "update", i, e);
            for (i, update) in updates.iter().enumerate() {
                validate_id(&update.id).map_err(|e| bad(i, e))?;
            }
            // From the read to the store, no delete runs (it would be undone).
            let editing = ready.editing.clone().lock_owned().await;
            let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
            let stored =
                blocking(&ready, move |ready| ready.store.items_with_vectors(&ids)).await?;
            // Several updates of one id apply in order, to one item.
            let mut changed: Vec<(Item, Vec<f32>)> = Vec::new();
            let mut at: HashMap<String, usize> = HashMap::new();
            for (i, (update, stored)) in updates.into_iter().zip(stored).enumerate() {
                let (item, vector) = match at.get(&update.id) {
                    Some(&j) => changed[j].clone(),
                    None => match stored {
                        Some(found) => found,
                        None => {
                            response.unknown += 1;
                            if response.unknown_ids.len() < MAX_UNKNOWN_IDS {
                                response.unknown_ids.push(update.id);
                            }
                            continue;
                        }
                    },
                };
                let item = item
                    .updated(update.price, update.in_stock, update.attributes)
                    .map_err(|e| bad(i, e))?;
                match at.get(&item.id) {
                    Some(&j) => changed[j] = (item, vector),
                    None => {
                        at.insert(item.id.clone(), changed.len());
                        changed.push((item, vector));
                    }
                }
            }
            if changed.is_empty() {
                continue;
            }
            // Each item as stored against its last update in this batch.
            let (remove, add) = graph_change(&ready, changed.iter().map(|(item, _)| item)).await?;
            let count = changed.len() as u64;
            // New attribute values reach the graph as a load's would, old ones leave it.
            let (held, synced) = to_the_end(writing, {
                let ready = ready.clone();
                async move {
                    store_items(&ready, changed, None).await?;
                    drop(editing);
                    Ok(send_facts(&ready, remove, add).await)
                }
            })
            .await?;
            writing = held;
            response.updated += count;
            if let Sent::Taken(removed) = synced {
                response.graph_synced += count;
                response.graph_facts_removed += removed;
            }
        }
        Ok(Response::new(response))
    }

    async fn list_item_ids(
        &self,
        request: Request<pb::ListItemIdsRequest>,
    ) -> Result<Response<pb::ListItemIdsResponse>, Status> {
        let ready = self.ready()?;
        let request = request.into_inner();
        let limit = count_argument("limit", request.limit, 1000, 10_000)?;
        let (ids, more) = blocking(&ready, move |ready| {
            ready.store.item_ids_after(&request.after, limit)
        })
        .await?;
        Ok(Response::new(pb::ListItemIdsResponse { ids, more }))
    }

    async fn delete_items(
        &self,
        request: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        self.primary_only("DeleteItems")?;
        let ready = self.ready()?;
        let ids = request.into_inner().ids;
        // Not in the middle of an update's batch: an update reads items, changes them and
        // stores them, which would bring back an item deleted meanwhile.
        let editing = ready.editing.clone().lock_owned().await;
        let asked = ids.len();
        // Deleted from the store and from memory in one task.
        let deleted = blocking(&ready, move |ready| {
            let _editing = editing;
            let catalog = ready.ranker.catalog();
            let known: Vec<String> = {
                let catalog = catalog.read().map_err(|_| lock_poisoned())?;
                ids.into_iter()
                    .filter(|id| catalog.get(id).is_some())
                    .collect()
            };
            ready.store.delete_items(&known)?;
            let mut catalog = catalog.write().map_err(|_| lock_poisoned())?;
            for id in &known {
                catalog.delete(id);
            }
            Ok(known.len())
        })
        .await?;
        Ok(Response::new(pb::DeleteItemsResponse {
            deleted: deleted as u64,
            not_found: (asked - deleted) as u64,
        }))
    }

    async fn sync_graph(
        &self,
        request: Request<pb::SyncGraphRequest>,
    ) -> Result<Response<pb::SyncGraphResponse>, Status> {
        self.primary_only("SyncGraph")?;
        let ready = self.ready()?;
        let dry_run = request.into_inner().dry_run;
        let mut response = pb::SyncGraphResponse::default();
        let mut after = String::new();
        loop {
            // A page under `writing`: no load changes its items between the graph's read and
            // the batch that sets them right, and the batch goes after the loads' batches.
            let writing = ready.writing.clone().lock_owned().await;
            let from = std::mem::take(&mut after);
            let (ids, more) = blocking(&ready, move |ready| {
                ready.store.item_ids_after(&from, SYNC_PAGE)
            })
            .await?;
            let Some(last) = ids.last() else {
                break;
            };
            after = last.clone();
            // An item deleted since the page was listed is skipped.
            let items: Vec<Item> = {
                let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
                ids.iter()
                    .filter_map(|id| catalog.get(id).cloned())
                    .collect()
            };
            if items.is_empty() {
                // Every item of the page was deleted since it was listed.
                if more {
                    continue;
                }
                break;
            }
            let entities: Vec<String> = items.iter().map(Item::entity).collect();
            let stated = ready
                .graph
                .out_edges_of_each(&entities, &ITEM_RELATIONS, ready.load_timeout)
                .await
                .map_err(|status| {
                    Status::unavailable(format!(
                        "the knowledge graph did not answer ({:?}: {}); {} items were checked{}",
                        status.code(),
                        status.message(),
                        response.items,
                        if dry_run { "" } else { " and set right" }
                    ))
                })?;
            let (mut remove, mut add) = (Vec::new(), Vec::new());
            for (item, (edges, more)) in items.iter().zip(stated) {
                response.items += 1;
                response.partly_read += u64::from(more);
                let (stale, missing) = graph_difference(item, &edges);
                if stale.is_empty() && missing.is_empty() {
                    continue;
                }
                response.differing += 1;
                if response.differing_ids.len() < MAX_UNKNOWN_IDS {
                    response.differing_ids.push(item.id.clone());
                }
                response.stale_facts += stale.len() as u64;
                response.missing_facts += missing.len() as u64;
                remove.extend(stale);
                // With its category chain's edges, which the graph may have lost too.
                add.extend(item.facts());
            }
            let changes = !(remove.is_empty() && add.is_empty());
            if changes && !dry_run {
                // Sent (or queued in the graph outbox) however soon the caller goes away.
                let ready = ready.clone();
                let (_, sent) =
                    to_the_end(
                        writing,
                        async move { Ok(send_facts(&ready, remove, add).await) },
                    )
                    .await?;
                match sent {
                    Sent::Taken(_) => {}
                    Sent::Queued => response.queued_batches += 1,
                    Sent::Refused => {
                        return Err(Status::failed_precondition(format!(
                            "the knowledge graph refused a batch of item facts (the ranker's log says why: a wrong admin token?); {} items were checked, the changes of those before this page made",
                            response.items - items.len() as u64
                        )));
                    }
                }
            }
            if !more {
                break;
            }
        }
        Ok(Response::new(response))
    }

    async fn record_searches(
        &self,
        request: Request<pb::RecordSearchesRequest>,
    ) -> Result<Response<pb::RecordSearchesResponse>, Status> {
        self.primary_only("RecordSearches")?;
        let request = request.into_inner();
        check_searches(&request)?;
        self.metrics.add(&request, false);
        Ok(Response::new(pb::RecordSearchesResponse {}))
    }

    async fn forget_users(
        &self,
        request: Request<pb::ForgetUsersRequest>,
    ) -> Result<Response<pb::ForgetUsersResponse>, Status> {
        self.primary_only("ForgetUsers")?;
        let ready = self.ready()?;
        let ids = request.into_inner().user_ids;
        if ids.is_empty() {
            return Err(Status::invalid_argument("user_ids is empty"));
        }
        if ids.len() > MAX_FORGET_USERS {
            return Err(Status::invalid_argument(format!(
                "{} user ids: at most {MAX_FORGET_USERS} per request",
                ids.len()
            )));
        }
        if let Some(at) = ids.iter().position(|id| id.trim().is_empty()) {
            return Err(Status::invalid_argument(format!("user_ids[{at}] is empty")));
        }
        // Trimmed as `RecordInteractions` trims the ids it stores.
        let users: std::collections::HashSet<souk_ranker_core::UserKey> =
            ids.iter().map(|id| ready.hasher.key(id.trim())).collect();
        let users = Arc::new(users);
        // The log up to a cut taken while no event is being written is read without holding
        // writers back (~1.3 s at 1M events: BENCHMARKS.md, "Session 27"); only the events
        // since are read, and all of them removed, with `RecordInteractions` waiting.
        let cut = {
            let _alone = ready.events.write().await;
            ready.store.event_cut().map_err(status)?
        };
        let read = |before: bool| {
            let (users, cut) = (users.clone(), cut.clone());
            blocking(&ready, move |ready| {
                ready.store.events_of(&users, &cut, before)
            })
        };
        let mut found = read(true).await?;
        let alone = ready.events.clone().write_owned().await;
        found.extend(read(false).await?);
        let (keys, events): (Vec<Vec<u8>>, Vec<Interaction>) = found.into_iter().unzip();
        // Events of theirs stamped until now that arrive later (a replica's outbox, a log
        // loaded again) are turned away; their events after it are new ones.
        let at_ms = unix_time().as_millis() as i64;
        // Forgotten by the store and by memory in one task: a caller that gave up in between
        // left the shopper served from memory, and asking again found nothing left to forget.
        let (users, events) = blocking(&ready, move |ready| {
            let _alone = alone;
            ready.store.forget(&users, at_ms, keys, &events)?;
            ready
                .ranker
                .catalog()
                .write()
                .map_err(|_| lock_poisoned())?
                .forget(&events);
            let forgotten: std::collections::HashSet<&souk_ranker_core::UserKey> =
                events.iter().map(|e| &e.user).collect();
            Ok((forgotten.len() as u64, events.len() as u64))
        })
        .await?;
        tracing::info!(users, events, "forgot shoppers");
        Ok(Response::new(pb::ForgetUsersResponse { users, events }))
    }

    async fn record_interactions(
        &self,
        request: Request<Streaming<pb::RecordInteractionsRequest>>,
    ) -> Result<Response<pb::RecordInteractionsResponse>, Status> {
        if let Some((_, primary)) = &self.follows {
            let ready = self.ready.get().filter(|r| r.outbox.is_some());
            let Some(ready) = ready else {
                // Still opening its store: passed on as it comes.
                // A message the shop's stream failed on ends what is passed on.
                let events = tokio_stream::StreamExt::map_while(request.into_inner(), Result::ok);
                return primary.clone().record_interactions(events).await;
            };
            // While the replica refuses its primary's store (another history), its events
            // wait in the outbox for a primary that holds this replica's: they are not
            // recorded into a store that is about to be replaced.
            let hold = self.replica.refused().is_some();
            return pass_on(ready, primary, hold, request.into_inner()).await;
        }
        let ready = self.ready()?;
        let mut stream = Gatherer::new(request.into_inner());
        let mut response = pb::RecordInteractionsResponse::default();
        let checked = |message: pb::RecordInteractionsRequest| {
            interactions_from_pb(message, &ready.hasher).map_err(status)
        };
        let mut failed = None;
        // The messages that already arrived are stored in one write (a shop streaming one
        // event per message pays one flush for many).
        while failed.is_none()
            && let Some(gathered) = stream.next(&checked).await?
        {
            failed = gathered.failed;
            record_checked(&ready, &self.metrics, gathered.events, &mut response).await?;
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(Response::new(response)),
        }
    }

    async fn user_profile(
        &self,
        request: Request<pb::UserProfileRequest>,
    ) -> Result<Response<pb::UserProfileResponse>, Status> {
        let ready = self.ready()?;
        let request = request.into_inner();
        if request.user_id.trim().is_empty() {
            return Err(Status::invalid_argument("user_id is empty"));
        }
        let limit = count_argument("limit", request.limit, 10, 100)?;
        let user = ready.hasher.key(request.user_id.trim());
        let (profile, history) = {
            let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
            let history = catalog.recent_history(&user, HISTORY_WINDOW);
            (catalog.profile(&user, limit), history)
        };
        let mut response = pb::UserProfileResponse {
            interactions: profile.interactions,
            categories: affinities(profile.categories),
            brands: affinities(profile.brands),
            attributes: affinities(profile.attributes),
            recent_items: profile.recent_items,
            missing_signals: Vec::new(),
        };
        if history.is_empty() {
            return Ok(Response::new(response));
        }
        let entities = history.iter().map(|h| item_entity(&h.item_id)).collect();
        match ready.graph.out_edges_up(entities).await {
            Ok(edges) => {
                let (categories, brands, attributes) = graph_profile(&history, &edges, limit);
                response.categories = affinities(categories);
                response.brands = affinities(brands);
                response.attributes = affinities(attributes);
            }
            Err(error) => {
                tracing::warn!(%error, "knowledge graph unavailable; profile from the catalog");
                response.missing_signals.push("kg".into());
            }
        }
        Ok(Response::new(response))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let ready = self.ready()?;
        let history = ready.store.lineage().map_err(status)?;
        let history_write = if self.follows.is_some() {
            ready
                .store
                .position()
                .map_err(status)?
                .map_or(0, |(_, after)| after)
        } else {
            ready.store.last_written().map_err(status)?.1
        };
        let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
        let (replica_copies, replica_resumes) = self.replica.catch_ups();
        let listed = self
            .metrics
            .queries
            .lock()
            .map(|q| q.top(UNMATCHED_SHOWN))
            .unwrap_or_default();
        Ok(Response::new(pb::StatsResponse {
            items: catalog.len() as u64,
            users: catalog.users() as u64,
            interactions: catalog.interactions(),
            dimension: catalog.dimension().unwrap_or(0) as u32,
            model_version: ready.ranker.model_version(),
            cf_version: catalog
                .trained_cf()
                .map(|m| m.version.clone())
                .unwrap_or_default(),
            lexicon_words: catalog.lexicon_len() as u32,
            encoder: ready.model_state(catalog.is_empty()).to_string(),
            unmatched_queries: listed.unmatched,
            corrected_queries: listed.corrected,
            synonyms: catalog.synonyms().rules().len() as u32,
            pin_rules: catalog.pins().rules().len() as u32,
            follows: self
                .follows
                .as_ref()
                .map(|(url, _)| url.clone())
                .unwrap_or_default(),
            in_sync: self.replica.in_sync(),
            replica_copies,
            replica_resumes,
            replica_refused: self.replica.refused().unwrap_or_default(),
            outbox: ready.outbox.as_ref().map_or(0, |o| o.events()),
            graph_outbox: ready.graph_outbox.as_ref().map_or(0, |o| o.len()),
            history: history.map(|h| format!("{h:016x}")).unwrap_or_default(),
            history_write,
        }))
    }

    async fn reembed(
        &self,
        _request: Request<pb::ReembedRequest>,
    ) -> Result<Response<pb::ReembedResponse>, Status> {
        self.primary_only("Reembed")?;
        let ready = self.ready()?;
        Ok(Response::new(reembed(&ready).await?))
    }

    async fn train_cf(
        &self,
        request: Request<pb::TrainCfRequest>,
    ) -> Result<Response<pb::TrainCfResponse>, Status> {
        self.primary_only("TrainCf")?;
        let ready = self.ready()?;
        let request = request.into_inner();
        let algorithm = match pb::CfAlgorithm::try_from(request.algorithm) {
            Ok(pb::CfAlgorithm::Ease) => CfAlgorithm::Ease,
            Ok(pb::CfAlgorithm::ItemKnn) => CfAlgorithm::ItemKnn,
            Ok(pb::CfAlgorithm::Ials) => CfAlgorithm::Ials,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown algorithm {}",
                    request.algorithm
                )));
            }
        };
        let defaults = CfOptions::default();
        let options = CfOptions {
            algorithm,
            lambda: or_default(request.lambda, defaults.lambda),
            max_items: count_or_default(request.max_items, defaults.max_items),
            neighbours: count_or_default(request.neighbors, defaults.neighbours),
            ials: IalsOptions {
                dim: count_or_default(request.dim, defaults.ials.dim),
                reg: or_default(request.reg, defaults.ials.reg),
                unobserved: or_default(request.unobserved, defaults.ials.unobserved),
                iterations: count_or_default(request.iterations, defaults.ials.iterations),
                // Two fit threads (the default), not every core: the fit shares the machine
                // with live `Rank` traffic, and 10k items take 6.5 s on two (BENCHMARKS.md).
                ..defaults.ials
            },
        };
        options.validate().map_err(status)?;
        let Ok(fitting) = self.fitting.clone().try_lock_owned() else {
            return Err(Status::aborted(
                "a collaborative-filter fit is already running",
            ));
        };
        let started = std::time::Instant::now();
        let users = ready
            .ranker
            .catalog()
            .read()
            .map_err(|_| poisoned())?
            .user_item_sets();
        let version = format!("{}-{}", algorithm.name(), unix_time().as_millis());
        let fitted = {
            let ready = ready.clone();
            // Stored and served in one task, which holds `fitting` to its end.
            tokio::task::spawn_blocking(move || -> Result<_, RankError> {
                let _fitting = fitting;
                let model = Arc::new(fit_served(&users, &options, version)?);
                ready.store.put_cf(&model)?;
                ready
                    .ranker
                    .catalog()
                    .write()
                    .map_err(|_| lock_poisoned())?
                    .set_trained_cf(Some(model.clone()));
                Ok(model)
            })
            .await
            .map_err(|e| Status::internal(format!("fit task failed: {e}")))?
            .map_err(status)?
        };
        let response = pb::TrainCfResponse {
            version: fitted.version.clone(),
            items: fitted.items() as u64,
            users: fitted.users as u64,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            version = %response.version,
            items = response.items,
            users = response.users,
            seconds = response.seconds,
            "collaborative filter trained"
        );
        Ok(Response::new(response))
    }

    async fn set_fusion(
        &self,
        request: Request<pb::SetFusionRequest>,
    ) -> Result<Response<pb::SetFusionResponse>, Status> {
        self.primary_only("SetFusion")?;
        let ready = self.ready()?;
        let model = request
            .into_inner()
            .model
            .ok_or_else(|| Status::invalid_argument("model is missing"))?;
        let weights = |w: Option<pb::FusionWeights>, name: &str| {
            w.map(|w| [w.dense, w.bm25, w.cf, w.kg, w.popularity])
                .ok_or_else(|| Status::invalid_argument(format!("model.{name} is missing")))
        };
        let model = FusionModel {
            version: if model.version.is_empty() {
                format!("fusion-{}", unix_time().as_secs())
            } else {
                model.version
            },
            with_query: weights(model.with_query, "with_query")?,
            without_query: weights(model.without_query, "without_query")?,
            with_item: match model.with_item {
                Some(w) => weights(Some(w), "with_item")?,
                None => ready.ranker.model().with_item,
            },
        };
        model.validate().map_err(status)?;
        let settings = ready.settings.clone().lock_owned().await;
        let version = model.version.clone();
        blocking(&ready, move |ready| {
            let _settings = settings;
            ready.store.put_fusion(&model)?;
            ready.ranker.set_model(model)
        })
        .await?;
        tracing::info!(%version, "fusion weights replaced");
        Ok(Response::new(pb::SetFusionResponse { version }))
    }

    async fn set_synonyms(
        &self,
        request: Request<pb::SetSynonymsRequest>,
    ) -> Result<Response<pb::SetSynonymsResponse>, Status> {
        self.primary_only("SetSynonyms")?;
        let ready = self.ready()?;
        let rules: Vec<SynonymRule> = request
            .into_inner()
            .synonyms
            .into_iter()
            .map(|s| SynonymRule {
                phrases: s.phrases,
                replacement: s.replacement,
            })
            .collect();
        let synonyms = Arc::new(
            Synonyms::new(rules)
                .map_err(|e| Status::invalid_argument(format!("{e}; the previous set stays")))?,
        );
        let count = synonyms.rules().len() as u32;
        let settings = ready.settings.clone().lock_owned().await;
        let finding_nothing = blocking(&ready, move |ready| {
            let _settings = settings;
            ready.store.put_synonyms(synonyms.rules())?;
            let mut catalog = ready
                .ranker
                .catalog()
                .write()
                .map_err(|_| lock_poisoned())?;
            let idle = synonyms.finding_nothing(|terms| catalog.holds_all(terms));
            catalog.set_synonyms(synonyms);
            Ok(idle.into_iter().map(|i| i as u32).collect())
        })
        .await?;
        // Cached query vectors stay right: an equivalence leaves the query's text as typed,
        // and a one-way reading is embedded under its new text.
        tracing::info!(synonyms = count, "synonyms replaced");
        Ok(Response::new(pb::SetSynonymsResponse {
            synonyms: count,
            finding_nothing,
        }))
    }

    async fn set_pins(
        &self,
        request: Request<pb::SetPinsRequest>,
    ) -> Result<Response<pb::SetPinsResponse>, Status> {
        self.primary_only("SetPins")?;
        let ready = self.ready()?;
        let rules: Vec<PinRule> = request
            .into_inner()
            .rules
            .into_iter()
            .map(PinRule::from)
            .collect();
        let pins = Arc::new(
            Pins::new(rules)
                .map_err(|e| Status::invalid_argument(format!("{e}; the previous set stays")))?,
        );
        let count = pins.rules().len() as u32;
        let settings = ready.settings.clone().lock_owned().await;
        let missing_items = blocking(&ready, move |ready| {
            let _settings = settings;
            ready.store.put_pins(pins.rules())?;
            let mut catalog = ready
                .ranker
                .catalog()
                .write()
                .map_err(|_| lock_poisoned())?;
            let missing = pins.missing(|id| catalog.get(id).is_some());
            catalog.set_pins(pins);
            Ok(missing)
        })
        .await?;
        tracing::info!(rules = count, "pinned results replaced");
        Ok(Response::new(pb::SetPinsResponse {
            rules: count,
            missing_items,
        }))
    }

    async fn get_pins(
        &self,
        _request: Request<pb::GetPinsRequest>,
    ) -> Result<Response<pb::GetPinsResponse>, Status> {
        let ready = self.ready()?;
        let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
        let pins = catalog.pins();
        let rules = pins.rules().iter().map(pb::PinRule::from).collect();
        Ok(Response::new(pb::GetPinsResponse {
            rules,
            applied: pins.applied_counts(),
        }))
    }

    type FollowStream = tokio_stream::wrappers::ReceiverStream<Result<pb::StoreChange, Status>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let request = request.into_inner();
        if let Some((url, _)) = &self.follows
            && !request.restore
        {
            return Err(Status::failed_precondition(format!(
                "this ranker is itself a replica of {url}: follow the primary"
            )));
        }
        if self.follows.is_some() && self.replica.in_sync() {
            return Err(Status::failed_precondition(
                "this replica is in sync with its primary: restore from it only while its \
                 primary cannot be followed (its store was lost)",
            ));
        }
        let ready = self.ready()?;
        if request.restore {
            tracing::info!("a ranker restores its store from this one's");
        }
        // A restore is a whole copy.
        let resume =
            (request.origin != 0 && !request.restore).then_some((request.origin, request.after));
        let of_replica = self.follows.is_some();
        let changes = replica::stream_store(ready, resume, of_replica, self.stopping.clone())?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            changes,
        )))
    }

    async fn get_synonyms(
        &self,
        _request: Request<pb::GetSynonymsRequest>,
    ) -> Result<Response<pb::GetSynonymsResponse>, Status> {
        let ready = self.ready()?;
        let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
        let synonyms = catalog
            .synonyms()
            .rules()
            .iter()
            .map(|rule| pb::Synonym {
                phrases: rule.phrases.clone(),
                replacement: rule.replacement.clone(),
            })
            .collect();
        Ok(Response::new(pb::GetSynonymsResponse { synonyms }))
    }

    async fn suggest(
        &self,
        request: Request<pb::SuggestRequest>,
    ) -> Result<Response<pb::SuggestResponse>, Status> {
        let ready = self.ready()?;
        let request = request.into_inner();
        check_query_length(&request.query).map_err(status)?;
        let k = count_argument("k", request.k, 5, 16)?;
        let suggestions = {
            let catalog = ready.ranker.catalog().read().map_err(|_| poisoned())?;
            catalog.suggest(&request.query, k)
        };
        Ok(Response::new(pb::SuggestResponse {
            suggestions: suggestions
                .into_iter()
                .map(|(query, items)| pb::Suggestion {
                    query,
                    items: items as u64,
                })
                .collect(),
        }))
    }

    async fn get_fusion(
        &self,
        _request: Request<pb::GetFusionRequest>,
    ) -> Result<Response<pb::FusionModel>, Status> {
        let model = self.ready()?.ranker.model();
        let weights = |w: [f32; 5]| pb::FusionWeights {
            dense: w[0],
            bm25: w[1],
            cf: w[2],
            kg: w[3],
            popularity: w[4],
        };
        Ok(Response::new(pb::FusionModel {
            version: model.version,
            with_query: Some(weights(model.with_query)),
            without_query: Some(weights(model.without_query)),
            with_item: Some(weights(model.with_item)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pod of a StatefulSet gets the same `--primary`: pod 0 serves as the primary,
    /// the others follow it; elsewhere an explicit URL is always followed.
    #[test]
    fn the_pod_named_by_the_primary_url_is_the_primary() {
        let url = "http://souk-ranker-0.souk-ranker-headless.shop.svc:50053";
        assert_eq!(follows(Some(url), Some("souk-ranker-0")), None);
        assert_eq!(follows(Some(url), Some("SOUK-RANKER-0")), None);
        assert_eq!(
            follows(Some(url), Some("souk-ranker-1")).as_deref(),
            Some(url)
        );
        assert_eq!(
            follows(Some("10.0.0.7:50053"), Some("souk-ranker-0")).as_deref(),
            Some("10.0.0.7:50053")
        );
        assert_eq!(
            follows(Some("http://127.0.0.1:1"), None).as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(follows(Some(" "), Some("x")), None);
        assert_eq!(follows(None, Some("x")), None);
    }

    /// A changed graph is written once it holds still for one look; one that keeps changing
    /// (a catalog load) is written every `ANN_SAVE_MAX_WAIT`; a saved one is not written.
    #[test]
    fn the_graph_is_saved_when_quiet_or_after_the_longest_wait() {
        let start = Instant::now();
        let at = |looks: u32| start + ANN_SAVE_CHECK * looks;
        let mut policy = SavePolicy::default();
        assert!(
            !policy.due(3, store::ANN_NOT_SAVED, at(0)),
            "changed since the last look"
        );
        assert!(
            policy.due(3, store::ANN_NOT_SAVED, at(1)),
            "quiet for one look"
        );
        assert!(!policy.due(3, 3, at(2)), "saved");

        let per_wait = (ANN_SAVE_MAX_WAIT.as_secs() / ANN_SAVE_CHECK.as_secs()) as u32;
        let mut saved_at = Vec::new();
        for look in 0..3 * per_wait {
            let changes = 4 + u64::from(look);
            if policy.due(changes, 3, at(3 + look)) {
                saved_at.push(look);
            }
        }
        assert_eq!(saved_at, vec![per_wait, 2 * per_wait + 1]);
        assert!(!policy.due(100, 100, at(400)));
    }
}
