//! Keep-alive HTTP/1.1 connections to plain upstream addresses, kept by one proxy worker, and
//! the requests sent on them.
//!
//! A connection is taken for one request and given back when the answer's body has been read to
//! its end, so the next request on this worker can use it at once; an answer dropped half read
//! (the client went away) closes its connection instead. Each worker has its own pool and its
//! connections run on the worker's thread, so the lock here is never contended. The protocol is
//! [`super::wire`]'s, as on the client side: no task per connection, no buffer while idle.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::headers::{Forwarded, X_FORWARDED_FOR};
use super::wire::{self, field_slots, read_some, Chunked, Decode, Lines};
use super::{BodyError, BoxError, ProxyBody};
use crate::routes::middleware::FieldChange;

/// The largest answer head taken from an upstream.
const MAX_HEAD: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(String),
    /// The request failed on an open connection.
    #[error("{0}")]
    Request(String),
    /// The client's request body broke off.
    #[error(transparent)]
    ClientBody(BodyError),
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
    conn: TcpStream,
    since: Instant,
}

struct Inner {
    idle: HashMap<SocketAddr, Vec<Idle>, ahash::RandomState>,
    /// When idle connections of every address were last swept.
    swept: Instant,
}

/// One worker's upstream HTTP/1.1 connections.
pub struct Http1Pool {
    config: PoolConfig,
    inner: Mutex<Inner>,
}

/// The upstream's side of a switched (101) connection, with what it sent after its answer, for
/// the client connection's tunnel.
#[derive(Clone)]
pub struct Switched(Arc<Mutex<Option<(TcpStream, Bytes)>>>);

