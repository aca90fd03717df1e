//! The whole decoder with every kernel in place against the plain Burn ops:
//! one small Gemma 3 (a local and a global layer, grouped-query heads, a
//! window the decode runs past) built from the same deterministic weights
//! on CubeCL's CPU runtime (kernels on) and on the `flex` CPU backend (no
//! kernels), fed the same tokens: prefill, single-sequence decode, batched
//! decode of sequences at different lengths, and greedy generation; then the
//! captured decode step (`decode_graph.rs`) against `forward_batch`.
//!
//! Owns: nothing but this test. Must never: hide a difference the kernels'
//! own tests would not (it checks their wiring in `gemma3.rs` and
//! `generate.rs`: head layout, table rows, cache slots, greedy ids).

use std::sync::atomic::AtomicBool;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::{Gemma3Config, LayerType, Rope};
use crate::gemma3::{Gemma3, Logits, TensorSource};
use crate::generate::{GenerateOptions, generate};
use crate::kernels::test_support::{device, max_abs_diff};
use crate::kv_cache::KvCache;
use crate::sampling::SamplingParams;
use crate::weights::WeightsError;

/// Values from a hash of the tensor's name and index, so both devices get
/// the same weights.
struct Pattern<'a> {
    device: &'a Device,
}

fn pattern(name: &str, n: usize, scale: f32) -> Vec<f32> {
    let salt = name.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt)
                .rotate_left(13)
                ^ salt;
            ((h >> 8) as f32 / (1u32 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

impl TensorSource for Pattern<'_> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        // Uniform(±0.3): unit-variance outputs for 32–64 inputs.
        let v = pattern(name, shape[0] * shape[1], 0.3);
        Ok(Tensor::<2>::from_data(
            TensorData::new(v, shape),
            (self.device, DType::F32),
        ))
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        let v = pattern(name, n, 0.5);
        Ok(Tensor::<1>::from_data(
            TensorData::new(v, [n]),
            (self.device, DType::F32),
        ))
    }
}

fn config() -> Gemma3Config {
    let mut c = Gemma3Config::medgemma_4b();
    c.vocab_size = 300;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.query_pre_attn_scalar = 32.0;
    c.layer_types = vec![LayerType::Local, LayerType::Global];
    c.sliding_window = 5;
    c.rope_global = Rope {
        theta: 1_000_000.0,
        linear_factor: 8.0,
    };
    c.max_position_embeddings = 512;
    c
}

fn model(device: &Device) -> Gemma3 {
    let cfg = config();
    match Gemma3::build(&cfg, &mut Pattern { device }, device, DType::F32) {
        Ok(m) => m,
        Err(e) => panic!("pattern weights cannot fail: {e}"),
    }
}

/// Greedy decoding of `max_new_tokens` tokens on [`model`]'s vocabulary,
/// never stopping early.
fn greedy_options(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: SamplingParams::default(),
        stop_ids: vec![],
        ignore_eos: true,
        context_limit: 512,
        valid_vocab: 300,
        suppressed: vec![],
    }
}

/// How far apart the logits of one more token (9) are after two caches
/// that should hold the same (each gets the token).
fn next_logits_differ(m: &Gemma3, a: &mut KvCache, b: &mut KvCache) -> f32 {
    max_abs_diff(
        m.forward(&[9], a, Logits::Last),
        m.forward(&[9], b, Logits::Last),
    )
}

/// Logits of each step, from `forward` over `prompt` then one token at a
/// time (`steps` tokens taken from `feed`), and from `forward_batch` over
/// two caches of different lengths.
fn run(m: &Gemma3) -> Vec<Tensor<2>> {
    let prompt: Vec<u32> = (0..7).map(|i| (i * 37 + 3) % 300).collect();
    let mut out = Vec::new();
    let mut a = KvCache::new(m.config());
    out.push(m.forward(&prompt, &mut a, Logits::All));
    let mut b = KvCache::new(m.config());
    out.push(m.forward(&prompt[..3], &mut b, Logits::Last));
    // Single-sequence decode past the window (7 + 6 > 5) on both layer kinds.
    for i in 0..6u32 {
        out.push(m.forward(&[(i * 53 + 11) % 300], &mut a, Logits::Last));
    }
    // Batched decode: sequences at positions 13 and 3.
    for i in 0..4u32 {
        let toks = [(i * 29 + 5) % 300, (i * 31 + 7) % 300];
        out.push(m.forward_batch(&toks, &mut [&mut a, &mut b]));
    }
    out
}

