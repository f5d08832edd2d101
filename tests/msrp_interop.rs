//! Interoperation with another RFC 4976 relay: Kamailio 5.6's `msrp`
//! module (Debian packages `kamailio` and `kamailio-websocket-modules`),
//! configured as `bench/msrp/kamailio-msrp.cfg`, the cmap example of its
//! admin guide. A AUTHs at rtedge, B at Kamailio (digest, RFC 4976 §5.1).
//! A's SENDs go rtedge → Kamailio over rtedge's outbound next-hop
//! connection, B's go Kamailio → rtedge over Kamailio's. Each relay pops
//! itself from To-Path and pushes itself onto From-Path (§6.4), answers
//! the SEND hop by hop, and the body arrives intact. A downstream error
//! from Kamailio comes back to A as a failure REPORT (§6.4.1), which
//! Kamailio itself does not generate. B may also reach Kamailio over
//! WebSocket (RFC 7977), and A may AUTH at Kamailio through rtedge.
//! Kamailio answers 501 to chunks of about 11 kB and more; rtedge reports
//! those too, and with a smaller `max_chunk_size` it re-chunks what it
//! sends on so that they pass.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::msrp::{
    Chunk, Client, QUIET, REALM, assert_failure_report, auth_frame, authorization, chunk_frame,
    exchange, param, relay_config, response_to, send_frame,
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
    let b = Client::connect(kamailio.addr, "b").await;
    let (a, b) = authed_pair(&rtedge, &kamailio, b).await;
    Some((kamailio, rtedge, a, b))
}

