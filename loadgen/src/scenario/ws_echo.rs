//! `ws-echo`: every connection sends self-checking messages and verifies
//! the server's echoes.
//!
//! * Closed loop (default): `--window W` messages in flight per
//!   connection; whenever echoes come back, all the frames that fit the
//!   window are queued and written with one system call.
//! * Open loop (`--rate R`): each connection sends on its own schedule
//!   (R / connections msg/s, random phase); latency is measured from the
//!   *intended* send time, so a stalled server cannot hide its stalls
//!   (coordinated omission). `--window` then caps the messages in flight
//!   (default: 65536); messages held back by the cap keep their intended
//!   send time. The first `timer_slack` of lateness is forgiven (the send
//!   time used is `min(actual, intended + slack)`), because tokio's timer
//!   has 1 ms granularity and that delay is the client's, not the server's.

use serde::Serialize;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::engine::{Clock, OpenLoop, Phase, Scenario, ThreadCtx, wait_phase};
use crate::net::{ConnError, Connector};
use crate::payload::{self, Body, Verdict};
use crate::report;
use crate::rng::Rng;
use crate::scenario::units::{self, Counters, Hists, UnitsThread, run_units};
use crate::ws::frame::{self, OP_BINARY, OP_TEXT};
use crate::ws::{Event, WsIo};

/// Settings of one ws-echo run.
#[derive(Clone)]
pub struct WsEcho {
    pub connector: Connector,
    pub connections: usize,
    pub size: usize,
    pub text: bool,
    /// Closed loop: messages in flight per connection. Open loop: cap.
    pub window: usize,
    /// Open loop: total messages per second over all connections.
    pub rate: Option<f64>,
    /// Total messages over all connections (then stop).
    pub count: Option<u64>,
    pub connect_concurrency: usize,
    pub close_timeout: Duration,
    /// Open loop: lateness of our own timer not charged to the server.
    pub timer_slack: Duration,
}

/// Integrity and traffic counts.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct EchoStats {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub pings_from_server: u64,
    pub closed_by_server: u64,
}

impl Counters for EchoStats {
    fn add(&mut self, o: &EchoStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.corrupted += o.corrupted;
        self.pings_from_server += o.pings_from_server;
        self.closed_by_server += o.closed_by_server;
    }
}

/// One worker thread's results.
pub type EchoThread = UnitsThread<EchoStats>;

type Shared = units::Shared<EchoStats>;

impl Scenario for WsEcho {
    type Thread = EchoThread;

    fn units(&self) -> usize {
        self.connections
    }

    async fn run_thread(self: Arc<Self>, ctx: ThreadCtx) -> EchoThread {
        let concurrency = self.connect_concurrency;
        run_units(ctx, concurrency, |ctx, sh, sem, idx| {
            conn_task(self.clone(), ctx, sh, sem, idx)
        })
        .await
    }
}

/// Per-connection message quota in count mode.
fn quota(count: Option<u64>, conns: usize, idx: usize) -> u64 {
    match count {
        None => u64::MAX,
        Some(c) => {
            let n = conns.max(1) as u64;
            c / n + u64::from((idx as u64) < c % n)
        }
    }
}

