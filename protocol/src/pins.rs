//! The pins file (`model.pins.json`): the SHA-256 and size of every model
//! file, written by `medgemmactl setup`, compared by `medgemmactl doctor`
//! and by the daemon's status.
//!
//! Owns: the pins format and how a file is hashed. Must never: follow a
//! path it was not given, or hold anything but paths, sizes and digests.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The format tag of a pins file.
pub const FORMAT: &str = "medgemma-pins/1";

/// Why a pins file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    /// The file cannot be read.
    #[error("cannot read the pins file {path}: {source}; run medgemmactl setup")]
    Read {
        /// The pins file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a pins document.
    #[error("the pins file {path} is damaged ({reason}); run medgemmactl setup again")]
    Malformed {
        /// The pins file.
        path: PathBuf,
        /// The parser's explanation.
        reason: String,
    },
}

/// The pins of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// [`FORMAT`].
    pub format: String,
    /// The model path as given to setup (a directory or a .gguf file).
    pub model: PathBuf,
    /// One entry per file.
    pub files: Vec<Pin>,
}

/// One pinned file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// What a cheap comparison of the pins with the files found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinCheck {
    /// The pins file, if one is configured.
    pub file: Option<PathBuf>,
    /// `None` without a pins file.
    pub ok: Option<bool>,
    /// What was compared: "sizes" or "sha256".
    pub checked: Option<String>,
    /// Files pinned.
    pub files: Option<usize>,
    /// The first problem, or why nothing was checked.
    pub detail: Option<String>,
}

impl Pins {
    /// Pins for `files` of `model`.
    pub fn new(model: PathBuf, files: Vec<Pin>) -> Self {
        Self {
            format: FORMAT.to_owned(),
            model,
            files,
        }
    }

    /// Reads a pins file.
    pub fn read(path: &Path) -> Result<Self, PinsError> {
        let bytes = std::fs::read(path).map_err(|source| PinsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let pins: Self = serde_json::from_slice(&bytes).map_err(|e| PinsError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if pins.format != FORMAT {
            return Err(PinsError::Malformed {
                path: path.to_owned(),
                reason: format!("format {:?}, expected {FORMAT:?}", pins.format),
            });
        }
        Ok(pins)
    }

    /// The document as written to disk.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The pin of `path`, if it is pinned.
    pub fn pin(&self, path: &Path) -> Option<&Pin> {
        self.files.iter().find(|p| p.path == path)
    }

    /// Compares the pinned sizes with the files now (cheap; `doctor --deep`
    /// and the loader compare digests).
    pub fn check_sizes(pins_file: Option<&Path>) -> PinCheck {
        let Some(file) = pins_file else {
            return PinCheck {
                file: None,
                ok: None,
                checked: None,
                files: None,
                detail: Some("no model.pins_file configured; run medgemmactl setup".to_owned()),
            };
        };
        let failed = |detail: String| PinCheck {
            file: Some(file.to_owned()),
            ok: Some(false),
            checked: Some("sizes".to_owned()),
            files: None,
            detail: Some(detail),
        };
        let pins = match Self::read(file) {
            Ok(p) => p,
            Err(e) => return failed(e.to_string()),
        };
        for p in &pins.files {
            let now = std::fs::metadata(&p.path).ok().map(|m| m.len());
            if now != Some(p.size) {
                return failed(format!(
                    "{} is missing or its size differs from the pin",
                    p.path.display()
                ));
            }
        }
        PinCheck {
            file: Some(file.to_owned()),
            ok: Some(true),
            checked: Some("sizes".to_owned()),
            files: Some(pins.files.len()),
            detail: None,
        }
    }
}

/// SHA-256 and size of a file; `progress(done, total)` is called after every
/// GiB read (hashing the 4B model takes a while).
pub fn hash_file(path: &Path, mut progress: impl FnMut(u64, u64)) -> std::io::Result<Pin> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let mut next_report: u64 = 1 << 30;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        done += n as u64;
        if done >= next_report {
            progress(done, size);
            next_report += 1 << 30;
        }
    }
    Ok(Pin {
        path: path.to_owned(),
        size: done,
        sha256: hex::encode(ctx.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_sizes_are_compared() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF and some bytes").unwrap();
        let pin = hash_file(&model, |_, _| {}).unwrap();
        assert_eq!(pin.size, 19);
        assert_eq!(
            pin.sha256,
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                b"GGUF and some bytes"
            ))
        );
        let pins = Pins::new(model.clone(), vec![pin]);
        let file = dir.path().join("model.pins.json");
        std::fs::write(&file, pins.to_json()).unwrap();
        assert_eq!(Pins::read(&file).unwrap(), pins);
        let ok = Pins::check_sizes(Some(&file));
        assert_eq!((ok.ok, ok.files), (Some(true), Some(1)));
        std::fs::write(&model, b"GGUF").unwrap();
        let bad = Pins::check_sizes(Some(&file));
        assert_eq!(bad.ok, Some(false));
        assert!(bad.detail.unwrap().contains("size differs"));
        assert_eq!(Pins::check_sizes(None).ok, None);
        std::fs::write(&file, b"{}").unwrap();
        let damaged = Pins::check_sizes(Some(&file));
        assert_eq!(damaged.ok, Some(false));
        assert!(damaged.detail.unwrap().contains("damaged"));
    }
}
