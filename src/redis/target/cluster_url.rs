//! `redis+cluster://[user:password@]host[:port][,host[:port]...][/0]`: a Redis Cluster
//! as a cache, its nodes the seeds the probe starts from (redis-py's `RedisCluster` takes
//! one node and finds the rest, as the probe does).

use super::{Address, Role, Target, UrlError, node};
use crate::redis::cluster::Cluster;
use crate::redis::pyurl;
use crate::redis::target::Node;

/// The Cluster target `text` names.
pub(super) fn read(
    role: Role,
    variable: &'static str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Target, UrlError> {
    let url = pyurl::split(text);
    url.check_brackets().map_err(|e| UrlError(e.to_string()))?;
    let decoded = |raw: Option<&str>| raw.map(pyurl::unquote).filter(|v| !v.is_empty());
    let (user, password) = {
        let (u, p) = url.userinfo();
        (decoded(u), decoded(p))
    };
    let hosts = url.netloc.rsplit_once('@').map_or(url.netloc, |(_, h)| h);
    let mut seeds = Vec::new();
    for hostport in hosts.split(',') {
        seeds.push(node(hostport, 6379)?);
    }
    let db = pyurl::unquote(url.path);
    let db = db.trim_matches('/');
    if !db.is_empty() && db != "0" {
        return Err(UrlError(
            "Redis Cluster has only database 0: remove the database from the URL".into(),
        ));
    }
    if !url.query.is_empty() {
        warnings.push(format!(
            "{variable}: the parameters after '?' are not used for Redis Cluster"
        ));
    }
    let first = seeds[0].clone();
    let mut target = Target::new(
        role,
        Address::Tcp {
            host: first.host,
            port: first.port,
            tls: None,
        },
        0,
        user,
        password,
    );
    let userinfo = super::userinfo(target.user.as_deref(), target.password.is_some());
    let nodes: Vec<String> = seeds.iter().map(Node::to_string).collect();
    target.redacted = format!("redis+cluster://{userinfo}{}/0", nodes.join(","));
    target.cluster = Some(Cluster::new(seeds));
    Ok(target)
}
