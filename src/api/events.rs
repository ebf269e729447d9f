//! Server-Sent Events: a client's `GET …/pimages/{pitid}/events`, a publication group's
//! `GET …/pimagegroups/{gid}/events` and the console's live feed. All read the process's one listener (`live::Hub`) and, on `Last-Event-ID` (or after
//! falling behind), the event log: never a query per viewer per second.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::doc_parts::ReadErrors;
use super::error::ApiError;
use super::extract::{LastEventId, OwnedTicket, UserScope};
use super::limits::{Access, StreamPass};
use super::params::{GroupPath, TicketPath};
use super::{paths, AppState};
use crate::live::{Hub, Live};
use crate::store::events::{self, TicketEvent};
use crate::store::{groups, Ticket};

/// Comment lines this often keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The public API key a signed URL names (the last `apiKey`, as `SignedUrl::parse` reads it):
/// the caller was authenticated by it, so the stream lives only as long as the key.
fn signing_key(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .filter(|(name, _)| name == "apiKey")
        .last()
        .map(|(_, key)| key.into_owned())
}

/// Which tickets' events a feed sends.
pub(super) enum Scope {
    /// Every ticket's (the console's feed).
    All,
    /// One ticket's; the stream ends at its final state.
    Ticket(i64),
    /// A publication group's tickets', those added while the stream is open too; the
    /// stream ends when none is unfinished.
    Group(GroupScope),
}

/// What a group's feed knows of the group.
pub(super) struct GroupScope {
    id: i64,
    /// Its tickets seen, and whether each is final.
    members: HashMap<i64, bool>,
    /// Tickets seen that are not of the group (asked once each).
    others: HashSet<i64>,
}

impl GroupScope {
    /// The group's tickets as read (after the feed subscribed).
    pub(super) fn new(id: i64, children: &[Ticket]) -> GroupScope {
        GroupScope {
            id,
            members: children
                .iter()
                .map(|t| (t.id, t.state.is_final()))
                .collect(),
            others: HashSet::new(),
        }
    }

    fn unfinished(&self) -> bool {
        self.members.values().any(|finished| !finished)
    }

    /// Records a member's event: whether the group has just become final.
    fn track(&mut self, event: &TicketEvent) -> bool {
        let was_unfinished = self.unfinished();
        self.members.insert(event.ticket_id, event.is_final());
        was_unfinished && !self.unfinished()
    }
}

/// What one stream sends, and where it is in the event log.
pub(super) struct Feed {
    pool: PgPool,
    live: Receiver<Live>,
    stopped: CancellationToken,
    scope: Scope,
    /// The console's feed also carries worker heartbeats.
    workers: bool,
    /// The highest event id sent (where a catch-up read resumes).
    last_id: i64,
    /// Where the client resumed: events up to it were seen, of every ticket.
    resumed_after: i64,
    /// The last event id sent per ticket. Events of different tickets may commit (and so be
    /// announced) out of id order; those of one ticket never do (its row lock orders them).
    sent: HashMap<i64, i64>,
    catch_up: bool,
    /// Where the next catch-up read starts, when not after `last_id`.
    read_from: Option<i64>,
    queued: VecDeque<Event>,
    done: bool,
    /// A group's feed ends once the catch-up read under way is over, if the group is
    /// still final then.
    done_after_replay: bool,
    /// Registered with `AppState::streams`: it ends the stream when access is lost.
    pass: Option<StreamPass>,
    revoked: CancellationToken,
}

impl Feed {
    /// `live` must be subscribed before anything is read from the log, so nothing falls
    /// between the two.
    pub(super) fn new(pool: PgPool, hub: &Hub, scope: Scope, workers: bool) -> Feed {
        Feed {
            pool,
            live: hub.subscribe(),
            stopped: hub.stopped(),
            scope,
            workers,
            last_id: 0,
            resumed_after: 0,
            sent: HashMap::new(),
            catch_up: false,
            read_from: None,
            queued: VecDeque::new(),
            done: false,
            done_after_replay: false,
            pass: None,
            revoked: CancellationToken::new(),
        }
    }

    /// Ends the stream when `pass` is revoked (its session or user lost access).
    pub(super) fn held_by(mut self, pass: StreamPass) -> Feed {
        self.revoked = pass.revoked.clone();
        self.pass = Some(pass);
        self
    }

