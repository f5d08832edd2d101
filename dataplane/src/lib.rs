//! rtedge data plane.
//!
//! One folder per concern: `config` (the TOML file), `reactor` (thread-per-core
//! io_uring event loops, the only code that does I/O), `transport` (plain TCP
//! and rustls TLS over owned buffers), `ws` (sans-IO RFC 6455 handshake and
//! codec), `auth` (credentials store and HTTP digest), `region` (the shared
//! lock-free stats region read by the management service).

pub mod auth;
pub mod config;
pub mod msrp;
pub mod reactor;
pub mod region;
pub mod sip;
pub mod transport;
pub mod ws;
