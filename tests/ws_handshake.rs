//! Opening handshake (RFC 6455 §4.2) against the real binary: sub-protocol
//! negotiation, every rejection with its status, allow-lists, CORS, HTTP
//! Digest authentication, size and time limits, and `ws.disable`.

mod common;

use common::*;
use dataplane::region::{Counter, HandshakeReason as H, Protocol};
use md5::{Digest, Md5};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Sends `req` on a fresh connection and reads the response; for a
/// rejection, also expects the server to close the connection.
async fn exchange(addr: SocketAddr, req: &str) -> HttpResponse {
    let mut r = Raw::connect(addr).await;
    r.send(req.as_bytes()).await;
    let resp = r.read_response().await;
    if resp.status != 101 {
        let connection = resp.header("Connection").unwrap_or("").to_ascii_lowercase();
        assert!(
            connection.split(',').any(|t| t.trim() == "close"),
            "a refusal carries Connection: close: {resp:?}"
        );
        r.expect_eof().await;
    }
    resp
}

fn assert_status(resp: &HttpResponse, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
}

#[tokio::test]
async fn sub_protocol_negotiation_server_order_wins() {
    let srv = ServerConfig::new().sub_protocols(&["sip", "echo"]).start();
    let a = srv.addr();

    // An independent client negotiates echo and gets its messages back.
    let s = tcp(a).await;
    let mut ws = ws_client_over(s, &format!("ws://{a}/"), Some("echo")).await;
    ws_echo(&mut ws, Message::text("negotiated")).await;

    // Several offered: the server's order decides, not the client's.
    let resp = exchange(
        a,
        &request(
            "GET",
            "/",
            a,
            &[("Sec-WebSocket-Protocol", Some("echo, sip"))],
        ),
    )
    .await;
    assert_status(&resp, 101, "echo, sip");
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), Some("sip"));
    assert_eq!(resp.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert_eq!(
        resp.header("Upgrade").map(str::to_ascii_lowercase),
        Some("websocket".into())
    );

    // Tokens are exact: "gossip" is not "sip".
    for (offer, what) in [
        (Some("gossip"), "gossip"),
        (Some("SIP"), "upper-case SIP"),
        (Some("xmpp"), "known but not configured"),
        (None, "no Sec-WebSocket-Protocol"),
    ] {
        let resp = exchange(
            a,
            &request("GET", "/", a, &[("Sec-WebSocket-Protocol", offer)]),
        )
        .await;
        assert_status(&resp, 400, what);
        assert!(
            resp.body.contains("sip") && resp.body.contains("echo"),
            "{what}: body must name the supported sub-protocols: {:?}",
            resp.body
        );
        assert_eq!(resp.header("Sec-WebSocket-Protocol"), None, "{what}");
    }

    srv.wait_counter(Counter::Handshakes(H::SubProtocol), 4)
        .await;
    srv.wait_counter(Counter::Handshakes(H::Accepted), 2).await;
}

