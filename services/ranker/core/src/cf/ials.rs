//! iALS: implicit alternating least squares (Hu, Koren & Volinsky 2008), in the form and with
//! the frequency-scaled regulariser of Rendle et al. 2022 ("Revisiting the performance of iALS
//! on item recommendation benchmarks"). Users and items get `dim`-d vectors minimising
//!
//! ```text
//!   sum over observed (u, i) of (1 - <w_u, h_i>)^2
//! + alpha0 x sum over all (u, i) of <w_u, h_i>^2
//! + reg x sum_u (|items(u)| + alpha0 |items|) |w_u|^2 + reg x sum_i (|users(i)| + alpha0 |users|) |h_i|^2
//! ```
//!
//! Each half-step solves one `dim x dim` system per row: the unobserved term is the same Gram
//! matrix `alpha0 H'H` for every row, so a row costs O(|items(u)| dim^2 + dim^3), never a pass
//! over all items. A user is scored by folding their history in (one more user half-step
//! against the fitted item vectors), so any history can be scored, not only the training users'.
//!
//! Memory: the item vectors, n x dim (f64 while fitting, f32 once served: 1 MB for 3,820
//! items at dim 64); fitting also holds the users' vectors. Nothing is n x n: the ranker
//! serves the model by folding each shopper's history in ([`FoldIn`]), not as item-item lists.
use super::{Interactions, Recommender, cholesky, cholesky_solve};
use crate::RankError;
use crate::rng::XorShift;

/// Settings of an iALS fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IalsOptions {
    /// Vector size.
    pub dim: usize,
    /// L2 weight, scaled per row by (its observed count + alpha0 x the other side's size).
    pub reg: f64,
    /// alpha0: the weight of every unobserved (user, item) pair pulling its score to 0.
    pub unobserved: f64,
    /// Alternations (a user half-step and an item half-step each).
    pub iterations: usize,
    pub seed: u64,
    /// Worker threads for the half-steps (rows are independent).
    pub threads: usize,
}

impl Default for IalsOptions {
    /// The best mean validation Recall@20 over Last.FM and ML-100k (`soukctl eval rec --ials`
    /// grids, BENCHMARKS.md): Last.FM alone picks reg 0.03 / alpha0 0.03, ML-100k 0.03 / 0.1.
    fn default() -> Self {
        Self {
            dim: 64,
            reg: 0.03,
            unobserved: 0.03,
            iterations: 10,
            seed: 42,
            threads: 2,
        }
    }
}

impl IalsOptions {
    /// # Errors
    /// `InvalidInput` naming the setting out of range.
    pub fn validate(&self) -> Result<(), RankError> {
        let bad = |m: String| Err(RankError::InvalidInput(m));
        if !(1..=1024).contains(&self.dim) {
            return bad(format!("dim must be 1..=1024, got {}", self.dim));
        }
        if !(self.reg.is_finite() && self.reg > 0.0) {
            return bad(format!("reg must be a positive number, got {}", self.reg));
        }
        if !(self.unobserved.is_finite() && self.unobserved > 0.0) {
            return bad(format!(
                "unobserved weight must be a positive number, got {}",
                self.unobserved
            ));
        }
        if !(1..=1000).contains(&self.iterations) {
            return bad(format!(
                "iterations must be 1..=1000, got {}",
                self.iterations
            ));
        }
        Ok(())
    }
}

/// A fitted iALS model. What is kept of the fit is its served form, [`FoldIn`]: the item
/// vectors in f32 and the regulariser, so what `soukctl eval rec` measures is what `Rank`
/// computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Ials {
    served: FoldIn,
}

