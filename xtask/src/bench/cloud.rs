//! The lab cloud the benchmarks upload to, driven as a user would with curl (the baseline).

use super::Pimage;
use crate::process::{cmd, output, succeeds};
use anyhow::{Context, Result};

const AUTH: &str = r#"{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"demo","domain":{"name":"Default"},"password":"demopass"}}},"scope":{"project":{"name":"demo","domain":{"name":"Default"}}}}}"#;

/// A Keystone token of the demo account.
pub fn token(p: &Pimage) -> Result<String> {
    let out = output(&mut cmd(
        "curl",
        [
            "-si",
            "-X",
            "POST",
            &format!("{}/auth/tokens", p.keystone),
            "-H",
            "Content-Type: application/json",
            "-d",
            AUTH,
        ],
    ))?;
    out.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-subject-token")
                .then(|| value.trim().to_string())
        })
        .context("Keystone gave no token")
}

/// POST /v2/images: the new image's id.
pub fn create_image(p: &Pimage, token: &str, name: &str) -> Result<String> {
    let out = output(&mut cmd(
        "curl",
        [
            "-sf",
            "-X",
            "POST",
            &format!("{}/v2/images", p.glance),
            "-H",
            &format!("X-Auth-Token: {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(r#"{{"name":"{name}","disk_format":"raw","container_format":"bare"}}"#),
        ],
    ))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("Glance created no image")
}

/// The curl that uploads FILE into image ID (`curl -T`, the physical limit).
pub fn upload_command(p: &Pimage, token: &str, id: &str, file: &str) -> std::process::Command {
    cmd(
        "curl",
        [
            "-sf",
            "-T",
            file,
            "-X",
            "PUT",
            "-H",
            "Expect:",
            "-H",
            &format!("X-Auth-Token: {token}"),
            "-H",
            "Content-Type: application/octet-stream",
            &format!("{}/v2/images/{id}/file", p.glance),
        ],
    )
}

pub fn is_active(p: &Pimage, token: &str, id: &str) -> bool {
    output(&mut cmd(
        "curl",
        [
            "-sf",
            "-H",
            &format!("X-Auth-Token: {token}"),
            &format!("{}/v2/images/{id}", p.glance),
        ],
    ))
    .ok()
    .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
    .is_some_and(|v| v["status"] == "active")
}

pub fn delete_with(p: &Pimage, token: &str, id: &str) {
    succeeds(&mut cmd(
        "curl",
        [
            "-sf",
            "-X",
            "DELETE",
            "-H",
            &format!("X-Auth-Token: {token}"),
            &format!("{}/v2/images/{id}", p.glance),
        ],
    ));
}

/// Deletes an image with a token of its own (best effort: cleanup).
pub fn delete(p: &Pimage, id: &str) {
    if let Ok(t) = token(p) {
        delete_with(p, &t, id);
    }
}

/// Deletes the Glance images of every ticket of the scratch database.
pub fn delete_ticket_images(p: &Pimage) -> Result<()> {
    let t = token(p)?;
    let ids = p.psql(
        super::pimage::DB,
        "SELECT cloud_id FROM publish_tickets WHERE cloud_id IS NOT NULL",
    )?;
    for id in ids.lines().filter(|l| !l.is_empty()) {
        delete_with(p, &t, id);
    }
    Ok(())
}
