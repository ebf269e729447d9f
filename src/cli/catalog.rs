//! `pimage images` and `pimage accounts`: what users publish, and with which clouds.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::output::{Listing, OutputArgs};
use crate::config::Settings;
use crate::image_files;
use crate::store::{self, accounts, images, users, NewImage};

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// The stored cloud accounts (id, user, name, Keystone URL, login, created).
    List {
        /// Only this user's accounts.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Register an image file for a user; prints the image URI to publish.
    Register(Registration),
}

/// What `pimage images register` is given.
#[derive(Debug, clap::Args)]
pub struct Registration {
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
    /// The operating system in the image, "NAME VERSION ARCH" (e.g. "CentOS 7 x86_64"):
    /// UForge clients (hammr scan list, image info) print it.
    #[arg(long)]
    os: Option<String>,
}

/// `pimage images …`.
pub async fn run_images(settings: &Settings, command: ImagesCommand) -> anyhow::Result<()> {
    let ImagesCommand::Register(registration) = command;
    let pool = store::connect_current(&settings.database).await?;
    register_image(&pool, settings, registration).await
}

/// `pimage accounts …`.
pub async fn run_accounts(settings: &Settings, command: AccountsCommand) -> anyhow::Result<()> {
    let AccountsCommand::List { user, output } = command;
    let pool = store::connect_current(&settings.database).await?;
    list_accounts(&pool, user.as_deref(), &output).await
}

/// `pimage images register`: the file checked (and copied into storage unless in place),
/// then recorded.
async fn register_image(
    pool: &sqlx::PgPool,
    settings: &Settings,
    registration: Registration,
) -> anyhow::Result<()> {
    let Registration {
        user,
        file,
        format,
        name,
        in_place,
        os,
    } = registration;
    let distribution = os
        .as_deref()
        .map(images::Distribution::parse)
        .transpose()
        .map_err(|why| anyhow::anyhow!("--os {why}"))?;
    let owner = users::find_by_login(pool, &user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user '{user}': create it with `pimage users add`"))?;
    let image_dir = PathBuf::from(&settings.storage.url);
    let max_virtual_size = settings.worker.max_virtual_size_bytes;
    let prepared = tokio::task::spawn_blocking(move || {
        image_files::prepare_within(
            &file,
            &format.to_lowercase(),
            &image_dir,
            in_place,
            max_virtual_size,
        )
        .map(|f| (f, format))
    })
    .await??;
    let (prepared, format) = prepared;
    let image = images::register(
        pool,
        &NewImage {
            owner_id: owner.id,
            distribution: distribution.as_ref(),
            name: name.as_deref().unwrap_or(&prepared.file_name),
            file_path: &prepared.path.to_string_lossy(),
            file_name: &prepared.file_name,
            format: &format.to_lowercase(),
            size_bytes: prepared.size as i64,
            md5sum: &prepared.md5,
            sha256sum: &prepared.sha256,
            sha512sum: &prepared.sha512,
        },
    )
    .await?;
    println!("{}", image.uri());
    Ok(())
}

/// `pimage accounts list`: no password, sealed or not, is ever printed.
async fn list_accounts(
    pool: &sqlx::PgPool,
    user: Option<&str>,
    output: &OutputArgs,
) -> anyhow::Result<()> {
    let rows = accounts::list_all(pool, user)
        .await?
        .into_iter()
        .map(|a| {
            vec![
                json!(a.id),
                json!(a.owner_login),
                json!(a.name),
                json!(a.keystone_url),
                json!(a.cloud_login),
                json!(a.created_at.to_rfc3339()),
            ]
        })
        .collect();
    output.print_listing(Listing {
        columns: &["id", "user", "name", "keystone_url", "login", "created"],
        rows,
    })
}
