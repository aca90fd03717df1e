//! The parts of the daemon's configuration file (`medgemmad.toml`) that
//! `medgemmactl` needs: socket, model and audit paths. Read leniently (other
//! keys are the daemon's business; it validates them strictly).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What `medgemmactl` reads from the daemon's configuration.
#[derive(Debug, Default, Deserialize)]
pub struct DaemonConfig {
    /// `[model]`.
    #[serde(default)]
    pub model: ModelPart,
    /// `[server]`.
    #[serde(default)]
    pub server: ServerPart,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditPart,
}

/// `[model]`.
#[derive(Debug, Default, Deserialize)]
pub struct ModelPart {
    /// The model directory or GGUF file.
    pub path: Option<PathBuf>,
    /// The pins written by `setup`.
    pub pins_file: Option<PathBuf>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
pub struct ServerPart {
    /// The admin socket.
    pub admin_socket: Option<PathBuf>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
pub struct AuditPart {
    /// The log directory.
    pub dir: Option<PathBuf>,
    /// The chain key file.
    pub key_file: Option<PathBuf>,
    /// The content key file.
    pub content_key_file: Option<PathBuf>,
    /// The export signing key.
    pub signing_key_file: Option<PathBuf>,
}

/// Default admin socket when the configuration names none.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/medgemma/admin.sock";

impl DaemonConfig {
    /// Reads `path`; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map(Some).map_err(|e| {
                format!(
                    "cannot parse {}: {}",
                    path.display(),
                    e.to_string().trim_end()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Reads `path`, or the defaults when it does not exist.
    pub fn load_or_default(path: &Path) -> Result<Self, String> {
        Ok(Self::load(path)?.unwrap_or_default())
    }
}
