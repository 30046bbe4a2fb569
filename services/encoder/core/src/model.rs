use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::EncoderError;

/// How token states become one vector (sentence-transformers' `1_Pooling/config.json`, one
/// mode; its names as `as_str` gives them). Every mode reads only a sequence's own tokens
/// (the attention mask's), so padding never enters a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The [CLS] token's state.
    Cls,
    /// Each dimension's largest value over the tokens.
    Max,
    /// The tokens' sum over the square root of their count.
    MeanSqrtLen,
    /// Mean weighted by position: token `i` (from 0) counts `i + 1` (SGPT's pooling).
    WeightedMean,
    /// The last token's state ([SEP] for BERT; decoder-style models' choice).
    LastToken,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
            Pooling::LastToken => "lasttoken",
        }
    }

    /// Every mode, in sentence-transformers' order of names above.
    pub const ALL: [Pooling; 6] = [
        Pooling::Mean,
        Pooling::Cls,
        Pooling::Max,
        Pooling::MeanSqrtLen,
        Pooling::WeightedMean,
        Pooling::LastToken,
    ];

    /// The mode sentence-transformers names `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The weight of each of a `len`-token sequence's states in its vector, written into
    /// `out[..len]`, for the modes that are a weighted sum of the states (every one but
    /// [`Pooling::Max`], for which it returns false and writes nothing). An empty sequence
    /// gets no weight.
    pub fn weights(self, out: &mut [f32]) -> bool {
        let len = out.len();
        if len == 0 {
            return self != Pooling::Max;
        }
        match self {
            Pooling::Max => return false,
            Pooling::Mean => out.fill(1.0 / len as f32),
            Pooling::MeanSqrtLen => out.fill(1.0 / (len as f32).sqrt()),
            Pooling::Cls => {
                out.fill(0.0);
                out[0] = 1.0;
            }
            Pooling::LastToken => {
                out.fill(0.0);
                out[len - 1] = 1.0;
            }
            Pooling::WeightedMean => {
                // 1 + 2 + ... + len.
                let total = (len * (len + 1) / 2) as f32;
                out.iter_mut()
                    .enumerate()
                    .for_each(|(i, w)| *w = (i + 1) as f32 / total);
            }
        }
        true
    }

    /// Pools `rows` (a sequence's token states, `dim` values each, in order) into `out`.
    pub fn pool(self, rows: &[f32], dim: usize, out: &mut [f32]) {
        let len = rows.len() / dim.max(1);
        out.fill(0.0);
        if len == 0 {
            return;
        }
        let mut weights = vec![0f32; len];
        if self.weights(&mut weights) {
            for (row, w) in rows.chunks_exact(dim).zip(&weights) {
                if *w != 0.0 {
                    out.iter_mut().zip(row).for_each(|(o, v)| *o += w * v);
                }
            }
        } else {
            out.copy_from_slice(&rows[..dim]);
            for row in rows.chunks_exact(dim).skip(1) {
                out.iter_mut().zip(row).for_each(|(o, v)| *o = o.max(*v));
            }
        }
    }
}

/// Which row of the position table each token takes: the one thing, besides the tokenizer
/// (which `tokenizer.json` carries), in which the encoder families souk runs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// BERT: token `i` at row `i`.
    FromZero,
    /// RoBERTa, XLM-RoBERTa, CamemBERT (fairseq's numbering, as transformers'
    /// `create_position_ids_from_input_ids` computes it): rows up to `pad` are never a real
    /// token's; the `n`-th token (from 1) that is not the padding id sits at `pad + n`, a
    /// padding id at `pad`. Read as BERT, such a model gives vectors that look fine and are
    /// wrong, so the family is read from `config.json`.
    AfterPadding { pad: u32 },
}

impl Positions {
    /// Rows of the table before the first real token's: sequences can be this much shorter
    /// than the table.
    #[must_use]
    pub fn reserved(self) -> usize {
        match self {
            Positions::FromZero => 0,
            Positions::AfterPadding { pad } => pad as usize + 1,
        }
    }

    /// Appends the row of every token of `ids`, in order.
    pub fn extend(self, ids: &[u32], out: &mut Vec<u32>) {
        match self {
            Positions::FromZero => out.extend(0..ids.len() as u32),
            Positions::AfterPadding { pad } => {
                let mut n = pad;
                out.extend(ids.iter().map(|&id| {
                    if id == pad {
                        pad
                    } else {
                        n += 1;
                        n
                    }
                }));
            }
        }
    }
}

