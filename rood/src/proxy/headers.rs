//! Request and response headers across the proxy: hop-by-hop headers go, forwarding headers
//! come.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::routes::Scheme;

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers (keeping `Upgrade` and `Connection: upgrade` when `upgrade`).
/// One pass over the names present (a handful), rather than a lookup for every name that could be.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || *name == header::PROXY_AUTHORIZATION
                || (!upgrade && *name == header::UPGRADE)
        })
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        // Its own options name no header (`keep-alive` is doomed already): not made into names.
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|t| {
                    !(t.is_empty()
                        || t.eq_ignore_ascii_case(b"close")
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || (upgrade && t.eq_ignore_ascii_case(b"upgrade")))
                })
                .filter_map(|t| HeaderName::from_bytes(t).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A client's address as header text, written once per connection (formatting it for every
/// request cost more than the rest of the forwarding headers).
#[derive(Debug, Clone, Copy)]
pub struct IpText {
    len: u8,
    text: [u8; 45],
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = [0u8; 45];
        let mut rest = &mut text[..];
        // 45 bytes hold the longest address text (IPv6 with an IPv4 tail).
        let _ = std::io::Write::write_fmt(&mut rest, format_args!("{ip}"));
        let len = (45 - rest.len()) as u8;
        IpText { len, text }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or("")
    }
}

/// Adds X-Forwarded-For (appended to what the client sent), X-Forwarded-Proto,
/// X-Forwarded-Host and X-Real-IP, and keeps the client's Host.
pub fn add_forwarded(headers: &mut HeaderMap, client: &IpText, scheme: Scheme, host: &str) {
    let client = client.as_str();
    let Ok(ip) = HeaderValue::from_str(client) else {
        return;
    };
    let chain = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            HeaderValue::from_str(&format!("{}, {client}", prior.trim())).ok()
        }
        _ => Some(ip.clone()),
    };
    if let Some(v) = chain {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST, v.clone());
        headers.insert(header::HOST, v);
    }
    headers.insert(X_REAL_IP, ip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret,close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static(" x-other "));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("a"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-hop"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        add_forwarded(
            &mut h,
            &IpText::new("10.0.0.1".parse().unwrap()),
            Scheme::Https,
            "Example.com",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "Example.com");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h[header::HOST], "Example.com");
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &IpText::new("::ffff:255.255.255.255".parse().unwrap()),
            Scheme::Http,
            "a.b",
        );
        assert_eq!(h["x-forwarded-for"], "::ffff:255.255.255.255");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(
            IpText::new(long.parse().unwrap()).as_str(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }
}
