//! Property tests (proptest) of everything that parses input from outside: the kombu
//! envelope and Celery event decoders (pub/sub and queue payloads), the INFO parser, the
//! RESP reader of `check`, the pidbox reply filter, Accept-Encoding, and the configuration.
//! Arbitrary bytes and structured-but-hostile values never panic; the configuration never
//! echoes a password in its error. A bounded number of cases per property (fixed below) runs
//! in the normal test command.

use base64::Engine;
use proptest::prelude::*;
use serde_json::{Value, json};

use redis_celery_sidecar::celery::{event, kombu};
use redis_celery_sidecar::config::Config;
use redis_celery_sidecar::config::cli::Settings;
use redis_celery_sidecar::text::{parse_duration, unescape};

const CASES: u32 = 512;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Strings made of the characters parsers care about, plus a few that they should not.
fn texty(max: usize) -> impl Strategy<Value = String> {
    let chars = vec![
        'a', 'z', '0', '1', '9', ':', '/', '@', '%', '.', ',', ';', '=', '?', '&', '#', '[', ']',
        's', 'm', 'h', 'u', '-', '_', ' ', '\t', '\n', '\r', '\0', '*', '"', '\\', 'é', '😀',
    ];
    proptest::collection::vec(prop::sample::select(chars), 0..max)
        .prop_map(|v| v.into_iter().collect())
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        texty(20).prop_map(Value::String),
        prop::sample::select(vec![
            "worker-heartbeat",
            "worker-online",
            "worker-offline",
            "task-sent",
            "task-received",
            "task-started",
            "task-succeeded",
            "task-failed",
            "task-retried",
            "task-rejected",
            "task-revoked",
            "hostname",
            "type",
            "uuid",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop::sample::select(vec![
                        "type",
                        "hostname",
                        "freq",
                        "timestamp",
                        "active",
                        "processed",
                        "uuid",
                        "name",
                        "queue",
                        "routing_key",
                        "runtime",
                        "exception",
                        "retries",
                        "x",
                    ]),
                    inner
                ),
                0..10
            )
            .prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// A kombu envelope around `body`, base64 or not.
fn envelope(body: &Value, base64: bool) -> Vec<u8> {
    let text = body.to_string();
    let (body, props) = if base64 {
        (
            base64::engine::general_purpose::STANDARD.encode(text),
            json!({"body_encoding": "base64", "delivery_tag": "t"}),
        )
    } else {
        (text, json!({"delivery_tag": "t"}))
    };
    json!({
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": props,
    })
    .to_string()
    .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn decoders_take_arbitrary_bytes(payload in bytes(2048)) {
        let _ = kombu::decode(&payload);
        let _ = event::decode(&payload);
    }

    #[test]
    fn decoders_take_any_json_in_a_valid_envelope(body in json_value(), b64 in any::<bool>()) {
        let payload = envelope(&body, b64);
        let _ = kombu::decode(&payload);
        if let Ok(events) = event::decode(&payload) {
            // A batch is bounded by what was sent.
            let n = match &body { Value::Array(a) => a.len(), _ => 1 };
            prop_assert!(events.len() <= n.max(1));
        }
        // And the bare JSON, as a queue or channel could hold it.
        let _ = event::decode(body.to_string().as_bytes());
    }

    #[test]
    fn info_parser_takes_any_text(text in texty(400), raw in bytes(400)) {
        let _ = redis_celery_sidecar::redis::info::parse(&text);
        let _ = redis_celery_sidecar::redis::info::parse(&String::from_utf8_lossy(&raw));
        // Known keys with hostile values.
        let keyed = format!(
            "# Server\r\nredis_version:{text}\r\nconnected_clients:{text}\r\nmaxmemory:{text}\r\nrole:{text}\r\nloading:{text}\r\nrejected_connections:{text}\r\n"
        );
        let _ = redis_celery_sidecar::redis::info::parse(&keyed);
    }

    #[test]
    fn resp_reader_takes_arbitrary_bytes(payload in bytes(512)) {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, mut server) = tokio::io::duplex(4096);
            server.write_all(&payload).await.unwrap();
            drop(server);
            let mut r = redis_celery_sidecar::redis::resp::Resp::new(Box::new(client));
            // Read until an error (at the latest the end of the input).
            for _ in 0..600 {
                if r.read().await.is_err() {
                    break;
                }
            }
        });
    }

    #[test]
    fn pidbox_reply_filter_takes_arbitrary_bytes(payload in bytes(1024), body in json_value()) {
        let c = Config::from_settings(&Settings::default()).unwrap();
        let naming = kombu::Naming::new(&c.celery, 0);
        let request = redis_celery_sidecar::check::pidbox::Request::ping(&naming);
        prop_assert!(request.answered_by(&payload).is_empty());
        // Any body under another ticket is never an answer.
        prop_assert!(request.answered_by(&envelope(&body, true)).is_empty());
    }

    #[test]
    fn accept_encoding_takes_any_header(text in texty(80)) {
        if let Ok(h) = hyper::header::HeaderValue::from_str(&text) {
            let _ = redis_celery_sidecar::serve::http::accepts_gzip(Some(&h));
        }
    }

    #[test]
    fn small_parsers_take_any_text(text in texty(60)) {
        let _ = parse_duration(&text);
        let _ = unescape(&text);
    }

    #[test]
    fn configuration_takes_any_values(values in proptest::collection::vec((0..FIELDS, texty(50)), 0..8)) {
        let mut s = Settings::default();
        for (field, value) in values {
            *field_of(&mut s, field) = Some(value);
        }
        // Ok or a configuration error; never a panic.
        let _ = Config::from_settings(&s);
    }

    #[test]
    fn configuration_errors_never_echo_a_password(
        pw in proptest::collection::vec(prop::sample::select(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".chars().collect::<Vec<_>>()
        ), 10..20).prop_map(|v| format!("Pw{}", v.into_iter().collect::<String>())),
        scheme in prop::sample::select(vec!["redis", "rediss", "http", "amqp", "unix", "redis+unix", "redis+socket", "socket", "sentinel", ""]),
        host in texty(20),
        rest in texty(20),
        field in prop::sample::select(vec![0usize, 5, 6]),
    ) {
        let mut s = Settings::default();
        let url = format!("{scheme}://user:{pw}@{host}{rest}");
        *field_of(&mut s, field) = Some(url);
        match Config::from_settings(&s) {
            Err(e) => {
                let said = e.to_string();
                prop_assert!(!said.contains(&pw), "{said}");
            }
            // Nor may what `config` prints: the notes, the warnings, the redacted URLs.
            Ok(c) => {
                let said = c.describe();
                prop_assert!(!said.contains(&pw), "{said}");
            }
        }
        // The password variable itself, with a bad companion.
        let mut s = Settings { redis_password: Some(pw.clone()), redis_port: Some(rest.clone()), ..Settings::default() };
        s.redis_host = Some(host);
        if let Err(e) = Config::from_settings(&s) {
            prop_assert!(!e.to_string().contains(&pw));
        }
    }
}

