//! DistilBERT as BERT: the same post-norm layers under other names, and no token types.
//! The engines load BERT's names; this backend answers them from DistilBERT's weights
//! (`transformer.layer.N.attention.q_lin` for `encoder.layer.N.attention.self.query`, ...)
//! and gives a zero row for the token-type table DistilBERT does not have.
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::bert::{Config, HiddenAct};

/// BERT's configuration of a DistilBERT `config.json` (`dim`, `n_layers`, `n_heads`,
/// `hidden_dim`; layer norms at 1e-12, as DistilBERT's are).
///
/// # Errors
/// A missing or malformed size, naming it.
pub(crate) fn config(json: &serde_json::Value) -> Result<Config, String> {
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

/// BERT's name of a weight -> DistilBERT's (both relative to the model's root).
fn renamed(name: &str) -> String {
    let Some(rest) = name.strip_prefix("encoder.layer.") else {
        return name.to_string();
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return name.to_string();
    };
    let moved = [
        ("attention.self.query.", "attention.q_lin."),
        ("attention.self.key.", "attention.k_lin."),
        ("attention.self.value.", "attention.v_lin."),
        ("attention.output.dense.", "attention.out_lin."),
        ("attention.output.LayerNorm.", "sa_layer_norm."),
        ("intermediate.dense.", "ffn.lin1."),
        ("output.dense.", "ffn.lin2."),
        ("output.LayerNorm.", "output_layer_norm."),
    ]
    .iter()
    .find_map(|(bert, distil)| {
        part.strip_prefix(bert)
            .map(|leaf| format!("{distil}{leaf}"))
    });
    match moved {
        Some(part) => format!("transformer.layer.{layer}.{part}"),
        None => name.to_string(),
    }
}

const TOKEN_TYPES: &str = "embeddings.token_type_embeddings.weight";

/// DistilBERT's weights under BERT's names; `root` is where its `embeddings.*` are.
struct AsBert {
    root: VarBuilder<'static>,
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
            .get_with_hints_dtype(s, &renamed(name), h, dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if name == TOKEN_TYPES {
            candle_core::bail!("{TOKEN_TYPES} needs a shape: DistilBERT has no token types");
        }
        self.root
            .get_unchecked_dtype(&renamed(name), dtype)?
            .to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name == TOKEN_TYPES || self.root.contains_tensor(&renamed(name))
    }
}

/// `root` (DistilBERT's weights, `distilbert.` already applied) read as a BERT model's root.
pub(crate) fn as_bert(root: VarBuilder<'static>) -> VarBuilder<'static> {
    let (dtype, device) = (root.dtype(), root.device().clone());
    VarBuilder::from_backend(Box::new(AsBert { root }), dtype, device)
}

#[cfg(test)]
mod tests {
    use super::renamed;

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
