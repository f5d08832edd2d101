//! rtedge management service: an axum HTTP service over the shared stats
//! region ([`dataplane::region`]).
//!
//! It runs on its own thread with its own (epoll) tokio runtime, either in
//! the data plane's process ([`spawn`], started by `rtedge run`) or in a
//! separate process attached to the region file (`rtedge mgmt --attach`,
//! [`serve`]). It only reads the region, posts commands to the reactors'
//! command rings and flips control words: it never takes a lock a reactor
//! takes, and the data plane never waits for it.
//!
//! Endpoints (JSON unless noted; see `deploy/README.md`):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text exposition |
//! | GET | `/healthz`, `/readyz` | process alive; every reactor ticking |
//! | GET | `/api/status` | version, uptime, workers, listeners, protocols |
//! | GET | `/api/ws/connections` | Kamailio `ws.dump` (`order`, `limit`) |
//! | GET | `/api/ws/connections/{id}` | one connection |
//! | POST | `/api/ws/connections/{id}/close`, `/ping`, `/pong` | `ws.close`, `ws.ping`, `ws.pong` |
//! | POST | `/api/ws/disable`, `/api/ws/enable` | `ws.disable`, `ws.enable` |
//! | GET | `/api/msrp/sessions`, DELETE `/api/msrp/sessions/{id}` | `msrp.cmaplist` |
//! | POST | `/api/auth/reload` | `auth.reload`: read the users file again (as SIGHUP) |
//! | GET | `/api/events` | server-sent events: opened, closed, rejected |
//! | POST | `/RPC` | Kamailio-compatible JSON-RPC 2.0 |

mod api;
mod auth;
mod dump;
mod events;
mod metrics;
mod process;
mod rpc;
mod time;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dataplane::region::{Region, RegionError};

pub use dump::Order;

/// Whether the service runs inside the data plane's process or attached to
/// its region from another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    Attached,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::Attached => "attached",
        }
    }
}

/// One data-plane listener, for `/api/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    pub transport: String,
    pub address: String,
}

/// What `/api/status` reports besides what the region itself tells.
#[derive(Clone, Debug)]
pub struct StatusInfo {
    pub version: String,
    pub mode: Mode,
    /// When the data plane started (unix ms); 0 (the default) means the
    /// region's creation time, which is when the data plane started.
    pub started_unix_ms: u64,
    /// Listeners (empty when unknown, e.g. attached without `--config`).
    pub listeners: Vec<ListenerInfo>,
    /// Enabled WebSocket sub-protocols (empty when unknown).
    pub sub_protocols: Vec<String>,
    pub config_path: Option<PathBuf>,
    /// Most connections the data plane accepts (workers × per-worker
    /// limit), when known; exported as `rtedge_connections_limit`.
    pub connection_limit: Option<u64>,
}

impl StatusInfo {
    /// Defaults for `mode`: this crate's version, start time from the
    /// region.
    pub fn new(mode: Mode) -> StatusInfo {
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode,
            started_unix_ms: 0,
            listeners: Vec::new(),
            sub_protocols: Vec::new(),
            config_path: None,
            connection_limit: None,
        }
    }
}

/// Service settings.
#[derive(Clone, Debug)]
pub struct MgmtConfig {
    pub listen: SocketAddr,
    /// Bearer token required on every endpoint except `/healthz` and
    /// `/readyz`.
    pub token: Option<String>,
    pub status: StatusInfo,
}

/// Read a bearer token from a file (surrounding whitespace trimmed).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let t = text.trim();
    if t.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: empty token file", path.display()),
        ));
    }
    Ok(t.to_string())
}

/// How often an attached service checks whether the region file was
/// replaced (a restarted data plane).
const REATTACH_CHECK: Duration = Duration::from_secs(1);

/// The region the service reads: fixed (in-process), or attached from a
/// file and re-attached when the data plane restarts and re-creates it.
pub(crate) struct Regions {
    current: RwLock<Arc<Region>>,
    path: Option<PathBuf>,
    last_check: Mutex<Instant>,
}

impl Regions {
    fn fixed(region: Arc<Region>) -> Regions {
        Regions {
            current: RwLock::new(region),
            path: None,
            last_check: Mutex::new(Instant::now()),
        }
    }

    fn attached(region: Arc<Region>, path: PathBuf) -> Regions {
        Regions {
            current: RwLock::new(region),
            path: Some(path),
            last_check: Mutex::new(Instant::now()),
        }
    }

