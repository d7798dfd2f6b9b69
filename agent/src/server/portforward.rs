//! `pods/portforward` on the node agent: the kubelet's port-forward protocols.
//!
//! Three ways in, all ending in the same thing — a TCP connection to
//! `127.0.0.1:<port>` made inside the pod's network namespace, with bytes
//! copied both ways:
//!
//! - **SPDY/3.1** (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version:
//!   portforward.k8s.io`): kubectl's classic protocol. For every local
//!   connection kubectl opens two streams carrying headers `streamtype`
//!   (`error` | `data`), `port` and `requestid`; the pair shares a request id.
//!   The data stream carries the connection's bytes; the error stream is
//!   read-only for the client and holds a message if forwarding failed.
//! - **SPDY tunnelled over WebSocket** (subprotocol
//!   `SPDY/3.1+portforward.k8s.io`, KEP-4006): the same SPDY byte stream cut
//!   into binary WebSocket messages whose boundaries mean nothing. kubectl
//!   ≥ 1.31 tries this first and falls back to plain SPDY when the upgrade is
//!   refused.
//! - **WebSocket channels** (subprotocol `v4.channel.k8s.io`; the official
//!   Python client): ports come from the query (`ports=` or `port=`); port `i`
//!   owns channel `2i` (data) and `2i+1` (error); every message starts with
//!   its channel byte, and the server's first message on each channel is the
//!   port as 2 bytes little-endian. One TCP connection per port per session.
//!
//! A failed connect (nothing listening) is reported on that request's error
//! stream and ends only that request; the session keeps serving others.

use super::spdy::{self, Codec, FlowWindow, Frame, FLAG_FIN};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The SPDY stream protocol name kubectl asks for.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// WebSocket subprotocol for SPDY tunnelled in binary messages.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// WebSocket subprotocol of the channel protocol (Python client).
pub const V4_CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// How long a connect into the pod may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a TCP connection to a port of the pod (inside its network namespace).
pub type Dialer = Arc<dyn Fn(u16) -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync>;

/// A [`Dialer`] connecting to `127.0.0.1:<port>` inside the network namespace
/// at `netns` (`/proc/<sandbox pid>/ns/net`).
pub fn netns_dialer(netns: PathBuf) -> Dialer {
    Arc::new(move |port| {
        let netns = netns.clone();
        Box::pin(async move {
            // Like the kubelet: IPv4 loopback first, then IPv6.
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let e4 = match crate::netns::connect_tcp_in_netns(&netns, v4, CONNECT_TIMEOUT).await {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            match crate::netns::connect_tcp_in_netns(&netns, v6, CONNECT_TIMEOUT).await {
                Ok(c) => Ok(c),
                Err(e6) => Err(io::Error::new(
                    e4.kind(),
                    format!(
                        "failed to connect to localhost:{port} inside the pod's network namespace: IPv4: {e4}; IPv6: {e6}"
                    ),
                )),
            }
        })
    })
}

/// The network namespace of the running pod `namespace/name` on this node,
/// from the agent's on-disk pod records (`None` when it has no live sandbox).
pub fn pod_netns(
    data_dir: &Path,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Option<PathBuf> {
    let pod = super::lookup::find_pod(data_dir, namespace, name, uid)?;
    let sandbox = pod.record.sandbox?;
    (crate::runtime::pause::process_start_time(sandbox.pid) == Some(sandbox.start_time))
        .then(|| PathBuf::from(sandbox.ns_path("net")))
}

/// Route `/portForward/{namespace}/{pod}` (the kubelet's path): forward to
/// the pod's own loopback. `?uid=` picks one pod among same-named ones.
pub async fn port_forward(
    axum::extract::State(api): axum::extract::State<Arc<super::AgentApi>>,
    axum::extract::Path((namespace, pod)): axum::extract::Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let uid = form_pairs(req.uri().query().unwrap_or(""))
        .find(|(k, _)| k == "uid")
        .map(|(_, v)| v);
    let Some(netns) = pod_netns(&api.data_dir, &namespace, &pod, uid.as_deref()) else {
        return super::status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {namespace}/{pod} has no running sandbox on this node"),
        );
    };
    handle(req, netns_dialer(netns)).await
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let reason = if status == StatusCode::FORBIDDEN {
        "Forbidden"
    } else {
        "BadRequest"
    };
    super::status_response(status, reason, &msg.into())
}

fn header_values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Ports named in a query string: `port=` (kubelet style) and `ports=`
/// (PodPortForwardOptions), each possibly comma-separated.
pub fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in form_pairs(query.unwrap_or("")) {
        if k != "port" && k != "ports" {
            continue;
        }
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port {p:?}: must be 1-65535")),
            }
        }
    }
    Ok(ports)
}

fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|s| !s.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

/// Serve one `portforward` request: negotiate the protocol, answer the
/// upgrade, and run the session on the upgraded connection in the background.
/// The server must serve connections with upgrades enabled.
pub async fn handle(req: axum::extract::Request, dial: Dialer) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let offered = header_values(req.headers(), "sec-websocket-protocol");
        let tunnel = offered.iter().any(|p| p == TUNNEL_PROTOCOL);
        let ports = match query_ports(req.uri().query()) {
            Ok(p) => p,
            Err(e) => return plain(StatusCode::BAD_REQUEST, e),
        };
        if !tunnel && ports.is_empty() {
            return plain(
                StatusCode::BAD_REQUEST,
                "query parameter \"ports\" is required for the channel protocol",
            );
        }
        let (mut parts, _body) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        if tunnel {
            return ws
                .protocols([TUNNEL_PROTOCOL])
                .on_upgrade(move |socket| async move {
                    let (a, b) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(pump_websocket(socket, a));
                    if let Err(e) = serve_spdy(b, dial).await {
                        tracing::debug!(error = %e, "port-forward (tunnelled SPDY) ended");
                    }
                });
        }
        return ws
            .protocols([V4_CHANNEL_PROTOCOL, "channel.k8s.io", PORT_FORWARD_PROTOCOL])
            .on_upgrade(move |socket| serve_channels(socket, ports, dial));
    }
    if upgrade.starts_with("spdy/3.1") {
        let offered = header_values(req.headers(), "x-stream-protocol-version");
        if !offered.is_empty() && !offered.iter().any(|p| p == PORT_FORWARD_PROTOCOL) {
            return plain(
                StatusCode::FORBIDDEN,
                format!("unable to upgrade: unsupported stream protocols {offered:?}; this server speaks {PORT_FORWARD_PROTOCOL}"),
            );
        }
        let mut req = req;
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
                    if let Err(e) = serve_spdy(hyper_util::rt::TokioIo::new(up), dial).await {
                        tracing::debug!(error = %e, "port-forward (SPDY) ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
            }
        });
        let mut resp = Response::new(axum::body::Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(
            "X-Stream-Protocol-Version",
            HeaderValue::from_static(PORT_FORWARD_PROTOCOL),
        );
        return resp;
    }
    plain(
        StatusCode::BAD_REQUEST,
        "Upgrade request required: port-forward speaks SPDY/3.1 or WebSocket",
    )
}

/// Bridge a WebSocket that tunnels a byte stream in binary messages to `io`.
async fn pump_websocket(socket: WebSocket, io: tokio::io::DuplexStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                Message::Text(_) => break, // the tunnel is binary only
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    // The session ends when its side closes (outbound done); a client that
    // disappears ends inbound, which closes the session's reader.
    tokio::join!(inbound, outbound);
}

/// What the session reader hands a forwarding task for its data stream.
#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    /// The client finished sending (FIN).
    Fin,
    /// The client aborted the stream (RST_STREAM).
    Reset,
}

/// Half of a request pair seen so far.
#[derive(Default)]
struct Pending {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Chunk>)>,
}

