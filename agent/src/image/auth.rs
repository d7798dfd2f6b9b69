//! Registry authentication: `WWW-Authenticate` challenges and which
//! credentials apply to an endpoint.

use super::config::RegistryConfig;
use super::reference::{DOCKER_HUB, DOCKER_HUB_API};
use super::RegistryAuth;
use base64::Engine;
use std::collections::BTreeMap;

/// Credentials for one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password: sent as HTTP basic auth, or to the token service.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

impl Credentials {
    /// The `Authorization` value for basic auth.
    pub fn basic_header(username: &str, password: &str) -> String {
        let raw = format!("{username}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// One parsed challenge: a scheme (lowercased) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer`.
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, …), keys lowercased.
    pub params: BTreeMap<String, String>,
}

/// Parse a `WWW-Authenticate` header value (one or more challenges).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    while i < s.len() {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        if i < s.len() && s[i] == b'=' {
            // key=value belongs to the current challenge.
            i += 1;
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().unwrap_or(' ');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// Canonical registry host of a credential's `registry` field: accepts
/// `https://index.docker.io/v1/`, `docker.io`, `host:port/…`.
pub fn canonical_registry(s: &str) -> String {
    let s = s
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | DOCKER_HUB_API | "registry.hub.docker.com" => DOCKER_HUB.into(),
        _ => host,
    }
}

/// Credentials for requests to `endpoint_host` while pulling from `registry`:
/// pull secrets naming the endpoint host, then the config's auth for that host,
/// then (for the registry's own endpoint) pull secrets naming the registry.
pub fn credentials_for(
    config: &RegistryConfig,
    auth: &[RegistryAuth],
    registry: &str,
    endpoint_host: &str,
    mirror: bool,
) -> Option<Credentials> {
    let endpoint = canonical_registry(endpoint_host);
    let from_secret = |host: &str| {
        auth.iter()
            .find(|a| canonical_registry(&a.registry) == host)
            .map(|a| Credentials::Basic {
                username: a.username.clone(),
                password: a.password.clone(),
            })
    };
    if let Some(c) = from_secret(&endpoint) {
        return Some(c);
    }
    if let Some(a) = config
        .host_config(endpoint_host)
        .and_then(|h| h.auth.as_ref())
    {
        if let Some(t) = &a.identity_token {
            return Some(Credentials::Bearer(t.clone()));
        }
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Some(Credentials::Basic {
                username: u.clone(),
                password: p.clone(),
            });
        }
        if let Some(encoded) = &a.auth {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (u, p) = raw.split_once(':')?;
            return Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            });
        }
    }
    if !mirror {
        return from_secret(&canonical_registry(registry));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");
        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm=x"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].params["realm"], "x");
    }

    #[test]
    fn picks_credentials_by_host() {
        let secrets = vec![RegistryAuth {
            registry: "https://index.docker.io/v1/".into(),
            username: "hub".into(),
            password: "pw".into(),
        }];
        let cfg =
            RegistryConfig::from_yaml("configs: {\"mirror:5000\": {auth: {auth: \"dTpw\"}}}", "t")
                .unwrap();
        // Docker Hub's own endpoint gets the docker.io secret.
        assert_eq!(
            credentials_for(&cfg, &secrets, "docker.io", DOCKER_HUB_API, false),
            Some(Credentials::Basic {
                username: "hub".into(),
                password: "pw".into()
            })
        );
        // A mirror uses its own configured credentials (u:p), not the upstream's.
        assert_eq!(
            credentials_for(&cfg, &secrets, "docker.io", "mirror:5000", true),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            credentials_for(&cfg, &secrets, "docker.io", "other:1", true),
            None
        );
    }
}