/// A model directory in the Hugging Face / sentence-transformers layout.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    pub pooling: Pooling,
    /// Longest input in word pieces, [CLS] and [SEP] included.
    pub max_seq_length: usize,
    /// `config.json`'s `model_type` ("bert" when it names none).
    pub model_type: String,
    /// How the model numbers positions, from its family.
    pub positions: Positions,
    /// The model's non-empty prompts by name (`config_sentence_transformers.json`): texts put
    /// before a query's or a document's text by models that embed the two differently.
    pub prompts: BTreeMap<String, String>,
    /// The prompt `encode` uses when asked for none (`default_prompt_name`), when it is one of
    /// `prompts`.
    pub default_prompt_name: Option<String>,
    /// What `modules.json` puts after pooling (LaBSE's and distiluse's dense layers), in
    /// order; a final `Normalize` is left out (it is what `normalize`, the default, does).
    pub head: Vec<HeadModule>,
}

/// A sentence-transformers module after pooling.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadModule {
    /// `Dense`: `activation(W x + b)`.
    Dense(DenseFiles),
    /// `Normalize` with a dense layer after it: L2 normalisation there.
    Normalize,
}

/// A `Dense` module's directory, as its `config.json` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseFiles {
    /// `model.safetensors`: `linear.weight` (out x in) and, with `bias`, `linear.bias`.
    pub weights: PathBuf,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: Activation,
}

/// A dense layer's activation (`torch.nn.modules.*` by its class name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    Sigmoid,
}

/// What `modules.json` says: where pooling's config is, and the modules after it.
struct Modules {
    pooling: String,
    head: Vec<HeadModule>,
}

/// The module kinds souk computes, by the last part of their Python type name (which moved
/// between sentence-transformers versions: `sentence_transformers.models.Pooling`,
/// `sentence_transformers.sentence_transformer.modules.pooling.Pooling`).
const MODULES: &str = "Transformer, Pooling, Dense, Normalize";

/// Reads `modules.json` (absent: a transformer and `1_Pooling`, the layout before it existed).
/// Refuses, naming it, a module souk does not compute, rather than serve vectors without it.
fn read_modules(dir: &Path) -> Result<Modules, EncoderError> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(Modules {
            pooling: "1_Pooling".into(),
            head: Vec::new(),
        });
    }
    let refuse = |what: String| EncoderError::Model(format!("{}: {what}", path.display()));
    let json = read_json(&path)?;
    let list = json
        .as_array()
        .ok_or_else(|| refuse("not a list of modules".into()))?;
    let mut pooling = None;
    let mut head = Vec::new();
    for (i, module) in list.iter().enumerate() {
        let kind = module
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| refuse(format!("module {i} has no type")))?;
        let at = module
            .get("path")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let short = kind.rsplit('.').next().unwrap_or(kind);
        match (i, short, pooling.is_some()) {
            (0, "Transformer", _) => {}
            (1, "Pooling", _) => pooling = Some(at.to_string()),
            (_, "Dense", true) => head.push(HeadModule::Dense(read_dense(&dir.join(at))?)),
            (_, "Normalize", true) => head.push(HeadModule::Normalize),
            _ => {
                return Err(refuse(format!(
                    "module {i} is {kind}; souk runs a Transformer, then Pooling, then any of Dense and Normalize ({MODULES})"
                )));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| refuse("no Pooling module".into()))?;
    while head.last() == Some(&HeadModule::Normalize) {
        head.pop();
    }
    Ok(Modules { pooling, head })
}

/// A `Dense` module's directory: its config and weights file.
fn read_dense(dir: &Path) -> Result<DenseFiles, EncoderError> {
    let config = dir.join("config.json");
    let json = read_json(&config)?;
    let refuse = |what: String| EncoderError::Model(format!("{}: {what}", config.display()));
    let size = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| refuse(format!("{key} is not a positive size")))
    };
    let activation = json
        .get("activation_function")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("torch.nn.modules.activation.Tanh");
    let activation = match activation.rsplit('.').next().unwrap_or(activation) {
        "Identity" => Activation::Identity,
        "Tanh" => Activation::Tanh,
        "ReLU" => Activation::Relu,
        "Sigmoid" => Activation::Sigmoid,
        _ => {
            return Err(refuse(format!(
                "activation_function {activation:?} is not supported (Identity, Tanh, ReLU, Sigmoid)"
            )));
        }
    };
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(EncoderError::Model(format!(
            "{} is missing (a dense layer saved as pytorch_model.bin must be converted to safetensors)",
            weights.display()
        )));
    }
    Ok(DenseFiles {
        weights,
        in_features: size("in_features")?,
        out_features: size("out_features")?,
        bias: json
            .get("bias")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true),
        activation,
    })
}

