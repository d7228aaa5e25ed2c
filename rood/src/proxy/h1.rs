//! The HTTP/1.1 side of client connections: requests read and checked, their bodies streamed to
//! the upstream, answers written, keep-alive, upgrades (WebSocket). Written here rather than
//! served by hyper for what a proxy's operator sees: an idle keep-alive connection holds no
//! buffer at all (hyper keeps its read and write buffers, about 24 KB, for a connection's whole
//! life), and a request takes fewer steps. A client that speaks HTTP/2 (the prior-knowledge
//! preface) is handed back for hyper's HTTP/2 server; so are TLS clients that chose h2 by ALPN,
//! before they get here.
//!
//! Reads go through one scratch buffer per thread ([`wire::read_some`]) and only what arrived is
//! kept, so that memory follows the bytes in flight, not the connections open.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::pool::Switched;
use super::wire::{
    self, field_slots, header_map, read_some, span_of, spans, write_body, Chunked, Decode,
    DecodeError, Lines,
};
use super::{
    empty_body, forward, handler, BodyError, BoxError, ConnInfo, Limits, ProxyBody, ProxyState,
};

/// What is read of a request body nobody wanted (the answer came without it) so that the
/// connection can carry the next request; a longer body closes the connection instead.
const DISCARD_LIMIT: u64 = 256 * 1024;
/// How long reading the rest of such a body may take.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);
/// What a client speaking HTTP/2 without TLS sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    /// The Date header of the current second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// How a connection ended.
pub enum Outcome<T> {
    /// Closed (by either side, a timeout, an error answered, shutdown or an upgrade's end).
    Closed,
    /// The client spoke HTTP/2: its connection, with what was read of it put back.
    Http2(Rewind<T>),
    /// Idle for the `park_after` given, nothing of a next request read.
    Parked(T),
}

/// Where a connection's task keeps a request's steps while they run (`Conversation::next`, a
/// few KB): each connection kind chooses by what its idle connections cost.
pub trait Steps {
    fn hold<F: Future + Send>(steps: F) -> impl Future<Output = F::Output> + Send;
}

/// In the task's own memory: nothing allocated or copied for a request (about 1,000
/// instructions fewer). For plain connections, whose task ends when they idle ([`super::park`]).
pub struct Inline;

impl Steps for Inline {
    fn hold<F: Future + Send>(steps: F) -> impl Future<Output = F::Output> + Send {
        steps
    }
}

/// Boxed for each request: between requests the task holds only its wait. For TLS connections,
/// which idle in their task (17 KB an idle connection where inline steps made it 29 KB).
pub struct Boxed;

impl Steps for Boxed {
    fn hold<F: Future + Send>(steps: F) -> impl Future<Output = F::Output> + Send {
        Box::pin(steps)
    }
}

