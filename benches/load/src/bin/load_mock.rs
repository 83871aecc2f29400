//! `load-mock`: the load harness's upstream. A minimal HTTP/1.1 keep-alive
//! server answering every request with fixed bytes prepared at startup, so
//! that the proxies in front of it, not the mock, are what a load run measures.
//!
//! It owns the fixed replies and nothing else (the scriptable, validating
//! mock is `tollgate-mock`; it parses and checks every request, which costs
//! more than the proxies under test):
//!
//! - `…/messages` answers in Anthropic's Messages format, any other path in
//!   OpenAI's chat-completions format;
//! - a request whose `Accept` header names `text/event-stream` gets a stream
//!   (chunked, `--events` text deltas plus the usage and closing events),
//!   others one JSON body with usage;
//! - a path under `/slow/` gets a stream whose events come `--slow-gap-ms`
//!   apart (`--slow-events` of them): an idle, long-lived stream.
//!
//! Request bodies are read to their `Content-Length` and discarded.
//!
//! ```sh
//! load-mock --listen 127.0.0.1:18000
//! curl -s localhost:18000/v1/chat/completions -d '{}'
//! curl -sN -H 'accept: text/event-stream' localhost:18000/v1/messages -d '{}'
//! ```

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fixed-body mock LLM upstream for load runs.
#[derive(Parser, Debug, Clone)]
#[command(name = "load-mock", about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Text-delta events in a stream.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// `event`: one write per stream event (a proxy sees them as separate
    /// reads, as from a real model); `one`: the whole stream in one write.
    #[arg(long, default_value = "event")]
    stream_writes: String,
    /// Gap between two events of a slow stream (`/slow/…`).
    #[arg(long, default_value_t = 1000)]
    slow_gap_ms: u64,
    /// Events of a slow stream.
    #[arg(long, default_value_t = 120)]
    slow_events: usize,
    /// Runtime worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// One HTTP chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

fn json_reply(body: &str) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

const STREAM_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A stream as the writes that make it: the header, one chunk per event, the last chunk.
struct StreamReply {
    writes: Vec<Vec<u8>>,
}

impl StreamReply {
    fn new(events: Vec<String>, one_write: bool) -> StreamReply {
        let mut writes = vec![STREAM_HEAD.to_vec()];
        // The header goes out with the first event, as servers usually do.
        for (i, e) in events.iter().enumerate() {
            let c = chunk(e.as_bytes());
            if i == 0 {
                writes[0].extend_from_slice(&c);
            } else {
                writes.push(c);
            }
        }
        writes.push(LAST_CHUNK.to_vec());
        if one_write {
            writes = vec![writes.concat()];
        }
        StreamReply { writes }
    }
}

fn openai_events(n: usize) -> Vec<String> {
    let head = r#""id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench""#;
    let mut v = vec![format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    )];
    for i in 0..n {
        v.push(format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
    }
    v.push(format!(
        "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"
    ));
    v.push(format!(
        "data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{n},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0}}}}}}\n\n",
        12 + n
    ));
    v.push("data: [DONE]\n\n".to_string());
    v
}

fn anthropic_events(n: usize) -> Vec<String> {
    let mut v = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for i in 0..n {
        v.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i} \"}}}}\n\n"
        ));
    }
    v.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    v.push(format!(
        "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}\n\n"
    ));
    v.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    v
}

/// Every reply, prepared once.
struct Replies {
    openai_json: Vec<u8>,
    anthropic_json: Vec<u8>,
    openai_stream: StreamReply,
    anthropic_stream: StreamReply,
    slow: Vec<Vec<u8>>,
    slow_gap: Duration,
}

