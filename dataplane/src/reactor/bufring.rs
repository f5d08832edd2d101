//! The per-worker provided-buffer ring (io_uring `IORING_REGISTER_PBUF_RING`).
//!
//! Multishot recv picks a buffer from this ring only when data arrives, so an
//! idle connection holds no read buffer. The reactor hands each buffer back
//! as soon as the bytes in it are consumed (an incomplete frame's bytes are
//! first copied to its connection) — unless the buffer is *held*: a
//! forwarded MSRP chunk body queued on another connection by reference
//! ([`super::conn::Piece::Ring`]) holds its buffer until that piece is sent
//! or dropped. A held buffer goes back to the kernel once its reader is done
//! and its last hold is released ([`Holds`]); a worker holds at most a
//! quarter of its buffers, so receiving never runs short because of holds.

use io_uring::IoUring;
use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

pub struct BufRing {
    /// Page-aligned ring of `entries` descriptors shared with the kernel.
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    /// One allocation holding every buffer, `buf_size` bytes each.
    data: *mut u8,
    data_bytes: usize,
    entries: u16,
    buf_size: u32,
    bgid: u16,
    tail: u16,
    holds: Holds,
}

/// Share of the ring a worker may hold (1/`HOLD_SHARE` of the buffers).
pub const HOLD_SHARE: usize = 4;

/// Which provided buffers are held, and how many times: the pure
/// bookkeeping of [`BufRing::hold`]/[`BufRing::release`], apart from the
/// ring so it can be tested without one.
#[derive(Debug)]
pub struct Holds {
    /// Holds per buffer.
    count: Vec<u32>,
    /// The reader handed the buffer back while it was held: it returns to
    /// the kernel with its last release.
    reader_done: Vec<bool>,
    /// Buffers with at least one hold.
    held: usize,
    /// Buffers that may be held at once.
    max: usize,
}

impl Holds {
    pub fn new(entries: usize) -> Holds {
        Holds {
            count: vec![0; entries],
            reader_done: vec![false; entries],
            held: 0,
            max: entries / HOLD_SHARE,
        }
    }

    /// Another buffer may be held (checked before the reader of a fresh
    /// buffer takes holds on it: at most one more buffer is then held).
    pub fn can_hold(&self) -> bool {
        self.held < self.max
    }

    /// Buffers currently held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Take `n` holds on buffer `bid` (its reader is still at work).
    pub fn hold(&mut self, bid: usize, n: u32) {
        if n == 0 {
            return;
        }
        if self.count[bid] == 0 {
            self.held += 1;
        }
        self.count[bid] += n;
    }

    /// The reader is done with `bid`: `true` when it goes back now.
    pub fn reader_done(&mut self, bid: usize) -> bool {
        if self.count[bid] == 0 {
            return true;
        }
        self.reader_done[bid] = true;
        false
    }

    /// One hold on `bid` ends: `true` when the buffer goes back now (the
    /// last hold, and its reader is done).
    pub fn release(&mut self, bid: usize) -> bool {
        debug_assert!(self.count[bid] > 0, "release of an unheld buffer {bid}");
        if self.count[bid] == 0 {
            return false;
        }
        self.count[bid] -= 1;
        if self.count[bid] > 0 {
            return false;
        }
        self.held -= 1;
        std::mem::replace(&mut self.reader_done[bid], false)
    }
}

