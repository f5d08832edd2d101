//! rtedge-loadgen: load scenarios for rtedge and other WebSocket servers.
//!
//! Structure: `engine` (threads, phases, control loop), `report` (the
//! shared result), `scenario::*` (one module per scenario), `ws` (client
//! framer and handshake), `net` (URLs, TCP/TLS), `payload` (self-checking
//! messages), `sys` (rlimits, rusage, /proc).

mod engine;
mod mixed;
mod msrp;
mod net;
mod payload;
mod plot;
mod report;
mod rng;
mod scenario;
mod sys;
mod ws;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use engine::{EngineConfig, ProgressMode};
use net::{ConnectOptions, Connector, Target};
use report::Report;

const EXAMPLES: &str = "\
Examples:
  # closed loop: 10 connections × 64 B, 16 messages in flight each, 10 s
  rtedge-loadgen ws-echo --url ws://127.0.0.1:8080/ --subprotocol echo \\
      --connections 10 --size 64 --window 16 --duration 10s

  # open loop: 20k msg/s in total over 100 connections, 4 KiB text frames
  rtedge-loadgen ws-echo --url ws://127.0.0.1:8080/ --subprotocol echo \\
      --connections 100 --size 4096 --text --rate 20000 --duration 30s

  # exactly one million messages, then stop; JSON result
  rtedge-loadgen ws-echo --url wss://127.0.0.1:8443/ --insecure --subprotocol echo \\
      --count 1000000 --json result.json

  # hold 10k idle connections for 60 s (keep-alive pings every 15 s)
  rtedge-loadgen ws-connect --url ws://127.0.0.1:8080/ --subprotocol sip \\
      --connections 10000 --duration 60s --connect-rate 2000

  # handshake storm: 200 new connections per second, each closed at once
  rtedge-loadgen ws-connect --url ws://127.0.0.1:8080/ --connections 0 \\
      --churn 200 --duration 30s

  # mixed workload from a scenario file, one combined report and plot
  rtedge-loadgen run loadgen/examples/mixed.toml --url ws://127.0.0.1:8080/ \\
      --json mixed.json --plot mixed.svg

  # latency percentiles and throughput over time
  rtedge-loadgen ws-echo --url ws://127.0.0.1:8080/ -c 10 --duration 30s --plot echo.svg

  # MSRP relay: 10 sender/receiver pairs over TCP, 100-byte SENDs, 32 in flight
  rtedge-loadgen msrp-relay --url msrp://127.0.0.1:2855 --user alice \\
      --password secret --pairs 10 --size 100 --window 32 --duration 10s

Exit status: 0 OK; 1 a message was lost, corrupted, duplicated or
reordered; 3 connections failed or died (no integrity problem);
2 usage or runtime error.";

#[derive(Parser, Debug)]
#[command(
    name = "rtedge-loadgen",
    version,
    about = "Load generator for rtedge and other WebSocket servers",
    long_about = "Load generator for rtedge and other WebSocket servers.\n\n\
        Thread-per-core (--threads, each a tokio current_thread runtime), own RFC 6455 \
        client framer with batched writes, hdrhistogram latencies, integrity checks on \
        every echoed message, per-second series and a JSON result (--json).",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Echo load: send self-checking messages and verify every echo.
    #[command(after_help = WS_ECHO_HELP)]
    WsEcho(WsEchoArgs),
    /// Connection load: open N connections, hold them idle, check which
    /// survive; optionally a handshake storm (--churn).
    #[command(after_help = WS_CONNECT_HELP)]
    WsConnect(WsConnectArgs),
    /// MSRP relay load: sender/receiver pairs AUTH to a relay (RFC 4976)
    /// and send self-checking SENDs through it, over TCP or WebSocket.
    #[command(after_help = MSRP_RELAY_HELP)]
    MsrpRelay(MsrpRelayArgs),
    /// Run the scenarios of a TOML file together (mixed workload).
    #[command(after_help = mixed::HELP)]
    Run(mixed::RunFileArgs),
}

const WS_ECHO_HELP: &str = "\
Closed loop (default): each connection keeps --window messages in flight;
every batch of echoes is answered by one write of all frames that fit.
Open loop (--rate): each connection sends on its own schedule and latency is
measured from the intended send time (coordinated omission corrected; the
first --timer-slack of lateness, default 2ms, is the client timer's own and
is not charged); --window then caps messages in flight (default 65536).

