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

/// jemalloc instead of glibc's malloc: under load glibc spent ~11% of the
/// request thread in malloc/free (arena locking, consolidation of the ledger's
/// freed batches); see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
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

/// Become a daemon before any thread exists: the store's runtime and the
/// ledger writer start with the app, and threads do not survive `fork`.
/// (Pingora's own `-d` forks later, inside `Server::run`.) The parent waits
/// until the daemon is serving — after an upgrade, until it holds the
/// listening sockets — so that `systemctl reload` fails if the upgrade does.
fn daemonize(config: &Config) -> Result<std::io::PipeWriter, ExitCode> {
    use std::io::Read;
    let pid_file = &config.server.pid_file;
    // The running instance holds a lock on its pid file: move it aside, as Pingora does.
    if pid_file.exists() {
        let mut old = pid_file.clone().into_os_string();
        old.push(".old");
        let _ = std::fs::rename(pid_file, old);
    }
    let (mut ready_rx, ready_tx) = std::io::pipe().map_err(|e| {
        eprintln!("error: cannot create a pipe: {e}");
        ExitCode::from(1)
    })?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let outcome = daemonix::Daemonize::new()
        .pid_file(pid_file)
        .working_directory(cwd)
        .umask(0o007)
        .stdout(daemonix::Stdio::keep())
        .stderr(daemonix::Stdio::keep())
        .execute();
    match outcome {
        daemonix::Outcome::Parent(Err(e)) => {
            eprintln!("error: cannot daemonize: {e}");
            Err(ExitCode::from(1))
        }
        daemonix::Outcome::Parent(Ok(_)) => {
            drop(ready_tx);
            let mut byte = [0u8; 1];
            match ready_rx.read(&mut byte) {
                Ok(1) => Err(ExitCode::SUCCESS),
                _ => {
                    eprintln!("error: the daemon exited before it was ready; see its log");
                    Err(ExitCode::from(1))
                }
            }
        }
        daemonix::Outcome::Child(Err(e)) => {
            eprintln!("error: cannot daemonize: {e}");
            Err(ExitCode::from(1))
        }
        daemonix::Outcome::Child(Ok(_)) => Ok(ready_tx),
    }
}

fn serve(config: Config, path: PathBuf, mut opt: Opt) -> ExitCode {
    init_logging();
    let mut ready = None;
    if opt.daemon {
        match daemonize(&config) {
            Ok(tx) => ready = Some(tx),
            Err(code) => return code,
        }
        opt.daemon = false;
    }
    let metrics = Arc::new(Metrics::new());
    // The store and ledger keep runtimes of their own; this one only runs startup.
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(App::start_from(
                config.clone(),
                Some(path.clone()),
                metrics.clone(),
            ))
            .map_err(|e| e.to_string())
        });
    let app = match started {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Access log lines leave the request threads through a queue; a writer
    // thread batches them onto stderr.
    match tollgate_proxy::access_log::AccessLog::start(
        Box::new(std::io::stderr()),
        metrics.access_log_dropped().clone(),
    ) {
        Ok(log) => {
            let _ = app.access_log.set(log);
        }
        Err(e) => eprintln!("warning: access log writer did not start ({e}); logging inline"),
    }
    let shutdown_timeout = config.server.graceful_shutdown_timeout;

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        pid_file: config.server.pid_file.display().to_string(),
        // Both sides of an upgrade wait this many seconds for the other: the
        // new process opens the store before it asks for the sockets, and
        // Pingora's default of 5 leaves a slow store no margin.
        upgrade_sock_connect_accept_max_retries: Some(30),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With -u this waits for the running instance's listening sockets.
    server.bootstrap();
    if let Some(mut tx) = ready.take() {
        let _ = tx.write_all(b"r");
    }

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(app.clone()),
        "tollgate data plane",
    );
    for addr in &config.server.listen {
        proxy.add_tcp(&addr.to_string());
    }
    if config.server.h2c {
        if let Some(logic) = proxy.app_logic_mut() {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            logic.server_options = Some(options);
        }
    }
    if let Some(tls) = &config.server.tls {
        for addr in &tls.listen {
            let settings = pingora::listeners::tls::TlsSettings::intermediate(
                &tls.cert_file.display().to_string(),
                &tls.key_file.display().to_string(),
            );
            let mut settings = match settings {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: server.tls: {e}");
                    return ExitCode::from(1);
                }
            };
            if tls.h2 {
                settings.enable_h2();
            }
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        }
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
        "drain",
        services::Drain::new(app.clone(), shutdown_timeout),
    ));
    server.add_service(pingora::services::background::background_service(
        "config reload on SIGHUP",
        services::ReloadOnHangup::new(app.clone()),
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
