use super::*;
use crate::config::REDBEAT_PREFIX;

/// The hash fields RedBeat wrote, from the capture (redis-cli quoting undone).
fn captured(entry: &str, field: usize) -> Vec<u8> {
    let text = include_str!("../../../tests/fixtures/celery/42-redbeat-schedule-and-lock.txt");
    let after = text
        .split(&format!("HGETALL redbeat:{entry}\n"))
        .nth(1)
        .expect("the entry is in the capture");
    let line = after.lines().nth(field).expect("the field's line");
    let quoted = line.split_once(") \"").expect("a quoted value").1;
    quoted
        .strip_suffix('"')
        .expect("closing quote")
        .replace("\\\"", "\"")
        .into_bytes()
}

fn bulk(b: impl Into<Vec<u8>>) -> Value {
    Value::BulkString(b.into())
}

fn fields(entry: &str) -> Value {
    Value::Array(vec![bulk(captured(entry, 1)), bulk(captured(entry, 3))])
}

#[test]
fn the_captured_schedule_and_entries_are_read() {
    let rb = RedBeat::new(REDBEAT_PREFIX);
    let mut pipe = redis::pipe();
    rb.ask_schedule(&mut pipe);
    assert_eq!(pipe.len(), 3);
    let mut first = vec![
        Value::Array(vec![
            bulk("redbeat:every-2s"),
            bulk("1796155911"),
            bulk("redbeat:celery.backend_cleanup"),
            bulk("1796183999"),
        ]),
        Value::Int(2),
        Value::Int(24616),
    ]
    .into_iter();
    let schedule = rb.read_schedule(&mut first).expect("a schedule");
    let mut pipe = redis::pipe();
    RedBeat::ask_entries(&schedule, &mut pipe);
    assert_eq!(pipe.len(), 2);
    let mut second = vec![fields("every-2s"), fields("celery.backend_cleanup")].into_iter();
    let beat = rb.read(schedule, &mut second);
    assert_eq!(beat.source, Source::Redbeat);
    assert_eq!(beat.lock, Some(Duration::from_millis(24616)));
    assert_eq!(beat.left_out, 0);
    let [every, cleanup] = &beat.entries[..] else {
        panic!("two entries: {beat:?}");
    };
    assert_eq!(every.name, "every-2s");
    assert_eq!(every.every, Some(Duration::from_secs(2)));
    // 2026-12-01 20:11:49.930004 UTC
    assert!((every.last_run.unwrap() - 1_796_155_909.930_004).abs() < 1e-5);
    assert_eq!(every.due, Some(1_796_155_911.0));
    // A crontab: its interval is the gap from the last run to the next due.
    assert_eq!(cleanup.name, "celery.backend_cleanup");
    let gap = 1_796_183_999.0 - 1_796_155_905.915_703;
    assert!((cleanup.every.unwrap().as_secs_f64() - gap).abs() < 1e-3);

    // Every 2 s: overdue 10 s (MIN_GRACE) past its due time, not before.
    assert_eq!(every.overdue(1_796_155_911.0 + 9.9), None);
    let late = every.overdue(1_796_155_911.0 + 10.5).unwrap();
    assert!((late.as_secs_f64() - 0.5).abs() < 1e-6);
    let overdue = beat.overdue(1_796_155_911.0 + 60.0);
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].0.name, "every-2s");
}

#[test]
fn no_schedule_a_lock_not_held_a_gone_hash_and_a_disabled_entry() {
    let rb = RedBeat::new("app:");
    assert_eq!(rb.schedule_key(), "app::schedule");
    assert_eq!(rb.lock_key(), "app::lock");
    let mut none = vec![Value::Array(vec![]), Value::Int(0), Value::Int(-2)].into_iter();
    assert_eq!(rb.read_schedule(&mut none), None);
    // The key is something else than a sorted set: errors, not counts.
    let mut wrong = vec![Value::Okay, Value::Okay, Value::Int(-2)].into_iter();
    assert_eq!(rb.read_schedule(&mut wrong), None);

    let mut first = vec![
        Value::Array(vec![
            bulk("app:gone"),
            bulk("100"),
            bulk("app:off"),
            bulk("200"),
        ]),
        Value::Int(250),
        Value::Int(-2),
    ]
    .into_iter();
    let schedule = rb.read_schedule(&mut first).unwrap();
    let off =
        r#"{"name": "off", "schedule": {"__type__": "interval", "every": 5.0}, "enabled": false}"#;
    let mut second = vec![
        Value::Array(vec![Value::Nil, Value::Nil]),
        Value::Array(vec![bulk(off), Value::Nil]),
    ]
    .into_iter();
    let beat = rb.read(schedule, &mut second);
    assert_eq!(beat.lock, None);
    assert_eq!(beat.left_out, 248);
    assert_eq!(
        beat.entries,
        vec![Periodic {
            name: "gone".into(),
            last_run: None,
            due: Some(100.0),
            every: None,
        }]
    );
    // Nothing tells its interval: five minutes of grace.
    assert_eq!(beat.entries[0].overdue(399.0), None);
    assert!(beat.entries[0].overdue(401.0).is_some());
}

#[test]
fn datetimes_in_utc_at_an_offset_or_in_a_named_zone() {
    let at = |tz: Json| {
        datetime(
            &serde_json::json!({"__type__": "datetime", "year": 2026, "month": 12,
            "day": 1, "hour": 21, "minute": 0, "second": 0, "microsecond": 500000, "timezone": tz}),
        )
    };
    let utc = 1_796_158_800.5;
    assert_eq!(at("UTC".into()), Some(utc));
    assert_eq!(at(3600.0.into()), Some(utc - 3600.0));
    assert_eq!(at("Europe/Paris".into()), None);
    assert_eq!(datetime(&serde_json::json!({"__type__": "interval"})), None);
}

#[test]
fn expected_tasks_are_due_from_the_last_time_heard() {
    assert_eq!(Expected::new(vec![], 0.0).beat(), None);
    let mut e = Expected::new(
        vec![
            ("tasks.report".into(), Duration::from_secs(60)),
            ("tasks.tick".into(), Duration::from_secs(2)),
        ],
        1000.0,
    );
    e.heard("tasks.tick", 1005.0);
    e.heard("tasks.tick", 1004.0);
    e.heard("tasks.other", 1006.0);
    let beat = e.beat().unwrap();
    assert_eq!(beat.source, Source::Expected);
    let names: Vec<_> = beat.entries.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tasks.tick", "tasks.report"]);
    assert_eq!(beat.entries[0].last_run, Some(1005.0));
    assert_eq!(beat.entries[0].due, Some(1007.0));
    // Never heard: due one interval after the start, overdue one more later.
    assert_eq!(beat.entries[1].due, Some(1060.0));
    assert_eq!(beat.entries[1].overdue(1119.0), None);
    assert!(beat.entries[1].overdue(1121.0).is_some());
    let late: Vec<_> = beat
        .overdue(1121.0)
        .iter()
        .map(|(p, _)| p.name.clone())
        .collect();
    assert_eq!(late, ["tasks.tick", "tasks.report"]);
}
