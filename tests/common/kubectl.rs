//! The real kubectl (v1.32, `/usr/bin/kubectl`) as the end-to-end tests drive it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where the machines here have kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Whether kubectl is installed; prints why the calling test skips when not.
pub fn have_kubectl() -> bool {
    if Path::new(KUBECTL).exists() {
        return true;
    }
    eprintln!("SKIP: {KUBECTL} is not installed; this test drives the real kubectl");
    false
}

/// Runs kubectl against `kubeconfig`, feeding it `stdin` when given:
/// (success, stdout, stderr).
pub fn run(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(KUBECTL)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("kubectl stdin");
        pipe.write_all(input.as_bytes())
            .expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("wait for kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kubectl that must succeed: (stdout, stderr).
pub fn ok(kubeconfig: &Path, args: &[&str]) -> (String, String) {
    let (good, out, err) = run(kubeconfig, args, None);
    assert!(
        good,
        "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    (out, err)
}

/// kubectl that must fail: its stderr.
pub fn fails(kubeconfig: &Path, args: &[&str]) -> String {
    let (good, out, err) = run(kubeconfig, args, None);
    assert!(
        !good,
        "kubectl {args:?} succeeded but should not have:\nstdout: {out}\nstderr: {err}"
    );
    err
}

/// `kubectl apply -f -` of `manifest`: (success, stdout, stderr).
pub fn apply(kubeconfig: &Path, manifest: &str) -> (bool, String, String) {
    run(kubeconfig, &["apply", "-f", "-"], Some(manifest))
}

/// `kubectl apply -f -` of `manifest`, which must succeed: its stderr
/// (where kubectl prints warnings).
pub fn applied(kubeconfig: &Path, manifest: &str) -> String {
    let (good, out, err) = apply(kubeconfig, manifest);
    assert!(
        good,
        "kubectl apply failed:\n{manifest}\nstdout: {out}\nstderr: {err}"
    );
    err
}
