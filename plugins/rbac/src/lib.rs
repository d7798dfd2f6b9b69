//! Kubernetes RBAC as an `authorizer` component: `rbac-core`'s view and rule
//! matching behind the WIT interface. It asks for Roles, ClusterRoles and
//! their bindings, is fed them incrementally, and answers allow or no-opinion.

use std::cell::RefCell;

use rbac_core::{Decision as Rbac, Rbac as View, Request, INTERESTS};

wit_bindgen::generate!({
    world: "authorizer",
    path: "../../wit",
});

use exports::shoal::plugin::authorizer_policy::{
    Attributes, Decision, Guest, ObjectEvent, Verdict,
};

thread_local! {
    // A component instance is single-threaded; the view lives for the instance.
    static VIEW: RefCell<View> = RefCell::new(View::new());
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        INTERESTS.iter().map(|k| k.to_string()).collect()
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn observe(events: Vec<ObjectEvent>) {
        VIEW.with_borrow_mut(|v| {
            for e in &events {
                v.observe_one(&e.kind, e.handle, e.deleted, &e.object);
            }
        });
    }

    fn authorize(a: Attributes) -> Verdict {
        let req = Request {
            user: &a.user,
            groups: &a.groups,
            verb: &a.verb,
            resource_request: a.resource_request,
            namespace: &a.namespace,
            api_group: &a.api_group,
            resource: &a.resource,
            subresource: &a.subresource,
            name: &a.name,
            path: &a.path,
        };
        match VIEW.with_borrow(|v| v.authorize(&req)) {
            Rbac::Allow(reason) => Verdict {
                decision: Decision::Allow,
                reason,
            },
            Rbac::NoOpinion => Verdict {
                decision: Decision::NoOpinion,
                reason: String::new(),
            },
        }
    }
}

export!(Component);
