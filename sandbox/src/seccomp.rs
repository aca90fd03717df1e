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
//! - [`SeccompPolicy::process_wide_for`]`(engine)` = base ∪ that engine ∪
//!   HTTP is installed by `main` with TSYNC while single-threaded (TSYNC
//!   also catches a thread a library might have started);
//! - the engine thread, first thing, calls
//!   `narrow_current_thread(&SeccompPolicy::for_role(engine), mode)` with
//!   [`Role::EngineCpu`] (base only: no device `ioctl`, no executable
//!   mapping, no `memfd_create`) or [`Role::EngineCuda`] (adds `ioctl`
//!   limited to the NVIDIA driver's request numbers, executable mappings and
//!   `memfd_create`); the CPU backend's or the CUDA driver's worker threads
//!   are created by it and inherit that;
//! - `main` then narrows itself to [`Role::Http`] and builds tokio with
//!   `on_thread_start(thread_start_hook(Role::Http, mode)?)`, so every worker
//!   and blocking-pool thread runs base ∪ HTTP: no `ioctl` beyond `FIONBIO`/
//!   `FIOCLEX`/`TCGETS`, no executable mappings, no device access.
//!
//! Spawn the engine thread *before* `main` narrows to HTTP, or it inherits
//! the HTTP filter.
//!
//! # The stack cannot grow
//!
//! A new thread inherits its creator's filters, and tokio's blocking pool
//! creates threads from its workers for the whole life of the process (an
//! idle one exits after 10 s; `block_in_place` hands the worker to a new
//! one). A hook that installed its filter on every new thread therefore
//! added one more copy per generation, until `seccomp()` failed against the
//! kernel's 32 768-instruction budget and the hook aborted the daemon. So
//! each role's filter carries a *marker*: its first instructions answer the
//! probe `ioctl(-1, ROLE_PROBE_REQUEST)` with the errno
//! `ROLE_MARKER_ERRNO + role id` (any other caller gets the kernel's
//! `EBADF`). [`current_thread_role`] asks it; the kernel answers from the
//! newest filter on the stack (between equal actions the most recently
//! installed wins), which is inherited with the stack, so a thread knows the
//! role it runs under without any state of its own. [`narrow_current_thread`]
//! and the [`thread_start_hook`] install a role's filter only on a thread
//! whose newest role filter is a different one (or none): at most one role
//! filter per role change, never one per thread generation.
//!
//! `socket(2)` is in no table: every socket comes from systemd or is opened
//! before the filter (`RestrictAddressFamilies=` cannot replace this:
//! `@system-service` includes `socket`). `connect`/`bind`/`listen` are in no
//! table either. `socketpair(AF_UNIX, SOCK_STREAM)` is allowed for HTTP
//! because tokio's signal driver creates an unnamed pair lazily; a connected
//! stream pair reaches nothing, and `sendto` never takes an address.
//!
//! Some argument checks cover what Landlock cannot enforce below a given
//! ABI (`landlock.rs`, [`crate::landlock::RIGHTS`]): `openat` with `O_TRUNC`
//! only with write access (truncation, ABI 3), `tgkill` only to this process
//! (signals, ABI 6), `sendto` without an address and stream-only
//! `socketpair` (abstract unix sockets, ABI 6).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
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
    /// The engine without saying on which backend: the CUDA variant
    /// ([`ENGINE`] is [`ENGINE_CUDA`]), kept so that existing callers keep
    /// working. New code says [`Role::EngineCpu`] or [`Role::EngineCuda`].
    Engine,
    /// tokio's workers and blocking pool: HTTP over the Unix sockets.
    Http,
    /// The inference engine on the CPU and the threads of the CPU backend
    /// it creates: the base, nothing more.
    EngineCpu,
    /// The inference engine on an NVIDIA GPU and the threads the CUDA driver
    /// creates from it.
    EngineCuda,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Base,
        Role::Engine,
        Role::Http,
        Role::EngineCpu,
        Role::EngineCuda,
    ];

    /// Number in the role marker's errno (module doc, "The stack cannot grow").
    fn marker_id(self) -> u32 {
        match self {
            Role::Base => 1,
            Role::Engine => 2,
            Role::Http => 3,
            Role::EngineCpu => 4,
            Role::EngineCuda => 5,
        }
    }

    fn from_marker_id(id: u32) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.marker_id() == id)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Base => "base",
            Role::Engine => "engine",
            Role::Http => "http",
            Role::EngineCpu => "engine-cpu",
            Role::EngineCuda => "engine-cuda",
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

