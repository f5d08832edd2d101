//! One reactor: a thread, pinned to its core, owning one io_uring instance,
//! its listeners (SO_REUSEPORT), its connection table, its provided-buffer
//! ring, its timer wheel and its inbox. The only place that does I/O.
//!
//! Per loop iteration: wait for completions, handle each (accept, recv, send,
//! tick, inbox), then flush: every connection that produced output while the
//! batch was handled gets exactly one send of everything it produced (corked).

use super::bufring::BufRing;
use super::conn::{BodySegs, Conn, ConnTable, Piece, Proto, Teardown, WsConn};
use super::flow::FlowWindow;
use super::msrp::{self as glue, Effect, MsrpCtx, RingBody, RingInput};
use super::stats::WorkerStats;
use super::timer::TimerWheel;
use super::token::{Op, Token};
use super::{InboxMsg, Shared, resolver};
use crate::config::{SubProtocol, Transport};
use crate::msrp::relay::{Action, RelayCore, Target, TxnId};
use crate::msrp::session_map::{SessionId, SessionMap};
use crate::transport::TlsSession;
use crate::ws::frame::{self, OpCode};
use crate::ws::handshake::{self, Outcome, RejectReason};
use crate::ws::session::{MessageKind, SessionEvent, State, WsSession};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;

/// Timer wheel resolution and the period of the worker's tick.
const TICK_MS: u64 = 50;
const WHEEL_SLOTS: usize = 4096;
/// Ciphertext rustls has not accepted yet, at most.
const MAX_TLS_PENDING: usize = 256 * 1024;
/// Output buffers kept for reuse per worker.
const POOL_MAX: usize = 1024;
/// Pooled buffers kept for connections' output before any goes to the
/// relay engine.
const POOL_RESERVE: usize = 32;
/// Capacity of an output buffer made when the pool is empty.
const NEW_BUF: usize = 4096;
/// Buffers larger than this are freed rather than pooled.
const POOL_BUF_MAX: usize = 64 * 1024;
/// Bytes of pooled buffers per worker, at most: the pool holds touched
/// memory, so it must not keep what a burst of large output needed.
const POOL_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Size of the ring's fixed-file table, at most (kernel memory: 8 bytes a
/// slot). Connections in slots beyond it use their plain descriptor.
const FIXED_FILES_MAX: u32 = 1 << 16;

/// Output buffers kept for reuse, bounded in count and in bytes (pooled
/// buffers are touched memory).
#[derive(Default)]
pub(super) struct BufPool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufPool {
    /// A pooled (empty) buffer, or a new one (sized so that a batch of
    /// small frames does not grow it by reallocation).
    pub(super) fn take(&mut self) -> Vec<u8> {
        let b = self
            .bufs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_BUF));
        self.bytes = self.bytes.saturating_sub(b.capacity());
        b
    }

    /// Whether `b` is large enough to be an output buffer (what
    /// [`BufPool::take`] hands out): a batch of small frames fits without
    /// reallocation.
    pub(super) fn fits(b: &Vec<u8>) -> bool {
        b.capacity() >= NEW_BUF
    }

    /// Makes an empty output buffer `out` a pooled one (a batch of frames
    /// written into a buffer that grows from small would be copied again
    /// by every reallocation); the small buffer it replaces, if it had any
    /// capacity, is returned for reuse.
    pub(super) fn make_output(&mut self, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        if !out.is_empty() || BufPool::fits(out) {
            return None;
        }
        Some(std::mem::replace(out, self.take())).filter(|b| b.capacity() > 0)
    }

    pub(super) fn put(&mut self, mut b: Vec<u8>) {
        // Smaller buffers (the relay engine's) would grow by reallocation
        // as output.
        if !BufPool::fits(&b)
            || b.capacity() > POOL_BUF_MAX
            || self.bufs.len() >= POOL_MAX
            || self.bytes + b.capacity() > POOL_BYTES_MAX
        {
            return;
        }
        b.clear();
        self.bytes += b.capacity();
        self.bufs.push(b);
    }
}

pub struct Listener {
    pub socket: socket2::Socket,
    pub transport: Transport,
    pub index: u16,
    pub local: SocketAddr,
}

pub struct Worker {
    core: u32,
    ring: IoUring,
    bufs: BufRing,
    /// Slots of the ring's fixed-file table (0: none registered).
    fixed_files: u32,
    shared: Arc<Shared>,
    listeners: Vec<Option<Listener>>,
    conns: ConnTable,
    wheel: TimerWheel,
    stats: WorkerStats,
    dirty: Vec<u32>,
    /// The dirty list being flushed (kept to reuse its allocation).
    flushing: Vec<u32>,
    /// Connections whose region slot is stale, published on the tick.
    slots_stale: Vec<(u32, u32)>,
    rearm: Vec<(u32, u32)>,
    pool: BufPool,
    /// Completion batching (0: wake on the first completion).
    batch_wait_us: u32,
    batch_size: usize,
    /// Completions of the current batch (reused).
    cqes: Vec<(u64, i32, u32)>,
    /// Wall clock read once per loop iteration.
    loop_unix_ms: u64,
    /// The loop's monotonic clock reading, µs.
    loop_us: u64,
    /// Scratch for decrypted TLS plaintext.
    scratch: Vec<u8>,
    tick_ts: types::Timespec,
    inbox_buf: Box<u64>,
    draining_since: Option<u64>,
    /// Pending output above which a connection stops being read, and
    /// below which it is read again.
    output_high: usize,
    output_low: usize,
    /// Multishot accepts not yet ended.
    accepts_armed: u32,
    /// Addresses of connects in flight (the kernel reads them).
    connect_addrs: Vec<(u32, Box<socket2::SockAddr>)>,
    /// This core's MSRP relay state (sessions, forwarded transactions).
    relay: RelayCore,
    msrp_actions: Vec<Action>,
    msrp_effects: Vec<Effect>,
    msrp_effects_spare: Vec<Effect>,
    /// Outbound MSRP connections by next-hop address (reused).
    outbound: HashMap<(SocketAddr, bool), (u32, u32)>,
    msrp_timer_ms: u64,
    msrp_sweep_ms: u64,
    /// Session-table slots of the stats region in use, by session.
    msrp_slots: HashMap<SessionId, u32>,
    /// Freed session-table slots, and the next never-used one.
    msrp_slots_free: Vec<u32>,
    msrp_slots_next: u32,
    /// MSRP flow window (bytes of a sender's chunks in other connections'
    /// output) at which the sender stops being read, and at which it is
    /// read again.
    relay_window_high: usize,
    relay_window_low: usize,
    /// Senders paused by flow control (checked on each tick).
    relay_paused: Vec<(u32, u32)>,
    /// Senders to wake (reused).
    wake_list: Vec<u64>,
    /// Emptied buffers a queued frame took the place of (for reuse).
    displaced: Vec<Vec<u8>>,
    /// When each chunk queued in this loop was read (µs).
    relayed_in_us: Vec<u64>,
    /// Resolved next-hop names: address and until when it is used.
    dns_cache: HashMap<(String, u16), (SocketAddr, u64)>,
    /// Frames waiting for a next hop's name to resolve.
    dns_waiting: HashMap<(String, u16), Vec<WaitingFrame>>,
    /// Connections whose output holds provided buffers: slot, generation,
    /// bytes sent and wall-clock ms when that last changed.
    pinned: Vec<(u32, u32, u64, u64)>,
    /// Connections whose chunk in progress holds provided buffers across
    /// inputs: slot, generation, since (unix ms).
    fwd_pinned: Vec<(u32, u32, u64)>,
}

/// A forwarded frame waiting for its next hop's address.
struct WaitingFrame {
    secure: bool,
    frame: Vec<u8>,
    txn: Option<TxnId>,
    window: Arc<FlowWindow>,
    in_us: u64,
}

/// A send that holds provided buffers and has not progressed for this long
/// is cancelled, its bodies copied and sent again: a peer that stopped
/// reading pins no receive buffer for longer.
const PIN_MAX_MS: u64 = 100;

/// Frames that may wait for one name (then 408 failure REPORTs).
const DNS_QUEUE_MAX: usize = 4096;

/// Period of the MSRP transaction-timeout scan.
const MSRP_TIMER_MS: u64 = 1000;

impl Worker {
    pub fn new(core: u32, shared: Arc<Shared>, listeners: Vec<Listener>) -> io::Result<Worker> {
        let rc = &shared.config.reactor;
        let ring = build_ring(rc.ring_entries)?;
        let bufs = BufRing::new(
            &ring,
            0,
            rc.recv_buffers,
            rc.recv_buffer_size,
            shared.rings.clone(),
            core as u8,
        )?;
        let fixed_files = register_file_table(&ring, rc.max_connections_per_worker);
        let ring_min_timeout = ring.params().is_feature_min_timeout();
        let now = shared.now_ms();
        let stats = WorkerStats::new(shared.region.clone(), core);
        let output_high = (2 * shared.config.websocket.max_message_size).max(1 << 20) + 65536;
        let workers = shared.inboxes.len();
        let mut relay = RelayCore::new(
            shared.relay_config.clone(),
            core as u8,
            SessionMap::per_core_capacity(shared.config.msrp.cmap_size, workers),
        );
        relay.sessions.track_changes();
        Ok(Worker {
            core,
            ring,
            bufs,
            fixed_files,
            listeners: listeners.into_iter().map(Some).collect(),
            conns: ConnTable::new(),
            wheel: TimerWheel::new(TICK_MS, WHEEL_SLOTS, now),
            stats,
            dirty: Vec::new(),
            flushing: Vec::new(),
            slots_stale: Vec::new(),
            rearm: Vec::new(),
            pool: BufPool::default(),
            scratch: Vec::new(),
            cqes: Vec::with_capacity(256),
            batch_wait_us: if ring_min_timeout {
                rc.batch_wait_us
            } else {
                0
            },
            batch_size: rc.batch_size.max(1) as usize,
            loop_unix_ms: 0,
            loop_us: 0,
            tick_ts: types::Timespec::new().nsec((TICK_MS * 1_000_000) as u32),
            inbox_buf: Box::new(0),
            draining_since: None,
            connect_addrs: Vec::new(),
            accepts_armed: 0,
            output_high,
            output_low: output_high / 4,
            relay,
            msrp_actions: Vec::new(),
            msrp_effects: Vec::new(),
            msrp_effects_spare: Vec::new(),
            outbound: HashMap::new(),
            msrp_timer_ms: now,
            msrp_sweep_ms: now,
            msrp_slots: HashMap::new(),
            msrp_slots_free: Vec::new(),
            msrp_slots_next: 0,
            relay_window_high: shared.config.msrp.relay_window,
            relay_window_low: shared.config.msrp.relay_window / 2,
            relay_paused: Vec::new(),
            wake_list: Vec::new(),
            displaced: Vec::new(),
            relayed_in_us: Vec::new(),
            dns_cache: HashMap::new(),
            dns_waiting: HashMap::new(),
            pinned: Vec::new(),
            fwd_pinned: Vec::new(),
            shared,
        })
    }

