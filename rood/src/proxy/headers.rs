//! Request and response headers across the proxy: hop-by-hop headers go, forwarding headers
//! come.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::routes::middleware::FieldChange;
use crate::routes::Scheme;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A field the proxy reads or leaves out, known by its name in any case; the others are
/// [`Known::Other`]. Read from the bytes of a head, before (or without) a header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Connection,
    TransferEncoding,
    ContentLength,
    Expect,
    Date,
    Upgrade,
    /// Another field of one connection, never forwarded (RFC 9110 7.6.1): Keep-Alive,
    /// Proxy-Connection, TE, Trailer, Proxy-Authenticate, Proxy-Authorization.
    Hop,
    Other,
}

impl Known {
    pub fn of(name: &[u8]) -> Known {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Known::Hop,
            4 if is(b"date") => Known::Date,
            6 if is(b"expect") => Known::Expect,
            7 if is(b"upgrade") => Known::Upgrade,
            7 if is(b"trailer") => Known::Hop,
            10 if is(b"connection") => Known::Connection,
            10 if is(b"keep-alive") => Known::Hop,
            14 if is(b"content-length") => Known::ContentLength,
            16 if is(b"proxy-connection") => Known::Hop,
            17 if is(b"transfer-encoding") => Known::TransferEncoding,
            18 if is(b"proxy-authenticate") => Known::Hop,
            19 if is(b"proxy-authorization") => Known::Hop,
            _ => Known::Other,
        }
    }
}

/// Whether a field belongs to one connection (those its `Connection` header names aside);
/// `Upgrade` does not in an upgrade.
pub fn hop_by_hop(name: Known, upgrade: bool) -> bool {
    match name {
        Known::Connection | Known::TransferEncoding | Known::Hop => true,
        Known::Upgrade => !upgrade,
        _ => false,
    }
}

/// Whether a `Connection` option names a field to remove too (its own options do not).
pub fn names_field(option: &[u8], upgrade: bool) -> bool {
    !(option.is_empty()
        || option.eq_ignore_ascii_case(b"close")
        || option.eq_ignore_ascii_case(b"keep-alive")
        || (upgrade && option.eq_ignore_ascii_case(b"upgrade")))
}

/// The names of the fields that `Connection` header `values` name, to remove too.
pub fn named_by_connection<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    upgrade: bool,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(move |t| names_field(t, upgrade))
}

/// Removes hop-by-hop headers (keeping `Upgrade` and `Connection: upgrade` when `upgrade`).
/// One pass over the names present (a handful), rather than a lookup for every name that could be.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| hop_by_hop(Known::of(name.as_str().as_bytes()), upgrade))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        // Its own options name no header (`keep-alive` is doomed already): not made into names.
        let values = headers.get_all(header::CONNECTION).into_iter();
        doomed.extend(
            named_by_connection(values.map(HeaderValue::as_bytes), upgrade)
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

/// The forwarding headers of a request: X-Forwarded-For (appended to what the client sent),
/// X-Forwarded-Proto, X-Forwarded-Host and X-Real-IP, and the client's Host kept; then the
/// route's own request fields (its `headers` middleware). Set in the
/// header map of a request that hyper sends ([`Forwarded::apply`]), written straight into the
/// head of one the pool sends ([`Forwarded::write`]): the same fields either way.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    client: &'a str,
    scheme: Scheme,
    /// None when not header text (the client's Host then goes on as it was).
    host: Option<&'a str>,
    /// The route's own fields, set (Some) or removed (None), one change a name: they take the
    /// place of the client's and of the forwarding fields of the same name.
    changes: &'a [FieldChange],
}

impl<'a> Forwarded<'a> {
    pub fn new(
        client: &'a IpText,
        scheme: Scheme,
        host: &'a str,
        changes: &'a [FieldChange],
    ) -> Forwarded<'a> {
        let text = host
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        Forwarded {
            client: client.as_str(),
            scheme,
            host: text.then_some(host),
            changes,
        }
    }

    /// Whether the route changes the field `name`.
    fn changed(&self, name: &HeaderName) -> bool {
        self.changes.iter().any(|(n, _)| n == name)
    }

    /// Whether the field `name` is one these set (the client's own value does not go on).
    pub fn sets(&self, name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_REAL_IP
            || (self.host.is_some() && (*name == X_FORWARDED_HOST || *name == header::HOST))
            || self.changed(name)
    }

    /// The client's chain (`prior`, the first X-Forwarded-For it sent) with its address added.
    fn chain(&self, prior: Option<&HeaderValue>) -> std::borrow::Cow<'a, str> {
        match prior.and_then(|v| v.to_str().ok()).map(str::trim) {
            Some(prior) if !prior.is_empty() => format!("{prior}, {}", self.client).into(),
            _ => self.client.into(),
        }
    }

    /// Sets the fields in `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let Ok(ip) = HeaderValue::from_str(self.client) else {
            return;
        };
        if let Ok(chain) = HeaderValue::from_str(&self.chain(headers.get(X_FORWARDED_FOR))) {
            headers.insert(X_FORWARDED_FOR, chain);
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(self.scheme.as_str()),
        );
        if let Some(Ok(v)) = self.host.map(HeaderValue::from_str) {
            headers.insert(X_FORWARDED_HOST, v.clone());
            headers.insert(header::HOST, v);
        }
        headers.insert(X_REAL_IP, ip);
        apply_changes(headers, self.changes);
    }

    /// Writes the fields as a head's lines; `prior`: the client's first X-Forwarded-For.
    pub fn write(&self, out: &mut Vec<u8>, prior: Option<&HeaderValue>) {
        let mut line = |name: &HeaderName, value: &str| {
            if !self.changed(name) {
                write_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        };
        line(&X_FORWARDED_FOR, &self.chain(prior));
        line(&X_FORWARDED_PROTO, self.scheme.as_str());
        if let Some(host) = self.host {
            line(&X_FORWARDED_HOST, host);
            line(&header::HOST, host);
        }
        line(&X_REAL_IP, self.client);
        for (name, value) in self.changes {
            if let Some(v) = value {
                write_field(out, name.as_str().as_bytes(), v.as_bytes());
            }
        }
    }
}