/// Reads a pooling config, in sentence-transformers 6's form (`"pooling_mode": "mean"`) or
/// the older flags (`"pooling_mode_mean_tokens": true`). Only one mode, mean or CLS.
fn read_pooling(path: &Path) -> Result<Pooling, EncoderError> {
    let refuse = |what: String| EncoderError::Model(format!("{}: {what}", path.display()));
    let json = read_json(path)?;
    if json
        .get("include_prompt")
        .and_then(serde_json::Value::as_bool)
        == Some(false)
    {
        return Err(refuse(
            "include_prompt false (pooling without the prompt's tokens) is not supported".into(),
        ));
    }
    let modes: Vec<String> = match json.get("pooling_mode") {
        Some(serde_json::Value::String(mode)) => vec![mode.clone()],
        Some(serde_json::Value::Array(modes)) => modes
            .iter()
            .map(|m| m.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| refuse("pooling_mode is not a list of names".into()))?,
        Some(other) => return Err(refuse(format!("pooling_mode {other} is not a name"))),
        None => [
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
            ("pooling_mode_weightedmean_tokens", "weightedmean"),
            ("pooling_mode_lasttoken", "lasttoken"),
        ]
        .into_iter()
        .filter(|(flag, _)| json.get(*flag).and_then(serde_json::Value::as_bool) == Some(true))
        .map(|(_, mode)| mode.to_string())
        .collect(),
    };
    match modes.as_slice() {
        [mode] => Pooling::from_name(mode).ok_or_else(|| {
            refuse(format!(
                "pooling mode {mode:?} is not one sentence-transformers names (cls, mean, max, \
                 mean_sqrt_len_tokens, weightedmean, lasttoken)"
            ))
        }),
        [] => Err(refuse("names no pooling mode".into())),
        other => Err(refuse(format!(
            "pooling {other:?} concatenates modes, which souk does not (one mode only)"
        ))),
    }
}

/// What a text is, for the models that embed queries and documents differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Not said: the model's default prompt, if any (sentence-transformers' `encode`).
    Unspecified,
    /// A search: the "query" prompt, or none (`encode_query`).
    Query,
    /// Something searched for: the first non-empty of "document", "passage", "corpus", or none.
    Document,
}

/// Reads `config_sentence_transformers.json`'s prompts: the non-empty ones by name, and the
/// default's name when its prompt is not empty.
fn read_prompts(path: &Path) -> Result<(BTreeMap<String, String>, Option<String>), EncoderError> {
    let refuse = |what: String| EncoderError::Model(format!("{}: {what}", path.display()));
    let json = read_json(path)?;
    let mut named = BTreeMap::new();
    let mut empty = Vec::new();
    if let Some(prompts) = json.get("prompts").filter(|p| !p.is_null()) {
        let prompts = prompts
            .as_object()
            .ok_or_else(|| refuse("prompts is not an object of names to texts".into()))?;
        for (name, text) in prompts {
            match text {
                serde_json::Value::String(t) if t.is_empty() => empty.push(name.clone()),
                serde_json::Value::String(t) => {
                    named.insert(name.clone(), t.clone());
                }
                serde_json::Value::Null => empty.push(name.clone()),
                other => return Err(refuse(format!("prompt {name:?} is {other}, not a text"))),
            }
        }
    }
    let default = match json.get("default_prompt_name") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(name)) if named.contains_key(name) => Some(name.clone()),
        Some(serde_json::Value::String(name)) if empty.contains(name) => None,
        Some(other) => {
            return Err(refuse(format!(
                "default_prompt_name {other} is not one of the prompts"
            )));
        }
    };
    Ok((named, default))
}

/// The encoder families souk runs, by `model_type`: BERT's layers under BERT's or RoBERTa's
/// position numbering, and ModernBERT's own (rotary positions, numbered from 0). Anything
/// else is refused by name rather than run as BERT.
const SUPPORTED: &str = "bert, distilbert, mpnet, roberta, xlm-roberta, camembert, modernbert";

