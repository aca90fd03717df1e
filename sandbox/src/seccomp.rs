//! Step 7 of the startup: seccomp. The policy is data: one allow-list table
//! per thread role, each syscall with the code that needs it, compiled to
//! BPF by `seccompiler` (pure Rust). Must never contain an "off" mode: the
//! diagnostic mode logs instead of denying, and still kills on the hostile
//! calls.
//!
//! # Three filters
//!
//! [`apply_seccomp`] installs three filters on every thread (TSYNC):
//! 1. the **allow-list** of the policy: listed calls (with their argument
//!    checks) are allowed, anything else fails with `EPERM` ([`SeccompMode::Enforce`])
//!    or is allowed and logged to the audit log / kernel log ([`SeccompMode::Log`],
//!    `--seccomp-log`, to derive a list on a new machine);
//! 2. the **kill filter**: [`KILL_LIST`] kills the whole process
//!    (`SECCOMP_RET_KILL_PROCESS`, `SIGSYS`), in both modes;
//! 3. the **clone3 filter**: `clone3` fails with `ENOSYS`, so glibc falls back
//!    to `clone`, whose flags BPF can inspect (`clone3` passes a pointer).
//!
//! The kernel runs every filter and takes the highest-precedence result
//! (kill process > kill thread > trap > errno > user notif > trace > log >
//! allow; `Documentation/userspace-api/seccomp_filter.rst`). Between two
//! results of the same precedence the most recently installed filter wins,
//! so a later allow-list that answered `EPERM` for `clone3` would override
//! the `ENOSYS` and break thread creation. Every allow-list therefore
//! *allows* `clone3` and leaves the answer to filter 3; that is why
//! [`narrow_current_thread`] refuses to run before [`apply_seccomp`].
//!
//! # Roles
//!
//! Filters are per thread, inherited by new threads, and can only be added:
//! a thread's effective policy is the intersection of its stack. Hence:
//! - [`SeccompPolicy::process_wide`] = base ∪ engine ∪ HTTP is installed by
//!   `main` with TSYNC while single-threaded (TSYNC also catches a thread a
//!   library might have started);
//! - the engine thread, first thing, calls
//!   `narrow_current_thread(&SeccompPolicy::for_role(Role::Engine), mode)`
//!   (base ∪ engine); the CUDA driver's and the CPU backend's worker threads
//!   are created by it and inherit that;
//! - `main` then narrows itself to [`Role::Http`] and builds tokio with
//!   `on_thread_start(thread_start_hook(Role::Http, mode)?)`, so every worker
//!   and blocking-pool thread runs base ∪ HTTP: no `ioctl` beyond `FIONBIO`/
//!   `FIOCLEX`/`TCGETS`, no executable mappings, no device access.
//!
//! Spawn the engine thread *before* `main` narrows to HTTP, or it inherits
//! the HTTP filter. A thread that is created by an already narrowed thread
//! and narrows again stacks the same filter twice (harmless; the kernel's
//! budget is 32768 BPF instructions per thread, each filter here is < 500).
//!
//! `socket(2)` is in no table: every socket comes from systemd or is opened
//! before the filter (`RestrictAddressFamilies=` cannot replace this:
//! `@system-service` includes `socket`). `connect`/`bind`/`listen` are in no
//! table either. `socketpair(AF_UNIX)` is allowed for HTTP because tokio's
//! signal driver creates an unnamed pair lazily; it reaches nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Serialize;

use crate::SandboxError;
use crate::state::SECCOMP_REPORT;

/// What happens to a call outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Fail with `EPERM` (production).
    Enforce,
    /// Allow and log (`SECCOMP_RET_LOG`; `--seccomp-log`), to derive the list
    /// on a new machine. The kill filter still kills.
    Log,
}

/// A thread role with its own allow-list on top of the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// What every Rust/glibc thread needs (the main thread after startup).
    Base,
    /// The inference engine thread and the threads the GPU driver or the CPU
    /// backend create from it.
    Engine,
    /// tokio's workers and blocking pool: HTTP over the Unix sockets.
    Http,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Base => "base",
            Role::Engine => "engine",
            Role::Http => "http",
        })
    }
}