/// Serves HTTP/1.x requests on `io` until the connection ends, each request's steps held as `S`
/// says. `new`: nothing was read from it yet (a client that opens with the HTTP/2 preface is
/// handed back); `park_after`: hand it back when it has waited that long for its next request.
pub async fn serve<T, S: Steps>(
    io: T,
    state: &ProxyState,
    info: &ConnInfo,
    new: bool,
    park_after: Option<Duration>,
    shutdown: &CancellationToken,
) -> io::Result<Outcome<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let mut conn = (io, BytesMut::new());
    let mut first = new;
    // One timer for every wait between requests, moved on for each: moving a timer later is a
    // store, where a timer of each wait's own was put in the runtime's wheel and taken out again.
    // A request's wait for its upstream's answer rings it too (`forward::within`).
    let Limits {
        header_timeout,
        idle_timeout,
        ..
    } = state.limits;
    let idle = tokio::time::sleep(header_timeout);
    // Likewise one wait for shutdown: it joins the token's waiters once, where a wait of each
    // request's own joined and left them under their lock.
    let shut = shutdown.cancelled();
    tokio::pin!(idle, shut);
    loop {
        let (mut io, mut buf) = conn;
        if buf.is_empty() {
            // Between requests the connection holds no buffer, and its task only this wait.
            buf = BytesMut::new();
            let park = park_after.filter(|&park| !first && park < idle_timeout);
            let wait = match (first, park) {
                (true, _) => header_timeout,
                (false, Some(park)) => park,
                (false, None) => idle_timeout,
            };
            idle.as_mut().reset(Instant::now() + wait);
            // The read first: when it is ready, the other two are not asked (asking the
            // shutdown wait takes its lock).
            let read = tokio::select! {
                biased;
                read = read_some(&mut io, &mut buf) => Some(read),
                () = shut.as_mut() => return Ok(Outcome::Closed),
                () = idle.as_mut() => None,
            };
            match read {
                None if park.is_some() => return Ok(Outcome::Parked(io)),
                None | Some(Ok(0)) => return Ok(Outcome::Closed),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
        let conversation = Conversation {
            state,
            info,
            h2: new && first,
            shutdown,
        };
        match S::hold(conversation.next(io, buf, idle.as_mut())).await? {
            Next::Idle(io, buf) => conn = (io, buf),
            Next::Closed => return Ok(Outcome::Closed),
            Next::Http2(io) => return Ok(Outcome::Http2(io)),
        }
        first = false;
    }
}

/// What a connection does after a request.
enum Next<T> {
    /// Waits for the next one (with what was read of it).
    Idle(T, BytesMut),
    Closed,
    Http2(Rewind<T>),
}

/// A connection's settings for its requests.
struct Conversation<'a> {
    state: &'a ProxyState,
    info: &'a ConnInfo,
    /// The client may still open with the HTTP/2 preface.
    h2: bool,
    shutdown: &'a CancellationToken,
}

impl Conversation<'_> {
    /// One request, from the start of its head in `buf` to the end of its answer; `alarm`: the
    /// connection's timer, for the wait for the upstream's answer.
    async fn next<T>(
        self,
        mut io: T,
        mut buf: BytesMut,
        alarm: Pin<&mut Sleep>,
    ) -> io::Result<Next<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let head = match read_head(&mut io, &mut buf, &self.state.limits, self.h2).await? {
            Head::Request(head) => head,
            Head::Http2 => return Ok(Next::Http2(Rewind::new(io, buf.freeze()))),
            Head::Closed => return Ok(Next::Closed),
            Head::Bad(bad) => {
                tracing::debug!(peer = %self.info.peer, error = bad.message, "malformed request");
                write_error(&mut io, bad.status, bad.message).await?;
                return Ok(Next::Closed);
            }
        };
        let Parsed {
            parts,
            framing,
            mut keep_alive,
            expect_continue,
        } = head;
        let exchange = Exchange {
            state: self.state,
            info: self.info,
            head_only: parts.method == Method::HEAD,
            version: parts.version,
            shutdown: self.shutdown,
        };
        if framing == Framing::None {
            let req = Request::from_parts(parts, empty_body());
            let upgrade = forward::is_upgrade(&req);
            if let Some(upstream) = exchange.run(&mut io, req, &mut keep_alive, alarm).await? {
                if upgrade {
                    Box::pin(tunnel(io, buf.freeze(), upstream)).await;
                }
                return Ok(Next::Closed);
            }
        } else {
            if expect_continue {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            // The body streams from the read half while the answer goes out on the write half.
            let (read, mut write) = tokio::io::split(io);
            let stall = self.state.limits.body_timeout;
            let reader = Reader {
                io: read,
                buf: std::mem::take(&mut buf),
                decode: match framing {
                    Framing::Length(n) => Decode::Length(n),
                    _ => Decode::Chunked(Chunked::Size),
                },
                stall,
                stalled: Box::pin(tokio::time::sleep(stall)),
            };
            let reader = Arc::new(Mutex::new(Some(reader)));
            let body = RequestBody {
                reader: reader.clone(),
            };
            let req = Request::from_parts(parts, body.boxed());
            let upgraded = exchange
                .run(&mut write, req, &mut keep_alive, alarm)
                .await?;
            // The answer is out: the body is this connection's again, whoever was reading it
            // (they get an error from now on), so that no one holds the client's connection
            // past its request.
            let reader = reader.lock().unwrap_or_else(|p| p.into_inner()).take();
            // An upgrade of a request with a body is not one this connection can follow.
            let Some(reader) = reader.filter(|_| keep_alive && upgraded.is_none()) else {
                let _ = write.shutdown().await;
                return Ok(Next::Closed);
            };
            let Some(reader) = reader.discard_rest().await else {
                return Ok(Next::Closed);
            };
            io = reader.io.unsplit(write);
            buf = reader.buf;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return Ok(Next::Closed);
        }
        Ok(Next::Idle(io, buf))
    }
}