Payloads (--size ≥ 24 binary, ≥ 44 text) start with a header: magic RTLG,
connection id, sequence number and a 64-bit checksum of the body; every echo
is checked and counted as lost, duplicated, reordered or corrupted.

Examples:
  rtedge-loadgen ws-echo --url ws://127.0.0.1:8080/ --subprotocol echo \\
      --connections 10 --size 64 --window 16 --duration 10s --json out.json
  rtedge-loadgen ws-echo --url ws://127.0.0.1:8080/ -c 100 --rate 20000 \\
      --duration 30s --plot echo.svg

--plot FILE.svg (or FILE.png) draws the round-trip p50/p90/p99 per second and the echo
throughput (sent and received msg/s) over time.";

const WS_CONNECT_HELP: &str = "\
Each connection does TCP connect (+TLS) and the upgrade (timed into the
handshake histogram), then stays idle for --duration, answering server pings
and sending a keep-alive ping every --ping-interval. At the end every
connection sends a final ping; it survived if the pong arrives.
With --server-pid the server's RSS before and after connecting is reported
(bytes per connection). Connections beyond ~28k per source address need
more loopback sources (--local-addr 127.0.0.2 ...; automatic above 25k on
loopback targets). RLIMIT_NOFILE is raised to its hard limit.

Handshake storm (--churn R): from the start of the run phase, R new
connections per second (over all threads) are opened, upgraded (timed) and
closed with a closing handshake after --churn-lifetime (default 0: at once),
besides the held connections (--connections 0: only the storm). Reported
under `churn`: attempts, established, failed, closed, handshake percentiles;
any failure makes the exit status 3. At most --connect-concurrency attempts
per thread are pending; ticks beyond that are counted as `skipped`.

--plot FILE.svg (or FILE.png) draws the handshake p50/p90/p99 per second and the open
connections and new connections per second over time.

Examples:
  rtedge-loadgen ws-connect --url ws://127.0.0.1:8080/ --subprotocol echo \\
      --connections 10000 --duration 30s --server-pid $(pidof rtedge)
  rtedge-loadgen ws-connect --url ws://127.0.0.1:8080/ --connections 0 \\
      --churn 200 --churn-lifetime 100ms --duration 20s --plot storm.svg";

