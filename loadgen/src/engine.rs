//! The shared engine: thread-per-core workers (one tokio current_thread
//! runtime each), run phases, per-thread counters, the control loop
//! (progress, per-second samples, Ctrl-C, duration/count bounds), and the
//! CPU/RSS bookkeeping of the client and, optionally, of the server.
//!
//! Phases: `Connect` (scenarios open their connections) → `Run` (traffic;
//! the first `--warmup` of it is not measured) → `Drain` (no new requests;
//! wait for outstanding replies) → `Close` (closing handshakes) → done.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

use crate::net::ConnError;
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Connect,
    Run,
    Drain,
    Close,
}

/// What the engine broadcasts to every connection.
#[derive(Debug, Clone, Copy)]
pub struct PhaseState {
    pub phase: Phase,
    /// When the Run phase started.
    pub run_start: Instant,
    /// Start of the measured window (run_start + warmup).
    pub measure_from: Instant,
}

/// A counter with a single writer (the owning worker thread) and any
/// number of readers (the control thread).
#[derive(Default, Debug)]
pub struct Ctr(AtomicU64);

impl Ctr {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-thread counters, cache-line padded.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Counters {
    /// Connection attempts started.
    pub attempted: Ctr,
    /// Connections upgraded.
    pub connected: Ctr,
    /// Connection attempts that failed.
    pub failed: Ctr,
    /// Upgraded connections that have ended (any reason) or finished
    /// their work (count mode).
    pub finished: Ctr,
    /// Requests generated (messages, pings).
    pub sent: Ctr,
    /// Replies received.
    pub received: Ctr,
    /// Payload bytes sent / received.
    pub tx_bytes: Ctr,
    pub rx_bytes: Ctr,
    /// Requests awaiting a reply.
    pub inflight: Ctr,
    /// Errors recorded (all kinds).
    pub errors: Ctr,
    /// Latencies of the current progress interval (none when progress is
    /// off).
    pub live: Option<LiveSink>,
}

/// Sum of all threads' counters at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    pub finished: u64,
    pub sent: u64,
    pub received: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub inflight: u64,
    pub errors: u64,
}

impl Totals {
    fn of(all: &[Arc<Counters>]) -> Totals {
        let mut t = Totals::default();
        for c in all {
            t.attempted += c.attempted.get();
            t.connected += c.connected.get();
            t.failed += c.failed.get();
            t.finished += c.finished.get();
            t.sent += c.sent.get();
            t.received += c.received.get();
            t.tx_bytes += c.tx_bytes.get();
            t.rx_bytes += c.rx_bytes.get();
            t.inflight += c.inflight.get();
            t.errors += c.errors.get();
        }
        t
    }
    pub fn open(&self) -> u64 {
        self.connected.saturating_sub(self.finished)
    }
}

/// Errors by kind with the first detail message of each kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorLog(pub BTreeMap<String, ErrorEntry>);

#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorEntry {
    pub count: u64,
    pub example: String,
}

impl ErrorLog {
    pub fn record(&mut self, e: &ConnError) {
        let ent = self.0.entry(e.kind.to_string()).or_default();
        if ent.count == 0 {
            ent.example = e.detail.clone();
        }
        ent.count += 1;
    }
    pub fn merge(&mut self, other: &ErrorLog) {
        for (k, v) in &other.0 {
            let ent = self.0.entry(k.clone()).or_default();
            if ent.count == 0 {
                ent.example = v.example.clone();
            }
            ent.count += v.count;
        }
    }
}

/// What a worker thread gets.
pub struct ThreadCtx {
    /// Global connection indices this thread drives.
    pub units: Range<usize>,
    pub threads: usize,
    pub counters: Arc<Counters>,
    pub phase: watch::Receiver<PhaseState>,
    pub clock: Clock,
}

impl ThreadCtx {
    /// Record an error in `log` and bump the error counter.
    pub fn error(&self, log: &RefCell<ErrorLog>, e: &ConnError) {
        log.borrow_mut().record(e);
        self.counters.errors.add(1);
    }
}

/// Nanoseconds since a per-thread base instant.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new(base: Instant) -> Clock {
        Clock { base }
    }
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    pub fn ns_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

