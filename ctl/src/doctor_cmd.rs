//! `medgemmactl doctor`: checks the machine and the installation, one line
//! per check with a sentence saying how to fix it.
//!
//! Exit codes: 0 every check passed, 1 warnings only, 2 at least one failure.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use medgemma_protocol::pins::{Pins, hash_file};

use crate::daemon_config::DaemonConfig;
use crate::{EXIT_DEGRADED, EXIT_DOWN, EXIT_OK, Report};

/// `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Re-hash every pinned model file (minutes for the 4B model) instead of comparing sizes.
    #[arg(long)]
    deep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, serde::Serialize)]
struct Check {
    name: &'static str,
    level: Level,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}
fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}
fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs `doctor`.
pub fn run(config: &Path, a: &DoctorArgs) -> Report {
    let mut checks = Vec::new();
    let cfg = match DaemonConfig::load(config) {
        Ok(c) => {
            checks.push(config_check(config, &c));
            if let Some(files) = model_files_check(&c) {
                checks.push(files);
            }
            c
        }
        Err(e) => {
            checks.push(fail(
                "configuration",
                e.to_string(),
                "fix the file (or the drop-in) the message names",
            ));
            DaemonConfig { config: None }
        }
    };
    gpu_checks(&cfg, &mut checks);
    let backend = cfg
        .config
        .as_ref()
        .map(|c| c.engine.backend)
        .unwrap_or_default();
    checks.push(kernel_support_check(
        backend,
        medgemma_model::backend::cuda_support_dir(),
    ));
    checks.push(pins_check(&cfg, a.deep));
    checks.push(disk_check(&cfg));
    checks.push(socket_check(&cfg));
    checks.push(landlock_check(&cfg));
    checks.push(seccomp_check());
    checks.push(audit_check(&cfg));
    checks.push(clock_check(&cfg));

    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    let mut text = String::new();
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        text.push_str(&format!("[{tag}] {}: {}\n", c.name, c.detail));
        if let Some(f) = &c.fix {
            text.push_str(&format!("       fix: {f}\n"));
        }
    }
    let (code, summary) = match worst {
        Level::Ok => (EXIT_OK, "all checks passed"),
        Level::Warn => (EXIT_DEGRADED, "warnings"),
        Level::Fail => (EXIT_DOWN, "failures"),
    };
    text.push_str(summary);
    Report {
        code,
        text,
        json: serde_json::json!({ "result": worst, "checks": checks }),
    }
}

/// The configuration as the daemon will check it: values, then paths.
fn config_check(path: &Path, cfg: &DaemonConfig) -> Check {
    let Some(c) = &cfg.config else {
        return fail(
            "configuration",
            format!("{} does not exist", path.display()),
            "run medgemmactl setup --model PATH, or give --config",
        );
    };
    match c.check() {
        Ok(()) => ok(
            "configuration",
            format!(
                "{} is readable and valid (with its drop-ins)",
                path.display()
            ),
        ),
        Err(e) => fail(
            "configuration",
            e.to_string(),
            "fix the key the message names; medgemmad refuses to start until then",
        ),
    }
}

/// The files the configuration names (the model, its tokenizer): a fresh
/// install has a valid configuration but no model yet, which is this
/// check's failure, not the configuration's. `None` without a configuration.
fn model_files_check(cfg: &DaemonConfig) -> Option<Check> {
    let c = cfg.config.as_ref()?;
    let scripted = c.engine.backend == medgemma_protocol::config::BackendChoice::Scripted;
    Some(match c.check_files(!scripted) {
        Ok(()) => ok(
            "model files",
            format!("{} is there", c.model.path.display()),
        ),
        Err(e) => fail(
            "model files",
            e.to_string(),
            "copy the model in (safetensors directory or .gguf), then run medgemmactl setup --model PATH",
        ),
    })
}

