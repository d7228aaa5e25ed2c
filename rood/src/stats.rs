//! How each backend (a version) of each route is doing: requests, failures (5xx, the 502 and
//! 504 this node answers itself included) and latencies, over a recent window, on this node
//! and across the cluster.
//!
//! The proxy's workers count into their own [`Tally`]s (through [`crate::report::Report`]; the
//! metrics keep them); once a second [`Stats::sample`] turns the workers' totals into a
//! second's worth of change, kept for [`MAX_WINDOW_S`]. [`gather`] asks every member for its
//! window over the peer channel (the cluster secret) and adds them up, naming the members that
//! did not answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use roo_kv::Kv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The longest window kept, in seconds.
pub const MAX_WINDOW_S: u64 = 600;
/// Where a node answers its peers for its own window of a route.
pub const PEER_PATH: &str = "/roo/v1/peer/stats/";
/// Where a node answers its peers for its own counts of every route, in brief.
pub const PEER_BRIEF_PATH: &str = "/roo/v1/peer/stats";
/// How long a member may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Latency buckets: four a power of two of microseconds, from 0 to about 67 s.
const BUCKETS: usize = 104;

/// The bucket of a latency of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (octave - 2)) & 3) as usize;
    ((octave - 1) * 4 + sub).min(BUCKETS - 1)
}

/// The microseconds bucket `b` spans, from and to.
fn bucket_bounds(b: usize) -> (f64, f64) {
    if b < 4 {
        return (b as f64, b as f64 + 1.0);
    }
    let (octave, sub) = (b / 4 + 1, (b % 4) as u64);
    let step = 1u64 << (octave - 2);
    (((4 + sub) * step) as f64, ((5 + sub) * step) as f64)
}

/// Requests of one backend and how they went, counted from some start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    /// Answers of 500 or more.
    pub failures: u64,
    /// Requests by latency bucket, `[bucket, count]` where count is not 0.
    #[serde(with = "sparse")]
    buckets: Box<[u64; BUCKETS]>,
    /// The latencies' sum, in seconds (Prometheus' `_sum`).
    #[serde(default)]
    pub seconds: f64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: 0,
            failures: 0,
            buckets: Box::new([0; BUCKETS]),
            seconds: 0.0,
        }
    }
}

impl Tally {
    /// Counts one answer.
    pub fn count(&mut self, status: u16, seconds: f64) {
        self.requests += 1;
        self.failures += u64::from(status >= 500);
        self.buckets[bucket((seconds * 1e6) as u64)] += 1;
        self.seconds += seconds;
    }

    /// How many requests took at most each of `bounds` (seconds, rising), from the buckets that
    /// end at or below it: Prometheus' cumulative buckets, none counted above its bound.
    pub fn at_most(&self, bounds: &[f64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds.len());
        let (mut b, mut below) = (0, 0);
        for bound in bounds {
            while b < BUCKETS && bucket_bounds(b).1 <= bound * 1e6 {
                below += self.buckets[b];
                b += 1;
            }
            out.push(below);
        }
        out
    }

    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.failures += other.failures;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.seconds += other.seconds;
    }

    /// What was counted since `before` (counts only grow; a reset one starts again).
    fn since(&self, before: &Tally) -> Tally {
        if self.requests < before.requests {
            return self.clone();
        }
        let mut d = Tally {
            requests: self.requests - before.requests,
            failures: self.failures.saturating_sub(before.failures),
            seconds: (self.seconds - before.seconds).max(0.0),
            ..Tally::default()
        };
        for (d, (a, b)) in d
            .buckets
            .iter_mut()
            .zip(self.buckets.iter().zip(before.buckets.iter()))
        {
            *d = a.saturating_sub(*b);
        }
        d
    }

    /// The share of answers that were not failures; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.failures as f64 / self.requests as f64)
    }

    /// The latency at quantile `q` (0 to 1) in milliseconds, interpolated within its bucket;
    /// None without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).max(1.0);
        let mut seen = 0.0;
        for (b, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if seen + n as f64 >= rank {
                let (lo, hi) = bucket_bounds(b);
                let within = (rank - seen) / n as f64;
                return Some((lo + (hi - lo) * within) / 1000.0);
            }
            seen += n as f64;
        }
        None
    }

    /// As the stats API shows it, over `seconds`.
    pub fn summary(&self, seconds: f64) -> Value {
        json!({
            "requests": self.requests,
            "failures": self.failures,
            "rps": self.requests as f64 / seconds.max(1e-9),
            "success_rate": self.success_rate(),
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
        })
    }
}

