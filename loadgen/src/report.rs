//! The shared result report: a serialisable structure (`--json FILE`) and
//! its plain-text table on stdout.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

use crate::engine::{Cpu, ErrorLog, LiveSink, RunSummary, Sample, ServerSample};

/// Latency histograms: 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Per-second histograms (2 significant digits, 1 µs .. 1 h): small
/// enough to keep one per second per thread.
pub(crate) fn small_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

/// How often a worker publishes its latencies to the progress display.
/// Publishing takes a lock shared with the control thread, so it is batched;
/// 100 ms keeps the once-a-second progress p99 current.
const LIVE_FLUSH_NS: u64 = 100_000_000;

/// Latencies bucketed by the second (since the engine start) in which they
/// were recorded, for the latency-over-time series and plots.
///
/// Created on an engine worker thread (`SecondHists::default()`), it also
/// feeds that thread's live sink, from which the control thread takes the
/// p99 of each progress interval. Taking the sink at construction, instead
/// of as an argument, gives every scenario the live p99 without any code
/// of its own.
#[derive(Debug, Clone)]
pub struct SecondHists {
    seconds: Vec<Option<Histogram<u32>>>,
    live: Option<Live>,
}

/// Latencies not yet published to the worker thread's live sink.
#[derive(Debug, Clone)]
struct Live {
    sink: LiveSink,
    pending: Histogram<u32>,
    /// Engine time (ns) at or after which `pending` is published.
    flush_at_ns: u64,
}

impl Default for SecondHists {
    fn default() -> Self {
        SecondHists {
            seconds: Vec::new(),
            live: crate::engine::live_sink().map(|sink| Live {
                sink,
                pending: small_histogram(),
                flush_at_ns: 0,
            }),
        }
    }
}

impl SecondHists {
    /// Record `v_us` at engine time `now_ns`.
    #[inline]
    pub fn record(&mut self, now_ns: u64, v_us: u64) {
        let i = (now_ns / 1_000_000_000) as usize;
        if i >= self.seconds.len() {
            self.seconds.resize_with(i + 1, || None);
        }
        self.seconds[i]
            .get_or_insert_with(small_histogram)
            .saturating_record(v_us);
        if let Some(l) = &mut self.live {
            l.pending.saturating_record(v_us);
            // The first sample after a quiet spell is published at once (so
            // slow runs show up in the right interval); at high rates one
            // lock per 100 ms.
            if now_ns >= l.flush_at_ns {
                if let Ok(mut h) = l.sink.lock() {
                    let _ = h.add(&l.pending);
                }
                l.pending.reset();
                l.flush_at_ns = now_ns + LIVE_FLUSH_NS;
            }
        }
    }

    pub fn merge(&mut self, o: &SecondHists) {
        if o.seconds.len() > self.seconds.len() {
            self.seconds.resize_with(o.seconds.len(), || None);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&o.seconds) {
            if let Some(h) = theirs {
                let _ = mine.get_or_insert_with(small_histogram).add(h);
            }
        }
    }

    /// One entry per second that recorded anything.
    pub fn series(&self) -> Vec<SecondLatency> {
        self.seconds
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let h = h.as_ref().filter(|h| !h.is_empty())?;
                Some(SecondLatency {
                    t_s: (i + 1) as f64,
                    count: h.len(),
                    p50: h.value_at_quantile(0.50),
                    p90: h.value_at_quantile(0.90),
                    p99: h.value_at_quantile(0.99),
                    max: h.max(),
                })
            })
            .collect()
    }
}