/// Width of a compared argument: `int`-typed arguments are compared on 32
/// bits (the kernel ignores the upper half), pointers and `unsigned long`
/// flags on 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// `int`, `unsigned int`.
    U32,
    /// `unsigned long`, pointers.
    U64,
}

/// One check on one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    /// Argument index, 0-based.
    pub index: u8,
    /// Compared width.
    pub width: Width,
    /// `arg & mask == value` (`mask = !0` for plain equality).
    pub mask: u64,
    /// Expected value after masking.
    pub value: u64,
}

/// Which arguments are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Allowed when all checks of at least one inner list hold (an OR of ANDs).
    AnyOf(&'static [&'static [ArgCheck]]),
}

/// One allow-list entry: a syscall, its argument checks, and who needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// Number on this architecture (`libc::SYS_*`).
    pub nr: i64,
    /// `libc` constant name (`SYS_read`).
    pub sym: &'static str,
    /// Argument checks.
    pub args: Args,
    /// The code that needs it.
    pub why: &'static str,
}

impl Syscall {
    /// The syscall's name (`read`).
    pub fn name(&self) -> &'static str {
        self.sym.trim_start_matches("SYS_")
    }
}

const fn eq32(index: u8, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        width: Width::U32,
        mask: u32::MAX as u64,
        value,
    }
}

const fn masked64(index: u8, mask: u64, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        width: Width::U64,
        mask,
        value,
    }
}

/// An ioctl request number as compared by BPF. `libc::Ioctl` is `c_ulong`
/// on glibc and `c_int` on musl, hence the cast.
#[allow(clippy::unnecessary_cast)]
const fn ioctl_nr(request: libc::Ioctl) -> u64 {
    request as u64
}

/// `sys!(SYS_read, "why")` or `sys!(SYS_ioctl, [[checks], [checks]], "why")`.
macro_rules! sys {
    ($nr:ident, $why:literal) => {
        Syscall {
            nr: libc::$nr,
            sym: stringify!($nr),
            args: Args::Any,
            why: $why,
        }
    };
    ($nr:ident, [$([$($check:expr),+ $(,)?]),+ $(,)?], $why:literal) => {
        Syscall {
            nr: libc::$nr,
            sym: stringify!($nr),
            args: Args::AnyOf(&[$(&[$($check),+]),+]),
            why: $why,
        }
    };
}

