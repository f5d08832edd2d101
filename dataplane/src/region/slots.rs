//! Connection slots guarded by sequence locks.
//!
//! A slot is `SLOT_WORDS` `AtomicU64` words; word 0 is the sequence number.
//! Every field is an atomic word, so even a misbehaving writer (or another
//! process scribbling on the file) can produce wrong values but never a data
//! race in the Rust sense.
//!
//! Memory ordering (Boehm, "Can seqlocks get along with programming language
//! memory models?", MSPC 2012):
//!
//! * writer: `seq.store(odd, Relaxed)`; `fence(Release)`; data stores
//!   (`Relaxed`); `seq.store(odd + 1, Release)`.
//! * reader: `s1 = seq.load(Acquire)`; retry if odd; data loads (`Relaxed`);
//!   `fence(Acquire)`; `s2 = seq.load(Relaxed)`; accept iff `s1 == s2`.
//!
//! If the reader observed any data store of a write section, its acquire
//! fence synchronises with the writer's release fence, so the writer's odd
//! store happens-before the reader's second load: `s2 != s1`, and the copy is
//! discarded. If it accepted, `s1` was read from some write section's final
//! (release) store, so every data store of that section and earlier is
//! visible and none of a later one was observed — the copy is consistent.
//! There is one writer per slot (the owning reactor); readers never write.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::labels::{ConnState, SubProtocol, Transport};
use super::layout::SLOT_WORDS;

/// Bytes of the free-text field of a slot.
pub const INFO_CAP: usize = 64;

const W_SEQ: usize = 0;
const W_ID: usize = 1;
/// state | transport << 8 | sub_protocol << 16 | peer family << 24 |
/// local family << 32 | info length << 40.
const W_META: usize = 2;
/// peer port | local port << 16.
const W_PORTS: usize = 3;
const W_PEER: usize = 4; // 2 words
const W_LOCAL: usize = 6; // 2 words
const W_CREATED: usize = 8;
const W_LAST_USED: usize = 9;
const W_FRAMES_IN: usize = 10;
const W_FRAMES_OUT: usize = 11;
const W_BYTES_IN: usize = 12;
const W_BYTES_OUT: usize = 13;
const W_INFO: usize = 14; // 8 words
const INFO_WORDS: usize = INFO_CAP / 8;
const _: () = assert!(W_INFO + INFO_WORDS <= SLOT_WORDS);

/// Reader attempts per slot before it is skipped.
const READ_RETRIES: u32 = 64;

pub(crate) type SlotWords = [AtomicU64; SLOT_WORDS];

/// What a reactor records when a connection opens.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
    pub sub_protocol: SubProtocol,
    pub state: ConnState,
    /// Unix time, ms; also the initial "last used".
    pub created_ms: u64,
    /// Protocol-specific text (path, user, …); truncated to [`INFO_CAP`]
    /// bytes at a character boundary.
    pub info: &'a str,
}

/// Short fixed-capacity text copied out of a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InfoText {
    len: u8,
    bytes: [u8; INFO_CAP],
}

impl InfoText {
    /// Text from stored bytes (at most [`INFO_CAP`]; the rest is dropped).
    pub(crate) fn from_bytes(b: &[u8]) -> InfoText {
        let n = b.len().min(INFO_CAP);
        let mut bytes = [0u8; INFO_CAP];
        bytes[..n].copy_from_slice(&b[..n]);
        InfoText {
            len: n as u8,
            bytes,
        }
    }
    /// The text (the longest valid UTF-8 prefix of what was stored).
    pub fn as_str(&self) -> &str {
        let b = &self.bytes[..self.len as usize];
        match std::str::from_utf8(b) {
            Ok(s) => s,
            // Only reachable if the shared file was corrupted: keep the valid prefix.
            Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for InfoText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for InfoText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consistent copy of one occupied slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Connection id: `core << 48 | per-core sequence` (sequence starts at 1).
    pub id: u64,
    pub core: u32,
    /// Slot index within the core.
    pub slot: u32,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub transport: Transport,
    pub sub_protocol: SubProtocol,
    pub state: ConnState,
    pub created_ms: u64,
    pub last_used_ms: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub info: InfoText,
}

/// Build a connection id.
pub const fn make_conn_id(core: u32, seq: u64) -> u64 {
    ((core as u64) << 48) | (seq & ((1 << 48) - 1))
}

/// The core that owns connection `id`.
pub const fn conn_id_core(id: u64) -> u32 {
    (id >> 48) as u32
}

/// Longest prefix of `s` of at most `max` bytes ending at a char boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &[u8] {
    if s.len() <= max {
        return s.as_bytes();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

pub(crate) fn encode_addr(a: &SocketAddr) -> (u8, [u8; 16]) {
    match a.ip() {
        IpAddr::V4(ip) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&ip.octets());
            (4, b)
        }
        IpAddr::V6(ip) => (6, ip.octets()),
    }
}

pub(crate) fn decode_addr(family: u8, b: [u8; 16], port: u16) -> SocketAddr {
    match family {
        6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port),
        4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), port),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    }
}

