//! The fused engine, the default on GPUs: BERT's forward pass as cuBLAS matrix multiplies
//! (candle's `matmul`) and kernels of our own (`kernels/fused.cu`), every one reading and
//! writing contiguous rows:
//!
//! - `bias_split_heads`: the QKV projection's bias, and q/k/v laid out per head in one pass;
//! - `masked_softmax`: softmax over each sequence's real keys, from its length (no mask tensor);
//! - `merge_heads`: the attention context back to one row per token;
//! - `bias_residual_norm`: an output projection's bias, the residual and the layer norm at once;
//! - `bias_gelu`: the intermediate projection's bias and exact GELU at once;
//! - `attention` (`--engine flash`): the three attention steps above and both batched GEMMs in
//!   one tensor-core kernel, so no scores tensor and no head split/merge copies exist; this
//!   engine also runs on packed rows (no padding), pooled by `segment_pool`.
//!
//! Why: on an H100 candle's stock graph (`layers.rs`, `--engine graph`) ran 13x slower than
//! PyTorch at 512x128 tokens in f16, barely faster than in f32, with time linear in tokens and
//! growing with sequence length: about 90 ms per pass of work that is neither the matrix
//! multiplies nor dtype-bound memory traffic. The suspects are candle's generic strided kernels,
//! which this engine does not use: a broadcast add for every bias and for the mask, and strided
//! copies around the head reshapes, each indexing every element through a division and a
//! modulo per dimension with the dims and strides read from memory. Unmeasured until a GPU
//! run (`scripts/gpu/run-gpu-check.sh` compares the engines and prints per-op times).
//! Also folded at load: 1/sqrt(head size) into the query weights (no scaling pass).
//!
//! Every op has a CPU (f32) implementation, so the whole graph runs on CPU and
//! `tests/paths.rs` holds it to the packed engine's vectors in CI, where no GPU exists; and the
//! CUDA kernels themselves run on the host (`kernels/host_emulation.h`) against those CPU
//! references (`kernels_on_the_host` below).
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor,
};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use souk_encoder_core::{Batch, Pooling, Positions};

/// One transformer layer's weights, arranged for the fused kernels.
struct FusedLayer {
    /// (3 * hidden, hidden): query rows pre-scaled by 1/sqrt(head size), then key, value.
    qkv: Tensor,
    /// (3 * hidden), the query part scaled like its weights.
    qkv_bias: Tensor,
    attention_out: Tensor,
    /// (3, hidden): the attention output's bias, the layer norm's gamma and beta.
    attention_norm: Tensor,
    intermediate: Tensor,
    intermediate_bias: Tensor,
    output: Tensor,
    /// (3, hidden): the output projection's bias, gamma, beta.
    output_norm: Tensor,
}

/// BERT for the fused kernels: weights on the device in the serving dtype.
pub(crate) struct FusedBert {
    words: Tensor,
    positions: Tensor,
    token_types: Tensor,
    /// (3, hidden): zero bias, gamma, beta of the embeddings' layer norm.
    embedding_norm: Tensor,
    layers: Vec<FusedLayer>,
    hidden: usize,
    heads: usize,
    head: usize,
    intermediate: usize,
    eps: f32,
    max_positions: usize,
    /// How the model numbers positions (BERT from 0, RoBERTa after its padding id).
    numbering: Positions,
    /// Attention in one kernel (`attention` in fused.cu: no scores tensor) instead of two
    /// batched GEMMs around `masked_softmax` (`--engine flash`).
    one_pass: bool,
}

/// Stacks a bias, a layer norm's weight and its bias into the (3, hidden) parameter block
/// `bias_residual_norm` takes.
fn norm_params(bias: &Tensor, norm: &VarBuilder) -> candle_core::Result<Tensor> {
    let h = bias.dim(0)?;
    Tensor::stack(&[bias, &norm.get(h, "weight")?, &norm.get(h, "bias")?], 0)
}

