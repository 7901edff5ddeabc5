//! The status page at `/`: one HTML document rendered on the server from the snapshot and
//! the history. No script, no request to any origin (inline CSS allowed by its hash, inline
//! SVG, a `data:` favicon), refreshed by `<meta http-equiv="refresh">`. Every value from
//! the network (queue and task names, worker hostnames, causes) goes through [`esc`].
//! Status is written as a word with a shape (✔ ▲ ✖), never by colour alone.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::serve::health::{self, Details};
use crate::serve::history::{self, Point, Subject, View};
use crate::serve::snapshot::{self, Snapshot, Status};
use crate::text::{human, rfc3339};

/// The page's only style sheet, inline; the Content-Security-Policy allows it by hash.
const CSS: &str = include_str!("page.css");

/// The `Content-Security-Policy` of the page: nothing from anywhere, but its own inline
/// style (by hash) and a `data:` favicon.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    let hash = ring::digest::digest(&ring::digest::SHA256, CSS.as_bytes());
    format!(
        "default-src 'none'; style-src 'sha256-{}'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
});

/// Width and height of a sparkline, in SVG units; a series longer than the width is
/// reduced to its maximum per column (a spike stays visible).
const SPARK_W: usize = 240;
const SPARK_H: f64 = 36.0;
/// Workers listed at most (the rest counted).
const MAX_WORKERS_SHOWN: usize = 100;

/// What the page says besides the snapshot and the history.
pub struct Settings {
    pub probe_interval: Duration,
}

/// `text` with `& < > " '` escaped, for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A status as a word with a shape, for the eye and for a screen reader alike.
fn badge(status: &str) -> String {
    let (class, shape) = match status {
        "healthy" | "up" => ("ok", "✔"),
        "degraded" => ("warn", "▲"),
        _ => ("bad", "✖"),
    };
    format!("<span class=\"st {class}\"><span aria-hidden=\"true\">{shape}</span> {status}</span>")
}

/// The whole page.
pub fn render(
    snapshot: &Snapshot,
    view: &View,
    settings: &Settings,
    now: Instant,
    wall: SystemTime,
) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let refresh = settings.probe_interval.as_secs().clamp(2, 60);
    let overall = snapshot
        .checks()
        .iter()
        .map(|c| snapshot.verdict(c, now).status)
        .max()
        .unwrap_or(Status::Unhealthy);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{refresh}\">\
<link rel=\"icon\" href=\"data:,\">\
<title>{} · redis-celery-sidecar</title><style>{CSS}</style></head><body>\n",
        overall.as_str()
    );
    banner(&mut out, snapshot, overall, now);
    redis(&mut out, snapshot, view, now);
    celery(&mut out, snapshot, view, now);
    timeline(&mut out, view, wall);
    let _ = write!(
        out,
        "<footer><p>redis-celery-sidecar {} · up {} · probes every {} · page refreshed every {refresh}s at {}</p>\
<p><a href=\"/healthz\">/healthz</a> · <a href=\"/metrics\">/metrics</a> · \
<a href=\"/api/history\">/api/history</a> · <a href=\"/api/events\">/api/events</a> · \
docs: <code>docs/status-page.md</code> and <code>docs/endpoints.md</code> in the sidecar's source</p></footer>\n</body></html>\n",
        env!("CARGO_PKG_VERSION"),
        human(snapshot.uptime(now)),
        human(settings.probe_interval),
        esc(&rfc3339(wall)),
    );
    out
}

/// The overall status, and the cause and fix of every check that is not healthy.
fn banner(out: &mut String, snapshot: &Snapshot, overall: Status, now: Instant) {
    let _ = write!(
        out,
        "<header class=\"banner {}\"><h1>{}</h1>",
        class(overall),
        badge(overall.as_str())
    );
    let mut problems = String::new();
    for check in snapshot.checks() {
        let verdict = snapshot.verdict(check, now);
        if verdict.status == Status::Healthy {
            continue;
        }
        let report = snapshot.report(check);
        let fix = report
            .as_deref()
            .filter(|r| r.status == verdict.status)
            .and_then(snapshot::fix);
        let _ = write!(
            problems,
            "<li><strong>{}</strong> {}: {}",
            esc(&check.name),
            badge(verdict.status.as_str()),
            esc(verdict.reason.as_deref().unwrap_or("no reason given"))
        );
        if let Some(fix) = fix {
            let _ = write!(problems, "<br><span class=\"fix\">Fix: {}</span>", esc(fix));
        }
        problems.push_str("</li>");
    }
    if problems.is_empty() {
        out.push_str("<p>Every check is healthy.</p>");
    } else {
        let _ = write!(out, "<ul class=\"problems\">{problems}</ul>");
    }
    out.push_str("</header>\n");
}