pub(crate) fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    let mut buf = [0u8; 8];
    for (i, w) in words.iter().enumerate() {
        buf.fill(0);
        let start = (i * 8).min(bytes.len());
        let end = (start + 8).min(bytes.len());
        buf[..end - start].copy_from_slice(&bytes[start..end]);
        w.store(u64::from_ne_bytes(buf), Ordering::Relaxed);
    }
}

pub(crate) fn load_bytes(words: &[u64], out: &mut [u8]) {
    for (chunk, w) in out.chunks_mut(8).zip(words) {
        let b = w.to_ne_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Field access for a slot inside a write section; see
/// [`super::CoreStats::slot_update`]. Only the owning reactor writes.
pub struct SlotWriter<'a> {
    w: &'a SlotWords,
}

impl SlotWriter<'_> {
    #[inline]
    fn get(&self, i: usize) -> u64 {
        self.w[i].load(Ordering::Relaxed)
    }
    #[inline]
    fn put(&self, i: usize, v: u64) {
        self.w[i].store(v, Ordering::Relaxed)
    }
    #[inline]
    fn set_meta_byte(&self, shift: u32, v: u8) {
        let m = self.get(W_META) & !(0xFFu64 << shift);
        self.put(W_META, m | (u64::from(v) << shift));
    }
    /// Connection state.
    #[inline]
    pub fn set_state(&mut self, s: ConnState) {
        self.set_meta_byte(0, s as u8);
    }
    pub fn set_transport(&mut self, t: Transport) {
        self.set_meta_byte(8, t as u8);
    }
    pub fn set_sub_protocol(&mut self, p: SubProtocol) {
        self.set_meta_byte(16, p as u8);
    }
    pub fn set_peer(&mut self, a: SocketAddr) {
        let (fam, b) = encode_addr(&a);
        self.set_meta_byte(24, fam);
        store_bytes(&self.w[W_PEER..W_PEER + 2], &b);
        let ports = (self.get(W_PORTS) & !0xFFFF) | u64::from(a.port());
        self.put(W_PORTS, ports);
    }
    pub fn set_local(&mut self, a: SocketAddr) {
        let (fam, b) = encode_addr(&a);
        self.set_meta_byte(32, fam);
        store_bytes(&self.w[W_LOCAL..W_LOCAL + 2], &b);
        let ports = (self.get(W_PORTS) & !0xFFFF_0000) | (u64::from(a.port()) << 16);
        self.put(W_PORTS, ports);
    }
    /// Protocol-specific text, truncated to [`INFO_CAP`] bytes at a char boundary.
    pub fn set_info(&mut self, s: &str) {
        let b = truncate_str(s, INFO_CAP);
        self.set_meta_byte(40, b.len() as u8);
        store_bytes(&self.w[W_INFO..W_INFO + INFO_WORDS], b);
    }
    /// Last activity, unix ms.
    #[inline]
    pub fn set_last_used(&mut self, ms: u64) {
        self.put(W_LAST_USED, ms);
    }
    /// Add received frames and bytes.
    #[inline]
    pub fn add_rx(&mut self, frames: u64, bytes: u64) {
        self.put(W_FRAMES_IN, self.get(W_FRAMES_IN).wrapping_add(frames));
        self.put(W_BYTES_IN, self.get(W_BYTES_IN).wrapping_add(bytes));
    }
    /// Add sent frames and bytes.
    #[inline]
    pub fn add_tx(&mut self, frames: u64, bytes: u64) {
        self.put(W_FRAMES_OUT, self.get(W_FRAMES_OUT).wrapping_add(frames));
        self.put(W_BYTES_OUT, self.get(W_BYTES_OUT).wrapping_add(bytes));
    }
    /// Set the traffic totals outright.
    #[inline]
    pub fn set_traffic(&mut self, frames_in: u64, frames_out: u64, bytes_in: u64, bytes_out: u64) {
        self.put(W_FRAMES_IN, frames_in);
        self.put(W_FRAMES_OUT, frames_out);
        self.put(W_BYTES_IN, bytes_in);
        self.put(W_BYTES_OUT, bytes_out);
    }
}

