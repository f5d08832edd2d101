//! The `rtedge` command: `run` (the default), `mgmt --attach`, `check-config`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataplane::config::Config;
use dataplane::reactor::{Dataplane, sys};
use dataplane::region::Region;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "rtedge",
    version,
    about = "Real-time messaging edge: WebSocket (sip, msrp, xmpp), MSRP relay, SIP edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data plane (with no --config: loopback defaults).
    Run {
        /// TOML configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the management service in its own process, attached to a running
    /// data plane's stats region file.
    Mgmt {
        /// The region file of the data plane (its `[region] path`).
        #[arg(long, value_name = "PATH")]
        attach: PathBuf,
        /// Address to serve on (default: `[mgmt] listen` of --config, else
        /// 127.0.0.1:9090).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Bearer token required on every endpoint except /healthz and /readyz.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the bearer token from a file.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The data plane's configuration file, for the listeners, protocols
        /// and limits `/api/status` and `/metrics` report, and `[mgmt]`
        /// defaults.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static HUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

extern "C" fn on_hup(_: libc::c_int) {
    HUP.store(true, Ordering::Relaxed);
}

/// How often the main thread also checks that the data plane still runs.
const STOP_POLL: Duration = Duration::from_millis(250);

/// What a signal asks of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignalAsk {
    /// SIGTERM, SIGINT.
    Stop,
    /// SIGHUP: read the users file again.
    Reload,
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads
/// it starts afterwards); returns the set for [`wait_signal`].
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait up to `timeout` for one of `set`'s (blocked) signals.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<SignalAsk> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are live for the call; no siginfo is asked for.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    match r {
        libc::SIGTERM | libc::SIGINT => Some(SignalAsk::Stop),
        libc::SIGHUP => Some(SignalAsk::Reload),
        _ => None,
    }
}

/// Read the users file again; the outcome goes to the log (and the stats
/// region's reload counters, which the management API reads).
fn reload_users(dp: &Dataplane) {
    match dp.reload_users() {
        Ok(n) => tracing::info!(users = n, "users file reloaded"),
        Err(e) => tracing::warn!(error = %e, "users file not reloaded; the users in force stay"),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(None),
        Some(Command::Run { config }) => run(config.as_deref()),
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Mgmt {
            attach,
            listen,
            token,
            token_file,
            config,
        }) => mgmt_attached(&attach, listen, token, token_file, config.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("rtedge: {e:#}");
        std::process::exit(1);
    }
}

/// Status information and settings of the management service from the
/// configuration.
fn mgmt_config(cfg: &Config, config_path: Option<PathBuf>) -> anyhow::Result<mgmt::MgmtConfig> {
    let workers = cfg.workers.resolve() as u64;
    let mut status = mgmt::StatusInfo::new(mgmt::Mode::InProcess);
    status.version = env!("CARGO_PKG_VERSION").to_string();
    status.sub_protocols = cfg
        .websocket
        .sub_protocols
        .iter()
        .map(|s| s.token().to_string())
        .collect();
    status.config_path = config_path;
    status.connection_limit =
        Some(workers.saturating_mul(u64::from(cfg.reactor.max_connections_per_worker)));
    status.listeners = cfg
        .listen
        .iter()
        .map(|l| mgmt::ListenerInfo {
            transport: l.transport.name().to_string(),
            address: l.address.to_string(),
        })
        .collect();
    let token = match &cfg.mgmt.token_file {
        Some(f) => Some(
            mgmt::read_token_file(f)
                .with_context(|| format!("cannot read mgmt.token_file {}", f.display()))?,
        ),
        None => cfg.mgmt.token.clone(),
    };
    Ok(mgmt::MgmtConfig {
        listen: cfg.mgmt.listen,
        token,
        status,
    })
}

fn listener_info(
    listening: &[(dataplane::config::Transport, SocketAddr)],
) -> Vec<mgmt::ListenerInfo> {
    listening
        .iter()
        .map(|(t, a)| mgmt::ListenerInfo {
            transport: t.name().to_string(),
            address: a.to_string(),
        })
        .collect()
}

