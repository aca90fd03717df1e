//! Step 6 of the startup: the Landlock ruleset, built from the paths the
//! daemon's configuration names (so the allowed paths cannot drift from it).
//!
//! Fails closed: the kernel must offer [`REQUIRED_LANDLOCK_ABI`], every right
//! of that ABI is handled (`CompatLevel::HardRequirement`), and anything but
//! `RulesetStatus::FullyEnforced` is an error, because best-effort mode
//! silently drops rules. Must never grant `Execute` or network ports.
//!
//! What is handled (ABI 6, `Documentation/userspace-api/landlock.rst`):
//! every filesystem right up to `IoctlDev` (ABI 5); TCP bind and connect
//! (ABI 4) with no port rule, so both are denied with `EACCES`; the scopes
//! (ABI 6) `AbstractUnixSocket` (no `connect`/`sendto` to an abstract socket
//! created outside the sandbox: `EPERM`) and `Signal` (no signal to a process
//! outside the sandbox: `EPERM`). ABI 7 only adds audit-logging flags, ABI 8
//! the all-threads flag; neither adds a right, so ABI 6 is the requirement.

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

/// The Landlock ABI the sandbox needs: 6 (Linux 6.12) is the first with the
/// abstract-unix-socket and signal scopes.
pub const REQUIRED_LANDLOCK_ABI: i32 = 6;
const ABI_REQUIRED: ABI = ABI::V6;

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

/// What [`apply_landlock`] enforced; kept for [`crate::SandboxState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockReport {
    /// The kernel's Landlock ABI version.
    pub kernel_abi: i32,
    /// [`REQUIRED_LANDLOCK_ABI`].
    pub required_abi: i32,
    /// The kernel reported `FullyEnforced` (always true in a returned report).
    pub fully_enforced: bool,
    /// Handled (denied unless a rule allows) filesystem rights.
    pub handled_fs: Vec<String>,
    /// Handled network rights (no port rules: all denied).
    pub handled_net: Vec<String>,
    /// Enforced scopes.
    pub scopes: Vec<String>,
    /// The rules.
    pub rules: Vec<LandlockRuleReport>,
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

/// Applies the ruleset to the calling thread (and the threads it creates
/// later), which must be the only thread. Sets `no_new_privs` too.
///
/// Besides `policy`, one rule is always added: read-only access to this
/// process's own `/proc/<pid>` directory, so [`crate::SandboxState::current`]
/// can read `/proc/self/status` and `/proc/self/limits`. It exposes nothing
/// of other processes; the non-dumpable flag keeps most of those files
/// owned by root anyway.
///
/// A path that does not exist is an error naming it: the caller drops
/// optional paths (e.g. `/dev/nvidia-caps` without MIG) before calling.
pub fn apply_landlock(policy: &LandlockPolicy) -> Result<LandlockReport, SandboxError> {
    // Validation first (ABI, paths), so configuration errors are reported
    // the same way in every context; nothing is enforced before the
    // single-thread check below.
    let abi = kernel_abi()?;
    if abi < REQUIRED_LANDLOCK_ABI {
        return Err(SandboxError::LandlockAbiTooOld {
            found: abi,
            required: REQUIRED_LANDLOCK_ABI,
        });
    }

    let handled_fs = AccessFs::from_all(ABI_REQUIRED);
    let handled_net = AccessNet::from_all(ABI_REQUIRED);
    let scopes = Scope::from_all(ABI_REQUIRED);
    let file_rights = AccessFs::from_file(ABI_REQUIRED);

    // Open every path first, so a missing one is reported before anything
    // is enforced.
    let mut rules: Vec<(PathBuf, File, BitFlags<AccessFs>)> = Vec::new();
    let mut add = |path: &Path, access: BitFlags<AccessFs>| -> Result<(), SandboxError> {
        let (file, is_dir) = open_path(path)?;
        let access = if is_dir {
            access
        } else {
            // A rule on a file may only carry the rights that apply to files.
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
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(handled_fs)
        .map_err(to_err)?
        .handle_access(handled_net)
        .map_err(to_err)?
        .scope(scopes)
        .map_err(to_err)?
        .create()
        .map_err(to_err)?;
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
        kernel_abi: abi,
        required_abi: REQUIRED_LANDLOCK_ABI,
        fully_enforced: true,
        handled_fs: names!(handled_fs),
        handled_net: names!(handled_net),
        scopes: names!(scopes),
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

    #[test]
    fn required_abi_handles_tcp_and_both_scopes() {
        assert_eq!(
            AccessNet::from_all(ABI_REQUIRED),
            AccessNet::BindTcp | AccessNet::ConnectTcp
        );
        assert_eq!(
            Scope::from_all(ABI_REQUIRED),
            Scope::AbstractUnixSocket | Scope::Signal
        );
        assert!(AccessFs::from_all(ABI_REQUIRED).contains(AccessFs::IoctlDev));
    }

    #[test]
    fn a_missing_path_is_an_error_naming_it() {
        // Validation runs before the single-thread check, so this enforces
        // nothing in the (multi-threaded) test harness.
        let Ok(abi) = kernel_abi() else { return };
        if abi < REQUIRED_LANDLOCK_ABI {
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
            required: REQUIRED_LANDLOCK_ABI,
        }
        .to_string();
        assert!(
            msg.contains("ABI 6 or newer is required but the kernel offers ABI 3"),
            "{msg}"
        );
        assert!(
            msg.contains("Linux 6.12") && msg.contains("--insecure-no-sandbox"),
            "{msg}"
        );
    }

    #[test]
    fn kernel_reports_an_abi() {
        // Informational on machines without Landlock; the probes check the real thing.
        if let Ok(abi) = kernel_abi() {
            assert!(abi >= 1);
        }
    }
}