    /// Resumes after event `id`: what followed it is replayed from the log first.
    pub(super) fn resume_after(mut self, id: i64) -> Feed {
        self.last_id = id;
        self.resumed_after = id;
        self.catch_up = true;
        self
    }

    /// Starts from the current status of each ticket (`current`: its newest event), then
    /// replays what followed each from the log.
    pub(super) fn start_at(mut self, current: &[TicketEvent]) -> Feed {
        if let Scope::Group(group) = &self.scope {
            // A group final already ends after the replay.
            self.done_after_replay = !group.unfinished();
        }
        for event in current {
            self.push_ticket(event);
        }
        self.read_from = current.iter().map(|e| e.id).min();
        self.catch_up = !self.done;
        self
    }

    /// Replays from the oldest event this feed may lack of a member of its group: events
    /// of different tickets commit out of id order (a sibling withdrawn with the ticket
    /// that failed may have the lower id), those of one ticket never do.
    fn start_catch_up(&mut self) {
        self.catch_up = true;
        if let Scope::Group(group) = &self.scope {
            let sent = |id: &i64| self.sent.get(id).copied().unwrap_or(self.resumed_after);
            self.read_from = group.members.keys().map(sent).min();
        }
    }

    fn admits(&self, event: &TicketEvent) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Ticket(id) => *id == event.ticket_id,
            Scope::Group(group) => group.members.contains_key(&event.ticket_id),
        }
    }

    /// A group's feed asks, once, whether a ticket it has not seen is of the group.
    async fn learn(&mut self, event: &TicketEvent) -> Result<(), sqlx::Error> {
        let Scope::Group(group) = &mut self.scope else {
            return Ok(());
        };
        let id = event.ticket_id;
        if group.members.contains_key(&id) || group.others.contains(&id) {
            return Ok(());
        }
        if groups::group_of_ticket(&self.pool, id).await? == Some(group.id) {
            group.members.insert(id, false);
        } else {
            group.others.insert(id);
        }
        Ok(())
    }

    async fn read_log(&mut self, from: i64) -> Result<Vec<TicketEvent>, sqlx::Error> {
        match &mut self.scope {
            Scope::All => events::after(&self.pool, from, None).await,
            Scope::Ticket(id) => events::after(&self.pool, from, Some(*id)).await,
            Scope::Group(group) => {
                let known: Vec<i64> = group.members.keys().copied().collect();
                let batch = groups::events_after(&self.pool, from, group.id, &known).await?;
                for event in &batch {
                    group.members.entry(event.ticket_id).or_insert(false);
                }
                Ok(batch)
            }
        }
    }

    fn push_ticket(&mut self, event: &TicketEvent) {
        if !self.admits(event) {
            return;
        }
        let sent = self
            .sent
            .entry(event.ticket_id)
            .or_insert(self.resumed_after);
        if event.id <= *sent {
            return;
        }
        *sent = event.id;
        self.last_id = self.last_id.max(event.id);
        let name = match self.scope {
            Scope::All => "ticket",
            Scope::Ticket(_) | Scope::Group(_) => "status",
        };
        if let Ok(sse) = Event::default()
            .id(event.id.to_string())
            .event(name)
            .json_data(event)
        {
            self.queued.push_back(sse);
        }
        match &mut self.scope {
            Scope::Ticket(_) => self.done |= event.is_final(),
            Scope::Group(group) => {
                if group.track(event) {
                    // One last read: what ended with it (a withdrawn sibling) is sent too.
                    self.done_after_replay = true;
                    self.start_catch_up();
                }
            }
            Scope::All => {}
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.revoked.is_cancelled() {
                return None;
            }
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if self.catch_up {
                // A failed read ends the stream: the client resumes with its Last-Event-ID.
                let from = self.read_from.take().unwrap_or(self.last_id);
                let batch = self.read_log(from).await.ok()?;
                self.catch_up = batch.len() as i64 == events::REPLAY_BATCH;
                if self.catch_up {
                    self.read_from = batch.last().map(|e| e.id);
                }
                for event in &batch {
                    self.push_ticket(event);
                }
                if !self.catch_up && self.done_after_replay {
                    self.done_after_replay = false;
                    self.done = matches!(&self.scope, Scope::Group(g) if !g.unfinished());
                }
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.stopped.cancelled() => return None,
                _ = self.revoked.cancelled() => return None,
            };
            match received {
                Ok(Live::Ticket(event)) => {
                    self.learn(&event).await.ok()?;
                    self.push_ticket(&event);
                }
                Ok(Live::Worker(worker)) if self.workers => {
                    if let Ok(sse) = Event::default().event("worker").json_data(&*worker) {
                        self.queued.push_back(sse);
                    }
                }
                Ok(Live::Worker(_)) => {}
                Ok(Live::CatchUp) | Err(RecvError::Lagged(_)) => self.start_catch_up(),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    pub(super) fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut feed| async move {
            feed.next().await.map(|event| (Ok(event), feed))
        })
    }

    pub(super) fn into_response(self) -> Response {
        Sse::new(self.into_stream())
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response()
    }
}

