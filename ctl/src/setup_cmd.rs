//! `medgemmactl setup`: everything the daemon needs before its first start.
//!
//! 1. Prerequisites: the model path exists, the state directory can be made.
//! 2. Validate the model with the engine's own readers without loading
//!    tensors: a directory's `config.json` and safetensors headers (and
//!    `tokenizer.json`), or a GGUF file's header, configuration and
//!    tokenizer.
//! 3. Pin the SHA-256 of every model file (`<state>/model.pins.json`); on a
//!    re-run, re-hash and refuse a file that changed or was half copied.
//! 4. Pick the backend from the hardware: `auto` (CUDA, with the daemon's
//!    own fallback) when NVML finds a GPU whose free memory holds the
//!    model's budget (`medgemma_model::budget`, as the daemon computes it),
//!    else `cpu`, with the reason and the numbers.
//! 5. Create the audit keys once: the chain key (its initial key is shown
//!    once, to be kept offline), the content key, the export signing key.
//!    Existing keys are kept.
//! 6. Write the daemon's configuration (kept if it exists) and print next steps.

use std::fs::{DirBuilder, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{EXIT_DEGRADED, EXIT_OK, Report, note};

/// `setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The model: a directory (config.json + *.safetensors) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// A tokenizer.json to use instead of the one with the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Where to write the daemon's configuration (default: the global --config path).
    #[arg(long)]
    config_out: Option<PathBuf>,
    /// The state directory: audit log, keys, pins.
    #[arg(long, default_value = "/var/lib/medgemma")]
    state_dir: PathBuf,
    /// The name clinicians see.
    #[arg(long, default_value = "MedGemma 1.5 4B")]
    label: String,
    /// Mark the model as a small demo model (not a medical model).
    #[arg(long)]
    demo: bool,
    /// The directory of the sockets.
    #[arg(long, default_value = "/run/medgemma")]
    run_dir: PathBuf,
}

/// The pins file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pins {
    /// Format tag.
    pub format: String,
    /// The model path as given.
    pub model: PathBuf,
    /// One entry per file.
    pub files: Vec<Pin>,
}

/// One pinned file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

const PINS_FORMAT: &str = "medgemma-pins/1";

/// Runs `setup`.
pub fn run(config: &Path, a: SetupArgs) -> Report {
    match setup(config, &a) {
        Ok(r) | Err(r) => r,
    }
}

fn fail(code: u8, message: String) -> Report {
    Report {
        code,
        json: serde_json::json!({ "ok": false, "error": message }),
        text: format!("error: {message}"),
    }
}