/// The latency buckets as `[[bucket, count], ...]`, zeros left out.
mod sparse {
    use super::BUCKETS;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u64; BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            b.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i, *n)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u64; BUCKETS]>, D::Error> {
        let pairs: Vec<(usize, u64)> = Vec::deserialize(d)?;
        let mut b = Box::new([0; BUCKETS]);
        for (i, n) in pairs {
            *b.get_mut(i)
                .ok_or_else(|| D::Error::custom(format!("no latency bucket {i}")))? = n;
        }
        Ok(b)
    }
}

/// A route's name and a backend's.
pub type BackendName = (Arc<str>, Arc<str>);

/// Every backend's counts since this node started, as the workers' reports add them up.
pub type Totals = HashMap<BackendName, Tally>;

/// Reads the workers' totals now: of one route, or (None) of every route.
pub type Source = Box<dyn Fn(Option<&str>) -> Totals + Send + Sync>;

/// This node's recent counts, a second at a time.
pub struct Stats {
    source: Source,
    seconds: Mutex<Seconds>,
}

#[derive(Default)]
struct Seconds {
    /// The totals at the last sample, and when it was.
    last: Totals,
    at: Option<Instant>,
    /// Each second's change, newest last: when it ended, and the backends that moved, by route
    /// (a query reads its route's, however many others moved).
    kept: VecDeque<(Instant, Moved)>,
}

/// The backends that moved in a second, by route: `(backend, change)`.
type Moved = HashMap<Arc<str>, Vec<(Arc<str>, Tally)>>;

impl Stats {
    pub fn new(source: Source) -> Stats {
        Stats {
            source,
            seconds: Mutex::new(Seconds::default()),
        }
    }

    /// Takes the change since the last sample as one more second.
    pub fn sample(&self) {
        let now_totals = (self.source)(None);
        let now = Instant::now();
        let mut s = lock(&self.seconds);
        let mut moved = Moved::new();
        for (k, t) in &now_totals {
            let d = match s.last.get(k) {
                Some(before) => t.since(before),
                None => t.clone(),
            };
            if d.requests > 0 {
                moved.entry(k.0.clone()).or_default().push((k.1.clone(), d));
            }
        }
        s.kept.push_back((now, moved));
        while s.kept.len() as u64 > MAX_WINDOW_S {
            s.kept.pop_front();
        }
        s.last = now_totals;
        s.at = Some(now);
    }

    /// Samples once a second until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Route `route`'s counts by backend over the last `window` on this node: the seconds kept
    /// and what came since the last of them.
    pub fn window(&self, route: &str, window: Duration) -> BTreeMap<String, Tally> {
        let totals = (self.source)(Some(route));
        let now = Instant::now();
        let s = lock(&self.seconds);
        let mut out: BTreeMap<String, Tally> = BTreeMap::new();
        for (k, t) in &totals {
            let d = match s.last.get(k) {
                Some(before) => t.since(before),
                None => t.clone(),
            };
            out.entry(k.1.to_string()).or_default().add(&d);
        }
        // A second counts when it ended within the window.
        for (at, moved) in s.kept.iter().rev() {
            if now.duration_since(*at) >= window {
                break;
            }
            for (backend, t) in moved.get(route).into_iter().flatten() {
                out.entry(backend.to_string()).or_default().add(t);
            }
        }
        out
    }
}

