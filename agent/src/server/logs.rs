//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log as
//! plain text, from the CRI log files the shim writes (`crate::logs`).
//!
//! Query parameters as in `PodLogOptions`: `follow`, `previous`,
//! `timestamps`, `tailLines`, `sinceSeconds`, `sinceTime`, `limitBytes`; plus
//! `podUID`, which the host adds to pick the right instance of a pod name.
//! Following tails the file (looking for growth every 100 ms, as a reader of
//! a plain file must without inotify) until that container attempt has ended
//! (the shim's `exit.json` exists, and is written only after the log is
//! flushed), a newer attempt has started, or the pod is gone.

use super::lookup::{self, PodOnDisk};
use super::{status_response, AgentApi};
use crate::logs::{self, LogRecord};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a followed log is checked for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Parsed `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming as the container writes.
    pub follow: bool,
    /// The previous attempt's log.
    pub previous: bool,
    /// Prefix each record with its RFC 3339 time.
    pub timestamps: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true") | Some("1"))
}

impl LogOptions {
    /// Parse the query; a bad value gives the message for a 400.
    pub fn parse(q: &HashMap<String, String>) -> Result<LogOptions, String> {
        let int = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k}: invalid value {v:?}: must be an integer"))
                })
                .transpose()
        };
        let mut o = LogOptions {
            follow: truthy(q.get("follow")),
            previous: truthy(q.get("previous")),
            timestamps: truthy(q.get("timestamps")),
            ..LogOptions::default()
        };
        if let Some(n) = int("tailLines")? {
            if n >= 0 {
                o.tail_lines = Some(n as usize);
            }
        }
        if let Some(n) = int("limitBytes")? {
            if n < 1 {
                return Err("limitBytes: must be greater than 0".into());
            }
            o.limit_bytes = Some(n as u64);
        }
        if let Some(n) = int("sinceSeconds")? {
            if n < 1 {
                return Err("sinceSeconds: must be greater than 0".into());
            }
            let since = Timestamp::now()
                .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(n))
                .map_err(|e| format!("sinceSeconds: {e}"))?;
            o.since = Some(since);
        }
        if let Some(t) = q.get("sinceTime") {
            if o.since.is_some() {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into());
            }
            o.since = Some(
                t.parse()
                    .map_err(|e| format!("sinceTime: invalid time {t:?}: {e}"))?,
            );
        }
        Ok(o)
    }
}

/// Renders records to text per the options, tracking the byte limit.
struct Renderer {
    opts: LogOptions,
    written: u64,
}

impl Renderer {
    /// Append one record's text; false once the byte limit is reached.
    fn push(&mut self, r: &LogRecord, out: &mut Vec<u8>) -> bool {
        if let Some(since) = self.opts.since {
            if r.time.parse::<Timestamp>().is_ok_and(|t| t < since) {
                return true;
            }
        }
        let start = out.len();
        if self.opts.timestamps {
            out.extend_from_slice(r.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.text.as_bytes());
        if !r.partial {
            out.push(b'\n');
        }
        let n = (out.len() - start) as u64;
        if let Some(limit) = self.opts.limit_bytes {
            if self.written + n >= limit {
                out.truncate(start + (limit - self.written) as usize);
                self.written = limit;
                return false;
            }
        }
        self.written += n;
        true
    }
}

/// The records of the complete lines in `text`, keeping only the last
/// `tail` lines (a line is records up to one that is not partial).
fn records(text: &str, tail: Option<usize>) -> Vec<LogRecord> {
    let recs: Vec<LogRecord> = text.lines().filter_map(logs::parse_record).collect();
    let Some(tail) = tail else { return recs };
    let mut lines = 0;
    let mut from = recs.len();
    for (i, r) in recs.iter().enumerate().rev() {
        if !r.partial {
            if lines == tail {
                break;
            }
            lines += 1;
        }
        from = i;
    }
    if tail == 0 {
        return Vec::new();
    }
    recs[from..].to_vec()
}

fn bad_request(msg: &str) -> Response {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", msg)
}

/// The handler.
pub async fn container_logs(
    State(api): State<Arc<AgentApi>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let opts = match LogOptions::parse(&q) {
        Ok(o) => o,
        Err(m) => return bad_request(&m),
    };
    let uid = q
        .get("podUID")
        .map(String::as_str)
        .filter(|u| !u.is_empty());
    let Some(p) = lookup::find_pod(&api.data_dir, &namespace, &pod, uid) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod {namespace}/{pod} is not known on this node"),
        );
    };
    let dir = logs::pod_log_dir(&api.data_dir, &namespace, &pod, &p.record.uid);
    let attempts = logs::attempts(&dir, &container);
    let attempt = if opts.previous {
        match attempts.iter().rev().nth(1) {
            Some(a) => *a,
            None => {
                return bad_request(&format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ))
            }
        }
    } else {
        match attempts.last() {
            Some(a) => *a,
            None => {
                return bad_request(&format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            ))
            }
        }
    };
    let path = logs::container_log_path(&dir, &container, attempt);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("reading the log of container {container}: {e}"),
            )
        }
    };
    let mut text = String::new();
    if let Err(e) = file.read_to_string(&mut text) {
        return status_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("reading the log of container {container}: {e}"),
        );
    }
    // Only complete records now; a trailing half-written one is read again when following.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    let mut render = Renderer {
        opts: opts.clone(),
        written: 0,
    };
    let mut first = Vec::new();
    let mut open = true;
    for r in records(&text[..complete], opts.tail_lines) {
        if !render.push(&r, &mut first) {
            open = false;
            break;
        }
    }
    let headers = [(http::header::CONTENT_TYPE, "text/plain")];
    if !opts.follow || opts.previous || !open {
        return (headers, first).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let follow = Follow {
        file,
        offset: complete as u64,
        path,
        pod: p,
        container,
        attempt,
        dir,
        data_dir: api.data_dir.clone(),
        render,
    };
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        follow.run(tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    (headers, Body::from_stream(stream)).into_response()
}

/// A log being followed.
struct Follow {
    file: std::fs::File,
    offset: u64,
    path: PathBuf,
    pod: PodOnDisk,
    container: String,
    attempt: u32,
    dir: PathBuf,
    data_dir: PathBuf,
    render: Renderer,
}

impl Follow {
    /// Whether this attempt is over (ended, replaced, or the pod gone).
    fn finished(&self) -> bool {
        if !self.pod.dir.exists() || !self.path.exists() {
            return true;
        }
        if logs::attempts(&self.dir, &self.container)
            .last()
            .is_some_and(|a| *a > self.attempt)
        {
            return true;
        }
        // Its record may be written just after the log file appears: look again.
        let pod = lookup::find_pod(
            &self.data_dir,
            &self.pod.record.namespace,
            &self.pod.record.name,
            Some(&self.pod.record.uid),
        );
        let pod = pod.as_ref().unwrap_or(&self.pod);
        pod.attempt(&self.container, self.attempt)
            .is_some_and(|c| pod.bundle(c).join("exit.json").exists())
    }

    /// New complete records since the last read.
    fn read_new(&mut self, carry: &mut Vec<u8>) -> std::io::Result<Vec<LogRecord>> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        carry.extend_from_slice(&buf);
        let Some(end) = carry.iter().rposition(|b| *b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = carry.drain(..=end).collect();
        Ok(String::from_utf8_lossy(&complete)
            .lines()
            .filter_map(logs::parse_record)
            .collect())
    }

    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Bytes>) {
        let mut carry = Vec::new();
        loop {
            // Check for the end before reading, so what was written before
            // the end is still sent.
            let done = self.finished();
            let recs = match self.read_new(&mut carry) {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut out = Vec::new();
            let mut open = true;
            for r in &recs {
                if !self.render.push(r, &mut out) {
                    open = false;
                    break;
                }
            }
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if done || !open {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: &str, text: &str, partial: bool) -> String {
        String::from_utf8(logs::format_record(
            time,
            "stdout",
            partial,
            text.as_bytes(),
        ))
        .unwrap()
    }

    #[test]
    fn tail_counts_whole_lines() {
        let text = [
            rec("2024-01-01T00:00:00Z", "one", false),
            rec("2024-01-01T00:00:01Z", "tw", true),
            rec("2024-01-01T00:00:01Z", "o", false),
            rec("2024-01-01T00:00:02Z", "three", false),
        ]
        .concat();
        let texts = |t: Option<usize>| -> Vec<String> {
            records(&text, t).into_iter().map(|r| r.text).collect()
        };
        assert_eq!(texts(None).len(), 4);
        assert_eq!(texts(Some(1)), vec!["three"]);
        assert_eq!(texts(Some(2)), vec!["tw", "o", "three"]);
        assert!(texts(Some(0)).is_empty());
        assert_eq!(texts(Some(10)).len(), 4);
    }

    #[test]
    fn options_parse_and_render_with_limits() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(LogOptions::parse(&q(&[("tailLines", "x")])).is_err());
        assert!(LogOptions::parse(&q(&[("limitBytes", "0")])).is_err());
        assert!(LogOptions::parse(&q(&[
            ("sinceSeconds", "5"),
            ("sinceTime", "2024-01-01T00:00:00Z")
        ]))
        .is_err());
        let o = LogOptions::parse(&q(&[
            ("timestamps", "true"),
            ("limitBytes", "30"),
            ("sinceTime", "2024-01-01T00:00:01Z"),
        ]))
        .unwrap();
        let mut r = Renderer {
            opts: o,
            written: 0,
        };
        let mut out = Vec::new();
        let rec = |t: &str, s: &str| LogRecord {
            time: t.into(),
            stream: "stdout".into(),
            partial: false,
            text: s.into(),
        };
        assert!(r.push(&rec("2024-01-01T00:00:00Z", "old"), &mut out));
        assert!(out.is_empty(), "before sinceTime");
        assert!(!r.push(
            &rec("2024-01-01T00:00:02Z", "a long line of text"),
            &mut out
        ));
        assert_eq!(out, b"2024-01-01T00:00:02Z a long li");
    }
}
