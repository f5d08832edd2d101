//! Per-core connection event rings (data plane → management service): a
//! connection opened (WebSocket handshake accepted), closed (with its close
//! code and reason), or refused at the handshake (with the reason). They feed
//! the management service's `/api/events` stream, rtedge's equivalent of
//! Kamailio's `event_route[websocket:closed]`.
//!
//! One ring per core, [`EVENT_CAPACITY`] cells, exactly one writer (the
//! core's reactor) that never waits: it overwrites the oldest event. Readers
//! (any number, any process) never write; each keeps its own cursor (the
//! sequence number of the next event it wants) and learns how many events it
//! lost when it fell more than a ring behind.
//!
//! Event `n` (counted from 0 per core) lives in cell `n % EVENT_CAPACITY`.
//! Each cell is a small seqlock whose stamp encodes the event number:
//! `2n + 1` while event `n` is being written, `2n + 2` once it is complete.
//!
//! * writer: `stamp.store(2n+1, Relaxed)`; `fence(Release)`; payload stores
//!   (`Relaxed`); `stamp.store(2n+2, Release)`; `head.store(n+1, Release)`.
//! * reader of event `n < head` (head loaded with `Acquire`):
//!   `s1 = stamp.load(Acquire)`, which must be `2n+2`; payload loads
//!   (`Relaxed`); `fence(Acquire)`; `s2 = stamp.load(Relaxed)`; the copy is
//!   event `n`, untorn, iff `s2 == s1` (same argument as the connection slots,
//!   see `slots.rs`). Any other stamp means the writer has lapped the reader:
//!   the event is counted as lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::labels::{HandshakeReason, SubProtocol, Transport};
use super::slots::{InfoText, decode_addr, encode_addr, load_bytes, store_bytes, truncate_str};

/// Events kept per core (a power of two).
pub const EVENT_CAPACITY: u32 = 1024;
/// Bytes of an event's free text (path/user, close reason).
pub const EVENT_TEXT_CAP: usize = 64;

/// Words of one event cell.
pub(crate) const EVENT_CELL_WORDS: usize = 16;
/// Words before the first cell: the head (events ever written) on its own
/// 128-byte block.
pub(crate) const EVENT_HEAD_WORDS: usize = 16;

const E_STAMP: usize = 0;
/// kind | transport << 8 | sub_protocol << 16 | peer family << 24 |
/// reject reason << 32 | text length << 40 | has code << 48.
const E_META: usize = 1;
const E_CONN: usize = 2;
const E_TIME: usize = 3;
const E_PEER: usize = 4; // 2 words
/// peer port | close code << 16.
const E_PORTS: usize = 6;
const E_TEXT: usize = 8; // 8 words
const TEXT_WORDS: usize = EVENT_TEXT_CAP / 8;
const _: () = assert!(E_TEXT + TEXT_WORDS <= EVENT_CELL_WORDS);
const _: () = assert!(EVENT_CAPACITY.is_power_of_two());
const _: () = assert!(EVENT_TEXT_CAP <= super::slots::INFO_CAP);

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// WebSocket handshake accepted (`text`: request path and user).
    Opened = 1,
    /// Connection closed (`code`: the close status, `text`: the reason).
    Closed = 2,
    /// Opening handshake refused (`reason`).
    Rejected = 3,
}