async fn conn_task(
    sc: Arc<WsEcho>,
    ctx: Rc<ThreadCtx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    idx: usize,
) {
    let mut phase = ctx.phase.clone();
    let mut rng = Rng::from_os(idx as u64);
    let up = {
        let _permit = sem.acquire().await;
        if phase.borrow().phase >= Phase::Drain {
            return;
        }
        ctx.counters.attempted.add(1);
        let mut stop = phase.clone();
        tokio::select! {
            r = sc.connector.connect(idx, &mut rng) => r,
            _ = wait_phase(&mut stop, Phase::Drain) => {
                Err(ConnError::new("aborted", "run stopped while connecting"))
            }
        }
    };
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            ctx.counters.failed.add(1);
            ctx.error(&sh.errors, &e);
            return;
        }
    };
    ctx.counters.connected.add(1);
    let io = WsIo::new(up, rng.clone(), 64 * 1024, 64 << 20);
    let st = wait_phase(&mut phase, Phase::Run).await;
    let mut body_rng = rng;
    let text = sc.text;
    let mut c = EchoConn {
        io,
        st: ConnState {
            id: idx as u32,
            text,
            opcode: if text { OP_TEXT } else { OP_BINARY },
            size: sc.size,
            body: Body::new(sc.size, text, &mut body_rng),
            next_seq: 0,
            max_acked: None,
            inflight: VecDeque::with_capacity(sc.window.min(4096)),
            quota: quota(sc.count, sc.connections, idx),
            window: sc.window.max(1),
            measure_from_ns: ctx.clock.ns_of(st.measure_from),
            stats: EchoStats::default(),
            batch_received: 0,
            batch_bytes: 0,
            acked: 0,
        },
        sending: st.phase == Phase::Run,
        open: None,
        clock: ctx.clock,
        sh: sh.clone(),
    };
    if let Some(rate) = sc.rate {
        let per_conn = rate / sc.connections.max(1) as f64;
        let start = ctx.clock.ns_of(st.run_start);
        c.open = Some(OpenLoop::new(
            per_conn,
            start,
            sc.timer_slack,
            &mut c.io.rng,
        ));
    }

    let outcome = if c.sending {
        let mut drain = phase.clone();
        let mut close = phase.clone();
        let drain_f = pin!(wait_phase(&mut drain, Phase::Drain));
        let close_f = pin!(wait_phase(&mut close, Phase::Close));
        c.run(&ctx, drain_f, close_f).await
    } else {
        Ok(Outcome::Drained)
    };
    let mut st = c.st;
    st.stats.pings_from_server = c.io.pings_received;
    match &outcome {
        Ok(Outcome::Drained) | Ok(Outcome::DrainTimeout) => {
            let wait = if crate::engine::interrupted() {
                Duration::from_millis(50)
            } else {
                sc.close_timeout
            };
            if let Err(e) = c.io.close(1000, wait).await {
                ctx.error(&sh.errors, &e);
            }
        }
        Ok(Outcome::ServerClosed(code)) => {
            st.stats.closed_by_server += 1;
            ctx.error(
                &sh.errors,
                &ConnError::new(
                    "closed_by_server",
                    format!("close frame with status {code}"),
                ),
            );
            let _ = c.io.close(1000, Duration::from_millis(200)).await;
        }
        Err(e) => ctx.error(&sh.errors, e),
    }
    // Whatever is still in flight now was lost.
    let lost = st.inflight.len() as u64;
    st.stats.lost += lost;
    ctx.counters.inflight.sub(lost);
    ctx.counters.finished.add(1);
    sh.stats.borrow_mut().add(&st.stats);
}

enum Outcome {
    /// Everything sent was answered (drain or count done).
    Drained,
    /// The engine gave up waiting for outstanding echoes.
    DrainTimeout,
    ServerClosed(u16),
}

/// The per-connection state the read callback updates.
struct ConnState {
    id: u32,
    text: bool,
    opcode: u8,
    size: usize,
    body: Body,
    next_seq: u64,
    /// Highest sequence number echoed so far: an echo below it arrived out
    /// of order (a lost message does not make the later ones "reordered").
    max_acked: Option<u64>,
    /// (sequence number, send time ns), in sending order.
    inflight: VecDeque<(u64, u64)>,
    quota: u64,
    window: usize,
    measure_from_ns: u64,
    stats: EchoStats,
    batch_received: u64,
    batch_bytes: u64,
    acked: u64,
}

impl ConnState {
    #[inline]
    fn on_message(&mut self, opcode: u8, p: &[u8], now: u64, hist: &mut Hists) {
        self.batch_received += 1;
        self.batch_bytes += p.len() as u64;
        self.stats.received += 1;
        match payload::verify(p, self.text) {
            Verdict::Ok { conn, seq }
                if conn == self.id && opcode == self.opcode && p.len() == self.size =>
            {
                self.ack(seq, now, hist);
            }
            Verdict::Ok { conn, seq } | Verdict::BadChecksum { conn, seq } if conn == self.id => {
                // Damaged echo of a known message: counted as corrupted,
                // not also as lost.
                self.stats.corrupted += 1;
                if let Ok(i) = self.inflight.binary_search_by_key(&seq, |e| e.0) {
                    self.inflight.remove(i);
                    self.acked += 1;
                }
            }
            _ => self.stats.corrupted += 1,
        }
    }

    #[inline]
    fn ack(&mut self, seq: u64, now: u64, hist: &mut Hists) {
        let sent_at = match self.inflight.front() {
            Some(&(s, t)) if s == seq => {
                self.inflight.pop_front();
                t
            }
            _ => match self.inflight.binary_search_by_key(&seq, |e| e.0) {
                Ok(i) => self.inflight.remove(i).map(|e| e.1).unwrap_or(now),
                Err(_) => {
                    if seq < self.next_seq {
                        self.stats.duplicated += 1;
                    } else {
                        self.stats.corrupted += 1;
                    }
                    return;
                }
            },
        };
        self.acked += 1;
        match self.max_acked {
            Some(m) if seq < m => self.stats.reordered += 1,
            _ => self.max_acked = Some(seq),
        }
        let us = now.saturating_sub(sent_at) / 1000;
        hist.seconds.record(now, us);
        if sent_at >= self.measure_from_ns {
            hist.measured.saturating_record(us);
        }
    }

