//! The sandbox against the real kernel: each test runs `sandbox-probe` (the
//! daemon's startup sequence, then one forbidden thing) as root and checks
//! the exact denial, from inside (the errno the probe reports) and from
//! outside (`/proc/PID`, the exit signal). Control runs with a layer switched
//! off (`--no-landlock`, `--no-seccomp`) show which layer made the denial.
//!
//! Needs root, Landlock ABI >= 6 and a `nobody` user; otherwise each test
//! prints why it is skipped (straight to stderr, past the test harness's
//! capture) and returns. ABI 6 so that each layer can be shown alone (TCP
//! and the scopes without seccomp); the lower ABIs the daemon accepts are
//! tested on the same kernel by capping the ABI the sandbox asks for.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use medgemma_sandbox::SandboxState;
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_sandbox-probe");
const EPERM: i64 = libc::EPERM as i64;
const EACCES: i64 = libc::EACCES as i64;
const ENOSYS: i64 = libc::ENOSYS as i64;
const ENOTTY: i64 = libc::ENOTTY as i64;
const SIGSYS: i32 = libc::SIGSYS;
/// The kernel ABI these tests need (module doc).
const TESTED_KERNEL_ABI: i32 = 6;

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root (the probe must drop root itself)".into());
    }
    match medgemma_sandbox::landlock::kernel_abi() {
        Ok(abi) if abi >= TESTED_KERNEL_ABI => {}
        Ok(abi) => {
            return Some(format!(
                "the kernel's Landlock ABI is {abi}, below {TESTED_KERNEL_ABI}"
            ));
        }
        Err(e) => return Some(format!("no Landlock: {e}")),
    }
    if nobody().is_none() {
        return Some("no `nobody` user".into());
    }
    None
}

/// Returns early from the test with a visible message when it cannot run.
macro_rules! require_root_and_landlock {
    ($name:literal) => {
        if let Some(why) = skip_reason() {
            // Written to the stderr handle, not through eprintln!, so the
            // harness does not swallow it.
            let _ = writeln!(std::io::stderr(), "SKIPPED {}: {why}", $name);
            return;
        }
    };
}

