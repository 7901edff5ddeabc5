//! The server against real redis-server processes: what /livez, /readyz, /healthz and
//! /metrics say while Redis is healthy, killed, restarted and frozen.

mod support;

use std::time::Duration;

use support::{FAST, Redis, Sidecar, promtool_check_metrics, sample, wait_for};

fn env<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(pairs);
    v
}

#[test]
fn healthy_redis_is_ready_with_fields_and_clean_metrics() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));

    assert_eq!(sidecar.get("/livez").body, "ok\n");
    let ready = sidecar.wait_status("/readyz", 200);
    assert_eq!(ready.body, "ok\n");
    let verbose = sidecar.get("/readyz?verbose");
    assert_eq!(verbose.body, "[+]redis:cache ok\nreadyz check passed\n");
    assert_eq!(sidecar.get("/readyz/redis:cache").status, 200);

    // The celery check (no worker required here) reports a moment after the Redis one.
    let health = sidecar.wait_status("/healthz", 200);
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let doc = health.json();
    assert_eq!(doc["status"], "healthy");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["uptime_seconds"].as_f64().unwrap() > 0.0);
    let check = &doc["checks"]["redis:cache"];
    assert_eq!(check["status"], "healthy");
    assert_eq!(check["endpoint"], url.as_str());
    assert!(check["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(check["last_success"].as_str().unwrap().ends_with('Z'));
    assert_eq!(check["consecutive_failures"], 0);
    assert!(check["error"].is_null());
    let details = &check["details"];
    assert!(details["connected_clients"].as_u64().unwrap() >= 1);
    assert_eq!(details["maxclients"], 10000);
    assert!(details["used_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(details["role"], "master");
    assert!(details["pool"]["connections"].as_u64().unwrap() >= 1);

    let scrape = sidecar.scrape_when("redis_up{role=\"cache\"}", 1.0);
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &scrape.body;
    assert_eq!(sample(m, "redis_up{role=\"cache\"}"), Some(1.0));
    assert!(sample(m, "redis_ping_duration_seconds_count{role=\"cache\"}").unwrap() >= 1.0);
    assert!(sample(m, "redis_connected_clients{role=\"cache\"}").unwrap() >= 1.0);
    assert_eq!(sample(m, "redis_maxclients{role=\"cache\"}"), Some(10000.0));
    assert!(sample(m, "redis_used_memory_bytes{role=\"cache\"}").unwrap() > 0.0);
    assert_eq!(
        sample(m, "redis_maxmemory_bytes{role=\"cache\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(m, "redis_evicted_keys_total{role=\"cache\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(m, "redis_rejected_connections_total{role=\"cache\"}"),
        Some(0.0)
    );
    assert!(sample(m, "redis_pool_connections{role=\"cache\",state=\"idle\"}").is_some());
    assert_eq!(
        sample(m, "redis_pool_checkout_timeouts_total{role=\"cache\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            m,
            "redis_probe_failures_total{reason=\"connect\",role=\"cache\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(m, "sidecar_check_status{check=\"redis:cache\"}"),
        Some(0.0)
    );
    assert_eq!(sample(m, "sidecar_ready"), Some(1.0));
    assert!(
        sample(
            m,
            "sidecar_last_probe_timestamp_seconds{check=\"redis:cache\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        sample(
            m,
            &format!(
                "sidecar_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert!(sample(m, "process_resident_memory_bytes").unwrap() > 0.0);
    promtool_check_metrics(m);

    // Asked for gzip (as Prometheus does), the same page, compressed.
    let zipped = sidecar.request("GET", "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.header("vary"), Some("Accept-Encoding"));
    let length: usize = zipped.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, zipped.raw.len());
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped.raw[..]),
        &mut unzipped,
    )
    .expect("a gzip body");
    assert!(
        zipped.raw.len() * 3 < unzipped.len(),
        "{} bytes",
        zipped.raw.len()
    );
    promtool_check_metrics(&unzipped);
    assert!(
        sample(&unzipped, "redis_up{role=\"cache\"}") == Some(1.0),
        "{unzipped}"
    );
}

#[test]
fn killed_redis_is_refused_then_recovers_in_the_same_process() {
    let mut redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    sidecar.wait_status("/readyz", 200);
    let pid = sidecar.pid();

    redis.kill();
    sidecar.wait_status("/readyz?verbose", 503);
    // The probe that races the kill itself may see the connection reset; from the next
    // one on, nothing listens: refused.
    wait_for(
        "the cause to be a refused connection",
        Duration::from_secs(10),
        || {
            let r = sidecar.get("/readyz?verbose");
            (r.status == 503
                && r.body
                    .contains("[-]redis:cache failed: connection refused by 127.0.0.1:"))
            .then_some(())
        },
    );
    let health = sidecar.get("/healthz");
    assert_eq!(health.status, 503);
    let doc = health.json();
    assert_eq!(doc["status"], "unhealthy");
    let check = &doc["checks"]["redis:cache"];
    let error = check["error"].as_str().unwrap();
    assert!(error.contains("connection refused"), "{error}");
    assert!(!error.contains("Timed out in bb8"), "{error}");
    assert_eq!(check["reason"], "connect");
    assert!(check["consecutive_failures"].as_u64().unwrap() >= 1);
    assert!(check["last_success"].is_string(), "keeps the last success");
    let scrape = sidecar.scrape_when("redis_up{role=\"cache\"}", 0.0);
    assert_eq!(scrape.status, 200);
    assert_eq!(sample(&scrape.body, "redis_up{role=\"cache\"}"), Some(0.0));
    assert!(
        sample(
            &scrape.body,
            "redis_probe_failures_total{reason=\"connect\",role=\"cache\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&scrape.body, "redis_connected_clients{role=\"cache\"}"),
        None,
        "INFO gauges are dropped while down, not left stale"
    );
    assert_eq!(
        sample(&scrape.body, "sidecar_check_status{check=\"redis:cache\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&scrape.body, "sidecar_ready"), Some(0.0));

    redis.restart();
    sidecar.wait_status("/readyz", 200);
    // Every check recovers at its own next probe (the probers take turns in the interval).
    wait_for("every check healthy again", Duration::from_secs(10), || {
        (sidecar.get("/healthz").json()["status"] == "healthy").then_some(())
    });
    assert_eq!(sidecar.pid(), pid, "the same process recovered");
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("redis:cache is unhealthy: connection refused")
            .count(),
        1,
        "a Redis that stays down logs its cause once:\n{logs}"
    );
    assert!(logs.contains("redis:cache is healthy again"), "{logs}");
}

#[test]
fn frozen_redis_times_out_while_every_endpoint_answers() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    sidecar.wait_status("/readyz", 200);

    redis.freeze();
    let ready = sidecar.wait_status("/readyz?verbose", 503);
    assert!(
        ready.body.contains("[-]redis:cache failed: timeout:"),
        "{}",
        ready.body
    );
    // While Redis hangs, every endpoint still answers from the snapshot, without waiting:
    // a handler that touched Redis would take at least the probe timeout (800ms).
    for path in ["/livez", "/readyz", "/healthz", "/metrics"] {
        let started = std::time::Instant::now();
        let r = sidecar.get(path);
        let took = started.elapsed();
        assert!(r.status == 200 || r.status == 503, "{path}: {}", r.status);
        assert!(took < Duration::from_millis(800), "{path} took {took:?}");
    }
    let health = sidecar.get("/healthz");
    assert_eq!(health.status, 503);
    let check = &health.json()["checks"]["redis:cache"];
    assert_eq!(check["reason"], "timeout");
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("did not answer PING within 800ms"),
        "{check}"
    );
    let scrape = sidecar.scrape_when("redis_up{role=\"cache\"}", 0.0);
    assert_eq!(scrape.status, 200);
    assert_eq!(sample(&scrape.body, "redis_up{role=\"cache\"}"), Some(0.0));
    assert!(
        sample(
            &scrape.body,
            "redis_probe_failures_total{reason=\"timeout\",role=\"cache\"}"
        )
        .unwrap()
            >= 1.0
    );

    redis.thaw();
    sidecar.wait_status("/readyz", 200);
    assert_eq!(
        sidecar.get("/healthz").json()["checks"]["redis:cache"]["status"],
        "healthy"
    );
}

#[test]
fn two_servers_one_down_is_unhealthy_overall_healthy_for_the_other() {
    let cache = Redis::start(&[]);
    let mut broker = Redis::start(&[]);
    let (cache_url, broker_url) = (cache.url(), broker.url());
    let sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", &cache_url),
        ("CELERY_BROKER_URL", &broker_url),
    ]));
    sidecar.wait_status("/readyz", 200);
    broker.kill();
    // The celery check (on the broker) may notice first; wait for the broker's own check.
    let doc = wait_for("redis:broker unhealthy", Duration::from_secs(15), || {
        let doc = sidecar.get("/healthz").json();
        (doc["checks"]["redis:broker"]["status"] == "unhealthy").then_some(doc)
    });
    assert_eq!(doc["status"], "unhealthy");
    assert_eq!(doc["checks"]["redis:cache"]["status"], "healthy");
    assert_eq!(doc["checks"]["redis:broker"]["status"], "unhealthy");
    assert_eq!(sidecar.get("/readyz/redis:cache").status, 200);
    assert_eq!(sidecar.get("/readyz/redis:broker").status, 503);
    let m = sidecar.scrape_when("redis_up{role=\"broker\"}", 0.0).body;
    assert_eq!(sample(&m, "redis_up{role=\"cache\"}"), Some(1.0));
    assert_eq!(sample(&m, "redis_up{role=\"broker\"}"), Some(0.0));
}

#[test]
fn one_server_in_two_roles_is_probed_once_and_reported_under_both() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url), ("CELERY_BROKER_URL", &url)]));
    sidecar.wait_status("/readyz", 200);
    let doc = sidecar.get("/healthz").json();
    let names: Vec<&String> = doc["checks"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["redis:cache", "redis:broker", "celery"]);
    assert_eq!(
        doc["checks"]["redis:cache"]["last_probe"], doc["checks"]["redis:broker"]["last_probe"],
        "one probe, one report"
    );
    assert_eq!(sidecar.get("/readyz/redis:broker").status, 200);
    let m = sidecar.scrape_when("redis_up{role=\"broker\"}", 1.0).body;
    assert_eq!(sample(&m, "redis_up{role=\"cache\"}"), Some(1.0));
    // One pool serves both roles (and the Celery queue probe): at most its two
    // connections, where a pool per role would hold more (the event subscription, flag P,
    // is the one connection outside the pool).
    let clients = redis.cli(None, &["CLIENT", "LIST"]);
    let pooled = clients
        .lines()
        .filter(|l| l.contains(" name=redis-celery-sidecar ") && !l.contains(" flags=P "))
        .count();
    assert!((1..=2).contains(&pooled), "{clients}");
}

