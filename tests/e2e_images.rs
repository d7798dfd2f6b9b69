//! End-to-end image tests: `shoal image import` of docker-save tarballs and OCI
//! archives into a real server's built-in registry, an agent-side `ImageStore`
//! (in process) preparing `busybox` through the docker.io mirror, pulls from
//! Debian's `docker-registry` with basic auth, and token auth against a small
//! registry served by the test. Images are built here from busybox-static.

mod common;

use shoal_agent::image::auth::Credentials;
use shoal_agent::image::distribution::{Bytes, DistError, RegistryClient, Transport};
use shoal_agent::image::manifest::{
    ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use shoal_agent::image::push::Pusher;
use shoal_agent::image::{
    digest_of, ImageError, ImageService, ImageStore, PullPolicy, RegistryAuth, RegistryConfig,
    TlsConfig,
};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "echo", "sleep", "httpd", "cat", "env", "ls", "wget"];

fn have_busybox() -> bool {
    if Path::new(BUSYBOX).exists() {
        true
    } else {
        eprintln!("skipping: {BUSYBOX} is missing (apt-get install busybox-static)");
        false
    }
}

/// A one-layer busybox image, in the pieces archives and registries need.
struct BusyboxImage {
    /// Uncompressed layer tar (= its diff ID).
    layer: Vec<u8>,
    /// The same layer, gzipped (for OCI archives and registries).
    layer_gz: Vec<u8>,
    /// Image config JSON.
    config: Vec<u8>,
}

fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn append_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    b.append_link(&mut h, path, target).unwrap();
}

fn busybox_image() -> BusyboxImage {
    let bin = std::fs::read(BUSYBOX).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append_dir(&mut b, "bin/", 0o755);
    append_file(&mut b, "bin/busybox", &bin, 0o755);
    for a in APPLETS {
        append_symlink(&mut b, &format!("bin/{a}"), "busybox");
    }
    append_dir(&mut b, "etc/", 0o755);
    append_file(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    append_dir(&mut b, "tmp/", 0o1777);
    let layer = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let layer_gz = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
    }))
    .unwrap();
    BusyboxImage {
        layer,
        layer_gz,
        config,
    }
}

impl BusyboxImage {
    /// The OCI manifest (gzip layer).
    fn oci_manifest(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(&self.config), "size": self.config.len()},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": digest_of(&self.layer_gz), "size": self.layer_gz.len()}],
        }))
        .unwrap()
    }

    /// A `docker save` tarball (uncompressed layer, RepoTags).
    fn docker_save(&self, tags: &[&str]) -> Vec<u8> {
        let cid = &digest_of(&self.config)[7..];
        let lid = &digest_of(&self.layer)[7..];
        let manifest = serde_json::json!([{
            "Config": format!("{cid}.json"), "RepoTags": tags, "Layers": [format!("{lid}/layer.tar")],
        }]);
        let mut b = tar::Builder::new(Vec::new());
        append_file(&mut b, &format!("{cid}.json"), &self.config, 0o644);
        append_dir(&mut b, &format!("{lid}/"), 0o755);
        append_file(&mut b, &format!("{lid}/layer.tar"), &self.layer, 0o644);
        append_file(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
            0o644,
        );
        b.into_inner().unwrap()
    }

    /// An OCI image layout archive, one index entry per tag (`ref.name`).
    fn oci_archive(&self, tags: &[&str]) -> Vec<u8> {
        let m = self.oci_manifest();
        let entries: Vec<serde_json::Value> = tags
            .iter()
            .map(|t| {
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest_of(&m), "size": m.len(),
                    "annotations": {ANNOTATION_REF_NAME: t}})
            })
            .collect();
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        let mut b = tar::Builder::new(Vec::new());
        append_file(
            &mut b,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
        );
        append_file(
            &mut b,
            "index.json",
            &serde_json::to_vec(&index).unwrap(),
            0o644,
        );
        append_dir(&mut b, "blobs/", 0o755);
        append_dir(&mut b, "blobs/sha256/", 0o755);
        for data in [&m, &self.config, &self.layer_gz] {
            append_file(
                &mut b,
                &format!("blobs/sha256/{}", &digest_of(data)[7..]),
                data,
                0o644,
            );
        }
        b.into_inner().unwrap()
    }
}

