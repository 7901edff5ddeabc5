//! Redis Sentinel: the master a target stands for, asked of its sentinels as redis-py asks
//! them (the first in the URL's order that names the master wins), and each sentinel's own view
//! (reachable, the master it names, `SENTINEL CKQUORUM`) for `/healthz` and `check`.
//!
//! A Sentinel target is resolved every time a connection is made: the pool, the queue scan
//! and the event subscription all connect to the master the sentinels name at that moment.
//! Each probe also asks every sentinel; when the master they name changes, pooled
//! connections to the old one are dropped before the next command, and the subscription
//! moves at its next PING tick.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use serde::Serialize;

use crate::redis::failure::{Failure, Reason};
use crate::redis::raw::{self, Node, RawError};
use crate::redis::resp::Reply;
use crate::redis::target::{Address, Target};

/// The port a `sentinel://` URL without one names (kombu's and redis-py's default).
pub const DEFAULT_PORT: u16 = 26379;

/// The sentinels of one master, and what they said last. Clones share what was learned.
#[derive(Clone)]
pub struct Sentinels {
    /// The master's name (`master_name`): empty until the configuration gives it.
    pub master: String,
    pub nodes: Vec<Node>,
    /// What AUTH sends to each sentinel (`sentinel_kwargs`); none by default, as kombu and
    /// Celery send the URL's password to the master only.
    user: Option<String>,
    password: Option<String>,
    state: Arc<Mutex<State>>,
}

impl PartialEq for Sentinels {
    fn eq(&self, other: &Sentinels) -> bool {
        self.master == other.master
            && self.nodes == other.nodes
            && self.user == other.user
            && self.password == other.password
    }
}

impl Eq for Sentinels {}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("master", &self.master)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// What the sentinels said, shared by every clone of a target.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The master's address, as the sentinels last named it.
    pub master: Option<Node>,
    /// When that address last changed (a failover), not when it was first learned.
    pub changed_at: Option<SystemTime>,
    /// Changes of the master's address seen since the start.
    pub failovers: u64,
    /// The `config-epoch` of the answer that named `master`: an answer from an older epoch
    /// (a sentinel that has not heard of the failover yet) does not move it back.
    epoch: u64,
    /// Each sentinel's answer at the last probe, in the URL's order.
    pub views: Vec<View>,
}

/// One sentinel's answer, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    pub address: String,
    pub reachable: bool,
    /// The master's address this sentinel gives.
    pub master: Option<String>,
    /// `SENTINEL CKQUORUM`: enough sentinels to authorize a failover.
    pub quorum: Option<bool>,
    /// Why the sentinel could not answer, or why the quorum is not there, in its words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What went wrong, for `check`'s fix: `unreachable`, `auth`, `unknown_name`, `said`.
    #[serde(skip)]
    pub miss: Option<&'static str>,
}

impl Sentinels {
    pub fn new(nodes: Vec<Node>) -> Sentinels {
        Sentinels {
            master: String::new(),
            nodes,
            user: None,
            password: None,
            state: Arc::default(),
        }
    }

    /// Sets what AUTH sends to each sentinel.
    pub fn set_auth(&mut self, user: Option<String>, password: Option<String>) {
        self.user = user;
        self.password = password;
    }

    /// What AUTH sends to each sentinel: (user, password), or nothing.
    fn auth(&self) -> Option<(Option<&str>, &str)> {
        self.password.as_deref().map(|p| (self.user.as_deref(), p))
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// What the sentinels said last.
    pub fn state(&self) -> State {
        self.state
            .lock()
            .expect("sentinel lock is never poisoned")
            .clone()
    }

    /// The master's address as the sentinels last named it.
    pub fn current(&self) -> Option<Node> {
        self.state
            .lock()
            .expect("sentinel lock is never poisoned")
            .master
            .clone()
    }

    /// Records the master's address a sentinel gave, at its `config-epoch`; true when it
    /// changed from the one known before (a failover). An answer of an older epoch than the
    /// one known is ignored, so that a slow sentinel does not move the master back.
    fn learn(&self, master: &Master) -> bool {
        let mut state = self.state.lock().expect("sentinel lock is never poisoned");
        if state.master.is_some() && master.epoch < state.epoch {
            return false;
        }
        let moved = match &state.master {
            Some(old) if *old != master.node => {
                tracing::warn!(
                    master_name = %self.master,
                    from = %old,
                    to = %master.node,
                    "the sentinels name a new master: following it"
                );
                true
            }
            _ => false,
        };
        if moved {
            state.failovers += 1;
            state.changed_at = Some(SystemTime::now());
        }
        state.master = Some(master.node.clone());
        state.epoch = master.epoch;
        moved
    }

    /// The sentinels as people read them: `127.0.0.1:26379, 127.0.0.1:26380`.
    pub fn list(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(Node::to_string).collect();
        nodes.join(", ")
    }
}

/// Why one sentinel gave no master.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    /// No connection, or no answer in time.
    Unreachable(String),
    /// AUTH refused (or required and not sent).
    Auth(String),
    /// It knows no master by that name.
    UnknownName,
    /// It considers the master down (its flags), as redis-py then asks the next sentinel.
    Down(String),
    /// Anything else it answered.
    Said(String),
}

