//! The `pimage` binary, run as plain processes: migrate, users add, images register, config,
//! and `api` + `worker` publishing an image into the real Glance, stopped with SIGTERM.

#![allow(clippy::unwrap_used)] // a failed unwrap fails the test, naming its place

mod common;

use std::process::Command;
use std::time::Duration;

use common::processes::{
    free_port, get_json_at, sigterm_and_wait, wait_final_at, wait_for_api, Env, BIN,
};
use common::{publish_json, DemoCloud};

#[tokio::test]
async fn help_documents_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "migrate", "api", "worker", "users", "apikeys", "images", "config",
    ] {
        assert!(help.contains(sub), "--help names {sub}: {help}");
    }
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
    assert!(config.contains("image_dir") && config.contains("***"));
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
    let ticket: serde_json::Value = resp.json().await.unwrap();
    let status = wait_final_at(
        &base,
        ("alice", "alice-pw"),
        ticket["uri"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(status["complete"], true, "{status}");
    let ticket = get_json_at(
        &base,
        ("alice", "alice-pw"),
        ticket["uri"].as_str().unwrap(),
    )
    .await;
    let cloud = DemoCloud::login().await;
    let cloud_id = ticket["cloudId"].as_str().unwrap();
    assert_eq!(cloud.image(cloud_id).await.unwrap()["status"], "active");
    cloud.delete(cloud_id).await;
    sigterm_and_wait(api, "pimage api", Duration::from_secs(20)).await;
    sigterm_and_wait(worker, "pimage worker", Duration::from_secs(20)).await;
    env.drop_all().await;
}
