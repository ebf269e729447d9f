//! Server-side copies on real Glance 33 (issue 28): an image uploaded once, then copied by
//! Glance between its stores (`copy-image`) and into another region's Glance
//! (`glance-download`), removed from one store; through pimage's own `Glance`.
//!
//! The lab variant here (its own ports: Keystone 5301, Glance 9501, RegionTwo's Glance 9502,
//! stores `fast` and `cold` in each) is started and purged by the test.

use std::time::{Duration, Instant};

use pimage::cloud::{
    AddressPolicy, CloudError, Glance, GlanceImage, GlanceStore, Keystone, OpenStackAccount,
    StoreDelete,
};
use pimage::secrets::Secret;

use crate::common::copies_lab::CopiesLab;
use crate::common::fault_proxy::FaultProxy;
use crate::common::{glance_url, keystone_url, settings_for_test};

/// Keystone, Glance (RegionOne) and RegionTwo's Glance of this module's lab.
const PORTS: (u16, u16, u16) = (5301, 9501, 9502);
const KEYSTONE: &str = "http://127.0.0.1:5301/v3";
const REGION_TWO_GLANCE: &str = "127.0.0.1:9502";

fn demo(keystone_url: &str, glance_url: Option<String>, region: Option<&str>) -> OpenStackAccount {
    OpenStackAccount {
        keystone_url: keystone_url.into(),
        glance_url,
        region: region.map(str::to_string),
        user: "demo".into(),
        password: Secret::new("demopass"),
        domain: "Default".into(),
        project: "demo".into(),
    }
}

async fn login(account: &OpenStackAccount) -> Glance {
    let policy = AddressPolicy::from(settings_for_test("server_side_copies", "unused").cloud);
    Keystone::login(account, &policy).await.unwrap()
}