/// The value an argument is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgValue {
    /// A constant.
    Const(u64),
    /// This process's id, filled in when the filter is compiled (the
    /// process never forks: `clone` without `CLONE_THREAD` is refused).
    OwnPid,
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
    pub value: ArgValue,
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
    masked32(index, u32::MAX as u64, value)
}

const fn masked32(index: u8, mask: u64, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        width: Width::U32,
        mask,
        value: ArgValue::Const(value),
    }
}

const fn masked64(index: u8, mask: u64, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        width: Width::U64,
        mask,
        value: ArgValue::Const(value),
    }
}

/// Argument `index` (an `int`) is this process's id.
const fn own_pid(index: u8) -> ArgCheck {
    ArgCheck {
        index,
        width: Width::U32,
        mask: u32::MAX as u64,
        value: ArgValue::OwnPid,
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
const O_TRUNC: u64 = libc::O_TRUNC as u64;
const O_ACCMODE: u64 = libc::O_ACCMODE as u64;
const O_WRONLY: u64 = libc::O_WRONLY as u64;
const O_RDWR: u64 = libc::O_RDWR as u64;
/// The socket type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC` (`SOCK_TYPE_MASK`
/// in `include/linux/net.h`).
const SOCK_TYPE_MASK: u64 = 0xf;

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
    sys!(
        SYS_openat,
        [
            [masked32(2, O_TRUNC, 0)],
            [masked32(2, O_ACCMODE, O_WRONLY)],
            [masked32(2, O_ACCMODE, O_RDWR)]
        ],
        "File::open (Landlock decides which paths); O_TRUNC only with write access, which Landlock checks at every ABI (below ABI 3 it does not check truncation itself)"
    ),
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
        [[own_pid(0)]],
        "abort()/raise(): SIGABRT to a thread of this process only (Landlock's signal scope says the same from ABI 6)"
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

/// The inference engine on the CPU (burn's flex backend, its rayon pool,
/// the tokenizer, memory-mapped weights): the base is all it needs. No
/// `ioctl` beyond the base's three, no executable mapping (nothing is
/// compiled at run time on the CPU), no `memfd_create`.
pub const ENGINE_CPU: &[Syscall] = &[];

/// NVIDIA's frontend ioctls (`/dev/nvidiactl`, `/dev/nvidia[0-9]`) are
/// `_IOWR(NV_IOCTL_MAGIC, nr, size)` with `NV_IOCTL_MAGIC` = `'F'`
/// (open-gpu-kernel-modules `kernel-open/common/inc/nv-ioctl-numbers.h`,
/// `src/nvidia/arch/nvalloc/unix/include/nv_escape.h`): the type byte is
/// bits 8-15 of the request; direction, size and number vary per call.
const NV_IOCTL_TYPE_MASK: u64 = 0xff00;
const NV_IOCTL_TYPE: u64 = (b'F' as u64) << 8;
/// `nvidia-uvm` ioctls are plain numbers, `UVM_IOCTL_BASE(i)` = `i`, from 1
/// up to 2047 (`kernel-open/nvidia-uvm/uvm_ioctl.h`: "2047 - highest custom
/// ioctl function number"), so the bits above 0x7ff are clear.
const UVM_IOCTL_HIGH_BITS: u64 = 0xffff_f800;
/// `UVM_INITIALIZE` and `UVM_DEINITIALIZE`
/// (`kernel-open/nvidia-uvm/uvm_linux_ioctl.h`).
const UVM_INITIALIZE: u64 = 0x3000_0001;
const UVM_DEINITIALIZE: u64 = 0x3000_0002;

/// The inference engine on an NVIDIA GPU. From the driver's sources and the
/// spec; on a GPU machine confirm it with a `--seccomp-log` run (kernel log
/// `type=1326` lines name any call this list misses).
///
/// `ioctl` cannot be narrowed by descriptor: BPF sees only the number of the
/// fd, which is assigned at `open` time and says nothing about the device
/// (seccomp cannot dereference it). So it is narrowed by request number to
/// the driver's (and Landlock's `IoctlDev`, from ABI 5, limits device ioctls
/// to the device nodes of the policy). The NVIDIA driver itself ignores the
/// type byte of its frontend ioctls, so a caller could still reach it with
/// any `'F'` request: the narrowing keeps the engine from every *other*
/// driver's and the terminal's ioctls (`TIOCSTI`, block and network devices).
pub const ENGINE_CUDA: &[Syscall] = &[
    sys!(
        SYS_ioctl,
        [
            [masked32(1, NV_IOCTL_TYPE_MASK, NV_IOCTL_TYPE)],
            [masked32(1, UVM_IOCTL_HIGH_BITS, 0)],
            [eq32(1, UVM_INITIALIZE)],
            [eq32(1, UVM_DEINITIALIZE)]
        ],
        "CUDA driver and NVML: NV_ESC_* requests (type 'F') on /dev/nvidiactl and /dev/nvidia[0-9]; UVM requests (plain numbers up to 2047, UVM_INITIALIZE, UVM_DEINITIALIZE) on /dev/nvidia-uvm"
    ),
    sys!(
        SYS_mmap,
        "CUDA driver maps device memory and UVM ranges; a library the driver loads late maps code (PROT_EXEC)"
    ),
    sys!(
        SYS_mprotect,
        "dlopen relocation (RELRO) of a late-loaded driver library, CUDA driver mappings"
    ),
    sys!(
        SYS_memfd_create,
        "CUDA driver: shared-memory backing for IPC/UVM"
    ),
    sys!(
        SYS_pwritev,
        "cubecl's on-disk kernel cache (turso, under sandbox.cache_dir): WAL frames in one vectored write"
    ),
    sys!(
        SYS_statfs,
        "cubecl's on-disk kernel cache (turso): the file system of its database, before it chooses how to lock"
    ),
];

/// The old name of [`ENGINE_CUDA`] ([`Role::Engine`]).
pub const ENGINE: &[Syscall] = ENGINE_CUDA;

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
        [[masked64(4, u64::MAX, 0)]],
        "send(2) on connected sockets: tokio UnixStream writes, sd_notify datagrams (WATCHDOG=1); never to an address (below Landlock ABI 6 nothing else keeps a datagram from an abstract socket)"
    ),
    sys!(SYS_sendmsg, "tokio UnixStream writes; sd_notify datagrams"),
    sys!(SYS_shutdown, "closing the write side of a connection"),
    sys!(SYS_getsockopt, "SO_PEERCRED on the admin socket, SO_ERROR"),
    sys!(SYS_getsockname, "logging the listening address"),
    sys!(SYS_getpeername, "tokio UnixStream::peer_addr"),
    sys!(
        SYS_socketpair,
        [[
            eq32(0, libc::AF_UNIX as u64),
            masked32(1, SOCK_TYPE_MASK, libc::SOCK_STREAM as u64)
        ]],
        "tokio::signal's driver creates an unnamed AF_UNIX stream pair lazily (mio UnixStream::pair); a connected stream pair reaches nothing"
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
    /// The role whose marker the compiled filter carries (`None` for the
    /// process-wide union).
    role: Option<Role>,
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
    fn from_tables(name: String, role: Option<Role>, tables: &[&[Syscall]]) -> Self {
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
        Self {
            name,
            role,
            entries,
        }
    }

    /// The allow-list of one role: the base plus that role's table.
    pub fn for_role(role: Role) -> Self {
        let tables: &[&[Syscall]] = match role {
            Role::Base => &[BASE, BASE_ARCH],
            Role::Engine | Role::EngineCuda => &[BASE, BASE_ARCH, ENGINE_CUDA],
            Role::EngineCpu => &[BASE, BASE_ARCH, ENGINE_CPU],
            Role::Http => &[BASE, BASE_ARCH, HTTP, HTTP_ARCH],
        };
        Self::from_tables(role.to_string(), Some(role), tables)
    }

    /// The union of the roles of a process whose engine runs as `engine`
    /// ([`Role::EngineCpu`] or [`Role::EngineCuda`]) and HTTP: what
    /// [`apply_seccomp`] installs on the whole process before any thread
    /// narrows itself. With the CPU engine no thread of the process can map
    /// executable memory or issue a device `ioctl`, narrowed or not.
    pub fn process_wide_for(engine: Role) -> Self {
        let engine_table = match engine {
            Role::EngineCpu => ENGINE_CPU,
            Role::Base | Role::Http => &[],
            Role::Engine | Role::EngineCuda => ENGINE_CUDA,
        };
        Self::from_tables(
            format!("process (base+{engine}+http)"),
            None,
            &[BASE, BASE_ARCH, engine_table, HTTP, HTTP_ARCH],
        )
    }

    /// [`Self::process_wide_for`] the CUDA engine (the broader of the two),
    /// as before the engine had two variants.
    pub fn process_wide() -> Self {
        Self::from_tables(
            "process (base+engine+http)".to_owned(),
            None,
            &[BASE, BASE_ARCH, ENGINE_CUDA, HTTP, HTTP_ARCH],
        )
    }

    /// Its name, for reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role it was built for ([`Self::for_role`]); `None` for the
    /// process-wide union.
    pub fn role(&self) -> Option<Role> {
        self.role
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
        let program = BpfProgram::try_from(filter).map_err(err)?;
        Ok(match self.role {
            Some(role) => [role_marker(role)?, program].concat(),
            None => program,
        })
    }
}

/// The `ioctl` request of the role probe ("mgSB"), always made on fd -1:
/// without a role filter the kernel fails it with `EBADF` before any driver
/// sees the request, so the probe can never reach a device.
pub const ROLE_PROBE_REQUEST: u32 = 0x6d67_5342;
/// The probe's answer is `ROLE_MARKER_ERRNO + role id` (errno values up to
/// 4095 are passed through by `SECCOMP_RET_ERRNO`; none above 133 exists).
pub const ROLE_MARKER_ERRNO: u32 = 4000;

/// `AUDIT_ARCH_*` of this architecture (`include/uapi/linux/audit.h`).
fn audit_arch() -> Result<u32, SandboxError> {
    match std::env::consts::ARCH {
        // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "x86_64" => Ok(62 | 0x8000_0000 | 0x4000_0000),
        // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        "aarch64" => Ok(183 | 0x8000_0000 | 0x4000_0000),
        other => Err(SandboxError::SeccompBuild {
            filter: format!("role marker for architecture {other}"),
            source: seccompiler::BackendError::InvalidTargetArch(other.to_owned()),
        }),
    }
}

/// The role marker: eight BPF instructions put in front of a role's
/// allow-list (module doc). On another architecture value, syscall or
/// argument they fall through to the allow-list, which starts with its own
/// architecture check. Offsets are those of `struct seccomp_data` on a
/// little-endian machine (the low 32 bits of `args[i]` at `16 + 8 * i`);
/// seccompiler supports only little-endian targets.
fn role_marker(role: Role) -> Result<BpfProgram, SandboxError> {
    const LD_ABS_W: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ARCH: u32 = 4;
    const NR: u32 = 0;
    const ARG0_LO: u32 = 16;
    const ARG1_LO: u32 = 24;
    let ld = |k| sock_filter {
        code: LD_ABS_W,
        jt: 0,
        jf: 0,
        k,
    };
    // Jump to the allow-list (index 9) when the comparison at `at` fails.
    let jeq = |at: u8, k| sock_filter {
        code: JEQ_K,
        jt: 0,
        jf: 8 - at,
        k,
    };
    let ioctl = u32::try_from(libc::SYS_ioctl).unwrap_or(u32::MAX);
    Ok(vec![
        ld(ARCH),
        jeq(1, audit_arch()?),
        ld(NR),
        jeq(3, ioctl),
        ld(ARG0_LO),
        jeq(5, u32::MAX), // fd -1
        ld(ARG1_LO),
        jeq(7, ROLE_PROBE_REQUEST),
        sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | (ROLE_MARKER_ERRNO + role.marker_id()),
        },
    ])
}

