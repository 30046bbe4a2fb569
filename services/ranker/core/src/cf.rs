//! Collaborative filtering fitted on an implicit-feedback matrix: popularity, item-kNN (cosine)
//! EASE (Steck 2019: B = I - P / diag(P), P = (X'X + lambda I)^-1), DLAE, RP3beta and iALS
//! ([`Ials`]: user and item vectors by alternating least squares).
//!
//! Memory: EASE keeps a dense items x items matrix of f64 while fitting (n^2 x 8 bytes: 23 MB
//! for ML-100k's 1,682 items, 117 MB for Last.FM's 3,820, 5 GB for 25k items), so it is for
//! catalogs up to roughly 10k items; item-kNN keeps only the top neighbours of each item.
use std::collections::HashMap;

mod ials;
pub use ials::{FoldIn, Folded, Ials, IalsOptions};

/// Users' item sets over dense item indexes 0..n_items.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    pub n_items: usize,
    pub users: Vec<Vec<u32>>,
}

impl Interactions {
    /// Number of users per item.
    pub fn item_counts(&self) -> Vec<f64> {
        let mut counts = vec![0.0; self.n_items];
        for items in &self.users {
            for &i in items {
                counts[i as usize] += 1.0;
            }
        }
        counts
    }

    /// X'X + mu^2 S'S: co-occurrence counts plus side-information groups (each group of items
    /// acts as one pseudo-user of weight mu), dense row-major n x n.
    fn gram_with_side(&self, side: &[Vec<u32>], mu: f64) -> Vec<f64> {
        self.gram_weighted(side, mu, 0.0)
    }

    /// [`Self::gram_with_side`] with each user's row weighted by |items(u)|^-alpha (alpha 0:
    /// plain counts): heavy users' many co-occurrences count for less.
    fn gram_weighted(&self, side: &[Vec<u32>], mu: f64, alpha: f64) -> Vec<f64> {
        let n = self.n_items;
        let mut g = self.gram_alpha(alpha);
        if mu > 0.0 {
            let w = mu * mu;
            for items in side {
                for &a in items {
                    let row = &mut g[a as usize * n..(a as usize + 1) * n];
                    for &b in items {
                        row[b as usize] += w;
                    }
                }
            }
        }
        g
    }

    /// X'DX with D = diag(|items(u)|^-alpha): co-occurrence counts, dense row-major n x n.
    fn gram_alpha(&self, alpha: f64) -> Vec<f64> {
        let n = self.n_items;
        let mut g = vec![0.0; n * n];
        for items in &self.users {
            let w = if alpha == 0.0 {
                1.0
            } else {
                (items.len().max(1) as f64).powf(-alpha)
            };
            for &a in items {
                let row = &mut g[a as usize * n..(a as usize + 1) * n];
                for &b in items {
                    row[b as usize] += w;
                }
            }
        }
        g
    }
}

/// A fitted model scores every item for a user's history.
pub trait Recommender: Sync {
    /// Scores of all items for a user who interacted with `history`.
    fn scores(&self, history: &[u32]) -> Vec<f64>;
}

pub struct Popularity {
    counts: Vec<f64>,
}

impl Popularity {
    pub fn fit(data: &Interactions) -> Self {
        Self {
            counts: data.item_counts(),
        }
    }
}

impl Recommender for Popularity {
    fn scores(&self, _history: &[u32]) -> Vec<f64> {
        self.counts.clone()
    }
}

/// Item-kNN: cosine similarity of item columns, keeping each item's `k` nearest neighbours.
pub struct ItemKnn {
    neighbours: Vec<Vec<(u32, f64)>>,
    n_items: usize,
}

impl ItemKnn {
    /// Scores a history by summing its items' neighbour lists (each item's strongest first),
    /// the way the ranker serves any trained model ([`Neighbours`]).
    pub fn from_neighbours(neighbours: Vec<Vec<(u32, f64)>>, n_items: usize) -> Self {
        Self {
            neighbours,
            n_items,
        }
    }

