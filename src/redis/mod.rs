//! Redis itself: where a server is (its URL read as the app reads it), how to reach it
//! (TLS, the pool, a raw RESP client), and what a probe learns (PING, INFO) or why it failed.

pub mod capability;
pub mod cluster;
pub mod failure;
pub mod info;
pub mod pool;
pub mod probe;
pub mod pyurl;
pub mod raw;
pub mod resp;
pub mod sentinel;
pub mod span;
pub mod target;
pub mod tls;
