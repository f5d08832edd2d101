//! Keep-alive (Kamailio's `keepalive_mechanism` / `keepalive_timeout`) with
//! 1-second timeouts: pings carry `ping_application_data`, a peer that never
//! answers is closed with 1001 and counted, the `pong` mechanism sends
//! unsolicited Pongs; and the idle timeout.

mod common;

use common::*;
use dataplane::region::{CloseCode, Counter};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const KA_DATA: &str = "e2e-keepalive";

fn keepalive_config(mechanism: &str) -> ServerConfig {
    ServerConfig::new()
        .ws(&format!("keepalive_mechanism = \"{mechanism}\""))
        .ws("keepalive_timeout = 1")
        .ws("keepalive_interval = 1")
        .ws("keepalive_max_missed = 2")
        .ws(&format!("ping_application_data = \"{KA_DATA}\""))
}

#[tokio::test]
async fn ping_keepalive_is_sent_and_answered_pings_keep_the_peer() {
    let srv = keepalive_config("ping").start();
    let mut ws = ws_echo_client(srv.addr()).await;
    // tokio-tungstenite answers each Ping with a Pong by itself. Three pings
    // in a row (more than keepalive_max_missed) prove answers reset the count.
    let mut pings = 0;
    while pings < 3 {
        match ws_next(&mut ws).await {
            Message::Ping(p) => {
                assert_eq!(&p[..], KA_DATA.as_bytes());
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ws_echo(&mut ws, Message::text("still open")).await;
    srv.wait_counter(Counter::KeepalivesSent, 3).await;
    assert_eq!(srv.counter(Counter::KeepaliveFailures), 0);
}

#[tokio::test]
async fn peer_that_never_answers_is_closed_with_1001() {
    let srv = keepalive_config("ping").start();
    let mut r = Raw::echo(srv.addr()).await;
    let started = Instant::now();
    for i in 0..2 {
        let f = r.read_frame().await;
        assert_eq!(f.opcode, op::PING, "keep-alive {i}: {f:?}");
        assert_eq!(f.payload, KA_DATA.as_bytes());
    }
    r.expect_close(1001).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before two keep-alive periods",
        started.elapsed()
    );
    srv.wait_counter(Counter::KeepaliveFailures, 1).await;
    srv.wait_counter(Counter::CloseCodesSent(CloseCode::GoingAway), 1)
        .await;
    srv.wait_counter(Counter::KeepalivesSent, 2).await;
}

#[tokio::test]
async fn pong_mechanism_sends_unsolicited_pongs() {
    let srv = keepalive_config("pong").start();
    let mut ws = ws_echo_client(srv.addr()).await;
    // Unsolicited Pongs expect no answer; the peer is never closed for them.
    for _ in 0..3 {
        match ws_next(&mut ws).await {
            Message::Pong(p) => assert_eq!(&p[..], KA_DATA.as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws_echo(&mut ws, Message::binary(vec![1, 2, 3])).await;
    srv.wait_counter(Counter::KeepalivesSent, 3).await;
    assert_eq!(srv.counter(Counter::KeepaliveFailures), 0);
}

#[tokio::test]
async fn keepalive_none_sends_nothing_and_idle_timeout_closes() {
    let srv = ServerConfig::new()
        .ws("keepalive_mechanism = \"none\"")
        .ws("keepalive_timeout = 1")
        .ws("idle_timeout = 2")
        .start();
    let mut r = Raw::echo(srv.addr()).await;
    r.echo_roundtrip(op::TEXT, b"once").await;
    // No keep-alive frame; after 2 s without traffic, Close 1001.
    r.expect_close(1001).await;
    srv.wait_counter(Counter::IdleTimeouts, 1).await;
    assert_eq!(srv.counter(Counter::KeepalivesSent), 0);
}

#[tokio::test]
async fn default_ping_data_is_the_server_header() {
    let srv = ServerConfig::new()
        .ws("keepalive_mechanism = \"ping\"")
        .ws("keepalive_timeout = 1")
        .start();
    let mut r = Raw::connect(srv.addr()).await;
    let resp = r.handshake(srv.addr(), "echo").await;
    let server = resp.header("Server").expect("Server header").to_string();
    let f = r.read_frame().await;
    assert_eq!(f.opcode, op::PING);
    assert_eq!(String::from_utf8_lossy(&f.payload), server);
    // Answering keeps the connection.
    r.send(&frame(true, op::PONG, &f.payload)).await;
    r.echo_roundtrip(op::TEXT, b"alive").await;
}