fn class(status: Status) -> &'static str {
    match status {
        Status::Healthy => "ok",
        Status::Degraded => "warn",
        Status::Unhealthy => "bad",
    }
}

/// A card per Redis target: its status, roles, endpoint, PING now and over the hour,
/// clients, memory, evictions.
fn redis(out: &mut String, snapshot: &Snapshot, view: &View, now: Instant) {
    out.push_str("<section><h2>Redis</h2><div class=\"cards\">");
    for t in &view.targets {
        let Some(check) = t.checks.first().and_then(|c| snapshot.find(c)) else {
            continue;
        };
        let verdict = snapshot.verdict(check, now);
        let report = snapshot.report(check);
        let _ = write!(
            out,
            "<article class=\"card\"><h3>{} {}</h3><p class=\"endpoint\">{}</p><dl>",
            badge(verdict.status.as_str()),
            esc(&t.checks.join(", ")),
            esc(&t.endpoint)
        );
        let ping_now = report
            .as_deref()
            .filter(|r| r.status != Status::Unhealthy)
            .and_then(|r| r.latency);
        row(out, "PING now", &ping_now.map_or("—".into(), ms));
        let p50 = history::quantile(&t.ping_ms, 0.5);
        let p99 = history::quantile(&t.ping_ms, 0.99);
        row(
            out,
            "PING p50 / p99, last hour",
            &format!("{} / {}", opt_ms(p50), opt_ms(p99)),
        );
        if let Some(Details::Redis(d)) = report.as_deref().map(|r| &r.details)
            && let Some(info) = &d.info
        {
            row(
                out,
                "clients",
                &format!(
                    "{} of {} max",
                    num(info.connected_clients),
                    num(info.maxclients)
                ),
            );
            let max = match info.maxmemory_bytes {
                Some(0) => "no limit".to_string(),
                m => format!("{} max", bytes(m)),
            };
            row(
                out,
                "memory",
                &format!("{} of {max}", bytes(info.used_memory_bytes)),
            );
            row(out, "evicted keys", &num(info.evicted_keys));
            row(out, "rejected connections", &num(info.rejected_connections));
        }
        out.push_str("</dl>");
        spark(out, &t.ping_ms, "PING round trip, last hour, ms");
        if let Some(reason) = verdict
            .reason
            .as_deref()
            .filter(|_| verdict.status != Status::Healthy)
        {
            let _ = write!(out, "<p class=\"cause\">{}</p>", esc(reason));
        }
        out.push_str("</article>");
    }
    out.push_str("</div></section>\n");
}

/// Workers, queues, reservations and tasks per minute.
fn celery(out: &mut String, snapshot: &Snapshot, view: &View, now: Instant) {
    let Some(check) = snapshot.find(crate::config::CELERY_CHECK) else {
        return;
    };
    let verdict = snapshot.verdict(check, now);
    let report = snapshot.report(check);
    let celery = match report.as_deref().map(|r| &r.details) {
        Some(Details::Celery(c)) => Some(c),
        _ => None,
    };
    let _ = write!(
        out,
        "<section><h2>Celery {}</h2>",
        badge(verdict.status.as_str())
    );
    let Some(c) = celery else {
        out.push_str("<p>No Celery report yet.</p></section>\n");
        return;
    };
    let f = &c.fields;
    let _ = write!(
        out,
        "<p><strong>{}</strong> worker(s) alive (at least {} wanted).</p>",
        f.workers_alive, f.min_workers
    );
    spark(out, &view.workers_alive, "workers alive, last hour");
    if !f.workers.is_empty() {
        out.push_str(
            "<div class=\"scroll\"><table><caption>Workers</caption><thead><tr><th>worker</th><th>state</th><th>last heartbeat</th><th>active</th><th>processed</th></tr></thead><tbody>",
        );
        for w in f.workers.iter().take(MAX_WORKERS_SHOWN) {
            let _ = write!(
                out,
                "<tr><td class=\"name\">{}</td><td>{}</td><td>{} ago</td><td>{}</td><td>{}</td></tr>",
                esc(&w.hostname),
                badge(if w.alive { "up" } else { "down" }),
                human(Duration::from_secs_f64(w.heartbeat_age_seconds.max(0.0))),
                w.active,
                w.processed
            );
        }
        out.push_str("</tbody></table></div>");
        if f.workers.len() > MAX_WORKERS_SHOWN {
            let _ = write!(
                out,
                "<p>{} more workers in <a href=\"/healthz\">/healthz</a>.</p>",
                f.workers.len() - MAX_WORKERS_SHOWN
            );
        }
    }
    queues(out, view, &f.queues);
    if let Some(r) = &c.details.reservations {
        let _ = write!(
            out,
            "<p>Reservations: <strong>{}</strong> unacked (oldest {}), <strong>{}</strong> orphaned; visibility timeout {}.</p>",
            r.unacked,
            r.oldest_age_seconds
                .map_or("—".to_string(), |s| human(Duration::from_secs_f64(
                    s.max(0.0)
                ))),
            r.orphaned,
            human(Duration::from_secs_f64(
                r.visibility_timeout_seconds.max(0.0)
            ))
        );
    }
    tasks(out, &view.minutes, view.now);
    out.push_str("</section>\n");
}

