//! DistilBERT and MPNet as BERT: the same post-norm layers under other names, and no token
//! types. The engines load BERT's names; a backend answers them from the family's weights
//! (`transformer.layer.N.attention.q_lin` or `encoder.layer.N.attention.attn.q` for
//! `encoder.layer.N.attention.self.query`, ...) and gives a zero row for the token-type table
//! neither has. MPNet's one addition, a relative position bias in attention, is
//! [`RelativeBias`].
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::bert::{Config, HiddenAct};

/// BERT's configuration of a DistilBERT `config.json` (`dim`, `n_layers`, `n_heads`,
/// `hidden_dim`; layer norms at 1e-12, as DistilBERT's are).
///
/// # Errors
/// A missing or malformed size, naming it.
pub(crate) fn distilbert_config(json: &serde_json::Value) -> Result<Config, String> {
    let size = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{key} is not a positive size"))
    };
    Ok(Config {
        vocab_size: size("vocab_size")?,
        hidden_size: size("dim")?,
        num_hidden_layers: size("n_layers")?,
        num_attention_heads: size("n_heads")?,
        intermediate_size: size("hidden_dim")?,
        hidden_act: HiddenAct::Gelu,
        max_position_embeddings: size("max_position_embeddings")?,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        pad_token_id: json
            .get("pad_token_id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0),
        model_type: Some("distilbert".into()),
        ..Config::default()
    })
}

/// BERT's configuration of an MPNet `config.json`: BERT's keys, less the token types.
///
/// # Errors
/// A missing or malformed setting, naming it.
pub(crate) fn mpnet_config(json: &serde_json::Value) -> Result<Config, String> {
    let mut json = json.clone();
    if let Some(object) = json.as_object_mut() {
        object.insert("type_vocab_size".into(), 1.into());
    }
    serde_json::from_value(json).map_err(|e| e.to_string())
}

/// A family whose weights the engines read under BERT's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    DistilBert,
    MpNet,
}

/// BERT's name of a weight -> MPNet's (both relative to the model's root).
fn mpnet_name(name: &str) -> String {
    renamed_layer(
        name,
        "encoder.layer.",
        &[
            ("attention.self.query.", "attention.attn.q."),
            ("attention.self.key.", "attention.attn.k."),
            ("attention.self.value.", "attention.attn.v."),
            ("attention.output.dense.", "attention.attn.o."),
            ("attention.output.LayerNorm.", "attention.LayerNorm."),
        ],
    )
}

/// BERT's name of a weight -> DistilBERT's (both relative to the model's root).
fn distilbert_name(name: &str) -> String {
    renamed_layer(
        name,
        "transformer.layer.",
        &[
            ("attention.self.query.", "attention.q_lin."),
            ("attention.self.key.", "attention.k_lin."),
            ("attention.self.value.", "attention.v_lin."),
            ("attention.output.dense.", "attention.out_lin."),
            ("attention.output.LayerNorm.", "sa_layer_norm."),
            ("intermediate.dense.", "ffn.lin1."),
            ("output.dense.", "ffn.lin2."),
            ("output.LayerNorm.", "output_layer_norm."),
        ],
    )
}

/// A weight of BERT's layer `encoder.layer.N.<part>` under the family's `<layers>N.<moved>`,
/// `moved` the first of `parts` (BERT's, the family's) whose BERT prefix `part` has; any
/// other weight (embeddings, a part the table does not move) keeps its name.
fn renamed_layer(name: &str, layers: &str, parts: &[(&str, &str)]) -> String {
    let Some((layer, part)) = name
        .strip_prefix("encoder.layer.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return name.to_string();
    };
    match parts.iter().find_map(|(bert, family)| {
        part.strip_prefix(bert)
            .map(|leaf| format!("{family}{leaf}"))
    }) {
        Some(part) => format!("{layers}{layer}.{part}"),
        None => name.to_string(),
    }
}

const TOKEN_TYPES: &str = "embeddings.token_type_embeddings.weight";

/// A family's weights under BERT's names; `root` is where its `embeddings.*` are.
struct AsBert {
    root: VarBuilder<'static>,
    family: Family,
}

impl AsBert {
    fn renamed(&self, name: &str) -> String {
        match self.family {
            Family::DistilBert => distilbert_name(name),
            Family::MpNet => mpnet_name(name),
        }
    }
}

impl SimpleBackend for AsBert {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name == TOKEN_TYPES {
            return Tensor::zeros(s, dtype, dev);
        }
        self.root
            .get_with_hints_dtype(s, &self.renamed(name), h, dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if name == TOKEN_TYPES {
            candle_core::bail!("{TOKEN_TYPES} needs a shape: this family has no token types");
        }
        self.root
            .get_unchecked_dtype(&self.renamed(name), dtype)?
            .to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name == TOKEN_TYPES || self.root.contains_tensor(&self.renamed(name))
    }
}

