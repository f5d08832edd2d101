//! Glue between the sans-IO MSRP relay engine ([`crate::msrp::relay`]) and
//! the reactor: building the engine's environment, carrying out the
//! actions that concern the connection being read, and collecting those
//! that concern other connections or cores as [`Effect`]s the worker
//! applies once the input is handled.
//!
//! Forwarded chunks: the engine hands the rewritten head, body ranges of
//! the very bytes it was given and the end-line; a target never sees two
//! chunks interleaved (a chunk is queued whole once its end-line is seen).
//!
//! - The common relay case — a chunk whose body (≥ 1 KiB in all) lies in
//!   provided buffers (the one being read, and those before it when the
//!   body began there), for a TCP MSRP connection (a client or an open
//!   outbound connection to the next hop) or a WebSocket MSRP session
//!   that keeps up with its output — has its body sent without a copy.
//!   A client of another core gets the head through that core's inbox
//!   with the body's pieces, which name this core's buffers (their memory
//!   outlives every worker, [`super::bufring::RingTable`]); that core
//!   sends from them, or copies them when its target cannot take them,
//!   and gives each hold back through this core's release queue. The
//!   target queues the head, the
//!   body *by reference* ([`Piece::Ring`], one piece per buffer) and the
//!   end-line, and they leave in one writev with whatever is queued around
//!   them. On a WebSocket the frame header comes first (one message per
//!   chunk, RFC 7977 §5.1; text when the whole chunk is UTF-8, validated
//!   where the body lies) and the frame is queued whole, so control frames
//!   follow it, never inside it. A body that spans two reads keeps, as a
//!   small copy, the few bytes the reactor held between them (an end-line
//!   candidate, or a short tail); its pieces are bounded
//!   ([`super::conn::MAX_SEGS`]: beyond, the rest is copied). A WebSocket
//!   sender's bodies go the same way: its messages are streamed
//!   ([`feed_ws_piece`]), each frame's payload unmasked in place in the
//!   provided buffers it arrives in and parsed there, so only a frame
//!   header, a control frame or an MSRP line cut by a read is ever held
//!   between reads.
//!   Provided buffers are held ([`super::bufring`]) until every piece
//!   referring to them is sent or dropped; a worker holds at most a
//!   quarter of its buffers. A send that goes short, or makes no progress
//!   for 100 ms (the peer stopped reading: it is cancelled), copies the
//!   bodies out and releases them, so a slow peer pins no receive buffer;
//!   likewise a sender whose chunk has held a buffer for 100 ms waiting
//!   for the rest of its body. A TLS target past its handshake takes the
//!   chunk the same way but encrypts it at once, reading the body where
//!   it lies, and the buffers go back then (nothing stays held).
//! - A TLS target seals every frame of 1 KiB or more into records of its
//!   own buffer as it is queued (the plaintext output before it shares
//!   them), so neither its plaintext output nor its ciphertext grows by
//!   reallocation.
//! - Otherwise (a TLS sender, a next hop still connecting, a small
//!   body, a slow target, the
//!   hold cap reached when the body's buffer was read) the chunk — or,
//!   when the cap is reached midway, the rest of its body — is copied:
//!   assembled into one owned frame (head + a copy of the body +
//!   end-line), which moves to another core through its inbox without a
//!   further copy and is swapped (not copied) into an idle target's output
//!   buffer; behind earlier output, a frame of at least 1 KiB on a plain TCP
//!   target is queued as its own buffer and leaves in the same writev.
//!
//! The engine bounds a frame's size: larger SEND chunks are re-chunked (RFC
//! 4976 §6.6), other large chunks refused (413). Each forwarded frame is
//! charged (its full length, however it is queued) to its sender's flow
//! window ([`super::flow`]) until its target has written it.

use super::bufring::BufRing;
use super::conn::{BodySegs, Conn, Forward, MsrpState, Piece, Proto, Teardown};
use super::flow::FlowWindow;
use super::stats::WorkerStats;
use super::worker::BufPool;
use super::{Shared, worker};
use crate::msrp::auth::UsePath;
use crate::msrp::relay::{Action, EndLine, Env, MsrpConn, RelayCore, Target, TxnId};
use crate::transport::TlsSession;
use crate::ws::frame::{self, OpCode};
use crate::ws::session::{MessageKind, MessagePiece, State};
use crate::ws::utf8::Utf8Validator;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

/// Work for connections other than the one being read, or other cores.
pub enum Effect {
    /// A forwarded chunk, complete: `frame`, or `frame` (the head) then
    /// `ring` (the body where it was received, and the end-line).
    Deliver {
        target: Target,
        frame: Vec<u8>,
        ring: Option<RingBody>,
        txn: Option<TxnId>,
        from_conn: u64,
        /// The sender's window, charged with the chunk's length.
        window: Arc<FlowWindow>,
        /// Monotonic µs when the chunk's last byte was read.
        in_us: u64,
    },
    /// A forwarded chunk's body that will not be sent (the chunk was
    /// aborted): its holds are released.
    Drop(BodySegs),
    /// A complete frame for connection `conn` of this core.
    SendTo { conn: u64, frame: Vec<u8> },
    /// A response for a transaction of another core.
    ToCore { core: u8, frame: Vec<u8> },
}

