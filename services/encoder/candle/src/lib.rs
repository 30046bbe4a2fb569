//! The candle backend of the encoder: a BERT-family forward pass plus mean or CLS pooling, on
//! CPU or, with the `cuda` feature, an NVIDIA GPU, by one of the [`Engine`]s: packed (`cpu.rs`),
//! fused or flash (`fused.rs` + `kernels/fused.cu`), or candle's stock ops (`layers.rs`).
//!
//! ```no_run
//! # fn demo() -> Result<(), souk_encoder_core::EncoderError> {
//! use souk_encoder_core::{Backend, Batch, ModelFiles, TextTokenizer};
//! let files = ModelFiles::open("models/all-MiniLM-L6-v2")?;
//! let mut backend = souk_encoder_candle::CandleBackend::load(&files, "cpu", "f32")?;
//! let tokenizer = TextTokenizer::load(&files)?;
//! let batch = Batch { sequences: vec![tokenizer.encode_one("hello", true)?] };
//! assert_eq!(backend.embed(&batch)?[0].len(), 384);
//! # Ok(()) }
//! ```
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::Config;

mod cpu;
mod families;
mod fused;
mod head;
mod layers;
mod modernbert;

pub use cpu::{fma_peak_gflops, gemm_gflops};
use families::{Family, RelativeBias};
use souk_encoder_core::{Backend, Batch, EncoderError, ModelFiles, Pooling, Positions};

/// Word + position + token-type embeddings and their layer norm (BERT's input layer).
#[derive(Clone)]
struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        Ok(Self {
            words: candle_nn::embedding(
                config.vocab_size,
                config.hidden_size,
                vb.pp("word_embeddings"),
            )?,
            positions: candle_nn::embedding(
                config.max_position_embeddings,
                config.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: candle_nn::embedding(
                config.type_vocab_size,
                config.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: candle_nn::layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                vb.pp("LayerNorm"),
            )?,
        })
    }

    /// `positions`: each token's row of the position table, (batch, width) like `ids`.
    fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        positions: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x = ((self.words.forward(ids)? + self.token_types.forward(types)?)?
            + self.positions.forward(positions)?)?;
        self.norm.forward(&x)
    }
}

/// BERT as the encoder runs it: our own input layer, attention mask and transformer layers
/// (`layers.rs`: fused QKV, vectorised GELU on CPU). candle's `BertModel` builds the additive mask as `(1 - m) * f32::MIN` in the
/// model's dtype; in f16/bf16 `f32::MIN` becomes -inf and `0 * -inf` is NaN, so every f16/bf16
/// vector came out NaN (measured on an H100). A finite -10000 (BERT's original choice) masks
/// the same (exp(-10000) is 0) in every dtype.
#[derive(Clone)]
struct Bert {
    embeddings: Embeddings,
    encoder: layers::Encoder,
    /// MPNet's relative position bias, added to the scores with the mask.
    relative: Option<std::sync::Arc<RelativeBias>>,
}

impl Bert {
    /// `vb`: the model's root (`embeddings.*`, `encoder.layer.N.*`).
    fn load(
        vb: VarBuilder,
        config: &Config,
        relative: Option<std::sync::Arc<RelativeBias>>,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), config)?,
            encoder: layers::Encoder::load(vb.pp("encoder"), config)?,
            relative,
        })
    }

    /// Token states, (batch, width, hidden). `mask` is 1 for real tokens, 0 for padding.
    fn forward(
        &self,
        ids: &Tensor,
        types: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let x = self.embeddings.forward(ids, types, positions)?;
        let additive = ((mask.to_dtype(DType::F32)? - 1.0)? * 10_000.0)?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        let additive = match &self.relative {
            // (batch, 1, 1, width) + (1, heads, width, width).
            Some(relative) => {
                let (_, width) = ids.dims2()?;
                let heads = relative.heads();
                let mut bias = Vec::with_capacity(heads * width * width);
                for head in 0..heads {
                    for i in 0..width {
                        bias.extend((0..width).map(|j| relative.value(head, i, j)));
                    }
                }
                let bias = Tensor::from_vec(bias, (1, heads, width, width), ids.device())?;
                additive.broadcast_add(&bias)?
            }
            None => additive,
        };
        self.encoder.forward(&x, &additive.to_dtype(dtype)?)
    }
}

