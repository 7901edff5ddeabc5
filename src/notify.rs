//! Notifications: state changes of checks and workers, held until they last
//! (`SIDECAR_NOTIFY_AFTER`), grouped, and POSTed to webhooks (Slack, Discord or plain
//! JSON), in order, retried, never blocking a probe.
//!
//! - [`event`]: the transition record (also the history's and `/api/events`').
//! - [`debounce`]: which changes are sent, and together (pure).
//! - [`message`]: the bodies, per format (pure).
//! - [`deliver`]: the HTTP POST and each receiver's outbox.

pub mod debounce;
pub mod deliver;
pub mod event;
pub mod message;

pub use event::{Event, Subject};
