//! WebSocket (RFC 6455) as sans-IO state machines: bytes and time in,
//! frames and events out. No sockets and no clocks in here.
//!
//! - [`handshake`]: the opening handshake validator (§4.2) with rtedge's
//!   policy checks (path, Host, Origin, auth, sub-protocol, CORS).
//! - [`frame`]: frame header parsing and building (§5.2).
//! - [`unmask`]: in-place payload unmasking (§5.3), word loop + AVX2.
//! - [`session`]: one connection after the handshake: reassembly (§5.4),
//!   control frames (§5.5), close handshake (§5.5.1, §7), UTF-8 (§8.1),
//!   keep-alive.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod session;
pub mod unmask;
pub mod utf8;
