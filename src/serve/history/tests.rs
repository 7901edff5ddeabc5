use super::*;
use crate::redis::failure::{Failure, Reason};
use crate::serve::health::Details;
use crate::verdict::Finding;
use tokio::time::Instant;

fn report(status: Status, latency_ms: Option<u64>, cause: &str) -> Report {
    Report {
        status,
        finished: Instant::now(),
        finished_at: SystemTime::now(),
        latency: latency_ms.map(Duration::from_millis),
        last_success: None,
        consecutive_failures: 0,
        error: (status == Status::Unhealthy).then(|| Failure::new(Reason::Connect, cause)),
        fix: (status == Status::Unhealthy).then(|| "start Redis".to_string()),
        warnings: if status == Status::Degraded {
            vec![Finding::new("ping", cause, "look at the network")]
        } else {
            vec![]
        },
        details: Details::None,
    }
}

fn checks() -> Vec<String> {
    vec!["redis:cache".to_string(), "redis:broker".to_string()]
}

#[test]
fn a_ring_keeps_the_newest_in_order() {
    let mut r = Ring::new(3);
    assert!(r.is_empty());
    assert_eq!(r.last(), None);
    for i in 1..=5 {
        r.push(i);
        assert_eq!(r.last(), Some(&i));
    }
    assert_eq!(r.iter().copied().collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(r.len(), 3);
    *r.last_mut().unwrap() = 50;
    assert_eq!(r.iter().copied().collect::<Vec<_>>(), [3, 4, 50]);
    r.clear();
    r.push(7);
    assert_eq!(r.iter().copied().collect::<Vec<_>>(), [7]);
}

#[test]
fn an_hour_at_the_interval_within_bounds() {
    assert_eq!(points_for(Duration::from_secs(5)), 720);
    assert_eq!(points_for(Duration::from_secs(1)), 3600);
    assert_eq!(points_for(Duration::from_millis(100)), MAX_POINTS);
    assert_eq!(points_for(Duration::from_secs(600)), 12);
}

#[test]
fn changes_and_latency_points_are_kept() {
    let h = History::new(
        Duration::from_secs(5),
        0,
        [(checks(), "redis://h:1/0".into())],
    );
    let healthy = report(Status::Healthy, Some(2), "");
    h.published(&checks(), None, &healthy, true);
    h.published(&checks(), Some(&healthy), &healthy, true);
    let down = report(Status::Unhealthy, None, "connection refused by h:1");
    h.published(&checks(), Some(&healthy), &down, true);
    // The same cause again is no change; a new cause is.
    h.published(&checks(), Some(&down), &down, true);
    let other = report(Status::Unhealthy, None, "DNS lookup of h failed");
    h.published(&checks(), Some(&down), &other, true);
    // A judgement between probes adds no point.
    h.published(&checks(), Some(&other), &healthy, false);
    let v = h.view(SystemTime::now());
    let points: Vec<Option<f64>> = v.targets[0].ping_ms.iter().map(|p| p.value).collect();
    assert_eq!(points, [Some(2.0), Some(2.0), None, None, None]);
    let changes: Vec<(Option<&str>, &str)> = v.events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        changes,
        [
            (Some("unhealthy"), "healthy"),
            (Some("unhealthy"), "unhealthy"),
            (Some("healthy"), "unhealthy"),
            (None, "healthy"),
        ],
        "newest first"
    );
    let e = &v.events[2];
    assert_eq!(e.subject, Subject::Checks(checks()));
    assert_eq!(e.reason, Some("connect"));
    assert_eq!(e.sentence.as_deref(), Some("connection refused by h:1"));
    assert_eq!(e.fix.as_deref(), Some("start Redis"));
    assert_eq!(quantile(&v.targets[0].ping_ms, 0.5), Some(2.0));
}

#[test]
fn events_are_bounded_and_text_is_cut() {
    let h = History::new(Duration::from_secs(5), 0, []);
    let long = "x".repeat(10_000);
    for i in 0..(EVENTS + 50) {
        h.worker(
            &format!("w{i}{long}"),
            i % 2 == 0,
            false,
            Some(long.clone()),
            SystemTime::now(),
        );
    }
    let v = h.view(SystemTime::now());
    assert_eq!(v.events.len(), EVENTS);
    let Subject::Worker(name) = &v.events[0].subject else {
        panic!("a worker event");
    };
    assert!(
        name.starts_with(&format!("w{}", EVENTS + 49)),
        "newest first"
    );
    assert!(name.len() <= MAX_TEXT && name.ends_with('…'));
    assert!(v.events[0].sentence.as_ref().unwrap().len() <= MAX_TEXT);
}

