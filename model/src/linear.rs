//! Linear layers of the decoder: `x · Wᵀ` with `W` kept as the checkpoint
//! stores it, `[out, in]`.
//!
//! Owns: how a weight matrix is held on its device and how products with it
//! are laid out for one-token decode, decode batches and prompts. Must never:
//! read files (weights arrive from `gemma3.rs`'s tensor source) or see text.

use burn::tensor::{Device, Tensor};

/// A linear layer stored as the checkpoint stores it, `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor<2>,
    /// Row blocks for one-token products (see [`row_blocked_product`]).
    row_blocks: usize,
}

impl Linear {
    pub(crate) fn new(weight: Tensor<2>, device: &Device) -> Self {
        let out = weight.dims()[0];
        Self {
            weight,
            row_blocks: row_blocks(device, out),
        }
    }

    /// `x · Wᵀ` for `x: [N, in]` (N prompt tokens of one sequence).
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        row_blocked_product(&self.weight, x, self.row_blocks)
    }

    /// `x · Wᵀ` for `x: [B, in]`, one decode token of each of B sequences.
    pub(crate) fn forward_batch(&self, x: Tensor<2>) -> Tensor<2> {
        batch_product(&self.weight, x, self.row_blocks)
    }
}

/// `x · Wᵀ` with `W: [out, in]` kept in the checkpoint's layout.
///
/// One-token decode makes this a matrix-vector product that reads all of `W`
/// once. Burn's CPU backend (the `gemm` crate) runs a single GEMV on one core
/// at about 6 GB/s; viewing `W` as `[blocks, out/blocks, in]` and multiplying
/// by `xᵀ` turns it into a batch of independent GEMVs that run in parallel
/// (about 11 GB/s measured for the 262144 × 640 LM head,
/// `cargo run -p medgemma-model --example matmul_layouts`). The view is free:
/// no weight is copied. Prompts (N > 1) use the plain product.
pub(crate) fn row_blocked_product(w: &Tensor<2>, x: Tensor<2>, blocks: usize) -> Tensor<2> {
    let [n, k] = x.dims();
    let [out, _] = w.dims();
    if n == 1 && blocks > 1 {
        let y = w
            .clone()
            .reshape([blocks, out / blocks, k])
            .matmul(x.reshape([1, k, 1]));
        return y.reshape([1, out]);
    }
    x.matmul(w.clone().transpose())
}

/// `x · Wᵀ` for a decode batch `x: [B, in]` (one token per sequence).
///
/// B = 1 is exactly [`row_blocked_product`]. On the CPU (`blocks > 1`) the
/// row-blocked view `[blocks, out/blocks, in] · xᵀ` is used for every B:
/// measured with `cargo run --example batch_layouts` on the 2-core dev box
/// (270M shapes, B = 2..32), the plain `x · Wᵀ` product was 1.5–6× slower
/// at every B (e.g. LM head 640→262144, B = 8: 835 ms plain, 297 ms
/// row-blocked, 200 ms for B = 1), and `W · xᵀ` without blocks was never
/// better than the blocked view by more than noise. Elsewhere (`blocks = 1`,
/// GPU) the plain product, a GEMM the backend tiles itself. Either way the
/// weights are read once per step for the whole batch.
pub(crate) fn batch_product(w: &Tensor<2>, x: Tensor<2>, blocks: usize) -> Tensor<2> {
    let [n, k] = x.dims();
    if n == 1 {
        return row_blocked_product(w, x, blocks);
    }
    if blocks > 1 {
        let [out, _] = w.dims();
        let y = w
            .clone()
            .reshape([blocks, out / blocks, k])
            .matmul(x.transpose().reshape([1, k, n]));
        return y.reshape([out, n]).transpose();
    }
    x.matmul(w.clone().transpose())
}

/// Row blocks for one-token products on `device`: 8 on the CPU when `out`
/// divides evenly, 1 (the plain product) elsewhere.
pub(crate) fn row_blocks(device: &Device, out: usize) -> usize {
    if *device != Device::flex() {
        return 1;
    }
    [8, 4, 2]
        .into_iter()
        .find(|b| out.is_multiple_of(*b))
        .unwrap_or(1)
}
