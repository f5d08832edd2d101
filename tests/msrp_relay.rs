//! End-to-end MSRP relay tests (RFC 4975, RFC 4976, RFC 7977) against the
//! real binary: raw TCP clients and a WebSocket client (`msrp`
//! sub-protocol) write frames as text from the RFC grammar and read them
//! with their own small parser (not the relay's).

mod common;
mod mgmt_common;

use common::msrp::{
    Client, Frame, REALM, USERS, auth_frame, authed, authorization, param, parse, relay,
    send_frame, session_of,
};
use common::{IO_TIMEOUT, ServerConfig, tcp, within, ws_client_over};
use dataplane::region::{AuthResult, Counter, MsrpMethod, MsrpStatus};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn auth_challenge_success_bounds_and_failure() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let relay_uri = format!("msrp://{addr};tcp");

    // No credentials: 401 with a Digest challenge.
    let mut c = Client::connect(addr, "alice").await;
    let from = c.uri.clone();
    c.send(&auth_frame("t0aa", &relay_uri, &from, None, None))
        .await;
    let r = c.read().await;
    assert_eq!(r.status(), Some(401));
    assert_eq!(r.tid, "t0aa");
    let ch = r.header("WWW-Authenticate").expect("challenge");
    assert!(ch.starts_with("Digest "), "{ch}");
    assert!(ch.contains(&format!("realm=\"{REALM}\"")), "{ch}");
    assert_eq!(r.header("To-Path"), Some(from.as_str()));

    // Correct digest: 200 with Use-Path and Expires.
    let r = c.auth_with("alice", "wonderland", Some(600)).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let up = r.header("Use-Path").expect("Use-Path");
    assert!(up.starts_with(&format!("msrp://{addr}/")), "{up}");
    assert!(up.ends_with(";tcp"), "{up}");
    assert_eq!(r.header("Expires"), Some("600"));

    // Expires out of bounds: 423 with Min-Expires / Max-Expires.
    let r = c.auth_with("alice", "wonderland", Some(5)).await;
    assert_eq!(r.status(), Some(423), "{r:?}");
    assert_eq!(r.header("Min-Expires"), Some("60"));
    let r = c.auth_with("alice", "wonderland", Some(999_999)).await;
    assert_eq!(r.status(), Some(423), "{r:?}");
    assert_eq!(r.header("Max-Expires"), Some("3600"));

    // Wrong password: 403.
    let mut d = Client::connect(addr, "mallory").await;
    let r = d.auth_with("alice", "not-it", None).await;
    assert_eq!(r.status(), Some(403), "{r:?}");

    srv.wait_counter(Counter::MsrpAuth(AuthResult::Ok), 1).await;
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Challenged), 5)
        .await;
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Failed), 1)
        .await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::IntervalOutOfBounds), 2)
        .await;
    assert_eq!(srv.gauge(Counter::MsrpSessionsActive), 1);
}

