//! `medgemmactl setup`: everything the daemon needs before its first start.
//!
//! 1. Prerequisites: the model path exists; the configuration already there
//!    (a packaged install) is read, else a new one is planned under
//!    `--state-dir`.
//! 2. Probe the model (`medgemma_model::probe`), pin the SHA-256 of every
//!    file; on a re-run, re-hash and refuse a file that changed or was half
//!    copied.
//! 3. Validate it with the engine's own readers without loading tensors
//!    (after the pins, so a half-copied file is named as such).
//! 4. Pick the backend from the hardware: `auto` (CUDA, with the daemon's
//!    own fallback) when NVML finds a GPU whose free memory holds the
//!    model's budget (`medgemma_model::budget`, as the daemon computes it)
//!    and the CUDA kernels can compile (the package's libdevice is in
//!    place), else `cpu`, with the reason and the numbers.
//! 5. Create the audit keys once, where the configuration says: the chain
//!    key (its initial key is shown once, to be kept offline), the content
//!    key, the export signing key. Existing keys are kept.
//! 6. Write the configuration by serialising its type: a new file when there
//!    is none; otherwise setup's own drop-in (`medgemmad.d/50-setup.toml`),
//!    so its choices take effect and the administrator's edits to the main
//!    file stay as they are. The result is read back and checked.
//! 7. With `--user`, the first account (as `medgemmactl user add`): there
//!    is no default account and no default password.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use medgemma_model::probe::ModelProbe;
use medgemma_protocol::config::{
    AnswersSection, AuditSection, AuthSection, BackendChoice, Config, EngineSection, ModelSection,
    SandboxSection, ServerSection,
};
use medgemma_protocol::paths;
use medgemma_protocol::pins::{Pin, Pins, hash_file};

use crate::daemon_config::DaemonConfig;
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
    /// The state directory of a new configuration: audit log, keys, pins.
    #[arg(long, default_value = paths::STATE_DIR)]
    state_dir: PathBuf,
    /// The name clinicians see (default: kept, or "MedGemma 1.5 4B" in a new configuration).
    #[arg(long)]
    label: Option<String>,
    /// Mark the model as a small demo model (not a medical model).
    #[arg(long)]
    demo: bool,
    /// The directory of the UI and admin sockets of a new configuration
    /// (default: the package's, /run/medgemma/ui.sock and /run/medgemma-admin/admin.sock).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Create the first account too (as `medgemmactl user add`; skipped when it exists).
    #[arg(long)]
    user: Option<String>,
    /// The first account's role.
    #[arg(long, value_enum, default_value = "clinician", requires = "user")]
    role: crate::user_cmd::RoleArg,
    /// Read the first account's password from standard input instead of the terminal.
    #[arg(long, requires = "user")]
    password_stdin: bool,
}

/// The label of a new configuration.
const DEFAULT_LABEL: &str = "MedGemma 1.5 4B";

/// The keys setup decides; on an existing configuration only these go into its drop-in.
const SETUP_KEYS: &[&str] = &[
    "model.path",
    "model.tokenizer_path",
    "model.label",
    "model.demo",
    "model.pins_file",
    "engine.backend",
    "engine.max_concurrent_generations",
];

/// Conversations at once that setup configures when the GPU has room: a
/// ward's worth of clinicians asking at the same moment, each at the full
/// context. The daemon cuts it to what fits at every start.
const SETUP_CONCURRENT: usize = 8;

