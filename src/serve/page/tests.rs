use super::*;
use std::sync::Arc;

use crate::redis::failure::{Failure, Reason};
use crate::redis::info::Info;
use crate::serve::health::{
    CeleryDetails, CeleryFields, CeleryReport, EventsDoc, PoolDoc, RedisDetails, RunningDoc,
    WorkerDoc,
};
use crate::serve::history::History;
use crate::serve::snapshot::Report;

const HOSTILE: &str = "<script>alert(1)</script>";

fn report(status: Status, details: Details) -> Arc<Report> {
    Arc::new(Report {
        status,
        finished: Instant::now(),
        finished_at: SystemTime::now(),
        latency: Some(Duration::from_micros(420)),
        last_success: None,
        consecutive_failures: 0,
        error: (status == Status::Unhealthy)
            .then(|| Failure::new(Reason::Auth, "WRONGPASS: invalid username-password pair")),
        fix: (status == Status::Unhealthy).then(|| "set REDIS_URL's password".to_string()),
        warnings: vec![],
        details,
    })
}

fn celery_details() -> Details {
    let queues = serde_json::json!({ HOSTILE: {"length": 3, "oldest_age_seconds": 75.0} });
    Details::Celery(Box::new(CeleryReport {
        details: CeleryDetails {
            events: EventsDoc {
                subscribed: true,
                since_seconds: Some(1.0),
                error: None,
                received: 0,
                decode_errors: 0,
                untracked_workers: 0,
                reconnects: 0,
                tasks_remembered: 0,
            },
            running: RunningDoc {
                tasks: 0,
                oldest: vec![],
            },
            lost: vec![],
            reservations: None,
            queues_left_out: None,
            kombu: None,
            beat: None,
        },
        fields: CeleryFields {
            workers_alive: 1,
            min_workers: 1,
            workers: vec![WorkerDoc {
                hostname: "<img src=x onerror=alert(2)>@host".into(),
                alive: true,
                active: 2,
                processed: 40,
                heartbeat_age_seconds: 0.5,
                freq: 2.0,
                pid: Some(7),
                sw_ver: None,
            }],
            queues: Arc::from(serde_json::value::to_raw_value(&queues).unwrap()),
            unacked: Some(0),
        },
    }))
}

/// A snapshot of a failing cache, a healthy broker and Celery, and the history behind it.
fn page() -> String {
    let mut snap = Snapshot::new(&[], Duration::from_secs(5));
    let cache = snap.register(
        "redis:cache",
        Some("redis://default:***@cache:6379/0".into()),
    );
    let broker = snap.register("redis:broker", Some("redis://broker:6379/0".into()));
    let celery = snap.register("celery", Some("redis://broker:6379/0".into()));
    let info = Info {
        connected_clients: Some(7),
        maxclients: Some(10000),
        used_memory_bytes: Some(3 << 20),
        maxmemory_bytes: Some(0),
        evicted_keys: Some(0),
        ..Info::default()
    };
    cache.send_replace(Some(report(Status::Unhealthy, Details::None)));
    let broker_report = report(
        Status::Healthy,
        Details::Redis(Box::new(RedisDetails {
            pool: PoolDoc {
                connections: 1,
                idle: 1,
                in_use: 0,
            },
            info: Some(info),
            sentinel: None,
            cluster: None,
            keyspace: None,
        })),
    );
    broker.send_replace(Some(broker_report.clone()));
    celery.send_replace(Some(report(Status::Healthy, celery_details())));
    let history = History::new(
        Duration::from_secs(5),
        10,
        [
            (
                vec!["redis:cache".to_string()],
                "redis://default:***@cache:6379/0".into(),
            ),
            (
                vec!["redis:broker".to_string()],
                "redis://broker:6379/0".into(),
            ),
        ],
    );
    history.published(&["redis:broker".to_string()], None, &broker_report, true);
    history.celery(
        SystemTime::now(),
        Some([(HOSTILE, 3)].into_iter()),
        1,
        (5, 1),
    );
    history.worker(
        "<b>w</b>",
        false,
        false,
        Some("no event <i>".into()),
        SystemTime::now(),
    );
    render(
        &snap,
        &history.view(SystemTime::now()),
        &Settings {
            probe_interval: Duration::from_secs(5),
        },
        Instant::now(),
        SystemTime::now(),
    )
}