impl Miss {
    fn kind(&self) -> &'static str {
        match self {
            Miss::Unreachable(_) => "unreachable",
            Miss::Auth(_) => "auth",
            Miss::UnknownName => "unknown_name",
            Miss::Down(_) => "down",
            Miss::Said(_) => "said",
        }
    }

    fn text(&self, node: &Node, master: &str) -> String {
        match self {
            Miss::Unreachable(why) => format!("{node} {why}"),
            Miss::Auth(why) => format!("{node} refused the login: {why}"),
            Miss::UnknownName => format!("{node} knows no master named {master:?}"),
            Miss::Down(flags) => format!("{node} considers the master {master:?} down ({flags})"),
            Miss::Said(what) => format!("{node} answered {what}"),
        }
    }
}

impl From<RawError> for Miss {
    fn from(e: RawError) -> Miss {
        match e {
            RawError::Unreachable(why) => Miss::Unreachable(why),
            RawError::Auth(said) => Miss::Auth(said),
        }
    }
}

/// A master as one sentinel names it: where, and the configuration epoch of that answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub node: Node,
    pub epoch: u64,
}

/// Longest text kept of an answer that is not what a sentinel says.
const SAID_MAX: usize = 200;

/// What is not a sentinel's answer, cut short: it goes into `/healthz` and the log.
fn said(reply: &Reply) -> Miss {
    let mut text = format!("{reply:?}");
    if text.len() > SAID_MAX {
        let mut end = SAID_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    Miss::Said(text)
}

/// `SENTINEL MASTER <name>`'s answer, read as redis-py's `discover_master` reads
/// `SENTINEL MASTERS`: the address when this sentinel sees a master that is not down
/// (`s_down` or `o_down` in its flags), or why not.
fn master_addr(reply: &Reply) -> Result<Master, Miss> {
    let items = match reply {
        Reply::Array(Some(items)) => items,
        Reply::Error(e) if e.contains("No such master") => return Err(Miss::UnknownName),
        Reply::Error(e) if e.starts_with("NOAUTH") => return Err(Miss::Auth(e.clone())),
        Reply::Error(e) => return Err(said(&Reply::Error(e.clone()))),
        other => return Err(said(other)),
    };
    let field = |name: &str| {
        items
            .chunks(2)
            .find(|pair| pair[0].text().as_deref() == Some(name))
            .and_then(|pair| pair.get(1)?.text())
    };
    let flags = field("flags").unwrap_or_default();
    let down = flags.split(',').any(|f| f == "s_down" || f == "o_down");
    if down || !flags.split(',').any(|f| f == "master") {
        return Err(Miss::Down(flags));
    }
    let host = field("ip");
    let port = field("port").and_then(|p| p.parse::<u16>().ok());
    let epoch = field("config-epoch")
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or(0);
    match (host, port) {
        (Some(host), Some(port)) => Ok(Master {
            node: Node { host, port },
            epoch,
        }),
        _ => Err(said(reply)),
    }
}

/// The command that asks a sentinel for the master.
fn ask_for(sentinels: &Sentinels) -> [&[u8]; 3] {
    [b"SENTINEL", b"MASTER", sentinels.master.as_bytes()]
}

/// Records a master a sentinel named; a move forgets what the old master's ACL refused.
fn learned(target: &Target, sentinels: &Sentinels, master: &Master) {
    if sentinels.learn(master) {
        crate::redis::capability::forget(target.redacted());
    }
}

/// The target to connect to: `target` itself, or for a Sentinel target the master the
/// sentinels name now, with the master's credentials and database. Every sentinel is asked
/// at once, all within `limit`; the first in the URL's order that names a master it does
/// not consider down wins, as with redis-py asking them in turn, without waiting on a dead
/// one first. The failure names what each sentinel said.
pub async fn resolve(target: &Target, limit: Duration) -> Result<Target, Failure> {
    let Address::Sentinel(sentinels) = target.address() else {
        return Ok(target.clone());
    };
    let asks = sentinels.nodes.iter().map(|node| async move {
        let replies = raw::within(limit, async {
            let mut resp = raw::connect(node, sentinels.auth(), limit).await?;
            raw::ask(&mut resp, &[&ask_for(sentinels)], limit).await
        })
        .await?;
        master_addr(&replies[0])
    });
    let answers = join_all(asks).await;
    let mut misses = Vec::new();
    for (node, answer) in sentinels.nodes.iter().zip(answers) {
        match answer {
            Ok(master) => {
                learned(target, sentinels, &master);
                return Ok(target.at_master(&master.node));
            }
            Err(miss) => misses.push((node, miss)),
        }
    }
    Err(no_master(sentinels, &misses))
}

/// Why no sentinel named a master: the reason of the most telling answer (a wrong name,
/// then a refused login, then unreachable sentinels) and each sentinel's answer.
fn no_master(sentinels: &Sentinels, misses: &[(&Node, Miss)]) -> Failure {
    let said: Vec<String> = misses
        .iter()
        .map(|(n, m)| m.text(n, &sentinels.master))
        .collect();
    let any = |f: fn(&Miss) -> bool| misses.iter().any(|(_, m)| f(m));
    let reason = if any(|m| matches!(m, Miss::UnknownName | Miss::Said(_) | Miss::Down(_))) {
        Reason::Other
    } else if any(|m| matches!(m, Miss::Auth(_))) {
        Reason::Auth
    } else {
        Reason::Connect
    };
    Failure::new(
        reason,
        format!(
            "no sentinel named the master {:?}: {}",
            sentinels.master,
            said.join("; ")
        ),
    )
}

/// Asks every sentinel at once for the master's address and `CKQUORUM` (each within
/// `limit` in all), records their views and the master the first of them (in the URL's
/// order) names. Returns the views.
pub async fn survey(target: &Target, limit: Duration) -> Vec<View> {
    let Address::Sentinel(sentinels) = target.address() else {
        return Vec::new();
    };
    let asks = sentinels.nodes.iter().map(|node| async move {
        let answer = raw::within(limit, async {
            let mut resp = raw::connect(node, sentinels.auth(), limit).await?;
            let quorum: [&[u8]; 3] = [b"SENTINEL", b"CKQUORUM", sentinels.master.as_bytes()];
            raw::ask(&mut resp, &[&ask_for(sentinels), &quorum], limit).await
        })
        .await;
        // A sentinel that answered, but named no master: its quorum is not asked about.
        let answer = answer
            .map_err(Miss::from)
            .and_then(|replies| Ok((master_addr(&replies[0])?, replies[1].clone())));
        (node, answer)
    });
    let answers = join_all(asks).await;
    let mut views = Vec::with_capacity(answers.len());
    let mut named = None;
    for (node, answer) in answers {
        let view = match answer {
            // Unreachable, or refused the login: the two that leave it no say.
            Err(miss) => View {
                address: node.to_string(),
                reachable: !matches!(miss, Miss::Unreachable(_) | Miss::Auth(_)),
                master: None,
                quorum: None,
                error: Some(miss.text(node, &sentinels.master)),
                miss: Some(miss.kind()),
            },
            Ok((master, quorum)) => {
                let (quorum, error) = match quorum {
                    Reply::Simple(_) => (Some(true), None),
                    Reply::Error(e) => (
                        Some(false),
                        Some(raw::scrub(&e, sentinels.password.as_deref())),
                    ),
                    _ => (None, None),
                };
                let address = master.node.to_string();
                named.get_or_insert(master);
                View {
                    address: node.to_string(),
                    reachable: true,
                    master: Some(address),
                    quorum,
                    error,
                    miss: None,
                }
            }
        };
        views.push(view);
    }
    if let Some(m) = &named {
        learned(target, sentinels, m);
    }
    sentinels
        .state
        .lock()
        .expect("sentinel lock is never poisoned")
        .views
        .clone_from(&views);
    views
}

#[cfg(test)]
mod tests;
