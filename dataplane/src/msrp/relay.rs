//! The relay engine (RFC 4976 §6), sans-IO.
//!
//! One [`RelayCore`] per reactor core owns the core's [`SessionMap`] and the
//! transactions it forwarded; one [`MsrpConn`] per connection owns the frame
//! parser and the connection's AUTH state. The reactor presents received
//! bytes with [`RelayCore::on_bytes`] and carries out the [`Action`]s:
//! replies on this connection, frames to forward (a rewritten head, then
//! body ranges of the very bytes it presented — no copy — then an
//! end-line), frames for other connections or cores, and closes.
//!
//! Decisions for each incoming frame:
//! - AUTH whose To-Path is only our URI: [`super::auth`] (401/403/423/200).
//! - Other requests: the first To-Path URI must carry one of our session
//!   ids (RFC 4976 §6.2); unknown or expired → 481. From the client that
//!   AUTHed the session, the frame goes to the next To-Path URI (another
//!   relay or endpoint: connect or reuse; a second URI of ours is a hairpin
//!   to a local client). From anyone else it goes to the session's client,
//!   and only there (403 if the To-Path goes beyond it); a session already
//!   used from another connection → 506.
//! - Our URI is popped from To-Path and pushed onto From-Path (RFC 4976
//!   §6.4); the body is forwarded unchanged.
//! - SEND responses are hop by hop (RFC 4976 §6.4.1): we answer 200 after
//!   the complete chunk when Failure-Report is yes (absent), nothing for
//!   `no` or `partial`; the next hop sees our own transaction id and its 200
//!   is absorbed. An error response, an undeliverable SEND, a transaction
//!   timeout or a lost destination produce a failure REPORT (`Status: 000
//!   code`) back along the From-Path when Failure-Report is yes or partial.
//! - Responses to AUTH and other non-SEND requests travel end to end with
//!   the original transaction id restored, toward the request's From-Path
//!   when the responder addressed only us.
//! - REPORTs are forwarded and never answered (RFC 4975 §7.1.2); unknown
//!   methods are forwarded (RFC 4976 §6.4.2).
//! - A malformed frame gets 400 when it is a request with usable paths; a
//!   frame that cannot be answered or delimited closes the connection.

use std::collections::HashMap;
use std::ops::Range;

use super::auth::{AuthEnv, AuthOutcome, AuthPolicy, ConnAuth, UsePath, handle_auth};
use super::message::{
    ByteRange, FailureReport, Head, Method, PathUris, ReportContext, build_response, restatus,
    write_end_line, write_relayed_head, write_relayed_head_ranged, write_relayed_response_head,
    write_response_into,
};
use super::parser::{
    Event, FatalError, Flag, FrameParser, HeadIndex, HeaderName, MAX_TID, ParserLimits,
};
use super::session_map::{InsertError, Miss, SESSION_RANDOM, SessionEntry, SessionId, SessionMap};
use super::uri::{LocalAuthorities, MsrpUri, PeerUri};
use super::uri_cache::UriCache;
use crate::auth::{NonceManager, Users};

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub limits: ParserLimits,
    pub auth: AuthPolicy,
    /// RFC 4975 §7.1.1 / AG and OpenSIPS: 30 s, then REPORT 408.
    pub transaction_timeout_ms: u64,
    /// Forwarded transactions tracked per core at most.
    pub max_pending: usize,
    /// Largest body a forwarded chunk carries on the next hop: a SEND with
    /// more is re-chunked (RFC 4975 §7.1.1), so memory per connection stays
    /// bounded whatever the sender's chunk size. 0 disables re-chunking.
    pub rechunk_size: usize,
    /// Largest body of a chunk that cannot be re-chunked (not a SEND, or
    /// no Message-ID): larger ones are refused with 413.
    pub max_unsplit: usize,
    /// This relay's authorities (all listeners and `use_path_addr`): a
    /// To-Path URI naming one of them is ours. Empty: only the first
    /// To-Path URI's authority is known to be ours.
    pub local: LocalAuthorities,
    /// Bodies at least this long mostly go out from the buffer they were
    /// received in (the reactor's zero-copy path), not behind the head: a
    /// forwarded head's buffer reserves no room for them (a body appended
    /// there grows it once). 0: always reserve.
    pub body_by_reference_min: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            limits: ParserLimits::default(),
            auth: AuthPolicy::default(),
            transaction_timeout_ms: 30_000,
            max_pending: 65_536,
            rechunk_size: 64 << 10,
            max_unsplit: 1 << 20,
            local: LocalAuthorities::default(),
            body_by_reference_min: 0,
        }
    }
}

/// Where a forwarded frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A connection of this core (a client of ours).
    Conn(u64),
    /// A session owned by another core: hand the frame to `core`, which
    /// resolves it with [`RelayCore::resolve_handoff`].
    Core { core: u8, session: SessionId },
    /// Another relay or an endpoint: open or reuse a connection to it
    /// (`msrps` requires TLS; `ws` targets are reachable only through
    /// sessions and are never dialled).
    NextHop {
        uri: String,
        secure: bool,
        host: String,
        port: u16,
    },
}

/// What the reactor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// One complete frame to write on this connection.
    Reply(Vec<u8>),
    /// One complete frame to write on connection `conn` of this core.
    SendTo { conn: u64, frame: Vec<u8> },
    /// A complete response frame whose transaction belongs to `core`: give
    /// it to that core's [`RelayCore::on_core_response`].
    ToCore { core: u8, frame: Vec<u8> },
    /// A forwarded frame starts: write `head` to `target`. `txn` names the
    /// transaction for [`RelayCore::on_forward_failed`].
    ForwardHead {
        target: Target,
        head: Vec<u8>,
        txn: Option<TxnId>,
    },
    /// Body bytes of the forwarded frame: `range` of the bytes presented.
    ForwardBody { range: Range<usize> },
    /// End of the forwarded frame.
    ForwardEnd { end_line: EndLine },
    /// The forwarded frame is dropped before its end (refused with 413):
    /// nothing of it may reach the target.
    ForwardAbort,
    /// Close this connection once the queued output is written.
    Close { reason: &'static str },
    /// Statistics.
    Stat(Stat),
}

