//! One server-side WebSocket connection after the opening handshake.
//!
//! A sans-IO state machine: received bytes and the time go in, frames to send
//! (appended to an output `Vec`) and [`SessionEvent`]s come out. It never reads
//! a clock; `now_ms` is monotonic milliseconds supplied by the reactor.
//!
//! RFC 6455 rules enforced here:
//! - §5.1: client frames must be masked; server frames never are.
//! - §5.2, §5.5: header checks, see [`super::frame`].
//! - §5.4: fragmented messages are reassembled; control frames may be
//!   interleaved; a stray continuation or a new message inside an open one is
//!   a protocol error (1002).
//! - §5.5.1, §7.1.5, §7.4: Close frames are validated and echoed; after
//!   sending Close, incoming data frames are discarded and the peer's Close
//!   ends the handshake.
//! - §5.5.2, §5.5.3: Ping is answered with a Pong of the same payload;
//!   unsolicited Pongs are ignored.
//! - §8.1: text messages must be UTF-8 (1007), checked per fragment.
//! - §10.4: messages above `max_message_size` are refused (1009) from their
//!   header, before any payload is buffered.
//!
//! Only complete frames are consumed: [`WsSession::on_bytes`] returns how many
//! bytes it used and the caller presents the rest again with more appended.
//! An unfragmented message whose frame is in the buffer is handed to the
//! message handler as a slice of that buffer, unmasked in place: no copy and
//! no allocation on that path. A protocol that parses a stream (MSRP) takes
//! [`WsSession::on_bytes_streamed`] instead: each data frame's payload is
//! handed over as its bytes arrive, in place, and nothing is reassembled,
//! so only an incomplete frame header or control frame is ever left over.

use std::collections::VecDeque;
use std::sync::Arc;

use super::close;
use super::frame::{self, FrameHeader, OpCode, ProtocolError};
use super::unmask::unmask;
use super::utf8::{self, Utf8Validator};
use crate::config::KeepaliveMechanism;

/// Per-listener WebSocket settings, shared by all sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Reassembled message limit; larger messages are closed with 1009.
    pub max_message_size: usize,
    pub keepalive: KeepaliveMechanism,
    /// Time without a received frame before a keep-alive is sent (0 = off).
    pub keepalive_timeout_ms: u64,
    /// Unanswered keep-alive Pings after which the session is closed with
    /// 1001 (0 behaves as 1).
    pub keepalive_max_missed: u32,
    /// Keep-alive payload, at most 125 bytes (longer is cut).
    pub ping_data: Vec<u8>,
    /// After we send Close, how long to wait for the peer's Close.
    pub close_timeout_ms: u64,
    /// No traffic at all for this long closes with 1001; 0 = off.
    pub idle_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            keepalive: KeepaliveMechanism::Ping,
            keepalive_timeout_ms: 180_000,
            keepalive_max_missed: 3,
            ping_data: b"rtedge".to_vec(),
            close_timeout_ms: 5_000,
            idle_timeout_ms: 0,
        }
    }
}

/// Receives each complete data message and may append frames to send
/// (`&mut Vec<u8>`, e.g. an echo).
pub type OnMessage<'a> = dyn FnMut(MessageKind, &[u8], &mut Vec<u8>) + 'a;

/// Receives a streamed data message piece by piece (see
/// [`WsSession::on_bytes_streamed`]) and may append frames to send.
pub type OnPiece<'a> = dyn FnMut(MessagePiece<'_>, &mut Vec<u8>) + 'a;

/// Some bytes of a data message, in order: the payload of a frame, or as
/// much of it as one input held, unmasked where it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePiece<'a> {
    pub kind: MessageKind,
    pub bytes: &'a [u8],
    /// The message's first piece.
    pub first: bool,
    /// Its last: the message is complete (and, if text, valid UTF-8).
    pub last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// Where a session hands its data messages.
enum Sink<'s, 'a> {
    Whole(&'s mut OnMessage<'a>),
    Pieces(&'s mut OnPiece<'a>),
}

/// The message being streamed ([`WsSession::on_bytes_streamed`]).
#[derive(Debug, Default)]
struct Streamed {
    /// Payload bytes of the message's frames so far (for the size limit).
    len: u64,
    /// No piece of the message handed over yet.
    first: bool,
    /// The frame whose payload is arriving.
    frame: Option<StreamedFrame>,
}

#[derive(Debug)]
struct StreamedFrame {
    remaining: u64,
    /// Payload bytes already unmasked (the mask's phase).
    offset: usize,
    mask: Option<[u8; 4]>,
    fin: bool,
}

/// What happened, for statistics; drained with [`WsSession::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    FrameIn {
        opcode: OpCode,
        len: usize,
    },
    /// A frame the session wrote itself (control frames, `send_message`);
    /// frames written by the `on_message` handler are not reported.
    FrameOut {
        opcode: OpCode,
        len: usize,
    },
    /// `None`: the peer's Close had no status code.
    CloseReceived {
        code: Option<u16>,
    },
    /// 1005 stands for the empty Close echoed to an empty Close.
    CloseSent {
        code: u16,
    },
    KeepaliveSent,
    /// We closed the peer for unanswered keep-alive Pings.
    KeepaliveFailed,
    /// We closed because the peer broke the protocol (1002, 1007, 1009).
    ProtocolError {
        code: u16,
    },
    IdleTimeout,
    CloseTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent Close and wait for the peer's.
    Closing,
    /// Close handshake done or aborted: close TCP once output is flushed.
    Closed,
}

/// Beyond this many undrained events, per-frame events are dropped so that a
/// reactor that drains late cannot grow a session without bound.
const MAX_QUEUED_EVENTS: usize = 1024;
/// Event queue capacity kept once drained.
const EVENTS_KEEP: usize = 64;
/// Reassembly capacity kept between fragmented messages; more is freed so a
/// single large message does not pin memory for the life of the connection.
const REASSEMBLY_KEEP: usize = 16 * 1024;

const TOO_BIG: ProtocolError = ProtocolError::new(close::MESSAGE_TOO_BIG, "message too big");
const BAD_UTF8: ProtocolError = ProtocolError::new(close::INVALID_PAYLOAD, "invalid UTF-8 in text");

/// One server-side connection after the handshake.
#[derive(Debug)]
pub struct WsSession {
    cfg: Arc<SessionConfig>,
    state: State,
    /// Kind of the fragmented message being reassembled, if any.
    fragmented: Option<MessageKind>,
    reassembly: Vec<u8>,
    utf8: Utf8Validator,
    /// Data frames are handed over as their bytes arrive (see
    /// [`Self::on_bytes_streamed`]), not reassembled.
    streamed: Option<Box<Streamed>>,
    last_rx_ms: u64,
    last_tx_ms: u64,
    /// A message was sent by an API call that has no `now_ms`; the next call
    /// that has one records it as the time of sending.
    tx_unstamped: bool,
    keepalive_at: u64,
    unanswered_pings: u32,
    close_deadline: u64,
    events: VecDeque<SessionEvent>,
}