/// The engine and the worker's collections, borrowed for one input.
pub struct MsrpCtx<'a> {
    pub relay: &'a mut RelayCore,
    pub actions: &'a mut Vec<Action>,
    pub effects: &'a mut Vec<Effect>,
    /// Monotonic µs of the completion being handled.
    pub now_us: u64,
    /// The provided buffer being read, when forwarded bodies may stay in
    /// it (plain TCP MSRP input, and the worker may hold another buffer).
    pub ring: Option<RingInput>,
    /// Buffers for copies of a body's bytes.
    pub(super) pool: &'a mut BufPool,
}

/// A forwarded chunk's body where it was received: its pieces (provided
/// buffers, one hold each, and small owned copies), then `end`.
pub struct RingBody {
    pub segs: BodySegs,
    pub end: EndLine,
    /// Head, body and end-line are known UTF-8 (see [`Forward::text`]).
    pub utf8: bool,
}

impl RingBody {
    /// Bytes of the body.
    pub fn body_len(&self) -> usize {
        self.segs.len()
    }

    /// Bytes after the head: body and end-line.
    pub fn len(&self) -> usize {
        self.body_len() + self.end.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The provided buffer an input is read from, and the holds forwarded
/// bodies took on it (the worker takes them before the reader is done).
pub struct RingInput {
    /// The core whose buffer this is.
    pub core: u8,
    pub bid: u16,
    addr: usize,
    len: usize,
    /// While the engine reads held bytes with bytes of this buffer appended
    /// behind them: the spliced bytes' address and length, how many of
    /// them were held, and where in the buffer the copied rest starts.
    /// (Plain TCP: a held partial frame and the buffer's first bytes;
    /// WebSocket, streamed: a line carried over and a piece's first bytes,
    /// unmasked in the buffer before they were copied.)
    splice: Option<(usize, usize, usize, usize)>,
    pub holds: u32,
}

impl RingInput {
    /// `data` is the start of buffer `bid` of core `core` as received.
    pub fn new(core: u8, bid: u16, data: &[u8]) -> RingInput {
        RingInput {
            core,
            bid,
            addr: data.as_ptr() as usize,
            len: data.len(),
            splice: None,
            holds: 0,
        }
    }

    /// The engine is about to read `spliced`: `held` bytes of a partial
    /// frame then a copy of this buffer's first bytes (`None`: it reads
    /// the buffer itself again).
    pub fn set_splice(&mut self, spliced: Option<(&[u8], usize)>) {
        self.set_splice_at(spliced.map(|(d, held)| (d, held, 0)));
    }

    /// As [`Self::set_splice`], with the copied bytes starting at offset
    /// `from` of the buffer.
    pub fn set_splice_at(&mut self, spliced: Option<(&[u8], usize, usize)>) {
        self.splice = spliced.map(|(d, held, from)| (d.as_ptr() as usize, d.len(), held, from));
    }

    /// Where `bytes` starts in this buffer, if it lies in it.
    pub fn offset_of(&self, bytes: &[u8]) -> Option<usize> {
        let a = bytes.as_ptr() as usize;
        (a >= self.addr && a + bytes.len() <= self.addr + self.len).then(|| a - self.addr)
    }

    /// Where `data[range]` lies: `Some((split, off))` when
    /// `data[split..range.end]` is at `off` of the buffer (and the bytes
    /// before `split` are not: held partial-frame bytes, to be copied);
    /// `None` when none of it is in the buffer.
    fn locate(&self, data: &[u8], range: &std::ops::Range<usize>) -> Option<(usize, usize)> {
        let a = data.as_ptr() as usize;
        if range.start > range.end || range.end > data.len() {
            return None;
        }
        if a >= self.addr && a + data.len() <= self.addr + self.len {
            return Some((range.start, a - self.addr + range.start));
        }
        let (pa, plen, held, from) = self.splice?;
        if a < pa || a + data.len() > pa + plen {
            return None;
        }
        // Byte i of `data` is byte `base + i` of the spliced bytes.
        let base = a - pa;
        let split = held.saturating_sub(base).clamp(range.start, range.end);
        // All of the range may be held bytes: then no offset is used.
        let off = from + (base + split).saturating_sub(held);
        (off + (range.end - split) <= self.len).then_some((split, off))
    }
}

/// What carrying out the actions of one input produced for its connection.
#[derive(Default)]
pub struct Outcome {
    pub close: Option<&'static str>,
    pub frames_in: u64,
    pub frames_out: u64,
}

impl Outcome {
    /// Adds what a later step of the same input produced.
    fn add(&mut self, o: Outcome) {
        self.close = self.close.or(o.close);
        self.frames_in += o.frames_in;
        self.frames_out += o.frames_out;
    }
}

/// Cryptographically secure randomness for session and transaction ids:
/// ChaCha12 per worker thread, seeded from the OS once (a getrandom
/// syscall per transaction id was 5 % of a relayed message's CPU).
pub fn fill_random(buf: &mut [u8]) {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    thread_local! {
        static RNG: std::cell::RefCell<rand_chacha::ChaCha12Rng> = {
            let mut seed = [0u8; 32];
            if getrandom::fill(&mut seed).is_err() {
                // getrandom does not fail on Linux ≥ 3.17; should it, ids
                // stay unique (not unpredictable): time and thread seeded.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                seed[..16].copy_from_slice(&t.to_le_bytes());
                let id = format!("{:?}", std::thread::current().id());
                for (s, b) in seed[16..].iter_mut().zip(id.bytes()) {
                    *s = b;
                }
            }
            std::cell::RefCell::new(rand_chacha::ChaCha12Rng::from_seed(seed))
        };
    }
    RNG.with(|r| r.borrow_mut().fill_bytes(buf));
}

/// The engine's environment: credentials, nonces, worker time, randomness.
pub fn env<'a>(shared: &'a Shared, now_ms: u64, rng: &'a mut dyn FnMut(&mut [u8])) -> Env<'a> {
    Env {
        store: &shared.users,
        nonces: &shared.msrp_nonces,
        now_ms,
        // From the caller's clock reading, not a new one (an environment
        // is built per WebSocket message).
        unix_secs: shared.mono_to_unix_ms(now_ms) / 1000,
        rng,
    }
}

/// This relay's Use-Path for a connection: `[msrp] use_path_addr`, else
/// the address the connection arrived on.
pub fn use_path(shared: &Shared, local: SocketAddr, secure: bool, websocket: bool) -> UsePath {
    UsePath {
        secure,
        host_port: shared
            .config
            .msrp
            .use_path_addr
            .clone()
            .unwrap_or_else(|| local.to_string()),
        transport: if websocket { "ws" } else { "tcp" },
    }
}

/// A new relay connection state for connection `idx`/`generation`.
pub fn new_state(
    shared: &Shared,
    core: u32,
    idx: u32,
    generation: u32,
    c: &Conn,
    websocket: bool,
) -> Box<MsrpState> {
    let secure = c.transport.is_tls();
    let conn = MsrpConn::new(
        worker::conn_id(core, idx, generation),
        shared.relay_config.limits,
        use_path(shared, c.local, secure, websocket),
        c.peer.to_string(),
        websocket,
    );
    let handed_over = shared
        .handed_over
        .get(core as usize)
        .cloned()
        .unwrap_or_default();
    Box::new(MsrpState::new(conn, handed_over))
}

/// One MSRP frame on a WebSocket: one message (RFC 7977 §5.3), text when
/// it is UTF-8 (RFC 6455 requires it of text messages), else binary.
pub fn write_ws(out: &mut Vec<u8>, msrp: &[u8]) -> bool {
    let text = simdutf8::basic::from_utf8(msrp).is_ok();
    frame::write_frame(out, if text { OpCode::Text } else { OpCode::Binary }, msrp);
    text
}

fn write_frame(out: &mut Vec<u8>, msrp: &[u8], websocket: bool, stats: &mut WorkerStats) {
    if websocket {
        if write_ws(out, msrp) {
            stats.data_frames_out(0, 1);
        } else {
            stats.data_frames_out(1, 0);
        }
    } else {
        out.extend_from_slice(msrp);
    }
}

/// Frames at least this large are never copied behind earlier output.
const CHAIN_MIN: usize = 1024;

/// Queue a complete frame on connection `c`. `false` when it cannot take
/// it (closing, not an MSRP connection). A forwarded chunk comes with its
/// sender's window: `c` owes that credit until the chunk is written. An
/// emptied buffer the frame displaced goes to `spare` (for reuse, not
/// freed).
pub(super) fn queue_frame(
    c: &mut Conn,
    frame: Vec<u8>,
    window: Option<Arc<FlowWindow>>,
    stats: &mut WorkerStats,
    spare: &mut Vec<Vec<u8>>,
    pool: &mut BufPool,
) -> bool {
    if c.teardown != Teardown::Open {
        return false;
    }
    let len = frame.len();
    match &c.proto {
        Proto::Ws(ws) => {
            if ws.msrp.is_none() || ws.session.state() != State::Open {
                return false;
            }
            if sealable(c, frame.len()) {
                // wss: the message's header after the output before it,
                // then the frame itself, sealed together.
                let text = simdutf8::basic::from_utf8(&frame).is_ok();
                let op = if text { OpCode::Text } else { OpCode::Binary };
                frame::write_header(&mut c.out, true, op, frame.len());
                seal_behind_output(c, &frame);
                if text {
                    stats.data_frames_out(0, 1);
                } else {
                    stats.data_frames_out(1, 0);
                }
            } else {
                spare.extend(pool.make_output(&mut c.out));
                write_frame(&mut c.out, &frame, true, stats);
            }
            stats.messages_out(crate::config::SubProtocol::Msrp, 1);
            spare.push(frame);
        }
        Proto::Msrp(_) if sealable(c, frame.len()) => {
            seal_behind_output(c, &frame);
            spare.push(frame);
        }
        Proto::Msrp(_) => {
            if c.out.is_empty() && c.chain.is_empty() {
                if BufPool::fits(&frame) || frame.len() >= CHAIN_MIN {
                    // Take the frame's buffer as the output: no copy.
                    let displaced = std::mem::replace(&mut c.out, frame);
                    if displaced.capacity() > 0 {
                        spare.push(displaced);
                    }
                } else {
                    // A small frame in a small buffer: the frames queued
                    // behind it would grow that buffer by reallocation,
                    // copying everything again each time. One copy into a
                    // pooled output buffer instead.
                    spare.extend(pool.make_output(&mut c.out));
                    c.out.extend_from_slice(&frame);
                    spare.push(frame);
                }
            } else if c.tls.is_some() || frame.len() < CHAIN_MIN {
                // TLS in its handshake keeps plaintext in `out`; small
                // frames cost less to copy than an iovec.
                c.out.extend_from_slice(&frame);
                spare.push(frame);
            } else {
                // Behind earlier output: its own buffer in the writev.
                if !c.out.is_empty() {
                    c.chain.push(Piece::Owned(std::mem::take(&mut c.out)));
                }
                c.chain.push(Piece::Owned(frame));
            }
        }
        _ => return false,
    }
    if let Some(w) = window
        && let Some(m) = c.msrp_mut()
    {
        m.owed.push(w, len);
    }
    c.frames_out += 1;
    true
}

/// Whether a frame of `len` bytes for `c` is sealed at once (see
/// [`seal_behind_output`]): TLS past its handshake, a frame that would
/// otherwise go in a buffer of its own.
fn sealable(c: &Conn, len: usize) -> bool {
    len >= CHAIN_MIN && c.tls.as_ref().is_some_and(|t| !t.is_handshaking())
}

/// Encrypts `c`'s plaintext output and then `frame` (a TLS connection,
/// see [`sealable`]) into records of their own buffer, queued behind the
/// records before them. Joined into `out` and encrypted at the flush
/// instead, every large frame was copied once more, and again by each
/// reallocation of `out` as it grew (measured at 10 × 4 KiB over msrps).
fn seal_behind_output(c: &mut Conn, frame: &[u8]) {
    seal_with_output(c, &[], frame);
}

/// Seals `before`, then `c`'s plaintext output (emptied), then `after`
/// into `c`'s chain (a TLS connection; see [`seal_into_chain`]).
fn seal_with_output(c: &mut Conn, before: &[&[u8]], after: &[u8]) {
    let Conn {
        tls: Some(tls),
        out,
        wire,
        chain,
        ..
    } = c
    else {
        return;
    };
    let mut parts = Vec::with_capacity(before.len() + 2);
    parts.extend_from_slice(before);
    parts.push(out.as_slice());
    parts.push(after);
    seal_into_chain(tls, wire, chain, &parts);
    out.clear();
}

/// `parts` encrypted into records of their own buffer, queued on `chain`
/// behind the records already written to `wire`.
pub(super) fn seal_into_chain(
    tls: &mut TlsSession,
    wire: &mut Vec<u8>,
    chain: &mut Vec<Piece>,
    parts: &[&[u8]],
) {
    if !wire.is_empty() {
        chain.push(Piece::Owned(std::mem::take(wire)));
    }
    let mut sealed = Vec::new();
    tls.write_parts(parts, &mut sealed);
    if !sealed.is_empty() {
        chain.push(Piece::Owned(sealed));
    }
}

/// Bodies shorter than this are copied: an iovec of their own (and a held
/// buffer) costs more than the copy.
pub(super) const RING_MIN: usize = 1024;

/// Output beyond which a target is slow: chunks for it are copied rather
/// than pin provided buffers (the kernel reads a queued body only once the
/// output ahead of it has gone).
const RING_PENDING_MAX: usize = 256 * 1024;

/// Whether connection `c` may take a chunk whose body stays in a provided
/// buffer: TCP MSRP, or a WebSocket MSRP session (RFC 7977) that is open,
/// either keeping up with its output; over TLS once its handshake is done
/// (the body is encrypted from the buffer at once).
pub fn takes_ring(c: &Conn) -> bool {
    let proto = match &c.proto {
        Proto::Msrp(_) => true,
        Proto::Ws(ws) => ws.msrp.is_some() && ws.session.state() == State::Open,
        _ => false,
    };
    proto
        && c.teardown == Teardown::Open
        && c.tls.as_ref().is_none_or(|t| !t.is_handshaking())
        && !c.paused
        && !c.connecting
        && c.pending_output() < RING_PENDING_MAX
}

/// Whether `pieces`, one after another, are UTF-8 (a character may be cut
/// between two of them). SIMD-validated piece by piece, no copy.
pub fn utf8_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut v = Utf8Validator::new();
    pieces.into_iter().all(|p| v.feed(p).is_ok()) && v.finish().is_ok()
}

/// Queue a forwarded chunk on `c` (which [`takes_ring`]) in the same writev
/// as what is queued before it: its head behind the queued bytes (a head
/// is a few hundred bytes: cheaper copied than an iovec of its own), its
/// body by reference (the pieces keep `body`'s holds), its end-line first
/// in the bytes queued after it. On a WebSocket the frame header goes
/// before the head (one message per chunk, RFC 7977 §5.1; server frames
/// unmasked, RFC 6455 §5.1), text when the whole chunk is UTF-8 (as
/// [`write_ws`]), read where the body lies; the frame is queued whole, so
/// control frames written later (pings, pongs, Close) follow it, never
/// inside it (RFC 6455 §5.4). Emptied buffers go to `spare`, as with
/// [`queue_frame`]. Over TLS the chunk is encrypted at once, read where
/// the body lies: the pieces it was read from are returned, for the
/// caller to release.
#[allow(clippy::too_many_arguments)]
pub(super) fn queue_ring(
    c: &mut Conn,
    head: Vec<u8>,
    mut body: RingBody,
    window: Arc<FlowWindow>,
    bufs: &BufRing,
    pool: &mut BufPool,
    spare: &mut Vec<Vec<u8>>,
    stats: &mut WorkerStats,
) -> Vec<Piece> {
    let len = head.len() + body.len();
    let queued_before = c.chain.len();
    if matches!(c.proto, Proto::Ws(_)) {
        let text = body.utf8
            || utf8_pieces(
                std::iter::once(head.as_slice())
                    .chain(body.segs.as_slice().iter().map(|p| piece_bytes(p, bufs)))
                    .chain(std::iter::once(body.end.as_slice())),
            );
        let op = if text { OpCode::Text } else { OpCode::Binary };
        if c.out.capacity() == 0 {
            c.out = pool.take();
        }
        frame::write_header(&mut c.out, true, op, len);
        c.out.extend_from_slice(&head);
        spare.push(head);
        if text {
            stats.data_frames_out(0, 1);
        } else {
            stats.data_frames_out(1, 0);
        }
        stats.messages_out(crate::config::SubProtocol::Msrp, 1);
    } else if c.out.is_empty() {
        let displaced = std::mem::replace(&mut c.out, head);
        if displaced.capacity() > 0 {
            spare.push(displaced);
        }
    } else {
        c.out.extend_from_slice(&head);
        spare.push(head);
    }
    c.chain.push(Piece::Owned(std::mem::take(&mut c.out)));
    c.chain.extend(body.segs.take());
    c.out = pool.take();
    c.out.extend_from_slice(body.end.as_slice());
    // TLS: encrypted now, from where the body lies; the pieces go back.
    let sealed = if c.tls.is_some() {
        let plain: Vec<Piece> = c.chain.drain(queued_before..).collect();
        seal_pieces(c, &plain, bufs);
        plain
    } else {
        Vec::new()
    };
    if let Some(m) = c.msrp_mut() {
        m.owed.push(window, len);
    }
    c.frames_out += 1;
    sealed
}

/// Encrypts `plain` and then `c`'s plaintext output (a TLS connection
/// past its handshake) into records queued behind the records before
/// them, as [`seal_behind_output`] does for one frame.
fn seal_pieces(c: &mut Conn, plain: &[Piece], bufs: &BufRing) {
    let parts: Vec<&[u8]> = plain.iter().map(|p| piece_bytes(p, bufs)).collect();
    seal_with_output(c, &parts, &[]);
}

/// The bytes `p` stands for: its own, or those it refers to in a provided
/// buffer (of this core or another, see [`BufRing::held_bytes`]).
fn piece_bytes<'a>(p: &'a Piece, bufs: &'a BufRing) -> &'a [u8] {
    match p {
        Piece::Owned(b) => b.as_slice(),
        Piece::Ring {
            core,
            bid,
            off,
            len,
        } => bufs.held_bytes(*core, *bid, *off, *len),
    }
}

/// Body bytes of one input too few to hold a buffer for when the chunk
/// goes on in the next input (and cannot extend a held piece): copied.
const SEG_MIN: usize = 128;

/// Move `f`'s pending body bytes (a range of `data`) to its segments:
/// by reference (a hold on the buffer being read, counted in `ring`) when
/// `hold` and the list has room, else copied.
fn settle_pending(
    f: &mut Forward,
    data: &[u8],
    ring: Option<&mut RingInput>,
    hold: bool,
    pool: &mut BufPool,
) {
    let Some((range, off)) = f.pending.take() else {
        return;
    };
    let Some(bytes) = data.get(range.clone()) else {
        return;
    };
    if let Some(r) = ring
        && hold
    {
        let merges = matches!(f.segs.as_slice().last(),
            Some(Piece::Ring { core, bid, off: o, len })
                if *core == r.core && *bid == r.bid && *o + *len == off);
        if merges || bytes.len() >= SEG_MIN {
            match f.segs.push_ring(r.core, r.bid, off, bytes.len() as u32) {
                Some(true) => {
                    r.holds += 1;
                    return;
                }
                Some(false) => return,
                None => {}
            }
        }
    }
    f.segs.push_owned(bytes, || pool.take());
}

/// What the engine read: a byte stream, or bytes of a WebSocket message
/// (replies then go in messages of their own).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Stream,
    /// `text`: a text message, valid UTF-8 (RFC 6455 §8.1), as is then
    /// every chunk forwarded whole from it.
    WebSocket {
        text: bool,
    },
}

