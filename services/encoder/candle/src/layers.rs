//! BERT's transformer layers, as candle-transformers' `BertEncoder` computes them, with two
//! CPU changes measured in BENCHMARKS.md: query, key and value are one matrix multiply (their
//! weights concatenated at load), and GELU's `erf` is a vectorisable rational function instead
//! of `libm`'s scalar `erff` (17% of a CPU forward pass). Other devices use candle's `gelu_erf`.
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Module, Shape, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::Config;

#[derive(Clone)]
struct Layer {
    qkv: Linear,
    heads: usize,
    head_size: usize,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

fn linear(vb: &VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Linear> {
    let weight = vb.get((outputs, inputs), "weight")?;
    let bias = vb.get(outputs, "bias")?;
    Ok(Linear::new(weight, Some(bias)))
}

fn layer_norm(vb: &VarBuilder, size: usize, eps: f64) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(size, eps, vb.clone())
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let h = config.hidden_size;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        let parts = ["query", "key", "value"];
        let weights = parts
            .iter()
            .map(|p| own.pp(p).get((h, h), "weight"))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let biases = parts
            .iter()
            .map(|p| own.pp(p).get(h, "bias"))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let qkv = Linear::new(Tensor::cat(&weights, 0)?, Some(Tensor::cat(&biases, 0)?));
        Ok(Self {
            qkv,
            heads: config.num_attention_heads,
            head_size: h / config.num_attention_heads,
            attention_out: linear(&attention.pp("output").pp("dense"), h, h)?,
            attention_norm: layer_norm(
                &attention.pp("output").pp("LayerNorm"),
                h,
                config.layer_norm_eps,
            )?,
            intermediate: linear(
                &vb.pp("intermediate").pp("dense"),
                h,
                config.intermediate_size,
            )?,
            output: linear(&vb.pp("output").pp("dense"), config.intermediate_size, h)?,
            output_norm: layer_norm(&vb.pp("output").pp("LayerNorm"), h, config.layer_norm_eps)?,
        })
    }

    /// One layer; `step(name)` runs after each operation (a no-op, or a device synchronise and
    /// a clock read when profiling).
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let (batch, width, hidden) = x.dims3()?;
        let qkv = self.qkv.forward(x)?;
        step("qkv linear")?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, i * hidden, hidden)?
                .reshape((batch, width, self.heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        step("split heads (3 contiguous copies)")?;
        let scores = q.matmul(&k.t()?)?;
        step("q k^T matmul")?;
        let scores = (scores / (self.head_size as f64).sqrt())?;
        step("scale")?;
        let scores = scores.broadcast_add(mask)?;
        step("mask broadcast add")?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        step("softmax")?;
        let context = probs.matmul(&v)?;
        step("probs v matmul")?;
        let context = context
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch, width, hidden))?;
        step("merge heads (contiguous copy)")?;
        let projected = self.attention_out.forward(&context)?;
        step("attention out linear")?;
        let attended = self.attention_norm.forward(&(projected + x)?)?;
        step("residual + layer norm (attention)")?;
        let inner = self.intermediate.forward(&attended)?;
        step("intermediate linear")?;
        let inner = gelu(&inner)?;
        step("gelu")?;
        let out = self.output.forward(&inner)?;
        step("output linear")?;
        let out = self.output_norm.forward(&(out + &attended)?)?;
        step("residual + layer norm (output)")?;
        Ok(out)
    }
}

/// The encoder stack.
#[derive(Clone)]
pub(crate) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("layer.{i}")), config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// `mask`: additive, broadcastable to (batch, heads, width, width).
    pub(crate) fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, mask, &mut |_| Ok(()))
    }

    /// [`Self::forward`] calling `step` after each operation of each layer.
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        mask: &Tensor,
        step: &mut dyn FnMut(&'static str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask, step)?;
        }
        Ok(x)
    }
}

/// Exact (erf) GELU: the fast kernel for contiguous f32 on CPU, candle's op elsewhere.
fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&FastGelu)
    } else {
        x.gelu_erf()
    }
}

struct FastGelu;

impl CustomOp1 for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("fast-gelu-erf takes f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast-gelu-erf takes a contiguous tensor");
        };
        let mut out = values[start..end].to_vec();
        // Split over the cores like candle's own elementwise ops (a single thread here made the
        // faster kernel no faster at batch 32).
        use rayon::prelude::*;
        out.par_chunks_mut(16 * 1024).for_each(gelu_slice);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `e^x` for x ≤ 0 (clamped at -87): Cody-Waite reduction to |r| ≤ ln2/2 and a degree-6
