//! `pimage images` and `pimage accounts`: what users publish, and with which clouds.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::output::{Listing, OutputArgs};
use crate::config::Settings;
use crate::image_files::{self, Examined};
use crate::image_store::ImageStore;
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
    /// The disk image file, put into the image store (storage.url).
    #[arg(long, required_unless_present = "object", conflicts_with = "object")]
    file: Option<PathBuf>,
    /// An object already in the store's bucket (s3://bucket/key), registered where it is.
    #[arg(long)]
    object: Option<String>,
    /// Its disk format: raw, qcow2, vmdk, vhd, vhdx, vdi, iso, ploop.
    #[arg(long)]
    format: String,
    /// Image name (default: the file name).
    #[arg(long)]
    name: Option<String>,
    /// Keep the file where it is instead of putting it into the image store (only workers
    /// on this host can then read it).
    #[arg(long, requires = "file")]
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

/// `pimage images register`: the file checked, its checksums taken, then put into the image
/// store (unless in place, or already an object there), then recorded.
async fn register_image(
    pool: &sqlx::PgPool,
    settings: &Settings,
    registration: Registration,
) -> anyhow::Result<()> {
    let distribution = registration
        .os
        .as_deref()
        .map(images::Distribution::parse)
        .transpose()
        .map_err(|why| anyhow::anyhow!("--os {why}"))?;
    let user = &registration.user;
    let owner = users::find_by_login(pool, user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user '{user}': create it with `pimage users add`"))?;
    let format = registration.format.to_lowercase();
    let store = ImageStore::new(&settings.storage)?;
    let (location, examined) = place(&store, settings, &registration, &format).await?;
    let image = images::register(
        pool,
        &NewImage {
            owner_id: owner.id,
            distribution: distribution.as_ref(),
            name: registration.name.as_deref().unwrap_or(&examined.file_name),
            file_path: &location,
            file_name: &examined.file_name,
            format: &format,
            size_bytes: examined.sums.size as i64,
            md5sum: &examined.sums.md5,
            sha256sum: &examined.sums.sha256,
            sha512sum: &examined.sums.sha512,
        },
    )
    .await?;
    println!("{}", image.uri());
    Ok(())
}

/// The registered file's location and what examining it found.
async fn place(
    store: &ImageStore,
    settings: &Settings,
    registration: &Registration,
    format: &str,
) -> anyhow::Result<(String, Examined)> {
    let max = settings.worker.max_virtual_size_bytes;
    if let Some(object) = &registration.object {
        // Examined through a copy in the scratch directory, removed after.
        let scratch = &settings.worker.scratch_dir;
        std::fs::create_dir_all(scratch)?;
        store.size(object).await?;
        let local = store.local_file(object, scratch).await?;
        let examined = examine(local.path.clone(), object, format, max).await?;
        let file_name = object.rsplit('/').next().unwrap_or("image").to_string();
        return Ok((
            object.clone(),
            Examined {
                file_name,
                ..examined
            },
        ));
    }
    let file = registration
        .file
        .clone()
        .expect("clap requires --file or --object");
    let examined = examine(file.clone(), &file.display().to_string(), format, max).await?;
    let location = if registration.in_place {
        std::fs::canonicalize(&file)?.to_string_lossy().into_owned()
    } else {
        store.put(&file, &examined.file_name).await?
    };
    Ok((location, examined))
}

async fn examine(path: PathBuf, shown: &str, format: &str, max: u64) -> anyhow::Result<Examined> {
    let (shown, format) = (shown.to_string(), format.to_string());
    tokio::task::spawn_blocking(move || image_files::examine(&path, &shown, &format, max)).await?
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
