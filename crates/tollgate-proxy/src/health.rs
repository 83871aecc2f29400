//! Active health checks: Pingora's `HttpHealthCheck` sends `GET <path>` (with
//! the provider's credentials) to every resolved address of each provider that
//! configures `health_check`, every `interval`. A provider none of whose
//! addresses answer 200 takes its targets out of every plan until a check
//! passes again; passive health (ejection on real traffic) works alongside.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use tokio::sync::watch;

use crate::app::App;
use crate::snapshot::ProviderEntry;

/// Check one provider: up if any of its addresses answers 200.
async fn check(p: &ProviderEntry) -> Result<(), String> {
    let Some(cfg) = &p.health_check else {
        return Ok(());
    };
    let mut hc = HttpHealthCheck::new(p.host(), p.tls());
    let mut req = RequestHeader::build("GET", cfg.path.as_bytes(), None)
        .map_err(|e| format!("bad check request: {e}"))?;
    let headers = p
        .keys
        .first()
        .map(|k| k.headers.as_slice())
        .unwrap_or_default();
    let set = (|| -> pingora::Result<()> {
        req.insert_header(http::header::HOST, p.host_header.clone())?;
        for (k, v) in headers.iter().chain(&p.headers) {
            req.insert_header(k.clone(), v.clone())?;
        }
        Ok(())
    })();
    set.map_err(|e| format!("bad check header: {e}"))?;
    hc.req = req;
    hc.peer_template.options.connection_timeout = Some(cfg.timeout);
    hc.peer_template.options.total_connection_timeout = Some(cfg.timeout);
    hc.peer_template.options.read_timeout = Some(cfg.timeout);
    hc.peer_template.options.write_timeout = Some(cfg.timeout);
    let peers = p.peers();
    if peers.is_empty() {
        return Err("no resolved address".into());
    }
    let mut last = String::new();
    for peer in peers.iter() {
        let backend = Backend {
            addr: peer._address.clone(),
            weight: 1,
            ext: http::Extensions::new(),
        };
        // Bounded even if the check's own timeouts were not honoured.
        match tokio::time::timeout(cfg.timeout * 2, hc.check(&backend)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(last)
}

impl App {
    /// Run the active health checks of every provider that has one, until shutdown.
    pub async fn run_active_checks(&self, mut shutdown: watch::Receiver<bool>) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut up: HashMap<String, bool> = HashMap::new();
        loop {
            let snap = self.snapshot.load_full();
            let now = Instant::now();
            for p in snap.providers.values() {
                let Some(cfg) = &p.health_check else { continue };
                if due.get(&p.name).is_some_and(|t| *t > now) {
                    continue;
                }
                due.insert(p.name.clone(), now + cfg.interval);
                let verdict = check(p).await;
                let ok = verdict.is_ok();
                if up.insert(p.name.clone(), ok) != Some(ok) {
                    match &verdict {
                        Ok(()) => log::info!("provider {}: health check passes", p.name),
                        Err(e) => log::warn!("provider {}: health check fails: {e}", p.name),
                    }
                }
                self.metrics.provider_check(&p.name, ok);
                for m in snap.models.values() {
                    for t in m.route.targets() {
                        if t.provider.name == p.name {
                            t.state.set_check_down(!ok);
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
