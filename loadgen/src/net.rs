//! Targets (ws:// and wss:// URLs), TCP/TLS connecting, and the `Stream`
//! type the scenarios drive.

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::rng::Rng;
use crate::ws::handshake;

/// WebSocket URL schemes: (prefix, TLS, default port).
pub const WS_SCHEMES: &[(&str, bool, u16)] = &[("ws://", false, 80), ("wss://", true, 443)];

/// A parsed URL (`ws://`, `wss://`, or for MSRP also `msrp://`, `msrps://`).
#[derive(Debug, Clone)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    /// Path and query, at least "/".
    pub path: String,
    /// The Host header value.
    pub host_header: String,
    pub addrs: Vec<SocketAddr>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        Self::parse_schemes(url, WS_SCHEMES)
    }

    /// Parse a URL whose scheme is one of `schemes` (scheme with "://",
    /// TLS or not, default port).
    pub fn parse_schemes(url: &str, schemes: &[(&str, bool, u16)]) -> Result<Target> {
        let Some((tls, default_port, rest)) = schemes
            .iter()
            .find_map(|(s, tls, port)| url.strip_prefix(s).map(|r| (*tls, *port, r)))
        else {
            let names: Vec<&str> = schemes.iter().map(|s| s.0).collect();
            bail!("URL must start with {} ({url})", names.join(" or "));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            bail!("user info in the URL is not supported");
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| anyhow!("bad IPv6 literal in {url}"))?;
            let host = &r[..end];
            let port = match &r[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .ok_or_else(|| anyhow!("bad port in {url}"))?
                    .parse()
                    .context("port")?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().context("port")?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            bail!("no host in {url}");
        }
        let host_header = if port == default_port {
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{host} resolved to no address");
        }
        Ok(Target {
            tls,
            host,
            path,
            host_header,
            addrs,
        })
    }

    pub fn is_loopback(&self) -> bool {
        self.addrs.iter().all(|a| a.ip().is_loopback())
    }
}

/// A client connection: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// The local address of the underlying TCP socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Plain(s) => s.local_addr(),
            Stream::Tls(s) => s.get_ref().0.local_addr(),
        }
    }
}

/// A failure while connecting or running, classified for the report.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub kind: &'static str,
    pub detail: String,
}

impl ConnError {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        ConnError {
            kind,
            detail: detail.into(),
        }
    }
    pub fn io(e: io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionReset => "reset",
            io::ErrorKind::BrokenPipe => "broken_pipe",
            io::ErrorKind::UnexpectedEof => "eof",
            io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
        ConnError::new(kind, e.to_string())
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// TLS and addressing options shared by all connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub subprotocol: Option<String>,
    /// Local source addresses, used round-robin (spreads ephemeral ports
    /// over several loopback addresses for >28k connections).
    pub local_addrs: Vec<IpAddr>,
    pub connect_timeout: Duration,
}

/// Opens connections and performs the WebSocket handshake. Shared by all
/// threads (cheap to clone).
#[derive(Clone)]
pub struct Connector {
    pub target: Arc<Target>,
    pub opts: Arc<ConnectOptions>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A connected, upgraded WebSocket: the stream and any bytes already read
/// past the handshake response.
pub struct Upgraded {
    pub stream: Stream,
    pub leftover: Vec<u8>,
}

impl Connector {
    pub fn new(target: Target, opts: ConnectOptions) -> Result<Connector> {
        let tls = if target.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?;
            let config = if opts.insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                    .with_no_client_auth()
            } else {
                let mut roots = rustls::RootCertStore::empty();
                let system = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
                for file in opts.ca_file.iter().chain(Some(&system)) {
                    if !file.exists() && file == &system {
                        continue;
                    }
                    for cert in CertificateDer::pem_file_iter(file)
                        .with_context(|| format!("reading {}", file.display()))?
                    {
                        let cert = cert.with_context(|| format!("parsing {}", file.display()))?;
                        // System bundles may hold certificates rustls rejects.
                        let _ = roots.add(cert);
                    }
                }
                if roots.is_empty() {
                    bail!("no trusted CA certificates: pass --ca FILE or --insecure");
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| anyhow!("TLS server name {}: {e}", target.host))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Connector {
            target: Arc::new(target),
            opts: Arc::new(opts),
            tls,
        })
    }

