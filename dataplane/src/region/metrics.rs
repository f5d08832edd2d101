//! Counter and histogram catalogue: the typed [`Counter`] ids, the descriptor
//! table an exporter iterates, the per-core word layout and snapshots.
//!
//! Adding a metric: append a line to `define_counters!` below (or a
//! histogram to [`Histogram`]) and bump [`super::LAYOUT_VERSION`]. Word
//! indices are assigned in table order at compile time.

use super::labels::{
    AuthResult, CloseCode, HandshakeReason, Label, MsrpMethod, MsrpStatus, Opcode, RejectReason,
    ReloadResult, SubProtocol, TlsResult, Transport,
};

/// Prometheus metric type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic (wrapping u64).
    Counter,
    /// Up/down value; per-core words are wrapping u64 read as i64.
    Gauge,
}

/// One counter family (a metric name with its series).
#[derive(Clone, Copy, Debug)]
pub struct MetricDesc {
    /// Name without the `rtedge_` prefix.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    /// Label names (empty for a scalar).
    pub label_names: &'static [&'static str],
    /// Per series, label values aligned with `label_names` (`[[]]` for a scalar).
    pub series: &'static [&'static [&'static str]],
    /// Word index of the first series; series `i` lives at `base + i`.
    pub base: usize,
}

/// One series of a family.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub kind: MetricKind,
    /// Label values aligned with [`MetricDesc::label_names`].
    pub label_values: &'static [&'static str],
    /// Word index (for [`CounterSnapshot::raw`]).
    pub index: usize,
}

impl MetricDesc {
    /// The family's series, in label order.
    pub fn series(&self) -> impl Iterator<Item = Series> + '_ {
        self.series.iter().enumerate().map(move |(i, lv)| Series {
            kind: self.kind,
            label_values: lv,
            index: self.base + i,
        })
    }
    /// `(name, value)` label pairs of series `i`.
    pub fn labels(&self, i: usize) -> impl Iterator<Item = (&'static str, &'static str)> {
        let names = self.label_names;
        names.iter().copied().zip(self.series[i].iter().copied())
    }
}

impl Series {
    /// Value summed over cores (gauges may be negative).
    pub fn value(&self, snap: &CounterSnapshot) -> f64 {
        self.convert(snap.raw(self.index))
    }
    /// Value on one core.
    pub fn core_value(&self, snap: &CounterSnapshot, core: u32) -> f64 {
        self.convert(snap.core_raw(core, self.index))
    }
    fn convert(&self, raw: u64) -> f64 {
        match self.kind {
            MetricKind::Counter => raw as f64,
            MetricKind::Gauge => raw as i64 as f64,
        }
    }
}

const SCALAR_NAMES: &[&str] = &[];
const SCALAR_SERIES: &[&[&str]] = &[&[]];

macro_rules! label_bind {
    ($l:ident, $t:ty) => {
        $l
    };
}
macro_rules! label_index {
    ($l:ident) => {
        0usize
    };
    ($l:ident, $t:ty) => {
        $l as usize
    };
}
macro_rules! label_names {
    () => {
        SCALAR_NAMES
    };
    ($t:ty) => {
        <$t as Label>::NAMES
    };
}
macro_rules! label_series {
    () => {
        SCALAR_SERIES
    };
    ($t:ty) => {
        <$t as Label>::SERIES
    };
}

const fn assign_bases<const N: usize>(mut t: [MetricDesc; N]) -> [MetricDesc; N] {
    let mut base = 0;
    let mut i = 0;
    while i < N {
        t[i].base = base;
        base += t[i].series.len();
        i += 1;
    }
    t
}

macro_rules! define_counters {
    ( $( $(#[$doc:meta])* $variant:ident $( ( $label:ty ) )? => $kind:ident, $name:literal, $help:literal; )+ ) => {
        /// A counter or gauge series: a family plus, for labelled families,
        /// its label. `stats.inc(Counter::ConnectionsAccepted(Transport::Ws))`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[$doc])* $variant $( ($label) )? ),+
        }

        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum Family { $( $variant ),+ }

        const FAMILY_COUNT: usize = [$( stringify!($variant) ),+].len();

        const FAMILY_TABLE: [MetricDesc; FAMILY_COUNT] = assign_bases([ $(
            MetricDesc {
                name: $name,
                help: $help,
                kind: MetricKind::$kind,
                label_names: label_names!($($label)?),
                series: label_series!($($label)?),
                base: 0,
            }
        ),+ ]);

        static FAMILIES: [MetricDesc; FAMILY_COUNT] = FAMILY_TABLE;

        /// Number of counter words (all series of all families).
        pub const COUNTER_COUNT: usize = {
            let last = &FAMILY_TABLE[FAMILY_COUNT - 1];
            last.base + last.series.len()
        };

        impl Counter {
            /// Word index of this series.
            #[inline]
            pub const fn index(self) -> usize {
                match self {
                    $( Counter::$variant $( (label_bind!(l, $label)) )? =>
                        FAMILY_TABLE[Family::$variant as usize].base + label_index!(l $(, $label)?) ),+
                }
            }
            /// The family descriptor.
            pub fn descriptor(self) -> &'static MetricDesc {
                match self {
                    $( Counter::$variant { .. } => &FAMILIES[Family::$variant as usize] ),+
                }
            }
        }
    };
}

