//! Relay flow control: a credit window per sending MSRP connection, so a
//! slow receiver slows its senders instead of making the relay buffer
//! without bound or drop (issue "backpressure without loss"; AG msrprelay
//! pauses the other side at 1 MiB queued, a policy this follows).
//!
//! Every chunk a connection's input makes the relay forward is charged to
//! the sender's [`FlowWindow`] when it is handed on, and released when the
//! connection it went to has written it to its socket (or is gone). While
//! a window is full the sender is not read: the kernel's socket buffer
//! fills and TCP flow control slows the peer. The window is shared between
//! cores (a chunk may be delivered by another core), hence atomics; a
//! release that brings a paused window down to its low mark wakes the
//! sender's core.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The bytes a sending connection has in other connections' output.
#[derive(Debug)]
pub struct FlowWindow {
    /// The sender (worker connection id: core, generation, slot).
    pub conn: u64,
    outstanding: AtomicUsize,
    /// The sender asked to be woken when the window drains.
    wake_wanted: AtomicBool,
}

impl FlowWindow {
    pub fn new(conn: u64) -> Arc<FlowWindow> {
        Arc::new(FlowWindow {
            conn,
            outstanding: AtomicUsize::new(0),
            wake_wanted: AtomicBool::new(false),
        })
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// `n` more bytes handed on.
    pub fn charge(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` bytes written out (or dropped with their target). `true` when the
    /// sender waits for a wake-up and the window is now at or below `low`:
    /// the caller must wake it (exactly one releaser gets `true`).
    #[must_use]
    pub fn release(&self, n: usize, low: usize) -> bool {
        let prev = self.outstanding.fetch_sub(n, Ordering::SeqCst);
        let now = prev.saturating_sub(n);
        now <= low && self.wake_wanted.swap(false, Ordering::SeqCst)
    }

    /// The sender's check after its input was handled: `true` when it must
    /// stop reading (the window is at `high` or more). It then asks for a
    /// wake-up; should a release have drained the window meanwhile, the
    /// request is withdrawn and reading goes on — unless that release
    /// already took the request, in which case its wake-up is on the way
    /// and the sender stays paused until it arrives (no lost wake-up: both
    /// sides use sequentially consistent operations on the two atomics).
    pub fn should_pause(&self, high: usize, low: usize) -> bool {
        if self.outstanding() < high {
            return false;
        }
        self.wake_wanted.store(true, Ordering::SeqCst);
        if self.outstanding() <= low {
            return !self.wake_wanted.swap(false, Ordering::SeqCst);
        }
        true
    }
}

/// A forwarded chunk in a target connection's output, charged to `window`.
#[derive(Debug)]
struct Owed {
    window: Arc<FlowWindow>,
    /// [`OwedQueue::queued`] once this chunk was queued.
    mark: u64,
    len: usize,
}

/// The chunks a connection owes credit for, in output order.
#[derive(Debug, Default)]
pub struct OwedQueue {
    entries: VecDeque<Owed>,
    /// Bytes of charged chunks ever queued on this connection.
    queued: u64,
    /// [`OwedQueue::queued`] when the output last went into a send.
    in_flight_mark: u64,
}

impl OwedQueue {
    /// A chunk of `len` bytes charged to `window` joined the output.
    pub fn push(&mut self, window: Arc<FlowWindow>, len: usize) {
        self.queued += len as u64;
        self.entries.push_back(Owed {
            window,
            mark: self.queued,
            len,
        });
    }

    /// The whole output so far went into one send.
    pub fn output_taken(&mut self) {
        self.in_flight_mark = self.queued;
    }

    /// That send completed: release what it carried. `wake` gets the id of
    /// each sender to wake.
    pub fn sent(&mut self, low: usize, mut wake: impl FnMut(u64)) {
        while let Some(e) = self.entries.front() {
            if e.mark > self.in_flight_mark {
                break;
            }
            if e.window.release(e.len, low) {
                wake(e.window.conn);
            }
            self.entries.pop_front();
        }
    }

    /// The connection is gone: release everything.
    pub fn release_all(&mut self, low: usize, mut wake: impl FnMut(u64)) {
        for e in self.entries.drain(..) {
            if e.window.release(e.len, low) {
                wake(e.window.conn);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_wake_once() {
        let w = FlowWindow::new(7);
        w.charge(100);
        assert!(!w.should_pause(200, 100));
        w.charge(150);
        assert!(w.should_pause(200, 100));
        // Draining above the low mark wakes nobody.
        assert!(!w.release(100, 100));
        // Reaching it wakes exactly once.
        assert!(w.release(60, 100));
        assert_eq!(w.outstanding(), 90);
        w.charge(10);
        assert!(!w.release(10, 100));
    }

    #[test]
    fn drained_before_the_request_does_not_pause() {
        let w = FlowWindow::new(1);
        w.charge(300);
        // Nobody wants a wake-up yet: the release reports none.
        assert!(!w.release(300, 100));
        assert!(!w.should_pause(200, 100));
    }

    #[test]
    fn owed_queue_releases_only_what_was_sent() {
        let w = FlowWindow::new(3);
        let mut q = OwedQueue::default();
        w.charge(30);
        q.push(w.clone(), 10);
        q.push(w.clone(), 20);
        q.output_taken();
        w.charge(5);
        q.push(w.clone(), 5);
        let mut woken = Vec::new();
        assert!(w.should_pause(30, 10));
        q.sent(10, |c| woken.push(c));
        // The first send carried 30 bytes: 5 remain, at or below low.
        assert_eq!(w.outstanding(), 5);
        assert_eq!(woken, vec![3]);
        q.release_all(10, |c| woken.push(c));
        assert_eq!(w.outstanding(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn concurrent_release_never_loses_the_wake_up() {
        // The sender pauses while another thread releases: either the
        // sender sees the drained window or the releaser wakes it.
        for _ in 0..2000 {
            let w = FlowWindow::new(9);
            w.charge(1000);
            let w2 = w.clone();
            let t = std::thread::spawn(move || w2.release(1000, 100));
            let paused = w.should_pause(500, 100);
            let woke = t.join().expect("releaser");
            if paused {
                assert!(woke || w.outstanding() > 100, "paused and never woken");
            }
        }
    }
}
