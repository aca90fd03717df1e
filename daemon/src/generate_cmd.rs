//! `medgemmad generate`: one prompt through the engine, for admins and tests.
//!
//! Prints the answer (streamed) or, with `--json`, one object with ids, text,
//! reasoning and speeds. `--image FILE` (repeatable; PNG, JPEG or DICOM) puts
//! images before the question, encoded by the model's vision tower. Errors
//! never repeat the prompt text or describe an image's content.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::Args;
use medgemma_model::chat::{self, Message, MultimodalMessage, Part, Role};
use medgemma_model::gemma3::Logits;
use medgemma_model::generate::{self, Flow, PREFILL_CHUNK};
use medgemma_model::image::{self, ImageError, Limits};
use medgemma_model::load::{self, LoadError};
use medgemma_model::sampling::SamplingParams;
use medgemma_model::thinking::ThinkingParser;
use medgemma_model::vision::{ImagePrefill, VisionError, VisionTower};
use medgemma_model::{backend, tokenizer::TokenizerError};

/// Arguments of `medgemmad generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model directory (config.json + safetensors) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// tokenizer.json to use instead of the one found with the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompt text (a user message, unless --raw).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, fed exactly as given (implies --raw).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Skip the chat template: encode --prompt as the tokenizer's configuration says.
    #[arg(long)]
    raw: bool,
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k when sampling.
    #[arg(long, default_value_t = 64)]
    top_k: usize,
    /// Top-p when sampling.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed when sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating through end tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// With --json: include the full logits at the last prompt position.
    #[arg(long, requires = "json")]
    logits: bool,
    /// An image (PNG, JPEG or single-frame DICOM) placed before the question;
    /// repeat for several. Needs a model directory with a vision tower. With
    /// --prompt-ids the ids must already hold one image block per image.
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    image: Vec<PathBuf>,
}

/// Why `generate` failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateCmdError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Text given but no tokenizer.
    #[error(
        "this model has no tokenizer: pass --tokenizer PATH/tokenizer.json, or give the prompt as --prompt-ids"
    )]
    NoTokenizer,
    /// Tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Chat template refused the conversation.
    #[error(transparent)]
    Chat(#[from] chat::ChatError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] generate::GenerateError),
    /// Output failed.
    #[error("cannot write the answer: {0}")]
    Output(std::io::Error),
    /// An image file cannot be read.
    #[error("cannot read the image {path}: {source}")]
    ImageFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An image cannot be decoded.
    #[error("the image {path} cannot be used: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why (sizes and formats, never content).
        source: ImageError,
    },
    /// The vision tower failed or is missing.
    #[error(transparent)]
    Vision(#[from] VisionError),
    /// Images were given for a model without a vision tower.
    #[error(
        "--image needs a model directory whose config.json has a vision_config (MedGemma 1.5 4B IT has one); a .gguf file holds the text decoder only"
    )]
    NoVision,
}

impl GenerateCmdError {
    /// Exit code: 2 for bad input or files, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Output(_) => 1,
            _ => 2,
        }
    }
}

