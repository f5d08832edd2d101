//! `ws-connect`: open N WebSocket connections (optionally at a bounded
//! rate), hold them idle for `--duration` while answering the server's
//! pings and sending our own keep-alive pings, then check which ones
//! survived: at the end each connection sends a final ping and counts as
//! surviving only if the pong comes back.
//!
//! Handshake storm (`--churn R`): besides the held connections (which may
//! be zero), R new short-lived connections per second are opened during the
//! run phase; each completes the upgrade (timed), lives `--churn-lifetime`
//! and ends with a closing handshake. They are reported in `churn`.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::engine::{ErrorLog, Phase, Scenario, ThreadCtx, wait_phase};
use crate::net::{ConnError, Connector};
use crate::report::{self, SecondHists};
use crate::rng::Rng;
use crate::ws::frame::OP_PING;
use crate::ws::{Event, WsIo};

#[derive(Clone)]
pub struct WsConnect {
    pub connector: Connector,
    pub connections: usize,
    /// New connections per second over all threads (None: as fast as the
    /// connect concurrency allows).
    pub connect_rate: Option<f64>,
    pub connect_concurrency: usize,
    /// Keep-alive ping period (None: no pings until the final check).
    pub ping_interval: Option<Duration>,
    pub close_timeout: Duration,
    /// Handshake storm: new short-lived connections per second during the
    /// run phase, over all threads.
    pub churn: Option<f64>,
    /// How long each churn connection stays open before its close.
    pub churn_lifetime: Duration,
}

/// The short-lived connections of `--churn`.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ChurnStats {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Closing handshake completed.
    pub closed: u64,
    /// Closing handshake failed or timed out.
    pub close_errors: u64,
    /// Cut short by the end of the run (still connecting, or open before
    /// the end of their lifetime); not failures.
    pub aborted: u64,
    /// Attempts skipped because --connect-concurrency were already pending
    /// (the server is slower than the requested rate).
    pub skipped: u64,
}

impl ChurnStats {
    pub fn add(&mut self, o: &ChurnStats) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.failed += o.failed;
        self.closed += o.closed;
        self.close_errors += o.close_errors;
        self.aborted += o.aborted;
        self.skipped += o.skipped;
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ConnectStats {
    pub established: u64,
    /// Open at the end and answered the final ping.
    pub survived: u64,
    pub closed_by_server: u64,
    pub died: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    /// Keep-alive pings still unanswered when the next one was due.
    pub pings_unanswered: u64,
    pub pings_from_server: u64,
}

impl ConnectStats {
    pub fn add(&mut self, o: &ConnectStats) {
        self.established += o.established;
        self.survived += o.survived;
        self.closed_by_server += o.closed_by_server;
        self.died += o.died;
        self.pings_sent += o.pings_sent;
        self.pongs_received += o.pongs_received;
        self.pings_unanswered += o.pings_unanswered;
        self.pings_from_server += o.pings_from_server;
    }
}

pub struct ConnectThread {
    /// TCP connect + TLS + upgrade time, µs (held connections).
    pub hist: Histogram<u64>,
    /// The same for the churn connections.
    pub churn_hist: Histogram<u64>,
    /// Handshake times of both kinds, by second.
    pub seconds: SecondHists,
    pub stats: ConnectStats,
    pub churn: ChurnStats,
    pub errors: ErrorLog,
}

struct Shared {
    hist: RefCell<Histogram<u64>>,
    churn_hist: RefCell<Histogram<u64>>,
    seconds: RefCell<SecondHists>,
    stats: RefCell<ConnectStats>,
    churn: RefCell<ChurnStats>,
    errors: RefCell<ErrorLog>,
}

impl Scenario for WsConnect {
    type Thread = ConnectThread;

    fn units(&self) -> usize {
        self.connections
    }