fn gpu_checks(cfg: &DaemonConfig, checks: &mut Vec<Check>) {
    let fallback = "install the NVIDIA driver and reboot to use the GPU; until then the daemon runs on the CPU (slow)";
    match nvml_wrapper::Nvml::init() {
        Err(e) => {
            checks.push(warn(
                "nvidia driver",
                format!("NVML (libnvidia-ml.so.1) cannot be used: {e}"),
                fallback,
            ));
            if Path::new("/dev/nvidia-uvm").exists() {
                checks.push(ok("/dev/nvidia-uvm", "present"));
            } else {
                checks.push(warn(
                    "/dev/nvidia-uvm",
                    "missing",
                    "load the nvidia-uvm module (modprobe nvidia-uvm) once the driver is installed",
                ));
            }
            checks.push(warn("gpu memory", "no GPU to hold the model", fallback));
        }
        Ok(nvml) => {
            checks.push(ok(
                "nvidia driver",
                format!("version {}", nvml.sys_driver_version().unwrap_or_default()),
            ));
            if Path::new("/dev/nvidia-uvm").exists() {
                checks.push(ok("/dev/nvidia-uvm", "present"));
            } else {
                checks.push(fail("/dev/nvidia-uvm", "missing: CUDA cannot allocate memory", "modprobe nvidia-uvm (or run nvidia-modprobe -u -c=0) and add it to /etc/modules-load.d"));
            }
            let need = crate::gpu_cmd::model_config(cfg)
                .map(|m| crate::gpu_cmd::model_need(&m, cfg.context_length() as u64));
            let mut best: Option<(u64, String)> = None;
            let mut holders = Vec::new();
            for i in 0..nvml.device_count().unwrap_or(0) {
                let Ok(d) = nvml.device_by_index(i) else {
                    continue;
                };
                if let Ok(m) = d.memory_info()
                    && best.as_ref().is_none_or(|(f, _)| m.free > *f)
                {
                    best = Some((m.free, d.name().unwrap_or_default()));
                }
                for p in d.running_compute_processes().unwrap_or_default() {
                    holders.push(format!(
                        "{} ({})",
                        p.pid,
                        crate::gpu_cmd::process_name(p.pid).unwrap_or_default()
                    ));
                }
            }
            match (best, need) {
                (Some((free, name)), Some((n, why))) if free >= n => checks.push(ok(
                    "gpu memory",
                    format!("{name}: {} MiB free, model needs {why}", free >> 20),
                )),
                (Some((free, name)), Some((_, why))) => checks.push(fail(
                    "gpu memory",
                    format!(
                        "{name}: {} MiB free, model needs {why}; held by: {}",
                        free >> 20,
                        if holders.is_empty() {
                            "nobody visible".to_owned()
                        } else {
                            holders.join(", ")
                        }
                    ),
                    "stop the processes holding GPU memory, or lower engine.context_length",
                )),
                (Some((free, name)), None) => checks.push(ok(
                    "gpu memory",
                    format!("{name}: {} MiB free (model size unknown)", free >> 20),
                )),
                (None, _) => checks.push(warn("gpu memory", "no GPU found", fallback)),
            }
        }
    }
}

/// Whether medgemmad's CUDA kernels will compile on this machine: they need
/// NVIDIA's libdevice, which the package ships in `dir`
/// (`/usr/lib/medgemma/cuda` beside `/usr/bin`), never a CUDA toolkit. The
/// daemon asks the same before its sandbox and, in its CUDA build, also
/// compiles a probe kernel with it.
fn kernel_support_check(
    backend: medgemma_protocol::config::BackendChoice,
    dir: Option<std::path::PathBuf>,
) -> Check {
    use medgemma_protocol::config::BackendChoice;
    const NAME: &str = "cuda kernels";
    if matches!(backend, BackendChoice::Cpu | BackendChoice::Scripted) {
        return ok(NAME, "not needed: engine.backend runs on the CPU");
    }
    let result = dir
        .ok_or_else(|| "the path of medgemmactl cannot be read".to_owned())
        .and_then(|d| {
            medgemma_model::backend::cuda_kernel_support(&d)
                .map(|()| d.join(medgemma_model::backend::LIBDEVICE_REL))
        });
    match result {
        Ok(file) => ok(
            NAME,
            format!(
                "NVIDIA's libdevice {} is in place: kernels compile without a CUDA toolkit",
                file.display()
            ),
        ),
        Err(reason) if backend == BackendChoice::Cuda => fail(
            NAME,
            reason,
            "reinstall the medgemma package; until then medgemmad (engine.backend = \"cuda\") refuses to start",
        ),
        Err(reason) => warn(
            NAME,
            reason,
            "reinstall the medgemma package; until then medgemmad runs on the CPU (slow) and says why",
        ),
    }
}

