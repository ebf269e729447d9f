//! What must hold at the end: one Glance image per ticket, consumers named after the worker
//! containers, every worker's /metrics, Prometheus' targets and every dashboard query, and
//! nothing of the project left after `down -v`.

use super::stack::{wait_for, Stack};
use super::Steps;
use crate::process::{cmd, output};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::Duration;

fn get_json(url: &str, extra: &[&str]) -> Option<Value> {
    let mut c = cmd("curl", ["-sf"]);
    c.args(extra).arg(url);
    serde_json::from_str(&output(&mut c).ok()?).ok()
}

/// Prometheus finds all five workers and the API through compose's DNS: its active targets.
pub fn prometheus_targets(st: &Stack) -> Result<String> {
    let url = format!(
        "http://127.0.0.1:{}/api/v1/targets?state=active",
        st.ports.prometheus
    );
    let targets = || {
        get_json(&url, &[])
            .map(|v| {
                v["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let up = |job: &str| {
        targets()
            .iter()
            .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
            .count()
    };
    wait_for(90, "Prometheus scrapes 5 workers", || {
        up("pimage-worker") == 5
    })?;
    wait_for(60, "Prometheus scrapes the API", || up("pimage-api") == 1)?;
    let mut lines: Vec<String> = targets()
        .iter()
        .map(|t| {
            format!(
                "{} {} {}",
                str_of(&t["labels"]["job"]),
                str_of(&t["scrapeUrl"]),
                str_of(&t["health"])
            )
        })
        .collect();
    lines.sort();
    Ok(lines.join("\n"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

pub struct End {
    pub images: usize,
    pub sizes: String,
    pub consumers: String,
    pub queries: usize,
}

pub fn run(st: &Stack, steps: &mut Steps) -> Result<End> {
    let images = one_image_per_ticket(st)?;
    steps.step(format!("Glance: one image per ticket ({images})"));
    let consumers = consumers_are_the_workers(st)?;
    steps.step("management API: consumers named after the workers");
    for c in st.workers_running() {
        let ip = st.inspect(
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &c,
        );
        let m = output(&mut st.compose(&[
            "exec",
            "-T",
            "api",
            "curl",
            "-sf",
            &format!("http://{ip}:9101/metrics"),
        ]))
        .unwrap_or_default();
        if !m
            .lines()
            .any(|l| l.starts_with("pimage_upload_bytes_total"))
        {
            bail!(
                "no /metrics from {} at {ip}:9101",
                st.inspect("{{.Name}}", &c)
            );
        }
    }
    steps.step("every worker's /metrics over the compose network");
    let queries = dashboard_queries_have_data(st)?;
    steps.step(format!("every dashboard query returns data ({queries})"));
    let sizes = output(&mut cmd(
        "docker",
        [
            "image",
            "ls",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Size}}",
        ],
    ))?;
    let mut sizes: Vec<&str> = sizes
        .lines()
        .filter(|l| l.starts_with("local/debian") || l.starts_with("local/pimage-test"))
        .collect();
    sizes.sort();
    let members = cluster(st)?;
    steps.step(format!(
        "cluster profile: 3 RabbitMQ nodes, the queues on each ({members})"
    ));
    let _ = output(&mut st.compose(&["down", "-v", "--remove-orphans", "-t", "30"]));
    for kind in ["container", "volume", "network"] {
        let mut c = cmd(
            "docker",
            [
                kind,
                "ls",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", st.project),
            ],
        );
        if kind == "container" {
            c.arg("-a");
        }
        let left = output(&mut c)?;
        if !left.is_empty() {
            bail!("docker-compose down -v left {kind}s: {left}");
        }
    }
    steps.step("down -v: nothing left");
    Ok(End {
        images,
        sizes: sizes.join("\n"),
        consumers,
        queries,
    })
}

/// The `cluster` profile's two nodes join the running one, and both quorum queues (made
/// before they joined) get a replica on each: the queues' members.
fn cluster(st: &Stack) -> Result<String> {
    // From here on every compose call (down -v too) includes the profile's services.
    std::env::set_var("COMPOSE_PROFILES", "demo,monitoring,cluster");
    st.up(
        &["--no-deps", "rabbitmq-2", "rabbitmq-3"],
        "cluster profile up",
    )?;
    for node in ["rabbitmq-2", "rabbitmq-3"] {
        wait_for(180, &format!("{node} healthy (joined)"), || {
            st.all_healthy(node, 1)
        })?;
    }
    let mut seen = String::new();
    for queue in ["pimage.publish", "pimage.publish.dead"] {
        let url = format!(
            "http://127.0.0.1:{}/api/queues/%2f/{queue}",
            st.ports.management
        );
        let login = format!("pimage:{}", st.rabbit_password);
        wait_for(60, &format!("{queue} on the three nodes"), || {
            let mut members: Vec<String> = get_json(&url, &["-u", &login])
                .and_then(|q| q["members"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|m| str_of(m).to_string())
                .collect();
            members.sort();
            seen = format!("{queue}: {}", members.join(" "));
            members == ["rabbit@rabbitmq", "rabbit@rabbitmq-2", "rabbit@rabbitmq-3"]
        })
        .with_context(|| seen.clone())?;
    }
    Ok(seen)
}

/// Exactly one active image per ticket in the demo cloud's Glance, with the ticket's cloud
/// id: the number of images.
fn one_image_per_ticket(st: &Stack) -> Result<usize> {
    let auth = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"name":"Default"},"password":"demopass"}}},"scope":{"project":{"name":"demo","domain":{"name":"Default"}}}}}"#;
    let headers = output(&mut cmd(
        "curl",
        [
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/json",
            "-d",
            auth,
            &format!("http://127.0.0.1:{}/v3/auth/tokens", st.ports.keystone),
        ],
    ))?;
    let token = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-subject-token"))
                .map(|(_, v)| v.trim().to_string())
        })
        .context("no Keystone token from the demo cloud")?;
    let url = format!("http://127.0.0.1:{}/v2/images?limit=1000", st.ports.glance);
    let mut count = 0;
    let mut last = String::new();
    let matched = wait_for(
        120,
        "Glance holds exactly one active image per ticket, its cloud id",
        || {
            let Some(v) = get_json(&url, &["-H", &format!("X-Auth-Token: {token}")]) else {
                return false;
            };
            let mut glance: Vec<(String, String, String)> = v["images"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|i| !i["pimage_ticket"].is_null())
                        .map(|i| {
                            (
                                str_of(&i["pimage_ticket"]).to_string(),
                                str_of(&i["id"]).to_string(),
                                str_of(&i["status"]).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            glance.sort();
            let rows = st.psql("SELECT ticket_key::text || '|' || coalesce(cloud_id, '') FROM publish_tickets ORDER BY 1").unwrap_or_default();
            let mut tickets: Vec<(String, String, String)> = rows
                .lines()
                .filter_map(|l| l.split_once('|'))
                .map(|(k, id)| (k.to_string(), id.to_string(), "active".to_string()))
                .collect();
            tickets.sort();
            count = glance.len();
            last = format!("Glance {glance:?}\ntickets {tickets:?}");
            glance == tickets
        },
    );
    matched.with_context(|| last.clone())?;
    Ok(count)
}

/// RabbitMQ's consumers are tagged pimage-worker@<container host name>:1, one per worker.
fn consumers_are_the_workers(st: &Stack) -> Result<String> {
    let mut expected = Vec::new();
    let mut described = Vec::new();
    for c in st.workers_running() {
        let tag = format!("pimage-worker@{}:1", st.inspect("{{.Config.Hostname}}", &c));
        described.push(format!("{tag} {}", st.inspect("{{.Name}}", &c)));
        expected.push(tag);
    }
    expected.sort();
    let url = format!("http://127.0.0.1:{}/api/consumers", st.ports.management);
    let mut seen = Vec::new();
    wait_for(30, "consumers = the worker containers", || {
        seen = get_json(&url, &["-u", &format!("pimage:{}", st.rabbit_password)])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|c| str_of(&c["consumer_tag"]).to_string())
            .collect();
        seen.sort();
        seen == expected
    })
    .with_context(|| format!("consumers {seen:?}, workers {expected:?}"))?;
    Ok(described.join("\n"))
}

/// Every query of the Grafana dashboard returns data from Prometheus: how many.
fn dashboard_queries_have_data(st: &Stack) -> Result<usize> {
    std::thread::sleep(Duration::from_secs(15)); // a scrape after the last uploads
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("docs/grafana-dashboard.json")?)?;
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    let url = format!("http://127.0.0.1:{}/api/v1/query", st.ports.prometheus);
    for q in &queries {
        wait_for(60, &format!("dashboard query returns data: {q}"), || {
            get_json(&url, &["-G", "--data-urlencode", &format!("query={q}")]).is_some_and(|v| {
                v["status"] == "success"
                    && v["data"]["result"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
            })
        })?;
    }
    Ok(queries.len())
}

/// Every "expr" string anywhere in the document (jq's `.. | objects | .expr`).
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(e) = m.get("expr").and_then(Value::as_str) {
                out.push(e.to_string());
            }
            m.values().for_each(|x| collect_exprs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_every_dashboard_query() {
        let v = serde_json::json!({"panels": [{"targets": [{"expr": "a"}, {"expr": "b"}]}, {"expr": "c", "x": [1]}]});
        let mut out = Vec::new();
        super::collect_exprs(&v, &mut out);
        assert_eq!(out, ["a", "b", "c"]);
    }
}
