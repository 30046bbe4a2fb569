//! Position bias measured from a click log, without a randomised experiment: intervention
//! harvesting (Agarwal, Zaitsev, Wang, Li, Najork & Joachims 2019, "Estimating Position Bias
//! without Intrusive Interventions").
//!
//! A shop's lists change while its catalog, popularity, shoppers' histories and fusion
//! versions move, so the same item is shown for the same query at different positions. Under
//! the position-based model a shown item is clicked with probability exam(position) x
//! relevance(query, item); for the pairs of (query, item) seen at both positions k and k',
//! the relevance cancels out of the ratio of their click rates, which estimates
//! exam(k) / exam(k'). The learner ([`crate::fusion::ClickGroup::pairs`]) takes
//! exam(k) = 1 / k^exponent, so the log ratios are fitted with that one exponent.
use std::collections::{BTreeMap, HashMap};

/// One shown item of a logged list.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    /// What the shopper asked (the query): relevance is taken to depend on it and the item
    /// only, so lists without a query (recommendations, each its own shopper's) are left out
    /// by the caller.
    pub query: &'a str,
    pub item: &'a str,
    /// 1-based.
    pub position: u32,
    pub clicked: bool,
}

/// What [`estimate`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionBias {
    /// The exponent of exam(k) = 1 / k^exponent fitted to every harvested position pair
    /// (clamped to 0..=[`MAX_EXPONENT`]).
    pub exponent: f64,
    /// exam(k) / exam(1) as harvested from the (query, item) pairs shown at 1 and at k, for
    /// each k that has any: (k, ratio, clicks behind it).
    pub relative: Vec<(u32, f64, f64)>,
    /// (query, item) pairs shown at two or more positions.
    pub harvested: usize,
    /// Clicks on them, at positions that pair up.
    pub clicks: f64,
}

/// The largest exponent [`estimate`] reports (1/k^4: position 3 looked at 1% as often as the
/// first; `train fusion --position-bias` takes 0..=4 too).
pub const MAX_EXPONENT: f64 = 4.0;

/// Clicks on harvested pairs below which nothing is estimated: on Crowdflower with simulated
/// clicks the exponent moved by ~0.1 between seeds at a few hundred (BENCHMARKS.md).
pub const MIN_CLICKS: f64 = 100.0;

/// Per (query, item): shows and clicks by position.
type Tally<'a> = HashMap<(&'a str, &'a str), BTreeMap<u32, (f64, f64)>>;