define_counters! {
    ConnectionsAccepted(Transport) => Counter, "connections_accepted_total",
        "Connections accepted, by listener transport.";
    ConnectionsActive(Transport) => Gauge, "connections_active",
        "Connections currently open, by listener transport.";
    ConnectionsClosed(Transport) => Counter, "connections_closed_total",
        "Connections closed, by listener transport.";
    ConnectionsRejected(RejectReason) => Counter, "connections_rejected_total",
        "Connections refused at accept time, by reason.";
    WsSessionsActive(SubProtocol) => Gauge, "ws_sessions_active",
        "WebSocket sessions currently open, by sub-protocol.";
    WsSessionsTotal(SubProtocol) => Counter, "ws_sessions_total",
        "WebSocket sessions opened, by sub-protocol.";
    Handshakes(HandshakeReason) => Counter, "handshakes_total",
        "WebSocket opening handshakes, by result and rejection reason.";
    FramesReceived(Opcode) => Counter, "frames_received_total",
        "WebSocket frames received, by opcode.";
    FramesSent(Opcode) => Counter, "frames_sent_total",
        "WebSocket frames sent, by opcode.";
    BytesReceived(Transport) => Counter, "bytes_received_total",
        "Bytes read from sockets, by listener transport.";
    BytesSent(Transport) => Counter, "bytes_sent_total",
        "Bytes written to sockets, by listener transport.";
    MessagesReceived(SubProtocol) => Counter, "messages_received_total",
        "Complete messages received, by sub-protocol.";
    MessagesSent(SubProtocol) => Counter, "messages_sent_total",
        "Complete messages sent, by sub-protocol.";
    MessagesDropped(SubProtocol) => Counter, "messages_dropped_total",
        "Messages dropped (no route, queue full, disabled), by sub-protocol.";
    CloseCodesSent(CloseCode) => Counter, "close_codes_sent_total",
        "WebSocket close frames sent, by status code.";
    CloseCodesReceived(CloseCode) => Counter, "close_codes_received_total",
        "WebSocket close frames received, by status code.";
    KeepalivesSent => Counter, "keepalives_sent_total",
        "Keep-alive pings or pongs sent.";
    KeepaliveFailures => Counter, "keepalive_failures_total",
        "Connections closed because a keep-alive went unanswered.";
    IdleTimeouts => Counter, "idle_timeouts_total",
        "Connections closed for inactivity.";
    CloseTimeouts => Counter, "close_timeouts_total",
        "Closing handshakes that timed out.";
    HandshakeTimeouts => Counter, "handshake_timeouts_total",
        "Opening handshakes that timed out.";
    ProtocolErrors(CloseCode) => Counter, "protocol_errors_total",
        "Connections failed for a protocol violation, by the close code sent.";
    TlsHandshakes(TlsResult) => Counter, "tls_handshakes_total",
        "TLS handshakes, by result.";
    ReactorLoops => Counter, "reactor_loops_total",
        "Reactor event-loop iterations.";
    ReactorCompletions => Counter, "reactor_completions_total",
        "io_uring completions processed.";
    InboxMessages => Counter, "inbox_messages_total",
        "Cross-core inbox messages processed.";
    BackpressurePauses => Counter, "backpressure_pauses_total",
        "Times a connection stopped being read because its peer was not reading its output.";
    MsrpRequestsReceived(MsrpMethod) => Counter, "msrp_requests_received_total",
        "MSRP requests received, by method.";
    MsrpRequestsRelayed(MsrpMethod) => Counter, "msrp_requests_relayed_total",
        "MSRP requests forwarded to the next hop, by method.";
    MsrpResponses(MsrpStatus) => Counter, "msrp_responses_total",
        "MSRP responses sent or relayed, by status code.";
    MsrpAuth(AuthResult) => Counter, "msrp_auth_total",
        "MSRP AUTH requests (RFC 4976), by result.";
    MsrpSessionsActive => Gauge, "msrp_sessions_active",
        "MSRP relay sessions currently held.";
    MsrpFailureReports => Counter, "msrp_failure_reports_total",
        "MSRP failure REPORTs generated by the relay.";
    MsrpRelayedBytes => Counter, "msrp_relayed_bytes_total",
        "MSRP message body bytes relayed.";
    MsrpRechunked => Counter, "msrp_rechunked_total",
        "Extra chunks the MSRP relay made by splitting large SEND chunks (RFC 4976 6.6).";
    MsrpMalformed => Counter, "msrp_malformed_total",
        "Malformed MSRP frames (answered 400, or the connection closed when the frame cannot be delimited).";
    MsrpHandoffs => Counter, "msrp_handoffs_total",
        "MSRP chunks handed to the core that owns the destination connection.";
    SipRefused => Counter, "sip_refused_total",
        "SIP messages refused on MSRP ports (501, until the SIP edge serves them).";
    MsrpSenderPauses => Counter, "msrp_sender_pauses_total",
        "Times an MSRP connection stopped being read because the connections it relays to had not taken its chunks (backpressure).";
    WsSessionsClosed(SubProtocol) => Counter, "ws_sessions_closed_total",
        "WebSocket sessions closed, by sub-protocol.";
    MsrpZeroCopyChunks => Counter, "msrp_zero_copy_chunks_total",
        "Forwarded MSRP chunks whose body was sent from the receive buffer it arrived in (no copy).";
    MsrpZeroCopyBytes => Counter, "msrp_zero_copy_bytes_total",
        "MSRP body bytes forwarded from the receive buffer they arrived in (no copy).";
    RecvBuffersHeld => Gauge, "recv_buffers_held",
        "Provided receive buffers held by queued output (forwarded MSRP bodies not yet sent).";
    UsersReloads(ReloadResult) => Counter, "users_reloads_total",
        "Reloads of the users file (SIGHUP or the management API), by result; a failed one keeps the users in force.";
    Users => Gauge, "users",
        "Users in force (from [auth] users_file).";
}

