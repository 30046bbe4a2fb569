//! Mini-batch training with negative sampling and lazy (sparse) Adam.
//!
//! The loss is the RotatE paper's: `-log σ(s⁺) - Σᵢ wᵢ log σ(-sᵢ⁻)`, halved and averaged over the
//! batch, with `wᵢ = softmax(α sᵢ⁻)` (self-adversarial, treated as a constant) or `1/n`. Each
//! batch corrupts heads or tails, alternating, like the reference implementation.
//!
//! Parallelism: a batch is split over the pool's workers; each worker owns a dense gradient
//! buffer and the list of rows it touched, so no two threads write the same memory. The Adam
//! step then runs in parallel over row ranges, reading every worker's buffer for the touched
//! rows only (lazy Adam: a row's moments move when it has a gradient, as PyTorch's SparseAdam).
//! Memory: parameters + two Adam moments + one gradient buffer per worker, each
//! `entities x width` floats.
use std::time::Instant;

use rayon::prelude::*;

use crate::kernels;
use crate::{Config, EmbedError, Embeddings, Side, SplitMix64};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Mean loss over the epoch's batches.
    pub loss: f32,
    /// Positive triples per second.
    pub triples_per_second: f32,
    pub seconds: f32,
}

#[derive(Debug, Clone)]
pub struct Trained {
    pub embeddings: Embeddings,
    pub reports: Vec<EpochReport>,
    /// True when the callback asked to stop before the last epoch.
    pub stopped_early: bool,
}

/// A gradient matrix (`rows x width`, row-major) that remembers which rows were written, so
/// that clearing and the optimiser step touch only those.
struct SparseRows {
    values: Vec<f32>,
    width: usize,
    touched: Vec<u32>,
    mark: Vec<bool>,
}

impl SparseRows {
    fn new(rows: usize, width: usize) -> Self {
        Self {
            values: vec![0.0; rows * width],
            width,
            touched: Vec::new(),
            mark: vec![false; rows],
        }
    }

    /// Row `row` to accumulate into, marked as touched.
    fn row(&mut self, row: u32) -> &mut [f32] {
        let r = row as usize;
        if !self.mark[r] {
            self.mark[r] = true;
            self.touched.push(row);
        }
        &mut self.values[r * self.width..(r + 1) * self.width]
    }

    fn clear(&mut self) {
        for &row in &self.touched {
            let r = row as usize;
            self.values[r * self.width..(r + 1) * self.width].fill(0.0);
            self.mark[r] = false;
        }
        self.touched.clear();
    }
}

/// One worker's gradient buffers and its share of the loss.
struct Grads {
    entities: SparseRows,
    relations: SparseRows,
    loss: f64,
}

impl Grads {
    fn new(entities: usize, relations: usize, width: usize, dim: usize) -> Self {
        Self {
            entities: SparseRows::new(entities, width),
            relations: SparseRows::new(relations, dim),
            loss: 0.0,
        }
    }

    fn clear(&mut self) {
        self.entities.clear();
        self.relations.clear();
        self.loss = 0.0;
    }
}

/// `log σ(s)`, stable for large |s|.
fn log_sigmoid(s: f32) -> f32 {
    -((-s).max(0.0) + (-s.abs()).exp().ln_1p())
}

fn sigmoid(s: f32) -> f32 {
    1.0 / (1.0 + (-s).exp())
}

/// Positives that share one draw of negatives. Each positive still scores `negatives`
/// corruptions, but a negative row is read once for the whole group while it sits in L1: the
/// per-positive draw made training memory-bound (a 4 KB RotatE row fetched from DRAM for every
/// one of 256 negatives of every positive). DGL-KE and PyTorch-BigGraph sample in chunks the
/// same way; the quality check is in BENCHMARKS.md.
pub const NEGATIVE_GROUP: usize = 16;

/// Scratch space of one worker, reused across groups.
struct Scratch {
    anchors: Vec<f32>,
    anchor_grads: Vec<f32>,
    truths: Vec<u32>,
    positives: Vec<f32>,
    negatives: Vec<u32>,
    /// `negatives x group`: score of negative `c` for positive `i` at `c * group + i`.
    scores: Vec<f32>,
    /// Same layout: the loss gradient of each score.
    gradients: Vec<f32>,
    candidate_grad: Vec<f32>,
    entity_grad: Vec<f32>,
    relation_grad: Vec<f32>,
}

