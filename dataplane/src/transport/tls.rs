//! TLS 1.2 and 1.3 with rustls, driven over owned buffers.
//!
//! rustls never sees the socket. Ciphertext from a recv is fed only while
//! `wants_read()` (feeding more makes rustls refuse input once its plaintext
//! buffer is full); plaintext is drained after every `process_new_packets`.
//! Outgoing plaintext is written in chunks with the TLS records flushed after
//! each, so rustls's send buffer limit is never hit; several pieces of
//! plaintext go through one vectored write and share records
//! ([`TlsSession::write_parts`]), and the ciphertext buffer is sized for all
//! the records first. Received plaintext is taken where rustls holds it
//! (`BufRead`), one copy into the caller's buffer.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use std::io::{BufRead, IoSlice, Write};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    #[error("cannot read CA certificates {path}: {message}")]
    Roots { path: String, message: String },
    #[error("\"{0}\" is not a TLS server name or IP address")]
    ServerName(String),
}

/// A listener's TLS configuration, shared by every worker.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// Load a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::Cert {
                path: cert.display().to_string(),
                message: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Cert {
                path: cert.display().to_string(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Cert {
                path: cert.display().to_string(),
                message: "no CERTIFICATE block found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_der(certs, key)
    }

    pub fn from_der(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsAcceptor {
            config: Arc::new(config),
        })
    }

    pub fn session(&self) -> Result<TlsSession, TlsError> {
        let conn = rustls::ServerConnection::new(self.config.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsSession {
            conn: conn.into(),
            handshake_reported: false,
        })
    }
}

/// Client side for outbound connections (`msrps` next hops): the server's
/// certificate is verified against `ca_file`, or the system's roots.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub fn new(ca_file: Option<&Path>) -> Result<TlsConnector, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let err = |message: String| TlsError::Roots {
                    path: path.display().to_string(),
                    message,
                };
                for c in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                    roots
                        .add(c.map_err(|e| err(e.to_string()))?)
                        .map_err(|e| err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(err("no CERTIFICATE block found".into()));
                }
            }
            None => {
                // Unreadable system certificates only mean no next hop
                // verifies (each gets a failure REPORT), not a failed start.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    /// A client session toward `host` (a DNS name or an IP address, which
    /// the certificate must name).
    pub fn session(&self, host: &str) -> Result<TlsSession, TlsError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()))?;
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsSession {
            conn: conn.into(),
            handshake_reported: false,
        })
    }
}

/// What a batch of ciphertext did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsProgress {
    /// The handshake completed during this call.
    pub handshake_done: bool,
    /// The peer sent close_notify.
    pub peer_closed: bool,
    /// Ciphertext bytes rustls accepted; the caller keeps the rest for the
    /// next call.
    pub consumed: usize,
}

/// One TLS connection (server side, or client side for outbound).
pub struct TlsSession {
    conn: rustls::Connection,
    handshake_reported: bool,
}

/// Largest plaintext handed to rustls before its records are flushed.
const PLAINTEXT_CHUNK: usize = 16 * 1024;
/// Largest plaintext of one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const RECORD_PLAINTEXT_MAX: usize = 16 * 1024;
/// Bytes a record adds to its plaintext, at most for the AEAD suites
/// rustls offers: header 5, explicit nonce 8 (TLS 1.2), tag 16, inner
/// content type 1 (TLS 1.3).
const RECORD_OVERHEAD_MAX: usize = 5 + 8 + 16 + 1;