/// Namespace-creating clone flags: never with a thread.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// Every Rust/glibc thread of the daemon (Rust 1.95 std, glibc 2.36 as on
/// Debian 12; the toolchain is pinned for this reason).
pub const BASE: &[Syscall] = &[
    // --- I/O on descriptors opened before the sandbox or allowed by Landlock
    sys!(
        SYS_read,
        "std::io::Read: sockets, model files, /proc/self/status"
    ),
    sys!(
        SYS_write,
        "std::io::Write: sockets, audit log, stderr logging"
    ),
    sys!(SYS_readv, "std/tokio vectored reads"),
    sys!(
        SYS_writev,
        "std/tokio vectored writes (hyper writes head+body)"
    ),
    sys!(
        SYS_pread64,
        "FileExt::read_at: safetensors and audit log scans"
    ),
    sys!(SYS_pwrite64, "FileExt::write_at: caches"),
    sys!(SYS_lseek, "File::seek: torn-line repair of the audit log"),
    sys!(SYS_close, "dropping any OwnedFd"),
    sys!(SYS_openat, "File::open (Landlock decides which paths)"),
    sys!(SYS_newfstatat, "fs::metadata, glibc fstat"),
    sys!(SYS_fstat, "glibc fstat of an open file"),
    sys!(SYS_statx, "std fs::metadata, File::metadata"),
    sys!(
        SYS_getdents64,
        "fs::read_dir on state and cache directories"
    ),
    sys!(
        SYS_fcntl,
        "std: F_GETFL/F_SETFL/F_DUPFD_CLOEXEC on owned descriptors"
    ),
    sys!(SYS_fsync, "File::sync_all: audit log before answering"),
    sys!(SYS_fdatasync, "File::sync_data: audit log"),
    sys!(SYS_ftruncate, "File::set_len: cutting a torn audit line"),
    sys!(
        SYS_unlinkat,
        "fs::remove_file/remove_dir in state and caches"
    ),
    sys!(SYS_mkdirat, "fs::create_dir in state and caches"),
    sys!(
        SYS_renameat2,
        "fs::rename (glibc rename/renameat) for atomic writes"
    ),
    // --- memory
    sys!(SYS_brk, "glibc malloc main arena"),
    sys!(
        SYS_mmap,
        [[masked64(2, PROT_EXEC, 0)]],
        "malloc arenas, thread stacks, memmap2 of weights; never executable (only the engine may map code)"
    ),
    sys!(
        SYS_mprotect,
        [[masked64(2, PROT_EXEC, 0)]],
        "glibc thread-stack guard pages, malloc; never executable"
    ),
    sys!(SYS_munmap, "free, thread exit, Mmap drop"),
    sys!(SYS_mremap, "glibc realloc of large blocks"),
    sys!(
        SYS_madvise,
        "glibc free (MADV_DONTNEED), thread-stack release at exit"
    ),
    // --- threads and synchronisation
    sys!(
        SYS_futex,
        "std Mutex/Condvar/park, glibc locks, pthread_join"
    ),
    sys!(
        SYS_clone,
        [[masked64(
            0,
            libc::CLONE_THREAD as u64 | CLONE_NAMESPACES,
            libc::CLONE_THREAD as u64
        )]],
        "pthread_create fallback after clone3's ENOSYS: threads only (CLONE_THREAD set), no namespaces, so no fork"
    ),
    sys!(
        SYS_clone3,
        "pthread_create tries it first; allowed here so the clone3 filter's ENOSYS decides (see module doc)"
    ),
    sys!(SYS_set_robust_list, "glibc thread start"),
    sys!(
        SYS_rseq,
        "glibc thread start (restartable sequences registration)"
    ),
    sys!(SYS_exit, "thread exit"),
    sys!(SYS_exit_group, "process exit"),
    sys!(SYS_sched_yield, "std/crossbeam/tokio spin-then-yield loops"),
    sys!(
        SYS_sched_getaffinity,
        "std::thread::available_parallelism, glibc pthread_getaffinity_np"
    ),
    sys!(SYS_gettid, "std::thread, tracing thread ids"),
    sys!(SYS_getpid, "glibc raise/abort, logging"),
    sys!(
        SYS_getuid,
        "admin socket: compare SO_PEERCRED with our own uid"
    ),
    sys!(
        SYS_geteuid,
        "admin socket: compare SO_PEERCRED with our own uid"
    ),
    sys!(
        SYS_getgid,
        "admin socket: compare SO_PEERCRED with our own gid"
    ),
    sys!(
        SYS_getegid,
        "admin socket: compare SO_PEERCRED with our own gid"
    ),
    // --- signals
    sys!(
        SYS_rt_sigaction,
        "std stack-overflow handler, tokio::signal registration"
    ),
    sys!(
        SYS_rt_sigprocmask,
        "glibc pthread_create blocks signals around clone; abort()"
    ),
    sys!(SYS_rt_sigreturn, "return from any signal handler"),
    sys!(
        SYS_sigaltstack,
        "std installs an alternate signal stack per thread (stack overflow report)"
    ),
    sys!(
        SYS_tgkill,
        "abort()/raise(): SIGABRT to ourselves; Landlock's signal scope keeps it inside"
    ),
    sys!(
        SYS_restart_syscall,
        "kernel restarts an interrupted nanosleep/futex wait with it"
    ),
    // --- time and randomness
    sys!(
        SYS_clock_gettime,
        "Instant/SystemTime when the vDSO falls back"
    ),
    sys!(SYS_clock_getres, "glibc clock_getres"),
    sys!(SYS_gettimeofday, "glibc when the vDSO falls back"),
    sys!(SYS_nanosleep, "std::thread::sleep"),
    sys!(SYS_clock_nanosleep, "glibc nanosleep, tokio's park_timeout"),
    sys!(SYS_getrandom, "HashMap seeds, rand, ring"),
    // --- narrowly filtered
    sys!(
        SYS_ioctl,
        [
            [eq32(1, ioctl_nr(libc::TCGETS))],
            [eq32(1, ioctl_nr(libc::FIONBIO))],
            [eq32(1, ioctl_nr(libc::FIOCLEX))]
        ],
        "TCGETS: isatty(stderr) for log colours; FIONBIO: set_nonblocking on inherited sockets; FIOCLEX"
    ),
    sys!(
        SYS_prctl,
        [
            [eq32(0, libc::PR_SET_NAME as u64)],
            [eq32(0, libc::PR_GET_NAME as u64)],
            [eq32(0, libc::PR_GET_DUMPABLE as u64)],
            [eq32(0, libc::PR_SET_NO_NEW_PRIVS as u64)],
        ],
        "thread names (std::thread::Builder::name, tokio); PR_GET_DUMPABLE for SandboxState; PR_SET_NO_NEW_PRIVS before narrowing a thread"
    ),
    sys!(
        SYS_seccomp,
        [[eq32(0, libc::SECCOMP_SET_MODE_FILTER as u64), eq32(1, 0)]],
        "narrow_current_thread: adding a filter only ever narrows (no TSYNC, no other flags)"
    ),
];

