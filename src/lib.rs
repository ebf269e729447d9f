//! pimage: publishes UForge machine images to OpenStack clouds, as an asynchronous job worker.
//!
//! A publish call flows API → Postgres → RabbitMQ → worker → Keystone + Glance:
//!
//! | module        | concern                                                                  |
//! |---------------|--------------------------------------------------------------------------|
//! | [`cli`]       | the `pimage` subcommands                                                 |
//! | [`api`]       | the HTTP API (axum): router and state, in sub-modules:                   |
//! | · `routes`    | route handlers: check the request, call the store, answer a document     |
//! | · `auth`      | who is calling (Basic, API keys), the login lock, remembered logins      |
//! |               | (one check per credential); signatures bound to a method, writes once    |
//! | · `publish_request` | the body of `POST …/pimages`, from XML or JSON, checked            |
//! | · `wire`      | what the API sends: one struct per schema type                           |
//! | · `xml`       | XML on the wire: writing documents, reading bodies safely               |
//! | · `openapi`   | the OpenAPI document, generated from the handlers and wire types         |
//! | · `error`     | `ApiError`, its `status_code()`, the `uforgeError` body                  |
//! | · `image_link` | signed, expiring links through which Glance fetches a file (web-download) |
//! | · `observe`   | a span, a request id and metrics per request                             |
//! | · `events`    | Server-Sent Events: a client's `…/pimages/{pitid}/events`, the console feed |
//! | · `limits`    | per user: publishes per minute, open event streams and their access re-check |
//! | · `console`   | the operator console `/console`: sessions, CSRF, pages (maud), assets    |
//! | [`worker`]    | the upload slots and the consume loop, in sub-modules:                   |
//! | · `job`       | one claimed ticket, from claim to recorded end (or handed back)          |
//! | · `attempt`   | one attempt (login, earlier images, create, upload) and `AttemptError`   |
//! | · `convert`   | the bytes sent: the file, or a copy converted for the cloud's profile    |
//! |               | (qemu-img confined by Landlock and prlimit; scratch space reserved)      |
//! | · `upload`    | the file streamed to Glance, stalls cut, the stored checksum checked     |
//! | · `progress`  | progress values and their writes (heartbeats that report cancels)        |
//! | · `lease`     | the lease keeper                                                         |
//! | · `cancel`    | cancels by Postgres LISTEN/NOTIFY (`CancelWatch`)                        |
//! | · `heartbeat` | the worker's own heartbeat (host, pid, version, slots), for the console  |
//! | · `slots`     | the fairest claim under per-cloud limits, and the wait for a free slot   |
//! | [`rescuer`]   | re-queues tickets whose worker died (expired lease); gives up on poison; |
//! |               | forgets stale failed-login counts                                        |
//! | [`reconciler`] | deletes images left by tickets that ended without them (cleanups and    |
//! |               | the orphan sweep), until Glance confirms                                 |
//! | [`live`]      | one LISTEN per process fanned out to every viewer (ticket events, workers) |
//! | · `statuses`  | the status cache: statuses in memory, dropped as NOTIFY announces changes |
//! | [`outbox`]    | hands stored tickets to RabbitMQ (in batches, one, or later by the relay) |
//! | [`health`]    | `/healthz`, `/readyz`, `/metrics` (API and worker)                       |
//! |               | `serve_http`: all listeners: header, idle, body timeouts, connection cap  |
//! | [`queue`]     | RabbitMQ: queue declaration, confirmed publishing, consuming             |
//! | [`cloud`]     | the OpenStack account and the one HTTP client, in sub-modules:           |
//! | · `keystone`  | Keystone v3 login, wrong password told from unreachable project          |
//! | · `catalog`   | Glance from the Keystone catalog: public interface, region, ambiguity    |
//! | · `glance`    | Glance v2 calls: create, upload, read back, delete, find by ticket       |
//! | · `import`    | Glance's interoperable import: methods offered, stage, glance-direct    |
//! | · `quota`     | quota refusals made permanent; the pre-check on `/v2/info/usage`         |
//! | · `tls`       | CA files trusted beside the system roots; certificate errors in words    |
//! | · `profile`   | per-cloud profiles by host pattern, upload limits; `pimage config --for-url` |
//! | · `session`   | Keystone tokens renewed before expiry; `Sessions`, kept per account      |
//! | · `address_policy` | the SSRF guard: URLs, resolved addresses, redirects                 |
//! | · `answer`    | every call bounded: call timeout, answer sizes read, no decompression   |
//! | · `error`     | `CloudError`, `Cause`, the transient/permanent classifier               |
//! | [`store`]     | Postgres, the source of truth; all the SQL, in sub-modules:              |
//! | · `tickets`   | the ticket row: create, read, list, delete                               |
//! | · `claims`    | a worker's hold: claim, lease, progress, cloud id, finish, release       |
//! | · `attempts`  | one row per try of a ticket                                              |
//! | · `events`    | the ticket event log (live updates, Last-Event-ID, the bytes chart)      |
//! | · `console`   | console sessions, the filtered ticket list (keyset), Overview figures    |
//! | · `workers`   | worker heartbeats and the leases they hold                               |
//! | · `cancel`    | a user's cancel (and its NOTIFY)                                         |
//! | · `rescue`    | tickets put back in the queue (lost workers and messages, retry)         |
//! | · `outbox`    | tickets still to be handed to RabbitMQ                                   |
//! | · `cleanups`  | images a ticket may have left in the cloud, and kept images              |
//! | · `users`     | users, entitlements, API keys                                            |
//! | · `login_lock` | failed-login windows and locks                                          |
//! | · `sealed`    | re-sealing stored secrets under the current key                          |
//! | · `images`    | scanned instances, scans and images                                      |
//! | [`retry`]     | backoff with full jitter, attempts and deadline, for transient failures  |
//! | [`telemetry`] | logging and shutdown signals                                             |
//! | [`image_files`] | image files on disk: format check, checksums, shared directory        |
//! | · `inspect`   | what a file really is, from its headers: one format, self-contained, its |
//! |               | virtual size (as OpenStack's format inspector)                           |
//! | [`config`]    | typed settings (all of them) from `config/` and `PIMAGE__…` variables    |
//! | [`secrets`]   | `Secret`, cloud-password encryption, user-password hashing               |
//! | [`metrics_catalog`] | every exported metric: name, kind, unit, HELP text (a leaf)        |
//! | [`printable`] | which characters a terminal shows as themselves; escapes for the rest    |
//!
//! Dependencies point one way, down this table: each module may use only the ones
//! `tests/architecture.rs` allows it (docs/ARCHITECTURE.md, "Who may call whom"); `config`
//! uses nothing but `secrets`.
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
pub mod live;
pub mod metrics_catalog;
pub mod outbox;
pub mod printable;
pub mod queue;
pub mod reconciler;
pub mod rescuer;
pub mod retry;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod worker;
