//! `soukctl eval page`: how well an item's page (`Rank` with `item_id`) foretells what a
//! shopper picks next. On a recommendation split, each test user's latest training item (by
//! the interactions' timestamps) is the page; the ranking, anonymous and with the user's
//! other training items excluded, is scored against their held-out items (Recall@k, NDCG@k,
//! binary), once per weight set. The ranker runs in process on a catalog of the split's items
//! (titles embedded by the encoder) with the training events recorded in time order; no
//! graph (the split's knowledge graph is over other ids), so the graph weight adds nothing.
//! No dataset here judges items against items: this is the nearest measured proxy.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use clap::Args;
use souk_ranker_core::UserKey;
use souk_ranker_core::catalog::Catalog;
use souk_ranker_core::cf::{CfAlgorithm, CfOptions, fit_served};
use souk_ranker_core::eval::recall_ndcg_at;
use souk_ranker_core::item::{Interaction, InteractionKind, Item};
use souk_ranker_core::rank::{
    EmbeddingSource, FusionModel, NoGraph, RankQuery, Ranker, SourceError,
};

#[derive(Debug, Args)]
pub struct PageArgs {
    #[arg(long)]
    pub train: PathBuf,
    #[arg(long)]
    pub test: PathBuf,
    /// Items as RecBole's atomic `.item` file: a header of `name:type` fields, with
    /// `item_id`, a title field (`movie_title` or `title`) and optionally `class` (genres).
    #[arg(long)]
    pub items: PathBuf,
    /// Interactions as RecBole's atomic `.inter` file (`user_id`, `item_id`, `timestamp`):
    /// which training item is each user's latest.
    #[arg(long)]
    pub inter: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Vector cache, as `eval search --cache`.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// EASE's L2 weight for the trained-CF runs.
    #[arg(long, default_value_t = 500.0)]
    pub lambda: f64,
    /// Weight sets to measure (dense,bm25,cf,kg,popularity), each beside the default
    /// `with_item` and popularity alone; repeat for more. Unset: a built-in sweep.
    #[arg(long = "weights", value_name = "D,B,C,K,P", value_parser = parse_weights)]
    pub weights: Vec<[f32; 5]>,
}

pub(crate) fn parse_weights(text: &str) -> Result<[f32; 5], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    <[f32; 5]>::try_from(values).map_err(|v| {
        format!(
            "five weights (dense,bm25,cf,kg,popularity), got {}",
            v.len()
        )
    })
}

/// No query is ranked here: an item page's dense signal reads the item's own vector.
struct NoEncoder;

impl EmbeddingSource for NoEncoder {
    async fn embed_query(&self, _: &str) -> Result<Vec<f32>, SourceError> {
        Err(SourceError("no encoder in the page evaluation".into()))
    }
}

/// The columns of a RecBole atomic file named (before the `:type`) as `names`, by position.
fn columns(path: &Path, header: &str, names: &[&[&str]]) -> anyhow::Result<Vec<Option<usize>>> {
    let fields: Vec<&str> = header
        .split('\t')
        .map(|f| f.split(':').next().unwrap_or(f))
        .collect();
    let found: Vec<Option<usize>> = names
        .iter()
        .map(|any| fields.iter().position(|f| any.contains(f)))
        .collect();
    if found.first().is_some_and(Option::is_none) {
        anyhow::bail!(
            "{}:1: no {:?} column in {header:?}",
            path.display(),
            names[0]
        );
    }
    Ok(found)
}

/// (id, title, genres) of every item with a title.
fn read_items(path: &Path) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let at = columns(
        path,
        header,
        &[&["item_id"], &["movie_title", "title"], &["class"]],
    )?;
    let (Some(id), Some(title)) = (at[0], at[1]) else {
        anyhow::bail!("{}:1: no title column in {header:?}", path.display());
    };
    Ok(lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let title = f.get(title)?.trim();
            let genres = at[2]
                .and_then(|c| f.get(c))
                .map(|g| {
                    g.split(' ')
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let id = f.get(id)?;
            (!title.is_empty()).then(|| (id.to_string(), title.to_string(), genres))
        })
        .collect())
}