const MSRP_RELAY_HELP: &str = "\
Each pair: a receiver and a sender connect to the relay (msrp:// or msrps://
over TCP/TLS; ws:// or wss:// with the `msrp` sub-protocol, one chunk per
WebSocket message, RFC 7977), AUTH (RFC 4976: a 401 is answered with an MD5
digest, qop=auth, method AUTH, digest-uri = --relay-uri) and learn their
Use-Path. The sender keeps --window SENDs in flight (closed loop, default
32), or with --rate sends on a fixed schedule (open loop: R / pairs SENDs/s
per pair, random phase, whatever the relay does; latency is measured from
the intended send time, coordinated omission corrected, the first
--timer-slack of lateness excepted; --window is then only a cap on SENDs in
flight per pair, default 65536, and SENDs it holds back keep their intended
send time). To-Path = the receiver's Use-Path + the receiver's URI
(--full-path: the sender's own Use-Path first). --receiver-url puts the
receivers on a second relay: sender → relay1 → relay2 → receiver, To-Path =
sender's Use-Path + receiver's Use-Path + receiver (implies --full-path:
relay1 only forwards what names one of its sessions first). A SEND is in flight until the receiver has it and the
relay's hop-by-hop 200 came back (Failure-Report yes, the default). The
receiver verifies every body (checksum bound to pair and sequence number),
Message-ID, Byte-Range, To-Path and From-Path, and answers 200 to the relay.

Reported: delivered msg/s, delivery latency (sender queued → receiver
parsed), lost/duplicated/reordered/corrupted, relay 200s and errors,
REPORTs. `connections` counts TCP/WebSocket connections (2 per pair).
--no-auth skips AUTH: To-Path = --relay-uri + the receiver's URI.

Examples:
  rtedge-loadgen msrp-relay --url msrp://127.0.0.1:2855 --user alice \\
      --password secret --pairs 10 --size 100 --duration 10s
  rtedge-loadgen msrp-relay --url msrp://127.0.0.1:2855 --user alice \\
      --password secret --pairs 10 --size 100 --rate 20000 --duration 30s
  rtedge-loadgen msrp-relay --url ws://127.0.0.1:8080/ --user alice \\
      --password secret --pairs 1 --size 4096 --window 32 --json out.json
  rtedge-loadgen msrp-relay --url msrp://10.0.0.1:2855 --user alice \\
      --password secret --receiver-url msrp://10.0.0.2:2855 --pairs 10";

/// A duration: `10s`, `500ms`, `2m`, `1h`, `250us`, or plain seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dur(Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
        let secs = match unit.trim() {
            "" | "s" => v,
            "ms" => v / 1e3,
            "us" | "µs" => v / 1e6,
            "m" | "min" => v * 60.0,
            "h" => v * 3600.0,
            u => return Err(format!("unknown duration unit {u:?} in {s:?}")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("bad duration {s:?}"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

#[derive(Args, Debug, Serialize)]
struct TargetArgs {
    /// Server URL (ws:// or wss://).
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    url: String,
    /// Sub-protocol to request; the server must select exactly it.
    #[arg(long)]
    subprotocol: Option<String>,
    /// wss://: accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// wss://: trust this PEM CA file (besides the system bundle).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Local source address(es), used round-robin (comma-separated or repeated).
    #[arg(long = "local-addr", value_delimiter = ',', value_name = "IP")]
    local_addrs: Vec<IpAddr>,
    /// Time allowed for TCP connect + TLS + upgrade.
    #[arg(long, default_value = "10s", value_name = "DUR")]
    connect_timeout: Dur,
    /// Connection attempts in progress at once, per thread.
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_concurrency: usize,
}

#[derive(Args, Debug, Serialize)]
struct RunArgs {
    /// Worker threads (each a tokio current_thread runtime).
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Not-measured time at the start of the traffic phase.
    #[arg(long, value_name = "DUR")]
    warmup: Option<Dur>,
    /// Longest wait for outstanding replies after the measured window.
    #[arg(long, default_value = "2s", value_name = "DUR")]
    drain: Dur,
    /// Time allowed for each closing handshake.
    #[arg(long, default_value = "1s", value_name = "DUR")]
    close_timeout: Dur,
    /// Write the full result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw latency percentiles and throughput over time into FILE.svg or
    /// FILE.png (format by extension).
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
    /// Sample this process's CPU and RSS (/proc) as the server under test.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// With --server-pid: add the CPU of every descendant process of PID
    /// (multi-process servers such as Kamailio).
    #[arg(long, requires = "server_pid")]
    server_tree: bool,
    /// Write FILE (JSON) once every connection attempt has finished.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Plain progress lines on stderr even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Progress label (scenario files: the scenario's name).
    #[arg(skip)]
    #[serde(skip)]
    label: Option<String>,
}

#[derive(Args, Debug, Serialize)]
struct WsEchoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    target: TargetArgs,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
    /// Message size in bytes (binary ≥ 24, text ≥ 44).
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection (closed loop) or in-flight cap
    /// (open loop, default 65536).
    #[arg(long, short = 'w')]
    window: Option<usize>,
    /// Open loop: total messages per second over all connections.
    #[arg(long, short = 'r', value_name = "MSG/S")]
    rate: Option<f64>,
    /// Binary frames (default).
    #[arg(long, conflicts_with = "text")]
    binary: bool,
    /// Text frames (ASCII payloads).
    #[arg(long)]
    text: bool,
    /// Measured duration (default 10s; unbounded with --count).
    #[arg(long, short = 'd', value_name = "DUR")]
    duration: Option<Dur>,
    /// Total messages over all connections, then stop.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Open loop: lateness of the client's own timer (1 ms granularity) not
    /// charged to the server; latency runs from min(actual send, intended +
    /// slack). 0: always from the intended send time.
    #[arg(long, default_value = "2ms", value_name = "DUR")]
    timer_slack: Dur,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Serialize)]
struct WsConnectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    target: TargetArgs,
    /// Connections to open and hold (0: only the --churn storm).
    #[arg(long, short = 'c', alias = "hold", default_value_t = 1000)]
    connections: usize,
    /// Handshake storm: new short-lived connections per second during the
    /// run, over all threads.
    #[arg(long, value_name = "CONN/S")]
    churn: Option<f64>,
    /// How long each --churn connection stays open before it is closed.
    #[arg(long, default_value = "0s", value_name = "DUR")]
    churn_lifetime: Dur,
    /// New connections per second over all threads (default: as fast as possible).
    #[arg(long, value_name = "CONN/S")]
    connect_rate: Option<f64>,
    /// Keep-alive ping period while holding (0 disables).
    #[arg(long, default_value = "15s", value_name = "DUR")]
    ping_interval: Dur,
    /// How long to hold the connections once all are open.
    #[arg(long, short = 'd', default_value = "10s", value_name = "DUR")]
    duration: Dur,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Serialize)]
