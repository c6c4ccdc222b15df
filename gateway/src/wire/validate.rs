//! Field validation over JSON objects with error messages that name the field
//! (`metrics.cpuUsage must be a number between 0 and 100`).

use serde_json::{Map, Value};

/// A validation failure: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

pub type V<T> = Result<T, Invalid>;

pub fn invalid(field: &str, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// The payload itself must be an object (`null`/missing counts as an empty object only where allowed).
pub fn object<'a>(v: &'a Value, what: &str) -> V<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| invalid(what, "must be an object"))
}

/// Present and not null.
fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

pub fn opt_string(m: &Map<String, Value>, path: &str, key: &str, max: usize) -> V<Option<String>> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(
            &join(path, key),
            format!("must be at most {max} characters"),
        )),
        Some(_) => Err(invalid(&join(path, key), "must be a string")),
    }
}

pub fn req_string(m: &Map<String, Value>, path: &str, key: &str, max: usize) -> V<String> {
    match opt_string(m, path, key, max)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(&join(path, key), "is required")),
    }
}

pub fn opt_number(
    m: &Map<String, Value>,
    path: &str,
    key: &str,
    min: Option<f64>,
    max: Option<f64>,
) -> V<Option<f64>> {
    let Some(v) = present(m, key) else {
        return Ok(None);
    };
    let n = v
        .as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| invalid(&join(path, key), "must be a number"))?;
    let in_range = min.is_none_or(|lo| n >= lo) && max.is_none_or(|hi| n <= hi);
    if !in_range {
        let problem = match (min, max) {
            (Some(lo), Some(hi)) => format!("must be a number between {lo} and {hi}"),
            (Some(lo), None) => format!("must be a number >= {lo}"),
            (None, Some(hi)) => format!("must be a number <= {hi}"),
            (None, None) => "must be a number".to_string(),
        };
        return Err(invalid(&join(path, key), problem));
    }
    Ok(Some(n))
}

pub fn opt_bool(m: &Map<String, Value>, path: &str, key: &str) -> V<Option<bool>> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(&join(path, key), "must be a boolean")),
    }
}

pub fn opt_object<'a>(
    m: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> V<Option<&'a Map<String, Value>>> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid(&join(path, key), "must be an object")),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `[A-Za-z0-9_-]{1,64}`: screenshot request ids, which end up in object keys.
pub fn is_request_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
