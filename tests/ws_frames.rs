//! Frame-level rules of RFC 6455 §5 and close codes of §7, with hand-built
//! masked frames on raw sockets against the `echo` sub-protocol.

mod common;

use common::*;
use dataplane::region::{CloseCode, Counter, SubProtocol, Transport};
use tokio::io::AsyncWriteExt;

/// A masked frame with a hand-chosen (possibly invalid) length encoding:
/// `len7` is the 7-bit length field, `ext` the extended length bytes.
fn frame_with_len(b0: u8, len7: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b0, 0x80 | len7];
    v.extend_from_slice(ext);
    v.extend_from_slice(&MASK);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    v
}

/// Opens an echo connection, sends `bytes`, and expects Close `code` then
/// the server closing TCP.
async fn expect_failure(addr: std::net::SocketAddr, what: &str, bytes: &[u8], code: u16) {
    let mut r = Raw::echo(addr).await;
    r.send(bytes).await;
    let f = r.read_frame().await;
    assert_eq!(
        f.opcode,
        op::CLOSE,
        "{what}: expected Close {code}, got {f:?}"
    );
    assert_eq!(
        f.close_code(),
        Some(code),
        "{what}: close code (reason {:?})",
        f.close_reason()
    );
    assert!(
        std::str::from_utf8(&f.payload[2..]).is_ok(),
        "{what}: close reason must be UTF-8"
    );
    r.expect_eof().await;
}

#[tokio::test]
async fn protocol_violations_are_closed_with_1002() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let fin = 0x80u8;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked text frame", vec![0x81, 0x02, b'h', b'i']),
        ("RSV1", frame_b0(fin | 0x40 | op::TEXT, b"x", MASK)),
        ("RSV2", frame_b0(fin | 0x20 | op::BINARY, b"x", MASK)),
        ("RSV3", frame_b0(fin | 0x10 | op::PING, b"x", MASK)),
        (
            "control frame of 126 bytes",
            frame(true, op::PING, &[1; 126]),
        ),
        ("fragmented ping", frame(false, op::PING, b"p")),
        (
            "fragmented close",
            frame(false, op::CLOSE, &1000u16.to_be_bytes()),
        ),
        (
            "continuation without a start",
            frame(true, op::CONT, b"orphan"),
        ),
        (
            "continuation (not final) without a start",
            frame(false, op::CONT, b"orphan"),
        ),
        (
            "new text inside a fragmented message",
            [frame(false, op::TEXT, b"a"), frame(true, op::TEXT, b"b")].concat(),
        ),
        (
            "new binary inside a fragmented message",
            [
                frame(false, op::BINARY, b"a"),
                frame(false, op::CONT, b"b"),
                frame(true, op::BINARY, b"c"),
            ]
            .concat(),
        ),
        (
            "16-bit length for 5 bytes",
            frame_with_len(fin | op::TEXT, 126, &5u16.to_be_bytes(), b"hello"),
        ),
        (
            "64-bit length for 200 bytes",
            frame_with_len(fin | op::BINARY, 127, &200u64.to_be_bytes(), &[0; 200]),
        ),
        (
            "64-bit length for 65535 bytes (header only)",
            frame_with_len(fin | op::BINARY, 127, &65535u64.to_be_bytes(), &[]),
        ),
        (
            "64-bit length with the top bit set (header only)",
            frame_with_len(fin | op::BINARY, 127, &(1u64 << 63 | 5).to_be_bytes(), &[]),
        ),
    ];
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let what: &'static str = Box::leak(format!("reserved opcode {opcode:#x}").into_boxed_str());
        cases.push((what, frame(true, opcode, b"")));
    }
    for (what, bytes) in &cases {
        expect_failure(a, what, bytes, 1002).await;
    }
    let n = cases.len() as u64;
    srv.wait_counter(Counter::ProtocolErrors(CloseCode::ProtocolError), n)
        .await;
    srv.wait_counter(Counter::CloseCodesSent(CloseCode::ProtocolError), n)
        .await;
    // Every failed connection is released.
    srv.wait_gauge(Counter::ConnectionsActive(Transport::Ws), 0)
        .await;
    srv.wait_gauge(Counter::WsSessionsActive(SubProtocol::Echo), 0)
        .await;
    assert!(srv.region().connections().is_empty());
}

