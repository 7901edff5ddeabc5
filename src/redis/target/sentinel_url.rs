//! Sentinel URLs as the app's libraries read them: kombu's and Celery's
//! `sentinel://[user:password@]host[:port][/db][;sentinel://host[:port]...]` (the first URL
//! gives the master's credentials and database, every URL one sentinel), and
//! `redis+sentinel://[user:password@]host[:port][,host[:port]...][/master_name][/db]`, the
//! form of redis-sentinel-url and the Django and Flask caches built on it.

use super::url::parse_db;
use super::{Address, Role, Target, UrlError, node};
use crate::redis::pyurl;
use crate::redis::sentinel::{DEFAULT_PORT, Sentinels};

/// The Sentinel target `text` names, with `master` set when the URL gives it (the
/// configuration adds SIDECAR_SENTINEL_MASTER).
pub(super) fn read(
    role: Role,
    variable: &'static str,
    scheme: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Target, UrlError> {
    let parts: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let first = pyurl::split(parts[0]);
    first
        .check_brackets()
        .map_err(|e| UrlError(e.to_string()))?;
    let decoded = |raw: Option<&str>| raw.map(pyurl::unquote).filter(|v| !v.is_empty());
    let (user, password) = {
        let (u, p) = first.userinfo();
        (decoded(u), decoded(p))
    };
    let mut nodes = Vec::new();
    let mut master = String::new();
    let db;
    if parts.iter().any(|p| !pyurl::split(p).query.is_empty()) {
        warnings.push(format!(
            "{variable}: the parameters after '?' are not used for Sentinel (TLS to the sentinels or the master is not supported yet)"
        ));
    }
    if scheme == "redis+sentinel" && role != Role::Cache {
        warnings.push(format!(
            "{variable}: {} does not read redis+sentinel:// (it takes sentinel://host:port;sentinel://host:port and the master's name in its transport options); the sidecar reads it as written",
            if role == Role::Broker { "kombu" } else { "Celery" }
        ));
    }
    if scheme == "redis+sentinel" {
        for url in &parts {
            let url = pyurl::split(url);
            let hosts = url.netloc.rsplit_once('@').map_or(url.netloc, |(_, h)| h);
            for host in hosts.split(',') {
                nodes.push(node(host, DEFAULT_PORT)?);
            }
        }
        let mut segments = first.path.split('/').filter(|s| !s.is_empty());
        master = segments.next().map(pyurl::unquote).unwrap_or_default();
        db = match segments.next() {
            Some(d) => parse_db(d)?,
            None => 0,
        };
    } else {
        for url in &parts {
            let url = pyurl::split(url);
            if url.scheme != "sentinel" {
                warnings.push(format!(
                    "{variable}: {}:// after a ';' is not a sentinel, so kombu leaves it out, and so does the sidecar",
                    url.scheme
                ));
                continue;
            }
            let hosts = url.netloc.rsplit_once('@').map_or(url.netloc, |(_, h)| h);
            nodes.push(node(hosts, DEFAULT_PORT)?);
        }
        let path = pyurl::unquote(first.path);
        let vhost = path.trim_matches('/');
        db = if vhost.is_empty() {
            0
        } else {
            parse_db(vhost)?
        };
        if role == Role::Cache {
            warnings.push(format!(
                "{variable}: redis-py does not read sentinel:// URLs (Celery and kombu do); the sidecar reads it as kombu does"
            ));
        }
    }
    if nodes.is_empty() {
        return Err(UrlError("the Sentinel URL names no sentinel".into()));
    }
    let mut sentinels = Sentinels::new(nodes);
    sentinels.master = master;
    Ok(Target::new(
        role,
        Address::Sentinel(sentinels),
        db,
        user,
        password,
    ))
}
