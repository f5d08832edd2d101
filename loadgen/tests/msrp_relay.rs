//! `msrp-relay` against the real rtedge relay: one rtedge process with an
//! MSRP (TCP) listener and a WebSocket listener (sub-protocol `msrp`) and a
//! users file; the scenario runs over each for a short bounded time and
//! must deliver every message intact (no timing thresholds: the machine
//! may be busy).
//!
//! The rtedge binary is the workspace's own: `RTEDGE_BIN` if set, else
//! `rtedge` in this test's target directory and profile when it is newer
//! than its sources (as under `cargo test --workspace`), else it is built
//! there with `cargo build -p rtedge`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// Bound on starting rtedge and on each loadgen run.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory of the running profile (`target/debug`): this test
/// executable lives in its `deps` folder.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Newest modification time of the files rtedge is built from.
fn newest_source(workspace: &Path) -> Option<SystemTime> {
    fn walk(p: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(t) = meta.modified() {
            *newest = (*newest).max(Some(t));
        }
    }
    let mut newest = None;
    for rel in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "dataplane/src",
        "dataplane/Cargo.toml",
        "mgmt/src",
        "mgmt/Cargo.toml",
    ] {
        walk(&workspace.join(rel), &mut newest);
    }
    newest
}

fn rtedge_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RTEDGE_BIN") {
        return PathBuf::from(p);
    }
    let dir = profile_dir();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    // Under `cargo test --workspace` the binary was just built (rtedge's own
    // tests need it): use it as long as no source is newer. A separate
    // `cargo build -p rtedge` would unify features differently and rebuild
    // the dependencies.
    let bin = dir.join("rtedge");
    if let (Ok(built), Some(src)) = (
        std::fs::metadata(&bin).and_then(|m| m.modified()),
        newest_source(workspace),
    ) && built >= src
    {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "rtedge", "--bin", "rtedge"])
        // The target dir of this build (CARGO_TARGET_DIR or target/).
        .env("CARGO_TARGET_DIR", dir.parent().expect("target dir"));
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p rtedge");
    assert!(status.success(), "cargo build -p rtedge failed");
    let bin = dir.join("rtedge");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// A running rtedge relay, killed on drop.
struct Relay {
    child: Child,
    dir: PathBuf,
    msrp: SocketAddr,
    ws: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const USER: &str = "loadgen";
const PASSWORD: &str = "s3cret";

fn start_relay() -> Relay {
    // Several relays per test (the two-relay chain): a counter keeps their
    // directories apart.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "loadgen-msrp-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
    )
    .expect("users file");
    let cfg = dir.join("rtedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 2\n\n\
             [[listen]]\ntransport = \"msrp\"\naddress = \"127.0.0.1:0\"\n\n\
             [[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:0\"\n\n\
             [websocket]\nsub_protocols = [\"msrp\"]\n\n\
             [auth]\nrealm = \"loadgen.test\"\nusers_file = {:?}\n\n\
             [reactor]\npin_workers = false\n\n\
             [mgmt]\nenabled = false\n\n\
             [region]\npath = {:?}\n\n\
             [log]\nlevel = \"info\"\n",
            users.display().to_string(),
            dir.join("stats.region").display().to_string()
        ),
    )
    .expect("config");
    let mut child = Command::new(rtedge_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rtedge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Keep draining so the pipe never fills.
                continue;
            }
        }
    });
    let mut msrp = None;
    let mut ws = None;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut log = String::new();
    while msrp.is_none() || ws.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("rtedge did not start ({e}); log:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        if !line.contains("listening") || line.contains("management") {
            continue;
        }
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok());
        if line.contains("transport=\"msrp\"") || line.contains("transport=msrp") {
            msrp = addr;
        } else if line.contains("transport=\"ws\"") || line.contains("transport=ws") {
            ws = addr;
        }
    }
    Relay {
        child,
        dir,
        msrp: msrp.expect("msrp address"),
        ws: ws.expect("ws address"),
    }
}

