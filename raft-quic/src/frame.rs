//! Length-prefixed, versioned frames.
//!
//! ```text
//! response: | length: u32 BE | version: u8 |                  postcard body |
//! request:  | length: u32 BE | version: u8 | sender: u64 BE | postcard body |
//! batch:    | length: u32 BE | BATCH_KIND: u8 | count: u16 BE | count request frames |
//! answer:   | length: u32 BE | BATCH_KIND: u8 | position: u16 BE | postcard body |
//! ```
//!
//! A *batch* carries several requests to one peer in one frame on one stream (the coalescing of
//! `client.rs`): its requests are complete request frames, each with its own sender header, so
//! each gets the checks of a lone request. Its kind byte, [`BATCH_KIND`], is the version with
//! its high bit set. The answers come back on the batch's stream, one *answer* frame per
//! request in the order the handlers finish, each naming its request's position in the batch.
//!
//! A request's body is a `raft_core::Envelope`: the receiver, cluster and group it is meant
//! for, and the request (whose sender must be the header's). The receiving node checks the
//! envelope's address (`RpcError::WrongNode` / `WrongCluster` / `WrongGroup`).
//!
//! `length` counts everything after itself. A receiver checks `length` against its maximum frame
//! size and the version against [`PROTOCOL_VERSION`] *before* it reads or allocates the body; a
//! request's claimed sender, in a fixed header of its own, is checked against the connection's
//! identity before the body is even read. Buffers grow only as bytes actually arrive, so a peer
//! cannot make the receiver reserve memory it does not send, and bodies decode under a budget
//! ([`crate::bounded`]): at most a given number of sequence elements and a bounded nesting depth.
//! A body must decode completely: trailing bytes are an error.

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{Envelope, NodeId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bounded::{self, BoundedError, Limits};
use crate::wire::{code, PROTOCOL_VERSION};

/// The size of the frame header: the `u32` length and the version byte.
pub const HEADER_LEN: usize = 5;

/// The size of a request's sender header, after the frame header.
pub const SENDER_LEN: usize = 8;

/// The kind byte of a batch frame and of the answers on a batch's stream: the version with
/// its high bit set.
pub const BATCH_KIND: u8 = 0x80 | PROTOCOL_VERSION;

/// The most requests one batch frame may carry.
pub const MAX_BATCH_REQUESTS: usize = 256;

/// The size of a batch's request count, after the frame header.
pub const BATCH_COUNT_LEN: usize = 2;

/// The size of an answer's position header, after the frame header.
pub const POSITION_LEN: usize = 2;

/// The smallest maximum frame size a configuration may set (room for any vote or heartbeat).
pub const MIN_MAX_FRAME_SIZE: u32 = 1024;

/// The largest response frame (what its `length` counts: the kind byte, an answer's position and
/// the body) a node writes or reads, whatever its maximum frame size: a sending node gives up
/// a response stream whose header announces more, before it reads the body (the stream is
/// stopped with `code::FRAME_TOO_LARGE` and the RPC fails with `NetworkError::Codec`), so a
/// peer cannot make it hold more than this for one RPC in flight. The largest
/// [`WireResponse`](crate::WireResponse) is a `Refusal::Malformed` with a reason of
/// [`MAX_REASON_LEN`](crate::wire::MAX_REASON_LEN) bytes, 260 bytes encoded; the largest
/// `RpcResponse` (every integer at its maximum) is under 80 (both checked by this module's
/// tests): this leaves room for 15 times that.
pub const MAX_RESPONSE_FRAME_SIZE: u32 = 4096;

/// How many body bytes are reserved up front, at most, before any of them arrived.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// The deepest nesting a frame body may have (raft-core's messages need fewer than 10 levels).
pub const MAX_DEPTH: u32 = 32;

/// Why a frame could not be encoded or decoded. Every variant is recoverable: the stream that
/// carried it is closed and the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's announced (or, when encoding, actual) length exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// The length of the frame (version byte and body).
        len: u64,
        /// The maximum frame size in force.
        max: u32,
    },
    /// The frame announced a length too small for its fixed headers.
    #[error("frame announces {0} bytes, too few for its headers")]
    Empty(u32),
    /// The frame carries a protocol version this node does not speak.
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The input ended inside the frame.
    #[error("frame truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The body is not a valid postcard encoding of the expected message, exceeds the decoding
    /// budget, or (a request) names another sender than its header.
    #[error("frame body does not decode: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The receiver has no memory left for the request's elements now (see
    /// `QuicConfig::connection_receive_window`).
    #[error("the receiver's memory budget for this connection is exhausted")]
    Busy,
}