/// The unpacked root has an executable busybox whose applet links work.
fn check_rootfs(root: &Path) {
    let bb = root.join("bin/busybox");
    let meta = std::fs::metadata(&bb).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    // Run the image's own binary through an applet symlink.
    let out = Command::new(root.join("bin/echo"))
        .arg("hello-from-image")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-from-image\n");
}

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Push a blob larger than one upload chunk (so PATCH with Content-Range is
/// used), then download it back and compare.
async fn large_blob_round_trip(client: &RegistryClient, repo: &str, dir: &Path) {
    let size = shoal_agent::image::push::CHUNK * 2 + 12_345;
    // Incompressible-looking, deterministic content.
    let data: Vec<u8> = (0..size as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = digest_of(&data);
    let p = Pusher::new(client, repo, None);
    assert!(p
        .push_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap());
    // Already there: not sent again.
    assert!(!p
        .push_blob(&digest, data.len() as u64, &data[..])
        .await
        .unwrap());
    let back = dir.join("large-blob");
    let n = client.fetch_blob(repo, &digest, &back).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_archives_and_prepares_busybox_through_the_builtin_mirror() {
    if !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(&dir.path().join("server"));
    let image = busybox_image();
    let docker = dir.path().join("busybox-docker.tar");
    std::fs::write(&docker, image.docker_save(&["busybox:latest"])).unwrap();
    let oci = dir.path().join("busybox-oci.tar");
    std::fs::write(&oci, image.oci_archive(&["busybox:1.36", "stable"])).unwrap();

    let out = run_ok(
        shoal()
            .args(["image", "import"])
            .arg(&docker)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig),
    );
    assert!(
        out.contains("imported docker.io/library/busybox:latest"),
        "{out}"
    );
    // The cluster is found through $KUBECONFIG, like kubectl does.
    let out = run_ok(
        shoal()
            .args(["image", "import"])
            .arg(&oci)
            .args(["--tag", "example.com/team/busybox:v1"])
            .env("KUBECONFIG", &server.kubeconfig),
    );
    let oci_digest = digest_of(&image.oci_manifest());
    assert!(
        out.contains(&format!(
            "imported docker.io/library/busybox:1.36 ({oci_digest})"
        )),
        "{out}"
    );
    assert!(
        out.contains("imported example.com/team/busybox:v1"),
        "{out}"
    );
    // The README's image, built by the example script.
    let script_tar = dir.path().join("script.tar");
    run_ok(
        Command::new("bash")
            .arg(repo_root().join("examples/build-busybox-image.sh"))
            .arg(&script_tar)
            .arg("busybox:script"),
    );
    run_ok(
        shoal()
            .args(["image", "import"])
            .arg(&script_tar)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig),
    );
    let list = run_ok(
        shoal()
            .args(["image", "list", "--kubeconfig"])
            .arg(&server.kubeconfig),
    );
    for want in [
        "docker.io/library/busybox",
        "latest",
        "1.36",
        "script",
        "example.com/team/busybox",
    ] {
        assert!(list.contains(want), "{want} missing from:\n{list}");
    }

    // The agent's view: a node identity and the cluster CA, docker.io mirrored
    // by the built-in registry, no internet.
    let pki = shoal_host::pki::Pki::load_or_create(&server.data_dir.join("pki"), &[]).unwrap();
    let node = pki
        .issue_client("system:node:n1", &["system:nodes"])
        .unwrap();
    let tls = TlsConfig {
        ca_data: Some(pki.ca_cert.clone()),
        cert_data: Some(node.cert.clone()),
        key_data: Some(node.key.clone()),
        ..Default::default()
    };
    let store = ImageStore::new(
        &dir.path().join("agent"),
        RegistryConfig::builtin_mirror(&server.url, tls.clone()),
    )
    .unwrap();
    let img = store
        .prepare("busybox", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(img.reference, "docker.io/library/busybox:latest");
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.config.env, vec!["PATH=/bin"]);
    check_rootfs(&img.rootfs);

    let img2 = store
        .prepare("docker.io/library/busybox:1.36", PullPolicy::Always, &[])
        .await
        .unwrap();
    assert_eq!(img2.digest, oci_digest);
    check_rootfs(&img2.rootfs);
    // The docker-save image and the OCI one share their config, so their roots too.
    assert_eq!(img2.rootfs, img.rootfs);
    let script = store
        .prepare("busybox:script", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    check_rootfs(&script.rootfs);
    assert!(script.rootfs.join("var/www/index.html").exists());
    // Other registries' images are mirrored under their own names when configured.
    let mut cfg = RegistryConfig::builtin_mirror(&server.url, tls.clone());
    cfg.mirrors
        .insert("example.com".into(), cfg.mirrors["docker.io"].clone());
    let other = ImageStore::new(&dir.path().join("agent-2"), cfg).unwrap();
    let ex = other
        .prepare("example.com/team/busybox:v1", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(ex.digest, oci_digest);

    let err = store
        .prepare("busybox:nope", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    assert_eq!(err.reason(), "ErrImagePull");

    // Nodes pull but may not push; no certificate at all gets a 401 challenge.
    let node_client = RegistryClient::new(&server.url, Some(&tls), None, None).unwrap();
    let err = Pusher::new(&node_client, "library/evil", None)
        .push_manifest("x", OCI_MANIFEST, Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DistError::Status { status: 403, .. }),
        "{err}"
    );
    let anonymous = RegistryClient::new(
        &server.url,
        Some(&TlsConfig {
            ca_data: Some(pki.ca_cert.clone()),
            ..Default::default()
        }),
        None,
        None,
    )
    .unwrap();
    let err = anonymous
        .get_manifest("library/busybox", "latest")
        .await
        .unwrap_err();
    assert!(matches!(err, DistError::Unauthorized(_)), "{err}");

    // Chunked uploads into the built-in registry, as an admin.
    let admin = pki
        .issue_client("image-admin", &["system:masters"])
        .unwrap();
    let admin_client = RegistryClient::new(
        &server.url,
        Some(&TlsConfig {
            ca_data: Some(pki.ca_cert.clone()),
            cert_data: Some(admin.cert),
            key_data: Some(admin.key),
            ..Default::default()
        }),
        None,
        None,
    )
    .unwrap();
    large_blob_round_trip(&admin_client, "test/large", dir.path()).await;

    // With the server gone, IfNotPresent is served locally and Always fails.
    assert!(server.stop());
    let again = store
        .prepare("busybox", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(again.digest, img.digest);
    let err = store
        .prepare("busybox", PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Pull(_)), "{err}");
    let err = store
        .prepare("busybox:other", PullPolicy::Never, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotPresent(_)), "{err}");
}

/// Debian's docker-registry on a loopback port, stopped by PID on drop.
struct DockerRegistry {
    child: std::process::Child,
    port: u16,
}

impl DockerRegistry {
    fn start(dir: &Path, htpasswd: &Path) -> DockerRegistry {
        let port = common::free_port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                dir.join("storage").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn docker-registry");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        DockerRegistry { child, port }
    }

    fn stop(&mut self) {
        // Our own child, by PID.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Push an archive's single image to `repo:tag` the way `shoal image import` does.
async fn push_archive(t: &dyn Transport, archive_path: &Path, repo: &str, tag: &str) -> String {
    let a = shoal_agent::image::archive::ImageArchive::open(archive_path).unwrap();
    let img = &a.images[0];
    let p = Pusher::new(t, repo, None);
    for b in &img.blobs {
        let r = a.async_reader(b.region).await.unwrap();
        p.push_blob(&b.digest, b.size, r).await.unwrap();
    }
    for m in &img.manifests {
        p.push_manifest(&m.digest, &m.media_type, m.bytes.clone())
            .await
            .unwrap();
    }
    let top = img.top();
    p.push_manifest(tag, &top.media_type, top.bytes.clone())
        .await
        .unwrap();
    top.digest.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_docker_registry_with_basic_auth_and_honours_pull_policy() {
    if !have_busybox() {
        return;
    }
    if !which("docker-registry") || !which("htpasswd") {
        eprintln!("skipping: docker-registry or htpasswd missing (apt-get install docker-registry apache2-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (user, pass) = ("puller", "s3cret-pass");
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let mut registry = DockerRegistry::start(dir.path(), &htpasswd);
    let host = format!("127.0.0.1:{}", registry.port);

    // Push the OCI image (gzip layer) with our distribution client and basic auth.
    let image = busybox_image();
    let oci = dir.path().join("oci.tar");
    std::fs::write(&oci, image.oci_archive(&["busybox:1.36"])).unwrap();
    let pusher = RegistryClient::new(
        &format!("http://{host}"),
        None,
        Some(Credentials::Basic {
            username: user.into(),
            password: pass.into(),
        }),
        None,
    )
    .unwrap();
    let digest = push_archive(&pusher, &oci, "test/busybox", "1.36").await;
    // The docker-save image is pushed as the OCI manifest built from it.
    let docker = dir.path().join("docker.tar");
    std::fs::write(&docker, image.docker_save(&["busybox:latest"])).unwrap();
    push_archive(&pusher, &docker, "test/busybox", "latest").await;

    let plain = RegistryConfig::from_yaml(
        &format!("configs:\n  \"{host}\":\n    plain_http: true\n"),
        "test",
    )
    .unwrap();
    let store = ImageStore::new(&dir.path().join("agent"), plain.clone()).unwrap();
    let auth = vec![RegistryAuth {
        registry: host.clone(),
        username: user.into(),
        password: pass.into(),
    }];
    let reference = format!("{host}/test/busybox:1.36");
    let err = store
        .prepare(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Pull(_)) && err.to_string().contains("unauthorized"),
        "{err}"
    );
    let img = store
        .prepare(&reference, PullPolicy::IfNotPresent, &auth)
        .await
        .unwrap();
    assert_eq!(img.digest, digest);
    check_rootfs(&img.rootfs);
    let latest = store
        .prepare(&format!("{host}/test/busybox"), PullPolicy::Always, &auth)
        .await
        .unwrap();
    check_rootfs(&latest.rootfs);
    let err = store
        .prepare(
            &format!("{host}/test/busybox:missing"),
            PullPolicy::IfNotPresent,
            &auth,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");

    large_blob_round_trip(&pusher, "test/large", dir.path()).await;

    // As a docker.io mirror, with credentials from the registry config.
    let mirror = RegistryConfig::from_yaml(
        &format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://{host}\"]\nconfigs:\n  \"{host}\":\n    auth: {{username: {user}, password: {pass}}}\ndisable_default_endpoint: true\n"
        ),
        "test",
    )
    .unwrap();
    let via_mirror = ImageStore::new(&dir.path().join("agent-mirror"), mirror).unwrap();
    let m = via_mirror
        .prepare("test/busybox:1.36", PullPolicy::IfNotPresent, &[])
        .await
        .unwrap();
    assert_eq!(m.reference, "docker.io/test/busybox:1.36");
    assert_eq!(m.digest, digest);

    // With the registry stopped, IfNotPresent does not need it; Always does.
    registry.stop();
    let again = store
        .prepare(&reference, PullPolicy::IfNotPresent, &auth)
        .await
        .unwrap();
    assert_eq!(again.rootfs, img.rootfs);
    let err = store
        .prepare(&reference, PullPolicy::Always, &auth)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Pull(_)), "{err}");
    let err = store
        .prepare(&format!("{host}/test/other:1"), PullPolicy::Never, &auth)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotPresent(_)), "{err}");
    // A fresh store with nothing local and Never fails too.
    let empty = ImageStore::new(&dir.path().join("agent-empty"), plain).unwrap();
    assert!(empty
        .prepare(&reference, PullPolicy::Never, &auth)
        .await
        .is_err());
}

/// What the token-auth registry served by the test holds.
struct TokenRegistry {
    index: Vec<u8>,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
    v2_requests: AtomicUsize,
    token_requests: AtomicUsize,
    port: u16,
}

const TOKEN: &str = "tok-123";

async fn token_registry_handler(
    reg: Arc<TokenRegistry>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http::StatusCode;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let authz = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let reply = |status: StatusCode, ctype: &str, body: Vec<u8>| {
        http::Response::builder()
            .status(status)
            .header("Content-Type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    if path == "/token" {
        reg.token_requests.fetch_add(1, Ordering::SeqCst);
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "robot:pw")
        );
        let scope_ok = query.contains("scope=repository%3Atest%2Fbusybox%3Apull")
            && query.contains("service=fake");
        return Ok(if authz == basic && scope_ok {
            reply(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).into_bytes(),
            )
        } else {
            reply(StatusCode::UNAUTHORIZED, "application/json", b"{}".to_vec())
        });
    }
    if let Some(d) = path.strip_prefix("/storage/") {
        // Blob storage behind a redirect must not see registry credentials.
        if !authz.is_empty() || d != digest_of(&reg.layer) {
            return Ok(reply(StatusCode::FORBIDDEN, "text/plain", b"no".to_vec()));
        }
        return Ok(reply(
            StatusCode::OK,
            "application/octet-stream",
            reg.layer.clone(),
        ));
    }
    reg.v2_requests.fetch_add(1, Ordering::SeqCst);
    if authz != format!("Bearer {TOKEN}") {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "application/json",
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#.to_vec(),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="fake",scope="repository:test/busybox:pull""#,
                reg.port
            )
            .parse()
            .unwrap(),
        );
        return Ok(r);
    }
    let m_digest = digest_of(&reg.manifest);
    let c_digest = digest_of(&reg.config);
    let l_digest = digest_of(&reg.layer);
    Ok(match path.as_str() {
        "/v2/" => reply(StatusCode::OK, "application/json", b"{}".to_vec()),
        "/v2/test/busybox/manifests/1.36" => reply(StatusCode::OK, OCI_INDEX, reg.index.clone()),
        p if p == format!("/v2/test/busybox/manifests/{m_digest}") => {
            reply(StatusCode::OK, OCI_MANIFEST, reg.manifest.clone())
        }
        p if p == format!("/v2/test/busybox/blobs/{c_digest}") => reply(
            StatusCode::OK,
            "application/octet-stream",
            reg.config.clone(),
        ),
        p if p == format!("/v2/test/busybox/blobs/{l_digest}") => {
            let mut r = reply(StatusCode::TEMPORARY_REDIRECT, "text/plain", Vec::new());
            r.headers_mut().insert(
                http::header::LOCATION,
                format!("http://127.0.0.1:{}/storage/{l_digest}", reg.port)
                    .parse()
                    .unwrap(),
            );
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
        ),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_platform_index_and_if_not_present() {
    if !have_busybox() {
        return;
    }
    let image = busybox_image();
    let manifest = image.oci_manifest();
    // A multi-platform index: the arm64 entry must be skipped on this machine.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "e".repeat(64)), "size": 10,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": digest_of(&manifest), "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    }))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reg = Arc::new(TokenRegistry {
        index: index.clone(),
        manifest,
        config: image.config.clone(),
        layer: image.layer_gz.clone(),
        v2_requests: AtomicUsize::new(0),
        token_requests: AtomicUsize::new(0),
        port,
    });
    let served = reg.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let reg = served.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| token_registry_handler(reg.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{port}");
    let cfg = RegistryConfig::from_yaml(
        &format!("configs:\n  \"{host}\":\n    plain_http: true\n"),
        "test",
    )
    .unwrap();
    let store = ImageStore::new(dir.path(), cfg).unwrap();
    let reference = format!("{host}/test/busybox:1.36");
    let bad = vec![RegistryAuth {
        registry: host.clone(),
        username: "robot".into(),
        password: "wrong".into(),
    }];
    let err = store
        .prepare(&reference, PullPolicy::IfNotPresent, &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    let good = vec![RegistryAuth {
        registry: format!("http://{host}/"),
        username: "robot".into(),
        password: "pw".into(),
    }];
    let tokens_before = reg.token_requests.load(Ordering::SeqCst);
    let img = store
        .prepare(&reference, PullPolicy::IfNotPresent, &good)
        .await
        .unwrap();
    assert_eq!(img.digest, digest_of(&index));
    check_rootfs(&img.rootfs);
    // One token served the whole pull (index, manifest, config, layer).
    assert_eq!(reg.token_requests.load(Ordering::SeqCst), tokens_before + 1);

    let requests = reg.v2_requests.load(Ordering::SeqCst);
    let again = store
        .prepare(&reference, PullPolicy::IfNotPresent, &good)
        .await
        .unwrap();
    assert_eq!(again.rootfs, img.rootfs);
    assert_eq!(
        reg.v2_requests.load(Ordering::SeqCst),
        requests,
        "IfNotPresent contacted the registry for a present image"
    );
    // Always asks again (the manifest), but downloads no blob it has.
    store
        .prepare(&reference, PullPolicy::Always, &good)
        .await
        .unwrap();
    let after_always = reg.v2_requests.load(Ordering::SeqCst) - requests;
    assert!(
        (1..=2).contains(&after_always),
        "Always made {after_always} registry requests"
    );
    server.abort();
}
