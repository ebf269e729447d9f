//! pimage: publishes UForge machine images to OpenStack clouds, as an asynchronous job worker.
//!
//! A publish call flows API → Postgres → RabbitMQ → worker → Keystone + Glance:
//!
//! | module        | concern                                                                  |
//! |---------------|--------------------------------------------------------------------------|
//! | [`api`]       | HTTP routes, auth (Basic, API keys, login lock), XML/JSON, OpenAPI doc   |
//! | [`store`]     | Postgres: users and credentials, images, tickets; all the SQL            |
//! | [`outbox`]    | hands stored tickets to RabbitMQ (at once, or later by the relay)        |
//! | [`queue`]     | RabbitMQ: queue declaration, confirmed publishing, consuming             |
//! | [`rescuer`]   | re-queues tickets whose worker died (expired lease); gives up on poison; |
//! |               | forgets stale failed-login counts                                        |
//! | [`worker`]    | claims tickets, uploads, writes progress, ends each ticket               |
//! | [`cloud`]     | Keystone v3 login, Glance v2 calls, transient failures, SSRF guard       |
//! | [`retry`]     | backoff with full jitter, attempts and deadline, for transient failures  |
//! | [`image_files`] | image files on disk: format check, checksums, shared directory        |
//! | [`secrets`]   | `Secret`, cloud-password encryption, user-password hashing               |
//! | [`health`]    | `/healthz`, `/readyz`, `/metrics` (API and worker)                        |
//! | [`config`]    | typed settings from `config/` and `PIMAGE__…` variables                  |
//! | [`telemetry`] | logging and shutdown signals                                             |
//! | [`printable`] | which characters a terminal shows as themselves; escapes for the rest    |
//! | [`cli`]       | the `pimage` subcommands                                                 |
//!
//! Dependencies point one way: `cli` → `api`/`worker` → `outbox`/`queue`/`cloud`/`store`
//! → `secrets`/`config`.
//!
//! Error types by layer: `store` returns `sqlx::Error`; `queue` `QueueError`; `cloud`
//! `CloudError` (a user-facing summary plus the cloud's detail); `api` maps everything to
//! `ApiError`; the worker turns failures into a ticket in `error`; `cli` uses `anyhow`.

pub mod api;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod health;
pub mod image_files;
pub mod outbox;
pub mod printable;
pub mod queue;
pub mod rescuer;
pub mod retry;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod worker;