    /// Run until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        for i in 0..self.listeners.len() {
            self.arm_accept(i as u32);
        }
        self.arm_tick();
        self.arm_inbox();
        // Alive from the start: readiness must not wait for the first tick.
        self.stats.heartbeat(self.shared.unix_ms());
        loop {
            let inbox = &self.shared.inboxes[self.core as usize];
            inbox.prepare_sleep();
            let idle = inbox.is_empty();
            let r = if !idle {
                self.ring.submit()
            } else if self.batch_wait_us > 0 {
                // Wait for a batch: once the first completion is in, wait up
                // to batch_wait_us for more before waking. Fewer wake-ups per
                // message (on a VM each costs microseconds) for at most that
                // much added latency.
                let args = types::SubmitArgs::new().min_wait_usec(self.batch_wait_us);
                self.ring
                    .submitter()
                    .submit_with_args(self.batch_size, &args)
            } else {
                self.ring.submit_and_wait(1)
            };
            match r {
                Ok(_) => {}
                // ETIME: the batching wait ended (it is not an error).
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            // One clock read per loop: it also stamps the MSRP chunks this
            // loop reads (relay latency starts when their completion is
            // reaped).
            self.loop_us = self.shared.now_us();
            let now = self.loop_us / 1000;
            self.stats.loop_iteration();
            self.loop_unix_ms = self.shared.mono_to_unix_ms(now);
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            self.stats.completions(cqes.len() as u64);
            // Holds other cores ended (bodies they sent from our buffers)
            // first: the buffers go back before this turn reads more.
            if self.bufs.drain_released() {
                self.stats.recv_buffers_held(self.bufs.held());
            }
            for &(ud, res, flags) in &cqes {
                self.on_completion(ud, res, flags, now);
            }
            self.cqes = cqes;
            self.drain_inbox(now);
            self.flush_all(now);
            // Buffers set aside this turn (displaced output) go back.
            self.recycle_displaced();
            self.record_relay_latency();
            let mut rearm = std::mem::take(&mut self.rearm);
            for &(idx, g) in &rearm {
                if let Some(c) = self.conns.get_mut(idx, g)
                    && !c.recv_armed
                    && !c.read_paused()
                    && c.teardown == Teardown::Open
                {
                    self.arm_recv(idx);
                }
            }
            rearm.clear();
            self.rearm = rearm;
            if self.check_shutdown(now) {
                break;
            }
        }
        self.bufs.unregister(&self.ring);
        Ok(())
    }

    // ---- submission helpers ----

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: every entry built here points only at memory owned by the
        // worker or its connections (buffers, timespec, inbox word), which
        // stays in place until the matching completion arrives.
        unsafe {
            while self.ring.submission().push(&sqe).is_err() {
                let _ = self.ring.submit();
            }
        }
    }

    fn arm_accept(&mut self, i: u32) {
        let Some(Some(l)) = self.listeners.get(i as usize) else {
            return;
        };
        let fd = l.socket.as_raw_fd();
        let ud = Token::new(Op::Accept, i, 0).encode();
        self.accepts_armed += 1;
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd))
                .build()
                .user_data(ud),
        );
    }

    fn arm_tick(&mut self) {
        let ts = &self.tick_ts as *const types::Timespec;
        let ud = Token::new(Op::Tick, 0, 0).encode();
        self.push(opcode::Timeout::new(ts).build().user_data(ud));
    }

    fn arm_inbox(&mut self) {
        let fd = self.shared.inboxes[self.core as usize].fd();
        let buf = &mut *self.inbox_buf as *mut u64 as *mut u8;
        let ud = Token::new(Op::Inbox, 0, 0).encode();
        self.push(
            opcode::Read::new(types::Fd(fd), buf, 8)
                .build()
                .user_data(ud),
        );
    }

    fn arm_recv(&mut self, idx: u32) {
        let bgid = self.bufs.bgid();
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        c.recv_armed = true;
        let ud = Token::new(Op::Recv, idx, c.generation).encode();
        let sqe = if c.fixed {
            opcode::RecvMulti::new(types::Fixed(idx), bgid).build()
        } else {
            opcode::RecvMulti::new(types::Fd(c.fd), bgid).build()
        };
        self.push(sqe.user_data(ud));
    }

    // ---- completions ----

    fn on_completion(&mut self, ud: u64, res: i32, flags: u32, now: u64) {
        let Some(t) = Token::decode(ud) else {
            return;
        };
        match t.op {
            Op::Accept => self.on_accept(t.index, res, flags, now),
            Op::Recv => self.on_recv(t, res, flags, now),
            Op::Send => self.on_send(t, res, now),
            Op::Tick => {
                self.on_tick(now);
                self.arm_tick();
            }
            Op::Inbox => {
                // The eventfd count is only a doorbell; items are in the queue.
                self.arm_inbox();
            }
            Op::Connect => self.on_connect(t, res, now),
            Op::Cancel => {}
        }
    }

    fn on_accept(&mut self, li: u32, res: i32, flags: u32, now: u64) {
        let more = cqueue::more(flags);
        if !more {
            self.accepts_armed = self.accepts_armed.saturating_sub(1);
        }
        if res < 0 {
            self.stats.accept_error();
            if !more && self.draining_since.is_none() {
                self.arm_accept(li);
            }
            return;
        }
        if !more && self.draining_since.is_none() {
            self.arm_accept(li);
        }
        let fd = res as RawFd;
        let Some(Some(l)) = self.listeners.get(li as usize) else {
            close_fd(fd);
            return;
        };
        let (transport, local) = (l.transport, l.local);
        if self.draining_since.is_some()
            || self.conns.len() >= self.shared.config.reactor.max_connections_per_worker as usize
        {
            self.stats.rejected_limit();
            close_fd(fd);
            return;
        }
        set_nodelay(fd);
        let peer = peer_addr(fd).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let tls = if transport.is_tls() {
            match self.shared.tls.get(&(li as u16)).map(|a| a.session()) {
                Some(Ok(s)) => Some(Box::new(s)),
                _ => {
                    self.stats.tls_result(false);
                    close_fd(fd);
                    return;
                }
            }
        } else {
            None
        };
        self.stats.accepted(transport);
        let (idx, generation) = self.conns.reserve();
        let mut conn = Conn::new(
            fd,
            generation,
            transport,
            peer,
            local,
            now,
            self.shared.unix_ms(),
        );
        conn.listener = li as u16;
        conn.tls = tls;
        conn.proto = Proto::Handshake;
        conn.accepted_us = self.shared.now_us();
        let mut conn = conn;
        conn.id = self.stats.slot_open(idx, &conn);
        let msrp = matches!(transport, Transport::Msrp | Transport::Msrps);
        if msrp {
            if conn.local.ip().is_unspecified()
                && let Some(l) = local_addr(fd)
            {
                conn.local = l;
            }
            conn.proto = Proto::Msrp(glue::new_state(
                &self.shared,
                self.core,
                idx,
                generation,
                &conn,
                false,
            ));
            // The role; the AUTHed user and session follow once granted.
            self.stats
                .slot_ws_open(idx, SubProtocol::Msrp, "msrp client");
        }
        conn.fixed = self.register_fixed(idx, fd);
        self.conns.insert(idx, conn);
        self.arm_recv(idx);
        if !msrp || transport.is_tls() {
            // The WebSocket handshake, or the TLS handshake of msrps.
            let deadline = now + self.shared.config.websocket.handshake_timeout * 1000;
            self.schedule(idx, deadline);
        }
    }

    fn on_recv(&mut self, t: Token, res: i32, flags: u32, now: u64) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(c) = self.conns.get_mut(t.index, t.generation) else {
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        if res <= 0 {
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            match -res {
                libc::ENOBUFS => {
                    // Every provided buffer is in use: try again after this batch.
                    self.rearm.push((t.index, t.generation));
                }
                libc::ECANCELED => {
                    // A pause or a teardown cancelled it; the re-arm pass
                    // decides which.
                    self.rearm.push((t.index, t.generation));
                }
                0 => {
                    // EOF: the peer stopped sending (perhaps only half-closed):
                    // what is queued for it still goes out (RFC 6455 §5.5.1:
                    // a Close is answered), then the connection closes.
                    if c.teardown == Teardown::Open {
                        c.teardown = Teardown::AfterFlush;
                    }
                }
                _ => {
                    // A socket error: the peer is gone.
                    c.teardown = Teardown::Abort;
                }
            }
            self.mark_dirty(t.index);
            return;
        }
        let Some(bid) = bid else {
            return;
        };
        let n = res as usize;
        c.bytes_in += n as u64;
        c.last_used_unix_ms = self.loop_unix_ms;
        let transport = c.transport;
        self.stats.bytes_in(transport, n as u64);
        if !more && c.teardown == Teardown::Open && !c.read_paused() {
            self.rearm.push((t.index, t.generation));
        }
        if c.teardown == Teardown::Abort {
            self.bufs.recycle(bid);
            return;
        }
        // Output is written into a pooled buffer, not a fresh allocation
        // per message (flush hands it to the send; on_send pools it).
        if let Some(small) = self.pool.make_output(&mut c.out) {
            self.displaced.push(small);
        }
        if c.tls.is_some() {
            self.on_ciphertext(t.index, bid, n, now);
        } else {
            // Plaintext straight from the provided buffer: frames are
            // unmasked in place; only an incomplete tail is copied out.
            let can_hold = self.bufs.can_hold();
            let data = self.bufs.buffer(bid, n);
            let c = self.conns.get_any(t.index).expect("checked above");
            // MSRP chunks are stamped with the loop's clock reading
            // (relay latency).
            let now_us = self.loop_us;
            // MSRP over plain TCP: forwarded bodies may stay in this buffer
            // (held until their targets have sent them).
            // So may those of a WebSocket MSRP session's messages, which
            // are unmasked in place (when not spliced behind a partial frame).
            let relays = match &c.proto {
                Proto::Msrp(_) => true,
                Proto::Ws(ws) => ws.msrp.is_some(),
                _ => false,
            };
            let ring = (can_hold && relays).then(|| RingInput::new(self.core as u8, bid, data));
            let mut ctx = MsrpCtx {
                relay: &mut self.relay,
                actions: &mut self.msrp_actions,
                effects: &mut self.msrp_effects,
                now_us,
                ring,
                pool: &mut self.pool,
            };
            feed_plain(
                c,
                data,
                now,
                &self.shared,
                &mut self.stats,
                t.index,
                &mut ctx,
            );
            let holds = ctx.ring.map_or(0, |r| r.holds);
            if holds > 0 {
                self.bufs.hold(bid, holds);
                self.stats.recv_buffers_held(self.bufs.held());
            }
            self.bufs.recycle(bid);
            // A chunk that goes on in the next input may hold buffers
            // meanwhile: watched, so a sender that stops mid-chunk does not
            // pin them.
            if let Some(c) = self.conns.get_any(t.index)
                && let Some(f) = c.msrp_mut().and_then(|m| m.fwd.as_mut())
                && !f.watched
                && f.segs.has_ring()
            {
                f.watched = true;
                self.fwd_pinned
                    .push((t.index, t.generation, self.loop_unix_ms));
            }
        }
        self.apply_msrp_effects(now);
        self.after_input(t.index, now);
    }

    fn on_ciphertext(&mut self, idx: u32, bid: u16, n: usize, now: u64) {
        let data = self.bufs.buffer(bid, n);
        let c = self.conns.get_any(idx).expect("caller checked");
        let mut plain = std::mem::take(&mut self.scratch);
        plain.clear();
        let tls = c.tls.as_mut().expect("tls connection");
        let result = if c.tls_pending.is_empty() {
            let r = tls.read(data, &mut plain, &mut c.wire);
            if let Ok(p) = &r
                && p.consumed < data.len()
            {
                c.tls_pending.extend_from_slice(&data[p.consumed..]);
            }
            r
        } else {
            c.tls_pending.extend_from_slice(data);
            let mut pending = std::mem::take(&mut c.tls_pending);
            let r = tls.read(&pending, &mut plain, &mut c.wire);
            if let Ok(p) = &r
                && p.consumed < pending.len()
            {
                pending.drain(..p.consumed);
                c.tls_pending = pending;
            }
            r
        };
        self.bufs.recycle(bid);
        if c.tls_pending.len() > MAX_TLS_PENDING {
            // rustls stopped taking input yet the peer keeps sending.
            c.teardown = Teardown::Abort;
            c.tls_pending = Vec::new();
            self.scratch = plain;
            return;
        }
        match result {
            Ok(p) => {
                if p.handshake_done {
                    self.stats.tls_result(true);
                    if let Some(m) = c.msrp_mut() {
                        m.waiting.clear();
                    }
                }
                if !plain.is_empty() {
                    let mut ctx = MsrpCtx {
                        relay: &mut self.relay,
                        actions: &mut self.msrp_actions,
                        effects: &mut self.msrp_effects,
                        now_us: self.loop_us,
                        ring: None,
                        pool: &mut self.pool,
                    };
                    feed_plain(
                        c,
                        &mut plain,
                        now,
                        &self.shared,
                        &mut self.stats,
                        idx,
                        &mut ctx,
                    );
                }
                if p.peer_closed && c.teardown == Teardown::Open {
                    c.teardown = Teardown::AfterFlush;
                }
            }
            Err(_) => {
                if c.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                    self.stats.tls_result(false);
                }
                // The alert rustls queued goes out, then the connection closes.
                c.teardown = Teardown::AfterFlush;
                c.partial = Vec::new();
            }
        }
        self.scratch = plain;
    }

    /// After input was handled: harvest engine events, re-time, queue flush.
    fn after_input(&mut self, idx: u32, now: u64) {
        self.harvest(idx);
        if let Some(c) = self.conns.get_any(idx) {
            let d = next_deadline(c, &self.shared, now);
            if c.teardown != Teardown::Open {
                c.slot_stale = false;
                self.stats.slot_update(idx, c);
            } else if !c.slot_stale {
                // Traffic reaches the slot on the next tick (dumps are at
                // most a tick old), not in a seqlock write per message.
                c.slot_stale = true;
                self.slots_stale.push((idx, c.generation));
            }
            if let Some(d) = d {
                self.schedule(idx, d);
            }
        }
        self.mark_dirty(idx);
    }

    /// Move session events into the stats region; note a finished session.
    fn harvest(&mut self, idx: u32) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        let Proto::Ws(ws) = &mut c.proto else {
            return;
        };
        while let Some(ev) = ws.session.poll_event() {
            match ev {
                SessionEvent::FrameIn { opcode, .. } => {
                    c.frames_in += 1;
                    self.stats.frame_in(opcode);
                }
                SessionEvent::FrameOut { opcode, .. } => {
                    c.frames_out += 1;
                    self.stats.frame_out(opcode);
                }
                SessionEvent::CloseReceived { code } => {
                    self.stats.close_received(code);
                    ws.close_code = code.or(Some(1005));
                    if ws.close_reason.is_empty() {
                        ws.close_reason = "closed by peer";
                    }
                }
                SessionEvent::CloseSent { code } => {
                    self.stats.close_sent(code);
                    if ws.close_code.is_none() {
                        ws.close_code = Some(code);
                    }
                    if ws.close_reason.is_empty() {
                        ws.close_reason = "closed by server";
                    }
                }
                SessionEvent::KeepaliveSent => self.stats.keepalive_sent(),
                SessionEvent::KeepaliveFailed => {
                    self.stats.keepalive_failed();
                    ws.close_reason = "keep-alive timeout";
                }
                SessionEvent::ProtocolError { code } => {
                    self.stats.protocol_error(code);
                    ws.close_reason = "protocol error";
                }
                SessionEvent::IdleTimeout => {
                    self.stats.idle_timeout();
                    ws.close_reason = "idle timeout";
                }
                SessionEvent::CloseTimeout => {
                    self.stats.close_timeout();
                    // Keep why the close started (operator, shutdown, …).
                    if ws.close_reason.is_empty() {
                        ws.close_reason = "close handshake timed out";
                    }
                }
            }
        }
        if matches!(ws.session.state(), State::Closed) && c.teardown == Teardown::Open {
            c.teardown = Teardown::AfterFlush;
        }
    }

    fn on_send(&mut self, t: Token, res: i32, now: u64) {
        let Some(c) = self.conns.get_mut(t.index, t.generation) else {
            return;
        };
        c.sending = false;
        if res == -libc::ECANCELED && c.teardown != Teardown::Abort {
            // Cancelled by `check_pinned` (perhaps meant for an earlier
            // send): nothing was written. Bodies in provided buffers are
            // copied out, then the same bytes go again.
            self.unpin_output(t.index);
            self.submit_send(t.index);
            return;
        }
        if res < 0 {
            c.teardown = Teardown::Abort;
            let buf = std::mem::take(&mut c.inflight);
            let chain = std::mem::take(&mut c.inflight_chain);
            c.inflight_sent = 0;
            self.recycle_buf(buf);
            self.drop_pieces(chain);
            self.mark_dirty(t.index);
            return;
        }
        let n = res as usize;
        c.inflight_sent += n;
        c.bytes_out += n as u64;
        if !c.slot_stale {
            c.slot_stale = true;
            self.slots_stale.push((t.index, t.generation));
        }
        let transport = c.transport;
        self.stats.bytes_out(transport, n as u64);
        if c.inflight_sent < c.inflight_len() {
            // Short send: the rest of the same buffers goes next. The peer
            // is not keeping up: bodies still in provided buffers are
            // copied out, so it pins none while it lags.
            if c.inflight_chain.iter().chain(&c.chain).any(Piece::is_ring) {
                self.unpin_output(t.index);
            }
            self.submit_send(t.index);
            return;
        }
        let c = self.conns.get_any(t.index).expect("live");
        let buf = std::mem::take(&mut c.inflight);
        let chain = std::mem::take(&mut c.inflight_chain);
        c.iov.clear();
        c.inflight_sent = 0;
        // Nothing more to send: the connection gives its (pooled) output
        // buffers back, so an idle connection holds none.
        let spare_out = if c.out.is_empty() {
            std::mem::take(&mut c.out)
        } else {
            Vec::new()
        };
        let spare_wire = if c.wire.is_empty() {
            std::mem::take(&mut c.wire)
        } else {
            Vec::new()
        };
        let mut rearm = false;
        if c.paused && c.pending_output() <= self.output_low {
            // The peer caught up: read again.
            c.paused = false;
            rearm = !c.recv_armed && !c.relay_paused && c.teardown == Teardown::Open;
        }
        // The chunks that send carried are written: their senders' credit
        // comes back.
        let mut wake = std::mem::take(&mut self.wake_list);
        if let Some(m) = c.msrp_mut() {
            m.owed.sent(self.relay_window_low, |id| wake.push(id));
        }
        if rearm {
            self.arm_recv(t.index);
        }
        self.wake_senders(&mut wake);
        self.wake_list = wake;
        self.recycle_buf(buf);
        self.drop_pieces(chain);
        self.recycle_buf(spare_out);
        self.recycle_buf(spare_wire);
        let _ = now;
        self.mark_dirty(t.index);
    }

    fn on_connect(&mut self, t: Token, res: i32, now: u64) {
        self.connect_addrs.retain(|(i, _)| *i != t.index);
        let Some(c) = self.conns.get_mut(t.index, t.generation) else {
            return;
        };
        c.connecting = false;
        if res < 0 {
            c.teardown = Teardown::Abort;
            self.mark_dirty(t.index);
            return;
        }
        if let Some(local) = local_addr(c.fd) {
            c.local = local;
        }
        if let Some(tls) = c.tls.as_mut() {
            // A client speaks first: the ClientHello.
            tls.flush_records(&mut c.wire);
        }
        // Queued transactions are on their way once the connection is up
        // (for msrps: once TLS is, see on_ciphertext).
        if c.tls.is_none()
            && let Some(m) = c.msrp_mut()
        {
            m.waiting.clear();
        }
        self.arm_recv(t.index);
        self.mark_dirty(t.index);
        let _ = now;
    }

    // ---- timers, inbox, commands, shutdown ----

    fn schedule(&mut self, idx: u32, deadline: u64) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        if c.timer_at != 0 && c.timer_at <= deadline {
            return;
        }
        c.timer_at = deadline;
        let key = ((c.generation as u64) << 32) | idx as u64;
        self.wheel.insert(key, deadline);
    }

    fn on_tick(&mut self, now: u64) {
        self.stats.heartbeat(self.shared.unix_ms());
        self.publish_slots();
        self.check_relay_paused();
        self.check_pinned();
        self.check_fwd_pinned();
        if now.saturating_sub(self.msrp_timer_ms) >= MSRP_TIMER_MS {
            self.msrp_timer_ms = now;
            let sweep = now.saturating_sub(self.msrp_sweep_ms)
                >= self.shared.config.msrp.timer_interval.saturating_mul(1000);
            if sweep {
                self.msrp_sweep_ms = now;
            }
            let mut rng = glue::fill_random;
            let mut env = glue::env(&self.shared, now, &mut rng);
            self.relay.on_tick(&mut env, sweep, &mut self.msrp_actions);
            glue::run_detached(
                &mut self.msrp_actions,
                &mut self.msrp_effects,
                &mut self.stats,
            );
            self.apply_msrp_effects(now);
        }
        let mut due = Vec::new();
        self.wheel
            .advance(now, |key, deadline| due.push((key, deadline)));
        for (key, deadline) in due {
            let idx = key as u32;
            let generation = (key >> 32) as u32;
            let Some(c) = self.conns.get_mut(idx, generation) else {
                continue;
            };
            if c.timer_at != deadline {
                continue;
            }
            c.timer_at = 0;
            match &mut c.proto {
                Proto::Handshake => {
                    let limit =
                        c.accepted_ms + self.shared.config.websocket.handshake_timeout * 1000;
                    if now >= limit && c.teardown == Teardown::Open {
                        self.stats.handshake_rejected(RejectReason::Timeout);
                        self.stats.handshake_timeout();
                        let unix = self.shared.unix_ms();
                        self.stats.event_rejected(c, RejectReason::Timeout, unix);
                        if c.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                            // Nothing can be said to a peer that never
                            // finished TLS.
                            self.stats.tls_result(false);
                            c.teardown = Teardown::Abort;
                        } else {
                            let r = handshake::reject(&self.shared.policy, RejectReason::Timeout);
                            c.out.extend_from_slice(&r.response);
                            c.proto = Proto::Raw;
                            c.teardown = Teardown::AfterFlush;
                        }
                        self.mark_dirty(idx);
                        continue;
                    }
                }
                Proto::Ws(ws) => {
                    ws.session.on_tick(now, &mut c.out);
                }
                Proto::Msrp(_) => {
                    // msrps: the TLS handshake did not finish in time.
                    let limit =
                        c.accepted_ms + self.shared.config.websocket.handshake_timeout * 1000;
                    if now >= limit
                        && c.teardown == Teardown::Open
                        && c.tls.as_ref().is_some_and(|t| t.is_handshaking())
                    {
                        self.stats.tls_result(false);
                        c.teardown = Teardown::Abort;
                        self.mark_dirty(idx);
                        continue;
                    }
                }
                Proto::Raw => {}
            }
            self.after_input(idx, now);
        }
        self.drain_commands(now);
    }

    /// Write the traffic of connections that had some since the last tick
    /// into their region slots.
    fn publish_slots(&mut self) {
        for (idx, g) in self.slots_stale.drain(..) {
            if let Some(c) = self.conns.get_mut(idx, g)
                && c.slot_stale
            {
                c.slot_stale = false;
                self.stats.slot_update(idx, c);
            }
        }
    }

    /// Paused senders: forget those that resumed or closed, and resume
    /// those whose windows drained without a wake-up reaching them (a
    /// full inbox).
    fn check_relay_paused(&mut self) {
        let low = self.relay_window_low;
        let mut list = std::mem::take(&mut self.relay_paused);
        let mut resume = Vec::new();
        list.retain(|&(idx, g)| match self.conns.get_mut(idx, g) {
            Some(c) if c.relay_paused => {
                if c.msrp_mut().is_some_and(|m| m.window.outstanding() <= low) {
                    resume.push(conn_id(self.core, idx, g));
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
        self.relay_paused = list;
        for id in resume {
            self.resume_sender(id);
        }
    }

    fn drain_commands(&mut self, now: u64) {
        let mut cmds = Vec::new();
        self.stats.drain_commands(|cmd| cmds.push(cmd));
        for cmd in cmds {
            if cmd.kind == super::stats::CommandKind::DropSession {
                // The session id is the data (`msrp` DELETE).
                let data = &cmd.data[..(cmd.data_len as usize).min(cmd.data.len())];
                if let Some(sid) = SessionId::parse(data)
                    && self.relay.sessions.remove(&sid).is_some()
                {
                    self.stats
                        .msrp(crate::msrp::relay::Stat::SessionsRemoved(1));
                }
                continue;
            }
            // Commands are rare: a scan keeps ids out of per-connection memory.
            let Some(idx) = self.conns.position(|c| c.id == cmd.conn_id) else {
                continue;
            };
            let Some(c) = self.conns.get_any(idx) else {
                continue;
            };
            let Proto::Ws(ws) = &mut c.proto else {
                continue;
            };
            match cmd.kind {
                super::stats::CommandKind::Close => {
                    let data = &cmd.data[..(cmd.data_len as usize).min(cmd.data.len())];
                    let reason = String::from_utf8_lossy(data).into_owned();
                    ws.close_reason = "closed by operator";
                    ws.session.close(cmd.status, &reason, now, &mut c.out);
                }
                super::stats::CommandKind::Ping => {
                    let data = &cmd.data[..(cmd.data_len as usize).min(cmd.data.len())];
                    ws.session.ping(data, &mut c.out)
                }
                super::stats::CommandKind::Pong => {
                    let data = &cmd.data[..(cmd.data_len as usize).min(cmd.data.len())];
                    ws.session.pong(data, &mut c.out)
                }
                super::stats::CommandKind::DropSession => {}
            }
            self.after_input(idx, now);
        }
        self.publish_msrp_sessions();
    }

    /// Mirror the session map's changes into the stats region's session
    /// table (`msrp.cmaplist`): a slot per live session, freed when the
    /// session expires, closes or is dropped. Sessions beyond the table's
    /// size are relayed but not listed.
    fn publish_msrp_sessions(&mut self) {
        let (conns, stats, slots, free, next, shared) = (
            &mut self.conns,
            &mut self.stats,
            &mut self.msrp_slots,
            &mut self.msrp_slots_free,
            &mut self.msrp_slots_next,
            &self.shared,
        );
        self.relay.sessions.drain_changes(|id, entry| match entry {
            Some(e) => {
                let slot = match slots.get(id) {
                    Some(&s) => s,
                    None => {
                        let s = match free.pop() {
                            Some(s) => s,
                            None if *next < crate::region::MSRP_SESSION_SLOTS => {
                                *next += 1;
                                *next - 1
                            }
                            None => return,
                        };
                        slots.insert(*id, s);
                        s
                    }
                };
                let (_, generation, idx) = split_conn_id(e.conn);
                let conn_id = conns.get_mut(idx, generation).map_or(0, |c| c.id);
                if conn_id != 0 {
                    // The connection's role and its latest session, for
                    // the connection dump.
                    stats.slot_info(idx, &format!("msrp client {} {}", e.user, id.as_str()));
                }
                stats.msrp_session_put(
                    slot,
                    &crate::region::MsrpSessionInfo {
                        session_id: id.as_str(),
                        user: &e.user,
                        peer: &e.peer_addr,
                        conn_id,
                        expires_unix_ms: shared.mono_to_unix_ms(e.expires_ms),
                    },
                );
            }
            None => {
                if let Some(s) = slots.remove(id) {
                    stats.msrp_session_free(s);
                    free.push(s);
                }
            }
        });
    }

    fn drain_inbox(&mut self, now: u64) {
        while let Some(msg) = self.shared.inboxes[self.core as usize].pop() {
            self.stats.inbox_message();
            match msg {
                InboxMsg::Connect { addr } => {
                    let _ = self.connect(addr, None, now);
                }
                InboxMsg::MsrpForward {
                    session,
                    from_conn,
                    origin_core,
                    frame,
                    body,
                    txn,
                    window,
                    in_us,
                } => self.on_handoff(
                    session,
                    from_conn,
                    origin_core,
                    frame,
                    body.map(|b| *b),
                    txn,
                    window,
                    in_us,
                    now,
                ),
                InboxMsg::MsrpWake { conn } => self.resume_sender(conn),
                InboxMsg::Resolved { host, port, addr } => self.on_resolved(host, port, addr, now),
                InboxMsg::MsrpResponse { frame } => {
                    let mut rng = glue::fill_random;
                    let mut env = glue::env(&self.shared, now, &mut rng);
                    self.relay
                        .on_core_response(&frame, &mut env, &mut self.msrp_actions);
                    glue::run_detached(
                        &mut self.msrp_actions,
                        &mut self.msrp_effects,
                        &mut self.stats,
                    );
                }
                InboxMsg::MsrpForwardFailed { txn, code } => self.forward_failed(&txn, code, now),
            }
        }
        self.apply_msrp_effects(now);
    }

    // ---- MSRP relay effects ----

    /// Tell the relay a transaction it forwarded could not be delivered
    /// (it answers with a failure REPORT where one is due).
    fn forward_failed(&mut self, txn: &[u8], code: u16, now: u64) {
        let mut rng = glue::fill_random;
        let mut env = glue::env(&self.shared, now, &mut rng);
        self.relay
            .on_forward_failed(txn, code, &mut env, &mut self.msrp_actions);
        glue::run_detached(
            &mut self.msrp_actions,
            &mut self.msrp_effects,
            &mut self.stats,
        );
    }

    /// A transaction of `core` failed: tell that core.
    fn fail_on(&mut self, core: u8, txn: Option<TxnId>, code: u16, now: u64) {
        let Some(txn) = txn else {
            return;
        };
        if u32::from(core) == self.core {
            self.forward_failed(&txn, code, now);
        } else if let Some(inbox) = self.shared.inboxes.get(usize::from(core)) {
            // A full inbox loses only the REPORT; the origin's transaction
            // times out (408) instead.
            let _ = inbox.send(InboxMsg::MsrpForwardFailed { txn, code });
        }
    }

    /// A chunk another core forwarded toward a session of this core.
    #[allow(clippy::too_many_arguments)]
    fn on_handoff(
        &mut self,
        session: SessionId,
        from_conn: u64,
        origin_core: u8,
        frame: Vec<u8>,
        body: Option<RingBody>,
        txn: Option<TxnId>,
        window: Arc<FlowWindow>,
        in_us: u64,
        now: u64,
    ) {
        self.stats.msrp_handoff();
        let len = frame.len() + body.as_ref().map_or(0, RingBody::len);
        let next = crate::msrp::message::first_to_uri(&frame);
        let resolved = self.relay.resolve_handoff(&session, from_conn, next, now);
        // The body where the origin core received it: sent from there by a
        // target that takes it, else copied (and the holds given back).
        let body = match (body, &resolved) {
            (Some(b), Ok(conn)) => match self.ring_target(*conn) {
                Some(idx) => {
                    self.queue_by_reference(idx, frame, b, window, in_us);
                    self.remember_handed_over(*conn, origin_core, txn, now);
                    return;
                }
                None => Some(b),
            },
            (body, _) => body,
        };
        let frame = self.materialize(frame, body);
        match resolved {
            Ok(conn) => {
                if !self.deliver_local(conn, frame, Some((window.clone(), in_us))) {
                    self.release_credit(&window, len);
                    self.fail_on(origin_core, txn, 481, now);
                } else {
                    self.remember_handed_over(conn, origin_core, txn, now);
                }
            }
            Err(code) => {
                self.release_credit(&window, len);
                self.fail_on(origin_core, txn, code, now);
            }
        }
    }

    /// A chunk of `origin_core`'s transaction `txn` is queued on `conn`:
    /// the origin cannot see this connection, so the transaction is
    /// remembered here and losing the connection fails it at once.
    fn remember_handed_over(&mut self, conn: u64, origin_core: u8, txn: Option<TxnId>, now: u64) {
        let Some(t) = txn else {
            return;
        };
        let timeout = self.relay.config().transaction_timeout_ms;
        let (_, generation, idx) = split_conn_id(conn);
        if let Some(m) = self
            .conns
            .get_mut(idx, generation)
            .and_then(|c| c.msrp_mut())
        {
            m.handed_over.insert(t, origin_core, now, timeout);
        }
    }

    /// Queue a frame on connection `id` of this core; a forwarded chunk
    /// comes with its sender's window and the time it was read.
    fn deliver_local(
        &mut self,
        id: u64,
        frame: Vec<u8>,
        relayed: Option<(Arc<FlowWindow>, u64)>,
    ) -> bool {
        let (core, generation, idx) = split_conn_id(id);
        if core != self.core {
            return false;
        }
        let Some(c) = self.conns.get_mut(idx, generation) else {
            return false;
        };
        let (window, in_us) = match relayed {
            Some((w, t)) => (Some(w), Some(t)),
            None => (None, None),
        };
        let queued = glue::queue_frame(
            c,
            frame,
            window,
            &mut self.stats,
            &mut self.displaced,
            &mut self.pool,
        );
        self.recycle_displaced();
        if !queued {
            return false;
        }
        if let Some(t) = in_us {
            self.relayed_in_us.push(t);
        }
        self.mark_dirty(idx);
        true
    }

    /// Credit for `n` bytes that will never be written (the target is
    /// gone or refused them) goes back to the sender at once.
    fn release_credit(&mut self, window: &FlowWindow, n: usize) {
        if window.release(n, self.relay_window_low) {
            let mut wake = vec![window.conn];
            self.wake_senders(&mut wake);
        }
    }

    /// Wake paused senders whose windows drained: here, or on their core.
    fn wake_senders(&mut self, ids: &mut Vec<u64>) {
        for id in ids.drain(..) {
            let (core, _, _) = split_conn_id(id);
            if core == self.core {
                self.resume_sender(id);
            } else if let Some(inbox) = self.shared.inboxes.get(core as usize)
                && inbox.send(InboxMsg::MsrpWake { conn: id }).is_err()
            {
                // A full inbox: that core's timer finds the drained window.
            }
        }
    }

    /// A sender's window drained: read it again.
    fn resume_sender(&mut self, id: u64) {
        let (core, generation, idx) = split_conn_id(id);
        if core != self.core {
            return;
        }
        let Some(c) = self.conns.get_mut(idx, generation) else {
            return;
        };
        if !c.relay_paused {
            return;
        }
        c.relay_paused = false;
        if !c.paused && !c.recv_armed && c.teardown == Teardown::Open {
            self.arm_recv(idx);
        }
    }

    /// Carry out what the relay produced for other connections and cores.
    fn apply_msrp_effects(&mut self, now: u64) {
        // Applying effects can produce more; the two lists swap so neither
        // allocates once grown.
        let mut list = std::mem::take(&mut self.msrp_effects_spare);
        loop {
            std::mem::swap(&mut list, &mut self.msrp_effects);
            if list.is_empty() {
                break;
            }
            for e in list.drain(..) {
                self.apply_effect(e, now);
            }
        }
        self.msrp_effects_spare = list;
        self.publish_msrp_sessions();
    }

    fn apply_effect(&mut self, e: Effect, now: u64) {
        let me = self.core as u8;
        match e {
            Effect::SendTo { conn, frame } => {
                let _ = self.deliver_local(conn, frame, None);
            }
            Effect::ToCore { core, frame } => {
                if core == me {
                    let mut rng = glue::fill_random;
                    let mut env = glue::env(&self.shared, now, &mut rng);
                    self.relay
                        .on_core_response(&frame, &mut env, &mut self.msrp_actions);
                    glue::run_detached(
                        &mut self.msrp_actions,
                        &mut self.msrp_effects,
                        &mut self.stats,
                    );
                } else if let Some(inbox) = self.shared.inboxes.get(usize::from(core)) {
                    // A full inbox drops the response; the transaction
                    // times out on its core (408).
                    let _ = inbox.send(InboxMsg::MsrpResponse { frame });
                }
            }
            Effect::Drop(mut segs) => self.drop_pieces(segs.take()),
            Effect::Deliver {
                target,
                frame,
                ring,
                txn,
                from_conn,
                window,
                in_us,
            } => {
                let ring = match ring {
                    Some(r) if r.body_len() >= glue::RING_MIN && r.segs.has_ring() => {
                        let found = match &target {
                            Target::Conn(conn) => self.ring_target(*conn),
                            Target::NextHop {
                                secure, host, port, ..
                            } => self.next_hop_ring_target(*secure, host, *port, now),
                            Target::Core { core, session } => {
                                // Another core's client: the body goes
                                // there where it lies; that core sends it
                                // from here (or copies it) and gives the
                                // holds back.
                                let (core, session) = (*core, *session);
                                self.hand_off(
                                    core,
                                    session,
                                    from_conn,
                                    frame,
                                    Some(r),
                                    txn,
                                    window,
                                    in_us,
                                    now,
                                );
                                return;
                            }
                        };
                        match found {
                            Some(idx) => {
                                // The common relay case: a TCP or
                                // WebSocket target on this core (a client
                                // of ours or an open outbound connection
                                // to the next hop) takes the body where it
                                // was received (TLS encrypts it from there).
                                if let (Target::NextHop { .. }, Some(t)) = (&target, &txn) {
                                    let generation =
                                        self.conns.get_any(idx).map_or(0, |c| c.generation);
                                    self.relay
                                        .set_downstream(t, conn_id(self.core, idx, generation));
                                }
                                self.queue_by_reference(idx, frame, r, window, in_us);
                                return;
                            }
                            None => Some(r),
                        }
                    }
                    r => r,
                };
                // Anywhere else (a small body, TLS, a next hop still
                // connecting or resolving, a slow target): one owned frame.
                let frame = self.materialize(frame, ring);
                self.deliver(target, frame, txn, from_conn, window, in_us, now);
            }
        }
    }

    /// Queue a chunk on connection `idx` of this core (which
    /// [`glue::takes_ring`]) with its body where it was received, on this
    /// core or another.
    fn queue_by_reference(
        &mut self,
        idx: u32,
        frame: Vec<u8>,
        body: RingBody,
        window: Arc<FlowWindow>,
        in_us: u64,
    ) {
        let by_ref = body.segs.ring_len() as u64;
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        let sealed = glue::queue_ring(
            c,
            frame,
            body,
            window,
            &self.bufs,
            &mut self.pool,
            &mut self.displaced,
            &mut self.stats,
        );
        self.drop_pieces(sealed);
        // The head's buffer goes where every emptied buffer goes (the
        // output pool or the relay engine).
        self.recycle_displaced();
        self.stats.msrp_zero_copy(by_ref);
        self.relayed_in_us.push(in_us);
        self.mark_dirty(idx);
    }

    /// Hand a chunk to `core`, which owns the target session: `frame`
    /// whole, or its head with `body` where this core received it.
    #[allow(clippy::too_many_arguments)]
    fn hand_off(
        &mut self,
        core: u8,
        session: SessionId,
        from_conn: u64,
        frame: Vec<u8>,
        body: Option<RingBody>,
        txn: Option<TxnId>,
        window: Arc<FlowWindow>,
        in_us: u64,
        now: u64,
    ) {
        let me = self.core as u8;
        let len = frame.len() + body.as_ref().map_or(0, RingBody::len);
        let msg = InboxMsg::MsrpForward {
            session,
            from_conn,
            origin_core: me,
            frame,
            body: body.map(Box::new),
            txn,
            window,
            in_us,
        };
        let sent = match self.shared.inboxes.get(usize::from(core)) {
            Some(inbox) => inbox.send(msg),
            None => Err(msg),
        };
        if let Err(InboxMsg::MsrpForward {
            txn, window, body, ..
        }) = sent
        {
            if let Some(mut b) = body {
                self.drop_pieces(b.segs.take());
            }
            self.release_credit(&window, len);
            self.fail_on(me, txn, 408, now);
        }
    }

    /// A forwarded chunk, whole, to its target.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        target: Target,
        frame: Vec<u8>,
        txn: Option<TxnId>,
        from_conn: u64,
        window: Arc<FlowWindow>,
        in_us: u64,
        now: u64,
    ) {
        let me = self.core as u8;
        match target {
            Target::Conn(conn) => {
                let len = frame.len();
                if !self.deliver_local(conn, frame, Some((window.clone(), in_us))) {
                    self.release_credit(&window, len);
                    self.fail_on(me, txn, 481, now);
                }
            }
            Target::Core { core, session } => {
                self.hand_off(
                    core, session, from_conn, frame, None, txn, window, in_us, now,
                );
            }
            Target::NextHop {
                secure, host, port, ..
            } => {
                let len = frame.len();
                if !self.forward_next_hop(secure, &host, port, frame, txn, &window, in_us, now) {
                    self.release_credit(&window, len);
                }
            }
        }
    }

    /// Forward to another relay or endpoint over an outbound connection,
    /// opened on first use and reused. A name is resolved by the resolver
    /// thread first (the frame waits, bounded); an address is dialled at
    /// once. `false`: the frame was not queued (its failure is reported;
    /// the caller returns its credit).
    #[allow(clippy::too_many_arguments)]
    fn forward_next_hop(
        &mut self,
        secure: bool,
        host: &str,
        port: u16,
        frame: Vec<u8>,
        txn: Option<TxnId>,
        window: &Arc<FlowWindow>,
        in_us: u64,
        now: u64,
    ) -> bool {
        let me = self.core as u8;
        if let Some(addr) = self.next_hop_addr(host, port, now) {
            return self.forward_to(addr, secure, host, frame, txn, window, in_us, now);
        }
        let key = (host.to_ascii_lowercase(), port);
        let q = self.dns_waiting.entry(key).or_default();
        if q.len() >= DNS_QUEUE_MAX {
            self.fail_on(me, txn, 408, now);
            return false;
        }
        let first = q.is_empty();
        q.push(WaitingFrame {
            secure,
            frame,
            txn,
            window: window.clone(),
            in_us,
        });
        if first && !self.shared.resolver.resolve(host, port, self.core as usize) {
            self.on_resolved(host.to_ascii_lowercase(), port, None, now);
        }
        true
    }

    /// The resolver answered for `host`: send what waited for it, or fail
    /// it (REPORT 408: the next hop cannot be reached).
    fn on_resolved(&mut self, host: String, port: u16, addr: Option<SocketAddr>, now: u64) {
        let me = self.core as u8;
        let key = (host, port);
        if let Some(a) = addr {
            self.dns_cache
                .insert(key.clone(), (a, now + resolver::CACHE_MS));
        } else {
            tracing::debug!(host = key.0, "msrp next hop: name not resolved");
        }
        let waiting = self.dns_waiting.remove(&key).unwrap_or_default();
        for w in waiting {
            let len = w.frame.len();
            let sent = match addr {
                Some(a) => {
                    self.forward_to(a, w.secure, &key.0, w.frame, w.txn, &w.window, w.in_us, now)
                }
                None => {
                    self.fail_on(me, w.txn, 408, now);
                    false
                }
            };
            if !sent {
                self.release_credit(&w.window, len);
            }
        }
    }

    /// Queue a frame on the outbound connection to `addr` (`host` names
    /// it for TLS), opening it if needed.
    #[allow(clippy::too_many_arguments)]
    fn forward_to(
        &mut self,
        addr: SocketAddr,
        secure: bool,
        host: &str,
        frame: Vec<u8>,
        txn: Option<TxnId>,
        window: &Arc<FlowWindow>,
        in_us: u64,
        now: u64,
    ) -> bool {
        let me = self.core as u8;
        let h = host.trim_start_matches('[').trim_end_matches(']');
        let existing = self
            .outbound
            .get(&(addr, secure))
            .copied()
            .filter(|&(idx, g)| {
                self.conns
                    .get_mut(idx, g)
                    .is_some_and(|c| c.teardown == Teardown::Open)
            });
        // msrps: TLS to the next hop, its certificate checked against the
        // name in the URI (RFC 4975 §14.2, RFC 4976 §6.3).
        let tls = if secure && existing.is_none() {
            match self.shared.next_hop_tls.session(h) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    tracing::debug!(host, error = %e, "msrps next hop: no TLS session");
                    self.fail_on(me, txn, 403, now);
                    return false;
                }
            }
        } else {
            None
        };
        let (idx, generation) = match existing {
            Some(x) => x,
            None => match self.connect(addr, tls, now) {
                Ok(idx) => {
                    let Some(c) = self.conns.get_any(idx) else {
                        self.fail_on(me, txn, 408, now);
                        return false;
                    };
                    let generation = c.generation;
                    let st = glue::new_state(&self.shared, self.core, idx, generation, c, false);
                    c.proto = Proto::Msrp(st);
                    let scheme = if secure { "msrps" } else { "msrp" };
                    let role = format!("msrp next-hop {scheme}://{h}:{}", addr.port());
                    self.stats.slot_ws_open(idx, SubProtocol::Msrp, &role);
                    self.outbound.insert((addr, secure), (idx, generation));
                    if secure {
                        // A handshake that stalls is given up like an
                        // inbound one.
                        let deadline = now + self.shared.config.websocket.handshake_timeout * 1000;
                        self.schedule(idx, deadline);
                    }
                    (idx, generation)
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "msrp next hop: connect failed");
                    self.fail_on(me, txn, 408, now);
                    return false;
                }
            },
        };
        let Some(c) = self.conns.get_mut(idx, generation) else {
            self.fail_on(me, txn, 408, now);
            return false;
        };
        let connecting = c.connecting;
        let queued = glue::queue_frame(
            c,
            frame,
            Some(window.clone()),
            &mut self.stats,
            &mut self.displaced,
            &mut self.pool,
        );
        if !queued {
            self.recycle_displaced();
            self.fail_on(me, txn, 408, now);
            return false;
        }
        if let Some(t) = &txn {
            self.relay
                .set_downstream(t, conn_id(self.core, idx, generation));
        }
        if connecting
            && let Some(t) = txn
            && let Some(m) = c.msrp_mut()
        {
            m.waiting.push(t);
        }
        self.recycle_displaced();
        self.relayed_in_us.push(in_us);
        self.mark_dirty(idx);
        true
    }

    /// Open an outbound TCP connection (next-hop relays). Returns its slot.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        tls: Option<Box<TlsSession>>,
        now: u64,
    ) -> io::Result<u32> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        sock.set_tcp_nodelay(true)?;
        let fd = sock.into_raw_fd();
        let (idx, generation) = self.conns.reserve();
        let mut conn = Conn::new(
            fd,
            generation,
            if tls.is_some() {
                Transport::Msrps
            } else {
                Transport::Msrp
            },
            addr,
            SocketAddr::from(([0, 0, 0, 0], 0)),
            now,
            self.shared.unix_ms(),
        );
        conn.tls = tls;
        conn.outbound = true;
        conn.connecting = true;
        self.conns.insert(idx, conn);
        // The address must stay put until the connect completes.
        let sa = Box::new(socket2::SockAddr::from(addr));
        let ptr = sa.as_ptr() as *const libc::sockaddr;
        let len = sa.len();
        self.connect_addrs.push((idx, sa));
        let ud = Token::new(Op::Connect, idx, generation).encode();
        self.push(
            opcode::Connect::new(types::Fd(fd), ptr, len)
                .build()
                .user_data(ud),
        );
        Ok(idx)
    }

    fn check_shutdown(&mut self, now: u64) -> bool {
        if !self.shared.shutdown_requested() {
            return false;
        }
        if self.draining_since.is_none() {
            self.draining_since = Some(now);
            // Stop accepting: cancel the multishot accepts (io_uring holds
            // the listening file until they end) and close the listeners, so
            // they leave the reuseport group.
            for i in 0..self.listeners.len() {
                if self.listeners[i].take().is_some() {
                    let target = Token::new(Op::Accept, i as u32, 0).encode();
                    let ud = Token::new(Op::Cancel, i as u32, 0).encode();
                    self.push(opcode::AsyncCancel::new(target).build().user_data(ud));
                }
            }
            for idx in self.conns.indices() {
                let Some(c) = self.conns.get_any(idx) else {
                    continue;
                };
                match &mut c.proto {
                    Proto::Ws(ws) if matches!(ws.session.state(), State::Open) => {
                        ws.close_reason = "server shutting down";
                        ws.session.close(1001, "Going away", now, &mut c.out);
                        self.after_input(idx, now);
                    }
                    Proto::Ws(_) => {}
                    _ => {
                        c.teardown = Teardown::Abort;
                        self.mark_dirty(idx);
                    }
                }
            }
            self.flush_all(now);
        }
        let grace = self.shared.config.reactor.shutdown_grace * 1000;
        // The listening sockets close only when their accepts have ended
        // (io_uring holds the file until then): wait for that too, so the
        // port is released when the worker is gone.
        if self.conns.is_empty() && self.accepts_armed == 0 {
            return true;
        }
        if now.saturating_sub(self.draining_since.unwrap_or(now)) >= grace {
            for idx in self.conns.indices() {
                if let Some(c) = self.conns.get_any(idx) {
                    let fixed = c.fixed;
                    close_fd(c.fd);
                    self.stats.closed(c.transport);
                    self.unregister_fixed(idx, fixed);
                }
                self.stats.slot_close(idx);
                self.conns.remove(idx);
            }
            return true;
        }
        false
    }

    // ---- output and teardown ----

    fn mark_dirty(&mut self, idx: u32) {
        if let Some(c) = self.conns.get_any(idx)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    fn flush_all(&mut self, now: u64) {
        let mut list = std::mem::take(&mut self.flushing);
        while !self.dirty.is_empty() {
            // Swapped, not taken: neither list is reallocated per batch.
            std::mem::swap(&mut list, &mut self.dirty);
            for &idx in &list {
                if let Some(c) = self.conns.get_any(idx) {
                    c.dirty = false;
                }
                self.flush(idx, now);
            }
            list.clear();
        }
        self.flushing = list;
    }

    fn flush(&mut self, idx: u32, now: u64) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        if c.teardown == Teardown::Abort {
            c.out.clear();
            c.wire.clear();
            if !c.chain.is_empty() {
                let chain = std::mem::take(&mut c.chain);
                self.drop_pieces(chain);
            }
        }
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        let was_paused = c.read_paused();
        let output_full =
            !c.paused && c.teardown == Teardown::Open && c.pending_output() > self.output_high;
        if output_full {
            // Backpressure: a peer that does not read its output stops
            // being read, so queued output (memory) stays bounded.
            c.paused = true;
        }
        // MSRP flow control: a sender whose chunks fill its window in other
        // connections' output stops being read until they are written.
        let (high, low) = (self.relay_window_high, self.relay_window_low);
        let window_full = !c.relay_paused
            && c.teardown == Teardown::Open
            && c.msrp_mut()
                .is_some_and(|m| m.window.should_pause(high, low));
        if window_full {
            c.relay_paused = true;
        }
        let generation = c.generation;
        if !was_paused && c.read_paused() && c.recv_armed {
            let target = Token::new(Op::Recv, idx, generation).encode();
            let ud = Token::new(Op::Cancel, idx, generation).encode();
            self.push(opcode::AsyncCancel::new(target).build().user_data(ud));
        }
        if output_full {
            self.stats.backpressure();
        }
        if window_full {
            self.relay_paused.push((idx, generation));
            self.stats.msrp_sender_pause();
        }
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        if !c.sending && !c.connecting && c.has_output() {
            if let Some(m) = c.msrp_mut() {
                m.owed.output_taken();
            }
            if let Conn {
                tls: Some(tls),
                out,
                wire,
                chain,
                ..
            } = &mut *c
                && !chain.is_empty()
            {
                // Records sealed as frames were queued: what came after
                // them goes behind, and all leave in one writev.
                glue::seal_into_chain(tls, wire, chain, &[out]);
                out.clear();
            }
            let buf = if let Some(tls) = c.tls.as_mut()
                && c.chain.is_empty()
            {
                let mut buf = self.pool.take();
                buf.extend_from_slice(&c.wire);
                c.wire.clear();
                tls.write(&c.out, &mut buf);
                c.out.clear();
                buf
            } else if !c.chain.is_empty() {
                // Frames queued as their own buffers, then `out`: one
                // writev, no copy.
                let mut chain = std::mem::take(&mut c.chain);
                if !c.out.is_empty() {
                    chain.push(Piece::Owned(std::mem::take(&mut c.out)));
                }
                c.inflight_chain = chain;
                Vec::new()
            } else {
                // Hand the whole corked output to the socket; more output
                // takes a pooled buffer when it comes (on_recv).
                std::mem::take(&mut c.out)
            };
            c.inflight = buf;
            c.inflight_sent = 0;
            self.submit_send(idx);
            return;
        }
        let c = self.conns.get_any(idx).expect("live");
        if c.teardown != Teardown::Open && !c.sending {
            self.teardown(idx, now);
            return;
        }
        if !c.sending && c.out.is_empty() && c.out.capacity() > 0 {
            // Input that produced no output: an idle connection holds no
            // output buffer.
            let spare = std::mem::take(&mut c.out);
            self.recycle_buf(spare);
        }
    }

    fn submit_send(&mut self, idx: u32) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        let ud = Token::new(Op::Send, idx, c.generation).encode();
        if !c.inflight_chain.is_empty() {
            c.fill_iov(&self.bufs);
            if !c.pin_watch && c.inflight_chain.iter().any(Piece::is_ring) {
                c.pin_watch = true;
                self.pinned
                    .push((idx, c.generation, c.bytes_out, self.loop_unix_ms));
            }
            let (iov, n) = (c.iov.as_ptr(), c.iov.len() as u32);
            // A writev (not sendmsg with MSG_NOSIGNAL): Rust programs ignore
            // SIGPIPE, so a closed peer is just -EPIPE here.
            let sqe = if c.fixed {
                opcode::Writev::new(types::Fixed(idx), iov, n).build()
            } else {
                opcode::Writev::new(types::Fd(c.fd), iov, n).build()
            };
            c.sending = true;
            self.push(sqe.user_data(ud));
            return;
        }
        let rest = &c.inflight[c.inflight_sent..];
        let (ptr, len) = (rest.as_ptr(), rest.len() as u32);
        let sqe = if c.fixed {
            opcode::Send::new(types::Fixed(idx), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::Send::new(types::Fd(c.fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        c.sending = true;
        self.push(sqe.user_data(ud));
    }

    /// Close a connection whose output is flushed: cancel its recv, wait for
    /// that to complete, then close the socket and free the slot.
    fn teardown(&mut self, idx: u32, _now: u64) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        if c.recv_armed {
            if !c.cancel_sent {
                c.cancel_sent = true;
                let target = Token::new(Op::Recv, idx, c.generation).encode();
                let ud = Token::new(Op::Cancel, idx, c.generation).encode();
                // Shut the socket down too, so the recv ends even if the
                // cancel races with incoming data.
                // SAFETY: plain syscall on a descriptor this connection owns.
                unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                self.push(opcode::AsyncCancel::new(target).build().user_data(ud));
            }
            return;
        }
        let mut c = self.conns.remove(idx).expect("live");
        self.unregister_fixed(idx, c.fixed);
        close_fd(c.fd);
        self.stats.slot_close(idx);
        if let Some(mut f) = c.msrp_mut().and_then(|m| m.fwd.take()) {
            // A chunk it was sending, never finished: its held buffers go.
            self.drop_pieces(f.segs.take());
        }
        if let Some(m) = c.msrp_mut() {
            // Chunks it will never write give their senders' credit back.
            let mut wake = std::mem::take(&mut self.wake_list);
            m.owed
                .release_all(self.relay_window_low, |id| wake.push(id));
            // Its sessions die with it; transactions waiting on it fail.
            let id = m.conn.id;
            let waiting = std::mem::take(&mut m.waiting);
            // (Collected: an empty map allocates nothing.)
            let handed_over: Vec<(u8, TxnId)> = m.handed_over.take().collect();
            if c.outbound {
                self.outbound.retain(|_, v| v.0 != idx);
            }
            let now = self.shared.now_ms();
            let mut rng = glue::fill_random;
            let mut env = glue::env(&self.shared, now, &mut rng);
            self.relay
                .on_conn_closed(id, &mut env, &mut self.msrp_actions);
            for t in &waiting {
                self.relay
                    .on_forward_failed(t, 408, &mut env, &mut self.msrp_actions);
            }
            // Other cores' transactions it never answered: their cores
            // report them now (408, as for this core's own above).
            for (core, t) in handed_over {
                self.fail_on(core, Some(t), 408, now);
            }
            glue::run_detached(
                &mut self.msrp_actions,
                &mut self.msrp_effects,
                &mut self.stats,
            );
            self.apply_msrp_effects(now);
            self.wake_senders(&mut wake);
            self.wake_list = wake;
        }
        if !c.outbound {
            self.stats.closed(c.transport);
        }
        if let Proto::Ws(ws) = &c.proto {
            self.stats.ws_session_closed(ws.sub_protocol);
            let reason = if ws.close_reason.is_empty() {
                "connection lost"
            } else {
                ws.close_reason
            };
            let unix = self.shared.unix_ms();
            self.stats
                .event_closed(&c, ws.sub_protocol, ws.close_code, reason, unix);
        }
        for b in [c.out, c.wire, c.inflight, c.partial] {
            self.recycle_buf(b);
        }
        // Nothing is in flight (teardown waits for the send): the kernel
        // reads none of these buffers any more.
        self.drop_pieces(c.chain);
        self.drop_pieces(c.inflight_chain);
    }

    /// Put connection `idx`'s socket into the fixed-file table (a slot per
    /// connection slot). `false`: not registered, it is used by descriptor.
    fn register_fixed(&mut self, idx: u32, fd: RawFd) -> bool {
        idx < self.fixed_files
            && self
                .ring
                .submitter()
                .register_files_update(idx, &[fd])
                .is_ok()
    }

    /// Drop the fixed-file table's reference to connection `idx`'s socket
    /// (otherwise closing the descriptor would not close the socket). Only
    /// once nothing is in flight on it.
    fn unregister_fixed(&mut self, idx: u32, fixed: bool) {
        if fixed {
            let _ = self.ring.submitter().register_files_update(idx, &[-1]);
        }
    }

    /// Relay latency (chunk read → queued on its target, its send just
    /// submitted) of the chunks queued in this loop: one clock read for
    /// them all, not one per chunk (a vDSO clock read is not free on a VM).
    fn record_relay_latency(&mut self) {
        if self.relayed_in_us.is_empty() {
            return;
        }
        let now = self.shared.now_us();
        for t in self.relayed_in_us.drain(..) {
            self.stats.relay_latency_us(now.saturating_sub(t));
        }
    }

    fn recycle_displaced(&mut self) {
        while let Some(b) = self.displaced.pop() {
            self.recycle_buf(b);
        }
    }

    fn recycle_buf(&mut self, b: Vec<u8>) {
        // Both the output pool and the relay engine (which writes each
        // forwarded head and hop-by-hop response into a buffer) reuse
        // buffers; the pool, which keeps connections' output from growing
        // from nothing, is served first.
        if BufPool::fits(&b) && (self.pool.bufs.len() < POOL_RESERVE || !self.relay.wants_buffers())
        {
            self.pool.put(b);
        } else {
            self.relay.recycle(b);
        }
    }

    /// Output pieces that will not be (or have been) sent: buffers to the
    /// pool, holds on provided buffers released.
    fn drop_pieces(&mut self, pieces: impl IntoIterator<Item = Piece>) {
        let mut released = false;
        for p in pieces {
            match p {
                Piece::Owned(b) => self.recycle_buf(b),
                Piece::Ring { core, bid, .. } => {
                    self.bufs.release(core, bid);
                    released = true;
                }
            }
        }
        if released {
            self.stats.recv_buffers_held(self.bufs.held());
        }
    }

    /// A chunk whose body stayed in a provided buffer, made whole (head,
    /// a copy of the body, end-line) for a target that cannot take it by
    /// reference; the hold is released.
    fn materialize(&mut self, mut frame: Vec<u8>, ring: Option<RingBody>) -> Vec<u8> {
        if let Some(mut r) = ring {
            for p in r.segs.take() {
                match p {
                    Piece::Owned(b) => {
                        frame.extend_from_slice(&b);
                        self.recycle_buf(b);
                    }
                    Piece::Ring {
                        core,
                        bid,
                        off,
                        len,
                    } => {
                        frame.extend_from_slice(self.bufs.held_bytes(core, bid, off, len));
                        self.bufs.release(core, bid);
                    }
                }
            }
            frame.extend_from_slice(r.end.as_slice());
            self.stats.recv_buffers_held(self.bufs.held());
        }
        frame
    }

    /// Senders whose chunk in progress has held provided buffers across
    /// inputs for a while: the rest of the chunk has not come (the sender
    /// paused, or is slow). Those bodies are copied out and the buffers
    /// released, so a sender pins none for long.
    fn check_fwd_pinned(&mut self) {
        let now = self.loop_unix_ms;
        let mut i = 0;
        while i < self.fwd_pinned.len() {
            let (idx, generation, since) = self.fwd_pinned[i];
            let Some(f) = self
                .conns
                .get_mut(idx, generation)
                .and_then(|c| c.msrp_mut())
                .and_then(|m| m.fwd.as_mut())
            else {
                self.fwd_pinned.swap_remove(i);
                continue;
            };
            if !f.segs.has_ring() {
                f.watched = false;
                self.fwd_pinned.swap_remove(i);
                continue;
            }
            if now.saturating_sub(since) < PIN_MAX_MS {
                i += 1;
                continue;
            }
            f.watched = false;
            self.fwd_pinned.swap_remove(i);
            unpin_segs(&mut f.segs, &mut self.bufs, &mut self.pool);
            self.stats.recv_buffers_held(self.bufs.held());
        }
    }

    /// The open outbound connection to `msrp(s)://host:port` if it can
    /// take a body by reference (see [`Self::ring_target`]).
    fn next_hop_ring_target(
        &mut self,
        secure: bool,
        host: &str,
        port: u16,
        now: u64,
    ) -> Option<u32> {
        let addr = self.next_hop_addr(host, port, now)?;
        let &(idx, generation) = self.outbound.get(&(addr, secure))?;
        let c = self.conns.get_mut(idx, generation)?;
        glue::takes_ring(c).then_some(idx)
    }

    /// `host:port` as an address without asking the resolver: a literal,
    /// or a name resolved before and not yet expired.
    fn next_hop_addr(&self, host: &str, port: u16, now: u64) -> Option<SocketAddr> {
        if let Some(ip) = resolver::literal(host) {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.to_ascii_lowercase(), port);
        self.dns_cache
            .get(&key)
            .and_then(|&(addr, until)| (until > now).then_some(addr))
    }

    /// Connection `id` of this core, if it may take a chunk whose body
    /// stays in a provided buffer.
    fn ring_target(&mut self, id: u64) -> Option<u32> {
        let (core, generation, idx) = split_conn_id(id);
        let c = self.conns.get_mut(idx, generation)?;
        (core == self.core && glue::takes_ring(c)).then_some(idx)
    }

    /// Connections whose output has held provided buffers for a while
    /// without a byte going out: their peer stopped reading. A send in
    /// flight is cancelled (its completion copies the bodies out and sends
    /// again); bodies queued behind it are copied out now.
    fn check_pinned(&mut self) {
        let now = self.loop_unix_ms;
        let mut i = 0;
        while i < self.pinned.len() {
            let (idx, generation, sent, since) = self.pinned[i];
            let Some(c) = self.conns.get_mut(idx, generation) else {
                self.pinned.swap_remove(i);
                continue;
            };
            let in_flight = c.inflight_chain.iter().any(Piece::is_ring);
            if !in_flight && !c.chain.iter().any(Piece::is_ring) {
                c.pin_watch = false;
                self.pinned.swap_remove(i);
                continue;
            }
            i += 1;
            if c.bytes_out != sent || !c.sending {
                self.pinned[i - 1] = (idx, generation, c.bytes_out, now);
                continue;
            }
            if now.saturating_sub(since) < PIN_MAX_MS {
                continue;
            }
            self.pinned[i - 1].3 = now;
            if in_flight {
                let target = Token::new(Op::Send, idx, generation).encode();
                let ud = Token::new(Op::Cancel, idx, generation).encode();
                self.push(opcode::AsyncCancel::new(target).build().user_data(ud));
            } else {
                self.unpin_output(idx);
            }
        }
    }

    /// Copy the bodies connection `idx`'s output still has in provided
    /// buffers (in the writev that just went short or was cancelled, when
    /// no send is in flight, and queued) into owned buffers and release
    /// their holds: a peer that does not keep up pins no provided buffer.
    fn unpin_output(&mut self, idx: u32) {
        let Some(c) = self.conns.get_any(idx) else {
            return;
        };
        let (bufs, pool) = (&mut self.bufs, &mut self.pool);
        fn copy(
            bufs: &mut BufRing,
            pool: &mut BufPool,
            core: u8,
            bid: u16,
            off: u32,
            len: u32,
        ) -> Piece {
            let mut b = pool.take();
            b.extend_from_slice(bufs.held_bytes(core, bid, off, len));
            bufs.release(core, bid);
            Piece::Owned(b)
        }
        if !c.sending && c.inflight_chain.iter().any(Piece::is_ring) {
            // What has gone is dropped; the rest is kept, ring pieces as
            // copies of their unsent bytes.
            let mut sent = c.inflight_sent;
            let old = std::mem::take(&mut c.inflight_chain);
            let mut kept = Vec::with_capacity(old.len());
            let mut gone = Vec::new();
            for p in old {
                if kept.is_empty() && sent >= p.len() {
                    sent -= p.len();
                    gone.push(p);
                    continue;
                }
                match p {
                    Piece::Ring {
                        core,
                        bid,
                        off,
                        len,
                    } => {
                        let from = if kept.is_empty() { sent as u32 } else { 0 };
                        if kept.is_empty() {
                            sent = 0;
                        }
                        kept.push(copy(bufs, pool, core, bid, off + from, len - from));
                    }
                    owned => kept.push(owned),
                }
            }
            c.inflight_chain = kept;
            c.inflight_sent = sent;
            for p in gone {
                match p {
                    Piece::Owned(b) => pool.put(b),
                    Piece::Ring { core, bid, .. } => bufs.release(core, bid),
                }
            }
        }
        for p in c.chain.iter_mut() {
            if let Piece::Ring {
                core,
                bid,
                off,
                len,
            } = *p
            {
                *p = copy(bufs, pool, core, bid, off, len);
            }
        }
        self.stats.recv_buffers_held(self.bufs.held());
    }
}

/// Copy the ring pieces of a body in progress out of their provided
/// buffers and release those.
fn unpin_segs(segs: &mut BodySegs, bufs: &mut BufRing, pool: &mut BufPool) {
    for p in segs.as_mut_slice() {
        if let Piece::Ring {
            core,
            bid,
            off,
            len,
        } = *p
        {
            let mut b = pool.take();
            b.extend_from_slice(bufs.held_bytes(core, bid, off, len));
            bufs.release(core, bid);
            *p = Piece::Owned(b);
        }
    }
}

/// Feed plaintext to the connection's engine. Returns bytes consumed; the
/// rest is an incomplete handshake or frame.
/// Feed plaintext to the connection's engine, keeping only the bytes of an
/// incomplete handshake or frame: when nothing is pending, `data` is handled
/// where it lies (the provided buffer, unmasked in place) and just the tail
/// is copied; otherwise it is appended to the pending bytes first.
fn feed_plain(
    c: &mut Conn,
    data: &mut [u8],
    now: u64,
    shared: &Shared,
    stats: &mut WorkerStats,
    c_idx: u32,
    ctx: &mut MsrpCtx<'_>,
) {
    if c.partial.is_empty() {
        let consumed = process_plain(c, data, now, shared, stats, c_idx, ctx);
        if consumed < data.len() && c.teardown == Teardown::Open {
            c.partial.extend_from_slice(&data[consumed..]);
        }
    } else {
        // Complete what is held with as little of `data` as it takes: once
        // the held bytes are consumed, whatever is left in the buffer is a
        // copy of `data`'s bytes, so the rest is handled in place. (Copying
        // every received buffer behind a held partial frame was the largest
        // user-space copy of the MSRP relay: with pipelining nearly every
        // read ends inside a frame.)
        let mut p = std::mem::take(&mut c.partial);
        let mut held = p.len();
        let mut off = 0;
        let mut step = SPLICE_STEP;
        // A streamed WebSocket message (MSRP) holds back at most a frame
        // header or a control frame: completing just that leaves the next
        // payload to be read where it lies (a copy here would be relayed
        // as a copy).
        let streamed = matches!(&c.proto, Proto::Ws(ws) if ws.msrp.is_some());
        loop {
            let need = if streamed {
                frame::streamed_need(&p)
            } else {
                0
            };
            let take = if need > 0 { need } else { step }.min(data.len() - off);
            p.extend_from_slice(&data[off..off + take]);
            off += take;
            // p[held..] is a copy of data[..off]: bodies read there may go
            // by reference to the buffer (plain MSRP: WebSocket unmasks p).
            if let Some(r) = ctx.ring.as_mut()
                && matches!(c.proto, Proto::Msrp(_))
            {
                r.set_splice(Some((&p, held)));
            }
            let consumed = process_plain(c, &mut p, now, shared, stats, c_idx, ctx).min(p.len());
            if let Some(r) = ctx.ring.as_mut() {
                r.set_splice(None);
            }
            if c.teardown != Teardown::Open {
                return;
            }
            if consumed >= held {
                // p[consumed..] is data[off - (p.len() - consumed)..off].
                let resume = off - (p.len() - consumed);
                p.clear();
                c.partial = p;
                let rest = &mut data[resume..];
                if rest.is_empty() {
                    return;
                }
                let n = process_plain(c, rest, now, shared, stats, c_idx, ctx);
                if n < rest.len() && c.teardown == Teardown::Open {
                    c.partial.extend_from_slice(&rest[n..]);
                }
                return;
            }
            p.drain(..consumed);
            held -= consumed;
            if off == data.len() {
                c.partial = p;
                return;
            }
            step = step.saturating_mul(2);
        }
    }
}

/// Bytes of a new read first appended behind a held partial frame (then
/// twice as many each time more are needed).
const SPLICE_STEP: usize = 1024;

fn process_plain(
    c: &mut Conn,
    data: &mut [u8],
    now: u64,
    shared: &Shared,
    stats: &mut WorkerStats,
    c_idx: u32,
    ctx: &mut MsrpCtx<'_>,
) -> usize {
    let mut consumed = 0;
    if matches!(c.proto, Proto::Handshake) {
        let enabled = shared.ws_enabled();
        match handshake::process(data, &shared.policy, enabled, shared.unix_ms() / 1000) {
            Outcome::Partial => return 0,
            Outcome::Rejected(r) => {
                stats.handshake_rejected(r.reason);
                stats.event_rejected(c, r.reason, shared.unix_ms());
                c.out.extend_from_slice(&r.response);
                c.teardown = Teardown::AfterFlush;
                c.proto = Proto::Raw;
                return data.len();
            }
            Outcome::Accepted(a) => {
                stats.handshake_accepted(shared.now_us().saturating_sub(c.accepted_us));
                stats.ws_session_opened(a.sub_protocol);
                c.out.extend_from_slice(&a.response);
                let session = WsSession::new(shared.session_config.clone(), now);
                let msrp = (a.sub_protocol == SubProtocol::Msrp).then(|| {
                    glue::new_state(
                        shared,
                        u32::from(ctx.relay.sessions.core()),
                        c_idx,
                        c.generation,
                        c,
                        true,
                    )
                });
                c.proto = Proto::Ws(Box::new(WsConn {
                    session,
                    sub_protocol: a.sub_protocol,
                    close_code: None,
                    close_reason: "",
                    msrp,
                }));
                let info = match &a.user {
                    Some(u) => format!("{} {}", a.path, u),
                    None => a.path.clone(),
                };
                stats.slot_ws_open(c_idx, a.sub_protocol, &info);
                stats.event_opened(c, a.sub_protocol, &info, shared.unix_ms());
                consumed = a.consumed.min(data.len());
            }
        }
    }
    match &mut c.proto {
        Proto::Ws(ws) => {
            let sub = ws.sub_protocol;
            let mut messages = 0u64;
            let mut echoed_text = 0u64;
            let mut echoed_binary = 0u64;
            let mut msrp_out = 0u64;
            let mut msrp_close = None;
            let rest = &mut data[consumed..];
            let WsConn { session, msrp, .. } = &mut **ws;
            let n = if let Some(m) = msrp.as_deref_mut() {
                // RFC 7977: one MSRP chunk per WebSocket message, parsed as
                // its bytes arrive (bodies relayed from where they lie).
                let mut rng = glue::fill_random;
                let mut env = glue::env(shared, now, &mut rng);
                session.on_bytes_streamed(rest, now, &mut c.out, &mut |piece, out| {
                    if piece.last {
                        messages += 1;
                    }
                    let o = glue::feed_ws_piece(m, piece, &mut env, out, ctx, stats);
                    msrp_out += o.frames_out;
                    if o.close.is_some() && msrp_close.is_none() {
                        msrp_close = o.close;
                    }
                })
            } else {
                session.on_bytes(rest, now, &mut c.out, &mut |kind, payload, out| {
                    messages += 1;
                    if sub == SubProtocol::Echo {
                        let op = match kind {
                            MessageKind::Text => {
                                echoed_text += 1;
                                OpCode::Text
                            }
                            MessageKind::Binary => {
                                echoed_binary += 1;
                                OpCode::Binary
                            }
                        };
                        frame::write_frame(out, op, payload);
                    }
                })
            };
            stats.messages_in(sub, messages);
            if let Some(reason) = msrp_close {
                ws.close_reason = reason;
                ws.session
                    .close(1002, "MSRP protocol error", now, &mut c.out);
            }
            if ws.msrp.is_some() {
                stats.messages_out(sub, msrp_out);
                c.frames_out += msrp_out;
            } else if sub == SubProtocol::Echo {
                stats.messages_out(sub, echoed_text + echoed_binary);
                c.frames_out += echoed_text + echoed_binary;
                stats.data_frames_out(echoed_binary, echoed_text);
            } else {
                // Engines for sip/msrp/xmpp come with their own issues; until
                // then their messages are counted and dropped.
                stats.messages_dropped(sub, messages);
            }
            consumed + n
        }
        Proto::Msrp(m) => {
            let rest = &data[consumed..];
            let mut rng = glue::fill_random;
            let mut env = glue::env(shared, now, &mut rng);
            let n = ctx.relay.on_bytes(&mut m.conn, rest, &mut env, ctx.actions);
            let o = glue::run_actions(m, rest, glue::Input::Stream, &mut c.out, ctx, stats);
            c.frames_in += o.frames_in;
            c.frames_out += o.frames_out;
            if let Some(reason) = o.close {
                tracing::debug!(peer = %c.peer, reason, "closing MSRP connection");
                c.teardown = Teardown::AfterFlush;
                return data.len();
            }
            consumed + n
        }
        Proto::Raw => data.len(),
        Proto::Handshake => consumed,
    }
}

fn next_deadline(c: &Conn, shared: &Shared, _now: u64) -> Option<u64> {
    if c.teardown != Teardown::Open {
        return None;
    }
    match &c.proto {
        Proto::Handshake => Some(c.accepted_ms + shared.config.websocket.handshake_timeout * 1000),
        Proto::Ws(ws) => ws.session.next_deadline(),
        Proto::Raw | Proto::Msrp(_) => None,
    }
}

/// Connection ids: core (8 bits) | generation (24 bits) | slot (32 bits).
pub fn conn_id(core: u32, idx: u32, generation: u32) -> u64 {
    ((core as u64 & 0xff) << 56) | ((generation as u64 & 0xff_ffff) << 32) | idx as u64
}

pub fn split_conn_id(id: u64) -> (u32, u32, u32) {
    (
        (id >> 56) as u32,
        ((id >> 32) & 0xff_ffff) as u32,
        id as u32,
    )
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries * 4)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .setup_submit_all();
    match b.build(entries) {
        Ok(r) => Ok(r),
        // Older kernels lack some flags: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(entries * 4).build(entries)
        }
        Err(e) => Err(e),
    }
}

