//! The `medgemmad serve` configuration file (TOML): parsing, validation and
//! resolution into the [`Settings`] the server runs with.
//!
//! Two stages, as ripgrep handles its arguments: [`Config::parse`] turns text
//! into typed sections without touching the file system (unknown keys are
//! refused, so a typo never silently falls back to a default), then
//! [`Config::resolve`] checks every value and every path it names and reads
//! the system prompt. Every failure is a [`ConfigError`] naming the key
//! (`engine.queue_length`) and saying what to write instead, and it happens
//! before anything starts. `packaging/medgemmad.example.toml` documents every
//! key; keep the two in step.
//!
//! Owns: the meaning and the limits of every setting. Must never: open a
//! model, bind a socket or start a thread (callers do, once this succeeds).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration cannot be used. Messages name the file and the key;
/// they carry configuration values (paths, numbers), never request text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or missing, or a value has the wrong type.
    /// The parser's message names the key and shows the line.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (key, line and column).
        message: String,
    },
    /// A value is out of range or names a path that cannot be used.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `engine.queue_length`.
        key: &'static str,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// The whole file, as written. See `packaging/medgemmad.example.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to load and how to present it.
    pub model: ModelSection,
    /// How the engine runs.
    #[serde(default)]
    pub engine: EngineSection,
    /// Sockets and web safety.
    pub server: ServerSection,
    /// The audit log.
    pub audit: AuditSection,
    /// The kernel sandbox (`medgemma-sandbox`).
    #[serde(default)]
    pub sandbox: SandboxSection,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model directory (config.json + safetensors) or a `.gguf` file.
    pub path: PathBuf,
    /// A `tokenizer.json` overriding the one found with the model.
    #[serde(default)]
    pub tokenizer_path: Option<PathBuf>,
    /// The name shown to clinicians, e.g. "MedGemma 1.5 4B".
    pub label: String,
    /// `true` for a small demo model that is not a medical model: the UI says so.
    /// Required, so that nobody serves a demo model without the warning by omission.
    pub demo: bool,
    /// A UTF-8 text file whose content becomes the system message of every conversation.
    #[serde(default)]
    pub system_prompt_file: Option<PathBuf>,
    /// The SHA-256 pins of the model files, written by `medgemmactl setup`;
    /// its digest is the model fingerprint in the audit log.
    #[serde(default)]
    pub pins_file: Option<PathBuf>,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Where the model runs.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Which GPU, when the backend is CUDA: an ordinal as `nvidia-smi`
    /// numbers them ("0") or a GPU UUID ("GPU-…", stable across reboots and
    /// slot changes). Default: GPU 0.
    #[serde(default)]
    pub device: Option<String>,
    /// Context length in tokens (prompt + answer), capped at the model's maximum.
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    /// Generations running at once, sharing each decode step (continuous
    /// batching); each holds a KV cache for `context_length`.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_generations: usize,
    /// Requests waiting for the engine beyond the running ones; more are answered 503.
    #[serde(default = "default_queue_length")]
    pub queue_length: usize,
    /// Upper bound (and default) for the tokens one answer may generate.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            backend: BackendChoice::default(),
            device: None,
            context_length: default_context_length(),
            max_concurrent_generations: default_max_concurrent(),
            queue_length: default_queue_length(),
            max_new_tokens: default_max_new_tokens(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The Unix socket the web UI and API are served on (unless systemd passes one).
    pub ui_socket: PathBuf,
    /// The admin socket for `medgemmactl status` (mode 0660; peers are
    /// authorized by SO_PEERCRED: root or `admin_group`). Not opened when absent.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// The group (name or numeric gid) allowed on the admin socket besides root.
    #[serde(default)]
    pub admin_group: Option<String>,
    /// The loopback port the browser uses (the `Host` header must carry it).
    #[serde(default = "default_listen_port")]
    pub listen_port: u16,
    /// Extra host names accepted in the `Host` header besides localhost,
    /// 127.0.0.1 and [::1] (bare names, no port, no scheme).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Seconds after its last turn before a conversation is forgotten.
    #[serde(default = "default_idle_timeout")]
    pub session_idle_timeout_secs: u64,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Directory of the tamper-evident audit log (must exist).
    pub dir: PathBuf,
    /// The evolving chain key (made by `medgemmactl setup`); the daemon
    /// refuses to start without it. Keep it in its own directory (mode 0700).
    #[serde(default = "default_audit_key_file")]
    pub key_file: PathBuf,
    /// The content key: HMACs of questions and answers are keyed with it.
    #[serde(default = "default_content_key_file")]
    pub content_key_file: PathBuf,
    /// The Ed25519 export signing key (PKCS#8). Read only by
    /// `medgemmactl audit export`; the daemon never opens it.
    #[serde(default)]
    #[allow(dead_code)] // accepted here so one file configures both programs
    pub signing_key_file: Option<PathBuf>,
}

