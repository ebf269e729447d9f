//! Group commit of publishes: concurrent `POST …/pimages` requests queue their checked
//! tickets here; a few filing tasks each take whatever has queued up (at most `BATCH`) and
//! store it as one statement and one commit (`store::tickets::file_batch`, which refiles a
//! failed batch one ticket at a time). Each request is answered only once its own batch has
//! committed: exactly as durable as a commit of its own, for a fraction of PostgreSQL's CPU
//! and WAL flushes per ticket.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::outbox::HandOffs;
use crate::store::tickets::{self, Filed, NewTicket};

/// Tickets stored by one statement at most.
const BATCH: usize = 64;
/// Batches stored at once. One: whatever arrives while a batch commits joins the next, so
/// batches are as large as the load makes them (two halved them, and doubled PostgreSQL's
/// work per ticket).
const FILING_TASKS: usize = 1;
/// Requests waiting for a batch at most; more wait to queue (back-pressure, not memory).
const QUEUE: usize = 4 * BATCH;

/// A ticket waiting for its batch, and where its outcome goes.
struct Request {
    new: NewTicket,
    outcome: oneshot::Sender<Result<Filed, sqlx::Error>>,
}

/// The filing queue the API's publish requests share.
#[derive(Clone)]
pub struct Filer {
    sender: mpsc::Sender<Request>,
}

impl Filer {
    /// Starts the filing tasks: each ticket created is queued for RabbitMQ (`hand_offs`)
    /// before its request is answered. A user may hold `max_unfinished` tickets queued or
    /// running at most.
    pub fn start(pool: PgPool, hand_offs: HandOffs, max_unfinished: i64) -> Filer {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..FILING_TASKS {
            tokio::spawn(file_batches(
                pool.clone(),
                hand_offs.clone(),
                max_unfinished,
                receiver.clone(),
            ));
        }
        Filer { sender }
    }

    /// Files one ticket with whatever else is queued, and waits for its batch's commit.
    pub async fn file(&self, new: NewTicket) -> Result<Filed, sqlx::Error> {
        let (outcome, answer) = oneshot::channel();
        let stopped = || sqlx::Error::PoolClosed;
        self.sender
            .send(Request { new, outcome })
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// One filing task: takes a batch (the receiver is held only while taking it), files it,
/// answers its requests; ends when every `Filer` is gone.
async fn file_batches(
    pool: PgPool,
    hand_offs: HandOffs,
    max_unfinished: i64,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
) {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        if receiver.lock().await.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let (news, outcomes): (Vec<NewTicket>, Vec<_>) =
            batch.into_iter().map(|r| (r.new, r.outcome)).unzip();
        let filed = tickets::file_batch(&pool, &news, max_unfinished).await;
        for (filed, outcome) in filed.into_iter().zip(outcomes) {
            if let Ok(Filed::Created(ticket, outbox_id)) = &filed {
                // Queued before the answer: a request whose client left still hands off.
                hand_offs.created(ticket.id, *outbox_id);
            }
            // The request may have gone (its client left): its ticket is stored all the same.
            let _ = outcome.send(filed);
        }
    }
}