    /// Queue one message stamped with send time `t`.
    #[inline]
    fn push(&mut self, io: &mut WsIo, t: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mask = io.mask();
        let start = frame::encode_header(&mut io.wbuf, self.opcode, self.size, mask);
        payload::append(&mut io.wbuf, self.text, self.id, seq, &self.body);
        frame::apply_mask(&mut io.wbuf[start..], mask, 0);
        self.inflight.push_back((seq, t));
        self.quota -= 1;
        self.stats.sent += 1;
    }
}

struct EchoConn {
    io: WsIo,
    st: ConnState,
    sending: bool,
    /// Open loop: the send schedule (`None`: closed loop).
    open: Option<OpenLoop>,
    clock: Clock,
    sh: Rc<Shared>,
}

impl EchoConn {
    async fn run(
        &mut self,
        ctx: &ThreadCtx,
        mut drain: Pin<&mut impl Future<Output = crate::engine::PhaseState>>,
        mut close: Pin<&mut impl Future<Output = crate::engine::PhaseState>>,
    ) -> Result<Outcome, ConnError> {
        let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        poll_fn(|cx| {
            if self.sending && drain.as_mut().poll(cx).is_ready() {
                self.sending = false;
            }
            if !self.sending && close.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Outcome::DrainTimeout));
            }
            self.poll_step(cx, ctx, sleep.as_mut())
        })
        .await
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &ThreadCtx,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<Result<Outcome, ConnError>> {
        let sh = self.sh.clone();
        let mut rounds = 0;
        loop {
            let mut progress = false;
            let now = self.clock.now_ns();
            // 1. Read and handle every complete frame.
            {
                let st = &mut self.st;
                let mut h = sh.hist.borrow_mut();
                let mut on = |_: &mut Vec<u8>, ev: Event<'_>| {
                    if let Event::Message { opcode, payload } = ev {
                        st.on_message(opcode, payload, now, &mut h);
                    }
                    Ok(())
                };
                match self.io.poll_read_frames(cx, &mut on) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.st.batch_received > 0 || self.st.acked > 0 {
                let c = &ctx.counters;
                c.received.add(self.st.batch_received);
                c.rx_bytes.add(self.st.batch_bytes);
                c.inflight.sub(self.st.acked);
                self.st.batch_received = 0;
                self.st.batch_bytes = 0;
                self.st.acked = 0;
            }
            if let Some(code) = self.io.close_received {
                return Poll::Ready(Ok(Outcome::ServerClosed(code)));
            }
            // 2. Queue new messages.
            if self.sending && self.st.quota > 0 {
                let before = self.st.next_seq;
                if let Some(open) = &mut self.open {
                    while self.st.quota > 0 && self.st.inflight.len() < self.st.window {
                        let Some(stamp) = open.take_due(now) else {
                            break;
                        };
                        self.st.push(&mut self.io, stamp);
                    }
                } else {
                    let room = self.st.window.saturating_sub(self.st.inflight.len());
                    let n = (room as u64).min(self.st.quota);
                    let frame_len = frame::client_header_len(self.st.size) + self.st.size;
                    self.io.wbuf.reserve(n as usize * frame_len);
                    for _ in 0..n {
                        self.st.push(&mut self.io, now);
                    }
                }
                let n = self.st.next_seq - before;
                if n > 0 {
                    let c = &ctx.counters;
                    c.sent.add(n);
                    c.tx_bytes.add(n * self.st.size as u64);
                    c.inflight.add(n);
                }
            }
            // 3. Write everything queued.
            match self.io.poll_write_out(cx) {
                Poll::Ready(Ok(w)) => progress |= w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            // 4. Done?
            let nothing_more = !self.sending || self.st.quota == 0;
            if nothing_more && self.st.inflight.is_empty() && self.io.pending_write() == 0 {
                return Poll::Ready(Ok(Outcome::Drained));
            }
            // 5. Open-loop timer.
            if self.sending
                && self.st.quota > 0
                && let Some(open) = &mut self.open
                && open.poll_timer(cx, now, &self.clock, sleep.as_mut())
            {
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
            rounds += 1;
            if rounds >= 16 {
                // Let the thread's other connections run.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl WsEcho {
    /// Merge the threads' results into the report.
    pub fn report(
        &self,
        threads: Vec<EchoThread>,
        run: &crate::engine::RunSummary,
        config: serde_json::Value,
        nthreads: usize,
    ) -> report::Report {
        let UnitsThread {
            hist,
            seconds,
            stats,
            errors,
        } = UnitsThread::merge(&threads);
        let mut r = report::Report::base(
            "ws-echo",
            config,
            run,
            nthreads,
            self.connections as u64,
            Some(run.measured_received()),
            errors,
        );
        r.messages = serde_json::to_value(stats).ok();
        r.latency_us = report::Percentiles::of(&hist);
        r.latency_per_second = seconds.series();
        r.ok = r.ok
            && r.threads_lost == 0
            && r.connections.failed == 0
            && stats.closed_by_server == 0
            && stats.lost == 0
            && stats.corrupted == 0
            && stats.duplicated == 0
            && stats.reordered == 0;
        r
    }
}

/// Integrity verdict for the exit status: true if anything was lost,
/// corrupted, duplicated or reordered.
pub fn integrity_failed(r: &report::Report) -> bool {
    let get = |k: &str| {
        r.messages
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    get("lost") + get("corrupted") + get("duplicated") + get("reordered") > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SecondHists;

    #[test]
    fn quotas_sum_to_count() {
        for (count, conns) in [(10u64, 3usize), (7, 7), (5, 10), (1000, 1)] {
            let total: u64 = (0..conns).map(|i| quota(Some(count), conns, i)).sum();
            assert_eq!(total, count);
        }
        assert_eq!(quota(None, 3, 0), u64::MAX);
    }

    fn state() -> ConnState {
        let mut rng = Rng::from_os(0);
        ConnState {
            id: 3,
            text: false,
            opcode: OP_BINARY,
            size: 64,
            body: Body::new(64, false, &mut rng),
            next_seq: 0,
            max_acked: None,
            inflight: VecDeque::new(),
            quota: u64::MAX,
            window: 16,
            measure_from_ns: 0,
            stats: EchoStats::default(),
            batch_received: 0,
            batch_bytes: 0,
            acked: 0,
        }
    }

    fn msg(st: &ConnState, seq: u64) -> Vec<u8> {
        let mut p = Vec::new();
        payload::append(&mut p, false, st.id, seq, &st.body);
        p
    }

    #[test]
    fn integrity_accounting() {
        let mut st = state();
        let mut h = Hists {
            measured: report::new_histogram(),
            seconds: SecondHists::default(),
        };
        for i in 0..4 {
            st.inflight.push_back((i, 0));
        }
        st.next_seq = 4;
        // In order, then 2 overtakes 1 (reorder), then a duplicate of 0.
        st.on_message(OP_BINARY, &msg(&st, 0), 5_000, &mut h);
        st.on_message(OP_BINARY, &msg(&st, 2), 5_000, &mut h);
        st.on_message(OP_BINARY, &msg(&st, 1), 5_000, &mut h);
        st.on_message(OP_BINARY, &msg(&st, 0), 5_000, &mut h);
        // A corrupted copy of 3: counted corrupted, removed from in-flight.
        let mut bad = msg(&st, 3);
        bad[40] ^= 1;
        st.on_message(OP_BINARY, &bad, 5_000, &mut h);
        // A message never sent.
        st.on_message(OP_BINARY, &msg(&st, 99), 5_000, &mut h);
        // Wrong opcode.
        st.inflight.push_back((4, 0));
        st.next_seq = 5;
        st.on_message(OP_TEXT, &msg(&st, 4), 5_000, &mut h);
        assert_eq!(st.stats.received, 7);
        assert_eq!(st.stats.reordered, 1);
        assert_eq!(st.stats.duplicated, 1);
        assert_eq!(st.stats.corrupted, 3);
        assert!(st.inflight.is_empty());
        assert_eq!(h.measured.len(), 3);
        assert_eq!(h.measured.max(), 5);
        assert_eq!(h.seconds.series().len(), 1);
        assert_eq!(h.seconds.series()[0].count, 3);
    }

    #[test]
    fn a_lost_message_does_not_make_later_ones_reordered() {
        let mut st = state();
        let mut h = Hists {
            measured: report::new_histogram(),
            seconds: SecondHists::default(),
        };
        for i in 0..10 {
            st.inflight.push_back((i, 0));
        }
        st.next_seq = 10;
        for i in (0..10).filter(|i| *i != 3) {
            st.on_message(OP_BINARY, &msg(&st, i), 2_000_000_000, &mut h);
        }
        assert_eq!(st.stats.reordered, 0);
        assert_eq!(st.inflight.len(), 1);
        assert_eq!(h.seconds.series()[0].t_s, 3.0);
    }
}