/// `root` (the family's weights, its `distilbert.` or `mpnet.` already applied) read as a
/// BERT model's root.
pub(crate) fn as_bert(root: VarBuilder<'static>, family: Family) -> VarBuilder<'static> {
    let (dtype, device) = (root.dtype(), root.device().clone());
    VarBuilder::from_backend(Box::new(AsBert { root, family }), dtype, device)
}

/// MPNet's relative position bias: a learnt value per head for each bucket of the distance
/// from a query token to a key token (T5's buckets: exact up to 8 either side, logarithmic to
/// 128), added to every layer's attention scores after scaling. Shared by all layers.
pub(crate) struct RelativeBias {
    /// (buckets, heads), row-major.
    table: Vec<f32>,
    heads: usize,
    /// The bucket of each distance `i - j` from `-(span - 1)` to `span - 1`, at `i - j + span - 1`.
    by_distance: Vec<usize>,
    span: usize,
}

/// The distance beyond which every distance shares the last bucket (MPNet's fixed 128).
const MAX_DISTANCE: usize = 128;

impl RelativeBias {
    /// `encoder.relative_attention_bias.weight` under MPNet's root.
    /// `span`: the longest sequence (the position table's rows).
    pub(crate) fn load(
        root: &VarBuilder<'static>,
        buckets: usize,
        heads: usize,
        span: usize,
    ) -> candle_core::Result<Self> {
        if buckets < 4 {
            candle_core::bail!("relative_attention_num_buckets {buckets} is under 4");
        }
        let table = root
            .pp("encoder")
            .pp("relative_attention_bias")
            .get((buckets, heads), "weight")?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let span = span.max(1);
        let by_distance = (0..2 * span - 1)
            .map(|k| bucket(k as i64 - (span as i64 - 1), buckets))
            .collect();
        Ok(Self {
            table,
            heads,
            by_distance,
            span,
        })
    }

    /// The bias of head `head` for query `i` and key `j` (both under `span`).
    pub(crate) fn value(&self, head: usize, i: usize, j: usize) -> f32 {
        let k = (i + self.span - 1)
            .saturating_sub(j)
            .min(self.by_distance.len() - 1);
        self.table[self.by_distance[k] * self.heads + head]
    }

    pub(crate) fn heads(&self) -> usize {
        self.heads
    }
}

/// The bucket of a query-minus-key distance `n`, as transformers'
/// `MPNetEncoder.relative_position_bucket` computes it (in f32, truncated, as torch does).
fn bucket(n: i64, buckets: usize) -> usize {
    {
        let half = buckets / 2;
        // transformers' n = -(j - i): keys before the query are positive.
        let mut bucket = if n < 0 { half } else { 0 };
        let n = n.unsigned_abs() as usize;
        let exact = half / 2;
        bucket += if n < exact {
            n
        } else {
            let ratio = (n as f32 / exact as f32).ln()
                / ((MAX_DISTANCE as f64 / exact as f64).ln() as f32)
                * (half - exact) as f32;
            (exact + ratio as usize).min(half - 1)
        };
        bucket
    }
}

#[cfg(test)]
mod tests {
    use super::{bucket, distilbert_name as renamed, mpnet_name};

    /// transformers' `MPNetEncoder.relative_position_bucket` (32 buckets, 128 far) at the
    /// boundaries of its exact and logarithmic ranges, both sides (`n` = query - key).
    #[test]
    fn distances_fall_in_transformers_buckets() {
        let transformers = [
            (-200, 31),
            (-129, 31),
            (-128, 31),
            (-127, 31),
            (-64, 30),
            (-33, 28),
            (-32, 28),
            (-31, 27),
            (-17, 26),
            (-16, 26),
            (-15, 25),
            (-9, 24),
            (-8, 24),
            (-7, 23),
            (-1, 17),
            (0, 0),
            (1, 1),
            (7, 7),
            (8, 8),
            (9, 8),
            (15, 9),
            (16, 10),
            (17, 10),
            (31, 11),
            (32, 12),
            (33, 12),
            (63, 13),
            (64, 14),
            (65, 14),
            (127, 15),
            (128, 15),
            (200, 15),
        ];
        for (n, want) in transformers {
            assert_eq!(bucket(n, 32), want, "distance {n}");
        }
    }

    #[test]
    fn bert_names_map_to_mpnet_names() {
        for (bert, mpnet) in [
            (
                "encoder.layer.1.attention.self.value.bias",
                "encoder.layer.1.attention.attn.v.bias",
            ),
            (
                "encoder.layer.1.attention.output.dense.weight",
                "encoder.layer.1.attention.attn.o.weight",
            ),
            (
                "encoder.layer.1.attention.output.LayerNorm.weight",
                "encoder.layer.1.attention.LayerNorm.weight",
            ),
            (
                "encoder.layer.1.output.LayerNorm.weight",
                "encoder.layer.1.output.LayerNorm.weight",
            ),
        ] {
            assert_eq!(mpnet_name(bert), mpnet);
        }
    }

    #[test]
    fn bert_names_map_to_distilbert_names() {
        for (bert, distil) in [
            (
                "encoder.layer.3.attention.self.query.weight",
                "transformer.layer.3.attention.q_lin.weight",
            ),
            (
                "encoder.layer.0.attention.output.LayerNorm.bias",
                "transformer.layer.0.sa_layer_norm.bias",
            ),
            (
                "encoder.layer.5.output.dense.weight",
                "transformer.layer.5.ffn.lin2.weight",
            ),
            (
                "encoder.layer.5.output.LayerNorm.weight",
                "transformer.layer.5.output_layer_norm.weight",
            ),
            (
                "embeddings.word_embeddings.weight",
                "embeddings.word_embeddings.weight",
            ),
        ] {
            assert_eq!(renamed(bert), distil);
        }
    }
}
