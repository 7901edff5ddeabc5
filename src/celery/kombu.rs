//! kombu's Redis transport as the sidecar reads it: the names of keys and channels (with
//! the broker db, key prefix, separator and priority steps), and the message envelope.
//! Pure functions; the I/O lives in `queues` and `subscriber`.

use base64::Engine;
use serde_json::Value;

use crate::config::CeleryConfig;

/// Payloads larger than this are not parsed (counted as decode errors). Celery's events
/// carry `args` as reprs capped at 1 KB, so a real batch stays far below it.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Names of keys and channels for one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    prefix: Vec<u8>,
    sep: Vec<u8>,
    steps: Vec<u32>,
    db: i64,
}

impl Naming {
    pub fn new(c: &CeleryConfig, db: i64) -> Naming {
        Naming {
            prefix: c.keyprefix.clone(),
            sep: c.sep.clone(),
            steps: c.priority_steps.clone(),
            db,
        }
    }

    fn key(&self, name: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), name].concat()
    }

    /// `name` with the key prefix (`global_keyprefix`) in front.
    pub fn prefixed(&self, name: &[u8]) -> Vec<u8> {
        self.key(name)
    }

    /// The separator between a binding's fields and before a priority step.
    pub fn sep(&self) -> &[u8] {
        &self.sep
    }

    /// The broker's db index.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// The keys that hold a queue's messages, one per priority step: the queue's name for
    /// step 0, `name SEP step` for the others (`celery`, `celery\x06\x163`, ...), as kombu
    /// names them.
    pub fn queue_keys(&self, queue: &str) -> Vec<Vec<u8>> {
        self.steps
            .iter()
            .map(|step| {
                if *step == 0 {
                    self.key(queue.as_bytes())
                } else {
                    let mut k = self.key(queue.as_bytes());
                    k.extend_from_slice(&self.sep);
                    k.extend_from_slice(step.to_string().as_bytes());
                    k
                }
            })
            .collect()
    }

    /// The hash of reserved (prefetched, not yet acknowledged) messages.
    pub fn unacked(&self) -> Vec<u8> {
        self.key(b"unacked")
    }

    /// The sorted set of reservations, scored by the time they were fetched.
    pub fn unacked_index(&self) -> Vec<u8> {
        self.key(b"unacked_index")
    }

    /// The `SCAN MATCH` pattern of binding sets: `<prefix>_kombu.binding.*`, with glob
    /// characters in the prefix escaped.
    pub fn binding_pattern(&self) -> Vec<u8> {
        let mut p = glob_escape(&self.prefix);
        p.extend_from_slice(b"_kombu.binding.*");
        p
    }

    /// The queue a member of the binding set `key` routes to, or `None` for the sets that
    /// are not task queues (pidbox, reply, celeryev) and for malformed members. A member is
    /// `routing_key SEP pattern SEP queue`.
    pub fn queue_of_binding(&self, key: &[u8], member: &[u8]) -> Option<String> {
        let exchange = key.strip_prefix(self.prefix.as_slice())?;
        let exchange = exchange.strip_prefix(b"_kombu.binding.".as_slice())?;
        if exchange == b"celeryev" || exchange.ends_with(b".pidbox") {
            return None;
        }
        let queue = split_last(member, &self.sep)?;
        let queue = std::str::from_utf8(queue).ok()?;
        if queue.is_empty() || queue.len() > 200 || queue.chars().any(char::is_control) {
            return None;
        }
        Some(queue.to_string())
    }

    /// The pattern the event subscriber PSUBSCRIBEs: `<prefix>/<db>.celeryev/*`, with
    /// glob characters in the prefix escaped.
    pub fn events_pattern(&self) -> Vec<u8> {
        let mut p = glob_escape(&self.events_channel_prefix());
        p.push(b'*');
        p
    }

    fn events_channel_prefix(&self) -> Vec<u8> {
        self.key(format!("/{}.celeryev/", self.db).as_bytes())
    }

    /// The routing key of an event channel (`worker.heartbeat`, `task.multi`), or `None`
    /// when the channel is not this broker's event exchange.
    pub fn routing_key<'a>(&self, channel: &'a [u8]) -> Option<&'a [u8]> {
        channel.strip_prefix(self.events_channel_prefix().as_slice())
    }
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

