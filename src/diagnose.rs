//! The `check` command's diagnosis: each target walked step by step (URL, DNS, TCP, TLS,
//! AUTH, SELECT, PING, INFO; for the broker, Celery's queues and workers), each step ok or
//! the failure with its cause and a concrete fix. The walk stops at the first failing
//! step. It runs its own connections (a raw RESP client), never the server loop's pools.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use redis::RedisError;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{CeleryConfig, Config, quoted, show};
use crate::failure::{Failure, Phase, Reason};
use crate::info::{self, Info};
use crate::resp::{Reply, Resp, Stream};
use crate::target::{Address, Target};
use crate::verdict::{self, Finding, mib};

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Skip => "skip",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One step of a target's diagnosis.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
    /// The failure's `reason` label.
    pub reason: Option<Reason>,
    pub took: Option<Duration>,
}

impl Step {
    fn ok(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
            reason: None,
            took: None,
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            verdict: Verdict::Skip,
            ..Step::ok(name, detail)
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Step {
        Step {
            verdict: Verdict::Warn,
            fix: Some(fix.into()),
            ..Step::ok(name, detail)
        }
    }

    fn fail(name: &'static str, failure: Failure, fix: impl Into<String>) -> Step {
        Step {
            name,
            verdict: Verdict::Fail,
            detail: failure.message,
            fix: Some(fix.into()),
            reason: Some(failure.reason),
            took: None,
        }
    }

    fn took(mut self, d: Duration) -> Step {
        self.took = Some(d);
        self
    }
}

/// One target's diagnosis.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub target: Target,
    pub steps: Vec<Step>,
    /// PING's round trip, when it answered.
    pub ping: Option<Duration>,
    pub info: Option<Info>,
    /// What degrades it, each with its fix (the warning steps' findings).
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    pub fn verdict(&self) -> Verdict {
        self.steps
            .iter()
            .map(|s| s.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// The first failure, when there is one.
    pub fn failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.verdict == Verdict::Fail)
    }
}

/// Walks one target. `celery`: also Celery's steps (the broker); `ping`: and an active
/// `inspect ping` of the workers.
pub async fn diagnose(target: &Target, config: &Config, celery: bool, ping: bool) -> Diagnosis {
    let mut d = Diagnosis::new(target);
    let limit = config.probe_timeout;
    let roles: Vec<&str> = target.roles().iter().map(|r| r.as_str()).collect();
    d.steps.push(Step::ok(
        "url",
        format!("{} ({})", target.redacted(), roles.join(", ")),
    ));
    let Some(stream) = connect(&mut d, limit).await else {
        return d;
    };
    let mut resp = Resp::new(stream);
    if !session(&mut d, &mut resp, config).await {
        return d;
    }
    if celery {
        celery_steps(&mut d, &config.celery, config, ping).await;
    }
    d
}

