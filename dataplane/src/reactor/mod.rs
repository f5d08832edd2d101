//! Thread-per-core io_uring reactors.
//!
//! `workers` threads, each pinned to a core and owning one io_uring instance
//! (the `io-uring` crate, driven directly: tokio-uring is unmaintained, has
//! no provided-buffer rings and no multishot operations, which this design
//! is built on). Each worker has its own SO_REUSEPORT listener per listen
//! address with multishot accept, multishot recv into a provided-buffer
//! ring, a timer wheel, and an inbox for work handed over by other cores. A
//! connection lives and dies on the worker that accepted it.

pub mod bufring;
pub mod conn;
pub mod flow;
pub mod inbox;
pub mod msrp;
pub mod resolver;
pub mod stats;
pub mod sys;
pub mod timer;
pub mod token;
pub mod worker;

use crate::auth::{CredentialStore, NonceManager, Users};
use crate::config::{Config, Transport};
use crate::msrp::auth::AuthPolicy;
use crate::msrp::parser::ParserLimits;
use crate::msrp::relay::RelayConfig;
use crate::msrp::session_map::SessionId;
use crate::msrp::uri::LocalAuthorities;
use crate::region::{Counter, Region, ReloadResult};
use crate::transport::TlsAcceptor;
use crate::ws::handshake::{HandshakeAuth, HandshakePolicy};
use crate::ws::session::SessionConfig;
use inbox::Inbox;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use worker::{Listener, Worker};

/// Work handed to a worker by another thread.
pub enum InboxMsg {
    /// Open an outbound connection.
    Connect { addr: SocketAddr },
    /// An MSRP frame forwarded by another core toward a session this core
    /// owns (the frame is owned: it changes cores without a copy).
    MsrpForward {
        session: SessionId,
        from_conn: u64,
        origin_core: u8,
        frame: Vec<u8>,
        /// The body and end-line where the origin core received them
        /// (`frame` is then the head only): the target sends them from
        /// there, or copies them, and gives the holds back.
        body: Option<Box<msrp::RingBody>>,
        txn: Option<crate::msrp::relay::TxnId>,
        /// The sender's flow window, charged with the chunk's length.
        window: Arc<flow::FlowWindow>,
        /// Monotonic µs when the chunk was read (relay latency).
        in_us: u64,
    },
    /// A paused MSRP sender of this core may be read again: its flow
    /// window drained.
    MsrpWake { conn: u64 },
    /// The resolver's answer for an MSRP next hop's name.
    Resolved {
        host: String,
        port: u16,
        addr: Option<SocketAddr>,
    },
    /// A complete MSRP response for a transaction this core forwarded.
    MsrpResponse { frame: Vec<u8> },
    /// A frame this core forwarded to another core could not be delivered.
    MsrpForwardFailed {
        txn: crate::msrp::relay::TxnId,
        code: u16,
    },
}

/// What every worker reads and nobody writes after start (except atomics).
pub struct Shared {
    pub config: Config,
    pub region: Arc<Region>,
    pub policy: HandshakePolicy,
    pub session_config: Arc<SessionConfig>,
    /// TLS configuration per listener index.
    pub tls: HashMap<u16, TlsAcceptor>,
    /// Client TLS for `msrps` next hops.
    pub next_hop_tls: crate::transport::TlsConnector,
    /// Names of next hops are resolved off the reactors.
    pub resolver: resolver::Resolver,
    pub inboxes: Vec<Arc<Inbox<InboxMsg>>>,
    /// Every worker's provided-buffer memory, for bodies another worker
    /// sends from where they were received.
    pub rings: Arc<bufring::RingTable>,
    /// Per core: entries all its connections' [`conn::HandedOver`] hold.
    pub handed_over: Vec<Arc<std::sync::atomic::AtomicUsize>>,
    /// AUTH and handshake credentials (`[auth] users_file`; empty without
    /// one, so every AUTH is challenged and then refused), reloadable.
    pub users: Arc<Users>,
    pub msrp_nonces: NonceManager,
    pub relay_config: RelayConfig,
    start: Instant,
    unix_start_ms: u64,
    shutdown: AtomicBool,
}

impl Shared {
    /// Milliseconds on the process's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Microseconds on the process's monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Wall-clock milliseconds of a monotonic [`Shared::now_ms`] instant.
    pub fn mono_to_unix_ms(&self, mono_ms: u64) -> u64 {
        self.unix_start_ms.saturating_add(mono_ms)
    }

    /// Wall-clock milliseconds (for dumps), derived from the monotonic clock.
    pub fn unix_ms(&self) -> u64 {
        self.unix_start_ms + self.now_ms()
    }

    pub fn ws_enabled(&self) -> bool {
        self.region.control().ws_enabled()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// Why the data plane could not start, in operator terms.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "io_uring is unavailable: {0} (is kernel.io_uring_disabled set, or a seccomp policy blocking io_uring_setup?)"
    )]
    IoUring(std::io::Error),
    #[error("cannot listen on {address} ({transport}): {source}")]
    Listen {
        address: SocketAddr,
        transport: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::transport::TlsError),
    #[error("{0}")]
    Auth(String),
    #[error("cannot start worker {core}: {source}")]
    Worker { core: u32, source: std::io::Error },
}