impl Ials {
    /// # Errors
    /// `InvalidInput` for options out of range.
    ///
    /// # Complexity
    /// O(iterations x (nnz x dim^2 + (users + items) x dim^3 / threads)) time,
    /// O((users + items) x dim) memory.
    pub fn fit(data: &Interactions, options: &IalsOptions) -> Result<Self, RankError> {
        options.validate()?;
        let dim = options.dim;
        let n_users = data.users.len();
        let n_items = data.n_items;
        let mut item_users: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        for (u, items) in data.users.iter().enumerate() {
            for &i in items {
                if let Some(users) = item_users.get_mut(i as usize) {
                    users.push(u as u32);
                } else {
                    return Err(RankError::InvalidInput(format!(
                        "item index {i} out of range 0..{n_items}"
                    )));
                }
            }
        }
        let mut rng = XorShift::new(options.seed);
        // Small random start (std 0.1 / sqrt(dim), as in Rendle et al.'s code).
        let scale = 0.1 * 3f64.sqrt() / (dim as f64).sqrt();
        let mut init =
            |n: usize| -> Vec<f64> { (0..n * dim).map(|_| scale * rng.uniform()).collect() };
        let mut users = init(n_users);
        let mut items = init(n_items);
        for _ in 0..options.iterations {
            let gram = weighted_gram(&items, dim, options.unobserved);
            solve_rows(&mut users, &data.users, &items, &gram, n_items, options)?;
            let gram = weighted_gram(&users, dim, options.unobserved);
            solve_rows(&mut items, &item_users, &users, &gram, n_users, options)?;
        }
        let served = FoldIn::new(
            items.iter().map(|&x| x as f32).collect(),
            dim,
            options.reg,
            options.unobserved,
        )?;
        Ok(Self { served })
    }

    /// What the ranker serves: the item vectors and the fold-in's settings.
    pub fn served(&self) -> &FoldIn {
        &self.served
    }

    pub fn into_served(self) -> FoldIn {
        self.served
    }
}

impl Recommender for Ials {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        self.served.scores(history)
    }
}

/// iALS as served: item vectors (f32) and the fold-in's settings. A history is scored by
/// solving for the user vector that best explains it (the fit's user half-step:
/// (alpha0 H'H + sum of h h' over the history + lambda I) w = sum of h over the history), so a
/// shopper's newest event counts at the next `Rank`, and any history can be scored, not only
/// the training users'.
///
/// Memory: items x dim x 6 bytes (3.8 MB at 10k items, dim 64) plus dim^2 f64.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldIn {
    dim: usize,
    /// items x dim, row-major.
    vectors: Vec<f32>,
    /// `vectors` scaled by one positive factor into f16's range and stored as f16 bits: what
    /// [`Folded::best`] scans, half the memory traffic of the f32 rows (the scan reads every
    /// item's vector at every `Rank`). The factor changes no score's sign or order.
    half: Vec<u16>,
    /// alpha0 H'H of `vectors`, dim x dim.
    gram: Vec<f64>,
    reg: f64,
    unobserved: f64,
}

