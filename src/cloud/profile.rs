//! Per-cloud profiles: which `cloud.profiles` entry applies to a cloud host, and what it
//! says, for the worker and for `pimage config --for-url`.

use std::fmt::Write;
use std::net::IpAddr;

use crate::config::{CloudProfile, CloudSettings, ImportMethod};

use super::address_policy::host_matches;
use super::AddressPolicy;

impl AddressPolicy {
    /// The first profile whose hosts match `url`'s host.
    pub fn profile_for(&self, url: &url::Url) -> Option<&CloudProfile> {
        profile_for(self.settings(), url)
    }

    /// The call timeout for calls to the cloud at `url` (its profile's, or `cloud.*`'s).
    pub(super) fn call_timeout_for(&self, url: &url::Url) -> std::time::Duration {
        match self.profile_for(url).and_then(|p| p.call_timeout) {
            Some(timeout) => timeout,
            None => self.call_timeout(),
        }
    }
}

fn profile_for<'a>(settings: &'a CloudSettings, url: &url::Url) -> Option<&'a CloudProfile> {
    profile_for_host(settings, url.host_str()?)
}

fn profile_for_host<'a>(settings: &'a CloudSettings, host: &str) -> Option<&'a CloudProfile> {
    let host = host.to_ascii_lowercase();
    let ip: Option<IpAddr> = host.trim_matches(|c| c == '[' || c == ']').parse().ok();
    settings
        .profiles
        .iter()
        .find(|p| p.hosts.iter().any(|entry| host_matches(entry, &host, ip)))
}

/// The most uploads that may run at once to the cloud at `host` (a ticket's Glance host, or
/// its Keystone host when Glance comes from the catalog), over every worker: the matching
/// profile's `max_uploads`, else `cloud.max_uploads_per_cloud`; never below 1.
pub fn upload_limit_for(settings: &CloudSettings, host: &str) -> u32 {
    profile_for_host(settings, host)
        .and_then(|p| p.max_uploads)
        .unwrap_or(settings.max_uploads_per_cloud)
        .max(1)
}

/// What applies to a cloud at `url`: the profile's settings, and the `cloud.*` ones it leaves.
pub fn describe_for_url(settings: &CloudSettings, url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("'{url}' is not a valid URL: {e}"))?;
    let profile = profile_for(settings, &parsed);
    let unset = CloudProfile::default();
    let p = profile.unwrap_or(&unset);
    let mut out = String::new();
    let _ = match profile {
        Some(p) => writeln!(out, "profile: {} (hosts {})", p.name, p.hosts.join(", ")),
        None => writeln!(out, "profile: none matches; the cloud.* settings apply"),
    };
    describe_trust(&mut out, settings, p);
    describe_upload(&mut out, p);
    describe_limits(&mut out, settings, p);
    Ok(out)
}

/// The CA files trusted and the region.
fn describe_trust(out: &mut String, settings: &CloudSettings, p: &CloudProfile) {
    let from = |set: bool| if set { "profile" } else { "cloud.*" };
    let mut ca: Vec<String> = settings
        .ca_file
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    ca.extend(p.ca_file.iter().map(|f| f.display().to_string()));
    let _ = writeln!(
        out,
        "ca_file: {}",
        if ca.is_empty() {
            "none (system roots only)".into()
        } else {
            format!("system roots + {}", ca.join(" + "))
        }
    );
    let region = p.region.as_ref().or(settings.region.as_ref());
    let _ = writeln!(
        out,
        "region: {} ({})",
        region.map_or("none (the catalog must list one Glance)", |r| r.as_str()),
        from(p.region.is_some())
    );
}

/// How the image goes up: its format, the transfer, the properties set.
fn describe_upload(out: &mut String, p: &CloudProfile) {
    let _ = writeln!(
        out,
        "disk_format: {}",
        p.disk_format
            .as_deref()
            .unwrap_or("as registered (no conversion)")
    );
    let _ = writeln!(
        out,
        "import_method: {}",
        match p.import_method {
            Some(ImportMethod::GlanceDirect) => "glance-direct (stage, then import)".to_string(),
            Some(ImportMethod::WebDownload) => format!(
                "web-download (Glance fetches a signed link from {})",
                p.web_download_base_url
                    .as_deref()
                    .unwrap_or("nowhere: web_download_base_url is not set")
            ),
            Some(ImportMethod::Direct) | None =>
                "direct upload (glance-direct when Glance forbids it)".to_string(),
        }
    );
    let props: Vec<String> = p
        .properties
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "properties: {}",
        if props.is_empty() {
            "none".into()
        } else {
            props.join(", ")
        }
    );
}

