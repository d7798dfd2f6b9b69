//! Reaching into a pod's network namespace from the agent.
//!
//! Network namespaces belong to threads, so the agent never switches its own
//! (tokio's worker threads are shared by every pod). Instead a short-lived
//! dedicated thread joins the namespace with `setns(2)`, creates and connects
//! the socket there, and hands the connected socket back; a socket stays in
//! the namespace it was created in whichever thread later uses it, so the
//! async side then drives it as an ordinary `tokio::net::TcpStream`. Used by
//! probes (httpGet, tcpSocket) and port-forwarding.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Connect to `addr` from inside the network namespace at `netns` (e.g.
/// `/proc/<sandbox pid>/ns/net`), giving up after `timeout`.
///
/// Errors are the connect's own (`ConnectionRefused`, `TimedOut`, ...) or
/// opening/joining the namespace (`NotFound` when the sandbox is gone).
pub async fn connect_tcp_in_netns(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns-connect".into())
        .spawn(move || {
            let result = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns: {e}")))
                .and_then(|()| std::net::TcpStream::connect_timeout(&addr, timeout));
            let _ = tx.send(result);
        })?;
    // The thread's own connect honours `timeout`; this bound only guards
    // against the thread not answering at all.
    let stream = match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) => return Err(io::Error::other("netns connect thread ended")),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn own_netns() -> std::path::PathBuf {
        "/proc/thread-self/ns/net".into()
    }

    #[tokio::test]
    async fn connects_in_the_current_namespace() {
        // Joining the namespace we are already in needs CAP_SYS_ADMIN like any
        // setns; skip quietly when not root.
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let mut s = connect_tcp_in_netns(&own_netns(), addr, Duration::from_secs(2))
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_and_missing_namespace_are_errors() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        // A port nobody listens on: bind, note it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = connect_tcp_in_netns(&own_netns(), addr, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let e = connect_tcp_in_netns(
            Path::new("/proc/999999999/ns/net"),
            addr,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
