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
//! - The common relay case — a chunk whose body (≥ 1 KiB) lies in one piece
//!   in the provided buffer being read (not in a held partial frame), for a
//!   plain TCP MSRP connection of this core that keeps up with its output —
//!   has its body sent without a copy: the target queues the head, the body
//!   *by reference* ([`Piece::Ring`]) and the end-line, and they leave in
//!   one writev with whatever is queued around them. The provided buffer is held
//!   ([`super::bufring`]) until every piece referring to it is sent or
//!   dropped; a worker holds at most a quarter of its buffers. A send that
//!   goes short, or makes no progress for 100 ms (the peer stopped
//!   reading: it is cancelled), copies the bodies out and releases them, so
//!   a slow peer pins no receive buffer.
//! - Otherwise (another core, TLS or WebSocket on either side, a next hop,
//!   a small body, a body split across reads, a slow target, the hold cap
//!   reached) the
//!   chunk is assembled into one owned frame (head + a copy of the body +
//!   end-line), which moves to another core through its inbox without a
//!   further copy and is swapped (not copied) into an idle target's output
//!   buffer; behind earlier output, a frame of at least 1 KiB on a plain TCP
//!   target is queued as its own buffer and leaves in the same writev.
//!
//! The engine bounds a frame's size: larger SEND chunks are re-chunked (RFC
//! 4976 §6.6), other large chunks refused (413). Each forwarded frame is
//! charged (its full length, however it is queued) to its sender's flow
//! window ([`super::flow`]) until its target has written it.

use super::conn::{Conn, Forward, MsrpState, Piece, Proto, Teardown};
use super::flow::FlowWindow;
use super::stats::WorkerStats;
use super::worker::BufPool;
use super::{Shared, worker};
use crate::msrp::auth::UsePath;
use crate::msrp::relay::{Action, EndLine, Env, MsrpConn, RelayCore, Target, TxnId};
use crate::ws::frame::{self, OpCode};
use crate::ws::session::State;
use std::net::SocketAddr;
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
}

/// A forwarded chunk's body left in the provided buffer it was received
/// in: `len` bytes at `off` of buffer `bid` (one hold on it), then `end`.
#[derive(Clone, Copy)]
pub struct RingBody {
    pub bid: u16,
    pub off: u32,
    pub len: u32,
    pub end: EndLine,
}

