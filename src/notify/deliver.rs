//! Sending to a receiver: one HTTP/1.1 POST per message on a fresh connection (a webhook is
//! called a few times a day, an OTLP metrics push once a minute: not worth a connection
//! held open), TLS with the built-in roots plus `SSL_CERT_FILE` / `SSL_CERT_DIR`; and each
//! receiver's outbox, sent in order, its head retried with backoff, bounded in length and
//! in age. Nothing here writes the URL or a header's value anywhere: errors name the host
//! only.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Secret;
use crate::config::notify::Receiver;
use crate::redis::target::Roots;

/// One attempt at most.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting per receiver at most; past it, the oldest is dropped.
pub const OUTBOX: usize = 100;
/// A message not delivered within this is dropped.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Retries wait 1 s, 2 s, 4 s... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The answer's bytes kept, to show.
const ANSWER_MAX: usize = 300;

/// What a receiver answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The start of the body, as text.
    pub body: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One POST: where, what, with which extra headers, and how long it may take.
pub struct Post<'a> {
    pub url: &'a url::Url,
    pub content_type: &'a str,
    /// Extra headers (API keys: their values are never shown).
    pub headers: &'a [(String, Secret)],
    pub body: &'a [u8],
    pub timeout: Duration,
}

/// Sends POSTs over plain HTTP or TLS. The TLS configuration (the built-in roots plus
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`) is built on the first https request: a sidecar whose
/// receivers are all plain http never holds the roots.
pub struct Client {
    roots: Vec<Roots>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    pub fn new(roots: &[Roots]) -> Client {
        Client {
            roots: roots.to_vec(),
            tls: OnceLock::new(),
        }
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| {
                let tls = crate::redis::target::Tls {
                    verify: true,
                    check_hostname: true,
                    roots: self.roots.clone(),
                    client_cert: None,
                };
                crate::redis::tls::client(&tls).map(|c| c.config)
            })
            .clone()
    }

    /// POSTs JSON to a webhook receiver; the answer, or why there is none.
    pub async fn post(&self, r: &Receiver, body: &str) -> Result<Answer, String> {
        self.send(&Post {
            url: r.url(),
            content_type: "application/json",
            headers: &[],
            body: body.as_bytes(),
            timeout: ATTEMPT_TIMEOUT,
        })
        .await
    }

    /// Sends one POST on a fresh connection; the answer, or why there is none (naming the
    /// host and port only).
    pub async fn send(&self, post: &Post<'_>) -> Result<Answer, String> {
        match tokio::time::timeout(post.timeout, self.attempt(post)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {} within {}",
                host_port(post.url),
                crate::text::show(post.timeout)
            )),
        }
    }

    async fn attempt(&self, post: &Post<'_>) -> Result<Answer, String> {
        let url = post.url;
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let where_ = host_port(url);
        let tls = if url.scheme() == "https" {
            Some(self.tls()?)
        } else {
            None
        };
        let tcp = TcpStream::connect((host, url.port_or_known_default().unwrap_or(443)))
            .await
            .map_err(|e| format!("cannot connect to {where_}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: redis-celery-sidecar/{}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION"),
            post.content_type,
            post.body.len()
        );
        for (k, v) in post.headers {
            head.push_str(&format!("{k}: {}\r\n", v.expose()));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(post.body);
        match tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| format!("{where_}: not a name TLS can check"))?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {where_} failed: {e}"))?;
                exchange(stream, &request, &where_).await
            }
            None => exchange(tcp, &request, &where_).await,
        }
    }
}

/// `host:port` of a URL, all of it that errors show.
pub fn host_port(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Writes the request, reads the status line and the start of the body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    where_: &str,
) -> Result<Answer, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("sending to {where_} failed: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer closing without close_notify: what was read counts.
            Err(_) if !buf.is_empty() => 0,
            Err(e) => return Err(format!("reading {where_}'s answer failed: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || answered(&buf) || buf.len() > 16 * 1024 {
            break;
        }
    }
    parse(&buf).ok_or_else(|| format!("{where_} did not answer HTTP"))
}

/// Headers read, and as much of the body as Content-Length says (or some of it).
fn answered(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) => buf.len() >= end + 4 + n,
        None => buf.len() > end + 4,
    }
}

fn parse(buf: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(buf);
    let status_line = text.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body: String = body
        .chars()
        .filter(|c| !c.is_control() || *c == ' ')
        .take(ANSWER_MAX)
        .collect();
    Some(Answer { status, body })
}

/// How a delivery went, for `sidecar_notifications_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// An attempt failed (it is retried).
    Failed,
    /// Given up: too old, or pushed out of a full outbox.
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// A receiver's messages waiting, oldest first, with when each was queued.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: std::sync::Mutex<VecDeque<(Instant, String)>>,
    wake: Notify,
}

impl Outbox {
    /// Queues a body; the oldest is dropped when full (returned as dropped count).
    pub fn push(&self, body: String) -> usize {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut dropped = 0;
        while q.len() >= OUTBOX {
            q.pop_front();
            dropped += 1;
        }
        q.push_back((Instant::now(), body));
        drop(q);
        self.wake.notify_one();
        dropped
    }

    fn front(&self) -> Option<(Instant, String)> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .front()
            .cloned()
    }

    /// Removes the front if it is still the one sent (a full outbox may have pushed it out).
    fn done(&self, queued: Instant) {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.front().is_some_and(|(at, _)| *at == queued) {
            q.pop_front();
        }
    }

    /// Sends the outbox's messages to `r`, in order, for ever: the head is retried with
    /// backoff until it is delivered or too old. `count` is told each outcome, `failed`
    /// each failure's cause (to log, rate-limited by the caller).
    pub async fn run(
        &self,
        r: &Receiver,
        client: &Client,
        count: impl Fn(Outcome),
        failed: impl Fn(&str),
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let Some((queued, body)) = self.front() else {
                self.wake.notified().await;
                continue;
            };
            if queued.elapsed() > MAX_AGE {
                self.done(queued);
                count(Outcome::Dropped);
                continue;
            }
            let why = match client.post(r, &body).await {
                Ok(a) if a.ok() => {
                    self.done(queued);
                    count(Outcome::Sent);
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(a) => format!("{} answered {} {}", host_port(r.url()), a.status, a.body),
                Err(e) => e,
            };
            count(Outcome::Failed);
            failed(&why);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_and_bounded() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!(
            a,
            Answer {
                status: 200,
                body: "ok".into()
            }
        );
        assert!(a.ok());
        assert!(answered(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!answered(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"));
        let long = format!(
            "HTTP/1.1 400 Bad Request\r\n\r\n{}\u{1b}[31m",
            "x".repeat(1000)
        );
        let a = parse(long.as_bytes()).unwrap();
        assert_eq!((a.status, a.body.len()), (400, ANSWER_MAX));
        assert!(!a.ok());
        assert_eq!(parse(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest() {
        let o = Outbox::default();
        let dropped: usize = (0..OUTBOX + 3).map(|i| o.push(i.to_string())).sum();
        assert_eq!(dropped, 3);
        assert_eq!(o.front().unwrap().1, "3");
    }
}
