//! Where a rollout is decided: a canary backend's weight goes through steps; after each interval
//! the controller checks the canary's success rate and p99 over that interval across the cluster
//! ([`crate::stats`]) and steps on, holds (too few requests: no traffic is not success), counts a
//! failure, or aborts at the failure limit (canary weight 0).
//!
//! One controller runs in the cluster, on the raft leader ([`run`]). A rollout's state lives in
//! the KV (`com.roo.rollout:<route>`), changed with compare-and-set in the same request as the
//! route change and the event it makes (through the route write path): a new leader resumes at
//! the step the rollout was in, and a deposed one cannot step it twice.

use std::time::{Duration, SystemTime};

use roo_kv::{Consistency, Kv, KvError, Op};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event};
use crate::now_ms;
use crate::routes::write::{self, route_name, RouteChange, WriteError};
use crate::routes::{Route, RouteKey};
use crate::stats::{self, Stats};

pub const ROLLOUT_PREFIX: &str = "com.roo.rollout:";
/// How often the leader looks for checks that are due.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Checks kept in a rollout's state.
const CHECKS_KEPT: usize = 50;
/// The source of the controller's changes.
const SOURCE: &str = "rollout";

/// Why a rollout could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} has no route")]
    NoRoute(String),
    #[error("{0} has no rollout")]
    NoRollout(String),
    /// The rollout's state does not allow it, or the route is frozen.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl From<WriteError> for RolloutError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(e) => RolloutError::Invalid(e.to_string()),
            e @ WriteError::Frozen(_) => RolloutError::Conflict(e.to_string()),
            WriteError::Kv(KvError::Conflict { .. }) => RolloutError::Conflict(
                "the route or its rollout changed meanwhile: try again".into(),
            ),
            WriteError::Kv(e) => RolloutError::Kv(e),
        }
    }
}

/// What a rollout is asked to do (`PUT /roo/v1/rollouts/<route>`); Flagger's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The backend that gets the steps' weights.
    pub canary: String,
    /// The backend that gets the rest: by default the route's other one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_min_success_rate")]
    pub min_success_rate: f64,
    #[serde(default = "default_max_p99_ms")]
    pub max_p99_ms: f64,
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_steps() -> Vec<u32> {
    vec![10, 25, 50, 100]
}
fn default_interval_ms() -> u64 {
    60_000
}
fn default_min_success_rate() -> f64 {
    0.99
}
fn default_max_p99_ms() -> f64 {
    500.0
}
fn default_failure_limit() -> u32 {
    2
}
fn default_min_requests() -> u64 {
    20
}

impl Plan {
    /// Parses and checks a plan.
    pub fn parse(body: &[u8]) -> Result<Plan, RolloutError> {
        let plan: Plan =
            serde_json::from_slice(body).map_err(|e| RolloutError::Invalid(e.to_string()))?;
        let bad = |why: String| Err(RolloutError::Invalid(why));
        if plan.steps.is_empty() || plan.steps.len() > 100 {
            return bad("steps: from 1 to 100 weights".into());
        }
        if plan.steps.windows(2).any(|w| w[0] >= w[1])
            || plan.steps.iter().any(|w| !(1..=100).contains(w))
        {
            return bad(format!(
                "steps: {:?}: rising weights from 1 to 100",
                plan.steps
            ));
        }
        if !(100..=86_400_000).contains(&plan.interval_ms) {
            return bad("interval_ms: from 100 to 86400000".into());
        }
        if !(0.0..=1.0).contains(&plan.min_success_rate) {
            return bad("min_success_rate: from 0 to 1".into());
        }
        if !(plan.max_p99_ms > 0.0 && plan.max_p99_ms.is_finite()) {
            return bad("max_p99_ms: a positive number of milliseconds".into());
        }
        if plan.failure_limit == 0 {
            return bad("failure_limit: at least 1".into());
        }
        Ok(plan)
    }

