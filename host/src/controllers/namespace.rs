//! The namespace controller: empties a deleted namespace, then removes it.

use crate::api::handlers::{self, Target};
use crate::api::{object, resources, AppState};
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::Action;

/// Level-based: on any namespace change, and while some namespace is
/// terminating, reconcile every terminating namespace.
/// Run the namespace controller until aborted.
pub async fn run(state: Arc<AppState>) {
    let info = resources::lookup("", "v1", "namespaces").expect("namespaces are served");
    loop {
        let from = state.store.current_revision();
        let mut events = match state.store.watch(&info.prefix(None), from) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "namespace controller: watch failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut next = reconcile_all(&state).await;
        loop {
            let wait = match next {
                Action::Requeue(d) => d,
                Action::AwaitChange => Duration::from_secs(3600),
            };
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(_)) => next = reconcile_all(&state).await,
                    _ => break,
                },
                _ = tokio::time::sleep(wait) => next = reconcile_all(&state).await,
            }
        }
    }
}

async fn reconcile_all(state: &AppState) -> Action {
    let info = resources::lookup("", "v1", "namespaces").expect("namespaces are served");
    let Ok(list) = state.store.list(&info.prefix(None), None, 0, None) else {
        return Action::Requeue(Duration::from_secs(1));
    };
    let mut action = Action::AwaitChange;
    for kv in &list.items {
        let Ok(ns) = object::from_store(kv) else {
            continue;
        };
        if ns
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_none()
        {
            continue;
        }
        match reconcile(state, &ns).await {
            Ok(Action::AwaitChange) => {}
            Ok(a) => action = a,
            Err(e) => {
                tracing::warn!(error = ?e.status(), "namespace controller");
                action = Action::Requeue(Duration::from_millis(500));
            }
        }
    }
    action
}

/// Delete everything in a terminating namespace; when it is empty, drop the
/// `kubernetes` finalizer so the namespace goes.
async fn reconcile(state: &AppState, ns: &Value) -> Result<Action, crate::api::error::ApiError> {
    let name = object::meta_str(ns, "name").unwrap_or("").to_string();
    let mut remaining = 0usize;
    for r in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let prefix = r.prefix(Some(&name));
        let items = state.store.list(&prefix, None, 0, None)?.items;
        remaining += items.len();
        for kv in items {
            let obj = object::from_store(&kv)?;
            if obj
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
            {
                continue;
            }
            let t = Target {
                info: r,
                namespace: Some(name.clone()),
                name: object::meta_str(&obj, "name").map(str::to_string),
                sub: None,
            };
            match handlers::delete(
                state,
                &t,
                &serde_json::json!({"propagationPolicy": "Background"}),
                &Default::default(),
            )
            .await
            {
                Ok(_) | Err(crate::api::error::ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        return Ok(Action::Requeue(Duration::from_millis(500)));
    }
    let info = resources::lookup("", "v1", "namespaces").expect("namespaces are served");
    let key = info.key(None, &name);
    if let Some(kv) = state.store.get(&key)? {
        use crate::store::{Op, Precondition};
        state
            .store
            .txn(vec![Op::Delete {
                key,
                precondition: Precondition::ModRevision(kv.mod_revision),
            }])
            .await?;
    }
    Ok(Action::AwaitChange)
}
