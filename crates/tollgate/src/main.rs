//! The `tollgate` binary: command line, wiring of the Pingora server and its
//! services (data plane, admin, DNS refresh, optional built-in mock provider).

mod services;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use tollgate_config::Config;
use tollgate_metrics::Metrics;
use tollgate_proxy::{App, Gateway};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An AI gateway on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The Tollgate config file.
        #[arg(long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
        /// Pingora's own flags: -u (take over sockets from a running instance), -d (daemon), -t (test).
        #[command(flatten)]
        pingora: Opt,
    },
    /// Validate a config file; print every error with its path; exit 1 on error.
    Check {
        /// The config file.
        #[arg(long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
    },
    /// Print the stored form (`sha256:…`) of a client key read from stdin, or of a new one.
    HashKey {
        /// Generate a new random key and print it with its stored form.
        #[arg(long)]
        generate: bool,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| {
        for e in &errs.0 {
            eprintln!("error: {e}");
        }
        eprintln!("{}: {} error(s)", path.display(), errs.0.len());
        ExitCode::from(1)
    })
}

#[allow(clippy::print_stdout)] // the CLI's output is its interface
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} providers, {} models, {} keys)",
                    config.display(),
                    c.providers.len(),
                    c.models.len(),
                    c.keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashKey { generate } => {
            let key = if generate {
                let k = tollgate_auth::generate_key();
                println!("key:  {k}");
                k
            } else {
                let mut line = String::new();
                if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim().is_empty() {
                    eprintln!("error: give the key on standard input, e.g. `printf %s \"$KEY\" | tollgate hash-key`");
                    return ExitCode::from(1);
                }
                line.trim().to_string()
            };
            let hash = tollgate_auth::KeyHash::of(&key);
            if generate {
                println!("hash: {hash}");
            } else {
                println!("{hash}");
            }
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Command::Serve { config, pingora } => match load(&config) {
            Ok(c) => serve(c, config, pingora),
            Err(code) => code,
        },
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            if record.target() == "tollgate::access" {
                writeln!(buf, "{}", record.args())
            } else {
                writeln!(
                    buf,
                    "{} {:<5} {}: {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
}

fn serve(config: Config, path: PathBuf, opt: Opt) -> ExitCode {
    init_logging();
    let metrics = Arc::new(Metrics::new());
    // The store and ledger keep runtimes of their own; this one only runs startup.
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(App::start(config.clone(), metrics.clone()))
                .map_err(|e| e.to_string())
        });
    let app = match started {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown_timeout = config.server.graceful_shutdown_timeout;

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        pid_file: config.server.pid_file.display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(app.clone()),
        "tollgate data plane",
    );
    for addr in &config.server.listen {
        proxy.add_tcp(&addr.to_string());
    }
    let mut admin = Service::new(
        "tollgate admin".to_string(),
        tollgate_admin::AdminApp::new(app.clone()),
    );
    admin.add_tcp(&config.server.admin_listen.to_string());
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(pingora::services::background::background_service(
        "dns refresh",
        services::DnsRefresh::new(app.snapshot.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "policy sync",
        services::PolicySync::new(app.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "active health checks",
        services::ActiveChecks::new(app.clone()),
    ));
    if let Some(addr) = config.mock_upstream {
        server.add_service(pingora::services::background::background_service(
            "mock provider",
            services::MockUpstream::new(addr),
        ));
    }
    log::info!(
        "tollgate {} serving {} on {:?}, admin on {}",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        config.server.listen,
        config.server.admin_listen
    );
    server.run(pingora::server::RunArgs::default());
    // Every runtime has exited, so every request's accounting has run: now the
    // ledger can be drained completely.
    app.shutdown(shutdown_timeout);
    log::info!("tollgate stopped");
    ExitCode::SUCCESS
}
