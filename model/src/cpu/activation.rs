//! The MLP's activation on the CPU in one pass: `gelu_tanh(gate) · up`.
//!
//! Burn's composition (`gelu_approximate(gate) * up`) runs eight passes over
//! the `[T, F]` activations and calls libm's scalar `powf` and `tanhf` per
//! value: on a 512-token prompt of the 270M that was a fifth of the prefill's
//! CPU time (`perf record` of `cpu_bench --prompt-tokens 512`: `expm1f`
//! 9.7 %, `powf` 7.5 %, `tanhf` 5.1 %). Here each value is read once and
//! the tanh is written as the logistic function it equals,
//! `½(1 + tanh y) = 1 / (1 + e^(−2y))`, with `e^z` a branch-free polynomial
//! (Cephes' `expf`: a degree-5 polynomial after reducing by `ln 2`, within
//! about 2 ulp) that the compiler vectorizes, built for AVX-512, AVX2 and
//! the baseline and chosen by [`Isa::best`] like the products. The result
//! is within a few ulp of the exact value, and within Burn's own rounding of
//! Burn's (whose `1 + tanh` cancels for negative gates; `tests` below).
//!
//! Owns: the fused GeGLU over f32 slices. Must never: allocate per value,
//! or see anything but the activations it is given.

use rayon::prelude::*;

use super::Isa;

/// `√(2/π)`, the GELU tanh approximation's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// Values per rayon task: below this the hand-off costs more than the work.
const MIN_TASK_VALUES: usize = 16 << 10;

/// `out[i] = gelu_tanh(gate[i]) · up[i]`.
///
/// # Panics
///
/// If the three slices differ in length.
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "geglu needs slices of one length"
    );
    let isa = Isa::best();
    if out.len() < 2 * MIN_TASK_VALUES {
        geglu_with(isa, gate, up, out);
        return;
    }
    let chunk = out
        .len()
        .div_ceil(rayon::current_num_threads().max(1))
        .max(MIN_TASK_VALUES)
        .next_multiple_of(16);
    out.par_chunks_mut(chunk)
        .zip(gate.par_chunks(chunk).zip(up.par_chunks(chunk)))
        .for_each(|(o, (g, u))| geglu_with(isa, g, u, o));
}

/// [`geglu`] on the calling thread through the kernel built for `isa` (the
/// baseline when this CPU lacks it).
pub fn geglu_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let available = Isa::detected();
        if isa == Isa::Avx512 && available.contains(&Isa::Avx512) {
            // SAFETY: AVX-512 F/BW/VL and FMA were detected on this CPU
            // (`Isa::available`), which is all `geglu_avx512` is built for.
            unsafe { geglu_avx512(gate, up, out) };
            return;
        }
        if matches!(isa, Isa::Avx2 | Isa::Avx512) && available.contains(&Isa::Avx2) {
            // SAFETY: AVX2, FMA and F16C were detected on this CPU.
            unsafe { geglu_avx2(gate, up, out) };
            return;
        }
    }
    geglu_body(gate, up, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn geglu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    geglu_body(gate, up, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    geglu_body(gate, up, out);
}

/// The loop every instruction set compiles: sixteen values at a time, no
/// branches, no calls, so it vectorizes to the widest registers enabled.
#[inline(always)]
fn geglu_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let mut o = out.chunks_exact_mut(16);
    let mut g = gate.chunks_exact(16);
    let mut u = up.chunks_exact(16);
    for ((o, g), u) in (&mut o).zip(&mut g).zip(&mut u) {
        for i in 0..16 {
            o[i] = gelu_tanh(g[i]) * u[i];
        }
    }
    let (o, g, u) = (o.into_remainder(), g.remainder(), u.remainder());
    for i in 0..o.len() {
        o[i] = gelu_tanh(g[i]) * u[i];
    }
}

/// `x · ½(1 + tanh(√(2/π)(x + 0.044715 x³)))`, as `x / (1 + e^(−2y))`;
/// exactly 0 where `e^(−2y)` leaves f32's range (gates below about −10,
/// where the exact value is below 1e-37).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let z = -2.0 * y;
    // A select, not a branch: the loop stays vectorized.
    let s = if z >= 88.7 { 0.0 } else { 1.0 / (1.0 + exp(z)) };
    x * s
}

