//! The daemon's use of `medgemma-sandbox`: which environment survives, which
//! paths Landlock allows (derived from the configuration, so they cannot
//! drift from it), the sd_notify socket connected before seccomp, and the
//! sandbox state `/api/status` reports.
//!
//! The policies are built with the very functions and tables that
//! `sandbox/tests/probes.rs` exercises against the real kernel: the
//! seccomp allow-lists are `SeccompPolicy::process_wide()` and
//! `SeccompPolicy::for_role(..)` (the tables in `sandbox/src/seccomp.rs`,
//! there is no second copy here), installed with `apply_seccomp`,
//! `narrow_current_thread` and `thread_start_hook`; Landlock goes through
//! `apply_landlock` with the same rights; only the *paths* come from here.
//!
//! Owns: the mapping from configuration to sandbox policy. Must never: apply
//! a half sandbox silently (every failure is an error the daemon exits on),
//! or report a state the kernel does not enforce.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medgemma_sandbox::{
    self as sandbox, LandlockOptions, LandlockPolicy, ResolvedUser, Role, SandboxError,
    SandboxState, SeccompMode, SeccompPolicy,
};

use medgemma_protocol::status::{LandlockGap, LandlockStatus, SandboxStatus};

use crate::config::{ResolvedBackend, Settings};

/// Environment variables that survive `clean_process`: systemd's
/// notification and watchdog protocol, and Rust's backtrace switch. Every
/// other variable (and `LISTEN_*`, once the sockets are taken) is removed.
pub const ENV_ALLOW: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RUST_BACKTRACE",
];

/// How often the insecure mode repeats its warning on stderr.
pub const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(10 * 60);

/// The warning printed at startup and every [`INSECURE_WARNING_EVERY`] in
/// `--insecure-no-sandbox` mode.
pub const INSECURE_WARNING: &str = "WARNING: --insecure-no-sandbox: running WITHOUT the kernel \
     sandbox (no privilege drop, no Landlock, no seccomp); for development only, never with \
     patient data";

/// The Landlock policy of this configuration: what the daemon may touch
/// once sandboxed. Read-only: the model (file or directory), the tokenizer
/// and the system prompt. Read-write: the audit directory, the directories of
/// the UI and admin sockets (the daemon removes its socket files on exit),
/// the audit key directory, `sandbox.state_dir` and `sandbox.cache_dir`.
/// With the CUDA backend, [`cuda_paths`] adds the GPU's device nodes and
/// driver state, and `gpu_libraries` the driver's library files exactly as
/// the loader resolved them before the lockdown (`engine::gpu::prepare`).
/// Everything else is denied (`EACCES`), including `Execute` everywhere.
pub fn landlock_policy(settings: &Settings, gpu_libraries: &[PathBuf]) -> LandlockPolicy {
    let mut read_only = vec![settings.model.path.clone()];
    read_only.extend(settings.model.tokenizer_path.iter().cloned());
    read_only.extend(settings.model.system_prompt_file.iter().cloned());
    // The pins `medgemmactl setup` wrote: the admin status compares the model
    // files with them (a rule needs the file to exist; a missing one is
    // reported by the status itself).
    read_only.extend(
        settings
            .model
            .pins_file
            .iter()
            .filter(|p| p.is_file())
            .cloned(),
    );

    let mut read_write = vec![settings.audit.dir.clone()];
    let sockets = std::iter::once(&settings.server.ui_socket)
        .chain(settings.server.admin_socket.as_ref())
        .filter_map(|s| s.parent().map(Path::to_path_buf));
    read_write.extend(sockets);
    // The chain key evolves (rewritten in place); the audit module refuses to
    // start without it, so a missing directory here is reported there.
    read_write.extend(
        settings
            .audit
            .key_file
            .parent()
            .filter(|d| d.is_dir())
            .map(Path::to_path_buf),
    );
    if settings.audit.content_key_file.is_file() {
        read_only.push(settings.audit.content_key_file.clone());
    }
    read_write.extend(settings.sandbox.state_dir.iter().cloned());
    read_write.extend(settings.sandbox.cache_dir.iter().cloned());

    let mut policy = LandlockPolicy {
        read_only,
        read_write,
        devices: Vec::new(),
        proc_write_comm: false,
    };
    if uses_cuda(settings) {
        let cuda = cuda_paths();
        policy.read_only.extend(cuda.read_only);
        policy.read_only.extend(gpu_libraries.iter().cloned());
        policy.devices.extend(cuda.devices);
        policy.proc_write_comm = true;
    }
    dedup(&mut policy.read_only);
    dedup(&mut policy.read_write);
    policy
}

