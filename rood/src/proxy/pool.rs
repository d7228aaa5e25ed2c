//! Keep-alive HTTP/1.1 connections to plain upstream addresses, kept by one proxy worker.
//!
//! A connection is taken for one request and given back when the answer's body has been read to
//! its end, so the next request on this worker can use it at once; an answer dropped half read
//! (the client went away) closes its connection instead. Each worker has its own pool and its
//! connections run on the worker's thread, so the lock here is never contended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upstream::UpstreamBody;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(String),
    /// The request failed on an open connection.
    #[error("{0}")]
    Request(String),
}

/// The pool's bounds.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Idle connections kept per address; more are closed when given back.
    pub max_idle_per_addr: usize,
    /// An idle connection older than this is closed rather than used.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

struct Inner {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    /// When idle connections of every address were last swept.
    swept: Instant,
}

/// One worker's upstream HTTP/1.1 connections.
pub struct Http1Pool {
    config: PoolConfig,
    inner: Mutex<Inner>,
}

impl Http1Pool {
    pub fn new(config: PoolConfig) -> Arc<Self> {
        Arc::new(Http1Pool {
            config,
            inner: Mutex::new(Inner {
                idle: HashMap::new(),
                swept: Instant::now(),
            }),
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` on an idle connection, or a new one.
    /// A request that an idle connection could not take (the upstream closed it meanwhile)
    /// goes on the next one, then on a new connection.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        while let Some(mut sender) = self.take(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.answer(addr, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(request_error(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        sender.ready().await.map_err(request_error)?;
        let resp = sender.send_request(req).await.map_err(request_error)?;
        Ok(self.answer(addr, sender, resp))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                PoolError::Connect(format!(
                    "no answer in {} ms",
                    self.config.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(roo_kv::error::with_causes(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    /// The most recently used live idle connection to `addr`, if any.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let idle = inner.idle.get_mut(&addr)?;
        let fresh_since = Instant::now().checked_sub(self.config.idle_timeout);
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && fresh_since.is_none_or(|t| conn.since > t) {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Takes back a connection whose answer has been read in full.
    fn give_back(&self, addr: SocketAddr, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Now and then, close what has idled too long everywhere: addresses come and go with
        // swarm tasks, and nothing else would visit theirs.
        if now.duration_since(inner.swept) > self.config.idle_timeout {
            inner.swept = now;
            let timeout = self.config.idle_timeout;
            inner.idle.retain(|_, conns| {
                conns.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
                !conns.is_empty()
            });
        }
        let idle = inner.idle.entry(addr).or_default();
        if idle.len() < self.config.max_idle_per_addr {
            idle.push(Idle { sender, since: now });
        }
    }

    fn answer(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: SendRequest<UpstreamBody>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        // A switched connection belongs to the tunnel now.
        let keep = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
            pool: self.clone(),
            addr,
            sender,
        });
        resp.map(|body| PooledBody::new(body, keep))
    }

    /// Idle connections to `addr` (for tests).
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.idle.get(&addr).map_or(0, Vec::len)
    }
}

fn request_error(e: hyper::Error) -> PoolError {
    PoolError::Request(roo_kv::error::with_causes(&e))
}

struct GiveBack {
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
    sender: SendRequest<UpstreamBody>,
}

/// An upstream answer's body: its connection goes back to the pool at the body's end.
pub struct PooledBody {
    body: Incoming,
    give_back: Option<GiveBack>,
}

impl PooledBody {
    fn new(body: Incoming, give_back: Option<GiveBack>) -> Self {
        let mut this = PooledBody { body, give_back };
        // An empty body is never polled.
        if this.body.is_end_stream() {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        if let Some(g) = self.give_back.take() {
            g.pool.give_back(g.addr, g.sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            None => this.release(),
            Some(Err(_)) => this.give_back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream on loopback answering `hello` (`Connection: close` on `/close`, a body
    /// of 1 MiB on `/big`); counts the connections it accepted.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body: Bytes = match req.uri().path() {
                        "/big" => vec![b'x'; 1 << 20].into(),
                        _ => Bytes::from_static(b"hello"),
                    };
                    let mut resp = Response::new(http_body_util::Full::new(body));
                    if req.uri().path() == "/close" {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    fn pool() -> Arc<Http1Pool> {
        Http1Pool::new(PoolConfig {
            max_idle_per_addr: 2,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
        })
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::get(path)
            .header(http::header::HOST, "test")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    async fn text(resp: Response<PooledBody>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_its_answer_is_read() {
        let (addr, accepted) = upstream().await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(
                text(pool.send(addr, get("/")).await.unwrap()).await,
                "hello"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);

        // Two answers open at once need two connections; both are kept afterwards.
        let (a, b) = (
            pool.send(addr, get("/")).await.unwrap(),
            pool.send(addr, get("/")).await.unwrap(),
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(
            (text(a).await, text(b).await),
            ("hello".into(), "hello".into())
        );
        assert_eq!(pool.idle_count(addr), 2);
    }

    #[tokio::test]
    async fn closed_and_half_read_connections_are_not_used_again() {
        let (addr, accepted) = upstream().await;
        let pool = pool();
        // The upstream closes after answering: the next request gets a new connection.
        assert_eq!(
            text(pool.send(addr, get("/close")).await.unwrap()).await,
            "hello"
        );
        assert_eq!(
            text(pool.send(addr, get("/")).await.unwrap()).await,
            "hello"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // An answer dropped before its end takes its connection with it.
        let mut big = pool.send(addr, get("/big")).await.unwrap();
        let first = big.body_mut().frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(big);
        assert_eq!(
            text(pool.send(addr, get("/")).await.unwrap()).await,
            "hello"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        match pool().send(addr, get("/")).await {
            Err(PoolError::Connect(_)) => {}
            other => panic!("want a connect error, got {:?}", other.map(|r| r.status())),
        }
    }
}
