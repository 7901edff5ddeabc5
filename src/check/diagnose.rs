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

use crate::config::{CeleryConfig, Config};
use crate::redis::failure::{Failure, Phase, Reason, server_error};
use crate::redis::info::{self, Info};
use crate::redis::resp::{Reply, Resp, Stream};
use crate::redis::target::{Address, Target};
use crate::text::{quoted, show};
use crate::verdict::{self, Finding, mib};

mod celery;
mod cluster;
mod connect;
mod sentinel;

use celery::celery_steps;
use cluster::cluster_steps;
use connect::connect;
use sentinel::{announced_unreachable, sentinel_steps};

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
    if !sentinel_steps(&mut d, limit).await {
        return d;
    }
    // A cluster: the first of its nodes that accepts.
    d.target = crate::redis::cluster::pick(&d.target, limit).await;
    let Some(stream) = connect(&mut d, limit).await else {
        announced_unreachable(&mut d, target);
        return d;
    };
    let mut resp = Resp::new(stream);
    if !session(&mut d, &mut resp, config).await || !cluster_steps(&mut d, &mut resp, config).await
    {
        return d;
    }
    if celery {
        celery_steps(&mut d, &config.celery, config, ping).await;
    }
    d
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
    let target = &crate::redis::sentinel::resolve(target, limit).await?;
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

/// [`link`] as the Celery event subscription takes it ([`crate::celery::subscriber::Link`]).
pub fn link_boxed(
    target: &Target,
    limit: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, Failure>> + Send + '_>> {
    Box::pin(link(target, limit))
}

/// Names the connection in CLIENT LIST (`CLIENT SETNAME`). A refusal of the command itself
/// (an ACL without it, a server without it) is ignored, as the pool does; any other error,
/// such as "max number of clients reached" written before a close, is the failure.
async fn name(resp: &mut Resp, target: &Target, limit: Duration) -> Result<(), Failure> {
    use crate::redis::capability::{self, Collector};
    let key = target.redacted();
    if capability::refused(key, Collector::ClientName).is_some() {
        return Ok(());
    }
    let name: [&[u8]; 3] = [
        b"CLIENT",
        b"SETNAME",
        crate::redis::pool::CLIENT_NAME.as_bytes(),
    ];
    match send(resp, target, limit, "CLIENT", &name).await? {
        Reply::Error(e) if capability::is_refusal(&e) => {
            let failure = Failure::from_redis(&server_error(&e), target);
            capability::record_refusal(key, Collector::ClientName, &failure);
            Ok(())
        }
        Reply::Error(e) if !e.contains("unknown") => {
            Err(Failure::from_redis(&server_error(&e), target))
        }
        Reply::Error(_) => Ok(()),
        _ => {
            capability::record_allowed(key, Collector::ClientName);
            Ok(())
        }
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
                    let fix = crate::verdict::failure_fix(&f, &target);
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
    let summary = info
        .as_ref()
        .map(|i| summary(i, target.db()))
        .unwrap_or_default();
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
fn summary(i: &Info, db: i64) -> String {
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
    // The target's database, when it holds keys: how many have no TTL (a result backend's
    // results kept forever show here).
    if let Some(k) = i.db(db).filter(|k| k.keys > 0) {
        summary.push(format!(
            "db {db}: {} keys, {} without a TTL",
            k.keys,
            k.keys.saturating_sub(k.expires)
        ));
    }
    // One look cannot tell when they were (the server watches them rise): the count since
    // Redis started, when there are any.
    if let Some(evicted) = i.evicted_keys.filter(|e| *e > 0) {
        summary.push(format!("{evicted} keys evicted since Redis started"));
    }
    summary.join("; ")
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