/// Open-loop send schedule of one connection (ws-echo and msrp-relay
/// `--rate`): sends are due every `interval_ns` regardless of replies, and
/// each one is stamped with its *intended* time so that a stalled server
/// cannot hide its stalls by slowing the client down (coordinated
/// omission). The first `slack_ns` of lateness is forgiven (the stamp is
/// `min(actual, intended + slack)`): tokio's timer has 1 ms granularity and
/// that delay is the client's, not the server's.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    interval_ns: u64,
    next_due_ns: u64,
    slack_ns: u64,
    /// The deadline the caller's timer is set to (`u64::MAX`: none yet).
    armed_ns: u64,
}

impl OpenLoop {
    /// `per_unit` sends per second from `start_ns`, shifted by a random
    /// fraction of one interval (`rng`) so units do not send in lock step.
    pub fn new(per_unit: f64, start_ns: u64, slack: Duration, rng: &mut crate::rng::Rng) -> Self {
        let interval_ns = (1e9 / per_unit.max(1e-6)).max(1.0) as u64;
        OpenLoop {
            interval_ns,
            next_due_ns: start_ns + rng.below(interval_ns),
            slack_ns: slack.as_nanos() as u64,
            armed_ns: u64::MAX,
        }
    }

    /// The next send is due at or before `now`: consume it and return the
    /// time stamp latency is measured from. The caller applies its own
    /// bounds (in-flight cap, quota) before asking.
    #[inline]
    pub fn take_due(&mut self, now: u64) -> Option<u64> {
        if self.next_due_ns > now {
            return None;
        }
        let due = self.next_due_ns;
        self.next_due_ns += self.interval_ns;
        Some(now.min(due + self.slack_ns))
    }

    /// Arm `sleep` for the next due send (when it is in the future) and poll
    /// it; `true`: it has fired, the caller should loop again. Call it only
    /// while sending.
    pub fn poll_timer(
        &mut self,
        cx: &mut std::task::Context<'_>,
        now: u64,
        clock: &Clock,
        mut sleep: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> bool {
        if self.next_due_ns <= now {
            // Due but held back by the caller's cap: a reply frees room
            // and wakes the task; a timer would only spin.
            return false;
        }
        if self.armed_ns != self.next_due_ns {
            sleep.as_mut().reset(clock.instant(self.next_due_ns).into());
            self.armed_ns = self.next_due_ns;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Latencies (µs) a worker thread recorded since the control thread last
/// took them: the progress line's p99 of the last interval. Workers add to
/// it in batches (see `report::SecondHists`); the control thread reads and
/// resets it once per progress tick.
pub type LiveSink = Arc<Mutex<Histogram<u32>>>;

thread_local! {
    /// The current worker thread's live sink (none on other threads, and
    /// none when progress is off, so quiet runs do no extra work).
    static LIVE_SINK: RefCell<Option<LiveSink>> = const { RefCell::new(None) };
}

/// This worker thread's live sink, if progress is displayed.
pub fn live_sink() -> Option<LiveSink> {
    LIVE_SINK.with(|s| s.borrow().clone())
}

/// Merge every worker's interval histogram, reset them, and return the p99
/// (µs) of what was recorded since the previous call (`None`: nothing was).
fn take_interval_p99<'a>(
    sinks: impl IntoIterator<Item = &'a LiveSink>,
    scratch: &mut Histogram<u32>,
) -> Option<u64> {
    scratch.reset();
    for s in sinks {
        if let Ok(mut h) = s.lock() {
            let _ = scratch.add(&*h);
            h.reset();
        }
    }
    (!scratch.is_empty()).then(|| scratch.value_at_quantile(0.99))
}

/// Wait until the broadcast phase is at least `p`; returns the state (a
/// closed channel reads as `Close`).
pub async fn wait_phase(rx: &mut watch::Receiver<PhaseState>, p: Phase) -> PhaseState {
    let r = rx.wait_for(|s| s.phase >= p).await.map(|s| *s);
    match r {
        Ok(s) => s,
        Err(_) => {
            let mut s = *rx.borrow();
            s.phase = Phase::Close;
            s
        }
    }
}

/// A load scenario run by the engine.
pub trait Scenario: Send + Sync + 'static {
    /// What one worker thread hands back (histograms, integrity counts…).
    type Thread: Send + 'static;
    /// Total number of connections.
    fn units(&self) -> usize;
    /// Drive `ctx.units` on the current thread until the Close phase.
    fn run_thread(self: Arc<Self>, ctx: ThreadCtx) -> impl Future<Output = Self::Thread>;
}

/// Engine settings common to every scenario.
#[derive(Debug, Clone, Serialize)]
pub struct EngineConfig {
    pub threads: usize,
    /// Measured duration; `None`: until the scenario's work is done.
    #[serde(serialize_with = "ser_opt_dur")]
    pub duration: Option<Duration>,
    #[serde(serialize_with = "ser_dur")]
    pub warmup: Duration,
    /// Longest wait for outstanding replies after the measured window.
    #[serde(serialize_with = "ser_dur")]
    pub drain: Duration,
    /// Stop the measured window when every connection has finished its work
    /// (count mode).
    pub stop_when_finished: bool,
    /// Count mode: total requests. When no reply has come for `drain`
    /// while requests are in flight, the window ends (a lossy server would
    /// otherwise keep the run waiting forever: lost messages never leave a
    /// closed-loop window).
    pub count: Option<u64>,
    /// Connections come and go (ws-connect --churn): run for the whole
    /// duration even when no connection is open.
    pub churn: bool,
    pub server_pid: Option<u32>,
    /// Sum the CPU of the server's descendant processes too.
    pub server_tree: bool,
    pub ready_file: Option<PathBuf>,
    #[serde(skip)]
    pub progress: ProgressMode,
    /// Label printed on progress lines.
    #[serde(skip)]
    pub label: String,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// indicatif bar when stdout is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Lines,
    Quiet,
}

/// One per-second sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the engine started (end of the interval).
    pub t_s: f64,
    pub phase: &'static str,
    pub msg_per_s: f64,
    pub sent_per_s: f64,
    pub mb_per_s: f64,
    pub connects_per_s: f64,
    pub open_connections: u64,
    pub connected: u64,
    pub inflight: u64,
    pub errors: u64,
}

/// CPU time of a process (seconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.user_s + self.sys_s
    }
    fn minus(self, o: Cpu) -> Cpu {
        Cpu {
            user_s: (self.user_s - o.user_s).max(0.0),
            sys_s: (self.sys_s - o.sys_s).max(0.0),
        }
    }
}