/// The role whose filter is the newest on the calling thread's stack, as the
/// kernel answers the role probe (module doc); `None` when the thread runs
/// only under the process-wide filters or none. One syscall, no file access.
pub fn current_thread_role() -> Option<Role> {
    // SAFETY: ioctl on fd -1 with a request no driver defines: the kernel
    // fails with EBADF before reading the (absent) third argument; a role
    // filter answers first with its marker errno. No memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            -1 as libc::c_int,
            libc::c_ulong::from(ROLE_PROBE_REQUEST),
        )
    };
    if rc != -1 {
        return None;
    }
    let errno = u32::try_from(nix::errno::Errno::last_raw()).ok()?;
    Role::from_marker_id(errno.checked_sub(ROLE_MARKER_ERRNO)?)
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
    let value = match c.value {
        ArgValue::Const(v) => v,
        ArgValue::OwnPid => u64::from(std::process::id()),
    };
    SeccompCondition::new(c.index, len, op, value)
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
/// both this and the process-wide filter. A role's policy is not added again
/// to a thread whose newest role filter is already that role's
/// ([`current_thread_role`]), so calling this on every new thread cannot
/// grow the stack.
pub fn narrow_current_thread(
    policy: &SeccompPolicy,
    mode: SeccompMode,
) -> Result<(), SandboxError> {
    let name = format!("allow-list ({}, this thread)", policy.name);
    require_process_filters(&name)?;
    if policy.role.is_some() && current_thread_role() == policy.role {
        return Ok(());
    }
    let prog = policy.compile(mode)?;
    seccompiler::apply_filter(&prog).map_err(|source| SandboxError::SeccompApply {
        filter: name,
        source,
    })
}