/// A sends to B through the relay: B gets the SEND with the relay's URI
/// moved to From-Path and the body intact; A gets the relay's 200; B's 200
/// is absorbed.
async fn relay_pair(addr: SocketAddr, n: usize) {
    let mut a = authed(addr, &format!("a{n}"), "alice", "wonderland").await;
    let mut b = authed(addr, &format!("b{n}"), "bob", "builder").await;
    let body = format!("hello bob #{n}, from alice\r\nline two ✓").into_bytes();
    let tid = format!("snd{n}x");
    a.send(&send_frame(
        &tid,
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        &format!("m{n}"),
        &body,
    ))
    .await;
    let got = b.read().await;
    assert_eq!(got.method(), Some("SEND"), "{got:?}");
    assert_eq!(got.header("To-Path"), Some(b.uri.as_str()));
    assert_eq!(
        got.header("From-Path"),
        Some(format!("{} {} {}", b.relay_uri, a.relay_uri, a.uri).as_str()),
        "{got:?}"
    );
    assert_eq!(got.header("Message-ID"), Some(format!("m{n}").as_str()));
    assert_eq!(got.body, body);
    assert_eq!(got.flag, b'$');
    assert_ne!(got.tid, tid, "the relay uses its own transaction id");
    let ok = a.read().await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.tid, tid);
    // B answers; the relay absorbs it (hop by hop).
    b.send(
        format!(
            "MSRP {} 200 OK\r\nTo-Path: {}\r\nFrom-Path: {}\r\n-------{}$\r\n",
            got.tid,
            got.header("From-Path").unwrap(),
            b.uri,
            got.tid
        )
        .as_bytes(),
    )
    .await;
    a.quiet(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn send_relays_between_two_tcp_clients() {
    let srv = relay(1);
    relay_pair(srv.addrs[0], 0).await;
    srv.wait_counter(Counter::MsrpRequestsRelayed(MsrpMethod::Send), 1)
        .await;
    assert!(srv.counter(Counter::MsrpRelayedBytes) > 0);
    assert!(srv.counter(Counter::MsrpRequestsReceived(MsrpMethod::Send)) >= 1);
    // The relay latency histogram saw the forwarded SEND.
    let h = srv
        .region()
        .snapshot_counters()
        .histogram(dataplane::region::Histogram::RelayLatency);
    assert!(h.count >= 1, "{h:?}");
}

#[tokio::test]
async fn send_relays_across_cores() {
    let srv = relay(2);
    let before = srv.counter(Counter::InboxMessages);
    let addr = srv.addrs[0];
    // SO_REUSEPORT spreads connections: with 8 pairs some A and B land on
    // different workers.
    for n in 0..8 {
        relay_pair(addr, n).await;
    }
    assert_eq!(
        srv.counter(Counter::MsrpRequestsRelayed(MsrpMethod::Send)),
        8
    );
    assert!(
        srv.counter(Counter::InboxMessages) > before,
        "no cross-core hand-off happened"
    );
}

#[tokio::test]
async fn unknown_session_gets_481() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let bogus = format!("msrp://{addr}/AAAAAAAAAAAAAAAAAAAAAA;tcp");
    a.send(&send_frame(
        "u481",
        &[&bogus, "msrp://127.0.0.1:9/x;tcp"],
        &a.uri,
        "m1",
        b"hi",
    ))
    .await;
    let r = a.read().await;
    assert_eq!(r.status(), Some(481), "{r:?}");
    assert_eq!(r.tid, "u481");
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::NoSession), 1)
        .await;
}

#[tokio::test]
async fn kamailio_crash_frame_is_answered_or_closed_and_others_are_served() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut bad = Client::connect(addr, "bad").await;
    bad.send(b"MSRP abc\r\n-------abc$\r\n").await;
    let rest = bad.expect_closed().await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("MSRP abc 400"),
        "{text}"
    );
    // The relay still serves others.
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    a.send(&send_frame(
        "k1x1",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m1",
        b"still alive",
    ))
    .await;
    assert_eq!(b.read().await.body, b"still alive");
}

async fn ws_frame(ws: &mut common::Ws<TcpStream>) -> Frame {
    match within("ws message", ws.next()).await {
        Some(Ok(Message::Text(t))) => parse(t.as_bytes()).expect("one frame").0,
        other => panic!("unexpected {other:?}"),
    }
}

/// Without `use_path_addr`: each listener hands out its own address in
/// Use-Path, and the relay recognises both as itself (RFC 4975 §6.1).
#[tokio::test]
async fn websocket_client_relays_to_tcp_client() {
    ws_tcp_relay(None).await;
}

/// With `use_path_addr`: one authority for both listeners.
#[tokio::test]
async fn websocket_client_relays_to_tcp_client_with_use_path_addr() {
    ws_tcp_relay(Some("127.0.0.1:2855")).await;
}

