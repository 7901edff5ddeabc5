//! kombu's Redis transport as the sidecar reads it: the names of keys and channels (with
//! the broker db, key prefix, separator and priority steps), and the message envelope.
//! Pure functions; the I/O lives in `queues` and `subscriber`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::Value;

use crate::config::CeleryConfig;

/// Payloads larger than this are not parsed (counted as decode errors). Celery's events
/// carry `args` as reprs capped at 1 KB, so a real batch stays far below it.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// The separator kombu uses when its `sep` option is not set.
pub const DEFAULT_SEP: &[u8] = b"\x06\x16";

/// The steps a queue's messages can be under whatever the app's `priority_steps`: kombu
/// takes priorities from 0 to 9 and puts each under the largest step at or below it, so
/// with steps from 0 to 9 (Celery's documented `list(range(10))`, kombu's default
/// `[0, 3, 6, 9]`, any subset) every key is among these. Step 0 is the queue's own key.
pub const ANY_STEP: [u32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

/// Names of keys and channels for one broker: its db, kombu's key prefix and separators
/// (the current one first; an app that changed `sep` leaves members of the old one), and
/// the priority steps that count (the app's, when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    prefix: Vec<u8>,
    seps: Vec<Vec<u8>>,
    steps: Option<Vec<u32>>,
    db: i64,
}

/// One key of a queue, described without the queue: its separator (an index into the
/// separators) and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub sep: usize,
    pub step: u32,
    pub counted: bool,
}

/// One key a queue's messages can be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubQueue {
    pub key: Vec<u8>,
    /// Its priority step: 0 for the queue's own key.
    pub step: u32,
    /// Whether it counts in the queue's length (it is among the app's steps).
    pub counted: bool,
}

impl Naming {
    /// The names as set, or kombu's defaults until the broker's keys say otherwise.
    pub fn new(c: &CeleryConfig, db: i64) -> Naming {
        Naming {
            prefix: c.keyprefix.clone().unwrap_or_default(),
            seps: vec![c.sep.clone().unwrap_or_else(|| DEFAULT_SEP.to_vec())],
            steps: c.priority_steps.clone(),
            db,
        }
    }

    /// The same broker with another key prefix and separators (what discovery found).
    pub fn with_layout(&self, prefix: Vec<u8>, seps: Vec<Vec<u8>>) -> Naming {
        Naming {
            prefix,
            seps: if seps.is_empty() {
                self.seps.clone()
            } else {
                seps
            },
            ..self.clone()
        }
    }

