//! The OCI runtime spec for one container, from the pod spec, the image
//! config and what the agent resolved (environment, volume mounts, sandbox).
//! Pure: no I/O, so it is unit-tested directly.

use super::env::expand;
use super::quantity;
use crate::image::ImageConfig;
use crate::runtime::oci::{
    Capabilities, Cpu, DeviceRule, Linux, Memory, Mount, Namespace, Process, Resources, Root, Spec,
    User,
};
use crate::runtime::SandboxInfo;
use k8s_openapi::api::core::v1::{Container, Pod};

/// containerd's default capability set, which Kubernetes containers get.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines (for `add: [ALL]` and privileged containers).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// PATH for images that do not set one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the spec is built from.
pub struct SpecInput<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container (regular or init).
    pub container: &'a Container,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The resolved Kubernetes environment (from `env`/`envFrom`), in order.
    pub env: &'a [(String, String)],
    /// Extra mounts (volumes, /etc/hosts, termination log), in order.
    pub mounts: Vec<Mount>,
    /// The pod's sandbox, whose namespaces the container joins.
    pub sandbox: &'a SandboxInfo,
    /// cgroup path for the container.
    pub cgroup_path: String,
    /// The image's user resolved to numbers, if the image names one.
    pub image_user: Option<(u32, u32)>,
}

fn normalize_cap(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability set after the container's add/drop on top of the defaults.
pub fn capabilities(container: &Container) -> Vec<String> {
    let sc = container.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        return ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let add: Vec<String> = caps
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|s| normalize_cap(s))
        .collect();
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.clone())
        .unwrap_or_default()
        .iter()
        .map(|s| normalize_cap(s))
        .collect();
    let mut set: Vec<String> = if add.iter().any(|c| c == "CAP_ALL") {
        ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    } else {
        let mut s: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        for a in add {
            if !s.contains(&a) {
                s.push(a);
            }
        }
        s
    };
    if drop.iter().any(|c| c == "CAP_ALL") {
        set.clear();
    }
    set.retain(|c| !drop.contains(c));
    set
}

/// argv from command/args and the image's entrypoint/cmd, with `$(VAR)` expanded.
pub fn argv(
    container: &Container,
    image: &ImageConfig,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let (command, args) = match (command.is_empty(), args.is_empty()) {
        (true, true) => (image.entrypoint.clone(), image.cmd.clone()),
        (true, false) => (image.entrypoint.clone(), args),
        (false, _) => (command, args),
    };
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let out: Vec<String> = command
        .iter()
        .chain(args.iter())
        .map(|s| expand(s, lookup))
        .collect();
    if out.is_empty() {
        return Err("no command specified".into());
    }
    Ok(out)
}

/// Resolve an image `USER` (`uid`, `uid:gid`, `name`, `name:group`) with the
/// image's /etc/passwd and /etc/group contents.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |db: &str, name: &str| -> Option<(u32, u32)> {
        db.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| {
                let id = f[2].parse().ok()?;
                let gid = f[3].parse().unwrap_or(0);
                Some((id, gid))
            })?
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2] == u).then(|| f[3].parse().ok())?
                })
                .unwrap_or(0),
        ),
        Err(_) => lookup(passwd, u).ok_or_else(|| format!("user {u:?} not found in image"))?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                })
                .ok_or_else(|| format!("group {g:?} not found in image"))?,
        },
    };
    Ok((uid, gid))
}

