//! Faults a real redis-server can be put in, each named by `check`: max clients reached,
//! LOADING, a database out of range, a unix socket present and missing.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use support::{Redis, TempDir};

/// `check --json` on one URL: exit code and the cache check.
fn check(url: &str) -> (i32, serde_json::Value) {
    support::check_cache(&[("REDIS_URL", url)])
}

#[test]
fn max_clients_reached_is_named() {
    let redis = Redis::start(&["--maxclients", "1"]);
    // Take the only client slot and keep it (retried: the start-up check's own connection
    // may hold the slot for a moment after it closed).
    let holder = support::wait_for("the only client slot", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let mut buf = [0u8; 64];
        // Accepted: the server says nothing; refused: it writes the error and closes.
        s.read(&mut buf).is_err().then_some(s)
    });
    let (code, c) = check(&redis.url());
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "connect", "{c}");
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .starts_with("ERR max number of clients reached"),
        "{c}"
    );
    drop(holder);
}

#[test]
fn loading_is_named() {
    let mut redis = Redis::start(&["--enable-debug-command", "yes"]);
    assert_eq!(
        redis.cli(None, &["DEBUG", "POPULATE", "20000"]).trim(),
        "OK"
    );
    assert_eq!(redis.cli(None, &["SAVE"]).trim(), "OK");
    // 20,000 keys at 200 µs each: about 4 s of loading, answering LOADING meanwhile.
    redis.restart_with(&[
        "--key-load-delay",
        "200",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let (code, c) = check(&redis.url());
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "other", "{c}");
    assert!(c["error"].as_str().unwrap().starts_with("LOADING"), "{c}");
}

#[test]
fn database_out_of_range_is_named() {
    let redis = Redis::start(&[]);
    let (code, c) = check(&format!("redis://127.0.0.1:{}/99", redis.port));
    assert_eq!(code, 1);
    let error = c["error"].as_str().unwrap();
    assert!(error.starts_with("ERR DB index is out of range"), "{error}");
    assert!(error.contains("no database 99"), "{error}");
}

#[test]
fn unix_socket_works_and_a_missing_one_is_named() {
    let dir = TempDir::new("sock");
    let socket = dir.path().join("redis.sock");
    let _redis = Redis::start(&["--unixsocket", socket.to_str().unwrap()]);
    support::wait_for("the unix socket", Duration::from_secs(5), || {
        socket.exists().then_some(())
    });
    let (code, c) = check(&format!("redis+unix://{}?db=0", socket.display()));
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["status"], "healthy");

    let missing = dir.path().join("nope.sock");
    let (code, c) = check(&format!("unix://{}", missing.display()));
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "connect");
    assert!(
        c["error"].as_str().unwrap().contains("does not exist"),
        "{c}"
    );
}
