//! Step 6 of the startup: the Landlock ruleset, built from the paths the
//! daemon's configuration names (so the allowed paths cannot drift from it).
//!
//! Graded by the kernel's ABI, and honest about it: the ruleset handles
//! every right of the newest ABI that both the kernel and this crate know
//! (or of a lower ABI the caller asks for, [`LandlockOptions::max_abi`]),
//! requires `RulesetStatus::FullyEnforced` (best-effort mode would silently
//! drop rules), refuses to start below [`LandlockOptions::min_abi`] (never
//! below [`MIN_LANDLOCK_ABI`]), and reports in [`LandlockReport`] exactly
//! which rights are enforced and, for each one that is not, what covers the
//! gap ([`LandlockGap`]). Must never grant `Execute` or network ports.
//!
//! # Why ABI 1 is the floor
//!
//! ABI 1 (Linux 5.13) already confines the file system: reading, writing,
//! executing, creating and removing files and directories are denied
//! outside the rules. What later ABIs add is either stricter at ABI 1 or
//! covered by the other layers (`Documentation/userspace-api/landlock.rst`,
//! the table [`RIGHTS`]):
//! - `Refer` (ABI 2): below it Landlock refuses *every* link or rename into
//!   another directory, which is stricter than the rules here;
//! - `Truncate` (ABI 3): seccomp allows no `truncate(2)` and `openat` with
//!   `O_TRUNC` only together with write access, which ABI 1 checks;
//! - TCP (ABI 4), abstract unix sockets and signals (ABI 6): seccomp refuses
//!   `socket(2)`, `connect(2)`, `bind(2)` and `kill(2)` in every role,
//!   `tgkill(2)` reaches only this process, `sendto(2)` takes no address;
//!   systemd adds `PrivateNetwork=yes` and `RestrictAddressFamilies=AF_UNIX`;
//! - `IoctlDev` (ABI 5): seccomp limits `ioctl` per role to a few request
//!   numbers, and which device nodes can be opened is still Landlock's.
//!
//! So the kernels hospitals run all start confined: Ubuntu 22.04 (5.15,
//! ABI 1), Debian 12 (6.1, ABI 2), Ubuntu 24.04 (6.8, ABI 4), Debian 13
//! (6.12, ABI 6). A site that wants Landlock itself to enforce more demands
//! it with `sandbox.min_landlock_abi` ([`LandlockOptions::min_abi`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, make_bitflags,
};
use nix::errno::Errno;
use serde::Serialize;

use crate::SandboxError;
use crate::process::require_single_thread;
use crate::state::LANDLOCK_REPORT;

/// The lowest Landlock ABI the sandbox accepts (module doc, "Why ABI 1 is
/// the floor"); a site may demand more ([`LandlockOptions::min_abi`]).
pub const MIN_LANDLOCK_ABI: i32 = 1;
/// The old name of [`MIN_LANDLOCK_ABI`] (it was 6, a hard requirement);
/// kept so that existing callers compile.
pub const REQUIRED_LANDLOCK_ABI: i32 = MIN_LANDLOCK_ABI;
/// The newest ABI whose rights this crate knows (the `landlock` crate's
/// newest); a newer kernel is asked for these rights only.
pub const NEWEST_KNOWN_LANDLOCK_ABI: i32 = 10;

/// `LANDLOCK_CREATE_RULESET_VERSION` from `include/uapi/linux/landlock.h`:
/// with a NULL attribute, `landlock_create_ruleset` returns the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;

/// Reading files and listing directories; never `Execute` (nothing in the
/// daemon executes a file; `dlopen` maps libraries, which needs `ReadFile`).
const READ: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | ReadDir});

/// State, logs and caches: read, write, truncate, create and remove regular
/// files and directories. No `Refer` (no rename across directories), no
/// sockets, FIFOs, devices or symlinks, no ioctl.
const READ_WRITE: BitFlags<AccessFs> = make_bitflags!(AccessFs::{
    ReadFile | ReadDir | WriteFile | Truncate | MakeReg | MakeDir | RemoveFile | RemoveDir
});