/// Which implementation of the forward pass serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `cpu.rs`: padding-free packed rows and our own AVX2 kernels (CPU, f32; the CPU default).
    Packed,
    /// `fused.rs`: cuBLAS matrix multiplies and five fused kernels of our own (the GPU
    /// default; on CPU it runs the kernels' f32 reference, for tests).
    Fused,
    /// The fused engine on packed rows (no padding) with attention in one kernel on tensor
    /// cores (no scores tensor, no head split/merge): f16/bf16 on GPU with head size 32 or 64.
    /// Not the default until a GPU run measures it (scripts/gpu/run-gpu-check.sh).
    Flash,
    /// `layers.rs`: candle's stock tensor ops, kept to measure the others against.
    Graph,
}

impl Engine {
    /// What serves when nothing is asked for: packed on CPU, fused elsewhere.
    #[must_use]
    pub fn default_for(device: &str) -> Self {
        if device == "cpu" {
            Self::Packed
        } else {
            Self::Fused
        }
    }

    /// `auto` (or empty) picks [`Engine::default_for`] the device.
    ///
    /// # Errors
    /// A name other than auto, packed, fused, flash or graph.
    pub fn parse(name: &str, device: &str) -> Result<Self, EncoderError> {
        match name {
            "" | "auto" => Ok(Self::default_for(device)),
            "packed" => Ok(Self::Packed),
            "fused" => Ok(Self::Fused),
            "flash" => Ok(Self::Flash),
            "graph" => Ok(Self::Graph),
            other => Err(EncoderError::Model(format!(
                "engine {other:?}: expected auto, packed, fused, flash or graph"
            ))),
        }
    }

    /// [`Engine::parse`] for a model of this `model_type`: `auto` on a GPU picks graph for
    /// MPNet, whose relative position bias the fused and flash kernels do not add.
    ///
    /// # Errors
    /// As [`Engine::parse`].
    pub fn parse_for(name: &str, device: &str, model_type: &str) -> Result<Self, EncoderError> {
        let engine = Self::parse(name, device)?;
        let auto = matches!(name, "" | "auto");
        Ok(
            if auto && model_type == "mpnet" && matches!(engine, Self::Fused | Self::Flash) {
                Self::Graph
            } else {
                engine
            },
        )
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Packed => "packed",
            Self::Fused => "fused",
            Self::Flash => "flash",
            Self::Graph => "graph",
        }
    }
}

/// The loaded forward pass; only the serving engine's weights are kept.
#[derive(Clone)]
enum Loaded {
    Packed(std::sync::Arc<cpu::CpuBert>),
    /// ModernBERT, on the packed engine (the only one that runs it).
    Modern(std::sync::Arc<modernbert::CpuModernBert>),
    Fused(std::sync::Arc<fused::FusedBert>),
    Graph(Bert),
}

/// A loaded model on one device. Clones share the weights (candle tensors are reference
/// counted, the packed and fused weights sit behind an `Arc`): one per inference worker.
#[derive(Clone)]
pub struct CandleBackend {
    loaded: Loaded,
    device: Device,
    device_name: String,
    dtype: DType,
    pooling: Pooling,
    /// How the model numbers positions (the graph engine's padded batches need it).
    numbering: Positions,
    /// The model's hidden size: what pooling gives.
    dimension: usize,
    /// The modules after pooling (`modules.json`'s dense layers); none for most models.
    head: std::sync::Arc<head::Head>,
}

fn backend_err(e: candle_core::Error) -> EncoderError {
    EncoderError::Backend(e.to_string())
}

/// Parses `cpu` or `cuda:N` (`cuda` alone means `cuda:0`).
///
/// # Errors
/// An unknown device, or `cuda` in a build without the `cuda` feature.
pub fn parse_device(name: &str) -> Result<Device, EncoderError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        other if other == "cuda" || other.starts_with("cuda:") => {
            let ordinal = other
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|e| EncoderError::Model(format!("device {other:?}: {e}")))?
                .unwrap_or(0);
            if cfg!(feature = "cuda") {
                Device::new_cuda(ordinal).map_err(backend_err)
            } else {
                let _ = ordinal;
                Err(EncoderError::Model(format!(
                    "device {other:?}: this binary was built without the `cuda` feature"
                )))
            }
        }
        other => Err(EncoderError::Model(format!(
            "device {other:?}: expected cpu or cuda:N"
        ))),
    }
}

