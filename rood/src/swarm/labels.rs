//! Roo's service labels turned into routes: pure functions, unit-tested.
//!
//! `OriginHosts` (comma list) and/or `OriginHost`, `OriginPort`, `OriginScheme` (default
//! `https`), `DestinationHost` (default the service name), `DestinationPort` (required),
//! `DestinationScheme` (default `http`); each also under a `roo.` prefix, which wins. Service
//! labels (compose `deploy.labels`) win over container labels (compose `labels`).
//!
//! A service gives each of its routes one backend ([`Share`]): named by `roo.backend` (default
//! the service's name), weighted by `roo.weight` (default 100), under `roo.path` (with
//! `roo.strip_prefix`) or the host's own, with a cohort from `roo.match.header` or
//! `roo.match.cookie` (`Name=value`). [`compose`] makes one route of every service's share of
//! it: two services naming the same host are two weighted backends of one route.
//!
//! `roo.rollout` (`steps:10,25,50,100;interval:60s`, and optionally `failure_limit:2`,
//! `min_requests:20`, `max_p99:500ms`, `min_success:99%`) makes the service's backend the
//! canary of a rollout ([`rollout_plan`]); while a route has such a share, its weights are the
//! rollout's, not the labels' ([`compose`]).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::routes::model::{valid_backend_name, BACKEND_NAME_RULE};
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
    #[error("roo.rollout is {value:?}: {reason}")]
    Rollout { value: String, reason: String },
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

    /// A label that only exists under `roo.` (names this short may mean other things bare).
    fn get_roo(&self, name: &'static str) -> Option<&'a str> {
        [self.service, self.container]
            .into_iter()
            .find_map(|m| m.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// True when the service asks roo for routes at all.
    pub fn wants_routes(&self) -> bool {
        self.get("OriginHosts").is_some() || self.get("OriginHost").is_some()
    }
}

/// What one service gives a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// The backend's name.
    pub backend: String,
    pub url: String,
    /// None: the label is not set (100).
    pub weight: Option<u32>,
    /// A path prefix, and whether it is stripped.
    pub path: Option<(String, bool)>,
    /// `("header" | "cookie", name, value)`.
    pub cohort: Option<(&'static str, String, String)>,
    /// The route's sticky cookie (`roo.sticky`: `true` for `roo_sticky`, or the name).
    pub sticky: Option<String>,
    /// The route's health check path (`roo.health.path`, the check's defaults otherwise).
    pub health: Option<String>,
    /// The middlewares of the backend's target (`roo.middlewares`: the JSON list).
    pub middlewares: Option<Value>,
    /// `roo.rollout`'s plan: the backend is a rollout's canary.
    pub rollout: Option<crate::rollout::Plan>,
}

impl Share {
    /// A share that Roo's plain URL says all of: alone on its route, it is stored as that URL.
    fn is_plain(&self, service: &str) -> bool {
        self.backend == service
            && self.weight.is_none()
            && self.path.is_none()
            && self.cohort.is_none()
            && self.sticky.is_none()
            && self.health.is_none()
            && self.middlewares.is_none()
            && self.rollout.is_none()
    }
}

/// A duration label's value in milliseconds: `500ms`, `60s`, `2m`, `1h`.
fn millis(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit = match &text[digits.len()..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The rollout plan that `roo.rollout`'s value gives `backend` as its canary: `name:value` pairs
/// split by `;`, checked as the API checks a plan.
pub fn rollout_plan(text: &str, backend: &str) -> Result<crate::rollout::Plan, String> {
    let mut plan = serde_json::Map::new();
    plan.insert("canary".into(), backend.into());
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once(':')
            .map(|(n, v)| (n.trim(), v.trim()))
            .ok_or_else(|| format!("{pair:?} is not name:value"))?;
        let bad = || format!("{name}: {value:?} is not {}", expected(name));
        let (field, v): (&str, Value) = match name {
            "steps" => {
                let steps: Result<Vec<u32>, _> =
                    value.split(',').map(|w| w.trim().parse::<u32>()).collect();
                ("steps", steps.map_err(|_| bad())?.into())
            }
            "interval" => ("interval_ms", millis(value).ok_or_else(bad)?.into()),
            "max_p99" => ("max_p99_ms", millis(value).ok_or_else(bad)?.into()),
            "failure_limit" => (
                "failure_limit",
                value.parse::<u32>().map_err(|_| bad())?.into(),
            ),
            "min_requests" => (
                "min_requests",
                value.parse::<u64>().map_err(|_| bad())?.into(),
            ),
            "min_success" => {
                let rate = match value.strip_suffix('%') {
                    Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
                    None => value.parse::<f64>(),
                };
                ("min_success_rate", rate.map_err(|_| bad())?.into())
            }
            _ => return Err(format!("{name}: not one of {}", ROLLOUT_FIELDS.join(", "))),
        };
        if plan.insert(field.into(), v).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    let plan = Value::Object(plan).to_string();
    crate::rollout::Plan::parse(plan.as_bytes()).map_err(|e| e.to_string())
}

const ROLLOUT_FIELDS: [&str; 6] = [
    "steps",
    "interval",
    "failure_limit",
    "min_requests",
    "max_p99",
    "min_success",
];

fn expected(name: &str) -> &'static str {
    match name {
        "steps" => "weights split by commas",
        "interval" | "max_p99" => "a duration such as 500ms, 60s, 2m",
        "min_success" => "a rate such as 99% or 0.99",
        _ => "a whole number",
    }
}

/// The one value the services that set a label give it, if any; an error when they differ.
fn agreed<'a, T: PartialEq>(
    label: &str,
    values: impl Iterator<Item = (&'a String, Option<&'a T>)>,
) -> Result<Option<&'a T>, String> {
    let mut found: Option<(&String, &T)> = None;
    for (service, value) in values {
        match (found, value) {
            (Some((first, v)), Some(w)) if v != w => {
                return Err(format!("{first} and {service} give different {label}"))
            }
            (None, Some(w)) => found = Some((service, w)),
            _ => {}
        }
    }
    Ok(found.map(|(_, v)| v))
}

/// The route value that the services' shares of one route make (by service name); checked by
/// the route model before it is stored. An error names the labels the services disagree on.
///
/// A route with a `roo.rollout` among its shares has the weights its rollouts give it: those
/// `stored` (the route's backends' weights as they stand, by name), a new canary 0 (its label's
/// when the route is new), a new other backend its label's.
pub fn compose(
    shares: &BTreeMap<String, Share>,
    stored: &HashMap<String, u32>,
) -> Result<String, String> {
    if let [(service, share)] = shares.iter().collect::<Vec<_>>()[..] {
        if share.is_plain(service) {
            return Ok(share.url.clone());
        }
    }
    let sticky = agreed(
        "roo.sticky",
        shares.iter().map(|(s, sh)| (s, sh.sticky.as_ref())),
    )?;
    let health = agreed(
        "roo.health.path",
        shares.iter().map(|(s, sh)| (s, sh.health.as_ref())),
    )?;
    // Middlewares are the target's: the host's own, or a path's.
    let mut targets: BTreeMap<Option<&str>, Vec<(&String, Option<&Value>)>> = BTreeMap::new();
    for (service, share) in shares {
        let target = share.path.as_ref().map(|(p, _)| p.as_str());
        targets
            .entry(target)
            .or_default()
            .push((service, share.middlewares.as_ref()));
    }
    let mut middlewares = BTreeMap::new();
    for (target, given) in targets {
        if let Some(m) = agreed("roo.middlewares", given.into_iter())? {
            middlewares.insert(target, m.clone());
        }
    }
    let rollout = shares.values().any(|s| s.rollout.is_some());
    let mut own = (Vec::new(), Vec::new());
    let mut paths: BTreeMap<&str, (bool, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for share in shares.values() {
        let label = share.weight.unwrap_or(100);
        let weight = match (rollout, stored.get(&share.backend)) {
            (false, _) => label,
            (true, Some(w)) => *w,
            // Nothing stored: a new route, no traffic to move yet.
            (true, None) if share.rollout.is_some() && !stored.is_empty() => 0,
            (true, None) => label,
        };
        let backend = json!({"name": share.backend, "url": share.url, "weight": weight});
        let cohort = share
            .cohort
            .as_ref()
            .map(|(on, name, value)| json!({*on: name, "value": value, "backend": share.backend}));
        let (backends, cohorts) = match &share.path {
            None => (&mut own.0, &mut own.1),
            Some((prefix, strip)) => {
                let path = paths.entry(prefix).or_default();
                path.0 |= strip;
                (&mut path.1, &mut path.2)
            }
        };
        backends.push(backend);
        cohorts.extend(cohort);
    }
    let mut route = serde_json::Map::new();
    if !own.0.is_empty() {
        route.insert("backends".into(), own.0.into());
    }
    if !own.1.is_empty() {
        route.insert("match".into(), own.1.into());
    }
    if let Some(m) = middlewares.remove(&None) {
        route.insert("middlewares".into(), m);
    }
    if !paths.is_empty() {
        let paths: Vec<Value> = paths
            .into_iter()
            .map(|(prefix, (strip, backends, cohorts))| {
                let mut path =
                    json!({"prefix": prefix, "strip_prefix": strip, "backends": backends});
                if !cohorts.is_empty() {
                    path["match"] = cohorts.into();
                }
                if let Some(m) = middlewares.remove(&Some(prefix)) {
                    path["middlewares"] = m;
                }
                path
            })
            .collect();
        route.insert("paths".into(), paths.into());
    }
    if let Some(cookie) = sticky {
        route.insert("sticky".into(), json!({"cookie": cookie}));
    }
    if let Some(path) = health {
        route.insert("health".into(), json!({"path": path}));
    }
    Ok(Value::Object(route).to_string())
}

/// The routes (key to this service's share) that `service`'s labels describe; empty when it has
/// no origin label.
pub fn routes(service: &str, labels: &Labels<'_>) -> Result<BTreeMap<String, Share>, LabelError> {
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
    let backend = labels.get_roo("roo.backend").unwrap_or(service);
    if !valid_backend_name(backend) {
        return Err(invalid("roo.backend", backend, BACKEND_NAME_RULE));
    }
    let weight = labels
        .get_roo("roo.weight")
        .map(|v| match v.parse::<u32>() {
            Ok(w) if w <= crate::routes::model::MAX_WEIGHT => Ok(w),
            _ => Err(invalid("roo.weight", v, "a number from 0 to 10000")),
        })
        .transpose()?;
    let strip = match labels.get_roo("roo.strip_prefix") {
        None => false,
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| invalid("roo.strip_prefix", v, "true or false"))?,
    };
    let path = match labels.get_roo("roo.path") {
        None => None,
        Some(p) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic() && b != b'?') => {
            Some((p.to_string(), strip))
        }
        Some(p) => return Err(invalid("roo.path", p, "a path starting with /")),
    };
    let mut cohort = None;
    for (on, label) in [
        ("header", "roo.match.header"),
        ("cookie", "roo.match.cookie"),
    ] {
        if let Some(v) = labels.get_roo(label) {
            let (name, value) = v
                .split_once('=')
                .filter(|(n, _)| !n.trim().is_empty())
                .ok_or_else(|| invalid(label, v, "Name=value"))?;
            cohort = Some((on, name.trim().to_string(), value.trim().to_string()));
        }
    }
    let sticky = labels.get_roo("roo.sticky").map(|v| match v {
        "true" => "roo_sticky".to_string(),
        name => name.to_string(),
    });
    let health = match labels.get_roo("roo.health.path") {
        Some(p) if !p.starts_with('/') => {
            return Err(invalid("roo.health.path", p, "a path starting with /"))
        }
        p => p.map(str::to_string),
    };
    let middlewares = match labels.get_roo("roo.middlewares") {
        None => None,
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(list @ Value::Array(_)) => Some(list),
            _ => return Err(invalid("roo.middlewares", v, "a JSON list of middlewares")),
        },
    };
    let rollout = match labels.get_roo("roo.rollout") {
        None => None,
        Some(_) if path.is_some() => {
            return Err(invalid(
                "roo.rollout",
                "with roo.path",
                "a rollout moves a host's own backends, not a path's",
            ))
        }
        Some(v) => match rollout_plan(v, backend) {
            Ok(plan) => Some(plan),
            Err(reason) => {
                return Err(LabelError::Rollout {
                    value: v.to_string(),
                    reason,
                })
            }
        },
    };
    let share = Share {
        rollout,
        backend: backend.to_string(),
        url: destination,
        weight,
        path,
        cohort,
        sticky,
        health,
        middlewares,
    };
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
        out.insert(key.to_string(), share.clone());
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
        routes("app_web", &Labels::new(&s, &c)).map(|m| {
            m.into_iter()
                .map(|(k, share)| {
                    (
                        k,
                        compose(
                            &BTreeMap::from([("app_web".to_string(), share)]),
                            &HashMap::new(),
                        )
                        .unwrap(),
                    )
                })
                .collect()
        })
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

    /// `service`'s share of `app.test:https` with `labels` beside the origin and port.
    fn share(service: &str, labels: &[(&str, &str)]) -> (String, Share) {
        let mut all = vec![("OriginHosts", "app.test"), ("DestinationPort", "80")];
        all.extend_from_slice(labels);
        let (s, c) = (map(&all), map(&[]));
        let routes = routes(service, &Labels::new(&s, &c)).unwrap();
        (
            service.to_string(),
            routes["com.roo.host:app.test:https"].clone(),
        )
    }

    #[test]
    fn services_of_one_host_are_backends_of_one_route() {
        let shares = BTreeMap::from([
            share("app_v1", &[("roo.weight", "90"), ("roo.backend", "v1")]),
            share(
                "app_v2",
                &[
                    ("roo.weight", "10"),
                    ("roo.match.header", "X-Canary=always"),
                ],
            ),
            share(
                "app_api",
                &[("roo.path", "/api"), ("roo.strip_prefix", "true")],
            ),
        ]);
        let value = compose(&shares, &HashMap::new()).unwrap();
        let route = crate::routes::Route::parse(value.as_bytes()).unwrap();
        assert_eq!(
            route.to_json(),
            json!({
                "backends": [
                    {"name": "v1", "url": "http://app_v1:80", "weight": 90},
                    {"name": "app_v2", "url": "http://app_v2:80", "weight": 10},
                ],
                "match": [{"header": "x-canary", "value": "always", "backend": "app_v2"}],
                "paths": [{"prefix": "/api", "strip_prefix": true, "backends": [
                    {"name": "app_api", "url": "http://app_api:80", "weight": 100}]}],
            })
        );
        // One service alone with no new label stays Roo's plain URL.
        let alone = BTreeMap::from([share("app_v1", &[])]);
        assert_eq!(
            compose(&alone, &HashMap::new()).unwrap(),
            "http://app_v1:80"
        );
        // Route-wide labels: given by one service, or the same by all; else an error.
        let shares = BTreeMap::from([
            share(
                "app_v1",
                &[("roo.sticky", "true"), ("roo.health.path", "/healthz")],
            ),
            share(
                "app_v2",
                &[(
                    "roo.middlewares",
                    r#"[{"ip_allow":{"cidrs":["10.0.0.0/8"]}}]"#,
                )],
            ),
        ]);
        let route =
            crate::routes::Route::parse(compose(&shares, &HashMap::new()).unwrap().as_bytes())
                .unwrap();
        let json = route.to_json();
        assert_eq!(json["sticky"]["cookie"], "roo_sticky");
        assert_eq!(json["health"]["path"], "/healthz");
        assert_eq!(json["middlewares"][0]["ip_allow"]["cidrs"][0], "10.0.0.0/8");
        let shares = BTreeMap::from([
            share("app_v1", &[("roo.sticky", "a")]),
            share("app_v2", &[("roo.sticky", "b")]),
        ]);
        assert_eq!(
            compose(&shares, &HashMap::new()).unwrap_err(),
            "app_v1 and app_v2 give different roo.sticky"
        );
        for bad in [
            ("roo.weight", "ten"),
            ("roo.weight", "10001"),
            ("roo.path", "api"),
            ("roo.strip_prefix", "yes"),
            ("roo.match.header", "novalue"),
            ("roo.match.cookie", "=1"),
            ("roo.backend", "a b"),
            ("roo.health.path", "healthz"),
            ("roo.middlewares", "{\"ip_allow\":{}}"),
        ] {
            let (s, c) = (
                map(&[("OriginHosts", "a.test"), ("DestinationPort", "80"), bad]),
                map(&[]),
            );
            let error = routes("svc", &Labels::new(&s, &c)).unwrap_err();
            assert!(error.to_string().starts_with(bad.0), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_rollout_label_is_a_plan_for_the_service_s_backend() {
        let plan = rollout_plan(
            "steps:10,50,100; interval:2m;failure_limit:3;min_requests:5;max_p99:250ms;min_success:99.5%",
            "v2",
        )
        .unwrap();
        assert_eq!(plan.canary, "v2");
        assert_eq!(plan.steps, [10, 50, 100]);
        assert_eq!(plan.interval_ms, 120_000);
        assert_eq!((plan.failure_limit, plan.min_requests), (3, 5));
        assert_eq!(plan.max_p99_ms, 250.0);
        assert!((plan.min_success_rate - 0.995).abs() < 1e-9);
        // What is not given is Flagger's default, as in the API.
        let plan = rollout_plan("interval:30s", "v2").unwrap();
        assert_eq!((plan.steps.len(), plan.failure_limit), (4, 2));
        for (bad, says) in [
            ("steps:10,x", "steps"),
            ("steps:50,10", "rising"),
            ("interval:60", "duration"),
            ("interval:60s;interval:30s", "twice"),
            ("speed:fast", "not one of"),
            ("steps", "name:value"),
            ("min_success:high", "rate"),
        ] {
            let error = rollout_plan(bad, "v2").unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let (s, c) = (
            map(&[
                ("OriginHosts", "a.test"),
                ("DestinationPort", "80"),
                ("roo.rollout", "steps:0"),
            ]),
            map(&[]),
        );
        let error = routes("svc", &Labels::new(&s, &c)).unwrap_err();
        assert!(error.to_string().starts_with("roo.rollout"), "{error}");
    }

    #[test]
    fn a_route_with_a_canary_keeps_the_weights_the_rollout_gave_it() {
        let weights = |value: String| -> Vec<u64> {
            let route = crate::routes::Route::parse(value.as_bytes()).unwrap();
            route.to_json()["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["weight"].as_u64().unwrap())
                .collect()
        };
        let shares = BTreeMap::from([
            share("app_v1", &[("roo.backend", "v1"), ("roo.weight", "70")]),
            share(
                "app_v2",
                &[("roo.backend", "v2"), ("roo.rollout", "interval:1s")],
            ),
        ]);
        // A new canary starts at 0 beside what the route had.
        let before = HashMap::from([("v1".to_string(), 70)]);
        assert_eq!(weights(compose(&shares, &before).unwrap()), [70, 0]);
        // A new route has no traffic to move yet: the labels' weights.
        assert_eq!(
            weights(compose(&shares, &HashMap::new()).unwrap()),
            [70, 100]
        );
        // Then what the rollout set stands, whatever the labels say.
        let stored = HashMap::from([("v1".to_string(), 75), ("v2".to_string(), 25)]);
        assert_eq!(weights(compose(&shares, &stored).unwrap()), [75, 25]);
        // No canary: the labels' weights, whatever is stored.
        let plain = BTreeMap::from([share("app_v1", &[("roo.backend", "v1")])]);
        let stored = HashMap::from([("v1".to_string(), 0)]);
        assert_eq!(
            compose(&plain, &stored).unwrap(),
            r#"{"backends":[{"name":"v1","url":"http://app_v1:80","weight":100}]}"#
        );
        // The canary of before keeps its label: still the rollout's weights.
        let two = BTreeMap::from([
            share(
                "app_v1",
                &[("roo.backend", "v1"), ("roo.rollout", "interval:1s")],
            ),
            share(
                "app_v2",
                &[("roo.backend", "v2"), ("roo.rollout", "interval:1s")],
            ),
        ]);
        let stored = HashMap::from([("v1".to_string(), 100)]);
        assert_eq!(weights(compose(&two, &stored).unwrap()), [100, 0]);
    }
}
