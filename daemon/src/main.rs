//! `medgemmad`: the MedGemma appliance daemon (see the library's docs).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    medgemmad::log::init();
    medgemmad::log::install_panic_hook();
    medgemmad::cli::run(medgemmad::cli::Cli::parse())
}
