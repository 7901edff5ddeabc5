//! A Redis target: one server and database the app uses, the roles it plays, and its URL,
//! parsed once and shown only redacted.

use std::fmt;

pub use crate::redis::cluster::Cluster;
pub use crate::redis::raw::Node;
pub use crate::redis::sentinel::Sentinels;

mod cluster_url;
mod sentinel_url;
mod ssl;
mod url;

pub use url::Read;

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

/// Where a target lives, as a person reads it.
#[derive(Clone, PartialEq, Eq)]
pub enum Address {
    /// `tls`: `None` for plain TCP.
    Tcp {
        host: String,
        port: u16,
        tls: Option<Tls>,
    },
    Unix {
        path: String,
    },
    /// The master the sentinels name (`sentinel://`, `redis+sentinel://`): resolved each
    /// time a connection is made.
    Sentinel(Sentinels),
}

/// How a TLS connection is made, from the URL's `ssl_*` parameters (as redis-py, kombu and
/// Celery read them) and `SSL_CERT_FILE` / `SSL_CERT_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// False with `ssl_cert_reqs=none`: encrypted, the certificate not checked.
    pub verify: bool,
    /// False with `ssl_check_hostname=false`: the chain is checked, not the name.
    pub check_hostname: bool,
    /// Roots trusted beside the built-in Mozilla set, in the order they are tried.
    pub roots: Vec<Roots>,
    /// Presented to a server that asks for one (`tls-auth-clients`).
    pub client_cert: Option<ClientCert>,
}

/// A file or directory of trusted CA certificates (PEM) and the setting that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// `ssl_ca_certs`, `ssl_ca_path`, `SSL_CERT_FILE` or `SSL_CERT_DIR`.
    pub origin: &'static str,
    pub path: String,
}

/// `ssl_certfile` and `ssl_keyfile` (the key may sit in the certificate's file, as
/// Python's `load_cert_chain` allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: String,
    pub key: Option<String>,
}

impl Tls {
    /// What redis-py does with `rediss://` and no parameter: verify chain and name.
    pub fn verified() -> Tls {
        Tls {
            verify: true,
            check_hostname: true,
            roots: Vec::new(),
            client_cert: None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Address::Unix { path } => f.write_str(path),
            Address::Sentinel(s) => match s.current() {
                Some(m) => write!(f, "{m} (master {:?} named by the sentinels)", s.master),
                None => write!(f, "the master {:?} of the sentinels {}", s.master, s.list()),
            },
        }
    }
}

/// One Redis server and database to probe. Several roles share a target when their URLs
/// name the same server, database and credentials.
#[derive(Clone, PartialEq)]
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
    /// A Redis Cluster's seeds and last look (`redis+cluster://`); the address is a node's.
    cluster: Option<Cluster>,
}

/// Why a URL was refused; the caller adds the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl Target {
    /// A target read from a URL for `role`, its redacted form made once.
    fn new(
        role: Role,
        address: Address,
        db: i64,
        user: Option<String>,
        password: Option<String>,
    ) -> Target {
        let redacted = redact(&address, db, user.as_deref(), password.is_some());
        Target {
            roles: vec![role],
            address,
            db,
            user,
            password,
            redacted,
            sources: Vec::new(),
            cluster: None,
        }
    }

    /// Adds trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`) after the URL's own, when the
    /// target speaks TLS.
    pub fn add_roots(&mut self, roots: &[Roots]) {
        if let Address::Tcp { tls: Some(tls), .. } = &mut self.address {
            tls.roots.extend(roots.iter().cloned());
        }
    }

    /// The variables this target came from.
    pub fn sources(&self) -> &[&'static str] {
        &self.sources
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
            tls: None,
        };
        let password = password.filter(|p| !p.is_empty()).map(str::to_string);
        // Railway sets REDISUSER=default with or without a password: without one, no AUTH.
        let user = user
            .filter(|u| !u.is_empty() && password.is_some())
            .map(str::to_string);
        let redacted = redact(&address, 0, user.as_deref(), password.is_some());
        Target {
            roles: vec![Role::Cache],
            address,
            db: 0,
            user,
            password,
            redacted,
            sources: vec!["REDISHOST"],
            cluster: None,
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

    /// The cluster, for a Redis Cluster target.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// The server's `host:port` for a TCP target (a Sentinel target's resolved master, a
    /// Cluster target's node); `None` otherwise.
    pub fn node(&self) -> Option<Node> {
        match &self.address {
            Address::Tcp { host, port, .. } => Some(Node {
                host: host.clone(),
                port: *port,
            }),
            _ => None,
        }
    }

    /// The sentinels, for a Sentinel target.
    pub fn sentinels(&self) -> Option<&Sentinels> {
        match &self.address {
            Address::Sentinel(s) => Some(s),
            _ => None,
        }
    }

    /// Sets a Sentinel target's master name (unless its URL gave one) and what AUTH sends
    /// to the sentinels, from the settings; the redacted URL then names the master.
    pub fn configure_sentinels(
        &mut self,
        master: Option<&str>,
        user: Option<String>,
        password: Option<String>,
    ) {
        let Address::Sentinel(s) = &mut self.address else {
            return;
        };
        if s.master.is_empty()
            && let Some(m) = master
        {
            s.master = m.to_string();
        }
        s.set_auth(user, password);
        self.redacted = redact(
            &self.address,
            self.db,
            self.user.as_deref(),
            self.password.is_some(),
        );
    }

    /// This Sentinel target's master (or this Cluster target's node) at `master`: the same
    /// credentials, database, roles and redacted URL (what is shown and what capabilities
    /// are remembered by).
    pub fn at_master(&self, master: &Node) -> Target {
        Target {
            address: Address::Tcp {
                host: master.host.clone(),
                port: master.port,
                tls: None,
            },
            ..self.clone()
        }
    }

    pub fn db(&self) -> i64 {
        self.db
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The user as messages show it: `***` when there is no password, since that "user" may
    /// be a password written without its colon (`redis://PASSWORD@host`).
    pub fn user_shown(&self) -> &str {
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => u,
            (Some(_), None) => "***",
            (None, _) => "default",
        }
    }

    /// What AUTH sends, as redis-py sends it: the user and the password, the password alone,
    /// or the user and an empty password; `None` for no AUTH at all.
    pub fn auth(&self) -> Option<(Option<&str>, &str)> {
        match (self.user.as_deref(), self.password.as_deref()) {
            (None, None) => None,
            (user, password) => Some((user, password.unwrap_or(""))),
        }
    }

    /// The password, for scrubbing it out of any text that came back from elsewhere.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// True when `other` names the same server, database and credentials.
    pub fn same_connection(&self, other: &Target) -> bool {
        self.address == other.address
            && self.cluster == other.cluster
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
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("roles", &self.roles)
            .field("url", &self.redacted)
            .finish()
    }
}