/// GPU device nodes: open read/write and issue device ioctls (ABI 5; the
/// right is bound to the file when it is opened, so descriptors opened before
/// the sandbox keep it).
const DEVICE: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | WriteFile | IoctlDev});

/// `/proc` for NVIDIA drivers >= 570, which write the thread name to
/// `/proc/<pid>/task/<tid>/comm` during `cuInit` (error 304 if denied).
/// Landlock cannot grant only those files, so: write, nothing else but
/// `Truncate`, because an `fopen("w")`-style open adds `O_TRUNC`, which
/// Landlock checks separately (measured: `EACCES` without it). Truncating a
/// procfs file is a no-op, and the files that matter are root-owned: the
/// process is not dumpable, so even its own `/proc/<pid>/*` (except the
/// per-thread `comm`, which the kernel lets a thread group write) is root's.
const PROC_COMM: BitFlags<AccessFs> = make_bitflags!(AccessFs::{WriteFile | Truncate});

/// The filesystem paths the daemon may touch once sandboxed, built by the
/// caller from its configuration: each configured file or directory
/// contributes its own entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPolicy {
    /// Read (files and directory listings) beneath these paths: model
    /// weights, tokenizer, driver libraries, `/sys` and `/proc/driver` paths.
    pub read_only: Vec<PathBuf>,
    /// Read and write beneath these: state, logs, caches.
    pub read_write: Vec<PathBuf>,
    /// Device nodes (or directories of them, like `/dev/nvidia-caps`):
    /// read, write and device ioctls.
    pub devices: Vec<PathBuf>,
    /// Allow writing files under `/proc` (see `PROC_COMM` above). Only for
    /// the CUDA engine.
    pub proc_write_comm: bool,
}

/// One rule as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockRuleReport {
    /// The path as opened (`/proc/self` is reported resolved).
    pub path: PathBuf,
    /// Allowed rights, e.g. `["ReadFile", "ReadDir"]`.
    pub access: Vec<String>,
}

/// What the caller asks of Landlock. The default takes every right the
/// kernel offers and accepts any ABI from [`MIN_LANDLOCK_ABI`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockOptions {
    /// Refuse to start below this ABI (`sandbox.min_landlock_abi`); at
    /// least [`MIN_LANDLOCK_ABI`], at most [`NEWEST_KNOWN_LANDLOCK_ABI`].
    pub min_abi: i32,
    /// Ask for the rights of at most this ABI even if the kernel offers more
    /// (tests of the lower ABIs on a new kernel; a fleet kept on one
    /// level); `None`: everything the kernel offers.
    pub max_abi: Option<i32>,
}

impl Default for LandlockOptions {
    fn default() -> Self {
        Self {
            min_abi: MIN_LANDLOCK_ABI,
            max_abi: None,
        }
    }
}

/// One Landlock right (or scope), the ABI that introduced it, what it
/// guards, and what guards that when the enforced ABI lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LandlockRight {
    /// The `landlock` crate's name: `Truncate`, `BindTcp`, `Signal`, ...
    pub right: &'static str,
    /// The ABI that introduced it.
    pub since_abi: i32,
    /// What it denies outside the rules.
    pub guards: &'static str,
    /// What denies the same when Landlock cannot.
    pub covered_by: &'static str,
}