fn dedup(paths: &mut Vec<PathBuf>) {
    let mut seen = std::collections::BTreeSet::new();
    paths.retain(|p| seen.insert(p.clone()));
}

/// Whether the CUDA engine may run: a CUDA build with `auto` or `cuda` whose
/// driver library loaded (`gpu::prepare` turned every other case into the
/// CPU before this is asked). The engine thread may still fall back to the
/// CPU (GPU too small); the GPU paths are then allowed but unused.
fn uses_cuda(settings: &Settings) -> bool {
    settings.backend.backend == ResolvedBackend::Cuda
}

/// What the CUDA driver needs beyond the CPU engine and its libraries
/// (shared/spec/sandbox.md, "What CUDA needs inside the sandbox"): device
/// nodes and the driver's state in `/proc` and `/sys`. The libraries are
/// not listed here: they are loaded before the lockdown and their files, as
/// resolved, become rules (`medgemma_sandbox::preload_cuda_libraries`), so
/// a driver in `/usr/local/nvidia/lib64` or `/usr/lib64` is found as the
/// loader finds it. Only paths that exist on this machine are listed
/// (`apply_landlock` refuses a missing path, and e.g. `/dev/nvidia-caps`
/// only exists with MIG). The list is confirmed on a GPU machine with
/// `scripts/gpu-sandbox-check.sh`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CudaPaths {
    /// Driver state in `/proc` and `/sys`, CUDA headers.
    pub read_only: Vec<PathBuf>,
    /// Device nodes: read, write and device ioctls (Landlock ABI 5).
    pub devices: Vec<PathBuf>,
}

/// The CUDA path list (see [`CudaPaths`]). Besides these, the engine gets
/// write access to `/proc` (drivers >= 570 write
/// `/proc/<pid>/task/<tid>/comm` in `cuInit`; error 304 if denied), and its
/// JIT (`CUDA_CACHE_PATH`) and cubecl autotune caches belong under
/// `sandbox.cache_dir`, which is read-write.
pub fn cuda_paths() -> CudaPaths {
    let mut devices: Vec<PathBuf> = [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        // Drivers >= 570 open it at init.
        "/dev/nvidia-uvm-tools",
        // MIG only.
        "/dev/nvidia-caps",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    // /dev/nvidia0, /dev/nvidia1, ...
    if let Ok(dir) = std::fs::read_dir("/dev") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name
                .strip_prefix("nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                devices.push(entry.path());
            }
        }
    }
    let mut read_only: Vec<PathBuf> = [
        "/proc/driver/nvidia",
        "/sys/bus/pci",
        // /sys/bus/pci/devices/* are symlinks into /sys/devices/pci*, and
        // Landlock checks the resolved path.
        "/sys/devices",
        "/sys/module/nvidia",
        "/sys/devices/system/node",
        // CUDA headers that burn-cuda's runtime compiler (NVRTC) includes.
        "/usr/local/cuda/include",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    devices.retain(|p| p.exists());
    read_only.retain(|p| p.exists());
    devices.sort();
    read_only.sort();
    CudaPaths { read_only, devices }
}

/// Resolves the service user while `/etc/passwd` is readable, when the
/// daemon runs as root (it drops to that user later). `None` when it was
/// started as another user: it then stays who it is.
pub fn service_user(settings: &Settings) -> Result<Option<ResolvedUser>, SandboxError> {
    if SandboxState::current()?.uid[1] != 0 {
        return Ok(None);
    }
    sandbox::resolve_user(&settings.sandbox.user).map(Some)
}

