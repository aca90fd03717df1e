//! Checking a parsed [`Config`]: the limits declared on the fields (read from
//! the schema, so a new key's range needs no code here), the rules between
//! keys and the shape of names ([`Config::check`], no file system), and the
//! paths ([`Config::check_files`]).
//!
//! Owns: every rule a value must follow. Must never: read a file's content
//! (the daemon reads the system prompt), or accept a value it cannot explain.

use std::path::Path;

use serde_json::Value;

use super::{Config, ConfigError, resolve, schema};

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

/// More GPUs than this in one server is a typo.
pub const MAX_GPU_INDEX: u32 = 63;

/// A system prompt is instructions, not a document.
pub const MAX_SYSTEM_PROMPT_BYTES: u64 = 64 * 1024;

/// RFC 1035 §2.3.4.
const MAX_HOST_NAME: usize = 253;

/// sun_path holds 108 bytes including the terminating NUL (unix(7)).
const SUN_PATH_MAX: usize = 107;

impl GpuSelector {
    /// Parses an `engine.device` value: "0".."63" or
    /// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex digits).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        const KEY: &str = "engine.device";
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u32>() {
                Ok(i) if i <= MAX_GPU_INDEX => Ok(Self::Index(i)),
                _ => Err(ConfigError::invalid(
                    KEY,
                    format!(
                        "{t:?} is not a GPU number between 0 and {MAX_GPU_INDEX}; `nvidia-smi -L` lists them"
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

impl Config {
    /// Trims and lower-cases what has one spelling (the label, host names,
    /// the service user), so the checks and the daemon see one form.
    pub fn normalize(&mut self) {
        self.model.label = self.model.label.trim().to_owned();
        for host in &mut self.server.allowed_hosts {
            *host = host.trim().to_ascii_lowercase();
        }
        for origin in &mut self.server.allowed_origins {
            *origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        }
        self.auth.sso_header = self.auth.sso_header.trim().to_owned();
        self.sandbox.user = self.sandbox.user.trim().to_owned();
    }

    /// The GPU `engine.device` names (GPU 0 when absent).
    pub fn gpu(&self) -> Result<GpuSelector, ConfigError> {
        match &self.engine.device {
            Some(d) => GpuSelector::parse(d),
            None => Ok(GpuSelector::Index(0)),
        }
    }

    /// Checks every value without touching the file system: the limits
    /// declared on the fields, then the rules between keys and the shape of
    /// names. Call [`Config::normalize`] first.
    pub fn check(&self) -> Result<(), ConfigError> {
        let value = serde_json::to_value(self)
            .map_err(|e| ConfigError::invalid("(configuration)", e.to_string()))?;
        let schema = schema();
        check_ranges(&schema, &schema, &value, "")?;
        self.gpu()?;

        let label = &self.model.label;
        if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "model.label",
                "must be a name of 1 to 100 printable characters, e.g. \"MedGemma 1.5 4B\"",
            ));
        }
        let engine = &self.engine;
        if engine.max_new_tokens >= engine.context_length {
            return Err(ConfigError::invalid(
                "engine.max_new_tokens",
                format!(
                    "must be below engine.context_length ({}) (got {})",
                    engine.context_length, engine.max_new_tokens
                ),
            ));
        }
        let server = &self.server;
        socket_path_shape("server.ui_socket", &server.ui_socket)?;
        if let Some(admin) = &server.admin_socket {
            socket_path_shape("server.admin_socket", admin)?;
            if admin == &server.ui_socket {
                return Err(ConfigError::invalid(
                    "server.admin_socket",
                    "must differ from server.ui_socket: the admin socket is never reachable from the browser",
                ));
            }
        }
        for host in &server.allowed_hosts {
            if !is_host_name(host) {
                return Err(ConfigError::invalid(
                    "server.allowed_hosts",
                    format!(
                        "{host:?} is not a bare host name; write names like \"medgemma.ward3.example\" without scheme, port or path"
                    ),
                ));
            }
        }
        for origin in &server.allowed_origins {
            if split_origin(origin).is_none() {
                return Err(ConfigError::invalid(
                    "server.allowed_origins",
                    format!(
                        "{origin:?} is not an origin; write the scheme, host name and optional port only, e.g. \"https://medgemma.ward3.example\""
                    ),
                ));
            }
        }
        let auth = &self.auth;
        absolute("auth.accounts_dir", &auth.accounts_dir)?;
        if auth.sso_header.is_empty()
            || !auth
                .sso_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                "auth.sso_header",
                "must be a header name of letters, digits and '-', e.g. \"X-Remote-User\"",
            ));
        }
        if auth.mode == super::AuthMode::Sso
            && auth
                .sso_proxy_user
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "auth.sso_proxy_user",
                "mode = \"sso\" needs the user the reverse proxy runs as (e.g. \"www-data\"): the header is trusted from that peer only",
            ));
        }
        let audit = &self.audit;
        for (key, path) in [
            ("audit.dir", &audit.dir),
            ("audit.key_file", &audit.key_file),
            ("audit.content_key_file", &audit.content_key_file),
        ] {
            absolute(key, path)?;
        }
        let user = &self.sandbox.user;
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
        Ok(())
    }

    /// Checks the paths the configuration names, as far as they can be
    /// checked before the daemon opens them: the model (unless `model` is
    /// false: the scripted test double has none), the tokenizer, the system
    /// prompt's size, the socket and audit directories, the sandbox's
    /// directories.
    pub fn check_files(&self, model: bool) -> Result<(), ConfigError> {
        if model {
            model_path(&self.model.path)?;
        }
        if let Some(tok) = &self.model.tokenizer_path
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
        if let Some(prompt) = &self.model.system_prompt_file {
            let key = "model.system_prompt_file";
            let meta = std::fs::metadata(prompt).map_err(|e| {
                ConfigError::invalid(key, format!("cannot read {}: {e}", prompt.display()))
            })?;
            if !meta.is_file() || meta.len() > MAX_SYSTEM_PROMPT_BYTES {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} must be a text file of at most {} KiB",
                        prompt.display(),
                        MAX_SYSTEM_PROMPT_BYTES / 1024
                    ),
                ));
            }
        }
        let sockets = std::iter::once(("server.ui_socket", &self.server.ui_socket)).chain(
            self.server
                .admin_socket
                .iter()
                .map(|s| ("server.admin_socket", s)),
        );
        for (key, socket) in sockets {
            match socket.parent() {
                Some(dir) if dir.is_dir() => {}
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "the directory of {} does not exist; create it or choose another path",
                            socket.display()
                        ),
                    ));
                }
            }
        }
        existing_dir("audit.dir", &self.audit.dir)?;
        if let Some(dir) = &self.answers.styles_dir {
            existing_dir("answers.styles_dir", dir)?;
            for style in super::AnswerStyle::ALL {
                for language in LANGUAGES {
                    let file = dir.join(style_file_name(style, language));
                    let ok = std::fs::metadata(&file)
                        .is_ok_and(|m| m.is_file() && m.len() <= MAX_SYSTEM_PROMPT_BYTES);
                    if !ok {
                        return Err(ConfigError::invalid(
                            "answers.styles_dir",
                            format!(
                                "{} must be a text file of at most {} KiB (one preset per style and language: {})",
                                file.display(),
                                MAX_SYSTEM_PROMPT_BYTES / 1024,
                                preset_names()
                            ),
                        ));
                    }
                }
            }
        }
        for (key, dir) in [
            ("sandbox.state_dir", &self.sandbox.state_dir),
            ("sandbox.cache_dir", &self.sandbox.cache_dir),
        ] {
            if let Some(dir) = dir {
                existing_dir(key, dir)?;
            }
        }
        Ok(())
    }
}

