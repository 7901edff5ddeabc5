use std::time::Duration;

use crate::config::Config;
use crate::config::cli::Settings;
use crate::config::tests::settings;

#[test]
fn notification_receivers_formats_and_delay() {
    let c = Config::from_settings(&Settings::default()).unwrap();
    assert!(c.notify.receivers.is_empty());
    assert_eq!(
        c.notify.after,
        Duration::from_secs(10),
        "two probe intervals"
    );
    let c = Config::from_settings(&settings(&[
        (
            "SIDECAR_NOTIFY_URL",
            "https://hooks.slack.com/services/T0/B0/s3cr3t, https://discord.com/api/webhooks/1/t0k3n,http://10.0.0.5:8080/hook?key=s3cr3t",
        ),
        ("SIDECAR_NOTIFY_AFTER", "30s"),
    ]))
    .unwrap();
    let got: Vec<(String, &str)> = c
        .notify
        .receivers
        .iter()
        .map(|r| (r.shown(), r.format.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("https://hooks.slack.com/***".to_string(), "slack"),
            ("https://discord.com/***".to_string(), "discord"),
            ("http://10.0.0.5:8080/***".to_string(), "json"),
        ]
    );
    assert_eq!(c.notify.after, Duration::from_secs(30));
    let described = c.describe();
    assert!(
        described.contains("https://hooks.slack.com/*** (slack)"),
        "{described}"
    );
    assert!(
        !described.contains("s3cr3t") && !described.contains("t0k3n"),
        "{described}"
    );
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let c = Config::from_settings(&settings(&[
        ("SIDECAR_NOTIFY_URL", "https://hooks.slack.com/services/x"),
        ("SIDECAR_NOTIFY_FORMAT", "JSON"),
    ]))
    .unwrap();
    assert_eq!(c.notify.receivers[0].format.as_str(), "json");
    for (pairs, said) in [
        (
            vec![(
                "SIDECAR_NOTIFY_URL",
                "https://ok.example/a,ftp://s3cr3t.example/x",
            )],
            "SIDECAR_NOTIFY_URL (--notify-url): URL 2 of the list is not an http:// or https:// URL with a host",
        ),
        (
            vec![("SIDECAR_NOTIFY_URL", "hooks.slack.com/s3cr3t")],
            "SIDECAR_NOTIFY_URL (--notify-url): URL 1 of the list is not a URL",
        ),
        (
            vec![("SIDECAR_NOTIFY_FORMAT", "teams")],
            "SIDECAR_NOTIFY_FORMAT (--notify-format): \"teams\" is not slack, discord or json",
        ),
        (
            vec![("SIDECAR_NOTIFY_AFTER", "2h")],
            "SIDECAR_NOTIFY_AFTER (--notify-after): \"2h\" is not a duration from 0s to 1h",
        ),
    ] {
        let e = Config::from_settings(&settings(&pairs))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(said), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
