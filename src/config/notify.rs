//! Notifications: where state changes are POSTed (`SIDECAR_NOTIFY_URL`, a secret: a Slack
//! or Discord webhook URL is a credential), in which format, and after how long a change
//! must have held.

use std::fmt;
use std::time::Duration;

use super::{ConfigError, invalid, non_empty, vars};
use crate::config::cli::Settings;

/// Receivers at most.
pub const MAX_RECEIVERS: usize = 10;

/// What a receiver is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
    /// A Discord webhook: `{"content": ...}`.
    Discord,
    /// The transition records, as `/api/events` writes them.
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Slack => "slack",
            Format::Discord => "discord",
            Format::Json => "json",
        }
    }

    /// From the URL's host: Slack's and Discord's webhook hosts, else JSON.
    pub fn infer(host: &str) -> Format {
        let host = host.to_ascii_lowercase();
        let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if under("slack.com") {
            Format::Slack
        } else if under("discord.com") || under("discordapp.com") {
            Format::Discord
        } else {
            Format::Json
        }
    }
}

/// One receiver. Its URL is only ever shown as [`Receiver::shown`]: the scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub struct Receiver {
    url: url::Url,
    pub format: Format,
}

impl Receiver {
    /// The whole URL, to connect and send to; never to be written anywhere.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// `https://hooks.slack.com/***`: what logs, `config` and `check` name it by.
    pub fn shown(&self) -> String {
        let port = self.url.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{port}/***",
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        )
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receiver({}, {})", self.shown(), self.format.as_str())
    }
}

/// The notification settings; `receivers` empty: nothing is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    pub receivers: Vec<Receiver>,
    /// How long a change must hold before it is sent.
    pub after: Duration,
    /// Roots trusted beside the built-in ones (`SSL_CERT_FILE`, `SSL_CERT_DIR`).
    pub roots: Vec<crate::redis::target::Roots>,
}

pub(super) fn notify(s: &Settings, probe_interval: Duration) -> Result<NotifyConfig, ConfigError> {
    let format = match non_empty(vars::NOTIFY_FORMAT, &s.notify_format)? {
        None => None,
        Some(f) => Some(match f.to_ascii_lowercase().as_str() {
            "slack" => Format::Slack,
            "discord" => Format::Discord,
            "json" => Format::Json,
            _ => {
                return Err(invalid(
                    vars::NOTIFY_FORMAT,
                    Some(f),
                    "is not slack, discord or json",
                ));
            }
        }),
    };
    let mut receivers = Vec::new();
    if let Some(text) = non_empty(vars::NOTIFY_URL, &s.notify_url)? {
        for (i, item) in text
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .enumerate()
        {
            // The URL is a secret: the error names which one, never its text.
            let which = format!("URL {} of the list", i + 1);
            let url = url::Url::parse(item)
                .map_err(|_| invalid(vars::NOTIFY_URL, None, &format!("{which} is not a URL")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty)
            {
                return Err(invalid(
                    vars::NOTIFY_URL,
                    None,
                    &format!("{which} is not an http:// or https:// URL with a host"),
                ));
            }
            let format = format.unwrap_or_else(|| Format::infer(url.host_str().unwrap_or("")));
            receivers.push(Receiver { url, format });
        }
        if receivers.len() > MAX_RECEIVERS {
            return Err(invalid(
                vars::NOTIFY_URL,
                None,
                &format!("names more than {MAX_RECEIVERS} URLs"),
            ));
        }
    }
    let after = match non_empty(vars::NOTIFY_AFTER, &s.notify_after)? {
        None => probe_interval * 2,
        Some(text) => match crate::text::parse_duration(text) {
            Some(d) if d <= Duration::from_secs(3600) => d,
            _ => {
                return Err(invalid(
                    vars::NOTIFY_AFTER,
                    Some(text),
                    "is not a duration from 0s to 1h, such as 10s",
                ));
            }
        },
    };
    let roots = super::targets::extra_roots(s)?;
    Ok(NotifyConfig {
        receivers,
        after,
        roots,
    })
}

#[cfg(test)]
mod tests;
