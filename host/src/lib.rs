//! Shoal control plane: a Kubernetes-compatible API server on an embedded
//! store, with the controllers that run in the host process.

pub mod admission;
pub mod api;
pub mod auth;
pub mod authz;
pub mod blobs;
pub mod controllers;
pub mod metrics;
pub mod pki;
pub mod plugin;
pub mod plugin_objects;
pub mod registry;
pub mod routing;
pub mod scheduler;
pub mod server;
pub mod store;
