//! BERT's forward pass on CPU in f32, without padding: the batch's tokens are packed into one
//! `tokens x hidden` matrix, so every matrix multiply (QKV, attention output, FFN) runs on real
//! tokens only, and attention runs per sequence on its own length. Weights are packed once at
//! load into 16-column panels for a 6x16 AVX2/FMA register-tiled kernel; bias, residual and
//! GELU are applied in place around it, with no tensor allocations per operation.
//!
//! Same arithmetic as candle's BERT (and sentence-transformers): the reference test holds
//! cosine >= 0.9999 through the service, and a test here compares with the candle path.
use candle_core::Tensor;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use rayon::prelude::*;
use std::sync::Arc;

use souk_encoder_core::Positions;

use crate::families::RelativeBias;

use crate::layers::{exp_nonpositive, gelu_slice};

/// Columns per packed weight panel (two AVX2 registers) and rows per register tile.
const NR: usize = 16;
const MR: usize = 6;
/// Depth of one pass over a panel: 256 x 16 floats = 16 KiB stays in L1 across row tiles.
const KC: usize = 256;
/// Rows of `x` per pass over all panels: 96 x 256 floats = 96 KiB of `x` stays in L2 while
/// every panel streams past it (without it, batch 128 re-read `x` from L3 once per panel).
const MC: usize = 96;

/// `y = x W' + b` with `W` (outputs x inputs) packed as `ceil(outputs/16)` panels of
/// `inputs x 16` floats (zero-padded past `outputs`).
pub(crate) struct Packed {
    inputs: usize,
    pub(crate) outputs: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl Packed {
    pub(crate) fn new(weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> Self {
        let n_panels = outputs.div_ceil(NR);
        let mut panels = vec![0.0; n_panels * inputs * NR];
        for o in 0..outputs {
            let (panel, col) = (o / NR, o % NR);
            for i in 0..inputs {
                panels[(panel * inputs + i) * NR + col] = weight[o * inputs + i];
            }
        }
        Self {
            inputs,
            outputs,
            panels,
            bias,
        }
    }

    fn load(vb: &VarBuilder, outputs: usize, inputs: usize) -> candle_core::Result<Self> {
        Self::load_with(vb, outputs, inputs, true)
    }

    /// A layer with a bias (`bias`), or without one (a zero bias; ModernBERT's layers).
    pub(crate) fn load_with(
        vb: &VarBuilder,
        outputs: usize,
        inputs: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let w = flat(&vb.get((outputs, inputs), "weight")?)?;
        let b = if bias {
            flat(&vb.get(outputs, "bias")?)?
        } else {
            vec![0.0; outputs]
        };
        Ok(Self::new(&w, b, outputs, inputs))
    }

    /// `out = x W' + b (+ residual)` for `rows` rows of `x`; `out` is `rows x outputs`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let n = self.outputs;
        // Row blocks over the rayon pool (one thread when the server runs several workers);
        // each block starts from bias (+ residual) on its own thread.
        let threads = rayon::current_num_threads().max(1);
        let block = rows.div_ceil(threads).div_ceil(MR).max(1) * MR;
        out[..rows * n]
            .par_chunks_mut(block * n)
            .zip(x[..rows * self.inputs].par_chunks(block * self.inputs))
            .enumerate()
            .for_each(|(b, (out, x))| {
                let first = b * block * n;
                for (r, row) in out.chunks_exact_mut(n).enumerate() {
                    row.copy_from_slice(&self.bias);
                    if let Some(res) = residual {
                        let at = first + r * n;
                        row.iter_mut()
                            .zip(&res[at..at + n])
                            .for_each(|(o, v)| *o += v);
                    }
                }
                gemm_rows(self, x, out);
            });
    }
}

/// `out += x W'` for the rows of one block.
fn gemm_rows(w: &Packed, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            gemm_rows_avx2(w, x, out);
        }
        return;
    }
    gemm_rows_portable(w, x, out);
}

