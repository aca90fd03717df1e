//! Steps 2, 4 and 5 of the startup: resolve the service user, drop root for
//! good (capabilities, groups, gid, uid, each verified against the kernel),
//! and harden the process (`no_new_privs`, not dumpable, no core dumps).
//!
//! Must never leave a half-dropped process behind: every function returns
//! an error the daemon exits on, and [`drop_privileges`] re-reads the kernel's
//! view before it reports success.

use std::path::Path;

use caps::CapSet;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Gid, Uid, User};
use serde::Serialize;

use crate::SandboxError;
use crate::process::require_single_thread;
use crate::state::read_proc_status;

/// The service user, resolved while `/etc/passwd` is still readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedUser {
    /// The login name.
    pub name: String,
    /// Its uid (never 0).
    pub uid: u32,
    /// Its primary gid from the passwd entry (never 0).
    pub gid: u32,
}

/// Looks `name` up through NSS (`getpwnam_r`). Call before Landlock: NSS
/// reads `/etc/passwd` and may load `libnss_*` modules. Root (uid or gid 0)
/// is refused.
pub fn resolve_user(name: &str) -> Result<ResolvedUser, SandboxError> {
    let user = User::from_name(name)
        .map_err(|errno| SandboxError::UserLookup {
            name: name.to_owned(),
            errno,
        })?
        .ok_or_else(|| SandboxError::UnknownUser {
            name: name.to_owned(),
        })?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    if uid == 0 || gid == 0 {
        return Err(SandboxError::PrivilegedTarget {
            name: name.to_owned(),
            uid,
            gid,
        });
    }
    Ok(ResolvedUser {
        name: user.name,
        uid,
        gid,
    })
}

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DropReport {
    /// Root was dropped to the user; the kernel confirmed every field.
    Dropped {
        /// The user now running the process.
        user: ResolvedUser,
    },
    /// The process did not run as root (a development run as the service
    /// user): nothing was changed; the report says who it runs as.
    NotRoot {
        /// Effective uid found.
        euid: u32,
        /// Effective gid found.
        egid: u32,
    },
}