/// Requests and failures of a backend: what a page of every route shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Brief {
    pub requests: u64,
    pub failures: u64,
}

impl Brief {
    fn add(&mut self, requests: u64, failures: u64) {
        self.requests += requests;
        self.failures += failures;
    }

    /// The share of answers that were not failures; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.failures as f64 / self.requests as f64)
    }
}

/// Every route's backends in brief, by route then backend.
pub type Briefs = BTreeMap<String, BTreeMap<String, Brief>>;

impl Stats {
    /// Every route's backends over the last `window` of whole seconds on this node. The second
    /// under way is left out: reading it would copy every worker's totals.
    pub fn briefs(&self, window: Duration) -> Briefs {
        let now = Instant::now();
        let s = lock(&self.seconds);
        let mut out = Briefs::new();
        for (at, moved) in s.kept.iter().rev() {
            if now.duration_since(*at) >= window {
                break;
            }
            for (route, backends) in moved {
                let route = out.entry(route.to_string()).or_default();
                for (backend, t) in backends {
                    let b = route.entry(backend.to_string()).or_default();
                    b.add(t.requests, t.failures);
                }
            }
        }
        out
    }
}

/// Every route's backends over `window` across the cluster, and the members that did not
/// answer, with why.
pub async fn gather_briefs(
    kv: &Kv,
    stats: &Stats,
    window: Duration,
) -> (Briefs, BTreeMap<u64, String>) {
    let path = format!("{PEER_BRIEF_PATH}?window_ms={}", window.as_millis());
    let mut out = stats.briefs(window);
    let mut missing = BTreeMap::new();
    for (id, answer) in ask_members::<Briefs>(kv, &path).await {
        match answer {
            Ok(theirs) => {
                for (route, backends) in theirs {
                    let mine = out.entry(route).or_default();
                    for (backend, b) in backends {
                        mine.entry(backend).or_default().add(b.requests, b.failures);
                    }
                }
            }
            Err(e) => {
                missing.insert(id, e);
            }
        }
    }
    (out, missing)
}

/// Asks every other member for `path` over the peer channel, all at once.
async fn ask_members<T: serde::de::DeserializeOwned>(
    kv: &Kv,
    path: &str,
) -> Vec<(u64, Result<T, String>)> {
    let members = crate::leader::members(kv);
    let me = kv.node_id();
    let asks = members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, addr)| {
            let client = kv.peer_client();
            let addr = client.address(*id, addr);
            async move {
                let answer = client.get::<T>(&addr, path, PEER_TIMEOUT).await;
                (*id, answer.map_err(|e| e.to_string()))
            }
        });
    futures_util::future::join_all(asks).await
}

/// What one node answers for its window of a route.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeWindow {
    pub node: u64,
    pub backends: BTreeMap<String, Tally>,
}

/// A route's counts by backend over `window` across the cluster, and who answered.
#[derive(Debug, Default)]
pub struct ClusterWindow {
    pub backends: BTreeMap<String, Tally>,
    pub answered: Vec<u64>,
    /// The members that did not answer, with why.
    pub missing: BTreeMap<u64, String>,
}

impl ClusterWindow {
    /// As `GET /roo/v1/stats/<route>` answers.
    pub fn to_json(&self, route: &str, window: Duration) -> Value {
        let seconds = window.as_secs_f64();
        let backends: serde_json::Map<String, Value> = self
            .backends
            .iter()
            .map(|(name, t)| (name.clone(), t.summary(seconds)))
            .collect();
        let missing: serde_json::Map<String, Value> = self
            .missing
            .iter()
            .map(|(id, why)| (id.to_string(), why.clone().into()))
            .collect();
        json!({
            "route": route,
            "window_s": seconds,
            "backends": backends,
            "nodes": {"answered": self.answered, "missing": missing},
        })
    }
}

