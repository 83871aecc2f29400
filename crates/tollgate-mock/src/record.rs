//! Recording of the requests that reached the mock, so tests can assert on
//! what the gateway actually forwarded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The path and query, e.g. `/openai/deployments/d/chat/completions?api-version=2024-10-21`.
    pub path: String,
    /// Headers in arrival order; names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The JSON shape served by `GET /__mock/requests`.
#[derive(Serialize)]
struct RecordedView<'a> {
    method: &'a str,
    path: &'a str,
    headers: serde_json::Map<String, serde_json::Value>,
    body: std::borrow::Cow<'a, str>,
    body_len: usize,
    body_sha256: String,
}

impl<'a> From<&'a RecordedRequest> for RecordedView<'a> {
    fn from(r: &'a RecordedRequest) -> Self {
        let mut headers = serde_json::Map::new();
        for (k, v) in &r.headers {
            match headers.get_mut(k) {
                Some(serde_json::Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(v);
                }
                _ => {
                    headers.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
            }
        }
        RecordedView {
            method: &r.method,
            path: &r.path,
            headers,
            body: String::from_utf8_lossy(&r.body),
            body_len: r.body.len(),
            body_sha256: hex::encode(Sha256::digest(&r.body)),
        }
    }
}

/// A bounded log of recent requests plus an uncapped counter.
#[derive(Debug)]
pub(crate) struct Recorder {
    limit: usize,
    log: Mutex<VecDeque<RecordedRequest>>,
    count: AtomicU64,
}

impl Recorder {
    pub fn new(limit: usize) -> Recorder {
        Recorder {
            limit,
            log: Mutex::new(VecDeque::with_capacity(limit.min(1024))),
            count: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a request; `make` builds the record only when one is kept.
    pub fn record(&self, make: impl FnOnce() -> RecordedRequest) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.limit == 0 {
            return;
        }
        let rec = make();
        let mut log = self.lock();
        while log.len() >= self.limit {
            log.pop_front();
        }
        log.push_back(rec);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().iter().cloned().collect()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The recorded requests as the JSON array served at `/__mock/requests`.
    pub fn to_json(&self) -> Vec<u8> {
        let log = self.lock();
        let views: Vec<RecordedView<'_>> = log.iter().map(RecordedView::from).collect();
        serde_json::to_vec(&views).unwrap_or_else(|_| b"[]".to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(n: usize) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: format!("/v1/x?{n}"),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-a".into(), "1".into()),
                ("x-a".into(), "2".into()),
            ],
            body: Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    #[test]
    fn bounded_and_counted() {
        let r = Recorder::new(2);
        for n in 0..5 {
            r.record(|| req(n));
        }
        let got = r.requests();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].path, "/v1/x?4");
        assert_eq!(r.count(), 5);
        r.clear();
        assert!(r.requests().is_empty());
        assert_eq!(r.count(), 5);
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let r = Recorder::new(0);
        r.record(|| req(1));
        assert!(r.requests().is_empty());
        assert_eq!(r.count(), 1);
    }

    #[test]
    fn accessors_and_json_view() {
        let rec = req(7);
        assert_eq!(rec.header("content-type"), Some("application/json"));
        assert_eq!(rec.header("X-A"), Some("1"));
        assert_eq!(rec.json().unwrap()["n"], 7);
        let r = Recorder::new(4);
        r.record(|| rec.clone());
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v[0]["method"], "POST");
        assert_eq!(v[0]["headers"]["x-a"], "1, 2");
        assert_eq!(v[0]["body"], "{\"n\":7}");
        assert_eq!(v[0]["body_len"], 7);
        assert_eq!(
            v[0]["body_sha256"],
            hex::encode(Sha256::digest(b"{\"n\":7}"))
        );
    }
}