/// Runs the command.
pub fn run(args: GenerateArgs) -> Result<(), GenerateCmdError> {
    // Said before loading anything: a single file (GGUF) has no vision tower.
    if !args.image.is_empty() && !args.model.is_dir() {
        return Err(GenerateCmdError::NoVision);
    }
    let device = backend::cpu_device();
    let loaded = load::load_model(
        &args.model,
        args.tokenizer.as_deref(),
        &device,
        backend::cpu_dtype(),
    )?;
    let tok = loaded.tokenizer.as_ref();

    let tower = if args.image.is_empty() {
        None
    } else if args.model.is_dir() {
        Some(VisionTower::load(
            &args.model,
            &device,
            backend::cpu_dtype(),
        )?)
    } else {
        return Err(GenerateCmdError::NoVision);
    };
    let pixels = match &tower {
        Some(t) => args
            .image
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path).map_err(|source| GenerateCmdError::ImageFile {
                    path: path.clone(),
                    source,
                })?;
                let decoded = image::decode(&bytes, &Limits::default()).map_err(|source| {
                    GenerateCmdError::Image {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok(image::to_pixel_values(
                    &decoded.image,
                    t.config().image_size,
                ))
            })
            .collect::<Result<Vec<_>, GenerateCmdError>>()?,
        None => Vec::new(),
    };

    let prompt_ids = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) if tower.is_some() => {
            let tok = tok.ok_or(GenerateCmdError::NoTokenizer)?;
            let tokens = tower
                .as_ref()
                .map(|t| t.config().image_tokens())
                .ok_or(GenerateCmdError::NoVision)?;
            let mut parts: Vec<Part> = pixels.iter().map(|_| Part::Image).collect();
            parts.push(Part::Text(text.clone()));
            let msgs = [MultimodalMessage {
                role: Role::User,
                parts,
            }];
            chat::encode_chat_multimodal(tok, &msgs, &tokens, true)?
        }
        (None, Some(text)) => {
            let tok = tok.ok_or(GenerateCmdError::NoTokenizer)?;
            if args.raw {
                tok.encode_raw(text)?
            } else {
                let msgs = [Message {
                    role: Role::User,
                    content: text.clone(),
                }];
                chat::encode_chat(tok, &msgs, true)?
            }
        }
        (None, None) => unreachable!("clap requires --prompt or --prompt-ids"),
    };

    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut opts = loaded.default_options(args.max_new_tokens, sampling);
    opts.ignore_eos = args.ignore_eos;

    let special = tok.map(|t| *t.special());
    let mut parser = special
        .as_ref()
        .map(|s| ThinkingParser::new(s.think_start, s.think_end));
    let mut decoder = tok.map(|t| t.stream_decoder());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let stop_ids = opts.stop_ids.clone();
    let mut cache = loaded.model.new_cache();
    // With images: the prompt runs through the image prefill (bidirectional
    // inside each image block); generation continues from its last token.
    let generated_from: Vec<u32> = match &tower {
        Some(t) => {
            let rows = t.encode(&pixels)?;
            let mut pre =
                ImagePrefill::new(prompt_ids.clone(), rows, t.config().image_token_index)?;
            pre.run(&loaded.model, &mut cache, PREFILL_CHUNK);
            pre.last_token().into_iter().collect()
        }
        None => prompt_ids.clone(),
    };
    let image_cache = tower.as_ref().map(|_| cache.clone());
    let cancel = AtomicBool::new(false);
    let gen_result = generate::generate(
        &loaded.model,
        &mut cache,
        &generated_from,
        &opts,
        &cancel,
        |id| {
            let (Some(dec), Some(parser)) = (decoder.as_mut(), parser.as_mut()) else {
                return Flow::Continue;
            };
            if stop_ids.contains(&id) {
                return Flow::Continue;
            }
            let delta = dec.push(id).unwrap_or_default();
            let pieces = parser.push(id, &delta);
            if !args.json {
                for (_, text) in pieces {
                    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                        write_err = Some(e);
                        return Flow::Stop;
                    }
                }
            }
            Flow::Continue
        },
    )?;
    if let Some(e) = write_err {
        return Err(GenerateCmdError::Output(e));
    }
    if let Some(dec) = decoder.as_mut() {
        let rest = dec.flush();
        if let Some(p) = parser.as_mut() {
            let pieces = p.push_text(&rest);
            if !args.json {
                for (_, text) in pieces {
                    out.write_all(text.as_bytes())
                        .map_err(GenerateCmdError::Output)?;
                }
            }
        }
    }
    // After `generate`, which refuses ids outside the vocabulary (the
    // embedding lookup would panic on them) and empty or too long prompts.
    let last_logits = if args.logits {
        let l = match image_cache {
            // The image prompt's cache stands before its last token.
            Some(mut cache) => loaded
                .model
                .forward(&generated_from, &mut cache, Logits::Last),
            None => {
                let mut cache = loaded.model.new_cache();
                loaded.model.forward(&prompt_ids, &mut cache, Logits::Last)
            }
        };
        Some(l.into_data().try_into_vec::<f32>().unwrap_or_default())
    } else {
        None
    };
    let parsed = parser.map(|p| p.finish());
    if !args.json && decoder.is_none() {
        // No tokenizer, so no text: the ids, in the form --prompt-ids takes.
        let ids: Vec<String> = gen_result.tokens.iter().map(u32::to_string).collect();
        out.write_all(ids.join(",").as_bytes())
            .map_err(GenerateCmdError::Output)?;
    }
    if args.json {
        let mut obj = serde_json::json!({
            "prompt_ids": prompt_ids,
            "images": pixels.len(),
            "generated_ids": gen_result.tokens,
            "finish_reason": gen_result.finish,
            "prefill_tokens_per_s": gen_result.prefill_tokens_per_s(),
            "decode_tokens_per_s": gen_result.decode_tokens_per_s(),
            "load_seconds": loaded.load_time.as_secs_f64(),
        });
        if let Some(p) = &parsed {
            obj["text"] = serde_json::Value::String(p.answer.clone());
            obj["reasoning"] = p
                .reasoning
                .clone()
                .map_or(serde_json::Value::Null, serde_json::Value::String);
            obj["thinking_unterminated"] = serde_json::Value::Bool(p.thinking_unterminated);
        }
        if let Some(l) = last_logits {
            obj["last_logits"] = serde_json::json!(l);
        }
        serde_json::to_writer(&mut out, &obj).map_err(|e| GenerateCmdError::Output(e.into()))?;
    }
    writeln!(out).map_err(GenerateCmdError::Output)?;
    Ok(())
}
