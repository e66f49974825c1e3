//! HTTP checks of SmokeTest stages, run by Capstan itself, as Argo Rollouts' web metric
//! provider does.
//!
//! Capstan's network position (inside the cluster, next to the API server, Vault and
//! the cloud's metadata service) makes a tenant's URL a server-side request forgery
//! risk. So a check reaches only what the administrator allow-lists
//! ([`AllowList`], `--http-check-allow`): host names (`shop.example.com`,
//! `*.staging.example.com`) and address ranges (`10.20.0.0/16`). The URL's host is
//! resolved first and every address it resolves to is checked: a listed name whose
//! address is loopback, link-local (the metadata service 169.254.169.254 included),
//! unspecified or multicast is refused unless that address's range is listed itself.
//! The request then goes to the checked address (no second resolution a DNS rebinding
//! could change), redirects are not followed, and only pass or fail and the status code
//! are reported: no response body reaches status, Events or logs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::crd::{HttpCheck, HttpMethod};

/// The most of a body read for `bodyContains` and `jsonField`.
pub const MAX_BODY: usize = 1 << 20;

/// What checks may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Parses entries: a host name, `*.` and a domain (its subdomains), or an address
    /// range `a.b.c.d/n` / `x::/n` (a bare address is `/32` or `/128`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut list = Self::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (addr, prefix) = match e.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (e, None),
            };
            if let Ok(ip) = addr.parse::<IpAddr>() {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits =
                    match prefix {
                        None => max,
                        Some(p) => p.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                            format!("{e:?}: the prefix length must be 0 to {max}")
                        })?,
                    };
                list.nets.push((ip, bits));
            } else if prefix.is_none()
                && !e.is_empty()
                && e.trim_start_matches("*.")
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && !e.trim_start_matches("*.").contains('*')
            {
                list.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "{e:?} is neither a host name, `*.` and a domain, nor an address range"
                ));
            }
        }
        Ok(list)
    }

    fn host_listed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => *h == host,
        })
    }

    fn ip_listed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, bits)| in_net(ip, *net, *bits))
    }

    /// Why `ip` (an address `host` resolved to) may not be reached, or `None`.
    pub fn refusal(&self, host: &str, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if self.ip_listed(ip) {
            return None;
        }
        if let Some(kind) = special(ip) {
            return Some(format!(
                "{host} resolves to {ip}, a {kind} address, which is not allow-listed"
            ));
        }
        if self.host_listed(host) {
            return None;
        }
        Some(format!(
            "{host} ({ip}) is not allow-listed for HTTP checks (--http-check-allow)"
        ))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What kind of address no listed host name may resolve to.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (cloud metadata)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        // fe80::/10, and AWS's IPv6 metadata address fd00:ec2::254.
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        IpAddr::V6(v6) if v6.segments()[0] == 0xfd00 && v6.segments()[1] == 0x0ec2 => {
            Some("cloud metadata")
        }
        _ => None,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The outcome of one request: `Ok(status)` when it answered as expected, `Err` with
/// why not (the status code and which expectation failed; never the body).
pub async fn run(
    check: &HttpCheck,
    url: &str,
    json_equals: Option<&str>,
    headers: &[(String, String)],
    allow: &AllowList,
) -> Result<u16, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url}: only http and https are checked"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{url}: credentials in URLs are not accepted"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{host} does not resolve: {e}"))?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(format!("{host} resolves to no address"));
    };
    if let Some(why) = addrs.iter().find_map(|a| allow.refusal(&host, a.ip())) {
        return Err(format!("refused: {why}"));
    }
    let timeout = check.timeout.duration().unwrap_or(Duration::from_secs(5));
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .no_proxy();
    if host.parse::<IpAddr>().is_err() {
        builder = builder.resolve(&host, first);
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let method = match check.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Head => reqwest::Method::HEAD,
    };
    let mut req = client.request(method, parsed.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        format!("{} {url} {what}", check.method.as_str())
    })?;
    let status = resp.status().as_u16();
    let expected = if check.expect_status.is_empty() {
        vec![200]
    } else {
        check.expect_status.clone()
    };
    if !expected.contains(&status) {
        return Err(format!(
            "{} {url} answered {status}, expected one of {expected:?}",
            check.method.as_str()
        ));
    }
    if check.body_contains.is_none() && json_equals.is_none() {
        return Ok(status);
    }
    let body = read_body(resp)
        .await
        .map_err(|e| format!("{url}: reading the body {e}"))?;
    if let Some(text) = &check.body_contains
        && !String::from_utf8_lossy(&body).contains(text.as_str())
    {
        return Err(format!(
            "{url} answered {status}, but the body does not contain the expected text"
        ));
    }
    if let (Some(field), Some(want)) = (&check.json_field, json_equals) {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| format!("{url} answered {status}, but the body is not JSON"))?;
        let got = field
            .path
            .split('.')
            .try_fold(&value, |v, key| match v {
                serde_json::Value::Array(items) => {
                    key.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                other => other.get(key),
            })
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        if got.as_deref() != Some(want) {
            return Err(format!(
                "{url} answered {status}, but JSON field {} {}",
                field.path,
                if got.is_some() {
                    "has another value"
                } else {
                    "is missing"
                }
            ));
        }
    }
    Ok(status)
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "failed".to_owned())? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

impl HttpMethod {
    /// `GET` or `HEAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
            .expect("valid")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn only_listed_hosts_and_ranges_are_reached() {
        let allow = list(&["shop.example.com", "*.staging.example.com", "10.20.0.0/16"]);
        assert_eq!(allow.refusal("shop.example.com", ip("203.0.113.7")), None);
        assert_eq!(
            allow.refusal("api.staging.example.com", ip("203.0.113.8")),
            None
        );
        assert_eq!(allow.refusal("internal", ip("10.20.3.4")), None);
        assert!(
            allow
                .refusal("evil.example.com", ip("203.0.113.9"))
                .is_some()
        );
        assert!(
            allow
                .refusal("staging.example.com", ip("203.0.113.9"))
                .is_some()
        );
        assert!(allow.refusal("internal", ip("10.21.0.1")).is_some());
    }

    #[test]
    fn listed_names_never_reach_loopback_or_metadata_addresses() {
        let allow = list(&["shop.example.com"]);
        for (addr, kind) in [
            ("169.254.169.254", "link-local"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("fd00:ec2::254", "metadata"),
            ("0.0.0.0", "unspecified"),
        ] {
            let why = allow.refusal("shop.example.com", ip(addr)).expect(addr);
            assert!(why.contains(kind), "{addr}: {why}");
        }
        // Unless the range itself is listed.
        let local = list(&["127.0.0.1/32"]);
        assert_eq!(local.refusal("localhost", ip("127.0.0.1")), None);
        assert!(local.refusal("localhost", ip("127.0.0.2")).is_some());
    }

    #[test]
    fn entries_parse_or_are_refused() {
        for bad in ["10.0.0.0/33", "*", "a*b.example.com", "http://x", "::/129"] {
            assert!(AllowList::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(AllowList::parse(&["".to_owned(), " ".to_owned()]).is_ok());
    }
}