/// polynomial (relative error ~2e-7), written without calls or casts so that it vectorises.
#[inline(always)]
pub(crate) fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it, two's complement, in the low
    // mantissa bits: n and 2^n come from plain float and integer lane ops. `round()` and
    // `n as i32` (a saturating cast) made LLVM convert the eight lanes one at a time.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = madd::<FMA>(x, LOG2E, SHIFTER);
    let n = shifted - SHIFTER;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let p = horner::<FMA>(
        r,
        &[
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ],
    );
    // n is in [-126, 0], so n + 127 is a normal exponent.
    let biased = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// `a * b + c`, fused (one rounding, one instruction) in the builds compiled with FMA; the
/// portable build keeps two operations, since `mul_add` there is a call into libm.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `c[0] x^(n-1) + ... + c[n-1]` by Horner's rule.
#[inline(always)]
fn horner<const FMA: bool>(x: f32, coefficients: &[f32]) -> f32 {
    coefficients[1..]
        .iter()
        .fold(coefficients[0], |acc, &c| madd::<FMA>(acc, x, c))
}

/// `erf(x)` as `x P(x^2) / Q(x^2)` on x clamped to [-4, 4] (erf is +/-1 in f32 past it), the
/// rational approximation XLA and Eigen use for f32: ten multiply-adds, two multiplies and one
/// division, no `exp` (A&S 7.1.26 with an `exp` cost twice the operations). Absolute error
/// < 5e-7.
#[inline(always)]
fn erf<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x * horner::<FMA>(
        x2,
        &[
            -2.726_142_3e-10,
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906_3e-4,
            -2.954_600_2e-3,
            -1.609_603_3e-2,
        ],
    );
    let q = horner::<FMA>(
        x2,
        &[
            -1.456_607_2e-5,
            -2.133_740_6e-4,
            -1.682_827e-3,
            -7.373_329_2e-3,
            -1.426_474e-2,
        ],
    );
    p / q
}

#[inline(always)]
fn gelu_slice_body<const FMA: bool>(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf::<FMA>(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_slice_avx2(values: &mut [f32]) {
    gelu_slice_body::<true>(values);
}

pub(crate) fn gelu_slice(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            gelu_slice_avx2(values);
        }
        return;
    }
    gelu_slice_body::<false>(values);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // erf by its series / continued fraction is overkill here: integrate numerically.
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut sum = f(0.0) + f(x);
        for i in 1..n {
            sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn fast_gelu_matches_the_exact_one() {
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
        let mut fast = xs.clone();
        gelu_slice(&mut fast);
        for (x, g) in xs.iter().zip(&fast) {
            let exact = 0.5 * f64::from(*x) * (1.0 + erf_f64(f64::from(*x) / 2f64.sqrt()));
            assert!(
                (f64::from(*g) - exact).abs() < 2e-6,
                "gelu({x}) = {g}, exact {exact}"
            );
        }
        // The portable build (no FMA) too, not only the one this CPU dispatches to.
        let mut portable = xs.clone();
        gelu_slice_body::<false>(&mut portable);
        for ((x, p), g) in xs.iter().zip(&portable).zip(&fast) {
            assert!(
                (p - g).abs() < 1e-6,
                "gelu({x}): portable {p}, dispatched {g}"
            );
        }
    }

    /// The softmax's exp over its whole domain, both builds: relative error under 1e-6 down to
    /// the clamp, where the 2^n built from the shifter's bits is smallest (2^-126).
    #[test]
    fn exp_nonpositive_matches_the_exact_one() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let exact = f64::from(x).exp();
            for got in [exp_nonpositive::<true>(x), exp_nonpositive::<false>(x)] {
                let error = (f64::from(got) - exact).abs() / exact;
                assert!(error < 1e-6, "exp({x}) = {got}, exact {exact}");
            }
        }
        assert_eq!(exp_nonpositive::<false>(0.0), 1.0);
        // Past the clamp, and NaN, come out as e^-87: finite, never NaN in a softmax.
        assert_eq!(
            exp_nonpositive::<false>(-1000.0),
            exp_nonpositive::<false>(-87.0)
        );
        assert_eq!(
            exp_nonpositive::<false>(f32::NAN),
            exp_nonpositive::<false>(-87.0)
        );
    }
}