impl FrameError {
    /// The QUIC application error code used to close the stream that carried the bad frame.
    pub(crate) fn code(&self) -> quinn::VarInt {
        match self {
            FrameError::TooLarge { .. } => code::FRAME_TOO_LARGE,
            FrameError::UnsupportedVersion(_) => code::UNSUPPORTED_VERSION,
            FrameError::Truncated { .. } => code::TRUNCATED,
            FrameError::Busy => code::BUSY,
            FrameError::Empty(_) | FrameError::Decode(_) | FrameError::Encode(_) => {
                code::DECODE_ERROR
            }
        }
    }
}

impl From<BoundedError> for FrameError {
    fn from(e: BoundedError) -> Self {
        FrameError::Decode(e.to_string())
    }
}

/// Writes the frame header of `buf` (which starts with [`HEADER_LEN`] placeholder bytes): its
/// length and `kind`; fails if the frame exceeds `max_frame_size`.
fn seal(mut buf: BytesMut, kind: u8, max_frame_size: u32) -> Result<Bytes, FrameError> {
    let len = (buf.len() - 4) as u64;
    if len > u64::from(max_frame_size) {
        return Err(FrameError::TooLarge { len, max: max_frame_size });
    }
    // `len <= max_frame_size`, a u32, so the cast is lossless.
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    buf[4] = kind;
    Ok(buf.freeze())
}

/// A frame of `kind`: the header, `prefix` (a sender or position header), the postcard body.
fn encode_with<T: Serialize>(
    message: &T,
    kind: u8,
    prefix: &[u8],
    max_frame_size: u32,
) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(256).writer();
    out.get_mut().put_bytes(0, HEADER_LEN);
    out.get_mut().put_slice(prefix);
    let out = postcard::to_io(message, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    seal(out.into_inner(), kind, max_frame_size)
}

/// Encodes `message` as one complete frame (header and body): a response frame.
///
/// Fails with [`FrameError::TooLarge`] if the frame would exceed `max_frame_size`, so a sender
/// never emits a frame its peer (configured alike) would refuse.
pub fn encode<T: Serialize>(message: &T, max_frame_size: u32) -> Result<Bytes, FrameError> {
    encode_with(message, PROTOCOL_VERSION, &[], max_frame_size)
}

/// Encodes `request` as one complete request frame: header, sender header, body.
pub fn encode_request(request: &Envelope, max_frame_size: u32) -> Result<Bytes, FrameError> {
    let sender = request.request.sender().to_be_bytes();
    encode_with(request, PROTOCOL_VERSION, &sender, max_frame_size)
}

/// Encodes `requests` (at least one, at most [`MAX_BATCH_REQUESTS`]) as one batch frame: the
/// header, their count, then each one's request frame. Fails as [`encode_request`] does if the
/// batch exceeds `max_frame_size`, or with [`FrameError::Encode`] for a count out of range.
pub fn encode_batch<'a>(
    requests: impl ExactSizeIterator<Item = &'a Envelope>,
    max_frame_size: u32,
) -> Result<Bytes, FrameError> {
    let count = requests.len();
    if count == 0 || count > MAX_BATCH_REQUESTS {
        return Err(FrameError::Encode(format!("a batch of {count} requests")));
    }
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_bytes(0, HEADER_LEN);
    // `count <= MAX_BATCH_REQUESTS`, which fits a u16.
    buf.put_u16(count as u16);
    for request in requests {
        buf.put_slice(&encode_request(request, max_frame_size)?);
    }
    seal(buf, BATCH_KIND, max_frame_size)
}

