//! Active health checks: each address of each plain-HTTP backend of a route with `health` is
//! asked `GET <path>` every interval; one failing `fails` times in a row leaves rotation (the
//! proxy's choice skips it, as it skips an address that refused a connection) until it passes
//! `passes` times in a row. One checker per node, off the request path: requests read the set
//! of addresses out of rotation as a snapshot.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::routes::model::HealthCheck;
use crate::tables::Tables;

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(50);
/// The longest a check waits for an answer.
const MAX_TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses out of rotation, read by every request that picks an address.
#[derive(Debug, Default)]
pub struct Down {
    addrs: ArcSwap<HashSet<SocketAddr>>,
    /// Whether any address is down: while not, a pick reads nothing else.
    any: AtomicBool,
}

impl Down {
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.any() && self.addrs.load().contains(addr)
    }

    /// Every address out of rotation now (for the dashboard).
    pub fn addrs(&self) -> Arc<HashSet<SocketAddr>> {
        self.addrs.load_full()
    }

    fn set(&self, addrs: HashSet<SocketAddr>) {
        self.any.store(!addrs.is_empty(), Ordering::Relaxed);
        self.addrs.store(Arc::new(addrs));
    }
}

/// One address under one check.
#[derive(Debug)]
struct Probe {
    up: bool,
    /// Failures (or successes) in a row, counting towards the check's thresholds.
    streak: u32,
    due: Instant,
    running: bool,
}

/// What one probe is about: the address, the Host it names, the check.
type Checked = (SocketAddr, String, HealthCheck);

/// Runs the checks of the routes in `tables` until `shutdown`, keeping `down` up to date.
pub async fn run(
    tables: Arc<Tables>,
    resolver: TokioResolver,
    down: Arc<Down>,
    shutdown: CancellationToken,
) {
    let mut probes: HashMap<Checked, Probe> = HashMap::new();
    let mut running: JoinSet<(Checked, bool)> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(Ok((target, passed))) = running.join_next(), if !running.is_empty() => {
                if let Some(p) = probes.get_mut(&target) {
                    record(p, &target, passed);
                }
                publish(&probes, &down);
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        let wanted = targets(&tables, &resolver).await;
        // Checks no route asks for any more are forgotten.
        probes.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        for target in wanted {
            let probe = probes.entry(target.clone()).or_insert(Probe {
                up: true,
                streak: 0,
                due: now,
                running: false,
            });
            if probe.running || probe.due > now {
                continue;
            }
            probe.running = true;
            probe.due = now + Duration::from_millis(target.2.interval_ms);
            running.spawn(async move {
                let passed = check(&target).await;
                (target, passed)
            });
        }
        publish(&probes, &down);
    }
}

/// Every (address, Host, check) the routes ask for now.
async fn targets(tables: &Tables, resolver: &TokioResolver) -> HashSet<Checked> {
    let routes = tables.routes.load_full();
    let mut out = HashSet::new();
    for route in routes.checked() {
        let Some(check) = &route.health else { continue };
        for backend in route.backends().filter(|b| !b.tls() && !b.h2c) {
            for d in &backend.destinations {
                let ips = match d.ip {
                    Some(ip) => vec![ip],
                    None => crate::dns::lookup(resolver, &d.host)
                        .await
                        .unwrap_or_default(),
                };
                for ip in ips {
                    out.insert((SocketAddr::new(ip, d.port), d.host.clone(), check.clone()));
                }
            }
        }
    }
    out
}

fn record(p: &mut Probe, (addr, _, check): &Checked, passed: bool) {
    p.running = false;
    // The streak counts towards a change of state: failures while up, successes while down.
    if passed == p.up {
        p.streak = 0;
        return;
    }
    p.streak += 1;
    match p.up {
        true if p.streak >= check.fails => {
            p.up = false;
            p.streak = 0;
            tracing::warn!(%addr, path = %check.path, fails = check.fails, "health check failing: address out of rotation");
        }
        false if p.streak >= check.passes => {
            p.up = true;
            p.streak = 0;
            tracing::info!(%addr, path = %check.path, "health check passing: address back in rotation");
        }
        _ => {}
    }
}

fn publish(probes: &HashMap<Checked, Probe>, down: &Down) {
    let now: HashSet<SocketAddr> = probes
        .iter()
        .filter(|(_, p)| !p.up)
        .map(|((addr, _, _), _)| *addr)
        .collect();
    if now != **down.addrs.load() {
        down.set(now);
    }
}

/// One `GET`: passed when a status below 400 comes back in time.
async fn check((addr, host, check): &Checked) -> bool {
    let timeout = Duration::from_millis(check.interval_ms).min(MAX_TIMEOUT);
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: roo-health\r\nConnection: close\r\n\r\n",
            check.path
        );
        conn.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.ok()?;
        // `HTTP/1.x NNN`
        let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some(head.starts_with(b"HTTP/1.") && (200..400).contains(&status))
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)))
}