/// Timestamps (seconds) by (user, item).
fn read_times(path: &Path) -> anyhow::Result<HashMap<(String, String), f64>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let at = columns(path, header, &[&["user_id"], &["item_id"], &["timestamp"]])?;
    let (Some(u), Some(i), Some(t)) = (at[0], at[1], at[2]) else {
        anyhow::bail!(
            "{}:1: needs user_id, item_id and timestamp columns",
            path.display()
        );
    };
    let mut times = HashMap::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(user), Some(item), Some(time)) = (f.get(u), f.get(i), f.get(t)) else {
            anyhow::bail!("{}:{}: too few fields", path.display(), n + 2);
        };
        let time: f64 = time
            .parse()
            .with_context(|| format!("{}:{}: timestamp {time:?}", path.display(), n + 2))?;
        times.insert((user.to_string(), item.to_string()), time);
    }
    Ok(times)
}

/// One measured weight set.
#[derive(Debug, Clone)]
pub struct PageRow {
    /// "online co-occurrence" or "EASE": where the CF signal came from.
    pub cf: &'static str,
    pub weights: [f32; 5],
    pub name: String,
    pub recall: f64,
    pub ndcg: f64,
}

/// Prints every row of [`page_report`].
///
/// # Errors
/// As [`page_report`].
pub async fn run(args: PageArgs, encoder_url: &str) -> anyhow::Result<()> {
    let k = args.k;
    for row in page_report(&args, encoder_url).await? {
        println!(
            "{:<21} {:<34} recall@{k}={:.4} ndcg@{k}={:.4}",
            row.cf, row.name, row.recall, row.ndcg
        );
    }
    Ok(())
}

