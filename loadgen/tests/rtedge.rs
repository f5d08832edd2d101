//! End-to-end: every scenario against the real `rtedge` binary (one worker,
//! 127.0.0.1, ephemeral port, `echo` sub-protocol), plus the plot files.
//!
//! The `rtedge` binary is the workspace's own: `RTEDGE_BIN` if set, else
//! the `rtedge` next to this package's `rtedge-loadgen` in the target
//! directory, which `cargo test --workspace` (the project's test command)
//! builds before any test runs. With `cargo test -p rtedge-loadgen` alone,
//! build it first (`cargo build -p rtedge`).
//!
//! Every run is bounded: the loadgen by its own `--duration`/`--count` and a
//! kill after `RUN_LIMIT`, the server by a kill when the test ends (and by
//! PR_SET_PDEATHSIG if the test process dies first).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a single loadgen run may take before the test kills it.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Longest the server may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(30);

fn rtedge_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RTEDGE_BIN") {
        return PathBuf::from(p);
    }
    let lg = Path::new(env!("CARGO_BIN_EXE_rtedge-loadgen"));
    let p = lg.with_file_name("rtedge");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test --workspace`, or `cargo build -p rtedge` first \
         (or point RTEDGE_BIN at an rtedge binary)",
        p.display()
    );
    p
}

/// A private directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "loadgen-rtedge-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running rtedge; killed on drop.
struct Rtedge {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Rtedge {
    fn start(tag: &str) -> Rtedge {
        let dir = TempDir::new(tag);
        let config = dir.join("rtedge.toml");
        std::fs::write(
            &config,
            format!(
                "workers = 1\n\n[[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:0\"\n\n\
                 [websocket]\nsub_protocols = [\"echo\"]\n\n[reactor]\npin_workers = false\n\n\
                 [mgmt]\nenabled = false\n\n[region]\npath = {:?}\nslots_per_core = 4096\n\n\
                 [log]\nlevel = \"info\"\n",
                dir.join("stats.region").display().to_string()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(rtedge_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The server follows the test process if that dies without unwinding.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn rtedge");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keep draining the log so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_LIMIT;
        let mut addr = None;
        let mut log = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains("listening")
                        && let Some(i) = line.find("address=")
                    {
                        let rest = &line[i + "address=".len()..];
                        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                        addr = rest[..end].trim_matches('"').parse().ok();
                    } else if line.contains("rtedge running") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("rtedge did not start:\n{log}");
                }
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("no listening address in:\n{log}"));
        Rtedge { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Rtedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one loadgen run.
struct Run {
    code: i32,
    json: serde_json::Value,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Everything, for assertion messages (per-second series left out).
    fn dump(&self) -> String {
        let mut c = self.json.clone();
        if let Some(o) = c.as_object_mut() {
            o.remove("per_second");
            o.remove("latency_per_second");
        }
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}\nJSON: {c}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run the loadgen with `--json`, bounded by `RUN_LIMIT`.
fn loadgen(dir: &TempDir, tag: &str, args: &[&str]) -> Run {
    let json = dir.join(&format!("{tag}.json"));
    let out = dir.join(&format!("{tag}.out"));
    let err = dir.join(&format!("{tag}.err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtedge-loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "loadgen {args:?} still running after {RUN_LIMIT:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let json = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    Run {
        code: status.code().unwrap_or(-1),
        json,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// No message lost, corrupted, duplicated or reordered, none closed by the
/// server; at least `min` echoes.
fn assert_clean_echo(r: &Run, min: u64) {
    let d = r.dump();
    assert_eq!(r.code, 0, "{d}");
    assert_eq!(r.json["ok"], true, "{d}");
    let m = &r.json["messages"];
    for k in [
        "lost",
        "corrupted",
        "duplicated",
        "reordered",
        "closed_by_server",
    ] {
        assert_eq!(u(&m[k]), 0, "{k}: {d}");
    }
    assert!(u(&m["received"]) >= min, "{d}");
    assert_eq!(u(&m["received"]), u(&m["sent"]), "{d}");
    assert_eq!(r.json["errors"], serde_json::json!({}), "{d}");
    assert_eq!(
        r.json["connections"]["established"], r.json["connections"]["target"],
        "{d}"
    );
}

/// The file is a PNG of `width` × `height` that decodes completely and has
/// text in the bottom band, where the x-axis description is drawn (so the
/// embedded font rendered).
fn check_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG signature: {:?}",
        &bytes[..8.min(bytes.len())]
    );
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (width, height));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = |x: u32, y: u32| {
        let i = (y as usize * width as usize + x as usize) * 3;
        (buf[i], buf[i + 1], buf[i + 2])
    };
    assert_eq!(px(0, 0), (255, 255, 255), "white background");
    // "seconds since start" sits in the last ~25 rows of each panel; count
    // dark pixels there in the left half.
    let dark = (height - 25..height)
        .flat_map(|y| (0..width / 2).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = px(x, y);
            (r as u32 + g as u32 + b as u32) < 300
        })
        .count();
    assert!(dark > 100, "no text in the axis band ({dark} dark pixels)");
    // Red p99 line in the latency panel.
    let red = (0..height)
        .flat_map(|y| (0..width / 2).map(move |x| (x, y)))
        .filter(|&(x, y)| px(x, y) == (255, 0, 0))
        .count();
    assert!(red > 50, "no p99 line ({red} red pixels)");
}

fn check_svg(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(
        s.trim_start().starts_with("<svg"),
        "{}",
        &s[..100.min(s.len())]
    );
    assert!(s.trim_end().ends_with("</svg>"));
    assert!(s.contains("<polyline") && s.contains("<text"));
    s
}

#[test]
fn ws_echo_pipelined_and_ping_pong() {
    let srv = Rtedge::start("echo");
    let url = srv.url();
    let pid = srv.pid();
    let svg = srv.dir.join("echo.svg");
    // Pipelined: 4 connections × 16 in flight, exactly 20k messages, with
    // the server's CPU sampled and an SVG plot.
    let r = loadgen(
        &srv.dir,
        "pipelined",
        &[
            "ws-echo",
            "--url",
            &url,
            "--subprotocol",
            "echo",
            "-c",
            "4",
            "--window",
            "16",
            "--count",
            "20000",
            "--server-pid",
            &pid,
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_clean_echo(&r, 20_000);
    let d = r.dump();
    assert_eq!(u(&r.json["messages"]["received"]), 20_000, "{d}");
    // The loadgen's own CPU per message and % of a core, and the server's.
    assert!(r.json["client"]["cpu_us_per_msg"].as_f64().unwrap() > 0.0);
    assert!(r.json["client"]["cpu_percent"].as_f64().unwrap() > 0.0);
    assert!(r.json["server"]["cpu_us_per_msg"].as_f64().is_some(), "{d}");
    assert!(r.json["server"]["cpu_percent"].as_f64().is_some(), "{d}");
    assert!(
        r.stdout.contains("loadgen cpu") && r.stdout.contains("CPU µs/msg"),
        "{d}"
    );
    assert!(r.stdout.contains("% CPU"), "{d}");
    let s = check_svg(&svg);
    assert!(s.contains("round-trip latency") && s.contains("throughput"));

    // Ping-pong, text frames, a duration (so the plot has lines over several
    // seconds), a PNG plot; the progress lines (stderr is not a terminal:
    // plain lines) carry the interval p99.
    let png = srv.dir.join("echo.png");
    let r = loadgen(
        &srv.dir,
        "pingpong",
        &[
            "ws-echo",
            "--url",
            &url,
            "--subprotocol",
            "echo",
            "-c",
            "8",
            "--window",
            "1",
            "--text",
            "--size",
            "512",
            "--warmup",
            "500ms",
            "--duration",
            "2s",
            "--plot",
            png.to_str().unwrap(),
        ],
    );
    assert_clean_echo(&r, 100);
    let d = r.dump();
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("msg/s") && l.contains(" p99 ") && l.contains("µs")),
        "{d}"
    );
    check_png(&png, 1400, 420);

    // Open loop at a fixed rate.
    let r = loadgen(
        &srv.dir,
        "openloop",
        &[
            "ws-echo",
            "--url",
            &url,
            "--subprotocol",
            "echo",
            "-c",
            "10",
            "--rate",
            "2000",
            "--warmup",
            "0s",
            "--duration",
            "1500ms",
            "--quiet",
        ],
    );
    assert_clean_echo(&r, 2000);
}

#[test]
fn ws_connect_hold_and_churn() {
    let srv = Rtedge::start("connect");
    let url = srv.url();
    let pid = srv.pid();
    let png = srv.dir.join("connect.png");
    let r = loadgen(
        &srv.dir,
        "connect",
        &[
            "ws-connect",
            "--url",
            &url,
            "--subprotocol",
            "echo",
            "-c",
            "200",
            "--ping-interval",
            "500ms",
            "--churn",
            "50",
            "--churn-lifetime",
            "20ms",
            "--duration",
            "2s",
            "--server-pid",
            &pid,
            "--plot",
            png.to_str().unwrap(),
        ],
    );
    let d = r.dump();
    assert_eq!(r.code, 0, "{d}");
    assert_eq!(r.json["ok"], true, "{d}");
    let c = &r.json["connections"];
    assert_eq!(u(&c["established"]), 200, "{d}");
    assert_eq!(u(&c["failed"]), 0, "{d}");
    assert_eq!(u(&c["survived"]), 200, "{d}");
    assert!(u(&r.json["handshake_us"]["count"]) >= 200, "{d}");
    let st = &r.json["churn"]["stats"];
    assert!(u(&st["established"]) >= 50, "{d}");
    assert_eq!(u(&st["failed"]), 0, "{d}");
    assert_eq!(u(&st["close_errors"]), 0, "{d}");
    assert!(
        r.json["server"]["rss_bytes_per_conn"].as_f64().is_some(),
        "{d}"
    );
    check_png(&png, 1400, 420);
}

#[test]
fn mixed_scenario_file() {
    let srv = Rtedge::start("mixed");
    let url = srv.url();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mixed.toml");
    let png = srv.dir.join("mixed.png");
    let r = loadgen(
        &srv.dir,
        "mixed",
        &[
            "run",
            file,
            "--url",
            &url,
            "--set",
            "duration=2s",
            "--quiet",
            "--plot",
            png.to_str().unwrap(),
        ],
    );
    let d = r.dump();
    assert_eq!(r.code, 0, "{d}");
    assert_eq!(r.json["ok"], true, "{d}");
    let sc = r.json["scenarios"].as_array().unwrap();
    let by = |name: &str| sc.iter().find(|s| s["name"] == name).unwrap();
    assert_eq!(u(&by("idle")["connections"]["survived"]), 1000, "{d}");
    let echo = &by("echo")["messages"];
    for k in ["lost", "corrupted", "duplicated", "reordered"] {
        assert_eq!(u(&echo[k]), 0, "{k}: {d}");
    }
    assert!(u(&echo["received"]) > 1000, "{d}");
    let storm = &by("storm")["churn"]["stats"];
    assert!(u(&storm["established"]) >= 200, "{d}");
    assert_eq!(u(&storm["failed"]), 0, "{d}");
    assert_eq!(u(&storm["close_errors"]), 0, "{d}");
    // One row per scenario.
    check_png(&png, 1400, 3 * 420);
}
