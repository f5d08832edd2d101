//! End-to-end against a tiny deliberately faulty WebSocket echo server (own
//! framer, tokio): it can drop every Nth message or flip a byte in every
//! Nth echo, per connection. The loadgen must report the damage in its JSON
//! and exit non-zero. With no fault it serves the plot, churn and scenario
//! file tests.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Default)]
struct Faults {
    /// Drop every Nth data message (0: never).
    drop_every: u64,
    /// Flip one byte in every Nth echo (0: never).
    corrupt_every: u64,
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Read the upgrade request and answer it; returns bytes read past it.
async fn handshake(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let key = header("sec-websocket-key")?;
    let accept = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{GUID}").as_bytes()));
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = header("sec-websocket-protocol") {
        let first = p.split(',').next().unwrap_or("").trim().to_string();
        resp += &format!("Sec-WebSocket-Protocol: {first}\r\n");
    }
    resp += "\r\n";
    s.write_all(resp.as_bytes()).await.ok()?;
    Some(buf[end..].to_vec())
}

/// Unmasked server frame.
fn put_frame(out: &mut Vec<u8>, opcode: u8, p: &[u8]) {
    out.push(0x80 | opcode);
    match p.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(p);
}

/// One complete client frame at the start of `b`: (opcode, payload, length).
fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        m
    } else {
        [0; 4]
    };
    let mut p = b.get(at..at + len)?.to_vec();
    for (i, x) in p.iter_mut().enumerate() {
        *x ^= mask[i % 4];
    }
    Some((opcode, p, at + len))
}

async fn serve(mut s: TcpStream, f: Faults) {
    let Some(mut buf) = handshake(&mut s).await else {
        return;
    };
    let mut n: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut out = Vec::new();
        let mut used = 0;
        let mut closing = false;
        while let Some((op, mut p, len)) = parse_frame(&buf[used..]) {
            used += len;
            match op {
                1 | 2 => {
                    n += 1;
                    if f.drop_every > 0 && n.is_multiple_of(f.drop_every) {
                        continue;
                    }
                    if f.corrupt_every > 0
                        && n.is_multiple_of(f.corrupt_every)
                        && let Some(last) = p.last_mut()
                    {
                        *last ^= 0x01;
                    }
                    put_frame(&mut out, op, &p);
                }
                9 => put_frame(&mut out, 10, &p),
                8 => {
                    put_frame(&mut out, 8, &p);
                    closing = true;
                    break;
                }
                _ => {}
            }
        }
        buf.drain(..used);
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            return;
        }
        if closing {
            let _ = s.shutdown().await;
            return;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Start the server on a background thread; returns its address.
fn server(f: Faults) -> SocketAddr {
    raise_nofile();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(l).unwrap();
            loop {
                if let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve(s, f));
                }
            }
        });
    });
    addr
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-lossy-{}-{name}", std::process::id()))
}

/// Run the loadgen with `--quiet --json`; returns (exit code, JSON, output).
fn loadgen(args: &[&str], tag: &str) -> (i32, serde_json::Value, String) {
    let json = tmp(&format!("{tag}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_rtedge-loadgen"))
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json);
    let text = format!("{text}\nJSON (per-second series left out): {}", {
        let mut c = v.clone();
        if let Some(o) = c.as_object_mut() {
            o.remove("per_second");
            o.remove("latency_per_second");
        }
        c
    });
    (out.status.code().unwrap_or(-1), v, text)
}

/// The SVG is complete, well nested at the top level and has drawn lines
/// and text.
fn check_svg(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let _ = std::fs::remove_file(path);
    assert!(s.len() > 1000, "svg too small: {s}");
    assert!(
        s.trim_start().starts_with("<svg"),
        "{}",
        &s[..100.min(s.len())]
    );
    assert!(s.trim_end().ends_with("</svg>"));
    assert!(s.contains("<polyline"), "no lines drawn");
    assert!(s.contains("<text"), "no text");
    assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
    s
}