    fn key(&self, name: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), name].concat()
    }

    /// `name` with the key prefix (`global_keyprefix`) in front.
    pub fn prefixed(&self, name: &[u8]) -> Vec<u8> {
        self.key(name)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The current separator, between a binding's fields and before a priority step.
    pub fn sep(&self) -> &[u8] {
        &self.seps[0]
    }

    /// Every separator in use, the current one first.
    pub fn seps(&self) -> &[Vec<u8>] {
        &self.seps
    }

    /// The app's priority steps, when set.
    pub fn steps(&self) -> Option<&[u32]> {
        self.steps.as_deref()
    }

    /// The broker's db index.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Every key that can hold a queue's messages, as kombu names them: the queue's name
    /// for step 0, `name SEP step` for the others (`celery`, `celery\x06\x163`, ...), for
    /// every separator in use and every step kombu can write (see [`ANY_STEP`]), and the
    /// app's own steps when set; those outside the app's steps do not count.
    pub fn queue_keys(&self, queue: &str) -> Vec<SubQueue> {
        let mut buf = Vec::new();
        self.key_specs()
            .into_iter()
            .map(|spec| {
                self.write_key(queue, spec, &mut buf);
                SubQueue {
                    key: buf.clone(),
                    step: spec.step,
                    counted: spec.counted,
                }
            })
            .collect()
    }

    /// The keys of any queue, described once: [`queue_keys`](Self::queue_keys)' order, the
    /// queue's own key first.
    pub fn key_specs(&self) -> Vec<KeySpec> {
        let mut steps: Vec<u32> = ANY_STEP.to_vec();
        if let Some(own) = &self.steps {
            steps.extend(own.iter().filter(|s| !ANY_STEP.contains(s)));
        }
        let counted = |step: u32| self.steps.as_ref().is_none_or(|own| own.contains(&step));
        let mut specs = vec![KeySpec {
            sep: 0,
            step: 0,
            counted: counted(0),
        }];
        for sep in 0..self.seps.len() {
            for &step in steps.iter().filter(|s| **s != 0) {
                specs.push(KeySpec {
                    sep,
                    step,
                    counted: counted(step),
                });
            }
        }
        specs
    }

    /// Writes `queue`'s key for `spec` into `buf` (cleared first): no allocation per key
    /// once `buf` has grown, however many queues are read.
    pub fn write_key(&self, queue: &str, spec: KeySpec, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.prefix);
        buf.extend_from_slice(queue.as_bytes());
        if spec.step != 0 {
            use std::io::Write;
            buf.extend_from_slice(&self.seps[spec.sep]);
            // Writing into a Vec cannot fail.
            let _ = write!(buf, "{}", spec.step);
        }
    }

    /// The hash of reserved (prefetched, not yet acknowledged) messages.
    pub fn unacked(&self) -> Vec<u8> {
        self.key(b"unacked")
    }

    /// The sorted set of reservations, scored by the time they were fetched.
    pub fn unacked_index(&self) -> Vec<u8> {
        self.key(b"unacked_index")
    }

    /// The `SCAN MATCH` pattern of binding sets under any key prefix: the prefixes are
    /// found from where the sets are.
    pub fn binding_pattern() -> &'static [u8] {
        b"*_kombu.binding.*"
    }

    /// The pattern of this broker's event channels under this key prefix:
    /// `<prefix>/<db>.celeryev/*`, with glob characters in the prefix escaped.
    pub fn events_pattern(&self) -> Vec<u8> {
        let mut p = glob_escape(&self.prefix);
        p.extend_from_slice(format!("/{}.celeryev/*", self.db).as_bytes());
        p
    }

    /// The pattern of this broker db's event channels under any key prefix:
    /// `*/<db>.celeryev/*` (an empty prefix included).
    pub fn any_events_pattern(&self) -> Vec<u8> {
        format!("*/{}.celeryev/*", self.db).into_bytes()
    }

    /// An event channel of this broker db split into its key prefix and routing key
    /// (`myapp:/5.celeryev/worker.heartbeat` -> `myapp:`, `worker.heartbeat`); `None` for
    /// another db's channel or one that is not an event channel.
    pub fn split_event_channel<'a>(&self, channel: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let marker = format!("/{}.celeryev/", self.db);
        let at = find(channel, marker.as_bytes())?;
        Some((&channel[..at], &channel[at + marker.len()..]))
    }

    /// The routing key of an event channel under this key prefix (`worker.heartbeat`,
    /// `task.multi`), or `None` for another prefix's or db's channel.
    pub fn routing_key<'a>(&self, channel: &'a [u8]) -> Option<&'a [u8]> {
        match self.split_event_channel(channel) {
            Some((prefix, key)) if prefix == self.prefix.as_slice() => Some(key),
            _ => None,
        }
    }
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `bytes` with Redis glob characters escaped, to match themselves in a pattern.
fn glob_escape(bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p
}

/// A binding set's key split into its key prefix and exchange:
/// `myapp:_kombu.binding.emails` -> `myapp:`, `emails`.
pub fn split_binding_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    const MARK: &[u8] = b"_kombu.binding.";
    let at = find(key, MARK)?;
    Some((&key[..at], &key[at + MARK.len()..]))
}

/// The separator of a member written for a queue whose routing key is its own name (what
/// Celery's queues have): `queue SEP SEP queue`, the pattern empty. The shortest separator
/// that reads the member so wins (`celery::celery` is `:`).
pub fn symmetric_sep(member: &[u8]) -> Option<&[u8]> {
    let len = member.len();
    (1..=16.min(len / 2)).find_map(|s| {
        let rest = len.checked_sub(2 * s)?;
        if rest == 0 || rest % 2 != 0 {
            return None;
        }
        let q = rest / 2;
        let (head, tail) = (&member[..q], &member[q + 2 * s..]);
        let (a, b) = (&member[q..q + s], &member[q + s..q + 2 * s]);
        (head == tail && a == b).then_some(a)
    })
}