struct MsrpRelayArgs {
    /// Relay URL: msrp:// or msrps:// (TCP/TLS, default port 2855), ws://
    /// or wss:// (WebSocket, sub-protocol msrp).
    #[arg(long, default_value = "msrp://127.0.0.1:2855")]
    url: String,
    /// WebSocket sub-protocol to request (RFC 7977: msrp).
    #[arg(long, default_value = "msrp")]
    subprotocol: String,
    /// The relay's MSRP URI: To-Path of AUTH and digest-uri (default from
    /// the URL: msrp[s]://HOST:PORT;tcp, or ;ws over WebSocket).
    #[arg(long, value_name = "URI")]
    relay_uri: Option<String>,
    /// AUTH user name.
    #[arg(long, default_value = "loadgen")]
    user: String,
    /// AUTH password (digest, answered when the relay sends a 401).
    #[arg(long, default_value = "")]
    password: String,
    /// Do not AUTH: To-Path = --relay-uri + the receiver's URI.
    #[arg(long)]
    no_auth: bool,
    /// Expires header in AUTH (seconds; default: omitted, the relay picks).
    #[arg(long, value_name = "S")]
    expires: Option<u64>,
    /// To-Path = sender's Use-Path + receiver's Use-Path + receiver (the
    /// RFC 4976 two-relay path; through one relay it hairpins).
    #[arg(long, conflicts_with = "no_auth")]
    full_path: bool,
    /// Receivers connect (and AUTH) to this second relay while senders use
    /// --url: the chain sender → relay1 → relay2 → receiver (implies
    /// --full-path). Same schemes as --url.
    #[arg(long, value_name = "URL", conflicts_with = "no_auth")]
    receiver_url: Option<String>,
    /// The second relay's MSRP URI (default from --receiver-url, as
    /// --relay-uri from --url).
    #[arg(long, value_name = "URI", requires = "receiver_url")]
    receiver_relay_uri: Option<String>,
    /// Failure-Report of the SENDs (RFC 4975 §7.1.1; yes = header omitted).
    #[arg(long, value_enum, default_value = "yes")]
    failure_report: scenario::msrp_relay::FailureReport,
    /// Sender/receiver pairs (two connections each).
    #[arg(long, short = 'p', default_value_t = 10)]
    pairs: usize,
    /// Body bytes per SEND (≥ 44: integrity header).
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// SENDs in flight per pair (closed loop, default 32), or the in-flight
    /// cap per pair (open loop, default 65536).
    #[arg(long, short = 'w')]
    window: Option<usize>,
    /// Open loop: total SENDs per second over all pairs, sent on schedule
    /// whatever the relay does; latency from the intended send time.
    #[arg(long, short = 'r', value_name = "MSG/S")]
    rate: Option<f64>,
    /// Open loop: lateness of the client's own timer (1 ms granularity) not
    /// charged to the relay; latency runs from min(actual send, intended +
    /// slack). 0: always from the intended send time.
    #[arg(long, default_value = "2ms", value_name = "DUR")]
    timer_slack: Dur,
    /// Measured duration.
    #[arg(long, short = 'd', default_value = "10s", value_name = "DUR")]
    duration: Dur,
    /// Largest MSRP chunk accepted from the relay (bytes).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_chunk: usize,
    /// wss:// / msrps://: accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// wss:// / msrps://: trust this PEM CA file (besides the system bundle).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Local source address(es), used round-robin.
    #[arg(long = "local-addr", value_delimiter = ',', value_name = "IP")]
    local_addrs: Vec<IpAddr>,
    /// Time allowed for connect (+TLS, +upgrade) and AUTH of one client.
    #[arg(long, default_value = "10s", value_name = "DUR")]
    connect_timeout: Dur,
    /// Pairs being set up at once, per thread.
    #[arg(long, default_value_t = 64, value_name = "N")]
    connect_concurrency: usize,
    #[command(flatten)]
    #[serde(flatten)]
    run: RunArgs,
}