/// Measures the default `with_item` weights, popularity alone and the requested (or
/// built-in) weight sets, with the online co-occurrence and with a trained EASE.
///
/// # Errors
/// Unreadable or malformed files, an unreachable encoder.
pub async fn page_report(args: &PageArgs, encoder_url: &str) -> anyhow::Result<Vec<PageRow>> {
    let train = crate::eval::read_pairs(&args.train)?;
    let test = crate::eval::read_pairs(&args.test)?;
    let items = read_items(&args.items)?;
    let times = read_times(&args.inter)?;
    let titles: Vec<String> = items.iter().map(|(_, t, _)| t.clone()).collect();
    let mut client = souk_proto::encoder::v1::encoder_client::EncoderClient::new(
        crate::connect(encoder_url, "encoder").await?,
    );
    let vectors = crate::eval::embed_texts(
        &mut client,
        encoder_url,
        &titles,
        souk_proto::encoder::v1::TextKind::Document,
        args.cache.as_deref(),
    )
    .await?;
    let mut catalog = Catalog::default();
    for ((id, title, genres), vector) in items.iter().zip(vectors) {
        let item = Item {
            id: id.clone(),
            title: title.clone(),
            description: String::new(),
            category: genres.iter().take(1).cloned().collect(),
            brand: String::new(),
            price: 0.0,
            attributes: Default::default(),
            in_stock: true,
        };
        catalog.upsert(item.validated()?, vector)?;
    }
    // Training events in time order: the online co-occurrence pairs each with the user's
    // recent ones, as a live shop's log would.
    let time = |u: &str, i: &str| times.get(&(u.to_string(), i.to_string())).copied();
    let mut events: Vec<(f64, &str, &str)> = train
        .iter()
        .map(|(u, i)| (time(u, i).unwrap_or(0.0), u.as_str(), i.as_str()))
        .collect();
    events.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| (a.1, a.2).cmp(&(b.1, b.2)))
    });
    let key = |u: &str| UserKey::from_stored(format!("user-{u}"));
    for &(t, u, i) in &events {
        catalog.record(&Interaction {
            user: key(u),
            item_id: i.to_string(),
            kind: InteractionKind::View,
            value: 1.0,
            timestamp_ms: (t * 1000.0) as i64,
        });
    }
    // Each user's training items, latest last.
    let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
    for &(_, u, i) in &events {
        seen.entry(u).or_default().push(i);
    }
    let mut held: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (u, i) in &test {
        held.entry(u.as_str()).or_default().insert(i.as_str());
    }
    let mut users: Vec<&str> = held
        .keys()
        .copied()
        .filter(|u| seen.contains_key(u))
        .collect();
    users.sort_unstable();
    let ease = fit_served(
        &seen
            .values()
            .map(|items| items.iter().map(|i| i.to_string()).collect())
            .collect::<Vec<Vec<String>>>(),
        &CfOptions {
            algorithm: CfAlgorithm::Ease,
            lambda: args.lambda,
            max_items: items.len().clamp(2, souk_ranker_core::cf::MAX_CF_ITEMS),
            ..CfOptions::default()
        },
        "eval-ease".into(),
    )?;
    eprintln!(
        "{} items, {} training events, {} test users; page = each user's latest training item",
        catalog.len(),
        events.len(),
        users.len()
    );
    let ranker = Ranker::new(Arc::new(RwLock::new(catalog)), NoEncoder, NoGraph);
    let mut weights: Vec<(String, [f32; 5])> = vec![
        ("popularity".into(), [0.0, 0.0, 0.0, 0.0, 1.0]),
        (
            "default with_item".into(),
            souk_ranker_core::rank::default_with_item(),
        ),
    ];
    let sweep = [
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.2, 0.0, 0.6, 0.0, 0.2],
        [0.2, 0.0, 0.4, 0.0, 0.4],
        [0.0, 0.0, 0.3, 0.0, 0.7],
        [0.3, 0.0, 0.0, 0.0, 0.7],
    ];
    let extra = if args.weights.is_empty() {
        &sweep[..]
    } else {
        &args.weights[..]
    };
    weights.extend(extra.iter().map(|w| (format!("{w:?}"), *w)));
    let k = args.k;
    let mut rows = Vec::new();
    for trained in [false, true] {
        if trained && let Ok(mut catalog) = ranker.catalog().write() {
            catalog.set_trained_cf(Some(Arc::new(ease.clone())));
        }
        let cf = if trained {
            "EASE"
        } else {
            "online co-occurrence"
        };
        for (name, w) in &weights {
            ranker.set_model(FusionModel {
                version: "eval-page".into(),
                with_item: *w,
                ..FusionModel::default()
            })?;
            let (mut recall, mut ndcg) = (0.0, 0.0);
            for user in &users {
                let history = &seen[user];
                let Some(page) = history.last() else { continue };
                let ranking = ranker
                    .rank(&RankQuery {
                        item: Some(page.to_string()),
                        k,
                        exclude: history.iter().map(|i| i.to_string()).collect(),
                        ..RankQuery::default()
                    })
                    .await?;
                let relevant = &held[user];
                let ids: Vec<&str> = ranking.items.iter().map(|i| i.id.as_str()).collect();
                // Positions of the ranked ids among the held-out ones, as the metric wants.
                let index: HashMap<&str, u32> = relevant
                    .iter()
                    .enumerate()
                    .map(|(n, i)| (*i, n as u32))
                    .collect();
                let ranked: Vec<u32> = ids
                    .iter()
                    .map(|i| index.get(i).copied().unwrap_or(u32::MAX))
                    .collect();
                let wanted: HashSet<u32> = (0..relevant.len() as u32).collect();
                let (r, n) = recall_ndcg_at(&ranked, &wanted, k);
                recall += r;
                ndcg += n;
            }
            let n = users.len().max(1) as f64;
            rows.push(PageRow {
                cf,
                weights: *w,
                name: name.clone(),
                recall: recall / n,
                ndcg: ndcg / n,
            });
        }
    }
    Ok(rows)
}
