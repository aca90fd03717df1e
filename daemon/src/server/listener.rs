//! Obtaining the UI socket: the one systemd passed (socket activation,
//! `sd_listen_fds(3)`: `LISTEN_PID` is this process and `LISTEN_FDS` ≥ 1, the
//! socket is descriptor 3), or one bound at `server.ui_socket`.
//!
//! Binding refuses to replace anything but a stale socket (one nobody
//! answers on), so a second daemon cannot steal a running one's socket. The
//! socket file is made `0660`; its directory (systemd's `RuntimeDirectory=`
//! or the development script's private runtime folder) decides who can reach
//! it.
//!
//! Owns: the UI socket's file. Must never: open a network socket.

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the UI socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A daemon already answers on the path.
    #[error(
        "another process is already serving on {path}; stop it first or choose another server.ui_socket"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error("{path} exists and is not a socket; remove it or choose another server.ui_socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Descriptor 3 is not a listening Unix socket.
    #[error(
        "socket activation: descriptor 3 is not a Unix stream socket ({0}); check ListenStream= in the .socket unit"
    )]
    NotUnix(std::io::Error),
}

/// The UI socket and where it came from.
#[derive(Debug)]
pub struct UiListener {
    /// The listening socket (blocking mode; the caller converts it for tokio).
    pub listener: UnixListener,
    /// The file to remove on exit; `None` when systemd owns the socket.
    pub bound_path: Option<PathBuf>,
}

/// The sockets systemd passed, sorted by their `FileDescriptorName=`.
#[derive(Debug, Default)]
pub struct Passed<T> {
    /// `ui`, or the first socket when none is named `ui` or `admin`
    /// (`systemd-socket-activate` without `--fdname`, older units).
    pub ui: Option<T>,
    /// `admin`: the admin socket, whose mode and group the unit sets.
    pub admin: Option<T>,
    /// Names of the sockets left unused (closed).
    pub ignored: Vec<String>,
}

/// Sorts passed sockets by name (see [`Passed`]).
pub fn by_name<T>(sockets: Vec<(Option<String>, T)>) -> Passed<T> {
    let named = sockets
        .iter()
        .any(|(name, _)| matches!(name.as_deref(), Some("ui" | "admin")));
    let mut passed = Passed {
        ui: None,
        admin: None,
        ignored: Vec::new(),
    };
    for (name, fd) in sockets {
        let slot = match name.as_deref() {
            Some("ui") if passed.ui.is_none() => &mut passed.ui,
            Some("admin") if passed.admin.is_none() => &mut passed.admin,
            _ if !named && passed.ui.is_none() => &mut passed.ui,
            _ => {
                passed
                    .ignored
                    .push(name.unwrap_or_else(|| "(unnamed)".to_owned()));
                continue;
            }
        };
        *slot = Some(fd);
    }
    passed
}

/// Takes the socket systemd passed (already adopted by
/// `medgemma_sandbox::take_listen_fds`, which owns the only `unsafe` of
/// socket activation), or binds `path`.
pub fn open(path: &Path, activated: Option<OwnedFd>) -> Result<UiListener, ListenerError> {
    if let Some(fd) = activated {
        let listener = UnixListener::from(fd);
        listener.local_addr().map_err(ListenerError::NotUnix)?;
        return Ok(UiListener {
            listener,
            bound_path: None,
        });
    }
    bind(path)
}

fn bind(path: &Path) -> Result<UiListener, ListenerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ListenerError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(ListenerError::InUse {
                    path: path.to_owned(),
                });
            }
            // Nobody answers: a stale socket from a previous run.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|source| ListenerError::Bind {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(ListenerError::Bind {
                    path: path.to_owned(),
                    source,
                });
            }
        },
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ListenerError::Bind {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(UiListener {
        listener,
        bound_path: Some(path.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_not_replaced_but_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ui.sock");
        let first = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(ListenerError::InUse { .. })));
        drop(first);
        bind(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ListenerError::NotASocket { .. })));
    }

    fn names(v: &[Option<&str>]) -> Vec<(Option<String>, usize)> {
        v.iter()
            .enumerate()
            .map(|(i, n)| (n.map(str::to_owned), i))
            .collect()
    }

    #[test]
    fn passed_sockets_are_taken_by_name() {
        let p = by_name(names(&[Some("admin"), Some("ui")]));
        assert_eq!((p.ui, p.admin), (Some(1), Some(0)));
        assert!(p.ignored.is_empty());
        // Named units: a stranger is ignored, not taken as the UI.
        let p = by_name(names(&[Some("metrics"), Some("ui")]));
        assert_eq!((p.ui, p.admin), (Some(1), None));
        assert_eq!(p.ignored, vec!["metrics".to_owned()]);
        // No ui/admin names (systemd-socket-activate, older units): the
        // first socket is the UI, the rest are ignored.
        let p = by_name(names(&[Some("unknown"), None]));
        assert_eq!((p.ui, p.admin), (Some(0), None));
        assert_eq!(p.ignored, vec!["(unnamed)".to_owned()]);
        let p = by_name(names(&[]));
        assert_eq!((p.ui, p.admin), (None, None));
        // Two admins: the second is ignored.
        let p = by_name(names(&[Some("admin"), Some("admin")]));
        assert_eq!((p.ui, p.admin), (None, Some(0)));
        assert_eq!(p.ignored, vec!["admin".to_owned()]);
    }
}