/// x86_64 keeps legacy syscalls that glibc still uses there (aarch64 only
/// has the *at/p* forms, which are in [`BASE`]).
#[cfg(target_arch = "x86_64")]
pub const BASE_ARCH: &[Syscall] = &[
    sys!(SYS_rename, "glibc rename() on x86_64 (fs::rename)"),
    sys!(SYS_unlink, "glibc unlink() on x86_64 (fs::remove_file)"),
    sys!(SYS_mkdir, "glibc mkdir() on x86_64 (fs::create_dir)"),
    sys!(SYS_rmdir, "glibc rmdir() on x86_64 (fs::remove_dir)"),
    sys!(SYS_poll, "glibc poll() on x86_64"),
];
/// See the x86_64 table.
#[cfg(not(target_arch = "x86_64"))]
pub const BASE_ARCH: &[Syscall] = &[];

/// The inference engine. On a GPU machine this list must be confirmed with a
/// `--seccomp-log` run (see the crate's report); what the spec lists so far:
pub const ENGINE: &[Syscall] = &[
    sys!(
        SYS_ioctl,
        "CUDA driver: every call to /dev/nvidiactl, /dev/nvidia*, /dev/nvidia-uvm is an ioctl with driver-private numbers; Landlock's IoctlDev limits it to those device nodes"
    ),
    sys!(
        SYS_mmap,
        "CUDA driver maps device memory and UVM ranges; dlopen of libcuda/libnvrtc maps code (PROT_EXEC)"
    ),
    sys!(
        SYS_mprotect,
        "dlopen relocation (RELRO), CUDA driver mappings"
    ),
    sys!(
        SYS_memfd_create,
        "CUDA driver: shared-memory backing for IPC/UVM"
    ),
];

/// tokio's workers and blocking pool serving HTTP on the Unix sockets.
pub const HTTP: &[Syscall] = &[
    sys!(SYS_epoll_create1, "mio: one epoll instance per runtime"),
    sys!(SYS_epoll_ctl, "mio: register/deregister sockets"),
    sys!(SYS_epoll_pwait, "mio: wait for readiness"),
    sys!(SYS_eventfd2, "mio Waker: wake a parked worker"),
    sys!(
        SYS_accept4,
        "tokio UnixListener::accept (SOCK_CLOEXEC|SOCK_NONBLOCK)"
    ),
    sys!(SYS_recvfrom, "tokio UnixStream reads"),
    sys!(SYS_recvmsg, "tokio UnixStream reads"),
    sys!(
        SYS_sendto,
        "tokio UnixStream writes; sd_notify datagrams (WATCHDOG=1)"
    ),
    sys!(SYS_sendmsg, "tokio UnixStream writes; sd_notify datagrams"),
    sys!(SYS_shutdown, "closing the write side of a connection"),
    sys!(SYS_getsockopt, "SO_PEERCRED on the admin socket, SO_ERROR"),
    sys!(SYS_getsockname, "logging the listening address"),
    sys!(SYS_getpeername, "tokio UnixStream::peer_addr"),
    sys!(
        SYS_socketpair,
        [[eq32(0, libc::AF_UNIX as u64)]],
        "tokio::signal's driver creates an unnamed AF_UNIX pair lazily; an unnamed pair reaches nothing"
    ),
];

