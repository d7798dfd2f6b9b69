//! Watch: a chunked stream of newline-delimited watch events, resumed from a
//! resourceVersion, filtered by selectors, with bookmarks and Table rendering.

use super::error::{ApiError, ApiResult};
use super::handlers::{Format, Query, Selectors, Target};
use super::object;
use super::table;
use super::AppState;
use crate::store::{Event, EventKind, Revision};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{header, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

struct Render {
    kind: &'static str,
    api_version: String,
    format: Format,
}

impl Render {
    fn event(&self, ty: &str, obj: Value) -> Bytes {
        let object = match self.format {
            Format::Json => obj,
            Format::Table(inc) => {
                let rv = object::meta_str(&obj, "resourceVersion")
                    .unwrap_or("")
                    .to_string();
                table::table(
                    self.kind,
                    &self.api_version,
                    &[obj],
                    inc,
                    json!({"resourceVersion": rv}),
                    chrono::Utc::now(),
                )
            }
        };
        line(&json!({"type": ty, "object": object}))
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"kind": self.kind, "apiVersion": self.api_version, "metadata": meta}}),
        )
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("a Value always serializes");
    b.push(b'\n');
    Bytes::from(b)
}

fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.status()}))
}

fn streaming(
    first: Vec<Bytes>,
    rest: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let s = futures::stream::iter(first)
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(s),
    )
        .into_response()
}

/// Turn one store event into a watch event for this watcher, if any.
fn translate(e: &Event, sel: &Selectors, render: &Render) -> Option<Bytes> {
    // The previous value matters for deletes and for selector transitions
    // only; an unfiltered watch of updates need not parse it.
    let everything = sel.label.is_empty() && sel.field.is_empty();
    let prev = match e.kind {
        EventKind::Put if everything => None,
        _ => e
            .prev
            .as_ref()
            .and_then(|p| object::from_bytes(p, e.revision).ok()),
    };
    match e.kind {
        EventKind::Delete => {
            let obj = prev?;
            sel.matches(&obj).then(|| render.event("DELETED", obj))
        }
        EventKind::Put => {
            let obj = object::from_bytes(e.value.as_ref()?, e.revision).ok()?;
            let now = sel.matches(&obj);
            let before = match &prev {
                _ if everything => e.create_revision != e.revision,
                Some(p) => sel.matches(p),
                // An update whose previous value was compacted out of the
                // change log: assume it matched as it matches now.
                None if e.create_revision != e.revision => now,
                None => false,
            };
            match (before, now) {
                (true, true) => Some(render.event("MODIFIED", obj)),
                (false, true) => Some(render.event("ADDED", obj)),
                (true, false) => Some(render.event("DELETED", obj)),
                (false, false) => None,
            }
        }
    }
}

/// Serve a watch request.
pub async fn serve(
    state: &AppState,
    t: &Target,
    query: &Query,
    format: Format,
) -> ApiResult<Response> {
    let sel = Selectors::from_query(t.info, query)?;
    let ns = t
        .namespace
        .as_deref()
        .or_else(|| sel.field.exact("metadata.namespace"));
    let prefix = t.info.prefix(ns);
    let render = Render {
        kind: t.info.kind,
        api_version: t.info.api_version(),
        format,
    };
    let bookmarks = matches!(
        query.get("allowWatchBookmarks").map(String::as_str),
        Some("true") | Some("1")
    );
    let send_initial = matches!(
        query.get("sendInitialEvents").map(String::as_str),
        Some("true") | Some("1")
    );
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(state.config.default_watch_timeout);
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let mut first = Vec::new();
    // "" or "0" (or sendInitialEvents): start with the current state as ADDED events.
    let after = if rv.is_empty() || rv == "0" || send_initial {
        let list = state.store.list(&prefix, None, 0, None)?;
        for kv in &list.items {
            let obj = object::from_store(kv)?;
            if sel.matches(&obj) {
                first.push(render.event("ADDED", obj));
            }
        }
        if send_initial && bookmarks {
            first.push(render.bookmark(list.revision, true));
        }
        list.revision
    } else {
        object::parse_rv(rv)?
    };
    let store_stream = match state.store.watch(&prefix, after) {
        Ok(s) => s,
        Err(e) => {
            // Kubernetes answers an expired watch with 200 and one ERROR event.
            let err: ApiError = e.into();
            return Ok(streaming(vec![error_event(&err)], futures::stream::empty()));
        }
    };
    let metrics = state.metrics.clone();
    metrics.watchers_add(1);
    let guard = WatchGuard(metrics);
    let interval = state.config.bookmark_interval;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let _guard = guard;
        let mut store_stream = store_stream;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut last = after;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(render.bookmark(last, false)).await.is_err() { return; }
                }
                batch = store_stream.next() => {
                    match batch {
                        None => return,
                        Some(Err(e)) => {
                            let err: ApiError = e.into();
                            let _ = tx.send(error_event(&err)).await;
                            return;
                        }
                        Some(Ok(events)) => {
                            for e in &events {
                                last = last.max(e.revision);
                                if let Some(b) = translate(e, &sel, &render) {
                                    if tx.send(b).await.is_err() { return; }
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(streaming(
        first,
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

struct WatchGuard(std::sync::Arc<crate::metrics::Metrics>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watchers_add(-1);
    }
}
