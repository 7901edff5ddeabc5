//! The HTTP server. Every answer comes from the snapshot and the registry; nothing here can
//! reach Redis.
//!
//! | path | answer |
//! |---|---|
//! | `/livez` | 200 `ok` while the process serves |
//! | `/readyz` | 200 when every ready check is healthy or degraded and fresh, else 503; `?verbose` lists each check |
//! | `/readyz/<check>` | the same for one check (by name or role alias) |
//! | `/healthz` | the JSON document; 200 healthy or degraded, 503 unhealthy (token) |
//! | `/metrics` | Prometheus text format 0.0.4 (token) |
//! | `/` | the status page, HTML (token) |
//! | `/api/history` | the page's series, JSON (token) |
//! | `/api/events` | the last state changes, JSON (token) |
//!
//! GET and HEAD only (405 with `Allow` otherwise); unknown paths 404.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::Secret;
use crate::serve::cache::Cache;
use crate::serve::history::History;
use crate::serve::metrics::{self, Exposition, Metrics};
use crate::serve::snapshot::{Snapshot, Status};
use crate::serve::{api, page};

/// A client gets this long to send a request's headers; then its connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// In-flight requests get this long to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(1000);
/// Request head size cap (hyper's minimum buffer); a larger head gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What the handlers may read.
pub struct App {
    pub snapshot: Snapshot,
    pub metrics: Arc<Metrics>,
    pub auth_token: Option<Secret>,
    /// Open connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    pub history: Arc<History>,
    pub pages: Pages,
}

/// The status page and the history documents, each rendered when out of date
/// ([`Cache`]).
pub struct Pages {
    settings: page::Settings,
    page: Cache,
    history: Cache,
    events: Cache,
}

impl Pages {
    pub fn new(probe_interval: Duration) -> Pages {
        Pages {
            settings: page::Settings { probe_interval },
            page: Cache::default(),
            history: Cache::default(),
            events: Cache::default(),
        }
    }
}

/// A warning about the connection cap at most this often.
const CAP_WARN_EVERY: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish (up to 1 s).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // A permit per open connection. Past the cap a connection is accepted and closed at
    // once (not left in the kernel's backlog, where a scraper would wait without an
    // answer); idle and slow connections free their permit within HEADER_READ_TIMEOUT.
    let permits = Arc::new(tokio::sync::Semaphore::new(app.max_connections));
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        app.metrics.http_rejected.inc();
                        if warned.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
                            warned = Some(Instant::now());
                            tracing::warn!(
                                max = app.max_connections,
                                %peer,
                                "too many open HTTP connections: new ones are closed at once (SIDECAR_MAX_CONNECTIONS); counted in sidecar_http_connections_rejected_total"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let open = app.metrics.http_connections.clone();
                    let app = app.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(handle(&app, &req)) }
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    open.inc();
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                        open.dec();
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections were still busy at shutdown and were closed");
    }
}

fn handle(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    respond(
        app,
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers().get(header::AUTHORIZATION),
        accepts_gzip(req.headers().get(header::ACCEPT_ENCODING)),
        Instant::now(),
    )
}

/// True when `Accept-Encoding` lists gzip (or `*`) without `q=0`.
pub fn accepts_gzip(header: Option<&HeaderValue>) -> bool {
    let Some(text) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    text.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// The whole routing table, as a pure function of the request and the snapshot.
pub fn respond(
    app: &App,
    method: &Method,
    path: &str,
    query: Option<&str>,
    authorization: Option<&HeaderValue>,
    gzip: bool,
    now: Instant,
) -> Response<Full<Bytes>> {
    let known = matches!(
        path,
        "/" | "/livez" | "/readyz" | "/healthz" | "/metrics" | "/api/history" | "/api/events"
    ) || path.starts_with("/readyz/");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
    });
    let snapshot = &app.snapshot;
    match path {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if verbose {
                let (ready, body) = snapshot.readyz_verbose(now);
                text(ready_code(ready), &body)
            } else {
                let ready = snapshot.ready(now);
                text(
                    ready_code(ready),
                    if ready { "ok\n" } else { "not ready\n" },
                )
            }
        }
        "/" | "/healthz" | "/metrics" | "/api/history" | "/api/events"
            if !authorized(app.auth_token.as_ref(), authorization) =>
        {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            for challenge in [
                "Bearer realm=\"redis-celery-sidecar\"",
                "Basic realm=\"redis-celery-sidecar\", charset=\"UTF-8\"",
            ] {
                r.headers_mut().append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            r
        }
        "/healthz" => {
            let (status, doc) = snapshot.healthz(now);
            let code = if status == Status::Unhealthy {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            body.push(b'\n');
            response(code, "application/json", Bytes::from(body))
        }
        "/metrics" => encoded(app.metrics.exposition(), metrics::CONTENT_TYPE, gzip),
        "/" => {
            let pages = &app.pages;
            let body = pages.page.get(app.history.generation(), now, || {
                let wall = SystemTime::now();
                page::render(
                    snapshot,
                    &app.history.view(wall),
                    &pages.settings,
                    now,
                    wall,
                )
            });
            let mut r = encoded(body, "text/html; charset=utf-8", gzip);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&page::CSP).expect("the policy is ASCII"),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            r
        }
        "/api/history" | "/api/events" => {
            let pages = &app.pages;
            let (cache, render): (&Cache, fn(&_) -> String) = if path == "/api/history" {
                (&pages.history, api::history)
            } else {
                (&pages.events, api::events)
            };
            let body = cache.get(app.history.generation(), now, || {
                render(&app.history.view(SystemTime::now()))
            });
            encoded(body, "application/json", gzip)
        }
        _ => {
            let name = &path["/readyz/".len()..];
            let Some(check) = snapshot.find(name) else {
                return text(StatusCode::NOT_FOUND, &format!("no check named {name}\n"));
            };
            let verdict = snapshot.verdict(check, now);
            let ready = verdict.status != Status::Unhealthy;
            let body = if verbose {
                crate::serve::snapshot::readyz_line(check, &verdict)
            } else if ready {
                "ok\n".to_string()
            } else {
                format!(
                    "failed: {}\n",
                    verdict.reason.as_deref().unwrap_or("unknown")
                )
            };
            text(ready_code(ready), &body)
        }
    }
}

/// A body rendered with its gzip copy, served gzipped when the client takes it (the copy
/// is empty only if compressing failed).
fn encoded(body: Exposition, content_type: &'static str, gzip: bool) -> Response<Full<Bytes>> {
    let gzip = gzip && !body.gzip.is_empty();
    let mut r = response(
        StatusCode::OK,
        content_type,
        if gzip { body.gzip } else { body.plain },
    );
    let h = r.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn ready_code(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn text(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(
        code,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn response(code: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// True when no token is configured, or the request carries the token: `Bearer <token>`, or
/// `Basic` with the token as the password (what a browser sends after the prompt; the user
/// name is not checked). The scheme is compared case-insensitively (RFC 9110 section 11.1).
/// The token is compared in constant time, so response timing does not reveal how much of
/// it matched.
fn authorized(token: Option<&Secret>, header: Option<&HeaderValue>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(header) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, credentials)) = header.trim().split_once(' ') else {
        return false;
    };
    let credentials = credentials.trim_start_matches(' ');
    let given = if scheme.eq_ignore_ascii_case("bearer") {
        credentials.as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    use subtle::ConstantTimeEq as _;
    bool::from(given.as_slice().ct_eq(token.expose().as_bytes()))
}

#[cfg(test)]
mod tests;
