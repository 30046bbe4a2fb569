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
//! Memory: the item vectors, n x dim f64 (2 MB for 3,820 items at dim 64); fitting also holds
//! the users' vectors. Unlike EASE nothing is n x n, except [`super::Neighbours`] for serving,
//! which walks the implied item-item matrix one row at a time.
use super::{Interactions, Neighbours, Recommender, cholesky, cholesky_solve, strongest};
use crate::RankError;

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

/// A fitted iALS model: the item vectors and what folding a user in needs.
pub struct Ials {
    dim: usize,
    n_items: usize,
    /// n_items x dim, row-major.
    items: Vec<f64>,
    /// alpha0 H'H, dim x dim.
    gram: Vec<f64>,
    reg: f64,
    unobserved: f64,
    /// Mean history length of the training users: the typical user that the item-item
    /// matrix behind [`Neighbours`] stands for.
    mean_history: f64,
    threads: usize,
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
        let total: usize = data.users.iter().map(Vec::len).sum();
        Ok(Self {
            dim,
            n_items,
            gram: weighted_gram(&items, dim, options.unobserved),
            items,
            reg: options.reg,
            unobserved: options.unobserved,
            mean_history: total as f64 / n_users.max(1) as f64,
            threads: options.threads.max(1),
        })
    }

    /// The user vector that best explains `history` against the fitted items (one user
    /// half-step, the same solve as the fit's); zeros for an empty history. Item indexes out
    /// of range are skipped.
    fn fold_in(&self, history: &[u32]) -> Vec<f64> {
        let d = self.dim;
        let seen = history
            .iter()
            .filter_map(|&h| self.items.get(h as usize * d..(h as usize + 1) * d));
        let mut a = vec![0.0; d * d];
        let mut x = vec![0.0; d];
        let system = RowSystem {
            gram: &self.gram,
            reg: self.reg,
            unobserved: self.unobserved,
            other_count: self.n_items,
        };
        // The Gram matrix plus a positive diagonal is positive definite.
        if system.solve(&mut a, &mut x, seen).is_err() {
            x.fill(0.0);
        }
        x
    }
}

impl Recommender for Ials {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        let w = self.fold_in(history);
        self.items
            .chunks_exact(self.dim)
            .map(|v| dot(v, &w))
            .collect()
    }
}

impl Neighbours for Ials {
    /// Item-item weights of the fold-in with its history-dependent terms frozen at the
    /// typical user: B = H M^-1 H' with M = alpha0 H'H + reg (mean history + alpha0 n) I.
    /// Summing B's rows over a history is then close to folding the history in (on Last.FM
    /// 0.406 Recall@20 with 100 neighbours per item against 0.424 folded in).
    ///
    /// # Complexity
    /// O(n^2 x dim / threads) time, O(n x (dim + k)) memory: B is walked one row at a time.
    fn neighbours(&self, k: usize) -> Vec<Vec<(u32, f64)>> {
        let d = self.dim;
        let mut m = self.gram.clone();
        let lambda = self.reg * (self.mean_history + self.unobserved * self.n_items as f64);
        for i in 0..d {
            m[i * d + i] += lambda;
        }
        if cholesky(&mut m, d).is_err() {
            return vec![Vec::new(); self.n_items];
        }
        // W = H M^-1, row by row; then B[i][j] = <W_i, H_j>.
        let projected: Vec<f64> = self
            .items
            .chunks_exact(d)
            .flat_map(|v| {
                let mut x = v.to_vec();
                cholesky_solve(&m, d, &mut x);
                x
            })
            .collect();
        let row = |i: usize, w: &[f64]| -> Vec<(u32, f64)> {
            let weights = self.items.chunks_exact(d).map(|v| dot(v, w));
            let mut row = strongest(i, weights, k);
            // Unlike EASE's, these weights are dense: items that never met get rounding
            // noise (1e-10 where the strongest is 6), which would be served as "shoppers
            // who liked A also chose B". Below a thousandth of the strongest is no signal.
            let floor = row.first().map_or(0.0, |&(_, s)| s * 1e-3);
            row.retain(|&(_, s)| s > floor);
            row
        };
        let per_thread = self.n_items.div_ceil(self.threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = projected
                .chunks(per_thread * d)
                .enumerate()
                .map(|(c, chunk)| {
                    let row = &row;
                    scope.spawn(move || {
                        chunk
                            .chunks_exact(d)
                            .enumerate()
                            .map(|(i, w)| row(c * per_thread + i, w))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                // Nothing in a worker indexes by input; a panic there is a bug, passed on.
                .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
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

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
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

/// Seeded xorshift64*: the same seed gives the same model.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1u64 << 52) as f64 - 1.0
    }
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
        // Served neighbours say the same: an item's first neighbours are its group's.
        let neighbours = model.neighbours(3);
        for (i, row) in neighbours.iter().enumerate() {
            let group = if i < 4 { 0..4u32 } else { 4..8 };
            assert!(!row.is_empty(), "item {i} has no neighbours");
            assert!(
                row.iter()
                    .all(|(j, _)| group.contains(j) && *j as usize != i),
                "item {i}: {row:?}"
            );
        }
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
        assert_eq!(a.items, b.items, "threads must not change the fit");
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
