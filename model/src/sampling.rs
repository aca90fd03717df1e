//! Choosing the next token from logits: greedy, or temperature / top-k /
//! top-p sampling with a seed (spec §7 "Sampling").
//!
//! Owns: the suppression of ids that must never be generated (embedding
//! padding rows, image tokens). Must never: see text.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0 = all).
    pub top_p: f32,
    /// Seed of the random generator; the same seed gives the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy, as Google's MedGemma examples decode.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 64,
            top_p: 0.95,
            seed: 0,
        }
    }
}

/// A stateful sampler (it owns the random generator).
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Ids at or above this are never produced (padding rows of the embedding).
    valid_vocab: usize,
    suppressed: Vec<u32>,
}

impl Sampler {
    /// A sampler over the first `valid_vocab` ids, never producing `suppressed`.
    pub fn new(params: SamplingParams, valid_vocab: usize, suppressed: Vec<u32>) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self {
            params,
            rng,
            valid_vocab,
            suppressed,
        }
    }

    /// Whether this sampler always takes the most likely allowed id.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// Whether `id` may be produced (inside the valid vocabulary, not
    /// suppressed): a greedy choice made elsewhere over the whole row stands
    /// when it is allowed.
    pub fn allows(&self, id: u32) -> bool {
        (id as usize) < self.valid_vocab && !self.suppressed.contains(&id)
    }

    /// Picks the next id from `logits` (one row, any length ≥ 1).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let n = self.valid_vocab.min(logits.len()).max(1);
        for &id in &self.suppressed {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let logits = &logits[..n];
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand = candidates(logits, 1.0 / self.params.temperature, self.params.top_k);
        if cand.is_empty() {
            return argmax(logits);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// Most likely first; ties to the lower id: a total order, so the top `k`
/// of a row are one set however they are found.
fn order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The finite logits of a row as `(id, logit · inv_t)`, most likely first,
/// only the `k` most likely when `k > 0`.
///
/// With top-k (what the served routes ask for) one pass keeps at most `2k`
/// candidates: when the buffer fills, its `k` best are partitioned out and
/// the `k`-th becomes the bar that every later id must beat, so most ids
/// cost one comparison and only `k` are sorted. Sorting the whole
/// 262 208-id row instead took about 11 ms a sampled token on the host
/// (`examples/sampling_speed.rs`).
fn candidates(logits: &[f32], inv_t: f32, k: usize) -> Vec<(u32, f32)> {
    let finite = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, l)| (i as u32, l * inv_t));
    let mut cand: Vec<(u32, f32)>;
    // A k past the row's length keeps every id (and never sizes a buffer
    // from it: `medgemmad generate --top-k` takes any number).
    if k == 0 || k >= logits.len() {
        cand = finite.collect();
    } else {
        cand = Vec::with_capacity(2 * k);
        // The bar, and its value alone for the common case: a value below
        // it ranks after it whatever the ids (ties go to `order`).
        let mut bar: Option<(u32, f32)> = None;
        let mut low = f32::NEG_INFINITY;
        for c in finite {
            if c.1 < low || bar.is_some_and(|b| order(&c, &b).is_gt()) {
                continue;
            }
            cand.push(c);
            if cand.len() == 2 * k {
                cand.select_nth_unstable_by(k - 1, order);
                cand.truncate(k);
                bar = Some(cand[k - 1]);
                low = cand[k - 1].1;
            }
        }
        if cand.len() > k {
            cand.select_nth_unstable_by(k - 1, order);
            cand.truncate(k);
        }
    }
    cand.sort_unstable_by(order);
    cand
}

/// Index of the largest value; the first on ties (as torch.argmax).
pub fn argmax(v: &[f32]) -> u32 {
    // `None` until the first non-NaN value: a NaN never wins, not even at
    // index 0 (as the device kernel, `kernels::argmax_rows`); all NaN → 0.
    let mut best: Option<usize> = None;
    for (i, x) in v.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|b| *x > v[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_never_a_nan() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[2.0, f32::NAN, 2.0]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }

    #[test]
    fn greedy_ignores_suppressed_and_padding() {
        let mut s = Sampler::new(SamplingParams::default(), 4, vec![1]);
        let mut l = vec![0.0, 9.0, 1.0, 0.5, 99.0];
        assert_eq!(s.sample(&mut l), 2);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_holds() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p, 50, vec![]);
            (0..64)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        let a = run(p.clone());
        assert_eq!(a, run(p));
        let mut top2: Vec<u32> = (0..50).collect();
        top2.sort_by(|x, y| logits[*y as usize].total_cmp(&logits[*x as usize]));
        assert!(a.iter().all(|t| top2[..2].contains(t)), "{a:?}");
        assert!(a.contains(&top2[0]) && a.contains(&top2[1]));
    }

    /// `candidates` as it was: every finite logit, the whole row sorted,
    /// then cut to `k`.
    fn sorted_then_cut(logits: &[f32], inv_t: f32, k: usize) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, l * inv_t))
            .collect();
        all.sort_unstable_by(order);
        if k > 0 {
            all.truncate(k);
        }
        all
    }

    #[test]
    fn the_one_pass_top_k_equals_sorting_the_whole_row() {
        let mut rng = StdRng::seed_from_u64(21);
        for (n, levels) in [(5000, 0), (5000, 7), (300, 3), (40, 0), (1, 0)] {
            // Rows with many ties (values on `levels` steps), rising and
            // falling runs (the bar moves often, or never), and non-finite
            // logits that must never be candidates.
            let rows: Vec<Vec<f32>> = vec![
                (0..n)
                    .map(|_| {
                        let x = rng.random::<f32>() * 8.0 - 4.0;
                        if levels > 0 {
                            (x * levels as f32).round() / levels as f32
                        } else {
                            x
                        }
                    })
                    .collect(),
                (0..n).map(|i| i as f32 * 1e-3).collect(),
                (0..n).map(|i| -(i as f32) * 1e-3).collect(),
                (0..n)
                    .map(|i| match i % 11 {
                        0 => f32::NAN,
                        5 => f32::NEG_INFINITY,
                        7 => f32::INFINITY,
                        _ => (i % 13) as f32,
                    })
                    .collect(),
            ];
            for row in &rows {
                for k in [0, 1, 2, 3, 64, n - 1, n, n + 5] {
                    for inv_t in [1.0, 1.0 / 0.7] {
                        assert_eq!(
                            candidates(row, inv_t, k),
                            sorted_then_cut(row, inv_t, k),
                            "n={n} levels={levels} k={k} inv_t={inv_t}"
                        );
                    }
                }
            }
        }
        assert!(candidates(&[f32::NAN, f32::NEG_INFINITY], 1.0, 64).is_empty());
        // A top-k of any size keeps the whole row.
        assert_eq!(candidates(&[1.0, 3.0, 2.0], 1.0, usize::MAX).len(), 3);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1e-6,
            seed: 3,
        };
        let mut s = Sampler::new(p, 5, vec![]);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 0.2, 3.0, 0.3, 0.0]), 2);
        }
    }
}
