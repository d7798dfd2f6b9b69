//! SPDY/3.1 framing, server side, as much as Kubernetes' streaming protocols
//! need (kubectl's `port-forward` speaks it, directly after an
//! `Upgrade: SPDY/3.1` or tunnelled inside WebSocket binary messages).
//!
//! Wire format (draft-mbelshe-httpbis-spdy-00 / SPDY/3.1):
//! - control frame: `1` bit, 15-bit version (3), 16-bit type, 8-bit flags,
//!   24-bit length, then the type's fields;
//! - data frame: `0` bit, 31-bit stream id, 8-bit flags, 24-bit length, payload.
//!
//! Name/value header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are a 32-bit
//! count of pairs, each a 32-bit length-prefixed name and value (several
//! values joined by NUL), compressed with zlib primed with the SPDY/3
//! dictionary. Each direction of a session is one zlib stream: every block is
//! ended with a sync flush and the next block continues the same stream, so
//! the [`Codec`] keeps one compressor and one decompressor for its lifetime.
//!
//! The codec is synchronous and transport-free: [`Codec::decode`] takes frames
//! off the front of a byte buffer, [`Codec::encode`] appends to one.
//! [`FlowWindow`] is the per-stream/session window arithmetic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::sync::OnceLock;

/// The protocol version carried in every control frame.
pub const VERSION: u16 = 3;
/// FLAG_FIN on data and control frames: the sender's half of the stream ends.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send on it.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// Largest payload a frame's 24-bit length can describe.
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// Initial per-stream flow-control window (64 KiB), per SPDY/3.1 §2.6.8.
pub const DEFAULT_INITIAL_WINDOW: i64 = 64 * 1024;
/// Largest decompressed header block accepted (protects against zlib bombs).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Control frame types.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst_status {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
}

/// SETTINGS id of SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// Header name/value pairs in wire order. Names are lowercase on the wire.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Entry flags (PERSIST_VALUE, PERSISTED).
    pub flags: u8,
    /// Setting id (24 bits).
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// New stream's id (odd when the client opens it).
        stream_id: u32,
        /// Stream this one is associated with (0 for none).
        associated_to: u32,
        /// 3-bit priority, 0 highest.
        priority: u8,
        /// FLAG_FIN / FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Request headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream aborted.
        stream_id: u32,
        /// One of [`rst_status`].
        status: u32,
    },
    /// Session settings.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        flags: u8,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// Liveness check; echoed by the side that did not send it.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// The sender accepts no new streams.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// 0 OK, 1 PROTOCOL_ERROR, 2 INTERNAL_ERROR.
        status: u32,
    },
    /// More headers on an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Grants the peer more send window.
    WindowUpdate {
        /// The stream, or 0 for the session window (SPDY/3.1).
        stream_id: u32,
        /// Bytes added (31 bits, > 0).
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type this codec does not know; the spec says to
    /// ignore it.
    Unknown {
        /// Its type.
        frame_type: u16,
    },
}