/// The UI languages a preset exists for (`<style>.<language>.txt`).
pub const LANGUAGES: [&str; 2] = ["en", "zh"];

/// The file name of a style preset, e.g. `structured.zh.txt`.
pub fn style_file_name(style: super::AnswerStyle, language: &str) -> String {
    format!("{}.{language}.txt", style.as_str())
}

fn preset_names() -> String {
    super::AnswerStyle::ALL
        .iter()
        .flat_map(|s| LANGUAGES.iter().map(|l| style_file_name(*s, l)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits an origin (`scheme://host[:port]`, lower case) into its scheme,
/// host name and port (the scheme's default when absent); `None` when it
/// is not one.
pub fn split_origin(origin: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (rest, default),
    };
    is_host_name(host).then_some((scheme, host, port))
}

/// The declared upper limit of a numeric key, e.g.
/// `maximum("engine.max_concurrent_generations") == Some(32)`: for callers
/// that size things by a limit (`medgemmactl gpu`), so it has one source.
pub fn maximum(key: &str) -> Option<u64> {
    let root = schema();
    let mut node = &root;
    for part in key.split('.') {
        node = resolve(&root, node).get("properties")?.get(part)?;
    }
    resolve(&root, node).get("maximum")?.as_u64()
}

/// Walks `schema` (resolving `$ref`s against `root`) alongside `value` and
/// checks every number against its declared `minimum`/`maximum`.
fn check_ranges(
    root: &Value,
    schema: &Value,
    value: &Value,
    prefix: &str,
) -> Result<(), ConfigError> {
    let schema = resolve(root, schema);
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, prop) in props {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(v) = value.get(key) else {
            continue;
        };
        let prop = resolve(root, prop);
        if v.is_object() {
            check_ranges(root, prop, v, &dotted)?;
            continue;
        }
        let Some(n) = v.as_f64() else {
            continue;
        };
        let min = prop.get("minimum").and_then(Value::as_f64);
        let max = prop.get("maximum").and_then(Value::as_f64);
        if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
            let unit = prop
                .get("x-unit")
                .and_then(Value::as_str)
                .map(|u| format!(" {u}"))
                .unwrap_or_default();
            let show = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x}"));
            return Err(ConfigError::invalid(
                dotted,
                format!(
                    "must be between {} and {}{unit} (got {v})",
                    show(min),
                    show(max)
                ),
            ));
        }
    }
    Ok(())
}

