//! Notifications against a local HTTP receiver and a real redis-server: Redis killed, one
//! message with the cause once the change held; restarted, one "again after N s"; a Redis
//! flapping faster than the delay sends nothing; a receiver down gets its messages late, in
//! order; `check --notify-test`. The webhook URL, a credential, is never shown.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{FAST, Redis, Sidecar, free_port, run, sample, wait_for};

/// A webhook receiver on loopback: records each POST's path and JSON body, answers with
/// `status`; `down` stops it listening (connections refused) until `up`.
struct Receiver {
    port: u16,
    /// Answers over TLS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    got: Arc<Mutex<Vec<(Instant, String, Value)>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::with_tls(None)
    }

    /// The receiver over TLS, with the test PKI's certificate for `localhost`.
    fn start_tls(pki: &support::Pki) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Receiver::with_tls(Some(Arc::new(config)))
    }

    fn with_tls(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let mut r = Receiver {
            tls,
            port: free_port(),
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            stop: Arc::default(),
            thread: None,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the receiver");
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (got, status, stop) = (self.got.clone(), self.status.clone(), self.stop.clone());
        let tls = self.tls.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let code = status.load(Ordering::SeqCst);
                let request = match &tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                        exchange(rustls::StreamOwned::new(conn, s), code)
                    }
                    None => exchange(s, code),
                };
                if let Some((path, body)) = request.filter(|_| code == 200) {
                    got.lock().unwrap().push((Instant::now(), path, body));
                }
            }
        }));
    }

    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/T0K3N-9c8b7a", self.port)
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

/// Reads one request, answers `code`: the path and the JSON body, if it was one.
fn exchange(stream: impl Read + Write, code: u16) -> Option<(String, Value)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let answer = if code == 200 { "ok" } else { "no" };
    let stream = reader.get_mut();
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.flush();
    Some((path, serde_json::from_slice(&body).expect("a JSON body")))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// The sidecar watching `redis` (cache only: no Celery), telling `receiver` in `format`.
fn sidecar(redis: &Redis, receiver: &Receiver, format: &str, extra: &[(&str, &str)]) -> Sidecar {
    let url = redis.url();
    let hook = receiver.url();
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.extend([
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_NOTIFY_URL", hook.as_str()),
        ("SIDECAR_NOTIFY_FORMAT", format),
    ]);
    env.extend_from_slice(extra);
    let s = Sidecar::start(&env);
    s.wait_status("/readyz", 200);
    s
}

