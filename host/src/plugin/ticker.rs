//! The epoch ticker that enforces call deadlines.
//!
//! Wasmtime's epoch interruption checks a counter at function entries and loop
//! back-edges; a store traps once the counter passes its deadline. Something
//! must advance that counter. We use one plain OS thread per engine rather than
//! a tokio timer because most plugin calls are synchronous and happen on the
//! scheduler's own thread or under `spawn_blocking`, where the async runtime may
//! be busy or absent; a deadline must not depend on it. (Admission calls are
//! async; the same ticks make their guests yield, see `instance`.)
//!
//! The thread ticks every millisecond, which gives timeouts millisecond
//! precision, but only while at least one call is in flight: when no plugin
//! runs it parks, so an idle server does not wake a thousand times a second.
//! Starting a call is one atomic increment plus an `unpark`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How often the epoch advances while calls are in flight.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Shared state between call sites and the ticking thread.
pub(crate) struct Ticker {
    engine: Engine,
    in_flight: AtomicUsize,
    thread: OnceLock<Thread>,
}

impl Ticker {
    /// Starts the ticking thread for `engine`; it ends when the ticker drops.
    pub(crate) fn start(engine: Engine) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker {
            engine,
            in_flight: AtomicUsize::new(0),
            thread: OnceLock::new(),
        });
        let weak = Arc::downgrade(&ticker);
        let handle = thread::Builder::new()
            .name("shoal-plugin-epoch".into())
            .spawn(move || run(weak))?;
        // The thread may already be parked; the next unpark reaches it.
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// The engine whose epoch this ticker advances.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Marks a call in flight until the returned guard drops.
    pub(crate) fn active(&self) -> Active<'_> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Active(self)
    }

    /// Epoch ticks that cover at least `timeout` of wall time.
    pub(crate) fn ticks_for(timeout: Duration) -> u64 {
        let tick = TICK.as_nanos().max(1);
        // Round up, plus one: the first tick may come almost at once.
        let ticks = timeout.as_nanos().div_ceil(tick) + 1;
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Wake the thread so it sees the ticker is gone and exits.
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Keeps the ticker running while a call is in flight.
pub(crate) struct Active<'a>(&'a Ticker);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn run(weak: Weak<Ticker>) {
    // The epoch counts whole ticks of wall time since the thread last woke.
    // A sleep may overshoot (timer slack); counting elapsed time instead of
    // sleeps keeps a 100 ms deadline near 100 ms rather than 110.
    let mut last = Instant::now();
    loop {
        // Hold the ticker only briefly so that dropping it ends the thread.
        let Some(ticker) = weak.upgrade() else { return };
        let busy = ticker.in_flight.load(Ordering::SeqCst) > 0;
        drop(ticker);
        if !busy {
            // An unpark issued before this point is not lost: park returns at once.
            thread::park();
            last = Instant::now();
            continue;
        }
        thread::sleep(TICK);
        let Some(ticker) = weak.upgrade() else { return };
        let elapsed = last.elapsed();
        let ticks = elapsed.as_nanos() / TICK.as_nanos();
        for _ in 0..ticks {
            ticker.engine.increment_epoch();
        }
        last += TICK * u32::try_from(ticks).unwrap_or(u32::MAX);
    }
}
