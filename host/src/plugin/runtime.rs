//! The plugin engine: compiles (or loads from the on-disk cache) and
//! pre-instantiates components, checking them against their world once so
//! that creating an instance later is cheap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{admission, authorizer, router, scheduler};
use super::cache::ArtifactCache;
use super::sandbox::HostState;
use super::ticker::Ticker;
use super::{PluginError, PluginKind};

/// Environment variable that, set to `1`, makes the engine write a perf map
/// (`/tmp/perf-<pid>.map`) naming plugin code for `perf` (profiling only).
pub const PERFMAP_ENV: &str = "SHOAL_WASM_PERFMAP";

/// Bounds applied to every instance of a plugin and to each of its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one call (and of instantiation).
    pub timeout: Duration,
    /// Linear memory of one instance, summed over its memories, in bytes.
    pub memory_bytes: usize,
    /// Table elements of one instance, summed over its tables.
    pub table_elements: usize,
    /// Core instances in one component instance.
    pub instances: usize,
    /// Tables in one component instance.
    pub tables: usize,
    /// Linear memories in one component instance.
    pub memories: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            memory_bytes: 256 << 20,
            // Generous for interpreters compiled to wasm (componentize-py,
            // StarlingMonkey) while bounding host memory to about 16 MiB.
            table_elements: 1 << 20,
            instances: 100,
            tables: 100,
            memories: 16,
        }
    }
}

/// How a [`PluginRuntime`] is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Limits given to plugins unless [`LoadedPlugin::with_limits`] overrides them.
    pub limits: Limits,
}

/// One wasmtime engine with a linker per world, shared by all plugins.
pub struct PluginRuntime {
    engine: Engine,
    ticker: Arc<Ticker>,
    scheduler: Linker<HostState>,
    admission: Linker<HostState>,
    authorizer: Linker<HostState>,
    router: Linker<HostState>,
    cache: Option<ArtifactCache>,
    limits: Limits,
}

impl PluginRuntime {
    /// Creates the engine, its epoch ticker, the linkers and the cache directory.
    pub fn new(config: RuntimeConfig) -> Result<PluginRuntime, PluginError> {
        let runtime_err = |e: wasmtime::Error| PluginError::Runtime(format!("{e:#}"));
        let mut wasm = Config::new();
        wasm.epoch_interruption(true).wasm_component_model(true);
        if std::env::var_os(PERFMAP_ENV).is_some_and(|v| v == "1") {
            // Opt-in, for profiling only: names JIT-compiled plugin functions
            // in `/tmp/perf-<pid>.map` so `perf report` can resolve them.
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(runtime_err)?;
        let ticker = Ticker::start(engine.clone())
            .map_err(|e| PluginError::Runtime(format!("starting the epoch thread: {e}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine)?),
            None => None,
        };
        Ok(PluginRuntime {
            scheduler: linker(&engine, PluginKind::Scheduler).map_err(runtime_err)?,
            admission: linker(&engine, PluginKind::Admission).map_err(runtime_err)?,
            authorizer: linker(&engine, PluginKind::Authorizer).map_err(runtime_err)?,
            router: linker(&engine, PluginKind::Router).map_err(runtime_err)?,
            engine,
            ticker,
            cache,
            limits: config.limits,
        })
    }

    /// Compiles (or loads from cache) `bytes` and checks it implements `kind`.
    pub fn load(
        &self,
        name: &str,
        kind: PluginKind,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, PluginError> {
        let digest_hex = hex::encode(Sha256::digest(bytes));
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            plugin: name.to_string(),
            world: kind,
            reason: format!("{e:#}"),
        };

        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &digest_hex));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, bytes).map_err(invalid)?;
                if let Some(cache) = &self.cache {
                    // A cache that cannot be written costs a recompile next
                    // start, not this load.
                    if let Err(e) = cache.store(&component, &digest_hex) {
                        tracing::warn!(plugin = name, "not caching compiled plugin: {e}");
                    }
                }
                component
            }
        };

        // Link once here: missing imports or exports fail now, with the world
        // named, rather than at every instantiation.
        let pre = match kind {
            PluginKind::Scheduler => WorldPre::Scheduler(
                self.scheduler
                    .instantiate_pre(&component)
                    .and_then(scheduler::SchedulerPre::new)
                    .map_err(invalid)?,
            ),
            PluginKind::Admission => WorldPre::Admission(
                self.admission
                    .instantiate_pre(&component)
                    .and_then(admission::AdmissionPre::new)
                    .map_err(invalid)?,
            ),
            PluginKind::Authorizer => WorldPre::Authorizer(
                self.authorizer
                    .instantiate_pre(&component)
                    .and_then(authorizer::AuthorizerPre::new)
                    .map_err(invalid)?,
            ),
            PluginKind::Router => WorldPre::Router(
                self.router
                    .instantiate_pre(&component)
                    .and_then(router::RouterPre::new)
                    .map_err(invalid)?,
            ),
        };
        tracing::debug!(plugin = name, %kind, digest = %digest_hex, from_cache, "plugin loaded");
        Ok(LoadedPlugin {
            name: name.into(),
            kind,
            digest: format!("sha256:{digest_hex}"),
            from_cache,
            limits: self.limits.clone(),
            ticker: self.ticker.clone(),
            pre: Arc::new(pre),
        })
    }

    /// The limits new plugins get by default.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// A linker for `kind`'s world: its `log` import plus WASI preview 2.