/// An end-line with the CRLF that ends the body, inline (one per
/// forwarded chunk: no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EndLine {
    len: u8,
    buf: [u8; super::parser::MAX_END_LINE],
    /// Ends a piece the relay cut (re-chunking): its body may end inside
    /// a character of a text body.
    cut: bool,
}

impl EndLine {
    fn new(tid: &[u8], flag: Flag, after_body: bool) -> EndLine {
        let mut e = EndLine {
            len: 0,
            buf: [0; super::parser::MAX_END_LINE],
            cut: false,
        };
        let mut w = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(dst) = e.buf.get_mut(w..w + bytes.len()) {
                dst.copy_from_slice(bytes);
                w += bytes.len();
            }
        };
        if after_body {
            put(b"\r\n");
        }
        put(b"-------");
        put(tid);
        put(&[flag.byte()]);
        put(b"\r\n");
        e.len = w as u8;
        e
    }

    /// Whether this ends a piece the relay cut (re-chunking) rather than
    /// the sender's own chunk.
    pub fn cut(&self) -> bool {
        self.cut
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl std::fmt::Debug for EndLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndLine({:?})", String::from_utf8_lossy(self.as_slice()))
    }
}

/// Counters for the stats region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    FrameIn {
        method: Option<Method>,
        status: Option<u16>,
    },
    Rejected {
        code: u16,
    },
    AuthGranted,
    AuthChallenged,
    AuthFailed,
    SessionCreated,
    SessionsRemoved(usize),
    FailureReport {
        code: u16,
    },
    Malformed,
    /// A forwarded SEND was cut into one more chunk (RFC 4975 §7.1.1).
    Rechunked,
    /// A SIP message arrived on an MSRP port.
    SipRefused,
}

/// External inputs: credentials, nonces, time and randomness.
pub struct Env<'a> {
    /// The users in force (an AUTH takes the current store).
    pub store: &'a Users,
    pub nonces: &'a NonceManager,
    /// Monotonic milliseconds.
    pub now_ms: u64,
    /// Wall-clock seconds (nonce timestamps).
    pub unix_secs: u64,
    /// Fills the buffer with cryptographically secure random bytes.
    pub rng: &'a mut dyn FnMut(&mut [u8]),
}

/// Where a request goes and what of it the relay's answers need.
struct Route<'a> {
    target: Target,
    /// Our URIs at the front of To-Path (2 for a hairpin).
    pops: usize,
    to_first: &'a [u8],
    from_first: &'a [u8],
}

/// What to do with the rest of the current frame.
#[derive(Debug)]
enum Current {
    None,
    Discard,
    Forward {
        /// Transaction id on the next hop (of the current piece).
        tid: Tid,
        has_body: bool,
        /// Send `err` as the hop-by-hop 200 once the chunk is complete.
        ok: bool,
        /// Our response to the sender (a 200 to restatus) when it wants
        /// error responses: Failure-Report yes or partial.
        err: Option<Vec<u8>>,
        /// Body bytes forwarded in the current piece.
        body: usize,
        /// Present when the chunk may be re-chunked.
        split: Option<Box<Split>>,
    },
    /// A response to relay back once its end-line is seen.
    Response {
        core: u8,
        frame: Vec<u8>,
    },
    /// The response to a SEND this core forwarded (hop by hop: absorbed,
    /// or a failure REPORT): handled at its end-line, without a copy.
    SendResponse {
        tid: [u8; TID_LEN],
        code: u16,
    },
}

/// What it takes to continue a SEND in a new chunk on the next hop (RFC
/// 4975 §7.1, §7.1.1: the piece before ends with `+`, the next has a new
/// transaction id, the same Message-ID and the Byte-Range moved on).
#[derive(Debug)]
struct Split {
    /// The head as received: each piece's head is written from it.
    block: Vec<u8>,
    idx: HeadIndex,
    pops: usize,
    target: Target,
    /// Byte-Range of the current piece (its end as announced, or `*`).
    range: ByteRange,
    /// The pending entry each piece gets (None: no response wanted).
    pending: Option<Pending>,
}

/// One MSRP connection (TCP, TLS or WebSocket).
#[derive(Debug)]
pub struct MsrpConn {
    pub id: u64,
    parser: FrameParser,
    auth: ConnAuth,
    use_path: UsePath,
    peer_addr: String,
    cur: Current,
    /// One frame per message (RFC 7977 §5.1).
    websocket: bool,
    /// The first line was looked at for SIP (a TCP port may carry both).
    first_line_seen: bool,
    /// The route of this connection's last relayed request (a session
    /// sends along the same paths every time).
    route: Option<RouteMemo>,
}

/// A routing decision and what it was made from: the request's To-Path
/// and first From-Path URI, and the session map as it was (its generation;
/// the earliest expiry of the sessions consulted). The same paths at the
/// same generation, before that expiry, route the same way: every check
/// (ours, the session, 403 toward-client, 506 binding) would pass again.
#[derive(Debug)]
struct RouteMemo {
    to_path: Vec<u8>,
    from_first: Vec<u8>,
    generation: u64,
    until_ms: u64,
    target: Target,
    pops: usize,
}

impl RouteMemo {
    /// The remembered decision, when it was made from these paths at this
    /// generation and none of its sessions has expired since.
    fn recall(
        &self,
        to_path: &[u8],
        from_first: &[u8],
        generation: u64,
        now_ms: u64,
    ) -> Option<(Target, usize)> {
        (self.generation == generation
            && now_ms < self.until_ms
            && self.to_path == to_path
            && self.from_first == from_first)
            .then(|| (self.target.clone(), self.pops))
    }