#[test]
fn the_decoder_with_kernels_equals_the_plain_burn_decoder() {
    let (cube, flex) = (device(), Device::flex());
    let (mc, mf) = (model(&cube), model(&flex));
    let (got, want) = (run(&mc), run(&mf));
    for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-3, "step {i}: logits differ by {d}");
    }

    // Greedy generation (the device argmax on CubeCL) picks the same ids.
    let opts = greedy_options(12);
    let prompt: Vec<u32> = vec![2, 17, 250, 9, 41];
    let gen_on = |m: &Gemma3| {
        let mut cache = KvCache::new(m.config());
        generate(
            m,
            &mut cache,
            &prompt,
            &opts,
            &AtomicBool::new(false),
            |_| crate::generate::Flow::Continue,
        )
        .expect("generates")
        .tokens
    };
    let (tc, tf) = (gen_on(&mc), gen_on(&mf));
    assert_eq!(tc.len(), 12);
    assert_eq!(tc, tf, "greedy tokens differ");
}

/// The captured decode step against `forward_batch` on the same device:
/// three sequences at 252, 3 and 3 positions (one global buffer fills at
/// 256 and the step is captured anew; rings full and not yet full), their
/// graph caches cloned from the plain ones (shared buffers, which the graph
/// must copy before writing). Then the two sequences of equal length swap
/// places (the lengths still match: only the buffers tell the graph which
/// row is whose), which replays with the rows' logits reordered, and one is
/// written outside the graph (its buffers copied away from the graph's), so
/// it takes its old row back with its slots copied in. Each step's logits
/// agree, only the full buffer is a new capture, and the graph's caches go
/// on as the plain ones do. (Here a graph writing into the plain caches'
/// shared buffers would write the values they get anyway; the kept prompt
/// cache of the next test is what catches that.)
#[test]
fn the_captured_decode_step_equals_forward_batch() {
    use crate::decode_graph::DecodeGraph;
    let m = model(&device());
    let prompts: Vec<Vec<u32>> = [(252u32, 37u32), (3, 37), (3, 41)]
        .iter()
        .map(|&(n, k)| (0..n).map(|i| (i * k + 3) % 300).collect())
        .collect();
    let mut plain: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            let mut c = KvCache::new(m.config());
            let _ = m.forward(p, &mut c, Logits::Last);
            c
        })
        .collect();
    let mut graphed = plain.clone();
    let mut tokens = vec![5u32, 6, 7];
    let greedy = |logits: &Tensor<2>| -> Vec<u32> {
        let [b, v] = logits.dims();
        let x: Vec<f32> = logits.clone().into_data().iter::<f32>().collect();
        (0..b)
            .map(|r| {
                let row = &x[r * v..(r + 1) * v];
                (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as u32
            })
            .collect()
    };
    let mut g = DecodeGraph::new(&m, 2).expect("a CubeCL device");
    let step = |g: &mut DecodeGraph,
                graphed: &mut [KvCache],
                plain: &mut [KvCache],
                tokens: &mut Vec<u32>,
                what: &str| {
        let mut refs: Vec<&mut KvCache> = graphed.iter_mut().collect();
        let got = g.step(&mut refs, tokens).expect("covered");
        let mut refs: Vec<&mut KvCache> = plain.iter_mut().collect();
        let want = m.forward_batch(tokens, &mut refs);
        let d = max_abs_diff(got, want.clone());
        assert!(d < 1e-4, "{what}: logits differ by {d}");
        *tokens = greedy(&want);
    };
    for i in 0..7 {
        step(
            &mut g,
            &mut graphed,
            &mut plain,
            &mut tokens,
            &format!("step {i}"),
        );
    }
    // Room for 4 tokens at 252 of 256 slots: steps 0–3, then 4–6.
    assert_eq!(g.captures(), 2, "{g:?}");
    // CubeCL's CPU runtime has no graphs: replays re-run the step.
    assert!(!g.is_hardware(), "{g:?}");

    graphed.swap(1, 2);
    plain.swap(1, 2);
    tokens.swap(1, 2);
    step(&mut g, &mut graphed, &mut plain, &mut tokens, "swapped");
    assert_eq!(g.captures(), 2, "the same rows in another order: {g:?}");
    step(
        &mut g,
        &mut graphed,
        &mut plain,
        &mut tokens,
        "after the swap",
    );
    assert_eq!(g.captures(), 2, "the same batch again replays: {g:?}");

    let d = next_logits_differ(&m, &mut graphed[1], &mut plain[1]);
    assert!(d < 1e-4, "a token outside the graph");
    step(
        &mut g,
        &mut graphed,
        &mut plain,
        &mut tokens,
        "written outside",
    );
    assert_eq!(
        g.captures(),
        2,
        "a cache written outside takes its row back: {g:?}"
    );
    drop(g);

    for (a, b) in graphed.iter_mut().zip(plain.iter_mut()) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.cached_per_layer(), b.cached_per_layer());
        let d = next_logits_differ(&m, a, b);
        assert!(d < 1e-4, "after the graph, logits differ by {d}");
    }
}

