//! `GET /roo/v1/events?since=<id>&type=<prefix>`: the activity stream, oldest first; with
//! `Accept: text/event-stream`, the same live as server-sent events (`id:` the event's id, so
//! that a client that reconnects with `Last-Event-ID` misses none). `GET /roo/v1/webhooks`: the
//! webhooks and how their deliveries stand.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use roo_kv::KvError;
use serde_json::json;

use super::auth::Access;
use super::{consistency, only, query_param, query_u64, reply, Api, ApiError, Body};
use crate::events::{self, Event, Follow, EVENT_PREFIX};

pub(super) const PATH: &str = "/roo/v1/events";
pub(super) const WEBHOOKS_PATH: &str = "/roo/v1/webhooks";
/// A comment line this often keeps proxies between the reader and the node from closing a quiet
/// stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) async fn events(
    api: &Api,
    access: Access,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    only(&req, &[Method::GET])?;
    api.tokens.require_reader(access, EVENT_PREFIX)?;
    // One type prefix, or every type.
    let kinds: Vec<String> = query_param(req.uri(), "type")?
        .filter(|k| !k.is_empty())
        .into_iter()
        .collect();
    if wants_stream(&req) {
        let since = match query_u64(req.uri(), "since")? {
            Some(since) => since,
            None => last_event_id(&req)?,
        };
        let beat = Beat {
            first: KEEPALIVE,
            every: KEEPALIVE,
            chunk: b": keepalive\n\n",
        };
        let follow = Follow::new(api.kv.clone(), since, kinds);
        return Ok(stream_events(api, follow, beat, message));
    }
    let since = query_u64(req.uri(), "since")?.unwrap_or(0);
    let mut events = events::list(&api.kv, since, &kinds, consistency(req.uri())?).await?;
    crate::routes::write::with_values(&api.kv, &mut events).await?;
    Ok(reply::json(StatusCode::OK, &json!({"events": events})))
}

pub(super) async fn webhooks(
    api: &Api,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    only(&req, &[Method::GET])?;
    let webhooks = crate::webhooks::status(&api.kv, consistency(req.uri())?).await?;
    Ok(reply::json(StatusCode::OK, &json!({"webhooks": webhooks})))
}

fn wants_stream<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The id a reconnecting SSE client saw last (0: none).
fn last_event_id<B>(req: &Request<B>) -> Result<u64, ApiError> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event id".into()))
}

/// One event as an SSE message.
fn message(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.id, event.kind
    ))
}

/// What an event stream sends when nothing else happens.
pub(crate) struct Beat {
    /// Until the first one.
    pub first: Duration,
    pub every: Duration,
    pub chunk: &'static [u8],
}

/// The events `follow` gives, live, each as `message` makes it, and `beat` between.
pub(crate) fn stream_events(
    api: &Api,
    mut follow: Follow,
    beat: Beat,
    message: fn(&Event) -> Bytes,
) -> Response<Body> {
    let shutdown = api.shutdown.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + beat.first;
        let mut keepalive = tokio::time::interval_at(start, beat.every);
        loop {
            let chunk = tokio::select! {
                next = follow.next() => match next {
                    Ok(event) => message(&event),
                    Err(KvError::Shutdown) => return,
                    Err(e) => {
                        let error = json!({"ok": false, "error": e.to_string()});
                        let _ = tx.send(Bytes::from(format!("event: error\ndata: {error}\n\n"))).await;
                        return;
                    }
                },
                _ = keepalive.tick() => Bytes::from_static(beat.chunk),
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
