//! `/api/events` against the real binary: a connection opened, closed with
//! its code and reason, dropped without a close frame, and a handshake
//! rejected, each seen as a server-sent event; filters and bad parameters.

mod common;
mod mgmt_common;

use common::*;
use mgmt_common::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn connection_events_are_streamed() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let mut events = EventStream::open(&http, "").await;

    // Opened.
    let mut ws = ws_echo_client(srv.ws).await;
    let peer = ws.get_ref().local_addr().expect("addr").to_string();
    let opened = events
        .next_where("opened", |e| e.event == "opened" && e.data["peer"] == peer)
        .await;
    let d = &opened.data;
    assert_eq!(d["event"], "opened");
    assert_eq!(d["transport"], "ws");
    assert_eq!(d["sub_protocol"], "echo");
    assert!(
        d["info"].as_str().is_some_and(|i| i.starts_with('/')),
        "{d}"
    );
    assert!(d["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let id = d["id"].as_u64().expect("id");
    assert_eq!(http.conn_of(peer.parse().expect("addr")).await["id"], id);
    let core = d["core"].as_u64().expect("core");
    assert_eq!(
        opened.id.as_deref(),
        Some(format!("{core}:{}", d["seq"]).as_str())
    );

    // Closed by the client with a code and reason.
    ws_echo(&mut ws, Message::text("x")).await;
    within(
        "close",
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "client leaves".into(),
        })),
    )
    .await
    .expect("close");
    let closed = events
        .next_where("closed", |e| e.event == "closed" && e.data["id"] == id)
        .await;
    // The code is the one exchanged; the reason says why the session ended.
    assert_eq!(closed.data["code"], 4000, "{}", closed.data);
    assert_eq!(closed.data["reason"], "closed by peer");
    assert_eq!(closed.data["clean"], true);
    assert_eq!(closed.data["peer"], peer);

    // Dropped without a close frame: 1006.
    let ws = ws_echo_client(srv.ws).await;
    let peer2 = ws.get_ref().local_addr().expect("addr").to_string();
    let o2 = events
        .next_where("opened 2", |e| {
            e.event == "opened" && e.data["peer"] == peer2
        })
        .await;
    let mut tcp = ws.into_inner();
    tcp.shutdown().await.expect("shutdown");
    drop(tcp);
    let c2 = events
        .next_where("closed 2", |e| {
            e.event == "closed" && e.data["id"] == o2.data["id"]
        })
        .await;
    assert_eq!(c2.data["code"], 1006, "{}", c2.data);
    assert_eq!(c2.data["clean"], false);
    assert_eq!(c2.data["reason"], "connection lost");

    // Closed by the operator.
    let mut ws = ws_echo_client(srv.ws).await;
    let peer3 = ws.get_ref().local_addr().expect("addr");
    let id3 = http.conn_of(peer3).await["id"].as_u64().expect("id");
    let r = http
        .post(
            &format!("/api/ws/connections/{id3}/close"),
            r#"{"status":4100,"reason":"by operator"}"#,
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(matches!(ws_next(&mut ws).await, Message::Close(_)));
    // Reading on sends tungstenite's Close reply, completing the handshake.
    let _ = within("end of stream", futures_util::StreamExt::next(&mut ws)).await;
    let c3 = events
        .next_where("closed 3", |e| e.event == "closed" && e.data["id"] == id3)
        .await;
    assert_eq!(c3.data["code"], 4100, "{}", c3.data);
    assert_eq!(c3.data["reason"], "closed by operator");

    // Handshake rejected: disabled, and a malformed request.
    assert_eq!(http.post("/api/ws/disable", "").await.status, 200);
    let mut raw = Raw::connect(srv.ws).await;
    let rpeer = raw.io.local_addr().expect("addr").to_string();
    raw.send(request("GET", "/", srv.ws, &[]).as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 503);
    let rej = events
        .next_where("rejected", |e| {
            e.event == "rejected" && e.data["peer"] == rpeer
        })
        .await;
    assert_eq!(rej.data["reason"], "disabled", "{}", rej.data);
    assert_eq!(http.post("/api/ws/enable", "").await.status, 200);
    let mut raw = Raw::connect(srv.ws).await;
    let rpeer = raw.io.local_addr().expect("addr").to_string();
    raw.send(request("GET", "/", srv.ws, &[("Sec-WebSocket-Key", None)]).as_bytes())
        .await;
    assert_eq!(raw.read_response().await.status, 400);
    let rej = events
        .next_where("rejected 2", |e| {
            e.event == "rejected" && e.data["peer"] == rpeer
        })
        .await;
    assert_eq!(rej.data["reason"], "key", "{}", rej.data);
}

#[tokio::test]
async fn kinds_filter_replay_and_bad_parameters() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    // Events that happened before the stream opened are replayed with
    // from=oldest.
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("early")).await;
    let peer = ws.get_ref().local_addr().expect("addr").to_string();
    let mut replay = EventStream::open(&http, "?from=oldest&kinds=opened").await;
    let e = replay
        .next_where("replayed opened", |e| e.data["peer"] == peer)
        .await;
    assert_eq!(e.event, "opened");

    // Only closed events on a filtered stream.
    let mut closed_only = EventStream::open(&http, "?kinds=closed").await;
    let mut other = ws_echo_client(srv.ws).await;
    ws_echo(&mut other, Message::text("y")).await;
    within("close", other.close(None)).await.expect("close");
    let e = closed_only.next().await;
    assert_eq!(e.event, "closed", "{e:?}");
    within("close", ws.close(None)).await.expect("close");

    http.get("/api/events?kinds=bogus")
        .await
        .expect_error(400, "invalid event kind");
    http.get("/api/events?kinds=")
        .await
        .expect_error(400, "at least one");
    http.get("/api/events?from=yesterday")
        .await
        .expect_error(400, "invalid from");
    http.get("/api/events?since=1")
        .await
        .expect_error(400, "unknown query parameter");
}