/// Carry out the engine's actions after it read `data` from connection
/// `m`: replies into `out`, forwarded chunks assembled, the rest as
/// [`Effect`]s.
pub fn run_actions(
    m: &mut MsrpState,
    data: &[u8],
    input: Input,
    out: &mut Vec<u8>,
    ctx: &mut MsrpCtx<'_>,
    stats: &mut WorkerStats,
) -> Outcome {
    let websocket = input != Input::Stream;
    let mut o = Outcome::default();
    // A chunk was cut (re-chunked) in this input.
    let mut after_cut = false;
    for a in ctx.actions.drain(..) {
        match a {
            Action::Reply(r) => {
                write_frame(out, &r, websocket, stats);
                o.frames_out += 1;
                ctx.relay.recycle(r);
            }
            Action::SendTo { conn, frame } if conn == m.conn.id => {
                write_frame(out, &frame, websocket, stats);
                o.frames_out += 1;
            }
            Action::SendTo { conn, frame } => ctx.effects.push(Effect::SendTo { conn, frame }),
            Action::ToCore { core, frame } => {
                // Answered: no longer failed if this connection is lost.
                m.handed_over.answered(&frame);
                ctx.effects.push(Effect::ToCore { core, frame });
            }
            Action::ForwardHead { target, head, txn } => {
                let old = m.fwd.replace(Forward {
                    head_len: head.len(),
                    target,
                    frame: head,
                    txn,
                    pending: None,
                    segs: BodySegs::default(),
                    watched: false,
                    // A piece after a cut starts wherever the cut fell.
                    text: input == Input::WebSocket { text: true } && !after_cut,
                });
                if let Some(f) = old
                    && !f.segs.is_empty()
                {
                    ctx.effects.push(Effect::Drop(f.segs));
                }
            }
            Action::ForwardBody { range } => {
                if let Some(f) = m.fwd.as_mut()
                    && data.get(range.clone()).is_some()
                {
                    forward_body(f, data, range, &mut ctx.ring, ctx.pool);
                }
            }
            Action::ForwardAbort => {
                if let Some(f) = m.fwd.take()
                    && !f.segs.is_empty()
                {
                    ctx.effects.push(Effect::Drop(f.segs));
                }
            }
            Action::ForwardEnd { end_line } => {
                after_cut |= end_line.cut();
                if let Some(mut f) = m.fwd.take() {
                    let held = f.pending.as_ref().map_or(0, |p| p.0.len()) + f.segs.len();
                    let body = f.frame.len().saturating_sub(f.head_len) + held;
                    stats.msrp_relayed(f.frame.get(..f.head_len).unwrap_or(&[]), body as u64);
                    m.window
                        .charge(f.frame.len() + held + end_line.as_slice().len());
                    // The body goes by reference if it is large enough
                    // (counted whole) and some of it is where it lies.
                    let by_ref = body >= RING_MIN && (f.pending.is_some() || f.segs.has_ring());
                    let ring = if by_ref || f.segs.has_ring() {
                        // Held pieces of a small body are copied by the
                        // worker, which can read them.
                        settle_pending(&mut f, data, ctx.ring.as_mut(), by_ref, ctx.pool);
                        Some(RingBody {
                            segs: std::mem::take(&mut f.segs),
                            end: end_line,
                            utf8: f.text && !end_line.cut(),
                        })
                    } else {
                        for p in f.segs.take() {
                            if let Piece::Owned(b) = p {
                                f.frame.extend_from_slice(&b);
                                ctx.pool.put(b);
                            }
                        }
                        if let Some((p, _)) = f.pending.take() {
                            f.frame.extend_from_slice(&data[p]);
                        }
                        f.frame.extend_from_slice(end_line.as_slice());
                        None
                    };
                    ctx.effects.push(Effect::Deliver {
                        target: f.target,
                        frame: f.frame,
                        ring,
                        txn: f.txn,
                        from_conn: m.conn.id,
                        window: m.window.clone(),
                        in_us: ctx.now_us,
                    });
                }
            }
            Action::Close { reason } => o.close = Some(reason),
            Action::Stat(s) => {
                if let crate::msrp::relay::Stat::FrameIn { .. } = s {
                    o.frames_in += 1;
                }
                stats.msrp(s);
            }
        }
    }
    // A chunk that goes on in the next input: its body so far stays where
    // it lies (the buffer held) or, when small, is copied before this
    // input's buffer goes back.
    if let Some(f) = m.fwd.as_mut() {
        settle_pending(f, data, ctx.ring.as_mut(), true, ctx.pool);
    }
    o
}