impl TlsSession {
    /// Feed received ciphertext. Decrypted bytes are appended to `plain`;
    /// records rustls must send (handshake, alerts) are appended to `wire`.
    /// On error the alert (if any) is already in `wire`: send it, then close.
    pub fn read(
        &mut self,
        mut data: &[u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<TlsProgress, rustls::Error> {
        let mut progress = TlsProgress::default();
        let total = data.len();
        loop {
            if data.is_empty() {
                break;
            }
            if !self.conn.wants_read() {
                // Plaintext is drained after every step, so rustls can only
                // refuse input while it has records to write: flush them.
                if self.conn.wants_write() {
                    self.write_records(wire);
                    continue;
                }
                break;
            }
            match self.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.write_records(wire);
                    return Err(e);
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                // Taken chunk by chunk where rustls holds them: reading
                // into `plain` resized first zeroed it for nothing.
                plain.reserve(n);
                let mut reader = self.conn.reader();
                while let Ok(chunk) = reader.fill_buf() {
                    if chunk.is_empty() {
                        break;
                    }
                    let taken = chunk.len();
                    plain.extend_from_slice(chunk);
                    reader.consume(taken);
                }
            }
            if state.peer_has_closed() {
                progress.peer_closed = true;
            }
        }
        self.write_records(wire);
        progress.consumed = total - data.len();
        if !self.handshake_reported && !self.conn.is_handshaking() {
            self.handshake_reported = true;
            progress.handshake_done = true;
        }
        Ok(progress)
    }

    /// Encrypt `plain` into `wire`.
    pub fn write(&mut self, plain: &[u8], wire: &mut Vec<u8>) {
        self.write_parts(&[plain], wire);
    }

    /// Encrypt `parts`, one after another, into `wire`: records span the
    /// parts (rustls copies them into each record once), so a frame and
    /// the output before it need not be joined first.
    pub fn write_parts(&mut self, parts: &[&[u8]], wire: &mut Vec<u8>) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Room for every record up front: `wire` grown record by record
        // was reallocated (copied) several times per flush, and into fresh
        // pages each time (measured at 10 × 4 KiB over msrps: about 10 %
        // of the relay's CPU in realloc copies and page faults).
        wire.reserve(total + total.div_ceil(RECORD_PLAINTEXT_MAX) * RECORD_OVERHEAD_MAX);
        let (mut part, mut off) = (0, 0);
        while part < parts.len() {
            // At most PLAINTEXT_CHUNK per call: rustls buffers no more
            // than its limit before the records are taken.
            let mut slices = Vec::with_capacity(parts.len() - part);
            let mut room = PLAINTEXT_CHUNK;
            for (i, p) in parts.iter().enumerate().skip(part) {
                let from = if i == part { off } else { 0 };
                let take = p.len().saturating_sub(from).min(room);
                if let Some(s) = p.get(from..from + take)
                    && !s.is_empty()
                {
                    slices.push(IoSlice::new(s));
                }
                room -= take;
                if room == 0 {
                    break;
                }
            }
            if slices.is_empty() {
                break;
            }
            let mut n = self.conn.writer().write_vectored(&slices).unwrap_or(0);
            self.write_records(wire);
            if n == 0 {
                break;
            }
            // Step past the n bytes taken.
            while n > 0 && part < parts.len() {
                let left = parts[part].len() - off;
                if n >= left {
                    n -= left;
                    part += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
            while part < parts.len() && parts[part].len() == off {
                part += 1;
                off = 0;
            }
        }
    }

    /// Queue a close_notify alert.
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.write_records(wire);
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Records rustls wants to send on its own (a client's ClientHello).
    pub fn flush_records(&mut self, wire: &mut Vec<u8>) {
        self.write_records(wire);
    }

    fn write_records(&mut self, wire: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(wire) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::io::Read;

    fn acceptor_and_client() -> (TlsAcceptor, rustls::ClientConnection) {
        let cert = rcgen_like_self_signed();
        let acceptor = TlsAcceptor::from_der(vec![cert.0.clone()], cert.1).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.0).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        (acceptor, client)
    }

    /// A fixed self-signed certificate for "localhost" (test-only).
    fn rcgen_like_self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (
            ck.cert.der().clone(),
            PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap(),
        )
    }

    fn pump_client(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn handshake_and_data_both_ways_with_tiny_reads() {
        let (acceptor, mut client) = acceptor_and_client();
        let mut server = acceptor.session().unwrap();
        // Queued before the handshake, so it must be allowed to buffer.
        client.set_buffer_limit(None);
        client.writer().write_all(&vec![7u8; 100_000]).unwrap();
        let mut got = Vec::new();
        let mut done = false;
        for _ in 0..100 {
            let c2s = pump_client(&mut client);
            let mut wire = Vec::new();
            // Deliver in 7-byte pieces, as a slow network would.
            for piece in c2s.chunks(7) {
                let p = server.read(piece, &mut got, &mut wire).unwrap();
                done |= p.handshake_done;
            }
            if !wire.is_empty() {
                client.read_tls(&mut &wire[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if got.len() == 100_000 {
                break;
            }
        }
        assert!(done);
        assert_eq!(got.len(), 100_000);
        // Server → client, larger than rustls's default buffer limit.
        let mut wire = Vec::new();
        server.write(&vec![9u8; 200_000], &mut wire);
        assert_eq!(client_reads(&mut client, &wire), vec![9u8; 200_000]);
    }

    /// Decrypts `wire` as the client and returns the plaintext.
    fn client_reads(client: &mut rustls::ClientConnection, wire: &[u8]) -> Vec<u8> {
        let mut rd = wire;
        let mut back = Vec::new();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
            let mut buf = [0u8; 65536];
            while let Ok(n) = client.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
        }
        back
    }

    /// Parts of every size (empty ones, one over a record, several over
    /// rustls's buffer limit together) arrive as their concatenation, in
    /// as few records as their total needs.
    #[test]
    fn parts_are_encrypted_as_one_plaintext() {
        let (acceptor, mut client) = acceptor_and_client();
        let mut server = acceptor.session().unwrap();
        for _ in 0..10 {
            let c2s = pump_client(&mut client);
            let (mut plain, mut wire) = (Vec::new(), Vec::new());
            server.read(&c2s, &mut plain, &mut wire).unwrap();
            if !wire.is_empty() {
                client.read_tls(&mut &wire[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if !server.is_handshaking() && !client.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking());
        let parts: Vec<Vec<u8>> = [0, 5, 40_000, 0, 17_000, 3, 70_000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|k| (i * 31 + k % 251) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let mut wire = Vec::new();
        server.write_parts(&refs, &mut wire);
        let total: usize = parts.iter().map(Vec::len).sum();
        assert_eq!(client_reads(&mut client, &wire), parts.concat());
        // Records of up to 16 KiB plaintext, 22 bytes of overhead each in
        // TLS 1.3: parts share records rather than each taking its own.
        let records = total.div_ceil(16 * 1024);
        assert!(
            wire.len() <= total + records * 22,
            "{} bytes for {total}",
            wire.len()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (acceptor, _) = acceptor_and_client();
        let mut server = acceptor.session().unwrap();
        let mut plain = Vec::new();
        let mut wire = Vec::new();
        let r = server.read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain, &mut wire);
        assert!(r.is_err());
        assert!(plain.is_empty());
    }
}