impl Scratch {
    fn new(width: usize, dim: usize, negatives: usize) -> Self {
        Self {
            anchors: vec![0.0; NEGATIVE_GROUP * width],
            anchor_grads: vec![0.0; NEGATIVE_GROUP * width],
            truths: Vec::with_capacity(NEGATIVE_GROUP),
            positives: Vec::with_capacity(NEGATIVE_GROUP),
            negatives: Vec::with_capacity(negatives),
            scores: vec![0.0; NEGATIVE_GROUP * negatives],
            gradients: vec![0.0; NEGATIVE_GROUP * negatives],
            candidate_grad: vec![0.0; width],
            entity_grad: vec![0.0; width],
            relation_grad: vec![0.0; dim],
        }
    }
}

/// Trains on `triples` (`[head, relation, tail]` ids below the counts). `on_epoch` sees each
/// epoch's report and the current embeddings; returning `false` stops training there.
///
/// # Errors
/// `InvalidConfig` for out-of-range hyper-parameters, `InvalidData` for an empty or
/// out-of-range triple list.
pub fn train(
    config: &Config,
    entities: usize,
    relations: usize,
    triples: &[[u32; 3]],
    on_epoch: impl FnMut(&EpochReport, &Embeddings) -> bool,
) -> Result<Trained, EmbedError> {
    let init = Embeddings::init(config, entities, relations, config.seed);
    train_from(config, init, triples, on_epoch)
}