#[tokio::test]
async fn each_malformed_request_gets_its_status() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let key15 = "AAAAAAAAAAAAAAAAAAAA"; // base64 of 15 bytes
    struct Case {
        what: &'static str,
        req: String,
        status: u16,
        reason: H,
    }
    let cases = vec![
        Case {
            what: "POST",
            req: request("POST", "/", a, &[]),
            status: 405,
            reason: H::Method,
        },
        Case {
            what: "HTTP/1.0",
            req: request("GET", "/", a, &[]).replacen("HTTP/1.1", "HTTP/1.0", 1),
            status: 400,
            reason: H::HttpVersion,
        },
        Case {
            what: "no Upgrade",
            req: request("GET", "/", a, &[("Upgrade", None)]),
            status: 400,
            reason: H::Upgrade,
        },
        Case {
            what: "Upgrade: h2c",
            req: request("GET", "/", a, &[("Upgrade", Some("h2c"))]),
            status: 400,
            reason: H::Upgrade,
        },
        Case {
            what: "no Connection",
            req: request("GET", "/", a, &[("Connection", None)]),
            status: 400,
            reason: H::Connection,
        },
        Case {
            what: "Connection without the Upgrade token",
            req: request(
                "GET",
                "/",
                a,
                &[("Connection", Some("keep-alive, upgraded"))],
            ),
            status: 400,
            reason: H::Connection,
        },
        Case {
            what: "bad key",
            req: request("GET", "/", a, &[("Sec-WebSocket-Key", Some("not a key!"))]),
            status: 400,
            reason: H::Key,
        },
        Case {
            what: "key of 15 bytes",
            req: request("GET", "/", a, &[("Sec-WebSocket-Key", Some(key15))]),
            status: 400,
            reason: H::Key,
        },
        Case {
            what: "no key",
            req: request("GET", "/", a, &[("Sec-WebSocket-Key", None)]),
            status: 400,
            reason: H::Key,
        },
        Case {
            what: "no Host",
            req: request("GET", "/", a, &[("Host", None)]),
            status: 400,
            reason: H::Host,
        },
        Case {
            what: "two Host fields",
            req: request("GET", "/", a, &[]).replacen(
                "\r\n\r\n",
                "\r\nHost: other.example\r\n\r\n",
                1,
            ),
            status: 400,
            reason: H::Host,
        },
        Case {
            what: "two keys",
            req: request("GET", "/", a, &[]).replacen(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n",
                1,
            ),
            status: 400,
            reason: H::Key,
        },
        Case {
            what: "not HTTP at all",
            req: "HELLO\r\n\r\n".to_string(),
            status: 400,
            reason: H::Malformed,
        },
        Case {
            what: "version 8",
            req: request("GET", "/", a, &[("Sec-WebSocket-Version", Some("8"))]),
            status: 426,
            reason: H::Version,
        },
        Case {
            what: "no version",
            req: request("GET", "/", a, &[("Sec-WebSocket-Version", None)]),
            status: 426,
            reason: H::Version,
        },
    ];
    for c in &cases {
        let resp = exchange(a, &c.req).await;
        assert_status(&resp, c.status, c.what);
        match c.status {
            405 => assert_eq!(resp.header("Allow"), Some("GET"), "{}", c.what),
            426 => assert_eq!(
                resp.header("Sec-WebSocket-Version"),
                Some("13"),
                "{}",
                c.what
            ),
            _ => {}
        }
        assert_eq!(resp.header("Sec-WebSocket-Accept"), None, "{}", c.what);
    }
    // Token lists and case-insensitivity are accepted.
    let ok = request(
        "GET",
        "/",
        a,
        &[
            ("Connection", Some("keep-alive, Upgrade")),
            ("Upgrade", Some("WebSocket")),
        ],
    );
    assert_status(&exchange(a, &ok).await, 101, "Connection token list");

    for reason in [
        H::Method,
        H::HttpVersion,
        H::Host,
        H::Upgrade,
        H::Connection,
        H::Key,
        H::Version,
        H::Malformed,
    ] {
        let want = cases.iter().filter(|c| c.reason == reason).count() as u64;
        srv.wait_counter(Counter::Handshakes(reason), want).await;
    }
    srv.wait_counter(Counter::Handshakes(H::Accepted), 1).await;
}

