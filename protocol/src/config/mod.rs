//! The daemon's configuration file (`medgemmad.toml` and its drop-ins): one
//! set of `serde` types that `medgemmad` reads strictly, `medgemmactl`
//! reads the same way, and `medgemmactl setup` writes by serialising.
//!
//! A key is one field: its doc comment is its documentation, its
//! `#[serde(default)]` its default, its `#[schemars(range(..))]` its limit.
//! From these the schema ([`schema`]) is derived, and from the schema the
//! documented example file ([`example_toml`], `packaging/medgemmad.example.toml`,
//! checked by a test to be current) and the range checks ([`Config::check`]).
//!
//! Two stages, as ripgrep handles its arguments: [`Config::load`] reads the
//! file and its drop-ins and checks types and key names (an unknown key is
//! refused, so a typo never silently falls back to a default), then
//! [`Config::check`] checks every value without touching the file system and
//! [`Config::check_files`] the paths it names. Every failure is a
//! [`ConfigError`] naming the key (`engine.queue_length`) and saying what to
//! write instead.
//!
//! ```
//! use medgemma_protocol::config::Config;
//! let text = "[model]\npath = \"/srv/m.gguf\"\nlabel = \"Demo\"\ndemo = true\n";
//! let config = Config::from_toml(text, std::path::Path::new("demo.toml")).unwrap();
//! assert_eq!(config.engine.context_length, 8192);
//! assert!(config.check().is_ok());
//! ```
//!
//! Owns: the meaning, defaults and limits of every setting. Must never: open
//! a model, bind a socket or start a thread (callers do, once this succeeds).

mod check;
mod example;
mod load;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::paths;

pub use check::{GpuSelector, LANGUAGES, maximum, split_origin, style_file_name};
pub use example::example_toml;
pub use load::Loaded;

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
        /// The file (and its drop-ins, when the error is in the merged whole).
        path: PathBuf,
        /// The parser's explanation (key, line and column).
        message: String,
    },
    /// A value is out of range or names a path that cannot be used.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `engine.queue_length`.
        key: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The dotted key of an invalid value, if that is what this is.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// medgemmad configuration (`medgemmad serve --config /etc/medgemma/medgemmad.toml`).
///
/// Every key is listed here with its default. Unknown keys are refused (a
/// typo never silently falls back to a default), and any bad value stops the
/// daemon before it starts, with a message naming the key (exit code 2).
/// Files in the drop-in directory beside this file (`medgemmad.d/*.toml`,
/// in name order) are read after it and override it key by key;
/// `medgemmactl setup` writes its choices to `medgemmad.d/50-setup.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to load and how to present it.
    pub model: ModelSection,
    /// How the engine runs.
    #[serde(default)]
    pub engine: EngineSection,
    /// Sockets and web safety.
    #[serde(default)]
    pub server: ServerSection,
    /// The tamper-evident audit log.
    #[serde(default)]
    pub audit: AuditSection,
    /// The kernel sandbox.
    #[serde(default)]
    pub sandbox: SandboxSection,
    /// Answer styles and term alignment.
    #[serde(default)]
    pub answers: AnswersSection,
    /// Who may use the appliance.
    #[serde(default)]
    pub auth: AuthSection,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model directory (config.json + *.safetensors [+ tokenizer.json]) or a
    /// single .gguf file. Required.
    #[schemars(example = paths::MODEL_DIR)]
    pub path: PathBuf,
    /// A tokenizer.json to use instead of the one found with the model.
    #[serde(default)]
    #[schemars(example = "/srv/medgemma/tokenizer.json")]
    pub tokenizer_path: Option<PathBuf>,
    /// The name clinicians see (1 to 100 printable characters). Required.
    #[schemars(example = "MedGemma 1.5 4B")]
    pub label: String,
    /// true for a small demo model (such as Gemma 3 270M): the UI then says
    /// "a small demo model, not a medical model" next to its name. Required,
    /// so that a demo model is never served without the warning by omission.
    #[schemars(example = false)]
    pub demo: bool,
    /// A UTF-8 text file (at most 64 KiB) whose content becomes the system
    /// message of every conversation.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::SYSTEM_PROMPT_FILE))]
    pub system_prompt_file: Option<PathBuf>,
    /// The SHA-256 pins of the model files (JSON, written by `medgemmactl
    /// setup`). The daemon hashes every model file while it loads and
    /// compares each with its pin; the audit log identifies the model by
    /// those digests.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::PINS_FILE))]
    pub pins_file: Option<PathBuf>,
    /// What a model file that does not match its pin does: "refuse" (the
    /// daemon does not serve, exit 3, and says which file) or "degraded"
    /// (it serves and says so in the log, the status and `medgemmactl
    /// status`).
    #[serde(default)]
    pub on_pin_mismatch: PinMismatch,
}