/// Runs `setup`.
pub fn run(config: &Path, args: SetupArgs) -> Report {
    match setup(config, &args) {
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

/// The backend setup chose and why.
struct BackendPick {
    kind: BackendChoice,
    reason: String,
    concurrent: usize,
}

/// The keys setup made or found.
struct Keys {
    initial: Option<medgemma_audit::InitialKey>,
    content_created: bool,
    signing_created: bool,
    signing_public: Option<PathBuf>,
}

fn setup(config_path: &Path, a: &SetupArgs) -> Result<Report, Report> {
    // 1. Prerequisites.
    let config_out = a
        .config_out
        .clone()
        .unwrap_or_else(|| config_path.to_owned());
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
    let existing = DaemonConfig::load(&config_out)
        .map_err(|e| Report::error(format!("the configuration cannot be read: {e}")))?
        .config;
    let mut config = match &existing {
        Some(c) => c.clone(),
        None => {
            mkdir(&a.state_dir, 0o755)?;
            let state = std::fs::canonicalize(&a.state_dir)
                .map_err(|e| Report::error(format!("{}: {e}", a.state_dir.display())))?;
            new_config(&state, a.run_dir.as_deref(), &model)
        }
    };
    let pins_path = config
        .model
        .pins_file
        .clone()
        .unwrap_or_else(|| a.state_dir.join("model.pins.json"));

    // 2. Probe and pin (checked against an earlier setup first).
    let probe = ModelProbe::open(&model)
        .map_err(|e| fail(EXIT_DEGRADED, format!("the model does not validate: {e}")))?;
    let mut files = probe.files.clone();
    files.extend(tokenizer.iter().cloned());
    let pins = pin(&files, &pins_path)?;

    // 3. Validate.
    let config_of_model = probe.config.clone();
    let summary = validate(probe, tokenizer.as_deref())
        .map_err(|why| fail(EXIT_DEGRADED, format!("the model does not validate: {why}")))?;
    note(format_args!("model validates: {summary}"));

    // 4. Backend, from the hardware.
    let backend = pick_backend(&config_of_model);
    note(format_args!(
        "backend: {}: {}",
        backend.kind.as_str(),
        backend.reason
    ));

    // 5. Keys, where the configuration says.
    let keys = create_keys(&config.audit)?;

    // 6. The configuration.
    config.model.path = model.clone();
    if tokenizer.is_some() {
        config.model.tokenizer_path = tokenizer.clone();
    }
    if let Some(label) = &a.label {
        config.model.label = label.clone();
    }
    config.model.demo = a.demo;
    config.model.pins_file = Some(pins_path.clone());
    config.engine.backend = backend.kind;
    config.engine.max_concurrent_generations = backend.concurrent;
    let written = write_config(&config_out, existing.is_some(), &config)?;

    // 7. The first account, when asked for.
    let account = match &a.user {
        Some(name) => Some(first_account(&config_out, name, a)?),
        None => None,
    };

    let mut done = report(
        &model,
        &summary,
        &pins,
        &pins_path,
        &backend,
        &config.audit,
        &keys,
        &written,
    );
    if let Some(line) = account {
        done.text.push_str(&format!("account: {line}\n"));
        done.json["account"] = serde_json::Value::String(line);
    }
    Ok(done)
}

/// Creates the first account unless one of that name exists; says what happened.
fn first_account(config: &Path, name: &str, a: &SetupArgs) -> Result<String, Report> {
    let cfg = DaemonConfig::load(config)
        .map_err(|e| Report::error(format!("the configuration cannot be read: {e}")))?;
    let existing = medgemma_protocol::accounts::AccountsFile::read(&cfg.auth().accounts_dir)
        .map_err(|e| Report::error(e.to_string()))?;
    if existing.by_name(name).is_some() {
        return Ok(format!("{name} exists and was kept"));
    }
    let password = crate::user_cmd::read_password(a.password_stdin).map_err(Report::error)?;
    let (account, _) = crate::user_cmd::add_account(&cfg, name, a.role.into(), Some(&password))
        .map_err(Report::error)?;
    Ok(format!(
        "{} created ({}, id {})",
        account.name,
        account.role.as_str(),
        account.id
    ))
}

/// A configuration for a machine without one: paths under `state`, the
/// sockets in `run_dir` or the package's places.
fn new_config(state: &Path, run_dir: Option<&Path>, model: &Path) -> Config {
    let (ui_socket, admin_socket) = match run_dir {
        Some(d) => (d.join("ui.sock"), d.join("admin.sock")),
        None => (paths::UI_SOCKET.into(), paths::ADMIN_SOCKET.into()),
    };
    Config {
        model: ModelSection {
            path: model.to_owned(),
            tokenizer_path: None,
            label: DEFAULT_LABEL.to_owned(),
            demo: false,
            system_prompt_file: None,
            pins_file: Some(state.join("model.pins.json")),
            on_pin_mismatch: Default::default(),
        },
        engine: EngineSection::default(),
        server: ServerSection {
            ui_socket,
            admin_socket: Some(admin_socket),
            ..ServerSection::default()
        },
        audit: AuditSection {
            dir: state.join("audit"),
            key_file: state.join("audit-key/current"),
            content_key_file: state.join("audit-key/content"),
            signing_key_file: Some(state.join("export-key/signing.pk8")),
            ..AuditSection::default()
        },
        sandbox: SandboxSection::default(),
        answers: AnswersSection {
            terms_dir: Some(state.join("terms")),
            ..AnswersSection::default()
        },
        auth: AuthSection {
            accounts_dir: state.join("accounts"),
            ..AuthSection::default()
        },
    }
}

/// What the pins step did.
struct Pinned {
    files: Vec<Pin>,
    created: bool,
}

/// Hashes `files`; compares them with the pins of an earlier setup (a
/// changed or missing file is refused, naming it), or writes new pins.
fn pin(files: &[PathBuf], pins_path: &Path) -> Result<Pinned, Report> {
    let mut pins = Vec::with_capacity(files.len());
    for f in files {
        let pin = hash_file(f, |done, size| {
            note(format_args!(
                "hashing {}: {} of {} MiB",
                f.display(),
                done >> 20,
                size >> 20
            ));
        })
        .map_err(|e| Report::error(format!("cannot read {}: {e}", f.display())))?;
        pins.push(pin);
    }
    let Ok(old) = Pins::read(pins_path) else {
        let model = files.first().cloned().unwrap_or_default();
        if let Some(dir) = pins_path.parent() {
            mkdir(dir, 0o755)?;
        }
        write_new_or_replace(
            pins_path,
            Pins::new(model, pins.clone()).to_json().as_bytes(),
            0o644,
        )?;
        return Ok(Pinned {
            files: pins,
            created: true,
        });
    };
    for p in &old.files {
        let again = || {
            format!(
                "copy it again from the original medium (or delete {} to pin a new model on purpose)",
                pins_path.display()
            )
        };
        match pins.iter().find(|n| n.path == p.path) {
            Some(n) if n.size != p.size => {
                return Err(fail(
                    EXIT_DEGRADED,
                    format!(
                        "{} has {} bytes but was pinned with {}: it is half copied or was replaced; {}",
                        p.path.display(),
                        n.size,
                        p.size,
                        again()
                    ),
                ));
            }
            Some(n) if n.sha256 != p.sha256 => {
                return Err(fail(
                    EXIT_DEGRADED,
                    format!(
                        "{} does not match its pinned SHA-256: the file was altered; {}",
                        p.path.display(),
                        again()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                return Err(fail(
                    EXIT_DEGRADED,
                    format!(
                        "{} was pinned but is missing; {}",
                        p.path.display(),
                        again()
                    ),
                ));
            }
        }
    }
    Ok(Pinned {
        files: pins,
        created: false,
    })
}

/// Checks the model with the engine's loader without loading it: the
/// configuration, every decoder tensor's presence, shape, dtype or
/// quantization and extent in its file, nothing left over; and the tokenizer.
pub fn validate(probe: ModelProbe, tokenizer: Option<&Path>) -> Result<String, String> {
    use medgemma_model::tokenizer::GemmaTokenizer;
    if let Some(t) = tokenizer {
        GemmaTokenizer::from_file(t).map_err(|e| e.to_string())?;
    } else if let Some(t) = &probe.tokenizer {
        GemmaTokenizer::from_file(t).map_err(|e| e.to_string())?;
    } else if probe.format == medgemma_model::probe::ModelFormat::Safetensors {
        return Err(format!(
            "{} has no tokenizer.json; give --tokenizer",
            probe.path.display()
        ));
    } else {
        let file = medgemma_model::gguf::GgufFile::open(&probe.path).map_err(|e| e.to_string())?;
        medgemma_model::gguf_tokenizer::tokenizer_from_gguf(&file).map_err(|e| e.to_string())?;
    }
    let directory = (probe.format == medgemma_model::probe::ModelFormat::Safetensors)
        .then(|| probe.path.clone());
    let v = medgemma_model::validate::validate_probed(probe).map_err(|e| e.to_string())?;
    let mut summary = format!(
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
    );
    // The image path: the vision tower's tensors, checked the same way.
    let vision = match &directory {
        Some(dir) => medgemma_model::vision::validate(dir).map_err(|e| e.to_string())?,
        None => None,
    };
    match vision {
        Some(t) => summary.push_str(&format!(
            "; vision tower: {} layers, {} tensors checked, {} parameters (images enabled)",
            t.config.num_layers, t.tensors, t.parameters
        )),
        None => summary.push_str("; no vision tower (text only)"),
    }
    Ok(summary)
}

/// Creates the keys `audit` names that do not exist yet.
fn create_keys(audit: &AuditSection) -> Result<Keys, Report> {
    mkdir(&audit.dir, 0o700)?;
    for key in [&audit.key_file, &audit.content_key_file] {
        if let Some(dir) = key.parent() {
            mkdir(dir, 0o700)?;
        }
    }
    let initial = if audit.key_file.exists() {
        None
    } else {
        Some(
            medgemma_audit::create_key(&audit.key_file)
                .map_err(|e| Report::error(format!("cannot create the audit key: {e}")))?,
        )
    };
    let content_created = !audit.content_key_file.exists();
    if content_created {
        medgemma_audit::create_content_key(&audit.content_key_file)
            .map_err(|e| Report::error(format!("cannot create the content key: {e}")))?;
    }
    let mut signing_created = false;
    let mut signing_public = None;
    if let Some(signing) = &audit.signing_key_file {
        if let Some(dir) = signing.parent() {
            mkdir(dir, 0o700)?;
        }
        let public = signing.with_extension("pub");
        if !signing.exists() {
            let pk8 = medgemma_audit::generate_signing_key()
                .map_err(|e| Report::error(format!("cannot create the signing key: {e}")))?;
            write_new_or_replace(signing, &pk8, 0o600)?;
            let key = medgemma_audit::signing_public_key(&pk8)
                .map_err(|e| Report::error(e.to_string()))?;
            write_new_or_replace(&public, format!("{}\n", hex::encode(key)).as_bytes(), 0o644)?;
            signing_created = true;
        }
        signing_public = Some(public);
    }
    Ok(Keys {
        initial,
        content_created,
        signing_created,
        signing_public,
    })
}

/// Where the configuration went.
struct Written {
    /// The file written.
    path: PathBuf,
    /// The main file was new (else a drop-in beside an existing one).
    new_file: bool,
}

/// Writes `config`: the whole file when `existed` is false, else setup's
/// drop-in with [`SETUP_KEYS`]; then reads the result back the way the
/// daemon will and checks it.
fn write_config(path: &Path, existed: bool, config: &Config) -> Result<Written, Report> {
    let header = "# Written by medgemmactl setup; every key is documented in /usr/share/doc/medgemma/examples/medgemmad.example.toml\n# (medgemmactl config example prints it).\n";
    let invalid = |e: medgemma_protocol::config::ConfigError| {
        Report::error(format!(
            "the configuration setup would write is invalid: {e}"
        ))
    };
    let (target, text) = if existed {
        let dir = paths::drop_in_dir(path);
        mkdir(&dir, 0o755)?;
        let text = config.to_drop_in(SETUP_KEYS, &format!("{header}# Read after {}; to override a choice, edit this file or add a later drop-in (e.g. 90-local.toml).\n", path.display()))
            .map_err(invalid)?;
        (dir.join(paths::SETUP_DROP_IN), text)
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            mkdir(dir, 0o755)?;
        }
        (path.to_owned(), config.to_toml(header).map_err(invalid)?)
    };
    write_new_or_replace(&target, text.as_bytes(), 0o644)?;
    let mut back = Config::load(path).map_err(invalid)?.config;
    back.normalize();
    back.check().map_err(invalid)?;
    Ok(Written {
        path: target,
        new_file: !existed,
    })
}

#[allow(clippy::too_many_arguments)] // one argument per section of the report
fn report(
    model: &Path,
    summary: &str,
    pins: &Pinned,
    pins_path: &Path,
    backend: &BackendPick,
    audit: &AuditSection,
    keys: &Keys,
    written: &Written,
) -> Report {
    let mut text = format!("model:   {} validates ({summary})\n", model.display());
    text.push_str(&format!(
        "pins:    {} files {} in {}\n",
        pins.files.len(),
        if pins.created {
            "pinned"
        } else {
            "match their pins"
        },
        pins_path.display()
    ));
    text.push_str(&format!(
        "backend: {}: {}\n",
        backend.kind.as_str(),
        backend.reason
    ));
    match &keys.initial {
        Some(k) => text.push_str(&format!(
            "\nAUDIT INITIAL KEY (shown once, never stored on this machine):\n\n    {}\n\nWrite it down or print it and keep it offline (a safe, not this server): only with it can an auditor prove that no audit record was altered.\n\n",
            k.display()
        )),
        None => text.push_str(&format!("audit:   key {} exists and was kept (its initial key was shown at the first setup)\n", audit.key_file.display())),
    }
    let state = |created: bool| if created { "created" } else { "kept" };
    text.push_str(&format!(
        "keys:    content key {} ({}), export signing key {} ({}), public key {}\n",
        audit.content_key_file.display(),
        state(keys.content_created),
        audit
            .signing_key_file
            .as_deref()
            .map_or("-".to_owned(), |p| p.display().to_string()),
        state(keys.signing_created),
        keys.signing_public
            .as_deref()
            .map_or("-".to_owned(), |p| p.display().to_string()),
    ));
    text.push_str(&format!(
        "config:  {} ({})\n\nNext steps:\n  1. chown -R medgemma: {} {} (the daemon's user owns the log and its key)\n  2. systemctl enable --now medgemmad\n  3. medgemmactl status, then medgemmactl doctor\n",
        written.path.display(),
        if written.new_file {
            "written"
        } else {
            "setup's drop-in, read after the main file, which is kept as you edited it"
        },
        audit.dir.display(),
        audit
            .key_file
            .parent()
            .unwrap_or(Path::new("/"))
            .display(),
    ));
    Report {
        code: EXIT_OK,
        text,
        json: serde_json::json!({
            "ok": true,
            "model": model,
            "validation": summary,
            "pins_file": pins_path,
            "pins": pins.files,
            "pins_created": pins.created,
            "backend": {
                "kind": backend.kind.as_str(),
                "reason": backend.reason,
                "max_concurrent_generations": backend.concurrent,
            },
            "audit_dir": audit.dir,
            "key_file": audit.key_file,
            "initial_key": keys.initial.as_ref().map(medgemma_audit::InitialKey::display),
            "initial_key_notice": keys.initial.as_ref().map(|_| "shown once: keep it offline; only with it can the log be proven unaltered"),
            "content_key_file": audit.content_key_file,
            "signing_key_file": audit.signing_key_file,
            "signing_public_key_file": keys.signing_public,
            "config": written.path,
            "config_written": written.new_file,
            "config_drop_in": !written.new_file,
        }),
    }
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

/// The backend to write, why, and how many conversations may generate at
/// once: the same budget the daemon checks before it loads on CUDA, against
/// each GPU's free memory now.
fn pick_backend(model: &medgemma_model::config::Gemma3Config) -> BackendPick {
    let context = medgemma_protocol::config::defaults::context_length();
    let (need, _) = crate::gpu_cmd::model_need(model, context as u64);
    let cpu = |reason: String| BackendPick {
        kind: BackendChoice::Cpu,
        reason,
        concurrent: 1,
    };
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(_) => {
            return cpu(format!(
                "no NVIDIA driver (NVML cannot be loaded). {}",
                crate::gpu_cmd::CPU_FALLBACK
            ));
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
    let kernels = medgemma_model::backend::shipped_cuda_kernel_support();
    match best {
        None => cpu(format!(
            "the NVIDIA driver reports no GPU. {}",
            crate::gpu_cmd::CPU_FALLBACK
        )),
        // The kernels compile at run time with the libdevice the package
        // ships (`medgemmactl doctor` checks the same).
        Some((i, name, _)) if kernels.is_err() => cpu(format!(
            "GPU {i} ({name}) is there, but CUDA kernels cannot be compiled: {}; medgemmad would run on the CPU, so setup configures the CPU",
            kernels.err().unwrap_or_default()
        )),
        Some((i, name, free)) if free >= need => {
            let req = medgemma_model::budget::BudgetRequest::new(
                context,
                SETUP_CONCURRENT,
                medgemma_model::budget::DType::BF16,
            );
            let n = medgemma_model::budget::sequences_that_fit(model, &req, free).max(1);
            BackendPick {
                kind: BackendChoice::Auto,
                reason: format!(
                    "GPU {i} ({name}) has {} free and the model needs {} for {context} tokens of context, with room for {n} conversations generating at once: medgemmad uses CUDA, and falls back to the CPU with the reason if that changes",
                    gib(free),
                    gib(need)
                ),
                concurrent: n,
            }
        }
        Some((i, name, free)) => cpu(format!(
            "GPU {i} ({name}) has only {} free but the model needs {} for {context} tokens of context; free GPU memory (medgemmactl gpu names the processes holding it) and run setup again",
            gib(free),
            gib(need)
        )),
    }
}