/// The server process, sampled through /proc when `--server-pid` is given.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    pub pid: u32,
    /// CPU used during the measured window.
    pub cpu_measure: Cpu,
    /// CPU used from the engine start to the end of the close phase.
    pub cpu_total: Cpu,
    pub rss_kb_start: u64,
    pub rss_kb_connected: u64,
    pub rss_kb_measure_end: u64,
    /// Processes whose CPU was summed (`--server-tree`: the server and its
    /// descendants at the end of the window).
    pub processes: u32,
}

/// What the engine observed, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub started_unix: f64,
    pub connect_s: f64,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub drain_s: f64,
    pub close_s: f64,
    pub total_s: f64,
    pub interrupted: bool,
    pub end_reason: &'static str,
    pub at_measure_start: Totals,
    pub at_measure_end: Totals,
    pub at_end: Totals,
    pub client_cpu_measure: Cpu,
    pub client_cpu_total: Cpu,
    pub client_max_rss_kb: u64,
    pub client_rss_kb_connected: u64,
    pub server: Option<ServerSample>,
    pub per_second: Vec<Sample>,
    /// Worker threads that did not finish in time (their data is missing).
    pub threads_lost: usize,
}

impl RunSummary {
    /// Replies received within the measured window.
    pub fn measured_received(&self) -> u64 {
        self.at_measure_end
            .received
            .saturating_sub(self.at_measure_start.received)
    }
    pub fn measured_rx_bytes(&self) -> u64 {
        self.at_measure_end
            .rx_bytes
            .saturating_sub(self.at_measure_start.rx_bytes)
    }
}

/// Counters, client CPU and server CPU (and process count) at one instant.
type Snapshot = (Instant, Totals, Cpu, Option<(Cpu, u32)>);

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::Relaxed) > 0
}