/// Every right introduced after ABI 1 (ABI 1's filesystem rights are the
/// floor and always enforced). The `covered_by` texts name the seccomp
/// entries of [`crate::seccomp`] and the systemd unit's settings.
pub const RIGHTS: &[LandlockRight] = &[
    LandlockRight {
        right: "Refer",
        since_abi: 2,
        guards: "linking or renaming a file into another directory",
        covered_by: "nothing is lost: below ABI 2 Landlock refuses every link or rename into \
                     another directory (EXDEV), stricter than the rules here",
    },
    LandlockRight {
        right: "Truncate",
        since_abi: 3,
        guards: "truncating a file (truncate, ftruncate, open with O_TRUNC)",
        covered_by: "seccomp: truncate(2) is in no allow-list and openat with O_TRUNC only \
                     with write access, which Landlock checks (WriteFile); ftruncate needs a \
                     descriptor opened for writing",
    },
    LandlockRight {
        right: "BindTcp",
        since_abi: 4,
        guards: "binding a TCP port",
        covered_by: "seccomp: socket(2) and bind(2) are in no allow-list; systemd: \
                     PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX",
    },
    LandlockRight {
        right: "ConnectTcp",
        since_abi: 4,
        guards: "connecting to a TCP port",
        covered_by: "seccomp: socket(2) and connect(2) are in no allow-list; systemd: \
                     PrivateNetwork=yes, IPAddressDeny=any",
    },
    LandlockRight {
        right: "IoctlDev",
        since_abi: 5,
        guards: "ioctl on device files",
        covered_by: "seccomp: ioctl is limited per role to listed request numbers (HTTP and \
                     the CPU engine: FIONBIO, FIOCLEX, TCGETS; the CUDA engine: NVIDIA's); \
                     Landlock still decides which device nodes open; systemd: \
                     DevicePolicy=closed",
    },
    LandlockRight {
        right: "AbstractUnixSocket",
        since_abi: 6,
        guards: "connecting to an abstract unix socket outside the sandbox",
        covered_by: "seccomp: connect(2) is in no allow-list, socketpair(2) only AF_UNIX \
                     streams, sendto(2) only without an address; systemd: PrivateNetwork=yes \
                     (abstract sockets belong to the network namespace)",
    },
    LandlockRight {
        right: "Signal",
        since_abi: 6,
        guards: "signalling a process outside the sandbox",
        covered_by: "seccomp: kill(2) is in no allow-list and tgkill(2) reaches only this \
                     process (abort)",
    },
    LandlockRight {
        right: "ResolveUnix",
        since_abi: 9,
        guards: "connecting to a pathname unix socket",
        covered_by: "seccomp: connect(2) is in no allow-list and sendto(2) takes no address",
    },
    LandlockRight {
        right: "BindUdp",
        since_abi: 10,
        guards: "binding a UDP port",
        covered_by: "seccomp: socket(2) and bind(2) are in no allow-list; systemd: \
                     PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX",
    },
    LandlockRight {
        right: "ConnectSendUdp",
        since_abi: 10,
        guards: "sending UDP datagrams",
        covered_by: "seccomp: socket(2) is in no allow-list; systemd: PrivateNetwork=yes",
    },
];

/// A right the enforced ABI lacks, and what covers it (from [`RIGHTS`]).
pub type LandlockGap = LandlockRight;

/// What [`apply_landlock_with`] enforced; kept for [`crate::SandboxState`]
/// and shown in the startup log, `/api/status` and `medgemmactl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockReport {
    /// The kernel's Landlock ABI version.
    pub kernel_abi: i32,
    /// The ABI whose rights the ruleset handles: the kernel's, capped by
    /// [`LandlockOptions::max_abi`] and [`NEWEST_KNOWN_LANDLOCK_ABI`].
    pub enforced_abi: i32,
    /// The minimum demanded ([`LandlockOptions::min_abi`]).
    pub required_abi: i32,
    /// The cap asked for, if any ([`LandlockOptions::max_abi`]).
    pub max_abi: Option<i32>,
    /// The kernel reported `FullyEnforced` (always true in a returned report).
    pub fully_enforced: bool,
    /// Handled (denied unless a rule allows) filesystem rights.
    pub handled_fs: Vec<String>,
    /// Handled network rights (no port rules: all denied).
    pub handled_net: Vec<String>,
    /// Enforced scopes.
    pub scopes: Vec<String>,
    /// Rights this ABI lacks, each with what covers it instead.
    pub not_enforced: Vec<LandlockGap>,
    /// The rules.
    pub rules: Vec<LandlockRuleReport>,
}

impl LandlockReport {
    /// One line for the startup log and `medgemmactl status`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "Landlock ABI {} enforced (kernel {}, minimum {}): {} rules",
            self.enforced_abi,
            self.kernel_abi,
            self.required_abi,
            self.rules.len()
        );
        let missing: Vec<&str> = self.not_enforced.iter().map(|g| g.right).collect();
        if !missing.is_empty() {
            line.push_str(&format!(
                "; not enforced by Landlock at this ABI (covered by seccomp and systemd): {}",
                missing.join(", ")
            ));
        }
        line
    }
}

