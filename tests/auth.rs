//! Passwords and ACLs against a real `requirepass` server, and the rule that a password
//! never shows: not in logs at trace level, /healthz, /metrics, `config`, `check` or errors.

mod support;

use support::{FAST, Redis, Sidecar, run};

const PASSWORD: &str = "Pw-7c1e9b2d4f";

fn env<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(pairs);
    v
}

fn secured() -> Redis {
    Redis::start(&["--requirepass", PASSWORD])
}

fn url(redis: &Redis, userinfo: &str) -> String {
    format!("redis://{userinfo}127.0.0.1:{}/0", redis.port)
}

/// `check --json` on one URL: exit code and the cache check.
fn check_json(url: &str) -> (i32, serde_json::Value) {
    support::check_cache(&[("REDIS_URL", url)])
}

#[test]
fn right_password_is_healthy() {
    let redis = secured();
    let (code, check) = check_json(&url(&redis, &format!("default:{PASSWORD}@")));
    assert_eq!(code, 0, "{check}");
    assert_eq!(check["status"], "healthy");
}

#[test]
fn wrong_password_names_wrongpass() {
    let redis = secured();
    let (code, check) = check_json(&url(&redis, "default:not-the-password@"));
    assert_eq!(code, 1);
    assert_eq!(check["status"], "unhealthy");
    assert_eq!(check["reason"], "auth");
    assert!(
        check["error"].as_str().unwrap().starts_with("WRONGPASS"),
        "{check}"
    );
}

#[test]
fn missing_password_names_noauth() {
    let redis = secured();
    let (code, check) = check_json(&url(&redis, ""));
    assert_eq!(code, 1);
    assert_eq!(check["reason"], "auth");
    assert!(
        check["error"].as_str().unwrap().starts_with("NOAUTH"),
        "{check}"
    );
}

