//! One connection as a worker holds it: socket, transport state, the protocol
//! engine in use, and the buffers that must outlive in-flight operations.

use super::bufring::BufRing;
use super::flow::{FlowWindow, OwedQueue};
use crate::config::{SubProtocol, Transport};
use crate::msrp::id_hash::IdBuildHasher;
use crate::msrp::relay::{MsrpConn, TID_LEN, Target, TxnId};
use crate::transport::TlsSession;
use crate::ws::session::WsSession;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which engine the connection's plaintext goes to.
pub enum Proto {
    /// Waiting for (the rest of) the HTTP upgrade request.
    Handshake,
    /// An established WebSocket.
    Ws(Box<WsConn>),
    /// MSRP over TCP or TLS (`msrp`/`msrps` listeners, outbound next hops).
    Msrp(Box<MsrpState>),
    /// Bytes are not interpreted (outbound connections before an engine
    /// claims them, rejected handshakes draining out).
    Raw,
}

pub struct WsConn {
    pub session: WsSession,
    pub sub_protocol: SubProtocol,
    /// The close status exchanged (the peer's if it sent one, else ours).
    pub close_code: Option<u16>,
    /// Why the session ended, for the event stream.
    pub close_reason: &'static str,
    /// The relay engine of an `msrp` sub-protocol session (RFC 7977).
    pub msrp: Option<Box<MsrpState>>,
}

/// The reactor's side of one MSRP connection: the engine's connection
/// state, the forwarded chunk being assembled and flow-control credit.
pub struct MsrpState {
    pub conn: MsrpConn,
    /// A chunk being forwarded: the rewritten head and the body so far,
    /// queued to its target whole once its end-line is seen (a target
    /// must never see two chunks interleaved). The engine bounds its size
    /// (re-chunking, RFC 4976 §6.6).
    pub fwd: Option<Forward>,
    /// What this connection's chunks hold in other connections' output.
    pub window: Arc<FlowWindow>,
    /// Chunks of other connections in this one's output.
    pub owed: OwedQueue,
    /// Outbound connection still connecting: transactions queued on it,
    /// failed with a REPORT if the connect fails.
    pub waiting: Vec<TxnId>,
    /// Other cores' transactions queued or written here, not yet answered.
    pub handed_over: HandedOver,
    /// MSRP over WebSocket, streamed: bytes of the message being received
    /// that the engine has not taken yet (a line cut by the end of a
    /// read), presented again in front of the message's next piece.
    pub ws_carry: Vec<u8>,
}

pub struct Forward {
    pub target: Target,
    /// Length of the rewritten head at the start of `frame`.
    pub head_len: usize,
    pub frame: Vec<u8>,
    pub txn: Option<TxnId>,
    /// Body bytes of the input being handled, not copied (yet) and not
    /// held: a range of that input and where it starts in the provided
    /// buffer being read. Only while nothing of the body is in `frame`;
    /// it follows `segs`. Before that input goes away it moves to `segs`
    /// (held, or copied when small), unless the chunk ends first.
    pub pending: Option<(std::ops::Range<usize>, u32)>,
    /// The body so far, from earlier inputs, where it lies: provided
    /// buffers (held) and small copies (a held partial frame's bytes).
    /// Only while nothing of the body is in `frame`.
    pub segs: BodySegs,
    /// The worker watches how long `segs` holds provided buffers (a sender
    /// that stops mid-chunk must not pin them).
    pub watched: bool,
    /// The chunk comes whole from a WebSocket text message: UTF-8 (its
    /// WebSocket target sends it as text without checking it again).
    pub text: bool,
}

/// Segments a forwarded chunk's body may have (an iovec each); beyond,
/// the rest of the body is copied.
pub const MAX_SEGS: usize = 6;

/// A forwarded chunk's body as a short list of pieces, in order: bytes
/// left in provided buffers ([`Piece::Ring`], one hold each) and owned
/// copies. Inline (no allocation per chunk); an owned piece that follows
/// an owned piece is merged into it, and a ring piece that continues the
/// last one in the same buffer extends it (no second hold).
pub struct BodySegs {
    segs: [Piece; MAX_SEGS],
    n: usize,
}

impl Default for BodySegs {
    fn default() -> BodySegs {
        BodySegs {
            segs: std::array::from_fn(|_| Piece::Owned(Vec::new())),
            n: 0,
        }
    }
}

