//! The per-worker provided-buffer ring (io_uring `IORING_REGISTER_PBUF_RING`).
//!
//! Multishot recv picks a buffer from this ring only when data arrives, so an
//! idle connection holds no read buffer. The reactor hands each buffer back
//! as soon as the bytes in it are consumed (an incomplete frame's bytes are
//! first copied to its connection).

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

    /// Give buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid & (self.entries - 1));
        self.publish();
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
