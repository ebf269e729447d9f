//! The status of tickets in memory, so that `GET …/status` needs no database round trip.
//!
//! Postgres announces every change of a ticket's row or of its attempts on
//! `TICKET_CHANGED_CHANNEL` (payload: the ticket's id; see the migration `status_cache`). The
//! process's listener (`Hub::run`) drops the entry of each ticket announced; the next read
//! fills it again from Postgres. Entries are therefore only ever stale by the time a NOTIFY
//! takes to arrive.
//!
//! Three rules keep it true where notices cannot:
//! - while the listener is not listening (it lost Postgres: notices are lost), nothing is
//!   served from memory or put into it, and what was there is dropped;
//! - a read that began before a change was announced does not fill the entry (it may have
//!   read the row before the change): each entry remembers the sequence number of its last
//!   change, and so does the whole cache for its last flush;
//! - a running ticket's attempt turns `lost` when its lease ends, with no NOTIFY: its entry
//!   is kept at most `RUNNING_FOR`.
//!
//! Finished tickets stay until they change (they are deleted, or a retry queues them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::attempts::Attempt;
use crate::store::tickets::{Ticket, TicketState};

/// How long a running ticket's entry is served (see the module's note).
const RUNNING_FOR: Duration = Duration::from_secs(2);

/// Entries kept at most (a status is about a kilobyte); past it the cache starts empty again.
const MAX_ENTRIES: usize = 20_000;

/// Changes remembered at most for reads still under way; past it they are forgotten and
/// every read under way is refused its fill (the entries stay).
const MAX_CHANGES: usize = 10_000;

/// A ticket as the status endpoint shows it.
#[derive(Debug)]
pub struct CachedStatus {
    pub ticket: Ticket,
    pub attempts: Vec<Attempt>,
}

impl CachedStatus {
    /// What the status shows, without the sealed cloud password it never needs.
    pub fn new(mut ticket: Ticket, attempts: Vec<Attempt>) -> CachedStatus {
        ticket.cloud_password_enc = Vec::new();
        CachedStatus { ticket, attempts }
    }
}

/// Where a read stood when it began: what `fill` needs to know it is not stale.
#[derive(Debug, Clone, Copy)]
pub struct ReadMark(u64);

#[derive(Default)]
pub struct Statuses {
    listening: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<i64, Entry>,
    /// The sequence number of each ticket's last change, for the reads under way.
    changes: HashMap<i64, u64>,
    /// Counts changes and flushes.
    sequence: u64,
    /// Reads that began before this sequence number do not fill.
    floor: u64,
}

struct Entry {
    status: Arc<CachedStatus>,
    filled: Instant,
}

