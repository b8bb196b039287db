//! Property tests of the frame codec: arbitrary input never panics the decoder, valid frames
//! round-trip, and every truncation or size violation is reported as such.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::{
    AppendEntriesRequest, Entry, EntryPayload, Envelope, LogId, RequestVoteRequest, RpcRequest,
    TimeoutNowRequest,
};
use raft_quic::bounded::Limits;
use raft_quic::frame::{self, FrameError, HEADER_LEN, SENDER_LEN};
use raft_quic::{WireResponse, PROTOCOL_VERSION};

const MAX: u32 = 1 << 16;
const LIMITS: Limits = Limits { max_items: 1 << 16, max_depth: frame::MAX_DEPTH };

fn log_id() -> impl Strategy<Value = LogId> {
    (any::<u64>(), any::<u64>()).prop_map(|(term, index)| LogId::new(term, index))
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| EntryPayload::Command(Bytes::from(b))),
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(index, term, payload)| Entry {
        index,
        term,
        payload,
    })
}

fn request() -> impl Strategy<Value = Envelope> {
    (any::<u64>(), any::<u64>(), any::<u64>(), rpc_request()).prop_map(
        |(cluster, group, receiver, request)| {
            Envelope::new(receiver, request).with_cluster_id(cluster).with_group_id(group)
        },
    )
}

fn rpc_request() -> impl Strategy<Value = RpcRequest> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), log_id(), any::<bool>(), any::<bool>()).prop_map(
            |(term, candidate_id, last_log_id, pre_vote, leadership_transfer)| {
                RpcRequest::RequestVote(RequestVoteRequest {
                    term,
                    candidate_id,
                    last_log_id,
                    pre_vote,
                    leadership_transfer,
                })
            }
        ),
        (
            any::<u64>(),
            any::<u64>(),
            log_id(),
            proptest::collection::vec(entry(), 0..8),
            any::<u64>()
        )
            .prop_map(|(term, leader_id, prev_log_id, entries, leader_commit)| {
                RpcRequest::AppendEntries(AppendEntriesRequest {
                    term,
                    leader_id,
                    prev_log_id,
                    entries,
                    leader_commit,
                    read_round: leader_commit,
                    quiesce: false,
                })
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(term, leader_id)| RpcRequest::TimeoutNow(
            TimeoutNowRequest { term, leader_id }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Garbage never panics the decoder, whatever type it is decoded as.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((_, _, used)) = frame::decode_request(&bytes, MAX, LIMITS) {
            prop_assert!(used <= bytes.len());
        }
        let _ = frame::decode::<WireResponse>(&bytes, MAX, LIMITS);
    }

    /// Garbage behind a well-formed header (the decoder then reaches postcard) never panics.
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        bytes.push(PROTOCOL_VERSION);
        bytes.extend_from_slice(&body);
        match frame::decode_request(&bytes, MAX, LIMITS) {
            Ok((sender, request, used)) => {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(sender, request.request.sender());
            }
            Err(e) => prop_assert!(
                matches!(e, FrameError::Decode(_) | FrameError::Empty(_)),
                "{e:?}"
            ),
        }
    }

    /// Every request round-trips through a frame that names its sender in a header.
    #[test]
    fn requests_round_trip(request in request()) {
        let encoded = frame::encode_request(&request, MAX).unwrap();
        prop_assert_eq!(encoded[4], PROTOCOL_VERSION);
        prop_assert_eq!(
            u32::from_be_bytes(encoded[..4].try_into().unwrap()) as usize,
            encoded.len() - 4
        );
        let header: [u8; SENDER_LEN] =
            encoded[HEADER_LEN..HEADER_LEN + SENDER_LEN].try_into().unwrap();
        prop_assert_eq!(u64::from_be_bytes(header), request.request.sender());
        let (sender, decoded, used) = frame::decode_request(&encoded, MAX, LIMITS).unwrap();
        prop_assert_eq!(sender, request.request.sender());
        prop_assert_eq!(decoded, request);
        prop_assert_eq!(used, encoded.len());
    }

    /// A sender header that differs from the request's own sender is refused.
    #[test]
    fn lying_sender_headers_are_refused(request in request(), other in any::<u64>()) {
        prop_assume!(other != request.request.sender());
        let mut encoded = frame::encode_request(&request, MAX).unwrap().to_vec();
        encoded[HEADER_LEN..HEADER_LEN + SENDER_LEN].copy_from_slice(&other.to_be_bytes());
        let result = frame::decode_request(&encoded, MAX, LIMITS);
        prop_assert!(matches!(result, Err(FrameError::Decode(_))), "{result:?}");
    }

    /// Every strict prefix of a valid frame is reported as truncated.
    #[test]
    fn prefixes_are_truncated(request in request(), cut in any::<prop::sample::Index>()) {
        let encoded = frame::encode_request(&request, MAX).unwrap();
        let cut = cut.index(encoded.len());
        let result = frame::decode_request(&encoded[..cut], MAX, LIMITS);
        prop_assert!(matches!(result, Err(FrameError::Truncated { .. })), "{result:?}");
    }

    /// Flipping any byte of a valid frame never panics the decoder.
    #[test]
    fn corrupted_frames_never_panic(
        request in request(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let mut encoded = frame::encode_request(&request, MAX).unwrap().to_vec();
        let at = at.index(encoded.len());
        encoded[at] ^= xor;
        let _ = frame::decode_request(&encoded, MAX, LIMITS);
    }

    /// A header announcing more than the maximum is refused before the body is looked at,
    /// and one with another version likewise.
    #[test]
    fn header_limits(len in (MAX + 1).., version in any::<u8>()) {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4] = version;
        let too_large = matches!(
            frame::decode_header(header, MAX),
            Err(FrameError::TooLarge { .. })
        );
        prop_assert!(too_large);
        header[..4].copy_from_slice(&16u32.to_be_bytes());
        let result = frame::decode_header(header, MAX);
        if version == PROTOCOL_VERSION {
            prop_assert_eq!(result, Ok(15));
        } else {
            prop_assert_eq!(result, Err(FrameError::UnsupportedVersion(version)));
        }
    }
}
