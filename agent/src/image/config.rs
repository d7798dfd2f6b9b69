//! Registry configuration in the shape of k3s's `registries.yaml`: mirrors per
//! upstream registry, and per-endpoint-host auth and TLS.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["https://127.0.0.1:6443"]
//! configs:
//!   "127.0.0.1:6443":
//!     tls: {ca_file: /var/lib/shoal/pki/ca.crt, cert_file: node.crt, key_file: node.key}
//!   "127.0.0.1:5000":
//!     plain_http: true
//!     auth: {username: u, password: p}
//! disable_default_endpoint: true
//! ```

use super::reference::{Reference, DOCKER_HUB, DOCKER_HUB_API};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors reading registry configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The YAML is malformed.
    #[error("parsing {0}: {1}")]
    Parse(String, serde_yaml::Error),
    /// A value is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Mirrors and per-host settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryConfig {
    /// Upstream registry host (`docker.io`, or `*` for all) → mirror endpoints, tried in order.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Endpoint host (`host[:port]`) → auth and TLS for requests to it.
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
    /// Only use the mirrors of a registry that has them, never its own endpoint
    /// (k3s's `--disable-default-registry-endpoint`). Air-gapped clusters want
    /// this; unset means false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_default_endpoint: Option<bool>,
}

/// Mirror endpoints for one upstream registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// Base URLs (`https://host[:port][/path]`); `/v2/...` is appended.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Settings for one endpoint host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConfig {
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Talk plain HTTP to this host's default endpoint (for registries on
    /// loopback or a trusted network; mirror endpoints choose by their scheme).
    #[serde(default)]
    pub plain_http: bool,
}

/// Registry credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// `base64(user:password)`, as in a docker config.json.
    #[serde(default)]
    pub auth: Option<String>,
    /// A bearer token sent as is (no token exchange).
    #[serde(default)]
    pub identity_token: Option<String>,
}

/// TLS for an endpoint host. `*_data` fields carry PEM text or base64 of PEM
/// (as kubeconfig `*-data` fields do); `*_file` fields name PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// Extra CA certificates to trust (in addition to the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// CA certificates, inline.
    #[serde(default)]
    pub ca_data: Option<String>,
    /// Client certificate chain, inline.
    #[serde(default)]
    pub cert_data: Option<String>,
    /// Client private key, inline.
    #[serde(default)]
    pub key_data: Option<String>,
    /// Accept any server certificate (test setups only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Where to send requests for one image, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash and without `/v2`.
    pub base: String,
    /// `host[:port]` of the base URL: the key into `configs`.
    pub host: String,
    /// Whether this is a mirror (requests then carry `?ns=<upstream>`, as
    /// containerd sends, so one mirror can serve several upstreams).
    pub mirror: bool,
}

impl RegistryConfig {
    /// Read a registries.yaml file.
    pub fn load(path: &Path) -> Result<RegistryConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parse registries.yaml text (`origin` names it in errors).
    pub fn from_yaml(text: &str, origin: &str) -> Result<RegistryConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(RegistryConfig::default());
        }
        let c: RegistryConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(origin.to_string(), e))?;
        for (reg, m) in &c.mirrors {
            for e in &m.endpoint {
                split_url(e).map_err(|why| {
                    ConfigError::Invalid(format!("mirror endpoint {e:?} of {reg}: {why}"))
                })?;
            }
        }
        Ok(c)
    }

    /// Shoal's default: `docker.io` is served by the cluster's built-in registry at
    /// `server` (the API server's URL) with `tls` (the cluster CA and the node's
    /// client certificate), and Docker Hub itself is not contacted.
    pub fn builtin_mirror(server: &str, tls: TlsConfig) -> RegistryConfig {
        let base = server.trim_end_matches('/').to_string();
        let host = split_url(&base).map(|(_, h, _)| h).unwrap_or_default();
        let mut c = RegistryConfig {
            disable_default_endpoint: Some(true),
            ..Default::default()
        };
        c.mirrors.insert(
            DOCKER_HUB.into(),
            Mirror {
                endpoint: vec![base],
            },
        );
        c.configs.insert(
            host,
            HostConfig {
                tls: Some(tls),
                ..Default::default()
            },
        );
        c
    }

    /// Overlay `other` (e.g. a registries.yaml) on `self`: its mirrors and
    /// configs replace same-named ones, and its `disable_default_endpoint` wins
    /// when set.
    pub fn merge(&mut self, other: RegistryConfig) {
        self.mirrors.extend(other.mirrors);
        self.configs.extend(other.configs);
        if other.disable_default_endpoint.is_some() {
            self.disable_default_endpoint = other.disable_default_endpoint;
        }
    }

    /// Settings for an endpoint host (`docker.io` settings also apply to Docker Hub's API host).
    pub fn host_config(&self, host: &str) -> Option<&HostConfig> {
        self.configs.get(host).or_else(|| {
            if host == DOCKER_HUB_API || host == "index.docker.io" {
                self.configs.get(DOCKER_HUB)
            } else {
                None
            }
        })
    }

    /// The endpoints to try for `r`: its mirrors in order, then (unless disabled
    /// while mirrors exist) the registry itself.
    pub fn endpoints(&self, r: &Reference) -> Vec<Endpoint> {
        let mirrors = self
            .mirrors
            .get(&r.registry)
            .or_else(|| self.mirrors.get("*"))
            .map(|m| m.endpoint.as_slice())
            .unwrap_or_default();
        let mut out: Vec<Endpoint> = mirrors
            .iter()
            .filter_map(|e| {
                let (scheme, host, path) = split_url(e).ok()?;
                Some(Endpoint {
                    base: format!("{scheme}://{host}{path}"),
                    host,
                    mirror: true,
                })
            })
            .collect();
        if out.is_empty() || self.disable_default_endpoint != Some(true) {
            let host = if r.registry == DOCKER_HUB {
                DOCKER_HUB_API.to_string()
            } else {
                r.registry.clone()
            };
            let plain = self
                .host_config(&r.registry)
                .or_else(|| self.host_config(&host))
                .is_some_and(|c| c.plain_http);
            let scheme = if plain { "http" } else { "https" };
            // A mirror that is also the registry itself is not asked twice.
            if !out.iter().any(|e| e.host == host) {
                out.push(Endpoint {
                    base: format!("{scheme}://{host}"),
                    host,
                    mirror: false,
                });
            }
        }
        out
    }
}

