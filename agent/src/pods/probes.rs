//! Container probes (kubelet's prober): exec, httpGet and tcpSocket checks
//! run as liveness, readiness and startup probes.
//!
//! Each running container that has probes gets one task. It runs the startup
//! probe (if any) until it succeeds, then liveness and readiness side by side,
//! each on its own period after `initialDelaySeconds` from the container's
//! start. Results pass through kubelet's thresholds ([`Tracker`]): a result
//! only changes after `successThreshold` successes or `failureThreshold`
//! failures in a row. Readiness changes flip the container's `ready` flag
//! (and so the pod's `ContainersReady`/`Ready` conditions); a liveness or
//! startup probe that fails tells the pod worker, which kills the container
//! and lets its restart policy decide what happens next. Probe errors that are
//! not the container's fault (the runtime could not run the check) are
//! dropped, like kubelet's `Unknown` results.
//!
//! The checks themselves sit behind [`Prober`], so the timing and thresholds
//! are unit-tested with a scripted prober; [`RuntimeProber`] is the real one:
//! exec through [`ContainerRuntime::exec_capture`], TCP connections made from
//! inside the pod's network namespace (to the pod IP when it has one, else to
//! 127.0.0.1) by [`crate::netns::connect_tcp_in_netns`].

use crate::netns::connect_tcp_in_netns;
use crate::runtime::ContainerRuntime;
use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restart the container when it fails.
    Liveness,
    /// Gate the container's `ready` flag.
    Readiness,
    /// Hold off liveness and readiness until it succeeds; restart on failure.
    Startup,
}

impl ProbeKind {
    /// As kubelet writes it in events ("Liveness probe failed: ...").
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command in the container; exit code 0 is success.
    Exec(Vec<String>),
    /// HTTP GET; a status from 200 to 399 is success.
    HttpGet {
        /// Host to connect to instead of the pod (from the node, as kubelet does).
        host: Option<String>,
        /// TCP port.
        port: u16,
        /// Request path.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens is success.
    TcpSocket {
        /// Host to connect to instead of the pod.
        host: Option<String>,
        /// TCP port.
        port: u16,
    },
    /// A probe this agent cannot run (HTTPS, gRPC, an unknown port name): it always fails with this message.
    Invalid(String),
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The check.
    pub action: Action,
    /// Delay after the container starts before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Successes in a row that make a failed probe pass.
    pub success_threshold: u32,
    /// Failures in a row that make a passing probe fail.
    pub failure_threshold: u32,
    /// Grace period for a kill after this probe fails (probe-level override).
    pub termination_grace: Option<Duration>,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

/// Resolve a probe port: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {s:?} is not a named port of container {}", c.name))
        }
    }
}

impl ProbeSpec {
    /// From the pod spec's probe of container `c`. Liveness and startup
    /// probes always use a success threshold of 1, as the API requires.
    pub fn from_probe(p: &Probe, c: &Container, kind: ProbeKind) -> ProbeSpec {
        let action = if let Some(e) = &p.exec {
            Action::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(h) = &p.http_get {
            let scheme = h.scheme.as_deref().unwrap_or("HTTP");
            if !scheme.eq_ignore_ascii_case("HTTP") {
                Action::Invalid(format!("scheme {scheme} is not supported by this node"))
            } else {
                match resolve_port(&h.port, c) {
                    Ok(port) => Action::HttpGet {
                        host: h.host.clone().filter(|h| !h.is_empty()),
                        port,
                        path: match h.path.as_deref() {
                            None | Some("") => "/".into(),
                            Some(p) if p.starts_with('/') => p.into(),
                            Some(p) => format!("/{p}"),
                        },
                        headers: h
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect(),
                    },
                    Err(e) => Action::Invalid(e),
                }
            }
        } else if let Some(t) = &p.tcp_socket {
            match resolve_port(&t.port, c) {
                Ok(port) => Action::TcpSocket {
                    host: t.host.clone().filter(|h| !h.is_empty()),
                    port,
                },
                Err(e) => Action::Invalid(e),
            }
        } else if p.grpc.is_some() {
            Action::Invalid("gRPC probes are not supported by this node".into())
        } else {
            Action::Invalid("probe has no handler".into())
        };
        let success_threshold = match kind {
            ProbeKind::Readiness => p.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        };
        ProbeSpec {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
            termination_grace: p
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
        }
    }
}

/// The probes a container declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    /// startupProbe.
    pub startup: Option<ProbeSpec>,
    /// livenessProbe.
    pub liveness: Option<ProbeSpec>,
    /// readinessProbe.
    pub readiness: Option<ProbeSpec>,
}

