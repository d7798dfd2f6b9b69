//! Pod status from what the agent knows about its containers: container
//! states with exit codes and reasons, the phase (kubelet's rules), and the
//! Initialized / ContainersReady / Ready / PodReadyToStartContainers
//! conditions. Pure, so it is unit-tested directly.

use crate::runtime::ExitInfo;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One run of a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempt {
    /// runc container id.
    pub id: String,
    /// Image reference as resolved.
    pub image_ref: String,
    /// Image digest.
    pub image_id: String,
    /// When its process started (None: never started).
    pub started_at: Option<Time>,
    /// How it ended, if it has.
    pub exit: Option<ExitInfo>,
    /// Contents of its termination message file (or log tail).
    pub termination_message: Option<String>,
}

impl Attempt {
    /// Whether its process is running.
    pub fn running(&self) -> bool {
        self.started_at.is_some() && self.exit.is_none()
    }
}

/// What the agent knows about one container of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Image as written in the spec.
    pub image: String,
    /// The latest attempt.
    pub current: Option<Attempt>,
    /// The attempt before it.
    pub previous: Option<Attempt>,
    /// Why it is waiting (reason, message): back-off, config error, image pull.
    pub waiting: Option<(String, String)>,
    /// Restarts so far.
    pub restart_count: i32,
    /// Whether its startup probe passed (None: no probe decides; running means started).
    pub probe_started: Option<bool>,
    /// Whether its readiness probe passes (None: no probe decides; running means ready).
    pub probe_ready: Option<bool>,
}

/// What the agent knows about the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    /// Init containers, in spec order.
    pub init: Vec<ContainerView>,
    /// Regular containers, in spec order.
    pub containers: Vec<ContainerView>,
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: String,
    /// The node's IP.
    pub host_ip: String,
    /// The pod's IPs, primary first (empty until pod networking assigns them).
    pub pod_ips: Vec<String>,
    /// When the agent first accepted the pod.
    pub start_time: Option<Time>,
    /// Whether the sandbox is up.
    pub sandbox_ready: bool,
}

fn terminated(a: &Attempt, exit: &ExitInfo) -> ContainerStateTerminated {
    let reason = if exit.start_error.is_some() {
        "StartError"
    } else if exit.oom_killed {
        "OOMKilled"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        container_id: Some(format!("shoal://{}", a.id)),
        exit_code: exit.exit_code,
        signal: exit.signal,
        reason: Some(reason.into()),
        message: exit
            .start_error
            .clone()
            .or_else(|| a.termination_message.clone())
            .filter(|m| !m.is_empty()),
        started_at: a.started_at.clone(),
        finished_at: Some(exit.finished_at.clone()),
    }
}

fn last_terminated(a: Option<&Attempt>) -> Option<ContainerState> {
    let a = a?;
    let exit = a.exit.as_ref()?;
    Some(ContainerState {
        terminated: Some(terminated(a, exit)),
        ..Default::default()
    })
}

/// The API status of one container.
pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let cur = v.current.as_ref();
    let waiting = |reason: &str, message: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    };
    let (state, last_state) = match (cur, &v.waiting) {
        // Waiting to run again (back-off) or blocked before starting.
        (Some(a), Some((reason, msg))) if a.exit.is_some() => {
            (waiting(reason, msg), last_terminated(Some(a)))
        }
        (_, Some((reason, msg))) => (waiting(reason, msg), last_terminated(v.previous.as_ref())),
        (Some(a), None) if a.running() => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: a.started_at.clone(),
                }),
                ..Default::default()
            },
            last_terminated(v.previous.as_ref()),
        ),
        (Some(a), None) if a.exit.is_some() => (
            ContainerState {
                terminated: a.exit.as_ref().map(|e| terminated(a, e)),
                ..Default::default()
            },
            last_terminated(v.previous.as_ref()),
        ),
        _ => (waiting("ContainerCreating", ""), None),
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: v.name.clone(),
        image: cur
            .map(|a| a.image_ref.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| v.image.clone()),
        image_id: cur.map(|a| a.image_id.clone()).unwrap_or_default(),
        container_id: cur.map(|a| format!("shoal://{}", a.id)),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        // Probes decide when there are any; otherwise running means ready.
        ready: running && v.probe_ready.unwrap_or(true),
        started: Some(running && v.probe_started.unwrap_or(true)),
        restart_count: v.restart_count,
        ..Default::default()
    }
}

