//! Batched decoding (`Gemma3::forward_batch`, `generate::generate_batch`)
//! against the single-sequence path it must reproduce: several sequences of
//! different lengths (some past the sliding window, so their local layers
//! trim at different steps and their RoPE positions differ) decoded together
//! give, row by row, the logits of decoding each alone, and batched greedy
//! generation picks the same tokens as one-at-a-time generation.

mod support;

use std::sync::atomic::AtomicBool;

use medgemma_model::burn::tensor::DType;
use medgemma_model::gemma3::{Gemma3, Logits};
use medgemma_model::generate::{
    Flow, GenerateOptions, Generation, Sequence, decode_step, generate, generate_batch,
};
use medgemma_model::kv_cache::KvCache;
use medgemma_model::load::{LoadedModel, load_model};
use medgemma_model::sampling::{SamplingParams, argmax};
use support::{expected, fixture, ids};

/// f32 everywhere; only the summation order of the batched products
/// differs. On the GPU (`MEDGEMMA_TEST_DEVICE=cuda`, `scripts/gpu-check.sh`)
/// a batch runs other matmul kernels (GEMM tiles, not GEMV) than one
/// sequence, held to the fidelity tests' 1e-3; a structural bug moves the
/// tiny fixtures' logits by 0.4 or more.
fn tol() -> f32 {
    if support::on_cuda() { 1e-3 } else { 1e-5 }
}