    /// # Complexity
    /// O(sum over users of |items|^2) time, O(n_items x k) memory after fitting.
    pub fn fit(data: &Interactions, k: usize) -> Self {
        let counts = data.item_counts();
        let mut co: Vec<HashMap<u32, f64>> = vec![HashMap::new(); data.n_items];
        for items in &data.users {
            for &a in items {
                for &b in items {
                    if a != b {
                        *co[a as usize].entry(b).or_default() += 1.0;
                    }
                }
            }
        }
        let neighbours = co
            .into_iter()
            .enumerate()
            .map(|(a, row)| {
                let mut sims: Vec<(u32, f64)> = row
                    .into_iter()
                    .map(|(b, c)| (b, c / (counts[a] * counts[b as usize]).sqrt().max(1e-12)))
                    .collect();
                sims.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
                sims.truncate(k);
                sims
            })
            .collect();
        Self {
            neighbours,
            n_items: data.n_items,
        }
    }
}

impl Recommender for ItemKnn {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        let mut s = vec![0.0; self.n_items];
        for &h in history {
            for &(b, sim) in &self.neighbours[h as usize] {
                s[b as usize] += sim;
            }
        }
        s
    }
}

/// EASE: a dense item-item weight matrix with a zero diagonal.
pub struct Ease {
    b: Vec<f64>,
    n: usize,
}

impl Ease {
    /// # Errors
    /// When X'X + lambda I is not positive definite (lambda <= 0 on a singular Gram matrix).
    ///
    /// # Complexity
    /// O(n_items^3) time (one Cholesky factorisation and inverse), O(n_items^2) memory.
    pub fn fit(data: &Interactions, lambda: f64) -> Result<Self, crate::RankError> {
        Self::fit_with_side(data, &[], 0.0, lambda)
    }

    /// EASE with side information (Jeunen et al., 2020): each knowledge-graph fact shared by a
    /// set of items (an actor, a genre, an origin) acts as a pseudo-user weighted by `mu`, so
    /// the Gram matrix becomes X'X + mu^2 S'S. With `mu = 0` this is plain EASE.
    ///
    /// # Errors
    /// As [`Ease::fit`].
    pub fn fit_with_side(
        data: &Interactions,
        side: &[Vec<u32>],
        mu: f64,
        lambda: f64,
    ) -> Result<Self, crate::RankError> {
        let n = data.n_items;
        let mut g = data.gram_with_side(side, mu);
        for i in 0..n {
            g[i * n + i] += lambda;
        }
        let p = spd_inverse(g, n)?;
        let mut b = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    b[i * n + j] = -p[i * n + j] / p[j * n + j];
                }
            }
        }
        Ok(Self { b, n })
    }
}

impl Ease {
    /// DLAE (Steck 2020, "Autoencoders that don't overfit towards the identity"): a linear
    /// autoencoder trained with dropout `p` on its input, in closed form:
    /// B = (G + L)^-1 G = I - P L with L = diag(p / (1 - p) * diag(G)) + lambda I. Dropout
    /// penalises popular items' self-weights instead of forcing a zero diagonal.
    ///
    /// # Errors
    /// As [`Ease::fit`]; `p` must be in [0, 1).
    pub fn fit_dlae(
        data: &Interactions,
        side: &[Vec<u32>],
        mu: f64,
        lambda: f64,
        p: f64,
    ) -> Result<Self, crate::RankError> {
        Self::fit_dlae_weighted(data, side, mu, lambda, p, 0.0)
    }

