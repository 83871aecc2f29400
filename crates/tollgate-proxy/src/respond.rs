//! Writing responses to the client: JSON bodies, errors in OpenAI's shape,
//! and the `x-ratelimit-*` headers every answer to a known key carries.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use tollgate_limits::{format_reset, Admission};
use tollgate_schema::ApiError;

use crate::ctx::RequestCtx;

/// Build a response header with the headers every answer carries.
pub fn header(
    status: u16,
    ctx: &RequestCtx,
    content_type: &str,
    len: Option<usize>,
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(8))?;
    h.insert_header(header::CONTENT_TYPE, content_type)?;
    if let Some(len) = len {
        h.insert_header(header::CONTENT_LENGTH, len)?;
    }
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    rate_limit_headers(&mut h, ctx)?;
    if let Some(api) = &ctx.api {
        deprecation_headers(&mut h, api)?;
    }
    Ok(h)
}

/// A deprecated prompt API says so on every answer: `Deprecation` (RFC 9745),
/// `Sunset` (RFC 8594) and, when a newer version is published, a `Link` to it.
fn deprecation_headers(h: &mut ResponseHeader, api: &tollgate_apis::Api) -> Result<()> {
    if let Some(d) = &api.deprecation_header {
        h.insert_header("deprecation", d.as_str())?;
        if let Some(s) = &api.sunset_header {
            h.insert_header("sunset", s.as_str())?;
        }
        if let Some(next) = &api.successor_path {
            h.insert_header("link", format!("<{next}>; rel=\"successor-version\""))?;
        }
    }
    Ok(())
}

/// OpenAI's `x-ratelimit-*` headers, from the binding layer of each kind
/// (named in `x-ratelimit-scope-*`). Keys without limits get none.
pub fn rate_limit_headers(h: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let adm: Admission = match &ctx.admission {
        Some(a) => *a,
        None if !ctx.layers.is_empty() => ctx.layers.status(Instant::now()),
        None => return Ok(()),
    };
    let mut s = String::with_capacity(16);
    for (status, names) in [
        (
            adm.requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "x-ratelimit-scope-requests",
            ],
        ),
        (
            adm.tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                "x-ratelimit-scope-tokens",
            ],
        ),
    ] {
        if let Some((layer, st)) = status {
            h.insert_header(names[0], st.limit)?;
            h.insert_header(names[1], st.remaining)?;
            s.clear();
            format_reset(st.reset, &mut s);
            h.insert_header(names[2], s.as_str())?;
            h.insert_header(names[3], layer.as_str())?;
        }
    }
    Ok(())
}

/// Send a complete JSON response.
pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
) -> Result<()> {
    let h = header(status, ctx, "application/json", Some(body.len()))?;
    ctx.status = status;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Send an OpenAI-shaped error, with `Retry-After` when the error carries one.
pub async fn error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &ApiError,
    retry_after_secs: Option<u64>,
) -> Result<()> {
    let body = Bytes::from(err.to_json());
    let mut h = header(err.status, ctx, "application/json", Some(body.len()))?;
    if let Some(s) = retry_after_secs {
        h.insert_header(header::RETRY_AFTER, s)?;
    }
    if err.status == 405 {
        // The only 405s are for POST-only or GET-only paths; the message names the method.
        if let Some(allowed) = err.message.rsplit("use ").next() {
            h.insert_header(header::ALLOW, allowed.trim_end_matches('.'))?;
        }
    }
    ctx.status = err.status;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
