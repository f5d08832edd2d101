//! Harness of the management-service end-to-end tests: starts the real
//! `rtedge` binary with the management service enabled (and, for the
//! attach tests, `rtedge mgmt --attach`), learns every bound address from
//! the logs, and talks HTTP to it with reqwest (an independent client).
//! WebSocket clients and the raw client come from `tests/common`.
//!
//! Every wait is bounded; processes are killed on drop.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{IO_TIMEOUT, TempDir};

/// Bound on a process's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ processes

/// A child process whose stderr is collected line by line.
pub struct Proc {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns `rtedge ARGS…`.
    pub fn spawn(args: &[&str]) -> Proc {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let (child, log, rx) = crate::common::spawn_rtedge(&args);
        Proc {
            child: Some(child),
            log,
            lines: rx,
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Reads log lines (bounded) until `done` says so, giving each to `f`.
    fn read_until(&mut self, what: &str, mut f: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if f(&line) {
                        return;
                    }
                }
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!("{what} (exit: {status:?}); log:\n{}", self.log());
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `address=IP:PORT` in a log line.
fn address_in(line: &str) -> Option<SocketAddr> {
    let start = line.find("address=")? + "address=".len();
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

// ------------------------------------------------------------------ the server

/// Options of a test server.
pub struct Opts {
    pub workers: u32,
    pub token: Option<String>,
    pub mgmt_listen: String,
    pub mgmt_enabled: bool,
    /// Extra `[websocket]` lines.
    pub websocket: Vec<String>,
    /// `[auth] users_file`.
    pub users_file: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            workers: 2,
            token: None,
            mgmt_listen: "127.0.0.1:0".into(),
            mgmt_enabled: true,
            websocket: Vec::new(),
            users_file: None,
        }
    }
}

/// The running `rtedge run` with its management service.
pub struct MgmtServer {
    pub proc: Proc,
    /// The first WebSocket listener.
    pub ws: SocketAddr,
    /// The management service (None if disabled).
    pub mgmt: Option<SocketAddr>,
    pub region_path: PathBuf,
    pub config_path: PathBuf,
    pub dir: TempDir,
}

impl MgmtServer {
    pub fn start(opts: Opts) -> MgmtServer {
        let dir = TempDir::new("mgmt");
        let region_path = dir.path().join("stats.region");
        let config_path = dir.path().join("rtedge.toml");
        let mut text = format!(
            "workers = {}\n\n[[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:0\"\n\n\
             [websocket]\nsub_protocols = [\"echo\"]\n",
            opts.workers
        );
        for l in &opts.websocket {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[reactor]\npin_workers = false\n\n[mgmt]\nenabled = {}\nlisten = \"{}\"\n",
            opts.mgmt_enabled, opts.mgmt_listen
        ));
        if let Some(t) = &opts.token {
            text.push_str(&format!("token = \"{t}\"\n"));
        }
        if let Some(f) = &opts.users_file {
            text.push_str(&format!(
                "\n[auth]\nusers_file = {:?}\n",
                f.display().to_string()
            ));
        }
        text.push_str(&format!(
            "\n[region]\npath = {:?}\nslots_per_core = 4096\n\n[log]\nlevel = \"info\"\n",
            region_path.display().to_string()
        ));
        std::fs::write(&config_path, &text).expect("write config");
        let (proc, ws, mgmt) = Self::launch(&config_path, opts.mgmt_enabled);
        MgmtServer {
            proc,
            ws,
            mgmt,
            region_path,
            config_path,
            dir,
        }
    }

    fn launch(config_path: &Path, mgmt_enabled: bool) -> (Proc, SocketAddr, Option<SocketAddr>) {
        let mut proc = Proc::spawn(&["run", "--config", &config_path.display().to_string()]);
        let mut ws = None;
        let mut mgmt = None;
        proc.read_until("rtedge did not start", |line| {
            if line.contains("management listening") {
                mgmt = address_in(line);
            } else if line.contains("listening") && ws.is_none() {
                ws = address_in(line);
            }
            line.contains("rtedge running")
        });
        let ws = ws.unwrap_or_else(|| panic!("no listening line:\n{}", proc.log()));
        if mgmt_enabled {
            assert!(mgmt.is_some(), "no management line:\n{}", proc.log());
        }
        (proc, ws, mgmt)
    }

    /// Kills the data plane (SIGKILL) and starts it again with the same
    /// configuration (so the same region path; new ports).
    pub fn restart(&mut self) {
        self.proc.kill();
        let enabled = self.mgmt.is_some();
        let (proc, ws, mgmt) = Self::launch(&self.config_path, enabled);
        self.proc = proc;
        self.ws = ws;
        self.mgmt = mgmt;
    }

    /// A client of the in-process management service.
    pub fn http(&self) -> Http {
        Http::new(self.mgmt.expect("management enabled"), None)
    }
}

/// `rtedge mgmt --attach REGION --listen 127.0.0.1:0 [ARGS…]`.
pub struct Attached {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Attached {
    pub fn start(region: &Path, extra: &[&str]) -> Attached {
        let region = region.display().to_string();
        let mut args = vec!["mgmt", "--attach", &region, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args);
        let mut addr = None;
        proc.read_until("rtedge mgmt did not start", |line| {
            if line.contains("management listening") {
                addr = address_in(line);
                return true;
            }
            false
        });
        Attached {
            addr: addr.expect("address"),
            proc,
        }
    }