fn setup(config: &Path, a: &SetupArgs) -> Result<Report, Report> {
    let config_out = a.config_out.clone().unwrap_or_else(|| config.to_owned());
    // 1. Prerequisites.
    let model = std::fs::canonicalize(&a.model).map_err(|e| {
        Report::error(format!(
            "the model {} cannot be used: {e}",
            a.model.display()
        ))
    })?;
    let tokenizer = a
        .tokenizer
        .as_ref()
        .map(std::fs::canonicalize)
        .transpose()
        .map_err(|e| Report::error(format!("the tokenizer cannot be used: {e}")))?;
    mkdir(&a.state_dir, 0o755)?;
    let state = std::fs::canonicalize(&a.state_dir)
        .map_err(|e| Report::error(format!("{}: {e}", a.state_dir.display())))?;

    // 3. Pins (checked against an earlier setup first).
    let mut files = model_files(&model)
        .map_err(|e| Report::error(format!("cannot list the model files: {e}")))?;
    if let Some(t) = &tokenizer {
        files.push(t.clone());
    }
    let pins_path = state.join("model.pins.json");
    let old: Option<Pins> = std::fs::read(&pins_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut pins = Vec::new();
    for f in &files {
        pins.push(
            hash_file(f).map_err(|e| Report::error(format!("cannot read {}: {e}", f.display())))?,
        );
    }
    let repinned = if let Some(old) = &old {
        for p in &old.files {
            match pins.iter().find(|n| n.path == p.path) {
                Some(n) if n.size != p.size => {
                    return Err(fail(
                        EXIT_DEGRADED,
                        format!(
                            "{} has {} bytes but was pinned with {}: it is half copied or was replaced; copy it again from the original medium",
                            p.path.display(),
                            n.size,
                            p.size
                        ),
                    ));
                }
                Some(n) if n.sha256 != p.sha256 => {
                    return Err(fail(
                        EXIT_DEGRADED,
                        format!(
                            "{} does not match its pinned SHA-256: the file was altered; copy it again from the original medium (or delete {} to pin a new model on purpose)",
                            p.path.display(),
                            pins_path.display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(fail(
                        EXIT_DEGRADED,
                        format!(
                            "{} was pinned but is missing; copy it again (or delete {} to pin a new model on purpose)",
                            p.path.display(),
                            pins_path.display()
                        ),
                    ));
                }
            }
        }
        false
    } else {
        true
    };
    // 2. Validate (after the pin comparison, so a half-copied file is named as such).
    let summary = validate(&model, tokenizer.as_deref())
        .map_err(|why| fail(EXIT_DEGRADED, format!("the model does not validate: {why}")))?;
    note(format_args!("model validates: {summary}"));
    let doc = Pins {
        format: PINS_FORMAT.to_owned(),
        model: model.clone(),
        files: pins.clone(),
    };
    if repinned {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        write_new_or_replace(&pins_path, text.as_bytes(), 0o644)?;
    }

    // 4. Backend, from the hardware.
    let (backend, backend_reason, concurrent) = pick_backend(&model);
    note(format_args!("backend: {backend}: {backend_reason}"));

    // 5. Keys and the audit directory.
    let audit_dir = state.join("audit");
    mkdir(&audit_dir, 0o700)?;
    let key_dir = state.join("audit-key");
    mkdir(&key_dir, 0o700)?;
    let key_file = key_dir.join("current");
    let content_key = key_dir.join("content");
    let export_dir = state.join("export-key");
    mkdir(&export_dir, 0o700)?;
    let signing_key = export_dir.join("signing.pk8");
    let signing_pub = export_dir.join("signing.pub");
    let initial = if key_file.exists() {
        None
    } else {
        Some(
            medgemma_audit::create_key(&key_file)
                .map_err(|e| Report::error(format!("cannot create the audit key: {e}")))?,
        )
    };
    let content_created = !content_key.exists();
    if content_created {
        medgemma_audit::create_content_key(&content_key)
            .map_err(|e| Report::error(format!("cannot create the content key: {e}")))?;
    }
    let signing_created = !signing_key.exists();
    if signing_created {
        let pk8 = medgemma_audit::generate_signing_key()
            .map_err(|e| Report::error(format!("cannot create the signing key: {e}")))?;
        write_new_or_replace(&signing_key, &pk8, 0o600)?;
        let public =
            medgemma_audit::signing_public_key(&pk8).map_err(|e| Report::error(e.to_string()))?;
        write_new_or_replace(
            &signing_pub,
            format!("{}\n", hex::encode(public)).as_bytes(),
            0o644,
        )?;
    }

    // 6. Configuration.
    let config_written = if config_out.exists() {
        false
    } else {
        if let Some(dir) = config_out.parent().filter(|d| !d.as_os_str().is_empty()) {
            mkdir(dir, 0o755)?;
        }
        let engine = EngineChoice {
            backend,
            concurrent,
        };
        let text = daemon_config(a, &model, tokenizer.as_deref(), &state, &pins_path, &engine);
        write_new_or_replace(&config_out, text.as_bytes(), 0o644)?;
        true
    };

    let mut text = String::new();
    text.push_str(&format!(
        "model:   {} validates ({summary})\n",
        model.display()
    ));
    text.push_str(&format!(
        "pins:    {} files {} in {}\n",
        pins.len(),
        if repinned {
            "pinned"
        } else {
            "match their pins"
        },
        pins_path.display()
    ));
    text.push_str(&format!("backend: {backend}: {backend_reason}\n"));
    match &initial {
        Some(k) => text.push_str(&format!(
            "\nAUDIT INITIAL KEY (shown once, never stored on this machine):\n\n    {}\n\nWrite it down or print it and keep it offline (a safe, not this server): only with it can an auditor prove that no audit record was altered.\n\n",
            k.display()
        )),
        None => text.push_str(&format!("audit:   key {} exists and was kept (its initial key was shown at the first setup)\n", key_file.display())),
    }
    text.push_str(&format!(
        "keys:    content key {} ({}), export signing key {} ({}), public key {}\n",
        content_key.display(),
        if content_created { "created" } else { "kept" },
        signing_key.display(),
        if signing_created { "created" } else { "kept" },
        signing_pub.display(),
    ));
    text.push_str(&format!(
        "config:  {} ({})\n\nNext steps:\n  1. chown -R medgemma: {} {} (the daemon's user owns the log and its key)\n  2. systemctl enable --now medgemmad\n  3. medgemmactl status, then medgemmactl doctor\n",
        config_out.display(),
        if config_written { "written" } else { "exists, kept: check that it names these paths" },
        audit_dir.display(),
        key_dir.display(),
    ));
    Ok(Report {
        code: EXIT_OK,
        text,
        json: serde_json::json!({
            "ok": true,
            "model": model,
            "validation": summary,
            "pins_file": pins_path,
            "pins": pins.iter().map(|p| serde_json::json!({"path": p.path, "size": p.size, "sha256": p.sha256})).collect::<Vec<_>>(),
            "pins_created": repinned,
            "backend": { "kind": backend, "reason": backend_reason, "max_concurrent_generations": concurrent },
            "audit_dir": audit_dir,
            "key_file": key_file,
            "initial_key": initial.as_ref().map(medgemma_audit::InitialKey::display),
            "initial_key_notice": initial.as_ref().map(|_| "shown once: keep it offline; only with it can the log be proven unaltered"),
            "content_key_file": content_key,
            "signing_key_file": signing_key,
            "signing_public_key_file": signing_pub,
            "config": config_out,
            "config_written": config_written,
        }),
    })
}

/// Checks the model with the engine's loader without loading it: the
/// configuration, every decoder tensor's presence, shape, dtype or
/// quantization and extent in its file, nothing left over; and the tokenizer.
pub fn validate(model: &Path, tokenizer: Option<&Path>) -> Result<String, String> {
    use medgemma_model::gguf::GgufFile;
    use medgemma_model::tokenizer::GemmaTokenizer;
    if let Some(t) = tokenizer {
        GemmaTokenizer::from_file(t).map_err(|e| e.to_string())?;
    }
    let v = medgemma_model::validate::validate_weights(model).map_err(|e| e.to_string())?;
    if tokenizer.is_none() {
        if model.is_dir() {
            let tok = model.join("tokenizer.json");
            if !tok.is_file() {
                return Err(format!(
                    "{} has no tokenizer.json; give --tokenizer",
                    model.display()
                ));
            }
            GemmaTokenizer::from_file(&tok).map_err(|e| e.to_string())?;
        } else {
            let file = GgufFile::open(model).map_err(|e| e.to_string())?;
            medgemma_model::gguf_tokenizer::tokenizer_from_gguf(&file)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(format!(
        "{}, {} layers, hidden size {}, {} tensors checked, {} parameters",
        if v.format == "gguf" {
            "GGUF"
        } else {
            "safetensors"
        },
        v.config.num_layers(),
        v.config.hidden_size,
        v.tensors,
        v.parameters
    ))
}

/// The files that make up a model (a directory's regular files, not hidden).
pub fn model_files(model: &Path) -> std::io::Result<Vec<PathBuf>> {
    if model.is_file() {
        return Ok(vec![model.to_owned()]);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(model)? {
        let e = e?;
        let name = e.file_name();
        if e.file_type()?.is_file() && !name.to_string_lossy().starts_with('.') {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

/// SHA-256 of a file, with progress on stderr for big files.
pub fn hash_file(path: &Path) -> std::io::Result<Pin> {
    let mut f = File::open(path)?;
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
            note(format_args!(
                "hashing {}: {} of {} MiB",
                path.display(),
                done >> 20,
                size >> 20
            ));
            next_report += 1 << 30;
        }
    }
    Ok(Pin {
        path: path.to_owned(),
        size: done,
        sha256: hex::encode(ctx.finish().as_ref()),
    })
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), Report> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Report::error(format!("cannot create {}: {e}", dir.display())))
}

fn write_new_or_replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Report> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Report::error(format!("cannot write {}: {e}", path.display())))
}

fn toml_str(p: &Path) -> String {
    toml_string(&p.display().to_string())
}

fn toml_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// The `[engine]` keys setup writes.
struct EngineChoice {
    backend: &'static str,
    /// `max_concurrent_generations`.
    concurrent: usize,
}

/// Conversations at once that setup configures when the GPU has room: a
/// ward's worth of clinicians asking at the same moment, each at the full
/// context. The daemon cuts it to what fits at every start.
const SETUP_CONCURRENT: usize = 8;

/// The backend to write, why, and how many conversations may generate at
/// once: the same budget the daemon checks before it loads on CUDA, against
/// each GPU's free memory now.
fn pick_backend(model: &Path) -> (&'static str, String, usize) {
    let cfg = crate::daemon_config::DaemonConfig {
        model: crate::daemon_config::ModelPart {
            path: Some(model.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (Some((need, _)), Some(mc)) = (
        crate::gpu_cmd::model_need(&cfg, SETUP_CONTEXT),
        crate::gpu_cmd::model_config(&cfg),
    ) else {
        return (
            "cpu",
            "the model's size could not be read; the CPU is the safe choice".to_owned(),
            1,
        );
    };
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(_) => {
            return (
                "cpu",
                format!(
                    "no NVIDIA driver (NVML cannot be loaded). {}",
                    crate::gpu_cmd::CPU_FALLBACK
                ),
                1,
            );
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut best: Option<(u32, String, u64)> = None;
    for i in 0..count {
        let Ok(d) = nvml.device_by_index(i) else {
            continue;
        };
        let free = d.memory_info().map(|m| m.free).unwrap_or(0);
        if best.as_ref().is_none_or(|b| free > b.2) {
            best = Some((i, d.name().unwrap_or_default(), free));
        }
    }
    let gib = medgemma_model::budget::gib;
    match best {
        None => (
            "cpu",
            format!(
                "the NVIDIA driver reports no GPU. {}",
                crate::gpu_cmd::CPU_FALLBACK
            ),
            1,
        ),
        Some((i, name, free)) if free >= need => {
            let req = medgemma_model::budget::BudgetRequest::new(
                SETUP_CONTEXT as usize,
                SETUP_CONCURRENT,
                medgemma_model::budget::DType::BF16,
            );
            let n = medgemma_model::budget::sequences_that_fit(&mc, &req, free).max(1);
            (
                "auto",
                format!(
                    "GPU {i} ({name}) has {} free and the model needs {} for {SETUP_CONTEXT} tokens of context, with room for {n} conversations generating at once: medgemmad uses CUDA, and falls back to the CPU with the reason if that changes",
                    gib(free),
                    gib(need)
                ),
                n,
            )
        }
        Some((i, name, free)) => (
            "cpu",
            format!(
                "GPU {i} ({name}) has only {} free but the model needs {} for {SETUP_CONTEXT} tokens of context; free GPU memory (medgemmactl gpu names the processes holding it) and run setup again",
                gib(free),
                gib(need)
            ),
            1,
        ),
    }
}

/// The context the setup budget is computed for: the daemon's default
/// `engine.context_length`.
const SETUP_CONTEXT: u64 = 8192;

fn daemon_config(
    a: &SetupArgs,
    model: &Path,
    tokenizer: Option<&Path>,
    state: &Path,
    pins: &Path,
    engine: &EngineChoice,
) -> String {
    let tok = tokenizer
        .map(|t| format!("tokenizer_path = {}\n", toml_str(t)))
        .unwrap_or_default();
    format!(
        "# Written by medgemmactl setup; every key is documented in medgemmad.example.toml.\n\n[model]\npath = {model}\n{tok}label = {label}\ndemo = {demo}\npins_file = {pins}\n\n[engine]\nbackend = {backend:?}\nmax_concurrent_generations = {concurrent}\n\n[server]\nui_socket = {ui}\nadmin_socket = {admin}\n\n[audit]\ndir = {audit}\nkey_file = {key}\ncontent_key_file = {content}\nsigning_key_file = {signing}\n",
        model = toml_str(model),
        backend = engine.backend,
        concurrent = engine.concurrent,
        label = toml_string(&a.label),
        demo = a.demo,
        pins = toml_str(pins),
        ui = toml_str(&a.run_dir.join("ui.sock")),
        admin = toml_str(&a.run_dir.join("admin.sock")),
        audit = toml_str(&state.join("audit")),
        key = toml_str(&state.join("audit-key/current")),
        content = toml_str(&state.join("audit-key/content")),
        signing = toml_str(&state.join("export-key/signing.pk8")),
    )
}