/// One piece of an MSRP-over-WebSocket message, streamed (see
/// [`crate::ws::session::WsSession::on_bytes_streamed`]): its bytes lie
/// unmasked in the receive buffer, so a body goes from there as a plain
/// TCP one does, whichever reads its message came in. Bytes the engine
/// leaves (a line cut by the end of a read) wait in `m.ws_carry` and are
/// completed with as few of the piece's bytes as it takes; the rest is
/// read where it lies.
#[inline]
pub fn feed_ws_piece(
    m: &mut MsrpState,
    piece: MessagePiece<'_>,
    env: &mut Env<'_>,
    out: &mut Vec<u8>,
    ctx: &mut MsrpCtx<'_>,
    stats: &mut WorkerStats,
) -> Outcome {
    let text = piece.kind == MessageKind::Text;
    let bytes = piece.bytes;
    let mut o = Outcome::default();
    let mut resume = 0;
    if !m.ws_carry.is_empty() {
        let mut p = std::mem::take(&mut m.ws_carry);
        let mut held = p.len();
        let from = ctx.ring.as_ref().and_then(|r| r.offset_of(bytes));
        let mut off = 0;
        let mut step = CARRY_STEP;
        loop {
            let take = step.min(bytes.len() - off);
            p.extend_from_slice(&bytes[off..off + take]);
            off += take;
            // p[held..] is a copy of bytes[..off]: bodies read there may go
            // by reference to the buffer.
            if let (Some(r), Some(from)) = (ctx.ring.as_mut(), from) {
                r.set_splice_at(Some((&p, held, from)));
            }
            let last = piece.last && off == bytes.len();
            let n = ctx
                .relay
                .on_ws_bytes(&mut m.conn, &p, text, last, env, ctx.actions);
            o.add(run_actions(
                m,
                &p,
                Input::WebSocket { text },
                out,
                ctx,
                stats,
            ));
            if let Some(r) = ctx.ring.as_mut() {
                r.set_splice_at(None);
            }
            if o.close.is_some() {
                return o;
            }
            if n >= held {
                // p[n..] is bytes[off - (p.len() - n)..off].
                resume = off - (p.len() - n).min(off);
                p.clear();
                m.ws_carry = p;
                if resume == bytes.len() {
                    return o;
                }
                break;
            }
            p.drain(..n);
            held -= n;
            if off == bytes.len() {
                m.ws_carry = p;
                return o;
            }
            step = step.saturating_mul(2);
        }
    }
    let rest = &bytes[resume..];
    let n = ctx
        .relay
        .on_ws_bytes(&mut m.conn, rest, text, piece.last, env, ctx.actions);
    o.add(run_actions(
        m,
        rest,
        Input::WebSocket { text },
        out,
        ctx,
        stats,
    ));
    if o.close.is_none()
        && let Some(left) = rest.get(n..)
    {
        m.ws_carry.extend_from_slice(left);
    }
    o
}

