//! Eight-lane f32 reductions that LLVM turns into vector code.
//!
//! A plain `iter().map().sum()` over f32 stays scalar: the compiler may not reorder a float
//! sum. Eight independent accumulators over `chunks_exact(8)` (no bounds checks inside) give it
//! a legal order that fills one AVX register, or two SSE ones. Every function is
//! `#[inline(always)]`, so a caller compiled with `#[target_feature(enable = "avx2,fma")]` gets
//! the AVX2 build of the loop, and one without gets the baseline build.
//!
//! Both slices must have the same length (checked in debug builds): with unequal ones the
//! remainders would pair the wrong elements. The callers' hot loops slice rows of one width;
//! a length check in here cost the encoder 4-5% (measured with `souk-encoder-bench shapes`).

/// Accumulators per reduction: one 256-bit register of f32.
pub const LANES: usize = 8;

/// The eight partial sums added in lane order (the same result on every machine). A pairwise
/// tree (a0+a4)+(a1+a5)... measured 1-2% slower in the encoder's attention (32-wide heads).
#[inline(always)]
pub fn fold(acc: [f32; LANES]) -> f32 {
    acc.iter().sum()
}

/// `Σ term(xᵢ, yᵢ)` over eight independent lanes.
#[inline(always)]
pub fn sum(x: &[f32], y: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert_eq!(
        x.len(),
        y.len(),
        "souk_lanes::sum over slices of unequal length"
    );
    let mut acc = [0.0f32; LANES];
    let xs = x.chunks_exact(LANES);
    let ys = y.chunks_exact(LANES);
    let tail: f32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(&a, &b)| term(a, b))
        .sum();
    for (xc, yc) in xs.zip(ys) {
        for l in 0..LANES {
            acc[l] += term(xc[l], yc[l]);
        }
    }
    fold(acc) + tail
}

/// `Σ xᵢ yᵢ`.
#[inline(always)]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    sum(x, y, |a, b| a * b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    }

    #[test]
    fn every_length_matches_the_plain_sum_including_the_tail() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 64, 383, 384, 385] {
            let (x, y) = (values(n, 1), values(n, 2));
            let plain: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
            let got = dot(&x, &y);
            assert!(
                (f64::from(got) - plain).abs() < 1e-4,
                "n={n}: {got} vs {plain}"
            );
            let l1: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum();
            let got = sum(&x, &y, |a, b| (a - b).abs());
            assert!((f64::from(got) - l1).abs() < 1e-4, "n={n}: {got} vs {l1}");
        }
    }
}
