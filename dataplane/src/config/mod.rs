//! Configuration: one TOML file, every setting defaulted.
//!
//! The key names under `[websocket]` and `[msrp]` follow Kamailio's module
//! parameters (`keepalive_mechanism`, `keepalive_timeout`, `cors_mode`, …) so
//! an operator moving from Kamailio recognises them. The keys listed in
//! DESIGN.md's "Configuration contract" are stable; unknown keys are errors so
//! a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where configuration loading went wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `"auto"` (one per online core) or a number.
    pub workers: Workers,
    pub listen: Vec<Listen>,
    pub websocket: WebSocket,
    pub auth: Auth,
    pub msrp: Msrp,
    pub mgmt: Mgmt,
    pub region: Region,
    pub reactor: Reactor,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: Workers::Auto,
            listen: vec![Listen {
                transport: Transport::Ws,
                address: "127.0.0.1:8080".parse().expect("literal address"),
                tls_cert: None,
                tls_key: None,
            }],
            websocket: WebSocket::default(),
            auth: Auth::default(),
            msrp: Msrp::default(),
            mgmt: Mgmt::default(),
            region: Region::default(),
            reactor: Reactor::default(),
            log: Log::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

impl Workers {
    /// The number of reactor threads to start.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) if t == "auto" => Ok(Workers::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number, found \"{t}\""
            ))),
            Raw::Number(n) if (1..=1024).contains(&n) => Ok(Workers::Count(n as usize)),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "expected 1..=1024 workers, found {n}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Ws,
    Wss,
    Msrp,
    Msrps,
    SipUdp,
    SipTcp,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Wss | Transport::Msrps)
    }
    /// Where a listener without `address` listens: loopback, on the
    /// transport's usual port (2855 is MSRP's registered port for `msrp`
    /// and `msrps` alike, RFC 4975 §15.5; 5060 is SIP's, RFC 3261 §19.1.2).
    pub fn default_address(self) -> SocketAddr {
        let port = match self {
            Transport::Ws => 8080,
            Transport::Wss => 8443,
            Transport::Msrp | Transport::Msrps => 2855,
            Transport::SipUdp | Transport::SipTcp => 5060,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Msrp => "msrp",
            Transport::Msrps => "msrps",
            Transport::SipUdp => "sip-udp",
            Transport::SipTcp => "sip-tcp",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ListenEntry")]
pub struct Listen {
    pub transport: Transport,
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// A `[[listen]]` entry as written: `address` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenEntry {
    transport: Transport,
    address: Option<SocketAddr>,
    #[serde(default)]
    tls_cert: Option<PathBuf>,
    #[serde(default)]
    tls_key: Option<PathBuf>,
}

impl From<ListenEntry> for Listen {
    fn from(e: ListenEntry) -> Listen {
        Listen {
            transport: e.transport,
            address: e.address.unwrap_or_else(|| e.transport.default_address()),
            tls_cert: e.tls_cert,
            tls_key: e.tls_key,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubProtocol {
    Sip,
    Msrp,
    Xmpp,
    Echo,
}

impl SubProtocol {
    pub fn token(self) -> &'static str {
        match self {
            SubProtocol::Sip => "sip",
            SubProtocol::Msrp => "msrp",
            SubProtocol::Xmpp => "xmpp",
            SubProtocol::Echo => "echo",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeepaliveMechanism {
    None,
    Ping,
    Pong,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CorsMode {
    /// No `Access-Control-Allow-Origin` header.
    None,
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// Mirror the request's Origin (nothing when absent).
    Origin,
}

/// `[websocket]`: RFC 6455 server behaviour, Kamailio `websocket` names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    /// Accepted sub-protocols, in the server's order of preference.
    pub sub_protocols: Vec<SubProtocol>,
    pub keepalive_mechanism: KeepaliveMechanism,
    /// Idle seconds before a keep-alive is sent.
    pub keepalive_timeout: u64,
    /// Seconds between keep-alive scans.
    pub keepalive_interval: u64,
    /// Unanswered keep-alive pings after which the peer is closed (1001).
    pub keepalive_max_missed: u32,
    /// Payload of keep-alive Ping/Pong frames (≤ 125 bytes); defaults to the
    /// Server header value.
    pub ping_application_data: Option<String>,
    pub cors_mode: CorsMode,
    /// Largest reassembled message, in bytes; larger ones are closed with 1009.
    pub max_message_size: usize,
    /// Allowed request paths; empty allows any path.
    pub paths: Vec<String>,
    /// Allowed Host header values (host or host:port); empty allows any.
    pub hosts: Vec<String>,
    /// Allowed origins (RFC 6454 serialisation, e.g. `https://example.com`);
    /// empty allows any origin, including none.
    pub origins: Vec<String>,
    /// Require HTTP authentication (against `[auth]`) on the handshake.
    pub require_auth: bool,
    /// Seconds a client has to complete its handshake.
    pub handshake_timeout: u64,
    /// Largest accepted handshake request head, in bytes (431 beyond).
    pub max_request_header_size: usize,
    /// Seconds to wait for the peer's Close after ours before closing TCP.
    pub close_timeout: u64,
    /// Seconds without any traffic after which a connection is dropped
    /// (0 = never; keep-alives usually keep a live peer under it).
    pub idle_timeout: u64,
    /// `Server` header value.
    pub server_header: String,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            sub_protocols: vec![SubProtocol::Sip, SubProtocol::Msrp],
            keepalive_mechanism: KeepaliveMechanism::Ping,
            keepalive_timeout: 180,
            keepalive_interval: 1,
            keepalive_max_missed: 3,
            ping_application_data: None,
            cors_mode: CorsMode::None,
            max_message_size: 1 << 20,
            paths: Vec::new(),
            hosts: Vec::new(),
            origins: Vec::new(),
            require_auth: false,
            handshake_timeout: 10,
            max_request_header_size: 8192,
            close_timeout: 5,
            idle_timeout: 0,
            server_header: concat!("rtedge/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl WebSocket {
    /// The keep-alive Ping/Pong payload.
    pub fn ping_data(&self) -> &str {
        self.ping_application_data
            .as_deref()
            .unwrap_or(&self.server_header)
    }
}

/// `[auth]`: the credentials store shared by WebSocket handshake auth and
/// MSRP AUTH.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub realm: String,
    pub users_file: Option<PathBuf>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            realm: "rtedge".into(),
            users_file: None,
        }
    }
}

/// `[msrp]`: Kamailio `msrp` module names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Msrp {
    /// The session map has 2^cmap_size slots.
    pub cmap_size: u32,
    pub timer_interval: u64,
    pub auth_min_expires: u64,
    pub auth_max_expires: u64,
    pub use_path_addr: Option<String>,
    /// Largest body (bytes) of a chunk the relay forwards: larger SEND
    /// chunks are re-chunked (RFC 4976 §6.6), other larger requests get
    /// 413. Bounds the memory a chunk in transit takes.
    pub max_chunk_size: usize,
    /// Bytes of one connection's chunks that may wait in other
    /// connections' output before it stops being read (flow control).
    pub relay_window: usize,
    /// PEM CA certificates that `msrps` next hops' certificates must chain
    /// to; default: the system's roots.
    pub next_hop_ca_file: Option<PathBuf>,
    /// Seconds an AUTH challenge's nonce stays fresh; an older one gets a
    /// new 401 with `stale=true` (RFC 2617 §3.2.1).
    pub nonce_lifetime: u64,
    /// Seconds to wait for the response to a forwarded request before a
    /// failure REPORT with 408 (RFC 4975 §7.1.1 suggests 30 s).
    pub transaction_timeout: u64,
    /// AUTHs refused with 403 on one connection before it is closed (0:
    /// never closed for that).
    pub auth_max_failures: u32,
    /// Largest head (first line and header block) of a frame, in bytes: a
    /// larger one is answered 400 and its frame skipped to its end-line.
    pub max_head_size: usize,
    /// Most header lines in a frame (To-Path and From-Path included); more
    /// get 400.
    pub max_headers: usize,
}

impl Default for Msrp {
    fn default() -> Self {
        Msrp {
            cmap_size: 16,
            timer_interval: 60,
            auth_min_expires: 60,
            auth_max_expires: 3600,
            use_path_addr: None,
            max_chunk_size: 64 << 10,
            relay_window: 1 << 20,
            next_hop_ca_file: None,
            nonce_lifetime: 300,
            transaction_timeout: 30,
            auth_max_failures: 3,
            max_head_size: 16 << 10,
            max_headers: 64,
        }
    }
}

/// `[mgmt]`: the management service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Mgmt {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// A file holding the bearer token (keeps it out of the main config).
    pub token_file: Option<PathBuf>,
}

impl Default for Mgmt {
    fn default() -> Self {
        Mgmt {
            enabled: true,
            listen: "127.0.0.1:9090".parse().expect("literal address"),
            token: None,
            token_file: None,
        }
    }
}

/// `[region]`: the shared stats region file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Region {
    pub path: PathBuf,
    /// Connection slots per core visible to dumps.
    pub slots_per_core: u32,
}

impl Default for Region {
    fn default() -> Self {
        Region {
            path: PathBuf::from("/dev/shm/rtedge.region"),
            slots_per_core: 65536,
        }
    }
}

/// `[reactor]`: io_uring and process settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Reactor {
    /// Submission queue entries per worker ring.
    pub ring_entries: u32,
    /// Provided buffers per worker (a power of two).
    pub recv_buffers: u16,
    /// Size of each provided receive buffer.
    pub recv_buffer_size: u32,
    /// Pin each worker to a core.
    pub pin_workers: bool,
    /// Seconds to wait for peers after SIGTERM/SIGINT before exiting.
    pub shutdown_grace: u64,
    /// Soft RLIMIT_NOFILE to ask for at start.
    pub max_open_files: u64,
    /// Most connections one worker holds; accepts beyond are closed.
    pub max_connections_per_worker: u32,
    /// Completion batching: once one completion is ready, wait up to this
    /// many microseconds for `batch_size` before handling them (0 = off;
    /// needs Linux ≥ 6.12, ignored before).
    pub batch_wait_us: u32,
    pub batch_size: u32,
}

impl Default for Reactor {
    fn default() -> Self {
        Reactor {
            ring_entries: 4096,
            recv_buffers: 256,
            recv_buffer_size: 16384,
            pin_workers: true,
            shutdown_grace: 5,
            max_open_files: 1 << 20,
            max_connections_per_worker: 1 << 20,
            batch_wait_us: 0,
            batch_size: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `tracing` env-filter directive; `RUST_LOG` overrides it.
    pub level: String,
    pub json: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            json: false,
        }
    }
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one [[listen]] is required"));
        }
        for (i, l) in self.listen.iter().enumerate() {
            let key = format!("listen[{i}]");
            if l.transport.is_tls() && (l.tls_cert.is_none() || l.tls_key.is_none()) {
                return Err(invalid(
                    &format!("{key}.tls_cert"),
                    format!(
                        "transport {} needs tls_cert and tls_key",
                        l.transport.name()
                    ),
                ));
            }
            if matches!(l.transport, Transport::Msrp | Transport::Msrps)
                && self.auth.users_file.is_none()
            {
                // An MSRP relay relays only for clients that AUTHenticated
                // (RFC 4976 §5): without credentials it could serve no one.
                return Err(invalid(
                    &format!("{key}.transport"),
                    format!(
                        "transport {} needs auth.users_file (MSRP clients must AUTH)",
                        l.transport.name()
                    ),
                ));
            }
            if !l.transport.is_tls() && (l.tls_cert.is_some() || l.tls_key.is_some()) {
                return Err(invalid(
                    &format!("{key}.tls_cert"),
                    format!("transport {} does not use TLS", l.transport.name()),
                ));
            }
            for (j, other) in self.listen.iter().enumerate().skip(i + 1) {
                // Port 0 asks the OS for a fresh port per listener.
                if other.address == l.address
                    && l.address.port() != 0
                    && (other.transport == Transport::SipUdp) == (l.transport == Transport::SipUdp)
                {
                    return Err(invalid(
                        &format!("listen[{j}].address"),
                        format!("{} is already used by listen[{i}]", l.address),
                    ));
                }
            }
        }
        let ws = &self.websocket;
        if ws.sub_protocols.is_empty() {
            return Err(invalid(
                "websocket.sub_protocols",
                "at least one sub-protocol is required",
            ));
        }
        if ws.ping_data().len() > 125 {
            return Err(invalid(
                "websocket.ping_application_data",
                "a control frame payload is at most 125 bytes (RFC 6455 §5.5)",
            ));
        }
        if ws.keepalive_interval == 0 {
            return Err(invalid("websocket.keepalive_interval", "must be ≥ 1"));
        }
        if ws.max_message_size < 125 {
            return Err(invalid("websocket.max_message_size", "must be ≥ 125"));
        }
        if ws.max_request_header_size < 256 {
            return Err(invalid(
                "websocket.max_request_header_size",
                "must be ≥ 256",
            ));
        }
        if ws.handshake_timeout == 0 {
            return Err(invalid("websocket.handshake_timeout", "must be ≥ 1"));
        }
        if ws.require_auth && self.auth.users_file.is_none() {
            return Err(invalid(
                "websocket.require_auth",
                "needs auth.users_file to check credentials against",
            ));
        }
        for o in &ws.origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) && o != "null" {
                return Err(invalid(
                    "websocket.origins",
                    format!("\"{o}\" is not an RFC 6454 origin such as https://example.com"),
                ));
            }
        }
        if self.mgmt.token.is_some() && self.mgmt.token_file.is_some() {
            return Err(invalid(
                "mgmt.token_file",
                "give either mgmt.token or mgmt.token_file, not both",
            ));
        }
        let m = &self.msrp;
        if !(8..=24).contains(&m.cmap_size) {
            return Err(invalid("msrp.cmap_size", "must be within 8..=24"));
        }
        if m.auth_min_expires > m.auth_max_expires {
            return Err(invalid(
                "msrp.auth_min_expires",
                "must not exceed msrp.auth_max_expires",
            ));
        }
        if !(1024..=(16 << 20)).contains(&m.max_chunk_size) {
            return Err(invalid(
                "msrp.max_chunk_size",
                "must be within 1024..=16777216 bytes",
            ));
        }
        if m.relay_window < m.max_chunk_size {
            return Err(invalid(
                "msrp.relay_window",
                "must be at least msrp.max_chunk_size",
            ));
        }
        if m.nonce_lifetime == 0 {
            return Err(invalid("msrp.nonce_lifetime", "must be ≥ 1 (seconds)"));
        }
        if m.transaction_timeout == 0 {
            return Err(invalid("msrp.transaction_timeout", "must be ≥ 1 (seconds)"));
        }
        // A head holds at least a first line, To-Path and From-Path.
        if !(1024..=(1 << 20)).contains(&m.max_head_size) {
            return Err(invalid(
                "msrp.max_head_size",
                "must be within 1024..=1048576 bytes",
            ));
        }
        if !(2..=1024).contains(&m.max_headers) {
            return Err(invalid("msrp.max_headers", "must be within 2..=1024"));
        }
        let r = &self.reactor;
        if !r.recv_buffers.is_power_of_two() {
            return Err(invalid("reactor.recv_buffers", "must be a power of two"));
        }
        if !(512..=1 << 20).contains(&r.recv_buffer_size) {
            return Err(invalid(
                "reactor.recv_buffer_size",
                "must be within 512..=1048576",
            ));
        }
        if r.ring_entries < 64 || !r.ring_entries.is_power_of_two() {
            return Err(invalid(
                "reactor.ring_entries",
                "must be a power of two ≥ 64",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen[0].address.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.websocket.sub_protocols,
            vec![SubProtocol::Sip, SubProtocol::Msrp]
        );
        assert_eq!(c.mgmt.listen.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn contract_keys_parse() {
        let c = parse(
            r#"
workers = 2
[[listen]]
transport = "ws"
address = "127.0.0.1:8081"
[[listen]]
transport = "wss"
address = "127.0.0.1:8443"
tls_cert = "cert.pem"
tls_key = "key.pem"
[websocket]
sub_protocols = ["sip", "msrp", "xmpp", "echo"]
keepalive_mechanism = "pong"
keepalive_timeout = 30
keepalive_interval = 2
ping_application_data = "hello"
cors_mode = "origin"
max_message_size = 65536
[auth]
realm = "example.com"
users_file = "users.toml"
[msrp]
cmap_size = 12
timer_interval = 30
auth_min_expires = 10
auth_max_expires = 100
use_path_addr = "relay.example.com:2855"
nonce_lifetime = 20
transaction_timeout = 5
[mgmt]
enabled = false
listen = "127.0.0.1:9191"
token = "s3cret"
[region]
path = "/tmp/x.region"
"#,
        )
        .unwrap();
        assert_eq!(c.workers, Workers::Count(2));
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.websocket.keepalive_mechanism, KeepaliveMechanism::Pong);
        assert_eq!(c.websocket.cors_mode, CorsMode::Origin);
        assert_eq!(c.websocket.ping_data(), "hello");
        assert_eq!(c.msrp.cmap_size, 12);
        assert_eq!(c.msrp.nonce_lifetime, 20);
        assert_eq!(c.msrp.transaction_timeout, 5);
        assert!(!c.mgmt.enabled);
        assert_eq!(c.region.path, PathBuf::from("/tmp/x.region"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[websocket]\nkeepalive_timeuot = 3\n").unwrap_err();
        assert!(e.to_string().contains("keepalive_timeuot"), "{e}");
    }

    #[test]
    fn workers_auto_or_number() {
        assert_eq!(parse("workers = \"auto\"").unwrap().workers, Workers::Auto);
        assert!(parse("workers = \"many\"").is_err());
        assert!(parse("workers = 0").is_err());
    }

    #[test]
    fn tls_listener_needs_cert() {
        let e = parse("[[listen]]\ntransport = \"wss\"\naddress = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
    }

    #[test]
    fn msrp_listener_needs_users_file() {
        let l = "[[listen]]\ntransport = \"msrp\"\naddress = \"127.0.0.1:2855\"\n";
        let e = parse(l).unwrap_err();
        assert!(e.to_string().contains("users_file"), "{e}");
        assert!(parse(&format!("{l}[auth]\nusers_file = \"u.toml\"\n")).is_ok());
    }

    #[test]
    fn msrp_timers_must_be_positive() {
        for key in ["nonce_lifetime", "transaction_timeout"] {
            let e = parse(&format!("[msrp]\n{key} = 0\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("msrp.{key}")), "{e}");
            assert!(parse(&format!("[msrp]\n{key} = 1\n")).is_ok());
        }
        let d = parse("").unwrap().msrp;
        assert_eq!((d.nonce_lifetime, d.transaction_timeout), (300, 30));
    }

    #[test]
    fn a_listener_without_address_is_on_loopback_at_its_usual_port() {
        let c = parse(
            "[[listen]]\ntransport = \"msrp\"\n[[listen]]\ntransport = \"ws\"\n\
             [auth]\nusers_file = \"u.toml\"\n",
        )
        .unwrap();
        let addrs: Vec<String> = c.listen.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:2855", "127.0.0.1:8080"]);
        // Printed with the address (check-config shows the effective one).
        assert!(c.to_toml().contains("address = \"127.0.0.1:2855\""));
        assert!(parse("[[listen]]\ntransport = \"ws\"\nadress = \"127.0.0.1:1\"\n").is_err());
    }

    #[test]
    fn msrp_head_limits_are_bounded() {
        for (key, bad, good) in [
            ("max_head_size", 1023, 1024),
            ("max_head_size", (1 << 20) + 1, 1 << 20),
            ("max_headers", 1, 2),
            ("max_headers", 1025, 1024),
        ] {
            let e = parse(&format!("[msrp]\n{key} = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("msrp.{key}")), "{e}");
            assert!(parse(&format!("[msrp]\n{key} = {good}\n")).is_ok());
        }
        let d = parse("").unwrap().msrp;
        assert_eq!(
            (d.max_head_size, d.max_headers, d.auth_max_failures),
            (16384, 64, 3)
        );
        assert_eq!(
            parse("[msrp]\nauth_max_failures = 0\n")
                .unwrap()
                .msrp
                .auth_max_failures,
            0
        );
    }

    #[test]
    fn ping_data_limited_to_control_frame() {
        let long = "x".repeat(126);
        let e = parse(&format!(
            "[websocket]\nping_application_data = \"{long}\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("ping_application_data"), "{e}");
    }

    #[test]
    fn duplicate_addresses_are_refused_but_port_zero_is_not_a_duplicate() {
        let two = |addr: &str| {
            format!(
                "[[listen]]\ntransport = \"ws\"\naddress = \"{addr}\"\n\
                 [[listen]]\ntransport = \"ws\"\naddress = \"{addr}\"\n"
            )
        };
        let e = parse(&two("127.0.0.1:8080")).unwrap_err();
        assert!(e.to_string().contains("listen[1].address"), "{e}");
        parse(&two("127.0.0.1:0")).unwrap();
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::default();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }
}
