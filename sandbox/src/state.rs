//! Step 6 and `/api/status`: what the kernel really enforces, read back from
//! `/proc` rather than remembered, plus the Landlock and seccomp reports
//! recorded when they were applied. Never changes anything.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::SandboxError;
use crate::landlock::LandlockReport;
use crate::seccomp::{SeccompMode, SeccompReport};

static INSECURE: AtomicBool = AtomicBool::new(false);
pub(crate) static LANDLOCK_REPORT: OnceLock<LandlockReport> = OnceLock::new();
pub(crate) static SECCOMP_REPORT: OnceLock<SeccompReport> = OnceLock::new();

/// Records that the operator started the daemon with `--insecure-no-sandbox`.
/// From then on every [`SandboxState`] of this process says so; nothing else
/// ever sets the flag.
pub fn declare_insecure_no_sandbox() {
    INSECURE.store(true, Ordering::SeqCst);
}

/// `RLIMIT_CORE` in bytes; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CoreLimit {
    /// Soft limit.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// The sandbox state of a process as the kernel reports it. Serialized as is
/// into `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxState {
    /// The daemon was started with `--insecure-no-sandbox`
    /// ([`declare_insecure_no_sandbox`]); never inferred.
    pub insecure_no_sandbox: bool,
    /// The process.
    pub pid: u32,
    /// `Threads:`.
    pub threads: u32,
    /// `NoNewPrivs:`.
    pub no_new_privs: bool,
    /// `Seccomp:`: 0 off, 1 strict, 2 filter.
    pub seccomp_mode: u8,
    /// `Seccomp_filters:` of the thread-group leader.
    pub seccomp_filters: u32,
    /// `CapInh:`.
    pub cap_inheritable: u64,
    /// `CapPrm:`.
    pub cap_permitted: u64,
    /// `CapEff:`.
    pub cap_effective: u64,
    /// `CapBnd:`.
    pub cap_bounding: u64,
    /// `CapAmb:`.
    pub cap_ambient: u64,
    /// `Uid:` real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Gid:` real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// `Groups:` (supplementary).
    pub groups: Vec<u32>,
    /// `prctl(PR_GET_DUMPABLE)`; `None` when read from outside ([`Self::of_pid`]).
    pub dumpable: Option<bool>,
    /// `Max core file size` from `/proc/PID/limits`.
    pub core_limit: CoreLimit,
    /// Recorded by [`crate::apply_landlock`] in this process; `None` from outside
    /// or before it ran.
    pub landlock: Option<LandlockReport>,
    /// Recorded by [`crate::apply_seccomp`] in this process; `None` from outside
    /// or before it ran.
    pub seccomp: Option<SeccompReport>,
}

impl SandboxState {
    /// The state of this process. Needs `/proc/self` to be readable, which
    /// [`crate::apply_landlock`] always allows, and `prctl(PR_GET_DUMPABLE)`,
    /// which every seccomp role allows.
    pub fn current() -> Result<Self, SandboxError> {
        let mut state = Self::read("/proc/self".as_ref())?;
        state.dumpable =
            Some(
                nix::sys::prctl::get_dumpable().map_err(|errno| SandboxError::Prctl {
                    call: "PR_GET_DUMPABLE",
                    errno,
                })?,
            );
        state.insecure_no_sandbox = INSECURE.load(Ordering::SeqCst);
        state.landlock = LANDLOCK_REPORT.get().cloned();
        state.seccomp = SECCOMP_REPORT.get().cloned();
        Ok(state)
    }

    /// The state of another process, from its `/proc/PID/status` and
    /// `/proc/PID/limits` (root, or the same user while it is dumpable).
    pub fn of_pid(pid: u32) -> Result<Self, SandboxError> {
        Self::read(&PathBuf::from(format!("/proc/{pid}")))
    }

    fn read(dir: &Path) -> Result<Self, SandboxError> {
        let status = read_proc_status(&dir.join("status"))?;
        let limits_path = dir.join("limits");
        let limits =
            std::fs::read_to_string(&limits_path).map_err(|source| SandboxError::ReadProc {
                path: limits_path.clone(),
                source,
            })?;
        let core_limit = parse_core_limit(&limits).ok_or(SandboxError::ParseProc {
            path: limits_path,
            field: "Max core file size",
        })?;
        Ok(Self {
            insecure_no_sandbox: false,
            pid: status.pid,
            threads: status.threads,
            no_new_privs: status.no_new_privs,
            seccomp_mode: status.seccomp_mode,
            seccomp_filters: status.seccomp_filters,
            cap_inheritable: status.cap_inh,
            cap_permitted: status.cap_prm,
            cap_effective: status.cap_eff,
            cap_bounding: status.cap_bnd,
            cap_ambient: status.cap_amb,
            uid: status.uid,
            gid: status.gid,
            groups: status.groups,
            dumpable: None,
            core_limit,
            landlock: None,
            seccomp: None,
        })
    }

