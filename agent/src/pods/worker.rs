//! One task per pod: converges the pod's containers to its spec (level-based:
//! every wake reads the pod and the containers' states and acts on the
//! difference), reports status, and on deletion stops the containers
//! gracefully and removes the pod object.

use super::backoff::Backoff;
use super::cluster::ClusterApi;
use super::container_spec::{self, SpecInput};
use super::env::{self, PodFacts, Sources};
use super::probes::{PodProbes, ProbeEvent, RuntimeProber};
use super::state::{self, ContainerRecord, PodRecord};
use super::status::{self, Attempt, ContainerView, PodView};
use super::volumes;
use crate::image::{ImageError, ImageService, PullPolicy, RegistryAuth};
use crate::logs;
use crate::runtime::oci::Mount;
use crate::runtime::{read_exit, ContainerRuntime, ContainerState, ExitInfo, Signal, StartRequest};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What every pod worker shares.
pub struct PodContext {
    /// Runs sandboxes and containers.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Provides image roots.
    pub images: Arc<dyn ImageService>,
    /// Talks to the API server.
    pub api: Arc<dyn ClusterApi>,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (status.hostIP).
    pub host_ip: String,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// cgroup parent for all pods (e.g. `shoal`).
    pub cgroup_parent: String,
    /// Restart back-off.
    pub backoff: Backoff,
    /// Gives pods their interface and addresses (see `crate::net`).
    pub network: Arc<dyn crate::net::PodNetwork>,
    /// Cluster DNS for pods' resolv.conf (see `crate::dns`).
    pub dns: crate::dns::PodDns,
}

/// How long after SIGKILL the worker waits for containers to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often a worker re-checks its pod without an event (a sandbox that
/// died, a status write to retry), like kubelet's periodic pod sync.
const RESYNC: Duration = Duration::from_secs(10);

struct Ctr {
    rec: ContainerRecord,
    exit: Option<ExitInfo>,
    message: Option<String>,
}

/// Why a container could not be started (reason, message), as shown in its waiting state.
type StartFailure = (String, String);

/// The per-pod worker.
pub struct PodWorker {
    ctx: Arc<PodContext>,
    dir: PathBuf,
    log_dir: PathBuf,
    record: PodRecord,
    containers: Vec<Ctr>,
    waiting: HashMap<String, (String, String)>,
    next_try: HashMap<String, Instant>,
    crashes: HashMap<String, u32>,
    failures: HashMap<String, u32>,
    exit_tx: mpsc::UnboundedSender<(String, ExitInfo)>,
    exit_rx: mpsc::UnboundedReceiver<(String, ExitInfo)>,
    last_status: Option<serde_json::Value>,
    /// The pod's IPs once its network is set up for the current sandbox.
    pod_ips: Option<Vec<String>>,
    probes: PodProbes,
    /// Projected volumes and their service-account tokens.
    projected: super::projected::Projected,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn config_err(m: String) -> StartFailure {
    ("CreateContainerConfigError".into(), m)
}

impl PodWorker {
    /// A worker for pod `uid`, picking up whatever state a previous agent left.
    pub fn new(ctx: Arc<PodContext>, uid: &str, namespace: &str, name: &str) -> PodWorker {
        let dir = state::pod_dir(&ctx.data_dir, uid);
        let (record, recs) = state::load(&dir).unwrap_or_else(|| {
            (
                PodRecord {
                    uid: uid.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    ..Default::default()
                },
                vec![],
            )
        });
        let log_dir = logs::pod_log_dir(&ctx.data_dir, &record.namespace, &record.name, uid);
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let probes = PodProbes::new(Arc::new(RuntimeProber::new(ctx.runtime.clone())));
        PodWorker {
            ctx,
            dir,
            log_dir,
            record,
            containers: recs
                .into_iter()
                .map(|rec| Ctr {
                    rec,
                    exit: None,
                    message: None,
                })
                .collect(),
            waiting: HashMap::new(),
            next_try: HashMap::new(),
            crashes: HashMap::new(),
            failures: HashMap::new(),
            exit_tx,
            exit_rx,
            last_status: None,
            pod_ips: None,
            probes,
            projected: Default::default(),
        }
    }

    /// The pod's uid.
    pub fn uid(&self) -> &str {
        &self.record.uid
    }

