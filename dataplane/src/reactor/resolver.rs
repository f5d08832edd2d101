//! Name resolution for MSRP next hops, off the reactors: a worker must not
//! block in getaddrinfo, so names go to one resolver thread, and the
//! answer comes back through the asking worker's inbox
//! ([`super::InboxMsg::Resolved`]). Workers cache answers for
//! [`CACHE_MS`] (the system resolver does not tell TTLs).

use super::InboxMsg;
use super::inbox::Inbox;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::mpsc;

/// How long a worker reuses an answer.
pub const CACHE_MS: u64 = 60_000;

/// One name to resolve for worker `core`.
pub struct Request {
    pub host: String,
    pub port: u16,
    pub core: usize,
}

/// The handle workers send requests through.
pub struct Resolver {
    tx: mpsc::Sender<Request>,
}

impl Resolver {
    /// Starts the resolver thread; it ends when the handle is dropped.
    pub fn start(inboxes: Vec<Arc<Inbox<InboxMsg>>>) -> std::io::Result<Resolver> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rtedge-resolver".into())
            .spawn(move || {
                for r in rx {
                    let addr = (r.host.as_str(), r.port)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut it| it.next());
                    if let Some(inbox) = inboxes.get(r.core) {
                        // A full inbox loses the answer; the worker's
                        // queued frames then fail by their transaction
                        // timeout (408) like any unanswered one.
                        let _ = inbox.send(InboxMsg::Resolved {
                            host: r.host,
                            port: r.port,
                            addr,
                        });
                    }
                }
            })?;
        Ok(Resolver { tx })
    }

    /// Ask for `host`; `false` if the resolver thread is gone.
    pub fn resolve(&self, host: &str, port: u16, core: usize) -> bool {
        self.tx
            .send(Request {
                host: host.to_string(),
                port,
                core,
            })
            .is_ok()
    }
}

/// A literal address (IPv4, or IPv6 with or without brackets).
pub fn literal(host: &str) -> Option<std::net::IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn answers_arrive_in_the_asking_workers_inbox() {
        let inboxes: Vec<_> = (0..2).map(|_| Arc::new(Inbox::new(8).unwrap())).collect();
        let r = Resolver::start(inboxes.clone()).unwrap();
        assert!(r.resolve("localhost", 2855, 1));
        assert!(r.resolve("no-such-host.invalid", 2855, 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 2 && Instant::now() < deadline {
            if let Some(InboxMsg::Resolved { host, port, addr }) = inboxes[1].pop() {
                got.push((host, port, addr));
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "localhost");
        assert!(
            got[0]
                .2
                .is_some_and(|a| a.ip().is_loopback() && a.port() == 2855)
        );
        assert_eq!(got[1].2, None, "RFC 6761: .invalid never resolves");
        assert!(inboxes[0].pop().is_none());
    }

    #[test]
    fn literals() {
        assert!(literal("127.0.0.1").is_some());
        assert!(literal("[::1]").is_some());
        assert!(literal("relay.example.com").is_none());
    }
}
