//! `/metrics`: a `prometheus` crate registry holding one custom collector
//! that, at scrape time, copies the region's per-core counter words, sums
//! them and turns every family of the region's descriptor table into a
//! Prometheus family (names prefixed `rtedge_`), plus derived families
//! (per-core balance, heartbeats, control words, histograms in seconds) and
//! the data plane's process metrics.

use std::sync::Arc;

use dataplane::region::{
    Counter, CounterSnapshot, MetricKind, Protocol, Region, Transport, descriptors,
    histogram_descriptors, unix_time_ms,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder as _, Registry, TextEncoder};

use crate::{Regions, StatusInfo};

/// Metric name prefix.
pub(crate) const PREFIX: &str = "rtedge_";

/// A reactor whose heartbeat is older than this is considered stalled
/// (`/readyz`, `rtedge_ready`). Reactors tick every 50 ms.
pub(crate) const STALL_MS: u64 = 2000;

/// Per core: heartbeat age in ms (0 if the heartbeat is in the future,
/// `None` if the core never ticked).
pub(crate) fn heartbeat_ages(region: &Region, now_ms: u64) -> Vec<Option<u64>> {
    region
        .heartbeats()
        .into_iter()
        .map(|hb| (hb != 0).then(|| now_ms.saturating_sub(hb)))
        .collect()
}

/// Every reactor ticked within [`STALL_MS`].
pub(crate) fn all_ticking(ages: &[Option<u64>]) -> bool {
    ages.iter().all(|a| a.is_some_and(|a| a <= STALL_MS))
}

