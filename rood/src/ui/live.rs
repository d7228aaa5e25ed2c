//! `/ui/live`: what tells an open page to fetch itself again, as server-sent events: each event
//! of the activity stream after the page's revision (its type as data), and a tick every
//! [`TICK`] for the request rates, which change without events.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};

use crate::api::events::{stream_events, Beat};
use crate::api::{query_param, Api, ApiError, Body};
use crate::events::{Event, Follow};

pub const PATH: &str = "/ui/live";
const TICK: Duration = Duration::from_secs(5);

pub fn stream<B>(api: &Api, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let bad = || ApiError::BadRequest("since must be a revision".into());
    let since = match query_param(req.uri(), "since")? {
        Some(v) => v.parse::<u64>().map_err(|_| bad())?,
        // A reconnecting page says where it was; a new one starts now.
        None => req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| api.kv.revision()),
    };
    // Ticks on the node's clock: every page open on the node fetches itself at the same
    // moment, and one render serves them all (the dashboard's cache of renders).
    let ms = TICK.as_millis() as u64;
    let now = crate::now_ms();
    let beat = Beat {
        first: Duration::from_millis(ms - now % ms),
        every: TICK,
        chunk: b"event: tick\ndata: \n\n",
    };
    let follow = Follow::new(api.kv.clone(), since, Vec::new()).without_values();
    Ok(stream_events(api, follow, beat, message))
}

fn message(event: &Event) -> Bytes {
    Bytes::from(format!("id: {}\ndata: {}\n\n", event.id, event.kind))
}