impl ContainerProbes {
    /// The probes of container `c`.
    pub fn of(c: &Container) -> ContainerProbes {
        let p = |probe: &Option<Probe>, kind| {
            probe
                .as_ref()
                .map(|probe| ProbeSpec::from_probe(probe, c, kind))
        };
        ContainerProbes {
            startup: p(&c.startup_probe, ProbeKind::Startup),
            liveness: p(&c.liveness_probe, ProbeKind::Liveness),
            readiness: p(&c.readiness_probe, ProbeKind::Readiness),
        }
    }

    /// Whether there is anything to run.
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Success,
    /// The check failed; why (shown in events and logs).
    Failure(String),
    /// The check could not be run (not counted, like kubelet's `Unknown`).
    Error(String),
}

/// Where a container's checks go.
#[derive(Debug, Clone)]
pub struct Target {
    /// runc container id (for exec).
    pub container_id: String,
    /// The pod's network namespace (`/proc/<sandbox pid>/ns/net`).
    pub netns: PathBuf,
    /// The pod's IP, once pod networking has given it one.
    pub pod_ip: Arc<Mutex<Option<IpAddr>>>,
}

impl Target {
    fn ip(&self) -> IpAddr {
        self.pod_ip
            .lock()
            .expect("pod ip lock")
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

/// Runs one check.
pub trait Prober: Send + Sync {
    /// Run `action` against `target`, taking at most `timeout`.
    fn check<'a>(
        &'a self,
        target: &'a Target,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Outcome>;
}

/// Kubelet's threshold logic for one probe: the result changes only after
/// enough equal outcomes in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    /// The current result.
    pub result: bool,
    last: Option<bool>,
    run: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Tracker {
    /// A tracker starting at `initial`.
    pub fn new(initial: bool, spec: &ProbeSpec) -> Tracker {
        Tracker {
            result: initial,
            last: None,
            run: 0,
            success_threshold: spec.success_threshold.max(1),
            failure_threshold: spec.failure_threshold.max(1),
        }
    }

    /// Feed one check's outcome (true = passed); returns whether the result changed.
    pub fn observe(&mut self, passed: bool) -> bool {
        if self.last == Some(passed) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(passed);
            self.run = 1;
        }
        let needed = if passed {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < needed || self.result == passed {
            return false;
        }
        self.result = passed;
        true
    }
}

/// What a container's probe task reports to the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// `ready` or `started` of container `id` changed: report status again.
    Changed {
        /// runc container id.
        id: String,
    },
    /// A liveness or startup probe of container `id` failed: kill it.
    Failed {
        /// runc container id.
        id: String,
        /// Which probe.
        kind: ProbeKind,
        /// The last check's failure.
        message: String,
        /// Probe-level grace period override for the kill.
        grace: Option<Duration>,
    },
}

/// The probe-derived flags of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// The startup probe has passed (or there is none).
    pub started: bool,
    /// The readiness probe passes (or there is none) and the container has started.
    pub ready: bool,
}

