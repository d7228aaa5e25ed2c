//! The store under faults, over rood processes and real sockets: a history of compare-and-set
//! increments and reads through every node while the leader is killed -9 and frozen in rounds,
//! then checked (every write applied once, none applied that was answered as failed, reads
//! never going back in time, all nodes alike); a write whose answer is lost on the way retried
//! and applied once; idempotency keys; a leader cut off from its quorum; a peer answering
//! garbage.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{process_cluster, wait_for, wait_for_cluster, Http, Proc, SECRET};
use http_body_util::BodyExt;
use rand::Rng;
use serde_json::Value;

/// A change a watch delivered: revision, key, value (None for a delete).
type Change = (u64, String, Option<String>);

/// Counter keys the clients increment.
const KEYS: usize = 4;
/// Longer than a node's own request timeout (5 s): a node that answers, answers first.
const CALL: Duration = Duration::from_secs(8);

/// How a client saw a write end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// 200, at this revision.
    Applied(u64),
    /// A definite refusal: 409, or 503 without `"outcome":"unknown"`.
    Refused,
    /// 503 with `"outcome":"unknown"`, a timeout or a broken connection.
    Unknown,
}

#[derive(Debug)]
struct Write {
    key: String,
    tag: String,
    end: Instant,
    outcome: Outcome,
}

#[derive(Debug)]
struct Read {
    key: String,
    start: Instant,
    end: Instant,
    rev: u64,
}

#[derive(Default)]
struct History {
    writes: Vec<Write>,
    reads: Vec<Read>,
}

/// A counter's value: its count, and the tag of the write that set it.
fn parse_counter(value: &str) -> (u64, String) {
    let (count, tag) = value.split_once(':').expect("count:tag");
    (count.parse().expect("a count"), tag.to_string())
}