/// Run a port-forward SPDY session (server side) on `io` until the client
/// goes away.
pub async fn serve_spdy<IO>(io: IO, dial: Dialer) -> Result<(), spdy::SpdyError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(write_frames(wr, out_rx));
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Streams whose client-to-pod bytes go to a forwarding task.
    let mut data_streams: HashMap<u32, mpsc::Sender<Chunk>> = HashMap::new();
    let mut error_streams: std::collections::HashSet<u32> = Default::default();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut session_window = FlowWindow::new(spdy::DEFAULT_INITIAL_WINDOW);
    let mut windows: HashMap<u32, FlowWindow> = HashMap::new();
    let mut initial_window = spdy::DEFAULT_INITIAL_WINDOW;
    let result = 'session: loop {
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    let _ = out_tx
                        .send(Frame::GoAway {
                            last_good_stream_id: 0,
                            status: 1,
                        })
                        .await;
                    break 'session Err(e);
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break 'session Ok(()),
                Ok(_) => {}
            }
        };
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let (Some(port), "error" | "data") = (port.filter(|p| *p > 0), kind) else {
                    let _ = out_tx
                        .send(Frame::RstStream {
                            stream_id,
                            status: spdy::rst_status::REFUSED_STREAM,
                        })
                        .await;
                    continue;
                };
                // Old clients send no request id: the error stream precedes
                // its data stream by one client stream id (two).
                let request = spdy::header(&headers, "requestid")
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        let base = if kind == "data" {
                            stream_id.saturating_sub(2)
                        } else {
                            stream_id
                        };
                        format!("stream-{base}")
                    });
                let _ = out_tx
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: vec![],
                    })
                    .await;
                windows.insert(stream_id, FlowWindow::new(initial_window));
                let entry = pending.entry(request.clone()).or_default();
                entry.port = port;
                if kind == "error" {
                    error_streams.insert(stream_id);
                    entry.error = Some(stream_id);
                } else {
                    let (tx, rx) = mpsc::channel(16);
                    data_streams.insert(stream_id, tx);
                    entry.data = Some((stream_id, rx));
                }
                if entry.error.is_some() && entry.data.is_some() {
                    let Some(p) = pending.remove(&request) else {
                        continue;
                    };
                    let (Some(error_id), Some((data_id, rx))) = (p.error, p.data) else {
                        continue;
                    };
                    tokio::spawn(forward_spdy(
                        p.port,
                        data_id,
                        error_id,
                        rx,
                        out_tx.clone(),
                        dial.clone(),
                    ));
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                // Receive windows: hand the peer its window back as we go, so
                // a client that enforces flow control never stalls.
                if !data.is_empty() {
                    if session_window.consume(data.len()).is_ok() {
                        if let Some(delta) = session_window.replenish() {
                            let _ = out_tx
                                .send(Frame::WindowUpdate {
                                    stream_id: 0,
                                    delta,
                                })
                                .await;
                        }
                    }
                    if let Some(w) = windows.get_mut(&stream_id) {
                        if w.consume(data.len()).is_ok() {
                            if let Some(delta) = w.replenish() {
                                let _ = out_tx.send(Frame::WindowUpdate { stream_id, delta }).await;
                            }
                        }
                    }
                }
                if let Some(tx) = data_streams.get(&stream_id) {
                    if !data.is_empty() {
                        let _ = tx.send(Chunk::Data(data)).await;
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = tx.send(Chunk::Fin).await;
                        data_streams.remove(&stream_id);
                    }
                } else if flags & FLAG_FIN != 0 {
                    // The client closes its (unused) side of the error stream.
                    error_streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(tx) = data_streams.remove(&stream_id) {
                    let _ = tx.send(Chunk::Reset).await;
                }
                error_streams.remove(&stream_id);
                windows.remove(&stream_id);
            }
            Frame::Ping { id } => {
                // Echo the client's pings (odd ids); ours would be even.
                if id % 2 == 1 {
                    let _ = out_tx.send(Frame::Ping { id }).await;
                }
            }
            Frame::Settings { entries, .. } => {
                for e in entries {
                    if e.id == spdy::SETTINGS_INITIAL_WINDOW_SIZE {
                        initial_window = e.value as i64;
                    }
                }
            }
            Frame::GoAway { .. } => break Ok(()),
            // Send windows are not enforced: kubectl's SPDY library neither
            // grants window nor expects it to be honoured.
            Frame::WindowUpdate { .. }
            | Frame::Headers { .. }
            | Frame::SynReply { .. }
            | Frame::Unknown { .. } => {}
        }
    };
    // Client gone: abort the forwards still reading from it.
    for (_, tx) in data_streams.drain() {
        let _ = tx.try_send(Chunk::Reset);
    }
    drop(out_tx);
    let _ = writer.await;
    result
}

