//! `soukctl train`: fit the ranker's models and hand them to the running service, which
//! stores them with a version and ranks with them from the next request on.
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use souk_proto::ranker::v1 as rk;
use souk_ranker_core::fusion::{Group, LinearModel, TrainOptions, train};

use crate::{Endpoints, connect, with_token};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Fit the collaborative filter (EASE, item-kNN or iALS) on the ranker's stored events.
    Cf(CfArgs),
    /// Learn the fusion weights, then store them in the ranker: from graded judgements
    /// (`--labels`, CSV `query,product_title,product_description,median_relevance`: dense vs
    /// BM25 for searches; needs the encoder), or from a click log of the lists `Rank` showed
    /// (`--feedback`, CSV `request_id,position,item_id,clicked,query,dense,bm25,cf,kg,popularity`
    /// and optionally `page_item`, with the signal values `Rank` returned under `all_signals`:
    /// every weight of the search, recommendation and item-page sets).
    Fusion(FusionArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algorithm {
    Ease,
    ItemKnn,
    /// Alternating least squares on user and item vectors: on sparse logs (Last.FM) ahead of
    /// EASE, on denser ones (ML-100k) behind; BENCHMARKS.md has both.
    Ials,
}

#[derive(Debug, Args)]
pub struct CfArgs {
    #[arg(long, value_enum, default_value = "ease")]
    pub algorithm: Algorithm,
    /// EASE's L2 weight.
    #[arg(long, default_value_t = 200.0)]
    pub lambda: f32,
    /// Only the most-interacted items are modelled (EASE is cubic in them; at most 10,000 for
    /// EASE and item-kNN, 100,000 for iALS).
    #[arg(long, default_value_t = 3_000)]
    pub max_items: u32,
    /// EASE and item-kNN: neighbours kept per item (iALS is served by folding the shopper's
    /// items into a user vector, with no lists).
    #[arg(long, default_value_t = 100)]
    pub neighbors: u32,
    /// iALS: vector size.
    #[arg(long, default_value_t = 64)]
    pub dim: u32,
    /// iALS: L2 weight (scaled per user and item by how much each has seen).
    #[arg(long, default_value_t = 0.03)]
    pub reg: f32,
    /// iALS: weight alpha0 of every unobserved (user, item) pair.
    #[arg(long, default_value_t = 0.03)]
    pub alpha0: f32,
    /// iALS: alternations.
    #[arg(long, default_value_t = 10)]
    pub iterations: u32,
}

#[derive(Debug, Args)]
pub struct FusionArgs {
    /// Graded judgements.
    #[arg(long, required_unless_present = "feedback")]
    pub labels: Option<PathBuf>,
    /// A click log of shown lists (see the command's help).
    #[arg(long, conflicts_with = "labels")]
    pub feedback: Option<PathBuf>,
    /// Feedback: rank r is taken as looked at with probability 1/r^this (0 trusts every
    /// click alike). `auto`: estimated from the log, from searches whose items were shown
    /// at different positions for the same query (1 when too few clicks tell).
    // Spelled out so that clap takes the parser's `Option` as the value (`auto` is `None`)
    // instead of reading the field as an optional f64 and panicking at the first access.
    #[arg(long, default_value = "auto", value_parser = parse_position_bias)]
    pub position_bias: ::std::option::Option<f64>,
    /// Feedback: lists with a click needed before a weight set is replaced.
    #[arg(long, default_value_t = 20)]
    pub min_lists: usize,
    /// Folds over queries for the held-out report (the stored model is fitted on all).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Queries with fewer judged products are skipped.
    #[arg(long, default_value_t = 5)]
    pub min_judged: usize,
    /// Vector cache shared with `eval search --cache`.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Version to store the model under (default: "fusion-<unix time>").
    #[arg(long, default_value = "")]
    pub version: String,
    /// Report only; do not change the ranker.
    #[arg(long)]
    pub dry_run: bool,
}

/// # Errors
/// Unreachable services, unreadable files, a refused model.
pub async fn run(command: TrainCommand, ep: &Endpoints) -> anyhow::Result<()> {
    match command {
        TrainCommand::Cf(args) => cf(args, ep).await,
        TrainCommand::Fusion(args) => match &args.feedback {
            Some(log) => {
                let options = crate::feedback::FeedbackOptions {
                    position_bias: args.position_bias,
                    min_lists: args.min_lists,
                    folds: args.folds,
                };
                crate::feedback::learn(log, &options, &args.version, args.dry_run, ep)
                    .await
                    .map(|_| ())
            }
            None => fusion(args, ep).await,
        },
    }
}

/// `--position-bias`: `auto` (`None`) or an exponent in 0..=4.
fn parse_position_bias(text: &str) -> Result<Option<f64>, String> {
    if text == "auto" {
        return Ok(None);
    }
    let max = souk_ranker_core::propensity::MAX_EXPONENT;
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=max).contains(&v) => Ok(Some(v)),
        _ => Err(format!(
            "expected `auto` or a number in 0..={max}, got {text:?}"
        )),
    }
}

async fn cf(args: CfArgs, ep: &Endpoints) -> anyhow::Result<()> {
    let mut client = rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
    let algorithm = match args.algorithm {
        Algorithm::Ease => rk::CfAlgorithm::Ease,
        Algorithm::ItemKnn => rk::CfAlgorithm::ItemKnn,
        Algorithm::Ials => rk::CfAlgorithm::Ials,
    };
    let r = client
        .train_cf(with_token(
            rk::TrainCfRequest {
                algorithm: algorithm as i32,
                lambda: args.lambda,
                max_items: args.max_items,
                neighbors: args.neighbors,
                dim: args.dim,
                reg: args.reg,
                unobserved: args.alpha0,
                iterations: args.iterations,
            },
            &ep.token,
        )?)
        .await?
        .into_inner();
    println!(
        "collaborative filter {} fitted on {} items / {} users in {:.2}s; stored and serving",
        r.version, r.items, r.users, r.seconds
    );
    Ok(())
}