/// `GET …/pimages/{pitid}/events`: the ticket's status changes as Server-Sent Events.
#[utoipa::path(
    get,
    path = paths::TICKET_EVENTS,
    operation_id = "ticketEvents",
    summary = "The ticket's status changes, live (Server-Sent Events); ends at the final state",
    description = "Each event is `status` with the event id and a JSON object (ticketId, kind, state, oldState, percentage, bytesLoaded, bytesTotal, message, at). Without Last-Event-ID the first event is the ticket's current status; with it, every change after that event is sent first. The stream ends after the final state (complete, error, cancelled, or deleted).",
    params(TicketPath, LastEventId),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 204, description = "The ticket has ended and Last-Event-ID names its last event: nothing more will come"),
        ReadErrors,
    )
)]
pub async fn ticket_events(
    State(state): State<AppState>,
    OwnedTicket { caller, ticket }: OwnedTicket,
    RawQuery(query): RawQuery,
    LastEventId(last_event_id): LastEventId,
) -> Result<Response, ApiError> {
    let access = access_of(&caller, &ticket.owner_login, query.as_deref());
    let pass = state.streams.open(access, Some(&caller.0.login))?;
    let scope = Scope::Ticket(ticket.id);
    let feed = Feed::new(state.pool.clone(), &state.live, scope, false).held_by(pass);
    let latest = events::latest_of(&state.pool, ticket.id).await?;
    if let Some(id) = last_event_id {
        // The client saw the end already: 204 tells an EventSource to stop reconnecting.
        if ticket.state.is_final() && latest.as_ref().is_none_or(|e| e.id <= id) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Ok(feed.resume_after(id).into_response());
    }
    let current = current_status(&state.pool, &ticket, latest).await?;
    Ok(feed.start_at(&[current]).into_response())
}

