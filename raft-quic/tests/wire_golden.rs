//! The wire version policy, enforced: the exact bytes of a frame of every request, response and
//! [`WireResponse`] variant (and of every variant nested in them) under the current
//! [`PROTOCOL_VERSION`]. postcard is not self-describing, so any change to these types changes
//! some bytes here: this test then fails until the version (and the ALPN) is bumped, the table
//! in `raft_quic::wire` says what changed, and the goldens below are replaced by the new
//! version's. A new variant of any of these enums gets a golden here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use raft_core::{
    AppendEntriesRequest, AppendEntriesResponse, ConflictHint, Entry, EntryPayload, Envelope,
    InstallSnapshotRequest, InstallSnapshotResponse, LogId, Membership, NodeInfo, ReadIndexRequest,
    ReadIndexResponse, RequestVoteRequest, RequestVoteResponse, RpcError, RpcRequest, RpcResponse,
    SnapshotMeta, SnapshotRefusal, TimeoutNowRequest, TimeoutNowResponse,
};
use raft_quic::bounded::Limits;
use raft_quic::frame::{decode, decode_request, encode, encode_request, MAX_DEPTH};
use raft_quic::{Refusal, WireResponse, ALPN, PROTOCOL_VERSION};

/// The version these goldens are the encoding of.
const GOLDEN_VERSION: u8 = 4;
const MAX: u32 = 1 << 20;
const LIMITS: Limits = Limits { max_items: 1 << 10, max_depth: MAX_DEPTH };

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A joint membership (voters {1, 2, 300} moving to {2, 300, 5}, learner 4) with metadata, so
/// that every field of it is on the wire.
fn membership() -> Membership {
    let info = |address: &str, data: &str| NodeInfo::new(address.to_owned(), data.to_owned());
    let nodes = BTreeMap::from([
        (1, info("a:1", "")),
        (2, info("", "b")),
        (4, info("d:4", "dd")),
        (5, NodeInfo::default()),
        (300, info("x", "y")),
    ]);
    let (voters, outgoing, learners) =
        (BTreeSet::from([2, 300, 5]), BTreeSet::from([1, 2, 300]), BTreeSet::from([4]));
    Membership::from_parts(voters, outgoing, learners, nodes).unwrap()
}

/// One request of each variant in its envelope, every field set to a distinct value (so that a
/// reordering of fields changes the bytes), with every entry payload variant.
fn requests() -> Vec<(&'static str, Envelope)> {
    rpc_requests()
        .into_iter()
        .enumerate()
        .map(|(i, (name, request))| {
            (
                name,
                Envelope::new(400 + i as u64, request)
                    .with_cluster_id(0xc1)
                    .with_group_id(17 + i as u64),
            )
        })
        .collect()
}

fn rpc_requests() -> Vec<(&'static str, RpcRequest)> {
    let entries = vec![
        Entry { index: 11, term: 5, payload: EntryPayload::Blank },
        Entry { index: 12, term: 5, payload: EntryPayload::Command(Bytes::from_static(b"put")) },
        Entry { index: 13, term: 6, payload: EntryPayload::Membership(membership()) },
    ];
    vec![
        (
            "RequestVote",
            RpcRequest::RequestVote(RequestVoteRequest {
                term: 7,
                candidate_id: 2,
                last_log_id: LogId::new(6, 13),
                pre_vote: true,
                leadership_transfer: false,
            }),
        ),
        (
            "AppendEntries",
            RpcRequest::AppendEntries(AppendEntriesRequest {
                term: 6,
                leader_id: 3,
                prev_log_id: LogId::new(4, 10),
                entries,
                leader_commit: 9,
                read_round: 1000,
                quiesce: true,
            }),
        ),
        ("TimeoutNow", RpcRequest::TimeoutNow(TimeoutNowRequest { term: 8, leader_id: 4 })),
        (
            "InstallSnapshot",
            RpcRequest::InstallSnapshot(InstallSnapshotRequest {
                term: 9,
                leader_id: 5,
                meta: SnapshotMeta {
                    last_included: LogId::new(8, 200),
                    membership: membership(),
                    size: 4096,
                    checksum: 0x0123_4567_89ab_cdef,
                },
                offset: 1024,
                data: Bytes::from_static(b"chunk"),
                done: true,
            }),
        ),
        ("ReadIndex", RpcRequest::ReadIndex(ReadIndexRequest { term: 10, sender: 6, read_id: 77 })),
    ]
}