#[test]
fn http_surface_methods_paths_head_and_dual_stack() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    sidecar.wait_status("/readyz", 200);

    let post = sidecar.request("POST", "/metrics", "Content-Length: 0\r\n");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(sidecar.get("/nope").status, 404);
    assert_eq!(sidecar.get("/readyz/redis:nope").status, 404);

    let head = sidecar.request("HEAD", "/healthz", "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    assert!(head.header("content-length").is_some());
    let head = sidecar.request("HEAD", "/livez", "");
    assert_eq!(
        head.header("content-length"),
        Some("3"),
        "as GET would send"
    );
    assert!(head.body.is_empty());

    // The [::] listener answers on IPv4 and IPv6 loopback.
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], sidecar.addr.port()));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, sidecar.addr.port()));
    assert_eq!(support::http(v4, "GET", "/livez", "").unwrap().status, 200);
    assert_eq!(support::http(v6, "GET", "/livez", "").unwrap().status, 200);
}

#[test]
fn auth_token_guards_healthz_and_metrics() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", &url),
        ("SIDECAR_AUTH_TOKEN", "tok-3f9a1c"),
    ]));
    sidecar.wait_status("/readyz", 200);
    for path in ["/healthz", "/metrics"] {
        let r = sidecar.get(path);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert_eq!(
            sidecar
                .request("GET", path, "Authorization: Bearer wrong\r\n")
                .status,
            401
        );
        assert_eq!(
            sidecar
                .request("GET", path, "Authorization: Bearer tok-3f9a1c\r\n")
                .status,
            200
        );
    }
    assert_eq!(sidecar.get("/livez").status, 200);
    assert_eq!(sidecar.get("/readyz").status, 200);
}

