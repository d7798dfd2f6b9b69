//! End to end: the StatefulSet controller against a real `shoal server`, with
//! a simulated node and kubelet (tests/sim) that make bound pods Running and
//! Ready and finish graceful deletions. Order is checked on the pod watch:
//! every state the watch shows must respect it. Waits are on watches.

mod common;
mod sim;

use common::Server;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

const KUBECTL: &str = "/usr/bin/kubectl";
const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

fn have_kubectl() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    eprintln!("SKIP: {KUBECTL} is not installed; this test drives the real kubectl");
    false
}

/// Run kubectl against the server; (success, stdout, stderr).
async fn kubectl(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args(["-n", NS, "--request-timeout=30s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(s: &Server, args: &[&str]) -> String {
    let (good, out, err) = kubectl(s, args).await;
    assert!(
        good,
        "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// A server with one simulated node and a kubelet for the test namespace.
async fn cluster(dir: &std::path::Path) -> (Server, kube::Client) {
    let s = Server::start(dir);
    let client = s.client().await;
    // The node reports a local-path storage root, as its agent would, so the
    // default StorageClass provisions (and binds) the claims in the host.
    let mut node = sim::node("node-0", json!([]));
    node.metadata.annotations = Some(
        [(
            "storage.shoal.dev/local-path-root".to_string(),
            dir.join("storage").display().to_string(),
        )]
        .into(),
    );
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    sim::Kubelet::default().start(client.clone(), NS);
    (s, client)
}

fn web(replicas: i32, extra: Value) -> StatefulSet {
    let mut v = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas, "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [{"name": "app", "image": sim::IMAGE_RUN,
                    "volumeMounts": [{"name": "www", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(v).unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && p.metadata.deletion_timestamp.is_none()
}

fn label<'a>(p: &'a Pod, k: &str) -> &'a str {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(k))
        .map(String::as_str)
        .unwrap_or("")
}

fn claim_of(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "www")?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

fn names(set: &BTreeMap<String, Pod>) -> Vec<&str> {
    set.keys().map(String::as_str).collect()
}

/// Wait until web-0..web-(n-1) are Ready (and nothing else exists),
/// checking on every watched state that no ordinal exists before all lower
/// ones are Ready.
async fn wait_ordered(pods: &Api<Pod>, n: usize) -> BTreeMap<String, Pod> {
    sim::watch_until(
        pods,
        Some("app=web"),
        WAIT,
        |set| {
            for (name, _) in set.iter() {
                let ord: usize = name.trim_start_matches("web-").parse().unwrap();
                for lower in 0..ord {
                    let l = set.get(&format!("web-{lower}"));
                    assert!(
                        l.is_some_and(ready),
                        "{name} exists while web-{lower} is not Ready: {:?}",
                        names(set)
                    );
                }
            }
        },
        |set| set.len() == n && set.values().all(ready),
    )
    .await
}

async fn sts_status(sets: &Api<StatefulSet>, what: &str, cond: impl Fn(&StatefulSet) -> bool) {
    tokio::time::timeout(
        WAIT,
        await_condition(sets.clone(), "web", move |s: Option<&StatefulSet>| {
            s.is_some_and(&cond)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("statefulset never reached: {what}"))
    .unwrap();
}

#[tokio::test]
async fn ordered_start_claims_restart_and_scale_down() {
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path()).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);

    sets.create(&PostParams::default(), &web(3, json!({})))
        .await
        .unwrap();
    // Defaults as Kubernetes sets them.
    let created = sets.get("web").await.unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(strategy.rolling_update.as_ref().unwrap().partition, Some(0));
    assert_eq!(spec.revision_history_limit, Some(10));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));

    // web-0 is Ready before web-1 exists, and so on.
    let up = wait_ordered(&pods, 3).await;
    for (i, name) in ["web-0", "web-1", "web-2"].iter().enumerate() {
        let p = &up[*name];
        assert_eq!(label(p, "statefulset.kubernetes.io/pod-name"), *name);
        assert_eq!(label(p, "apps.kubernetes.io/pod-index"), i.to_string());
        assert!(label(p, "controller-revision-hash").starts_with("web-"));
        let ps = p.spec.as_ref().unwrap();
        assert_eq!(ps.hostname.as_deref(), Some(*name));
        assert_eq!(ps.subdomain.as_deref(), Some("web"));
        assert_eq!(claim_of(p), Some(format!("www-{name}")));
    }
    let claims = pvcs.list(&ListParams::default()).await.unwrap();
    let mut claim_names: Vec<String> = claims
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    claim_names.sort();
    assert_eq!(claim_names, ["www-web-0", "www-web-1", "www-web-2"]);
    let claim1_uid = pvcs.get("www-web-1").await.unwrap().metadata.uid;

    sts_status(&sets, "3 ready", |s| {
        let st = s.status.as_ref();
        st.is_some_and(|st| {
            st.ready_replicas == Some(3)
                && st.current_replicas == Some(3)
                && st.updated_replicas == Some(3)
                && st.available_replicas == Some(3)
                && st.current_revision.is_some()
                && st.current_revision == st.update_revision
                && st.observed_generation == s.metadata.generation
        })
    })
    .await;
    if have_kubectl() {
        let out = ok(&s, &["rollout", "status", "sts/web", "--timeout=30s"]).await;
        assert!(out.contains("roll out complete"), "{out}");
        let out = ok(&s, &["get", "sts", "web"]).await;
        assert!(out.contains("3/3"), "{out}");
    }

    // A deleted member comes back under its name with the same claim.
    let old_uid = up["web-1"].metadata.uid.clone();
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let back = sim::watch_until(
        &pods,
        Some("app=web"),
        WAIT,
        |_| {},
        |set| {
            set.get("web-1")
                .is_some_and(|p| p.metadata.uid != old_uid && ready(p))
        },
    )
    .await;
    assert_eq!(claim_of(&back["web-1"]), Some("www-web-1".into()));
    assert_eq!(
        pvcs.get("www-web-1").await.unwrap().metadata.uid,
        claim1_uid
    );

    // Scale down: web-2 goes before web-1 is touched; claims stay.
    if have_kubectl() {
        ok(&s, &["scale", "sts/web", "--replicas=1"]).await;
    } else {
        sets.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    }
    sim::watch_until(
        &pods,
        Some("app=web"),
        WAIT,
        |set| {
            let web1_leaving = set
                .get("web-1")
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if web1_leaving {
                assert!(
                    !set.contains_key("web-2"),
                    "web-1 is being removed while web-2 still exists: {:?}",
                    names(set)
                );
            }
            assert!(
                set.get("web-0").is_some_and(ready),
                "web-0 must stay: {:?}",
                names(set)
            );
        },
        |set| names(set) == ["web-0"],
    )
    .await;
    for c in ["www-web-0", "www-web-1", "www-web-2"] {
        assert!(
            pvcs.get_opt(c).await.unwrap().is_some(),
            "claim {c} was deleted on scale down"
        );
    }
    sts_status(&sets, "1 replica", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.replicas == 1 && st.ready_replicas == Some(1))
    })
    .await;

    // Scaling back up reuses the kept claims.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let again = wait_ordered(&pods, 3).await;
    assert_eq!(claim_of(&again["web-2"]), Some("www-web-2".into()));
    assert_eq!(
        pvcs.get("www-web-1").await.unwrap().metadata.uid,
        claim1_uid
    );
    assert_eq!(
        pvcs.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
}

#[tokio::test]
async fn rolling_update_respects_the_partition_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (s, client) = cluster(dir.path()).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let revs: Api<ControllerRevision> = Api::namespaced(client.clone(), NS);

    sets.create(&PostParams::default(), &web(3, json!({})))
        .await
        .unwrap();
    let before = wait_ordered(&pods, 3).await;
    let rev1 = label(&before["web-0"], "controller-revision-hash").to_string();

    // New image with partition 1: web-2 then web-1 are replaced, web-0 is kept.
    let patch = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [{"name": "app", "image": "test/run:v2"}]}}}});
    sets.patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
    let image = |p: &Pod| {
        p.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    let rolled = sim::watch_until(
        &pods,
        Some("app=web"),
        WAIT,
        |set| {
            // Highest first: web-1 is not replaced before web-2 is updated and Ready.
            let web1_new = set.get("web-1").is_some_and(|p| image(p) == "test/run:v2");
            let web1_gone = set
                .get("web-1")
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if web1_new || web1_gone {
                let w2 = set.get("web-2");
                assert!(
                    w2.is_some_and(|p| ready(p) && image(p) == "test/run:v2"),
                    "web-1 replaced before web-2 was updated and Ready"
                );
            }
            if let Some(p) = set.get("web-0") {
                assert_eq!(image(p), sim::IMAGE_RUN, "web-0 is below the partition");
            }
        },
        |set| {
            set.len() == 3
                && set.values().all(ready)
                && ["web-1", "web-2"]
                    .iter()
                    .all(|n| image(&set[*n]) == "test/run:v2")
        },
    )
    .await;
    assert_eq!(rolled["web-0"].metadata.uid, before["web-0"].metadata.uid);
    let rev2 = label(&rolled["web-2"], "controller-revision-hash").to_string();
    assert_ne!(rev1, rev2);
    sts_status(&sets, "partitioned rollout", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.updated_replicas == Some(2)
                && st.current_replicas == Some(1)
                && st.current_revision.as_deref() == Some(rev1.as_str())
                && st.update_revision.as_deref() == Some(rev2.as_str())
        })
    })
    .await;
    let listed = revs
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2, "one ControllerRevision per template");
    if have_kubectl() {
        let out = ok(&s, &["rollout", "status", "sts/web", "--timeout=30s"]).await;
        assert!(
            out.contains("partitioned roll out complete: 2 new pods"),
            "{out}"
        );
    }

    // Partition 0 finishes the rollout.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    sts_status(&sets, "rollout complete", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.current_revision.as_deref() == Some(rev2.as_str())
                && st.updated_replicas == Some(3)
                && st.ready_replicas == Some(3)
        })
    })
    .await;
    if !have_kubectl() {
        return;
    }
    let out = ok(&s, &["rollout", "status", "sts/web", "--timeout=30s"]).await;
    assert!(out.contains("roll out complete"), "{out}");
    let history = ok(&s, &["rollout", "history", "sts/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    // Undo goes back to the first template, as revision 3.
    ok(&s, &["rollout", "undo", "sts/web"]).await;
    sim::watch_until(
        &pods,
        Some("app=web"),
        WAIT,
        |_| {},
        |set| set.len() == 3 && set.values().all(|p| ready(p) && image(p) == sim::IMAGE_RUN),
    )
    .await;
    sts_status(&sets, "rolled back", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.current_revision.as_deref() == Some(rev1.as_str()))
    })
    .await;
    let history = ok(&s, &["rollout", "history", "sts/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
}

#[tokio::test]
async fn bad_statefulsets_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, client) = cluster(dir.path()).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    for (extra, field) in [
        (
            json!({"podManagementPolicy": "Sometimes"}),
            "spec.podManagementPolicy",
        ),
        (
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": -1}}}),
            "spec.updateStrategy.rollingUpdate.partition",
        ),
        (
            json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Never"}}),
            "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
        ),
    ] {
        let err = sets
            .create(&PostParams::default(), &web(1, extra))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(s.message.contains(field), "{}", s.message);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    // serviceName cannot change after creation.
    sets.create(&PostParams::default(), &web(0, json!({})))
        .await
        .unwrap();
    let err = sets
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceName": "other"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("updates to statefulset spec")),
        "{err:?}"
    );
}

