//! HTTP/2 over cleartext with prior knowledge (h2c), one request per connection, two ways:
//! [`send`] through the `h2` crate, a conforming client that refuses to put a malformed
//! request on the wire, and [`send_raw`], which writes the HEADERS frame field by field as
//! HPACK literals, to see what Envoy does with what no conforming client sends (upper-case
//! names, control bytes, repeated or missing pseudo-headers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

/// What came back for the request's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A response: its status and body.
    Response { status: u16, body: Vec<u8> },
    /// The stream was reset (RST_STREAM) with this error code.
    Reset(u32),
    /// The connection was closed (GOAWAY) with this error code before answering.
    GoAway(u32),
    /// The connection was closed without a word.
    Closed,
}

impl Answer {
    /// The status, or what stood in for one (`reset(PROTOCOL_ERROR)`...).
    pub fn describe(&self) -> String {
        match self {
            Answer::Response { status, .. } => status.to_string(),
            Answer::Reset(code) => format!("reset({})", error_name(*code)),
            Answer::GoAway(code) => format!("goaway({})", error_name(*code)),
            Answer::Closed => "closed".to_string(),
        }
    }
}

/// RFC 9113 §7 error codes.
pub fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| format!("0x{code:x}"), |name| name.to_string())
}

// ---------------------------------------------------------------------------------------
// Through the h2 crate

/// Sends `method target` (origin-form; for CONNECT, the authority) with `headers`
/// (lower-case names) and `body` through the `h2` crate. Panics if the crate refuses to
/// build the request: such a request belongs to [`send_raw`].
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Answer {
    let uri = if method == "CONNECT" {
        target.to_string()
    } else {
        format!("http://keygate.test{target}")
    };
    let mut builder = http::Request::builder().method(method).uri(&uri);
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("h2 crate: header name {name:?}: {e}"));
        let value = http::HeaderValue::from_bytes(value)
            .unwrap_or_else(|e| panic!("h2 crate: header value {value:?}: {e}"));
        builder = builder.header(name, value);
    }
    let request = builder
        .body(())
        .unwrap_or_else(|e| panic!("h2 crate: {method} {uri}: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = bytes::Bytes::copy_from_slice(body);
    runtime.block_on(async move {
        match tokio::time::timeout(TIMEOUT, exchange(addr, request, body)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => answer_of_error(&e),
            Err(_) => panic!("h2: no answer from {addr} within {TIMEOUT:?}"),
        }
    })
}

async fn exchange(
    addr: SocketAddr,
    request: http::Request<()>,
    body: bytes::Bytes,
) -> Result<Answer, h2::Error> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("h2: connect {addr}: {e}"));
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let (response, mut stream) = client.send_request(request, body.is_empty())?;
    if !body.is_empty() {
        stream.send_data(body, true)?;
    }
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    drop(client);
    driver.abort();
    Ok(Answer::Response { status, body: out })
}

fn answer_of_error(e: &h2::Error) -> Answer {
    let code = e.reason().map_or(0, u32::from);
    if e.is_reset() {
        Answer::Reset(code)
    } else if e.is_go_away() {
        Answer::GoAway(code)
    } else if e.is_io() {
        Answer::Closed
    } else {
        panic!("h2: {e}")
    }
}

// ---------------------------------------------------------------------------------------
// Frames written by hand

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a peer must accept (SETTINGS_MAX_FRAME_SIZE's default).
const MAX_FRAME: usize = 16_384;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(payload.len() <= MAX_FRAME);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One field as a literal without indexing, with a literal name, no Huffman coding
/// (RFC 7541 §6.2.2): every byte goes on the wire as given.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// Sends one request on stream 1 of a new connection: `fields` in order, pseudo-headers
/// included and unchecked, then `body` if any. Reads until the stream ends.
pub fn send_raw<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    addr: SocketAddr,
    fields: &[(N, V)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("h2 raw: connect {addr}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut block = Vec::new();
    for (name, value) in fields {
        hpack_literal(&mut block, name.as_ref(), value.as_ref());
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let (kind, mut flags) = if first {
            (HEADERS, if body.is_empty() { END_STREAM } else { 0 })
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, 1, chunk));
        first = false;
    }
    let mut chunks = body.chunks(MAX_FRAME).peekable();
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_STREAM
        } else {
            0
        };
        out.extend(frame(DATA, flags, 1, chunk));
    }
    // Envoy may refuse and close before it has read everything: what it answered still counts.
    let _ = stream.write_all(&out);
    read_answer(&mut stream)
}

fn read_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], stream_id, payload))
}

/// A frame's payload without its padding (and a HEADERS frame's priority fields).
fn unpadded(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut data = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(data[0]);
        data = &data[1..];
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        data = &data[5..];
    }
    data[..data.len() - pad].to_vec()
}