/// Run `scenario` to completion. Returns the per-thread results (in
/// thread order; threads that hung are missing) and the run summary.
pub fn run<S: Scenario>(
    scenario: Arc<S>,
    cfg: &EngineConfig,
) -> Result<(Vec<S::Thread>, RunSummary)> {
    let units = scenario.units();
    let threads = if cfg.churn {
        cfg.threads.max(1)
    } else {
        cfg.threads.clamp(1, units.max(1))
    };
    sys::raise_nofile(units as u64 + 64 * threads as u64 + 64);

    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let t_engine = Instant::now();
    let (tx, rx) = watch::channel(PhaseState {
        phase: Phase::Connect,
        run_start: t_engine,
        measure_from: t_engine,
    });
    let counters: Vec<Arc<Counters>> = (0..threads)
        .map(|_| {
            Arc::new(Counters {
                live: (cfg.progress != ProgressMode::Quiet)
                    .then(|| Arc::new(Mutex::new(crate::report::small_histogram()))),
                ..Counters::default()
            })
        })
        .collect();
    let tree = cfg.server_tree;
    let server_cpu0 = cfg
        .server_pid
        .and_then(|p| sys::server_cpu(p, tree))
        .map(|c| c.0);
    let server_rss0 = cfg.server_pid.and_then(sys::proc_rss_kb).unwrap_or(0);
    let client_cpu0 = sys::self_cpu();

    let mut handles: Vec<JoinHandle<S::Thread>> = Vec::new();
    for (t, ctrs) in counters.iter().enumerate() {
        let lo = units * t / threads;
        let hi = units * (t + 1) / threads;
        let ctx = ThreadCtx {
            units: lo..hi,
            threads,
            counters: ctrs.clone(),
            phase: rx.clone(),
            clock: Clock::new(t_engine),
        };
        let sc = scenario.clone();
        let sink = ctrs.live.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                LIVE_SINK.with(|s| *s.borrow_mut() = sink);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, sc.run_thread(ctx))
            })
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(rx);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("control runtime")?;
    let mut summary = rt.block_on(control(
        cfg,
        units,
        &tx,
        &counters,
        &handles,
        t_engine,
        started_unix,
    ));
    // Collect results.
    let mut results = Vec::new();
    for h in handles {
        if h.is_finished() {
            match h.join() {
                Ok(r) => results.push(r),
                Err(_) => summary.threads_lost += 1,
            }
        } else {
            summary.threads_lost += 1;
        }
    }
    let client_cpu1 = sys::self_cpu();
    summary.client_cpu_total = client_cpu1.minus(client_cpu0);
    summary.client_max_rss_kb = sys::self_max_rss_kb();
    if let (Some(pid), Some(c0), Some(s)) = (cfg.server_pid, server_cpu0, summary.server.as_mut()) {
        if let Some((c1, _)) = sys::server_cpu(pid, tree) {
            s.cpu_total = c1.minus(c0);
        }
        s.rss_kb_start = server_rss0;
    }
    Ok((results, summary))
}