impl BodySegs {
    pub fn as_slice(&self) -> &[Piece] {
        self.segs.get(..self.n).unwrap_or(&[])
    }

    pub fn as_mut_slice(&mut self) -> &mut [Piece] {
        self.segs.get_mut(..self.n).unwrap_or(&mut [])
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes in all segments.
    pub fn len(&self) -> usize {
        self.as_slice().iter().map(Piece::len).sum()
    }

    /// Bytes left in provided buffers.
    pub fn ring_len(&self) -> usize {
        self.as_slice()
            .iter()
            .filter(|p| p.is_ring())
            .map(Piece::len)
            .sum()
    }

    pub fn has_ring(&self) -> bool {
        self.as_slice().iter().any(Piece::is_ring)
    }

    /// Append `len` bytes at `off` of provided buffer `bid` of core `core`: `Some(true)`
    /// when that is a new segment (the caller takes a hold on `bid` for
    /// it), `Some(false)` when it extends the last one, `None` when the
    /// list is full (the caller copies the bytes instead). A new ring
    /// segment always leaves room for an owned one after it, so
    /// [`BodySegs::push_owned`] cannot fail.
    pub fn push_ring(&mut self, core: u8, bid: u16, off: u32, len: u32) -> Option<bool> {
        if let Some(Piece::Ring {
            core: c,
            bid: b,
            off: o,
            len: l,
        }) = self.as_mut_slice().last_mut()
            && *c == core
            && *b == bid
            && o.checked_add(*l) == Some(off)
        {
            *l = l.checked_add(len)?;
            return Some(false);
        }
        if self.n + 2 > MAX_SEGS {
            return None;
        }
        self.segs[self.n] = Piece::Ring {
            core,
            bid,
            off,
            len,
        };
        self.n += 1;
        Some(true)
    }

    /// Append a copy of `bytes`, behind the last owned segment or in a
    /// new one (its buffer from `fresh`).
    pub fn push_owned(&mut self, bytes: &[u8], fresh: impl FnOnce() -> Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        if let Some(Piece::Owned(b)) = self.as_mut_slice().last_mut() {
            b.extend_from_slice(bytes);
            return;
        }
        // A ring segment leaves room for this one (push_ring); an empty
        // list has room.
        let i = self.n.min(MAX_SEGS - 1);
        let mut b = fresh();
        b.extend_from_slice(bytes);
        self.segs[i] = Piece::Owned(b);
        self.n = i + 1;
    }

    /// Take every segment out, leaving the list empty.
    pub fn take(&mut self) -> impl Iterator<Item = Piece> + '_ {
        let n = std::mem::replace(&mut self.n, 0);
        self.segs
            .iter_mut()
            .take(n)
            .map(|p| std::mem::replace(p, Piece::Owned(Vec::new())))
    }
}

/// A piece of queued output (plain TCP only).
pub enum Piece {
    Owned(Vec<u8>),
    /// A forwarded chunk's body where it was received: `len` bytes at `off`
    /// of provided buffer `bid` of core `core` (this one's, or another's
    /// when the chunk was handed over), which the piece holds
    /// ([`super::bufring::BufRing::hold`]). Whoever drops the piece
    /// releases the hold, exactly once
    /// ([`super::bufring::BufRing::release`]).
    Ring {
        core: u8,
        bid: u16,
        off: u32,
        len: u32,
    },
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Owned(b) => b.len(),
            Piece::Ring { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_ring(&self) -> bool {
        matches!(self, Piece::Ring { .. })
    }
}

impl MsrpState {
    /// `handed_over` counts the core's [`HandedOver`] entries.
    pub fn new(conn: MsrpConn, handed_over: Arc<AtomicUsize>) -> MsrpState {
        MsrpState {
            window: FlowWindow::new(conn.id),
            owed: OwedQueue::default(),
            conn,
            fwd: None,
            waiting: Vec::new(),
            handed_over: HandedOver::new(handed_over),
            ws_carry: Vec::new(),
        }
    }
}

/// Most transactions of other cores one connection tracks, and all of one
/// core's connections together: enough for a fan-in of many pipelined
/// senders (ten senders with 32 SENDs in flight each already pass 256)
/// while one core's worst case stays a few MiB. Past either bound, the
/// rest wait for their transaction timeout.
pub const HANDED_OVER_MAX: usize = 4096;
pub const HANDED_OVER_CORE_MAX: usize = 65_536;

/// The transactions of other cores a client connection of this core was
/// handed (queued or written to it) and has not answered. Their pending
/// state lives on the sender's core, which cannot see this connection: if
/// it is lost first, this core tells theirs at once, so the failure REPORT
/// goes out now rather than at the transaction timeout (RFC 4976 §6.4.1
/// ¶3). A response on the way back to its core ends its entry. Bounded:
/// entries no response ends (`Failure-Report: partial` succeeds silently)
/// are swept once past their transaction timeout, when the sender's core
/// has forgotten them anyway.
#[derive(Debug, Default)]
pub struct HandedOver {
    map: HashMap<TxnId, Awaited, IdBuildHasher>,
    /// No sweep before this (s): none can free anything until the oldest
    /// entry expires.
    next_sweep_s: u32,
    /// Entries of every connection of this core (shared with them).
    core_total: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy)]