fn pins_check(cfg: &DaemonConfig, deep: bool) -> Check {
    let Some(file) = cfg.pins_file() else {
        return warn(
            "model pins",
            "no model.pins_file in the configuration",
            "run medgemmactl setup --model PATH to pin the model files",
        );
    };
    if !file.exists() {
        return fail(
            "model pins",
            format!("{} is missing", file.display()),
            "run medgemmactl setup --model PATH to pin the model files",
        );
    }
    let pins = match Pins::read(file) {
        Ok(p) => p,
        Err(e) => return fail("model pins", e.to_string(), "run medgemmactl setup again"),
    };
    for p in &pins.files {
        let bad = if deep {
            hash_file(&p.path, |_, _| {})
                .map(|h| h.sha256 != p.sha256)
                .unwrap_or(true)
        } else {
            std::fs::metadata(&p.path)
                .map(|m| m.len() != p.size)
                .unwrap_or(true)
        };
        if bad {
            return fail(
                "model pins",
                format!("{} is missing or does not match its pin", p.path.display()),
                "copy the model file again from the original medium, then run medgemmactl setup",
            );
        }
    }
    ok(
        "model pins",
        format!(
            "{} files match ({})",
            pins.files.len(),
            if deep {
                "SHA-256"
            } else {
                "sizes; --deep re-hashes"
            }
        ),
    )
}

fn disk_check(cfg: &DaemonConfig) -> Check {
    let dir = cfg.audit().dir;
    let probe = if dir.exists() {
        dir.clone()
    } else {
        "/".into()
    };
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let msg = format!(
                "{} MiB free on the file system of {}",
                free >> 20,
                probe.display()
            );
            if free < 100 << 20 {
                fail(
                    "disk space",
                    msg,
                    "free disk space: the daemon refuses to answer when the audit log cannot be written",
                )
            } else if free < 1 << 30 {
                warn(
                    "disk space",
                    msg,
                    "free disk space soon; audit files are kept 180 days",
                )
            } else {
                ok("disk space", msg)
            }
        }
        Err(e) => warn(
            "disk space",
            format!("cannot measure {}: {e}", probe.display()),
            "check the mount",
        ),
    }
}

fn socket_check(cfg: &DaemonConfig) -> Check {
    let path = cfg.admin_socket();
    match std::fs::metadata(&path) {
        Ok(m) if !m.file_type().is_socket() => fail(
            "admin socket",
            format!("{} is not a socket", path.display()),
            "remove it and restart medgemmad",
        ),
        Ok(m) if m.permissions().mode() & 0o007 != 0 => fail(
            "admin socket",
            format!(
                "{} is open to all users (mode {:o})",
                path.display(),
                m.permissions().mode() & 0o777
            ),
            "restart medgemmad (it makes the socket 0660) and check nothing changes its mode",
        ),
        Ok(m) => ok(
            "admin socket",
            format!(
                "{} mode {:o}",
                path.display(),
                m.permissions().mode() & 0o777
            ),
        ),
        Err(_) => warn(
            "admin socket",
            format!(
                "{} does not exist: the daemon is not running or has no admin socket",
                path.display()
            ),
            "start medgemmad and set server.admin_socket",
        ),
    }
}

/// The running kernel's Landlock ABI against `sandbox.min_landlock_abi`,
/// and what the daemon will not enforce with Landlock at that ABI (with what
/// covers it).
fn landlock_check(cfg: &DaemonConfig) -> Check {
    let min = cfg
        .config
        .as_ref()
        .map_or_else(medgemma_protocol::config::defaults::min_landlock_abi, |c| {
            c.sandbox.min_landlock_abi
        });
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    match medgemma_sandbox::kernel_abi() {
        Ok(abi) if abi >= min => {
            let abi = abi.min(medgemma_sandbox::NEWEST_KNOWN_LANDLOCK_ABI);
            let gaps = medgemma_sandbox::gaps_at(abi);
            let detail = if gaps.is_empty() {
                format!("kernel ABI {abi} (minimum {min}): every right enforced")
            } else {
                let list: Vec<String> = gaps
                    .iter()
                    .map(|g| format!("{} (covered by {})", g.right, g.covered_by))
                    .collect();
                format!(
                    "kernel ABI {abi} (minimum {min}); not enforced by Landlock at this ABI: {}",
                    list.join("; ")
                )
            };
            ok("landlock", detail)
        }
        Ok(abi) => fail(
            "landlock",
            format!(
                "the kernel's Landlock ABI is {abi}, below sandbox.min_landlock_abi = {min}: medgemmad will not start"
            ),
            "boot a kernel with a newer Landlock (Debian 13's 6.12 has ABI 6), or lower sandbox.min_landlock_abi to what this site accepts (the README lists what each ABI enforces)",
        ),
        Err(e) => fail(
            "landlock",
            format!("Landlock is not available ({e}; LSMs: {lsm}): medgemmad will not start"),
            "enable it at boot: add landlock to lsm= on the kernel command line (kernel 5.13 or later), then reboot",
        ),
    }
}

