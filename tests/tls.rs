//! rediss:// against a real TLS redis-server: an untrusted certificate and a plain client
//! on the TLS port each name their cause.

mod support;

use support::{Redis, TempDir, run, tls_redis};

/// `check --json` on one URL: exit code and the cache check.
fn check(url: &str) -> (i32, serde_json::Value) {
    support::check_cache(&[("REDIS_URL", url)])
}

#[test]
fn untrusted_certificate_is_a_tls_failure() {
    let dir = TempDir::new("tls");
    let (_redis, tls_port) = tls_redis(&dir);
    let (code, c) = check(&format!("rediss://localhost:{tls_port}/0"));
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "tls", "{c}");
    let error = c["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("TLS handshake with localhost:{tls_port} failed")),
        "{error}"
    );
    assert!(error.contains("not trusted"), "{error}");
}

#[test]
fn ssl_cert_reqs_none_connects_without_verifying() {
    let dir = TempDir::new("tls");
    let (_redis, tls_port) = tls_redis(&dir);
    let (code, c) = check(&format!(
        "rediss://localhost:{tls_port}/0?ssl_cert_reqs=CERT_NONE"
    ));
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["status"], "healthy");
    assert_eq!(
        c["endpoint"],
        format!("rediss://localhost:{tls_port}/0?ssl_cert_reqs=none")
    );
}

#[test]
fn plain_client_on_the_tls_port_is_told_to_use_rediss() {
    let dir = TempDir::new("tls");
    let (_redis, tls_port) = tls_redis(&dir);
    let (code, c) = check(&format!("redis://localhost:{tls_port}/0"));
    assert_eq!(code, 1);
    assert_eq!(c["status"], "unhealthy");
    let error = c["error"].as_str().unwrap();
    assert!(error.contains("closed by the server"), "{error}");
    assert!(error.contains("use rediss://"), "{error}");
    // TCP worked; the first command got the connection closed.
    let steps = c["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(
        (&last["step"], &last["status"]),
        (&"ping".into(), &"fail".into()),
        "{c:#}"
    );
    assert!(
        last["fix"].as_str().unwrap().contains("use rediss://"),
        "{c:#}"
    );
}

#[test]
fn tls_client_on_a_plain_port_is_told_to_try_redis() {
    let redis = Redis::start(&[]);
    // The default 1 s timeout: the handshake waits for a reply that never comes.
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let out = run(&["check", "--json"], &[("REDIS_URL", url.as_str())]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    let (code, c) = (
        out.status.code().unwrap(),
        doc["checks"]["redis:cache"].clone(),
    );
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "timeout", "{c}");
    assert!(c["error"].as_str().unwrap().contains("try redis://"), "{c}");
    let last = c["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["step"], &last["status"]),
        (&"tls".into(), &"fail".into()),
        "{c:#}"
    );
    assert!(
        last["fix"].as_str().unwrap().contains("use redis://"),
        "{c:#}"
    );
}
