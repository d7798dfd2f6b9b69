//! Prometheus metrics: requests by verb/resource/code with latencies, store
//! commit latency and batch size, open watches.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    commit: Histogram,
    batch: Histogram,
    watchers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with all metrics registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let commit = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let watchers = Gauge::default();
        registry.register(
            "apiserver_request",
            "API requests by verb, resource and code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "API request latency by verb and resource",
            latency.clone(),
        );
        registry.register(
            "shoal_store_commit_duration_seconds",
            "Durable store commit latency (one group commit)",
            commit.clone(),
        );
        registry.register(
            "shoal_store_commit_batch_size",
            "Transactions folded into one store commit",
            batch.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Open watch streams",
            watchers.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            commit,
            batch,
            watchers,
        }
    }

    /// Record one finished request.
    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        if verb != "watch" {
            self.latency
                .get_or_create(&LatencyLabels {
                    verb: verb.into(),
                    resource: resource.into(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Record one store commit.
    pub fn observe_commit(&self, took: Duration, batch: usize) {
        self.commit.observe(took.as_secs_f64());
        self.batch.observe(batch as f64);
    }

    /// Change the open-watch count.
    pub fn watchers_add(&self, n: i64) {
        self.watchers.inc_by(n);
    }

    /// Render in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}
