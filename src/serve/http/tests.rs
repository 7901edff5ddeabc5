use super::*;
use crate::redis::failure::{Failure, Reason};
use crate::serve::snapshot::Report;
use http_body_util::BodyExt;
use std::time::SystemTime;

fn app(token: Option<&str>, status: Option<Status>) -> App {
    let mut snapshot = Snapshot::new(
        &["redis:cache".to_string(), "redis:broker".to_string()],
        Duration::from_secs(5),
    );
    let publishers = [
        snapshot.register("redis:cache", Some("redis://h:6379/0".into())),
        snapshot.register("redis:broker", Some("redis://h:6379/0".into())),
    ];
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
            details: crate::serve::health::Details::None,
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
        history: Arc::new(History::new(
            Duration::from_secs(5),
            10,
            [(
                vec!["redis:cache".to_string(), "redis:broker".to_string()],
                "redis://h:6379/0".to_string(),
            )],
        )),
        pages: Pages::new(Duration::from_secs(5)),
        auth_token: token.map(|t| {
            crate::config::Config::from_settings(&crate::config::cli::Settings {
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
fn token_guards_everything_but_livez_and_readyz() {
    let a = app(Some("s3cret-token"), Some(Status::Healthy));
    for path in ["/healthz", "/metrics", "/", "/api/history", "/api/events"] {
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
fn the_status_page_and_its_data() {
    let a = app(None, Some(Status::Unhealthy));
    let (code, body, r) = get(&a, Method::GET, "/", None);
    assert_eq!(code, StatusCode::OK);
    let h = r.headers();
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(h[header::CONTENT_SECURITY_POLICY], page::CSP.as_str());
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert!(body.starts_with("<!doctype html>"));
    assert!(body.contains("connection refused by h:6379"), "{body}");
    let (code, body, r) = get(&a, Method::GET, "/api/history", None);
    assert_eq!(code, StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["targets"][0]["checks"],
        serde_json::json!(["redis:cache", "redis:broker"])
    );
    assert_eq!(doc["targets"][0]["endpoint"], "redis://h:6379/0");
    assert_eq!(doc["points_max"], 720);
    let (code, body, _) = get(&a, Method::GET, "/api/events", None);
    assert_eq!(code, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["capacity"], 100);
    assert_eq!(doc["events"], serde_json::json!([]));
    assert_eq!(
        get(&a, Method::POST, "/", None).0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        get(&a, Method::GET, "/api/nope", None).0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn the_page_is_rendered_again_only_when_out_of_date() {
    let cache = Cache::default();
    let t0 = Instant::now();
    let mut renders = 0;
    let mut get = |generation, at| {
        cache.get(generation, at, || {
            renders += 1;
            format!("page {renders}")
        })
    };
    assert_eq!(get(1, t0).plain, "page 1");
    assert_eq!(get(1, t0 + Duration::from_millis(900)).plain, "page 1");
    assert_eq!(
        get(2, t0 + Duration::from_millis(900)).plain,
        "page 2",
        "the history changed"
    );
    assert_eq!(
        get(2, t0 + Duration::from_millis(1900)).plain,
        "page 3",
        "a second passed"
    );
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