    /// TCP connect (+TLS) for connection number `idx`.
    pub async fn connect_stream(&self, idx: usize) -> Result<Stream, ConnError> {
        let addr = self.target.addrs[idx % self.target.addrs.len()];
        let tcp = if self.opts.local_addrs.is_empty() {
            TcpStream::connect(addr).await
        } else {
            let local = self.opts.local_addrs[idx % self.opts.local_addrs.len()];
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| ConnError::new("socket", e.to_string()))?;
            sock.bind(SocketAddr::new(local, 0))
                .map_err(|e| ConnError::new("bind", e.to_string()))?;
            sock.connect(addr).await
        }
        .map_err(|e| ConnError::new("connect", e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => connector
                .connect(name.clone(), tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(|e| ConnError::new("tls", e.to_string())),
        }
    }

    /// Connect and perform the opening handshake, bounded by the connect
    /// timeout.
    pub async fn connect(&self, idx: usize, rng: &mut Rng) -> Result<Upgraded, ConnError> {
        let fut = async {
            let mut stream = self.connect_stream(idx).await?;
            let key = handshake::client_key(rng);
            let req = handshake::request(
                &self.target.host_header,
                &self.target.path,
                &key,
                self.opts.subprotocol.as_deref(),
            );
            stream.write_all(&req).await.map_err(ConnError::io)?;
            stream.flush().await.map_err(ConnError::io)?;
            let mut buf = Vec::with_capacity(1024);
            loop {
                let n = read_some(&mut stream, &mut buf, 1024).await?;
                if n == 0 {
                    return Err(ConnError::new(
                        "handshake",
                        "connection closed during the handshake",
                    ));
                }
                match handshake::verify_response(&buf, &key, self.opts.subprotocol.as_deref()) {
                    Ok(None) => continue,
                    Ok(Some(head)) => {
                        buf.drain(..head);
                        return Ok(Upgraded {
                            stream,
                            leftover: buf,
                        });
                    }
                    Err(e) => return Err(ConnError::new("handshake", e.to_string())),
                }
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::new(
                "connect_timeout",
                format!("no upgrade within {:?}", self.opts.connect_timeout),
            )),
        }
    }
}

/// Append up to `max` bytes read from `s` to `buf`.
async fn read_some(s: &mut Stream, buf: &mut Vec<u8>, max: usize) -> Result<usize, ConnError> {
    use tokio::io::AsyncReadExt;
    let old = buf.len();
    buf.resize(old + max, 0);
    let r = s.read(&mut buf[old..]).await;
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(old + n);
    r.map_err(ConnError::io)
}

/// `--insecure`: accept any certificate, but still check handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Loopback source addresses 127.0.0.1..=127.0.0.n, for spreading many
/// connections over more ephemeral ports.
pub fn loopback_sources(n: usize) -> Vec<IpAddr> {
    (1..=n.clamp(1, 250) as u8)
        .map(|i| IpAddr::from([127, 0, 0, i]))
        .collect()
}

/// Write the queued bytes `wbuf[*wpos..]` to `stream` (and flush TLS once
/// they are all out): `Ready(Ok(true))` when something was written,
/// `Ready(Ok(false))` when nothing was pending, `Pending` when the socket is
/// full (waker registered). Shared by the WebSocket and MSRP connections.
pub fn poll_write_queued(
    stream: &mut Stream,
    wbuf: &mut Vec<u8>,
    wpos: &mut usize,
    need_flush: &mut bool,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<bool, ConnError>> {
    use std::task::Poll;
    use tokio::io::AsyncWrite;
    let mut wrote = false;
    while *wpos < wbuf.len() {
        match Pin::new(&mut *stream).poll_write(cx, &wbuf[*wpos..]) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(ConnError::new("io", "write returned 0")));
            }
            Poll::Ready(Ok(n)) => {
                *wpos += n;
                wrote = true;
                *need_flush = matches!(stream, Stream::Tls(_));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::io(e))),
            Poll::Pending => {
                return if wrote {
                    Poll::Ready(Ok(true))
                } else {
                    Poll::Pending
                };
            }
        }
    }
    wbuf.clear();
    *wpos = 0;
    if *need_flush {
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => *need_flush = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::io(e))),
            Poll::Pending => {
                return if wrote {
                    Poll::Ready(Ok(true))
                } else {
                    Poll::Pending
                };
            }
        }
    }
    Poll::Ready(Ok(wrote))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/").unwrap();
        assert!(!t.tls);
        assert_eq!((t.addrs[0].port(), t.path.as_str()), (8080, "/"));
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert!(t.is_loopback());
        let t = Target::parse("wss://localhost/chat?x=1").unwrap();
        assert!(t.tls);
        assert_eq!((t.addrs[0].port(), t.path.as_str()), (443, "/chat?x=1"));
        assert_eq!(t.host_header, "localhost");
        let t = Target::parse("ws://[::1]:9000").unwrap();
        assert_eq!(
            (t.host.as_str(), t.addrs[0].port(), t.path.as_str()),
            ("::1", 9000, "/")
        );
        assert_eq!(t.host_header, "[::1]:9000");
        let t = Target::parse("ws://127.0.0.1:80?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert!(Target::parse("http://x/").is_err());
        assert!(Target::parse("ws://:80/").is_err());
    }
}