/// Encodes the answer to the request at `position` of a batch.
pub fn encode_answer<T: Serialize>(
    position: u16,
    answer: &T,
    max_frame_size: u32,
) -> Result<Bytes, FrameError> {
    encode_with(answer, BATCH_KIND, &position.to_be_bytes(), max_frame_size)
}

/// The size of `request`'s frame (header, sender header, body), as [`encode_request`] would
/// make it, computed without encoding it; fails as `encode_request` would if it exceeds
/// `max_frame_size`.
pub(crate) fn request_len(request: &Envelope, max_frame_size: u32) -> Result<usize, FrameError> {
    let body = postcard::serialize_with_flavor(request, postcard::ser_flavors::Size::default())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let frame = HEADER_LEN + SENDER_LEN + body;
    let len = (frame - 4) as u64;
    if len > u64::from(max_frame_size) {
        return Err(FrameError::TooLarge { len, max: max_frame_size });
    }
    Ok(frame)
}

/// Validates the header of a lone message's frame and returns the length of what follows it.
///
/// Checks, in order: the length holds at least the version byte, the length is within
/// `max_frame_size`, and the version is [`PROTOCOL_VERSION`] (a batch's kind byte is not).
pub fn decode_header(header: [u8; HEADER_LEN], max_frame_size: u32) -> Result<usize, FrameError> {
    match decode_any_header(header, max_frame_size)? {
        (FrameKind::Single, len) => Ok(len),
        // Not a version of a lone message.
        (FrameKind::Batch, _) => Err(FrameError::UnsupportedVersion(BATCH_KIND)),
    }
}

/// What a frame header announces: one message, or a batch (or a batch's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A request or a response: the kind byte is [`PROTOCOL_VERSION`].
    Single,
    /// A batch of requests, or an answer on a batch's stream: the kind byte is [`BATCH_KIND`].
    Batch,
}

/// Validates a frame header of either kind (see [`decode_header`]) and returns its kind and the
/// length of what follows it.
pub fn decode_any_header(
    header: [u8; HEADER_LEN],
    max_frame_size: u32,
) -> Result<(FrameKind, usize), FrameError> {
    let [a, b, c, d, kind] = header;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len == 0 {
        return Err(FrameError::Empty(len));
    }
    if len > max_frame_size {
        return Err(FrameError::TooLarge { len: u64::from(len), max: max_frame_size });
    }
    let kind = match kind {
        PROTOCOL_VERSION => FrameKind::Single,
        BATCH_KIND => FrameKind::Batch,
        other => return Err(FrameError::UnsupportedVersion(other)),
    };
    Ok((kind, len as usize - 1))
}

/// Decodes a frame body: the whole of `body` must be one postcard-encoded `T`, within `limits`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8], limits: Limits) -> Result<T, FrameError> {
    Ok(bounded::from_slice(body, limits)?)
}

/// Decodes one response frame from the start of `input` and returns the message and the number
/// of bytes consumed. Never panics, whatever `input` holds.
pub fn decode<T: DeserializeOwned>(
    input: &[u8],
    max_frame_size: u32,
    limits: Limits,
) -> Result<(T, usize), FrameError> {
    let (body, need) = split_frame(input, max_frame_size)?;
    Ok((decode_body(body, limits)?, need))
}