async fn write_frames<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Frame>) {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = rx.recv().await {
        buf.clear();
        if codec.encode(&frame, &mut buf).is_err() {
            continue;
        }
        // Batch whatever else is queued into the same write.
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    let _ = codec.encode(&f, &mut buf);
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

fn data_frame(stream_id: u32, data: Bytes, fin: bool) -> Frame {
    Frame::Data {
        stream_id,
        flags: if fin { FLAG_FIN } else { 0 },
        data,
    }
}

/// One forwarded connection: dial the pod, then copy until either side ends.
async fn forward_spdy(
    port: u16,
    data_id: u32,
    error_id: u32,
    mut from_client: mpsc::Receiver<Chunk>,
    out: mpsc::Sender<Frame>,
    dial: Dialer,
) {
    let conn = match dial(port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e}");
            tracing::debug!("{msg}");
            let _ = out.send(data_frame(error_id, Bytes::from(msg), true)).await;
            let _ = out.send(data_frame(data_id, Bytes::new(), true)).await;
            return;
        }
    };
    let (mut pod_rd, mut pod_wr) = conn.into_split();
    let out_pod = out.clone();
    let mut pod_to_client = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pod_rd.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if out_pod
                        .send(data_frame(data_id, chunk, false))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
                Err(e) => return Some(e.to_string()),
            }
        }
    });
    let client_to_pod = async {
        while let Some(chunk) = from_client.recv().await {
            match chunk {
                Chunk::Data(b) => {
                    if pod_wr.write_all(&b).await.is_err() {
                        return false;
                    }
                }
                Chunk::Fin => {
                    let _ = pod_wr.shutdown().await;
                    return false;
                }
                Chunk::Reset => return true,
            }
        }
        true // session gone
    };
    let pod_result = tokio::select! {
        r = &mut pod_to_client => r.ok().flatten(),
        reset = client_to_pod => {
            if reset {
                pod_to_client.abort();
                None
            } else {
                (&mut pod_to_client).await.ok().flatten()
            }
        }
    };
    let _ = out.send(data_frame(data_id, Bytes::new(), true)).await;
    let err = pod_result
        .map(|e| Bytes::from(format!("error forwarding port {port} to pod: {e}")))
        .unwrap_or_default();
    let _ = out.send(data_frame(error_id, err, true)).await;
}