/// A derived family: name (without prefix), help, type, label names.
struct Extra {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const EXTRAS: &[Extra] = &[
    Extra {
        name: "core_connections_active",
        help: "Connections currently open on each reactor core (balance).",
        kind: MetricType::GAUGE,
        labels: &["core"],
    },
    Extra {
        name: "core_connections_accepted_total",
        help: "Connections accepted by each reactor core.",
        kind: MetricType::COUNTER,
        labels: &["core"],
    },
    Extra {
        name: "core_bytes_received_total",
        help: "Bytes read by each reactor core.",
        kind: MetricType::COUNTER,
        labels: &["core"],
    },
    Extra {
        name: "core_bytes_sent_total",
        help: "Bytes written by each reactor core.",
        kind: MetricType::COUNTER,
        labels: &["core"],
    },
    Extra {
        name: "core_reactor_loops_total",
        help: "Event-loop iterations of each reactor core.",
        kind: MetricType::COUNTER,
        labels: &["core"],
    },
    Extra {
        name: "reactor_heartbeat_age_seconds",
        help: "Time since each reactor's last tick (it ticks every 50 ms); -1 if it never ticked.",
        kind: MetricType::GAUGE,
        labels: &["core"],
    },
    Extra {
        name: "reactors",
        help: "Reactor threads (workers).",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Extra {
        name: "ready",
        help: "1 if every reactor ticked within the last 2 seconds.",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Extra {
        name: "protocol_enabled",
        help: "1 if new work for the protocol is accepted (ws.enable / ws.disable).",
        kind: MetricType::GAUGE,
        labels: &["protocol"],
    },
    Extra {
        name: "connection_slots",
        help: "Connection slots visible to dumps (all cores).",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Extra {
        name: "connections_limit",
        help: "Most connections the data plane accepts (workers times the per-worker limit).",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Extra {
        name: "start_time_seconds",
        help: "When the data plane started, unix seconds.",
        kind: MetricType::GAUGE,
        labels: &[],
    },
    Extra {
        name: "build_info",
        help: "Build information; always 1.",
        kind: MetricType::GAUGE,
        labels: &["version", "mode"],
    },
];

/// Process metrics: name (no prefix), help, type.
const PROCESS: &[(&str, &str, MetricType)] = &[
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time of the data plane, seconds.",
        MetricType::COUNTER,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size of the data plane, bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size of the data plane, bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_open_fds",
        "Open file descriptors of the data plane.",
        MetricType::GAUGE,
    ),
    (
        "process_max_fds",
        "Open file descriptor limit of the data plane.",
        MetricType::GAUGE,
    ),
    (
        "process_threads",
        "Threads of the data plane.",
        MetricType::GAUGE,
    ),
    (
        "process_start_time_seconds",
        "Start time of the data plane process, unix seconds.",
        MetricType::GAUGE,
    ),
];

struct RegionCollector {
    regions: Arc<Regions>,
    status: StatusInfo,
    descs: Vec<Desc>,
}

fn desc(name: String, help: &str, labels: &[&str]) -> prometheus::Result<Desc> {
    Desc::new(
        name,
        help.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        Default::default(),
    )
}

impl RegionCollector {
    fn new(regions: Arc<Regions>, status: StatusInfo) -> prometheus::Result<RegionCollector> {
        let mut descs = Vec::new();
        for d in descriptors() {
            descs.push(desc(format!("{PREFIX}{}", d.name), d.help, d.label_names)?);
        }
        for h in histogram_descriptors() {
            descs.push(desc(format!("{PREFIX}{}", h.name), h.help, &[])?);
        }
        for e in EXTRAS {
            descs.push(desc(format!("{PREFIX}{}", e.name), e.help, e.labels)?);
        }
        for (name, help, _) in PROCESS {
            descs.push(desc(name.to_string(), help, &[])?);
        }
        Ok(RegionCollector {
            regions,
            status,
            descs,
        })
    }
}

fn label_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<LabelPair> {
    pairs
        .into_iter()
        .map(|(n, v)| {
            let mut lp = LabelPair::default();
            lp.set_name(n.to_string());
            lp.set_value(v.to_string());
            lp
        })
        .collect()
}

fn sample(kind: MetricType, labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels);
    match kind {
        MetricType::COUNTER => {
            let mut c = prometheus::proto::Counter::default();
            c.set_value(v);
            m.set_counter(c);
        }
        _ => {
            let mut g = prometheus::proto::Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
    }
    m
}

fn family(name: String, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name);
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn extra(name: &str) -> &'static Extra {
    EXTRAS.iter().find(|e| e.name == name).unwrap_or(&EXTRAS[0])
}

/// One family of [`EXTRAS`] from `(label values, value)` samples.
fn extra_family<'a>(
    name: &str,
    samples: impl IntoIterator<Item = (Vec<&'a str>, f64)>,
) -> MetricFamily {
    let e = extra(name);
    let metrics = samples
        .into_iter()
        .map(|(lv, v)| {
            sample(
                e.kind,
                label_pairs(e.labels.iter().copied().zip(lv.iter().copied())),
                v,
            )
        })
        .collect();
    family(format!("{PREFIX}{}", e.name), e.help, e.kind, metrics)
}

fn per_core(snap: &CounterSnapshot, f: impl Fn(u32) -> f64) -> Vec<(String, f64)> {
    (0..snap.cores()).map(|c| (c.to_string(), f(c))).collect()
}

fn core_family(name: &str, values: &[(String, f64)]) -> MetricFamily {
    extra_family(
        name,
        values.iter().map(|(core, v)| (vec![core.as_str()], *v)),
    )
}

impl RegionCollector {
    fn families(&self) -> Vec<MetricFamily> {
        let region = self.regions.get();
        let snap = region.snapshot_counters();
        let mut out = Vec::new();

        // The region's own families, summed over cores.
        for d in descriptors() {
            let kind = match d.kind {
                MetricKind::Counter => MetricType::COUNTER,
                MetricKind::Gauge => MetricType::GAUGE,
            };
            let metrics = d
                .series()
                .map(|s| {
                    sample(
                        kind,
                        label_pairs(
                            d.label_names
                                .iter()
                                .copied()
                                .zip(s.label_values.iter().copied()),
                        ),
                        s.value(&snap),
                    )
                })
                .collect();
            out.push(family(format!("{PREFIX}{}", d.name), d.help, kind, metrics));
        }

        // Histograms, in seconds.
        for h in histogram_descriptors() {
            let hs = snap.histogram(h.id);
            let cum = hs.cumulative();
            let mut ph = prometheus::proto::Histogram::default();
            ph.set_sample_count(hs.count);
            ph.set_sample_sum(hs.sum_us as f64 / 1e6);
            ph.set_bucket(
                h.bounds_us
                    .iter()
                    .zip(cum.iter())
                    .map(|(&b, &c)| {
                        let mut bk = Bucket::default();
                        bk.set_upper_bound(b as f64 / 1e6);
                        bk.set_cumulative_count(c);
                        bk
                    })
                    .collect(),
            );
            let mut m = Metric::default();
            m.set_histogram(ph);
            out.push(family(
                format!("{PREFIX}{}", h.name),
                h.help,
                MetricType::HISTOGRAM,
                vec![m],
            ));
        }

        // Per-core balance.
        let sum_transports = |core: u32, c: fn(Transport) -> Counter, gauge: bool| -> f64 {
            Transport::ALL
                .iter()
                .map(|&t| {
                    if gauge {
                        snap.core_gauge(core, c(t)) as f64
                    } else {
                        snap.core_get(core, c(t)) as f64
                    }
                })
                .sum()
        };
        out.push(core_family(
            "core_connections_active",
            &per_core(&snap, |c| {
                sum_transports(c, Counter::ConnectionsActive, true)
            }),
        ));
        out.push(core_family(
            "core_connections_accepted_total",
            &per_core(&snap, |c| {
                sum_transports(c, Counter::ConnectionsAccepted, false)
            }),
        ));
        out.push(core_family(
            "core_bytes_received_total",
            &per_core(&snap, |c| sum_transports(c, Counter::BytesReceived, false)),
        ));
        out.push(core_family(
            "core_bytes_sent_total",
            &per_core(&snap, |c| sum_transports(c, Counter::BytesSent, false)),
        ));
        out.push(core_family(
            "core_reactor_loops_total",
            &per_core(&snap, |c| snap.core_get(c, Counter::ReactorLoops) as f64),
        ));

        // Liveness.
        let ages = heartbeat_ages(&region, unix_time_ms());
        let age_values: Vec<(String, f64)> = ages
            .iter()
            .enumerate()
            .map(|(c, a)| (c.to_string(), a.map_or(-1.0, |ms| ms as f64 / 1000.0)))
            .collect();
        out.push(core_family("reactor_heartbeat_age_seconds", &age_values));
        out.push(extra_family(
            "reactors",
            [(vec![], f64::from(region.cores()))],
        ));
        let stale = self.status.mode == crate::Mode::Attached && region.is_stale();
        let ready = all_ticking(&ages) && !stale;
        out.push(extra_family(
            "ready",
            [(vec![], f64::from(u8::from(ready)))],
        ));

        // Control words.
        let ctl = region.control();
        out.push(extra_family(
            "protocol_enabled",
            Protocol::ALL
                .iter()
                .map(|&p| (vec![p.as_str()], f64::from(u8::from(ctl.is_enabled(p))))),
        ));

        // Capacity and identity.
        out.push(extra_family(
            "connection_slots",
            [(
                vec![],
                f64::from(region.cores()) * f64::from(region.slots_per_core()),
            )],
        ));
        if let Some(limit) = self.status.connection_limit {
            out.push(extra_family("connections_limit", [(vec![], limit as f64)]));
        }
        let started = match self.status.started_unix_ms {
            0 => region.header().created_unix_ms,
            ms => ms,
        };
        out.push(extra_family(
            "start_time_seconds",
            [(vec![], started as f64 / 1000.0)],
        ));
        out.push(extra_family(
            "build_info",
            [(
                vec![self.status.version.as_str(), self.status.mode.as_str()],
                1.0,
            )],
        ));

        // The data plane's process.
        let pid = match self.status.mode {
            crate::Mode::InProcess => std::process::id(),
            crate::Mode::Attached => region.header().pid,
        };
        if let Some(p) = crate::process::read(pid) {
            let values = [
                Some(p.cpu_seconds),
                Some(p.resident_bytes),
                Some(p.virtual_bytes),
                p.open_fds,
                p.max_fds,
                Some(p.threads),
                Some(p.start_time_seconds),
            ];
            for ((name, help, kind), v) in PROCESS.iter().zip(values) {
                if let Some(v) = v {
                    out.push(family(
                        name.to_string(),
                        help,
                        *kind,
                        vec![sample(*kind, Vec::new(), v)],
                    ));
                }
            }
        }
        out
    }
}

impl Collector for RegionCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

/// The registry of the service.
pub(crate) fn registry(regions: Arc<Regions>, status: StatusInfo) -> prometheus::Result<Registry> {
    let r = Registry::new();
    r.register(Box::new(RegionCollector::new(regions, status)?))?;
    Ok(r)
}

/// The text exposition of everything in `registry`.
pub(crate) fn render(registry: &Registry) -> Result<(String, String), String> {
    let enc = TextEncoder::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    enc.encode(&registry.gather(), &mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(buf).map_err(|e| e.to_string())?;
    Ok((text, enc.format_type().to_string()))
}
