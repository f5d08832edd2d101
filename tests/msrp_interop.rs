//! Interoperation with another RFC 4976 relay: Kamailio 5.6's `msrp`
//! module (Debian packages `kamailio` and `kamailio-websocket-modules`),
//! configured as `bench/msrp/kamailio-msrp.cfg`, the cmap example of its
//! admin guide. A AUTHs at rtedge, B at Kamailio (digest, RFC 4976 §5.1).
//! A's SENDs go rtedge → Kamailio over rtedge's outbound next-hop
//! connection, B's go Kamailio → rtedge over Kamailio's. Each relay pops
//! itself from To-Path and pushes itself onto From-Path (§6.4), answers
//! the SEND hop by hop, and the body arrives intact. A downstream error
//! from Kamailio comes back to A as a failure REPORT (§6.4.1), which
//! Kamailio itself does not generate.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::msrp::{
    Client, QUIET, REALM, assert_failure_report, exchange, relay_config, send_frame,
};
use common::{Server, TempDir, free_port, required_tool};
use dataplane::region::{Counter, MsrpMethod};

/// Kamailio's password for every user (its cmap example checks one
/// password, whatever the user name).
const KAMAILIO_PASSWORD: &str = "builder";

/// A Kamailio process group, killed on drop (its main process and the
/// workers it forks).
struct Kamailio {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Kamailio {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group; no memory is
        // shared with it.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Starts Kamailio with the benchmark's configuration on a free loopback
/// port, or None when it is not installed (outside CI).
fn start_kamailio() -> Option<Kamailio> {
    let bin = required_tool("kamailio", "kamailio kamailio-websocket-modules")?;
    let dir = TempDir::new("kamailio");
    let port = free_port();
    let cfg = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/msrp/kamailio-msrp.cfg"),
    )
    .expect("bench/msrp/kamailio-msrp.cfg")
    .replace("KAM_PORT", &port.to_string())
    .replace("KAM_PASS", KAMAILIO_PASSWORD)
    .replace("KAM_CHILDREN", "1")
    .replace("KAM_RUNDIR", &dir.path().display().to_string())
    .replace("rtedge.bench", REALM);
    let cfg_path = dir.path().join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).expect("write kamailio.cfg");
    let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log file");
    let child = Command::new(bin)
        .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
        .arg(&cfg_path)
        .arg("-P")
        .arg(dir.path().join("kamailio.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .expect("spawn kamailio");
    let k = Kamailio {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(k.addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "kamailio did not listen on {}:\n{}",
            k.addr,
            k.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(k)
}

/// Kamailio and rtedge running, A AUTHed at rtedge and B at Kamailio; or
/// None when Kamailio is not installed (outside CI).
async fn pair_across() -> Option<(Kamailio, Server, Client, Client)> {
    let kamailio = start_kamailio()?;
    let rtedge = relay_config(1).start();
    let mut a = Client::connect(rtedge.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect(kamailio.addr, "b").await;
    b.authed_as("bob", KAMAILIO_PASSWORD).await;
    Some((kamailio, rtedge, a, b))
}

/// A at rtedge and B at Kamailio relay to each other both ways, through
/// both relays' outbound connections.
#[tokio::test]
async fn relays_to_and_from_kamailio() {
    let Some((kamailio, rtedge, mut a, mut b)) = pair_across().await else {
        return;
    };
    assert!(
        b.relay_uri
            .starts_with(&format!("msrp://{}/", kamailio.addr)),
        "Kamailio's Use-Path: {}",
        b.relay_uri
    );
    // `exchange` checks From-Path as [B's relay, A's relay, A] and back.
    exchange(&mut a, &mut b).await;
    assert_eq!(
        rtedge.counter(Counter::MsrpRequestsRelayed(MsrpMethod::Send)),
        2
    );
    assert_eq!(rtedge.counter(Counter::MsrpFailureReports), 0);
    let infos = rtedge.connection_infos();
    let hop = format!("msrp next-hop msrp://{}", kamailio.addr);
    assert!(infos.contains(&hop), "{hop} not in {infos:?}");
}

/// A SEND to a session Kamailio does not know: Kamailio answers rtedge's
/// SEND with 481, and rtedge, which already answered A hop by hop, tells
/// A in a failure REPORT `000 481` (RFC 4976 §6.4.1). B's real session
/// still relays afterwards.
#[tokio::test]
async fn a_kamailio_error_comes_back_as_a_failure_report() {
    let Some((kamailio, rtedge, mut a, mut b)) = pair_across().await else {
        return;
    };
    let gone = format!("msrp://{}/nosuchsession;tcp", kamailio.addr);
    let (ar, au, bu) = (a.relay_uri.clone(), a.uri.clone(), b.uri.clone());
    a.send(&send_frame(
        "gone1x",
        &[&ar, &gone, &bu],
        &au,
        "m-gone",
        b"lost",
    ))
    .await;
    let ok = a.read().await;
    assert_eq!(ok.first, "MSRP gone1x 200 OK", "{ok:?}");
    let rep = a.read().await;
    assert_failure_report(&rep, &au, &ar, "m-gone", 481);
    assert_eq!(rtedge.counter(Counter::MsrpFailureReports), 1);
    b.quiet(QUIET).await;
    exchange(&mut a, &mut b).await;
}
