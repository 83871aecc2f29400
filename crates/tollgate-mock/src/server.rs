//! The HTTP/1.1 server: accept loop, per-connection hyper service, request
//! recording, dispatch to a wire format, and the `/__mock/requests`
//! inspection endpoint.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::{MockBody, Reply};
use crate::record::{RecordedRequest, Recorder};
use crate::{anthropic, gemini, openai, MockConfig};

/// Largest request body the mock reads.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The inspection endpoint.
const REQUESTS_PATH: &str = "/__mock/requests";

/// State shared by the accept loop, every connection and the [`crate::MockServer`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    api_key: Option<String>,
    pub recorder: Recorder,
    seq: AtomicU64,
    open: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: MockConfig) -> Arc<Shared> {
        Arc::new(Shared {
            api_key: config.api_key,
            recorder: Recorder::new(config.record_limit),
            seq: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            shutdown: watch::Sender::new(false),
        })
    }

    /// Close every open connection (used when the handle is dropped).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Accept connections forever, serving each on its own task.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(Arc::clone(&shared), stream));
            }
            Err(e) => {
                // Typically EMFILE or an aborted handshake: back off briefly.
                log::warn!("tollgate-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(Arc::clone(&shared));
    let svc_shared = Arc::clone(&shared);
    let service = service_fn(move |req| handle(Arc::clone(&svc_shared), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                log::debug!("tollgate-mock: connection ended: {e}");
            }
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            let path = parts.uri.path();
            let reply = if anthropic::is_route(path) {
                anthropic::too_large(shared.seq.fetch_add(1, Ordering::Relaxed) + 1)
            } else if gemini::route(path).is_some() {
                gemini::too_large(MAX_BODY)
            } else {
                openai::too_large()
            };
            return Ok(respond(reply, None));
        }
        Err(e) => {
            log::debug!("tollgate-mock: reading request body failed: {e}");
            return Ok(status_only(StatusCode::BAD_REQUEST));
        }
    };
    let path = parts.uri.path();
    if path == REQUESTS_PATH {
        return Ok(inspect(&shared, &parts.method));
    }

    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    shared.recorder.record(|| RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });

    let reply = dispatch(&shared, &parts, &body, seq);
    if reply.hang {
        // Hyper drops this future when the client goes away.
        std::future::pending::<()>().await;
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    Ok(respond(reply, Some(seq)))
}

/// Route a request to the wire format its path belongs to.
fn dispatch(shared: &Shared, parts: &http::request::Parts, body: &[u8], seq: u64) -> Reply {
    let path = parts.uri.path();
    let api_key = shared.api_key.as_deref();
    if anthropic::is_route(path) {
        return anthropic::handle(&parts.method, &parts.headers, body, api_key, seq);
    }
    if let Some(endpoint) = gemini::route(path) {
        let query = parts.uri.query().unwrap_or("");
        return gemini::handle(
            endpoint,
            &parts.method,
            &parts.headers,
            query,
            body,
            api_key,
            seq,
        );
    }
    match openai::route(path) {
        Some(endpoint) => openai::handle(
            endpoint,
            &parts.method,
            &parts.headers,
            body,
            api_key,
            seq,
            path,
        ),
        None => openai::not_found(&parts.method, path),
    }
}

/// `GET` lists the recorded requests, `DELETE` clears them.
fn inspect(shared: &Shared, method: &Method) -> Response<MockBody> {
    match *method {
        Method::GET => respond(Reply::json(StatusCode::OK, shared.recorder.to_json()), None),
        Method::DELETE => {
            shared.recorder.clear();
            status_only(StatusCode::NO_CONTENT)
        }
        _ => {
            let mut reply = Reply::json(
                StatusCode::METHOD_NOT_ALLOWED,
                openai::error_body("Method not allowed", "invalid_request_error", None, None),
            );
            reply.allow = Some("GET, DELETE");
            respond(reply, None)
        }
    }
}

fn status_only(status: StatusCode) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::empty());
    *resp.status_mut() = status;
    resp
}

fn respond(mut reply: Reply, seq: Option<u64>) -> Response<MockBody> {
    let mut resp = Response::new(reply.take_body());
    *resp.status_mut() = reply.status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if let Some(seq) = seq {
        if let Ok(v) = HeaderValue::try_from(format!("req_mock_{seq}")) {
            headers.insert("x-request-id", v);
        }
    }
    if let Some(retry) = reply.retry_after.as_deref() {
        if let Ok(v) = HeaderValue::from_str(retry) {
            headers.insert(RETRY_AFTER, v);
        }
    }
    if let Some(allow) = reply.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    for (name, value) in reply.extra_headers.drain(..) {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    }
    resp
}