#[test]
fn a_failed_probe_marks_its_column_and_a_lone_point_is_a_dot() {
    let p = |value| Point { at: 0, value };
    // 720 points in 240 columns: one failure among three points still marks its column.
    let mut points = vec![p(Some(1.0)); 720];
    points[4] = p(None);
    let cols = columns(&points);
    assert_eq!(cols.len(), SPARK_W);
    assert!(cols[1].failed && cols[1].value == Some(1.0));
    assert_eq!(cols.iter().filter(|c| c.failed).count(), 1);
    let mut out = String::new();
    spark(
        &mut out,
        &[p(Some(2.0)), p(None), p(Some(1.0)), p(Some(3.0))],
        "x",
    );
    assert_eq!(out.matches("class=\"dot\"").count(), 1, "{out}");
    assert_eq!(out.matches("<polyline").count(), 1, "{out}");
    assert_eq!(out.matches("class=\"fail\"").count(), 1, "{out}");
}

#[test]
fn text_is_escaped() {
    assert_eq!(
        esc(r#"<a href="x">'&'</a>"#),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

#[test]
fn names_from_the_network_render_as_text() {
    let page = page();
    for raw in ["<script", "<img", "<b>", "<i>"] {
        assert!(!page.contains(raw), "{raw} unescaped in the page");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;@host"));
    assert!(page.contains("worker &lt;b&gt;w&lt;/b&gt;"));
}

#[test]
fn the_banner_gives_each_cause_and_fix() {
    let page = page();
    assert!(page.contains("<title>unhealthy · redis-celery-sidecar</title>"));
    assert!(page.contains("<header class=\"banner bad\"><h1><span class=\"st bad\"><span aria-hidden=\"true\">✖</span> unhealthy</span></h1>"));
    assert!(page.contains("<strong>redis:cache</strong>"));
    assert!(page.contains("WRONGPASS: invalid username-password pair"));
    assert!(page.contains("Fix: set REDIS_URL&#39;s password"));
    assert!(
        !page.contains("<strong>redis:broker</strong>"),
        "a healthy check is not a problem"
    );
}

#[test]
fn the_figures_are_on_the_page() {
    let page = page();
    assert!(page.contains("<dt>clients</dt><dd>7 of 10000 max</dd>"));
    assert!(page.contains("<dt>memory</dt><dd>3.0 MiB of no limit</dd>"));
    assert!(page.contains("<dt>PING now</dt><dd>0.42 ms</dd>"));
    assert!(
        page.contains("0.42 ms / 0.42 ms"),
        "p50 / p99 over the history"
    );
    assert!(page.contains("1m15s"), "the oldest waiting age");
    assert!(page.contains("<strong>1</strong> worker(s) alive"));
    assert!(page.contains("redis://default:***@cache:6379/0"));
    assert!(page.contains("class=\"dot\""), "a sparkline of one point");
}

#[test]
fn nothing_is_loaded_from_anywhere() {
    let page = page();
    for banned in [
        "<script",
        " style=",
        "src=\"http",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!page.contains(banned), "{banned} in the page");
    }
    // The policy allows exactly the style the page holds: its hash, taken from the page.
    use base64::Engine as _;
    let style = page
        .split("<style>")
        .nth(1)
        .unwrap()
        .split("</style>")
        .next()
        .unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
    let allowed = format!(
        "style-src 'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    );
    assert!(CSP.contains(&allowed), "{} vs {allowed}", *CSP);
    assert!(CSP.starts_with("default-src 'none';"));
    assert_eq!(page.matches("<style>").count(), 1);
    assert!(!CSS.contains("url("), "the style sheet loads nothing");
}
