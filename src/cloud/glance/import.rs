//! Glance's interoperable import (`glance-direct`, `web-download`): the methods Glance offers
//! (`GET /v2/info/import`), staging the bytes (`PUT …/stage`) and starting the import
//! (`POST …/import`). The wait for `active` is the worker's (it reports and cancels).

use reqwest::header::ACCEPT;
use serde::Deserialize;

use super::copies::unknown_store;
use super::quota::quota_refusal;
use super::Glance;
use crate::cloud::answer::{json, within};
use crate::cloud::error::{check, CloudError};

#[derive(Debug, Deserialize)]
struct ImportInfo {
    #[serde(rename = "import-methods")]
    methods: ImportMethods,
}

#[derive(Debug, Deserialize)]
struct ImportMethods {
    #[serde(default)]
    value: Vec<String>,
}

impl Glance {
    /// The import methods this Glance offers; empty when it does not say (an older Glance).
    pub async fn import_methods(&self) -> Result<Vec<String>, CloudError> {
        let url = self.url(&["info", "import"]);
        within(
            self.timeout(),
            "Glance, reading its import methods",
            async {
                let response = self
                    .send(
                        "could not reach Glance to read its import methods",
                        |c, token| {
                            c.get(url.clone())
                                .header("x-auth-token", token)
                                .header(ACCEPT, "application/json")
                        },
                    )
                    .await?;
                if response.status().is_client_error() {
                    return Ok(vec![]);
                }
                let response = check(response, |s| {
                    format!("Glance failed to tell its import methods (HTTP {s})")
                })
                .await?;
                json::<ImportInfo>(response, "Glance answered its import methods")
                    .await
                    .map(|i| i.methods.value)
            },
        )
        .await
    }

    /// Streams `body` (exactly `length` bytes) into the image's staging area; bounded by the
    /// worker's upload watchdog, as `upload` is.
    pub async fn stage(
        &self,
        image_id: &str,
        body: reqwest::Body,
        length: u64,
    ) -> Result<(), CloudError> {
        let response = self
            .put_bytes(
                image_id,
                "stage",
                (body, length),
                None,
                "staging the image in Glance was cut off",
            )
            .await?;
        check(response, |status| match status {
            403 => "Glance refused to stage the image (forbidden): this account may use neither \
                    the direct upload nor glance-direct"
                .to_string(),
            404 | 409 | 410 => "the image was removed from Glance during staging".into(),
            s => format!("staging the image in Glance failed (HTTP {s})"),
        })
        .await
        .map_err(quota_refusal)
        .map(|_| ())
    }

    /// Asks Glance to import the staged bytes (`glance-direct`), or, given a link, to fetch
    /// them from it (`web-download`); into `store` if named, else Glance's default store.
    pub async fn start_import(
        &self,
        image_id: &str,
        web_download: Option<&str>,
        store: Option<&str>,
    ) -> Result<(), CloudError> {
        let url = self.url(&["images", image_id, "import"]);
        let mut body = match web_download {
            None => serde_json::json!({"method": {"name": "glance-direct"}}),
            Some(uri) => serde_json::json!({"method": {"name": "web-download", "uri": uri}}),
        };
        if let Some(store) = store {
            body["stores"] = serde_json::json!([store]);
        }
        within(self.timeout(), "Glance, starting the import", async {
            let response = self
                .send("could not reach Glance to start the import", |c, token| {
                    c.post(url.clone())
                        .header("x-auth-token", token)
                        .header(ACCEPT, "application/json")
                        .json(&body)
                })
                .await?;
            check(response, |s| match web_download {
                None => format!("Glance refused to import the staged image (HTTP {s})"),
                // 400: the link fails the cloud's [import_filtering_opts].
                Some(_) if s < 500 => format!(
                    "Glance refused the web-download import (HTTP {s}): the cloud must offer \
                     web-download and allow fetching from the profile's web_download_base_url"
                ),
                Some(_) => format!("Glance failed to start the web-download import (HTTP {s})"),
            })
            .await
            .map_err(quota_refusal)
            .map_err(|e| unknown_store(e, store))
            .map(|_| ())
        })
        .await
    }
}