impl CandleBackend {
    /// Loads the weights of `files` onto `device` (`cpu`, `cuda:N`) as `dtype` (`f32`; `f16` and
    /// `bf16` only on GPU, where they pay off), with the engine `SOUK_ENCODER_ENGINE` names
    /// (`auto` when unset: packed on CPU, fused on GPU).
    ///
    /// # Errors
    /// A bad device, dtype or engine, or weights that do not fit the config.
    pub fn load(files: &ModelFiles, device: &str, dtype: &str) -> Result<Self, EncoderError> {
        let name = std::env::var("SOUK_ENCODER_ENGINE").unwrap_or_default();
        let engine = Engine::parse_for(&name, device, &files.model_type)?;
        Self::load_engine(files, device, dtype, engine)
    }

    /// Loads `files` for one engine.
    ///
    /// # Errors
    /// As [`CandleBackend::load`]; also the packed engine anywhere but CPU f32.
    pub fn load_engine(
        files: &ModelFiles,
        device: &str,
        dtype: &str,
        engine: Engine,
    ) -> Result<Self, EncoderError> {
        let device_handle = parse_device(device)?;
        let dtype_value = match dtype {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => {
                return Err(EncoderError::Model(format!(
                    "dtype {other:?}: expected f32, f16 or bf16"
                )));
            }
        };
        if device_handle.is_cpu() && dtype_value != DType::F32 {
            return Err(EncoderError::Model(format!(
                "dtype {dtype} is only supported on GPU; use f32 on cpu"
            )));
        }
        if engine == Engine::Packed && !device_handle.is_cpu() {
            return Err(EncoderError::Model(format!(
                "engine packed runs on cpu only, not {device}"
            )));
        }
        let config_text = std::fs::read_to_string(&files.config)
            .map_err(|e| EncoderError::Model(format!("{}: {e}", files.config.display())))?;
        let bad_config =
            |e: String| EncoderError::Model(format!("{}: {e}", files.config.display()));
        if files.model_type == "modernbert" {
            return Self::load_modern(
                files,
                device_handle,
                device,
                dtype_value,
                engine,
                &config_text,
            );
        }
        let family = match files.model_type.as_str() {
            "distilbert" => Some(Family::DistilBert),
            "mpnet" => Some(Family::MpNet),
            _ => None,
        };
        let json: serde_json::Value =
            serde_json::from_str(&config_text).map_err(|e| bad_config(e.to_string()))?;
        let config: Config = match family {
            Some(Family::DistilBert) => families::distilbert_config(&json).map_err(bad_config)?,
            Some(Family::MpNet) => families::mpnet_config(&json).map_err(bad_config)?,
            None => serde_json::from_value(json.clone()).map_err(|e| bad_config(e.to_string()))?,
        };
        let dimension = config.hidden_size;
        // Memory-mapping is the one unsafe step: the file must not change while mapped.
        let vb = load_weights(&files.weights, dtype_value, &device_handle)?;
        // A base model's weights sit at the root; a task model's (`BertForMaskedLM`,
        // `XLMRobertaForMaskedLM`) under its base's name.
        let root = ["bert", "roberta", "distilbert", "mpnet"]
            .into_iter()
            .find(|base| vb.contains_tensor(&format!("{base}.embeddings.word_embeddings.weight")))
            .map_or_else(|| vb.clone(), |base| vb.pp(base));
        let relative = match family {
            Some(Family::MpNet) => {
                let buckets = json
                    .get("relative_attention_num_buckets")
                    .and_then(serde_json::Value::as_u64)
                    .map_or(32, |b| b as usize);
                let bias = RelativeBias::load(
                    &root,
                    buckets,
                    config.num_attention_heads,
                    config.max_position_embeddings,
                )
                .map_err(backend_err)?;
                if matches!(engine, Engine::Fused | Engine::Flash) {
                    return Err(EncoderError::Model(format!(
                        "engine {} does not run MPNet's relative attention bias yet; use packed (CPU) or graph",
                        engine.name()
                    )));
                }
                Some(std::sync::Arc::new(bias))
            }
            _ => None,
        };
        let root = match family {
            Some(family) => families::as_bert(root, family),
            None => root,
        };
        let numbering = files.positions;
        let loaded = match engine {
            Engine::Packed => Loaded::Packed(std::sync::Arc::new(
                cpu::CpuBert::load(root, &config, numbering, relative.clone())
                    .map_err(backend_err)?,
            )),
            Engine::Fused | Engine::Flash => Loaded::Fused(std::sync::Arc::new(
                fused::FusedBert::load(root, &config, numbering, engine == Engine::Flash)
                    .map_err(backend_err)?,
            )),
            Engine::Graph => {
                Loaded::Graph(Bert::load(root, &config, relative.clone()).map_err(backend_err)?)
            }
        };
        Self::serving(loaded, device_handle, device, dtype_value, files, dimension)
    }