/// x86_64-only calls of the HTTP role.
#[cfg(target_arch = "x86_64")]
pub const HTTP_ARCH: &[Syscall] = &[sys!(SYS_epoll_wait, "mio on x86_64 (glibc epoll_wait)")];
/// See the x86_64 table.
#[cfg(not(target_arch = "x86_64"))]
pub const HTTP_ARCH: &[Syscall] = &[];

/// Calls that no part of the daemon makes and that only an attacker wants:
/// the process is killed (`SIGSYS`) on the first one, in both modes.
pub const KILL_LIST: &[Syscall] = &[
    sys!(SYS_ptrace, "debugging other processes or ourselves"),
    sys!(SYS_execve, "running any program"),
    sys!(SYS_execveat, "running any program"),
    sys!(SYS_bpf, "loading eBPF programs"),
    sys!(SYS_mount, "changing the mount table"),
    sys!(SYS_umount2, "changing the mount table"),
    sys!(SYS_fsopen, "new mount API"),
    sys!(SYS_fsconfig, "new mount API"),
    sys!(SYS_fsmount, "new mount API"),
    sys!(SYS_fspick, "new mount API"),
    sys!(SYS_move_mount, "new mount API"),
    sys!(SYS_open_tree, "new mount API"),
    sys!(SYS_mount_setattr, "new mount API"),
    sys!(SYS_pivot_root, "changing the root"),
    sys!(SYS_chroot, "changing the root"),
    sys!(
        SYS_unshare,
        "new namespaces (user namespaces unlock kernel attack surface)"
    ),
    sys!(SYS_setns, "joining namespaces"),
    sys!(SYS_keyctl, "kernel keyrings"),
    sys!(SYS_add_key, "kernel keyrings"),
    sys!(SYS_request_key, "kernel keyrings"),
    sys!(
        SYS_perf_event_open,
        "perf: side channels, kernel attack surface"
    ),
    sys!(
        SYS_io_uring_setup,
        "io_uring bypasses seccomp for the operations it runs"
    ),
    sys!(SYS_io_uring_enter, "io_uring"),
    sys!(SYS_io_uring_register, "io_uring"),
    sys!(SYS_process_vm_readv, "reading another process's memory"),
    sys!(SYS_process_vm_writev, "writing another process's memory"),
    sys!(SYS_pidfd_getfd, "stealing another process's descriptors"),
    sys!(
        SYS_open_by_handle_at,
        "opening files by handle, bypassing paths"
    ),
    sys!(SYS_kexec_load, "replacing the kernel"),
    sys!(SYS_kexec_file_load, "replacing the kernel"),
    sys!(SYS_init_module, "loading kernel modules"),
    sys!(SYS_finit_module, "loading kernel modules"),
    sys!(SYS_delete_module, "unloading kernel modules"),
    sys!(SYS_swapon, "swap control"),
    sys!(SYS_swapoff, "swap control"),
    sys!(SYS_reboot, "rebooting"),
    sys!(SYS_userfaultfd, "classic kernel-exploit primitive"),
];

/// x86_64-only hostile calls.
#[cfg(target_arch = "x86_64")]
pub const KILL_LIST_ARCH: &[Syscall] = &[
    sys!(SYS_iopl, "raw I/O port access"),
    sys!(SYS_ioperm, "raw I/O port access"),
    sys!(SYS_uselib, "legacy library loading"),
];
/// See the x86_64 table.
#[cfg(not(target_arch = "x86_64"))]
pub const KILL_LIST_ARCH: &[Syscall] = &[];

/// One merged allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    sym: &'static str,
    /// `None`: any arguments; otherwise an OR of AND-lists.
    alternatives: Option<Vec<&'static [ArgCheck]>>,
    whys: Vec<&'static str>,
}

