use super::*;
use crate::config::Config;
use crate::config::cli::Settings;

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

fn keys(n: &Naming, queue: &str) -> Vec<(Vec<u8>, bool)> {
    n.queue_keys(queue)
        .into_iter()
        .map(|k| (k.key, k.counted))
        .collect()
}

#[test]
fn default_names() {
    let n = naming(&[], 0);
    let k = keys(&n, "celery");
    assert_eq!(k.len(), 10, "the queue's key and steps 1 to 9");
    assert_eq!(k[0], (b"celery".to_vec(), true));
    assert_eq!(k[3], (b"celery\x06\x163".to_vec(), true));
    assert_eq!(k[9], (b"celery\x06\x169".to_vec(), true));
    assert_eq!(n.unacked(), b"unacked");
    assert_eq!(n.unacked_index(), b"unacked_index");
    assert_eq!(Naming::binding_pattern(), b"*_kombu.binding.*");
    assert_eq!(n.events_pattern(), b"/0.celeryev/*");
    assert_eq!(n.any_events_pattern(), b"*/0.celeryev/*");
    assert_eq!(
        n.routing_key(b"/0.celeryev/worker.heartbeat"),
        Some(b"worker.heartbeat".as_slice())
    );
    assert_eq!(n.routing_key(b"/3.celeryev/worker.heartbeat"), None);
    assert_eq!(n.routing_key(b"/10.celeryev/worker.heartbeat"), None);
    assert_eq!(n.routing_key(b"app:/0.celeryev/worker.heartbeat"), None);
    assert_eq!(n.routing_key(b"/0.celery.pidbox"), None);
    assert_eq!(
        n.split_event_channel(b"app:/0.celeryev/task.multi"),
        Some((b"app:".as_slice(), b"task.multi".as_slice()))
    );
}

#[test]
fn prefix_db_separator_and_steps() {
    let n = naming(
        &[("prefix", "my*app:"), ("sep", ":"), ("steps", "0,1,5,12")],
        5,
    );
    let k = keys(&n, "emails");
    assert_eq!(k[0], (b"my*app:emails".to_vec(), true));
    assert_eq!(k[1], (b"my*app:emails:1".to_vec(), true));
    assert_eq!(
        k[2],
        (b"my*app:emails:2".to_vec(), false),
        "not the app's step"
    );
    assert_eq!(k[5], (b"my*app:emails:5".to_vec(), true));
    assert_eq!(
        k[10],
        (b"my*app:emails:12".to_vec(), true),
        "the app's own, above 9"
    );
    assert_eq!(n.unacked(), b"my*app:unacked");
    assert_eq!(n.events_pattern(), b"my\\*app:/5.celeryev/*");
    assert_eq!(
        n.routing_key(b"my*app:/5.celeryev/task.multi"),
        Some(b"task.multi".as_slice())
    );
    // Steps without 0: the queue's own key does not count.
    let n = naming(&[("steps", "1,5,9")], 0);
    assert_eq!(keys(&n, "q")[0], (b"q".to_vec(), false));
    // Two separators in use (an app that changed `sep`): both sets of keys.
    let n = naming(&[], 0).with_layout(b"".to_vec(), vec![b":".to_vec(), DEFAULT_SEP.to_vec()]);
    let k = keys(&n, "q");
    assert_eq!(k.len(), 19);
    assert_eq!(n.sep(), b":");
    assert!(k.contains(&(b"q:3".to_vec(), true)));
    assert!(k.contains(&(b"q\x06\x163".to_vec(), true)));
}

#[test]
fn separators_are_read_off_the_bindings() {
    assert_eq!(
        symmetric_sep(b"celery\x06\x16\x06\x16celery"),
        Some(DEFAULT_SEP)
    );
    assert_eq!(symmetric_sep(b"celery::celery"), Some(b":".as_slice()));
    assert_eq!(symmetric_sep(b"a:b::a:b"), Some(b":".as_slice()));
    assert_eq!(symmetric_sep(b"x||||x"), Some(b"||".as_slice()));
    assert_eq!(
        symmetric_sep(b"aaaaaa"),
        Some(b"a".as_slice()),
        "the shortest reading"
    );
    assert_eq!(symmetric_sep(b"emails--emails"), Some(b"-".as_slice()));
    assert_eq!(symmetric_sep(b"routing::other"), None);
    assert_eq!(symmetric_sep(b"x"), None);
    assert_eq!(
        pidbox_sep(b"\x06\x16\x06\x16w1@vm.celery.pidbox", b"celery.pidbox"),
        Some(DEFAULT_SEP)
    );
    assert_eq!(
        pidbox_sep(b"::w1@vm.celery.pidbox", b"celery.pidbox"),
        Some(b":".as_slice())
    );
    assert_eq!(
        pidbox_sep(b"::::w1@vm.celery.pidbox", b"celery.pidbox"),
        Some(b"::".as_slice())
    );
    assert_eq!(pidbox_sep(b"w1@vm.celery.pidbox", b"celery.pidbox"), None);
    assert_eq!(
        split_binding_key(b"myapp:_kombu.binding.emails"),
        Some((b"myapp:".as_slice(), b"emails".as_slice()))
    );
    assert_eq!(split_binding_key(b"_kombu.binding_deadlines"), None);
}

#[test]
fn bindings_name_their_queue() {
    let seps = [DEFAULT_SEP.to_vec(), b":".to_vec()];
    let q = |member: &[u8]| queue_of(member, &seps);
    assert_eq!(q(b"celery\x06\x16\x06\x16celery"), Some("celery".into()));
    assert_eq!(q(b"celery::celery"), Some("celery".into()));
    assert_eq!(
        q(b"tasks.#\x06\x16^tasks\\..*?$\x06\x16reports"),
        Some("reports".into())
    );
    assert_eq!(q(b"no separators"), None);
    assert_eq!(q(b"a\x06\x16b\x06\x16\xff\xfe"), None);
    assert!(is_control_exchange(b"celeryev"));
    assert!(is_control_exchange(b"celery.pidbox"));
    assert!(is_control_exchange(b"reply.celery.pidbox"));
    assert!(!is_control_exchange(b"celery"));
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
