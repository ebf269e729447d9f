//! pimage: publishes UForge machine images to OpenStack clouds, as an asynchronous job worker.
//!
//! A publish call flows API → Postgres → RabbitMQ → worker → Keystone + Glance:
//!
//! | module        | concern                                                                  |
//! |---------------|--------------------------------------------------------------------------|
//! | [`cli`]       | the `pimage` subcommands, a file per area:                               |
//! | · `tickets`   | list, show; cancel, delete, retry (on the database, or `--api`)          |
//! | · `users`     | users and API keys                                                       |
//! | · `catalog`   | registering images; listing stored cloud accounts                        |
//! | · `secrets`   | re-sealing stored secrets under a new key                                |
//! | · `output`    | `-f` table, json, yaml or value, and `-c COLUMN`, as the openstack CLI   |
//! | · `remote`    | `--api URL`: ticket changes through the API as an administrator          |
//! | [`api`]       | the HTTP API (axum): router and state, in sub-modules:                   |
//! | · `routes`    | route handlers: state their inputs (extractors), call the store, answer  |
//! | · `admin`     | an administrator's ticket actions by id, one implementation for the      |
//! |               | console, the CLI and `/api/admin/tickets/{id}…`                          |
//! | · `catalog`   | handlers of what UForge clients read first: a user's images, scanned     |
//! |               | instances, a scan; deleting an image with no unfinished ticket           |
//! | · `accounts`  | stored cloud accounts (`…/accounts`, `…/targetplatforms`): the body, the |
//! |               | Keystone check before storing, the stored account a publish names        |
//! | · `extract`   | extractors: answer format, typed path and query, the caller allowed at   |
//! |               | `{uid}`, the owned image or ticket; refusals as `ApiError`               |
//! | · `params`    | path and query parameters: one struct parses and documents each route's  |
//! | · `auth`      | who is calling (Basic, API keys), the login lock, remembered logins      |
//! |               | (one check per credential); signatures bound to a method, writes once    |
//! | · `idempotency` | `Idempotency-Key` on a publish: the first ticket answered again, a key |
//! |               | reused with another request refused (reserved in `store::idempotency`)   |
//! | · `groups`    | publication groups (`…/pimagegroups`): one request, several targets as   |
//! |               | ordinary tickets; the aggregate status; cancel; targets added later      |
//! | · `group_request` | the body of `POST …/pimagegroups`: a policy and publish bodies      |
//! | · `filing`    | group commit: concurrent publishes stored as one statement and one commit, |
//! |               | each answered once its batch committed; a failed batch refiled one by one |
//! | · `publish_request` | the body of `POST …/pimages`, from XML or JSON, checked; its account |
//! |               | given with a password or a stored one named                              |
//! | · `wire`      | what the API sends: one struct per schema type                           |
//! | · `xml`       | XML on the wire: writing documents, reading bodies safely               |
//! | · `openapi`   | the OpenAPI document, generated from the handlers and wire types         |
//! | · `doc_parts` | what the document needs and no handler states: error answers, login      |
//! |               | schemes, the publish body's schema (a leaf: imports no handler)          |
//! | · `error`     | `ApiError`, its `status_code()`, the `uforgeError` body                  |
//! | · `image_link` | signed, expiring links through which Glance fetches a file (web-download) |
//! | · `observe`   | a span, a request id and metrics per request                             |
//! | · `events`    | Server-Sent Events: a client's `…/pimages/{pitid}/events`, the console feed |
//! | · `limits`    | per user: publishes per minute, open event streams and their access re-check |
//! | · `console`   | the operator console `/console`: sessions, CSRF, pages (maud), assets    |
//! | · `group_page` | the console's page of a publication group: aggregate, targets, cancel   |
//! | [`worker`]    | the worker and its `WorkerContext`, its life (background tasks, drain), in: |
//! | · `app`       | `WorkerApp::build(&Settings)`: the worker as the CLI and the tests make it |
//! | · `consume`   | the consume loop: a delivery per free slot, its claim, one shutdown point |
//! | · `job`       | `Job`, one claimed ticket as a value, from claim to recorded end (or     |
//! |               | handed back); its attempts retried, `AttemptState` passed from one on    |
//! | · `attempt`   | one attempt's steps as functions (login, earlier images, create, upload) |
//! |               | and `AttemptError`                                                       |
//! | · `convert`   | the bytes sent: the file, or a copy converted for the cloud's profile    |
//! |               | (qemu-img confined by Landlock and prlimit; scratch space reserved)      |
//! | · `copy`      | a group's target copying a sibling's image server-side (copy-image into  |
//! |               | its store, glance-download from another region), else an upload          |
//! | · `upload`    | the file streamed to Glance, stalls cut, the stored checksum checked     |
//! | · `progress`  | progress values and their writes (heartbeats that report cancels)        |
//! | · `lease`     | the lease keeper                                                         |
//! | · `cancel`    | cancels by Postgres NOTIFY (`CancelWatch`, a `live::Listener` subscriber) |
//! | · `heartbeat` | the worker's own heartbeat (host, pid, version, slots), for the console  |
//! | · `slots`     | the fairest claim under per-cloud limits, and the wait for a free slot   |
//! | [`maintenance`] | the relay, the rescuer and the reconciler: started and joined in one place |
//! | [`rescuer`]   | re-queues tickets whose worker died (expired lease); gives up on poison; |
//! |               | forgets stale failed-login counts; applies `[retention]`                 |
//! | [`reconciler`] | deletes images left by tickets that ended without them (cleanups and    |
//! |               | the orphan sweep), until Glance confirms                                 |
//! | [`live`]      | Postgres NOTIFY in the process; `Hub`: ticket events, workers to viewers |
//! | · `listener`  | ONE LISTEN connection per process; subscribers told "possibly missed"    |
//! | · `statuses`  | the status cache: statuses in memory, dropped as NOTIFY announces changes |
//! | [`outbox`]    | hands stored tickets to RabbitMQ (in batches, one, or later by the relay) |
//! | [`health`]    | `/healthz`, `/readyz`, `/metrics` (API and worker)                       |
//! |               | `serve_http`: all listeners: header, idle, body timeouts, connection cap  |
//! | [`queue`]     | RabbitMQ: a cluster's nodes tried in turn, queue declaration, confirmed  |
//! |               | publishing, consuming                                                    |
//! | [`cloud`]     | the OpenStack account and the one HTTP client, in sub-modules:           |
//! | · `keystone`  | `Keystone::login`: Keystone v3, wrong password told from unreachable project; |
//! |               | `Keystone::check_password`: one unscoped login (a stored account's check) |
//! | · `catalog`   | Glance from the Keystone catalog: public interface, region, ambiguity    |
//! | · `glance`    | `Glance`, one file per concern: the session and its requests; `images`   |
//! |               | (create, read back, delete, find by ticket); `upload`; `import` (methods |
//! |               | offered, stage, glance-direct); `quota` (refusals made permanent, the    |
//! |               | pre-check on `/v2/info/usage`)                                           |
//! |               | `copies`: server-side copies (copy-image, glance-download), stores       |
//! | · `tls`       | CA files trusted beside the system roots; certificate errors in words    |
//! | · `profile`   | per-cloud profiles by host pattern, upload limits; `pimage config --for-url` |
//! | · `session`   | Keystone tokens renewed before expiry; `Sessions`, kept per account      |
//! | · `address_policy` | the SSRF guard: URLs, resolved addresses, redirects                 |
//! | · `answer`    | every call bounded: call timeout, answer sizes read, no decompression   |
//! | · `error`     | `CloudError`, `Cause`, the transient/permanent classifier               |
//! | [`store`]     | Postgres, the source of truth; all the SQL, in sub-modules. Each state   |
//! |               | change writes its own event and cleanup rows (no trigger writes a row)   |
//! | · `tickets`   | the ticket row: create, read, list, delete                               |
//! | · `accounts`  | stored cloud accounts: create, read, list, delete unless a ticket uses one |
//! | · `claims`    | a worker's hold: claim, lease, progress, cloud id, finish, release       |
//! | · `attempts`  | one row per try of a ticket                                              |
//! | · `events`    | the ticket event log: recorded by each change, replayed, the bytes chart |
//! | · `console`   | console sessions, the filtered ticket list (keyset), Overview figures    |
//! | · `workers`   | worker heartbeats and the leases they hold                               |
//! | · `cancel`    | a user's cancel (and its NOTIFY)                                         |
//! | · `rescue`    | tickets put back in the queue (lost workers and messages, retry)         |
//! | · `outbox`    | tickets still to be handed to RabbitMQ                                   |
//! | · `cleanups`  | images a ticket left in the cloud (recorded as it ends), kept images     |
//! | · `users`     | users, entitlements, API keys                                            |
//! | · `login_lock` | failed-login windows and locks                                          |
//! | · `sealed`    | re-sealing stored secrets under the current key                          |
//! | · `images`    | scanned instances, scans and images                                      |
//! | · `idempotency` | publishes' Idempotency-Keys: reserved, settled with a ticket, released |
//! | · `groups`    | publication groups: filed whole; held copies released as their source    |
//! |               | ends; under `all`, one target failing ends (withdraws) the others        |
//! | · `retention` | finished tickets, events and done cleanups forgotten past `[retention]`  |
//! | [`retry`]     | `Backoff`, the one backoff policy (delays, n-th delay, full jitter); retries |
//! |               | of transient failures with attempts and a deadline                       |
//! | [`telemetry`] | logging and shutdown signals                                             |
//! | [`image_store`] | where image files are kept (`storage.url`): a directory or an S3 bucket |
//! |               | (`object_store`); put at registration, read in ranges, scratch copies    |
//! | [`image_files`] | image files on disk: format check, checksums                          |
//! | · `inspect`   | what a file really is, from its headers: one format, self-contained, its |
//! |               | virtual size (as OpenStack's format inspector)                           |
//! | [`config`]    | typed settings (all of them): compiled-in defaults, `config/`, `PIMAGE__…` |
//! |               | variables; durations as `Duration`, checked once at load                 |
//! | [`secrets`]   | `Secret`, cloud-password encryption, user-password hashing               |
//! | [`metrics_catalog`] | every exported metric: name, kind, unit, HELP text (a leaf)        |
//! | [`printable`] | which characters a terminal shows as themselves; escapes for the rest    |
//!
//! Dependencies point one way, down this table: each module may use only the ones
//! `tests/suite/architecture.rs` allows it (docs/ARCHITECTURE.md, "Who may call whom"); `config`
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
pub mod image_store;
pub mod live;
pub mod maintenance;
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
