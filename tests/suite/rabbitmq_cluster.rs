//! RabbitMQ as a three-node cluster: a node stopped during uploads.
//!
//! A native cluster of three nodes (`scripts/rabbitmq-cluster`, beside the machine's own node)
//! serves an API and two worker processes that know the three URLs. While uploads run, the
//! node that holds the most worker connections is killed; the workers go on through the other
//! two, the API publishes through them, and every ticket is published exactly once.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fault_proxy::FaultProxy;
use common::processes::{free_port, sigterm_and_wait, wait_for_api, Env};
use common::{publish_json_via, DemoCloud, PASSWORD};
use sqlx::PgPool;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster");
/// Ports and names of this test's cluster: not the script's defaults (a developer's cluster)
/// nor the machine's node (5672, 25672).
const AMQP_PORT: u16 = 5711;
const DIST_PORT: u16 = 25711;
const NAME: &str = "pimage-rmqtest";

/// The test's cluster: started by the script, torn down (nodes stopped, state deleted) when
/// dropped, also when the test fails.
struct RabbitCluster {
    dir: std::path::PathBuf,
}

impl RabbitCluster {
    /// A fresh cluster: what a failed earlier run left is torn down first.
    async fn up() -> RabbitCluster {
        let dir = std::env::temp_dir().join("pimage-rabbitmq-cluster-test");
        let cluster = RabbitCluster { dir };
        cluster.script(&["down", "--purge"]).await;
        cluster.script(&["up"]).await;
        cluster
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(SCRIPT);
        cmd.args(args)
            .env("PIMAGE_RMQ_CLUSTER_DIR", &self.dir)
            .env("PIMAGE_RMQ_CLUSTER_PORT", AMQP_PORT.to_string())
            .env("PIMAGE_RMQ_CLUSTER_DIST_PORT", DIST_PORT.to_string())
            .env("PIMAGE_RMQ_CLUSTER_NAME", NAME);
        cmd
    }

