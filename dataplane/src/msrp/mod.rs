//! MSRP relay (RFC 4975, RFC 4976, RFC 7977), sans-IO: bytes, time,
//! randomness and events in; frames to send, sessions and actions out.
//!
//! - [`parser`]: streaming zero-copy frame parser (RFC 4975 §7, §9).
//! - [`uri`]: MSRP URIs and their comparison (RFC 4975 §6, §6.1).
//! - [`uri_cache`]: per-core memo of parsed URIs (a session repeats its paths).
//! - [`message`]: head accessors, relay rewriting, responses and REPORTs.
//! - [`auth`]: AUTH at the relay (RFC 4976 §4–§6, RFC 2617 digest).
//! - [`session_map`]: per-core session map (Kamailio's cmap).
//! - [`relay`]: the per-connection relay engine and per-core state.
//! - [`id_hash`]: hashing of the relay's own random ids.

pub mod auth;
pub mod id_hash;
pub mod message;
pub mod parser;
pub mod relay;
pub mod session_map;
pub mod uri;
pub mod uri_cache;
