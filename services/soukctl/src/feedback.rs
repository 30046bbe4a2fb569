//! `soukctl train fusion --feedback LOG`: the fusion weights learned from what shoppers clicked
//! in the lists `Rank` showed them. The log holds, per shown item, the signal values `Rank`
//! returned with it (`all_signals`), so training sees the features as they were served, not
//! as the catalog and histories look later (a clicked item is in the shopper's history by
//! then, which would leak the click into its own CF and graph signals).
//!
//! Clicks are biased towards the top of a list; the learner weights each click by the inverse
//! of the chance that its position was looked at ([`ClickGroup::pairs`]). Without that,
//! a model learns to copy the order the log was shown in (BENCHMARKS.md has the simulation).
use std::collections::BTreeMap;
use std::path::Path;

use souk_proto::ranker::v1 as rk;
use souk_ranker_core::fusion::{ClickGroup, TrainOptions, train_on_clicks};
use souk_ranker_core::propensity::{self, PositionBias, Shown};

use crate::files::{self, ShownItem};

/// One weight set's outcome.
#[derive(Debug, Clone)]
pub struct SetReport {
    /// Lists in the log, and those with at least one click (the only ones that teach).
    pub lists: usize,
    pub clicked_lists: usize,
    /// Held-out share of the click preferences (propensity-weighted) that the weights in use
    /// and the learned ones order right; `None` when too few lists to learn from.
    pub current_agreement: Option<f64>,
    pub learned_agreement: Option<f64>,
    /// The learned weights (dense, bm25, cf, kg, popularity); `None`: the set is kept.
    pub weights: Option<[f32; 5]>,
}

/// What `train fusion --feedback` measured and stored.
#[derive(Debug, Clone)]
pub struct FeedbackReport {
    /// Item pages without a query (`with_item`).
    pub with_item: SetReport,
    /// The exponent the clicks were weighted with.
    pub position_bias: f64,
    /// What the log told of it (`None`: given, or too few clicks on moved items).
    pub estimated: Option<PositionBias>,
    pub with_query: SetReport,
    pub without_query: SetReport,
    /// The stored version; `None` on a dry run or when nothing was learned.
    pub version: Option<String>,
}

/// Settings of a feedback fit.
#[derive(Debug, Clone)]
pub struct FeedbackOptions {
    /// Exponent of the position-based model: rank r is looked at with probability
    /// 1/r^position_bias (1 is the usual prior; 0 trusts every click equally). `None`:
    /// estimated from the log ([`position_bias`]).
    pub position_bias: Option<f64>,
    /// Lists with a click needed before a weight set is replaced.
    pub min_lists: usize,
    /// Folds over lists for the held-out report.
    pub folds: usize,
}