/// Run the WebSocket channel protocol for `ports` on `socket`.
pub async fn serve_channels(socket: WebSocket, ports: Vec<u16>, dial: Dialer) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if ws_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    });
    let msg = |channel: usize, payload: &[u8]| {
        let mut v = Vec::with_capacity(payload.len() + 1);
        v.push(channel as u8);
        v.extend_from_slice(payload);
        Message::Binary(Bytes::from(v))
    };
    // Announce each port on its data and error channel.
    for (i, port) in ports.iter().enumerate() {
        let le = port.to_le_bytes();
        let _ = out_tx.send(msg(2 * i, &le)).await;
        let _ = out_tx.send(msg(2 * i + 1, &le)).await;
    }
    let mut to_pod: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        to_pod.push(Some(tx));
        let out = out_tx.clone();
        let dial = dial.clone();
        tasks.push(tokio::spawn(async move {
            let conn = match dial(port).await {
                Ok(c) => c,
                Err(e) => {
                    let text = format!("error forwarding port {port} to pod: {e}");
                    let _ = out.send(msg(2 * i + 1, text.as_bytes())).await;
                    return;
                }
            };
            let (mut rd, mut wr) = conn.into_split();
            let upstream = async {
                while let Some(b) = rx.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let downstream = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if out.send(msg(2 * i, &buf[..n])).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let text = format!("error forwarding port {port} to pod: {e}");
                            let _ = out.send(msg(2 * i + 1, text.as_bytes())).await;
                            break;
                        }
                    }
                }
            };
            // The pod closing the connection ends this port's forward.
            tokio::select! {
                _ = downstream => {}
                _ = async { upstream.await; std::future::pending::<()>().await } => {}
            }
        }));
    }
    drop(out_tx);
    let reader = async {
        while let Some(Ok(m)) = ws_rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&ch, payload)) = data.split_first() else {
                continue;
            };
            let ch = ch as usize;
            // Clients write only on data channels; the error channels and
            // unknown channels are ignored.
            if ch & 1 == 0 {
                if let Some(Some(tx)) = to_pod.get(ch / 2) {
                    if tx.send(Bytes::copy_from_slice(payload)).await.is_err() {
                        to_pod[ch / 2] = None;
                    }
                }
            }
        }
        to_pod.clear();
    };
    let forwards = futures::future::join_all(tasks);
    // Either the client leaves or every forward ends; then close.
    tokio::select! {
        _ = reader => {}
        _ = forwards => {}
    }
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A dialer to loopback ports of this process (stands in for the pod).
    fn loopback_dialer() -> Dialer {
        Arc::new(|port| {
            Box::pin(async move { TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await })
        })
    }

    /// An echo server that upper-cases what it reads, closing after EOF.
    async fn upper_echo() -> u16 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    s.read_to_end(&mut v).await.unwrap();
                    s.write_all(&v.to_ascii_uppercase()).await.unwrap();
                });
            }
        });
        port
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        l.local_addr().unwrap().port()
    }

    struct Client {
        codec: Codec,
        io: tokio::io::DuplexStream,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.codec.encode(&f, &mut b).unwrap();
            self.io.write_all(&b).await.unwrap();
        }
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
        async fn open(&mut self, id: u32, kind: &str, port: u16, request: u32) {
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), kind.into()),
                    ("port".into(), port.to_string()),
                    ("requestid".into(), request.to_string()),
                ],
            })
            .await;
        }
    }

    /// Collect, per stream, the bytes received until FIN.
    async fn collect(c: &mut Client, streams: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut done = std::collections::HashSet::new();
        while done.len() < streams.len() {
            match tokio::time::timeout(Duration::from_secs(10), c.next())
                .await
                .unwrap()
            {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    got.entry(stream_id).or_default().extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        done.insert(stream_id);
                    }
                }
                Some(_) => {}
                None => panic!("session closed early"),
            }
        }
        got
    }

    #[tokio::test]
    async fn spdy_session_forwards_two_connections_and_survives_a_refused_port() {
        let echo = upper_echo().await;
        let closed = closed_port().await;
        let (a, b) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn(serve_spdy(b, loopback_dialer()));
        let mut c = Client {
            codec: Codec::new(),
            io: a,
            buf: BytesMut::new(),
        };
        // Two concurrent requests plus one to a closed port.
        c.open(1, "error", echo, 0).await;
        c.open(3, "data", echo, 0).await;
        c.open(5, "error", echo, 1).await;
        c.open(7, "data", echo, 1).await;
        c.open(9, "error", closed, 2).await;
        c.open(11, "data", closed, 2).await;
        for (id, text) in [(3u32, "first"), (7, "second")] {
            c.send(data_frame(id, Bytes::from(text), false)).await;
            c.send(data_frame(id, Bytes::new(), true)).await;
        }
        let got = collect(&mut c, &[1, 3, 5, 7, 9, 11]).await;
        assert_eq!(got.get(&3).unwrap(), b"FIRST");
        assert_eq!(got.get(&7).unwrap(), b"SECOND");
        assert!(
            got.get(&1).is_none_or(|e| e.is_empty()),
            "no error for a good forward"
        );
        let err = String::from_utf8(got[&9].clone()).unwrap();
        assert!(
            err.contains(&format!("error forwarding port {closed}")),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");

        // The session still serves new requests after the failure.
        c.open(13, "error", echo, 3).await;
        c.open(15, "data", echo, 3).await;
        c.send(data_frame(15, Bytes::from("third"), true)).await;
        let got = collect(&mut c, &[13, 15]).await;
        assert_eq!(got[&15], b"THIRD");

        // Pings are echoed; GOAWAY ends the session.
        c.send(Frame::Ping { id: 1 }).await;
        loop {
            if let Some(Frame::Ping { id }) = c.next().await {
                assert_eq!(id, 1);
                break;
            }
        }
        c.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await;
        session.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn streams_without_a_valid_port_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_spdy(b, loopback_dialer()));
        let mut c = Client {
            codec: Codec::new(),
            io: a,
            buf: BytesMut::new(),
        };
        c.send(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), "data".into()),
                ("port".into(), "http".into()),
            ],
        })
        .await;
        match c.next().await {
            Some(Frame::RstStream {
                stream_id: 1,
                status,
            }) => {
                assert_eq!(status, spdy::rst_status::REFUSED_STREAM)
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn large_transfers_get_window_updates() {
        // A sink that counts bytes and replies with the count.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).await.unwrap();
            s.write_all(v.len().to_string().as_bytes()).await.unwrap();
        });
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_spdy(b, loopback_dialer()));
        let mut c = Client {
            codec: Codec::new(),
            io: a,
            buf: BytesMut::new(),
        };
        c.open(1, "error", port, 0).await;
        c.open(3, "data", port, 0).await;
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..8 {
            c.send(data_frame(3, chunk.clone(), false)).await;
        }
        c.send(data_frame(3, Bytes::new(), true)).await;
        let mut session_updates = 0u64;
        let mut stream_updates = 0u64;
        let mut reply = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), c.next())
                .await
                .unwrap()
                .unwrap()
            {
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta,
                } => session_updates += delta as u64,
                Frame::WindowUpdate {
                    stream_id: 3,
                    delta,
                } => stream_updates += delta as u64,
                Frame::Data {
                    stream_id: 3,
                    flags,
                    data,
                } => {
                    reply.extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        assert_eq!(reply, b"131072");
        // 128 KiB received: the window was handed back at least twice over.
        assert!(session_updates >= 98_304, "{session_updates}");
        assert!(stream_updates >= 98_304, "{stream_updates}");
    }

    async fn status_of(req: http::Request<axum::body::Body>) -> (StatusCode, String) {
        let resp = handle(req, loopback_dialer()).await;
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn requests_that_cannot_be_served_get_a_status() {
        let plain = http::Request::get("/portForward/default/p")
            .body(Default::default())
            .unwrap();
        let (code, body) = status_of(plain).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("Upgrade request required"), "{body}");

        let ws = |uri: &str, proto: &str| {
            http::Request::get(uri)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-protocol", proto)
                .body(Default::default())
                .unwrap()
        };
        let (code, body) = status_of(ws("/portForward/default/p", V4_CHANNEL_PROTOCOL)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("ports\\\" is required"), "{body}");
        let (code, body) =
            status_of(ws("/portForward/default/p?ports=http", V4_CHANNEL_PROTOCOL)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid port"), "{body}");

        let spdy = http::Request::post("/portForward/default/p")
            .header("connection", "upgrade")
            .header("upgrade", "SPDY/3.1")
            .header("x-stream-protocol-version", "v4.channel.k8s.io")
            .body(Default::default())
            .unwrap();
        let (code, body) = status_of(spdy).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(body.contains("unsupported stream protocols"), "{body}");
    }

    #[test]
    fn ports_come_from_port_and_ports_params() {
        assert_eq!(
            query_ports(Some("ports=8080,9090")).unwrap(),
            vec![8080, 9090]
        );
        assert_eq!(
            query_ports(Some("port=80&port=443")).unwrap(),
            vec![80, 443]
        );
        assert_eq!(
            query_ports(Some("ports=8080%2C81")).unwrap(),
            vec![8080, 81]
        );
        assert_eq!(query_ports(None).unwrap(), Vec::<u16>::new());
        assert!(query_ports(Some("ports=0")).is_err());
        assert!(query_ports(Some("ports=http")).is_err());
        assert!(query_ports(Some("ports=70000")).is_err());
    }
}