    /// The window a check looks at: the interval, at most what the stats keep.
    fn window(&self) -> Duration {
        Duration::from_millis(self.interval_ms).min(Duration::from_secs(stats::MAX_WINDOW_S))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Progressing,
    Paused,
    Promoted,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Progressing => "progressing",
            State::Paused => "paused",
            State::Promoted => "promoted",
            State::Aborted => "aborted",
        }
    }

    /// Whether the rollout is still going (progressing or paused).
    pub fn open(self) -> bool {
        matches!(self, State::Progressing | State::Paused)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Hold,
}

/// One check of the canary, at the end of an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub time: String,
    pub step: usize,
    pub weight: u32,
    pub requests: u64,
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    pub verdict: Verdict,
    /// Members whose counts were missing from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u64>,
}

/// A rollout as the KV keeps it and the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    #[serde(flatten)]
    pub plan: Plan,
    /// The stable backend, as found at the start.
    pub stable_backend: String,
    pub state: State,
    /// Index into the steps.
    pub step: usize,
    /// The canary's weight now (of 100).
    pub weight: u32,
    pub failures: u32,
    /// Unix ms when the next check is due (while progressing).
    pub next_check_ms: u64,
    pub started: String,
    pub source: String,
    /// Newest last.
    pub checks: Vec<Check>,
}

fn now_text() -> String {
    roo_acme::cert::rfc3339(SystemTime::now())
}

fn rollout_key(name: &str) -> String {
    format!("{ROLLOUT_PREFIX}{name}")
}

/// A route's rollout and the revision it was stored at.
pub async fn get(
    kv: &Kv,
    key: &RouteKey,
    consistency: Consistency,
) -> Result<Option<(Rollout, u64)>, KvError> {
    let Some(record) = kv.get(&rollout_key(&route_name(key)), consistency).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&record.value)
        .ok()
        .map(|r| (r, record.mod_rev)))
}

/// Every rollout, by route name.
pub async fn list(
    kv: &Kv,
    consistency: Consistency,
) -> Result<Vec<(String, Rollout, u64)>, KvError> {
    let (records, _) = kv.scan(ROLLOUT_PREFIX, consistency).await?;
    Ok(records
        .into_iter()
        .filter_map(|(k, r)| {
            let rollout = serde_json::from_slice(&r.value).ok()?;
            Some((
                k.trim_start_matches(ROLLOUT_PREFIX).to_string(),
                rollout,
                r.mod_rev,
            ))
        })
        .collect())
}

/// The route's current value (JSON, as the model reads it) and revision.
async fn route_value(kv: &Kv, key: &RouteKey) -> Result<(Value, u64), RolloutError> {
    let name = route_name(key);
    let record = kv
        .get(&key.to_string(), Consistency::Linearizable)
        .await?
        .ok_or_else(|| RolloutError::NoRoute(name.clone()))?;
    let route =
        Route::parse(&record.value).map_err(|e| RolloutError::Invalid(format!("{name}: {e}")))?;
    Ok((route.to_json(), record.mod_rev))
}

