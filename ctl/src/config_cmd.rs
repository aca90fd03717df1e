//! `medgemmactl config example` and `medgemmactl config show`: the
//! documented example configuration (generated from the configuration's
//! types; `packaging/medgemmad.example.toml` is its output), and the
//! configuration in effect: the main file with its drop-ins merged, every
//! default filled in, checked as the daemon checks it.
//!
//! Owns: printing configurations. Must never: write a file.

use std::path::Path;

use clap::Subcommand;
use medgemma_protocol::config::{Config, example_toml};

use crate::{EXIT_DEGRADED, EXIT_OK, Report};

/// `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented example (every key with its documentation, default and limit).
    Example,
    /// Print the configuration in effect (main file + drop-ins, defaults filled in) and check it.
    Show,
}

/// Runs a `config` subcommand.
pub fn run(config: &Path, cmd: &ConfigCommand) -> Report {
    match cmd {
        ConfigCommand::Example => {
            let text = example_toml();
            Report {
                code: EXIT_OK,
                json: serde_json::json!({ "ok": true, "example": text }),
                text,
            }
        }
        ConfigCommand::Show => show(config),
    }
}

fn show(path: &Path) -> Report {
    let loaded = match Config::load(path) {
        Ok(l) => l,
        Err(e) => return Report::error(e.to_string()),
    };
    let mut config = loaded.config;
    config.normalize();
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let header = format!("# In effect: {}\n", files.join(" + "));
    let text = config.to_toml(&header).unwrap_or_default();
    let checked = config.check();
    let json = serde_json::json!({
        "ok": checked.is_ok(),
        "files": files,
        "config": config,
        "error": checked.as_ref().err().map(ToString::to_string),
    });
    match checked {
        Ok(()) => Report {
            code: EXIT_OK,
            text,
            json,
        },
        Err(e) => Report {
            code: EXIT_DEGRADED,
            text: format!("{text}\n# INVALID: {e}\n"),
            json,
        },
    }
}
