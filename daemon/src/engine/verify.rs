//! The model's files checked against their pins while the model loads: a
//! thread hashes every file (SHA-256, in parallel with the loader, which
//! reads the same bytes), compares each digest with the pin `medgemmactl
//! setup` wrote, and derives the model's fingerprint for the audit log from
//! the digests themselves, so the log names the weights that answered, not a
//! file about them.
//!
//! Owns: the weights' identity. Must never: read a file the configuration
//! does not name (the pinned files, or the model's own files without pins).

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use medgemma_model::probe::ModelProbe;
use medgemma_protocol::pins::{Pin, Pins, hash_file};

/// Why the files could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// A model file could not be read.
    #[error("cannot read the model file {path} to check it: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The pins file is configured but unusable.
    #[error("{0}")]
    Pins(String),
    /// The model's files could not be listed.
    #[error("cannot list the model's files: {0}")]
    List(String),
    /// The hashing thread stopped.
    #[error("the thread checking the model's files stopped; this is a bug, please report it")]
    Stopped,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsCheck {
    /// SHA-256 over the files' names and digests (hex): the model's identity.
    pub fingerprint: String,
    /// `Some(true)`: every pinned file matches; `Some(false)`: one does not;
    /// `None`: no pins configured.
    pub verified: Option<bool>,
    /// Files hashed.
    pub files: usize,
    /// The first mismatch, or what was checked.
    pub detail: String,
}

/// The check, running.
#[derive(Debug)]
pub struct Verifying {
    thread: Option<JoinHandle<Result<WeightsCheck, VerifyError>>>,
    result: Option<Result<WeightsCheck, VerifyError>>,
}

impl Verifying {
    /// Starts hashing the files of the model at `model` (the pinned ones when
    /// `pins_file` is given).
    pub fn start(model: &Path, pins_file: Option<&Path>) -> Self {
        let model = model.to_owned();
        let pins_file = pins_file.map(Path::to_owned);
        let spawned = std::thread::Builder::new()
            .name("medgemmad-verify".to_owned())
            .spawn(move || check(&model, pins_file.as_deref()));
        match spawned {
            Ok(thread) => Self {
                thread: Some(thread),
                result: None,
            },
            Err(_) => Self {
                thread: None,
                result: Some(Err(VerifyError::Stopped)),
            },
        }
    }

    /// Waits for the check (once; later calls return the same result).
    pub fn finish(&mut self) -> Result<WeightsCheck, VerifyError> {
        if let Some(thread) = self.thread.take() {
            self.result = Some(thread.join().unwrap_or(Err(VerifyError::Stopped)));
        }
        self.result.clone().unwrap_or(Err(VerifyError::Stopped))
    }
}

/// Hashes the files and compares them with the pins.
pub fn check(model: &Path, pins_file: Option<&Path>) -> Result<WeightsCheck, VerifyError> {
    let pins = pins_file
        .map(Pins::read)
        .transpose()
        .map_err(|e| VerifyError::Pins(e.to_string()))?;
    let files: Vec<PathBuf> = match &pins {
        Some(p) => p.files.iter().map(|f| f.path.clone()).collect(),
        None => {
            ModelProbe::open(model)
                .map_err(|e| VerifyError::List(e.to_string()))?
                .files
        }
    };
    let mut digests: Vec<Pin> = Vec::with_capacity(files.len());
    for f in &files {
        let pin = hash_file(f, |_, _| {}).map_err(|e| VerifyError::Read {
            path: f.clone(),
            reason: e.to_string(),
        })?;
        digests.push(pin);
    }
    let mismatch = pins.as_ref().and_then(|p| {
        p.files.iter().find_map(|pin| {
            let now = digests.iter().find(|d| d.path == pin.path)?;
            if now.size != pin.size {
                Some(format!(
                    "{} has {} bytes but was pinned with {}: it is half copied or was replaced",
                    pin.path.display(),
                    now.size,
                    pin.size
                ))
            } else if now.sha256 != pin.sha256 {
                Some(format!(
                    "{} does not match its pinned SHA-256: the file was altered",
                    pin.path.display()
                ))
            } else {
                None
            }
        })
    });
    let verified = pins.as_ref().map(|_| mismatch.is_none());
    let detail = match (&mismatch, &pins) {
        (Some(m), _) => format!(
            "{m}; copy the model again from the original medium, or run medgemmactl setup to pin a new model on purpose"
        ),
        (None, Some(_)) => format!("{} files match their pins (SHA-256)", digests.len()),
        (None, None) => format!(
            "{} files hashed; no model.pins_file configured (medgemmactl setup writes one)",
            digests.len()
        ),
    };
    Ok(WeightsCheck {
        fingerprint: fingerprint(&digests),
        verified,
        files: digests.len(),
        detail,
    })
}

/// SHA-256 over `name<TAB>sha256<LF>` of each file, sorted by file name: the
/// same weights give the same fingerprint wherever they were copied to.
pub fn fingerprint(digests: &[Pin]) -> String {
    let mut lines: Vec<String> = digests
        .iter()
        .map(|d| {
            let name = d
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name}\t{}\n", d.sha256)
        })
        .collect();
    lines.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"medgemma-weights/1\n");
    for l in &lines {
        ctx.update(l.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_model_verifies_and_an_altered_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF weights").unwrap();
        let pins_path = dir.path().join("pins.json");
        let pin = hash_file(&model, |_, _| {}).unwrap();
        std::fs::write(
            &pins_path,
            Pins::new(model.clone(), vec![pin.clone()]).to_json(),
        )
        .unwrap();
        let ok = check(&model, Some(&pins_path)).unwrap();
        assert_eq!(ok.verified, Some(true), "{}", ok.detail);
        assert_eq!(ok.fingerprint, fingerprint(&[pin]));
        // Without pins: the model's own files (as the probe lists them),
        // and the same weights elsewhere give the same fingerprint.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny_a");
        let copies: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut found = Vec::new();
        for c in &copies {
            for e in std::fs::read_dir(&fixture).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), c.path().join(e.file_name())).unwrap();
            }
            let unpinned = check(c.path(), None).unwrap();
            assert_eq!(unpinned.verified, None);
            assert!(
                unpinned.detail.contains("no model.pins_file"),
                "{}",
                unpinned.detail
            );
            found.push(unpinned);
        }
        assert_eq!(
            found[0].fingerprint, found[1].fingerprint,
            "the fingerprint names the weights, not their folder"
        );
        assert_eq!(found[0].files, std::fs::read_dir(&fixture).unwrap().count());
        std::fs::write(&model, b"GGUF weighta").unwrap();
        let bad = check(&model, Some(&pins_path)).unwrap();
        assert_eq!(bad.verified, Some(false));
        assert!(bad.detail.contains("was altered"), "{}", bad.detail);
        assert_ne!(bad.fingerprint, ok.fingerprint);
        std::fs::write(&model, b"GGUF").unwrap();
        let short = check(&model, Some(&pins_path)).unwrap();
        assert!(short.detail.contains("half copied"), "{}", short.detail);
    }
}