/// The names of the route's own backends.
fn backend_names(value: &Value) -> Vec<String> {
    value["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `value` with the canary at `weight` and the stable backend at the rest.
fn weighed(mut value: Value, r: &Rollout, weight: u32) -> Value {
    if let Some(backends) = value["backends"].as_array_mut() {
        for b in backends {
            let name = b["name"].as_str().unwrap_or_default();
            if name == r.plan.canary {
                b["weight"] = weight.into();
            } else if name == r.stable_backend {
                b["weight"] = (100 - weight).into();
            }
        }
    }
    value
}

/// Writes rollout `r` (over revision `rev`, 0: none yet) with event `kind`; with `weight`, the
/// route's weights change in the same request (route revision `route_rev`).
async fn save(
    kv: &Kv,
    key: &RouteKey,
    r: &Rollout,
    rev: u64,
    kind: &str,
    source: &str,
    route: Option<(Value, u64)>,
) -> Result<u64, RolloutError> {
    let name = route_name(key);
    let state = Op::Put {
        key: rollout_key(&name),
        value: serde_json::to_vec(r).map_err(|e| KvError::InvalidRequest(e.to_string()))?,
        prev_rev: Some(rev),
    };
    let event = events::recording().then(|| {
        let detail = json!({
            "canary": r.plan.canary, "stable": r.stable_backend, "state": r.state.as_str(),
            "step": r.step, "weight": r.weight, "failures": r.failures, "check": r.checks.last(),
        });
        Event::new(kind, &name, source, detail)
    });
    let answer = match route {
        // The rollout's event tells of the new weights too; the route's history has them.
        Some((value, route_rev)) => {
            let value = weighed(value, r, r.weight);
            let mut change =
                RouteChange::new(key.clone(), Some(value.to_string().into_bytes()), source);
            change.prev_rev = Some(route_rev);
            change.also = vec![state];
            change.event = event;
            write::write(kv, change).await?
        }
        None => {
            let mut ops = vec![state];
            if let Some(event) = event {
                ops.push(event.op()?);
            }
            kv.write(roo_kv::Request::new(ops))
                .await?
                .checked()
                .map_err(|e| match e {
                    KvError::Conflict { .. } => RolloutError::Conflict(format!(
                        "the rollout of {name} changed meanwhile: try again"
                    )),
                    e => RolloutError::Kv(e),
                })?
        }
    };
    Ok(answer.rev)
}

/// Starts a rollout of `plan` on route `key`: the canary goes to the first step's weight now.
pub async fn start(
    kv: &Kv,
    key: &RouteKey,
    plan: Plan,
    source: &str,
) -> Result<Rollout, RolloutError> {
    let name = route_name(key);
    let (value, route_rev) = route_value(kv, key).await?;
    let names = backend_names(&value);
    if !names.contains(&plan.canary) {
        return Err(RolloutError::Invalid(format!(
            "canary: {name} has no backend {:?} (it has {names:?})",
            plan.canary
        )));
    }
    let stable = match &plan.stable {
        Some(s) if s == &plan.canary => {
            return Err(RolloutError::Invalid("stable: not the canary".into()));
        }
        Some(s) if names.contains(s) => s.clone(),
        Some(s) => {
            return Err(RolloutError::Invalid(format!(
                "stable: {name} has no backend {s:?}"
            )));
        }
        None => {
            let others: Vec<&String> = names.iter().filter(|n| **n != plan.canary).collect();
            match others.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(RolloutError::Invalid(format!(
                        "stable: {name} has {} other backends; name the stable one",
                        others.len()
                    )));
                }
            }
        }
    };
    let was = get(kv, key, Consistency::Linearizable).await?;
    if let Some((r, _)) = was.as_ref().filter(|(r, _)| r.state.open()) {
        return Err(RolloutError::Conflict(format!(
            "{name} has a rollout {} already: abort it first",
            r.state.as_str()
        )));
    }
    let rollout = Rollout {
        weight: plan.steps[0],
        next_check_ms: now_ms() + plan.interval_ms,
        plan,
        stable_backend: stable,
        state: State::Progressing,
        step: 0,
        failures: 0,
        started: now_text(),
        source: source.to_string(),
        checks: Vec::new(),
    };
    let rev = was.map_or(0, |(_, rev)| rev);
    save(
        kv,
        key,
        &rollout,
        rev,
        "rollout.started",
        source,
        Some((value, route_rev)),
    )
    .await?;
    Ok(rollout)
}

/// What an operator can ask of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "promote" => Some(Action::Promote),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }
}