/// Decodes one request frame from the start of `input`: the sender of its header, the request
/// (whose own sender must be the same), and the number of bytes consumed.
pub fn decode_request(
    input: &[u8],
    max_frame_size: u32,
    limits: Limits,
) -> Result<(NodeId, Envelope, usize), FrameError> {
    let (rest, need) = split_frame(input, max_frame_size)?;
    let (sender, body) = split_sender(rest)?;
    let request = request_body(sender, body, limits, &|| true)?;
    Ok((sender, request, need))
}

/// Decodes one batch frame from the start of `input`: every request's claimed sender and
/// request, in order, and the number of bytes consumed. (A receiver checks each sender before
/// decoding its request: [`split_batch`].)
pub fn decode_batch(
    input: &[u8],
    max_frame_size: u32,
    limits: Limits,
) -> Result<(Vec<(NodeId, Envelope)>, usize), FrameError> {
    let (rest, need) = split_any_frame(input, max_frame_size, FrameKind::Batch)?;
    let requests = split_batch(rest, max_frame_size)?
        .into_iter()
        .map(|(sender, body)| Ok((sender, request_body(sender, body, limits, &|| true)?)))
        .collect::<Result<_, FrameError>>()?;
    Ok((requests, need))
}

/// Decodes one answer frame (of a batch's stream) from the start of `input`: the position of
/// the request it answers, the answer, and the number of bytes consumed.
pub fn decode_answer<T: DeserializeOwned>(
    input: &[u8],
    max_frame_size: u32,
    limits: Limits,
) -> Result<(u16, T, usize), FrameError> {
    let (rest, need) = split_any_frame(input, max_frame_size, FrameKind::Batch)?;
    let (position, body) = split_position(rest)?;
    Ok((position, decode_body(body, limits)?, need))
}

/// Splits the body of a batch frame (what follows its header) into its requests: each one's
/// claimed sender and undecoded body, in order. Checks the count (1 to
/// [`MAX_BATCH_REQUESTS`]), each request frame's header, and that nothing follows the last.
pub fn split_batch(body: &[u8], max_frame_size: u32) -> Result<Vec<(NodeId, &[u8])>, FrameError> {
    let Some((count, mut rest)) = body.split_first_chunk::<BATCH_COUNT_LEN>() else {
        return Err(FrameError::Empty(body.len() as u32 + 1));
    };
    let count = usize::from(u16::from_be_bytes(*count));
    if count == 0 || count > MAX_BATCH_REQUESTS {
        return Err(FrameError::Decode(format!(
            "a batch announces {count} requests (1 to {MAX_BATCH_REQUESTS} allowed)"
        )));
    }
    let mut requests = Vec::with_capacity(count.min(rest.len() / (HEADER_LEN + SENDER_LEN) + 1));
    for _ in 0..count {
        let (frame, used) = split_frame(rest, max_frame_size)?;
        requests.push(split_sender(frame)?);
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!("{} bytes after a batch's requests", rest.len())));
    }
    Ok(requests)
}

fn split_position(rest: &[u8]) -> Result<(u16, &[u8]), FrameError> {
    match rest.split_first_chunk::<POSITION_LEN>() {
        Some((position, body)) => Ok((u16::from_be_bytes(*position), body)),
        None => Err(FrameError::Empty(rest.len() as u32 + 1)),
    }
}

fn split_frame(input: &[u8], max_frame_size: u32) -> Result<(&[u8], usize), FrameError> {
    split_any_frame(input, max_frame_size, FrameKind::Single)
}

fn split_any_frame(
    input: &[u8],
    max_frame_size: u32,
    expected: FrameKind,
) -> Result<(&[u8], usize), FrameError> {
    let Some(header) = input.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated { have: input.len(), need: HEADER_LEN });
    };
    let (kind, body_len) = decode_any_header(*header, max_frame_size)?;
    if kind != expected {
        return Err(match kind {
            FrameKind::Batch => FrameError::UnsupportedVersion(BATCH_KIND),
            FrameKind::Single => {
                FrameError::Decode("a lone message where a batch's was due".into())
            }
        });
    }
    let need = HEADER_LEN + body_len;
    let Some(body) = input.get(HEADER_LEN..need) else {
        return Err(FrameError::Truncated { have: input.len(), need });
    };
    Ok((body, need))
}