/// The separator of a worker's pidbox binding: `SEP SEP <hostname>.<exchange>` (empty
/// routing key and pattern). The longest leading pair of equal halves is taken, so that
/// `::::w1@h.celery.pidbox` reads as `::`, not `:`.
pub fn pidbox_sep<'a>(member: &'a [u8], exchange: &[u8]) -> Option<&'a [u8]> {
    if !member.ends_with(exchange) {
        return None;
    }
    let room = member.len().saturating_sub(exchange.len() + 2) / 2;
    (1..=16.min(room))
        .rev()
        .find(|&s| member[..s] == member[s..2 * s])
        .map(|s| &member[..s])
}

/// The queue a member routes to, `routing_key SEP pattern SEP queue`, read with the first
/// of `seps` that splits it in exactly three; `None` for a malformed member or a name that
/// is not printable text.
pub fn queue_of(member: &[u8], seps: &[Vec<u8>]) -> Option<String> {
    let queue = seps.iter().find_map(|sep| split_last(member, sep))?;
    let queue = std::str::from_utf8(queue).ok()?;
    if queue.is_empty() || queue.len() > 200 || queue.chars().any(char::is_control) {
        return None;
    }
    Some(queue.to_string())
}

/// True for the exchanges that are not task queues: the pidbox, reply and event ones.
pub fn is_control_exchange(exchange: &[u8]) -> bool {
    exchange == b"celeryev" || exchange.ends_with(b".pidbox")
}

/// The part of `member` after its second `sep`, when it has exactly two.
fn split_last<'a>(member: &'a [u8], sep: &[u8]) -> Option<&'a [u8]> {
    if sep.is_empty() {
        return None;
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i + sep.len() <= member.len() {
        if &member[i..i + sep.len()] == sep {
            found.push(i + sep.len());
            i += sep.len();
        } else {
            i += 1;
        }
    }
    match found.as_slice() {
        [_, last] => Some(&member[*last..]),
        _ => None,
    }
}

/// What a walk of the binding sets found, by key prefix.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Found {
    pub prefixes: BTreeMap<Vec<u8>, Bound>,
}

/// The binding sets under one key prefix.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Bound {
    /// Task queues bound.
    pub queues: BTreeSet<String>,
    /// Separators read off the queues' members, with how many members showed each.
    pub seps: BTreeMap<Vec<u8>, usize>,
    /// Separators of the workers' pidbox bindings, with the hostnames that showed each
    /// (members of SIGKILLed workers stay there: the hostnames tell the live ones).
    pub pidbox: BTreeMap<Vec<u8>, BTreeSet<String>>,
}

impl Bound {
    /// The separators in use: the workers' own first, then the queues', most used first.
    pub fn seps_in_use(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let pidbox: BTreeMap<Vec<u8>, usize> = self
            .pidbox
            .iter()
            .map(|(sep, hosts)| (sep.clone(), hosts.len()))
            .collect();
        for counts in [&pidbox, &self.seps] {
            let mut by_use: Vec<(&Vec<u8>, &usize)> = counts.iter().collect();
            by_use.sort_by_key(|(sep, n)| (std::cmp::Reverse(**n), (*sep).clone()));
            for (sep, _) in by_use {
                if !out.contains(sep) {
                    out.push(sep.clone());
                }
            }
        }
        out
    }
}