    /// The backend around a loaded forward pass: `files`' pooling, position numbering and
    /// dense layers, for `dimension`-wide token states.
    fn serving(
        loaded: Loaded,
        device_handle: Device,
        device: &str,
        dtype: DType,
        files: &ModelFiles,
        dimension: usize,
    ) -> Result<Self, EncoderError> {
        Ok(Self {
            loaded,
            device: device_handle,
            device_name: device.to_string(),
            dtype,
            pooling: files.pooling,
            numbering: files.positions,
            head: std::sync::Arc::new(head::Head::load(&files.head, dimension)?),
            dimension,
        })
    }

    /// ModernBERT: the packed CPU engine only (`auto` on CPU); the GPU engines are BERT's
    /// layers and refuse it by name.
    fn load_modern(
        files: &ModelFiles,
        device_handle: Device,
        device: &str,
        dtype: DType,
        engine: Engine,
        config_text: &str,
    ) -> Result<Self, EncoderError> {
        let bad_config =
            |e: String| EncoderError::Model(format!("{}: {e}", files.config.display()));
        if engine != Engine::Packed || !device_handle.is_cpu() {
            return Err(bad_config(format!(
                "ModernBERT runs on the packed engine on cpu only, not engine {} on {device}",
                engine.name()
            )));
        }
        let json: serde_json::Value =
            serde_json::from_str(config_text).map_err(|e| bad_config(e.to_string()))?;
        let config = modernbert::ModernConfig::read(&json).map_err(bad_config)?;
        let vb = load_weights(&files.weights, dtype, &device_handle)?;
        let model = modernbert::CpuModernBert::load(vb, config).map_err(backend_err)?;
        let dimension = model.hidden();
        let loaded = Loaded::Modern(std::sync::Arc::new(model));
        Self::serving(loaded, device_handle, device, dtype, files, dimension)
    }

    /// The engine serving.
    #[must_use]
    pub fn engine(&self) -> Engine {
        match &self.loaded {
            Loaded::Packed(_) | Loaded::Modern(_) => Engine::Packed,
            Loaded::Fused(model) if model.one_pass() => Engine::Flash,
            Loaded::Fused(_) => Engine::Fused,
            Loaded::Graph(_) => Engine::Graph,
        }
    }

    /// The packed CPU path: hidden states of real tokens only (`forward`, the model's), pooled
    /// per sequence.
    fn forward_packed(
        &self,
        forward: impl Fn(&[(&[u32], &[u32])]) -> Result<(Vec<f32>, Vec<usize>), String>,
        batch: &Batch,
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        let sequences: Vec<(&[u32], &[u32])> = batch
            .sequences
            .iter()
            .map(|s| (s.ids.as_slice(), s.type_ids.as_slice()))
            .collect();
        let (hidden, offsets) = forward(&sequences).map_err(EncoderError::Backend)?;
        let h = self.dimension;
        Ok(offsets
            .windows(2)
            .map(|w| {
                let mut pooled = vec![0.0f32; h];
                self.pooling
                    .pool(&hidden[w[0] * h..w[1] * h], h, &mut pooled);
                pooled
            })
            .collect())
    }