/// URL schemes of msrp-relay: (prefix, TLS, default port).
const MSRP_SCHEMES: &[(&str, bool, u16)] = &[
    ("msrp://", false, 2855),
    ("msrps://", true, 2855),
    ("ws://", false, 80),
    ("wss://", true, 443),
];

fn msrp_relay(a: MsrpRelayArgs) -> Result<Report> {
    let min = payload::header_len(true);
    if a.size < min {
        bail!("--size {} is below the {min}-byte integrity header", a.size);
    }
    if a.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    if a.window == Some(0) {
        bail!("--window must be at least 1");
    }
    if let Some(r) = a.rate
        && !(r > 0.0 && r.is_finite())
    {
        bail!("--rate must be a positive number of messages per second");
    }
    // Open loop: the window is only a safety cap (as in ws-echo), large
    // enough not to throttle the schedule of a healthy relay.
    let window = a
        .window
        .unwrap_or(if a.rate.is_some() { 65_536 } else { 32 });
    // (connector, WebSocket?, relay URI) of a relay URL.
    let relay = |url: &str, uri: &Option<String>| -> Result<(Connector, bool, String)> {
        let target = Target::parse_schemes(url, MSRP_SCHEMES)?;
        let ws = url.starts_with("ws://") || url.starts_with("wss://");
        let relay_uri = uri.clone().unwrap_or_else(|| {
            let scheme = if target.tls { "msrps" } else { "msrp" };
            let port = target.addrs.first().map(|x| x.port()).unwrap_or(2855);
            let host = if target.host.contains(':') {
                format!("[{}]", target.host)
            } else {
                target.host.clone()
            };
            format!("{scheme}://{host}:{port};{}", if ws { "ws" } else { "tcp" })
        });
        let connector = Connector::new(
            target,
            ConnectOptions {
                insecure: a.insecure,
                ca_file: a.ca.clone(),
                subprotocol: Some(a.subprotocol.clone()),
                local_addrs: a.local_addrs.clone(),
                connect_timeout: a.connect_timeout.0,
            },
        )?;
        Ok((connector, ws, relay_uri))
    };
    let (connector, ws, relay_uri) = relay(&a.url, &a.relay_uri)?;
    let receiver_relay = match &a.receiver_url {
        Some(u) => {
            let (connector, ws, relay_uri) = relay(u, &a.receiver_relay_uri)?;
            Some(scenario::msrp_relay::ReceiverRelay {
                connector,
                ws,
                relay_uri,
            })
        }
        None => None,
    };
    let sc = Arc::new(scenario::msrp_relay::MsrpRelay {
        connector,
        ws,
        pairs: a.pairs,
        size: a.size,
        window,
        rate: a.rate,
        timer_slack: a.timer_slack.0,
        relay_uri: relay_uri.clone(),
        auth: (!a.no_auth).then(|| (a.user.clone(), a.password.clone())),
        expires: a.expires,
        full_path: a.full_path,
        receiver_relay: receiver_relay.clone(),
        failure_report: a.failure_report,
        connect_concurrency: a.connect_concurrency,
        connect_timeout: a.connect_timeout.0,
        close_timeout: a.run.close_timeout.0,
        max_chunk: a.max_chunk.max(4096),
    });
    let warmup = a.run.warmup.map(|d| d.0).unwrap_or(Duration::from_secs(1));
    let cfg = engine_config(&a.run, Some(a.duration.0), warmup, "msrp-relay", false);
    let mut config = serde_json::to_value(&a).context("config")?;
    config["password"] = "(hidden)".into();
    config["relay_uri"] = relay_uri.into();
    if let Some(r) = &receiver_relay {
        config["receiver_relay_uri"] = r.relay_uri.clone().into();
        // The chain needs the sender's own Use-Path first (see ReceiverRelay).
        config["full_path"] = true.into();
    }
    config["window"] = window.into();
    config["engine"] = serde_json::to_value(&cfg).context("config")?;
    let (threads, run) = engine::run(sc.clone(), &cfg)?;
    Ok(sc.report(threads, &run, config, cfg.threads))
}