    /// Run until the pod is gone (`None` from the channel) and cleaned up, or
    /// until the channel closes (agent shutdown: containers keep running).
    pub async fn run(mut self, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
        self.adopt().await;
        loop {
            let pod = rx.borrow_and_update().clone();
            let wake = match pod {
                None => {
                    self.terminate(None).await;
                    self.cleanup().await;
                    return;
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    let grace = p
                        .metadata
                        .deletion_grace_period_seconds
                        .or_else(|| {
                            p.spec
                                .as_ref()
                                .and_then(|s| s.termination_grace_period_seconds)
                        })
                        .unwrap_or(30);
                    self.terminate(Some(Duration::from_secs(grace.max(0) as u64)))
                        .await;
                    self.cleanup().await;
                    self.delete_object(&p).await;
                    return;
                }
                Some(p) => {
                    // Service-account tokens due for refresh (80% of their lifetime).
                    self.projected
                        .refresh(self.ctx.api.as_ref(), &p, &self.dir)
                        .await;
                    let resync = Instant::now() + RESYNC;
                    Some(self.sync(&p).await.map_or(resync, |w| w.min(resync)))
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                Some((id, exit)) = self.exit_rx.recv() => self.on_exit(&id, exit),
                ev = self.probes.next() => {
                    let pod = rx.borrow().clone();
                    self.on_probe(ev, pod.as_deref()).await;
                }
                _ = sleep => {}
            }
        }
    }

    /// Re-attach to containers a previous agent started.
    async fn adopt(&mut self) {
        for i in 0..self.containers.len() {
            let id = self.containers[i].rec.id.clone();
            let bundle = state::container_dir(&self.dir, &id);
            match self.ctx.runtime.state(&id, &bundle).await {
                ContainerState::Running(_) => self.spawn_waiter(&id),
                ContainerState::Exited(e) => self.set_exit(i, e),
                ContainerState::Unknown => {
                    let e = ExitInfo {
                        exit_code: 255,
                        signal: None,
                        finished_at: now(),
                        oom_killed: false,
                        start_error: self.containers[i]
                            .rec
                            .started_at
                            .is_none()
                            .then(|| "container was never started".to_string()),
                    };
                    self.set_exit(i, e);
                }
            }
        }
        if self.containers.iter().any(|c| c.exit.is_none()) {
            tracing::info!(pod = %self.record.name, namespace = %self.record.namespace, "adopted running containers");
        }
    }

    fn spawn_waiter(&self, id: &str) {
        let rt = self.ctx.runtime.clone();
        let tx = self.exit_tx.clone();
        let id = id.to_string();
        let bundle = state::container_dir(&self.dir, &id);
        tokio::spawn(async move {
            let exit = rt.wait(&id, &bundle).await;
            let _ = tx.send((id, exit));
        });
    }

    fn set_exit(&mut self, i: usize, exit: ExitInfo) {
        let bundle = state::container_dir(&self.dir, &self.containers[i].rec.id);
        // The termination message file, capped like Kubernetes (4 KiB).
        self.containers[i].message = std::fs::read(bundle.join("termination-log"))
            .ok()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
            .filter(|m| !m.is_empty());
        self.containers[i].exit = Some(exit);
    }

    fn on_exit(&mut self, id: &str, exit: ExitInfo) {
        let Some(i) = self.containers.iter().position(|c| c.rec.id == id) else {
            return;
        };
        if self.containers[i].exit.is_some() {
            return;
        }
        let name = self.containers[i].rec.name.clone();
        let ran = match (&self.containers[i].rec.started_at, &exit.finished_at) {
            (Some(s), f) => Duration::from_secs((f.0.as_second() - s.0.as_second()).max(0) as u64),
            _ => Duration::ZERO,
        };
        let crashes = self
            .ctx
            .backoff
            .next_crashes(self.crashes.get(&name).copied().unwrap_or(0), ran);
        self.crashes.insert(name.clone(), crashes);
        self.next_try
            .insert(name, Instant::now() + self.ctx.backoff.delay(crashes));
        tracing::info!(pod = %self.record.name, container = %self.containers[i].rec.name, code = exit.exit_code, "container exited");
        self.set_exit(i, exit);
    }

    fn latest(&self, name: &str, init: bool) -> Option<usize> {
        self.containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rec.name == name && c.rec.init == init)
            .max_by_key(|(_, c)| c.rec.attempt)
            .map(|(i, _)| i)
    }

    fn previous(&self, name: &str, init: bool) -> Option<usize> {
        let latest = self.latest(name, init)?;
        let a = self.containers[latest].rec.attempt;
        self.containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rec.name == name && c.rec.init == init && c.rec.attempt < a)
            .max_by_key(|(_, c)| c.rec.attempt)
            .map(|(i, _)| i)
    }

    fn running(&self, i: usize) -> bool {
        self.containers[i].rec.started_at.is_some() && self.containers[i].exit.is_none()
    }

    fn sandbox_ok(&self) -> bool {
        self.record
            .sandbox
            .as_ref()
            .is_some_and(|s| self.ctx.runtime.sandbox_alive(s))
    }