/// Drops root to `user`, in the only order that works:
/// 1. clear the capability bounding and ambient sets (needs `CAP_SETPCAP`,
///    so before the uid changes) and the inheritable set;
/// 2. `setgroups([])`, `setresgid(g, g, g)`, `setresuid(u, u, u)` (glibc
///    applies these to every thread; `capset` only to the calling one, hence
///    the single-thread requirement);
/// 3. verify from `/proc/self/status` and `getres[ug]id`: all four uids and
///    gids equal the target, no supplementary groups, every capability set
///    empty. Anything else is an error.
///
/// When the process is not root this is a no-op reported as
/// [`DropReport::NotRoot`]; the caller decides whether that is acceptable.
pub fn drop_privileges(user: &ResolvedUser) -> Result<DropReport, SandboxError> {
    require_single_thread("drop_privileges")?;
    let euid = Uid::effective();
    if !euid.is_root() {
        return Ok(DropReport::NotRoot {
            euid: euid.as_raw(),
            egid: Gid::effective().as_raw(),
        });
    }
    if user.uid == 0 || user.gid == 0 {
        return Err(SandboxError::PrivilegedTarget {
            name: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
        });
    }

    for (set, name) in [
        (CapSet::Bounding, "bounding"),
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
    ] {
        caps::clear(None, set)
            .map_err(|source| SandboxError::Capabilities { set: name, source })?;
    }

    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    let call = |call: &'static str| move |errno| SandboxError::DropPrivileges { call, errno };
    nix::unistd::setgroups(&[]).map_err(call("setgroups([])"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(call("setresgid"))?;
    // Last: after this the kernel clears the permitted and effective sets.
    nix::unistd::setresuid(uid, uid, uid).map_err(call("setresuid"))?;

    verify_dropped(user)?;
    Ok(DropReport::Dropped { user: user.clone() })
}

fn verify_dropped(user: &ResolvedUser) -> Result<(), SandboxError> {
    let call = |call: &'static str| move |errno| SandboxError::DropPrivileges { call, errno };
    let ruid = nix::unistd::getresuid().map_err(call("getresuid"))?;
    let rgid = nix::unistd::getresgid().map_err(call("getresgid"))?;
    let got_uids = [ruid.real, ruid.effective, ruid.saved].map(Uid::as_raw);
    let got_gids = [rgid.real, rgid.effective, rgid.saved].map(Gid::as_raw);
    let still = |what, expected: String, found: String| SandboxError::StillPrivileged {
        what,
        expected,
        found,
    };
    if got_uids != [user.uid; 3] {
        return Err(still(
            "uid (real, effective, saved)",
            format!("{:?}", [user.uid; 3]),
            format!("{got_uids:?}"),
        ));
    }
    if got_gids != [user.gid; 3] {
        return Err(still(
            "gid (real, effective, saved)",
            format!("{:?}", [user.gid; 3]),
            format!("{got_gids:?}"),
        ));
    }

    // The kernel's own view, which also covers the filesystem ids and every
    // capability bit (including ones newer than the `caps` crate knows).
    let status = read_proc_status(Path::new("/proc/self/status"))?;
    if status.uid != [user.uid; 4] {
        return Err(still(
            "Uid (real, effective, saved, fs)",
            format!("{:?}", [user.uid; 4]),
            format!("{:?}", status.uid),
        ));
    }
    if status.gid != [user.gid; 4] {
        return Err(still(
            "Gid (real, effective, saved, fs)",
            format!("{:?}", [user.gid; 4]),
            format!("{:?}", status.gid),
        ));
    }
    if !status.groups.is_empty() {
        return Err(still("Groups", "[]".into(), format!("{:?}", status.groups)));
    }
    for (what, value) in [
        ("CapInh", status.cap_inh),
        ("CapPrm", status.cap_prm),
        ("CapEff", status.cap_eff),
        ("CapBnd", status.cap_bnd),
        ("CapAmb", status.cap_amb),
    ] {
        if value != 0 {
            return Err(still(what, "0".into(), format!("{value:#018x}")));
        }
    }
    Ok(())
}

/// What [`harden_process`] found and set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HardenReport {
    /// `/proc/sys/kernel/core_pattern` (informational; `None` if unreadable).
    pub core_pattern: Option<String>,
    /// The pattern pipes cores to a helper (`|...`): there the kernel ignores
    /// `RLIMIT_CORE` = 0 and only 1 disables the dump.
    pub core_pattern_is_pipe: bool,
}

/// `PR_SET_NO_NEW_PRIVS` (no privilege gain through exec, and the
/// precondition for an unprivileged seccomp filter), `PR_SET_DUMPABLE(0)`
/// (no core, no ptrace attach by the same uid, `/proc/PID` owned by root),
/// and `RLIMIT_CORE` = 1 byte, soft and hard.
///
/// Why 1 and not 0 (`fs/coredump.c`, `do_coredump`): for a file
/// `core_pattern` any limit below the ELF minimum (one page) suppresses the
/// dump, but when the pattern is a pipe (`|/usr/lib/systemd/systemd-coredump`,
/// apport, ...) the kernel ignores `RLIMIT_CORE` except for the value 1,
/// which it treats as "no dump" ("has RLIMIT_CORE set to 1, aborting core").
/// So 1 disables cores for both kinds of pattern, 0 only for files.
pub fn harden_process() -> Result<HardenReport, SandboxError> {
    require_single_thread("harden_process")?;
    nix::sys::prctl::set_no_new_privs().map_err(|errno| SandboxError::Prctl {
        call: "PR_SET_NO_NEW_PRIVS",
        errno,
    })?;
    nix::sys::prctl::set_dumpable(false).map_err(|errno| SandboxError::Prctl {
        call: "PR_SET_DUMPABLE",
        errno,
    })?;
    // Lowering the hard limit needs no capability.
    setrlimit(Resource::RLIMIT_CORE, 1, 1).map_err(|errno| SandboxError::CoreLimit { errno })?;

    // Verify rather than trust.
    let prctl_err = |call| move |errno| SandboxError::Prctl { call, errno };
    if !nix::sys::prctl::get_no_new_privs().map_err(prctl_err("PR_GET_NO_NEW_PRIVS"))? {
        return Err(SandboxError::NotHardened {
            what: "NoNewPrivs",
            expected: "1".into(),
            found: "0".into(),
        });
    }
    if nix::sys::prctl::get_dumpable().map_err(prctl_err("PR_GET_DUMPABLE"))? {
        return Err(SandboxError::NotHardened {
            what: "dumpable",
            expected: "0".into(),
            found: "1".into(),
        });
    }
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_CORE).map_err(|errno| SandboxError::CoreLimit { errno })?;
    if soft > 1 || hard > 1 {
        return Err(SandboxError::NotHardened {
            what: "RLIMIT_CORE (soft, hard)",
            expected: "(1, 1)".into(),
            found: format!("({soft}, {hard})"),
        });
    }

    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .ok()
        .map(|p| p.trim_end().to_owned());
    let core_pattern_is_pipe = core_pattern.as_deref().is_some_and(|p| p.starts_with('|'));
    Ok(HardenReport {
        core_pattern,
        core_pattern_is_pipe,
    })
}
