//! API behaviour tested in-process through the router (no sockets), with a
//! real redb store in a temporary directory.

use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use serde_json::{json, Value};
use shoal_host::api::{self, ApiConfig, AppState};
use shoal_host::auth::Identity;
use shoal_host::metrics::Metrics;
use shoal_host::store::embedded::{EmbeddedOptions, EmbeddedStore};
use shoal_host::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    _dir: tempfile::TempDir,
}

async fn harness(config: ApiConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(
            &dir.path().join("db.redb"),
            EmbeddedOptions::default(),
            None,
        )
        .unwrap(),
    );
    let state = Arc::new(AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        config,
        hooks: Default::default(),
    });
    let h = Harness {
        app: api::router(state.clone()),
        _dir: dir,
    };
    // The same bootstrap the server does: the default namespace.
    let (code, _) = h
        .call(
            "POST",
            "/api/v1/namespaces",
            Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    h
}

fn admin() -> Identity {
    Identity {
        user: "admin".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
        ..Default::default()
    }
}

impl Harness {
    async fn raw(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let code = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (code, headers, body)
    }

    async fn send(&self, method: &str, path: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        req.extensions_mut().insert(admin());
        let (code, _, body) = self.raw(req).await;
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        (code, v)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        self.send(method, path, "application/json", b).await
    }
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
}

