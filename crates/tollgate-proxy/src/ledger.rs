//! The usage ledger's writer: one record per request, written to the store
//! off the hot path, in batches.
//!
//! Durability, exactly (also in `docs/admin-api.md`):
//! - `logging` hands the record to a bounded in-memory queue without waiting.
//! - A writer thread of its own takes up to `batch_size` records at a time and
//!   commits them in one transaction, at most `flush_interval` after the first
//!   of them was queued. A record is durable once its batch commits: with
//!   SQLite (WAL, `synchronous=NORMAL`) that survives a crash of the process,
//!   with PostgreSQL a crash of the process or the machine.
//! - A failed write is retried with backoff, the batch kept in hand; records
//!   keep queueing meanwhile. Inserts are idempotent on the request id, so a
//!   retry after an unclear failure never counts a request twice.
//! - On shutdown and upgrade the binary stops the writer only after Pingora's
//!   runtimes have exited (so every `logging` hook has run), and the writer
//!   drains the whole queue first — waiting at most
//!   `server.graceful_shutdown_timeout_secs`; if the store is down that long,
//!   the count of unwritten records is logged.
//! - If the queue ever fills (the store slower than traffic for longer than the
//!   queue lasts), the record is dropped, counted in
//!   `tollgate_ledger_dropped_records_total` and logged with its request id.
//!   Nothing is dropped silently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, Notify};
use tollgate_config::LedgerSettings;
use tollgate_metrics::Metrics;
use tollgate_store::{Store, UsageRecord};

/// The queue into the ledger.
pub struct Ledger {
    tx: mpsc::Sender<UsageRecord>,
    stop: Arc<(AtomicBool, Notify)>,
    thread: Mutex<Option<JoinHandle<()>>>,
    m: LedgerMetrics,
}

#[derive(Clone)]
struct LedgerMetrics {
    queued: IntGauge,
    written: IntCounter,
    dropped: IntCounter,
    failures: IntCounter,
}

impl Ledger {
    /// Start the writer thread.
    pub fn start(
        store: Store,
        settings: LedgerSettings,
        metrics: &Metrics,
    ) -> std::io::Result<Ledger> {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let stop = Arc::new((AtomicBool::new(false), Notify::new()));
        let m = LedgerMetrics {
            queued: metrics.ledger_queued().clone(),
            written: metrics.ledger_written().clone(),
            dropped: metrics.ledger_dropped().clone(),
            failures: metrics.ledger_failures().clone(),
        };
        let writer = Writer {
            store,
            rx,
            settings,
            stop: stop.clone(),
            m: m.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(writer.run()),
                    Err(e) => log::error!("ledger: cannot start its runtime: {e}"),
                }
            })?;
        Ok(Ledger {
            tx,
            stop,
            thread: Mutex::new(Some(thread)),
            m,
        })
    }

    /// Queue a record; never waits.
    pub fn record(&self, rec: UsageRecord) {
        match self.tx.try_send(rec) {
            Ok(()) => self.m.queued.inc(),
            Err(mpsc::error::TrySendError::Full(rec)) => {
                self.m.dropped.inc();
                log::error!(
                    "ledger queue full: usage record of request {} (key {}, model {}, {} + {} tokens, ${:.6}) dropped",
                    rec.request_id, rec.key_id, rec.model, rec.input_tokens, rec.output_tokens, rec.cost_usd
                );
            }
            Err(mpsc::error::TrySendError::Closed(rec)) => {
                self.m.dropped.inc();
                log::error!(
                    "ledger stopped: usage record of request {} dropped",
                    rec.request_id
                );
            }
        }
    }

    /// Drain the queue into the store and stop the writer; waits at most `timeout`.
    /// Call it after the data plane has stopped.
    pub fn shutdown(&self, timeout: Duration) {
        self.stop.0.store(true, Ordering::Release);
        self.stop.1.notify_one();
        let Some(handle) = self.thread.lock().take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                log::error!(
                    "ledger: {} records still unwritten after {timeout:?}; giving up",
                    self.m.queued.get()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = handle.join();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::Release);
        self.stop.1.notify_one();
    }
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<UsageRecord>,
    settings: LedgerSettings,
    stop: Arc<(AtomicBool, Notify)>,
    m: LedgerMetrics,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.settings.batch_size);
        loop {
            let stopping = self.stop.0.load(Ordering::Acquire);
            if batch.is_empty() {
                if stopping && self.rx.is_empty() {
                    return;
                }
                tokio::select! {
                    r = self.rx.recv() => match r {
                        Some(rec) => batch.push(rec),
                        None => return,
                    },
                    _ = self.stop.1.notified() => continue,
                }
                // Let a batch gather for at most the flush interval. The writer
                // sleeps meanwhile instead of waiting on `recv`: waking this thread
                // for every record cost the data plane a context switch per request.
                // What is queued by then is taken below.
                let deadline = tokio::time::Instant::now() + self.settings.flush_interval;
                while batch.len() < self.settings.batch_size {
                    match self.rx.try_recv() {
                        Ok(rec) => batch.push(rec),
                        Err(_) => break,
                    }
                }
                if batch.len() < self.settings.batch_size && !self.stop.0.load(Ordering::Acquire) {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.stop.1.notified() => {}
                    }
                }
            }
            // Whatever else is already queued goes in the same transaction.
            while batch.len() < self.settings.batch_size {
                match self.rx.try_recv() {
                    Ok(rec) => batch.push(rec),
                    Err(_) => break,
                }
            }
            self.write(&mut batch).await;
        }
    }

    async fn write(&mut self, batch: &mut Vec<UsageRecord>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.store.insert_usage(batch).await {
                Ok(_) => {
                    self.m.written.inc_by(batch.len() as u64);
                    self.m.queued.sub(batch.len() as i64);
                    batch.clear();
                    return;
                }
                Err(e) => {
                    self.m.failures.inc();
                    log::error!(
                        "ledger: writing {} usage records failed, retrying in {backoff:?}: {e}",
                        batch.len()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