    /// Remember a decision in `slot` (its buffers reused).
    fn remember(
        slot: &mut Option<RouteMemo>,
        to_path: &[u8],
        from_first: &[u8],
        generation: u64,
        until_ms: u64,
        target: &Target,
        pops: usize,
    ) {
        let m = slot.get_or_insert_with(|| RouteMemo {
            to_path: Vec::new(),
            from_first: Vec::new(),
            generation,
            until_ms,
            target: target.clone(),
            pops,
        });
        m.to_path.clear();
        m.to_path.extend_from_slice(to_path);
        m.from_first.clear();
        m.from_first.extend_from_slice(from_first);
        m.generation = generation;
        m.until_ms = until_ms;
        m.target = target.clone();
        m.pops = pops;
    }
}

impl MsrpConn {
    pub fn new(
        id: u64,
        limits: ParserLimits,
        use_path: UsePath,
        peer_addr: String,
        websocket: bool,
    ) -> MsrpConn {
        MsrpConn {
            id,
            parser: FrameParser::new(limits),
            auth: ConnAuth::default(),
            use_path,
            peer_addr,
            cur: Current::None,
            websocket,
            first_line_seen: websocket,
            route: None,
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.parser.at_boundary()
    }

    pub fn is_websocket(&self) -> bool {
        self.websocket
    }
}

/// A forwarded transaction awaiting its response.
#[derive(Debug, Clone)]
struct Pending {
    orig_tid: Tid,
    origin_conn: u64,
    method: Method,
    failure: FailureReport,
    report: ReportContext,
    deadline_ms: u64,
    downstream: Option<u64>,
    /// URIs of ours the request lost from To-Path (2 for a hairpin): the
    /// end-to-end response loses as many.
    pops: usize,
}

/// One core's relay state.
#[derive(Debug)]
pub struct RelayCore {
    cfg: RelayConfig,
    core: u8,
    pub sessions: SessionMap,
    pending: PendingMap,
    /// Pending SENDs with `Failure-Report: partial`, oldest first: no 200
    /// ever ends them (RFC 4975 §7.1.4; silence is success, §7.1.1), so
    /// they expire without a REPORT and make room first when the table is
    /// full.
    partial: std::collections::VecDeque<TxnId>,
    /// Emptied frame buffers handed back ([`RelayCore::recycle`]): the head
    /// of a forwarded chunk, the hop-by-hop 200 and the failure-report
    /// context of every SEND are written into these instead of fresh
    /// allocations.
    spare: Vec<Vec<u8>>,
    /// Their capacity in all (they are touched memory: bounded).
    spare_bytes: usize,
    uris: UriCache,
}

/// Spare buffers kept, at most (a batch of 32 SENDs from each of a few
/// connections uses three each), and the largest kept.
const SPARE_MAX: usize = 256;
const SPARE_BUF_MAX: usize = 16 * 1024;
const SPARE_BYTES_MAX: usize = 512 * 1024;

const HEX: &[u8; 16] = b"0123456789abcdef";
/// Length of this relay's transaction ids: 2 hex digits of core, 16 of
/// randomness.
pub const TID_LEN: usize = 18;
/// A transaction id this relay made (fixed size: no allocation).
pub type TxnId = [u8; TID_LEN];

/// Any transaction id (RFC 4975 §9: up to 32 characters), inline.
#[derive(Debug, Clone, Copy)]
pub struct Tid {
    len: u8,
    buf: [u8; MAX_TID],
}

impl Tid {
    fn new(s: &[u8]) -> Tid {
        let mut buf = [0u8; MAX_TID];
        let n = s.len().min(MAX_TID);
        buf[..n].copy_from_slice(&s[..n]);
        Tid { len: n as u8, buf }
    }
    fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

type PendingMap = HashMap<TxnId, Pending, super::id_hash::IdBuildHasher>;

impl RelayCore {
    pub fn new(cfg: RelayConfig, core: u8, session_capacity: usize) -> RelayCore {
        RelayCore {
            cfg,
            core,
            sessions: SessionMap::new(core, session_capacity),
            pending: PendingMap::default(),
            partial: std::collections::VecDeque::new(),
            spare: Vec::new(),
            spare_bytes: 0,
            uris: UriCache::default(),
        }
    }

    /// Take back a frame buffer this engine produced (or any other), once
    /// its bytes are written: the engine writes its next frames into it.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if self.spare.len() < SPARE_MAX
            && (1..=SPARE_BUF_MAX).contains(&cap)
            && self.spare_bytes + cap <= SPARE_BYTES_MAX
        {
            buf.clear();
            self.spare_bytes += cap;
            self.spare.push(buf);
        }
    }

    /// Whether [`RelayCore::recycle`] would keep another buffer.
    pub fn wants_buffers(&self) -> bool {
        self.spare.len() < SPARE_MAX
    }