/// Continuous batching with rows taken over: a sequence that ends and is
/// dropped leaves its row to the graph alone (a ghost, fed token 0, its
/// logits dropped), and a new sequence whose cache fits takes it over (its
/// slots copied into the row's buffers): no capture, in any order. A row
/// whose sequence is gone from the batch but whose buffers a clone still
/// holds is never written (a new capture instead, the clone unchanged), nor
/// is a row too small for a newcomer; and a ghost row nobody takes over
/// for 16 steps is let go with its capture. Every step equals
/// `forward_batch` on copies of the caches.
#[test]
fn a_new_sequence_takes_over_the_row_of_one_that_ended() {
    use crate::decode_graph::DecodeGraph;
    let m = model(&device());
    let prefilled = |n: u32, k: u32| {
        let p: Vec<u32> = (0..n).map(|i| (i * k + 3) % 300).collect();
        let mut c = KvCache::new(m.config());
        let _ = m.forward(&p, &mut c, Logits::Last);
        c
    };
    // (graphed, plain) pairs by name; the graphed one goes through the graph.
    let mut caches: std::collections::BTreeMap<char, (KvCache, KvCache)> = [
        ('a', prefilled(5, 37)),
        ('b', prefilled(7, 41)),
        ('c', prefilled(6, 43)),
    ]
    .into_iter()
    .map(|(n, c)| (n, (c.clone(), c)))
    .collect();
    let mut g = DecodeGraph::new(&m, 8).expect("a CubeCL device");
    let mut at = 0u32;
    let mut step = |g: &mut DecodeGraph,
                    caches: &mut std::collections::BTreeMap<char, (KvCache, KvCache)>,
                    batch: &str| {
        at += 1;
        let tokens: Vec<u32> = batch.chars().map(|n| (at * 11 + n as u32) % 300).collect();
        let mut each: Vec<(char, &mut (KvCache, KvCache))> =
            caches.iter_mut().map(|(n, c)| (*n, c)).collect();
        let mut graphed = Vec::new();
        let mut plain = Vec::new();
        for n in batch.chars() {
            let i = each.iter().position(|(m, _)| *m == n).expect("a cache");
            let (_, pair) = each.swap_remove(i);
            let (gc, pc) = pair;
            graphed.push(gc);
            plain.push(pc);
        }
        let got = g.step(&mut graphed, &tokens).expect("covered");
        let want = m.forward_batch(&tokens, &mut plain);
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4, "step {at} {batch}: logits differ by {d}");
    };
    step(&mut g, &mut caches, "abc");
    step(&mut g, &mut caches, "abc");
    assert_eq!(g.captures(), 1);
    // c ends and is dropped: its row is a ghost.
    caches.remove(&'c');
    step(&mut g, &mut caches, "ab");
    assert_eq!(g.captures(), 1, "a gone sequence's row runs as a ghost");
    // d joins, first in the batch, and takes c's row over.
    let d = prefilled(4, 47);
    caches.insert('d', (d.clone(), d));
    step(&mut g, &mut caches, "dab");
    step(&mut g, &mut caches, "bda");
    assert_eq!(
        g.captures(),
        1,
        "a newcomer took the ghost row, in any order"
    );

    // b leaves the batch but a clone of its cache lives on: its row is
    // not gone, so nothing may write it, and the graph captures anew.
    let kept = caches.get(&'b').expect("b").0.clone();
    let kept_plain = caches.get(&'b').expect("b").1.clone();
    caches.remove(&'b');
    step(&mut g, &mut caches, "da");
    assert_eq!(g.captures(), 2, "a row still held elsewhere is not a ghost");
    let (mut x, mut y) = (kept, kept_plain);
    let diff = next_logits_differ(&m, &mut x, &mut y);
    assert!(
        diff < 1e-4,
        "the kept clone was written: logits differ by {diff}"
    );

    // a ends; e's cache (300 positions) does not fit a's row (256 slots):
    // a new capture.
    caches.remove(&'a');
    let e = prefilled(300, 53);
    caches.insert('e', (e.clone(), e));
    step(&mut g, &mut caches, "de");
    assert_eq!(g.captures(), 3, "a newcomer too long for the ghost row");
    step(&mut g, &mut caches, "de");
    assert_eq!(g.captures(), 3);
    // d ends and nobody joins: its row runs as a ghost for a while, then
    // the capture goes (and d's buffers with it).
    caches.remove(&'d');
    for _ in 0..16 {
        step(&mut g, &mut caches, "e");
    }
    assert_eq!(g.captures(), 3, "a ghost row waits for a newcomer");
    step(&mut g, &mut caches, "e");
    assert_eq!(g.captures(), 4, "a ghost row no one took is let go");
    drop(g);
    for (n, (gc, pc)) in caches.iter_mut() {
        let diff = next_logits_differ(&m, gc, pc);
        assert!(diff < 1e-4, "{n} after the graph: logits differ by {diff}");
    }
}

