//! Shared harness of the end-to-end tests: starts the real `rtedge` binary
//! with a generated configuration in a private temporary directory, finds
//! the ports it listens on from its log, attaches to its stats region, and
//! offers WebSocket clients (tokio-tungstenite) and a raw client that writes
//! hand-built frames and reads frames byte-exactly.
//!
//! Every wait is bounded; the process is killed (SIGKILL) on drop unless the
//! test stopped it itself, and its temporary directory is removed.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod msrp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use dataplane::region::{Counter, Region};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Bound on any single network operation of a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the server's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The RFC 6455 §1.3 example key and its accept value.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ------------------------------------------------------------------ temp dir

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "rtedge-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------------ config

/// A generated self-signed certificate for `localhost` / 127.0.0.1.
pub struct TestCert {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn generate(dir: &Path) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("rcgen self-signed certificate");
        let cert_pem = dir.join("cert.pem");
        let key_pem = dir.join("key.pem");
        std::fs::write(&cert_pem, ck.cert.pem()).expect("write cert");
        std::fs::write(&key_pem, ck.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_pem,
            key_pem,
            der: ck.cert.der().to_vec(),
        }
    }
}

/// The users file a [`ServerConfig`] in `dir` writes (`[auth] users_file`).
pub fn users_file(dir: &Path) -> PathBuf {
    dir.join("users.toml")
}

/// Writes a users file of `(name, password)` entries (the format of
/// `[auth] users_file`).
pub fn write_users(file: &Path, users: &[(&str, &str)]) {
    let mut text = String::new();
    for (name, pw) in users {
        text.push_str(&format!(
            "[[user]]\nname = \"{name}\"\npassword = \"{pw}\"\n"
        ));
    }
    std::fs::write(file, text).expect("write users file");
}

