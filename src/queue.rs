//! RabbitMQ: the hand-off of tickets from the API to the workers.
//!
//! One durable quorum queue (`amqp.queue`) carries `{"ticketId": N}` messages, persistent
//! and publisher-confirmed. Messages that keep failing are dead-lettered to `<queue>.dead`
//! after `DELIVERY_LIMIT` deliveries. A message only says "look at ticket N": Postgres holds
//! the ticket, so a duplicate or stale message is harmless (the claim refuses it).

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

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
}

/// How long a connection may take to open. RabbitMQ closes a handshake that stalls for 10 s
/// (`handshake_timeout`), and lapin's connect then never returned: a worker whose first
/// connection stalled (its runtime busy) waited forever, consuming nothing.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(12);

/// Opens a connection whose name shows in the management UI, or fails within
/// `CONNECT_TIMEOUT` (callers retry).
pub async fn connect(
    settings: &AmqpSettings,
    connection_name: &str,
) -> Result<Connection, QueueError> {
    let props =
        ConnectionProperties::default().with_connection_name(connection_name.to_string().into());
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(settings.url.expose(), props),
    )
    .await
    .map_err(|_| QueueError::ConnectTimeout)?
    .map_err(QueueError::from)
}

/// `host:port` of the broker, for messages (the URL itself carries the password).
pub fn address(settings: &AmqpSettings) -> String {
    match settings.url.expose().parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "(unreadable amqp.url)".into(),
    }
}

/// Declares the work queue and its dead-letter queue (idempotent).
pub async fn declare(channel: &Channel, queue: &str) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = format!("{queue}.dead");
    channel
        .queue_declare(dead.as_str().into(), durable, quorum_args(None))
        .await?;
    channel
        .queue_declare(queue.into(), durable, quorum_args(Some(&dead)))
        .await?;
    Ok(())
}

fn quorum_args(dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
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
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(settings: AmqpSettings, connection_name: impl Into<String>) -> Publisher {
        Publisher {
            settings,
            connection_name: connection_name.into(),
            channel: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut slot = self.channel.lock().await;
        if let Some((conn, ch)) = slot.as_ref() {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        *slot = None;
        let conn = connect(&self.settings, &self.connection_name).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare(&ch, &self.settings.queue).await?;
        *slot = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Returns once RabbitMQ has confirmed the message is stored.
    pub async fn publish(&self, message: TicketMessage) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let payload = serde_json::to_vec(&message).expect("a ticket message always serialises");
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
            .await?
            .await?;
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
        let channel = self.channel().await?;
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
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<Channel, QueueError> {
    let channel = connection.create_channel().await?;
    declare(&channel, queue).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
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
}