    fn forward(&self, batch: &Batch) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = batch.sequences.len();
        let width = batch.max_len().max(1);
        let mut ids = vec![0u32; n * width];
        let mut types = vec![0u32; n * width];
        let mut mask = vec![0u32; n * width];
        // Padding takes the first real token's row: any row does, it is masked.
        let mut positions = vec![self.numbering.reserved() as u32; n * width];
        let mut numbered = Vec::with_capacity(width);
        for (row, seq) in batch.sequences.iter().enumerate() {
            let base = row * width;
            ids[base..base + seq.ids.len()].copy_from_slice(&seq.ids);
            numbered.clear();
            self.numbering.extend(&seq.ids, &mut numbered);
            positions[base..base + seq.ids.len()].copy_from_slice(&numbered);
            types[base..base + seq.type_ids.len()].copy_from_slice(&seq.type_ids);
            mask[base..base + seq.ids.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, width), &self.device)?;
        let types = Tensor::from_vec(types, (n, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, width), &self.device)?;
        let positions = Tensor::from_vec(positions, (n, width), &self.device)?;
        let Loaded::Graph(model) = &self.loaded else {
            candle_core::bail!("candle's graph is not loaded");
        };
        let hidden = model.forward(&ids, &types, &positions, &mask, self.dtype)?;
        pool_padded(self.pooling, batch, &hidden)
    }
}

/// Pools `hidden` (`n x width x dim` states of `batch`'s sequences, padded on the right):
/// the weighted modes as one batched product with each sequence's weights on the device,
/// max pooling on the host over each sequence's own rows.
fn pool_padded(
    pooling: Pooling,
    batch: &Batch,
    hidden: &Tensor,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let (n, width, dim) = hidden.dims3()?;
    let mut weights = vec![0f32; n * width];
    let mut weighted = true;
    for (row, seq) in weights.chunks_exact_mut(width).zip(&batch.sequences) {
        let len = seq.ids.len().min(width);
        weighted &= pooling.weights(&mut row[..len]);
    }
    if weighted {
        let weights =
            Tensor::from_vec(weights, (n, 1, width), hidden.device())?.to_dtype(hidden.dtype())?;
        return weights
            .matmul(&hidden.contiguous()?)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>();
    }
    let states = hidden.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    Ok(states
        .iter()
        .zip(&batch.sequences)
        .map(|(rows, seq)| {
            let flat: Vec<f32> = rows
                .iter()
                .take(seq.ids.len().min(width))
                .flatten()
                .copied()
                .collect();
            let mut pooled = vec![0f32; dim];
            pooling.pool(&flat, dim, &mut pooled);
            pooled
        })
        .collect())
}

#[allow(unsafe_code)]
fn load_weights(
    path: &std::path::Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, EncoderError> {
    // SAFETY: the weights file is read-only model data that souk never writes; mapping it
    // avoids a copy of the whole model in memory.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
        .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))
}

impl Backend for CandleBackend {
    fn embed(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>, EncoderError> {
        if batch.sequences.is_empty() {
            return Ok(Vec::new());
        }
        let mut pooled = match &self.loaded {
            Loaded::Packed(packed) => self.forward_packed(|s| packed.forward(s), batch),
            Loaded::Modern(model) => self.forward_packed(|s| model.forward(s), batch),
            Loaded::Fused(fused) => fused
                .embed(batch, self.pooling, &self.device)
                .map_err(backend_err),
            Loaded::Graph(_) => self.forward(batch).map_err(backend_err),
        }?;
        self.head.apply(&mut pooled);
        Ok(pooled)
    }

    /// What comes out: the last dense layer's size, else the model's hidden size.
    fn dimension(&self) -> usize {
        self.head.dimension()
    }

    fn device(&self) -> String {
        self.device_name.clone()
    }

    fn dtype(&self) -> String {
        match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        }
        .to_string()
    }
}

