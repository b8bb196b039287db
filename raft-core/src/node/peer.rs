//! One sender task per peer: runs RPCs to that peer concurrently (pipelining) and reports each
//! outcome to the main loop.

use std::task::Poll;

use async_channel::{Receiver, Sender};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};

use super::Input;
use crate::engine::SentRequest;
use crate::message::{RpcRequest, RpcResponse};
use crate::network::{Network, NetworkError};
use crate::types::NodeId;

enum Event {
    Done((SentRequest, Result<RpcResponse, NetworkError>)),
    Request(RpcRequest),
    Closed,
}

/// Runs until the main loop closes `requests` (then in-flight RPCs are abandoned: their answers
/// no longer matter) or stops listening.
pub(super) async fn run<N: Network + Clone>(
    peer: NodeId,
    network: N,
    requests: Receiver<RpcRequest>,
    inputs: Sender<Input>,
    max_in_flight: usize,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut requests = std::pin::pin!(requests);
    loop {
        let event = futures::future::poll_fn(|cx| {
            if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                return Poll::Ready(Event::Done(done));
            }
            if in_flight.len() < max_in_flight {
                match requests.as_mut().poll_next(cx) {
                    Poll::Ready(Some(request)) => return Poll::Ready(Event::Request(request)),
                    Poll::Ready(None) => return Poll::Ready(Event::Closed),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done((sent, result)) => {
                if inputs.send(Input::Response { from: peer, sent, result }).await.is_err() {
                    return;
                }
            }
            Event::Request(request) => {
                let network = network.clone();
                in_flight.push(async move {
                    let sent = SentRequest::of(&request);
                    (sent, network.send(peer, request).await)
                });
            }
            Event::Closed => return,
        }
    }
}