impl FusedBert {
    /// `vb`: the model's root (`embeddings.*`, `encoder.layer.N.*`), in the serving dtype.
    /// `one_pass`: attention in one kernel (GPU: f16/bf16 and head size 32 or 64 only; on CPU
    /// its f32 reference runs).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &Config,
        numbering: Positions,
        one_pass: bool,
    ) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) {
            candle_core::bail!("hidden size {h} does not split into {heads} heads");
        }
        let head = h / heads;
        if one_pass
            && !vb.device().is_cpu()
            && (vb.dtype() == DType::F32 || !ONE_PASS_HEADS.contains(&head))
        {
            candle_core::bail!(
                "one-pass attention needs f16 or bf16 and a head size of 32 or 64 (got {:?}, {head})",
                vb.dtype()
            );
        }
        let inter = config.intermediate_size;
        let scale = 1.0 / (head as f64).sqrt();
        let emb = vb.pp("embeddings");
        let zeros = Tensor::zeros(h, vb.dtype(), vb.device())?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let lv = vb.pp(format!("encoder.layer.{i}"));
            let own = lv.pp("attention").pp("self");
            // Scale in f32, then round once to the serving dtype.
            let scaled = |t: Tensor| -> candle_core::Result<Tensor> {
                (t.to_dtype(DType::F32)? * scale)?.to_dtype(t.dtype())
            };
            let qkv = Tensor::cat(
                &[
                    scaled(own.pp("query").get((h, h), "weight")?)?,
                    own.pp("key").get((h, h), "weight")?,
                    own.pp("value").get((h, h), "weight")?,
                ],
                0,
            )?;
            let qkv_bias = Tensor::cat(
                &[
                    scaled(own.pp("query").get(h, "bias")?)?,
                    own.pp("key").get(h, "bias")?,
                    own.pp("value").get(h, "bias")?,
                ],
                0,
            )?;
            let out = lv.pp("attention").pp("output");
            let output = lv.pp("output");
            layers.push(FusedLayer {
                qkv,
                qkv_bias,
                attention_out: out.pp("dense").get((h, h), "weight")?,
                attention_norm: norm_params(
                    &out.pp("dense").get(h, "bias")?,
                    &out.pp("LayerNorm"),
                )?,
                intermediate: lv
                    .pp("intermediate")
                    .pp("dense")
                    .get((inter, h), "weight")?,
                intermediate_bias: lv.pp("intermediate").pp("dense").get(inter, "bias")?,
                output: output.pp("dense").get((h, inter), "weight")?,
                output_norm: norm_params(
                    &output.pp("dense").get(h, "bias")?,
                    &output.pp("LayerNorm"),
                )?,
            });
        }
        Ok(Self {
            words: emb
                .pp("word_embeddings")
                .get((config.vocab_size, h), "weight")?,
            positions: emb
                .pp("position_embeddings")
                .get((config.max_position_embeddings, h), "weight")?,
            token_types: emb
                .pp("token_type_embeddings")
                .get((config.type_vocab_size, h), "weight")?,
            embedding_norm: norm_params(&zeros, &emb.pp("LayerNorm"))?,
            layers,
            hidden: h,
            heads,
            head,
            intermediate: inter,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
            numbering,
            one_pass,
        })
    }

    pub(crate) fn one_pass(&self) -> bool {
        self.one_pass
    }

    /// Pooled vectors (f32) of `batch`, one per sequence.
    pub(crate) fn embed(
        &self,
        batch: &Batch,
        pooling: Pooling,
        device: &Device,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        self.embed_with(batch, pooling, device, &mut |_| Ok(()))
    }

    /// [`Self::embed`] calling `step(name)` after each operation (a device synchronise and a
    /// clock read when profiling).
    pub(crate) fn embed_with(
        &self,
        batch: &Batch,
        pooling: Pooling,
        device: &Device,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = batch.sequences.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let width = batch.max_len().max(1);
        // The longest sequence's positions reach `reserved + width - 1` at most; on a GPU an
        // index past the table would read out of bounds, not fail.
        if width + self.numbering.reserved() > self.max_positions {
            candle_core::bail!(
                "sequence of {width} tokens is over the model's {} positions",
                self.max_positions - self.numbering.reserved().min(self.max_positions)
            );
        }
        if self.one_pass {
            return self.embed_rows(batch, pooling, device, width, step);
        }
        let rows = n * width;
        // The kernels index with 32-bit integers: refuse what would not fit.
        let largest = [
            rows * 3 * self.hidden,
            rows * self.intermediate,
            n * self.heads * width * width,
        ];
        if largest.iter().any(|&e| e > i32::MAX as usize) {
            candle_core::bail!("batch of {n} x {width} tokens is too large for one pass");
        }
        let mut ids = vec![0u32; rows];
        let mut types = vec![0u32; rows];
        // Padding rows take the first real token's row: any row in the table does, they are
        // masked.
        let mut positions = vec![self.numbering.reserved() as u32; rows];
        let mut numbered = Vec::with_capacity(width);
        let mut lengths = Vec::with_capacity(n);
        for (s, seq) in batch.sequences.iter().enumerate() {
            let base = s * width;
            let len = seq.ids.len();
            ids[base..base + len].copy_from_slice(&seq.ids);
            numbered.clear();
            self.numbering.extend(&seq.ids, &mut numbered);
            positions[base..base + len].copy_from_slice(&numbered);
            let typed = seq.type_ids.len().min(len);
            types[base..base + typed].copy_from_slice(&seq.type_ids[..typed]);
            lengths.push(len as u32);
        }
        let ids = Tensor::from_vec(ids, rows, device)?;
        let types = Tensor::from_vec(types, rows, device)?;
        let positions = Tensor::from_vec(positions, rows, device)?;
        let lengths = Tensor::from_vec(lengths, n, device)?;
        let x = self.embeddings(&ids, &types, &positions)?;
        step("embeddings + layer norm")?;
        let shape = Attention {
            width,
            heads: self.heads,
            head: self.head,
        };
        let mut x = x;
        for layer in &self.layers {
            x = self.layer(layer, &x, &lengths, shape, step)?;
        }
        // The padded batch pools as the graph engine's does.
        let out = crate::pool_padded(pooling, batch, &x.reshape((n, width, self.hidden))?)?;
        step("pooling + copy to host")?;
        Ok(out)
    }

    /// BERT's input layer for rows of token ids, token types and positions (padded or packed
    /// alike): the three embeddings summed, then layer norm.
    fn embeddings(
        &self,
        ids: &Tensor,
        types: &Tensor,
        positions: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x = (self.words.index_select(ids, 0)? + self.token_types.index_select(types, 0)?)?;
        x.apply_op3_no_bwd(
            &self.positions.index_select(positions, 0)?,
            &self.embedding_norm,
            &BiasResidualNorm { eps: self.eps },
        )
    }

    /// One layer on the padded batch: attention by two batched GEMMs around our kernels.
    fn layer(
        &self,
        layer: &FusedLayer,
        x: &Tensor,
        lengths: &Tensor,
        shape: Attention,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let qkv = x.matmul(&layer.qkv.t()?)?;
        step("qkv matmul")?;
        let split = qkv.apply_op2_no_bwd(&layer.qkv_bias, &BiasSplitHeads(shape))?;
        step("bias + split heads")?;
        let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        step("q k^T matmul")?;
        let probs = scores.apply_op2_no_bwd(
            lengths,
            &MaskedSoftmax {
                rows_per_seq: shape.heads * shape.width,
            },
        )?;
        step("masked softmax")?;
        let context = probs.matmul(&v)?;
        step("probs v matmul")?;
        let context = context.apply_op1_no_bwd(&MergeHeads(shape))?;
        step("merge heads")?;
        self.feed_forward(layer, x, &context, step)
    }

    /// The rest of a layer after attention, row by row (padded or packed rows alike).
    fn feed_forward(
        &self,
        layer: &FusedLayer,
        x: &Tensor,
        context: &Tensor,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let projected = context.matmul(&layer.attention_out.t()?)?;
        step("attention out matmul")?;
        let attended = projected.apply_op3_no_bwd(
            x,
            &layer.attention_norm,
            &BiasResidualNorm { eps: self.eps },
        )?;
        step("bias + residual + layer norm (attention)")?;
        let inner = attended.matmul(&layer.intermediate.t()?)?;
        step("intermediate matmul")?;
        let inner = inner.apply_op2_no_bwd(&layer.intermediate_bias, &BiasGelu)?;
        step("bias + gelu")?;
        let out = inner.matmul(&layer.output.t()?)?;
        step("output matmul")?;
        let out = out.apply_op3_no_bwd(
            &attended,
            &layer.output_norm,
            &BiasResidualNorm { eps: self.eps },
        )?;
        step("bias + residual + layer norm (output)")?;
        Ok(out)
    }

    /// The one-pass engine: the batch's real tokens packed into rows (no padding anywhere, as
    /// the packed CPU engine and TEI's varlen attention do), attention by the one-pass kernel
    /// over each sequence's rows, pooling by `segment_pool` (mean and CLS; the other modes on
    /// the host).
    fn embed_rows(
        &self,
        batch: &Batch,
        pooling: Pooling,
        device: &Device,
        longest: usize,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = batch.sequences.len();
        let total: usize = batch.sequences.iter().map(|s| s.ids.len()).sum();
        if total == 0 {
            return Ok(vec![vec![0.0; self.hidden]; n]);
        }
        if [total * 3 * self.hidden, total * self.intermediate]
            .iter()
            .any(|&e| e > i32::MAX as usize)
        {
            candle_core::bail!("batch of {total} tokens is too large for one pass");
        }
        let mut ids = Vec::with_capacity(total);
        let mut types = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        for seq in &batch.sequences {
            let len = seq.ids.len();
            ids.extend_from_slice(&seq.ids);
            types.extend((0..len).map(|i| seq.type_ids.get(i).copied().unwrap_or(0)));
            self.numbering.extend(&seq.ids, &mut positions);
            offsets.push(ids.len() as u32);
        }
        let ids = Tensor::from_vec(ids, total, device)?;
        let types = Tensor::from_vec(types, total, device)?;
        let positions = Tensor::from_vec(positions, total, device)?;
        // Each sequence's first row, for the modes pooled on the host.
        let starts: Vec<usize> = offsets.iter().map(|&o| o as usize).collect();
        let offsets = Tensor::from_vec(offsets, n + 1, device)?;
        let mut x = self.embeddings(&ids, &types, &positions)?;
        step("embeddings + layer norm")?;
        let attention = OnePassAttention {
            heads: self.heads,
            head: self.head,
            longest,
        };
        for layer in &self.layers {
            let qkv = x.matmul(&layer.qkv.t()?)?;
            step("qkv matmul")?;
            let context = qkv.apply_op3_no_bwd(&layer.qkv_bias, &offsets, &attention)?;
            step("attention (one pass)")?;
            x = self.feed_forward(layer, &x, &context, step)?;
        }
        let out = match pooling {
            // The kernel's two modes pool on the device; the others copy the rows to the
            // host (rare modes, not worth kernels no GPU here could check).
            Pooling::Mean | Pooling::Cls => x
                .apply_op2_no_bwd(
                    &offsets,
                    &SegmentPool {
                        cls: pooling == Pooling::Cls,
                    },
                )?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?,
            _ => host_pool(pooling, &x, |s| (starts[s], starts[s + 1]), n)?,
        };
        step("pooling + copy to host")?;
        Ok(out)
    }
}

