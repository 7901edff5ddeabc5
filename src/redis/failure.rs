//! Why a probe failed: a fixed, small set of reasons (the `reason` label) and a sentence a
//! person can act on, built from the real error rather than a pool's "timed out".

use std::error::Error as _;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::redis::target::{Address, Target};
use crate::text::show;

/// The `reason` label of `redis_probe_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Timeout,
    Connect,
    Dns,
    Auth,
    Tls,
    Protocol,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Dns,
        Reason::Auth,
        Reason::Tls,
        Reason::Protocol,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Dns => "dns",
            Reason::Auth => "auth",
            Reason::Tls => "tls",
            Reason::Protocol => "protocol",
            Reason::Other => "other",
        }
    }
}

/// A failed probe: its reason label and the cause in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where a probe was when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a connection from the pool (TCP, TLS, AUTH, SELECT, first PING).
    Connect,
    /// Waiting for a reply to a command.
    Command(&'static str),
}

/// Where a probe is. A std mutex: held only to copy a two-word value, never across an await.
#[derive(Debug)]
pub struct PhaseCell(Mutex<Phase>);

impl Default for PhaseCell {
    fn default() -> Self {
        PhaseCell(Mutex::new(Phase::Connect))
    }
}

impl PhaseCell {
    pub fn get(&self) -> Phase {
        *self
            .0
            .lock()
            .expect("phase lock is never held across a panic")
    }

    pub fn set(&self, phase: Phase) {
        *self
            .0
            .lock()
            .expect("phase lock is never held across a panic") = phase;
    }
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
        }
    }

    /// The probe's time ran out in `phase`.
    pub fn timeout(target: &Target, phase: Phase, limit: Duration) -> Failure {
        let at = target.address();
        let message = match phase {
            Phase::Connect => {
                let tls = match at {
                    Address::Tcp { tls: Some(_), .. } => {
                        "; with rediss:// this is also what a server without TLS looks like: try redis://"
                    }
                    _ => "",
                };
                format!(
                    "timeout: no connection to {at} within {}: the TCP connect or the Redis handshake did not finish (server hung or overloaded, or a firewall dropping packets){tls}",
                    show(limit)
                )
            }
            Phase::Command(cmd) => format!(
                "timeout: {at} did not answer {cmd} within {}: the server is hung, paused or overloaded",
                show(limit)
            ),
        };
        Failure::new(Reason::Timeout, message)
    }

    /// Turns a redis error into a reason and a sentence naming the real cause. The target's
    /// password is scrubbed from the result whatever the error said.
    pub fn from_redis(err: &RedisError, target: &Target) -> Failure {
        let failure = classify(err, target);
        match target.password() {
            Some(pw) if pw.len() >= MIN_SCRUBBED_LEN && failure.message.contains(pw) => Failure {
                message: failure.message.replace(pw, "***"),
                ..failure
            },
            _ => failure,
        }
    }
}

/// Shorter passwords are not scrubbed: replacing every "wrong" or "ok" in a sentence would
/// garble it, and no message here is built from the password anyway; scrubbing is a second
/// line of defence against an error that echoes it.
const MIN_SCRUBBED_LEN: usize = 8;