/// Run the loadgen (bounded); exit status, JSON result and output.
fn loadgen(args: &[&str]) -> (i32, serde_json::Value, String) {
    let json = std::env::temp_dir().join(format!(
        "loadgen-msrp-test-{}-{}.json",
        std::process::id(),
        args.join("_").replace(['/', ':', '.'], "")
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtedge-loadgen"))
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("loadgen did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json);
    (status.code().unwrap_or(-1), v, text)
}

fn assert_clean(code: i32, v: &serde_json::Value, out: &str) {
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["scenario"], "msrp-relay", "{out}");
    assert_eq!(v["ok"], true, "{out}");
    let m = &v["messages"];
    for k in [
        "lost",
        "corrupted",
        "duplicated",
        "reordered",
        "relay_errors",
        "relay_ok_missing",
        "reports",
        "unexpected",
        "connections_failed",
    ] {
        assert_eq!(m[k], 0, "{k}: {out}");
    }
    let received = m["received"].as_u64().expect("received");
    assert!(received > 0, "{out}");
    assert_eq!(m["sent"].as_u64(), Some(received), "{out}");
    // Failure-Report yes: the relay answered every SEND, the receiver
    // answered every delivery.
    assert_eq!(m["relay_ok"].as_u64(), Some(received), "{out}");
    assert_eq!(m["receiver_ok"].as_u64(), Some(received), "{out}");
    // Every client was challenged once (digest AUTH).
    assert_eq!(m["auth_challenges"], m["connections_established"], "{out}");
    assert!(
        v["throughput"]["msg_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{out}"
    );
    assert!(v["latency_us"]["p99"].as_u64().is_some(), "{out}");
}

fn common<'a>(url: &'a str, size: &'a str) -> Vec<&'a str> {
    vec![
        "msrp-relay",
        "--url",
        url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--pairs",
        "3",
        "--size",
        size,
        "--window",
        "16",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]
}

#[test]
fn msrp_relay_over_tcp_and_websocket() {
    let relay = start_relay();
    let tcp = format!("msrp://{}", relay.msrp);
    let ws = format!("ws://{}/", relay.ws);
    for (url, size) in [(&tcp, "100"), (&tcp, "4096"), (&ws, "100"), (&ws, "4096")] {
        let (code, v, out) = loadgen(&common(url, size));
        assert_clean(code, &v, &out);
        assert_eq!(v["connections"]["established"], 6, "{out}");
    }
    // The RFC 4976 two-relay To-Path (the sender's own Use-Path first)
    // hairpins through the same relay.
    let mut args = common(&tcp, "100");
    args.push("--full-path");
    let (code, v, out) = loadgen(&args);
    assert_clean(code, &v, &out);
}

#[test]
fn wrong_password_fails_the_connections() {
    let relay = start_relay();
    let url = format!("msrp://{}", relay.msrp);
    let (code, v, out) = loadgen(&[
        "msrp-relay",
        "--url",
        &url,
        "--user",
        USER,
        "--password",
        "wrong",
        "--pairs",
        "1",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["ok"], false, "{out}");
    assert_eq!(v["connections"]["failed"], 2, "{out}");
    let auth = &v["errors"]["auth"];
    assert_eq!(auth["count"], 1, "{out}");
    assert!(
        auth["example"].as_str().unwrap_or("").contains("403"),
        "{out}"
    );
}

/// Open loop (`--rate`): SENDs go out on schedule, not as fast as the relay
/// answers. Only loose bounds on the count (the machine is shared): at
/// least half of rate × run time, and well below what a closed loop with
/// the default 65536 cap would push through.
#[test]
fn msrp_relay_open_loop_rate() {
    let relay = start_relay();
    let url = format!("msrp://{}", relay.msrp);
    let (code, v, out) = loadgen(&[
        "msrp-relay",
        "--url",
        &url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--pairs",
        "4",
        "--size",
        "100",
        "--rate",
        "2000",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
    ]);
    assert_clean(code, &v, &out);
    assert_eq!(v["config"]["rate"], 2000.0, "{out}");
    assert_eq!(v["config"]["window"], 65536, "{out}");
    // `sent` covers warm-up and measured window (2.2 s of schedule).
    let sent = v["messages"]["sent"].as_u64().expect("sent");
    assert!(sent >= 2000, "sent {sent} < 50% of 2000/s × 2 s: {out}");
    assert!(
        sent <= 2000 * 22 / 10 * 2,
        "sent {sent}: not rate-limited: {out}"
    );
}

/// `--receiver-url`: senders AUTH to one rtedge, receivers to another; every
/// SEND crosses both (sender → relay1 → relay2 → receiver: relay1 opens a
/// connection to relay2, the next To-Path hop).
#[test]
fn msrp_relay_two_relay_chain() {
    let relay1 = start_relay();
    let relay2 = start_relay();
    let url1 = format!("msrp://{}", relay1.msrp);
    let url2 = format!("msrp://{}", relay2.msrp);
    let mut args = common(&url1, "100");
    args.extend(["--receiver-url", &url2]);
    let (code, v, out) = loadgen(&args);
    assert_clean(code, &v, &out);
    assert_eq!(v["connections"]["established"], 6, "{out}");
    assert_eq!(v["config"]["full_path"], true, "{out}");
    assert_eq!(
        v["config"]["receiver_relay_uri"],
        format!("msrp://{};tcp", relay2.msrp),
        "{out}"
    );
}