impl WsSession {
    pub fn new(cfg: Arc<SessionConfig>, now_ms: u64) -> Self {
        let keepalive_at = now_ms.saturating_add(cfg.keepalive_timeout_ms);
        Self {
            cfg,
            state: State::Open,
            fragmented: None,
            reassembly: Vec::new(),
            utf8: Utf8Validator::new(),
            streamed: None,
            last_rx_ms: now_ms,
            last_tx_ms: now_ms,
            tx_unstamped: false,
            keepalive_at,
            unanswered_pings: 0,
            close_deadline: u64::MAX,
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.events.pop_front();
        if ev.is_none() && self.events.capacity() > EVENTS_KEEP {
            self.events.shrink_to(EVENTS_KEEP);
        }
        ev
    }

    /// Time of the last frame received or data message sent.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_rx_ms.max(self.last_tx_ms)
    }

    /// Bytes of the message currently being reassembled.
    pub fn buffered(&self) -> usize {
        self.reassembly.len()
    }

    /// Feed received bytes; frames are unmasked in place. Returns the bytes
    /// consumed: the tail is an incomplete frame, to be presented again with
    /// more bytes appended. Once the session is `Closed` all input is
    /// consumed and ignored. Complete data messages go to `on_message`, which
    /// may append frames to `out`.
    pub fn on_bytes(
        &mut self,
        buf: &mut [u8],
        now_ms: u64,
        out: &mut Vec<u8>,
        on_message: &mut OnMessage<'_>,
    ) -> usize {
        self.run(buf, now_ms, out, &mut Sink::Whole(on_message))
    }

    /// As [`Self::on_bytes`], but data messages are not reassembled: each
    /// frame's payload goes to `on_piece` as its bytes arrive, unmasked where
    /// they lie, so only an incomplete frame header or control frame is left
    /// unconsumed (for a protocol that parses a stream, as MSRP does: a chunk
    /// of any size then never waits whole in a buffer, and its body can be
    /// relayed from the receive buffers). A text message's pieces are
    /// checked as they come (§8.1: invalid UTF-8 fails the connection at
    /// once). A session takes its input through one of the two for life.
    pub fn on_bytes_streamed(
        &mut self,
        buf: &mut [u8],
        now_ms: u64,
        out: &mut Vec<u8>,
        on_piece: &mut OnPiece<'_>,
    ) -> usize {
        if self.streamed.is_none() {
            self.streamed = Some(Box::new(Streamed {
                first: true,
                ..Streamed::default()
            }));
        }
        self.run(buf, now_ms, out, &mut Sink::Pieces(on_piece))
    }

