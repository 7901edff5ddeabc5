//! Celery's `inspect ping` over plain Redis commands, for `check --ping` (never the
//! server loop, which stays read-only). The recipe is kombu's, as captured in
//! shared/celery-on-redis.md §7: bind a reply queue, publish the request on the pidbox
//! fanout channel, pop replies until the deadline, keep those carrying our ticket, unbind
//! and delete what was created.
//!
//! The one hazard: a request without `properties.delivery_tag` makes every worker drop its
//! broker connection (a KeyError in kombu) and come back offline/online. The envelope
//! built here always carries one, and a unit test holds it there.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::celery::kombu::{self, Naming};
use crate::redis::failure::{Failure, Phase};
use crate::redis::target::Target;

const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Replies with more workers than this are not read: a diagnosis does not need them.
const MAX_REPLIES: usize = 1000;

/// A random-enough unique id (no uuid crate): the process id, the time and the std
/// hasher's per-process random keys, formatted like a uuid.
pub fn unique_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    let x = (u128::from(a) << 64) | u128::from(b);
    let s = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    )
}

/// The keys and members one request creates, named from the requester's id.
pub struct Request {
    pub oid: String,
    pub ticket: String,
    /// `<prefix>_kombu.binding.reply.celery.pidbox`
    pub binding: Vec<u8>,
    /// `oid SEP SEP oid.reply.celery.pidbox`
    pub member: Vec<u8>,
    /// `<prefix>_kombu.binding_deadlines`
    pub deadlines: Vec<u8>,
    /// The reply list and its priority keys.
    pub reply_keys: Vec<Vec<u8>>,
    /// `<prefix>/<db>.celery.pidbox`
    pub channel: Vec<u8>,
    /// The published envelope.
    pub envelope: String,
}

impl Request {
    pub fn ping(naming: &Naming) -> Request {
        let oid = unique_id();
        let ticket = unique_id();
        let reply_queue = format!("{oid}.{REPLY_EXCHANGE}");
        let mut member = oid.as_bytes().to_vec();
        member.extend_from_slice(naming.sep());
        member.extend_from_slice(naming.sep());
        member.extend_from_slice(reply_queue.as_bytes());
        let body = json!({
            "method": "ping",
            "arguments": {},
            "destination": null,
            "pattern": null,
            "matcher": null,
            "ticket": ticket,
            "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
        });
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            + 10.0;
        let envelope = json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"clock": 1, "expires": expires},
            "properties": {
                "delivery_mode": 2,
                "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
                "priority": 0,
                "body_encoding": "base64",
                // Mandatory: without it every worker drops its broker connection.
                "delivery_tag": unique_id(),
            },
        });
        Request {
            binding: naming.prefixed(format!("_kombu.binding.{REPLY_EXCHANGE}").as_bytes()),
            deadlines: naming.prefixed(b"_kombu.binding_deadlines"),
            // Every key a reply can be under, whatever the workers' priority steps.
            reply_keys: naming
                .with_layout(naming.prefix().to_vec(), vec![naming.sep().to_vec()])
                .queue_keys(&reply_queue)
                .into_iter()
                .map(|k| k.key)
                .collect(),
            channel: naming.prefixed(format!("/{}.celery.pidbox", naming.db()).as_bytes()),
            envelope: envelope.to_string(),
            member,
            oid,
            ticket,
        }
    }

    /// The workers' names in a reply carrying our ticket (`{"w1@host": {"ok": "pong"}}`),
    /// or nothing for another requester's reply or garbage.
    pub fn answered_by(&self, payload: &[u8]) -> Vec<String> {
        let Ok(message) = kombu::decode(payload) else {
            return Vec::new();
        };
        let ticket = message
            .envelope
            .get("headers")
            .and_then(|h| h.get("ticket"));
        if ticket.and_then(Value::as_str) != Some(self.ticket.as_str()) {
            return Vec::new();
        }
        match message.body {
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

/// Pings every worker listening on the broker: the workers that answered within `window`
/// and the time each reply took, sorted by name. `limit` bounds connecting and each
/// command. The binding and the reply list are removed afterwards, also after a failure.
pub async fn ping(
    target: &Target,
    naming: &Naming,
    window: Duration,
    limit: Duration,
) -> Result<Vec<(String, Duration)>, Failure> {
    let target = &crate::redis::sentinel::resolve(target, limit).await?;
    let fail = |e: &RedisError| Failure::from_redis(e, target);
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(window + limit));
    let mut conn =
        match tokio::time::timeout(limit, crate::redis::pool::open(&config, target, limit)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(_) => return Err(Failure::timeout(target, Phase::Connect, limit)),
        };
    let request = Request::ping(naming);
    let result = exchange(&mut conn, &request, window, limit).await;
    let cleanup = cleanup(&mut conn, &request, limit).await;
    let replies = result.map_err(|e| fail(&e))?;
    cleanup.map_err(|e| fail(&e))?;
    Ok(replies)
}

async fn exchange(
    conn: &mut MultiplexedConnection,
    r: &Request,
    window: Duration,
    limit: Duration,
) -> Result<Vec<(String, Duration)>, RedisError> {
    // The deadline in the server's time, as kombu's script does: with the sidecar's own
    // clock behind the server's, it could be written already overdue, and kombu's sweep
    // would delete the whole reply binding table mid-request.
    let (secs, micros): (u64, u64) = timed(limit, redis::cmd("TIME").query_async(conn)).await?;
    let now_ms = u128::from(secs) * 1000 + u128::from(micros) / 1000;
    let mut bind = redis::pipe();
    bind.cmd("SADD").arg(&r.binding).arg(&r.member).ignore();
    // As kombu does: an overdue deadline makes the sweep delete the whole binding table.
    bind.cmd("ZADD")
        .arg(&r.deadlines)
        .arg("GT")
        .arg((now_ms + 3_600_000).to_string())
        .arg(REPLY_EXCHANGE)
        .ignore();
    timed(limit, bind.query_async::<()>(conn)).await?;
    let sent = Instant::now();
    timed(
        limit,
        redis::cmd("PUBLISH")
            .arg(&r.channel)
            .arg(&r.envelope)
            .query_async::<i64>(conn),
    )
    .await?;
    let until = sent + window;
    let mut replies: Vec<(String, Duration)> = Vec::new();
    let mut seen = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(5) || seen >= MAX_REPLIES {
            break;
        }
        let popped: Option<(Vec<u8>, Vec<u8>)> = timed(
            window + limit,
            redis::cmd("BRPOP")
                .arg(&r.reply_keys)
                .arg(format!("{:.3}", left.as_secs_f64()))
                .query_async(conn),
        )
        .await?;
        let Some((_, payload)) = popped else {
            break;
        };
        seen += 1;
        let took = sent.elapsed();
        for worker in r.answered_by(&payload) {
            if !replies.iter().any(|(w, _)| *w == worker) {
                replies.push((worker, took));
            }
        }
    }
    replies.sort();
    Ok(replies)
}

