//! The proxy's error: where it came from, whether a retry is safe, and the status it answers.

use http::StatusCode;

/// Why a request could not be proxied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The client's request is unusable (bad or missing Host, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No route for the host.
    #[error("no route for host {0}")]
    NoRoute(String),
    /// The destination's name did not resolve to any address.
    #[error("upstream {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// No connection could be made: nothing was sent, so another address may be tried.
    #[error("upstream {addr}: connect: {reason}")]
    Connect { addr: String, reason: String },
    /// The upstream failed after the request was (maybe) sent.
    #[error("upstream {addr}: {reason}")]
    Upstream { addr: String, reason: String },
    /// The upstream did not answer in time.
    #[error("upstream {addr}: no answer within {secs}s")]
    Timeout { addr: String, secs: u64 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the request may go to another address: only when nothing was sent.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }
}
