//! The scheduling queue: an active heap ordered by priority then arrival, a
//! backoff area for pods that recently failed, and an unschedulable set that
//! moves back when the cluster changes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// First retry delay after a failed attempt (Kubernetes' podInitialBackoff).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay (Kubernetes' podMaxBackoff).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Higher priority first, then earlier arrival.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The queue of pods waiting for a scheduling attempt.
#[derive(Debug, Default)]
pub struct Queue {
    active: BinaryHeap<Entry>,
    in_active: HashSet<String>,
    backoff: BTreeMap<(Instant, u64), String>,
    in_backoff: HashMap<String, (Instant, u64)>,
    unschedulable: HashSet<String>,
    attempts: HashMap<String, u32>,
    priority: HashMap<String, i32>,
    seq: u64,
}

impl Queue {
    /// Add a pod (no-op if it is already waiting anywhere).
    pub fn add(&mut self, key: &str, priority: i32) {
        self.priority.insert(key.to_string(), priority);
        if self.in_active.contains(key)
            || self.in_backoff.contains_key(key)
            || self.unschedulable.contains(key)
        {
            return;
        }
        self.push_active(key);
    }

    fn push_active(&mut self, key: &str) {
        self.seq += 1;
        let priority = self.priority.get(key).copied().unwrap_or(0);
        self.active.push(Entry {
            priority,
            seq: self.seq,
            key: key.to_string(),
        });
        self.in_active.insert(key.to_string());
    }

    /// Next pod to try, if any is active.
    pub fn pop(&mut self) -> Option<String> {
        while let Some(e) = self.active.pop() {
            if self.in_active.remove(&e.key) {
                return Some(e.key);
            }
        }
        None
    }

    /// Forget a pod entirely (bound or deleted).
    pub fn remove(&mut self, key: &str) {
        self.in_active.remove(key);
        if let Some(at) = self.in_backoff.remove(key) {
            self.backoff.remove(&at);
        }
        self.unschedulable.remove(key);
        self.attempts.remove(key);
        self.priority.remove(key);
    }

    fn delay(attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(8);
        (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
    }

    /// The attempt found no node: park until the cluster changes.
    pub fn unschedulable(&mut self, key: &str) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        self.unschedulable.insert(key.to_string());
    }

    /// The attempt failed for another reason (bind error): retry after backoff.
    pub fn retry_later(&mut self, key: &str, now: Instant) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        self.park_in_backoff(key, now);
    }

    fn park_in_backoff(&mut self, key: &str, now: Instant) {
        let attempts = self.attempts.get(key).copied().unwrap_or(1);
        self.seq += 1;
        let at = (now + Self::delay(attempts), self.seq);
        self.backoff.insert(at, key.to_string());
        self.in_backoff.insert(key.to_string(), at);
    }

    /// Something changed that may make parked pods fit: move them to backoff
    /// (so they retry once their backoff has passed).
    pub fn cluster_changed(&mut self, now: Instant) {
        let parked: Vec<String> = self.unschedulable.drain().collect();
        for key in parked {
            self.park_in_backoff(&key, now);
        }
    }

    /// Move every waiting pod back to active now (e.g. the policy set changed).
    pub fn retry_all_now(&mut self) {
        let mut keys: Vec<String> = self.unschedulable.drain().collect();
        keys.extend(self.in_backoff.drain().map(|(k, _)| k));
        self.backoff.clear();
        for k in keys {
            if !self.in_active.contains(&k) {
                self.push_active(&k);
            }
        }
    }

    /// Move pods whose backoff has expired to active; returns the next expiry.
    pub fn flush_backoff(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.backoff.iter().next() {
            if at > now {
                return Some(at);
            }
            let key = self.backoff.remove(&(at, seq)).expect("present");
            self.in_backoff.remove(&key);
            self.push_active(&key);
        }
        None
    }

    /// Pods waiting in any state.
    pub fn len(&self) -> usize {
        self.in_active.len() + self.in_backoff.len() + self.unschedulable.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo() {
        let mut q = Queue::default();
        q.add("a", 0);
        q.add("b", 10);
        q.add("c", 0);
        q.add("a", 0);
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn unschedulable_waits_for_change_then_backoff() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add("p", 0);
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.unschedulable("p");
        assert_eq!(q.flush_backoff(t0), None);
        assert_eq!(q.pop(), None);
        q.cluster_changed(t0);
        assert_eq!(q.flush_backoff(t0), Some(t0 + INITIAL_BACKOFF));
        assert_eq!(q.pop(), None);
        q.flush_backoff(t0 + INITIAL_BACKOFF);
        assert_eq!(q.pop().as_deref(), Some("p"));
        // Backoff doubles and is capped.
        assert_eq!(Queue::delay(2), Duration::from_secs(2));
        assert_eq!(Queue::delay(9), MAX_BACKOFF);
    }

    #[test]
    fn remove_forgets_everywhere() {
        let mut q = Queue::default();
        q.add("x", 0);
        q.remove("x");
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }
}
