//! Pod subresources served by the pod's node agent: `pods/log` and
//! `pods/exec`. The host checks the request against the pod (404 for a
//! missing pod, 400 for a bad or ambiguous container), then forwards it to
//! the agent's API (see `shoal_agent::server`) at the Node's InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`, like kube-apiserver's
//! kubelet proxy.
//!
//! Transport: mutual TLS. The host presents its own client certificate
//! (`pki::AGENT_CLIENT_CN`, issued at start); it does not verify the agent's
//! self-signed serving certificate (kube-apiserver's default without
//! `--kubelet-certificate-authority`), but does check its handshake signatures.
//!
//! Upgrades (exec over WebSocket) are proxied as raw byte streams: the
//! client's upgrade request goes to the agent unchanged (including
//! `Sec-WebSocket-Key` and the offered subprotocols), the agent's `101`
//! comes back unchanged, and then bytes are copied both ways. So the agent
//! alone negotiates the subprotocol and speaks the channel protocol, and new
//! streaming subresources (port-forward) need no protocol code here: only a
//! path on the agent and a call to [`forward_to_node`].

use super::error::{ApiError, ApiResult};
use super::handlers::Target;
use super::object;
use super::AppState;
use crate::pki;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{header, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Pod subresources this module serves.
pub const POD_SUBRESOURCES: &[&str] = &["log", "exec"];

/// The pod named in `t`, with its namespace and name; 404 when it is gone.
fn stored_pod(state: &AppState, t: &Target) -> ApiResult<(String, String, Value)> {
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let kv = state
        .store
        .get(&t.info.key(Some(&ns), &name))?
        .ok_or_else(|| ApiError::NotFound {
            group: String::new(),
            resource: "pods".into(),
            name: name.clone(),
        })?;
    let pod = object::from_store(&kv)?;
    Ok((ns, name, pod))
}

/// Serve `pods/<sub>` for the pod named in `t`.
pub async fn pod_subresource(
    state: &AppState,
    t: &Target,
    sub: &str,
    req: Request<Body>,
) -> ApiResult<Response> {
    let (ns, name, pod) = stored_pod(state, t)?;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let requested = query
        .iter()
        .rev()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty());
    let container = pick_container(&pod, &name, requested)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let uid = object::meta_str(&pod, "uid").unwrap_or("").to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = match sub {
        "log" => {
            let mut q = raw_query;
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&format!("podUID={}", enc(&uid)));
            format!(
                "/containerLogs/{}/{}/{}?{q}",
                enc(&ns),
                enc(&name),
                enc(&container)
            )
        }
        "exec" => format!(
            "/exec/{}/{}/{}/{}?{raw_query}",
            enc(&ns),
            enc(&name),
            enc(&uid),
            enc(&container)
        ),
        other => {
            return Err(ApiError::PathNotFound(format!(
                "the server could not find the requested resource (pods {other} is not served)"
            )))
        }
    };
    forward_to_node(state, node, &path, req).await
}

/// The container a request means: the named one (it must exist), or the
/// only one; otherwise 400 with Kubernetes' messages.
pub fn pick_container(pod: &Value, pod_name: &str, requested: Option<&str>) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (main, init, eph) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    if let Some(c) = requested {
        if main.iter().chain(&init).chain(&eph).any(|n| n == c) {
            return Ok(c.to_string());
        }
        return Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {pod_name}"
        )));
    }
    if main.len() == 1 {
        return Ok(main[0].clone());
    }
    let mut msg = format!(
        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
        main.join(" ")
    );
    if !init.is_empty() {
        msg.push_str(&format!(
            " or one of the init containers: [{}]",
            init.join(" ")
        ));
    }
    if !eph.is_empty() {
        msg.push_str(&format!(
            " or one of the ephemeral containers: [{}]",
            eph.join(" ")
        ));
    }
    Err(ApiError::BadRequest(msg))
}

