//! The encoder gRPC service (`souk.encoder.v1.Encoder`): text in, vectors out, through the
//! dynamic batcher of `souk-encoder-core` and the candle backend.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! let args = souk_encoder::EncoderArgs::parse_from(["souk-encoder", "--listen", "127.0.0.1:0"]);
//! souk_encoder::run(args, souk_shared::shutdown::signal()).await
//! # }
//! ```
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use souk_encoder_candle::CandleBackend;
use souk_encoder_core::batcher::{Batcher, BatcherOptions};

pub mod metrics;
use souk_encoder_core::{
    EncoderError, ModelFiles, TextKind, TextTokenizer, cut_fingerprint, l2_normalize,
};
use souk_proto::encoder::v1 as pb;
use souk_shared::config::ServerArgs;
use souk_shared::server::GrpcServer;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Flags of `souk-encoder`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "souk-encoder", version, about = "souk's text encoder (gRPC)")]
pub struct EncoderArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SOUK_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Model directory: config.json, model.safetensors, tokenizer.json and the
    /// sentence-transformers pooling config.
    #[arg(
        long,
        env = "SOUK_MODEL_DIR",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    pub model_dir: PathBuf,
    /// Where the forward pass runs: cpu or cuda:N (needs the `cuda` build).
    #[arg(long, env = "SOUK_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Numeric type: f32, or f16/bf16 on GPU.
    #[arg(long, env = "SOUK_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Forward-pass implementation: auto (packed on CPU, fused on GPU), packed, fused, flash or graph
    /// (candle's stock ops, for comparison). See ARCHITECTURE.md.
    #[arg(long, env = "SOUK_ENCODER_ENGINE", default_value = "auto")]
    pub engine: String,
    /// Padded tokens in one forward pass (dynamic batching packs requests under it).
    #[arg(long, env = "SOUK_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Most texts in one Embed request.
    #[arg(long, env = "SOUK_MAX_BATCH_TEXTS", default_value_t = 512)]
    pub max_batch_texts: usize,
    /// Requests waiting for the model before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SOUK_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Inference threads taking batches from the queue, each with its own forward pass. On a
    /// 2-core CPU under concurrent load, 2 workers of one thread each (`souk-encoder` then sets
    /// RAYON_NUM_THREADS=1 unless it is set) beat one worker using both cores; a lone caller is
    /// faster with 1. See BENCHMARKS.md.
    #[arg(long, env = "SOUK_INFERENCE_WORKERS", default_value_t = 1)]
    pub inference_workers: usize,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Binds `args.listen` and serves until `shutdown`.
///
/// # Errors
/// When the address cannot be bound or the server fails.
pub async fn run(args: EncoderArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "encoder listening");
    serve(listener, args, shutdown).await
}

