//! Micro-benchmarks of the decode kernels and the prefill attention at
//! MedGemma 4B shapes, each against the plain Burn ops it replaces and
//! against its bandwidth floor (the bytes it must move divided by the
//! device's measured bandwidth), for
//! `medgemmad bench --kernels`. Every row also checks the kernel's output
//! against Burn's on that device (on a GPU this covers the plane-reduction
//! path the CPU runtime cannot run).
//!
//! Owns: the shapes and the timing. Must never: judge (it prints numbers;
//! the GPU check's table reads them).

use std::time::Instant;

use burn::tensor::activation::gelu_approximate;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::DecodeTuning;

/// One measured kernel at one shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelRow {
    /// What ran, with its shape.
    pub name: String,
    /// Bytes the kernel must move at least (weights + activations).
    pub bytes: u64,
    /// Median time of our kernel, microseconds.
    pub kernel_us: f64,
    /// Median time of the plain Burn ops, microseconds.
    pub burn_us: f64,
    /// `bytes / bandwidth`, microseconds.
    pub floor_us: f64,
    /// Largest |kernel − Burn| over the output; for the f32 matmul row,
    /// largest |ours − an f64 product on the host|.
    pub max_abs_diff: f32,
    /// The f32 matmul row only: largest |Burn's matmul − the f64 product|.
    /// TF32 (10-bit mantissa) shows here as ~1e-3 of the operands' scale,
    /// f32 as ~1e-6: the GPU check of "f32 without TF32".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_max_abs_diff: Option<f32>,
}

pub(crate) fn filled<const D: usize>(
    shape: [usize; D],
    dtype: DType,
    device: &Device,
    salt: u32,
) -> Tensor<D> {
    let v = pattern(shape.iter().product(), salt);
    Tensor::<D>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype)
}

/// A cheap deterministic pattern in [-1, 1) (no RNG on the device needed).
fn pattern(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt.wrapping_mul(97));
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// `a · b` in f64 on the host, `a: [m, k]`, `b: [k, n]`, row-major.
fn host_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = f64::from(a[i * k + p]);
            let row = &b[p * n..(p + 1) * n];
            for (o, y) in out[i * n..(i + 1) * n].iter_mut().zip(row) {
                *o += x * f64::from(*y);
            }
        }
    }
    out
}

fn diff_to_host<const D: usize>(t: Tensor<D>, host: &[f64]) -> f32 {
    let v: Vec<f32> = t.cast(DType::F32).into_data().iter::<f32>().collect();
    v.iter()
        .zip(host)
        .map(|(x, y)| (f64::from(*x) - y).abs() as f32)
        .fold(0.0, f32::max)
}

/// The f32 product of more rows than the skinny kernel takes (a prompt
/// chunk, the fidelity tests' mode): ours (`kernels::matmul`, no TF32) and
/// Burn's (tensor cores, TF32 where the GPU has it), each against f64.
fn f32_matmul_row(
    device: &Device,
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
    bandwidth: f64,
) -> KernelRow {
    let (a, b) = (pattern(m * k, 11), pattern(k * n, 12));
    let want = host_product(&a, &b, m, k, n);
    let at = Tensor::<2>::from_data(TensorData::new(a, [m, k]), (device, DType::F32));
    let bt = Tensor::<2>::from_data(TensorData::new(b, [k, n]), (device, DType::F32));
    let ours = diff_to_host(super::matmul(at.clone(), bt.clone()), &want);
    let burn = diff_to_host(at.clone().matmul(bt.clone()), &want);
    let kernel_us = time_us(device, reps, || {
        let _ = super::matmul(at.clone(), bt.clone());
    });
    let burn_us = time_us(device, reps, || {
        let _ = at.clone().matmul(bt.clone());
    });
    let bytes = ((m * k + k * n + m * n) * 4) as u64;
    KernelRow {
        name: format!("f32 matmul (no TF32) {m}x{k}·{k}x{n}"),
        bytes,
        kernel_us,
        burn_us,
        floor_us: bytes as f64 / bandwidth * 1e6,
        max_abs_diff: ours,
        burn_max_abs_diff: Some(burn),
    }
}

