//! `billing`: the billing service binary. See `billing --help`.

use billing_server::config::DatabaseArgs;
use billing_server::telemetry::{self, LogFormat};
use billing_server::{Application, ServeConfig, shutdown_signal};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "billing",
    version,
    about = "Billing and real-time charging service"
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        env = "BILLING_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the service's roles (API and sweeper by default).
    Serve(ServeConfig),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Print the default rate table as TOML (a starting point for BILLING_RATE_TABLE).
    Rates,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Cmd::Serve(config) => {
            let app = Application::build(config).await?;
            app.run(shutdown_signal()).await
        }
        Cmd::Migrate(db) => {
            let store = billing_store::Store::connect(
                db.database_url.expose(),
                1,
                billing_domain::RateTable::default(),
            )?;
            let applied = store.migrate().await?;
            tracing::info!(applied, "migrations are up to date");
            Ok(())
        }
        Cmd::Rates => {
            print!("{}", billing_domain::RateTable::default().to_toml());
            Ok(())
        }
    }
}