/// The part of `member` after the last `sep` (the member has two of them).
fn split_last<'a>(member: &'a [u8], sep: &[u8]) -> Option<&'a [u8]> {
    if sep.is_empty() || member.len() < 2 * sep.len() {
        return None;
    }
    let mut found = 0;
    let mut last = None;
    let mut i = 0;
    while i + sep.len() <= member.len() {
        if &member[i..i + sep.len()] == sep {
            found += 1;
            last = Some(i + sep.len());
            i += sep.len();
        } else {
            i += 1;
        }
    }
    if found < 2 {
        return None;
    }
    last.map(|at| &member[at..])
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
mod tests {
    use super::*;
    use crate::cli::Settings;
    use crate::config::Config;

    fn naming(pairs: &[(&str, &str)], db: i64) -> Naming {
        let mut s = Settings::default();
        for (k, v) in pairs {
            match *k {
                "prefix" => s.celery_keyprefix = Some(v.to_string()),
                "sep" => s.celery_sep = Some(v.to_string()),
                "steps" => s.celery_priority_steps = Some(v.to_string()),
                _ => unreachable!(),
            }
        }
        Naming::new(&Config::from_settings(&s).unwrap().celery, db)
    }

    /// A capture from a real Celery 5.7 worker (copied from the shared fixtures).
    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/celery/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn default_names() {
        let n = naming(&[], 0);
        assert_eq!(
            n.queue_keys("celery"),
            [
                b"celery".to_vec(),
                b"celery\x06\x163".to_vec(),
                b"celery\x06\x166".to_vec(),
                b"celery\x06\x169".to_vec()
            ]
        );
        assert_eq!(n.unacked(), b"unacked");
        assert_eq!(n.unacked_index(), b"unacked_index");
        assert_eq!(n.binding_pattern(), b"_kombu.binding.*");
        assert_eq!(n.events_pattern(), b"/0.celeryev/*");
        assert_eq!(
            n.routing_key(b"/0.celeryev/worker.heartbeat"),
            Some(b"worker.heartbeat".as_slice())
        );
        assert_eq!(n.routing_key(b"/3.celeryev/worker.heartbeat"), None);
        assert_eq!(n.routing_key(b"/0.celery.pidbox"), None);
    }

    #[test]
    fn prefix_db_separator_and_steps() {
        let n = naming(
            &[("prefix", "my*app:"), ("sep", ":"), ("steps", "0,1,5")],
            5,
        );
        assert_eq!(
            n.queue_keys("emails"),
            [
                b"my*app:emails".to_vec(),
                b"my*app:emails:1".to_vec(),
                b"my*app:emails:5".to_vec()
            ]
        );
        assert_eq!(n.unacked(), b"my*app:unacked");
        assert_eq!(n.binding_pattern(), b"my\\*app:_kombu.binding.*");
        assert_eq!(n.events_pattern(), b"my\\*app:/5.celeryev/*");
        assert_eq!(
            n.routing_key(b"my*app:/5.celeryev/task.multi"),
            Some(b"task.multi".as_slice())
        );
        assert_eq!(
            n.queue_of_binding(b"my*app:_kombu.binding.emails", b"emails::emails"),
            Some("emails".into())
        );
    }

    #[test]
    fn steps_without_zero_have_no_bare_key() {
        let n = naming(&[("steps", "1,5,9")], 0);
        assert_eq!(
            n.queue_keys("q"),
            [
                b"q\x06\x161".to_vec(),
                b"q\x06\x165".to_vec(),
                b"q\x06\x169".to_vec()
            ]
        );
    }

