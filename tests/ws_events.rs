//! The reactor records connection events (opened, closed with code and
//! reason, handshake rejected) in the region's event rings, which feed the
//! management service's event stream.

mod common;

use common::*;
use dataplane::region::{EventKind, EventRecord, HandshakeReason, SubProtocol};
use std::time::Duration;

fn all_events(server: &Server) -> Vec<EventRecord> {
    let region = server.region();
    let mut out = Vec::new();
    for core in 0..region.cores() {
        let mut cursor = 0;
        region.read_events(core, &mut cursor, 10_000, &mut out);
    }
    out
}

async fn wait_for(server: &Server, pred: impl Fn(&[EventRecord]) -> bool) -> Vec<EventRecord> {
    for _ in 0..200 {
        let ev = all_events(server);
        if pred(&ev) {
            return ev;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("events never matched: {:?}", all_events(server));
}

#[tokio::test]
async fn opened_closed_and_rejected_are_recorded() {
    let server = ServerConfig::new().listen_ws().start();
    let addr = server.addr();

    // A session that the client closes with 4001.
    let mut raw = Raw::echo(addr).await;
    raw.send(&close_frame(4001, b"bye")).await;
    raw.expect_close(4001).await;

    // A handshake refused for its sub-protocol.
    let mut bad = Raw::connect(addr).await;
    bad.send(
        request(
            "GET",
            "/",
            addr,
            &[("Sec-WebSocket-Protocol", Some("gossip"))],
        )
        .as_bytes(),
    )
    .await;
    let resp = bad.read_response().await;
    assert_eq!(resp.status, 400);

    let ev = wait_for(&server, |ev| {
        ev.iter().any(|e| e.kind == EventKind::Closed)
            && ev.iter().any(|e| e.kind == EventKind::Rejected)
    })
    .await;
    let opened = ev
        .iter()
        .find(|e| e.kind == EventKind::Opened)
        .expect("opened");
    assert_eq!(opened.sub_protocol, SubProtocol::Echo);
    let closed = ev
        .iter()
        .find(|e| e.kind == EventKind::Closed)
        .expect("closed");
    assert_eq!(closed.conn_id, opened.conn_id);
    assert_eq!(closed.code, Some(4001));
    assert_eq!(closed.text.as_str(), "closed by peer");
    let rejected = ev
        .iter()
        .find(|e| e.kind == EventKind::Rejected)
        .expect("rejected");
    assert_eq!(rejected.reason, Some(HandshakeReason::SubProtocol));
}
