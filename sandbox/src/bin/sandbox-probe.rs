//! Test helper for `tests/probes.rs`; never shipped (the .deb packages only
//! `medgemmad`). Run as root, it applies the daemon's startup sequence
//! (clean, resolve user, open sockets early, drop, harden, Landlock,
//! seccomp), then tries the forbidden things of one probe and prints one
//! JSON line: `{"probe": NAME, "results": {what: errno, ...}}` where 0 means
//! the call succeeded. Probes whose call must kill the process print a
//! `"about_to"` line first and are judged by their exit signal.
//!
//! Usage: `sandbox-probe PROBE [--user NAME] [--state DIR] [--model DIR]
//! [--other DIR] [--root-file PATH] [--port N] [--abstract NAME] [--pid PID]
//! [--preload SONAME]... [--no-preload] [--outside PATH] [--late SONAME]
//! [--landlock-abi N] [--min-landlock-abi N] [--engine cpu|cuda]
//! [--seccomp-log] [--no-drop] [--no-harden] [--no-landlock] [--no-seccomp]`.
//! The `--no-*` switches exist for control runs that show which layer denies.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use medgemma_sandbox::{
    LandlockOptions, LandlockPolicy, LibraryRequest, MIN_LANDLOCK_ABI, Role, SandboxState,
    SeccompMode, SeccompPolicy, apply_landlock_with, apply_seccomp, clean_process, drop_privileges,
    harden_process, listen_fds, narrow_current_thread, preload_libraries, resolve_user,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, UnixAddr, bind, connect, socket, socketpair,
};
use nix::sys::stat::Mode;
use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Args {
    probe: String,
    user: String,
    state: Option<PathBuf>,
    model: Option<PathBuf>,
    other: Option<PathBuf>,
    root_file: Option<PathBuf>,
    port: u16,
    abstract_name: Option<String>,
    pid: Option<i32>,
    preload: Vec<String>,
    no_preload: bool,
    outside: Option<PathBuf>,
    late: Option<String>,
    landlock_abi: Option<i32>,
    min_landlock_abi: Option<i32>,
    engine: Option<Role>,
    log: bool,
    no_drop: bool,
    no_harden: bool,
    no_landlock: bool,
    no_seccomp: bool,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        probe: it
            .next()
            .unwrap_or_else(|| fail("usage: sandbox-probe PROBE [options]")),
        user: "nobody".into(),
        ..Args::default()
    };
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--user" => a.user = value(),
            "--state" => a.state = Some(value().into()),
            "--model" => a.model = Some(value().into()),
            "--other" => a.other = Some(value().into()),
            "--root-file" => a.root_file = Some(value().into()),
            "--port" => a.port = value().parse().unwrap_or_else(|_| fail("bad --port")),
            "--abstract" => a.abstract_name = Some(value()),
            "--pid" => a.pid = Some(value().parse().unwrap_or_else(|_| fail("bad --pid"))),
            "--preload" => a.preload.push(value()),
            "--no-preload" => a.no_preload = true,
            "--outside" => a.outside = Some(value().into()),
            "--late" => a.late = Some(value()),
            "--landlock-abi" => {
                a.landlock_abi = Some(value().parse().unwrap_or_else(|_| fail("bad ABI")));
            }
            "--min-landlock-abi" => {
                a.min_landlock_abi = Some(value().parse().unwrap_or_else(|_| fail("bad ABI")));
            }
            "--engine" => {
                a.engine = Some(match value().as_str() {
                    "cpu" => Role::EngineCpu,
                    "cuda" => Role::EngineCuda,
                    _ => fail("--engine is cpu or cuda"),
                });
            }
            "--seccomp-log" => a.log = true,
            "--no-drop" => a.no_drop = true,
            "--no-harden" => a.no_harden = true,
            "--no-landlock" => a.no_landlock = true,
            "--no-seccomp" => a.no_seccomp = true,
            other => fail(&format!("unknown option {other}")),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("sandbox-probe: {msg}");
    std::process::exit(2)
}

fn check<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| fail(&format!("{what}: {e}")))
}

/// 0 for success, the errno otherwise.
fn code<T>(r: nix::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e as i32,
    }
}

fn io_code<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn emit(probe: &str, results: BTreeMap<&str, Value>) {
    let line = json!({ "probe": probe, "results": results });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn about_to(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json!({ "about_to": what }));
    let _ = out.flush();
}