/// DNS, TCP (each address, timed) and TLS: a stream ready for commands, or `None` with
/// the failing step recorded.
async fn connect(d: &mut Diagnosis, limit: Duration) -> Option<Box<dyn Stream>> {
    let target = d.target.clone();
    let (host, port, tls) = match target.address() {
        Address::Unix { path } => {
            let began = Instant::now();
            return match tokio::time::timeout(limit, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(s)) => {
                    d.steps.push(
                        Step::ok("connect", format!("unix socket {path}")).took(began.elapsed()),
                    );
                    Some(Box::new(s))
                }
                Ok(Err(e)) => {
                    let f = Failure::from_redis(&RedisError::from(e), &target);
                    d.steps.push(Step::fail(
                        "connect",
                        f,
                        "check the socket path against Redis's `unixsocket` setting, and that the sidecar's user may open it",
                    ));
                    None
                }
                Err(_) => {
                    d.steps.push(Step::fail(
                        "connect",
                        Failure::timeout(&target, Phase::Connect, limit),
                        "Redis does not accept on its socket: is it hung or overloaded?",
                    ));
                    None
                }
            };
        }
        Address::Tcp { host, port, tls } => (host.clone(), *port, tls.clone()),
    };

    // DNS: the answers, or why there are none.
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => {
            d.steps
                .push(Step::ok("dns", format!("{ip} is an address: no lookup")));
            vec![SocketAddr::new(ip, port)]
        }
        Err(_) => {
            let began = Instant::now();
            match tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port))).await
            {
                Ok(Ok(found)) => {
                    let mut addrs: Vec<SocketAddr> = Vec::new();
                    for a in found {
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    d.steps.push(
                        Step::ok("dns", format!("{host} -> {}", list.join(", ")))
                            .took(began.elapsed()),
                    );
                    addrs
                }
                Ok(Err(e)) => {
                    let f = Failure::from_redis(&RedisError::from(e), &target);
                    let fix = if host.ends_with(".railway.internal") {
                        "*.railway.internal names resolve only inside Railway's private network: run the sidecar as a service of the same project, or from outside use the public URL (REDIS_PUBLIC_URL, the TCP proxy)"
                    } else {
                        "check the host name for typos; `getent hosts <host>` on this machine must answer"
                    };
                    d.steps.push(Step::fail("dns", f, fix));
                    return None;
                }
                Err(_) => {
                    d.steps.push(Step::fail(
                        "dns",
                        Failure::new(
                            Reason::Dns,
                            format!("DNS lookup of {host} did not answer within {}", show(limit)),
                        ),
                        "the resolver is slow or unreachable: check /etc/resolv.conf",
                    ));
                    return None;
                }
            }
        }
    };

    // TCP: each address in turn, timed, all within one timeout (as the server's own
    // connects); the first that connects is used.
    let mut tried = Vec::new();
    let mut stream = None;
    let mut last = None;
    let until = Instant::now() + limit;
    for addr in &addrs {
        let began = Instant::now();
        if began >= until {
            tried.push(format!("{addr}: not tried, no time left"));
            continue;
        }
        match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tried.push(format!(
                    "{addr} in {:.1}ms",
                    began.elapsed().as_secs_f64() * 1e3
                ));
                let _ = s.set_nodelay(true);
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => {
                tried.push(format!("{addr}: {e}"));
                last = Some(Failure::from_redis(&RedisError::from(e), &target));
            }
            Err(_) => {
                tried.push(format!("{addr}: no answer within {}", show(limit)));
                last = Some(Failure::timeout(&target, Phase::Connect, limit));
            }
        }
    }
    let Some(tcp) = stream else {
        let f = last.unwrap_or_else(|| Failure::new(Reason::Dns, "no address to connect to"));
        let fix = match f.reason {
            Reason::Timeout => {
                "packets are dropped or the host is down: check firewalls, security groups and that Redis listens on this interface (`bind`)"
            }
            _ => {
                "start Redis, or fix the port (Railway's private Redis port is 6379); `protected-mode` and `bind` decide which interfaces Redis listens on"
            }
        };
        let mut step = Step::fail("tcp", f, fix);
        step.detail = format!("{} [{}]", step.detail, tried.join("; "));
        d.steps.push(step);
        return None;
    };
    d.steps.push(Step::ok("tcp", tried.join("; ")));
    let Some(tls) = tls else {
        return Some(Box::new(tcp));
    };

    // TLS.
    let began = Instant::now();
    let client = match crate::tls::client(&tls) {
        Ok(c) => c,
        Err(problem) => {
            d.steps.push(Step::fail(
                "tls",
                Failure::new(Reason::Tls, problem),
                "fix the path or the file the URL's ssl_ parameter (or SSL_CERT_FILE / SSL_CERT_DIR) names",
            ));
            return None;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(client.config.clone());
    let Some(name) = crate::tls::server_name(&host) else {
        d.steps.push(Step::fail(
            "tls",
            Failure::new(Reason::Tls, format!("{host} is not a name TLS can check")),
            "use the server's DNS name in the URL",
        ));
        return None;
    };
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => {
            let (_, session) = s.get_ref();
            let version = session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            let by = client.verified_by().unwrap_or_default();
            let checked = if tls.verify {
                format!("certificate verified by {by}")
            } else {
                "certificate NOT verified (ssl_cert_reqs=none)".to_string()
            };
            let presented = match &tls.client_cert {
                Some(c) => format!(", client certificate {} offered", c.cert),
                None => String::new(),
            };
            d.steps.push(
                Step::ok("tls", format!("{version}, {checked}{presented}")).took(began.elapsed()),
            );
            Some(Box::new(s))
        }
        Ok(Err(e)) => {
            let f = Failure::from_redis(&RedisError::from(e), &target);
            let fix = if f.message.contains("client certificate") {
                CLIENT_CERT_FIX.to_string()
            } else if f.message.contains("certificate") {
                format!(
                    "roots tried: {}. The certificate is self-signed, from a private CA, expired or for another name: give the CA's file as ?ssl_ca_certs=/path/ca.crt (or SSL_CERT_FILE), fix the certificate, or write ?ssl_cert_reqs=none to encrypt without verifying (as the app's redis-py does with that setting)",
                    client.roots_tried()
                )
            } else {
                "this port does not speak TLS: use redis:// for it, or the TLS port (`tls-port`)"
                    .to_string()
            };
            d.steps.push(Step::fail("tls", f, fix));
            None
        }
        Err(_) => {
            d.steps.push(Step::fail(
                "tls",
                Failure::timeout(&target, Phase::Connect, limit),
                "no TLS answer: a plain Redis port waits for a command and never answers a TLS hello: use redis:// for it",
            ));
            None
        }
    }
}

