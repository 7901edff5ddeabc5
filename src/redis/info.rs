//! The fields of Redis `INFO` the sidecar reports, parsed from INFO's text by a pure function.

/// INFO sections a probe asks for, one command each (Redis before 7.0 takes one per call).
/// Never `INFO ALL`: the `commandstats` and `keyspace` sections cost the server more.
pub const SECTIONS: [&str; 6] = [
    "server",
    "clients",
    "memory",
    "stats",
    "replication",
    "persistence",
];

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
}

/// Parses INFO text (`# Section` headers, `key:value` lines, CRLF or LF). Unknown keys and
/// malformed lines are skipped; values that do not parse leave the field `None`.
pub fn parse(text: &str) -> Info {
    let mut info = Info::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
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
    fn tolerates_garbage_and_missing_fields() {
        let info = parse("# Clients\nconnected_clients:x\nmaxclients\n\n:::\nrole:slave\r\n");
        assert_eq!(info.connected_clients, None);
        assert_eq!(info.maxclients, None);
        assert_eq!(info.role.as_deref(), Some("slave"));
        assert_eq!(parse(""), Info::default());
    }
}