/// Latency percentiles of one second (µs, 2 significant digits).
#[derive(Debug, Clone, Serialize)]
pub struct SecondLatency {
    /// End of the second, seconds since the engine started.
    pub t_s: f64,
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Percentiles of a histogram, in µs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 100.0).round() / 100.0,
            stdev: (h.stdev() * 100.0).round() / 100.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub connect_s: f64,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub drain_s: f64,
    pub close_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub target: u64,
    pub established: u64,
    pub failed: u64,
    /// ws-connect only: open at the end and answered the final ping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survived: Option<u64>,
    /// Connections per second during the connect phase.
    pub connect_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Echoes received per second in the measured window.
    pub msg_per_s: f64,
    /// Echoed payload bytes per second (one direction), 1 MB = 10^6 B.
    pub mb_per_s: f64,
    /// Messages counted in the measured window.
    pub measured_messages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientUsage {
    pub threads: usize,
    /// CPU during the measured window.
    pub cpu_measure: Cpu,
    /// CPU of the whole run.
    pub cpu_total: Cpu,
    /// Client CPU µs per measured message (cpu_measure / measured messages).
    pub cpu_us_per_msg: Option<f64>,
    /// cpu_measure ÷ the measured window, % of one core (up to 100 × threads):
    /// near 100 per thread, msg/s is the loadgen's limit, not the server's.
    pub cpu_percent: Option<f64>,
    pub max_rss_kb: u64,
    pub rss_kb_connected: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    #[serde(flatten)]
    pub sample: ServerSample,
    /// Server CPU µs per measured message.
    pub cpu_us_per_msg: Option<f64>,
    /// cpu_measure ÷ the measured window, % of one core.
    pub cpu_percent: Option<f64>,
    /// (RSS once connected − RSS before) / established connections, bytes.
    pub rss_bytes_per_conn: Option<f64>,
}

/// The full result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: &'static str,
    pub started_unix: f64,
    pub config: serde_json::Value,
    /// No message lost or corrupted, and at least one connection.
    pub ok: bool,
    pub interrupted: bool,
    pub end_reason: &'static str,
    pub timing: Timing,
    pub connections: Connections,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    /// Round-trip latency (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    /// Connect + upgrade time (µs), ws-connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_us: Option<Percentiles>,
    pub per_second: Vec<Sample>,
    /// Round-trip (ws-echo) or handshake (ws-connect) latency per second,
    /// warm-up and drain included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_per_second: Vec<SecondLatency>,
    /// ws-connect `--churn`: the short-lived connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<serde_json::Value>,
    pub errors: ErrorLog,
    pub client: ClientUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUsage>,
    /// Worker threads that did not finish in time (their data is missing).
    pub threads_lost: usize,
}

impl Report {
    /// Fill the fields every scenario shares.
    pub fn base(
        scenario: &'static str,
        config: serde_json::Value,
        run: &RunSummary,
        threads: usize,
        target: u64,
        measured_messages: Option<u64>,
        errors: ErrorLog,
    ) -> Report {
        let per_msg = |cpu: f64| match measured_messages {
            Some(n) if n > 0 => Some(((cpu * 1e6 / n as f64) * 1000.0).round() / 1000.0),
            _ => None,
        };
        let percent = |cpu: f64| {
            (run.measured_s > 0.0).then(|| (cpu / run.measured_s * 1000.0).round() / 10.0)
        };
        let established = run.at_end.connected;
        let server = run.server.clone().map(|s| ServerUsage {
            cpu_us_per_msg: per_msg(s.cpu_measure.total()),
            cpu_percent: percent(s.cpu_measure.total()),
            rss_bytes_per_conn: (established > 0 && s.rss_kb_start > 0).then(|| {
                let d = s.rss_kb_connected as f64 - s.rss_kb_start as f64;
                (d * 1024.0 / established as f64).round()
            }),
            sample: s,
        });
        Report {
            tool: "rtedge-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            scenario,
            started_unix: run.started_unix,
            config,
            ok: established > 0,
            interrupted: run.interrupted,
            end_reason: run.end_reason,
            timing: Timing {
                connect_s: r3(run.connect_s),
                warmup_s: r3(run.warmup_s),
                measured_s: r3(run.measured_s),
                drain_s: r3(run.drain_s),
                close_s: r3(run.close_s),
                total_s: r3(run.total_s),
            },
            connections: Connections {
                target,
                established,
                failed: run.at_end.failed,
                survived: None,
                connect_rate: if run.connect_s > 0.0 {
                    r3(established as f64 / run.connect_s)
                } else {
                    0.0
                },
            },
            messages: None,
            throughput: measured_messages.map(|n| Throughput {
                msg_per_s: if run.measured_s > 0.0 {
                    r3(n as f64 / run.measured_s)
                } else {
                    0.0
                },
                mb_per_s: if run.measured_s > 0.0 {
                    r3(run.measured_rx_bytes() as f64 / run.measured_s / 1e6)
                } else {
                    0.0
                },
                measured_messages: n,
            }),
            latency_us: None,
            handshake_us: None,
            per_second: run.per_second.clone(),
            latency_per_second: Vec::new(),
            churn: None,
            errors,
            client: ClientUsage {
                threads,
                cpu_measure: run.client_cpu_measure,
                cpu_total: run.client_cpu_total,
                cpu_us_per_msg: per_msg(run.client_cpu_measure.total()),
                cpu_percent: percent(run.client_cpu_measure.total()),
                max_rss_kb: run.client_max_rss_kb,
                rss_kb_connected: run.client_rss_kb_connected,
            },
            server,
            threads_lost: run.threads_lost,
        }
    }

