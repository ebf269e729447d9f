//! RabbitMQ: the hand-off of tickets from the API to the workers.
//!
//! One durable quorum queue (`amqp.queue`) carries `{"ticketId": N}` messages, persistent
//! and publisher-confirmed. Messages that keep failing are dead-lettered to `<queue>.dead`
//! after `DELIVERY_LIMIT` deliveries. A message only says "look at ticket N": Postgres holds
//! the ticket, so a duplicate or stale message is harmless (the claim refuses it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::warn;

use crate::config::AmqpSettings;
use crate::metrics_catalog;

/// Deliveries after which RabbitMQ dead-letters a message instead of redelivering it.
const DELIVERY_LIMIT: i64 = 20;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TicketMessage {
    pub ticket_id: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ did not confirm the message in time")]
    Timeout,
    #[error("RabbitMQ did not complete the connection within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("RabbitMQ at {0}: {1}")]
    AtNode(String, Box<QueueError>),
    #[error("amqp.url names no broker")]
    NoUrl,
    /// Every node of a cluster failed: each one's address and why.
    #[error("no RabbitMQ node answered: {}", each_node(.0))]
    NoNode(Vec<(String, QueueError)>),
}

fn each_node(failures: &[(String, QueueError)]) -> String {
    let each: Vec<String> = failures
        .iter()
        .map(|(node, e)| format!("{node}: {e}"))
        .collect();
    each.join("; ")
}

/// How long a connection may take to open. RabbitMQ closes a handshake that stalls for 10 s
/// (`handshake_timeout`), and lapin's connect then never returned: a worker whose first
/// connection stalled (its runtime busy) waited forever, consuming nothing.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(12);

/// The order in which this process tries a cluster's nodes (`amqp.url` lists them). It starts
/// at an offset of its own (its pid), so processes spread over the nodes; it stays on the node
/// it reached, and a connection lost there moves it to the next.
struct Rotation(AtomicUsize);

impl Rotation {
    const fn starting_at(offset: usize) -> Rotation {
        Rotation(AtomicUsize::new(offset))
    }

    /// Every node of `n`, the preferred one first, then on in turn.
    fn order(&self, n: usize) -> Vec<usize> {
        let start = self.0.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(|k| (start + k) % n).collect()
    }

    fn connected(&self, node: usize) {
        self.0.store(node, Ordering::Relaxed);
    }

    /// A connection to `node` was lost: the next connection tries the node after it first.
    /// Once only, when several of the process's connections to it are lost together.
    fn lost(&self, node: usize) {
        let _ = self
            .0
            .compare_exchange(node, node + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
}

static ROTATION: LazyLock<Rotation> =
    LazyLock::new(|| Rotation::starting_at(std::process::id() as usize));

/// A connection and the node it reached.
pub struct Link {
    pub connection: Connection,
    /// `host:port` of the node, for messages.
    pub node: String,
    index: usize,
}

impl Link {
    /// Says the connection was lost: the next one starts at the next node.
    pub fn lost(&self) {
        ROTATION.lost(self.index);
    }
}

/// Opens a connection (named as it shows in the management UI) to one of the nodes of
/// `amqp.url`, trying each in turn within `CONNECT_TIMEOUT`; fails when none answered
/// (callers retry), naming each node and why.
pub async fn open(settings: &AmqpSettings, connection_name: &str) -> Result<Link, QueueError> {
    let urls = settings.urls();
    let mut failures = vec![];
    for index in ROTATION.order(urls.len()) {
        let node = node_address(urls[index]);
        match connect_to(urls[index], connection_name).await {
            Ok(connection) => {
                ROTATION.connected(index);
                return Ok(Link {
                    connection,
                    node,
                    index,
                });
            }
            Err(e) => {
                if urls.len() > 1 {
                    warn!(%node, error = %e, "RabbitMQ node failed; trying the next");
                }
                failures.push((node, e));
            }
        }
    }
    match failures.len() {
        0 => Err(QueueError::NoUrl),
        1 => Err(failures.remove(0).1),
        _ => Err(QueueError::NoNode(failures)),
    }
}

/// `open`, for callers that need only the connection.
pub async fn connect(
    settings: &AmqpSettings,
    connection_name: &str,
) -> Result<Connection, QueueError> {
    Ok(open(settings, connection_name).await?.connection)
}

async fn connect_to(url: &str, connection_name: &str) -> Result<Connection, QueueError> {
    let props =
        ConnectionProperties::default().with_connection_name(connection_name.to_string().into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .map_err(|_| QueueError::ConnectTimeout)?
        .map_err(QueueError::from)
}

/// `host:port` of the brokers, for messages (the URLs themselves carry the password).
pub fn address(settings: &AmqpSettings) -> String {
    let nodes: Vec<String> = settings.urls().into_iter().map(node_address).collect();
    nodes.join(",")
}

fn node_address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "(unreadable amqp.url)".into(),
    }
}

/// Declares the work queue and its dead-letter queue (idempotent), as quorum queues. On a
/// cluster (`nodes` > 1) a queue missing is declared with one replica per node
/// (`x-quorum-initial-group-size`), and one that exists is left as it is: RabbitMQ refuses a
/// declaration whose arguments differ from the queue's (a queue made on one node, before the
/// cluster), and closes the channel.
pub async fn declare(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    nodes: usize,
) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = format!("{queue}.dead");
    let group = (nodes > 1).then_some(nodes);
    for (name, args) in [
        (dead.as_str(), quorum_args(None, group)),
        (queue, quorum_args(Some(&dead), group)),
    ] {
        if group.is_some() && exists(connection, name).await? {
            continue;
        }
        channel.queue_declare(name.into(), durable, args).await?;
    }
    Ok(())
}