    async fn run_thread(self: Arc<Self>, ctx: ThreadCtx) -> ConnectThread {
        let ctx = Rc::new(ctx);
        let sh = Rc::new(Shared {
            hist: RefCell::new(report::new_histogram()),
            churn_hist: RefCell::new(report::new_histogram()),
            seconds: RefCell::new(SecondHists::default()),
            stats: RefCell::new(ConnectStats::default()),
            churn: RefCell::new(ChurnStats::default()),
            errors: RefCell::new(ErrorLog::default()),
        });
        let sem = Rc::new(Semaphore::new(self.connect_concurrency.max(1)));
        let start = Instant::now();
        let per_thread_rate = self.connect_rate.map(|r| r / ctx.threads as f64);
        let mut set = JoinSet::new();
        for (k, idx) in ctx.units.clone().enumerate() {
            let at =
                per_thread_rate.map(|r| start + Duration::from_secs_f64(k as f64 / r.max(1e-3)));
            set.spawn_local(conn_task(
                self.clone(),
                ctx.clone(),
                sh.clone(),
                sem.clone(),
                idx,
                at,
            ));
        }
        if let Some(rate) = self.churn.filter(|r| *r > 0.0) {
            set.spawn_local(churn_driver(
                self.clone(),
                ctx.clone(),
                sh.clone(),
                rate / ctx.threads as f64,
            ));
        }
        while set.join_next().await.is_some() {}
        drop(set);
        let sh = Rc::try_unwrap(sh).unwrap_or_else(|_| unreachable!("all tasks joined"));
        ConnectThread {
            hist: sh.hist.into_inner(),
            churn_hist: sh.churn_hist.into_inner(),
            seconds: sh.seconds.into_inner(),
            stats: sh.stats.into_inner(),
            churn: sh.churn.into_inner(),
            errors: sh.errors.into_inner(),
        }
    }
}

enum Outcome {
    Survived,
    NoFinalPong,
    ServerClosed(u16),
}

async fn conn_task(
    sc: Arc<WsConnect>,
    ctx: Rc<ThreadCtx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    idx: usize,
    at: Option<Instant>,
) {
    let phase = ctx.phase.clone();
    let mut rng = Rng::from_os(idx as u64 ^ 0xC0);
    if let Some(at) = at {
        let mut stop = phase.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = wait_phase(&mut stop, Phase::Drain) => return,
        }
    }
    let t0 = Instant::now();
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
    let us = t0.elapsed().as_micros() as u64;
    sh.hist.borrow_mut().saturating_record(us);
    sh.seconds.borrow_mut().record(ctx.clock.now_ns(), us);
    ctx.counters.connected.add(1);
    // One outstanding reply per connection: its final liveness check, so
    // the engine's drain waits for every final pong.
    ctx.counters.inflight.add(1);
    let mut stats = ConnectStats {
        established: 1,
        ..Default::default()
    };
    let mut io = WsIo::new(up, rng, 256, 1 << 20);
    let mut ping_id: u64 = (idx as u64) << 32;
    let mut outstanding: Option<u64> = None;
    let mut final_ping: Option<u64> = None;

    let mut drain = phase.clone();
    let mut close = phase.clone();
    let mut drain_f = pin!(wait_phase(&mut drain, Phase::Drain));
    let mut close_f = pin!(wait_phase(&mut close, Phase::Close));
    // First keep-alive at a random point of the first interval.
    let first = sc
        .ping_interval
        .map(|p| p.mul_f64((io.rng.below(1000) + 1) as f64 / 1000.0))
        .unwrap_or(Duration::from_secs(86_400 * 365));
    let mut ping_timer = pin!(tokio::time::sleep(first));
    let counters = &ctx.counters;

