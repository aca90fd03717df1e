//! Step 1 of the startup: a clean process. Closes every inherited file
//! descriptor but stdio and the ones the caller keeps (the sockets systemd
//! handed over), and clears the environment down to an allow-list.
//!
//! Must never run once other threads exist: environment mutation is not
//! thread safe (it is `unsafe` in edition 2024), so every function here that
//! mutates checks `Threads: 1` in `/proc/self/status` first.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::stat::Mode;
use serde::Serialize;

use crate::SandboxError;
use crate::state::read_proc_status;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START` in
/// `sd-daemon.h`): passed sockets are 3, 4, ... in order.
pub const SD_LISTEN_FDS_START: RawFd = 3;

/// One socket passed by systemd socket activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenFd {
    /// The descriptor (3, 4, ...); already marked close-on-exec.
    pub fd: RawFd,
    /// Its `FileDescriptorName=` from `LISTEN_FDNAMES`, if systemd sent names.
    pub name: Option<String>,
}

/// What [`clean_process`] did, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanReport {
    /// Inherited descriptors that were closed.
    pub closed_fds: Vec<RawFd>,
    /// Descriptors kept open besides stdio.
    pub kept_fds: Vec<RawFd>,
    /// Stdio descriptors that were closed at start and now point to `/dev/null`.
    pub reopened_stdio: Vec<RawFd>,
    /// Names (never values: they may hold secrets) of removed variables.
    pub removed_env: Vec<String>,
}

/// Fails unless the calling process has exactly one thread.
pub(crate) fn require_single_thread(step: &'static str) -> Result<(), SandboxError> {
    let status = read_proc_status(Path::new("/proc/self/status"))?;
    if status.threads != 1 {
        return Err(SandboxError::NotSingleThreaded {
            step,
            threads: status.threads,
        });
    }
    Ok(())
}

/// Returns the sockets passed by systemd socket activation, as
/// `sd_listen_fds_with_names(3)` does: nothing unless `LISTEN_PID` is this
/// process, then `LISTEN_FDS` descriptors from 3 with the names of
/// `LISTEN_FDNAMES`. Each is marked close-on-exec. The variables themselves
/// are left for [`clean_process`] to remove, so call this first.
pub fn listen_fds() -> Result<Vec<ListenFd>, SandboxError> {
    let fds = parse_listen_fds(
        std::process::id(),
        std::env::var_os("LISTEN_PID").as_deref(),
        std::env::var_os("LISTEN_FDS").as_deref(),
        std::env::var_os("LISTEN_FDNAMES").as_deref(),
    )?;
    for listen in &fds {
        // SAFETY: systemd guarantees LISTEN_FDS descriptors from 3 are open in
        // this process (LISTEN_PID matched); the borrow ends with this statement
        // and nothing closes the descriptor meanwhile.
        let fd = unsafe { BorrowedFd::borrow_raw(listen.fd) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|errno| SandboxError::Fd {
            call: "fcntl(F_SETFD, FD_CLOEXEC)",
            fd: listen.fd,
            errno,
        })?;
    }
    Ok(fds)
}

/// One socket passed by systemd, now owned: dropping it closes the descriptor.
/// Convert it with `UnixListener::from(socket.fd)` (std's safe `From<OwnedFd>`).
#[derive(Debug)]
pub struct ListenSocket {
    /// The descriptor, owned by this value alone.
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=`, if systemd sent names.
    pub name: Option<String>,
}

/// Set by the first [`take_listen_fds`]: the descriptors have an owner.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Like [`listen_fds`], but takes ownership of the descriptors, so the
/// daemon needs no `unsafe` to adopt them. Succeeds once per process; a
/// second call fails with [`SandboxError::ListenFdsTaken`], because two
/// owners of one descriptor would each close it.
///
/// Call it first in `main` and keep the returned descriptors in
/// [`clean_process`]'s `keep_fds` (it closes every other inherited one).
pub fn take_listen_fds() -> Result<Vec<ListenSocket>, SandboxError> {
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(SandboxError::ListenFdsTaken);
    }
    let fds = listen_fds()?;
    Ok(fds
        .into_iter()
        .map(|listen| ListenSocket {
            // SAFETY: listen_fds() confirmed LISTEN_PID is this process and
            // set FD_CLOEXEC on the descriptor, which fails on a closed one,
            // so it is open; systemd hands it to this process alone, and the
            // LISTEN_FDS_TAKEN flag above makes this the only place that ever
            // takes ownership of it, so the OwnedFd is its sole owner.
            fd: unsafe { OwnedFd::from_raw_fd(listen.fd) },
            name: listen.name,
        })
        .collect())
}

/// The pure part of [`listen_fds`]: parses the three variables for `pid`.
pub fn parse_listen_fds(
    pid: u32,
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
) -> Result<Vec<ListenFd>, SandboxError> {
    fn text<'a>(var: &'static str, value: &'a OsStr) -> Result<&'a str, SandboxError> {
        value.to_str().ok_or_else(|| SandboxError::ListenFds {
            var,
            value: value.to_string_lossy().into_owned(),
        })
    }
    let Some(listen_pid) = listen_pid else {
        return Ok(Vec::new());
    };
    let listen_pid = text("LISTEN_PID", listen_pid)?;
    let for_pid: u32 = listen_pid.parse().map_err(|_| SandboxError::ListenFds {
        var: "LISTEN_PID",
        value: listen_pid.to_owned(),
    })?;
    if for_pid != pid {
        // Meant for a parent that exec'd us without cleaning up: not ours.
        return Ok(Vec::new());
    }
    let Some(count) = listen_fds else {
        return Ok(Vec::new());
    };
    let count = text("LISTEN_FDS", count)?;
    let n: RawFd = count
        .parse()
        .ok()
        .filter(|n| (0..=RawFd::MAX - SD_LISTEN_FDS_START).contains(n))
        .ok_or_else(|| SandboxError::ListenFds {
            var: "LISTEN_FDS",
            value: count.to_owned(),
        })?;
    let names: Vec<Option<String>> = match listen_fdnames {
        None => vec![None; n as usize],
        Some(raw) => {
            let raw = text("LISTEN_FDNAMES", raw)?;
            let names: Vec<_> = raw.split(':').map(|s| Some(s.to_owned())).collect();
            if names.len() != n as usize {
                return Err(SandboxError::ListenFds {
                    var: "LISTEN_FDNAMES",
                    value: raw.to_owned(),
                });
            }
            names
        }
    };
    Ok(names
        .into_iter()
        .zip(SD_LISTEN_FDS_START..)
        .map(|(name, fd)| ListenFd { fd, name })
        .collect())
}

