//! Secrets encrypted at rest, end to end: Secrets written with the real
//! kubectl (data and stringData) read back, watch and page in plain text,
//! while no file in the server's data dir holds their values, plain or
//! base64; and a key rotation: rotate, restart, still readable, old key
//! removed, still readable.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use common::kubectl::KUBECTL;
use common::Server;

// Distinctive values, so a match in the data dir can only be a leak.
const PASSWORD: &str = "pw-Quokka-7f3a9c41e2";
const TOKEN: &str = "tok-Narwhal-0b5d6e8f13";
const ROTATED: &str = "pw-Axolotl-94c2e7d05b";
const LATER: &str = "pw-Pangolin-3e1f08a6c7";

fn kubectl(s: &Server, args: &[&str]) -> (bool, String, String) {
    common::kubectl::run(&s.kubeconfig, args, None)
}

fn ok(s: &Server, args: &[&str]) -> String {
    common::kubectl::ok(&s.kubeconfig, args).0
}

fn apply(s: &Server, manifest: &str) {
    common::kubectl::applied(&s.kubeconfig, manifest);
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A Secret's `data[field]`, decoded.
fn secret_value(s: &Server, name: &str, field: &str) -> String {
    let out = ok(
        s,
        &[
            "get",
            "secret",
            name,
            "-o",
            &format!("jsonpath={{.data.{field}}}"),
        ],
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(out.trim())
        .unwrap_or_else(|e| panic!("{name}.data.{field} is not base64 ({e}): {out}"));
    String::from_utf8(raw).unwrap()
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

/// Asserts no file in the data dir holds any of `values`, plain or base64.
fn assert_no_plaintext(dir: &Path, values: &[&str]) {
    let files = walkdir_count(dir);
    for v in values {
        for needle in [v.to_string(), b64(v)] {
            let hits = files_containing(dir, needle.as_bytes());
            assert!(
                hits.is_empty(),
                "{needle:?} found in plain text in {hits:?}"
            );
        }
    }
    eprintln!(
        "checked {files} files under {}: no Secret value",
        dir.display()
    );
}

fn walkdir_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn shoal(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("run shoal");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("SKIP: {KUBECTL} is not installed; this test drives the real kubectl");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = common::free_port();
    let s = Server::start_on(&dir, port, &[]);

    // The key file was made at first start, readable by its owner only.
    let key_file = dir.join("pki/secrets-encryption.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");

    // data (kubectl create) and stringData (kubectl apply).
    ok(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "db",
            &format!("--from-literal=password={PASSWORD}"),
        ],
    );
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: {TOKEN}\n"
        ),
    );
    assert_eq!(secret_value(&s, "db", "password"), PASSWORD);
    assert_eq!(secret_value(&s, "api", "token"), TOKEN);

    // A list in pages of one sees them too.
    let paged = ok(
        &s,
        &[
            "get",
            "secrets",
            "--chunk-size=1",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.data}{\"\\n\"}{end}",
        ],
    );
    assert!(paged.contains(&b64(PASSWORD)), "{paged}");
    assert!(paged.contains(&b64(TOKEN)), "{paged}");

    // A watch sees the update in plain text.
    let mut watch = Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args([
            "get",
            "secret",
            "db",
            "--watch",
            "-o",
            "jsonpath={.data.password}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, b64(PASSWORD));
    ok(
        &s,
        &[
            "patch",
            "secret",
            "db",
            "-p",
            &format!(r#"{{"stringData":{{"password":"{ROTATED}"}}}}"#),
        ],
    );
    let next = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(next, b64(ROTATED));
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(secret_value(&s, "db", "password"), ROTATED);

    ok(&s, &["delete", "secret", "api"]);
    let (good, _, err) = kubectl(&s, &["get", "secret", "api"]);
    assert!(!good && err.contains("NotFound"), "{err}");

    // After a clean stop, nothing in the data dir (the redb file with its
    // change log, the PKI, caches) holds a value, current, old or deleted.
    assert!(s.stop(), "server did not stop cleanly");
    assert_no_plaintext(&dir, &[PASSWORD, TOKEN, ROTATED]);
    let sealed = files_containing(&dir, b"k8s:enc:aesgcm:v1:key1:");
    assert_eq!(sealed, [dir.join("shoal.redb").display().to_string()]);

    // Restarted, it reads them back.
    let s = Server::start_on(&dir, port, &[]);
    assert_eq!(secret_value(&s, "db", "password"), ROTATED);

    // Rotation: the key file changes under a running server; the new key
    // encrypts from the next start, which re-encrypts everything.
    let (good, out) = shoal(&["secrets", "rotate-key", "--data-dir", dir.to_str().unwrap()]);
    assert!(good, "{out}");
    assert!(out.contains("added key key2"), "{out}");
    // The running server holds the database: removing a key needs it stopped.
    let (good, out) = shoal(&[
        "secrets",
        "remove-key",
        "key1",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!good && out.contains("stop the server first"), "{out}");
    assert!(s.stop());

    let s = Server::start_on(&dir, port, &[]);
    assert_eq!(secret_value(&s, "db", "password"), ROTATED);
    assert!(s.stop());
    assert!(files_containing(&dir, b"k8s:enc:aesgcm:v1:key2:").len() == 1);
    let (good, out) = shoal(&["secrets", "list-keys", "--data-dir", dir.to_str().unwrap()]);
    assert!(good, "{out}");
    assert_eq!(out, "key2\t(encrypts)\nkey1\n");

    // The encrypting key cannot be removed; the old one can.
    let (good, out) = shoal(&[
        "secrets",
        "remove-key",
        "key2",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!good && out.contains("is the key that encrypts"), "{out}");
    let (good, out) = shoal(&[
        "secrets",
        "remove-key",
        "key1",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(good, "{out}");
    assert!(out.contains("keys now: key2"), "{out}");
    let keys = std::fs::read_to_string(&key_file).unwrap();
    assert!(!keys.contains("key1 "), "{keys}");

    // With key1 gone, everything still reads, and new Secrets seal with key2.
    let s = Server::start_on(&dir, port, &[]);
    assert_eq!(secret_value(&s, "db", "password"), ROTATED);
    ok(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "later",
            &format!("--from-literal=v={LATER}"),
        ],
    );
    assert_eq!(secret_value(&s, "later", "v"), LATER);
    assert!(s.stop());
    assert_no_plaintext(&dir, &[PASSWORD, TOKEN, ROTATED, LATER]);
}
