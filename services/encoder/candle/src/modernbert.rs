//! ModernBERT (gte-modernbert, modernbert-embed) on the packed CPU engine: BERT's packed rows
//! and GEMMs with ModernBERT's own layer. Pre-norm (no norm before the first layer's
//! attention), no position table but rotary embeddings on queries and keys (one base for the
//! global layers, another for the local ones), every `global_attn_every_n_layers`-th layer
//! global and the others attending only within `local_attention / 2` tokens, a gated GELU
//! MLP, a final norm, and no biases unless the config asks for them. As transformers'
//! `ModernBertModel` computes it (`modeling_modernbert.py`), checked against it on a tiny
//! random model (`tests/families.rs`).
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::cpu::{Norm, Packed, attention, flat};
use crate::layers::gelu_slice;

/// What `config.json` says of a ModernBERT model, in either of transformers' layouts
/// (`global_rope_theta` and friends, or version 5's `layer_types` and `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModernConfig {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) layers: usize,
    pub(crate) intermediate: usize,
    pub(crate) vocab: usize,
    pub(crate) eps: f64,
    pub(crate) norm_bias: bool,
    pub(crate) attention_bias: bool,
    pub(crate) mlp_bias: bool,
    /// Per layer: whether it attends to the whole sequence (else within `window`).
    pub(crate) global: Vec<bool>,
    /// How far a local layer's token sees, each side (`local_attention / 2`).
    pub(crate) window: usize,
    pub(crate) global_theta: f64,
    pub(crate) local_theta: f64,
}

impl ModernConfig {
    /// # Errors
    /// A missing size, or a setting souk's layer does not compute (another activation or
    /// rotary scaling, a layer type other than full or sliding attention), named.
    pub(crate) fn read(json: &serde_json::Value) -> Result<Self, String> {
        let size = |key: &str| {
            json.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("{key} is missing or not a number"))
        };
        let flag = |key: &str| json.get(key).and_then(serde_json::Value::as_bool);
        let number = |key: &str| json.get(key).and_then(serde_json::Value::as_f64);
        let hidden = size("hidden_size")?;
        let heads = size("num_attention_heads")?;
        let layers = size("num_hidden_layers")?;
        if heads == 0 || hidden % heads != 0 || (hidden / heads) % 2 != 0 {
            return Err(format!(
                "hidden_size {hidden} is not an even head size times num_attention_heads {heads}"
            ));
        }
        match json
            .get("hidden_activation")
            .and_then(serde_json::Value::as_str)
        {
            None | Some("gelu") => {}
            Some(other) => {
                return Err(format!(
                    "hidden_activation {other:?} is not supported (souk's layers compute \"gelu\", the exact one)"
                ));
            }
        }
        let global = match json
            .get("layer_types")
            .and_then(serde_json::Value::as_array)
        {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(true),
                    Some("sliding_attention") => Ok(false),
                    _ => Err(format!("layer type {t} is not full or sliding attention")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                let every = json
                    .get("global_attn_every_n_layers")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(3)
                    .max(1) as usize;
                (0..layers).map(|i| i % every == 0).collect()
            }
        };
        if global.len() != layers {
            return Err(format!(
                "{} layer types for num_hidden_layers {layers}",
                global.len()
            ));
        }
        let theta = |kind: &str, old: &str, default: f64| -> Result<f64, String> {
            match json.get("rope_parameters").and_then(|p| p.get(kind)) {
                Some(p) => {
                    match p.get("rope_type").and_then(serde_json::Value::as_str) {
                        None | Some("default") => {}
                        Some(other) => {
                            return Err(format!(
                                "rope_type {other:?} of {kind} is not supported (only \"default\")"
                            ));
                        }
                    }
                    Ok(p.get("rope_theta")
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(default))
                }
                None => Ok(number(old).unwrap_or(default)),
            }
        };
        if json.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported".into());
        }
        Ok(Self {
            hidden,
            heads,
            layers,
            intermediate: size("intermediate_size")?,
            vocab: size("vocab_size")?,
            eps: number("norm_eps").unwrap_or(1e-5),
            norm_bias: flag("norm_bias").unwrap_or(false),
            attention_bias: flag("attention_bias").unwrap_or(false),
            mlp_bias: flag("mlp_bias").unwrap_or(false),
            global,
            window: json
                .get("local_attention")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(128) as usize
                / 2,
            global_theta: theta("full_attention", "global_rope_theta", 160_000.0)?,
            local_theta: theta("sliding_attention", "local_rope_theta", 10_000.0)?,
        })
    }
}