fn default_audit_key_file() -> PathBuf {
    PathBuf::from("/var/lib/medgemma/audit-key/current")
}
fn default_content_key_file() -> PathBuf {
    PathBuf::from("/var/lib/medgemma/audit-key/content")
}

/// `[sandbox]`: who the daemon runs as and what else it may write. The rest
/// of the sandbox (Landlock paths, seccomp roles) is derived from the other
/// sections, so it cannot drift from them (`serve_cmd::landlock_policy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// The unprivileged user the daemon drops to when started as root.
    #[serde(default = "default_sandbox_user")]
    pub user: String,
    /// A writable state directory (read-write under Landlock). Optional.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// A writable cache directory (read-write under Landlock; the CUDA
    /// backend puts its JIT and autotune caches here). Optional.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            user: default_sandbox_user(),
            state_dir: None,
            cache_dir: None,
        }
    }
}

fn default_sandbox_user() -> String {
    "medgemma".to_owned()
}

/// A validated `engine.device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelector {
    /// An ordinal in PCI bus order (as `nvidia-smi` and NVML number GPUs;
    /// the daemon sets `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA agrees).
    Index(u32),
    /// A GPU UUID as `nvidia-smi -L` prints it, lower-cased.
    Uuid(String),
}

impl std::fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(i) => write!(f, "GPU {i}"),
            Self::Uuid(u) => write!(f, "GPU {u}"),
        }
    }
}

impl GpuSelector {
    /// Parses an `engine.device` value: "0".."63" or
    /// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex digits).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        const KEY: &str = "engine.device";
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u32>() {
                Ok(i) if i <= limits::MAX_GPU_INDEX => Ok(Self::Index(i)),
                _ => Err(ConfigError::invalid(
                    KEY,
                    format!(
                        "{t:?} is not a GPU number between 0 and {}; `nvidia-smi -L` lists them",
                        limits::MAX_GPU_INDEX
                    ),
                )),
            };
        }
        let lower = t.to_ascii_lowercase();
        if let Some(hex) = lower.strip_prefix("gpu-") {
            let groups: Vec<&str> = hex.split('-').collect();
            let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && groups
                    .iter()
                    .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
            if shape_ok {
                return Ok(Self::Uuid(format!("GPU-{hex}")));
            }
        }
        if lower.starts_with("mig-") {
            return Err(ConfigError::invalid(
                KEY,
                "MIG instances are not supported; give the whole GPU's number or its GPU-… UUID",
            ));
        }
        Err(ConfigError::invalid(
            KEY,
            format!(
                "{t:?} is neither a GPU number (\"0\") nor a GPU UUID (\"GPU-\" and 32 hex digits as `nvidia-smi -L` prints it)"
            ),
        ))
    }
}

/// The `engine.backend` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when this build and the machine have it, else the CPU (the reason is reported).
    #[default]
    Auto,
    /// NVIDIA GPU; fails if this build has no CUDA support.
    Cuda,
    /// Burn's pure-Rust CPU backend.
    Cpu,
    /// The scripted test double (debug builds with the `test-engine` feature only).
    Scripted,
}

fn default_context_length() -> usize {
    8192
}
fn default_max_concurrent() -> usize {
    1
}
fn default_queue_length() -> usize {
    8
}
fn default_max_new_tokens() -> usize {
    1024
}
fn default_listen_port() -> u16 {
    6006
}
fn default_idle_timeout() -> u64 {
    30 * 60
}

