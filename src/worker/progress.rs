//! What the user sees of a running ticket: progress values, and their writes to Postgres
//! (which double as heartbeats and report a requested cancel).

use std::time::Duration;

use tracing::warn;

use crate::store::claims::{self, Heartbeat, Progress};

use super::attempt::{AttemptError, Job};

impl Job<'_> {
    pub(super) fn step(&self, message: String) -> Progress {
        Progress {
            message,
            bytes_loaded: 0,
            bytes_total: self.image.size_bytes,
            percentage: 0,
            eta: None,
        }
    }

    /// Writes progress (a heartbeat); a requested cancel or a lost claim ends the attempt.
    pub(super) async fn report(&self, progress: &Progress) -> Result<(), AttemptError> {
        let w = self.worker;
        let written = claims::report_progress(
            &w.pool,
            self.claim.ticket.id,
            self.claim.token,
            progress,
            w.settings.lease_seconds,
        )
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
