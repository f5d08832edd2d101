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
//!
//! A body may also be sent by another worker (its target lives there): the
//! pieces name the owning core, every worker's buffer memory lives in the
//! process-wide [`RingTable`] (so it outlives any one worker), and the
//! other worker gives each hold back through the owner's release queue,
//! which the owner drains every turn ([`BufRing::drain_released`]): the
//! hold bookkeeping itself stays single-threaded.

use crossbeam_queue::SegQueue;
use io_uring::IoUring;
use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};

pub struct BufRing {
    /// Page-aligned ring of `entries` descriptors shared with the kernel.
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    /// Every buffer, `buf_size` bytes each: this worker's memory in
    /// `table`, which keeps it mapped.
    data: *mut u8,
    entries: u16,
    buf_size: u32,
    bgid: u16,
    tail: u16,
    holds: Holds,
    /// The core whose ring this is.
    core: u8,
    table: Arc<RingTable>,
}

/// Every worker's provided-buffer memory, and the holds other workers
/// give back. Lives as long as any worker (each keeps an `Arc`), so a
/// piece of a buffer another worker sends stays readable even if its
/// owner has gone.
pub struct RingTable {
    cores: Vec<CoreRing>,
}

struct CoreRing {
    memory: OnceLock<RingMemory>,
    /// Buffer ids, one per hold another worker ended.
    released: SegQueue<u16>,
}

/// One worker's buffers: `entries` × `buf_size` bytes, mapped once.
struct RingMemory {
    data: *mut u8,
    bytes: usize,
    entries: u16,
    buf_size: u32,
}

// SAFETY: the mapping is plain memory owned by the table until it drops;
// workers read only bytes of buffers held for them (the owner neither
// recycles nor writes a held buffer), and the kernel writes only buffers
// in the ring (never held ones).
unsafe impl Send for RingMemory {}
// SAFETY: as above; shared access is reads of held buffers only.
unsafe impl Sync for RingMemory {}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: mapped in `BufRing::new` with `bytes`; the table drops
        // after every worker (each holds an `Arc`), so no piece refers to
        // it any more.
        unsafe { libc::munmap(self.data.cast(), self.bytes) };
    }
}

impl RingMemory {
    /// Address and length (clamped to the buffer) of `len` bytes at `off`
    /// of buffer `bid`.
    fn ptr(&self, bid: u16, off: u32, len: u32) -> (*const u8, usize) {
        buffer_range(self.data, self.entries, self.buf_size, bid, off, len)
    }
}

/// Address and length of `len` bytes at `off` of buffer `bid` in memory
/// `data` of `entries` buffers of `buf_size` bytes: `bid` masked into
/// range, the range clamped to that one buffer.
fn buffer_range(
    data: *mut u8,
    entries: u16,
    buf_size: u32,
    bid: u16,
    off: u32,
    len: u32,
) -> (*const u8, usize) {
    let bid = (bid & (entries - 1)) as usize;
    let off = (off as usize).min(buf_size as usize);
    let len = (len as usize).min(buf_size as usize - off);
    let p = data
        .wrapping_add(bid * buf_size as usize + off)
        .cast_const();
    (p, len)
}

