//! Learning-to-rank for the fusion: a linear model over signal features, fitted with a
//! pairwise logistic loss (RankNet) whose pairs are weighted by their gain difference (the
//! LambdaRank idea: swapping a 4 and a 1 costs more than a 3 and a 2).

/// One query's candidates: feature vectors and graded gains.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub features: Vec<Vec<f64>>,
    pub gains: Vec<f64>,
}

/// A fitted linear scorer with the standardisation it was trained under.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearModel {
    pub weights: Vec<f64>,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl LinearModel {
    /// The weights on the raw features instead of the standardised ones (a constant offset
    /// does not change an order), scaled to `budget` in absolute sum: what the served fusion
    /// takes. A feature (near) constant over the training rows gets 0 rather than its weight
    /// divided by a spread of ~0 (recommendations: dense and BM25 are always 0).
    pub fn raw_weights(&self, budget: f64) -> Vec<f64> {
        let raw: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.scale)
            .map(|(w, s)| if *s > 1e-6 { w / s } else { 0.0 })
            .collect();
        let total: f64 = raw.iter().map(|w| w.abs()).sum::<f64>().max(1e-12);
        raw.iter().map(|w| w * budget / total).collect()
    }

    pub fn score(&self, x: &[f64]) -> f64 {
        x.iter()
            .zip(&self.weights)
            .zip(self.mean.iter().zip(&self.scale))
            .map(|((v, w), (m, s))| w * (v - m) / s)
            .sum()
    }
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub iterations: usize,
    pub learning_rate: f64,
    pub l2: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            iterations: 400,
            learning_rate: 0.5,
            l2: 1e-3,
        }
    }
}

/// Fits weights by full-batch gradient descent on the weighted pairwise logistic loss.
///
/// # Complexity
/// O(iterations x pairs x features); pairs are those within a group with different gains.
pub fn train(groups: &[Group], options: TrainOptions) -> LinearModel {
    let rows: Vec<&Vec<f64>> = groups.iter().flat_map(|g| &g.features).collect();
    let pairs = groups.iter().flat_map(|g| {
        let n = g.gains.len();
        (0..n * n)
            .map(move |ij| (ij / n, ij % n))
            .filter(|&(i, j)| g.gains[i] > g.gains[j])
            .map(|(i, j)| (&g.features[i], &g.features[j], g.gains[i] - g.gains[j]))
    });
    fit(&rows, pairs, options)
}

/// The most a click's propensity weight may count (clipped inverse propensity scoring). The
/// rare clicks deep in a list would otherwise carry a weight of up to 10 each and decide the
/// fit by themselves: on the Crowdflower click simulation (5 seeds, BENCHMARKS.md) unclipped
/// weights gave 0.827-0.847 NDCG@10, under the shown order's 0.849; capped at 5, 0.861-0.867.
pub const CLICK_WEIGHT_CAP: f64 = 5.0;

/// One list a shopper was shown, from a feedback log: each item's features, where it was
/// shown (1 = first) and whether it was clicked (or bought).
#[derive(Debug, Clone, Default)]
pub struct ClickGroup {
    pub features: Vec<Vec<f64>>,
    pub positions: Vec<u32>,
    pub clicked: Vec<bool>,
}

impl ClickGroup {
    /// The preferences the list supports, with their weights: each clicked item beats every
    /// other item of the list, weighted by the inverse of the chance that the shopper looked
    /// at the clicked one's position, rank^`position_bias` capped at [`CLICK_WEIGHT_CAP`]
    /// (the propensity-weighted ranking
    /// loss of Joachims, Swaminathan & Schnabel 2017, "Unbiased learning-to-rank with biased
    /// feedback", under the position-based model where rank r is looked at with probability
    /// 1/r^position_bias). In expectation that is the loss of the items' true relevance, not
    /// of where the log happened to show them: clicks low in the list, which few shoppers
    /// reached, count for more. A list without clicks makes no pairs. (better, worse, weight).
    pub fn pairs(&self, position_bias: f64) -> Vec<(usize, usize, f64)> {
        let mut pairs = Vec::new();
        for (c, _) in self.clicked.iter().enumerate().filter(|(_, c)| **c) {
            let rank = self.positions.get(c).map_or(c + 1, |&p| p.max(1) as usize);
            let weight = (rank as f64).powf(position_bias).min(CLICK_WEIGHT_CAP);
            pairs.extend(
                (0..self.clicked.len())
                    .filter(|&j| j != c)
                    .map(|j| (c, j, weight)),
            );
        }
        pairs
    }
}

/// Fits weights on the preferences of a click log ([`ClickGroup::pairs`]), with the same
/// loss and standardisation as [`train`].
pub fn train_on_clicks(
    groups: &[&ClickGroup],
    position_bias: f64,
    options: TrainOptions,
) -> LinearModel {
    let rows: Vec<&Vec<f64>> = groups.iter().flat_map(|g| &g.features).collect();
    let pairs = groups.iter().flat_map(|g| {
        g.pairs(position_bias)
            .into_iter()
            .map(|(i, j, w)| (&g.features[i], &g.features[j], w))
    });
    fit(&rows, pairs, options)
}

