//! The per-worker inbox: work handed over from other cores.
//!
//! A bounded lock-free queue plus an eventfd the owning reactor keeps a read
//! armed on through io_uring. A sender pushes, then writes the eventfd only
//! if the reactor may be asleep (the `armed` flag), so a burst of hand-offs
//! costs one wake-up. Items are owned values (e.g. a parsed frame's buffer),
//! so bytes change cores without being copied.

use crossbeam_queue::ArrayQueue;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Inbox<T> {
    queue: ArrayQueue<T>,
    eventfd: OwnedFd,
    /// Set by the reactor before it sleeps; cleared when it wakes.
    sleeping: AtomicBool,
}

impl<T> Inbox<T> {
    pub fn new(capacity: usize) -> io::Result<Inbox<T>> {
        // SAFETY: eventfd has no memory preconditions; the fd is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: ArrayQueue::new(capacity),
            // SAFETY: `fd` is a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(true),
        })
    }

    /// Hand `item` to the owning reactor; gives it back when the inbox is
    /// full (the caller decides: drop and count, or retry later).
    pub fn send(&self, item: T) -> Result<(), T> {
        self.queue.push(item)?;
        self.wake();
        Ok(())
    }

    /// Wake the reactor (also used for shutdown and management commands).
    pub fn wake(&self) {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to our eventfd.
            unsafe {
                libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
    }

    /// Reactor side: take the next item.
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Reactor side: about to wait; senders must ring the eventfd.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn eventfd_count(fd: RawFd) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a live u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        if n == 8 { v } else { 0 }
    }

    #[test]
    fn burst_wakes_once_and_delivers_everything_in_order() {
        let inbox = Inbox::new(64).unwrap();
        inbox.prepare_sleep();
        for i in 0..10 {
            inbox.send(i).unwrap();
        }
        assert_eq!(eventfd_count(inbox.fd()), 1);
        let got: Vec<i32> = std::iter::from_fn(|| inbox.pop()).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn full_inbox_returns_the_item() {
        let inbox = Inbox::new(2).unwrap();
        inbox.send(1).unwrap();
        inbox.send(2).unwrap();
        assert_eq!(inbox.send(3), Err(3));
    }

    #[test]
    fn owned_buffers_cross_threads_without_copy() {
        let inbox: Arc<Inbox<Vec<u8>>> = Arc::new(Inbox::new(1024).unwrap());
        let sent_ptrs: Vec<usize> = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut ptrs = Vec::new();
                for i in 0..100u8 {
                    let v = vec![i; 1000];
                    ptrs.push(v.as_ptr() as usize);
                    inbox.send(v).unwrap();
                }
                ptrs
            });
            h.join().unwrap()
        });
        let mut got = 0;
        while let Some(v) = inbox.pop() {
            assert_eq!(v.as_ptr() as usize, sent_ptrs[got]);
            assert!(v.iter().all(|&b| b == got as u8));
            got += 1;
        }
        assert_eq!(got, 100);
    }
}