/// What answering one request needs besides the request.
struct Exchange<'a> {
    state: &'a ProxyState,
    info: &'a ConnInfo,
    head_only: bool,
    version: Version,
    shutdown: &'a CancellationToken,
}

impl Exchange<'_> {
    /// Routes `req` and writes the answer on `w`; when it is an accepted upgrade (101), the
    /// upstream's side of it, and the connection is the tunnel's from then on.
    async fn run<W: AsyncWrite + Unpin>(
        self,
        w: &mut W,
        req: Request<ProxyBody>,
        keep_alive: &mut bool,
        alarm: Pin<&mut Sleep>,
    ) -> io::Result<Option<Switch>> {
        let mut resp = handler::handle(self.state, req, self.info, alarm).await;
        *keep_alive &= !self.shutdown.is_cancelled();
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let switched = resp.extensions_mut().remove::<Switched>();
            let upstream = match switched.and_then(|s| s.take()) {
                Some((conn, early)) => Switch::Pool(conn, early),
                None => Switch::Hyper(hyper::upgrade::on(&mut resp)),
            };
            write_response(w, resp, self.head_only, self.version, &mut false).await?;
            return Ok(Some(upstream));
        }
        write_response(w, resp, self.head_only, self.version, keep_alive).await?;
        Ok(None)
    }
}

// A request head is most of the time the answer, and moves once: not worth a box.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(Parsed),
    Http2,
    Closed,
    Bad(Bad),
}

/// Reads until `buf` holds a whole request head (or the HTTP/2 preface, when `h2`), within
/// [`Limits::header_timeout`] of its first bytes.
async fn read_head<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    limits: &Limits,
    mut h2: bool,
) -> io::Result<Head> {
    let mut deadline = None;
    loop {
        if h2 {
            let n = buf.len().min(H2_PREFACE.len());
            h2 = buf[..n] == H2_PREFACE[..n];
            if h2 && n == H2_PREFACE.len() {
                return Ok(Head::Http2);
            }
        }
        if !h2 {
            match parse(buf, limits.max_header_bytes) {
                Ok(Some(head)) => return Ok(Head::Request(head)),
                Ok(None) => {}
                Err(bad) => return Ok(Head::Bad(bad)),
            }
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
        match tokio::time::timeout_at(deadline, read_some(io, buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok(Head::Closed),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
    }
}

/// A request refused before it reached the handler.
#[derive(Debug)]
struct Bad {
    status: StatusCode,
    message: &'static str,
}

fn bad(message: &'static str) -> Bad {
    Bad {
        status: StatusCode::BAD_REQUEST,
        message,
    }
}

const TOO_LARGE: Bad = Bad {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    message: "request header too large",
};

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, checked.
#[derive(Debug)]
struct Parsed {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// The request head at the start of `buf`, taken out of it when whole; None when more bytes
/// are needed. Header values share the head's bytes rather than being copied.
fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Parsed>, Bad> {
    let (len, method, path, version, spans) = {
        let mut slots = field_slots();
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) if len <= max => len,
            Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
            Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
            Err(httparse::Error::Version) => return Err(bad("unsupported HTTP version")),
            Err(_) => return Err(bad("malformed request head")),
        };
        let base = buf.as_ptr();
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| bad("bad method"))?;
        let path = span_of(base, req.path.unwrap_or_default().as_bytes());
        (
            len,
            method,
            path,
            wire::version(req.version),
            spans(base, req.headers),
        )
    };
    if method == Method::CONNECT {
        return Err(Bad {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "CONNECT is not served here",
        });
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path)).map_err(|_| bad("bad request target"))?;
    let (mut headers, fields) = header_map(&head, &spans).ok_or(bad("bad header field"))?;
    let mut keep_alive = fields.persistent(version);
    let framing = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), _) if version == Version::HTTP_10 => {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(false), _) => return Err(bad("Transfer-Encoding does not end in chunked")),
        (Some(true), length) => {
            // With a Content-Length too, the chunks frame the body (RFC 9112 6.1), the length
            // goes, and the connection closes after the answer.
            if length.is_some() {
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            Framing::Chunked
        }
        (None, Some(Err(()))) => return Err(bad("bad or conflicting Content-Length")),
        (None, None | Some(Ok(0))) => Framing::None,
        (None, Some(Ok(n))) => Framing::Length(n),
    };
    let expect_continue =
        version == Version::HTTP_11 && framing != Framing::None && fields.expect_continue;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// Writes an answer: its head, then its body as it comes (chunked when its length is not known