/// The engine thread's seccomp role: the CPU engine has no device ioctls,
/// executable mappings or `memfd_create`; the CUDA engine's ioctls are the
/// NVIDIA driver's request numbers.
pub fn engine_role(settings: &Settings) -> Role {
    if uses_cuda(settings) {
        Role::EngineCuda
    } else {
        Role::EngineCpu
    }
}

/// What the daemon asks of Landlock: every right the kernel offers, at
/// least `sandbox.min_landlock_abi`, at most `cap` (`serve
/// --landlock-abi-cap`: tests of the lower ABIs on a newer kernel).
pub fn landlock_options(settings: &Settings, cap: Option<i32>) -> LandlockOptions {
    LandlockOptions {
        min_abi: settings.sandbox.min_landlock_abi,
        max_abi: cap,
    }
}

/// Steps 4 to 7 of the startup: drop to `user` (when started as root),
/// `no_new_privs`, not dumpable, no core dumps, Landlock from `policy`
/// (every right the kernel offers; refusing anything but full enforcement,
/// or an ABI below the minimum), then the process-wide seccomp filters for
/// this `engine` role. Must run while the process has one thread. Returns
/// lines for the startup log.
pub fn lock_down(
    user: Option<&ResolvedUser>,
    policy: &LandlockPolicy,
    landlock: &LandlockOptions,
    engine: Role,
    mode: SeccompMode,
) -> Result<Vec<String>, SandboxError> {
    let mut log = Vec::new();
    match user {
        Some(user) => {
            sandbox::drop_privileges(user)?;
            log.push(format!(
                "dropped root to user {:?} (uid {}, gid {}, no groups, no capabilities)",
                user.name, user.uid, user.gid
            ));
        }
        None => {
            let s = SandboxState::current()?;
            log.push(format!(
                "not started as root: staying uid {} gid {} (sandbox.user is not used)",
                s.uid[1], s.gid[1]
            ));
        }
    }
    let hardened = sandbox::harden_process()?;
    log.push(format!(
        "no_new_privs set, not dumpable, core dumps off (RLIMIT_CORE 1; core_pattern {:?})",
        hardened.core_pattern.unwrap_or_default()
    ));
    let applied = sandbox::apply_landlock_with(policy, landlock)?;
    if !applied.fully_enforced || applied.enforced_abi < applied.required_abi {
        // apply_landlock_with already refuses this; checked again because
        // serving under a partial ruleset is the one thing this must never do.
        return Err(SandboxError::LandlockNotEnforced {
            status: "below the required ABI or not fully enforced",
        });
    }
    log.push(applied.summary());
    let seccomp = sandbox::apply_seccomp(&SeccompPolicy::process_wide_for(engine), mode)?;
    log.push(format!(
        "seccomp: {} filters on every thread ({} syscalls allowed, {} kill the process), mode {:?}, engine role {engine:?}",
        seccomp.filters_installed, seccomp.allowed_syscalls, seccomp.kill_list_len, seccomp.mode
    ));
    if mode == SeccompMode::Log {
        log.push(
            "WARNING: --seccomp-log: calls outside the allow-lists are LOGGED, NOT DENIED \
             (kernel log type=1326); diagnostics only"
                .to_owned(),
        );
    }
    Ok(log)
}

/// Narrows the calling thread (the engine thread, first thing) to the
/// engine `role`; the CPU backend's and the GPU driver's threads it creates
/// inherit that.
pub fn narrow_engine_thread(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    narrow_thread(role, mode)
}

/// Narrows the calling thread to `role` (a no-op when it already runs
/// under it).
pub fn narrow_thread(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    sandbox::narrow_current_thread(&SeccompPolicy::for_role(role), mode)
}