    fn save(&self) {
        if let Err(e) = state::save_pod(&self.dir, &self.record) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "saving pod record");
        }
    }

    /// One convergence step; returns when to look again (besides events).
    async fn sync(&mut self, pod: &Pod) -> Option<Instant> {
        let spec = pod.spec.as_ref()?;
        let policy = spec
            .restart_policy
            .as_deref()
            .unwrap_or("Always")
            .to_string();
        let mut wake: Option<Instant> = None;
        if self.record.start_time.is_none() {
            self.record.start_time = Some(now());
            self.save();
        }
        // A pod that already finished (per the API) is not run again, even if
        // this node lost its local state.
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if self.record.phase.is_none()
            && self.containers.is_empty()
            && matches!(api_phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            self.record.phase = api_phase;
            self.save();
            return None;
        }
        if self.record.phase.is_some() {
            if self.containers.is_empty() {
                // Nothing local to report; the API's status stands.
                return None;
            }
            return self.report(pod).await;
        }
        if !self.sandbox_ok() {
            if self.record.sandbox.is_some() {
                // The sandbox died: its containers lost their pod; restart them all.
                tracing::warn!(pod = %self.record.name, "sandbox is gone; recreating it");
                self.kill_all(Signal::Kill, KILL_WAIT).await;
            }
            let hostname = spec
                .hostname
                .clone()
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_default();
            match self.ctx.runtime.start_sandbox(&self.dir, &hostname).await {
                Ok(s) => {
                    self.record.sandbox = Some(s);
                    self.save();
                    // A new sandbox is a new network namespace.
                    self.pod_ips = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.record.name, error = %e, "starting sandbox");
                    for c in spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(&spec.containers)
                    {
                        self.waiting.insert(
                            c.name.clone(),
                            ("ContainerCreating".into(), format!("sandbox: {e}")),
                        );
                    }
                    let _ = self.report(pod).await;
                    return Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }

        if let Some(retry) = self.setup_network(pod).await {
            return Some(retry);
        }

        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let latest = self.latest(&c.name, true);
            match latest {
                Some(i) if self.running(i) => {}
                Some(i)
                    if self.containers[i]
                        .exit
                        .as_ref()
                        .is_some_and(|e| e.exit_code == 0) =>
                {
                    self.waiting.remove(&c.name);
                    continue;
                }
                Some(_) if policy == "Never" => {
                    self.waiting.remove(&c.name);
                }
                Some(_) => self.restart_later(pod, c, true, &mut wake).await,
                None => self.start_or_wait(pod, c, true, &mut wake).await,
            }
            initialized = false;
            break;
        }
        if initialized {
            for c in &spec.containers {
                match self.latest(&c.name, false) {
                    Some(i) if self.running(i) => {}
                    Some(i) => {
                        let code = self.containers[i].exit.as_ref().map_or(0, |e| e.exit_code);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => code != 0,
                            _ => true,
                        };
                        if restart {
                            self.restart_later(pod, c, false, &mut wake).await;
                        } else {
                            self.waiting.remove(&c.name);
                        }
                    }
                    None => self.start_or_wait(pod, c, false, &mut wake).await,
                }
            }
        }
        let retry = self.report(pod).await;
        match (wake, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn restart_later(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        wake: &mut Option<Instant>,
    ) {
        match self.next_try.get(&c.name).copied() {
            Some(at) if at > Instant::now() => {
                let secs = self
                    .ctx
                    .backoff
                    .delay(self.crashes.get(&c.name).copied().unwrap_or(1))
                    .as_secs();
                self.waiting.insert(
                    c.name.clone(),
                    (
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {secs}s restarting failed container={} pod={}_{}({})",
                            c.name, self.record.name, self.record.namespace, self.record.uid
                        ),
                    ),
                );
                *wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            _ => self.start_or_wait(pod, c, init, wake).await,
        }
    }

    async fn start_or_wait(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        wake: &mut Option<Instant>,
    ) {
        // A container that could not be created waits out its own back-off.
        if let (Some(at), Some(_)) = (
            self.next_try.get(&c.name).copied(),
            self.waiting.get(&c.name),
        ) {
            if at > Instant::now() && self.latest(&c.name, init).is_none() {
                if let Some(w) = self.waiting.get_mut(&c.name) {
                    if w.0 == "ErrImagePull" {
                        w.0 = "ImagePullBackOff".into();
                    }
                }
                *wake = Some(wake.map_or(at, |w| w.min(at)));
                return;
            }
        }
        match self.start_container(pod, c, init).await {
            Ok(()) => {
                self.waiting.remove(&c.name);
                self.failures.remove(&c.name);
            }
            Err((reason, message)) => {
                tracing::info!(pod = %self.record.name, container = %c.name, %reason, %message, "container not started");
                let n = self.failures.entry(c.name.clone()).or_insert(0);
                *n += 1;
                let at = Instant::now() + self.ctx.backoff.delay(*n);
                self.next_try.insert(c.name.clone(), at);
                self.waiting.insert(c.name.clone(), (reason, message));
                *wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
    }

    async fn fetch_sources(&self, pod: &Pod) -> Result<Sources, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (mut cms, mut secrets) = volumes::referenced_sources(pod);
        let (pcms, psecrets) = super::projected::referenced_sources(pod);
        cms.extend(pcms);
        secrets.extend(psecrets);
        cms.dedup();
        secrets.dedup();
        let mut s = Sources::default();
        for n in cms {
            let v = self.ctx.api.config_map(ns, &n).await.map_err(|e| e.0)?;
            s.config_maps.insert(n, v);
        }
        for n in secrets {
            let v = self.ctx.api.secret(ns, &n).await.map_err(|e| e.0)?;
            s.secrets.insert(n, v);
        }
        Ok(s)
    }

    async fn pull_auth(&self, pod: &Pod) -> Vec<RegistryAuth> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = Vec::new();
        let names = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default();
        for r in names {
            if let Ok(Some(secret)) = self.ctx.api.secret(ns, &r.name).await {
                out.extend(super::pull_secrets::registry_auths(&secret));
            }
        }
        out
    }

    fn etc_mounts(
        &self,
        pod: &Pod,
        c: &Container,
        cluster_dns: &[std::net::IpAddr],
    ) -> Result<Vec<Mount>, String> {
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default();
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file (shoal).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        let domain = &self.ctx.dns.cluster_domain;
        let names = crate::dns::resolv::pod_host_names(pod, &hostname, domain);
        for ip in self.pod_ips.iter().flatten() {
            hosts.push_str(&format!("{ip}\t{names}\n"));
        }
        for a in spec
            .and_then(|s| s.host_aliases.clone())
            .unwrap_or_default()
        {
            let names = a.hostnames.unwrap_or_default().join(" ");
            hosts.push_str(&format!("{}\t{names}\n", a.ip));
        }
        let node_resolv = crate::dns::resolv::node_resolv_conf();
        let resolv = crate::dns::resolv::pod_resolv_conf(pod, domain, cluster_dns, &node_resolv);
        let files = [
            ("hosts", hosts, "/etc/hosts"),
            ("hostname", format!("{hostname}\n"), "/etc/hostname"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
        ];
        let taken: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        let mut out = Vec::new();
        for (file, content, dest) in files {
            let p = etc.join(file);
            std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
            if !taken.contains(&dest) {
                out.push(Mount {
                    destination: dest.into(),
                    kind: "bind".into(),
                    source: p.display().to_string(),
                    options: vec!["rbind".into(), "rprivate".into()],
                });
            }
        }
        Ok(out)
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
    ) -> Result<(), StartFailure> {
        let sandbox = self
            .record
            .sandbox
            .ok_or_else(|| ("ContainerCreating".to_string(), "no sandbox".to_string()))?;
        let policy = pull_policy(c);
        let auth = self.pull_auth(pod).await;
        let image = self
            .ctx
            .images
            .prepare(c.image.as_deref().unwrap_or(""), policy, &auth)
            .await
            .map_err(|e: ImageError| (e.reason().to_string(), e.to_string()))?;
        let sources = self.fetch_sources(pod).await.map_err(config_err)?;
        let facts = PodFacts {
            host_ip: self.ctx.host_ip.clone(),
            pod_ip: self
                .pod_ips
                .as_ref()
                .and_then(|ips| ips.first().cloned())
                .unwrap_or_default(),
        };
        let env = env::resolve(pod, c, &sources, &facts).map_err(config_err)?;
        let env = super::projected::merge_service_env(
            super::projected::kubernetes_service_env(self.ctx.api.as_ref()).await,
            env,
        );
        let mut vols = volumes::prepare(pod, &self.dir, &sources).map_err(config_err)?;
        vols.extend(
            self.projected
                .prepare(self.ctx.api.as_ref(), pod, &self.dir, &sources)
                .await
                .map_err(config_err)?,
        );
        let storage_root = crate::storage::root(&self.ctx.data_dir);
        let claims = crate::storage::claim_volumes(self.ctx.api.as_ref(), pod, &storage_root)
            .await
            .map_err(|m| ("ContainerCreating".to_string(), m))?;
        vols.extend(claims.paths.clone());
        let mut mounts = volumes::mounts(c, &vols).map_err(config_err)?;
        claims.apply_read_only(c, &mut mounts);
        // With a pod network, wait (briefly) for the node-local DNS address.
        let has_net = self.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty());
        let cluster_dns = self
            .ctx
            .dns
            .nameservers(has_net, Duration::from_secs(10))
            .await;
        mounts.extend(self.etc_mounts(pod, c, &cluster_dns).map_err(config_err)?);

        let attempt = self
            .latest(&c.name, init)
            .map_or(0, |i| self.containers[i].rec.attempt + 1);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let bundle = state::container_dir(&self.dir, &id);
        let create_err = |e: std::io::Error| ("CreateContainerError".to_string(), e.to_string());
        std::fs::create_dir_all(&bundle).map_err(create_err)?;
        let term_log = bundle.join("termination-log");
        std::fs::write(&term_log, b"").map_err(create_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&term_log, std::fs::Permissions::from_mode(0o666))
                .map_err(create_err)?;
        }
        mounts.push(Mount {
            destination: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            kind: "bind".into(),
            source: term_log.display().to_string(),
            options: vec!["rbind".into(), "rprivate".into()],
        });
        let image_user = match image.config.user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => {
                let passwd =
                    std::fs::read_to_string(image.rootfs.join("etc/passwd")).unwrap_or_default();
                let group =
                    std::fs::read_to_string(image.rootfs.join("etc/group")).unwrap_or_default();
                Some(container_spec::resolve_user(u, &passwd, &group).map_err(config_err)?)
            }
            None => None,
        };
        let cgroup_path = format!(
            "/{}/pod{}/{id}",
            self.ctx.cgroup_parent.trim_matches('/'),
            self.record.uid
        );
        let spec = container_spec::build(SpecInput {
            pod,
            container: c,
            image: &image.config,
            env: &env,
            mounts,
            sandbox: &sandbox,
            cgroup_path: cgroup_path.clone(),
            image_user,
        })
        .map_err(config_err)?;

        let rec = ContainerRecord {
            id: id.clone(),
            name: c.name.clone(),
            init,
            attempt,
            image_ref: image.reference.clone(),
            image_id: image.digest.clone(),
            created_at: now(),
            started_at: None,
            cgroup_path: cgroup_path.clone(),
        };
        state::save_container(&self.dir, &rec).map_err(create_err)?;
        self.containers.push(Ctr {
            rec,
            exit: None,
            message: None,
        });
        let idx = self.containers.len() - 1;
        let rootfs = bundle.join("rootfs");
        let mounted = self.ctx.runtime.mount_rootfs(
            &image.rootfs,
            &bundle.join("upper"),
            &bundle.join("work"),
            &rootfs,
        );
        let prepared = mounted.map_err(|e| e.to_string()).and_then(|()| {
            // runc needs the working directory to exist in the root.
            let _ = std::fs::create_dir_all(rootfs.join(spec.process.cwd.trim_start_matches('/')));
            let bytes = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
            std::fs::write(bundle.join("config.json"), bytes).map_err(|e| e.to_string())
        });
        if let Err(msg) = prepared {
            self.on_exit(
                &id,
                ExitInfo {
                    exit_code: 128,
                    signal: None,
                    finished_at: now(),
                    oom_killed: false,
                    start_error: Some(msg),
                },
            );
            return Ok(());
        }
        let req = StartRequest {
            id: id.clone(),
            bundle: bundle.clone(),
            log_path: logs::container_log_path(&self.log_dir, &c.name, attempt),
            cgroup_path,
        };
        match self.ctx.runtime.start(&req).await {
            Ok(_pid) => {
                self.containers[idx].rec.started_at = Some(now());
                let _ = state::save_container(&self.dir, &self.containers[idx].rec);
                self.spawn_waiter(&id);
                tracing::info!(pod = %self.record.name, container = %c.name, attempt, %id, "container started");
            }
            Err(e) => {
                let exit = read_exit(&bundle).unwrap_or(ExitInfo {
                    exit_code: 128,
                    signal: None,
                    finished_at: now(),
                    oom_killed: false,
                    start_error: Some(e.to_string()),
                });
                self.on_exit(&id, exit);
            }
        }
        self.collect_old_attempts(&c.name, init).await;
        Ok(())
    }

    /// Keep the latest two attempts of a container (status and `logs --previous`).
    async fn collect_old_attempts(&mut self, name: &str, init: bool) {
        let mut attempts: Vec<u32> = self
            .containers
            .iter()
            .filter(|c| c.rec.name == name && c.rec.init == init)
            .map(|c| c.rec.attempt)
            .collect();
        attempts.sort_unstable();
        if attempts.len() <= 2 {
            return;
        }
        let keep_from = attempts[attempts.len() - 2];
        let old: Vec<String> = self
            .containers
            .iter()
            .filter(|c| {
                c.rec.name == name
                    && c.rec.init == init
                    && c.rec.attempt < keep_from
                    && c.exit.is_some()
            })
            .map(|c| c.rec.id.clone())
            .collect();
        for id in &old {
            self.remove_container(id).await;
            if let Some(c) = self.containers.iter().find(|c| &c.rec.id == id) {
                let _ = std::fs::remove_file(logs::container_log_path(
                    &self.log_dir,
                    name,
                    c.rec.attempt,
                ));
            }
        }
        self.containers.retain(|c| !old.contains(&c.rec.id));
    }

    async fn remove_container(&self, id: &str) {
        if let Err(e) = self.ctx.runtime.remove(id).await {
            tracing::warn!(%id, error = %e, "removing container");
        }
        let bundle = state::container_dir(&self.dir, id);
        let _ = self.ctx.runtime.unmount_rootfs(&bundle.join("rootfs"));
        let _ = std::fs::remove_dir_all(&bundle);
    }

    /// Signal every running container and wait up to `wait` for them to exit.
    async fn kill_all(&mut self, signal: Signal, wait: Duration) {
        let running: Vec<String> = (0..self.containers.len())
            .filter(|i| self.running(*i))
            .map(|i| self.containers[i].rec.id.clone())
            .collect();
        if running.is_empty() {
            return;
        }
        for id in &running {
            if let Err(e) = self.ctx.runtime.signal(id, signal).await {
                tracing::warn!(%id, error = %e, "signalling container");
            }
        }
        let deadline = Instant::now() + wait;
        while (0..self.containers.len()).any(|i| self.running(i)) {
            tokio::select! {
                Some((id, exit)) = self.exit_rx.recv() => self.on_exit(&id, exit),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Stop all containers: SIGTERM, `grace`, then SIGKILL (`None`: the pod
    /// object is gone; use a short grace).
    async fn terminate(&mut self, grace: Option<Duration>) {
        let grace = grace.unwrap_or(Duration::from_secs(2));
        if !grace.is_zero() {
            self.kill_all(Signal::Term, grace).await;
        }
        self.kill_all(Signal::Kill, KILL_WAIT).await;
    }

    /// Remove everything the pod had on this node.
    async fn cleanup(&mut self) {
        let ids: Vec<String> = self.containers.iter().map(|c| c.rec.id.clone()).collect();
        for id in &ids {
            self.remove_container(id).await;
        }
        if let Some(s) = self.record.sandbox.take() {
            if let Err(e) = self.ctx.runtime.stop_sandbox(&s) {
                tracing::warn!(error = %e, "stopping sandbox");
            }
        }
        self.teardown_network().await;
        self.ctx.runtime.remove_pod_cgroup(&format!(
            "/{}/pod{}",
            self.ctx.cgroup_parent.trim_matches('/'),
            self.record.uid
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.log_dir);
        tracing::info!(pod = %self.record.name, namespace = %self.record.namespace, "pod removed from node");
    }

    /// Give the pod its network once per sandbox. Returns when to retry if
    /// that failed and no container runs yet (they wait in ContainerCreating).
    async fn setup_network(&mut self, pod: &Pod) -> Option<Instant> {
        let sandbox = self.record.sandbox?;
        if self.pod_ips.is_some() {
            return None;
        }
        match self.ctx.network.setup(&self.record.uid, &sandbox).await {
            Ok(ips) => {
                self.pod_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
                None
            }
            Err(e) => {
                tracing::warn!(pod = %self.record.name, error = %e, "setting up pod network");
                if (0..self.containers.len()).any(|i| self.running(i)) {
                    return None;
                }
                let spec = pod.spec.as_ref()?;
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    self.waiting.insert(
                        c.name.clone(),
                        ("ContainerCreating".into(), format!("pod network: {e}")),
                    );
                }
                let _ = self.report(pod).await;
                Some(Instant::now() + Duration::from_secs(2))
            }
        }
    }

    /// Remove the pod's interface and release its addresses.
    async fn teardown_network(&mut self) {
        if let Err(e) = self.ctx.network.teardown(&self.record.uid).await {
            tracing::warn!(pod = %self.record.name, error = %e, "tearing down pod network");
        }
    }

    async fn delete_object(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        for attempt in 0..5u32 {
            match self.ctx.api.delete_pod(ns, name, &self.record.uid).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "deleting pod object");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    fn attempt(&self, i: usize) -> Attempt {
        let c = &self.containers[i];
        Attempt {
            id: c.rec.id.clone(),
            image_ref: c.rec.image_ref.clone(),
            image_id: c.rec.image_id.clone(),
            started_at: c.rec.started_at.clone(),
            exit: c.exit.clone(),
            termination_message: c.message.clone(),
        }
    }

    fn container_view(&self, c: &Container, init: bool) -> ContainerView {
        let latest = self.latest(&c.name, init);
        let mut current = latest.map(|i| self.attempt(i));
        if let (Some(a), Some(i)) = (current.as_mut(), latest) {
            // FallbackToLogsOnError: the log tail stands in for an empty message.
            if a.termination_message.is_none()
                && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
                && a.exit.as_ref().is_some_and(|e| e.exit_code != 0)
            {
                let path = logs::container_log_path(
                    &self.log_dir,
                    &c.name,
                    self.containers[i].rec.attempt,
                );
                a.termination_message = logs::read_log_text(&path).ok().map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                    tail[tail.len().saturating_sub(2048)..].to_string()
                });
            }
        }
        let probe = latest.and_then(|i| self.probes.flags(&self.containers[i].rec.id));
        ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            current,
            previous: self.previous(&c.name, init).map(|i| self.attempt(i)),
            waiting: self.waiting.get(&c.name).cloned(),
            restart_count: latest.map_or(0, |i| self.containers[i].rec.attempt as i32),
            probe_started: probe.map(|f| f.started),
            probe_ready: probe.map(|f| f.ready),
        }
    }

    /// Compute the status and write it if it changed; a terminal phase is
    /// recorded and the sandbox stopped. Returns when to retry a failed write.
    async fn report(&mut self, pod: &Pod) -> Option<Instant> {
        let spec = pod.spec.as_ref()?;
        self.sync_probes(pod);
        let view = PodView {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| self.container_view(c, true))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| self.container_view(c, false))
                .collect(),
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            host_ip: self.ctx.host_ip.clone(),
            pod_ips: self.pod_ips.clone().unwrap_or_default(),
            start_time: self.record.start_time.clone(),
            sandbox_ready: self.record.phase.is_none() && self.sandbox_ok(),
        };
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = status::pod_status(&view, &previous, &now());
        let phase = status.phase.clone().unwrap_or_default();
        if (phase == "Succeeded" || phase == "Failed") && self.record.phase.is_none() {
            self.record.phase = Some(phase);
            self.save();
            if let Some(s) = self.record.sandbox.take() {
                let _ = self.ctx.runtime.stop_sandbox(&s);
            }
            self.save();
            self.teardown_network().await;
        }
        let value = serde_json::to_value(&status).ok()?;
        if self.last_status.as_ref() == Some(&value) {
            return None;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match self.ctx.api.patch_status(ns, name, value.clone()).await {
            Ok(()) => {
                self.last_status = Some(value);
                None
            }
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "writing pod status");
                Some(Instant::now() + Duration::from_secs(2))
            }
        }
    }
}