/// Run `spec` until its result first equals `until` after thresholds
/// (returning the last failure message), calling `on_change` on changes.
async fn probe_loop(
    prober: &dyn Prober,
    target: &Target,
    spec: &ProbeSpec,
    start: Instant,
    initial: bool,
    mut on_change: impl FnMut(bool),
    stop_when: Option<bool>,
) -> String {
    let mut tracker = Tracker::new(initial, spec);
    let mut next = start + spec.initial_delay;
    let mut message = String::new();
    loop {
        tokio::time::sleep_until(next).await;
        let passed = match prober.check(target, &spec.action, spec.timeout).await {
            Outcome::Success => Some(true),
            Outcome::Failure(m) => {
                message = m;
                Some(false)
            }
            Outcome::Error(m) => {
                tracing::debug!(container = %target.container_id, error = %m, "probe error");
                None
            }
        };
        if let Some(passed) = passed {
            if !passed {
                tracing::debug!(container = %target.container_id, %message, "probe failed");
            }
            if tracker.observe(passed) {
                on_change(tracker.result);
                if stop_when == Some(tracker.result) {
                    return message;
                }
            }
        }
        // Like kubelet's ticker: the period counts from the previous tick, and
        // a slow check does not cause a burst of catch-up checks.
        next = (next + spec.period).max(Instant::now());
    }
}

/// Liveness and readiness of one container attempt (after any startup
/// probe passed), until the task is aborted or liveness fails.
async fn run_container(
    prober: Arc<dyn Prober>,
    target: Target,
    probes: ContainerProbes,
    start: Instant,
    flags: Arc<Mutex<Flags>>,
    tx: mpsc::UnboundedSender<ProbeEvent>,
) {
    let id = target.container_id.clone();
    let set = |f: &dyn Fn(&mut Flags)| {
        let mut g = flags.lock().expect("flags lock");
        let before = *g;
        f(&mut g);
        if *g != before {
            let _ = tx.send(ProbeEvent::Changed { id: id.clone() });
        }
    };
    let failed = |kind: ProbeKind, spec: &ProbeSpec, message: String| {
        let _ = tx.send(ProbeEvent::Failed {
            id: id.clone(),
            kind,
            message,
            grace: spec.termination_grace,
        });
    };
    let liveness = async {
        if let Some(spec) = &probes.liveness {
            let message =
                probe_loop(&*prober, &target, spec, start, true, |_| {}, Some(false)).await;
            failed(ProbeKind::Liveness, spec, message);
        } else {
            std::future::pending::<()>().await;
        }
    };
    let readiness = async {
        if let Some(spec) = &probes.readiness {
            probe_loop(
                &*prober,
                &target,
                spec,
                start,
                false,
                |r| set(&|f| f.ready = r),
                None,
            )
            .await;
        }
        std::future::pending::<()>().await;
    };
    // A failed liveness probe ends probing of this attempt (kubelet puts the
    // worker "on hold" until the container is replaced).
    tokio::select! {
        () = liveness => {}
        () = readiness => {}
    }
}

/// Startup probing that can fail: like [`probe_loop`] but stops at the first
/// change in either direction (a startup probe starts out failing, so only
/// reaching the failure threshold or passing ends it).
async fn run_startup(
    prober: &dyn Prober,
    target: &Target,
    spec: &ProbeSpec,
    start: Instant,
) -> Result<(), String> {
    let mut tracker = Tracker::new(false, spec);
    let mut failures = 0u32;
    let mut next = start + spec.initial_delay;
    loop {
        tokio::time::sleep_until(next).await;
        match prober.check(target, &spec.action, spec.timeout).await {
            Outcome::Success => {
                if tracker.observe(true) {
                    return Ok(());
                }
            }
            Outcome::Failure(m) => {
                tracker.observe(false);
                failures += 1;
                if failures >= spec.failure_threshold.max(1) {
                    return Err(m);
                }
            }
            Outcome::Error(m) => {
                tracing::debug!(container = %target.container_id, error = %m, "startup probe error");
            }
        }
        next = (next + spec.period).max(Instant::now());
    }
}

struct Running {
    task: JoinHandle<()>,
    flags: Arc<Mutex<Flags>>,
}

/// The probes of one pod's containers, owned by its worker.
pub struct PodProbes {
    prober: Arc<dyn Prober>,
    running: HashMap<String, Running>,
    tx: mpsc::UnboundedSender<ProbeEvent>,
    rx: mpsc::UnboundedReceiver<ProbeEvent>,
    pod_ip: Arc<Mutex<Option<IpAddr>>>,
}