const FIELDS: usize = 42;

/// Every string setting, by index (0: REDIS_URL, 5: CELERY_BROKER_URL, 6:
/// CELERY_RESULT_BACKEND).
fn field_of(s: &mut Settings, i: usize) -> &mut Option<String> {
    match i {
        0 => &mut s.redis_url,
        1 => &mut s.redis_host,
        2 => &mut s.redis_port,
        3 => &mut s.redis_user,
        4 => &mut s.redis_password,
        5 => &mut s.celery_broker_url,
        6 => &mut s.celery_result_backend,
        7 => &mut s.listen_addr,
        8 => &mut s.port,
        9 => &mut s.probe_interval,
        10 => &mut s.probe_timeout,
        11 => &mut s.latency_slo,
        12 => &mut s.ready_checks,
        13 => &mut s.auth_token,
        14 => &mut s.max_connections,
        15 => &mut s.log_format,
        16 => &mut s.log_level,
        17 => &mut s.celery_queues,
        18 => &mut s.celery_min_workers,
        19 => &mut s.celery_keyprefix,
        20 => &mut s.celery_sep,
        21 => &mut s.celery_priority_steps,
        22 => &mut s.celery_visibility_timeout,
        23 => &mut s.celery_heartbeat_misses,
        24 => &mut s.celery_stall_after,
        25 => &mut s.celery_max_workers,
        26 => &mut s.celery_forget_after,
        27 => &mut s.otel_endpoint,
        28 => &mut s.otel_traces_endpoint,
        29 => &mut s.otel_protocol,
        30 => &mut s.otel_traces_protocol,
        31 => &mut s.otel_headers,
        32 => &mut s.otel_traces_headers,
        33 => &mut s.otel_timeout,
        34 => &mut s.otel_traces_timeout,
        35 => &mut s.otel_service_name,
        36 => &mut s.otel_resource_attributes,
        37 => &mut s.otel_traces_sampler,
        38 => &mut s.otel_traces_sampler_arg,
        39 => &mut s.sentinel_master,
        40 => &mut s.sentinel_password,
        _ => &mut s.otel_sdk_disabled,
    }
}