/// The `model.on_pin_mismatch` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PinMismatch {
    /// Do not serve a model that is not the one pinned.
    #[default]
    Refuse,
    /// Serve it, and report the status as degraded.
    Degraded,
}

/// `[engine]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// "auto": CUDA when this build, the driver and a GPU with enough free
    /// memory for the model are there, else the CPU; the log, the status
    /// page and `medgemmactl status` (exit 1, degraded) say why, with the
    /// numbers. "cuda": the same checks, but the daemon refuses to start
    /// (exit 7, with the reason) instead of running on the CPU. "cpu":
    /// always the CPU.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Which GPU (CUDA only): its number as `nvidia-smi -L` lists it ("0"),
    /// or its UUID ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"), which
    /// survives slot changes. Default: GPU 0.
    #[serde(default)]
    #[schemars(example = "0")]
    pub device: Option<String>,
    /// Tokens per conversation (prompt + answer), capped at the model's
    /// maximum. A conversation that would exceed it is refused with
    /// "context_full" and an offer to start a new one; history is never
    /// silently truncated.
    #[serde(default = "defaults::context_length")]
    #[schemars(range(min = 32, max = 131_072), extend("x-unit" = "tokens"))]
    pub context_length: usize,
    /// Answers generated at once. They share each decode step (continuous
    /// batching: every weight is read once per step for all of them), so
    /// nobody waits for another's whole answer. Each holds a KV cache for
    /// context_length, which the GPU memory budget counts (0.27 GiB each for
    /// the 4B model at 8192 tokens in bf16); the daemon runs fewer when fewer
    /// fit. On the CPU, 1-4.
    #[serde(default = "defaults::max_concurrent")]
    #[schemars(range(min = 1, max = 32))]
    pub max_concurrent_generations: usize,
    /// Requests waiting for the engine besides the running ones. Beyond it
    /// requests are answered 503 with Retry-After.
    #[serde(default = "defaults::queue_length")]
    #[schemars(range(min = 1, max = 256))]
    pub queue_length: usize,
    /// Upper bound (and default) of the tokens one answer may generate;
    /// below context_length.
    #[serde(default = "defaults::max_new_tokens")]
    #[schemars(range(min = 1, max = 131_071), extend("x-unit" = "tokens"))]
    pub max_new_tokens: usize,
    /// How the CPU holds the weight matrices (the GPU always computes in
    /// bf16 and ignores this). "stored": as the file stores them, read in
    /// place: a GGUF's quantized blocks stay quantized, the official
    /// safetensors release runs as bf16. "q8_0": bf16/f16/f32 matrices are
    /// rounded to 8 bits once at load (about half the memory of bf16 and
    /// faster; the README gives the measured fidelity cost). "f32": every
    /// matrix widened to f32 (4× bf16's memory; the fidelity reference).
    #[serde(default)]
    pub cpu_weights: CpuWeightsChoice,
    /// How the CPU multiplies quantized weights with the activations (the
    /// GPU ignores this). "f32": activations stay f32, the products equal
    /// dequantize-then-multiply (the fidelity reference). "q8_prompt":
    /// prompts round their activations to 8 bits per 32 values and use
    /// integer dot products (VNNI), faster prefill; answers stay f32.
    /// "q8": every product, as llama.cpp does. The README gives the
    /// measured speed and fidelity of each.
    #[serde(default)]
    pub cpu_activations: CpuActivationsChoice,
    /// Keep each conversation's KV cache between its turns, so a follow-up
    /// question prefills only its new tokens instead of the whole
    /// conversation. The cache belongs to its conversation and is dropped
    /// with it (deleted, idled out, logged out); the memory budget counts
    /// one more full-context sequence for the kept caches (running answers'
    /// copies of their caches included), and the oldest kept cache is
    /// dropped first when they would exceed it.
    #[serde(default = "defaults::keep_context")]
    pub keep_context: bool,
    /// On the GPU, run each decode step as one captured CUDA graph (one
    /// launch per token instead of hundreds), replayed while the running
    /// answers stay the same. The GPU warm-up runs with and without it and
    /// keeps it only when both stream the same text; the log says which.
    /// Off: every step launches its kernels one by one (slower, the same
    /// answers). The CPU ignores this.
    #[serde(default = "defaults::decode_graph")]
    pub decode_graph: bool,
}

