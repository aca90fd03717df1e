//! What each CPU weight mode (`CpuWeights`, the daemon's
//! `engine.cpu_weights`) costs in fidelity on a real model, for a bf16
//! checkpoint: the real Gemma 3 270M GGUF is written out as a bf16
//! safetensors checkpoint (its dequantized values rounded to bf16, in a
//! temporary directory), then loaded as bf16 kept as stored, as Q8_0 made
//! at load, and as f32 (the reference). On the prompts of
//! `tests/fixtures/gemma3_270m_reference.json`: the largest last-position
//! logit difference from the f32 run, and how many of 32 greedy tokens
//! agree with it. Prints numbers, judges nothing.
//!
//! ```text
//! cargo run --release -p medgemma-model --example cpu_weights_fidelity -- [GGUF]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use medgemma_model::backend::{cpu_device, cpu_dtype};
use medgemma_model::burn::tensor::DType;
use medgemma_model::config::{Gemma3Config, LayerType};
use medgemma_model::gemma3::Logits;
use medgemma_model::generate::{Flow, generate};
use medgemma_model::gguf::GgufFile;
use medgemma_model::load::{LoadedModel, load_model_with};
use medgemma_model::sampling::SamplingParams;
use medgemma_model::weights::{CpuWeights, WeightSource};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Writes `cfg` as a flat transformers `config.json` (Gemma3ForCausalLM).
fn config_json(cfg: &Gemma3Config) -> serde_json::Value {
    let kind = |k: &LayerType| match k {
        LayerType::Global => "full_attention",
        LayerType::Local => "sliding_attention",
    };
    serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers(),
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "sliding_window": cfg.sliding_window,
        "layer_types": cfg.layer_types.iter().map(kind).collect::<Vec<_>>(),
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": cfg.rope_global.linear_factor, "rope_theta": cfg.rope_global.theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local.theta},
        },
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": true,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids,
        "pad_token_id": cfg.pad_token_id,
    })
}

/// Every decoder tensor's canonical name, shape and whether it is a norm.
fn tensors(cfg: &Gemma3Config) -> Vec<(String, Vec<usize>, bool)> {
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut t = vec![(
        "embed_tokens.weight".to_owned(),
        vec![cfg.vocab_size, d],
        false,
    )];
    for i in 0..cfg.num_layers() {
        let p = |n: &str| format!("layers.{i}.{n}.weight");
        t.extend([
            (p("input_layernorm"), vec![d], true),
            (p("self_attn.q_proj"), vec![h * hd, d], false),
            (p("self_attn.k_proj"), vec![kv * hd, d], false),
            (p("self_attn.v_proj"), vec![kv * hd, d], false),
            (p("self_attn.o_proj"), vec![d, h * hd], false),
            (p("self_attn.q_norm"), vec![hd], true),
            (p("self_attn.k_norm"), vec![hd], true),
            (p("post_attention_layernorm"), vec![d], true),
            (p("pre_feedforward_layernorm"), vec![d], true),
            (p("mlp.gate_proj"), vec![f, d], false),
            (p("mlp.up_proj"), vec![f, d], false),
            (p("mlp.down_proj"), vec![d, f], false),
            (p("post_feedforward_layernorm"), vec![d], true),
        ]);
    }
    t.push(("norm.weight".to_owned(), vec![d], true));
    t
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let gguf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let assets = std::env::var_os("MEDGEMMA_ASSETS")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache/medgemma-assets"))
                })
                .unwrap_or_default();
            assets.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
        });
    let file = GgufFile::open(&gguf).expect("the GGUF opens");
    let cfg = Gemma3Config::from_gguf(&file, &gguf).expect("its configuration");
    let mut src = WeightSource::from_gguf(&gguf, file);

    // The checkpoint: every tensor dequantized (norms as transformers
    // stores them, the offset from 1), rounded to bf16.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut data: BTreeMap<String, (Vec<u8>, Vec<usize>)> = BTreeMap::new();
    for (name, shape, norm) in tensors(&cfg) {
        let values: Vec<f32> = src
            .load(&name, &shape, DType::F32, norm)
            .expect("the tensor loads")
            .try_into_vec()
            .expect("f32");
        let bytes = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        data.insert(format!("model.{name}"), (bytes, shape));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, (b, s))| {
            (
                n.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).expect("a view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .expect("the checkpoint is written");
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&config_json(&cfg)).expect("json"),
    )
    .expect("config.json is written");
    drop(data);

    let load = |mode| -> LoadedModel {
        load_model_with(dir.path(), None, &cpu_device(), cpu_dtype(), mode)
            .expect("the checkpoint loads")
    };
    let reference_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gemma3_270m_reference.json");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference_path).expect("the fixture")).expect("json");
    let prompts: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .map(|ps| ps.iter().map(|p| u32s(&p["prompt_ids"])).collect())
        .unwrap_or_default();

    let run = |m: &LoadedModel| -> Vec<(Vec<f32>, Vec<u32>)> {
        prompts
            .iter()
            .map(|p| {
                let logits: Vec<f32> = m
                    .model
                    .forward(p, &mut m.model.new_cache(), Logits::Last)
                    .into_data()
                    .try_into_vec()
                    .expect("f32 logits");
                let mut opts = m.default_options(32, SamplingParams::default());
                opts.ignore_eos = true;
                let g = generate(
                    &m.model,
                    &mut m.model.new_cache(),
                    p,
                    &opts,
                    &AtomicBool::new(false),
                    |_| Flow::Continue,
                )
                .expect("generates");
                (logits, g.tokens)
            })
            .collect()
    };
    let reference_runs = run(&load(CpuWeights::F32));
    let mut report = serde_json::Map::new();
    for (label, mode) in [
        ("bf16 as stored", CpuWeights::AsStored),
        ("q8_0", CpuWeights::Q8_0),
    ] {
        let runs = run(&load(mode));
        let mut max_delta = 0.0f32;
        let mut agree = Vec::new();
        for ((l, t), (rl, rt)) in runs.iter().zip(&reference_runs) {
            let d = l
                .iter()
                .zip(rl)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            max_delta = max_delta.max(d);
            agree.push(t.iter().zip(rt).take_while(|(a, b)| a == b).count());
        }
        report.insert(
            label.to_owned(),
            serde_json::json!({
                "max_abs_last_logit_delta_vs_f32": max_delta,
                "leading_greedy_tokens_agreeing_with_f32_of_32": agree,
            }),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "checkpoint": format!("{} dequantized and rounded to bf16", gguf.display()),
            "reference": "the same bf16 checkpoint computed with f32 weights (CpuWeights::F32)",
            "prompts": prompts.len(),
            "modes": report,
        }))
        .unwrap_or_default()
    );
}
