//! The inbound side: accepts connections, binds each to the node id its certificate proves, and
//! serves every bidirectional stream as one RPC in its own task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::{Endpoint, Incoming, RecvStream, SendStream};
use raft_core::{NodeId, RpcRequest};
use tracing::{debug, info, warn};

use crate::frame::{self, ReadFrameError};
use crate::identity::peer_node_id;
use crate::network::Shared;
use crate::timer::timeout;
use crate::wire::{code, Refusal, WireResponse};

/// Accepts connections until the endpoint is closed.
pub(crate) async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let inbound = shared.inbound.fetch_add(1, Ordering::AcqRel);
        if inbound >= shared.limits.max_inbound_connections {
            shared.inbound.fetch_sub(1, Ordering::AcqRel);
            warn!(node = shared.id, %remote, "refusing connection: too many inbound connections");
            incoming.refuse();
            continue;
        }
        let task = serve_connection(incoming, Arc::clone(&shared));
        shared.runtime.spawn(Box::pin(task));
    }
    debug!(node = shared.id, "endpoint closed: no longer accepting connections");
}

/// Releases an inbound connection slot when dropped.
struct InboundSlot(Arc<Shared>);

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.inbound.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(incoming: Incoming, shared: Arc<Shared>) {
    let slot = InboundSlot(shared);
    let shared = &slot.0;
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // Peers without a certificate, or with one from another CA, end here.
            warn!(node = shared.id, %remote, "inbound handshake failed: {e}");
            return;
        }
    };
    let peer = match peer_node_id(&conn, shared.peer_ids()) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(node = shared.id, %remote, "closing inbound connection: {e}");
            conn.close(code::BAD_IDENTITY, e.to_string().as_bytes());
            return;
        }
    };
    info!(node = shared.id, peer, %remote, "inbound connection authenticated");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let task = serve_stream(send, recv, peer, Arc::clone(shared));
                shared.runtime.spawn(Box::pin(task));
            }
            Err(e) => {
                debug!(node = shared.id, peer, "inbound connection ended: {e}");
                return;
            }
        }
    }
}

/// Serves one RPC: reads the request frame, answers it, closes the stream. A bad frame closes
/// this stream only, with a logged reason; the connection and every other stream carry on.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: NodeId,
    shared: Arc<Shared>,
) {
    let limits = &shared.limits;
    let read = frame::read::<RpcRequest>(&mut recv, limits.max_frame_size);
    let request = match timeout(&*shared.runtime, limits.rpc_timeout, read).await {
        Ok(Ok(request)) => request,
        Ok(Err(ReadFrameError::Frame(e))) => {
            warn!(node = shared.id, peer, stream = %recv.id(), "closing stream: bad request: {e}");
            let _ = recv.stop(e.code());
            let _ = send.reset(e.code());
            return;
        }
        Ok(Err(ReadFrameError::Stream(e))) => {
            debug!(node = shared.id, peer, "request stream failed: {e}");
            return;
        }
        Err(_) => {
            warn!(
                node = shared.id,
                peer, "closing stream: no complete request within {:?}", limits.rpc_timeout
            );
            let _ = recv.stop(code::TIMEOUT);
            let _ = send.reset(code::TIMEOUT);
            return;
        }
    };
    drop(recv);
    let response = respond(&shared, peer, request).await;
    let frame = match frame::encode(&response, limits.max_frame_size) {
        Ok(frame) => frame,
        Err(e) => {
            warn!(node = shared.id, peer, "cannot send response: {e}");
            let _ = send.reset(e.code());
            return;
        }
    };
    match timeout(&*shared.runtime, limits.rpc_timeout, send.write_chunk(frame)).await {
        Ok(Ok(())) => {
            // Fails only if the peer already reset the stream; nothing is left to do then.
            let _ = send.finish();
        }
        Ok(Err(e)) => debug!(node = shared.id, peer, "cannot write response: {e}"),
        Err(_) => {
            debug!(node = shared.id, peer, "response not accepted within the RPC timeout");
            let _ = send.reset(code::TIMEOUT);
        }
    }
}

/// Checks the claimed sender against the connection's identity and hands the request to the
/// handler.
async fn respond(shared: &Shared, peer: NodeId, request: RpcRequest) -> WireResponse {
    let claimed = request.sender();
    if claimed != peer {
        warn!(
            node = shared.id,
            peer,
            claimed,
            kind = request.kind(),
            "refusing request: its claimed sender is not the certificate's identity"
        );
        return WireResponse::Refused(Refusal::SenderMismatch { claimed, authenticated: peer });
    }
    let Some(handler) = shared.handler() else {
        debug!(node = shared.id, peer, kind = request.kind(), "refusing request: no handler yet");
        return WireResponse::Refused(Refusal::NotServing);
    };
    match handler.handle_rpc(request).await {
        Ok(response) => WireResponse::Ok(response),
        Err(e) => WireResponse::Refused(Refusal::Handler(e.to_string())),
    }
}