/// The `engine.cpu_weights` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CpuWeightsChoice {
    /// As the file stores them (GGUF blocks, bf16).
    #[default]
    #[serde(rename = "stored")]
    Stored,
    /// Quantized to Q8_0 once at load.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Widened to f32 (the fidelity reference).
    #[serde(rename = "f32")]
    F32,
}

/// The `engine.cpu_activations` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CpuActivationsChoice {
    /// f32 activations everywhere (exact).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// 8-bit activations for prompts, f32 for answers.
    #[serde(rename = "q8_prompt")]
    Q8Prompt,
    /// 8-bit activations everywhere.
    #[serde(rename = "q8")]
    Q8,
}

impl CpuActivationsChoice {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8Prompt => "q8_prompt",
            Self::Q8 => "q8",
        }
    }
}

impl CpuWeightsChoice {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Q8_0 => "q8_0",
            Self::F32 => "f32",
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            backend: BackendChoice::default(),
            device: None,
            context_length: defaults::context_length(),
            max_concurrent_generations: defaults::max_concurrent(),
            queue_length: defaults::queue_length(),
            max_new_tokens: defaults::max_new_tokens(),
            cpu_weights: CpuWeightsChoice::default(),
            cpu_activations: CpuActivationsChoice::default(),
            keep_context: defaults::keep_context(),
            decode_graph: defaults::decode_graph(),
        }
    }
}

/// The `engine.backend` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when this build and the machine have it, else the CPU (the reason is reported).
    #[default]
    Auto,
    /// NVIDIA GPU; fails if this build has no CUDA support or no GPU fits.
    Cuda,
    /// Burn's pure-Rust CPU backend.
    Cpu,
    /// The scripted test double (debug builds with the `test-engine` feature only).
    Scripted,
}