    /// The plain-text table printed on stdout.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "rtedge-loadgen {} — {}{}",
            self.scenario,
            self.config
                .get("url")
                .and_then(|v| v.as_str())
                .unwrap_or(""),
            if self.interrupted {
                "  (INTERRUPTED: partial report)"
            } else {
                ""
            }
        );
        let row = |o: &mut String, k: &str, v: String| {
            let _ = writeln!(o, "  {k:<22} {v}");
        };
        let t = &self.timing;
        row(
            &mut o,
            "time",
            format!(
                "connect {:.2}s, warm-up {:.2}s, measured {:.2}s, drain {:.2}s (end: {})",
                t.connect_s, t.warmup_s, t.measured_s, t.drain_s, self.end_reason
            ),
        );
        let c = &self.connections;
        let mut conns = format!(
            "{}/{} established, {} failed ({:.0}/s)",
            c.established, c.target, c.failed, c.connect_rate
        );
        if let Some(s) = c.survived {
            let _ = write!(conns, ", {s} survived");
        }
        row(&mut o, "connections", conns);
        if let Some(obj) = self.messages.as_ref().and_then(|m| m.as_object()) {
            // Traffic first, then anomalies; zero-valued extras are omitted.
            const FIRST: &[&str] = &[
                "sent",
                "received",
                "lost",
                "corrupted",
                "duplicated",
                "reordered",
            ];
            let mut parts: Vec<String> = FIRST
                .iter()
                .filter_map(|k| obj.get(*k).map(|v| format!("{k} {v}")))
                .collect();
            parts.extend(
                obj.iter()
                    .filter(|(k, v)| !FIRST.contains(&k.as_str()) && v.as_u64() != Some(0))
                    .map(|(k, v)| format!("{k} {v}")),
            );
            row(&mut o, "messages", parts.join(", "));
        }
        if let Some(tp) = &self.throughput {
            row(
                &mut o,
                "throughput",
                format!(
                    "{:.0} msg/s, {:.2} MB/s ({} messages measured)",
                    tp.msg_per_s, tp.mb_per_s, tp.measured_messages
                ),
            );
        }
        let pct = |o: &mut String, k: &str, p: &Percentiles| {
            row(
                o,
                k,
                format!(
                    "p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.1}, n={})",
                    p.p50, p.p90, p.p99, p.p999, p.max, p.mean, p.count
                ),
            )
        };
        if let Some(p) = &self.latency_us {
            pct(&mut o, "latency µs", p);
        }
        if let Some(p) = &self.handshake_us {
            pct(&mut o, "handshake µs", p);
        }
        if let Some(c) = &self.churn {
            let st = &c["stats"];
            row(
                &mut o,
                "churn",
                format!(
                    "{} conn/s asked: {} attempted, {} established ({}/s), {} failed, \
                     {} closed, {} close errors, {} aborted at the end, {} skipped",
                    c["rate"],
                    st["attempted"],
                    st["established"],
                    c["established_per_s"],
                    st["failed"],
                    st["closed"],
                    st["close_errors"],
                    st["aborted"],
                    st["skipped"]
                ),
            );
            if let Some(p) = c
                .get("handshake_us")
                .and_then(|h| serde_json::from_value::<Percentiles>(h.clone()).ok())
            {
                pct(&mut o, "churn handshake µs", &p);
            }
        }
        let cl = &self.client;
        let mut cpu = format!(
            "{:.2}s user + {:.2}s sys in the window, {} thread(s), max RSS {} KiB",
            cl.cpu_measure.user_s, cl.cpu_measure.sys_s, cl.threads, cl.max_rss_kb
        );
        if let Some(u) = cl.cpu_us_per_msg {
            let _ = write!(cpu, ", {u:.2} CPU µs/msg");
        }
        if let Some(p) = cl.cpu_percent {
            let _ = write!(cpu, ", {p:.0} % CPU");
        }
        row(&mut o, "loadgen cpu", cpu);
        // One loadgen thread costs about as much CPU per message as one
        // rtedge core (bench/RESULTS.md), so a busy generator is common.
        if let (Some(p), Some(_)) = (cl.cpu_percent, &self.throughput)
            && p >= 90.0 * cl.threads.max(1) as f64
        {
            row(
                &mut o,
                "note",
                "the loadgen's CPU was saturated: msg/s may be its own limit, not the \
                 server's (give it more --threads on free cores, or compare CPU µs/msg)"
                    .into(),
            );
        }
        if let Some(s) = &self.server {
            let mut v = format!(
                "pid {}: {:.2}s user + {:.2}s sys in the window",
                s.sample.pid, s.sample.cpu_measure.user_s, s.sample.cpu_measure.sys_s
            );
            if let Some(u) = s.cpu_us_per_msg {
                let _ = write!(v, ", {u:.2} CPU µs/msg");
            }
            if let Some(p) = s.cpu_percent {
                let _ = write!(v, ", {p:.0} % CPU");
            }
            let _ = write!(
                v,
                "; RSS {} → {} KiB",
                s.sample.rss_kb_start, s.sample.rss_kb_connected
            );
            if let Some(b) = s.rss_bytes_per_conn {
                let _ = write!(v, " ({b:.0} B/conn)");
            }
            row(&mut o, "server", v);
        }
        if self.errors.0.is_empty() {
            row(&mut o, "errors", "none".into());
        } else {
            for (k, e) in &self.errors.0 {
                row(&mut o, "error", format!("{k} ×{}: {}", e.count, e.example));
            }
        }
        if self.threads_lost > 0 {
            row(
                &mut o,
                "WARNING",
                format!(
                    "{} worker thread(s) did not finish; their counts are missing",
                    self.threads_lost
                ),
            );
        }
        row(
            &mut o,
            "result",
            if self.ok {
                "OK".into()
            } else {
                "FAILED".into()
            },
        );
        o
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Totals;

    fn summary(measured_s: f64, cpu_s: f64, received: u64) -> RunSummary {
        let end = Totals {
            connected: 1,
            received,
            ..Totals::default()
        };
        RunSummary {
            started_unix: 0.0,
            connect_s: 0.0,
            warmup_s: 0.0,
            measured_s,
            drain_s: 0.0,
            close_s: 0.0,
            total_s: measured_s,
            interrupted: false,
            end_reason: "duration",
            at_measure_start: Totals::default(),
            at_measure_end: end,
            at_end: end,
            client_cpu_measure: Cpu {
                user_s: cpu_s / 2.0,
                sys_s: cpu_s / 2.0,
            },
            client_cpu_total: Cpu::default(),
            client_max_rss_kb: 0,
            client_rss_kb_connected: 0,
            server: None,
            per_second: Vec::new(),
            threads_lost: 0,
        }
    }

    fn report(measured_s: f64, cpu_s: f64, n: u64, threads: usize) -> Report {
        let run = summary(measured_s, cpu_s, n);
        Report::base(
            "ws-echo",
            serde_json::json!({}),
            &run,
            threads,
            1,
            Some(n),
            ErrorLog::default(),
        )
    }

    #[test]
    fn loadgen_cpu_per_message_and_percent() {
        // 2 s of CPU over a 4 s window for 2M messages: 1 µs/msg, 50 %.
        let r = report(4.0, 2.0, 2_000_000, 1);
        assert_eq!(r.client.cpu_us_per_msg, Some(1.0));
        assert_eq!(r.client.cpu_percent, Some(50.0));
        let t = r.table();
        assert!(t.contains("1.00 CPU µs/msg, 50 % CPU"), "{t}");
        assert!(!t.contains("saturated"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["client"]["cpu_us_per_msg"], 1.0);
        assert_eq!(j["client"]["cpu_percent"], 50.0);
    }

    #[test]
    fn a_saturated_loadgen_is_pointed_out() {
        // 3.9 s of CPU in 4 s on one thread: the generator was the limit.
        let t = report(4.0, 3.9, 1_000_000, 1).table();
        assert!(t.contains("98 % CPU") && t.contains("saturated"), "{t}");
        // The same CPU spread over two threads is not saturation.
        let t = report(4.0, 3.9, 1_000_000, 2).table();
        assert!(!t.contains("saturated"), "{t}");
        // No measured window: no percentage, no note.
        let r = report(0.0, 1.0, 0, 1);
        assert_eq!(r.client.cpu_percent, None);
        assert!(!r.table().contains("saturated"));
    }
}