/// Whether `queue` exists, asked on a channel of its own (a passive declaration of a missing
/// queue closes its channel).
async fn exists(connection: &Connection, queue: &str) -> Result<bool, QueueError> {
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = probe.close(200, "".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn quorum_args(dead_letter_to: Option<&str>, group: Option<usize>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(group) = group {
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongInt(i32::try_from(group).unwrap_or(i32::MAX)),
        );
    }
    if let Some(dead) = dead_letter_to {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.into()),
        );
    }
    args
}

/// Publishes ticket messages with confirms, reconnecting when the connection was lost.
pub struct Publisher {
    settings: AmqpSettings,
    connection_name: String,
    channel: Mutex<Option<(Link, Channel)>>,
}

impl Publisher {
    pub fn new(settings: AmqpSettings, connection_name: impl Into<String>) -> Publisher {
        Publisher {
            settings,
            connection_name: connection_name.into(),
            channel: Mutex::new(None),
        }
    }

    /// The open channel and its node, or a new one.
    async fn channel(&self) -> Result<(Channel, String), QueueError> {
        let mut slot = self.channel.lock().await;
        if let Some((link, ch)) = slot.as_ref() {
            if link.connection.status().connected() && ch.status().connected() {
                return Ok((ch.clone(), link.node.clone()));
            }
            if !link.connection.status().connected() {
                link.lost();
            }
        }
        *slot = None;
        let link = open(&self.settings, &self.connection_name).await?;
        let ch = on_node(&link, link.connection.create_channel().await)?;
        on_node(
            &link,
            ch.confirm_select(ConfirmSelectOptions::default()).await,
        )?;
        let nodes = self.settings.urls().len();
        on_node(
            &link,
            declare(&link.connection, &ch, &self.settings.queue, nodes).await,
        )?;
        let node = link.node.clone();
        *slot = Some((link, ch.clone()));
        Ok((ch, node))
    }

    /// Returns once RabbitMQ has confirmed the message is stored.
    pub async fn publish(&self, message: TicketMessage) -> Result<(), QueueError> {
        let (channel, node) = self.channel().await?;
        let payload = serde_json::to_vec(&message).expect("a ticket message always serialises");
        let at_node = |e: lapin::Error| QueueError::AtNode(node.clone(), Box::new(e.into()));
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                self.settings.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2) // persistent
                    .with_content_type("application/json".into()),
            )
            .await
            .map_err(at_node)?
            .await
            .map_err(at_node)?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            metrics::counter!(metrics_catalog::QUEUE_PUBLISH, "result" => "confirmed").increment(1);
            Ok(())
        } else {
            metrics::counter!(metrics_catalog::QUEUE_PUBLISH, "result" => "refused").increment(1);
            Err(QueueError::Nacked)
        }
    }

    /// Messages ready in the work queue (deliveries not yet acknowledged not counted).
    pub async fn queue_depth(&self) -> Result<u32, QueueError> {
        self.depth_of(&self.settings.queue).await
    }

    /// Messages in the dead-letter queue (`<queue>.dead`).
    pub async fn dead_letter_depth(&self) -> Result<u32, QueueError> {
        self.depth_of(&format!("{}.dead", self.settings.queue))
            .await
    }

    async fn depth_of(&self, queue: &str) -> Result<u32, QueueError> {
        let (channel, _) = self.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }

    /// True when a channel could be opened (used by readiness checks).
    pub async fn is_reachable(&self) -> bool {
        self.channel().await.is_ok()
    }
}