#[tokio::test]
async fn path_host_and_origin_allow_lists() {
    let srv = ServerConfig::new()
        .ws("paths = [\"/ws\"]")
        .ws("hosts = [\"example.com\"]")
        .ws("origins = [\"https://example.com\"]")
        .start();
    let a = srv.addr();
    let good = |path: &str, host: Option<&str>, origin: Option<&str>| {
        request("GET", path, a, &[("Host", host), ("Origin", origin)])
    };
    let origin = Some("https://example.com");
    let host = Some("example.com");

    assert_status(
        &exchange(a, &good("/other", host, origin)).await,
        404,
        "path",
    );
    assert_status(
        &exchange(a, &good("/ws", Some("evil.com"), origin)).await,
        403,
        "host",
    );
    assert_status(
        &exchange(a, &good("/ws", Some("example.com.evil.com"), origin)).await,
        403,
        "host suffix",
    );
    assert_status(
        &exchange(a, &good("/ws", host, Some("https://evil.com"))).await,
        403,
        "origin",
    );
    assert_status(
        &exchange(a, &good("/ws", host, Some("http://example.com"))).await,
        403,
        "origin scheme",
    );
    // Allowed: query ignored for the path, a host entry without a port
    // matches any port, an origin with the scheme's default port is the same
    // origin (RFC 6454 §5).
    assert_status(
        &exchange(a, &good("/ws?user=1", host, origin)).await,
        101,
        "allowed",
    );
    assert_status(
        &exchange(
            a,
            &good(
                "/ws",
                Some("EXAMPLE.com:8443"),
                Some("https://example.com:443"),
            ),
        )
        .await,
        101,
        "allowed with ports",
    );

    srv.wait_counter(Counter::Handshakes(H::Path), 1).await;
    srv.wait_counter(Counter::Handshakes(H::HostNotAllowed), 2)
        .await;
    srv.wait_counter(Counter::Handshakes(H::Origin), 2).await;
    srv.wait_counter(Counter::Handshakes(H::Accepted), 2).await;
}

