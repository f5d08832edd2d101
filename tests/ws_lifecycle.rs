//! Process lifecycle: graceful shutdown on SIGTERM, many concurrent
//! connections over both workers, isolation from misbehaving clients, and a
//! clear start-up failure when the port is taken.

mod common;

use common::*;
use dataplane::region::{Counter, RejectReason, Transport};
use futures_util::StreamExt;
use futures_util::future::join_all;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_closes_peers_with_1001_and_exits_zero() {
    let grace = 3u64;
    let mut srv = ServerConfig::new()
        .reactor(&format!("shutdown_grace = {grace}"))
        .ws("close_timeout = 1")
        .start();
    let a = srv.addr();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_echo_client(a).await;
        ws_echo(&mut ws, Message::text("hello")).await;
        clients.push(ws);
    }
    // One peer that will never answer the server's Close.
    let mut mute = Raw::echo(a).await;
    mute.echo_roundtrip(op::BINARY, b"x").await;

    srv.signal(libc::SIGTERM);

    for (i, ws) in clients.iter_mut().enumerate() {
        match ws_next(ws).await {
            Message::Close(Some(cf)) => assert_eq!(u16::from(cf.code), 1001, "client {i}"),
            other => panic!("client {i}: expected Close 1001, got {other:?}"),
        }
        // Reading on lets tungstenite send its Close reply; then the stream ends.
        let end = within("stream end", ws.next()).await;
        assert!(matches!(end, None | Some(Err(_))), "client {i}: {end:?}");
    }
    let f = mute.read_frame().await;
    assert_eq!(f.close_code(), Some(1001));
    mute.expect_eof().await;

    let status = srv
        .wait_exit(Duration::from_secs(grace + 10))
        .await
        .unwrap_or_else(|| panic!("rtedge still running after SIGTERM; log:\n{}", srv.log()));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        srv.log()
    );
    assert!(srv.log().contains("shutting down"), "{}", srv.log());
}

#[tokio::test]
async fn sigterm_without_peers_exits_zero_at_once() {
    let mut srv = ServerConfig::new().reactor("shutdown_grace = 30").start();
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; an idle server need not wait for the 30 s grace period; log:\n{}",
        srv.log()
    );
}

#[tokio::test]
async fn sigint_is_a_graceful_shutdown_too() {
    let mut srv = ServerConfig::new().reactor("shutdown_grace = 3").start();
    let mut ws = ws_echo_client(srv.addr()).await;
    ws_echo(&mut ws, Message::text("hi")).await;
    srv.signal(libc::SIGINT);
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => assert_eq!(u16::from(cf.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    let _ = within("stream end", ws.next()).await;
    let status = srv.wait_exit(Duration::from_secs(13)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        srv.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_across_both_workers() {
    const N: usize = 200;
    let srv = ServerConfig::new().workers(2).start();
    let a = srv.addr();
    let clients = join_all((0..N).map(|_| ws_echo_client(a))).await;
    let mut clients: Vec<_> = clients.into_iter().collect();

    let region = srv.region();
    let snap = region.snapshot_counters();
    assert_eq!(snap.cores(), 2);
    let per_core: Vec<i64> = (0..2)
        .map(|c| snap.core_gauge(c, Counter::ConnectionsActive(Transport::Ws)))
        .collect();
    assert_eq!(
        per_core.iter().sum::<i64>(),
        N as i64,
        "per core {per_core:?}"
    );
    assert!(
        per_core.iter().all(|&n| n > 0),
        "SO_REUSEPORT should spread {N} connections over both workers: {per_core:?}"
    );
    let conns = region.connections();
    assert_eq!(conns.len(), N);
    assert!(conns.iter().any(|c| c.core == 0) && conns.iter().any(|c| c.core == 1));

    // Every connection echoes its own messages, all at once.
    let results = join_all(clients.iter_mut().enumerate().map(|(i, ws)| async move {
        for j in 0..3 {
            ws_echo(ws, Message::text(format!("conn {i} msg {j}"))).await;
        }
        ws_echo(ws, Message::binary(vec![i as u8; 1000 + i])).await;
    }))
    .await;
    assert_eq!(results.len(), N);

    join_all(clients.iter_mut().map(|ws| async move {
        let _ = within("close", ws.close(None)).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IO_TIMEOUT, ws.next()).await {}
    }))
    .await;
    srv.wait_counter(Counter::ConnectionsClosed(Transport::Ws), N as u64)
        .await;
    assert_eq!(
        srv.region()
            .snapshot_counters()
            .gauge(Counter::ConnectionsActive(Transport::Ws)),
        0
    );
}

#[tokio::test]
async fn misbehaving_clients_do_not_disturb_a_good_one() {
    let srv = ServerConfig::new().ws("max_message_size = 65536").start();
    let a = srv.addr();
    let mut good = ws_echo_client(a).await;
    ws_echo(&mut good, Message::text("start")).await;

    // Random bytes instead of a handshake.
    let mut junk = Raw::connect(a).await;
    junk.send(&Rng::new(3).bytes(5000)).await;
    ws_echo(&mut good, Message::text("after junk")).await;
    let reply = junk.wait_closed().await;
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 4"),
        "{reply:?}"
    );

    // Half a handshake, left hanging.
    let mut half = Raw::connect(a).await;
    half.send(&request("GET", "/", a, &[]).as_bytes()[..40])
        .await;
    ws_echo(&mut good, Message::text("after half handshake")).await;

    // A protocol violation after the handshake.
    let mut bad = Raw::echo(a).await;
    bad.send(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']).await; // unmasked
    bad.expect_close(1002).await;
    ws_echo(&mut good, Message::text("after 1002")).await;

    // A huge announced frame and nothing after it.
    let mut huge = Raw::echo(a).await;
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 50).to_be_bytes());
    hdr.extend_from_slice(&MASK);
    huge.send(&hdr).await;
    huge.expect_close(1009).await;

    // A partial frame, then a reset.
    let stalled = Raw::echo(a).await;
    let mut stalled = stalled;
    stalled
        .send(&frame(true, op::BINARY, &[0; 1000])[..500])
        .await;
    reset(stalled.io);

    ws_echo(&mut good, Message::binary(vec![42; 60_000])).await;
    ws_echo(&mut good, Message::text("end")).await;
    drop(half);
}

#[tokio::test]
async fn taken_port_is_a_clear_start_up_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let cfg = ServerConfig::new().listen_ws_at(&taken.to_string());
    let (status, log) = run_to_exit(&cfg, Duration::from_secs(20));
    let status =
        status.unwrap_or_else(|| panic!("rtedge kept running on a taken port; log:\n{log}"));
    assert!(!status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        log.contains(&taken.to_string()),
        "the error must name {taken}; log:\n{log}"
    );
    assert!(
        log.to_ascii_lowercase().contains("in use") || log.contains("cannot listen"),
        "the error must say why; log:\n{log}"
    );
    drop(holder);
}

