//! Request bodies and query strings of the admin API: strict (unknown fields
//! are errors) and with "absent", "null" and "value" told apart in patches.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tollgate_schema::ApiError;

const MAX_BODY: usize = 1024 * 1024;

/// Read the whole body (at most 1 MiB).
pub async fn read(
    session: &mut pingora::protocols::http::ServerSession,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::body_too_large(MAX_BODY));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(ApiError::invalid_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
        }
    }
}

/// A JSON object body whose keys are all in `allowed`.
pub fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::invalid_request("the body must be a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())).cloned() {
        return Err(ApiError::invalid_request(format!(
            "unknown field `{k}`; expected one of: {}",
            allowed.join(", ")
        ))
        .with_param(k));
    }
    Ok(map)
}

/// A field: absent → `None`, `null` → `Some(None)`, value → `Some(Some(v))`.
pub fn field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
) -> Result<Option<Option<T>>, ApiError> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => serde_json::from_value(v.clone())
            .map(|v| Some(Some(v)))
            .map_err(|e| {
                ApiError::invalid_request(format!("`{name}`: {e}")).with_param(name.to_string())
            }),
    }
}

/// A field that may not be null.
pub fn value<T: DeserializeOwned>(
    map: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match field(map, name)? {
        Some(None) => Err(
            ApiError::invalid_request(format!("`{name}` must not be null"))
                .with_param(name.to_string()),
        ),
        Some(Some(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

/// A required field.
pub fn required<T: DeserializeOwned>(map: &Map<String, Value>, name: &str) -> Result<T, ApiError> {
    value(map, name)?.ok_or_else(|| {
        ApiError::invalid_request(format!("`{name}` is required")).with_param(name.to_string())
    })
}

/// Query string pairs, percent-decoded.
pub fn query(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A time: unix seconds, or RFC 3339.
pub fn time_ms(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::invalid_request(format!(
                "`{name}` must be unix seconds or an RFC 3339 time, not `{v}`"
            ))
            .with_param(name.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes() {
        let q = query(Some("a=1&b=x%20y&c=%3A+z&d"));
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), ": z".into()),
                ("d".into(), "".into())
            ]
        );
        assert_eq!(query(Some("e=%")), vec![("e".into(), "%".into())]);
        assert_eq!(query(Some("e=%4")), vec![("e".into(), "%4".into())]);
    }

    #[test]
    fn fields() {
        let m = object(br#"{"a": null, "b": 3}"#, &["a", "b", "c"]).unwrap();
        assert_eq!(field::<u64>(&m, "a").unwrap(), Some(None));
        assert_eq!(field::<u64>(&m, "b").unwrap(), Some(Some(3)));
        assert_eq!(field::<u64>(&m, "c").unwrap(), None);
        assert!(value::<u64>(&m, "a").is_err());
        let e = object(br#"{"zzz": 1}"#, &["a"]).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            time_ms("t", "2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000
        );
        assert_eq!(time_ms("t", "10").unwrap(), 10_000);
    }
}