/// Unbinds and deletes the reply list. The deadline entry kombu's recipe adds is removed
/// too when no other requester's binding is left, so a ping leaves no key behind (a
/// binding without a deadline is never swept, so removing it cannot hurt a concurrent
/// requester).
async fn cleanup(
    conn: &mut MultiplexedConnection,
    r: &Request,
    limit: Duration,
) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    pipe.cmd("SREM").arg(&r.binding).arg(&r.member).ignore();
    pipe.cmd("DEL").arg(&r.reply_keys).ignore();
    pipe.cmd("SCARD").arg(&r.binding);
    let (left,): (u64,) = timed(limit, pipe.query_async(conn)).await?;
    if left == 0 {
        timed(
            limit,
            redis::cmd("ZREM")
                .arg(&r.deadlines)
                .arg(REPLY_EXCHANGE)
                .query_async::<()>(conn),
        )
        .await?;
    }
    Ok(())
}

async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}", crate::text::show(limit)),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::cli::Settings;

    fn naming(prefix: &str) -> Naming {
        let s = Settings {
            celery_keyprefix: Some(prefix.to_string()),
            ..Settings::default()
        };
        Naming::new(&Config::from_settings(&s).unwrap().celery, 3)
    }

    #[test]
    fn the_request_is_kombus() {
        let r = Request::ping(&naming("app:"));
        assert_eq!(r.binding, b"app:_kombu.binding.reply.celery.pidbox");
        assert_eq!(r.deadlines, b"app:_kombu.binding_deadlines");
        assert_eq!(r.channel, b"app:/3.celery.pidbox");
        let queue = format!("{}.reply.celery.pidbox", r.oid);
        assert_eq!(r.reply_keys[0], format!("app:{queue}").into_bytes());
        assert_eq!(
            r.reply_keys.len(),
            10,
            "the queue's key and every step 1 to 9"
        );
        assert_eq!(
            r.reply_keys[9],
            format!("app:{queue}\x06\x169").into_bytes()
        );
        assert_eq!(
            r.member,
            format!("{}\x06\x16\x06\x16{queue}", r.oid).into_bytes()
        );
        let env: Value = serde_json::from_str(&r.envelope).unwrap();
        // The hazard: without a delivery_tag every worker drops its connection.
        assert!(env["properties"]["delivery_tag"].as_str().unwrap().len() >= 32);
        let msg = kombu::decode(r.envelope.as_bytes()).unwrap();
        assert_eq!(msg.body["method"], "ping");
        assert_eq!(msg.body["ticket"], r.ticket.as_str());
        assert_eq!(msg.body["reply_to"]["routing_key"], r.oid.as_str());
        assert_eq!(msg.body["reply_to"]["exchange"], "reply.celery.pidbox");
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| unique_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert_eq!(unique_id().len(), 36);
    }

    fn reply(ticket: &str, body: &str) -> Vec<u8> {
        json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"ticket": ticket, "clock": 5},
            "properties": {"delivery_mode": 1, "body_encoding": "base64", "delivery_tag": "x"},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn only_our_ticket_counts() {
        let r = Request::ping(&naming(""));
        let body = r#"{"w2@vm": {"ok": "pong"}}"#;
        assert_eq!(r.answered_by(&reply(&r.ticket, body)), ["w2@vm"]);
        assert!(r.answered_by(&reply("another", body)).is_empty());
        assert!(r.answered_by(b"garbage").is_empty());
        assert!(r.answered_by(&reply(&r.ticket, "[1]")).is_empty());
    }
}
