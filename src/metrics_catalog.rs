//! Every metric pimage exports: its name, kind, unit and help text, in one place.
//!
//! Other modules record through these constants, never through a string literal, so a typo
//! cannot make a new metric silently, and `/metrics` has a HELP line for each (a test in
//! `tests/suite/architecture.rs` rejects `"pimage_…"` literals anywhere else in `src/`).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

macro_rules! catalog {
    ($($ident:ident = $name:literal, $kind:ident, $unit:ident, $help:literal;)*) => {
        $(#[doc = $help] pub const $ident: &str = $name;)*
        /// Every metric, in the order `/metrics` documents them.
        pub const ALL: &[Metric] = &[
            $(Metric { name: $name, kind: Kind::$kind, unit: Unit::$unit, help: $help },)*
        ];
    };
}

catalog! {
    BUILD_INFO = "pimage_build_info", Gauge, Count,
        "Always 1, labelled with pimage's own version (GET /api/status answers the UForge version clients check).";
    HTTP_REQUESTS = "pimage_http_requests_total", Counter, Count,
        "API requests answered, by method, route template and status.";
    HTTP_REQUEST_DURATION = "pimage_http_request_duration_seconds", Histogram, Seconds,
        "Time to answer an API request, by method and route template.";
    PUBLISH_REQUESTS = "pimage_publish_requests_total", Counter, Count,
        "Publish tickets stored by the API.";
    LOGIN_FAILURES = "pimage_login_failures_total", Counter, Count,
        "Failed API logins (wrong password, unknown user or key, bad signature).";
    LOGIN_CHECKS_SHED = "pimage_login_checks_shed_total", Counter, Count,
        "Password checks refused with 429 because every hashing slot stayed busy.";
    PASSWORD_CHECKS = "pimage_password_checks_total", Counter, Count,
        "Password checks run (argon2): a credential not remembered, once for all its concurrent requests.";
    QUEUE_PUBLISH = "pimage_queue_publish_total", Counter, Count,
        "Ticket messages published to RabbitMQ, by result (confirmed or refused).";
    OUTBOX_PENDING = "pimage_outbox_pending", Gauge, Count,
        "Stored tickets not yet confirmed by RabbitMQ.";
    OUTBOX_OLDEST = "pimage_outbox_oldest_seconds", Gauge, Seconds,
        "Age of the oldest ticket not yet confirmed by RabbitMQ.";
    TICKETS = "pimage_tickets", Gauge, Count,
        "Tickets in the database, by state (queued and running counted; ended states estimated from table statistics past 100,000 tickets).";
    TICKETS_FINISHED = "pimage_tickets_finished_total", Counter, Count,
        "Tickets a worker ended, by outcome.";
    TICKETS_GIVEN_UP = "pimage_tickets_given_up_total", Counter, Count,
        "Tickets the rescuer ended after too many attempts.";
    RESCUES = "pimage_rescues_total", Counter, Count,
        "Tickets re-queued because their worker stopped renewing its lease.";
    LEASES_LOST = "pimage_leases_lost_total", Counter, Count,
        "Uploads stopped because another worker took over their ticket.";
    RETRIES = "pimage_retries_total", Counter, Count,
        "Transient failures retried by a worker, by cause.";
    UPLOAD_BYTES = "pimage_upload_bytes_total", Counter, Bytes,
        "Image bytes sent to Glance.";
    UPLOAD_DURATION = "pimage_upload_duration_seconds", Histogram, Seconds,
        "Time to stream one image file to Glance.";
    CLEANUPS = "pimage_image_cleanups_total", Counter, Count,
        "Image cleanups the reconciler worked, by result (deleted, superseded, failed).";
    CLEANUPS_PENDING = "pimage_image_cleanups_pending", Gauge, Count,
        "Image cleanups not yet confirmed by Glance.";
    CLEANUPS_FAILING = "pimage_image_cleanups_failing", Gauge, Count,
        "Pending image cleanups whose last try failed (see pimage tickets list --state cleanup).";
    ORPHANS_DELETED = "pimage_orphan_images_deleted_total", Counter, Count,
        "Leftover images (ticket unknown or ended without them) the orphan sweep deleted.";
    KEYSTONE_LOGINS = "pimage_keystone_logins_total", Counter, Count,
        "Keystone password logins, by outcome (ok, refused, failed).";
    KEYSTONE_SESSION_HITS = "pimage_keystone_session_hits_total", Counter, Count,
        "Tickets served by a kept Keystone session instead of a new login.";
    UPLOADS_RUNNING = "pimage_uploads_running", Gauge, Count,
        "Tickets this worker process is running, by cloud (Glance host, else Keystone host).";
    TICKETS_WAITING_FOR_SLOT = "pimage_tickets_waiting_for_slot", Gauge, Count,
        "Queued tickets whose cloud has cloud.max_uploads_per_cloud uploads running (the whole pool, as this worker's last claim saw it), by cloud.";
    TICKET_WAIT = "pimage_ticket_wait_seconds", Histogram, Seconds,
        "Time from a ticket's creation to its first claim by a worker.";
    ORPHAN_SWEEP_FAILURES = "pimage_orphan_sweep_failures_total", Counter, Count,
        "Accounts the orphan sweep could not list, and leftovers it could not delete.";
    STATUS_READS = "pimage_status_reads_total", Counter, Count,
        "Ticket status reads (GET …/status), by where they were answered from: memory (the status cache) or database.";
}

/// Gives every metric its HELP text and unit in the installed recorder, and starts every
/// counter at 0 (without labels): a counter first exported at 1 loses that increase to
/// `rate()`, and dashboard queries over counters that never moved would return nothing.
pub fn describe_all() {
    for m in ALL {
        match m.kind {
            Kind::Counter => {
                describe_counter!(m.name, m.unit, m.help);
                metrics::counter!(m.name).increment(0);
            }
            Kind::Gauge => describe_gauge!(m.name, m.unit, m.help),
            Kind::Histogram => describe_histogram!(m.name, m.unit, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_with_help() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("pimage_"), "{}", m.name);
            assert!(
                m.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help", m.name);
        }
    }
}
