//! Fault plugin: a scheduler whose `filter` allocates and touches memory in
//! 256 MiB chunks up to 4 GiB (the whole wasm32 address space, so it can never
//! succeed). The host's memory limit must refuse the growth; the failed
//! allocation then aborts, which traps.

wit_bindgen::generate!({
    world: "scheduler",
    path: "../../wit",
});

use exports::shoal::plugin::scheduler_policy::{Guest, ObjectEvent, Rejection};

/// Size of one allocation.
const CHUNK: usize = 256 << 20;
/// Chunks needed for 4 GiB.
const CHUNKS: usize = 16;
/// Touch one byte per Wasm page so every page is really used.
const PAGE: usize = 64 << 10;

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        vec!["Node".to_string()]
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn filter(_pod: String, _nodes: Vec<u32>) -> Vec<Rejection> {
        let mut held: Vec<Vec<u8>> = Vec::new();
        for _ in 0..CHUNKS {
            let mut chunk = vec![0u8; CHUNK];
            for i in (0..CHUNK).step_by(PAGE) {
                chunk[i] = 1;
            }
            held.push(std::hint::black_box(chunk));
        }
        // Not reachable within wasm32's 4 GiB; kept so the memory stays live.
        let total: usize = held.iter().map(Vec::len).sum();
        panic!("fault-alloc: allocated {total} bytes without being stopped");
    }

    fn score(_pod: String, _nodes: Vec<u32>) -> Vec<u32> {
        Vec::new()
    }
}

export!(Component);