/// A server's batch: three turns in flight, each dropped when it ends and
/// replaced by a new one at the next step (as the engine does), seven in
/// all. Through the graph every turn's greedy tokens equal the launched
/// steps', and one capture serves them all: each newcomer takes over the
/// row of the turn that ended.
/// A ghost row's memory is what the ended turn's cache held, and only
/// ghosts count (a running sequence's buffers are its own);
/// `keep_ghosts_within` keeps the capture while the batch's own caches and
/// the ghosts fit the allowance, and lets it go, the ghost's buffers with
/// it, one byte past: the next step captures anew and still equals
/// `forward_batch`. A capture without ghosts stays whatever the count.
#[test]
fn a_ghost_rows_memory_is_counted_and_let_go_past_the_allowance() {
    use crate::decode_graph::DecodeGraph;
    let m = model(&device());
    let cfg = m.config();
    let per_slot =
        2 * (cfg.num_key_value_heads * cfg.head_dim) as u64 * crate::budget::dtype_bytes(m.dtype());
    let bytes = |c: &KvCache| {
        c.allocated_per_layer()
            .iter()
            .map(|&n| n as u64 * per_slot)
            .sum::<u64>()
    };
    let prefilled = |n: u32, k: u32| {
        let p: Vec<u32> = (0..n).map(|i| (i * k + 3) % 300).collect();
        let mut c = KvCache::new(cfg);
        let _ = m.forward(&p, &mut c, Logits::Last);
        c
    };
    let (a, b) = (prefilled(5, 37), prefilled(7, 41));
    let (mut ga, mut gb, mut pa, mut pb) = (a.clone(), b.clone(), a, b);
    let mut g = DecodeGraph::new(&m, 8).expect("a CubeCL device");
    let mut at = 0u32;
    let mut check = |got: Option<Tensor<2>>, want: Tensor<2>| {
        at += 1;
        let d = max_abs_diff(got.expect("covered"), want);
        assert!(d < 1e-4, "step {at}: logits differ by {d}");
    };
    let got = g.step(&mut [&mut ga, &mut gb], &[1, 2]);
    check(got, m.forward_batch(&[1, 2], &mut [&mut pa, &mut pb]));
    assert_eq!(g.ghost_bytes(), 0, "no turn ended");
    let (a_bytes, b_bytes) = (bytes(&ga), bytes(&gb));
    assert!(b_bytes > 0);
    drop(gb);
    assert_eq!(g.ghost_bytes(), b_bytes, "the ended turn's buffers");

    assert!(g.keep_ghosts_within(a_bytes, a_bytes + b_bytes));
    let got = g.step(&mut [&mut ga], &[3]);
    check(got, m.forward(&[3], &mut pa, Logits::Last));
    assert_eq!(g.captures(), 1, "the ghost fits: it runs on");
    assert_eq!(g.ghost_bytes(), b_bytes);

    assert_eq!(g.ghosts_let_go(), 0);
    assert!(!g.keep_ghosts_within(a_bytes, a_bytes + b_bytes - 1));
    assert_eq!(g.ghost_bytes(), 0, "one byte past: the ghost goes");
    assert_eq!(g.ghosts_let_go(), 1);
    let got = g.step(&mut [&mut ga], &[4]);
    check(got, m.forward(&[4], &mut pa, Logits::Last));
    assert_eq!(g.captures(), 2, "the next step captures anew");
    assert!(
        g.keep_ghosts_within(u64::MAX, 0),
        "no ghost: nothing to free"
    );
    assert_eq!(g.ghosts_let_go(), 1);
    let got = g.step(&mut [&mut ga], &[5]);
    check(got, m.forward(&[5], &mut pa, Logits::Last));
    assert_eq!(g.captures(), 2);
}

#[test]
fn a_server_batch_of_turns_ending_and_joining_is_captured_once() {
    use crate::generate::{Flow, Sequence, StepGraph, decode_step_with};
    let m = model(&device());
    let lengths = [4usize, 6, 5, 7, 4, 5, 6];
    let prompt = |k: usize| -> Vec<u32> {
        (0..3 + k as u32 % 4)
            .map(|i| (i * 31 + k as u32 * 7 + 3) % 300)
            .collect()
    };
    let run = |graph: &mut StepGraph| {
        let mut next = 0;
        let mut running: Vec<(usize, Sequence)> = Vec::new();
        let mut done = vec![Vec::new(); lengths.len()];
        let mut steps = 0;
        loop {
            while running.len() < 3 && next < lengths.len() {
                let mut s = Sequence::new(
                    &m,
                    KvCache::new(m.config()),
                    &prompt(next),
                    greedy_options(lengths[next]),
                )
                .expect("a valid prompt");
                s.prefill(&m, &mut |_| Flow::Continue).expect("prefills");
                running.push((next, s));
                next += 1;
            }
            if running.is_empty() {
                break;
            }
            let mut refs: Vec<&mut Sequence> = running.iter_mut().map(|(_, s)| s).collect();
            decode_step_with(&m, graph, &mut refs, |_, _| Flow::Continue).expect("a step");
            steps += 1;
            // Ended turns go, their caches with them.
            let (ended, rest): (Vec<_>, Vec<_>) =
                running.into_iter().partition(|(_, s)| s.is_finished());
            running = rest;
            for (k, s) in ended {
                done[k] = s.tokens().to_vec();
            }
        }
        (done, steps)
    };
    let (want, steps) = run(&mut StepGraph::default());
    let mut graph = StepGraph::on(&m, 8);
    let (got, again) = run(&mut graph);
    assert_eq!(steps, again);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "turn {k}: tokens through the graph");
        assert_eq!(g.len(), lengths[k], "turn {k} ran its length");
    }
    assert_eq!(
        graph.captures().0,
        1,
        "{steps} steps, seven turns, one capture"
    );
}