fn load(name: &str) -> LoadedModel {
    load_model(&fixture(name), None, &support::test_device(), DType::F32)
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn rows(t: medgemma_model::burn::tensor::Tensor<2>) -> (Vec<f32>, usize) {
    let [_, v] = t.dims();
    (t.into_data().try_into_vec().unwrap(), v)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Three prompts of different lengths cut from (and cycled over) `base`.
fn prompts(base: &[u32], lens: [usize; 3]) -> Vec<Vec<u32>> {
    lens.iter()
        .map(|&n| base.iter().cycle().take(n).copied().collect())
        .collect()
}

/// Prefills every prompt twice (one cache for the batched run, one for the
/// reference), then decodes `steps` greedy tokens: all sequences at once
/// through `forward_batch`, and each alone through `forward`. Returns the
/// largest logit difference seen.
fn batched_equals_single(model: &Gemma3, prompts: &[Vec<u32>], steps: usize, tol: f32) -> f32 {
    let mut batch_caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut ref_caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut next = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (a, _) = rows(model.forward(p, &mut batch_caches[i], Logits::Last));
        let (b, _) = rows(model.forward(p, &mut ref_caches[i], Logits::Last));
        assert_eq!(a, b, "prefill is deterministic");
        next.push(argmax(&a));
    }
    let mut worst = 0.0f32;
    for step in 0..steps {
        let mut refs: Vec<&mut KvCache> = batch_caches.iter_mut().collect();
        let (got, v) = rows(model.forward_batch(&next, &mut refs));
        assert_eq!(got.len(), prompts.len() * v);
        let mut chosen = Vec::new();
        for (i, cache) in ref_caches.iter_mut().enumerate() {
            let (want, _) = rows(model.forward(&[next[i]], cache, Logits::Last));
            let row = &got[i * v..(i + 1) * v];
            let d = max_abs_diff(row, &want);
            worst = worst.max(d);
            assert!(
                d <= tol,
                "step {step}, sequence {i} (prompt {} tokens): batched logits differ by {d} > {tol}",
                prompts[i].len()
            );
            assert_eq!(argmax(row), argmax(&want), "step {step}, sequence {i}");
            chosen.push(argmax(&want));
        }
        for (b, r) in batch_caches.iter().zip(&ref_caches) {
            assert_eq!(b.len(), r.len(), "positions advance alike");
            assert_eq!(
                b.cached_per_layer(),
                r.cached_per_layer(),
                "caches hold the same keys (window trimming per sequence)"
            );
        }
        next = chosen;
    }
    worst
}

/// tiny_a: GQA (4 query heads on 2 KV heads), window 6, a local layer after
/// a global one, 7 layers. Prompts of 3, 9 and 17 tokens: one starts inside
/// the window and crosses it while decoding, two start past it.
#[test]
fn tiny_a_batched_logits_equal_single_sequence_logits() {
    let m = load("tiny_a");
    assert_eq!(m.model.config().sliding_window, 6);
    let base = ids(&expected("tiny_a")["prompt_ids"]);
    let d = batched_equals_single(&m.model, &prompts(&base, [3, 9, 17]), 8, tol());
    eprintln!("tiny_a: batched vs single max |Δlogit| = {d:.3e}");
}

/// tiny_b: query_pre_attn_scalar ≠ head_dim, other RoPE bases.
#[test]
fn tiny_b_batched_logits_equal_single_sequence_logits() {
    let m = load("tiny_b");
    let base = ids(&expected("tiny_b")["prompt_ids"]);
    let w = m.model.config().sliding_window;
    let d = batched_equals_single(&m.model, &prompts(&base, [2, w + 3, 2 * w + 1]), 6, tol());
    eprintln!("tiny_b: batched vs single max |Δlogit| = {d:.3e}");
}

/// A batch of one is the single-sequence decode step, bit for bit.
#[test]
fn batch_of_one_is_bit_identical_to_forward() {
    let m = load("tiny_a");
    let prompt = ids(&expected("tiny_a")["prompt_ids"]);
    let mut a = m.model.new_cache();
    let mut b = m.model.new_cache();
    let _ = m.model.forward(&prompt, &mut a, Logits::Last);
    let _ = m.model.forward(&prompt, &mut b, Logits::Last);
    for tok in [5u32, 17, 3, 250] {
        let (one, _) = rows(m.model.forward(&[tok], &mut a, Logits::Last));
        let (batched, _) = rows(m.model.forward_batch(&[tok], &mut [&mut b]));
        assert_eq!(one, batched);
    }
}

fn greedy_opts(m: &LoadedModel, n: usize) -> GenerateOptions {
    let mut o = m.default_options(n, SamplingParams::default());
    o.ignore_eos = true;
    o
}

/// One prompt generated alone, from an empty cache: the reference every
/// batched schedule must reproduce.
fn generate_alone(m: &LoadedModel, prompt: &[u32], opts: &GenerateOptions) -> Generation {
    generate(
        &m.model,
        &mut m.model.new_cache(),
        prompt,
        opts,
        &AtomicBool::new(false),
        |_| Flow::Continue,
    )
    .unwrap()
}

fn check_generation(m: &LoadedModel, prompts: &[Vec<u32>], opts: &GenerateOptions) {
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate_alone(m, p, opts).tokens)
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| m.model.new_cache()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut streamed: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let together = generate_batch(
        &m.model,
        &mut refs,
        &slices,
        opts,
        &AtomicBool::new(false),
        |i, id| {
            streamed[i].push(id);
            Flow::Continue
        },
    )
    .unwrap();
    for (i, (g, want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(
            &g.tokens, want,
            "sequence {i}: batched greedy tokens differ"
        );
        assert_eq!(&streamed[i], want, "sequence {i}: streamed ids differ");
        assert_eq!(g.prompt_tokens, prompts[i].len());
    }
    for (c, p) in caches.iter().zip(prompts) {
        assert_eq!(c.len(), p.len() + opts.max_new_tokens - 1);
    }
}

#[test]
fn batched_greedy_generation_equals_one_at_a_time() {
    for (name, lens) in [("tiny_a", [3, 9, 17]), ("tiny_b", [1, 7, 30])] {
        let m = load(name);
        let base = ids(&expected(name)["prompt_ids"]);
        check_generation(&m, &prompts(&base, lens), &greedy_opts(&m, 12));
    }
}

/// Sampled rows are read back whole and each goes to its own sequence's
/// seeded sampler: with the same seed, a batch samples what each sequence
/// samples alone.
#[test]
fn batched_sampled_generation_equals_one_at_a_time() {
    let m = load("tiny_a");
    let base = ids(&expected("tiny_a")["prompt_ids"]);
    let mut opts = greedy_opts(&m, 10);
    opts.sampling = SamplingParams {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        seed: 7,
    };
    check_generation(&m, &prompts(&base, [3, 9, 17]), &opts);
}

/// The daemon's schedule: a conversation already decoding, and one that
/// joins with a long prompt prefilled a few tokens per step between the
/// decode steps (`Sequence::prefill_chunk`, chunks that cross the sliding
/// window). Both give the tokens they give alone.
#[test]
fn chunked_prefill_between_decode_steps_gives_the_tokens_of_one_pass() {
    for (name, chunk) in [("tiny_a", 4), ("tiny_b", 5)] {
        let m = load(name);
        let base = ids(&expected(name)["prompt_ids"]);
        let ps = prompts(&base, [3, 23, 1]);
        let opts = greedy_opts(&m, 9);
        let alone: Vec<Vec<u32>> = ps
            .iter()
            .map(|p| generate_alone(&m, p, &opts).tokens)
            .collect();
        let new =
            |p: &Vec<u32>| Sequence::new(&m.model, m.model.new_cache(), p, opts.clone()).unwrap();
        let mut running = new(&ps[0]);
        running.prefill(&m.model, &mut |_| Flow::Continue).unwrap();
        let mut joining = new(&ps[1]);
        let mut steps_while_prefilling = 0;
        while !(running.is_finished() && joining.is_finished()) {
            if !joining.is_prefilled() {
                joining
                    .prefill_chunk(&m.model, chunk, &mut |_| Flow::Continue)
                    .unwrap();
                steps_while_prefilling += 1;
            }
            decode_step(&m.model, &mut [&mut running, &mut joining], |_, _| {
                Flow::Continue
            })
            .unwrap();
        }
        assert_eq!(steps_while_prefilling, 23usize.div_ceil(chunk), "{name}");
        assert_eq!(running.tokens(), alone[0].as_slice(), "{name}: running");
        assert_eq!(joining.tokens(), alone[1].as_slice(), "{name}: chunked");
        // A one-token prompt needs no chunking.
        let mut short = new(&ps[2]);
        short
            .prefill_chunk(&m.model, chunk, &mut |_| Flow::Continue)
            .unwrap();
        assert!(short.is_prefilled() && short.tokens().len() == 1);
    }
}

/// Greedy tokens are chosen where the logits are (one index per row comes
/// back); an id the sampler forbids is then decided on the host. Suppressing
/// the token greedy decoding picks makes every step pick the best allowed
/// id, which is what the host sampler picks from the full rows.
#[test]
fn greedy_choice_on_the_device_respects_suppressed_ids() {
    let m = load("tiny_a");
    let prompt = ids(&expected("tiny_a")["prompt_ids"]);
    let opts = greedy_opts(&m, 6);
    let free = generate_alone(&m, &prompt, &opts).tokens;
    let mut banned = opts.clone();
    banned.suppressed.push(free[1]);
    let got = generate_alone(&m, &prompt, &banned).tokens;
    // The reference: full rows on the host through the plain sampler.
    let mut cache = m.model.new_cache();
    let mut sampler = medgemma_model::sampling::Sampler::new(
        SamplingParams::default(),
        banned.valid_vocab,
        banned.suppressed.clone(),
    );
    let mut want = Vec::new();
    let mut input = prompt.clone();
    for _ in 0..6 {
        let (mut row, _) = rows(m.model.forward(&input, &mut cache, Logits::Last));
        let next = sampler.sample(&mut row);
        want.push(next);
        input = vec![next];
    }
    assert_eq!(got, want);
    assert!(
        !got.contains(&free[1]),
        "{got:?} holds the suppressed {}",
        free[1]
    );
    assert_ne!(got, free, "the ban changed the choice");
}

/// Sequences finish at different steps (a stop id for one, the length limit
/// for the rest); the others keep decoding with the right caches.
#[test]
fn sequences_stop_independently() {
    let m = load("tiny_a");
    let base = ids(&expected("tiny_a")["prompt_ids"]);
    let ps = prompts(&base, [4, 11, 16]);
    let mut opts = greedy_opts(&m, 10);
    // Make the first token sequence 1 produces alone a stop id.
    let first = generate_alone(&m, &ps[1], &opts).tokens;
    opts.ignore_eos = false;
    opts.stop_ids = vec![first[2]];
    let alone: Vec<_> = ps.iter().map(|p| generate_alone(&m, p, &opts)).collect();
    let mut caches: Vec<KvCache> = ps.iter().map(|_| m.model.new_cache()).collect();
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let slices: Vec<&[u32]> = ps.iter().map(Vec::as_slice).collect();
    let together = generate_batch(
        &m.model,
        &mut refs,
        &slices,
        &opts,
        &AtomicBool::new(false),
        |_, _| Flow::Continue,
    )
    .unwrap();
    assert!(alone[1].tokens.len() <= 3, "sequence 1 stops early");
    for (g, a) in together.iter().zip(&alone) {
        assert_eq!(g.tokens, a.tokens);
        assert_eq!(g.finish, a.finish);
    }
}

/// The real Gemma 3 270M (window 512, 18 layers, 4 query heads on 1 KV
/// head): one prompt past the window.
#[test]
fn real_270m_batched_logits_equal_single_sequence_logits() {
    let m = load_model(
        &support::gguf_270m(),
        None,
        &support::test_device(),
        DType::F32,
    )
    .expect("the 270M GGUF loads");
    let w = m.model.config().sliding_window;
    let base: Vec<u32> = (0..64u32).map(|i| 1000 + 37 * i).collect();
    let ps = prompts(&base, [5, 40, w + 20]);
    // Logits reach ±34 and the residual stream is far larger than in the
    // tiny fixtures, so f32 summation order shows: measured 5.0e-4 (1.5e-5
    // of the largest logit), the same size as the single path's own
    // cached-vs-uncached difference for the same step (3.3e-4, 8.8e-5,
    // 3.5e-5 for these three prompts). A structural bug moves logits by ≥0.1.
    let tol = if support::on_cuda() { 1e-2 } else { 1e-3 };
    let d = batched_equals_single(&m.model, &ps, 3, tol);
    eprintln!("270M: batched vs single max |Δlogit| = {d:.3e}");
}

/// One sampling request among greedy ones (as the OpenAI route's
/// `temperature` makes): the greedy rows take the argmax computed where the
/// logits are, and only the rows decided on the host are read back (the
/// sampled row, and a greedy row whose argmax its sampler forbids). Every
/// row gives the tokens it gives alone.
#[test]
fn a_batch_mixing_greedy_and_sampled_rows_gives_each_its_tokens_alone() {
    let m = load("tiny_a");
    let base = ids(&expected("tiny_a")["prompt_ids"]);
    let ps = prompts(&base, [3, 9, 17]);
    let greedy = greedy_opts(&m, 10);
    let mut sampled = greedy.clone();
    sampled.sampling = SamplingParams {
        temperature: 1.5,
        top_k: 8,
        top_p: 0.95,
        seed: 7,
    };
    let mut banned = greedy.clone();
    let free = generate_alone(&m, &ps[2], &greedy).tokens;
    banned.suppressed.push(free[1]);
    let opts = [greedy.clone(), sampled, banned];
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .zip(&opts)
        .map(|(p, o)| generate_alone(&m, p, o).tokens)
        .collect();
    assert_ne!(
        alone[1],
        generate_alone(&m, &ps[1], &greedy).tokens,
        "the sampled row samples"
    );
    assert_ne!(alone[2], free, "the ban changes the greedy row");
    let mut seqs: Vec<Sequence> = ps
        .iter()
        .zip(&opts)
        .map(|(p, o)| Sequence::new(&m.model, m.model.new_cache(), p, o.clone()).unwrap())
        .collect();
    for s in &mut seqs {
        s.prefill(&m.model, &mut |_| Flow::Continue).unwrap();
    }
    while !seqs.iter().all(Sequence::is_finished) {
        let mut running: Vec<&mut Sequence> =
            seqs.iter_mut().filter(|s| !s.is_finished()).collect();
        decode_step(&m.model, &mut running, |_, _| Flow::Continue).unwrap();
    }
    for (i, (s, want)) in seqs.iter().zip(&alone).enumerate() {
        assert_eq!(s.tokens(), want.as_slice(), "row {i}");
    }
}