impl Switched {
    pub fn take(&self) -> Option<(TcpStream, Bytes)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Http1Pool {
    pub fn new(config: PoolConfig) -> Arc<Self> {
        Arc::new(Http1Pool {
            config,
            inner: Mutex::new(Inner {
                idle: HashMap::default(),
                swept: Instant::now(),
            }),
        })
    }

    /// Sends `req` (origin-form URI) to `addr` on an idle connection, or a new one, with the
    /// `forwarded` fields written into its head. An idempotent request without a body that a
    /// kept connection could not take (the upstream closed it meanwhile: nothing of an answer
    /// came) goes again on a new connection. `now`: when the request came, what idle
    /// connections' age is judged by (the clock read once for a request, not at every step).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<ProxyBody>,
        forwarded: Option<&Forwarded<'_>>,
        answer_changes: &[FieldChange],
        now: Instant,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (parts, body) = req.into_parts();
        let reading = Reading {
            head_only: parts.method == Method::HEAD,
            changes: answer_changes,
        };
        let (head, chunked) = request_head(&parts, &body, forwarded);
        if body.is_end_stream() {
            if let Some(conn) = self.take(addr, now) {
                match self.exchange(addr, conn, &head, reading).await {
                    Ok(resp) => return Ok(resp),
                    Err(Failure::Unanswered(e)) if parts.method.is_idempotent() => {
                        tracing::debug!(%addr, error = %e, "kept connection closed; sending again");
                    }
                    Err(e) => return Err(e.into_error()),
                }
            }
            let conn = self.connect(addr).await?;
            return self
                .exchange(addr, conn, &head, reading)
                .await
                .map_err(Failure::into_error);
        }
        // A body streams from its own task while the answer is read: an upstream may answer (or
        // echo) before the body's end.
        let conn = match self.take(addr, now) {
            Some(conn) => conn,
            None => self.connect(addr).await?,
        };
        let (mut read, mut write) = conn.into_split();
        let mut writer = Writer::new(tokio::spawn(async move {
            wire::write_body(&mut write, head, body, chunked)
                .await
                .map(|()| write)
        }));
        let mut buf = BytesMut::new();
        let answer = {
            let reading = read_answer(&mut read, &mut buf, reading);
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    answer = &mut reading => break answer,
                    // A body the client broke off ends the request at once: the upstream would
                    // wait for the rest, and the fault is the client's.
                    () = writer.finish(), if !writer.finished() => {
                        if let Some(e) = writer.client_body_error() {
                            return Err(PoolError::ClientBody(e));
                        }
                    }
                }
            }
        };
        let (parts, decode, keep) = answer.map_err(Failure::into_error)?;
        let give_back = keep.then(|| GiveBack {
            pool: self.clone(),
            addr,
        });
        let body = PooledBody {
            io: Some(Io::Split(read, writer)),
            buf,
            decode,
            give_back,
        };
        Ok(Response::from_parts(parts, body.released_if_done()))
    }

    /// One request without a body on `conn`, its answer's head read.
    async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut conn: TcpStream,
        head: &[u8],
        reading: Reading<'_>,
    ) -> Result<Response<PooledBody>, Failure> {
        conn.write_all(head)
            .await
            .map_err(|e| Failure::Unanswered(e.to_string()))?;
        let mut buf = BytesMut::new();
        let (mut parts, decode, keep) = read_answer(&mut conn, &mut buf, reading).await?;
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection belongs to the tunnel now.
            let switched = Switched(Arc::new(Mutex::new(Some((conn, buf.freeze())))));
            parts.extensions.insert(switched);
            let body = PooledBody {
                io: None,
                buf: BytesMut::new(),
                decode: Decode::Done,
                give_back: None,
            };
            return Ok(Response::from_parts(parts, body));
        }
        let give_back = keep.then(|| GiveBack {
            pool: self.clone(),
            addr,
        });
        let body = PooledBody {
            io: Some(Io::Whole(conn)),
            buf,
            decode,
            give_back,
        };
        Ok(Response::from_parts(parts, body.released_if_done()))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, PoolError> {
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
        Ok(stream)
    }

    /// The most recently used idle connection to `addr` that is still open, if any.
    fn take(&self, addr: SocketAddr, now: Instant) -> Option<TcpStream> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let idle = inner.idle.get_mut(&addr)?;
        let fresh_since = now.checked_sub(self.config.idle_timeout);
        while let Some(Idle { conn, since }) = idle.pop() {
            if fresh_since.is_none_or(|t| since > t) && !readable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back a connection whose answer has been read in full.
    fn give_back(&self, addr: SocketAddr, conn: TcpStream) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Now and then, close what has idled too long everywhere: addresses come and go with
        // swarm tasks, and nothing else would visit theirs.
        if now.duration_since(inner.swept) > self.config.idle_timeout {
            inner.swept = now;
            let timeout = self.config.idle_timeout;
            inner.idle.retain(|_, conns| {
                conns.retain(|c| now.duration_since(c.since) < timeout && !readable(&c.conn));
                !conns.is_empty()
            });
        }
        let idle = inner.idle.entry(addr).or_default();
        if idle.len() < self.config.max_idle_per_addr {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Idle connections to `addr` (for tests).
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.idle.get(&addr).map_or(0, Vec::len)
    }
}

/// Whether an idle connection has something to read: its end (the upstream closed it) or bytes
/// nobody asked for; either way it cannot carry a request. Asks the runtime's readiness, not the
/// socket, and leaves no waker (the request's read registers its own).
fn readable(conn: &TcpStream) -> bool {
    conn.try_io(tokio::io::Interest::READABLE, || Ok(()))
        .is_ok()
}

/// How a request failed.
enum Failure {
    /// Nothing of an answer came: the request can go on another connection.
    Unanswered(String),
    Failed(PoolError),
}

impl Failure {
    fn into_error(self) -> PoolError {
        match self {
            Failure::Unanswered(e) => PoolError::Request(e),
            Failure::Failed(e) => e,
        }
    }
}

/// What an answer is read for: a HEAD request (no body, whatever its fields say), and the
/// fields its route sets or removes, changed as its lines are read.
#[derive(Debug, Clone, Copy)]
struct Reading<'a> {
    head_only: bool,
    changes: &'a [FieldChange],
}