impl PodProbes {
    /// No probes running yet.
    pub fn new(prober: Arc<dyn Prober>) -> PodProbes {
        let (tx, rx) = mpsc::unbounded_channel();
        PodProbes {
            prober,
            running: HashMap::new(),
            tx,
            rx,
            pod_ip: Arc::new(Mutex::new(None)),
        }
    }

    /// Set the pod IP checks connect to (None: 127.0.0.1 in the pod's namespace).
    pub fn set_pod_ip(&self, ip: Option<IpAddr>) {
        *self.pod_ip.lock().expect("pod ip lock") = ip;
    }

    /// Start probing container attempt `id` of `c` (once; no-op if it has no
    /// probes), which started `started_ago` ago in network namespace `netns`.
    pub fn ensure(&mut self, id: &str, c: &Container, netns: PathBuf, started_ago: Duration) {
        if self.running.contains_key(id) {
            return;
        }
        let probes = ContainerProbes::of(c);
        if probes.is_empty() {
            return;
        }
        let flags = Arc::new(Mutex::new(Flags {
            started: probes.startup.is_none(),
            ready: probes.startup.is_none() && probes.readiness.is_none(),
        }));
        let target = Target {
            container_id: id.to_string(),
            netns,
            pod_ip: self.pod_ip.clone(),
        };
        let start = Instant::now()
            .checked_sub(started_ago)
            .unwrap_or_else(Instant::now);
        let task = tokio::spawn(supervise(
            self.prober.clone(),
            target,
            probes,
            start,
            flags.clone(),
            self.tx.clone(),
        ));
        self.running.insert(id.to_string(), Running { task, flags });
    }

    /// Stop probing every container not in `keep`.
    pub fn retain(&mut self, keep: &[&str]) {
        self.running.retain(|id, r| {
            let k = keep.contains(&id.as_str());
            if !k {
                r.task.abort();
            }
            k
        });
    }

    /// The probe-derived flags of container `id` (None: it is not probed).
    pub fn flags(&self, id: &str) -> Option<Flags> {
        self.running
            .get(id)
            .map(|r| *r.flags.lock().expect("flags lock"))
    }

    /// The next event from any container's probes (pending while there are none).
    pub async fn next(&mut self) -> ProbeEvent {
        match self.rx.recv().await {
            Some(e) => e,
            // Unreachable while `self.tx` lives; never resolve.
            None => std::future::pending().await,
        }
    }
}

impl Drop for PodProbes {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// A container's probing: startup (if any) first, then liveness and readiness.
async fn supervise(
    prober: Arc<dyn Prober>,
    target: Target,
    probes: ContainerProbes,
    start: Instant,
    flags: Arc<Mutex<Flags>>,
    tx: mpsc::UnboundedSender<ProbeEvent>,
) {
    if let Some(spec) = &probes.startup {
        match run_startup(&*prober, &target, spec, start).await {
            Ok(()) => {
                let mut g = flags.lock().expect("flags lock");
                g.started = true;
                g.ready = probes.readiness.is_none();
                drop(g);
                let _ = tx.send(ProbeEvent::Changed {
                    id: target.container_id.clone(),
                });
            }
            Err(message) => {
                let _ = tx.send(ProbeEvent::Failed {
                    id: target.container_id.clone(),
                    kind: ProbeKind::Startup,
                    message,
                    grace: spec.termination_grace,
                });
                return;
            }
        }
    }
    let rest = ContainerProbes {
        startup: None,
        ..probes
    };
    run_container(prober, target, rest, start, flags, tx).await;
}

/// The real checks: exec through the runtime, TCP from the pod's network namespace.
pub struct RuntimeProber {
    runtime: Arc<dyn ContainerRuntime>,
}

impl RuntimeProber {
    /// Checks that exec through `runtime`.
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> RuntimeProber {
        RuntimeProber { runtime }
    }

