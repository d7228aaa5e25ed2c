//! `/debug/pprof/`: CPU and heap profiles from a running rood process decode as pprof protobuf,
//! the flame graph is SVG, and all of it needs the admin token.

mod common;

use common::{free_port, wait_for_cluster, Http, Proc};
use pprof::protos::Message;

const ADMIN: &str = "admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_decode_as_pprof() {
    let dir = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let _node = Proc::start(&api, &dir.path().join("n1"), &["--api-token", ADMIN]);
    let http = Http::default();
    wait_for_cluster(&http, std::slice::from_ref(&api), 1).await;
    let auth = format!("Bearer {ADMIN}");
    let get = |path: &str, token: bool| {
        let (http, url, auth) = (http.clone(), format!("http://{api}{path}"), auth.clone());
        async move {
            let headers: Vec<(&str, &str)> = if token {
                vec![("authorization", auth.as_str())]
            } else {
                vec![]
            };
            http.send("GET", &url, &headers, "").await.unwrap()
        }
    };
    assert_eq!(
        get("/debug/pprof/profile?seconds=1", false).await.status,
        401
    );
    assert_eq!(
        get("/debug/pprof/profile?seconds=0", true).await.status,
        400
    );

    // Load while the CPU profile runs, so that it has samples.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..8 {
        let (http, api, stop) = (http.clone(), api.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = format!("http://{api}/roo/v1/kvs/load.{t}");
                let _ = http.send("GET", &url, &[], "").await;
                if i % 10 == 0 {
                    let url = format!("http://{api}/roo/v1/kv/load.{t}.{i}");
                    let bearer = format!("Bearer {ADMIN}");
                    let _ = http
                        .send("PUT", &url, &[("authorization", &bearer)], "x".repeat(512))
                        .await;
                }
                i += 1;
            }
        }));
    }
    let cpu = get("/debug/pprof/profile?seconds=2", true).await;
    let svg = get("/debug/pprof/flamegraph?seconds=1", true).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(cpu.status, 200, "{}", cpu.text());
    let profile = pprof::protos::Profile::decode(cpu.body.as_ref()).expect("pprof protobuf");
    assert!(!profile.sample_type.is_empty());
    assert!(!profile.sample.is_empty(), "samples under load");
    assert!(
        profile
            .string_table
            .iter()
            .any(|s| s.contains("rood") || s.contains("tokio")),
        "symbolized"
    );

    let heap = get("/debug/pprof/heap", true).await;
    assert_eq!(heap.status, 200, "{}", heap.text());
    // Gzipped, as Go's pprof writes and reads it.
    assert_eq!(&heap.body[..2], &[0x1f, 0x8b], "gzip");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(heap.body.as_ref()),
        &mut raw,
    )
    .unwrap();
    let profile = pprof::protos::Profile::decode(raw.as_slice()).expect("pprof protobuf");
    assert!(!profile.sample_type.is_empty() && !profile.sample.is_empty());

    assert_eq!(svg.status, 200, "{}", svg.text());
    assert!(svg.text().contains("<svg"), "an SVG");
    // Idle, it still says something: a flame graph of what little ran, or that nothing did.
    let idle = get("/debug/pprof/flamegraph?seconds=1", true).await;
    assert_eq!(idle.status, 200);
    let text = idle.text();
    assert!(
        text.contains("No CPU samples") || text.contains("<svg") && text.len() > 1000,
        "{text}"
    );
}
