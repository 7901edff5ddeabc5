//! URLs taken apart as Python's `urllib.parse` takes them apart (`urlsplit`, `unquote`,
//! `parse_qsl`), since redis-py, kombu and Celery all read their URLs with it: the same
//! text gives the same host, password and parameters here as in the app.

use std::borrow::Cow;

/// `urlsplit`: the scheme (lowercased; empty when there is none), and the raw, still
/// percent-encoded parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    pub scheme: String,
    /// The scheme as written, for libraries that compare it case-sensitively.
    pub raw_scheme: &'a str,
    pub netloc: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub fragment: &'a str,
}

/// Python's `scheme_chars`.
fn scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-.".contains(c)
}

/// Why `urlsplit` refuses a URL: a `[` or `]` that does not bracket an IPv6 address
/// (Python raises "Invalid IPv6 URL"; in practice an unencoded bracket in a password).
pub const BRACKETS: &str = "a [ or ] in the URL does not enclose an IPv6 address, so Python refuses the URL (Invalid IPv6 URL): percent-encode it in the password ([ as %5B, ] as %5D)";

pub fn split(url: &str) -> Split<'_> {
    let mut rest = url;
    let mut raw_scheme = "";
    if let Some(i) = url.find(':')
        && i > 0
        && url.as_bytes()[0].is_ascii_alphabetic()
        && url[..i].chars().all(scheme_char)
    {
        raw_scheme = &url[..i];
        rest = &url[i + 1..];
    }
    let mut netloc = "";
    if let Some(after) = rest.strip_prefix("//") {
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        netloc = &after[..end];
        rest = &after[end..];
    }
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    Split {
        scheme: raw_scheme.to_ascii_lowercase(),
        raw_scheme,
        netloc,
        path,
        query,
        fragment,
    }
}

impl Split<'_> {
    /// Python 3.11's check of the brackets in the network location: both or neither, and
    /// the first pair enclosing an IPv6 address (or an `IPvFuture` starting with `v`).
    pub fn check_brackets(&self) -> Result<(), &'static str> {
        let (open, close) = (self.netloc.contains('['), self.netloc.contains(']'));
        if open != close {
            return Err(BRACKETS);
        }
        if open {
            let inside = self.netloc.split_once('[').map_or("", |(_, r)| r);
            let host = inside.split_once(']').map_or(inside, |(h, _)| h);
            let host = host.split_once('%').map_or(host, |(h, _)| h);
            if !(host.starts_with('v') || host.parse::<std::net::Ipv6Addr>().is_ok()) {
                return Err(BRACKETS);
            }
        }
        Ok(())
    }

    /// `.username` and `.password`, still encoded: the user information is what comes before
    /// the last `@`, split at its first `:`. The password is `Some("")` for `user:@host`.
    pub fn userinfo(&self) -> (Option<&str>, Option<&str>) {
        match self.netloc.rsplit_once('@') {
            None => (None, None),
            Some((info, _)) => match info.split_once(':') {
                Some((user, password)) => (Some(user), Some(password)),
                None => (Some(info), None),
            },
        }
    }

    fn hostinfo(&self) -> (&str, &str) {
        let hostinfo = self.netloc.rsplit_once('@').map_or(self.netloc, |(_, h)| h);
        match hostinfo.split_once('[') {
            Some((_, bracketed)) => {
                let (host, port) = bracketed.split_once(']').unwrap_or((bracketed, ""));
                (host, port.split_once(':').map_or("", |(_, p)| p))
            }
            None => hostinfo.split_once(':').unwrap_or((hostinfo, "")),
        }
    }

    /// `.hostname`: lowercased, without brackets; `None` when empty.
    pub fn hostname(&self) -> Option<String> {
        let (host, _) = self.hostinfo();
        (!host.is_empty()).then(|| host.to_lowercase())
    }

    /// `.port`, with Python's two refusals (not digits, out of range); the port text is not
    /// repeated, since a password with an unencoded `/` lands there.
    pub fn port(&self) -> Result<Option<u16>, &'static str> {
        let (_, port) = self.hostinfo();
        if port.is_empty() {
            return Ok(None);
        }
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the port is not a number");
        }
        match port.parse::<u32>() {
            Ok(p) if p <= 65535 => Ok(Some(p as u16)),
            _ => Err("invalid port: out of range 0-65535"),
        }
    }
}

/// `unquote`: `%XX` decoded, a `%` not followed by two hex digits kept, bytes that are not
/// UTF-8 replaced by U+FFFD.
pub fn unquote(text: &str) -> String {
    match percent_encoding::percent_decode_str(text).decode_utf8_lossy() {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => s,
    }
}

/// `parse_qsl(query)`: `&`-separated `name=value` pairs, `+` read as a space, both sides
/// unquoted; a pair without `=` or with an empty value is dropped.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| {
            (
                unquote(&name.replace('+', " ")),
                unquote(&value.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_as_python_reads_them() {
        let s = split("redis://default:p@ss@Redis.Example:6380/2?db=3&x=a+b#frag");
        assert_eq!(s.scheme, "redis");
        assert_eq!(s.userinfo(), (Some("default"), Some("p@ss")));
        assert_eq!(s.hostname().as_deref(), Some("redis.example"));
        assert_eq!(s.port(), Ok(Some(6380)));
        assert_eq!((s.path, s.query, s.fragment), ("/2", "db=3&x=a+b", "frag"));
        assert_eq!(
            query_pairs(s.query),
            [("db".into(), "3".into()), ("x".into(), "a b".into())]
        );
        let s = split("unix://:pw@/run/redis.sock?db=1");
        assert_eq!(s.userinfo(), (Some(""), Some("pw")));
        assert_eq!(s.hostname(), None);
        assert_eq!(s.path, "/run/redis.sock");
        let s = split("redis://[::1]:6379");
        assert_eq!(s.hostname().as_deref(), Some("::1"));
        assert_eq!(
            split("redis://h:99999").port(),
            Err("invalid port: out of range 0-65535")
        );
        assert_eq!(unquote("p%40w%zz%"), "p@w%zz%");
        assert_eq!(
            query_pairs("a&b=&c=1&=2"),
            [("c".into(), "1".into()), ("".into(), "2".into())]
        );
    }
}