/// One client: read a counter through its node, then compare-and-set it one higher, again and
/// again, recording both.
async fn cas_client(
    id: usize,
    base: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    history: Arc<Mutex<History>>,
) {
    let http = Http::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("ctr.{}", rand::thread_rng().gen_range(0..KEYS));
        let start = Instant::now();
        let read = tokio::time::timeout(CALL, http.get(&format!("{base}/roo/v1/kv/{key}"))).await;
        let end = Instant::now();
        let r = match read {
            Ok(Ok(r)) if r.status == 200 => r,
            Ok(Ok(r)) => {
                assert_eq!(r.status, 503, "read: {}", r.text());
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            _ => continue,
        };
        let rev: u64 = r.headers["x-roo-revision"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (count, _) = parse_counter(&r.text());
        history.lock().unwrap().reads.push(Read {
            key: key.clone(),
            start,
            end,
            rev,
        });

        let tag = format!("c{id}.{n}");
        n += 1;
        let url = format!("{base}/roo/v1/kv/{key}?prev_rev={rev}");
        let put = tokio::time::timeout(CALL, http.put(&url, format!("{}:{tag}", count + 1))).await;
        let outcome = match put {
            Ok(Ok(r)) if r.status == 200 => Outcome::Applied(r.json()["rev"].as_u64().unwrap()),
            Ok(Ok(r)) if r.status == 409 => Outcome::Refused,
            Ok(Ok(r)) if r.status == 503 => {
                assert!(r.headers.contains_key("retry-after"), "{}", r.text());
                match r.json()["outcome"].as_str() {
                    Some("unknown") => Outcome::Unknown,
                    _ => Outcome::Refused,
                }
            }
            Ok(Ok(r)) => panic!("write answered {}: {}", r.status, r.text()),
            // The request may have reached the node before it broke.
            _ => Outcome::Unknown,
        };
        if matches!(outcome, Outcome::Applied(_)) {
            acked.fetch_add(1, Ordering::Relaxed);
        }
        history.lock().unwrap().writes.push(Write {
            key,
            tag,
            end: Instant::now(),
            outcome,
        });
    }
}

/// A watch stream's lines, read with a bound on each wait.
struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(addr: &str, path: &str) -> Option<Lines> {
        let connect = tokio::net::TcpStream::connect(addr);
        let stream = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .ok()?
            .ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", addr)
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req))
            .await
            .ok()?
            .ok()?;
        (resp.status() == 200).then(|| Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// The next line; None when the stream ends, breaks or stays silent for 2 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).ok();
            }
            let frame = tokio::time::timeout(Duration::from_secs(2), self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// Follows every change under `prefix` from `after` through whichever node answers, resuming
/// where it stopped when its node dies or freezes, until it has seen revision `until` (0: not
/// known yet). Returns (revision, key, value; None for a delete) in order.
async fn follow(
    addrs: Vec<String>,
    prefix: &'static str,
    after: u64,
    until: Arc<AtomicU64>,
) -> Vec<Change> {
    let mut events = Vec::new();
    let mut last = after;
    for node in (0..addrs.len()).cycle() {
        let target = until.load(Ordering::Relaxed);
        if target != 0 && last >= target {
            return events;
        }
        let path = format!("/roo/v1/watch/{prefix}?rev={last}");
        // A node restarted since `last` no longer has that history (410): another one has.
        let Some(mut lines) = Lines::open(&addrs[node], &path).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Some(ev) = lines.next().await {
            let Some(rev) = ev["rev"].as_u64() else {
                break; // {"ok":false,...}: history gone on this node
            };
            assert!(rev > last, "watch went back: {rev} after {last}");
            let value = ev["value"].as_str().map(|v| {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
                String::from_utf8(raw).unwrap()
            });
            let key = ev["key"].as_str().unwrap().to_string();
            events.push((rev, key, value));
            last = rev;
            let target = until.load(Ordering::Relaxed);
            if target != 0 && last >= target {
                return events;
            }
        }
    }
    unreachable!("cycle never ends")
}

/// The index of the process that every one of `live` takes for the leader, once that is one of
/// them (right after a fault the survivors still name the old leader for a while).
async fn leader_index(http: &Http, procs: &[Proc], live: &[usize]) -> usize {
    wait_for(
        "one leader among the live nodes",
        Duration::from_secs(30),
        || async {
            let mut seen = None;
            for i in live {
                let status = http.cluster(&procs[*i].addr).await.ok()?;
                let id = status["leader_id"].as_u64()?;
                let addr = status["members"][id.to_string()].as_str()?;
                let leader = procs.iter().position(|p| p.addr == addr)?;
                if seen.is_some_and(|s| s != leader) {
                    return None;
                }
                seen = Some(leader);
            }
            seen.filter(|l| live.contains(l))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_applies_once_through_leader_kills_and_freezes() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 3, &["--snapshot-every", "500"]).await;
    let http = Http::default();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let mut start_rev = 0;
    for k in 0..KEYS {
        let r = http
            .put(&procs[0].url(&format!("/roo/v1/kv/ctr.{k}")), "0:init")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        start_rev = start_rev.max(r.json()["rev"].as_u64().unwrap());
    }

    let until = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn(follow(addrs.clone(), "ctr.", start_rev, until.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(History::default()));
    let mut clients = Vec::new();
    for id in 0..6 {
        let base = format!("http://{}", addrs[id % 3]);
        let (stop, acked, history) = (stop.clone(), acked.clone(), history.clone());
        clients.push(tokio::spawn(cas_client(id, base, stop, acked, history)));
    }

    // Rounds: kill -9 and SIGSTOP the leader in turn, each time once the survivors have taken
    // writes again, then bring it back.
    let rounds = ["kill -9", "SIGSTOP"].repeat(3);
    for (round, fault) in rounds.iter().enumerate() {
        let all: Vec<usize> = (0..3).collect();
        let li = leader_index(&http, &procs, &all).await;
        let before = acked.load(Ordering::Relaxed);
        wait_for(
            "writes before the fault",
            Duration::from_secs(30),
            || async { (acked.load(Ordering::Relaxed) >= before + 30).then_some(()) },
        )
        .await;
        if *fault == "kill -9" {
            procs[li].kill();
        } else {
            procs[li].freeze();
        }
        let at_fault = acked.load(Ordering::Relaxed);
        let live: Vec<usize> = all.into_iter().filter(|i| *i != li).collect();
        leader_index(&http, &procs, &live).await;
        wait_for(
            "writes through the new leader",
            Duration::from_secs(30),
            || async { (acked.load(Ordering::Relaxed) >= at_fault + 30).then_some(()) },
        )
        .await;
        if *fault == "kill -9" {
            procs[li].restart();
        } else {
            procs[li].thaw();
        }
        wait_for_cluster(&http, &addrs, 3).await;
        eprintln!(
            "round {round} ({fault} of {}): {} writes acknowledged so far",
            procs[li].addr,
            acked.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    // The final state, linearizable, then the watcher up to it and every node alike.
    let scan = http
        .get(&procs[0].url("/roo/v1/kvs/ctr."))
        .await
        .unwrap()
        .json();
    until.store(scan["rev"].as_u64().unwrap(), Ordering::Relaxed);
    let events = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the watcher reaches the final revision")
        .unwrap();
    for p in &procs {
        let url = p.url("/roo/v1/kvs/ctr.?consistency=stale");
        wait_for(
            "every node to hold the same counters",
            Duration::from_secs(30),
            || async {
                let s = http.get(&url).await.ok()?.json();
                (s["results"] == scan["results"]).then_some(())
            },
        )
        .await;
    }
    let history = history.lock().unwrap();
    let acked = check(&history, &events, &scan);
    assert!(acked >= 200, "too little traffic to tell anything");
}

/// Checks a history against the changes the store made and its final state; returns how many
/// writes were acknowledged.
fn check(history: &History, events: &[Change], scan: &Value) -> u64 {
    let writes: HashMap<&str, &Write> =
        history.writes.iter().map(|w| (w.tag.as_str(), w)).collect();
    let mut applied: HashMap<String, u64> = HashMap::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for (rev, key, value) in events {
        let (count, tag) = parse_counter(value.as_deref().expect("counters are never deleted"));
        // Exactly once: no write shows up twice, even one retried inside the cluster.
        assert!(
            applied.insert(tag.clone(), *rev).is_none(),
            "{tag} applied twice"
        );
        // Compare-and-set: each counter goes up by one at a time.
        let last = counts.entry(key.as_str()).or_insert(0);
        assert_eq!(
            count,
            *last + 1,
            "{key} went from {last} to {count} ({tag} at {rev})"
        );
        *last = count;
        let w = writes
            .get(tag.as_str())
            .unwrap_or_else(|| panic!("{tag} applied, never sent"));
        assert_eq!(&w.key, key);
        match w.outcome {
            Outcome::Refused => panic!("{tag} was answered as refused but applied at {rev}"),
            Outcome::Applied(r) => assert_eq!(r, *rev, "{tag} acknowledged at another revision"),
            Outcome::Unknown => {}
        }
    }
    let mut tally: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for w in &history.writes {
        let t = tally.entry(w.key.as_str()).or_default();
        match w.outcome {
            Outcome::Applied(_) => {
                t[0] += 1;
                assert!(
                    applied.contains_key(&w.tag),
                    "{} acknowledged, not applied",
                    w.tag
                );
            }
            Outcome::Unknown => t[1] += 1,
            Outcome::Refused => t[2] += 1,
        }
    }
    for (key, [acked, unknown, _]) in &tally {
        let value = scan["results"][*key].as_str().unwrap();
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        let (count, _) = parse_counter(std::str::from_utf8(&value).unwrap());
        assert!(
            (*acked..=acked + unknown).contains(&count),
            "{key} is {count}, outside [{acked}, {}]",
            acked + unknown
        );
        assert_eq!(count, counts.get(key).copied().unwrap_or(0));
    }

    // Linearizable reads: one that began after another ended (or after a write was
    // acknowledged) never sees an older revision of the key.
    for k in 0..KEYS {
        let key = format!("ctr.{k}");
        let mut ended: Vec<(Instant, u64)> =
            history
                .reads
                .iter()
                .filter(|r| r.key == key)
                .map(|r| (r.end, r.rev))
                .chain(history.writes.iter().filter(|w| w.key == key).filter_map(
                    |w| match w.outcome {
                        Outcome::Applied(rev) => Some((w.end, rev)),
                        _ => None,
                    },
                ))
                .collect();
        ended.sort();
        let mut highest = Vec::with_capacity(ended.len());
        let mut max = 0;
        for (_, rev) in &ended {
            max = max.max(*rev);
            highest.push(max);
        }
        for r in history.reads.iter().filter(|r| r.key == key) {
            let before = ended.partition_point(|(end, _)| *end < r.start);
            if before > 0 {
                let floor = highest[before - 1];
                assert!(
                    r.rev >= floor,
                    "a read of {key} saw revision {} after {floor} was seen",
                    r.rev
                );
            }
        }
    }
    let [acked, unknown, refused] = tally
        .values()
        .fold([0; 3], |a, t| [a[0] + t[0], a[1] + t[1], a[2] + t[2]]);
    eprintln!(
        "{} writes: {acked} acknowledged, {unknown} unknown, {refused} refused; {} applied; {} reads",
        history.writes.len(),
        applied.len(),
        history.reads.len()
    );
    acked
}

/// The checker itself catches what it must: a small history, right, then broken three ways.
mod checker {
    use super::*;

    fn counters(values: &[(&str, &str)]) -> Value {
        use base64::Engine;
        let results: serde_json::Map<String, Value> = values
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    base64::engine::general_purpose::STANDARD.encode(v).into(),
                )
            })
            .collect();
        serde_json::json!({ "results": results })
    }

    /// Two writes on ctr.0 (applied at 5, unknown and applied at 6), one refused, two reads.
    fn sample() -> (History, Vec<Change>, Value) {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let write = |tag: &str, end, outcome| Write {
            key: "ctr.0".into(),
            tag: tag.into(),
            end: at(end),
            outcome,
        };
        let read = |start, end, rev| Read {
            key: "ctr.0".into(),
            start: at(start),
            end: at(end),
            rev,
        };
        let history = History {
            writes: vec![
                write("a", 10, Outcome::Applied(5)),
                write("b", 20, Outcome::Unknown),
                write("c", 30, Outcome::Refused),
            ],
            reads: vec![read(11, 12, 5), read(40, 41, 6)],
        };
        let events = vec![
            (5, "ctr.0".into(), Some("1:a".into())),
            (6, "ctr.0".into(), Some("2:b".into())),
        ];
        (history, events, counters(&[("ctr.0", "2:b")]))
    }

    #[test]
    fn a_right_history_passes() {
        let (history, events, scan) = sample();
        assert_eq!(check(&history, &events, &scan), 1);
    }

    #[test]
    #[should_panic(expected = "applied twice")]
    fn a_write_applied_twice_fails() {
        let (history, mut events, _) = sample();
        events.push((7, "ctr.0".into(), Some("3:b".into())));
        check(&history, &events, &counters(&[("ctr.0", "3:b")]));
    }

    #[test]
    #[should_panic(expected = "answered as refused but applied")]
    fn a_refused_write_that_applied_fails() {
        let (history, mut events, _) = sample();
        events.push((7, "ctr.0".into(), Some("3:c".into())));
        check(&history, &events, &counters(&[("ctr.0", "3:c")]));
    }

    #[test]
    #[should_panic(expected = "saw revision 5 after 6")]
    fn a_read_back_in_time_fails() {
        let (mut history, events, scan) = sample();
        let late = history.reads[1].end + Duration::from_millis(5);
        history.reads.push(Read {
            key: "ctr.0".into(),
            start: late,
            end: late,
            rev: 5,
        });
        check(&history, &events, &scan);
    }
}

/// A relay in front of a node's API port: passes every request on, except that while `lose` is
/// above zero it takes the answer of a forwarded write (`/roo/v1/raft/write`) and closes the
/// connection instead, as a leader that dies right after committing would. Counts the write
/// RPCs it saw.
async fn lossy_relay(
    to: String,
    lose: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
) -> std::net::SocketAddr {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<Bytes>>();
    common::http_server(move |req: http::Request<hyper::body::Incoming>| {
        let (client, to, lose, seen) = (client.clone(), to.clone(), lose.clone(), seen.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            let write = parts.uri.path() == "/roo/v1/raft/write";
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://{to}{target}").parse().unwrap();
            let req = http::Request::from_parts(parts, http_body_util::Full::new(body));
            let resp = client.request(req).await.map_err(std::io::Error::other)?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            if write {
                seen.fetch_add(1, Ordering::SeqCst);
                let lost =
                    lose.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if lost.is_ok() {
                    return Err(std::io::Error::other("answer lost on the way"));
                }
            }
            Ok(http::Response::from_parts(
                parts,
                http_body_util::Full::new(body),
            ))
        }
    })
    .await
}

/// The events of `events` about `key`.
fn about<'a>(events: &'a [Change], key: &str) -> Vec<&'a Change> {
    events.iter().filter(|e| e.1 == key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_answer_is_lost_is_retried_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = Http::default();
    let port = common::free_port("127.0.0.1");
    let addrs: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}:{port}")).collect();
    // Every node advertises a relay, so that the writes followers forward to the leader,
    // whichever it is, go through one.
    let (lose, seen) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut relays = Vec::new();
    for a in &addrs {
        relays.push(
            lossy_relay(a.clone(), lose.clone(), seen.clone())
                .await
                .to_string(),
        );
    }
    let node = |i: usize, join: Option<&str>| {
        let mut args = vec![
            "--advertise",
            relays[i].as_str(),
            "--request-timeout-ms",
            "1500",
        ];
        args.extend(join.map(|seed| ["--join", seed]).into_iter().flatten());
        Proc::start(&addrs[i], &dir.path().join(format!("n{i}")), &args)
    };
    let mut procs = vec![node(0, None)];
    wait_for_cluster(&http, &addrs[..1], 1).await;
    procs.push(node(1, Some(&addrs[0])));
    procs.push(node(2, Some(&addrs[0])));
    let leader = wait_for_cluster(&http, &addrs, 3).await;
    let status = http.cluster(&addrs[0]).await.unwrap();
    let leader_relay = common::addr_of(&status, leader);
    let follower = (0..3).find(|i| relays[*i] != leader_relay).unwrap();
    let base = format!("http://{}", addrs[follower]);
    let start = http
        .get(&format!("{base}/roo/v1/kvs/once."))
        .await
        .unwrap()
        .json()["rev"]
        .as_u64()
        .unwrap();
    let until = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn(follow(addrs.clone(), "once.", start, until.clone()));

    // A plain PUT, a create-only PUT and a DELETE, each with the leader's first answer lost.
    let mut answers = Vec::new();
    for (method, path) in [
        ("PUT", "/roo/v1/kv/once.put"),
        ("PUT", "/roo/v1/kv/once.create?prev_rev=0"),
        ("DELETE", "/roo/v1/kv/once.put"),
    ] {
        lose.store(1, Ordering::SeqCst);
        let before = seen.load(Ordering::SeqCst);
        let r = http
            .send(method, &format!("{base}{path}"), &[], "v")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert_eq!(lose.load(Ordering::SeqCst), 0, "the first answer was lost");
        assert!(
            seen.load(Ordering::SeqCst) >= before + 2,
            "and the write sent again"
        );
        answers.push(r.json());
    }
    assert_eq!(answers[2]["deleted"], 1);
    let revs: Vec<u64> = answers.iter().map(|a| a["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs, [start + 1, start + 2, start + 3], "one revision each");

    // Every answer lost until the deadline: the node cannot know, and says so.
    lose.store(u64::MAX, Ordering::SeqCst);
    let r = http
        .put(&format!("{base}/roo/v1/kv/once.unknown"), "u")
        .await
        .unwrap();
    lose.store(0, Ordering::SeqCst);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["outcome"], "unknown", "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    let r = http
        .get(&format!("{base}/roo/v1/kv/once.unknown"))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "u"), "it had applied");
    assert_eq!(
        r.headers["x-roo-revision"],
        (start + 4).to_string().as_str()
    );

    until.store(start + 4, Ordering::SeqCst);
    let events = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        about(&events, "once.put").len(),
        2,
        "one put and one delete: {events:?}"
    );
    assert_eq!(about(&events, "once.create").len(), 1, "{events:?}");
    assert_eq!(about(&events, "once.unknown").len(), 1, "{events:?}");
    assert_eq!(events.len(), 4);
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_make_a_clients_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 3, &[]).await;
    let http = Http::default();
    let urls: Vec<String> = procs.iter().map(|p| p.url("/roo/v1/kv/idem.a")).collect();
    let put = |node: usize, key: &'static str, body: &'static str| {
        let (http, url) = (http.clone(), urls[node].clone());
        async move {
            http.send("PUT", &url, &[("Idempotency-Key", key)], body)
                .await
                .unwrap()
        }
    };
    let first = put(0, "order-1", "one").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let rev = first.json()["rev"].as_u64().unwrap();
    // The client's retry through another node, the key quoted as its draft standard has it.
    let again = put(1, "\"order-1\"", "one").await;
    assert_eq!(
        (again.status, again.json()["rev"].as_u64()),
        (200, Some(rev))
    );
    // The same key for another request: refused, nothing changed.
    let other = put(2, "order-1", "two").await;
    assert_eq!(other.status, 422, "{}", other.text());
    assert!(other.json()["error"].as_str().unwrap().contains("order-1"));
    let url = procs[2].url("/roo/v1/kv/idem.a?prev_rev=0");
    let r = http
        .send("DELETE", &url, &[("Idempotency-Key", "order-1")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    // A new key is a new write.
    let second = put(0, "order-2", "two").await;
    assert_eq!(second.json()["rev"].as_u64(), Some(rev + 1));
    for bad in ["", "é", &"k".repeat(256)] {
        let url = procs[0].url("/roo/v1/kv/idem.bad");
        let r = http
            .send("PUT", &url, &[("Idempotency-Key", bad)], "x")
            .await;
        // A non-ASCII header value may not even leave the client: nothing stored either way.
        if let Ok(r) = r {
            assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        }
    }
    assert_eq!(
        http.get(&procs[1].url("/roo/v1/kv/idem.bad"))
            .await
            .unwrap()
            .status,
        404
    );

    // Kept in the store itself: through kill -9 of every node.
    for p in procs.iter_mut() {
        p.kill();
    }
    for p in procs.iter_mut() {
        p.restart();
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    wait_for_cluster(&http, &addrs, 3).await;
    let retry = put(2, "order-1", "one").await;
    assert_eq!(
        (retry.status, retry.json()["rev"].as_u64()),
        (200, Some(rev))
    );
    let r = http.get(&procs[0].url("/roo/v1/kv/idem.a")).await.unwrap();
    assert_eq!(
        (
            r.text().as_str(),
            r.headers["x-roo-revision"].to_str().unwrap()
        ),
        ("two", (rev + 1).to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_stops_answering_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let procs = process_cluster(dir.path(), 3, &[]).await;
    let http = Http::default();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let li = leader_index(&http, &procs, &[0, 1, 2]).await;
    let leader = &procs[li];
    assert_eq!(
        http.put(&leader.url("/roo/v1/kv/cut.before"), "1")
            .await
            .unwrap()
            .status,
        200
    );
    // Both followers frozen: the leader is alive, and alone.
    let followers: Vec<&Proc> = procs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, p)| p)
        .collect();
    for f in &followers {
        f.freeze();
    }
    let status = wait_for(
        "the leader to give up its leadership",
        Duration::from_secs(10),
        || async {
            let s = http.cluster(&leader.addr).await.ok()?;
            s["leader_id"].is_null().then_some(s)
        },
    )
    .await;
    assert!(status["quorum_ack_ms"].as_u64().unwrap() > 600, "{status}");
    // It refuses writes as not applied (not "unknown") and linearizable reads.
    let r = http
        .put(&leader.url("/roo/v1/kv/cut.during"), "2")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["outcome"].is_null(), "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    let r = http
        .get(&leader.url("/roo/v1/kv/cut.before"))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    // A stale read still answers from its copy.
    let r = http
        .get(&leader.url("/roo/v1/kv/cut.before?consistency=stale"))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "1"));

    for f in &followers {
        f.thaw();
    }
    wait_for_cluster(&http, &addrs, 3).await;
    let r = http
        .get(&procs[(li + 1) % 3].url("/roo/v1/kv/cut.during"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "the refused write never applied");
    assert_eq!(
        http.put(&leader.url("/roo/v1/kv/cut.after"), "3")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_answers_garbage_is_backed_off_and_shown_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let procs = process_cluster(dir.path(), 1, &[]).await;
    let http = Http::default();
    // A "member" that answers every request 200 with JSON that is no raft answer.
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let garbage_addr = common::http_server(move |req: http::Request<hyper::body::Incoming>| {
        let counted = counted.clone();
        async move {
            if req.uri().path().starts_with("/roo/v1/raft/") {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            let _ = req.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"{\"hello\":\"world\"}"),
            )))
        }
    })
    .await
    .to_string();
    // Joined as a learner (the join itself never completes: the learner never catches up).
    let join_url = procs[0].url("/roo/v1/cluster/join");
    let body = serde_json::json!({"node_id": 4242, "addr": garbage_addr}).to_string();
    let joining = {
        let http = http.clone();
        tokio::spawn(async move {
            http.send("POST", &join_url, &[("x-roo-cluster-secret", SECRET)], body)
                .await
        })
    };
    wait_for(
        "the learner in the membership",
        Duration::from_secs(10),
        || async {
            let s = http.cluster(&procs[0].addr).await.ok()?;
            s["learners"]
                .as_array()?
                .iter()
                .any(|l| l == 4242)
                .then_some(())
        },
    )
    .await;
    let status = wait_for(
        "the leader to see it unreachable",
        Duration::from_secs(10),
        || async {
            let s = http.cluster(&procs[0].addr).await.ok()?;
            (s["health"]["4242"]["reachable"] == false
                && s["health"]["4242"]["failures"].as_u64()? > 2)
                .then_some(s)
        },
    )
    .await;
    let health = &status["health"]["4242"];
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains(&garbage_addr),
        "{status}"
    );
    assert!(health["lag"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(
        status["health"][status["node_id"].to_string()]["reachable"],
        true,
        "{status}"
    );

    let from = hits.load(Ordering::SeqCst);
    let counting = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let per_second = (hits.load(Ordering::SeqCst) - from) as f64 / counting.elapsed().as_secs_f64();
    // Backed off like an unreachable peer: a few a second (the pause stays below the election
    // timeout), not the tens of thousands a second of a retry loop.
    assert!(
        per_second < 30.0,
        "{per_second:.0} RPCs a second to a peer answering garbage"
    );
    eprintln!("{per_second:.1} RPCs a second to a peer answering garbage");
    // One line when it stopped answering, not one a failure.
    let lines = procs[0].log_lines("peer does not answer").len()
        + procs[0].log_lines("peer still does not answer").len();
    assert!((1..=2).contains(&lines), "{lines} warning lines");
    joining.abort();
    // The cluster still works, and the learner goes.
    assert_eq!(
        http.put(&procs[0].url("/roo/v1/kv/g"), "1")
            .await
            .unwrap()
            .status,
        200
    );
    let url = procs[0].url("/roo/v1/cluster/members/4242");
    let rm = http
        .send("DELETE", &url, &[("x-roo-cluster-secret", SECRET)], "")
        .await;
    assert_eq!(rm.unwrap().status, 200);
}
