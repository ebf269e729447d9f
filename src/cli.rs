//! The `pimage` command line: one binary, one subcommand per role.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::{Application, PUBLISH_ENTITLEMENT};
use crate::config::Settings;
use crate::secrets::{self, Secret, SecretBox};
use crate::store::{self, images, users, NewImage};
use crate::{image_files, telemetry, worker::Worker};

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
    /// Manage images that can be published.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Print the effective configuration, secrets masked.
    Config,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user, or update an existing one's password, flag and entitlements.
    Add {
        /// Login name (the {uid} of the API paths).
        login: String,
        /// Password; read from PIMAGE_USER_PASSWORD when not given.
        #[arg(long, env = "PIMAGE_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Entitlements to grant (repeatable). Default: migration_publish.
        #[arg(long = "entitlement")]
        entitlements: Vec<String>,
        /// May reach every user's resources.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Register an image file for a user; prints the image URI to publish.
    Register {
        /// Owner's login.
        #[arg(long)]
        user: String,
        /// The disk image file.
        #[arg(long)]
        file: PathBuf,
        /// Its disk format: raw, qcow2, vmdk, vhd, vhdx, vdi, iso, ploop.
        #[arg(long)]
        format: String,
        /// Image name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Keep the file where it is instead of copying it into storage.image_dir.
        #[arg(long)]
        in_place: bool,
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
            let app = Application::build(&settings).await?;
            app.run_until_stopped(shutdown_on_signal()).await?;
        }
        Command::Worker => {
            let secrets = SecretBox::from_base64_key(&settings.secrets.key)?;
            let pool = store::connect_and_migrate(&settings.database).await?;
            Worker::new(
                pool,
                settings.worker.clone(),
                settings.amqp.clone(),
                secrets,
            )
            .run(shutdown_on_signal())
            .await?;
        }
        Command::Users(UsersCommand::Add {
            login,
            password,
            mut entitlements,
            admin,
        }) => {
            if entitlements.is_empty() {
                entitlements.push(PUBLISH_ENTITLEMENT.to_string());
            }
            let pool = store::connect_and_migrate(&settings.database).await?;
            let password = Secret::new(password);
            let hash =
                tokio::task::spawn_blocking(move || secrets::hash_password(&password)).await?;
            let id = users::upsert(&pool, &login, &hash, admin, &entitlements).await?;
            println!(
                "user {login} (id {id}) entitlements: {}",
                entitlements.join(",")
            );
        }
        Command::Images(ImagesCommand::Register {
            user,
            file,
            format,
            name,
            in_place,
        }) => {
            let pool = store::connect_and_migrate(&settings.database).await?;
            let owner = users::find_by_login(&pool, &user).await?.ok_or_else(|| {
                anyhow::anyhow!("no user '{user}': create it with `pimage users add`")
            })?;
            let image_dir = settings.storage.image_dir.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                image_files::prepare(&file, &format.to_lowercase(), &image_dir, in_place)
                    .map(|f| (f, format))
            })
            .await??;
            let (prepared, format) = prepared;
            let image = images::register(
                &pool,
                &NewImage {
                    owner_id: owner.id,
                    name: name.as_deref().unwrap_or(&prepared.file_name),
                    file_path: &prepared.path.to_string_lossy(),
                    file_name: &prepared.file_name,
                    format: &format.to_lowercase(),
                    size_bytes: prepared.size as i64,
                    md5sum: &prepared.md5,
                    sha256sum: &prepared.sha256,
                },
            )
            .await?;
            println!("{}", image.uri());
        }
        Command::Config => println!("{}", settings.describe()),
    }
    Ok(())
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        trigger.cancel();
    });
    token
}
