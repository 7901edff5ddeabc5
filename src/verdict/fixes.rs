//! What to do about a failed probe, by its cause: one text for the server's report (and so
//! `/healthz`, the status page and notifications) and for `check`'s step that failed.

use crate::redis::failure::{Failure, Reason};
use crate::redis::target::{Address, Target};

/// The fix for `f`, a failure reaching or asking `target`.
pub fn failure_fix(f: &Failure, target: &Target) -> String {
    let m = f.message.as_str();
    let has = |s: &str| m.contains(s);
    // What the server said first: a few answers tell more than their reason.
    if has("max number of clients") {
        return "raise maxclients, or find the client that leaks connections (CLIENT LIST)".into();
    }
    if has("LOADING") {
        return "wait: Redis is loading its dataset after a restart or failover; it answers when done".into();
    }
    if has("without any password configured") {
        return "the server has no password: remove it from the URL".into();
    }
    if has("NOAUTH") {
        return format!("Redis requires a password: {}", target.password_fix());
    }
    if has("NOPERM") {
        return "the ACL user may not run what the sidecar needs: grant it +ping and +info (docs/configuration.md lists the rest) with ACL SETUSER".into();
    }
    if has("DB index is out of range") {
        return "use a database below the server's `databases` (16 by default; Redis Cluster has only 0)".into();
    }
    if let Some(s) = target.sentinels() {
        if has("no sentinel named the master") {
            let miss = if has("knows no master named") {
                Some("unknown_name")
            } else if f.reason == Reason::Auth {
                Some("auth")
            } else {
                None
            };
            return crate::verdict::sentinel_fix(miss, s);
        }
        // A failure reaching the address the sentinels announce (it names it).
        if matches!(f.reason, Reason::Connect | Reason::Timeout | Reason::Dns)
            && let Some(m) = s.current()
            && (has(&m.to_string()) || has(&format!("lookup of {}", m.host)))
        {
            return format!(
                "the sentinels announce the master at {m}, and it cannot be reached from here: if that is a container's own address, set `replica-announce-ip` on the Redis servers and `sentinel announce-ip` on the sentinels to an address the app can reach; otherwise the master is down and the sentinels have not failed over yet"
            );
        }
    }
    match f.reason {
        Reason::Dns => {
            let railway = matches!(target.address(), Address::Tcp { host, .. } if host.ends_with(".railway.internal"));
            if railway {
                "*.railway.internal names resolve only inside Railway's private network: run the sidecar as a service of the same project, or from outside use the public URL (REDIS_PUBLIC_URL, the TCP proxy)".into()
            } else {
                "check the host name for typos; `getent hosts <host>` on this machine must answer".into()
            }
        }
        Reason::Connect => {
            "start Redis, or fix the port (Railway's private Redis port is 6379); `protected-mode` and `bind` decide which interfaces Redis listens on".into()
        }
        Reason::Timeout if has("no connection to") => {
            "packets are dropped or the host is down: check firewalls, security groups and that Redis listens on this interface (`bind`)".into()
        }
        Reason::Timeout => {
            "Redis is hung, paused or overloaded: look for a long command (SLOWLOG GET, LATENCY DOCTOR) or a saving fork on a full machine".into()
        }
        Reason::Auth => format!(
            "the user or password in {} is not the server's: on Railway reference ${{{{Redis.REDIS_URL}}}} rather than copying it",
            target.credentials_home()
        ),
        Reason::Tls => {
            "check the URL's scheme (rediss:// only for a TLS port) and its ssl_ parameters; `check` walks the handshake step by step".into()
        }
        _ => "run `redis-celery-sidecar check`: it walks the connection step by step and names the failing one".into(),
    }
}
