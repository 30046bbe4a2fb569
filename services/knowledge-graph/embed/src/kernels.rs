//! The arithmetic of the three models: anchors, scores and their gradients.
//!
//! Reductions use 8 independent lanes (`souk_lanes`) so that LLVM vectorises them without
//! fast-math (a single `f32` accumulator is a serial dependency chain it may not reorder).
//!
//! RotatE rows are laid out `[re_0..re_d, im_0..im_d]`. Relation rows hold phase parameters
//! `p`, with `θ = p · phase_scale`.
use crate::{Model, Side};
use souk_lanes::LANES;

/// Whether this CPU runs the AVX2 copies of the hot loops (checked once).
///
/// The hot entry points (a worker's share of a batch, a scan over all entities) exist twice:
/// the baseline build (SSE2) and a `#[target_feature(enable = "avx2,fma")]` copy; every kernel
/// is `#[inline(always)]` so it is compiled again inside the wide copy, where the 8-lane
/// reductions fill one register. Measured on WN18RR RotatE (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    // std caches the CPUID answer: this is an atomic load.
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `x = compose(e, r)` for the side being predicted.
#[inline(always)]
pub(crate) fn anchor(
    model: Model,
    side: Side,
    phase_scale: f32,
    e: &[f32],
    r: &[f32],
    x: &mut [f32],
) {
    match (model, side) {
        (Model::TransE, Side::Tail) => {
            for ((x, e), r) in x.iter_mut().zip(e).zip(r) {
                *x = e + r;
            }
        }
        (Model::TransE, Side::Head) => {
            for ((x, e), r) in x.iter_mut().zip(e).zip(r) {
                *x = e - r;
            }
        }
        (Model::DistMult, _) => {
            for ((x, e), r) in x.iter_mut().zip(e).zip(r) {
                *x = e * r;
            }
        }
        (Model::RotatE, _) => {
            let d = r.len();
            let sign = if side == Side::Tail { 1.0 } else { -1.0 };
            let (e_re, e_im) = e.split_at(d);
            let (x_re, x_im) = x.split_at_mut(d);
            for i in 0..d {
                let (s, c) = (r[i] * phase_scale).sin_cos();
                let s = s * sign;
                x_re[i] = e_re[i] * c - e_im[i] * s;
                x_im[i] = e_re[i] * s + e_im[i] * c;
            }
        }
    }
}

/// Score of candidate `c` against anchor `x`: higher is more plausible.
#[inline(always)]
pub(crate) fn score(model: Model, margin: f32, x: &[f32], c: &[f32]) -> f32 {
    match model {
        Model::TransE => margin - l1(x, c),
        Model::DistMult => dot(x, c),
        Model::RotatE => margin - modulus_sum(x, c),
    }
}

#[inline(always)]
fn dot(x: &[f32], c: &[f32]) -> f32 {
    souk_lanes::dot(x, c)
}

#[inline(always)]
fn l1(x: &[f32], c: &[f32]) -> f32 {
    souk_lanes::sum(x, c, |a, b| (a - b).abs())
}

#[inline(always)]
fn modulus_sum(x: &[f32], c: &[f32]) -> f32 {
    let d = x.len() / 2;
    let (x_re, x_im) = x.split_at(d);
    let (c_re, c_im) = c.split_at(d);
    let mut acc = [0.0f32; LANES];
    // Zipped fixed-size chunks: no bounds checks inside, so the lanes become one vector.
    let parts = x_re
        .chunks_exact(LANES)
        .zip(x_im.chunks_exact(LANES))
        .zip(c_re.chunks_exact(LANES).zip(c_im.chunks_exact(LANES)));
    for ((xr, xi), (cr, ci)) in parts {
        for l in 0..LANES {
            let a = xr[l] - cr[l];
            let b = xi[l] - ci[l];
            acc[l] += (a * a + b * b).sqrt();
        }
    }
    let mut tail = 0.0;
    for j in d - d % LANES..d {
        let a = x_re[j] - c_re[j];
        let b = x_im[j] - c_im[j];
        tail += (a * a + b * b).sqrt();
    }
    souk_lanes::fold(acc) + tail
}

/// Adds `g · ∂score/∂c` to `gc` and `g · ∂score/∂x` to `gx`.
#[inline(always)]
pub(crate) fn score_backward(
    model: Model,
    g: f32,
    x: &[f32],
    c: &[f32],
    gx: &mut [f32],
    gc: &mut [f32],
) {
    match model {
        Model::TransE => {
            // ∂(γ - Σ|x - c|)/∂c = sign(x - c); ∂/∂x = -sign(x - c).
            for (((x, c), gx), gc) in x.iter().zip(c).zip(gx.iter_mut()).zip(gc.iter_mut()) {
                let s = g * sign(x - c);
                *gc += s;
                *gx -= s;
            }
        }
        Model::DistMult => {
            for (((x, c), gx), gc) in x.iter().zip(c).zip(gx.iter_mut()).zip(gc.iter_mut()) {
                *gc += g * x;
                *gx += g * c;
            }
        }
        Model::RotatE => {
            let d = x.len() / 2;
            let (x_re, x_im) = x.split_at(d);
            let (c_re, c_im) = c.split_at(d);
            let (gx_re, gx_im) = gx.split_at_mut(d);
            let (gc_re, gc_im) = gc.split_at_mut(d);
            let rows = x_re
                .iter()
                .zip(x_im)
                .zip(c_re.iter().zip(c_im))
                .zip(gx_re.iter_mut().zip(gx_im.iter_mut()))
                .zip(gc_re.iter_mut().zip(gc_im.iter_mut()));
            for ((((xr, xi), (cr, ci)), (gxr, gxi)), (gcr, gci)) in rows {
                let a = xr - cr;
                let b = xi - ci;
                // The modulus is not differentiable at 0; the RotatE code's norm gives 0 there.
                let k = g / (a * a + b * b).sqrt().max(1e-12);
                let ga = k * a;
                let gb = k * b;
                *gcr += ga;
                *gci += gb;
                *gxr -= ga;
                *gxi -= gb;
            }
        }
    }
}