/// One response of each variant (and each `SnapshotRefusal`), fields distinct.
fn responses() -> Vec<(&'static str, RpcResponse)> {
    let snapshot = |refusal| {
        RpcResponse::InstallSnapshot(InstallSnapshotResponse {
            term: 9,
            next_offset: 2048,
            complete: false,
            refusal,
        })
    };
    vec![
        (
            "RequestVote",
            RpcResponse::RequestVote(RequestVoteResponse {
                term: 7,
                vote_granted: true,
                pre_vote: false,
            }),
        ),
        (
            "AppendEntries",
            RpcResponse::AppendEntries(AppendEntriesResponse {
                term: 6,
                match_index: None,
                conflict: Some(ConflictHint {
                    conflict_term: 4,
                    first_index_of_term: 8,
                    last_log_index: 12,
                }),
                lease_promise_ms: 0,
                quiesced: false,
            }),
        ),
        (
            "AppendEntries(match)",
            RpcResponse::AppendEntries(AppendEntriesResponse {
                term: 6,
                match_index: Some(13),
                conflict: None,
                lease_promise_ms: 1_500,
                quiesced: true,
            }),
        ),
        ("TimeoutNow", RpcResponse::TimeoutNow(TimeoutNowResponse { term: 8 })),
        ("InstallSnapshot", snapshot(None)),
        ("InstallSnapshot(Unsupported)", snapshot(Some(SnapshotRefusal::Unsupported))),
        ("InstallSnapshot(ChecksumMismatch)", snapshot(Some(SnapshotRefusal::ChecksumMismatch))),
        ("InstallSnapshot(Malformed)", snapshot(Some(SnapshotRefusal::Malformed))),
        (
            "ReadIndex",
            RpcResponse::ReadIndex(ReadIndexResponse {
                term: 10,
                read_index: Some(300),
                leader_id: Some(3),
            }),
        ),
    ]
}

/// Every refusal of the response envelope.
fn refusals() -> Vec<(&'static str, WireResponse)> {
    vec![
        ("NotServing", WireResponse::Refused(Refusal::NotServing)),
        (
            "SenderMismatch",
            WireResponse::Refused(Refusal::SenderMismatch { claimed: 9, authenticated: 2 }),
        ),
        ("Handler(Shutdown)", WireResponse::Refused(Refusal::Handler(RpcError::Shutdown))),
        (
            "Handler(WrongNode)",
            WireResponse::Refused(Refusal::Handler(RpcError::WrongNode { expected: 3, actual: 4 })),
        ),
        (
            "Handler(WrongCluster)",
            WireResponse::Refused(Refusal::Handler(RpcError::WrongCluster {
                sender_cluster: 5,
                receiver_cluster: 6,
            })),
        ),
        (
            "Handler(WrongGroup)",
            WireResponse::Refused(Refusal::Handler(RpcError::WrongGroup {
                sender_group: 7,
                receiver_group: 8,
            })),
        ),
        (
            "Handler(UnknownGroup)",
            WireResponse::Refused(Refusal::Handler(RpcError::UnknownGroup { group: 9 })),
        ),
        (
            "Handler(Overloaded)",
            WireResponse::Refused(Refusal::Handler(RpcError::Overloaded { group: 9, limit: 64 })),
        ),
        ("RemovedNode", WireResponse::Refused(Refusal::RemovedNode(5))),
        ("Malformed", WireResponse::Refused(Refusal::Malformed("bad".into()))),
        ("Busy", WireResponse::Refused(Refusal::Busy)),
    ]
}