/// Probes (see `probes.rs`): which containers are probed, and what a failed
/// liveness or startup probe does.
impl PodWorker {
    /// Probe the running latest attempt of each regular container; stop
    /// probing any other.
    fn sync_probes(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
        self.probes
            .set_pod_ip(pod_ip.and_then(|ip| ip.parse().ok()));
        let netns = self.record.sandbox.map(|s| PathBuf::from(s.ns_path("net")));
        let now_s = k8s_openapi::jiff::Timestamp::now().as_second();
        let mut keep = Vec::new();
        for c in &spec.containers {
            let Some(i) = self.latest(&c.name, false).filter(|i| self.running(*i)) else {
                continue;
            };
            let rec = &self.containers[i].rec;
            if let (Some(ns), Some(started)) = (&netns, &rec.started_at) {
                let ago = Duration::from_secs((now_s - started.0.as_second()).max(0) as u64);
                self.probes.ensure(&rec.id, c, ns.clone(), ago);
            }
            keep.push(rec.id.clone());
        }
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.probes.retain(&keep);
    }

    /// A probe result changed (the loop reports status next) or a liveness
    /// or startup probe failed: kill that container like kubelet (SIGTERM,
    /// grace period, SIGKILL) and let the restart policy act on its exit.
    async fn on_probe(&mut self, ev: ProbeEvent, pod: Option<&Pod>) {
        let ProbeEvent::Failed {
            id,
            kind,
            message,
            grace,
        } = ev
        else {
            return;
        };
        let Some(i) = self.containers.iter().position(|c| c.rec.id == id) else {
            return;
        };
        if !self.running(i) || pod.is_some_and(|p| p.metadata.deletion_timestamp.is_some()) {
            return;
        }
        let name = self.containers[i].rec.name.clone();
        let grace = grace.unwrap_or_else(|| {
            let secs = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            Duration::from_secs(secs.max(0) as u64)
        });
        let verb = match kind {
            super::probes::ProbeKind::Startup => "startup",
            _ => "liveness",
        };
        tracing::info!(pod = %self.record.name, namespace = %self.record.namespace, container = %name,
            reason = "Unhealthy", %message, "{} probe failed", kind.name());
        tracing::info!(pod = %self.record.name, namespace = %self.record.namespace, container = %name,
            reason = "Killing", "Container {name} failed {verb} probe, will be restarted");
        for (warning, reason, text) in [
            (
                true,
                "Unhealthy",
                format!("{} probe failed: {message}", kind.name()),
            ),
            (
                false,
                "Killing",
                format!("Container {name} failed {verb} probe, will be restarted"),
            ),
        ] {
            let event = super::cluster::PodEvent {
                namespace: self.record.namespace.clone(),
                pod: self.record.name.clone(),
                uid: self.record.uid.clone(),
                container: name.clone(),
                warning,
                reason: reason.into(),
                message: text,
                node: self.ctx.node_name.clone(),
            };
            if let Err(e) = self.ctx.api.pod_event(&event).await {
                tracing::warn!(pod = %self.record.name, error = %e, "recording event");
            }
        }
        let rt = self.ctx.runtime.clone();
        tokio::spawn(async move {
            if !grace.is_zero() {
                if let Err(e) = rt.signal(&id, Signal::Term).await {
                    tracing::warn!(%id, error = %e, "signalling container");
                }
                tokio::time::sleep(grace).await;
            }
            // Gone already is fine: the runtime treats it as success.
            let _ = rt.signal(&id, Signal::Kill).await;
        });
    }
}

