//! Reading pipeline replies: the queue probe's and beat's.

use std::hash::{Hash, Hasher};

use redis::{RedisError, Value};

/// A server error in a pipeline reply that is not about one key's type.
pub fn fatal(v: &Value) -> Option<RedisError> {
    match v {
        Value::ServerError(e) if e.code() != "WRONGTYPE" => Some(RedisError::from(e.clone())),
        _ => None,
    }
}

/// Bit `i` of a queue's key mask (the last bit stands for every key past 63).
pub fn bit(mask: u64, i: usize) -> bool {
    mask & (1 << i.min(63)) != 0
}

pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

pub fn as_u64(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

pub fn as_f64(v: &Value) -> Option<f64> {
    let x = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::Double(d) => *d,
        Value::Int(n) => *n as f64,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// A `WITHSCORES` reply, as (member, score) pairs: a flat array (RESP2) or a map (RESP3);
/// a pair that is not a member and a finite score is skipped.
pub fn with_scores(v: Option<Value>) -> Vec<(Vec<u8>, f64)> {
    match v {
        Some(Value::Array(items)) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [Value::BulkString(member), score] => Some((member.clone(), as_f64(score)?)),
                _ => None,
            })
            .collect(),
        Some(Value::Map(pairs)) => pairs
            .into_iter()
            .filter_map(|(m, score)| match m {
                Value::BulkString(member) => Some((member, as_f64(&score)?)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
