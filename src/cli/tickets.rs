//! `pimage tickets`: list and show (on the database), and cancel, delete or retry one (on
//! the database, or through the API with `--api`).

use clap::Subcommand;
use serde_json::json;

use super::output::{Listing, OutputArgs, Record};
use super::remote::{AdminApi, ApiTarget};
use crate::api::admin::{self, TicketAction};
use crate::config::Settings;
use crate::outbox;
use crate::queue::Publisher;
use crate::store;
use crate::store::attempts::{self, Attempt};
use crate::store::cleanups;
use crate::store::console::{self, TicketFilter};
use crate::store::tickets::{self, TicketState};

#[derive(Debug, Subcommand)]
pub enum TicketsCommand {
    /// The newest tickets (id, state, percentage, user, image, cloud_id, message, created).
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
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Everything about one ticket and its attempts (never its cloud password).
    Show {
        id: i64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Queue a failed or cancelled ticket again.
    Retry {
        id: i64,
        #[command(flatten)]
        via: ApiTarget,
    },
    /// Cancel a ticket that has not ended (a running upload stops, its image is removed).
    Cancel {
        id: i64,
        #[command(flatten)]
        via: ApiTarget,
    },
    /// Remove a ticket's record (a running upload is cancelled first); a published image
    /// stays in the cloud.
    Delete {
        id: i64,
        #[command(flatten)]
        via: ApiTarget,
    },
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

/// `pimage tickets …`.
pub async fn run(settings: &Settings, command: TicketsCommand) -> anyhow::Result<()> {
    let (id, action, via) = match command {
        TicketsCommand::List {
            state,
            user,
            cloud,
            image,
            since,
            until,
            limit,
            output,
        } => {
            let pool = store::connect_current(&settings.database).await?;
            if state == Some(StateFilter::Cleanup) {
                return list_cleanups(&pool, limit, &output).await;
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
            return list_tickets(&pool, &filter, limit, &output).await;
        }
        TicketsCommand::Show { id, output } => {
            let pool = store::connect_current(&settings.database).await?;
            return show_ticket(&pool, id, &output).await;
        }
        TicketsCommand::Retry { id, via } => (id, TicketAction::Retry, via),
        TicketsCommand::Cancel { id, via } => (id, TicketAction::Cancel, via),
        TicketsCommand::Delete { id, via } => (id, TicketAction::Delete, via),
    };
    let message = match via.api.as_deref() {
        Some(url) => AdminApi::new(&via, url)?.apply(id, action).await?,
        None => apply_on_database(settings, id, action).await?,
    };
    println!("{message}");
    Ok(())
}

/// `tickets cancel|delete|retry` without `--api`: as the API does it (`api::admin`); a
/// retried ticket is handed to RabbitMQ from here.
async fn apply_on_database(
    settings: &Settings,
    id: i64,
    action: TicketAction,
) -> anyhow::Result<String> {
    let pool = store::connect_current(&settings.database).await?;
    let applied = admin::apply(&pool, id, action)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(outbox_id) = applied.requeued {
        let publisher = Publisher::new(settings.amqp.clone(), "pimage-cli");
        outbox::hand_off(&pool, &publisher, id, outbox_id).await;
    }
    Ok(applied.message)
}

/// `pimage tickets list --state cleanup`: what the reconciler still has to delete.
async fn list_cleanups(pool: &sqlx::PgPool, limit: i64, output: &OutputArgs) -> anyhow::Result<()> {
    let rows = cleanups::pending(pool, limit)
        .await?
        .into_iter()
        .map(|c| {
            vec![
                json!(c.id),
                json!(c.ticket_id),
                json!(c.ticket_key.to_string()),
                json!(c.cloud_id),
                json!(c.attempts),
                json!(c.next_try_at.to_rfc3339()),
                json!(c.last_error),
            ]
        })
        .collect();
    output.print_listing(Listing {
        columns: &[
            "cleanup",
            "ticket",
            "ticket_key",
            "cloud_id",
            "attempts",
            "next_try",
            "last_error",
        ],
        rows,
    })
}

/// `pimage tickets list`.
async fn list_tickets(
    pool: &sqlx::PgPool,
    filter: &TicketFilter,
    limit: i64,
    output: &OutputArgs,
) -> anyhow::Result<()> {
    let rows = console::tickets(pool, filter, limit)
        .await?
        .into_iter()
        .map(|t| {
            vec![
                json!(t.id),
                json!(t.state.as_str()),
                json!(t.percentage),
                json!(t.owner_login),
                json!(t.image_id),
                json!(t.cloud_id),
                json!(t.message),
                json!(t.created_at.to_rfc3339()),
            ]
        })
        .collect();
    output.print_listing(Listing {
        columns: &[
            "id",
            "state",
            "percentage",
            "user",
            "image",
            "cloud_id",
            "message",
            "created",
        ],
        rows,
    })
}

/// `pimage tickets show`: the ticket and its attempts.
async fn show_ticket(pool: &sqlx::PgPool, id: i64, output: &OutputArgs) -> anyhow::Result<()> {
    let t = tickets::get(pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no ticket {id}"))?;
    let attempts: Vec<_> = attempts::of_ticket(pool, id)
        .await?
        .iter()
        .map(attempt)
        .collect();
    let fields = vec![
        ("id", json!(t.id)),
        ("uri", json!(t.uri())),
        ("state", json!(t.state.as_str())),
        ("message", json!(t.message)),
        ("percentage", json!(t.percentage)),
        ("bytes_loaded", json!(t.bytes_loaded)),
        ("bytes_total", json!(t.bytes_total)),
        ("error", json!(t.error_message)),
        ("detail", json!(t.detailed_error_msg)),
        ("cloud_id", json!(t.cloud_id)),
        ("display_name", json!(t.display_name)),
        ("keystone_url", json!(t.keystone_url)),
        ("keystone_domain", json!(t.keystone_domain)),
        ("keystone_project", json!(t.keystone_project)),
        ("cloud_login", json!(t.cloud_login)),
        ("glance_url", json!(t.glance_url)),
        ("ticket_key", json!(t.ticket_key.to_string())),
        ("created", json!(t.created_at.to_rfc3339())),
        ("finished", json!(t.finished_at.map(|d| d.to_rfc3339()))),
        ("attempts", json!(attempts)),
    ];
    output.print_record(Record { fields })
}

/// One attempt, for administrators: its worker by host:pid.
fn attempt(a: &Attempt) -> serde_json::Value {
    json!({
        "number": a.number,
        "outcome": a.outcome.as_deref().unwrap_or("running"),
        "worker": a.worker,
        "started": a.started_at.to_rfc3339(),
        "ended": a.ended_at.map(|d| d.to_rfc3339()),
        "bytes_sent": a.bytes_sent,
        "error": a.error,
    })
}