    fn run(
        &mut self,
        buf: &mut [u8],
        now_ms: u64,
        out: &mut Vec<u8>,
        sink: &mut Sink<'_, '_>,
    ) -> usize {
        self.stamp_tx(now_ms);
        let mut pos = 0usize;
        while self.state != State::Closed {
            let Some(rest) = buf.get_mut(pos..) else {
                break;
            };
            if let Some(f) = self.streamed.as_deref_mut().and_then(|s| s.frame.as_mut()) {
                // A streamed frame's payload goes on.
                let take = usize::try_from(f.remaining)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                if take == 0 && f.remaining > 0 {
                    break;
                }
                let Some(bytes) = rest.get_mut(..take) else {
                    break;
                };
                if let Some(key) = f.mask {
                    unmask(bytes, key, f.offset & 3);
                }
                f.offset = f.offset.wrapping_add(take);
                f.remaining -= take as u64;
                let last = f.remaining == 0 && f.fin;
                if f.remaining == 0
                    && let Some(st) = self.streamed.as_deref_mut()
                {
                    st.frame = None;
                }
                pos += take;
                self.stream_piece(bytes, last, now_ms, out, sink);
                continue;
            }
            let hdr = match frame::parse_client_header(rest) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e, out);
                    break;
                }
            };
            // Judged on the header alone so an oversized or out-of-sequence
            // frame is refused before its payload is waited for.
            if let Err(e) = self.check_header(&hdr) {
                self.fail(e, out);
                break;
            }
            if self.streamed.is_some() && self.state == State::Open && !hdr.opcode.is_control() {
                // The common case, a whole unfragmented message in this
                // input, goes over in one piece without a streamed frame.
                if hdr.fin
                    && hdr.opcode != OpCode::Continuation
                    && let Some(payload) = usize::try_from(hdr.payload_len)
                        .ok()
                        .and_then(|n| n.checked_add(hdr.header_len))
                        .and_then(|total| rest.get_mut(hdr.header_len..total))
                {
                    if let Some(key) = hdr.mask {
                        unmask(payload, key, 0);
                    }
                    pos += hdr.header_len + payload.len();
                    self.frame_seen(&hdr, now_ms);
                    let kind = if hdr.opcode == OpCode::Text {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    };
                    if kind == MessageKind::Text && !utf8::is_valid(payload) {
                        self.fail(BAD_UTF8, out);
                        break;
                    }
                    let piece = MessagePiece {
                        kind,
                        bytes: payload,
                        first: true,
                        last: true,
                    };
                    self.deliver_piece(piece, now_ms, out, sink);
                    continue;
                }
                pos += hdr.header_len;
                self.frame_seen(&hdr, now_ms);
                self.start_streamed_frame(&hdr);
                continue;
            }
            let Some(total) = usize::try_from(hdr.payload_len)
                .ok()
                .and_then(|n| n.checked_add(hdr.header_len))
            else {
                self.fail(TOO_BIG, out);
                break;
            };
            let Some(payload) = rest
                .get_mut(..total)
                .and_then(|f| f.get_mut(hdr.header_len..))
            else {
                break; // payload not all here yet
            };
            if let Some(key) = hdr.mask {
                unmask(payload, key, 0);
            }
            pos += total;
            let on_message: &mut OnMessage<'_> = match sink {
                Sink::Whole(f) => f,
                // Data frames reach `on_frame` only to be discarded (closing).
                Sink::Pieces(_) => &mut |_, _, _| {},
            };
            self.on_frame(&hdr, payload, now_ms, out, on_message);
        }
        if self.state == State::Closed {
            buf.len()
        } else {
            pos
        }
    }

    /// A data frame whose payload is streamed: a Text or Binary frame
    /// starts a message (`check_header` saw that none is open).
    fn start_streamed_frame(&mut self, h: &FrameHeader) {
        let kind = match h.opcode {
            OpCode::Text => Some(MessageKind::Text),
            OpCode::Binary => Some(MessageKind::Binary),
            _ => None,
        };
        if let Some(k) = kind {
            self.fragmented = Some(k);
            self.utf8.reset();
        }
        if let Some(st) = self.streamed.as_deref_mut() {
            if kind.is_some() {
                st.first = true;
                st.len = 0;
            }
            st.len = st.len.saturating_add(h.payload_len);
            st.frame = Some(StreamedFrame {
                remaining: h.payload_len,
                offset: 0,
                mask: h.mask,
                fin: h.fin,
            });
        }
    }

    /// Hand over the next bytes of the streamed message (`last`: its end).
    fn stream_piece(
        &mut self,
        bytes: &[u8],
        last: bool,
        now_ms: u64,
        out: &mut Vec<u8>,
        sink: &mut Sink<'_, '_>,
    ) {
        let Some(kind) = self.fragmented else {
            return; // the rest of a frame of a message dropped by a close
        };
        if kind == MessageKind::Text {
            let ok = self.utf8.feed(bytes).is_ok() && (!last || self.utf8.finish().is_ok());
            if !ok {
                return self.fail(BAD_UTF8, out);
            }
        }
        let Some(st) = self.streamed.as_deref_mut() else {
            return;
        };
        let first = std::mem::replace(&mut st.first, false);
        if last {
            self.fragmented = None;
        }
        let piece = MessagePiece {
            kind,
            bytes,
            first,
            last,
        };
        self.deliver_piece(piece, now_ms, out, sink);
    }

    fn deliver_piece(
        &mut self,
        piece: MessagePiece<'_>,
        now_ms: u64,
        out: &mut Vec<u8>,
        sink: &mut Sink<'_, '_>,
    ) {
        let before = out.len();
        if let Sink::Pieces(on_piece) = sink {
            on_piece(piece, out);
        }
        // The handler's frames count as traffic for the idle timeout.
        if out.len() > before {
            self.last_tx_ms = self.last_tx_ms.max(now_ms);
        }
    }

    /// Keep-alive, idle and close timeouts. Call at [`Self::next_deadline`].
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<u8>) {
        self.stamp_tx(now_ms);
        match self.state {
            State::Closed => {}
            State::Closing => {
                if now_ms >= self.close_deadline {
                    self.push_event(SessionEvent::CloseTimeout);
                    self.set_closed();
                }
            }
            State::Open => {
                if let Some(at) = self.idle_deadline()
                    && now_ms >= at
                {
                    self.push_event(SessionEvent::IdleTimeout);
                    self.send_close(out, close::GOING_AWAY, "idle timeout");
                    self.set_closed();
                    return;
                }
                if self.keepalive_enabled() && now_ms >= self.keepalive_at {
                    self.keepalive(now_ms, out);
                }
            }
        }
    }

    /// Earliest `now_ms` at which [`Self::on_tick`] has work.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            State::Closed => None,
            State::Closing => Some(self.close_deadline),
            State::Open => {
                let ka = self.keepalive_enabled().then_some(self.keepalive_at);
                match (ka, self.idle_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Start the close handshake (`ws.close`); no-op unless `Open`. A code
    /// that may not be sent on the wire (§7.4) is replaced by 1000.
    pub fn close(&mut self, code: u16, reason: &str, now_ms: u64, out: &mut Vec<u8>) {
        self.stamp_tx(now_ms);
        if self.state != State::Open {
            return;
        }
        let code = if close::is_valid_code(code) {
            code
        } else {
            close::NORMAL
        };
        self.send_close(out, code, reason);
        self.state = State::Closing;
        self.close_deadline = now_ms.saturating_add(self.cfg.close_timeout_ms);
        self.drop_message();
    }

    /// Send a Ping (`ws.ping`); payload cut to 125 bytes. No-op unless `Open`.
    pub fn ping(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.state == State::Open {
            self.send_frame(out, OpCode::Ping, data);
        }
    }

    /// Send an unsolicited Pong (`ws.pong`); payload cut to 125 bytes.
    pub fn pong(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.state == State::Open {
            self.send_frame(out, OpCode::Pong, data);
        }
    }

    /// Send one unfragmented data message; no-op unless `Open`. Text must be
    /// UTF-8: the caller's protocol engine produces it.
    pub fn send_message(&mut self, kind: MessageKind, payload: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Open {
            return;
        }
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        self.send_frame(out, opcode, payload);
        self.tx_unstamped = true;
    }

    fn stamp_tx(&mut self, now_ms: u64) {
        if self.tx_unstamped {
            self.tx_unstamped = false;
            self.last_tx_ms = self.last_tx_ms.max(now_ms);
        }
    }

    fn keepalive_enabled(&self) -> bool {
        self.cfg.keepalive != KeepaliveMechanism::None && self.cfg.keepalive_timeout_ms > 0
    }

    fn idle_deadline(&self) -> Option<u64> {
        (self.cfg.idle_timeout_ms > 0).then(|| {
            self.last_activity_ms()
                .saturating_add(self.cfg.idle_timeout_ms)
        })
    }

    fn keepalive(&mut self, now_ms: u64, out: &mut Vec<u8>) {
        let cfg = Arc::clone(&self.cfg);
        match cfg.keepalive {
            KeepaliveMechanism::None => return,
            KeepaliveMechanism::Ping => {
                if self.unanswered_pings >= cfg.keepalive_max_missed.max(1) {
                    self.push_event(SessionEvent::KeepaliveFailed);
                    // The peer is presumed gone: no point waiting for its Close.
                    self.send_close(out, close::GOING_AWAY, "keep-alive timeout");
                    self.set_closed();
                    return;
                }
                self.send_frame(out, OpCode::Ping, &cfg.ping_data);
                self.unanswered_pings += 1;
            }
            // An unsolicited Pong keeps middleboxes awake; it expects no answer.
            KeepaliveMechanism::Pong => self.send_frame(out, OpCode::Pong, &cfg.ping_data),
        }
        self.push_event(SessionEvent::KeepaliveSent);
        self.keepalive_at = now_ms.saturating_add(cfg.keepalive_timeout_ms);
    }

    /// Header-level checks that depend on the session: message sequencing
    /// (§5.4) and the size limit.
    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.opcode.is_control() {
            return Ok(());
        }
        let max = self.cfg.max_message_size as u64;
        if self.state == State::Closing {
            // Discarded, but still never wait for more than a message's worth.
            return if h.payload_len > max {
                Err(TOO_BIG)
            } else {
                Ok(())
            };
        }
        let so_far = match (h.opcode, self.fragmented) {
            (OpCode::Continuation, None) => {
                return Err(ProtocolError::protocol("continuation without a message"));
            }
            (OpCode::Continuation, Some(_)) => match self.streamed.as_deref() {
                Some(st) => st.len,
                None => self.reassembly.len() as u64,
            },
            (_, Some(_)) => {
                return Err(ProtocolError::protocol(
                    "new message inside a fragmented one",
                ));
            }
            (_, None) => 0,
        };
        if so_far.saturating_add(h.payload_len) > max {
            return Err(TOO_BIG);
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
        on_message: &mut OnMessage<'_>,
    ) {
        self.frame_seen(h, now_ms);

        match h.opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.send_frame(out, OpCode::Pong, payload);
                }
            }
            OpCode::Pong => {}
            OpCode::Close => self.on_close(payload, out),
            // §7.1.4/§5.5.1: after our Close, data from the peer is discarded.
            _ if self.state != State::Open => {}
            OpCode::Text | OpCode::Binary => {
                let kind = if h.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if h.fin {
                    if kind == MessageKind::Text && !utf8::is_valid(payload) {
                        return self.fail(BAD_UTF8, out);
                    }
                    self.deliver(kind, payload, now_ms, out, on_message);
                } else {
                    if kind == MessageKind::Text {
                        self.utf8.reset();
                        if self.utf8.feed(payload).is_err() {
                            return self.fail(BAD_UTF8, out);
                        }
                    }
                    self.fragmented = Some(kind);
                    self.reassembly.clear();
                    self.reassembly.extend_from_slice(payload);
                }
            }
            OpCode::Continuation => {
                // check_header guarantees a message is open.
                let Some(kind) = self.fragmented else {
                    return self.fail(
                        ProtocolError::protocol("continuation without a message"),
                        out,
                    );
                };
                if kind == MessageKind::Text {
                    let ok =
                        self.utf8.feed(payload).is_ok() && (!h.fin || self.utf8.finish().is_ok());
                    if !ok {
                        return self.fail(BAD_UTF8, out);
                    }
                }
                self.reassembly.extend_from_slice(payload);
                if h.fin {
                    self.fragmented = None;
                    // Taken out so the handler can borrow it while `self` is
                    // mutated; put back afterwards to keep its capacity.
                    let mut msg = std::mem::take(&mut self.reassembly);
                    self.deliver(kind, &msg, now_ms, out, on_message);
                    msg.clear();
                    if msg.capacity() > REASSEMBLY_KEEP {
                        msg = Vec::new();
                    }
                    self.reassembly = msg;
                }
            }
        }
    }

    fn frame_seen(&mut self, h: &FrameHeader, now_ms: u64) {
        self.push_event(SessionEvent::FrameIn {
            opcode: h.opcode,
            len: usize::try_from(h.payload_len).unwrap_or(usize::MAX),
        });
        // Any frame proves the peer alive (a Pong answering our Ping included).
        self.last_rx_ms = self.last_rx_ms.max(now_ms);
        self.unanswered_pings = 0;
        self.keepalive_at = now_ms.saturating_add(self.cfg.keepalive_timeout_ms);
    }

    fn deliver(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
        on_message: &mut OnMessage<'_>,
    ) {
        let before = out.len();
        on_message(kind, payload, out);
        // The handler's frames are its own to count (it knows what it sent);
        // they still count as traffic for the idle timeout.
        if out.len() > before {
            self.last_tx_ms = self.last_tx_ms.max(now_ms);
        }
    }

    fn on_close(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let code = match close::parse_close_payload(payload) {
            Ok(c) => c.map(|(code, _reason)| code),
            Err(e) => return self.fail(e, out),
        };
        self.push_event(SessionEvent::CloseReceived { code });
        if self.state == State::Open {
            // §5.5.1: echo the status code; an empty Close gets an empty one.
            match code {
                Some(code) => self.send_close(out, code, ""),
                None => {
                    self.send_frame(out, OpCode::Close, &[]);
                    self.push_event(SessionEvent::CloseSent {
                        code: close::NO_STATUS,
                    });
                }
            }
        }
        self.set_closed();
    }

    /// The peer broke the protocol: send Close with the error's code (unless
    /// we already sent one) and stop.
    fn fail(&mut self, e: ProtocolError, out: &mut Vec<u8>) {
        self.push_event(SessionEvent::ProtocolError { code: e.code });
        if self.state == State::Open {
            self.send_close(out, e.code, e.reason);
        }
        self.set_closed();
    }

    fn set_closed(&mut self) {
        self.state = State::Closed;
        self.drop_message();
    }

    fn drop_message(&mut self) {
        self.fragmented = None;
        self.reassembly = Vec::new();
        self.utf8.reset();
        // A streamed frame's remaining payload is still skipped (its bytes
        // are on the wire), but no longer handed over.
        if let Some(st) = self.streamed.as_deref_mut() {
            st.first = true;
            st.len = 0;
        }
    }

    fn send_close(&mut self, out: &mut Vec<u8>, code: u16, reason: &str) {
        let start = out.len();
        frame::write_close(out, code, reason);
        self.push_event(SessionEvent::FrameOut {
            opcode: OpCode::Close,
            len: out.len() - start - 2,
        });
        self.push_event(SessionEvent::CloseSent { code });
    }

    fn send_frame(&mut self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
        frame::write_frame(out, opcode, payload);
        let len = if opcode.is_control() {
            payload.len().min(frame::MAX_CONTROL_PAYLOAD)
        } else {
            payload.len()
        };
        self.push_event(SessionEvent::FrameOut { opcode, len });
    }

    fn push_event(&mut self, ev: SessionEvent) {
        let per_frame = matches!(
            ev,
            SessionEvent::FrameIn { .. } | SessionEvent::FrameOut { .. }
        );
        if per_frame && self.events.len() >= MAX_QUEUED_EVENTS {
            return;
        }
        self.events.push_back(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn cfg() -> SessionConfig {
        SessionConfig {
            max_message_size: 1000,
            keepalive: KeepaliveMechanism::Ping,
            keepalive_timeout_ms: 100,
            keepalive_max_missed: 2,
            ping_data: b"ka".to_vec(),
            close_timeout_ms: 50,
            idle_timeout_ms: 0,
        }
    }

    fn session_with(c: SessionConfig) -> WsSession {
        WsSession::new(Arc::new(c), 0)
    }

    fn session() -> WsSession {
        session_with(cfg())
    }

    /// A masked client frame.
    fn cf(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame::write_masked_frame(&mut v, fin, op, payload, KEY);
        v
    }

    fn sf(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame::write_frame(&mut v, op, payload);
        v
    }

    fn close_frame(code: u16) -> Vec<u8> {
        let mut v = Vec::new();
        frame::write_close(&mut v, code, "");
        v
    }

    type Msgs = Vec<(MessageKind, Vec<u8>)>;

    /// Feed `bytes` at `now`; returns (consumed, output, messages).
    fn feed(s: &mut WsSession, bytes: &[u8], now: u64) -> (usize, Vec<u8>, Msgs) {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let n = s.on_bytes(&mut buf, now, &mut out, &mut |k, p, _| {
            msgs.push((k, p.to_vec()))
        });
        (n, out, msgs)
    }

    /// Pieces of streamed messages, as (kind, bytes, first, last).
    type Pieces = Vec<(MessageKind, Vec<u8>, bool, bool)>;

    /// Feed `input` cut into the given pieces to a streaming session, the
    /// way the reactor does: unconsumed bytes are presented again with the
    /// next input behind them. Returns the pieces, the output and the most
    /// bytes ever left unconsumed.
    fn feed_streamed(s: &mut WsSession, input: &[u8], cuts: &[usize]) -> (Pieces, Vec<u8>, usize) {
        let mut held: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut pieces = Vec::new();
        let mut most_held = 0;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            let end = end.clamp(start, input.len());
            let mut buf = std::mem::take(&mut held);
            buf.extend_from_slice(&input[start..end]);
            start = end;
            let n = s.on_bytes_streamed(&mut buf, 1, &mut out, &mut |p, _| {
                pieces.push((p.kind, p.bytes.to_vec(), p.first, p.last))
            });
            held = buf[n..].to_vec();
            most_held = most_held.max(held.len());
        }
        (pieces, out, most_held)
    }

    /// Whole messages put back together from their pieces, checking that
    /// each message's pieces begin with `first` and end with `last`.
    fn joined(pieces: &Pieces) -> Msgs {
        let mut msgs = Vec::new();
        let mut cur: Option<(MessageKind, Vec<u8>)> = None;
        for (k, b, first, last) in pieces {
            if *first {
                assert!(cur.is_none(), "a first piece inside a message");
                cur = Some((*k, Vec::new()));
            }
            let (ck, m) = cur.as_mut().expect("a piece before any first piece");
            assert_eq!(ck, k);
            m.extend_from_slice(b);
            if *last {
                msgs.extend(cur.take());
            }
        }
        assert!(cur.is_none(), "a message without its last piece");
        msgs
    }

    fn events(s: &mut WsSession) -> Vec<SessionEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn assert_failed(s: &mut WsSession, bytes: &[u8], code: u16) {
        let (n, out, msgs) = feed(s, bytes, 1);
        assert_eq!(n, bytes.len(), "all input consumed after a failure");
        assert!(msgs.is_empty());
        let h = frame::parse_header(&out).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Close);
        assert_eq!(out.get(2..4), Some(&code.to_be_bytes()[..]), "close code");
        assert_eq!(s.state(), State::Closed);
        assert!(events(s).contains(&SessionEvent::ProtocolError { code }));
        // Nothing more is processed.
        let (n, out, msgs) = feed(s, &cf(true, OpCode::Text, b"late"), 2);
        assert_eq!((n, out.len(), msgs.len()), (6 + 4, 0, 0));
    }

    #[test]
    fn delivers_masked_text_and_binary() {
        let mut s = session();
        let mut input = cf(true, OpCode::Text, "héllo".as_bytes());
        input.extend(cf(true, OpCode::Binary, &[0, 255, 7]));
        let (n, out, msgs) = feed(&mut s, &input, 1);
        assert_eq!(n, input.len());
        assert!(out.is_empty());
        assert_eq!(
            msgs,
            vec![
                (MessageKind::Text, "héllo".as_bytes().to_vec()),
                (MessageKind::Binary, vec![0, 255, 7])
            ]
        );
        assert_eq!(
            events(&mut s),
            vec![
                SessionEvent::FrameIn {
                    opcode: OpCode::Text,
                    len: 6
                },
                SessionEvent::FrameIn {
                    opcode: OpCode::Binary,
                    len: 3
                },
            ]
        );
    }

    #[test]
    fn unmasked_client_frame_is_1002() {
        assert_failed(&mut session(), &sf(OpCode::Text, b"hi"), 1002);
    }

    #[test]
    fn header_errors_close_with_1002() {
        let mut rsv = cf(true, OpCode::Text, b"x");
        rsv[0] |= 0x40;
        let mut reserved_op = cf(true, OpCode::Text, b"x");
        reserved_op[0] = 0x83;
        let big_ping = [0x89, 0x80 | 126, 0, 200];
        let mut frag_ping = cf(true, OpCode::Ping, b"");
        frag_ping[0] &= 0x7f;
        let non_minimal = [0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        let mut top_bit = vec![0x82, 0x80 | 127];
        top_bit.extend((1u64 << 63).to_be_bytes());
        for bad in [
            rsv,
            reserved_op,
            big_ping.to_vec(),
            frag_ping,
            non_minimal.to_vec(),
            top_bit,
        ] {
            assert_failed(&mut session(), &bad, 1002);
        }
    }

    #[test]
    fn header_error_is_seen_with_only_two_bytes() {
        let mut s = session();
        let (n, out, _) = feed(&mut s, &[0x81, 0x05], 1);
        assert_eq!((n, s.state()), (2, State::Closed));
        assert!(!out.is_empty());
    }

    #[test]
    fn incomplete_frame_is_not_consumed_and_not_modified() {
        let mut s = session();
        let mut input = cf(true, OpCode::Text, b"one");
        let second = cf(true, OpCode::Text, b"two two");
        input.extend_from_slice(&second[..5]);
        let mut buf = input.clone();
        let mut got = Vec::new();
        let n = s.on_bytes(&mut buf, 1, &mut Vec::new(), &mut |_, p, _| {
            got.push(p.to_vec())
        });
        assert_eq!(n, input.len() - 5);
        assert_eq!(&buf[n..], &second[..5]);
        assert_eq!(got, vec![b"one".to_vec()]);
    }

    #[test]
    fn reassembles_fragments_with_interleaved_control_frames() {
        let mut s = session();
        let mut input = cf(false, OpCode::Text, "ab€".as_bytes());
        input.extend(cf(true, OpCode::Ping, b"p1"));
        input.extend(cf(false, OpCode::Continuation, b""));
        input.extend(cf(true, OpCode::Pong, b"x"));
        input.extend(cf(true, OpCode::Continuation, b"cd"));
        let (n, out, msgs) = feed(&mut s, &input, 1);
        assert_eq!(n, input.len());
        assert_eq!(msgs, vec![(MessageKind::Text, "ab€cd".as_bytes().to_vec())]);
        assert_eq!(out, sf(OpCode::Pong, b"p1"));
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn buffered_reports_partial_message() {
        let mut s = session();
        feed(&mut s, &cf(false, OpCode::Binary, &[1; 10]), 1);
        assert_eq!(s.buffered(), 10);
        let (_, _, msgs) = feed(&mut s, &cf(true, OpCode::Continuation, &[2; 5]), 1);
        assert_eq!(msgs[0].1.len(), 15);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn continuation_without_message_is_1002() {
        assert_failed(&mut session(), &cf(true, OpCode::Continuation, b"x"), 1002);
    }

    #[test]
    fn new_message_inside_fragmented_one_is_1002() {
        let mut s = session();
        feed(&mut s, &cf(false, OpCode::Binary, b"a"), 1);
        assert_failed(&mut s, &cf(true, OpCode::Text, b"b"), 1002);
    }

    #[test]
    fn unfragmented_message_is_zero_copy() {
        let mut s = session();
        let mut buf = cf(true, OpCode::Binary, &[9; 300]);
        let range = buf.as_ptr_range();
        let mut inside = false;
        s.on_bytes(&mut buf, 1, &mut Vec::new(), &mut |_, p, _| {
            let r = p.as_ptr_range();
            inside = range.start <= r.start && r.end <= range.end;
        });
        assert!(inside, "payload must be a slice of the input buffer");
        assert_eq!(s.reassembly.capacity(), 0, "no reassembly buffer used");
        // Unmasked in place.
        assert!(buf[8..].iter().all(|&b| b == 9));
    }

    #[test]
    fn reassembly_buffer_is_reused() {
        let mut s = session();
        let mut input = cf(false, OpCode::Binary, &[1; 100]);
        input.extend(cf(true, OpCode::Continuation, &[2; 100]));
        feed(&mut s, &input, 1);
        let cap = s.reassembly.capacity();
        let ptr = s.reassembly.as_ptr();
        assert!(cap >= 200);
        feed(&mut s, &input, 2);
        assert_eq!((s.reassembly.capacity(), s.reassembly.as_ptr()), (cap, ptr));
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        assert_failed(&mut session(), &cf(true, OpCode::Text, &[b'a', 0xff]), 1007);
        // Binary is not checked.
        let (_, _, msgs) = feed(&mut session(), &cf(true, OpCode::Binary, &[0xff]), 1);
        assert_eq!(msgs.len(), 1);
    }

    #[test]
    fn fragmented_utf8_fails_fast() {
        let mut s = session();
        feed(&mut s, &cf(false, OpCode::Text, b"ok"), 1);
        // The bad fragment fails although the message is not finished.
        assert_failed(
            &mut s,
            &cf(false, OpCode::Continuation, &[0xc0, 0xaf]),
            1007,
        );
        let mut s = session();
        assert_failed(&mut s, &cf(false, OpCode::Text, &[0xed, 0xa0]), 1007);
    }

    #[test]
    fn fragmented_utf8_code_point_across_fragments() {
        let euro = "€".as_bytes();
        let mut s = session();
        let mut input = cf(false, OpCode::Text, &euro[..1]);
        input.extend(cf(false, OpCode::Continuation, &euro[1..2]));
        input.extend(cf(true, OpCode::Continuation, &euro[2..]));
        let (_, _, msgs) = feed(&mut s, &input, 1);
        assert_eq!(msgs, vec![(MessageKind::Text, euro.to_vec())]);
        // Incomplete at the end of the message.
        let mut s = session();
        let mut input = cf(false, OpCode::Text, b"a");
        input.extend(cf(true, OpCode::Continuation, &euro[..2]));
        assert_failed(&mut s, &input, 1007);
    }

    #[test]
    fn oversized_frame_is_1009_from_header_alone() {
        let mut s = session();
        let mut f = cf(true, OpCode::Binary, &[0; 1001]);
        f.truncate(8); // header only, no payload yet
        assert_failed(&mut s, &f, 1009);
        // Exactly the limit is fine.
        let (_, _, msgs) = feed(&mut session(), &cf(true, OpCode::Binary, &[0; 1000]), 1);
        assert_eq!(msgs[0].1.len(), 1000);
    }

    #[test]
    fn fragments_summing_over_limit_are_1009() {
        let mut s = session();
        feed(&mut s, &cf(false, OpCode::Binary, &[0; 600]), 1);
        let mut f = cf(true, OpCode::Continuation, &[0; 401]);
        f.truncate(8);
        assert_failed(&mut s, &f, 1009);
    }

    #[test]
    fn ping_gets_pong_with_same_payload() {
        let mut s = session();
        let (_, out, _) = feed(&mut s, &cf(true, OpCode::Ping, b"hello"), 1);
        assert_eq!(out, sf(OpCode::Pong, b"hello"));
        assert!(events(&mut s).contains(&SessionEvent::FrameOut {
            opcode: OpCode::Pong,
            len: 5
        }));
    }

    #[test]
    fn unsolicited_pong_is_ignored() {
        let mut s = session();
        let (n, out, msgs) = feed(&mut s, &cf(true, OpCode::Pong, b"zz"), 1);
        assert_eq!(
            (n, out.len(), msgs.len(), s.state()),
            (8, 0, 0, State::Open)
        );
    }

    #[test]
    fn close_is_echoed_with_same_code() {
        let mut s = session();
        let mut c = Vec::new();
        frame::write_masked_frame(&mut c, true, OpCode::Close, b"\x0f\xa0bye", KEY);
        c.extend(cf(true, OpCode::Text, b"after close"));
        let (n, out, msgs) = feed(&mut s, &c, 1);
        assert_eq!(n, c.len());
        assert!(
            msgs.is_empty(),
            "nothing is processed after the peer's Close"
        );
        assert_eq!(out, close_frame(4000));
        assert_eq!(s.state(), State::Closed);
        let ev = events(&mut s);
        assert!(ev.contains(&SessionEvent::CloseReceived { code: Some(4000) }));
        assert!(ev.contains(&SessionEvent::CloseSent { code: 4000 }));
    }

    #[test]
    fn empty_close_gets_empty_close() {
        let mut s = session();
        let (_, out, _) = feed(&mut s, &cf(true, OpCode::Close, b""), 1);
        assert_eq!(out, [0x88, 0x00]);
        assert_eq!(s.state(), State::Closed);
        assert!(events(&mut s).contains(&SessionEvent::CloseReceived { code: None }));
    }

    #[test]
    fn invalid_close_payloads() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_failed(
                &mut session(),
                &cf(true, OpCode::Close, &code.to_be_bytes()),
                1002,
            );
        }
        assert_failed(&mut session(), &cf(true, OpCode::Close, &[3]), 1002);
        assert_failed(
            &mut session(),
            &cf(true, OpCode::Close, &[3, 0xe8, 0xc3]),
            1007,
        );
        for code in [1000u16, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            let mut s = session();
            let (_, out, _) = feed(&mut s, &cf(true, OpCode::Close, &code.to_be_bytes()), 1);
            assert_eq!(out, close_frame(code));
        }
    }

    #[test]
    fn our_close_then_peer_close_completes() {
        let mut s = session();
        let mut out = Vec::new();
        s.close(1000, "Normal closure", 10, &mut out);
        assert_eq!(s.state(), State::Closing);
        let mut want = Vec::new();
        frame::write_close(&mut want, 1000, "Normal closure");
        assert_eq!(out, want);
        // Data in Closing is discarded, pings are not answered.
        let mut input = cf(true, OpCode::Text, b"dropped");
        input.extend(cf(false, OpCode::Continuation, b"no sequencing checks"));
        input.extend(cf(true, OpCode::Ping, b""));
        let (n, out, msgs) = feed(&mut s, &input, 11);
        assert_eq!(
            (n, out.len(), msgs.len(), s.state()),
            (input.len(), 0, 0, State::Closing)
        );
        // send_message is a no-op.
        let mut out = Vec::new();
        s.send_message(MessageKind::Text, b"x", &mut out);
        assert!(out.is_empty());
        let (_, out, _) = feed(&mut s, &cf(true, OpCode::Close, &1000u16.to_be_bytes()), 12);
        assert!(out.is_empty(), "no second Close");
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn close_api_replaces_unsendable_code_and_is_idempotent() {
        let mut s = session();
        let mut out = Vec::new();
        s.close(1005, "", 0, &mut out);
        assert_eq!(out, close_frame(1000));
        s.close(1000, "", 0, &mut out);
        assert_eq!(out, close_frame(1000));
    }

    #[test]
    fn close_timeout() {
        let mut s = session();
        let mut out = Vec::new();
        s.close(1001, "bye", 100, &mut out);
        assert_eq!(s.next_deadline(), Some(150));
        s.on_tick(149, &mut out);
        assert_eq!(s.state(), State::Closing);
        s.on_tick(150, &mut out);
        assert_eq!(s.state(), State::Closed);
        assert!(events(&mut s).contains(&SessionEvent::CloseTimeout));
    }

    #[test]
    fn keepalive_ping_and_failure() {
        let mut s = session(); // timeout 100, max missed 2
        let mut out = Vec::new();
        assert_eq!(s.next_deadline(), Some(100));
        s.on_tick(99, &mut out);
        assert!(out.is_empty());
        s.on_tick(100, &mut out);
        assert_eq!(out, sf(OpCode::Ping, b"ka"));
        out.clear();
        s.on_tick(200, &mut out);
        assert_eq!(out, sf(OpCode::Ping, b"ka"));
        out.clear();
        assert_eq!(s.next_deadline(), Some(300));
        s.on_tick(300, &mut out);
        let mut want = Vec::new();
        frame::write_close(&mut want, 1001, "keep-alive timeout");
        assert_eq!(out, want);
        assert_eq!(s.state(), State::Closed);
        let ev = events(&mut s);
        assert_eq!(
            ev.iter()
                .filter(|e| **e == SessionEvent::KeepaliveSent)
                .count(),
            2
        );
        assert!(ev.contains(&SessionEvent::KeepaliveFailed));
        assert!(ev.contains(&SessionEvent::CloseSent { code: 1001 }));
    }

    #[test]
    fn pong_answer_clears_missed_keepalives() {
        let mut s = session();
        let mut out = Vec::new();
        s.on_tick(100, &mut out);
        s.on_tick(200, &mut out);
        feed(&mut s, &cf(true, OpCode::Pong, b"ka"), 250);
        assert_eq!(s.next_deadline(), Some(350));
        s.on_tick(350, &mut out);
        s.on_tick(450, &mut out);
        assert_eq!(s.state(), State::Open, "count restarted after the Pong");
        s.on_tick(550, &mut out);
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn received_frames_postpone_keepalive() {
        let mut s = session();
        let mut out = Vec::new();
        feed(&mut s, &cf(true, OpCode::Text, b"x"), 80);
        s.on_tick(100, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.next_deadline(), Some(180));
    }

    #[test]
    fn keepalive_pong_mechanism_never_fails() {
        let mut s = session_with(SessionConfig {
            keepalive: KeepaliveMechanism::Pong,
            ..cfg()
        });
        let mut out = Vec::new();
        for t in 1..=10 {
            s.on_tick(t * 100, &mut out);
        }
        let mut want = Vec::new();
        for _ in 0..10 {
            want.extend(sf(OpCode::Pong, b"ka"));
        }
        assert_eq!(out, want);
        assert_eq!(s.state(), State::Open);
    }

    #[test]
    fn keepalive_none_does_nothing() {
        let mut s = session_with(SessionConfig {
            keepalive: KeepaliveMechanism::None,
            ..cfg()
        });
        assert_eq!(s.next_deadline(), None);
        let mut out = Vec::new();
        s.on_tick(1_000_000, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.state(), State::Open);
    }

    #[test]
    fn idle_timeout() {
        let mut s = session_with(SessionConfig {
            keepalive: KeepaliveMechanism::Pong,
            idle_timeout_ms: 250,
            ..cfg()
        });
        let mut out = Vec::new();
        s.on_tick(100, &mut out);
        s.on_tick(200, &mut out);
        // Our own keep-alives are not traffic; a message we send is.
        s.send_message(MessageKind::Text, b"hi", &mut out);
        s.on_tick(220, &mut out);
        assert_eq!(s.last_activity_ms(), 220);
        assert_eq!(s.next_deadline(), Some(300));
        s.on_tick(300, &mut out);
        assert_eq!(s.next_deadline(), Some(400)); // the next keep-alive
        s.on_tick(400, &mut out);
        assert_eq!(s.next_deadline(), Some(470));
        out.clear();
        s.on_tick(470, &mut out);
        let mut want = Vec::new();
        frame::write_close(&mut want, 1001, "idle timeout");
        assert_eq!(out, want);
        assert_eq!(s.state(), State::Closed);
        assert!(events(&mut s).contains(&SessionEvent::IdleTimeout));
    }

    #[test]
    fn outgoing_frames_are_unmasked_and_minimal() {
        let mut s = session();
        let mut out = Vec::new();
        s.send_message(MessageKind::Binary, &[5; 200], &mut out);
        assert_eq!(&out[..4], &[0x82, 126, 0, 200]);
        assert_eq!(out.len(), 204);
        out.clear();
        s.send_message(MessageKind::Text, b"abc", &mut out);
        assert_eq!(out, b"\x81\x03abc");
        out.clear();
        s.ping(&[1; 200], &mut out);
        assert_eq!(&out[..2], &[0x89, 125]);
        out.clear();
        s.pong(b"", &mut out);
        assert_eq!(out, [0x8a, 0]);
    }

    #[test]
    fn handler_output_is_kept_and_counts_as_traffic() {
        let mut s = session_with(SessionConfig {
            idle_timeout_ms: 1000,
            ..cfg()
        });
        let mut buf = cf(true, OpCode::Text, b"echo");
        let mut out = Vec::new();
        s.on_bytes(&mut buf, 40, &mut out, &mut |_, p, o| {
            frame::write_frame(o, OpCode::Text, p)
        });
        assert_eq!(out, sf(OpCode::Text, b"echo"));
        assert_eq!(s.last_activity_ms(), 40);
    }

    #[test]
    fn event_queue_is_bounded() {
        let mut s = session();
        let one = cf(true, OpCode::Pong, b"");
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 3000).collect();
        feed(&mut s, &input, 1);
        assert_eq!(events(&mut s).len(), MAX_QUEUED_EVENTS);
        assert!(s.events.capacity() <= EVENTS_KEEP);
    }

    // A stream of client frames: messages (possibly fragmented, with control
    // frames between fragments) and pings, each with its own mask.
    #[derive(Debug, Clone)]
    enum Item {
        Message {
            text: bool,
            body: Vec<u8>,
            cuts: Vec<usize>,
            ping_between: bool,
        },
        Ping(Vec<u8>),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (
                any::<bool>(),
                any::<String>(),
                prop::collection::vec(0usize..300, 0..4),
                any::<bool>()
            )
                .prop_map(|(text, s, mut cuts, ping_between)| {
                    cuts.sort_unstable();
                    Item::Message {
                        text,
                        body: s.into_bytes(),
                        cuts,
                        ping_between,
                    }
                }),
            prop::collection::vec(any::<u8>(), 0..126).prop_map(Item::Ping),
        ]
    }

    fn encode(items: &[Item], masks: &[[u8; 4]]) -> (Vec<u8>, Msgs) {
        let mut bytes = Vec::new();
        let mut msgs = Vec::new();
        let mut m = masks.iter().copied().cycle();
        for it in items {
            match it {
                Item::Ping(p) => frame::write_masked_frame(
                    &mut bytes,
                    true,
                    OpCode::Ping,
                    p,
                    m.next().unwrap_or(KEY),
                ),
                Item::Message {
                    text,
                    body,
                    cuts,
                    ping_between,
                } => {
                    let kind = if *text {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    };
                    let first = if *text { OpCode::Text } else { OpCode::Binary };
                    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
                    bounds.push(body.len());
                    let mut start = 0;
                    for (i, &end) in bounds.iter().enumerate() {
                        let op = if i == 0 { first } else { OpCode::Continuation };
                        let fin = i + 1 == bounds.len();
                        let key = m.next().unwrap_or(KEY);
                        frame::write_masked_frame(&mut bytes, fin, op, &body[start..end], key);
                        if *ping_between && !fin {
                            frame::write_masked_frame(&mut bytes, true, OpCode::Ping, b"mid", key);
                        }
                        start = end;
                    }
                    msgs.push((kind, body.clone()));
                }
            }
        }
        (bytes, msgs)
    }

    /// Feed with the keep-the-unconsumed-tail protocol a reactor uses.
    fn feed_chunks(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Msgs, State, usize) {
        let mut s = WsSession::new(
            Arc::new(SessionConfig {
                max_message_size: 1 << 20,
                ..cfg()
            }),
            0,
        );
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        let mut start = 0;
        let ends = cuts
            .iter()
            .map(|&c| c.min(bytes.len()))
            .chain([bytes.len()]);
        for end in ends {
            pending.extend_from_slice(&bytes[start..end.max(start)]);
            start = end.max(start);
            let n = s.on_bytes(&mut pending, 1, &mut out, &mut |k, p, o| {
                msgs.push((k, p.to_vec()));
                frame::write_frame(o, OpCode::Binary, p);
            });
            pending.drain(..n);
        }
        (out, msgs, s.state(), pending.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn chunking_does_not_change_the_result(
            items in prop::collection::vec(item(), 1..6),
            masks in prop::collection::vec(any::<[u8; 4]>(), 1..4),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let (bytes, expect) = encode(&items, &masks);
            let whole = feed_chunks(&bytes, &[]);
            prop_assert_eq!(&whole.1, &expect);
            prop_assert_eq!(whole.2, State::Open);
            prop_assert_eq!(whole.3, 0, "everything consumed at the end");
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let split = feed_chunks(&bytes, &cuts);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn arbitrary_input_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            cut in any::<prop::sample::Index>(),
        ) {
            let c = cut.index(bytes.len() + 1);
            let _ = feed_chunks(&bytes, &[c]);
        }
    }

    /// Data frames of every shape, then cut anywhere: the streamed pieces
    /// put together are the messages, and what waits unconsumed is never
    /// more than a frame header (the payload is never held back).
    fn streamed_input() -> (Vec<u8>, Msgs) {
        let big: Vec<u8> = "MSRP abcd SEND\r\n€ body ".repeat(40).into_bytes();
        let mut input = Vec::new();
        input.extend(cf(true, OpCode::Text, &big));
        input.extend(cf(true, OpCode::Binary, &[0, 255, 7, 9, 1]));
        input.extend(cf(false, OpCode::Text, "ab€".as_bytes()));
        input.extend(cf(false, OpCode::Continuation, b""));
        input.extend(cf(true, OpCode::Continuation, "cd".as_bytes()));
        input.extend(cf(true, OpCode::Text, b""));
        let msgs = vec![
            (MessageKind::Text, big),
            (MessageKind::Binary, vec![0, 255, 7, 9, 1]),
            (MessageKind::Text, "ab€cd".as_bytes().to_vec()),
            (MessageKind::Text, Vec::new()),
        ];
        (input, msgs)
    }

    #[test]
    fn streamed_messages_arrive_whole_however_the_input_is_cut() {
        let (input, want) = streamed_input();
        for cut in 0..=input.len() {
            let mut s = session_with(SessionConfig {
                max_message_size: 4096,
                ..cfg()
            });
            let (pieces, out, most_held) = feed_streamed(&mut s, &input, &[cut]);
            assert_eq!(joined(&pieces), want, "cut at {cut}");
            assert!(out.is_empty());
            assert!(most_held <= 14, "cut at {cut}: {most_held} bytes held");
            assert_eq!(s.state(), State::Open);
        }
    }

    #[test]
    fn a_streamed_frame_with_a_control_frame_between_fragments() {
        let mut input = cf(false, OpCode::Binary, b"one-");
        input.extend(cf(true, OpCode::Ping, b"p"));
        input.extend(cf(true, OpCode::Continuation, b"two"));
        let mut s = session();
        let (pieces, out, _) = feed_streamed(&mut s, &input, &[3, 9, 12]);
        assert_eq!(
            joined(&pieces),
            vec![(MessageKind::Binary, b"one-two".to_vec())]
        );
        assert_eq!(out, sf(OpCode::Pong, b"p"));
    }

    proptest! {
        #[test]
        fn streamed_pieces_survive_any_cuts(mut cuts in proptest::collection::vec(0usize..1200, 0..6)) {
            let (input, want) = streamed_input();
            cuts.sort_unstable();
            let mut s = session_with(SessionConfig { max_message_size: 4096, ..cfg() });
            let (pieces, _, most_held) = feed_streamed(&mut s, &input, &cuts);
            prop_assert_eq!(joined(&pieces), want);
            prop_assert!(most_held <= 14);
        }
    }

    #[test]
    fn streamed_text_fails_at_the_first_invalid_piece() {
        let mut payload = b"valid start ".to_vec();
        payload.extend_from_slice(&[0xff, b'x']);
        let input = cf(true, OpCode::Text, &payload);
        let mut s = session();
        // The valid first part is handed over; the piece with 0xff fails.
        let (pieces, out, _) = feed_streamed(&mut s, &input, &[6 + 12]);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].1, b"valid start ");
        assert!(pieces[0].2 && !pieces[0].3);
        assert_eq!(
            out.get(2..4),
            Some(&close::INVALID_PAYLOAD.to_be_bytes()[..])
        );
        assert_eq!(s.state(), State::Closed);
        // A code point cut by the end of the message is invalid too.
        let mut s = session();
        let (_, out, _) = feed_streamed(&mut s, &cf(true, OpCode::Text, &[b'a', 0xe2, 0x82]), &[7]);
        assert_eq!(
            out.get(2..4),
            Some(&close::INVALID_PAYLOAD.to_be_bytes()[..])
        );
    }

    #[test]
    fn a_streamed_message_over_the_limit_is_refused_from_its_header() {
        let mut s = session(); // max_message_size 1000
        let mut input = cf(false, OpCode::Binary, &[1; 600]);
        input.extend(cf(true, OpCode::Continuation, &[2; 600]));
        let (pieces, out, _) = feed_streamed(&mut s, &input, &[]);
        assert_eq!(pieces.len(), 1, "the first frame, within the limit");
        assert_eq!(
            out.get(2..4),
            Some(&close::MESSAGE_TOO_BIG.to_be_bytes()[..])
        );
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn closing_mid_frame_skips_the_rest_of_it_and_reads_the_close() {
        let mut s = session();
        let frame = cf(true, OpCode::Binary, &[7; 300]);
        let (pieces, _, _) = feed_streamed(&mut s, &frame[..100], &[]);
        assert_eq!(pieces.len(), 1);
        let mut out = Vec::new();
        s.close(1000, "bye", 1, &mut out);
        let mut rest = frame[100..].to_vec();
        rest.extend(cf(true, OpCode::Close, &1000u16.to_be_bytes()));
        let (pieces, _, held) = feed_streamed(&mut s, &rest, &[50]);
        assert!(pieces.is_empty(), "nothing handed over after the close");
        assert_eq!(held, 0);
        assert_eq!(s.state(), State::Closed, "the peer's Close was read");
    }
}
