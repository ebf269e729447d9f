//! Glance quotas: a refusal (413, or a 403 that names a quota or limit) made permanent and
//! told with the quota and its numbers; and the check before streaming against
//! `GET /v2/info/usage` (Keystone unified limits), where the cloud exposes it.

use reqwest::header::ACCEPT;
use serde::Deserialize;

use super::Glance;
use crate::cloud::answer::{json, within};
use crate::cloud::error::{Cause, CloudError};

/// Makes a quota refusal permanent (a 413; a 403 whose answer names a quota or a limit),
/// with Glance's message (which holds the quota and the numbers) in the summary.
pub(super) fn quota_refusal(e: CloudError) -> CloudError {
    let Cause::Http { status, .. } = e.cause else {
        return e;
    };
    let message = e
        .detail
        .as_deref()
        .map(|d| d.split_once(": ").map_or(d, |(_, m)| m).trim().to_string())
        .unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let names_quota = lower.contains("quota") || lower.contains("limit");
    if status == 413 || (status == 403 && names_quota) {
        return CloudError {
            summary: format!(
                "Glance refused the image: the project's quota is exceeded ({})",
                if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    message
                }
            ),
            detail: e.detail,
            cause: Cause::Http {
                status: 413,
                retry_after: None,
            },
        };
    }
    e
}

#[derive(Debug, Deserialize)]
struct UsageAnswer {
    usage: std::collections::BTreeMap<String, Usage>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub(super) struct Usage {
    limit: i64,
    usage: i64,
}

const MIB: u64 = 1 << 20;

/// Whether a new image of `bytes` fits the project's quotas in `usage`; `Err` names the
/// quota and the numbers.
fn fits(
    usage: &std::collections::BTreeMap<String, Usage>,
    bytes: u64,
    staged: bool,
) -> Result<(), String> {
    // Whole MiB, rounded down, as Glance counts its own check.
    let mib = (bytes / MIB) as i64;
    let over = |name: &str, need: i64| {
        usage
            .get(name)
            .filter(|u| u.limit >= 0 && u.usage + need > u.limit)
            .copied()
    };
    if let Some(u) = over("image_size_total", mib) {
        return Err(format!(
            "the image ({mib} MiB) does not fit the project's Glance quota image_size_total: \
             {} MiB used of {} MiB",
            u.usage, u.limit
        ));
    }
    if staged {
        if let Some(u) = over("image_stage_total", mib) {
            return Err(format!(
                "the image ({mib} MiB) does not fit the project's Glance quota image_stage_total: \
                 {} MiB staged of {} MiB",
                u.usage, u.limit
            ));
        }
    }
    if let Some(u) = over("image_count_total", 1) {
        return Err(format!(
            "the project's Glance quota image_count_total is used up: {} images of {}",
            u.usage, u.limit
        ));
    }
    if let Some(u) = over("image_count_uploading", 1) {
        return Err(format!(
            "the project's Glance quota image_count_uploading is used up: {} uploads of {}",
            u.usage, u.limit
        ));
    }
    Ok(())
}

impl Glance {
    /// Refuses at once (permanent) an image that cannot fit the project's quotas, when
    /// Glance exposes them (`GET /v2/info/usage`); a cloud without it is not checked.
    pub async fn check_quota(&self, bytes: u64, staged: bool) -> Result<(), CloudError> {
        let url = self.url(&["info", "usage"]);
        let usage = within(self.timeout(), "Glance, reading the quota usage", async {
            let response = self
                .send(
                    "could not reach Glance to read the quota usage",
                    |c, token| {
                        c.get(url.clone())
                            .header("x-auth-token", token)
                            .header(ACCEPT, "application/json")
                    },
                )
                .await?;
            // 404 (an older Glance) or another refusal: nothing to check against. A 5xx is
            // transient, like any other.
            if response.status().is_client_error() {
                return Ok(None);
            }
            let response = crate::cloud::error::check(response, |s| {
                format!("Glance failed to tell the quota usage (HTTP {s})")
            })
            .await?;
            json::<UsageAnswer>(response, "Glance answered the quota usage")
                .await
                .map(|a| Some(a.usage))
        })
        .await?;
        match usage.map(|u| fits(&u, bytes, staged)) {
            Some(Err(summary)) => Err(CloudError {
                summary,
                detail: None,
                cause: Cause::Http {
                    status: 413,
                    retry_after: None,
                },
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(pairs: &[(&str, i64, i64)]) -> std::collections::BTreeMap<String, Usage> {
        pairs
            .iter()
            .map(|(n, limit, usage)| {
                (
                    n.to_string(),
                    Usage {
                        limit: *limit,
                        usage: *usage,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn an_image_larger_than_the_room_left_is_refused_with_the_numbers() {
        let u = usage(&[("image_size_total", 2, 1), ("image_count_total", 100, 3)]);
        let e = fits(&u, 3 * MIB, false).unwrap_err();
        assert!(
            e.contains("3 MiB") && e.contains("1 MiB used of 2 MiB"),
            "{e}"
        );
        assert!(fits(&u, MIB, false).is_ok());
        // -1: unlimited
        assert!(fits(&usage(&[("image_size_total", -1, 50)]), 99 * MIB, false).is_ok());
        let staged = usage(&[("image_stage_total", 1, 0)]);
        assert!(fits(&staged, 2 * MIB, false).is_ok());
        assert!(fits(&staged, 2 * MIB, true)
            .unwrap_err()
            .contains("image_stage_total"));
        let count = usage(&[("image_count_total", 3, 3)]);
        assert!(fits(&count, 1, false)
            .unwrap_err()
            .contains("3 images of 3"));
    }

    #[test]
    fn quota_refusals_are_permanent_and_say_so() {
        let refusal = |status: u16, message: &str| CloudError {
            summary: "Glance refused the upload (forbidden)".into(),
            detail: Some(format!("HTTP {status} Forbidden: {message}")),
            cause: Cause::Http {
                status,
                retry_after: None,
            },
        };
        let e = quota_refusal(refusal(
            413,
            "Project abc is over a limit for [Resource image_size_total is over limit of 1 due to current usage 2 and delta 0]",
        ));
        assert!(e.summary.contains("quota is exceeded"), "{}", e.summary);
        assert!(
            e.summary
                .contains("image_size_total is over limit of 1 due to current usage 2"),
            "{}",
            e.summary
        );
        assert!(!e.is_transient());
        let e = quota_refusal(refusal(
            403,
            "Denying attempt to upload image because it exceeds the quota: 3 bytes remaining",
        ));
        assert!(e.summary.contains("3 bytes remaining"), "{}", e.summary);
        let plain = quota_refusal(refusal(
            403,
            "You are not authorized to complete upload_image action.",
        ));
        assert_eq!(plain.summary, "Glance refused the upload (forbidden)");
    }
}