impl BackendChoice {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
            Self::Scripted => "scripted",
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The Unix socket the web UI and the API are served on, unless systemd
    /// passes one (socket activation, descriptor named "ui"). The directory
    /// must exist; it decides who can connect.
    #[serde(default = "defaults::ui_socket")]
    pub ui_socket: PathBuf,
    /// The admin socket for `medgemmactl` (mode 0660), unless systemd passes
    /// one (descriptor named "admin"). Each connection is authorized by its
    /// peer credentials (SO_PEERCRED): root, or a member of admin_group.
    /// Never put it behind the loopback proxy. Not opened when absent.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::ADMIN_SOCKET))]
    pub admin_socket: Option<PathBuf>,
    /// The group (name or numeric gid) allowed on the admin socket besides root.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::ADMIN_GROUP))]
    pub admin_group: Option<String>,
    /// The loopback TCP port the browser uses (the loopback proxy listens on
    /// it). Requests must carry Host: localhost / 127.0.0.1 / [::1] with this
    /// port.
    #[serde(default = "defaults::listen_port")]
    #[schemars(range(min = 1, max = 65_535))]
    pub listen_port: u16,
    /// Further host names accepted in the Host header (bare names: no
    /// scheme, port or path). Every other name is refused, against DNS
    /// rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Origins of a reverse proxy in front of the UI (scheme, name and
    /// port only, e.g. "https://medgemma.ward3.example"): their host is
    /// accepted in the Host header and they are accepted in the Origin of
    /// state-changing requests. Session cookies set through an https origin
    /// are marked Secure.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Seconds after its last turn before a conversation is forgotten.
    /// Conversations live in memory only.
    #[serde(default = "defaults::idle_timeout")]
    #[schemars(range(min = 1, max = 604_800), extend("x-unit" = "seconds"))]
    pub session_idle_timeout_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            ui_socket: defaults::ui_socket(),
            admin_socket: None,
            admin_group: None,
            listen_port: defaults::listen_port(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            session_idle_timeout_secs: defaults::idle_timeout(),
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Directory of the tamper-evident audit log; must exist.
    #[serde(default = "defaults::audit_dir")]
    pub dir: PathBuf,
    /// The evolving chain key made by `medgemmactl setup`; the daemon
    /// refuses to start without it. Keep it in its own directory (mode
    /// 0700), away from the log and from exports.
    #[serde(default = "defaults::audit_key_file")]
    pub key_file: PathBuf,
    /// The content key: the log holds HMACs of each question and answer
    /// keyed with it, never the text.
    #[serde(default = "defaults::content_key_file")]
    pub content_key_file: PathBuf,
    /// The Ed25519 key that signs exports (PKCS#8), read only by
    /// `medgemmactl audit export`; the daemon never opens it.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::SIGNING_KEY_FILE))]
    pub signing_key_file: Option<PathBuf>,
    /// Days an audit file is kept. The daemon deletes older files at start
    /// and once a day, after recording what it deletes in the log itself (so
    /// a verifier can tell retention from tampering). China's Cybersecurity
    /// Law (art. 21) asks for at least six months; export what you must keep
    /// longer (`medgemmactl audit export`).
    #[serde(default = "defaults::retention_days")]
    #[schemars(range(min = 180, max = 36_500), extend("x-unit" = "days"))]
    pub retention_days: u32,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            dir: defaults::audit_dir(),
            key_file: defaults::audit_key_file(),
            content_key_file: defaults::content_key_file(),
            signing_key_file: None,
            retention_days: defaults::retention_days(),
        }
    }
}

/// `[sandbox]`
///
/// Landlock's paths are derived from the other sections: the model files,
/// system prompt, accounts and terminology read-only; the audit directory,
/// the socket directories and
/// the two directories below read-write; the GPU device nodes and driver
/// files only with the CUDA backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// The unprivileged user the daemon drops to when started as root (from
    /// the package's sysusers.d file). Started as another user, the daemon
    /// stays who it is and says so.
    #[serde(default = "defaults::sandbox_user")]
    pub user: String,
    /// A writable state directory.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::SANDBOX_STATE_DIR))]
    pub state_dir: Option<PathBuf>,
    /// A writable cache directory (the CUDA backend's JIT and kernel caches).
    #[serde(default)]
    #[schemars(extend("x-package" = paths::CACHE_DIR))]
    pub cache_dir: Option<PathBuf>,
    /// The lowest Landlock ABI the daemon accepts; below it, it refuses to
    /// start (exit 6). It always uses every right the kernel offers. ABI 1
    /// (Linux 5.13) confines the file system; later ABIs add truncation (3),
    /// TCP (4), device ioctls (5), abstract sockets and signals (6), which
    /// the daemon's seccomp filters and the systemd unit also close (the
    /// status lists what each gap is covered by). Debian 12: 2, Ubuntu
    /// 24.04: 4, Debian 13: 6.
    #[serde(default = "defaults::min_landlock_abi")]
    #[schemars(range(min = 1, max = 10))]
    pub min_landlock_abi: i32,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            user: defaults::sandbox_user(),
            state_dir: None,
            cache_dir: None,
            min_landlock_abi: defaults::min_landlock_abi(),
        }
    }
}