/// Sockets opened before the sandbox, as the daemon opens its own.
struct Early {
    tcp_connect: OwnedFd,
    tcp_bind: OwnedFd,
    unix: OwnedFd,
}

fn main() {
    let args = parse_args();

    // 1. Clean: keep systemd's sockets, one variable.
    let listeners = check("listen_fds", listen_fds());
    let keep: Vec<_> = listeners.iter().map(|l| l.fd).collect();
    let cleaned = check("clean_process", clean_process(&keep, &["MEDGEMMA_KEEP"]));

    // 2. Resolve the user while /etc/passwd is readable.
    let user = check("resolve_user", resolve_user(&args.user));

    // 3. Open what is needed later: sockets (socket() is denied afterwards).
    let stream = SockFlag::SOCK_CLOEXEC;
    let early = Early {
        tcp_connect: check(
            "socket",
            socket(AddressFamily::Inet, SockType::Stream, stream, None),
        ),
        tcp_bind: check(
            "socket",
            socket(AddressFamily::Inet, SockType::Stream, stream, None),
        ),
        unix: check(
            "socket",
            socket(AddressFamily::Unix, SockType::Stream, stream, None),
        ),
    };
    if let Some(state) = &args.state {
        check("chdir", nix::unistd::chdir(state));
    }
    if args.probe == "abort" {
        // Allow cores as far as the hard limit lets us, so that only
        // harden_process() (and the non-dumpable flag) stands in the way.
        let (_, hard) = check("getrlimit", getrlimit(Resource::RLIMIT_CORE));
        check("setrlimit", setrlimit(Resource::RLIMIT_CORE, hard, hard));
    }

    // 4. Drop root.
    let dropped = if args.no_drop {
        Value::Null
    } else {
        json!(check("drop_privileges", drop_privileges(&user)))
    };
    // 5. Harden.
    let hardened = if args.no_harden {
        Value::Null
    } else {
        json!(check("harden_process", harden_process()))
    };
    // 5b. Libraries the process needs later, loaded while the file system is
    //     open; Landlock then allows exactly the files the loader resolved.
    let preloaded = if args.preload.is_empty() || args.no_preload {
        None
    } else {
        let requests: Vec<_> = args
            .preload
            .iter()
            .map(|n| LibraryRequest::required(n.clone()))
            .collect();
        Some(check("preload_libraries", preload_libraries(&requests)))
    };
    // 6. Landlock.
    let landlock = if args.no_landlock {
        Value::Null
    } else {
        let mut read_only: Vec<PathBuf> = args.model.iter().cloned().collect();
        read_only.extend(preloaded.iter().flat_map(|p| p.landlock_read_only()));
        let policy = LandlockPolicy {
            read_only,
            read_write: args.state.iter().cloned().collect(),
            devices: vec!["/dev/null".into()],
            proc_write_comm: true,
        };
        let options = LandlockOptions {
            min_abi: args.min_landlock_abi.unwrap_or(MIN_LANDLOCK_ABI),
            max_abi: args.landlock_abi,
        };
        json!(check(
            "apply_landlock",
            apply_landlock_with(&policy, &options)
        ))
    };
    // 7. seccomp.
    let mode = if args.log {
        SeccompMode::Log
    } else {
        SeccompMode::Enforce
    };
    let seccomp = if args.no_seccomp {
        Value::Null
    } else {
        let process = match args.engine {
            Some(engine) => SeccompPolicy::process_wide_for(engine),
            None => SeccompPolicy::process_wide(),
        };
        json!(check("apply_seccomp", apply_seccomp(&process, mode)))
    };
    let setup = json!({
        "listen_fds": listeners, "cleaned": cleaned, "dropped": dropped,
        "hardened": hardened, "landlock": landlock, "seccomp": seccomp,
        "preloaded": preloaded,
    });

    let probe = args.probe.clone();
    let results = match probe.as_str() {
        "hold" => hold(mode, &setup),
        "state" => state(&setup),
        "fds" => fds(&early, &setup),
        "fs" => fs(&args),
        "net" => net(&args, &early),
        "signal" => signal(&args),
        "threads" => threads(&args, mode),
        "libs" => libs(&args, &setup),
        "churn" => churn(mode),
        "setuid" => BTreeMap::from([("setuid0", json!(code(nix::unistd::setuid(0.into()))))]),
        "log" => log_mode(),
        "unshare" => {
            about_to("unshare");
            let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
            BTreeMap::from([("unshare", json!(code(r)))])
        }
        "ptrace" => {
            about_to("ptrace");
            // SAFETY: PTRACE_TRACEME takes no pointers; the other arguments are ignored.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            BTreeMap::from([(
                "ptrace",
                json!(if r == 0 { 0 } else { Errno::last() as i32 }),
            )])
        }
        "execve" => {
            about_to("execve");
            let prog = CString::new("/bin/true").unwrap_or_default();
            let r = nix::unistd::execv(&prog, &[&prog]);
            BTreeMap::from([("execve", json!(code(r)))])
        }
        "abort" => {
            about_to("abort");
            std::process::abort()
        }
        other => fail(&format!("unknown probe {other}")),
    };
    emit(&probe, results);
}

