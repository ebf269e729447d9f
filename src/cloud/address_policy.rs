//! The SSRF guard: which addresses pimage may call on a user's behalf, checked on URLs, on
//! every address a name resolves to (the resolver), and on every redirect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::CloudSettings;

/// Which addresses pimage may call on a user's behalf. Users name the Keystone (and Glance)
/// to call, so without a guard they could make workers call the cloud metadata service or
/// other internal endpoints, and read the answers back in error messages (SSRF).
///
/// Never allowed: link-local (169.254.0.0/16, the metadata service; fe80::/10), unspecified,
/// multicast and broadcast addresses. Loopback only with `allow_loopback` (development).
/// With `allowed_hosts` set, a URL's host must match one entry: a host name (`keystone.example.com`),
/// a wildcard (`*.example.com`), or an address or network (`10.0.0.0/8`). Checked on the URLs
/// users give (at publish time and before login), on every address a name resolves to (so
/// DNS cannot point a listed name elsewhere), and on every redirect.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    settings: CloudSettings,
}

impl From<CloudSettings> for AddressPolicy {
    fn from(settings: CloudSettings) -> AddressPolicy {
        AddressPolicy { settings }
    }
}

impl AddressPolicy {
    /// How long one cloud call may take (the settings travel with the policy).
    pub(super) fn call_timeout(&self) -> std::time::Duration {
        self.settings.call_timeout
    }

    pub fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    /// `Err` says, in words for the user, why `url` may not be called.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let refuse = |why: &str| Err(format!("'{url}' {why}"));
        if !matches!(url.scheme(), "http" | "https") {
            return refuse("is not an http or https URL");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("must not carry credentials");
        }
        let ip = match url.host() {
            None => return refuse("has no host"),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = ip {
            self.check_ip(ip).map_err(|why| format!("'{url}' {why}"))?;
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.settings.allowed_hosts.is_empty()
            && !self
                .settings
                .allowed_hosts
                .iter()
                .any(|entry| host_matches(entry, &host, ip))
        {
            return refuse("is not on this service's list of allowed cloud hosts");
        }
        Ok(())
    }

    /// `Err` says why the address may not be called.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let ip = match ip {
            // `::a.b.c.d` (deprecated, RFC 4291): some stacks reach a.b.c.d through it.
            IpAddr::V6(v6)
                if v6.segments()[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() =>
            {
                return Err(format!(
                    "is an IPv4-compatible IPv6 address ({v6}): pimage never calls those"
                ));
            }
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let forbidden = match ip {
            IpAddr::V4(v4) => {
                v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
            }
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.is_multicast()
            }
        };
        if forbidden {
            return Err(format!("is a link-local, multicast or unspecified address ({ip}): pimage never calls those"));
        }
        if ip.is_loopback() && !self.settings.allow_loopback {
            return Err(format!(
                "is a loopback address ({ip}): not allowed on this service"
            ));
        }
        Ok(())
    }
}

/// Does an `allowed_hosts` entry admit `host` (lower case; `ip` when it is an address)?
pub(super) fn host_matches(entry: &str, host: &str, ip: Option<IpAddr>) -> bool {
    let entry = entry.trim().to_ascii_lowercase();
    if let Some(suffix) = entry.strip_prefix("*.") {
        return host.ends_with(&format!(".{suffix}"));
    }
    let (Some(ip), Some(network)) = (ip, parse_network(&entry)) else {
        return entry == host;
    };
    let (base, bits) = network;
    match (ip, base) {
        (IpAddr::V4(ip), IpAddr::V4(base)) => {
            let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(base)) => {
            let mask = u128::MAX.checked_shl(128 - bits.min(128)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(base) & mask
        }
        _ => false,
    }
}

/// `10.0.0.0/8`, or a single address as a full-length network.
fn parse_network(entry: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = entry.split_once('/').unwrap_or((entry, ""));
    let addr: IpAddr = addr.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() {
        full
    } else {
        bits.parse().ok()?
    };
    (bits <= full).then_some((addr, bits))
}

/// Why the resolver refused a name, kept for the error message: the failed call's error
/// only says that resolving failed.
pub(super) type Refusal = Arc<std::sync::Mutex<Option<String>>>;

/// Resolves names, keeping only the addresses the policy allows.
pub(super) struct GuardedResolver {
    pub(super) policy: AddressPolicy,
    pub(super) refusal: Refusal,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let refusal = self.refusal.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why_not = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        why_not = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = format!(
                    "host '{host}' {}",
                    why_not.unwrap_or_else(|| "resolves to no address".into())
                );
                *refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_policy_keeps_users_away_from_internal_endpoints() {
        let strict = AddressPolicy::default();
        let url = |u: &str| url::Url::parse(u).unwrap();
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:5000",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:5000",
            "http://[::127.0.0.1]:5000",
            "http://[::169.254.169.254]/",
            "http://[::ffff:0.0.0.0]:5000",
            "http://[::]:5000",
            "http://127.0.0.1:5000",
            "http://[::1]:5000",
            "http://user:pw@keystone.example.com",
            "file:///etc/passwd",
        ] {
            assert!(strict.check_url(&url(bad)).is_err(), "{bad}");
        }
        for good in [
            "https://keystone.example.com:5000/v3",
            "http://10.1.2.3:5000",
            "http://[2001:db8::1]:9292",
        ] {
            assert!(strict.check_url(&url(good)).is_ok(), "{good}");
        }
        let dev = AddressPolicy::from(CloudSettings {
            allow_loopback: true,
            ..Default::default()
        });
        assert!(dev.check_url(&url("http://127.0.0.1:5000")).is_ok());
        for bad in [
            "http://169.254.169.254/",
            "http://[fe80::a9fe:a9fe]/",
            "http://0.0.0.0:5000",
            "http://[::127.0.0.1]:5000",
            "http://224.0.0.1/",
        ] {
            assert!(dev.check_url(&url(bad)).is_err(), "dev: {bad}");
        }
        assert!(dev
            .check_url(&url("http://[::ffff:127.0.0.1]:5000"))
            .is_ok());

        let listed = AddressPolicy::from(CloudSettings {
            allowed_hosts: vec![
                "*.cloud.example.com".into(),
                "10.0.0.0/8".into(),
                "keystone.example.org".into(),
            ],
            ..Default::default()
        });
        assert!(listed
            .check_url(&url("https://k.cloud.example.com"))
            .is_ok());
        assert!(listed.check_url(&url("http://10.200.0.5:5000")).is_ok());
        assert!(listed
            .check_url(&url("http://KEYSTONE.example.org"))
            .is_ok());
        assert!(listed
            .check_url(&url("http://cloud.example.com.evil.net"))
            .is_err());
        assert!(listed.check_url(&url("http://11.0.0.1")).is_err());
        assert!(listed.check_url(&url("http://example.org")).is_err());
    }
}
