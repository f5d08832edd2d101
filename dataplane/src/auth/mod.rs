//! Credentials store and HTTP digest authentication (being written).