/// and the client speaks HTTP/1.1), batching what is ready at once into one write. Clears
/// `keep_alive` when the answer ends the connection.
async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: Response<ProxyBody>,
    head_only: bool,
    version: Version,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let bodiless = wire::bodiless(status, head_only);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_length, mut has_date, mut has_connection) = (false, false, false);
    if let Some(lines) = parts.extensions.get::<Lines>() {
        out.extend_from_slice(lines.as_bytes());
        (has_length, has_date) = (lines.has_length, lines.has_date);
    }
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        if *name == header::CONNECTION {
            has_connection = true;
            if value.as_bytes().eq_ignore_ascii_case(b"close") {
                *keep_alive = false;
            }
        }
        has_length |= *name == header::CONTENT_LENGTH;
        has_date |= *name == header::DATE;
        super::headers::write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let chunked = if bodiless || has_length {
        false
    } else if let Some(n) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {n}\r\n");
        false
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        true
    } else {
        // An HTTP/1.0 client learns the body's end from the connection's.
        *keep_alive = false;
        false
    };
    if !has_date {
        date(&mut out);
    }
    if !has_connection {
        if !*keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        drop(body);
        w.write_all(&out).await?;
        return w.flush().await;
    }
    write_body(w, out, body, chunked).await
}

/// Appends the Date header, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Answers a request refused before routing, then the connection closes.
async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: StatusCode,
    message: &str,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        message.len() + 1,
    );
    date(&mut out);
    let _ = write!(out, "\r\n{message}\n");
    w.write_all(&out).await?;
    w.shutdown().await
}