#[tokio::test]
async fn cors_mode_headers_on_101() {
    for (mode, origin, want) in [
        ("any", Some("https://app.example"), Some("*")),
        (
            "origin",
            Some("https://app.example"),
            Some("https://app.example"),
        ),
        ("origin", None, None),
        ("none", Some("https://app.example"), None),
    ] {
        let srv = ServerConfig::new()
            .workers(1)
            .ws(&format!("cors_mode = \"{mode}\""))
            .start();
        let a = srv.addr();
        let resp = exchange(a, &request("GET", "/", a, &[("Origin", origin)])).await;
        assert_status(&resp, 101, mode);
        assert_eq!(
            resp.header("Access-Control-Allow-Origin"),
            want,
            "cors_mode {mode} with Origin {origin:?}"
        );
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The nonce of the MD5 Digest challenge among the 401's challenges.
fn md5_nonce(resp: &HttpResponse) -> String {
    for value in resp.all("WWW-Authenticate") {
        for ch in value.split("Digest ").skip(1) {
            let is_md5 = ch.contains("algorithm=MD5,")
                || ch
                    .trim_end()
                    .trim_end_matches(',')
                    .ends_with("algorithm=MD5")
                || !ch.contains("algorithm=");
            if is_md5 && let Some(i) = ch.find("nonce=\"") {
                let rest = &ch[i + 7..];
                return rest[..rest.find('"').expect("closing quote")].to_string();
            }
        }
    }
    panic!("no MD5 Digest challenge in {resp:?}");
}

fn digest_authorization(user: &str, realm: &str, pw: &str, nonce: &str, uri: &str) -> String {
    let ha1 = md5_hex(&format!("{user}:{realm}:{pw}"));
    let ha2 = md5_hex(&format!("GET:{uri}"));
    let cnonce = "e2ec1ie7";
    let nc = "00000001";
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm=MD5, response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

#[tokio::test]
async fn http_digest_authentication() {
    let realm = "e2e.example";
    let srv = ServerConfig::new()
        .auth(realm, &[("alice", "wonder land")])
        .start();
    let a = srv.addr();

    let resp = exchange(a, &request("GET", "/ws", a, &[])).await;
    assert_status(&resp, 401, "no credentials");
    let challenges = resp.all("WWW-Authenticate").join(" | ");
    assert!(challenges.contains("Digest "), "{challenges}");
    assert!(
        challenges.contains(&format!("realm=\"{realm}\"")),
        "{challenges}"
    );
    let nonce = md5_nonce(&resp);

    // Right password → 101, on a new connection (one request per connection).
    let authz = digest_authorization("alice", realm, "wonder land", &nonce, "/ws");
    let mut r = Raw::connect(a).await;
    r.send(request("GET", "/ws", a, &[("Authorization", Some(&authz))]).as_bytes())
        .await;
    let ok = r.read_response().await;
    assert_status(&ok, 101, "correct digest");
    r.echo_roundtrip(op::TEXT, b"authenticated").await;

    // Wrong password → 401 with a fresh challenge.
    let bad = digest_authorization("alice", realm, "wonderland", &nonce, "/ws");
    let resp = exchange(
        a,
        &request("GET", "/ws", a, &[("Authorization", Some(&bad))]),
    )
    .await;
    assert_status(&resp, 401, "wrong password");
    assert!(!resp.all("WWW-Authenticate").is_empty());
    // Unknown user.
    let bad = digest_authorization("mallory", realm, "wonder land", &nonce, "/ws");
    let resp = exchange(
        a,
        &request("GET", "/ws", a, &[("Authorization", Some(&bad))]),
    )
    .await;
    assert_status(&resp, 401, "unknown user");

    srv.wait_counter(Counter::Handshakes(H::AuthRequired), 1)
        .await;
    srv.wait_counter(Counter::Handshakes(H::AuthFailed), 2)
        .await;
    srv.wait_counter(Counter::Handshakes(H::Accepted), 1).await;
}

/// SIGHUP reads the users file again: the next handshakes are checked
/// against the new users, and a session opened before stays open.
#[tokio::test]
async fn reloaded_users_apply_to_new_handshakes_only() {
    let realm = "e2e.example";
    let srv = ServerConfig::new().auth(realm, &[("alice", "one")]).start();
    let a = srv.addr();
    let nonce_now = || async { md5_nonce(&exchange(a, &request("GET", "/ws", a, &[])).await) };
    let handshake = |pw: &'static str, nonce: String| async move {
        let authz = digest_authorization("alice", realm, pw, &nonce, "/ws");
        let mut r = Raw::connect(a).await;
        r.send(request("GET", "/ws", a, &[("Authorization", Some(&authz))]).as_bytes())
            .await;
        let resp = r.read_response().await;
        (r, resp)
    };
    let (mut before, resp) = handshake("one", nonce_now().await).await;
    assert_status(&resp, 101, "the first password");

    write_users(&users_file(srv.config.dir.path()), &[("alice", "two")]);
    srv.signal(libc::SIGHUP);
    srv.wait_counter(
        Counter::UsersReloads(dataplane::region::ReloadResult::Ok),
        1,
    )
    .await;
    let (_, resp) = handshake("one", nonce_now().await).await;
    assert_status(&resp, 401, "the old password after the reload");
    let (mut after, resp) = handshake("two", nonce_now().await).await;
    assert_status(&resp, 101, "the new password");
    after.echo_roundtrip(op::TEXT, b"new").await;
    before.echo_roundtrip(op::TEXT, b"still open").await;
}

#[tokio::test]
async fn oversize_request_head_gets_431() {
    let srv = ServerConfig::new()
        .ws("max_request_header_size = 1024")
        .start();
    let a = srv.addr();
    let pad = "x".repeat(2000);

    // A complete head over the limit.
    let req = request("GET", "/", a, &[("X-Padding", Some(&pad))]);
    assert_status(&exchange(a, &req).await, 431, "complete oversize head");

    // A head that never ends: refused once it passes the limit, without
    // waiting for the rest (or for the handshake timeout).
    let mut r = Raw::connect(a).await;
    let mut partial = request("GET", "/", a, &[]);
    partial.truncate(partial.len() - 2); // drop the final CRLF
    partial.push_str(&format!("X-Padding: {pad}"));
    r.send(partial.as_bytes()).await;
    let resp = r.read_response().await;
    assert_status(&resp, 431, "unterminated oversize head");
    r.expect_eof().await;

    // More header fields than the server parses (64), each small.
    let many: Vec<(String, Option<&str>)> =
        (0..70).map(|i| (format!("X-F{i}"), Some("1"))).collect();
    let many: Vec<(&str, Option<&str>)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let req = request("GET", "/", a, &many);
    assert!(req.len() < 1024, "the head stays under the byte limit");
    assert_status(&exchange(a, &req).await, 431, "70 header fields");

    // A head just under the limit still works.
    let req = request("GET", "/", a, &[("X-Padding", Some(&"y".repeat(600)))]);
    assert_status(&exchange(a, &req).await, 101, "head under the limit");

    srv.wait_counter(Counter::Handshakes(H::TooLarge), 3).await;
}

#[tokio::test]
async fn slow_handshake_is_closed_after_handshake_timeout() {
    let srv = ServerConfig::new().ws("handshake_timeout = 1").start();
    let a = srv.addr();
    let req = request("GET", "/", a, &[]);
    let mut r = Raw::connect(a).await;
    let started = Instant::now();
    r.send(&req.as_bytes()[..req.len() / 2]).await;
    let got = r.wait_closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s handshake timeout"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "only a 408 may precede the close: {:?}",
        String::from_utf8_lossy(&got)
    );
    // A connection that sends nothing at all is closed too.
    let mut idle = Raw::connect(a).await;
    idle.wait_closed().await;

    srv.wait_counter(Counter::HandshakeTimeouts, 2).await;
    srv.wait_counter(Counter::Handshakes(H::Timeout), 2).await;
}

#[tokio::test]
async fn disabled_websockets_refuse_new_handshakes_only() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let mut existing = ws_echo_client(a).await;
    ws_echo(&mut existing, Message::text("before")).await;

    srv.region().control().set_enabled(Protocol::Ws, false);
    let resp = exchange(a, &request("GET", "/", a, &[])).await;
    assert_status(&resp, 503, "disabled");
    ws_echo(&mut existing, Message::text("while disabled")).await;
    ws_echo(&mut existing, Message::binary(vec![7u8; 300])).await;

    srv.region().control().set_enabled(Protocol::Ws, true);
    let mut again = ws_echo_client(a).await;
    ws_echo(&mut again, Message::text("re-enabled")).await;
    ws_echo(&mut existing, Message::text("after")).await;

    srv.wait_counter(Counter::Handshakes(H::Disabled), 1).await;
    srv.wait_counter(Counter::Handshakes(H::Accepted), 2).await;
}