/// The counter family descriptors, in layout order.
pub fn descriptors() -> impl Iterator<Item = &'static MetricDesc> {
    FAMILIES.iter()
}

// ---------------------------------------------------------------- histograms

/// Upper bounds (inclusive, microseconds) of the histogram buckets; a last
/// overflow bucket (`+Inf`) follows.
pub const HIST_BOUNDS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Buckets per histogram including the overflow bucket.
pub const HIST_BUCKETS: usize = HIST_BOUNDS_US.len() + 1;
/// Words per histogram per core: buckets then the sum (µs). The count is the
/// sum of the buckets, so `_count` always equals the `+Inf` bucket.
const HIST_WORDS: usize = HIST_BUCKETS + 1;

/// Latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Histogram {
    /// WebSocket opening handshake duration (accept to 101 sent).
    HandshakeDuration,
    /// Relay latency (spare: message in to message out).
    RelayLatency,
}

/// A histogram's exposition metadata.
#[derive(Clone, Copy, Debug)]
pub struct HistogramDesc {
    pub id: Histogram,
    /// Name without the `rtedge_` prefix (in seconds, Prometheus style).
    pub name: &'static str,
    pub help: &'static str,
    /// Bucket upper bounds in microseconds (`le` = bound / 1e6).
    pub bounds_us: &'static [u64],
}

static HISTOGRAMS: [HistogramDesc; 2] = [
    HistogramDesc {
        id: Histogram::HandshakeDuration,
        name: "handshake_duration_seconds",
        help: "WebSocket opening handshake duration.",
        bounds_us: &HIST_BOUNDS_US,
    },
    HistogramDesc {
        id: Histogram::RelayLatency,
        name: "relay_latency_seconds",
        help: "Latency from a message's arrival to its forwarding.",
        bounds_us: &HIST_BOUNDS_US,
    },
];
const HIST_COUNT: usize = HISTOGRAMS.len();

impl Histogram {
    /// Every histogram.
    pub const ALL: &'static [Histogram] = &[Histogram::HandshakeDuration, Histogram::RelayLatency];
    /// Descriptor.
    pub fn descriptor(self) -> &'static HistogramDesc {
        &HISTOGRAMS[self as usize]
    }
    #[inline]
    pub(crate) const fn base(self) -> usize {
        COUNTER_COUNT + self as usize * HIST_WORDS
    }
}

/// Bucket index of a value in microseconds (`le` semantics).
#[inline]
pub fn bucket_of(micros: u64) -> usize {
    // Branch-free binary search over the bounds padded to 32 with u64::MAX:
    // the result is the number of bounds strictly below `micros`.
    let mut i = 0usize;
    for step in [16usize, 8, 4, 2, 1] {
        if PADDED_BOUNDS[i + step - 1] < micros {
            i += step;
        }
    }
    i
}