/// Full-batch gradient descent on sum over pairs of weight x log(1 + exp(-(w . (better - worse))))
/// in the space standardised over `rows`.
fn fit<'a>(
    rows: &[&Vec<f64>],
    pairs: impl Iterator<Item = (&'a Vec<f64>, &'a Vec<f64>, f64)>,
    options: TrainOptions,
) -> LinearModel {
    let dim = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = (0..dim)
        .map(|d| rows.iter().map(|r| r[d]).sum::<f64>() / n)
        .collect();
    let scale: Vec<f64> = (0..dim)
        .map(|d| {
            (rows.iter().map(|r| (r[d] - mean[d]).powi(2)).sum::<f64>() / n)
                .sqrt()
                .max(1e-9)
        })
        .collect();
    // Pair differences in standardised space, with their weights.
    let diffs: Vec<(Vec<f64>, f64)> = pairs
        .map(|(better, worse, weight)| {
            let d = (0..dim)
                .map(|k| (better[k] - worse[k]) / scale[k])
                .collect();
            (d, weight)
        })
        .collect();
    let total_weight: f64 = diffs.iter().map(|(_, w)| w).sum::<f64>().max(1e-12);
    let mut w = vec![0.0; dim];
    for _ in 0..options.iterations {
        let mut grad = vec![0.0; dim];
        for (d, pw) in &diffs {
            let margin: f64 = d.iter().zip(&w).map(|(a, b)| a * b).sum();
            // d/dw log(1 + exp(-margin)) = -sigmoid(-margin) * d
            let s = 1.0 / (1.0 + margin.exp());
            for k in 0..dim {
                grad[k] -= pw * s * d[k];
            }
        }
        for k in 0..dim {
            w[k] -= options.learning_rate * (grad[k] / total_weight + options.l2 * w[k]);
        }
    }
    LinearModel {
        weights: w,
        mean,
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_to_prefer_the_informative_feature() {
        // Feature 0 tracks the gain, feature 1 is noise that anti-correlates a little.
        let groups: Vec<Group> = (0..20)
            .map(|q| {
                let features = (0..6)
                    .map(|i| vec![i as f64 + 0.1 * q as f64, ((i * 7 + q) % 5) as f64])
                    .collect();
                let gains = (0..6).map(|i| i as f64).collect();
                Group { features, gains }
            })
            .collect();
        let model = train(&groups, TrainOptions::default());
        assert!(
            model.weights[0] > 0.5 && model.weights[0] > model.weights[1].abs() * 3.0,
            "{:?}",
            model.weights
        );
        assert!(model.score(&[5.0, 0.0]) > model.score(&[1.0, 0.0]));
    }

    #[test]
    fn clicks_low_in_the_list_count_for_more() {
        let g = ClickGroup {
            features: vec![vec![0.0]; 4],
            positions: vec![1, 2, 3, 4],
            clicked: vec![true, false, true, false],
        };
        assert_eq!(
            g.pairs(1.0),
            vec![
                (0, 1, 1.0),
                (0, 2, 1.0),
                (0, 3, 1.0),
                (2, 0, 3.0),
                (2, 1, 3.0),
                (2, 3, 3.0)
            ]
        );
        assert_eq!(
            g.pairs(0.0)[3],
            (2, 0, 1.0),
            "no correction: every click weighs 1"
        );
        // Weighted by where it was shown, not by its place in the list, and clipped.
        let at = |positions: Vec<u32>| ClickGroup {
            positions,
            ..g.clone()
        };
        assert_eq!(at(vec![1, 2, 4, 6]).pairs(1.0)[3], (2, 0, 4.0));
        assert_eq!(
            at(vec![1, 2, 9, 10]).pairs(1.0)[3],
            (2, 0, CLICK_WEIGHT_CAP)
        );
        let none = ClickGroup {
            features: vec![vec![0.0]; 3],
            positions: vec![1, 2, 3],
            clicked: vec![false; 3],
        };
        assert!(none.pairs(1.0).is_empty(), "no click, no pairs");
    }

    #[test]
    fn clicks_under_position_bias_still_find_the_relevant_feature() {
        // Shown in the order of feature 1 (the old ranking, unrelated to relevance); rank r
        // is looked at with probability 1/r and a looked-at item is clicked by its relevance,
        // feature 0. Uncorrected, the clicks credit feature 1 for the position effect.
        let mut rng = crate::rng::XorShift::new(7);
        let mut uniform = move || rng.unit();
        let groups: Vec<ClickGroup> = (0..2000)
            .map(|q| {
                let rel: Vec<f64> = (0..8).map(|i| ((i * 5 + q) % 8) as f64 / 7.0).collect();
                let features: Vec<Vec<f64>> =
                    (0..8).map(|i| vec![rel[i], (8 - i) as f64]).collect();
                let clicked = (0..8)
                    .map(|i| uniform() < 1.0 / (i + 1) as f64 && uniform() < rel[i])
                    .collect();
                ClickGroup {
                    features,
                    positions: (1..=8).collect(),
                    clicked,
                }
            })
            .collect();
        let groups: Vec<&ClickGroup> = groups.iter().collect();
        let corrected = train_on_clicks(&groups, 1.0, TrainOptions::default());
        let naive = train_on_clicks(&groups, 0.0, TrainOptions::default());
        assert!(
            naive.weights[1] > 0.3,
            "uncorrected clicks credit the shown order: {:?}",
            naive.weights
        );
        // The shown order's share of the weights falls to under a third of the naive one's
        // (measured: 0.21 of feature 0's weight against 0.93; the clipping leaves a little).
        let share = |w: &[f64]| w[1].abs() / w[0];
        assert!(
            corrected.weights[0] > 0.5 && share(&corrected.weights) < 0.3 * share(&naive.weights),
            "corrected {:?}, naive {:?}",
            corrected.weights,
            naive.weights
        );
    }
}