/// Milliseconds per forward pass spent in each operation of `engine` (all layers summed), for
/// `souk-encoder-bench ops`: the device is synchronised after every operation, so the figures
/// are per-op latencies (slower in total than an unsynchronised pass, but they show where a
/// GPU's time goes without Nsight). `input` holds sequences of one length (candle's graph runs
/// them unpadded); mean of `iters` passes after two warm-up passes; biggest first.
///
/// # Errors
/// A model that does not load, the packed engine (it has no per-op hooks), or a failing
/// operation.
pub fn profile_ops(
    files: &ModelFiles,
    device: &str,
    dtype: &str,
    engine: Engine,
    input: &Batch,
    iters: usize,
) -> Result<Vec<(String, f64)>, EncoderError> {
    let backend = CandleBackend::load_engine(files, device, dtype, engine)?;
    let dev = &backend.device;
    let (batch, seq) = (input.sequences.len(), input.max_len());
    let run = || -> candle_core::Result<Vec<(String, f64)>> {
        let mut totals: Vec<(String, f64)> = Vec::new();
        for pass in 0..iters.max(1) + 2 {
            let counted = pass >= 2;
            dev.synchronize()?;
            let mut last = std::time::Instant::now();
            let mut step = |name: &'static str| -> candle_core::Result<()> {
                dev.synchronize()?;
                let now = std::time::Instant::now();
                let ms = (now - last).as_secs_f64() * 1e3;
                last = now;
                if counted {
                    match totals.iter_mut().find(|(n, _)| n == name) {
                        Some(entry) => entry.1 += ms,
                        None => totals.push((name.to_string(), ms)),
                    }
                }
                Ok(())
            };
            match &backend.loaded {
                Loaded::Fused(model) => {
                    model.embed_with(input, backend.pooling, dev, &mut step)?;
                }
                Loaded::Graph(model) => {
                    let ids: Vec<u32> =
                        input.sequences.iter().flat_map(|s| s.ids.clone()).collect();
                    let ids = Tensor::from_vec(ids, (batch, seq), dev)?;
                    let types = ids.zeros_like()?;
                    let mut positions = Vec::with_capacity(batch * seq);
                    for s in &input.sequences {
                        backend.numbering.extend(&s.ids, &mut positions);
                    }
                    let positions = Tensor::from_vec(positions, (batch, seq), dev)?;
                    let mask = Tensor::zeros((batch, 1, 1, seq), backend.dtype, dev)?;
                    let x = model.embeddings.forward(&ids, &types, &positions)?;
                    step("embeddings + layer norm")?;
                    let hidden = model.encoder.forward_with(&x, &mask, &mut step)?;
                    let _pooled = hidden.mean(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    step("pooling + copy to host")?;
                }
                Loaded::Packed(_) | Loaded::Modern(_) => {
                    candle_core::bail!(
                        "the packed engine has no per-op profile; use fused or graph"
                    )
                }
            }
        }
        let n = iters.max(1) as f64;
        let mut out: Vec<(String, f64)> = totals.into_iter().map(|(k, v)| (k, v / n)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    };
    run().map_err(backend_err)
}

/// Copies a model directory to `out`, converting `model.safetensors` to `dtype` (`f16`,
/// `bf16` or `f32`); the other files (config, tokenizer, pooling) are copied as they are.
/// Halving the weights makes a model small enough to ship to a GPU box for a benchmark.
///
/// # Errors
/// When a file cannot be read or written, or the weights do not load.
pub fn convert_model(
    files: &ModelFiles,
    out: &std::path::Path,
    dtype: &str,
) -> Result<(), EncoderError> {
    let dtype = match dtype {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => {
            return Err(EncoderError::Model(format!(
                "dtype {other:?}: expected f16, bf16 or f32"
            )));
        }
    };
    let io = |e: std::io::Error| EncoderError::Model(format!("{}: {e}", out.display()));
    std::fs::create_dir_all(out.join("1_Pooling")).map_err(io)?;
    let mut names: Vec<std::path::PathBuf> = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "modules.json",
        "1_Pooling/config.json",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    // The modules after pooling, as they are (small: a dense layer).
    for module in &files.head {
        if let souk_encoder_core::HeadModule::Dense(dense) = module
            && let Some(dir) = dense.weights.parent()
        {
            for name in ["config.json", "model.safetensors"] {
                if let Ok(relative) = dir.join(name).strip_prefix(&files.dir) {
                    names.push(relative.to_path_buf());
                }
            }
        }
    }
    for name in names {
        let src = files.dir.join(&name);
        if src.is_file() {
            let target = out.join(&name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::copy(&src, target).map_err(io)?;
        }
    }
    let tensors =
        candle_core::safetensors::load(&files.weights, &Device::Cpu).map_err(backend_err)?;
    let converted = tensors
        .into_iter()
        .map(|(name, t)| t.to_dtype(dtype).map(|t| (name, t)))
        .collect::<candle_core::Result<std::collections::HashMap<_, _>>>()
        .map_err(backend_err)?;
    candle_core::safetensors::save(&converted, out.join("model.safetensors"))
        .map_err(backend_err)?;
    Ok(())
}
