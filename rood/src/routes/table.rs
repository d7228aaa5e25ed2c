//! The routing table: a pure data structure with a pure lookup. The proxy reads an immutable
//! snapshot of it on every request; [`crate::feed`] makes the next snapshot from the last one.

use std::sync::Arc;

use super::{lowercase, split_host_port, Route, RouteKey, Scheme};

/// An immutable routing table. A persistent map: the next snapshot shares all but the changed
/// host's path of nodes with the last one, so a change costs O(log n) whatever the table's size.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// By host name (lowercase; `*.` for a wildcard), each with its few routes by port and
    /// scheme: a lookup borrows the request's host, with no key to build.
    hosts: Hosts,
    /// Routes in all (a host has one to a few).
    len: usize,
    /// The routes with health checks, by key: what the checker goes through.
    checked: imbl::GenericHashMap<
        String,
        Arc<Route>,
        ahash::RandomState,
        imbl::shared_ptr::DefaultSharedPtr,
    >,
}

type Hosts = imbl::GenericHashMap<
    Box<str>,
    HostRoutes,
    ahash::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// One host's routes, by port (None: the scheme's default) and scheme.
type HostRoutes = Arc<[(Option<u16>, Scheme, Arc<Route>)]>;

impl RouteTable {
    pub fn insert(&mut self, key: RouteKey, route: Arc<Route>) {
        if route.health.is_some() {
            self.checked.insert(key.to_string(), route.clone());
        } else if !self.checked.is_empty() {
            self.checked.remove(&key.to_string());
        }
        let mut routes: Vec<_> = self
            .hosts
            .get(key.host.as_str())
            .map(|r| r.to_vec())
            .unwrap_or_default();
        match routes
            .iter_mut()
            .find(|(port, scheme, _)| *port == key.port && *scheme == key.scheme)
        {
            Some(slot) => slot.2 = route,
            None => {
                routes.push((key.port, key.scheme, route));
                self.len += 1;
            }
        }
        self.hosts.insert(key.host.into(), routes.into());
    }

    pub fn remove(&mut self, key: &RouteKey) {
        if !self.checked.is_empty() {
            self.checked.remove(&key.to_string());
        }
        let Some(routes) = self.hosts.get(key.host.as_str()) else {
            return;
        };
        let kept: Vec<_> = routes
            .iter()
            .filter(|(port, scheme, _)| !(*port == key.port && *scheme == key.scheme))
            .cloned()
            .collect();
        self.len -= routes.len() - kept.len();
        if kept.is_empty() {
            self.hosts.remove(key.host.as_str());
        } else {
            self.hosts.insert(key.host.as_str().into(), kept.into());
        }
    }

    /// The routes with health checks.
    pub fn checked(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.checked.values()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every host with an https route: the hosts that should have a certificate.
    pub fn https_hosts(&self) -> std::collections::BTreeSet<String> {
        self.hosts
            .iter()
            .filter(|(_, routes)| routes.iter().any(|(_, s, _)| *s == Scheme::Https))
            .map(|(host, _)| host.to_string())
            .collect()
    }

    /// The route for a request to `host` (as in the Host header, maybe with a port) arriving on
    /// `scheme`: `host:port:scheme` first, then `host:scheme`, then the wildcard one label up.
    pub fn lookup(&self, host: &str, scheme: Scheme) -> Option<&Arc<Route>> {
        let (name, port) = split_host_port(host)?;
        self.find(name, port, scheme)
    }

    /// [`RouteTable::lookup`] of a host already split into its name and port.
    pub fn find(&self, name: &str, port: Option<u16>, scheme: Scheme) -> Option<&Arc<Route>> {
        let name = name.trim_end_matches('.');
        let name = lowercase(name);
        let port = port.filter(|p| *p != scheme.default_port());
        let find = |h: &str| -> Option<&Arc<Route>> {
            let routes = self.hosts.get(h)?;
            let on = |p: Option<u16>| {
                routes
                    .iter()
                    .find(|(port, s, _)| *port == p && *s == scheme)
                    .map(|(_, _, r)| r)
            };
            port.and_then(|_| on(port)).or_else(|| on(None))
        };
        if let Some(r) = find(&name) {
            return Some(r);
        }
        let (_, parent) = name.split_once('.')?;
        find(&format!("*.{parent}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> RouteTable {
        let mut t = RouteTable::default();
        for (k, v) in entries {
            t.insert(
                RouteKey::parse(k).unwrap(),
                Arc::new(Route::parse(v.as_bytes()).unwrap()),
            );
        }
        t
    }

    fn dest(t: &RouteTable, host: &str, scheme: Scheme) -> Option<String> {
        t.lookup(host, scheme)
            .map(|r| r.target.backends[0].destinations[0].to_string())
    }

    #[test]
    fn lookup_is_exact_case_insensitive_with_port_fallback() {
        let t = table(&[
            ("com.roo.host:example.com:https", "http://web:80"),
            ("com.roo.host:example.com:8443:https", "http://alt:80"),
            ("com.roo.host:example.com:http", "http://plain:80"),
        ]);
        assert_eq!(
            dest(&t, "EXAMPLE.com", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com:443", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com.", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com:8443", Scheme::Https).as_deref(),
            Some("http://alt:80")
        );
        // A port with no route of its own falls back to the host's route.
        assert_eq!(
            dest(&t, "example.com:9000", Scheme::Https).as_deref(),
            Some("http://web:80")
        );
        assert_eq!(
            dest(&t, "example.com", Scheme::Http).as_deref(),
            Some("http://plain:80")
        );
        // Exact only: Roo's prefix check let these through.
        assert_eq!(dest(&t, "example.co", Scheme::Https), None);
        assert_eq!(dest(&t, "example.com.evil.net", Scheme::Https), None);
        assert_eq!(dest(&t, "www.example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "example.com:notaport", Scheme::Https), None);
    }

    #[test]
    fn wildcards_match_one_label() {
        let t = table(&[
            ("com.roo.host:*.example.com:https", "http://any:80"),
            ("com.roo.host:api.example.com:https", "http://api:80"),
        ]);
        assert_eq!(
            dest(&t, "www.example.com", Scheme::Https).as_deref(),
            Some("http://any:80")
        );
        assert_eq!(
            dest(&t, "API.example.com", Scheme::Https).as_deref(),
            Some("http://api:80")
        );
        assert_eq!(dest(&t, "example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "a.b.example.com", Scheme::Https), None);
        assert_eq!(dest(&t, "www.example.com", Scheme::Http), None);
    }
}
