//! bench-compare: side-by-side WebSocket echo comparison of rtedge and peer
//! servers on this machine.
//!
//! For every server and case: start the server pinned to one CPU
//! (`taskset -c 1`), run `rtedge-loadgen ws-echo --threads 1` pinned to
//! the other (`taskset -c 0`) with `--server-pid`, read the server's
//! utime+stime (/proc/PID/stat) and VmRSS, repeat `--runs` times (a fresh
//! server each run), and take the median with the min–max spread. Then
//! the idle-memory mode holds N idle connections (`rtedge-loadgen
//! ws-connect`) and reports the server's RSS per connection. The results
//! go into a marked section of bench/RESULTS.md.

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "bench-compare",
    about = "Side-by-side echo comparison: rtedge vs fastwebsockets, tokio-websockets, uWebSockets.js",
    after_help = "Example:\n  CARGO_TARGET_DIR=/work/target-load cargo build --release -p rtedge-loadgen -p rtedge-bench\n  \
                  /work/target-load/release/bench-compare --duration 5s --runs 3 --idle 10000,50000"
)]
struct Opts {
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Warm-up per run (not measured).
    #[arg(long, default_value = "1s")]
    warmup: String,
    /// Runs per server and case (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Cases to run: a = 10×64 B window 16, b = 100×64 B ping-pong, c = 50×4 KiB ping-pong.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    cases: Vec<String>,
    /// Servers: rtedge, fastwebsockets, tokio-websockets, uws.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rtedge,fastwebsockets,tokio-websockets,uws"
    )]
    peers: Vec<String>,
    /// Idle-memory mode: connection counts to hold (empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    idle: Vec<usize>,
    /// How long the idle connections are held.
    #[arg(long, default_value = "10s")]
    idle_hold: String,
    /// rtedge binary (default: target/release/rtedge in the workspace, or
    /// next to this binary).
    #[arg(long)]
    rtedge: Option<PathBuf>,
    /// Directory with rtedge-loadgen, echo-fastwebsockets,
    /// echo-tokio-websockets (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Scratch directory for the uWebSockets.js npm install.
    #[arg(long, default_value = "/tmp/rtedge-bench-uws")]
    uws_dir: PathBuf,
    /// Markdown file to update.
    #[arg(long, default_value = "bench/RESULTS.md")]
    results: PathBuf,
    /// Name of the section (between markers) to replace in the results file.
    #[arg(long, default_value = "echo-comparison")]
    section: String,
    /// Print the markdown instead of writing the results file.
    #[arg(long)]
    no_write: bool,
    /// Also write every run's raw data as JSON.
    #[arg(long)]
    raw_json: Option<PathBuf>,
    /// Listening port of the servers.
    #[arg(long, default_value_t = 19_080)]
    port: u16,
    /// CPU for the server / for the load generator.
    #[arg(long, default_value_t = 1)]
    server_cpu: u32,
    #[arg(long, default_value_t = 0)]
    client_cpu: u32,
}

#[derive(Debug, Clone, Serialize)]
struct Case {
    id: &'static str,
    title: &'static str,
    connections: usize,
    size: usize,
    window: usize,
}

const CASES: &[Case] = &[
    Case {
        id: "a",
        title: "10 connections × 64 B, 16 in flight",
        connections: 10,
        size: 64,
        window: 16,
    },
    Case {
        id: "b",
        title: "100 connections × 64 B ping-pong",
        connections: 100,
        size: 64,
        window: 1,
    },
    Case {
        id: "c",
        title: "50 connections × 4 KiB ping-pong",
        connections: 50,
        size: 4096,
        window: 1,
    },
];

/// How to start one server.
#[derive(Debug, Clone)]
struct Peer {
    name: &'static str,
    label: String,
    /// Extra text for the server list (build details).
    info: String,
    program: PathBuf,
    args: Vec<String>,
}