/// The effective pull policy: Always for `:latest` or untagged images, else IfNotPresent.
pub fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = c.image.as_deref().unwrap_or("");
            let last = image.rsplit('/').next().unwrap_or(image);
            let tagged = last.contains(':') || image.contains('@');
            if !tagged || last.ends_with(":latest") {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// Where pods' state lives (re-exported for callers that clean up).
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    state::pod_dir(data_dir, uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_images::DirImages;
    use crate::pods::cluster::ApiError;
    use crate::runtime::recording::{Call, RecordingRuntime};
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeCluster {
        statuses: Mutex<Vec<serde_json::Value>>,
        deleted: Mutex<Vec<String>>,
    }

    impl ClusterApi for FakeCluster {
        fn config_map<'a>(
            &'a self,
            _ns: &'a str,
            _name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ConfigMap>, ApiError>> {
            async { Ok(None) }.boxed()
        }
        fn secret<'a>(
            &'a self,
            _ns: &'a str,
            _name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Secret>, ApiError>> {
            async { Ok(None) }.boxed()
        }
        fn patch_status<'a>(
            &'a self,
            _ns: &'a str,
            _name: &'a str,
            status: serde_json::Value,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.statuses.lock().unwrap().push(status);
            async { Ok(()) }.boxed()
        }
        fn delete_pod<'a>(
            &'a self,
            _ns: &'a str,
            name: &'a str,
            uid: &'a str,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            self.deleted.lock().unwrap().push(format!("{name}/{uid}"));
            async { Ok(()) }.boxed()
        }
    }

    struct Harness {
        _dir: tempfile::TempDir,
        data: PathBuf,
        rt: Arc<RecordingRuntime>,
        api: Arc<FakeCluster>,
        tx: watch::Sender<Option<Arc<Pod>>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn harness(rt: RecordingRuntime, pod: &Pod) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images/busybox/rootfs")).unwrap();
        let rt = Arc::new(rt);
        let api = Arc::new(FakeCluster::default());
        let data = dir.path().join("agent");
        let ctx = Arc::new(PodContext {
            runtime: rt.clone(),
            images: Arc::new(DirImages::new(dir.path().join("images"))),
            api: api.clone(),
            node_name: "n1".into(),
            host_ip: "10.0.0.1".into(),
            data_dir: data.clone(),
            cgroup_parent: "shoal".into(),
            backoff: Backoff::default(),
            network: Arc::new(crate::net::NoNetwork),
            dns: crate::dns::PodDns::disabled("cluster.local"),
        });
        let w = PodWorker::new(ctx, "uid-1", "default", "p");
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(w.run(rx));
        Harness {
            _dir: dir,
            data,
            rt,
            api,
            tx,
            task,
        }
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn name_of(h: &Harness, id: &str) -> String {
        let meta = state::container_dir(&state::pod_dir(&h.data, "uid-1"), id).join("meta.json");
        let rec: ContainerRecord = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
        rec.name
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
            "spec": {
                "nodeName": "n1",
                "restartPolicy": "Never",
                "initContainers": [
                    {"name": "init1", "image": "busybox", "command": ["true"]},
                    {"name": "init2", "image": "busybox", "command": ["true"]}
                ],
                "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"]}]
            }
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn init_containers_run_in_order_then_deletion_terms_then_kills() {
        let p = pod(json!({}));
        let h = harness(RecordingRuntime::ignoring_term(), &p);
        eventually("init1 started", || h.rt.started().len() == 1).await;
        let first = h.rt.started()[0].clone();
        assert_eq!(name_of(&h, &first), "init1");
        // Nothing else starts while init1 runs.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.rt.started().len(), 1);
        h.rt.exit(&first, 0);
        eventually("init2 started", || h.rt.started().len() == 2).await;
        let second = h.rt.started()[1].clone();
        assert_eq!(name_of(&h, &second), "init2");
        h.rt.exit(&second, 0);
        eventually("main started", || h.rt.started().len() == 3).await;
        let main = h.rt.started()[2].clone();
        assert_eq!(name_of(&h, &main), "main");
        eventually("Running reported", || {
            h.api
                .statuses
                .lock()
                .unwrap()
                .last()
                .map(|s| s["phase"].clone())
                == Some(json!("Running"))
        })
        .await;

        // Deleting with a 1 s grace: SIGTERM (ignored), then SIGKILL, then the
        // object is deleted and the pod's state removed.
        let mut deleting = p.clone();
        deleting.metadata.deletion_timestamp = Some(now());
        deleting.metadata.deletion_grace_period_seconds = Some(1);
        let started = Instant::now();
        h.tx.send(Some(Arc::new(deleting))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "grace period honoured"
        );
        let signals: Vec<Call> =
            h.rt.calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Signal(..)))
                .collect();
        assert_eq!(
            signals,
            vec![
                Call::Signal(main.clone(), Signal::Term),
                Call::Signal(main.clone(), Signal::Kill)
            ]
        );
        assert!(h.rt.calls().contains(&Call::Remove(main)));
        assert!(h
            .rt
            .calls()
            .iter()
            .any(|c| matches!(c, Call::StopSandbox(_))));
        assert_eq!(*h.api.deleted.lock().unwrap(), vec!["p/uid-1".to_string()]);
        assert!(!state::pod_dir(&h.data, "uid-1").exists());
    }

    #[tokio::test]
    async fn failed_init_container_with_never_fails_the_pod() {
        let p = pod(json!({}));
        let h = harness(RecordingRuntime::new(), &p);
        eventually("init1 started", || h.rt.started().len() == 1).await;
        h.rt.exit(&h.rt.started()[0], 1);
        eventually("Failed reported", || {
            h.api
                .statuses
                .lock()
                .unwrap()
                .last()
                .map(|s| s["phase"].clone())
                == Some(json!("Failed"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            h.rt.started().len(),
            1,
            "nothing runs after a failed init container"
        );
        assert!(h
            .rt
            .calls()
            .iter()
            .any(|c| matches!(c, Call::StopSandbox(_))));
        drop(h.tx);
    }

    #[tokio::test]
    async fn on_failure_restarts_only_failed_containers_after_back_off() {
        tokio::time::pause();
        let p = pod(json!({"spec": {"restartPolicy": "OnFailure", "initContainers": null}}));
        let h = harness(RecordingRuntime::new(), &p);
        eventually("main started", || h.rt.started().len() == 1).await;
        h.rt.exit(&h.rt.started()[0], 1);
        eventually("CrashLoopBackOff reported", || {
            h.api.statuses.lock().unwrap().last().is_some_and(|s| {
                s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            })
        })
        .await;
        assert_eq!(h.rt.started().len(), 1, "no restart before the back-off");
        tokio::time::advance(Duration::from_secs(11)).await;
        eventually("restarted", || h.rt.started().len() == 2).await;
        h.rt.exit(&h.rt.started()[1], 0);
        eventually("Succeeded reported", || {
            h.api.statuses.lock().unwrap().last().is_some_and(|s| {
                s["phase"] == "Succeeded" && s["containerStatuses"][0]["restartCount"] == 1
            })
        })
        .await;
        drop(h.tx);
    }

    #[tokio::test]
    async fn failing_liveness_probe_kills_and_restarts_and_readiness_gates_ready() {
        tokio::time::pause();
        let p = pod(
            json!({"spec": {"restartPolicy": "Always", "initContainers": null,
            "terminationGracePeriodSeconds": 3,
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000"],
                "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1, "failureThreshold": 1},
                "livenessProbe": {"exec": {"command": ["live"]}, "periodSeconds": 5, "failureThreshold": 2,
                    "initialDelaySeconds": 20}}]}}),
        );
        let h = harness(RecordingRuntime::new(), &p);
        let last = |h: &Harness| {
            h.api
                .statuses
                .lock()
                .unwrap()
                .last()
                .cloned()
                .unwrap_or_default()
        };
        let ready = |s: &serde_json::Value| {
            s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].clone())
        };
        eventually("main started", || h.rt.started().len() == 1).await;
        let first = h.rt.started()[0].clone();
        eventually("ready after the readiness probe passed", || {
            let s = last(&h);
            s["containerStatuses"][0]["ready"] == true && ready(&s) == Some(json!("True"))
        })
        .await;
        assert!(h
            .rt
            .execs()
            .iter()
            .any(|(id, argv)| id == &first && argv == &["ready"]));
        // Both probes start failing: readiness flips Ready at once, liveness
        // kills after two failures (20 s initial delay, 5 s period).
        h.rt.set_exec_exit_code(1);
        eventually("not ready", || {
            let s = last(&h);
            s["containerStatuses"][0]["ready"] == false && ready(&s) == Some(json!("False"))
        })
        .await;
        assert!(h.rt.is_running(&first));
        // Let the paused clock run past the liveness delay and two periods.
        tokio::time::sleep(Duration::from_secs(30)).await;
        eventually("killed by liveness", || {
            h.rt.calls()
                .contains(&Call::Signal(first.clone(), Signal::Term))
        })
        .await;
        h.rt.set_exec_exit_code(0);
        // restartPolicy Always: a new attempt after the back-off, restartCount 1.
        tokio::time::advance(Duration::from_secs(11)).await;
        eventually("restarted", || h.rt.started().len() == 2).await;
        eventually("restartCount 1 and ready again", || {
            let s = last(&h);
            s["containerStatuses"][0]["restartCount"] == 1
                && s["containerStatuses"][0]["ready"] == true
                && s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 143
        })
        .await;
        drop(h.tx);
    }
}
