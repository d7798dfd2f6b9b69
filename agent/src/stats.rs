//! Resource usage of the node and its containers, read from cgroups and
//! `/proc`, and pushed to the host as one report per interval
//! (`PUT /shoal/v1/nodes/<node>/metrics`, served as `metrics.k8s.io`).
//!
//! CPU is a cumulative counter turned into a rate over the time between two
//! samples; memory is the working set (usage minus inactive file pages), the
//! figure the kubelet reports and the OOM killer is closest to.

use crate::pods::state;
use crate::runtime::cgroups;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux ABI we run on).
const USER_HZ: u64 = 100;

/// Usage of one container, a pod or the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU as a rate, in billionths of a core.
    pub cpu_nano_cores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
}

/// One container's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerUsage {
    /// Container name in the pod spec.
    pub name: String,
    /// Its usage.
    pub usage: Usage,
}

/// One pod's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid (so a report never describes a newer pod of the same name).
    pub uid: String,
    /// Running containers with a usage figure.
    pub containers: Vec<ContainerUsage>,
}

/// What the agent pushes every interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When the samples were taken (RFC 3339).
    pub timestamp: String,
    /// The window the CPU rates are averaged over, in seconds.
    pub window_seconds: f64,
    /// Whole-node usage.
    pub usage: Usage,
    /// Per pod and container.
    pub pods: Vec<PodUsage>,
}

/// Cumulative CPU times from the first line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing work (everything but idle and iowait).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// Parse the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already counted in user, so only the first eight add up.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Node memory in use from `/proc/meminfo`: MemTotal − MemAvailable, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let kb = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(kb("MemTotal")?.saturating_sub(kb("MemAvailable")?) * 1024)
}

/// The value of `key` in a flat keyed cgroup file (`memory.stat`, `cpu.stat`).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Working set: usage minus inactive file pages (never below zero).
pub fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

/// Where the cgroup files are: the v2 unified tree or the v1 controller mounts.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    /// Mount root (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// Whether `root` is a v2 unified hierarchy.
    pub unified: bool,
}

impl CgroupFs {
    /// The machine's cgroup file system.
    pub fn host() -> CgroupFs {
        CgroupFs {
            root: PathBuf::from("/sys/fs/cgroup"),
            unified: cgroups::is_unified(),
        }
    }

    fn read(&self, dir: &Path, file: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(file)).ok()
    }

    /// Cumulative CPU time of a cgroup in nanoseconds.
    pub fn cpu_usage_ns(&self, cgroup_path: &str) -> Option<u64> {
        let rel = cgroup_path.trim_start_matches('/');
        if self.unified {
            let stat = self.read(&self.root.join(rel), "cpu.stat")?;
            return flat_keyed(&stat, "usage_usec").map(|us| us * 1000);
        }
        // v1: cpuacct may be mounted alone or together with cpu.
        ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
            .iter()
            .find_map(|m| self.read(&self.root.join(m).join(rel), "cpuacct.usage"))?
            .trim()
            .parse()
            .ok()
    }

    /// Memory working set of a cgroup in bytes.
    pub fn memory_working_set(&self, cgroup_path: &str) -> Option<u64> {
        let rel = cgroup_path.trim_start_matches('/');
        if self.unified {
            let dir = self.root.join(rel);
            let usage: u64 = self.read(&dir, "memory.current")?.trim().parse().ok()?;
            let stat = self.read(&dir, "memory.stat").unwrap_or_default();
            return Some(working_set(
                usage,
                flat_keyed(&stat, "inactive_file").unwrap_or(0),
            ));
        }
        let dir = self.root.join("memory").join(rel);
        let usage: u64 = self
            .read(&dir, "memory.usage_in_bytes")?
            .trim()
            .parse()
            .ok()?;
        let stat = self.read(&dir, "memory.stat").unwrap_or_default();
        let inactive = flat_keyed(&stat, "total_inactive_file")
            .or_else(|| flat_keyed(&stat, "inactive_file"))
            .unwrap_or(0);
        Some(working_set(usage, inactive))
    }
}

/// Rate in nanocores of a cumulative nanosecond counter over `elapsed`.
pub fn rate_nano_cores(prev_ns: u64, now_ns: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || now_ns < prev_ns {
        return 0;
    }
    ((now_ns - prev_ns) as f64 / secs) as u64
}

/// Takes samples and turns counters into rates between consecutive ones.
pub struct Collector {
    fs: CgroupFs,
    proc_dir: PathBuf,
    data_dir: PathBuf,
    last: Option<Instant>,
    node_cpu: Option<CpuTimes>,
    containers: HashMap<String, u64>,
}

impl Collector {
    /// A collector for the pods recorded under `data_dir`.
    pub fn new(fs: CgroupFs, proc_dir: PathBuf, data_dir: PathBuf) -> Collector {
        Collector {
            fs,
            proc_dir,
            data_dir,
            last: None,
            node_cpu: None,
            containers: HashMap::new(),
        }
    }

