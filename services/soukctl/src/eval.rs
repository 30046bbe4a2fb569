//! `soukctl eval`: the standard metrics on real data, with the ranker's own scoring code.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use souk_ranker_core::cf::{Ease, ItemKnn, Popularity, Recommender};
use souk_ranker_core::eval::RecSplit;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Recommendation: Recall@k and NDCG@k on a fixed train/test split (TSV `user<TAB>item`).
    Rec(RecArgs),
}

#[derive(Debug, Args)]
pub struct RecArgs {
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub test: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// EASE L2 regularisation.
    #[arg(long, default_value_t = 100.0)]
    pub lambda: f64,
    /// Neighbours kept per item by item-kNN.
    #[arg(long, default_value_t = 100)]
    pub neighbours: usize,
    /// Worker threads for scoring.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Knowledge-graph triples (TSV head, relation, tail over entity ids; a header is skipped).
    #[arg(long, requires = "item_entities")]
    pub kg: Option<PathBuf>,
    /// Item id -> entity id (TSV; a header is skipped).
    #[arg(long)]
    pub item_entities: Option<PathBuf>,
    /// Choose lambda (and the graph weight mu) on a validation split carved from train, then
    /// refit on all of train; the test split is never used for choosing.
    #[arg(long)]
    pub tune: bool,
    /// Graph weight mu when not tuning.
    #[arg(long, default_value_t = 0.5)]
    pub mu: f64,
}

/// Reads `user<TAB>item` pairs; a first line that is not two fields or reads `user item` is a header.
fn read_pairs(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(['\t', ' ']).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            continue;
        }
        if i == 0
            && (fields.first().map(|f| f.eq_ignore_ascii_case("user")) == Some(true)
                || fields.first().is_some_and(|f| f.contains(':')))
        {
            continue;
        }
        if fields.len() < 2 {
            anyhow::bail!(
                "{}:{}: expected `user<TAB>item`, found {:?}",
                path.display(),
                i + 1,
                line
            );
        }
        pairs.push((fields[0].to_string(), fields[1].to_string()));
    }
    Ok(pairs)
}

fn read_triples(path: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if line.trim().is_empty() || (i == 0 && line.contains(':')) {
            continue;
        }
        if f.len() != 3 {
            anyhow::bail!(
                "{}:{}: expected head<TAB>relation<TAB>tail",
                path.display(),
                i + 1
            );
        }
        out.push((f[0].to_string(), f[1].to_string(), f[2].to_string()));
    }
    Ok(out)
}

pub fn run(command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Rec(args) => rec(args),
    }
}

fn rec(args: RecArgs) -> anyhow::Result<()> {
    let split = RecSplit::from_pairs(&read_pairs(&args.train)?, &read_pairs(&args.test)?);
    println!(
        "{} users, {} items, {} test users",
        split.train.users.len(),
        split.train.n_items,
        split.test.len()
    );
    let k = args.k;
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    let mut measure = |name: String, model: &dyn Recommender, fit_s: f64| {
        let (recall, ndcg) = split.evaluate(k, args.threads, |h| model.scores(h));
        println!("{name:<28} recall@{k}={recall:.4} ndcg@{k}={ndcg:.4}  (fit {fit_s:.1}s)");
        rows.push((name, recall, ndcg, fit_s));
    };
    let t = Instant::now();
    let pop = Popularity::fit(&split.train);
    measure("popularity".into(), &pop, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let knn = ItemKnn::fit(&split.train, args.neighbours);
    measure(
        format!("item-knn (k={})", args.neighbours),
        &knn,
        t.elapsed().as_secs_f64(),
    );
    let groups = match (&args.kg, &args.item_entities) {
        (Some(kg), Some(map)) => {
            let map: std::collections::HashMap<String, String> =
                read_pairs(map)?.into_iter().collect();
            let groups = souk_ranker_core::eval::kg_item_groups(&split, &map, &read_triples(kg)?);
            println!(
                "knowledge graph: {} shared facts over the items",
                groups.len()
            );
            Some(groups)
        }
        _ => None,
    };
    if let Some(groups) = &groups {
        let t = Instant::now();
        let content = ItemKnn::fit(
            &souk_ranker_core::cf::Interactions {
                n_items: split.train.n_items,
                users: groups.clone(),
            },
            args.neighbours,
        );
        measure(
            "kg item-kNN (graph alone)".into(),
            &content,
            t.elapsed().as_secs_f64(),
        );
    }
    let (lambda, mu) = if args.tune {
        let validation = souk_ranker_core::eval::validation_split(&split, 0.2, 42);
        let score = |lambda: f64, mu: f64| -> anyhow::Result<f64> {
            let model = Ease::fit_with_side(
                &validation.train,
                groups.as_deref().unwrap_or(&[]),
                mu,
                lambda,
            )?;
            Ok(validation.evaluate(k, args.threads, |h| model.scores(h)).0)
        };
        let mut best = (f64::MIN, args.lambda);
        for lambda in [50.0, 100.0, 200.0, 500.0, 1000.0] {
            let r = score(lambda, 0.0)?;
            println!("  validation: ease lambda={lambda} recall@{k}={r:.4}");
            if r > best.0 {
                best = (r, lambda);
            }
        }
        let mut best_mu = (best.0, 0.0);
        if groups.is_some() {
            for mu in [0.25, 0.5, 1.0, 2.0] {
                let r = score(best.1, mu)?;
                println!(
                    "  validation: ease+kg lambda={} mu={mu} recall@{k}={r:.4}",
                    best.1
                );
                if r > best_mu.0 {
                    best_mu = (r, mu);
                }
            }
        }
        (best.1, best_mu.1)
    } else {
        (args.lambda, args.mu)
    };
    let t = Instant::now();
    let ease = Ease::fit(&split.train, lambda)?;
    measure(
        format!("ease (lambda={lambda})"),
        &ease,
        t.elapsed().as_secs_f64(),
    );
    if let Some(groups) = &groups {
        let t = Instant::now();
        let fused = Ease::fit_with_side(&split.train, groups, mu, lambda)?;
        measure(
            format!("ease + kg (lambda={lambda}, mu={mu})"),
            &fused,
            t.elapsed().as_secs_f64(),
        );
    }
    if let Some((_, recall, ndcg, _)) = rows.last() {
        println!("recall@{k} fused={recall:.3} ndcg@{k} fused={ndcg:.3}");
    }
    Ok(())
}