fn connector(t: &TargetArgs, connections: usize) -> Result<Connector> {
    let target = Target::parse(&t.url)?;
    let mut local = t.local_addrs.clone();
    if local.is_empty() && !target.tls && target.is_loopback() && connections > 25_000 {
        local = net::loopback_sources(connections.div_ceil(25_000));
        if target.addrs.iter().any(|a| a.is_ipv6()) {
            local.clear();
        }
    }
    Connector::new(
        target,
        ConnectOptions {
            insecure: t.insecure,
            ca_file: t.ca.clone(),
            subprotocol: t.subprotocol.clone(),
            local_addrs: local,
            connect_timeout: t.connect_timeout.0,
        },
    )
}

fn engine_config(
    run: &RunArgs,
    duration: Option<Duration>,
    warmup: Duration,
    label: &str,
    stop_when_finished: bool,
) -> EngineConfig {
    EngineConfig {
        threads: run.threads.max(1),
        duration,
        warmup,
        drain: run.drain.0,
        stop_when_finished,
        count: None,
        churn: false,
        server_pid: run.server_pid,
        server_tree: run.server_tree,
        ready_file: run.ready_file.clone(),
        progress: if run.quiet {
            ProgressMode::Quiet
        } else if run.plain {
            ProgressMode::Lines
        } else {
            ProgressMode::Auto
        },
        label: format!("[{}]", run.label.as_deref().unwrap_or(label)),
    }
}

fn ws_echo(a: WsEchoArgs) -> Result<Report> {
    let min = payload::header_len(a.text);
    if a.size < min {
        bail!(
            "--size {} is below the {min}-byte integrity header ({} frames)",
            a.size,
            if a.text { "text" } else { "binary" }
        );
    }
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if let Some(r) = a.rate
        && !(r > 0.0 && r.is_finite())
    {
        bail!("--rate must be a positive number of messages per second");
    }
    let window = a
        .window
        .unwrap_or(if a.rate.is_some() { 65_536 } else { 16 })
        .max(1);
    let sc = Arc::new(scenario::ws_echo::WsEcho {
        connector: connector(&a.target, a.connections)?,
        connections: a.connections,
        size: a.size,
        text: a.text,
        window,
        rate: a.rate,
        count: a.count,
        connect_concurrency: a.target.connect_concurrency,
        close_timeout: a.run.close_timeout.0,
        timer_slack: a.timer_slack.0,
    });
    let duration = match (a.duration, a.count) {
        (Some(d), _) => Some(d.0),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let warmup = a.run.warmup.map(|d| d.0).unwrap_or(if a.count.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    });
    let mut cfg = engine_config(&a.run, duration, warmup, "ws-echo", a.count.is_some());
    cfg.count = a.count;
    let mut config = serde_json::to_value(&a).context("config")?;
    config["window"] = window.into();
    config["engine"] = serde_json::to_value(&cfg).context("config")?;
    let (threads, run) = engine::run(sc.clone(), &cfg)?;
    Ok(sc.report(threads, &run, config, cfg.threads))
}

fn ws_connect(a: WsConnectArgs) -> Result<Report> {
    if let Some(r) = a.churn
        && !(r > 0.0 && r.is_finite())
    {
        bail!("--churn must be a positive number of connections per second");
    }
    if a.connections == 0 && a.churn.is_none() {
        bail!("--connections must be at least 1 (or give --churn)");
    }
    let sc = Arc::new(scenario::ws_connect::WsConnect {
        connector: connector(&a.target, a.connections)?,
        connections: a.connections,
        connect_rate: a.connect_rate.filter(|r| *r > 0.0),
        connect_concurrency: a.target.connect_concurrency,
        ping_interval: Some(a.ping_interval.0).filter(|d| !d.is_zero()),
        close_timeout: a.run.close_timeout.0,
        churn: a.churn,
        churn_lifetime: a.churn_lifetime.0,
    });
    let warmup = a.run.warmup.map(|d| d.0).unwrap_or(Duration::ZERO);
    let mut cfg = engine_config(&a.run, Some(a.duration.0), warmup, "ws-connect", false);
    cfg.churn = a.churn.is_some();
    // The final-ping check needs time to come back.
    cfg.drain = cfg.drain.max(Duration::from_secs(2));
    let mut config = serde_json::to_value(&a).context("config")?;
    config["engine"] = serde_json::to_value(&cfg).context("config")?;
    let (threads, run) = engine::run(sc.clone(), &cfg)?;
    Ok(sc.report(threads, &run, config, cfg.threads))
}

