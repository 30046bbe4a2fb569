//! Vectors in 8 bits: the HNSW graph's own copy of the item vectors (see [`crate::ann`]).
//!
//! Each number is a signed byte times one scale per vector (its largest magnitude / 127),
//! kept as four bytes after the codes, so a 384-d row is 388 bytes in one place: 7 cache
//! lines where an f16 row takes 12. A graph walk at a million items waits on memory, not
//! arithmetic (BENCHMARKS.md, "Session 32"), so fewer lines per distance is the speed-up;
//! the query stays in f32 (only the stored side is rounded), and every answer's final score
//! is computed again from the catalog's f16 vectors, so rounding only decides which
//! candidates the walk finds, not how they rank.
//!
//! Rounding moves a 384-d unit vector's dot product with a query by 1.8e-4 on average (at
//! most 8.3e-4 over the unit test's 2,000 pairs), against ~1e-5 for f16; the walk's recall
//! of an exact top 10 is in BENCHMARKS.md.

/// Bytes after the codes that hold the row's scale (an f32, little-endian).
pub(crate) const SCALE_BYTES: usize = 4;

/// One stored vector: its codes and the scale that turns a code back into a number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row<'a> {
    pub codes: &'a [i8],
    pub scale: f32,
}

impl<'a> Row<'a> {
    /// A row as [`push_row`] wrote it: `dim` codes, then the scale's bytes.
    pub fn read(stored: &'a [i8], dim: usize) -> Self {
        let (codes, rest) = stored.split_at(dim.min(stored.len()));
        let mut bytes = [0u8; SCALE_BYTES];
        for (b, &s) in bytes.iter_mut().zip(rest) {
            *b = s as u8;
        }
        Self {
            codes,
            scale: f32::from_le_bytes(bytes),
        }
    }

    /// The vector back in f32 (each number within half a step, scale / 2, of the original).
    pub fn widen(self) -> Vec<f32> {
        self.codes
            .iter()
            .map(|&c| f32::from(c) * self.scale)
            .collect()
    }

    /// The dot product with `v` (of the row's length; a shorter `v` reads as 0s).
    pub fn dot(self, v: &[f32]) -> f32 {
        if v.len() != self.codes.len() {
            return self.widen().iter().zip(v).map(|(a, b)| a * b).sum();
        }
        self.scale * dot_codes(self.codes, v)
    }
}

/// Appends `v` in 8 bits to `out`: `v.len()` codes, then [`SCALE_BYTES`] of scale. A vector
/// of zeros, or one holding a NaN or an infinity (which the catalog refuses), is stored as
/// zeros.
pub(crate) fn push_row(out: &mut Vec<i8>, v: &[f32]) {
    let top = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if top.is_finite() && top > 0.0 {
        top / 127.0
    } else {
        0.0
    };
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    out.extend(v.iter().map(|&x| {
        // In -127..=127 by the scale's choice; NaN casts to 0.
        (x * inverse).round().clamp(-127.0, 127.0) as i8
    }));
    out.extend(scale.to_le_bytes().map(|b| b as i8));
}

/// Σ codes[i] · v[i] (same lengths).
fn dot_codes(codes: &[i8], v: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
            #[allow(unsafe_code)]
            return unsafe { dot_codes_avx2(codes, v) };
        }
    }
    dot_codes_portable(codes, v)
}