fn nobody() -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name("nobody").ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// Temporary directories the probe's policy names (state rw, model ro) and
/// one it does not (other). All world-writable, so only Landlock can deny.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "medgemma-sandbox-{}-{}-{test}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["", "state", "model", "other"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for file in ["model/weights", "model/trunc-me", "other/file"] {
            let f = root.join(file);
            std::fs::write(&f, b"data\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        Self { root }
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn command(&self, probe: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(PROBE);
        cmd.arg(probe)
            .arg("--state")
            .arg(self.state())
            .arg("--model")
            .arg(self.root.join("model"))
            .arg("--other")
            .arg(self.root.join("other"))
            .args(extra)
            .current_dir(self.state())
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, probe: &str, extra: &[&str]) -> Output {
        self.command(probe, extra).output().unwrap()
    }

    /// Runs a probe that must finish normally and returns its results.
    fn results(&self, probe: &str, extra: &[&str]) -> Value {
        let out = self.run(probe, extra);
        assert!(
            out.status.success(),
            "probe {probe} {extra:?} failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(&out.stdout)["results"].clone()
    }

    /// Runs a probe that must be killed by `signal` after announcing the call.
    fn killed_by(&self, probe: &str, extra: &[&str], signal: i32) -> Output {
        let out = self.run(probe, extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("\"about_to\""),
            "probe {probe} did not reach the call: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.signal(),
            Some(signal),
            "probe {probe} {extra:?}: {:?}, stdout: {stdout}",
            out.status
        );
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn last_json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A `sleep` running as `nobody`, outside any sandbox: same uid as the probe.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Self {
        let (uid, gid) = nobody().unwrap();
        Self(
            Command::new("sleep")
                .arg("30")
                .uid(uid)
                .gid(gid)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field(path: &Path, name: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
}

#[test]
fn hold_state_seen_from_outside_is_fully_locked_down() {
    require_root_and_landlock!("hold_state_seen_from_outside_is_fully_locked_down");
    let fx = Fixture::new("hold");
    let mut child = fx
        .command("hold", &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let inside = serde_json::from_str::<Value>(&line).unwrap()["results"].clone();

    let outside = SandboxState::of_pid(pid);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"));
    let owner = |file: &str| {
        std::fs::metadata(format!("/proc/{pid}/{file}"))
            .map(|m| (m.uid(), m.gid()))
            .ok()
    };
    let proc_owners = [owner("status"), owner("environ"), owner("mem")];
    let mut thread_filters = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = task.unwrap().path().join("status");
        thread_filters.push((
            status_field(&status, "Name"),
            status_field(&status, "Seccomp_filters"),
        ));
    }
    let _ = child.kill();
    let _ = child.wait();

    let (uid, gid) = nobody().unwrap();
    let s = outside.unwrap();
    assert!(s.no_new_privs, "NoNewPrivs: {s:?}");
    assert_eq!(s.seccomp_mode, 2);
    assert!(
        s.seccomp_filters >= 3,
        "Seccomp_filters {}",
        s.seccomp_filters
    );
    assert_eq!(
        [
            s.cap_inheritable,
            s.cap_permitted,
            s.cap_effective,
            s.cap_bounding,
            s.cap_ambient
        ],
        [0; 5]
    );
    assert_eq!(s.uid, [uid; 4]);
    assert_eq!(s.gid, [gid; 4]);
    assert!(s.groups.is_empty(), "Groups: {:?}", s.groups);
    assert!(
        s.core_limit.soft.is_some_and(|v| v <= 1),
        "{:?}",
        s.core_limit
    );
    assert!(
        s.core_limit.hard.is_some_and(|v| v <= 1),
        "{:?}",
        s.core_limit
    );
    let limits = limits.unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max core file size")
            && l.split_whitespace().nth(4) == Some("1")
            && l.split_whitespace().nth(5) == Some("1")),
        "{limits}"
    );
    // Not dumpable: the kernel hands the files under /proc/PID to root
    // although the process runs as nobody (task_dump_owner() in
    // fs/proc/base.c; the directory itself keeps the euid).
    assert_eq!(proc_owners, [Some((0, 0)); 3]);
    // Only SandboxState::problems() of the outside view: everything visible.
    assert_eq!(s.problems(), Vec::<String>::new());

    // Inside view: same, plus what only the process knows.
    assert_eq!(inside["state"]["dumpable"], false);
    assert_eq!(inside["state"]["landlock"]["fully_enforced"], true);
    assert!(inside["state"]["landlock"]["kernel_abi"].as_i64().unwrap() >= 6);
    assert_eq!(inside["state"]["seccomp"]["mode"], "enforce");
    assert_eq!(inside["state"]["insecure_no_sandbox"], false);
    assert_eq!(inside["problems"], serde_json::json!([]));

    // Each role narrowed its thread: one more filter than the process-wide three.
    let filters_of = |name: &str| {
        thread_filters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
    };
    assert_eq!(
        filters_of("engine").as_deref(),
        Some("4"),
        "{thread_filters:?}"
    );
    assert_eq!(
        filters_of("http").as_deref(),
        Some("4"),
        "{thread_filters:?}"
    );
    assert_eq!(
        filters_of("sandbox-probe").as_deref(),
        Some("3"),
        "{thread_filters:?}"
    );
}

#[test]
fn files_outside_the_policy_are_eacces() {
    require_root_and_landlock!("files_outside_the_policy_are_eacces");
    let fx = Fixture::new("fs");
    let root_file = PathBuf::from(format!(
        "/root/.medgemma-sandbox-probe-{}",
        std::process::id()
    ));
    std::fs::write(&root_file, b"secret\n").unwrap();
    std::fs::set_permissions(&root_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = fx.results("fs", &["--root-file", root_file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&root_file);

    for denied in [
        "etc_shadow",
        "root_file",
        "other_read",
        "other_write",
        "other_list",
        "model_write",
        "model_create",
        "dev_zero",
        "bin_true",
        "proc_1_status",
    ] {
        assert_eq!(r[denied], EACCES, "{denied}: {r}");
    }
    for allowed in [
        "model_read",
        "model_list",
        "state_write",
        "state_read",
        "state_mkdir",
        "state_rename",
        "state_remove",
        "state_rmdir",
        "dev_null_rw",
        "proc_self_status",
        "proc_thread_comm_write",
        "proc_thread_comm_write_trunc",
    ] {
        assert_eq!(r[allowed], 0, "{allowed}: {r}");
    }
    // Not dumpable: /proc/PID/comm is root's; only the per-thread comm is
    // writable by the thread group (what the NVIDIA driver uses).
    assert_eq!(r["proc_pid_comm_write"], EACCES, "{r}");
}

#[test]
fn files_control_without_landlock_shows_landlock_made_the_denials() {
    require_root_and_landlock!("files_control_without_landlock_shows_landlock_made_the_denials");
    let fx = Fixture::new("fs-control");
    let r = fx.results("fs", &["--no-landlock"]);
    for now_allowed in [
        "other_read",
        "other_write",
        "other_list",
        "model_write",
        "dev_zero",
        "bin_true",
    ] {
        assert_eq!(r[now_allowed], 0, "{now_allowed}: {r}");
    }
    // DAC still refuses nobody these, with or without Landlock.
    assert_eq!(r["etc_shadow"], EACCES, "{r}");
}

#[test]
fn socket_is_eperm_for_every_family() {
    require_root_and_landlock!("socket_is_eperm_for_every_family");
    let fx = Fixture::new("socket");
    let r = fx.results("net", &["--port", "1"]);
    for family in [
        "socket_inet",
        "socket_inet6",
        "socket_netlink",
        "socket_packet",
        "socket_unix",
        "socket_udp",
    ] {
        assert_eq!(r[family], EPERM, "{family}: {r}");
    }
    // tokio's signal driver needs an unnamed AF_UNIX pair; nothing else.
    assert_eq!(r["socketpair_unix"], 0, "{r}");
    assert_eq!(r["socketpair_inet"], EPERM, "{r}");
}

#[test]
fn tcp_and_abstract_unix_are_denied_by_each_layer() {
    require_root_and_landlock!("tcp_and_abstract_unix_are_denied_by_each_layer");
    let fx = Fixture::new("net");
    // Listeners outside the sandbox, so the calls would otherwise succeed.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port().to_string();
    let name = format!("medgemma-sandbox-test-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let args = ["--port", port.as_str(), "--abstract", name.as_str()];
    let with = |extra: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(extra);
        fx.results("net", &all)
    };

    // Full sandbox: seccomp answers first (connect/bind are in no allow-list).
    let full = with(&[]);
    assert_eq!(full["tcp_connect"], EPERM, "{full}");
    assert_eq!(full["tcp_bind"], EPERM, "{full}");
    assert_eq!(full["abstract_connect"], EPERM, "{full}");

    // Landlock alone: TCP bind/connect handled with no port rule -> EACCES;
    // the abstract-unix scope -> EPERM.
    let landlock = with(&["--no-seccomp"]);
    assert_eq!(landlock["tcp_connect"], EACCES, "{landlock}");
    assert_eq!(landlock["tcp_bind"], EACCES, "{landlock}");
    assert_eq!(landlock["abstract_connect"], EPERM, "{landlock}");

    // Neither layer: the same calls succeed, so the denials above are real.
    let open = with(&["--no-seccomp", "--no-landlock"]);
    assert_eq!(open["tcp_connect"], 0, "{open}");
    assert_eq!(open["tcp_bind"], 0, "{open}");
    assert_eq!(open["abstract_connect"], 0, "{open}");
    drop((tcp, unix));
}

#[test]
fn signals_to_a_same_uid_process_outside_are_eperm() {
    require_root_and_landlock!("signals_to_a_same_uid_process_outside_are_eperm");
    let fx = Fixture::new("signal");
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();

    let full = fx.results("signal", &["--pid", &pid]);
    // tgkill passes seccomp (abort needs it): Landlock's signal scope refuses.
    assert_eq!(full["tgkill_outside"], EPERM, "{full}");
    assert_eq!(full["kill_outside"], EPERM, "{full}");
    assert_eq!(full["kill_init"], EPERM, "{full}");
    assert_eq!(full["tgkill_self"], 0, "{full}");

    // Each layer alone refuses: seccomp lets tgkill reach only this
    // process, Landlock's signal scope (ABI 6) only the sandbox.
    let seccomp = fx.results("signal", &["--pid", &pid, "--no-landlock"]);
    assert_eq!(seccomp["tgkill_outside"], EPERM, "{seccomp}");
    assert_eq!(seccomp["tgkill_self"], 0, "{seccomp}");
    let landlock = fx.results("signal", &["--pid", &pid, "--no-seccomp"]);
    assert_eq!(landlock["tgkill_outside"], EPERM, "{landlock}");
    // Control: with neither, the same uid may signal the sleeper.
    let control = fx.results("signal", &["--pid", &pid, "--no-landlock", "--no-seccomp"]);
    assert_eq!(control["tgkill_outside"], 0, "{control}");
}

#[test]
fn ptrace_kills_the_process_with_sigsys() {
    require_root_and_landlock!("ptrace_kills_the_process_with_sigsys");
    Fixture::new("ptrace").killed_by("ptrace", &[], SIGSYS);
}

#[test]
fn execve_kills_the_process_with_sigsys() {
    require_root_and_landlock!("execve_kills_the_process_with_sigsys");
    Fixture::new("execve").killed_by("execve", &[], SIGSYS);
}

#[test]
fn unshare_user_namespace_kills_the_process_with_sigsys() {
    require_root_and_landlock!("unshare_user_namespace_kills_the_process_with_sigsys");
    Fixture::new("unshare").killed_by("unshare", &[], SIGSYS);
}

#[test]
fn setuid_root_is_eperm() {
    require_root_and_landlock!("setuid_root_is_eperm");
    let r = Fixture::new("setuid").results("setuid", &[]);
    assert_eq!(r["setuid0"], EPERM, "{r}");
}

#[test]
fn threads_start_after_idle_and_roles_narrow() {
    require_root_and_landlock!("threads_start_after_idle_and_roles_narrow");
    let r = Fixture::new("threads").results("threads", &[]);
    assert_eq!(r["spawn"], 0, "{r}");
    assert_eq!(r["spawn_after_idle"], 0, "{r}");
    // clone3 -> ENOSYS so glibc falls back to clone; clone without
    // CLONE_THREAD (fork) is refused.
    assert_eq!(r["clone3"], ENOSYS, "{r}");
    assert_eq!(r["fork"], EPERM, "{r}");

    assert_eq!(r["main_role"], Value::Null, "{r}");
    // The CUDA engine (and Role::Engine, its old name): executable
    // mappings, memfd, and ioctl only with the NVIDIA driver's requests,
    // which reach the kernel (stdin is /dev/null: ENOTTY).
    for (name, role) in [("engine", "engine"), ("engine-cuda", "engine-cuda")] {
        let engine = &r[name];
        assert_eq!(engine["narrowed"], 0, "{r}");
        assert_eq!(engine["role"], role, "{r}");
        assert_eq!(engine["seccomp_filters"], 4, "{r}");
        assert_eq!(engine["spawn_after_idle"], 0, "{r}");
        assert_eq!(engine["mmap_exec"], 0, "{r}");
        assert_eq!(engine["mprotect_exec"], 0, "{r}");
        assert_eq!(engine["memfd_create"], 0, "{r}");
        assert_eq!(engine["ioctl_nv_check_version"], ENOTTY, "{r}");
        assert_eq!(engine["ioctl_uvm_initialize"], ENOTTY, "{r}");
        assert_eq!(engine["ioctl_tiocgwinsz"], EPERM, "{r}");
    }
    // The CPU engine: none of that.
    let cpu = &r["engine-cpu"];
    assert_eq!(cpu["narrowed"], 0, "{r}");
    assert_eq!(cpu["role"], "engine-cpu", "{r}");
    assert_eq!(cpu["seccomp_filters"], 4, "{r}");
    assert_eq!(cpu["spawn_after_idle"], 0, "{r}");
    for refused in [
        "mmap_exec",
        "mprotect_exec",
        "memfd_create",
        "ioctl_tiocgwinsz",
        "ioctl_nv_check_version",
        "ioctl_uvm_initialize",
    ] {
        assert_eq!(cpu[refused], EPERM, "engine-cpu {refused}: {r}");
    }

    let http = &r["http"];
    assert_eq!(http["narrowed"], 0, "{r}");
    assert_eq!(http["role"], "http", "{r}");
    assert_eq!(http["seccomp_filters"], 4, "{r}");
    assert_eq!(http["spawn_after_idle"], 0, "{r}");
    assert_eq!(http["mmap_exec"], EPERM, "{r}");
    assert_eq!(http["memfd_create"], EPERM, "{r}");
    assert_eq!(http["ioctl_tiocgwinsz"], EPERM, "{r}");
    assert_eq!(http["ioctl_nv_check_version"], EPERM, "{r}");

    // thread_start_hook (for tokio's on_thread_start) narrows the same way.
    let hooked = &r["hooked"];
    assert_eq!(hooked["seccomp_filters"], 4, "{r}");
    assert_eq!(hooked["mmap_exec"], EPERM, "{r}");
    assert_eq!(hooked["spawn"], 0, "{r}");
}

#[test]
fn abort_leaves_no_core_file() {
    require_root_and_landlock!("abort_leaves_no_core_file");
    let fx = Fixture::new("abort");
    let out = fx.killed_by("abort", &[], libc::SIGABRT);
    assert!(!out.status.core_dumped(), "{:?}", out.status);
    let cores: Vec<_> = std::fs::read_dir(fx.state())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "core files: {cores:?}");
}

#[test]
fn abort_control_without_drop_and_hardening_dumps_core() {
    require_root_and_landlock!("abort_control_without_drop_and_hardening_dumps_core");
    // Only meaningful where a core would land in the working directory.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
    if pattern.trim() != "core" || hard < 1 << 20 {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED abort_control_without_drop_and_hardening_dumps_core: core_pattern is \
             {:?} and the hard core limit {hard}; the control needs \"core\" and a large limit",
            pattern.trim()
        );
        return;
    }
    let fx = Fixture::new("abort-control");
    let out = fx.killed_by("abort", &["--no-drop", "--no-harden"], libc::SIGABRT);
    assert!(out.status.core_dumped(), "{:?}", out.status);
}

#[test]
fn seccomp_log_mode_logs_instead_of_denying_but_still_kills() {
    require_root_and_landlock!("seccomp_log_mode_logs_instead_of_denying_but_still_kills");
    let fx = Fixture::new("log");
    let r = fx.results("log", &["--seccomp-log"]);
    // socket() is in no allow-list: logged, not denied.
    assert_eq!(r["socket_inet"], 0, "{r}");
    assert_eq!(r["spawn"], 0, "{r}");
    assert_eq!(r["state"]["seccomp_mode"], 2, "{r}");
    assert!(r["state"]["seccomp_filters"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(r["state"]["seccomp"]["mode"], "log", "{r}");
    assert_eq!(
        r["narrowed_twice"],
        serde_json::json!({ "role": "http", "seccomp_filters": 4 }),
        "{r}"
    );
    // Never an off switch: the kill list still kills.
    fx.killed_by("execve", &["--seccomp-log"], SIGSYS);
}

#[test]
fn inherited_fds_are_closed_and_env_cleared_but_systemd_sockets_kept() {
    require_root_and_landlock!("inherited_fds_are_closed_and_env_cleared_but_systemd_sockets_kept");
    let fx = Fixture::new("fds");
    // LISTEN_PID must be the probe's pid: the shell exports its own and execs.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=api; \
             exec \"$0\" fds --state \"$1\" 3</dev/null 9</etc/hostname",
        )
        .arg(PROBE)
        .arg(fx.state())
        .env("MEDGEMMA_KEEP", "yes")
        .env("SECRET_TOKEN", "hunter2")
        .current_dir(fx.state())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = last_json(&out.stdout)["results"].clone();
    let fds: Vec<i64> = r["open_fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(fds.contains(&3), "systemd socket closed: {r}");
    assert!(!fds.contains(&9), "inherited fd 9 left open: {r}");
    assert_eq!(
        r["setup"]["listen_fds"],
        serde_json::json!([{ "fd": 3, "name": "api" }]),
        "{r}"
    );
    assert!(
        r["setup"]["cleaned"]["closed_fds"]
            .as_array()
            .unwrap()
            .contains(&Value::from(9)),
        "{r}"
    );
    assert_eq!(
        r["env"],
        serde_json::json!({ "MEDGEMMA_KEEP": "yes" }),
        "{r}"
    );
}

/// Two test libraries built with `cc` into directories no loader searches
/// by default: `libmgprobea.so.1` (a soname link to `libmgprobea.so.1.0.0`)
/// needs `libmgprobeb.so.1`, found through its `DT_RUNPATH`; a third,
/// `libmgprobec.so.1`, lives in a directory outside the derived set.
struct TestLibs {
    a_dir: PathBuf,
    a_file: PathBuf,
    b_file: PathBuf,
    outside: PathBuf,
}

impl TestLibs {
    fn build(fx: &Fixture) -> Option<Self> {
        let dir = |name: &str| {
            let d = fx.root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            d
        };
        let (a_dir, b_dir, c_dir) = (dir("libs-a"), dir("libs-b"), dir("libs-outside"));
        let cc = |src: &str, out: &Path, extra: &[&str]| -> bool {
            let c = out.with_extension("c");
            std::fs::write(&c, src).unwrap();
            let status = Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(out)
                .arg(&c)
                .args(extra)
                .status();
            matches!(status, Ok(s) if s.success())
        };
        let b_file = b_dir.join("libmgprobeb.so.1");
        let a_file = a_dir.join("libmgprobea.so.1.0.0");
        let outside = c_dir.join("libmgprobec.so.1");
        let rpath = format!("-Wl,--enable-new-dtags,-rpath,{}", b_dir.display());
        let built = cc(
            "int mg_probe_b(int x) { return 2 * x; }\n",
            &b_file,
            &["-Wl,-soname,libmgprobeb.so.1"],
        ) && cc(
            "int mg_probe_b(int);\nint mg_probe_a(int x) { return mg_probe_b(x) + 1; }\n",
            &a_file,
            &[
                "-Wl,-soname,libmgprobea.so.1",
                &rpath,
                &format!("-L{}", b_dir.display()),
                "-l:libmgprobeb.so.1",
            ],
        ) && cc(
            "int mg_probe_c(int x) { return x; }\n",
            &outside,
            &["-Wl,-soname,libmgprobec.so.1"],
        );
        if !built {
            return None;
        }
        std::os::unix::fs::symlink("libmgprobea.so.1.0.0", a_dir.join("libmgprobea.so.1")).unwrap();
        Some(Self {
            a_dir,
            a_file,
            b_file,
            outside,
        })
    }

    /// The probe, found through `LD_LIBRARY_PATH` as forward-compatibility
    /// CUDA libraries are (the probe clears its environment before loading:
    /// the loader keeps the start-up value).
    fn run(&self, fx: &Fixture, extra: &[&str]) -> Value {
        let mut args = vec![
            "--preload",
            "libmgprobea.so.1",
            "--outside",
            self.outside.to_str().unwrap(),
            "--late",
            "libmgprobec.so.1",
        ];
        args.extend_from_slice(extra);
        let ld_path = format!(
            "{}:{}",
            self.a_dir.display(),
            self.outside.parent().unwrap().display()
        );
        let out = fx
            .command("libs", &args)
            .env("LD_LIBRARY_PATH", ld_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "probe libs {extra:?} failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(&out.stdout)["results"].clone()
    }
}

#[test]
fn libraries_loaded_before_the_sandbox_work_inside_it_and_others_are_refused() {
    require_root_and_landlock!(
        "libraries_loaded_before_the_sandbox_work_inside_it_and_others_are_refused"
    );
    let fx = Fixture::new("libs");
    let Some(libs) = TestLibs::build(&fx) else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED libraries_loaded_before_the_sandbox_work_inside_it_and_others_are_refused: \
             no working `cc` to build the test libraries"
        );
        return;
    };
    let r = libs.run(&fx, &[]);

    // The loader resolved the soname link to its file, and the dependency
    // through DT_RUNPATH: those two files, nothing that was loaded before.
    let preloaded = &r["setup"]["preloaded"];
    assert_eq!(
        preloaded["libraries"][0]["path"],
        libs.a_file.to_str().unwrap(),
        "{r}"
    );
    let files: Vec<&str> = preloaded["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        vec![libs.a_file.to_str().unwrap(), libs.b_file.to_str().unwrap()],
        "{r}"
    );
    // ... and Landlock got one read rule per file, not per directory.
    let rules: Vec<&str> = r["setup"]["landlock"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["path"].as_str().unwrap())
        .collect();
    for file in &files {
        assert!(rules.contains(file), "{file} has no rule: {rules:?}");
    }
    assert!(
        !rules.iter().any(|p| Path::new(p) == libs.a_dir),
        "{rules:?}"
    );

    // Under the sandbox: a later dlopen by soname (what cudarc and NVML do)
    // finds the loaded library, its symbols work through the dependency,
    // and the files can be read again.
    assert_eq!(r["reopen"]["libmgprobea.so.1"], 0, "{r}");
    assert_eq!(r["call_mg_probe_a_20"]["libmgprobea.so.1"], 41, "{r}");
    for file in &files {
        assert_eq!(r["read_preloaded_files"][file], 0, "{file}: {r}");
    }
    // A library outside the derived set: refused by path and by soname
    // through the search path (the GPU server's failure, now only for
    // libraries nobody asked to preload).
    assert_eq!(r["outside_dlopen"], "Permission denied", "{r}");
    assert_eq!(r["outside_open"], EACCES, "{r}");
    // (glibc reports the errno of the last directory it tried, so the
    // reason varies with the search path; the control below loads it.)
    assert!(r["late_dlopen"].is_string(), "{r}");

    // Controls: without Landlock the outside library loads (so Landlock made
    // the denial); without the preload, the library asked for after the
    // lockdown is refused exactly as libnvidia-ml.so.1 was on the GPU server.
    let open = libs.run(&fx, &["--no-landlock"]);
    assert_eq!(open["outside_dlopen"], 0, "{open}");
    assert_eq!(open["late_dlopen"], 0, "{open}");
    let late = libs.run(&fx, &["--no-preload"]);
    assert!(
        late["reopen"]["libmgprobea.so.1"]
            .as_str()
            .is_some_and(|e| e.contains("cannot open shared object file")),
        "{late}"
    );
    assert_eq!(late["call_mg_probe_a_20"], serde_json::json!({}), "{late}");
}

/// Every thread's `(name, Seccomp_filters)` of `pid`, read from outside.
fn thread_filters(pid: u32) -> Vec<(String, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            // A thread may exit between the listing and the read.
            let text = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| {
                text.lines().find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(':')
                        .map(|v| v.trim().to_owned())
                })
            };
            Some((field("Name")?, field("Seccomp_filters")?.parse().ok()?))
        })
        .collect()
}