#[tokio::test]
async fn text_must_be_utf8_also_across_fragments() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();

    // "€" = E2 82 AC split across fragments is valid and echoed whole.
    let mut r = Raw::echo(a).await;
    r.send(
        &[
            frame(false, op::TEXT, b"a\xE2\x82"),
            frame(true, op::CONT, b"\xACb"),
        ]
        .concat(),
    )
    .await;
    let f = r.read_frame().await;
    assert_eq!((f.fin, f.opcode), (true, op::TEXT));
    assert_eq!(f.payload, "a€b".as_bytes());
    // Split in three, with a 4-byte code point over all fragments.
    r.send(
        &[
            frame(false, op::TEXT, b"\xF0"),
            frame(false, op::CONT, b"\x9F\x98"),
            frame(true, op::CONT, b"\x80!"),
        ]
        .concat(),
    )
    .await;
    assert_eq!(r.read_frame().await.payload, "😀!".as_bytes());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("0xFF in a single frame", frame(true, op::TEXT, b"ok\xFF")),
        ("overlong encoding", frame(true, op::TEXT, b"\xC0\xAF")),
        ("UTF-16 surrogate", frame(true, op::TEXT, b"\xED\xA0\x80")),
        (
            "code point above U+10FFFF",
            frame(true, op::TEXT, b"\xF4\x90\x80\x80"),
        ),
        (
            "invalid continuation byte in the next fragment",
            [
                frame(false, op::TEXT, b"a\xE2\x82"),
                frame(true, op::CONT, b"(b"),
            ]
            .concat(),
        ),
        (
            "message ends inside a code point",
            [frame(false, op::TEXT, b"a\xE2"), frame(true, op::CONT, b"")].concat(),
        ),
        (
            "invalid byte in a non-final fragment",
            [frame(false, op::TEXT, b"\xFF"), frame(true, op::CONT, b"x")].concat(),
        ),
    ];
    for (what, bytes) in &cases {
        expect_failure(a, what, bytes, 1007).await;
    }
    // Binary messages are not checked.
    let mut r = Raw::echo(a).await;
    r.echo_roundtrip(op::BINARY, b"\xFF\xFE\xC0").await;

    srv.wait_counter(
        Counter::ProtocolErrors(CloseCode::InvalidPayload),
        cases.len() as u64,
    )
    .await;
}

#[tokio::test]
async fn message_over_max_size_gets_1009_before_its_payload() {
    let srv = ServerConfig::new().ws("max_message_size = 65536").start();
    let a = srv.addr();
    let fin = 0x80u8;

    // At the limit: echoed.
    let mut r = Raw::echo(a).await;
    r.echo_roundtrip(op::BINARY, &vec![0xA5; 65536]).await;

    // Over the limit: only the header is sent; the server must answer
    // without waiting for the payload.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "binary of 65537 bytes",
            frame_with_len(fin | op::BINARY, 127, &65537u64.to_be_bytes(), &[]),
        ),
        (
            "text of 2^40 bytes",
            frame_with_len(fin | op::TEXT, 127, &(1u64 << 40).to_be_bytes(), &[]),
        ),
        (
            "fragments adding up to more than the limit",
            [
                frame(false, op::BINARY, &[1; 40000]),
                frame_with_len(fin | op::CONT, 126, &30000u16.to_be_bytes(), &[]),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in &cases {
        expect_failure(a, what, bytes, 1009).await;
    }
    srv.wait_counter(
        Counter::ProtocolErrors(CloseCode::MessageTooBig),
        cases.len() as u64,
    )
    .await;
}

#[tokio::test]
async fn ping_gets_pong_and_unsolicited_pong_is_ignored() {
    let srv = ServerConfig::new().start();
    let mut r = Raw::echo(srv.addr()).await;
    for payload in [&b"hello"[..], b"", &[0xEE; 125]] {
        r.send(&frame(true, op::PING, payload)).await;
        let f = r.read_frame().await;
        assert_eq!(f.opcode, op::PONG, "{f:?}");
        assert_eq!(f.payload, payload);
    }
    // An unsolicited Pong gets no answer: the next frame is the echo.
    r.send(
        &[
            frame(true, op::PONG, b"zz"),
            frame(true, op::TEXT, b"after pong"),
        ]
        .concat(),
    )
    .await;
    let f = r.read_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (op::TEXT, &b"after pong"[..])
    );
}

