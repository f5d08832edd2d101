//! End-to-end tests of malformed MSRP input (RFC 4975 §9 grammar) against
//! the real binary: every malformed frame gets its answer — a 400 when the
//! frame can be delimited and answered (it names a transaction id and both
//! paths), otherwise the connection is closed cleanly — and never a crash:
//! after each one, a neighbour pair of clients still relays, and answered
//! ones are counted in `msrp_responses_total{code="400"}`.

mod common;

use common::msrp::{
    Client, QUIET, authed, relay, relay_config, relays_one, send_frame, send_frame_with,
};
use common::{Server, within};
use dataplane::region::{Counter, MsrpStatus};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A and B keep relaying (a fresh SEND each time, `n` makes it unique).
async fn neighbours_relay(a: &mut Client, b: &mut Client, n: usize) {
    relays_one(a, b, "nb", n).await;
}

async fn pair(srv: &Server) -> (Client, Client) {
    let addr = srv.addrs[0];
    (
        authed(addr, "a", "alice", "wonderland").await,
        authed(addr, "b", "bob", "builder").await,
    )
}

/// Sends `bytes` on a fresh connection and expects it closed with nothing
/// written back.
async fn closes_silently(srv: &Server, bytes: &[u8]) {
    let mut bad = Client::connect(srv.addrs[0], "bad").await;
    bad.send(bytes).await;
    let rest = bad.expect_closed().await;
    assert!(
        rest.is_empty(),
        "expected a silent close, got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Sends `bytes` on a fresh connection and expects exactly `want` back
/// (the 400's first line), then a valid AUTH on the same connection is
/// still served: the frame was delimited and skipped.
async fn answers_400(srv: &Server, bytes: &[u8], want: &str) {
    let mut bad = Client::connect(srv.addrs[0], "bad").await;
    bad.send(bytes).await;
    let r = bad.read().await;
    assert_eq!(r.first, want, "{r:?}");
    bad.quiet(QUIET).await;
    bad.authed_as("alice", "wonderland").await;
}

/// The 23-byte frame that crashes Kamailio (no method, no paths): the
/// relay cannot answer it (no To-Path/From-Path to address a response) and
/// closes the connection; the process lives on.
#[tokio::test]
async fn kamailio_crash_frame_closes_and_neighbours_relay() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let frame = b"MSRP abc\r\n-------abc$\r\n";
    assert_eq!(frame.len(), 23);
    closes_silently(&srv, frame).await;
    // Byte by byte as well: the parser must not act on a prefix.
    let mut bad = Client::connect(srv.addrs[0], "bad").await;
    for byte in frame {
        bad.send(&[*byte]).await;
    }
    assert!(bad.expect_closed().await.is_empty());
    neighbours_relay(&mut a, &mut b, 1).await;
    // Both closes are counted as malformed frames.
    srv.wait_counter(Counter::MsrpMalformed, 2).await;
}

/// A SEND without To-Path, or without From-Path: RFC 4975 §9 requires both
/// (To-Path first, From-Path second). Without either there is no way to
/// address a response, so the connection is closed.
#[tokio::test]
async fn missing_paths_close_and_neighbours_relay() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    closes_silently(
        &srv,
        b"MSRP np01 SEND\r\nFrom-Path: msrp://127.0.0.1:9/x;tcp\r\nMessage-ID: m1\r\nByte-Range: 1-2/2\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------np01$\r\n",
    )
    .await;
    neighbours_relay(&mut a, &mut b, 1).await;
    let to = format!("To-Path: {} {}\r\n", a.relay_uri, b.relay_uri);
    closes_silently(
        &srv,
        format!("MSRP np02 SEND\r\n{to}Message-ID: m1\r\nByte-Range: 1-2/2\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------np02$\r\n").as_bytes(),
    )
    .await;
    neighbours_relay(&mut a, &mut b, 2).await;
    b.quiet(QUIET).await;
}

/// Both paths present but in the wrong order (From-Path first): malformed
/// per RFC 4975 §9, yet answerable — 400, and the connection goes on.
#[tokio::test]
async fn paths_out_of_order_get_400() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let f = format!(
        "MSRP po01 SEND\r\nFrom-Path: msrp://127.0.0.1:9/x;tcp\r\nTo-Path: {} {} {}\r\nMessage-ID: m1\r\nByte-Range: 1-2/2\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------po01$\r\n",
        a.relay_uri, b.relay_uri, b.uri
    );
    answers_400(&srv, f.as_bytes(), "MSRP po01 400 Bad Request").await;
    b.quiet(QUIET).await;
    neighbours_relay(&mut a, &mut b, 1).await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::BadRequest), 1)
        .await;
}

