//! End to end: Jobs, CronJobs and DaemonSets against a real server, with
//! simulated nodes and the test playing the kubelet (see `sim`).

mod common;
mod sim;

use common::Server;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use sim::{watch_until, Kubelet, IMAGE_FAIL, IMAGE_OK, IMAGE_RUN};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn job(name: &str, spec: Value, image: &str) -> Job {
    let mut spec = spec;
    spec["template"] =
        json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image}]}});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn condition<'a>(j: &'a Job, type_: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn is_active(p: &Pod) -> bool {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && p.metadata.deletion_timestamp.is_none()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Reasons of the events about `name`, once one with `reason` was recorded
/// (events are written after the status they explain).
async fn event_reasons(client: &kube::Client, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let about = |e: &Event| e.involved_object.name.as_deref() == Some(name);
    let set = watch_until(
        &events,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| {
            set.values()
                .any(|e| about(e) && e.reason.as_deref() == Some(reason))
        },
    )
    .await;
    set.into_values()
        .filter(about)
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_retries_failing_pods_up_to_backoff_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    sim::add_nodes(&client, &["n1"]).await;
    let _kubelet = Kubelet::default().start(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("fails", json!({"backoffLimit": 2}), IMAGE_FAIL),
    )
    .await
    .unwrap();

    // Kubernetes' replacement delay is 10 s, then 20 s.
    let done = watch_until(
        &jobs,
        None,
        Duration::from_secs(120),
        |_| {},
        |set| {
            set.get("fails")
                .is_some_and(|j| condition(j, "Failed").is_some())
        },
    )
    .await;
    let j = &done["fails"];
    let failed = condition(j, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert!(condition(j, "FailureTarget").is_some());
    assert!(condition(j, "Complete").is_none());
    let st = j.status.as_ref().unwrap();
    assert_eq!(st.failed, Some(3), "{st:?}");
    assert_eq!(st.active.unwrap_or(0), 0);
    assert!(st.start_time.is_some());

    let list = pods
        .list(&kube::api::ListParams::default().labels("job-name=fails"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3, "backoffLimit + 1 pods");
    assert!(list.items.iter().all(|p| phase(p) == "Failed"));
    for p in &list.items {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Job", Some(true)));
        assert_eq!(owner.uid, j.metadata.uid.clone().unwrap());
    }
    let reasons = event_reasons(&client, "fails", "BackoffLimitExceeded").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "SuccessfulCreate").count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "BackoffLimitExceeded"),
        "{reasons:?}"
    );
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_at_most_parallelism_pods_until_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    sim::add_nodes(&client, &["n1", "n2"]).await;
    let _kubelet = Kubelet::default().start(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Watch the pods from before the Job exists, recording the most active at once.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut max_active = 0;
        let set = watch_until(
            &pods,
            Some("job-name=para"),
            Duration::from_secs(90),
            |set| {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                max_active = max_active.max(set.values().filter(|p| is_active(p)).count());
            },
            |set| set.values().filter(|p| phase(p) == "Succeeded").count() >= 5,
        )
        .await;
        (max_active, set)
    });
    ready_rx.await.unwrap();
    jobs.create(
        &PostParams::default(),
        &job(
            "para",
            json!({"completions": 5, "parallelism": 2}),
            IMAGE_OK,
        ),
    )
    .await
    .unwrap();
    let done = watch_until(
        &jobs,
        None,
        Duration::from_secs(90),
        |_| {},
        |set| {
            set.get("para")
                .is_some_and(|j| condition(j, "Complete").is_some())
        },
    )
    .await;
    let (max_active, pod_set) = watcher.await.unwrap();
    assert!(max_active <= 2, "{max_active} pods were active at once");
    assert_eq!(max_active, 2, "parallelism was used");
    let st = done["para"].status.clone().unwrap();
    assert_eq!(st.succeeded, Some(5));
    assert_eq!(st.failed.unwrap_or(0), 0);
    assert!(st.completion_time.is_some());
    assert_eq!(pod_set.len(), 5, "no pod beyond the completions");
    assert!(condition(&done["para"], "SuccessCriteriaMet").is_some());
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_deadline_fails_it_and_ttl_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    sim::add_nodes(&client, &["n1"]).await;
    let _kubelet = Kubelet::default().start(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // A pod that never ends, past a 2 s deadline: its pod is stopped and the Job fails.
    let spec = json!({"activeDeadlineSeconds": 2, "backoffLimit": 5});
    jobs.create(&PostParams::default(), &job("slow", spec, IMAGE_RUN))
        .await
        .unwrap();
    let done = watch_until(
        &jobs,
        None,
        Duration::from_secs(30),
        |_| {},
        |set| {
            set.get("slow")
                .is_some_and(|j| condition(j, "Failed").is_some())
        },
    )
    .await;
    let failed = condition(&done["slow"], "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    // Failed is recorded only once the pod is gone.
    let left = pods
        .list(&kube::api::ListParams::default().labels("job-name=slow"))
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{:?}", left.items);

    // A finished Job with ttlSecondsAfterFinished goes, with its pods.
    let spec = json!({"ttlSecondsAfterFinished": 1});
    jobs.create(&PostParams::default(), &job("brief", spec, IMAGE_OK))
        .await
        .unwrap();
    let completed = std::cell::Cell::new(false);
    watch_until(
        &jobs,
        None,
        Duration::from_secs(30),
        |set| {
            if set
                .get("brief")
                .is_some_and(|j| condition(j, "Complete").is_some())
            {
                completed.set(true);
            }
        },
        |set| completed.get() && !set.contains_key("brief"),
    )
    .await;
    watch_until(
        &pods,
        Some("job-name=brief"),
        Duration::from_secs(30),
        |_| {},
        |set| set.is_empty(),
    )
    .await;
    assert!(s.stop());
}

fn daemon_set(name: &str, image: &str) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }))
    .unwrap()
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && p.metadata.deletion_timestamp.is_none()
}

