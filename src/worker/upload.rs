//! The upload: the file streamed to Glance at flat memory, stalls cut (too little
//! throughput over a window), progress written, and the stored image checked against the
//! file's registered md5.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::io::ReaderStream;

use crate::cloud::{Cause, CloudError, Glance};
use crate::metrics_catalog;

use super::attempt::{past_deadline, AttemptError, Job};
use super::progress::upload_progress;

/// Read size for the upload stream: large enough for full-speed loopback, small enough that
/// memory stays flat whatever the file size.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// How long Glance may take to answer once it has every byte (it hashes the whole file).
const ANSWER_LIMIT: Duration = Duration::from_secs(900);

impl Job<'_> {
    /// Streams the file into `image_id` and checks what Glance stored; `of` names the attempt.
    pub(super) async fn upload_and_verify(
        &self,
        glance: &Glance,
        image_id: &str,
        file: tokio::fs::File,
        of: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), AttemptError> {
        let total = self.image.size_bytes;
        let sent = Arc::new(AtomicU64::new(0));
        // No checksum here: Glance computes one as it stores, and it is compared with the
        // file's registered md5 below. Hashing in the stream too cost ~15% of the upload speed
        // on a 2-core machine (docs/BENCHMARKS.md).
        let body = {
            let sent = sent.clone();
            ReaderStream::with_capacity(file, UPLOAD_CHUNK).map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    metrics::counter!(metrics_catalog::UPLOAD_BYTES).increment(bytes.len() as u64);
                }
                chunk
            })
        };
        let upload = glance.upload(image_id, reqwest::Body::wrap_stream(body), total as u64);
        tokio::pin!(upload);

        let started = Instant::now();
        let settings = &self.worker.settings;
        let mut stall = StallRule::new(
            settings.upload_min_bytes_per_sec,
            Duration::from_secs(settings.upload_stall_window_secs.max(1)),
            started,
        );
        let (mut last_sent, mut last_move) = (0u64, Instant::now());
        let mut last_percentage = -1;
        let interval = Duration::from_millis(self.worker.settings.progress_interval_ms.max(100));
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                result = &mut upload => { result?; break; }
                // Dropping `upload` closes the connection: Glance puts the image back to queued.
                _ = self.cancel.cancelled() => return Err(AttemptError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => {
                    let limit = self.worker.settings.attempt_deadline_secs.max(1);
                    return Err(past_deadline(Duration::from_secs(limit)));
                }
                _ = tick.tick() => {
                    let now_sent = sent.load(Ordering::Relaxed);
                    if now_sent != last_sent {
                        (last_sent, last_move) = (now_sent, Instant::now());
                    }
                    let stalled = if (now_sent as i64) < total {
                        // Glance takes bytes too slowly (or not at all).
                        stall.record(Instant::now(), now_sent).map(|rate| format!(
                            "the upload to Glance stalled: {rate} bytes/s over the last {} s, under \
                             worker.upload_min_bytes_per_sec ({} bytes/s)",
                            stall.window.as_secs(), stall.min_rate
                        ))
                    } else {
                        // Glance has every byte but never answers.
                        (last_move.elapsed() > ANSWER_LIMIT).then(|| format!(
                            "Glance did not answer the upload within {} s of its last byte",
                            ANSWER_LIMIT.as_secs()
                        ))
                    };
                    if let Some(summary) = stalled {
                        return Err(AttemptError::Cloud(CloudError {
                            summary,
                            detail: Some(format!("{now_sent} of {total} bytes sent")),
                            cause: Cause::Bound,
                        }));
                    }
                    // One write per percent at most (and per interval): a ticket costs a
                    // bounded number of writes whatever its size. The lease keeper
                    // heartbeats in between.
                    let mut progress = upload_progress(now_sent as i64, total, started.elapsed());
                    if progress.percentage != last_percentage {
                        last_percentage = progress.percentage;
                        progress.message.push_str(of);
                        self.report(&progress).await?;
                    }
                }
            }
        }
        metrics::histogram!(metrics_catalog::UPLOAD_DURATION)
            .record(started.elapsed().as_secs_f64());
        let registered = self.image.md5sum.as_str();
        let stored = glance.image(image_id).await?;
        if stored.status == "active" && stored.checksum.as_deref() == Some(registered) {
            return Ok(());
        }
        // Rare: tell a file changed since registration (permanent) from bytes damaged on
        // the way (one more upload).
        let path = self.image.file_path.clone();
        let unreadable = |e: String| AttemptError::Permanent {
            summary: format!("the file of image {} could not be read back", self.image.id),
            detail: Some(e),
        };
        let read = tokio::task::spawn_blocking(move || {
            crate::image_files::checksums(std::path::Path::new(&path))
        })
        .await
        .map_err(|e| unreadable(e.to_string()))?
        .map_err(|e| unreadable(e.to_string()))?
        .1;
        if read != registered {
            return Err(AttemptError::Permanent {
                summary: format!(
                    "the file of image {} changed on disk since it was registered (checksum differs)",
                    self.image.id
                ),
                detail: Some(format!("registered md5 {registered}, file md5 now {read}")),
            });
        }
        let detail = format!(
            "Glance status {}, checksum {:?}; file md5 {registered}",
            stored.status, stored.checksum
        );
        if self.checksum_retried.swap(true, Ordering::Relaxed) {
            Err(AttemptError::Permanent {
                summary: "Glance's checksum of the uploaded image still differed from the file's after a re-upload"
                    .into(),
                detail: Some(detail),
            })
        } else {
            Err(AttemptError::ChecksumMismatch { detail })
        }
    }
}

/// The stall rule: the bytes sent over the last `window` must average at least `min_rate`
/// per second (a rule on any byte moving would let a cloud reading a byte a minute pin it).
struct StallRule {
    min_rate: u64,
    window: Duration,
    /// (when, bytes sent then), oldest first, reaching back one window.
    samples: VecDeque<(Instant, u64)>,
}

impl StallRule {
    fn new(min_rate: u64, window: Duration, started: Instant) -> StallRule {
        StallRule {
            min_rate,
            window,
            samples: VecDeque::from([(started, 0)]),
        }
    }

    /// Records `sent` at `now`; `Some(rate)` when the last window averaged under `min_rate`.
    fn record(&mut self, now: Instant, sent: u64) -> Option<u64> {
        self.samples.push_back((now, sent));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
        {
            self.samples.pop_front();
        }
        let (since, then) = *self.samples.front()?;
        let span = now.duration_since(since);
        if span < self.window {
            return None;
        }
        let rate = ((sent - then) as f64 / span.as_secs_f64()) as u64;
        (rate < self.min_rate).then_some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_rule_cuts_a_trickle_and_spares_a_flow() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut rule = StallRule::new(1000, Duration::from_secs(10), start);
        // A fast start, then a trickle: cut once a whole window trickled.
        assert_eq!(rule.record(at(1), 50_000), None);
        for s in 2..11 {
            assert_eq!(rule.record(at(s), 50_000 + s), None, "second {s}");
        }
        assert_eq!(rule.record(at(12), 50_012), Some(1));
        // A steady 2000 bytes/s is never cut.
        let mut rule = StallRule::new(1000, Duration::from_secs(10), start);
        for s in 1..60 {
            assert_eq!(rule.record(at(s), 2000 * s), None, "second {s}");
        }
    }
}