/// The longest queues: length, oldest waiting, and a sparkline of the length.
fn queues(out: &mut String, view: &View, all: &RawValue) {
    // The history keeps names cut to MAX_TEXT bytes; the snapshot has them whole.
    let (total, briefs) = health::queue_briefs(all, view.queues.len(), |name| {
        let name = history::cut_str(name);
        view.queues.iter().position(|q| q.name == name)
    });
    if view.queues.is_empty() {
        let _ = write!(out, "<p>{total} queue(s) watched.</p>");
        return;
    }
    let caption = if total == 0 {
        format!(
            "Queues: the broker cannot be read now; the last hour of the {} longest",
            view.queues.len()
        )
    } else {
        format!(
            "Queues: the {} longest of {total} watched",
            view.queues.len()
        )
    };
    let _ = write!(
        out,
        "<div class=\"scroll\"><table><caption>{caption}</caption><thead><tr><th>queue</th><th>length</th><th>oldest waiting</th><th>length, last hour</th></tr></thead><tbody>"
    );
    for (q, brief) in view.queues.iter().zip(briefs) {
        let brief = brief.unwrap_or_default();
        let length = brief.length.map_or("—".to_string(), |n| n.to_string());
        let oldest = brief.oldest_age_seconds.map_or("—".to_string(), |s| {
            human(Duration::from_secs_f64(s.max(0.0)))
        });
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td>{length}</td><td>{oldest}</td><td>",
            esc(&q.name)
        );
        spark(out, &q.points, "queue length, last hour");
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table></div>");
}

