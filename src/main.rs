//! The `vidgate` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vidgate::config::DEFAULT_CONFIG_PATH;
use vidgate::mock_upstream::MockOptions;

// glibc's malloc was a quarter of the request path's CPU (bench/README.md, profile); jemalloc
// costs the same CPU as mimalloc here with half its resident memory.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "vidgate",
    version,
    about = "Company-wide gateway for paid AI video generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Run a local simulator of the upstream API.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "sk-evo-mock")]
        api_key: String,
        #[arg(long, default_value_t = 300)]
        pending_ms: u64,
        #[arg(long, default_value_t = 1000)]
        processing_ms: u64,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        output_offset_ms: i64,
        #[arg(long)]
        allow_local_callbacks: bool,
        /// Percent of tasks whose callback is lost (never sent).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        callback_drop_pct: u8,
        /// Percent of callbacks sent twice.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        callback_dup_pct: u8,
        /// Each callback waits a random 0..=N ms first.
        #[arg(long, default_value_t = 0)]
        callback_delay_ms: u64,
    },
    /// Mock upstream + gateway in one process, with a token and curl lines to paste.
    Demo {
        /// Default: the config's `server.listen` (127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Pricing, auth, tenants and limits from this file; the upstream is always the
        /// built-in mock and the store a fresh temporary one.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Mint an HS256 token from the configured secret (prints the JWT only).
    Token {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        sub: String,
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print a one-time URL that opens a console session as this user.
    ConsoleLink {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        sub: String,
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, default_value = "15m")]
        ttl: String,
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Move a store's contents: export to JSON lines, import into an empty store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Print the OpenAPI document (equal to the committed openapi/openapi.json).
    Openapi,
    /// Validate and print the effective configuration, secrets masked.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Everything the store holds, as JSON lines on stdout (stop every gateway on it first).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// A dump from stdin into the configured store, which must be empty.
    Import {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    vidgate::telemetry::init();
    let result = match cli.command {
        Command::Serve { config } => vidgate::cli::serve(&config).await,
        Command::MockUpstream {
            listen,
            api_key,
            pending_ms,
            processing_ms,
            output_offset_ms,
            allow_local_callbacks,
            callback_drop_pct,
            callback_dup_pct,
            callback_delay_ms,
        } => {
            let options = MockOptions {
                listen,
                api_key,
                pending_ms,
                processing_ms,
                output_offset_ms,
                allow_local_callbacks,
                callback_drop_pct,
                callback_dup_pct,
                callback_delay_ms,
            };
            vidgate::cli::mock_upstream(options).await
        }
        Command::Demo { listen, config } => vidgate::cli::demo(listen.as_deref(), config.as_deref()).await,
        Command::Token {
            tenant,
            sub,
            roles,
            ttl,
            config,
        } => vidgate::cli::token(&config, tenant.as_deref(), &sub, &roles, &ttl),
        Command::ConsoleLink {
            tenant,
            sub,
            roles,
            ttl,
            config,
        } => vidgate::cli::console_link(&config, tenant.as_deref(), &sub, &roles, &ttl),
        Command::Store {
            action: StoreAction::Export { config },
        } => vidgate::cli::store_export(&config).await,
        Command::Store {
            action: StoreAction::Import { config },
        } => vidgate::cli::store_import(&config).await,
        Command::CheckConfig { config } => vidgate::cli::check_config(&config),
        Command::Openapi => {
            println!("{}", vidgate::openapi::document_json());
            Ok(())
        }
    };
    vidgate::telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vidgate: {message}");
            ExitCode::FAILURE
        }
    }
}