/// Limits on values, with the reason for each.
mod limits {
    /// Below this a chat template plus one sentence does not fit.
    pub const MIN_CONTEXT: usize = 32;
    /// Gemma 3 4B's maximum position (131 072, spec model.md §1).
    pub const MAX_CONTEXT: usize = 131_072;
    /// A queue longer than this only makes clinicians wait minutes for a 503.
    pub const MAX_QUEUE: usize = 256;
    /// Decode batches beyond this stop gaining throughput on one GPU (the
    /// step turns compute-bound) while each sequence still holds a KV cache.
    pub const MAX_CONCURRENT: usize = 32;
    /// A system prompt is instructions, not a document.
    pub const MAX_SYSTEM_PROMPT_BYTES: u64 = 64 * 1024;
    /// One week: conversations are memory only and should not outlive a shift by much.
    pub const MAX_IDLE_SECS: u64 = 7 * 24 * 3600;
    /// RFC 1035 §2.3.4.
    pub const MAX_HOST_NAME: usize = 253;
    /// More GPUs than this in one server is a typo.
    pub const MAX_GPU_INDEX: u32 = 63;
}

/// Which backend runs and why, decided from `engine.backend` and the build
/// (here), then from the machine (`gpu::prepare` before the sandbox, and
/// `gpu::select` on the engine thread, which may still fall back to the CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDecision {
    /// What runs.
    pub backend: ResolvedBackend,
    /// Why, in one sentence for the status page.
    pub reason: String,
    /// The GPU `engine.device` names (GPU 0 when absent).
    pub gpu: GpuSelector,
    /// `backend = "cuda"`: no CPU fallback; an unusable GPU stops the start.
    pub required: bool,
}

/// A backend this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedBackend {
    /// Burn's `flex` CPU backend.
    Cpu,
    /// CUDA, to be confirmed on the machine (driver, GPU, free memory).
    Cuda,
    /// The scripted test double.
    Scripted,
}

/// A validated configuration, ready to start from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from.
    pub source: PathBuf,
    /// `[model]`, validated.
    pub model: ModelSection,
    /// `[engine]`, validated.
    pub engine: EngineSection,
    /// `[server]`, validated; `allowed_hosts` lower-cased.
    pub server: ServerSection,
    /// `[audit]`, validated.
    pub audit: AuditSection,
    /// `[sandbox]`, validated.
    pub sandbox: SandboxSection,
    /// The backend that will run.
    pub backend: BackendDecision,
    /// The system prompt text, if a file was configured.
    pub system_prompt: Option<String>,
}

impl Settings {
    /// How long an idle conversation is kept.
    pub fn session_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.server.session_idle_timeout_secs)
    }
}

