//! `bare-pingora`: the load harness's floor. A Pingora `ProxyHttp` with only
//! `upstream_peer` (every other hook at its default), passing every request
//! to one upstream address over pooled HTTP/1.1 connections.
//!
//! It owns nothing else: no body handling, no logging, no metrics. Whatever
//! Tollgate costs above this is Tollgate's own (see `docs/benchmarks.md`,
//! "Load harness").
//!
//! ```sh
//! bare-pingora --listen 127.0.0.1:18001 --upstream 127.0.0.1:18000 --threads 1
//! curl -s localhost:18001/v1/chat/completions -d '{}'
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// A bare Pingora passthrough proxy (only `upstream_peer`).
#[derive(Parser, Debug)]
#[command(name = "bare-pingora", about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18001")]
    listen: SocketAddr,
    /// The one upstream (plain HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:18000")]
    upstream: SocketAddr,
    /// Worker threads of the proxy service (Pingora's `threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The whole proxy: one peer for every request.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/bare-pingora-{}.pid", args.listen.port()),
        upgrade_sock: format!("/tmp/bare-pingora-{}.sock", args.listen.port()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
        "bare pingora",
    );
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
