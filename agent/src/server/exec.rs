//! `GET /exec/{namespace}/{pod}[/{uid}]/{container}?command=…&stdin=…&stdout=…&stderr=…&tty=…`:
//! run a command in a running container, its stdio carried over a WebSocket
//! in Kubernetes' channel protocol.
//!
//! Subprotocols `v5.channel.k8s.io` (kubectl 1.30+) and `v4.channel.k8s.io`
//! (the official Python client, older kubectl), preferred in that order. Each
//! binary message starts with its channel: 0 stdin (client → agent),
//! 1 stdout, 2 stderr, 3 the final `Status` (Success, or Failure with reason
//! `NonZeroExitCode` and an `ExitCode` cause), 4 terminal resize
//! (`{"Width":…,"Height":…}`); v5 adds 255, a close signal: `[255, 0]` means
//! stdin has ended. SPDY is not served: clients that try it after a failed
//! WebSocket upgrade get the same validation errors, or a 400 saying so.

use super::lookup;
use super::{status_response, AgentApi};
use crate::runtime::stream::{ExecSession, ExecStreamOptions};
use crate::runtime::ContainerState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The channel subprotocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What the query asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Streams requested.
    pub stdin: bool,
    /// Stdout requested.
    pub stdout: bool,
    /// Stderr requested.
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// From query pairs (`command` repeats).
    pub fn parse(q: &[(String, String)]) -> ExecOptions {
        let flag = |k: &str| {
            q.iter()
                .rev()
                .find(|(n, _)| n == k)
                .is_some_and(|(_, v)| v == "true" || v == "1")
        };
        ExecOptions {
            command: q
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// The `Status` sent on the error channel when the command has ended.
pub fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn bad_request(msg: &str) -> Response {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", msg)
}

/// `/exec/{namespace}/{pod}/{container}`.
pub async fn exec(
    State(api): State<Arc<AgentApi>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    serve(api, namespace, pod, None, container, q, ws).await
}

/// `/exec/{namespace}/{pod}/{uid}/{container}`.
pub async fn exec_with_uid(
    State(api): State<Arc<AgentApi>>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    serve(api, namespace, pod, Some(uid), container, q, ws).await
}

async fn serve(
    api: Arc<AgentApi>,
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: String,
    q: Vec<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let opts = ExecOptions::parse(&q);
    if opts.command.is_empty() {
        return bad_request("you must specify at least one command for the container");
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return bad_request("you must specify at least one of stdin, stdout, stderr");
    }
    let Some(p) = lookup::find_pod(&api.data_dir, &namespace, &pod, uid.as_deref()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {namespace}/{pod} is not known on this node"),
        );
    };
    let Some(c) = p.latest(&container) else {
        return bad_request(&format!("container not found (\"{container}\")"));
    };
    let id = c.id.clone();
    match api.runtime.state(&id, &p.bundle(c)).await {
        ContainerState::Running(_) => {}
        _ => {
            return bad_request(&format!(
                "container {container} is not running in pod {namespace}/{pod}"
            ))
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return bad_request(
                "the node agent serves exec over WebSocket only (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported",
            )
        }
    };
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    if !PROTOCOLS.iter().any(|p| offered.iter().any(|o| o == p)) {
        return bad_request(&format!(
            "none of the requested subprotocols ({}) is supported; the agent speaks {}",
            offered.join(", "),
            PROTOCOLS.join(", ")
        ));
    }
    ws.protocols(PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let v5 = socket.protocol().and_then(|p| p.to_str().ok()) == Some(PROTOCOLS[0]);
            run_session(api, socket, id, opts, v5).await;
        })
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = Vec::with_capacity(data.len() + 1);
    b.push(channel);
    b.extend_from_slice(data);
    Message::Binary(b.into())
}

/// Copy a stream into channel messages until it ends.
async fn pump(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    channel: u8,
    tx: tokio::sync::mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run_session(
    api: Arc<AgentApi>,
    socket: WebSocket,
    id: String,
    opts: ExecOptions,
    v5: bool,
) {
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal-closure code: clients treat a close without one as an error.
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    let started = api
        .runtime
        .exec_stream(
            &id,
            &opts.command,
            ExecStreamOptions {
                stdin: opts.stdin,
                tty: opts.tty,
            },
        )
        .await;
    let session: ExecSession = match started {
        Ok(s) => s,
        Err(e) => {
            let status = json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("failed to exec in container: {e}"),
                "reason": "InternalError",
            });
            let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    // Tell the client the streams are open: an empty message on the lowest
    // channel it reads, as Kubernetes' exec server does.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        wait,
        kill,
    } = session;
    let mut pumps = Vec::new();
    // Unrequested output is still drained, so the process never blocks on it.
    for (stream, channel, wanted) in [(stdout, STDOUT, opts.stdout), (stderr, STDERR, opts.stderr)]
    {
        if let Some(s) = stream {
            let tx = if wanted {
                tx.clone()
            } else {
                let (t, mut r) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move { while r.recv().await.is_some() {} });
                t
            };
            pumps.push(tokio::spawn(pump(s, channel, tx)));
        }
    }
    let finished = async move {
        let code = wait.await;
        // Output is complete once every holder of the pipes has closed them;
        // do not hang on a stray background process.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(pumps)).await;
        code
    };
    tokio::pin!(finished);
    let mut stdin = stdin;
    let ended = loop {
        tokio::select! {
            code = &mut finished => break Some(code),
            msg = incoming.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    STDIN => {
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(&b[1..]).await.is_err() || w.flush().await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    RESIZE => {
                        if let (Some(r), Ok(size)) = (&resize, serde_json::from_slice::<serde_json::Value>(&b[1..])) {
                            let dim = |k: &str| size[k].as_u64().unwrap_or(0).min(u16::MAX as u64) as u16;
                            r(dim("Width"), dim("Height"));
                        }
                    }
                    CLOSE if v5 && b.get(1) == Some(&STDIN) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            }
        }
    };
    drop(stdin);
    match ended {
        Some(Ok(code)) => {
            let status = exit_status(&opts.command, code);
            let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
        }
        Some(Err(e)) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": "InternalError"});
            let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
        }
        None => {
            // The client went away: the process should not outlive the session.
            kill();
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_exit_status() {
        let q: Vec<(String, String)> = [
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi"),
            ("stdout", "true"),
            ("stdin", "1"),
            ("tty", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = ExecOptions::parse(&q);
        assert_eq!(o.command, vec!["sh", "-c", "echo hi"]);
        assert!(o.stdout && o.stdin && !o.stderr && !o.tty);
        assert_eq!(exit_status(&o.command, 0)["status"], "Success");
        let s = exit_status(&o.command, 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