impl FoldIn {
    /// # Errors
    /// `InvalidInput` when the vectors are not whole rows of `dim` finite numbers or a
    /// setting is out of range (a damaged stored model is refused here, not served).
    ///
    /// # Complexity
    /// O(items x dim^2): the Gram matrix.
    pub fn new(
        vectors: Vec<f32>,
        dim: usize,
        reg: f64,
        unobserved: f64,
    ) -> Result<Self, RankError> {
        IalsOptions {
            dim,
            reg,
            unobserved,
            ..IalsOptions::default()
        }
        .validate()?;
        if vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(RankError::InvalidInput(format!(
                "{} numbers are not whole item vectors of {dim}",
                vectors.len()
            )));
        }
        if let Some(i) = vectors.iter().position(|x| !x.is_finite()) {
            return Err(RankError::InvalidInput(format!(
                "item vector {} holds a non-finite number",
                i / dim
            )));
        }
        let wide: Vec<f64> = vectors.iter().map(|&x| f64::from(x)).collect();
        Ok(Self {
            gram: weighted_gram(&wide, dim, unobserved),
            dim,
            half: half_rows(&vectors),
            vectors,
            reg,
            unobserved,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn items(&self) -> usize {
        self.vectors.len() / self.dim
    }

    /// items x dim, row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub fn reg(&self) -> f64 {
        self.reg
    }

    pub fn unobserved(&self) -> f64 {
        self.unobserved
    }

    fn row(&self, item: u32) -> Option<&[f32]> {
        let d = self.dim;
        self.vectors.get(item as usize * d..(item as usize + 1) * d)
    }

    /// Folds `history` (item rows; out-of-range ones and repeats are skipped) in, keeping
    /// each of its first `credited` items' share of the user vector for
    /// [`Folded::sources`].
    ///
    /// # Complexity
    /// O((|history| + credited) x dim^2 + dim^3).
    pub fn fold(&self, history: &[u32], credited: usize) -> Folded<'_> {
        let d = self.dim;
        let mut seen: Vec<u32> = Vec::with_capacity(history.len());
        for &h in history {
            if self.row(h).is_some() && !seen.contains(&h) {
                seen.push(h);
            }
        }
        // The history's vectors in f64, one flat array (this runs at every `Rank`).
        let wide: Vec<f64> = seen
            .iter()
            .filter_map(|&h| self.row(h))
            .flatten()
            .map(|&x| f64::from(x))
            .collect();
        let mut a = vec![0.0; d * d];
        let mut x = vec![0.0; d];
        let system = RowSystem {
            gram: &self.gram,
            reg: self.reg,
            unobserved: self.unobserved,
            other_count: self.items(),
        };
        let mut parts = Vec::with_capacity(seen.len() * d);
        // The Gram matrix plus a positive diagonal is positive definite; were rounding to
        // break that, the history scores nothing rather than garbage.
        if seen.is_empty() || system.solve(&mut a, &mut x, wide.chunks_exact(d)).is_err() {
            x.fill(0.0);
            seen.clear();
        } else {
            // `a` now holds the factor of the user's system: each history item's own share
            // of the user vector is M^-1 h, and the shares sum to it.
            seen.truncate(credited);
            for v in wide.chunks_exact(d).take(credited) {
                let mut part = v.to_vec();
                cholesky_solve(&a, d, &mut part);
                parts.extend(part.iter().map(|&p| p as f32));
            }
        }
        Folded {
            model: self,
            user: x.iter().map(|&w| w as f32).collect(),
            history: seen,
            parts,
        }
    }

    /// Every item's score for `history` (0 for an empty one).
    pub fn scores(&self, history: &[u32]) -> Vec<f64> {
        self.fold(history, 0)
            .scores()
            .into_iter()
            .map(f64::from)
            .collect()
    }
}

/// A history folded into a user vector: scores for every item and, per item, how much each
/// history item contributed (for "shoppers who liked A also chose this").
pub struct Folded<'a> {
    model: &'a FoldIn,
    /// dim.
    user: Vec<f32>,
    /// The credited history rows, in the order given.
    history: Vec<u32>,
    /// credited x dim: each credited history item's share of `user` (all items' sum to it).
    parts: Vec<f32>,
}

