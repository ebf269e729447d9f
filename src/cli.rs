//! The `pimage` command line: one binary, one subcommand per role.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::{new_api_key, Application, PUBLISH_ENTITLEMENT};
use crate::config::Settings;
use crate::printable::escaped;
use crate::queue::Publisher;
use crate::secrets::{self, Secret, SecretBox};
use crate::store::accounts;
use crate::store::attempts::{self, Attempt};
use crate::store::cancel::{self, CancelOutcome};
use crate::store::cleanups;
use crate::store::console::{self, TicketFilter};
use crate::store::rescue;
use crate::store::sealed::{self, SealedColumn};
use crate::store::tickets::{self, TicketState};
use crate::store::{self, images, users, NewImage};
use crate::{health, image_files, outbox, telemetry, worker::WorkerApp};

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
    /// Inspect tickets, and run a failed one again.
    #[command(subcommand)]
    Tickets(TicketsCommand),
    /// Manage the key that seals stored secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Inspect the cloud accounts users stored (never their passwords).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Print the effective configuration, secrets masked; with --for-url, the cloud
    /// profile (cloud.profiles) that applies to that Glance or Keystone URL.
    Config {
        /// A Glance (or Keystone) URL: show what applies to it.
        #[arg(long, value_name = "URL")]
        for_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every stored secret under secrets.key (those sealed under a key of
    /// secrets.previous_keys). Safe while the service runs, and to run again.
    Rotate {
        /// Rows read and written per statement.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// The stored cloud accounts (id, user, name, Keystone URL, login, created).
    List {
        /// Only this user's accounts.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TicketsCommand {
    /// The newest tickets (id, state, progress, owner, image, cloud id, message).
    List {
        /// Only tickets in this state; `cleanup`: the image cleanups not yet confirmed by
        /// Glance, with their last error.
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// The console's filters: only this user's tickets, …
        #[arg(long)]
        user: Option<String>,
        /// … to this cloud (its Keystone URL, as published), …
        #[arg(long, value_name = "KEYSTONE_URL")]
        cloud: Option<String>,
        /// … of this image, …
        #[arg(long, value_name = "ID")]
        image: Option<i64>,
        /// … created at or after this time (RFC 3339, e.g. 2026-12-07T09:00:00Z), …
        #[arg(long, value_name = "TIME")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// … and before this one.
        #[arg(long, value_name = "TIME")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Everything about one ticket (never its cloud password).
    Show { id: i64 },
    /// Queue a failed or cancelled ticket again.
    Retry { id: i64 },
    /// Cancel a ticket that has not ended (a running upload stops, its image is removed).
    Cancel { id: i64 },
    /// Remove a ticket's record (a running upload is cancelled first); a published image
    /// stays in the cloud.
    Delete { id: i64 },
}

/// What `pimage tickets list --state` takes: a ticket state, or the pending cleanups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Queued,
    Running,
    Complete,
    Error,
    Cancelled,
    Cleanup,
}

impl StateFilter {
    /// The ticket state it filters on; `None` for `cleanup`.
    fn ticket_state(self) -> Option<TicketState> {
        match self {
            StateFilter::Queued => Some(TicketState::Queued),
            StateFilter::Running => Some(TicketState::Running),
            StateFilter::Complete => Some(TicketState::Complete),
            StateFilter::Error => Some(TicketState::Error),
            StateFilter::Cancelled => Some(TicketState::Cancelled),
            StateFilter::Cleanup => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user, or update an existing one's password, flag and entitlements.
    Add {
        /// Login name (the {uid} of the API paths).
        login: String,
        /// Password; read from PIMAGE_USER_PASSWORD when not given, else asked for at a
        /// terminal.
        #[arg(long, env = "PIMAGE_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Entitlements to grant (repeatable). Default: migration_publish.
        #[arg(long = "entitlement")]
        entitlements: Vec<String>,
        /// May reach every user's resources.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key for a user; prints the public key and the secret key (shown once).
    Create {
        /// Owner's login.
        #[arg(long)]
        user: String,
        /// The only HTTP methods the key may sign, e.g. `--methods GET` for a read-only key
        /// (default: every method).
        #[arg(long, value_delimiter = ',', value_parser = parse_method)]
        methods: Vec<String>,
        /// How long the key stays valid, e.g. `30d`, `12h`, `1d12h` (default: until revoked).
        #[arg(long, value_parser = parse_validity)]
        expires_in: Option<std::time::Duration>,
    },
    /// The public keys of a user's API keys.
    List {
        #[arg(long)]
        user: String,
    },
    /// Delete an API key.
    Revoke { public_key: String },
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
        /// The operating system in the image, "NAME VERSION ARCH" (e.g. "CentOS 7 x86_64"):
        /// UForge clients (hammr scan list, image info) print it.
        #[arg(long)]
        os: Option<String>,
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
        Command::Worker => run_worker(&settings).await?,
        Command::Users(UsersCommand::Add {
            login,
            password,
            entitlements,
            admin,
        }) => add_user(&settings, login, password, entitlements, admin).await?,
        Command::ApiKeys(command) => {
            let pool = store::connect_current(&settings.database).await?;
            api_keys_command(&pool, &settings, command).await?;
        }
        Command::Images(ImagesCommand::Register {
            user,
            file,
            format,
            name,
            in_place,
            os,
        }) => {
            let pool = store::connect_current(&settings.database).await?;
            let registration = Registration {
                user,
                file,
                format,
                name,
                in_place,
                os,
            };
            register_image(&pool, &settings, registration).await?;
        }
        Command::Tickets(command) => {
            let pool = store::connect_current(&settings.database).await?;
            tickets_command(&pool, &settings, command).await?;
        }
        Command::Accounts(AccountsCommand::List { user }) => {
            let pool = store::connect_current(&settings.database).await?;
            list_accounts(&pool, user.as_deref()).await?;
        }
        Command::Secrets(SecretsCommand::Rotate { batch }) => {
            let pool = store::connect_current(&settings.database).await?;
            rotate_secrets(&pool, &settings, batch).await?;
        }
        Command::Config { for_url: None } => println!("{}", settings.describe()),
        Command::Config { for_url: Some(url) } => print!(
            "{}",
            crate::cloud::describe_for_url(&settings.cloud, &url).map_err(anyhow::Error::msg)?
        ),
    }
    Ok(())
}

/// `pimage worker`: the health listener, then the worker until a shutdown signal.
async fn run_worker(settings: &Settings) -> anyhow::Result<()> {
    let app = WorkerApp::build(settings).await?;
    let shutdown = shutdown_on_signal();
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

/// `pimage users add`.
async fn add_user(
    settings: &Settings,
    login: String,
    password: Option<String>,
    mut entitlements: Vec<String>,
    admin: bool,
) -> anyhow::Result<()> {
    if entitlements.is_empty() {
        entitlements.push(PUBLISH_ENTITLEMENT.to_string());
    }
    let password = match password {
        Some(password) => password,
        None => ask_password(&login)?,
    };
    let pool = store::connect_current(&settings.database).await?;
    let password = Secret::new(password);
    let hash = tokio::task::spawn_blocking(move || secrets::hash_password(&password)).await?;
    let id = users::upsert(&pool, &login, &hash, admin, &entitlements).await?;
    println!(
        "user {login} (id {id}) entitlements: {}",
        entitlements.join(",")
    );
    Ok(())
}

/// The new user's password, asked twice at a terminal (never echoed); refused elsewhere.
fn ask_password(login: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "no password for '{login}': give --password, or PIMAGE_USER_PASSWORD, or run this \
             at a terminal to be asked"
        );
    }
    let password = rpassword::prompt_password(format!("password for {login}: "))?;
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    if rpassword::prompt_password("again: ")? != password {
        anyhow::bail!("the two passwords differ");
    }
    Ok(password)
}

/// What `pimage images register` was given.
struct Registration {
    user: String,
    file: PathBuf,
    format: String,
    name: Option<String>,
    in_place: bool,
    os: Option<String>,
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
    let image_dir = settings.storage.image_dir.clone();
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

async fn api_keys_command(
    pool: &sqlx::PgPool,
    settings: &Settings,
    command: ApiKeysCommand,
) -> anyhow::Result<()> {
    let owner = |login: String| async move {
        users::find_by_login(pool, &login)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no user '{login}': create it with `pimage users add`"))
    };
    match command {
        ApiKeysCommand::Create {
            user,
            methods,
            expires_in,
        } => {
            let owner = owner(user).await?;
            let secrets = SecretBox::from_base64_key(&settings.secrets.key)?;
            let (public_key, secret_key) = new_api_key();
            let methods = (!methods.is_empty()).then_some(methods.as_slice());
            let expires_at = expires_in
                .map(|validity| {
                    chrono::Duration::from_std(validity).map(|v| chrono::Utc::now() + v)
                })
                .transpose()
                .map_err(|_| anyhow::anyhow!("--expires-in is too long"))?;
            let sealed = secrets.seal(&secret_key);
            users::add_scoped_api_key(pool, owner.id, &public_key, &sealed, methods, expires_at)
                .await?;
            println!("apiKey:    {public_key}");
            println!("secretKey: {}", secret_key.expose());
            eprintln!("Keep the secret key now: it is stored encrypted and never shown again.");
        }
        ApiKeysCommand::List { user } => {
            let owner = owner(user).await?;
            for key in users::list_api_keys(pool, owner.id).await? {
                let methods = key.methods.map_or("all methods".into(), |m| m.join(","));
                let expiry = key.expires_at.map_or("never expires".into(), |at| {
                    format!("expires {}", at.format("%F %T UTC"))
                });
                println!(
                    "{}  created {}  {methods}  {expiry}",
                    key.public_key,
                    key.created_at.format("%F %T UTC")
                );
            }
        }
        ApiKeysCommand::Revoke { public_key } => {
            if !users::revoke_api_key(pool, &public_key).await? {
                anyhow::bail!("no API key '{public_key}'");
            }
            println!("API key {public_key} revoked");
        }
    }
    Ok(())
}

/// An HTTP method an API key may sign.
fn parse_method(text: &str) -> Result<String, String> {
    let method = text.trim().to_ascii_uppercase();
    if ["GET", "POST", "PUT", "DELETE"].contains(&method.as_str()) {
        Ok(method)
    } else {
        Err(format!("'{text}' is not one of GET, POST, PUT, DELETE"))
    }
}

/// A validity such as `30d`, `12h`, `90m`, `1d12h` (units s, m, h, d, w).
fn parse_validity(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("'{text}' is not a validity such as 30d, 12h or 1d12h");
    let mut seconds: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        seconds = n
            .checked_mul(unit)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(invalid)?;
        number.clear();
    }
    if !number.is_empty() || seconds == 0 {
        return Err(invalid());
    }
    Ok(std::time::Duration::from_secs(seconds))
}

async fn rotate_secrets(
    pool: &sqlx::PgPool,
    settings: &Settings,
    batch: i64,
) -> anyhow::Result<()> {
    let secrets = SecretBox::new(&settings.secrets.key, &settings.secrets.previous_keys)?;
    let mut unfinished = false;
    for column in SealedColumn::ALL {
        let report = sealed::reseal_column(pool, &secrets, column, batch).await?;
        println!("{}: {} re-sealed", column.describe(), report.resealed);
        if !report.undecryptable.is_empty() {
            unfinished = true;
            eprintln!(
                "{}: rows {:?} open under no configured key: add their key to secrets.previous_keys",
                column.describe(),
                report.undecryptable
            );
        }
        if report.left > 0 {
            unfinished = true;
            eprintln!(
                "{}: {} written meanwhile under an older key (a process without the new key?): run again",
                column.describe(),
                report.left
            );
        }
    }
    if unfinished {
        anyhow::bail!("some secrets are not sealed under secrets.key yet");
    }
    println!("every stored secret is sealed under secrets.key");
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

/// `pimage tickets list --state cleanup`: what the reconciler still has to delete.
async fn list_cleanups(pool: &sqlx::PgPool, limit: i64) -> anyhow::Result<()> {
    println!(
        "{:>8}  {:>8}  {:<36}  {:<36}  {:>8}  {:<20}  last error",
        "cleanup", "ticket", "ticket key", "cloud id", "attempts", "next try"
    );
    for c in cleanups::pending(pool, limit).await? {
        println!(
            "{:>8}  {:>8}  {:<36}  {:<36}  {:>8}  {:<20}  {}",
            c.id,
            c.ticket_id.map_or("deleted".into(), |id| id.to_string()),
            c.ticket_key,
            c.cloud_id.as_deref().unwrap_or("-"),
            c.attempts,
            c.next_try_at.format("%Y-%m-%d %H:%M:%S"),
            c.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn tickets_command(
    pool: &sqlx::PgPool,
    settings: &Settings,
    command: TicketsCommand,
) -> anyhow::Result<()> {
    match command {
        TicketsCommand::List {
            state,
            user,
            cloud,
            image,
            since,
            until,
            limit,
        } => {
            if state == Some(StateFilter::Cleanup) {
                return list_cleanups(pool, limit).await;
            }
            let filter = TicketFilter {
                state: state.and_then(StateFilter::ticket_state),
                user,
                cloud,
                image_id: image,
                created_from: since,
                created_to: until,
                before_id: None,
            };
            list_tickets(pool, &filter, limit).await
        }
        TicketsCommand::Show { id } => show_ticket(pool, id).await,
        TicketsCommand::Retry { id } => retry_ticket(pool, settings, id).await,
        TicketsCommand::Cancel { id } => cancel_ticket(pool, id).await,
        TicketsCommand::Delete { id } => delete_ticket(pool, id).await,
    }
}

/// `pimage tickets list`.
async fn list_tickets(
    pool: &sqlx::PgPool,
    filter: &TicketFilter,
    limit: i64,
) -> anyhow::Result<()> {
    println!(
        "{:>8}  {:<9}  {:>4}  {:<12}  {:>8}  {:<36}  message",
        "id", "state", "%", "user", "image", "cloud id"
    );
    // Texts a user or a cloud wrote are escaped: none may drive the terminal.
    for t in console::tickets(pool, filter, limit).await? {
        println!(
            "{:>8}  {:<9}  {:>4}  {:<12}  {:>8}  {:<36}  {}",
            t.id,
            t.state.as_str(),
            t.percentage,
            escaped(&t.owner_login),
            t.image_id,
            escaped(t.cloud_id.as_deref().unwrap_or("-")),
            escaped(&t.message)
        );
    }
    Ok(())
}

/// `pimage tickets cancel`: as the API's cancel (its worker is told at once).
async fn cancel_ticket(pool: &sqlx::PgPool, id: i64) -> anyhow::Result<()> {
    match cancel::request_cancel(pool, id).await? {
        CancelOutcome::Cancelled => println!("ticket {id} cancelled (it had not started)"),
        CancelOutcome::Requested => {
            println!("ticket {id}: cancel requested; its worker stops the upload")
        }
        CancelOutcome::AlreadyFinished(state) => {
            anyhow::bail!("ticket {id} has already ended ({})", state.as_str())
        }
        CancelOutcome::NotFound => anyhow::bail!("no ticket {id}"),
    }
    Ok(())
}

/// `pimage tickets delete`: as the API's delete without `deleteCloudImage` (a running
/// upload is cancelled first; its image is the reconciler's).
async fn delete_ticket(pool: &sqlx::PgPool, id: i64) -> anyhow::Result<()> {
    let ticket = tickets::get(pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no ticket {id}"))?;
    if !ticket.state.is_final() {
        cancel::request_cancel(pool, id).await?;
    }
    if !tickets::delete(pool, id).await? {
        anyhow::bail!("no ticket {id}");
    }
    println!("ticket {id} deleted");
    Ok(())
}

/// `pimage accounts list`: no password, sealed or not, is ever printed.
async fn list_accounts(pool: &sqlx::PgPool, user: Option<&str>) -> anyhow::Result<()> {
    println!(
        "{:>8}  {:<12}  {:<24}  {:<40}  {:<16}  created",
        "id", "user", "name", "keystone url", "login"
    );
    for a in accounts::list_all(pool, user).await? {
        println!(
            "{:>8}  {:<12}  {:<24}  {:<40}  {:<16}  {}",
            a.id,
            escaped(&a.owner_login),
            escaped(&a.name),
            escaped(&a.keystone_url),
            escaped(&a.cloud_login),
            a.created_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(())
}

/// `pimage tickets show`: the ticket and its attempts.
async fn show_ticket(pool: &sqlx::PgPool, id: i64) -> anyhow::Result<()> {
    let t = tickets::get(pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no ticket {id}"))?;
    let lines = [
        ("id", t.id.to_string()),
        ("uri", t.uri()),
        ("state", t.state.as_str().to_string()),
        ("attempts", t.attempts.to_string()),
        ("message", t.message.clone()),
        ("percentage", t.percentage.to_string()),
        ("bytes", format!("{} of {}", t.bytes_loaded, t.bytes_total)),
        ("error", t.error_message.clone().unwrap_or_default()),
        ("detail", t.detailed_error_msg.clone().unwrap_or_default()),
        ("cloud id", t.cloud_id.clone().unwrap_or_default()),
        ("display name", t.display_name.clone()),
        (
            "keystone",
            format!(
                "{} as {} in {}/{}",
                t.keystone_url, t.cloud_login, t.keystone_domain, t.keystone_project
            ),
        ),
        (
            "glance",
            t.glance_url
                .clone()
                .unwrap_or_else(|| "(from the catalog)".into()),
        ),
        ("ticket key", t.ticket_key.to_string()),
        ("created", t.created_at.to_rfc3339()),
        (
            "finished",
            t.finished_at.map(|d| d.to_rfc3339()).unwrap_or_default(),
        ),
    ];
    let attempts = attempts::of_ticket(pool, id).await?;
    let attempt_lines = attempts
        .iter()
        .map(|a| (format!("attempt {}", a.number), describe_attempt(a)));
    let lines = lines.into_iter().map(|(k, v)| (k.to_string(), v));
    for (k, v) in lines.chain(attempt_lines) {
        println!("{k:>13}: {}", escaped(&v));
    }
    Ok(())
}

/// `pimage tickets retry`.
async fn retry_ticket(pool: &sqlx::PgPool, settings: &Settings, id: i64) -> anyhow::Result<()> {
    let Some(outbox_id) = rescue::retry(pool, id).await? else {
        anyhow::bail!("ticket {id} does not exist, or has not failed or been cancelled: only those can be retried");
    };
    let publisher = Publisher::new(settings.amqp.clone(), "pimage-cli");
    outbox::hand_off(pool, &publisher, id, outbox_id).await;
    println!("ticket {id} queued again");
    Ok(())
}

/// "failed on host:12 from … to …, 1048576 bytes sent: Glance answered 503"
fn describe_attempt(a: &Attempt) -> String {
    let outcome = a.outcome.as_deref().unwrap_or("running");
    let ended = a
        .ended_at
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| "-".into());
    let error = a
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!(
        "{outcome} on {} from {} to {ended}, {} bytes sent{error}",
        a.worker,
        a.started_at.to_rfc3339(),
        a.bytes_sent
    )
}

#[cfg(test)]
mod api_key_option_tests {
    use super::*;

    #[test]
    fn validities_and_methods_parse_or_say_why() {
        let secs = |text| parse_validity(text).map(|d| d.as_secs());
        assert_eq!(secs("30d"), Ok(30 * 86_400));
        assert_eq!(secs("1d12h"), Ok(36 * 3600));
        assert_eq!(secs("90m"), Ok(5400));
        for bad in ["", "30", "d", "0d", "3x", "99999999999999999999w"] {
            assert!(
                parse_validity(bad).unwrap_err().contains("validity"),
                "{bad}"
            );
        }
        assert_eq!(parse_method("get"), Ok("GET".to_string()));
        assert!(parse_method("PATCH").unwrap_err().contains("GET, POST"));
    }
}