/// Builder of a test configuration. Defaults: 2 workers, workers not pinned,
/// one `ws` listener on an ephemeral loopback port, sub-protocol `echo`,
/// management off, a region file in the test's own directory.
pub struct ServerConfig {
    pub dir: TempDir,
    workers: u32,
    listeners: Vec<String>,
    sub_protocols: Vec<String>,
    websocket: Vec<String>,
    auth: Vec<String>,
    reactor: Vec<String>,
    msrp: Vec<String>,
    /// Run the in-process management service on an ephemeral port.
    mgmt: bool,
    pub cert: Option<TestCert>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerConfig {
    pub fn new() -> ServerConfig {
        ServerConfig {
            dir: TempDir::new("srv"),
            workers: 2,
            listeners: Vec::new(),
            sub_protocols: vec!["echo".into()],
            websocket: Vec::new(),
            auth: Vec::new(),
            reactor: vec!["pin_workers = false".into()],
            msrp: Vec::new(),
            mgmt: false,
            cert: None,
        }
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// Adds a plain `ws` listener on `address`.
    pub fn listen_ws_at(mut self, address: &str) -> Self {
        self.listeners.push(format!(
            "[[listen]]\ntransport = \"ws\"\naddress = \"{address}\"\n"
        ));
        self
    }

    pub fn listen_ws(self) -> Self {
        self.listen_ws_at("127.0.0.1:0")
    }

    /// Adds a `wss` listener with a freshly generated certificate.
    pub fn listen_wss(mut self) -> Self {
        if self.cert.is_none() {
            self.cert = Some(TestCert::generate(self.dir.path()));
        }
        let c = self.cert.as_ref().expect("cert");
        self.listeners.push(format!(
            "[[listen]]\ntransport = \"wss\"\naddress = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            c.cert_pem.display().to_string(),
            c.key_pem.display().to_string()
        ));
        self
    }

    pub fn sub_protocols(mut self, list: &[&str]) -> Self {
        self.sub_protocols = list.iter().map(|s| s.to_string()).collect();
        self
    }

    /// A raw `key = value` line of `[websocket]`.
    pub fn ws(mut self, line: &str) -> Self {
        self.websocket.push(line.to_string());
        self
    }

    /// A raw `key = value` line of `[reactor]`.
    pub fn reactor(mut self, line: &str) -> Self {
        self.reactor.push(line.to_string());
        self
    }

    /// Requires HTTP auth on the handshake against a users file with `users`
    /// (`(name, password)`), in `realm`.
    pub fn auth(mut self, realm: &str, users: &[(&str, &str)]) -> Self {
        self = self.msrp_users(realm, users);
        self.websocket.push("require_auth = true".into());
        self
    }

    /// Adds a plain `msrp` (TCP) listener on an ephemeral loopback port.
    pub fn listen_msrp(mut self) -> Self {
        self.listeners
            .push("[[listen]]\ntransport = \"msrp\"\naddress = \"127.0.0.1:0\"\n".into());
        self
    }

    /// Adds an `msrps` (TLS) listener with the test certificate.
    pub fn listen_msrps(self) -> Self {
        self.listen_msrps_at("127.0.0.1:0")
    }

    /// Adds an `msrps` listener on `address`.
    pub fn listen_msrps_at(mut self, address: &str) -> Self {
        if self.cert.is_none() {
            self.cert = Some(TestCert::generate(self.dir.path()));
        }
        let c = self.cert.as_ref().expect("cert");
        self.listeners.push(format!(
            "[[listen]]\ntransport = \"msrps\"\naddress = {address:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            c.cert_pem.display().to_string(),
            c.key_pem.display().to_string()
        ));
        self
    }

    /// A users file with `users` in `realm` for MSRP AUTH (the WebSocket
    /// handshake stays open).
    pub fn msrp_users(mut self, realm: &str, users: &[(&str, &str)]) -> Self {
        let file = users_file(self.dir.path());
        write_users(&file, users);
        self.auth = vec![
            format!("realm = \"{realm}\""),
            format!("users_file = {:?}", file.display().to_string()),
        ];
        self
    }

    /// Enables the management service (127.0.0.1, ephemeral port; see
    /// [`Server::mgmt`]).
    pub fn with_mgmt(mut self) -> Self {
        self.mgmt = true;
        self
    }

    /// A raw `key = value` line of `[msrp]`.
    pub fn msrp(mut self, line: &str) -> Self {
        self.msrp.push(line.to_string());
        self
    }

    pub fn region_path(&self) -> PathBuf {
        self.dir.path().join("stats.region")
    }

    /// The TOML document.
    pub fn render(&self) -> String {
        let mut s = format!("workers = {}\n\n", self.workers);
        if self.listeners.is_empty() {
            s.push_str("[[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:0\"\n");
        }
        for l in &self.listeners {
            s.push_str(l);
            s.push('\n');
        }
        let protos: Vec<String> = self
            .sub_protocols
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        s.push_str(&format!(
            "[websocket]\nsub_protocols = [{}]\n",
            protos.join(", ")
        ));
        for l in &self.websocket {
            s.push_str(l);
            s.push('\n');
        }
        if !self.auth.is_empty() {
            s.push_str("\n[auth]\n");
            for l in &self.auth {
                s.push_str(l);
                s.push('\n');
            }
        }
        if !self.msrp.is_empty() {
            s.push_str("\n[msrp]\n");
            for l in &self.msrp {
                s.push_str(l);
                s.push('\n');
            }
        }
        s.push_str("\n[reactor]\n");
        for l in &self.reactor {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!(
            "\n[mgmt]\nenabled = {}\nlisten = \"127.0.0.1:0\"\n\n[region]\npath = {:?}\nslots_per_core = 4096\n\n[log]\nlevel = \"info\"\n",
            self.mgmt,
            self.region_path().display().to_string()
        ));
        s
    }

    pub fn start(self) -> Server {
        Server::start(self)
    }
}

// ------------------------------------------------------------------ server

/// The running `rtedge` process.
pub struct Server {
    child: Option<Child>,
    /// Listening addresses, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub config: ServerConfig,
    /// The management service, when enabled.
    pub mgmt: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    region: OnceLock<Region>,
}

/// Spawns `rtedge run --config FILE` (see [`spawn_rtedge`]).
fn spawn(config_file: &Path) -> (Child, Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let file = config_file.as_os_str();
    spawn_rtedge(&[
        std::ffi::OsStr::new("run"),
        std::ffi::OsStr::new("--config"),
        file,
    ])
}

/// Spawns `rtedge ARGS…` with stderr piped into a reader thread that keeps
/// every line (so the pipe never fills) and forwards them.
pub fn spawn_rtedge(
    args: &[&std::ffi::OsStr],
) -> (Child, Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtedge"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // If the test process dies without running destructors, the server
    // follows it instead of lingering.
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
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    (child, log, rx)
}

/// Parses `address=IP:PORT` out of a `listening` log line.
fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let start = line.find("address=")? + "address=".len();
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

impl Server {
    pub fn start(config: ServerConfig) -> Server {
        let file = config.dir.path().join("rtedge.toml");
        std::fs::write(&file, config.render()).expect("write config");
        let (child, log, rx) = spawn(&file);
        let mut server = Server {
            child: Some(child),
            addrs: Vec::new(),
            config,
            mgmt: None,
            log,
            region: OnceLock::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("management listening") {
                        server.mgmt = parse_listen_line(&line);
                    } else if let Some(a) = parse_listen_line(&line) {
                        server.addrs.push(a);
                    } else if line.contains("rtedge running") {
                        break;
                    }
                }
                Err(e) => {
                    // Disconnected: stderr closed, the process is exiting.
                    let mut status = None;
                    for _ in 0..100 {
                        status = server
                            .child
                            .as_mut()
                            .and_then(|c| c.try_wait().ok().flatten());
                        if status.is_some() || e == mpsc::RecvTimeoutError::Timeout {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    panic!(
                        "rtedge did not start (exit: {status:?}); config:\n{}\nlog:\n{}",
                        server.config.render(),
                        server.log()
                    );
                }
            }
        }
        assert!(
            !server.addrs.is_empty(),
            "no listening line:\n{}",
            server.log()
        );
        server
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The stats region, attached once.
    pub fn region(&self) -> &Region {
        self.region.get_or_init(|| {
            Region::attach(&self.config.region_path()).expect("attach the stats region")
        })
    }

    /// The info line of every connection slot in use (what the management
    /// API's connection dump shows: an MSRP connection's role, user and
    /// session).
    pub fn connection_infos(&self) -> Vec<String> {
        self.region()
            .connections()
            .iter()
            .map(|c| c.info.as_str().to_string())
            .collect()
    }

    /// A counter summed over cores.
    pub fn counter(&self, c: Counter) -> u64 {
        self.region().snapshot_counters().get(c)
    }

    /// Waits (bounded) until `c` reaches at least `at_least`; returns it.
    pub async fn wait_counter(&self, c: Counter, at_least: u64) -> u64 {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let v = self.counter(c);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "counter {c:?} stayed at {v}, expected ≥ {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gauge summed over cores.
    pub fn gauge(&self, c: Counter) -> i64 {
        self.region().snapshot_counters().gauge(c)
    }

    /// Waits (bounded) until gauge `c` equals `value`.
    pub async fn wait_gauge(&self, c: Counter, value: i64) {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let v = self.gauge(c);
            if v == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gauge {c:?} stayed at {v}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Waits (bounded by `limit`) for the process to exit; `None` if it did
    /// not. The process is no longer killed on drop once it has exited.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `rtedge run` on a config and waits for it to exit (for start-up
/// failures). Returns the exit status and the log.
pub fn run_to_exit(config: &ServerConfig, limit: Duration) -> (Option<ExitStatus>, String) {
    let file = config.dir.path().join("rtedge.toml");
    std::fs::write(&file, config.render()).expect("write config");
    let (mut child, log, _rx) = spawn(&file);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread gets EOF once the process is gone.
    std::thread::sleep(Duration::from_millis(100));
    let text = log.lock().map(|l| l.clone()).unwrap_or_default();
    (status, text)
}

// ------------------------------------------------------------------ helpers

/// A loopback TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// `tool` on PATH or in the sbin folders where Debian puts daemons (off a
/// non-root PATH), or None: the test then skips. Under CI (`CI=true`) a
/// missing tool fails the test instead: `.ci/run` must install the Debian
/// `packages` that have it.
pub fn required_tool(tool: &str, packages: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{tool}` is not installed but CI=true: .ci/run must install the Debian \
             packages `{packages}` (apt-get install -y --no-install-recommends {packages})"
        );
        eprintln!(
            "SKIPPED: `{tool}` is not installed (apt-get install {packages} to run this test)"
        );
    }
    found
}

/// `timeout(IO_TIMEOUT, f)`, panicking with `what` when it expires.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Bounded TCP connect to a test server.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = within("tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Closes `s` with a TCP reset (SO_LINGER with a zero timeout).
pub fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a properly sized `linger`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// Small deterministic PRNG (xorshift) for masks and payloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ------------------------------------------------------------------ tungstenite

pub type Ws<S> = WebSocketStream<S>;

/// WebSocket client handshake with tokio-tungstenite over `stream`,
/// offering `protocol`.
pub async fn ws_client_over<S>(stream: S, url: &str, protocol: Option<&str>) -> Ws<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = url.into_client_request().expect("request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
    }
    let (ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("websocket handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// A tokio-tungstenite client on `addr` with the `echo` sub-protocol.
pub async fn ws_echo_client(addr: SocketAddr) -> Ws<TcpStream> {
    let s = tcp(addr).await;
    ws_client_over(s, &format!("ws://{addr}/"), Some("echo")).await
}

/// Next data or control message (bounded).
pub async fn ws_next<S>(ws: &mut Ws<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("websocket message", ws.next())
        .await
        .expect("stream ended")
        .expect("websocket error")
}

/// Sends `m` and expects the same message echoed (skipping pings/pongs).
pub async fn ws_echo<S>(ws: &mut Ws<S>, m: Message)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    within("send", ws.send(m.clone())).await.expect("send");
    loop {
        let got = ws_next(ws).await;
        match got {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => {
                assert_eq!(other, m, "echo differs");
                return;
            }
        }
    }
}

// ------------------------------------------------------------------ raw client

/// RFC 6455 opcodes.
pub mod op {
    pub const CONT: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A masked client frame with explicit header bits (`b0` is FIN|RSV|opcode),
/// minimal length encoding.
pub fn frame_b0(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = vec![b0];
    let len = payload.len();
    if len < 126 {
        v.push(0x80 | len as u8);
    } else if len <= 0xffff {
        v.push(0x80 | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_b0(u8::from(fin) << 7 | opcode, payload, MASK)
}

/// A masked Close frame with a status code and reason bytes.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    frame(true, op::CLOSE, &p)
}

/// An unmasked frame as the server must send it (minimal length).
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        v.push(len as u8);
    } else if len <= 0xffff {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A handshake request: `GET path`, the standard headers for `addr` with
/// `overrides` applied (`None` removes a header; unknown names are added).
pub fn request(
    method: &str,
    path: &str,
    addr: SocketAddr,
    overrides: &[(&str, Option<&str>)],
) -> String {
    let host = addr.to_string();
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), host),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), SAMPLE_KEY.into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
        ("Sec-WebSocket-Protocol".into(), "echo".into()),
    ];
    for (name, value) in overrides {
        let pos = headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name));
        match (pos, value) {
            (Some(i), Some(v)) => headers[i].1 = v.to_string(),
            (Some(i), None) => {
                headers.remove(i);
            }
            (None, Some(v)) => headers.push((name.to_string(), v.to_string())),
            (None, None) => {}
        }
    }
    let mut s = format!("{method} {path} HTTP/1.1\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Status code of a Close frame (`None` when empty).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, op::CLOSE, "not a Close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or(&[])).into_owned()
    }
}

/// A client that writes raw bytes and reads HTTP and frames byte-exactly.
/// Every frame read is checked to be a valid server frame: unmasked, RSV
/// clear, minimal length encoding, control frames ≤ 125 bytes and final.
pub struct Raw<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl Raw<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Raw<TcpStream> {
        Raw::new(tcp(addr).await)
    }

    /// Connects and completes a handshake for `echo`.
    pub async fn echo(addr: SocketAddr) -> Raw<TcpStream> {
        let mut r = Raw::connect(addr).await;
        r.handshake(addr, "echo").await;
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(io: S) -> Raw<S> {
        Raw {
            io,
            buf: Vec::new(),
        }
    }

    /// Sends a standard handshake for `protocol` and expects 101 with the
    /// right accept key and that sub-protocol.
    pub async fn handshake(&mut self, addr: SocketAddr, protocol: &str) -> HttpResponse {
        let req = request(
            "GET",
            "/",
            addr,
            &[("Sec-WebSocket-Protocol", Some(protocol))],
        );
        self.send(req.as_bytes()).await;
        let resp = self.read_response().await;
        assert_eq!(resp.status, 101, "{resp:?}");
        assert_eq!(resp.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
        assert_eq!(resp.header("Sec-WebSocket-Protocol"), Some(protocol));
        resp
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .expect("write");
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn fill_or_panic(&mut self, what: &str) {
        let n = within(what, self.fill())
            .await
            .unwrap_or_else(|e| panic!("{what}: read error {e}"));
        assert!(n > 0, "{what}: connection closed; buffered {:?}", self.buf);
    }

    /// Reads one HTTP response head (and its Content-Length body).
    pub async fn read_response(&mut self) -> HttpResponse {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill_or_panic("HTTP response head").await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        self.buf.drain(..head_end);
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < len {
            self.fill_or_panic("HTTP response body").await;
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// Reads exactly `n` raw bytes.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill_or_panic("raw bytes").await;
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one frame; `Ok(None)` on a clean EOF before any byte of it.
    pub async fn try_read_frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match parse_server_frame(&self.buf)? {
                Some((f, n)) => {
                    self.buf.drain(..n);
                    return Ok(Some(f));
                }
                None => match within("frame", self.fill()).await {
                    Ok(0) if self.buf.is_empty() => return Ok(None),
                    Ok(0) => return Err(format!("EOF inside a frame: {:?}", self.buf)),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read error: {e}")),
                },
            }
        }
    }

    /// Reads one frame; panics on EOF, errors and invalid server frames.
    pub async fn read_frame(&mut self) -> Frame {
        match self.try_read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("connection closed while a frame was expected"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Expects the next frame to be Close with `code`, then the server to
    /// close TCP. Returns the Close frame.
    pub async fn expect_close(&mut self, code: u16) -> Frame {
        let f = self.read_frame().await;
        assert_eq!(f.opcode, op::CLOSE, "expected Close {code}, got {f:?}");
        assert_eq!(
            f.close_code(),
            Some(code),
            "close frame {f:?} ({})",
            f.close_reason()
        );
        self.expect_eof().await;
        f
    }

    /// Expects the server to close the connection: nothing more than EOF (or
    /// a reset) arrives.
    pub async fn expect_eof(&mut self) {
        loop {
            if !self.buf.is_empty() {
                panic!(
                    "expected EOF, got more bytes: {:?}",
                    &self.buf[..self.buf.len().min(64)]
                );
            }
            match within("EOF from server", self.fill()).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read error while waiting for EOF: {e}"),
            }
        }
    }

    /// Waits for the server to close the connection, discarding anything it
    /// sends first (returned).
    pub async fn wait_closed(&mut self) -> Vec<u8> {
        loop {
            match within("server closes the connection", self.fill()).await {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(_) => return std::mem::take(&mut self.buf),
            }
        }
    }

    /// Sends `m` as one masked frame and expects it echoed unchanged.
    pub async fn echo_roundtrip(&mut self, opcode: u8, payload: &[u8]) {
        self.send(&frame(true, opcode, payload)).await;
        let f = self.read_frame().await;
        assert_eq!((f.opcode, f.fin), (opcode, true));
        assert!(
            f.payload == payload,
            "echo of {} bytes differs",
            payload.len()
        );
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one server frame from `buf`, validating what RFC 6455 requires of
/// a server's frames. `Ok(None)`: incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(format!("server frame with RSV bits: {b0:#04x}"));
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(format!("server frame with reserved opcode {opcode}"));
    }
    if b1 & 0x80 != 0 {
        return Err("server frame is masked (RFC 6455 §5.1)".into());
    }
    let (len, hlen) = match b1 & 0x7f {
        126 => {
            let Some(ext) = rest.get(..2) else {
                return Ok(None);
            };
            let n = u16::from_be_bytes([ext[0], ext[1]]) as u64;
            if n < 126 {
                return Err(format!("non-minimal 16-bit length {n}"));
            }
            (n, 4)
        }
        127 => {
            let Some(ext) = rest.get(..8) else {
                return Ok(None);
            };
            let n = u64::from_be_bytes(ext.try_into().expect("8 bytes"));
            if n <= 0xffff {
                return Err(format!("non-minimal 64-bit length {n}"));
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 8 && (len > 125 || !fin) {
        return Err(format!("invalid server control frame: fin={fin} len={len}"));
    }
    let total = hlen + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload: buf[hlen..total].to_vec(),
        },
        total,
    )))
}

// ------------------------------------------------------------------ TLS

/// A rustls client configuration trusting exactly `cert_der`, limited to
/// `versions`.
pub fn tls_connector_with(
    cert_der: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert_der.to_vec()))
        .expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A rustls client configuration trusting exactly `cert_der` (TLS 1.2, 1.3).
pub fn tls_connector(cert_der: &[u8]) -> tokio_rustls::TlsConnector {
    tls_connector_with(cert_der, rustls::DEFAULT_VERSIONS)
}

/// TLS over an established stream, for server name `localhost`.
pub async fn tls_over<S>(
    connector: &tokio_rustls::TlsConnector,
    stream: S,
) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    within("TLS handshake", connector.connect(name, stream))
        .await
        .expect("TLS handshake")
}

/// TLS connection to `addr` for server name `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    cert_der: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_over(&tls_connector(cert_der), tcp(addr).await).await
}

/// A stream whose writes go out one byte per write call (TCP_NODELAY makes
/// that one segment each), to exercise reassembly of partial input.
pub struct Trickle<S>(pub S);

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(1);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}