    /// An empty buffer of at least `cap` bytes: a recycled one when there is.
    fn buffer(&mut self, cap: usize) -> Vec<u8> {
        // The newest large enough, else a new one (growing a small one
        // would copy nothing but still cost a realloc).
        match self.spare.iter().rposition(|b| b.capacity() >= cap) {
            Some(i) => {
                let b = self.spare.swap_remove(i);
                self.spare_bytes -= b.capacity();
                b
            }
            None => Vec::with_capacity(cap),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    pub fn pending_transactions(&self) -> usize {
        self.pending.len()
    }

    /// A fresh transaction id owned by this core: 2 hex digits of core and
    /// 64 random bits in hex (RFC 4975 §7.1: at least 64 bits of
    /// randomness; §9 `ident`).
    fn new_tid(&self, env: &mut Env<'_>) -> TxnId {
        let mut r = [0u8; 8];
        (env.rng)(&mut r);
        let mut t = [0u8; TID_LEN];
        t[0] = HEX[usize::from(self.core >> 4)];
        t[1] = HEX[usize::from(self.core & 15)];
        for (i, b) in r.into_iter().enumerate() {
            t[2 + 2 * i] = HEX[usize::from(b >> 4)];
            t[3 + 2 * i] = HEX[usize::from(b & 15)];
        }
        t
    }

    fn insert_pending(&mut self, k: TxnId, p: Pending) {
        if p.failure == FailureReport::Partial {
            self.partial.push_back(k);
        }
        self.pending.insert(k, p);
    }

    /// Room for one more pending transaction: the oldest `partial` ones
    /// give theirs up (they only wait for an error that rarely comes).
    fn make_room(&mut self) -> bool {
        while self.pending.len() >= self.cfg.max_pending {
            let Some(k) = self.partial.pop_front() else {
                return false;
            };
            self.pending.remove(&k);
        }
        true
    }

    fn tid_core(tid: &[u8]) -> Option<u8> {
        if tid.len() != 18 {
            return None;
        }
        let d = |b: &u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        Some(d(tid.first()?)? << 4 | d(tid.get(1)?)?)
    }

    /// Feed received bytes. Returns how many were consumed; present the
    /// rest again with more appended. `ForwardBody` ranges refer to `data`.
    pub fn on_bytes(
        &mut self,
        conn: &mut MsrpConn,
        data: &[u8],
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> usize {
        if !conn.first_line_seen {
            match self.first_line(conn, data, env, actions) {
                Some(n) => return n,
                None => conn.first_line_seen = true,
            }
        }
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or(&[]);
            let ev = match conn.parser.advance(rest) {
                Ok(Some(ev)) => ev,
                Ok(None) => return pos,
                Err(e) => {
                    actions.push(Action::Stat(Stat::Malformed));
                    actions.push(Action::Close {
                        reason: match e {
                            FatalError::NotMsrp => "not an MSRP frame",
                            FatalError::LineTooLong => "first line too long",
                            FatalError::NoTransactionId => "no transaction id",
                            FatalError::Poisoned => "protocol error",
                        },
                    });
                    return data.len();
                }
            };
            match ev {
                Event::Head { len, malformed } => {
                    let block = rest.get(..len).unwrap_or(&[]);
                    if malformed.is_some() {
                        conn.cur = Current::Discard;
                        actions.push(Action::Stat(Stat::Malformed));
                        let idx = conn.parser.take_head();
                        let head = Head::new(block, &idx);
                        let reply = head
                            .is_request()
                            .then(|| build_response(&head, 400, &[]))
                            .flatten();
                        let report = head.method() == Some(Method::Report);
                        conn.parser.put_head(idx);
                        match reply {
                            Some(r) if !report => {
                                actions.push(Action::Stat(Stat::Rejected { code: 400 }));
                                actions.push(Action::Reply(r));
                            }
                            Some(_) => {}
                            None => {
                                actions.push(Action::Close {
                                    reason: "malformed frame",
                                });
                                return data.len();
                            }
                        }
                    } else {
                        let idx = conn.parser.take_head();
                        let head = Head::new(block, &idx);
                        actions.push(Action::Stat(Stat::FrameIn {
                            method: head.method(),
                            status: head.status(),
                        }));
                        conn.cur = if head.is_request() {
                            self.on_request(conn, &head, env, actions)
                        } else {
                            self.on_response_head(&head)
                        };
                        conn.parser.put_head(idx);
                        if matches!(actions.last(), Some(Action::Close { .. })) {
                            return data.len();
                        }
                    }
                    pos += len;
                }
                Event::Body { len } => {
                    if let Current::Forward { .. } = conn.cur {
                        self.forward_body(conn, pos, len, env, actions);
                    }
                    pos += len;
                }
                Event::End { len, flag } => {
                    pos += len;
                    match std::mem::replace(&mut conn.cur, Current::None) {
                        Current::Forward {
                            tid,
                            has_body,
                            ok,
                            err,
                            ..
                        } => {
                            actions.push(Action::ForwardEnd {
                                end_line: EndLine::new(tid.as_slice(), flag, has_body),
                            });
                            if ok && let Some(r) = err {
                                actions.push(Action::Reply(r));
                            }
                        }
                        Current::Response { core, frame } => {
                            if core == self.core {
                                self.on_core_response(&frame, env, actions);
                            } else {
                                actions.push(Action::ToCore { core, frame });
                            }
                        }
                        Current::SendResponse { tid, code } => {
                            if let Some(p) = self.pending.remove(tid.as_slice()) {
                                if code != 200 {
                                    self.failure_report(&p, code, env, actions);
                                }
                                self.recycle(p.report.into_buffer());
                            }
                        }
                        Current::None | Current::Discard => {}
                    }
                    if conn.websocket && pos < data.len() {
                        // RFC 7977 §5.1: exactly one chunk per message.
                        actions.push(Action::Close {
                            reason: "more than one MSRP chunk in a WebSocket message",
                        });
                        return data.len();
                    }
                }
            }
        }
    }

    /// A TCP/TLS connection's first bytes: a port may carry MSRP and SIP
    /// (as Kamailio's does), the first line decides. SIP is refused until
    /// the SIP edge serves it: a request gets `501 Not Implemented` (RFC
    /// 3261 §8.2.6; ACK is never answered), then the connection closes.
    /// `None`: not SIP, parse as MSRP; `Some(n)`: `n` bytes consumed.
    fn first_line(
        &mut self,
        conn: &MsrpConn,
        data: &[u8],
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> Option<usize> {
        use crate::sip::reject::{FirstLine, classify, not_implemented};
        match classify(data, conn.parser.limits().max_head) {
            FirstLine::Other => None,
            FirstLine::Incomplete | FirstLine::SipRequest { head_len: None, .. } => Some(0),
            FirstLine::SipRequest {
                ack,
                head_len: Some(n),
            } => {
                let mut r = [0u8; 8];
                (env.rng)(&mut r);
                let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
                actions.push(Action::Stat(Stat::SipRefused));
                if !ack
                    && let Some(resp) = not_implemented(
                        data.get(..n).unwrap_or(&[]),
                        &tag,
                        "SIP is not served on this port yet",
                    )
                {
                    actions.push(Action::Reply(resp));
                }
                actions.push(Action::Close {
                    reason: "SIP on an MSRP port",
                });
                Some(data.len())
            }
            FirstLine::SipResponse => {
                actions.push(Action::Stat(Stat::SipRefused));
                actions.push(Action::Close {
                    reason: "SIP on an MSRP port",
                });
                Some(data.len())
            }
        }
    }

    /// A whole WebSocket message (RFC 7977 §5.1: one MSRP chunk, so it
    /// must end exactly at a frame boundary).
    /// `text`: it came as a text message, which the WebSocket layer has
    /// validated as UTF-8 (RFC 6455 §8.1): the parser does not check again.
    pub fn on_ws_message(
        &mut self,
        conn: &mut MsrpConn,
        msg: &[u8],
        text: bool,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) {
        self.on_ws_bytes(conn, msg, text, true, env, actions);
    }

    /// The next bytes of a WebSocket message, as they arrive (`last`: its
    /// end; `text`: a text message, whose bytes the WebSocket layer has
    /// checked are UTF-8 so far). Returns how many were taken: the rest (a
    /// line cut by the end of a read) comes again with the message's next
    /// bytes behind it. At its end the message must be exactly one chunk
    /// (RFC 7977 §5.3); anything else closes the connection.
    #[inline]
    pub fn on_ws_bytes(
        &mut self,
        conn: &mut MsrpConn,
        bytes: &[u8],
        text: bool,
        last: bool,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> usize {
        conn.parser.set_input_is_utf8(text);
        let n = self.on_bytes(conn, bytes, env, actions);
        conn.parser.set_input_is_utf8(false);
        if matches!(actions.last(), Some(Action::Close { .. })) {
            return bytes.len();
        }
        if last && (n != bytes.len() || !conn.parser.at_boundary()) {
            actions.push(Action::Stat(Stat::Malformed));
            actions.push(Action::Close {
                reason: "WebSocket message is not one complete MSRP chunk",
            });
            return bytes.len();
        }
        n
    }

    fn reject(&self, head: &Head<'_>, code: u16, actions: &mut Vec<Action>) -> Current {
        actions.push(Action::Stat(Stat::Rejected { code }));
        let method = head.method();
        // REPORTs are never answered; SEND with Failure-Report "no" gets
        // no response (RFC 4975 §7.1.2, §7.1.4).
        let silent = method == Some(Method::Report)
            || (method == Some(Method::Send) && head.failure_report() == Some(FailureReport::No));
        if !silent && let Some(r) = build_response(head, code, &[]) {
            actions.push(Action::Reply(r));
        }
        Current::Discard
    }

    fn on_request(
        &mut self,
        conn: &mut MsrpConn,
        head: &Head<'_>,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> Current {
        let method = head.method().unwrap_or(Method::Other);
        let Some(failure) = head.failure_report() else {
            return self.reject(head, 400, actions);
        };
        // To-Path scanned once; each URI below is parsed once.
        let to = PathUris::of(head.to_path());
        if method == Method::Auth && to.len == 1 {
            return self.on_auth(conn, head, env, actions);
        }
        let to_path = head.to_path().unwrap_or(&[]);
        let from_first = head.from_first();
        if let Some(from_first) = from_first
            && let Some((target, pops)) = conn
                .route
                .as_ref()
                .and_then(|m| m.recall(to_path, from_first, self.sessions.generation(), env.now_ms))
        {
            let route = Route {
                target,
                pops,
                to_first: to.get(0).unwrap_or(&[]),
                from_first,
            };
            return self.forward(conn, head, method, failure, route, env, actions);
        }
        // RFC 4976 §6.2: the first To-Path URI must be ours. (URIs come
        // from the per-core memo: a session repeats its paths.)
        let local = &self.cfg.local;
        let Some((first, first_ours)) = to.get(0).and_then(|u| self.uris.parse(u, local).ok())
        else {
            return self.reject(head, 400, actions);
        };
        let Some(from_first) = from_first.filter(|u| self.uris.parse(u, local).is_ok()) else {
            return self.reject(head, 400, actions);
        };
        // RFC 4975 §6.1 comparison against every authority of ours.
        if !local.is_empty() && !first_ours {
            return self.reject(head, 481, actions);
        }
        let Some(sid) = first.session_id.and_then(SessionId::parse) else {
            return self.reject(head, 481, actions);
        };
        if to.len < 2 {
            // Nowhere to relay (RFC 4976 §6.2).
            return self.reject(head, 481, actions);
        }
        let next = to.get(1).and_then(|u| self.uris.parse(u, local).ok());
        // The earliest expiry of the sessions this decision looks at.
        let mut until = u64::MAX;
        let (target, pops) = match self.sessions.lookup(&sid, env.now_ms) {
            Err(Miss::NoSession) => return self.reject(head, 481, actions),
            Err(Miss::OtherCore(core)) => {
                // Owned elsewhere, so not by this connection: toward that
                // client only.
                if to.len != 2 {
                    return self.reject(head, 403, actions);
                }
                (Target::Core { core, session: sid }, 1)
            }
            Ok(e) if e.conn == conn.id => {
                // From our client: on to the next hop.
                until = e.expires_ms;
                let Some((next, next_local)) = next else {
                    return self.reject(head, 400, actions);
                };
                let next_ours = next_local || next.same_authority(&first);
                match next.session_id.and_then(SessionId::parse) {
                    // Hairpin through a second URI of ours (any of our
                    // listeners: TCP ↔ WebSocket across listeners).
                    Some(sid2) if next_ours => {
                        if to.len != 3 {
                            return self.reject(head, 403, actions);
                        }
                        match self.sessions.lookup(&sid2, env.now_ms) {
                            Ok(e2) => {
                                let c2 = e2.conn;
                                until = until.min(e2.expires_ms);
                                if !toward_client(&e2.peer_uri, to.get(2)) {
                                    return self.reject(head, 403, actions);
                                }
                                if !self.sessions.bind(&sid2, conn.id) {
                                    return self.reject(head, 506, actions);
                                }
                                (Target::Conn(c2), 2)
                            }
                            Err(Miss::OtherCore(core)) => (
                                Target::Core {
                                    core,
                                    session: sid2,
                                },
                                2,
                            ),
                            Err(Miss::NoSession) => return self.reject(head, 481, actions),
                        }
                    }
                    // Ours, but no session of ours: nowhere to go.
                    None if next_ours => return self.reject(head, 481, actions),
                    _ => {
                        if next.is_ws() || next.is_invalid_host() {
                            // RFC 7977 §5.1, App. A: not resolvable; only reachable
                            // through a session of the relay it AUTHed to.
                            return self.reject(head, 481, actions);
                        }
                        let host = String::from_utf8_lossy(next.host).into_owned();
                        (
                            Target::NextHop {
                                uri: String::from_utf8_lossy(next.raw).into_owned(),
                                secure: next.secure,
                                host,
                                port: next.port.unwrap_or(2855),
                            },
                            1,
                        )
                    }
                }
            }
            Ok(e) => {
                // Toward our client, and only to it (RFC 4976 §6.2, §9).
                let c = e.conn;
                until = e.expires_ms;
                if to.len != 2 || !next.is_some_and(|(n, _)| e.peer_uri.same_authority(&n)) {
                    return self.reject(head, 403, actions);
                }
                if !self.sessions.bind(&sid, conn.id) {
                    return self.reject(head, 506, actions);
                }
                (Target::Conn(c), 1)
            }
        };
        if !matches!(target, Target::NextHop { .. }) {
            // The generation read after the decision: a first bind moved it.
            RouteMemo::remember(
                &mut conn.route,
                to_path,
                from_first,
                self.sessions.generation(),
                until,
                &target,
                pops,
            );
        }
        let route = Route {
            target,
            pops,
            to_first: to.get(0).unwrap_or(&[]),
            from_first,
        };
        self.forward(conn, head, method, failure, route, env, actions)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        conn: &MsrpConn,
        head: &Head<'_>,
        method: Method,
        failure: FailureReport,
        route: Route<'_>,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> Current {
        let Route {
            target,
            pops,
            to_first,
            from_first,
        } = route;
        // REPORTs get no response: keep their id. Everything else gets our
        // own id on the next hop (responses are matched by it).
        let wants_response = match method {
            Method::Report => false,
            Method::Send => failure != FailureReport::No,
            Method::Auth | Method::Other => true,
        };
        let tid = if method == Method::Report {
            Tid::new(head.tid())
        } else {
            Tid::new(&self.new_tid(env))
        };
        // The reactor appends the body and end-line to this buffer: size it
        // for them when Byte-Range tells the chunk's size (no realloc).
        let byte_range = head.byte_range();
        let split_range = self.splittable(head, method, byte_range);
        // A chunk that will be re-chunked carries at most `rechunk_size` per
        // piece: reserve no more (an oversized, mostly untouched buffer per
        // queued piece would spread the heap's resident pages).
        let most = if split_range.is_some() {
            self.cfg.rechunk_size
        } else {
            self.cfg.rechunk_size.max(self.cfg.max_unsplit)
        };
        let body = byte_range
            .and_then(|r| r.end.map(|e| e.saturating_sub(r.start) + 1))
            .map_or(0, |n| (n as usize).min(most));
        let by_reference = self.cfg.body_by_reference_min;
        let body = if by_reference > 0 && body >= by_reference {
            0
        } else {
            body
        };
        // At least 1 KiB: a recycled buffer then fits any small chunk.
        let mut out =
            self.buffer((head.block.len() + 64 + body + super::parser::MAX_END_LINE).max(1024));
        if !write_relayed_head(&mut out, head, tid.as_slice(), pops) {
            self.recycle(out);
            return self.reject(head, 400, actions);
        }
        let pending = if wants_response {
            if !self.make_room() {
                return self.reject(head, 403, actions);
            }
            Some(Pending {
                orig_tid: Tid::new(head.tid()),
                origin_conn: conn.id,
                method,
                failure,
                report: ReportContext::new_in(
                    self.buffer(0),
                    head.from_path().unwrap_or(&[]),
                    to_first,
                    head.message_id(),
                    head.header(HeaderName::ByteRange),
                ),
                deadline_ms: env.now_ms.saturating_add(self.cfg.transaction_timeout_ms),
                downstream: match target {
                    Target::Conn(c) => Some(c),
                    _ => None,
                },
                pops,
            })
        } else {
            None
        };
        let split = split_range.map(|range| {
            Box::new(Split {
                block: head.block.to_vec(),
                idx: head.idx.clone(),
                pops,
                target: target.clone(),
                range,
                pending: pending.clone(),
            })
        });
        let txn = pending.and_then(|p| {
            // Requests wanting a response carry our own id (never REPORT).
            let k = TxnId::try_from(tid.as_slice()).ok()?;
            self.insert_pending(k, p);
            Some(k)
        });
        // Hop-by-hop 200 for SEND when Failure-Report is yes (RFC 4976
        // §6.4.1), sent once the chunk is complete; error responses also
        // for `partial` (RFC 4975 §7.1.4, §7.2).
        let err = wants_response.then(|| {
            // RFC 4975 §7.2: to the previous hop only for SEND (hop by
            // hop), along the whole From-Path otherwise.
            let to = if method == Method::Send {
                from_first
            } else {
                head.from_path().unwrap_or(from_first)
            };
            let mut r = self.buffer(256);
            write_response_into(&mut r, head.tid(), 200, to, to_first, &[]);
            r
        });
        let ok = method == Method::Send && failure == FailureReport::Yes;
        actions.push(Action::ForwardHead {
            target,
            head: out,
            txn,
        });
        Current::Forward {
            tid,
            has_body: head.has_body(),
            ok,
            err,
            body: 0,
            split,
        }
    }

    /// The Byte-Range of a chunk the relay may split: a SEND with a body
    /// and a Message-ID (the receiver reassembles by it, RFC 4975 §7.3.1)
    /// whose announced size is unknown or over `rechunk_size`.
    fn splittable(
        &self,
        head: &Head<'_>,
        method: Method,
        byte_range: Option<ByteRange>,
    ) -> Option<ByteRange> {
        let limit = self.cfg.rechunk_size as u64;
        if limit == 0 || method != Method::Send || !head.has_body() || head.message_id().is_none() {
            return None;
        }
        let range = match head.header(HeaderName::ByteRange) {
            None => ByteRange::WHOLE,
            Some(_) => byte_range?,
        };
        match range.end {
            Some(end) if end.saturating_sub(range.start) < limit => None,
            _ => Some(range),
        }
    }

    /// Body bytes `pos..pos+len` of the frame being forwarded: forwarded,
    /// cut into pieces of at most `rechunk_size` (RFC 4975 §7.1.1), or — for
    /// a chunk that cannot be split — refused with 413 once over
    /// `max_unsplit`, so no chunk is ever held whole beyond those bounds.
    fn forward_body(
        &mut self,
        conn: &mut MsrpConn,
        pos: usize,
        len: usize,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) {
        let Current::Forward {
            tid,
            body,
            split,
            err,
            ..
        } = &mut conn.cur
        else {
            return;
        };
        let Some(s) = split.as_mut() else {
            if body.saturating_add(len) > self.cfg.max_unsplit {
                // Too large to hold and not ours to split: refuse it
                // (RFC 4975 §10.5: 413, stop sending this message).
                actions.push(Action::ForwardAbort);
                actions.push(Action::Stat(Stat::Rejected { code: 413 }));
                self.pending.remove(tid.as_slice());
                if let Some(r) = err.as_deref().and_then(|r| restatus(r, 413)) {
                    actions.push(Action::Reply(r));
                }
                conn.cur = Current::Discard;
                return;
            }
            *body += len;
            actions.push(Action::ForwardBody {
                range: pos..pos + len,
            });
            return;
        };
        let limit = self.cfg.rechunk_size;
        let (mut off, mut left) = (pos, len);
        while *body + left > limit {
            // This piece takes what fits; the rest goes in a new one.
            let take = limit - *body;
            if take > 0 {
                actions.push(Action::ForwardBody {
                    range: off..off + take,
                });
            }
            off += take;
            left -= take;
            actions.push(Action::ForwardEnd {
                end_line: EndLine {
                    cut: true,
                    ..EndLine::new(tid.as_slice(), Flag::More, true)
                },
            });
            s.range.start = s.range.start.saturating_add(limit as u64);
            *body = 0;
            let new_tid = self.new_tid(env);
            let idx = s.idx.clone();
            let head = Head::new(&s.block, &idx);
            let mut out =
                Vec::with_capacity(s.block.len() + 64 + limit + super::parser::MAX_END_LINE);
            if !write_relayed_head_ranged(&mut out, &head, &new_tid, s.pops, Some(&s.range)) {
                // Wrote it once for the first piece; cannot fail now.
                conn.cur = Current::Discard;
                return;
            }
            let txn = s.pending.as_ref().map(|p| {
                let mut p = p.clone();
                p.deadline_ms = env.now_ms.saturating_add(self.cfg.transaction_timeout_ms);
                let mut br = Vec::with_capacity(32);
                s.range.write_value(&mut br);
                p.report = p.report.with_byte_range(&br);
                self.insert_pending(new_tid, p);
                new_tid
            });
            actions.push(Action::Stat(Stat::Rechunked));
            actions.push(Action::ForwardHead {
                target: s.target.clone(),
                head: out,
                txn,
            });
            *tid = Tid::new(&new_tid);
        }
        if left > 0 {
            *body += left;
            actions.push(Action::ForwardBody {
                range: off..off + left,
            });
        }
    }

    fn on_auth(
        &mut self,
        conn: &mut MsrpConn,
        head: &Head<'_>,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) -> Current {
        let mut r = [0u8; SESSION_RANDOM];
        (env.rng)(&mut r);
        let sid = SessionId::generate(self.core, &r);
        let store = env.store.current();
        let aenv = AuthEnv {
            store: &store,
            nonces: env.nonces,
            now_secs: env.unix_secs,
            use_path: &conn.use_path,
            new_session: sid,
        };
        let outcome = handle_auth(head, &self.cfg.auth, &mut conn.auth, &aenv);
        match outcome {
            AuthOutcome::Granted {
                response,
                session,
                user,
                expires_secs,
                peer_uri,
            } => {
                let entry = SessionEntry {
                    id: session,
                    conn: conn.id,
                    user,
                    peer_uri: peer_uri.into(),
                    peer_addr: conn.peer_addr.clone(),
                    expires_ms: env.now_ms.saturating_add(expires_secs.saturating_mul(1000)),
                    bound: None,
                };
                match self.sessions.insert(entry) {
                    Ok(()) => {
                        actions.push(Action::Stat(Stat::AuthGranted));
                        actions.push(Action::Stat(Stat::SessionCreated));
                        actions.push(Action::Reply(response));
                    }
                    Err(InsertError::Full | InsertError::Duplicate) => {
                        return self.reject(head, 403, actions);
                    }
                }
            }
            AuthOutcome::Challenge { response, .. } => {
                actions.push(Action::Stat(Stat::AuthChallenged));
                actions.push(Action::Reply(response));
            }
            AuthOutcome::ExpiresOutOfBounds { response } => {
                actions.push(Action::Stat(Stat::Rejected { code: 423 }));
                actions.push(Action::Reply(response));
            }
            AuthOutcome::Forbidden { response, close }
            | AuthOutcome::BadRequest { response, close } => {
                actions.push(Action::Stat(Stat::AuthFailed));
                actions.push(Action::Reply(response));
                if close {
                    actions.push(Action::Close {
                        reason: "too many failed AUTH attempts",
                    });
                }
            }
            AuthOutcome::Unanswerable => {
                actions.push(Action::Close {
                    reason: "unanswerable AUTH",
                });
            }
        }
        Current::Discard
    }

    /// A response head: matched to our transaction by its id.
    fn on_response_head(&mut self, head: &Head<'_>) -> Current {
        let tid = head.tid();
        if Self::tid_core(tid) == Some(self.core)
            && let (Ok(t), Some(code)) = (<[u8; TID_LEN]>::try_from(tid), head.status())
            && self
                .pending
                .get(tid)
                .is_some_and(|p| p.method == Method::Send)
        {
            return Current::SendResponse { tid: t, code };
        }
        let mut frame = head.block.to_vec();
        write_end_line(&mut frame, tid, Flag::Last, false);
        match Self::tid_core(tid) {
            Some(core) => Current::Response { core, frame },
            None => Current::Discard,
        }
    }

    /// A complete response frame for one of this core's transactions (from
    /// a connection of this core, or handed over by another core).
    pub fn on_core_response(&mut self, frame: &[u8], env: &mut Env<'_>, actions: &mut Vec<Action>) {
        let mut p = FrameParser::new(self.cfg.limits);
        let Ok(Some(Event::Head {
            len,
            malformed: None,
        })) = p.advance(frame)
        else {
            return;
        };
        let block = frame.get(..len).unwrap_or(&[]);
        let idx = p.head().clone();
        let head = Head::new(block, &idx);
        let Some(code) = head.status() else {
            return;
        };
        let Some(pending) = self.pending.remove(head.tid()) else {
            return; // unknown or already timed out: drop
        };
        match pending.method {
            Method::Send => {
                // Hop by hop: absorb; report errors (RFC 4976 §6.4.1 ¶3).
                if code != 200 {
                    self.failure_report(&pending, code, env, actions);
                }
            }
            _ => {
                // End to end (RFC 4976 §6.4.3): pop our URI, restore the id.
                let mut out = Vec::with_capacity(frame.len() + 32);
                let orig = pending.orig_tid;
                let request_from = pending.report.to_path();
                if write_relayed_response_head(
                    &mut out,
                    &head,
                    orig.as_slice(),
                    pending.pops,
                    request_from,
                ) {
                    write_end_line(&mut out, orig.as_slice(), Flag::Last, false);
                    actions.push(Action::SendTo {
                        conn: pending.origin_conn,
                        frame: out,
                    });
                }
            }
        }
    }

    fn failure_report(&self, p: &Pending, code: u16, env: &mut Env<'_>, actions: &mut Vec<Action>) {
        if !matches!(p.failure, FailureReport::Yes | FailureReport::Partial)
            || p.method != Method::Send
        {
            return;
        }
        let tid = self.new_tid(env);
        if let Some(frame) = p.report.build(&tid, code) {
            actions.push(Action::Stat(Stat::FailureReport { code }));
            actions.push(Action::SendTo {
                conn: p.origin_conn,
                frame,
            });
        }
    }

    /// The reactor could not deliver transaction `txn` (next hop
    /// unreachable: 408 per RFC 4975 §10.4 or 403 when refused).
    pub fn on_forward_failed(
        &mut self,
        txn: &[u8],
        code: u16,
        env: &mut Env<'_>,
        actions: &mut Vec<Action>,
    ) {
        if let Some(p) = self.pending.remove(txn) {
            self.failure_report(&p, code, env, actions);
        }
    }

    /// Transaction `txn` went out on connection `conn` of this core (an
    /// outbound next hop): if that connection is lost first, the
    /// transaction fails at once (REPORT 408) instead of timing out.
    pub fn set_downstream(&mut self, txn: &[u8], conn: u64) {
        if let Some(p) = self.pending.get_mut(txn) {
            p.downstream = Some(conn);
        }
    }

    /// On the owning core: the connection of a session named by a frame
    /// another core handed over, or the failure code (481, 506).
    /// `next` is the To-Path URI after ours (the frame's first, as
    /// forwarded): it must name the session's client.
    pub fn resolve_handoff(
        &mut self,
        session: &SessionId,
        from_conn: u64,
        next: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<u64, u16> {
        let e = self.sessions.lookup(session, now_ms).map_err(|_| 481u16)?;
        if !toward_client(&e.peer_uri, next) {
            return Err(403);
        }
        let conn = e.conn;
        if !self.sessions.bind(session, from_conn) {
            return Err(506);
        }
        Ok(conn)
    }

    /// Timer: transaction timeouts (REPORT 408, RFC 4975 §7.1.1, §10.4) and the
    /// session sweep (`timer_interval`).
    pub fn on_tick(&mut self, env: &mut Env<'_>, sweep_sessions: bool, actions: &mut Vec<Action>) {
        let now = env.now_ms;
        let expired: Vec<TxnId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            // `partial`: no response is success, so the timeout is not a
            // failure (RFC 4975 §7.1.1); the entry just goes.
            if let Some(p) = self.pending.remove(&k)
                && p.failure != FailureReport::Partial
            {
                self.failure_report(&p, 408, env, actions);
            }
        }
        let pending = &self.pending;
        self.partial.retain(|k| pending.contains_key(k));
        if sweep_sessions {
            let n = self.sessions.sweep(now);
            if n > 0 {
                actions.push(Action::Stat(Stat::SessionsRemoved(n)));
            }
        }
    }

    /// A connection closed: its sessions die with it; transactions waiting
    /// on it get failure REPORTs; transactions it originated are dropped.
    pub fn on_conn_closed(&mut self, conn: u64, env: &mut Env<'_>, actions: &mut Vec<Action>) {
        let n = self.sessions.remove_connection(conn);
        self.sessions.unbind_connection(conn);
        if n > 0 {
            actions.push(Action::Stat(Stat::SessionsRemoved(n)));
        }
        let lost: Vec<TxnId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.downstream == Some(conn) || p.origin_conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for k in lost {
            if let Some(p) = self.pending.remove(&k)
                && p.origin_conn != conn
            {
                self.failure_report(&p, 408, env, actions);
            }
        }
    }
}

/// Traffic that reaches a client through its relay URI from anyone else
/// must be addressed to that client (RFC 4976 §6.2): the next To-Path URI
/// names the authority the client gave in its AUTH's From-Path. (Only the
/// authority: one client may run several sessions, each its own path.)
fn toward_client(peer_uri: &PeerUri, next: Option<&[u8]>) -> bool {
    next.and_then(|n| MsrpUri::parse(n).ok())
        .is_some_and(|n| peer_uri.same_authority(&n))
}

#[cfg(test)]
mod tests;
