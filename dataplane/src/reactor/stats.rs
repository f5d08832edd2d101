//! The worker's view of the stats region: maps the engines' and reactor's
//! own types onto the region's label enums, so the region stays a leaf
//! module the management service can depend on alone.

use super::conn::Conn;
use crate::config::{SubProtocol, Transport};
use crate::msrp::message::Method;
use crate::msrp::relay::Stat;
use crate::region::{self, ConnInfo, ConnState, Counter, Event, Histogram, Region};
use crate::ws::frame::OpCode;
use crate::ws::handshake::RejectReason;
use std::sync::Arc;

pub use crate::region::{Command, CommandKind};

pub struct WorkerStats {
    region: Arc<Region>,
    core: u32,
}

fn transport(t: Transport) -> region::Transport {
    match t {
        Transport::Ws => region::Transport::Ws,
        Transport::Wss => region::Transport::Wss,
        Transport::Msrp => region::Transport::Msrp,
        Transport::Msrps => region::Transport::Msrps,
        Transport::SipUdp => region::Transport::SipUdp,
        Transport::SipTcp => region::Transport::SipTcp,
    }
}

fn sub_protocol(s: SubProtocol) -> region::SubProtocol {
    match s {
        SubProtocol::Sip => region::SubProtocol::Sip,
        SubProtocol::Msrp => region::SubProtocol::Msrp,
        SubProtocol::Xmpp => region::SubProtocol::Xmpp,
        SubProtocol::Echo => region::SubProtocol::Echo,
    }
}

fn opcode(o: OpCode) -> region::Opcode {
    match o {
        OpCode::Continuation => region::Opcode::Continuation,
        OpCode::Text => region::Opcode::Text,
        OpCode::Binary => region::Opcode::Binary,
        OpCode::Close => region::Opcode::Close,
        OpCode::Ping => region::Opcode::Ping,
        OpCode::Pong => region::Opcode::Pong,
    }
}

fn msrp_method(m: Method) -> region::MsrpMethod {
    match m {
        Method::Send => region::MsrpMethod::Send,
        Method::Report => region::MsrpMethod::Report,
        Method::Auth => region::MsrpMethod::Auth,
        Method::Other => region::MsrpMethod::Other,
    }
}

fn handshake_reason(r: RejectReason) -> region::HandshakeReason {
    use region::HandshakeReason as H;
    match r {
        RejectReason::Malformed => H::Malformed,
        RejectReason::Method => H::Method,
        RejectReason::HttpVersion => H::HttpVersion,
        RejectReason::Host => H::Host,
        RejectReason::Upgrade => H::Upgrade,
        RejectReason::Connection => H::Connection,
        RejectReason::Key => H::Key,
        RejectReason::Version => H::Version,
        RejectReason::Path => H::Path,
        RejectReason::HostNotAllowed => H::HostNotAllowed,
        RejectReason::Origin => H::Origin,
        RejectReason::AuthRequired => H::AuthRequired,
        RejectReason::AuthFailed => H::AuthFailed,
        RejectReason::SubProtocol => H::SubProtocol,
        RejectReason::TooLarge => H::TooLarge,
        RejectReason::Disabled => H::Disabled,
        RejectReason::Timeout => H::Timeout,
    }
}

impl WorkerStats {
    pub fn new(region: Arc<Region>, core: u32) -> WorkerStats {
        WorkerStats { region, core }
    }

