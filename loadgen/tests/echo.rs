//! End-to-end: run the rtedge-loadgen binary against an in-process echo
//! server (tokio-websockets), over ws:// and wss://.

use futures_util::{SinkExt, StreamExt};
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_websockets::ServerBuilder;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let builder = ServerBuilder::new()
        .add_header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("echo"))
        .expect("header");
    let Ok((_req, mut ws)) = builder.accept(s).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            break;
        }
    }
}

/// Start an echo server on a background thread; returns its address.
fn server(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(std_listener).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => echo(s).await,
                        Some(acc) => {
                            if let Ok(t) = acc.accept(s).await {
                                echo(t).await
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn loadgen(args: &[&str]) -> (i32, serde_json::Value, String) {
    let json = std::env::temp_dir().join(format!(
        "loadgen-test-{}-{}.json",
        std::process::id(),
        args.join("_").replace(['/', ':'], "")
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_rtedge-loadgen"))
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json);
    (out.status.code().unwrap_or(-1), v, text)
}

#[test]
fn ws_echo_count_binary_and_text() {
    let addr = server(None);
    let url = format!("ws://{addr}/");
    for mode in ["--binary", "--text"] {
        let (code, v, out) = loadgen(&[
            "ws-echo",
            "--url",
            &url,
            "--subprotocol",
            "echo",
            "-c",
            "4",
            "--size",
            "300",
            "--window",
            "8",
            "--count",
            "4000",
            mode,
        ]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(v["messages"]["received"], 4000, "{out}");
        assert_eq!(v["messages"]["lost"], 0);
        assert_eq!(v["messages"]["corrupted"], 0);
        assert_eq!(v["end_reason"], "count");
        assert!(v["latency_us"]["p50"].as_u64().is_some());
    }
}

#[test]
fn ws_echo_open_loop_duration() {
    let addr = server(None);
    let url = format!("ws://{addr}/");
    let (code, v, out) = loadgen(&[
        "ws-echo",
        "--url",
        &url,
        "--subprotocol",
        "echo",
        "-c",
        "5",
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    assert_eq!(code, 0, "{out}");
    let rate = v["throughput"]["msg_per_s"].as_f64().unwrap();
    assert!((800.0..1200.0).contains(&rate), "rate {rate}: {out}");
    assert!(!v["per_second"].as_array().unwrap().is_empty());
}

#[test]
fn wss_insecure_and_verification() {
    let addr = server(Some(tls_acceptor()));
    let url = format!("wss://localhost:{}/", addr.port());
    let (code, v, out) = loadgen(&[
        "ws-echo",
        "--url",
        &url,
        "--insecure",
        "--subprotocol",
        "echo",
        "-c",
        "2",
        "--count",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["messages"]["received"], 1000);
    // Without --insecure the self-signed certificate is rejected.
    let (code, v, out) = loadgen(&[
        "ws-echo",
        "--url",
        &url,
        "--subprotocol",
        "echo",
        "-c",
        "1",
        "--count",
        "10",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["errors"]["tls"]["count"], 1, "{out}");
}

#[test]
fn subprotocol_mismatch_is_a_handshake_error() {
    let addr = server(None);
    let url = format!("ws://{addr}/");
    let (code, v, out) = loadgen(&[
        "ws-echo",
        "--url",
        &url,
        "--subprotocol",
        "sip",
        "-c",
        "1",
        "--count",
        "10",
    ]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(v["errors"]["handshake"]["count"], 1, "{out}");
}

#[test]
fn ws_connect_hold() {
    let addr = server(None);
    let url = format!("ws://{addr}/");
    let (code, v, out) = loadgen(&[
        "ws-connect",
        "--url",
        &url,
        "--subprotocol",
        "echo",
        "-c",
        "200",
        "--duration",
        "1s",
        "--ping-interval",
        "300ms",
        "--threads",
        "2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["connections"]["survived"], 200, "{out}");
    assert!(v["messages"]["pongs_received"].as_u64().unwrap() >= 200);
}
