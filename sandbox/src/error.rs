//! The one error type of the sandbox crate. Each variant names the failing
//! call, path or syscall and carries the errno; each message is a sentence
//! saying what to do, because the daemon prints it and exits.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can stop the sandbox from being applied. The daemon maps
/// any of these to its "sandbox failed" exit code: it never starts serving
/// with a half-applied sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A step that only affects the calling thread ran with other threads alive.
    #[error(
        "{step} must run while the process has a single thread, but it has {threads}: \
         call it from main before starting tokio, the engine or any other thread"
    )]
    NotSingleThreaded {
        /// The public function that refused.
        step: &'static str,
        /// `Threads:` from `/proc/self/status`.
        threads: u32,
    },

    /// A `/proc` file could not be read.
    #[error("could not read {}: {source}; /proc must be mounted and readable", path.display())]
    ReadProc {
        /// The file.
        path: PathBuf,
        /// The error from `open`/`read`.
        #[source]
        source: io::Error,
    },

    /// A `/proc` file did not have the expected line.
    #[error(
        "{} has no valid `{field}` line: this kernel's /proc format is not the one \
         this crate was written for (Linux 6.x)",
        path.display()
    )]
    ParseProc {
        /// The file.
        path: PathBuf,
        /// The field that was missing or malformed.
        field: &'static str,
    },

    /// A systemd socket-activation variable is malformed.
    #[error(
        "the socket-activation variable {var}={value:?} is not valid: \
         start the daemon from its .socket unit or unset LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES"
    )]
    ListenFds {
        /// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES`.
        var: &'static str,
        /// The value found.
        value: String,
    },

    /// [`crate::take_listen_fds`] was called a second time.
    #[error(
        "the sockets passed by systemd were already taken by an earlier call: \
         take_listen_fds must be called once, at the start of main"
    )]
    ListenFdsTaken,

    /// `close` or `fcntl` on an inherited descriptor failed.
    #[error(
        "{call} on inherited file descriptor {fd} failed ({errno}): the process cannot be cleaned"
    )]
    Fd {
        /// `close` or `fcntl(F_SETFD)`.
        call: &'static str,
        /// The descriptor.
        fd: RawFd,
        /// The errno.
        errno: Errno,
    },

    /// The service user does not exist.
    #[error(
        "the user {name:?} does not exist: install the package's sysusers.d file \
         (systemd-sysusers) or name an existing unprivileged user"
    )]
    UnknownUser {
        /// The name that was looked up.
        name: String,
    },

    /// Looking up the service user failed (NSS error).
    #[error("looking up the user {name:?} failed ({errno}): check /etc/passwd and nsswitch.conf")]
    UserLookup {
        /// The name that was looked up.
        name: String,
        /// The errno from `getpwnam_r`.
        errno: Errno,
    },

    /// The service user is root (uid 0) or has gid 0.
    #[error(
        "the user {name:?} has uid {uid} and gid {gid}: the daemon must run as an \
         unprivileged user, name one with non-zero uid and gid"
    )]
    PrivilegedTarget {
        /// The name.
        name: String,
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
    },

    /// A call that drops privileges failed.
    #[error(
        "{call} failed while dropping privileges ({errno}): start the daemon as root \
         with CAP_SETUID, CAP_SETGID and CAP_SETPCAP, or as the service user itself"
    )]
    DropPrivileges {
        /// `setgroups`, `setresgid`, `setresuid`, `getresuid`, ...
        call: &'static str,
        /// The errno.
        errno: Errno,
    },

    /// The `caps` crate could not change a capability set.
    #[error(
        "clearing the {set} capability set failed ({source}): CAP_SETPCAP must still be \
         held; drop_privileges must run before anything else drops capabilities"
    )]
    Capabilities {
        /// `bounding`, `ambient`, `inheritable`, ...
        set: &'static str,
        /// The error text from the `caps` crate.
        #[source]
        source: caps::errors::CapsError,
    },

    /// After dropping, the kernel still reports a privilege.
    #[error(
        "privileges were not fully dropped: {what} is {found}, expected {expected}; \
         refusing to continue"
    )]
    StillPrivileged {
        /// What was checked (e.g. `CapBnd`, `uid (real, effective, saved, fs)`).
        what: &'static str,
        /// What it should be.
        expected: String,
        /// What the kernel reports.
        found: String,
    },

    /// A `prctl` call failed.
    #[error("prctl({call}) failed ({errno}): the kernel refused a process hardening setting")]
    Prctl {
        /// The prctl option, e.g. `PR_SET_NO_NEW_PRIVS`.
        call: &'static str,
        /// The errno.
        errno: Errno,
    },

    /// Setting or checking `RLIMIT_CORE` failed.
    #[error("setting RLIMIT_CORE to 1 byte failed ({errno}): core dumps could not be disabled")]
    CoreLimit {
        /// The errno.
        errno: Errno,
    },

    /// Landlock is missing from the kernel or disabled at boot.
    #[error(
        "Landlock is not available ({errno}): boot a kernel (5.13 or newer) with \"landlock\" \
         in CONFIG_LSM or in the lsm= kernel command line"
    )]
    LandlockUnavailable {
        /// `ENOSYS` (not built in) or `EOPNOTSUPP` (disabled at boot).
        errno: Errno,
    },

    /// The kernel's Landlock ABI is older than the minimum asked for.
    #[error(
        "Landlock ABI {required} or newer is required (sandbox.min_landlock_abi) but the kernel \
         offers ABI {found}: run a newer kernel, or lower sandbox.min_landlock_abi (not below 1) \
         if this site accepts that seccomp and systemd cover what Landlock then does not"
    )]
    LandlockAbiTooOld {
        /// The kernel's ABI version.
        found: i32,
        /// The minimum ([`crate::LandlockOptions::min_abi`]).
        required: i32,
    },

    /// The Landlock options contradict each other or this build.
    #[error(
        "sandbox.min_landlock_abi = {min_abi} (asking for ABI {max_abi:?} at most) is not \
         valid: {reason}; use a value from 1 to 10"
    )]
    LandlockOptions {
        /// [`crate::LandlockOptions::min_abi`].
        min_abi: i32,
        /// [`crate::LandlockOptions::max_abi`].
        max_abi: Option<i32>,
        /// What is wrong.
        reason: &'static str,
    },

    /// A path of the Landlock policy cannot be opened.
    #[error(
        "the sandbox path {} cannot be opened ({source}): create it, or remove it from \
         the configuration if it is optional",
        path.display()
    )]
    LandlockPath {
        /// The configured path.
        path: PathBuf,
        /// The error from `stat`/`open(O_PATH)`.
        #[source]
        source: io::Error,
    },

    /// The `landlock` crate or the kernel rejected the ruleset.
    #[error("the kernel rejected the Landlock ruleset ({source}); refusing to start unsandboxed")]
    Landlock {
        /// The error from the `landlock` crate.
        #[source]
        source: ::landlock::RulesetError,
    },

    /// The ruleset was applied but not fully enforced.
    #[error(
        "the Landlock ruleset is only {status}: refusing to start, since a partly \
         enforced ruleset silently drops rules"
    )]
    LandlockNotEnforced {
        /// `PartiallyEnforced` or `NotEnforced`.
        status: &'static str,
    },

    /// A seccomp table could not be compiled to BPF.
    #[error(
        "compiling the seccomp {filter} filter failed ({source}): the syscall table is invalid"
    )]
    SeccompBuild {
        /// Which filter (`allow-list (engine)`, `kill`, `clone3`).
        filter: String,
        /// The seccompiler error.
        #[source]
        source: seccompiler::BackendError,
    },

    /// A thread tried to narrow its filter before the process-wide filters existed.
    #[error(
        "the seccomp {filter} filter cannot be installed before apply_seccomp: \
         without the process-wide kill and clone3 filters an allow-list that admits \
         clone3 would let a thread create namespaces; call apply_seccomp first"
    )]
    SeccompOrder {
        /// Which filter.
        filter: String,
    },

    /// A hardening setting did not take effect.
    #[error("{what} is {found} after setting it, expected {expected}: refusing to continue")]
    NotHardened {
        /// `NoNewPrivs`, `dumpable`, `RLIMIT_CORE`.
        what: &'static str,
        /// What it should be.
        expected: String,
        /// What the kernel reports.
        found: String,
    },

    /// The kernel refused to install a seccomp filter.
    #[error(
        "installing the seccomp {filter} filter failed ({source}): the kernel needs \
         CONFIG_SECCOMP_FILTER, and TSYNC fails if another thread already has its own filter"
    )]
    SeccompApply {
        /// Which filter.
        filter: String,
        /// The seccompiler error (carries the errno or the failing thread id).
        #[source]
        source: seccompiler::Error,
    },
}
