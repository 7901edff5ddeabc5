//! Redis Cluster as a cache (`redis+cluster://`): the nodes found with `CLUSTER NODES`,
//! the state and slots of `CLUSTER INFO`, and each node's PING, for `/healthz`, the
//! metrics and `check`. Connections go to the first node that accepts, of the masters
//! known from the last look and the URL's seeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use crate::redis::raw::{self, Node, RawError};
use crate::redis::resp::Reply;
use crate::redis::target::Target;

/// Slots in every Redis Cluster.
pub const SLOTS: u32 = 16384;

/// A cluster's seeds (the URL's nodes) and what the last look found. Clones share it.
#[derive(Clone)]
pub struct Cluster {
    pub seeds: Vec<Node>,
    last: Arc<Mutex<Option<View>>>,
}

impl PartialEq for Cluster {
    fn eq(&self, other: &Cluster) -> bool {
        self.seeds == other.seeds
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .finish()
    }
}

/// What `CLUSTER INFO` and `CLUSTER NODES` say, and each node's PING.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    /// `cluster_state`: `ok` or `fail`.
    pub state: String,
    pub slots_assigned: u32,
    pub slots_ok: u32,
    pub slots_pfail: u32,
    pub slots_fail: u32,
    pub known_nodes: u32,
    /// Masters serving slots (`cluster_size`).
    pub size: u32,
    /// The node that answered, as `host:port`.
    pub asked: String,
    pub nodes: Vec<NodeView>,
}

/// One node, as `CLUSTER NODES` lists it and as its PING went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// The node id's first 8 characters, as `redis-cli --cluster` shows them.
    pub id: String,
    /// `host:port` as the cluster announces it; empty for a node without an address.
    pub address: String,
    /// `master` or `replica`.
    pub role: &'static str,
    /// A replica's master (its id's first 8 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Slots it serves.
    pub slots: u32,
    /// Its slot ranges as `CLUSTER NODES` gives them (`0-5460`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<String>,
    /// `CLUSTER NODES`' flags, as given (`master,fail`...).
    pub flags: String,
    /// `connected` or `disconnected`: the answering node's link to it.
    pub link: String,
    /// PING's round trip from the sidecar; none when it did not answer.
    pub latency_ms: Option<f64>,
    /// Why PING got no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeView {
    /// Failed (`fail`) or suspected (`fail?`) by the cluster.
    pub fn failing(&self) -> Option<&'static str> {
        let flags: Vec<&str> = self.flags.split(',').collect();
        if flags.contains(&"fail") {
            Some("fail")
        } else if flags.contains(&"fail?") {
            Some("fail?")
        } else {
            None
        }
    }
}

impl Cluster {
    pub fn new(seeds: Vec<Node>) -> Cluster {
        Cluster {
            seeds,
            last: Arc::default(),
        }
    }

    /// What the last look found.
    pub fn last(&self) -> Option<View> {
        self.last
            .lock()
            .expect("cluster lock is never poisoned")
            .clone()
    }

    fn keep(&self, view: &View) {
        *self.last.lock().expect("cluster lock is never poisoned") = Some(view.clone());
    }

    /// Where to connect, in order: the masters of the last look that answered, then the
    /// seeds.
    fn candidates(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = Vec::new();
        if let Some(view) = self.last() {
            for n in view
                .nodes
                .iter()
                .filter(|n| n.role == "master" && n.latency_ms.is_some() && n.failing().is_none())
            {
                if let Some(node) = parse_address(&n.address) {
                    nodes.push(node);
                }
            }
        }
        for s in &self.seeds {
            if !nodes.contains(s) {
                nodes.push(s.clone());
            }
        }
        nodes
    }
}