/// A server's error reply as the redis crate's error, so that it is classified (and
/// scrubbed) like every other failure.
pub(crate) fn server_error(text: &str) -> RedisError {
    let (code, detail) = text.split_once(' ').unwrap_or((text, ""));
    redis::make_extension_error(code.to_string(), Some(detail.to_string()))
}

/// One command under the time limit: its reply, or the failure (I/O or a timeout).
async fn send(
    resp: &mut Resp,
    target: &Target,
    limit: Duration,
    command: &'static str,
    args: &[&[u8]],
) -> Result<Reply, Failure> {
    match tokio::time::timeout(limit, resp.command(args)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Failure::from_redis(&RedisError::from(e), target)),
        Err(_) => Err(Failure::timeout(target, Phase::Command(command), limit)),
    }
}

const CLIENT_CERT_FIX: &str = "the server checks client certificates (tls-auth-clients): give ssl_certfile and ssl_keyfile in the URL, a certificate signed by a CA in the server's tls-ca-cert-file";

/// A step that failed below Redis (I/O, no answer in time): recorded with its fix.
fn fail_io(d: &mut Diagnosis, step: &'static str, f: Failure) -> bool {
    // With TLS 1.3 the server's verdict on the client certificate arrives after the
    // handshake, with the first command.
    let fix = if f.reason == Reason::Tls && f.message.contains("client certificate") {
        CLIENT_CERT_FIX
    } else if f.message.contains("closed by the server") {
        "the server hung up: a TLS port (use rediss://), `maxclients` reached, or a proxy in between refusing the client"
    } else {
        "the server stopped answering: hung, paused, or overloaded"
    };
    d.steps.push(Step::fail(step, f, fix));
    false
}

impl Diagnosis {
    fn new(target: &Target) -> Diagnosis {
        Diagnosis {
            target: target.clone(),
            steps: Vec::new(),
            ping: None,
            info: None,
            findings: Vec::new(),
        }
    }

    /// The first failed step as a failure: its reason and its words.
    fn as_failure(&self) -> Failure {
        match self.failure() {
            Some(step) => Failure::new(step.reason.unwrap_or(Reason::Other), step.detail.clone()),
            None => Failure::new(Reason::Other, "the connection failed"),
        }
    }
}

/// A raw connection to `target` as `check` makes it (DNS, TCP, TLS, AUTH, SELECT, named in
/// CLIENT LIST), for the Celery event subscription: a failure is told in the words of the
/// `check` step that failed. `limit` bounds each step.
pub async fn link(target: &Target, limit: Duration) -> Result<Resp, Failure> {
    let mut d = Diagnosis::new(target);
    let Some(stream) = connect(&mut d, limit).await else {
        return Err(d.as_failure());
    };
    let mut resp = Resp::new(stream);
    if !login(&mut d, &mut resp, limit).await {
        return Err(d.as_failure());
    }
    match name(&mut resp, target, limit).await {
        Ok(()) => Ok(resp),
        Err(f) => Err(f),
    }
}

/// Names the connection in CLIENT LIST (`CLIENT SETNAME`). A refusal of the command itself
/// (an ACL without it, a server without it) is ignored, as the pool does; any other error,
/// such as "max number of clients reached" written before a close, is the failure.
async fn name(resp: &mut Resp, target: &Target, limit: Duration) -> Result<(), Failure> {
    let name: [&[u8]; 3] = [b"CLIENT", b"SETNAME", crate::pool::CLIENT_NAME.as_bytes()];
    match send(resp, target, limit, "CLIENT", &name).await? {
        Reply::Error(e) if !(e.starts_with("NOPERM") || e.contains("unknown")) => {
            Err(Failure::from_redis(&server_error(&e), target))
        }
        _ => Ok(()),
    }
}