/// Malformed input or a header block the codec cannot process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    /// A control frame with a version other than 3.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame shorter than its type's fixed fields.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// A frame or header block over the size limit.
    #[error("frame too large ({0} bytes)")]
    TooLarge(usize),
    /// zlib failure or a header block that is not valid.
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// Header names and common values the SPDY/3 header compressor is primed
/// with, each written as a 32-bit big-endian length then the word.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's unprefixed tail: status codes, reason phrases, dates and
/// common header values.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 header compression dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Encoder and decoder for one SPDY session (one zlib stream per direction).
pub struct Codec {
    compress: Compress,
    decompress: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec with fresh compression contexts.
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // Priming a fresh deflate stream cannot fail.
        let _ = compress.set_dictionary(dictionary());
        Self {
            compress,
            decompress: Decompress::new(true),
        }
    }

    /// Take one complete frame off the front of `buf`; `Ok(None)` when `buf`
    /// holds only part of one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut body = buf.split_to(len);
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: body.freeze(),
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, name: &'static str, body: &BytesMut| {
            if body.len() < n {
                Err(SpdyError::Malformed(name))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            frame_type::SYN_STREAM => {
                need(10, "SYN_STREAM", &body)?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let associated_to = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                let _slot = body.get_u8();
                let headers = self.decode_headers(&body)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            frame_type::SYN_REPLY => {
                need(4, "SYN_REPLY", &body)?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let headers = self.decode_headers(&body)?;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            }
            frame_type::HEADERS => {
                need(4, "HEADERS", &body)?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let headers = self.decode_headers(&body)?;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
            frame_type::RST_STREAM => {
                need(8, "RST_STREAM", &body)?;
                Frame::RstStream {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            frame_type::SETTINGS => {
                need(4, "SETTINGS", &body)?;
                let n = body.get_u32() as usize;
                if body.len() != n.saturating_mul(8) {
                    return Err(SpdyError::Malformed("SETTINGS"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let word = body.get_u32();
                    entries.push(Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0x00ff_ffff,
                        value: body.get_u32(),
                    });
                }
                Frame::Settings { flags, entries }
            }
            frame_type::PING => {
                need(4, "PING", &body)?;
                Frame::Ping { id: body.get_u32() }
            }
            frame_type::GOAWAY => {
                need(4, "GOAWAY", &body)?;
                let last_good_stream_id = body.get_u32() & 0x7fff_ffff;
                // SPDY/3 added the status word; tolerate its absence.
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            frame_type::WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE", &body)?;
                Frame::WindowUpdate {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    delta: body.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }

    /// Append `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(((*flags as u32) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.encode_headers(headers)?;
                let mut body = BytesMut::with_capacity(10 + block.len());
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(associated_to & 0x7fff_ffff);
                body.put_u8((priority & 0x7) << 5);
                body.put_u8(0);
                body.extend_from_slice(&block);
                control(out, frame_type::SYN_STREAM, *flags, &body)?;
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    frame_type::SYN_REPLY
                } else {
                    frame_type::HEADERS
                };
                let block = self.encode_headers(headers)?;
                let mut body = BytesMut::with_capacity(4 + block.len());
                body.put_u32(stream_id & 0x7fff_ffff);
                body.extend_from_slice(&block);
                control(out, kind, *flags, &body)?;
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                control(out, frame_type::RST_STREAM, 0, &body)?;
            }
            Frame::Settings { flags, entries } => {
                let mut body = BytesMut::with_capacity(4 + 8 * entries.len());
                body.put_u32(entries.len() as u32);
                for e in entries {
                    body.put_u32(((e.flags as u32) << 24) | (e.id & 0x00ff_ffff));
                    body.put_u32(e.value);
                }
                control(out, frame_type::SETTINGS, *flags, &body)?;
            }
            Frame::Ping { id } => control(out, frame_type::PING, 0, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(last_good_stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                control(out, frame_type::GOAWAY, 0, &body)?;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = BytesMut::with_capacity(8);
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(delta & 0x7fff_ffff);
                control(out, frame_type::WINDOW_UPDATE, 0, &body)?;
            }
            Frame::Unknown { .. } => return Err(SpdyError::Malformed("unknown")),
        }
        Ok(())
    }

    fn encode_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.put_u32(name.len() as u32);
            raw.extend_from_slice(name.as_bytes());
            raw.put_u32(value.len() as u32);
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            out.reserve(raw.len() + 64);
            let before_in = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            let consumed = (self.compress.total_in() - before_in) as usize;
            input = &input[consumed..];
            // Done once all input is in and the flush fit in the spare room.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn decode_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        parse_header_block(&raw)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::TooLarge(out.len()));
                }
                out.reserve(out.len().max(256));
            }
            let before_in = self.decompress.total_in();
            let before_out = out.len();
            let res = self
                .decompress
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.decompress.total_in() - before_in) as usize;
            input = &input[consumed..];
            match res {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                        return Err(SpdyError::HeaderBlock("truncated zlib data".into()));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.decompress
                            .set_dictionary(dictionary())
                            .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
                    }
                    None => return Err(SpdyError::HeaderBlock(e.to_string())),
                },
            }
        }
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) -> Result<(), SpdyError> {
    if body.len() > MAX_FRAME_LENGTH {
        return Err(SpdyError::TooLarge(body.len()));
    }
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | body.len() as u32);
    out.extend_from_slice(body);
    Ok(())
}