#[test]
fn acl_user_without_info_is_degraded_with_a_message() {
    let redis = secured();
    let set = redis.cli(
        Some(PASSWORD),
        &["ACL", "SETUSER", "probe", "on", ">probe-pw-31", "+ping"],
    );
    assert_eq!(set.trim(), "OK");
    let (code, check) = check_json(&url(&redis, "probe:probe-pw-31@"));
    assert_eq!(code, 1, "degraded is not healthy for check's exit code");
    assert_eq!(check["status"], "degraded");
    let warning = check["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("INFO failed"), "{warning}");
    assert!(warning.contains("NOPERM"), "{warning}");
    assert!(check["error"].is_null());
    // PING still worked: the latency is known.
    assert!(check["latency_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn acl_user_without_ping_is_unhealthy() {
    let redis = secured();
    redis.cli(
        Some(PASSWORD),
        &["ACL", "SETUSER", "mute", "on", ">mute-pw-31", "-@all"],
    );
    let (code, check) = check_json(&url(&redis, "mute:mute-pw-31@"));
    assert_eq!(code, 1);
    assert_eq!(check["status"], "unhealthy");
    assert!(
        check["error"].as_str().unwrap().contains("NOPERM"),
        "{check}"
    );
}

/// Every output, in a healthy and a failing run, with debug logs: no password anywhere.
#[test]
fn the_password_never_appears_anywhere() {
    let redis = secured();
    let good = url(&redis, &format!("default:{PASSWORD}@"));
    let wrong_pw = "Wrong-9e8d7c6b5a";
    let bad = url(&redis, &format!("default:{wrong_pw}@"));
    let dead = format!(
        "redis://default:{PASSWORD}@127.0.0.1:{}/0",
        support::free_port()
    );

    let mut outputs: Vec<(String, String)> = Vec::new();
    for (label, u) in [("good", &good), ("bad", &bad), ("dead", &dead)] {
        let e = env(&[
            ("REDIS_URL", u.as_str()),
            ("RUST_LOG", "trace"),
            ("SIDECAR_AUTH_TOKEN", "Tok-5a4b3c2d1e"),
            // A webhook URL is a credential: nobody listens there, so each change's
            // delivery fails and is logged (by host only).
            (
                "SIDECAR_NOTIFY_URL",
                "http://127.0.0.1:9/hooks/Hook-7f6e5d4c",
            ),
            ("SIDECAR_NOTIFY_AFTER", "0s"),
            // OTLP traces and metrics to a collector that is not there, with an API key:
            // every push fails and is logged.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=Otlp-3c2b1a0f"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ]);
        let sidecar = Sidecar::start(&e);
        let auth = "Authorization: Bearer Tok-5a4b3c2d1e\r\n";
        support::wait_for("a first probe", std::time::Duration::from_secs(10), || {
            let r = sidecar.request("GET", "/healthz", auth);
            (r.json()["checks"]["redis:cache"]["last_probe"].is_string()).then_some(())
        });
        // A push has failed (and been logged) before the outputs are read.
        support::wait_for("a failed push", std::time::Duration::from_secs(10), || {
            let m = sidecar.request("GET", "/metrics", auth).body;
            let failed = "sidecar_otel_metric_exports_total{outcome=\"failed\"}";
            (support::sample(&m, failed) >= Some(1.0)).then_some(())
        });
        outputs.push((
            format!("{label} /healthz"),
            sidecar.request("GET", "/healthz", auth).body,
        ));
        outputs.push((
            format!("{label} /metrics"),
            sidecar.request("GET", "/metrics", auth).body,
        ));
        outputs.push((
            format!("{label} /readyz"),
            sidecar.get("/readyz?verbose").body,
        ));
        // The status page and its JSON: the endpoint shown redacted, the events' causes.
        for path in ["/", "/api/history", "/api/events"] {
            let body = sidecar.request("GET", path, auth).body;
            assert!(
                path == "/api/events" || body.contains("redis://default:***@127.0.0.1:"),
                "{label} {path}: {body}"
            );
            outputs.push((format!("{label} {path}"), body));
        }
        for args in [
            &["check"][..],
            &["check", "--json"],
            &["check", "--notify-test"],
            &["config"],
        ] {
            let out = run(args, &e);
            outputs.push((
                format!("{label} {args:?}"),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        drop(sidecar.get("/livez"));
        outputs.push((format!("{label} logs"), sidecar.logs()));
    }
    // A configuration error that involves the URL.
    let broken = format!("redis://default:{PASSWORD}@127.0.0.1:99999/0");
    let out = run(&["config"], &[("REDIS_URL", broken.as_str())]);
    assert_eq!(out.status.code(), Some(2));
    outputs.push((
        "config error".into(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ));

    for (label, text) in &outputs {
        assert!(!text.is_empty(), "{label} is empty");
        for secret in [
            PASSWORD,
            wrong_pw,
            "Tok-5a4b3c2d1e",
            "Hook-7f6e5d4c",
            "Otlp-3c2b1a0f",
        ] {
            assert!(!text.contains(secret), "{label} shows a secret:\n{text}");
        }
    }
    // The logs at trace level did say something about the probes.
    let logs = &outputs.iter().find(|(l, _)| l == "bad logs").unwrap().1;
    assert!(logs.contains("WRONGPASS"), "{logs}");
    assert!(logs.contains("redis://default:***@127.0.0.1:"), "{logs}");
    assert!(logs.contains("pushing metrics over OTLP failed"), "{logs}");
}

/// A password changed on the server while the sidecar runs (what a rotation does): its
/// pooled connections stay logged in, so only the credential recheck can see what every new
/// worker and web instance gets. Reported as `auth`, in `check`'s words; a sidecar whose
/// recheck is an hour away still says healthy at that moment (the recheck is what saw it).
#[test]
fn a_password_changed_on_the_server_is_reported_by_the_recheck() {
    let redis = secured();
    let good = url(&redis, &format!("default:{PASSWORD}@"));
    let rechecking = Sidecar::start(&env(&[
        ("REDIS_URL", &good),
        ("SIDECAR_AUTH_RECHECK", "2s"),
    ]));
    let trusting = Sidecar::start(&env(&[
        ("REDIS_URL", &good),
        ("SIDECAR_AUTH_RECHECK", "1h"),
    ]));
    rechecking.wait_status("/readyz", 200);
    trusting.wait_status("/readyz", 200);
    let rotated = "Rotated-3f9a1c77";
    assert_eq!(
        redis
            .cli(Some(PASSWORD), &["CONFIG", "SET", "requirepass", rotated])
            .trim(),
        "OK"
    );
    let changed = std::time::Instant::now();
    let cache = |s: &Sidecar| s.get("/healthz").json()["checks"]["redis:cache"].clone();
    let c = support::wait_for(
        "the rotated password reported",
        std::time::Duration::from_secs(15),
        || Some(cache(&rechecking)).filter(|c| c["status"] == "unhealthy"),
    );
    // How soon (SIDECAR_AUTH_RECHECK plus at most one probe interval) is measured by
    // scripts/bench-report, not asserted here.
    eprintln!("reported {:?} after the change", changed.elapsed());
    assert_eq!(c["reason"], "auth", "{c:#}");
    let (code, check) = check_json(&good);
    assert_eq!(code, 1);
    assert_eq!(c["error"], check["error"], "the same words as check");
    assert!(
        c["error"].as_str().unwrap().starts_with("WRONGPASS"),
        "{c:#}"
    );
    assert_eq!(
        cache(&trusting)["status"],
        "healthy",
        "pooled connections alone do not see it"
    );
    // Back to the old password: healthy again at the next probe.
    assert_eq!(
        redis
            .cli(Some(rotated), &["CONFIG", "SET", "requirepass", PASSWORD])
            .trim(),
        "OK"
    );
    rechecking.wait_status("/readyz", 200);
    let logs = rechecking.logs();
    assert!(
        logs.contains("redis:cache is healthy again after"),
        "{logs}"
    );
    for secret in [PASSWORD, rotated] {
        assert!(!logs.contains(secret), "{logs}");
    }
}

/// Every connection the sidecar holds, the event subscription's included, is named in
/// CLIENT LIST, so an admin can tell it from the app's.
#[test]
fn every_connection_is_named_in_client_list() {
    let redis = secured();
    let good = url(&redis, &format!("default:{PASSWORD}@"));
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &good)]));
    sidecar.wait_status("/readyz", 200);
    support::wait_for(
        "the event subscription",
        std::time::Duration::from_secs(10),
        || {
            let c = &sidecar.get("/healthz").json()["checks"]["celery"];
            (c["details"]["events"]["subscribed"] == true).then_some(())
        },
    );
    let list = redis.cli(Some(PASSWORD), &["CLIENT", "LIST"]);
    let others: Vec<&str> = list
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .collect();
    assert!(
        others.iter().any(|l| l.contains("flags=P")),
        "the pub/sub connection is listed: {list}"
    );
    assert!(others.len() >= 2, "{list}");
    for line in others {
        assert!(
            line.contains(" name=redis-celery-sidecar "),
            "an unnamed connection: {line}"
        );
    }
}