fn seccomp_check() -> Check {
    match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
        Ok(a) if a.contains("kill_process") && a.contains("errno") => {
            ok("seccomp", format!("filters available ({})", a.trim()))
        }
        Ok(a) => fail(
            "seccomp",
            format!("incomplete: {}", a.trim()),
            "use a kernel with CONFIG_SECCOMP_FILTER",
        ),
        Err(e) => fail(
            "seccomp",
            format!("not available: {e}"),
            "use a kernel with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
        ),
    }
}

fn audit_check(cfg: &DaemonConfig) -> Check {
    let audit = cfg.audit();
    let dir = &audit.dir;
    if !dir.is_dir() {
        return fail(
            "audit log",
            format!("{} does not exist", dir.display()),
            "run medgemmactl setup",
        );
    }
    let key = &audit.key_file;
    if !key.is_file() {
        return fail(
            "audit log",
            format!("the key file {} does not exist", key.display()),
            "run medgemmactl setup (the daemon refuses to start without it)",
        );
    }
    let content = &audit.content_key_file;
    if !content.is_file() {
        return fail(
            "audit log",
            format!("the content key file {} does not exist", content.display()),
            "run medgemmactl setup",
        );
    }
    if nix::unistd::access(dir.as_path(), nix::unistd::AccessFlags::W_OK).is_err() {
        return fail(
            "audit log",
            format!("{} is not writable by this user", dir.display()),
            "chown it to the daemon's user (mode 0700)",
        );
    }
    ok(
        "audit log",
        format!("{} and key {} present", dir.display(), key.display()),
    )
}

fn clock_check(cfg: &DaemonConfig) -> Check {
    let now = SystemTime::now();
    // 2025-01-01: nothing of this appliance existed before.
    if now < UNIX_EPOCH + Duration::from_secs(1_735_689_600) {
        return fail(
            "clock",
            "the system clock is before 2025",
            "set the clock (timedatectl set-time, or a local NTP server); audit records carry it",
        );
    }
    let today = crate::audit_cmd::parse_time("now")
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() / 86_400);
    let dir = cfg.audit().dir;
    if let Some(today) = today
        && let Ok(entries) = std::fs::read_dir(&dir)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(day) = name
                .strip_prefix("audit-")
                .and_then(|n| n.strip_suffix(".jsonl"))
                && let Ok(t) = crate::audit_cmd::parse_time(day)
                && let Ok(d) = t.duration_since(UNIX_EPOCH)
                && d.as_secs() / 86_400 > today
            {
                return fail(
                    "clock",
                    format!("the audit log has a file dated {day}, after today"),
                    "the clock went backwards: set it right before the daemon writes more records",
                );
            }
        }
    }
    ok("clock", "after 2025 and not behind the audit log")
}

#[cfg(test)]
mod tests {
    use medgemma_protocol::config::BackendChoice;

    use super::*;

    /// A server whose package lost its libdevice is told before the daemon
    /// starts: a failure with `cuda`, a warning with `auto` (the daemon falls
    /// back), nothing to check on the CPU.
    #[test]
    fn missing_libdevice_is_reported_before_the_daemon_starts() {
        let empty = tempfile::tempdir().unwrap();
        let dir = Some(empty.path().to_path_buf());
        let cuda = kernel_support_check(BackendChoice::Cuda, dir.clone());
        assert_eq!(cuda.level, Level::Fail);
        assert!(cuda.detail.contains("libdevice.10.bc"), "{}", cuda.detail);
        assert!(cuda.fix.as_deref().unwrap().contains("refuses to start"));
        let auto = kernel_support_check(BackendChoice::Auto, dir.clone());
        assert_eq!(auto.level, Level::Warn);
        assert!(auto.fix.as_deref().unwrap().contains("runs on the CPU"));
        assert_eq!(
            kernel_support_check(BackendChoice::Cpu, dir).level,
            Level::Ok
        );
    }

    #[test]
    fn a_libdevice_that_is_not_bitcode_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(medgemma_model::backend::LIBDEVICE_REL);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"<html>a download error page</html>").unwrap();
        let c = kernel_support_check(BackendChoice::Cuda, Some(dir.path().to_path_buf()));
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("is not LLVM bitcode"), "{}", c.detail);
    }
}