/// `rtedge mgmt --attach PATH`: the management service in its own process.
fn mgmt_attached(
    region_path: &Path,
    listen: Option<SocketAddr>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = match config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    init_logging(cfg.as_ref().unwrap_or(&Config::default()));
    let mut mc = match &cfg {
        Some(c) => mgmt_config(c, config.map(Path::to_path_buf))?,
        None => mgmt::MgmtConfig {
            listen: dataplane::config::Mgmt::default().listen,
            token: None,
            status: mgmt::StatusInfo::new(mgmt::Mode::Attached),
        },
    };
    mc.status.mode = mgmt::Mode::Attached;
    mc.status.started_unix_ms = 0;
    if let Some(l) = listen {
        mc.listen = l;
    }
    if let Some(t) = token {
        mc.token = Some(t);
    }
    if let Some(f) = token_file {
        mc.token = Some(
            mgmt::read_token_file(&f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?,
        );
    }
    mgmt::serve_attached(region_path, mc, |addr, region| {
        tracing::info!(
            region = %region_path.display(),
            pid = region.header().pid,
            workers = region.cores(),
            "attached to the stats region"
        );
        tracing::info!(address = %addr, "management listening");
    })?;
    Ok(())
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    print!("{}", cfg.to_toml());
    Ok(())
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.log.level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    init_logging(&cfg);
    match sys::raise_nofile(cfg.reactor.max_open_files) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let workers = cfg.workers.resolve() as u32;
    let region = Region::create(&cfg.region.path, workers, cfg.region.slots_per_core)
        .with_context(|| {
            format!(
                "cannot create the stats region {}",
                cfg.region.path.display()
            )
        })?;
    let region = Arc::new(region);

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        // Not ignored, or a blocked SIGHUP would be discarded: a thread
        // started before the mask (none should be) runs the handler.
        libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t);
    }
    // Blocked here, before any thread starts (they inherit the mask): the
    // signals stay pending for the main thread's wait below, which then
    // sleeps until one comes instead of waking 50 times a second.
    let signals = block_signals();

    let config_path = config.map(Path::to_path_buf);
    let mgmt_settings = match cfg.mgmt.enabled {
        true => Some(mgmt_config(&cfg, config_path)?),
        false => None,
    };
    let dp = Dataplane::start(cfg, region.clone())?;
    for (transport, address) in &dp.listening {
        tracing::info!(transport = transport.name(), %address, "listening");
    }
    let _mgmt = match mgmt_settings {
        Some(mut mc) => {
            mc.status.listeners = listener_info(&dp.listening);
            match mgmt::spawn(region, mc) {
                Ok(h) => {
                    tracing::info!(address = %h.local_addr(), "management listening");
                    Some(h)
                }
                Err(e) => {
                    dp.request_shutdown();
                    let _ = dp.join();
                    return Err(anyhow::anyhow!("management service: {e}"));
                }
            }
        }
        None => {
            drop(region);
            None
        }
    };
    tracing::info!(workers, "rtedge running");
    // The management API asks for reloads through the region's control
    // words (it may run in another process).
    let control = dp.shared().region.clone();
    let mut reloads_asked = control.control().users_reload_requests();
    loop {
        let ask = wait_signal(&signals, STOP_POLL);
        if SIGNALLED.load(Ordering::Relaxed) || ask == Some(SignalAsk::Stop) {
            tracing::info!("shutting down: closing WebSocket peers with 1001");
            dp.request_shutdown();
            break;
        }
        let asked = control.control().users_reload_requests();
        if ask == Some(SignalAsk::Reload)
            || HUP.swap(false, Ordering::Relaxed)
            || asked != reloads_asked
        {
            reloads_asked = asked;
            reload_users(&dp);
        }
        if dp.is_finished() {
            break;
        }
    }
    dp.join().context("data plane")?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_signals_are_waited_for_and_told_apart() {
        // Only this test thread blocks them, and the signals are sent to it
        // alone, so the rest of the test process is not affected.
        let set = block_signals();
        let t0 = std::time::Instant::now();
        assert_eq!(wait_signal(&set, Duration::from_millis(30)), None);
        assert!(t0.elapsed() >= Duration::from_millis(25));
        // SAFETY: signals this thread, where both are blocked (pending).
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        assert_eq!(
            wait_signal(&set, Duration::from_secs(5)),
            Some(SignalAsk::Reload)
        );
        // SAFETY: as above.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(
            wait_signal(&set, Duration::from_secs(5)),
            Some(SignalAsk::Stop)
        );
    }
}