fn split_sender(rest: &[u8]) -> Result<(NodeId, &[u8]), FrameError> {
    match rest.split_first_chunk::<SENDER_LEN>() {
        Some((sender, body)) => Ok((u64::from_be_bytes(*sender), body)),
        None => Err(FrameError::Empty(rest.len() as u32 + 1)),
    }
}

/// Decodes a request body announced by `sender`, charging `on_item` for every sequence
/// element (it returns false when the element does not fit the receiver's memory budget).
pub(crate) fn request_body(
    sender: NodeId,
    body: &[u8],
    limits: Limits,
    on_item: &dyn Fn() -> bool,
) -> Result<Envelope, FrameError> {
    let request: Envelope =
        bounded::from_slice_metered(body, limits, on_item).map_err(|e| match e {
            BoundedError::OverBudget => FrameError::Busy,
            other => other.into(),
        })?;
    if request.request.sender() != sender {
        return Err(FrameError::Decode(format!(
            "the request names sender {} but its header {sender}",
            request.request.sender()
        )));
    }
    Ok(request)
}

/// Why reading a frame from a QUIC stream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The bytes received are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed (reset by the peer, connection lost).
    #[error("stream error: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads exactly `out.len()` bytes, or reports how many arrived before the stream ended.
async fn read_exact(
    recv: &mut quinn::RecvStream,
    out: &mut [u8],
    frame_len: usize,
    offset: usize,
) -> Result<(), ReadFrameError> {
    let mut have = 0;
    while have < out.len() {
        match recv.read(&mut out[have..]).await? {
            Some(n) => have += n,
            None => {
                return Err(FrameError::Truncated { have: offset + have, need: frame_len }.into())
            }
        }
    }
    Ok(())
}

/// Reads a frame header from `recv`, not yet checked.
pub(crate) async fn read_raw_header(
    recv: &mut quinn::RecvStream,
) -> Result<[u8; HEADER_LEN], ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(recv, &mut header, HEADER_LEN, 0).await?;
    Ok(header)
}

/// Whether `header` announces a batch (or an answer on a batch's stream): its kind byte is
/// [`BATCH_KIND`], whether or not the rest of the header is valid.
pub(crate) fn announces_batch(header: &[u8; HEADER_LEN]) -> bool {
    header[HEADER_LEN - 1] == BATCH_KIND
}

/// Reads a frame header from `recv` and returns the length of what follows it.
pub(crate) async fn read_header(
    recv: &mut quinn::RecvStream,
    max_frame_size: u32,
) -> Result<usize, ReadFrameError> {
    Ok(decode_header(read_raw_header(recv).await?, max_frame_size)?)
}

/// An answer frame read from a batch's stream: the position it answers, its body decoded (or
/// why not; `None`: the position was not awaited and the body was skipped, not decoded), the
/// frame's size.
pub(crate) type ReadAnswer<T> = (u16, Option<Result<T, FrameError>>, usize);