/// A closure for tokio's `Builder::on_thread_start` that narrows each new
/// runtime thread to `role`, unless the thread already runs under it
/// (inherited from the thread that created it: [`current_thread_role`]), so
/// that the stack stays flat however many generations of threads the
/// runtime creates. The BPF program is compiled once, here. If the kernel
/// refuses the filter the process aborts: a runtime thread must never run
/// unnarrowed, and the hook cannot return an error.
pub fn thread_start_hook(
    role: Role,
    mode: SeccompMode,
) -> Result<impl Fn() + Send + Sync + 'static, SandboxError> {
    let policy = SeccompPolicy::for_role(role);
    let name = format!("allow-list ({role}, thread start)");
    require_process_filters(&name)?;
    let prog = Arc::new(policy.compile(mode)?);
    Ok(move || {
        if current_thread_role() == Some(role) {
            return;
        }
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
        vec![BASE, BASE_ARCH, ENGINE_CPU, ENGINE_CUDA, HTTP, HTTP_ARCH]
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
        for engine in [Role::EngineCpu, Role::EngineCuda] {
            let process = SeccompPolicy::process_wide_for(engine);
            for role in [Role::Base, engine, Role::Http] {
                let p = SeccompPolicy::for_role(role);
                for nr in p.entries.keys() {
                    assert!(process.allows(*nr), "{role}: {nr}");
                }
                assert!(p.len() <= process.len());
            }
        }
        let legacy = SeccompPolicy::process_wide();
        for nr in SeccompPolicy::process_wide_for(Role::EngineCuda)
            .entries
            .keys()
        {
            assert!(legacy.allows(*nr));
        }
        let http = SeccompPolicy::for_role(Role::Http);
        assert!(!http.allows_any_args(libc::SYS_ioctl));
        assert!(!http.allows_any_args(libc::SYS_mmap));
        assert!(http.allows(libc::SYS_accept4));
        assert!(!SeccompPolicy::for_role(Role::EngineCuda).allows(libc::SYS_accept4));
    }

    #[test]
    fn the_cpu_engine_gets_no_device_ioctl_exec_mapping_or_memfd() {
        let cpu = SeccompPolicy::for_role(Role::EngineCpu);
        assert_eq!(cpu, {
            let mut base = SeccompPolicy::for_role(Role::Base);
            base.name = "engine-cpu".to_owned();
            base.role = Some(Role::EngineCpu);
            base
        });
        assert!(!cpu.allows_any_args(libc::SYS_ioctl));
        assert!(!cpu.allows_any_args(libc::SYS_mmap));
        assert!(!cpu.allows_any_args(libc::SYS_mprotect));
        assert!(!cpu.allows(libc::SYS_memfd_create));
        // Nor can any thread of a CPU-only process.
        let process = SeccompPolicy::process_wide_for(Role::EngineCpu);
        assert!(!process.allows_any_args(libc::SYS_mmap));
        assert!(!process.allows(libc::SYS_memfd_create));
        assert!(!process.allows_any_args(libc::SYS_ioctl));
    }

    #[test]
    fn the_cuda_engine_ioctl_is_narrowed_to_the_nvidia_request_numbers() {
        let cuda = SeccompPolicy::for_role(Role::EngineCuda);
        assert!(cuda.allows(libc::SYS_ioctl) && !cuda.allows_any_args(libc::SYS_ioctl));
        assert!(cuda.allows_any_args(libc::SYS_mmap));
        assert!(cuda.allows(libc::SYS_memfd_create));
        let alts = cuda.entries[&libc::SYS_ioctl]
            .alternatives
            .clone()
            .unwrap_or_default();
        let allowed = |request: u64| {
            alts.iter().any(|checks| {
                checks.iter().all(|c| {
                    c.index == 1 && matches!(c.value, ArgValue::Const(v) if request & c.mask == v)
                })
            })
        };
        // Seen in the field (NV_ESC_CHECK_VERSION_STR, NV_ESC_CARD_INFO,
        // NV_ESC_RM_CONTROL, NV_ESC_RM_ALLOC), UVM by number, the base's.
        for ok in [
            0xc048_46d2,
            0xca00_46c8,
            0xc020_462a,
            0xc020_462b,
            UVM_INITIALIZE,
            UVM_DEINITIALIZE,
            25,
            75,
            2047,
            ioctl_nr(libc::FIONBIO),
        ] {
            assert!(allowed(ok), "{ok:#x} refused");
        }
        for refused in [
            ioctl_nr(libc::TIOCSTI),
            ioctl_nr(libc::TIOCGWINSZ),
            ioctl_nr(libc::FIONREAD),
            0x4008_6602, // FS_IOC_GETFLAGS-like ('f')
            2048,
        ] {
            assert!(!allowed(refused), "{refused:#x} allowed");
        }
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
                SeccompPolicy::process_wide_for(Role::EngineCpu),
                SeccompPolicy::for_role(Role::Base),
                SeccompPolicy::for_role(Role::Engine),
                SeccompPolicy::for_role(Role::Http),
                SeccompPolicy::for_role(Role::EngineCpu),
                SeccompPolicy::for_role(Role::EngineCuda),
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
    fn roles_have_distinct_markers_in_front_of_their_allow_list() {
        let roles = Role::ALL;
        for role in roles {
            assert_eq!(Role::from_marker_id(role.marker_id()), Some(role));
            let with = SeccompPolicy::for_role(role)
                .compile(SeccompMode::Enforce)
                .unwrap();
            let marker = role_marker(role).unwrap();
            assert_eq!(&with[..marker.len()], &marker[..]);
            // The answer: SECCOMP_RET_ERRNO with this role's errno, below
            // the kernel's MAX_ERRNO (4095).
            let ret = marker.last().unwrap().k;
            assert_eq!(ret & libc::SECCOMP_RET_ACTION_FULL, libc::SECCOMP_RET_ERRNO);
            assert!((ret & libc::SECCOMP_RET_DATA) < 4096);
        }
        let ids: std::collections::BTreeSet<u32> = roles.iter().map(|r| r.marker_id()).collect();
        assert_eq!(ids.len(), roles.len());
        // The process-wide union carries no marker: it is no role.
        let process = SeccompPolicy::process_wide()
            .compile(SeccompMode::Enforce)
            .unwrap();
        assert_ne!(process[..9], role_marker(Role::Base).unwrap()[..]);
    }

    #[test]
    fn a_thread_without_a_role_filter_has_no_role() {
        // The test harness installs no filter: the kernel answers EBADF.
        if SECCOMP_REPORT.get().is_none() {
            assert_eq!(current_thread_role(), None);
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