    /// Everything that falls short of the full lockdown, as sentences; empty
    /// when the process is fully sandboxed. Landlock and seccomp reports are
    /// only judged when present (they are not visible from outside).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.insecure_no_sandbox {
            out.push("started with --insecure-no-sandbox".to_owned());
        }
        if !self.no_new_privs {
            out.push("no_new_privs is not set".to_owned());
        }
        if self.seccomp_mode != 2 {
            out.push(format!(
                "seccomp mode is {}, not 2 (filter)",
                self.seccomp_mode
            ));
        }
        if self.seccomp_filters < 3 {
            out.push(format!(
                "{} seccomp filters installed, expected at least 3 (allow-list, kill, clone3)",
                self.seccomp_filters
            ));
        }
        for (name, value) in [
            ("CapInh", self.cap_inheritable),
            ("CapPrm", self.cap_permitted),
            ("CapEff", self.cap_effective),
            ("CapBnd", self.cap_bounding),
            ("CapAmb", self.cap_ambient),
        ] {
            if value != 0 {
                out.push(format!("{name} is {value:#x}, not 0"));
            }
        }
        if self.uid.contains(&0) {
            out.push(format!("a uid is root: {:?}", self.uid));
        }
        if self.gid.contains(&0) {
            out.push(format!("a gid is root: {:?}", self.gid));
        }
        // A process started by systemd with User= has its own primary group
        // in the list (systemd calls initgroups(3)); that grants nothing the
        // gid does not already grant, and an unprivileged process cannot drop it.
        let extra: Vec<u32> = self
            .groups
            .iter()
            .copied()
            .filter(|g| !self.gid.contains(g))
            .collect();
        if !extra.is_empty() {
            out.push(format!("supplementary groups remain: {extra:?}"));
        }
        if self.dumpable == Some(true) {
            out.push("the process is dumpable".to_owned());
        }
        if !matches!(self.core_limit, CoreLimit { soft: Some(s), hard: Some(h) } if s <= 1 && h <= 1)
        {
            out.push(format!(
                "core limit is {:?}, not at most 1 byte",
                self.core_limit
            ));
        }
        if let Some(landlock) = &self.landlock
            && (!landlock.fully_enforced || landlock.enforced_abi < landlock.required_abi)
        {
            out.push("Landlock is not fully enforced".to_owned());
        }
        if let Some(seccomp) = &self.seccomp
            && seccomp.mode == SeccompMode::Log
        {
            out.push("seccomp is in log mode (diagnostics): nothing is denied".to_owned());
        }
        out
    }
}

/// The fields of `/proc/PID/status` the sandbox cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStatus {
    pub pid: u32,
    pub threads: u32,
    pub no_new_privs: bool,
    pub seccomp_mode: u8,
    pub seccomp_filters: u32,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

pub(crate) fn read_proc_status(path: &Path) -> Result<ProcStatus, SandboxError> {
    let text = std::fs::read_to_string(path).map_err(|source| SandboxError::ReadProc {
        path: path.to_owned(),
        source,
    })?;
    parse_proc_status(&text).map_err(|field| SandboxError::ParseProc {
        path: path.to_owned(),
        field,
    })
}

fn parse_proc_status(text: &str) -> Result<ProcStatus, &'static str> {
    let field = |name: &'static str| -> Result<&str, &'static str> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(name)
    };
    let number = |name: &'static str| -> Result<u32, &'static str> {
        field(name)?.parse().map_err(|_| name)
    };
    let hex = |name: &'static str| -> Result<u64, &'static str> {
        u64::from_str_radix(field(name)?, 16).map_err(|_| name)
    };
    let ids = |name: &'static str| -> Result<[u32; 4], &'static str> {
        let v: Vec<u32> = field(name)?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| name)?;
        v.try_into().map_err(|_| name)
    };
    Ok(ProcStatus {
        pid: number("Pid")?,
        threads: number("Threads")?,
        no_new_privs: number("NoNewPrivs")? == 1,
        seccomp_mode: field("Seccomp")?.parse().map_err(|_| "Seccomp")?,
        seccomp_filters: number("Seccomp_filters")?,
        cap_inh: hex("CapInh")?,
        cap_prm: hex("CapPrm")?,
        cap_eff: hex("CapEff")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb")?,
        uid: ids("Uid")?,
        gid: ids("Gid")?,
        groups: field("Groups")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| "Groups")?,
    })
}

