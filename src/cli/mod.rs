//! The `pimage` command line: one binary, one subcommand per role. Each area's commands are
//! in a file of their own; `output` prints their listings as the `openstack` CLI does.
//!
//! The administration commands open the database (`store::connect_current`: never
//! migrating), except those that change tickets when given `--api` (`remote`): those go
//! through the API with an administrator's login, so an operator needs no database password.

mod catalog;
mod output;
mod remote;
mod secrets;
mod tickets;
mod users;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::Application;
use crate::config::Settings;
use crate::{health, store, telemetry, worker::WorkerApp};

pub use catalog::{AccountsCommand, ImagesCommand, Registration};
pub use secrets::SecretsCommand;
pub use tickets::TicketsCommand;
pub use users::{ApiKeysCommand, UsersCommand};

#[derive(Debug, Parser)]
#[command(
    name = "pimage",
    version,
    about = "Publishes UForge machine images to OpenStack clouds"
)]
pub struct Cli {
    /// Directory holding default.toml (and <PIMAGE_ENV>.toml).
    #[arg(
        long,
        global = true,
        env = "PIMAGE_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations, then exit.
    Migrate,
    /// Serve the REST API (and relay stored tickets to RabbitMQ).
    Api,
    /// Take tickets from RabbitMQ and publish images to the clouds.
    Worker,
    /// Manage API users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage API keys (the SDK's apiKey + signature scheme).
    #[command(subcommand, name = "apikeys")]
    ApiKeys(ApiKeysCommand),
    /// Manage images that can be published.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Inspect tickets; cancel, delete or run one again.
    #[command(subcommand)]
    Tickets(TicketsCommand),
    /// Manage the key that seals stored secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Inspect the cloud accounts users stored (never their passwords).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Print the effective configuration as TOML, secrets masked, each value with where it
    /// came from; with --for-url, the cloud profile (cloud.profiles) that applies to that
    /// Glance or Keystone URL.
    Config {
        /// A Glance (or Keystone) URL: show what applies to it.
        #[arg(long, value_name = "URL")]
        for_url: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(&cli.config_dir)?;
    telemetry::init(settings.log.format);
    match cli.command {
        Command::Migrate => {
            store::connect_and_migrate(&settings.database).await?;
            println!("migrations applied");
        }
        Command::Api => {
            let shutdown = telemetry::shutdown_on_signal()?;
            if let Some(app) = unless_stopped(&shutdown, Application::build(&settings)).await? {
                app.run_until_stopped(shutdown).await?;
            }
        }
        Command::Worker => run_worker(&settings).await?,
        Command::Users(command) => users::run_users(&settings, command).await?,
        Command::ApiKeys(command) => users::run_api_keys(&settings, command).await?,
        Command::Images(command) => catalog::run_images(&settings, command).await?,
        Command::Accounts(command) => catalog::run_accounts(&settings, command).await?,
        Command::Tickets(command) => tickets::run(&settings, command).await?,
        Command::Secrets(command) => secrets::run(&settings, command).await?,
        Command::Config { for_url: None } => {
            print!("{}", crate::config::describe_sources(&cli.config_dir)?)
        }
        Command::Config { for_url: Some(url) } => print!(
            "{}",
            crate::cloud::describe_for_url(&settings.cloud, &url).map_err(anyhow::Error::msg)?
        ),
    }
    Ok(())
}

/// `pimage worker`: the health listener, then the worker until a shutdown signal.
async fn run_worker(settings: &Settings) -> anyhow::Result<()> {
    let shutdown = telemetry::shutdown_on_signal()?;
    let Some(app) = unless_stopped(&shutdown, WorkerApp::build(settings)).await? else {
        return Ok(());
    };
    let timeouts = crate::api::connection_timeouts(&settings.limits);
    health::serve(
        settings.worker.listen,
        app.probes(),
        timeouts,
        shutdown.clone(),
    )
    .await?;
    app.run_until_stopped(shutdown).await
}

/// What `building` makes, unless a shutdown signal comes first (a start waits for
/// PostgreSQL as long as it takes): then nothing.
async fn unless_stopped<T>(
    shutdown: &CancellationToken,
    building: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        built = building => built.map(Some),
        _ = shutdown.cancelled() => Ok(None),
    }
}