/// As [`train`], continuing from `embeddings` (which fixes the entity and relation counts).
///
/// # Errors
/// As [`train`]; also when `embeddings` does not match `config`'s model and dimension.
pub fn train_from(
    config: &Config,
    mut embeddings: Embeddings,
    triples: &[[u32; 3]],
    mut on_epoch: impl FnMut(&EpochReport, &Embeddings) -> bool,
) -> Result<Trained, EmbedError> {
    config.validate()?;
    if embeddings.model != config.model || embeddings.dim != config.dim {
        return Err(EmbedError::InvalidConfig(
            "the starting embeddings were trained with another model or dimension".into(),
        ));
    }
    let entities = embeddings.entity_count();
    let relations = embeddings.relation_count();
    if triples.is_empty() {
        return Err(EmbedError::InvalidData("no triples to train on".into()));
    }
    if entities < 2 {
        return Err(EmbedError::InvalidData(
            "at least two entities are needed to sample negatives".into(),
        ));
    }
    if let Some(bad) = triples.iter().find(|[h, r, t]| {
        *h as usize >= entities || *t as usize >= entities || *r as usize >= relations
    }) {
        return Err(EmbedError::InvalidData(format!(
            "triple {bad:?} refers to an id past {entities} entities / {relations} relations"
        )));
    }
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        config.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kg-train-{i}"))
        .build()
        .map_err(|e| EmbedError::InvalidConfig(format!("cannot start {threads} threads: {e}")))?;

    let width = embeddings.entity_width();
    let dim = config.dim;
    let mut entity_m = vec![0.0f32; embeddings.entities.len()];
    let mut entity_v = vec![0.0f32; embeddings.entities.len()];
    let mut relation_m = vec![0.0f32; embeddings.relations.len()];
    let mut relation_v = vec![0.0f32; embeddings.relations.len()];
    let mut grads: Vec<Grads> = (0..threads)
        .map(|_| Grads::new(entities, relations, width, dim))
        .collect();
    let mut entity_touched = vec![false; entities];
    let mut relation_touched = vec![false; relations];
    let weights = config.subsampling.then(|| subsampling_weights(triples));

    let mut order: Vec<u32> = (0..triples.len() as u32).collect();
    let mut rng = SplitMix64::new(config.seed.wrapping_add(1));
    let mut step: i32 = 0;
    let mut reports = Vec::with_capacity(config.epochs);
    let mut stopped_early = false;

    for epoch in 1..=config.epochs {
        let started = Instant::now();
        // Fisher-Yates shuffle.
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u32 + 1) as usize;
            order.swap(i, j);
        }
        let mut loss_sum = 0.0f64;
        let mut batches = 0usize;
        for (b, batch) in order.chunks(config.batch_size).enumerate() {
            step += 1;
            let side = if b % 2 == 0 { Side::Tail } else { Side::Head };
            let per_worker = batch.len().div_ceil(threads);
            let batch_seed = rng.next_u64();
            // The batch's loss is the (weighted) mean over its positives.
            let total_weight = weights.as_deref().map_or(batch.len() as f32, |w| {
                batch.iter().map(|&i| w[i as usize]).sum::<f32>()
            });
            let scale = 0.5 / total_weight;
            let reg_scale = 0.5 / batch.len() as f32;
            let params = &embeddings;
            let weights = weights.as_deref();
            pool.install(|| {
                grads
                    .par_iter_mut()
                    .zip(batch.par_chunks(per_worker.max(1)))
                    .enumerate()
                    .for_each(|(worker, (grads, chunk))| {
                        grads.clear();
                        let mut wrng = SplitMix64::new(
                            batch_seed ^ (worker as u64).wrapping_mul(0xA24B_AED4_963E_E407),
                        );
                        let mut scratch = Scratch::new(width, dim, config.negatives);
                        let mut job = Job {
                            config,
                            params,
                            side,
                            scale,
                            reg_scale,
                            weights,
                            entities: entities as u32,
                            rng: &mut wrng,
                            scratch: &mut scratch,
                            grads,
                        };
                        run_chunk_dispatch(&mut job, triples, chunk);
                    });
            });
            // Workers beyond the batch's chunks kept last step's rows: clear them too.
            let used = batch.len().div_ceil(per_worker.max(1));
            for g in grads.iter_mut().skip(used) {
                g.clear();
            }
            loss_sum += grads.iter().map(|g| g.loss).sum::<f64>() / f64::from(total_weight);
            batches += 1;

            for g in &grads {
                for &row in &g.entities.touched {
                    entity_touched[row as usize] = true;
                }
                for &row in &g.relations.touched {
                    relation_touched[row as usize] = true;
                }
            }
            let lr = if config.lr_drop_epoch > 0 && epoch > config.lr_drop_epoch {
                config.learning_rate / 10.0
            } else {
                config.learning_rate
            };
            let bias1 = 1.0 - BETA1.powi(step);
            let bias2 = 1.0 - BETA2.powi(step);
            let grads_ref = &grads;
            pool.install(|| {
                adam_rows(
                    &mut embeddings.entities,
                    &mut entity_m,
                    &mut entity_v,
                    &entity_touched,
                    width,
                    lr,
                    bias1,
                    bias2,
                    |g: &Grads| &g.entities.values,
                    grads_ref,
                );
                adam_rows(
                    &mut embeddings.relations,
                    &mut relation_m,
                    &mut relation_v,
                    &relation_touched,
                    dim,
                    lr,
                    bias1,
                    bias2,
                    |g: &Grads| &g.relations.values,
                    grads_ref,
                );
            });
            for g in &grads {
                for &row in &g.entities.touched {
                    entity_touched[row as usize] = false;
                }
                for &row in &g.relations.touched {
                    relation_touched[row as usize] = false;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f32();
        let report = EpochReport {
            epoch,
            epochs: config.epochs,
            loss: (loss_sum / batches.max(1) as f64) as f32,
            triples_per_second: triples.len() as f32 / seconds.max(1e-9),
            seconds,
        };
        let go_on = on_epoch(&report, &embeddings);
        reports.push(report);
        if !go_on && epoch < config.epochs {
            stopped_early = true;
            break;
        }
    }
    Ok(Trained {
        embeddings,
        reports,
        stopped_early,
    })
}

/// The RotatE reference code's "subsampling" weights (word2vec's idea applied to triples): a
/// positive `(h, r, t)` weighs `1 / sqrt(#(h, r) + #(t, r⁻¹))`, counts over the training triples
/// starting at 4, so the many triples around a hub entity do not dominate every batch.
fn subsampling_weights(triples: &[[u32; 3]]) -> Vec<f32> {
    let mut counts: std::collections::HashMap<(u32, u32, bool), u32> =
        std::collections::HashMap::new();
    for &[h, r, t] in triples {
        *counts.entry((h, r, false)).or_insert(4) += 1;
        *counts.entry((t, r, true)).or_insert(4) += 1;
    }
    triples
        .iter()
        .map(|&[h, r, t]| {
            let n = counts[&(h, r, false)] + counts[&(t, r, true)];
            1.0 / (n as f32).sqrt()
        })
        .collect()
}

/// What a worker needs to process its share of a batch.
struct Job<'a> {
    config: &'a Config,
    params: &'a Embeddings,
    side: Side,
    /// 0.5 / the batch's total positive weight.
    scale: f32,
    /// 0.5 / the batch's positives: the L2 term does not depend on the weights.
    reg_scale: f32,
    /// Each training triple's weight (subsampling), or None for 1 each.
    weights: Option<&'a [f32]>,
    entities: u32,
    rng: &'a mut SplitMix64,
    scratch: &'a mut Scratch,
    grads: &'a mut Grads,
}