/// Nodes with a running pod, and whether each pod is bound.
fn nodes_running(set: &BTreeMap<String, Pod>) -> BTreeSet<String> {
    set.values().filter(|p| running(p)).map(node_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_set_runs_one_pod_per_eligible_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    sim::add_nodes(&client, &["n1", "n2"]).await;
    nodes
        .create(
            &PostParams::default(),
            &sim::node(
                "n3",
                json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
            ),
        )
        .await
        .unwrap();
    let _kubelet = Kubelet::default().start(client.clone(), "default");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    dss.create(&PostParams::default(), &daemon_set("agent", IMAGE_RUN))
        .await
        .unwrap();

    let never_on_n3 = |set: &BTreeMap<String, Pod>| {
        for p in set.values() {
            assert_ne!(node_of(p), "n3", "a pod landed on the tainted node");
            let pinned = serde_json::to_value(p.spec.as_ref().unwrap().affinity.clone()).unwrap();
            assert!(
                !pinned.to_string().contains("\"n3\""),
                "a pod was made for the tainted node"
            );
        }
    };
    let two = ["n1", "n2"]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>();
    let set = watch_until(
        &pods,
        Some("app=agent"),
        Duration::from_secs(60),
        never_on_n3,
        |set| set.len() == 2 && nodes_running(set) == two,
    )
    .await;
    // Kubernetes pins daemon pods with a required matchFields term and lets the scheduler bind.
    let p = set.values().next().unwrap();
    let term = &p
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0];
    assert_eq!(term.match_fields.as_ref().unwrap()[0].key, "metadata.name");
    let tolerations = p.spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));

    let status_is = |want: i32| {
        move |set: &BTreeMap<String, DaemonSet>| {
            set.get("agent")
                .and_then(|d| d.status.clone())
                .is_some_and(|s| {
                    s.desired_number_scheduled == want
                        && s.current_number_scheduled == want
                        && s.number_ready == want
                        && s.updated_number_scheduled == Some(want)
                        && s.number_available == Some(want)
                        && s.number_misscheduled == 0
                })
        }
    };
    let ds = watch_until(&dss, None, Duration::from_secs(30), |_| {}, status_is(2)).await;
    assert_eq!(
        ds["agent"].status.as_ref().unwrap().observed_generation,
        Some(1)
    );

    // A deleted pod comes back on its node.
    let (victim, victim_pod) = set.iter().find(|(_, p)| node_of(p) == "n1").unwrap();
    let victim_uid = victim_pod.metadata.uid.clone();
    pods.delete(victim, &DeleteParams::default()).await.unwrap();
    watch_until(
        &pods,
        Some("app=agent"),
        Duration::from_secs(60),
        never_on_n3,
        |set| {
            set.len() == 2
                && nodes_running(set) == two
                && set.values().all(|p| p.metadata.uid != victim_uid)
        },
    )
    .await;

    // A new node gets its pod.
    nodes
        .create(&PostParams::default(), &sim::node("n4", json!([])))
        .await
        .unwrap();
    let three = ["n1", "n2", "n4"]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>();
    watch_until(
        &pods,
        Some("app=agent"),
        Duration::from_secs(60),
        never_on_n3,
        |set| set.len() == 3 && nodes_running(set) == three,
    )
    .await;
    watch_until(&dss, None, Duration::from_secs(30), |_| {}, status_is(3)).await;

    // A new template rolls out node by node: with maxUnavailable 1, at least
    // two of the three nodes have a running pod at every moment.
    let mut min_running = usize::MAX;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let rollout = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            watch_until(
                &pods,
                Some("app=agent"),
                Duration::from_secs(90),
                |set| {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    min_running = min_running.min(nodes_running(set).len());
                },
                |set| {
                    set.len() == 3
                        && set.values().all(|p| {
                            running(p)
                                && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                                    == Some("test/run2")
                        })
                },
            )
            .await;
            min_running
        })
    };
    ready_rx.await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "test/run2"}]}}}});
    dss.patch("agent", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let min_running = rollout.await.unwrap();
    assert!(
        min_running >= 2,
        "only {min_running} nodes had a running pod during the rollout"
    );
    let ds = watch_until(&dss, None, Duration::from_secs(30), |_| {}, status_is(3)).await;
    assert_eq!(
        ds["agent"].status.as_ref().unwrap().observed_generation,
        Some(2)
    );
    assert!(s.stop());
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_job_starts_a_due_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    sim::add_nodes(&client, &["n1"]).await;
    let _kubelet = Kubelet::default().start(client.clone(), "default");
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"metadata": {"labels": {"from": "tick"}}, "spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE_OK}]}}}},
        },
    }))
    .unwrap();
    cjs.create(&PostParams::default(), &cj).await.unwrap();
    // Pretend the last run was ten minutes ago: a run is due now, without
    // waiting for the next minute.
    let t0 = unix_now();
    let past = k8s_openapi::jiff::Timestamp::from_second(t0 - 600)
        .unwrap()
        .to_string();
    cjs.patch_status(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastScheduleTime": past}})),
    )
    .await
    .unwrap();
    let made = watch_until(
        &jobs,
        Some("from=tick"),
        Duration::from_secs(30),
        |_| {},
        |set| !set.is_empty(),
    )
    .await;
    let t1 = unix_now();
    let (name, j) = made.iter().next().unwrap();
    let minutes: Vec<String> = (t0 / 60..=t1 / 60).map(|m| format!("tick-{m}")).collect();
    assert!(minutes.contains(name), "{name} is not one of {minutes:?}");
    let owner = &j.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("CronJob", "tick", Some(true))
    );
    assert!(j
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp"));

    // The Job runs to completion; the CronJob records it.
    let done = watch_until(
        &cjs,
        None,
        Duration::from_secs(60),
        |_| {},
        |set| {
            set.get("tick")
                .and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.last_successful_time.is_some())
        },
    )
    .await;
    let st = done["tick"].status.clone().unwrap();
    let scheduled = st.last_schedule_time.unwrap().0.as_second();
    let minute: i64 = name.trim_start_matches("tick-").parse().unwrap();
    assert!(
        scheduled >= minute * 60,
        "lastScheduleTime {scheduled} before the run's minute {minute}"
    );
    event_reasons(&client, "tick", "SuccessfulCreate").await;
    assert!(s.stop());
}