impl Found {
    /// Reads binding sets (key, members): prefixes from the keys, separators from the
    /// members (a queue's `name SEP SEP name`, a worker's pidbox `SEP SEP host.celery.pidbox`),
    /// then the queues, each member read with its prefix's separators (`sep_set` first).
    pub fn read(sets: &[(Vec<u8>, Vec<Vec<u8>>)], sep_set: Option<&[u8]>) -> Found {
        let mut found = Found::default();
        for (key, members) in sets {
            let Some((prefix, exchange)) = split_binding_key(key) else {
                continue;
            };
            let bound = found.prefixes.entry(prefix.to_vec()).or_default();
            if exchange == b"celery.pidbox" {
                for member in members {
                    let Some(sep) = pidbox_sep(member, exchange) else {
                        continue;
                    };
                    // `SEP SEP <hostname>.celery.pidbox`
                    let host = &member[2 * sep.len()..member.len() - exchange.len()];
                    let host = String::from_utf8_lossy(host.strip_suffix(b".").unwrap_or(host));
                    bound
                        .pidbox
                        .entry(sep.to_vec())
                        .or_default()
                        .insert(host.chars().take(255).collect());
                }
            } else if !is_control_exchange(exchange) {
                for sep in members.iter().filter_map(|m| symmetric_sep(m)) {
                    *bound.seps.entry(sep.to_vec()).or_default() += 1;
                }
            }
        }
        for (key, members) in sets {
            let Some((prefix, exchange)) = split_binding_key(key) else {
                continue;
            };
            if is_control_exchange(exchange) {
                continue;
            }
            let bound = found
                .prefixes
                .get_mut(prefix)
                .expect("every prefix was entered above");
            let mut seps: Vec<Vec<u8>> = sep_set.map(<[u8]>::to_vec).into_iter().collect();
            seps.extend(bound.seps_in_use());
            seps.push(DEFAULT_SEP.to_vec());
            for member in members {
                if let Some(queue) = queue_of(member, &seps) {
                    bound.queues.insert(queue);
                }
            }
        }
        found
    }

    /// The task queues bound under `prefix`.
    pub fn queues(&self, prefix: &[u8]) -> BTreeSet<String> {
        self.prefixes
            .get(prefix)
            .map(|b| b.queues.clone())
            .unwrap_or_default()
    }
}

/// Why a payload could not be read. The `kind` is a short fixed word for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge(usize),
    NotJson,
    NotAnEnvelope,
    /// A serializer the sidecar does not read (pickle, yaml, msgpack).
    ContentType(String),
    Base64,
    BodyNotJson,
    /// A field missing or of the wrong type.
    Field(&'static str),
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too large",
            DecodeError::NotJson => "not JSON",
            DecodeError::NotAnEnvelope => "not a kombu envelope",
            DecodeError::ContentType(_) => "content type",
            DecodeError::Base64 => "bad base64",
            DecodeError::BodyNotJson => "body not JSON",
            DecodeError::Field(_) => "bad field",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge(n) => write!(f, "payload of {n} bytes is over the 1 MiB limit"),
            DecodeError::ContentType(t) => write!(f, "content type {t} is not JSON"),
            DecodeError::Field(name) => write!(f, "field {name} is missing or of the wrong type"),
            other => f.write_str(other.kind()),
        }
    }
}

/// A kombu message: the envelope and its decoded body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub envelope: Value,
    pub body: Value,
}

/// Reads a kombu envelope (JSON: `body`, `content-type`, `headers`, `properties`) and its
/// body: base64 when `properties.body_encoding` says so, then JSON. Any other content
/// type (pickle) is refused rather than guessed at.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let envelope: Value = serde_json::from_slice(payload).map_err(|_| DecodeError::NotJson)?;
    let body_text = envelope
        .get("body")
        .and_then(Value::as_str)
        .ok_or(DecodeError::NotAnEnvelope)?;
    match envelope.get("content-type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "application/json" => {}
        Some(Value::String(t)) => {
            return Err(DecodeError::ContentType(t.chars().take(64).collect()));
        }
        Some(_) => return Err(DecodeError::Field("content-type")),
    }
    let encoding = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(Value::as_str);
    let body = match encoding {
        Some("base64") => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(body_text.trim())
                .map_err(|_| DecodeError::Base64)?;
            serde_json::from_slice(&raw).map_err(|_| DecodeError::BodyNotJson)?
        }
        _ => serde_json::from_str(body_text).map_err(|_| DecodeError::BodyNotJson)?,
    };
    Ok(Message { envelope, body })
}

#[cfg(test)]
mod tests;