const PADDED_BOUNDS: [u64; 32] = {
    let mut p = [u64::MAX; 32];
    let mut i = 0;
    while i < HIST_BOUNDS_US.len() {
        p[i] = HIST_BOUNDS_US[i];
        i += 1;
    }
    p
};

/// The histogram descriptors.
pub fn histogram_descriptors() -> impl Iterator<Item = &'static HistogramDesc> {
    HISTOGRAMS.iter()
}

/// Word holding the core's next connection sequence number.
pub(crate) const NEXT_ID_WORD: usize = COUNTER_COUNT + HIST_COUNT * HIST_WORDS;
/// u64 words per core in the counter section (a multiple of 16 = 128 B).
pub const CORE_WORDS: usize = (NEXT_ID_WORD + 1).div_ceil(16) * 16;

const _: () = assert!(NEXT_ID_WORD < CORE_WORDS);
const _: () = assert!(Histogram::RelayLatency.base() + HIST_WORDS <= NEXT_ID_WORD);

/// A histogram read: non-cumulative bucket counts, sum and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `buckets[i]` counts observations `<= HIST_BOUNDS_US[i]` and greater
    /// than the previous bound; the last one is the overflow bucket.
    pub buckets: [u64; HIST_BUCKETS],
    /// Sum of observations, microseconds.
    pub sum_us: u64,
    /// Number of observations (sum of `buckets`).
    pub count: u64,
}

impl HistogramSnapshot {
    fn from_words(w: &[u64]) -> HistogramSnapshot {
        let mut buckets = [0u64; HIST_BUCKETS];
        buckets.copy_from_slice(&w[..HIST_BUCKETS]);
        let count = buckets.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        HistogramSnapshot {
            buckets,
            sum_us: w[HIST_BUCKETS],
            count,
        }
    }
    /// Cumulative counts (Prometheus `_bucket{le}` values), overflow last.
    pub fn cumulative(&self) -> [u64; HIST_BUCKETS] {
        let mut out = self.buckets;
        for i in 1..HIST_BUCKETS {
            out[i] = out[i].wrapping_add(out[i - 1]);
        }
        out
    }
}

/// A copy of every core's counter words plus their (wrapping) sums.
#[derive(Clone, Debug)]
pub struct CounterSnapshot {
    cores: u32,
    per_core: Vec<u64>,
    total: Vec<u64>,
}

impl CounterSnapshot {
    pub(crate) fn from_per_core(cores: u32, per_core: Vec<u64>) -> CounterSnapshot {
        debug_assert_eq!(per_core.len(), cores as usize * CORE_WORDS);
        let mut total = vec![0u64; CORE_WORDS];
        for core in per_core.chunks_exact(CORE_WORDS) {
            for (t, v) in total.iter_mut().zip(core) {
                *t = t.wrapping_add(*v);
            }
        }
        CounterSnapshot {
            cores,
            per_core,
            total,
        }
    }
    /// Number of cores summed.
    pub fn cores(&self) -> u32 {
        self.cores
    }
    /// Sum over cores of word `index` (wrapping). Panics if `index >= CORE_WORDS`.
    pub fn raw(&self, index: usize) -> u64 {
        self.total[index]
    }
    /// Word `index` of one core. Panics if out of range.
    pub fn core_raw(&self, core: u32, index: usize) -> u64 {
        assert!(core < self.cores, "core {core} out of range");
        self.per_core[core as usize * CORE_WORDS + index]
    }
    /// Counter value summed over cores.
    pub fn get(&self, c: Counter) -> u64 {
        self.raw(c.index())
    }
    /// Gauge value summed over cores.
    pub fn gauge(&self, c: Counter) -> i64 {
        self.raw(c.index()) as i64
    }
    /// Counter value on one core.
    pub fn core_get(&self, core: u32, c: Counter) -> u64 {
        self.core_raw(core, c.index())
    }
    /// Gauge value on one core.
    pub fn core_gauge(&self, core: u32, c: Counter) -> i64 {
        self.core_raw(core, c.index()) as i64
    }
    /// Histogram summed over cores.
    pub fn histogram(&self, h: Histogram) -> HistogramSnapshot {
        let b = h.base();
        HistogramSnapshot::from_words(&self.total[b..b + HIST_WORDS])
    }
    /// Histogram of one core.
    pub fn core_histogram(&self, core: u32, h: Histogram) -> HistogramSnapshot {
        assert!(core < self.cores, "core {core} out of range");
        let b = core as usize * CORE_WORDS + h.base();
        HistogramSnapshot::from_words(&self.per_core[b..b + HIST_WORDS])
    }
}
