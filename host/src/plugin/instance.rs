//! Plugin instances: one `Store` each, a thin wrapper per world, and the
//! bounds around every call.
//!
//! Every call (and instantiation) runs with an epoch deadline and the store's
//! resource limiter. A trap, a timeout or a refused growth fails that call and
//! poisons the instance: its state may be half-updated, and the component model
//! forbids re-entering an instance that trapped anyway. Further calls return
//! [`PluginError::Poisoned`] until the caller instantiates afresh from the
//! [`LoadedPlugin`] (which is cheap) and replays its view.
//!
//! Scheduler, authorizer and router plugins are called synchronously, on
//! their own threads or under `spawn_blocking`; an overrun traps at the epoch
//! deadline. Admission plugins run on the API request's own task with
//! `call_async` (no thread hop on the request path): a call that has run for
//! a few milliseconds yields to the executor at every epoch tick, so a slow
//! plugin does not hold an async worker, and traps once its wall-clock
//! deadline has passed.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{
    admission, authorizer, router, scheduler, AdmissionResponse, Attributes, Endpoint, ObjectEvent,
    Route, Verdict,
};
use super::runtime::{LoadedPlugin, WorldPre};
use super::sandbox::HostState;
use super::ticker::Ticker;
use super::{PluginError, PluginKind};

/// How long an async (admission) call runs before it starts yielding to the
/// executor at every epoch tick. With yields from the first tick, ten Python
/// admission plugins added ~10 µs each to a request (docs/BENCHMARKS.md).
const YIELD_AFTER: Duration = Duration::from_millis(5);

/// A store with its bounds; what every world wrapper is built on.
struct Bounded {
    plugin: Arc<str>,
    store: Store<HostState>,
    ticker: Arc<Ticker>,
    timeout: Duration,
    poisoned: Option<String>,
}

impl Bounded {
    /// A fresh, empty store for `loaded`, with its sandbox and limits.
    fn new(loaded: &LoadedPlugin) -> Bounded {
        let state = HostState::new(loaded.name.clone(), &loaded.limits);
        let mut store = Store::new(loaded.ticker.engine(), state);
        store.limiter(|state| &mut state.limiter);
        Bounded {
            plugin: loaded.name.clone(),
            store,
            ticker: loaded.ticker.clone(),
            timeout: loaded.limits.timeout,
            poisoned: None,
        }
    }