/// Estimates the position bias of `shown` over positions 1..=`max_position`; `None` when the
/// log holds fewer than [`MIN_CLICKS`] clicks on (query, item) pairs shown at two positions
/// (a log of one unchanging ranking has none: then nothing can be told apart).
pub fn estimate<'a>(
    shown: impl IntoIterator<Item = Shown<'a>>,
    max_position: u32,
) -> Option<PositionBias> {
    let mut tally: Tally<'a> = HashMap::new();
    for s in shown {
        if s.position == 0 || s.position > max_position {
            continue;
        }
        let at = tally
            .entry((s.query, s.item))
            .or_default()
            .entry(s.position)
            .or_insert((0.0, 0.0));
        at.0 += 1.0;
        at.1 += f64::from(u8::from(s.clicked));
    }
    // For each position pair (k < k'): the click rates of the pairs shown at both, summed
    // with a weight that trusts a pair as much as its rarer side (n n' / (n + n')), so that
    // the relevance of each pair weighs the same on both sides and cancels from the ratio.
    let mut sums: BTreeMap<(u32, u32), (f64, f64, f64)> = BTreeMap::new();
    let mut harvested = 0;
    for positions in tally.values() {
        if positions.len() < 2 {
            continue;
        }
        harvested += 1;
        let seen: Vec<(u32, f64, f64)> = positions.iter().map(|(&k, &(n, c))| (k, n, c)).collect();
        for (i, &(k, n, c)) in seen.iter().enumerate() {
            for &(k2, n2, c2) in &seen[i + 1..] {
                let weight = n * n2 / (n + n2);
                let pair = sums.entry((k, k2)).or_insert((0.0, 0.0, 0.0));
                pair.0 += weight * c / n;
                pair.1 += weight * c2 / n2;
                pair.2 += c + c2;
            }
        }
    }
    let clicks: f64 = sums.values().map(|s| s.2).sum();
    if clicks < MIN_CLICKS {
        return None;
    }
    // ln(exam(k) / exam(k')) = exponent x ln(k' / k): least squares through the origin,
    // each pair weighted by its clicks.
    let (mut xy, mut xx) = (0.0, 0.0);
    let mut relative = Vec::new();
    for (&(k, k2), &(rate, rate2, c)) in &sums {
        if rate <= 0.0 || rate2 <= 0.0 {
            continue;
        }
        let x = (f64::from(k2) / f64::from(k)).ln();
        let y = (rate / rate2).ln();
        xy += c * x * y;
        xx += c * x * x;
        if k == 1 {
            relative.push((k2, rate2 / rate, c));
        }
    }
    if xx <= 0.0 {
        return None;
    }
    Some(PositionBias {
        exponent: (xy / xx).clamp(0.0, MAX_EXPONENT),
        relative,
        harvested,
        clicks,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rng::XorShift;

    /// A log of `lists` lists of 10 for 50 queries of 30 items each, each list one of two
    /// rankings of the query's items (so items move between positions), clicked under
    /// exam(k) = 1/k^exponent and a relevance per (query, item).
    fn simulated(exponent: f64, lists: usize, seed: u64) -> Vec<(String, String, u32, bool)> {
        let mut rng = XorShift::new(seed);
        let relevance: Vec<Vec<f64>> = (0..50)
            .map(|_| (0..30).map(|_| rng.unit() * 0.6).collect())
            .collect();
        let mut log = Vec::new();
        for l in 0..lists {
            let q = l % 50;
            let ranking = l / 50 % 2;
            for position in 1..=10u32 {
                // Ranking 0 shows items 0..10, ranking 1 the same items rotated by 3.
                let item = if ranking == 0 {
                    position - 1
                } else {
                    (position - 1 + 3) % 10
                };
                let looked = rng.unit() < 1.0 / f64::from(position).powf(exponent);
                let clicked = looked && rng.unit() < relevance[q][item as usize];
                log.push((format!("q{q}"), format!("i{item}"), position, clicked));
            }
        }
        log
    }

    fn shown(log: &[(String, String, u32, bool)]) -> impl Iterator<Item = Shown<'_>> {
        log.iter().map(|(q, i, p, c)| Shown {
            query: q,
            item: i,
            position: *p,
            clicked: *c,
        })
    }

    /// The exponent the clicks were drawn with is found again, steep or flat, and the
    /// harvested ratios follow 1/k^exponent.
    #[test]
    fn the_exponent_of_the_clicks_is_found_again() {
        for truth in [0.5, 1.0, 2.0] {
            let log = simulated(truth, 20_000, 7);
            let found = estimate(shown(&log), 10).unwrap();
            assert!(
                (found.exponent - truth).abs() < 0.1,
                "truth {truth}: {found:?}"
            );
            assert_eq!(found.harvested, 50 * 10, "every shown pair moved");
            let (k, ratio, _) = found.relative[0];
            let expected = 1.0 / f64::from(k).powf(truth);
            assert!((ratio - expected).abs() < 0.1, "{k}: {ratio} vs {expected}");
        }
    }

    /// One unchanging ranking tells position from relevance apart nowhere: no estimate (nor
    /// from a log too small to trust).
    #[test]
    fn no_estimate_without_moved_items_or_clicks() {
        let log = simulated(1.0, 20_000, 7);
        let one_ranking: Vec<_> = log
            .chunks(10)
            .enumerate()
            .filter(|(l, _)| l / 50 % 2 == 0)
            .flat_map(|(_, list)| list.iter().cloned())
            .collect();
        assert_eq!(estimate(shown(&one_ranking), 10), None);
        assert_eq!(estimate(shown(&log[..200]), 10), None);
        assert_eq!(estimate(std::iter::empty(), 10), None);
    }
}
