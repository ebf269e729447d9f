//! A group's bytes go once per cloud (issue 28, item 4), on real Glance 33: three targets
//! in two regions and two stores of one Keystone; the first uploads, the second gets the
//! image by copy-image into its store, the third by glance-download into RegionTwo. The
//! uploads are counted in the lab's own request logs.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::copies_lab::CopiesLab;
use crate::common::{self, spawn_app, DemoCloud, TestApp};
use crate::groups::{post_as_alice, post_group, wait_group};

/// Keystone, Glance (RegionOne) and RegionTwo's Glance of this module's lab.
const PORTS: (u16, u16, u16) = (5311, 9511, 9512);

async fn file_group(app: &TestApp, image_uri: &str, body: Value) -> String {
    let (status, answer) = post_group(app, image_uri, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer:#}");
    answer["uri"].as_str().unwrap().to_string()
}

async fn wait_final(app: &TestApp, uri: &str) -> Value {
    wait_group(app, uri, &["complete", "partial", "error", "cancelled"]).await
}

#[tokio::test]
async fn three_targets_in_two_regions_and_two_stores_get_the_file_sent_once() {
    // A lab of three servers starting and copying shares the 2 cores: alone, so that it never
    // starves another test's upload into its stall rule.
    let _alone = common::alone().await;
    let lab = CopiesLab::up(PORTS);
    let app = spawn_app(true).await;
    app.add_user("alice", &["migration_publish"], false).await;
    let file = app.raw_file("disk.raw", 1024 * 1024);
    let md5 = common::md5_of(&file);
    for policy in ["all", "each"] {
        let image = app.register_image("alice", &file, "raw").await.uri();
        let before = lab.uploads();
        let body = json!({"policy": policy, "targets": [
            lab.target("one", "RegionOne", None),
            lab.target("cold", "RegionOne", Some("cold")),
            lab.target("two", "RegionTwo", None)]});
        let uri = file_group(&app, &image, body).await;
        let done = wait_final(&app, &uri).await;
        assert_eq!(done["state"], "complete", "{policy}: {done:#}");
        assert_eq!(
            lab.uploads() - before,
            1,
            "{policy}: one upload for three targets"
        );

        let targets = done["targets"]["target"].as_array().unwrap().clone();
        let ids: Vec<String> = targets
            .iter()
            .map(|t| t["cloudId"].as_str().unwrap().into())
            .collect();
        assert_eq!(targets[1]["copiesFrom"], targets[0]["publishImage"]["dbId"]);
        assert_eq!(targets[2]["copiesFrom"], targets[0]["publishImage"]["dbId"]);
        // copy-image: the same image, now in both stores of RegionOne's Glance.
        assert_eq!(ids[0], ids[1], "{policy}");
        let one = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance")).await;
        let image_one = one.image(&ids[0]).await.unwrap();
        let stores: Vec<&str> = image_one["stores"].as_str().unwrap().split(',').collect();
        assert!(
            stores.contains(&"fast") && stores.contains(&"cold"),
            "{image_one:#}"
        );
        assert_eq!(
            lab.stored("glance", "cold", &ids[0]).map(|b| b.len()),
            Some(1024 * 1024)
        );
        // glance-download: RegionTwo's own image, the same bytes.
        let two = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance2")).await;
        let image_two = two.image(&ids[2]).await.unwrap();
        assert_eq!(image_two["status"], "active");
        assert_eq!(image_two["checksum"], md5.as_str());
        two.delete(&ids[2]).await;
        one.delete(&ids[0]).await;
    }
    a_target_added_to_a_finished_group_is_copied_alone(&lab, &app, &file).await;
    under_all_a_target_failing_for_good_leaves_nothing_in_either_region(&lab, &app, &file).await;
    app.stop().await;
}

/// A target added to a complete group publishes only itself, copied from the group's upload.
async fn a_target_added_to_a_finished_group_is_copied_alone(
    lab: &CopiesLab,
    app: &TestApp,
    file: &Path,
) {
    let image = app.register_image("alice", file, "raw").await.uri();
    let body = json!({"policy": "each", "targets": [lab.target("first", "RegionOne", None)]});
    let uri = file_group(app, &image, body).await;
    let first = wait_final(app, &uri).await;
    assert_eq!(first["state"], "complete", "{first:#}");
    let uploads = lab.uploads();
    let more = json!({"targets": [lab.target("later", "RegionTwo", Some("cold"))]});
    let (status, answer) = post_as_alice(app, &format!("{uri}/targets"), more).await;
    assert_eq!(status, StatusCode::CREATED, "{answer:#}");
    let done = wait_final(app, &uri).await;
    assert_eq!(done["state"], "complete", "{done:#}");
    assert_eq!(done["total"], 2);
    assert_eq!(lab.uploads(), uploads, "the added target sent no byte");
    let targets = done["targets"]["target"].as_array().unwrap().clone();
    assert_eq!(targets[1]["copiesFrom"], targets[0]["publishImage"]["dbId"]);
    let later = targets[1]["cloudId"].as_str().unwrap();
    let two = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance2")).await;
    assert_eq!(two.image(later).await.unwrap()["stores"], "cold");
    two.delete(later).await;
    let one = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance")).await;
    one.delete(targets[0]["cloudId"].as_str().unwrap()).await;
}

/// Under `all`, a copying target that fails for good (its account's password is wrong)
/// withdraws the upload it copied and the other region's copy: nothing stays in either Glance.
async fn under_all_a_target_failing_for_good_leaves_nothing_in_either_region(
    lab: &CopiesLab,
    app: &TestApp,
    file: &Path,
) {
    let image = app.register_image("alice", file, "raw").await.uri();
    let mut failing = lab.target("failing", "RegionOne", Some("cold"));
    failing["credAccount"]["password"] = "not-the-password".into();
    let body = json!({"policy": "all", "targets": [
        lab.target("one", "RegionOne", None), lab.target("two", "RegionTwo", None), failing]});
    let uri = file_group(app, &image, body).await;
    let done = wait_final(app, &uri).await;
    assert_eq!(done["state"], "error", "{done:#}");
    let one = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance")).await;
    let two = DemoCloud::login_at(&lab.keystone(), &lab.glance("glance2")).await;
    for t in done["targets"]["target"].as_array().unwrap() {
        let key = app
            .ticket_key(t["publishImage"]["dbId"].as_i64().unwrap())
            .await;
        one.wait_no_image_of_ticket(&key, "RegionOne, a failed `all` group")
            .await;
        two.wait_no_image_of_ticket(&key, "RegionTwo, a failed `all` group")
            .await;
    }
}