    pub fn http(&self) -> Http {
        Http::new(self.addr, None)
    }
}

/// Runs `rtedge ARGS…` to completion (bounded); returns (exit code, stderr).
pub fn rtedge_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut p = Proc::spawn(args);
    let st = p.wait_exit();
    (st.code(), p.log())
}

// ------------------------------------------------------------------ HTTP

/// A response: status, content type, body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// Asserts a JSON error answer with this status whose message contains
    /// `needle`.
    pub fn expect_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "error is not JSON: {self:?}"
        );
        let v = self.json();
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert_eq!(v["status"], status);
    }
}

/// A reqwest client bound to one base address, with an optional token.
#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
    pub token: Option<String>,
}

impl Http {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Http {
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(IO_TIMEOUT)
                .no_proxy()
                .build()
                .expect("reqwest client"),
            token: token.map(str::to_string),
        }
    }

    pub fn with_token(&self, token: Option<&str>) -> Http {
        Http {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("HTTP body");
        Resp {
            status,
            content_type,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// GET expecting 200 JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    pub async fn post(&self, path: &str, body: &str) -> Resp {
        self.send(
            self.request(reqwest::Method::POST, path)
                .body(body.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `POST /RPC` with a JSON body.
    pub async fn rpc(&self, body: &Value) -> Resp {
        self.send(
            self.request(reqwest::Method::POST, "/RPC")
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn metrics(&self) -> Metrics {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "{}", r.body);
        Metrics::parse(&r.body)
    }

    /// Polls `/readyz` until 200 (bounded).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let r = self.get("/readyz").await;
            if r.status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the dump until `pred` holds for it (bounded); returns it.
    pub async fn wait_dump(&self, query: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let v = self.get_json(&format!("/api/ws/connections{query}")).await;
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The dump entry whose peer is `peer` (bounded wait until it is open).
    pub async fn conn_of(&self, peer: SocketAddr) -> Value {
        let p = peer.to_string();
        let v = self
            .wait_dump(
                "?limit=1000",
                &format!("no open connection from {p}"),
                |v| {
                    v["connections"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|c| c["peer"] == p && c["state"] == "open"))
                },
            )
            .await;
        v["connections"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["peer"] == p).cloned())
            .expect("entry")
    }
}

// ------------------------------------------------------------------ exposition

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Labels as written (`a="x",b="y"`), without braces.
    pub labels: String,
    pub value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: family name → type.
    pub types: Vec<(String, String)>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.push((n.to_string(), t.to_string()));
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.find('{') {
                Some(i) => (
                    &series[..i],
                    series[i + 1..].trim_end_matches('}').to_string(),
                ),
                None => (series, String::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Metrics {
            samples,
            types,
            text: text.to_string(),
        }
    }

    /// The value of `name` with exactly `labels` (`""` for none).
    pub fn get(&self, name: &str, labels: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == labels)
            .map(|s| s.value)
    }

    /// Like `get`, panicking with the exposition if absent.
    pub fn value(&self, name: &str, labels: &str) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{}", self.text))
    }

    /// Sum of every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Whether any series is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The type of family `name`.
    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

// ------------------------------------------------------------------ server-sent events

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A reader of `/api/events`.
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    /// Opens the stream (the server fixes its starting point before the
    /// headers are sent, so events after this returns are seen).
    pub async fn open(http: &Http, query: &str) -> EventStream {
        let resp = http
            .client
            .get(format!("{}/api/events{query}", http.base))
            .send()
            .await
            .expect("open event stream");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            resp.headers()
        );
        EventStream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), bounded.
    pub async fn next(&mut self) -> Sse {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Sse { event, id, data };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("timed out waiting for an event")
                .expect("event stream error")
                .expect("event stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event matching `pred`, skipping others (bounded).
    pub async fn next_where(&mut self, what: &str, pred: impl Fn(&Sse) -> bool) -> Sse {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no event: {what}");
            let e = self.next().await;
            if pred(&e) {
                return e;
            }
        }
    }
}
