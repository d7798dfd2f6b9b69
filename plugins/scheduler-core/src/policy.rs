//! The policy: a view plus a configuration, answering filter and score calls.

use std::cell::RefCell;

use crate::candidate::Candidate;
use crate::config::{Config, ConfigError};
use crate::view::View;
use crate::{filter, score};

/// Kinds the policy wants in its view.
pub const INTERESTS: [&str; 2] = ["Node", "Pod"];

/// One change to the view (the WIT `object-event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    /// Kubernetes kind: "Node" or "Pod" (others are ignored).
    pub kind: String,
    /// Host handle, unique per kind while the object exists.
    pub handle: u32,
    /// True when the object left the view.
    pub deleted: bool,
    /// The object as Kubernetes JSON.
    pub object: String,
}

/// A scheduling policy with its own incrementally updated view.
#[derive(Debug, Default)]
pub struct Policy {
    config: Config,
    view: View,
    /// The last pod parsed, keyed by its JSON: the host calls `filter` and
    /// then `score` with the same pod, and parsing it is most of a call's
    /// fixed cost. A pod's parse depends on nothing but its JSON.
    parsed: RefCell<Option<(String, Result<Candidate, String>)>>,
}

impl Policy {
    /// A policy with `config` and an empty view.
    pub fn new(config: Config) -> Policy {
        Policy {
            config,
            view: View::new(),
            parsed: RefCell::new(None),
        }
    }