/// Median wall time of `f` in microseconds over `reps` synced runs (after
/// two untimed ones: compilation, allocation).
fn time_us(device: &Device, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let _ = device.sync();
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            let _ = device.sync();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a: Vec<f32> = a.cast(DType::F32).into_data().iter::<f32>().collect();
    let b: Vec<f32> = b.cast(DType::F32).into_data().iter::<f32>().collect();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The shapes [`micro_benchmarks`] runs.
#[derive(Debug, Clone)]
pub struct BenchShapes {
    /// Each projection: name, output features, input features.
    pub projections: Vec<(&'static str, usize, usize)>,
    /// The hidden size (RMSNorm's width).
    pub hidden: usize,
    /// The MLP width (GeGLU's).
    pub mlp: usize,
    /// Query heads, key/value heads and their width (q/k-norm + RoPE,
    /// decode attention).
    pub heads: (usize, usize, usize),
    /// Cached positions the decode attention rows run over.
    pub contexts: Vec<usize>,
    /// Logits per row (the greedy argmax).
    pub vocab: usize,
}

impl BenchShapes {
    /// MedGemma 4B's decoder: hidden 2560, MLP 10240, 8 × 256 query and
    /// 4 × 256 key/value features, the tied LM head over 262 208 tokens.
    pub fn medgemma_4b() -> Self {
        Self {
            projections: vec![
                ("q_proj", 2048, 2560),
                ("k_proj", 1024, 2560),
                ("o_proj", 2560, 2048),
                ("gate_proj", 10240, 2560),
                ("down_proj", 2560, 10240),
                ("lm_head", 262_208, 2560),
            ],
            hidden: 2560,
            mlp: 10240,
            heads: (8, 4, 256),
            contexts: vec![512, 4096],
            vocab: 262_208,
        }
    }
}

/// Runs every kernel at `shapes` for the given row counts, in `dtype` on
/// `device`; `bandwidth` in bytes/s. `None` when the device is not a CubeCL
/// one.
pub fn micro_benchmarks(
    device: &Device,
    dtype: DType,
    shapes: &BenchShapes,
    rows: &[usize],
    bandwidth: f64,
    reps: usize,
) -> Option<Vec<KernelRow>> {
    let el = dtype.size() as u64;
    let floor = |bytes: u64| bytes as f64 / bandwidth * 1e6;
    let mut out = Vec::new();
    let (hidden, mlp) = (shapes.hidden, shapes.mlp);
    for (pi, &(name, n, k)) in shapes.projections.iter().enumerate() {
        let w = filled([n, k], dtype, device, pi as u32);
        for &m in rows {
            let x = filled([m, k], dtype, device, 1000 + m as u32);
            let got = super::skinny_matmul(&w, &x)?;
            let want = x.clone().matmul(w.clone().transpose());
            let d = diff(got, want);
            let kernel_us = time_us(device, reps, || {
                let _ = super::skinny_matmul(&w, &x);
            });
            let burn_us = time_us(device, reps, || {
                let _ = x.clone().matmul(w.clone().transpose());
            });
            let bytes = (n * k) as u64 * el + ((m * k + m * n) as u64) * el;
            out.push(KernelRow {
                name: format!("skinny {name} {m}x{k}·{n}x{k}ᵀ"),
                bytes,
                kernel_us,
                burn_us,
                floor_us: floor(bytes),
                max_abs_diff: d,
                burn_max_abs_diff: None,
            });
        }
    }
    let scale = filled([hidden], DType::F32, device, 7).add_scalar(1.0);
    for &m in rows {
        let x = filled([m, hidden], dtype, device, 2000 + m as u32);
        let plain = |x: Tensor<2>| {
            let xf = x.cast(DType::F32);
            let ms = xf.clone().powi_scalar(2).mean_dim(1);
            (xf * (ms + 1e-6).sqrt().recip() * scale.clone().unsqueeze::<2>()).cast(dtype)
        };
        let d = diff(super::rms_norm(&x, &scale, 1e-6)?, plain(x.clone()));
        let kernel_us = time_us(device, reps, || {
            let _ = super::rms_norm(&x, &scale, 1e-6);
        });
        let burn_us = time_us(device, reps, || {
            let _ = plain(x.clone());
        });
        let bytes = 2 * (m * hidden) as u64 * el + hidden as u64 * 4;
        out.push(KernelRow {
            name: format!("rms_norm {m}x{hidden}"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
        // A layer's seam: post-norm, residual add, next norm in one launch,
        // against our norm kernel twice and Burn's add (what it replaces).
        let r = filled([m, hidden], dtype, device, 2500 + m as u32).mul_scalar(4.0);
        let unfused = |r: Tensor<2>, x: &Tensor<2>| -> Option<(Tensor<2>, Tensor<2>)> {
            let sum = r + super::rms_norm(x, &scale, 1e-6)?;
            let m = super::rms_norm(&sum, &scale, 1e-6)?;
            Some((sum, m))
        };
        let (got_x, got_m) = super::add_rms_norm(&r, &x, (&scale, 1e-6), (&scale, 1e-6))?;
        let (want_x, want_m) = unfused(r.clone(), &x)?;
        let d = diff(got_x, want_x).max(diff(got_m, want_m));
        let kernel_us = time_us(device, reps, || {
            let _ = super::add_rms_norm(&r, &x, (&scale, 1e-6), (&scale, 1e-6));
        });
        let burn_us = time_us(device, reps, || {
            let _ = unfused(r.clone(), &x);
        });
        let bytes = 4 * (m * hidden) as u64 * el + 2 * hidden as u64 * 4;
        out.push(KernelRow {
            name: format!("add_rms_norm {m}x{hidden} (against: rms_norm, add, rms_norm)"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
        let g = filled([m, mlp], dtype, device, 3000 + m as u32).mul_scalar(3.0);
        let u = filled([m, mlp], dtype, device, 4000 + m as u32);
        let d = diff(
            super::geglu(&g, &u)?,
            gelu_approximate(g.clone()) * u.clone(),
        );
        let kernel_us = time_us(device, reps, || {
            let _ = super::geglu(&g, &u);
        });
        let burn_us = time_us(device, reps, || {
            let _ = gelu_approximate(g.clone()) * u.clone();
        });
        let bytes = 3 * (m * mlp) as u64 * el;
        out.push(KernelRow {
            name: format!("geglu {m}x{mlp}"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
        out.push(gated_row(device, dtype, (m, hidden, mlp), reps, &floor)?);
    }
    decode_rows(device, dtype, shapes, rows, reps, &mut out, &floor)?;
    out.push(f32_matmul_row(
        device,
        64,
        hidden,
        shapes.projections.first().map_or(hidden, |p| p.1),
        reps,
        bandwidth,
    ));
    Some(out)
}

/// The MLP's gate and up products with GeGLU in one launch
/// (`skinny_geglu`) against the two launches it replaces (`skinny_many`,
/// then `geglu`), for `m` rows of `hidden` into `mlp` features. On a GPU
/// this runs the kernel's two columns a cube, which the CPU runtime (one
/// column a cube) cannot.
fn gated_row(
    device: &Device,
    dtype: DType,
    (m, hidden, mlp): (usize, usize, usize),
    reps: usize,
    floor: &dyn Fn(u64) -> f64,
) -> Option<KernelRow> {
    let el = dtype.size() as u64;
    let gate = filled([mlp, hidden], dtype, device, 5000);
    let up = filled([mlp, hidden], dtype, device, 5001);
    let x = filled([m, hidden], dtype, device, 5002 + m as u32);
    let two = || -> Option<Tensor<2>> {
        let [g, u] = <[Tensor<2>; 2]>::try_from(super::skinny_many(&[&gate, &up], &x)?).ok()?;
        super::geglu(&g, &u)
    };
    let d = diff(super::skinny_geglu(&gate, &up, &x)?, two()?);
    let kernel_us = time_us(device, reps, || {
        let _ = super::skinny_geglu(&gate, &up, &x);
    });
    let burn_us = time_us(device, reps, || {
        let _ = two();
    });
    let bytes = (2 * mlp * hidden + m * hidden + m * mlp) as u64 * el;
    Some(KernelRow {
        name: format!("skinny_geglu {m}x{hidden}·2x{mlp}x{hidden}ᵀ (against: skinny_many, geglu)"),
        bytes,
        kernel_us,
        burn_us,
        floor_us: floor(bytes),
        max_abs_diff: d,
        burn_max_abs_diff: None,
    })
}

/// The plain Burn q/k-norm + RoPE of `gemma3.rs` on `x: [m, heads·hd]`
/// with one table row per row of `x`.
fn burn_norm_rope(
    x: Tensor<2>,
    heads: usize,
    scale: &Tensor<1>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
) -> Tensor<2> {
    let [m, w] = x.dims();
    let hd = w / heads;
    let dtype = x.dtype();
    let x = x
        .reshape([m, 1, heads, hd])
        .swap_dims(1, 2)
        .cast(DType::F32);
    let ms = x.clone().powi_scalar(2).mean_dim(3);
    let n = (x * (ms + 1e-6).sqrt().recip() * scale.clone().unsqueeze::<4>()).cast(dtype);
    let half = hd / 2;
    let x1 = n.clone().slice([0..m, 0..heads, 0..1, 0..half]);
    let x2 = n.clone().slice([0..m, 0..heads, 0..1, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let (c, s) = (
        cos.clone().reshape([m, 1, 1, hd]),
        sin.clone().reshape([m, 1, 1, hd]),
    );
    (n * c + rotated * s).swap_dims(1, 2).reshape([m, w])
}

/// The plain Burn one-token attention of `gemma3.rs`'s `attend`.
fn burn_decode_attention(
    q: Tensor<2>,
    keys: Tensor<4>,
    values: Tensor<4>,
    heads: usize,
    scale: f64,
) -> Tensor<2> {
    let [_, kv, _, hd] = keys.dims();
    let dtype = q.dtype();
    let q = q.reshape([1, kv, heads / kv, hd]);
    let scores = q
        .matmul(keys.swap_dims(2, 3))
        .mul_scalar(scale)
        .cast(DType::F32);
    let probs = burn::tensor::activation::softmax(scores, 3).cast(dtype);
    probs.matmul(values).reshape([1, heads * hd])
}

/// The decode kernels besides the products: greedy argmax over the
/// vocabulary, q/k-norm + RoPE, one-token attention over a cache.
fn decode_rows(
    device: &Device,
    dtype: DType,
    shapes: &BenchShapes,
    rows: &[usize],
    reps: usize,
    out: &mut Vec<KernelRow>,
    floor: &dyn Fn(u64) -> f64,
) -> Option<()> {
    let el = dtype.size() as u64;
    let (h, kv, hd) = shapes.heads;
    let v = shapes.vocab;
    let qs = filled([hd], DType::F32, device, 8).add_scalar(1.0);
    let ks = filled([hd], DType::F32, device, 9).add_scalar(1.0);
    for &m in rows {
        // Greedy choice: the logits are f32 (`gemma3.rs` casts them).
        let logits = filled([m, v], DType::F32, device, 5000 + m as u32).mul_scalar(10.0);
        let ids =
            |t: Tensor<1, burn::tensor::Int>| -> Vec<i64> { t.into_data().iter::<i64>().collect() };
        let (got, want) = (
            ids(super::argmax_rows(&logits)?),
            ids(logits.clone().argmax(1).flatten::<1>(0, 1)),
        );
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap_or(0) as f32;
        let kernel_us = time_us(device, reps, || {
            let _ = super::argmax_rows(&logits);
        });
        let burn_us = time_us(device, reps, || {
            let _ = logits.clone().argmax(1);
        });
        let bytes = (m * v) as u64 * 4 + m as u64 * 4;
        out.push(KernelRow {
            name: format!("argmax {m}x{v} (|Δ| in ids)"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });

        let q = filled([m, h * hd], dtype, device, 6000 + m as u32).mul_scalar(3.0);
        let k = filled([m, kv * hd], dtype, device, 7000 + m as u32).mul_scalar(3.0);
        let cos = filled([m, hd], dtype, device, 8000 + m as u32);
        let sin = filled([m, hd], dtype, device, 9000 + m as u32);
        let p = super::QkNormRope {
            q_scale: &qs,
            k_scale: &ks,
            eps: 1e-6,
            cos: &cos,
            sin: &sin,
            q_heads: h,
            kv_heads: kv,
        };
        let plain = || {
            (
                burn_norm_rope(q.clone(), h, &qs, &cos, &sin),
                burn_norm_rope(k.clone(), kv, &ks, &cos, &sin),
            )
        };
        let (gq, gk) = super::qk_norm_rope(&q, &k, &p)?;
        let (wq, wk) = plain();
        let d = diff(gq, wq).max(diff(gk, wk));
        let kernel_us = time_us(device, reps, || {
            let _ = super::qk_norm_rope(&q, &k, &p);
        });
        let burn_us = time_us(device, reps, || {
            let _ = plain();
        });
        let bytes =
            2 * (m * (h + kv) * hd) as u64 * el + 2 * (m * hd) as u64 * el + 2 * hd as u64 * 4;
        out.push(KernelRow {
            name: format!("qk_norm_rope {m}x({h}+{kv})x{hd}"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
    }
    let scale = (hd as f64).powf(-0.5);
    for &s in &shapes.contexts {
        // A cache buffer with room to spare, read through a view of its
        // first `s` slots, as `kv_cache.rs` hands it out.
        let cap = s + 256;
        let buf = |salt| filled([1, kv, cap, hd], dtype, device, salt);
        let (kb, vb) = (buf(10_000 + s as u32), buf(20_000 + s as u32));
        let r = [0..1, 0..kv, 0..s, 0..hd];
        let (keys, values) = (kb.slice(r.clone()), vb.slice(r));
        let q = filled([1, h * hd], dtype, device, 30_000 + s as u32).mul_scalar(4.0);
        let got = super::decode_attention(&q, &keys, &values, h, scale)?;
        let d = diff(
            got,
            burn_decode_attention(q.clone(), keys.clone(), values.clone(), h, scale),
        );
        let kernel_us = time_us(device, reps, || {
            let _ = super::decode_attention(&q, &keys, &values, h, scale);
        });
        let burn_us = time_us(device, reps, || {
            let _ = burn_decode_attention(q.clone(), keys.clone(), values.clone(), h, scale);
        });
        let bytes = 2 * (kv * s * hd) as u64 * el + 2 * (h * hd) as u64 * el;
        out.push(KernelRow {
            name: format!("decode_attention 1x{h}x{hd} over {kv}x{s}"),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
    }
    for &s in &shapes.contexts {
        for b in BATCHES {
            out.extend(batch_attention_rows(
                device,
                dtype,
                shapes.heads,
                b,
                s,
                reps,
                floor,
            )?);
        }
    }
    let s = shapes.contexts.first().copied().unwrap_or(512);
    // The kernel as it runs, then folding one key at a time (before
    // `KEYS_PER_STEP`): which is faster on a card is the card's to say.
    for per_step in [super::KEYS_PER_STEP, 1] {
        out.push(prefill_attention_row(
            device,
            dtype,
            shapes.heads,
            s,
            per_step,
            reps,
            floor,
        )?);
    }
    Some(())
}

/// A `t`-token prompt chunk's attention on a global layer (causal, nothing
/// cached before it): the prefill kernel (no score matrix, the mask decided
/// on the device from a key table built once) against Burn's composition
/// (scores, an additive mask uploaded once, softmax, values). Attention over
/// a chunk is bound by arithmetic more than by memory: the floor is only
/// what the inputs and output weigh.
fn prefill_attention_row(
    device: &Device,
    dtype: DType,
    (h, kv, hd): (usize, usize, usize),
    t: usize,
    per_step: usize,
    reps: usize,
    floor: &dyn Fn(u64) -> f64,
) -> Option<KernelRow> {
    use burn::tensor::activation::softmax;
    let el = dtype.size() as u64;
    let rep = h / kv;
    let scale = (hd as f64).powf(-0.5);
    let q = filled([1, t, h, hd], dtype, device, 50_000)
        .mul_scalar(4.0)
        .swap_dims(1, 2);
    let keys = filled([1, kv, t, hd], dtype, device, 50_001);
    let values = filled([1, kv, t, hd], dtype, device, 50_002);
    let positions: Vec<usize> = (0..t).collect();
    let table = super::key_table(&q, 0, t, &positions, None, &[])?;
    let causal: Vec<f32> = (0..rep * t)
        .flat_map(|r| (0..t).map(move |j| if j <= r % t { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::<4>::from_data(
        TensorData::new(causal, [1, 1, rep * t, t]),
        (device, DType::F32),
    );
    let plain = || {
        let scores = q
            .clone()
            .reshape([1, kv, rep * t, hd])
            .matmul(keys.clone().swap_dims(2, 3))
            .mul_scalar(scale)
            .cast(DType::F32);
        softmax(scores + mask.clone(), 3)
            .cast(dtype)
            .matmul(values.clone())
            .reshape([1, h, t, hd])
            .swap_dims(1, 2)
            .reshape([t, h * hd])
    };
    let run = || super::prefill_attention_stepping(&q, &keys, &values, &table, scale, per_step);
    let d = diff(run()?, plain());
    let kernel_us = time_us(device, reps, || {
        let _ = run();
    });
    let burn_us = time_us(device, reps, || {
        let _ = plain();
    });
    let bytes = (2 * h * t * hd + 2 * kv * t * hd) as u64 * el;
    Some(KernelRow {
        name: format!(
            "prefill attention {t}x{h}x{hd} over {kv}x{t}, causal, {per_step} key(s) per step (Burn: scores+mask)"
        ),
        bytes,
        kernel_us,
        burn_us,
        floor_us: floor(bytes),
        max_abs_diff: d,
        burn_max_abs_diff: None,
    })
}

/// Decode batch sizes of the batched attention rows (a captured decode
/// step runs the batched kernel at batch 1 too).
const BATCHES: [usize; 3] = [1, 8, 32];

/// The batched attention's rows at each batch and context: as it runs,
/// folding one slot at a time, and split into parts of 64 slots over about
/// 128 cubes and over about 512 (at batch 32 the default takes one part:
/// 128 cubes are the sequences' heads). Which is fastest is the card's to
/// say.
const TUNINGS: [DecodeTuning; 4] = [
    DecodeTuning::DEFAULT,
    DecodeTuning {
        per_step: 1,
        ..DecodeTuning::DEFAULT
    },
    DecodeTuning {
        keys_per_part: 64,
        ..DecodeTuning::DEFAULT
    },
    DecodeTuning {
        keys_per_part: 64,
        want_cubes: 512,
        ..DecodeTuning::DEFAULT
    },
];

/// One decode step's attention for `b` sequences of `s` visible slots each
/// (heads `(H, KV, hd)`): the batched kernel (the new rows written and every
/// sequence attended in `ceil(b / 32)` launches) at each of [`TUNINGS`],
/// against the loop per sequence (two `slice_assign` writes, the one-token
/// kernel, then one `cat`), on caches owned as `kv_cache.rs` owns them
/// (written in place).
fn batch_attention_rows(
    device: &Device,
    dtype: DType,
    (h, kv, hd): (usize, usize, usize),
    b: usize,
    s: usize,
    reps: usize,
    floor: &dyn Fn(u64) -> f64,
) -> Option<Vec<KernelRow>> {
    use crate::kv_cache::CacheSlot;
    let el = dtype.size() as u64;
    let scale = (hd as f64).powf(-0.5);
    let cap = s + 256;
    let salt = |i: usize, j: u32| 40_000 + (b * 1000 + i) as u32 * 4 + j;
    let buffers = || -> Vec<(Tensor<4>, Tensor<4>)> {
        (0..b)
            .map(|i| {
                (
                    filled([1, kv, cap, hd], dtype, device, salt(i, 0)),
                    filled([1, kv, cap, hd], dtype, device, salt(i, 1)),
                )
            })
            .collect()
    };
    let q = filled([b, h * hd], dtype, device, salt(b, 2)).mul_scalar(4.0);
    let k = filled([b, kv * hd], dtype, device, salt(b, 3));
    let v = filled([b, kv * hd], dtype, device, salt(b, 4));
    let mut batched = Some(
        buffers()
            .into_iter()
            .map(|(keys, values)| CacheSlot {
                keys,
                values,
                slot: s - 1,
                visible: s,
            })
            .collect::<Vec<_>>(),
    );
    let mut run_batched = |tuning: DecodeTuning| {
        let taken = batched.take().expect("put back after every run");
        let (out, back) = super::batch_decode_attention_tuned(&q, &k, &v, taken, h, scale, tuning)
            .unwrap_or_else(|_| panic!("the batched kernel covers the bench shapes"));
        batched = Some(back);
        out
    };
    let mut looped = Some(buffers());
    let mut run_loop = || -> Option<Tensor<2>> {
        let mut bufs = looped.take().expect("put back after every run");
        let mut outs = Vec::with_capacity(b);
        for (i, (kb, vb)) in bufs.iter_mut().enumerate() {
            let row = |x: &Tensor<2>| {
                x.clone()
                    .slice([i..i + 1, 0..kv * hd])
                    .reshape([1, kv, 1, hd])
            };
            let dst = [0..1, 0..kv, s - 1..s, 0..hd];
            *kb = kb.clone().slice_assign(dst.clone(), row(&k));
            *vb = vb.clone().slice_assign(dst, row(&v));
            let r = [0..1, 0..kv, 0..s, 0..hd];
            let (keys, values) = (kb.clone().slice(r.clone()), vb.clone().slice(r));
            let qi = q.clone().slice([i..i + 1, 0..h * hd]);
            outs.push(super::decode_attention(&qi, &keys, &values, h, scale)?);
        }
        looped = Some(bufs);
        Some(Tensor::cat(outs, 0))
    };
    let want = run_loop()?;
    let burn_us = time_us(device, reps, || {
        let _ = run_loop();
    });
    let bytes = b as u64 * (2 * (kv * s * hd) as u64 * el + 2 * ((h + 2 * kv) * hd) as u64 * el);
    let mut rows = Vec::with_capacity(TUNINGS.len());
    for tuning in TUNINGS {
        let d = diff(run_batched(tuning), want.clone());
        let kernel_us = time_us(device, reps, || {
            let _ = run_batched(tuning);
        });
        let DecodeTuning {
            per_step,
            want_cubes,
            keys_per_part,
        } = tuning;
        rows.push(KernelRow {
            name: format!(
                "batch attention {b}x{h}x{hd} over {kv}x{s}, {per_step} slot(s) per step, \
                 parts of {keys_per_part}+ slots over ~{want_cubes} cubes (loop: per sequence)"
            ),
            bytes,
            kernel_us,
            burn_us,
            floor_us: floor(bytes),
            max_abs_diff: d,
            burn_max_abs_diff: None,
        });
    }
    Some(rows)
}

#[cfg(all(test, feature = "cube-cpu"))]
mod tests {
    use super::*;

    #[test]
    fn micro_benchmarks_run_and_agree_on_the_cpu_runtime() {
        // Not the real shapes' timing (a test is no benchmark): that every
        // row runs, is timed and agrees with Burn.
        let device = crate::kernels::test_support::device();
        let shapes = BenchShapes {
            projections: vec![("q", 16, 32), ("head", 40, 32)],
            hidden: 32,
            mlp: 64,
            heads: (4, 2, 32),
            contexts: vec![9],
            vocab: 50,
        };
        let rows = micro_benchmarks(&device, DType::F32, &shapes, &[1], 1e10, 1).unwrap();
        // Per row count: rms_norm, add_rms_norm, geglu and skinny_geglu.
        // Batch attention: one row per batch and tuning.
        assert_eq!(
            rows.len(),
            2 + 4 + 2 + 1 + TUNINGS.len() * BATCHES.len() + 2 + 1
        );
        assert!(rows.iter().any(|r| r.name.starts_with("add_rms_norm 1x32")));
        assert!(rows.iter().any(|r| r.name.starts_with("skinny_geglu 1x32")));
        let batch = rows
            .iter()
            .filter(|r| r.name.starts_with("batch attention"));
        assert_eq!(
            batch
                .filter(|r| r.name.contains(", 1 slot(s) per step"))
                .count(),
            BATCHES.len()
        );
        for r in &rows {
            assert!(r.kernel_us > 0.0 && r.burn_us > 0.0, "{r:?}");
            assert!(r.max_abs_diff < 1e-2, "{r:?}");
        }
        // The CPU runtime has no TF32: both f32 products are f32 against f64.
        let f32_row = rows.last().unwrap();
        assert!(f32_row.name.starts_with("f32 matmul"), "{f32_row:?}");
        assert!(f32_row.max_abs_diff < 1e-5, "{f32_row:?}");
        assert!(f32_row.burn_max_abs_diff.unwrap() < 1e-5, "{f32_row:?}");
    }
}