/// A started server; killed on drop.
struct Server {
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch() -> PathBuf {
    let d = PathBuf::from("/tmp/rtedge-bench");
    let _ = fs::create_dir_all(&d);
    d
}

fn log_tail(p: &Path) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free port: every server start gets a new one, so sockets of the
/// previous server lingering in TIME_WAIT can never make a bind fail (or a
/// readiness probe reach the wrong process).
fn free_port(base: u16) -> Result<u16> {
    for _ in 0..1000 {
        let k = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = base.wrapping_add(k % 1000);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let free = std::net::TcpListener::bind(addr).is_ok()
            && TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err();
        if free {
            return Ok(port);
        }
    }
    bail!("no free port in {base}..{}", base.saturating_add(1000))
}

fn start_server(peer: &Peer, opts: &Opts) -> Result<Server> {
    let log = scratch().join(format!("{}.log", peer.name));
    let out = fs::File::create(&log)?;
    let err = out.try_clone()?;
    let port = free_port(opts.port)?;
    let mut args = Vec::new();
    for a in &peer.args {
        if a == "{config}" {
            args.push(write_rtedge_config(port)?.display().to_string());
        } else {
            args.push(a.replace("{port}", &port.to_string()));
        }
    }
    let child = Command::new("taskset")
        .arg("-c")
        .arg(opts.server_cpu.to_string())
        .arg(&peer.program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", peer.program.display()))?;
    let pid = child.id();
    let mut server = Server {
        child,
        pid,
        port,
        log,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("exited at start ({status}): {}", log_tail(&server.log));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Let it finish start-up work (JIT, thread pools).
            std::thread::sleep(Duration::from_millis(300));
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!(
                "not listening on {addr} after 15 s: {}",
                log_tail(&server.log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / if hz > 0.0 { hz } else { 100.0 })
}

fn proc_rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One loadgen run's figures.
#[derive(Debug, Clone, Serialize, Default)]
struct RunResult {
    ok: bool,
    note: String,
    msg_per_s: f64,
    server_cpu_us_per_msg: f64,
    /// Server CPU over the whole loadgen process (before/after) per echoed message.
    server_cpu_us_per_msg_whole: f64,
    server_cpu_pct: f64,
    client_cpu_us_per_msg: f64,
    client_cpu_pct: f64,
    p50_us: f64,
    p99_us: f64,
    rss_kb: f64,
    command: String,
}

fn loadgen_path(opts: &Opts) -> PathBuf {
    bin_dir(opts).join("rtedge-loadgen")
}

fn bin_dir(opts: &Opts) -> PathBuf {
    opts.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    })
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn echo_args(opts: &Opts, case: &Case, port: &str, pid: &str, json: &str) -> Vec<String> {
    vec![
        "ws-echo".into(),
        "--url".into(),
        format!("ws://127.0.0.1:{port}/"),
        "--subprotocol".into(),
        "echo".into(),
        "--connections".into(),
        case.connections.to_string(),
        "--size".into(),
        case.size.to_string(),
        "--window".into(),
        case.window.to_string(),
        "--duration".into(),
        opts.duration.clone(),
        "--warmup".into(),
        opts.warmup.clone(),
        "--threads".into(),
        "1".into(),
        "--quiet".into(),
        "--server-pid".into(),
        pid.into(),
        "--json".into(),
        json.into(),
    ]
}

fn run_loadgen(opts: &Opts, args: &[String], timeout: Duration) -> Result<(i32, String)> {
    let log = scratch().join("loadgen.out");
    let out = fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(opts.client_cpu.to_string())
        .arg(loadgen_path(opts))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting rtedge-loadgen")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((
                st.code().unwrap_or(-1),
                fs::read_to_string(&log).unwrap_or_default(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rtedge-loadgen did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parse_secs(s: &str) -> f64 {
    let t = s.trim();
    if let Some(v) = t.strip_suffix("ms") {
        v.parse::<f64>().unwrap_or(0.0) / 1e3
    } else if let Some(v) = t.strip_suffix('s') {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = t.strip_suffix('m') {
        v.parse::<f64>().unwrap_or(0.0) * 60.0
    } else {
        t.parse().unwrap_or(0.0)
    }
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return f64::NAN,
        }
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn echo_run(opts: &Opts, peer: &Peer, case: &Case, run: usize) -> RunResult {
    let server = match start_server(peer, opts) {
        Ok(s) => s,
        Err(e) => {
            return RunResult {
                note: format!("server failed to start: {e:#}"),
                ..Default::default()
            };
        }
    };
    let json = scratch().join(format!("{}-{}-{run}.json", peer.name, case.id));
    let _ = fs::remove_file(&json);
    let args = echo_args(
        opts,
        case,
        &server.port.to_string(),
        &server.pid.to_string(),
        &json.display().to_string(),
    );
    let command = format!(
        "taskset -c {} rtedge-loadgen {}",
        opts.client_cpu,
        shell_quote(&echo_args(opts, case, "PORT", "PID", "FILE"))
    );
    let cpu0 = proc_cpu_s(server.pid);
    let timeout =
        Duration::from_secs_f64(parse_secs(&opts.duration) + parse_secs(&opts.warmup) + 60.0);
    let outcome = run_loadgen(opts, &args, timeout);
    let cpu1 = proc_cpu_s(server.pid);
    let alive = proc_rss_kb(server.pid).is_some();
    drop(server);
    let (code, output) = match outcome {
        Ok(x) => x,
        Err(e) => {
            return RunResult {
                note: format!("{e:#}"),
                command,
                ..Default::default()
            };
        }
    };
    let Ok(v) = fs::read_to_string(&json)
        .map_err(|e| anyhow!(e))
        .and_then(|s| serde_json::from_str::<Value>(&s).map_err(|e| anyhow!(e)))
    else {
        let tail: Vec<&str> = output.lines().rev().take(4).collect();
        return RunResult {
            note: format!("loadgen exit {code}, no JSON: {}", tail.join(" | ")),
            command,
            ..Default::default()
        };
    };
    let measured_s = f(&v, &["timing", "measured_s"]);
    let received = f(&v, &["messages", "received"]);
    let whole = match (cpu0, cpu1) {
        (Some(a), Some(b)) if received > 0.0 => (b - a) * 1e6 / received,
        _ => f64::NAN,
    };
    let mut note = String::new();
    if code != 0 {
        let errs = v.get("errors").map(|e| e.to_string()).unwrap_or_default();
        note = format!(
            "loadgen exit {code}: messages {} errors {errs}",
            v["messages"]
        );
    }
    if !alive {
        note.push_str(" (server died)");
    }
    RunResult {
        ok: code == 0,
        note,
        msg_per_s: f(&v, &["throughput", "msg_per_s"]),
        server_cpu_us_per_msg: f(&v, &["server", "cpu_us_per_msg"]),
        server_cpu_us_per_msg_whole: whole,
        server_cpu_pct: (f(&v, &["server", "cpu_measure", "user_s"])
            + f(&v, &["server", "cpu_measure", "sys_s"]))
            / measured_s
            * 100.0,
        client_cpu_us_per_msg: f(&v, &["client", "cpu_us_per_msg"]),
        client_cpu_pct: (f(&v, &["client", "cpu_measure", "user_s"])
            + f(&v, &["client", "cpu_measure", "sys_s"]))
            / measured_s
            * 100.0,
        p50_us: f(&v, &["latency_us", "p50"]),
        p99_us: f(&v, &["latency_us", "p99"]),
        rss_kb: f(&v, &["server", "rss_kb_measure_end"]),
        command,
    }
}

#[derive(Debug, Clone, Serialize, Default)]
struct IdleResult {
    ok: bool,
    note: String,
    connections: usize,
    established: f64,
    survived: f64,
    rss_kb_before: f64,
    rss_kb_held: f64,
    bytes_per_conn: f64,
    connect_s: f64,
    command: String,
}

fn nofile_hard() -> u64 {
    // SAFETY: getrlimit fills the struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            // Raise ours (the servers inherit it).
            let n = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &n);
            r.rlim_max
        } else {
            1024
        }
    }
}

fn idle_run(opts: &Opts, peer: &Peer, n: usize) -> IdleResult {
    let limit = nofile_hard();
    if n as u64 + 200 > limit {
        return IdleResult {
            connections: n,
            note: format!(
                "skipped: {n} connections need {n}+ descriptors in both the server and the loadgen; \
                 RLIMIT_NOFILE hard limit here is {limit} (raising it needs CAP_SYS_RESOURCE)"
            ),
            ..Default::default()
        };
    }
    let server = match start_server(peer, opts) {
        Ok(s) => s,
        Err(e) => {
            return IdleResult {
                connections: n,
                note: format!("server failed to start: {e:#}"),
                ..Default::default()
            };
        }
    };
    let json = scratch().join(format!("{}-idle-{n}.json", peer.name));
    let _ = fs::remove_file(&json);
    let idle_args = |port: &str, pid: &str, json: &str| -> Vec<String> {
        vec![
            "ws-connect".into(),
            "--url".into(),
            format!("ws://127.0.0.1:{port}/"),
            "--subprotocol".into(),
            "echo".into(),
            "--connections".into(),
            n.to_string(),
            "--duration".into(),
            opts.idle_hold.clone(),
            "--ping-interval".into(),
            "5s".into(),
            "--quiet".into(),
            "--server-pid".into(),
            pid.into(),
            "--json".into(),
            json.into(),
        ]
    };
    let args = idle_args(
        &server.port.to_string(),
        &server.pid.to_string(),
        &json.display().to_string(),
    );
    let command = format!(
        "taskset -c {} rtedge-loadgen {}",
        opts.client_cpu,
        shell_quote(&idle_args("PORT", "PID", "FILE"))
    );
    let timeout = Duration::from_secs_f64(parse_secs(&opts.idle_hold) + 180.0);
    let outcome = run_loadgen(opts, &args, timeout);
    drop(server);
    let (code, output) = match outcome {
        Ok(x) => x,
        Err(e) => {
            return IdleResult {
                connections: n,
                note: format!("{e:#}"),
                command,
                ..Default::default()
            };
        }
    };
    let Ok(v) = fs::read_to_string(&json)
        .map_err(|e| anyhow!(e))
        .and_then(|s| serde_json::from_str::<Value>(&s).map_err(|e| anyhow!(e)))
    else {
        let tail: Vec<&str> = output.lines().rev().take(4).collect();
        return IdleResult {
            connections: n,
            note: format!("loadgen exit {code}, no JSON: {}", tail.join(" | ")),
            command,
            ..Default::default()
        };
    };
    let mut note = String::new();
    if code != 0 {
        note = format!(
            "loadgen exit {code}: errors {}",
            v.get("errors").cloned().unwrap_or_default()
        );
    }
    IdleResult {
        ok: code == 0,
        note,
        connections: n,
        established: f(&v, &["connections", "established"]),
        survived: f(&v, &["connections", "survived"]),
        rss_kb_before: f(&v, &["server", "rss_kb_start"]),
        rss_kb_held: f(&v, &["server", "rss_kb_connected"]),
        bytes_per_conn: f(&v, &["server", "rss_bytes_per_conn"]),
        connect_s: f(&v, &["timing", "connect_s"]),
        command,
    }
}

/// Median and (min, max) of the finite values.
fn stats(vals: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = vals.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn fmt_num(x: f64, kind: &str) -> String {
    match kind {
        "rate" => {
            if x >= 1e6 {
                format!("{:.2}M", x / 1e6)
            } else if x >= 1e3 {
                format!("{:.1}k", x / 1e3)
            } else {
                format!("{x:.0}")
            }
        }
        "us" => format!("{x:.2}"),
        "int" => format!("{x:.0}"),
        "mib" => format!("{:.1}", x / 1024.0),
        _ => format!("{x:.1}"),
    }
}

fn cell(s: Option<(f64, f64, f64)>, kind: &str, spread: bool) -> String {
    match s {
        None => "–".into(),
        Some((m, lo, hi)) if spread && (hi - lo).abs() > f64::EPSILON => format!(
            "{} ({}–{})",
            fmt_num(m, kind),
            fmt_num(lo, kind),
            fmt_num(hi, kind)
        ),
        Some((m, ..)) => fmt_num(m, kind),
    }
}

fn find_rtedge(opts: &Opts) -> PathBuf {
    if let Some(p) = &opts.rtedge {
        return p.clone();
    }
    let ws = PathBuf::from("target/release/rtedge");
    if ws.exists() {
        return ws;
    }
    let next = bin_dir(opts).join("rtedge");
    if next.exists() {
        return next;
    }
    ws
}

fn write_rtedge_config(port: u16) -> Result<PathBuf> {
    let path = scratch().join("rtedge-bench.toml");
    let cfg = format!(
        "# generated by bench-compare\n\
         workers = 1\n\n\
         [reactor]\npin_workers = false\n\n\
         [mgmt]\nenabled = false\n\n\
         [region]\npath = \"/tmp/rtedge-bench.region\"\n\n\
         [[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [websocket]\nsub_protocols = [\"echo\"]\n"
    );
    fs::write(&path, cfg)?;
    Ok(path)
}

/// Build the peer list; unavailable peers come back as skip messages.
fn peers(opts: &Opts) -> (Vec<Peer>, Vec<String>) {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for name in &opts.peers {
        match name.as_str() {
            "rtedge" => {
                let bin = find_rtedge(opts);
                if !bin.exists() {
                    skipped.push(format!(
                        "rtedge: not built ({} missing), skipped",
                        bin.display()
                    ));
                    continue;
                }
                let built = fs::metadata(&bin)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(|t| {
                        let secs = t
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        cmd_out(
                            "date",
                            &["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d %H:%M UTC"],
                        )
                    })
                    .unwrap_or_default();
                let head = cmd_out("git", &["rev-parse", "--short", "HEAD"]);
                eprintln!(
                    "rtedge: {} (built {built}, workspace HEAD {head})",
                    bin.display()
                );
                ok.push(Peer {
                    name: "rtedge",
                    label: "**rtedge**".into(),
                    info: format!(" (binary built {built}; workspace HEAD {head})"),
                    program: bin,
                    args: vec!["run".into(), "--config".into(), "{config}".into()],
                });
            }
            "fastwebsockets" | "tokio-websockets" => {
                let (pname, label) = if name == "fastwebsockets" {
                    ("fastwebsockets", "fastwebsockets 0.10 (hyper 1)")
                } else {
                    ("tokio-websockets", "tokio-websockets 0.13")
                };
                let bin = bin_dir(opts).join(format!("echo-{pname}"));
                if bin.exists() {
                    ok.push(Peer {
                        name: if pname == "fastwebsockets" {
                            "fastwebsockets"
                        } else {
                            "tokio-websockets"
                        },
                        label: label.into(),
                        info: String::new(),
                        program: bin,
                        args: vec!["--listen".into(), "127.0.0.1:{port}".into()],
                    });
                } else {
                    skipped.push(format!("{pname}: {} not built, skipped", bin.display()));
                }
            }
            "uws" => match prepare_uws(opts) {
                Ok((module, script)) => ok.push(Peer {
                    name: "uws",
                    label: "uWebSockets.js (npm uwebsockets@3.0.6, node)".into(),
                    info: format!(" (node {})", cmd_out("node", &["--version"])),
                    program: PathBuf::from("node"),
                    args: vec![
                        script.display().to_string(),
                        "{port}".into(),
                        module.display().to_string(),
                    ],
                }),
                Err(e) => skipped.push(format!("uWebSockets.js: {e:#}, skipped")),
            },
            other => skipped.push(format!("{other}: unknown server name, skipped")),
        }
    }
    (ok, skipped)
}

fn prepare_uws(opts: &Opts) -> Result<(PathBuf, PathBuf)> {
    let script = ["bench/peers/uws-echo.js", "peers/uws-echo.js"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/uws-echo.js");
            p.exists().then_some(p)
        })
        .ok_or_else(|| {
            anyhow!("bench/peers/uws-echo.js not found (run from the workspace root)")
        })?;
    let script = fs::canonicalize(&script)?;
    let module = opts.uws_dir.join("node_modules/uwebsockets");
    if !module.join("package.json").exists() {
        fs::create_dir_all(&opts.uws_dir)?;
        eprintln!(
            "installing uwebsockets@3.0.6 into {} ...",
            opts.uws_dir.display()
        );
        let st = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&opts.uws_dir)
            .arg("uwebsockets@3.0.6")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running npm (is node installed?)")?;
        if !st.success() {
            bail!("npm install uwebsockets@3.0.6 failed ({st})");
        }
    }
    let check = Command::new("node")
        .arg("-e")
        .arg(format!("require({:?})", module.display().to_string()))
        .output()
        .context("running node")?;
    if !check.status.success() {
        bail!(
            "the module does not load: {}",
            String::from_utf8_lossy(&check.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok((module, script))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "nproc {}, CPU \"{}\", kernel {}",
        cmd_out("nproc", &[]),
        cpu,
        cmd_out("uname", &["-r"])
    )
}

#[derive(Serialize)]
struct Raw<'a> {
    date: String,
    machine: String,
    skipped: &'a [String],
    echo: Vec<(String, String, Vec<RunResult>)>,
    idle: Vec<(String, Vec<IdleResult>)>,
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    let loadgen = loadgen_path(&opts);
    if !loadgen.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p rtedge-loadgen -p rtedge-bench` or pass --bin-dir",
            loadgen.display()
        );
    }
    let cases: Vec<&Case> = opts
        .cases
        .iter()
        .filter_map(|id| CASES.iter().find(|c| c.id == id.as_str()))
        .collect();
    let (peers, skipped) = peers(&opts);
    for s in &skipped {
        eprintln!("{s}");
    }
    let date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load_start = loadavg();
    let mut echo: Vec<(String, String, Vec<RunResult>)> = Vec::new();
    let mut start_failed: Vec<String> = Vec::new();
    'peer: for peer in &peers {
        for case in &cases {
            let mut runs = Vec::new();
            for r in 0..opts.runs.max(1) {
                eprint!(
                    "{} case {} run {}/{} ... ",
                    peer.name,
                    case.id,
                    r + 1,
                    opts.runs
                );
                let res = echo_run(&opts, peer, case, r);
                if res.ok {
                    eprintln!(
                        "{:.0} msg/s, server {:.2} µs/msg ({:.0}% CPU), loadgen {:.0}% CPU, p50 {} p99 {} µs",
                        res.msg_per_s,
                        res.server_cpu_us_per_msg,
                        res.server_cpu_pct,
                        res.client_cpu_pct,
                        res.p50_us,
                        res.p99_us
                    );
                } else {
                    eprintln!("FAILED: {}", res.note);
                }
                let failed_start = res.note.starts_with("server failed to start");
                runs.push(res);
                if failed_start {
                    let msg = if peer.name == "rtedge" {
                        format!(
                            "rtedge: not built/failed to start, skipped ({})",
                            runs[0].note
                        )
                    } else {
                        format!("{}: failed to start, skipped ({})", peer.name, runs[0].note)
                    };
                    eprintln!("{msg}");
                    start_failed.push(msg);
                    continue 'peer;
                }
            }
            echo.push((peer.name.to_string(), case.id.to_string(), runs));
        }
    }
    let mut idle: Vec<(String, Vec<IdleResult>)> = Vec::new();
    for peer in &peers {
        if start_failed.iter().any(|m| m.starts_with(peer.name)) {
            continue;
        }
        let mut v = Vec::new();
        for &n in &opts.idle {
            eprint!("{} idle {n} ... ", peer.name);
            let r = idle_run(&opts, peer, n);
            if r.ok {
                eprintln!(
                    "{} established, {} survived, RSS {} → {} KiB, {:.0} B/conn",
                    r.established, r.survived, r.rss_kb_before, r.rss_kb_held, r.bytes_per_conn
                );
            } else {
                eprintln!("{}", r.note);
            }
            v.push(r);
        }
        idle.push((peer.name.to_string(), v));
    }

    let mut all_skipped = skipped.clone();
    all_skipped.extend(start_failed);
    let load = format!("{load_start} at the start, {} at the end", loadavg());
    let md = markdown(
        &opts,
        &date,
        &load,
        &peers,
        &cases,
        &echo,
        &idle,
        &all_skipped,
    );
    if let Some(p) = &opts.raw_json {
        let raw = Raw {
            date: date.clone(),
            machine: machine(),
            skipped: &all_skipped,
            echo: echo.clone(),
            idle: idle.clone(),
        };
        fs::write(p, serde_json::to_string_pretty(&raw)?)?;
    }
    if opts.no_write {
        println!("{md}");
    } else {
        update_section(&opts.results, &opts.section, &md)?;
        println!("{md}");
        eprintln!(
            "updated {} (section {:?})",
            opts.results.display(),
            opts.section
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    opts: &Opts,
    date: &str,
    load: &str,
    peers: &[Peer],
    cases: &[&Case],
    echo: &[(String, String, Vec<RunResult>)],
    idle: &[(String, Vec<IdleResult>)],
    skipped: &[String],
) -> String {
    let has_rtedge = echo
        .iter()
        .any(|(p, _, runs)| p == "rtedge" && runs.iter().any(|r| r.ok));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Echo comparison — {date}{}\n",
        if has_rtedge {
            ""
        } else {
            " — PEERS ONLY (rtedge not measured)"
        }
    );
    let _ = writeln!(
        o,
        "Machine: {}. Load average (1/5/15 min): {load}. \
         Shared, noisy VM: compare CPU µs/msg rather than msg/s.\n",
        machine()
    );
    let _ = writeln!(
        o,
        "Method: each server pinned to CPU {} (`taskset -c {}`), `rtedge-loadgen ws-echo --threads 1` pinned to CPU {}; \
         a fresh server per run; {} run(s) of {} measured after {} warm-up; each cell is the median, with min–max in \
         brackets. Server CPU µs/msg = the server's utime+stime (/proc/PID/stat, sampled by the loadgen at the start and \
         end of the measured window via `--server-pid`) ÷ echoes in that window. RSS = the server's VmRSS at the end of \
         the window. CPU % = CPU time ÷ wall time of the window (100 % = one core saturated). Latency is the round trip \
         measured by the loadgen (µs).\n",
        opts.server_cpu, opts.server_cpu, opts.client_cpu, opts.runs, opts.duration, opts.warmup
    );
    let _ = writeln!(o, "Runner command (from the workspace root):\n");
    let _ = writeln!(
        o,
        "    /work/target-load/release/bench-compare --duration {} --warmup {} --runs {} --cases {} --peers {} --idle {} --idle-hold {}\n",
        opts.duration,
        opts.warmup,
        opts.runs,
        opts.cases.join(","),
        opts.peers.join(","),
        opts.idle
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        opts.idle_hold
    );
    let _ = writeln!(
        o,
        "Servers (PORT: a fresh free port per start; rtedge's config FILE is generated: `workers = 1`, \
         `[reactor] pin_workers = false`, `[mgmt] enabled = false`, `[region] path = \"/tmp/rtedge-bench.region\"`, \
         one `[[listen]] transport = \"ws\"` on 127.0.0.1:PORT, `[websocket] sub_protocols = [\"echo\"]`):\n"
    );
    for p in peers {
        let _ = writeln!(
            o,
            "- {}{}: `taskset -c {} {} {}`",
            p.label,
            p.info,
            opts.server_cpu,
            p.program.display(),
            shell_quote(&p.args)
                .replace("'{port}'", "PORT")
                .replace("{port}", "PORT")
                .replace("'{config}'", "FILE")
        );
    }
    for s in skipped {
        let _ = writeln!(o, "- {s}");
    }
    let _ = writeln!(o);
    for case in cases {
        let _ = writeln!(o, "### ({}) {}\n", case.id, case.title);
        if let Some(cmd) = echo
            .iter()
            .find(|(_, c, _)| c == case.id)
            .and_then(|(_, _, runs)| runs.iter().find(|r| !r.command.is_empty()))
        {
            let _ = writeln!(o, "    {}\n", cmd.command);
        }
        let _ = writeln!(
            o,
            "| server | msg/s | server CPU µs/msg | server CPU % | p50 µs | p99 µs | server RSS MiB | loadgen CPU µs/msg | loadgen CPU % | runs ok | msg/s ÷ rtedge | CPU/msg ÷ rtedge |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut starved: Vec<String> = Vec::new();
        let base = echo
            .iter()
            .find(|(p, c, _)| p == "rtedge" && c == case.id)
            .map(|(_, _, runs)| {
                let ok: Vec<&RunResult> = runs.iter().filter(|r| r.ok).collect();
                (
                    stats(ok.iter().map(|r| r.msg_per_s)).map(|s| s.0),
                    stats(ok.iter().map(|r| r.server_cpu_us_per_msg)).map(|s| s.0),
                )
            });
        for (peer, c, runs) in echo {
            if c != case.id {
                continue;
            }
            let label = peers
                .iter()
                .find(|p| p.name == peer)
                .map(|p| p.label.clone())
                .unwrap_or_else(|| peer.clone());
            let ok: Vec<&RunResult> = runs.iter().filter(|r| r.ok).collect();
            let rate = stats(ok.iter().map(|r| r.msg_per_s));
            let cpu = stats(ok.iter().map(|r| r.server_cpu_us_per_msg));
            let ratio = |x: Option<(f64, f64, f64)>, b: Option<f64>| match (x, b) {
                (Some((m, ..)), Some(b)) if b > 0.0 => format!("{:.2}", m / b),
                _ => "–".into(),
            };
            let (r1, r2) = match &base {
                Some((b1, b2)) => (ratio(rate, *b1), ratio(cpu, *b2)),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                o,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {r1} | {r2} |",
                cell(rate, "rate", true),
                cell(cpu, "us", true),
                cell(stats(ok.iter().map(|r| r.server_cpu_pct)), "int", false),
                cell(stats(ok.iter().map(|r| r.p50_us)), "int", true),
                cell(stats(ok.iter().map(|r| r.p99_us)), "int", true),
                cell(stats(ok.iter().map(|r| r.rss_kb)), "mib", false),
                cell(
                    stats(ok.iter().map(|r| r.client_cpu_us_per_msg)),
                    "us",
                    false
                ),
                cell(stats(ok.iter().map(|r| r.client_cpu_pct)), "int", false),
                ok.len(),
                runs.len(),
            );
            if stats(ok.iter().map(|r| r.server_cpu_pct)).is_some_and(|s| s.0 < 90.0) {
                starved.push(label.clone());
            }
            for r in runs.iter().filter(|r| !r.ok) {
                let _ = writeln!(
                    o,
                    "|  ↳ failed run | {} |||||||||||",
                    r.note.replace('|', "/")
                );
            }
        }
        let _ = writeln!(o);
        if !starved.is_empty() {
            let _ = writeln!(
                o,
                "Not saturated (server CPU below 90 % of a core): {}. Their msg/s understates capacity \
                 (CPU taken by other processes on this shared VM, or the load generator's limit); \
                 CPU µs/msg stays comparable.\n",
                starved.join(", ")
            );
        }
    }
    if !idle.is_empty() {
        let mut idle_skips: Vec<String> = Vec::new();
        let _ = writeln!(o, "### Idle connections: server memory per connection\n");
        let _ = writeln!(
            o,
            "`rtedge-loadgen ws-connect --connections N --duration {} --ping-interval 5s --server-pid PID` (loadgen on CPU {}): \
             RSS before connecting vs. once all N are open; bytes/conn = ΔRSS ÷ established. \
             Survived = answered a final ping after the hold.\n",
            opts.idle_hold, opts.client_cpu
        );
        let _ = writeln!(
            o,
            "| server | N | established | survived | RSS before MiB | RSS held MiB | bytes/conn | connect s | note |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
        for (peer, rs) in idle {
            let label = peers
                .iter()
                .find(|p| p.name == *peer)
                .map(|p| p.label.clone())
                .unwrap_or_else(|| peer.clone());
            for r in rs {
                if r.note.starts_with("skipped:") {
                    let n = format!("N = {}: {}", r.connections, r.note);
                    if !idle_skips.contains(&n) {
                        idle_skips.push(n);
                    }
                    continue;
                }
                if r.established.is_finite() && r.established > 0.0 {
                    let _ = writeln!(
                        o,
                        "| {label} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} | {} |",
                        r.connections,
                        r.established,
                        r.survived,
                        r.rss_kb_before / 1024.0,
                        r.rss_kb_held / 1024.0,
                        r.bytes_per_conn,
                        r.connect_s,
                        r.note.replace('|', "/")
                    );
                } else {
                    let _ = writeln!(
                        o,
                        "| {label} | {} | – | – | – | – | – | – | {} |",
                        r.connections,
                        r.note.replace('|', "/")
                    );
                }
            }
        }
        let _ = writeln!(o);
        for n in &idle_skips {
            let _ = writeln!(o, "- {n}");
        }
        if !idle_skips.is_empty() {
            let _ = writeln!(o);
        }
    }
    o
}

/// Replace (or append) the section between
/// `<!-- bench-compare:NAME:begin -->` and `<!-- bench-compare:NAME:end -->`.
fn update_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- bench-compare:{name}:begin -->");
    let end = format!("<!-- bench-compare:{name}:end -->");
    let block = format!("{begin}\n{body}{end}\n");
    let old = fs::read_to_string(path).unwrap_or_else(|_| {
        "# rtedge benchmark results\n\nSections between `bench-compare` markers are rewritten by \
         `bench-compare` (bench/src/bin/bench-compare.rs); edit outside them.\n\n"
            .to_string()
    });
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            let after = &old[e + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &old[..b])
        }
        _ => format!(
            "{}{}{block}",
            old,
            if old.ends_with("\n\n") { "" } else { "\n" }
        ),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(stats([3.0, 1.0, 2.0].into_iter()), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats([4.0, 1.0].into_iter()), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats([f64::NAN].into_iter()), None);
    }

    #[test]
    fn section_replace() {
        let p = std::env::temp_dir().join(format!("bc-test-{}.md", std::process::id()));
        let _ = fs::remove_file(&p);
        update_section(&p, "x", "one\n").unwrap();
        fs::write(&p, fs::read_to_string(&p).unwrap() + "tail\n").unwrap();
        update_section(&p, "x", "two\n").unwrap();
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains("two\n") && !s.contains("one\n") && s.ends_with("tail\n"));
        assert_eq!(s.matches(":begin -->").count(), 1);
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn secs() {
        assert_eq!(parse_secs("5s"), 5.0);
        assert_eq!(parse_secs("500ms"), 0.5);
        assert_eq!(parse_secs("2m"), 120.0);
        assert_eq!(parse_secs("3"), 3.0);
    }
}