/// Narrows the calling thread (main, after the engine thread started) to
/// [`Role::Http`] and returns the `on_thread_start` hook that narrows every
/// tokio worker and blocking-pool thread the same way (a thread already
/// under the role, one started from a narrowed thread, is left as it is: the
/// filter stack cannot grow).
pub fn narrow_http(mode: SeccompMode) -> Result<impl Fn() + Send + Sync + 'static, SandboxError> {
    sandbox::narrow_current_thread(&SeccompPolicy::for_role(Role::Http), mode)?;
    sandbox::thread_start_hook(Role::Http, mode)
}

/// The sandbox as the status documents show it, read from the kernel at
/// the time of the call: [`SandboxState::current`], plus `enforced` (true
/// only when nothing falls short of the full lockdown: not insecure, seccomp
/// enforcing, Landlock fully enforced, no capability, no root id) and
/// `problems` (sentences). Landlock's rules are reduced to their number:
/// the status never shows full paths.
pub fn sandbox_status() -> SandboxStatus {
    match SandboxState::current() {
        Ok(state) => {
            let mut problems = state.problems();
            if state.landlock.is_none() && !state.insecure_no_sandbox {
                problems.push("Landlock was not applied".to_owned());
            }
            if state.seccomp.is_none() && !state.insecure_no_sandbox {
                problems.push("seccomp was not applied".to_owned());
            }
            let mut kernel = match serde_json::to_value(&state) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            kernel.remove("insecure_no_sandbox");
            kernel.remove("landlock");
            let landlock = state.landlock.as_ref().map(|l| LandlockStatus {
                kernel_abi: l.kernel_abi,
                enforced_abi: l.enforced_abi,
                required_abi: l.required_abi,
                fully_enforced: l.fully_enforced,
                rules: l.rules.len(),
                not_enforced: l
                    .not_enforced
                    .iter()
                    .map(|g| LandlockGap {
                        right: g.right.to_owned(),
                        since_abi: g.since_abi,
                        guards: g.guards.to_owned(),
                        covered_by: g.covered_by.to_owned(),
                    })
                    .collect(),
            });
            let mut summary = Vec::new();
            if state.insecure_no_sandbox {
                summary.push("OFF: --insecure-no-sandbox (development only)".to_owned());
            }
            if state.uid[1] != 0 {
                summary.push(format!(
                    "running as uid {} gid {}",
                    state.uid[1], state.gid[1]
                ));
            }
            summary.extend(state.landlock.as_ref().map(|l| l.summary()));
            summary.extend(state.seccomp.as_ref().map(|s| {
                format!(
                    "seccomp {:?}: {} filters on this thread",
                    s.mode, state.seccomp_filters
                )
            }));
            SandboxStatus {
                enforced: problems.is_empty(),
                insecure_no_sandbox: state.insecure_no_sandbox,
                problems,
                summary,
                landlock,
                kernel,
            }
        }
        Err(e) => SandboxStatus {
            enforced: false,
            insecure_no_sandbox: false,
            problems: vec![format!("the sandbox state cannot be read: {e}")],
            summary: Vec::new(),
            landlock: None,
            kernel: serde_json::Map::new(),
        },
    }
}

/// The sd_notify socket, connected before seccomp (which refuses
/// `socket(2)` afterwards): a datagram socket connected to
/// `$NOTIFY_SOCKET` (a path, or an abstract name after '@'). Cheap to
/// clone: the watchdog task holds one.
#[derive(Debug, Clone)]
pub struct Notifier(Option<Arc<UnixDatagram>>);

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET`; without it (no systemd) notifications
    /// are dropped. A connection failure is reported and not fatal.
    pub fn connect() -> (Self, Option<String>) {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return (Self(None), None);
        };
        let target = target.to_string_lossy().into_owned();
        let addr = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&target),
        };
        let socket = addr.and_then(|addr| {
            let s = UnixDatagram::unbound()?;
            s.connect_addr(&addr)?;
            Ok(s)
        });
        match socket {
            Ok(s) => (Self(Some(Arc::new(s))), None),
            Err(e) => (
                Self(None),
                Some(format!(
                    "cannot connect to NOTIFY_SOCKET {target} ({e}); systemd will not be notified"
                )),
            ),
        }
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`, ...), as `sd_notify(3)` does.
    pub fn notify(&self, state: &str) -> Result<(), std::io::Error> {
        match &self.0 {
            Some(s) => s.send(state.as_bytes()).map(drop),
            None => Ok(()),
        }
    }

    /// Whether a systemd notification socket is connected.
    pub fn is_connected(&self) -> bool {
        self.0.is_some()
    }
}

