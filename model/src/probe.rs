//! "What model is at this path": the one place that decides a path's format
//! (a Hugging Face directory or a `.gguf` file), reads its configuration,
//! lists its files and their size, and finds its tokenizer, without reading
//! any tensor data.
//!
//! The loader ([`crate::load`]), the validator ([`crate::validate`]), the
//! daemon's GPU budget and configuration checks and `medgemmactl` (setup,
//! gpu, doctor) all start from a [`ModelProbe`], so they cannot disagree
//! about what a path holds; a GGUF header is parsed once and handed on.
//!
//! ```no_run
//! use medgemma_model::probe::ModelProbe;
//! let probe = ModelProbe::open(std::path::Path::new("/srv/medgemma/gemma-3-270m.gguf"))?;
//! println!("{} layers, {} files, {} bytes", probe.config.num_layers(), probe.files.len(), probe.bytes);
//! # Ok::<(), medgemma_model::probe::ProbeError>(())
//! ```
//!
//! Owns: the shape of a model on disk. Must never: read tensor data, or
//! open anything but the given path and the files inside a given directory.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Gemma3Config};
use crate::gguf::{GgufError, GgufFile};

/// Why a path does not hold a model.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The path is neither a directory nor a `.gguf` file.
    #[error(
        "model path {path} is neither a model directory nor a .gguf file; give the folder holding config.json or the .gguf file"
    )]
    NotAModel {
        /// The path.
        path: PathBuf,
    },
    /// A model directory or file cannot be listed or measured.
    #[error("cannot read the model at {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration (config.json or GGUF metadata) is not Gemma 3's.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The GGUF header is damaged.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// How a model is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face directory: config.json + safetensors (single or sharded).
    Safetensors,
    /// One GGUF file: configuration, weights and tokenizer in one.
    Gguf,
}

impl ModelFormat {
    /// "safetensors" or "gguf".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
        }
    }
}

/// What is at a model path.
#[derive(Debug)]
pub struct ModelProbe {
    /// The path as given.
    pub path: PathBuf,
    /// How it is stored.
    pub format: ModelFormat,
    /// The Gemma 3 configuration (config.json, or the GGUF metadata).
    pub config: Gemma3Config,
    /// The files that make up the model, sorted: a directory's regular,
    /// non-hidden files, or the one GGUF file.
    pub files: Vec<PathBuf>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// `tokenizer.json` beside a directory model's weights, if present (a
    /// GGUF file carries its tokenizer inside).
    pub tokenizer: Option<PathBuf>,
    /// The parsed GGUF header, handed to the loader.
    pub(crate) gguf: Option<GgufFile>,
}

impl ModelProbe {
    /// Decides the format, reads the configuration and lists the files.
    ///
    /// # Errors
    /// [`ProbeError::NotAModel`] when the path is neither a directory nor a
    /// `.gguf` file; the configuration's or the GGUF header's errors.
    pub fn open(path: &Path) -> Result<Self, ProbeError> {
        let io = |source| ProbeError::Io {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            let config = Gemma3Config::from_file(&path.join("config.json"))?;
            let files = directory_files(path).map_err(io)?;
            let bytes = total_size(&files).map_err(io)?;
            let tokenizer = Some(path.join("tokenizer.json")).filter(|t| t.is_file());
            Ok(Self {
                path: path.to_owned(),
                format: ModelFormat::Safetensors,
                config,
                files,
                bytes,
                tokenizer,
                gguf: None,
            })
        } else if path.is_file() && is_gguf(path) {
            let file = GgufFile::open(path)?;
            let config = Gemma3Config::from_gguf(&file, path)?;
            let files = vec![path.to_owned()];
            let bytes = total_size(&files).map_err(io)?;
            Ok(Self {
                path: path.to_owned(),
                format: ModelFormat::Gguf,
                config,
                files,
                bytes,
                tokenizer: None,
                gguf: Some(file),
            })
        } else {
            Err(ProbeError::NotAModel {
                path: path.to_owned(),
            })
        }
    }
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A directory's regular, non-hidden files, sorted.
fn directory_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if e.file_type()?.is_file() && !hidden {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

fn total_size(files: &[PathBuf]) -> std::io::Result<u64> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    #[test]
    fn a_directory_is_listed_with_its_config_and_tokenizer() {
        let dir = fixture("tiny_a");
        let p = ModelProbe::open(&dir).unwrap();
        assert_eq!(p.format, ModelFormat::Safetensors);
        assert!(p.files.iter().any(|f| f.ends_with("config.json")));
        assert!(p.files.windows(2).all(|w| w[0] < w[1]), "sorted");
        let sum: u64 = p
            .files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(p.bytes, sum);
        assert_eq!(p.config.num_layers(), p.config.layer_types.len());
    }

    #[test]
    fn anything_else_is_not_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, b"hello").unwrap();
        for p in [txt, dir.path().join("absent.gguf")] {
            match ModelProbe::open(&p) {
                Err(ProbeError::NotAModel { path }) => assert_eq!(path, p),
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        // A directory without config.json names the missing file.
        let err = ModelProbe::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