/// The rights of [`RIGHTS`] that `abi` lacks.
pub fn gaps_at(abi: i32) -> Vec<LandlockGap> {
    RIGHTS
        .iter()
        .filter(|r| r.since_abi > abi)
        .copied()
        .collect()
}

/// Asks the kernel for its Landlock ABI version.
pub fn kernel_abi() -> Result<i32, SandboxError> {
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag the kernel
    // reads no memory and only returns the ABI number (landlock_create_ruleset(2)).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(SandboxError::LandlockUnavailable {
            errno: Errno::last(),
        });
    }
    Ok(i32::try_from(v).unwrap_or(i32::MAX))
}

/// Names of the flags, as the `landlock` crate's variant names.
macro_rules! names {
    ($flags:expr) => {
        $flags
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<String>>()
    };
}

/// Opens `path` with `O_PATH` (no read or write access, follows symlinks)
/// and tells whether it is a directory.
fn open_path(path: &Path) -> Result<(File, bool), SandboxError> {
    let err = |source| SandboxError::LandlockPath {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    let is_dir = file.metadata().map_err(err)?.is_dir();
    Ok((file, is_dir))
}

/// [`apply_landlock_with`] with the default options: every right the kernel
/// offers, any ABI from [`MIN_LANDLOCK_ABI`].
pub fn apply_landlock(policy: &LandlockPolicy) -> Result<LandlockReport, SandboxError> {
    apply_landlock_with(policy, &LandlockOptions::default())
}

/// The ABI whose rights a ruleset asks for: the kernel's, capped by
/// `options.max_abi` and [`NEWEST_KNOWN_LANDLOCK_ABI`]; an error when that
/// is below `options.min_abi` or the options contradict each other.
pub fn choose_abi(kernel: i32, options: &LandlockOptions) -> Result<i32, SandboxError> {
    let invalid = |reason: &'static str| SandboxError::LandlockOptions {
        min_abi: options.min_abi,
        max_abi: options.max_abi,
        reason,
    };
    if options.min_abi < MIN_LANDLOCK_ABI {
        return Err(invalid(
            "the minimum cannot be below 1, the first ABI that confines the file system",
        ));
    }
    if options.min_abi > NEWEST_KNOWN_LANDLOCK_ABI {
        return Err(invalid("this build knows Landlock ABIs up to 10"));
    }
    if let Some(max) = options.max_abi
        && max < options.min_abi
    {
        return Err(invalid("the ABI asked for is below the minimum"));
    }
    let target = kernel
        .min(options.max_abi.unwrap_or(NEWEST_KNOWN_LANDLOCK_ABI))
        .min(NEWEST_KNOWN_LANDLOCK_ABI);
    if target < options.min_abi {
        return Err(SandboxError::LandlockAbiTooOld {
            found: kernel,
            required: options.min_abi,
        });
    }
    Ok(target)
}