impl EventKind {
    /// Every kind.
    pub const ALL: &'static [EventKind] =
        &[EventKind::Opened, EventKind::Closed, EventKind::Rejected];
    /// `"opened"`, `"closed"` or `"rejected"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Closed => "closed",
            EventKind::Rejected => "rejected",
        }
    }
    /// From the stored byte.
    pub const fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            1 => Some(EventKind::Opened),
            2 => Some(EventKind::Closed),
            3 => Some(EventKind::Rejected),
            _ => None,
        }
    }
    /// The kind whose name is `s`.
    pub fn from_label(s: &str) -> Option<EventKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as the reactor records it ([`super::CoreStats::event`]).
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub kind: EventKind,
    /// The connection's id (0 if it never got one).
    pub conn_id: u64,
    /// Unix time, ms.
    pub time_ms: u64,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub sub_protocol: SubProtocol,
    /// `Closed`: the close status code, `None` if the connection ended
    /// without a close frame (reported as 1006, RFC 6455 §7.1.5).
    pub code: Option<u16>,
    /// `Rejected`: why the handshake was refused.
    pub reason: Option<HandshakeReason>,
    /// Free text, truncated to [`EVENT_TEXT_CAP`] bytes at a char boundary.
    pub text: &'a str,
}

impl<'a> Event<'a> {
    /// A WebSocket session opened; `info` is e.g. the path and user.
    pub fn opened(
        conn_id: u64,
        time_ms: u64,
        peer: SocketAddr,
        transport: Transport,
        sub_protocol: SubProtocol,
        info: &'a str,
    ) -> Event<'a> {
        Event {
            kind: EventKind::Opened,
            conn_id,
            time_ms,
            peer,
            transport,
            sub_protocol,
            code: None,
            reason: None,
            text: info,
        }
    }

    /// A connection closed with close status `code` (`None`: no close
    /// frame was exchanged) and `reason`.
    pub fn closed(
        conn_id: u64,
        time_ms: u64,
        peer: SocketAddr,
        transport: Transport,
        sub_protocol: SubProtocol,
        code: Option<u16>,
        reason: &'a str,
    ) -> Event<'a> {
        Event {
            kind: EventKind::Closed,
            conn_id,
            time_ms,
            peer,
            transport,
            sub_protocol,
            code,
            reason: None,
            text: reason,
        }
    }

    /// An opening handshake was refused for `reason`.
    pub fn rejected(
        conn_id: u64,
        time_ms: u64,
        peer: SocketAddr,
        transport: Transport,
        reason: HandshakeReason,
    ) -> Event<'a> {
        Event {
            kind: EventKind::Rejected,
            conn_id,
            time_ms,
            peer,
            transport,
            sub_protocol: SubProtocol::None,
            code: None,
            reason: Some(reason),
            text: "",
        }
    }
}

/// An event read back from a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// The core that recorded it.
    pub core: u32,
    /// Its sequence number on that core (from 0).
    pub seq: u64,
    pub kind: EventKind,
    pub conn_id: u64,
    pub time_ms: u64,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub sub_protocol: SubProtocol,
    pub code: Option<u16>,
    pub reason: Option<HandshakeReason>,
    pub text: InfoText,
}

#[inline]
fn cell(ring: &[AtomicU64], n: u64) -> &[AtomicU64] {
    let i = (n & u64::from(EVENT_CAPACITY - 1)) as usize;
    let start = EVENT_HEAD_WORDS + i * EVENT_CELL_WORDS;
    &ring[start..start + EVENT_CELL_WORDS]
}

/// Words of one core's event ring.
pub(crate) const fn ring_words() -> usize {
    EVENT_HEAD_WORDS + EVENT_CAPACITY as usize * EVENT_CELL_WORDS
}

/// Events ever written to this ring.
pub(crate) fn head(ring: &[AtomicU64]) -> u64 {
    ring[0].load(Ordering::Acquire)
}