fn state(setup: &Value) -> BTreeMap<&'static str, Value> {
    let s = check("SandboxState::current", SandboxState::current());
    BTreeMap::from([
        ("problems", json!(s.problems())),
        ("state", json!(s)),
        ("setup", setup.clone()),
    ])
}

/// Starts an engine and an HTTP thread that narrow themselves, reports, and
/// sleeps until the test kills it.
fn hold(mode: SeccompMode, setup: &Value) -> BTreeMap<&'static str, Value> {
    let narrowed = !matches!(setup["seccomp"], Value::Null);
    for (name, role) in [("engine", Role::Engine), ("http", Role::Http)] {
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if narrowed {
                    check(
                        "narrow_current_thread",
                        narrow_current_thread(&SeccompPolicy::for_role(role), mode),
                    );
                }
                loop {
                    std::thread::park();
                }
            });
        check("spawn", spawned);
    }
    // Let both threads install their filters before the test looks.
    std::thread::sleep(Duration::from_millis(200));
    let mut results = state(setup);
    results.insert("ready", json!(true));
    emit("hold", results);
    std::thread::sleep(Duration::from_secs(120));
    BTreeMap::from([("timeout", json!(true))])
}

fn fds(early: &Early, setup: &Value) -> BTreeMap<&'static str, Value> {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    BTreeMap::from([
        ("open_fds", json!(open)),
        (
            "early_fds",
            json!([
                early.tcp_connect.as_raw_fd(),
                early.tcp_bind.as_raw_fd(),
                early.unix.as_raw_fd()
            ]),
        ),
        ("env", json!(env)),
        ("setup", setup.clone()),
    ])
}

fn open_code(path: &Path, flags: OFlag) -> i32 {
    code(open(
        path,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    ))
}