/// Batches that change every step, where nobody knew ahead: the first
/// [`RECENT`] are captured and never replayed, so the graph takes the batch
/// for churning, declines the next new batch (the caller launches it) and
/// captures a batch only once it has run [`CHURN_WAIT`] launched steps;
/// that one then replays. Every step, graphed or launched, equals
/// `forward_batch` on copies of the caches. Once a capture has replayed
/// enough for the recent ones to pay on average, new batches are captured
/// at once again.
///
/// [`RECENT`]: crate::decode_graph
/// [`CHURN_WAIT`]: crate::decode_graph
/// The caches `batch` names (distinct indices), in its order.
fn pick<'a>(all: &'a mut [KvCache], batch: &[usize]) -> Vec<&'a mut KvCache> {
    let mut each: Vec<Option<&mut KvCache>> = all.iter_mut().map(Some).collect();
    batch
        .iter()
        .map(|&i| each[i].take().expect("distinct caches"))
        .collect()
}

#[test]
fn churning_batches_run_launched_until_one_settles() {
    use crate::decode_graph::DecodeGraph;
    let m = model(&device());
    let mut plain: Vec<KvCache> = (0..4u32)
        .map(|s| {
            let p: Vec<u32> = (0..3 + s).map(|i| (i * 31 + s + 3) % 300).collect();
            let mut c = KvCache::new(m.config());
            let _ = m.forward(&p, &mut c, Logits::Last);
            c
        })
        .collect();
    let mut graphed = plain.clone();
    let mut g = DecodeGraph::new(&m, 8).expect("a CubeCL device");
    // One step of the caches `batch` (indices), through the graph where it
    // takes the step and launched where it declines; `true` when it took it.
    let mut step = |g: &mut DecodeGraph, batch: &[usize], at: usize| -> bool {
        let tokens: Vec<u32> = batch.iter().map(|&i| (at * 7 + i) as u32 % 300).collect();
        let got = g.step(&mut pick(&mut graphed, batch), &tokens);
        let took = got.is_some();
        let got = got.unwrap_or_else(|| m.forward_batch(&tokens, &mut pick(&mut graphed, batch)));
        let want = m.forward_batch(&tokens, &mut pick(&mut plain, batch));
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4, "step {at} {batch:?}: logits differ by {d}");
        took
    };
    // A new batch every step: captured, never replayed.
    let churn: [&[usize]; 4] = [&[0, 1], &[1, 2], &[2, 3], &[3, 0]];
    for (at, batch) in churn.iter().enumerate() {
        assert!(step(&mut g, batch, at), "step {at}: captured");
    }
    assert_eq!(g.captures(), 4);
    // Churning now: a new batch is launched for two steps, then captured.
    let settled: &[usize] = &[0, 2, 3];
    assert!(!step(&mut g, settled, 4), "a new batch while churning");
    assert!(!step(&mut g, settled, 5), "its second launched step");
    assert!(
        step(&mut g, settled, 6),
        "captured after two launched steps"
    );
    assert_eq!(g.captures(), 5);
    assert!(step(&mut g, settled, 7), "and replayed");
    assert_eq!(g.captures(), 5, "a replay, not a capture: {g:?}");
    // Another new batch is again launched first, and a batch that changes
    // in its wait starts its wait anew.
    assert!(!step(&mut g, &[1, 2], 8));
    assert!(!step(&mut g, &[1, 3], 9));
    assert!(!step(&mut g, &[1, 3], 10));
    assert!(step(&mut g, &[1, 3], 11));
    assert_eq!(g.captures(), 6);
    // Seven replays: the last captures (0, 0, 1, 7 replays) now pay on
    // average, and a new batch is captured at once again.
    for at in 12..19 {
        assert!(step(&mut g, &[1, 3], at));
    }
    assert_eq!(g.captures(), 6);
    assert!(step(&mut g, &[0, 1], 19), "settled: captured at once");
    assert_eq!(g.captures(), 7);
    for (a, b) in graphed.iter_mut().zip(plain.iter_mut()) {
        assert_eq!(a.len(), b.len());
        let d = next_logits_differ(&m, a, b);
        assert!(d < 1e-4, "after the churn, logits differ by {d}");
    }
}