/// Reads frames until stream 1 is answered, reset or the connection ends. Nothing is
/// written back (no SETTINGS or PING acknowledgement): a write after Envoy has closed
/// would draw a TCP reset that discards what it sent before closing. Envoy does not wait
/// for the acknowledgement to answer.
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut status: Option<u16> = None;
    let mut body = Vec::new();
    // Bounded: a frame per read, and Envoy answers one stream in a handful of frames.
    for _ in 0..10_000 {
        let Some((kind, flags, id, payload)) = read_frame(stream) else {
            return match status {
                Some(status) => Answer::Response { status, body },
                None => Answer::Closed,
            };
        };
        match kind {
            GOAWAY => {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                return match status {
                    Some(status) => Answer::Response { status, body },
                    None => Answer::GoAway(code),
                };
            }
            RST_STREAM if id == 1 => {
                return Answer::Reset(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            HEADERS if id == 1 => {
                // The first block holds :status (trailers, if any, come later).
                if status.is_none() {
                    let block = unpadded(kind, flags, &payload);
                    status = Some(status_of(&block).unwrap_or_else(|| {
                        panic!("h2 raw: no :status in response header block {block:02x?}")
                    }));
                }
                if flags & END_STREAM != 0 {
                    return Answer::Response {
                        status: status.unwrap_or_default(),
                        body,
                    };
                }
            }
            DATA if id == 1 => {
                body.extend(unpadded(kind, flags, &payload));
                if flags & END_STREAM != 0 {
                    return Answer::Response {
                        status: status.expect("h2 raw: DATA before HEADERS"),
                        body,
                    };
                }
            }
            _ => {}
        }
    }
    panic!("h2 raw: no end to the answer");
}

// ---------------------------------------------------------------------------------------
// Just enough HPACK decoding to read `:status`, which a response's header block holds
// first (RFC 9113 §8.3): the static table's statuses, or a literal whose value is three
// digits, plain or Huffman-coded. The connection is new, so nothing refers to the dynamic
// table yet.

fn hpack_read_int(block: &[u8], at: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(*at)?) & max;
    *at += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        if shift > 28 {
            return None; // longer than any length Envoy sends
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

fn hpack_read_string(block: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let huffman = *block.get(*at)? & 0x80 != 0;
    let len = hpack_read_int(block, at, 7)?;
    let raw = block.get(*at..*at + len)?;
    *at += len;
    if huffman {
        huffman_digits(raw)
    } else {
        Some(raw.to_vec())
    }
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B: `0`-`2` are the 5-bit
/// codes 0-2, `3`-`9` the 6-bit codes 0x19-0x1f); `None` for anything else.
fn huffman_digits(raw: &[u8]) -> Option<Vec<u8>> {
    let bits = raw.len() * 8;
    let bit = |i: usize| (raw[i / 8] >> (7 - i % 8)) & 1;
    let take = |from: usize, n: usize| (from..from + n).fold(0u8, |acc, i| (acc << 1) | bit(i));
    let mut out = Vec::new();
    let mut i = 0;
    while i < bits {
        if bits - i >= 5 && take(i, 5) <= 2 {
            out.push(b'0' + take(i, 5));
            i += 5;
        } else if bits - i >= 6 && (0x19..=0x1f).contains(&take(i, 6)) {
            out.push(b'3' + take(i, 6) - 0x19);
            i += 6;
        } else if bits - i < 8 && (i..bits).all(|j| bit(j) == 1) {
            break; // padding: the most significant bits of EOS
        } else {
            return None;
        }
    }
    Some(out)
}

fn status_of(block: &[u8]) -> Option<u16> {
    // Static table entries 8 to 14 are `:status` with these values.
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut at = 0;
    loop {
        let first = *block.get(at)?;
        let prefix = match first {
            0x80..=0xff => {
                let index = hpack_read_int(block, &mut at, 7)?;
                return STATIC.get(index.checked_sub(8)?).copied();
            }
            0x40..=0x7f => 6, // literal with incremental indexing
            0x20..=0x3f => {
                hpack_read_int(block, &mut at, 5)?; // dynamic table size update
                continue;
            }
            _ => 4, // literal without indexing, or never indexed
        };
        let name_ok = match hpack_read_int(block, &mut at, prefix)? {
            0 => hpack_read_string(block, &mut at)? == b":status",
            index => (8..=14).contains(&index),
        };
        let value = hpack_read_string(block, &mut at)?;
        return if name_ok {
            std::str::from_utf8(&value).ok()?.parse().ok()
        } else {
            None
        };
    }
}

#[test]
fn hpack_status_is_read_as_rfc_7541_encodes_it() {
    // Appendix C.5.1 (plain) and C.6.1 (Huffman): `:status: 302`.
    assert_eq!(status_of(&[0x48, 0x03, 0x33, 0x30, 0x32]), Some(302));
    assert_eq!(status_of(&[0x48, 0x82, 0x64, 0x02]), Some(302));
    assert_eq!(status_of(&[0x88]), Some(200));
    assert_eq!(status_of(&[0x3f, 0xe1, 0x1f, 0x8c]), Some(400)); // size update first
                                                                 // `:method: GET` is no status.
    assert_eq!(status_of(&[0x82]), None);
    // Every digit through the Huffman table, "0123456789", then EOS padding.
    let coded = [0x00, 0x44, 0xcb, 0x4d, 0xb8, 0xeb, 0xcf, 0xff];
    assert_eq!(huffman_digits(&coded).unwrap(), b"0123456789");
    let mut literal = Vec::new();
    hpack_literal(&mut literal, b":status", b"431");
    assert_eq!(status_of(&literal), Some(431));
}