/// Transaction ids outside `ident = ALPHANUM 3*31ident-char` (RFC 4975 §9):
/// too short (3 characters) or starting with a non-alphanumeric
/// ident-char. The frame is still delimited by its end-line, so it gets a
/// 400 with that id, and nothing is relayed.
#[tokio::test]
async fn bad_transaction_ids_get_400() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let send = |tid: &str| {
        send_frame(
            tid,
            &[&a.relay_uri, &b.relay_uri, &b.uri],
            "msrp://127.0.0.1:9/x;tcp",
            "m1",
            b"bad id",
        )
    };
    answers_400(&srv, &send("ab1"), "MSRP ab1 400 Bad Request").await;
    answers_400(&srv, &send(".abc1"), "MSRP .abc1 400 Bad Request").await;
    // 33 characters: one over the maximum.
    let long = format!("a{}", "b".repeat(32));
    closes_silently(&srv, &send(&long)).await;
    b.quiet(QUIET).await;
    neighbours_relay(&mut a, &mut b, 1).await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::BadRequest), 2)
        .await;
}

/// A header block over the relay's limit (16 KiB, like AG msrprelay's
/// line limit; the RFC sets none): not delimitable as a head, so it cannot
/// be answered; the connection is closed.
#[tokio::test]
async fn oversized_header_block_closes() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let f = format!(
        "MSRP hb01 SEND\r\nTo-Path: {} {} {}\r\nFrom-Path: msrp://127.0.0.1:9/x;tcp\r\nX-Pad: {}\r\nMessage-ID: m1\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------hb01$\r\n",
        a.relay_uri,
        b.relay_uri,
        b.uri,
        "p".repeat(17 * 1024)
    );
    closes_silently(&srv, f.as_bytes()).await;
    b.quiet(QUIET).await;
    neighbours_relay(&mut a, &mut b, 1).await;
}

/// `[msrp] max_head_size` and `max_headers` set the parser's limits: a
/// head over 1 KiB closes (as one over the default 16 KiB does), a sixth
/// header line when five are allowed gets 400, and frames within both
/// relay.
#[tokio::test]
async fn head_limits_are_configurable() {
    let srv = relay_config(1)
        .msrp("max_head_size = 1024")
        .msrp("max_headers = 5")
        .start();
    let (mut a, mut b) = pair(&srv).await;
    let to = [a.relay_uri.as_str(), b.relay_uri.as_str(), b.uri.as_str()];
    let from = "msrp://127.0.0.1:9/x;tcp";
    let pad = "p".repeat(1100);
    closes_silently(
        &srv,
        &send_frame_with("hl01", &to, from, "m1", &[("X-Pad", &pad)], b"big head"),
    )
    .await;
    answers_400(
        &srv,
        &send_frame_with("hl02", &to, from, "m2", &[("X-Six", "6")], b"six headers"),
        "MSRP hl02 400 Bad Request",
    )
    .await;
    // Five header lines and a head under 1 KiB: relayed.
    neighbours_relay(&mut a, &mut b, 1).await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::BadRequest), 1)
        .await;
}

/// A first line that is not `"MSRP" SP transact-id SP …` (RFC 4975 §9):
/// not MSRP at all, so nothing can be answered: close.
#[tokio::test]
async fn garbage_first_line_closes() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    closes_silently(&srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    closes_silently(&srv, b"msrp abcd SEND\r\n-------abcd$\r\n").await;
    closes_silently(&srv, b"MSRP\r\n").await;
    closes_silently(&srv, b"MSRP ab#cd SEND\r\n").await;
    neighbours_relay(&mut a, &mut b, 1).await;
}

/// Frames whose end never comes within the limits: a first line that does
/// not end within 16 KiB, and a header block that never ends. The relay
/// gives up (closes) instead of buffering without bound.
#[tokio::test]
async fn unterminated_frames_close() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let mut line = b"MSRP abcd SEND".to_vec();
    line.extend(std::iter::repeat_n(b'x', 17 * 1024));
    closes_silently(&srv, &line).await;
    let mut head = format!(
        "MSRP abce SEND\r\nTo-Path: {} {} {}\r\nFrom-Path: msrp://127.0.0.1:9/x;tcp\r\n",
        a.relay_uri, b.relay_uri, b.uri
    )
    .into_bytes();
    for i in 0..1000 {
        head.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    closes_silently(&srv, &head).await;
    b.quiet(QUIET).await;
    neighbours_relay(&mut a, &mut b, 1).await;
}