/// Continuous batching through the graph ([`decode_step_with`]) against the
/// launched steps ([`decode_step`]): one sequence ends early, one fills a
/// global buffer, one keeps its prompt's cache (a clone that shares the
/// buffers until the graph copies them), one joins mid-way. Every
/// sequence's greedy tokens are the same both ways; the graph captured
/// each new batch known to last [`MIN_RUN`] steps or more and no other,
/// and replayed between captures; and the kept prompt cache continues the
/// conversation as it does after launched steps.
///
/// [`MIN_RUN`]: crate::decode_graph::MIN_RUN
#[test]
fn continuous_batching_through_the_graph_equals_launched_steps() {
    use crate::decode_graph::MIN_RUN;
    use crate::generate::{Flow, Sequence, StepGraph, decode_step_with};
    let m = model(&device());
    let opts = greedy_options;
    let prompt = |n: u32, k: u32| -> Vec<u32> { (0..n).map(|i| (i * k + 3) % 300).collect() };
    // (prompt, new tokens, step it joins at).
    let plan = [
        (prompt(4, 37), 3, 0),
        (prompt(250, 41), 12, 0),
        (prompt(6, 43), 10, 0),
        (prompt(2, 47), 5, 4),
    ];
    let kept_prompt = plan[2].0.clone();
    let run = |graph: &mut StepGraph| {
        let mut seqs: Vec<Sequence> = Vec::new();
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); plan.len()];
        let mut batches = Vec::new();
        // Per step: the steps its batch lasts at most, and the captures so far.
        let mut steps = Vec::new();
        for at in 0.. {
            for (p, n, join) in &plan {
                if *join == at {
                    let mut s = Sequence::new(&m, KvCache::new(m.config()), p, opts(*n))
                        .expect("a valid prompt");
                    if seqs.len() == 2 {
                        s.keep_prompt_cache();
                    }
                    s.prefill(&m, &mut |_| Flow::Continue).expect("prefills");
                    seqs.push(s);
                }
            }
            let active: Vec<usize> = (0..seqs.len())
                .filter(|&i| !seqs[i].is_finished())
                .collect();
            if active.is_empty() && at > 4 {
                break;
            }
            // The sequences this step runs (one at its length ends in it
            // without running; none here meets its context) and how many
            // steps they run together at most.
            let left = |i: usize| plan[i].1 - seqs[i].tokens().len();
            let stepping: Vec<usize> = active.iter().copied().filter(|&i| left(i) > 0).collect();
            let lasts = stepping.iter().map(|&i| left(i)).min();
            batches.push(active);
            let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
            decode_step_with(&m, graph, &mut refs, |_, _| Flow::Continue).expect("a step");
            steps.push((stepping, lasts, graph.captures().0));
        }
        for (i, s) in seqs.iter().enumerate() {
            tokens[i] = s.tokens().to_vec();
        }
        let kept = seqs.remove(2).into_conversation().1;
        (tokens, batches, steps, kept)
    };
    let (want, batches, _, kept_launched) = run(&mut StepGraph::default());
    // Room for one token at a time: a buffer fills inside a stable batch.
    let mut graph = StepGraph::on(&m, 1);
    assert!(graph.is_on());
    let (got, again, steps, kept_graphed) = run(&mut graph);
    assert_eq!(batches, again, "the same batches both ways");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "sequence {i}: tokens through the graph");
        assert_eq!(g.len(), plan[i].1, "sequence {i} ran its length");
    }
    let (captures, hardware) = graph.captures();
    assert!(!hardware);
    // Each step's batch, how long it lasts at most, and whether it captured.
    let mut before = 0;
    let mut declined = 0;
    for (at, (batch, lasts, after)) in steps.iter().enumerate() {
        let Some(lasts) = *lasts else { continue };
        let captured = *after > before;
        before = *after;
        let new_batch = at == 0 || steps[at - 1].0 != *batch;
        assert!(
            !captured || lasts >= MIN_RUN,
            "step {at}: a batch lasting {lasts} steps was captured ({batches:?}, {steps:?})"
        );
        if new_batch && lasts >= MIN_RUN {
            assert!(
                captured,
                "step {at}: a new batch lasting {lasts} steps was not captured"
            );
        }
        declined += usize::from(new_batch && lasts < MIN_RUN);
    }
    assert!(declined > 0, "a short-lived batch ran launched: {steps:?}");
    let stepped = batches.iter().filter(|b| !b.is_empty()).count();
    assert!(
        captures > 1 && captures < stepped,
        "replays between captures"
    );

    // The kept prompt cache holds what the launched run's does (the graph
    // wrote its decode tokens into its own copy, not into the kept one's
    // ring), and goes on as it does.
    let (x, y) = (
        kept_launched.cache().expect("a kept cache").clone(),
        kept_graphed.cache().expect("a kept cache").clone(),
    );
    assert_eq!((x.len(), y.len()), (kept_prompt.len(), kept_prompt.len()));
    let (mut x, mut y) = (x, y);
    let d = next_logits_differ(&m, &mut x, &mut y);
    assert!(d < 1e-4, "the kept prompt caches differ: logits by {d}");
    let next: Vec<u32> = kept_prompt.iter().copied().chain([7, 8]).collect();
    let first = |kept| {
        let mut s = Sequence::resume(&m, Some(kept), &next, opts(3)).expect("resumes");
        let mut out = Vec::new();
        s.prefill(&m, &mut |id| {
            out.push(id);
            Flow::Continue
        })
        .expect("prefills");
        (s.reused_tokens(), out)
    };
    let (a, b) = (first(kept_launched), first(kept_graphed));
    assert_eq!(a, b, "the kept prompt cache after the graph");
    assert_eq!(a.0, kept_prompt.len(), "the prompt cache was reused");
}