/// A connected and AUTHed at `rtedge`, and `b` (connected to Kamailio
/// over TCP or WebSocket) AUTHed there.
async fn authed_pair(rtedge: &Server, kamailio: &Kamailio, mut b: Client) -> (Client, Client) {
    let mut a = Client::connect(rtedge.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    b.authed_as("bob", KAMAILIO_PASSWORD).await;
    assert!(
        b.relay_uri
            .starts_with(&format!("msrp://{}/", kamailio.addr)),
        "Kamailio's Use-Path: {}",
        b.relay_uri
    );
    (a, b)
}

/// A at rtedge and B at Kamailio relay to each other both ways, through
/// both relays' outbound connections.
#[tokio::test]
async fn relays_to_and_from_kamailio() {
    let Some((kamailio, rtedge, mut a, mut b)) = pair_across().await else {
        return;
    };
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

/// `from` sends the message `message` in chunks of `sizes` bytes (one
/// SEND each, `+` on all but the last) toward `to`, with transaction ids
/// `{tag}{i}x`.
async fn send_in_chunks(
    from: &mut Client,
    to: &[&str],
    tag: &str,
    message: &[u8],
    sizes: &[usize],
) {
    let me = from.uri.clone();
    let mut at = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let flag = if i + 1 == sizes.len() { '$' } else { '+' };
        let body = &message[at..at + n];
        let place = Chunk {
            start: at + 1,
            total: message.len(),
            flag,
        };
        let f = chunk_frame(
            &format!("{tag}{i}x"),
            to,
            &me,
            &format!("m-{tag}"),
            &[],
            place,
            body,
        );
        from.send(&f).await;
        at += n;
    }
    assert_eq!(at, message.len());
}

/// What `to` receives of message `m-{tag}` until its last chunk: the
/// message's bytes, and the largest chunk body. The chunks must come in
/// order, each starting (Byte-Range) where the one before ended. Each is
/// answered 200 (hop by hop, to the relay that sent it).
async fn receive_chunks(to: &mut Client, tag: &str, total: usize) -> (Vec<u8>, usize) {
    let me = to.uri.clone();
    let mut message = Vec::with_capacity(total);
    let mut largest = 0;
    loop {
        let got = to.read().await;
        assert_eq!(got.method(), Some("SEND"), "{got:?}");
        assert_eq!(got.header("Message-ID"), Some(format!("m-{tag}").as_str()));
        let range = got.header("Byte-Range").expect("Byte-Range");
        let (start, rest) = range.split_once('-').expect("range");
        assert_eq!(
            rest.rsplit('/').next(),
            Some(total.to_string().as_str()),
            "{range}"
        );
        let start: usize = start.parse().expect("range-start");
        assert_eq!(start, message.len() + 1, "out of order: {range}");
        message.extend_from_slice(&got.body);
        largest = largest.max(got.body.len());
        to.send(&response_to(&got, 200, "OK", &me)).await;
        if got.flag == b'$' {
            return (message, largest);
        }
        assert_eq!(got.flag, b'+', "{got:?}");
    }
}

/// Kamailio's msrp module cannot take chunks of about 11 kB or more: it
/// answers 501. rtedge keeps to the hop-by-hop rules and loses nothing
/// silently: every 20 kB chunk either reaches B or comes back to A as a
/// failure REPORT. With `max_chunk_size = 8192` rtedge re-chunks
/// (RFC 4976 §6.6) what it sends on, and the 45 kB message reaches B whole
/// through Kamailio. The other way, a chunked message from B comes through
/// Kamailio and rtedge with its chunks in order.
#[tokio::test]
async fn chunked_messages_cross_both_relays() {
    let Some(kamailio) = start_kamailio() else {
        return;
    };
    let message: Vec<u8> = (0..45_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sizes = [20_000, 20_000, 5_000];
    for max_chunk in [None, Some(8192)] {
        let mut config = relay_config(1);
        if let Some(n) = max_chunk {
            config = config.msrp(&format!("max_chunk_size = {n}"));
        }
        let rtedge = config.start();
        let b = Client::connect(kamailio.addr, "b").await;
        let (mut a, mut b) = authed_pair(&rtedge, &kamailio, b).await;
        let (ar, br, bu) = (a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone());
        send_in_chunks(&mut a, &[&ar, &br, &bu], "big", &message, &sizes).await;
        // The relay answers each SEND at once (hop by hop); a failure
        // REPORT for an earlier chunk may come in between.
        let mut oks = Vec::new();
        let mut reports = Vec::new();
        while oks.len() < sizes.len() {
            let f = a.read().await;
            if f.method() == Some("REPORT") {
                reports.push(f);
            } else {
                assert_eq!(f.status(), Some(200), "{f:?}");
                oks.push(f.tid);
            }
        }
        assert_eq!(oks, ["big0x", "big1x", "big2x"]);
        if max_chunk.is_some() {
            let (got, largest) = receive_chunks(&mut b, "big", message.len()).await;
            assert!(got == message, "the message arrived altered");
            assert!(largest <= 8192, "a {largest}-byte chunk");
            a.quiet(QUIET).await;
            assert!(reports.is_empty(), "{reports:?}");
        } else {
            // Each chunk: delivered, or reported to A with Kamailio's code.
            let mut delivered = 0;
            while let Some(f) = b.read_within(QUIET).await {
                assert_eq!(f.method(), Some("SEND"), "{f:?}");
                delivered += 1;
            }
            while let Some(rep) = a.read_within(QUIET).await {
                reports.push(rep);
            }
            for rep in &reports {
                // Kamailio's own error code, whatever it is, but an error.
                let code: u16 = rep
                    .header("Status")
                    .and_then(|s| s.get(4..7))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                assert!((400..700).contains(&code), "{rep:?}");
                assert_failure_report(rep, &a.uri, &ar, "m-big", code);
            }
            assert_eq!(
                delivered + reports.len(),
                sizes.len(),
                "a chunk was lost silently"
            );
            assert_eq!(
                rtedge.counter(Counter::MsrpFailureReports),
                reports.len() as u64
            );
        }
        // B to A: 4 + 4 + 2 kB.
        let small = &message[..10_000];
        let (au,) = (a.uri.clone(),);
        send_in_chunks(
            &mut b,
            &[&br, &ar, &au],
            "back",
            small,
            &[4_000, 4_000, 2_000],
        )
        .await;
        let (got, _) = receive_chunks(&mut a, "back", small.len()).await;
        assert!(got == small, "the message from B arrived altered");
        for i in 0..3 {
            let ok = b.read().await;
            assert_eq!(ok.first, format!("MSRP back{i}x 200 OK"), "{ok:?}");
        }
        b.quiet(QUIET).await;
    }
}

/// A authenticates at Kamailio through rtedge: an AUTH whose To-Path
/// names a relay beyond rtedge is forwarded (RFC 4976 §5, §6.4), and
/// Kamailio's 401 and 200 come back end to end with A's transaction ids
/// restored; the digest URI is the right-most To-Path URI, Kamailio's.
#[tokio::test]
async fn auth_at_kamailio_through_rtedge() {
    let Some((kamailio, rtedge, mut a, _b)) = pair_across().await else {
        return;
    };
    let far = format!("msrp://{};tcp", kamailio.addr);
    let to = format!("{} {far}", a.relay_uri);
    let me = a.uri.clone();
    a.send(&auth_frame("ka1x", &to, &me, None, None)).await;
    let r = a.read().await;
    assert_eq!(r.first, "MSRP ka1x 401 Unauthorized", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(me.as_str()), "{r:?}");
    let nonce = param(r.header("WWW-Authenticate").expect("challenge"), "nonce");
    let authz = authorization("alice", KAMAILIO_PASSWORD, &nonce, &far, 1);
    a.send(&auth_frame("ka2x", &to, &me, Some(&authz), None))
        .await;
    let r = a.read().await;
    assert_eq!(r.tid, "ka2x", "{r:?}");
    assert_eq!(r.status(), Some(200), "{r:?}");
    let use_path = r.header("Use-Path").expect("Use-Path");
    assert!(
        use_path.starts_with(&format!("msrp://{}/", kamailio.addr)),
        "{r:?}"
    );
    assert_eq!(
        rtedge.counter(Counter::MsrpRequestsRelayed(MsrpMethod::Auth)),
        2
    );
    a.quiet(QUIET).await;
}

/// B reaches Kamailio over WebSocket (RFC 7977, Kamailio's `websocket`
/// module on the same port): SENDs cross rtedge and Kamailio's WebSocket
/// side both ways.
#[tokio::test]
async fn relays_to_a_websocket_client_of_kamailio() {
    let Some(kamailio) = start_kamailio() else {
        return;
    };
    let rtedge = relay_config(1).start();
    let b = Client::connect_ws(kamailio.addr, "b").await;
    let (mut a, mut b) = authed_pair(&rtedge, &kamailio, b).await;
    exchange(&mut a, &mut b).await;
    assert!(b.last_text.is_some(), "B's SEND came over its WebSocket");
}
