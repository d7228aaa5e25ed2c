//! Roo's service labels turned into routes: a pure function, unit-tested.
//!
//! `OriginHosts` (comma list) and/or `OriginHost`, `OriginPort`, `OriginScheme` (default
//! `https`), `DestinationHost` (default the service name), `DestinationPort` (required),
//! `DestinationScheme` (default `http`); each also under a `roo.` prefix, which wins. Service
//! labels (compose `deploy.labels`) win over container labels (compose `labels`).

use std::collections::{BTreeMap, HashMap};

use crate::routes::{normalize_host, Destination, RouteKey, Scheme};

/// Why a service's labels make no routes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("{label} is {value:?}: {reason}")]
    Invalid {
        label: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("DestinationPort is missing")]
    NoDestinationPort,
}

/// The labels of a service, looked up with Roo's precedence.
pub struct Labels<'a> {
    service: &'a HashMap<String, String>,
    container: &'a HashMap<String, String>,
}

impl<'a> Labels<'a> {
    pub fn new(
        service: &'a HashMap<String, String>,
        container: &'a HashMap<String, String>,
    ) -> Self {
        Labels { service, container }
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        let prefixed = format!("roo.{name}");
        [self.service, self.container]
            .into_iter()
            .find_map(|m| m.get(&prefixed).or_else(|| m.get(name)))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// True when the service asks roo for routes at all.
    pub fn wants_routes(&self) -> bool {
        self.get("OriginHosts").is_some() || self.get("OriginHost").is_some()
    }
}

/// The routes (key to value) that `service`'s labels describe; empty when it has no origin
/// label.
pub fn routes(service: &str, labels: &Labels<'_>) -> Result<BTreeMap<String, String>, LabelError> {
    let mut out = BTreeMap::new();
    if !labels.wants_routes() {
        return Ok(out);
    }
    let invalid = |label, value: &str, reason| LabelError::Invalid {
        label,
        value: value.to_string(),
        reason,
    };
    let scheme = |label: &'static str, default: Scheme| -> Result<Scheme, LabelError> {
        match labels.get(label) {
            None => Ok(default),
            Some(v) => Scheme::parse(&v.to_ascii_lowercase())
                .ok_or_else(|| invalid(label, v, "use http or https")),
        }
    };
    let port = |label: &'static str| -> Result<Option<u16>, LabelError> {
        labels
            .get(label)
            .map(|v| match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(invalid(label, v, "not a port number")),
            })
            .transpose()
    };
    let origin_scheme = scheme("OriginScheme", Scheme::Https)?;
    let origin_port = port("OriginPort")?.filter(|p| *p != origin_scheme.default_port());
    let destination_scheme = scheme("DestinationScheme", Scheme::Http)?;
    let destination_port = port("DestinationPort")?.ok_or(LabelError::NoDestinationPort)?;
    let destination_host = labels.get("DestinationHost").unwrap_or(service);
    let destination = format!("{destination_scheme}://{destination_host}:{destination_port}");
    Destination::parse(&destination)
        .map_err(|_| invalid("DestinationHost", destination_host, "not a host name"))?;
    let hosts = labels
        .get("OriginHosts")
        .into_iter()
        .flat_map(|v| v.split(','))
        .chain(labels.get("OriginHost"))
        .map(str::trim)
        .filter(|h| !h.is_empty());
    for host in hosts {
        let host =
            normalize_host(host).map_err(|_| invalid("OriginHosts", host, "not a host name"))?;
        let key = RouteKey {
            host,
            port: origin_port,
            scheme: origin_scheme,
        };
        out.insert(key.to_string(), destination.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn routes_of(
        service: &[(&str, &str)],
        container: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, LabelError> {
        let (s, c) = (map(service), map(container));
        routes("app_web", &Labels::new(&s, &c)).map(|m| m.into_iter().collect())
    }

    #[test]
    fn roo_readme_example() {
        let got = routes_of(
            &[],
            &[
                ("OriginHosts", "test.sfpl.io"),
                ("DestinationHost", "test_test"),
                ("DestinationScheme", "http"),
                ("DestinationPort", "80"),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![(
                "com.roo.host:test.sfpl.io:https".into(),
                "http://test_test:80".into()
            )]
        );
    }

    #[test]
    fn defaults_lists_ports_and_precedence() {
        let got = routes_of(
            &[
                ("roo.OriginHosts", "A.test, b.test"),
                ("OriginHost", "c.test"),
                ("OriginPort", "8443"),
                ("DestinationPort", "8080"),
            ],
            &[("OriginHosts", "ignored.test")],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                (
                    "com.roo.host:a.test:8443:https".into(),
                    "http://app_web:8080".into()
                ),
                (
                    "com.roo.host:b.test:8443:https".into(),
                    "http://app_web:8080".into()
                ),
                (
                    "com.roo.host:c.test:8443:https".into(),
                    "http://app_web:8080".into()
                ),
            ]
        );
        // The scheme's default port is left out of the key.
        let got = routes_of(
            &[
                ("OriginHost", "a.test"),
                ("OriginScheme", "HTTP"),
                ("OriginPort", "80"),
                ("DestinationPort", "80"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![(
                "com.roo.host:a.test:http".into(),
                "http://app_web:80".into()
            )]
        );
    }

    #[test]
    fn no_origin_no_routes_and_bad_labels_are_errors() {
        assert_eq!(
            routes_of(&[("DestinationPort", "80")], &[]).unwrap(),
            vec![]
        );
        assert_eq!(
            routes_of(&[("OriginHosts", "a.test")], &[]),
            Err(LabelError::NoDestinationPort)
        );
        for bad in [
            vec![("OriginHosts", "a.test"), ("DestinationPort", "http")],
            vec![("OriginHosts", "a.test"), ("DestinationPort", "70000")],
            vec![("OriginHosts", "bad host"), ("DestinationPort", "80")],
            vec![
                ("OriginHosts", "a.test"),
                ("DestinationPort", "80"),
                ("OriginScheme", "ftp"),
            ],
            vec![
                ("OriginHosts", "a.test"),
                ("DestinationPort", "80"),
                ("DestinationHost", "a b"),
            ],
        ] {
            assert!(routes_of(&bad, &[]).is_err(), "{bad:?}");
        }
    }
}
