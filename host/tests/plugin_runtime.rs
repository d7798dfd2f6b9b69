//! The plugin runtime against real components built from `plugins/`: the
//! default scheduler works, and faulty plugins (trap, endless loop, unbounded
//! allocation, wrong world) fail only their own call while the host goes on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_host::plugin::artifacts;
use shoal_host::plugin::{
    Limits, LoadedPlugin, ObjectEvent, PluginError, PluginKind, PluginRuntime, RuntimeConfig,
};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Metadata, Subscriber};

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig::default()).expect("runtime")
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn node(name: &str, cpu: &str, memory: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}},
    })
    .to_string()
}

fn node_event(handle: u32, object: String) -> ObjectEvent {
    ObjectEvent {
        kind: "Node".into(),
        handle,
        deleted: false,
        object,
    }
}

fn pod(cpu: &str, memory: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{
            "name": "web",
            "image": "nginx",
            "resources": {"requests": {"cpu": cpu, "memory": memory}},
        }]},
    })
    .to_string()
}

/// Log events seen on this thread, each as "field=value ..." text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    /// Runs `f` with this thread's tracing events recorded here.
    fn during<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::subscriber::with_default(self.clone(), f)
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!("{}={} ", field.name(), value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

// A hand-written subscriber keeps the test free of extra dependencies; it only
// records events, which is all the runtime emits.
impl Subscriber for Captured {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

// The scheduler moves instances to its own thread and shares the runtime.
#[test]
fn runtime_and_instances_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<PluginRuntime>();
    send_sync::<LoadedPlugin>();
    send::<shoal_host::plugin::SchedulerInstance>();
    send::<shoal_host::plugin::AdmissionInstance>();
    send::<shoal_host::plugin::AuthorizerInstance>();
    send::<shoal_host::plugin::RouterInstance>();
}

#[test]
fn default_scheduler_observes_filters_and_scores() {
    let rt = runtime();
    let logs = Captured::default();
    let plugin = rt
        .load(
            "default",
            PluginKind::Scheduler,
            artifacts::DEFAULT_SCHEDULER,
        )
        .unwrap();
    assert!(plugin.digest().starts_with("sha256:"));
    assert_eq!(plugin.digest().len(), "sha256:".len() + 64);
    assert!(!plugin.from_cache(), "no cache dir was configured");

    let mut s = plugin.instantiate_scheduler().unwrap();
    let interests = s.interests().unwrap();
    assert!(interests.iter().any(|k| k == "Node"), "{interests:?}");
    logs.during(|| s.configure("{}")).unwrap();
    s.observe(&[
        node_event(1, node("big", "8", "16Gi")),
        node_event(2, node("small", "2", "4Gi")),
    ])
    .unwrap();

    // A small pod fits both; least-allocated scoring prefers the emptier node.
    let small = pod("500m", "512Mi");
    assert_eq!(s.filter(&small, &[1, 2]).unwrap(), vec![]);
    let scores = s.score(&small, &[1, 2]).unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores.iter().all(|&x| x <= 100), "{scores:?}");
    assert!(
        scores[0] > scores[1],
        "big node should score higher: {scores:?}"
    );

    // A pod needing 4 cpus does not fit the 2-cpu node.
    let rejected = s.filter(&pod("4", "1Gi"), &[1, 2]).unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, 2);
    assert!(rejected[0].1.contains("Insufficient cpu"), "{rejected:?}");

    // A config the plugin refuses is its error, not a trap: the instance lives.
    let err = s.configure(r#"{"nonsense": 1}"#).unwrap_err();
    assert!(matches!(err, PluginError::Guest { .. }), "{err}");
    assert!(!s.is_poisoned());
    assert_eq!(s.filter(&small, &[1, 2]).unwrap(), vec![]);

    // The `log` import reaches the host log, tagged with the plugin name.
    let lines = logs.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("plugin=default ") && l.contains("least-allocated")),
        "{lines:?}"
    );
}