    /// [`Ease::fit_dlae`] on a Gram matrix whose users are weighted by |items(u)|^-alpha.
    ///
    /// # Errors
    /// As [`Ease::fit_dlae`].
    pub fn fit_dlae_weighted(
        data: &Interactions,
        side: &[Vec<u32>],
        mu: f64,
        lambda: f64,
        p: f64,
        alpha: f64,
    ) -> Result<Self, crate::RankError> {
        if !(0.0..1.0).contains(&p) {
            return Err(crate::RankError::InvalidInput(format!(
                "dropout p must be in [0, 1), got {p}"
            )));
        }
        let n = data.n_items;
        let mut g = data.gram_weighted(side, mu, alpha);
        let penalty: Vec<f64> = (0..n)
            .map(|i| lambda + p / (1.0 - p) * g[i * n + i])
            .collect();
        for i in 0..n {
            g[i * n + i] += penalty[i];
        }
        let inv = spd_inverse(g, n)?;
        let mut b = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                b[i * n + j] = if i == j { 1.0 } else { 0.0 } - inv[i * n + j] * penalty[j];
            }
        }
        Ok(Self { b, n })
    }
}

impl Recommender for Ease {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        let mut s = vec![0.0; self.n];
        for &h in history {
            let row = &self.b[h as usize * self.n..(h as usize + 1) * self.n];
            s.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        s
    }
}

/// Inverse of a symmetric positive definite matrix (row-major) via Cholesky: A = L L',
/// A^-1 = L'^-1 L^-1. Loops run along rows so the inner products are contiguous.
fn spd_inverse(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>, crate::RankError> {
    cholesky(&mut a, n)?;
    // Inverse of L (lower triangular), row by row: M = L^-1.
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        let lii = a[i * n + i];
        m[i * n + i] = 1.0 / lii;
        for j in 0..i {
            // M[i][j] = -(sum_{k=j}^{i-1} L[i][k] M[k][j]) / L[i][i]
            let mut s = 0.0;
            for k in j..i {
                s += a[i * n + k] * m[k * n + j];
            }
            m[i * n + j] = -s / lii;
        }
    }
    // A^-1 = M' M: (A^-1)[i][j] = sum_k M[k][i] M[k][j], k >= max(i, j).
    let mut inv = vec![0.0; n * n];
    for k in 0..n {
        let row = &m[k * n..k * n + k + 1];
        for i in 0..=k {
            let mki = row[i];
            if mki == 0.0 {
                continue;
            }
            let out = &mut inv[i * n..i * n + k + 1];
            out.iter_mut().zip(row).for_each(|(o, mkj)| *o += mki * mkj);
        }
    }
    for i in 0..n {
        for j in 0..i {
            inv[i * n + j] = inv[j * n + i];
        }
    }
    Ok(inv)
}

/// Cholesky factorisation A = L L' in place: the lower triangle of `a` (row-major n x n)
/// becomes L; the upper triangle is left as it was.
///
/// # Errors
/// `InvalidInput` when A is not positive definite (the regulariser is too small).
fn cholesky(a: &mut [f64], n: usize) -> Result<(), crate::RankError> {
    let mut lj = vec![0.0; n];
    for j in 0..n {
        let row_j = &mut a[j * n..(j + 1) * n];
        let d = row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>();
        if d <= 0.0 || !d.is_finite() {
            return Err(crate::RankError::InvalidInput(format!(
                "matrix is not positive definite at row {j}; raise the regularisation"
            )));
        }
        let d = d.sqrt();
        row_j[j] = d;
        lj[..j].copy_from_slice(&row_j[..j]);
        for i in j + 1..n {
            let row_i = &mut a[i * n..(i + 1) * n];
            let dot: f64 = row_i[..j].iter().zip(&lj[..j]).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / d;
        }
    }
    Ok(())
}

/// Solves L L' x = b in place (`l` from [`cholesky`]).
fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        let dot: f64 = row.iter().zip(&b[..i]).map(|(x, y)| x * y).sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// RP3beta (Paudel et al. 2017): a two-step random walk item -> user -> item, with the landing
/// item's popularity divided out to the power `beta`: W[i][j] = sum over users u of i and j of
/// 1/|users(i)| x 1/|items(u)|, divided by |users(j)|^beta. Dense n x n.
pub struct Rp3Beta {
    w: Vec<f64>,
    n: usize,
}