/// Does `action` to the route's rollout, as `source`.
pub async fn act(
    kv: &Kv,
    key: &RouteKey,
    action: Action,
    source: &str,
) -> Result<Rollout, RolloutError> {
    let name = route_name(key);
    let (mut r, rev) = get(kv, key, Consistency::Linearizable)
        .await?
        .ok_or_else(|| RolloutError::NoRollout(name.clone()))?;
    if !r.state.open() {
        return Err(RolloutError::Conflict(format!(
            "the rollout of {name} is {} already",
            r.state.as_str()
        )));
    }
    let refuse = |why: &str| {
        Err(RolloutError::Conflict(format!(
            "the rollout of {name} is {why}"
        )))
    };
    let (kind, weights) = match action {
        Action::Pause if r.state == State::Paused => return refuse("paused already"),
        Action::Pause => {
            r.state = State::Paused;
            ("rollout.paused", false)
        }
        Action::Resume if r.state == State::Progressing => return refuse("not paused"),
        Action::Resume => {
            r.state = State::Progressing;
            r.next_check_ms = now_ms() + r.plan.interval_ms;
            ("rollout.resumed", false)
        }
        Action::Promote => {
            r.state = State::Promoted;
            r.weight = 100;
            ("rollout.promoted", true)
        }
        Action::Abort => {
            r.state = State::Aborted;
            r.weight = 0;
            ("rollout.aborted", true)
        }
    };
    let route = match weights {
        true => Some(route_value(kv, key).await?),
        false => None,
    };
    save(kv, key, &r, rev, kind, source, route).await?;
    Ok(r)
}

/// Runs the checks that are due while this node leads, until `shutdown`.
pub async fn run(kv: Kv, stats: std::sync::Arc<Stats>, shutdown: CancellationToken) {
    let mut metrics = kv.raft().metrics();
    while let Some(term) = crate::leader::term(&kv, &mut metrics, &shutdown).await {
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = term.cancelled() => break,
            }
            // The leader has applied every write it acknowledged: its own copy is whole.
            let due = match list(&kv, Consistency::Stale).await {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the rollouts");
                    continue;
                }
            };
            let now = now_ms();
            for (name, r, rev) in due {
                if r.state != State::Progressing || r.next_check_ms > now {
                    continue;
                }
                let Ok(key) = RouteKey::parse(&format!("{}{name}", crate::routes::ROUTE_PREFIX))
                else {
                    continue;
                };
                if let Err(e) = check(&kv, &stats, &key, r, rev).await {
                    // Tried again at the next look: said once a while.
                    static FAILED: roo_kv::throttle::Throttles =
                        roo_kv::throttle::Throttles::new(Duration::from_secs(30));
                    if let Some(held_back) = FAILED.ready(&name) {
                        tracing::warn!(route = %name, error = %e, held_back, "rollout check");
                    }
                }
            }
        }
    }
}

