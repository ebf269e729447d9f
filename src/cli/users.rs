//! `pimage users` and `pimage apikeys`: who may call the API.

use clap::Subcommand;
use serde_json::json;

use super::output::{Listing, OutputArgs};
use crate::api::{new_api_key, PUBLISH_ENTITLEMENT};
use crate::config::Settings;
use crate::secrets::{self, Secret, SecretBox};
use crate::store::{self, users};

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
        /// How long the key stays valid, as humantime reads it: `30d`, `12h`, `1d 12h`,
        /// `90min` (default: until revoked).
        #[arg(long, value_parser = parse_validity)]
        expires_in: Option<std::time::Duration>,
    },
    /// A user's API keys: public key, methods, created, expires (never a secret key).
    List {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete an API key.
    Revoke { public_key: String },
}

/// `pimage users …`.
pub async fn run_users(settings: &Settings, command: UsersCommand) -> anyhow::Result<()> {
    let UsersCommand::Add {
        login,
        password,
        entitlements,
        admin,
    } = command;
    add_user(settings, login, password, entitlements, admin).await
}

/// `pimage apikeys …`.
pub async fn run_api_keys(settings: &Settings, command: ApiKeysCommand) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    api_keys_command(&pool, settings, command).await
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
        None => ask_password(&login, true, "give --password, or PIMAGE_USER_PASSWORD")?,
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

/// A password asked at a terminal (never echoed), twice for a new one; refused elsewhere.
/// `otherwise` says how to give it without a terminal.
pub(super) fn ask_password(login: &str, twice: bool, otherwise: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "no password for '{login}': {otherwise}, or run this at a terminal to be asked"
        );
    }
    let password = rpassword::prompt_password(format!("password for {login}: "))?;
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    if twice && rpassword::prompt_password("again: ")? != password {
        anyhow::bail!("the two passwords differ");
    }
    Ok(password)
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
            let too_long = || anyhow::anyhow!("--expires-in is too long");
            let expires_at = expires_in
                .map(|validity| {
                    let validity = chrono::Duration::from_std(validity).map_err(|_| too_long())?;
                    chrono::Utc::now()
                        .checked_add_signed(validity)
                        .ok_or_else(too_long)
                })
                .transpose()?;
            let sealed = secrets.seal(&secret_key);
            users::add_scoped_api_key(pool, owner.id, &public_key, &sealed, methods, expires_at)
                .await?;
            println!("apiKey:    {public_key}");
            println!("secretKey: {}", secret_key.expose());
            eprintln!("Keep the secret key now: it is stored encrypted and never shown again.");
        }
        ApiKeysCommand::List { user, output } => {
            let owner = owner(user).await?;
            let rows = users::list_api_keys(pool, owner.id)
                .await?
                .into_iter()
                .map(|key| {
                    vec![
                        json!(key.public_key),
                        json!(key.methods.map_or("all".into(), |m| m.join(","))),
                        json!(key.created_at.to_rfc3339()),
                        json!(key.expires_at.map(|at| at.to_rfc3339())),
                    ]
                })
                .collect();
            output.print_listing(Listing {
                columns: &["public_key", "methods", "created", "expires"],
                rows,
            })?;
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

/// A validity as humantime reads it (`30d`, `12h`, `1d 12h`); never zero.
fn parse_validity(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(validity) if !validity.is_zero() => Ok(validity),
        Ok(_) => Err("a validity must be longer than 0".into()),
        Err(e) => Err(format!(
            "'{text}' is not a validity such as 30d, 12h or 1d 12h: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validities_and_methods_parse_or_say_why() {
        let secs = |text| parse_validity(text).map(|d| d.as_secs()).ok();
        assert_eq!(secs("30d"), Some(30 * 86_400));
        assert_eq!(secs("1d 12h"), Some(36 * 3600));
        assert_eq!(secs("1d12h"), Some(36 * 3600));
        assert_eq!(secs("90m"), Some(5400));
        for bad in ["", "30", "d", "0d", "3x", "99999999999999999999w"] {
            assert_eq!(secs(bad), None, "{bad}");
        }
        assert_eq!(parse_method("get"), Ok("GET".to_string()));
        assert!(parse_method("PATCH").unwrap_err().contains("GET, POST"));
    }
}