/// `[answers]`
///
/// How answers are asked for and annotated: the answer-style presets (one
/// system-prompt file per style and language) and the terminology the
/// daemon aligns the terms of each question and answer with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswersSection {
    /// The answer style of a new conversation: "structured" (definition,
    /// mechanism, differential diagnosis, advice) or "brief". Each
    /// clinician may switch it per conversation.
    #[serde(default)]
    pub default_style: AnswerStyle,
    /// A directory of answer-style presets: `<style>.<language>.txt`
    /// (structured.en.txt, structured.zh.txt, brief.en.txt, brief.zh.txt),
    /// UTF-8, at most 64 KiB each; the UI language picks the language. Read
    /// at startup. Without it, no style is offered.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::STYLES_DIR))]
    pub styles_dir: Option<PathBuf>,
    /// The directory `medgemmactl terms import` fills with the hospital's
    /// terminology (ICD-11, ICD-10, SNOMED CT, synonyms); read-only for the
    /// daemon. Terms found in a question and its answer are shown beside
    /// the answer. Empty or absent: no terms are shown.
    #[serde(default)]
    #[schemars(extend("x-package" = paths::TERMS_DIR))]
    pub terms_dir: Option<PathBuf>,
}

/// The `answers.default_style` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerStyle {
    /// Definition, mechanism, differential diagnosis, advice.
    #[default]
    Structured,
    /// A few lines.
    Brief,
}

impl AnswerStyle {
    /// Every style, in the order the UI offers them.
    pub const ALL: [AnswerStyle; 2] = [AnswerStyle::Structured, AnswerStyle::Brief];

    /// The value as written in the file and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Structured => "structured",
            Self::Brief => "brief",
        }
    }
}

/// `[auth]`
///
/// Accounts are managed with `medgemmactl user` (passwords hashed with
/// Argon2id, per-user API tokens); no account and no password exist until
/// an administrator creates one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// "accounts": clinicians log in with the accounts `medgemmactl user`
    /// manages, and API clients send a personal token. "sso": a reverse
    /// proxy on this host authenticates and names the user in sso_header,
    /// trusted only on connections from sso_proxy_user (the name must be an
    /// account). "open": nobody logs in (development; anyone who reaches the
    /// UI may chat).
    #[serde(default)]
    pub mode: AuthMode,
    /// The directory of the accounts file (`medgemmactl user` writes it;
    /// read-only for the daemon).
    #[serde(default = "defaults::accounts_dir")]
    pub accounts_dir: PathBuf,
    /// Seconds without a request after which a login session ends (its
    /// conversations are dropped). Reading the status does not count.
    #[serde(default = "defaults::idle_logout")]
    #[schemars(range(min = 1, max = 86_400), extend("x-unit" = "seconds"))]
    pub idle_logout_secs: u64,
    /// Wrong passwords in a row after which a user name is locked out.
    #[serde(default = "defaults::lockout_after")]
    #[schemars(range(min = 1, max = 100))]
    pub lockout_after_failures: u32,
    /// Seconds of the first lockout; each further lockout of the same name
    /// doubles it, up to an hour.
    #[serde(default = "defaults::lockout_secs")]
    #[schemars(range(min = 1, max = 3_600), extend("x-unit" = "seconds"))]
    pub lockout_secs: u64,
    /// "sso" only: the request header that names the user.
    #[serde(default = "defaults::sso_header")]
    pub sso_header: String,
    /// "sso" only: the user (name or numeric uid) the reverse proxy runs as;
    /// sso_header is read only on connections whose peer is this user.
    #[serde(default)]
    #[schemars(example = "www-data")]
    pub sso_proxy_user: Option<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            mode: AuthMode::default(),
            accounts_dir: defaults::accounts_dir(),
            idle_logout_secs: defaults::idle_logout(),
            lockout_after_failures: defaults::lockout_after(),
            lockout_secs: defaults::lockout_secs(),
            sso_header: defaults::sso_header(),
            sso_proxy_user: None,
        }
    }
}