/// Tasks succeeded and failed per minute over the hour: two rows of bars, each minute at
/// its place in the hour (a minute without a probe is a gap), and the totals.
fn tasks(out: &mut String, minutes: &[history::Minute], now_ms: u64) {
    let (s, f) = minutes
        .iter()
        .fold((0, 0), |(s, f), m| (s + m.succeeded, f + m.failed));
    let _ = write!(
        out,
        "<p>Tasks heard in the last hour: <strong>{s}</strong> succeeded, <strong>{f}</strong> failed (per minute below; successes up, failures down).</p>"
    );
    let peak = minutes
        .iter()
        .map(|m| m.succeeded.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let w = 4.0;
    let half = 30.0;
    // The minute under way is the last column, 60 minutes before it the first.
    let last = now_ms / 60_000;
    let _ = write!(
        out,
        "<svg class=\"bars\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"tasks per minute: {s} succeeded, {f} failed\"><title>tasks per minute</title><line x1=\"0\" x2=\"{0}\" y1=\"{half}\" y2=\"{half}\" class=\"axis\"/>",
        w * 61.0,
        2.0 * half
    );
    for m in minutes {
        let Some(back) = last.checked_sub(m.start / 60).filter(|b| *b <= 60) else {
            continue;
        };
        let x = (60 - back) as f64 * w;
        let up = m.succeeded as f64 / peak * (half - 1.0);
        let down = m.failed as f64 / peak * (half - 1.0);
        if m.succeeded > 0 {
            let _ = write!(
                out,
                "<rect class=\"good\" x=\"{x}\" y=\"{:.1}\" width=\"3\" height=\"{up:.1}\"><title>{} succeeded</title></rect>",
                half - up,
                m.succeeded
            );
        }
        if m.failed > 0 {
            let _ = write!(
                out,
                "<rect class=\"fail\" x=\"{x}\" y=\"{half}\" width=\"3\" height=\"{down:.1}\"><title>{} failed</title></rect>",
                m.failed
            );
        }
    }
    out.push_str("</svg>");
}

/// The last state changes, newest first.
fn timeline(out: &mut String, view: &View, wall: SystemTime) {
    let _ = write!(
        out,
        "<section><h2>Timeline</h2><p>The last {0} changes of checks and the last {0} of workers, newest first (kept in memory since start).</p>",
        history::EVENTS
    );
    if view.events.is_empty() {
        out.push_str("<p>Nothing has changed yet.</p></section>\n");
        return;
    }
    out.push_str("<div class=\"scroll\"><table class=\"timeline\"><thead><tr><th>when (UTC)</th><th>what</th><th>change</th><th>why</th></tr></thead><tbody>");
    for e in &view.events {
        let ago = wall.duration_since(e.at).unwrap_or_default();
        let when = rfc3339(e.at);
        let what = match &e.subject {
            Subject::Checks(c) => esc(&c.join(", ")),
            Subject::Worker(w) => format!("worker {}", esc(w)),
        };
        let from = e.from.map_or("—".to_string(), badge);
        let mut why = e
            .reason
            .map_or(String::new(), |r| format!("<code>{r}</code> "));
        if let Some(s) = &e.sentence {
            why.push_str(&esc(s));
        }
        if let Some(fix) = &e.fix {
            let _ = write!(why, "<br><span class=\"fix\">Fix: {}</span>", esc(fix));
        }
        let _ = write!(
            out,
            "<tr><td><time datetime=\"{when}\">{}</time><br><small>{} ago</small></td><td class=\"name\">{what}</td><td>{from} → {}</td><td>{why}</td></tr>",
            esc(&when[..19.min(when.len())].replace('T', " ")),
            human(ago),
            badge(e.to)
        );
    }
    out.push_str("</tbody></table></div></section>\n");
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<dt>{name}</dt><dd>{}</dd>", esc(value));
}

/// An inline SVG line of a series, with a mark below it where a probe failed and a dot
/// for a point that stands alone.
fn spark(out: &mut String, points: &[Point], label: &str) {
    let columns = columns(points);
    if columns.is_empty() {
        let _ = write!(out, "<p class=\"nodata\">{label}: no data yet</p>");
        return;
    }
    let peak = columns
        .iter()
        .filter_map(|c| c.value)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = SPARK_W as f64 / columns.len().max(2).saturating_sub(1) as f64;
    let _ = write!(
        out,
        "<svg class=\"spark\" viewBox=\"0 0 {SPARK_W} {}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{label}, peak {}\"><title>{label}, peak {}</title>",
        SPARK_H + 4.0,
        fmt_num(peak),
        fmt_num(peak)
    );
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, out: &mut String| {
        match run.as_slice() {
            [] => {}
            [(x, y)] => {
                let _ = write!(
                    out,
                    "<rect class=\"dot\" x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"2\"/>",
                    x - 1.0,
                    y - 1.0
                );
            }
            _ => {
                out.push_str("<polyline class=\"line\" points=\"");
                for (x, y) in run.iter() {
                    let _ = write!(out, "{x:.1},{y:.1} ");
                }
                out.push_str("\"/>");
            }
        }
        run.clear();
    };
    for (i, c) in columns.iter().enumerate() {
        let x = i as f64 * step;
        if c.failed {
            let _ = write!(
                out,
                "<rect class=\"fail\" x=\"{x:.1}\" y=\"{SPARK_H}\" width=\"2\" height=\"4\"/>"
            );
        }
        match c.value {
            Some(v) => run.push((x, SPARK_H - v / peak * (SPARK_H - 2.0))),
            None => flush(&mut run, out),
        }
    }
    flush(&mut run, out);
    out.push_str("</svg>");
}

/// One column of a sparkline: the largest value of its points, and whether any failed.
struct Column {
    value: Option<f64>,
    failed: bool,
}

/// The series reduced to at most [`SPARK_W`] columns.
fn columns(points: &[Point]) -> Vec<Column> {
    let per = points.len().div_ceil(SPARK_W).max(1);
    points
        .chunks(per)
        .map(|c| Column {
            value: c.iter().filter_map(|p| p.value).reduce(f64::max),
            failed: c.iter().any(|p| p.value.is_none()),
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("—".to_string(), |v| format!("{v:.2} ms"))
}

fn num(v: Option<u64>) -> String {
    v.map_or("—".to_string(), |v| v.to_string())
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn bytes(v: Option<u64>) -> String {
    v.map_or("—".to_string(), |b| {
        if b >= 1 << 30 {
            format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
        } else {
            format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
        }
    })
}

#[cfg(test)]
mod tests;
