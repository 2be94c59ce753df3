use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};

use crate::http::{body_length, lowercase_headers, read_body, read_head};

const MAX_HEADERS: usize = 128;

/// A real HTTP/1.1 server on 127.0.0.1 standing in for one deployment.
///
/// Every request gets `200` with body `{"version":"<version>","headers":{<name>:<value>,...}}`
/// (request header names lowercased, repeats joined by ", ") and response header
/// `x-served-by: <version>`. Connections are kept alive, each on its own thread, so Envoy's
/// upstream pool behaves as it would in front of a real service.
/// [`Backend::fail_fraction`] turns a share of answers into another status code.
/// The server stops, and closes its connections, on `Drop`.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    version: String,
    stopping: AtomicBool,
    requests: AtomicU64,
    failures: Mutex<Failures>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

#[derive(Default)]
struct Failures {
    status: u16,
    fraction: f64,
    seen: u64,
}

impl Failures {
    /// Spreads failures evenly: request n fails when ⌊(n+1)·f⌋ > ⌊n·f⌋, so exactly ⌊N·f⌋ of the
    /// first N requests fail and tests can compare counts without a tolerance.
    fn next_status(&mut self) -> u16 {
        let n = self.seen as f64;
        self.seen += 1;
        if self.fraction > 0.0 && ((n + 1.0) * self.fraction).floor() > (n * self.fraction).floor()
        {
            self.status
        } else {
            200
        }
    }
}

impl Backend {
    /// Starts a backend answering as `version` (e.g. "v1") on a free port.
    pub fn start(version: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a backend port")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            version: version.to_string(),
            stopping: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            failures: Mutex::new(Failures::default()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("backend-{version}"))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version it reports.
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// From now on, answer `status` to `fraction` (0.0..=1.0) of requests, spread evenly.
    /// The body stays the usual JSON, so a test still learns which backend failed.
    pub fn fail_fraction(&self, status: u16, fraction: f64) {
        let mut failures = self
            .shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *failures = Failures {
            status,
            fraction: fraction.clamp(0.0, 1.0),
            seen: 0,
        };
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the acceptor sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let conns = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for conn in conns.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, clone);
        }
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("backend-{}-conn{id}", shared.version))
            .spawn(move || {
                let _ = serve(stream, &shared);
                shared
                    .conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            });
        if spawned.is_err() {
            break;
        }
    }
}

/// Serves requests on one connection until the peer closes it or asks to.
fn serve(stream: TcpStream, shared: &Shared) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut parsed);
        if !request.parse(&head)?.is_complete() {
            anyhow::bail!("incomplete request head");
        }
        let http10 = request.version == Some(0);
        let headers = lowercase_headers(request.headers);
        read_body(&mut reader, body_length(&headers, None))?;

        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &headers {
            seen.entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let close = http10
            || seen
                .get("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let status = shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_status();
        let body = serde_json::json!({"version": shared.version, "headers": seen}).to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-served-by: {}\r\n{}\r\n{body}",
            reason(status),
            body.len(),
            shared.version,
            if close { "connection: close\r\n" } else { "" },
        );
        // Count before answering, so a client that has its reply can rely on the count.
        shared.requests.fetch_add(1, Ordering::SeqCst);
        writer.write_all(response.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