/// Bytes of a piece first appended behind a carried line (then twice as
/// many each time more are needed): lines are short.
const CARRY_STEP: usize = 128;

/// Body bytes `data[range]` of the chunk `f` forwards: left where they lie
/// while the whole body so far is (`pending`, `segs`), else copied into
/// `f.frame` as before.
fn forward_body(
    f: &mut Forward,
    data: &[u8],
    range: Range<usize>,
    ring: &mut Option<RingInput>,
    pool: &mut BufPool,
) {
    let Some(bytes) = data.get(range.clone()) else {
        return;
    };
    if f.frame.len() > f.head_len {
        // Copying already.
        f.frame.extend_from_slice(bytes);
        return;
    }
    let loc = ring.as_ref().and_then(|r| r.locate(data, &range));
    let Some((split, off)) = loc else {
        settle_pending(f, data, ring.as_mut(), true, pool);
        if f.segs.is_empty() {
            f.frame.extend_from_slice(bytes);
        } else {
            f.segs.push_owned(bytes, || pool.take());
        }
        return;
    };
    if split > range.start {
        // Bytes of a held partial frame come before the buffer's.
        settle_pending(f, data, ring.as_mut(), true, pool);
        f.segs.push_owned(&data[range.start..split], || pool.take());
    }
    if split == range.end {
        return;
    }
    match &mut f.pending {
        // The body goes on where it lies: still one range.
        Some((p, p_off)) if p.end == split && *p_off as usize + p.len() == off => {
            p.end = range.end;
        }
        _ => {
            settle_pending(f, data, ring.as_mut(), true, pool);
            f.pending = Some((split..range.end, off as u32));
        }
    }
}

