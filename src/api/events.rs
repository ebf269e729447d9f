//! Server-Sent Events: a client's `GET …/pimages/{pitid}/events` and the console's live feed.
//! Both read the process's one listener (`live::Hub`) and, on `Last-Event-ID` (or after
//! falling behind), the event log: never a query per viewer per second.

use std::collections::{HashMap, VecDeque};
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

use super::doc_parts::ReadErrors;
use super::error::ApiError;
use super::extract::{LastEventId, OwnedTicket};
use super::limits::{Access, StreamPass};
use super::params::TicketPath;
use super::{paths, AppState};
use crate::live::{Hub, Live};
use crate::store::events::{self, TicketEvent};

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

/// What one stream sends, and where it is in the event log.
pub(super) struct Feed {
    pool: PgPool,
    live: Receiver<Live>,
    stopped: CancellationToken,
    /// Events of this ticket only; the stream ends at its final state.
    ticket: Option<i64>,
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
    queued: VecDeque<Event>,
    done: bool,
    /// Registered with `AppState::streams`: it ends the stream when access is lost.
    pass: Option<StreamPass>,
    revoked: CancellationToken,
}

impl Feed {
    /// `live` must be subscribed before anything is read from the log, so nothing falls
    /// between the two.
    pub(super) fn new(pool: PgPool, hub: &Hub, ticket: Option<i64>, workers: bool) -> Feed {
        Feed {
            pool,
            live: hub.subscribe(),
            stopped: hub.stopped(),
            ticket,
            workers,
            last_id: 0,
            resumed_after: 0,
            sent: HashMap::new(),
            catch_up: false,
            queued: VecDeque::new(),
            done: false,
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

    fn push_ticket(&mut self, event: &TicketEvent) {
        if self.ticket.is_some_and(|t| t != event.ticket_id) {
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
        let name = if self.ticket.is_some() {
            "status"
        } else {
            "ticket"
        };
        if let Ok(sse) = Event::default()
            .id(event.id.to_string())
            .event(name)
            .json_data(event)
        {
            self.queued.push_back(sse);
        }
        if self.ticket.is_some() && event.is_final() {
            self.done = true;
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
                let batch = events::after(&self.pool, self.last_id, self.ticket)
                    .await
                    .ok()?;
                self.catch_up = batch.len() as i64 == events::REPLAY_BATCH;
                for event in &batch {
                    self.push_ticket(event);
                }
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.stopped.cancelled() => return None,
                _ = self.revoked.cancelled() => return None,
            };
            match received {
                Ok(Live::Ticket(event)) => self.push_ticket(&event),
                Ok(Live::Worker(worker)) if self.workers => {
                    if let Ok(sse) = Event::default().event("worker").json_data(&*worker) {
                        self.queued.push_back(sse);
                    }
                }
                Ok(Live::Worker(_)) => {}
                Ok(Live::CatchUp) | Err(RecvError::Lagged(_)) => self.catch_up = true,
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
    let user = &caller.0;
    let access = Access::User {
        login: user.login.clone(),
        password_hash: user.password_hash.clone(),
        owner: ticket.owner_login.clone(),
        api_key: signing_key(query.as_deref()),
    };
    let pass = state.streams.open(access, Some(&user.login))?;
    let feed = Feed::new(state.pool.clone(), &state.live, Some(ticket.id), false).held_by(pass);
    let latest = events::latest_of(&state.pool, ticket.id).await?;
    if let Some(id) = last_event_id {
        // The client saw the end already: 204 tells an EventSource to stop reconnecting.
        if ticket.state.is_final() && latest.as_ref().is_none_or(|e| e.id <= id) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Ok(feed.resume_after(id).into_response());
    }
    // Start from the current status: its newest event (or, for a ticket older than the
    // event log, the row itself).
    let current = match latest {
        Some(event) => event,
        None => TicketEvent {
            id: events::newest_id(&state.pool).await?,
            ticket_id: ticket.id,
            kind: "changed".into(),
            state: ticket.state.as_str().into(),
            old_state: None,
            percentage: ticket.percentage,
            bytes_loaded: ticket.bytes_loaded,
            bytes_total: ticket.bytes_total,
            message: ticket.message.clone(),
            at: ticket.updated_at,
        },
    };
    let mut feed = feed.resume_after(current.id - 1);
    feed.catch_up = false;
    feed.push_ticket(&current);
    // What happened since that event is replayed before live events.
    feed.catch_up = !feed.done;
    Ok(feed.into_response())
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
        let mut feed = Feed::new(pool, &Hub::default(), None, false);
        feed.push_ticket(&event(11, 2));
        feed.push_ticket(&event(10, 1)); // committed after 11
        feed.push_ticket(&event(11, 2)); // the same event again (a catch-up read)
        feed.push_ticket(&event(9, 2)); // older than what ticket 2 sent
        assert_eq!(feed.queued.len(), 2);
        assert_eq!(feed.last_id, 11);
    }

    #[tokio::test]
    async fn a_resumed_feed_skips_what_the_client_saw() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let mut feed = Feed::new(pool, &Hub::default(), None, false).resume_after(20);
        feed.push_ticket(&event(20, 1));
        feed.push_ticket(&event(21, 1));
        assert_eq!(feed.queued.len(), 1);
    }
}