impl Config {
    /// Reads and parses `path` (no validation beyond types and key names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Checks every value and path and reads the system prompt; `source` is
    /// the file the configuration came from.
    pub fn resolve(self, source: &Path) -> Result<Settings, ConfigError> {
        let Config {
            model,
            engine,
            mut server,
            audit,
            sandbox,
        } = self;
        let gpu = match &engine.device {
            Some(d) => GpuSelector::parse(d)?,
            None => GpuSelector::Index(0),
        };
        let backend = resolve_backend(engine.backend, gpu)?;

        // [model]
        if backend.backend != ResolvedBackend::Scripted {
            check_model_path(&model.path)?;
        }
        if let Some(tok) = &model.tokenizer_path
            && !tok.is_file()
        {
            return Err(ConfigError::invalid(
                "model.tokenizer_path",
                format!(
                    "{} is not a readable file; give the path of a tokenizer.json or remove the key",
                    tok.display()
                ),
            ));
        }
        let label = model.label.trim();
        if label.is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "model.label",
                "must be a name of 1 to 100 printable characters, e.g. \"MedGemma 1.5 4B\"",
            ));
        }
        let system_prompt = model
            .system_prompt_file
            .as_deref()
            .map(read_system_prompt)
            .transpose()?;

        // [engine]
        if !(limits::MIN_CONTEXT..=limits::MAX_CONTEXT).contains(&engine.context_length) {
            return Err(ConfigError::invalid(
                "engine.context_length",
                format!(
                    "must be between {} and {} tokens (got {})",
                    limits::MIN_CONTEXT,
                    limits::MAX_CONTEXT,
                    engine.context_length
                ),
            ));
        }
        if !(1..=limits::MAX_CONCURRENT).contains(&engine.max_concurrent_generations) {
            return Err(ConfigError::invalid(
                "engine.max_concurrent_generations",
                format!(
                    "must be between 1 and {} (got {})",
                    limits::MAX_CONCURRENT,
                    engine.max_concurrent_generations
                ),
            ));
        }
        if !(1..=limits::MAX_QUEUE).contains(&engine.queue_length) {
            return Err(ConfigError::invalid(
                "engine.queue_length",
                format!(
                    "must be between 1 and {} (got {})",
                    limits::MAX_QUEUE,
                    engine.queue_length
                ),
            ));
        }
        if engine.max_new_tokens == 0 || engine.max_new_tokens >= engine.context_length {
            return Err(ConfigError::invalid(
                "engine.max_new_tokens",
                format!(
                    "must be at least 1 and below engine.context_length ({}) (got {})",
                    engine.context_length, engine.max_new_tokens
                ),
            ));
        }

        // [server]
        check_socket_path("server.ui_socket", &server.ui_socket)?;
        if let Some(admin) = &server.admin_socket {
            check_socket_path("server.admin_socket", admin)?;
            if admin == &server.ui_socket {
                return Err(ConfigError::invalid(
                    "server.admin_socket",
                    "must differ from server.ui_socket: the admin socket is never reachable from the browser",
                ));
            }
        }
        if server.listen_port == 0 {
            return Err(ConfigError::invalid(
                "server.listen_port",
                "must be the TCP port the browser uses (1-65535), 6006 by default",
            ));
        }
        for host in &mut server.allowed_hosts {
            *host = host.trim().to_ascii_lowercase();
            if !is_host_name(host) {
                return Err(ConfigError::invalid(
                    "server.allowed_hosts",
                    format!(
                        "{host:?} is not a bare host name; write names like \"medgemma.ward3.example\" without scheme, port or path"
                    ),
                ));
            }
        }
        if !(1..=limits::MAX_IDLE_SECS).contains(&server.session_idle_timeout_secs) {
            return Err(ConfigError::invalid(
                "server.session_idle_timeout_secs",
                format!(
                    "must be between 1 and {} seconds (got {})",
                    limits::MAX_IDLE_SECS,
                    server.session_idle_timeout_secs
                ),
            ));
        }

        // [audit]
        if !audit.dir.is_absolute() || !audit.dir.is_dir() {
            return Err(ConfigError::invalid(
                "audit.dir",
                format!(
                    "{} must be an existing directory given as an absolute path",
                    audit.dir.display()
                ),
            ));
        }
        for (key, path) in [
            ("audit.key_file", &audit.key_file),
            ("audit.content_key_file", &audit.content_key_file),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }

        // [sandbox]
        let user = sandbox.user.trim();
        if user.is_empty()
            || user == "root"
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::invalid(
                "sandbox.user",
                format!(
                    "{user:?} is not an unprivileged user name; name the service user, e.g. \"medgemma\""
                ),
            ));
        }
        for (key, dir) in [
            ("sandbox.state_dir", &sandbox.state_dir),
            ("sandbox.cache_dir", &sandbox.cache_dir),
        ] {
            if let Some(dir) = dir
                && (!dir.is_absolute() || !dir.is_dir())
            {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} must be an existing directory given as an absolute path",
                        dir.display()
                    ),
                ));
            }
        }

        Ok(Settings {
            source: source.to_owned(),
            model: ModelSection {
                label: label.to_owned(),
                ..model
            },
            engine,
            server,
            audit,
            sandbox: SandboxSection {
                user: user.to_owned(),
                ..sandbox
            },
            backend,
            system_prompt,
        })
    }
}

/// Decides the backend as far as the configuration and the build can: with
/// the `cuda` feature, `auto` and `cuda` are CUDA candidates that the
/// machine confirms or refuses at startup (`gpu.rs`).
fn resolve_backend(
    choice: BackendChoice,
    gpu: GpuSelector,
) -> Result<BackendDecision, ConfigError> {
    let decided = |backend, reason: &str| {
        Ok(BackendDecision {
            backend,
            reason: reason.to_owned(),
            gpu: gpu.clone(),
            required: choice == BackendChoice::Cuda,
        })
    };
    let cuda_build = cfg!(feature = "cuda");
    match choice {
        BackendChoice::Cpu => decided(
            ResolvedBackend::Cpu,
            "engine.backend = \"cpu\" in the configuration",
        ),
        BackendChoice::Auto if cuda_build => decided(
            ResolvedBackend::Cuda,
            "engine.backend = \"auto\": the GPU is checked at startup",
        ),
        BackendChoice::Cuda if cuda_build => decided(
            ResolvedBackend::Cuda,
            "engine.backend = \"cuda\" in the configuration",
        ),
        BackendChoice::Auto => decided(
            ResolvedBackend::Cpu,
            "engine.backend = \"auto\" and this build has no CUDA support, so the CPU runs the model",
        ),
        BackendChoice::Cuda => Err(ConfigError::invalid(
            "engine.backend",
            "this build has no CUDA support; set backend = \"cpu\" or \"auto\", or install a build with CUDA",
        )),
        BackendChoice::Scripted if cfg!(feature = "test-engine") => decided(
            ResolvedBackend::Scripted,
            "engine.backend = \"scripted\": a test double, not a model",
        ),
        BackendChoice::Scripted => Err(ConfigError::invalid(
            "engine.backend",
            "\"scripted\" is a test double that only debug builds with the test-engine feature have; use \"auto\", \"cpu\" or \"cuda\"",
        )),
    }
}