/// A second rtedge on an address the first serves must not join its
/// SO_REUSEPORT group (the kernel would split connections between two
/// processes that share no sessions): it refuses to start.
#[tokio::test]
async fn second_instance_on_the_same_address_is_refused() {
    let first = Server::start(ServerConfig::new().workers(1));
    let taken = first.addr();
    let cfg = ServerConfig::new().listen_ws_at(&taken.to_string());
    let (status, log) = run_to_exit(&cfg, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| {
        panic!("a second rtedge started on {taken} beside the first; log:\n{log}")
    });
    assert!(!status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains(&taken.to_string()), "log:\n{log}");
    assert!(log.to_ascii_lowercase().contains("in use"), "log:\n{log}");
    // The first one still serves.
    let mut ws = ws_echo_client(taken).await;
    ws_echo(&mut ws, Message::text("still here")).await;
}

#[tokio::test]
async fn no_new_connections_while_draining() {
    let grace = 3u64;
    let mut srv = ServerConfig::new()
        .reactor(&format!("shutdown_grace = {grace}"))
        .ws("close_timeout = 30")
        .start();
    let a = srv.addr();
    // A peer that never answers the server's Close keeps the server draining
    // until the grace period ends.
    let mut mute = Raw::echo(a).await;
    srv.signal(libc::SIGTERM);
    assert_eq!(mute.read_frame().await.close_code(), Some(1001));
    for i in 0..3 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(a)).await
        {
            // A connection the kernel queued before the listener closed is
            // reset: writing or reading may fail, which is a refusal too.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if s.write_all(request("GET", "/", a, &[]).as_bytes())
                .await
                .is_err()
            {
                continue;
            }
            let mut got = Vec::new();
            let _ = within("drained connection", s.read_to_end(&mut got)).await;
            assert!(
                !got.starts_with(b"HTTP/1.1 101"),
                "attempt {i}: a new session was accepted while draining"
            );
        }
    }
    let status = srv
        .wait_exit(Duration::from_secs(grace + 10))
        .await
        .unwrap_or_else(|| panic!("still running after the grace period; log:\n{}", srv.log()));
    assert!(status.success(), "{status:?}");
    mute.expect_eof().await;
}

#[tokio::test]
async fn connections_over_the_per_worker_limit_are_refused_and_counted() {
    let srv = ServerConfig::new()
        .workers(1)
        .reactor("max_connections_per_worker = 2")
        .start();
    let a = srv.addr();
    let mut c1 = Raw::echo(a).await;
    let _c2 = Raw::echo(a).await;
    let mut c3 = Raw::connect(a).await;
    c3.send(request("GET", "/", a, &[]).as_bytes()).await;
    let got = c3.wait_closed().await;
    assert!(!got.starts_with(b"HTTP/1.1 101"), "{got:?}");
    srv.wait_counter(Counter::ConnectionsRejected(RejectReason::Limit), 1)
        .await;
    c1.echo_roundtrip(op::TEXT, b"still served").await;
}