/// Actions not tied to a connection being read (timers, responses and
/// failures handed over, connection teardown): only frames for
/// connections, frames for cores and statistics can occur.
pub fn run_detached(actions: &mut Vec<Action>, effects: &mut Vec<Effect>, stats: &mut WorkerStats) {
    for a in actions.drain(..) {
        match a {
            Action::SendTo { conn, frame } => effects.push(Effect::SendTo { conn, frame }),
            Action::ToCore { core, frame } => effects.push(Effect::ToCore { core, frame }),
            Action::Stat(s) => stats.msrp(s),
            Action::Reply(_)
            | Action::ForwardHead { .. }
            | Action::ForwardBody { .. }
            | Action::ForwardEnd { .. }
            | Action::ForwardAbort
            | Action::Close { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msrp::relay::Target;
    use proptest::prelude::*;

    fn forward(head: &[u8]) -> Forward {
        Forward {
            target: Target::Conn(1),
            head_len: head.len(),
            frame: head.to_vec(),
            txn: None,
            pending: None,
            segs: BodySegs::default(),
            watched: false,
            text: false,
        }
    }

    /// The bytes `segs` stand for: ring pieces read from `bufs` by id.
    fn bytes_of(segs: &BodySegs, bufs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in segs.as_slice() {
            match p {
                Piece::Owned(b) => v.extend_from_slice(b),
                Piece::Ring { bid, off, len, .. } => {
                    let (_, b) = bufs.iter().find(|(id, _)| id == bid).expect("buffer");
                    v.extend_from_slice(&b[*off as usize..(*off + *len) as usize]);
                }
            }
        }
        v
    }

    #[test]
    fn locate_maps_buffer_and_spliced_bytes() {
        let buf: Vec<u8> = (0..200u8).collect();
        let mut r = RingInput::new(0, 3, &buf);
        // A slice of the buffer itself.
        assert_eq!(r.locate(&buf[10..60], &(5..20)), Some((5, 15)));
        // Not in the buffer: a copy elsewhere.
        let other = buf.clone();
        assert_eq!(r.locate(&other, &(0..10)), None);
        assert_eq!(r.locate(&buf, &(10..300)), None);
        // 4 held bytes, then a copy of the buffer's first 30.
        let mut p = vec![9u8; 4];
        p.extend_from_slice(&buf[..30]);
        r.set_splice(Some((&p, 4)));
        assert_eq!(r.locate(&p, &(0..10)), Some((4, 0)));
        assert_eq!(r.locate(&p, &(6..10)), Some((6, 2)));
        // Only held bytes: nothing in the buffer (and no underflow).
        assert_eq!(r.locate(&p, &(0..3)), Some((3, 0)));
        // A sub-slice of the spliced bytes (the engine's `rest`).
        assert_eq!(r.locate(&p[2..], &(0..6)), Some((2, 0)));
        r.set_splice(None);
        assert_eq!(r.locate(&p, &(0..10)), None);
    }

    /// A body that begins in buffer A and ends in buffer B, with the
    /// end-line candidate bytes of A held between the reads (as
    /// `feed_plain` splices them): A's part and B's part by reference
    /// (one hold each, however many ranges), the held bytes copied.
    #[test]
    fn a_body_across_two_buffers_is_referenced_in_both() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..1000u32).map(|i| (i % 241) as u8 ^ 0x55).collect();
        let mut pool = BufPool::default();
        let mut f = forward(&a[..100]);
        // Input A: body from 100; its last 40 bytes held back.
        let mut ring = Some(RingInput::new(0, 1, &a));
        forward_body(&mut f, &a, 100..500, &mut ring, &mut pool);
        forward_body(&mut f, &a, 500..960, &mut ring, &mut pool);
        assert!(f.segs.is_empty(), "held before the input ended");
        settle_pending(&mut f, &a, ring.as_mut(), true, &mut pool);
        assert_eq!(ring.as_ref().map(|r| r.holds), Some(1));
        // Input B: the 40 held bytes with B's first 500 appended.
        let mut ring = Some(RingInput::new(0, 2, &b));
        let mut p = a[960..].to_vec();
        p.extend_from_slice(&b[..500]);
        if let Some(r) = ring.as_mut() {
            r.set_splice(Some((&p, 40)));
        }
        forward_body(&mut f, &p, 0..520, &mut ring, &mut pool);
        settle_pending(&mut f, &p, ring.as_mut(), true, &mut pool);
        if let Some(r) = ring.as_mut() {
            r.set_splice(None);
        }
        // Then B in place from where the spliced read stopped.
        forward_body(&mut f, &b[480..], 0..420, &mut ring, &mut pool);
        settle_pending(&mut f, &b[480..], ring.as_mut(), true, &mut pool);
        assert_eq!(ring.as_ref().map(|r| r.holds), Some(1), "one hold on B");
        assert_eq!(f.frame.len(), f.head_len, "body copied into the frame");
        let kinds: Vec<bool> = f.segs.as_slice().iter().map(Piece::is_ring).collect();
        assert_eq!(kinds, [true, false, true]);
        assert_eq!(f.segs.as_slice()[1].len(), 40);
        assert_eq!(f.segs.ring_len(), 860 + 900);
        let mut want = a[100..].to_vec();
        want.extend_from_slice(&b[..900]);
        assert_eq!(bytes_of(&f.segs, &[(1, &a), (2, &b)]), want);
    }

    /// Without a provided buffer (TLS, the hold cap reached) a body is
    /// copied into the frame, as before; once copying, it stays copied.
    #[test]
    fn a_body_not_in_a_buffer_is_copied() {
        let a = vec![7u8; 600];
        let mut pool = BufPool::default();
        let mut f = forward(b"HEAD");
        forward_body(&mut f, &a, 0..300, &mut None, &mut pool);
        let mut ring = Some(RingInput::new(0, 1, &a));
        forward_body(&mut f, &a, 300..600, &mut ring, &mut pool);
        settle_pending(&mut f, &a, ring.as_mut(), true, &mut pool);
        assert!(f.segs.is_empty());
        assert_eq!(f.frame.len(), 4 + 600);
        assert_eq!(ring.map(|r| r.holds), Some(0));
    }

    /// A short tail of a body in a buffer is copied rather than held; a
    /// body held so far and then not in a buffer goes on as copies.
    #[test]
    fn short_tails_are_copied_and_copies_follow_held_pieces() {
        let a: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
        let mut pool = BufPool::default();
        let mut f = forward(b"H");
        let mut ring = Some(RingInput::new(0, 1, &a));
        forward_body(&mut f, &a, 1950..2000, &mut ring, &mut pool);
        settle_pending(&mut f, &a, ring.as_mut(), true, &mut pool);
        assert_eq!(ring.as_ref().map(|r| r.holds), Some(0));
        assert!(!f.segs.has_ring());
        forward_body(&mut f, &a, 0..1000, &mut ring, &mut pool);
        settle_pending(&mut f, &a, ring.as_mut(), true, &mut pool);
        assert_eq!(ring.as_ref().map(|r| r.holds), Some(1));
        let copy = a[1000..1100].to_vec();
        forward_body(&mut f, &copy, 0..100, &mut None, &mut pool);
        let mut want = a[1950..].to_vec();
        want.extend_from_slice(&a[..1100]);
        assert_eq!(bytes_of(&f.segs, &[(1, &a)]), want);
        assert_eq!(f.segs.as_slice().len(), 3);
    }

    #[test]
    fn utf8_across_pieces() {
        let s = "aé✓😀".as_bytes();
        for cut in 0..=s.len() {
            assert!(utf8_pieces([&s[..cut], &s[cut..]]), "cut at {cut}");
        }
        // A character in three pieces.
        let e = "😀".as_bytes();
        assert!(utf8_pieces([&e[..1], &e[1..2], &e[2..]]));
        assert!(utf8_pieces([&e[..1], &[][..], &e[1..]]));
        // Cut short at the very end, or invalid across a cut.
        assert!(!utf8_pieces([&e[..3]]));
        assert!(!utf8_pieces([&e[..2], b"a"]));
        assert!(
            !utf8_pieces([&[0xED, 0xA0][..], &[0x80][..]]),
            "a surrogate"
        );
        assert!(!utf8_pieces([&[0xFF][..]]));
        assert!(utf8_pieces(std::iter::empty()));
    }

    proptest! {
        #[test]
        fn utf8_pieces_agrees_with_the_whole(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            text in "\\PC{0,40}",
            cuts in prop::collection::vec(0usize..64, 0..5),
        ) {
            for whole in [bytes, text.into_bytes()] {
                let mut at: Vec<usize> = cuts.iter().map(|c| c % (whole.len() + 1)).collect();
                at.sort_unstable();
                let mut pieces = Vec::new();
                let mut from = 0;
                for c in at {
                    pieces.push(&whole[from..c]);
                    from = c;
                }
                pieces.push(&whole[from..]);
                prop_assert_eq!(
                    utf8_pieces(pieces.iter().copied()),
                    std::str::from_utf8(&whole).is_ok()
                );
            }
        }
    }
}
