//! `kv-node --metrics-listen ADDR`: the node's metrics in the Prometheus text format, and its
//! health, over plain HTTP.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | every metric of raft-core ([`raft_core::metrics`]), raft-quic ([`raft_quic::metrics`]) and the kv service (`kv_node_live`, `kv_node_ready`), text format 0.0.4 |
//! | `GET /health` | `200` if the node is ready, else `503`; the body is the [`HealthReport`] as `key value` lines |
//! | `GET /health/live` | `200` if the node is live, else `503` (same body) |
//!
//! The recorder is `metrics-exporter-prometheus`'s, installed before the node and its network
//! start; histograms of durations (`*_seconds`) and batch sizes have fixed buckets, so they can
//! be aggregated across nodes. The listener is a deliberately small HTTP/1.1 server (one request
//! per connection): requests are bounded ([`MAX_REQUEST_BYTES`]), each connection is served
//! for at most [`REQUEST_TIMEOUT`] (its request read and its answer written: a client that does
//! not read the answer holds its slot no longer), and so are connections ([`MAX_CONNECTIONS`];
//! more are closed at once). It serves no secret and
//! accepts no input but the path; still, bind it to a loopback or management address: anyone
//! who reaches it learns the cluster's shape and load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use super::health::HealthReport;

/// The largest request head read (the request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// The longest one connection is served: its request head read and its answer written (to a
/// client that reads it); past it the connection is dropped, and its slot freed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of the duration histograms, in seconds (100 us to 10 s).
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bucket bounds of the write batch sizes, in entries.
const ENTRY_BUCKETS: [f64; 12] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 65536.0];

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or installed (another one is installed already).
    #[error("metrics recorder: {0}")]
    Recorder(String),
    /// The listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the Prometheus recorder as the process's global recorder; call it before the node
/// and its network start (their handles are registered then). Returns the handle that renders
/// the metrics. Spawns the recorder's upkeep task (on the current tokio runtime).
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let error = |e: &dyn std::fmt::Display| MetricsError::Recorder(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("raft_log_write_entries".into()), &ENTRY_BUCKETS)
        })
        .map_err(|e| error(&e))?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|e| error(&e))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What the listener needs to answer: the metrics, and the node's health on demand.
pub type HealthSource =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, HealthReport> + Send + Sync>;

/// Binds the metrics listener on `addr`; serve it with [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `/metrics` and `/health` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: HealthSource) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and health listener ready");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%remote, "metrics listener: too many connections; closing this one");
            continue;
        };
        let (metrics, health) = (metrics.clone(), Arc::clone(&health));
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &health)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%remote, "metrics listener: {e}"),
                Err(_) => {
                    debug!(%remote, "metrics listener: not served within {REQUEST_TIMEOUT:?}")
                }
            }
            drop(slot);
        });
    }
}

/// Reads one request head (bounded in size) and answers it; the caller bounds its time.
async fn answer(
    mut stream: TcpStream,
    metrics: &PrometheusHandle,
    health: &HealthSource,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let request_line = head.lines().next().unwrap_or_default();
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let report = health().await;
            ::metrics::gauge!("kv_node_live").set(f64::from(u8::from(report.live)));
            ::metrics::gauge!("kv_node_ready").set(f64::from(u8::from(report.ready)));
            ("200 OK", "text/plain; version=0.0.4", metrics.render())
        }
        ("GET" | "HEAD", "/health" | "/health/live") => {
            let report = health().await;
            let ok = if path == "/health" { report.ready } else { report.live };
            let status = if ok { "200 OK" } else { "503 Service Unavailable" };
            (status, "text/plain", report.to_text())
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response += &body;
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head (an empty line), at most [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_REQUEST_BYTES {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_core::{Membership, Role, Status};

    fn report(ready: bool) -> HealthReport {
        let status = Status {
            id: 1,
            role: Role::Leader,
            current_term: 2,
            leader_id: ready.then_some(1),
            commit_index: 5,
            applied_index: 5,
            last_log_index: 5,
            quiesced: false,
        };
        HealthReport::assess(status, &Membership::with_voters([1]), Vec::new(), None, 10)
    }

    /// Sends `request`, returns what came back (nothing if the server hung up first).
    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn routes_answer_with_the_right_status() {
        let listener = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&ready);
        let health: HealthSource = Arc::new(move || {
            let ready = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { report(ready) })
        });
        let server = tokio::spawn(serve(listener, handle, health));
        let ok = get(addr, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("\r\n\r\nready true\nlive true\n"), "{ok}");
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        let not_ready = get(addr, "GET /health HTTP/1.1\r\n\r\n").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("state no leader known"), "{not_ready}");
        let live = get(addr, "GET /health/live HTTP/1.1\r\n\r\n").await;
        assert!(live.starts_with("HTTP/1.1 200 OK"), "{live}");
        let metrics = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains("content-type: text/plain; version=0.0.4"), "{metrics}");
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        let huge = format!("GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(get(addr, &huge).await, "", "an oversized head gets no answer");
        server.abort();
    }

    /// Clients that ask for `/metrics` and never read the answer hold a connection slot for at
    /// most [`REQUEST_TIMEOUT`] (review 39: the answer's write had no bound, so
    /// [`MAX_CONNECTIONS`] such clients held every slot for good, `/health/live` was refused to
    /// everyone, and a supervisor would restart a healthy node). The listener's send buffers
    /// and the clients' receive buffers are small, and the body is much larger: no answer fits
    /// them. The probe is given four request timeouts to get in (an upper bound).
    #[tokio::test]
    async fn metrics_clients_that_never_read_do_not_lock_out_the_liveness_probe() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            for i in 0..20_000 {
                ::metrics::counter!("padding_total", "series" => i.to_string()).increment(1);
            }
        });
        let body = handle.render().len();
        assert!(body > 500_000, "a metrics body of {body} bytes");
        let health: HealthSource = Arc::new(|| Box::pin(async { report(true) }));
        let server = tokio::spawn(serve(listener, handle, health));
        let live = get(addr, "GET /health/live HTTP/1.1\r\n\r\n").await;
        assert!(live.starts_with("HTTP/1.1 200 OK"), "{live}");
        let mut stuck = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(2048).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            stuck.push(stream); // never read
        }
        let deadline = tokio::time::Instant::now() + 4 * REQUEST_TIMEOUT;
        let live = loop {
            let live = get(addr, "GET /health/live HTTP/1.1\r\n\r\n").await;
            if live.starts_with("HTTP/1.1 200 OK") || tokio::time::Instant::now() >= deadline {
                break live;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        server.abort();
        assert!(live.starts_with("HTTP/1.1 200 OK"), "the liveness probe got {live:?}");
        drop(stuck);
    }
}