#[tokio::test]
async fn unauthenticated_gets_401_but_health_is_open() {
    let h = harness(ApiConfig::default()).await;
    let (code, _, body) = h
        .raw(
            Request::get("/api/v1/namespaces")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let s: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["code"].as_u64()),
        (Some("Status"), Some(401))
    );
    let (code, _, _) = h
        .raw(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = h
        .raw(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let h = harness(ApiConfig {
        max_body_bytes: 4096,
        ..ApiConfig::default()
    })
    .await;
    let p = "/api/v1/namespaces/default/configmaps";
    let (code, s) = h
        .send("POST", p, "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, s) = h
        .send("POST", p, "application/yaml", b"a: [1, 2".to_vec())
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, s) = h
        .call(
            "POST",
            p,
            Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(s["message"].as_str().unwrap().contains("kind"), "{s}");
    let (code, s) = h.call("POST", p, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": "oops"}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": "x".repeat(10_000)}});
    let (code, s) = h.call("POST", p, Some(big)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{s}");
    let (code, s) = h.call("GET", "/api/v1/widgets", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
    assert_eq!(s["kind"], "Status");
    let (code, _) = h
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/x/y/z",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, s) = h
        .call(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=a%20in%20(",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, s) = h
        .call(
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
    let (code, s) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/none",
            "application/json-patch+json",
            b"[]".to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
    h.call("POST", p, Some(cm("c"))).await;
    let (code, s) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/c",
            "text/plain",
            b"x".to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{s}");
    let (code, s) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/c",
            "application/merge-patch+json",
            b"[1]".to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{s}");
}

#[tokio::test]
async fn invalid_objects_get_422_naming_the_field() {
    let h = harness(ApiConfig::default()).await;
    let (code, s) = h
        .call(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(cm("Bad_Name")),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    let (code, s) = h
        .call("POST", "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );
    // A pod's containers are immutable.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
    let (code, _) = h
        .call("POST", "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let patch = json!({"spec": {"containers": [{"name": "c", "image": "i:1"}, {"name": "d", "image": "i:1"}]}});
    let (code, s) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "application/merge-patch+json",
            serde_json::to_vec(&patch).unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["details"]["causes"][0]["field"], "spec");
    // Image changes are allowed.
    let patch = json!({"spec": {"containers": [{"name": "c", "image": "i:2"}]}});
    let (code, s) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            "application/strategic-merge-patch+json",
            serde_json::to_vec(&patch).unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["spec"]["containers"][0]["image"], "i:2");
}

#[tokio::test]
async fn namespaces_must_exist_and_not_be_terminating() {
    let h = harness(ApiConfig::default()).await;
    let (code, s) = h
        .call("POST", "/api/v1/namespaces/nope/configmaps", Some(cm("a")))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{s}");
    h.call(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}})),
    )
    .await;
    let (code, sa) = h
        .call("GET", "/api/v1/namespaces/t/serviceaccounts/default", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{sa}");
    let (code, ns) = h.call("DELETE", "/api/v1/namespaces/t", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ns["status"]["phase"], "Terminating");
    let (code, s) = h
        .call("POST", "/api/v1/namespaces/t/configmaps", Some(cm("a")))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{s}");
}

#[tokio::test]
async fn create_generate_name_conflicts_and_finalizers() {
    let h = harness(ApiConfig::default()).await;
    let p = "/api/v1/namespaces/default/configmaps";
    let (code, o) = h.call("POST", p, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}))).await;
    assert_eq!(code, StatusCode::CREATED);
    let name = o["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(o["metadata"]["uid"].is_string() && o["metadata"]["creationTimestamp"].is_string());
    let (code, _) = h.call("POST", p, Some(cm("dup"))).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, s) = h.call("POST", p, Some(cm("dup"))).await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists"))
    );

    // Finalizers hold deletion until they are removed.
    let mut f = cm("held");
    f["metadata"]["finalizers"] = json!(["example.com/hold"]);
    h.call("POST", p, Some(f)).await;
    let (code, o) = h.call("DELETE", &format!("{p}/held"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(o["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = h.call("GET", &format!("{p}/held"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = h
        .send(
            "PATCH",
            &format!("{p}/held"),
            "application/merge-patch+json",
            br#"{"metadata":{"finalizers":null}}"#.to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = h.call("GET", &format!("{p}/held"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // propagationPolicy is recorded as the GC finalizer.
    h.call("POST", p, Some(cm("fg"))).await;
    let (_, o) = h.call("DELETE", &format!("{p}/fg"), Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}))).await;
    assert_eq!(o["metadata"]["finalizers"], json!(["foregroundDeletion"]));

    // deletecollection with a selector.
    let mut l = cm("l1");
    l["metadata"]["labels"] = json!({"x": "y"});
    h.call("POST", p, Some(l)).await;
    let (code, _) = h
        .call("DELETE", &format!("{p}?labelSelector=x%3Dy"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = h.call("GET", &format!("{p}/l1"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, list) = h.call("GET", p, None).await;
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["metadata"]["name"] == "dup"));
}

#[tokio::test]
async fn status_scale_and_binding_subresources() {
    let h = harness(ApiConfig::default()).await;
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    let (code, o) = h
        .call(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some(d),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{o}");
    assert_eq!(o["spec"]["replicas"], 1);
    let (code, sc) = h
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/d/scale",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (
            sc["kind"].as_str(),
            sc["spec"]["replicas"].as_i64(),
            sc["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(1), Some("a=b"))
    );
    let (code, sc) = h
        .send(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/d/scale",
            "application/merge-patch+json",
            br#"{"spec":{"replicas":3}}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (code, sc["spec"]["replicas"].as_i64()),
        (StatusCode::OK, Some(3))
    );
    // The main resource ignores status; the status subresource only takes status.
    let (_, mut cur) = h
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/d",
            None,
        )
        .await;
    assert_eq!(cur["metadata"]["generation"], 2);
    cur["status"] = json!({"replicas": 3, "readyReplicas": 2});
    cur["spec"]["replicas"] = json!(9);
    let (code, o) = h
        .call(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/d/status",
            Some(cur),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{o}");
    assert_eq!(
        (
            o["status"]["readyReplicas"].as_i64(),
            o["spec"]["replicas"].as_i64()
        ),
        (Some(2), Some(3))
    );

    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
    h.call("POST", "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let (code, s) = h
        .call(
            "POST",
            "/api/v1/namespaces/default/pods/p/binding",
            Some(b.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    let (code, s) = h
        .call("POST", "/api/v1/namespaces/default/pods/p/binding", Some(b))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{s}");
    let (_, p) = h
        .call(
            "GET",
            "/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dn1",
            None,
        )
        .await;
    assert_eq!(p["items"][0]["metadata"]["name"], "p");
    // A bound pod is deleted gracefully: it stays, marked, until a forced delete.
    let (_, p) = h
        .call("DELETE", "/api/v1/namespaces/default/pods/p", None)
        .await;
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    let (code, _) = h
        .call("GET", "/api/v1/namespaces/default/pods/p", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    h.call(
        "DELETE",
        "/api/v1/namespaces/default/pods/p",
        Some(json!({"gracePeriodSeconds": 0})),
    )
    .await;
    let (code, _) = h
        .call("GET", "/api/v1/namespaces/default/pods/p", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn table_output_and_strict_field_validation() {
    let h = harness(ApiConfig::default()).await;
    h.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(cm("t")),
    )
    .await;
    let mut req = Request::get("/api/v1/namespaces/default/configmaps")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(admin());
    let (code, _, body) = h.raw(req).await;
    assert_eq!(code, StatusCode::OK);
    let t: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Data", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "t");
    assert_eq!(t["rows"][0]["cells"][1], 1);
    let mut bad = cm("u");
    bad["spec"] = json!({"oops": 1});
    let (code, s) = h
        .call(
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            Some(bad.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec\""),
        "{s}"
    );
    // Without Strict, unknown fields are dropped like Kubernetes does.
    let (code, o) = h
        .call("POST", "/api/v1/namespaces/default/configmaps", Some(bad))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(o.get("spec").is_none());
}

#[tokio::test]
async fn watch_streams_events_and_bookmarks() {
    let h = harness(ApiConfig {
        bookmark_interval: Duration::from_millis(200),
        ..ApiConfig::default()
    })
    .await;
    let (_, list) = h
        .call("GET", "/api/v1/namespaces/default/configmaps", None)
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut req = Request::get(format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(admin());
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    h.call(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(cm("w1")),
    )
    .await;
    h.call("DELETE", "/api/v1/namespaces/default/configmaps/w1", None)
        .await;
    let mut types = Vec::new();
    let mut buf = Vec::new();
    while types.len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line).unwrap();
            types.push(ev["type"].as_str().unwrap().to_string());
            if ev["type"] == "BOOKMARK" {
                assert!(
                    ev["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        > rv.parse::<u64>().unwrap()
                );
            }
        }
    }
    assert_eq!(&types[..3], ["ADDED", "DELETED", "BOOKMARK"]);
}
