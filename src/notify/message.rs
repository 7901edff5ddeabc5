//! The bodies sent, per format: a few lines of text for Slack (`text`) and Discord
//! (`content`, at most 2,000 characters), the transition records for JSON.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::debounce::Notice;
use super::event::EventDoc;
use crate::config::notify::Format;
use crate::text::human;

/// Discord refuses a longer `content`.
const DISCORD_MAX: usize = 2000;

/// One line per change: a mark (never colour alone), who, what, why and the fix.
pub fn line(n: &Notice) -> String {
    let e = &n.event;
    let who = e.subject.named();
    let mark = match e.to {
        "unhealthy" | "down" => "🔴",
        "degraded" => "🟠",
        _ => "✅",
    };
    let mut s = if e.is_bad() {
        let mut s = format!("{mark} {who} is {}", e.to);
        if let Some(sentence) = &e.sentence {
            s.push_str(": ");
            s.push_str(sentence);
        }
        if let Some(fix) = &e.fix {
            s.push_str(". Fix: ");
            s.push_str(fix);
        }
        s
    } else {
        let was = e.from.map(|f| format!(", was {f}")).unwrap_or_default();
        match n.lasted {
            Some(d) => format!("{mark} {who} is {} again after {}{was}", e.to, human(d)),
            None => format!("{mark} {who} is {}{was}", e.to),
        }
    };
    s.truncate(crate::text::cut_at(&s, 1000).len());
    s
}

/// The text of a group: a heading naming the sidecar's service, then a line per change.
pub fn text(notices: &[Notice], service: &str) -> String {
    let bad = notices.iter().filter(|n| n.event.is_bad()).count();
    let heading = match (bad, notices.len() - bad) {
        (0, _) => "recovered",
        (_, 0) => "needs attention",
        _ => "changed",
    };
    let mut out = format!("{service}: {heading}");
    for n in notices {
        out.push('\n');
        out.push_str(&line(n));
    }
    out
}

#[derive(Serialize)]
struct JsonNotice<'a> {
    #[serde(flatten)]
    event: EventDoc<'a>,
    lasted_seconds: Option<f64>,
}

/// The body of a group in `format`, as JSON text.
pub fn body(format: Format, notices: &[Notice], service: &str) -> String {
    let v = match format {
        Format::Slack => json!({ "text": text(notices, service) }),
        Format::Discord => {
            let mut t = text(notices, service);
            if t.chars().count() > DISCORD_MAX {
                t = t.chars().take(DISCORD_MAX - 1).collect::<String>() + "…";
            }
            json!({ "content": t })
        }
        Format::Json => json!({
            "service": service,
            "version": env!("CARGO_PKG_VERSION"),
            "events": notices.iter().map(|n| JsonNotice {
                event: n.event.doc(),
                lasted_seconds: n.lasted.map(|d: Duration| d.as_secs_f64()),
            }).collect::<Vec<_>>(),
        }),
    };
    v.to_string()
}

/// The message of `check --notify-test`.
pub fn test_body(format: Format, service: &str) -> String {
    let t = format!(
        "{service}: a test message from `check --notify-test`; state changes will look like this."
    );
    match format {
        Format::Slack => json!({ "text": t }),
        Format::Discord => json!({ "content": t }),
        Format::Json => json!({ "service": service, "version": env!("CARGO_PKG_VERSION"), "test": true, "events": [] }),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, Subject};
    use std::time::SystemTime;

    fn notice(to: &'static str, lasted: Option<u64>) -> Notice {
        Notice {
            event: Event {
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
                subject: Subject::Checks(vec!["redis:cache".into(), "redis:broker".into()]),
                from: Some(if to == "healthy" {
                    "unhealthy"
                } else {
                    "healthy"
                }),
                to,
                reason: (to == "unhealthy").then_some("connect"),
                sentence: (to == "unhealthy")
                    .then(|| "connection refused by 127.0.0.1:6390".into()),
                fix: (to == "unhealthy").then(|| "start Redis".into()),
            },
            lasted: lasted.map(Duration::from_secs),
        }
    }

    #[test]
    fn slack_discord_and_json_bodies() {
        let down = [notice("unhealthy", None)];
        let v: serde_json::Value =
            serde_json::from_str(&body(Format::Slack, &down, "web")).unwrap();
        assert_eq!(
            v["text"],
            "web: needs attention\n🔴 redis:cache, redis:broker is unhealthy: connection refused by 127.0.0.1:6390. Fix: start Redis"
        );
        let up = [notice("healthy", Some(75))];
        let v: serde_json::Value =
            serde_json::from_str(&body(Format::Discord, &up, "web")).unwrap();
        assert_eq!(
            v["content"],
            "web: recovered\n✅ redis:cache, redis:broker is healthy again after 1m15s, was unhealthy"
        );
        let many: Vec<Notice> = (0..100).map(|_| notice("unhealthy", None)).collect();
        let v: serde_json::Value =
            serde_json::from_str(&body(Format::Discord, &many, "web")).unwrap();
        assert_eq!(v["content"].as_str().unwrap().chars().count(), DISCORD_MAX);
        let v: serde_json::Value = serde_json::from_str(&body(Format::Json, &up, "web")).unwrap();
        assert_eq!(v["events"][0]["kind"], "check");
        assert_eq!(v["events"][0]["checks"][1], "redis:broker");
        assert_eq!(v["events"][0]["to"], "healthy");
        assert_eq!(v["events"][0]["lasted_seconds"], 75.0);
        assert_eq!(v["events"][0]["at"], "2026-11-30T00:53:20.000Z");
    }
}