/// A tuning routes every linear layer of a shape as it timed that shape:
/// forced onto the tiled kernel for 1 and 2 rows and onto Burn's matmul for
/// 5–8, the decoder still equals the plain one (the 7-token prompt through
/// Burn's matmul; one-token decode and the 2-row batch through the tiled
/// kernel; the 3-token prompt's layers through the skinny kernel; greedy
/// ids); with the real choice, each layer's route is the one its shape's
/// timing chose. (A few row counts, not all six: each shape, row count and
/// route is a kernel for the CPU runtime's LLVM to compile.)
#[test]
fn a_tuned_decoder_routes_each_shape_as_timed_and_computes_the_same() {
    use crate::linear::{ProductRoute, ROUTED};

    let (cube, flex) = (device(), Device::flex());
    let mut mc = model(&cube);
    let mf = model(&flex);
    let mut forced = mc.tune_products_with(1, &[1, 2], |_| ProductRoute::Tiled);
    forced.extend(mc.tune_products_with(1, &[8], |_| ProductRoute::Burn));
    // embed 300x64; q 128x64; k and v 64x64 (2 layers each); o 64x128;
    // gate and up 96x64; down 64x96: six shapes at three row counts.
    assert_eq!(forced.len(), 6 * 3, "{forced:?}");
    let layers_of = |shape: &str| forced.iter().find(|t| t.shape == shape).map(|t| t.layers);
    assert_eq!(layers_of("300x64"), Some(1));
    assert_eq!(layers_of("64x64"), Some(4));
    assert_eq!(layers_of("96x64"), Some(4));
    assert!(
        forced.iter().all(|t| t.tiled_agrees && t.burn_agrees),
        "{forced:?}"
    );
    for (rows, route) in [
        (1, ProductRoute::Tiled),
        (2, ProductRoute::Tiled),
        (5, ProductRoute::Burn),
        (8, ProductRoute::Burn),
        (3, ProductRoute::Skinny),
        (32, ProductRoute::Skinny),
        (33, ProductRoute::Skinny),
    ] {
        let routes = mc.product_routes(rows);
        assert_eq!(routes.len(), 1 + 2 * 7);
        assert!(
            routes.iter().all(|(_, r)| *r == route),
            "{rows} rows: {routes:?}"
        );
    }
    let before = ROUTED.with(std::cell::Cell::get);
    let got = run(&mc);
    let after = ROUTED.with(std::cell::Cell::get);
    // Tiled: the 3-token prompt's LM head (its last row only), the 6
    // one-token steps' 15 products each (q, k, v, o, gate, up, down in 2
    // layers, and the LM head) and the 4 two-row steps' 15 each. Burn's:
    // the 7-token prompt's 15 (its LM head over all 7 rows). The 3-token
    // prompt's layers stay on the skinny kernel.
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1 + 6 * 15 + 4 * 15, 15),
        "products through the tiled kernel and Burn's matmul"
    );
    for (i, (g, w)) in got.into_iter().zip(run(&mf)).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-3, "step {i}, routed: logits differ by {d}");
    }
    let opts = greedy_options(8);
    let gen_on = |m: &Gemma3| {
        let mut cache = KvCache::new(m.config());
        generate(
            m,
            &mut cache,
            &[2, 17, 250, 9, 41],
            &opts,
            &AtomicBool::new(false),
            |_| crate::generate::Flow::Continue,
        )
        .expect("generates")
        .tokens
    };
    assert_eq!(gen_on(&mc), gen_on(&mf), "greedy tokens, routed");

    let timed = mc.tune_products_with(3, &[1], crate::linear::choose);
    assert_eq!(timed.len(), 6);
    for t in &timed {
        assert!(
            t.skinny_us > 0.0 && t.tiled_us > 0.0 && t.burn_us > 0.0,
            "{t:?}"
        );
        let routes = mc.product_routes(t.rows);
        let of_shape: Vec<_> = routes.iter().filter(|(s, _)| *s == t.shape).collect();
        assert_eq!(of_shape.len(), t.layers);
        assert!(
            of_shape.iter().all(|(_, r)| *r == t.route),
            "{t:?}: {of_shape:?}"
        );
    }
}

