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
//!
//! GET and HEAD only (405 with `Allow` otherwise); unknown paths 404.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::config::Secret;
use crate::metrics::{self, Metrics};
use crate::snapshot::{Snapshot, Status};

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
    let known = matches!(path, "/livez" | "/readyz" | "/healthz" | "/metrics")
        || path.starts_with("/readyz/");
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
        "/healthz" | "/metrics" if !authorized(app.auth_token.as_ref(), authorization) => {
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
        "/metrics" => {
            let body = app.metrics.exposition();
            // The gzip copy was made with the rendering; empty only if compressing failed.
            let gzip = gzip && !body.gzip.is_empty();
            let mut r = response(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                if gzip { body.gzip } else { body.plain },
            );
            let h = r.headers_mut();
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r
        }
        _ => {
            let name = &path["/readyz/".len()..];
            let Some(check) = snapshot.find(name) else {
                return text(StatusCode::NOT_FOUND, &format!("no check named {name}\n"));
            };
            let verdict = snapshot.verdict(check, now);
            let ready = verdict.status != Status::Unhealthy;
            let body = if verbose {
                crate::snapshot::readyz_line(check, &verdict)
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
mod tests {
    use super::*;
    use crate::failure::{Failure, Reason};
    use crate::snapshot::Report;
    use http_body_util::BodyExt;
    use std::time::SystemTime;

    fn app(token: Option<&str>, status: Option<Status>) -> App {
        let (snapshot, publishers) = Snapshot::new(
            vec![
                ("redis:cache".into(), Some("redis://h:6379/0".into())),
                ("redis:broker".into(), Some("redis://h:6379/0".into())),
            ],
            &["redis:cache".to_string(), "redis:broker".to_string()],
            Duration::from_secs(5),
        );
        if let Some(status) = status {
            // One probe, two roles: the same report under both checks.
            let report = Arc::new(Report {
                status,
                finished: Instant::now(),
                finished_at: SystemTime::now(),
                latency: None,
                last_success: None,
                consecutive_failures: 1,
                error: (status == Status::Unhealthy)
                    .then(|| Failure::new(Reason::Connect, "connection refused by h:6379")),
                fix: None,
                warnings: vec![],
                details: serde_json::json!({}),
                fields: serde_json::json!({}),
                queues: None,
            });
            for p in &publishers {
                p.send_replace(Some(report.clone()));
            }
        }
        // Keep the report alive: dropping the sender keeps the last value readable.
        drop(publishers);
        App {
            snapshot,
            metrics: Arc::new(Metrics::new().unwrap()),
            max_connections: 8,
            auth_token: token.map(|t| {
                crate::config::Config::from_settings(&crate::cli::Settings {
                    auth_token: Some(t.into()),
                    ..Default::default()
                })
                .unwrap()
                .auth_token
                .unwrap()
            }),
        }
    }

    fn get(
        app: &App,
        method: Method,
        uri: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String, Response<Full<Bytes>>) {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let auth = auth.map(|a| HeaderValue::from_str(a).unwrap());
        app.metrics.render(&app.snapshot, Instant::now());
        let r = respond(
            app,
            &method,
            path,
            query,
            auth.as_ref(),
            false,
            Instant::now(),
        );
        let body = futures_body(&r);
        (r.status(), body, r)
    }

    fn body_bytes(r: &Response<Full<Bytes>>) -> Bytes {
        let body = r.body().clone();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
    }

    fn futures_body(r: &Response<Full<Bytes>>) -> String {
        String::from_utf8(body_bytes(r).to_vec()).unwrap()
    }

    #[test]
    fn routes() {
        let a = app(None, Some(Status::Healthy));
        assert_eq!(get(&a, Method::GET, "/livez", None).0, StatusCode::OK);
        assert_eq!(get(&a, Method::GET, "/readyz", None).1, "ok\n");
        assert_eq!(
            get(&a, Method::GET, "/readyz/redis:broker", None).0,
            StatusCode::OK
        );
        assert_eq!(
            get(&a, Method::GET, "/readyz/redis:nope", None).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&a, Method::GET, "/nope", None).0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&a, Method::DELETE, "/nope", None).0,
            StatusCode::NOT_FOUND
        );
        let (code, _, r) = get(&a, Method::POST, "/metrics", None);
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
        let (code, body, r) = get(&a, Method::GET, "/metrics", None);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], metrics::CONTENT_TYPE);
        assert!(body.contains("sidecar_ready 1\n"), "{body}");
        assert!(body.contains("sidecar_check_status{check=\"redis:broker\"} 0\n"));
        let (code, body, r) = get(&a, Method::HEAD, "/healthz", None);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert!(body.contains("\"status\": \"healthy\""));
    }

    #[test]
    fn unhealthy_answers_503_with_the_cause() {
        let a = app(None, Some(Status::Unhealthy));
        let (code, body, _) = get(&a, Method::GET, "/healthz", None);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("connection refused by h:6379"), "{body}");
        let (code, body, _) = get(&a, Method::GET, "/readyz?verbose", None);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "[-]redis:cache failed: connection refused by h:6379\n[-]redis:broker failed: connection refused by h:6379\nreadyz check failed\n"
        );
        let (code, body, _) = get(&a, Method::GET, "/readyz/redis:cache", None);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "failed: connection refused by h:6379\n");
        let (_, body, _) = get(&a, Method::GET, "/metrics", None);
        assert!(body.contains("sidecar_ready 0\n"));
    }

    #[test]
    fn before_the_first_probe_nothing_is_ready() {
        let a = app(None, None);
        assert_eq!(
            get(&a, Method::GET, "/readyz", None).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&a, Method::GET, "/livez", None).0, StatusCode::OK);
    }

    #[test]
    fn token_guards_healthz_and_metrics_only() {
        let a = app(Some("s3cret-token"), Some(Status::Healthy));
        for path in ["/healthz", "/metrics"] {
            let (code, _, r) = get(&a, Method::GET, path, None);
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
            assert_eq!(
                r.headers().get_all(header::WWW_AUTHENTICATE).iter().count(),
                2
            );
            use base64::Engine as _;
            let basic = |userinfo: &str| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(userinfo)
                )
            };
            for wrong in [
                "Bearer s3cret-toke".to_string(),
                "Bearer s3cret-token2".to_string(),
                "Bearer  ".to_string(),
                "Basic s3cret-token".to_string(),
                basic("s3cret-token"),
                basic("s3cret-token:"),
                basic("admin:s3cret-toke"),
                "Digest s3cret-token".to_string(),
                "s3cret-token".to_string(),
                "Bearers3cret-token".to_string(),
            ] {
                assert_eq!(
                    get(&a, Method::GET, path, Some(&wrong)).0,
                    StatusCode::UNAUTHORIZED,
                    "{wrong}"
                );
            }
            for right in [
                "Bearer s3cret-token".to_string(),
                "bearer s3cret-token".to_string(),
                "BEARER  s3cret-token".to_string(),
                basic("admin:s3cret-token"),
                basic(":s3cret-token"),
                basic("any:s3cret-token").replace("Basic", "basic"),
            ] {
                assert_eq!(
                    get(&a, Method::GET, path, Some(&right)).0,
                    StatusCode::OK,
                    "{right}"
                );
            }
        }
        assert_eq!(get(&a, Method::GET, "/livez", None).0, StatusCode::OK);
        assert_eq!(get(&a, Method::GET, "/readyz", None).0, StatusCode::OK);
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        let yes = [
            "gzip",
            "gzip, deflate",
            "deflate, GZIP;q=0.5",
            "*",
            "br;q=1.0, gzip;q=0.8",
        ];
        let no = [
            "",
            "deflate",
            "gzip;q=0",
            "gzip; q=0.0",
            "identity",
            "x-gzip2",
        ];
        for h in yes {
            assert!(accepts_gzip(Some(&HeaderValue::from_static(h))), "{h}");
        }
        for h in no {
            assert!(!accepts_gzip(Some(&HeaderValue::from_static(h))), "{h}");
        }
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn metrics_are_served_gzipped_to_who_asks() {
        use std::io::Read;
        let a = app(None, Some(Status::Healthy));
        a.metrics.render(&a.snapshot, Instant::now());
        let plain = respond(
            &a,
            &Method::GET,
            "/metrics",
            None,
            None,
            false,
            Instant::now(),
        );
        let zipped = respond(
            &a,
            &Method::GET,
            "/metrics",
            None,
            None,
            true,
            Instant::now(),
        );
        assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(zipped.headers()[header::VARY], "Accept-Encoding");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain.headers()[header::VARY], "Accept-Encoding");
        let plain = futures_body(&plain);
        let raw = body_bytes(&zipped);
        assert!(
            raw.len() * 3 < plain.len(),
            "{} vs {}",
            raw.len(),
            plain.len()
        );
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);
        // Other paths are never compressed.
        let r = respond(
            &a,
            &Method::GET,
            "/healthz",
            None,
            None,
            true,
            Instant::now(),
        );
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    }
}