impl RingBody {
    /// Bytes after the head: body and end-line.
    pub fn len(&self) -> usize {
        self.len as usize + self.end.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The provided buffer an input is read from, and the holds forwarded
/// bodies took on it (the worker takes them before the reader is done).
pub struct RingInput {
    pub bid: u16,
    addr: usize,
    len: usize,
    pub holds: u32,
}

impl RingInput {
    /// `data` is the start of buffer `bid` as received.
    pub fn new(bid: u16, data: &[u8]) -> RingInput {
        RingInput {
            bid,
            addr: data.as_ptr() as usize,
            len: data.len(),
            holds: 0,
        }
    }

    /// Where `data` starts in the buffer, if it lies in it (not in a held
    /// partial frame).
    fn offset_of(&self, data: &[u8]) -> Option<usize> {
        let a = data.as_ptr() as usize;
        (a >= self.addr && a + data.len() <= self.addr + self.len).then(|| a - self.addr)
    }
}

/// What carrying out the actions of one input produced for its connection.
#[derive(Default)]
pub struct Outcome {
    pub close: Option<&'static str>,
    pub frames_in: u64,
    pub frames_out: u64,
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
        store: &shared.msrp_store,
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
pub fn queue_frame(
    c: &mut Conn,
    frame: Vec<u8>,
    window: Option<Arc<FlowWindow>>,
    stats: &mut WorkerStats,
    spare: &mut Vec<Vec<u8>>,
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
            write_frame(&mut c.out, &frame, true, stats);
            stats.messages_out(crate::config::SubProtocol::Msrp, 1);
            spare.push(frame);
        }
        Proto::Msrp(_) => {
            if c.out.is_empty() && c.chain.is_empty() {
                // Take the frame's buffer as the output: no copy.
                let displaced = std::mem::replace(&mut c.out, frame);
                if displaced.capacity() > 0 {
                    spare.push(displaced);
                }
            } else if c.tls.is_some() || frame.len() < CHAIN_MIN {
                // TLS encrypts `out` as one plaintext; small frames cost
                // less to copy than an iovec.
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

/// Bodies shorter than this are copied: an iovec of their own (and a held
/// buffer) costs more than the copy.
const RING_MIN: usize = 1024;

/// Output beyond which a target is slow: chunks for it are copied rather
/// than pin provided buffers (the kernel reads a queued body only once the
/// output ahead of it has gone).
const RING_PENDING_MAX: usize = 256 * 1024;

/// Whether connection `c` may take a chunk whose body stays in a provided
/// buffer: plain TCP MSRP, open and keeping up with its output.
pub fn takes_ring(c: &Conn) -> bool {
    c.teardown == Teardown::Open
        && c.tls.is_none()
        && matches!(c.proto, Proto::Msrp(_))
        && !c.paused
        && !c.connecting
        && c.pending_output() < RING_PENDING_MAX
}

/// Queue a forwarded chunk on `c` (which [`takes_ring`]) in the same writev
/// as what is queued before it: its head behind the queued bytes (a head
/// is a few hundred bytes: cheaper copied than an iovec of its own), its
/// body by reference (the piece keeps `body`'s hold), its end-line first in
/// the bytes queued after it. Emptied buffers go to `spare`, as with
/// [`queue_frame`].
pub(super) fn queue_ring(
    c: &mut Conn,
    head: Vec<u8>,
    body: RingBody,
    window: Arc<FlowWindow>,
    pool: &mut BufPool,
    spare: &mut Vec<Vec<u8>>,
) {
    let len = head.len() + body.len();
    if c.out.is_empty() {
        let displaced = std::mem::replace(&mut c.out, head);
        if displaced.capacity() > 0 {
            spare.push(displaced);
        }
    } else {
        c.out.extend_from_slice(&head);
        spare.push(head);
    }
    c.chain.push(Piece::Owned(std::mem::take(&mut c.out)));
    c.chain.push(Piece::Ring {
        bid: body.bid,
        off: body.off,
        len: body.len,
    });
    c.out = pool.take();
    c.out.extend_from_slice(body.end.as_slice());
    if let Some(m) = c.msrp_mut() {
        m.owed.push(window, len);
    }
    c.frames_out += 1;
}

/// Carry out the engine's actions after it read `data` from connection
/// `m`: replies into `out`, forwarded chunks assembled, the rest as
/// [`Effect`]s.
pub fn run_actions(
    m: &mut MsrpState,
    data: &[u8],
    websocket: bool,
    out: &mut Vec<u8>,
    ctx: &mut MsrpCtx<'_>,
    stats: &mut WorkerStats,
) -> Outcome {
    let mut o = Outcome::default();
    // Forwarded bodies may stay where they lie: in the provided buffer
    // being read (a plain TCP input, not a held partial frame).
    let ring_off = match &ctx.ring {
        Some(r) if !websocket => r.offset_of(data),
        _ => None,
    };
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
                m.fwd = Some(Forward {
                    head_len: head.len(),
                    target,
                    frame: head,
                    txn,
                    pending: None,
                });
            }
            Action::ForwardBody { range } => {
                if let Some(f) = m.fwd.as_mut()
                    && data.get(range.clone()).is_some()
                {
                    match &mut f.pending {
                        // The body goes on where it lies: still one range.
                        Some(p) if p.end == range.start => p.end = range.end,
                        None if ring_off.is_some()
                            && f.frame.len() == f.head_len
                            && !range.is_empty() =>
                        {
                            f.pending = Some(range);
                        }
                        _ => {
                            if let Some(p) = f.pending.take() {
                                f.frame.extend_from_slice(&data[p]);
                            }
                            f.frame.extend_from_slice(&data[range]);
                        }
                    }
                }
            }
            Action::ForwardAbort => m.fwd = None,
            Action::ForwardEnd { end_line } => {
                if let Some(mut f) = m.fwd.take() {
                    let pending = f.pending.take();
                    let held = pending.as_ref().map_or(0, |p| p.len());
                    let body = f.frame.len().saturating_sub(f.head_len) + held;
                    stats.msrp_relayed(f.frame.get(..f.head_len).unwrap_or(&[]), body as u64);
                    m.window
                        .charge(f.frame.len() + held + end_line.as_slice().len());
                    let ring = match (pending, ring_off, ctx.ring.as_mut()) {
                        (Some(p), Some(off), Some(r)) if p.len() >= RING_MIN => {
                            r.holds += 1;
                            Some(RingBody {
                                bid: r.bid,
                                off: (off + p.start) as u32,
                                len: p.len() as u32,
                                end: end_line,
                            })
                        }
                        (p, _, _) => {
                            if let Some(p) = p {
                                f.frame.extend_from_slice(&data[p]);
                            }
                            f.frame.extend_from_slice(end_line.as_slice());
                            None
                        }
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
    // A chunk that goes on in the next input: its body so far is copied
    // before this input's buffer goes back.
    if let Some(f) = m.fwd.as_mut()
        && let Some(p) = f.pending.take()
    {
        f.frame.extend_from_slice(&data[p]);
    }
    o
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
