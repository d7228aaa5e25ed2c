//! `GET /roo/v1/watch/{prefix}?rev=N`: changes after revision N, one JSON object a line.
//!
//! Without `rev` the stream starts at the node's current revision. A history that no longer
//! reaches back to N gets 410; when that happens mid-stream (a snapshot replaced the state, or the
//! reader fell too far behind) the stream ends with an `{"ok":false,"error":...}` line. Either way:
//! scan again, then watch from the scan's `rev`.

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use roo_kv::KvError;

use super::auth::Access;
use super::{decode_path, query_u64, Api, ApiError, Body};

pub(super) fn watch<B>(
    api: &Api,
    access: Access,
    raw_prefix: &str,
    req: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let prefix = decode_path(raw_prefix)?;
    api.tokens.require_reader(access, &prefix)?;
    let tokens = api.tokens.clone();
    let after = query_u64(req.uri(), "rev")?;
    let watch = api.kv.watch(&prefix, after)?;
    let shutdown = api.shutdown.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut watch = watch;
        loop {
            let next = tokio::select! {
                next = watch.next() => next,
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            let line = match next {
                Ok(mut ev) => {
                    if let Some(value) = ev.value.take() {
                        match tokens.visible(access, &ev.key, value) {
                            Some(v) => ev.value = Some(v),
                            // A key this reader may not see: left out of the stream.
                            None => continue,
                        }
                    }
                    serde_json::to_string(&ev).unwrap_or_default()
                }
                Err(KvError::Shutdown) => return,
                Err(e) => {
                    let line = serde_json::json!({"ok": false, "error": e.to_string()}).to_string();
                    let _ = tx.send(Bytes::from(line + "\n")).await;
                    return;
                }
            };
            if tx.send(Bytes::from(line + "\n")).await.is_err() {
                return;
            }
        }
    });
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(Frame::data(line)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
