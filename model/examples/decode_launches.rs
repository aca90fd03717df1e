//! Kernel launches of one decode step, counted by kernel from CubeCL's own
//! profiling log, on CubeCL's CPU runtime: the same kernels a GPU launches
//! for the step (and its captured graph replays), without a GPU. The
//! decoder has random weights; its shapes are small (the count per layer
//! does not depend on them), its layers alternate sliding-window and global.
//!
//! ```text
//! CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG=/tmp/launches.log \
//!   cargo run -p medgemma-model --features cuda,cube-cpu --example decode_launches -- [LAYERS] [BATCH]
//! ```
//!
//! Prints the launches of the step by kernel, their total, and the total per
//! layer (what the step adds for each layer: the count at LAYERS minus the
//! count at one layer, divided by LAYERS − 1).
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::collections::BTreeMap;

use medgemma_model::burn::tensor::{DType, Device};
use medgemma_model::config::{Gemma3Config, LayerType};
use medgemma_model::gemma3::{Gemma3, Logits};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a whole number"))
        .unwrap_or(default)
}

fn config(layers: usize) -> Gemma3Config {
    let mut c = Gemma3Config::medgemma_4b();
    c.vocab_size = 300;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.query_pre_attn_scalar = 32.0;
    c.layer_types = (0..layers)
        .map(|i| {
            if i % 2 == 0 {
                LayerType::Local
            } else {
                LayerType::Global
            }
        })
        .collect();
    c.sliding_window = 5;
    c.max_position_embeddings = 512;
    c
}

/// The log's kernel names from `start` (bytes) on, counted.
fn launches(log: &str, start: usize) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(log).expect("the profiling log is readable");
    let mut out = BTreeMap::new();
    for line in text[start.min(text.len())..].lines() {
        // `| <duration> | <kernel> |`, the kernel's name first in its cell.
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 3 && !cells[2].is_empty() {
            let name = cells[2].split(['<', ' ', '(']).next().unwrap_or(cells[2]);
            *out.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    out
}

/// One prompt chunk's launches at `layers` layers and `tokens` tokens, after
/// a first chunk of the same length (which compiles what the counted one
/// runs).
fn prefill(log: &str, layers: usize, tokens: usize) -> BTreeMap<String, usize> {
    let device = Device::cpu();
    let model = Gemma3::random(&config(layers), &device, DType::F32, 7);
    let mut cache = model.new_cache();
    let prompt: Vec<u32> = (0..tokens as u32).map(|t| 10 + t % 200).collect();
    let _ = model.forward(&prompt, &mut cache, Logits::Last).into_data();
    let start = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
    let _ = model.forward(&prompt, &mut cache, Logits::Last).into_data();
    launches(log, start)
}

/// One decode step's launches at `layers` layers and `batch` sequences.
fn step(log: &str, layers: usize, batch: usize) -> BTreeMap<String, usize> {
    let device = Device::cpu();
    let model = Gemma3::random(&config(layers), &device, DType::F32, 7);
    let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..3 + i as u32).map(|t| 10 + t).collect();
        let _ = model.forward(&prompt, c, Logits::Last).into_data();
    }
    // A first step compiles what the timed one runs.
    let tokens: Vec<u32> = (0..batch as u32).map(|i| 20 + i).collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let _ = model.forward_batch(&tokens, &mut refs).into_data();
    let start = std::fs::metadata(log).map_or(0, |m| m.len() as usize);
    let _ = model.forward_batch(&tokens, &mut refs).into_data();
    launches(log, start)
}

fn main() {
    let Ok(log) = std::env::var("CUBECL_DEBUG_LOG") else {
        eprintln!(
            "set CUBECL_DEBUG_OPTION=profile and CUBECL_DEBUG_LOG=<file> (see the top of this file)"
        );
        std::process::exit(2);
    };
    let (layers, batch) = (arg(1, 4).max(2), arg(2, 1).max(1));
    let chunk = arg(3, 0);
    let (many, one) = if chunk > 0 {
        (prefill(&log, layers, chunk), prefill(&log, 1, chunk))
    } else {
        (step(&log, layers, batch), step(&log, 1, batch))
    };
    let total = |m: &BTreeMap<String, usize>| m.values().sum::<usize>();
    if chunk > 0 {
        println!("one prompt chunk of {chunk} tokens, {layers} layers: launches by kernel");
    } else {
        println!("one decode step, {layers} layers, batch {batch}: launches by kernel");
    }
    for (name, n) in &many {
        println!("{n:6}  {name}");
    }
    println!("{:6}  in all", total(&many));
    println!(
        "per layer: {:.1} (the step at 1 layer: {})",
        (total(&many) - total(&one)) as f64 / (layers - 1) as f64,
        total(&one)
    );
}
