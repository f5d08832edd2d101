//! The `rtedge` command: `run` (the default), `check-config`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataplane::config::Config;
use dataplane::reactor::{Dataplane, sys};
use dataplane::region::Region;
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
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(None),
        Some(Command::Run { config }) => run(config.as_deref()),
        Some(Command::CheckConfig { file }) => check_config(&file),
    };
    if let Err(e) = result {
        eprintln!("rtedge: {e:#}");
        std::process::exit(1);
    }
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
    }

    let dp = Dataplane::start(cfg, region)?;
    for (transport, address) in &dp.listening {
        tracing::info!(transport = transport.name(), %address, "listening");
    }
    tracing::info!(workers, "rtedge running");
    loop {
        if SIGNALLED.load(Ordering::Relaxed) {
            tracing::info!("shutting down: closing WebSocket peers with 1001");
            dp.request_shutdown();
            break;
        }
        if dp.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    dp.join().context("data plane")?;
    tracing::info!("stopped");
    Ok(())
}
