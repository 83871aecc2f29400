//! The upstream exchange, driven from `request_filter`: connect from the pool,
//! send the translated request, and relay the response to the client,
//! translating it (for streams: event by event, as bytes arrive — the
//! `response_body_filter` step).
//!
//! Connections go back to the pool only after a response was read to its end;
//! any failure drops the connection, so nothing half-read is ever reused.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType as PErr};
use tollgate_apis::ApiStream;
use tollgate_providers::{ResponseCtx, StreamTranslator, UpstreamRequest};
use tollgate_schema::ApiError;

use crate::ctx::{Operation, RequestCtx};
use crate::respond;
use crate::snapshot::{KeySlot, TargetEntry};
use crate::steps::Stop;

/// Upper bound on a non-streaming upstream body held in memory.
const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;

/// How the exchange failed, for metrics and the client's status.
fn upstream_failure(provider: &str, e: &Error) -> (ApiError, &'static str) {
    match e.etype() {
        PErr::ConnectTimedout | PErr::ReadTimedout | PErr::WriteTimedout => (
            ApiError::gateway_timeout(format!("The provider `{provider}` did not answer in time.")),
            "timeout",
        ),
        PErr::ConnectRefused
        | PErr::ConnectError
        | PErr::ConnectNoRoute
        | PErr::TLSHandshakeFailure => (
            ApiError::bad_gateway(format!("Cannot connect to the provider `{provider}`.")),
            "connect",
        ),
        _ => (
            ApiError::bad_gateway(format!(
                "The connection to the provider `{provider}` failed."
            )),
            "protocol",
        ),
    }
}

fn timed_out(provider: &str) -> (ApiError, &'static str) {
    (
        ApiError::gateway_timeout(format!("The provider `{provider}` did not finish in time.")),
        "timeout",
    )
}

/// The upstream request header.
fn request_header(
    target: &TargetEntry,
    key: &KeySlot,
    up: &UpstreamRequest,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let p = &target.provider;
    let mut h = RequestHeader::build(
        "POST",
        up.path.as_bytes(),
        Some(6 + p.headers.len() + key.headers.len()),
    )?;
    h.insert_header(header::HOST, p.host_header.clone())?;
    h.insert_header(header::CONTENT_TYPE, "application/json")?;
    h.insert_header(header::CONTENT_LENGTH, body_len)?;
    h.insert_header(
        header::ACCEPT,
        if up.stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )?;
    h.insert_header(
        header::USER_AGENT,
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )?;
    for (k, v) in key.headers.iter().chain(&p.headers) {
        h.insert_header(k.clone(), v.clone())?;
    }
    Ok(h)
}

/// Open (or reuse) a connection and send the request; returns the session with
/// the response header read. A pooled connection the server closed meanwhile is
/// retried on another: nothing reached the provider's application in that case.
async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    target: &TargetEntry,
    key: &KeySlot,
    up: &UpstreamRequest,
    body: Bytes,
) -> Result<HttpSession, Box<Error>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (mut s, reused) = connector.get_http_session(peer).await?;
        // The connector applies only connect timeouts; reads and writes are the session's.
        s.set_read_timeout(Some(target.timeouts.ttfb));
        s.set_write_timeout(Some(target.timeouts.write));
        let res: pingora::Result<()> = async {
            s.write_request_header(Box::new(request_header(target, key, up, body.len())?))
                .await?;
            s.write_request_body(body.clone(), true).await?;
            s.finish_request_body().await?;
            s.read_response_header().await?;
            Ok(())
        }
        .await;
        match res {
            Ok(()) => return Ok(s),
            Err(mut e) => {
                let stale = reused
                    && matches!(
                        e.etype(),
                        PErr::ConnectionClosed | PErr::ReadError | PErr::WriteError
                    )
                    && attempts < 4;
                if !stale {
                    e.retry.decide_reuse(reused);
                    return Err(e);
                }
                log::debug!(
                    "stale pooled connection to {}: {e}; retrying",
                    target.provider.name
                );
            }
        }
    }
}