fn gemm_rows_portable(w: &Packed, x: &[f32], out: &mut [f32]) {
    let (k, n) = (w.inputs, w.outputs);
    let rows = x.len() / k;
    for r in 0..rows {
        for o in 0..n {
            let (panel, col) = (o / NR, o % NR);
            let mut s = 0.0;
            for i in 0..k {
                s += x[r * k + i] * w.panels[(panel * k + i) * NR + col];
            }
            out[r * n + o] += s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_rows_avx2(w: &Packed, x: &[f32], out: &mut [f32]) {
    let (k, n) = (w.inputs, w.outputs);
    let rows = x.len() / k;
    let mut tail = [0.0f32; MR * NR];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for m0 in (0..rows).step_by(MC) {
            let m1 = (m0 + MC).min(rows);
            for panel in 0..n.div_ceil(NR) {
                let b = &w.panels[(panel * k + k0) * NR..(panel * k + k0 + kc) * NR];
                let cols = NR.min(n - panel * NR);
                for r0 in (m0..m1).step_by(MR) {
                    let mr = MR.min(m1 - r0);
                    let a = &x[r0 * k + k0..];
                    if cols == NR {
                        let c = &mut out[r0 * n + panel * NR..];
                        tile(mr, kc, a, k, b, c, n);
                    } else {
                        // A partial panel (outputs not a multiple of 16): through a scratch tile.
                        tail.fill(0.0);
                        tile(mr, kc, a, k, b, &mut tail, NR);
                        for r in 0..mr {
                            for j in 0..cols {
                                out[(r0 + r) * n + panel * NR + j] += tail[r * NR + j];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `c[r][0..16] += sum_p a[r][p] * b[p][0..16]` for `mr` (1..=6) rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile(mr: usize, kc: usize, a: &[f32], lda: usize, b: &[f32], c: &mut [f32], ldc: usize) {
    match mr {
        6 => tile_n::<6>(kc, a, lda, b, c, ldc),
        5 => tile_n::<5>(kc, a, lda, b, c, ldc),
        4 => tile_n::<4>(kc, a, lda, b, c, ldc),
        3 => tile_n::<3>(kc, a, lda, b, c, ldc),
        2 => tile_n::<2>(kc, a, lda, b, c, ldc),
        _ => tile_n::<1>(kc, a, lda, b, c, ldc),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn tile_n<const R: usize>(kc: usize, a: &[f32], lda: usize, b: &[f32], c: &mut [f32], ldc: usize) {
    use std::arch::x86_64::*;
    // Every index below is checked once here, so the loop runs on raw pointers.
    assert!(b.len() >= kc * NR);
    assert!(R == 0 || a.len() >= (R - 1) * lda + kc);
    assert!(R == 0 || c.len() >= (R - 1) * ldc + NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..kc {
        // SAFETY: p < kc, so b + p*16 + 16 <= b.len() and a + r*lda + p < a.len() (asserted).
        #[allow(unsafe_code)]
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    let c = c.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: r*ldc + 16 <= c.len() (asserted).
        #[allow(unsafe_code)]
        unsafe {
            let row = c.add(r * ldc);
            _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), acc[0]));
            _mm256_storeu_ps(
                row.add(8),
                _mm256_add_ps(_mm256_loadu_ps(row.add(8)), acc[1]),
            );
        }
    }
}

/// GFLOPS of the packed matrix multiply (`x W' + b`, the kernel every BERT linear layer runs
/// through) at `rows x inputs -> outputs`, on the calling thread's rayon pool, median of
/// `repeats` timed passes after one warm-up. Synthetic values; the kernel's speed does not
/// depend on them.
pub fn gemm_gflops(rows: usize, inputs: usize, outputs: usize, repeats: usize) -> f64 {
    let x: Vec<f32> = (0..rows * inputs).map(|i| (i % 13) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..outputs * inputs)
        .map(|i| (i % 7) as f32 * 0.01)
        .collect();
    let packed = Packed::new(&w, vec![0.0; outputs], outputs, inputs);
    let mut out = vec![0.0; rows * outputs];
    let flops = 2.0 * (rows * inputs * outputs) as f64;
    let mut gflops: Vec<f64> = (0..=repeats.max(1))
        .map(|_| {
            let start = std::time::Instant::now();
            packed.forward(&x, rows, None, &mut out);
            flops / start.elapsed().as_secs_f64().max(1e-12) / 1e9
        })
        .skip(1)
        .collect();
    std::hint::black_box(&out);
    gflops.sort_by(f64::total_cmp);
    gflops[gflops.len() / 2]
}

/// This core's f32 FMA ceiling in GFLOPS: 12 independent 8-lane FMA chains (the accumulators
/// a 6x16 tile keeps), no memory traffic, the best of five ~0.1 s runs (a shared host's slow
/// moment is not the ceiling). What [`gemm_gflops`] is measured against; `None` without
/// AVX2/FMA.
pub fn fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
        #[allow(unsafe_code)]
        return Some((0..5).map(|_| unsafe { fma_chains() }).fold(0.0, f64::max));
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains() -> f64 {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    const ROUNDS: usize = 20_000_000;
    let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(black_box(i as f32)));
    let (a, b) = (
        _mm256_set1_ps(black_box(0.5)),
        _mm256_set1_ps(black_box(0.5)),
    );
    let start = std::time::Instant::now();
    for _ in 0..ROUNDS {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(a, b, *v);
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-12);
    // Every chain feeds the result, so none is optimised away.
    black_box(
        acc.iter()
            .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v)),
    );
    (ROUNDS * acc.len() * 16) as f64 / seconds / 1e9
}

pub(crate) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Self::load_with(vb, size, eps, true)
    }

    /// A layer norm with a shift (`bias`), or without one (ModernBERT's `norm_bias: false`).
    pub(crate) fn load_with(
        vb: &VarBuilder,
        size: usize,
        eps: f64,
        bias: bool,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: flat(&vb.get(size, "weight")?)?,
            beta: if bias {
                flat(&vb.get(size, "bias")?)?
            } else {
                vec![0.0; size]
            },
            eps: eps as f32,
        })
    }

    /// Layer norm of every row of `x` in place (two-pass mean and variance, as candle), rows
    /// split over the rayon pool.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        let h = self.gamma.len();
        x.par_chunks_mut(h * 64)
            .for_each(|rows| self.apply_rows(rows));
    }

    fn apply_rows(&self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
            #[allow(unsafe_code)]
            unsafe {
                self.apply_avx2(x);
            }
            return;
        }
        self.apply_body(x);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn apply_avx2(&self, x: &mut [f32]) {
        self.apply_body(x);
    }

    #[inline(always)]
    fn apply_body(&self, x: &mut [f32]) {
        let h = self.gamma.len();
        for row in x.chunks_exact_mut(h) {
            // Eight-lane sums: `iter().sum()` of f32 is one serial chain of 384 adds.
            let mean = souk_lanes::sum(row, row, |v, _| v) / h as f32;
            let var = souk_lanes::sum(row, row, |v, _| (v - mean) * (v - mean)) / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

struct Layer {
    qkv: Packed,
    attention_out: Packed,
    attention_norm: Norm,
    intermediate: Packed,
    output: Packed,
    output_norm: Norm,
}

/// The whole model for the packed CPU path.
pub(crate) struct CpuBert {
    hidden: usize,
    heads: usize,
    words: Vec<f32>,
    positions: Vec<f32>,
    /// How the model numbers positions (BERT from 0, RoBERTa after its padding id).
    numbering: Positions,
    /// MPNet's relative position bias, added to every layer's attention scores.
    relative: Option<Arc<RelativeBias>>,
    token_types: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

pub(crate) fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

impl CpuBert {
    /// `vb` points at the model's root (the `bert.` prefix already applied).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &Config,
        numbering: Positions,
        relative: Option<Arc<RelativeBias>>,
    ) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp("encoder").pp(format!("layer.{i}"));
            let own = l.pp("attention").pp("self");
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                w.extend(flat(&own.pp(part).get((h, h), "weight")?)?);
                b.extend(flat(&own.pp(part).get(h, "bias")?)?);
            }
            let out = l.pp("attention").pp("output");
            layers.push(Layer {
                qkv: Packed::new(&w, b, 3 * h, h),
                attention_out: Packed::load(&out.pp("dense"), h, h)?,
                attention_norm: Norm::load(&out.pp("LayerNorm"), h, eps)?,
                intermediate: Packed::load(
                    &l.pp("intermediate").pp("dense"),
                    config.intermediate_size,
                    h,
                )?,
                output: Packed::load(&l.pp("output").pp("dense"), h, config.intermediate_size)?,
                output_norm: Norm::load(&l.pp("output").pp("LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            words: flat(
                &e.pp("word_embeddings")
                    .get((config.vocab_size, h), "weight")?,
            )?,
            positions: flat(
                &e.pp("position_embeddings")
                    .get((config.max_position_embeddings, h), "weight")?,
            )?,
            numbering,
            relative,
            token_types: flat(
                &e.pp("token_type_embeddings")
                    .get((config.type_vocab_size, h), "weight")?,
            )?,
            embedding_norm: Norm::load(&e.pp("LayerNorm"), h, eps)?,
            layers,
        })
    }

    /// Hidden states of every token of every sequence, packed: row `offsets[s] + i` is token
    /// `i` of sequence `s`. Errors name an id outside the vocabulary or a sequence longer
    /// than the position table.
    pub(crate) fn forward(
        &self,
        sequences: &[(&[u32], &[u32])],
    ) -> Result<(Vec<f32>, Vec<usize>), String> {
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for (ids, _) in sequences {
            offsets.push(offsets[offsets.len() - 1] + ids.len());
        }
        let tokens = offsets[sequences.len()];
        let mut x = vec![0.0f32; tokens * h];
        let mut numbered = Vec::new();
        for (s, (ids, types)) in sequences.iter().enumerate() {
            numbered.clear();
            self.numbering.extend(ids, &mut numbered);
            for (i, (&id, &p)) in ids.iter().zip(&numbered).enumerate() {
                let row = &mut x[(offsets[s] + i) * h..(offsets[s] + i + 1) * h];
                let word = self
                    .words
                    .get(id as usize * h..(id as usize + 1) * h)
                    .ok_or_else(|| format!("token id {id} is outside the vocabulary"))?;
                let p = p as usize;
                let pos = self.positions.get(p * h..(p + 1) * h).ok_or_else(|| {
                    format!(
                        "sequence of {} tokens is over the position table",
                        ids.len()
                    )
                })?;
                let t = types.get(i).copied().unwrap_or(0) as usize;
                let ty = self
                    .token_types
                    .get(t * h..(t + 1) * h)
                    .ok_or_else(|| format!("token type {t} is outside the type table"))?;
                for j in 0..h {
                    row[j] = word[j] + pos[j] + ty[j];
                }
            }
        }
        self.embedding_norm.apply(&mut x);
        let mut scratch = Scratch::new(
            tokens,
            h,
            self.layers.first().map_or(0, |l| l.intermediate.outputs),
        );
        for layer in &self.layers {
            self.layer(layer, &mut x, &offsets, &mut scratch);
        }
        Ok((x, offsets))
    }

    fn layer(&self, layer: &Layer, x: &mut [f32], offsets: &[usize], s: &mut Scratch) {
        let h = self.hidden;
        let tokens = x.len() / h;
        layer.qkv.forward(x, tokens, None, &mut s.qkv);
        attention(
            &s.qkv,
            offsets,
            h,
            self.heads,
            self.relative.as_deref(),
            None,
            &mut s.context,
        );
        layer
            .attention_out
            .forward(&s.context, tokens, Some(x), &mut s.attended);
        layer.attention_norm.apply(&mut s.attended);
        layer
            .intermediate
            .forward(&s.attended, tokens, None, &mut s.inner);
        s.inner.par_chunks_mut(16 * 1024).for_each(gelu_slice);
        layer.output.forward(&s.inner, tokens, Some(&s.attended), x);
        layer.output_norm.apply(x);
    }
}

/// Buffers reused across layers.
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    inner: Vec<f32>,
}

impl Scratch {
    fn new(tokens: usize, hidden: usize, intermediate: usize) -> Self {
        Self {
            qkv: vec![0.0; tokens * 3 * hidden],
            context: vec![0.0; tokens * hidden],
            attended: vec![0.0; tokens * hidden],
            inner: vec![0.0; tokens * intermediate],
        }
    }
}

/// Multi-head self-attention of each sequence over itself (no mask: there is no padding).
/// `qkv` rows are `[q | k | v]` of `hidden` each; `context` gets the heads side by side.
/// `window`: each token attends only to tokens at most this far from it (ModernBERT's local
/// layers); `None`: to the whole sequence.
pub(crate) fn attention(
    qkv: &[f32],
    offsets: &[usize],
    hidden: usize,
    heads: usize,
    relative: Option<&RelativeBias>,
    window: Option<usize>,
    context: &mut [f32],
) {
    let width = 3 * hidden;
    let sequences: Vec<(usize, usize)> = offsets.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    // Each sequence writes only its own rows of `context`.
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(sequences.len());
    let mut rest = context;
    for &(_, len) in &sequences {
        let (mine, tail) = rest.split_at_mut(len * hidden);
        parts.push(mine);
        rest = tail;
    }
    parts
        .into_par_iter()
        .zip(sequences.par_iter())
        .for_each(|(out, &(start, len))| {
            let rows = &qkv[start * width..(start + len) * width];
            attend(rows, len, hidden, heads, relative, window, out);
        });
}

/// One sequence's attention, AVX2-compiled where the CPU has it (SSE2 has no vector rounding,
/// so the softmax's `exp` called `roundf` per score).
fn attend(
    rows: &[f32],
    len: usize,
    hidden: usize,
    heads: usize,
    relative: Option<&RelativeBias>,
    window: Option<usize>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            attend_avx2(rows, len, hidden, heads, relative, window, out);
        }
        return;
    }
    attend_body::<false>(rows, len, hidden, heads, relative, window, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(
    rows: &[f32],
    len: usize,
    hidden: usize,
    heads: usize,
    relative: Option<&RelativeBias>,
    window: Option<usize>,
    out: &mut [f32],
) {
    attend_body::<true>(rows, len, hidden, heads, relative, window, out);
}

#[inline(always)]
fn attend_body<const FMA: bool>(
    rows: &[f32],
    len: usize,
    hidden: usize,
    heads: usize,
    relative: Option<&RelativeBias>,
    window: Option<usize>,
    out: &mut [f32],
) {
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let width = 3 * hidden;
    let mut all_scores = vec![0.0f32; len];
    for head in 0..heads {
        let (qo, ko, vo) = (head * d, hidden + head * d, 2 * hidden + head * d);
        for i in 0..len {
            // The keys this token sees: `first..first + scores.len()`.
            let (first, last) = match window {
                Some(w) => (i.saturating_sub(w), (i + w + 1).min(len)),
                None => (0, len),
            };
            let scores = &mut all_scores[..last - first];
            let q = &rows[i * width + qo..i * width + qo + d];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in (first..).zip(scores.iter_mut()) {
                let k = &rows[j * width + ko..j * width + ko + d];
                *s = souk_lanes::dot(q, k) * scale;
                if let Some(relative) = relative {
                    *s += relative.value(head, i, j);
                }
                max = max.max(*s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = exp_nonpositive::<FMA>(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            let ctx = &mut out[i * hidden + head * d..i * hidden + head * d + d];
            ctx.fill(0.0);
            for (j, p) in (first..).zip(scores.iter()) {
                let v = &rows[j * width + vo..j * width + vo + d];
                let p = p * inv;
                ctx.iter_mut().zip(v).for_each(|(c, v)| *c += p * v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_linear_matches_a_plain_matrix_product() {
        // Shapes that exercise partial row tiles, a partial panel and two K blocks.
        let (rows, inputs, outputs) = (13, 300, 37);
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0)
            .collect();
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 10.0)
            .collect();
        let bias: Vec<f32> = (0..outputs).map(|o| o as f32 / 10.0).collect();
        let residual: Vec<f32> = (0..rows * outputs).map(|i| (i % 3) as f32).collect();
        let packed = Packed::new(&w, bias.clone(), outputs, inputs);
        let mut out = vec![0.0; rows * outputs];
        packed.forward(&x, rows, Some(&residual), &mut out);
        let mut portable = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                portable[r * outputs + o] = bias[o] + residual[r * outputs + o];
            }
        }
        gemm_rows_portable(&packed, &x, &mut portable);
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = bias[o]
                    + residual[r * outputs + o]
                    + (0..inputs)
                        .map(|i| x[r * inputs + i] * w[o * inputs + i])
                        .sum::<f32>();
                let got = out[r * outputs + o];
                assert!(
                    (got - want).abs() < 1e-3 * want.abs().max(1.0),
                    "({r},{o}): {got} vs {want}"
                );
                assert!((portable[r * outputs + o] - want).abs() < 1e-3 * want.abs().max(1.0));
            }
        }
    }
}
