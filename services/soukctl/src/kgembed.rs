//! `soukctl kg train | eval | similar | predict`: knowledge-graph embeddings.
//!
//! `kg eval` runs locally on a dataset directory with the same training and scoring code the
//! service uses (`souk-kg-embed`); `kg train` asks the service to train on its graph and
//! streams the progress; `similar` and `predict` query the stored embeddings.
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use souk_kg_embed::eval::Filter;
use souk_kg_embed::{Config, Dataset, Embeddings, Metrics, Model, evaluate};
use souk_proto::kg::v1 as kg;

/// Hyper-parameters shared by `kg train` and `kg eval`.
#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    /// transe, distmult or rotate.
    #[arg(long, default_value = "rotate")]
    pub model: Model,
    /// Vector size (RotatE: complex numbers, so 2x floats per entity).
    #[arg(long, default_value_t = 200)]
    pub dim: usize,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Negative samples per positive triple.
    #[arg(long, default_value_t = 128)]
    pub negatives: usize,
    /// Adam step size.
    #[arg(long = "lr", default_value_t = 1e-3)]
    pub learning_rate: f32,
    /// Divide the learning rate by 10 after this epoch (0: never).
    #[arg(long = "lr-drop-at", default_value_t = 0)]
    pub lr_drop_epoch: usize,
    /// γ of TransE and RotatE.
    #[arg(long, default_value_t = 6.0)]
    pub margin: f32,
    /// Self-adversarial sampling temperature α (0: uniform weights).
    #[arg(long = "adversarial", default_value_t = 0.5)]
    pub adversarial_temperature: f32,
    /// L2 weight on the touched embeddings. Keep it tiny: Adam rescales it, so on rows the
    /// loss barely moves it shrinks them at the full step size (DistMult on WN18RR: 0 to 5e-6
    /// give the same 0.415 MRR, 5e-5 collapses every vector to 0; BENCHMARKS.md).
    #[arg(long = "reg", default_value_t = 0.0)]
    pub regularization: f32,
    /// Weigh each positive (h, r, t) by 1 / sqrt(#(h, r) + #(t, r^-1)), as the RotatE
    /// reference code does: triples around hub entities count less.
    #[arg(long)]
    pub subsampling: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads; 0 is one per core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl EmbedArgs {
    #[must_use]
    pub fn config(&self) -> Config {
        Config {
            model: self.model,
            dim: self.dim,
            epochs: self.epochs,
            batch_size: self.batch_size,
            negatives: self.negatives,
            learning_rate: self.learning_rate,
            lr_drop_epoch: self.lr_drop_epoch,
            margin: self.margin,
            adversarial_temperature: self.adversarial_temperature,
            regularization: self.regularization,
            subsampling: self.subsampling,
            seed: self.seed,
            threads: self.threads,
        }
    }

    #[must_use]
    pub fn request(&self) -> kg::TrainEmbeddingsRequest {
        kg::TrainEmbeddingsRequest {
            model: kg::EmbeddingModel::from(self.model) as i32,
            dim: self.dim as u32,
            epochs: self.epochs as u32,
            batch_size: self.batch_size as u32,
            negatives: self.negatives as u32,
            learning_rate: self.learning_rate,
            margin: self.margin,
            seed: self.seed,
            adversarial_temperature: Some(self.adversarial_temperature),
            regularization: self.regularization,
            subsampling: self.subsampling,
            threads: self.threads as u32,
            lr_drop_epoch: self.lr_drop_epoch as u32,
        }
    }
}

#[must_use]
#[derive(Debug, Args)]
pub struct KgEvalArgs {
    /// A directory with train.txt, valid.txt and test.txt (head<TAB>relation<TAB>tail).
    #[arg(long)]
    pub dataset: PathBuf,
    #[command(flatten)]
    pub embed: EmbedArgs,
    /// Evaluate on the validation split every N epochs and keep the best epoch's embeddings
    /// for the test; 0 checks only after the last epoch.
    #[arg(long, default_value_t = 10)]
    pub valid_every: usize,
    /// Validation triples used for selection (the first N; 0 = all). Filtered ranking against
    /// every entity is the slow part of an evaluation.
    #[arg(long, default_value_t = 1000)]
    pub valid_triples: usize,
    /// Stop when this many validation checks in a row did not improve MRR (0: never). With
    /// `--lr-drop-at`, only checks after the drop count.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Only train and report epoch times (for speed comparisons): no validation, no test.
    #[arg(long)]
    pub train_only: bool,
}

/// Early stopping on validation checks.
struct Patience {
    /// Checks in a row without a better MRR before stopping; 0 never stops.
    limit: usize,
    /// The learning-rate drop epoch (0: none). A plateau before the drop is what the drop is
    /// for, so only checks after it count: a TransE run stopped at epoch 140 of a drop at 150
    /// gave 0.215 test MRR where the same run to the end gave 0.221.
    drop_epoch: usize,
    since_best: usize,
}