impl Statuses {
    /// The ticket's status, when it is in memory and may be served.
    pub fn get(&self, ticket_id: i64) -> Option<Arc<CachedStatus>> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let inner = self.lock();
        let entry = inner.entries.get(&ticket_id)?;
        let servable = entry.status.ticket.state != TicketState::Running
            || entry.filled.elapsed() < RUNNING_FOR;
        servable.then(|| entry.status.clone())
    }

    /// Taken before reading a ticket from Postgres, for `fill`.
    pub fn mark(&self) -> ReadMark {
        ReadMark(self.lock().sequence)
    }

    /// Keeps what a read found, unless the ticket changed (or the cache was flushed) since
    /// the read began, or nobody listens for changes. A later read may have filled the
    /// entry already: an earlier one never replaces it (it began before the change that
    /// the later one saw, or it saw the same row).
    pub fn fill(&self, mark: ReadMark, status: Arc<CachedStatus>) {
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        let id = status.ticket.id;
        let changed = inner.changes.get(&id).copied().unwrap_or(0);
        if mark.0 < inner.floor || mark.0 < changed {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(&id) {
            inner.flush();
            return;
        }
        inner.entries.insert(
            id,
            Entry {
                status,
                filled: Instant::now(),
            },
        );
    }

    /// A change of the ticket was announced (or made by this process).
    pub fn changed(&self, ticket_id: i64) {
        let mut inner = self.lock();
        inner.sequence += 1;
        let at = inner.sequence;
        inner.entries.remove(&ticket_id);
        if inner.changes.len() >= MAX_CHANGES {
            inner.changes.clear();
            inner.floor = at;
        }
        inner.changes.insert(ticket_id, at);
    }

    /// Forgets every entry (a notice named no ticket it could read).
    pub(super) fn forget_all(&self) {
        self.lock().flush();
    }

    /// The listener listens (again): from now on every change is heard.
    pub(super) fn listening(&self) {
        self.lock().flush();
        self.listening.store(true, Ordering::Release);
    }

    /// The listener lost Postgres, or stopped: changes may go unheard.
    pub(super) fn deaf(&self) {
        self.listening.store(false, Ordering::Release);
        self.lock().flush();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn flush(&mut self) {
        self.entries.clear();
        self.changes.clear();
        self.sequence += 1;
        self.floor = self.sequence;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: i64, state: TicketState) -> Arc<CachedStatus> {
        let now = chrono::Utc::now();
        let ticket = Ticket {
            id,
            ticket_key: uuid::Uuid::nil(),
            image_id: 1,
            scan_id: 1,
            scanned_instance_id: 1,
            owner_login: "alice".into(),
            display_name: "d".into(),
            public_image: false,
            account_name: None,
            keystone_url: "http://keystone".into(),
            keystone_version: "v3".into(),
            keystone_domain: "Default".into(),
            keystone_project: "demo".into(),
            glance_url: None,
            publish_location: None,
            cloud_login: "demo".into(),
            cloud_password_enc: vec![1, 2, 3],
            state,
            attempts: 0,
            fencing_token: 0,
            cancel_requested: false,
            message: String::new(),
            percentage: 0,
            bytes_loaded: 0,
            bytes_total: 0,
            eta: None,
            error_message: None,
            detailed_error_msg: None,
            cloud_id: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            group_id: None,
            glance_store: None,
            copies_from: None,
            glance_region: None,
        };
        Arc::new(CachedStatus::new(ticket, vec![]))
    }

    fn listening() -> Statuses {
        let statuses = Statuses::default();
        statuses.listening();
        statuses
    }

    #[test]
    fn nothing_is_kept_or_served_while_not_listening() {
        let statuses = Statuses::default();
        statuses.fill(statuses.mark(), status(1, TicketState::Queued));
        assert!(statuses.get(1).is_none());
        statuses.listening();
        statuses.fill(statuses.mark(), status(1, TicketState::Queued));
        assert!(statuses.get(1).is_some());
        statuses.deaf();
        assert!(statuses.get(1).is_none(), "served while deaf");
        statuses.listening();
        assert!(
            statuses.get(1).is_none(),
            "an entry from before the gap survived"
        );
    }

    #[test]
    fn a_read_begun_before_a_change_does_not_fill() {
        let statuses = listening();
        let before = statuses.mark();
        statuses.changed(1);
        statuses.fill(before, status(1, TicketState::Queued));
        assert!(statuses.get(1).is_none(), "a stale read was kept");
        statuses.fill(statuses.mark(), status(1, TicketState::Queued));
        assert!(statuses.get(1).is_some());
        // Another ticket's change does not stop it.
        let before = statuses.mark();
        statuses.changed(2);
        statuses.fill(before, status(3, TicketState::Complete));
        assert!(statuses.get(3).is_some());
    }

    #[test]
    fn an_earlier_read_does_not_replace_a_later_one() {
        let statuses = listening();
        let early = statuses.mark();
        statuses.changed(1);
        let late = statuses.mark();
        let mut newer = status(1, TicketState::Cancelled);
        Arc::get_mut(&mut newer).unwrap().ticket.message = "cancelled".into();
        statuses.fill(late, newer);
        statuses.fill(early, status(1, TicketState::Queued));
        let kept = statuses.get(1).expect("the later read is kept");
        assert_eq!(
            kept.ticket.state,
            TicketState::Cancelled,
            "the stale read replaced it"
        );
    }

    #[test]
    fn many_changes_forget_reads_under_way_but_keep_entries() {
        let statuses = listening();
        statuses.fill(statuses.mark(), status(1, TicketState::Complete));
        let under_way = statuses.mark();
        for id in 10..(10 + MAX_CHANGES as i64 + 1) {
            statuses.changed(id);
        }
        statuses.fill(under_way, status(2, TicketState::Complete));
        assert!(
            statuses.get(2).is_none(),
            "a read from before the forgotten changes filled"
        );
        assert!(statuses.get(1).is_some(), "an entry was lost");
    }

    #[test]
    fn the_sealed_password_is_not_kept() {
        assert!(status(1, TicketState::Queued)
            .ticket
            .cloud_password_enc
            .is_empty());
    }

    #[test]
    fn a_read_begun_before_the_listener_listened_again_does_not_fill() {
        let statuses = listening();
        let before = statuses.mark();
        statuses.deaf();
        statuses.listening();
        statuses.fill(before, status(1, TicketState::Queued));
        assert!(statuses.get(1).is_none());
    }

    #[test]
    fn a_change_drops_the_entry() {
        let statuses = listening();
        statuses.fill(statuses.mark(), status(1, TicketState::Complete));
        statuses.changed(1);
        assert!(statuses.get(1).is_none());
    }

    #[test]
    fn a_running_ticket_is_served_only_briefly() {
        let statuses = listening();
        statuses.fill(statuses.mark(), status(1, TicketState::Running));
        assert!(statuses.get(1).is_some());
        statuses.lock().entries.get_mut(&1).unwrap().filled -= RUNNING_FOR;
        assert!(
            statuses.get(1).is_none(),
            "a running entry outlived its lease rule"
        );
    }
}
