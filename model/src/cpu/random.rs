//! Random weights held as the CPU holds a checkpoint's (GGUF blocks, bf16),
//! for benchmarks of the MedGemma 4B shapes on the CPU without the
//! checkpoint (`cargo run --release --example cpu_bench -- --random-4b
//! Q4_K`).
//!
//! Owns: random blocks whose scales give weights of about the spread of
//! `random.rs`'s ([`crate::random::RANDOM_STD`]), made in parallel straight
//! into the bytes the kernels read (no f32 copy). Must never: be used to
//! answer a user (the outputs are noise).

use burn::tensor::{DType, Device, Tensor};
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

use super::{CpuError, CpuMatrix, WeightBytes};
use crate::config::Gemma3Config;
use crate::gemma3::{Gemma3, TensorSource};
use crate::linear::Linear;
use crate::quant::GgmlType;
use crate::random::RANDOM_STD;
use crate::weights::WeightsError;

/// Rows generated per task (each task has its own generator).
const ROWS_PER_TASK: usize = 256;

/// Fills `b` (whole blocks of `ty`) with random quants and f16 scales that
/// put the weights' spread near [`RANDOM_STD`].
fn fill(ty: GgmlType, b: &mut [u8], rng: &mut StdRng) {
    let std = RANDOM_STD as f32;
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    match ty {
        GgmlType::BF16 => {
            // Uniform on ±√3·σ: standard deviation σ.
            let a = std * 3f32.sqrt();
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.random_range(-a..a)).to_le_bytes());
            }
        }
        _ => {
            rng.fill(b);
            let Some((_, size)) = ty.block_layout() else {
                return;
            };
            for blk in b.chunks_exact_mut(size) {
                // Spread of the integers each format stores (uniform bytes).
                match ty {
                    GgmlType::Q8_0 => blk[..2].copy_from_slice(&half(std / 73.9)),
                    GgmlType::Q4_0 => blk[..2].copy_from_slice(&half(std / 4.6)),
                    GgmlType::Q5_0 => blk[..2].copy_from_slice(&half(std / 9.2)),
                    GgmlType::Q4_K | GgmlType::Q5_K => {
                        // d·sc·q − dmin·m with 6-bit sc, m (mean 31.5) and
                        // q of spread 4.6 (9.2 for 5 bits): dmin centres it.
                        let spread = if ty == GgmlType::Q4_K { 4.6 } else { 9.2 };
                        let d = std / (31.5 * spread);
                        blk[..2].copy_from_slice(&half(d));
                        let mid = if ty == GgmlType::Q4_K { 7.5 } else { 15.5 };
                        blk[2..4].copy_from_slice(&half(d * mid));
                    }
                    GgmlType::Q6_K => {
                        // (q − 32)·d·sc with signed 8-bit sc (spread 73.9).
                        blk[208..210].copy_from_slice(&half(std / (18.5 * 73.9)));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A random `[rows, cols]` matrix of `ty` (`Q8_0` where `cols` is not whole
/// blocks of `ty`).
fn random_matrix(
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<CpuMatrix, CpuError> {
    let ty = if ty.byte_size(cols).is_some() {
        ty
    } else {
        GgmlType::Q8_0
    };
    let row_bytes = ty.byte_size(cols).unwrap_or(0);
    let mut bytes = vec![0u8; rows * row_bytes];
    bytes
        .par_chunks_mut((ROWS_PER_TASK * row_bytes).max(1))
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            fill(ty, chunk, &mut rng);
        });
    CpuMatrix::new(name, ty, rows, cols, WeightBytes::Owned(bytes.into()))
}

/// Random CPU matrices of one format and identity norms.
struct RandomCpu {
    ty: GgmlType,
    seed: u64,
    device: Device,
}

impl TensorSource for RandomCpu {
    fn matrix(&mut self, _name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        // Never asked: every matrix comes through `linear` below.
        Ok(Tensor::<2>::zeros(shape, (&self.device, DType::F32)))
    }

    fn norm(&mut self, _name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        Ok(Tensor::<1>::zeros([n], (&self.device, DType::F32)))
    }

    fn linear(
        &mut self,
        name: &str,
        shape: [usize; 2],
        device: &Device,
    ) -> Result<Linear, WeightsError> {
        self.seed = self.seed.wrapping_add(1);
        let weight = random_matrix(name, self.ty, shape[0], shape[1], self.seed)?;
        Ok(Linear::Cpu {
            weight,
            device: device.clone(),
        })
    }
}

impl Gemma3 {
    /// A decoder of `cfg`'s shapes on the CPU whose matrices are random
    /// blocks of `ty` (Q8_0 for a matrix whose rows are not whole blocks of
    /// `ty`), held as a GGUF checkpoint's are, with identity norms.
    pub fn random_cpu(cfg: &Gemma3Config, ty: GgmlType, seed: u64) -> Result<Self, WeightsError> {
        let device = Device::flex();
        let mut src = RandomCpu {
            ty,
            seed,
            device: device.clone(),
        };
        Self::build(cfg, &mut src, &device, DType::F32)
    }
}