/// Append an event (the ring's single writer only).
pub(crate) fn write(ring: &[AtomicU64], ev: &Event<'_>) {
    let head = &ring[0];
    let n = head.load(Ordering::Relaxed);
    let c = cell(ring, n);
    c[E_STAMP].store(n.wrapping_mul(2).wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    let (family, peer) = encode_addr(&ev.peer);
    let text = truncate_str(ev.text, EVENT_TEXT_CAP);
    let meta = u64::from(ev.kind as u8)
        | (u64::from(ev.transport as u8) << 8)
        | (u64::from(ev.sub_protocol as u8) << 16)
        | (u64::from(family) << 24)
        | (u64::from(ev.reason.map_or(0xFF, |r| r as u8)) << 32)
        | ((text.len() as u64) << 40)
        | (u64::from(ev.code.is_some()) << 48);
    c[E_META].store(meta, Ordering::Relaxed);
    c[E_CONN].store(ev.conn_id, Ordering::Relaxed);
    c[E_TIME].store(ev.time_ms, Ordering::Relaxed);
    store_bytes(&c[E_PEER..E_PEER + 2], &peer);
    let ports = u64::from(ev.peer.port()) | (u64::from(ev.code.unwrap_or(0)) << 16);
    c[E_PORTS].store(ports, Ordering::Relaxed);
    store_bytes(&c[E_TEXT..E_TEXT + TEXT_WORDS], text);
    c[E_STAMP].store(n.wrapping_mul(2).wrapping_add(2), Ordering::Release);
    head.store(n.wrapping_add(1), Ordering::Release);
}

/// Read up to `max` events from `*cursor` on, advancing the cursor past
/// every event read or lost. Returns how many events were lost (overwritten
/// before they could be read). A cursor beyond the head (a reader of a
/// previous region) is pulled back to the head.
pub(crate) fn read(
    ring: &[AtomicU64],
    core: u32,
    cursor: &mut u64,
    max: usize,
    out: &mut Vec<EventRecord>,
) -> u64 {
    let head = head(ring);
    if *cursor > head {
        *cursor = head;
    }
    let mut lost = 0;
    let cap = u64::from(EVENT_CAPACITY);
    if head - *cursor > cap {
        lost += head - cap - *cursor;
        *cursor = head - cap;
    }
    let mut taken = 0;
    while *cursor < head && taken < max {
        let n = *cursor;
        *cursor += 1;
        match read_cell(cell(ring, n), core, n) {
            Some(r) => {
                out.push(r);
                taken += 1;
            }
            None => lost += 1,
        }
    }
    lost
}

fn read_cell(c: &[AtomicU64], core: u32, n: u64) -> Option<EventRecord> {
    let want = n.wrapping_mul(2).wrapping_add(2);
    let s1 = c[E_STAMP].load(Ordering::Acquire);
    if s1 != want {
        return None;
    }
    let mut copy = [0u64; EVENT_CELL_WORDS];
    for (w, a) in copy.iter_mut().zip(c).skip(1) {
        *w = a.load(Ordering::Relaxed);
    }
    fence(Ordering::Acquire);
    if c[E_STAMP].load(Ordering::Relaxed) != s1 {
        return None;
    }
    decode(&copy, core, n)
}

fn decode(c: &[u64; EVENT_CELL_WORDS], core: u32, seq: u64) -> Option<EventRecord> {
    let meta = c[E_META];
    let byte = |shift: u32| (meta >> shift) as u8;
    let kind = EventKind::from_u8(byte(0))?;
    let transport = Transport::from_u8(byte(8))?;
    let sub_protocol = SubProtocol::from_u8(byte(16))?;
    let reason = HandshakeReason::from_u8(byte(32));
    let text_len = (byte(40) as usize).min(EVENT_TEXT_CAP);
    let ports = c[E_PORTS];
    let code = (byte(48) != 0).then_some((ports >> 16) as u16);
    let mut peer = [0u8; 16];
    load_bytes(&c[E_PEER..E_PEER + 2], &mut peer);
    let mut text = [0u8; EVENT_TEXT_CAP];
    load_bytes(&c[E_TEXT..E_TEXT + TEXT_WORDS], &mut text);
    Some(EventRecord {
        core,
        seq,
        kind,
        conn_id: c[E_CONN],
        time_ms: c[E_TIME],
        peer: decode_addr(byte(24), peer, ports as u16),
        transport,
        sub_protocol,
        code,
        reason: if kind == EventKind::Rejected {
            reason
        } else {
            None
        },
        text: InfoText::from_bytes(&text[..text_len]),
    })
}
