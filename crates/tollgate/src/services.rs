//! Background services run by the Pingora server beside the data plane.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

use tollgate_proxy::{App, SharedSnapshot};

/// Keeps keys and teams in step with the store (see [`App::run_policy_sync`]).
pub struct PolicySync {
    app: Arc<App>,
}

impl PolicySync {
    /// Sync this app's policy.
    pub fn new(app: Arc<App>) -> Self {
        PolicySync { app }
    }
}

#[async_trait]
impl BackgroundService for PolicySync {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.app.run_policy_sync(shutdown).await;
    }
}

/// Ends a graceful stop early. On SIGTERM, or on SIGQUIT once the listening
/// sockets are handed over, Pingora stops accepting and then always waits the
/// whole grace period before it cancels what is left. An LLM stream may need
/// much of that period, an idle gateway none: so the grace period is the bound
/// (`server.grace_period_secs`), and this exits as soon as no request is in
/// flight, after flushing the ledger.
pub struct Drain {
    app: Arc<App>,
    flush_timeout: Duration,
}

impl Drain {
    /// Drain this app; give the ledger `flush_timeout` to flush.
    pub fn new(app: Arc<App>, flush_timeout: Duration) -> Self {
        Drain { app, flush_timeout }
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        // A connection accepted just before the listeners closed may still be
        // sending its request: in flight must stay at zero for a moment.
        const QUIET: Duration = Duration::from_millis(300);
        let in_flight = self.app.metrics.in_flight().clone();
        let mut quiet_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if in_flight.get() > 0 {
                quiet_since = None;
                continue;
            }
            let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= QUIET {
                break;
            }
        }
        log::info!("drained: no request in flight; flushing the ledger and exiting");
        let app = self.app.clone();
        let timeout = self.flush_timeout;
        let _ = tokio::task::spawn_blocking(move || app.shutdown(timeout)).await;
        log::info!("tollgate stopped");
        std::process::exit(0);
    }
}

/// Reloads the config file on SIGHUP (see [`App::reload`]).
pub struct ReloadOnHangup {
    app: Arc<App>,
}

impl ReloadOnHangup {
    /// Reload this app's config.
    pub fn new(app: Arc<App>) -> Self {
        ReloadOnHangup { app }
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot handle SIGHUP, config reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            log::info!("SIGHUP: reloading the config");
            // Success and failure are logged and counted by `reload` itself.
            let _ = self.app.reload().await;
        }
    }
}

/// Active health checks of the providers that configure one
/// (see [`App::run_active_checks`]).
pub struct ActiveChecks {
    app: Arc<App>,
}

impl ActiveChecks {
    /// Check this app's providers.
    pub fn new(app: Arc<App>) -> Self {
        ActiveChecks { app }
    }
}

#[async_trait]
impl BackgroundService for ActiveChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.app.run_active_checks(shutdown).await;
    }
}

/// Re-resolves provider host names every 30 s, off the request path
/// (`HttpPeer::new` would resolve blocking, and panic on failure).
pub struct DnsRefresh {
    state: SharedSnapshot,
}

impl DnsRefresh {
    /// Refresh the providers of whatever snapshot is current.
    pub fn new(state: SharedSnapshot) -> Self {
        DnsRefresh { state }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.state.load_full();
            for p in snap.providers.values() {
                let (host, port) = p.authority();
                match tokio::net::lookup_host((host, port)).await {
                    Ok(addrs) => {
                        let addrs: Vec<SocketAddr> = addrs.collect();
                        if !addrs.is_empty() {
                            p.set_addrs(&addrs);
                        }
                    }
                    // Keep the last good addresses: a DNS hiccup must not take a provider down.
                    Err(e) => log::warn!("provider {}: cannot resolve {host}: {e}", p.name),
                }
            }
        }
    }
}

/// The built-in mock provider, for offline use of the default config.
pub struct MockUpstream {
    addr: SocketAddr,
}

impl MockUpstream {
    /// Serve the mock on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        MockUpstream { addr }
    }
}

#[async_trait]
impl BackgroundService for MockUpstream {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // During an upgrade the old process holds the port until it exits.
        let mut warned = false;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    if !warned {
                        log::warn!("mock provider: cannot listen on {} yet: {e}", self.addr);
                        warned = true;
                    }
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        log::info!("mock provider listening on {}", self.addr);
        tokio::select! {
            _ = shutdown.changed() => {}
            r = tollgate_mock::serve(listener, tollgate_mock::MockConfig::default()) => {
                if let Err(e) = r {
                    log::error!("mock provider stopped: {e}");
                }
            }
        }
    }
}