impl Folded<'_> {
    /// Every item's score, in row order.
    ///
    /// # Complexity
    /// O(items x dim).
    pub fn scores(&self) -> Vec<f32> {
        let mut scores = Vec::with_capacity(self.model.items());
        crate::rank::scan(&self.model.vectors, &self.user, |_, s| scores.push(s));
        scores
    }

    /// The `k` items with the highest positive scores, best first (ties: lower row first),
    /// leaving out the rows in `skip` (the history itself, which the fold-in reconstructs).
    /// One pass over the half-precision rows that keeps at most 4k candidates, instead of
    /// every item's score and a selection over all of them; the kept ones are then scored
    /// again from the f32 rows, so the scores returned are exact and only items within f16
    /// rounding (~1e-3 relative) of the k-th can trade places at the edge.
    ///
    /// # Complexity
    /// O(items x dim + k log k); memory O(k).
    pub fn best(&self, k: usize, skip: &[u32]) -> Vec<(u32, f32)> {
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut kept: Vec<(u32, f32)> = Vec::with_capacity(4 * k + 1);
        if k == 0 {
            return kept;
        }
        // Only a score above `floor` can still be among the best k: once k are kept, the
        // k-th best so far. Rows come in increasing order, so a later row that only ties the
        // floor would rank after the kept one anyway.
        let mut floor = 0.0f32;
        crate::rank::scan_f16(&self.model.half, &self.user, |row, s| {
            let row = row as u32;
            if s > floor && !skip.contains(&row) {
                kept.push((row, s));
                if kept.len() == 4 * k {
                    kept.select_nth_unstable_by(k - 1, order);
                    kept.truncate(k);
                    floor = kept[k - 1].1;
                }
            }
        });
        if kept.len() > k {
            kept.select_nth_unstable_by(k - 1, order);
            kept.truncate(k);
        }
        for (row, s) in &mut kept {
            if let Some(v) = self.model.row(*row) {
                *s = crate::rank::dot(v, &self.user);
            }
        }
        kept.retain(|&(_, s)| s > 0.0);
        kept.sort_unstable_by(order);
        kept
    }

    /// Each credited history row's contribution to `item`'s score (with every row credited,
    /// they sum to it); nothing for an unknown item.
    pub fn sources(&self, item: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let v = self.model.row(item).unwrap_or(&[]);
        self.parts
            .chunks_exact(self.model.dim)
            .zip(&self.history)
            .filter(move |_| !v.is_empty())
            .map(move |(part, &h)| (h, crate::rank::dot(part, v)))
    }

    /// The history row that contributed most to `item`'s score, with its contribution;
    /// `None` for an empty history or an unknown item.
    pub fn strongest_source(&self, item: u32) -> Option<(u32, f32)> {
        self.sources(item).max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// `vectors` as f16 bits, scaled so that the largest magnitude is 1: a fit's vectors can sit
/// far below f16's smallest normal number (6e-5; at 100k items and users iALS's were ~1e-6,
/// which f16 would flush to zero), and a positive factor keeps every dot product's sign and
/// order.
fn half_rows(vectors: &[f32]) -> Vec<u16> {
    let largest = vectors.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if largest > 0.0 { 1.0 / largest } else { 1.0 };
    vectors
        .iter()
        .map(|&x| half::f16::from_f32(x * scale).to_bits())
        .collect()
}

/// alpha0 F'F for row-major `f` (rows x dim): dim x dim.
fn weighted_gram(f: &[f64], dim: usize, alpha0: f64) -> Vec<f64> {
    let mut g = vec![0.0; dim * dim];
    for row in f.chunks_exact(dim) {
        add_outer(&mut g, row, dim);
    }
    g.iter_mut().for_each(|x| *x *= alpha0);
    g
}

/// a += v v' (dim x dim, row-major).
fn add_outer(a: &mut [f64], v: &[f64], dim: usize) {
    for (r, &vr) in v.iter().enumerate() {
        let row = &mut a[r * dim..(r + 1) * dim];
        row.iter_mut().zip(v).for_each(|(x, y)| *x += vr * y);
    }
}

/// What every row of one half-step shares: the fixed side's weighted Gram matrix and the
/// regulariser's terms.
struct RowSystem<'a> {
    /// alpha0 F'F of the fixed side.
    gram: &'a [f64],
    reg: f64,
    unobserved: f64,
    /// Rows of the fixed side (items when solving a user).
    other_count: usize,
}

impl RowSystem<'_> {
    /// One row: (gram + sum of v v' over its observed vectors v + lambda I) x = sum of v,
    /// lambda = reg (|observed| + alpha0 x other_count). `a` (dim x dim) is scratch; x = 0
    /// when nothing is observed.
    fn solve<'v>(
        &self,
        a: &mut [f64],
        x: &mut [f64],
        observed: impl Iterator<Item = &'v [f64]>,
    ) -> Result<(), RankError> {
        let d = x.len();
        a.copy_from_slice(self.gram);
        x.fill(0.0);
        let mut count = 0usize;
        for v in observed {
            count += 1;
            add_outer(a, v, d);
            x.iter_mut().zip(v).for_each(|(s, y)| *s += y);
        }
        if count == 0 {
            return Ok(());
        }
        let lambda = self.reg * (count as f64 + self.unobserved * self.other_count as f64);
        for k in 0..d {
            a[k * d + k] += lambda;
        }
        cholesky(a, d)?;
        cholesky_solve(a, d, x);
        Ok(())
    }
}