fn resources(container: &Container) -> Resources {
    let res = container.resources.as_ref();
    let get = |which: &str, name: &str| {
        let map = if which == "limits" {
            res.and_then(|r| r.limits.as_ref())
        } else {
            res.and_then(|r| r.requests.as_ref())
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let memory = get("limits", "memory")
        .and_then(|q| quantity::bytes(&q))
        .map(|limit| Memory { limit });
    let cpu_request = get("requests", "cpu")
        .or_else(|| get("limits", "cpu"))
        .and_then(|q| quantity::millicpu(&q));
    let cpu_limit = get("limits", "cpu").and_then(|q| quantity::millicpu(&q));
    const PERIOD: u64 = 100_000;
    // Kubernetes' conversions: 1024 shares per CPU (at least 2), quota per
    // 100 ms period (at least 1 ms).
    let shares = cpu_request
        .map(|m| ((m * 1024) / 1000).max(2) as u64)
        .unwrap_or(2);
    let cpu = Cpu {
        shares: Some(shares),
        quota: cpu_limit.map(|m| (m * PERIOD as i64 / 1000).max(1000)),
        period: cpu_limit.map(|_| PERIOD),
    };
    Resources {
        devices: vec![DeviceRule {
            allow: false,
            access: "rwm".into(),
        }],
        memory,
        cpu: Some(cpu),
    }
}

fn base_mounts(readonly_sys: bool) -> Vec<Mount> {
    let m = |dest: &str, kind: &str, src: &str, opts: &[&str]| Mount {
        destination: dest.into(),
        kind: kind.into(),
        source: src.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
    };
    let sys_mode = if readonly_sys { "ro" } else { "rw" };
    vec![
        m("/proc", "proc", "proc", &[]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// The container's namespaces: its own pid and mount namespaces, the
/// sandbox's network, IPC and UTS ones, and the host's where the pod asks for
/// `hostNetwork` (which also means the node's hostname), `hostIPC` or `hostPID`.
fn namespaces(pod: &Pod, ns: impl Fn(&str, Option<&str>) -> Namespace) -> Vec<Namespace> {
    let spec = pod.spec.as_ref();
    let host = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f) == Some(true)
    };
    let mut out = vec![ns("mount", None)];
    if !host(|s| s.host_pid) {
        out.push(ns("pid", None));
    }
    if !host(|s| s.host_network) {
        out.push(ns("network", Some("net")));
        out.push(ns("uts", Some("uts")));
    }
    if !host(|s| s.host_ipc) {
        out.push(ns("ipc", Some("ipc")));
    }
    out
}

/// Build the spec. Errors are user-facing (`CreateContainerConfigError`).
pub fn build(input: SpecInput<'_>) -> Result<Spec, String> {
    let SpecInput {
        pod,
        container,
        image,
        env,
        mounts,
        sandbox,
        cgroup_path,
        image_user,
    } = input;
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged) == Some(true);

    let (image_uid, image_gid) = image_user.unwrap_or((0, 0));
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user))
        .map(|u| u as u32)
        .unwrap_or(image_uid);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group))
        .map(|g| g as u32)
        .unwrap_or(image_gid);
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    if non_root && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let mut additional_gids: Vec<u32> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        additional_gids.push(fs_group as u32);
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();

    // Image environment first, then Kubernetes' (which wins on conflicts).
    let mut full_env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(e) = full_env.iter_mut().find(|(n, _)| n == k) {
            e.1 = v.to_string();
        } else {
            full_env.push((k.to_string(), v.to_string()));
        }
    };
    set("PATH", DEFAULT_PATH);
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    set("HOSTNAME", pod.metadata.name.as_deref().unwrap_or_default());
    for (k, v) in env {
        set(k, v);
    }

    let args = argv(container, image, env)?;
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(format!("workingDir {cwd:?} must be absolute"));
    }
    let caps = capabilities(container);
    let no_new_privileges =
        !privileged && sc.and_then(|s| s.allow_privilege_escalation) == Some(false);

    let mut all_mounts = base_mounts(!privileged);
    all_mounts.extend(mounts);

    let ns = |kind: &str, join: Option<&str>| Namespace {
        kind: kind.into(),
        path: join.map(|j| sandbox.ns_path(j)),
    };
    Ok(Spec {
        oci_version: "1.0.2".into(),
        process: Process {
            terminal: false,
            user: User {
                uid,
                gid,
                additional_gids,
            },
            args,
            env: full_env
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            cwd,
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
            },
            // Inherited from the agent: a fixed RLIMIT_NOFILE above the
            // machine's nr_open makes runc fail, and kubelet sets none either.
            rlimits: vec![],
            no_new_privileges,
        },
        root: Root {
            path: "rootfs".into(),
            readonly: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        },
        hostname: None,
        mounts: all_mounts,
        linux: Linux {
            resources: resources(container),
            cgroups_path: cgroup_path,
            namespaces: namespaces(pod, ns),
            masked_paths: if privileged {
                vec![]
            } else {
                [
                    "/proc/acpi",
                    "/proc/asound",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            },
            readonly_paths: if privileged {
                vec![]
            } else {
                [
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: serde_json::Value, extra: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": containers});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
            "spec": spec
        }))
        .unwrap()
    }

    fn build_one(p: &Pod, image: &ImageConfig, env: &[(String, String)]) -> Result<Spec, String> {
        let c = &p.spec.as_ref().unwrap().containers[0];
        build(SpecInput {
            pod: p,
            container: c,
            image,
            env,
            mounts: vec![],
            sandbox: &SandboxInfo {
                pid: 42,
                start_time: 7,
            },
            cgroup_path: "/shoal/podu1/abc".into(),
            image_user: None,
        })
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/entry".into()],
            cmd: vec!["default-arg".into()],
            env: vec![
                "PATH=/bin".into(),
                "FROM_IMAGE=1".into(),
                "SHARED=image".into(),
            ],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn command_args_and_image_defaults() {
        let env = vec![("NAME".to_string(), "x".to_string())];
        let p = pod(json!([{"name": "c", "image": "i"}]), json!({}));
        assert_eq!(
            build_one(&p, &image(), &env).unwrap().process.args,
            vec!["/bin/entry", "default-arg"]
        );
        let p = pod(
            json!([{"name": "c", "image": "i", "args": ["a", "$(NAME)"]}]),
            json!({}),
        );
        assert_eq!(
            build_one(&p, &image(), &env).unwrap().process.args,
            vec!["/bin/entry", "a", "x"]
        );
        let p = pod(
            json!([{"name": "c", "image": "i", "command": ["sh", "-c"], "args": ["echo $(NAME) $$(NAME) $(UNSET)"]}]),
            json!({}),
        );
        assert_eq!(
            build_one(&p, &image(), &env).unwrap().process.args,
            vec!["sh", "-c", "echo x $(NAME) $(UNSET)"]
        );
        let empty = ImageConfig::default();
        let p = pod(json!([{"name": "c", "image": "i"}]), json!({}));
        assert!(build_one(&p, &empty, &env)
            .unwrap_err()
            .contains("no command"));
    }

    #[test]
    fn env_merges_image_then_pod_and_cwd_defaults() {
        let env = vec![("SHARED".to_string(), "pod".to_string())];
        let p = pod(json!([{"name": "c", "image": "i"}]), json!({}));
        let s = build_one(&p, &image(), &env).unwrap();
        assert!(s.process.env.contains(&"PATH=/bin".to_string()));
        assert!(s.process.env.contains(&"FROM_IMAGE=1".to_string()));
        assert!(s.process.env.contains(&"SHARED=pod".to_string()));
        assert!(s.process.env.contains(&"HOSTNAME=web-1".to_string()));
        assert!(!s.process.env.contains(&"SHARED=image".to_string()));
        assert_eq!(s.process.cwd, "/srv");
        let p = pod(
            json!([{"name": "c", "image": "i", "workingDir": "/work"}]),
            json!({}),
        );
        assert_eq!(build_one(&p, &image(), &env).unwrap().process.cwd, "/work");
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let p = pod(
            json!([{"name": "c", "image": "i", "resources": {
                "limits": {"cpu": "500m", "memory": "64Mi"},
                "requests": {"cpu": "250m"}}}]),
            json!({}),
        );
        let s = build_one(&p, &image(), &[]).unwrap();
        let r = &s.linux.resources;
        assert_eq!(r.memory.as_ref().unwrap().limit, 64 * 1024 * 1024);
        let cpu = r.cpu.as_ref().unwrap();
        assert_eq!(cpu.shares, Some(256));
        assert_eq!(cpu.quota, Some(50_000));
        assert_eq!(cpu.period, Some(100_000));
        assert_eq!(s.linux.cgroups_path, "/shoal/podu1/abc");
        // No resources: minimal shares, no limits.
        let p = pod(json!([{"name": "c", "image": "i"}]), json!({}));
        let s = build_one(&p, &image(), &[]).unwrap();
        assert!(s.linux.resources.memory.is_none());
        assert_eq!(s.linux.resources.cpu.as_ref().unwrap().shares, Some(2));
        assert_eq!(s.linux.resources.cpu.as_ref().unwrap().quota, None);
    }

    #[test]
    fn joins_the_sandbox_namespaces() {
        let p = pod(json!([{"name": "c", "image": "i"}]), json!({}));
        let s = build_one(&p, &image(), &[]).unwrap();
        let ns: Vec<(String, Option<String>)> = s
            .linux
            .namespaces
            .iter()
            .map(|n| (n.kind.clone(), n.path.clone()))
            .collect();
        assert!(ns.contains(&("network".into(), Some("/proc/42/ns/net".into()))));
        assert!(ns.contains(&("ipc".into(), Some("/proc/42/ns/ipc".into()))));
        assert!(ns.contains(&("uts".into(), Some("/proc/42/ns/uts".into()))));
        assert!(ns.contains(&("pid".into(), None)));
        assert!(ns.contains(&("mount".into(), None)));
        let p = pod(
            json!([{"name": "c", "image": "i"}]),
            json!({"hostNetwork": true, "hostPID": true}),
        );
        let kinds: Vec<String> = build_one(&p, &image(), &[])
            .unwrap()
            .linux
            .namespaces
            .iter()
            .map(|n| n.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            vec!["mount", "ipc"],
            "host namespaces are not unshared"
        );
        // The spec serializes with OCI's field names.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["linux"]["cgroupsPath"], "/shoal/podu1/abc");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["process"]["noNewPrivileges"], false);
    }

    #[test]
    fn security_context_user_caps_and_readonly_root() {
        let p = pod(
            json!([{"name": "c", "image": "i", "securityContext": {
                "runAsUser": 1000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["KILL", "cap_chown"]}}}]),
            json!({"securityContext": {"runAsGroup": 3000, "supplementalGroups": [5], "fsGroup": 2000}}),
        );
        let s = build_one(&p, &image(), &[]).unwrap();
        assert_eq!(s.process.user.uid, 1000);
        assert_eq!(s.process.user.gid, 3000);
        assert_eq!(s.process.user.additional_gids, vec![5, 2000]);
        assert!(s.root.readonly);
        assert!(s.process.no_new_privileges);
        let caps = &s.process.capabilities.bounding;
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(caps.contains(&"CAP_SETUID".to_string()));

        let p = pod(
            json!([{"name": "c", "image": "i", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]),
            json!({"securityContext": {"runAsNonRoot": true}}),
        );
        assert!(build_one(&p, &image(), &[])
            .unwrap_err()
            .contains("runAsNonRoot"));
        let p = pod(
            json!([{"name": "c", "image": "i", "securityContext": {"runAsUser": 5, "capabilities": {"drop": ["ALL"]}}}]),
            json!({}),
        );
        assert!(build_one(&p, &image(), &[])
            .unwrap()
            .process
            .capabilities
            .bounding
            .is_empty());
    }

    #[test]
    fn image_users_resolve_through_passwd() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:44::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("www", passwd, group).unwrap(), (33, 44));
        assert_eq!(resolve_user("www:staff", passwd, group).unwrap(), (33, 50));
        assert_eq!(resolve_user("1234", passwd, group).unwrap(), (1234, 0));
        assert_eq!(resolve_user("33:7", passwd, group).unwrap(), (33, 7));
        assert!(resolve_user("nobody", passwd, group).is_err());
    }
}