/// A chunk tuning routes every layer of a weight shape as it timed that
/// shape, and a prompt through the routed products computes what the flex
/// decoder does. Forced onto one CUDA-core routine, every chunk product of
/// a 40-token prompt (past the decode kernels' 32 rows) takes it: 7 per
/// layer; a 7-token prompt and the decode steps after it take none (until
/// a decode bucket is forced onto a routine too). With
/// the real choice, each layer's routine is the one its shape's timing
/// chose (on the CPU runtime only the f32 CUDA-core routines run, so any
/// choice is one of them).
#[test]
fn a_chunk_tuning_routes_each_shape_as_timed_and_computes_the_same() {
    use crate::linear::CUBEK_ROUTED;
    use crate::routines::MatmulRoutine;

    let (cube, flex) = (device(), Device::flex());
    let mut mc = model(&cube);
    let mf = model(&flex);
    let forced = mc.tune_chunk_products_with(1, 40, |_, _| Some(MatmulRoutine::UnitMinTile));
    // q 128x64; k and v 64x64; o 64x128; gate and up 96x64; down 64x96.
    assert_eq!(forced.len(), 5, "{forced:?}");
    assert!(
        forced
            .iter()
            .all(|t| t.rows == 40 && t.route == "unit_min_tile")
    );
    let layers: usize = forced.iter().map(|t| t.layers).sum();
    assert_eq!(layers, 2 * 7, "every layer's seven, no embedding");
    assert!(
        mc.chunk_routes()
            .iter()
            .all(|(_, r)| *r == Some(MatmulRoutine::UnitMinTile))
    );
    let prompt: Vec<u32> = (0..40).map(|i| (i * 53 + 5) % 300).collect();
    let prefill = |m: &Gemma3, ids: &[u32]| {
        let mut cache = KvCache::new(m.config());
        m.forward(ids, &mut cache, Logits::All)
    };
    let before = CUBEK_ROUTED.with(std::cell::Cell::get);
    let got = prefill(&mc, &prompt);
    let routed = CUBEK_ROUTED.with(std::cell::Cell::get) - before;
    assert_eq!(routed, 2 * 7, "each layer's seven products of the prompt");
    let d = max_abs_diff(got, prefill(&mf, &prompt));
    assert!(d < 1e-3, "40-token prompt, routed: logits differ by {d}");
    let before = CUBEK_ROUTED.with(std::cell::Cell::get);
    let _ = run(&mc);
    assert_eq!(
        CUBEK_ROUTED.with(std::cell::Cell::get),
        before,
        "short prompts and decode steps keep their own routes"
    );

    // A decode bucket forced onto a cubek routine: each one-token step's
    // 15 products (7 in each of 2 layers, and the LM head) take it, and so
    // does the 3-token prompt's LM head (its last row only).
    let forced = mc.tune_products_with(1, &[1], |_| {
        crate::linear::ProductRoute::Cubek(MatmulRoutine::UnitMinTile)
    });
    assert_eq!(forced.len(), 6, "{forced:?}");
    let before = CUBEK_ROUTED.with(std::cell::Cell::get);
    let got = run(&mc);
    assert_eq!(
        CUBEK_ROUTED.with(std::cell::Cell::get) - before,
        1 + 6 * 15,
        "the six one-token steps and a prompt's LM head"
    );
    for (i, (g, w)) in got.into_iter().zip(run(&mf)).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(
            d < 1e-3,
            "step {i}, decode on a cubek routine: logits differ by {d}"
        );
    }

    let timed = mc.tune_chunk_products_with(2, 40, crate::routines::choose_chunk);
    assert_eq!(timed.len(), 5);
    let routes = mc.chunk_routes();
    for t in &timed {
        assert!(t.burn_us > 0.0, "{t:?}");
        let of_shape: Vec<_> = routes.iter().filter(|(s, _)| *s == t.shape).collect();
        assert_eq!(of_shape.len(), t.layers);
        assert!(
            of_shape
                .iter()
                .all(|(_, r)| r.map_or("burn", MatmulRoutine::name) == t.route),
            "{t:?}: {of_shape:?}"
        );
    }
    let d = max_abs_diff(prefill(&mc, &prompt), prefill(&mf, &prompt));
    assert!(d < 1e-3, "40-token prompt, as timed: logits differ by {d}");
}