/// One half-step: every row of `target` (rows x dim) solved against the fixed `other` side
/// ([`RowSystem::solve`]).
fn solve_rows(
    target: &mut [f64],
    observed: &[Vec<u32>],
    other: &[f64],
    gram: &[f64],
    other_count: usize,
    options: &IalsOptions,
) -> Result<(), RankError> {
    let d = options.dim;
    let rows = observed.len();
    let per_thread = rows.div_ceil(options.threads.max(1)).max(1);
    let system = &RowSystem {
        gram,
        reg: options.reg,
        unobserved: options.unobserved,
        other_count,
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = target
            .chunks_mut(per_thread * d)
            .zip(observed.chunks(per_thread))
            .map(|(out, obs)| {
                scope.spawn(move || -> Result<(), RankError> {
                    let mut a = vec![0.0; d * d];
                    for (x, seen) in out.chunks_exact_mut(d).zip(obs) {
                        let vectors = seen
                            .iter()
                            .map(|&o| &other[o as usize * d..(o as usize + 1) * d]);
                        system.solve(&mut a, x, vectors)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(RankError::Internal("an iALS worker panicked".into())))
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two taste groups: users of items 0-3 and users of items 4-7, each user holding out
    /// nothing; a user with part of one group's items must get the rest of that group first.
    fn two_groups() -> Interactions {
        let mut users = Vec::new();
        for u in 0..40u32 {
            let base = if u % 2 == 0 { 0 } else { 4 };
            // Each user skips one of their group's four items, in turn.
            let skip = (u / 2) % 4;
            users.push((0..4).filter(|&i| i != skip).map(|i| base + i).collect());
        }
        Interactions { n_items: 8, users }
    }

    #[test]
    fn recommends_the_rest_of_the_users_group() {
        let data = two_groups();
        let model = Ials::fit(
            &data,
            &IalsOptions {
                dim: 4,
                ..IalsOptions::default()
            },
        )
        .unwrap();
        for (history, group) in [(vec![0u32, 1], 0..4u32), (vec![5u32, 6, 7], 4..8)] {
            let scores = model.scores(&history);
            let mut rest: Vec<u32> = (0..8).filter(|i| !history.contains(i)).collect();
            rest.sort_by(|a, b| scores[*b as usize].total_cmp(&scores[*a as usize]));
            let want = group.clone().filter(|i| !history.contains(i)).count();
            assert!(
                rest[..want].iter().all(|i| group.contains(i)),
                "history {history:?}: top {:?} should be the rest of {group:?} (scores {scores:?})",
                &rest[..want]
            );
        }
        // The reason names the history item that pulled a recommendation up: item 2 comes
        // from 0 or 1 (its group), never from nothing.
        let folded = model.served().fold(&[0, 1, 5], 3);
        let scores = folded.scores();
        let (by, share) = folded.strongest_source(2).unwrap();
        assert!(by == 0 || by == 1, "item 2 credited to {by}");
        assert!(
            share > 0.0 && share <= scores[2] + 1e-6,
            "{share} of {}",
            scores[2]
        );
        // The shares add up to the score, for every item.
        for item in 0..8u32 {
            let total: f32 = folded.sources(item).map(|(_, share)| share).sum();
            assert!(
                (total - scores[item as usize]).abs() < 1e-4,
                "item {item}: shares {total} vs score {}",
                scores[item as usize]
            );
        }
        assert!(folded.strongest_source(99).is_none(), "unknown item");
    }

    /// `best` keeps only a running top: it must give exactly what sorting every item's score
    /// gives (positive scores only, the history left out, ties by row), for k under, around
    /// and over the number of positive scores.
    #[test]
    fn best_is_the_head_of_every_score_sorted() {
        // At the scale of a small fit, and far below f16's smallest number (a fit at 100k
        // items and users came out near 1e-6): the half-precision scan must rescale.
        for scale in [1.0, 1e-8] {
            best_at_scale(scale);
        }
    }

    fn best_at_scale(scale: f32) {
        let (dim, items) = (4, 3_000);
        let mut rng = crate::rng::XorShift::new(3);
        let vectors: Vec<f32> = (0..items * dim)
            // Coarse values: 625 distinct vectors for 3,000 items, so many scores tie exactly.
            .map(|_| scale * ((rng.unit() * 5.0).floor() as f32 - 2.0) / 4.0)
            .collect();
        let model = FoldIn::new(vectors, dim, 0.03, 0.03).unwrap();
        let history = [5, 17, 2_999];
        let folded = model.fold(&history, 0);
        let exact = folded.scores();
        let mut all: Vec<(u32, f32)> = exact
            .iter()
            .enumerate()
            .map(|(row, &s)| (row as u32, s))
            .filter(|&(row, s)| s > 0.0 && !history.contains(&row))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert!(
            all.len() > 1_000 && all.len() < items - 100,
            "{}",
            all.len()
        );
        for k in [1, 7, 250, 500, all.len() - 1, all.len(), items] {
            let want = &all[..k.min(all.len())];
            let got = folded.best(k, &history);
            if scale == 1.0 {
                // Coarse values are exact in f16: the very same answer.
                assert_eq!(got, want, "k = {k}");
                continue;
            }
            // Far from 1, "equal" vectors differ in the last bits of f32: items within f16
            // rounding of the k-th may trade places, nothing else.
            assert_eq!(got.len(), want.len(), "k = {k}");
            let edge = want.last().map_or(0.0, |w| w.1);
            for (i, &(row, score)) in got.iter().enumerate() {
                assert_eq!(
                    score, exact[row as usize],
                    "k = {k}: the f32 score of {row}"
                );
                assert!(
                    score >= edge * (1.0 - 1e-3),
                    "k = {k}: {row} at {score} < {edge}"
                );
                assert!(!history.contains(&row));
                if i > 0 {
                    assert!(got[i - 1].1 >= score, "k = {k}: best first");
                }
            }
        }
        assert!(folded.best(0, &history).is_empty());
        assert!(
            model.fold(&[], 0).best(10, &[]).is_empty(),
            "no history scores nothing"
        );
    }

    #[test]
    fn same_seed_same_model_and_empty_history_scores_zero() {
        let data = two_groups();
        let options = IalsOptions {
            dim: 4,
            ..IalsOptions::default()
        };
        let a = Ials::fit(&data, &options).unwrap();
        let b = Ials::fit(
            &data,
            &IalsOptions {
                threads: 1,
                ..options
            },
        )
        .unwrap();
        assert_eq!(a, b, "threads must not change the fit");
        assert!(a.scores(&[]).iter().all(|&s| s == 0.0));
        // An out-of-range history item is ignored, not a panic.
        assert_eq!(a.scores(&[0, 99]), a.scores(&[0]));
    }

    #[test]
    fn bad_options_and_data_are_refused() {
        let data = two_groups();
        for (options, what) in [
            (
                IalsOptions {
                    dim: 0,
                    ..IalsOptions::default()
                },
                "dim",
            ),
            (
                IalsOptions {
                    reg: 0.0,
                    ..IalsOptions::default()
                },
                "reg",
            ),
            (
                IalsOptions {
                    unobserved: f64::NAN,
                    ..IalsOptions::default()
                },
                "unobserved",
            ),
            (
                IalsOptions {
                    iterations: 0,
                    ..IalsOptions::default()
                },
                "iterations",
            ),
        ] {
            let err = Ials::fit(&data, &options).err().unwrap().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        let bad = Interactions {
            n_items: 2,
            users: vec![vec![0, 5]],
        };
        let err = Ials::fit(&bad, &IalsOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("item index 5"), "{err}");
    }
}
