//! The Gemma 3 / MedGemma inference engine.
//!
//! Owns: model configuration, weight loading (safetensors and GGUF), the
//! tokenizer, the chat template and thinking-trace parser, the Burn model and
//! generation. Must never: touch the network, speak HTTP, or know about the
//! sandbox; it opens only the paths it is given and never logs text.
//!
//! ```no_run
//! use medgemma_model::{load, generate, sampling::SamplingParams};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = medgemma_model::backend::cpu_device();
//! let m = load::load_model(std::path::Path::new("gemma-3-270m.gguf"), None, &device, burn::tensor::DType::F32)?;
//! let tok = m.tokenizer.as_ref().expect("GGUF carries its tokenizer");
//! let prompt = tok.encode_raw("The capital of France is")?;
//! let mut cache = m.model.new_cache();
//! let opts = m.default_options(16, SamplingParams::default());
//! let out = generate::generate(&m.model, &mut cache, &prompt, &opts, &Default::default(), |_| generate::Flow::Continue)?;
//! println!("{}", tok.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

pub mod backend;
pub mod budget;
pub mod chat;
pub mod config;
pub mod cpu;
#[cfg(feature = "kernels")]
pub mod decode_graph;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod image;
#[cfg(feature = "kernels")]
pub mod kernels;
pub mod kv_cache;
mod linear;
pub mod load;
mod mmap;
pub mod probe;
pub mod quant;
pub mod random;
mod routines;
pub mod sampling;
pub mod thinking;
pub mod tokenizer;
pub mod validate;
pub mod vision;
pub mod weights;

pub use burn;
pub use linear::{ProductRoute, ProductTiming, tuning_summary};
pub use routines::{ChunkTiming, MatmulRoutine, RoutineTiming, chunk_tuning_summary};
