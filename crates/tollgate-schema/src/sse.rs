//! An incremental Server-Sent Events decoder.
//!
//! Bytes arrive split anywhere (one byte at a time in the worst case); the
//! decoder keeps only the current unfinished event, so memory stays bounded by
//! the largest single event, never by the stream's length.

/// One decoded event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, if any.
    pub event: Option<&'a str>,
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// The stream broke the framing rules or an event exceeded the size limit.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past the limit.
    #[error("an SSE event exceeded {0} bytes")]
    TooLarge(usize),
}

/// Incremental decoder: feed bytes, receive whole events.
#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    pending_cr: bool,
    max_event: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(16 * 1024 * 1024)
    }
}

impl SseDecoder {
    /// A decoder that refuses events larger than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseDecoder {
            line: Vec::with_capacity(512),
            event: String::new(),
            data: Vec::with_capacity(1024),
            has_data: false,
            pending_cr: false,
            max_event,
        }
    }

    /// Feed bytes; `on_event` is called for every complete event.
    pub fn feed<F>(&mut self, mut input: &[u8], mut on_event: F) -> Result<(), SseError>
    where
        F: FnMut(SseEvent<'_>),
    {
        if self.pending_cr {
            // A CR ended the previous line; a following LF belongs to it.
            self.pending_cr = false;
            if input.first() == Some(&b'\n') {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                None => {
                    self.line.extend_from_slice(input);
                    if self.line.len() + self.data.len() > self.max_event {
                        return Err(SseError::TooLarge(self.max_event));
                    }
                    return Ok(());
                }
                Some(pos) => {
                    self.line.extend_from_slice(&input[..pos]);
                    let was_cr = input[pos] == b'\r';
                    input = &input[pos + 1..];
                    if was_cr {
                        if input.is_empty() {
                            self.pending_cr = true;
                        } else if input[0] == b'\n' {
                            input = &input[1..];
                        }
                    }
                    self.end_line(&mut on_event)?;
                }
            }
        }
        Ok(())
    }

    fn end_line<F>(&mut self, on_event: &mut F) -> Result<(), SseError>
    where
        F: FnMut(SseEvent<'_>),
    {
        if self.line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    event: if self.event.is_empty() {
                        None
                    } else {
                        Some(&self.event)
                    },
                    data: &self.data,
                });
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            return Ok(());
        }
        let line = &self.line[..];
        if line[0] != b':' {
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                    if self.data.len() > self.max_event {
                        return Err(SseError::TooLarge(self.max_event));
                    }
                }
                b"event" => {
                    self.event.clear();
                    self.event.push_str(&String::from_utf8_lossy(value));
                }
                // `id` and `retry` do not matter to a proxy that re-frames events.
                _ => {}
            }
        }
        self.line.clear();
        Ok(())
    }

    /// Bytes held for an unfinished event (for tests of bounded memory).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |e| {
                out.push((
                    e.event.map(str::to_owned),
                    String::from_utf8(e.data.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn decodes_any_split() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata: l1\r\ndata: l2\r\n\r\ndata: [DONE]\r\r";
        let whole = collect(&[stream]);
        assert_eq!(
            whole,
            vec![
                (Some("a".into()), "{\"x\":1}".into()),
                (None, "l1\nl2".into()),
                (None, "[DONE]".into())
            ]
        );
        for i in 0..stream.len() {
            assert_eq!(
                collect(&[&stream[..i], &stream[i..]]),
                whole,
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes), whole);
    }

    #[test]
    fn bounded() {
        let mut d = SseDecoder::new(8);
        assert!(d.feed(b"data: 0123456789", |_| {}).is_err());
    }
}