/// Opens a channel on the work queue with `prefetch` unacknowledged deliveries at most.
pub async fn channel(
    link: &Link,
    settings: &AmqpSettings,
    prefetch: u16,
) -> Result<Channel, QueueError> {
    let opened = async {
        let channel = link.connection.create_channel().await?;
        let nodes = settings.urls().len();
        declare(&link.connection, &channel, &settings.queue, nodes).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        Ok::<_, QueueError>(channel)
    };
    on_node(link, opened.await)
}

/// An error met on `link`'s node, named (on a cluster, which node failed matters).
fn on_node<T, E: Into<QueueError>>(link: &Link, result: Result<T, E>) -> Result<T, QueueError> {
    result.map_err(|e| QueueError::AtNode(link.node.clone(), Box::new(e.into())))
}

pub async fn start_consuming(
    channel: &Channel,
    queue: &str,
    consumer_tag: &str,
) -> Result<Consumer, QueueError> {
    Ok(channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Cancels the consumer and gives back any delivery that arrived before the cancel took
/// effect (RabbitMQ sends those before `cancel-ok`, so they are already buffered).
pub async fn stop_consuming(channel: &Channel, consumer_tag: &str, consumer: Option<Consumer>) {
    let Some(mut consumer) = consumer else { return };
    let _ = channel
        .basic_cancel(consumer_tag.into(), BasicCancelOptions::default())
        .await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
    {
        let _ = delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that accepts the connection and never answers (what a stalled handshake
    /// looks like from the client): `connect` gives up, so the caller's retry runs.
    #[tokio::test]
    async fn a_connection_that_never_completes_fails_in_bounded_time() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (socket, _) = silent.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(socket);
        });
        // Built as the configuration is read (the settings' own types).
        let settings: AmqpSettings = serde_json::from_value(serde_json::json!({
            "url": format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            "queue": "unused",
        }))
        .unwrap();
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            CONNECT_TIMEOUT + std::time::Duration::from_secs(5),
            connect(&settings, "test"),
        )
        .await
        .expect("connect never returned");
        assert!(
            matches!(result, Err(QueueError::ConnectTimeout)),
            "{:?}",
            result.err()
        );
        assert!(started.elapsed() < CONNECT_TIMEOUT + std::time::Duration::from_secs(2));
        held.abort();
    }

    #[test]
    fn nodes_are_tried_in_turn_from_the_process_offset() {
        let rotation = Rotation::starting_at(4);
        assert_eq!(
            rotation.order(3),
            [1, 2, 0],
            "pid 4 of 3 nodes starts at node 1"
        );
        assert_eq!(Rotation::starting_at(5).order(3), [2, 0, 1]);
        assert_eq!(rotation.order(1), [0], "one broker: always it");
        rotation.connected(2);
        assert_eq!(rotation.order(3), [2, 0, 1], "stays on the node it reached");
    }

    #[test]
    fn a_lost_connection_moves_to_the_next_node_once() {
        let rotation = Rotation::starting_at(0);
        rotation.connected(1);
        rotation.lost(1);
        assert_eq!(rotation.order(3), [2, 0, 1]);
        // The process's other connection to node 1 was lost with it: no second move.
        rotation.lost(1);
        assert_eq!(rotation.order(3), [2, 0, 1]);
        rotation.connected(2);
        rotation.lost(2);
        assert_eq!(
            rotation.order(3),
            [0, 1, 2],
            "past the last node, back to the first"
        );
    }

    fn cluster(urls: &[String]) -> AmqpSettings {
        serde_json::from_value(serde_json::json!({ "url": urls.join(","), "queue": "unused" }))
            .unwrap()
    }

    /// Two nodes that refuse connections: the error names both, and never the password.
    #[tokio::test]
    async fn when_no_node_answers_the_error_names_each() {
        let closed: Vec<u16> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            })
            .collect();
        let urls: Vec<String> = closed
            .iter()
            .map(|p| format!("amqp://pimage:s3cret-pw@127.0.0.1:{p}/%2f"))
            .collect();
        let settings = cluster(&urls);
        let err = open(&settings, "test")
            .await
            .err()
            .expect("no node answers");
        let text = err.to_string();
        assert!(
            matches!(err, QueueError::NoNode(ref each) if each.len() == 2),
            "{text}"
        );
        for p in &closed {
            assert!(text.contains(&format!("127.0.0.1:{p}: ")), "{text}");
        }
        assert!(!text.contains("s3cret"), "{text}");
        let both = format!("127.0.0.1:{},127.0.0.1:{}", closed[0], closed[1]);
        assert_eq!(address(&settings), both);
    }
}