/// AUTH, SELECT, PING, INFO. False when a step failed.
async fn session(d: &mut Diagnosis, resp: &mut Resp, config: &Config) -> bool {
    if !login(d, resp, config.probe_timeout).await || !probe(d, resp, config).await {
        return false;
    }
    // Named once it answered PING, whose step says why a server refuses a client.
    let _ = name(resp, &d.target, config.probe_timeout).await;
    true
}

/// AUTH and SELECT. False when a step failed.
async fn login(d: &mut Diagnosis, resp: &mut Resp, limit: Duration) -> bool {
    let target = d.target.clone();

    // AUTH.
    match target.auth() {
        None => d.steps.push(Step::skip("auth", "no password in the URL")),
        Some((user, pw)) => {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = user {
                args.push(user.as_bytes());
            }
            args.push(pw.as_bytes());
            let mut reply = send(resp, &target, limit, "AUTH", &args).await;
            // Redis before 6 knows AUTH with a password only; redis-py then retries without
            // the user, and so does this.
            if let Ok(Reply::Error(e)) = &reply
                && e.contains("wrong number of arguments")
                && args.len() == 3
            {
                reply = send(resp, &target, limit, "AUTH", &[b"AUTH", pw.as_bytes()]).await;
            }
            match reply {
                Err(f) => return fail_io(d, "auth", f),
                Ok(Reply::Error(e)) => {
                    let f = Failure::from_redis(&server_error(&e), &target);
                    let fix = if e.contains("without any password configured") {
                        "the server has no password: remove it from the URL".to_string()
                    } else if e.starts_with("ERR max number of clients") {
                        "raise maxclients, or find the client that leaks connections (CLIENT LIST)"
                            .to_string()
                    } else {
                        format!(
                            "the user or password in {} is not the server's: on Railway reference ${{{{Redis.REDIS_URL}}}} rather than copying it",
                            target.credentials_home()
                        )
                    };
                    d.steps.push(Step::fail("auth", f, fix));
                    return false;
                }
                Ok(_) => d
                    .steps
                    .push(Step::ok("auth", format!("as user {}", target.user_shown()))),
            }
        }
    }

    // SELECT.
    if target.db() != 0 {
        let db = target.db().to_string();
        match send(resp, &target, limit, "SELECT", &[b"SELECT", db.as_bytes()]).await {
            Err(f) => return fail_io(d, "select", f),
            Ok(Reply::Error(e)) => {
                let f = Failure::from_redis(&server_error(&e), &target);
                d.steps.push(Step::fail(
                    "select",
                    f,
                    "use a database below the server's `databases` (16 by default; Redis Cluster has only 0)",
                ));
                return false;
            }
            Ok(_) => d.steps.push(Step::ok("select", format!("database {db}"))),
        }
    }
    true
}

