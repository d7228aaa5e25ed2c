//! Where a route comes from when a service asks for one: the Docker Swarm watcher.
//!
//! One node in the cluster runs it: the holder of a lease in the KV ([`LEASE_KEY`]), taken only
//! by nodes that reach a swarm manager's API, so edge nodes run without the Docker socket. The
//! holder follows Docker's service events and also reconciles everything at start and every
//! [`RECONCILE_EVERY`]: each service's labels ([`labels`]) become routes in the KV, where every
//! node's proxy picks them up like any other route.
//!
//! Ownership: for each service the watcher records the routes it made
//! (`com.roo.swarm.service:<service id>`). Services naming the same route are backends of it,
//! each owning its own: a label change rewrites exactly the routes the service is in, a removed
//! service takes its backend out (the route goes with the last one), a route the watcher did not
//! make is never written or deleted, and a route edited by hand since is not deleted. Nothing is deleted unless Docker answered the service list:
//! an unreachable Docker API changes nothing.

pub mod labels;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use roo_kv::{Consistency, Kv, KvError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event};
use crate::now_ms;
use crate::routes::reconcile::{self, Wanted};
use crate::routes::write::WriteError;
use labels::Labels;

/// Full reconcile period, besides Docker's events.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// The lease naming the node that runs the watcher.
pub const LEASE_KEY: &str = "com.roo.swarm.lease";
/// Per service: the routes the watcher made for it.
pub const OWNER_PREFIX: &str = "com.roo.swarm.service:";
const LEASE_TTL: Duration = Duration::from_secs(15);
const LEASE_RENEW: Duration = Duration::from_secs(5);

/// What went wrong talking to Docker or the KV.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("Docker API: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("ownership record {key}: {reason}")]
    Record { key: String, reason: String },
    #[error(transparent)]
    Route(#[from] WriteError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Lease {
    node: u64,
    /// Unix milliseconds.
    expires: u64,
}

/// The routes the watcher made for one service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Owned {
    service: String,
    routes: BTreeMap<String, String>,
}

/// A service as the watcher sees it.
struct ServiceRoutes {
    id: String,
    name: String,
    /// Its share of each route it names; None: its labels are invalid, what it had is kept.
    routes: Option<BTreeMap<String, labels::Share>>,
}

/// What a reconcile did, and what it could not do.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Keys written or deleted.
    pub changes: usize,
    /// What it could not do, for the activity stream.
    pub problems: Vec<Problem>,
}

/// Something the watcher could not do, told once while it lasts: `swarm.error` (labels that
/// make no route, a failed reconcile) or `route.held` (a frozen route left as it is).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: &'static str,
    pub subject: String,
    pub source: String,
    pub error: String,
}

impl Problem {
    fn labels(service: &str, error: String) -> Problem {
        Problem {
            kind: "swarm.error",
            subject: service.to_string(),
            source: source(&[service]),
            error,
        }
    }
}