/// Over WebSocket the message is the frame's limit (RFC 7977 §5.3: one
/// whole chunk per message): a message whose end-line never comes, and a
/// message with two chunks, are protocol errors — Close 1002.
#[tokio::test]
async fn websocket_message_without_end_line_is_closed() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let ws_addr = srv.addrs[1];
    let head = format!(
        "MSRP wse1 SEND\r\nTo-Path: {} {} {}\r\nFrom-Path: msrp://x.invalid:2855/y;ws\r\nMessage-ID: m1\r\nByte-Range: 1-*/*\r\nContent-Type: text/plain\r\n\r\nno end here",
        a.relay_uri, b.relay_uri, b.uri
    );
    let two = "MSRP wse2 AUTH\r\nTo-Path: msrp://127.0.0.1:1;ws\r\nFrom-Path: msrp://x.invalid:2855/y;ws\r\n-------wse2$\r\n".repeat(2);
    // The complete head of each is handled on its own merits first: the
    // SEND borrows A's relay URI (403), the first AUTH is challenged (401).
    for (msg, answer) in [(head, "MSRP wse1 403 "), (two, "MSRP wse2 401 ")] {
        let s = common::tcp(ws_addr).await;
        let mut ws = common::ws_client_over(s, &format!("ws://{ws_addr}/"), Some("msrp")).await;
        ws.send(Message::Text(msg.into())).await.expect("send");
        let mut code = None;
        let mut answers = Vec::new();
        loop {
            match within("close", ws.next()).await {
                Some(Ok(Message::Close(Some(f)))) => code = Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Text(t))) => answers.push(t.to_string()),
                Some(Ok(m)) => panic!("unexpected {m:?}"),
            }
        }
        assert_eq!(code, Some(1002));
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].starts_with(answer), "{answers:?}");
    }
    b.quiet(QUIET).await;
    neighbours_relay(&mut a, &mut b, 1).await;
}

/// A port may carry MSRP and SIP (as Kamailio's does; the first line
/// decides). Until the SIP edge serves SIP, a SIP request on an MSRP port
/// gets `501 Not Implemented` built per RFC 3261 §8.2.6 (Via, From, To
/// with a tag, Call-ID, CSeq copied), then the connection closes; a SIP
/// response or an ACK is not answered. Neighbours keep relaying.
#[tokio::test]
async fn sip_on_an_msrp_port_is_refused_clearly() {
    let srv = relay(1);
    let (mut a, mut b) = pair(&srv).await;
    let options = b"OPTIONS sip:relay@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-rtedge-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:probe@127.0.0.1>;tag=ab12\r\n\
To: <sip:relay@127.0.0.1>\r\n\
Call-ID: opt-1@127.0.0.1\r\n\
CSeq: 7 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
    let mut sip = Client::connect(srv.addrs[0], "sip").await;
    // In two writes: the answer waits for the whole header block.
    sip.send(&options[..40]).await;
    sip.send(&options[40..]).await;
    let reply = String::from_utf8(sip.expect_closed().await).expect("utf-8");
    assert!(
        reply.starts_with("SIP/2.0 501 Not Implemented\r\n"),
        "{reply:?}"
    );
    for h in [
        "\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-rtedge-1\r\n",
        "\r\nFrom: <sip:probe@127.0.0.1>;tag=ab12\r\n",
        "\r\nCall-ID: opt-1@127.0.0.1\r\n",
        "\r\nCSeq: 7 OPTIONS\r\n",
    ] {
        assert!(reply.contains(h), "{h:?} missing from {reply:?}");
    }
    assert!(
        reply.contains("\r\nTo: <sip:relay@127.0.0.1>;tag="),
        "{reply:?}"
    );
    assert!(reply.ends_with("Content-Length: 0\r\n\r\n"), "{reply:?}");
    // A response and an ACK: closed without an answer.
    closes_silently(
        &srv,
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP x;branch=z9hG4bK1\r\n\r\n",
    )
    .await;
    closes_silently(
        &srv,
        b"ACK sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bK2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n",
    )
    .await;
    srv.wait_counter(Counter::SipRefused, 3).await;
    neighbours_relay(&mut a, &mut b, 90).await;
    // MSRP on the same port still works for new connections.
    let mut c = authed(srv.addrs[0], "c", "alice", "wonderland").await;
    c.quiet(QUIET).await;
}