/// The upstream's side of an accepted upgrade.
enum Switch {
    /// A pooled plain connection, with what the upstream sent after its answer.
    Pool(tokio::net::TcpStream, Bytes),
    /// An h2c or TLS upstream's, from hyper's client.
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Copies bytes both ways between an upgraded client connection (`early`: what it sent after
/// the request, already read) and its upstream until either side closes.
async fn tunnel<T: AsyncRead + AsyncWrite + Unpin>(mut client: T, early: Bytes, upstream: Switch) {
    let copied = match upstream {
        Switch::Pool(mut upstream, upstream_early) => {
            match client.write_all(&upstream_early).await {
                Ok(()) => splice(&mut client, &early, &mut upstream).await,
                Err(e) => Err(e),
            }
        }
        Switch::Hyper(upgrade) => match upgrade.await {
            Ok(upstream) => {
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                splice(&mut client, &early, &mut upstream).await
            }
            Err(e) => Err(io::Error::other(e)),
        },
    };
    match copied {
        Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
        Err(e) => tracing::debug!(error = %e, "tunnel closed"),
    }
}

async fn splice<A, B>(client: &mut A, early: &[u8], upstream: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    upstream.write_all(early).await?;
    tokio::io::copy_bidirectional(client, upstream).await
}

/// The read half of a connection while a request body is read from it.
struct Reader<T> {
    io: ReadHalf<T>,
    /// Read and not yet taken: the body's start, maybe more (a pipelined request).
    buf: BytesMut,
    decode: Decode,
    /// How long the client may send nothing mid-body, and the timer for it.
    stall: Duration,
    stalled: Pin<Box<Sleep>>,
}

impl<T: AsyncRead> Reader<T> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match self.decode.poll_data(&mut self.io, &mut self.buf, cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.stalled.as_mut().reset(Instant::now() + self.stall);
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(Err(DecodeError::Framing(why)))) => {
                Poll::Ready(Some(Err(BodyError::Framing(why))))
            }
            Poll::Ready(Some(Err(DecodeError::Closed | DecodeError::Io(_)))) => {
                Poll::Ready(Some(Err(BodyError::Closed)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.stalled.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(BodyError::Stalled(self.stall.as_millis() as u64))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Reads the rest of a body nobody read, up to [`DISCARD_LIMIT`] within
    /// [`DISCARD_TIMEOUT`]; None when that failed (the connection cannot go on).
    async fn discard_rest(mut self) -> Option<Self>
    where
        T: Unpin,
    {
        let mut read = 0u64;
        let rest = async {
            while let Some(data) = poll_fn(|cx| self.poll_data(cx)).await {
                read += data.ok()?.len() as u64;
                if read > DISCARD_LIMIT {
                    return None;
                }
            }
            Some(())
        };
        tokio::time::timeout(DISCARD_TIMEOUT, rest).await.ok()??;
        Some(self)
    }
}

/// A request's body, read from the client connection as the upstream takes it. The reader is
/// shared with the connection, which takes it back once the answer is out; reading after that
/// is an error (the body was cut short), never a silent end.
struct RequestBody<T> {
    reader: Arc<Mutex<Option<Reader<T>>>>,
}

impl<T> RequestBody<T> {
    // Taken by this body's reader and by the connection, one after the other, never across an
    // await; a poisoned lock still holds a usable reader.
    fn reader(&self) -> MutexGuard<'_, Option<Reader<T>>> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: AsyncRead + Unpin> Body for RequestBody<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut reader = self.reader();
        let Some(reader) = reader.as_mut() else {
            return Poll::Ready(Some(Err(BodyError::Closed.into())));
        };
        reader
            .poll_data(cx)
            .map(|d| d.map(|d| d.map(Frame::data).map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.reader().as_ref().is_some_and(|r| r.decode.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        self.reader()
            .as_ref()
            .map_or(SizeHint::default(), |r| r.decode.size_hint())
    }
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind<T> {
    early: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    fn new(io: T, early: Bytes) -> Self {
        Rewind { early, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<Option<Parsed>, Bad> {
        parse(&mut BytesMut::from(raw), 8192)
    }

    fn status_of(raw: &str) -> StatusCode {
        parsed(raw).expect_err("refused").status
    }

    #[test]
    fn heads_parse_whole_or_wait_for_more() {
        let mut buf = BytesMut::from(
            "GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next",
        );
        let head = parse(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/p?q=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "a.test");
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"GET /next", "the next request stays");
        assert!(parse(&mut buf, 8192).unwrap().is_none());
    }

    #[test]
    fn framing_and_keep_alive_follow_the_headers() {
        let head =
            parsed("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.expect_continue);
        let head = parsed(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.parts.headers.contains_key("content-length"));
        assert!(!head.keep_alive, "closed after a request framed both ways");
        let head = parsed("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!head.keep_alive);
        let head = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive);
        let head = parsed("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
        let head = parsed("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::None);
    }

    #[test]
    fn bad_heads_are_refused_with_their_status() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            bad
        );
        assert_eq!(
            status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(status_of("GET / HTTP/1.1\r\nX: a\u{1}b\r\n\r\n"), bad);
        assert_eq!(status_of("GET / HTTP/2.0\r\n\r\n"), bad);
        assert_eq!(status_of("NOT HTTP AT ALL\r\n\r\n"), bad);
        assert_eq!(
            status_of("CONNECT a.test:443 HTTP/1.1\r\n\r\n"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let many: String = (0..wire::MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let too_large = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        assert_eq!(
            status_of(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            too_large
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(
            status_of(&long),
            too_large,
            "too large before it is even whole"
        );
    }

    /// Decodes a body sent in `pieces` with `decode`, returning its data and what was left.
    async fn decode(decode: Decode, pieces: &[&'static str]) -> Result<(Vec<u8>, Bytes), BoxError> {
        let (client, server) = tokio::io::duplex(64);
        let (io, _write) = tokio::io::split(server);
        let pieces: Vec<_> = pieces.to_vec();
        tokio::spawn(async move {
            let mut client = client;
            for p in pieces {
                client.write_all(p.as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let stall = Duration::from_secs(5);
        let mut reader = Reader {
            io,
            buf: BytesMut::new(),
            decode,
            stall,
            stalled: Box::pin(tokio::time::sleep(stall)),
        };
        let mut data = Vec::new();
        while let Some(piece) = poll_fn(|cx| reader.poll_data(cx)).await {
            data.extend_from_slice(&piece.map_err(BoxError::from)?);
        }
        // What came after the body (the next request) is kept for the connection.
        let mut rest = reader.buf;
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            read_some(&mut reader.io, &mut rest),
        )
        .await;
        Ok((data, rest.freeze()))
    }

    #[tokio::test]
    async fn chunked_bodies_decode_across_any_split() {
        let (data, rest) = decode(
            Decode::Chunked(Chunked::Size),
            &[
                "5\r",
                "\nhel",
                "lo\r\n1",
                "0;ext=1\r\n",
                "0123456789abcdef",
                "\r\n0\r\nX-T: 1\r\n\r\nGET",
            ],
        )
        .await
        .unwrap();
        assert_eq!(data, b"hello0123456789abcdef");
        assert_eq!(rest, "GET");
        let (data, rest) = decode(Decode::Length(7), &["abc", "defgGET"])
            .await
            .unwrap();
        assert_eq!((&data[..], &rest[..]), (&b"abcdefg"[..], &b"GET"[..]));
    }

    #[tokio::test]
    async fn chunk_sizes_take_leading_zeros_and_nothing_looser() {
        for (size, data) in [
            ("00000000000000005", "hello"),
            ("5;name=value", "hello"),
            ("5 ;name", "hello"),
            ("5\t;name", "hello"),
            ("0000000000000000000000000000000000000000005", "hello"),
        ] {
            let body: &'static str =
                Box::leak(format!("{size}\r\n{data}\r\n0\r\n\r\n").into_boxed_str());
            let (got, _) = decode(Decode::Chunked(Chunked::Size), &[body])
                .await
                .unwrap_or_else(|e| panic!("{size:?}: {e}"));
            assert_eq!(got, data.as_bytes(), "{size:?}");
        }
        for size in [
            "+5",
            " 5",
            "5 ",
            "5 x",
            "-5",
            "0x5",
            "",
            ";x",
            "1000000000000000",
        ] {
            let body: &'static str =
                Box::leak(format!("{size}\r\nhello\r\n0\r\n\r\n").into_boxed_str());
            assert!(
                decode(Decode::Chunked(Chunked::Size), &[body])
                    .await
                    .is_err(),
                "{size:?} taken"
            );
        }
    }

    #[tokio::test]
    async fn broken_bodies_are_errors() {
        for pieces in [
            &["zz\r\n"][..],
            &["5\r\nhelloXX"],
            &["5\r\nhel"],
            &["fffffffffffffffff\r\n"],
        ] {
            assert!(
                decode(Decode::Chunked(Chunked::Size), pieces)
                    .await
                    .is_err(),
                "{pieces:?}"
            );
        }
        assert!(decode(Decode::Length(10), &["short"]).await.is_err());
    }
}
