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
        let listener = match tokio::net::TcpListener::bind(self.addr).await {
            Ok(l) => l,
            Err(e) => {
                log::error!("mock provider: cannot listen on {}: {e}", self.addr);
                return;
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
