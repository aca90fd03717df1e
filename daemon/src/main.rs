//! `medgemmad`: the MedGemma appliance daemon.
//!
//! Subcommands: `serve` (the daemon), `forward` (development), `generate` and
//! `bench` (admins and tests: the engine without a server), `man` and
//! `completions` (documentation generated from this definition).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod audit_log;
mod bench_cmd;
mod config;
mod docs_cmd;
mod engine;
mod generate_cmd;
mod gpu;
mod lockdown;
mod serve_cmd;
mod server;

/// `--version` with the compiled-in backends (scripts/gpu-sandbox-check.sh
/// and scripts/gpu-check.sh read it).
#[cfg(not(feature = "cuda"))]
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\nbackends: cpu");
#[cfg(feature = "cuda")]
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\nbackends: cpu cuda");

/// The MedGemma appliance daemon.
#[derive(Debug, Parser)]
#[command(name = "medgemmad", version, long_version = LONG_VERSION, about)]
struct Cli {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("medgemmad: {msg}");
            ExitCode::from(code)
        }
    }
}
