//! Drops root and locks `medgemmad` in: the only crate of the appliance that
//! talks to the kernel's sandboxing interfaces, and so the only one with
//! `unsafe` (each block wraps one call and says why it is sound).
//!
//! It owns: closing inherited file descriptors, clearing the environment,
//! dropping user/group/capabilities, `no_new_privs`/dumpable/core limits,
//! the Landlock ruleset, the seccomp filters and the report of the state the
//! kernel really enforces ([`SandboxState`]). It must never decide *what* is
//! allowed: the paths come from the daemon's configuration
//! ([`LandlockPolicy`]) and the syscalls from the per-role tables in
//! [`seccomp`], which are data reviewed on their own.
//!
//! # Order of startup
//!
//! Landlock (ABI 7 has no "all threads" flag), `no_new_privs`, `capset` and
//! the environment are per thread or not thread safe, so every step up to
//! and including Landlock must run while the process has exactly one thread:
//! each of those functions checks `/proc/self/status` and fails with
//! [`SandboxError::NotSingleThreaded`] otherwise. The daemon's `main` reads
//! as the list in `shared/spec/sandbox.md`:
//!
//! ```no_run
//! use std::os::fd::AsRawFd;
//! use medgemma_sandbox as sandbox;
//! # fn main() -> Result<(), sandbox::SandboxError> {
//! // 1. Keep only stdio and the sockets systemd handed over (owned, so the
//! //    daemon needs no `unsafe`: `UnixListener::from(l.fd)`); clear the env.
//! let listeners = sandbox::take_listen_fds()?;
//! let keep: Vec<_> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
//! sandbox::clean_process(&keep, &["RUST_LOG"])?;
//! // 2. Parse the configuration; resolve the service user while /etc is readable.
//! let user = sandbox::resolve_user("medgemma")?;
//! // 3. Open what the daemon needs: model files, audit log, keys, sockets;
//! //    load the GPU's libraries (the rules follow what the loader resolved).
//! let gpu = sandbox::preload_cuda_libraries().ok();
//! // 4. Drop root: bounding/ambient sets, groups, gid, uid; verified.
//! sandbox::drop_privileges(&user)?;
//! // 5. no_new_privs, not dumpable, RLIMIT_CORE = 1.
//! sandbox::harden_process()?;
//! // 6. Landlock, from the configuration's paths and the loaded libraries.
//! let mut read_only = vec!["/usr/share/medgemma/model".into()];
//! read_only.extend(gpu.iter().flat_map(|g| g.landlock_read_only()));
//! let policy = sandbox::LandlockPolicy {
//!     read_only,
//!     read_write: vec!["/var/lib/medgemma".into(), "/var/cache/medgemma".into()],
//!     devices: vec!["/dev/nvidiactl".into(), "/dev/nvidia0".into(), "/dev/nvidia-uvm".into()],
//!     proc_write_comm: true,
//! };
//! //    Every right the kernel offers, never below the site's minimum
//! //    (`sandbox.min_landlock_abi`); the report says what is not enforced.
//! let options = sandbox::LandlockOptions { min_abi: 1, max_abi: None };
//! let landlock = sandbox::apply_landlock_with(&policy, &options)?;
//! eprintln!("sandbox: {}", landlock.summary());
//! // 7. seccomp for the whole process (TSYNC), then threads only narrow it.
//! let mode = sandbox::SeccompMode::Enforce;
//! let engine = if gpu.is_some() { sandbox::Role::EngineCuda } else { sandbox::Role::EngineCpu };
//! sandbox::apply_seccomp(&sandbox::SeccompPolicy::process_wide_for(engine), mode)?;
//! // 8. Engine thread first (it narrows itself to `engine`), then the
//! //    main thread narrows to Role::Http and builds tokio with
//! //    `on_thread_start(sandbox::thread_start_hook(Role::Http, mode))`.
//! # Ok(()) }
//! ```
//!
//! # Seccomp roles
//!
//! Filters are per thread, inherited by the threads a thread creates, and can
//! only be added, never removed: a stack of filters allows the intersection.
//! So [`apply_seccomp`] installs, process-wide with TSYNC, the *union* of
//! the process's roles (base ∪ the CPU or CUDA engine ∪ HTTP) plus the kill
//! filter and the `clone3` filter; then each thread narrows itself with
//! [`narrow_current_thread`]
//! (no TSYNC) to `base ∪ its role`. Each role filter answers a probe with
//! its own marker ([`current_thread_role`]), so neither narrowing nor the
//! runtime's thread-start hook adds a role a thread already inherited: the
//! stack stays flat however many threads start threads. See [`seccomp`]
//! for the tables.
//!
//! # Insecure mode
//!
//! There is no silent off switch: a development run without a sandbox calls
//! [`declare_insecure_no_sandbox`], and every [`SandboxState`] then says
//! `insecure_no_sandbox: true`.

pub mod driver;
pub mod error;
pub mod landlock;
pub mod libraries;
pub mod privileges;
pub mod process;
pub mod seccomp;
pub mod state;

pub use driver::{
    CUDA_DRIVER_LIBRARY, DriverMissing, probe_cuda_driver, probe_library, set_env_single_threaded,
};
pub use error::SandboxError;
pub use landlock::{
    LandlockGap, LandlockOptions, LandlockPolicy, LandlockReport, LandlockRight, MIN_LANDLOCK_ABI,
    NEWEST_KNOWN_LANDLOCK_ABI, REQUIRED_LANDLOCK_ABI, apply_landlock, apply_landlock_with,
    choose_abi, gaps_at, kernel_abi,
};
pub use libraries::{
    LibraryMissing, LibraryRequest, LoadedFile, Preloaded, RequestedLibrary,
    preload_cuda_libraries, preload_libraries,
};
pub use privileges::{
    DropReport, HardenReport, ResolvedUser, drop_privileges, harden_process, resolve_user,
};
pub use process::{
    CleanReport, ListenFd, ListenSocket, clean_process, listen_fds, take_listen_fds,
};
pub use seccomp::{
    Role, SeccompMode, SeccompPolicy, SeccompReport, apply_seccomp, current_thread_role,
    narrow_current_thread, thread_start_hook,
};
pub use state::{CoreLimit, SandboxState, declare_insecure_no_sandbox};
