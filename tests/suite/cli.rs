//! The `pimage` binary, run as plain processes: migrate, users add, images register, config,
//! and `api` + `worker` publishing an image into the real Glance, stopped with SIGTERM.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::processes::{
    free_port, get_json_at, sigterm_and_wait, wait_final_at, wait_for_api, Env, BIN,
};
use common::{publish_json, DemoCloud, PublishImage};

#[tokio::test]
async fn help_documents_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "migrate", "api", "worker", "users", "apikeys", "images", "config", "accounts",
    ] {
        assert!(help.contains(sub), "--help names {sub}: {help}");
    }
}

/// The defaults are compiled in: `pimage` needs no `config/` beside it.
#[tokio::test]
async fn pimage_runs_from_any_directory() {
    let elsewhere = std::env::temp_dir().join(format!("pimage-elsewhere-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("config")
            .current_dir(&elsewhere)
            .env_remove("PIMAGE_CONFIG_DIR")
            .env_remove("PIMAGE_ENV");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[(
        "PIMAGE__DATABASE__URL",
        "postgres://pimage:hunter2@db.example:5432/images",
    )]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `pimage config`: valid TOML, each value with its source, secrets masked, the
    // database's host and name visible.
    let parsed: toml::Table = toml::from_str(&shown).unwrap();
    assert_eq!(
        parsed["api"]["credential_cache"].as_str(),
        Some("1m"),
        "{shown}"
    );
    assert_eq!(
        parsed["cloud"]["allow_loopback"].as_bool(),
        Some(false),
        "{shown}"
    );
    assert!(
        shown.contains("credential_cache = \"1m\"  # default\n"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "url = \"postgres://pimage:***@db.example:5432/images\"  # PIMAGE__DATABASE__URL\n"
        ),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    // A duration out of range stops it at load, naming the key.
    let out = run(&[("PIMAGE__WORKER__RESCUE_INTERVAL", "0s")]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        error.contains("worker.rescue_interval = \"0s\" is out of range"),
        "{error}"
    );
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

#[tokio::test]
async fn admin_commands_set_up_users_and_images() {
    let env = Env::new().await;
    assert!(env.run_ok(&["migrate"]).contains("migrations applied"));
    let out = env
        .command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "pw-from-env")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migration_publish"));

    let file = env.dir.join("disk.raw");
    std::fs::write(&file, vec![7u8; 10_000]).unwrap();
    let uri = env.run_ok(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    let uri = uri.trim();
    assert!(
        uri.starts_with("users/alice/scannedinstances/")
            && uri.contains("/scans/")
            && uri.contains("/images/"),
        "prints the image URI: {uri}"
    );
    // The file was copied into the image directory.
    assert_eq!(std::fs::read_dir(env.dir.join("store")).unwrap().count(), 1);

    let bad = env.run(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a qcow2 file"));
    let nobody = env.run(&[
        "images",
        "register",
        "--user",
        "nobody",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no user 'nobody'"));

    // `config` masks secrets; without a key the service refuses to start.
    let config = env.run_ok(&["config"]);
    assert!(config.contains("[storage.s3]") && config.contains("***"));
    assert!(!config.contains("ZGV2LW9ubHkta2V5"), "the key is masked");
    // `config --for-url`: the profile that applies to a cloud (none is configured here).
    let for_url = env.run_ok(&["config", "--for-url", "https://glance.example.com:9292"]);
    assert!(for_url.contains("profile: none matches"), "{for_url}");
    assert!(
        for_url.contains("import_method: direct upload"),
        "{for_url}"
    );
    let no_key = env
        .command(&["worker"])
        .env_remove("PIMAGE_ENV")
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("secrets.key is not set"));
    env.drop_all().await;
}

#[tokio::test]
async fn api_and_worker_processes_publish_and_stop_on_sigterm() {
    let env = Env::new().await;
    env.run_ok(&["migrate"]);
    env.command(&["users", "add", "alice"])
        .env("PIMAGE_USER_PASSWORD", "alice-pw")
        .output()
        .unwrap();
    let file = env.dir.join("disk.raw");
    std::fs::write(
        &file,
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let uri = env.run_ok(&[
        "images",
        "register",
        "--user",
        "alice",
        "--file",
        file.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    let port = free_port();
    let api = env.spawn(&["api"], Some(port), "api");
    let worker = env.spawn(&["worker"], None, "worker");
    let base = format!("http://127.0.0.1:{port}/api");
    let client = reqwest::Client::new();
    wait_for_api(&base).await;
    let resp = client
        .post(format!("{base}/{}/pimages", uri.trim()))
        .basic_auth("alice", Some("alice-pw"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(publish_json("from processes", "demo", "demopass", "demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ticket: PublishImage = resp.json().await.unwrap();
    let status = wait_final_at(
        &base,
        ("alice", "alice-pw"),
        &ticket.uri,
        Duration::from_secs(60),
    )
    .await;
    assert!(status.complete, "{status:?}");
    let ticket: PublishImage = get_json_at(&base, ("alice", "alice-pw"), &ticket.uri).await;
    let cloud = DemoCloud::login().await;
    let cloud_id = ticket.cloud_id.as_deref().unwrap();
    assert_eq!(cloud.image(cloud_id).await.unwrap()["status"], "active");
    cloud.delete(cloud_id).await;
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;
    sigterm_and_wait(worker, "pimage worker", Duration::from_secs(20)).await;
    env.drop_all().await;
}

/// Admin commands never migrate: run against a database that is not pimage's (another
/// shell's environment), they change nothing and say which database and what to run
/// (issue 31: `pimage tickets list` used to migrate whatever database it was given).
#[tokio::test]
async fn admin_commands_never_migrate_and_name_the_database() {
    let mut env = Env::new().await;
    let server = common::database::server_url();
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let empty = format!("{}_empty", env.db_name);
    sqlx::query(&format!("CREATE DATABASE {empty}"))
        .execute(&admin)
        .await
        .unwrap();
    env.set("PIMAGE__DATABASE__URL", format!("{server}/{empty}"));
    for args in [
        &["tickets", "list"][..],
        &["accounts", "list"],
        &["tickets", "show", "1"],
    ] {
        let out = env.run(args);
        assert!(!out.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!(
                "the database '{empty}' at 127.0.0.1:5432 has no pimage schema"
            )) && said.contains("run `pimage migrate`"),
            "{args:?}: {said}"
        );
    }
    let empty_db = sqlx::PgPool::connect(&format!("{server}/{empty}"))
        .await
        .unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&empty_db)
            .await
            .unwrap();
    assert_eq!(tables, 0, "nothing was migrated");
    empty_db.close().await;

    // A schema behind the binary: named, with the command to run.
    env.run_ok(&["migrate"]);
    let db = sqlx::PgPool::connect(&format!("{server}/{empty}"))
        .await
        .unwrap();
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let said = String::from_utf8_lossy(&env.run(&["tickets", "list"]).stderr).into_owned();
    assert!(
        said.contains("lacks 1 of this pimage's migrations: run `pimage migrate`"),
        "{said}"
    );
    sqlx::query(&format!("DROP DATABASE {empty} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    env.drop_all().await;
}

/// `--state` takes clap's values: a wrong one is a usage error (exit 2) listing them.
#[tokio::test]
async fn a_wrong_state_is_a_usage_error_listing_the_states() {
    let out = Command::new(BIN)
        .args(["tickets", "list", "--state", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("possible values: queued, running, complete, error, cancelled, cleanup"),
        "{said}"
    );
}

/// An operator cancels and deletes a ticket from the CLI, as the API's routes do.
#[tokio::test]
async fn an_operator_cancels_then_deletes_a_ticket() {
    let (app, image_uri) = common::app_with_users().await;
    let env = Env::of_app(&app, vec![]);
    let ticket = app
        .publish_created(
            "alice",
            &image_uri,
            publish_json("cli", "demo", "demopass", "demo"),
        )
        .await;
    let id = ticket.db_id.to_string();
    let said = env.run_ok(&["tickets", "cancel", &id]);
    assert_eq!(
        said,
        format!("ticket {id} cancelled (it had not started)\n")
    );
    let again = env.run(&["tickets", "cancel", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has already ended (cancelled)"),
        "{again:?}"
    );
    assert_eq!(
        env.run_ok(&["tickets", "delete", &id]),
        format!("ticket {id} deleted\n")
    );
    let gone = env.run(&["tickets", "show", &id]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains(&format!("no ticket {id}")));
    app.stop().await;
}

/// `pimage users add LOGIN` without a password asks for it at a terminal (twice, not
/// echoed; here a pseudo-terminal made by `script`), and elsewhere says how to give it.
#[tokio::test]
async fn users_add_asks_for_the_password_at_a_terminal_only() {
    use std::io::Write;
    let env = Env::new().await;
    let out = env
        .command(&["users", "add", "bob"])
        .env_remove("PIMAGE_USER_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "no password for 'bob': give --password, or PIMAGE_USER_PASSWORD, or run this at a terminal"
        ),
        "{out:?}"
    );

    let line = format!("{BIN} users add bob");
    let mut at_terminal = env
        .program("script", &["-qec", &line, "/dev/null"])
        .env_remove("PIMAGE_USER_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Typed as a person would: each line once asked for it (typed earlier, the terminal
    // would echo it before the prompt turns echo off).
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = at_terminal.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut chunk = [0u8; 256];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                shown
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
    };
    let mut stdin = at_terminal.stdin.take().unwrap();
    for prompt in ["password for bob: ", "again: "] {
        let asked = std::time::Instant::now();
        while !shown.lock().unwrap().ends_with(prompt) {
            assert!(
                asked.elapsed() < Duration::from_secs(30),
                "asked: {shown:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // rpassword writes the prompt, then turns echo off: typed in that gap (a busy
        // machine), the password would be echoed. A person takes longer than this.
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"s3cret pass\n").unwrap();
    }
    let status = at_terminal.wait().unwrap();
    reader.join().unwrap();
    let shown = shown.lock().unwrap().clone();
    assert!(status.success(), "{shown}");
    assert!(shown.contains("password for bob: "), "{shown}");
    assert!(!shown.contains("s3cret"), "never echoed: {shown}");
    assert!(shown.contains("user bob (id "), "{shown}");
    env.drop_all().await;
}

/// `tickets list` takes the console's filters (user, cloud, image, time), through the same
/// query as the console's Tickets page.
#[tokio::test]
async fn tickets_list_takes_the_consoles_filters() {
    let (app, alices_image) = common::app_with_users().await;
    let file = app.raw_file("bobs.raw", 4096);
    let bobs_image = app.register_image("bob", &file, "raw").await;
    let body = || publish_json("filtered", "demo", "demopass", "demo");
    let alices = app.publish_created("alice", &alices_image, body()).await;
    let bobs = app.publish_created("bob", &bobs_image.uri(), body()).await;
    let env = Env::of_app(&app, vec![]);
    let ids = |args: &[&str]| -> Vec<i64> {
        let mut all = vec!["tickets", "list"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-f", "value", "-c", "id"]);
        env.run_ok(&all)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    assert_eq!(ids(&[]), [bobs.db_id, alices.db_id]);
    assert_eq!(ids(&["--user", "bob"]), [bobs.db_id]);
    let image = alices_image.rsplit('/').next().unwrap();
    assert_eq!(ids(&["--image", image]), [alices.db_id]);
    let keystone = common::keystone_url();
    assert_eq!(ids(&["--cloud", &keystone, "--state", "queued"]).len(), 2);
    assert_eq!(ids(&["--since", "2999-01-01T00:00:00Z"]), Vec::<i64>::new());
    assert_eq!(ids(&["--until", "2000-01-01T00:00:00Z"]), Vec::<i64>::new());
    let bad = env.run(&["tickets", "list", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    app.stop().await;
}

/// `-f table|json|yaml|value` and `-c COLUMN` on listings and shows, as the openstack CLI.
#[tokio::test]
async fn listings_and_shows_print_as_table_json_yaml_or_values() {
    let (app, image) = common::app_with_users().await;
    let ticket = app
        .publish_created(
            "alice",
            &image,
            publish_json("formats", "demo", "demopass", "demo"),
        )
        .await;
    let id = ticket.db_id.to_string();
    let env = Env::of_app(&app, vec![]);

    let table = env.run_ok(&["tickets", "list"]);
    let header = table.lines().nth(1).unwrap();
    for column in [
        "id",
        "state",
        "percentage",
        "user",
        "image",
        "cloud_id",
        "message",
    ] {
        assert!(header.contains(&format!(" {column} ")), "{table}");
    }
    assert!(
        table.starts_with("+--") && table.contains(&format!("| {id} ")),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["tickets", "list", "-f", "json"])).unwrap();
    assert_eq!(json[0]["id"], ticket.db_id);
    assert_eq!(json[0]["state"], "queued");
    assert_eq!(json[0]["user"], "alice");
    assert_eq!(json[0]["cloud_id"], serde_json::Value::Null);

    let picked = env.run_ok(&["tickets", "list", "-f", "json", "-c", "state", "-c", "id"]);
    let picked: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&picked).unwrap();
    assert_eq!(picked[0].keys().collect::<Vec<_>>(), ["state", "id"]);

    let yaml: serde_json::Value =
        yaml_serde::from_str(&env.run_ok(&["tickets", "show", &id, "-f", "yaml"])).unwrap();
    assert_eq!(yaml["id"], ticket.db_id);
    assert_eq!(yaml["keystone_project"], "demo");
    assert_eq!(yaml["attempts"], serde_json::json!([]));
    assert_eq!(
        env.run_ok(&["tickets", "show", &id, "-f", "value", "-c", "state"]),
        "queued\n"
    );
    let shown = env.run_ok(&["tickets", "show", &id]);
    assert!(
        shown.contains("| Field ") && shown.contains("| keystone_project | demo "),
        "{shown}"
    );

    let bad = env.run(&["tickets", "list", "-c", "colour"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("no column 'colour'; the columns are: id, state, percentage"),
        "{bad:?}"
    );
    let bad = env.run(&["tickets", "list", "-f", "xml"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error from clap");

    env.run_ok(&["apikeys", "create", "--user", "alice", "--methods", "GET"]);
    let keys: serde_json::Value =
        serde_json::from_str(&env.run_ok(&["apikeys", "list", "--user", "alice", "-f", "json"]))
            .unwrap();
    assert_eq!(keys[0]["methods"], "GET");
    assert_eq!(keys[0]["expires"], serde_json::Value::Null);
    assert!(keys[0].get("secret_key").is_none());
    let accounts = env.run_ok(&["accounts", "list", "-f", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&accounts).unwrap(),
        serde_json::json!([])
    );
    app.stop().await;
}

/// `--api URL`: an operator cancels, retries and deletes a ticket through the API as an
/// administrator, with no database setting that works; anyone else is refused with the
/// API's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)] // the API serves while a CLI runs
async fn ticket_changes_go_through_the_api_as_an_administrator() {
    let (app, image) = common::app_with_users().await;
    let ticket = app
        .publish_created(
            "alice",
            &image,
            publish_json("remote", "demo", "demopass", "demo"),
        )
        .await;
    let id = ticket.db_id.to_string();
    let env = Env::of_app(&app, vec![]);
    let base = app.address.clone();
    let via_api = |login: &str, password: &str, args: &[&str]| {
        let mut all = vec!["tickets"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api", &base, "--api-user", login]);
        env.command(&all)
            // No database: the command must not need one.
            .env(
                "PIMAGE__DATABASE__URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .env("PIMAGE_API_PASSWORD", password)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let said = |out: std::process::Output| {
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let root = |args: &[&str]| said(via_api("root", common::PASSWORD, args));
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state::text FROM publish_tickets WHERE id = $1")
            .bind(ticket.db_id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };

    let (code, text) = said(via_api("alice", common::PASSWORD, &["cancel", &id]));
    assert_eq!(code, Some(1));
    assert!(
        text.contains("user 'alice' is not an administrator") && text.contains("403"),
        "{text}"
    );
    let (code, text) = said(via_api("root", "wrong", &["cancel", &id]));
    assert_eq!(code, Some(1));
    assert!(text.contains("401"), "{text}");
    assert_eq!(state().await, "queued", "nothing changed");

    assert_eq!(
        root(&["cancel", &id]),
        (
            Some(0),
            format!("ticket {id} cancelled (it had not started)\n")
        )
    );
    let (code, text) = root(&["cancel", &id]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("has already ended (cancelled)") && text.contains("409"),
        "{text}"
    );
    assert_eq!(
        root(&["retry", &id]),
        (Some(0), format!("ticket {id} queued again\n"))
    );
    assert_eq!(state().await, "queued");
    assert_eq!(
        root(&["delete", &id]),
        (Some(0), format!("ticket {id} deleted\n"))
    );
    let (code, text) = root(&["delete", &id]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("no ticket {id}")) && text.contains("404"),
        "{text}"
    );
    // A browser that kept the administrator's login cannot be made to post a cancel by
    // another site's form: it sends an Origin.
    let forged = app
        .client
        .post(format!("{base}/api/admin/tickets/{id}/cancel"))
        .basic_auth("root", Some(common::PASSWORD))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("not for browsers"));
    // Without a password and without a terminal, it says how to give one.
    let out = env
        .command(&[
            "tickets",
            "cancel",
            "1",
            "--api",
            &base,
            "--api-user",
            "root",
        ])
        .env_remove("PIMAGE_API_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set PIMAGE_API_PASSWORD"),
        "{out:?}"
    );
    app.stop().await;
}