/// Reads the next answer frame of a batch's stream: the position it answers, the answer and the
/// frame's size; `None` once the stream ended cleanly between frames. The body is decoded
/// within `limits` only if `awaited` says the position is; otherwise it is read and dropped
/// (the inner `None`), so a peer's answers for positions nobody awaits cost no decoding. An
/// answer whose frame was read whole but whose body does not decode is the inner `Err`: the
/// stream is still in step (the next frame starts after it), so only that position's caller
/// fails. The outer `Err` means the framing itself broke (a bad header, a truncated frame, a
/// failed stream): nothing after it can be read.
pub(crate) async fn read_answer<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_frame_size: u32,
    limits: Limits,
    awaited: impl FnOnce(u16) -> bool,
) -> Result<Option<ReadAnswer<T>>, ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    let first = loop {
        match recv.read(&mut header).await? {
            None => return Ok(None),
            Some(0) => continue,
            Some(n) => break n,
        }
    };
    read_exact(recv, &mut header[first..], HEADER_LEN, first).await?;
    let len = match decode_any_header(header, max_frame_size)? {
        (FrameKind::Batch, len) => len,
        (FrameKind::Single, _) => {
            return Err(FrameError::Decode("a lone response on a batch's stream".into()).into())
        }
    };
    let Some(body_len) = len.checked_sub(POSITION_LEN) else {
        return Err(FrameError::Empty(len as u32 + 1).into());
    };
    let mut position = [0u8; POSITION_LEN];
    read_exact(recv, &mut position, HEADER_LEN + len, HEADER_LEN).await?;
    let position = u16::from_be_bytes(position);
    let answer = if awaited(position) {
        Some(decode_body(&read_body(recv, body_len).await?, limits))
    } else {
        skip_body(recv, body_len).await?;
        None
    };
    Ok(Some((position, answer, HEADER_LEN + len)))
}

/// Reads `body_len` bytes of body from `recv` and drops them as they come (nothing is kept).
async fn skip_body(recv: &mut quinn::RecvStream, body_len: usize) -> Result<(), ReadFrameError> {
    let mut have = 0;
    while have < body_len {
        match recv.read_chunk(body_len - have, true).await? {
            Some(chunk) => have += chunk.bytes.len(),
            None => return Err(FrameError::Truncated { have, need: body_len }.into()),
        }
    }
    Ok(())
}