/// A sparse fixed-file table for the connections' sockets, as large as the
/// connection limit allows (up to [`FIXED_FILES_MAX`], never beyond the open
/// files limit the kernel checks it against). Returns its size; 0 when the
/// kernel refuses one (connections then use plain descriptors).
fn register_file_table(ring: &IoUring, max_conns: u32) -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(u64::from(u32::MAX)) as u32
    } else {
        0
    };
    let n = max_conns.min(FIXED_FILES_MAX).min(nofile);
    if n == 0 || ring.submitter().register_files_sparse(n).is_err() {
        return 0;
    }
    n
}

fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live c_int on a descriptor we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn sockaddr_of(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: `fd` is a live socket owned by the caller for this call.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&bfd);
    let sa = if peer {
        sock.peer_addr()
    } else {
        sock.local_addr()
    };
    sa.ok()?.as_socket()
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr_of(fd, true)
}

fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    sockaddr_of(fd, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// Output buffers are never small: a batch of frames queued behind a
    /// small buffer would be copied again by every reallocation.
    #[test]
    fn the_output_pool_keeps_only_buffers_a_batch_fits_in() {
        let mut pool = BufPool::default();
        pool.put(Vec::with_capacity(1024));
        pool.put(Vec::with_capacity(0));
        assert!(pool.bufs.is_empty(), "a small buffer was pooled");
        let big = Vec::with_capacity(NEW_BUF * 2);
        let at = big.as_ptr();
        pool.put(big);
        let b = pool.take();
        assert_eq!(b.as_ptr(), at, "the pooled buffer was not reused");
        assert!(BufPool::fits(&pool.take()), "a new buffer is too small");
        // An empty small output is replaced (and handed back); an output
        // with bytes in it, or a pooled-size one, is left alone.
        let mut out = Vec::with_capacity(100);
        assert_eq!(
            pool.make_output(&mut out).map(|b| b.capacity() >= 100),
            Some(true)
        );
        assert!(BufPool::fits(&out));
        let mut none = Vec::new();
        assert!(pool.make_output(&mut none).is_none() && BufPool::fits(&none));
        let mut busy = vec![1u8];
        assert!(pool.make_output(&mut busy).is_none() && busy.capacity() < NEW_BUF);
        assert!(pool.make_output(&mut out).is_none());
    }

    /// A body in progress whose sender stalled: its ring pieces become
    /// copies of the same bytes and the buffer goes back (no hold left).
    #[test]
    fn unpinned_body_segments_are_copies_and_release_their_buffers() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut bufs = BufRing::new(
            &ring,
            0,
            8,
            64,
            crate::reactor::bufring::RingTable::new(1),
            0,
        )
        .expect("buffer ring");
        let data = bufs.buffer(3, 64);
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut segs = BodySegs::default();
        assert_eq!(segs.push_ring(0, 3, 4, 10), Some(true));
        segs.push_owned(b"held", Vec::new);
        assert_eq!(segs.push_ring(0, 3, 20, 6), Some(true));
        bufs.hold(3, 2);
        bufs.recycle(3);
        assert_eq!(bufs.held(), 1);
        let mut pool = BufPool::default();
        unpin_segs(&mut segs, &mut bufs, &mut pool);
        assert_eq!(bufs.held(), 0);
        assert!(!segs.has_ring());
        let mut got = Vec::new();
        for p in segs.take() {
            if let Piece::Owned(b) = p {
                got.extend_from_slice(&b);
            }
        }
        let mut want: Vec<u8> = (4..14).collect();
        want.extend_from_slice(b"held");
        want.extend(20..26);
        assert_eq!(got, want);
        bufs.unregister(&ring);
    }

    #[test]
    fn file_table_is_sized_by_the_connection_limit() {
        let ring = IoUring::new(8).expect("io_uring");
        assert_eq!(register_file_table(&ring, 0), 0);
        let ring = IoUring::new(8).expect("io_uring");
        assert_eq!(register_file_table(&ring, 16), 16);
        let ring = IoUring::new(8).expect("io_uring");
        let n = register_file_table(&ring, u32::MAX);
        assert!(n <= FIXED_FILES_MAX);
    }

    /// The table holds its own reference: closing the descriptor alone
    /// leaves the socket open; clearing the slot closes it.
    #[test]
    fn clearing_the_slot_closes_the_socket() {
        let ring = IoUring::new(8).expect("io_uring");
        assert_eq!(register_file_table(&ring, 4), 4);
        let (ours, mut peer) = UnixStream::pair().expect("pair");
        peer.set_nonblocking(true).expect("nonblocking");
        let fd = ours.into_raw_fd();
        ring.submitter()
            .register_files_update(3, &[fd])
            .expect("register");
        close_fd(fd);
        let mut b = [0u8; 1];
        let e = peer.read(&mut b).expect_err("still open");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        ring.submitter()
            .register_files_update(3, &[-1])
            .expect("unregister");
        // The file is released once the kernel's deferred put has run.
        let mut closed = false;
        for _ in 0..100 {
            if matches!(peer.read(&mut b), Ok(0)) {
                closed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(closed, "socket not closed after its slot was cleared");
    }
}