/// The service's query-time features of a judged pair: dense cosine of the query and the
/// item text (title. description), clamped at 0 like `Rank`, and its lexical relevance as
/// `Rank` computes it (the query's words in the title, and BM25 over the item text).
fn service_features(groups: &[(String, Group)]) -> Vec<Group> {
    use crate::eval::{RANK_DENSE, RANK_LEXICAL};
    groups
        .iter()
        .map(|(_, g)| Group {
            features: g
                .features
                .iter()
                .map(|f| vec![f[RANK_DENSE].max(0.0), f[RANK_LEXICAL]])
                .collect(),
            gains: g.gains.clone(),
        })
        .collect()
}

/// The learned (dense, bm25) weights on the raw features, scaled to `budget`.
fn raw_weights(model: &LinearModel, budget: f32) -> [f32; 2] {
    let w = model.raw_weights(f64::from(budget));
    [w[0] as f32, w[1] as f32]
}

fn ndcg(groups: &[&Group], weights: [f32; 2], k: usize) -> f64 {
    crate::eval::mean_ndcg(groups, k, |x| {
        f64::from(weights[0]) * x[0] + f64::from(weights[1]) * x[1]
    })
}

/// What `train fusion` measured and stored.
#[derive(Debug, Clone)]
pub struct FusionReport {
    pub queries: usize,
    /// Held-out NDCG@10 of the weights in use before, and of the learned ones.
    pub current_ndcg: f64,
    pub learned_ndcg: f64,
    /// Learned (dense, bm25) weights.
    pub weights: [f32; 2],
    /// The stored version; `None` on a dry run.
    pub version: Option<String>,
}

async fn fusion(args: FusionArgs, ep: &Endpoints) -> anyhow::Result<()> {
    learn_fusion(&args, ep).await.map(|_| ())
}

/// Learns the query-time weights from `args.labels`, prints the held-out comparison and, unless
/// a dry run, stores them in the ranker (keeping its personal and recommendation weights).
///
/// # Errors
/// Unreachable services, an unreadable or malformed file, fewer than 2 usable queries.
pub async fn learn_fusion(args: &FusionArgs, ep: &Endpoints) -> anyhow::Result<FusionReport> {
    let mut client = rk::ranker_client::RankerClient::new(connect(&ep.ranker, "ranker").await?);
    let current = client
        .get_fusion(rk::GetFusionRequest {})
        .await?
        .into_inner();
    let q = current
        .with_query
        .ok_or_else(|| anyhow::anyhow!("the ranker sent no with_query weights"))?;
    let budget = q.dense.abs() + q.bm25.abs();
    let labels = args
        .labels
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("give --labels FILE (or --feedback LOG)"))?;
    let judged = crate::eval::read_judged(labels, false)?;
    let groups = service_features(
        &crate::eval::features(
            &judged,
            &ep.encoder,
            args.min_judged,
            args.cache.as_deref(),
            crate::eval::Typing::default(),
        )
        .await?,
    );
    anyhow::ensure!(
        groups.len() >= 2,
        "{}: {} queries with at least {} judged products; need 2",
        labels.display(),
        groups.len(),
        args.min_judged
    );
    let k = 10;
    let folds = args.folds.clamp(2, groups.len());
    let (mut before, mut after) = (0.0, 0.0);
    for fold in 0..folds {
        let (held, rest) = crate::eval::fold_split(&groups, folds, fold);
        let rest: Vec<Group> = rest.into_iter().cloned().collect();
        let learned = raw_weights(&train(&rest, TrainOptions::default()), budget);
        before += ndcg(&held, [q.dense, q.bm25], k) * held.len() as f64;
        after += ndcg(&held, learned, k) * held.len() as f64;
    }
    let n = groups.len() as f64;
    let learned = raw_weights(&train(&groups, TrainOptions::default()), budget);
    let mut report = FusionReport {
        queries: groups.len(),
        current_ndcg: before / n,
        learned_ndcg: after / n,
        weights: learned,
        version: None,
    };
    println!(
        "{} queries; held-out ndcg@{k} ({folds}-fold over queries): current {} (dense {:.3}, bm25 {:.3}) {:.4}, learned (dense {:.3}, bm25 {:.3}) {:.4}",
        report.queries,
        current.version,
        q.dense,
        q.bm25,
        report.current_ndcg,
        learned[0],
        learned[1],
        report.learned_ndcg
    );
    if args.dry_run {
        println!("dry run: the ranker keeps {}", current.version);
        return Ok(report);
    }
    let model = rk::FusionModel {
        version: args.version.clone(),
        with_query: Some(rk::FusionWeights {
            dense: learned[0],
            bm25: learned[1],
            ..q
        }),
        without_query: current.without_query,
        with_item: current.with_item,
    };
    report.version = Some(store_fusion(&mut client, model, ep).await?);
    Ok(report)
}

/// Stores `model` in the ranker (`SetFusion`), says so, and returns its version.
///
/// # Errors
/// An unreachable ranker, a refused model (InvalidArgument names the weight).
pub(crate) async fn store_fusion(
    client: &mut rk::ranker_client::RankerClient<tonic::transport::Channel>,
    model: rk::FusionModel,
    ep: &Endpoints,
) -> anyhow::Result<String> {
    let r = client
        .set_fusion(with_token(
            rk::SetFusionRequest { model: Some(model) },
            &ep.token,
        )?)
        .await?
        .into_inner();
    println!("fusion {} stored and serving", r.version);
    Ok(r.version)
}