async fn ws_tcp_relay(use_path_addr: Option<&str>) {
    let mut cfg = ServerConfig::new()
        .workers(2)
        .listen_msrp()
        .listen_ws()
        .sub_protocols(&["msrp"])
        .msrp_users(REALM, USERS);
    if let Some(a) = use_path_addr {
        cfg = cfg.msrp(&format!("use_path_addr = \"{a}\""));
    }
    let srv = cfg.start();
    let tcp_addr = srv.addrs[0];
    let ws_addr = srv.addrs[1];
    let mut b = authed(tcp_addr, "b", "bob", "builder").await;

    let s = tcp(ws_addr).await;
    let mut ws = ws_client_over(s, &format!("ws://{ws_addr}/"), Some("msrp")).await;
    let ws_uri = "msrp://k3j2.invalid:2855/wsa1;ws";
    let relay_uri = format!("msrp://{ws_addr};ws");
    let send = |bytes: Vec<u8>| Message::Text(String::from_utf8(bytes).unwrap().into());
    ws.send(send(auth_frame("w1aa", &relay_uri, ws_uri, None, None)))
        .await
        .unwrap();
    let r = ws_frame(&mut ws).await;
    assert_eq!(r.status(), Some(401), "{r:?}");
    let nonce = param(r.header("WWW-Authenticate").unwrap(), "nonce");
    let authz = authorization("alice", "wonderland", &nonce, &relay_uri, 1);
    ws.send(send(auth_frame(
        "w2aa",
        &relay_uri,
        ws_uri,
        Some(&authz),
        None,
    )))
    .await
    .unwrap();
    let r = ws_frame(&mut ws).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let use_path = r.header("Use-Path").unwrap().to_string();
    assert!(use_path.ends_with(";ws"), "{use_path}");
    let authority = use_path_addr.map_or(ws_addr.to_string(), str::to_string);
    assert!(
        use_path.starts_with(&format!("msrp://{authority}/")),
        "{use_path}"
    );
    if use_path_addr.is_none() {
        assert!(b.relay_uri.starts_with(&format!("msrp://{tcp_addr}/")));
    }

    // WS → TCP.
    ws.send(send(send_frame(
        "w3aa",
        &[&use_path, &b.relay_uri, &b.uri],
        ws_uri,
        "mw",
        b"over websocket",
    )))
    .await
    .unwrap();
    let got = b.read().await;
    assert_eq!(got.body, b"over websocket");
    assert_eq!(
        got.header("From-Path"),
        Some(format!("{} {use_path} {ws_uri}", b.relay_uri).as_str())
    );
    let ok = ws_frame(&mut ws).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.tid, "w3aa");

    // TCP → WS: each frame in one WebSocket message.
    b.send(&send_frame(
        "w4bb",
        &[&b.relay_uri, &use_path, ws_uri],
        &b.uri,
        "mb",
        b"back to the browser",
    ))
    .await;
    let got = ws_frame(&mut ws).await;
    assert_eq!(got.method(), Some("SEND"));
    assert_eq!(got.body, b"back to the browser");
    assert_eq!(got.header("To-Path"), Some(ws_uri));
    assert_eq!(b.read().await.status(), Some(200));
}

/// Polls `GET /api/msrp/sessions` (bounded) until `pred` holds.
async fn wait_sessions(
    http: &mgmt_common::Http,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let v = http.get_json("/api/msrp/sessions").await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn listed<'a>(v: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|e| e["id"] == id)
}

