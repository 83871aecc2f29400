//! `tollgate-mock`: run the mock LLM provider standalone.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tollgate_mock::{serve, MockConfig};

/// A mock LLM provider speaking the OpenAI, Azure OpenAI, Anthropic and Gemini wire formats.
#[derive(Parser, Debug)]
#[command(name = "tollgate-mock", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010")]
    listen: SocketAddr,
    /// Require this API key (`Authorization: Bearer`, Azure `api-key`,
    /// Anthropic `x-api-key`, Gemini `x-goog-api-key` or `?key=`).
    #[arg(long)]
    api_key: Option<String>,
    /// How many recent requests to keep for `GET /__mock/requests`.
    #[arg(long, default_value_t = 32)]
    record_limit: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tollgate-mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("tollgate-mock listening on http://{addr}");
    let config = MockConfig {
        api_key: args.api_key,
        record_limit: args.record_limit,
    };
    match serve(listener, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-mock: {e}");
            ExitCode::FAILURE
        }
    }
}