fn check_model_path(path: &Path) -> Result<(), ConfigError> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(ConfigError::invalid(
                "model.path",
                format!(
                    "the directory {} has no config.json; give the folder of a Hugging Face checkpoint or a .gguf file",
                    path.display()
                ),
            ));
        }
        Ok(())
    } else if path.is_file() && is_gguf {
        Ok(())
    } else if path.exists() {
        Err(ConfigError::invalid(
            "model.path",
            format!(
                "{} is neither a model directory nor a .gguf file",
                path.display()
            ),
        ))
    } else {
        Err(ConfigError::invalid(
            "model.path",
            format!(
                "{} does not exist; give the model directory or the .gguf file",
                path.display()
            ),
        ))
    }
}

fn read_system_prompt(path: &Path) -> Result<String, ConfigError> {
    const KEY: &str = "model.system_prompt_file";
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::invalid(KEY, format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() || meta.len() > limits::MAX_SYSTEM_PROMPT_BYTES {
        return Err(ConfigError::invalid(
            KEY,
            format!(
                "{} must be a text file of at most {} KiB",
                path.display(),
                limits::MAX_SYSTEM_PROMPT_BYTES / 1024
            ),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::invalid(KEY, format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::invalid(KEY, format!("{} is not UTF-8 text", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::invalid(
            KEY,
            format!(
                "{} is empty; remove the key or write a prompt",
                path.display()
            ),
        ));
    }
    Ok(text.to_owned())
}

fn check_socket_path(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    // sun_path holds 108 bytes including the terminating NUL (unix(7)).
    const SUN_PATH_MAX: usize = 107;
    if !path.is_absolute() {
        return Err(ConfigError::invalid(
            key,
            format!("{} must be an absolute path", path.display()),
        ));
    }
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is longer than the {SUN_PATH_MAX} bytes a Unix socket path may have",
                path.display()
            ),
        ));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        _ => Err(ConfigError::invalid(
            key,
            format!(
                "the directory of {} does not exist; create it or choose another path",
                path.display()
            ),
        )),
    }
}

/// A bare DNS name or IPv4 address: letters, digits, '-' and '.'.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= limits::MAX_HOST_NAME
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(dir: &Path, extra_engine: &str) -> String {
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        format!(
            "[model]\npath = {model:?}\nlabel = \"Demo\"\ndemo = true\n\n[engine]\nbackend = \"cpu\"\n{extra_engine}\n\n[server]\nui_socket = {sock:?}\n\n[audit]\ndir = {dir:?}\n",
            sock = dir.join("ui.sock"),
        )
    }

    fn resolve(text: &str, dir: &Path) -> Result<Settings, ConfigError> {
        let p = dir.join("c.toml");
        Config::parse(text, &p)?.resolve(&p)
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(&minimal(dir.path(), ""), dir.path()).unwrap();
        assert_eq!(s.engine.context_length, 8192);
        assert_eq!(s.engine.queue_length, 8);
        assert_eq!(s.server.listen_port, 6006);
        assert_eq!(s.backend.backend, ResolvedBackend::Cpu);
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(&minimal(dir.path(), "queue_lenght = 3"), dir.path()).unwrap_err();
        assert!(err.to_string().contains("queue_lenght"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(&minimal(dir.path(), "queue_length = 0"), dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "engine.queue_length",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn concurrency_outside_1_to_32_is_refused_with_the_range() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["0", "33"] {
            let line = format!("max_concurrent_generations = {bad}");
            let err = resolve(&minimal(dir.path(), &line), dir.path()).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("must be between 1 and 32 (got {bad})")),
                "{err}"
            );
        }
        let ok = resolve(
            &minimal(dir.path(), "max_concurrent_generations = 32"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(ok.engine.max_concurrent_generations, 32);
    }

    #[test]
    fn gpu_device_accepts_ordinals_and_uuids() {
        assert_eq!(GpuSelector::parse("0").unwrap(), GpuSelector::Index(0));
        assert_eq!(GpuSelector::parse(" 7 ").unwrap(), GpuSelector::Index(7));
        assert_eq!(
            GpuSelector::parse("GPU-5B1A9E4C-0D3F-4E2A-9C1B-7A6D5E4F3A2B").unwrap(),
            GpuSelector::Uuid("GPU-5b1a9e4c-0d3f-4e2a-9c1b-7a6d5e4f3a2b".to_owned())
        );
        for bad in [
            "",
            "-1",
            "64",
            "99999999999",
            "cuda:0",
            "GPU-5b1a9e4c",
            "GPU-5b1a9e4c-0d3f-4e2a-9c1b-7a6d5e4f3a2g",
            "GPU-5b1a9e4c0d3f4e2a9c1b7a6d5e4f3a2b",
        ] {
            let err = GpuSelector::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        key: "engine.device",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
        let mig = GpuSelector::parse("MIG-5b1a9e4c-0d3f-4e2a-9c1b-7a6d5e4f3a2b").unwrap_err();
        assert!(
            mig.to_string().contains("MIG instances are not supported"),
            "{mig}"
        );
    }

    #[test]
    fn engine_device_is_validated_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(&minimal(dir.path(), "device = \"1\""), dir.path()).unwrap();
        assert_eq!(s.backend.gpu, GpuSelector::Index(1));
        let s = resolve(&minimal(dir.path(), ""), dir.path()).unwrap();
        assert_eq!(s.backend.gpu, GpuSelector::Index(0));
        let err = resolve(&minimal(dir.path(), "device = \"gpu0\""), dir.path()).unwrap_err();
        assert!(err.to_string().contains("engine.device"), "{err}");
        assert!(err.to_string().contains("nvidia-smi -L"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn auto_and_cuda_are_cuda_candidates_in_a_cuda_build() {
        let dir = tempfile::tempdir().unwrap();
        for choice in ["auto", "cuda"] {
            let text = minimal(dir.path(), "")
                .replace("backend = \"cpu\"", &format!("backend = \"{choice}\""));
            let s = resolve(&text, dir.path()).unwrap();
            assert_eq!(s.backend.backend, ResolvedBackend::Cuda, "{choice}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn auto_runs_on_the_cpu_without_cuda_support() {
        let dir = tempfile::tempdir().unwrap();
        let text = minimal(dir.path(), "").replace("backend = \"cpu\"", "backend = \"auto\"");
        let s = resolve(&text, dir.path()).unwrap();
        assert_eq!(s.backend.backend, ResolvedBackend::Cpu);
        assert!(s.backend.reason.contains("this build has no CUDA support"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_is_refused_without_cuda_support() {
        let dir = tempfile::tempdir().unwrap();
        let text = minimal(dir.path(), "").replace("backend = \"cpu\"", "backend = \"cuda\"");
        let err = resolve(&text, dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("this build has no CUDA support"),
            "{err}"
        );
    }

    #[test]
    fn documented_example_parses_with_its_defaults() {
        let text = include_str!("../../packaging/medgemmad.example.toml");
        let c = Config::parse(text, Path::new("medgemmad.example.toml")).unwrap();
        let d = EngineSection::default();
        assert_eq!(c.engine.context_length, d.context_length);
        assert_eq!(c.engine.queue_length, d.queue_length);
        assert_eq!(c.engine.max_new_tokens, d.max_new_tokens);
        assert_eq!(c.server.listen_port, default_listen_port());
        assert_eq!(c.server.session_idle_timeout_secs, default_idle_timeout());
        assert_eq!(c.sandbox.user, default_sandbox_user());
    }

    #[test]
    fn host_names_must_be_bare() {
        assert!(is_host_name("medgemma.ward3.example"));
        assert!(is_host_name("10.0.0.7"));
        assert!(!is_host_name("http://x"));
        assert!(!is_host_name("x:6006"));
        assert!(!is_host_name(""));
    }
}
