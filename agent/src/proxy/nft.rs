//! The seam to the kernel: a script of nft commands applied as one
//! transaction. The agent uses [`LibNft`]: the system's libnftables (the
//! library inside the `nft` command, from the same package), loaded at run
//! time, with one context kept open for the agent's life. [`NftCommand`]
//! pipes the script to `nft -f -` instead (optionally behind a prefix such
//! as `nsenter --net=…`); it is the fallback where the library cannot be
//! loaded. Tests record.
//!
//! Why the library: each `nft` process opens and closes a netlink socket,
//! and closing it waits for the kernel to finish freeing what the last
//! transaction deleted (an RCU grace period, ~16 ms here), so every change
//! that replaces an element cost ≥ 16 ms plus a process start. With the
//! socket kept open, the same transaction takes well under a millisecond.

use std::ffi::{c_char, c_int, c_void, CStr, CString, OsString};
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

/// The libnftables entry points used (stable since nftables 0.9).
struct LibApi {
    ctx_free: unsafe extern "C" fn(*mut c_void),
    run_cmd_from_buffer: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    get_error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    get_output_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
}

/// A libnftables context pointer; used only under [`LibNft`]'s mutex.
struct Ctx(*mut c_void);

// SAFETY: an nft_ctx may be used from any thread, one at a time; the mutex
// in `LibNft` serializes every use.
#[allow(unsafe_code)]
unsafe impl Send for Ctx {}

/// nft scripts applied through libnftables, with one context (and netlink
/// socket) for the life of this value, in the network namespace of the
/// thread that opened it.
pub struct LibNft {
    api: LibApi,
    ctx: Mutex<Ctx>,
    // Dropped last: the function pointers above point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for LibNft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LibNft")
    }
}

#[allow(unsafe_code)]
impl LibNft {
    /// Load `libnftables.so.1` and open a context; errors name what is missing.
    pub fn open() -> Result<LibNft, String> {
        const LIB: &str = "libnftables.so.1";
        // SAFETY: loading the system's libnftables runs no initializers with
        // preconditions of ours.
        let lib = unsafe { libloading::Library::new(LIB) }.map_err(|e| format!("{LIB}: {e}"))?;
        // SAFETY: each symbol is looked up with the C signature libnftables
        // declares for it in <nftables/libnftables.h>.
        unsafe {
            let ctx_new = *lib
                .get::<unsafe extern "C" fn(u32) -> *mut c_void>(b"nft_ctx_new\0")
                .map_err(|e| e.to_string())?;
            let buffer_output = *lib
                .get::<unsafe extern "C" fn(*mut c_void) -> c_int>(b"nft_ctx_buffer_output\0")
                .map_err(|e| e.to_string())?;
            let buffer_error = *lib
                .get::<unsafe extern "C" fn(*mut c_void) -> c_int>(b"nft_ctx_buffer_error\0")
                .map_err(|e| e.to_string())?;
            let api = LibApi {
                ctx_free: *lib.get(b"nft_ctx_free\0").map_err(|e| e.to_string())?,
                run_cmd_from_buffer: *lib
                    .get(b"nft_run_cmd_from_buffer\0")
                    .map_err(|e| e.to_string())?,
                get_error_buffer: *lib
                    .get(b"nft_ctx_get_error_buffer\0")
                    .map_err(|e| e.to_string())?,
                get_output_buffer: *lib
                    .get(b"nft_ctx_get_output_buffer\0")
                    .map_err(|e| e.to_string())?,
            };
            // NFT_CTX_DEFAULT.
            let ctx = ctx_new(0);
            if ctx.is_null() {
                return Err("nft_ctx_new failed".into());
            }
            // Capture output and errors instead of printing them.
            if buffer_output(ctx) != 0 || buffer_error(ctx) != 0 {
                (api.ctx_free)(ctx);
                return Err("nft_ctx_buffer_output failed".into());
            }
            Ok(LibNft {
                api,
                ctx: Mutex::new(Ctx(ctx)),
                _lib: lib,
            })
        }
    }

    /// Run `script`; the error text on failure.
    fn run(&self, script: &str) -> Result<(), NftError> {
        let cmd = CString::new(script)
            .map_err(|_| NftError::Rejected("the script holds a NUL byte".into()))?;
        let ctx = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: libnftables returns a NUL-terminated buffer owned by
                // the context, valid until the next call on it; copied at once.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        // SAFETY: ctx is a live context used by this thread alone (mutex);
        // getting the buffers also empties them for the next run (the
        // output, of `list` commands only, is not used).
        let (rc, err) = unsafe {
            let rc = (self.api.run_cmd_from_buffer)(ctx.0, cmd.as_ptr());
            (self.api.get_output_buffer)(ctx.0);
            let err = text((self.api.get_error_buffer)(ctx.0));
            (rc, err)
        };
        if rc != 0 {
            let short: String = err.lines().take(6).collect::<Vec<_>>().join("\n");
            return Err(NftError::Rejected(if short.is_empty() {
                format!("libnftables returned {rc}")
            } else {
                short
            }));
        }
        Ok(())
    }
}

#[allow(unsafe_code)]
impl Drop for LibNft {
    fn drop(&mut self) {
        let ctx = self.ctx.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the context is live and used by nobody else (&mut self).
        unsafe { (self.api.ctx_free)(ctx.0) };
    }
}

impl Nft for LibNft {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(script)
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