    /// A policy configured from JSON over the defaults.
    pub fn from_json(config: &str) -> Result<Policy, ConfigError> {
        Ok(Policy::new(Config::from_json(config)?))
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Replace the configuration; the view is kept.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// The view, for inspection.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Apply a batch of events in order.
    pub fn observe(&mut self, events: &[ObjectEvent]) {
        for e in events {
            self.view.apply(&e.kind, e.handle, e.deleted, &e.object);
        }
    }

    /// Apply one event given by its parts (avoids building an [`ObjectEvent`]).
    pub fn observe_one(&mut self, kind: &str, handle: u32, deleted: bool, object: &str) {
        self.view.apply(kind, handle, deleted, object);
    }

    /// The nodes among `nodes` that cannot run the pod, with Kubernetes'
    /// reasons. With filters off, none. A pod that does not parse is
    /// rejected everywhere with the parse error as the reason.
    pub fn filter(&self, pod_json: &str, nodes: &[u32]) -> Vec<(u32, String)> {
        if !self.config.filters {
            return Vec::new();
        }
        self.with_candidate(pod_json, |parsed| match parsed {
            Ok(pod) => filter::filter(pod, &self.view, nodes),
            Err(e) => {
                let reason = format!("invalid pod: {e}");
                nodes.iter().map(|&n| (n, reason.clone())).collect()
            }
        })
    }

    /// A 0..=100 score per node of `nodes`, in order; higher is better. A
    /// pod that does not parse scores 0 everywhere.
    pub fn score(&self, pod_json: &str, nodes: &[u32]) -> Vec<u32> {
        self.with_candidate(pod_json, |parsed| match parsed {
            Ok(pod) => score::score(pod, &self.view, nodes, self.config.score),
            Err(_) => vec![0; nodes.len()],
        })
    }

    /// Runs `f` on the parsed pod, parsing it only if it is not the last one.
    fn with_candidate<R>(
        &self,
        pod_json: &str,
        f: impl FnOnce(&Result<Candidate, String>) -> R,
    ) -> R {
        let mut parsed = self.parsed.borrow_mut();
        match &*parsed {
            Some((json, _)) if json == pod_json => {}
            _ => *parsed = Some((pod_json.to_owned(), Candidate::parse(pod_json))),
        }
        let (_, candidate) = parsed.as_ref().expect("filled above");
        f(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bound_pod, node, pod};
    use serde_json::json;

    fn event(kind: &str, handle: u32, deleted: bool, object: serde_json::Value) -> ObjectEvent {
        ObjectEvent {
            kind: kind.to_owned(),
            handle,
            deleted,
            object: object.to_string(),
        }
    }

    fn two_cpu_pod() -> String {
        pod(
            "p",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
        )
        .to_string()
    }

    #[test]
    fn observed_pods_change_the_decisions() {
        let mut policy = Policy::from_json("{}").unwrap();
        policy.observe(&[
            event("Node", 1, false, node("n1", "4", "8Gi", "110")),
            event("Node", 2, false, node("n2", "4", "8Gi", "110")),
        ]);
        assert!(policy.filter(&two_cpu_pod(), &[1, 2]).is_empty());
        // cpu 2 of 4 -> 50; memory: the default 200Mi of 8Gi -> 97.
        assert_eq!(policy.score(&two_cpu_pod(), &[1, 2]), vec![73, 73]);

        let busy = bound_pod("busy", "n1", "3", "0", json!({}));
        policy.observe(&[event("Pod", 10, false, busy.clone())]);
        assert_eq!(policy.view().free(1).unwrap().milli_cpu, 1000);
        assert_eq!(
            policy.filter(&two_cpu_pod(), &[1, 2]),
            vec![(1, "Insufficient cpu".to_owned())]
        );
        let scores = policy.score(&two_cpu_pod(), &[1, 2]);
        assert!(scores[1] > scores[0], "{scores:?}");

        policy.observe(&[event("Pod", 10, true, busy)]);
        assert_eq!(policy.view().free(1).unwrap().milli_cpu, 4000);
        assert!(policy.filter(&two_cpu_pod(), &[1, 2]).is_empty());
    }

    #[test]
    fn binpack_scores_the_other_way_and_does_not_filter() {
        let mut policy = Policy::new(Config::binpack());
        policy.observe_one("Node", 1, false, &node("n1", "4", "8Gi", "110").to_string());
        policy.observe_one("Node", 2, false, &node("n2", "4", "8Gi", "110").to_string());
        let busy = bound_pod("busy", "n1", "1", "0", json!({}));
        policy.observe_one("Pod", 10, false, &busy.to_string());
        let scores = policy.score(&two_cpu_pod(), &[1, 2]);
        assert!(scores[0] > scores[1], "{scores:?}");
        let huge = pod(
            "p",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "64"}}}]}),
        );
        assert!(policy.filter(&huge.to_string(), &[1, 2]).is_empty());
        policy
            .set_config(Config::from_json_over(r#"{"filters": true}"#, Config::binpack()).unwrap());
        assert_eq!(policy.filter(&huge.to_string(), &[1, 2]).len(), 2);
    }

    #[test]
    fn an_unreadable_pod_is_rejected_with_the_reason() {
        let mut policy = Policy::default();
        policy.observe_one("Node", 1, false, &node("n1", "4", "8Gi", "110").to_string());
        let rejected = policy.filter("{not json", &[1]);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].1.starts_with("invalid pod: "), "{rejected:?}");
        let bad_quantity = pod(
            "p",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "lots"}}}]}),
        );
        assert!(policy.filter(&bad_quantity.to_string(), &[1])[0]
            .1
            .contains("lots"));
        assert_eq!(policy.score("{not json", &[1, 2]), vec![0, 0]);
    }

    #[test]
    fn each_call_decides_for_the_pod_it_is_given() {
        let mut policy = Policy::from_json("{}").unwrap();
        policy.observe_one("Node", 1, false, &node("n1", "4", "8Gi", "110").to_string());
        let small = pod(
            "s",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}),
        )
        .to_string();
        let huge = pod(
            "h",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "64"}}}]}),
        )
        .to_string();
        // Alternating pods: a cached parse must never answer for another pod.
        assert!(policy.filter(&small, &[1]).is_empty());
        assert_eq!(policy.filter(&huge, &[1]).len(), 1);
        assert!(policy.filter(&small, &[1]).is_empty());
        assert_eq!(policy.score("{not json", &[1]), vec![0]);
        assert_ne!(policy.score(&small, &[1]), vec![0]);
    }

    #[test]
    fn config_errors_surface() {
        assert!(Policy::from_json(r#"{"score": "random"}"#).is_err());
        assert_eq!(INTERESTS, ["Node", "Pod"]);
    }
}