#[inline(always)]
fn run_chunk(job: &mut Job<'_>, triples: &[[u32; 3]], chunk: &[u32]) {
    for group in chunk.chunks(NEGATIVE_GROUP) {
        group_step(job, triples, group);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_chunk_avx2(job: &mut Job<'_>, triples: &[[u32; 3]], chunk: &[u32]) {
    run_chunk(job, triples, chunk);
}

fn run_chunk_dispatch(job: &mut Job<'_>, triples: &[[u32; 3]], chunk: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            run_chunk_avx2(job, triples, chunk);
        }
        return;
    }
    run_chunk(job, triples, chunk);
}

/// A group of positives and their shared negatives: scores, loss and every gradient.
#[inline(always)]
fn group_step(job: &mut Job<'_>, triples: &[[u32; 3]], group: &[u32]) {
    let Job {
        config,
        params,
        side,
        scale,
        reg_scale,
        weights,
        entities,
        rng,
        scratch,
        grads,
    } = job;
    let (config, params, side, scale, entities) = (*config, *params, *side, *scale, *entities);
    let reg_scale = *reg_scale;
    let weight = |i: usize| weights.map_or(1.0, |w| w[group[i] as usize]);
    let width = params.entity_width();
    let dim = params.dim;
    let model = params.model;
    let size = group.len();
    let n = config.negatives;
    let row = |id: u32| &params.entities[id as usize * width..(id as usize + 1) * width];
    let relation = |id: u32| &params.relations[id as usize * dim..(id as usize + 1) * dim];
    let split = |[h, r, t]: [u32; 3]| match side {
        Side::Tail => (h, r, t),
        Side::Head => (t, r, h),
    };

    // Anchors and positive scores.
    scratch.truths.clear();
    scratch.positives.clear();
    for (i, &index) in group.iter().enumerate() {
        let (known, r, truth) = split(triples[index as usize]);
        let x = &mut scratch.anchors[i * width..(i + 1) * width];
        kernels::anchor(model, side, params.phase_scale, row(known), relation(r), x);
        scratch.truths.push(truth);
        scratch
            .positives
            .push(kernels::score(model, params.margin, x, row(truth)));
    }
    scratch.negatives.clear();
    for _ in 0..n {
        scratch.negatives.push(rng.below(entities));
    }
    // Negative scores, one negative row against every anchor of the group.
    for (c, &negative) in scratch.negatives.iter().enumerate() {
        let candidate = row(negative);
        for i in 0..size {
            scratch.scores[c * size + i] = kernels::score(
                model,
                params.margin,
                &scratch.anchors[i * width..(i + 1) * width],
                candidate,
            );
        }
    }
    // Loss and the gradient of every score (weights are constants, as in the paper).
    let a = config.adversarial_temperature;
    // A negative whose gradient share is below this fraction of a uniform one moves nothing
    // measurable; skipping its backward pass is most of the saving of self-adversarial sampling.
    let negligible = 1e-3 / n as f32;
    for i in 0..size {
        let positive = scratch.positives[i];
        let mut loss = -log_sigmoid(positive);
        let (max, sum) = if a > 0.0 {
            let max = (0..n).fold(f32::NEG_INFINITY, |m, c| {
                m.max(a * scratch.scores[c * size + i])
            });
            let sum: f32 = (0..n)
                .map(|c| (a * scratch.scores[c * size + i] - max).exp())
                .sum();
            (max, sum)
        } else {
            (0.0, 0.0)
        };
        for c in 0..n {
            let s = scratch.scores[c * size + i];
            let w = if a > 0.0 {
                (a * s - max).exp() / sum
            } else {
                1.0 / n as f32
            };
            loss -= w * log_sigmoid(-s);
            let share = w * sigmoid(s);
            scratch.gradients[c * size + i] = if share < negligible {
                0.0
            } else {
                scale * weight(i) * share
            };
        }
        grads.loss += 0.5 * f64::from(weight(i) * loss);
    }

    let reg = config.regularization;
    scratch.anchor_grads[..size * width].fill(0.0);
    // Positives: d loss / d s⁺ = -(1 - σ(s⁺)).
    for i in 0..size {
        let g = -scale * weight(i) * (1.0 - sigmoid(scratch.positives[i]));
        let truth = scratch.truths[i];
        let gc = grads.entities.row(truth);
        kernels::score_backward(
            model,
            g,
            &scratch.anchors[i * width..(i + 1) * width],
            row(truth),
            &mut scratch.anchor_grads[i * width..(i + 1) * width],
            gc,
        );
        if reg > 0.0 {
            for (gc, p) in gc.iter_mut().zip(row(truth)) {
                *gc += 2.0 * reg * reg_scale * p;
            }
        }
    }
    // Negatives: d loss / d sᵢ⁻ = wᵢ σ(sᵢ⁻), summed over the group into the shared row.
    for (c, &negative) in scratch.negatives.iter().enumerate() {
        let candidate = row(negative);
        let mut touched = false;
        scratch.candidate_grad.fill(0.0);
        for i in 0..size {
            let g = scratch.gradients[c * size + i];
            if g == 0.0 {
                continue;
            }
            touched = true;
            kernels::score_backward(
                model,
                g,
                &scratch.anchors[i * width..(i + 1) * width],
                candidate,
                &mut scratch.anchor_grads[i * width..(i + 1) * width],
                &mut scratch.candidate_grad,
            );
        }
        if reg > 0.0 {
            touched = true;
            let weight = 2.0 * reg * reg_scale * size as f32;
            for (g, p) in scratch.candidate_grad.iter_mut().zip(candidate) {
                *g += weight * p;
            }
        }
        if touched {
            for (acc, g) in grads
                .entities
                .row(negative)
                .iter_mut()
                .zip(&scratch.candidate_grad)
            {
                *acc += g;
            }
        }
    }
    // Anchors back into the known entity and the relation.
    for (i, &index) in group.iter().enumerate() {
        let (known, r, _) = split(triples[index as usize]);
        let (ge, gr) = (&mut scratch.entity_grad, &mut scratch.relation_grad);
        ge.fill(0.0);
        gr.fill(0.0);
        kernels::anchor_backward(
            model,
            side,
            params.phase_scale,
            row(known),
            relation(r),
            &scratch.anchor_grads[i * width..(i + 1) * width],
            ge,
            gr,
        );
        if reg > 0.0 {
            for (g, p) in ge.iter_mut().zip(row(known)) {
                *g += 2.0 * reg * reg_scale * p;
            }
            for (g, p) in gr.iter_mut().zip(relation(r)) {
                *g += 2.0 * reg * reg_scale * p;
            }
        }
        for (acc, g) in grads.entities.row(known).iter_mut().zip(ge.iter()) {
            *acc += g;
        }
        for (acc, g) in grads.relations.row(r).iter_mut().zip(gr.iter()) {
            *acc += g;
        }
    }
}