#[test]
fn seccomp_stack_stays_flat_when_threads_start_threads_across_idle_periods() {
    require_root_and_landlock!(
        "seccomp_stack_stays_flat_when_threads_start_threads_across_idle_periods"
    );
    let fx = Fixture::new("churn");
    let child = fx
        .command("churn", &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Sample every thread from outside until the probe ends.
    let mut samples: Vec<Vec<(String, u32)>> = Vec::new();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let s = thread_filters(pid);
        if !s.is_empty() {
            samples.push(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = last_json(&out.stdout)["results"].clone();

    // From outside: many generations were seen, and no thread ever carried
    // more than the three process-wide filters plus one role filter.
    let seen: std::collections::BTreeSet<&str> = samples
        .iter()
        .flatten()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert!(
        seen.len() >= 20,
        "only {} generations seen: {seen:?}",
        seen.len()
    );
    let worst = samples
        .iter()
        .flatten()
        .max_by_key(|(_, f)| *f)
        .cloned()
        .unwrap();
    assert_eq!(worst.1, 4, "the filter stack grew: {worst:?}");
    // Flat over time: every sample taken while generations ran peaks at 4.
    let peaks: Vec<u32> = samples
        .iter()
        .filter(|s| s.iter().any(|(n, _)| n.starts_with("gen-")))
        .map(|s| s.iter().map(|(_, f)| *f).max().unwrap_or(0))
        .collect();
    assert!(peaks.len() >= 20, "{} samples", peaks.len());
    assert!(peaks.iter().all(|&p| p == 4), "{peaks:?}");

    // From inside: every generation, main and the engine's workers agree.
    let gens = r["generation_filters"].as_array().unwrap();
    assert_eq!(gens.len(), 40, "{r}");
    assert!(gens.iter().all(|g| g == 4), "{r}");
    assert_eq!(r["main_filters"], 4, "{r}");
    assert_eq!(r["engine_worker_filters"], serde_json::json!([4, 4]), "{r}");
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_landlock_abi_from_the_minimum_up_applies_enforces_and_reports_its_gaps() {
    require_root_and_landlock!(
        "every_landlock_abi_from_the_minimum_up_applies_enforces_and_reports_its_gaps"
    );
    let kernel = medgemma_sandbox::landlock::kernel_abi().unwrap();
    let newest = kernel.min(medgemma_sandbox::NEWEST_KNOWN_LANDLOCK_ABI);
    for abi in medgemma_sandbox::MIN_LANDLOCK_ABI..=newest {
        let fx = Fixture::new(&format!("abi{abi}"));
        let cap = abi.to_string();
        let r = fx.results("fs", &["--landlock-abi", &cap]);
        let state = fx.results("state", &["--landlock-abi", &cap]);
        let report = state["state"]["landlock"].clone();
        // A level at or above the minimum is no problem: the gaps are covered.
        assert_eq!(
            state["problems"],
            serde_json::json!([]),
            "ABI {abi}: {state}"
        );

        // Applied, fully enforced, at exactly this ABI, and it says so.
        assert_eq!(report["fully_enforced"], true, "ABI {abi}: {report}");
        assert_eq!(report["enforced_abi"], abi, "{report}");
        assert_eq!(report["kernel_abi"], kernel, "{report}");
        assert_eq!(report["max_abi"], abi, "{report}");
        let fs = names(&report["handled_fs"]);
        for (right, since) in [("Refer", 2), ("Truncate", 3), ("IoctlDev", 5)] {
            assert_eq!(
                fs.contains(&right.to_owned()),
                abi >= since,
                "ABI {abi}: {fs:?}"
            );
        }
        assert_eq!(
            names(&report["handled_net"]).is_empty(),
            abi < 4,
            "{report}"
        );
        assert_eq!(names(&report["scopes"]).is_empty(), abi < 6, "{report}");
        // The gaps: exactly the rights this ABI lacks, each with its cover.
        let gaps: Vec<(String, i64)> = report["not_enforced"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                assert!(g["covered_by"].as_str().unwrap().len() > 20, "{g}");
                (
                    g["right"].as_str().unwrap().to_owned(),
                    g["since_abi"].as_i64().unwrap(),
                )
            })
            .collect();
        assert!(
            gaps.iter().all(|(_, since)| *since > i64::from(abi)),
            "{gaps:?}"
        );
        for (right, since) in [
            ("Truncate", 3),
            ("BindTcp", 4),
            ("IoctlDev", 5),
            ("Signal", 6),
        ] {
            assert_eq!(
                gaps.iter().any(|(r, _)| r == right),
                abi < since,
                "ABI {abi}: {gaps:?}"
            );
        }

        // Checked from the outside of the policy at every level: files
        // outside the rules are refused, the model is read-only, state works.
        for denied in [
            "etc_shadow",
            "other_read",
            "other_write",
            "other_list",
            "model_write",
            "model_create",
            "dev_zero",
            "bin_true",
        ] {
            assert_eq!(r[denied], EACCES, "ABI {abi} {denied}: {r}");
        }
        for allowed in [
            "model_read",
            "model_list",
            "state_write",
            "state_read",
            "state_mkdir",
            "state_rename",
            "state_remove",
            "state_rmdir",
            "dev_null_rw",
            "proc_self_status",
            "proc_thread_comm_write",
            "proc_thread_comm_write_trunc",
        ] {
            assert_eq!(r[allowed], 0, "ABI {abi} {allowed}: {r}");
        }
        // Truncating the read-only model: seccomp refuses at every level.
        assert_eq!(r["model_trunc_rdonly"], EPERM, "ABI {abi}: {r}");
        assert_eq!(r["model_trunc_len"], 5, "ABI {abi}: {r}");
    }
}

#[test]
fn below_abi_3_4_and_6_the_gaps_are_real_and_seccomp_covers_them() {
    require_root_and_landlock!("below_abi_3_4_and_6_the_gaps_are_real_and_seccomp_covers_them");
    // Truncation (ABI 3): Landlock alone at ABI 2 lets a read-only open
    // truncate the model; at ABI 3 it refuses; with seccomp, refused anyway.
    let fx = Fixture::new("gap-trunc");
    let lone = fx.results("fs", &["--landlock-abi", "3", "--no-seccomp"]);
    assert_eq!(lone["model_trunc_rdonly"], EACCES, "{lone}");
    let gap = fx.results("fs", &["--landlock-abi", "2", "--no-seccomp"]);
    assert_eq!(gap["model_trunc_rdonly"], 0, "{gap}");
    assert_eq!(gap["model_trunc_len"], 0, "{gap}");

    // TCP (ABI 4) and abstract unix sockets (ABI 6).
    let fx = Fixture::new("gap-net");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port().to_string();
    let name = format!("medgemma-sandbox-gap-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let net = |extra: &[&str]| {
        let mut all = vec!["--port", port.as_str(), "--abstract", name.as_str()];
        all.extend_from_slice(extra);
        fx.results("net", &all)
    };
    let gap = net(&["--landlock-abi", "3", "--no-seccomp"]);
    assert_eq!(gap["tcp_connect"], 0, "{gap}");
    assert_eq!(gap["abstract_connect"], 0, "{gap}");
    let covered = net(&["--landlock-abi", "3"]);
    assert_eq!(covered["tcp_connect"], EPERM, "{covered}");
    assert_eq!(covered["tcp_bind"], EPERM, "{covered}");
    assert_eq!(covered["abstract_connect"], EPERM, "{covered}");
    assert_eq!(covered["socketpair_unix"], 0, "{covered}");
    drop((tcp, unix));

    // Signals (ABI 6).
    let sleeper = Sleeper::new();
    let pid = sleeper.0.id().to_string();
    let gap = fx.results(
        "signal",
        &["--pid", &pid, "--landlock-abi", "5", "--no-seccomp"],
    );
    assert_eq!(gap["tgkill_outside"], 0, "{gap}");
    let covered = fx.results("signal", &["--pid", &pid, "--landlock-abi", "5"]);
    assert_eq!(covered["tgkill_outside"], EPERM, "{covered}");
    assert_eq!(covered["tgkill_self"], 0, "{covered}");
}

#[test]
fn a_site_minimum_above_the_kernel_or_below_the_asked_abi_refuses_to_start() {
    require_root_and_landlock!(
        "a_site_minimum_above_the_kernel_or_below_the_asked_abi_refuses_to_start"
    );
    let kernel = medgemma_sandbox::landlock::kernel_abi().unwrap();
    let fx = Fixture::new("min-abi");
    if kernel < medgemma_sandbox::NEWEST_KNOWN_LANDLOCK_ABI {
        let above = (kernel + 1).to_string();
        let out = fx.run("state", &["--min-landlock-abi", &above]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("Landlock ABI {above} or newer is required"))
                && err.contains(&format!("the kernel offers ABI {kernel}")),
            "{err}"
        );
    }
    let out = fx.run("state", &["--min-landlock-abi", "5", "--landlock-abi", "4"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sandbox.min_landlock_abi = 5"),
        "{out:?}"
    );
    // The site's minimum itself is met: the report carries it.
    let r = fx.results("state", &["--min-landlock-abi", "6"]);
    assert_eq!(r["state"]["landlock"]["required_abi"], 6, "{r}");
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
}

#[test]
fn a_cpu_only_process_maps_no_executable_memory_on_any_thread() {
    require_root_and_landlock!("a_cpu_only_process_maps_no_executable_memory_on_any_thread");
    let fx = Fixture::new("cpu-process");
    // The process-wide filter of a CPU-only daemon (no role narrowing yet).
    let cpu = fx.results("threads", &["--engine", "cpu"]);
    assert_eq!(cpu["process_mmap_exec"], EPERM, "{cpu}");
    assert_eq!(cpu["process_memfd_create"], EPERM, "{cpu}");
    assert_eq!(cpu["spawn_after_idle"], 0, "{cpu}");
    assert_eq!(cpu["engine-cpu"]["mmap_exec"], EPERM, "{cpu}");
    // The same probe with the CUDA engine's process-wide filter allows them
    // (only the CUDA engine needs them), so the refusal above is the filter's.
    let cuda = fx.results("threads", &["--engine", "cuda"]);
    assert_eq!(cuda["process_mmap_exec"], 0, "{cuda}");
    assert_eq!(cuda["process_memfd_create"], 0, "{cuda}");
}
