//! Fault plugin for the admission world. Its config picks what `review` does:
//!
//! - `{"mode": "trap"}`: panics (a Wasm `unreachable` trap);
//! - `{"mode": "loop"}`: never returns (the host's deadline must stop it);
//! - `{"mode": "sandbox", "connect": "127.0.0.1:PORT"}`: tries to read
//!   `/etc/passwd` and to open a TCP connection, then denies the request with
//!   what happened to both, so a test can show the sandbox refused them;
//! - `{"mode": "view"}`: asks for ConfigMaps in its view and denies every
//!   request, listing the ConfigMaps it sees (`view: ns/a,ns/b`), so a test
//!   can follow what `observe` delivered;
//! - `{"mode": "allow"}` (default): allows everything.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;

wit_bindgen::generate!({
    world: "admission",
    path: "../../wit",
});

use exports::shoal::plugin::admission_policy::{AdmissionResponse, Guest, ObjectEvent};

thread_local! {
    static CONFIG: RefCell<Value> = const { RefCell::new(Value::Null) };
    /// The view in "view" mode: handle → namespace/name.
    static VIEW: RefCell<BTreeMap<u32, String>> = const { RefCell::new(BTreeMap::new()) };
}

fn mode() -> String {
    CONFIG.with_borrow(|c| {
        c.get("mode")
            .and_then(Value::as_str)
            .unwrap_or("allow")
            .to_string()
    })
}

/// Try what the sandbox must refuse; describe the outcome of each attempt.
fn probe_sandbox() -> String {
    let file = match std::fs::read("/etc/passwd") {
        Ok(b) => format!("read /etc/passwd: OK ({} bytes)", b.len()),
        Err(e) => format!("read /etc/passwd: refused ({e})"),
    };
    let addr = CONFIG.with_borrow(|c| {
        c.get("connect")
            .and_then(Value::as_str)
            .unwrap_or("127.0.0.1:80")
            .to_string()
    });
    let net = match std::net::TcpStream::connect(addr.as_str()) {
        Ok(mut s) => {
            let _ = s.write_all(b"escaped\n");
            format!("connect {addr}: OK")
        }
        Err(e) => format!("connect {addr}: refused ({e})"),
    };
    let env = match std::env::var("HOME") {
        Ok(v) => format!("env HOME: {v}"),
        Err(_) => "env HOME: unset".to_string(),
    };
    format!("sandbox probe: {file}; {net}; {env}")
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        if mode() == "view" {
            vec!["ConfigMap".to_string()]
        } else {
            Vec::new()
        }
    }

    fn configure(config: String) -> Result<(), String> {
        let v: Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        CONFIG.set(v);
        Ok(())
    }

    fn observe(events: Vec<ObjectEvent>) {
        VIEW.with_borrow_mut(|view| {
            for e in events {
                if e.deleted {
                    view.remove(&e.handle);
                    continue;
                }
                let obj: Value = serde_json::from_str(&e.object).unwrap_or(Value::Null);
                let meta = |k: &str| {
                    obj.pointer(&format!("/metadata/{k}"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                view.insert(e.handle, format!("{}/{}", meta("namespace"), meta("name")));
            }
        });
    }

    fn review(request: String) -> AdmissionResponse {
        let allow = AdmissionResponse {
            allowed: true,
            code: None,
            message: None,
            patch: None,
            warnings: Vec::new(),
        };
        match mode().as_str() {
            "trap" => panic!("fault-admission: review traps on purpose"),
            "loop" => {
                let mut spins: u64 = 0;
                loop {
                    // black_box keeps the loop from being reasoned away.
                    spins = std::hint::black_box(spins.wrapping_add(request.len() as u64 + 1));
                }
            }
            "sandbox" => AdmissionResponse {
                allowed: false,
                code: Some(403),
                message: Some(probe_sandbox()),
                patch: None,
                warnings: Vec::new(),
            },
            "view" => {
                let mut names: Vec<String> = VIEW.with_borrow(|v| v.values().cloned().collect());
                names.sort();
                AdmissionResponse {
                    allowed: false,
                    code: Some(403),
                    message: Some(format!("view: {}", names.join(","))),
                    patch: None,
                    warnings: Vec::new(),
                }
            }
            _ => allow,
        }
    }
}

export!(Component);