/// Closes every inherited descriptor except 0, 1, 2 and `keep_fds`, makes
/// sure 0, 1 and 2 are open (on `/dev/null` if they were closed, so a later
/// `open` can never become "stdout"), and removes every environment variable
/// whose name is not in `env_allow`.
///
/// Call it first in `main`, before anything opens files: it closes by
/// number, so a descriptor owned by a live Rust object (other than the kept
/// ones) would be closed under it. It fails with
/// [`SandboxError::NotSingleThreaded`] unless the process has one thread,
/// which is what makes the environment mutation sound.
pub fn clean_process(keep_fds: &[RawFd], env_allow: &[&str]) -> Result<CleanReport, SandboxError> {
    require_single_thread("clean_process")?;
    let keep: BTreeSet<RawFd> = keep_fds.iter().copied().collect();

    // Collect first, close after: the directory stream is itself a descriptor.
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|source| SandboxError::ReadProc {
            path: "/proc/self/fd".into(),
            source,
        })?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed_fds = Vec::new();
    for fd in open {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        match nix::unistd::close(fd) {
            Ok(()) => closed_fds.push(fd),
            // The read_dir stream's own descriptor, already closed.
            Err(Errno::EBADF) => {}
            Err(errno) => {
                return Err(SandboxError::Fd {
                    call: "close",
                    fd,
                    errno,
                });
            }
        }
    }

    let mut reopened_stdio = Vec::new();
    for fd in 0..=2 {
        // SAFETY: F_GETFD takes no pointer and only reads the descriptor's
        // flags; on a closed number it fails with EBADF, which is the question.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 && Errno::last() == Errno::EBADF {
            // open() returns the lowest free number, which is `fd` here since
            // the lower ones are open; leak it on purpose: it is stdio now.
            let null =
                nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty()).map_err(|errno| {
                    SandboxError::Fd {
                        call: "open(/dev/null)",
                        fd,
                        errno,
                    }
                })?;
            let got = null.into_raw_fd();
            if got != fd {
                return Err(SandboxError::Fd {
                    call: "open(/dev/null) for stdio",
                    fd,
                    errno: Errno::EBADF,
                });
            }
            reopened_stdio.push(fd);
        }
    }

    let allow: BTreeSet<&OsStr> = env_allow.iter().map(OsStr::new).collect();
    let doomed: Vec<OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| !allow.contains(name.as_os_str()))
        .collect();
    for name in &doomed {
        // SAFETY: require_single_thread() above saw one thread and nothing in
        // this function starts one, so no other thread can read or write the
        // environment concurrently (the edition-2024 requirement).
        unsafe { std::env::remove_var(name) };
    }

    Ok(CleanReport {
        closed_fds,
        kept_fds: keep.into_iter().collect(),
        reopened_stdio,
        removed_env: doomed
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn listen_fds_are_taken_once() {
        // The test harness has no LISTEN_PID: nothing to adopt, but the
        // second call is refused all the same (two owners would double-close).
        if std::env::var_os("LISTEN_PID").is_none() {
            assert!(take_listen_fds().unwrap().is_empty());
            assert!(matches!(
                take_listen_fds(),
                Err(SandboxError::ListenFdsTaken)
            ));
        }
    }

    #[test]
    fn no_listen_pid_means_no_sockets() {
        assert_eq!(parse_listen_fds(42, None, os("2"), None).unwrap(), vec![]);
    }

    #[test]
    fn listen_pid_of_another_process_is_ignored() {
        assert_eq!(
            parse_listen_fds(42, os("41"), os("2"), None).unwrap(),
            vec![]
        );
    }

    #[test]
    fn sockets_start_at_3_with_names() {
        let fds = parse_listen_fds(42, os("42"), os("2"), os("api:admin")).unwrap();
        assert_eq!(
            fds,
            vec![
                ListenFd {
                    fd: 3,
                    name: Some("api".into())
                },
                ListenFd {
                    fd: 4,
                    name: Some("admin".into())
                },
            ]
        );
    }

    #[test]
    fn sockets_without_names() {
        let fds = parse_listen_fds(7, os("7"), os("1"), None).unwrap();
        assert_eq!(fds, vec![ListenFd { fd: 3, name: None }]);
    }

    #[test]
    fn malformed_variables_are_errors() {
        assert!(matches!(
            parse_listen_fds(7, os("seven"), os("1"), None),
            Err(SandboxError::ListenFds {
                var: "LISTEN_PID",
                ..
            })
        ));
        assert!(matches!(
            parse_listen_fds(7, os("7"), os("-1"), None),
            Err(SandboxError::ListenFds {
                var: "LISTEN_FDS",
                ..
            })
        ));
        assert!(matches!(
            parse_listen_fds(7, os("7"), os("2"), os("only-one")),
            Err(SandboxError::ListenFds {
                var: "LISTEN_FDNAMES",
                ..
            })
        ));
    }
}
