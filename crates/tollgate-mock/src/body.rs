//! What a handler answers with ([`Reply`]) and the response body that paces
//! it onto the wire ([`MockBody`]). Shared by every wire format.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::script::Pacing;

/// `content-type` of JSON bodies.
pub(crate) const JSON: &str = "application/json";
/// `content-type` of server-sent event streams.
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

/// A handler's answer, before it is turned into an HTTP response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub retry_after: Option<String>,
    /// The `allow` header of a 405.
    pub allow: Option<&'static str>,
    /// Further response headers a wire format adds (e.g. Anthropic's `request-id`).
    pub extra_headers: Vec<(&'static str, String)>,
    /// The body, as events (one frame each unless re-split by `pacing`).
    pub frames: VecDeque<Bytes>,
    /// Announce `content-length` (complete JSON bodies) rather than chunked.
    pub sized: bool,
    pub pacing: Pacing,
    pub delay: Option<Duration>,
    pub hang: bool,
}

impl Reply {
    /// A complete JSON body.
    pub fn json(status: StatusCode, body: Vec<u8>) -> Reply {
        let mut frames = VecDeque::with_capacity(1);
        frames.push_back(Bytes::from(body));
        Reply {
            status,
            content_type: JSON,
            retry_after: None,
            allow: None,
            extra_headers: Vec::new(),
            frames,
            sized: true,
            pacing: Pacing::default(),
            delay: None,
            hang: false,
        }
    }

    /// A server-sent event stream, one frame per event.
    pub fn event_stream(events: VecDeque<Bytes>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: EVENT_STREAM,
            retry_after: None,
            allow: None,
            extra_headers: Vec::new(),
            frames: events,
            sized: false,
            pacing: Pacing::default(),
            delay: None,
            hang: false,
        }
    }

    /// Turn the body into a [`MockBody`].
    pub fn take_body(&mut self) -> MockBody {
        let frames = std::mem::take(&mut self.frames);
        // Split or truncated bodies go chunked, so each frame is visible on the wire.
        let len =
            if self.sized && self.pacing.reset_after.is_none() && self.pacing.chunk_bytes.is_none()
            {
                Some(frames.iter().map(|f| f.len() as u64).sum())
            } else {
                None
            };
        MockBody::new(frames, self.pacing, len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    Fail,
    Done,
}

/// A response body that sends prepared frames, optionally paced: delays
/// before the first and between events, re-split into fixed-size frames
/// (each flushed separately), or cut off after some bytes with an error so
/// hyper aborts the connection mid-body.
#[derive(Debug)]
pub struct MockBody {
    frames: VecDeque<Bytes>,
    len: Option<u64>,
    plain: bool,
    pacing: Pacing,
    pending: Bytes,
    started: bool,
    sent: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    yield_next: bool,
    phase: Phase,
}

impl MockBody {
    pub(crate) fn new(frames: VecDeque<Bytes>, pacing: Pacing, len: Option<u64>) -> MockBody {
        MockBody {
            frames,
            len,
            plain: pacing.is_plain(),
            pacing,
            pending: Bytes::new(),
            started: false,
            sent: 0,
            sleep: None,
            yield_next: false,
            phase: Phase::Run,
        }
    }

    /// An empty body.
    pub(crate) fn empty() -> MockBody {
        MockBody::new(VecDeque::new(), Pacing::default(), Some(0))
    }

    /// Move the next event into `pending`, arming the delay that precedes it.
    fn load_next(&mut self, frame: Bytes) {
        let wait = if self.started {
            self.pacing.gap
        } else {
            self.started = true;
            self.pacing.ttft
        };
        if let Some(wait) = wait {
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        if self.pending.is_empty() {
            self.pending = frame;
        } else {
            let mut joined = BytesMut::with_capacity(self.pending.len() + frame.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&frame);
            self.pending = joined.freeze();
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.plain {
            return Poll::Ready(this.frames.pop_front().map(|b| Ok(Frame::data(b))));
        }
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if this.yield_next {
                // Give hyper a chance to flush what it has before the next frame.
                this.yield_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match this.phase {
                Phase::Run => {}
                Phase::Fail => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "tollgate-mock: reset_after reached",
                    ))));
                }
                Phase::Done => return Poll::Ready(None),
            }
            let want = this.pacing.chunk_bytes.unwrap_or(1);
            if this.pending.len() < want {
                if let Some(frame) = this.frames.pop_front() {
                    this.load_next(frame);
                    continue;
                }
                if this.pending.is_empty() {
                    this.phase = Phase::Done;
                    continue;
                }
            }
            let mut n = this
                .pacing
                .chunk_bytes
                .map_or(this.pending.len(), |c| c.min(this.pending.len()));
            if let Some(limit) = this.pacing.reset_after {
                let left = limit.saturating_sub(this.sent);
                if left == 0 {
                    this.phase = Phase::Fail;
                    continue;
                }
                if n >= left {
                    n = left;
                    this.phase = Phase::Fail;
                    this.yield_next = true;
                }
            }
            let chunk = this.pending.split_to(n);
            this.sent += n;
            if this.pacing.chunk_bytes.is_some() {
                this.yield_next = true;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
            || (self.plain && self.frames.is_empty())
            || (self.len == Some(0) && self.pacing.reset_after.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http_body_util::BodyExt;

    fn frames(parts: &[&str]) -> VecDeque<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    async fn drain(mut body: MockBody) -> (Vec<Bytes>, Option<io::Error>) {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.push(f.into_data().unwrap()),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn plain_passes_frames_through() {
        let (out, err) = drain(MockBody::new(
            frames(&["ab", "cde"]),
            Pacing::default(),
            None,
        ))
        .await;
        assert_eq!(out, vec![Bytes::from("ab"), Bytes::from("cde")]);
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn chunk_bytes_resplits_across_events() {
        let pacing = Pacing {
            chunk_bytes: Some(2),
            ..Pacing::default()
        };
        let (out, err) = drain(MockBody::new(frames(&["abc", "de", "f"]), pacing, None)).await;
        assert_eq!(out, vec!["ab", "cd", "ef"]);
        assert!(err.is_none());
        let pacing = Pacing {
            chunk_bytes: Some(4),
            ..Pacing::default()
        };
        let (out, _) = drain(MockBody::new(frames(&["abc", "de", "f"]), pacing, None)).await;
        assert_eq!(out, vec!["abcd", "ef"]);
    }

    #[tokio::test]
    async fn reset_after_cuts_and_errors() {
        let pacing = Pacing {
            reset_after: Some(4),
            ..Pacing::default()
        };
        let (out, err) = drain(MockBody::new(frames(&["abc", "def"]), pacing, None)).await;
        assert_eq!(out, vec!["abc", "d"]);
        assert!(err.is_some());
        let pacing = Pacing {
            reset_after: Some(0),
            ..Pacing::default()
        };
        let (out, err) = drain(MockBody::new(frames(&["abc"]), pacing, None)).await;
        assert!(out.is_empty());
        assert!(err.is_some());
    }

    #[tokio::test]
    async fn gap_and_ttft_delay() {
        let pacing = Pacing {
            ttft: Some(Duration::from_millis(30)),
            gap: Some(Duration::from_millis(20)),
            ..Pacing::default()
        };
        let start = std::time::Instant::now();
        let (out, _) = drain(MockBody::new(frames(&["a", "b", "c"]), pacing, None)).await;
        assert_eq!(out.len(), 3);
        assert!(start.elapsed() >= Duration::from_millis(70));
    }
}