#[test]
fn the_longest_queues_keep_their_slots() {
    let h = History::new(Duration::from_secs(5), 2, []);
    let at = SystemTime::now();
    h.celery(
        at,
        Some([("a", 5), ("b", 1), ("c", 3)].into_iter()),
        1,
        (0, 0),
    );
    let v = h.view(SystemTime::now());
    let names: Vec<&str> = v.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    // b grows past c: c's slot goes to b, which starts a fresh series; a keeps its own.
    h.celery(
        at,
        Some([("a", 4), ("b", 9), ("c", 3)].into_iter()),
        1,
        (0, 0),
    );
    let v = h.view(SystemTime::now());
    let series: Vec<(&str, Vec<Option<f64>>)> = v
        .queues
        .iter()
        .map(|q| (q.name.as_str(), q.points.iter().map(|p| p.value).collect()))
        .collect();
    assert_eq!(
        series,
        [("b", vec![Some(9.0)]), ("a", vec![Some(5.0), Some(4.0)])]
    );
    // The broker unreadable: a gap in each series shown.
    h.celery(at, None::<std::vec::IntoIter<(&str, u64)>>, 0, (0, 0));
    let v = h.view(SystemTime::now());
    assert_eq!(v.queues[1].points.last().unwrap().value, None);
    // Hostile and huge names are kept cut, and never more slots than set.
    let huge = "q".repeat(5000);
    let many: Vec<(String, u64)> = (0..1000).map(|i| (format!("{i}{huge}"), i)).collect();
    h.celery(
        at,
        Some(many.iter().map(|(n, l)| (n.as_str(), *l))),
        0,
        (0, 0),
    );
    let v = h.view(SystemTime::now());
    assert_eq!(v.queues.len(), 2);
    assert!(v.queues.iter().all(|q| q.name.len() <= MAX_TEXT));
    assert!(v.queues[0].name.starts_with("999"));
}

#[test]
fn tasks_are_counted_per_minute() {
    let h = History::new(Duration::from_secs(5), 0, []);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 60 * 60);
    h.celery(t0, None::<std::vec::IntoIter<(&str, u64)>>, 1, (10, 1));
    h.celery(
        t0 + Duration::from_secs(5),
        None::<std::vec::IntoIter<(&str, u64)>>,
        1,
        (13, 1),
    );
    h.celery(
        t0 + Duration::from_secs(65),
        None::<std::vec::IntoIter<(&str, u64)>>,
        1,
        (14, 3),
    );
    let v = h.view(t0 + Duration::from_secs(65));
    let minutes: Vec<(u64, u64)> = v.minutes.iter().map(|m| (m.succeeded, m.failed)).collect();
    assert_eq!(
        minutes,
        [(13, 1), (1, 2)],
        "counted from the sidecar's start"
    );
    assert_eq!(v.minutes[0].start % 60, 0);
    // An hour later, the first minute is gone from the view.
    let later = h.view(t0 + Duration::from_secs(3600 + 61));
    assert_eq!(later.minutes.len(), 1);
    assert_eq!(
        later.workers_alive.len(),
        1,
        "points older than an hour are left out"
    );
}

#[test]
fn memory_is_written_at_start_and_never_grows() {
    let h = History::new(Duration::from_secs(5), 10, [(checks(), "e".into())]);
    let sizes = |h: &History| {
        let i = h.lock();
        (
            i.targets[0].ping_ms.buf.len(),
            i.queues.iter().map(|q| q.length.buf.len()).sum::<usize>(),
            i.workers_alive.buf.len(),
            i.minutes.buf.len(),
        )
    };
    // Every slot exists (written) before anything is recorded.
    let before = sizes(&h);
    assert_eq!(before, (720, 7200, 720, 61));
    let healthy = report(Status::Healthy, Some(1), "");
    for i in 0..2000 {
        h.published(&checks(), None, &healthy, true);
        h.worker(&format!("w{i}"), true, true, None, SystemTime::now());
        let many: Vec<(String, u64)> = (0..50).map(|q| (format!("q{i}-{q}"), q)).collect();
        h.celery(
            SystemTime::now(),
            Some(many.iter().map(|(n, l)| (n.as_str(), *l))),
            1,
            (i as u64, 0),
        );
    }
    assert_eq!(sizes(&h), before);
    let i = h.lock();
    assert_eq!(i.check_events.len(), EVENTS);
    assert_eq!(i.worker_events.len(), EVENTS);
    assert_eq!(i.queues.len(), 10);
}

#[test]
fn workers_coming_and_going_never_push_a_check_change_out() {
    let h = History::new(Duration::from_secs(5), 0, [(checks(), "e".into())]);
    let down = report(Status::Unhealthy, None, "connection refused by h:1");
    h.published(&checks(), None, &down, true);
    for i in 0..500 {
        h.worker(&format!("w{i}"), i % 2 == 0, false, None, SystemTime::now());
    }
    let v = h.view(SystemTime::now());
    assert_eq!(v.events.len(), 1 + EVENTS);
    assert!(
        v.events
            .iter()
            .any(|e| e.subject == Subject::Checks(checks()) && e.to == "unhealthy")
    );
    assert!(
        v.events.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first"
    );
}

#[test]
fn the_generation_moves_only_with_a_write() {
    let h = History::new(Duration::from_secs(5), 0, [(checks(), "e".into())]);
    let healthy = report(Status::Healthy, Some(1), "");
    h.published(&checks(), None, &healthy, true);
    let g = h.generation();
    // A judgement between probes that changes nothing writes nothing.
    h.published(&checks(), Some(&healthy), &healthy, false);
    assert_eq!(h.generation(), g);
    // Another runner's checks, no change: nothing either.
    h.published(&["celery".to_string()], Some(&healthy), &healthy, true);
    assert_eq!(h.generation(), g);
    h.published(&checks(), Some(&healthy), &healthy, true);
    assert_eq!(h.generation(), g + 1);
}