/// Run one scenario subcommand (not `run`).
fn run_scenario(cmd: Cmd) -> Result<Report> {
    match cmd {
        Cmd::WsEcho(a) => ws_echo(a),
        Cmd::WsConnect(a) => ws_connect(a),
        Cmd::MsrpRelay(a) => msrp_relay(a),
        Cmd::Run(_) => bail!("scenario files cannot nest"),
    }
}

/// Exit status of one report: 0 OK, 1 integrity failure, 3 other failure.
fn exit_code(r: &Report) -> i32 {
    if r.ok {
        0
    } else if (r.scenario == "ws-echo" || r.scenario == "msrp-relay")
        && scenario::ws_echo::integrity_failed(r)
    {
        1
    } else {
        3
    }
}

/// Combine exit statuses: an integrity failure (1) wins over the rest (3).
fn worst(codes: impl IntoIterator<Item = i32>) -> i32 {
    codes.into_iter().fold(0, |acc, c| match (acc, c) {
        (1, _) | (_, 1) => 1,
        (0, c) => c,
        (a, _) => a,
    })
}

fn write_json(path: &std::path::Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).context("serialising the result")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.cmd {
        Cmd::Run(a) => mixed::main(a),
        cmd => {
            let (json, plot) = match &cmd {
                Cmd::WsEcho(a) => (a.run.json.clone(), a.run.plot.clone()),
                Cmd::WsConnect(a) => (a.run.json.clone(), a.run.plot.clone()),
                Cmd::MsrpRelay(a) => (a.run.json.clone(), a.run.plot.clone()),
                Cmd::Run(_) => (None, None),
            };
            if let Some(p) = &plot
                && let Err(e) = plot::check_path(p)
            {
                eprintln!("rtedge-loadgen: {e:#}");
                std::process::exit(2);
            }
            run_scenario(cmd).and_then(|report| {
                print!("{}", report.table());
                if let Some(path) = json {
                    write_json(&path, &report)?;
                }
                if let Some(path) = plot {
                    plot::write(&path, &[(String::new(), &report)])?;
                }
                Ok(exit_code(&report))
            })
        }
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rtedge-loadgen: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!("10s".parse::<Dur>().unwrap().0, Duration::from_secs(10));
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert_eq!("1.5".parse::<Dur>().unwrap().0, Duration::from_millis(1500));
        assert!("x".parse::<Dur>().is_err());
        assert!("5 parsecs".parse::<Dur>().is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "rtedge-loadgen",
            "ws-echo",
            "--url",
            "ws://127.0.0.1:1/",
            "--subprotocol",
            "echo",
            "--connections",
            "3",
            "--text",
            "--rate",
            "100",
            "--duration",
            "2s",
        ])
        .unwrap();
        let Cmd::WsEcho(a) = c.cmd else {
            panic!("ws-echo expected")
        };
        assert_eq!(a.connections, 3);
        assert!(a.text);
        assert_eq!(a.rate, Some(100.0));
        assert!(Cli::try_parse_from(["x", "ws-echo", "--text", "--binary"]).is_err());
        let c = Cli::try_parse_from(["x", "ws-connect", "--hold", "50"]).unwrap();
        let Cmd::WsConnect(a) = c.cmd else {
            panic!("ws-connect expected")
        };
        assert_eq!(a.connections, 50);
        let c = Cli::try_parse_from(["x", "ws-connect", "-c", "0", "--churn", "200"]).unwrap();
        let Cmd::WsConnect(a) = c.cmd else {
            panic!("ws-connect expected")
        };
        assert_eq!(a.churn, Some(200.0));
        assert!(a.churn_lifetime.0.is_zero());
    }

    #[test]
    fn exit_codes_combine() {
        assert_eq!(worst([0, 0]), 0);
        assert_eq!(worst([0, 3, 0]), 3);
        assert_eq!(worst([3, 1, 0]), 1);
        assert_eq!(worst([1, 3]), 1);
        assert_eq!(worst([]), 0);
    }
}
