//! Shared helpers for the comparison peers and the comparison runner.

use std::net::SocketAddr;

/// `--listen ADDR` (default 127.0.0.1:9001) from the command line; also
/// accepts a bare port.
pub fn listen_addr_from_args() -> SocketAddr {
    let args: Vec<String> = std::env::args().collect();
    let mut addr = "127.0.0.1:9001".to_string();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--listen" | "-l" if i + 1 < args.len() => {
                addr = args[i + 1].clone();
                i += 1;
            }
            "--help" | "-h" => {
                println!(
                    "usage: {} [--listen ADDR]   (WebSocket echo server)",
                    args[0]
                );
                std::process::exit(0);
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: {} [--listen ADDR]",
                    args[0]
                );
                std::process::exit(2);
            }
        }
        i += 1;
    }
    if !addr.contains(':') {
        addr = format!("127.0.0.1:{addr}");
    }
    addr.parse().unwrap_or_else(|e| {
        eprintln!("bad --listen address {addr:?}: {e}");
        std::process::exit(2);
    })
}

/// The first sub-protocol a client offers in a `Sec-WebSocket-Protocol`
/// header value (`"sip, msrp"` → `"sip"`).
pub fn first_offered(value: &str) -> Option<&str> {
    value.split(',').map(str::trim).find(|p| !p.is_empty())
}

/// The first sub-protocol offered in a raw HTTP request head, if any.
pub fn offered_in_head(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("sec-websocket-protocol") {
            first_offered(value).map(str::to_string)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered() {
        assert_eq!(first_offered("sip, msrp"), Some("sip"));
        assert_eq!(first_offered(" echo "), Some("echo"));
        assert_eq!(first_offered(""), None);
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nsec-websocket-protocol: echo, sip\r\n\r\n";
        assert_eq!(offered_in_head(head).as_deref(), Some("echo"));
        assert_eq!(offered_in_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }
}
