//! MSRP client side (RFC 4975, RFC 4976 AUTH, RFC 7977 over WebSocket):
//! chunk parser and writers, digest credentials, and the transports the
//! `msrp-relay` scenario drives. Independent of the relay's own parser.

pub mod chunk;
pub mod digest;
pub mod io;
