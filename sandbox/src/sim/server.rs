//! A simulated pod's process: an HTTP/1.1 server on 127.0.0.1 that answers every method and
//! path with `200` and the pod's image tag as the body, plus an `x-pod-name` header. A
//! configurable fraction of requests gets `500` instead, spread evenly (request `n` fails
//! when `⌊(n+1)·rate⌋ > ⌊n·rate⌋`), so the share of errors is exact over any window.
//!
//! [`PodServer::stop`] stops accepting and closes connections gracefully (idle keep-alive
//! connections at once, busy ones after their response); dropping a [`PodServer`] kills the
//! listener and every connection at once.

use std::{
    convert::Infallible,
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::body::Body;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tracing::debug;

/// The response header naming the pod that answered.
pub const POD_NAME_HEADER: &str = "x-pod-name";

const PPM: u64 = 1_000_000;

struct State {
    pod: String,
    body: String,
    /// Error rate in parts per million.
    error_ppm: AtomicU32,
    served: AtomicU64,
}

/// A running pod server. Dropping it kills it.
pub struct PodServer {
    port: u16,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PodServer {
    /// Binds `127.0.0.1:<preferred>` (or a free port if that is taken or not given) and
    /// starts serving on the current tokio runtime.
    pub async fn start(pod: &str, body: String, preferred: Option<u16>) -> io::Result<Self> {
        let listener = match preferred {
            Some(port) => match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                Ok(l) => l,
                Err(_) => TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
            },
            None => TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?,
        };
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            pod: pod.to_owned(),
            body,
            error_ppm: AtomicU32::new(0),
            served: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), stop_rx));
        Ok(Self {
            port,
            state,
            stop,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// Fraction of requests to answer with 500, clamped to `[0, 1]`.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * PPM as f64).round() as u32;
        self.state.error_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Stop accepting and close connections gracefully.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the server has finished (after [`stop`](Self::stop) and its connections).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        // Dropping the task drops the listener and the JoinSet of connections.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, state.clone(), stop.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    debug!(pod = %state.pod, error = %e, "pod server accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once the stop signal is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn connection(stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| respond(state.clone(), req));
    let mut conn = pin!(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // Read the request body so the connection can be reused.
    let _ = axum::body::to_bytes(Body::new(req.into_body()), 1 << 20).await;
    let n = state.served.fetch_add(1, Ordering::Relaxed);
    let ppm = u64::from(state.error_ppm.load(Ordering::Relaxed));
    let fail = (n + 1) * ppm / PPM > n * ppm / PPM;
    let (status, body) = if fail {
        let rate = ppm as f64 / PPM as f64;
        (
            500,
            format!("error injected by the sandbox (error-rate {rate})"),
        )
    } else {
        (200, state.body.clone())
    };
    let response = Response::builder()
        .status(status)
        .header(POD_NAME_HEADER, state.pod.as_str())
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request on a fresh connection; returns (status, x-pod-name, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
        let status = head[9..12].parse().expect("status");
        let pod = head
            .lines()
            .find_map(|l| l.strip_prefix("x-pod-name: "))
            .unwrap_or_default()
            .to_owned();
        (status, pod, body.to_owned())
    }

    #[tokio::test]
    async fn answers_every_path_with_the_tag_and_the_pod_name() {
        let server = PodServer::start("demo-abc-xyz12", "v2".into(), None)
            .await
            .expect("start");
        for path in ["/", "/version", "/a/b?c=d"] {
            assert_eq!(
                get(server.addr(), path).await,
                (200, "demo-abc-xyz12".into(), "v2".into())
            );
        }
        assert_eq!(server.served(), 3);
    }

    #[tokio::test]
    async fn error_rate_fails_exactly_that_share() {
        let server = PodServer::start("p", "v1".into(), None)
            .await
            .expect("start");
        server.set_error_rate(0.2);
        let mut errors = 0;
        for _ in 0..50 {
            let (status, pod, _) = get(server.addr(), "/").await;
            assert_eq!(pod, "p");
            if status == 500 {
                errors += 1;
            }
        }
        assert_eq!(errors, 10);
        server.set_error_rate(0.0);
        assert_eq!(get(server.addr(), "/").await.0, 200);
    }

    #[tokio::test]
    async fn prefers_the_recorded_port_and_releases_it_when_dropped() {
        let first = PodServer::start("p", "v1".into(), None)
            .await
            .expect("start");
        let port = first.port();
        let taken = PodServer::start("q", "v1".into(), Some(port))
            .await
            .expect("start");
        assert_ne!(taken.port(), port, "a taken port falls back to a free one");
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let again = PodServer::start("p", "v1".into(), Some(port))
                .await
                .expect("start");
            if again.port() == port {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {port} was not released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stop_closes_idle_keep_alive_connections() {
        let server = PodServer::start("p", "v1".into(), None)
            .await
            .expect("start");
        let mut s = TcpStream::connect(server.addr()).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        server.stop();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "connection still open: {closed:?}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !server.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not finish"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(TcpStream::connect(server.addr()).await.is_err());
    }
}