impl RingTable {
    /// A table for `cores` workers, each to register its memory once.
    pub fn new(cores: usize) -> Arc<RingTable> {
        Arc::new(RingTable {
            cores: (0..cores)
                .map(|_| CoreRing {
                    memory: OnceLock::new(),
                    released: SegQueue::new(),
                })
                .collect(),
        })
    }
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
    /// bytes and register them as buffer group `bgid` of `ring`; the
    /// memory goes into `table` as core `core`'s (once).
    pub fn new(
        uring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_size: u32,
        table: Arc<RingTable>,
        core: u8,
    ) -> io::Result<BufRing> {
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
        let memory = RingMemory {
            data,
            bytes: data_bytes,
            entries,
            buf_size,
        };
        let Some(slot) = table.cores.get(usize::from(core)) else {
            // SAFETY: `ring` was mapped just above; `memory` unmaps `data`.
            unsafe { libc::munmap(ring.cast(), ring_bytes) };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "core outside the buffer table",
            ));
        };
        if let Err(memory) = slot.memory.set(memory) {
            drop(memory);
            // SAFETY: as above.
            unsafe { libc::munmap(ring.cast(), ring_bytes) };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this core's buffers are registered already",
            ));
        }
        let mut this = BufRing {
            ring,
            ring_bytes,
            data,
            entries,
            buf_size,
            bgid,
            tail: 0,
            holds: Holds::new(entries as usize),
            core,
            table,
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

    /// The core whose ring this is.
    pub fn core(&self) -> u8 {
        self.core
    }

    /// One hold on buffer `bid` of core `core` ends (exactly once per
    /// hold taken): here, or given back to that core's release queue.
    pub fn release(&mut self, core: u8, bid: u16) {
        if core != self.core {
            if let Some(c) = self.table.cores.get(usize::from(core)) {
                c.released.push(bid);
            }
            return;
        }
        let bid = bid & (self.entries - 1);
        if self.holds.release(bid as usize) {
            self.push(bid);
            self.publish();
        }
    }

    /// End the holds other workers gave back; `true` when a buffer went
    /// back to the kernel.
    pub fn drain_released(&mut self) -> bool {
        let table = self.table.clone();
        let Some(mine) = table.cores.get(usize::from(self.core)) else {
            return false;
        };
        let mut any = false;
        while let Some(bid) = mine.released.pop() {
            let bid = bid & (self.entries - 1);
            if self.holds.release(bid as usize) {
                self.push(bid);
                any = true;
            }
        }
        if any {
            self.publish();
        }
        any
    }

    /// `len` bytes at `off` of held buffer `bid` of core `core`.
    pub fn held_bytes(&self, core: u8, bid: u16, off: u32, len: u32) -> &[u8] {
        let (p, len) = self.held_ptr(core, bid, off, len);
        // SAFETY: `held_ptr` bounds the range to one buffer of a mapping
        // the table keeps alive while `self` lives; a held buffer is not
        // in its ring, so the kernel does not write to it, and its worker
        // never writes to a buffer once its reader is done (a hold for
        // another worker is taken only after the bytes were final).
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// Address and length (clamped to the buffer) of `len` bytes at `off`
    /// of buffer `bid` of core `core`, for an iovec. Only meaningful while
    /// `bid` is held.
    pub fn held_ptr(&self, core: u8, bid: u16, off: u32, len: u32) -> (*const u8, usize) {
        if core == self.core {
            return buffer_range(self.data, self.entries, self.buf_size, bid, off, len);
        }
        match self
            .table
            .cores
            .get(usize::from(core))
            .and_then(|c| c.memory.get())
        {
            Some(m) => m.ptr(bid, off, len),
            None => (std::ptr::NonNull::dangling().as_ptr(), 0),
        }
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
        // SAFETY: the descriptor ring was mapped in `new` with this size and
        // is not referenced after drop (the ring is unregistered or the
        // io_uring instance is gone with its worker). The buffers stay
        // mapped in the table: another worker may still send from them.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
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

    /// Core 1 reads a buffer core 0 holds for it and gives its holds back
    /// through core 0's queue; the buffer goes back only when core 0
    /// drains the queue after the last one, and core 0's memory stays
    /// readable while the table lives, even after its ring is gone.
    #[test]
    fn another_core_reads_a_held_buffer_and_gives_its_holds_back() {
        let table = RingTable::new(2);
        let u0 = IoUring::new(8).expect("io_uring");
        let u1 = IoUring::new(8).expect("io_uring");
        let mut r0 = BufRing::new(&u0, 0, 8, 64, table.clone(), 0).expect("ring 0");
        let mut r1 = BufRing::new(&u1, 0, 8, 64, table.clone(), 1).expect("ring 1");
        assert_eq!((r0.core(), r1.core()), (0, 1));
        let u2 = IoUring::new(8).expect("io_uring");
        assert!(
            BufRing::new(&u2, 0, 8, 64, table.clone(), 0).is_err(),
            "core 0's memory registered twice"
        );
        assert!(BufRing::new(&u2, 0, 8, 64, table.clone(), 2).is_err());
        for (i, b) in r0.buffer(3, 64).iter_mut().enumerate() {
            *b = i as u8;
        }
        // Two chunks of buffer 3 handed to core 1; the reader is done.
        r0.hold(3, 2);
        r0.recycle(3);
        assert_eq!(r0.held(), 1);
        let want: Vec<u8> = (4..14).collect();
        assert_eq!(r1.held_bytes(0, 3, 4, 10), want.as_slice());
        // Clamped to the one buffer.
        assert_eq!(r1.held_bytes(0, 3, 60, 10).len(), 4);
        r1.release(0, 3);
        assert!(!r0.drain_released(), "back before its last hold ended");
        assert_eq!(r0.held(), 1);
        r1.release(0, 3);
        assert_eq!(r0.held(), 1, "released before core 0 drained its queue");
        assert!(r0.drain_released());
        assert_eq!(r0.held(), 0);
        assert!(!r0.drain_released());
        // Core 1's own releases stay local.
        r1.hold(5, 1);
        r1.release(1, 5);
        assert_eq!(r1.held(), 0);
        drop(r0);
        assert_eq!(r1.held_bytes(0, 3, 4, 10), want.as_slice());
    }

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