/// Sets (Some) or removes (None) fields of `headers`, in order: a set field replaces every
/// value of its name.
pub fn apply_changes(headers: &mut HeaderMap, changes: &[FieldChange]) {
    for (name, value) in changes {
        match value {
            Some(v) => headers.insert(name.clone(), v.clone()),
            None => headers.remove(name),
        };
    }
}

/// Appends a header field line, `name: value`.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    fn fields_are_known_by_name_in_any_case() {
        for (name, known) in [
            (&b"Content-LENGTH"[..], Known::ContentLength),
            (b"content-type", Known::Other),
            (b"Transfer-Encoding", Known::TransferEncoding),
            (b"KEEP-ALIVE", Known::Hop),
            (b"te", Known::Hop),
            (b"tf", Known::Other),
            (b"Upgrade", Known::Upgrade),
        ] {
            assert_eq!(Known::of(name), known, "{}", String::from_utf8_lossy(name));
        }
        assert!(!hop_by_hop(Known::Upgrade, true) && hop_by_hop(Known::Upgrade, false));
        assert!(hop_by_hop(Known::Connection, true) && !hop_by_hop(Known::Date, false));
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
        let client = IpText::new("10.0.0.1".parse().unwrap());
        let forwarded = Forwarded::new(&client, Scheme::Https, "Example.com", &[]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(" 203.0.113.9 "));
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert(header::HOST, HeaderValue::from_static("example.com:443"));
        h.insert("x-real-ip", HeaderValue::from_static("1.1.1.1"));
        let prior = h.get("x-forwarded-for").cloned();
        forwarded.apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "Example.com");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h[header::HOST], "Example.com");
        // Written into a head: the same fields.
        let mut head = Vec::new();
        forwarded.write(&mut head, prior.as_ref());
        let mut written = HeaderMap::new();
        for line in std::str::from_utf8(&head).unwrap().split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(forwarded.sets(&name), "{name}");
            written.append(name, HeaderValue::from_str(value).unwrap());
        }
        assert_eq!(written, h);

        let client = IpText::new("::ffff:255.255.255.255".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("  "));
        Forwarded::new(&client, Scheme::Http, "a.b", &[]).apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "::ffff:255.255.255.255");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(
            IpText::new(long.parse().unwrap()).as_str(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        // A host that is not header text leaves the client's Host as it was.
        let odd = Forwarded::new(&client, Scheme::Http, "a\u{7f}b", &[]);
        assert!(
            !odd.sets(&header::HOST) && odd.sets(&header::HeaderName::from_static("x-real-ip"))
        );
    }

    #[test]
    fn the_route_s_own_fields_take_the_place_of_the_others() {
        let client = IpText::new("10.0.0.1".parse().unwrap());
        let changes = [
            (
                HeaderName::from_static("x-from"),
                Some(HeaderValue::from_static("roo")),
            ),
            (header::HOST, Some(HeaderValue::from_static("internal.svc"))),
            (HeaderName::from_static("x-secret"), None),
        ];
        let forwarded = Forwarded::new(&client, Scheme::Http, "a.b", &changes);
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-from", HeaderValue::from_static("client"));
        h.insert("x-kept", HeaderValue::from_static("2"));
        for name in ["x-secret", "x-from", "host"] {
            assert!(forwarded.sets(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!forwarded.sets(&HeaderName::from_static("x-kept")));
        let mut head = Vec::new();
        forwarded.write(&mut head, None);
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("x-from: roo\r\n"), "{head}");
        assert!(head.contains("host: internal.svc\r\n"), "{head}");
        let hosts = head.lines().filter(|l| l.starts_with("host: ")).count();
        assert_eq!(hosts, 1, "{head}");
        assert!(head.contains("x-forwarded-host: a.b\r\n"), "{head}");
        forwarded.apply(&mut h);
        assert_eq!(h["x-from"], "roo");
        assert_eq!(h[header::HOST], "internal.svc");
        assert!(h.get("x-secret").is_none());
        assert_eq!(h["x-kept"], "2");
    }
}
