//! A Redis target: one server and database the app uses, the roles it plays, and its URL,
//! parsed once and shown only redacted.

use std::fmt;

use redis::IntoConnectionInfo;
use url::Url;

/// What the app uses a Redis for; the `role` label of every Redis metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Cache,
    Broker,
    ResultBackend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cache => "cache",
            Role::Broker => "broker",
            Role::ResultBackend => "result_backend",
        }
    }

    /// The name of this role's check in `/healthz` and `/readyz`.
    pub fn check_name(self) -> String {
        format!("redis:{}", self.as_str())
    }
}

/// Where a target lives, as the redis crate needs it and as a person reads it.
#[derive(Clone, PartialEq, Eq)]
pub enum Address {
    /// `verify`: false when the URL asks for TLS without certificate checks
    /// (`ssl_cert_reqs=none`, as Celery and redis-py write it, or `#insecure`).
    Tcp {
        host: String,
        port: u16,
        tls: bool,
        verify: bool,
    },
    Unix {
        path: String,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Address::Unix { path } => f.write_str(path),
        }
    }
}

/// One Redis server and database to probe. Several roles share a target when their URLs
/// name the same server, database and credentials.
#[derive(Clone)]
pub struct Target {
    roles: Vec<Role>,
    address: Address,
    db: i64,
    user: Option<String>,
    /// Kept out of `Debug` and `Display`; only `connection_info` hands it to the redis crate.
    password: Option<String>,
    redacted: String,
    /// The variables this target came from (`REDIS_URL`, `REDISHOST`...), for fixes that
    /// name what the user set; empty for the local default.
    sources: Vec<&'static str>,
}