/// How often to send `WATCHDOG=1`: half the `WatchdogSec=` systemd passes as
/// `$WATCHDOG_USEC` (sd_watchdog_enabled(3)), or `None` when the watchdog is
/// off, meant for another process (`$WATCHDOG_PID`), or malformed.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(
            watchdog_interval(Some("2"), None, 7),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn env_allow_list_keeps_systemd_protocol_only() {
        assert!(ENV_ALLOW.contains(&"NOTIFY_SOCKET"));
        assert!(ENV_ALLOW.contains(&"WATCHDOG_USEC"));
        assert!(!ENV_ALLOW.iter().any(|v| v.starts_with("LISTEN_")));
    }

    fn settings(dir: &Path, backend: &str) -> Settings {
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let text = format!(
            "[model]\npath = {model:?}\nlabel = \"Demo\"\ndemo = true\n\n[engine]\nbackend = \"{backend}\"\n\n\
             [server]\nui_socket = {sock:?}\n\n[audit]\ndir = {dir:?}\n\n[sandbox]\nuser = \"nobody\"\ncache_dir = {dir:?}\n",
            sock = dir.join("run/ui.sock"),
        );
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&path).unwrap()
    }

    #[test]
    fn policy_is_derived_from_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "cpu");
        let p = landlock_policy(&s, &[]);
        assert_eq!(p.read_only, vec![dir.path().join("m.gguf")]);
        // Audit dir and cache dir are the same here: listed once.
        assert_eq!(
            p.read_write,
            vec![dir.path().to_path_buf(), dir.path().join("run")]
        );
        assert!(p.devices.is_empty(), "no GPU paths for the CPU backend");
        assert!(!p.proc_write_comm);
    }

    #[test]
    fn a_cuda_decision_opens_the_gpu_and_keeps_the_cache_writable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "cpu");
        let libs = [PathBuf::from(
            "/usr/local/nvidia/lib64/libnvidia-ml.so.580.159",
        )];
        let cpu = landlock_policy(&s, &libs);
        assert!(
            !cpu.read_only.contains(&libs[0]),
            "no GPU files for the CPU"
        );
        assert_eq!(engine_role(&s), Role::EngineCpu);
        s.backend.backend = ResolvedBackend::Cuda;
        assert_eq!(engine_role(&s), Role::EngineCuda);
        let p = landlock_policy(&s, &libs);
        assert!(
            p.read_only.contains(&libs[0]),
            "the driver's files as the loader resolved them"
        );
        assert!(
            p.proc_write_comm,
            "cuInit writes /proc/<pid>/task/<tid>/comm"
        );
        assert!(
            p.read_write.contains(&dir.path().to_path_buf()),
            "cache_dir"
        );
        let cuda = cuda_paths();
        assert!(cuda.devices.iter().all(|d| p.devices.contains(d)));
        assert!(cuda.read_only.iter().all(|r| p.read_only.contains(r)));
    }

    #[test]
    fn the_pins_file_is_readable_under_landlock() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("model.pins.json");
        std::fs::write(&pins, "{}").unwrap();
        let mut s = settings(dir.path(), "cpu");
        s.model.pins_file = Some(pins.clone());
        assert!(landlock_policy(&s, &[]).read_only.contains(&pins));
        std::fs::remove_file(&pins).unwrap();
        assert!(!landlock_policy(&s, &[]).read_only.contains(&pins));
    }

    #[test]
    fn cuda_paths_exist_when_listed() {
        let c = cuda_paths();
        assert!(c.devices.iter().chain(&c.read_only).all(|p| p.exists()));
    }
}
