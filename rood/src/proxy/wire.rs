//! HTTP/1.1 on the wire, for both sides of the proxy ([`super::h1`] to clients, [`super::pool`]
//! to upstreams): reads through one scratch buffer per thread, requests' header maps that share
//! the head's bytes, answers' header lines passed on as they came ([`Lines`]), body decoding
//! (length, chunked, until close) and body writing.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::headers::{hop_by_hop, named_by_connection, names_field, write_field, Known};
use super::{BoxError, ProxyBody};
use crate::routes::middleware::FieldChange;

/// Header fields a head may have.
pub const MAX_HEADERS: usize = 100;
/// Where a header's name and value lie in a head.
pub type Span = (Range<usize>, Range<usize>);
/// A chunk-size line (with extensions) or a trailer field longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Body bytes gathered before a write when more of the body is ready at once.
const WRITE_BATCH: usize = 64 * 1024;

thread_local! {
    /// Where every read of this thread lands first; only the bytes read are kept.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

/// Appends what `io` has now (one read) to `buf`; 0 at the end of the stream. Between messages
/// a connection so holds no buffer of its own.
pub async fn read_some<T: AsyncRead + Unpin>(io: &mut T, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
    .await
}

/// Room for httparse's view of a head's fields, not initialized before it parses.
pub fn field_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The spans of the fields httparse found in the buffer that starts at `base` (on the stack for
/// the usual few).
pub fn spans(base: *const u8, fields: &[httparse::Header<'_>]) -> SmallVec<[Span; 16]> {
    fields
        .iter()
        .map(|h| (span_of(base, h.name.as_bytes()), span_of(base, h.value)))
        .collect()
}

/// The span of `part`, a slice of the buffer that starts at `base`.
pub fn span_of(base: *const u8, part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base as usize;
    start..start + part.len()
}

/// What the framing and connection fields of a head say, gathered as the map is built.
#[derive(Debug, Default)]
pub struct Fields {
    /// `Connection: close` / `keep-alive` seen.
    pub close: bool,
    pub keep_alive: bool,
    /// Transfer-Encoding present: whether its last coding is chunked.
    pub transfer_encoding: Option<bool>,
    /// Content-Length present: its value, or Err when a value is not a number or two differ.
    pub content_length: Option<Result<u64, ()>>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection` names another field (beside its own options, `upgrade` included).
    pub connection_names_field: bool,
}

impl Fields {
    /// Whether the connection stays open after this message: HTTP/1.1 unless `close`, HTTP/1.0
    /// only with `keep-alive`.
    pub fn persistent(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        }
    }

    fn note(&mut self, name: Known, value: &[u8]) {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        match name {
            Known::Connection => {
                for t in tokens() {
                    self.close |= t.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    self.connection_names_field |= names_field(t, true);
                }
            }
            Known::TransferEncoding => {
                let last = tokens().next_back().unwrap_or_default();
                self.transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            Known::ContentLength => {
                for t in tokens() {
                    let n = (!t.is_empty() && t.len() <= 19 && t.iter().all(u8::is_ascii_digit))
                        .then(|| t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                    self.content_length = match (self.content_length, n) {
                        (_, None) | (Some(Err(())), _) => Some(Err(())),
                        (Some(Ok(l)), Some(n)) if l != n => Some(Err(())),
                        (_, Some(n)) => Some(Ok(n)),
                    };
                }
            }
            Known::Expect => self.expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            _ => {}
        }
    }
}

/// An answer's header fields as the lines of an HTTP/1.1 head (`name: value`, names as the
/// upstream wrote them), the fields of its connection left out. The pool gives an upstream's
/// answer so, in its extensions and with an empty header map: a client on HTTP/1.1 gets the
/// lines as they are, without a map built and taken apart again for it; one on HTTP/2 gets
/// them in the map ([`Lines::move_to_map`]).
#[derive(Debug, Clone)]
pub struct Lines {
    bytes: Vec<u8>,
    /// A Content-Length is among them.
    pub has_length: bool,
    /// A Date is among them.
    pub has_date: bool,
}

impl Lines {
    /// The lines of the fields httparse read from `head`, hop-by-hop ones and those
    /// `Connection` names left out (`Upgrade` kept in an upgrade), with a route's `changes`
    /// made (the fields they name left out, the set ones appended), and what the fields say.
    /// Kept lines that follow each other in `head` are copied as one piece.
    pub fn of(
        head: &[u8],
        read: &[httparse::Header<'_>],
        upgrade: bool,
        changes: &[FieldChange],
    ) -> (Lines, Fields) {
        let mut fields = Fields::default();
        let size: usize = read.iter().map(|h| h.name.len() + h.value.len() + 4).sum();
        let mut lines = Lines {
            // Room for a field or two that a route's response filters may add, without a copy.
            bytes: Vec::with_capacity(size + 64),
            has_length: false,
            has_date: false,
        };
        let base = head.as_ptr();
        // The kept lines not yet copied, whole (CRLF included), one after the other in `head`.
        let mut run: Option<Range<usize>> = None;
        for h in read {
            let name = Known::of(h.name.as_bytes());
            fields.note(name, h.value);
            if hop_by_hop(name, upgrade) || names(changes, h.name.as_bytes()) {
                continue;
            }
            let (start, end) = (
                span_of(base, h.name.as_bytes()).start,
                span_of(base, h.value).end,
            );
            let whole = head.get(end..end + 2) == Some(&b"\r\n"[..]);
            match &mut run {
                Some(r) if whole && r.end == start => r.end = end + 2,
                _ => {
                    if let Some(r) = run.take() {
                        lines.bytes.extend_from_slice(&head[r]);
                    }
                    if whole {
                        run = Some(start..end + 2);
                    } else {
                        write_field(&mut lines.bytes, h.name.as_bytes(), h.value);
                    }
                }
            }
            lines.noted(name);
        }
        if let Some(r) = run {
            lines.bytes.extend_from_slice(&head[r]);
        }
        if fields.connection_names_field {
            // Written again, without the fields named.
            let values = read
                .iter()
                .filter(|h| Known::of(h.name.as_bytes()) == Known::Connection)
                .map(|h| h.value);
            let named: Vec<&[u8]> = named_by_connection(values, upgrade).collect();
            lines.bytes.clear();
            (lines.has_length, lines.has_date) = (false, false);
            for h in read {
                let name = h.name.as_bytes();
                if !named.iter().any(|n| n.eq_ignore_ascii_case(name)) && !names(changes, name) {
                    lines.push(Known::of(name), h, upgrade);
                }
            }
        }
        for (name, value) in changes {
            if let Some(v) = value {
                lines.append(name, v);
            }
        }
        (lines, fields)
    }

    fn push(&mut self, name: Known, field: &httparse::Header<'_>, upgrade: bool) {
        if hop_by_hop(name, upgrade) {
            return;
        }
        self.noted(name);
        write_field(&mut self.bytes, field.name.as_bytes(), field.value);
    }

    /// Notes what a kept field says of the lines (a length, a date).
    fn noted(&mut self, name: Known) {
        self.has_length |= name == Known::ContentLength;
        self.has_date |= name == Known::Date;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Sets (Some) or removes (None) fields, as a route's response filters ask: the lines of
    /// each name named go (the others close up in place), the set ones are appended.
    pub fn edit(&mut self, changes: &[FieldChange]) {
        let (mut read, mut kept) = (0, 0);
        while read < self.bytes.len() {
            let line = &self.bytes[read..];
            let next = read + memchr::memchr(b'\n', line).map_or(line.len(), |i| i + 1);
            let name = &line[..memchr::memchr(b':', line).unwrap_or(0)];
            if names(changes, name) {
                match Known::of(name) {
                    Known::ContentLength => self.has_length = false,
                    Known::Date => self.has_date = false,
                    _ => {}
                }
            } else {
                self.bytes.copy_within(read..next, kept);
                kept += next - read;
            }
            read = next;
        }
        self.bytes.truncate(kept);
        for (name, value) in changes {
            if let Some(v) = value {
                self.append(name, v);
            }
        }
    }

    /// The value of the first line named `name`, trimmed.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.bytes.split(|&b| b == b'\n').find_map(|line| {
            let colon = memchr::memchr(b':', line)?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_str().as_bytes())
                .then(|| line[colon + 1..].trim_ascii())
        })
    }

    /// Adds a line, beside any of the same name.
    pub fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        write_field(&mut self.bytes, name.as_str().as_bytes(), value.as_bytes());
        self.noted(Known::of(name.as_str().as_bytes()));
    }

    /// Puts the lines of `resp` (if it came so) into its header map, for a client that is not
    /// sent them as they are.
    pub fn move_to_map<B>(resp: &mut http::Response<B>) {
        let Some(lines) = resp.extensions_mut().remove::<Lines>() else {
            return;
        };
        let headers = resp.headers_mut();
        for line in lines.bytes.split(|&b| b == b'\n') {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            // httparse read them as valid, names and values alike.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(value.trim_ascii()),
            ) {
                headers.append(name, value);
            }
        }
    }
}

/// Whether one of `changes` is of the field `name` (in any case).
fn names(changes: &[FieldChange], name: &[u8]) -> bool {
    changes
        .iter()
        .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// The version httparse read (its minor number).
pub fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// Whether an answer has no body whatever its fields say (RFC 9112 6.3): to HEAD, 1xx, 204, 304.
pub fn bodiless(status: StatusCode, head_only: bool) -> bool {
    head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A header map from the fields at `spans` of `head`, values sharing its bytes, and what its
/// framing fields say. None when a name or a value is not valid.
pub fn header_map(head: &Bytes, spans: &[Span]) -> Option<(HeaderMap, Fields)> {
    // Room for a field the route's phases may add (X-Forwarded-Prefix), without a rehash.
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    let mut fields = Fields::default();
    for (name, value) in spans {
        let name = &head[name.clone()];
        fields.note(Known::of(name), &head[value.clone()]);
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    Some((headers, fields))
}

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Its framing is broken: the bytes after it cannot be told from the body.
    #[error("{0}")]
    Framing(&'static str),
    #[error("the connection closed mid-body")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How a body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Bytes left.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes (an answer without length).
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section.
    Trailers,
}

/// One step of decoding the body from what is buffered.
enum Step {
    Data(Bytes),
    End,
    More,
}

impl Decode {
    /// The next piece of the body: from `buf` (read and not yet taken), else read from `io`.
    /// Whatever follows the body stays in `buf`.
    pub fn poll_data<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, DecodeError>>> {
        loop {
            match self.step(buf)? {
                Step::Data(data) => return Poll::Ready(Some(Ok(data))),
                Step::End => return Poll::Ready(None),
                Step::More => {}
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(match *self {
                    Decode::Length(n) => n.clamp(4096, 64 * 1024) as usize,
                    _ => 16 * 1024,
                });
            }
            let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf))?;
            if n == 0 {
                if *self == Decode::UntilClose {
                    *self = Decode::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(DecodeError::Closed)));
            }
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decode::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match *self {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            Decode::Chunked(_) | Decode::UntilClose => SizeHint::default(),
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, DecodeError> {
        loop {
            match *self {
                Decode::Done => return Ok(Step::End),
                Decode::UntilClose if buf.is_empty() => return Ok(Step::More),
                Decode::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                Decode::Length(left) | Decode::Chunked(Chunked::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    *self = match (*self, left) {
                        (Decode::Length(_), 0) => Decode::Done,
                        (Decode::Length(_), _) => Decode::Length(left),
                        (_, 0) => Decode::Chunked(Chunked::DataEnd),
                        (_, _) => Decode::Chunked(Chunked::Data(left)),
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Decode::Chunked(Chunked::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::Framing("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decode::Chunked(Chunked::Size);
                }
                Decode::Chunked(at) => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    *self = match at {
                        Chunked::Size => match chunk_size(&line)? {
                            0 => Decode::Chunked(Chunked::Trailers),
                            n => Decode::Chunked(Chunked::Data(n)),
                        },
                        // Trailer fields are read and dropped; an empty line ends the body.
                        _ if line.is_empty() => Decode::Done,
                        _ => Decode::Chunked(Chunked::Trailers),
                    };
                }
            }
        }
    }
}

/// The next CRLF-ended line of `buf`, taken out without its CRLF.
fn line(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    const TOO_LONG: DecodeError = DecodeError::Framing("chunk line too long");
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_CHUNK_LINE => {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        Some(_) => Err(TOO_LONG),
        None if buf.len() > MAX_CHUNK_LINE => Err(TOO_LONG),
        None => Ok(None),
    }
}

/// A chunk-size line's size: hex digits, as many leading zeros as the line holds, then nothing
/// or extensions after `;` (whitespace allowed before it); extensions are ignored. Anything
/// looser (a sign, spaces around the size) is refused: a proxy that reads a size its upstream
/// reads otherwise is how requests get smuggled.
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    const BAD: DecodeError = DecodeError::Framing("bad chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at(digits);
    let after = rest.iter().position(|b| !matches!(b, b' ' | b'\t'));
    if hex.is_empty()
        || after.is_some_and(|at| rest[at] != b';')
        || (after.is_none() && !rest.is_empty())
    {
        return Err(BAD);
    }
    let significant = &hex[hex.iter().take_while(|b| **b == b'0').count()..];
    // Below 2^60: a chunk no client sends, and no overflow adding up lengths.
    if significant.len() > 15 {
        return Err(DecodeError::Framing("chunk size too large"));
    }
    significant.iter().try_fold(0u64, |n, b| {
        let digit = (*b as char).to_digit(16).ok_or(BAD)?;
        Ok(n << 4 | u64::from(digit))
    })
}

/// Writes `out` (a message head, maybe more) and then `body` (chunked when `chunked`), batching
/// what the body has ready at once into one write.
pub async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut out: Vec<u8>,
    mut body: ProxyBody,
    chunked: bool,
) -> io::Result<()> {
    loop {
        // What the body has ready joins the batch; the batch goes out before waiting.
        let frame = match poll_fn(|cx| Poll::Ready(ready_frame(&mut body, cx))).await {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    w.write_all(&out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // The message cannot be finished: the peer sees the connection end early.
                w.write_all(&out).await?;
                return Err(io::Error::other(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not passed on over HTTP/1.1.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() > WRITE_BATCH / 4 {
            w.write_all(&out).await?;
            out.clear();
            w.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_BATCH {
            w.write_all(&out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    w.write_all(&out).await?;
    w.flush().await
}

/// The body's next frame if it is there without waiting.
#[allow(clippy::type_complexity)]
fn ready_frame(
    body: &mut ProxyBody,
    cx: &mut Context<'_>,
) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_edited_in_place_of_a_header_map() {
        let head = b"HTTP/1.1 200 OK\r\nServer: up/1\r\nContent-Length: 2\r\nX-Up: 1\r\nserver: again\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut fields);
        resp.parse(head).unwrap();
        let changes = [
            (http::header::SERVER, None),
            (http::header::DATE, Some(HeaderValue::from_static("today"))),
            (
                HeaderName::from_static("x-up"),
                Some(HeaderValue::from_static("2")),
            ),
        ];
        // Made as the lines are read, or on the lines read: the same lines.
        let (read, _) = Lines::of(head, resp.headers, false, &changes);
        let (mut lines, _) = Lines::of(head, resp.headers, false, &[]);
        assert!(lines.has_length && !lines.has_date);
        lines.edit(&changes);
        assert_eq!(
            String::from_utf8_lossy(lines.as_bytes()),
            "Content-Length: 2\r\ndate: today\r\nx-up: 2\r\n"
        );
        assert!(lines.has_length && lines.has_date);
        assert_eq!(read.as_bytes(), lines.as_bytes());
        assert!(read.has_length && read.has_date);
        // Nothing named: the lines stay, the set ones appended.
        lines.edit(&[(
            HeaderName::from_static("x-more"),
            Some(HeaderValue::from_static("3")),
        )]);
        assert!(String::from_utf8_lossy(lines.as_bytes()).ends_with("x-up: 2\r\nx-more: 3\r\n"));
    }
}