#[tokio::test]
async fn close_with_a_valid_code_is_echoed_then_tcp_closed() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    let codes = [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
    ];
    for code in codes {
        let mut r = Raw::echo(a).await;
        r.send(&close_frame(code, b"bye \xE2\x82\xAC")).await;
        let f = r.expect_close(code).await;
        assert!(f.payload.len() <= 125);
    }
    // An empty Close is answered with an empty Close (no status to echo).
    let mut r = Raw::echo(a).await;
    r.send(&frame(true, op::CLOSE, b"")).await;
    let f = r.read_frame().await;
    assert_eq!(f.opcode, op::CLOSE);
    assert_eq!(f.close_code(), None, "{f:?}");
    r.expect_eof().await;
    // Data after the peer's Close is not processed.
    let mut r = Raw::echo(a).await;
    r.send(&[close_frame(1000, b""), frame(true, op::TEXT, b"late")].concat())
        .await;
    r.expect_close(1000).await;

    // Messages before the Close in the same write are still answered.
    let mut r = Raw::echo(a).await;
    r.send(
        &[
            frame(true, op::TEXT, b"first"),
            frame(true, op::PING, b"second"),
            close_frame(3000, b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(r.read_frame().await.payload, b"first");
    assert_eq!(r.read_frame().await.payload, b"second");
    r.expect_close(3000).await;

    srv.wait_counter(Counter::CloseCodesReceived(CloseCode::Normal), 2)
        .await;
    srv.wait_counter(Counter::CloseCodesSent(CloseCode::Normal), 2)
        .await;
    srv.wait_counter(Counter::CloseCodesReceived(CloseCode::NoStatus), 1)
        .await;
}

#[tokio::test]
async fn invalid_close_frames() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        expect_failure(
            a,
            &format!("close code {code}"),
            &close_frame(code, b""),
            1002,
        )
        .await;
    }
    expect_failure(
        a,
        "1-byte close payload",
        &frame(true, op::CLOSE, &[0x03]),
        1002,
    )
    .await;
    expect_failure(
        a,
        "invalid UTF-8 close reason",
        &close_frame(1000, b"\xFF\xFE"),
        1007,
    )
    .await;
    expect_failure(
        a,
        "close reason cut inside a code point",
        &close_frame(1000, b"\xE2\x82"),
        1007,
    )
    .await;
}