    /// A fresh store for `loaded`, and whatever `instantiate` builds in it.
    fn instantiate<T>(
        loaded: &LoadedPlugin,
        instantiate: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(Bounded, T), PluginError> {
        let mut bounded = Bounded::new(loaded);
        bounded.store.epoch_deadline_trap();
        // Instantiation runs guest code (start functions, data initialisers),
        // so it gets the same bounds as a call.
        let bindings = bounded.call(instantiate)?;
        Ok((bounded, bindings))
    }

    /// A fresh async store for an admission plugin, instantiated under the
    /// same bounds as a call.
    async fn instantiate_admission(
        loaded: &LoadedPlugin,
        pre: &admission::AdmissionPre<HostState>,
    ) -> Result<(Bounded, admission::Admission), PluginError> {
        let mut bounded = Bounded::new(loaded);
        // At every tick the guest runs: past its wall-clock deadline it traps
        // with `Trap::Interrupt`; after `YIELD_AFTER` it yields to the
        // executor, so a slow plugin shares the worker with other requests;
        // before that it runs on (a yield costs a short call a trip through
        // the run queue, maybe to the other core).
        bounded.store.epoch_deadline_callback(|store| {
            let now = Instant::now();
            let state = store.data();
            Ok(if now >= state.deadline {
                UpdateDeadline::Interrupt
            } else if now.duration_since(state.started) >= YIELD_AFTER {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        bounded.begin_async()?;
        let result = {
            let _running = bounded.ticker.active();
            AssertUnwindSafe(pre.instantiate_async(&mut bounded.store))
                .catch_unwind()
                .await
        };
        let bindings = bounded.finish(result.map_err(|p| panic_text(&*p).to_string()))?;
        Ok((bounded, bindings))
    }

    /// Runs `f` against the store under the deadline and limits.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.usable()?;
        self.store.data_mut().begin_call();
        self.store
            .set_epoch_deadline(Ticker::ticks_for(self.timeout));
        let result = {
            let _running = self.ticker.active();
            // A host function may panic, most likely wasmtime-wasi's blocking
            // I/O when called on an async worker thread instead of under
            // `spawn_blocking`. Wasmtime carries the panic out through the
            // guest frames; catching it here keeps it from taking the caller
            // down, and the instance is poisoned like after a trap.
            std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut self.store)))
        };
        self.finish(result.map_err(|panic| panic_text(&*panic).to_string()))
    }

    /// Arms one async call: the instance must be usable; the deadline is
    /// wall-clock time from now, checked at every epoch tick.
    fn begin_async(&mut self) -> Result<(), PluginError> {
        self.usable()?;
        let state = self.store.data_mut();
        state.begin_call();
        state.started = Instant::now();
        state.deadline = state.started + self.timeout;
        self.store.set_epoch_deadline(1);
        Ok(())
    }

    /// Fails with [`PluginError::Poisoned`] after an earlier failure.
    fn usable(&self) -> Result<(), PluginError> {
        match &self.poisoned {
            Some(cause) => Err(PluginError::Poisoned {
                plugin: self.plugin.to_string(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The outcome of a call (`Err` is the text of a caught host panic); a
    /// failure poisons the instance.
    fn finish<R>(&mut self, result: Result<wasmtime::Result<R>, String>) -> Result<R, PluginError> {
        let err = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => self.classify(e),
            Err(panic) => PluginError::Trap {
                plugin: self.plugin.to_string(),
                message: format!("host panicked during the call: {panic}"),
            },
        };
        self.poisoned = Some(err.to_string());
        Err(err)
    }

    /// Turns a wasmtime failure into the error a caller can act on.
    fn classify(&mut self, err: wasmtime::Error) -> PluginError {
        let plugin = self.plugin.to_string();
        // The full error carries the guest's wasm backtrace: useful to the
        // plugin's author, too long for a pod condition or a 403 message.
        tracing::debug!(plugin, "plugin call failed: {err:?}");
        let trap = err.downcast_ref::<Trap>().copied();
        let mut message = match trap {
            Some(trap) => trap.to_string(),
            None => err.root_cause().to_string(),
        };
        let state = self.store.data_mut();
        let stderr = state.recent_stderr();
        if !stderr.is_empty() {
            message = format!("{message} (stderr: {stderr})");
        }
        // A refused growth usually surfaces as the guest aborting on a failed
        // allocation (`unreachable`), so the limiter's record decides first.
        if let Some(limit) = state.limiter.exceeded.take() {
            return PluginError::ResourceLimit {
                plugin,
                message: format!("{limit}; then {message}"),
            };
        }
        match trap {
            Some(Trap::Interrupt) => PluginError::Timeout {
                plugin,
                timeout: self.timeout,
            },
            // Instance, table or memory counts are checked at instantiation
            // and reported as plain errors with this wording.
            None if format!("{err:#}").contains("resource limit exceeded") => {
                PluginError::ResourceLimit { plugin, message }
            }
            _ => PluginError::Trap { plugin, message },
        }
    }

    /// Whether an earlier failure made this instance unusable.
    fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Maps a plugin's own `result<_, string>` error.
    fn guest_error(&self, message: String) -> PluginError {
        PluginError::Guest {
            plugin: self.plugin.to_string(),
            message,
        }
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// A running `scheduler` plugin.
pub struct SchedulerInstance {
    bounded: Bounded,
    bindings: scheduler::Scheduler,
}

impl LoadedPlugin {
    /// A fresh instance of a `scheduler` plugin.
    pub fn instantiate_scheduler(&self) -> Result<SchedulerInstance, PluginError> {
        let WorldPre::Scheduler(pre) = &*self.pre else {
            return Err(self.wrong_kind(PluginKind::Scheduler));
        };
        let (bounded, bindings) = Bounded::instantiate(self, |store| pre.instantiate(store))?;
        Ok(SchedulerInstance { bounded, bindings })
    }

    /// A fresh instance of an `admission` plugin.
    pub async fn instantiate_admission(&self) -> Result<AdmissionInstance, PluginError> {
        let WorldPre::Admission(pre) = &*self.pre else {
            return Err(self.wrong_kind(PluginKind::Admission));
        };
        let (bounded, bindings) = Bounded::instantiate_admission(self, pre).await?;
        Ok(AdmissionInstance { bounded, bindings })
    }

    /// A fresh instance of an `authorizer` plugin.
    pub fn instantiate_authorizer(&self) -> Result<AuthorizerInstance, PluginError> {
        let WorldPre::Authorizer(pre) = &*self.pre else {
            return Err(self.wrong_kind(PluginKind::Authorizer));
        };
        let (bounded, bindings) = Bounded::instantiate(self, |store| pre.instantiate(store))?;
        Ok(AuthorizerInstance { bounded, bindings })
    }

    /// A fresh instance of a `router` plugin.
    pub fn instantiate_router(&self) -> Result<RouterInstance, PluginError> {
        let WorldPre::Router(pre) = &*self.pre else {
            return Err(self.wrong_kind(PluginKind::Router));
        };
        let (bounded, bindings) = Bounded::instantiate(self, |store| pre.instantiate(store))?;
        Ok(RouterInstance { bounded, bindings })
    }
}

impl SchedulerInstance {
    /// Kinds the plugin wants in its view.
    pub fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        let policy = self.bindings.shoal_plugin_scheduler_policy();
        self.bounded.call(|s| policy.call_interests(s))
    }

    /// Passes the Plugin object's `spec.config` JSON; the plugin may refuse it.
    pub fn configure(&mut self, config_json: &str) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_scheduler_policy();
        self.bounded
            .call(|s| policy.call_configure(s, config_json))?
            .map_err(|m| self.bounded.guest_error(m))
    }

    /// Feeds a batch of changes to the plugin's view.
    pub fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_scheduler_policy();
        self.bounded.call(|s| policy.call_observe(s, events))
    }

    /// Nodes (by handle) that cannot run the pod, each with a reason.
    pub fn filter(
        &mut self,
        pod_json: &str,
        nodes: &[u32],
    ) -> Result<Vec<(u32, String)>, PluginError> {
        let policy = self.bindings.shoal_plugin_scheduler_policy();
        let rejections = self
            .bounded
            .call(|s| policy.call_filter(s, pod_json, nodes))?;
        Ok(rejections.into_iter().map(|r| (r.node, r.reason)).collect())
    }

    /// Scores in 0..=100 for each of `nodes`, in order (empty: no opinion).
    pub fn score(&mut self, pod_json: &str, nodes: &[u32]) -> Result<Vec<u32>, PluginError> {
        let policy = self.bindings.shoal_plugin_scheduler_policy();
        self.bounded.call(|s| policy.call_score(s, pod_json, nodes))
    }

    /// Whether an earlier failure made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.bounded.is_poisoned()
    }
}

/// A running `admission` plugin.
pub struct AdmissionInstance {
    bounded: Bounded,
    bindings: admission::Admission,
}

/// Runs one async export call of an admission instance under its bounds.
/// (A macro rather than a method taking a closure: the call's future borrows
/// the store, and its `Send`-ness must stay visible to axum's handlers.)
macro_rules! call_async {
    ($self:ident, |$policy:ident, $store:ident| $call:expr) => {{
        let $policy = $self.bindings.shoal_plugin_admission_policy();
        let bounded = &mut $self.bounded;
        bounded.begin_async()?;
        let result = {
            let _running = bounded.ticker.active();
            let $store = &mut bounded.store;
            AssertUnwindSafe($call).catch_unwind().await
        };
        bounded.finish(result.map_err(|p| panic_text(&*p).to_string()))
    }};
}

impl AdmissionInstance {
    /// Kinds the plugin wants in its view.
    pub async fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        call_async!(self, |policy, store| policy.call_interests(store))
    }

    /// Passes the Plugin object's `spec.config` JSON; the plugin may refuse it.
    pub async fn configure(&mut self, config_json: &str) -> Result<(), PluginError> {
        call_async!(self, |policy, store| policy
            .call_configure(store, config_json))?
        .map_err(|m| self.bounded.guest_error(m))
    }

    /// Feeds a batch of changes to the plugin's view.
    pub async fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        call_async!(self, |policy, store| policy.call_observe(store, events))
    }

    /// Reviews one AdmissionReview `request` (JSON).
    pub async fn review(&mut self, request_json: &str) -> Result<AdmissionResponse, PluginError> {
        call_async!(self, |policy, store| policy
            .call_review(store, request_json))
    }

    /// Whether an earlier failure made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.bounded.is_poisoned()
    }
}

