//! The access log: one JSON line per request, written off the request path.
//!
//! A request serializes its line into a buffer and hands it to a bounded queue;
//! a writer thread wakes every 20 ms, drains the queue into a buffered sink and
//! flushes. Under load many lines share one `write(2)` instead of one each from
//! the request thread (a blocking syscall on the hot path). When the queue is
//! full the line is dropped and counted, never waited for.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use serde::Serialize;

/// Lines waiting for the writer, at most.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Serialize)]
pub struct Line<'a> {
    /// Gateway request id.
    pub request_id: &'a str,
    /// Endpoint (`chat`, `embeddings`, `api`, …).
    pub op: &'a str,
    /// Prompt API version, if any.
    pub api: Option<&'a str>,
    /// Key name (never the secret).
    pub key: Option<&'a str>,
    /// Key's team.
    pub team: Option<&'a str>,
    /// Public model.
    pub model: &'a str,
    /// Provider of the last attempt.
    pub provider: &'a str,
    /// HTTP status sent.
    pub status: u16,
    /// Streamed?
    pub stream: bool,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// Cached prompt tokens.
    pub cached_tokens: Option<u64>,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Total latency.
    pub latency_ms: f64,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Short cause of a failure.
    pub error: Option<&'a str>,
}

/// The queue and its writer thread.
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    /// Starts the writer on `sink` (stderr in the binary).
    pub fn start(
        sink: Box<dyn Write + Send>,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("tollgate-access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(AccessLog {
            tx,
            closed: AtomicBool::new(false),
            writer: Mutex::new(Some(writer)),
            dropped,
        })
    }

    /// Queues one line; drops it (and counts) if the writer is behind.
    pub fn record(&self, line: &Line<'_>) {
        let mut buf = Vec::with_capacity(384);
        if serde_json::to_writer(&mut buf, line).is_err() {
            return;
        }
        buf.push(b'\n');
        if self.closed.load(Ordering::Relaxed) {
            self.dropped.inc();
            return;
        }
        match self.tx.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Writes out what is queued and stops the writer.
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        // An empty line is the writer's signal to flush and stop.
        let _ = self.tx.send(Vec::new());
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

/// How long a line may wait in the queue. The writer sleeps rather than
/// blocking on the queue: a blocked receiver makes every send a futex wake-up
/// (a syscall on the request thread) and every line a `write(2)` of its own.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

fn write_lines(rx: Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        loop {
            match rx.try_recv() {
                Ok(line) if line.is_empty() => {
                    let _ = out.flush();
                    return;
                }
                Ok(line) => {
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(id: &str) -> Line<'_> {
        Line {
            request_id: id,
            op: "chat",
            api: None,
            key: Some("k"),
            team: None,
            model: "m",
            provider: "p",
            status: 200,
            stream: false,
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            cached_tokens: Some(0),
            cost_usd: 0.5,
            latency_ms: 1.25,
            ttft_ms: None,
            error: None,
        }
    }

    #[test]
    fn every_line_is_written_once_in_order() {
        let sink = Shared::default();
        let log = AccessLog::start(
            Box::new(sink.clone()),
            prometheus::IntCounter::new("d", "d").unwrap(),
        )
        .unwrap();
        let ids: Vec<String> = (0..5000).map(|i| format!("req_{i}")).collect();
        for id in &ids {
            log.record(&line(id));
        }
        log.shutdown();
        let text = String::from_utf8(sink.0.lock().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5000);
        assert_eq!(lines[4999]["request_id"], "req_4999");
        assert_eq!(lines[0]["completion_tokens"], 4);
        assert_eq!(lines[0]["api"], serde_json::Value::Null);
        // After shutdown a line is counted as dropped, not lost silently.
        log.record(&line("late"));
        assert_eq!(log.dropped.get(), 1);
    }
}