fn absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{} must be an absolute path", path.display()),
        ))
    }
}

fn existing_dir(key: &str, dir: &Path) -> Result<(), ConfigError> {
    if dir.is_absolute() && dir.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "{} must be an existing directory given as an absolute path",
                dir.display()
            ),
        ))
    }
}

fn socket_path_shape(key: &str, path: &Path) -> Result<(), ConfigError> {
    absolute(key, path)?;
    if path.as_os_str().len() > SUN_PATH_MAX {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is longer than the {SUN_PATH_MAX} bytes a Unix socket path may have",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn model_path(path: &Path) -> Result<(), ConfigError> {
    const KEY: &str = "model.path";
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(ConfigError::invalid(
                KEY,
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
            KEY,
            format!(
                "{} is neither a model directory nor a .gguf file",
                path.display()
            ),
        ))
    } else {
        Err(ConfigError::invalid(
            KEY,
            format!(
                "{} does not exist; give the model directory or the .gguf file",
                path.display()
            ),
        ))
    }
}

/// A bare DNS name or IPv4 address: letters, digits, '-' and '.'.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_NAME
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

    fn config(extra_engine: &str) -> Config {
        let text = format!(
            "[model]\npath = \"/srv/m.gguf\"\nlabel = \" Demo \"\ndemo = true\n\n[engine]\n{extra_engine}\n\n[server]\nallowed_hosts = [\"MedGemma.Ward3.example\"]\n"
        );
        let mut c = Config::from_toml(&text, Path::new("c.toml")).unwrap();
        c.normalize();
        c
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = config("");
        c.check().unwrap();
        assert_eq!(c.engine.context_length, 8192);
        assert_eq!(c.engine.queue_length, 8);
        assert_eq!(c.engine.max_concurrent_generations, 1);
        assert_eq!(c.server.listen_port, 6006);
        assert_eq!(c.server.ui_socket, Path::new(crate::paths::UI_SOCKET));
        assert_eq!(c.audit.dir, Path::new(crate::paths::AUDIT_DIR));
        assert_eq!(c.model.label, "Demo");
        assert_eq!(c.server.allowed_hosts, ["medgemma.ward3.example"]);
    }

    #[test]
    fn limits_come_from_the_declared_ranges_and_name_the_key() {
        for (line, key, message) in [
            (
                "max_concurrent_generations = 33",
                "engine.max_concurrent_generations",
                "must be between 1 and 32 (got 33)",
            ),
            (
                "max_concurrent_generations = 0",
                "engine.max_concurrent_generations",
                "must be between 1 and 32 (got 0)",
            ),
            (
                "queue_length = 0",
                "engine.queue_length",
                "must be between 1 and 256 (got 0)",
            ),
            (
                "context_length = 8",
                "engine.context_length",
                "must be between 32 and 131072 tokens (got 8)",
            ),
        ] {
            let err = config(line).check().unwrap_err();
            assert_eq!(err.key(), Some(key), "{line}: {err}");
            assert!(err.to_string().contains(message), "{line}: {err}");
        }
        config("max_concurrent_generations = 32").check().unwrap();
    }

    #[test]
    fn declared_limits_can_be_read_by_key() {
        assert_eq!(maximum("engine.max_concurrent_generations"), Some(32));
        assert_eq!(maximum("engine.context_length"), Some(131_072));
        assert_eq!(maximum("engine.backend"), None);
        assert_eq!(maximum("nope.key"), None);
    }

    #[test]
    fn rules_between_keys_and_names_are_checked() {
        let err = config("context_length = 512\nmax_new_tokens = 512")
            .check()
            .unwrap_err();
        assert_eq!(err.key(), Some("engine.max_new_tokens"), "{err}");
        let mut c = config("");
        c.server.allowed_hosts = vec!["http://x".into()];
        assert_eq!(c.check().unwrap_err().key(), Some("server.allowed_hosts"));
        let mut c = config("");
        c.sandbox.user = "root".into();
        assert_eq!(c.check().unwrap_err().key(), Some("sandbox.user"));
        let mut c = config("");
        c.server.admin_socket = Some(c.server.ui_socket.clone());
        assert_eq!(c.check().unwrap_err().key(), Some("server.admin_socket"));
        let mut c = config("");
        c.model.label = String::new();
        assert_eq!(c.check().unwrap_err().key(), Some("model.label"));
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
            assert_eq!(err.key(), Some("engine.device"), "{bad:?}: {err}");
        }
        let mig = GpuSelector::parse("MIG-5b1a9e4c-0d3f-4e2a-9c1b-7a6d5e4f3a2b").unwrap_err();
        assert!(
            mig.to_string().contains("MIG instances are not supported"),
            "{mig}"
        );
        let err = config("device = \"gpu0\"").check().unwrap_err();
        assert!(err.to_string().contains("nvidia-smi -L"), "{err}");
        assert_eq!(
            config("device = \"1\"").gpu().unwrap(),
            GpuSelector::Index(1)
        );
    }

    #[test]
    fn files_are_checked_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("");
        c.model.path = dir.path().join("absent.gguf");
        c.server.ui_socket = dir.path().join("ui.sock");
        c.audit.dir = dir.path().to_owned();
        let err = c.check_files(true).unwrap_err();
        assert_eq!(err.key(), Some("model.path"), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        c.check_files(false).unwrap();
        std::fs::write(&c.model.path, b"GGUF").unwrap();
        c.check_files(true).unwrap();
        c.sandbox.cache_dir = Some(dir.path().join("nope"));
        assert_eq!(
            c.check_files(true).unwrap_err().key(),
            Some("sandbox.cache_dir")
        );
        c.sandbox.cache_dir = None;
        let big = dir.path().join("prompt.txt");
        std::fs::write(&big, vec![b'a'; 65 * 1024]).unwrap();
        c.model.system_prompt_file = Some(big);
        assert_eq!(
            c.check_files(true).unwrap_err().key(),
            Some("model.system_prompt_file")
        );
    }

    #[test]
    fn auth_and_origins_are_checked() {
        let c = config("");
        assert_eq!(
            c.auth.mode,
            super::super::AuthMode::Accounts,
            "accounts by default"
        );
        assert_eq!(c.auth.idle_logout_secs, 900);
        let mut c = config("");
        c.auth.mode = super::super::AuthMode::Sso;
        assert_eq!(c.check().unwrap_err().key(), Some("auth.sso_proxy_user"));
        c.auth.sso_proxy_user = Some("www-data".into());
        c.check().unwrap();
        c.auth.sso_header = "X Remote".into();
        assert_eq!(c.check().unwrap_err().key(), Some("auth.sso_header"));
        let mut c = config("");
        c.server.allowed_origins = vec!["https://medgemma.ward3.example".into()];
        c.check().unwrap();
        for bad in [
            "medgemma.ward3.example",
            "ftp://x.example",
            "https://x.example/path",
            "https://x.example:0",
        ] {
            c.server.allowed_origins = vec![bad.into()];
            assert_eq!(
                c.check().unwrap_err().key(),
                Some("server.allowed_origins"),
                "{bad}"
            );
        }
        assert_eq!(
            split_origin("https://a.example"),
            Some(("https", "a.example", 443))
        );
        assert_eq!(
            split_origin("http://a.example:8443"),
            Some(("http", "a.example", 8443))
        );
        let err = config("").to_owned();
        let mut c = err;
        c.auth.idle_logout_secs = 0;
        assert_eq!(c.check().unwrap_err().key(), Some("auth.idle_logout_secs"));
    }

    #[test]
    fn a_styles_dir_needs_every_preset() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("");
        c.model.path = dir.path().join("m.gguf");
        std::fs::write(&c.model.path, b"GGUF").unwrap();
        c.server.ui_socket = dir.path().join("ui.sock");
        c.audit.dir = dir.path().to_owned();
        c.answers.styles_dir = Some(dir.path().to_owned());
        let err = c.check_files(true).unwrap_err();
        assert_eq!(err.key(), Some("answers.styles_dir"), "{err}");
        for style in super::super::AnswerStyle::ALL {
            for lang in LANGUAGES {
                std::fs::write(dir.path().join(style_file_name(style, lang)), "x").unwrap();
            }
        }
        c.check_files(true).unwrap();
        // The packaged presets are complete.
        c.answers.styles_dir =
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/styles"));
        c.check_files(true).unwrap();
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