fn fs(args: &Args) -> BTreeMap<&'static str, Value> {
    let mut r = BTreeMap::new();
    r.insert(
        "etc_shadow",
        json!(open_code("/etc/shadow".as_ref(), OFlag::O_RDONLY)),
    );
    if let Some(p) = &args.root_file {
        r.insert("root_file", json!(open_code(p, OFlag::O_RDONLY)));
    }
    if let Some(other) = &args.other {
        r.insert(
            "other_read",
            json!(open_code(&other.join("file"), OFlag::O_RDONLY)),
        );
        r.insert(
            "other_write",
            json!(open_code(&other.join("file"), OFlag::O_WRONLY)),
        );
        r.insert(
            "other_list",
            json!(open_code(other, OFlag::O_RDONLY | OFlag::O_DIRECTORY)),
        );
    }
    if let Some(model) = &args.model {
        r.insert(
            "model_read",
            json!(io_code(std::fs::read(model.join("weights")))),
        );
        r.insert(
            "model_list",
            json!(io_code(std::fs::read_dir(model).map(|d| d.count()))),
        );
        r.insert(
            "model_write",
            json!(open_code(&model.join("weights"), OFlag::O_WRONLY)),
        );
        // Truncation by a read-only open: below Landlock ABI 3 only seccomp
        // refuses it (O_TRUNC without write access).
        let victim = model.join("trunc-me");
        if victim.exists() {
            r.insert(
                "model_trunc_rdonly",
                json!(open_code(&victim, OFlag::O_RDONLY | OFlag::O_TRUNC)),
            );
            r.insert(
                "model_trunc_len",
                json!(
                    std::fs::read(&victim)
                        .map(|b| b.len())
                        .unwrap_or(usize::MAX)
                ),
            );
        }
        r.insert(
            "model_create",
            json!(open_code(
                &model.join("new"),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL
            )),
        );
    }
    if let Some(state) = &args.state {
        let file = state.join("audit.log");
        r.insert("state_write", json!(io_code(std::fs::write(&file, b"x\n"))));
        r.insert(
            "state_read",
            json!(io_code(std::fs::read(&file).map(|b| assert_eq!(b, b"x\n")))),
        );
        r.insert(
            "state_mkdir",
            json!(io_code(std::fs::create_dir(state.join("d")))),
        );
        r.insert(
            "state_rename",
            json!(io_code(std::fs::rename(&file, state.join("audit.1")))),
        );
        r.insert(
            "state_remove",
            json!(io_code(std::fs::remove_file(state.join("audit.1")))),
        );
        r.insert(
            "state_rmdir",
            json!(io_code(std::fs::remove_dir(state.join("d")))),
        );
    }
    r.insert(
        "proc_self_status",
        json!(io_code(std::fs::read("/proc/self/status"))),
    );
    // As the NVIDIA driver may: open(O_WRONLY) then write, or fopen("w"),
    // which adds O_TRUNC (Landlock's Truncate right).
    r.insert(
        "proc_thread_comm_write",
        json!(io_code(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/thread-self/comm")
                .and_then(|mut f| f.write_all(b"probe"))
        )),
    );
    r.insert(
        "proc_thread_comm_write_trunc",
        json!(io_code(std::fs::write("/proc/thread-self/comm", b"probe"))),
    );
    r.insert(
        "proc_pid_comm_write",
        json!(io_code(std::fs::write("/proc/self/comm", b"probe"))),
    );
    r.insert(
        "proc_1_status",
        json!(io_code(std::fs::read("/proc/1/status"))),
    );
    r.insert(
        "dev_null_rw",
        json!(open_code("/dev/null".as_ref(), OFlag::O_RDWR)),
    );
    r.insert(
        "dev_zero",
        json!(open_code("/dev/zero".as_ref(), OFlag::O_RDONLY)),
    );
    r.insert(
        "bin_true",
        json!(open_code("/bin/true".as_ref(), OFlag::O_RDONLY)),
    );
    r
}

fn net(args: &Args, early: &Early) -> BTreeMap<&'static str, Value> {
    let mut r = BTreeMap::new();
    let flags = SockFlag::SOCK_CLOEXEC;
    for (name, family, ty) in [
        ("socket_inet", AddressFamily::Inet, SockType::Stream),
        ("socket_inet6", AddressFamily::Inet6, SockType::Stream),
        ("socket_netlink", AddressFamily::Netlink, SockType::Raw),
        ("socket_packet", AddressFamily::Packet, SockType::Raw),
        ("socket_unix", AddressFamily::Unix, SockType::Stream),
        ("socket_udp", AddressFamily::Inet, SockType::Datagram),
    ] {
        r.insert(name, json!(code(socket(family, ty, flags, None))));
    }
    r.insert(
        "socketpair_unix",
        json!(code(socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            flags
        ))),
    );
    r.insert(
        "socketpair_inet",
        json!(code(socketpair(
            AddressFamily::Inet,
            SockType::Stream,
            None,
            flags
        ))),
    );
    let local = |port| SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    r.insert(
        "tcp_connect",
        json!(code(connect(
            early.tcp_connect.as_fd().as_raw_fd(),
            &local(args.port)
        ))),
    );
    r.insert(
        "tcp_bind",
        json!(code(bind(early.tcp_bind.as_fd().as_raw_fd(), &local(0)))),
    );
    if let Some(name) = &args.abstract_name {
        let addr = check("abstract addr", UnixAddr::new_abstract(name.as_bytes()));
        r.insert(
            "abstract_connect",
            json!(code(connect(early.unix.as_raw_fd(), &addr))),
        );
    }
    r
}

fn tgkill(pid: i32, sig: i32) -> i32 {
    // SAFETY: tgkill takes three integers and no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, sig) };
    if rc == 0 { 0 } else { Errno::last() as i32 }
}

fn signal(args: &Args) -> BTreeMap<&'static str, Value> {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let mut r = BTreeMap::new();
    if let Some(pid) = args.pid {
        // tgkill is allowed by seccomp (abort needs it): Landlock's signal
        // scope is what refuses a target outside the sandbox.
        r.insert("tgkill_outside", json!(tgkill(pid, 0)));
        // kill is not in any allow-list.
        r.insert("kill_outside", json!(code(kill(Pid::from_raw(pid), None))));
    }
    r.insert("kill_init", json!(code(kill(Pid::from_raw(1), None))));
    r.insert("tgkill_self", json!(tgkill(std::process::id() as i32, 0)));
    r
}