    async fn connect(
        &self,
        target: &Target,
        host: &Option<String>,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        match host {
            // An explicit host is reached from the node, as kubelet does.
            Some(h) => {
                let c = tokio::net::TcpStream::connect((h.as_str(), port));
                match tokio::time::timeout(timeout, c).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )),
                }
            }
            None => {
                connect_tcp_in_netns(&target.netns, SocketAddr::new(target.ip(), port), timeout)
                    .await
            }
        }
    }

    async fn http_get(
        &self,
        target: &Target,
        host: &Option<String>,
        port: u16,
        path: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Outcome {
        let addr_host = host.clone().unwrap_or_else(|| match target.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        });
        let work = async {
            let stream = self
                .connect(target, host, port, timeout)
                .await
                .map_err(|e| format!("Get \"http://{addr_host}:{port}{path}\": {e}"))?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let mut req = http::Request::get(path);
            let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
            if !has("host") {
                req = req.header(http::header::HOST, format!("{addr_host}:{port}"));
            }
            if !has("user-agent") {
                req = req.header(http::header::USER_AGENT, "kube-probe/1.32");
            }
            if !has("accept") {
                req = req.header(http::header::ACCEPT, "*/*");
            }
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("Get \"http://{addr_host}:{port}{path}\": {e}"));
            conn.abort();
            let code = resp?.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(m)) => Outcome::Failure(m),
            Err(_) => Outcome::Failure(format!(
                "Get \"http://{addr_host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        }
    }
}