/// The `auth.mode` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Local accounts and personal API tokens.
    #[default]
    Accounts,
    /// A reverse proxy's single sign-on, trusted from one peer only.
    Sso,
    /// No login (development).
    Open,
}

impl AuthMode {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accounts => "accounts",
            Self::Sso => "sso",
            Self::Open => "open",
        }
    }
}

/// The defaults, one function per key (serde needs functions).
pub mod defaults {
    use std::path::PathBuf;

    use crate::paths;

    /// `engine.context_length`: 8192 tokens.
    pub fn context_length() -> usize {
        8192
    }
    /// `engine.max_concurrent_generations`: 1.
    pub fn max_concurrent() -> usize {
        1
    }
    /// `engine.queue_length`: 8.
    pub fn queue_length() -> usize {
        8
    }
    /// `engine.max_new_tokens`: 1024.
    pub fn max_new_tokens() -> usize {
        1024
    }
    /// `engine.keep_context`: on.
    pub fn keep_context() -> bool {
        true
    }
    /// `engine.decode_graph`: on.
    pub fn decode_graph() -> bool {
        true
    }
    /// `server.ui_socket`.
    pub fn ui_socket() -> PathBuf {
        PathBuf::from(paths::UI_SOCKET)
    }
    /// `server.listen_port`: 6006.
    pub fn listen_port() -> u16 {
        paths::LISTEN_PORT
    }
    /// `server.session_idle_timeout_secs`: 30 minutes.
    pub fn idle_timeout() -> u64 {
        30 * 60
    }
    /// `audit.dir`.
    pub fn audit_dir() -> PathBuf {
        PathBuf::from(paths::AUDIT_DIR)
    }
    /// `audit.key_file`.
    pub fn audit_key_file() -> PathBuf {
        PathBuf::from(paths::AUDIT_KEY_FILE)
    }
    /// `audit.content_key_file`.
    pub fn content_key_file() -> PathBuf {
        PathBuf::from(paths::CONTENT_KEY_FILE)
    }
    /// `audit.retention_days`: 180 days.
    pub fn retention_days() -> u32 {
        180
    }
    /// `sandbox.user`.
    pub fn sandbox_user() -> String {
        paths::SERVICE_USER.to_owned()
    }
    /// `auth.accounts_dir`.
    pub fn accounts_dir() -> PathBuf {
        PathBuf::from(paths::ACCOUNTS_DIR)
    }
    /// `auth.idle_logout_secs`: 15 minutes, as hospital policies ask.
    pub fn idle_logout() -> u64 {
        15 * 60
    }
    /// `auth.lockout_after_failures`: 5.
    pub fn lockout_after() -> u32 {
        5
    }
    /// `auth.lockout_secs`: 30.
    pub fn lockout_secs() -> u64 {
        30
    }
    /// `auth.sso_header`.
    pub fn sso_header() -> String {
        "X-Remote-User".to_owned()
    }
    /// `sandbox.min_landlock_abi`: 1, the file system confined.
    pub fn min_landlock_abi() -> i32 {
        1
    }
}

/// The JSON schema of [`Config`] (descriptions from the doc comments,
/// defaults, limits, examples, and `x-package`: the value the Debian package
/// sets).
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}

/// Follows a `$ref` into the schema's `$defs`, and a lone `allOf: [{$ref}]`
/// wrapper; anything else is returned as it is.
fn resolve<'a>(
    root: &'a serde_json::Value,
    schema: &'a serde_json::Value,
) -> &'a serde_json::Value {
    if let Some(name) = schema
        .get("$ref")
        .and_then(serde_json::Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return root
            .get("$defs")
            .and_then(|d| d.get(name))
            .unwrap_or(schema);
    }
    if let Some([only]) = schema
        .get("allOf")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
    {
        return resolve(root, only);
    }
    schema
}