/// Kamailio's `msrp.cmaplist` / `cmapdel` through the management service:
/// every session is listed with its user, peer, connection and expiry, on
/// the core its id names; DELETE drops one (the relay then answers 481 for
/// it); a closed connection's sessions leave the list.
#[tokio::test]
async fn mgmt_lists_and_drops_sessions() {
    let srv = ServerConfig::new()
        .workers(2)
        .listen_msrp()
        .msrp_users(REALM, USERS)
        .with_mgmt()
        .start();
    let addr = srv.addrs[0];
    let http = mgmt_common::Http::new(srv.mgmt.expect("management service"), None);
    let a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let mut c = authed(addr, "c", "alice", "wonderland").await;
    let (sa, sb, sc) = (
        session_of(&a.relay_uri),
        session_of(&b.relay_uri),
        session_of(&c.relay_uri),
    );
    let v = wait_sessions(&http, "three sessions", |v| v["total"] == 3).await;
    let now = dataplane::region::unix_time_ms();
    for (sid, user, cl) in [(&sa, "alice", &a), (&sb, "bob", &b), (&sc, "alice", &c)] {
        let e = listed(&v, sid).unwrap_or_else(|| panic!("{sid} not listed: {v}"));
        assert_eq!(e["user"], user, "{e}");
        let peer = cl.local_addr().to_string();
        assert_eq!(e["peer"], peer.as_str(), "{e}");
        let core = u64::from_str_radix(&sid[..2], 16).unwrap();
        assert_eq!(e["core"], core, "{e}");
        // The connection id is the one the connection dump uses.
        let conn = http
            .get_json(&format!("/api/ws/connections/{}", e["conn_id"]))
            .await;
        assert_eq!(conn["peer"], peer.as_str(), "{conn}");
        // Default Expires: auth_max_expires (3600 s).
        let exp = e["expires_unix_ms"].as_u64().expect("expiry");
        assert!(
            exp > now + 3_590_000 && exp <= now + 3_601_000,
            "{exp} vs {now}"
        );
        assert!(
            e["expires"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    // JSON-RPC msrp.cmaplist: the same list.
    let r = http
        .rpc(&serde_json::json!({"jsonrpc": "2.0", "method": "msrp.cmaplist", "id": 1}))
        .await
        .json();
    assert_eq!(r["result"]["total"], 3, "{r}");
    assert!(listed(&r["result"], &sb).is_some(), "{r}");

    // Unknown, malformed and out-of-range ids: 404.
    for bad in [
        "00AAAAAAAAAAAAAAAAAAAA".to_string(),
        "abc".to_string(),
        format!("ff{}", &sb[2..]),
    ] {
        http.delete(&format!("/api/msrp/sessions/{bad}"))
            .await
            .expect_error(404, "unknown MSRP session");
    }

    // Drop B's session: it leaves the list, and the relay no longer knows it.
    let r = http.delete(&format!("/api/msrp/sessions/{sb}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["id"], sb.as_str());
    assert_eq!(j["queued"], true);
    wait_sessions(&http, "B dropped", |v| {
        v["total"] == 2 && listed(v, &sb).is_none()
    })
    .await;
    let deadline = Instant::now() + IO_TIMEOUT;
    while srv.gauge(Counter::MsrpSessionsActive) != 2 {
        assert!(Instant::now() < deadline, "sessions-active gauge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.send(&send_frame(
        "dr01",
        &[&c.relay_uri, &b.relay_uri, &b.uri],
        &c.uri,
        "m1",
        b"to a dropped session",
    ))
    .await;
    // Same core: 481 at once; another core: the hop-by-hop 200, then a
    // failure REPORT with 481 from the owning core.
    let r = c.read().await;
    if r.status() != Some(481) {
        assert_eq!(r.status(), Some(200), "{r:?}");
        let rep = c.read().await;
        assert_eq!(rep.method(), Some("REPORT"), "{rep:?}");
        assert!(
            rep.header("Status")
                .is_some_and(|s| s.starts_with("000 481")),
            "{rep:?}"
        );
    }
    b.quiet(Duration::from_millis(100)).await;
    http.delete(&format!("/api/msrp/sessions/{sb}"))
        .await
        .expect_error(404, "unknown MSRP session");

    // A's connection closes: its session goes with it.
    drop(a);
    wait_sessions(&http, "A closed", |v| {
        v["total"] == 1 && listed(v, &sc).is_some()
    })
    .await;
}

/// RFC 4975 §7.1.2 / RFC 4976 §6.4: a REPORT is forwarded (its transaction
/// id kept) and never answered; an unknown method is forwarded (not 501)
/// and its response comes back end to end with the original transaction
/// id.
#[tokio::test]
async fn report_and_unknown_method_are_forwarded() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let to = format!("{} {} {}", a.relay_uri, b.relay_uri, b.uri);
    a.send(
        format!(
            "MSRP rp01 REPORT\r\nTo-Path: {to}\r\nFrom-Path: {}\r\nMessage-ID: m9\r\nByte-Range: 1-5/5\r\nStatus: 000 200 OK\r\n-------rp01$\r\n",
            a.uri
        )
        .as_bytes(),
    )
    .await;
    let got = b.read().await;
    assert_eq!(got.method(), Some("REPORT"), "{got:?}");
    assert_eq!(got.tid, "rp01");
    assert_eq!(got.header("Status"), Some("000 200 OK"));
    assert_eq!(got.header("To-Path"), Some(b.uri.as_str()));
    a.quiet(Duration::from_millis(150)).await;

    a.send(
        format!(
            "MSRP nk01 NICKNAME\r\nTo-Path: {to}\r\nFrom-Path: {}\r\nUse-Nickname: \"Alice\"\r\n-------nk01$\r\n",
            a.uri
        )
        .as_bytes(),
    )
    .await;
    let got = b.read().await;
    assert_eq!(got.method(), Some("NICKNAME"), "{got:?}");
    assert_eq!(got.header("Use-Nickname"), Some("\"Alice\""));
    assert_ne!(got.tid, "nk01", "the relay uses its own transaction id");
    b.send(
        format!(
            "MSRP {} 200 OK\r\nTo-Path: {}\r\nFrom-Path: {}\r\n-------{}$\r\n",
            got.tid,
            got.header("From-Path").unwrap(),
            b.uri,
            got.tid
        )
        .as_bytes(),
    )
    .await;
    let r = a.read().await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.tid, "nk01");
    assert_eq!(r.header("To-Path"), Some(a.uri.as_str()));
    assert_eq!(
        r.header("From-Path"),
        Some(format!("{} {} {}", a.relay_uri, b.relay_uri, b.uri).as_str())
    );
}
