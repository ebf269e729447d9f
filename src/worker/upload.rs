//! The upload: the file streamed to Glance at flat memory (uploaded, or staged for
//! glance-direct and then imported), stalls cut (too little throughput over a window),
//! progress written, and the stored image checked against the file's registered md5 and
//! sha512.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cloud::{Cause, CloudError, Glance, GlanceImage, DEFAULT_IMPORT_TIMEOUT_SECS};
use crate::metrics_catalog;

use super::attempt::{past_deadline, AttemptError, Job};
use super::convert::Payload;
use super::progress::upload_progress;

/// Read size for the upload stream: 1 MiB reads cost a quarter of the syscalls and wake-ups
/// of 256 KiB ones (docs/BENCHMARKS.md), and memory stays flat whatever the file size.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// Chunks read ahead of the socket, so the disk and the network overlap.
const READ_AHEAD: usize = 2;

/// What the connection takes at a time: the grain of progress and of the stall rule.
const SLICE: usize = 256 * 1024;

/// How much longer than the import's wait a web-download link stays valid.
const LINK_MARGIN_SECS: u64 = 300;

/// How long Glance may take to answer once it has every byte (it hashes the whole file).
const ANSWER_LIMIT: Duration = Duration::from_secs(900);

/// How the bytes go to Glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transfer {
    /// `PUT …/file`.
    Upload,
    /// `PUT …/stage`, then the glance-direct import.
    Stage,
    /// Glance fetches the file from a signed link to the API (web-download import).
    WebDownload,
}