/// PING (timed) and INFO, judged. False when a step failed.
async fn probe(d: &mut Diagnosis, resp: &mut Resp, config: &Config) -> bool {
    let target = d.target.clone();
    let limit = config.probe_timeout;

    // PING, timed.
    let began = Instant::now();
    match send(resp, &target, limit, "PING", &[b"PING"]).await {
        Err(f) => return fail_io(d, "ping", f),
        Ok(Reply::Error(e)) => {
            let f = Failure::from_redis(&server_error(&e), &target);
            let noauth;
            let fix = if e.starts_with("NOAUTH") {
                noauth = format!("Redis requires a password: {}", target.password_fix());
                noauth.as_str()
            } else if e.starts_with("LOADING") {
                "wait: Redis is loading its dataset after a restart or failover; it answers when done"
            } else if e.starts_with("NOPERM") {
                "the ACL user may not run PING: grant it +ping (and +info) with ACL SETUSER"
            } else if e.starts_with("ERR max number of clients") {
                "raise maxclients, or find the client that leaks connections (CLIENT LIST)"
            } else {
                "see the server's answer"
            };
            d.steps.push(Step::fail("ping", f, fix));
            return false;
        }
        Ok(_) => d.ping = Some(began.elapsed()),
    }
    let took = d.ping.unwrap_or_default();

    // INFO, one section per command in one pipeline.
    let sections: Vec<[&[u8]; 2]> = info::SECTIONS
        .iter()
        .map(|s| [b"INFO".as_slice(), s.as_bytes()])
        .collect();
    let commands: Vec<&[&[u8]]> = sections.iter().map(|c| c.as_slice()).collect();
    let replies = match tokio::time::timeout(limit, resp.pipeline(&commands)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            ping_step(d, took, &[]);
            return fail_io(
                d,
                "info",
                Failure::from_redis(&RedisError::from(e), &target),
            );
        }
        Err(_) => {
            ping_step(d, took, &[]);
            return fail_io(
                d,
                "info",
                Failure::timeout(&target, Phase::Command("INFO"), limit),
            );
        }
    };
    let info = match replies.iter().find(|r| matches!(r, Reply::Error(_))) {
        Some(Reply::Error(e)) => Err(Failure::from_redis(&server_error(e), &target)),
        _ => {
            let text: Vec<String> = replies.iter().filter_map(Reply::text).collect();
            Ok(info::parse(&text.join("\n")))
        }
    };
    // The server's own judgement of what PING and INFO showed.
    let judged = verdict::redis(took, info.as_ref(), target.roles(), config.latency_slo);
    ping_step(d, took, &judged.findings);
    let summary = info.as_ref().map(summary).unwrap_or_default();
    let at_info: Vec<&Finding> = judged
        .findings
        .iter()
        .filter(|f| f.step == "info")
        .collect();
    d.steps.push(match (&judged.error, at_info.first()) {
        (Some(cause), _) => Step::fail("info", cause.failure.clone(), cause.fix.clone()),
        (None, Some(first)) => {
            let mut texts: Vec<&str> = at_info.iter().map(|f| f.text.as_str()).collect();
            if !summary.is_empty() {
                texts.push(&summary);
            }
            Step::warn("info", texts.join("; "), first.fix.clone())
        }
        (None, None) => Step::ok("info", summary.clone()),
    });
    d.findings.extend(judged.findings);
    d.info = info.ok();
    // A replica where Celery writes, or LOADING: the walk stops there.
    d.failure().is_none()
}

/// The PING step: its time, or the judgement's finding that it was slow.
fn ping_step(d: &mut Diagnosis, took: Duration, findings: &[Finding]) {
    let detail = format!("PONG in {:.2}ms", took.as_secs_f64() * 1e3);
    d.steps
        .push(match findings.iter().find(|f| f.step == "ping") {
            Some(slow) => Step::warn("ping", slow.text.clone(), slow.fix.clone()),
            None => Step::ok("ping", detail),
        });
}

/// What INFO says, in one line: version, role, clients, memory.
fn summary(i: &Info) -> String {
    let mut summary = vec![format!(
        "redis {}, {}",
        i.redis_version.as_deref().unwrap_or("?"),
        i.role.as_deref().unwrap_or("?")
    )];
    if let (Some(c), Some(m)) = (i.connected_clients, i.maxclients) {
        summary.push(format!("clients {c}/{m}"));
    }
    if let Some(used) = i.used_memory_bytes {
        let max = i.maxmemory_bytes.unwrap_or(0);
        let policy = i.maxmemory_policy.as_deref().unwrap_or("?");
        summary.push(if max == 0 {
            format!("memory {} (no limit, {policy})", mib(used))
        } else {
            format!("memory {} of {} ({policy})", mib(used), mib(max))
        });
    }
    summary.join("; ")
}