#[inline(always)]
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Back-propagates the anchor gradient `gx` of `x = compose(e, r)` into `ge` and `gr`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn anchor_backward(
    model: Model,
    side: Side,
    phase_scale: f32,
    e: &[f32],
    r: &[f32],
    gx: &[f32],
    ge: &mut [f32],
    gr: &mut [f32],
) {
    match (model, side) {
        (Model::TransE, _) => {
            let rs = if side == Side::Tail { 1.0 } else { -1.0 };
            for i in 0..gx.len() {
                ge[i] += gx[i];
                gr[i] += rs * gx[i];
            }
        }
        (Model::DistMult, _) => {
            for i in 0..gx.len() {
                ge[i] += gx[i] * r[i];
                gr[i] += gx[i] * e[i];
            }
        }
        (Model::RotatE, _) => {
            let d = r.len();
            let sign = if side == Side::Tail { 1.0 } else { -1.0 };
            for i in 0..d {
                let (s, c) = (r[i] * phase_scale).sin_cos();
                let s = s * sign;
                let (e_re, e_im) = (e[i], e[d + i]);
                let (g_re, g_im) = (gx[i], gx[d + i]);
                // x_re = e_re c - e_im s ; x_im = e_re s + e_im c  (s carries the side's sign)
                ge[i] += g_re * c + g_im * s;
                ge[d + i] += -g_re * s + g_im * c;
                let x_re = e_re * c - e_im * s;
                let x_im = e_re * s + e_im * c;
                // dx/dθ = sign · (-x_im, x_re)
                gr[i] += sign * (-g_re * x_im + g_im * x_re) * phase_scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences against the hand-written gradients, for every model and side.
    #[test]
    fn gradients_match_finite_differences() {
        let d = 5;
        let phase_scale = 3.0;
        for model in [Model::TransE, Model::DistMult, Model::RotatE] {
            for side in [Side::Tail, Side::Head] {
                let w = model.entity_width(d);
                let mut rng = crate::SplitMix64::new(7);
                let mut v =
                    |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
                let e = v(w);
                let r = v(d);
                let c = v(w);
                let f = |e: &[f32], r: &[f32], c: &[f32]| -> f32 {
                    let mut x = vec![0.0; w];
                    anchor(model, side, phase_scale, e, r, &mut x);
                    score(model, 1.0, &x, c)
                };
                let mut x = vec![0.0; w];
                anchor(model, side, phase_scale, &e, &r, &mut x);
                let (mut gx, mut gc, mut ge, mut gr) =
                    (vec![0.0; w], vec![0.0; w], vec![0.0; w], vec![0.0; d]);
                score_backward(model, 1.0, &x, &c, &mut gx, &mut gc);
                anchor_backward(model, side, phase_scale, &e, &r, &gx, &mut ge, &mut gr);
                let h = 1e-3f32;
                let numeric = |which: usize, i: usize| -> f32 {
                    let (mut e1, mut r1, mut c1) = (e.clone(), r.clone(), c.clone());
                    let (mut e2, mut r2, mut c2) = (e.clone(), r.clone(), c.clone());
                    match which {
                        0 => {
                            e1[i] += h;
                            e2[i] -= h;
                        }
                        1 => {
                            r1[i] += h;
                            r2[i] -= h;
                        }
                        _ => {
                            c1[i] += h;
                            c2[i] -= h;
                        }
                    }
                    (f(&e1, &r1, &c1) - f(&e2, &r2, &c2)) / (2.0 * h)
                };
                for i in 0..w {
                    assert!(
                        (numeric(0, i) - ge[i]).abs() < 2e-2,
                        "{model:?} {side:?} e[{i}]"
                    );
                    assert!(
                        (numeric(2, i) - gc[i]).abs() < 2e-2,
                        "{model:?} {side:?} c[{i}]"
                    );
                }
                for (i, &g) in gr.iter().enumerate() {
                    assert!(
                        (numeric(1, i) - g).abs() < 5e-2,
                        "{model:?} {side:?} r[{i}]: {} vs {g}",
                        numeric(1, i)
                    );
                }
            }
        }
    }

    #[test]
    fn head_and_tail_anchors_give_the_same_score() {
        let d = 6;
        for model in [Model::TransE, Model::DistMult, Model::RotatE] {
            let w = model.entity_width(d);
            let mut rng = crate::SplitMix64::new(3);
            let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
            let (h, r, t) = (v(w), v(d), v(w));
            let mut x = vec![0.0; w];
            anchor(model, Side::Tail, 2.0, &h, &r, &mut x);
            let tail = score(model, 6.0, &x, &t);
            anchor(model, Side::Head, 2.0, &t, &r, &mut x);
            let head = score(model, 6.0, &x, &h);
            assert!((tail - head).abs() < 1e-4, "{model:?}: {tail} vs {head}");
        }
    }
}
