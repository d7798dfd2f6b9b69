//! WebAssembly policy plugins: the host runtime that loads, sandboxes and calls
//! components built for the `shoal:plugin` worlds in `wit/`.
//!
//! - `bindings`: the one `bindgen!` for the four worlds.
//! - `runtime`: the engine, compilation with an on-disk cache, and loading.
//! - `instance`: one `Store` per instance, a thin wrapper per world, and the
//!   bounds (epoch deadline, memory limits, poisoning) around every call.
//! - `sandbox`: what a plugin can reach: `log`, and WASI with nothing granted.
//!
//! Scheduler, authorizer and router calls are synchronous (async callers run
//! them under `spawn_blocking`); admission calls are async, made on the API
//! request's own task (see `instance`).

pub mod artifacts;
pub mod bindings;
mod cache;
mod instance;
mod runtime;
mod sandbox;
mod ticker;

use std::fmt;
use std::time::Duration;

pub use bindings::{
    AdmissionResponse, Attributes, Decision, Endpoint, ObjectEvent, Rejection, Route, Verdict,
};
pub use instance::{AdmissionInstance, AuthorizerInstance, RouterInstance, SchedulerInstance};
pub use runtime::{Limits, LoadedPlugin, PluginRuntime, RuntimeConfig};

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// `world scheduler`: filters and scores nodes.
    Scheduler,
    /// `world admission`: validates and mutates API requests.
    Admission,
    /// `world authorizer`: decides whether a request is allowed.
    Authorizer,
    /// `world router`: weighs a service's endpoints.
    Router,
}

impl PluginKind {
    /// The WIT world name, as in `wit/plugin.wit`.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Scheduler => "scheduler",
            PluginKind::Admission => "admission",
            PluginKind::Authorizer => "authorizer",
            PluginKind::Router => "router",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.world())
    }
}

/// Everything that can go wrong loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not a component of the requested world (or not wasm).
    #[error("plugin `{plugin}`: module is not a component of the `{world}` world: {reason}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// The world it was loaded as.
        world: PluginKind,
        /// Wasmtime's reason.
        reason: String,
    },
    /// An instance of another world was asked for.
    #[error("plugin `{plugin}` implements the `{actual}` world, not `{requested}`")]
    WrongKind {
        /// Plugin name.
        plugin: String,
        /// The world it was loaded as.
        actual: PluginKind,
        /// The world that was asked for.
        requested: PluginKind,
    },
    /// The plugin trapped (panicked, hit `unreachable`, overflowed its stack...).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// Wasmtime's trap message.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin `{plugin}` timed out after {timeout:?}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The deadline that was exceeded.
        timeout: Duration,
    },
    /// The plugin tried to grow past its memory or table limits.
    #[error("plugin `{plugin}` exceeded a resource limit: {message}")]
    ResourceLimit {
        /// Plugin name.
        plugin: String,
        /// Which limit, and the failure it caused.
        message: String,
    },
    /// An earlier call on this instance failed; it must be re-instantiated.
    #[error("plugin `{plugin}` instance is unusable after an earlier failure ({cause}); re-instantiate it")]
    Poisoned {
        /// Plugin name.
        plugin: String,
        /// The failure that poisoned the instance.
        cause: String,
    },
    /// The plugin returned an error value (from `configure` or `route`).
    #[error("plugin `{plugin}` returned an error: {message}")]
    Guest {
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The host could not set up the runtime (engine, linker, epoch thread).
    #[error("plugin runtime: {0}")]
    Runtime(String),
    /// Reading or writing the compiled-artifact cache failed.
    #[error("plugin cache {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl PluginError {
    /// True when the instance that returned this error must be re-instantiated.
    pub fn poisons(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::ResourceLimit { .. }
                | PluginError::Poisoned { .. }
        )
    }
}