impl Rp3Beta {
    /// # Complexity
    /// O(sum over users of |items|^2) time, O(n_items^2) memory.
    pub fn fit(data: &Interactions, beta: f64) -> Self {
        let n = data.n_items;
        let counts = data.item_counts();
        let mut w = vec![0.0; n * n];
        for items in &data.users {
            let per_user = 1.0 / items.len().max(1) as f64;
            for &i in items {
                let from = per_user / counts[i as usize].max(1.0);
                let row = &mut w[i as usize * n..(i as usize + 1) * n];
                for &j in items {
                    if i != j {
                        row[j as usize] += from;
                    }
                }
            }
        }
        let damp: Vec<f64> = counts.iter().map(|c| c.max(1.0).powf(-beta)).collect();
        for row in w.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(&damp).for_each(|(v, d)| *v *= d);
        }
        Self { w, n }
    }
}

impl Recommender for Rp3Beta {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        let mut s = vec![0.0; self.n];
        for &h in history {
            let row = &self.w[h as usize * self.n..(h as usize + 1) * self.n];
            s.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        s
    }
}

/// Score-level fusion of two models: each user's scores from each model are scaled to a
/// maximum of 1, then `a + gamma x b`.
pub struct Blend<'a> {
    pub a: &'a dyn Recommender,
    pub b: &'a dyn Recommender,
    pub gamma: f64,
}

impl Recommender for Blend<'_> {
    fn scores(&self, history: &[u32]) -> Vec<f64> {
        let scale = |v: &mut Vec<f64>| {
            let max = v.iter().copied().fold(0.0f64, f64::max);
            if max > 0.0 {
                v.iter_mut().for_each(|x| *x /= max);
            }
        };
        let mut a = self.a.scores(history);
        scale(&mut a);
        if self.gamma == 0.0 {
            return a;
        }
        let mut b = self.b.scores(history);
        scale(&mut b);
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += self.gamma * y);
        a
    }
}

/// Each item's `k` strongest positive neighbours (never itself), strongest first.
pub trait Neighbours {
    fn neighbours(&self, k: usize) -> Vec<Vec<(u32, f64)>>;
}

/// Item `i`'s `k` strongest positive neighbours from its dense row of item-item weights
/// (itself skipped), strongest first, ties by index.
fn strongest(i: usize, weights: impl Iterator<Item = f64>, k: usize) -> Vec<(u32, f64)> {
    let mut best: Vec<(u32, f64)> = weights
        .enumerate()
        .filter(|&(j, w)| j != i && w > 0.0)
        .map(|(j, w)| (j as u32, w))
        .collect();
    let keep = k.min(best.len());
    if keep > 0 && keep < best.len() {
        best.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1));
    }
    best.truncate(keep);
    best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    best
}

impl Neighbours for Ease {
    fn neighbours(&self, k: usize) -> Vec<Vec<(u32, f64)>> {
        self.b
            .chunks_exact(self.n)
            .enumerate()
            .map(|(i, row)| strongest(i, row.iter().copied(), k))
            .collect()
    }
}

impl Neighbours for ItemKnn {
    fn neighbours(&self, k: usize) -> Vec<Vec<(u32, f64)>> {
        self.neighbours
            .iter()
            .map(|row| row.iter().take(k).copied().collect())
            .collect()
    }
}

/// Which item-to-item model `soukctl train cf` fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfAlgorithm {
    Ease,
    ItemKnn,
    Ials,
}

impl CfAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            CfAlgorithm::Ease => "ease",
            CfAlgorithm::ItemKnn => "item-knn",
            CfAlgorithm::Ials => "ials",
        }
    }
}

