//! What the user sees of a running ticket: progress values, and their writes to Postgres
//! (which double as heartbeats and report a requested cancel).

use std::time::Duration;

use sqlx::PgPool;
use tracing::warn;

use crate::store::claims::{self, Heartbeat, Progress};

use tokio_util::sync::CancellationToken;

use super::attempt::{AttemptError, Target};
use super::WorkerContext;

/// Writes one ticket's progress: what `report` needs, and nothing else.
#[derive(Clone, Copy)]
pub(super) struct Reporter<'a> {
    pool: &'a PgPool,
    ticket_id: i64,
    token: i64,
    lease: Duration,
    bytes_total: i64,
    /// The ticket's cancel: a write that finds it fired ends the attempt.
    pub(super) cancel: &'a CancellationToken,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(ctx: &WorkerContext<'a>, target: &Target<'a>) -> Reporter<'a> {
        Reporter {
            pool: ctx.pool,
            ticket_id: target.claim.ticket.id,
            token: target.claim.token,
            lease: ctx.settings.lease,
            bytes_total: target.image.size_bytes,
            cancel: target.cancel,
        }
    }

    /// A step's progress: its message, no bytes sent yet.
    pub(super) fn step(&self, message: String) -> Progress {
        Progress {
            message,
            bytes_loaded: 0,
            bytes_total: self.bytes_total,
            percentage: 0,
            eta: None,
        }
    }

    /// Writes a step's progress (see `report`).
    pub(super) async fn say(&self, message: String) -> Result<(), AttemptError> {
        self.report(&self.step(message)).await
    }

    /// Writes progress (a heartbeat); a requested cancel or a lost claim ends the attempt.
    pub(super) async fn report(&self, progress: &Progress) -> Result<(), AttemptError> {
        let written =
            claims::report_progress(self.pool, self.ticket_id, self.token, progress, self.lease)
                .await;
        // A Postgres blip must not kill a long upload: the lease keeper owns the lease, and
        // the next write tells whether the ticket is still ours.
        let heartbeat = match written {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "could not write progress; going on");
                return Ok(());
            }
        };
        match heartbeat {
            Heartbeat::Held if self.cancel.is_cancelled() => Err(AttemptError::Cancelled),
            Heartbeat::Held => Ok(()),
            Heartbeat::CancelRequested => Err(AttemptError::Cancelled),
            Heartbeat::Lost => Err(AttemptError::Lost),
        }
    }
}

/// Progress of an upload `sent` bytes into `total`, `elapsed` after it started.
pub(super) fn upload_progress(sent: i64, total: i64, elapsed: Duration) -> Progress {
    // 99 at most until Glance has confirmed the checksum: 100 means published.
    let percentage = if total > 0 {
        (sent * 100 / total).min(99) as i32
    } else {
        0
    };
    let rate = sent as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = (rate > 0.0 && sent < total).then(|| {
        let remaining = Duration::from_secs_f64((total - sent) as f64 / rate);
        chrono::Utc::now() + chrono::Duration::from_std(remaining).unwrap_or_default()
    });
    Progress {
        message: format!(
            "uploading to Glance: {:.1} of {:.1} MiB ({percentage}%)",
            sent as f64 / 1048576.0,
            total as f64 / 1048576.0
        ),
        bytes_loaded: sent,
        bytes_total: total,
        percentage,
        eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_stays_below_100_until_published() {
        let p = upload_progress(100, 100, Duration::from_secs(1));
        assert_eq!(p.percentage, 99);
        assert!(p.eta.is_none());
        let p = upload_progress(25, 100, Duration::from_secs(1));
        assert_eq!(p.percentage, 25);
        let eta = p.eta.expect("eta while uploading");
        let secs = (eta - chrono::Utc::now()).num_milliseconds();
        assert!(
            (2500..=3100).contains(&secs),
            "75 bytes left at 25 B/s is ~3 s, got {secs} ms"
        );
    }
}