/// A request's head, with its framing: the length the body has, else chunked (true).
fn request_head(
    parts: &http::request::Parts,
    body: &ProxyBody,
    forwarded: Option<&Forwarded<'_>>,
) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut prior_chain = None;
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING || *name == header::CONTENT_LENGTH {
            continue;
        }
        if forwarded.is_some_and(|f| f.sets(name)) {
            if *name == X_FORWARDED_FOR && prior_chain.is_none() {
                prior_chain = Some(value);
            }
            continue;
        }
        super::headers::write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(forwarded) = forwarded {
        forwarded.write(&mut out, prior_chain);
    }
    let chunked = match body.size_hint().exact() {
        Some(0) if !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => false,
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            false
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

/// Reads an answer's head (informational ones skipped): its parts, how its body is framed,
/// and whether the connection may carry another request after it.
async fn read_answer<T: tokio::io::AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    reading: Reading<'_>,
) -> Result<(http::response::Parts, Decode, bool), Failure> {
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            match parse_answer(buf, reading).map_err(Failure::Failed)? {
                Some(answer)
                    if answer.0.status.is_informational()
                        && answer.0.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Some(answer) => return Ok(answer),
                None => {}
            }
        }
        let n = read_some(io, buf).await.map_err(|e| match answered {
            false => Failure::Unanswered(e.to_string()),
            true => Failure::Failed(PoolError::Request(e.to_string())),
        })?;
        if n == 0 {
            return Err(match answered {
                false => Failure::Unanswered("the upstream closed the connection".into()),
                true => Failure::Failed(PoolError::Request(
                    "the upstream closed the connection mid-answer".into(),
                )),
            });
        }
    }
}

/// The answer head at the start of `buf`, taken out of it when whole.
fn parse_answer(
    buf: &mut BytesMut,
    reading: Reading<'_>,
) -> Result<Option<(http::response::Parts, Decode, bool)>, PoolError> {
    let refused = |what: &str| PoolError::Request(format!("bad answer from the upstream: {what}"));
    let (len, code, version, lines, fields) = {
        let mut slots = field_slots();
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(refused("head too large")),
            Err(e) => return Err(refused(&e.to_string())),
        };
        let code = resp.code.unwrap_or_default();
        // The fields of this connection are left out as they are read.
        let (lines, fields) = Lines::of(&buf[..], resp.headers, code == 101, reading.changes);
        (len, code, wire::version(resp.version), lines, fields)
    };
    buf.advance(len);
    let status = StatusCode::from_u16(code).map_err(|_| refused("status"))?;
    let mut keep = fields.persistent(version);
    let decode = if wire::bodiless(status, reading.head_only) {
        Decode::Done
    } else {
        match (fields.transfer_encoding, fields.content_length) {
            (Some(true), _) => Decode::Chunked(Chunked::Size),
            (Some(false), _) | (None, None) => Decode::UntilClose,
            (None, Some(Err(()))) => return Err(refused("bad or conflicting Content-Length")),
            (None, Some(Ok(0))) => Decode::Done,
            (None, Some(Ok(n))) => Decode::Length(n),
        }
    };
    // Without a length the body ends with the connection; a switched one is the tunnel's.
    if decode == Decode::UntilClose || status == StatusCode::SWITCHING_PROTOCOLS {
        keep = false;
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.extensions.insert(lines);
    Ok(Some((parts, decode, keep)))
}

struct GiveBack {
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
}

/// The connection an answer's body is read from.
enum Io {
    Whole(TcpStream),
    /// The request's body still going out on its own task.
    Split(OwnedReadHalf, Writer),
}

/// The task that streams a request's body upstream while its answer is read. Aborted when
/// dropped: a request that ends, answered or not, leaves nothing running (it would hold on to
/// the client's connection and the upstream's).
struct Writer {
    task: JoinHandle<std::io::Result<OwnedWriteHalf>>,
    done: Option<std::io::Result<OwnedWriteHalf>>,
}

impl Writer {
    fn new(task: JoinHandle<std::io::Result<OwnedWriteHalf>>) -> Self {
        Writer { task, done: None }
    }

    fn finished(&self) -> bool {
        self.done.is_some()
    }

    /// Waits for the body to be written (or to fail); its outcome is kept.
    async fn finish(&mut self) {
        if self.done.is_none() {
            self.done = Some(Self::outcome((&mut self.task).await));
        }
    }

    fn outcome(
        ended: Result<std::io::Result<OwnedWriteHalf>, tokio::task::JoinError>,
    ) -> std::io::Result<OwnedWriteHalf> {
        ended.unwrap_or_else(|e| Err(std::io::Error::other(format!("body writer: {e}"))))
    }

