//! Answers: the API's error type and the JSON, text and stream bodies.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use roo_kv::KvError;

/// The body of every API answer.
pub type Body = BoxBody<Bytes, Infallible>;

/// What can go wrong in an API request, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    /// Not found, with what was not.
    #[error("{0}")]
    NotFoundWhy(String),
    #[error("method not allowed")]
    MethodNotAllowed(Vec<Method>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The resource's state does not allow it (a frozen route).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::NotFoundWhy(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Kv(e) => match e {
                KvError::InvalidKey(_) | KvError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                KvError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                KvError::Conflict { .. } => StatusCode::CONFLICT,
                KvError::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                KvError::Compacted { .. } => StatusCode::GONE,
                KvError::Unavailable { .. }
                | KvError::OutcomeUnknown { .. }
                | KvError::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
                KvError::Peer { .. } => StatusCode::BAD_GATEWAY,
                KvError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "api request failed");
        }
        let mut body = serde_json::json!({"ok": false, "error": self.to_string()});
        if let ApiError::Kv(KvError::OutcomeUnknown { .. }) = &self {
            // Not a refusal: the write may have applied. The client reads to know, or retries
            // with the same Idempotency-Key.
            body["outcome"] = "unknown".into();
        }
        let mut resp = json(status, &body);
        match &self {
            ApiError::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    resp.headers_mut().insert(header::ALLOW, v);
                }
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Kv(KvError::Unavailable { retry_after, .. }) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_value(*retry_after));
            }
            ApiError::Kv(KvError::Shutdown | KvError::OutcomeUnknown { .. }) => {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    retry_after_value(Duration::from_secs(1)),
                );
            }
            _ => {}
        }
        resp
    }
}

fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs().max(1))
}

pub fn boxed(body: Full<Bytes>) -> Body {
    body.boxed()
}

/// A JSON answer, on one line.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain text answer.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Raw bytes, as stored.
pub fn bytes(body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
