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
    let dim = groups
        .iter()
        .flat_map(|g| g.features.first())
        .map(Vec::len)
        .next()
        .unwrap_or(0);
    let rows: Vec<&Vec<f64>> = groups.iter().flat_map(|g| &g.features).collect();
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
    let mut diffs: Vec<(Vec<f64>, f64)> = Vec::new();
    for g in groups {
        for i in 0..g.gains.len() {
            for j in 0..g.gains.len() {
                if g.gains[i] > g.gains[j] {
                    let d = (0..dim)
                        .map(|k| (g.features[i][k] - g.features[j][k]) / scale[k])
                        .collect();
                    diffs.push((d, g.gains[i] - g.gains[j]));
                }
            }
        }
    }
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
}