/// The address of node `name`'s agent: its first InternalIP and the
/// kubelet endpoint port it reports.
fn agent_address(state: &AppState, name: &str) -> ApiResult<SocketAddr> {
    let info = super::resources::lookup("", "v1", "nodes").expect("nodes are served");
    let kv = state
        .store
        .get(&info.key(None, name))?
        .ok_or_else(|| ApiError::NotFound {
            group: String::new(),
            resource: "nodes".into(),
            name: name.into(),
        })?;
    let node = object::from_store(&kv)?;
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "node {name} reports no InternalIP to reach its agent"
            ))
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| {
            ApiError::Unavailable(format!("node {name} reports no agent endpoint port"))
        })?;
    Ok(SocketAddr::new(ip, port as u16))
}

/// Accepts the agent's certificate without checking who issued it, but
/// still verifies the handshake signatures made with its key.
#[derive(Debug)]
struct AnyAgentCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyAgentCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS to agents with the host's client certificate.
fn agent_tls(state: &AppState) -> ApiResult<rustls::ClientConfig> {
    let dir = state.hooks.pki_dir.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this server has no PKI to reach node agents with".into())
    })?;
    let cert = pki::agent_client(dir)
        .map_err(|e| ApiError::Internal(format!("the host's agent client certificate: {e}")))?;
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(format!("agent TLS: {e}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| internal(&e))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).map_err(|e| internal(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyAgentCert(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| internal(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serve `pods/portforward`: the pod must exist and be bound; the agent
/// (`/portForward/{ns}/{pod}`) speaks SPDY, WebSocket-tunnelled SPDY and the
/// v4 channel protocol itself. No container is involved: it connects to the
/// pod's own loopback.
pub async fn pod_port_forward(
    state: &AppState,
    t: &Target,
    req: Request<Body>,
) -> ApiResult<Response> {
    let (ns, name, pod) = stored_pod(state, t)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let uid = object::meta_str(&pod, "uid").unwrap_or("");
    let mut q = req.uri().query().unwrap_or("").to_string();
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(&format!("uid={}", enc(uid)));
    let path = format!("/portForward/{}/{}?{q}", enc(&ns), enc(&name));
    forward_to_node(state, node, &path, req).await
}

/// Forward `req` to `path_and_query` on node `node`'s agent and relay the
/// answer: a plain response is streamed back as it arrives (status, headers
/// and body as the agent sent them); a `101 Switching Protocols` is passed
/// back and the two upgraded connections are joined byte for byte.
///
/// This is the one helper a new agent-served subresource needs (e.g.
/// `pods/portforward` → `/portForward/{ns}/{pod}`).
pub async fn forward_to_node(
    state: &AppState,
    node: &str,
    path_and_query: &str,
    mut req: Request<Body>,
) -> ApiResult<Response> {
    let addr = agent_address(state, node)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(agent_tls(state)?));
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::Unavailable(format!(
            "error dialing backend: node {node} agent at {addr}: {e}"
        ))
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| unreachable(&"connection timed out"))?
    .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let stream = tls
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(path_and_query);
    for (k, v) in req.headers() {
        if k == header::HOST || k == header::AUTHORIZATION || k == header::CONTENT_LENGTH {
            continue;
        }
        out = out.header(k, v);
    }
    let out = out
        .header(header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::BadRequest(format!("cannot forward this request: {e}")))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| unreachable(&e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::Internal(
                "the node agent upgraded a request that asked for no upgrade".into(),
            ));
        };
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        let mut back = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            back = back.header(k, v);
        }
        tokio::spawn(async move {
            let (Ok(client), Ok(agent)) = tokio::join!(client_upgrade, agent_upgrade) else {
                return;
            };
            let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        });
        return back
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let (parts, body) = resp.into_parts();
    let mut back = Response::builder().status(parts.status);
    for (k, v) in &parts.headers {
        if k == header::CONNECTION || k == header::TRANSFER_ENCODING {
            continue;
        }
        back = back.header(k, v);
    }
    back.body(Body::new(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_like_kubernetes() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "app");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(pick_container(&two, "p", Some("i")).unwrap(), "i");
        let err = pick_container(&two, "p", None).unwrap_err();
        assert_eq!(err.code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.status()["message"],
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        let err = pick_container(&two, "p", Some("nope")).unwrap_err();
        assert_eq!(
            err.status()["message"],
            "container nope is not valid for pod p"
        );
    }
}