/// Connects to Docker (`DOCKER_HOST`, else the local socket) and checks that it is a swarm
/// manager.
pub async fn manager() -> Result<Docker, String> {
    let docker = Docker::connect_with_defaults().map_err(|e| e.to_string())?;
    let info = tokio::time::timeout(Duration::from_secs(5), docker.info())
        .await
        .map_err(|_| "Docker API did not answer in 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let manager = info
        .swarm
        .and_then(|s| s.control_available)
        .unwrap_or(false);
    if manager {
        Ok(docker)
    } else {
        Err("this Docker engine is not a swarm manager".into())
    }
}

/// Finds the Docker manager API and runs the watcher while this node holds the lease, until
/// `shutdown`. `required`: keep looking for the API (`--swarm on`); else give up at once when
/// there is none (`auto`).
pub async fn run(kv: Kv, required: bool, report: Arc<dyn Report>, shutdown: CancellationToken) {
    let docker = loop {
        match manager().await {
            Ok(d) => break d,
            Err(e) if !required => {
                tracing::info!(reason = %e, "swarm watcher off on this node");
                return;
            }
            Err(e) => tracing::warn!(reason = %e, "no Docker swarm manager API yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.cancelled() => return,
        }
    };
    tracing::info!("Docker swarm manager API reachable: this node may run the swarm watcher");
    lead(kv, docker, report, shutdown).await
}

/// Runs the watcher whenever this node holds the lease.
async fn lead(kv: Kv, docker: Docker, report: Arc<dyn Report>, shutdown: CancellationToken) {
    loop {
        let held = tokio::select! {
            held = acquire(&kv) => held,
            _ = shutdown.cancelled() => return,
        };
        match held {
            Ok(Some(rev)) => {
                tracing::info!("holding the swarm lease: the watcher runs on this node");
                let lost = shutdown.child_token();
                tokio::select! {
                    _ = hold(&kv, rev, &lost) => {}
                    _ = watch(&kv, &docker, &*report, &lost) => {}
                }
                lost.cancel();
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::info!("swarm lease lost: the watcher stopped on this node");
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "swarm lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEW) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Takes the lease if it is free, expired or ours; returns its revision.
async fn acquire(kv: &Kv) -> Result<Option<u64>, KvError> {
    let current = kv.get(LEASE_KEY, Consistency::Linearizable).await?;
    let prev_rev = match &current {
        None => 0,
        Some(record) => {
            let lease: Option<Lease> = serde_json::from_slice(&record.value).ok();
            match lease {
                Some(l) if l.node != kv.node_id() && l.expires > now_ms() => return Ok(None),
                _ => record.mod_rev,
            }
        }
    };
    put_lease(kv, prev_rev).await
}

async fn put_lease(kv: &Kv, prev_rev: u64) -> Result<Option<u64>, KvError> {
    let lease = Lease {
        node: kv.node_id(),
        expires: now_ms() + LEASE_TTL.as_millis() as u64,
    };
    let value = serde_json::to_vec(&lease).map_err(|e| KvError::InvalidRequest(e.to_string()))?;
    match kv.put(LEASE_KEY, value, Some(prev_rev)).await {
        Ok(rev) => Ok(Some(rev)),
        Err(KvError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Renews the lease until it cannot (another node took it, or no quorum for a TTL).
async fn hold(kv: &Kv, mut rev: u64, lost: &CancellationToken) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEW) => {}
            _ = lost.cancelled() => return,
        }
        match put_lease(kv, rev).await {
            Ok(Some(r)) => {
                rev = r;
                last_renewed = tokio::time::Instant::now();
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the swarm lease");
                // Stop before another node may take it.
                if last_renewed.elapsed() + LEASE_RENEW >= LEASE_TTL {
                    return;
                }
            }
        }
    }
}

/// Reconciles at start, on every service event and every [`RECONCILE_EVERY`].
async fn watch(kv: &Kv, docker: &Docker, report: &dyn Report, lost: &CancellationToken) {
    let filters = HashMap::from([("type", vec!["service"])]);
    let told = &mut BTreeSet::new();
    loop {
        let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        run_reconcile(kv, docker, report, told).await;
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(e)) => {
                        let actor = e.actor.as_ref();
                        let name = actor
                            .and_then(|a| a.attributes.as_ref())
                            .and_then(|a| a.get("name"))
                            .map_or("-", String::as_str);
                        tracing::debug!(action = e.action.as_deref().unwrap_or("-"), service = name, "service event");
                        run_reconcile(kv, docker, report, told).await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Docker event stream");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => run_reconcile(kv, docker, report, told).await,
                _ = lost.cancelled() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = lost.cancelled() => return,
        }
    }
}

/// What the watcher tells of its reconciles; the metrics count them.
pub trait Report: Send + Sync {
    fn reconciled(&self, done: bool, seconds: f64);
}

/// Reconciles, and tells the activity stream of each problem (`swarm.error`) once while it
/// lasts: `told` holds those told.
async fn run_reconcile(
    kv: &Kv,
    docker: &Docker,
    report: &dyn Report,
    told: &mut BTreeSet<Problem>,
) {
    let started = std::time::Instant::now();
    let result = reconcile(kv, docker).await;
    report.reconciled(result.is_ok(), started.elapsed().as_secs_f64());
    let problems = match result {
        // The periodic look that finds nothing to do is no news.
        Ok(done) if done.changes == 0 => {
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "swarm routes reconciled"
            );
            done.problems
        }
        Ok(done) => {
            tracing::info!(
                changes = done.changes,
                ms = started.elapsed().as_millis() as u64,
                "swarm routes reconciled"
            );
            done.problems
        }
        Err(e) => {
            tracing::warn!(error = %e, "swarm reconcile failed; routes left as they are");
            let error = e.to_string();
            vec![Problem {
                kind: "swarm.error",
                subject: "swarm".into(),
                source: "swarm".into(),
                error,
            }]
        }
    };
    let now: BTreeSet<Problem> = problems.into_iter().collect();
    for p in now.difference(told) {
        let detail = serde_json::json!({"error": p.error});
        let event = Event::new(p.kind, &p.subject, &p.source, detail);
        if let Err(e) = events::record(kv, event).await {
            tracing::debug!(error = %e, "recording a swarm problem");
        }
    }
    *told = now;
}

/// Makes the KV's watcher-made routes match the services' labels; returns how many keys it
/// wrote or deleted. Every service naming a route gives it one backend ([`labels::compose`]).
pub async fn reconcile(kv: &Kv, docker: &Docker) -> Result<Reconciled, SwarmError> {
    let mut problems = Vec::new();
    let services = list(docker, &mut problems).await?;
    let (records, _) = kv.scan(OWNER_PREFIX, Consistency::Linearizable).await?;
    let mut owned: BTreeMap<String, Owned> = BTreeMap::new();
    for (key, record) in records {
        let id = key.trim_start_matches(OWNER_PREFIX).to_string();
        let value = serde_json::from_slice(&record.value).map_err(|e| SwarmError::Record {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        owned.insert(id, value);
    }
    // What the watcher last wrote at each key it made, and the services it made it for.
    let mut made: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    for o in owned.values() {
        for (key, value) in &o.routes {
            made.entry(key.clone())
                .or_insert((value.clone(), Vec::new()))
                .1
                .push(&o.service);
        }
    }
    let made = made
        .into_iter()
        .map(|(key, (value, services))| (key, (value, source(&services))))
        .collect();
    // Each route's shares, by service; keys of a service whose labels are invalid are left as
    // they are, whoever else names them.
    let mut shares: BTreeMap<String, BTreeMap<String, labels::Share>> = BTreeMap::new();
    let mut wanted = BTreeMap::new();
    for service in &services {
        match &service.routes {
            Some(routes) => {
                for (key, share) in routes {
                    shares
                        .entry(key.clone())
                        .or_default()
                        .insert(service.name.clone(), share.clone());
                }
            }
            None => {
                let held = owned
                    .get(&service.id)
                    .into_iter()
                    .flat_map(|o| o.routes.keys());
                wanted.extend(held.map(|key| (key.clone(), Wanted::Held)));
            }
        }
    }
    // The routes with a canary, and the rollout each asks for.
    let mut canaries = Vec::new();
    for (key, shares) in &shares {
        let services: Vec<&str> = shares.keys().map(String::as_str).collect();
        let source = source(&services);
        let stored = match shares.values().any(|s| s.rollout.is_some()) {
            true => stored_weights(kv, key).await?,
            false => HashMap::new(),
        };
        let checked = labels::compose(shares, &stored).and_then(|value| {
            crate::routes::Route::parse(value.as_bytes())
                .map(|_| value)
                .map_err(|e| e.to_string())
        });
        let want = match checked {
            Ok(value) => {
                let asked: Vec<(String, crate::rollout::Plan)> = shares
                    .iter()
                    .filter_map(|(service, share)| Some((service.clone(), share.rollout.clone()?)))
                    .collect();
                // A service alone on its route has nothing to roll out against.
                if !asked.is_empty() && shares.len() > 1 {
                    canaries.push((key.clone(), asked));
                }
                Wanted::Value { value, source }
            }
            Err(e) => {
                tracing::warn!(%source, %key, error = %e, "the labels make an invalid route; it is left as it is");
                let error = format!("{key}: {e}");
                problems.extend(services.iter().map(|s| Problem::labels(s, error.clone())));
                Wanted::Held
            }
        };
        wanted.entry(key.clone()).or_insert(want);
    }
    let done = reconcile::reconcile(kv, reconcile::diff(&made, &wanted)).await?;
    for (key, asked) in canaries {
        if done.held.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let service = asked[0].0.clone();
        match start_rollout(kv, &key, asked).await {
            Ok(()) => {}
            Err(SwarmError::Rollout(e)) => {
                problems.push(Problem::labels(&service, format!("{key}: {e}")))
            }
            Err(e) => return Err(e),
        }
    }
    problems.extend(done.held.iter().map(|(key, source)| {
        Problem {
            kind: "route.held",
            subject: key
                .trim_start_matches(crate::routes::ROUTE_PREFIX)
                .to_string(),
            source: source.clone(),
            error: "the route is frozen".into(),
        }
    }));
    let written = done.standing;
    // Ownership records: each service's keys and what stands there.
    for service in &services {
        let Some(routes) = &service.routes else {
            continue;
        };
        let before = owned.get(&service.id).cloned().unwrap_or_default();
        let now = Owned {
            service: service.name.clone(),
            routes: routes
                .keys()
                .filter_map(|k| Some((k.clone(), written.get(k)?.clone())))
                .collect(),
        };
        let record_key = format!("{OWNER_PREFIX}{}", service.id);
        if now.routes.is_empty() && !before.routes.is_empty() {
            kv.delete(&record_key, None).await?;
        } else if !now.routes.is_empty() && now != before {
            let value = serde_json::to_vec(&now).map_err(|e| SwarmError::Record {
                key: record_key.clone(),
                reason: e.to_string(),
            })?;
            kv.put(&record_key, value, None).await?;
        }
    }
    // Services that are gone (their routes were recomposed or removed above).
    let seen: std::collections::HashSet<&str> = services.iter().map(|s| s.id.as_str()).collect();
    for (id, o) in owned.iter().filter(|(id, _)| !seen.contains(id.as_str())) {
        kv.delete(&format!("{OWNER_PREFIX}{id}"), None).await?;
        tracing::info!(service = %o.service, "service removed: its share of routes taken out");
    }
    Ok(Reconciled {
        changes: done.changes,
        problems,
    })
}

/// The weights of the backends of the route at `key` as stored, by name: while the route has a
/// canary, the rollout's.
async fn stored_weights(kv: &Kv, key: &str) -> Result<HashMap<String, u32>, SwarmError> {
    let Some(record) = kv.get(key, Consistency::Linearizable).await? else {
        return Ok(HashMap::new());
    };
    let Ok(route) = crate::routes::Route::parse(&record.value) else {
        return Ok(HashMap::new());
    };
    let backends = route.target.backends.iter();
    Ok(backends.map(|b| (b.name.to_string(), b.weight)).collect())
}

/// Starts the rollout that a service's `roo.rollout` asks for (`asked`: by service) on the
/// route at `key`, for a backend that the route's rollout has not had yet as its canary or
/// stable backend: a canary under way, promoted or aborted is not rolled out again until its
/// backend's name changes or a rollout is started by hand; the canary of before, now stable,
/// keeps its label. Two new canaries at once are refused.
async fn start_rollout(
    kv: &Kv,
    key: &str,
    asked: Vec<(String, crate::rollout::Plan)>,
) -> Result<(), SwarmError> {
    use crate::rollout::RolloutError;
    let route = crate::routes::RouteKey::parse(key).map_err(WriteError::from)?;
    let current = crate::rollout::get(kv, &route, Consistency::Linearizable).await?;
    let had = |backend: &str| {
        current
            .as_ref()
            .is_some_and(|(r, _)| r.plan.canary == backend || r.stable_backend == backend)
    };
    let mut new: Vec<(String, crate::rollout::Plan)> = asked
        .into_iter()
        .filter(|(_, plan)| !had(&plan.canary))
        .collect();
    let (service, plan) = match new.len() {
        0 => return Ok(()),
        1 => new.remove(0),
        _ => {
            let services: Vec<&str> = new.iter().map(|(s, _)| s.as_str()).collect();
            return Err(RolloutError::Invalid(format!(
                "{} each give roo.rollout for a new backend: one canary at a time",
                services.join(" and ")
            ))
            .into());
        }
    };
    let canary = plan.canary.clone();
    crate::rollout::start(kv, &route, plan, &source(&[&service])).await?;
    tracing::info!(%service, %key, %canary, "rollout started by roo.rollout");
    Ok(())
}

/// The source name of the watcher's writes for `services`.
fn source(services: &[&str]) -> String {
    format!("swarm:{}", services.join(","))
}

/// Every service and the routes its labels describe; `problems` gets the services whose labels
/// are invalid.
async fn list(
    docker: &Docker,
    problems: &mut Vec<Problem>,
) -> Result<Vec<ServiceRoutes>, SwarmError> {
    let services = docker.list_services(None).await?;
    Ok(services
        .into_iter()
        .filter_map(|s| {
            let id = s.id?;
            let spec = s.spec?;
            let name = spec.name.unwrap_or_else(|| id.clone());
            let service_labels = spec.labels.unwrap_or_default();
            let container_labels = spec
                .task_template
                .and_then(|t| t.container_spec)
                .and_then(|c| c.labels)
                .unwrap_or_default();
            let found = labels::routes(&name, &Labels::new(&service_labels, &container_labels));
            let routes = match found {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "invalid roo labels; the service's routes are left as they are");
                    problems.push(Problem::labels(&name, e.to_string()));
                    None
                }
            };
            Some(ServiceRoutes { id, name, routes })
        })
        .collect())
}
