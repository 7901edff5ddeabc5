//! rediss:// against a real TLS redis-server: an untrusted certificate and a plain client
//! on the TLS port each name their cause.

mod support;

use support::{Pki, Redis, Sidecar, TempDir, run, tls_redis};

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

/// A private CA: without its file the handshake fails and the fix names the roots tried
/// and `ssl_ca_certs`; with another CA's file, that file is named; with the right one
/// but the wrong name, the name is the cause. Mutual TLS: without a client certificate
/// the server refuses and the fix names `ssl_certfile`; with one, `serve` (the pool, not
/// only `check`) reports healthy.
#[test]
fn private_ca_and_client_certificates() {
    let dir = TempDir::new("tls-ca");
    let pki = Pki::new(&dir);
    let tls_port = support::free_port();
    let args = pki.redis_args(tls_port, "no");
    let _redis = Redis::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ca = pki.ca.to_str().unwrap();
    let other = pki.other_ca.to_str().unwrap();
    let tls_step = |c: &serde_json::Value| {
        c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "tls")
            .cloned()
            .unwrap_or_else(|| panic!("no tls step: {c:#}"))
    };

    let (code, c) = check(&format!("rediss://localhost:{tls_port}/0"));
    assert_eq!((code, c["reason"].as_str()), (1, Some("tls")), "{c:#}");
    let fix = tls_step(&c)["fix"].as_str().unwrap().to_string();
    assert!(
        fix.contains("roots tried: the built-in Mozilla roots."),
        "{fix}"
    );
    assert!(fix.contains("?ssl_ca_certs="), "{fix}");

    let (code, c) = check(&format!(
        "rediss://localhost:{tls_port}/0?ssl_ca_certs={other}"
    ));
    assert_eq!(code, 1, "{c:#}");
    let fix = tls_step(&c)["fix"].as_str().unwrap().to_string();
    assert!(
        fix.contains(&format!(
            "roots tried: the CA in {other} (ssl_ca_certs), then the built-in Mozilla roots"
        )),
        "{fix}"
    );

    let (code, c) = check(&format!(
        "rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    ));
    assert_eq!(code, 1, "{c:#}");
    let error = c["error"].as_str().unwrap();
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(error.contains("name"), "{error}");

    let (code, c) = check(&format!(
        "rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}"
    ));
    assert_eq!(code, 0, "{c:#}");
    let detail = tls_step(&c)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains(&format!("verified by the CA in {ca} (ssl_ca_certs)")),
        "{detail}"
    );

    // Mutual TLS.
    let mutual_port = support::free_port();
    let args = pki.redis_args(mutual_port, "yes");
    let _mutual = Redis::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, c) = check(&format!(
        "rediss://localhost:{mutual_port}/0?ssl_ca_certs={ca}"
    ));
    assert_eq!((code, c["reason"].as_str()), (1, Some("tls")), "{c:#}");
    assert!(
        c["error"].as_str().unwrap().contains("client certificate"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("ssl_certfile"), "{c:#}");

    let url = format!(
        "rediss://localhost:{mutual_port}/0?ssl_ca_certs={ca}&ssl_certfile={}&ssl_keyfile={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let sidecar = Sidecar::start(&[
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_PROBE_INTERVAL", "200ms"),
        ("SIDECAR_CELERY_MIN_WORKERS", "0"),
    ]);
    let reply = sidecar.wait_status("/readyz", 200);
    assert_eq!(reply.status, 200);
    let health = sidecar.get("/healthz").json();
    assert_eq!(
        health["checks"]["redis:cache"]["status"], "healthy",
        "{health:#}"
    );
}
