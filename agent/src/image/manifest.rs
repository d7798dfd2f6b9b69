//! The OCI (and Docker schema 2) manifest, index and config documents, only
//! the fields Shoal reads or writes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Zstd OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for manifest requests: every manifest kind Shoal reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Annotation naming a tag in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation carrying the full image name in exported archives.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Alternate locations (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// A platform in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (GOARCH names: amd64, arm64, …).
    pub architecture: String,
    /// Operating system (linux).
    pub os: String,
    /// CPU variant (v7, v8, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2: the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, lowest first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the document carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Document {
    /// A single-platform manifest.
    Manifest(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// Whether a media type names an index or a manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Whether a media type names any manifest kind Shoal reads.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST
    )
}

/// Parse a manifest document; `media_type` is the Content-Type the registry sent
/// (the document's own `mediaType` wins when present).
pub fn parse_document(
    media_type: Option<&str>,
    bytes: &[u8],
) -> Result<(String, Document), String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if probe.schema_version != Some(2) {
        return Err(format!(
            "unsupported manifest schemaVersion {:?} (Docker schema 1 is not supported)",
            probe.schema_version
        ));
    }
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| {
            media_type
                .filter(|m| is_manifest_type(m))
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
    if is_index(&media_type) || (probe.manifests.is_some() && probe.config.is_none()) {
        let idx: Index =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid image index: {e}"))?;
        Ok((media_type, Document::Index(idx)))
    } else {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid image manifest: {e}"))?;
        Ok((media_type, Document::Manifest(m)))
    }
}

/// This machine's platform in OCI terms (GOARCH names).
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: variant.map(str::to_string),
    }
}

/// Pick the entry of an index for `want`: same OS and architecture, preferring a
/// matching variant (an entry without a variant is acceptable).
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let candidates = index.manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
    });
    let mut fallback = None;
    for d in candidates {
        let variant = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        if variant == want.variant.as_deref() {
            return Some(d);
        }
        if fallback.is_none() && (variant.is_none() || want.variant.is_none()) {
            fallback = Some(d);
        }
    }
    // Archives with a single untagged-platform manifest (e.g. OCI layouts written
    // by simple tools) carry no platform; accept it when it is the only entry.
    fallback.or_else(|| match index.manifests.as_slice() {
        [only] if only.platform.is_none() => Some(only),
        _ => None,
    })
}

/// The parts of the image config file Shoal reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// Container defaults.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// Layer diff IDs.
    pub rootfs: RootFs,
}

/// The `config` object of an image config (Docker's capitalized keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// ENTRYPOINT.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// ENV.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// WORKDIR.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// USER.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// sha256 of each uncompressed layer, lowest first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    /// The runtime-relevant parts, with empty strings read as unset.
    pub fn image_config(&self) -> super::ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        super::ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|s| !s.is_empty()),
            user: c.user.filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: char) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", n.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
            annotations: None,
            urls: None,
        }
    }

    #[test]
    fn picks_platform_from_index() {
        let idx = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                desc("arm", Some("v6"), 'a'),
                desc("arm", Some("v7"), 'b'),
                desc("amd64", None, 'c'),
                desc("arm64", Some("v8"), 'd'),
            ],
            annotations: None,
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(select_platform(&idx, &amd64)
            .unwrap()
            .digest
            .contains("ccc"));
        let armv7 = Platform {
            architecture: "arm".into(),
            os: "linux".into(),
            variant: Some("v7".into()),
        };
        assert!(select_platform(&idx, &armv7)
            .unwrap()
            .digest
            .contains("bbb"));
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(select_platform(&idx, &s390).is_none());
    }

    #[test]
    fn parses_documents_by_shape_and_type() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:x","size":1},"layers":[]}"#;
        let (mt, d) = parse_document(None, m).unwrap();
        assert_eq!(mt, OCI_MANIFEST);
        assert!(matches!(d, Document::Manifest(_)));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        let (mt, d) = parse_document(Some(DOCKER_LIST), i).unwrap();
        assert_eq!(mt, DOCKER_LIST);
        assert!(matches!(d, Document::Index(_)));
        assert!(parse_document(None, br#"{"schemaVersion":1}"#).is_err());
    }
}
