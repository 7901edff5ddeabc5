//! Hostile HTTP clients against the real binary: a thousand idle connections, the
//! connection cap, oversized heads, pipelined garbage, unknown methods and very long URLs.
//! Each time the sidecar closes the abusive connection within a bounded time and keeps
//! answering everybody else. (A slowloris client trickling its headers is in serve.rs.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{FAST, Sidecar, sample};

fn sidecar(extra: &[(&str, &str)]) -> Sidecar {
    // No Redis is needed: these tests are about the HTTP server.
    let dead = format!("redis://127.0.0.1:{}/0", support::free_port());
    let mut env = FAST.to_vec();
    env.push(("REDIS_URL", &dead));
    env.extend_from_slice(extra);
    Sidecar::start(&env)
}

/// Everything the server sends until it closes the connection (or 15 s pass).
fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let began = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), began.elapsed())
}

fn still_answers(sidecar: &Sidecar) {
    assert_eq!(sidecar.get("/livez").status, 200);
}

#[test]
fn a_thousand_idle_connections_starve_nobody_and_are_cut() {
    let sidecar = sidecar(&[]);
    let idle: Vec<TcpStream> = (0..1000)
        .map(|i| {
            TcpStream::connect(sidecar.addr)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e} (raise `ulimit -n`)"))
        })
        .collect();
    // While they are open, others are served, and the gauge counts them all.
    let m = support::wait_for("the gauge to count them", Duration::from_secs(10), || {
        let r = sidecar.get("/metrics");
        (sample(&r.body, "sidecar_http_connections").unwrap_or(0.0) >= 1000.0).then_some(r.body)
    });
    assert_eq!(
        sample(&m, "sidecar_http_connections_rejected_total"),
        Some(0.0),
        "under the default cap of 1024"
    );
    for _ in 0..20 {
        still_answers(&sidecar);
    }
    // Each is closed by the server once the header read timeout (5 s) passed.
    for mut s in idle {
        let (said, _) = read_until_closed(&mut s);
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 408"),
            "{said}"
        );
    }
    // The page is rendered at least every 1.1 s.
    support::wait_for("the gauge to come down", Duration::from_secs(5), || {
        let m = sidecar.get("/metrics").body;
        (sample(&m, "sidecar_http_connections").unwrap_or(f64::MAX) < 5.0).then_some(())
    });
}

#[test]
fn past_the_cap_a_connection_is_closed_at_once_and_counted() {
    let sidecar = sidecar(&[("SIDECAR_MAX_CONNECTIONS", "4")]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(sidecar.addr).unwrap())
        .collect();
    // Give the server a moment to accept all four (a request then tells whether the cap
    // is reached: the fifth connection gets no answer but a close).
    let mut extra = support::wait_for("the cap to be reached", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(sidecar.addr).ok()?;
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(s),
            _ => None,
        }
    });
    let (said, _) = read_until_closed(&mut extra);
    assert!(said.is_empty(), "{said}");
    // Once the held ones time out, the sidecar answers again and says what it did.
    drop(held);
    // (The page is rendered at least every 1.1 s.)
    support::wait_for("a free slot and the count", Duration::from_secs(15), || {
        let r = support::http(sidecar.addr, "GET", "/metrics", "").ok()?;
        (sample(&r.body, "sidecar_http_connections_rejected_total")? >= 1.0).then_some(())
    });
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("too many open HTTP connections").count(),
        1,
        "one warning, however many are closed: {logs}"
    );
}

#[test]
fn an_oversized_head_gets_431_and_a_close() {
    let sidecar = sidecar(&[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    let big = "x".repeat(64 * 1024);
    // The server may close before the client finished writing: ignore write errors.
    let _ =
        s.write_all(format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let (said, _) = read_until_closed(&mut s);
    assert!(said.starts_with("HTTP/1.1 431"), "{said}");
    still_answers(&sidecar);
}

#[test]
fn pipelined_garbage_after_a_good_request_gets_400_and_a_close() {
    let sidecar = sidecar(&[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\xffNOT HTTP AT ALL\r\n\r\n")
        .unwrap();
    let (said, _) = read_until_closed(&mut s);
    assert!(said.starts_with("HTTP/1.1 200 OK"), "{said}");
    assert!(said.contains("\r\n\r\nok\nHTTP/1.1 400"), "{said}");
    assert_eq!(said.matches("HTTP/1.1").count(), 2, "{said}");
    still_answers(&sidecar);
}

#[test]
fn unknown_methods_get_405_with_allow() {
    let sidecar = sidecar(&[]);
    for method in ["BREW", "DELETE", "OPTIONS", "PUT", "PATCH", "TRACE"] {
        let r = sidecar.request(method, "/metrics", "");
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    still_answers(&sidecar);
}

#[test]
fn a_very_long_url_is_refused_and_closed() {
    let sidecar = sidecar(&[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    let path = format!("/{}", "a".repeat(100 * 1024));
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let (said, _) = read_until_closed(&mut s);
    assert!(
        said.starts_with("HTTP/1.1 414") || said.starts_with("HTTP/1.1 431"),
        "{said}"
    );
    // Long, but within the head limit: an ordinary 404.
    let r = sidecar.get(&format!("/{}", "b".repeat(8 * 1024)));
    assert_eq!(r.status, 404);
    still_answers(&sidecar);
}
