//! MSRP session table: per core [`MSRP_SESSION_SLOTS`] seqlock-guarded
//! slots of [`SESSION_SLOT_SIZE`] bytes listing the relay sessions the
//! core's session map holds (Kamailio's `msrp.cmaplist`). Same protocol as
//! the connection slots (see `slots.rs`): one writer per slot (the owning
//! reactor), readers copy and retry, every word an atomic.
//!
//! Word layout: 0 sequence; 1 meta (`used | user length << 8 | peer length
//! << 16 | id length << 24`); 2 connection id; 3 expiry (unix ms); 4–7
//! session id (32 bytes); 8–13 peer address text (48 bytes); 14–21 user
//! (64 bytes); 22–23 spare.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::slots::{load_bytes, store_bytes, truncate_str};

/// Session slots per core. Sessions beyond this many on one core are
/// relayed normally but not listed.
pub const MSRP_SESSION_SLOTS: u32 = 2048;
pub(crate) const SESSION_WORDS: usize = 24;
/// Bytes of one session slot.
pub const SESSION_SLOT_SIZE: usize = SESSION_WORDS * 8;
/// Longest session id kept.
pub const SESSION_ID_CAP: usize = 32;
/// Longest peer address text kept.
pub const SESSION_PEER_CAP: usize = 48;
/// Longest user name kept (truncated at a character boundary).
pub const SESSION_USER_CAP: usize = 64;

const W_SEQ: usize = 0;
const W_META: usize = 1;
const W_CONN: usize = 2;
const W_EXPIRES: usize = 3;
const W_ID: usize = 4;
const W_PEER: usize = 8;
const W_USER: usize = 14;
const _: () = assert!(W_USER + SESSION_USER_CAP / 8 <= SESSION_WORDS);
const READ_RETRIES: u32 = 64;

pub(crate) type SessionWords = [AtomicU64; SESSION_WORDS];

/// What a reactor publishes about one relay session.
#[derive(Clone, Copy, Debug)]
pub struct MsrpSessionInfo<'a> {
    pub session_id: &'a str,
    pub user: &'a str,
    pub peer: &'a str,
    pub conn_id: u64,
    /// Unix time, ms.
    pub expires_unix_ms: u64,
}

/// A consistent copy of one listed session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrpSessionSnapshot {
    pub session_id: String,
    pub user: String,
    pub peer: String,
    pub conn_id: u64,
    pub expires_unix_ms: u64,
    pub core: u32,
    pub slot: u32,
}

struct Section<'a> {
    seq: &'a AtomicU64,
    odd: u64,
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        self.seq.store(self.odd.wrapping_add(1), Ordering::Release);
    }
}

fn write(w: &SessionWords, f: impl FnOnce(&SessionWords)) {
    let seq = &w[W_SEQ];
    let odd = seq.load(Ordering::Relaxed) | 1;
    seq.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    let _s = Section { seq, odd };
    f(w)
}

pub(crate) fn put(w: &SessionWords, s: &MsrpSessionInfo<'_>) {
    let id = truncate_str(s.session_id, SESSION_ID_CAP);
    let peer = truncate_str(s.peer, SESSION_PEER_CAP);
    let user = truncate_str(s.user, SESSION_USER_CAP);
    write(w, |w| {
        let meta = 1
            | ((user.len() as u64) << 8)
            | ((peer.len() as u64) << 16)
            | ((id.len() as u64) << 24);
        w[W_META].store(meta, Ordering::Relaxed);
        w[W_CONN].store(s.conn_id, Ordering::Relaxed);
        w[W_EXPIRES].store(s.expires_unix_ms, Ordering::Relaxed);
        store_bytes(&w[W_ID..W_ID + SESSION_ID_CAP / 8], id);
        store_bytes(&w[W_PEER..W_PEER + SESSION_PEER_CAP / 8], peer);
        store_bytes(&w[W_USER..W_USER + SESSION_USER_CAP / 8], user);
    })
}

pub(crate) fn free(w: &SessionWords) {
    write(w, |w| w[W_META].store(0, Ordering::Relaxed))
}

fn text(words: &[u64], len: usize, cap: usize) -> String {
    let mut b = vec![0u8; cap];
    load_bytes(words, &mut b);
    b.truncate(len.min(cap));
    match String::from_utf8(b) {
        Ok(s) => s,
        // Only if the shared file was corrupted: keep the valid prefix.
        Err(e) => {
            let n = e.utf8_error().valid_up_to();
            let mut b = e.into_bytes();
            b.truncate(n);
            String::from_utf8(b).unwrap_or_default()
        }
    }
}

/// `None` when free or still being written after the bounded retries.
pub(crate) fn read(w: &SessionWords, core: u32, slot: u32) -> Option<MsrpSessionSnapshot> {
    for attempt in 0..READ_RETRIES {
        if attempt > 0 {
            if attempt < 8 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let s1 = w[W_SEQ].load(Ordering::Acquire);
        if s1 & 1 == 1 {
            continue;
        }
        let meta = w[W_META].load(Ordering::Relaxed);
        let mut c = [0u64; SESSION_WORDS];
        if meta & 0xFF == 1 {
            for (c, a) in c.iter_mut().zip(w.iter()).skip(1) {
                *c = a.load(Ordering::Relaxed);
            }
        }
        fence(Ordering::Acquire);
        if w[W_SEQ].load(Ordering::Relaxed) != s1 {
            continue;
        }
        if meta & 0xFF != 1 {
            return None;
        }
        let len = |shift: u32| ((meta >> shift) & 0xFF) as usize;
        return Some(MsrpSessionSnapshot {
            session_id: text(&c[W_ID..W_PEER], len(24), SESSION_ID_CAP),
            user: text(&c[W_USER..W_USER + 8], len(8), SESSION_USER_CAP),
            peer: text(&c[W_PEER..W_USER], len(16), SESSION_PEER_CAP),
            conn_id: c[W_CONN],
            expires_unix_ms: c[W_EXPIRES],
            core,
            slot,
        });
    }
    None
}
