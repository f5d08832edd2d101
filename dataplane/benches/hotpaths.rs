//! Criterion micro-benchmarks of the data-plane hot paths.
//!
//! Run: `cargo bench -p rtedge-dataplane --bench hotpaths` (add `-- --quick`
//! for a short run, `-- --test` to only check that every bench runs). On a
//! shared machine, compare runs by instruction counts rather than time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::config::KeepaliveMechanism;
use dataplane::ws::frame::{self, OpCode};
use dataplane::ws::session::{SessionConfig, WsSession};
use dataplane::ws::unmask::unmask;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// In-place unmasking against a plain copy of the same size: the copy is
/// the floor any payload handling pays anyway.
fn unmask_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 1024, 64 * 1024] {
        g.throughput(Throughput::Bytes(size as u64));
        // Offset 6: where the payload of a small masked frame starts.
        let mut buf = vec![0x5au8; size + 6];
        g.bench_with_input(BenchmarkId::new("unmask", size), &size, |b, _| {
            b.iter(|| unmask(black_box(&mut buf[6..]), black_box(MASK), 0))
        });
        let src = vec![0xa5u8; size];
        let mut dst = vec![0u8; size + 6];
        g.bench_with_input(BenchmarkId::new("copy_from_slice", size), &size, |b, _| {
            b.iter(|| dst[6..].copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

fn utf8_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii: Vec<u8> = b"INVITE sip:bob@example.com SIP/2.0 "
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let mut multibyte = "Grüße, καλημέρα, 你好世界, 😀 ".repeat(4096 / 40 + 1);
    while multibyte.len() > 4096 {
        multibyte.pop();
    }
    let multibyte = multibyte.into_bytes();
    for (name, data) in [("ascii_4k", &ascii), ("multibyte_4k", &multibyte)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("simdutf8", name), data, |b, d| {
            b.iter(|| simdutf8::basic::from_utf8(black_box(d)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("std", name), data, |b, d| {
            b.iter(|| std::str::from_utf8(black_box(d)).is_ok())
        });
    }
    g.finish();
}

fn frame_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 4096] {
        let mut f = Vec::new();
        frame::write_masked_frame(&mut f, true, OpCode::Text, &vec![b'a'; size], MASK);
        g.bench_with_input(BenchmarkId::new("parse_header", size), &f, |b, f| {
            b.iter(|| frame::parse_client_header(black_box(f)))
        });
        let payload = vec![b'a'; size];
        let mut out = Vec::with_capacity(size + 16);
        g.bench_with_input(BenchmarkId::new("write_header", size), &size, |b, &n| {
            b.iter(|| {
                out.clear();
                frame::write_header(&mut out, true, OpCode::Text, black_box(n));
            })
        });
        g.bench_with_input(BenchmarkId::new("write_frame", size), &payload, |b, p| {
            b.iter(|| {
                out.clear();
                frame::write_frame(&mut out, OpCode::Text, black_box(p));
            })
        });
    }
    g.finish();
}

/// One read's worth of 16 masked 64-byte text frames through `on_bytes`, with
/// an echo handler: header parse, unmask, UTF-8, delivery, reply framing.
fn session_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    // Unmasking in place changes the buffer; an all-zero key keeps it
    // reusable across iterations and costs the same (XOR work does not depend
    // on the key).
    let key = [0u8; 4];
    let mut batch = Vec::new();
    for i in 0..16u8 {
        let payload = [b'a' + i % 26; 64];
        frame::write_masked_frame(&mut batch, true, OpCode::Text, &payload, key);
    }
    let cfg = Arc::new(SessionConfig {
        max_message_size: 1 << 20,
        keepalive: KeepaliveMechanism::Ping,
        keepalive_timeout_ms: 180_000,
        keepalive_max_missed: 3,
        ping_data: b"rtedge".to_vec(),
        close_timeout_ms: 5_000,
        idle_timeout_ms: 0,
    });
    let mut session = WsSession::new(cfg, 0);
    let mut out = Vec::with_capacity(4096);
    g.throughput(Throughput::Elements(16));
    g.bench_function("on_bytes_16x64_echo", |b| {
        b.iter(|| {
            out.clear();
            let n = session.on_bytes(black_box(&mut batch), 1, &mut out, &mut |_, p, o| {
                frame::write_frame(o, OpCode::Text, p)
            });
            while session.poll_event().is_some() {}
            black_box(n)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// Handshake (owned by the handshake author).
// ---------------------------------------------------------------------------

/// A typical browser (Chrome) SIP-over-WebSocket opening handshake.
const BROWSER_SIP_HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\n\
Host: sip.example.com:8443\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://phone.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: sip\r\n\
\r\n";

fn handshake_group(c: &mut Criterion) {
    use dataplane::auth::{CredentialStore, NonceManager, Users};
    use dataplane::config::{CorsMode, SubProtocol};
    use dataplane::ws::handshake::{HandshakeAuth, HandshakePolicy, Outcome, process};

    let open = HandshakePolicy {
        sub_protocols: vec![SubProtocol::Sip, SubProtocol::Msrp],
        paths: Vec::new(),
        hosts: Vec::new(),
        origins: Vec::new(),
        cors_mode: CorsMode::None,
        server_header: "rtedge".into(),
        max_request_header_size: 8192,
        auth: None,
    };
    let strict = HandshakePolicy {
        paths: vec!["/ws".into()],
        hosts: vec!["sip.example.com".into()],
        origins: vec!["https://phone.example.com".into()],
        cors_mode: CorsMode::Origin,
        ..open.clone()
    };
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("accept_browser_sip", |b| {
        b.iter(|| {
            let o = process(black_box(BROWSER_SIP_HANDSHAKE), &open, true, 1_000);
            assert!(matches!(o, Outcome::Accepted(_)));
            o
        })
    });
    g.bench_function("accept_browser_sip_allow_lists_cors", |b| {
        b.iter(|| process(black_box(BROWSER_SIP_HANDSHAKE), &strict, true, 1_000))
    });
    let half = &BROWSER_SIP_HANDSHAKE[..BROWSER_SIP_HANDSHAKE.len() / 2];
    g.bench_function("partial_half_head", |b| {
        b.iter(|| process(black_box(half), &open, true, 1_000))
    });
    let gossip = String::from_utf8_lossy(BROWSER_SIP_HANDSHAKE)
        .replace("Protocol: sip", "Protocol: gossip")
        .into_bytes();
    g.bench_function("reject_sub_protocol", |b| {
        b.iter(|| process(black_box(&gossip), &open, true, 1_000))
    });

    // Digest (MD5, qop=auth) on top of the browser request.
    let store = CredentialStore::from_toml(
        "[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n",
        "rtedge",
    )
    .expect("users");
    let nonces = NonceManager::new([7; 32], 300);
    let nonce = nonces.issue(1_000);
    let md5_hex = |s: String| {
        use md5::Digest as _;
        hex::encode(md5::Md5::digest(s.as_bytes()))
    };
    let ha1 = md5_hex("alice:rtedge:wonderland".into());
    let ha2 = md5_hex("GET:/ws".into());
    let response = md5_hex(format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    let authz = format!(
        "Authorization: Digest username=\"alice\", realm=\"rtedge\", nonce=\"{nonce}\", \
         uri=\"/ws\", algorithm=MD5, response=\"{response}\", qop=auth, nc=00000001, \
         cnonce=\"0a4f113b\"\r\n\r\n"
    );
    let mut with_auth = BROWSER_SIP_HANDSHAKE[..BROWSER_SIP_HANDSHAKE.len() - 2].to_vec();
    with_auth.extend_from_slice(authz.as_bytes());
    let authed = HandshakePolicy {
        auth: Some(HandshakeAuth {
            realm: "rtedge".into(),
            store: Arc::new(Users::fixed(store)),
            nonces,
        }),
        ..open.clone()
    };
    g.bench_function("accept_digest_md5", |b| {
        b.iter(|| {
            let o = process(black_box(&with_auth), &authed, true, 1_000);
            assert!(matches!(o, Outcome::Accepted(_)));
            o
        })
    });
    g.bench_function("challenge_401", |b| {
        b.iter(|| process(black_box(BROWSER_SIP_HANDSHAKE), &authed, true, 1_000))
    });
    g.finish();
}

/// The MSRP relay engine on the path of the MSRP benchmark: a batch of 32
/// SENDs (100-byte bodies) from a sender through a receiver's relay URI,
/// and the receiver's 32 200s — per message: two frames parsed, one
/// forwarded, one hop-by-hop 200 written.
fn msrp_group(c: &mut Criterion) {
    use dataplane::auth::{CredentialStore, NonceManager, Users};
    use dataplane::msrp::auth::UsePath;
    use dataplane::msrp::parser::ParserLimits;
    use dataplane::msrp::relay::{Action, Env, MsrpConn, RelayConfig, RelayCore};
    use dataplane::msrp::session_map::{SessionEntry, SessionId};

    let mut core = RelayCore::new(RelayConfig::default(), 0, 1024);
    let sid = SessionId::generate(0, &[7; 15]);
    let peer = "msrp://127.0.0.1:40002/recv1;tcp";
    core.sessions
        .insert(SessionEntry {
            id: sid,
            conn: 2,
            user: "bob".into(),
            peer_uri: peer.into(),
            peer_addr: "127.0.0.1:40002".into(),
            expires_ms: u64::MAX,
            bound: None,
        })
        .unwrap();
    let up = || UsePath {
        secure: false,
        host_port: "127.0.0.1:2855".into(),
        transport: "tcp",
    };
    let mut sender = MsrpConn::new(
        1,
        ParserLimits::default(),
        up(),
        "127.0.0.1:40001".into(),
        false,
    );
    let mut receiver = MsrpConn::new(
        2,
        ParserLimits::default(),
        up(),
        "127.0.0.1:40002".into(),
        false,
    );
    let store = Users::fixed(CredentialStore::empty("bench"));
    let nonces = NonceManager::new([1; 32], 300);
    let body = [b'x'; 100];
    let mut sends = Vec::new();
    for i in 0..32 {
        sends.extend_from_slice(
            format!(
                "MSRP s{i:05} SEND\r\nTo-Path: msrp://127.0.0.1:2855/{sid};tcp {peer}\r\nFrom-Path: msrp://127.0.0.1:40001/send1;tcp\r\nMessage-ID: m{i}\r\nByte-Range: 1-100/100\r\nContent-Type: text/plain\r\n\r\n"
            )
            .as_bytes(),
        );
        sends.extend_from_slice(&body);
        sends.extend_from_slice(format!("\r\n-------s{i:05}$\r\n").as_bytes());
    }
    let mut g = c.benchmark_group("msrp_relay");
    g.throughput(Throughput::Elements(32));
    g.bench_function("send_and_response_x32", |b| {
        let mut actions = Vec::new();
        let mut responses = Vec::new();
        b.iter(|| {
            let mut rng = |buf: &mut [u8]| buf.fill(3);
            let mut seq = 0u8;
            let mut rng2 = |buf: &mut [u8]| {
                seq = seq.wrapping_add(1);
                buf.fill(seq)
            };
            let _ = &mut rng;
            let mut env = Env {
                store: &store,
                nonces: &nonces,
                now_ms: 1000,
                unix_secs: 1,
                rng: &mut rng2,
            };
            actions.clear();
            let n = core.on_bytes(&mut sender, black_box(&sends), &mut env, &mut actions);
            assert_eq!(n, sends.len());
            responses.clear();
            for a in &actions {
                if let Action::ForwardHead { txn: Some(t), .. } = a {
                    let t = std::str::from_utf8(t).unwrap();
                    responses.extend_from_slice(
                        format!("MSRP {t} 200 OK\r\nTo-Path: msrp://127.0.0.1:2855/{sid};tcp\r\nFrom-Path: {peer}\r\n-------{t}$\r\n").as_bytes(),
                    );
                }
            }
            // As the reactor does: written frames go back to the engine.
            for a in actions.drain(..) {
                if let Action::ForwardHead { head: f, .. } | Action::Reply(f) = a {
                    core.recycle(f);
                }
            }
            core.on_bytes(&mut receiver, &responses, &mut env, &mut actions);
            assert_eq!(core.pending_transactions(), 0);
        })
    });
    g.finish();
}

/// HTTP Digest (RFC 2617 / RFC 7616, MD5, qop=auth) as MSRP AUTH and the
/// WebSocket handshake check it: parse the Authorization value, check the
/// nonce's MAC and age, recompute the response, compare in constant time.
fn digest_group(c: &mut Criterion) {
    use dataplane::auth::digest::{DigestResult, parse_digest_authorization, verify_digest};
    use dataplane::auth::{CredentialStore, NonceManager};
    use md5::{Digest, Md5};

    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let md5 = |s: String| hex(&Md5::digest(s.as_bytes()));
    let store = CredentialStore::from_toml(
        "[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n",
        "bench",
    )
    .unwrap();
    let nonces = NonceManager::new([9; 32], 300);
    let nonce = nonces.issue(1_000);
    let uri = "msrp://127.0.0.1:2855;tcp";
    let ha1 = md5("alice:bench:wonderland".into());
    let ha2 = md5(format!("AUTH:{uri}"));
    let resp = md5(format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    let value = format!(
        "Digest username=\"alice\", realm=\"bench\", nonce=\"{nonce}\", uri=\"{uri}\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"{resp}\""
    );
    let mut g = c.benchmark_group("digest");
    g.bench_function("parse_and_verify_md5", |b| {
        b.iter(|| {
            let creds = parse_digest_authorization(black_box(&value)).unwrap();
            let r = verify_digest(&store, &creds, "AUTH", "bench", &nonces, 1_001);
            assert!(matches!(r, DigestResult::Ok { .. }));
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    unmask_group,
    utf8_group,
    frame_group,
    session_group,
    handshake_group,
    msrp_group,
    digest_group
);
criterion_main!(benches);