/// `GET /api/users/{uid}/pimagegroups/{gid}/events`: every ticket of a publication group.
#[utoipa::path(
    get,
    path = paths::GROUP_EVENTS,
    operation_id = "groupEvents",
    summary = "The status changes of every target of a publication group, live (Server-Sent Events); ends when none is unfinished",
    description = "Each event is `status`, as a ticket's stream sends it (ticketId tells the target), with the event id. Targets added to the group while the stream is open are followed too. Without Last-Event-ID the first events are each target's current status; with it, every change after that event is sent first. The stream ends after the last target reaches its final state (complete, error, cancelled, or deleted).",
    params(GroupPath, LastEventId),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 204, description = "Every target has ended and Last-Event-ID names the group's last event: nothing more will come"),
        ReadErrors,
    )
)]
pub async fn group_events(
    State(state): State<AppState>,
    UserScope { caller, path }: UserScope<GroupPath>,
    RawQuery(query): RawQuery,
    LastEventId(last_event_id): LastEventId,
) -> Result<Response, ApiError> {
    let missing = || {
        let (gid, uid) = (path.gid, &path.uid);
        ApiError::NotFound(format!("no publication group {gid} for user '{uid}'"))
    };
    let group = groups::get(&state.pool, path.gid)
        .await?
        .filter(|g| g.owner_login == path.uid)
        .ok_or_else(missing)?;
    let access = access_of(&caller, &group.owner_login, query.as_deref());
    let pass = state.streams.open(access, Some(&caller.0.login))?;
    // Subscribed before the children are read: a target added meanwhile is announced.
    let mut feed = Feed::new(state.pool.clone(), &state.live, Scope::All, false).held_by(pass);
    let children = groups::children(&state.pool, group.id).await?;
    feed.scope = Scope::Group(GroupScope::new(group.id, &children));
    let mut latest = Vec::with_capacity(children.len());
    for child in &children {
        latest.push((child, events::latest_of(&state.pool, child.id).await?));
    }
    let Some(id) = last_event_id else {
        let mut current = Vec::with_capacity(latest.len());
        for (child, event) in latest {
            current.push(current_status(&state.pool, child, event).await?);
        }
        current.sort_by_key(|e| e.id);
        return Ok(feed.start_at(&current).into_response());
    };
    let ended = children.iter().all(|t| t.state.is_final());
    if ended
        && latest
            .iter()
            .all(|(_, e)| e.as_ref().is_none_or(|e| e.id <= id))
    {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut feed = feed.resume_after(id);
    feed.done_after_replay = ended;
    Ok(feed.into_response())
}

/// What a user's stream needs to stay allowed: the caller's credentials, the owner, and the
/// API key of a signed URL.
fn access_of(caller: &Caller, owner: &str, query: Option<&str>) -> Access {
    let user = &caller.0;
    Access::User {
        login: user.login.clone(),
        password_hash: user.password_hash.clone(),
        owner: owner.to_string(),
        api_key: signing_key(query),
    }
}

/// A ticket's current status: its newest event (`latest`) or, for a ticket older than the
/// event log (or whose events were forgotten), the row itself.
async fn current_status(
    pool: &PgPool,
    ticket: &Ticket,
    latest: Option<TicketEvent>,
) -> Result<TicketEvent, sqlx::Error> {
    if let Some(event) = latest {
        return Ok(event);
    }
    Ok(TicketEvent {
        id: events::newest_id(pool).await?,
        ticket_id: ticket.id,
        kind: "changed".into(),
        state: ticket.state.as_str().into(),
        old_state: None,
        percentage: ticket.percentage,
        bytes_loaded: ticket.bytes_loaded,
        bytes_total: ticket.bytes_total,
        message: ticket.message.clone(),
        at: ticket.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, ticket_id: i64) -> TicketEvent {
        TicketEvent {
            id,
            ticket_id,
            kind: "changed".into(),
            state: "running".into(),
            old_state: None,
            percentage: 0,
            bytes_loaded: 0,
            bytes_total: 0,
            message: String::new(),
            at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn events_of_two_tickets_committed_out_of_id_order_are_both_sent() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let mut feed = Feed::new(pool, &Hub::default(), Scope::All, false);
        feed.push_ticket(&event(11, 2));
        feed.push_ticket(&event(10, 1)); // committed after 11
        feed.push_ticket(&event(11, 2)); // the same event again (a catch-up read)
        feed.push_ticket(&event(9, 2)); // older than what ticket 2 sent
        assert_eq!(feed.queued.len(), 2);
        assert_eq!(feed.last_id, 11);
    }

    #[tokio::test]
    async fn a_group_feed_sends_its_tickets_only_and_ends_after_a_last_read() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let mut group = GroupScope::new(7, &[]);
        group.members.extend([(1, false), (2, true)]);
        let mut feed = Feed::new(pool, &Hub::default(), Scope::Group(group), false);
        feed.push_ticket(&event(10, 1));
        feed.push_ticket(&event(11, 3)); // not of the group
        assert_eq!(feed.queued.len(), 1);
        assert!(!feed.catch_up);
        let mut ended = event(12, 1);
        ended.state = "complete".into();
        feed.push_ticket(&ended);
        // The last unfinished target ended: one more read, from the oldest member's last
        // event (ticket 2 sent nothing: from the start), before the end.
        assert_eq!(feed.queued.len(), 2);
        assert!(feed.catch_up && feed.done_after_replay && !feed.done);
        assert_eq!(feed.read_from, Some(0));
    }

    #[tokio::test]
    async fn a_resumed_feed_skips_what_the_client_saw() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let mut feed = Feed::new(pool, &Hub::default(), Scope::All, false).resume_after(20);
        feed.push_ticket(&event(20, 1));
        feed.push_ticket(&event(21, 1));
        assert_eq!(feed.queued.len(), 1);
    }
}