/// Ends a write section when dropped (also on unwind, so a panicking update
/// closure cannot leave the slot odd forever).
struct WriteSection<'a> {
    seq: &'a AtomicU64,
    odd: u64,
}

impl Drop for WriteSection<'_> {
    #[inline]
    fn drop(&mut self) {
        self.seq.store(self.odd.wrapping_add(1), Ordering::Release);
    }
}

/// Run `f` inside a seqlock write section of the slot.
#[inline]
pub(crate) fn write<R>(w: &SlotWords, f: impl FnOnce(&mut SlotWriter<'_>) -> R) -> R {
    let seq = &w[W_SEQ];
    // `| 1` keeps the protocol going even if a previous section never ended.
    let odd = seq.load(Ordering::Relaxed) | 1;
    seq.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    let _section = WriteSection { seq, odd };
    f(&mut SlotWriter { w })
}

/// Fill a slot for a newly opened connection.
pub(crate) fn open(w: &SlotWords, id: u64, info: &ConnInfo<'_>) {
    write(w, |s| {
        s.put(W_ID, id);
        s.put(W_META, 0);
        s.put(W_PORTS, 0);
        s.set_state(info.state);
        s.set_transport(info.transport);
        s.set_sub_protocol(info.sub_protocol);
        s.set_peer(info.peer);
        s.set_local(info.local);
        s.set_info(info.info);
        s.put(W_CREATED, info.created_ms);
        s.put(W_LAST_USED, info.created_ms);
        s.set_traffic(0, 0, 0, 0);
    })
}

/// Mark a slot free.
pub(crate) fn close(w: &SlotWords) {
    write(w, |s| s.set_state(ConnState::Free))
}

/// Outcome of a slot read.
pub(crate) enum Read {
    Free,
    Busy,
    Conn(ConnSnapshot),
}

/// Relaxed peek at the id word (a hint for searching; confirm with `read`).
pub(crate) fn peek_id(w: &SlotWords) -> u64 {
    w[W_ID].load(Ordering::Relaxed)
}

/// Consistent copy of a slot, retrying a bounded number of times.
pub(crate) fn read(w: &SlotWords, core: u32, slot: u32) -> Read {
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
        let mut copy = [0u64; SLOT_WORDS];
        let meta = w[W_META].load(Ordering::Relaxed);
        let free = meta as u8 == ConnState::Free as u8;
        if !free {
            for (c, a) in copy.iter_mut().zip(w.iter()).skip(1) {
                *c = a.load(Ordering::Relaxed);
            }
        }
        fence(Ordering::Acquire);
        let s2 = w[W_SEQ].load(Ordering::Relaxed);
        if s1 != s2 {
            continue;
        }
        if free {
            return Read::Free;
        }
        return match decode(&copy, core, slot) {
            Some(c) => Read::Conn(c),
            // Consistent but undecodable: a corrupted slot; treat as free.
            None => Read::Free,
        };
    }
    Read::Busy
}

fn decode(c: &[u64; SLOT_WORDS], core: u32, slot: u32) -> Option<ConnSnapshot> {
    let meta = c[W_META];
    let byte = |shift: u32| (meta >> shift) as u8;
    let state = ConnState::from_u8(byte(0))?;
    let transport = Transport::from_u8(byte(8))?;
    let sub_protocol = SubProtocol::from_u8(byte(16))?;
    let info_len = (byte(40) as usize).min(INFO_CAP);
    let ports = c[W_PORTS];
    let mut peer = [0u8; 16];
    load_bytes(&c[W_PEER..W_PEER + 2], &mut peer);
    let mut local = [0u8; 16];
    load_bytes(&c[W_LOCAL..W_LOCAL + 2], &mut local);
    let mut info = InfoText {
        len: info_len as u8,
        bytes: [0u8; INFO_CAP],
    };
    load_bytes(&c[W_INFO..W_INFO + INFO_WORDS], &mut info.bytes);
    Some(ConnSnapshot {
        id: c[W_ID],
        core,
        slot,
        peer: decode_addr(byte(24), peer, ports as u16),
        local: decode_addr(byte(32), local, (ports >> 16) as u16),
        transport,
        sub_protocol,
        state,
        created_ms: c[W_CREATED],
        last_used_ms: c[W_LAST_USED],
        frames_in: c[W_FRAMES_IN],
        frames_out: c[W_FRAMES_OUT],
        bytes_in: c[W_BYTES_IN],
        bytes_out: c[W_BYTES_OUT],
        info,
    })
}
