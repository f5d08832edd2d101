//! A peer that sends but does not read stops being read (bounded memory),
//! and everything it asked for arrives, in order, once it reads again.

mod common;

use common::*;
use dataplane::region::Counter;
use dataplane::ws::frame::{OpCode, write_masked_frame};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_peer_that_does_not_read_is_paused_then_served_in_order() {
    let server = ServerConfig::new()
        .workers(1)
        .listen_ws()
        .ws("max_message_size = 65536")
        .start();
    let addr = server.addr();
    let mut s = tcp(addr).await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: echo\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        within("101", s.read_exact(&mut b)).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));

    // 32 KiB binary messages, each tagged with its sequence number, written
    // without reading until writing stalls: the server has stopped reading.
    let (mut rd, mut wr) = s.into_split();
    let msg_len = 32 * 1024;
    let mut sent = 0u32;
    let mut rng = Rng::new(7);
    loop {
        let mut payload = vec![0u8; msg_len];
        payload[..4].copy_from_slice(&sent.to_be_bytes());
        let mut frame = Vec::new();
        let m = rng.next_u64().to_le_bytes();
        write_masked_frame(
            &mut frame,
            true,
            OpCode::Binary,
            &payload,
            [m[0], m[1], m[2], m[3]],
        );
        match tokio::time::timeout(Duration::from_millis(500), wr.write_all(&frame)).await {
            Ok(r) => r.unwrap(),
            Err(_) => break, // Stalled (a partial frame may be in flight).
        }
        sent += 1;
        assert!(sent < 100_000, "the server never stopped reading");
    }
    assert!(server.counter(Counter::BackpressurePauses) >= 1);
    // Memory stayed bounded: far less than what the client tried to send is
    // queued (the kernel buffers hold the rest).
    assert!(sent as usize * msg_len > 2 * (1 << 20));

    // Now read: every echo of a completely written message arrives, in order.
    let reader = tokio::spawn(async move {
        let mut expect = 0u32;
        let mut buf = vec![0u8; msg_len + 16];
        loop {
            let mut h = [0u8; 4];
            if tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut h[..2]))
                .await
                .is_err()
            {
                return expect;
            }
            assert_eq!(h[0], 0x82, "unfragmented binary");
            assert_eq!(h[1], 126, "16-bit length, unmasked");
            rd.read_exact(&mut h[2..4]).await.unwrap();
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            assert_eq!(len, msg_len);
            rd.read_exact(&mut buf[..len]).await.unwrap();
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            assert_eq!(seq, expect, "echoes in order");
            expect += 1;
        }
    });
    let got = within("reader", reader).await.unwrap();
    assert!(got >= sent, "got {got} echoes of {sent} complete messages");
}