/// The node to connect to: for a Cluster target, the first of its candidates that accepts
/// a TCP connection (all tried at once, within `limit`); the target itself otherwise, or
/// when none accepts (its connection then fails with the first seed's error).
pub async fn pick(target: &Target, limit: Duration) -> Target {
    let Some(cluster) = target.cluster() else {
        return target.clone();
    };
    let candidates = cluster.candidates();
    let tries = candidates.iter().map(|n| async move {
        tokio::time::timeout(
            limit,
            tokio::net::TcpStream::connect((n.host.as_str(), n.port)),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    });
    let accepted = join_all(tries).await;
    match candidates.iter().zip(accepted).find(|(_, ok)| *ok) {
        Some((node, _)) => target.at_master(node),
        None => target.clone(),
    }
}

/// `CLUSTER INFO`'s fields and `CLUSTER NODES`' lines, as `asked` gave them; the nodes
/// not yet pinged.
pub fn parse(info: &str, nodes: &str, asked: &str) -> View {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let number = |name: &str| field(name).parse::<u32>().unwrap_or(0);
    let mut listed: Vec<NodeView> = Vec::new();
    for line in nodes.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 8 {
            continue;
        }
        let address = parts[1]
            .split(['@', ','])
            .next()
            .filter(|a| !a.starts_with(':'))
            .unwrap_or_default()
            .to_string();
        let flags = parts[2].to_string();
        let role = if flags.split(',').any(|f| f == "slave" || f == "replica") {
            "replica"
        } else {
            "master"
        };
        let ranges: Vec<String> = parts[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| r.to_string())
            .collect();
        let slots = ranges
            .iter()
            .map(|r| match r.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => u32::from(r.parse::<u32>().is_ok()),
            })
            .sum();
        listed.push(NodeView {
            id: short(parts[0]),
            address,
            role,
            master: (parts[3] != "-").then(|| short(parts[3])),
            slots,
            ranges,
            flags,
            link: parts[7].to_string(),
            latency_ms: None,
            error: None,
        });
    }
    // Masters first, by their first slot; each master's replicas after the masters.
    listed.sort_by(|a, b| {
        (a.role != "master", first_slot(a), &a.address).cmp(&(
            b.role != "master",
            first_slot(b),
            &b.address,
        ))
    });
    View {
        state: field("cluster_state"),
        slots_assigned: number("cluster_slots_assigned"),
        slots_ok: number("cluster_slots_ok"),
        slots_pfail: number("cluster_slots_pfail"),
        slots_fail: number("cluster_slots_fail"),
        known_nodes: number("cluster_known_nodes"),
        size: number("cluster_size"),
        asked: asked.to_string(),
        nodes: listed,
    }
}

fn first_slot(n: &NodeView) -> u32 {
    n.ranges
        .first()
        .and_then(|r| r.split('-').next()?.parse().ok())
        .unwrap_or(u32::MAX)
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// `host:port` read back into a node.
fn parse_address(address: &str) -> Option<Node> {
    let (host, port) = address.rsplit_once(':')?;
    Some(Node {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: port.parse().ok()?,
    })
}

/// PINGs every node with an address at once (each on a short connection of its own,
/// logged in as the target, within `limit`), fills in their latency or error, and keeps
/// the view as the cluster's last look.
pub async fn ping_nodes(target: &Target, mut view: View, limit: Duration) -> View {
    let pings = view.nodes.iter().map(|n| async move {
        let node = parse_address(&n.address)?;
        let began = Instant::now();
        let answer = raw::within(limit, async {
            let mut resp = raw::connect(&node, target.auth(), limit).await?;
            raw::ask(&mut resp, &[&[b"PING"]], limit).await
        });
        Some(match answer.await {
            Ok(replies) => match &replies[0] {
                Reply::Error(e) => Err(e.clone()),
                _ => Ok(began.elapsed()),
            },
            Err(RawError::Unreachable(why)) => Err(why),
            Err(RawError::Auth(said)) => Err(format!("refused the login: {said}")),
        })
    });
    let results = join_all(pings).await;
    for (n, result) in view.nodes.iter_mut().zip(results) {
        match result {
            Some(Ok(took)) => n.latency_ms = Some((took.as_secs_f64() * 1e4).round() / 10.0),
            Some(Err(why)) => n.error = Some(why),
            None => n.error = Some("the cluster gives it no address".into()),
        }
    }
    if let Some(c) = target.cluster() {
        c.keep(&view);
    }
    view
}

#[cfg(test)]
pub(crate) mod tests;