/// Split `scheme://host[:port][/path]` into (scheme, host, path without a
/// trailing slash or `/v2` suffix).
pub fn split_url(url: &str) -> Result<(String, String, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "missing http:// or https://".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix("/v2").unwrap_or(path);
    Ok((scheme.to_string(), host.to_string(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_style_yaml() {
        let y = r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.local:6443/", "http://127.0.0.1:5000/v2"]
configs:
  "mirror.local:6443":
    auth: {username: u, password: p}
    tls: {insecure_skip_verify: true}
"#;
        let c = RegistryConfig::from_yaml(y, "test").unwrap();
        let r = Reference::parse("busybox").unwrap();
        let eps = c.endpoints(&r);
        assert_eq!(
            eps.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            vec![
                "https://mirror.local:6443",
                "http://127.0.0.1:5000",
                "https://registry-1.docker.io"
            ]
        );
        assert!(eps[0].mirror && !eps[2].mirror);
        let hc = c.host_config("mirror.local:6443").unwrap();
        assert!(hc.tls.as_ref().unwrap().insecure_skip_verify);
        assert!(RegistryConfig::from_yaml("mirrors: {x: {endpoint: [\"ftp://x\"]}}", "t").is_err());
    }

    #[test]
    fn builtin_mirror_disables_docker_hub_but_not_other_registries() {
        let c = RegistryConfig::builtin_mirror("https://127.0.0.1:6443/", TlsConfig::default());
        let eps = c.endpoints(&Reference::parse("busybox").unwrap());
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].base, "https://127.0.0.1:6443");
        assert_eq!(eps[0].host, "127.0.0.1:6443");
        assert!(c.host_config("127.0.0.1:6443").is_some());
        let eps = c.endpoints(&Reference::parse("127.0.0.1:5000/app").unwrap());
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].base, "https://127.0.0.1:5000");
        assert!(!eps[0].mirror);
    }

    #[test]
    fn merging_a_file_can_reenable_the_default_endpoint() {
        let mut c = RegistryConfig::builtin_mirror("https://h:1", TlsConfig::default());
        c.merge(RegistryConfig::from_yaml("configs: {\"x:1\": {plain_http: true}}", "t").unwrap());
        assert_eq!(c.disable_default_endpoint, Some(true));
        assert!(c.host_config("h:1").is_some() && c.host_config("x:1").is_some());
        c.merge(RegistryConfig::from_yaml("disable_default_endpoint: false", "t").unwrap());
        let eps = c.endpoints(&Reference::parse("busybox").unwrap());
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].base, "https://registry-1.docker.io");
    }

    #[test]
    fn plain_http_hosts() {
        let mut c = RegistryConfig::default();
        c.configs.insert(
            "127.0.0.1:5000".into(),
            HostConfig {
                plain_http: true,
                ..Default::default()
            },
        );
        let eps = c.endpoints(&Reference::parse("127.0.0.1:5000/app").unwrap());
        assert_eq!(eps[0].base, "http://127.0.0.1:5000");
    }
}