/// Celery's steps on the broker: queues and reservations, workers heard, and with `ping`
/// the workers' answers to `inspect ping`; judged by the server's own rules.
async fn celery_steps(d: &mut Diagnosis, c: &CeleryConfig, config: &Config, ping: bool) {
    use crate::celery::kombu::Naming;
    let target = d.target.clone();
    let configured = Naming::new(c, target.db());
    // Workers heard within two heartbeat intervals, under every key prefix (which apps are
    // alive decides which is watched, as in the server); with none required (and no ping),
    // the subscription alone is tried, so that a refusal is seen as the server sees it.
    let window = if c.min_workers == 0 && !ping {
        Duration::ZERO
    } else {
        Duration::from_millis(4500)
    };
    let heard = workers_heard(
        &target,
        &configured,
        c.keyprefix.is_some(),
        window,
        config.probe_timeout,
    )
    .await;
    let prefixes: Vec<(Vec<u8>, tokio::time::Instant)> = heard
        .as_ref()
        .map(|h| {
            h.iter()
                .filter(|(_, hosts)| !hosts.is_empty())
                .map(|(p, _)| (p.clone(), Instant::now()))
                .collect()
        })
        .unwrap_or_default();
    let queues = read_queues(&target, &configured, c, config, prefixes).await;
    // The names as found on the broker: the key prefix and separator the workers use.
    let naming = match &queues {
        Ok((obs, _)) => configured.with_layout(obs.layout.prefix.clone(), obs.layout.seps.clone()),
        Err(_) => configured.clone(),
    };
    // The workers heard under the prefix watched.
    let heard: Result<Vec<String>, Failure> =
        heard.map(|mut h| h.remove(naming.prefix()).unwrap_or_default());
    let channel = String::from_utf8_lossy(&naming.events_pattern()).into_owned();
    let alive = heard.as_ref().map_or(0, Vec::len);
    let seen = verdict::Seen {
        subscribed: heard.is_ok(),
        cause: heard.as_ref().err(),
        held: heard.is_ok(),
        in_grace: false,
        alive,
        down: &[],
        channel: &channel,
    };
    let observed = queues
        .as_ref()
        .map(|(obs, _)| obs.clone())
        .map_err(Clone::clone);
    let judged = verdict::celery(
        c,
        target.redacted(),
        config.latency_slo,
        None,
        &observed,
        &seen,
    );
    let mut findings = judged.findings;
    let step = |name: &'static str, detail: String, findings: &[Finding]| -> Step {
        if let Some(cause) = judged.error.as_ref().filter(|e| e.step == name) {
            return Step::fail(name, cause.failure.clone(), cause.fix.clone());
        }
        let mine: Vec<&Finding> = findings.iter().filter(|f| f.step == name).collect();
        match mine.first() {
            None => Step::ok(name, detail),
            Some(first) => {
                let mut texts: Vec<&str> = mine.iter().map(|f| f.text.as_str()).collect();
                texts.push(&detail);
                Step::warn(name, texts.join("; "), first.fix.clone())
            }
        }
    };

    // kombu's keys: where they were found.
    if let Ok((obs, _)) = &queues {
        let l = &obs.layout;
        let steps: Vec<String> = l.steps_seen.iter().map(u32::to_string).collect();
        let mut detail = format!(
            "key prefix {} ({}), separator {} ({}), priority steps holding tasks: {}",
            quoted([l.prefix.as_slice()]),
            l.prefix_from,
            quoted(l.seps.iter().map(Vec::as_slice)),
            l.sep_from,
            if steps.is_empty() {
                "none".to_string()
            } else {
                steps.join(",")
            }
        );
        if !l.other_prefixes.is_empty() {
            detail.push_str(&format!(
                "; other apps' key prefixes on this db: {} (set SIDECAR_CELERY_KEYPREFIX to watch another)",
                quoted(l.other_prefixes.iter().map(Vec::as_slice))
            ));
        }
        d.steps.push(step("celery keys", detail, &findings));
    }

    // Queues: depths only (how long a queue's front has not moved needs watching over
    // time: the server's /healthz has it).
    let detail = match &queues {
        Err(_) => String::new(),
        Ok((obs, discovered)) => {
            if !discovered {
                findings.push(Finding::new(
                    "celery queues",
                    "the walk of the binding sets did not finish in time, so queues may be missing",
                    "name the app's queues in SIDECAR_CELERY_QUEUES, or run check again (a large keyspace takes several passes)",
                ));
            }
            let list: Vec<String> = obs
                .queues
                .iter()
                .map(|q| format!("{} {}", q.name, q.length))
                .collect();
            let mut detail = format!(
                "{}; unacked {}, orphaned {}",
                list.join(", "),
                obs.unacked,
                obs.orphaned
            );
            if let Some(age) = obs.oldest_reservation {
                detail.push_str(&format!(
                    ", oldest reservation {}",
                    crate::celery::runner::human(age)
                ));
            }
            detail
        }
    };
    d.steps.push(step("celery queues", detail, &findings));

    // Workers.
    let detail = match &heard {
        Err(f) => f.message.clone(),
        Ok(_) if window.is_zero() => format!(
            "subscribed to {channel}; no worker required (SIDECAR_CELERY_MIN_WORKERS=0), none waited for"
        ),
        Ok(heard) if heard.is_empty() => {
            format!("none heard on {channel} in {}", show(window))
        }
        Ok(heard) => format!(
            "heard {} in {}: {}",
            heard.len(),
            show(window),
            heard.join(", ")
        ),
    };
    let mut workers = step("celery workers", detail, &findings);
    // The queues could not be read, so the judgement stopped there: a subscription that
    // failed too is still said.
    if let (Err(f), Verdict::Ok) = (&heard, workers.verdict) {
        workers = Step::fail(
            "celery workers",
            f.clone(),
            "the event channels cannot be subscribed: check the ACL (&* channels, +psubscribe) and the broker's connection",
        );
    }
    d.steps.push(workers);

    // The ping runs even when no worker was heard: a worker with events disabled
    // (no heartbeats reach this channel) still answers it.
    // The ping is written in the workers' own separator (from their pidbox bindings),
    // whatever SIDECAR_CELERY_SEP says: a worker reads the reply binding with its own, and
    // one that cannot logs a control command error. Workers with two separators cannot
    // both be spoken to.
    // Members of SIGKILLed workers stay in the pidbox bindings: the separators of the
    // workers heard are the ones that count, when some were heard.
    let mut workers_seps: Vec<(Vec<u8>, Vec<String>)> = queues
        .as_ref()
        .map(|(obs, _)| obs.layout.workers_seps.clone())
        .unwrap_or_default();
    if let Ok(hosts) = &heard
        && workers_seps
            .iter()
            .any(|(_, members)| members.iter().any(|m| hosts.contains(m)))
    {
        workers_seps.retain(|(_, members)| members.iter().any(|m| hosts.contains(m)));
    }
    // The most used first.
    workers_seps.sort_by_key(|(sep, members)| (std::cmp::Reverse(members.len()), sep.clone()));
    if ping && workers_seps.len() > 1 {
        let seps = quoted(workers_seps.iter().map(|(s, _)| s.as_slice()));
        let finding = Finding::new(
            "celery ping",
            format!(
                "not sent: the workers' pidbox bindings use several separators ({seps}), and a worker that cannot read the request's logs an error"
            ),
            "stop the workers of the old configuration (or remove their stale members from _kombu.binding.celery.pidbox)",
        );
        d.steps.push(Step::warn(
            "celery ping",
            finding.text.clone(),
            finding.fix.clone(),
        ));
        findings.push(finding);
    } else if ping {
        let naming = match workers_seps.first() {
            Some((sep, _)) => naming.with_layout(naming.prefix().to_vec(), vec![sep.clone()]),
            None => naming.clone(),
        };
        let heard_some = alive > 0;
        match crate::pidbox::ping(&target, &naming, Duration::from_secs(1), config.probe_timeout).await {
            Err(f) => d.steps.push(Step::fail("celery ping", f, "the broker refused the ping's commands")),
            Ok(replies) if replies.is_empty() => d.steps.push(Step::fail(
                "celery ping",
                Failure::new(Reason::Other, "no worker answered inspect ping within 1s"),
                if heard_some {
                    "workers that heartbeat but do not answer are stuck (a busy solo or threads pool answers only between tasks), or listen on another broker or db"
                } else {
                    "are the workers running, with this broker URL and db, and the same key prefix?"
                },
            )),
            Ok(replies) => {
                let list: Vec<String> = replies
                    .iter()
                    .map(|(w, t)| format!("{w} in {:.1}ms", t.as_secs_f64() * 1e3))
                    .collect();
                // Workers that answer are alive, whatever their heartbeats said.
                if replies.len() >= c.min_workers as usize
                    && let Some(workers) = d
                        .steps
                        .iter_mut()
                        .find(|s| s.name == "celery workers" && s.verdict == Verdict::Fail)
                {
                    let finding = Finding::new(
                        "celery workers",
                        format!("{}, but {} answered inspect ping", workers.detail, replies.len()),
                        "their heartbeats do not reach the event channel: a busy solo-pool worker pauses them, --without-heartbeat turns them off; the server's celery check counts workers by heartbeat",
                    );
                    workers.verdict = Verdict::Warn;
                    workers.reason = None;
                    workers.detail = finding.text.clone();
                    workers.fix = Some(finding.fix.clone());
                    findings.push(finding);
                }
                d.steps.push(Step::ok("celery ping", list.join(", ")));
            }
        }
    }
    d.findings.extend(findings);
}