fn spawn_join() -> i32 {
    match std::thread::Builder::new().spawn(|| 7) {
        Ok(h) => match h.join() {
            Ok(7) => 0,
            _ => -1,
        },
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn mmap_exec() -> i32 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches
    // no existing memory; it is unmapped right away.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Errno::last() as i32;
    }
    // SAFETY: `p` is the 4096-byte mapping created above, not used elsewhere.
    unsafe { libc::munmap(p, 4096) };
    0
}

/// `_IOWR('F', NV_ESC_CHECK_VERSION_STR, nv_ioctl_rm_api_version_t)`: the
/// first request the CUDA driver sends to /dev/nvidiactl.
const NV_ESC_CHECK_VERSION_STR: libc::c_ulong = 0xc048_46d2;
/// `UVM_INITIALIZE` on /dev/nvidia-uvm.
const UVM_INITIALIZE: libc::c_ulong = 0x3000_0001;

/// `ioctl(0, request, buf)` on stdin (/dev/null in the tests): `ENOTTY` when
/// the call reached the kernel, `EPERM` when seccomp refused it.
fn ioctl_request(request: libc::c_ulong) -> i32 {
    let mut buf = [0u8; 0x48];
    // SAFETY: `buf` is large enough for the argument of either request and
    // outlives the call; /dev/null writes nothing into it.
    let rc = unsafe { libc::ioctl(0, request, buf.as_mut_ptr()) };
    if rc == 0 { 0 } else { Errno::last() as i32 }
}

fn memfd() -> i32 {
    // SAFETY: a valid NUL-terminated name and flags; the returned descriptor
    // is owned below.
    let fd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Errno::last() as i32;
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    0
}

/// An anonymous read-write page made executable.
fn mprotect_exec() -> i32 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches
    // no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return -1;
    }
    // SAFETY: `p` is the 4096-byte mapping created above, used by nothing else.
    let rc = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) };
    let out = if rc == 0 { 0 } else { Errno::last() as i32 };
    // SAFETY: as above; unmapped once.
    unsafe { libc::munmap(p, 4096) };
    out
}

fn ioctl_winsize() -> i32 {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 { 0 } else { Errno::last() as i32 }
}

fn seccomp_filters_of_this_thread() -> i64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(-1)
}

fn threads(args: &Args, mode: SeccompMode) -> BTreeMap<&'static str, Value> {
    let mut r = BTreeMap::new();
    r.insert("spawn", json!(spawn_join()));
    std::thread::sleep(Duration::from_millis(1100));
    r.insert("spawn_after_idle", json!(spawn_join()));
    // SAFETY: clone3 with a NULL argument and size 0: seccomp answers before
    // the kernel would read anything (and the kernel would refuse size 0).
    let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    r.insert(
        "clone3",
        json!(if rc == 0 { 0 } else { Errno::last() as i32 }),
    );
    // SAFETY: fork in a multi-threaded process is only unsafe for the child;
    // the child exits at once without touching locks.
    let forked = unsafe { nix::unistd::fork() };
    r.insert(
        "fork",
        json!(match forked {
            Ok(nix::unistd::ForkResult::Child) => std::process::exit(0),
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let _ = nix::sys::wait::waitpid(child, None);
                0
            }
            Err(e) => e as i32,
        }),
    );
    let narrow = !args.no_seccomp;
    let mut handles = Vec::new();
    for (name, role) in [
        ("engine", Role::Engine),
        ("http", Role::Http),
        ("engine-cpu", Role::EngineCpu),
        ("engine-cuda", Role::EngineCuda),
    ] {
        let h = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let narrowed = if narrow {
                    code(
                        narrow_current_thread(&SeccompPolicy::for_role(role), mode)
                            .map_err(|_| Errno::EPERM),
                    )
                } else {
                    0
                };
                let filters = seccomp_filters_of_this_thread();
                let role = medgemma_sandbox::current_thread_role().map(|r| r.to_string());
                let exec = mmap_exec();
                let exec_mprotect = mprotect_exec();
                let memfd = memfd();
                let ioctl = ioctl_winsize();
                let nv = ioctl_request(NV_ESC_CHECK_VERSION_STR);
                let uvm = ioctl_request(UVM_INITIALIZE);
                std::thread::sleep(Duration::from_millis(1100));
                // Like tokio's blocking pool: a narrowed thread creating a
                // thread after being idle.
                let child = spawn_join();
                json!({
                    "narrowed": narrowed, "seccomp_filters": filters, "role": role,
                    "mmap_exec": exec, "mprotect_exec": exec_mprotect, "memfd_create": memfd,
                    "ioctl_tiocgwinsz": ioctl, "ioctl_nv_check_version": nv,
                    "ioctl_uvm_initialize": uvm,
                    "spawn_after_idle": child,
                })
            });
        handles.push((name, h));
    }
    // Joined after all started: the roles' idle periods overlap.
    for (name, h) in handles {
        let v = match h {
            Ok(h) => h.join().unwrap_or(Value::Null),
            Err(e) => json!({ "spawn": e.raw_os_error() }),
        };
        r.insert(name, v);
    }
    // A runtime thread narrowed by the hook given to tokio's on_thread_start.
    if narrow {
        let hook = check(
            "thread_start_hook",
            medgemma_sandbox::thread_start_hook(Role::Http, mode),
        );
        let h = std::thread::Builder::new()
            .name("hooked".into())
            .spawn(move || {
                hook();
                json!({
                    "seccomp_filters": seccomp_filters_of_this_thread(),
                    "mmap_exec": mmap_exec(),
                    "spawn": spawn_join(),
                })
            });
        r.insert("hooked", check("spawn", h).join().unwrap_or(Value::Null));
    }
    r.insert("process_mmap_exec", json!(mmap_exec()));
    r.insert("process_memfd_create", json!(memfd()));
    r.insert(
        "main_role",
        json!(medgemma_sandbox::current_thread_role().map(|r| r.to_string())),
    );
    r
}