/// A running data plane.
pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    pub listening: Vec<(Transport, SocketAddr)>,
}

impl Dataplane {
    /// Bind every listener on every worker, then start the workers.
    pub fn start(config: Config, region: Arc<Region>) -> Result<Dataplane, StartError> {
        sys::probe_io_uring().map_err(StartError::IoUring)?;
        let workers = config.workers.resolve() as u32;

        let mut tls = HashMap::new();
        for (i, l) in config.listen.iter().enumerate() {
            if let (Some(cert), Some(key)) = (&l.tls_cert, &l.tls_key) {
                tls.insert(i as u16, TlsAcceptor::from_pem_files(cert, key)?);
            }
        }

        // Outbound TLS for `msrps` next hops (RFC 4976 §6.3: msrps
        // requires TLS all the way).
        let next_hop_tls =
            crate::transport::TlsConnector::new(config.msrp.next_hop_ca_file.as_deref())?;

        let store = match &config.auth.users_file {
            Some(path) => Some(Arc::new(
                Users::load(path, &config.auth.realm)
                    .map_err(|e| StartError::Auth(e.to_string()))?,
            )),
            None => None,
        };
        let auth = if config.websocket.require_auth {
            let store = store.clone().ok_or_else(|| {
                StartError::Auth("websocket.require_auth needs auth.users_file".into())
            })?;
            Some(HandshakeAuth {
                realm: config.auth.realm.clone(),
                store,
                nonces: NonceManager::new(random_secret(), 300),
            })
        } else {
            None
        };
        let users = store
            .unwrap_or_else(|| Arc::new(Users::fixed(CredentialStore::empty(&config.auth.realm))));
        region
            .core(0)
            .set(Counter::Users, users.current().len() as u64);
        let mut relay_config = RelayConfig {
            auth: AuthPolicy {
                realm: config.auth.realm.clone(),
                min_expires: config.msrp.auth_min_expires,
                max_expires: config.msrp.auth_max_expires,
                max_failures: config.msrp.auth_max_failures,
            },
            limits: ParserLimits {
                max_head: config.msrp.max_head_size,
                max_headers: config.msrp.max_headers,
            },
            rechunk_size: config.msrp.max_chunk_size,
            max_unsplit: config.msrp.max_chunk_size,
            transaction_timeout_ms: config.msrp.transaction_timeout.saturating_mul(1000),
            body_by_reference_min: msrp::RING_MIN,
            ..RelayConfig::default()
        };
        let msrp_nonces = NonceManager::new(random_secret(), config.msrp.nonce_lifetime);
        let ws = &config.websocket;
        let policy = HandshakePolicy {
            sub_protocols: ws.sub_protocols.clone(),
            paths: ws.paths.clone(),
            hosts: ws.hosts.clone(),
            origins: ws.origins.clone(),
            cors_mode: ws.cors_mode,
            server_header: ws.server_header.clone(),
            max_request_header_size: ws.max_request_header_size,
            auth,
        };
        let session_config = Arc::new(SessionConfig {
            max_message_size: ws.max_message_size,
            keepalive: ws.keepalive_mechanism,
            keepalive_timeout_ms: ws.keepalive_timeout * 1000,
            keepalive_max_missed: ws.keepalive_max_missed,
            ping_data: ws.ping_data().as_bytes().to_vec(),
            close_timeout_ms: ws.close_timeout * 1000,
            idle_timeout_ms: ws.idle_timeout * 1000,
        });

        // Bind all sockets here, so a taken port fails the start cleanly.
        let mut per_worker: Vec<Vec<Listener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut listening = Vec::new();
        for (i, l) in config.listen.iter().enumerate() {
            match l.transport {
                Transport::Ws | Transport::Wss | Transport::Msrp | Transport::Msrps => {}
                other => {
                    tracing::warn!(
                        transport = other.name(),
                        address = %l.address,
                        "this build does not serve this transport yet; listener skipped"
                    );
                    continue;
                }
            }
            sys::ensure_unused(l.address).map_err(|source| StartError::Listen {
                address: l.address,
                transport: l.transport.name(),
                source,
            })?;
            let mut address = l.address;
            for list in per_worker.iter_mut() {
                let socket =
                    sys::reuseport_listener(address).map_err(|source| StartError::Listen {
                        address: l.address,
                        transport: l.transport.name(),
                        source,
                    })?;
                // Port 0: every worker must join the port the first one got.
                if let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                    address = local;
                }
                list.push(Listener {
                    socket,
                    transport: l.transport,
                    index: i as u16,
                    local: address,
                });
            }
            listening.push((l.transport, address));
        }

        relay_config.local = local_authorities(&listening, config.msrp.use_path_addr.as_deref());

