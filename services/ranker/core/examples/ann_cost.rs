//! The catalog's HNSW graph against `hnsw_rs` (the library it replaced; same M, same
//! ef_construction, same distance, same SIMD dot product) on the same clustered unit vectors, in one run: build
//! time, search time, and how much of an exact scan's top 10 each finds, at the first pass's
//! ask (128 candidates, beam 128), at k = 10 (beam 128), and at wider beams (256, 512).
//!
//! `cargo run --release -p souk-ranker-core --example ann_cost -- [POINTS] [DIM] [QUERIES]`
//! (default 100000 384 300; `OURS_ONLY=1` skips `hnsw_rs` and saves the graph and reads it back).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use souk_ranker_core::ann::{AnnIndex, to_f16_row};
use souk_ranker_core::rng::XorShift;

#[derive(Default, Clone, Copy)]
struct UnitDot;
impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - souk_ranker_core::rank::dot(a, b)).max(0.0)
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: POINTS DIM QUERIES"))
        .collect();
    let n = args.first().copied().unwrap_or(100_000);
    let dim = args.get(1).copied().unwrap_or(384);
    let nq = args.get(2).copied().unwrap_or(300);
    let mut rng = XorShift::new(11);
    // Clusters of ~50 items, each a centre plus noise NOISE times as long (default 1: members
    // cosine ~0.5 apart, like product texts of one kind); queries drawn the same way.
    let centres: Vec<Vec<f32>> = (0..(n / 50).max(1))
        .map(|_| unit((0..dim).map(|_| rng.uniform() as f32).collect()))
        .collect();
    let noise: f32 = std::env::var("NOISE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let sigma = noise * (3.0 / dim as f32).sqrt();
    let draw = |rng: &mut XorShift, i: usize| {
        let c = &centres[i % centres.len()];
        unit(c.iter().map(|x| x + sigma * rng.uniform() as f32).collect())
    };
    let vectors: Vec<Vec<f32>> = (0..n).map(|i| draw(&mut rng, i)).collect();
    let queries: Vec<Vec<f32>> = (0..nq).map(|i| draw(&mut rng, i * 7919)).collect();
    let exact: Vec<Vec<u32>> = queries
        .iter()
        .map(|q| {
            let mut all: Vec<(f32, u32)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (-v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u32))
                .collect();
            all.select_nth_unstable_by(9, |a, b| a.0.total_cmp(&b.0));
            all.truncate(10);
            all.into_iter().map(|(_, i)| i).collect()
        })
        .collect();
    println!(
        "{n} points, {dim} dimensions, {nq} queries, {} threads",
        rayon::current_num_threads()
    );

    let started = Instant::now();
    let rows: Vec<Vec<u16>> = vectors.iter().map(|v| to_f16_row(v)).collect();
    let ours = AnnIndex::build(
        rows.iter()
            .enumerate()
            .map(|(i, v)| (i as u32, 1, v.as_slice())),
    );
    let ours_build = started.elapsed().as_secs_f64();

    // `OURS_ONLY=1`: only our graph (to compare two builds of it at sizes where `hnsw_rs`
    // would take most of the run).
    let ours_only = std::env::var("OURS_ONLY").is_ok_and(|v| v == "1");
    let started = Instant::now();
    let theirs = Hnsw::<f32, UnitDot>::new(16, n.max(1024) * 2, 16, 100, UnitDot);
    let data: Vec<(&[f32], usize)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_slice(), i))
        .collect();
    if !ours_only {
        theirs.parallel_insert_slice(&data);
    }
    let theirs_build = started.elapsed().as_secs_f64();

    let score = |found: &[Vec<u32>]| -> f64 {
        let hits: usize = found
            .iter()
            .zip(&exact)
            .map(|(f, e)| f.iter().filter(|i| e.contains(i)).count())
            .sum();
        hits as f64 / (10 * found.len()) as f64
    };
    for (k, ef) in [(128, 128), (10, 128), (128, 256), (128, 512)] {
        let started = Instant::now();
        let a: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| ours.search(q, k, ef, |_, _| true))
            .collect();
        let ours_us = started.elapsed().as_secs_f64() * 1e6 / nq as f64;
        if ours_only {
            println!(
                "k {k:>3} ef {ef}: ours {ours_us:>7.0} us/search, exact top 10 found {:.4}",
                score(&a)
            );
            continue;
        }
        let started = Instant::now();
        let b: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| {
                theirs
                    .search(q, k, ef)
                    .into_iter()
                    .map(|n| n.d_id as u32)
                    .collect()
            })
            .collect();
        let theirs_us = started.elapsed().as_secs_f64() * 1e6 / nq as f64;
        println!(
            "k {k:>3} ef {ef}: ours {ours_us:>7.0} us/search, exact top 10 found {:.4}; hnsw_rs {theirs_us:>7.0} us, {:.4}",
            score(&a),
            score(&b)
        );
    }
    if ours_only {
        // Saved with ids "p<n>", and read back matching each point to its row by id.
        let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        let bytes = ours.encode(|slot, _| ids.get(slot as usize).map(String::as_str));
        let started = Instant::now();
        let (_, decoded) = AnnIndex::decode(&bytes, |id, saved| {
            let i: usize = id[1..].parse().ok()?;
            saved.is(&rows[i]).then_some((i as u32, 1))
        })
        .expect("a graph just saved reads back");
        let read = started.elapsed().as_secs_f64();
        println!(
            "build: ours {ours_build:.2} s; saved {:.1} MB, read back in {read:.2} s ({} of {} points stale)",
            bytes.len() as f64 / 1e6,
            decoded.stale,
            decoded.points
        );
        return;
    }
    println!(
        "build: ours {ours_build:.2} s, hnsw_rs {theirs_build:.2} s ({:.2}x)",
        theirs_build / ours_build
    );
}