/// Remaining time before `deadline`, or an error if it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// What the client's request asked for that shapes the response.
#[derive(Clone, Copy, Debug)]
pub struct ClientAsked<'a> {
    /// The public model name.
    pub public_model: &'a str,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Embeddings as base64.
    pub embeddings_base64: bool,
    /// The prompt-token estimate.
    pub estimated_prompt_tokens: u64,
}

/// What the client would get if this failure is the last word.
#[derive(Debug)]
pub enum FailureResponse {
    /// A gateway error (connect, timeout, bad response).
    Api(ApiError),
    /// The provider's own error answer, to be mapped to OpenAI's shape.
    Provider {
        /// Its status.
        status: u16,
        /// Its body.
        body: Bytes,
    },
}

/// An attempt that failed before anything reached the client.
#[derive(Debug)]
pub struct Failure {
    /// `connect`, `timeout`, `rate_limited`, `unauthorized`, `status_5xx`,
    /// `status_4xx`, `protocol`, `bad_response`, `unresolved`.
    pub outcome: &'static str,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// What to answer if no other attempt follows.
    pub response: FailureResponse,
}

impl Failure {
    fn api(outcome: &'static str, e: ApiError) -> Failure {
        Failure {
            outcome,
            retry_after: None,
            response: FailureResponse::Api(e),
        }
    }

    /// Whether the target itself misbehaved (for passive health): a 4xx other
    /// than 429 means the provider is up and the request was refused.
    pub fn counts_against_target(&self) -> bool {
        !matches!(self.outcome, "status_4xx" | "rate_limited" | "unauthorized")
    }
}

/// How one attempt ended.
pub enum Attempted {
    /// The client has its answer (possibly a stream that broke midway).
    Answered {
        /// Time to the first byte (non-stream) or first token (stream).
        ttft: Option<Duration>,
        /// False when a stream broke after it started: a failure for health,
        /// but too late to retry.
        clean: bool,
    },
    /// Nothing went to the client; another target may be tried.
    Failed(Failure),
}