    /// The current region (re-attaching first if the file now holds a new
    /// region, checked at most once per [`REATTACH_CHECK`]).
    pub(crate) fn get(&self) -> Arc<Region> {
        let cur = self
            .current
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let Some(path) = &self.path else {
            return cur;
        };
        {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < REATTACH_CHECK {
                return cur;
            }
            *last = Instant::now();
        }
        match Region::probe(path) {
            Ok(h) if h.epoch != cur.epoch() => match Region::attach(path) {
                Ok(r) => {
                    tracing::info!(
                        path = %path.display(),
                        epoch = format_args!("{:#x}", r.epoch()),
                        "the data plane restarted; re-attached to its new region"
                    );
                    let r = Arc::new(r);
                    if let Ok(mut w) = self.current.write() {
                        *w = r.clone();
                    }
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-attach to the region");
                    cur
                }
            },
            _ => cur,
        }
    }
}

/// State shared by the handlers.
pub(crate) struct App {
    pub regions: Arc<Regions>,
    pub status: StatusInfo,
    pub token: Option<String>,
    pub registry: prometheus::Registry,
    pub started: Instant,
    /// Flipped to `true` when the service stops, so endless responses (the
    /// event stream) end and graceful shutdown completes.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

/// A reason the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot attach to the stats region: {0}")]
    Attach(#[from] RegionError),
    #[error("cannot start the management runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Metrics(String),
}

fn build_app(regions: Regions, cfg: &MgmtConfig) -> Result<Arc<App>, MgmtError> {
    let regions = Arc::new(regions);
    let registry = metrics::registry(regions.clone(), cfg.status.clone())
        .map_err(|e| MgmtError::Metrics(e.to_string()))?;
    Ok(Arc::new(App {
        regions,
        status: cfg.status.clone(),
        token: cfg.token.clone().filter(|t| !t.is_empty()),
        registry,
        started: Instant::now(),
        stopping: tokio::sync::watch::channel(false).0,
    }))
}

fn bind(cfg: &MgmtConfig) -> Result<StdTcpListener, MgmtError> {
    let bind_err = |source| MgmtError::Bind {
        address: cfg.listen,
        source,
    };
    let l = StdTcpListener::bind(cfg.listen).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    if !cfg.listen.ip().is_loopback() && cfg.token.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            address = %cfg.listen,
            "the management service listens on a non-loopback address without a token: \
             anyone who can reach it can close connections and disable WebSocket; set [mgmt] token"
        );
    }
    Ok(l)
}

/// A running in-process service.
pub struct Handle {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Start the service in this process on its own thread (its own
/// current-thread tokio runtime). Binds before returning, so a taken port
/// is reported here, and the bound address is known.
pub fn spawn(region: Arc<Region>, cfg: MgmtConfig) -> Result<Handle, MgmtError> {
    let listener = bind(&cfg)?;
    let addr = listener.local_addr().map_err(|source| MgmtError::Bind {
        address: cfg.listen,
        source,
    })?;
    let app = build_app(Regions::fixed(region), &cfg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("rtedge-mgmt")
        .build()
        .map_err(MgmtError::Runtime)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("rtedge-mgmt".into())
        .spawn(move || {
            runtime.block_on(async move {
                let stop = async {
                    let _ = stop_rx.await;
                };
                if let Err(e) = run(listener, app, stop).await {
                    tracing::error!(error = %e, "management service stopped");
                }
            });
        })
        .map_err(MgmtError::Runtime)?;
    Ok(Handle {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Attach to the region file at `path` and serve until `stop` resolves
/// (`rtedge mgmt --attach`). `on_bound` is called with the bound address
/// before serving. Builds its own current-thread runtime; blocks.
pub fn serve_attached(
    path: &Path,
    cfg: MgmtConfig,
    on_bound: impl FnOnce(SocketAddr, &Region),
) -> Result<(), MgmtError> {
    let region = Arc::new(Region::attach(path)?);
    let listener = bind(&cfg)?;
    let addr = listener.local_addr().map_err(|source| MgmtError::Bind {
        address: cfg.listen,
        source,
    })?;
    let app = build_app(Regions::attached(region.clone(), path.to_path_buf()), &cfg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MgmtError::Runtime)?;
    runtime
        .block_on(async move {
            // Handlers first, so a signal right after the address is
            // announced already stops the service gracefully.
            let stop = shutdown_signal()?;
            on_bound(addr, &region);
            drop(region);
            run(listener, app, stop).await
        })
        .map_err(MgmtError::Runtime)
}

/// Installs SIGTERM and SIGINT handlers; the future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("management service shutting down");
    })
}

async fn run(
    listener: StdTcpListener,
    app: Arc<App>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let stopping = app.stopping.clone();
    let router = api::router(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            stop.await;
            stopping.send_replace(true);
        })
        .await
}
