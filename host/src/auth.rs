//! Authentication: who a request comes from.

use rustls::pki_types::CertificateDer;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (client certificate CN).
    pub user: String,
    /// Groups (client certificate O entries), plus `system:authenticated`.
    pub groups: Vec<String>,
}

impl Identity {
    /// Read the identity from a verified client certificate.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Identity> {
        let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let user = x
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let mut groups: Vec<String> = x
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        groups.push("system:authenticated".into());
        Some(Identity { user, groups })
    }

    /// Whether the user is in `system:masters`.
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}
