use super::*;

fn text(m: &Metrics) -> String {
    let snapshot = Snapshot::new(&[], Duration::from_secs(5));
    m.render(&snapshot, Instant::now());
    String::from_utf8(m.exposition().plain.to_vec()).unwrap()
}

#[test]
fn mirrored_counters_follow_redis_and_its_resets() {
    let m = Metrics::new().unwrap();
    let mut info = Info {
        evicted_keys: Some(5),
        ..Info::default()
    };
    m.record_info("cache", &info);
    info.evicted_keys = Some(9);
    m.record_info("cache", &info);
    assert!(text(&m).contains("redis_evicted_keys_total{role=\"cache\"} 9\n"));
    info.evicted_keys = Some(2);
    m.record_info("cache", &info);
    assert!(text(&m).contains("redis_evicted_keys_total{role=\"cache\"} 2\n"));
}

#[test]
fn failure_drops_info_series_and_keeps_up() {
    let m = Metrics::new().unwrap();
    m.init_redis("cache");
    let info = Info {
        connected_clients: Some(3),
        ..Info::default()
    };
    m.record_redis_success("cache", 0.0004, Some(&info), PoolState::default());
    let t = text(&m);
    assert!(
        t.contains("redis_connected_clients{role=\"cache\"} 3\n"),
        "{t}"
    );
    assert!(t.contains("redis_up{role=\"cache\"} 1\n"));
    let f = Failure::new(Reason::Connect, "refused");
    m.record_redis_failure("cache", &f, PoolState::default(), false);
    let t = text(&m);
    assert!(!t.contains("redis_connected_clients{"), "{t}");
    assert!(t.contains("redis_up{role=\"cache\"} 0\n"));
    assert!(t.contains("redis_probe_failures_total{reason=\"connect\",role=\"cache\"} 1\n"));
    assert!(t.contains("redis_probe_failures_total{reason=\"timeout\",role=\"cache\"} 0\n"));
    assert!(t.contains("sidecar_build_info{version=\""));
    assert!(t.contains("process_resident_memory_bytes "));
}