#[test]
fn trap_fails_one_call_and_the_runtime_goes_on() {
    let rt = runtime();
    let logs = Captured::default();
    let faulty = rt
        .load(
            "fault-trap",
            PluginKind::Scheduler,
            &read(artifacts::FAULT_TRAP_PATH),
        )
        .unwrap();
    let mut f = faulty.instantiate_scheduler().unwrap();
    f.observe(&[node_event(1, node("n", "1", "1Gi"))]).unwrap();

    let err = logs.during(|| f.filter("{}", &[1])).unwrap_err();
    eprintln!("{err}");
    let PluginError::Trap { plugin, message } = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert_eq!(plugin, "fault-trap");
    assert!(message.contains("unreachable"), "{message}");
    // The guest's panic message is quoted, and also logged from its stderr.
    assert!(message.contains("filter traps on purpose"), "{message}");
    let lines = logs.lines();
    assert!(
        lines.iter().any(|l| l.contains("plugin=fault-trap ")
            && l.contains("stream=stderr ")
            && l.contains("filter traps on purpose")),
        "{lines:?}"
    );

    // The instance is poisoned; a fresh one works until it traps again.
    assert!(f.is_poisoned());
    let again = f.interests().unwrap_err();
    assert!(matches!(again, PluginError::Poisoned { .. }), "{again}");
    let mut fresh = faulty.instantiate_scheduler().unwrap();
    assert_eq!(fresh.interests().unwrap(), vec!["Node".to_string()]);
    assert!(matches!(
        fresh.score("{}", &[1]),
        Err(PluginError::Trap { .. })
    ));

    // The same runtime still serves a healthy plugin.
    let healthy = rt
        .load(
            "default",
            PluginKind::Scheduler,
            artifacts::DEFAULT_SCHEDULER,
        )
        .unwrap();
    let mut h = healthy.instantiate_scheduler().unwrap();
    h.observe(&[node_event(1, node("n", "1", "1Gi"))]).unwrap();
    assert_eq!(h.filter(&pod("100m", "10Mi"), &[1]).unwrap(), vec![]);
}

// Calls are synchronous and async callers must use `spawn_blocking`, because
// WASI's blocking output (a panic message on stderr) runs a nested block_on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callers_use_spawn_blocking_and_misuse_does_not_panic() {
    let rt = runtime();
    let plugin = rt
        .load(
            "fault-trap",
            PluginKind::Scheduler,
            &read(artifacts::FAULT_TRAP_PATH),
        )
        .unwrap();

    let p = plugin.clone();
    let err = tokio::task::spawn_blocking(move || {
        let mut s = p.instantiate_scheduler().unwrap();
        s.filter("{}", &[1]).unwrap_err()
    })
    .await
    .unwrap();
    let PluginError::Trap { message, .. } = &err else {
        panic!("expected a trap, got {err:?}");
    };
    assert!(message.contains("filter traps on purpose"), "{message}");

    // Called on the async worker itself, the nested block_on panics inside
    // wasmtime-wasi; the runtime turns that into an error, not a crash.
    let mut s = plugin.instantiate_scheduler().unwrap();
    let err = s.filter("{}", &[1]).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    assert!(s.is_poisoned());
}

#[test]
fn endless_loop_times_out_at_the_deadline() {
    let rt = runtime();
    let timeout = Duration::from_millis(100);
    let plugin = rt
        .load(
            "fault-loop",
            PluginKind::Scheduler,
            &read(artifacts::FAULT_LOOP_PATH),
        )
        .unwrap()
        .with_limits(Limits {
            timeout,
            ..Limits::default()
        });
    let mut s = plugin.instantiate_scheduler().unwrap();
    let started = Instant::now();
    let err = s.filter("{}", &[1, 2, 3]).unwrap_err();
    let took = started.elapsed();
    eprintln!("{err} (returned after {took:?})");
    assert!(
        matches!(err, PluginError::Timeout { timeout: t, .. } if t == timeout),
        "{err:?}"
    );
    assert!(took >= timeout, "stopped early: {took:?}");
    assert!(took < Duration::from_secs(1), "stopped late: {took:?}");
    assert!(s.is_poisoned());
    // A new instance answers the calls that do not loop.
    let mut fresh = plugin.instantiate_scheduler().unwrap();
    assert_eq!(fresh.score("{}", &[1]).unwrap(), Vec::<u32>::new());
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let rt = runtime();
    let plugin = rt
        .load(
            "fault-alloc",
            PluginKind::Scheduler,
            &read(artifacts::FAULT_ALLOC_PATH),
        )
        .unwrap();
    let mut s = plugin.instantiate_scheduler().unwrap();
    let err = s.filter("{}", &[1]).unwrap_err();
    eprintln!("{err}");
    match &err {
        PluginError::ResourceLimit { plugin, message } => {
            assert_eq!(plugin, "fault-alloc");
            assert!(message.contains("memory"), "{message}");
        }
        other => panic!("expected a resource limit, got {other:?}"),
    }
    assert!(err.poisons());
    // The process is fine and so is a fresh instance.
    let mut fresh = plugin.instantiate_scheduler().unwrap();
    assert_eq!(fresh.interests().unwrap(), vec!["Node".to_string()]);
}