/// Route `route`'s counts over `window` from every member: this node's own, the others' over
/// the peer channel, all at once.
pub async fn gather(kv: &Kv, stats: &Stats, route: &str, window: Duration) -> ClusterWindow {
    let path = format!(
        "{PEER_PATH}{}?window_ms={}",
        percent_encoding::utf8_percent_encode(route, percent_encoding::NON_ALPHANUMERIC),
        window.as_millis()
    );
    let answers = ask_members::<NodeWindow>(kv, &path).await;
    let mut out = ClusterWindow::default();
    let own = stats.window(route, window);
    out.answered.push(kv.node_id());
    for (name, t) in own {
        out.backends.entry(name).or_default().add(&t);
    }
    for (id, answer) in answers {
        match answer {
            Ok(w) => {
                out.answered.push(id);
                for (name, t) in w.backends {
                    out.backends.entry(name).or_default().add(&t);
                }
            }
            Err(e) => {
                out.missing.insert(id, e);
            }
        }
    }
    out.answered.sort_unstable();
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket(us);
            assert!(b == last || b == last + 1, "{us}: {b} after {last}");
            let (lo, hi) = bucket_bounds(b);
            assert!(lo <= us as f64 && (us as f64) < hi, "{us} in [{lo}, {hi})");
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_and_rates_come_from_the_counts() {
        let mut t = Tally::default();
        for i in 0..100 {
            // 99 fast answers of 1 ms, one slow failure of 800 ms.
            match i {
                99 => t.count(503, 0.8),
                _ => t.count(200, 0.001),
            }
        }
        assert_eq!(t.success_rate(), Some(0.99));
        let p50 = t.quantile_ms(0.5).unwrap();
        assert!((0.85..1.2).contains(&p50), "{p50}");
        let p99 = t.quantile_ms(0.99).unwrap();
        assert!(p99 < 1.2, "{p99}");
        let max = t.quantile_ms(1.0).unwrap();
        assert!((650.0..1000.0).contains(&max), "{max}");
        assert_eq!(Tally::default().success_rate(), None);
        assert!((t.seconds - (99.0 * 0.001 + 0.8)).abs() < 1e-9);
        // Cumulative: the 99 fast ones by 2 ms (their bucket ends at 1.024 ms), all by 1 s.
        assert_eq!(t.at_most(&[0.0005, 0.002, 0.5, 1.0]), [0, 99, 99, 100]);
        let wire = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tally>(&wire).unwrap(), t);
        assert!(serde_json::from_str::<Tally>(
            r#"{"requests":1,"failures":0,"buckets":[[999,1]]}"#
        )
        .is_err());
    }

    #[test]
    fn a_window_sums_the_seconds_within_it() {
        let totals = Arc::new(Mutex::new(Totals::new()));
        let source = totals.clone();
        let stats = Stats::new(Box::new(move |route: Option<&str>| {
            let all = lock(&source).clone();
            all.into_iter()
                .filter(|(k, _)| route.is_none_or(|r| *k.0 == *r))
                .collect()
        }));
        let key: BackendName = ("a.test:http".into(), "v1".into());
        let add = |n: u64, status: u16| {
            let mut t = lock(&totals);
            let tally = t.entry(key.clone()).or_default();
            (0..n).for_each(|_| tally.count(status, 0.002));
        };
        add(10, 200);
        stats.sample();
        add(5, 500);
        let w = stats.window("a.test:http", Duration::from_secs(60));
        assert_eq!((w["v1"].requests, w["v1"].failures), (15, 5));
        stats.sample();
        // A window shorter than the time since the samples holds only what came after them.
        std::thread::sleep(Duration::from_millis(20));
        add(2, 200);
        let w = stats.window("a.test:http", Duration::from_millis(10));
        assert_eq!((w["v1"].requests, w["v1"].failures), (2, 0));
        assert!(stats
            .window("b.test:http", Duration::from_secs(60))
            .is_empty());
    }
}