fn parse_header_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |m: &str| SpdyError::HeaderBlock(m.to_string());
    if raw.len() < 4 {
        return Err(bad("missing pair count"));
    }
    let n = raw.get_u32() as usize;
    // Each pair takes at least 8 bytes: reject absurd counts before allocating.
    if n > raw.len() / 8 {
        return Err(bad("pair count exceeds block"));
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut field = || -> Result<String, SpdyError> {
            if raw.len() < 4 {
                return Err(bad("truncated length"));
            }
            let len = raw.get_u32() as usize;
            if raw.len() < len {
                return Err(bad("truncated field"));
            }
            let s = std::str::from_utf8(&raw[..len])
                .map_err(|_| bad("field is not UTF-8"))?
                .to_string();
            raw.advance(len);
            Ok(s)
        };
        let name = field()?;
        let value = field()?;
        if name.is_empty() {
            return Err(bad("empty header name"));
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// A flow-control window (SPDY/3.1 §2.6.8): per stream and per session, on
/// each side. Sending consumes it; WINDOW_UPDATE replenishes it. It may go
/// negative when the peer shrinks SETTINGS_INITIAL_WINDOW_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowWindow {
    size: i64,
    initial: i64,
}

impl FlowWindow {
    /// A window of `initial` bytes.
    pub fn new(initial: i64) -> Self {
        Self {
            size: initial,
            initial,
        }
    }

    /// Bytes that may be sent now (0 when exhausted).
    pub fn available(&self) -> usize {
        self.size.max(0) as usize
    }

    /// Record `n` bytes sent (or, on a receive window, received). Receiving
    /// past the window is the peer's flow-control error.
    pub fn consume(&mut self, n: usize) -> Result<(), SpdyError> {
        if n as i64 > self.size {
            return Err(SpdyError::Malformed("flow-control window exceeded"));
        }
        self.size -= n as i64;
        Ok(())
    }

    /// Apply a WINDOW_UPDATE; a window above 2^31-1 is a flow-control error.
    pub fn grow(&mut self, delta: u32) -> Result<(), SpdyError> {
        let size = self.size + delta as i64;
        if size > i32::MAX as i64 {
            return Err(SpdyError::Malformed("flow-control window overflow"));
        }
        self.size = size;
        Ok(())
    }

    /// Apply a new SETTINGS_INITIAL_WINDOW_SIZE: the window moves by the
    /// difference from the old initial size.
    pub fn reset_initial(&mut self, initial: i64) {
        self.size += initial - self.initial;
        self.initial = initial;
    }

    /// On a receive window: the WINDOW_UPDATE delta to send once half of the
    /// window has been consumed, restoring it to its initial size.
    pub fn replenish(&mut self) -> Option<u32> {
        let used = self.initial - self.size;
        if used > 0 && used >= self.initial / 2 {
            self.size = self.initial;
            Some(used as u32)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut enc = Codec::new();
        let mut dec = Codec::new();
        let mut buf = BytesMut::new();
        enc.encode(&frame, &mut buf).unwrap();
        let got = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, frame);
        assert!(buf.is_empty());
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_has_the_spec_length() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            flags: FLAG_FIN,
            headers: hdrs(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
        });
        round_trip(Frame::SynReply {
            stream_id: 3,
            flags: 0,
            headers: vec![],
        });
        round_trip(Frame::Headers {
            stream_id: 5,
            flags: FLAG_FIN,
            headers: hdrs(&[("a", "b\0c")]),
        });
        round_trip(Frame::RstStream {
            stream_id: 7,
            status: rst_status::CANCEL,
        });
        round_trip(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 1,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 1 << 20,
            }],
        });
        round_trip(Frame::Ping { id: 0x1234_5679 });
        round_trip(Frame::GoAway {
            last_good_stream_id: 9,
            status: 0,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 70_000,
        });
        round_trip(Frame::Data {
            stream_id: 11,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
        });
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let mut enc = Codec::new();
        let mut dec = Codec::new();
        let mut buf = BytesMut::new();
        let frames: Vec<Frame> = (0..20)
            .map(|i| Frame::SynStream {
                stream_id: 2 * i + 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: hdrs(&[
                    ("streamtype", if i % 2 == 0 { "error" } else { "data" }),
                    ("port", "8080"),
                    ("requestid", &(i / 2).to_string()),
                ]),
            })
            .collect();
        for f in &frames {
            enc.encode(f, &mut buf).unwrap();
        }
        let first_len = {
            let mut one = BytesMut::new();
            Codec::new().encode(&frames[0], &mut one).unwrap();
            one.len()
        };
        // Later blocks compress against the earlier ones: the whole batch is
        // much smaller than 20 independent first frames.
        assert!(
            buf.len() < first_len * 20 / 2,
            "{} vs {}",
            buf.len(),
            first_len
        );
        for f in &frames {
            assert_eq!(&dec.decode(&mut buf).unwrap().unwrap(), f);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn compressed_block_is_zlib_primed_with_the_dictionary() {
        let mut buf = BytesMut::new();
        Codec::new()
            .encode(
                &Frame::SynReply {
                    stream_id: 1,
                    flags: 0,
                    headers: vec![],
                },
                &mut buf,
            )
            .unwrap();
        let block = &buf[12..];
        // zlib header with FDICT set, then the dictionary's Adler-32.
        assert_eq!(block[0] & 0x0f, 8, "deflate");
        assert_ne!(block[1] & 0x20, 0, "FDICT");
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &x in dictionary() {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(&block[2..6], &((b << 16) | a).to_be_bytes());
        // Sync flush marker ends every block.
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn partial_input_waits_for_the_rest() {
        let mut enc = Codec::new();
        let mut full = BytesMut::new();
        let f = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: hdrs(&[("port", "80")]),
        };
        enc.encode(&f, &mut full).unwrap();
        let mut dec = Codec::new();
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let got = dec.decode(&mut buf).unwrap();
            if i + 1 < full.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), f);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = Codec::new();
        // Control frame with version 2.
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut buf), Err(SpdyError::Version(2)));
        // SYN_STREAM whose header block is not zlib.
        let mut buf = BytesMut::from(
            &[
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        );
        assert!(matches!(
            dec.decode(&mut buf),
            Err(SpdyError::HeaderBlock(_))
        ));
        // Short RST_STREAM.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(SpdyError::Malformed("RST_STREAM"))
        );
        // Unknown control types are surfaced for the session to ignore.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 10, 0, 0, 0, 0][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Some(Frame::Unknown { frame_type: 10 }))
        );
        // A header block claiming more pairs than it holds.
        assert!(parse_header_block(&[0, 0, 1, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_takes_the_first_value() {
        let h = hdrs(&[("streamtype", "data"), ("port", "80\x00443")]);
        assert_eq!(header(&h, "streamType"), Some("data"));
        assert_eq!(header(&h, "Port"), Some("80"));
        assert_eq!(header(&h, "requestID"), None);
    }

    #[test]
    fn flow_windows_consume_grow_and_replenish() {
        let mut w = FlowWindow::new(DEFAULT_INITIAL_WINDOW);
        assert_eq!(w.available(), 65536);
        w.consume(40_000).unwrap();
        assert_eq!(w.available(), 25_536);
        assert!(w.consume(30_000).is_err(), "sending past the window");
        w.grow(10_000).unwrap();
        assert_eq!(w.available(), 35_536);
        assert!(w.grow(u32::MAX >> 1).is_err(), "window above 2^31-1");

        // Shrinking the initial size can drive a window negative.
        let mut w = FlowWindow::new(DEFAULT_INITIAL_WINDOW);
        w.consume(60_000).unwrap();
        w.reset_initial(16_384);
        assert_eq!(w.available(), 0);
        w.grow(50_000).unwrap();
        assert_eq!(w.available(), 6_384);

        // Receive side: an update once half the window is used.
        let mut r = FlowWindow::new(DEFAULT_INITIAL_WINDOW);
        r.consume(20_000).unwrap();
        assert_eq!(r.replenish(), None);
        r.consume(20_000).unwrap();
        assert_eq!(r.replenish(), Some(40_000));
        assert_eq!(r.available(), 65_536);
    }
}