    let outcome: Result<Outcome, ConnError> = poll_fn(|cx| {
        loop {
            let mut progress = false;
            // The final liveness check starts at Drain.
            if final_ping.is_none() && drain_f.as_mut().poll(cx).is_ready() {
                ping_id += 1;
                final_ping = Some(ping_id);
                io.queue(OP_PING, &ping_id.to_be_bytes());
                stats.pings_sent += 1;
                counters.sent.add(1);
                progress = true;
            }
            if final_ping.is_some() && close_f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Outcome::NoFinalPong));
            }
            let mut pong: Option<u64> = None;
            let mut on = |_: &mut Vec<u8>, ev: Event<'_>| {
                if let Event::Pong(p) = ev
                    && p.len() == 8
                {
                    pong = Some(u64::from_be_bytes(p.try_into().unwrap_or([0; 8])));
                }
                Ok(())
            };
            match io.poll_read_frames(cx, &mut on) {
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if let Some(id) = pong {
                stats.pongs_received += 1;
                counters.received.add(1);
                if final_ping == Some(id) {
                    counters.inflight.sub(1);
                    return Poll::Ready(Ok(Outcome::Survived));
                }
                if outstanding == Some(id) {
                    outstanding = None;
                }
            }
            if let Some(code) = io.close_received {
                return Poll::Ready(Ok(Outcome::ServerClosed(code)));
            }
            if let (Some(p), None) = (sc.ping_interval, final_ping)
                && ping_timer.as_mut().poll(cx).is_ready()
            {
                if outstanding.is_some() {
                    stats.pings_unanswered += 1;
                }
                ping_id += 1;
                outstanding = Some(ping_id);
                io.queue(OP_PING, &ping_id.to_be_bytes());
                stats.pings_sent += 1;
                counters.sent.add(1);
                ping_timer.as_mut().reset((Instant::now() + p).into());
                progress = true;
            }
            match io.poll_write_out(cx) {
                Poll::Ready(Ok(w)) => progress |= w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
    stats.pings_from_server = io.pings_received;
    if !matches!(outcome, Ok(Outcome::Survived)) {
        counters.inflight.sub(1);
    }
    match outcome {
        Ok(Outcome::Survived) => {
            stats.survived = 1;
            let wait = if crate::engine::interrupted() {
                Duration::from_millis(50)
            } else {
                sc.close_timeout
            };
            if let Err(e) = io.close(1000, wait).await {
                ctx.error(&sh.errors, &e);
            }
        }
        Ok(Outcome::NoFinalPong) => {
            stats.died = 1;
            ctx.error(
                &sh.errors,
                &ConnError::new(
                    "no_final_pong",
                    "no pong to the final ping before the deadline",
                ),
            );
            let _ = io.close(1000, Duration::from_millis(100)).await;
        }
        Ok(Outcome::ServerClosed(code)) => {
            stats.closed_by_server = 1;
            stats.died = 1;
            ctx.error(
                &sh.errors,
                &ConnError::new(
                    "closed_by_server",
                    format!("close frame with status {code}"),
                ),
            );
            let _ = io.close(1000, Duration::from_millis(200)).await;
        }
        Err(e) => {
            stats.died = 1;
            ctx.error(&sh.errors, &e);
        }
    }
    counters.finished.add(1);
    sh.stats.borrow_mut().add(&stats);
}

/// Start `rate` (per second, this thread) short-lived connections from the
/// Run phase until the Drain phase; wait for them all.
async fn churn_driver(sc: Arc<WsConnect>, ctx: Rc<ThreadCtx>, sh: Rc<Shared>, rate: f64) {
    let mut phase = ctx.phase.clone();
    let st = wait_phase(&mut phase, Phase::Run).await;
    if st.phase != Phase::Run {
        return;
    }
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let pending = Arc::new(Semaphore::new(sc.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut next = Instant::now();
    let mut k: usize = 0;
    let mut stop = pin!(wait_phase(&mut phase, Phase::Drain));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = &mut stop => break,
        }
        // Open loop: every tick that is due starts one attempt.
        while next <= Instant::now() {
            next += interval;
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                sh.churn.borrow_mut().skipped += 1;
                continue;
            };
            let idx = sc.connections + k;
            k += 1;
            tasks.spawn_local(churn_conn(sc.clone(), ctx.clone(), sh.clone(), idx, permit));
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn churn_conn(
    sc: Arc<WsConnect>,
    ctx: Rc<ThreadCtx>,
    sh: Rc<Shared>,
    idx: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let phase = ctx.phase.clone();
    let mut rng = Rng::from_os(idx as u64 ^ 0xC4);
    let counters = &ctx.counters;
    counters.attempted.add(1);
    sh.churn.borrow_mut().attempted += 1;
    let t0 = Instant::now();
    let mut stop = phase.clone();
    let up = tokio::select! {
        r = sc.connector.connect(idx, &mut rng) => r,
        _ = wait_phase(&mut stop, Phase::Close) => {
            // Cut short by the end of the run: not the server's failure.
            sh.churn.borrow_mut().aborted += 1;
            return;
        }
    };
    let up = match up {
        Ok(u) => u,
        Err(e) => {
            counters.failed.add(1);
            sh.churn.borrow_mut().failed += 1;
            ctx.error(&sh.errors, &e);
            return;
        }
    };
    let us = t0.elapsed().as_micros() as u64;
    sh.churn_hist.borrow_mut().saturating_record(us);
    sh.seconds.borrow_mut().record(ctx.clock.now_ns(), us);
    counters.connected.add(1);
    sh.churn.borrow_mut().established += 1;
    let mut io = WsIo::new(up, rng, 256, 1 << 20);
    if !sc.churn_lifetime.is_zero() {
        let mut stop = phase.clone();
        let mut ended = false;
        tokio::select! {
            _ = tokio::time::sleep(sc.churn_lifetime) => {}
            _ = wait_phase(&mut stop, Phase::Close) => ended = true,
        }
        if ended {
            sh.churn.borrow_mut().aborted += 1;
            let _ = io.close(1000, Duration::from_millis(50)).await;
            counters.finished.add(1);
            return;
        }
    }
    match io.close(1000, sc.close_timeout).await {
        Ok(()) => sh.churn.borrow_mut().closed += 1,
        Err(e) => {
            sh.churn.borrow_mut().close_errors += 1;
            ctx.error(&sh.errors, &e);
        }
    }
    counters.finished.add(1);
}

impl WsConnect {
    /// Merge the threads' results into the report.
    pub fn report(
        &self,
        threads: Vec<ConnectThread>,
        run: &crate::engine::RunSummary,
        config: serde_json::Value,
        nthreads: usize,
    ) -> report::Report {
        let mut hist = report::new_histogram();
        let mut churn_hist = report::new_histogram();
        let mut seconds = SecondHists::default();
        let mut stats = ConnectStats::default();
        let mut churn = ChurnStats::default();
        let mut errors = ErrorLog::default();
        for t in &threads {
            let _ = hist.add(&t.hist);
            let _ = churn_hist.add(&t.churn_hist);
            seconds.merge(&t.seconds);
            stats.add(&t.stats);
            churn.add(&t.churn);
            errors.merge(&t.errors);
        }
        let mut r = report::Report::base(
            "ws-connect",
            config,
            run,
            nthreads,
            self.connections as u64,
            None,
            errors,
        );
        r.connections.survived = Some(stats.survived);
        // The engine's counters include the churn connections.
        r.connections.established = stats.established;
        r.connections.failed = r.connections.failed.saturating_sub(churn.failed);
        r.connections.connect_rate = if run.connect_s > 0.0 {
            (stats.established as f64 / run.connect_s * 1000.0).round() / 1000.0
        } else {
            0.0
        };
        r.messages = serde_json::to_value(stats).ok();
        r.handshake_us = report::Percentiles::of(&hist);
        r.latency_per_second = seconds.series();
        let churn_ok = self.churn.is_none() || (churn.failed == 0 && churn.close_errors == 0);
        if let Some(rate) = self.churn {
            let per_s = if run.measured_s > 0.0 {
                // Handshakes completed per second over the whole run phase.
                let run_s = run.warmup_s + run.measured_s;
                (churn.established as f64 / run_s.max(1e-9) * 1000.0).round() / 1000.0
            } else {
                0.0
            };
            r.churn = Some(serde_json::json!({
                "rate": rate,
                "lifetime_s": self.churn_lifetime.as_secs_f64(),
                "stats": churn,
                "established_per_s": per_s,
                "handshake_us": report::Percentiles::of(&churn_hist),
            }));
        }
        r.ok = r.threads_lost == 0 && stats.survived == self.connections as u64 && churn_ok;
        r
    }
}
