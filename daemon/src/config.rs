//! From the configuration files to the [`Settings`] the daemon runs with.
//!
//! The schema, its defaults, limits and checks live in
//! `medgemma_protocol::config` (shared with `medgemmactl`); here the daemon
//! adds what only it can decide: the backend this build can run
//! ([`BackendDecision`]) and the system prompt's text.
//!
//! Owns: the step from a checked configuration to settings. Must never:
//! open a model, bind a socket or start a thread (callers do, once this
//! succeeds).

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use medgemma_protocol::config::{
    AnswerStyle, AnswersSection, AuditSection, AuthMode, AuthSection, BackendChoice, Config,
    ConfigError, EngineSection, GpuSelector, ModelSection, SandboxSection, ServerSection,
};

/// Which backend runs and why, decided from `engine.backend` and the build
/// (here), then from the machine (`engine::gpu::prepare` before the sandbox,
/// and the engine thread's loader, which may still fall back to the CPU).
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

/// A checked configuration, ready to start from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The main file.
    pub source: PathBuf,
    /// The main file and the drop-ins read after it, in order.
    pub files: Vec<PathBuf>,
    /// `[model]`.
    pub model: ModelSection,
    /// `[engine]`.
    pub engine: EngineSection,
    /// `[server]` (`allowed_hosts` lower-cased).
    pub server: ServerSection,
    /// `[audit]`.
    pub audit: AuditSection,
    /// `[sandbox]`.
    pub sandbox: SandboxSection,
    /// The backend that will run.
    pub backend: BackendDecision,
    /// The system prompt text, if a file was configured.
    pub system_prompt: Option<String>,
    /// `[answers]`.
    pub answers: AnswersSection,
    /// The answer-style presets read from `answers.styles_dir`: (style,
    /// language, text); empty without the directory.
    pub presets: Vec<(AnswerStyle, &'static str, String)>,
    /// `[auth]`.
    pub auth: AuthSection,
    /// `auth.sso_proxy_user` resolved to its uid (read from /etc/passwd
    /// before the sandbox).
    pub sso_proxy_uid: Option<u32>,
}

impl Settings {
    /// Reads `path` and its drop-ins, checks every value and path, decides
    /// the backend and reads the system prompt.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let loaded = Config::load(path)?;
        Self::resolve(loaded.config, path, loaded.files)
    }

    /// [`Settings::load`] for an already parsed configuration.
    pub fn resolve(
        mut config: Config,
        source: &Path,
        files: Vec<PathBuf>,
    ) -> Result<Self, ConfigError> {
        config.normalize();
        config.check()?;
        let backend = resolve_backend(config.engine.backend, config.gpu()?)?;
        config.check_files(backend.backend != ResolvedBackend::Scripted)?;
        let system_prompt = config
            .model
            .system_prompt_file
            .as_deref()
            .map(read_system_prompt)
            .transpose()?;
        let presets = match &config.answers.styles_dir {
            Some(dir) => read_presets(dir)?,
            None => Vec::new(),
        };
        let sso_proxy_uid = match (config.auth.mode, &config.auth.sso_proxy_user) {
            (AuthMode::Sso, Some(user)) => Some(resolve_uid(user)?),
            _ => None,
        };
        let Config {
            model,
            engine,
            server,
            audit,
            sandbox,
            answers,
            auth,
        } = config;
        Ok(Self {
            source: source.to_owned(),
            files,
            model,
            engine,
            server,
            audit,
            sandbox,
            backend,
            system_prompt,
            answers,
            presets,
            auth,
            sso_proxy_uid,
        })
    }

    /// How long an idle conversation is kept.
    pub fn session_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.server.session_idle_timeout_secs)
    }
}

/// Decides the backend as far as the configuration and the build can: with
/// the `cuda` feature, `auto` and `cuda` are CUDA candidates that the
/// machine confirms or refuses at startup.
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

/// Every answer-style preset of `dir` (their sizes were checked with the
/// other files): `<style>.<language>.txt` for each style and language.
fn read_presets(dir: &Path) -> Result<Vec<(AnswerStyle, &'static str, String)>, ConfigError> {
    const KEY: &str = "answers.styles_dir";
    let mut out = Vec::new();
    for style in AnswerStyle::ALL {
        for language in medgemma_protocol::config::LANGUAGES {
            let path = dir.join(medgemma_protocol::config::style_file_name(style, language));
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(
                    KEY,
                    format!("cannot read {} as UTF-8 text: {e}", path.display()),
                )
            })?;
            let text = text.trim();
            if text.is_empty() {
                return Err(ConfigError::invalid(
                    KEY,
                    format!(
                        "{} is empty; write the preset or remove the key",
                        path.display()
                    ),
                ));
            }
            out.push((style, language, text.to_owned()));
        }
    }
    Ok(out)
}

/// The uid of a user name (or a numeric uid) from /etc/passwd.
fn resolve_uid(user: &str) -> Result<u32, ConfigError> {
    const KEY: &str = "auth.sso_proxy_user";
    let user = user.trim();
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| ConfigError::invalid(KEY, format!("cannot read /etc/passwd: {e}")))?;
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[0] == user).then(|| f[2].parse::<u32>().ok())?
        })
        .next()
        .ok_or_else(|| {
            ConfigError::invalid(
                KEY,
                format!(
                    "{user:?} is not a user in /etc/passwd; name the user the reverse proxy runs as"
                ),
            )
        })
}

/// The system prompt's text (its size was checked with the other files).
fn read_system_prompt(path: &Path) -> Result<String, ConfigError> {
    const KEY: &str = "model.system_prompt_file";
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
        std::fs::write(&p, text).unwrap();
        Settings::load(&p)
    }

    #[test]
    fn a_minimal_file_resolves_on_the_cpu() {
        let dir = tempfile::tempdir().unwrap();
        let s = resolve(&minimal(dir.path(), ""), dir.path()).unwrap();
        assert_eq!(s.backend.backend, ResolvedBackend::Cpu);
        assert_eq!(s.backend.gpu, GpuSelector::Index(0));
        assert_eq!(s.files, [dir.path().join("c.toml")]);
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(&minimal(dir.path(), "queue_length = 0"), dir.path()).unwrap_err();
        assert_eq!(err.key(), Some("engine.queue_length"), "{err}");
        let err = resolve(&minimal(dir.path(), "device = \"gpu0\""), dir.path()).unwrap_err();
        assert_eq!(err.key(), Some("engine.device"), "{err}");
    }

    #[test]
    fn the_system_prompt_is_read_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = dir.path().join("prompt.txt");
        std::fs::write(&prompt, "  Answer briefly.\n").unwrap();
        let text = minimal(dir.path(), "").replace(
            "demo = true\n",
            &format!("demo = true\nsystem_prompt_file = {prompt:?}\n"),
        );
        let s = resolve(&text, dir.path()).unwrap();
        assert_eq!(s.system_prompt.as_deref(), Some("Answer briefly."));
        std::fs::write(&prompt, " \n").unwrap();
        let err = resolve(&text, dir.path()).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
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
}