/// The golden frames of version [`GOLDEN_VERSION`], by name: requests (`u32 length | version |
/// u64 sender | envelope`), then `WireResponse::Ok` of each response, then each refusal.
const GOLDEN: &[(&str, &str)] = &[
    ("request RequestVote", "00000015040000000000000002c101119003000702060d0100"),
    ("request AppendEntries", "0000004e040000000000000003c101129103010603040a030b05000c0501037075740d060300030205ac02030102ac020104050103613a3100020001620403643a34026464050000ac020178017909e80701"),
    ("request TimeoutNow", "00000011040000000000000004c101139203020804"),
    ("request InstallSnapshot", "00000051040000000000000005c10114930303090508c80100030205ac02030102ac020104050103613a3100020001620403643a34026464050000ac02017801798020ef9bafcdf8acd191018008056368756e6b01"),
    ("request ReadIndex", "00000012040000000000000006c101159403040a064d"),
    ("response RequestVote", "00000006040000070100"),
    ("response AppendEntries", "0000000b04000106000104080c0000"),
    ("response AppendEntries(match)", "0000000a04000106010d00dc0b01"),
    ("response TimeoutNow", "0000000404000208"),
    ("response InstallSnapshot", "000000080400030980100000"),
    ("response InstallSnapshot(Unsupported)", "00000009040003098010000100"),
    ("response InstallSnapshot(ChecksumMismatch)", "00000009040003098010000101"),
    ("response InstallSnapshot(Malformed)", "00000009040003098010000102"),
    ("response ReadIndex", "000000090400040a01ac020103"),
    ("refusal NotServing", "00000003040100"),
    ("refusal SenderMismatch", "000000050401010902"),
    ("refusal Handler(Shutdown)", "0000000404010200"),
    ("refusal Handler(WrongNode)", "00000006040102010304"),
    ("refusal Handler(WrongCluster)", "00000006040102020506"),
    ("refusal Handler(WrongGroup)", "00000006040102030708"),
    ("refusal Handler(UnknownGroup)", "000000050401020409"),
    ("refusal Handler(Overloaded)", "00000006040102050940"),
    ("refusal RemovedNode", "0000000404010305"),
    ("refusal Malformed", "0000000704010403626164"),
    ("refusal Busy", "00000003040105"),
];

/// `RpcError` is wire format (raft-core lists its variants exhaustively in its own test and
/// counts them in `RPC_ERROR_VARIANTS`): the goldens hold the bytes of every one of them, so a
/// variant added in raft-core fails here until its bytes (and a wire version bump) are added.
#[test]
fn the_goldens_cover_every_rpc_error_variant() {
    let handler_errors: Vec<RpcError> = refusals()
        .into_iter()
        .filter_map(|(_, response)| match response {
            WireResponse::Refused(Refusal::Handler(error)) => Some(error),
            _ => None,
        })
        .collect();
    let kinds: BTreeSet<&str> = handler_errors.iter().map(RpcError::kind).collect();
    assert_eq!(
        kinds.len(),
        raft_core::RPC_ERROR_VARIANTS,
        "a RpcError variant has no golden bytes (have {kinds:?}): add it to `refusals` and \
         `GOLDEN`, and bump the wire version"
    );
}