/// The check at the end of an interval, and what follows from it.
async fn check(
    kv: &Kv,
    stats: &Stats,
    key: &RouteKey,
    mut r: Rollout,
    rev: u64,
) -> Result<(), RolloutError> {
    let name = route_name(key);
    let frozen = format!("{}{name}", write::FROZEN_PREFIX);
    if kv.get(&frozen, Consistency::Stale).await?.is_some() {
        // Held back by the freeze: the rollout waits where it is, and says so once an interval.
        tracing::info!(route = %name, "rollout held back: the route is frozen");
        r.next_check_ms = now_ms() + r.plan.interval_ms;
        return save(kv, key, &r, rev, "rollout.held", SOURCE, None)
            .await
            .map(|_| ());
    }
    let route = match route_value(kv, key).await {
        Ok(route) => route,
        // Nothing left to roll out to.
        Err(e @ (RolloutError::NoRoute(_) | RolloutError::Invalid(_))) => {
            tracing::warn!(route = %name, error = %e, "rollout aborted");
            r.state = State::Aborted;
            return save(kv, key, &r, rev, "rollout.aborted", SOURCE, None)
                .await
                .map(|_| ());
        }
        Err(e) => return Err(e),
    };
    let window = r.plan.window();
    let seen = stats::gather(kv, stats, &name, window).await;
    let canary = seen
        .backends
        .get(&r.plan.canary)
        .cloned()
        .unwrap_or_default();
    let (success_rate, p99_ms) = (canary.success_rate(), canary.quantile_ms(0.99));
    let verdict = if canary.requests < r.plan.min_requests {
        Verdict::Hold
    } else if success_rate.unwrap_or(0.0) < r.plan.min_success_rate
        || p99_ms.unwrap_or(f64::MAX) > r.plan.max_p99_ms
    {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    r.checks.push(Check {
        time: now_text(),
        step: r.step,
        weight: r.weight,
        requests: canary.requests,
        success_rate,
        p99_ms,
        verdict,
        missing: seen.missing.keys().copied().collect(),
    });
    if r.checks.len() > CHECKS_KEPT {
        r.checks.remove(0);
    }
    r.next_check_ms = now_ms() + r.plan.interval_ms;
    let (kind, weights) = match verdict {
        Verdict::Hold => ("rollout.check", false),
        Verdict::Fail => {
            r.failures += 1;
            if r.failures >= r.plan.failure_limit {
                r.state = State::Aborted;
                r.weight = 0;
                ("rollout.aborted", true)
            } else {
                ("rollout.check", false)
            }
        }
        Verdict::Pass if r.step + 1 < r.plan.steps.len() => {
            r.step += 1;
            r.weight = r.plan.steps[r.step];
            ("rollout.step", true)
        }
        Verdict::Pass => {
            r.state = State::Promoted;
            r.weight = 100;
            ("rollout.promoted", true)
        }
    };
    save(kv, key, &r, rev, kind, SOURCE, weights.then_some(route)).await?;
    tracing::info!(route = %name, kind, step = r.step, weight = r.weight, "rollout");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_take_defaults_and_refuse_bad_values() {
        let plan = Plan::parse(br#"{"canary":"v2"}"#).unwrap();
        assert_eq!(plan.steps, vec![10, 25, 50, 100]);
        assert_eq!(
            (plan.interval_ms, plan.failure_limit, plan.min_requests),
            (60_000, 2, 20)
        );
        for (body, why) in [
            (r#"{}"#, "canary"),
            (r#"{"canary":"v2","steps":[]}"#, "steps"),
            (r#"{"canary":"v2","steps":[10,10]}"#, "steps"),
            (r#"{"canary":"v2","steps":[0,50]}"#, "steps"),
            (r#"{"canary":"v2","steps":[50,101]}"#, "steps"),
            (r#"{"canary":"v2","interval_ms":5}"#, "interval_ms"),
            (
                r#"{"canary":"v2","min_success_rate":1.5}"#,
                "min_success_rate",
            ),
            (r#"{"canary":"v2","max_p99_ms":0}"#, "max_p99_ms"),
            (r#"{"canary":"v2","failure_limit":0}"#, "failure_limit"),
            (r#"{"canary":"v2","bogus":1}"#, "bogus"),
        ] {
            let e = Plan::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn weights_go_to_the_canary_and_the_rest_to_the_stable_backend() {
        let value = json!({"backends": [
            {"name": "v1", "url": "http://a:80", "weight": 100},
            {"name": "v2", "url": "http://b:80", "weight": 0},
            {"name": "other", "url": "http://c:80", "weight": 7},
        ]});
        let r = Rollout {
            plan: Plan::parse(br#"{"canary":"v2"}"#).unwrap(),
            stable_backend: "v1".into(),
            state: State::Progressing,
            step: 1,
            weight: 25,
            failures: 0,
            next_check_ms: 0,
            started: String::new(),
            source: "api".into(),
            checks: Vec::new(),
        };
        let v = weighed(value, &r, 25);
        let w: Vec<u64> = v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].as_u64().unwrap())
            .collect();
        assert_eq!(w, vec![75, 25, 7]);
    }
}