/// A client that half-closes TCP after its request (as `printf … | nc`
/// does) still gets the response: the server may write until it closes.
#[tokio::test]
async fn response_reaches_a_client_that_half_closed() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    for i in 0..5 {
        for (req, status) in [
            (
                request("GET", "/", a, &[("Sec-WebSocket-Version", Some("8"))]),
                "426",
            ),
            (request("GET", "/", a, &[]), "101"),
        ] {
            let mut r = Raw::connect(a).await;
            r.send(req.as_bytes()).await;
            within("half-close", r.io.shutdown())
                .await
                .expect("shutdown(SHUT_WR)");
            let got = r.wait_closed().await;
            assert!(
                got.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
                "attempt {i}: expected {status} after the request and FIN, got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}

/// The handshake-duration histogram is fed in microseconds (accept to
/// 101), so loopback handshakes, well under a millisecond, are not all
/// recorded as 0.
#[tokio::test]
async fn handshake_duration_is_measured_in_microseconds() {
    let srv = Server::start(ServerConfig::new().workers(1));
    for _ in 0..5 {
        let mut ws = ws_echo_client(srv.addr()).await;
        ws_echo(&mut ws, Message::text("x")).await;
    }
    srv.wait_counter(Counter::Handshakes(H::Accepted), 5).await;
    let h = srv
        .region()
        .snapshot_counters()
        .histogram(dataplane::region::Histogram::HandshakeDuration);
    assert_eq!(h.count, 5);
    assert!(h.sum_us > 0, "every handshake recorded as 0 µs: {h:?}");
}
