//! The fields of Redis `INFO` the sidecar reports, parsed from INFO's text by a pure function.

/// INFO sections a probe asks for, one command each (Redis before 7.0 takes one per call).
/// Never `INFO ALL`: `commandstats` and the module sections cost the server more, and
/// nothing here reads them. `keyspace` is a line per database (16 by default).
pub const SECTIONS: [&str; 7] = [
    "server",
    "clients",
    "memory",
    "stats",
    "replication",
    "persistence",
    "keyspace",
];

/// Databases read from `keyspace` at most (garbage cannot grow the list).
const MAX_DBS: usize = 256;

/// One database's line of INFO `keyspace`: `db1:keys=4082,expires=2082,avg_ttl=86000000`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbKeys {
    pub db: i64,
    pub keys: u64,
    /// Keys with a TTL.
    pub expires: u64,
    /// Their average TTL in milliseconds (an estimate Redis keeps from samples).
    pub avg_ttl_ms: u64,
}

/// What INFO said; a field is `None` when this server's INFO does not have it. Serialized
/// as a Redis check's `details` show it, in this order (the health flags are judged, not
/// shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// `master` or `slave`, as Redis says it.
    pub role: Option<String>,
    pub redis_version: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub connected_clients: Option<u64>,
    pub blocked_clients: Option<u64>,
    pub maxclients: Option<u64>,
    pub used_memory_bytes: Option<u64>,
    /// 0 means no limit.
    pub maxmemory_bytes: Option<u64>,
    pub maxmemory_policy: Option<String>,
    pub evicted_keys: Option<u64>,
    pub rejected_connections: Option<u64>,
    #[serde(skip)]
    pub loading: Option<bool>,
    /// `ok` or `err`: whether the last RDB save worked.
    #[serde(skip)]
    pub rdb_last_bgsave_status: Option<String>,
    /// `ok` or `err`: whether the last AOF write worked.
    #[serde(skip)]
    pub aof_last_write_status: Option<String>,
    /// The `keyspace` section: `None` when INFO did not have it, else its databases (a
    /// database without keys has no line).
    #[serde(skip)]
    pub keyspace: Option<Vec<DbKeys>>,
}

impl Info {
    /// The keys of database `db`, when INFO listed the keyspace (zero when `db` has none).
    pub fn db(&self, db: i64) -> Option<DbKeys> {
        let dbs = self.keyspace.as_ref()?;
        Some(dbs.iter().find(|d| d.db == db).copied().unwrap_or(DbKeys {
            db,
            ..DbKeys::default()
        }))
    }
}

/// `db1:keys=4082,expires=2082,avg_ttl=86000000,subexpiry=0` (`subexpiry` since 7.4).
fn db_line(key: &str, value: &str) -> Option<DbKeys> {
    let db = key.strip_prefix("db")?.parse().ok()?;
    let mut keys = None;
    let mut d = DbKeys {
        db,
        ..DbKeys::default()
    };
    for field in value.trim().split(',') {
        let (k, v) = field.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "keys" => keys = Some(v),
            "expires" => d.expires = v,
            "avg_ttl" => d.avg_ttl_ms = v,
            _ => {}
        }
    }
    d.keys = keys?;
    Some(d)
}