/// Settings of a served CF fit.
#[derive(Debug, Clone, Copy)]
pub struct CfOptions {
    pub algorithm: CfAlgorithm,
    /// EASE's L2 weight.
    pub lambda: f64,
    /// Only the most-interacted items are modelled (EASE is cubic in them).
    pub max_items: usize,
    /// Neighbours kept per item.
    pub neighbours: usize,
    /// iALS's settings (used when `algorithm` is `Ials`; its `threads` are the fit's).
    pub ials: IalsOptions,
}

/// Most items a served EASE or item-kNN fit models: EASE holds n x n f64 while fitting
/// (800 MB at 10k), and both are served as per-item neighbour lists of strings (~39 bytes per
/// neighbour, 38 MB at 10k x 100).
pub const MAX_CF_ITEMS: usize = 10_000;

/// Most items a served iALS fit models: nothing in its fit or its served form is items x items
/// (100k items at dim 64: 26 MB of f32 vectors; fit and fold-in times in BENCHMARKS.md).
pub const MAX_FACTOR_ITEMS: usize = 100_000;

impl CfAlgorithm {
    /// The largest `max_items` this algorithm accepts.
    pub fn max_items(self) -> usize {
        match self {
            CfAlgorithm::Ease | CfAlgorithm::ItemKnn => MAX_CF_ITEMS,
            CfAlgorithm::Ials => MAX_FACTOR_ITEMS,
        }
    }
}

impl Default for CfOptions {
    fn default() -> Self {
        Self {
            algorithm: CfAlgorithm::Ease,
            lambda: 200.0,
            max_items: 3_000,
            neighbours: 100,
            ials: IalsOptions::default(),
        }
    }
}

impl CfOptions {
    /// # Errors
    /// `InvalidInput` naming the setting out of range.
    pub fn validate(&self) -> Result<(), crate::RankError> {
        let bad = |m: String| Err(crate::RankError::InvalidInput(m));
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return bad(format!(
                "lambda must be a positive number, got {}",
                self.lambda
            ));
        }
        let most = self.algorithm.max_items();
        if !(2..=most).contains(&self.max_items) {
            return bad(format!(
                "max_items must be 2..={most} for {}, got {}",
                self.algorithm.name(),
                self.max_items
            ));
        }
        if !(1..=1_000).contains(&self.neighbours) {
            return bad(format!(
                "neighbors must be 1..=1000, got {}",
                self.neighbours
            ));
        }
        if self.algorithm == CfAlgorithm::Ials {
            self.ials.validate()?;
        }
        Ok(())
    }
}

/// A collaborative filter fitted offline and served. The ranker adds its scores to the
/// online co-occurrence.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedCf {
    pub version: String,
    pub algorithm: String,
    pub users: usize,
    /// EASE and item-kNN: each modelled item's strongest neighbours by catalog id.
    pub neighbours: HashMap<String, Vec<(String, f32)>>,
    /// iALS: the item vectors a history is folded into at `Rank`.
    pub factors: Option<ItemFactors>,
}

/// A factor model as served: the modelled items' catalog ids in the vectors' row order.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFactors {
    pub items: Vec<String>,
    pub model: FoldIn,
}

impl TrainedCf {
    /// Items the model scores from.
    pub fn items(&self) -> usize {
        match &self.factors {
            Some(f) => f.items.len(),
            None => self.neighbours.len(),
        }
    }
}