fn dot_codes_portable(codes: &[i8], v: &[f32]) -> f32 {
    codes.iter().zip(v).map(|(&c, &x)| f32::from(c) * x).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_codes_avx2(codes: &[i8], v: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m128i, __m256, _mm_loadl_epi64, _mm256_add_ps, _mm256_cvtepi8_epi32, _mm256_cvtepi32_ps,
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let d = codes.len().min(v.len());
    let body = d - d % 8;
    let wide = d - d % 32;
    // 8 codes from `j` widened to f32, times v[j..j + 8], added to `acc`.
    // SAFETY (of each call): j + 8 <= body <= d, and `codes` and `v` both hold at least d
    // numbers, so the 8-byte and the 8-lane loads stay inside them.
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn step(codes: &[i8], v: &[f32], j: usize, acc: __m256) -> __m256 {
        unsafe {
            let c = _mm_loadl_epi64(codes.as_ptr().add(j).cast::<__m128i>());
            let x = _mm256_loadu_ps(v.as_ptr().add(j));
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), x, acc)
        }
    }
    // Four sums in flight, as in `rank::scan_f16_avx2`.
    let mut acc = [_mm256_setzero_ps(); 4];
    for j in (0..wide).step_by(32) {
        // SAFETY: j + 32 <= wide <= body, so every step's j + 8 <= body (see `step`).
        #[allow(unsafe_code)]
        unsafe {
            acc[0] = step(codes, v, j, acc[0]);
            acc[1] = step(codes, v, j + 8, acc[1]);
            acc[2] = step(codes, v, j + 16, acc[2]);
            acc[3] = step(codes, v, j + 24, acc[3]);
        }
    }
    for j in (wide..body).step_by(8) {
        // SAFETY: j + 8 <= body (see `step`).
        #[allow(unsafe_code)]
        unsafe {
            acc[0] = step(codes, v, j, acc[0]);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds the 8 floats stored.
    #[allow(unsafe_code)]
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum)
    };
    let tail = dot_codes_portable(&codes[body..d], &v[body..d]);
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::XorShift;

    fn unit(rng: &mut XorShift, d: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.uniform() as f32 - 0.5).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn stored(v: &[f32]) -> Vec<i8> {
        let mut out = Vec::new();
        push_row(&mut out, v);
        out
    }

    /// A 384-d unit vector's dot products with queries move by ~2e-4 when it is stored in 8
    /// bits: small beside the gaps between an item's neighbours, which is all the walk uses
    /// it for. Each number reads back within half a step of itself.
    #[test]
    fn an_8_bit_row_keeps_dot_products_within_1e_3() {
        let mut rng = XorShift::new(5);
        let (mut worst, mut sum) = (0.0f32, 0.0f32);
        for _ in 0..2_000 {
            let (q, v) = (unit(&mut rng, 384), unit(&mut rng, 384));
            let bytes = stored(&v);
            assert_eq!(bytes.len(), 384 + SCALE_BYTES);
            let row = Row::read(&bytes, 384);
            for (back, x) in row.widen().iter().zip(&v) {
                assert!((back - x).abs() <= row.scale / 2.0 + 1e-7, "{back} vs {x}");
            }
            let exact: f32 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
            let error = (row.dot(&q) - exact).abs();
            worst = worst.max(error);
            sum += error;
        }
        assert!(worst <= 1e-3, "worst {worst}");
        assert!(sum / 2_000.0 <= 3e-4, "mean {}", sum / 2_000.0);
    }

    /// The AVX2 kernel and the portable loop give each length's dot product of the codes
    /// (four 8-lane sums over 32-code blocks, single 8-lane steps after them, a tail), and a
    /// vector without a usable scale is stored as zeros.
    #[test]
    fn the_8_bit_dot_agrees_at_every_length_and_bad_vectors_store_zeros() {
        for d in 1i32..=72 {
            let codes: Vec<i8> = (0..d).map(|i| (i * 37 % 255 - 127) as i8).collect();
            let v: Vec<f32> = (0..d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 7.0).collect();
            let want: f64 = codes
                .iter()
                .zip(&v)
                .map(|(&c, &x)| f64::from(c) * f64::from(x))
                .sum();
            for (got, name) in [
                (dot_codes(&codes, &v), "dispatched"),
                (dot_codes_portable(&codes, &v), "portable"),
            ] {
                assert!(
                    (f64::from(got) - want).abs() <= 1e-3 * (1.0 + want.abs()),
                    "{name}, d {d}: {got} vs {want}"
                );
            }
        }
        for bad in [vec![0.0; 8], vec![f32::NAN; 8], vec![f32::INFINITY, 1.0]] {
            let bytes = stored(&bad);
            let row = Row::read(&bytes, bad.len());
            assert_eq!(row.scale, 0.0);
            assert!(row.codes.iter().all(|&c| c == 0), "{bad:?}");
            assert_eq!(row.dot(&vec![1.0; bad.len()]), 0.0);
        }
    }
}