fn with_image(mut set: StatefulSet, name: &str, image: &str) -> StatefulSet {
    set.metadata.name = Some(name.into());
    let spec = set.spec.as_mut().unwrap();
    spec.selector.match_labels = Some([("app".to_string(), name.to_string())].into());
    let t = &mut spec.template;
    t.metadata.as_mut().unwrap().labels = Some([("app".to_string(), name.to_string())].into());
    t.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    set
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[tokio::test]
async fn parallel_starts_all_while_ordered_ready_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, client) = cluster(dir.path()).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // Parallel: all three run although none ever becomes Ready, each with
    // its own WaitForFirstConsumer claim bound at the same time.
    let par = with_image(
        web(3, json!({"podManagementPolicy": "Parallel"})),
        "par",
        sim::IMAGE_UNREADY,
    );
    sets.create(&PostParams::default(), &par).await.unwrap();
    let up = sim::watch_until(
        &pods,
        Some("app=par"),
        WAIT,
        |_| {},
        |set| set.len() == 3 && set.values().all(running),
    )
    .await;
    assert!(up.values().all(|p| !ready(p)));
    // Running means bound to a node, which waited for each pod's claim.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    for i in 0..3 {
        let c = pvcs.get(&format!("www-par-{i}")).await.unwrap();
        let phase = c.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Bound", "claim www-par-{i}");
    }

    // OrderedReady: with ord-0 running but not Ready, nothing else is made.
    let ord = with_image(web(3, json!({})), "ord", sim::IMAGE_UNREADY);
    sets.create(&PostParams::default(), &ord).await.unwrap();
    sim::watch_until(
        &pods,
        Some("app=ord"),
        WAIT,
        |_| {},
        |set| set.get("ord-0").is_some_and(running),
    )
    .await;
    // A spec change the controller must observe after that: once the status
    // says so, it has reconciled with ord-0 running and not Ready.
    let changed = sets
        .patch(
            "ord",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minReadySeconds": 1}})),
        )
        .await
        .unwrap();
    let generation = changed.metadata.generation;
    tokio::time::timeout(
        WAIT,
        await_condition(sets.clone(), "ord", move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.observed_generation == generation)
        }),
    )
    .await
    .expect("status observes the new generation")
    .unwrap();
    let listed = pods
        .list(&ListParams::default().labels("app=ord"))
        .await
        .unwrap();
    let names: Vec<String> = listed
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["ord-0"]);
    let st = sets.get_status("ord").await.unwrap().status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas.unwrap_or(0)), (1, 0));
}

#[tokio::test]
async fn failed_member_is_replaced_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, client) = cluster(dir.path()).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let set = with_image(web(1, json!({})), "flaky", sim::IMAGE_FAIL);
    sets.create(&PostParams::default(), &set).await.unwrap();
    let mut uids: Vec<String> = Vec::new();
    let mut saw_failed = false;
    sim::watch_until(
        &pods,
        Some("app=flaky"),
        WAIT,
        |set| assert!(set.keys().all(|n| n == "flaky-0"), "{:?}", names(set)),
        |set| {
            if let Some(p) = set.get("flaky-0") {
                let uid = p.metadata.uid.clone().unwrap();
                if !uids.contains(&uid) {
                    uids.push(uid);
                }
                saw_failed |= p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
            }
            uids.len() >= 2
        },
    )
    .await;
    assert!(saw_failed, "the first pod failed before it was replaced");
    let p = pods.get("flaky-0").await.unwrap();
    assert_eq!(claim_of(&p), Some("www-flaky-0".into()));
}