/// Fits `options.algorithm` on users' item sets (catalog ids). Items are the `max_items` with
/// the most users (ties by id, so a refit on the same events gives the same model).
///
/// # Errors
/// `InvalidInput` for bad options or fewer than two items with events.
///
/// # Complexity
/// EASE: O(n^3) time, O(n^2) memory for n = min(items, max_items); item-kNN: O(sum |user|^2);
/// iALS: O(iterations x (nnz x dim^2 + (users + n) x dim^3)), O((users + n) x dim) memory.
pub fn fit_served(
    users: &[Vec<String>],
    options: &CfOptions,
    version: String,
) -> Result<TrainedCf, crate::RankError> {
    options.validate()?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for items in users {
        for item in items {
            *counts.entry(item.as_str()).or_default() += 1;
        }
    }
    let mut items: Vec<(&str, usize)> = counts.into_iter().collect();
    items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    items.truncate(options.max_items);
    if items.len() < 2 {
        return Err(crate::RankError::InvalidInput(format!(
            "collaborative filtering needs events on at least 2 items, the log has {}",
            items.len()
        )));
    }
    let index: HashMap<&str, u32> = items
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i as u32))
        .collect();
    let data = Interactions {
        n_items: items.len(),
        users: users
            .iter()
            .map(|u| {
                let mut set: Vec<u32> = u
                    .iter()
                    .filter_map(|i| index.get(i.as_str()).copied())
                    .collect();
                set.sort_unstable();
                set.dedup();
                set
            })
            .filter(|s| !s.is_empty())
            .collect(),
    };
    let name = |i: u32| items[i as usize].0.to_string();
    let lists = |neighbours: Vec<Vec<(u32, f64)>>| {
        neighbours
            .into_iter()
            .enumerate()
            .filter(|(_, row)| !row.is_empty())
            .map(|(i, row)| {
                let row = row.into_iter().map(|(j, w)| (name(j), w as f32)).collect();
                (name(i as u32), row)
            })
            .collect()
    };
    let (neighbours, factors) = match options.algorithm {
        CfAlgorithm::Ease => (
            lists(Ease::fit(&data, options.lambda)?.neighbours(options.neighbours)),
            None,
        ),
        CfAlgorithm::ItemKnn => (
            lists(ItemKnn::fit(&data, options.neighbours).neighbours(options.neighbours)),
            None,
        ),
        CfAlgorithm::Ials => (
            HashMap::new(),
            Some(ItemFactors {
                items: (0..items.len() as u32).map(name).collect(),
                model: Ials::fit(&data, &options.ials)?.into_served(),
            }),
        ),
    };
    Ok(TrainedCf {
        version,
        algorithm: options.algorithm.name().to_string(),
        users: data.users.len(),
        neighbours,
        factors,
    })
}