/// One `host[:port]` of a URL listing several (sentinels, cluster seeds), read as Python's
/// `urlsplit` reads a network location; `default_port` when the port is left out.
fn node(hostport: &str, default_port: u16) -> Result<Node, UrlError> {
    let url = format!("redis://{hostport}");
    let split = crate::redis::pyurl::split(&url);
    split
        .check_brackets()
        .map_err(|e| UrlError(e.to_string()))?;
    let host = split
        .hostname()
        .map(|h| crate::redis::pyurl::unquote(&h))
        .ok_or_else(|| UrlError(format!("{hostport:?} names no host")))?;
    let port = split
        .port()
        .map_err(|e| UrlError(e.to_string()))?
        .unwrap_or(default_port);
    if port == 0 {
        return Err(UrlError("port 0 is not a valid port".into()));
    }
    Ok(Node { host, port })
}

/// A URL's `user:password@` as it is shown: the password as `***`.
fn userinfo(user: Option<&str>, has_password: bool) -> String {
    match (user, has_password) {
        (Some(u), true) => format!("{u}:***@"),
        // A user without a password may be a password written without its colon.
        (Some(_), false) => "***@".to_string(),
        (None, true) => ":***@".to_string(),
        (None, false) => String::new(),
    }
}

/// The URL as `config`, `/healthz` and logs show it: the password replaced by `***`, port
/// and database spelled out, and every TLS setting that changes what is trusted.
fn redact(address: &Address, db: i64, user: Option<&str>, has_password: bool) -> String {
    let userinfo = userinfo(user, has_password);
    match address {
        Address::Tcp { tls, .. } => {
            let scheme = if tls.is_some() { "rediss" } else { "redis" };
            let mut params: Vec<String> = Vec::new();
            if let Some(t) = tls {
                if !t.verify {
                    params.push("ssl_cert_reqs=none".into());
                } else if !t.check_hostname {
                    params.push("ssl_check_hostname=false".into());
                }
                for r in t.roots.iter().filter(|r| r.origin.starts_with("ssl_")) {
                    params.push(format!("{}={}", r.origin, r.path));
                }
                if let Some(c) = &t.client_cert {
                    params.push(format!("ssl_certfile={}", c.cert));
                    if let Some(k) = &c.key {
                        params.push(format!("ssl_keyfile={k}"));
                    }
                }
            }
            let query = if params.is_empty() {
                String::new()
            } else {
                format!("?{}", params.join("&"))
            };
            format!("{scheme}://{userinfo}{address}/{db}{query}")
        }
        Address::Unix { path } => format!("unix://{userinfo}{path}?db={db}"),
        Address::Sentinel(s) => {
            let nodes: Vec<String> = s
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let userinfo = if i == 0 { userinfo.as_str() } else { "" };
                    format!("sentinel://{userinfo}{n}/{db}")
                })
                .collect();
            let sentinel_auth = if s.has_password() {
                " sentinel_password=***"
            } else {
                ""
            };
            format!(
                "{} master_name={}{sentinel_auth}",
                nodes.join(";"),
                s.master
            )
        }
    }
}

#[cfg(test)]
mod tests;