/// Reads the family and the settings souk's forward passes implement from `config.json`;
/// refuses, naming the setting, a model they would compute wrongly.
fn architecture(
    config: &serde_json::Value,
    path: &Path,
) -> Result<(String, Positions), EncoderError> {
    let refuse = |what: String| EncoderError::Model(format!("{}: {what}", path.display()));
    let text = |key: &str| config.get(key).and_then(serde_json::Value::as_str);
    let model_type = text("model_type").unwrap_or("bert").to_string();
    let positions = match model_type.as_str() {
        // ModernBERT has no position table: its rotary angles take the index from 0.
        "bert" | "distilbert" | "modernbert" => Positions::FromZero,
        // MPNet numbers positions as RoBERTa does (its padding id is 1).
        "roberta" | "xlm-roberta" | "camembert" | "mpnet" => {
            let pad = match config.get("pad_token_id") {
                None => 1,
                Some(v) => v
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| refuse(format!("pad_token_id {v} is not a token id")))?,
            };
            Positions::AfterPadding { pad }
        }
        other => {
            return Err(refuse(format!(
                "model_type {other:?} is not supported (souk runs {SUPPORTED})"
            )));
        }
    };
    // DistilBERT names its activation `activation`.
    match text("hidden_act").or_else(|| text("activation")) {
        None | Some("gelu") => {}
        Some(other) => {
            return Err(refuse(format!(
                "hidden_act {other:?} is not supported (souk's layers compute \"gelu\", the exact one)"
            )));
        }
    }
    match text("position_embedding_type") {
        None | Some("absolute") => {}
        Some(other) => {
            return Err(refuse(format!(
                "position_embedding_type {other:?} is not supported (only \"absolute\")"
            )));
        }
    }
    Ok((model_type, positions))
}

fn read_json(path: &Path) -> Result<serde_json::Value, EncoderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))
}

