//! What a plugin instance can reach: the `log` import, and WASI preview 2 with
//! nothing granted (no preopened directories, no environment, no arguments, no
//! sockets, no stdin). Its stdout and stderr become host log lines tagged with
//! the plugin's name. Also the per-store resource limiter.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::log::{self, Level};
use super::bindings::types;
use super::runtime::Limits;

/// A log line longer than this is cut, so one plugin cannot flood the log with
/// a single huge message.
const MAX_LINE: usize = 16 * 1024;

/// Stderr lines kept per instance to explain a trap.
const RECENT_LINES: usize = 4;

/// The data of one plugin instance's `Store`.
pub(crate) struct HostState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// The same stream the guest's stderr writes to, to quote it in errors.
    stderr: LogStream,
    pub(crate) limiter: Limiter,
    /// When the current async call started (see `instance`'s epoch callback).
    pub(crate) started: Instant,
    /// When the current async call must stop.
    pub(crate) deadline: Instant,
}

impl HostState {
    /// A fresh sandbox for one instance of `plugin`.
    pub(crate) fn new(plugin: Arc<str>, limits: &Limits) -> HostState {
        let stderr = LogStream::new(plugin.clone(), Stream::Stderr);
        let mut wasi = WasiCtx::builder();
        // The builder grants nothing by default (no preopens, env, args or
        // stdin); networking is denied explicitly so a later default change in
        // wasmtime-wasi cannot open it up.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .stdout(LogStream::new(plugin.clone(), Stream::Stdout))
            .stderr(stderr.clone());
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            stderr,
            limiter: Limiter::new(limits),
            started: Instant::now(),
            deadline: Instant::now(),
            plugin,
        }
    }

    /// Forgets what the previous call left behind (limit hits, stderr lines).
    pub(crate) fn begin_call(&mut self) {
        self.limiter.exceeded = None;
        self.stderr.lock().recent.clear();
    }

    /// The last lines the guest wrote to stderr during this call. A Rust
    /// guest's panic message arrives this way just before its trap.
    pub(crate) fn recent_stderr(&self) -> String {
        let mut lines = self.stderr.lock();
        lines.flush_partial();
        Vec::from(std::mem::take(&mut lines.recent)).join(" / ")
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: Level, message: String) {
        let message = clip(&message);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl types::Host for HostState {}

/// `message` cut to `MAX_LINE` bytes on a character boundary.
fn clip(message: &str) -> &str {
    clip_to(message, MAX_LINE)
}

/// `message` cut to at most `max` bytes on a character boundary.
fn clip_to(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Store limits plus a record of whether one of *our* limits refused a growth,
/// so a failure that follows can be reported as a resource limit rather than as
/// the plain trap (often `unreachable` from the guest's allocator) it shows up as.
pub(crate) struct Limiter {
    inner: StoreLimits,
    memory_limit: usize,
    table_limit: usize,
    memory_total: usize,
    table_total: usize,
    /// What was refused during the current call, if anything.
    pub(crate) exceeded: Option<String>,
}

impl Limiter {
    fn new(limits: &Limits) -> Limiter {
        Limiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(limits.table_elements)
                .instances(limits.instances)
                .tables(limits.tables)
                .memories(limits.memories)
                .build(),
            memory_limit: limits.memory_bytes,
            table_limit: limits.table_elements,
            memory_total: 0,
            table_total: 0,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // StoreLimits bounds each memory; a component may have several, so the
        // budget is also enforced on their sum (memories never shrink).
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_limit {
            self.exceeded = Some(format!(
                "memory: growing to {total} bytes would exceed the limit of {} bytes",
                self.memory_limit
            ));
            return Ok(false);
        }
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_total = total;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Same as memory: the budget covers all tables together.
        let total = self
            .table_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.table_limit {
            self.exceeded = Some(format!(
                "tables: growing to {total} elements would exceed the limit of {}",
                self.table_limit
            ));
            return Ok(false);
        }
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        if allowed {
            self.table_total = total;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Which standard stream a `LogStream` captures.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A plugin's stdout or stderr: bytes are split into lines, and each line is
/// one log event (stdout at info, stderr at warn) tagged with the plugin name.
#[derive(Clone)]
struct LogStream {
    lines: Arc<Mutex<LineBuffer>>,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: Stream) -> LogStream {
        LogStream {
            lines: Arc::new(Mutex::new(LineBuffer {
                plugin,
                stream,
                partial: Vec::new(),
                recent: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LineBuffer> {
        // A poisoned lock only means another write panicked mid-way; the
        // buffer is still a valid byte vector, so keep logging.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        self.lock().push(bytes);
    }
}

/// Bytes not yet ended by a newline.
struct LineBuffer {
    plugin: Arc<str>,
    stream: Stream,
    partial: Vec<u8>,
    /// The last few lines, kept to explain a trap.
    recent: VecDeque<String>,
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..pos]);
            self.emit();
            bytes = &bytes[pos + 1..];
        }
        self.partial.extend_from_slice(bytes);
        // A line without an end is still logged once it is long enough.
        if self.partial.len() >= MAX_LINE {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.partial);
        let line = clip(line.trim_end_matches('\r'));
        let plugin = &*self.plugin;
        match self.stream {
            Stream::Stdout => tracing::info!(plugin, stream = "stdout", "{line}"),
            Stream::Stderr => {
                tracing::warn!(plugin, stream = "stderr", "{line}");
                // Rust's panic output starts with a blank line; keep only text.
                if !line.trim().is_empty() {
                    if self.recent.len() == RECENT_LINES {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(clip_to(line, 512).to_string());
                }
            }
        }
        self.partial.clear();
    }

    /// Logs a line the guest has not ended yet (it may never, if it trapped).
    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        // The instance is gone: whatever it printed without a newline still counts.
        self.flush_partial();
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Writes complete at once; this only bounds how much one write hands us.
        Ok(MAX_LINE)
    }
}

// The stream is always ready: writes complete at once.
#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span;

    /// Records events as "field=value " text.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    struct Line(String);

    impl Visit for Line {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push_str(&format!("{}={value} ", field.name()));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0.trim_end().to_string());
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    // The guest's stdout is this stream: what it writes, however split into
    // writes, comes out as one log event per line, tagged with the plugin.
    #[test]
    fn stdout_becomes_one_log_event_per_line() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let stream = LogStream::new("demo".into(), Stream::Stdout);
            let mut out = stream.p2_stream();
            out.write(Bytes::from_static(b"hello\nwor")).unwrap();
            out.write(Bytes::from_static(b"ld\r\n\n")).unwrap();
            out.write(Bytes::from_static(b"no newline")).unwrap();
            drop(out);
            // The last handle going away logs the unfinished line.
            drop(stream);
        });
        let lines = capture.0.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "message=hello plugin=demo stream=stdout",
                "message=world plugin=demo stream=stdout",
                "message= plugin=demo stream=stdout",
                "message=no newline plugin=demo stream=stdout",
            ]
        );
    }

    #[test]
    fn an_endless_line_is_cut_into_bounded_events() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let stream = LogStream::new("demo".into(), Stream::Stderr);
            let mut out = stream.p2_stream();
            for _ in 0..5 {
                out.write(Bytes::from(vec![b'x'; MAX_LINE / 2])).unwrap();
            }
        });
        let lines = capture.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 3, "two full lines and the rest at drop");
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 64));
    }

    #[test]
    fn stderr_keeps_the_last_lines_to_explain_a_trap() {
        let mut state = HostState::new("demo".into(), &Limits::default());
        let mut err = state.stderr.p2_stream();
        err.write(Bytes::from_static(b"\nthread panicked at x.rs:1:1:\n"))
            .unwrap();
        err.write(Bytes::from_static(b"boom")).unwrap();
        assert_eq!(state.recent_stderr(), "thread panicked at x.rs:1:1: / boom");
        state.begin_call();
        assert_eq!(state.recent_stderr(), "");
    }

    #[test]
    fn memory_budget_covers_all_memories_together() {
        let limits = Limits {
            memory_bytes: 100,
            ..Limits::default()
        };
        let mut limiter = Limiter::new(&limits);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.exceeded.is_none());
        // A second memory may not take the total past the budget...
        assert!(!limiter.memory_growing(0, 50, None).unwrap());
        assert!(limiter
            .exceeded
            .take()
            .unwrap()
            .contains("limit of 100 bytes"));
        // ...but may use what is left, and the first may grow into the rest.
        assert!(limiter.memory_growing(0, 30, None).unwrap());
        assert!(limiter.memory_growing(60, 70, None).unwrap());
        assert!(!limiter.memory_growing(70, 71, None).unwrap());
    }
}