fn classify(err: &RedisError, target: &Target) -> Failure {
    let at = target.address();
    // A server's error reply: its code and text, also when it came back inside a pipeline.
    let first = err
        .clone()
        .into_server_errors()
        .and_then(|errors| errors.first().map(|(_, e)| e.clone()));
    let code = first
        .as_ref()
        .map(|e| e.code().to_string())
        .or_else(|| err.code().map(str::to_string))
        .unwrap_or_default();
    let code = code.as_str();
    let detail = first
        .as_ref()
        .and_then(|e| e.details().map(str::to_string))
        .or_else(|| err.detail().map(str::to_string))
        .unwrap_or_default();
    let detail = detail.trim();
    let server_said = || {
        if detail.is_empty() {
            code.to_string()
        } else {
            format!("{code} {detail}")
        }
    };
    match (code, err.kind()) {
        ("WRONGPASS", _) => {
            return Failure::new(
                Reason::Auth,
                format!(
                    "WRONGPASS: {at} refused the credentials: {detail} (check the user and password in {})",
                    target.credentials_home()
                ),
            );
        }
        ("NOAUTH", _) => {
            return Failure::new(
                Reason::Auth,
                format!(
                    "NOAUTH: {at} requires a password and none was sent: {}",
                    target.password_fix()
                ),
            );
        }
        ("NOPERM", _) | (_, ErrorKind::Server(ServerErrorKind::NoPerm)) => {
            return Failure::new(
                Reason::Auth,
                format!("NOPERM: the ACL user may not run this command: {detail}"),
            );
        }
        ("LOADING", _) | (_, ErrorKind::Server(ServerErrorKind::BusyLoading)) => {
            return Failure::new(
                Reason::Other,
                format!(
                    "LOADING: {at} is loading its dataset into memory and answers nothing else until it is done"
                ),
            );
        }
        ("MASTERDOWN", _) => {
            return Failure::new(
                Reason::Other,
                format!("MASTERDOWN: {at} is a replica that lost its primary: {detail}"),
            );
        }
        _ => {}
    }
    if detail.contains("max number of clients reached") {
        return Failure::new(
            Reason::Connect,
            format!(
                "ERR max number of clients reached: {at} refuses new connections (raise maxclients or find the client leaking connections)"
            ),
        );
    }
    if detail.contains("DB index is out of range") {
        return Failure::new(
            Reason::Other,
            format!(
                "ERR DB index is out of range: {at} has no database {} (raise `databases` in redis.conf or use a lower index)",
                target.db()
            ),
        );
    }
    if detail.contains("without any password configured") {
        return Failure::new(
            Reason::Auth,
            format!(
                "{at} has no password, and refused the one sent: {}",
                server_said()
            ),
        );
    }
    if detail.contains("invalid password") || detail.contains("invalid username-password") {
        return Failure::new(
            Reason::Auth,
            format!("{at} refused the credentials: {}", server_said()),
        );
    }
    if let Some(failure) = classify_source(err, target) {
        return failure;
    }
    match err.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Failure::new(
            Reason::Protocol,
            format!(
                "protocol: {at} did not answer in the Redis protocol ({err}); is this a Redis port, and does it need rediss:// (TLS)?"
            ),
        ),
        ErrorKind::Server(_) | ErrorKind::Extension => Failure::new(
            Reason::Other,
            format!("{at} answered with an error: {}", server_said()),
        ),
        _ => Failure::new(Reason::Other, format!("{at}: {err}")),
    }
}

/// Looks through the error's sources for an I/O or TLS error that names the cause.
fn classify_source(err: &RedisError, target: &Target) -> Option<Failure> {
    let at = target.address();
    let mut source = err.source();
    while let Some(mut e) = source {
        // The redis crate keeps I/O errors behind an `Arc<dyn Error>`: look through it.
        if let Some(arc) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            e = arc.as_ref();
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_failure(tls, target));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_failure(tls, target));
            }
            return Some(io_failure(io, target));
        }
        source = e.source();
    }
    let text = err.to_string();
    if text.contains("failed to lookup address") {
        return Some(dns_failure(&text, target));
    }
    if err.is_io_error() {
        return Some(Failure::new(Reason::Connect, format!("{at}: {text}")));
    }
    None
}

