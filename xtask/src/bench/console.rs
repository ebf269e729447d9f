//! The console's page load times with BENCH_CONSOLE_TICKETS seeded tickets: median and
//! slowest of 20 loads each (the HTML as served; assets are cached by a browser).

use super::{pimage::DB, pimage::PORT, Knobs, Pimage};
use crate::process::{cmd, output};
use crate::report::{Report, Section};
use crate::stats::median;
use anyhow::{Context, Result};
use serde_json::json;

pub fn run(p: &mut Pimage, k: &Knobs, r: &mut Report) -> Result<()> {
    let n = k.console_tickets;
    let base = format!("http://127.0.0.1:{PORT}");
    let jar = p.work().join("console.jar").to_string_lossy().to_string();
    super::say(&format!("console: seeding {n} tickets"));
    p.fresh_db()?;
    p.add_user("benchadmin", true)?;
    p.make_image(1, "bench")?;
    p.psql(
        DB,
        &format!(
            "
INSERT INTO users (login, password_hash) SELECT 'user' || u, 'x' FROM generate_series(1, 20) u;
INSERT INTO publish_tickets (image_id, user_id, display_name, public_image, keystone_url,
    keystone_version, keystone_domain, keystone_project, cloud_login, cloud_password_enc,
    state, message, percentage, bytes_total, created_at, started_at, finished_at)
SELECT 1, (SELECT id FROM users WHERE login = 'user' || (1 + g % 20)), 'seeded-' || g, false,
    'http://cloud-' || (g % 5) || ':5000/v3', 'v3', 'Default', 'demo', 'demo', '\\x00'::bytea,
    (ARRAY['complete','complete','complete','error','cancelled','queued','running'])[1 + g % 7],
    'seeded', 100, 1048576, now() - (({n} - g) || ' seconds')::interval,
    now() - (({n} - g) || ' seconds')::interval, now() - (({n} - g) || ' seconds')::interval
  FROM generate_series(1, {n}) g;
ANALYZE;"
        ),
    )?;
    p.start_api()?;
    let login = output(&mut cmd(
        "curl",
        ["-sf", "-c", &jar, &format!("{base}/console/login")],
    ))?;
    let csrf = login
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no csrf field on the login page")?;
    output(&mut cmd(
        "curl",
        [
            "-sf",
            "-o",
            "/dev/null",
            "-b",
            &jar,
            "-c",
            &jar,
            "-d",
            "login=benchadmin",
            "-d",
            "password=benchpass",
            "-d",
            &format!("csrf={csrf}"),
            &format!("{base}/console/login"),
        ],
    ))?;
    let id = p.psql(
        DB,
        &format!(
            "SELECT id FROM publish_tickets ORDER BY id LIMIT 1 OFFSET {}",
            n / 2
        ),
    )?;
    let pages = [
        "/console".to_string(),
        "/console/tickets".into(),
        format!("/console/tickets?before={}", n / 2),
        "/console/tickets?state=cancelled".into(),
        "/console/tickets?user=user7".into(),
        "/console/tickets?cloud=http://cloud-3:5000/v3&state=error".into(),
        "/console/tickets?image=1&from=2020-01-01".into(),
        format!("/console/tickets/{id}"),
        "/console/workers".into(),
    ];
    let mut s = Section::new(
        format!("Console pages, {n} tickets"),
        &["page", "median", "slowest of 20"],
    );
    let mut figures = Vec::new();
    for page in &pages {
        let mut ms = Vec::new();
        for _ in 0..20 {
            let t = output(&mut cmd(
                "curl",
                [
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-b",
                    &jar,
                    "-w",
                    "%{time_total}",
                    &format!("{base}{page}"),
                ],
            ))?;
            ms.push(t.parse::<f64>()? * 1000.0);
        }
        let slowest = ms.iter().copied().fold(0.0, f64::max);
        s.rows.push(vec![
            format!("`{page}`"),
            format!("{:.1} ms", median(&ms)),
            format!("{slowest:.1} ms"),
        ]);
        figures.push(
            json!({"page": page, "median_ms": median(&ms), "slowest_ms": slowest, "loads_ms": ms}),
        );
    }
    s.figures = json!({"tickets": n, "pages": figures});
    r.add(s);
    p.stop_all();
    Ok(())
}