/// The time limits and the upload slots.
fn describe_limits(out: &mut String, settings: &CloudSettings, p: &CloudProfile) {
    let from = |set: bool| if set { "profile" } else { "cloud.*" };
    let _ = writeln!(
        out,
        "call_timeout: {} ({})",
        humantime::format_duration(p.call_timeout.unwrap_or(settings.call_timeout)),
        from(p.call_timeout.is_some())
    );
    let _ = writeln!(
        out,
        "import_timeout: {}",
        humantime::format_duration(p.import_timeout.unwrap_or(DEFAULT_IMPORT_TIMEOUT))
    );
    let _ = writeln!(
        out,
        "max_uploads: {}",
        p.max_uploads.map_or(
            format!(
                "{} (cloud.max_uploads_per_cloud)",
                settings.max_uploads_per_cloud
            ),
            |n| n.to_string()
        )
    );
}

/// How long Glance may take to import staged bytes when no profile says.
pub const DEFAULT_IMPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CloudSettings {
        CloudSettings {
            region: Some("RegionOne".into()),
            profiles: vec![
                CloudProfile {
                    name: "ceph".into(),
                    hosts: vec!["*.ceph.example.com".into(), "10.0.0.0/8".into()],
                    disk_format: Some("raw".into()),
                    properties: [("hw_disk_bus".to_string(), "scsi".to_string())].into(),
                    import_method: Some(ImportMethod::GlanceDirect),
                    call_timeout: Some(std::time::Duration::from_millis(5000)),
                    max_uploads: Some(2),
                    ..Default::default()
                },
                CloudProfile {
                    name: "later".into(),
                    hosts: vec!["glance.ceph.example.com".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_first_profile_whose_hosts_match_applies() {
        let s = settings();
        let url = |u: &str| url::Url::parse(u).unwrap();
        let name = |u: &str| profile_for(&s, &url(u)).map(|p| p.name.clone());
        assert_eq!(
            name("https://glance.ceph.example.com:9292"),
            Some("ceph".into())
        );
        assert_eq!(name("http://10.2.3.4:9292"), Some("ceph".into()));
        assert_eq!(name("https://ceph.example.com.evil.net"), None);
        assert_eq!(name("https://glance.other.org"), None);
        let policy = AddressPolicy::from(s.clone());
        assert_eq!(
            policy.call_timeout_for(&url("http://10.2.3.4")),
            std::time::Duration::from_millis(5000)
        );
        assert_eq!(
            policy.call_timeout_for(&url("http://elsewhere")),
            s.call_timeout
        );
    }

    #[test]
    fn config_for_url_shows_the_profile_and_what_it_leaves_to_cloud_settings() {
        let s = settings();
        let text = describe_for_url(&s, "https://glance.ceph.example.com").unwrap();
        assert!(text.contains("profile: ceph"), "{text}");
        assert!(text.contains("disk_format: raw"), "{text}");
        assert!(text.contains("hw_disk_bus=scsi"), "{text}");
        assert!(text.contains("glance-direct"), "{text}");
        assert!(text.contains("region: RegionOne (cloud.*)"), "{text}");
        assert!(text.contains("max_uploads: 2"), "{text}");
        let none = describe_for_url(&s, "https://glance.other.org").unwrap();
        assert!(none.contains("none matches"), "{none}");
        assert!(describe_for_url(&s, "not a url").is_err());
    }

    #[test]
    fn upload_limits_come_from_the_first_matching_profile_else_the_default() {
        let profile = |name: &str, host: &str, max_uploads| CloudProfile {
            name: name.into(),
            hosts: vec![host.into()],
            max_uploads,
            ..Default::default()
        };
        let cloud = CloudSettings {
            max_uploads_per_cloud: 8,
            profiles: vec![
                profile("small", "glance.small.example", Some(2)),
                profile("com", "*.example.com", Some(3)),
                profile("other", "*.other.example.com", Some(4)),
                profile("zero", "zero.example.org", Some(0)),
                profile("unlimited-here", "tls.example.org", None),
            ],
            ..CloudSettings::default()
        };
        let limit = |host| upload_limit_for(&cloud, host);
        assert_eq!(limit("glance.small.example"), 2);
        assert_eq!(limit("GLANCE.Small.Example"), 2);
        assert_eq!(limit("a.example.com"), 3);
        assert_eq!(limit("b.other.example.com"), 3);
        assert_eq!(limit("example.com"), 8);
        assert_eq!(limit("badexample.com"), 8);
        assert_eq!(limit("zero.example.org"), 1);
        assert_eq!(limit("tls.example.org"), 8);
        assert_eq!(limit("127.0.0.1"), 8);
    }
}
