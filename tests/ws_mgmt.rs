//! `ws.close` / `ws.ping` / `ws.pong` as engine actions, triggered through
//! the stats region's per-core command rings the way the management service
//! will, and the connection list the dumps are built from.

mod common;

use common::*;
use dataplane::region::{
    CloseCode, Command, CommandKind, ConnSnapshot, ConnState, Counter, SubProtocol, Transport,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The region's entry for the connection whose peer is `peer` (bounded wait).
async fn connection_of(srv: &Server, peer: SocketAddr) -> ConnSnapshot {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let found = srv
            .region()
            .connections()
            .into_iter()
            .find(|c| c.peer == peer && c.state == ConnState::Open);
        if let Some(c) = found {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no open connection from {peer} in {:?}",
            srv.region().connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn post(srv: &Server, conn: &ConnSnapshot, kind: CommandKind, status: u16, data: &[u8]) {
    srv.region()
        .post_command(conn.core, Command::new(kind, conn.id, status, data))
        .expect("command ring full");
}

#[tokio::test]
async fn close_command_reaches_the_client_with_code_and_reason() {
    let srv = ServerConfig::new().start();
    let mut ws = ws_echo_client(srv.addr()).await;
    let peer = ws.get_ref().local_addr().expect("local addr");
    let conn = connection_of(&srv, peer).await;
    assert_eq!(conn.transport, Transport::Ws);
    assert_eq!(conn.sub_protocol, SubProtocol::Echo);
    assert_eq!(conn.local, srv.addr());

    post(&srv, &conn, CommandKind::Close, 4000, b"closed by operator");
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 4000);
            assert_eq!(cf.reason.as_str(), "closed by operator");
        }
        other => panic!("expected Close 4000, got {other:?}"),
    }
    // tungstenite answers the Close; the server then closes TCP.
    let end = within("end of stream", futures_util::StreamExt::next(&mut ws)).await;
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
    srv.wait_counter(Counter::CloseCodesSent(CloseCode::Other), 1)
        .await;
    // The slot is released.
    let deadline = Instant::now() + IO_TIMEOUT;
    while srv.region().find_connection(conn.id).is_some() {
        assert!(
            Instant::now() < deadline,
            "slot of a closed connection kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn close_command_on_raw_connection_then_peer_close() {
    let srv = ServerConfig::new().start();
    let mut r = Raw::echo(srv.addr()).await;
    let peer = r.io.local_addr().expect("local addr");
    let conn = connection_of(&srv, peer).await;
    post(&srv, &conn, CommandKind::Close, 1000, b"");
    let f = r.read_frame().await;
    assert_eq!(f.close_code(), Some(1000));
    // Data sent in Closing is discarded; our Close completes the handshake.
    r.send(&[frame(true, op::TEXT, b"ignored"), close_frame(1000, b"")].concat())
        .await;
    r.expect_eof().await;
    srv.wait_counter(Counter::CloseCodesReceived(CloseCode::Normal), 1)
        .await;
}

#[tokio::test]
async fn ping_and_pong_commands_reach_the_client() {
    let srv = ServerConfig::new().start();
    let mut ws = ws_echo_client(srv.addr()).await;
    let peer = ws.get_ref().local_addr().expect("local addr");
    let conn = connection_of(&srv, peer).await;

    post(&srv, &conn, CommandKind::Ping, 0, b"mgmt ping");
    match ws_next(&mut ws).await {
        Message::Ping(p) => assert_eq!(&p[..], b"mgmt ping"),
        other => panic!("expected Ping, got {other:?}"),
    }
    post(&srv, &conn, CommandKind::Pong, 0, b"mgmt pong");
    match ws_next(&mut ws).await {
        Message::Pong(p) => assert_eq!(&p[..], b"mgmt pong"),
        other => panic!("expected Pong, got {other:?}"),
    }
    // The connection is unaffected.
    ws_echo(&mut ws, Message::text("still here")).await;
    within("close", ws.close(None)).await.expect("close");

    // A command for an unknown id is ignored without harm.
    let ghost = ConnSnapshot {
        id: conn.id + 1_000_000,
        ..conn
    };
    post(&srv, &ghost, CommandKind::Close, 1000, b"");
    let mut other = ws_echo_client(srv.addr()).await;
    ws_echo(&mut other, Message::text("fine")).await;
}

#[tokio::test]
async fn connection_list_shows_traffic() {
    let srv = ServerConfig::new().start();
    let mut ws = ws_echo_client(srv.addr()).await;
    for i in 0..5 {
        ws_echo(&mut ws, Message::text(format!("m{i}"))).await;
    }
    let peer = ws.get_ref().local_addr().expect("local addr");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let c = connection_of(&srv, peer).await;
        if c.frames_in >= 5 && c.frames_out >= 5 && c.bytes_in > 0 && c.bytes_out > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "traffic not recorded: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn close_command_times_out_when_the_peer_never_answers() {
    let srv = ServerConfig::new().ws("close_timeout = 1").start();
    let mut r = Raw::echo(srv.addr()).await;
    let peer = r.io.local_addr().expect("local addr");
    let conn = connection_of(&srv, peer).await;
    post(&srv, &conn, CommandKind::Close, 1001, b"maintenance");
    let started = Instant::now();
    let f = r.read_frame().await;
    assert_eq!(
        (f.close_code(), f.close_reason().as_str()),
        (Some(1001), "maintenance")
    );
    // No Close from us: the server gives up after close_timeout.
    r.expect_eof().await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "TCP closed after {:?}, before close_timeout",
        started.elapsed()
    );
    srv.wait_counter(Counter::CloseTimeouts, 1).await;
}