/// The top `k` items by score, skipping `exclude` (the user's training items).
pub fn top_k(scores: &[f64], exclude: &std::collections::HashSet<u32>, k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..scores.len() as u32)
        .filter(|i| !exclude.contains(i))
        .collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    });
    idx.truncate(k);
    idx.sort_by(|a, b| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_fit_links_items_bought_together_and_validates() {
        // a+b are bought together by many users, c+d by others; e once with a.
        let mut users: Vec<Vec<String>> = Vec::new();
        for _ in 0..20 {
            users.push(vec!["a".into(), "b".into()]);
            users.push(vec!["c".into(), "d".into()]);
        }
        users.push(vec!["a".into(), "e".into()]);
        for algorithm in [CfAlgorithm::Ease, CfAlgorithm::ItemKnn, CfAlgorithm::Ials] {
            let options = CfOptions {
                algorithm,
                lambda: 1.0,
                ..CfOptions::default()
            };
            let model = fit_served(&users, &options, "v".into()).unwrap();
            let after_a = ranked_after(&model, "a");
            assert_eq!(after_a[0].0, "b", "{algorithm:?}: {after_a:?}");
            assert_eq!(ranked_after(&model, "d")[0].0, "c", "{algorithm:?}");
            // What was never bought with a is not recommended after it (iALS scores every
            // item, so "not" means under a tenth of b's score).
            assert!(
                after_a
                    .iter()
                    .all(|(n, w)| n != "a" && (n != "c" || *w < 0.1 * after_a[0].1)),
                "{algorithm:?}: {after_a:?}"
            );
        }
        let one_item = vec![vec!["a".to_string()]];
        assert!(fit_served(&one_item, &CfOptions::default(), "v".into()).is_err());
        let bad = CfOptions {
            lambda: f64::NAN,
            ..CfOptions::default()
        };
        assert!(fit_served(&users, &bad, "v".into()).is_err());
        let capped = CfOptions {
            max_items: 2,
            lambda: 1.0,
            ..CfOptions::default()
        };
        let model = fit_served(&users, &capped, "v".into()).unwrap();
        assert!(model.neighbours.keys().all(|k| k == "a" || k == "b"));
        // iALS has no items x items matrix anywhere, so it takes ten times EASE's cap.
        let wide = |algorithm| CfOptions {
            algorithm,
            max_items: MAX_CF_ITEMS + 1,
            ..CfOptions::default()
        };
        let err = wide(CfAlgorithm::Ease).validate().unwrap_err().to_string();
        assert!(
            err.contains("max_items must be 2..=10000 for ease"),
            "{err}"
        );
        assert!(wide(CfAlgorithm::Ials).validate().is_ok());
        let over = CfOptions {
            max_items: MAX_FACTOR_ITEMS + 1,
            ..wide(CfAlgorithm::Ials)
        };
        assert!(over.validate().is_err());
    }

    /// What a served model recommends after `item` alone, strongest first, `item` left out.
    fn ranked_after(model: &TrainedCf, item: &str) -> Vec<(String, f32)> {
        let mut out: Vec<(String, f32)> = match &model.factors {
            None => model.neighbours.get(item).cloned().unwrap_or_default(),
            Some(f) => {
                let row = f.items.iter().position(|i| i == item).unwrap() as u32;
                let scores = f.model.fold(&[row], 0).scores();
                f.items
                    .iter()
                    .cloned()
                    .zip(scores)
                    .filter(|(i, s)| i != item && *s > 0.0)
                    .collect()
            }
        };
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    #[test]
    fn spd_inverse_inverts() {
        let a = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = spd_inverse(a.clone(), 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!(
                    (v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12,
                    "A A^-1 = I at ({i},{j}): {v}"
                );
            }
        }
        assert!(
            spd_inverse(vec![1.0, 2.0, 2.0, 1.0], 2).is_err(),
            "indefinite"
        );
        let pair = Interactions {
            n_items: 2,
            users: vec![vec![0, 1]],
        };
        assert!(
            Ease::fit_dlae(&pair, &[], 0.0, 1.0, 1.0).is_err(),
            "dropout 1 is refused"
        );
    }

    #[test]
    fn ease_and_knn_recommend_the_co_occurring_item() {
        // Items 0 and 1 always together; 2 and 3 together.
        let data = Interactions {
            n_items: 4,
            users: vec![
                vec![0, 1],
                vec![0, 1],
                vec![2, 3],
                vec![2, 3],
                vec![0, 1, 2],
            ],
        };
        let models: Vec<Box<dyn Recommender>> = vec![
            Box::new(Ease::fit(&data, 1.0).unwrap()),
            Box::new(Ease::fit_dlae(&data, &[], 0.0, 1.0, 0.25).unwrap()),
            Box::new(Ease::fit_with_side(&data, &[vec![0, 1]], 0.5, 1.0).unwrap()),
            Box::new(ItemKnn::fit(&data, 10)),
            Box::new(Rp3Beta::fit(&data, 0.5)),
        ];
        let ease = Ease::fit(&data, 1.0).unwrap();
        let walk = Rp3Beta::fit(&data, 0.5);
        let blend = Blend {
            a: &ease,
            b: &walk,
            gamma: 0.5,
        };
        let blended = blend.scores(&[0]);
        assert!(blended[1] > blended[2], "{blended:?}");
        assert!(
            blended[1] <= 1.5 + 1e-9,
            "each part is scaled to a maximum of 1 before the blend: {blended:?}"
        );
        for model in models {
            let s = model.scores(&[0]);
            assert!(s[1] > s[2] && s[1] > s[3], "{s:?}");
            let top = top_k(&s, &[0].into_iter().collect(), 1);
            assert_eq!(top, vec![1]);
        }
    }
}