impl ModelFiles {
    /// Checks the directory holds `config.json`, `model.safetensors` and `tokenizer.json`, and
    /// reads pooling (`1_Pooling/config.json`, default mean), the maximum sequence length
    /// (`sentence_bert_config.json`, else what the model's `max_position_embeddings` leaves
    /// for tokens, else 512) and the model's family (`model_type`: BERT, RoBERTa, XLM-RoBERTa
    /// or CamemBERT).
    ///
    /// # Errors
    /// A missing file or malformed JSON, naming the file; a family or setting souk's forward
    /// passes do not implement (another `model_type`, `hidden_act` or
    /// `position_embedding_type`), naming it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, EncoderError> {
        let dir = dir.as_ref().to_path_buf();
        let need = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EncoderError::Model(format!(
                    "{} is missing (run scripts/fetch-model.sh for the default model)",
                    path.display()
                )))
            }
        };
        let config = need("config.json")?;
        let weights = need("model.safetensors")?;
        let tokenizer = need("tokenizer.json")?;
        let modules = read_modules(&dir)?;
        let pooling_path = dir.join(&modules.pooling).join("config.json");
        let pooling = if pooling_path.is_file() {
            read_pooling(&pooling_path)?
        } else {
            Pooling::Mean
        };
        let config_json = read_json(&config)?;
        let (model_type, positions) = architecture(&config_json, &config)?;
        // RoBERTa's 514 positions hold 512 tokens: the first rows are reserved.
        let table = config_json
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize;
        // [CLS] and [SEP] (or <s> and </s>) at least, after the reserved rows.
        if positions.reserved() + 2 > table {
            return Err(EncoderError::Model(format!(
                "{}: max_position_embeddings {table} leaves no room for a text after {} reserved rows (pad_token_id)",
                config.display(),
                positions.reserved()
            )));
        }
        let model_max = table - positions.reserved();
        // sentence-transformers' order: its own config (up to version 5), else the
        // tokenizer's `model_max_length` (where version 6 saves it), else the table.
        let st_path = dir.join("sentence_bert_config.json");
        let from_st = if st_path.is_file() {
            read_json(&st_path)?
                .get("max_seq_length")
                .and_then(serde_json::Value::as_u64)
        } else {
            None
        };
        let tokenizer_config = dir.join("tokenizer_config.json");
        let from_tokenizer = || -> Result<Option<u64>, EncoderError> {
            if !tokenizer_config.is_file() {
                return Ok(None);
            }
            // transformers writes ~1e30 for "no limit": a float, not read as a length.
            Ok(read_json(&tokenizer_config)?
                .get("model_max_length")
                .and_then(serde_json::Value::as_u64))
        };
        let max_seq_length = match from_st {
            Some(length) => Some(length),
            None => from_tokenizer()?,
        }
        .map_or(model_max, |v| usize::try_from(v).unwrap_or(usize::MAX))
        .min(model_max)
        .max(2);
        let prompts_path = dir.join("config_sentence_transformers.json");
        let (prompts, default_prompt_name) = if prompts_path.is_file() {
            read_prompts(&prompts_path)?
        } else {
            (BTreeMap::new(), None)
        };
        Ok(Self {
            dir,
            config,
            weights,
            tokenizer,
            pooling,
            max_seq_length,
            model_type,
            positions,
            prompts,
            default_prompt_name,
            head: modules.head,
        })
    }

    /// Identifies the vector space this model makes: a hash of everything that shapes its
    /// vectors (configuration, weights, tokenizer, pooling, maximum length), the first 8
    /// bytes of a BLAKE3 digest. A copy of the same files has the same fingerprint wherever
    /// it is loaded; the device and the numeric type do not enter it (f16 and f32 runs of one
    /// model give vectors of one space). Never 0, which `Embed` callers read as "not said".
    /// Reads the weights once (about 60 ms for MiniLM's 90 MB on this 2-core machine).
    ///
    /// # Errors
    /// When a file cannot be read, naming it.
    pub fn fingerprint(&self) -> Result<u64, EncoderError> {
        let mut hasher = blake3::Hasher::new();
        for path in [&self.config, &self.weights, &self.tokenizer] {
            let mut file = std::fs::File::open(path)
                .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
            let length = std::io::copy(&mut file, &mut hasher)
                .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
            // Lengths keep the files' boundaries in the digest.
            hasher.update(&length.to_le_bytes());
        }
        hasher.update(self.pooling.as_str().as_bytes());
        hasher.update(&(self.max_seq_length as u64).to_le_bytes());
        // Prompts shape the vectors made with them; a model without any (every model before
        // prompts were read) keeps the fingerprint it had.
        if !self.prompts.is_empty() {
            for (name, text) in &self.prompts {
                for part in [name, text] {
                    hasher.update(&(part.len() as u64).to_le_bytes());
                    hasher.update(part.as_bytes());
                }
            }
            let default = self.default_prompt_name.as_deref().unwrap_or("");
            hasher.update(&(default.len() as u64).to_le_bytes());
            hasher.update(default.as_bytes());
        }
        // Likewise the modules after pooling: none (MiniLM's final Normalize is left out of
        // `head`) adds nothing.
        for module in &self.head {
            match module {
                HeadModule::Normalize => hasher.update(b"normalize"),
                HeadModule::Dense(dense) => {
                    hasher.update(b"dense");
                    hasher.update(&(dense.in_features as u64).to_le_bytes());
                    hasher.update(&(dense.out_features as u64).to_le_bytes());
                    hasher.update(&[u8::from(dense.bias), dense.activation as u8]);
                    let mut file = std::fs::File::open(&dense.weights).map_err(|e| {
                        EncoderError::Model(format!("{}: {e}", dense.weights.display()))
                    })?;
                    let length = std::io::copy(&mut file, &mut hasher).map_err(|e| {
                        EncoderError::Model(format!("{}: {e}", dense.weights.display()))
                    })?;
                    hasher.update(&length.to_le_bytes())
                }
            };
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        Ok(u64::from_le_bytes(first).max(1))
    }

    /// The text put before each text of this kind, or of the prompt `name` when one is given
    /// ("" for none), as sentence-transformers' `encode`, `encode_query` and
    /// `encode_document` choose it.
    ///
    /// # Errors
    /// `InvalidInput` for a `name` the model has no prompt of.
    pub fn prompt(&self, kind: TextKind, name: &str) -> Result<&str, EncoderError> {
        if !name.is_empty() {
            return self.prompts.get(name).map(String::as_str).ok_or_else(|| {
                EncoderError::InvalidInput(format!(
                    "prompt_name {name:?}: the model's prompts are {:?}",
                    self.prompts.keys().collect::<Vec<_>>()
                ))
            });
        }
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| self.prompts.get(*n))
                .map_or("", String::as_str)
        };
        Ok(match kind {
            TextKind::Unspecified => self
                .default_prompt_name
                .as_ref()
                .and_then(|n| self.prompts.get(n))
                .map_or("", String::as_str),
            TextKind::Query => first(&["query"]),
            TextKind::Document => first(&["document", "passage", "corpus"]),
        })
    }

    /// A short name for the model: its directory name.
    pub fn model_id(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory with these files (the fingerprint reads bytes, not tensors).
    fn model(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn fingerprint(files: &[(&str, &str)]) -> u64 {
        let dir = model(files);
        ModelFiles::open(dir.path()).unwrap().fingerprint().unwrap()
    }

    #[test]
    fn the_fingerprint_follows_what_shapes_the_vectors() {
        let base = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ];
        let first = fingerprint(&base);
        assert_eq!(
            fingerprint(&base),
            first,
            "a copy elsewhere is the same model"
        );
        let with = |name: &'static str, text: &'static str| {
            let mut files = base.to_vec();
            files.retain(|(n, _)| *n != name);
            files.push((name, text));
            fingerprint(&files)
        };
        assert_ne!(with("model.safetensors", "weightz"), first, "weights");
        assert_ne!(with("tokenizer.json", "{ }"), first, "tokenizer");
        assert_ne!(
            with("config.json", r#"{"max_position_embeddings": 256}"#),
            first,
            "configuration (and the length it allows)"
        );
        assert_ne!(
            with("sentence_bert_config.json", r#"{"max_seq_length": 128}"#),
            first,
            "texts cut shorter"
        );
        assert_ne!(
            with(
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true}"#
            ),
            first,
            "pooling"
        );
        // The same bytes split differently between two files are another model.
        let moved = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weight"),
            ("tokenizer.json", "s{}"),
        ];
        assert_ne!(fingerprint(&moved), first, "file boundaries");
        // Options that do not change the vectors' space leave it alone.
        assert_eq!(
            with(
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true}"#
            ),
            first,
            "mean pooling said explicitly is the default"
        );
    }

    fn opened(config: &str) -> Result<ModelFiles, EncoderError> {
        let dir = model(&[
            ("config.json", config),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ]);
        ModelFiles::open(dir.path())
    }

    #[test]
    fn the_family_sets_the_position_numbering_and_the_length_it_leaves() {
        let bert = opened(r#"{"max_position_embeddings": 512}"#).unwrap();
        assert_eq!(
            (
                bert.model_type.as_str(),
                bert.positions,
                bert.max_seq_length
            ),
            ("bert", Positions::FromZero, 512),
            "no model_type is BERT"
        );
        let xlmr = opened(
            r#"{"model_type": "xlm-roberta", "pad_token_id": 1, "max_position_embeddings": 514}"#,
        )
        .unwrap();
        assert_eq!(
            (xlmr.positions, xlmr.max_seq_length),
            (Positions::AfterPadding { pad: 1 }, 512),
            "RoBERTa's 514 rows hold 512 tokens"
        );
        let roberta =
            opened(r#"{"model_type": "roberta", "max_position_embeddings": 514}"#).unwrap();
        assert_eq!(roberta.positions, Positions::AfterPadding { pad: 1 });
    }

    #[test]
    fn a_model_souk_would_compute_wrongly_is_refused_by_name() {
        for (config, said) in [
            (
                r#"{"model_type": "deberta-v2"}"#,
                r#"model_type "deberta-v2" is not supported (souk runs bert, distilbert, mpnet"#,
            ),
            (
                r#"{"model_type": "bert", "hidden_act": "relu"}"#,
                r#"hidden_act "relu" is not supported"#,
            ),
            (
                r#"{"hidden_act": "gelu_new"}"#,
                r#"hidden_act "gelu_new" is not supported"#,
            ),
            (
                r#"{"position_embedding_type": "relative_key"}"#,
                r#"position_embedding_type "relative_key" is not supported"#,
            ),
            (
                r#"{"model_type": "roberta", "pad_token_id": -1}"#,
                "pad_token_id -1 is not a token id",
            ),
            (
                r#"{"model_type": "roberta", "pad_token_id": 4294967295, "max_position_embeddings": 514}"#,
                "max_position_embeddings 514 leaves no room for a text after 4294967296 reserved rows",
            ),
        ] {
            let error = opened(config).unwrap_err().to_string();
            assert!(
                error.contains("config.json: ") && error.contains(said),
                "{config}: {error}"
            );
        }
    }

    #[test]
    fn roberta_numbers_real_tokens_after_the_padding_id() {
        let mut rows = Vec::new();
        Positions::AfterPadding { pad: 1 }.extend(&[0, 5, 1, 7, 2], &mut rows);
        assert_eq!(
            rows,
            [2, 3, 1, 4, 5],
            "a padding id stands at pad, uncounted"
        );
        rows.clear();
        Positions::FromZero.extend(&[101, 1, 102], &mut rows);
        assert_eq!(rows, [0, 1, 2]);
    }

    fn with_prompts(prompts: &str) -> Result<ModelFiles, EncoderError> {
        let dir = model(&[
            ("config.json", "{}"),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
            ("config_sentence_transformers.json", prompts),
        ]);
        ModelFiles::open(dir.path())
    }

    #[test]
    fn prompts_are_chosen_as_sentence_transformers_documents_them() {
        let e5 = with_prompts(
            r#"{"prompts": {"query": "query: ", "document": "", "passage": "passage: "},
                "default_prompt_name": null}"#,
        )
        .unwrap();
        assert_eq!(e5.prompt(TextKind::Query, "").unwrap(), "query: ");
        assert_eq!(
            e5.prompt(TextKind::Document, "").unwrap(),
            "passage: ",
            "an empty document prompt is none: the passage prompt serves"
        );
        assert_eq!(e5.prompt(TextKind::Unspecified, "").unwrap(), "");
        assert_eq!(e5.prompt(TextKind::Query, "passage").unwrap(), "passage: ");
        let unknown = e5.prompt(TextKind::Query, "search").unwrap_err();
        assert!(
            matches!(&unknown, EncoderError::InvalidInput(m)
                if m.contains(r#"prompt_name "search""#) && m.contains(r#"["passage", "query"]"#)),
            "{unknown}"
        );
        let bge = with_prompts(
            r#"{"prompts": {"query": "Represent this sentence for searching relevant passages: "},
                "default_prompt_name": "query"}"#,
        )
        .unwrap();
        assert_eq!(bge.prompt(TextKind::Document, "").unwrap(), "");
        assert!(
            bge.prompt(TextKind::Unspecified, "")
                .unwrap()
                .starts_with("Represent")
        );

        for (prompts, said) in [
            (r#"{"prompts": ["query: "]}"#, "prompts is not an object"),
            (
                r#"{"prompts": {"query": 3}}"#,
                r#"prompt "query" is 3, not a text"#,
            ),
            (
                r#"{"prompts": {"query": "q: "}, "default_prompt_name": "passage"}"#,
                r#"default_prompt_name "passage" is not one of the prompts"#,
            ),
        ] {
            let error = with_prompts(prompts).unwrap_err().to_string();
            assert!(
                error.contains("config_sentence_transformers.json: ") && error.contains(said),
                "{prompts}: {error}"
            );
        }
        let dir = model(&[
            ("config.json", "{}"),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true, "include_prompt": false}"#,
            ),
        ]);
        let error = ModelFiles::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("include_prompt false"), "{error}");
    }

    #[test]
    fn prompts_enter_the_fingerprint_and_no_prompts_leave_it_as_it_was() {
        let base = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ];
        let with = |extra: &'static str| {
            let mut files = base.to_vec();
            files.push(("config_sentence_transformers.json", extra));
            fingerprint(&files)
        };
        let bare = fingerprint(&base);
        assert_eq!(
            with(r#"{"__version__": {"sentence_transformers": "2.0.0"}}"#),
            bare
        );
        assert_eq!(
            with(r#"{"prompts": {"query": ""}}"#),
            bare,
            "an empty prompt is none"
        );
        let e5 = with(r#"{"prompts": {"query": "query: "}}"#);
        assert_ne!(e5, bare);
        assert_ne!(with(r#"{"prompts": {"query": "query:"}}"#), e5);
    }

    const MODULES_JSON: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]"#;

    #[test]
    fn each_pooling_mode_reads_only_the_sequence_s_states_as_sentence_transformers_does() {
        // Three tokens of two values each.
        let rows = [1.0, -2.0, 3.0, 0.0, -1.0, 4.0];
        let pooled = |p: Pooling| {
            let mut out = [0f32; 2];
            p.pool(&rows, 2, &mut out);
            out
        };
        let close =
            |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).abs() < 1e-6 && (a[1] - b[1]).abs() < 1e-6;
        assert_eq!(pooled(Pooling::Cls), [1.0, -2.0]);
        assert_eq!(pooled(Pooling::LastToken), [-1.0, 4.0]);
        assert_eq!(pooled(Pooling::Max), [3.0, 4.0]);
        assert!(close(pooled(Pooling::Mean), [1.0, 2.0 / 3.0]));
        let root = 3f32.sqrt();
        assert!(close(
            pooled(Pooling::MeanSqrtLen),
            [3.0 / root, 2.0 / root]
        ));
        // Weights 1, 2, 3 over 6.
        assert!(close(
            pooled(Pooling::WeightedMean),
            [(1.0 + 6.0 - 3.0) / 6.0, (-2.0 + 0.0 + 12.0) / 6.0]
        ));
        // No token: a zero vector, whatever the mode.
        for p in [Pooling::Max, Pooling::Mean, Pooling::LastToken] {
            let mut out = [7f32; 2];
            p.pool(&[], 2, &mut out);
            assert_eq!(out, [0.0, 0.0]);
        }
        for p in Pooling::ALL {
            assert_eq!(Pooling::from_name(p.as_str()), Some(p));
        }
    }

    #[test]
    fn sentence_transformers_6_layouts_are_read_and_modules_it_cannot_run_refused() {
        let base = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ];
        let open = |extra: &[(&str, &str)]| {
            let mut files = base.to_vec();
            files.extend_from_slice(extra);
            let dir = model(&files);
            ModelFiles::open(dir.path())
        };
        // Version 6's pooling and length; version 5's length wins over the tokenizer's.
        let six = open(&[
            ("1_Pooling/config.json", r#"{"pooling_mode": "cls"}"#),
            ("tokenizer_config.json", r#"{"model_max_length": 128}"#),
        ])
        .unwrap();
        assert_eq!((six.pooling, six.max_seq_length), (Pooling::Cls, 128));
        // Every single mode, in both formats.
        for (v6, v5, pooling) in [
            ("max", "pooling_mode_max_tokens", Pooling::Max),
            (
                "mean_sqrt_len_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                Pooling::MeanSqrtLen,
            ),
            (
                "weightedmean",
                "pooling_mode_weightedmean_tokens",
                Pooling::WeightedMean,
            ),
            ("lasttoken", "pooling_mode_lasttoken", Pooling::LastToken),
        ] {
            let six = format!(r#"{{"pooling_mode": "{v6}"}}"#);
            let five = format!(r#"{{"{v5}": true, "pooling_mode_mean_tokens": false}}"#);
            for config in [six, five] {
                let files = open(&[("1_Pooling/config.json", config.as_str())]).unwrap();
                assert_eq!(files.pooling, pooling, "{config}");
            }
        }
        let five = open(&[
            ("sentence_bert_config.json", r#"{"max_seq_length": 256}"#),
            ("tokenizer_config.json", r#"{"model_max_length": 128}"#),
        ])
        .unwrap();
        assert_eq!(five.max_seq_length, 256);
        let unlimited = open(&[(
            "tokenizer_config.json",
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        )])
        .unwrap();
        assert_eq!(unlimited.max_seq_length, 512, "no limit: the table's");
        // A dense layer after pooling; the final Normalize is the request's `normalize`.
        let dense = open(&[
            ("modules.json", MODULES_JSON),
            ("1_Pooling/config.json", r#"{"pooling_mode": "mean"}"#),
            (
                "2_Dense/config.json",
                r#"{"in_features": 384, "out_features": 128, "bias": false,
                    "activation_function": "torch.nn.modules.linear.Identity"}"#,
            ),
            ("2_Dense/model.safetensors", "w"),
        ])
        .unwrap();
        assert!(
            matches!(dense.head.as_slice(), [HeadModule::Dense(d)]
                if (d.in_features, d.out_features, d.bias, d.activation)
                    == (384, 128, false, Activation::Identity)),
            "{:?}",
            dense.head
        );
        for (extra, said) in [
            (
                vec![(
                    "1_Pooling/config.json",
                    r#"{"pooling_mode": ["mean", "max"]}"#,
                )],
                r#"pooling ["mean", "max"] concatenates modes"#,
            ),
            (
                vec![(
                    "1_Pooling/config.json",
                    r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#,
                )],
                r#"pooling ["cls", "mean"] concatenates modes"#,
            ),
            (
                vec![("1_Pooling/config.json", r#"{"pooling_mode": "attention"}"#)],
                r#"pooling mode "attention" is not one sentence-transformers names"#,
            ),
            (
                vec![(
                    "modules.json",
                    r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                        {"path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}]"#,
                )],
                "module 2 is sentence_transformers.models.LayerNorm; souk runs",
            ),
            (
                vec![(
                    "modules.json",
                    r#"[{"path": "", "type": "sentence_transformers.models.Transformer"}]"#,
                )],
                "no Pooling module",
            ),
            (
                vec![
                    ("modules.json", MODULES_JSON),
                    (
                        "2_Dense/config.json",
                        r#"{"in_features": 384, "out_features": 128}"#,
                    ),
                ],
                "2_Dense/model.safetensors is missing",
            ),
            (
                vec![
                    ("modules.json", MODULES_JSON),
                    (
                        "2_Dense/config.json",
                        r#"{"in_features": 384, "out_features": 128,
                            "activation_function": "torch.nn.modules.activation.GELU"}"#,
                    ),
                    ("2_Dense/model.safetensors", "w"),
                ],
                r#"activation_function "torch.nn.modules.activation.GELU" is not supported"#,
            ),
        ] {
            let error = open(&extra).unwrap_err().to_string();
            assert!(error.contains(said), "{extra:?}: {error}");
        }
    }

    #[test]
    fn a_dense_layer_enters_the_fingerprint_and_a_final_normalize_does_not() {
        let base = [
            ("config.json", r#"{"max_position_embeddings": 512}"#),
            ("model.safetensors", "weights"),
            ("tokenizer.json", "{}"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut files = base.to_vec();
            files.extend_from_slice(extra);
            fingerprint(&files)
        };
        let bare = fingerprint(&base);
        let minilm = r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;
        assert_eq!(with(&[("modules.json", minilm)]), bare);
        let dense = [
            ("modules.json", MODULES_JSON),
            (
                "2_Dense/config.json",
                r#"{"in_features": 384, "out_features": 128}"#,
            ),
            ("2_Dense/model.safetensors", "w"),
        ];
        let first = with(&dense);
        assert_ne!(first, bare);
        let mut other = dense.to_vec();
        other[2] = ("2_Dense/model.safetensors", "v");
        assert_ne!(with(&other), first, "the dense layer's weights");
    }
}