/// Why a URL was refused; the caller adds the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl Target {
    /// Parses `redis://`, `rediss://`, `redis+unix://` and `unix://` URLs.
    ///
    /// Error texts never contain the URL itself, which may hold a password.
    pub fn parse(role: Role, input: &str) -> Result<Target, UrlError> {
        Target::parse_url(role, input).map_err(|e| {
            if unencoded_userinfo(input) {
                UrlError(
                    "the URL's user or password seems to hold a /, ?, # or @ that is not percent-encoded, so the URL is cut there: percent-encode the password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)".into(),
                )
            } else {
                e
            }
        })
    }

    fn parse_url(role: Role, input: &str) -> Result<Target, UrlError> {
        let url = Url::parse(input.trim()).map_err(|e| {
            UrlError(format!(
                "not a valid URL ({e}); expected redis://[user:password@]host:port/db"
            ))
        })?;
        let scheme = url.scheme().to_ascii_lowercase();
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                UrlError("user or password is not valid percent-encoded UTF-8".into())
            })
        };
        let (address, db, user, password) = match scheme.as_str() {
            "redis" | "rediss" => {
                let host = match url.host() {
                    Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
                    Some(url::Host::Ipv4(a)) => a.to_string(),
                    Some(url::Host::Ipv6(a)) => a.to_string(),
                    _ => return Err(UrlError("the URL has no host".into())),
                };
                let port = url.port().unwrap_or(6379);
                if port == 0 {
                    return Err(UrlError("port 0 is not a valid Redis port".into()));
                }
                let path = url.path().trim_matches('/');
                let db = if path.is_empty() {
                    match query("db") {
                        Some(d) => parse_db(&d)?,
                        None => 0,
                    }
                } else {
                    parse_db(path)?
                };
                let user = match url.username() {
                    "" => None,
                    u => Some(decode(u)?),
                };
                let password = match url.password() {
                    None | Some("") => None,
                    Some(p) => Some(decode(p)?),
                };
                let tls = scheme == "rediss";
                let verify = !(url.fragment() == Some("insecure")
                    || query("ssl_cert_reqs")
                        .is_some_and(|v| v.eq_ignore_ascii_case("none") || v == "CERT_NONE"));
                let address = Address::Tcp {
                    host,
                    port,
                    tls,
                    verify,
                };
                (address, db, user, password)
            }
            "redis+unix" | "unix" => {
                let path = url.path().to_string();
                if path.is_empty() || path == "/" {
                    return Err(UrlError("the unix socket URL has no path".into()));
                }
                let db = match query("db") {
                    Some(d) => parse_db(&d)?,
                    None => 0,
                };
                let user = query("user").filter(|u| !u.is_empty());
                let password = query("pass")
                    .or_else(|| query("password"))
                    .filter(|p| !p.is_empty());
                (Address::Unix { path }, db, user, password)
            }
            other => {
                return Err(UrlError(format!(
                    "scheme \"{other}\" is not supported; use redis://, rediss://, redis+unix:// or unix://"
                )));
            }
        };
        let redacted = redact(&address, db, user.as_deref(), password.is_some());
        Ok(Target {
            roles: vec![role],
            address,
            db,
            user,
            password,
            redacted,
            sources: Vec::new(),
        })
    }

    /// The target, remembering the variable that gave it.
    pub fn with_source(mut self, variable: &'static str) -> Target {
        self.sources = vec![variable];
        self
    }

    /// Where the user writes this target's credentials, for a fix: `REDISPASSWORD`, `the
    /// URL in CELERY_BROKER_URL`, or both joined.
    pub fn credentials_home(&self) -> String {
        if self.sources.is_empty() {
            return "REDIS_URL (no Redis variable is set)".to_string();
        }
        let homes: Vec<String> = self
            .sources
            .iter()
            .map(|s| match *s {
                "REDISHOST" => "REDISUSER/REDISPASSWORD".to_string(),
                url => format!("the URL in {url}"),
            })
            .collect();
        homes.join(" and ")
    }

    /// How to send a password that is missing: in the URL of each URL variable, or in
    /// REDISPASSWORD.
    pub fn password_fix(&self) -> String {
        let urls: Vec<&str> = self
            .sources
            .iter()
            .copied()
            .filter(|s| *s != "REDISHOST")
            .collect();
        let mut ways = Vec::new();
        if self.sources.contains(&"REDISHOST") {
            ways.push("set REDISPASSWORD".to_string());
        }
        if !urls.is_empty() {
            ways.push(format!(
                "put it in the URL of {} (redis://default:PASSWORD@host:port)",
                urls.join(" and ")
            ));
        }
        if ways.is_empty() {
            ways.push("set REDIS_URL with it (redis://default:PASSWORD@host:port)".into());
        }
        ways.join("; ")
    }

    /// Builds the cache URL from Railway's `REDISHOST`/`REDISPORT`/`REDISUSER`/`REDISPASSWORD`.
    pub fn from_parts(host: &str, port: u16, user: Option<&str>, password: Option<&str>) -> Target {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let address = Address::Tcp {
            host,
            port,
            tls: false,
            verify: true,
        };
        let user = user.filter(|u| !u.is_empty()).map(str::to_string);
        let password = password.filter(|p| !p.is_empty()).map(str::to_string);
        let redacted = redact(&address, 0, user.as_deref(), password.is_some());
        Target {
            roles: vec![Role::Cache],
            address,
            db: 0,
            user,
            password,
            redacted,
            sources: vec!["REDISHOST"],
        }
    }

    /// The roles this target plays, in the fixed order cache, broker, result_backend.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The checks this target's probe reports under, one per role: `redis:<role>`.
    pub fn check_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.check_name()).collect()
    }

    /// The URL with its password replaced by `***`, port and db spelled out.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn db(&self) -> i64 {
        self.db
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, for scrubbing it out of any text that came back from elsewhere.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// True when `other` names the same server, database and credentials.
    pub fn same_connection(&self, other: &Target) -> bool {
        self.address == other.address
            && self.db == other.db
            && self.user == other.user
            && self.password == other.password
    }

    /// Adds `other`'s roles to this target (after `same_connection` said they are one).
    pub fn absorb(&mut self, other: &Target) {
        for role in &other.roles {
            if !self.roles.contains(role) {
                self.roles.push(*role);
            }
        }
        self.roles.sort();
        for source in &other.sources {
            if !self.sources.contains(source) {
                self.sources.push(source);
            }
        }
    }

    /// What the redis crate needs to reach the server: the address only. The credentials and
    /// the database are sent by `pool::open`, which keeps the server's own words when it
    /// refuses them (the redis crate's AUTH replaces them by "authentication failed").
    pub fn connection_info(&self) -> redis::ConnectionInfo {
        let addr = match &self.address {
            Address::Tcp {
                host,
                port,
                tls: true,
                verify,
            } => redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: !verify,
                tls_params: None,
            },
            Address::Tcp { host, port, .. } => redis::ConnectionAddr::Tcp(host.clone(), *port),
            Address::Unix { path } => redis::ConnectionAddr::Unix(path.into()),
        };
        // No CLIENT SETINFO before AUTH (a server with a password would refuse it).
        let settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        addr.into_connection_info()
            .expect("a ConnectionAddr always converts into ConnectionInfo")
            .set_redis_settings(settings)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("roles", &self.roles)
            .field("url", &self.redacted)
            .finish()
    }
}

