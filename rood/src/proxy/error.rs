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
    /// A TLS request for a host the connection's certificate does not cover.
    #[error("this connection's certificate does not cover {0}")]
    Misdirected(String),
    /// A method the proxy does not serve (CONNECT).
    #[error("{0} is not served here")]
    MethodNotAllowed(http::Method),
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
    /// The client's request body broke off: its fault, not the upstream's.
    #[error(transparent)]
    ClientBody(#[from] BodyError),
}

/// Why a client's request body could not be read to its end. Answered 400 (408 for a stall)
/// and the connection closed: what follows a broken body cannot be told from it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("request body: {0}")]
    Framing(&'static str),
    #[error("request body: nothing received for {0} ms")]
    Stalled(u64),
    #[error("request body: the connection closed before its end")]
    Closed,
    #[error("request body: larger than this route's {0} bytes")]
    TooLarge(u64),
}

impl BodyError {
    /// The one somewhere in `e`'s chain of causes (a client body's error reaches a proxy error
    /// through the HTTP client that was sending it).
    pub fn within<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        std::iter::successors(Some(e), |e| e.source()).find_map(|e| {
            // An io::Error's source is its inner error's source, not the inner error itself.
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref());
            e.downcast_ref()
                .or_else(|| inner.and_then(|i| i.downcast_ref()))
        })
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody(BodyError::Stalled(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the request may go to another address: only when nothing was sent.
    pub fn retry_safe(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }
}
