//! The server: runners probe on their interval and write to the snapshot and the metrics
//! registry; HTTP answers from them alone.

pub mod api;
pub mod cache;
pub mod celery;
pub mod health;
pub mod history;
pub mod http;
pub mod metrics;
pub mod notifier;
pub mod page;
pub mod process;
pub mod redis;
pub mod runner;
pub mod snapshot;
