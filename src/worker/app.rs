//! `WorkerApp`: the worker built from settings (as `api::Application` is the API), the one
//! way the CLI and the tests make one.

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::image_store::ImageStore;
use crate::secrets::SecretBox;

use super::Worker;

/// A worker ready to run: its Postgres pool, sealing keys, publisher and clients.
pub struct WorkerApp {
    worker: Worker,
}

impl WorkerApp {
    /// Opens the sealing keys and connects to Postgres (waiting until it answers, then
    /// applying migrations). RabbitMQ is not needed yet: the consume loop waits for it.
    pub async fn build(settings: &Settings) -> anyhow::Result<WorkerApp> {
        let secrets = SecretBox::new(&settings.secrets.key, &settings.secrets.previous_keys)?;
        let pool = crate::store::connect_waiting(&settings.database).await?;
        Ok(WorkerApp {
            worker: Worker::new(
                pool,
                settings.worker.clone(),
                settings.amqp.clone(),
                settings.cloud.clone(),
                secrets,
                crate::maintenance::retention_of(&settings.retention),
                ImageStore::new(&settings.storage)?,
            ),
        })
    }

    /// What the worker's `/readyz` checks.
    pub fn probes(&self) -> crate::health::Probes {
        self.worker.probes()
    }

    /// Consumes until `shutdown`, then drains the running uploads (`Worker::run`).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.worker.run(shutdown).await
    }
}
