//! The `rtedge` command line: check-config, defaults with no arguments,
//! JSON logs.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rtedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtedge"))
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = TempDir::new("cli");
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        "workers = 2\n[websocket]\nkeepalive_timeout = 30\nsub_protocols = [\"sip\", \"echo\"]\n",
    )
    .unwrap();
    let out = rtedge().arg("check-config").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Given values and defaults alike are printed.
    assert!(text.contains("keepalive_timeout = 30"), "{text}");
    assert!(text.contains("workers = 2"), "{text}");
    assert!(text.contains("cors_mode = \"none\""), "{text}");
    assert!(text.contains("address = \"127.0.0.1:8080\""), "{text}");
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let dir = TempDir::new("cli");
    for (body, key) in [
        ("[websocket]\nkeepalive_timout = 30\n", "keepalive_timout"),
        ("[websocket]\ncors_mode = \"sometimes\"\n", "cors_mode"),
        (
            "[[listen]]\ntransport = \"wss\"\naddress = \"127.0.0.1:1\"\n",
            "tls_cert",
        ),
        ("workers = 0\n", "workers"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, body).unwrap();
        let out = rtedge().arg("check-config").arg(&file).output().unwrap();
        assert!(!out.status.success(), "accepted {body:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{body:?}: {err}");
    }
    let out = rtedge()
        .arg("check-config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// With no arguments rtedge serves WebSocket (sip, msrp) on 127.0.0.1:8080
/// and management on 127.0.0.1:9090.
#[tokio::test]
async fn no_arguments_serves_the_loopback_defaults() {
    let child = rtedge()
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Killed on every way out, so a failure leaves no server on the ports.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Guard(child);
    async {
        let mut last = None;
        for _ in 0..100 {
            match tokio::net::TcpStream::connect("127.0.0.1:8080").await {
                Ok(s) => {
                    last = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let s = last.expect("rtedge listens on 127.0.0.1:8080");
        let mut ws = ws_client_over(s, "ws://127.0.0.1:8080/", Some("sip")).await;
        ws.close(None).await.ok();
        // Management answers on 9090 (it starts just after the data plane
        // listens, so it may need a moment).
        let mut mgmt = None;
        for _ in 0..100 {
            match tokio::net::TcpStream::connect("127.0.0.1:9090").await {
                Ok(s) => {
                    mgmt = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let mut m = mgmt.expect("management on 127.0.0.1:9090");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        m.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        within("healthz", m.read_to_string(&mut resp))
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    .await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn json_logs_are_json_lines() {
    let cfg = ServerConfig::new().listen_ws();
    let dir = TempDir::new("cli-json");
    let file = dir.path().join("json.toml");
    let text = cfg.render().replace("[log]\n", "[log]\njson = true\n");
    std::fs::write(&file, text).unwrap();
    let mut child = rtedge()
        .arg("run")
        .arg("--config")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut log = String::new();
    use std::io::Read;
    stderr.read_to_string(&mut log).unwrap();
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
}
