//! Fuzzes the publish request body reader (XML and JSON): it must never panic, hang or
//! recurse without bound, and whatever it accepts must satisfy the checks it promises.
#![no_main]
// The parts of the service it uses are not all used here.
#![allow(dead_code, unused_imports)]

use libfuzzer_sys::fuzz_target;

// The service's own sources, at their paths in the crate, so that `crate::…` and `super::…`
// resolve as in pimage (see Cargo.toml for why not the crate itself).
#[path = "../../src/api"]
mod api {
    #[path = "publish_request.rs"]
    pub mod publish_request;
    #[path = "xml.rs"]
    pub mod xml;
}
#[path = "../../src/printable.rs"]
mod printable;
#[path = "../../src/secrets.rs"]
mod secrets;

use api::publish_request::{parse, AccountRef, BodyAccount};
use printable::is_printable;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the media type, so one corpus covers both readers.
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let content_type = if kind % 2 == 0 { "application/xml" } else { "application/json" };
    let Ok(request) = parse(Some(content_type), body) else {
        return;
    };
    for text in [
        request.display_name.as_deref(),
        Some(request.keystone_project.as_str()),
        Some(request.keystone_domain.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        assert_clean_text(text);
    }
    match request.account {
        BodyAccount::Given(account) => {
            assert_clean_text(&account.login);
            let url = account.keystone_url.to_ascii_lowercase();
            assert!(url.starts_with("http://") || url.starts_with("https://"), "{url}");
            // URLs are shown by the CLI and sent to the cloud: nothing that drives a terminal.
            for url in [Some(&account.keystone_url), account.glance_url.as_ref()]
                .into_iter()
                .flatten()
            {
                assert!(url.chars().all(is_printable), "{url:?}");
            }
            assert!(!account.password.expose().is_empty());
        }
        // A stored account named: by something, each part a clean text or a positive id.
        BodyAccount::Stored(reference) => {
            assert!(reference != AccountRef::default());
            reference.uri.as_deref().into_iter().for_each(assert_clean_text);
            reference.name.as_deref().into_iter().for_each(assert_clean_text);
            assert!(reference.db_id.is_none_or(|id| id > 0));
        }
    }
});

fn assert_clean_text(text: &str) {
    assert!(!text.is_empty() && text.chars().count() <= 255);
    assert!(!text.chars().any(char::is_control), "{text:?}");
}
