//! Pod address allocation from the node's podCIDRs, like CNI's host-local
//! plugin: one address per family per pod, handed out round-robin after the
//! last one given (so a released address is not reused at once), never the
//! network, gateway (first host) or broadcast address. The state is one JSON
//! file under the agent's data directory, rewritten atomically on every
//! change, so a restarted agent re-adopts its pods' addresses and never hands
//! them out twice.

use super::cidr::Cidr;
use crate::runtime::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How far past the last allocation a search looks before giving up; pods
/// per node are few hundred at most, so a /64 is never walked end to end.
const MAX_SCAN: u128 = 1 << 20;

/// Errors allocating.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of a range is taken.
    #[error("no free address left in {0}")]
    Exhausted(Cidr),
    /// The state file could not be written or read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What is persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamState {
    /// Addresses held per pod uid.
    #[serde(default)]
    pub allocations: BTreeMap<String, Vec<IpAddr>>,
    /// The last address handed out per range (key: the CIDR as text).
    #[serde(default)]
    pub last: BTreeMap<String, IpAddr>,
}

impl IpamState {
    fn in_use(&self) -> HashSet<IpAddr> {
        self.allocations.values().flatten().copied().collect()
    }

    /// Addresses for `uid`, one per range, keeping the ones it already holds.
    pub fn allocate(&mut self, uid: &str, ranges: &[Cidr]) -> Result<Vec<IpAddr>, IpamError> {
        let held = self.allocations.get(uid).cloned().unwrap_or_default();
        let used = self.in_use();
        let mut out = Vec::new();
        for r in ranges {
            if let Some(ip) = held.iter().find(|ip| r.contains(**ip)) {
                out.push(*ip);
                continue;
            }
            let after = self
                .last
                .get(&r.to_string())
                .and_then(|ip| r.host_index(*ip))
                .unwrap_or(1);
            let ip = pick(r, &used, after).ok_or(IpamError::Exhausted(*r))?;
            self.last.insert(r.to_string(), ip);
            out.push(ip);
        }
        self.allocations.insert(uid.to_string(), out.clone());
        Ok(out)
    }

    /// Give back whatever `uid` holds; whether it held anything.
    pub fn release(&mut self, uid: &str) -> bool {
        self.allocations.remove(uid).is_some()
    }
}

/// The first free host address after host number `after`, wrapping around,
/// skipping the first host (the node's gateway address on the bridge).
fn pick(range: &Cidr, used: &HashSet<IpAddr>, after: u128) -> Option<IpAddr> {
    let count = range.host_count();
    if count < 2 {
        return None;
    }
    // Candidates are hosts 2..=count; walk from `after + 1` around the ring.
    let span = count - 1;
    let start = after.clamp(1, count) - 1; // 0-based offset within 2..=count
    (1..=span.min(MAX_SCAN))
        .map(|step| 2 + (start + step - 1) % span)
        .filter_map(|n| range.host(n))
        .find(|ip| !used.contains(ip))
}

/// The allocator with its state file.
pub struct Ipam {
    path: PathBuf,
    state: Mutex<IpamState>,
}

impl Ipam {
    /// Open (or start) the state at `path`.
    pub fn open(path: &Path) -> Result<Ipam, IpamError> {
        let io = |e| IpamError::Io(path.display().to_string(), e);
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io(e.into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
            Err(e) => return Err(io(e)),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        Ok(Ipam {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn save(&self, state: &IpamState) -> Result<(), IpamError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| IpamError::Io(self.path.display().to_string(), e.into()))?;
        write_atomic(&self.path, &bytes)
            .map_err(|e| IpamError::Io(self.path.display().to_string(), e))
    }

    /// Addresses for `uid` from `ranges` (the ones it holds, else new ones), persisted.
    pub fn allocate(&self, uid: &str, ranges: &[Cidr]) -> Result<Vec<IpAddr>, IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = state.clone();
        let ips = state.allocate(uid, ranges)?;
        if *state != before {
            if let Err(e) = self.save(&state) {
                *state = before;
                return Err(e);
            }
        }
        Ok(ips)
    }

    /// Release what `uid` holds, persisted.
    pub fn release(&self, uid: &str) -> Result<(), IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.release(uid) {
            self.save(&state)?;
        }
        Ok(())
    }

    /// What `uid` holds.
    pub fn get(&self, uid: &str) -> Vec<IpAddr> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.allocations.get(uid).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Vec<Cidr> {
        vec![
            "10.244.1.0/29".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_one_per_family_skipping_the_gateway() {
        let mut s = IpamState::default();
        let a = s.allocate("a", &ranges()).unwrap();
        assert_eq!(a, vec![ip("10.244.1.2"), ip("fd00:10:244:1::2")]);
        let b = s.allocate("b", &ranges()).unwrap();
        assert_eq!(b, vec![ip("10.244.1.3"), ip("fd00:10:244:1::3")]);
        // Asking again returns what the pod holds.
        assert_eq!(s.allocate("a", &ranges()).unwrap(), a);
    }

    #[test]
    fn released_addresses_are_not_reused_at_once_and_ranges_exhaust() {
        let mut s = IpamState::default();
        let r = vec!["10.244.1.0/29".parse::<Cidr>().unwrap()];
        // Hosts 2..=6 are usable (1 is the gateway, 7 the broadcast).
        for (uid, want) in [("a", "10.244.1.2"), ("b", "10.244.1.3")] {
            assert_eq!(s.allocate(uid, &r).unwrap(), vec![ip(want)]);
        }
        assert!(s.release("a"));
        assert!(!s.release("a"));
        assert_eq!(s.allocate("c", &r).unwrap(), vec![ip("10.244.1.4")]);
        for uid in ["d", "e"] {
            s.allocate(uid, &r).unwrap();
        }
        // Wraps around to the released address.
        assert_eq!(s.allocate("f", &r).unwrap(), vec![ip("10.244.1.2")]);
        assert!(matches!(s.allocate("g", &r), Err(IpamError::Exhausted(_))));
    }

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net/ipam.json");
        let a = Ipam::open(&path).unwrap().allocate("a", &ranges()).unwrap();
        let ipam = Ipam::open(&path).unwrap();
        assert_eq!(ipam.get("a"), a);
        let b = ipam.allocate("b", &ranges()).unwrap();
        assert!(b.iter().all(|x| !a.contains(x)), "{a:?} {b:?}");
        ipam.release("a").unwrap();
        assert!(Ipam::open(&path).unwrap().get("a").is_empty());
    }
}