/// Parses INFO text (`# Section` headers, `key:value` lines, CRLF or LF). Unknown keys and
/// malformed lines are skipped; values that do not parse leave the field `None`.
pub fn parse(text: &str) -> Info {
    let mut info = Info::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            if line
                .trim_start_matches('#')
                .trim()
                .eq_ignore_ascii_case("keyspace")
            {
                info.keyspace.get_or_insert_with(Vec::new);
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.starts_with("db")
            && let Some(d) = db_line(key, value)
        {
            let dbs = info.keyspace.get_or_insert_with(Vec::new);
            if dbs.len() < MAX_DBS {
                dbs.push(d);
            }
            continue;
        }
        let number = || value.trim().parse::<u64>().ok();
        let word = || Some(value.trim().chars().take(64).collect::<String>());
        match key {
            "redis_version" => info.redis_version = word(),
            "uptime_in_seconds" => info.uptime_seconds = number(),
            "connected_clients" => info.connected_clients = number(),
            "blocked_clients" => info.blocked_clients = number(),
            "maxclients" => info.maxclients = number(),
            "used_memory" => info.used_memory_bytes = number(),
            "maxmemory" => info.maxmemory_bytes = number(),
            "maxmemory_policy" => info.maxmemory_policy = word(),
            "evicted_keys" => info.evicted_keys = number(),
            "rejected_connections" => info.rejected_connections = number(),
            "role" => info.role = word(),
            "loading" => info.loading = number().map(|n| n != 0),
            "rdb_last_bgsave_status" => info.rdb_last_bgsave_status = word(),
            "aof_last_write_status" => info.aof_last_write_status = word(),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real INFO text captured from redis-server 7.0.15 started with
    /// `--maxmemory 64mb --maxmemory-policy allkeys-lru`.
    const REDIS_7: &str = include_str!("../../tests/fixtures/info-redis-7.0.15.txt");

    #[test]
    fn parses_real_info() {
        let info = parse(REDIS_7);
        assert_eq!(info.redis_version.as_deref(), Some("7.0.15"));
        assert_eq!(info.connected_clients, Some(1));
        assert_eq!(info.blocked_clients, Some(0));
        assert_eq!(info.maxclients, Some(10000));
        assert_eq!(info.maxmemory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(info.maxmemory_policy.as_deref(), Some("allkeys-lru"));
        assert!(info.used_memory_bytes.is_some_and(|m| m > 100_000));
        assert_eq!(info.evicted_keys, Some(0));
        assert_eq!(info.rejected_connections, Some(0));
        assert_eq!(info.role.as_deref(), Some("master"));
        assert_eq!(info.loading, Some(false));
        assert_eq!(info.rdb_last_bgsave_status.as_deref(), Some("ok"));
        assert_eq!(info.aof_last_write_status.as_deref(), Some("ok"));
        assert!(info.uptime_seconds.is_some());
    }

    #[test]
    fn reads_the_keyspace() {
        let info = parse(
            "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb1:keys=4082,expires=2082,avg_ttl=86000000,subexpiry=0\r\ndb2:keys=x\r\n",
        );
        assert_eq!(
            info.db(1),
            Some(DbKeys {
                db: 1,
                keys: 4082,
                expires: 2082,
                avg_ttl_ms: 86_000_000
            })
        );
        assert_eq!(info.db(0).map(|d| (d.keys, d.expires)), Some((3, 0)));
        assert_eq!(info.db(2).map(|d| d.keys), Some(0), "a bad line is skipped");
        assert_eq!(info.db(5).map(|d| d.keys), Some(0), "no line: no keys");
        assert_eq!(
            parse("# Server\nrole:master\n").db(0),
            None,
            "no keyspace asked"
        );
        assert_eq!(parse("# Keyspace\n").db(0).map(|d| d.keys), Some(0));
    }

    /// Celery 5.7 with result_expires=None: its results have no TTL (captured, with the
    /// MONITOR lines of the write).
    #[test]
    fn reads_a_real_keyspace_of_results_kept_forever() {
        let text = include_str!("../../tests/fixtures/celery/41-result-without-expiry.txt");
        let info = parse(text);
        assert_eq!(info.db(1).map(|d| (d.keys, d.expires)), Some((1, 0)));
        assert_eq!(info.db(0).map(|d| (d.keys, d.expires)), Some((5, 0)));
        assert!(text.contains("\"SET\" \"celery-task-meta-") && !text.contains("\"SETEX\""));
    }

    #[test]
    fn tolerates_garbage_and_missing_fields() {
        let info = parse("# Clients\nconnected_clients:x\nmaxclients\n\n:::\nrole:slave\r\n");
        assert_eq!(info.connected_clients, None);
        assert_eq!(info.maxclients, None);
        assert_eq!(info.role.as_deref(), Some("slave"));
        assert_eq!(parse(""), Info::default());
    }
}