fn linker(engine: &Engine, kind: PluginKind) -> wasmtime::Result<Linker<HostState>> {
    use wasmtime::component::HasSelf;
    let mut linker = Linker::new(engine);
    // The sandbox's WasiCtx grants nothing; linking WASI just lets components
    // built for wasm32-wasip2 (whose std imports it) instantiate. Admission
    // plugins are called on async tasks, so they get WASI's async host
    // functions (which await instead of blocking on the runtime).
    match kind {
        PluginKind::Admission => wasmtime_wasi::p2::add_to_linker_async(&mut linker)?,
        _ => wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?,
    }
    match kind {
        PluginKind::Scheduler => {
            scheduler::Scheduler::add_to_linker::<_, HasSelf<HostState>>(&mut linker, host_state)?
        }
        PluginKind::Admission => {
            admission::Admission::add_to_linker::<_, HasSelf<HostState>>(&mut linker, host_state)?
        }
        PluginKind::Authorizer => {
            authorizer::Authorizer::add_to_linker::<_, HasSelf<HostState>>(&mut linker, host_state)?
        }
        PluginKind::Router => {
            router::Router::add_to_linker::<_, HasSelf<HostState>>(&mut linker, host_state)?
        }
    }
    Ok(linker)
}

/// The bindings' accessor from store data to the `log` host: the state itself.
fn host_state(state: &mut HostState) -> &mut HostState {
    state
}

/// A component linked against one world, ready to instantiate.
pub(crate) enum WorldPre {
    Scheduler(scheduler::SchedulerPre<HostState>),
    Admission(admission::AdmissionPre<HostState>),
    Authorizer(authorizer::AuthorizerPre<HostState>),
    Router(router::RouterPre<HostState>),
}

/// A compiled, linked plugin; cheap to clone and to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) name: Arc<str>,
    pub(crate) kind: PluginKind,
    digest: String,
    from_cache: bool,
    pub(crate) limits: Limits,
    pub(crate) ticker: Arc<Ticker>,
    pub(crate) pre: Arc<WorldPre>,
}

impl LoadedPlugin {
    /// The plugin's name, used in errors and log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The world it implements.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// `sha256:<hex>` of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// True when the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The bounds its instances get.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The same plugin with other bounds for instances created from now on.
    pub fn with_limits(mut self, limits: Limits) -> LoadedPlugin {
        self.limits = limits;
        self
    }

    pub(crate) fn wrong_kind(&self, requested: PluginKind) -> PluginError {
        PluginError::WrongKind {
            plugin: self.name.to_string(),
            actual: self.kind,
            requested,
        }
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .field("from_cache", &self.from_cache)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