/// Adam over the touched rows of one parameter matrix, in parallel over rows.
#[allow(clippy::too_many_arguments)]
fn adam_rows(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    touched: &[bool],
    width: usize,
    lr: f32,
    bias1: f32,
    bias2: f32,
    buffer: impl Fn(&Grads) -> &Vec<f32> + Sync,
    grads: &[Grads],
) {
    const ROWS: usize = 256;
    params
        .par_chunks_mut(ROWS * width)
        .zip(m.par_chunks_mut(ROWS * width))
        .zip(v.par_chunks_mut(ROWS * width))
        .enumerate()
        .for_each(|(chunk, ((p, m), v))| {
            let first = chunk * ROWS;
            let mut g = vec![0.0f32; width];
            for local in 0..p.len() / width {
                let row = first + local;
                if !touched[row] {
                    continue;
                }
                let global = row * width..(row + 1) * width;
                g.fill(0.0);
                for worker in grads {
                    for (g, w) in g.iter_mut().zip(&buffer(worker)[global.clone()]) {
                        *g += w;
                    }
                }
                let span = local * width..(local + 1) * width;
                for (((p, m), v), &g) in p[span.clone()]
                    .iter_mut()
                    .zip(&mut m[span.clone()])
                    .zip(&mut v[span])
                    .zip(&g)
                {
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    *p -= lr * (*m / bias1) / ((*v / bias2).sqrt() + ADAM_EPS);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    #[test]
    fn rejects_ids_past_the_counts_and_empty_input() {
        let config = Config {
            epochs: 1,
            dim: 4,
            ..Config::default()
        };
        assert!(train(&config, 3, 1, &[], |_, _| true).is_err());
        assert!(train(&config, 3, 1, &[[0, 0, 3]], |_, _| true).is_err());
        assert!(train(&config, 3, 1, &[[0, 1, 2]], |_, _| true).is_err());
    }

    #[test]
    fn one_thread_is_reproducible() {
        let triples: Vec<[u32; 3]> = (0..40).map(|i| [i, i % 3, (i * 7 + 1) % 40]).collect();
        for model in [Model::TransE, Model::DistMult, Model::RotatE] {
            let config = Config {
                model,
                dim: 8,
                epochs: 3,
                batch_size: 16,
                negatives: 4,
                threads: 1,
                regularization: if model == Model::DistMult { 1e-3 } else { 0.0 },
                ..Config::default()
            };
            let a = train(&config, 40, 3, &triples, |_, _| true).unwrap();
            let b = train(&config, 40, 3, &triples, |_, _| true).unwrap();
            assert_eq!(a.embeddings, b.embeddings, "{model:?}");
            assert!(a.reports.iter().all(|r| r.loss.is_finite()));
        }
    }

    #[test]
    fn subsampling_weighs_triples_around_a_hub_less() {
        // Entity 0 has three tails under relation 0; (4, 0, 5) stands alone.
        let triples = [[0, 0, 1], [0, 0, 2], [0, 0, 3], [4, 0, 5]];
        let w = subsampling_weights(&triples);
        // #(0, r) = 4 + 3, #(1, r^-1) = 4 + 1; #(4, r) = #(5, r^-1) = 4 + 1.
        assert!((w[0] - 1.0 / 12f32.sqrt()).abs() < 1e-6, "{w:?}");
        assert!((w[3] - 1.0 / 10f32.sqrt()).abs() < 1e-6, "{w:?}");
        assert!(w[3] > w[0] && w[0] == w[1] && w[1] == w[2]);
    }

    #[test]
    fn the_loss_falls_and_the_callback_can_stop() {
        let triples: Vec<[u32; 3]> = (0..200)
            .map(|i| [i % 50, i % 4, (i * 13 + 5) % 50])
            .collect();
        let config = Config {
            model: Model::RotatE,
            dim: 16,
            epochs: 60,
            batch_size: 32,
            negatives: 16,
            learning_rate: 0.01,
            threads: 2,
            ..Config::default()
        };
        for subsampling in [false, true] {
            let config = Config {
                subsampling,
                ..config.clone()
            };
            let trained = train(&config, 50, 4, &triples, |_, _| true).unwrap();
            let first = trained.reports[0].loss;
            let last = trained.reports[59].loss;
            assert!(
                last < first * 0.7,
                "subsampling {subsampling}: loss {first} -> {last}"
            );
        }

        let stopped = train(&config, 50, 4, &triples, |r, _| r.epoch < 3).unwrap();
        assert_eq!(stopped.reports.len(), 3);
        assert!(stopped.stopped_early);
    }
}