/// Pools `n` sequences of `rows` (tokens x hidden) on the host, sequence `s` being rows
/// `span(s)`: the pooling modes the device kernels do not compute.
fn host_pool(
    pooling: Pooling,
    rows: &Tensor,
    span: impl Fn(usize) -> (usize, usize),
    n: usize,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let hidden = rows.dim(1)?;
    let states = rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    (0..n)
        .map(|s| {
            let (start, end) = span(s);
            let taken = states.get(start * hidden..end * hidden).ok_or_else(|| {
                candle_core::Error::Msg(format!("sequence {s}: rows {start}..{end} out of range"))
            })?;
            let mut pooled = vec![0f32; hidden];
            pooling.pool(taken, hidden, &mut pooled);
            Ok(pooled)
        })
        .collect()
}

/// The padded batch's attention geometry.
#[derive(Clone, Copy)]
struct Attention {
    width: usize,
    heads: usize,
    head: usize,
}

impl Attention {
    fn hidden(self) -> usize {
        self.heads * self.head
    }
}

/// Launch shape of the column kernels, ((grid x, grid y), (block x, block y)): one thread per
/// column, rows walked by the grid's y dimension, at most 1,024 rows at once (so a thread has
/// several rows to walk instead of the grid holding hundreds of thousands of one-row blocks).
/// The CUDA path and the host test share it.
#[cfg_attr(not(any(feature = "cuda", test)), allow(dead_code))]
fn column_launch(cols: usize, rows: usize) -> ([u32; 2], [u32; 2]) {
    (
        [cols.div_ceil(128) as u32, rows.clamp(1, 1_024) as u32],
        [128, 1],
    )
}

/// Launch shape of the row kernels: one warp per row, eight rows per block.
#[cfg_attr(not(any(feature = "cuda", test)), allow(dead_code))]
fn warp_launch(rows: usize) -> ([u32; 2], [u32; 2]) {
    ([rows.div_ceil(8).max(1) as u32, 1], [32, 8])
}

/// A contiguous f32 slice of a CPU tensor (the CPU references take f32 only).
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("the fused engine's CPU reference takes f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("the fused engine's ops take contiguous tensors");
    };
    Ok(&values[start..end])
}

/// A contiguous u32 slice of a CPU tensor (sequence lengths or row offsets).
fn cpu_u32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [u32]> {
    let (CpuStorage::U32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("lengths and offsets must be contiguous u32");
    };
    Ok(&values[start..end])
}

/// Rows of a 2-d (or flattened) tensor whose last dimension is `cols`.
fn rows_of(layout: &Layout, cols: usize) -> candle_core::Result<usize> {
    let n = layout.shape().elem_count();
    if cols == 0 || !n.is_multiple_of(cols) || layout.dims().last() != Some(&cols) {
        candle_core::bail!("expected rows of {cols}, got {:?}", layout.dims());
    }
    Ok(n / cols)
}

/// (rows, cols) of a tensor read as rows of its last dimension.
fn rows_and_cols(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    let cols = layout.dims().last().copied().unwrap_or(0);
    Ok((rows_of(layout, cols)?, cols))
}

// Each op checks its input shapes once, from the layouts, for its CPU reference and its CUDA
// launch alike; what only one side can check (offsets' values on the CPU, kernel variants on
// the GPU) stays on that side.

/// (rows, 3 * hidden) + bias -> (3, batch * heads, width, head).
struct BiasSplitHeads(Attention);