/// Serves on `listener`; health turns SERVING once the model is loaded.
///
/// # Errors
/// When the model cannot be loaded (the server stops) or the transport fails.
pub async fn serve(
    listener: TcpListener,
    args: EncoderArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = Arc::new(EncoderService {
        batcher: OnceLock::new(),
        info: OnceLock::new(),
        files: OnceLock::new(),
        words: OnceLock::new(),
        max_batch_texts: args.max_batch_texts.max(1),
    });
    let mut server = GrpcServer::new("encoder", args.server.options()).await?;
    server.add_service(
        // A request may carry megabytes of text (tonic refuses over 4 MB by default, with a
        // confusing OUT_OF_RANGE): long texts are cut before tokenizing, see
        // `MAX_TOKENIZED_BYTES`.
        pb::encoder_server::EncoderServer::from_arc(state.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        &[],
    )?;
    let health = server.health();
    let registry = server.metrics();
    let observer = Arc::new(metrics::EncoderMetrics::register(registry.registry())?);
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    let loader = tokio::spawn(async move {
        let loaded = tokio::task::spawn_blocking(move || load(&args, observer)).await;
        match loaded {
            Ok(Ok((batcher, info, files))) => {
                match metrics::QueueDepth::new(batcher.clone()) {
                    Ok(depth) => {
                        if let Err(error) = registry.registry().register(Box::new(depth)) {
                            tracing::warn!(%error, "queue depth metric not registered");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "queue depth metric not created"),
                }
                tracing::info!(model = %info.model_id, fingerprint = %format!("{:016x}", info.model_fingerprint), device = %info.device, dim = info.dimension, "model loaded");
                let _ = loader_state.info.set(info);
                let _ = loader_state.files.set(files);
                let _ = loader_state.batcher.set(batcher);
                health.set_ready().await;
            }
            Ok(Err(error)) => {
                let _ = failed_tx.send(error);
            }
            Err(join) => {
                let _ = failed_tx.send(anyhow::anyhow!("model loader panicked: {join}"));
            }
        }
    });
    let load_failed = async {
        match failed_rx.await {
            Ok(error) => Some(error),
            Err(_) => std::future::pending().await,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = server.serve(listener, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    tokio::pin!(load_failed);
    let outcome = tokio::select! {
        result = &mut serving => return result.map_err(Into::into),
        () = &mut shutdown => None,
        error = &mut load_failed => error,
    };
    let _ = stop_tx.send(());
    loader.abort();
    serving.await?;
    match outcome {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn load(
    args: &EncoderArgs,
    observer: Arc<metrics::EncoderMetrics>,
) -> anyhow::Result<(Batcher, pb::InfoResponse, ModelFiles)> {
    let files = ModelFiles::open(&args.model_dir)?;
    let fingerprint = files.fingerprint()?;
    let tokenizer = TextTokenizer::load(&files)?;
    let engine =
        souk_encoder_candle::Engine::parse_for(&args.engine, &args.device, &files.model_type)?;
    let backend = CandleBackend::load_engine(&files, &args.device, &args.dtype, engine)?;
    tracing::info!(engine = engine.name(), device = %args.device, dtype = %args.dtype, "encoder model loaded");
    let options = BatcherOptions {
        max_batch_tokens: args.max_batch_tokens.max(files.max_seq_length),
        queue_capacity: args.queue_capacity,
    };
    let backends = vec![backend; args.inference_workers.clamp(1, 64)];
    let batcher = Batcher::spawn_workers(backends, tokenizer, options, observer)?;
    let info = pb::InfoResponse {
        model_id: files.model_id(),
        dimension: batcher.dimension() as u32,
        max_tokens: files.max_seq_length as u32,
        device: batcher.device().to_string(),
        dtype: batcher.dtype().to_string(),
        pooling: files.pooling.as_str().to_string(),
        max_batch_texts: args.max_batch_texts as u32,
        max_batch_tokens: options.max_batch_tokens as u32,
        engine: engine.name().to_string(),
        model_fingerprint: fingerprint,
        prompts: files.prompts.clone().into_iter().collect(),
        default_prompt_name: files.default_prompt_name.clone().unwrap_or_default(),
    };
    Ok((batcher, info, files))
}

struct EncoderService {
    batcher: OnceLock<Batcher>,
    info: OnceLock<pb::InfoResponse>,
    /// The model's files as read at load: its prompts.
    files: OnceLock<ModelFiles>,
    /// The tokenizer's whole words, listed at the first `Words` call.
    words: OnceLock<Vec<String>>,
    max_batch_texts: usize,
}

/// Maps encoder errors to gRPC codes: the caller's fault, overload, or ours (logged, not leaked).
fn status(error: EncoderError) -> Status {
    match error {
        EncoderError::InvalidInput(m) => Status::invalid_argument(m),
        EncoderError::Overloaded(m) => Status::resource_exhausted(m),
        EncoderError::Closed => Status::unavailable("encoder is shutting down"),
        EncoderError::Model(m) | EncoderError::Backend(m) => {
            tracing::error!(error = %m, "encoder failure");
            Status::internal("the encoder failed; see its log")
        }
    }
}

impl EncoderService {
    fn batcher(&self) -> Result<&Batcher, Status> {
        self.batcher
            .get()
            .ok_or_else(|| Status::unavailable("the model is still loading"))
    }
}

/// Largest `Embed` request accepted; larger ones are RESOURCE_EXHAUSTED before decoding.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

#[tonic::async_trait]
impl pb::encoder_server::Encoder for EncoderService {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let request = request.into_inner();
        if request.texts.len() > self.max_batch_texts {
            return Err(Status::invalid_argument(format!(
                "{} texts in one request; the limit is {}",
                request.texts.len(),
                self.max_batch_texts
            )));
        }
        let batcher = self.batcher()?;
        let kind = match pb::TextKind::try_from(request.kind) {
            Ok(pb::TextKind::Unspecified) => TextKind::Unspecified,
            Ok(pb::TextKind::Query) => TextKind::Query,
            Ok(pb::TextKind::Document) => TextKind::Document,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "kind {} is not a TextKind (0 unspecified, 1 query, 2 document)",
                    request.kind
                )));
            }
        };
        let files = self
            .files
            .get()
            .ok_or_else(|| Status::unavailable("the model is still loading"))?;
        let prompt = files.prompt(kind, &request.prompt_name).map_err(status)?;
        let texts = if prompt.is_empty() {
            request.texts
        } else {
            request
                .texts
                .into_iter()
                .map(|text| format!("{prompt}{text}"))
                .collect()
        };
        let dimension = batcher.dimension();
        let cut = match request.dimensions {
            None => dimension,
            Some(d) if d == 0 || d as usize > dimension => {
                return Err(Status::invalid_argument(format!(
                    "dimensions {d}: this model's vectors have 1 to {dimension}"
                )));
            }
            Some(d) => d as usize,
        };
        let normalize = request.normalize.unwrap_or(true);
        // A cut vector is normalised after the cut, as sentence-transformers' `truncate_dim`
        // with `normalize_embeddings` does.
        let mut embedded = batcher
            .embed(
                texts,
                request.truncate.unwrap_or(true),
                normalize && cut == dimension,
            )
            .await
            .map_err(status)?;
        if cut < dimension {
            for e in &mut embedded {
                e.vector.truncate(cut);
                if normalize {
                    l2_normalize(&mut e.vector);
                }
            }
        }
        let model = self.info.get().map_or(0, |info| info.model_fingerprint);
        Ok(Response::new(pb::EmbedResponse {
            embeddings: embedded
                .into_iter()
                .map(|e| pb::Embedding {
                    values: e.vector,
                    tokens: e.tokens as u32,
                })
                .collect(),
            model_fingerprint: if model == 0 {
                0
            } else {
                cut_fingerprint(model, cut, dimension)
            },
        }))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.info
            .get()
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("the model is still loading"))
    }

    async fn words(
        &self,
        _request: Request<pb::WordsRequest>,
    ) -> Result<Response<pb::WordsResponse>, Status> {
        let batcher = self.batcher()?;
        let words = self
            .words
            .get_or_init(|| batcher.tokenizer().words())
            .clone();
        Ok(Response::new(pb::WordsResponse { words }))
    }
}