/// A compiled-from-tables allow-list: the union of some roles' tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPolicy {
    name: String,
    entries: BTreeMap<i64, Entry>,
}

/// One line of [`SeccompPolicy::describe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowedSyscall {
    /// Syscall name.
    pub name: &'static str,
    /// Whether its arguments are checked.
    pub args_filtered: bool,
    /// The code that needs it (one line per table that lists it).
    pub why: Vec<&'static str>,
}

impl SeccompPolicy {
    fn from_tables(name: String, tables: &[&[Syscall]]) -> Self {
        let mut entries: BTreeMap<i64, Entry> = BTreeMap::new();
        for sc in tables.iter().flat_map(|t| t.iter()) {
            let entry = entries.entry(sc.nr).or_insert_with(|| Entry {
                sym: sc.sym,
                alternatives: Some(Vec::new()),
                whys: Vec::new(),
            });
            entry.whys.push(sc.why);
            match (&mut entry.alternatives, sc.args) {
                // Unrestricted anywhere means unrestricted in the union.
                (_, Args::Any) => entry.alternatives = None,
                (None, Args::AnyOf(_)) => {}
                (Some(alts), Args::AnyOf(more)) => alts.extend_from_slice(more),
            }
        }
        Self { name, entries }
    }

    /// The allow-list of one role: the base plus that role's table.
    pub fn for_role(role: Role) -> Self {
        let tables: &[&[Syscall]] = match role {
            Role::Base => &[BASE, BASE_ARCH],
            Role::Engine => &[BASE, BASE_ARCH, ENGINE],
            Role::Http => &[BASE, BASE_ARCH, HTTP, HTTP_ARCH],
        };
        Self::from_tables(role.to_string(), tables)
    }

    /// The union of every role: what [`apply_seccomp`] installs on the whole
    /// process before any thread narrows itself.
    pub fn process_wide() -> Self {
        Self::from_tables(
            "process (base+engine+http)".to_owned(),
            &[BASE, BASE_ARCH, ENGINE, HTTP, HTTP_ARCH],
        )
    }

    /// Its name, for reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of allowed syscalls.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is allowed (never true for the built-in roles).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether syscall `nr` is allowed with at least some arguments.
    pub fn allows(&self, nr: i64) -> bool {
        self.entries.contains_key(&nr)
    }

    /// Whether syscall `nr` is allowed with any arguments.
    pub fn allows_any_args(&self, nr: i64) -> bool {
        self.entries
            .get(&nr)
            .is_some_and(|e| e.alternatives.is_none())
    }

    /// The table, for documentation and `/api/status`.
    pub fn describe(&self) -> Vec<AllowedSyscall> {
        self.entries
            .values()
            .map(|e| AllowedSyscall {
                name: e.sym.trim_start_matches("SYS_"),
                args_filtered: e.alternatives.is_some(),
                why: e.whys.clone(),
            })
            .collect()
    }

    fn compile(&self, mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
        let filter_name = format!("allow-list ({})", self.name);
        let err = |source| SandboxError::SeccompBuild {
            filter: filter_name.clone(),
            source,
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (&nr, entry) in &self.entries {
            let chain = match &entry.alternatives {
                None => Vec::new(),
                Some(alts) => alts
                    .iter()
                    .map(|checks| {
                        let conditions = checks
                            .iter()
                            .map(|c| condition(c).map_err(err))
                            .collect::<Result<Vec<_>, _>>()?;
                        SeccompRule::new(conditions).map_err(err)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, chain);
        }
        let mismatch = match mode {
            SeccompMode::Enforce => SeccompAction::Errno(libc::EPERM as u32),
            SeccompMode::Log => SeccompAction::Log,
        };
        let filter =
            SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()?).map_err(err)?;
        BpfProgram::try_from(filter).map_err(err)
    }
}

fn condition(c: &ArgCheck) -> Result<SeccompCondition, seccompiler::BackendError> {
    let len = match c.width {
        Width::U32 => SeccompCmpArgLen::Dword,
        Width::U64 => SeccompCmpArgLen::Qword,
    };
    let full = match c.width {
        Width::U32 => u64::from(u32::MAX),
        Width::U64 => u64::MAX,
    };
    let op = if c.mask == full {
        SeccompCmpOp::Eq
    } else {
        SeccompCmpOp::MaskedEq(c.mask)
    };
    SeccompCondition::new(c.index, len, op, c.value)
}

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|source| SandboxError::SeccompBuild {
        filter: format!("for architecture {}", std::env::consts::ARCH),
        source,
    })
}