/// Reads a feedback log into its lists, by request id in file order.
///
/// # Errors
/// Every bad line (`file:line: reason`, the first 10 listed), a request whose rows disagree
/// on the query or repeat a position.
pub fn read_lists(path: &Path) -> anyhow::Result<Vec<(String, Vec<ShownItem>)>> {
    let (reader, _) = files::open(path)?;
    let mut lists: BTreeMap<String, (usize, Vec<ShownItem>)> = BTreeMap::new();
    let mut errors = Vec::new();
    for row in files::feedback(path, reader) {
        match row {
            Ok(item) => {
                let next = lists.len();
                lists
                    .entry(item.request_id.clone())
                    .or_insert_with(|| (next, Vec::new()))
                    .1
                    .push(item);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(10).map(String::as_str).collect();
        anyhow::bail!("{} bad line(s):\n{}", errors.len(), shown.join("\n"));
    }
    let mut ordered: Vec<(usize, String, Vec<ShownItem>)> = lists
        .into_iter()
        .map(|(id, (order, items))| (order, id, items))
        .collect();
    ordered.sort_by_key(|(order, _, _)| *order);
    let mut out = Vec::with_capacity(ordered.len());
    for (_, id, mut items) in ordered {
        items.sort_by_key(|i| i.position);
        for pair in items.windows(2) {
            if pair[1].page_item != pair[0].page_item {
                anyhow::bail!(
                    "{}:{}: request {id:?} has page_item {:?} here and {:?} on line {}",
                    path.display(),
                    pair[1].line,
                    pair[1].page_item,
                    pair[0].page_item,
                    pair[0].line
                );
            }
            if pair[1].query != pair[0].query {
                anyhow::bail!(
                    "{}:{}: request {id:?} has query {:?} here and {:?} on line {}",
                    path.display(),
                    pair[1].line,
                    pair[1].query,
                    pair[0].query,
                    pair[0].line
                );
            }
            if pair[1].position == pair[0].position {
                anyhow::bail!(
                    "{}:{}: request {id:?} shows position {} twice (also line {})",
                    path.display(),
                    pair[1].line,
                    pair[1].position,
                    pair[0].line
                );
            }
        }
        out.push((id, items));
    }
    Ok(out)
}

/// Positions the position bias is estimated over (deeper ones are rarely looked at, and
/// the learner clips their weight anyway).
const ESTIMATED_POSITIONS: u32 = 20;

/// The exponent to weight clicks with: `given`, or the one the log's searches and item pages
/// tell ([`propensity::estimate`] over lists with a query or a page item, which fix what is
/// relevant: a recommendation's relevance is its shopper's, so its moved items say nothing),
/// or 1 when they tell too little. Also what the estimate found.
pub fn position_bias(
    lists: &[(String, Vec<ShownItem>)],
    given: Option<f64>,
) -> (f64, Option<PositionBias>) {
    if let Some(exponent) = given {
        return (exponent, None);
    }
    // What each list was for (one per list: `read_lists` checks it): its query, else its
    // page's item (marked, so that no query text can be taken for a page).
    let context: Vec<String> = lists
        .iter()
        .map(|(_, items)| match items.first() {
            Some(i) if !i.query.is_empty() => format!("q {}", i.query),
            Some(i) if !i.page_item.is_empty() => format!("p {}", i.page_item),
            _ => String::new(),
        })
        .collect();
    let shown = lists
        .iter()
        .zip(&context)
        .filter(|(_, context)| !context.is_empty())
        .flat_map(|((_, items), context)| {
            items.iter().map(move |i| Shown {
                query: context,
                item: &i.item_id,
                position: i.position,
                clicked: i.clicked,
            })
        });
    match propensity::estimate(shown, ESTIMATED_POSITIONS) {
        Some(found) => (found.exponent, Some(found)),
        None => (1.0, None),
    }
}

fn click_group(items: &[ShownItem]) -> ClickGroup {
    ClickGroup {
        features: items.iter().map(|i| i.signals.to_vec()).collect(),
        positions: items.iter().map(|i| i.position).collect(),
        clicked: items.iter().map(|i| i.clicked).collect(),
    }
}

/// The propensity-weighted share of `groups`' click preferences that `score` orders right
/// (ties count half).
fn agreement(groups: &[&ClickGroup], position_bias: f64, score: impl Fn(&[f64]) -> f64) -> f64 {
    let (mut right, mut total) = (0.0, 0.0);
    for g in groups {
        for (better, worse, weight) in g.pairs(position_bias) {
            let (a, b) = (score(&g.features[better]), score(&g.features[worse]));
            right += weight
                * if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            total += weight;
        }
    }
    right / total.max(1e-12)
}

fn weights_of(w: Option<&rk::FusionWeights>) -> [f32; 5] {
    w.map_or([0.0; 5], |w| [w.dense, w.bm25, w.cf, w.kg, w.popularity])
}

fn learn_set(
    groups: &[ClickGroup],
    current: [f32; 5],
    bias: f64,
    options: &FeedbackOptions,
) -> SetReport {
    let clicked: Vec<&ClickGroup> = groups
        .iter()
        .filter(|g| g.clicked.contains(&true))
        .collect();
    let mut report = SetReport {
        lists: groups.len(),
        clicked_lists: clicked.len(),
        current_agreement: None,
        learned_agreement: None,
        weights: None,
    };
    if clicked.len() < options.min_lists.max(2) {
        return report;
    }
    let budget: f32 = current.iter().map(|w| w.abs()).sum();
    let linear = |w: [f32; 5]| {
        move |x: &[f64]| -> f64 { x.iter().zip(w).map(|(v, w)| v * f64::from(w)).sum() }
    };
    let fit = |lists: &[&ClickGroup]| -> [f32; 5] {
        let model = train_on_clicks(lists, bias, TrainOptions::default());
        let w = model.raw_weights(f64::from(budget));
        std::array::from_fn(|k| w[k] as f32)
    };
    let folds = options.folds.clamp(2, clicked.len());
    let (mut before, mut after) = (0.0, 0.0);
    for fold in 0..folds {
        let (held, rest) = crate::eval::fold_split(&clicked, folds, fold);
        let held: Vec<&ClickGroup> = held.into_iter().copied().collect();
        let rest: Vec<&ClickGroup> = rest.into_iter().copied().collect();
        let learned = fit(&rest);
        let n = held.len() as f64;
        before += agreement(&held, bias, linear(current)) * n;
        after += agreement(&held, bias, linear(learned)) * n;
    }
    let n = clicked.len() as f64;
    report.current_agreement = Some(before / n);
    report.learned_agreement = Some(after / n);
    report.weights = Some(fit(&clicked));
    report
}

/// Learns both weight sets from the log at `path`, prints the held-out comparison and, unless
/// `dry_run` or nothing was learned, stores the new model in the ranker (a set with too few
/// clicked lists keeps its weights).
///
/// # Errors
/// Unreachable ranker, an unreadable or malformed log, a refused model.
pub async fn learn(
    path: &Path,
    options: &FeedbackOptions,
    version: &str,
    dry_run: bool,
    ep: &crate::Endpoints,
) -> anyhow::Result<FeedbackReport> {
    let lists = read_lists(path)?;
    let (bias, estimated) = position_bias(&lists, options.position_bias);
    match (&estimated, options.position_bias) {
        (Some(found), _) => {
            let relative: Vec<String> = found
                .relative
                .iter()
                .take(5)
                .map(|(k, ratio, _)| format!("{k}: {ratio:.2}"))
                .collect();
            println!(
                "position bias estimated from {} (query, item) pairs shown at two positions or \
                 more ({} clicks): rank r looked at ~1/r^{bias:.2} (measured, relative to \
                 rank 1: {})",
                found.harvested,
                found.clicks,
                if relative.is_empty() {
                    "none shown at rank 1".to_string()
                } else {
                    relative.join(", ")
                }
            );
        }
        (None, None) => println!(
            "position bias: too few clicks on items the log shows at different positions for \
             the same query (need {}): 1/rank assumed",
            propensity::MIN_CLICKS
        ),
        (None, Some(_)) => {}
    }
    let mut client =
        rk::ranker_client::RankerClient::new(crate::connect(&ep.ranker, "ranker").await?);
    let current = client
        .get_fusion(rk::GetFusionRequest {})
        .await?
        .into_inner();
    // As `Rank` picks the weights: a query's, else an item page's, else a recommendation's.
    let (searches, rest): (Vec<_>, Vec<_>) = lists
        .iter()
        .partition(|(_, items)| !items[0].query.is_empty());
    let (pages, recommendations): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(_, items)| !items[0].page_item.is_empty());
    let groups = |lists: Vec<&(String, Vec<ShownItem>)>| -> Vec<ClickGroup> {
        lists
            .into_iter()
            .map(|(_, items)| click_group(items))
            .collect()
    };
    let with_query = learn_set(
        &groups(searches),
        weights_of(current.with_query.as_ref()),
        bias,
        options,
    );
    let without_query = learn_set(
        &groups(recommendations),
        weights_of(current.without_query.as_ref()),
        bias,
        options,
    );
    let with_item = learn_set(
        &groups(pages),
        weights_of(current.with_item.as_ref()),
        bias,
        options,
    );
    for (name, set) in [
        ("searches", &with_query),
        ("recommendations", &without_query),
        ("item pages", &with_item),
    ] {
        match (set.weights, set.current_agreement, set.learned_agreement) {
            (Some(w), Some(before), Some(after)) => println!(
                "{name}: {} lists, {} with clicks; held-out click preferences ordered right \
                 ({}-fold): current {} {before:.4}, learned {after:.4} (dense {:.3}, bm25 {:.3}, \
                 cf {:.3}, kg {:.3}, popularity {:.3})",
                set.lists,
                set.clicked_lists,
                options.folds,
                current.version,
                w[0],
                w[1],
                w[2],
                w[3],
                w[4]
            ),
            _ => println!(
                "{name}: {} lists, {} with clicks (need {}): weights kept",
                set.lists, set.clicked_lists, options.min_lists
            ),
        }
    }
    let mut report = FeedbackReport {
        with_item,
        position_bias: bias,
        estimated,
        with_query,
        without_query,
        version: None,
    };
    if report.with_query.weights.is_none()
        && report.without_query.weights.is_none()
        && report.with_item.weights.is_none()
    {
        println!("nothing learned: the ranker keeps {}", current.version);
        return Ok(report);
    }
    if dry_run {
        println!("dry run: the ranker keeps {}", current.version);
        return Ok(report);
    }
    let set = |learned: Option<[f32; 5]>, kept: Option<rk::FusionWeights>| {
        learned
            .map(|w| rk::FusionWeights {
                dense: w[0],
                bm25: w[1],
                cf: w[2],
                kg: w[3],
                popularity: w[4],
            })
            .or(kept)
    };
    let model = rk::FusionModel {
        version: version.to_string(),
        with_query: set(report.with_query.weights, current.with_query),
        without_query: set(report.without_query.weights, current.without_query),
        with_item: set(report.with_item.weights, current.with_item),
    };
    report.version = Some(crate::train::store_fusion(&mut client, model, ep).await?);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A log of searches whose lists alternate between two orders of the same 10 items (so
    /// each item is shown at two positions), clicked under 1/rank^`bias`; and recommendations
    /// clicked at rank 1 only, which must not count (their relevance is their shopper's).
    fn log(bias: f64, lists: usize) -> Vec<(String, Vec<ShownItem>)> {
        let mut rng = souk_ranker_core::rng::XorShift::new(3);
        (0..lists)
            .map(|l| {
                let query = if l % 5 == 4 {
                    String::new()
                } else {
                    format!("query {}", l % 20)
                };
                let items = (1..=10u32)
                    .map(|position| {
                        let item = if (l / 20) % 2 == 0 {
                            position
                        } else {
                            11 - position
                        };
                        let clicked = if query.is_empty() {
                            position == 1
                        } else {
                            rng.unit() < 1.0 / f64::from(position).powf(bias)
                                && rng.unit() < 0.1 + 0.05 * f64::from(item)
                        };
                        ShownItem {
                            page_item: String::new(),
                            line: 0,
                            request_id: format!("r{l}"),
                            position,
                            item_id: format!("p{item}"),
                            clicked,
                            query: query.clone(),
                            signals: [0.0; 5],
                        }
                    })
                    .collect();
                (format!("r{l}"), items)
            })
            .collect()
    }

    /// `auto` finds the log's bias from its searches; a given exponent is used as given; a
    /// log too small to tell falls back to 1.
    #[test]
    fn the_position_bias_is_the_log_s_unless_given() {
        let (bias, found) = position_bias(&log(0.5, 8_000), None);
        assert!((bias - 0.5).abs() < 0.1, "{bias} {found:?}");
        assert_eq!(
            found.unwrap().harvested,
            16 * 10,
            "16 queries, 4 of 20 are recommendations"
        );
        assert_eq!(position_bias(&log(0.5, 8_000), Some(2.0)), (2.0, None));
        // An item's page fixes what is relevant as a query does: the same lists shown on
        // pages tell the same.
        let pages: Vec<(String, Vec<ShownItem>)> = log(0.5, 8_000)
            .into_iter()
            .map(|(id, items)| {
                let items = items
                    .into_iter()
                    .map(|i| ShownItem {
                        page_item: i.query.clone(),
                        query: String::new(),
                        ..i
                    })
                    .collect();
                (id, items)
            })
            .collect();
        assert_eq!(position_bias(&pages, None).0, bias);
        assert_eq!(position_bias(&log(0.5, 20), None), (1.0, None));
    }
}