impl BiasSplitHeads {
    /// Rows of the QKV input.
    fn rows(&self, qkv: &Layout, bias: &Layout) -> candle_core::Result<usize> {
        let a = self.0;
        let cols = 3 * a.hidden();
        let rows = rows_of(qkv, cols)?;
        if bias.shape().elem_count() != cols || !rows.is_multiple_of(a.width) {
            candle_core::bail!(
                "bias-split-heads: bad shapes {:?} {:?}",
                qkv.dims(),
                bias.dims()
            );
        }
        Ok(rows)
    }

    fn out_shape(&self, rows: usize) -> Shape {
        let a = self.0;
        Shape::from((3, rows / a.width * a.heads, a.width, a.head))
    }
}

impl CustomOp2 for BiasSplitHeads {
    fn name(&self) -> &'static str {
        "souk-bias-split-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = self.0;
        let hidden = a.hidden();
        let cols = 3 * hidden;
        let rows = self.rows(l1, l2)?;
        let (qkv, bias) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        let batch = rows / a.width;
        let mut out = vec![0f32; rows * cols];
        for r in 0..rows {
            let (seq, pos) = (r / a.width, r % a.width);
            for c in 0..cols {
                let (part, inner) = (c / hidden, c % hidden);
                let (h, d) = (inner / a.head, inner % a.head);
                let o = (((part * batch + seq) * a.heads + h) * a.width + pos) * a.head + d;
                out[o] = qkv[r * cols + c] + bias[c];
            }
        }
        Ok((CpuStorage::F32(out), self.out_shape(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let a = self.0;
        let cols = 3 * a.hidden();
        let rows = self.rows(l1, l2)?;
        let out = cuda::launch(
            "bias_split_heads",
            &[cuda::In::Data(s1, l1), cuda::In::Data(s2, l2)],
            rows * cols,
            column_launch(cols, rows),
            &[rows, a.width, a.heads, a.head],
            None,
        )?;
        Ok((out, self.out_shape(rows)))
    }
}

/// Softmax over each score row's real keys (the sequence's length), 0 for padding keys.
struct MaskedSoftmax {
    /// Score rows per sequence: heads * width.
    rows_per_seq: usize,
}

impl MaskedSoftmax {
    /// (rows, cols) of the scores.
    fn shape(&self, scores: &Layout, lengths: &Layout) -> candle_core::Result<(usize, usize)> {
        let (rows, cols) = rows_and_cols(scores)?;
        let sequences = lengths.shape().elem_count();
        if sequences * self.rows_per_seq != rows {
            candle_core::bail!("masked-softmax: {rows} rows for {sequences} lengths");
        }
        Ok((rows, cols))
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "souk-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = self.shape(l1, l2)?;
        let scores = cpu_f32(s1, l1)?;
        let lengths = cpu_u32(s2, l2)?;
        let mut out = vec![0f32; rows * cols];
        for (r, (row, dst)) in scores
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .enumerate()
        {
            let len = (lengths[r / self.rows_per_seq] as usize).min(cols);
            let max = row[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row[..len].iter().map(|v| (v - max).exp()).sum();
            let inv = if len > 0 { 1.0 / sum } else { 0.0 };
            for (d, v) in dst[..len].iter_mut().zip(&row[..len]) {
                *d = (v - max).exp() * inv;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, cols) = self.shape(l1, l2)?;
        let out = cuda::launch(
            "masked_softmax",
            &[cuda::In::Data(s1, l1), cuda::In::Index(s2, l2)],
            rows * cols,
            warp_launch(rows),
            &[rows, cols, self.rows_per_seq],
            None,
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// (batch * heads, width, head) -> (rows, hidden).
struct MergeHeads(Attention);

impl MergeHeads {
    /// Rows of the merged output.
    fn rows(&self, ctx: &Layout) -> candle_core::Result<usize> {
        let a = self.0;
        let n = ctx.shape().elem_count();
        if !n.is_multiple_of(a.hidden() * a.width) || ctx.dims().last() != Some(&a.head) {
            candle_core::bail!("merge-heads: bad shape {:?}", ctx.dims());
        }
        Ok(n / a.hidden())
    }
}

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "souk-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = self.0;
        let hidden = a.hidden();
        let rows = self.rows(l)?;
        let ctx = cpu_f32(s, l)?;
        let mut out = vec![0f32; rows * hidden];
        for r in 0..rows {
            let (seq, pos) = (r / a.width, r % a.width);
            for c in 0..hidden {
                let (h, d) = (c / a.head, c % a.head);
                out[r * hidden + c] = ctx[((seq * a.heads + h) * a.width + pos) * a.head + d];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let a = self.0;
        let hidden = a.hidden();
        let rows = self.rows(l)?;
        let out = cuda::launch(
            "merge_heads",
            &[cuda::In::Data(s, l)],
            rows * hidden,
            column_launch(hidden, rows),
            &[rows, a.width, a.heads, a.head],
            None,
        )?;
        Ok((out, Shape::from((rows, hidden))))
    }
}

/// Head sizes the one-pass attention kernel is instantiated for.
const ONE_PASS_HEADS: [usize; 2] = [32, 64];

/// Attention straight from the QKV projection, on packed rows: (tokens, 3 * hidden) + bias,
/// offsets (sequences + 1) -> context (tokens, hidden). The CPU reference is written out
/// plainly (not composed from the other ops), so the test of the kernel checks it against an
/// independent computation.
struct OnePassAttention {
    heads: usize,
    head: usize,
    /// The longest sequence: how many 64-query tiles each sequence and head gets.
    longest: usize,
}

impl OnePassAttention {
    fn hidden(&self) -> usize {
        self.heads * self.head
    }

    fn tiles(&self) -> usize {
        self.longest.div_ceil(64).max(1)
    }

    /// Packed rows of the QKV input.
    fn rows(&self, qkv: &Layout, bias: &Layout) -> candle_core::Result<usize> {
        let cols = 3 * self.hidden();
        let rows = rows_of(qkv, cols)?;
        if bias.shape().elem_count() != cols {
            candle_core::bail!("one-pass attention: bias {:?} for {cols}", bias.dims());
        }
        Ok(rows)
    }

    /// Launch shape: four warps per 64 queries of one sequence and head (`ATT_WARPS` in
    /// fused.cu), neighbouring blocks for the same sequence and head (they share its keys and
    /// values through L2).
    #[cfg_attr(not(any(feature = "cuda", test)), allow(dead_code))]
    fn launch(&self, sequences: usize) -> ([u32; 2], [u32; 2]) {
        (
            [(sequences * self.heads * self.tiles()) as u32, 1],
            [128, 1],
        )
    }
}

/// Checks that `offsets` split `rows` packed rows into sequences of at most `longest`: starts
/// at 0, never decreases, ends at `rows`.
fn check_offsets(offsets: &[u32], rows: usize, longest: usize) -> candle_core::Result<()> {
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    let fits = offsets.last().is_some_and(|&end| end as usize == rows);
    let short = offsets
        .windows(2)
        .all(|w| w[1].saturating_sub(w[0]) as usize <= longest);
    if offsets.first() != Some(&0) || !ordered || !fits || !short {
        candle_core::bail!("{} offsets do not split {rows} rows", offsets.len());
    }
    Ok(())
}

impl CustomOp3 for OnePassAttention {
    fn name(&self) -> &'static str {
        "souk-one-pass-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (hidden, d) = (self.hidden(), self.head);
        let cols = 3 * hidden;
        let rows = self.rows(l1, l2)?;
        let (qkv, bias) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        let offsets = cpu_u32(s3, l3)?;
        check_offsets(offsets, rows, self.longest)?;
        let mut out = vec![0f32; rows * hidden];
        let mut scores = vec![0f32; self.longest];
        for w in offsets.windows(2) {
            let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
            let at = |row: usize, part: usize, h: usize, i: usize| {
                qkv[(start + row) * cols + part * hidden + h * d + i]
                    + bias[part * hidden + h * d + i]
            };
            for h in 0..self.heads {
                for q in 0..len {
                    for (j, s) in scores.iter_mut().enumerate().take(len) {
                        *s = (0..d).map(|i| at(q, 0, h, i) * at(j, 1, h, i)).sum();
                    }
                    let max = scores[..len]
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = scores[..len].iter().map(|s| (s - max).exp()).sum();
                    let dst = &mut out[(start + q) * hidden + h * d..][..d];
                    for (j, s) in scores[..len].iter().enumerate() {
                        let p = (s - max).exp() / sum;
                        for (i, o) in dst.iter_mut().enumerate() {
                            *o += p * at(j, 2, h, i);
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let rows = self.rows(l1, l2)?;
        let sequences = l3.shape().elem_count().saturating_sub(1);
        if sequences == 0 {
            candle_core::bail!(
                "one-pass attention: offsets {:?} hold no sequence",
                l3.dims()
            );
        }
        if !ONE_PASS_HEADS.contains(&self.head) {
            candle_core::bail!("one-pass attention: no kernel for head size {}", self.head);
        }
        if candle_core::backend::BackendStorage::dtype(s1) == DType::F32 {
            candle_core::bail!("one-pass attention takes f16 or bf16");
        }
        let out = cuda::launch(
            &format!("attention_d{}", self.head),
            &[
                cuda::In::Data(s1, l1),
                cuda::In::Data(s2, l2),
                cuda::In::Index(s3, l3),
            ],
            rows * self.hidden(),
            self.launch(sequences),
            &[self.tiles(), self.heads],
            None,
        )?;
        Ok((out, Shape::from((rows, self.hidden()))))
    }
}

/// Mean (or first row, for CLS pooling) of each sequence's packed rows: x (tokens, hidden),
/// offsets (sequences + 1) -> (sequences, hidden).
struct SegmentPool {
    cls: bool,
}

impl CustomOp2 for SegmentPool {
    fn name(&self) -> &'static str {
        "souk-segment-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = rows_and_cols(l1)?;
        let x = cpu_f32(s1, l1)?;
        let offsets = cpu_u32(s2, l2)?;
        check_offsets(offsets, rows, rows)?;
        let mut out = vec![0f32; offsets.len().saturating_sub(1) * cols];
        for (w, dst) in offsets.windows(2).zip(out.chunks_exact_mut(cols.max(1))) {
            let (start, end) = (w[0] as usize, w[1] as usize);
            if end == start {
                continue;
            }
            let taken = if self.cls { start + 1 } else { end };
            for row in x[start * cols..taken * cols].chunks_exact(cols) {
                dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            let n = (taken - start) as f32;
            dst.iter_mut().for_each(|d| *d /= n);
        }
        let sequences = offsets.len().saturating_sub(1);
        Ok((CpuStorage::F32(out), Shape::from((sequences, cols))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (_, cols) = rows_and_cols(l1)?;
        let sequences = l2.shape().elem_count().saturating_sub(1);
        let out = cuda::launch(
            "segment_pool",
            &[cuda::In::Data(s1, l1), cuda::In::Index(s2, l2)],
            sequences * cols,
            column_launch(cols, sequences),
            &[sequences, cols, usize::from(self.cls)],
            None,
        )?;
        Ok((out, Shape::from((sequences, cols))))
    }
}

/// gelu(x + bias), exact (erf) GELU.
struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "souk-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, bias) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?);
        rows_of(l1, bias.len())?;
        let mut out: Vec<f32> = x
            .chunks_exact(bias.len())
            .flat_map(|row| row.iter().zip(bias).map(|(v, b)| v + b))
            .collect();
        crate::layers::gelu_slice(&mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let cols = l2.shape().elem_count();
        let rows = rows_of(l1, cols)?;
        let out = cuda::launch(
            "bias_gelu",
            &[cuda::In::Data(s1, l1), cuda::In::Data(s2, l2)],
            rows * cols,
            column_launch(cols, rows),
            &[rows, cols],
            None,
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// layer_norm(x + bias + residual) * gamma + beta; the third input is (3, cols): bias, gamma,
/// beta.
struct BiasResidualNorm {
    eps: f32,
}

impl BiasResidualNorm {
    /// (rows, cols) of x; `params` holds bias, gamma and beta of `cols` each.
    fn shape(
        &self,
        x: &Layout,
        residual: &Layout,
        params: &Layout,
    ) -> candle_core::Result<(usize, usize)> {
        let cols = params.shape().elem_count() / 3;
        let rows = rows_of(x, cols)?;
        if residual.shape().elem_count() != rows * cols || params.shape().elem_count() != 3 * cols {
            candle_core::bail!(
                "bias-residual-norm: bad shapes {:?} {:?}",
                residual.dims(),
                params.dims()
            );
        }
        Ok((rows, cols))
    }
}

impl CustomOp3 for BiasResidualNorm {
    fn name(&self) -> &'static str {
        "souk-bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, cols) = self.shape(l1, l2, l3)?;
        let (x, residual, params) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (bias, rest) = params.split_at(cols);
        let (gamma, beta) = rest.split_at(cols);
        let mut out = vec![0f32; x.len()];
        let mut row = vec![0f32; cols];
        for ((a, res), dst) in x
            .chunks_exact(cols)
            .zip(residual.chunks_exact(cols))
            .zip(out.chunks_exact_mut(cols))
        {
            for (((v, a), b), r) in row.iter_mut().zip(a).zip(bias).zip(res) {
                *v = a + b + r;
            }
            let mean = row.iter().sum::<f32>() / cols as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((d, v), g), b) in dst.iter_mut().zip(&row).zip(gamma).zip(beta) {
                *d = (v - mean) * inv * g + b;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (rows, cols) = self.shape(l1, l2, l3)?;
        let out = cuda::launch(
            "bias_residual_norm",
            &[
                cuda::In::Data(s1, l1),
                cuda::In::Data(s2, l2),
                cuda::In::Data(s3, l3),
            ],
            rows * cols,
            warp_launch(rows),
            &[rows, cols],
            Some(self.eps),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// Launching `kernels/fused.cu` (compiled to PTX by build.rs). Every kernel takes its inputs,
/// then its (fresh) output, then i32 sizes and, for layer norm, an f32 epsilon: one launcher
/// serves them all.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout, Result, WithDType};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const MODULE: &str = "souk_fused";

    /// One input of a kernel: a tensor in the element type, or u32 lengths/offsets.
    pub(super) enum In<'a> {
        Data(&'a CudaStorage, &'a Layout),
        Index(&'a CudaStorage, &'a Layout),
    }

    /// The element types the kernels are instantiated for.
    trait Elem: CudaDType + DeviceRepr + WithDType {}
    impl Elem for f32 {}
    impl Elem for half::f16 {}
    impl Elem for half::bf16 {}

    enum View<'a, T> {
        Data(CudaView<'a, T>),
        Index(CudaView<'a, u32>),
    }

    fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the fused kernels take contiguous tensors");
        };
        Ok(s.as_cuda_slice::<T>()?.slice(start..end))
    }

    /// Runs `name` (suffixed with the element type of the first input) on `inputs`, writing a
    /// fresh output of `len` elements; `ints` are the kernel's sizes (checked against i32::MAX
    /// before the pass, in FusedBert), `eps` its trailing f32 if it has one.
    pub(super) fn launch(
        name: &str,
        inputs: &[In],
        len: usize,
        ([gx, gy], [bx, by]): ([u32; 2], [u32; 2]),
        ints: &[usize],
        eps: Option<f32>,
    ) -> Result<CudaStorage> {
        fn run<T: Elem>(
            name: &str,
            suffix: &str,
            inputs: &[In],
            len: usize,
            cfg: LaunchConfig,
            ints: &[i32],
            eps: Option<f32>,
        ) -> Result<CudaStorage> {
            let Some(In::Data(first, _)) = inputs.first() else {
                candle_core::bail!("{name}: the first input must be a tensor");
            };
            let dev = first.device().clone();
            let views = inputs
                .iter()
                .map(|input| match input {
                    In::Data(s, l) => view::<T>(s, l).map(View::Data),
                    In::Index(s, l) => view::<u32>(s, l).map(View::Index),
                })
                .collect::<Result<Vec<_>>>()?;
            // SAFETY: every kernel writes all `len` elements of its output before anything
            // reads them.
            let out = unsafe { dev.alloc::<T>(len)? };
            let f = dev.get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?;
            let mut b = f.builder();
            for v in &views {
                match v {
                    View::Data(v) => b.arg(v),
                    View::Index(v) => b.arg(v),
                };
            }
            b.arg(&out);
            for i in ints {
                b.arg(i);
            }
            if let Some(eps) = &eps {
                b.arg(eps);
            }
            // SAFETY: the arguments follow the kernel's signature (inputs, output, sizes,
            // epsilon), and the launch shape is the one the host test runs the kernel at.
            unsafe { b.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev))
        }
        let Some(In::Data(first, _)) = inputs.first() else {
            candle_core::bail!("{name}: the first input must be a tensor");
        };
        let cfg = LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (bx, by, 1),
            shared_mem_bytes: 0,
        };
        let ints: Vec<i32> = ints
            .iter()
            .map(|&n| i32::try_from(n).unwrap_or(i32::MAX))
            .collect();
        match first.dtype() {
            DType::F32 => run::<f32>(name, "f32", inputs, len, cfg, &ints, eps),
            DType::F16 => run::<half::f16>(name, "f16", inputs, len, cfg, &ints, eps),
            DType::BF16 => run::<half::bf16>(name, "bf16", inputs, len, cfg, &ints, eps),
            other => candle_core::bail!("the fused kernels take f32, f16 or bf16, not {other:?}"),
        }
    }
}

/// The CUDA kernels themselves, run on the host (`kernels/host_emulation.h`: every warp as 32
/// threads in lock step) at the launch shapes the CUDA path uses, against the CPU references
/// above, which `tests/paths.rs` holds to the packed engine. This is what CI can check of
/// `fused.cu` without a GPU: the index arithmetic, the row walks, the warp reductions and the
/// masking, in f32, f16 and bf16.
#[cfg(test)]
mod kernels_on_the_host {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    /// The harness binary, or `None` (test skipped) where no C++20 compiler is installed.
    fn harness() -> Option<&'static PathBuf> {
        static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
        BIN.get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
            // Next to the test binary (target/<profile>/deps), not in /tmp: one file that each
            // run replaces instead of one more per run. Built under a per-process name and
            // renamed into place, so two test runs at once never execute a half-written file.
            let deps = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(PathBuf::from))
                .unwrap_or_else(std::env::temp_dir);
            let out = deps.join("souk-fused-host");
            let building = deps.join(format!("souk-fused-host.{}", std::process::id()));
            let status = Command::new("c++")
                .args(["-std=c++20", "-O1", "-pthread"])
                .arg(dir.join("host_harness.cpp"))
                .arg("-o")
                .arg(&building)
                .status();
            match status {
                Ok(s) if s.success() => {
                    std::fs::rename(&building, &out).expect("harness binary moves into place");
                    Some(out)
                }
                Ok(s) => panic!("kernels/host_harness.cpp does not compile: {s}"),
                Err(e) => {
                    eprintln!("skipped: no C++ compiler to run the kernels on the host ({e})");
                    None
                }
            }
        })
        .as_ref()
    }

    /// One kernel call on the host: the kernel's name, its i32 sizes, its eps and its inputs,
    /// in the order `cuda::launch` passes them.
    struct HostRun<'a> {
        op: &'a str,
        ints: &'a [usize],
        eps: Option<f32>,
        inputs: &'a [&'a [f32]],
    }

    impl HostRun<'_> {
        /// The kernel's output in `dtype` at one launch shape; None (skipped) without a C++
        /// compiler.
        fn run(&self, dtype: &str, ([gx, gy], [bx, by]): ([u32; 2], [u32; 2])) -> Option<Vec<f32>> {
            let bin = harness()?;
            let mut args: Vec<String> = vec![self.op.into(), dtype.into()];
            args.extend([gx, gy, bx, by].iter().map(u32::to_string));
            args.extend(self.ints.iter().map(usize::to_string));
            if let Some(eps) = self.eps {
                args.push(format!("{eps:e}"));
            }
            let mut child = Command::new(bin)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            for input in self.inputs {
                stdin
                    .write_all(&(input.len() as u64).to_le_bytes())
                    .unwrap();
                for v in *input {
                    stdin.write_all(&v.to_le_bytes()).unwrap();
                }
            }
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "harness {args:?} failed");
            Some(
                out.stdout
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        }

        /// Holds the kernel to `want` in every dtype at every launch shape.
        fn check(&self, dtypes: &[&str], launches: &[([u32; 2], [u32; 2])], want: &[f32]) {
            for dtype in dtypes {
                for &launch in launches {
                    let Some(got) = self.run(dtype, launch) else {
                        return;
                    };
                    assert_close(self.op, dtype, &got, want);
                }
            }
        }
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn cpu(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Largest |kernel - reference| allowed for outputs of magnitude ~1: the inputs themselves
    /// are rounded to the dtype before the kernel runs.
    fn tolerance(dtype: &str) -> f32 {
        match dtype {
            "f32" => 1e-5,
            "f16" => 1.5e-2,
            _ => 1e-1,
        }
    }

    fn assert_close(op: &str, dtype: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{op} {dtype}: output size");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let allowed = tolerance(dtype) * w.abs().max(1.0);
            assert!(
                (g - w).abs() <= allowed,
                "{op} {dtype}: element {i} is {g}, reference {w}"
            );
        }
    }

    // A padded batch: 3 sequences of width 5 (lengths 5, 2, 3), 2 heads of 4.
    const SHAPE: Attention = Attention {
        width: 5,
        heads: 2,
        head: 4,
    };
    const BATCH: usize = 3;
    const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

    /// The production launch, and one whose grid has fewer rows than the data (the row walk).
    fn launches(cols: usize, rows: usize) -> [([u32; 2], [u32; 2]); 2] {
        let (grid, block) = column_launch(cols, rows);
        [(grid, block), ([grid[0], 2], block)]
    }

    #[test]
    fn bias_split_heads_matches_its_reference() {
        let rows = BATCH * SHAPE.width;
        let cols = 3 * SHAPE.hidden();
        let (qkv, bias) = (random(rows * cols, 1), random(cols, 2));
        let want = cpu(&qkv, &[rows, cols])
            .apply_op2_no_bwd(&cpu(&bias, &[cols]), &BiasSplitHeads(SHAPE))
            .unwrap();
        assert_eq!(want.dims(), &[3, BATCH * 2, 5, 4]);
        HostRun {
            op: "bias_split_heads",
            ints: &[rows, SHAPE.width, SHAPE.heads, SHAPE.head],
            eps: None,
            inputs: &[&qkv, &bias],
        }
        .check(&DTYPES, &launches(cols, rows), &flat(&want));
    }

    #[test]
    fn merge_heads_matches_its_reference() {
        let rows = BATCH * SHAPE.width;
        let ctx = random(rows * SHAPE.hidden(), 3);
        let want = cpu(&ctx, &[BATCH * SHAPE.heads, SHAPE.width, SHAPE.head])
            .apply_op1_no_bwd(&MergeHeads(SHAPE))
            .unwrap();
        HostRun {
            op: "merge_heads",
            ints: &[rows, SHAPE.width, SHAPE.heads, SHAPE.head],
            eps: None,
            inputs: &[&ctx],
        }
        .check(&DTYPES, &launches(SHAPE.hidden(), rows), &flat(&want));
    }

    #[test]
    fn bias_gelu_matches_its_reference() {
        // 300 columns: more than one 128-thread block, the last one partial.
        let (rows, cols) = (7, 300);
        let (x, bias) = (random(rows * cols, 4), random(cols, 5));
        let want = cpu(&x, &[rows, cols])
            .apply_op2_no_bwd(&cpu(&bias, &[cols]), &BiasGelu)
            .unwrap();
        HostRun {
            op: "bias_gelu",
            ints: &[rows, cols],
            eps: None,
            inputs: &[&x, &bias],
        }
        .check(&DTYPES, &launches(cols, rows), &flat(&want));
    }

    #[test]
    fn masked_softmax_matches_its_reference() {
        // Width 40: rows longer than a warp; lengths 40, 2, 33 and 0 (a padded-out slot).
        let (width, heads) = (40, 2);
        let lengths = [40u32, 2, 33, 0];
        let rows = lengths.len() * heads * width;
        let scores = random(rows * width, 6);
        let lengths_f: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
        let want = cpu(&scores, &[lengths.len() * heads, width, width])
            .apply_op2_no_bwd(
                &Tensor::new(&lengths[..], &Device::Cpu).unwrap(),
                &MaskedSoftmax {
                    rows_per_seq: heads * width,
                },
            )
            .unwrap();
        let want = flat(&want);
        // Padding keys get exactly 0; every real row sums to 1.
        for (r, row) in want.chunks_exact(width).enumerate() {
            let len = lengths[r / (heads * width)] as usize;
            assert!(row[len..].iter().all(|&p| p == 0.0));
            if len > 0 {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        HostRun {
            op: "masked_softmax",
            ints: &[rows, width, heads * width],
            eps: None,
            inputs: &[&scores, &lengths_f],
        }
        .check(&DTYPES, &[warp_launch(rows)], &want);
    }

    #[test]
    fn bias_residual_norm_matches_its_reference() {
        // 13 rows (one block of 8 warps and a partial one), 100 columns (a partial last pass).
        let (rows, cols) = (13, 100);
        let (x, residual) = (random(rows * cols, 7), random(rows * cols, 8));
        let mut params = random(3 * cols, 9);
        params[cols..2 * cols].iter_mut().for_each(|g| *g += 2.5); // gammas away from 0
        let eps = 1e-12;
        let want = cpu(&x, &[rows, cols])
            .apply_op3_no_bwd(
                &cpu(&residual, &[rows, cols]),
                &cpu(&params, &[3, cols]),
                &BiasResidualNorm { eps },
            )
            .unwrap();
        HostRun {
            op: "bias_residual_norm",
            ints: &[rows, cols],
            eps: Some(eps),
            inputs: &[&x, &residual, &params],
        }
        .check(&DTYPES, &[warp_launch(rows)], &flat(&want));
    }

    /// Packed-row offsets for these sequence lengths.
    fn offsets(lengths: &[u32]) -> Vec<u32> {
        std::iter::once(0)
            .chain(lengths.iter().scan(0, |acc, &l| {
                *acc += l;
                Some(*acc)
            }))
            .collect()
    }

    #[test]
    fn one_pass_attention_matches_its_reference() {
        // Packed rows of five sequences: 70 tokens (two 64-query tiles, the second mostly
        // idle; 32-key chunks: two full and one of 6), 5 (one partial chunk), 33 (a second
        // chunk of one key), 0 (an empty slot: every one of its tiles returns at once) and 64.
        let lengths = [70u32, 5, 33, 0, 64];
        let offsets = offsets(&lengths);
        let (total, longest, heads) = (offsets[5] as usize, 70, 2);
        let offsets_f: Vec<f32> = offsets.iter().map(|&o| o as f32).collect();
        for head in ONE_PASS_HEADS {
            let op = OnePassAttention {
                heads,
                head,
                longest,
            };
            let hidden = heads * head;
            let cols = 3 * hidden;
            let qkv: Vec<f32> = random(total * cols, 10 + head as u64)
                .iter()
                .map(|v| v * 0.5)
                .collect();
            let bias = random(cols, 11);
            let want = cpu(&qkv, &[total, cols])
                .apply_op3_no_bwd(
                    &cpu(&bias, &[cols]),
                    &Tensor::new(&offsets[..], &Device::Cpu).unwrap(),
                    &op,
                )
                .unwrap();
            let want = flat(&want);
            // The plain reference agrees with the padded two-GEMM path the fused engine runs.
            let shape = Attention {
                width: longest,
                heads,
                head,
            };
            let mut padded = vec![0f32; lengths.len() * longest * cols];
            for (s, w) in offsets.windows(2).enumerate() {
                let rows = &qkv[w[0] as usize * cols..w[1] as usize * cols];
                padded[s * longest * cols..][..rows.len()].copy_from_slice(rows);
            }
            let split = cpu(&padded, &[lengths.len() * longest, cols])
                .apply_op2_no_bwd(&cpu(&bias, &[cols]), &BiasSplitHeads(shape))
                .unwrap();
            let (q, k, v) = (
                split.get(0).unwrap(),
                split.get(1).unwrap(),
                split.get(2).unwrap(),
            );
            let probs = q
                .matmul(&k.t().unwrap())
                .unwrap()
                .apply_op2_no_bwd(
                    &Tensor::new(&lengths[..], &Device::Cpu).unwrap(),
                    &MaskedSoftmax {
                        rows_per_seq: heads * longest,
                    },
                )
                .unwrap();
            let two_gemm = flat(
                &probs
                    .matmul(&v)
                    .unwrap()
                    .apply_op1_no_bwd(&MergeHeads(shape))
                    .unwrap(),
            );
            let two_gemm_real: Vec<f32> = offsets
                .windows(2)
                .enumerate()
                .flat_map(|(s, w)| {
                    let len = (w[1] - w[0]) as usize;
                    two_gemm[s * longest * hidden..][..len * hidden].to_vec()
                })
                .collect();
            assert_close(
                "one-pass reference vs two GEMMs",
                "f32",
                &want,
                &two_gemm_real,
            );
            HostRun {
                op: "attention",
                ints: &[op.tiles(), heads, head],
                eps: None,
                inputs: &[&qkv, &bias, &offsets_f],
            }
            .check(&["f16", "bf16"], &[op.launch(lengths.len())], &want);
        }
    }

    #[test]
    fn segment_pool_matches_its_reference() {
        let lengths = [3u32, 0, 1, 7];
        let offsets = offsets(&lengths);
        let offsets_f: Vec<f32> = offsets.iter().map(|&o| o as f32).collect();
        let (rows, cols, sequences) = (offsets[4] as usize, 200, lengths.len());
        let x = random(rows * cols, 12);
        for cls in [false, true] {
            let want = cpu(&x, &[rows, cols])
                .apply_op2_no_bwd(
                    &Tensor::new(&offsets[..], &Device::Cpu).unwrap(),
                    &SegmentPool { cls },
                )
                .unwrap();
            let want = flat(&want);
            // By hand: sequence 0's mean / first row, the empty sequence all zeros.
            let first: Vec<f32> = (0..cols)
                .map(|c| {
                    if cls {
                        x[c]
                    } else {
                        (x[c] + x[cols + c] + x[2 * cols + c]) / 3.0
                    }
                })
                .collect();
            assert_close("segment_pool by hand", "f32", &want[..cols], &first);
            assert!(want[cols..2 * cols].iter().all(|&v| v == 0.0));
            HostRun {
                op: "segment_pool",
                ints: &[sequences, cols, usize::from(cls)],
                eps: None,
                inputs: &[&x, &offsets_f],
            }
            .check(&DTYPES, &launches(cols, sequences), &want);
        }
    }
}
