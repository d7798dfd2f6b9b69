//! The cluster CA, serving and client certificates, and kubeconfig files.
//! Generated on first start under `<data-dir>/pki` and reused afterwards.

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// Errors creating or loading key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Certificate generation or parsing failure.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// The cluster's key material, as PEM.
#[derive(Clone)]
pub struct Pki {
    /// CA certificate.
    pub ca_cert: String,
    ca_key: String,
    /// Serving certificate for the API server.
    pub server_cert: String,
    /// Serving key.
    pub server_key: String,
}

/// The user name the host presents to node agents (their API, for logs and
/// exec), as kube-apiserver presents its `apiserver-kubelet-client`
/// certificate to kubelets. Agents accept no other client.
pub const AGENT_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Files (under the PKI directory) of the host's client certificate for node agents.
pub const AGENT_CLIENT_FILES: (&str, &str) = (
    "apiserver-kubelet-client.crt",
    "apiserver-kubelet-client.key",
);

/// A client certificate and its key.
pub struct ClientCert {
    /// Certificate PEM.
    pub cert: String,
    /// Private key PEM.
    pub key: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Write a file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d.push(DnType::CommonName, cn);
    d
}

impl Pki {
    /// Load the PKI from `dir`, creating whatever is missing. `hosts` are the
    /// names and addresses the serving certificate must cover.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.into(),
            source,
        })?;
        let (ca_cert, ca_key) = match (read(&dir.join("ca.crt"))?, read(&dir.join("ca.key"))?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate()?;
                let mut p = CertificateParams::new(Vec::<String>::new())?;
                p.distinguished_name = dn("shoal-ca", &[]);
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                p.not_before = rcgen::date_time_ymd(2024, 1, 1);
                p.not_after = rcgen::date_time_ymd(2124, 1, 1);
                let cert = p.self_signed(&key)?;
                let (c, k) = (cert.pem(), key.serialize_pem());
                write_private(&dir.join("ca.key"), &k)?;
                write_private(&dir.join("ca.crt"), &c)?;
                (c, k)
            }
        };
        let mut pki = Pki {
            ca_cert,
            ca_key,
            server_cert: String::new(),
            server_key: String::new(),
        };
        match (
            read(&dir.join("server.crt"))?,
            read(&dir.join("server.key"))?,
        ) {
            (Some(c), Some(k)) => {
                pki.server_cert = c;
                pki.server_key = k;
            }
            _ => {
                let (c, k) = pki.issue_server(hosts)?;
                write_private(&dir.join("server.key"), &k)?;
                write_private(&dir.join("server.crt"), &c)?;
                pki.server_cert = c;
                pki.server_key = k;
            }
        }
        let (crt, key) = (
            dir.join(AGENT_CLIENT_FILES.0),
            dir.join(AGENT_CLIENT_FILES.1),
        );
        if read(&crt)?.is_none() || read(&key)?.is_none() {
            let c = pki.issue_client(AGENT_CLIENT_CN, &[])?;
            write_private(&key, &c.key)?;
            write_private(&crt, &c.cert)?;
        }
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.ca_key)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca_cert, key)?)
    }

    fn issue_server(&self, hosts: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn("shoal-apiserver", &[]);
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        names.extend(hosts.iter().cloned());
        names.sort();
        names.dedup();
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.try_into()?),
                });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issue a client certificate: CN is the user name, O entries are groups.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<ClientCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(user, groups);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok(ClientCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The host's client certificate for node agents, from the PKI directory
/// (made by [`Pki::load_or_create`]).
pub fn agent_client(dir: &Path) -> Result<ClientCert, PkiError> {
    let missing = |p: PathBuf| PkiError::Io {
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
        path: p,
    };
    let (crt, key) = (
        dir.join(AGENT_CLIENT_FILES.0),
        dir.join(AGENT_CLIENT_FILES.1),
    );
    Ok(ClientCert {
        cert: read(&crt)?.ok_or_else(|| missing(crt.clone()))?,
        key: read(&key)?.ok_or_else(|| missing(key.clone()))?,
    })
}

/// Render a kubeconfig for `server` authenticating with a client certificate.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &ClientCert,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\n    namespace: default\ncurrent-context: {cluster}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert),
        key = b64(&client.key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &["example.test".into()]).unwrap();
        let b = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_cert, b.ca_cert);
        assert_eq!(a.server_cert, b.server_cert);
        let c = a.issue_client("alice", &["devs"]).unwrap();
        assert!(c.cert.contains("BEGIN CERTIFICATE"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(c.cert.as_bytes()).unwrap();
        let x = pem.parse_x509().unwrap();
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "alice");
        let host = agent_client(dir.path()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(host.cert.as_bytes()).unwrap();
        let x = pem.parse_x509().unwrap();
        let cn = x.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), AGENT_CLIENT_CN);
    }
}