fn log_mode() -> BTreeMap<&'static str, Value> {
    // Outside every allow-list: logged, not denied.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    );
    let state = check("SandboxState::current", SandboxState::current());
    // The role marker answers in log mode too, so narrowing twice adds one
    // filter, not two.
    let narrowed = std::thread::spawn(|| {
        let http = SeccompPolicy::for_role(Role::Http);
        for _ in 0..2 {
            check(
                "narrow_current_thread",
                narrow_current_thread(&http, SeccompMode::Log),
            );
        }
        json!({
            "role": medgemma_sandbox::current_thread_role().map(|r| r.to_string()),
            "seccomp_filters": seccomp_filters_of_this_thread(),
        })
    })
    .join()
    .unwrap_or(Value::Null);
    BTreeMap::from([
        ("narrowed_twice", narrowed),
        ("socket_inet", json!(code(sock))),
        ("spawn", json!(spawn_join())),
        ("state", json!(state)),
    ])
}

/// `dlopen(name, RTLD_NOW)`: the handle, or the loader's reason.
fn dlopen(name: &str) -> Result<*mut libc::c_void, String> {
    let c = CString::new(name).map_err(|_| "NUL in name".to_owned())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) };
    if !h.is_null() {
        return Ok(h);
    }
    // SAFETY: dlerror returns NULL or a string valid until the next dl* call
    // on this thread, which is after the copy.
    let e = unsafe { libc::dlerror() };
    Err(if e.is_null() {
        "no reason".to_owned()
    } else {
        // SAFETY: non-NULL and NUL-terminated (see above).
        unsafe { std::ffi::CStr::from_ptr(e) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Under the full sandbox: the preloaded libraries answer a later `dlopen`
/// by soname and their symbols work, their files are readable, and a
/// library outside the derived set is refused.
fn libs(args: &Args, setup: &Value) -> BTreeMap<&'static str, Value> {
    let mut r = BTreeMap::new();
    let mut reopened = BTreeMap::new();
    let mut calls = BTreeMap::new();
    for name in &args.preload {
        match dlopen(name) {
            Ok(h) => {
                reopened.insert(name.clone(), json!(0));
                let sym = CString::new("mg_probe_a").unwrap_or_default();
                // SAFETY: `h` is a live handle and `sym` a valid C string.
                let f = unsafe { libc::dlsym(h, sym.as_ptr()) };
                if !f.is_null() {
                    // SAFETY: the test library defines `int mg_probe_a(int)`
                    // (tests/probes.rs compiles it), so the pointer has this type.
                    let f: extern "C" fn(libc::c_int) -> libc::c_int =
                        unsafe { std::mem::transmute(f) };
                    calls.insert(name.clone(), json!(f(20)));
                }
            }
            Err(e) => {
                reopened.insert(name.clone(), json!(e));
            }
        }
    }
    r.insert("reopen", json!(reopened));
    r.insert("call_mg_probe_a_20", json!(calls));
    let files: Vec<String> = setup["preloaded"]["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let read: BTreeMap<String, i32> = files
        .iter()
        .map(|f| (f.clone(), io_code(std::fs::read(f))))
        .collect();
    r.insert("read_preloaded_files", json!(read));
    if let Some(outside) = &args.outside {
        r.insert("outside_dlopen", dl_outcome(&outside.to_string_lossy()));
        r.insert("outside_open", json!(io_code(std::fs::read(outside))));
    }
    if let Some(late) = &args.late {
        r.insert("late_dlopen", dl_outcome(late));
    }
    r.insert("setup", setup.clone());
    r
}

/// 0 when `name` loads, else the loader's reason without the file name
/// (`dlerror` says "PATH: cannot open shared object file: Permission denied").
fn dl_outcome(name: &str) -> Value {
    match dlopen(name) {
        Ok(_) => Value::from(0),
        Err(e) => Value::from(e.rsplit(": ").next().unwrap_or_default().to_owned()),
    }
}

/// Generations of threads, each created by the previous one after an idle
/// period and narrowed by the runtime hook, as tokio's blocking pool does
/// when an idle thread has exited and a worker hands its work to a new one
/// (`block_in_place`). As in the daemon, an engine thread with workers of
/// its own starts first, then main narrows to HTTP. The test reads every
/// thread's `Seccomp_filters` from outside while this runs.
fn churn(mode: SeccompMode) -> BTreeMap<&'static str, Value> {
    const GENERATIONS: u32 = 40;
    const IDLE: Duration = Duration::from_millis(40);
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            check(
                "narrow engine",
                narrow_current_thread(&SeccompPolicy::for_role(Role::Engine), mode),
            );
            // Its own workers (the CPU backend's pool), created later.
            let workers: Vec<_> = (0..2)
                .map(|i| {
                    std::thread::sleep(IDLE);
                    std::thread::Builder::new()
                        .name(format!("engine-w{i}"))
                        .spawn(|| {
                            std::thread::sleep(IDLE * GENERATIONS);
                            seccomp_filters_of_this_thread()
                        })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.ok().and_then(|h| h.join().ok()).unwrap_or(-1))
                .collect::<Vec<i64>>()
        });
    let engine = check("spawn engine", engine);
    // As the daemon: main narrows to HTTP after the engine thread started.
    check(
        "narrow main to http",
        narrow_current_thread(&SeccompPolicy::for_role(Role::Http), mode),
    );
    let hook = std::sync::Arc::new(check(
        "thread_start_hook",
        medgemma_sandbox::thread_start_hook(Role::Http, mode),
    ));

    // Each generation: hook, report, idle, start the next, exit.
    let (tx, rx) = std::sync::mpsc::channel::<(u32, i64)>();
    fn generation(
        n: u32,
        last: u32,
        idle: Duration,
        hook: std::sync::Arc<dyn Fn() + Send + Sync>,
        tx: std::sync::mpsc::Sender<(u32, i64)>,
    ) {
        let spawned = std::thread::Builder::new()
            .name(format!("gen-{n}"))
            .spawn(move || {
                hook();
                let _ = tx.send((n, seccomp_filters_of_this_thread()));
                std::thread::sleep(idle);
                if n < last {
                    generation(n + 1, last, idle, hook, tx);
                }
                // Stay a moment so that parent and child overlap, as a
                // worker and the thread it hands over to do.
                std::thread::sleep(idle / 2);
            });
        if spawned.is_err() {
            let _ = writeln!(std::io::stderr(), "generation {n} could not start");
        }
    }
    generation(1, GENERATIONS, IDLE, hook, tx);
    let mut filters: Vec<Value> = vec![Value::Null; GENERATIONS as usize];
    for (n, count) in rx.iter().take(GENERATIONS as usize) {
        filters[(n - 1) as usize] = json!(count);
    }
    let engine_workers = engine.join().unwrap_or_default();
    BTreeMap::from([
        ("generation_filters", json!(filters)),
        ("main_filters", json!(seccomp_filters_of_this_thread())),
        ("engine_worker_filters", json!(engine_workers)),
    ])
}