struct ModernLayer {
    /// `None` for the first layer, whose attention reads the embeddings' norm directly.
    attention_norm: Option<Norm>,
    qkv: Packed,
    attention_out: Packed,
    mlp_norm: Norm,
    /// Input and gate side by side (`2 x intermediate` outputs).
    wi: Packed,
    wo: Packed,
    global: bool,
}

/// The whole model for the packed CPU path.
pub(crate) struct CpuModernBert {
    config: ModernConfig,
    words: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<ModernLayer>,
    final_norm: Norm,
}

/// Rotary tables for positions `0..len`: `cos[p * half + k]`, `sin[...]` of `p * theta^(-2k/d)`.
struct Rotary {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rotary {
    fn new(theta: f64, head: usize, len: usize) -> Self {
        let half = head / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        // transformers computes the inverse frequencies and the angles in f32.
        let inverse: Vec<f32> = (0..half)
            .map(|k| (1.0 / theta.powf((2 * k) as f64 / head as f64)) as f32)
            .collect();
        for p in 0..len {
            for f in &inverse {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates one head's vector at position `p` (transformers' `rotate_half` pairing: value
    /// `k` with value `k + d/2`).
    fn apply(&self, x: &mut [f32], p: usize) {
        let (cos, sin) = (
            &self.cos[p * self.half..(p + 1) * self.half],
            &self.sin[p * self.half..(p + 1) * self.half],
        );
        let (a, b) = x.split_at_mut(self.half);
        for k in 0..self.half {
            let (x1, x2) = (a[k], b[k]);
            a[k] = x1 * cos[k] - x2 * sin[k];
            b[k] = x2 * cos[k] + x1 * sin[k];
        }
    }
}

impl CpuModernBert {
    /// `vb` points at the safetensors' root; a task model's weights (`ModernBertForMaskedLM`)
    /// are found under `model.`.
    pub(crate) fn load(vb: VarBuilder, config: ModernConfig) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("model.embeddings.tok_embeddings.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let h = config.hidden;
        let norm = |vb: &VarBuilder| Norm::load_with(vb, h, config.eps, config.norm_bias);
        let mut layers = Vec::with_capacity(config.layers);
        for (i, &global) in config.global.iter().enumerate() {
            let l = vb.pp(format!("layers.{i}"));
            layers.push(ModernLayer {
                attention_norm: if i == 0 {
                    None
                } else {
                    Some(norm(&l.pp("attn_norm"))?)
                },
                qkv: Packed::load_with(&l.pp("attn").pp("Wqkv"), 3 * h, h, config.attention_bias)?,
                attention_out: Packed::load_with(
                    &l.pp("attn").pp("Wo"),
                    h,
                    h,
                    config.attention_bias,
                )?,
                mlp_norm: norm(&l.pp("mlp_norm"))?,
                wi: Packed::load_with(
                    &l.pp("mlp").pp("Wi"),
                    2 * config.intermediate,
                    h,
                    config.mlp_bias,
                )?,
                wo: Packed::load_with(
                    &l.pp("mlp").pp("Wo"),
                    h,
                    config.intermediate,
                    config.mlp_bias,
                )?,
                global,
            });
        }
        Ok(Self {
            words: flat(
                &vb.pp("embeddings")
                    .pp("tok_embeddings")
                    .get((config.vocab, h), "weight")?,
            )?,
            embedding_norm: norm(&vb.pp("embeddings").pp("norm"))?,
            final_norm: norm(&vb.pp("final_norm"))?,
            layers,
            config,
        })
    }

    /// Hidden states of every token of every sequence, packed as the BERT engine packs them
    /// (row `offsets[s] + i` is token `i` of sequence `s`). Errors name an id outside the
    /// vocabulary.
    pub(crate) fn forward(
        &self,
        sequences: &[(&[u32], &[u32])],
    ) -> Result<(Vec<f32>, Vec<usize>), String> {
        let h = self.config.hidden;
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for (ids, _) in sequences {
            offsets.push(offsets[offsets.len() - 1] + ids.len());
        }
        let tokens = offsets[sequences.len()];
        let longest = sequences
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0);
        let mut x = Vec::with_capacity(tokens * h);
        for (ids, _) in sequences {
            for &id in *ids {
                let word = self
                    .words
                    .get(id as usize * h..(id as usize + 1) * h)
                    .ok_or_else(|| format!("token id {id} is outside the vocabulary"))?;
                x.extend_from_slice(word);
            }
        }
        self.embedding_norm.apply(&mut x);
        let head = h / self.config.heads;
        let global = Rotary::new(self.config.global_theta, head, longest);
        let local = Rotary::new(self.config.local_theta, head, longest);
        // Each token's position inside its sequence.
        let positions: Vec<usize> = offsets.windows(2).flat_map(|w| 0..w[1] - w[0]).collect();
        let intermediate = self.config.intermediate;
        let mut normed = vec![0.0f32; tokens * h];
        let mut qkv = vec![0.0f32; tokens * 3 * h];
        let mut context = vec![0.0f32; tokens * h];
        let mut attended = vec![0.0f32; tokens * h];
        let mut gated = vec![0.0f32; tokens * 2 * intermediate];
        let mut inner = vec![0.0f32; tokens * intermediate];
        for layer in &self.layers {
            let input = match &layer.attention_norm {
                Some(norm) => {
                    normed.copy_from_slice(&x);
                    norm.apply(&mut normed);
                    &normed
                }
                None => &x,
            };
            layer.qkv.forward(input, tokens, None, &mut qkv);
            let rotary = if layer.global { &global } else { &local };
            // Queries and keys of every head, rotated by their token's position.
            qkv.par_chunks_mut(3 * h)
                .zip(positions.par_iter())
                .for_each(|(row, &p)| {
                    for part in row[..2 * h].chunks_exact_mut(head) {
                        rotary.apply(part, p);
                    }
                });
            let window = (!layer.global).then_some(self.config.window);
            attention(
                &qkv,
                &offsets,
                h,
                self.config.heads,
                None,
                window,
                &mut context,
            );
            layer
                .attention_out
                .forward(&context, tokens, Some(&x), &mut attended);
            normed.copy_from_slice(&attended);
            layer.mlp_norm.apply(&mut normed);
            layer.wi.forward(&normed, tokens, None, &mut gated);
            // GELU(input) x gate, per token.
            inner
                .par_chunks_mut(intermediate)
                .zip(gated.par_chunks_mut(2 * intermediate))
                .for_each(|(out, row)| {
                    let (input, gate) = row.split_at_mut(intermediate);
                    gelu_slice(input);
                    out.iter_mut()
                        .zip(input.iter().zip(gate.iter()))
                        .for_each(|(o, (a, g))| *o = a * g);
                });
            layer.wo.forward(&inner, tokens, Some(&attended), &mut x);
        }
        self.final_norm.apply(&mut x);
        Ok((x, offsets))
    }

    /// Width of every token's state.
    pub(crate) fn hidden(&self) -> usize {
        self.config.hidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_config_layouts_give_the_same_layers_and_bases() {
        let old = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
            "intermediate_size": 96, "vocab_size": 100, "global_attn_every_n_layers": 3,
            "local_attention": 128, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
            "hidden_activation": "gelu", "norm_bias": false
        });
        let new = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
            "intermediate_size": 96, "vocab_size": 100, "local_attention": 128,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
            }
        });
        let a = ModernConfig::read(&old).unwrap();
        let b = ModernConfig::read(&new).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.global, [true, false, false, true]);
        assert_eq!(a.window, 64);
        for (key, value, said) in [
            (
                "hidden_activation",
                serde_json::json!("silu"),
                "hidden_activation \"silu\"",
            ),
            (
                "rope_parameters",
                serde_json::json!({"full_attention": {"rope_type": "yarn"}}),
                "rope_type \"yarn\"",
            ),
            (
                "layer_types",
                serde_json::json!(["full_attention"]),
                "1 layer types",
            ),
        ] {
            let mut bad = new.clone();
            bad[key] = value;
            let error = ModernConfig::read(&bad).unwrap_err();
            assert!(error.contains(said), "{error}");
        }
    }

    #[test]
    fn rotation_keeps_length_and_turns_each_pair_by_its_angle() {
        let rotary = Rotary::new(10_000.0, 4, 8);
        let mut x = [1.0f32, 0.0, 0.0, 1.0];
        rotary.apply(&mut x, 0);
        assert_eq!(x, [1.0, 0.0, 0.0, 1.0], "position 0 is unrotated");
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rotary.apply(&mut x, 5);
        // Pair (x0, x2) by 5 rad, pair (x1, x3) by 5 / 100 rad.
        let (c, s) = (5f32.cos(), 5f32.sin());
        assert!((x[0] - (c - 3.0 * s)).abs() < 1e-5 && (x[2] - (3.0 * c + s)).abs() < 1e-5);
        let (c, s) = (0.05f32.cos(), 0.05f32.sin());
        assert!(
            (x[1] - (2.0 * c - 4.0 * s)).abs() < 1e-5 && (x[3] - (4.0 * c + 2.0 * s)).abs() < 1e-5
        );
    }
}
