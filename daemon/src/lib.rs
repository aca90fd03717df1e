//! `medgemmad`, the MedGemma appliance daemon, as a library: the binary
//! (`main.rs`) only parses its arguments and calls [`cli::run`]; tests call
//! the server in-process with an already-bound listener
//! ([`server::run`], as mini-redis's `server::run`).
//!
//! Rooms, top to bottom (arrows point down only):
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the subcommands and their exit codes |
//! | [`serve_cmd`] | the daemon's startup order, read top to bottom |
//! | [`server`] | HTTP on the UI and admin sockets: routes, limits, status documents |
//! | [`engine`] | the engine thread, its queue, the model engine, GPU choice and fallback |
//! | [`lockdown`], [`audit_log`] | the daemon's use of `medgemma-sandbox` and `medgemma-audit` |
//! | [`config`] | settings from `medgemma-protocol`'s configuration |
//! | [`log`] | the one logging path |
//! | `generate_cmd`, `bench_cmd`, `docs_cmd` | the engine without a server; man pages |
//!
//! ```no_run
//! # async fn demo(engine: medgemmad::engine::EngineHandle, config: medgemmad::server::ServerConfig) {
//! let listener = tokio::net::UnixListener::bind("/run/medgemma/ui.sock").unwrap();
//! medgemmad::server::run(listener, engine, config, std::future::pending::<()>()).await.unwrap();
//! # }
//! ```
//!
//! Owns: the daemon. Must never: open a network socket, log bodies or
//! answers; `unsafe` lives in `medgemma-sandbox`, not here.
#![forbid(unsafe_code)]

pub mod audit_log;
pub mod bench_cmd;
pub mod bench_serve;
pub mod cli;
pub mod config;
pub mod docs_cmd;
pub mod engine;
pub mod generate_cmd;
pub mod lockdown;
pub mod log;
pub mod serve_cmd;
pub mod server;