        let inboxes = (0..workers)
            .map(|_| Inbox::new(4096).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StartError::Worker { core: 0, source })?;
        let resolver = resolver::Resolver::start(inboxes.clone())
            .map_err(|source| StartError::Worker { core: 0, source })?;
        let unix_start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            config,
            region,
            policy,
            session_config,
            tls,
            next_hop_tls,
            resolver,
            rings: bufring::RingTable::new(workers as usize),
            inboxes,
            handed_over: (0..workers).map(|_| Arc::default()).collect(),
            users,
            msrp_nonces,
            relay_config,
            start: Instant::now(),
            unix_start_ms,
            shutdown: AtomicBool::new(false),
        });

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (core, listeners) in per_worker.into_iter().enumerate() {
            let core = core as u32;
            let shared2 = shared.clone();
            let pin = if shared.config.reactor.pin_workers && !cores.is_empty() {
                Some(cores[core as usize % cores.len()])
            } else {
                None
            };
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("rtedge-w{core}"))
                .spawn(move || {
                    if let Some(id) = pin {
                        core_affinity::set_for_current(id);
                    }
                    // The ring is built on its own thread (single issuer).
                    match Worker::new(core, shared2, listeners) {
                        Ok(w) => {
                            let _ = ready.send((core, None));
                            w.run()
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            let _ = ready.send((core, Some(e)));
                            Err(std::io::Error::other(msg))
                        }
                    }
                })
                .map_err(|source| StartError::Worker { core, source })?;
            threads.push(h);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok((core, Some(e))) => failure = failure.or(Some((core, e))),
                Ok((_, None)) => {}
                Err(_) => break,
            }
        }
        let dp = Dataplane {
            shared,
            threads,
            listening,
        };
        if let Some((core, source)) = failure {
            dp.request_shutdown();
            let _ = dp.join();
            return Err(StartError::Worker { core, source });
        }
        Ok(dp)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Begin graceful shutdown: stop accepting, Close 1001 to WebSocket
    /// peers, exit when they are gone or the grace period ends.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        for i in &self.shared.inboxes {
            i.wake();
        }
    }

    /// Read the users file again (SIGHUP, or a reload the management API
    /// asked for) and put it in force for every new AUTH and handshake;
    /// connections and sessions are not touched. On error the users in
    /// force stay. Counted in the stats region, in core 0's block: no
    /// worker writes these words, so call this from one thread only (the
    /// main thread does).
    pub fn reload_users(&self) -> Result<usize, crate::auth::ReloadError> {
        let stats = self.shared.region.core(0);
        let r = self.shared.users.reload();
        match &r {
            Ok(n) => {
                stats.inc(Counter::UsersReloads(ReloadResult::Ok));
                stats.set(Counter::Users, *n as u64);
            }
            Err(_) => stats.inc(Counter::UsersReloads(ReloadResult::Failed)),
        }
        r
    }

    /// Ask worker `core` to open an outbound connection.
    pub fn connect(&self, core: usize, addr: SocketAddr) -> bool {
        self.shared
            .inboxes
            .get(core)
            .is_some_and(|i| i.send(InboxMsg::Connect { addr }).is_ok())
    }

    /// Wait for every worker to finish.
    pub fn join(self) -> std::io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("worker panicked")),
            }
        }
        result
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }
}

/// This relay's authorities for To-Path matching: every MSRP-capable
/// listener's bound address (a wildcard one stands for each of the host's
/// interface addresses of its family), scheme `msrps` for TLS listeners,
/// and `use_path_addr` with either scheme.
pub fn local_authorities(
    listening: &[(Transport, std::net::SocketAddr)],
    use_path_addr: Option<&str>,
) -> LocalAuthorities {
    let mut l = LocalAuthorities::default();
    let mut ifaces = None;
    for &(t, addr) in listening {
        if !matches!(
            t,
            Transport::Ws | Transport::Wss | Transport::Msrp | Transport::Msrps
        ) {
            continue;
        }
        let secure = Some(t.is_tls());
        if addr.ip().is_unspecified() {
            let ips = ifaces.get_or_insert_with(sys::interface_addrs);
            for ip in ips.iter() {
                // An IPv6 wildcard also takes IPv4 (dual stack).
                if ip.is_ipv4() || addr.is_ipv6() {
                    l.add_socket(secure, std::net::SocketAddr::new(*ip, addr.port()));
                }
                // …whose connections show IPv4-mapped local addresses.
                if let (std::net::IpAddr::V4(v4), true) = (ip, addr.is_ipv6()) {
                    let mapped = std::net::IpAddr::V6(v4.to_ipv6_mapped());
                    l.add_socket(secure, std::net::SocketAddr::new(mapped, addr.port()));
                }
            }
        }
        l.add_socket(secure, addr);
    }
    if let Some(u) = use_path_addr
        && !l.add_host_port(None, u)
    {
        tracing::warn!(use_path_addr = u, "msrp.use_path_addr is not host:port");
    }
    l
}

fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    // A nonce secret that cannot be generated is not worth refusing to run
    // over: fall back to time-derived bytes, still unique per process.
    if getrandom::fill(&mut s).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        s[..16].copy_from_slice(&t.to_le_bytes());
    }
    s
}