    /// The client's own body error, if that is how the writing ended.
    fn client_body_error(&self) -> Option<BodyError> {
        match &self.done {
            Some(Err(e)) => BodyError::within(e).cloned(),
            _ => None,
        }
    }

    /// The connection's write half, if the body went out in full by now.
    fn written(&mut self) -> Option<OwnedWriteHalf> {
        if self.done.is_none() && self.task.is_finished() {
            let mut task = Pin::new(&mut self.task);
            if let Poll::Ready(ended) = task.as_mut().poll(&mut Context::from_waker(Waker::noop()))
            {
                self.done = Some(Self::outcome(ended));
            }
        }
        match self.done.take() {
            Some(Ok(write)) => Some(write),
            _ => None,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream answer's body: its connection goes back to the pool at the body's end.
pub struct PooledBody {
    io: Option<Io>,
    /// Read and not yet taken.
    buf: BytesMut,
    decode: Decode,
    give_back: Option<GiveBack>,
}

impl PooledBody {
    /// An empty body is never polled: its connection goes back at once.
    fn released_if_done(mut self) -> Self {
        if self.decode.is_done() {
            self.release();
        }
        self
    }

    /// At the body's end: the connection back to the pool when it can carry another request
    /// (nothing read past the answer, the request's body sent in full).
    fn release(&mut self) {
        let (Some(give_back), Some(io)) = (self.give_back.take(), self.io.take()) else {
            return;
        };
        if !self.buf.is_empty() {
            return;
        }
        let conn = match io {
            Io::Whole(conn) => conn,
            Io::Split(read, mut writer) => match writer.written().map(|w| read.reunite(w)) {
                Some(Ok(conn)) => conn,
                _ => return,
            },
        };
        give_back.pool.give_back(give_back.addr, conn);
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Some(Io::Whole(conn)) => this.decode.poll_data(conn, &mut this.buf, cx),
            Some(Io::Split(read, _)) => this.decode.poll_data(read, &mut this.buf, cx),
            None => return Poll::Ready(None),
        };
        let data = std::task::ready!(polled).map(|d| d.map_err(BoxError::from));
        match &data {
            None | Some(Ok(_)) if this.decode.is_done() => this.release(),
            Some(Err(_)) => {
                this.give_back = None;
                this.io = None;
            }
            _ => {}
        }
        Poll::Ready(data.map(|d| d.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.decode.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decode.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
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

    /// `GET path` through `pool` to `addr`, as a request that came now.
    async fn send(
        pool: &Arc<Http1Pool>,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Response<PooledBody>, PoolError> {
        pool.send(addr, get(path), None, &[], Instant::now()).await
    }

    fn get(path: &str) -> Request<ProxyBody> {
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
            assert_eq!(text(send(&pool, addr, "/").await.unwrap()).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);

        // Two answers open at once need two connections; both are kept afterwards.
        let (a, b) = (
            send(&pool, addr, "/").await.unwrap(),
            send(&pool, addr, "/").await.unwrap(),
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
            text(send(&pool, addr, "/close").await.unwrap()).await,
            "hello"
        );
        assert_eq!(text(send(&pool, addr, "/").await.unwrap()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // An answer dropped before its end takes its connection with it.
        let mut big = send(&pool, addr, "/big").await.unwrap();
        let first = big.body_mut().frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(big);
        assert_eq!(text(send(&pool, addr, "/").await.unwrap()).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        match send(&pool(), addr, "/").await {
            Err(PoolError::Connect(_)) => {}
            other => panic!("want a connect error, got {:?}", other.map(|r| r.status())),
        }
    }

    /// A raw upstream: answers each request head by its path with the canned bytes of
    /// `answers`, closing after `/last`; counts connections.
    async fn raw_upstream(
        answers: &'static [(&'static str, &'static str)],
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&seen[..end]).to_string();
                        seen.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let answer = answers.iter().find(|(p, _)| *p == path).map_or("", |a| a.1);
                        if stream.write_all(answer.as_bytes()).await.is_err() || path == "/last" {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn answers_framed_every_way_and_connections_kept_only_when_they_can_be() {
        let (addr, accepted) = raw_upstream(&[
            ("/chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n"),
            ("/continue", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            ("/empty", "HTTP/1.1 204 No Content\r\n\r\n"),
            ("/last", "HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        ])
        .await;
        let pool = pool();
        assert_eq!(
            text(send(&pool, addr, "/chunked").await.unwrap()).await,
            "abcde"
        );
        assert_eq!(
            text(send(&pool, addr, "/continue").await.unwrap()).await,
            "ok"
        );
        let empty = send(&pool, addr, "/empty").await.unwrap();
        assert_eq!(empty.status(), 204);
        assert!(empty.body().is_end_stream());
        drop(empty);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection so far");
        // No length: the body is what comes until the upstream closes, and the connection goes.
        assert_eq!(
            text(send(&pool, addr, "/last").await.unwrap()).await,
            "until the end"
        );
        assert_eq!(pool.idle_count(addr), 0);
        assert_eq!(
            text(send(&pool, addr, "/chunked").await.unwrap()).await,
            "abcde"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_come_without_the_fields_of_their_connection() {
        let (addr, _) = raw_upstream(&[
            ("/plain", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            ("/named", "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: x-hop, close\r\nX-Kept: 1\r\nProxy-Connection: x\r\nContent-Length: 2\r\n\r\nok"),
            ("/switch", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: 1\r\n\r\n"),
            // Kept lines in runs (copied as they are) broken by a left-out one and by one that
            // does not end in CRLF (written anew).
            ("/runs", "HTTP/1.1 200 OK\r\nServer: a\r\nDate: d\r\nConnection: keep-alive\r\nX-Sp:   spaced\r\nX-B:2\nX-C: 3\r\nContent-Length: 2\r\n\r\nok"),
        ])
        .await;
        let pool = pool();
        // The lines an HTTP/1.1 client gets, and the map an HTTP/2 one gets.
        let lines = |resp: &Response<PooledBody>| {
            let lines = resp.extensions().get::<Lines>().unwrap();
            String::from_utf8(lines.as_bytes().to_vec()).unwrap()
        };
        let names = |mut resp: Response<PooledBody>| {
            assert!(resp.headers().is_empty());
            Lines::move_to_map(&mut resp);
            let names: Vec<_> = resp.headers().keys().map(|n| n.to_string()).collect();
            (names, resp)
        };
        for (path, written, kept) in [
            ("/plain", "X-Kept: 1\r\n", &["x-kept"][..]),
            (
                "/named",
                "X-Kept: 1\r\nContent-Length: 2\r\n",
                &["x-kept", "content-length"],
            ),
            (
                "/runs",
                "Server: a\r\nDate: d\r\nX-Sp:   spaced\r\nX-B: 2\r\nX-C: 3\r\nContent-Length: 2\r\n",
                &["server", "date", "x-sp", "x-b", "x-c", "content-length"],
            ),
        ] {
            let resp = send(&pool, addr, path).await.unwrap();
            assert_eq!(lines(&resp), written, "{path}");
            let (names, resp) = names(resp);
            assert_eq!(names, kept, "{path}");
            assert_eq!(text(resp).await, "ok", "{path}");
        }
        // An upgrade keeps its Upgrade (the handler says `Connection: upgrade` again).
        let resp = send(&pool, addr, "/switch").await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(lines(&resp), "Upgrade: websocket\r\n");
        assert_eq!(names(resp).0, ["upgrade"]);
    }

    #[tokio::test]
    async fn a_kept_connection_the_upstream_closed_is_replaced() {
        // Answers with a length, then closes without saying so: the pool keeps the connection.
        let (addr, accepted) =
            raw_upstream(&[("/last", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]).await;
        let pool = pool();
        for round in 1..=3 {
            assert_eq!(text(send(&pool, addr, "/last").await.unwrap()).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
        // A request the closed connection swallowed goes again on a new one, if idempotent.
        assert_eq!(pool.idle_count(addr), 1);
        let readable = |pool: &Http1Pool| {
            let inner = pool.inner.lock().unwrap();
            inner
                .idle
                .get(&addr)
                .is_some_and(|c| c.iter().all(|c| readable(&c.conn)))
        };
        let mut waited = 0;
        while !readable(&pool) && waited < 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert!(readable(&pool), "the runtime saw the upstream close");
        assert_eq!(text(send(&pool, addr, "/last").await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }
}