/// The queue probe's passes until the walk of the binding sets is done (a large keyspace
/// takes several), then one that reads every queue found; all under one deadline. With the
/// observation, whether the walk finished.
async fn read_queues(
    target: &Target,
    naming: &crate::celery::kombu::Naming,
    c: &CeleryConfig,
    config: &Config,
    heard: Vec<(Vec<u8>, tokio::time::Instant)>,
) -> Result<(crate::celery::queues::QueueObservation, bool), Failure> {
    let pool = crate::pool::TargetPool::new(target, config.probe_timeout, config.auth_recheck)?;
    // Discovery gets a generous share: the check runs once.
    let probe =
        crate::celery::queues::QueueProbe::new(pool, naming.clone(), c, config.probe_timeout * 4);
    probe.heard(heard);
    let limit = config.probe_timeout * 4;
    let passes = async {
        loop {
            let obs = probe.probe().await?;
            if obs.discovered {
                return probe.probe().await.map(|obs| (obs, true));
            }
        }
    };
    match tokio::time::timeout(limit, passes).await {
        Ok(result) => result,
        // Out of time: what one more pass sees, said to be incomplete.
        Err(_) => match tokio::time::timeout(config.probe_timeout, probe.probe()).await {
            Ok(result) => result.map(|obs| (obs, false)),
            Err(_) => Err(Failure::timeout(
                target,
                Phase::Command("LLEN"),
                config.probe_timeout,
            )),
        },
    }
}

