//! The upload: the file streamed to Glance at flat memory (uploaded, or staged for
//! glance-direct and then imported), stalls cut (too little throughput over a window),
//! progress written, and the stored image checked against the file's registered md5 and
//! sha512.

use std::collections::VecDeque;

use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cloud::{Cause, CloudError, Glance, GlanceImage, DEFAULT_IMPORT_TIMEOUT};
use crate::metrics_catalog;

use crate::config::WorkerSettings;
use crate::image_store::{Chunks, ImageStore};
use crate::secrets::SecretBox;

use super::attempt::{deadline_error, unless_cancelled, AttemptError};
use super::convert::Payload;
use super::progress::{upload_progress, Reporter};

/// What the connection takes at a time: the grain of progress and of the stall rule.
const SLICE: usize = 256 * 1024;

/// How much longer than the import's wait a web-download link stays valid.
const LINK_MARGIN_SECS: u64 = 300;

/// How long Glance may take to answer once it has every byte (it hashes the whole file).
const ANSWER_LIMIT: Duration = Duration::from_secs(900);

/// One upload into a created image: what its steps need.
#[derive(Clone)]
pub(super) struct Upload<'a> {
    pub(super) glance: &'a Glance,
    /// The created image's id in Glance.
    pub(super) image_id: &'a str,
    pub(super) payload: &'a Payload,
    pub(super) transfer: Transfer,
    /// Names the attempt in progress messages.
    pub(super) of: &'a str,
    pub(super) deadline: tokio::time::Instant,
    pub(super) progress: &'a Reporter<'a>,
    /// The stall rule, the progress interval, the attempt deadline.
    pub(super) settings: &'a WorkerSettings,
    /// Signs the link Glance fetches ticket `ticket_id`'s file from (web-download).
    pub(super) secrets: &'a SecretBox,
    pub(super) ticket_id: i64,
    /// An earlier attempt's upload already differed from the file (`AttemptState`).
    pub(super) checksum_retried: bool,
    /// The registered image's id, for messages.
    pub(super) registered_image: i64,
    /// Where the payload is read again when Glance's checksum differs.
    pub(super) store: &'a ImageStore,
    /// The Glance store the image goes to (the ticket's; None: Glance's default).
    pub(super) glance_store: Option<&'a str>,
}

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