impl Prober for RuntimeProber {
    fn check<'a>(
        &'a self,
        target: &'a Target,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Outcome> {
        async move {
            match action {
                Action::Exec(argv) => {
                    if argv.is_empty() {
                        return Outcome::Failure("exec probe has no command".into());
                    }
                    match self
                        .runtime
                        .exec_capture(&target.container_id, argv, timeout)
                        .await
                    {
                        Ok(out) => match out.exit_code {
                            Some(0) => Outcome::Success,
                            Some(code) => {
                                let text = String::from_utf8_lossy(&out.output).trim().to_string();
                                Outcome::Failure(if text.is_empty() {
                                    format!("command {argv:?} exited with {code}")
                                } else {
                                    text
                                })
                            }
                            None => Outcome::Failure(format!(
                                "command {argv:?} timed out after {}s",
                                timeout.as_secs()
                            )),
                        },
                        Err(e) => Outcome::Error(e.to_string()),
                    }
                }
                Action::TcpSocket { host, port } => {
                    match self.connect(target, host, *port, timeout).await {
                        Ok(_) => Outcome::Success,
                        Err(e) => {
                            let h = host.clone().unwrap_or_else(|| target.ip().to_string());
                            Outcome::Failure(format!("dial tcp {h}:{port}: {e}"))
                        }
                    }
                }
                Action::HttpGet {
                    host,
                    port,
                    path,
                    headers,
                } => {
                    self.http_get(target, host, *port, path, headers, timeout)
                        .await
                }
                Action::Invalid(m) => Outcome::Failure(m.clone()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::VecDeque;

    /// Answers checks from a script (then repeats the last answer) and
    /// records when each check ran.
    struct Scripted {
        answers: Mutex<VecDeque<bool>>,
        last: Mutex<bool>,
        at: Mutex<Vec<(Action, Instant)>>,
    }

    impl Scripted {
        fn new(answers: &[bool]) -> Arc<Scripted> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.iter().copied().collect()),
                last: Mutex::new(*answers.last().unwrap_or(&true)),
                at: Mutex::new(Vec::new()),
            })
        }
        fn count(&self) -> usize {
            self.at.lock().unwrap().len()
        }
    }

    impl Prober for Scripted {
        fn check<'a>(
            &'a self,
            _t: &'a Target,
            a: &'a Action,
            _d: Duration,
        ) -> BoxFuture<'a, Outcome> {
            self.at.lock().unwrap().push((a.clone(), Instant::now()));
            let ok = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(*self.last.lock().unwrap());
            async move {
                if ok {
                    Outcome::Success
                } else {
                    Outcome::Failure("nope".into())
                }
            }
            .boxed()
        }
    }

    fn container(v: serde_json::Value) -> Container {
        let mut base = json!({"name": "app", "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080}]});
        json_patch::merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    fn spec(action: Action, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
            termination_grace: None,
        }
    }

    #[test]
    fn defaults_ports_and_handlers_follow_kubernetes() {
        let c = container(json!({
            "livenessProbe": {"httpGet": {"port": "http", "path": "healthz",
                "httpHeaders": [{"name": "X-A", "value": "1"}]}, "successThreshold": 5},
            "readinessProbe": {"tcpSocket": {"port": 81}, "successThreshold": 2,
                "initialDelaySeconds": 4, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 7},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/up"]}}
        }));
        let p = ContainerProbes::of(&c);
        let l = p.liveness.unwrap();
        assert_eq!(
            l.action,
            Action::HttpGet {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "1".into())]
            }
        );
        // Defaults: period 10 s, timeout 1 s, failure 3; liveness success is always 1.
        assert_eq!(
            (
                l.initial_delay,
                l.period,
                l.timeout,
                l.success_threshold,
                l.failure_threshold
            ),
            (
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::from_secs(1),
                1,
                3
            )
        );
        let r = p.readiness.unwrap();
        assert_eq!(
            r.action,
            Action::TcpSocket {
                host: None,
                port: 81
            }
        );
        assert_eq!(
            (
                r.initial_delay,
                r.period,
                r.timeout,
                r.success_threshold,
                r.failure_threshold
            ),
            (
                Duration::from_secs(4),
                Duration::from_secs(2),
                Duration::from_secs(3),
                2,
                7
            )
        );
        assert_eq!(
            p.startup.unwrap().action,
            Action::Exec(vec!["cat".into(), "/tmp/up".into()])
        );

        let bad = container(json!({"livenessProbe": {"tcpSocket": {"port": "nope"}},
            "readinessProbe": {"httpGet": {"port": 80, "scheme": "HTTPS"}}}));
        let p = ContainerProbes::of(&bad);
        assert!(matches!(p.liveness.unwrap().action, Action::Invalid(m) if m.contains("\"nope\"")));
        assert!(matches!(p.readiness.unwrap().action, Action::Invalid(m) if m.contains("HTTPS")));
        assert!(ContainerProbes::of(&container(json!({}))).is_empty());
    }

    #[test]
    fn tracker_needs_thresholds_in_a_row() {
        let mut t = Tracker::new(false, &spec(Action::Exec(vec![]), 2, 3));
        assert!(!t.observe(true), "one success is not enough");
        assert!(!t.observe(false));
        assert!(!t.observe(true));
        assert!(t.observe(true), "two in a row");
        assert!(t.result);
        assert!(!t.observe(false));
        assert!(!t.observe(false));
        assert!(!t.observe(true), "a success resets the failure run");
        assert!(!t.observe(false));
        assert!(!t.observe(false));
        assert!(t.observe(false), "three failures in a row");
        assert!(!t.result);
        assert!(!t.observe(false), "no change while it stays failed");
    }

    fn probes(p: &Arc<Scripted>) -> PodProbes {
        PodProbes::new(p.clone() as Arc<dyn Prober>)
    }

    async fn next(p: &mut PodProbes) -> ProbeEvent {
        tokio::time::timeout(Duration::from_secs(3600), p.next())
            .await
            .expect("an event")
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_after_failure_threshold_periods() {
        let s = Scripted::new(&[true, false, false, true, false, false, false]);
        let mut p = probes(&s);
        let c = container(json!({"livenessProbe": {"exec": {"command": ["true"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 3,
            "terminationGracePeriodSeconds": 1}}));
        let t0 = Instant::now();
        p.ensure("c1", &c, "/nonexistent".into(), Duration::ZERO);
        // No readiness probe: ready as soon as it runs.
        assert_eq!(
            p.flags("c1"),
            Some(Flags {
                started: true,
                ready: true
            })
        );
        let ev = next(&mut p).await;
        assert_eq!(
            ev,
            ProbeEvent::Failed {
                id: "c1".into(),
                kind: ProbeKind::Liveness,
                message: "nope".into(),
                grace: Some(Duration::from_secs(1))
            }
        );
        // Checks at 5, 7, ..., 17 s: the 7th check is the third failure in a row.
        let at = s.at.lock().unwrap().clone();
        assert_eq!(at.len(), 7);
        assert_eq!(at[0].1 - t0, Duration::from_secs(5));
        assert_eq!(at[6].1 - t0, Duration::from_secs(17));
        // Probing of this attempt stops (kubelet holds it until the restart).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(s.count(), 7);
        p.retain(&[]);
        assert_eq!(p.flags("c1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_flips_both_ways_and_startup_gates_it() {
        // Startup: fail, fail, pass; then readiness: pass, fail x3.
        let s = Scripted::new(&[false, false, true, true, false, false, false]);
        let mut p = probes(&s);
        let c = container(json!({
            "startupProbe": {"exec": {"command": ["startup"]}, "periodSeconds": 1, "failureThreshold": 5},
            "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 3}
        }));
        let t0 = Instant::now();
        p.ensure("c1", &c, "/nonexistent".into(), Duration::ZERO);
        assert_eq!(
            p.flags("c1"),
            Some(Flags {
                started: false,
                ready: false
            })
        );
        assert_eq!(next(&mut p).await, ProbeEvent::Changed { id: "c1".into() });
        assert!(p.flags("c1").unwrap().started);
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(2),
            "third startup check"
        );
        assert_eq!(next(&mut p).await, ProbeEvent::Changed { id: "c1".into() });
        assert_eq!(
            p.flags("c1"),
            Some(Flags {
                started: true,
                ready: true
            })
        );
        let at = s.at.lock().unwrap().clone();
        let kinds: Vec<String> = at
            .iter()
            .map(|(a, _)| match a {
                Action::Exec(v) => v[0].clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kinds, ["startup", "startup", "startup", "ready"]);
        assert_eq!(next(&mut p).await, ProbeEvent::Changed { id: "c1".into() });
        assert_eq!(
            p.flags("c1"),
            Some(Flags {
                started: true,
                ready: false
            })
        );
        // Readiness failing never asks for a kill.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(p.rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_startup_probe_asks_for_a_kill_and_blocks_liveness() {
        let s = Scripted::new(&[false]);
        let mut p = probes(&s);
        let c = container(json!({
            "startupProbe": {"exec": {"command": ["startup"]}, "periodSeconds": 2, "failureThreshold": 4},
            "livenessProbe": {"exec": {"command": ["live"]}}
        }));
        p.ensure("c1", &c, "/nonexistent".into(), Duration::ZERO);
        let ev = next(&mut p).await;
        assert!(
            matches!(
                ev,
                ProbeEvent::Failed {
                    kind: ProbeKind::Startup,
                    ..
                }
            ),
            "{ev:?}"
        );
        let at = s.at.lock().unwrap().clone();
        assert_eq!(at.len(), 4);
        assert!(at
            .iter()
            .all(|(a, _)| *a == Action::Exec(vec!["startup".into()])));
        assert_eq!(
            p.flags("c1"),
            Some(Flags {
                started: false,
                ready: false
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn adopted_containers_count_initial_delay_from_their_start() {
        let s = Scripted::new(&[true]);
        let mut p = probes(&s);
        let c = container(
            json!({"readinessProbe": {"exec": {"command": ["r"]}, "initialDelaySeconds": 30}}),
        );
        let t0 = Instant::now();
        p.ensure("c1", &c, "/nonexistent".into(), Duration::from_secs(20));
        assert_eq!(next(&mut p).await, ProbeEvent::Changed { id: "c1".into() });
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
        // ensure is idempotent per attempt.
        p.ensure("c1", &c, "/nonexistent".into(), Duration::ZERO);
        assert_eq!(s.count(), 1);
    }
}