/// The workers whose events arrive within `window`, by key prefix: every prefix's with the
/// wide subscription, else the prefix of `naming` (none is waited for with a zero window:
/// the subscription itself is then the test).
async fn workers_heard(
    target: &Target,
    naming: &crate::celery::kombu::Naming,
    prefix_set: bool,
    window: Duration,
    limit: Duration,
) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<String>>, Failure> {
    use crate::celery::subscriber::{Push, subscribe_events};
    let (mut resp, narrow) = subscribe_events(target, naming, prefix_set, limit).await?;
    let mut heard: std::collections::BTreeMap<Vec<u8>, Vec<String>> = Default::default();
    if let Some(n) = &narrow {
        heard.insert(n.prefix().to_vec(), Vec::new());
    }
    let until = Instant::now() + window;
    while let Ok(Ok(reply)) = tokio::time::timeout_at(until, resp.read()).await {
        let Push::Message { channel, payload } = Push::from(reply) else {
            continue;
        };
        let Some((prefix, _)) = naming.split_event_channel(&channel) else {
            continue;
        };
        let Ok(events) = crate::celery::event::decode(&payload) else {
            continue;
        };
        for e in events.into_iter().flatten() {
            if let crate::celery::event::Event::Worker(w) = e
                && w.kind != crate::celery::event::WorkerKind::Offline
            {
                if heard.len() >= crate::celery::MAX_PREFIXES && !heard.contains_key(prefix) {
                    continue;
                }
                let hosts = heard.entry(prefix.to_vec()).or_default();
                if !hosts.contains(&w.hostname) {
                    hosts.push(w.hostname);
                }
            }
        }
    }
    for hosts in heard.values_mut() {
        hosts.sort();
    }
    Ok(heard)
}

/// The `/healthz`-like view of a diagnosis, for `check --json` and the exit code.
pub fn check_json(d: &Diagnosis) -> Value {
    let verdict = d.verdict();
    let status = match verdict {
        Verdict::Fail => "unhealthy",
        Verdict::Warn => "degraded",
        _ => "healthy",
    };
    let failure = d.failure();
    let warnings: Vec<&str> = d.findings.iter().map(|f| f.text.as_str()).collect();
    json!({
        "status": status,
        "endpoint": d.target.redacted(),
        "latency_ms": d.ping.map(|p| (p.as_secs_f64() * 1e6).round() / 1e3),
        "error": failure.map(|s| s.detail.clone()),
        "reason": failure.and_then(|s| s.reason).map(Reason::as_str),
        "fix": failure
            .and_then(|s| s.fix.clone())
            .or_else(|| d.findings.first().map(|f| f.fix.clone())),
        "warnings": warnings,
        "findings": d.findings,
        "steps": d.steps.iter().map(|s| json!({
            "step": s.name,
            "status": s.verdict.as_str().to_ascii_lowercase(),
            "detail": s.detail,
            "fix": s.fix,
            "ms": s.took.map(|t| (t.as_secs_f64() * 1e6).round() / 1e3),
        })).collect::<Vec<_>>(),
    })
}
