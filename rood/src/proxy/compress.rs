//! The compress middleware's response filter: which coding a client takes, whether an answer is
//! worth compressing, and the body that compresses it as it streams.
//!
//! Output is flushed whenever the upstream has nothing more at hand, so a stream of events
//! (server-sent events, a long poll) reaches the client as it is written, not when a buffer
//! fills.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use hyper::body::{Body, Frame};

use super::head::ResponseHead;
use super::{BoxError, ProxyBody};

/// Compressed output is passed on once this much is waiting, flush or not.
const PASS_ON: usize = 32 * 1024;

/// A content coding roo compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    /// Ours, best first: what a client weighs alike is taken in this order.
    const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding `headers`' Accept-Encoding weighs highest (RFC 9110 12.5.3), of ours; None
    /// when it takes none of them (or sends no Accept-Encoding).
    pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
        let mut weights = [None::<f32>; 3];
        let mut any = None::<f32>;
        for value in headers.get_all(ACCEPT_ENCODING) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let name = parts.next().unwrap_or_default().trim();
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                if name == "*" {
                    any = Some(q);
                } else if let Some(i) = Coding::ALL
                    .iter()
                    .position(|c| name.eq_ignore_ascii_case(c.token()))
                {
                    weights[i] = Some(q);
                }
            }
        }
        let weighed = Coding::ALL.into_iter().zip(weights);
        let taken = weighed.filter_map(|(c, q)| Some((c, q.or(any).filter(|q| *q > 0.0)?)));
        // The first of the highest: ours are in order of preference.
        let best = taken.fold(None, |best, (c, q)| match best {
            Some((_, b)) if b >= q => best,
            _ => Some((c, q)),
        });
        best.map(|(c, _)| c)
    }
}

/// Whether the answer is of a kind compression is for: with a body, not compressed already, not
/// a range of one, a compressible type, not marked `no-transform`, and not said to be shorter
/// than `min_bytes`.
pub fn compressible(head: &ResponseHead<'_>, min_bytes: u64) -> bool {
    let status = head.status;
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return false;
    }
    if head
        .get(&CONTENT_ENCODING)
        .is_some_and(|v| !v.eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    if head.get(&CACHE_CONTROL).is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    }) {
        return false;
    }
    let length = head
        .get(&CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n < min_bytes) {
        return false;
    }
    head.get(&CONTENT_TYPE).is_some_and(compressible_type)
}

/// Text, and the structured and script types that are text underneath; not images, video,
/// archives or fonts that are compressed already.
fn compressible_type(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/x-ndjson"
                | "application/wasm"
                | "application/x-www-form-urlencoded"
                | "application/graphql-response+json"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/bmp"
                | "font/ttf"
                | "font/otf"
        )
}

/// Marks `head` as varying with Accept-Encoding: a cache must not hand this answer's compressed
/// form to a client that did not ask for it, nor its plain form to one that did.
pub fn vary(head: &mut ResponseHead<'_>) {
    head.append(VARY, HeaderValue::from_static("accept-encoding"));
}

/// Makes `head` the head of `coding`'s form of the answer, and `body` that form.
pub fn compress(head: &mut ResponseHead<'_>, body: ProxyBody, coding: Coding) -> ProxyBody {
    // The same entity compressed is not the same bytes: a strong validator becomes a weak one.
    let etag = head
        .get(&ETAG)
        .filter(|v| v.first() == Some(&b'"'))
        .and_then(|v| HeaderValue::from_bytes(&[b"W/", v].concat()).ok());
    let mut changes = vec![
        (CONTENT_LENGTH, None),
        (
            CONTENT_ENCODING,
            Some(HeaderValue::from_static(coding.token())),
        ),
    ];
    if let Some(etag) = etag {
        changes.push((ETAG, Some(etag)));
    }
    head.edit(&changes);
    ProxyBody::new(Compressed {
        inner: body,
        encoder: Some(Encoder::new(coding)),
        unflushed: false,
        trailers: None,
    })
}

/// An answer's body, compressed as it streams.
struct Compressed {
    inner: ProxyBody,
    /// None once the compressed stream is finished.
    encoder: Option<Encoder>,
    /// Input went in since the last flush.
    unflushed: bool,
    /// The upstream's trailers, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let out = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    encoder.flush()
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.unflushed = true;
                        if let Err(e) = encoder.write(&data) {
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        if encoder.output().len() < PASS_ON {
                            continue;
                        }
                        Ok(encoder.take())
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => match this.encoder.take() {
                    Some(encoder) => encoder.finish(),
                    None => continue,
                },
            };
            match out {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

/// One coding's compressor, writing into a buffer the body empties.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    // Levels of a proxy compressing on the fly: most of the saving for little CPU. Brotli's
    // window is kept to 256 KiB, a bound on each stream's memory.
    fn new(coding: Coding) -> Encoder {
        match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                4,
                18,
            ))),
            Coding::Zstd => match zstd::stream::write::Encoder::new(Vec::new(), 3) {
                Ok(e) => Encoder::Zstd(e),
                // zstd fails to start only without memory; gzip needs less.
                Err(_) => Encoder::new(Coding::Gzip),
            },
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// The output so far, taken.
    fn take(&mut self) -> Bytes {
        std::mem::take(self.output()).into()
    }

    /// Compresses `data`, into the output as the coding's blocks fill.
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Everything written so far, compressed, ending on a boundary the client can decode to.
    fn flush(&mut self) -> io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Br(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
        }
        Ok(self.take())
    }

    /// The rest of the output, and the coding's end.
    fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(value: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        Coding::accepted(&headers)
    }

    #[test]
    fn the_client_s_weights_choose_the_coding() {
        assert_eq!(accepted("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(accepted("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(accepted("gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(accepted("GZIP"), Some(Coding::Gzip));
        assert_eq!(accepted("*;q=0.1, zstd;q=0"), Some(Coding::Br));
        assert_eq!(accepted("deflate, identity"), None);
        assert_eq!(accepted("gzip;q=0"), None);
        assert_eq!(Coding::accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn only_text_like_types_are_compressed() {
        for t in [
            "text/html; charset=utf-8",
            "application/json",
            "application/problem+json",
            "image/svg+xml",
            "Text/CSS",
        ] {
            assert!(compressible_type(t.as_bytes()), "{t}");
        }
        for t in [
            "image/png",
            "application/zip",
            "video/mp4",
            "font/woff2",
            "",
        ] {
            assert!(!compressible_type(t.as_bytes()), "{t}");
        }
    }

    #[test]
    fn each_coding_round_trips_with_flushes_between() {
        use std::io::Read;
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for coding in Coding::ALL {
            let mut e = Encoder::new(coding);
            let mut out = Vec::new();
            for (i, piece) in text.chunks(7_000).enumerate() {
                e.write(piece).unwrap();
                out.extend_from_slice(&e.take());
                if i % 2 == 0 {
                    out.extend_from_slice(&e.flush().unwrap());
                }
            }
            out.extend_from_slice(&e.finish().unwrap());
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Br => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Zstd => back = zstd::stream::decode_all(&out[..]).unwrap(),
            }
            assert_eq!(back, text, "{coding:?}");
            assert!(out.len() < text.len() / 3, "{coding:?}: {}", out.len());
        }
    }
}