fn msgs(v: &serde_json::Value, k: &str) -> u64 {
    v["messages"][k].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn dropped_messages_are_lost_and_fail_the_run() {
    let addr = server(Faults {
        drop_every: 100,
        ..Default::default()
    });
    let url = format!("ws://{addr}/");
    let (code, v, out) = loadgen(
        &[
            "ws-echo", "--url", &url, "-c", "4", "--window", "16", "--count", "4000", "--drain",
            "500ms",
        ],
        "drop",
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["ok"], false, "{out}");
    assert_eq!(msgs(&v, "sent"), 4000, "{out}");
    assert_eq!(msgs(&v, "lost"), 40, "{out}");
    assert_eq!(v["end_reason"], "count-stalled", "{out}");
    assert_eq!(msgs(&v, "received"), 3960, "{out}");
    assert_eq!(msgs(&v, "corrupted"), 0, "{out}");
    assert_eq!(msgs(&v, "reordered"), 0, "{out}");
    assert_eq!(msgs(&v, "duplicated"), 0, "{out}");
    assert!(out.contains("FAILED"), "{out}");
}

#[test]
fn corrupted_echoes_are_counted_and_fail_the_run() {
    let addr = server(Faults {
        corrupt_every: 50,
        ..Default::default()
    });
    let url = format!("ws://{addr}/");
    for mode in ["--binary", "--text"] {
        let (code, v, out) = loadgen(
            &[
                "ws-echo", "--url", &url, "-c", "4", "--window", "8", "--count", "4000", mode,
            ],
            "corrupt",
        );
        assert_eq!(code, 1, "{out}");
        assert_eq!(msgs(&v, "corrupted"), 80, "{mode}: {out}");
        assert_eq!(msgs(&v, "lost"), 0, "{mode}: {out}");
        assert_eq!(msgs(&v, "received"), 4000, "{mode}: {out}");
    }
}

#[test]
fn faultless_server_passes_and_plots() {
    let addr = server(Faults::default());
    let url = format!("ws://{addr}/");
    let svg = tmp("echo.svg");
    let (code, v, out) = loadgen(
        &[
            "ws-echo",
            "--url",
            &url,
            "-c",
            "2",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--plot",
            svg.to_str().unwrap(),
        ],
        "plot",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(msgs(&v, "lost"), 0);
    let per_s = v["latency_per_second"].as_array().unwrap();
    assert!(per_s.len() >= 2, "{per_s:?}");
    assert!(
        per_s
            .iter()
            .all(|s| s["p99"].as_u64().unwrap() >= s["p50"].as_u64().unwrap())
    );
    let s = check_svg(&svg);
    assert!(s.contains("round-trip latency") && s.contains("throughput"));

    // Any format but SVG and PNG is refused up front with a usage error
    // (before any traffic: a long run must not end in an unwritable plot).
    let (code, _, out) = loadgen(
        &["ws-echo", "--url", &url, "--count", "10", "--plot", "x.jpg"],
        "jpg",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(".svg or .png"), "{out}");
}

#[test]
fn handshake_storm() {
    let addr = server(Faults::default());
    let url = format!("ws://{addr}/");
    let svg = tmp("storm.svg");
    let (code, v, out) = loadgen(
        &[
            "ws-connect",
            "--url",
            &url,
            "-c",
            "5",
            "--churn",
            "100",
            "--churn-lifetime",
            "20ms",
            "--duration",
            "1500ms",
            "--threads",
            "2",
            "--plot",
            svg.to_str().unwrap(),
        ],
        "storm",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["connections"]["established"], 5, "{out}");
    assert_eq!(v["connections"]["survived"], 5, "{out}");
    let c = &v["churn"]["stats"];
    let est = c["established"].as_u64().unwrap();
    assert!((100..=200).contains(&est), "churn established {est}: {out}");
    assert_eq!(c["failed"], 0, "{out}");
    assert_eq!(c["close_errors"], 0, "{out}");
    // Every established one was closed, or cut short by the end of the run
    // (which may also cut attempts still connecting).
    let closed = c["closed"].as_u64().unwrap();
    assert!(
        closed <= est && closed + c["aborted"].as_u64().unwrap() >= est,
        "{out}"
    );
    assert!(out.contains("churn handshake µs"), "{out}");
    assert!(v["churn"]["handshake_us"]["p99"].as_u64().is_some());
    let s = check_svg(&svg);
    assert!(s.contains("handshake latency") && s.contains("open connections"));

    // Storm only: no held connections.
    let (code, v, out) = loadgen(
        &[
            "ws-connect",
            "--url",
            &url,
            "-c",
            "0",
            "--churn",
            "50",
            "--duration",
            "1s",
        ],
        "storm0",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        v["churn"]["stats"]["established"].as_u64().unwrap() >= 40,
        "{out}"
    );
}

#[test]
fn mixed_scenario_file() {
    let addr = server(Faults::default());
    let url = format!("ws://{addr}/");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mixed.toml");
    let svg = tmp("mixed.svg");
    let (code, v, out) = loadgen(
        &[
            "run",
            file,
            "--url",
            &url,
            "--set",
            "duration=2s",
            "--plot",
            svg.to_str().unwrap(),
        ],
        "mixed",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["scenario"], "mixed");
    assert_eq!(v["ok"], true, "{out}");
    let sc = v["scenarios"].as_array().unwrap();
    let by = |name: &str| sc.iter().find(|s| s["name"] == name).unwrap();
    assert_eq!(by("idle")["connections"]["survived"], 1000, "{out}");
    let echo = by("echo");
    assert_eq!(echo["messages"]["lost"], 0);
    assert!(
        echo["messages"]["received"].as_u64().unwrap() > 1000,
        "{out}"
    );
    let storm = by("storm");
    assert!(
        storm["churn"]["stats"]["established"].as_u64().unwrap() >= 200,
        "{out}"
    );
    assert_eq!(storm["churn"]["stats"]["failed"], 0);
    for name in ["idle", "echo", "storm"] {
        assert!(out.contains(&format!("== {name} ==")), "{out}");
    }
    check_svg(&svg);

    // A lossy server makes the combined exit status 1.
    let addr = server(Faults {
        drop_every: 100,
        ..Default::default()
    });
    let f = tmp("lossy.toml");
    std::fs::write(
        &f,
        "[[scenario]]\nkind = \"ws-echo\"\nconnections = 2\ncount = 1000\ndrain = \"300ms\"\n\
         [[scenario]]\nkind = \"ws-connect\"\nconnections = 10\nduration = \"500ms\"\n",
    )
    .unwrap();
    let url = format!("ws://{addr}/");
    let (code, v, out) = loadgen(&["run", f.to_str().unwrap(), "--url", &url], "mixedlossy");
    let _ = std::fs::remove_file(&f);
    assert_eq!(code, 1, "{out}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["scenarios"][0]["messages"]["lost"], 10, "{out}");
    assert_eq!(v["scenarios"][1]["ok"], true, "{out}");
}