struct Progress {
    mode: ProgressMode,
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl Progress {
    fn new(mode: ProgressMode, label: &str) -> Progress {
        let bar = if mode == ProgressMode::Auto && std::io::stdout().is_terminal() {
            let b = indicatif::ProgressBar::new(1);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(250));
            Some(b)
        } else {
            None
        };
        Progress {
            mode,
            bar,
            label: label.to_string(),
        }
    }
    fn update(&self, pos: u64, len: u64, line: &str) {
        match (&self.bar, self.mode) {
            (Some(b), _) => {
                b.set_length(len.max(1));
                b.set_position(pos.min(len));
                b.set_message(line.to_string());
            }
            (None, ProgressMode::Quiet) => {}
            (None, _) => eprintln!("{} {line}", self.label),
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A latency for the progress line: `850µs`, `12.3ms`, `2.10s`.
fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(u) if u < 10_000 => format!("{u}µs"),
        Some(u) if u < 10_000_000 => format!("{:.1}ms", u as f64 / 1e3),
        Some(u) => format!("{:.2}s", u as f64 / 1e6),
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

async fn control<T>(
    cfg: &EngineConfig,
    units: usize,
    tx: &watch::Sender<PhaseState>,
    counters: &[Arc<Counters>],
    handles: &[JoinHandle<T>],
    t_engine: Instant,
    started_unix: f64,
) -> RunSummary {
    // Ctrl-C: the first one ends the run (with the partial report); a
    // second one (at least 0.5 s later: tools like `timeout` deliver the
    // same SIGINT to the process and to its group) exits at once.
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut sigint) = signal(SignalKind::interrupt()) else {
            return;
        };
        let mut first: Option<Instant> = None;
        while sigint.recv().await.is_some() {
            match first {
                None => {
                    first = Some(Instant::now());
                    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
                    eprintln!("\ninterrupted: stopping, press Ctrl-C again to exit at once");
                }
                Some(t) if t.elapsed() >= Duration::from_millis(500) => {
                    eprintln!("\nsecond interrupt: exiting without a report");
                    std::process::exit(130);
                }
                Some(_) => {}
            }
        }
    });
    let progress = Progress::new(cfg.progress, &cfg.label);
    let mut scratch = crate::report::small_histogram();
    let live: Vec<&LiveSink> = counters.iter().filter_map(|c| c.live.as_ref()).collect();
    let pid = cfg.server_pid;
    let tick = Duration::from_millis(50);
    let mut per_second = Vec::new();
    let mut last = Totals::default();
    let mut last_t = t_engine;
    let mut sample = |phase: &'static str, now: Instant, t: Totals, per: &mut Vec<Sample>| {
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
        let s = Sample {
            t_s: (now.duration_since(t_engine).as_secs_f64() * 1000.0).round() / 1000.0,
            phase,
            msg_per_s: (t.received - last.received) as f64 / dt,
            sent_per_s: (t.sent - last.sent) as f64 / dt,
            mb_per_s: (t.rx_bytes - last.rx_bytes) as f64 / dt / 1e6,
            connects_per_s: (t.connected - last.connected) as f64 / dt,
            open_connections: t.open(),
            connected: t.connected,
            inflight: t.inflight,
            errors: t.errors,
        };
        per.push(s.clone());
        last = t;
        last_t = now;
        s
    };

    // ---- Connect ----
    let mut next_tick = t_engine + Duration::from_secs(1);
    loop {
        let t = Totals::of(counters);
        let now = Instant::now();
        if t.connected + t.failed >= units as u64 || interrupted() {
            break;
        }
        if now >= next_tick {
            let s = sample("connect", now, t, &mut per_second);
            // ws-connect records handshakes, so the connect phase has a p99
            // of its own; ws-echo's is "-" until traffic starts.
            let p99 = take_interval_p99(live.iter().copied(), &mut scratch);
            progress.update(
                t.connected + t.failed,
                units as u64,
                &format!(
                    "connecting {}/{} failed {} ({}/s) p99 {}",
                    t.connected,
                    units,
                    t.failed,
                    fmt_rate(s.connects_per_s),
                    fmt_us(p99)
                ),
            );
            next_tick += Duration::from_secs(1);
        }
        tokio::time::sleep(tick).await;
    }
    let run_start = Instant::now();
    let connect_s = run_start.duration_since(t_engine).as_secs_f64();
    let t_conn = Totals::of(counters);
    let server_rss_connected = pid.and_then(sys::proc_rss_kb).unwrap_or(0);
    let client_rss_connected = sys::self_rss_kb();
    if let Some(f) = &cfg.ready_file {
        let body = serde_json::json!({
            "connected": t_conn.connected,
            "failed": t_conn.failed,
            "connect_s": connect_s,
        });
        if let Err(e) = std::fs::write(f, body.to_string()) {
            eprintln!("warning: cannot write ready file {}: {e}", f.display());
        }
    }

    // ---- Run (warm-up, then measured) ----
    let measure_from = run_start + cfg.warmup;
    let no_conns = t_conn.connected == 0 && !cfg.churn;
    let _ = tx.send(PhaseState {
        phase: Phase::Run,
        run_start,
        measure_from,
    });
    let mut at_start: Option<Snapshot> = None;
    let take_snapshot = || {
        (
            Instant::now(),
            Totals::of(counters),
            sys::self_cpu(),
            pid.and_then(|p| sys::server_cpu(p, cfg.server_tree)),
        )
    };
    let mut next_tick = run_start + Duration::from_secs(1);
    let end_reason;
    let mut last_rx = (u64::MAX, run_start);
    loop {
        let now = Instant::now();
        if at_start.is_none() && now >= measure_from {
            at_start = Some(take_snapshot());
        }
        let t = Totals::of(counters);
        if no_conns {
            end_reason = "no-connections";
            break;
        }
        if interrupted() {
            end_reason = "interrupted";
            break;
        }
        if let (Some(d), Some((t0, ..))) = (cfg.duration, &at_start)
            && now >= *t0 + d
        {
            end_reason = "duration";
            break;
        }
        if t.received != last_rx.0 {
            last_rx = (t.received, now);
        }
        if cfg.count.is_some() && t.inflight > 0 && now.duration_since(last_rx.1) >= cfg.drain {
            end_reason = "count-stalled";
            break;
        }
        if t.connected > 0 && t.open() == 0 && !cfg.churn {
            end_reason = if cfg.stop_when_finished {
                "count"
            } else {
                "all-connections-closed"
            };
            break;
        }
        if now >= next_tick {
            // The sample covers the second that just ended.
            let phase = if measure_from <= next_tick - Duration::from_secs(1) {
                "measure"
            } else {
                "warmup"
            };
            let s = sample(phase, now, t, &mut per_second);
            let p99 = take_interval_p99(live.iter().copied(), &mut scratch);
            let total = cfg
                .duration
                .map(|d| (cfg.warmup + d).as_secs())
                .unwrap_or(0);
            let el = now.duration_since(run_start).as_secs();
            progress.update(
                el,
                total.max(el),
                &format!(
                    "{phase:7} {:>4}s open {} msg/s {} p99 {} MB/s {:.2} inflight {} errors {}",
                    el,
                    t.open(),
                    fmt_rate(s.msg_per_s),
                    fmt_us(p99),
                    s.mb_per_s,
                    t.inflight,
                    t.errors
                ),
            );
            next_tick += Duration::from_secs(1);
        }
        let mut wake = next_tick.min(now + Duration::from_millis(100));
        if at_start.is_none() {
            wake = wake.min(measure_from);
        }
        if let (Some(d), Some((t0, ..))) = (cfg.duration, &at_start) {
            wake = wake.min(*t0 + d);
        }
        tokio::time::sleep_until(wake.into()).await;
    }
    let end_snap = take_snapshot();
    let start_snap = at_start.unwrap_or(end_snap);
    let server_rss_end = pid.and_then(sys::proc_rss_kb).unwrap_or(0);
    let measure_end = end_snap.0;
    let warmup_s = start_snap.0.duration_since(run_start).as_secs_f64();
    let measured_s = measure_end.duration_since(start_snap.0).as_secs_f64();

    // ---- Drain ----
    let _ = tx.send(PhaseState {
        phase: Phase::Drain,
        run_start,
        measure_from,
    });
    let drain_start = Instant::now();
    let mut stalls = 0;
    // A unit learns of the Drain phase at its next poll: one that was in
    // the middle of a poll may still send after the phase changed. Nothing
    // in flight therefore counts only when seen twice, a sleep apart (by
    // then every unit has polled and stopped sending).
    let mut none_in_flight_before = false;
    loop {
        let t = Totals::of(counters);
        if t.open() == 0 {
            break;
        }
        if t.inflight == 0 {
            if none_in_flight_before {
                break;
            }
            none_in_flight_before = true;
        } else {
            none_in_flight_before = false;
        }
        if drain_start.elapsed() >= cfg.drain {
            break;
        }
        stalls += 1;
        if stalls % 20 == 0 {
            progress.update(0, 1, &format!("draining: {} in flight", t.inflight));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let close_start = Instant::now();
    let drain_s = close_start.duration_since(drain_start).as_secs_f64();

    // ---- Close ----
    let _ = tx.send(PhaseState {
        phase: Phase::Close,
        run_start,
        measure_from,
    });
    let close_deadline = close_start + Duration::from_secs(10);
    while !handles.iter().all(|h| h.is_finished()) && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now();
    progress.finish();

    let server = pid.map(|pid| ServerSample {
        pid,
        cpu_measure: match (end_snap.3, start_snap.3) {
            (Some((b, _)), Some((a, _))) => b.minus(a),
            _ => Cpu::default(),
        },
        processes: end_snap.3.map(|c| c.1).unwrap_or(0),
        cpu_total: Cpu::default(),
        rss_kb_start: 0,
        rss_kb_connected: server_rss_connected,
        rss_kb_measure_end: server_rss_end,
    });
    RunSummary {
        started_unix,
        connect_s,
        warmup_s,
        measured_s,
        drain_s,
        close_s: end.duration_since(close_start).as_secs_f64(),
        total_s: end.duration_since(t_engine).as_secs_f64(),
        interrupted: interrupted(),
        end_reason,
        at_measure_start: start_snap.1,
        at_measure_end: end_snap.1,
        at_end: Totals::of(counters),
        client_cpu_measure: end_snap.2.minus(start_snap.2),
        client_cpu_total: Cpu::default(),
        client_max_rss_kb: 0,
        client_rss_kb_connected: client_rss_connected,
        server,
        per_second,
        threads_lost: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SecondHists;

    #[test]
    fn open_loop_schedule_and_slack() {
        let mut rng = crate::rng::Rng::from_os(1);
        // 1000/s: one send per ms, first due within [start, start + 1 ms).
        let mut o = OpenLoop::new(1000.0, 5_000_000, Duration::from_micros(100), &mut rng);
        let first = o.next_due_ns;
        assert!((5_000_000..6_000_000).contains(&first));
        assert_eq!(o.take_due(first - 1), None);
        // On time: stamped now.
        assert_eq!(o.take_due(first), Some(first));
        // 3.5 ms late: the sends due meanwhile all come out at once, each
        // stamped with its intended time + slack (the lateness is charged),
        // and the schedule does not shift.
        let now = first + 4_500_000;
        let stamps: Vec<u64> = std::iter::from_fn(|| o.take_due(now)).collect();
        let want: Vec<u64> = (1..=4).map(|i| first + i * 1_000_000 + 100_000).collect();
        assert_eq!(stamps, want);
        assert_eq!(o.next_due_ns, first + 5_000_000);
    }

    #[test]
    fn interval_p99_is_taken_and_reset() {
        let sinks: Vec<LiveSink> = (0..2)
            .map(|_| Arc::new(Mutex::new(crate::report::small_histogram())))
            .collect();
        let mut scratch = crate::report::small_histogram();
        assert_eq!(take_interval_p99(&sinks, &mut scratch), None);
        // Thread 0: 99 fast samples; thread 1: one slow one → p99 is fast.
        for _ in 0..99 {
            sinks[0].lock().unwrap().record(100).unwrap();
        }
        sinks[1].lock().unwrap().record(50_000).unwrap();
        assert_eq!(take_interval_p99(&sinks, &mut scratch), Some(100));
        // Reset: the next interval only sees its own samples.
        assert_eq!(take_interval_p99(&sinks, &mut scratch), None);
        for _ in 0..10 {
            sinks[1].lock().unwrap().record(7_000).unwrap();
        }
        let p = take_interval_p99(&sinks, &mut scratch).unwrap();
        assert!((6_900..=7_100).contains(&p), "{p}");
    }

    #[test]
    fn second_hists_publish_to_the_thread_sink() {
        // Off a worker thread (or with progress off) there is no sink.
        assert!(live_sink().is_none());
        let sink: LiveSink = Arc::new(Mutex::new(crate::report::small_histogram()));
        let s2 = sink.clone();
        std::thread::spawn(move || {
            LIVE_SINK.with(|s| *s.borrow_mut() = Some(s2));
            let mut h = SecondHists::default();
            // The first sample is published at once ...
            h.record(1_000, 10);
            // ... later ones within 100 ms wait for the next publication,
            h.record(2_000, 20);
            h.record(3_000, 30);
            let n = live_sink().unwrap().lock().unwrap().len();
            assert_eq!(n, 1);
            // which the first sample after the 100 ms brings along.
            h.record(200_000_000, 40);
            assert_eq!(live_sink().unwrap().lock().unwrap().len(), 4);
            // The per-second series is unaffected by the publication.
            let total: u64 = h.series().iter().map(|s| s.count).sum();
            assert_eq!(total, 4);
        })
        .join()
        .unwrap();
        let mut scratch = crate::report::small_histogram();
        assert_eq!(take_interval_p99(&[sink], &mut scratch), Some(40));
    }
}
