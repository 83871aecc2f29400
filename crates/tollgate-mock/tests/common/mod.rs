//! HTTP/1.1 client helpers shared by the loopback tests.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tollgate_mock::{MockConfig, MockServer};

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub frames: Vec<Bytes>,
    /// Elapsed time when the head arrived / when the first frame arrived.
    pub head_at: Duration,
    pub first_frame_at: Option<Duration>,
    pub error: Option<hyper::Error>,
}

impl Resp {
    pub fn body(&self) -> Bytes {
        let mut b = BytesMut::new();
        for f in &self.frames {
            b.extend_from_slice(f);
        }
        b.freeze()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        let body = String::from_utf8(self.body().to_vec()).unwrap();
        assert!(
            body.ends_with("\n\n"),
            "SSE body must end with a blank line"
        );
        body.split_terminator("\n\n")
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }
}

pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

pub async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "mock");
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let start = Instant::now();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let head_at = start.elapsed();
    let (parts, mut body) = resp.into_parts();
    let mut frames = Vec::new();
    let mut first_frame_at = None;
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    first_frame_at.get_or_insert_with(|| start.elapsed());
                    frames.push(data);
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Resp {
        status: parts.status,
        headers: parts.headers,
        frames,
        head_at,
        first_frame_at,
        error,
    }
}

pub async fn send(
    mock: &MockServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut sender = connect(mock.addr()).await;
    send_on(&mut sender, method, path, headers, body).await
}

pub async fn post(mock: &MockServer, path: &str, body: Value) -> Resp {
    send(
        mock,
        Method::POST,
        path,
        &[],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await
}

pub async fn mock() -> MockServer {
    MockServer::start(MockConfig::default()).await.unwrap()
}

impl Resp {
    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body().to_vec()).unwrap()
    }
}

pub async fn post_with(
    mock: &MockServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Resp {
    send(
        mock,
        Method::POST,
        path,
        headers,
        &serde_json::to_vec(body).unwrap(),
    )
    .await
}

pub fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}