    #[inline]
    fn core(&self) -> region::CoreStats<'_> {
        self.region.core(self.core)
    }

    pub fn loop_iteration(&mut self) {
        self.core().inc(Counter::ReactorLoops);
    }
    pub fn completions(&mut self, n: u64) {
        self.core().add(Counter::ReactorCompletions, n);
    }
    pub fn inbox_message(&mut self) {
        self.core().inc(Counter::InboxMessages);
    }
    pub fn heartbeat(&mut self, unix_ms: u64) {
        self.core().heartbeat(unix_ms);
    }

    pub fn accepted(&mut self, t: Transport) {
        let c = self.core();
        c.inc(Counter::ConnectionsAccepted(transport(t)));
        c.inc(Counter::ConnectionsActive(transport(t)));
    }
    pub fn closed(&mut self, t: Transport) {
        let c = self.core();
        c.inc(Counter::ConnectionsClosed(transport(t)));
        c.dec(Counter::ConnectionsActive(transport(t)));
    }
    /// A connection stopped being read because its peer does not read.
    pub fn backpressure(&mut self) {
        self.core().inc(Counter::BackpressurePauses);
    }
    pub fn rejected_limit(&mut self) {
        self.core()
            .inc(Counter::ConnectionsRejected(region::RejectReason::Limit));
    }
    pub fn accept_error(&mut self) {
        self.core().inc(Counter::ConnectionsRejected(
            region::RejectReason::AcceptError,
        ));
    }

    pub fn handshake_accepted(&mut self, elapsed_us: u64) {
        let c = self.core();
        c.inc(Counter::Handshakes(region::HandshakeReason::Accepted));
        c.observe(Histogram::HandshakeDuration, elapsed_us);
    }
    pub fn handshake_rejected(&mut self, r: RejectReason) {
        self.core().inc(Counter::Handshakes(handshake_reason(r)));
    }
    pub fn handshake_timeout(&mut self) {
        self.core().inc(Counter::HandshakeTimeouts);
    }
    pub fn ws_session_opened(&mut self, s: SubProtocol) {
        let c = self.core();
        c.inc(Counter::WsSessionsTotal(sub_protocol(s)));
        c.inc(Counter::WsSessionsActive(sub_protocol(s)));
    }
    pub fn ws_session_closed(&mut self, s: SubProtocol) {
        let c = self.core();
        c.dec(Counter::WsSessionsActive(sub_protocol(s)));
        c.inc(Counter::WsSessionsClosed(sub_protocol(s)));
    }

    pub fn frame_in(&mut self, o: OpCode) {
        self.core().inc(Counter::FramesReceived(opcode(o)));
    }
    pub fn frame_out(&mut self, o: OpCode) {
        self.core().inc(Counter::FramesSent(opcode(o)));
    }
    /// `n` data frames written by a message handler (echo).
    pub fn data_frames_out(&mut self, binary: u64, text: u64) {
        let c = self.core();
        if binary > 0 {
            c.add(Counter::FramesSent(region::Opcode::Binary), binary);
        }
        if text > 0 {
            c.add(Counter::FramesSent(region::Opcode::Text), text);
        }
    }
    pub fn bytes_in(&mut self, t: Transport, n: u64) {
        self.core().add(Counter::BytesReceived(transport(t)), n);
    }
    pub fn bytes_out(&mut self, t: Transport, n: u64) {
        self.core().add(Counter::BytesSent(transport(t)), n);
    }
    pub fn messages_in(&mut self, s: SubProtocol, n: u64) {
        if n > 0 {
            self.core()
                .add(Counter::MessagesReceived(sub_protocol(s)), n);
        }
    }
    pub fn messages_out(&mut self, s: SubProtocol, n: u64) {
        if n > 0 {
            self.core().add(Counter::MessagesSent(sub_protocol(s)), n);
        }
    }
    pub fn messages_dropped(&mut self, s: SubProtocol, n: u64) {
        if n > 0 {
            self.core()
                .add(Counter::MessagesDropped(sub_protocol(s)), n);
        }
    }

    pub fn close_sent(&mut self, code: u16) {
        self.core()
            .inc(Counter::CloseCodesSent(region::CloseCode::from_u16(code)));
    }
    pub fn close_received(&mut self, code: Option<u16>) {
        let bucket = region::CloseCode::from_u16(code.unwrap_or(1005));
        self.core().inc(Counter::CloseCodesReceived(bucket));
    }
    pub fn keepalive_sent(&mut self) {
        self.core().inc(Counter::KeepalivesSent);
    }
    pub fn keepalive_failed(&mut self) {
        self.core().inc(Counter::KeepaliveFailures);
    }
    pub fn idle_timeout(&mut self) {
        self.core().inc(Counter::IdleTimeouts);
    }
    pub fn close_timeout(&mut self) {
        self.core().inc(Counter::CloseTimeouts);
    }
    pub fn protocol_error(&mut self, code: u16) {
        self.core()
            .inc(Counter::ProtocolErrors(region::CloseCode::from_u16(code)));
    }
    pub fn tls_result(&mut self, ok: bool) {
        let r = if ok {
            region::TlsResult::Ok
        } else {
            region::TlsResult::Failed
        };
        self.core().inc(Counter::TlsHandshakes(r));
    }

    /// Event stream: a WebSocket session opened.
    pub fn event_opened(&mut self, c: &Conn, s: SubProtocol, info: &str, unix_ms: u64) {
        self.core().event(&Event::opened(
            c.id,
            unix_ms,
            c.peer,
            transport(c.transport),
            sub_protocol(s),
            info,
        ));
    }

    /// Event stream: a handshake was refused.
    pub fn event_rejected(&mut self, c: &Conn, r: RejectReason, unix_ms: u64) {
        self.core().event(&Event::rejected(
            c.id,
            unix_ms,
            c.peer,
            transport(c.transport),
            handshake_reason(r),
        ));
    }

    /// Event stream: a WebSocket session ended (`code`: the close status
    /// exchanged, `None` when the connection ended without one).
    pub fn event_closed(
        &mut self,
        c: &Conn,
        s: SubProtocol,
        code: Option<u16>,
        reason: &str,
        unix_ms: u64,
    ) {
        self.core().event(&Event::closed(
            c.id,
            unix_ms,
            c.peer,
            transport(c.transport),
            sub_protocol(s),
            code,
            reason,
        ));
    }

    /// Publish a new connection in slot `idx`; returns its id.
    pub fn slot_open(&mut self, idx: u32, c: &Conn) -> u64 {
        self.core().slot_open(
            idx,
            &ConnInfo {
                peer: c.peer,
                local: c.local,
                transport: transport(c.transport),
                sub_protocol: region::SubProtocol::None,
                state: ConnState::Handshake,
                created_ms: c.created_unix_ms,
                info: "",
            },
        )
    }

    pub fn slot_ws_open(&mut self, idx: u32, s: SubProtocol, info: &str) {
        self.core().slot_update(idx, |w| {
            w.set_state(ConnState::Open);
            w.set_sub_protocol(sub_protocol(s));
            w.set_info(info);
        });
    }

    /// Replace slot `idx`'s info text (an MSRP connection's role and
    /// session, for the connection dump).
    pub fn slot_info(&mut self, idx: u32, info: &str) {
        self.core().slot_update(idx, |w| w.set_info(info));
    }

    pub fn slot_update(&mut self, idx: u32, c: &Conn) {
        let closing = c.teardown != super::conn::Teardown::Open;
        self.core().slot_update(idx, |w| {
            w.set_traffic(c.frames_in, c.frames_out, c.bytes_in, c.bytes_out);
            w.set_last_used(c.last_used_unix_ms);
            if closing {
                w.set_state(ConnState::Closing);
            }
        });
    }

    pub fn slot_close(&mut self, idx: u32) {
        self.core().slot_close(idx);
    }

    /// Publish MSRP session slot `idx` in the region's session table.
    pub fn msrp_session_put(&mut self, idx: u32, info: &region::MsrpSessionInfo<'_>) {
        self.core().msrp_session_put(idx, info);
    }

    /// Free MSRP session slot `idx`.
    pub fn msrp_session_free(&mut self, idx: u32) {
        self.core().msrp_session_free(idx);
    }

    /// An MSRP engine statistic.
    pub fn msrp(&mut self, s: Stat) {
        use region::{AuthResult, MsrpStatus};
        let c = self.core();
        match s {
            Stat::FrameIn {
                method: Some(m), ..
            } => c.inc(Counter::MsrpRequestsReceived(msrp_method(m))),
            Stat::FrameIn { .. } => {}
            Stat::Rejected { code } => c.inc(Counter::MsrpResponses(MsrpStatus::from_u16(code))),
            Stat::AuthGranted => {
                c.inc(Counter::MsrpAuth(AuthResult::Ok));
                c.inc(Counter::MsrpResponses(MsrpStatus::Ok));
            }
            Stat::AuthChallenged => {
                c.inc(Counter::MsrpAuth(AuthResult::Challenged));
                c.inc(Counter::MsrpResponses(MsrpStatus::Unauthorized));
            }
            Stat::AuthFailed => {
                c.inc(Counter::MsrpAuth(AuthResult::Failed));
                c.inc(Counter::MsrpResponses(MsrpStatus::Forbidden));
            }
            Stat::SessionCreated => c.inc(Counter::MsrpSessionsActive),
            Stat::SessionsRemoved(n) => c.sub(Counter::MsrpSessionsActive, n as u64),
            Stat::FailureReport { .. } => c.inc(Counter::MsrpFailureReports),
            Stat::Malformed => c.inc(Counter::MsrpMalformed),
            Stat::Rechunked => c.inc(Counter::MsrpRechunked),
            Stat::SipRefused => c.inc(Counter::SipRefused),
        }
    }

    /// A request forwarded to its next hop, with `body` bytes.
    pub fn msrp_relayed(&mut self, head: &[u8], body: u64) {
        let c = self.core();
        let method = head
            .split(|&b| b == b' ' || b == b'\r')
            .nth(2)
            .unwrap_or(&[]);
        c.inc(Counter::MsrpRequestsRelayed(
            region::MsrpMethod::from_token(method),
        ));
        if body > 0 {
            c.add(Counter::MsrpRelayedBytes, body);
        }
    }

    /// A chunk another core handed over toward a connection of this one.
    pub fn msrp_handoff(&mut self) {
        self.core().inc(Counter::MsrpHandoffs);
    }

    /// A forwarded chunk was queued with its `body` bytes left in the
    /// provided buffer they were received in (no copy).
    pub fn msrp_zero_copy(&mut self, body: u64) {
        let c = self.core();
        c.inc(Counter::MsrpZeroCopyChunks);
        c.add(Counter::MsrpZeroCopyBytes, body);
    }

    /// Provided receive buffers held by queued output now.
    pub fn recv_buffers_held(&mut self, n: usize) {
        self.core().set(Counter::RecvBuffersHeld, n as u64);
    }

    /// An MSRP sender stopped being read (flow control).
    pub fn msrp_sender_pause(&mut self) {
        self.core().inc(Counter::MsrpSenderPauses);
    }

    /// A forwarded chunk reached its target's output, `us` after its last
    /// byte was read.
    pub fn relay_latency_us(&mut self, us: u64) {
        self.core().observe(Histogram::RelayLatency, us);
    }

    /// A hop-by-hop 200 the relay answered itself.
    pub fn msrp_ok_sent(&mut self) {
        self.core()
            .inc(Counter::MsrpResponses(region::MsrpStatus::Ok));
    }

    pub fn drain_commands(&mut self, f: impl FnMut(Command)) {
        self.core().drain_commands(f);
    }
}