fn parse_core_limit(limits: &str) -> Option<CoreLimit> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))?;
    let mut words = rest.split_whitespace();
    let value = |w: &str| -> Option<Option<u64>> {
        if w == "unlimited" {
            Some(None)
        } else {
            w.parse().ok().map(Some)
        }
    };
    Some(CoreLimit {
        soft: value(words.next()?)?,
        hard: value(words.next()?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tprobe\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nPid:\t77\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nFDSize:\t64\n\
        Groups:\t\nThreads:\t3\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\nSpeculation_Store_Bypass:\tthread vulnerable\n";

    #[test]
    fn parses_a_sandboxed_status() {
        let s = parse_proc_status(STATUS).unwrap();
        assert_eq!(s.pid, 77);
        assert_eq!(s.threads, 3);
        assert!(s.no_new_privs);
        assert_eq!((s.seccomp_mode, s.seccomp_filters), (2, 3));
        assert_eq!(s.uid, [65534; 4]);
        assert!(s.groups.is_empty());
        assert_eq!(s.cap_bnd, 0);
    }

    #[test]
    fn parses_groups_and_caps() {
        let text = STATUS
            .replace("Groups:\t\n", "Groups:\t0 4 24 \n")
            .replace("CapBnd:\t0000000000000000", "CapBnd:\t000001ffffffffff");
        let s = parse_proc_status(&text).unwrap();
        assert_eq!(s.groups, vec![0, 4, 24]);
        assert_eq!(s.cap_bnd, 0x1ff_ffff_ffff);
    }

    fn sandboxed(groups: Vec<u32>) -> SandboxState {
        let status = parse_proc_status(STATUS).unwrap();
        SandboxState {
            insecure_no_sandbox: false,
            pid: status.pid,
            threads: status.threads,
            no_new_privs: true,
            seccomp_mode: 2,
            seccomp_filters: 3,
            cap_inheritable: 0,
            cap_permitted: 0,
            cap_effective: 0,
            cap_bounding: 0,
            cap_ambient: 0,
            uid: status.uid,
            gid: status.gid,
            groups,
            dumpable: Some(false),
            core_limit: CoreLimit {
                soft: Some(0),
                hard: Some(0),
            },
            landlock: None,
            seccomp: None,
        }
    }

    #[test]
    fn systemd_user_start_keeps_only_its_own_group_and_that_is_no_problem() {
        // systemd's User= leaves the primary gid in Groups: (initgroups).
        assert_eq!(sandboxed(vec![65534]).problems(), Vec::<String>::new());
        assert_eq!(sandboxed(vec![]).problems(), Vec::<String>::new());
        let p = sandboxed(vec![65534, 27]).problems();
        assert_eq!(p, vec!["supplementary groups remain: [27]".to_owned()]);
    }

    #[test]
    fn seccomp_prefix_does_not_match_seccomp_filters() {
        // "Seccomp" must not be read from the "Seccomp_filters" line.
        let text = STATUS.replace("Seccomp:\t2\n", "");
        assert_eq!(parse_proc_status(&text), Err("Seccomp"));
    }

    #[test]
    fn parses_core_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max file size             unlimited            unlimited            bytes     \n\
            Max core file size        1                    1                    bytes     \n";
        assert_eq!(
            parse_core_limit(limits),
            Some(CoreLimit {
                soft: Some(1),
                hard: Some(1)
            })
        );
        let unlimited = limits.replace(
            "1                    1   ",
            "0                    unlimited",
        );
        assert_eq!(
            parse_core_limit(&unlimited),
            Some(CoreLimit {
                soft: Some(0),
                hard: None
            })
        );
    }

    #[test]
    fn current_process_reads() {
        let s = SandboxState::current().unwrap();
        assert_eq!(s.pid, std::process::id());
        assert!(s.threads >= 1);
        assert!(!s.insecure_no_sandbox);
    }
}