/// Reads a request's sender header, given the `len` announced by the frame header; returns the
/// sender and the length of the body after it.
pub(crate) async fn read_sender(
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<(NodeId, usize), ReadFrameError> {
    let Some(body_len) = len.checked_sub(SENDER_LEN) else {
        return Err(FrameError::Empty(len as u32 + 1).into());
    };
    let mut sender = [0u8; SENDER_LEN];
    read_exact(recv, &mut sender, HEADER_LEN + len, HEADER_LEN).await?;
    Ok((u64::from_be_bytes(sender), body_len))
}

/// Reads `body_len` bytes of body from `recv`. Memory grows only as bytes arrive.
pub(crate) async fn read_body(
    recv: &mut quinn::RecvStream,
    body_len: usize,
) -> Result<Vec<u8>, ReadFrameError> {
    let mut body = Vec::with_capacity(body_len.min(INITIAL_BODY_CAPACITY));
    while body.len() < body_len {
        match recv.read_chunk(body_len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => {
                let (have, need) = (body.len(), body_len);
                return Err(FrameError::Truncated { have, need }.into());
            }
        }
    }
    Ok(body)
}

/// Reads one response frame from `recv` and decodes its body within `limits`; returns it and
/// the frame's size in bytes (header included).
pub(crate) async fn read_sized<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_frame_size: u32,
    limits: Limits,
) -> Result<(T, usize), ReadFrameError> {
    let body_len = read_header(recv, max_frame_size).await?;
    let body = read_body(recv, body_len).await?;
    Ok((decode_body(&body, limits)?, HEADER_LEN + body_len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use raft_core::{AppendEntriesRequest, Entry, EntryPayload, LogId, RpcRequest};

    use super::*;
    use crate::wire::{Refusal, WireResponse};

    const LIMITS: Limits = Limits { max_items: 1 << 18, max_depth: MAX_DEPTH };

    #[test]
    fn round_trip() {
        let msg = WireResponse::Refused(Refusal::Handler(raft_core::RpcError::WrongCluster {
            sender_cluster: 1,
            receiver_cluster: 2,
        }));
        let frame = encode(&msg, 1 << 20).unwrap();
        assert_eq!(frame[4], PROTOCOL_VERSION);
        let (back, used) = decode::<WireResponse>(&frame, 1 << 20, LIMITS).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
    }

    fn append(leader: NodeId, entries: usize) -> Envelope {
        let request = RpcRequest::AppendEntries(AppendEntriesRequest {
            term: 3,
            leader_id: leader,
            prev_log_id: LogId::new(1, 1),
            entries: (0..entries as u64)
                .map(|i| Entry { index: 2 + i, term: 3, payload: EntryPayload::Blank })
                .collect(),
            leader_commit: 1,
            read_round: 0,
            quiesce: false,
        });
        Envelope::new(9, request).with_cluster_id(5)
    }

    #[test]
    fn request_frames_carry_their_sender_in_a_header() {
        let request = append(7, 3);
        let frame = encode_request(&request, 1 << 20).unwrap();
        assert_eq!(&frame[HEADER_LEN..HEADER_LEN + SENDER_LEN], &7u64.to_be_bytes());
        let (sender, back, used) = decode_request(&frame, 1 << 20, LIMITS).unwrap();
        assert_eq!((sender, back, used), (7, request, frame.len()));
        // A header that names someone else than the body is refused.
        let mut lying = frame.to_vec();
        lying[HEADER_LEN + SENDER_LEN - 1] = 8;
        assert!(matches!(decode_request(&lying, 1 << 20, LIMITS), Err(FrameError::Decode(_))));
    }

    /// The size a bulk request waits room for is the size of the frame it sends.
    #[test]
    fn request_len_is_the_encoded_frame_length() {
        for entries in [0, 1, 300, 70_000] {
            let request = append(7, entries);
            let frame = encode_request(&request, 1 << 20).unwrap();
            assert_eq!(request_len(&request, 1 << 20).unwrap(), frame.len(), "{entries}");
            let max = (frame.len() - 5) as u32;
            assert!(request_len(&request, max).is_err(), "{entries}: over the maximum");
            assert!(encode_request(&request, max).is_err());
        }
    }

    #[test]
    fn a_frame_of_blank_entries_decodes_only_within_the_element_budget() {
        // ~16 MiB of blank entries would be ~5.6 million entries; a budget of 1,000 stops it
        // after 1,000 (and any frame of more entries than the budget is refused).
        let frame = encode_request(&append(1, 100_000), 16 << 20).unwrap();
        let small = Limits { max_items: 1_000, max_depth: MAX_DEPTH };
        let error = decode_request(&frame, 16 << 20, small).unwrap_err();
        assert!(error.to_string().contains("more than 1000 sequence elements"), "{error}");
        assert!(decode_request(&frame, 16 << 20, LIMITS).is_ok());
    }

    #[test]
    fn header_checks() {
        assert_eq!(decode_header([0, 0, 0, 0, 1], 100), Err(FrameError::Empty(0)));
        assert!(matches!(decode_header([0, 0, 0, 101, 1], 100), Err(FrameError::TooLarge { .. })));
        assert_eq!(decode_header([0, 0, 0, 10, 9], 100), Err(FrameError::UnsupportedVersion(9)));
        assert_eq!(decode_header([0, 0, 0, 10, PROTOCOL_VERSION], 100), Ok(9));
        // A frame of version 3 (requests without an envelope) is refused with its version named.
        let old = decode_header([0, 0, 0, 10, 3], 100).unwrap_err();
        assert_eq!(old, FrameError::UnsupportedVersion(3));
        let speaks =
            format!("unsupported protocol version 3 (this node speaks {PROTOCOL_VERSION})");
        assert_eq!(old.to_string(), speaks);
    }

    #[test]
    fn oversized_encode_is_refused() {
        let msg = WireResponse::Refused(Refusal::RemovedNode(u64::MAX));
        assert!(matches!(encode(&msg, 5), Err(FrameError::TooLarge { .. })));
        let msg =
            WireResponse::Ok(raft_core::RpcResponse::ReadIndex(raft_core::ReadIndexResponse {
                term: 1,
                read_index: None,
                leader_id: None,
            }));
        assert!(matches!(encode(&msg, 4), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let msg = WireResponse::Refused(Refusal::NotServing);
        let mut frame = encode(&msg, 1024).unwrap().to_vec();
        frame.push(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode::<WireResponse>(&frame, 1024, LIMITS), Err(FrameError::Decode(_))));
    }

    /// Every response a node can send, with every integer at its maximum and the longest
    /// refusal reason, fits [`MAX_RESPONSE_FRAME_SIZE`] many times over, as an answer of a
    /// batch too (a new `RpcResponse` or `Refusal` variant belongs here as well:
    /// `tests/wire_golden.rs` fails until it is added there).
    #[test]
    fn the_largest_responses_fit_the_response_frame_maximum_with_room() {
        use crate::wire::MAX_REASON_LEN;
        use raft_core::{
            AppendEntriesResponse, ConflictHint, InstallSnapshotResponse, ReadIndexResponse,
            RequestVoteResponse, RpcError, RpcResponse, SnapshotRefusal, TimeoutNowResponse,
        };

        const MAX: u64 = u64::MAX;
        let responses = [
            RpcResponse::RequestVote(RequestVoteResponse {
                term: MAX,
                vote_granted: true,
                pre_vote: true,
            }),
            RpcResponse::AppendEntries(AppendEntriesResponse {
                term: MAX,
                match_index: Some(MAX),
                conflict: Some(ConflictHint {
                    conflict_term: MAX,
                    first_index_of_term: MAX,
                    last_log_index: MAX,
                }),
                lease_promise_ms: MAX,
                quiesced: true,
            }),
            RpcResponse::TimeoutNow(TimeoutNowResponse { term: MAX }),
            RpcResponse::InstallSnapshot(InstallSnapshotResponse {
                term: MAX,
                next_offset: MAX,
                complete: true,
                refusal: Some(SnapshotRefusal::Malformed),
            }),
            RpcResponse::ReadIndex(ReadIndexResponse {
                term: MAX,
                read_index: Some(MAX),
                leader_id: Some(MAX),
            }),
        ];
        let mut largest_ok = 0;
        for response in responses {
            let frame = encode(&WireResponse::Ok(response), MAX_RESPONSE_FRAME_SIZE).unwrap();
            largest_ok = largest_ok.max(frame.len() - 4);
        }
        assert!(largest_ok < 80, "{largest_ok} bytes");
        let refusals = [
            Refusal::NotServing,
            Refusal::SenderMismatch { claimed: MAX, authenticated: MAX },
            Refusal::Handler(RpcError::WrongNode { expected: MAX, actual: MAX }),
            Refusal::Handler(RpcError::WrongCluster { sender_cluster: MAX, receiver_cluster: MAX }),
            Refusal::Handler(RpcError::WrongGroup { sender_group: MAX, receiver_group: MAX }),
            Refusal::Handler(RpcError::UnknownGroup { group: MAX }),
            Refusal::Handler(RpcError::Overloaded { group: MAX, limit: MAX }),
            Refusal::RemovedNode(MAX),
            Refusal::malformed("x".repeat(10 * MAX_REASON_LEN)),
            Refusal::Busy,
        ];
        let mut largest = largest_ok;
        for refusal in refusals {
            let response = WireResponse::Refused(refusal);
            let frame = encode_answer(u16::MAX, &response, MAX_RESPONSE_FRAME_SIZE).unwrap();
            largest = largest.max(frame.len() - 4);
        }
        // The longest reason: its bytes, its length, two tags, an answer's position.
        assert_eq!(largest, MAX_REASON_LEN + 2 + 2 + 1 + POSITION_LEN);
        assert!(largest * 15 <= MAX_RESPONSE_FRAME_SIZE as usize, "{largest} bytes");
    }
}
