//! The daemon's configuration as `medgemmactl` reads it: the very types the
//! daemon reads (`medgemma_protocol::config`, main file and drop-ins),
//! strictly, with the package's paths where there is no file yet.
//!
//! Owns: where `medgemmactl` finds the daemon's paths. Must never: keep a
//! second copy of a key, a default or a path.

use std::path::{Path, PathBuf};

use medgemma_protocol::config::{AuditSection, AuthSection, Config, ConfigError};
use medgemma_protocol::paths;

/// The configuration, or its absence.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The parsed configuration (normalised, not checked); `None` when the
    /// main file does not exist yet (before `setup`).
    pub config: Option<Config>,
}

impl DaemonConfig {
    /// Reads `path` and its drop-ins; a missing main file is not an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Ok(Self { config: None });
        }
        let mut config = Config::load(path)?.config;
        config.normalize();
        Ok(Self {
            config: Some(config),
        })
    }

    /// The admin socket: `server.admin_socket`, else the package's.
    pub fn admin_socket(&self) -> PathBuf {
        self.config
            .as_ref()
            .and_then(|c| c.server.admin_socket.clone())
            .unwrap_or_else(|| PathBuf::from(paths::ADMIN_SOCKET))
    }

    /// `[audit]`, else the defaults (the package's paths).
    pub fn audit(&self) -> AuditSection {
        self.config
            .as_ref()
            .map(|c| c.audit.clone())
            .unwrap_or_default()
    }

    /// `[auth]`, else the defaults (the package's paths).
    pub fn auth(&self) -> AuthSection {
        self.config
            .as_ref()
            .map(|c| c.auth.clone())
            .unwrap_or_default()
    }

    /// `answers.terms_dir`, else the package's.
    pub fn terms_dir(&self) -> PathBuf {
        self.config
            .as_ref()
            .and_then(|c| c.answers.terms_dir.clone())
            .unwrap_or_else(|| PathBuf::from(paths::TERMS_DIR))
    }

    /// `model.path`, if configured.
    pub fn model_path(&self) -> Option<&Path> {
        self.config.as_ref().map(|c| c.model.path.as_path())
    }

    /// `model.pins_file`, if configured.
    pub fn pins_file(&self) -> Option<&Path> {
        self.config
            .as_ref()
            .and_then(|c| c.model.pins_file.as_deref())
    }

    /// `engine.context_length`, else its default.
    pub fn context_length(&self) -> usize {
        self.config
            .as_ref()
            .map_or_else(medgemma_protocol::config::defaults::context_length, |c| {
                c.engine.context_length
            })
    }
}
