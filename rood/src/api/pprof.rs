//! `/debug/pprof/`: profiles as Go's tooling reads them (`go tool pprof
//! http://node:6299/debug/pprof/profile?seconds=30`), behind the admin token.
//!
//! - `profile?seconds=N`: CPU samples (pprof-rs, 99 Hz) over N seconds (1-300, default 30), pprof
//!   protobuf.
//! - `heap`: live allocations sampled by jemalloc's profiler, pprof protobuf (needs the rood
//!   binary, which runs jemalloc with profiling on).
//! - `flamegraph?seconds=N`: the CPU profile as an SVG flame graph.

use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use pprof::protos::Message;

use super::{query_u64, reply, ApiError, Body};

/// Where profiles are served.
pub const PREFIX: &str = "/debug/pprof/";

pub(super) async fn pprof<B>(what: &str, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    match what {
        "profile" | "flamegraph" => {
            let seconds = query_u64(req.uri(), "seconds")?.unwrap_or(30);
            if !(1..=300).contains(&seconds) {
                return Err(ApiError::BadRequest(format!(
                    "seconds={seconds}: use 1 to 300"
                )));
            }
            let svg = what == "flamegraph";
            let body = tokio::task::spawn_blocking(move || cpu(Duration::from_secs(seconds), svg))
                .await
                .map_err(|e| ApiError::Internal(format!("profiler task: {e}")))??;
            Ok(with_type(
                body,
                if svg {
                    "image/svg+xml"
                } else {
                    "application/octet-stream"
                },
            ))
        }
        "heap" => {
            let ctl = jemalloc_pprof::PROF_CTL.as_ref().ok_or_else(|| {
                ApiError::Unavailable(
                    "heap profiling needs the rood binary (jemalloc with profiling)".into(),
                )
            })?;
            let mut ctl = ctl.lock().await;
            if !ctl.activated() {
                return Err(ApiError::Unavailable(
                    "jemalloc profiling is not active".into(),
                ));
            }
            let body = ctl
                .dump_pprof()
                .map_err(|e| ApiError::Internal(format!("heap profile: {e}")))?;
            Ok(with_type(body, "application/octet-stream"))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Samples the CPU for `length`; pprof protobuf, or an SVG flame graph.
fn cpu(length: Duration, svg: bool) -> Result<Vec<u8>, ApiError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ApiError::Unavailable(format!("CPU profiler: {e}")))?;
    std::thread::sleep(length);
    let report = guard
        .report()
        .build()
        .map_err(|e| ApiError::Internal(format!("CPU profile: {e}")))?;
    let mut body = Vec::new();
    if svg && report.data.is_empty() {
        // inferno draws nothing for no samples: say why instead of an empty picture.
        let seconds = length.as_secs();
        body = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="640" height="40"><text x="10" y="25">No CPU samples in {seconds} s: the node was idle.</text></svg>"#
        )
        .into_bytes();
    } else if svg {
        report
            .flamegraph(&mut body)
            .map_err(|e| ApiError::Internal(format!("flame graph: {e}")))?;
    } else {
        let profile = report
            .pprof()
            .map_err(|e| ApiError::Internal(format!("CPU profile: {e}")))?;
        profile
            .encode(&mut body)
            .map_err(|e| ApiError::Internal(format!("encoding the profile: {e}")))?;
    }
    Ok(body)
}

fn with_type(body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut resp = reply::bytes(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