/// The file's chunks (`image_store`) as an upload body, each going to the socket as it is.
/// Dropping the body (a cancel, a cut connection) ends the reading at its next chunk.
fn counted_body(chunks: Chunks, sent: Arc<AtomicU64>) -> reqwest::Body {
    // Handed on in slices (no copy), counted as the connection takes them, not as read: the
    // stall rule and the progress measure Glance, at the grain they always had.
    let counter = metrics::counter!(metrics_catalog::UPLOAD_BYTES);
    let stream = futures::stream::unfold((chunks, Bytes::new()), move |(mut chunks, mut rest)| {
        let (sent, counter) = (sent.clone(), counter.clone());
        async move {
            if rest.is_empty() {
                match chunks.next().await? {
                    Ok(chunk) => rest = chunk,
                    Err(e) => return Some((Err(e), (chunks, rest))),
                }
            }
            let slice = rest.split_to(rest.len().min(SLICE));
            sent.fetch_add(slice.len() as u64, Ordering::Relaxed);
            counter.increment(slice.len() as u64);
            Some((Ok(slice), (chunks, rest)))
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

/// Streams the file into the created image (or has Glance fetch it) and checks what Glance
/// stored.
pub(super) async fn upload_and_verify(
    upload: &Upload<'_>,
    file: Chunks,
) -> Result<(), AttemptError> {
    match upload.transfer {
        Transfer::WebDownload => {
            drop(file);
            let link = image_link(upload.glance, upload.secrets, upload.ticket_id)?;
            import(upload, Some(&link)).await?;
        }
        Transfer::Upload => send(upload, file).await?,
        Transfer::Stage => {
            send(upload, file).await?;
            import(upload, None).await?;
        }
    }
    verify(upload).await
}

/// Sends the file's bytes (`PUT …/file` or `…/stage`), writing progress, cut by a stall,
/// the deadline or a cancel.
async fn send(upload: &Upload<'_>, file: Chunks) -> Result<(), AttemptError> {
    let (glance, image_id) = (upload.glance, upload.image_id);
    let total = upload.payload.size;
    let sent = Arc::new(AtomicU64::new(0));
    // No checksum here: Glance computes one as it stores, and it is compared with the file's
    // registered md5 afterwards. Hashing in the stream too cost ~15% of the upload speed on a
    // 2-core machine (docs/BENCHMARKS.md).
    let body = counted_body(file, sent.clone());
    let put = async {
        if upload.transfer == Transfer::Stage {
            glance.stage(image_id, body, total as u64).await
        } else {
            glance
                .upload(image_id, body, total as u64, upload.glance_store)
                .await
        }
    };
    tokio::pin!(put);
    let settings = upload.settings;
    let mut watch = Watch::new(settings, total);
    let interval = settings.progress_interval;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            result = &mut put => { result?; break; }
            // Dropping `put` closes the connection: Glance puts the image back to queued.
            _ = upload.progress.cancel.cancelled() => return Err(AttemptError::Cancelled),
            _ = tokio::time::sleep_until(upload.deadline) => return Err(deadline_error(settings)),
            _ = tick.tick() => watch.tick(sent.load(Ordering::Relaxed), upload).await?,
        }
    }
    metrics::histogram!(metrics_catalog::UPLOAD_DURATION)
        .record(watch.started.elapsed().as_secs_f64());
    Ok(())
}

/// What a running upload watches at each tick: its stall rule, its last byte, its last
/// percentage written.
struct Watch {
    started: Instant,
    total: i64,
    stall: StallRule,
    last_sent: u64,
    last_move: Instant,
    last_percentage: i32,
}

impl Watch {
    fn new(settings: &WorkerSettings, total: i64) -> Watch {
        let started = Instant::now();
        Watch {
            started,
            total,
            stall: StallRule::new(
                settings.upload_min_bytes_per_sec,
                settings.upload_stall_window,
                started,
            ),
            last_sent: 0,
            last_move: Instant::now(),
            last_percentage: -1,
        }
    }

    /// Cuts a stalled upload; writes progress once per percent at most.
    async fn tick(&mut self, now_sent: u64, upload: &Upload<'_>) -> Result<(), AttemptError> {
        let total = self.total;
        if now_sent != self.last_sent {
            (self.last_sent, self.last_move) = (now_sent, Instant::now());
        }
        if let Some(summary) = self.stalled(now_sent) {
            return Err(AttemptError::Cloud(CloudError {
                summary,
                detail: Some(format!("{now_sent} of {total} bytes sent")),
                cause: Cause::Bound,
            }));
        }
        // One write per percent at most (and per interval): a ticket costs a bounded number
        // of writes whatever its size. The lease keeper heartbeats in between.
        let mut progress = upload_progress(now_sent as i64, total, self.started.elapsed());
        if progress.percentage != self.last_percentage {
            self.last_percentage = progress.percentage;
            progress.message.push_str(upload.of);
            upload.progress.report(&progress).await?;
        }
        Ok(())
    }

    /// Why the upload counts as stalled, if it does.
    fn stalled(&mut self, now_sent: u64) -> Option<String> {
        if (now_sent as i64) < self.total {
            // Glance takes bytes too slowly (or not at all).
            let stall = &mut self.stall;
            stall.record(Instant::now(), now_sent).map(|rate| {
                format!(
                    "the upload to Glance stalled: {rate} bytes/s over the last {} s, under \
                     worker.upload_min_bytes_per_sec ({} bytes/s)",
                    stall.window.as_secs(),
                    stall.min_rate
                )
            })
        } else {
            // Glance has every byte but never answers.
            (self.last_move.elapsed() > ANSWER_LIMIT).then(|| {
                format!(
                    "Glance did not answer the upload within {} s of its last byte",
                    ANSWER_LIMIT.as_secs()
                )
            })
        }
    }
}

/// Checks what Glance stored against the file's registered md5 and sha512.
async fn verify(upload: &Upload<'_>) -> Result<(), AttemptError> {
    let payload = upload.payload;
    let registered = payload.md5.as_str();
    // Cut by a cancel, the attempt's failure path still deletes the image.
    let stored =
        unless_cancelled(upload.progress.cancel, upload.glance.image(upload.image_id)).await?;
    if holds_file(payload, &stored) {
        return Ok(());
    }
    // Rare: tell a file changed since registration (permanent) from bytes damaged on the way
    // (one more upload).
    let image_id = upload.registered_image;
    let read = upload
        .store
        .checksums(&payload.location)
        .await
        .map_err(|e| AttemptError::Permanent {
            summary: format!("the file of image {image_id} could not be read back"),
            detail: Some(e.to_string()),
        })?;
    let sha512_changed = payload
        .sha512
        .as_deref()
        .is_some_and(|sha| sha != read.sha512);
    if read.md5 != registered || sha512_changed {
        return Err(AttemptError::Permanent {
            summary: format!(
                "the file of image {image_id} changed on disk since it was registered (checksum differs)"
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
    if upload.checksum_retried {
        Err(AttemptError::Permanent {
            summary: "Glance's checksum of the uploaded image still differed from the file's after a re-upload"
                .into(),
            detail: Some(detail),
        })
    } else {
        Err(AttemptError::ChecksumMismatch { detail })
    }
}

/// The signed link through which Glance fetches ticket `ticket_id`'s file (web-download),
/// valid for the import's whole wait.
fn image_link(
    glance: &Glance,
    secrets: &SecretBox,
    ticket_id: i64,
) -> Result<String, AttemptError> {
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
        .and_then(|p| p.import_timeout)
        .unwrap_or(DEFAULT_IMPORT_TIMEOUT)
        .as_secs()
        + LINK_MARGIN_SECS;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + valid;
    Ok(secrets.image_link(base, ticket_id, expires))
}

/// Has Glance import the staged bytes (glance-direct), or fetch them from `link`
/// (web-download), and waits until the image is `active`, saying so in the status. A failed
/// import (`os_glance_failed_import`) is permanent; the whole import ends at the profile's
/// `import_timeout` (transient), at the attempt deadline, or at once when the ticket is
/// cancelled.
async fn import(upload: &Upload<'_>, link: Option<&str>) -> Result<(), AttemptError> {
    let (glance, image_id) = (upload.glance, upload.image_id);
    let limit = glance
        .profile()
        .and_then(|p| p.import_timeout)
        .unwrap_or(DEFAULT_IMPORT_TIMEOUT);
    let size = upload.payload.size;
    let mut step = upload
        .progress
        .step(format!("importing in Glance{}", upload.of));
    (step.bytes_loaded, step.bytes_total) = (size, size);
    step.percentage = 99;
    upload.progress.report(&step).await?;
    let import = async {
        glance
            .start_import(image_id, link, upload.glance_store)
            .await?;
        loop {
            if imported(glance, image_id).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A heartbeat that also notices a cancel requested through Postgres.
            upload.progress.report(&step).await?;
        }
    };
    tokio::select! {
        result = tokio::time::timeout(limit, import) => result.unwrap_or_else(|_| {
            Err(AttemptError::Cloud(CloudError {
                summary: format!(
                    "Glance did not finish importing the image within {} s (import_timeout)",
                    limit.as_secs()
                ),
                detail: Some(format!("image {image_id}")),
                cause: Cause::Bound,
            }))
        }),
        // Dropping the import stops the wait; the image is deleted as after any failure.
        _ = upload.progress.cancel.cancelled() => Err(AttemptError::Cancelled),
        _ = tokio::time::sleep_until(upload.deadline) => Err(deadline_error(upload.settings)),
    }
}

/// Whether the import has ended (`active`); an error when it failed or the image left it.
pub(super) async fn imported(glance: &Glance, image_id: &str) -> Result<bool, AttemptError> {
    let image = glance.image(image_id).await?;
    if image.status == "active" {
        return Ok(true);
    }
    if let Some(stores) = image
        .os_glance_failed_import
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        return Err(AttemptError::Permanent {
            summary: format!("Glance failed to import the image into its store(s) {stores}"),
            detail: Some(format!("image {image_id} status {}", image.status)),
        });
    }
    // A web-download image stays `queued` until Glance's task starts; the task's lock on the
    // image says it has not ended yet.
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
    Ok(false)
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
