//! Shared test support, split by job: processes (temporary directories, ports, polling),
//! real `redis-server` processes (plain, TLS, mutual TLS), the sidecar binary, a raw HTTP
//! client, and the pinned Celery venv. Every process started here is killed on drop, panics
//! included; nothing here touches a process it did not start.

#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod browser;
mod celery;
mod cluster;
mod http;
pub mod otlp;
mod process;
mod redis_server;
mod sentinel;
mod sidecar;

pub use browser::*;
pub use celery::*;
pub use cluster::*;
pub use http::*;
pub use process::*;
pub use redis_server::*;
pub use sentinel::*;
pub use sidecar::*;