impl BufRing {
    /// Allocate `entries` (a power of two ≤ 32768) buffers of `buf_size`
    /// bytes and register them as buffer group `bgid` of `ring`.
    pub fn new(uring: &IoUring, bgid: u16, entries: u16, buf_size: u32) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provided-buffer count must be a power of two ≤ 32768",
            ));
        }
        let ring_bytes = entries as usize * std::mem::size_of::<BufRingEntry>();
        let data_bytes = entries as usize * buf_size as usize;
        let ring = mmap_anon(ring_bytes)? as *mut BufRingEntry;
        let data = match mmap_anon(data_bytes) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `ring` was mapped just above with `ring_bytes`.
                unsafe { libc::munmap(ring.cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            ring,
            ring_bytes,
            data,
            data_bytes,
            entries,
            buf_size,
            bgid,
            tail: 0,
            holds: Holds::new(entries as usize),
        };
        // SAFETY: the ring memory is page-aligned (mmap), sized for `entries`
        // descriptors and lives until `Drop`, which unregisters it first.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    ///
    /// The caller must own `bid` (a completion handed it over and it has
    /// not been recycled yet).
    pub fn buffer(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let bid = (bid & (self.entries - 1)) as usize;
        let len = len.min(self.buf_size as usize);
        // SAFETY: `bid` is masked into range, `len` is clamped to one buffer,
        // and the kernel no longer writes to a buffer it has completed into
        // until we recycle it; `&mut self` keeps the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.data.add(bid * self.buf_size as usize), len) }
    }

    /// The reader is done with buffer `bid`: it goes back to the kernel,
    /// now or (held) with its last release.
    pub fn recycle(&mut self, bid: u16) {
        let bid = bid & (self.entries - 1);
        if self.holds.reader_done(bid as usize) {
            self.push(bid);
            self.publish();
        }
    }

    /// Another buffer may be held ([`HOLD_SHARE`]).
    pub fn can_hold(&self) -> bool {
        self.holds.can_hold()
    }

    /// Buffers currently held.
    pub fn held(&self) -> usize {
        self.holds.held()
    }

    /// Take `n` holds on buffer `bid`, which its reader still owns (before
    /// [`BufRing::recycle`]): the kernel gets it back only after `n`
    /// [`BufRing::release`]s.
    pub fn hold(&mut self, bid: u16, n: u32) {
        self.holds.hold((bid & (self.entries - 1)) as usize, n);
    }

    /// One hold on `bid` ends (exactly once per hold taken).
    pub fn release(&mut self, bid: u16) {
        let bid = bid & (self.entries - 1);
        if self.holds.release(bid as usize) {
            self.push(bid);
            self.publish();
        }
    }

    /// `len` bytes at `off` of held buffer `bid`.
    pub fn held_bytes(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        let (p, len) = self.held_ptr(bid, off, len);
        // SAFETY: `held_ptr` bounds the range to one buffer; a held buffer
        // is not in the ring, so the kernel does not write to it, and the
        // worker never writes to a buffer once its reader is done.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Address and length (clamped to the buffer) of `len` bytes at `off`
    /// of buffer `bid`, for an iovec. Only meaningful while `bid` is held.
    pub fn held_ptr(&self, bid: u16, off: u32, len: u32) -> (*const u8, usize) {
        let bid = (bid & (self.entries - 1)) as usize;
        let off = (off as usize).min(self.buf_size as usize);
        let len = (len as usize).min(self.buf_size as usize - off);
        let p = self
            .data
            .wrapping_add(bid * self.buf_size as usize + off)
            .cast_const();
        (p, len)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `idx` < entries; descriptors are plain memory the kernel
        // reads only up to the published tail, which we move after writing.
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.data.add(bid as usize * self.buf_size as usize) as u64);
            e.set_len(self.buf_size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field and is
        // a naturally aligned u16 the kernel reads with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Unregister from `uring` (call before dropping when the ring lives on).
    pub fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these sizes and are
        // not referenced after drop (the ring is unregistered or the
        // io_uring instance is gone with its worker).
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
            libc::munmap(self.data.cast(), self.data_bytes);
        }
    }
}

fn mmap_anon(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping has no preconditions; the result
    // is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_buffer_returns_once_after_its_last_release() {
        let mut h = Holds::new(16);
        // Not held: back at once.
        assert!(h.reader_done(3));
        // Two chunks of buffer 5 queued by reference.
        h.hold(5, 2);
        assert_eq!(h.held(), 1);
        assert!(!h.reader_done(5), "returned while held");
        assert!(!h.release(5), "returned while still held once");
        assert!(h.release(5), "not returned after its last release");
        assert_eq!(h.held(), 0);
        // Returned once: a later unrelated release of a new hold does not
        // return it again unless its new reader is done.
        h.hold(5, 1);
        assert!(!h.release(5), "returned before its reader was done");
        assert!(h.reader_done(5));
    }

    #[test]
    fn released_before_the_reader_is_done() {
        let mut h = Holds::new(16);
        h.hold(2, 1);
        // The piece went (a send completed) while the reader still works.
        assert!(!h.release(2));
        assert_eq!(h.held(), 0);
        assert!(h.reader_done(2));
    }

    #[test]
    fn holds_are_capped_at_a_share_of_the_ring() {
        let mut h = Holds::new(32);
        let mut bid = 0;
        while h.can_hold() {
            h.hold(bid, 3);
            assert!(!h.reader_done(bid));
            bid += 1;
        }
        assert_eq!(bid, 32 / HOLD_SHARE);
        assert_eq!(h.held(), 32 / HOLD_SHARE);
        // More holds on a held buffer do not count twice.
        h.hold(0, 1);
        assert_eq!(h.held(), 32 / HOLD_SHARE);
        for _ in 0..4 {
            let _ = h.release(0);
        }
        assert!(h.can_hold());
        assert_eq!(h.held(), 32 / HOLD_SHARE - 1);
    }
}