    #[test]
    fn bindings_name_task_queues_only() {
        let n = naming(&[], 0);
        let q = |key: &[u8], member: &[u8]| n.queue_of_binding(key, member);
        assert_eq!(
            q(b"_kombu.binding.celery", b"celery\x06\x16\x06\x16celery"),
            Some("celery".into())
        );
        assert_eq!(
            q(b"_kombu.binding.default", b"default\x06\x16\x06\x16default"),
            Some("default".into())
        );
        assert_eq!(
            q(
                b"_kombu.binding.celery.pidbox",
                b"\x06\x16\x06\x16w1@vm.celery.pidbox"
            ),
            None
        );
        assert_eq!(
            q(
                b"_kombu.binding.reply.celery.pidbox",
                b"x\x06\x16\x06\x16x.reply.celery.pidbox"
            ),
            None
        );
        assert_eq!(
            q(
                b"_kombu.binding.celeryev",
                b"worker.#\x06\x16\x06\x16celeryev.1234"
            ),
            None
        );
        assert_eq!(q(b"_kombu.binding.celery", b"no separators"), None);
        assert_eq!(
            q(b"_kombu.binding.celery", b"a\x06\x16b\x06\x16\xff\xfe"),
            None
        );
        assert_eq!(q(b"other", b"celery\x06\x16\x06\x16celery"), None);
    }

    #[test]
    fn decodes_a_real_heartbeat_envelope() {
        let f = fixture("02-worker-heartbeat-idle.json");
        let raw = f["raw_payload_verbatim"].as_str().unwrap();
        let m = decode(raw.as_bytes()).unwrap();
        assert_eq!(m.body["hostname"], "w1@vm");
        assert_eq!(m.body["type"], "worker-heartbeat");
        assert_eq!(m.body["freq"], 2.0);
    }

    #[test]
    fn decodes_a_real_task_message_from_a_queue() {
        let f = fixture("20-queue-celery-lrange-backlog.json");
        let text = serde_json::to_string(&f).unwrap();
        // The first message verbatim, wherever the capture keeps it.
        let raw = find_verbatim(&f).unwrap_or_else(|| panic!("no verbatim message in {text:.200}"));
        let m = decode(raw.as_bytes()).unwrap();
        assert!(m.envelope["headers"]["task"].is_string());
        assert!(m.body.is_array(), "protocol 2 body: [args, kwargs, embed]");
    }

    fn find_verbatim(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if s.starts_with("{\"body\"") => Some(s.clone()),
            Value::Array(a) => a.iter().find_map(find_verbatim),
            Value::Object(o) => o.values().find_map(find_verbatim),
            _ => None,
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::NotJson),
            (b"not json", DecodeError::NotJson),
            (b"[1,2]", DecodeError::NotAnEnvelope),
            (b"{\"body\": 5}", DecodeError::NotAnEnvelope),
            (
                b"{\"body\": \"gAN9\", \"content-type\": \"application/x-python-serialize\"}",
                DecodeError::ContentType("application/x-python-serialize".into()),
            ),
            (
                b"{\"body\": \"!!!\", \"properties\": {\"body_encoding\": \"base64\"}}",
                DecodeError::Base64,
            ),
            (
                b"{\"body\": \"bm90IGpzb24=\", \"properties\": {\"body_encoding\": \"base64\"}}",
                DecodeError::BodyNotJson,
            ),
            (
                b"{\"body\": \"{\\\"a\\\": 1}\", \"content-type\": 7}",
                DecodeError::Field("content-type"),
            ),
        ];
        for (payload, want) in cases {
            assert_eq!(
                &decode(payload).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(
            decode(&big).unwrap_err(),
            DecodeError::TooLarge(MAX_PAYLOAD + 1)
        );
        // Without body_encoding the body is the JSON text itself.
        let m = decode(b"{\"body\": \"{\\\"a\\\": 1}\"}").unwrap();
        assert_eq!(m.body["a"], 1);
    }
}
