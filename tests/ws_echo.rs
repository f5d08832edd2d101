//! The `echo` sub-protocol: payload sizes around every length-encoding
//! boundary up to 1 MiB, byte-at-a-time delivery and pipelined frames.

mod common;

use common::*;
use dataplane::region::{Counter, SubProtocol};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const SIZES: [usize; 6] = [0, 125, 126, 65535, 65536, 1 << 20];

fn text_of(len: usize) -> String {
    // Multi-byte characters included, exactly `len` bytes of UTF-8.
    let mut s = String::with_capacity(len);
    for c in "echo-€-😀-".chars().cycle() {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s
}

#[tokio::test]
async fn echo_sizes_with_tungstenite() {
    let srv = ServerConfig::new().ws("max_message_size = 2097152").start();
    let mut ws = ws_echo_client(srv.addr()).await;
    let mut rng = Rng::new(1);
    for len in SIZES {
        ws_echo(&mut ws, Message::binary(rng.bytes(len))).await;
        ws_echo(&mut ws, Message::text(text_of(len))).await;
    }
    let n = 2 * SIZES.len() as u64;
    srv.wait_counter(Counter::MessagesReceived(SubProtocol::Echo), n)
        .await;
    srv.wait_counter(Counter::MessagesSent(SubProtocol::Echo), n)
        .await;
}

#[tokio::test]
async fn echo_sizes_with_raw_frames() {
    let srv = ServerConfig::new().ws("max_message_size = 2097152").start();
    let mut r = Raw::echo(srv.addr()).await;
    let mut rng = Rng::new(2);
    for len in SIZES {
        r.echo_roundtrip(op::BINARY, &rng.bytes(len)).await;
        r.echo_roundtrip(op::TEXT, text_of(len).as_bytes()).await;
    }
}

#[tokio::test]
async fn one_byte_at_a_time() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let mut r = Raw::connect(a).await;
    let mut bytes = request("GET", "/", a, &[]).into_bytes();
    let messages: Vec<(u8, Vec<u8>)> = vec![
        (op::TEXT, "tiny €".as_bytes().to_vec()),
        (op::BINARY, vec![]),
        (op::BINARY, (0..300u32).map(|i| i as u8).collect()),
        (op::TEXT, text_of(126).into_bytes()),
    ];
    for (opcode, payload) in &messages {
        bytes.extend(frame(true, *opcode, payload));
    }
    // A fragmented message with a ping between its fragments, too.
    bytes.extend(frame(false, op::TEXT, b"fra"));
    bytes.extend(frame(true, op::PING, b"mid"));
    bytes.extend(frame(true, op::CONT, b"gmented"));
    for b in &bytes {
        within("one byte", async {
            r.io.write_all(std::slice::from_ref(b)).await?;
            r.io.flush().await
        })
        .await
        .expect("write one byte");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let resp = r.read_response().await;
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    for (opcode, payload) in &messages {
        let f = r.read_frame().await;
        assert_eq!((f.opcode, &f.payload), (*opcode, payload));
    }
    let f = r.read_frame().await;
    assert_eq!((f.opcode, f.payload.as_slice()), (op::PONG, &b"mid"[..]));
    let f = r.read_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (op::TEXT, &b"fragmented"[..])
    );
}

#[tokio::test]
async fn pipelined_frames_are_all_echoed_in_order() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let mut rng = Rng::new(3);
    let mut sent = Vec::new();
    let mut bytes = request("GET", "/", a, &[]).into_bytes();
    for i in 0..1000usize {
        let len = match i % 7 {
            0 => 0,
            1 => 125,
            2 => 126,
            3 => 1000 + i,
            _ => (rng.next_u64() % 200) as usize,
        };
        let (opcode, payload) = if i % 2 == 0 {
            (op::TEXT, format!("{i:04}:{}", "t".repeat(len)).into_bytes())
        } else {
            let mut p = (i as u32).to_be_bytes().to_vec();
            p.extend(rng.bytes(len));
            (op::BINARY, p)
        };
        bytes.extend(frame_b0(
            0x80 | opcode,
            &payload,
            (rng.next_u64() as u32).to_be_bytes(),
        ));
        sent.push((opcode, payload));
    }
    // Handshake and all frames in a single write.
    let mut r = Raw::connect(a).await;
    r.send(&bytes).await;
    assert_eq!(r.read_response().await.status, 101);
    for (i, (opcode, payload)) in sent.iter().enumerate() {
        let f = r.read_frame().await;
        assert_eq!(f.opcode, *opcode, "message {i}");
        assert!(f.payload == *payload, "message {i} differs");
    }
    srv.wait_counter(Counter::MessagesSent(SubProtocol::Echo), sent.len() as u64)
        .await;
}

#[tokio::test]
async fn messages_on_other_sub_protocols_are_counted_and_dropped() {
    // msrp is served by the relay now (tests/msrp_relay.rs).
    let srv = ServerConfig::new().sub_protocols(&["sip", "xmpp"]).start();
    let a = srv.addr();
    for (proto, label) in [("sip", SubProtocol::Sip), ("xmpp", SubProtocol::Xmpp)] {
        let mut r = Raw::connect(a).await;
        r.handshake(a, proto).await;
        r.send(
            &[
                frame(true, op::TEXT, b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
                frame(true, op::BINARY, &[0; 2000]),
                frame(false, op::TEXT, b"frag"),
                frame(true, op::CONT, b"mented"),
                frame(true, op::PING, proto.as_bytes()),
            ]
            .concat(),
        )
        .await;
        // Nothing comes back but the Pong: the messages were dropped.
        let f = r.read_frame().await;
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (op::PONG, proto.as_bytes()),
            "{proto}"
        );
        srv.wait_counter(Counter::MessagesReceived(label), 3).await;
        srv.wait_counter(Counter::MessagesDropped(label), 3).await;
        // The connection is alive and closes cleanly.
        r.send(&close_frame(1000, b"")).await;
        r.expect_close(1000).await;
    }
}