fn retry_after(h: &pingora::http::ResponseHeader) -> Option<Duration> {
    let v = h.headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// One attempt on one target. Writes to the client only on success (or once a
/// stream's first chunk arrived); every failure before that is returned.
#[allow(clippy::too_many_arguments)]
pub async fn attempt(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    target: &TargetEntry,
    key: &KeySlot,
    mut up: UpstreamRequest,
    opts: ClientAsked<'_>,
    deadline: Instant,
) -> Result<Attempted, Stop> {
    let provider = &target.provider;
    let started = Instant::now();
    let deadline = deadline.min(started + target.timeouts.total);
    let Some(mut peer) = provider.peer() else {
        return Ok(Attempted::Failed(Failure::api(
            "unresolved",
            ApiError::bad_gateway(format!(
                "The provider `{}` has no resolved address.",
                provider.name
            )),
        )));
    };
    peer.options.connection_timeout = Some(target.timeouts.connect);
    peer.options.total_connection_timeout = Some(target.timeouts.connect * 2);
    let body = Bytes::from(std::mem::take(&mut up.body));
    if ctx.upstream_sent.is_none() {
        ctx.upstream_sent = Some(started);
    }
    // The response header must come within the time-to-first-byte budget.
    let first_byte = deadline.min(started + target.timeouts.ttfb);
    let sent = match remaining(first_byte) {
        Some(d) => tokio::time::timeout(d, send(connector, &peer, target, key, &up, body)).await,
        None => Ok(Err(Error::new(PErr::ReadTimedout))),
    };
    let mut upstream = match sent {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let (err, kind) = upstream_failure(&provider.name, &e);
            return Ok(Attempted::Failed(Failure::api(kind, err)));
        }
        Err(_) => {
            let (err, kind) = timed_out(&provider.name);
            return Ok(Attempted::Failed(Failure::api(kind, err)));
        }
    };
    let (status, retry) = upstream
        .response_header()
        .map_or((502, None), |h| (h.status.as_u16(), retry_after(h)));
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rctx = ResponseCtx {
        client_wants_usage: opts.include_usage,
        embeddings_base64: opts.embeddings_base64,
        estimated_prompt_tokens: opts.estimated_prompt_tokens,
        public_model: opts.public_model,
        upstream_model: &target.upstream_model,
        now_unix,
        request_id: &ctx.request_id,
    };

    if !(200..300).contains(&status) || !up.stream {
        upstream.set_read_timeout(Some(target.timeouts.read));
        let body = match read_all(&mut upstream, deadline).await {
            Ok(b) => b,
            Err(e) => {
                let (err, kind) = match e {
                    Some(e) => upstream_failure(&provider.name, &e),
                    None => timed_out(&provider.name),
                };
                return Ok(Attempted::Failed(Failure::api(kind, err)));
            }
        };
        let ttfb = started.elapsed();
        release(connector, upstream, &peer, provider.timeouts.idle).await;
        if !(200..300).contains(&status) {
            return Ok(Attempted::Failed(Failure {
                outcome: match status {
                    429 => "rate_limited",
                    401 | 403 => "unauthorized",
                    s if s >= 500 => "status_5xx",
                    _ => "status_4xx",
                },
                retry_after: retry,
                response: FailureResponse::Provider { status, body },
            }));
        }
        let translated = match ctx.op {
            Operation::Embeddings => {
                tollgate_providers::embeddings_response(provider.kind, body, &rctx)
            }
            _ => tollgate_providers::chat_response(provider.kind, body, &rctx),
        };
        let translated = match translated {
            Ok(t) => t,
            Err(e) => return Ok(Attempted::Failed(Failure::api("bad_response", e))),
        };
        ctx.usage = translated.usage;
        if let Some(api) = ctx.api.clone() {
            let (status, body) = api.respond(&translated.body, &ctx.request_id);
            if status != 200 {
                ctx.error_kind = Some("invalid_model_output");
            }
            respond::json(session, ctx, status, Bytes::from(body)).await?;
        } else {
            respond::json(session, ctx, 200, translated.body).await?;
        }
        return Ok(Attempted::Answered {
            ttft: Some(ttfb),
            clean: true,
        });
    }

    // A stream. Its first chunk must arrive within the first-byte budget too,
    // and until it does nothing is sent: a slow first token can still fail over.
    let mut translator = StreamTranslator::new(provider.kind, &rctx)?;
    upstream.set_read_timeout(Some(target.timeouts.gap));
    let first = match remaining(first_byte) {
        Some(d) => tokio::time::timeout(d, upstream.read_response_body())
            .await
            .ok(),
        None => None,
    };
    let first = match first {
        Some(Ok(Some(chunk))) => chunk,
        Some(Ok(None)) => {
            return Ok(Attempted::Failed(Failure::api(
                "protocol",
                ApiError::bad_gateway(format!(
                    "The provider `{}` ended the stream before sending anything.",
                    provider.name
                )),
            )))
        }
        Some(Err(e)) => {
            let (err, kind) = upstream_failure(&provider.name, &e);
            return Ok(Attempted::Failed(Failure::api(kind, err)));
        }
        None => {
            let (err, kind) = timed_out(&provider.name);
            return Ok(Attempted::Failed(Failure::api(kind, err)));
        }
    };
    let mut h = respond::header(200, ctx, "text/event-stream", None)?;
    h.insert_header(header::CACHE_CONTROL, "no-cache")?;
    if !session.is_http2() {
        h.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    ctx.status = 200;
    ctx.stream = true;
    session.write_response_header(Box::new(h), false).await?;
    // Sized per chunk and handed off whole: an idle stream holds no output buffer.
    let mut out = Vec::new();
    // A prompt API turns the unified chunks into its own events.
    let mut api_stream = ctx.api.clone().map(ApiStream::new);
    let mut clean = false;
    let mut chunk = Some(first);
    loop {
        if let Some(c) = chunk.take() {
            out.reserve(c.len() + c.len() / 2 + 64);
            let before = translator.first_token_seen();
            let _ = translator.feed(&c, &mut out);
            if !before && translator.first_token_seen() {
                ctx.ttft = Some(ctx.start.elapsed());
            }
            reshape(&mut api_stream, &mut out);
            if !out.is_empty() {
                let bytes = Bytes::from(std::mem::take(&mut out));
                session.write_response_body(Some(bytes), false).await?;
            }
        }
        let read = match remaining(deadline) {
            Some(d) => tokio::time::timeout(d, upstream.read_response_body())
                .await
                .ok(),
            None => None,
        };
        match read {
            Some(Ok(Some(c))) => chunk = Some(c),
            Some(Ok(None)) => {
                clean = translator.finish(&mut out).is_ok();
                if !clean {
                    ctx.error_kind = Some("stream_truncated");
                }
                break;
            }
            Some(Err(e)) => {
                let (err, kind) = upstream_failure(&provider.name, &e);
                ctx.error_kind = Some(kind);
                tollgate_providers::write_stream_error(&mut out, &err);
                break;
            }
            None => {
                let (err, kind) = timed_out(&provider.name);
                ctx.error_kind = Some(kind);
                tollgate_providers::write_stream_error(&mut out, &err);
                break;
            }
        }
    }
    ctx.usage = translator.usage();
    reshape(&mut api_stream, &mut out);
    if api_stream.as_ref().is_some_and(ApiStream::output_invalid) && clean {
        ctx.error_kind = Some("invalid_model_output");
    }
    let last = if out.is_empty() {
        None
    } else {
        Some(Bytes::from(out))
    };
    session.write_response_body(last, true).await?;
    let ttft = ctx
        .ttft
        .map(|t| t.saturating_sub(started.duration_since(ctx.start)));
    if clean {
        release(connector, upstream, &peer, provider.timeouts.idle).await;
    }
    Ok(Attempted::Answered { ttft, clean })
}

/// Chat stream bytes → a prompt API's events, in place.
fn reshape(api: &mut Option<ApiStream>, out: &mut Vec<u8>) {
    if let Some(s) = api {
        if !out.is_empty() {
            let mut shaped = Vec::with_capacity(out.len());
            s.feed(out, &mut shaped);
            *out = shaped;
        }
    }
}

/// Answer the client with a failure that is the last word.
pub async fn answer_failure(
    session: &mut Session,
    ctx: &mut RequestCtx,
    target: &TargetEntry,
    f: Failure,
) -> Result<(), Stop> {
    ctx.error_kind = Some(f.outcome);
    match f.response {
        FailureResponse::Api(e) => Err(Stop::Api(e, None)),
        FailureResponse::Provider { status, body } => {
            let out = tollgate_providers::error_response(target.provider.kind, status, body);
            respond::json(session, ctx, out.status, out.body).await?;
            Ok(())
        }
    }
}

/// Read a whole (bounded) body; `Err(None)` is the deadline.
async fn read_all(s: &mut HttpSession, deadline: Instant) -> Result<Bytes, Option<Box<Error>>> {
    let mut buf = BytesMut::new();
    loop {
        let d = remaining(deadline).ok_or(None)?;
        match tokio::time::timeout(d, s.read_response_body()).await {
            Err(_) => return Err(None),
            Ok(Err(e)) => return Err(Some(e)),
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                if buf.is_empty() && s.response_done() {
                    return Ok(chunk);
                }
                if buf.len() + chunk.len() > MAX_UPSTREAM_BODY {
                    return Err(Some(Error::explain(
                        PErr::InvalidHTTPHeader,
                        "upstream body too large",
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Return a fully read connection to the pool.
async fn release(connector: &Connector, mut s: HttpSession, peer: &HttpPeer, idle: Duration) {
    if s.response_done() {
        connector.release_http_session(s, peer, Some(idle)).await;
    } else {
        s.shutdown().await;
    }
}