/// True when a URL's text has an `@` after a `/`, `?` or `#` that follows the scheme: a
/// password holding one of those, unencoded, which cut the URL short (`redis://:pa/ss@h`).
fn unencoded_userinfo(input: &str) -> bool {
    let Some((_, rest)) = input.trim().split_once("://") else {
        return false;
    };
    match rest.rfind('@') {
        Some(at) => rest[..at].contains(['/', '?', '#']),
        None => false,
    }
}

fn parse_db(text: &str) -> Result<i64, UrlError> {
    match text.parse::<i64>() {
        Ok(db) if db >= 0 => Ok(db),
        // Shown only when it cannot be the tail of a password that held a '/'.
        _ if text.len() <= 12 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Err(UrlError(format!("database \"{text}\" is not a number >= 0")))
        }
        _ => Err(UrlError(
            "the database part of the URL is not a number >= 0 (a password with /, @, : or # must be percent-encoded)"
                .into(),
        )),
    }
}

pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn redact(address: &Address, db: i64, user: Option<&str>, has_password: bool) -> String {
    let userinfo = match (user, has_password) {
        (Some(u), true) => format!("{u}:***@"),
        (Some(u), false) => format!("{u}@"),
        (None, true) => ":***@".to_string(),
        (None, false) => String::new(),
    };
    match address {
        Address::Tcp { tls, verify, .. } => {
            let scheme = if *tls { "rediss" } else { "redis" };
            let unverified = if *tls && !verify {
                "?ssl_cert_reqs=none"
            } else {
                ""
            };
            format!("{scheme}://{userinfo}{address}/{db}{unverified}")
        }
        Address::Unix { path } => {
            let mut url = format!("redis+unix://{path}?db={db}");
            if let Some(u) = user {
                url.push_str(&format!("&user={u}"));
            }
            if has_password {
                url.push_str("&pass=***");
            }
            url
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn railway_url_is_redacted_with_port_and_db() {
        let t = Target::parse(
            Role::Cache,
            "redis://default:s3cr3t@redis.railway.internal:6379",
        )
        .unwrap();
        assert_eq!(
            t.redacted(),
            "redis://default:***@redis.railway.internal:6379/0"
        );
        assert_eq!(t.user(), Some("default"));
        assert_eq!(t.password(), Some("s3cr3t"));
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn redaction_covers_every_form() {
        let cases = [
            ("redis://127.0.0.1", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@h:1/2", "redis://:***@h:1/2"),
            ("rediss://u:p%40w@h/3", "rediss://u:***@h:6379/3"),
            ("redis://[::1]:6380/1", "redis://[::1]:6380/1"),
            ("redis://h?db=4", "redis://h:6379/4"),
            (
                "redis+unix:///run/redis.sock?db=2&pass=pw",
                "redis+unix:///run/redis.sock?db=2&pass=***",
            ),
            (
                "unix:///tmp/r.sock?user=app&password=pw",
                "redis+unix:///tmp/r.sock?db=0&user=app&pass=***",
            ),
        ];
        for (input, want) in cases {
            let t = Target::parse(Role::Cache, input).unwrap();
            assert_eq!(t.redacted(), want, "{input}");
            assert!(!t.redacted().contains("pw"), "{input}");
        }
    }

    #[test]
    fn tls_without_verification_is_shown() {
        for url in [
            "rediss://h:6380?ssl_cert_reqs=CERT_NONE",
            "rediss://h:6380/0#insecure",
        ] {
            let t = Target::parse(Role::Cache, url).unwrap();
            assert_eq!(
                t.redacted(),
                "rediss://h:6380/0?ssl_cert_reqs=none",
                "{url}"
            );
        }
        let t = Target::parse(Role::Cache, "rediss://h:6380?ssl_cert_reqs=required").unwrap();
        assert_eq!(t.redacted(), "rediss://h:6380/0");
    }

    #[test]
    fn percent_encoded_password_is_decoded() {
        let t = Target::parse(Role::Cache, "rediss://u:p%40w@h/3").unwrap();
        assert_eq!(t.password(), Some("p@w"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        let cases = [
            ("http://u:hunter2@h:6379", "scheme \"http\""),
            ("redis://u:hunter2@h:99999", "invalid port"),
            ("redis://u:hunter2@h:6379/abc", "database \"abc\""),
            ("redis://u:hunter2@h:6379/-1", "database \"-1\""),
            ("redis://u:hunter2@:6379/0", "host"),
            ("hunter2", "not a valid URL"),
            ("redis+unix://", "no path"),
            ("redis://u:hunter2@h:0", "port 0"),
            ("redis://u:123/hunter2@h", "percent-encode the password"),
            (
                "redis://default:hunter2/w@h:6379/0",
                "percent-encode the password",
            ),
            ("redis://:hunter2#x@h:6379/0", "percent-encode the password"),
            ("redis://:hun?ter2@h:6379", "percent-encode the password"),
            (
                "redis://u:hunter2@h:6379/0/w@x",
                "percent-encode the password",
            ),
        ];
        for (input, want) in cases {
            let err = Target::parse(Role::Cache, input).unwrap_err();
            assert!(err.0.contains(want), "{input}: {}", err.0);
            assert!(!err.0.contains("hunter2"), "{input}: {}", err.0);
        }
    }

    #[test]
    fn same_connection_merges_roles_in_fixed_order() {
        let mut broker = Target::parse(Role::Broker, "redis://:pw@h:6379/0").unwrap();
        let cache = Target::parse(Role::Cache, "redis://:pw@h:6379").unwrap();
        let backend = Target::parse(Role::ResultBackend, "redis://:pw@h:6379/1").unwrap();
        let other_pw = Target::parse(Role::ResultBackend, "redis://:other@h:6379/0").unwrap();
        assert!(broker.same_connection(&cache));
        assert!(!broker.same_connection(&backend));
        assert!(!broker.same_connection(&other_pw));
        broker.absorb(&cache);
        assert_eq!(broker.roles(), [Role::Cache, Role::Broker]);
        assert_eq!(broker.check_names(), ["redis:cache", "redis:broker"]);
    }

    #[test]
    fn an_unencoded_at_sign_alone_is_read_as_the_app_reads_it() {
        // The last @ ends the user information, as in Python's urllib.
        let t = Target::parse(Role::Cache, "redis://default:p@ss@h:6379/0").unwrap();
        assert_eq!(t.password(), Some("p@ss"));
        assert_eq!(t.redacted(), "redis://default:***@h:6379/0");
    }

    #[test]
    fn fixes_name_the_variables_that_were_set() {
        let url = Target::parse(Role::Cache, "redis://h").unwrap();
        assert_eq!(
            url.clone().with_source("REDIS_URL").password_fix(),
            "put it in the URL of REDIS_URL (redis://default:PASSWORD@host:port)"
        );
        let mut parts = Target::from_parts("h", 6379, None, None);
        assert_eq!(parts.password_fix(), "set REDISPASSWORD");
        assert_eq!(parts.credentials_home(), "REDISUSER/REDISPASSWORD");
        parts.absorb(&url.with_source("CELERY_BROKER_URL"));
        assert_eq!(
            parts.password_fix(),
            "set REDISPASSWORD; put it in the URL of CELERY_BROKER_URL (redis://default:PASSWORD@host:port)"
        );
        assert_eq!(
            parts.credentials_home(),
            "REDISUSER/REDISPASSWORD and the URL in CELERY_BROKER_URL"
        );
    }

    #[test]
    fn parts_build_a_redacted_url() {
        let t = Target::from_parts("redis.railway.internal", 6379, Some("default"), Some("pw"));
        assert_eq!(
            t.redacted(),
            "redis://default:***@redis.railway.internal:6379/0"
        );
        let t = Target::from_parts("::1", 6380, None, None);
        assert_eq!(t.redacted(), "redis://[::1]:6380/0");
    }
}
