//! The plugin components built from `plugins/` by `host/build.rs`: a `*_PATH` constant per component, and the default policies embedded as bytes.

include!(concat!(env!("OUT_DIR"), "/plugin_artifacts.rs"));