#[test]
fn limits_also_bound_instantiation() {
    let rt = runtime();
    let plugin = rt
        .load(
            "default",
            PluginKind::Scheduler,
            artifacts::DEFAULT_SCHEDULER,
        )
        .unwrap();
    // Less memory than the component's initial memory.
    let tiny = plugin.clone().with_limits(Limits {
        memory_bytes: 64 << 10,
        ..Limits::default()
    });
    let err = tiny.instantiate_scheduler().err().expect("must not fit");
    assert!(matches!(err, PluginError::ResourceLimit { .. }), "{err:?}");
    // Fewer core instances than the component is made of.
    let few = plugin.clone().with_limits(Limits {
        instances: 1,
        ..Limits::default()
    });
    let err = few.instantiate_scheduler().err().expect("must not fit");
    assert!(matches!(err, PluginError::ResourceLimit { .. }), "{err:?}");
    // The defaults fit.
    plugin.instantiate_scheduler().unwrap();
}

#[test]
fn wrong_world_is_refused_with_a_clear_error() {
    let rt = runtime();
    let bytes = read(artifacts::FAULT_BAD_WORLD_PATH);
    let err = rt
        .load("bad-world", PluginKind::Scheduler, &bytes)
        .unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, PluginError::Invalid { .. }), "{err:?}");
    assert!(
        text.contains("module is not a component of the `scheduler` world"),
        "{text}"
    );
    assert!(text.contains("scheduler-policy"), "{text}");

    // It is a fine router.
    let router = rt.load("bad-world", PluginKind::Router, &bytes).unwrap();
    let mut r = router.instantiate_router().unwrap();
    r.configure("{}").unwrap();
    let endpoints = [shoal_host::plugin::Endpoint {
        address: "10.0.0.1".into(),
        node: None,
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        labels: vec![],
    }];
    let routes = r.route("{}", &endpoints).unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].address, "10.0.0.1");

    // A loaded plugin hands out instances of its own world only.
    assert!(matches!(
        router.instantiate_scheduler(),
        Err(PluginError::WrongKind { .. })
    ));

    // Bytes that are not a component at all are refused the same way.
    let err = rt
        .load("junk", PluginKind::Scheduler, b"\0asm\x01\0\0\0")
        .unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, PluginError::Invalid { .. }), "{err:?}");
}

#[test]
fn restart_loads_compiled_code_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..RuntimeConfig::default()
    };
    let load = |rt: &PluginRuntime| -> LoadedPlugin {
        rt.load("binpack", PluginKind::Scheduler, artifacts::BINPACK)
            .unwrap()
    };

    let first = PluginRuntime::new(config.clone()).unwrap();
    let compiled = load(&first);
    assert!(!compiled.from_cache());
    drop(first);

    let started = Instant::now();
    let second = PluginRuntime::new(config).unwrap();
    let cached = load(&second);
    let took = started.elapsed();
    assert!(cached.from_cache());
    assert_eq!(cached.digest(), compiled.digest());
    eprintln!("binpack from the disk cache: {took:?}");

    // The cached code runs.
    let mut s = cached.instantiate_scheduler().unwrap();
    s.observe(&[node_event(7, node("n", "4", "8Gi"))]).unwrap();
    assert_eq!(s.score(&pod("1", "1Gi"), &[7]).unwrap().len(), 1);
}

/// Not an assertion on speed (CI machines vary): prints what one scheduling
/// decision over 500 nodes costs. Run with `--nocapture` to see it.
#[test]
fn timing_filter_and_score_over_500_nodes() {
    let rt = runtime();
    let started = Instant::now();
    let plugin = rt
        .load(
            "default",
            PluginKind::Scheduler,
            artifacts::DEFAULT_SCHEDULER,
        )
        .unwrap();
    let compile = started.elapsed();

    let started = Instant::now();
    let mut s = plugin.instantiate_scheduler().unwrap();
    let instantiate = started.elapsed();

    let events: Vec<ObjectEvent> = (0..500)
        .map(|i| node_event(i, node(&format!("node-{i}"), "8", "32Gi")))
        .collect();
    let started = Instant::now();
    s.observe(&events).unwrap();
    let observe = started.elapsed();

    let handles: Vec<u32> = (0..500).collect();
    let pod = pod("250m", "256Mi");
    let rounds = 200;
    let mut each = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let rejected = s.filter(&pod, &handles).unwrap();
        let scores = s.score(&pod, &handles).unwrap();
        each.push(started.elapsed());
        assert!(rejected.is_empty());
        assert_eq!(scores.len(), 500);
    }
    each.sort();
    eprintln!(
        "default scheduler: compile {compile:?}, instantiate {instantiate:?}, \
         observe 500 nodes {observe:?}; filter+score over 500 nodes: \
         median {:?}, p90 {:?}, min {:?}",
        each[rounds / 2],
        each[rounds * 9 / 10],
        each[0]
    );

    let started = Instant::now();
    for _ in 0..100 {
        drop(plugin.instantiate_scheduler().unwrap());
    }
    eprintln!("instantiate (mean of 100): {:?}", started.elapsed() / 100);
}
