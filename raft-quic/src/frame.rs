//! Length-prefixed, versioned frames.
//!
//! ```text
//! +----------------+-----------+----------------------------+
//! | length: u32 BE | version:u8 | postcard body (length - 1) |
//! +----------------+-----------+----------------------------+
//! ```
//!
//! `length` counts the version byte and the body. A receiver checks `length` against its maximum
//! frame size and the version against [`PROTOCOL_VERSION`] *before* it reads or allocates the
//! body, and then grows its buffer only as bytes actually arrive, so a peer cannot make it
//! reserve memory it does not send. A body must decode completely: trailing bytes are an error.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{code, PROTOCOL_VERSION};

/// The size of the frame header: the `u32` length and the version byte.
pub const HEADER_LEN: usize = 5;

/// The smallest maximum frame size a configuration may set (room for any vote or heartbeat).
pub const MIN_MAX_FRAME_SIZE: u32 = 1024;

/// How many body bytes are reserved up front, at most, before any of them arrived.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

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
    /// The frame announced a length of zero, which cannot hold the version byte.
    #[error("frame announces an empty body without a version byte")]
    Empty,
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
    /// The body is not a valid postcard encoding of the expected message.
    #[error("frame body does not decode: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl FrameError {
    /// The QUIC application error code used to close the stream that carried the bad frame.
    pub(crate) fn code(&self) -> quinn::VarInt {
        match self {
            FrameError::TooLarge { .. } => code::FRAME_TOO_LARGE,
            FrameError::UnsupportedVersion(_) => code::UNSUPPORTED_VERSION,
            FrameError::Truncated { .. } => code::TRUNCATED,
            FrameError::Empty | FrameError::Decode(_) | FrameError::Encode(_) => code::DECODE_ERROR,
        }
    }
}

/// Encodes `message` as one complete frame (header and body).
///
/// Fails with [`FrameError::TooLarge`] if the frame would exceed `max_frame_size`, so a sender
/// never emits a frame its peer (configured alike) would refuse.
pub fn encode<T: Serialize>(message: &T, max_frame_size: u32) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(256).writer();
    out.get_mut().put_bytes(0, HEADER_LEN);
    let out = postcard::to_io(message, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let mut buf = out.into_inner();
    let len = (buf.len() - 4) as u64;
    if len > u64::from(max_frame_size) {
        return Err(FrameError::TooLarge { len, max: max_frame_size });
    }
    // `len <= max_frame_size`, a u32, so the cast is lossless.
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    buf[4] = PROTOCOL_VERSION;
    Ok(buf.freeze())
}

/// Validates a frame header and returns the length of the body that follows it.
///
/// Checks, in order: the length holds at least the version byte, the length is within
/// `max_frame_size`, and the version is [`PROTOCOL_VERSION`].
pub fn decode_header(header: [u8; HEADER_LEN], max_frame_size: u32) -> Result<usize, FrameError> {
    let [a, b, c, d, version] = header;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame_size {
        return Err(FrameError::TooLarge { len: u64::from(len), max: max_frame_size });
    }
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    Ok(len as usize - 1)
}

/// Decodes a frame body: the whole of `body` must be one postcard-encoded `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!("{} trailing bytes after the message", rest.len())));
    }
    Ok(message)
}

/// Decodes one frame from the start of `input` and returns the message and the number of bytes
/// consumed. Never panics, whatever `input` holds.
pub fn decode<T: DeserializeOwned>(
    input: &[u8],
    max_frame_size: u32,
) -> Result<(T, usize), FrameError> {
    let Some(header) = input.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated { have: input.len(), need: HEADER_LEN });
    };
    let body_len = decode_header(*header, max_frame_size)?;
    let need = HEADER_LEN + body_len;
    let Some(body) = input.get(HEADER_LEN..need) else {
        return Err(FrameError::Truncated { have: input.len(), need });
    };
    Ok((decode_body(body)?, need))
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

/// Reads one frame from `recv` and decodes its body.
///
/// Memory use is bounded by the bytes actually received, never by the announced length alone.
pub(crate) async fn read<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_frame_size: u32,
) -> Result<T, ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match recv.read(&mut header[have..]).await? {
            Some(n) => have += n,
            None => return Err(FrameError::Truncated { have, need: HEADER_LEN }.into()),
        }
    }
    let body_len = decode_header(header, max_frame_size)?;
    let mut body = Vec::with_capacity(body_len.min(INITIAL_BODY_CAPACITY));
    while body.len() < body_len {
        match recv.read_chunk(body_len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => {
                let have = HEADER_LEN + body.len();
                return Err(FrameError::Truncated { have, need: HEADER_LEN + body_len }.into());
            }
        }
    }
    Ok(decode_body(&body)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::wire::{Refusal, WireResponse};

    #[test]
    fn round_trip() {
        let msg = WireResponse::Refused(Refusal::Handler("x".into()));
        let frame = encode(&msg, 1 << 20).unwrap();
        assert_eq!(frame[4], PROTOCOL_VERSION);
        let (back, used) = decode::<WireResponse>(&frame, 1 << 20).unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
    }

    #[test]
    fn header_checks() {
        assert_eq!(decode_header([0, 0, 0, 0, 1], 100), Err(FrameError::Empty));
        assert!(matches!(decode_header([0, 0, 0, 101, 1], 100), Err(FrameError::TooLarge { .. })));
        assert_eq!(decode_header([0, 0, 0, 10, 9], 100), Err(FrameError::UnsupportedVersion(9)));
        assert_eq!(decode_header([0, 0, 0, 10, PROTOCOL_VERSION], 100), Ok(9));
    }

    #[test]
    fn oversized_encode_is_refused() {
        let msg = WireResponse::Refused(Refusal::Handler("y".repeat(2000)));
        assert!(matches!(encode(&msg, 1024), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let msg = WireResponse::Refused(Refusal::NotServing);
        let mut frame = encode(&msg, 1024).unwrap().to_vec();
        frame.push(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode::<WireResponse>(&frame, 1024), Err(FrameError::Decode(_))));
    }
}
