//! The seam to the kernel: a script of nft commands applied as one
//! transaction. The real implementation pipes it to `nft -f -` (optionally
//! behind a prefix such as `nsenter --net=…`, for benchmarks); tests record.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Errors applying rules.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("running {0}: {1} (is the nftables package installed?)")]
    Spawn(String, std::io::Error),
    /// `nft` refused the transaction (nothing was applied).
    #[error("nft rejected the transaction: {0}")]
    Rejected(String),
}

/// Applies one nft script atomically.
pub trait Nft: Send + Sync {
    /// Apply `script` (nft's command syntax) as one transaction.
    fn apply(&self, script: &str) -> Result<(), NftError>;
}

/// `nft -f -`, the script on stdin.
#[derive(Debug, Clone)]
pub struct NftCommand {
    argv: Vec<OsString>,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand::with_prefix(Vec::<OsString>::new())
    }
}

impl NftCommand {
    /// `nft` run through `prefix` (e.g. `["nsenter", "--net=/run/netns/x", "--"]`).
    pub fn with_prefix<I: Into<OsString>>(prefix: impl IntoIterator<Item = I>) -> NftCommand {
        let mut argv: Vec<OsString> = prefix.into_iter().map(Into::into).collect();
        argv.push("nft".into());
        NftCommand { argv }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c
    }

    /// Whether `nft` runs at all.
    pub fn available(&self) -> bool {
        self.command()
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `nft list table <family> <name>`, for diagnostics and tests.
    pub fn list_table(&self, family: &str, name: &str) -> Option<String> {
        let out = self
            .command()
            .args(["list", "table", family, name])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Nft for NftCommand {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        let what = format!("{:?} -f -", self.argv);
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NftError::Spawn(what.clone(), e))?;
        let written = child
            .stdin
            .take()
            .map(|mut i| i.write_all(script.as_bytes()))
            .unwrap_or(Ok(()));
        let out = child
            .wait_with_output()
            .map_err(|e| NftError::Spawn(what, e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // The first lines name the failing command; enough for a log.
            let short: String = err.lines().take(6).collect::<Vec<_>>().join("\n");
            return Err(NftError::Rejected(short));
        }
        if let Err(e) = written {
            return Err(NftError::Rejected(format!("writing the script: {e}")));
        }
        Ok(())
    }
}

/// Records scripts instead of applying them; can be told to fail.
#[derive(Debug, Default)]
pub struct RecordingNft {
    /// Every script applied, in order.
    pub scripts: Mutex<Vec<String>>,
    /// When set, the next apply fails (and is not recorded).
    pub fail_next: Mutex<bool>,
}

impl Nft for RecordingNft {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        let mut fail = self.fail_next.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut *fail) {
            return Err(NftError::Rejected("injected failure".into()));
        }
        self.scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(script.to_string());
        Ok(())
    }
}
