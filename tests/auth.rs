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
        ]);
        let sidecar = Sidecar::start(&e);
        let auth = "Authorization: Bearer Tok-5a4b3c2d1e\r\n";
        support::wait_for("a first probe", std::time::Duration::from_secs(10), || {
            let r = sidecar.request("GET", "/healthz", auth);
            (r.json()["checks"]["redis:cache"]["last_probe"].is_string()).then_some(())
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
        for args in [&["check"][..], &["check", "--json"], &["config"]] {
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
        for secret in [PASSWORD, wrong_pw, "Tok-5a4b3c2d1e"] {
            assert!(!text.contains(secret), "{label} shows a secret:\n{text}");
        }
    }
    // The logs at trace level did say something about the probes.
    let logs = &outputs.iter().find(|(l, _)| l == "bad logs").unwrap().1;
    assert!(logs.contains("WRONGPASS"), "{logs}");
    assert!(logs.contains("redis://default:***@127.0.0.1:"), "{logs}");
}
