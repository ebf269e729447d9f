//! `pimage secrets`: re-sealing stored secrets under a new key.

use clap::Subcommand;

use crate::config::Settings;
use crate::secrets::SecretBox;
use crate::store::{
    self,
    sealed::{self, SealedColumn},
};

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

/// `pimage secrets rotate`.
pub async fn run(settings: &Settings, command: SecretsCommand) -> anyhow::Result<()> {
    let SecretsCommand::Rotate { batch } = command;
    let pool = &store::connect_current(&settings.database).await?;
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
