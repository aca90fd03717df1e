//! Validating a model without loading it: `medgemmactl setup` runs every
//! check the loader runs (each decoder tensor present, with the shape the
//! configuration implies, a supported dtype or quantization, its bytes
//! inside the file; nothing left over) in seconds and without the memory.
//!
//! The names and shapes come from the one place that defines them,
//! `Gemma3::build`, driven here by a tensor source that checks instead of
//! reading: no second list of tensors to drift from the loader's.

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};

use crate::backend;
use crate::config::Gemma3Config;
use crate::gemma3::{Gemma3, TensorSource};
use crate::load::{LoadError, parameter_count};
use crate::probe::ModelProbe;
use crate::weights::{WeightSource, WeightsError};

/// What a valid model holds.
#[derive(Debug, Clone)]
pub struct Validated {
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// The configuration read from the model.
    pub config: Gemma3Config,
    /// Decoder tensors checked.
    pub tensors: usize,
    /// Text-decoder parameters.
    pub parameters: u64,
}

/// Checks the weights of the model at `path` (a safetensors directory or a
/// `.gguf` file) against its configuration, as [`crate::load::load_model`]
/// would, without reading tensor data.
///
/// # Errors
/// The loader's errors, naming the file and the tensor.
pub fn validate_weights(path: &Path) -> Result<Validated, LoadError> {
    validate_probed(ModelProbe::open(path)?)
}

/// [`validate_weights`] for a probed model.
pub fn validate_probed(probe: ModelProbe) -> Result<Validated, LoadError> {
    let ModelProbe {
        path,
        format,
        config: cfg,
        gguf,
        ..
    } = probe;
    let mut src = match gguf {
        Some(file) => WeightSource::from_gguf(&path, file),
        None => WeightSource::open_safetensors_dir(&path)?,
    };
    let tensors = check_source(&cfg, &mut src)?;
    Ok(Validated {
        format: format.as_str(),
        parameters: parameter_count(&cfg),
        config: cfg,
        tensors,
    })
}

/// Runs [`Gemma3::build`] over a checking source; returns the tensors seen.
fn check_source(cfg: &Gemma3Config, src: &mut WeightSource) -> Result<usize, WeightsError> {
    let device = backend::cpu_device();
    let mut checker = Checker {
        src,
        device: &device,
        seen: 0,
    };
    // The model built here holds empty placeholders and is dropped at once.
    Gemma3::build(cfg, &mut checker, &device, DType::F32)?;
    let seen = checker.seen;
    src.finish()?;
    Ok(seen)
}

/// A [`TensorSource`] that checks each tensor and hands back an empty
/// placeholder of the right leading size (nothing is read or allocated).
struct Checker<'a> {
    src: &'a mut WeightSource,
    device: &'a Device,
    seen: usize,
}

impl TensorSource for Checker<'_> {
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>, WeightsError> {
        self.src.check(name, &shape)?;
        self.seen += 1;
        Ok(Tensor::<2>::empty([shape[0], 0], (self.device, DType::F32)))
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Tensor<1>, WeightsError> {
        self.src.check(name, &[n])?;
        self.seen += 1;
        Ok(Tensor::<1>::zeros([n], (self.device, DType::F32)))
    }
}