/// `e^x` without libm: `x = n·ln 2 + r`, `|r| ≤ ½ ln 2`, `e^r` by Cephes'
/// polynomial, `2^n` written into the exponent bits. The input is clamped
/// to `[−86, 88.7]` (`e^x` stays a normal finite f32; outside, the
/// logistic above is 0 or 1 to f32 precision anyway) and NaN stays NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer
    // without a call (the baseline has no rounding instruction).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-86.0, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // n is an integer in [-124, 128]; `n − 1 + 127` in the exponent field is
    // 2^(n−1), a normal number (n = 128 only at the clamp's top, where
    // e^r < 1 keeps the doubled product finite).
    let n = n as i32;
    let half = f32::from_bits(((n - 1 + 127) as u32) << 23);
    er * half * 2.0
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{DType, Device, Tensor, TensorData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Burn's composition on the CPU backend: the reference.
    fn burn_geglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
        let device = Device::flex();
        let t = |v: &[f32]| {
            Tensor::<1>::from_data(
                TensorData::new(v.to_vec(), [v.len()]),
                (&device, DType::F32),
            )
        };
        (gelu_approximate(t(gate)) * t(up))
            .into_data()
            .iter::<f32>()
            .collect()
    }

    /// Gates over the range the model meets and far past it (where the
    /// logistic saturates), special values, lengths off the 16-lane grid.
    fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gate: Vec<f32> = (0..n)
            .map(|i| match i % 4 {
                0 => rng.random_range(-4.0f32..4.0),
                1 => rng.random_range(-0.01f32..0.01),
                2 => rng.random_range(-30.0f32..30.0),
                _ => rng.random_range(-200.0f32..200.0),
            })
            .collect();
        for (i, v) in [0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e6, -1e6]
            .into_iter()
            .enumerate()
        {
            if i < n {
                gate[i] = v;
            }
        }
        let up = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        (gate, up)
    }

    /// The exact value in f64 (as a logistic: `1 + tanh` would cancel
    /// even in f64 for very negative gates).
    fn truth(g: f32, u: f32) -> f64 {
        let (g, u) = (f64::from(g), f64::from(u));
        let y = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
        g * u / (1.0 + (-2.0 * y).exp())
    }

    #[test]
    fn every_instruction_set_is_within_a_few_ulp_and_within_burns_own_rounding() {
        for n in [1, 15, 16, 17, 1000, 70_001] {
            let (gate, up) = inputs(n, n as u64);
            let burn = burn_geglu(&gate, &up);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; n];
                geglu_with(isa, &gate, &up, &mut got);
                for i in 0..n {
                    let t = truth(gate[i], up[i]);
                    let what = || format!("{isa:?} n={n} i={i}: gate {} up {}", gate[i], up[i]);
                    // Ours: a few ulp of the exact value, plus what
                    // rounding y to f32 costs in `e^(−2y)` (its condition
                    // number is 2|y|); where the logistic saturates both
                    // are below 1e-35.
                    let g = f64::from(gate[i]);
                    let y = 0.8 * (g + 0.044715 * g * g * g).abs();
                    let err = (f64::from(got[i]) - t).abs();
                    assert!(
                        err <= f64::from(f32::EPSILON) * (8.0 + 4.0 * y) * t.abs() + 1e-35,
                        "{}: {} vs exact {t}",
                        what(),
                        got[i]
                    );
                    // Burn rounds four times (an ulp or two of the value)
                    // and its `1 + tanh(y)` cancels for negative gates (an
                    // ulp of `½·gate·up`): the two agree within that.
                    let burn_bound = f64::from(f32::EPSILON)
                        * (4.0 * t.abs() + g.abs() * f64::from(up[i]).abs());
                    assert!(
                        (f64::from(got[i]) - f64::from(burn[i])).abs() <= burn_bound + 1e-35,
                        "{}: {} vs Burn {}",
                        what(),
                        got[i],
                        burn[i]
                    );
                }
            }
        }
    }

    #[test]
    fn the_pooled_path_equals_one_thread() {
        let (gate, up) = inputs(3 * MIN_TASK_VALUES + 5, 7);
        let mut pooled = vec![0.0; gate.len()];
        geglu(&gate, &up, &mut pooled);
        let mut single = vec![0.0; gate.len()];
        geglu_with(Isa::best(), &gate, &up, &mut single);
        assert_eq!(pooled, single);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_keeps_nan() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100_000 {
            let x = rng.random_range(-86.0f32..88.0);
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want,
                "exp({x}) = {got}, libm {want}"
            );
        }
        assert!(exp(f32::NAN).is_nan());
        assert!(gelu_tanh(f32::NAN).is_nan());
    }
}