#[test]
fn starts_while_redis_is_down_and_sigterm_exits_zero_promptly() {
    let port = support::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    assert_eq!(sidecar.get("/livez").status, 200);
    sidecar.wait_status("/readyz", 503);
    // An idle keep-alive connection must not hold the shutdown up.
    let idle = std::net::TcpStream::connect(sidecar.addr).unwrap();
    let (status, took) = sidecar.terminate();
    drop(idle);
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    eprintln!("SIGTERM to exit: {took:?}");
}

#[test]
fn sigint_exits_zero_too() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    sidecar.wait_status("/readyz", 200);
    let (status, took) = sidecar.stop("INT");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(
        sidecar.logs().contains("SIGINT received"),
        "{}",
        sidecar.logs()
    );
}

#[test]
fn a_ping_slower_than_the_slo_is_degraded_not_down() {
    let redis = Redis::start(&["--enable-debug-command", "yes"]);
    let url = redis.url();
    let sidecar = Sidecar::start(&[
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_PROBE_INTERVAL", "2s"),
        ("SIDECAR_PROBE_TIMEOUT", "1500ms"),
        ("SIDECAR_LATENCY_SLO", "50ms"),
    ]);
    sidecar.wait_status("/readyz", 200);
    // Keep the server busy: DEBUG SLEEP 0.3 back to back, so a PING waits up to 300ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleeper = {
        let stop = stop.clone();
        let port = redis.port;
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 16];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.write_all(b"DEBUG SLEEP 0.3\r\n").unwrap();
                let _ = s.read(&mut buf).unwrap();
            }
        })
    };
    let check = wait_for("a degraded check", Duration::from_secs(20), || {
        let doc = sidecar.get("/healthz").json();
        let c = doc["checks"]["redis:cache"].clone();
        (c["status"] == "degraded").then_some(c)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sleeper.join().unwrap();
    let warning = check["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("slow: PING took"), "{warning}");
    assert!(warning.ends_with("over the 50ms latency SLO"), "{warning}");
    assert!(check["error"].is_null());
    // Degraded still counts as ready.
    assert_eq!(sidecar.get("/readyz").status, 200);
    assert!(
        sidecar
            .logs()
            .contains("redis:cache is degraded: slow: PING took")
    );
}

#[test]
fn a_connect_that_hangs_is_a_checkout_timeout() {
    let redis = Redis::start(&[]);
    redis.freeze();
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    let error = wait_for("the first probe's failure", Duration::from_secs(15), || {
        let doc = sidecar.get("/healthz").json();
        let c = &doc["checks"]["redis:cache"];
        c["last_probe"]
            .is_string()
            .then(|| c["error"].as_str().unwrap_or("").to_string())
    });
    assert!(
        error.starts_with("timeout: no connection to 127.0.0.1:"),
        "{error}"
    );
    let scrape = wait_for(
        "a counted checkout timeout",
        Duration::from_secs(15),
        || {
            let r = sidecar.get("/metrics");
            (sample(
                &r.body,
                "redis_pool_checkout_timeouts_total{role=\"cache\"}",
            ) >= Some(1.0))
            .then_some(r)
        },
    );
    assert!(
        sample(
            &scrape.body,
            "redis_probe_failures_total{reason=\"timeout\",role=\"cache\"}"
        ) >= Some(1.0)
    );
    redis.thaw();
    sidecar.wait_status("/readyz", 200);
}

#[test]
fn a_slow_client_is_cut_off_while_others_are_served() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url)]));
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(sidecar.addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Others are served meanwhile.
    assert_eq!(sidecar.get("/livez").status, 200);
    // The header-read timeout (5 s) closes the connection that never finishes its head.
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = Vec::new();
    let closed = wait_for(
        "the slow client to be cut off",
        Duration::from_secs(15),
        || match slow.read_to_end(&mut buf) {
            Ok(_) => Some(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(true),
            Err(_) => None,
        },
    );
    assert!(closed);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_cause() {
    let mut redis = Redis::start(&[]);
    let url = redis.url();
    let sidecar = Sidecar::start(&env(&[("REDIS_URL", &url), ("SIDECAR_LOG_FORMAT", "json")]));
    sidecar.wait_status("/readyz", 200);
    redis.kill();
    sidecar.wait_status("/readyz", 503);
    let logs = wait_for("the unhealthy log line", Duration::from_secs(10), || {
        let logs = sidecar.logs();
        logs.contains("redis:cache is unhealthy").then_some(logs)
    });
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let down = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("redis:cache is unhealthy"))
        })
        .unwrap();
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["check"], "redis:cache");
    assert_eq!(down["reason"], "connect");
    assert_eq!(down["endpoint"], url.as_str());
    assert!(down["timestamp"].is_string());
}
