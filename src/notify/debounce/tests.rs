use super::*;

fn ev(subject: Subject, from: Option<&'static str>, to: &'static str, at: u64) -> Event {
    Event {
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
        subject,
        from,
        to,
        reason: (to == "unhealthy").then_some("connect"),
        sentence: Some(format!("it is {to}")),
        fix: None,
    }
}

fn check(name: &str) -> Subject {
    Subject::Checks(vec![name.to_string()])
}

#[test]
fn a_change_is_sent_once_it_held_and_a_recovery_says_how_long() {
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let mut d = Debounce::new(Duration::from_secs(2), Duration::from_secs(1));
    d.event(ev(check("redis:cache"), None, "healthy", 0), s(0));
    assert_eq!(d.tick(s(5)), None, "a first healthy report is no news");
    d.event(
        ev(check("redis:cache"), Some("healthy"), "unhealthy", 10),
        s(10),
    );
    assert_eq!(d.tick(s(11)), None, "not held yet");
    // The celery check follows a probe later.
    d.event(ev(check("celery"), Some("healthy"), "unhealthy", 11), s(11));
    assert_eq!(d.tick(s(12)), None, "held, but the group's window is open");
    let sent = d.tick(s(13)).expect("one group");
    let named: Vec<_> = sent
        .iter()
        .map(|n| (n.event.subject.named(), n.event.to))
        .collect();
    assert_eq!(
        named,
        [
            ("redis:cache".to_string(), "unhealthy"),
            ("celery".to_string(), "unhealthy")
        ]
    );
    assert_eq!(sent[0].event.from, Some("healthy"));
    assert_eq!(d.tick(s(20)), None, "sent once");

    d.event(
        ev(check("redis:cache"), Some("unhealthy"), "healthy", 40),
        s(40),
    );
    d.event(ev(check("celery"), Some("unhealthy"), "healthy", 40), s(40));
    assert_eq!(d.tick(s(42)), None, "held; the group's window opens");
    let sent = d.tick(s(43)).expect("the recovery");
    assert_eq!(sent.len(), 2);
    let mut lasted: Vec<_> = sent
        .iter()
        .map(|n| (n.event.subject.named(), n.lasted, n.event.from))
        .collect();
    lasted.sort();
    assert_eq!(
        lasted,
        [
            (
                "celery".to_string(),
                Some(Duration::from_secs(29)),
                Some("unhealthy")
            ),
            (
                "redis:cache".to_string(),
                Some(Duration::from_secs(30)),
                Some("unhealthy")
            ),
        ]
    );
}

#[test]
fn flapping_faster_than_the_delay_sends_nothing() {
    let t0 = Instant::now();
    let mut d = Debounce::new(Duration::from_secs(2), Duration::from_secs(1));
    d.event(ev(check("redis:cache"), None, "healthy", 0), t0);
    for i in 1..30u64 {
        let to = if i % 2 == 1 { "unhealthy" } else { "healthy" };
        let at = t0 + Duration::from_secs(i);
        d.event(ev(check("redis:cache"), None, to, i), at);
        assert_eq!(d.tick(at + Duration::from_millis(900)), None, "{i}");
    }
}

#[test]
fn workers_first_heartbeats_are_not_news_and_a_first_bad_report_is() {
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let mut d = Debounce::new(Duration::from_secs(2), Duration::ZERO);
    let w = Subject::Worker("w1@app".into());
    d.event(ev(w.clone(), None, "up", 0), s(0));
    d.event(ev(check("redis:cache"), None, "unhealthy", 0), s(0));
    let sent = d.tick(s(2)).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].event.from, sent[0].event.to), (None, "unhealthy"));
    d.event(ev(w.clone(), Some("up"), "down", 5), s(5));
    let sent = d.tick(s(7)).unwrap();
    assert_eq!(sent[0].event.subject, w);
    d.event(ev(w.clone(), Some("down"), "up", 9), s(9));
    let sent = d.tick(s(11)).unwrap();
    assert_eq!(sent[0].lasted, Some(Duration::from_secs(4)));
    // Degraded then unhealthy: one incident, from the first bad state.
    d.event(ev(check("celery"), None, "healthy", 0), s(0));
    d.event(ev(check("celery"), Some("healthy"), "degraded", 20), s(20));
    assert!(d.tick(s(22)).is_some());
    d.event(
        ev(check("celery"), Some("degraded"), "unhealthy", 23),
        s(23),
    );
    assert!(d.tick(s(25)).is_some());
    d.event(ev(check("celery"), Some("unhealthy"), "healthy", 30), s(30));
    assert_eq!(
        d.tick(s(32)).unwrap()[0].lasted,
        Some(Duration::from_secs(10))
    );
}

#[test]
fn a_first_report_that_settles_to_healthy_is_no_news() {
    let t0 = Instant::now();
    let s = |secs: u64| t0 + Duration::from_secs(secs);
    let mut d = Debounce::new(Duration::from_secs(2), Duration::ZERO);
    d.event(ev(check("celery"), None, "degraded", 0), s(0));
    d.event(ev(check("celery"), Some("degraded"), "healthy", 1), s(1));
    assert_eq!(d.tick(s(5)), None);
    d.event(ev(check("celery"), Some("healthy"), "unhealthy", 6), s(6));
    assert_eq!(d.tick(s(8)).unwrap()[0].event.from, Some("healthy"));
}
