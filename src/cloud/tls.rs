//! TLS: the CA bundles trusted beside the system roots (`cloud.ca_file`, and a profile's
//! `ca_file` for the hosts it matches), and certificate failures told in plain words. A
//! certificate that is not trusted, has expired or names another host is permanent: the
//! same certificate fails the same way on every retry.

use std::path::PathBuf;

use super::error::{error_chain, Cause, CloudError};
use super::AddressPolicy;

/// The CA files that apply to calls to these hosts, `cloud.ca_file` first, without repeats.
pub(super) fn ca_files(policy: &AddressPolicy, urls: &[&url::Url]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = policy.settings().ca_file.iter().cloned().collect();
    for url in urls {
        if let Some(file) = policy.profile_for(url).and_then(|p| p.ca_file.clone()) {
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

/// Adds every certificate of `files` to the client's roots (the system roots stay).
pub(super) fn trust(
    mut builder: reqwest::ClientBuilder,
    files: &[PathBuf],
) -> Result<reqwest::ClientBuilder, CloudError> {
    for file in files {
        let unusable = |why: String| CloudError {
            summary: format!("the CA file '{}' (cloud.ca_file) {why}", file.display()),
            detail: None,
            cause: Cause::Config,
        };
        let pem = std::fs::read(file).map_err(|e| unusable(format!("cannot be read: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| unusable(format!("is not a PEM bundle: {e}")))?;
        if certs.is_empty() {
            return Err(unusable("holds no PEM certificate".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// A failed call's certificate problem, in plain words; `None` when it was not one.
pub(super) fn certificate_failure(err: &reqwest::Error) -> Option<CloudError> {
    let host = err
        .url()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the cloud".into());
    classify(&error_chain(err), &host)
}

/// The same, from the error's text (OpenSSL's verification result comes last, in
/// parentheses: "certificate verify failed: … (unable to get local issuer certificate)").
fn classify(chain: &str, host: &str) -> Option<CloudError> {
    let lower = chain.to_ascii_lowercase();
    if !lower.contains("certificate verify failed") {
        return None;
    }
    let reason = chain
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(r, _)| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let summary = if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") {
        format!(
            "the certificate of {host} is not valid for that name: it was issued for another \
             host (use the host name the certificate names in the cloud's URL)"
        )
    } else if lower.contains("certificate has expired") {
        format!("the certificate of {host} has expired (the cloud's operator must renew it)")
    } else {
        format!(
            "the certificate of {host} is not trusted: {} (add the PEM of the CA that signed it \
             to cloud.ca_file, or to the ca_file of a profile for {host})",
            reason.as_deref().unwrap_or("verification failed")
        )
    };
    Some(CloudError {
        summary,
        detail: Some(super::error::clip(chain.to_string())),
        cause: Cause::Config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CloudProfile, CloudSettings};

    #[test]
    fn the_global_ca_file_comes_first_then_each_matching_profiles() {
        let policy = AddressPolicy::from(CloudSettings {
            ca_file: Some("/etc/pimage/company.pem".into()),
            profiles: vec![CloudProfile {
                name: "lab".into(),
                hosts: vec!["*.lab.example.com".into()],
                ca_file: Some("/etc/pimage/lab.pem".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let k = url::Url::parse("https://keystone.lab.example.com").unwrap();
        let g = url::Url::parse("https://glance.lab.example.com").unwrap();
        let other = url::Url::parse("https://glance.example.org").unwrap();
        assert_eq!(
            ca_files(&policy, &[&k, &g]),
            vec![
                PathBuf::from("/etc/pimage/company.pem"),
                PathBuf::from("/etc/pimage/lab.pem")
            ]
        );
        assert_eq!(
            ca_files(&policy, &[&other]),
            vec![PathBuf::from("/etc/pimage/company.pem")]
        );
    }

    #[test]
    fn certificate_failures_are_permanent_and_said_plainly() {
        let openssl = |why: &str| {
            format!(
                "error sending request: client error (Connect): error:0A000086:SSL routines:\
                     tls_post_process_server_certificate:certificate verify failed:\
                     ../ssl/statem/statem_clnt.c:1889: ({why})"
            )
        };
        let untrusted = classify(
            &openssl("unable to get local issuer certificate"),
            "k.example.com",
        )
        .unwrap();
        assert_eq!(
            untrusted.summary,
            "the certificate of k.example.com is not trusted: unable to get local issuer certificate \
             (add the PEM of the CA that signed it to cloud.ca_file, or to the ca_file of a profile for k.example.com)"
        );
        assert!(!untrusted.is_transient());
        let expired = classify(&openssl("certificate has expired"), "k.example.com").unwrap();
        assert!(
            expired.summary.contains("has expired"),
            "{}",
            expired.summary
        );
        assert!(!expired.is_transient());
        let name = classify(&openssl("Hostname mismatch"), "127.0.0.1").unwrap();
        assert!(
            name.summary.contains("not valid for that name"),
            "{}",
            name.summary
        );
        assert!(classify("connection refused", "k").is_none());
    }

    #[test]
    fn an_unreadable_ca_file_is_a_permanent_configuration_error() {
        let e = trust(reqwest::Client::builder(), &["/nonexistent/ca.pem".into()]).unwrap_err();
        assert!(e.summary.contains("/nonexistent/ca.pem"), "{}", e.summary);
        assert!(!e.is_transient());
    }
}