    /// Runs the script (off the runtime's threads); its stdout, or the test fails with its
    /// output (rabbitmq-server missing, a port taken, a node that did not start).
    async fn script(&self, args: &[&str]) -> String {
        let mut cmd = self.command(args);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/rabbitmq-cluster {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `rabbitmqctl` on node `node`, tab-separated rows without headers.
    async fn ctl_rows(&self, node: usize, args: &[&str]) -> Vec<Vec<String>> {
        let node = node.to_string();
        let mut all = vec!["ctl", &node, "-q", "--no-table-headers"];
        all.extend_from_slice(args);
        let out = self.script(&all).await;
        out.lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    async fn urls(&self) -> String {
        let line = self.script(&["env"]).await;
        line.trim()
            .strip_prefix("export PIMAGE__AMQP__URL=")
            .unwrap()
            .to_string()
    }

    /// Each connection's name (as pimage names it: `pimage-worker@host:pid`, `pimage-api`…)
    /// and its node (1-3).
    async fn connections(&self) -> Vec<(String, usize)> {
        self.connections_on(1).await
    }

    /// `connections`, asked on `node`.
    async fn connections_on(&self, node: usize) -> Vec<(String, usize)> {
        // The name is in the client properties: [{"connection_name","pimage-worker@…"},…]
        let rows = self
            .ctl_rows(node, &["list_connections", "client_properties", "port"])
            .await;
        rows.iter()
            .filter_map(|row| {
                let name = row[0].split(r#"{"connection_name",""#).nth(1)?;
                let name = name.split('"').next()?;
                let port: u16 = row[1].parse().ok()?;
                Some((name.to_string(), usize::from(port - AMQP_PORT) + 1))
            })
            .collect()
    }

    /// Each worker's consumer connection: the worker's pid and its node.
    async fn worker_nodes(&self) -> (HashMap<u32, usize>, Vec<(String, usize)>) {
        let all = self.connections().await;
        let workers = all
            .iter()
            .filter_map(|(name, node)| {
                let pid = name.strip_prefix("pimage-worker@")?.rsplit_once(':')?.1;
                Some((pid.parse().ok()?, *node))
            })
            .collect();
        (workers, all)
    }

    /// The queue's leader node (1-3), its members' and its online members' node numbers
    /// (sorted), asked on `node`.
    async fn quorum(&self, node: usize, queue: &str) -> (usize, Vec<usize>, Vec<usize>) {
        let rows = self
            .ctl_rows(
                node,
                &["list_queues", "name", "leader", "members", "online"],
            )
            .await;
        let row = rows
            .iter()
            .find(|r| r[0] == queue)
            .unwrap_or_else(|| panic!("{queue} in {rows:?}"));
        let number = |node: &str| -> usize {
            let n = node.trim().strip_prefix(NAME).unwrap();
            n.split('@').next().unwrap().parse().unwrap()
        };
        let numbers = |list: &str| -> Vec<usize> {
            let mut all: Vec<usize> = list
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(number)
                .collect();
            all.sort();
            all
        };
        (number(&row[1]), numbers(&row[2]), numbers(&row[3]))
    }

    /// Waits until the queue's three members are online (a node back has rejoined).
    async fn wait_all_online(&self, queue: &str) {
        let started = Instant::now();
        loop {
            let (_, _, online) = self.quorum(1, queue).await;
            if online == [1, 2, 3] {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "online members: {online:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let ok = self.command(&["down", "--purge"]).status();
        if !std::thread::panicking() {
            assert!(ok.unwrap().success(), "scripts/rabbitmq-cluster down");
        }
    }
}

/// The API and the workers, killed when dropped (a failed test leaves none running).
struct Processes {
    api: Option<Child>,
    workers: Vec<Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.api.iter_mut().chain(self.workers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn publish(base: &str, image: &str, body: String) -> i64 {
    common::processes::publish_at(base, image, body).await.db_id
}

/// Waits until every ticket has ended; their states counted.
async fn wait_all_final(pool: &PgPool, within: Duration) -> HashMap<String, i64> {
    let started = Instant::now();
    loop {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM publish_tickets GROUP BY state")
                .fetch_all(pool)
                .await
                .unwrap();
        let states: HashMap<String, i64> = rows.into_iter().collect();
        if states
            .keys()
            .all(|s| ["complete", "error", "cancelled"].contains(&s.as_str()))
        {
            return states;
        }
        assert!(started.elapsed() < within, "not all final: {states:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until both workers' consumers are connected (a "worker connected" line each).
async fn wait_workers_connected(env: &Env) {
    let started = Instant::now();
    for w in 0..2 {
        let log = env.dir.join(format!("worker-{w}.log"));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("worker connected")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "worker {w} connects"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const TICKETS_BEFORE: usize = 10;
const TICKETS_AFTER: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_during_uploads_loses_and_duplicates_no_ticket() {
    let started = Instant::now();
    let rabbit = RabbitCluster::up().await;
    let cluster_up = started.elapsed();
    let mut env = Env::new().await;
    env.set("PIMAGE__AMQP__URL", rabbit.urls().await);
    env.set("PIMAGE__WORKER__CONCURRENCY", 2);
    env.set("PIMAGE__WORKER__RESCUE_INTERVAL", "1s");
    env.run_ok(&["migrate"]);
    let out = env
        .command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/api");
    let mut processes = Processes {
        api: Some(env.spawn(&["api"], Some(port), "api")),
        workers: (0..2)
            .map(|w| env.spawn(&["worker"], None, &format!("worker-{w}")))
            .collect(),
    };
    wait_for_api(&base).await;
    let pool = PgPool::connect(&env.database_url()).await.unwrap();

    // 8 MiB at 2 MiB/s: each upload lasts 4 s or more, two at a time in the lab Glance: the
    // tickets published first still run or wait when the node stops.
    let glance = common::glance_url();
    let proxy = FaultProxy::start(glance.trim_start_matches("http://")).await;
    proxy.throttle(2 << 20);
    let file = env.dir.join("cluster.raw");
    let content: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&file, content).unwrap();
    let image = env
        .run_ok(&[
            "images",
            "register",
            "--user",
            "alice",
            "--in-place",
            "--file",
            file.to_str().unwrap(),
            "--format",
            "raw",
        ])
        .trim()
        .to_string();
    let body = |n: usize| {
        publish_json_via(
            &format!("cluster {n}"),
            "demo",
            "demopass",
            "demo",
            &proxy.url,
        )
    };
    let mut ids = vec![];
    for n in 0..TICKETS_BEFORE {
        ids.push(publish(&base, &image, body(n)).await);
    }
    wait_workers_connected(&env).await;
    let wait = Instant::now();
    while proxy.uploads_in_flight() == 0 {
        assert!(wait.elapsed() < Duration::from_secs(60), "uploads start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The queue is replicated on the three nodes (declared with one replica per node).
    let (leader, members, _) = rabbit.quorum(1, &env.queue).await;
    assert_eq!(members, [1, 2, 3], "the quorum queue's members");
    // The victim: the node holding the most worker connections; on a tie the leader's, then
    // the API's.
    let (worker_nodes, connections) = rabbit.worker_nodes().await;
    let api_node = connections
        .iter()
        .find(|(name, _)| name == "pimage-api")
        .map(|(_, node)| *node);
    let pids: Vec<u32> = processes.workers.iter().map(Child::id).collect();
    for pid in &pids {
        assert!(
            worker_nodes.contains_key(pid),
            "worker {pid} connected: {worker_nodes:?}"
        );
    }
    let on = |node: usize| pids.iter().filter(|p| worker_nodes[*p] == node).count();
    let victim = (1..=3)
        .max_by_key(|&n| (on(n), n == leader, Some(n) == api_node))
        .unwrap();
    let moved: Vec<usize> = (0..2)
        .filter(|&w| worker_nodes[&pids[w]] == victim)
        .collect();
    let logged_before: Vec<usize> = (0..2).map(|w| connected_lines(&env, w).len()).collect();
    let stopped_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let claimed_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM publish_tickets WHERE attempts > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    let uploads_at_stop = proxy.uploads_in_flight();
    let queued_at_stop: i64 =
        sqlx::query_scalar("SELECT count(*) FROM publish_tickets WHERE state = 'queued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let stop = Instant::now();
    rabbit
        .script(&["stop-node", &victim.to_string(), "--kill"])
        .await;

    // Publishes go on through the API (its publisher moves on if it was on the victim).
    for n in TICKETS_BEFORE..TICKETS_BEFORE + TICKETS_AFTER {
        ids.push(publish(&base, &image, body(n)).await);
    }
    let states = wait_all_final(&pool, Duration::from_secs(240)).await;
    let all_final = stop.elapsed();
    let tickets = (TICKETS_BEFORE + TICKETS_AFTER) as i64;
    assert_eq!(states.get("complete"), Some(&tickets), "{states:?}");
    let (new_leader, _, _) = rabbit.quorum(victim % 3 + 1, &env.queue).await;
    assert_ne!(new_leader, victim, "a surviving node leads the queue");

    check_each_ticket_once(&pool, &ids).await;
    check_consumed_after_the_stop(
        &env,
        &pool,
        &pids,
        &moved,
        &logged_before,
        victim,
        stopped_at,
    )
    .await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "every ticket handed to RabbitMQ");
    for child in processes.api.iter_mut().chain(processes.workers.iter_mut()) {
        assert_eq!(child.try_wait().unwrap(), None, "no process exited");
    }
    let claimed_after = tickets - claimed_before;

    // The node comes back and rejoins: the queue's three members are online again.
    let restart = Instant::now();
    rabbit.script(&["start-node", &victim.to_string()]).await;
    rabbit.wait_all_online(&env.queue).await;
    let rejoined = restart.elapsed();
    rabbit.script(&["status"]).await;
    let (api_killed, api_after) =
        kill_the_apis_node(&rabbit, &env, &pool, &base, &image, &body).await;
    println!(
        "cluster figures: cluster up in {:.1} s; {tickets} tickets ({TICKETS_BEFORE} before the \
         stop, {TICKETS_AFTER} after); node {victim} killed (leader was node {leader}, now \
         node {new_leader}) with {} of 2 workers on it (the API's publisher on node {}), {uploads_at_stop} uploads running and \
         {queued_at_stop} tickets queued; \
         {claimed_after} tickets claimed after the stop; all complete {:.1} s after the stop; \
         node back in the cluster in {:.1} s; then the API's node {api_killed} killed: the API \
         moved to node {api_after}, {API_TICKETS} more tickets complete; test {:.1} s",
        cluster_up.as_secs_f64(),
        moved.len(),
        api_node.map_or("-".into(), |n| n.to_string()),
        all_final.as_secs_f64(),
        rejoined.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let workers = std::mem::take(&mut processes.workers);
    for w in workers {
        sigterm_and_wait(w, "pimage worker", Duration::from_secs(30)).await;
    }
    sigterm_and_wait(
        processes.api.take().unwrap(),
        "pimage api",
        Duration::from_secs(30),
    )
    .await;
    pool.close().await;
    env.drop_all().await;
    drop(rabbit);
}

const API_TICKETS: usize = 4;

/// Kills the node of the API's publisher (the cluster whole again), publishes through the
/// API: the tickets complete, each once, and the API's publisher is on another node. Then
/// starts the node again. Returns the node killed and the API's new one.
async fn kill_the_apis_node(
    rabbit: &RabbitCluster,
    env: &Env,
    pool: &PgPool,
    base: &str,
    image: &str,
    body: &dyn Fn(usize) -> String,
) -> (usize, usize) {
    let api_node = |connections: &[(String, usize)]| {
        connections
            .iter()
            .find(|(name, _)| name == "pimage-api")
            .map(|(_, node)| *node)
    };
    let (_, connections) = rabbit.worker_nodes().await;
    let killed = api_node(&connections).expect("the API's publisher is connected");
    rabbit
        .script(&["stop-node", &killed.to_string(), "--kill"])
        .await;
    let mut ids = vec![];
    for n in 0..API_TICKETS {
        ids.push(publish(base, image, body(100 + n)).await);
    }
    let states = wait_all_final(pool, Duration::from_secs(120)).await;
    let all = (TICKETS_BEFORE + TICKETS_AFTER + API_TICKETS) as i64;
    assert_eq!(states.get("complete"), Some(&all), "{states:?}");
    check_each_ticket_once(pool, &ids).await;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0, "every ticket handed to RabbitMQ");
    let ask = if killed == 1 { 2 } else { 1 };
    let now = rabbit.connections_on(ask).await;
    let moved = api_node(&now).expect("the API's publisher connected again");
    assert_ne!(moved, killed, "the API's publisher moved: {now:?}");
    rabbit.script(&["start-node", &killed.to_string()]).await;
    rabbit.wait_all_online(&env.queue).await;
    (killed, moved)
}

/// The "worker connected" lines of worker `w`'s log.
fn connected_lines(env: &Env, w: usize) -> Vec<String> {
    let log = std::fs::read_to_string(env.dir.join(format!("worker-{w}.log"))).unwrap();
    log.lines()
        .filter(|l| l.contains("worker connected"))
        .map(str::to_string)
        .collect()
}

/// Each ticket was claimed once, published once (a transient failure of the lab Glance is
/// retried under the same claim) and has exactly one image in Glance, active, the one it
/// names (then deleted).
async fn check_each_ticket_once(pool: &PgPool, ids: &[i64]) {
    let cloud = DemoCloud::login().await;
    for id in ids {
        let (key, cloud_id, claims, published): (uuid::Uuid, Option<String>, i32, i64) =
            sqlx::query_as(
                "SELECT t.ticket_key, t.cloud_id, t.attempts, (SELECT count(*) FROM ticket_attempts a
                 WHERE a.ticket_id = t.id AND a.outcome = 'published')
                 FROM publish_tickets t WHERE t.id = $1",
            )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (claims, published),
            (1, 1),
            "ticket {id} claimed and published once"
        );
        let images = cloud.images_of_ticket(&key.to_string()).await;
        let named = cloud_id.expect("a complete ticket names its image");
        let found: Vec<&str> = images.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(
            found,
            [named.as_str()],
            "ticket {id}: exactly its one image"
        );
        assert_eq!(images[0]["status"], "active", "ticket {id}");
        cloud.delete(&named).await;
    }
}

/// The workers that were on the stopped node connected to another one, and claimed tickets
/// (each claim follows a delivery) after the stop.
async fn check_consumed_after_the_stop(
    env: &Env,
    pool: &PgPool,
    pids: &[u32],
    moved: &[usize],
    logged_before: &[usize],
    victim: usize,
    stopped_at: chrono::DateTime<chrono::Utc>,
) {
    assert!(!moved.is_empty(), "a worker was on the stopped node");
    let victim_node = format!("node=127.0.0.1:{}", AMQP_PORT + victim as u16 - 1);
    for &w in moved {
        let lines = connected_lines(env, w);
        let after = &lines[logged_before[w]..];
        assert!(
            !after.is_empty() && after.iter().all(|l| !l.contains(&victim_node)),
            "worker {w} connected to another node after the stop: {after:?}"
        );
        // A claim's first try starts it (a retry is a later row under the same token).
        let claims: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT min(started_at) AS claimed FROM ticket_attempts
               WHERE worker LIKE $1 GROUP BY ticket_id, fencing_token) c WHERE claimed > $2",
        )
        .bind(format!("%:{}", pids[w]))
        .bind(stopped_at)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(claims > 0, "worker {w} consumed after the stop");
    }
}
