//! Faults a real redis-server can be put in, each named by `check`: LOADING, a unix socket
//! present and missing. (The rest of the fault zoo is in diagnose.rs.)

mod support;

use std::time::Duration;

use support::{Redis, TempDir};

/// `check --json` on one URL: exit code and the cache check.
fn check(url: &str) -> (i32, serde_json::Value) {
    support::check_cache(&[("REDIS_URL", url)])
}

#[test]
fn loading_is_named() {
    // About 4 s answering LOADING.
    let redis = Redis::loading(20_000);
    let (code, c) = check(&redis.url());
    assert_eq!(code, 1);
    assert_eq!(c["reason"], "other", "{c}");
    assert!(c["error"].as_str().unwrap().starts_with("LOADING"), "{c}");
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
