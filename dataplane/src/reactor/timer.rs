//! A hashed timer wheel, one per worker.
//!
//! The reactor arms one io_uring timeout per tick and advances the wheel on
//! its completion; connections register the next instant they need attention
//! (handshake, keep-alive, idle or close-handshake timeout). Entries are
//! (key, deadline) pairs; a key's owner decides on expiry whether the entry
//! is still current, so rescheduling never searches the wheel.

/// Milliseconds on the worker's monotonic clock.
pub type Millis = u64;

pub struct TimerWheel {
    tick_ms: Millis,
    slots: Vec<Vec<(u64, Millis)>>,
    /// The tick the wheel has processed up to (exclusive).
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    /// `slots` must be a power of two; the wheel spans `slots * tick_ms`,
    /// later deadlines wait for extra rotations.
    pub fn new(tick_ms: Millis, slots: usize, now: Millis) -> TimerWheel {
        assert!(slots.is_power_of_two() && tick_ms > 0);
        TimerWheel {
            tick_ms,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            cursor: now / tick_ms,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedule `key` at `deadline` (rounded up to the next tick).
    pub fn insert(&mut self, key: u64, deadline: Millis) {
        let tick = deadline.div_ceil(self.tick_ms).max(self.cursor);
        let mask = self.slots.len() as u64 - 1;
        self.slots[(tick & mask) as usize].push((key, deadline));
        self.len += 1;
    }

    /// Move the wheel to `now`, handing every entry whose deadline has
    /// passed to `fire`. Entries due on a later rotation stay.
    pub fn advance(&mut self, now: Millis, mut fire: impl FnMut(u64, Millis)) {
        let target = now / self.tick_ms;
        let mask = self.slots.len() as u64 - 1;
        // After a long stall, one pass over every slot is enough.
        let steps = (target + 1)
            .saturating_sub(self.cursor)
            .min(self.slots.len() as u64);
        let start = self.cursor;
        for t in start..start + steps {
            let slot = &mut self.slots[(t & mask) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].1 <= now {
                    let (key, deadline) = slot.swap_remove(i);
                    self.len -= 1;
                    fire(key, deadline);
                } else {
                    i += 1;
                }
            }
        }
        self.cursor = self.cursor.max(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_and_not_before() {
        let mut w = TimerWheel::new(10, 8, 0);
        w.insert(1, 25);
        w.insert(2, 100);
        w.insert(3, 1000); // beyond one rotation (80 ms)
        let mut fired = Vec::new();
        w.advance(20, |k, _| fired.push(k));
        assert!(fired.is_empty());
        w.advance(30, |k, _| fired.push(k));
        assert_eq!(fired, vec![1]);
        w.advance(99, |k, _| fired.push(k));
        assert_eq!(fired, vec![1]);
        w.advance(100, |k, _| fired.push(k));
        assert_eq!(fired, vec![1, 2]);
        for now in (100..1000).step_by(7) {
            w.advance(now, |k, _| fired.push(k));
        }
        assert_eq!(fired, vec![1, 2]);
        w.advance(1003, |k, _| fired.push(k));
        assert_eq!(fired, vec![1, 2, 3]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_next_advance() {
        let mut w = TimerWheel::new(10, 8, 500);
        w.insert(7, 10);
        let mut fired = Vec::new();
        w.advance(500, |k, _| fired.push(k));
        assert_eq!(fired, vec![7]);
    }

    #[test]
    fn long_stall_fires_everything_due() {
        let mut w = TimerWheel::new(10, 16, 0);
        for k in 0..100u64 {
            w.insert(k, k * 13);
        }
        let mut fired = Vec::new();
        w.advance(100_000, |k, _| fired.push(k));
        fired.sort();
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
    }
}