/// The file as an upload body. One blocking thread reads it straight into each chunk's own
/// buffer (no zeroing, no copy between buffers: tokio's `File` reads into a buffer of its own
/// and copies out, one thread hop per read), and the chunk goes to the socket as it is.
/// Dropping the body (a cancel, a cut connection) ends the thread at its next chunk.
fn file_body(file: std::fs::File, sent: Arc<AtomicU64>) -> reqwest::Body {
    let (chunks, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        loop {
            let mut buffer = Vec::with_capacity(UPLOAD_CHUNK);
            let chunk = match (&file).take(UPLOAD_CHUNK as u64).read_to_end(&mut buffer) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(buffer)),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if chunks.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    // Handed on in slices (no copy), counted as the connection takes them, not as read: the
    // stall rule and the progress measure Glance, at the grain they always had.
    let counter = metrics::counter!(metrics_catalog::UPLOAD_BYTES);
    let stream =
        futures::stream::unfold((receiver, Bytes::new()), move |(mut receiver, mut rest)| {
            let (sent, counter) = (sent.clone(), counter.clone());
            async move {
                if rest.is_empty() {
                    match receiver.recv().await? {
                        Ok(chunk) => rest = chunk,
                        Err(e) => return Some((Err(e), (receiver, rest))),
                    }
                }
                let slice = rest.split_to(rest.len().min(SLICE));
                sent.fetch_add(slice.len() as u64, Ordering::Relaxed);
                counter.increment(slice.len() as u64);
                Some((Ok(slice), (receiver, rest)))
            }
        });
    reqwest::Body::wrap_stream(stream)
}

/// Whether Glance's image holds the payload: active, the same md5 and, when both Glance
/// and the registration know it, the same sha512.
pub(super) fn holds_file(payload: &Payload, stored: &GlanceImage) -> bool {
    let sha512_agrees = match (
        stored.os_hash_algo.as_deref(),
        stored.os_hash_value.as_deref(),
        payload.sha512.as_deref(),
    ) {
        (Some("sha512"), Some(theirs), Some(ours)) => theirs.eq_ignore_ascii_case(ours),
        _ => true,
    };
    stored.status == "active"
        && stored.checksum.as_deref() == Some(payload.md5.as_str())
        && sha512_agrees
}

impl Job<'_> {
    /// Streams the file into `image_id` and checks what Glance stored; `of` names the attempt.
    pub(super) async fn upload_and_verify(
        &self,
        glance: &Glance,
        image_id: &str,
        (file, payload): (tokio::fs::File, &Payload),
        (of, transfer): (&str, Transfer),
        deadline: tokio::time::Instant,
    ) -> Result<(), AttemptError> {
        if transfer == Transfer::WebDownload {
            drop(file);
            let link = self.image_link(glance)?;
            self.import(glance, image_id, (of, payload.size), deadline, Some(&link))
                .await?;
            return self.verify(glance, image_id, payload).await;
        }
        let total = payload.size;
        let sent = Arc::new(AtomicU64::new(0));
        // No checksum here: Glance computes one as it stores, and it is compared with the
        // file's registered md5 below. Hashing in the stream too cost ~15% of the upload speed
        // on a 2-core machine (docs/BENCHMARKS.md).
        let body = file_body(file.into_std().await, sent.clone());
        let upload = async {
            match transfer {
                Transfer::Upload => glance.upload(image_id, body, total as u64).await,
                // (web-download returned above: Glance fetches the bytes itself)
                Transfer::Stage | Transfer::WebDownload => {
                    glance.stage(image_id, body, total as u64).await
                }
            }
        };
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
        if transfer == Transfer::Stage {
            self.import(glance, image_id, (of, payload.size), deadline, None)
                .await?;
        }
        self.verify(glance, image_id, payload).await
    }

    /// Checks what Glance stored against the file's registered md5 and sha512.
    async fn verify(
        &self,
        glance: &Glance,
        image_id: &str,
        payload: &Payload,
    ) -> Result<(), AttemptError> {
        let registered = payload.md5.as_str();
        // Cut by a cancel, the attempt's failure path still deletes the image.
        let stored = self.unless_cancelled(glance.image(image_id)).await?;
        if holds_file(payload, &stored) {
            return Ok(());
        }
        // Rare: tell a file changed since registration (permanent) from bytes damaged on
        // the way (one more upload).
        let path = payload.path.clone();
        let unreadable = |e: String| AttemptError::Permanent {
            summary: format!("the file of image {} could not be read back", self.image.id),
            detail: Some(e),
        };
        let read = tokio::task::spawn_blocking(move || {
            crate::image_files::checksums(std::path::Path::new(&path))
        })
        .await
        .map_err(|e| unreadable(e.to_string()))?
        .map_err(|e| unreadable(e.to_string()))?;
        let sha512_changed = payload
            .sha512
            .as_deref()
            .is_some_and(|sha| sha != read.sha512);
        if read.md5 != registered || sha512_changed {
            return Err(AttemptError::Permanent {
                summary: format!(
                    "the file of image {} changed on disk since it was registered (checksum differs)",
                    self.image.id
                ),
                detail: Some(format!(
                    "registered md5 {registered}, sha512 {}; file md5 now {}, sha512 {}",
                    payload.sha512.as_deref().unwrap_or("unknown"),
                    read.md5,
                    read.sha512
                )),
            });
        }
        let detail = format!(
            "Glance status {}, checksum {:?}, {} {:?}; file md5 {registered}, sha512 {}",
            stored.status,
            stored.checksum,
            stored.os_hash_algo.as_deref().unwrap_or("os_hash_value"),
            stored.os_hash_value,
            read.sha512
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

impl Job<'_> {
    /// The signed link through which Glance fetches this ticket's file (web-download),
    /// valid for the import's whole wait.
    fn image_link(&self, glance: &Glance) -> Result<String, AttemptError> {
        let profile = glance.profile();
        let Some(base) = profile.and_then(|p| p.web_download_base_url.as_deref()) else {
            return Err(AttemptError::Permanent {
                summary: "the cloud's profile asks for web-download but sets no \
                          web_download_base_url (the API's root URL as Glance reaches it)"
                    .into(),
                detail: None,
            });
        };
        let valid = profile
            .and_then(|p| p.import_timeout_secs)
            .unwrap_or(DEFAULT_IMPORT_TIMEOUT_SECS)
            + LINK_MARGIN_SECS;
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + valid;
        Ok(self
            .worker
            .secrets
            .image_link(base, self.claim.ticket.id, expires))
    }

    /// Has Glance import the staged bytes (glance-direct), or fetch them from `link`
    /// (web-download), and waits until the image is `active`, saying so in the status. A failed import (`os_glance_failed_import`) is
    /// permanent; the whole import ends at the profile's `import_timeout_secs` (transient),
    /// at the attempt deadline, or at once when the ticket is cancelled.
    async fn import(
        &self,
        glance: &Glance,
        image_id: &str,
        (of, size): (&str, i64),
        deadline: tokio::time::Instant,
        link: Option<&str>,
    ) -> Result<(), AttemptError> {
        let limit = Duration::from_secs(
            glance
                .profile()
                .and_then(|p| p.import_timeout_secs)
                .unwrap_or(DEFAULT_IMPORT_TIMEOUT_SECS)
                .max(1),
        );
        let mut step = self.step(format!("importing in Glance{of}"));
        (step.bytes_loaded, step.bytes_total) = (size, size);
        step.percentage = 99;
        self.report(&step).await?;
        let import = async {
            glance.start_import(image_id, link).await?;
            loop {
                let image = glance.image(image_id).await?;
                if image.status == "active" {
                    return Ok(());
                }
                if let Some(stores) = image
                    .os_glance_failed_import
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                {
                    return Err(AttemptError::Permanent {
                        summary: format!(
                            "Glance failed to import the image into its store(s) {stores}"
                        ),
                        detail: Some(format!("image {image_id} status {}", image.status)),
                    });
                }
                // A web-download image stays `queued` until Glance's task starts; the task's
                // lock on the image says it has not ended yet.
                let not_started = image.status == "queued" && image.os_glance_import_task.is_some();
                if !not_started
                    && matches!(
                        image.status.as_str(),
                        "queued" | "killed" | "deleted" | "pending_delete"
                    )
                {
                    return Err(AttemptError::Cloud(CloudError {
                        summary: format!(
                            "Glance's import of the image ended in status {}",
                            image.status
                        ),
                        detail: None,
                        cause: Cause::BadAnswer,
                    }));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A heartbeat that also notices a cancel requested through Postgres.
                self.report(&step).await?;
            }
        };
        tokio::select! {
            result = tokio::time::timeout(limit, import) => result.unwrap_or_else(|_| {
                Err(AttemptError::Cloud(CloudError {
                    summary: format!(
                        "Glance did not finish importing the image within {} s (import_timeout_secs)",
                        limit.as_secs()
                    ),
                    detail: Some(format!("image {image_id}")),
                    cause: Cause::Bound,
                }))
            }),
            // Dropping the import stops the wait; the image is deleted as after any failure.
            _ = self.cancel.cancelled() => Err(AttemptError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => {
                let limit = self.worker.settings.attempt_deadline_secs.max(1);
                Err(past_deadline(Duration::from_secs(limit)))
            }
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