#[test]
fn every_message_encodes_to_its_golden_bytes_of_this_wire_version() {
    assert_eq!(
        PROTOCOL_VERSION, GOLDEN_VERSION,
        "the wire version changed: replace the goldens with the new version's encoding"
    );
    assert_eq!(ALPN, format!("raft-quic/{PROTOCOL_VERSION}").as_bytes());
    let mut frames: Vec<(String, Bytes)> = Vec::new();
    for (name, request) in requests() {
        let frame = encode_request(&request, MAX).unwrap();
        let (sender, decoded, used) = decode_request(&frame, MAX, LIMITS).unwrap();
        assert_eq!(
            (sender, &decoded, used),
            (request.request.sender(), &request, frame.len()),
            "{name}"
        );
        frames.push((format!("request {name}"), frame));
    }
    for (name, response) in responses() {
        let wire = WireResponse::Ok(response);
        let frame = encode(&wire, MAX).unwrap();
        assert_eq!(decode::<WireResponse>(&frame, MAX, LIMITS).unwrap(), (wire, frame.len()));
        frames.push((format!("response {name}"), frame));
    }
    for (name, refusal) in refusals() {
        let frame = encode(&refusal, MAX).unwrap();
        let used = frame.len();
        assert_eq!(decode::<WireResponse>(&frame, MAX, LIMITS).unwrap(), (refusal, used));
        frames.push((format!("refusal {name}"), frame));
    }
    let actual: Vec<(String, String)> =
        frames.iter().map(|(name, frame)| (name.clone(), hex(frame))).collect();
    let expected: Vec<(String, String)> =
        GOLDEN.iter().map(|(name, bytes)| ((*name).to_owned(), (*bytes).to_owned())).collect();
    if actual != expected {
        let listing: String = actual
            .iter()
            .map(|(name, bytes)| format!("    (\"{name}\", \"{bytes}\"),\n"))
            .collect();
        panic!(
            "the encoding differs from wire version {GOLDEN_VERSION}'s goldens: bump \
             PROTOCOL_VERSION and ALPN, document the change in raft_quic::wire, and replace \
             GOLDEN with this version's frames:\n{listing}"
        );
    }
}

/// The frames of coalescing (added to version 4 before its first release): a batch of two
/// requests (its kind byte, the count, then each request's own frame) and the answer to its
/// second request (its kind byte, the position, then the response). Kept apart from the
/// per-message goldens above: their bytes change with the messages, these with the framing.
#[test]
fn batch_and_answer_frames_encode_to_their_golden_bytes() {
    use raft_quic::frame::{decode_answer, decode_batch, encode_answer, encode_batch, BATCH_KIND};
    assert_eq!(BATCH_KIND, 0x80 | GOLDEN_VERSION);
    let requests = [
        Envelope::new(2, RpcRequest::TimeoutNow(TimeoutNowRequest { term: 8, leader_id: 4 }))
            .with_cluster_id(0xc1)
            .with_group_id(17),
        Envelope::new(
            3,
            RpcRequest::ReadIndex(ReadIndexRequest { term: 10, sender: 4, read_id: 77 }),
        )
        .with_group_id(300),
    ];
    let batch = encode_batch(requests.iter(), MAX).unwrap();
    assert_eq!(&batch[4..7], &[BATCH_KIND, 0, 2], "kind, then a count of two");
    let first = encode_request(&requests[0], MAX).unwrap();
    let second = encode_request(&requests[1], MAX).unwrap();
    assert_eq!(&batch[7..], [first, second].concat().as_slice(), "then the requests' own frames");
    assert_eq!(hex(&batch), BATCH_GOLDEN);
    let expected: Vec<_> = requests.iter().map(|r| (r.request.sender(), r.clone())).collect();
    assert_eq!(decode_batch(&batch, MAX, LIMITS).unwrap(), (expected, batch.len()));

    let response = WireResponse::Ok(RpcResponse::TimeoutNow(TimeoutNowResponse { term: 8 }));
    let answer = encode_answer(1, &response, MAX).unwrap();
    assert_eq!(&answer[4..7], &[BATCH_KIND, 0, 1], "kind, then position 1");
    assert_eq!(&answer[7..], &encode(&response, MAX).unwrap()[5..], "then the response");
    assert_eq!(hex(&answer), ANSWER_GOLDEN);
    assert_eq!(decode_answer(&answer, MAX, LIMITS).unwrap(), (1, response, answer.len()));
}

const BATCH_GOLDEN: &str = "0000002c84000200000010040000000000000004c10111020208040000001104000000000000000400ac0203040a044d";
const ANSWER_GOLDEN: &str = "00000006840001000208";
