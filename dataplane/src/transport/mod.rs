//! Transports under the protocol engines: plain TCP bytes, or TLS (rustls)
//! driven over owned buffers. Sans-IO like the engines: the reactor feeds
//! received ciphertext in and sends what comes out.

pub mod tls;

pub use tls::{TlsAcceptor, TlsConnector, TlsError, TlsSession};
