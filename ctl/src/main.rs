//! `medgemmactl`: the administrator's tool for the MedGemma appliance.
//!
//! A thin binary over the appliance's library crates (`medgemma-audit`,
//! `medgemma-model`): arguments are parsed without I/O (clap), then each
//! command resolves what it needs and returns a [`Report`]: a text for
//! people and a JSON document (`--json`) for programs.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: healthy (`status`), all checks passed (`doctor`), a usable GPU (`gpu`), verified (`audit verify`) |
//! | 1 | degraded (`status`: CPU fallback, sandbox off, pin mismatch), warnings (`doctor`), a GPU that cannot hold the model (`gpu`), verification failed (`audit verify`), a model that fails validation or its pins (`setup`) |
//! | 2 | daemon not running or admin socket unreachable (`status`), failures (`doctor`), no NVIDIA driver or GPU: the CPU fallback (`gpu`) |
//! | 3 | the command could not run (I/O error, bad key file, permission denied) |
//! | 64 | wrong arguments (usage) |
//!
//! A closed standard output (`medgemmactl status | head -1`) is not an error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod audit_cmd;
mod config_cmd;
mod daemon_config;
mod doctor_cmd;
mod gpu_cmd;
mod setup_cmd;
mod status_cmd;
mod terms_cmd;
mod user_cmd;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: degraded, warnings, verification failed.
pub const EXIT_DEGRADED: u8 = 1;
/// Exit code: not running (status), failures (doctor), no GPU driver (gpu).
pub const EXIT_DOWN: u8 = 2;
/// Exit code: the command could not run.
pub const EXIT_ERROR: u8 = 3;
/// Exit code: wrong arguments.
pub const EXIT_USAGE: u8 = 64;

const EXIT_CODES_HELP: &str = "Exit codes: 0 ok/healthy; 1 degraded, warnings or verification failed; \
2 daemon not running (status), failures (doctor), no NVIDIA driver (gpu); \
3 the command could not run; 64 wrong arguments.";

/// Administer the MedGemma appliance: set it up, check it, manage its accounts and terminology, export and verify its audit log.
#[derive(Debug, Parser)]
#[command(name = "medgemmactl", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Print one JSON document on standard output instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's configuration file (paths of the sockets, the model and the audit log).
    #[arg(long, global = true, default_value = medgemma_protocol::paths::CONFIG_FILE)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and pin the model, create the audit keys and write the daemon's configuration.
    Setup(setup_cmd::SetupArgs),
    /// Ask the running daemon how it is (over the admin socket).
    Status(status_cmd::StatusArgs),
    /// Show the NVIDIA GPUs (NVML, loaded at run time) and whether the model fits.
    Gpu(gpu_cmd::GpuArgs),
    /// Check the machine and the installation, each check with a fix.
    Doctor(doctor_cmd::DoctorArgs),
    /// Export or verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Manage the accounts: add, disable, enable, passwd, list, API tokens.
    #[command(subcommand)]
    User(user_cmd::UserCommand),
    /// Import the hospital's terminology (ICD-11, ICD-10, SNOMED CT, synonyms) for term alignment.
    #[command(subcommand)]
    Terms(terms_cmd::TermsCommand),
    /// Print the documented example configuration, or the configuration in effect.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Write the man pages into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: String,
    },
}

/// What a command found: an exit code, a text for people, a JSON document.
#[derive(Debug)]
pub struct Report {
    /// The exit code.
    pub code: u8,
    /// Printed without `--json`.
    pub text: String,
    /// Printed with `--json`.
    pub json: serde_json::Value,
}

impl Report {
    /// A report that the command could not run.
    pub fn error(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code: EXIT_ERROR,
            json: serde_json::json!({ "ok": false, "error": message }),
            text: format!("error: {message}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let report = match cli.command {
        Command::Setup(args) => setup_cmd::run(&cli.config, args),
        Command::Status(args) => status_cmd::run(&cli.config, &args),
        Command::Gpu(args) => gpu_cmd::run(&cli.config, &args),
        Command::Doctor(args) => doctor_cmd::run(&cli.config, &args),
        Command::Audit(cmd) => audit_cmd::run(&cli.config, cmd),
        Command::User(cmd) => user_cmd::run(&cli.config, &cmd),
        Command::Terms(cmd) => terms_cmd::run(&cli.config, &cmd),
        Command::Config(cmd) => config_cmd::run(&cli.config, &cmd),
        Command::Man { out } => man(&out),
        Command::Completions { shell } => completions(&shell),
    };
    let printed = if cli.json {
        format!("{:#}\n", report.json)
    } else if report.text.is_empty() {
        String::new()
    } else {
        format!("{}\n", report.text.trim_end())
    };
    // An error report's text goes to stderr unless JSON was asked for.
    if report.code == EXIT_ERROR && !cli.json {
        eprint!("medgemmactl: {printed}");
    } else {
        out(&printed);
    }
    ExitCode::from(report.code)
}

/// Writes to standard output; a closed pipe is not an error.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Progress and notices for people, on standard error.
pub fn note(what: std::fmt::Arguments<'_>) {
    eprintln!("medgemmactl: {what}");
}

fn man(dir: &std::path::Path) -> Report {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Report::error(format!("cannot create {}: {e}", dir.display()));
    }
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut pages = vec![(String::from("medgemmactl"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("medgemmactl-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .display_name(name.clone())
                .bin_name(name.replace('-', " ")),
        ));
        for subsub in sub.get_subcommands() {
            let name = format!("medgemmactl-{}-{}", sub.get_name(), subsub.get_name());
            pages.push((
                name.clone(),
                subsub
                    .clone()
                    .display_name(name.clone())
                    .bin_name(name.replace('-', " ")),
            ));
        }
    }
    for (name, page) in pages {
        let mut buf = Vec::new();
        if let Err(e) = clap_mangen::Man::new(page).render(&mut buf) {
            return Report::error(format!("cannot render the man page {name}: {e}"));
        }
        let path = dir.join(format!("{name}.1"));
        if let Err(e) = std::fs::write(&path, buf) {
            return Report::error(format!("cannot write {}: {e}", path.display()));
        }
        written.push(path.display().to_string());
    }
    Report {
        code: EXIT_OK,
        text: format!("wrote {} man pages into {}", written.len(), dir.display()),
        json: serde_json::json!({ "ok": true, "files": written }),
    }
}

fn completions(shell: &str) -> Report {
    use clap_complete::Shell;
    let Ok(shell) = shell.parse::<Shell>() else {
        return Report {
            code: EXIT_USAGE,
            text: String::new(),
            json: serde_json::json!({ "ok": false, "error": "unknown shell; use bash, zsh, fish, elvish or powershell" }),
        }
        .with_stderr("unknown shell; use bash, zsh, fish, elvish or powershell");
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "medgemmactl", &mut buf);
    Report {
        code: EXIT_OK,
        text: String::from_utf8_lossy(&buf).into_owned(),
        json: serde_json::json!({ "ok": true, "script": String::from_utf8_lossy(&buf) }),
    }
}

impl Report {
    fn with_stderr(self, message: &str) -> Self {
        note(format_args!("{message}"));
        self
    }
}