struct Awaited {
    core: u8,
    /// Worker seconds after which the sender's core has timed it out.
    expires_s: u32,
}

impl HandedOver {
    /// Counted against the core's total `core_total`.
    pub fn new(core_total: Arc<AtomicUsize>) -> HandedOver {
        HandedOver {
            map: HashMap::default(),
            next_sweep_s: 0,
            core_total,
        }
    }

    /// Transaction `txn` of `core` was queued here at `now_ms`; it times out
    /// there `timeout_ms` later. Allocation-free once the map has grown.
    pub fn insert(&mut self, txn: TxnId, core: u8, now_ms: u64, timeout_ms: u64) {
        let now_s = (now_ms / 1000) as u32;
        let full = |h: &HandedOver| {
            h.map.len() >= HANDED_OVER_MAX
                || h.core_total.load(Ordering::Relaxed) >= HANDED_OVER_CORE_MAX
        };
        if full(self) {
            if now_s < self.next_sweep_s {
                return;
            }
            let before = self.map.len();
            self.map.retain(|_, a| a.expires_s > now_s);
            self.forgot(before - self.map.len());
            self.next_sweep_s = self.map.values().map(|a| a.expires_s).min().unwrap_or(0);
            if full(self) {
                return;
            }
        }
        // Rounded up: swept no earlier than the sender's core forgets it.
        let expires_s = (now_ms.saturating_add(timeout_ms) / 1000 + 1) as u32;
        if self.map.insert(txn, Awaited { core, expires_s }).is_none() {
            self.core_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn forgot(&self, n: usize) {
        if n > 0 {
            self.core_total.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// `response` (a complete response frame, `MSRP <tid> <code> …`) is
    /// on its way to its core: its transaction is answered.
    pub fn answered(&mut self, response: &[u8]) {
        if self.map.is_empty() {
            return;
        }
        let at = b"MSRP ".len();
        let tid = response
            .get(at..at + TID_LEN)
            .filter(|_| response.get(at + TID_LEN) == Some(&b' '))
            .and_then(|t| TxnId::try_from(t).ok());
        if let Some(t) = tid
            && self.map.remove(&t).is_some()
        {
            self.forgot(1);
        }
    }

    /// The connection is lost: every unanswered transaction and its core.
    pub fn take(&mut self) -> impl Iterator<Item = (u8, TxnId)> + '_ {
        self.forgot(self.map.len());
        self.map.drain().map(|(t, a)| (a.core, t))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Drop for HandedOver {
    fn drop(&mut self) {
        self.forgot(self.map.len());
    }
}

/// Where the connection is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Normal operation.
    Open,
    /// Close once pending output has been sent (rejections, close handshake).
    AfterFlush,
    /// Close now, dropping pending output (peer gone, fatal error).
    Abort,
}

pub struct Conn {
    pub fd: RawFd,
    pub generation: u32,
    /// Stable id shown in dumps and used by management commands.
    pub id: u64,
    pub transport: Transport,
    pub listener: u16,
    pub outbound: bool,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<Box<TlsSession>>,
    pub proto: Proto,
    /// Bytes of an incomplete handshake request or frame, plaintext.
    pub partial: Vec<u8>,
    /// Ciphertext received but not yet accepted by rustls.
    pub tls_pending: Vec<u8>,
    /// Plaintext produced by the engines, not yet handed to the socket.
    pub out: Vec<u8>,
    /// Records rustls produced on its own (handshake, alerts).
    pub wire: Vec<u8>,
    /// Complete MSRP frames queued ahead of `out` (plain TCP only): a
    /// forwarded chunk behind earlier output is queued as its own buffer
    /// instead of being copied after it, a chunk's body may stay in the
    /// provided buffer it was received in, and everything leaves in one
    /// writev. `out` always holds the newest bytes.
    pub chain: Vec<Piece>,
    /// The buffer owned by the in-flight send, and how much of it has gone
    /// (of `inflight_chain` when that is not empty: a writev).
    pub inflight: Vec<u8>,
    pub inflight_chain: Vec<Piece>,
    pub inflight_sent: usize,
    /// The in-flight writev's iovecs: the kernel reads them until it
    /// completes.
    pub iov: Vec<libc::iovec>,
    pub sending: bool,
    pub recv_armed: bool,
    pub cancel_sent: bool,
    /// Reading is paused until the peer takes the output already queued.
    pub paused: bool,
    /// Reading is paused until the connections this one relays to take
    /// its chunks (MSRP flow control, [`super::flow`]).
    pub relay_paused: bool,
    pub connecting: bool,
    /// The socket is also in the ring's fixed-file table, at the
    /// connection's slot index: its recv and sends skip the per-request
    /// file lookup and reference count.
    pub fixed: bool,
    pub teardown: Teardown,
    /// Deadline registered in the timer wheel (0 = none).
    pub timer_at: u64,
    pub accepted_ms: u64,
    /// The same instant in µs (the handshake-duration histogram has
    /// sub-millisecond buckets).
    pub accepted_us: u64,
    pub created_unix_ms: u64,
    pub last_used_unix_ms: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Queued in the worker's flush list.
    pub dirty: bool,
    /// In the worker's list of connections whose output holds provided
    /// buffers (watched for a peer that stopped reading).
    pub pin_watch: bool,
    /// Traffic not yet published in the region's connection slot.
    pub slot_stale: bool,
}

impl Conn {
    /// A connection in its first state: no engine yet (`Proto::Raw`), no
    /// buffers, nothing in flight. Callers set what differs (TLS, listener,
    /// outbound).
    pub fn new(
        fd: RawFd,
        generation: u32,
        transport: Transport,
        peer: SocketAddr,
        local: SocketAddr,
        now_ms: u64,
        unix_ms: u64,
    ) -> Conn {
        Conn {
            fd,
            generation,
            id: 0,
            transport,
            listener: u16::MAX,
            outbound: false,
            peer,
            local,
            tls: None,
            proto: Proto::Raw,
            partial: Vec::new(),
            tls_pending: Vec::new(),
            out: Vec::new(),
            wire: Vec::new(),
            chain: Vec::new(),
            inflight: Vec::new(),
            inflight_chain: Vec::new(),
            inflight_sent: 0,
            iov: Vec::new(),
            sending: false,
            recv_armed: false,
            cancel_sent: false,
            paused: false,
            relay_paused: false,
            connecting: false,
            fixed: false,
            teardown: Teardown::Open,
            timer_at: 0,
            accepted_ms: now_ms,
            accepted_us: now_ms.saturating_mul(1000),
            created_unix_ms: unix_ms,
            last_used_unix_ms: unix_ms,
            frames_in: 0,
            frames_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            dirty: false,
            pin_watch: false,
            slot_stale: false,
        }
    }

    /// Something can be sent now. Plaintext waits while an outbound TLS
    /// handshake is in progress (rustls would have to buffer it).
    pub fn has_output(&self) -> bool {
        !self.wire.is_empty()
            || !self.chain.is_empty()
            || (!self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.is_handshaking()))
    }

    /// Bytes produced for this peer and not yet acknowledged by the kernel.
    pub fn pending_output(&self) -> usize {
        let chained: usize = self.chain.iter().map(Piece::len).sum();
        self.out.len()
            + self.wire.len()
            + chained
            + self.inflight_len().saturating_sub(self.inflight_sent)
    }

    /// Bytes the in-flight send carries in all.
    pub fn inflight_len(&self) -> usize {
        if self.inflight_chain.is_empty() {
            self.inflight.len()
        } else {
            self.inflight_chain.iter().map(Piece::len).sum()
        }
    }

    /// The in-flight writev's iovecs for what has not gone yet; ring
    /// pieces point into `ring`'s (held) buffers.
    pub fn fill_iov(&mut self, ring: &BufRing) {
        self.iov.clear();
        let mut skip = self.inflight_sent;
        for b in &self.inflight_chain {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let (p, len) = match b {
                Piece::Owned(v) => (v.as_ptr(), v.len()),
                Piece::Ring {
                    core,
                    bid,
                    off,
                    len,
                } => ring.held_ptr(*core, *bid, *off, *len),
            };
            self.iov.push(libc::iovec {
                iov_base: p.wrapping_add(skip) as *mut libc::c_void,
                iov_len: len - skip,
            });
            skip = 0;
        }
    }

    /// Reading is paused, for either reason.
    pub fn read_paused(&self) -> bool {
        self.paused || self.relay_paused
    }

    /// The relay state of an MSRP connection (TCP/TLS or WebSocket).
    pub fn msrp_mut(&mut self) -> Option<&mut MsrpState> {
        match &mut self.proto {
            Proto::Msrp(m) => Some(m),
            Proto::Ws(ws) => ws.msrp.as_deref_mut(),
            _ => None,
        }
    }
}

/// A slab of connections indexed by slot, with a generation per slot so
/// completions for a previous occupant are recognised and ignored.
pub struct ConnTable {
    slots: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl ConnTable {
    pub fn new() -> ConnTable {
        ConnTable {
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserve a slot: returns (index, generation) for the new occupant.
    pub fn reserve(&mut self) -> (u32, u32) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let g = &mut self.generations[idx as usize];
        *g = g.wrapping_add(1) & super::token::GENERATION_MASK;
        (idx, *g)
    }

    pub fn insert(&mut self, idx: u32, conn: Conn) {
        self.slots[idx as usize] = Some(conn);
        self.len += 1;
    }

    /// The connection at `idx` if it is still generation `generation`.
    pub fn get_mut(&mut self, idx: u32, generation: u32) -> Option<&mut Conn> {
        match self.slots.get_mut(idx as usize) {
            Some(Some(c)) if c.generation == generation => Some(c),
            _ => None,
        }
    }

    pub fn get_any(&mut self, idx: u32) -> Option<&mut Conn> {
        self.slots.get_mut(idx as usize).and_then(|s| s.as_mut())
    }

    pub fn remove(&mut self, idx: u32) -> Option<Conn> {
        let c = self.slots.get_mut(idx as usize)?.take()?;
        self.free.push(idx);
        self.len -= 1;
        Some(c)
    }

    /// The index of the first live connection matching `pred`.
    pub fn position(&self, mut pred: impl FnMut(&Conn) -> bool) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(&mut pred))
            .map(|i| i as u32)
    }

    /// Indices of live connections.
    pub fn indices(&self) -> Vec<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
            .collect()
    }
}

impl Default for ConnTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{BodySegs, MAX_SEGS, Piece};

    #[test]
    fn body_segments_merge_and_are_bounded() {
        let mut s = BodySegs::default();
        assert!(s.is_empty());
        // A new ring segment needs a hold; its continuation does not.
        assert_eq!(s.push_ring(0, 1, 100, 50), Some(true));
        assert_eq!(s.push_ring(0, 1, 150, 50), Some(false));
        // Not contiguous, or another buffer: new segments.
        assert_eq!(s.push_ring(0, 1, 300, 10), Some(true));
        s.push_owned(b"abc", Vec::new);
        s.push_owned(b"de", Vec::new);
        assert_eq!(s.as_slice().len(), 3);
        assert_eq!(s.len(), 100 + 10 + 5);
        assert_eq!(s.ring_len(), 110);
        // Ring segments stop one short of the bound, so copies can follow.
        let mut bid = 2;
        while s.push_ring(0, bid, 0, 1) == Some(true) {
            bid += 1;
        }
        assert_eq!(s.as_slice().len(), MAX_SEGS - 1);
        assert_eq!(s.push_ring(0, bid, 0, 1), None);
        s.push_owned(b"xyz", Vec::new);
        s.push_owned(b"!", Vec::new);
        assert_eq!(s.as_slice().len(), MAX_SEGS);
        assert!(matches!(s.as_slice().last(), Some(Piece::Owned(b)) if b == b"xyz!"));
        // A full list still extends its last ring piece? No: owned last.
        assert_eq!(s.push_ring(0, bid - 1, 1, 1), None);
        let taken: Vec<Piece> = s.take().collect();
        assert_eq!(taken.len(), MAX_SEGS);
        assert!(s.is_empty() && s.as_slice().is_empty() && !s.has_ring());
    }

    use super::*;

    /// Idle connections are the bulk of an edge's memory: keep the
    /// per-connection state small (the bench measures RSS per connection).
    #[test]
    fn connection_state_stays_small() {
        let conn = std::mem::size_of::<Option<Conn>>();
        let ws = std::mem::size_of::<WsConn>();
        eprintln!("Option<Conn> = {conn} B, WsConn = {ws} B");
        assert!(conn <= 512, "Option<Conn> grew to {conn} B");
        assert!(ws <= 512, "WsConn grew to {ws} B");
    }

    fn tid(n: usize) -> TxnId {
        let mut t = [b'0'; TID_LEN];
        t[1] = b'1';
        for (i, b) in format!("{n:016x}").bytes().enumerate() {
            t[2 + i] = b;
        }
        t
    }

    fn response(t: &TxnId, code: u16) -> Vec<u8> {
        let t = std::str::from_utf8(t).expect("ascii");
        format!("MSRP {t} {code} OK\r\nTo-Path: msrp://a/x;tcp\r\n-------{t}$\r\n").into_bytes()
    }

    #[test]
    fn handed_over_ends_on_response_and_is_taken_on_loss() {
        let mut h = HandedOver::default();
        for n in 0..3 {
            h.insert(tid(n), 1, 1_000, 30_000);
        }
        h.answered(&response(&tid(1), 200));
        // An error response ends it too (the origin reports that code).
        h.answered(&response(&tid(2), 415));
        // Not ours, or not a response: nothing happens.
        h.answered(&response(&tid(9), 200));
        h.answered(b"MSRP x");
        assert_eq!(h.len(), 1);
        let lost: Vec<_> = h.take().collect();
        assert_eq!(lost, vec![(1, tid(0))]);
        assert!(h.is_empty());
    }

    #[test]
    fn handed_over_counts_against_a_core_budget() {
        let total = Arc::new(AtomicUsize::new(0));
        let per = HANDED_OVER_MAX;
        let mut conns: Vec<HandedOver> = (0..HANDED_OVER_CORE_MAX / per)
            .map(|c| {
                let mut h = HandedOver::new(total.clone());
                for n in 0..per {
                    h.insert(tid(c * per + n), 0, 1_000, 30_000);
                }
                h
            })
            .collect();
        assert_eq!(total.load(Ordering::Relaxed), HANDED_OVER_CORE_MAX);
        // The core is full: a further connection tracks nothing ...
        let mut late = HandedOver::new(total.clone());
        late.insert(tid(1 << 20), 0, 1_000, 30_000);
        assert!(late.is_empty());
        // ... until others give entries back: answered, taken on loss, or
        // gone with their connection.
        conns[0].answered(&response(&tid(0), 200));
        assert_eq!(total.load(Ordering::Relaxed), HANDED_OVER_CORE_MAX - 1);
        assert_eq!(conns[1].take().count(), per);
        drop(conns.pop());
        assert_eq!(
            total.load(Ordering::Relaxed),
            HANDED_OVER_CORE_MAX - 1 - 2 * per
        );
        late.insert(tid(1 << 20), 0, 1_000, 30_000);
        assert_eq!(late.len(), 1);
        let sum: usize = conns.iter().map(HandedOver::len).sum::<usize>() + late.len();
        assert_eq!(total.load(Ordering::Relaxed), sum);
    }

    #[test]
    fn handed_over_is_bounded_and_sweeps_expired_entries() {
        let mut h = HandedOver::default();
        // `partial` SENDs nobody answers fill it ...
        for n in 0..HANDED_OVER_MAX + 10 {
            h.insert(tid(n), 0, 1_000, 30_000);
        }
        assert_eq!(h.len(), HANDED_OVER_MAX);
        let cap = h.map.capacity();
        // ... the excess is not tracked until they expire ...
        h.insert(tid(100_000), 0, 20_000, 30_000);
        assert_eq!(h.len(), HANDED_OVER_MAX);
        assert!(h.take().all(|(_, t)| t != tid(100_000)));
        for n in 0..HANDED_OVER_MAX {
            h.insert(tid(n), 0, 1_000, 30_000);
        }
        // ... and then make room, without growing the map.
        h.insert(tid(100_001), 0, 33_000, 30_000);
        assert_eq!(h.len(), 1);
        assert!(h.map.capacity() <= cap, "the map grew");
        assert_eq!(h.take().next(), Some((0, tid(100_001))));
    }
}
