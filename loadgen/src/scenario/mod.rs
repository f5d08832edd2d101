//! Load scenarios, one module each. Every scenario implements
//! [`crate::engine::Scenario`] (per-thread work) and builds its
//! [`crate::report::Report`] from the threads' results.
//!
//! To add one (sip-register…): a module here, a subcommand in
//! `main.rs`, and a `report` function that fills the scenario's fields.

pub mod msrp_relay;
pub mod units;
pub mod ws_connect;
pub mod ws_echo;
