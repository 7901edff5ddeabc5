//! One verdict per Redis: every fault of the zoo, made for real, judged by the running
//! server (`/healthz`) and by `check --json` with the same settings, must give every check
//! the same status and reason. Each case also asserts what that verdict is, so that two
//! judges agreeing on nothing cannot pass.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Redis, Sidecar, TempDir, run, tls_redis};

/// Settings for both judges: a timeout and an SLO a busy 2-core machine keeps to, and no
/// Celery worker required unless a case says so.
const ZOO: &[(&str, &str)] = &[
    ("SIDECAR_PROBE_INTERVAL", "2s"),
    ("SIDECAR_PROBE_TIMEOUT", "1500ms"),
    ("SIDECAR_LATENCY_SLO", "1400ms"),
    ("SIDECAR_CELERY_MIN_WORKERS", "0"),
];

/// Each check's (status, reason) in a `checks` object.
fn verdicts(checks: &Value) -> BTreeMap<String, (String, String)> {
    checks
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(name, c)| {
                    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
                    (name.clone(), (text(&c["status"]), text(&c["reason"])))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `check --json` and a sidecar with the same settings, and waits (up to 20 s, the
/// server's first probes and the Celery grace included) for the server to give every
/// check `check`'s status and reason. Returns `check`'s checks.
fn same_verdict(env: &[(&str, &str)]) -> Value {
    let mut all = ZOO.to_vec();
    all.extend_from_slice(env);
    let sidecar = Sidecar::start(&all);
    let out = run(&["check", "--json"], &all);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    let want = verdicts(&doc["checks"]);
    assert!(!want.is_empty(), "{doc:#}");
    let started = Instant::now();
    loop {
        let server = sidecar.get("/healthz").json();
        let got = verdicts(&server["checks"]);
        if got == want {
            return doc["checks"].clone();
        }
        if started.elapsed() > Duration::from_secs(20) {
            panic!(
                "the server and check disagree:\n server {got:?}\n check  {want:?}\n/healthz {server:#}\ncheck {doc:#}\nlogs:\n{}",
                sidecar.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts the verdict of one check.
fn is(checks: &Value, name: &str, status: &str, reason: Option<&str>) {
    let c = &checks[name];
    assert_eq!(c["status"], status, "{name}: {checks:#}");
    match reason {
        Some(r) => assert_eq!(c["reason"], r, "{name}: {checks:#}"),
        None => assert!(c["reason"].is_null(), "{name}: {checks:#}"),
    }
}

#[test]
fn refused() {
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());
    let c = same_verdict(&[("REDIS_URL", &url)]);
    is(&c, "redis:cache", "unhealthy", Some("connect"));
    is(&c, "celery", "unhealthy", Some("connect"));
}

#[test]
fn unknown_host() {
    let c = same_verdict(&[("REDIS_URL", "redis://no-such-host.invalid:6379/0")]);
    is(&c, "redis:cache", "unhealthy", Some("dns"));
}

#[test]
fn wrong_password_missing_password_and_a_password_nobody_asked_for() {
    let redis = Redis::start(&["--requirepass", "Zoo-pw-8c2e"]);
    let wrong = format!("redis://default:nope@127.0.0.1:{}/0", redis.port);
    let c = same_verdict(&[("REDIS_URL", &wrong)]);
    is(&c, "redis:cache", "unhealthy", Some("auth"));
    let missing = redis.url();
    let c = same_verdict(&[("REDIS_URL", &missing)]);
    is(&c, "redis:cache", "unhealthy", Some("auth"));
    let open = Redis::start(&[]);
    let extra = format!("redis://:extra-pw@127.0.0.1:{}/0", open.port);
    let c = same_verdict(&[("REDIS_URL", &extra)]);
    is(&c, "redis:cache", "unhealthy", Some("auth"));
}

#[test]
fn database_out_of_range() {
    let redis = Redis::start(&[]);
    let url = format!("redis://127.0.0.1:{}/99", redis.port);
    let c = same_verdict(&[("REDIS_URL", &url)]);
    is(&c, "redis:cache", "unhealthy", Some("other"));
}

#[test]
fn max_clients_reached() {
    let redis = Redis::start(&["--maxclients", "1"]);
    let _holder = support::wait_for("the only client slot", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let mut buf = [0u8; 64];
        s.read(&mut buf).is_err().then_some(s)
    });
    let c = same_verdict(&[("REDIS_URL", &redis.url())]);
    is(&c, "redis:cache", "unhealthy", Some("connect"));
}

#[test]
fn frozen() {
    let redis = Redis::start(&[]);
    redis.freeze();
    let c = same_verdict(&[("REDIS_URL", &redis.url())]);
    redis.thaw();
    is(&c, "redis:cache", "unhealthy", Some("timeout"));
    is(&c, "celery", "unhealthy", Some("timeout"));
}

#[test]
fn loading() {
    // About 12 s answering LOADING.
    let redis = Redis::loading(60_000);
    let c = same_verdict(&[("REDIS_URL", &redis.url())]);
    is(&c, "redis:cache", "unhealthy", Some("other"));
    assert!(
        c["redis:cache"]["error"]
            .as_str()
            .unwrap()
            .starts_with("LOADING"),
        "{c:#}"
    );
}

#[test]
fn unix_socket_missing() {
    let dir = TempDir::new("zoo-sock");
    let url = format!("unix://{}", dir.path().join("nope.sock").display());
    let c = same_verdict(&[("REDIS_URL", &url)]);
    is(&c, "redis:cache", "unhealthy", Some("connect"));
}

#[test]
fn tls_untrusted_tls_on_a_plain_port_and_plain_on_a_tls_port() {
    let dir = TempDir::new("zoo-tls");
    let (plain, tls_port) = tls_redis(&dir);
    let c = same_verdict(&[("REDIS_URL", &format!("rediss://localhost:{tls_port}/0"))]);
    is(&c, "redis:cache", "unhealthy", Some("tls"));
    let c = same_verdict(&[(
        "REDIS_URL",
        &format!("rediss://localhost:{}/0?ssl_cert_reqs=none", plain.port),
    )]);
    assert_eq!(c["redis:cache"]["status"], "unhealthy", "{c:#}");
    let c = same_verdict(&[("REDIS_URL", &format!("redis://127.0.0.1:{tls_port}/0"))]);
    assert_eq!(c["redis:cache"]["status"], "unhealthy", "{c:#}");
}

#[test]
fn replicas_where_celery_writes_and_as_a_cache() {
    let primary = Redis::start(&[]);
    let port = primary.port.to_string();
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &port]);
    let c = same_verdict(&[
        ("REDIS_URL", &primary.url()),
        ("CELERY_BROKER_URL", &replica.url()),
    ]);
    is(&c, "redis:cache", "healthy", None);
    is(&c, "redis:broker", "unhealthy", Some("other"));
    is(&c, "celery", "unhealthy", Some("other"));
    let backend = format!("redis://127.0.0.1:{}/1", replica.port);
    let c = same_verdict(&[
        ("REDIS_URL", &primary.url()),
        ("CELERY_RESULT_BACKEND", &backend),
    ]);
    is(&c, "redis:result_backend", "unhealthy", Some("other"));
    let c = same_verdict(&[("REDIS_URL", &replica.url())]);
    is(&c, "redis:cache", "degraded", None);
}

#[test]
fn an_evicting_broker() {
    let redis = Redis::start(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let url = redis.url();
    let c = same_verdict(&[("REDIS_URL", &url), ("CELERY_BROKER_URL", &url)]);
    is(&c, "redis:broker", "degraded", None);
    assert!(
        c["redis:broker"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("allkeys-lru"),
        "{c:#}"
    );
}

/// ACL users missing one right each: INFO (degraded), PING (unhealthy), PSUBSCRIBE and
/// reading the queues (the Celery check unhealthy).
#[test]
fn acl_users_without_info_ping_psubscribe_or_reads() {
    let redis = Redis::start(&[]);
    let user = |name: &str, rules: &[&str]| {
        let mut args = vec!["ACL", "SETUSER", name, "on", ">zoo-pw-1"];
        args.extend_from_slice(rules);
        assert_eq!(redis.cli(None, &args).trim(), "OK");
        format!("redis://{name}:zoo-pw-1@127.0.0.1:{}/0", redis.port)
    };
    let c = same_verdict(&[(
        "REDIS_URL",
        &user("noinfo", &["~*", "&*", "+@all", "-info"]),
    )]);
    is(&c, "redis:cache", "degraded", None);
    let c = same_verdict(&[("REDIS_URL", &user("mute", &["-@all"]))]);
    is(&c, "redis:cache", "unhealthy", Some("auth"));
    let c = same_verdict(&[
        (
            "REDIS_URL",
            &user("deaf", &["~*", "&*", "+@all", "-psubscribe"]),
        ),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
    ]);
    is(&c, "redis:cache", "healthy", None);
    is(&c, "celery", "unhealthy", Some("auth"));
    let c = same_verdict(&[("REDIS_URL", &user("blind", &["~*", "&*", "+@all", "-llen"]))]);
    is(&c, "celery", "unhealthy", Some("auth"));
}

#[test]
fn no_celery_worker() {
    let redis = Redis::start(&[]);
    let c = same_verdict(&[
        ("REDIS_URL", &redis.url()),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
    ]);
    is(&c, "redis:cache", "healthy", None);
    is(&c, "celery", "unhealthy", Some("other"));
}