    /// Take a sample. The first call only primes the counters and returns None;
    /// later ones return a report whose rates cover the time since the previous call.
    pub fn sample(&mut self) -> Option<Report> {
        let now = Instant::now();
        let elapsed = self.last.map(|l| now - l);
        self.last = Some(now);

        let cpu = std::fs::read_to_string(self.proc_dir.join("stat"))
            .ok()
            .and_then(|t| parse_proc_stat(&t));
        let prev_cpu = std::mem::replace(&mut self.node_cpu, cpu);
        let node_cpu = match (prev_cpu, cpu, elapsed) {
            (Some(a), Some(b), Some(e)) if b.total >= a.total => rate_nano_cores(
                a.busy * 1_000_000_000 / USER_HZ,
                b.busy * 1_000_000_000 / USER_HZ,
                e,
            ),
            _ => 0,
        };
        let node_mem = std::fs::read_to_string(self.proc_dir.join("meminfo"))
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or(0);

        let mut seen = HashMap::new();
        let mut pods = Vec::new();
        for uid in state::list_pods(&self.data_dir) {
            let Some((pod, records)) = state::load(&state::pod_dir(&self.data_dir, &uid)) else {
                continue;
            };
            if pod.phase.is_some() {
                continue;
            }
            // The latest attempt of each app container.
            let mut latest: HashMap<&str, &state::ContainerRecord> = HashMap::new();
            for r in records.iter().filter(|r| !r.init) {
                let e = latest.entry(r.name.as_str()).or_insert(r);
                if r.attempt > e.attempt {
                    *e = r;
                }
            }
            let mut containers = Vec::new();
            let mut names: Vec<&str> = latest.keys().copied().collect();
            names.sort();
            for name in names {
                let rec = latest[name];
                let Some(cpu_ns) = self.fs.cpu_usage_ns(&rec.cgroup_path) else {
                    continue;
                };
                seen.insert(rec.cgroup_path.clone(), cpu_ns);
                let (Some(prev), Some(e)) = (self.containers.get(&rec.cgroup_path), elapsed) else {
                    continue;
                };
                containers.push(ContainerUsage {
                    name: name.to_string(),
                    usage: Usage {
                        cpu_nano_cores: rate_nano_cores(*prev, cpu_ns, e),
                        memory_bytes: self.fs.memory_working_set(&rec.cgroup_path).unwrap_or(0),
                    },
                });
            }
            if !containers.is_empty() {
                pods.push(PodUsage {
                    namespace: pod.namespace,
                    name: pod.name,
                    uid: pod.uid,
                    containers,
                });
            }
        }
        self.containers = seen;
        let elapsed = elapsed?;
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Some(Report {
            timestamp: k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now().to_string()),
            window_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            usage: Usage {
                cpu_nano_cores: node_cpu,
                memory_bytes: node_mem,
            },
            pods,
        })
    }
}

/// Push a report to the host every `interval` until the task is aborted.
pub async fn run(client: kube::Client, node_name: String, data_dir: PathBuf, interval: Duration) {
    let mut collector = Collector::new(CgroupFs::host(), PathBuf::from("/proc"), data_dir);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(report) = collector.sample() else {
            continue;
        };
        if let Err(e) = push(&client, &node_name, &report).await {
            tracing::debug!(error = %e, "pushing resource metrics");
        }
    }
}

