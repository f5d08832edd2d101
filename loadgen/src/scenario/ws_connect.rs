//! `ws-connect`: open N WebSocket connections (optionally at a bounded
//! rate), hold them idle for `--duration` while answering the server's
//! pings and sending our own keep-alive pings, then check which ones
//! survived: at the end each connection sends a final ping and counts as
//! surviving only if the pong comes back.

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
use crate::report;
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
    /// TCP connect + TLS + upgrade time, µs.
    pub hist: Histogram<u64>,
    pub stats: ConnectStats,
    pub errors: ErrorLog,
}

struct Shared {
    hist: RefCell<Histogram<u64>>,
    stats: RefCell<ConnectStats>,
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
            stats: RefCell::new(ConnectStats::default()),
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
        while set.join_next().await.is_some() {}
        drop(set);
        let sh = Rc::try_unwrap(sh).unwrap_or_else(|_| unreachable!("all tasks joined"));
        ConnectThread {
            hist: sh.hist.into_inner(),
            stats: sh.stats.into_inner(),
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
    sh.hist
        .borrow_mut()
        .saturating_record(t0.elapsed().as_micros() as u64);
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
        let mut stats = ConnectStats::default();
        let mut errors = ErrorLog::default();
        for t in &threads {
            let _ = hist.add(&t.hist);
            stats.add(&t.stats);
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
        r.messages = serde_json::to_value(stats).ok();
        r.handshake_us = report::Percentiles::of(&hist);
        r.ok = r.threads_lost == 0 && stats.survived == self.connections as u64;
        r
    }
}
