//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets as
//! `rules` the union of the rules of every other ClusterRole matching one of
//! its `clusterRoleSelectors` (in name order, duplicates dropped), as
//! Kubernetes' clusterrole-aggregation controller does. Level-based: any
//! ClusterRole change re-evaluates every aggregated role.

use crate::api::selector::LabelSelector;
use crate::api::{object, resources, AppState};
use crate::store::{Op, Precondition, StoreError};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn info() -> &'static resources::ResourceInfo {
    resources::lookup("rbac.authorization.k8s.io", "v1", "clusterroles").expect("served")
}

/// The rules an aggregated role should have, given every ClusterRole.
pub fn aggregate(role: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let selectors: Vec<LabelSelector> = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?
        .iter()
        .filter_map(|s| LabelSelector::from_json(s).ok())
        .collect();
    let me = object::meta_str(role, "name");
    let mut sources: Vec<&Value> = all
        .iter()
        .filter(|r| object::meta_str(r, "name") != me)
        .filter(|r| {
            let labels = r.pointer("/metadata/labels").and_then(Value::as_object);
            // An empty selector matches nothing here, as in Kubernetes.
            selectors.iter().any(|s| !s.is_empty() && s.matches(labels))
        })
        .collect();
    sources.sort_by_key(|r| object::meta_str(r, "name").unwrap_or("").to_string());
    let mut rules: Vec<Value> = Vec::new();
    for r in sources {
        for rule in r
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

async fn reconcile(state: &AppState) {
    let Ok(list) = state.store.list(&info().prefix(None), None, 0, None) else {
        return;
    };
    let all: Vec<(Value, u64)> = list
        .items
        .iter()
        .filter_map(|kv| object::from_store(kv).ok().map(|v| (v, kv.mod_revision)))
        .collect();
    let values: Vec<Value> = all.iter().map(|(v, _)| v.clone()).collect();
    for (role, rev) in &all {
        let Some(rules) = aggregate(role, &values) else {
            continue;
        };
        if role.get("rules").cloned().unwrap_or(json!([])) == json!(rules) {
            continue;
        }
        let name = object::meta_str(role, "name").unwrap_or("").to_string();
        let mut new = role.clone();
        new["rules"] = json!(rules);
        let res = state
            .store
            .txn(vec![Op::Put {
                key: info().key(None, &name),
                value: object::to_store(&mut new),
                precondition: Precondition::ModRevision(*rev),
            }])
            .await;
        match res {
            // A conflict means another change, which triggers another pass.
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(role = %name, error = %e, "aggregating cluster role"),
        }
    }
}

/// Run until the task is dropped: reconcile now and after every change.
pub async fn run(state: Arc<AppState>) {
    loop {
        let from = state.store.current_revision();
        let Ok(mut events) = state.store.watch(&info().prefix(None), from) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        reconcile(&state).await;
        while let Some(Ok(_)) = events.next().await {
            reconcile(&state).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_matching_roles_in_name_order() {
        let admin = json!({"metadata": {"name": "admin"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}}]}});
        let r = |name: &str, label: bool, verb: &str| {
            let labels = if label {
                json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"})
            } else {
                json!({})
            };
            json!({"metadata": {"name": name, "labels": labels},
                "rules": [{"verbs": [verb], "apiGroups": [""], "resources": ["pods"]}]})
        };
        let all = vec![
            admin.clone(),
            r("b", true, "list"),
            r("a", true, "get"),
            r("c", false, "delete"),
            r("d", true, "get"),
        ];
        let rules = aggregate(&admin, &all).unwrap();
        let verbs: Vec<&str> = rules
            .iter()
            .map(|x| x["verbs"][0].as_str().unwrap())
            .collect();
        assert_eq!(verbs, ["get", "list"]);
        assert!(aggregate(&r("x", true, "get"), &all).is_none());
    }
}