async fn push(client: &kube::Client, node: &str, report: &Report) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(report).map_err(kube::Error::SerdeError)?;
    let req = http::Request::put(format!("/shoal/v1/nodes/{node}/metrics"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let t = "cpu  100 5 20 1000 50 1 2 3 7 0\ncpu0 50 2 10 500 25 0 1 1 0 0\n";
        let c = parse_proc_stat(t).unwrap();
        assert_eq!(c.total, 100 + 5 + 20 + 1000 + 50 + 1 + 2 + 3);
        assert_eq!(c.busy, 100 + 5 + 20 + 1 + 2 + 3);
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn meminfo_in_use_is_total_minus_available() {
        let t = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(parse_meminfo(t), Some(10000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn flat_keyed_finds_exact_keys() {
        let t = "inactive_file 4096\ntotal_inactive_file 8192\nusage_usec 12\n";
        assert_eq!(flat_keyed(t, "inactive_file"), Some(4096));
        assert_eq!(flat_keyed(t, "total_inactive_file"), Some(8192));
        assert_eq!(flat_keyed(t, "usage_usec"), Some(12));
        assert_eq!(flat_keyed(t, "usage"), None);
        assert_eq!(working_set(100, 300), 0);
        assert_eq!(working_set(300, 100), 200);
    }

    #[test]
    fn rates_over_the_window() {
        // Half a core for two seconds.
        assert_eq!(
            rate_nano_cores(1_000, 1_000 + 1_000_000_000, Duration::from_secs(2)),
            500_000_000
        );
        // A counter that went backwards (a new cgroup) gives no rate.
        assert_eq!(rate_nano_cores(10, 5, Duration::from_secs(1)), 0);
        assert_eq!(rate_nano_cores(0, 5, Duration::ZERO), 0);
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn reads_v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let v1 = CgroupFs {
            root: d.path().join("v1"),
            unified: false,
        };
        write(
            &v1.root.join("cpuacct/shoal/podu/c/cpuacct.usage"),
            "123456\n",
        );
        write(
            &v1.root.join("memory/shoal/podu/c/memory.usage_in_bytes"),
            "10000\n",
        );
        write(
            &v1.root.join("memory/shoal/podu/c/memory.stat"),
            "inactive_file 1\ntotal_inactive_file 3000\n",
        );
        assert_eq!(v1.cpu_usage_ns("/shoal/podu/c"), Some(123456));
        assert_eq!(v1.memory_working_set("/shoal/podu/c"), Some(7000));
        assert_eq!(v1.cpu_usage_ns("/shoal/podu/missing"), None);

        let v2 = CgroupFs {
            root: d.path().join("v2"),
            unified: true,
        };
        write(
            &v2.root.join("shoal/podu/c/cpu.stat"),
            "usage_usec 250\nuser_usec 200\n",
        );
        write(&v2.root.join("shoal/podu/c/memory.current"), "9000\n");
        write(
            &v2.root.join("shoal/podu/c/memory.stat"),
            "anon 1\ninactive_file 1000\n",
        );
        assert_eq!(v2.cpu_usage_ns("/shoal/podu/c"), Some(250_000));
        assert_eq!(v2.memory_working_set("/shoal/podu/c"), Some(8000));
    }

    #[test]
    fn collector_reports_latest_attempts_of_running_pods() {
        let d = tempfile::tempdir().unwrap();
        let fs = CgroupFs {
            root: d.path().join("cg"),
            unified: true,
        };
        let proc_dir = d.path().join("proc");
        write(&proc_dir.join("stat"), "cpu  100 0 0 100 0 0 0 0 0 0\n");
        write(
            &proc_dir.join("meminfo"),
            "MemTotal: 10 kB\nMemAvailable: 4 kB\n",
        );
        let data = d.path().join("data");
        let pod_dir = state::pod_dir(&data, "u1");
        state::save_pod(
            &pod_dir,
            &state::PodRecord {
                uid: "u1".into(),
                namespace: "ns".into(),
                name: "p".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        for (id, attempt) in [("a0", 0), ("a1", 1)] {
            state::save_container(
                &pod_dir,
                &state::ContainerRecord {
                    id: id.into(),
                    name: "app".into(),
                    init: false,
                    attempt,
                    image_ref: "busybox".into(),
                    image_id: "sha256:x".into(),
                    created_at: now.clone(),
                    started_at: None,
                    cgroup_path: format!("/shoal/podu1/{id}"),
                },
            )
            .unwrap();
        }
        write(
            &fs.root.join("shoal/podu1/a0/cpu.stat"),
            "usage_usec 999999999\n",
        );
        write(
            &fs.root.join("shoal/podu1/a1/cpu.stat"),
            "usage_usec 1000\n",
        );
        write(&fs.root.join("shoal/podu1/a1/memory.current"), "4096\n");
        let mut c = Collector::new(fs.clone(), proc_dir.clone(), data);
        assert!(c.sample().is_none(), "the first sample only primes");
        std::thread::sleep(Duration::from_millis(20));
        write(
            &fs.root.join("shoal/podu1/a1/cpu.stat"),
            "usage_usec 11000\n",
        );
        write(&proc_dir.join("stat"), "cpu  200 0 0 200 0 0 0 0 0 0\n");
        let r = c.sample().unwrap();
        assert_eq!(r.pods.len(), 1);
        let p = &r.pods[0];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
            ("ns", "p", "u1")
        );
        assert_eq!(p.containers.len(), 1);
        assert_eq!(p.containers[0].name, "app");
        assert_eq!(p.containers[0].usage.memory_bytes, 4096);
        // 10 ms of CPU in at least 20 ms of wall time: at most half a core.
        let cpu = p.containers[0].usage.cpu_nano_cores;
        assert!(cpu > 0 && cpu <= 500_000_000, "{cpu}");
        assert!(r.usage.cpu_nano_cores > 0);
        assert_eq!(r.usage.memory_bytes, 6 * 1024);
        assert!(r.window_seconds > 0.0);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["pods"][0]["containers"][0]["usage"]["cpuNanoCores"].is_u64());
        assert!(json["usage"]["memoryBytes"].is_u64());
    }
}