impl Replies {
    fn new(a: &Args) -> Replies {
        let one = a.stream_writes == "one";
        let mut slow: Vec<Vec<u8>> = openai_events(a.slow_events)
            .iter()
            .map(|e| chunk(e.as_bytes()))
            .collect();
        slow.push(LAST_CHUNK.to_vec());
        if let Some(first) = slow.first_mut() {
            let mut head = STREAM_HEAD.to_vec();
            head.append(first);
            *first = head;
        }
        Replies {
            openai_json: json_reply(concat!(
                r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_bench","#,
                r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today? This is a fixed benchmark reply.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":12,"completion_tokens":16,"total_tokens":28,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#
            )),
            anthropic_json: json_reply(concat!(
                r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","#,
                r#""content":[{"type":"text","text":"Hello! How can I help you today? This is a fixed benchmark reply."}],"#,
                r#""stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":16}}"#
            )),
            openai_stream: StreamReply::new(openai_events(a.events), one),
            anthropic_stream: StreamReply::new(anthropic_events(a.events), one),
            slow,
            slow_gap: Duration::from_millis(a.slow_gap_ms),
        }
    }
}

/// What a parsed request header asks for.
struct Head {
    len: usize,
    body: usize,
    close: bool,
    anthropic: bool,
    stream: bool,
    slow: bool,
}

fn parse(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let path = req.path.unwrap_or("/");
    let mut h = Head {
        len,
        body: 0,
        close: req.version == Some(0),
        anthropic: path.ends_with("/messages"),
        stream: false,
        slow: path.starts_with("/slow/"),
    };
    for hd in req.headers.iter() {
        if hd.name.eq_ignore_ascii_case("content-length") {
            h.body = std::str::from_utf8(hd.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(())?;
        } else if hd.name.eq_ignore_ascii_case("transfer-encoding") {
            // Not needed by any proxy under test; refuse rather than misread.
            return Err(());
        } else if hd.name.eq_ignore_ascii_case("accept") {
            h.stream = hd
                .value
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"));
        } else if hd.name.eq_ignore_ascii_case("connection") {
            h.close = hd.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some(h))
}

async fn write_all(s: &mut TcpStream, writes: &[Vec<u8>]) -> io::Result<()> {
    for w in writes {
        s.write_all(w).await?;
    }
    Ok(())
}

async fn connection(mut s: TcpStream, r: Arc<Replies>) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let head = loop {
            if let Some(h) = parse(&buf).map_err(|()| io::ErrorKind::InvalidData)? {
                break h;
            }
            let n = s.read(&mut scratch).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&scratch[..n]);
        };
        // Discard the body, keeping whatever follows it (a pipelined request).
        let mut left = head.body;
        let have = buf.len() - head.len;
        if have >= left {
            buf.drain(..head.len + left);
        } else {
            left -= have;
            buf.clear();
            while left > 0 {
                let n = s.read(&mut scratch).await?;
                if n == 0 {
                    return Ok(());
                }
                if n > left {
                    buf.extend_from_slice(&scratch[left..n]);
                    left = 0;
                } else {
                    left -= n;
                }
            }
        }
        if head.slow {
            for (i, w) in r.slow.iter().enumerate() {
                if i > 0 && i + 1 < r.slow.len() {
                    tokio::time::sleep(r.slow_gap).await;
                }
                s.write_all(w).await?;
            }
        } else {
            match (head.anthropic, head.stream) {
                (false, false) => s.write_all(&r.openai_json).await?,
                (true, false) => s.write_all(&r.anthropic_json).await?,
                (false, true) => write_all(&mut s, &r.openai_stream.writes).await?,
                (true, true) => write_all(&mut s, &r.anthropic_stream.writes).await?,
            }
        }
        if head.close {
            return Ok(());
        }
    }
}

async fn serve(listener: TcpListener, replies: Arc<Replies>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(s, replies.clone()));
            }
            Err(e) => {
                eprintln!("load-mock: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load-mock: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let replies = Arc::new(Replies::new(&args));
    rt.block_on(async {
        match TcpListener::bind(args.listen).await {
            Ok(l) => {
                eprintln!("load-mock listening on http://{}", args.listen);
                serve(l, replies).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("load-mock: cannot listen on {}: {e}", args.listen);
                ExitCode::FAILURE
            }
        }
    })
}