fn io_failure(io: &io::Error, target: &Target) -> Failure {
    let at = target.address();
    let text = io.to_string();
    if text.contains("failed to lookup address") {
        return dns_failure(&text, target);
    }
    let unix = matches!(at, Address::Unix { .. });
    match io.kind() {
        io::ErrorKind::ConnectionRefused => Failure::new(
            Reason::Connect,
            format!(
                "connection refused by {at}: nothing listens there (Redis down or restarting, or a wrong host or port)"
            ),
        ),
        io::ErrorKind::NotFound if unix => Failure::new(
            Reason::Connect,
            format!("the socket {at} does not exist: Redis is not running or uses another path"),
        ),
        io::ErrorKind::PermissionDenied if unix => Failure::new(
            Reason::Connect,
            format!("permission denied on the socket {at}: the sidecar's user may not open it"),
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::new(
            Reason::Timeout,
            format!("timeout: {at} did not answer in time ({text})"),
        ),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => {
            let hint = match at {
                Address::Tcp { tls: None, .. } => {
                    " (if that port expects TLS, use rediss://; otherwise Redis restarted or dropped the connection)"
                }
                _ => " (Redis restarted, or dropped the connection)",
            };
            Failure::new(
                Reason::Connect,
                format!("connection to {at} closed by the server: {text}{hint}"),
            )
        }
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Failure::new(
            Reason::Connect,
            format!("{at} is unreachable: {text} (no route to it from here)"),
        ),
        io::ErrorKind::InvalidData => Failure::new(
            Reason::Protocol,
            format!("protocol: {at} sent something that is not Redis protocol: {text}"),
        ),
        _ => Failure::new(Reason::Connect, format!("cannot connect to {at}: {text}")),
    }
}

fn dns_failure(text: &str, target: &Target) -> Failure {
    let host = match target.address() {
        Address::Tcp { host, .. } => host.as_str(),
        Address::Unix { path } => path.as_str(),
        Address::Sentinel(s) => s.master.as_str(),
    };
    let cause = text
        .split("failed to lookup address information:")
        .nth(1)
        .map(str::trim)
        .unwrap_or(text);
    let hint = if host.ends_with(".railway.internal") {
        " (*.railway.internal names resolve only inside Railway's private network; from outside use the public URL)"
    } else {
        ""
    };
    Failure::new(
        Reason::Dns,
        format!("DNS lookup of {host} failed: {cause}{hint}"),
    )
}

fn tls_failure(err: &rustls::Error, target: &Target) -> Failure {
    let at = target.address();
    let hint = match err {
        rustls::Error::InvalidMessage(_) => {
            " (the server did not answer with TLS: is this a plain port? use redis:// for it)"
        }
        rustls::Error::InvalidCertificate(_) => {
            " (the server's certificate is not trusted here: self-signed or unknown issuer, another host name, or expired)"
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            " (the server requires a client certificate, tls-auth-clients, and none was given)"
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateExpired,
        ) => {
            " (the server refused the client certificate: not signed by a CA in its tls-ca-cert-file, or expired)"
        }
        _ => "",
    };
    Failure::new(
        Reason::Tls,
        format!("TLS handshake with {at} failed: {err}{hint}"),
    )
}

/// A server's error reply as the redis crate's error, so that it is classified (and
/// scrubbed) like every other failure.
pub fn server_error(text: &str) -> RedisError {
    let (code, detail) = text.split_once(' ').unwrap_or((text, ""));
    redis::make_extension_error(code.to_string(), Some(detail.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::target::Role;

    fn target(url: &str) -> Target {
        Target::parse(Role::Cache, url).unwrap()
    }

    #[test]
    fn refused_names_the_address() {
        let err = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        let f = Failure::from_redis(&err, &target("redis://10.0.0.5:6379"));
        assert_eq!(f.reason, Reason::Connect);
        assert!(
            f.message.starts_with("connection refused by 10.0.0.5:6379"),
            "{f}"
        );
    }

    #[test]
    fn dns_on_railway_gets_a_hint() {
        let err = RedisError::from(io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        let f = Failure::from_redis(&err, &target("redis://redis.railway.internal:6379"));
        assert_eq!(f.reason, Reason::Dns);
        assert!(
            f.message.starts_with(
                "DNS lookup of redis.railway.internal failed: Name or service not known"
            ),
            "{f}"
        );
        assert!(f.message.contains("private network"), "{f}");
    }

    #[test]
    fn password_is_scrubbed_from_any_message() {
        let err = RedisError::from(io::Error::other("weird error echoing hunter2pw"));
        let f = Failure::from_redis(&err, &target("redis://u:hunter2pw@h:6379"));
        assert!(!f.message.contains("hunter2pw"), "{f}");
    }

    #[test]
    fn timeouts_say_where() {
        let t = target("redis://h:1");
        let f = Failure::timeout(&t, Phase::Command("PING"), Duration::from_secs(1));
        assert_eq!(f.reason, Reason::Timeout);
        assert_eq!(
            f.message,
            "timeout: h:1 did not answer PING within 1s: the server is hung, paused or overloaded"
        );
    }
}