/// Applies the ruleset to the calling thread (and the threads it creates
/// later), which must be the only thread, at the ABI [`choose_abi`] picks:
/// every right of that ABI is handled, the rules are cut to those rights
/// (e.g. device nodes lose `IoctlDev` below ABI 5), and anything but full
/// enforcement is an error. Sets `no_new_privs` too. The report lists what
/// that ABI does not enforce and what covers it.
///
/// Besides `policy`, one rule is always added: read-only access to this
/// process's own `/proc/<pid>` directory, so [`crate::SandboxState::current`]
/// can read `/proc/self/status` and `/proc/self/limits`. It exposes nothing
/// of other processes; the non-dumpable flag keeps most of those files
/// owned by root anyway.
///
/// A path that does not exist is an error naming it: the caller drops
/// optional paths (e.g. `/dev/nvidia-caps` without MIG) before calling.
pub fn apply_landlock_with(
    policy: &LandlockPolicy,
    options: &LandlockOptions,
) -> Result<LandlockReport, SandboxError> {
    // Validation first (ABI, paths), so configuration errors are reported
    // the same way in every context; nothing is enforced before the
    // single-thread check below.
    let kernel = kernel_abi()?;
    let abi_number = choose_abi(kernel, options)?;
    // Chosen at run time on purpose (the `landlock` crate advises fixed
    // ABIs): each level from the floor up is tested on a new kernel by
    // capping it (tests/probes.rs).
    let abi = ABI::from(abi_number);

    let handled_fs = AccessFs::from_all(abi);
    let handled_net = AccessNet::from_all(abi);
    let scopes = Scope::from_all(abi);
    let file_rights = AccessFs::from_file(abi);

    // Open every path first, so a missing one is reported before anything
    // is enforced.
    let mut rules: Vec<(PathBuf, File, BitFlags<AccessFs>)> = Vec::new();
    let mut add = |path: &Path, access: BitFlags<AccessFs>| -> Result<(), SandboxError> {
        let (file, is_dir) = open_path(path)?;
        // Only rights this ABI handles; a rule on a file only those that
        // apply to files.
        let access = if is_dir {
            access & handled_fs
        } else {
            access & file_rights
        };
        rules.push((path.to_owned(), file, access));
        Ok(())
    };
    for path in &policy.read_only {
        add(path, READ)?;
    }
    for path in &policy.read_write {
        add(path, READ_WRITE)?;
    }
    for path in &policy.devices {
        // A directory of device nodes (e.g. /dev/nvidia-caps) must be listable.
        add(path, DEVICE | AccessFs::ReadDir)?;
    }
    if policy.proc_write_comm {
        add(Path::new("/proc"), PROC_COMM)?;
    }
    let own_proc = PathBuf::from(format!("/proc/{}", std::process::id()));
    add(&own_proc, READ)?;

    require_single_thread("apply_landlock")?;
    let to_err = |source| SandboxError::Landlock { source };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(handled_fs)
        .map_err(to_err)?;
    // Below ABI 4 (network) and 6 (scopes) there is nothing to handle, and
    // handling an empty set is an error.
    if !handled_net.is_empty() {
        ruleset = ruleset.handle_access(handled_net).map_err(to_err)?;
    }
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(to_err)?;
    }
    let mut created = ruleset.create().map_err(to_err)?;
    let mut report_rules = Vec::new();
    for (path, file, access) in rules {
        report_rules.push(LandlockRuleReport {
            path,
            access: names!(access),
        });
        created = created
            .add_rule(PathBeneath::new(file, access))
            .map_err(to_err)?;
    }
    let status = created.restrict_self().map_err(to_err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => {}
        RulesetStatus::PartiallyEnforced => {
            return Err(SandboxError::LandlockNotEnforced {
                status: "partially enforced",
            });
        }
        RulesetStatus::NotEnforced => {
            return Err(SandboxError::LandlockNotEnforced {
                status: "not enforced",
            });
        }
    }

    let report = LandlockReport {
        kernel_abi: kernel,
        enforced_abi: abi_number,
        required_abi: options.min_abi,
        max_abi: options.max_abi,
        fully_enforced: true,
        handled_fs: names!(handled_fs),
        handled_net: names!(handled_net),
        scopes: names!(scopes),
        not_enforced: gaps_at(abi_number),
        rules: report_rules,
    };
    // First application wins; a second ruleset only narrows further.
    let _ = LANDLOCK_REPORT.set(report.clone());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_grants_execute() {
        for rights in [READ, READ_WRITE, DEVICE, PROC_COMM] {
            assert!(!rights.contains(AccessFs::Execute));
            assert!(!rights.contains(AccessFs::Refer));
            assert!(!rights.contains(AccessFs::MakeSym));
        }
        assert!(!READ_WRITE.contains(AccessFs::IoctlDev));
    }

    /// Every flag the `landlock` crate handles at `abi`, by name.
    fn handled_at(abi: i32) -> Vec<String> {
        let abi = ABI::from(abi);
        let mut all = names!(AccessFs::from_all(abi));
        all.extend(names!(AccessNet::from_all(abi)));
        all.extend(names!(Scope::from_all(abi)));
        all
    }

    #[test]
    fn the_rights_table_matches_the_abi_each_right_came_with() {
        let abi1 = handled_at(1);
        for right in RIGHTS {
            assert!(
                handled_at(right.since_abi).contains(&right.right.to_owned()),
                "{} is not handled at ABI {}",
                right.right,
                right.since_abi
            );
            assert!(
                !handled_at(right.since_abi - 1).contains(&right.right.to_owned()),
                "{} already exists at ABI {}",
                right.right,
                right.since_abi - 1
            );
            assert!(right.covered_by.len() > 20, "{}", right.right);
        }
        // Every right the newest ABI has beyond ABI 1 is in the table.
        for name in handled_at(NEWEST_KNOWN_LANDLOCK_ABI) {
            assert!(
                abi1.contains(&name) || RIGHTS.iter().any(|r| r.right == name),
                "{name} is missing from RIGHTS"
            );
        }
    }

    #[test]
    fn gaps_shrink_as_the_abi_grows() {
        assert_eq!(gaps_at(1).len(), RIGHTS.len());
        assert!(gaps_at(NEWEST_KNOWN_LANDLOCK_ABI).is_empty());
        let at6: Vec<&str> = gaps_at(6).iter().map(|g| g.right).collect();
        assert_eq!(at6, ["ResolveUnix", "BindUdp", "ConnectSendUdp"]);
        let at2: Vec<&str> = gaps_at(2).iter().map(|g| g.right).collect();
        assert!(at2.contains(&"Truncate") && !at2.contains(&"Refer"));
    }

    #[test]
    fn the_abi_asked_for_is_the_kernels_capped_and_never_below_the_minimum() {
        let opts = |min_abi, max_abi| LandlockOptions { min_abi, max_abi };
        assert_eq!(choose_abi(7, &LandlockOptions::default()).unwrap(), 7);
        assert_eq!(choose_abi(2, &LandlockOptions::default()).unwrap(), 2);
        assert_eq!(choose_abi(12, &LandlockOptions::default()).unwrap(), 10);
        assert_eq!(choose_abi(7, &opts(1, Some(3))).unwrap(), 3);
        assert_eq!(choose_abi(7, &opts(6, None)).unwrap(), 7);
        assert!(matches!(
            choose_abi(4, &opts(6, None)),
            Err(SandboxError::LandlockAbiTooOld {
                found: 4,
                required: 6
            })
        ));
        for bad in [opts(0, None), opts(11, None), opts(5, Some(4))] {
            let err = choose_abi(7, &bad).unwrap_err();
            assert!(
                matches!(err, SandboxError::LandlockOptions { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("sandbox.min_landlock_abi"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        // Validation runs before the single-thread check, so this enforces
        // nothing in the (multi-threaded) test harness.
        if kernel_abi().is_err() {
            return;
        }
        let policy = LandlockPolicy {
            read_only: vec!["/nonexistent/medgemma-model".into()],
            ..LandlockPolicy::default()
        };
        let err = apply_landlock(&policy).unwrap_err();
        assert!(
            matches!(&err, SandboxError::LandlockPath { path, .. } if path == Path::new("/nonexistent/medgemma-model")),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("/nonexistent/medgemma-model"),
            "{err}"
        );
    }

    #[test]
    fn too_old_abi_message_says_what_to_do() {
        let msg = SandboxError::LandlockAbiTooOld {
            found: 3,
            required: 6,
        }
        .to_string();
        assert!(
            msg.contains("ABI 6 or newer is required") && msg.contains("the kernel offers ABI 3"),
            "{msg}"
        );
        assert!(msg.contains("sandbox.min_landlock_abi"), "{msg}");
        // Never advice to switch the sandbox off.
        assert!(!msg.contains("insecure"), "{msg}");
        let unavailable = SandboxError::LandlockUnavailable {
            errno: Errno::EOPNOTSUPP,
        }
        .to_string();
        assert!(!unavailable.contains("insecure"), "{unavailable}");
    }

    #[test]
    fn kernel_reports_an_abi() {
        // Informational on machines without Landlock; the probes check the real thing.
        if let Ok(abi) = kernel_abi() {
            assert!(abi >= 1);
        }
    }
}