/// A running `authorizer` plugin.
pub struct AuthorizerInstance {
    bounded: Bounded,
    bindings: authorizer::Authorizer,
}

impl AuthorizerInstance {
    /// Kinds the plugin wants in its view.
    pub fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        let policy = self.bindings.shoal_plugin_authorizer_policy();
        self.bounded.call(|s| policy.call_interests(s))
    }

    /// Passes the Plugin object's `spec.config` JSON; the plugin may refuse it.
    pub fn configure(&mut self, config_json: &str) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_authorizer_policy();
        self.bounded
            .call(|s| policy.call_configure(s, config_json))?
            .map_err(|m| self.bounded.guest_error(m))
    }

    /// Feeds a batch of changes to the plugin's view.
    pub fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_authorizer_policy();
        self.bounded.call(|s| policy.call_observe(s, events))
    }

    /// Decides one request.
    pub fn authorize(&mut self, attributes: &Attributes) -> Result<Verdict, PluginError> {
        let policy = self.bindings.shoal_plugin_authorizer_policy();
        self.bounded.call(|s| policy.call_authorize(s, attributes))
    }

    /// Whether an earlier failure made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.bounded.is_poisoned()
    }
}

/// A running `router` plugin.
pub struct RouterInstance {
    bounded: Bounded,
    bindings: router::Router,
}

impl RouterInstance {
    /// Kinds the plugin wants in its view.
    pub fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        let policy = self.bindings.shoal_plugin_router_policy();
        self.bounded.call(|s| policy.call_interests(s))
    }

    /// Passes the Plugin object's `spec.config` JSON; the plugin may refuse it.
    pub fn configure(&mut self, config_json: &str) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_router_policy();
        self.bounded
            .call(|s| policy.call_configure(s, config_json))?
            .map_err(|m| self.bounded.guest_error(m))
    }

    /// Feeds a batch of changes to the plugin's view.
    pub fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        let policy = self.bindings.shoal_plugin_router_policy();
        self.bounded.call(|s| policy.call_observe(s, events))
    }

    /// Routes for one service (JSON) and its endpoints.
    pub fn route(
        &mut self,
        service_json: &str,
        endpoints: &[Endpoint],
    ) -> Result<Vec<Route>, PluginError> {
        let policy = self.bindings.shoal_plugin_router_policy();
        self.bounded
            .call(|s| policy.call_routes(s, service_json, endpoints))?
            .map_err(|m| self.bounded.guest_error(m))
    }

    /// Whether an earlier failure made this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.bounded.is_poisoned()
    }
}
