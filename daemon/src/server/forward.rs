//! `medgemmad forward`: a loopback TCP port in front of the UI socket, for
//! development without systemd (`systemd-socket-proxyd` does this job on the
//! appliance, and may be absent on a developer's machine).
//!
//! Bytes are copied both ways untouched (`tokio::io::copy_bidirectional`);
//! the daemon behind it does every check. The listen address must be a
//! loopback address: the appliance's UI is never served to the network.
//!
//! Owns: the development proxy. Must never: listen on a non-loopback address
//! or look into the traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;

/// Connections forwarded at once (a browser opens about six per host).
pub const MAX_FORWARDED: usize = 128;

/// Arguments of `medgemmad forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Loopback address and port to listen on, e.g. 127.0.0.1:6006 (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// The daemon's UI socket.
    #[arg(long)]
    to: PathBuf,
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Not a loopback address.
    #[error(
        "refusing to listen on {0}: the UI is served on loopback only; use 127.0.0.1:PORT or [::1]:PORT"
    )]
    NotLoopback(SocketAddr),
    /// The port is taken or not allowed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime or the listener failed.
    #[error("forwarding failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the forwarder until SIGINT or SIGTERM.
pub fn run(args: ForwardArgs) -> Result<(), ForwardError> {
    if !args.listen.ip().is_loopback() {
        return Err(ForwardError::NotLoopback(args.listen));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| ForwardError::Bind {
                    addr: args.listen,
                    source,
                })?;
        let local = listener.local_addr()?;
        crate::log::info(format_args!(
            "forward: http://{local}/ -> {}",
            args.to.display()
        ));
        let to = Arc::new(args.to);
        let limit = Arc::new(Semaphore::new(MAX_FORWARDED));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return Ok(());
            };
            let (client, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        crate::log::warn(format_args!("forward: accept failed: {e}"));
                        continue;
                    }
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
            };
            let to = Arc::clone(&to);
            tokio::spawn(async move {
                pipe(client, &to).await;
                drop(permit);
            });
        }
    })
}

async fn pipe(mut client: TcpStream, to: &std::path::Path) {
    match UnixStream::connect(to).await {
        Ok(mut daemon) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
        }
        Err(_) => {
            // The daemon is not (yet) there: say so in the API's error shape.
            let body = r#"{"error":{"code":"daemon_unreachable","message":"The MedGemma service is not running or still starting; wait a moment and reload."}}"#;
            let resp = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(resp.as_bytes()).await;
            let _ = client.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_addresses_are_refused() {
        for addr in ["0.0.0.0:6006", "[::]:6006", "192.0.2.1:6006"] {
            let args = ForwardArgs {
                listen: addr.parse().unwrap(),
                to: "/nonexistent.sock".into(),
            };
            assert!(
                matches!(run(args), Err(ForwardError::NotLoopback(_))),
                "{addr}"
            );
        }
    }
}