/// A filter that answers the listed calls with `matched` and allows the rest.
fn compile_list(
    name: &str,
    tables: &[&[Syscall]],
    matched: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let err = |source| SandboxError::SeccompBuild {
        filter: name.to_owned(),
        source,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = tables
        .iter()
        .flat_map(|t| t.iter())
        .map(|sc| (sc.nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, matched, arch()?).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// What [`apply_seccomp`] installed; kept for [`crate::SandboxState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeccompReport {
    /// Enforce or log.
    pub mode: SeccompMode,
    /// The process-wide allow-list's name.
    pub policy: String,
    /// Number of allowed syscalls in it.
    pub allowed_syscalls: usize,
    /// Number of calls that kill the process.
    pub kill_list_len: usize,
    /// Filters installed by this call (allow-list, kill, clone3).
    pub filters_installed: u32,
}

/// Installs the three filters (module doc) on every thread of the process
/// with TSYNC. Call once, from `main`, before threads exist.
pub fn apply_seccomp(
    policy: &SeccompPolicy,
    mode: SeccompMode,
) -> Result<SeccompReport, SandboxError> {
    // Compile everything before installing anything.
    let allow = policy.compile(mode)?;
    let kill = compile_list(
        "kill",
        &[KILL_LIST, KILL_LIST_ARCH],
        SeccompAction::KillProcess,
    )?;
    let clone3 = compile_list(
        "clone3",
        &[&[sys!(SYS_clone3, "glibc falls back to clone on ENOSYS")]],
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    // The allow-list goes last: it only lets `seccomp(2)` add filters without
    // TSYNC, so nothing could be installed with TSYNC after it.
    for (name, prog) in [
        ("kill".to_owned(), &kill),
        ("clone3".to_owned(), &clone3),
        (format!("allow-list ({})", policy.name), &allow),
    ] {
        seccompiler::apply_filter_all_threads(prog).map_err(|source| {
            SandboxError::SeccompApply {
                filter: name,
                source,
            }
        })?;
    }
    let report = SeccompReport {
        mode,
        policy: policy.name.clone(),
        allowed_syscalls: policy.len(),
        kill_list_len: KILL_LIST.len() + KILL_LIST_ARCH.len(),
        filters_installed: 3,
    };
    let _ = SECCOMP_REPORT.set(report.clone());
    Ok(report)
}

fn require_process_filters(filter: &str) -> Result<(), SandboxError> {
    if SECCOMP_REPORT.get().is_none() {
        // Without the clone3 and kill filters below it, an allow-list that
        // allows clone3 would let a thread create namespaces.
        return Err(SandboxError::SeccompOrder {
            filter: filter.to_owned(),
        });
    }
    Ok(())
}

/// Adds `policy`'s allow-list to the calling thread only (no TSYNC): the
/// thread and the threads it creates can then only make calls allowed by
/// both this and the process-wide filter.
pub fn narrow_current_thread(
    policy: &SeccompPolicy,
    mode: SeccompMode,
) -> Result<(), SandboxError> {
    let name = format!("allow-list ({}, this thread)", policy.name);
    require_process_filters(&name)?;
    let prog = policy.compile(mode)?;
    seccompiler::apply_filter(&prog).map_err(|source| SandboxError::SeccompApply {
        filter: name,
        source,
    })
}

/// A closure for tokio's `Builder::on_thread_start` that narrows each new
/// runtime thread to `role`. The BPF program is compiled once, here. If the
/// kernel refuses the filter the process aborts: a runtime thread must never
/// run unnarrowed, and the hook cannot return an error.
pub fn thread_start_hook(
    role: Role,
    mode: SeccompMode,
) -> Result<impl Fn() + Send + Sync + 'static, SandboxError> {
    let policy = SeccompPolicy::for_role(role);
    let name = format!("allow-list ({role}, thread start)");
    require_process_filters(&name)?;
    let prog = Arc::new(policy.compile(mode)?);
    Ok(move || {
        if let Err(e) = seccompiler::apply_filter(&prog) {
            // Fail closed; stderr is the only channel left in a thread hook.
            eprintln!("medgemma-sandbox: cannot narrow a new {role} thread ({e}); aborting");
            std::process::abort();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_tables() -> Vec<&'static [Syscall]> {
        vec![BASE, BASE_ARCH, ENGINE, HTTP, HTTP_ARCH]
    }

    #[test]
    fn socket_is_in_no_role() {
        for t in all_tables() {
            for sc in t {
                assert_ne!(sc.nr, libc::SYS_socket, "socket allowed: {}", sc.why);
                assert_ne!(sc.nr, libc::SYS_connect);
                assert_ne!(sc.nr, libc::SYS_bind);
                assert_ne!(sc.nr, libc::SYS_listen);
            }
        }
    }

    #[test]
    fn no_allow_list_contains_a_kill_list_call() {
        for t in all_tables() {
            for sc in t {
                assert!(
                    !KILL_LIST
                        .iter()
                        .chain(KILL_LIST_ARCH)
                        .any(|k| k.nr == sc.nr),
                    "{} is both allowed and on the kill list",
                    sc.name()
                );
            }
        }
    }

    #[test]
    fn every_entry_says_why() {
        for t in all_tables().into_iter().chain([KILL_LIST, KILL_LIST_ARCH]) {
            for sc in t {
                assert!(sc.why.len() > 5, "{} has no reason", sc.name());
            }
        }
    }

    #[test]
    fn each_table_lists_a_syscall_once() {
        for t in all_tables() {
            let mut seen = std::collections::BTreeSet::new();
            for sc in t {
                assert!(seen.insert(sc.nr), "{} listed twice", sc.name());
            }
        }
    }

    #[test]
    fn roles_narrow_the_process_wide_list() {
        let process = SeccompPolicy::process_wide();
        for role in [Role::Base, Role::Engine, Role::Http] {
            let p = SeccompPolicy::for_role(role);
            for nr in p.entries.keys() {
                assert!(process.allows(*nr));
            }
            assert!(p.len() <= process.len());
        }
        // The engine gets raw ioctl and executable mappings; HTTP does not.
        let engine = SeccompPolicy::for_role(Role::Engine);
        let http = SeccompPolicy::for_role(Role::Http);
        assert!(engine.allows_any_args(libc::SYS_ioctl));
        assert!(!http.allows_any_args(libc::SYS_ioctl));
        assert!(!http.allows_any_args(libc::SYS_mmap));
        assert!(!engine.allows(libc::SYS_accept4));
        assert!(http.allows(libc::SYS_accept4));
        assert!(process.allows_any_args(libc::SYS_ioctl));
    }

    #[test]
    fn clone_requires_a_thread_and_clone3_is_allowed_for_the_enosys_filter() {
        let base = SeccompPolicy::for_role(Role::Base);
        assert!(base.allows(libc::SYS_clone) && !base.allows_any_args(libc::SYS_clone));
        assert!(base.allows_any_args(libc::SYS_clone3));
    }

    #[test]
    fn all_filters_compile_in_both_modes() {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            for p in [
                SeccompPolicy::process_wide(),
                SeccompPolicy::for_role(Role::Base),
                SeccompPolicy::for_role(Role::Engine),
                SeccompPolicy::for_role(Role::Http),
            ] {
                let prog = p.compile(mode).unwrap();
                // Far below the kernel's 32768-instruction path budget and
                // BPF_MAXINSNS (4096) per filter.
                assert!(
                    prog.len() < 1000,
                    "{} is {} instructions",
                    p.name(),
                    prog.len()
                );
            }
        }
    }

    #[test]
    fn narrowing_before_the_process_filters_is_refused() {
        if SECCOMP_REPORT.get().is_none() {
            assert!(
                narrow_current_thread(&SeccompPolicy::for_role(Role::Http), SeccompMode::Enforce)
                    .is_err()
            );
        }
    }
}
