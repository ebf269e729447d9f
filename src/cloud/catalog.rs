//! The Keystone catalog: Glance's endpoint when the account gives no `glanceUrl`, on the
//! `public` interface, in the configured region (`cloud.region`, or a profile's).

use serde::Deserialize;

use super::error::{Cause, CloudError};

#[derive(Debug, Deserialize)]
pub(super) struct CatalogService {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Deserialize)]
struct CatalogEndpoint {
    interface: String,
    url: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

impl CatalogEndpoint {
    fn region(&self) -> &str {
        self.region_id
            .as_deref()
            .or(self.region.as_deref())
            .unwrap_or("")
    }
}

/// Which region a publish asks for, and which setting chose it (named in errors).
#[derive(Debug, Clone, Copy)]
pub(super) struct Region<'a> {
    pub(super) name: &'a str,
    pub(super) chosen_by: &'a str,
}

/// The public image endpoint of `region`, or the only one when no region is set; several
/// regions and none chosen is a permanent error naming them.
pub(super) fn image_endpoint(
    catalog: &[CatalogService],
    region: Option<Region<'_>>,
) -> Result<CatalogGlance, CloudError> {
    let public: Vec<&CatalogEndpoint> = catalog
        .iter()
        .filter(|s| s.kind == "image")
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.interface == "public")
        .collect();
    let mut regions: Vec<&str> = public.iter().map(|e| e.region()).collect();
    regions.sort_unstable();
    regions.dedup();
    let names = regions
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if public.is_empty() {
        return Err(CloudError {
            summary: "no Glance (image service, public interface) in the Keystone catalog".into(),
            detail: None,
            cause: Cause::Http {
                status: 404,
                retry_after: None,
            },
        });
    }
    let chosen = match region {
        Some(Region { name, chosen_by }) => public
            .iter()
            .find(|e| e.region() == name)
            .ok_or_else(|| config_error(format!(
                "the Keystone catalog has no Glance in region '{name}' ({chosen_by}); it lists Glance in {names}"
            )))?,
        None if regions.len() > 1 => {
            return Err(config_error(format!(
                "the Keystone catalog lists Glance in several regions ({names}): set cloud.region \
                 (or a profile's region) to the one to publish to, or give glanceUrl"
            )))
        }
        None => public[0],
    };
    Ok(CatalogGlance {
        url: chosen.url.clone(),
        region: chosen.region().to_string(),
    })
}

/// The Glance the catalog gives, and its region (a sibling's glance-download names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CatalogGlance {
    pub(super) url: String,
    pub(super) region: String,
}

fn config_error(summary: String) -> CloudError {
    CloudError {
        summary,
        detail: None,
        cause: Cause::Config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Vec<CatalogService> {
        serde_json::from_value(serde_json::json!([
            {"type": "identity", "endpoints": [{"interface": "public", "url": "http://k", "region_id": "RegionOne"}]},
            {"type": "image", "endpoints": [
                {"interface": "internal", "url": "http://internal-one", "region_id": "RegionOne"},
                {"interface": "public", "url": "http://one", "region_id": "RegionOne"},
                {"interface": "public", "url": "http://two", "region": "RegionTwo"},
            ]}
        ]))
        .unwrap()
    }

    fn chosen(name: &str) -> Option<Region<'_>> {
        Some(Region {
            name,
            chosen_by: "publishLocation",
        })
    }

    #[test]
    fn the_public_endpoint_of_the_chosen_region_is_used() {
        assert_eq!(
            image_endpoint(&catalog(), chosen("RegionOne")).unwrap().url,
            "http://one"
        );
        assert_eq!(
            image_endpoint(&catalog(), chosen("RegionTwo")).unwrap().url,
            "http://two"
        );
        let missing = image_endpoint(&catalog(), chosen("RegionNine")).unwrap_err();
        assert!(
            missing.summary.contains("'RegionNine'"),
            "{}",
            missing.summary
        );
        assert!(
            missing.summary.contains("'RegionOne', 'RegionTwo'")
                && missing.summary.contains("(publishLocation)"),
            "{}",
            missing.summary
        );
        assert!(!missing.is_transient());
    }

    #[test]
    fn several_regions_and_none_chosen_is_an_error_naming_them() {
        let e = image_endpoint(&catalog(), None).unwrap_err();
        assert!(
            e.summary
                .contains("several regions ('RegionOne', 'RegionTwo')"),
            "{}",
            e.summary
        );
        assert!(!e.is_transient());
        let one: Vec<CatalogService> = serde_json::from_value(serde_json::json!([
            {"type": "image", "endpoints": [{"interface": "public", "url": "http://only", "region_id": "R"}]}
        ]))
        .unwrap();
        assert_eq!(image_endpoint(&one, None).unwrap().url, "http://only");
        assert!(image_endpoint(&[], None).is_err());
    }
}