#[tokio::test]
async fn fragmented_messages_with_interleaved_control_frames() {
    let srv = ServerConfig::new().start();
    let mut r = Raw::echo(srv.addr()).await;
    r.send(
        &[
            frame(false, op::TEXT, b"Hel"),
            frame(true, op::PING, b"p1"),
            frame(false, op::CONT, b"lo "),
            frame(true, op::PONG, b"unsolicited"),
            frame(true, op::PING, b"p2"),
            frame(false, op::CONT, b""),
            frame(true, op::CONT, b"World"),
        ]
        .concat(),
    )
    .await;
    let want = [
        (op::PONG, &b"p1"[..]),
        (op::PONG, b"p2"),
        (op::TEXT, b"Hello World"),
    ];
    for (opcode, payload) in want {
        let f = r.read_frame().await;
        assert_eq!(
            (f.opcode, f.payload.as_slice(), f.fin),
            (opcode, payload, true)
        );
    }
    // A binary message in many fragments, some empty, reassembled exactly.
    let mut rng = Rng::new(7);
    let body = rng.bytes(70_000);
    let mut bytes = Vec::new();
    let cuts = [0usize, 1, 1, 500, 4096, 65_000, 69_999, 70_000];
    for (i, w) in cuts.windows(2).enumerate() {
        let opcode = if i == 0 { op::BINARY } else { op::CONT };
        bytes.extend(frame(i + 2 == cuts.len(), opcode, &body[w[0]..w[1]]));
        if i % 2 == 1 {
            bytes.extend(frame(true, op::PING, &[i as u8]));
        }
    }
    r.send(&bytes).await;
    let mut pongs = 0;
    loop {
        let f = r.read_frame().await;
        if f.opcode == op::PONG {
            pongs += 1;
            continue;
        }
        assert_eq!((f.opcode, f.fin), (op::BINARY, true));
        assert!(f.payload == body, "reassembled message differs");
        break;
    }
    assert_eq!(pongs, 3);
}

#[tokio::test]
async fn server_frames_are_unmasked_with_minimal_lengths() {
    let srv = ServerConfig::new().ws("max_message_size = 2097152").start();
    let mut r = Raw::echo(srv.addr()).await;
    let mut rng = Rng::new(99);
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
        for opcode in [op::BINARY, op::TEXT] {
            let payload: Vec<u8> = if opcode == op::TEXT {
                (0..len).map(|i| b'a' + (i % 26) as u8).collect()
            } else {
                rng.bytes(len)
            };
            r.send(&frame(true, opcode, &payload)).await;
            let want = server_frame(opcode, &payload);
            let got = r.read_bytes(want.len()).await;
            assert!(
                got[..want.len().min(14)] == want[..want.len().min(14)],
                "header of a {len}-byte echo: got {:02x?}, want {:02x?}",
                &got[..got.len().min(14)],
                &want[..want.len().min(14)]
            );
            assert!(got == want, "{len}-byte echo differs");
        }
    }
    // Control frames too: the Pong to a Ping and the Close.
    r.send(&frame(true, op::PING, b"raw")).await;
    assert_eq!(r.read_bytes(5).await, server_frame(op::PONG, b"raw"));
    r.send(&close_frame(1000, b"")).await;
    assert_eq!(
        r.read_bytes(4).await,
        server_frame(op::CLOSE, &1000u16.to_be_bytes())
    );
    r.expect_eof().await;
}

/// A client may half-close TCP (FIN) right after its Close: it still waits
/// for the server's Close, which RFC 6455 §5.5.1 requires the server to
/// send ("MUST send a Close frame in response"), and for the echoes of the
/// messages it sent before.
#[tokio::test]
async fn close_then_half_close_still_gets_the_close_echo() {
    let srv = ServerConfig::new().start();
    let a = srv.addr();
    for i in 0..5 {
        let mut r = Raw::echo(a).await;
        r.send(
            &[
                frame(true, op::TEXT, b"last words"),
                close_frame(1000, b"bye"),
            ]
            .concat(),
        )
        .await;
        within("half-close", r.io.shutdown())
            .await
            .expect("shutdown(SHUT_WR)");
        let f = match r.try_read_frame().await {
            Ok(Some(f)) => f,
            other => panic!("attempt {i}: no echo after message + Close + FIN: {other:?}"),
        };
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (op::TEXT, &b"last words"[..]),
            "attempt {i}"
        );
        match r.try_read_frame().await {
            Ok(Some(f)) => assert_eq!(f.close_code(), Some(1000), "attempt {i}"),
            other => panic!("attempt {i}: no Close echo after Close + FIN: {other:?}"),
        }
        r.expect_eof().await;
    }
}