/// Polls the image until `done` holds (30 s at most).
async fn wait_for(
    glance: &Glance,
    id: &str,
    what: &str,
    done: impl Fn(&GlanceImage) -> bool,
) -> GlanceImage {
    let started = Instant::now();
    loop {
        let image = glance.image(id).await.unwrap();
        if done(&image) {
            return image;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: image is still {image:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn new_image(glance: &Glance, name: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    let props = Default::default();
    let image = glance
        .create_image(name, "raw", false, &key, "server-side-copies", &props)
        .await
        .unwrap();
    assert_eq!(image.status, "queued");
    image.id
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

fn sorted(mut stores: Vec<GlanceStore>) -> Vec<(String, bool)> {
    stores.sort_by(|a, b| a.id.cmp(&b.id));
    stores.into_iter().map(|s| (s.id, s.is_default)).collect()
}

fn refused(result: Result<impl std::fmt::Debug, CloudError>, words: &str) {
    let e = result.unwrap_err();
    assert!(e.summary.contains(words), "{e:?}");
    assert!(!e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn glance_copies_between_stores_and_regions_and_removes_one_copy() {
    // Alone: see `group_copies`.
    let _alone = crate::common::alone().await;
    let started = Instant::now();
    let lab = CopiesLab::up(PORTS);
    println!("copies lab up in {:.1} s", started.elapsed().as_secs_f64());
    let status = CopiesLab::command(&lab.dir, PORTS, &["status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("glance2: up (http://127.0.0.1:9502/"),
        "{status}"
    );
    let one = login(&demo(KEYSTONE, None, Some("RegionOne"))).await;
    assert_eq!(one.endpoint().as_str(), "http://127.0.0.1:9501/v2/");
    let stores = vec![("cold".to_string(), false), ("fast".to_string(), true)];
    assert_eq!(sorted(one.stores().await.unwrap()), stores);

    // Uploaded once, into cold: a named store, not Glance's default one.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let md5 = md5_hex(&data);
    let id = new_image(&one, "copied between stores").await;
    let len = data.len() as u64;
    one.upload(&id, data.clone().into(), len, Some("cold"))
        .await
        .unwrap();
    let image = one.image(&id).await.unwrap();
    assert_eq!(image.status, "active");
    assert_eq!(image.stores.as_deref(), Some("cold"));
    assert!(image.in_store("cold") && !image.in_store("fast"));
    assert_eq!(lab.stored("glance", "cold", &id), Some(data.clone()));
    assert_eq!(lab.stored("glance", "fast", &id), None);

    // copy-image: Glance copies from cold to fast itself; both hold the uploaded bytes.
    one.copy_to_stores(&id, &["fast"], true).await.unwrap();
    let copied = wait_for(&one, &id, "copy to fast", |i| i.in_store("fast")).await;
    assert!(copied.in_store("cold"), "{copied:?}");
    assert_eq!(copied.status, "active");
    assert_eq!(copied.checksum.as_deref(), Some(md5.as_str()));
    assert_eq!(copied.size, Some(len));
    assert_eq!(lab.stored("glance", "fast", &id), Some(data.clone()));
    // A copy to a store that already holds it is refused in words.
    refused(
        one.copy_to_stores(&id, &["cold"], true).await,
        "it is already in one of them",
    );

    println!(
        "copied between stores at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    region_two_downloads_from_region_one(&lab, &id, &data).await;
    println!(
        "downloaded to RegionTwo at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    removed_from_one_store(&lab, &one, &id, &data).await;

    // Uploads into a store Glance lacks are refused naming it; a queued image is not copied.
    let other = new_image(&one, "unknown store").await;
    let body = data.clone().into();
    refused(
        one.upload(&other, body, len, Some("nope")).await,
        "Glance has no store named 'nope'",
    );
    refused(
        one.copy_to_stores(&other, &["fast"], true).await,
        "it is not active",
    );
    one.delete_image(&other).await.unwrap();
    one.delete_image(&id).await.unwrap();
    imported_into_a_named_store(&lab, &one, &data).await;
}

/// One store's copy removed: the image stays active in the other only.
async fn removed_from_one_store(lab: &CopiesLab, one: &Glance, id: &str, data: &[u8]) {
    assert_eq!(
        one.delete_from_store(id, "cold").await.unwrap(),
        StoreDelete::Deleted
    );
    let image = one.image(id).await.unwrap();
    assert_eq!(image.status, "active");
    assert_eq!(image.stores.as_deref(), Some("fast"));
    assert_eq!(lab.stored("glance", "cold", id), None);
    assert_eq!(lab.stored("glance", "fast", id), Some(data.to_vec()));
    // Its last store: Glance keeps it (the caller deletes the image instead); a store it is
    // not in (Glance answers as for the last store), or a missing image: nothing to remove.
    let last = one.delete_from_store(id, "fast").await.unwrap();
    assert_eq!(last, StoreDelete::LastLocation);
    assert_eq!(one.image(id).await.unwrap().stores.as_deref(), Some("fast"));
    let not_there = one.delete_from_store(id, "cold").await.unwrap();
    assert_eq!(not_there, StoreDelete::Gone);
    assert_eq!(one.image(id).await.unwrap().stores.as_deref(), Some("fast"));
    let missing = uuid::Uuid::new_v4().to_string();
    let gone = one.delete_from_store(&missing, "fast").await.unwrap();
    assert_eq!(gone, StoreDelete::Gone);
}

/// glance-direct into a named store: staged, then imported into `cold`, not the default.
async fn imported_into_a_named_store(lab: &CopiesLab, one: &Glance, data: &[u8]) {
    let id = new_image(one, "imported into cold").await;
    let len = data.len() as u64;
    one.stage(&id, data.to_vec().into(), len).await.unwrap();
    refused(
        one.start_import(&id, None, Some("nope")).await,
        "Glance has no store named 'nope'",
    );
    one.start_import(&id, None, Some("cold")).await.unwrap();
    let image = wait_for(one, &id, "glance-direct", |i| i.status == "active").await;
    assert_eq!(image.stores.as_deref(), Some("cold"));
    assert_eq!(lab.stored("glance", "cold", &id).as_deref(), Some(data));
    assert_eq!(lab.stored("glance", "fast", &id), None);
    one.delete_image(&id).await.unwrap();
}

/// glance-download: RegionTwo's Glance fetches the image from RegionOne's through the
/// catalog; pimage's client to RegionTwo (behind a proxy) sends no image bytes.
async fn region_two_downloads_from_region_one(lab: &CopiesLab, source: &str, data: &[u8]) {
    let from_catalog = login(&demo(KEYSTONE, None, Some("RegionTwo"))).await;
    assert_eq!(
        from_catalog.endpoint().as_str(),
        "http://127.0.0.1:9502/v2/"
    );
    let proxy = FaultProxy::start(REGION_TWO_GLANCE).await;
    let two = login(&demo(KEYSTONE, Some(proxy.url.clone()), None)).await;
    let id = new_image(&two, "downloaded from region one").await;
    two.import_from_region(&id, "RegionOne", source, Some("cold"))
        .await
        .unwrap();
    let image = wait_for(&two, &id, "glance-download", |i| i.status == "active").await;
    assert_eq!(image.stores.as_deref(), Some("cold"));
    assert_eq!(image.size, Some(data.len() as u64));
    let md5 = md5_hex(data);
    assert_eq!(image.checksum.as_deref(), Some(md5.as_str()));
    assert_eq!(lab.stored("glance2", "cold", &id).as_deref(), Some(data));
    let calls = proxy.seen();
    assert!(
        calls
            .iter()
            .all(|c| !c.starts_with("PUT") && !c.ends_with("/file")),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.ends_with("/import")), "{calls:?}");

    // A second glance-download into an image no longer queued is refused in words.
    refused(
        two.import_from_region(&id, "RegionOne", source, None).await,
        "it is not queued",
    );
    two.delete_image(&id).await.unwrap();
}

/// The default lab has one named store, `fs`, its default; a Glance without named stores
/// (it answers 404) has none.
#[tokio::test]
async fn the_default_lab_offers_its_one_store() {
    let glance = login(&demo(&keystone_url(), Some(glance_url()), None)).await;
    let stores = sorted(glance.stores().await.unwrap());
    assert_eq!(stores, vec![("fs".to_string(), true)]);

    let upstream = glance_url().trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(&upstream).await;
    proxy.fail_with_status("GET", "/info/stores", 404, 1);
    let single = login(&demo(&keystone_url(), Some(proxy.url.clone()), None)).await;
    assert_eq!(single.stores().await.unwrap(), vec![]);
    assert_eq!(proxy.injected(), 1);
    proxy.fail_with_status("GET", "/info/stores", 503, 1);
    assert!(single.stores().await.unwrap_err().is_transient());
}