fn exit_code(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

fn last_exit_code(s: &ContainerStatus) -> Option<i32> {
    s.last_state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// The pod phase from container statuses (kubelet's `getPhase`).
pub fn phase(init: &[ContainerStatus], containers: &[ContainerStatus], policy: &str) -> String {
    let mut init_pending = false;
    for s in init {
        match exit_code(s) {
            Some(0) => {}
            Some(_) if policy == "Never" => return "Failed".into(),
            _ => {
                if policy == "Never" && last_exit_code(s).is_some_and(|c| c != 0) {
                    return "Failed".into();
                }
                init_pending = true;
            }
        }
    }
    if init_pending {
        return "Pending".into();
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = s.state.as_ref();
        if st.and_then(|x| x.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(code) = exit_code(s) {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if last_exit_code(s).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
    .into()
}

fn condition(
    previous: &[PodCondition],
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status stays the same.
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// The full pod status. `previous` are the conditions currently on the pod.
pub fn pod_status(view: &PodView, previous: &[PodCondition], now: &Time) -> PodStatus {
    let init: Vec<ContainerStatus> = view.init.iter().map(container_status).collect();
    let containers: Vec<ContainerStatus> = view.containers.iter().map(container_status).collect();
    let phase = phase(&init, &containers, &view.restart_policy);
    let terminal = phase == "Succeeded" || phase == "Failed";

    let not_initialized: Vec<&str> = init
        .iter()
        .filter(|s| exit_code(s) != Some(0))
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = containers
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let initialized = not_initialized.is_empty();
    let ready = unready.is_empty() && !terminal;
    let ready_reason = if terminal {
        Some("PodCompleted")
    } else if ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    let ready_msg = (!ready && !terminal)
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let conditions = vec![
        condition(
            previous,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            previous,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    not_initialized.join(" ")
                )
            }),
            now,
        ),
        condition(
            previous,
            "ContainersReady",
            ready,
            ready_reason,
            ready_msg.clone(),
            now,
        ),
        condition(previous, "Ready", ready, ready_reason, ready_msg, now),
    ];
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: (!view.host_ip.is_empty()).then(|| view.host_ip.clone()),
        host_ips: (!view.host_ip.is_empty()).then(|| {
            vec![HostIP {
                ip: view.host_ip.clone(),
            }]
        }),
        pod_ip: view.pod_ips.first().cloned(),
        pod_ips: (!view.pod_ips.is_empty()).then(|| {
            view.pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: view.start_time.clone(),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(containers),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn exited(code: i32) -> Attempt {
        Attempt {
            id: "a1".into(),
            image_ref: "busybox".into(),
            image_id: "sha256:x".into(),
            started_at: Some(t(0)),
            exit: Some(ExitInfo {
                exit_code: code,
                signal: None,
                finished_at: t(5),
                oom_killed: false,
                start_error: None,
            }),
            termination_message: None,
        }
    }

    fn running() -> Attempt {
        Attempt {
            exit: None,
            ..exited(0)
        }
    }

    fn view(c: ContainerView, policy: &str) -> PodView {
        PodView {
            containers: vec![c],
            restart_policy: policy.into(),
            host_ip: "10.0.0.1".into(),
            sandbox_ready: true,
            ..Default::default()
        }
    }

    fn cv(current: Option<Attempt>) -> ContainerView {
        ContainerView {
            name: "app".into(),
            image: "busybox".into(),
            current,
            ..Default::default()
        }
    }

    #[test]
    fn running_container_makes_a_ready_running_pod() {
        let s = pod_status(&view(cv(Some(running())), "Always"), &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("shoal://a1"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
        let conds = s.conditions.unwrap();
        assert!(conds.iter().all(|c| c.status == "True"), "{conds:?}");
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.1"));
        assert!(s.pod_ip.is_none());
        let dual = PodView {
            pod_ips: vec!["10.244.1.2".into(), "fd00::2".into()],
            ..view(cv(Some(running())), "Always")
        };
        let s = pod_status(&dual, &[], &t(9));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.2"));
        let ips: Vec<String> = s.pod_ips.unwrap().into_iter().map(|p| p.ip).collect();
        assert_eq!(ips, vec!["10.244.1.2", "fd00::2"]);
    }

    #[test]
    fn exit_codes_decide_the_phase_per_restart_policy() {
        let s = pod_status(&view(cv(Some(exited(0))), "Never"), &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        let term = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(
            (term.exit_code, term.reason.as_deref()),
            (0, Some("Completed"))
        );

        let s = pod_status(&view(cv(Some(exited(3))), "Never"), &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let ready = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );

        let s = pod_status(&view(cv(Some(exited(0))), "OnFailure"), &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        // Restarting containers keep the pod Running.
        let s = pod_status(&view(cv(Some(exited(1))), "Always"), &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_termination() {
        let mut c = cv(Some(exited(2)));
        c.waiting = Some(("CrashLoopBackOff".into(), "back-off 20s".into()));
        c.restart_count = 2;
        let s = pod_status(&view(c, "Always"), &[], &t(9));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert!(!cs.ready);
    }

    #[test]
    fn oom_and_start_errors_have_their_reasons() {
        let mut a = exited(137);
        a.exit.as_mut().unwrap().oom_killed = true;
        let cs = container_status(&cv(Some(a)));
        let term = cs.state.unwrap().terminated.unwrap();
        assert_eq!(term.reason.as_deref(), Some("OOMKilled"));
        let mut a = exited(128);
        a.exit.as_mut().unwrap().start_error = Some("exec: no such file".into());
        let term = container_status(&cv(Some(a)))
            .state
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.reason.as_deref(), Some("StartError"));
        assert_eq!(term.message.as_deref(), Some("exec: no such file"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let mut v = view(cv(None), "Always");
        v.init = vec![ContainerView {
            name: "setup".into(),
            current: Some(running()),
            ..Default::default()
        }];
        let s = pod_status(&v, &[], &t(9));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let init = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert_eq!(init.status, "False");
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        v.init[0].current = Some(exited(1));
        v.restart_policy = "Never".into();
        assert_eq!(pod_status(&v, &[], &t(9)).phase.as_deref(), Some("Failed"));
        v.init[0].current = Some(exited(0));
        v.containers[0].current = Some(running());
        assert_eq!(pod_status(&v, &[], &t(9)).phase.as_deref(), Some("Running"));
    }

    #[test]
    fn transition_times_are_kept_while_status_is_unchanged() {
        let v = view(cv(Some(running())), "Always");
        let first = pod_status(&v, &[], &t(1)).conditions.unwrap();
        let second = pod_status(&v, &first, &t(50)).conditions.unwrap();
        assert_eq!(first, second);
        let v2 = view(cv(Some(exited(1))), "Never");
        let third = pod_status(&v2, &second, &t(60)).conditions.unwrap();
        let ready = third.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.last_transition_time, Some(t(60)));
    }
}