impl Patience {
    /// Records the check at `epoch`; false when training should stop.
    fn keep_going(&mut self, epoch: usize, improved: bool) -> bool {
        if improved {
            self.since_best = 0;
        } else if self.drop_epoch == 0 || epoch > self.drop_epoch {
            self.since_best += 1;
        }
        self.limit == 0 || self.since_best < self.limit
    }
}

/// Trains on train, keeps the epoch with the best validation MRR, reports filtered metrics on
/// test. The last printed line is the test result (`mrr=… hits@1=… hits@3=… hits@10=…`).
///
/// # Errors
/// A bad dataset or configuration.
pub fn eval(args: &KgEvalArgs) -> anyhow::Result<Metrics> {
    let started = Instant::now();
    let dataset = Dataset::load_dir(&args.dataset)?;
    let config = args.embed.config();
    config.validate()?;
    println!(
        "dataset {}: {} entities, {} relations, {} / {} / {} train / valid / test triples",
        args.dataset.display(),
        dataset.entities.len(),
        dataset.relations.len(),
        dataset.train.len(),
        dataset.valid.len(),
        dataset.test.len()
    );
    println!("config {config:?}");
    let filter = Filter::new([
        dataset.train.as_slice(),
        dataset.valid.as_slice(),
        dataset.test.as_slice(),
    ]);
    let valid: &[[u32; 3]] = if args.valid_triples == 0 {
        &dataset.valid
    } else {
        &dataset.valid[..args.valid_triples.min(dataset.valid.len())]
    };
    let mut best: Option<(f64, usize, Embeddings)> = None;
    let mut patience = Patience {
        limit: args.patience,
        drop_epoch: config.lr_drop_epoch,
        since_best: 0,
    };
    let mut train_seconds = 0.0f32;
    let trained = souk_kg_embed::train::train(
        &config,
        dataset.entities.len(),
        dataset.relations.len(),
        &dataset.train,
        |report, embeddings| {
            train_seconds += report.seconds;
            println!(
                "epoch {:>4}/{} loss {:.4} {:>8.0} triples/s {:.2} s",
                report.epoch, report.epochs, report.loss, report.triples_per_second, report.seconds
            );
            let check = !args.train_only
                && (report.epoch == report.epochs
                    || (args.valid_every > 0 && report.epoch % args.valid_every == 0));
            if !check {
                return true;
            }
            let metrics = evaluate(embeddings, valid, &filter);
            let improved = best.as_ref().is_none_or(|(mrr, _, _)| metrics.mrr > *mrr);
            println!(
                "  valid ({} triples) {metrics}{}",
                valid.len(),
                if improved { "  (best)" } else { "" }
            );
            if improved {
                best = Some((metrics.mrr, report.epoch, embeddings.clone()));
            }
            patience.keep_going(report.epoch, improved)
        },
    )?;
    if args.train_only {
        let seconds: Vec<f32> = trained.reports.iter().map(|r| r.seconds).collect();
        let mean = seconds.iter().sum::<f32>() / seconds.len().max(1) as f32;
        println!(
            "souk seconds/epoch {mean:.2} ({} triples/s)",
            (dataset.train.len() as f32 / mean).round()
        );
        return Ok(Metrics::default());
    }
    let (valid_mrr, epoch, embeddings) =
        best.unwrap_or((f64::NAN, trained.reports.len(), trained.embeddings));
    let eval_started = Instant::now();
    let metrics = evaluate(&embeddings, &dataset.test, &filter);
    println!(
        "test: best validation epoch {epoch} (valid mrr {valid_mrr:.3}); training {train_seconds:.0} s, test ranking {:.0} s, total {:.0} s",
        eval_started.elapsed().as_secs_f32(),
        started.elapsed().as_secs_f32()
    );
    println!(
        "mrr={:.3} hits@1={:.3} hits@3={:.3} hits@10={:.3}",
        metrics.mrr, metrics.hits_at_1, metrics.hits_at_3, metrics.hits_at_10
    );
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::Patience;

    /// Checks every 10 epochs; `improved` at each; the epoch where training stops.
    fn stops_at(limit: usize, drop_epoch: usize, improved: &[bool]) -> Option<usize> {
        let mut patience = Patience {
            limit,
            drop_epoch,
            since_best: 0,
        };
        improved
            .iter()
            .enumerate()
            .map(|(i, &better)| ((i + 1) * 10, better))
            .find(|&(epoch, better)| !patience.keep_going(epoch, better))
            .map(|(epoch, _)| epoch)
    }

    #[test]
    fn a_plateau_before_the_step_drop_does_not_stop_training() {
        let plateau = [true, true, false, false, false, false, false, false];
        // No drop: three flat checks stop it at epoch 50.
        assert_eq!(stops_at(3, 0, &plateau), Some(50));
        // Drop at 60: the flat checks at 30-60 do not count; 70 and 80 are 2 of 3.
        assert_eq!(stops_at(3, 60, &plateau), None);
        // Drop at 40: 50, 60, 70 count.
        assert_eq!(stops_at(3, 40, &plateau), Some(70));
        // An improvement resets the count; 0 never stops.
        assert_eq!(stops_at(2, 0, &[false, true, false, false]), Some(40));
        assert_eq!(stops_at(0, 0, &[false; 8]), None);
    }
}
