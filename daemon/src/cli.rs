//! The subcommands of `medgemmad` and their exit codes.
//!
//! `serve` (the daemon), `forward` (development), `generate` and `bench`
//! (admins and tests: the engine without a server), `man` and `completions`
//! (documentation generated from this definition).
//!
//! Owns: the command line. Must never: print anything but through
//! [`crate::log`] (errors) or the subcommand's own output.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::{bench_cmd, docs_cmd, generate_cmd, log, serve_cmd, server};

/// `--version` with the compiled-in backends (scripts/gpu-sandbox-check.sh
/// and scripts/gpu-check.sh read it).
#[cfg(not(feature = "cuda"))]
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\nbackends: cpu");
#[cfg(feature = "cuda")]
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\nbackends: cpu cuda");

/// The MedGemma appliance daemon.
#[derive(Debug, Parser)]
#[command(name = "medgemmad", version, long_version = LONG_VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one prompt through the model and print the answer (no server, no network).
    Generate(generate_cmd::GenerateArgs),
    /// Measure load time, prefill and decode speed and peak memory (prints numbers).
    Bench(bench_cmd::BenchArgs),
    /// Serve the web UI and the API on a Unix socket (the daemon).
    Serve(serve_cmd::ServeArgs),
    /// Development only: forward a loopback TCP port to the UI socket.
    Forward(server::forward::ForwardArgs),
    /// Write the man pages (section 8) into a directory.
    Man(docs_cmd::ManArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs_cmd::CompletionsArgs),
}

/// Runs a parsed command line; the exit code is the documented one.
pub fn run(cli: Cli) -> ExitCode {
    let result: Result<(), (String, u8)> = match cli.command {
        Command::Generate(args) => {
            generate_cmd::run(args).map_err(|e| (e.to_string(), e.exit_code()))
        }
        Command::Bench(args) => bench_cmd::run(args).map_err(|e| (e.to_string(), 2)),
        Command::Serve(args) => serve_cmd::run(args).map_err(|e| (e.to_string(), e.exit_code())),
        Command::Forward(args) => server::forward::run(args).map_err(|e| (e.to_string(), 1)),
        Command::Man(args) => docs_cmd::man(&Cli::command(), &args)
            .map(drop)
            .map_err(|e| (e.to_string(), 1)),
        Command::Completions(args) => {
            docs_cmd::completions(Cli::command(), &args).map_err(|e| (e.to_string(), 1))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((msg, code)) => {
            log::error(format_args!("{msg}"));
            ExitCode::from(code)
        }
    }
}