/// The events of a JSON message: (subject, to).
fn events(body: &Value) -> Vec<(String, String)> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let who = e["checks"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|c| c.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .or_else(|| e["worker"].as_str().map(String::from))
                .unwrap();
            (who, e["to"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `check --notify-test` with `env`: it exits with `code` and prints `says` (never the
/// token); what it printed.
fn notify_test(env: &[(&str, &str)], code: i32, says: &str) -> String {
    let out = run(&["check", "--notify-test"], env);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!said.contains("T0K3N"), "{said}");
    assert_eq!(out.status.code(), Some(code), "{said}");
    assert!(said.contains(says), "{said}");
    said
}

/// The message tells of the Redis check and the celery check (on the same Redis) going `to`.
fn both_went(body: &Value, to: &str) {
    let mut got = events(body);
    got.sort();
    let want = ["celery", "redis:cache"].map(|c| (c.to_string(), to.to_string()));
    assert_eq!(got, want, "{body:#}");
}

#[test]
fn redis_down_then_up_sends_one_message_each_with_the_cause_and_the_duration() {
    let mut redis = Redis::start(&[]);
    let receiver = Receiver::start();
    let sidecar = sidecar(&redis, &receiver, "json", &[]);
    // Healthy from the start: nothing to say.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.bodies().len(), 0, "{:?}", receiver.bodies());

    let killed = Instant::now();
    redis.kill();
    let down = wait_for("the down message", Duration::from_secs(20), || {
        receiver.bodies().first().cloned()
    });
    // Held for SIDECAR_NOTIFY_AFTER (two probes) first, and every check that went down
    // with it in the same message.
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    // The celery check (on the same Redis, the app's broker too) went down with it.
    both_went(&down, "unhealthy");
    let e = down["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["checks"][0] == "redis:cache")
        .unwrap();
    assert_eq!(e["from"], "healthy");
    assert_eq!(e["reason"], "connect", "{down:#}");
    assert!(
        e["sentence"].as_str().unwrap().contains("refused"),
        "{down:#}"
    );
    assert!(e["fix"].is_string(), "{down:#}");
    assert_eq!(down["service"], "redis-celery-sidecar");

    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let up = wait_for("the recovery", Duration::from_secs(20), || {
        receiver.bodies().get(1).cloned()
    });
    both_went(&up, "healthy");
    for e in up["events"].as_array().unwrap() {
        let lasted = e["lasted_seconds"].as_f64().unwrap();
        assert!((3.0..30.0).contains(&lasted), "{up:#}");
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        receiver.bodies().len(),
        2,
        "one message each: {:?}",
        receiver.bodies()
    );
    let paths: Vec<String> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p, _)| p.clone())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/hooks/T0K3N-9c8b7a"),
        "{paths:?}"
    );
    let m = sidecar.get("/metrics").body;
    assert_eq!(
        sample(&m, "sidecar_notifications_total{outcome=\"sent\"}"),
        Some(2.0),
        "{m}"
    );
    assert!(!sidecar.logs().contains("T0K3N"), "{}", sidecar.logs());
}

#[test]
fn a_flapping_redis_sends_no_storm() {
    let redis = Redis::start(&[]);
    let receiver = Receiver::start();
    let sidecar = sidecar(
        &redis,
        &receiver,
        "slack",
        &[("SIDECAR_NOTIFY_AFTER", "3s")],
    );
    // Frozen and thawed every 1.5 s for 15 s: the probe (every second, 800 ms timeout)
    // sees it down and up again, each state for less than SIDECAR_NOTIFY_AFTER.
    for _ in 0..5 {
        redis.freeze();
        std::thread::sleep(Duration::from_millis(1500));
        redis.thaw();
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(5));
    let bodies = receiver.bodies();
    let events = sidecar.get("/api/events").json();
    let changes = events["events"].as_array().unwrap().len();
    assert!(changes >= 6, "the check did flap: {events:#}");
    assert!(
        bodies.len() <= 2,
        "{} messages for {changes} changes: {bodies:?}",
        bodies.len()
    );
    for b in &bodies {
        assert!(b["text"].is_string(), "slack format: {b}");
    }
}

#[test]
fn a_receiver_down_gets_its_messages_late_and_in_order() {
    let mut redis = Redis::start(&[]);
    let mut receiver = Receiver::start();
    let sidecar = sidecar(&redis, &receiver, "json", &[]);
    receiver.down();
    redis.kill();
    std::thread::sleep(Duration::from_secs(6));
    redis.restart();
    std::thread::sleep(Duration::from_secs(6));
    let m = sidecar.get("/metrics").body;
    assert!(
        sample(&m, "sidecar_notifications_total{outcome=\"failed\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert!(
        sidecar.logs().contains("was not delivered (retried)"),
        "{}",
        sidecar.logs()
    );
    receiver.up();
    let got = wait_for("both messages", Duration::from_secs(90), || {
        let b = receiver.bodies();
        (b.len() >= 2).then_some(b)
    });
    let mut order: Vec<String> = got.iter().flat_map(events).map(|(_, to)| to).collect();
    order.dedup();
    assert_eq!(order, ["unhealthy", "healthy"], "{got:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.bodies().len(), 2);
    assert_eq!(
        sample(
            &sidecar.get("/metrics").body,
            "sidecar_notifications_total{outcome=\"dropped\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn check_notify_test_reports_the_receivers_answer() {
    let mut receiver = Receiver::start();
    let hook = receiver.url();
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:9/0"),
        ("SIDECAR_NOTIFY_URL", hook.as_str()),
        ("SIDECAR_NOTIFY_FORMAT", "discord"),
    ];
    let port = receiver.port;
    let said = notify_test(
        &env,
        0,
        &format!("notify 1 (discord, http://127.0.0.1:{port}/***)  ok    answered 200 ok"),
    );
    assert!(said.starts_with("notify 1 "), "{said}");
    let got = receiver.bodies();
    assert!(
        got[0]["content"]
            .as_str()
            .unwrap()
            .contains("a test message"),
        "{got:?}"
    );

    receiver.status.store(500, Ordering::SeqCst);
    notify_test(&env, 1, "fail  answered 500 no");

    receiver.down();
    notify_test(
        &env,
        1,
        &format!("fail  cannot connect to 127.0.0.1:{port}"),
    );

    notify_test(
        &[("REDIS_URL", "redis://127.0.0.1:9/0")],
        1,
        "set SIDECAR_NOTIFY_URL",
    );
}

/// Over HTTPS: the receiver's certificate is trusted through SSL_CERT_FILE, as for a TLS
/// Redis; without it, the handshake fails and says why.
#[test]
fn https_receivers_are_verified() {
    let dir = support::TempDir::new("notify-pki");
    let pki = support::Pki::new(&dir);
    let receiver = Receiver::start_tls(&pki);
    let hook = format!("https://localhost:{}/hooks/T0K3N-9c8b7a", receiver.port);
    let ca = pki.ca.to_str().unwrap();
    let trusted = [
        ("REDIS_URL", "redis://127.0.0.1:9/0"),
        ("SIDECAR_NOTIFY_URL", hook.as_str()),
        ("SSL_CERT_FILE", ca),
    ];
    let port = receiver.port;
    notify_test(
        &trusted,
        0,
        &format!("notify 1 (json, https://localhost:{port}/***)  ok    answered 200 ok"),
    );
    assert_eq!(receiver.bodies()[0]["test"], true);
    notify_test(
        &trusted[..2],
        1,
        &format!("fail  TLS with localhost:{port} failed: invalid peer certificate"),
    );
}
