use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The Host the client sends unless told otherwise; the demo virtual host answers it.
pub const DEFAULT_HOST: &str = "demo.example.com";

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

// === framing (shared with the backend) ===

/// Reads one message head up to and including the blank line.
///
/// `Ok(None)` means the peer closed the connection cleanly before sending anything, which is how
/// a keep-alive connection normally ends.
pub(crate) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        if head == b"\r\n" {
            // A stray CRLF between messages is allowed before a request line (RFC 9112 §2.2).
            head.clear();
            continue;
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too large",
            ));
        }
    }
}

/// How the body following a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    Empty,
    Fixed(usize),
    Chunked,
    UntilClose,
}

pub(crate) fn body_length(
    headers: &[(String, String)],
    response_status: Option<u16>,
) -> BodyLength {
    if let Some(status) = response_status {
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return BodyLength::Empty;
        }
    }
    let chunked = headers.iter().any(|(name, value)| {
        name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        return BodyLength::Chunked;
    }
    match headers.iter().find(|(name, _)| name == "content-length") {
        Some((_, value)) => value
            .trim()
            .parse()
            .map(BodyLength::Fixed)
            .unwrap_or(BodyLength::Empty),
        None if response_status.is_some() => BodyLength::UntilClose,
        None => BodyLength::Empty,
    }
}

pub(crate) fn read_body(reader: &mut impl BufRead, length: BodyLength) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match length {
        BodyLength::Empty => {}
        BodyLength::Fixed(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        BodyLength::UntilClose => {
            reader.read_to_end(&mut body)?;
        }
        BodyLength::Chunked => loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailers, if any, end with a blank line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        },
    }
    Ok(body)
}

pub(crate) fn lowercase_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters, for query strings and stat filters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// === Client ===

/// A keep-alive HTTP/1.1 client bound to one address, reusing one connection until the server
/// closes it.
///
/// It never retries: a request that fails on a reused connection is reported, because tests
/// that change config under load must see every failure.
pub struct Client {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    connections_opened: u64,
    requests_on_conn: u64,
}

impl Client {
    /// A client for `addr` sending `Host: demo.example.com`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: DEFAULT_HOST.to_string(),
            timeout: Duration::from_secs(10),
            conn: None,
            connections_opened: 0,
            requests_on_conn: 0,
        }
    }

    /// Sends `host` as the Host header instead of the default.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// How many TCP connections this client has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened
    }

    /// Closes the current connection; the next request opens a new one.
    pub fn close(&mut self) {
        self.conn = None;
    }

    /// Sends `GET path` with `headers` (a `host` entry replaces the default Host).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let conn_no = self.connections_opened + u64::from(self.conn.is_none());
        let nth = self.requests_on_conn + 1;
        let result = self.exchange(path, headers);
        if result.is_err() {
            self.conn = None;
        }
        result.with_context(|| {
            format!(
                "GET {path} to {} (Host {}), request {nth} on connection {conn_no}",
                self.addr, self.host
            )
        })
    }

    fn exchange(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let mut request = format!("GET {path} HTTP/1.1\r\n");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request.push_str(&format!("host: {}\r\n", self.host));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");

        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                    .with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(self.timeout))?;
                stream.set_write_timeout(Some(self.timeout))?;
                self.connections_opened += 1;
                self.requests_on_conn = 0;
                self.conn.insert(BufReader::new(stream))
            }
        };
        self.requests_on_conn += 1;
        conn.get_mut().write_all(request.as_bytes())?;

        let Some(head) = read_head(conn)? else {
            bail!("server closed the connection without answering");
        };
        let mut parsed_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut parsed_headers);
        let status = match response.parse(&head)? {
            httparse::Status::Complete(_) => response.code.context("no status code")?,
            httparse::Status::Partial => bail!("incomplete response head"),
        };
        let headers = lowercase_headers(response.headers);
        let length = body_length(&headers, Some(status));
        let body = read_body(conn, length)?;
        let closes = length == BodyLength::UntilClose
            || headers
                .iter()
                .any(|(name, value)| name == "connection" && value.eq_ignore_ascii_case("close"));
        if closes {
            self.conn = None;
        }
        Ok(Reply::new(status, headers, body))
    }
}

/// One response as the test sees it: status, response headers, and, when a test backend
/// answered, the version it reported and the request headers it received.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
    /// `version` from a backend's JSON body (`None` for Envoy's own replies).
    pub version: Option<String>,
    /// Request headers the backend received, names lowercased; repeated ones joined by ", ".
    pub seen: BTreeMap<String, String>,
}

impl Reply {
    fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let version = json
            .as_ref()
            .and_then(|j| j.get("version"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let seen = json
            .as_ref()
            .and_then(|j| j.get("headers"))
            .and_then(|h| h.as_object())
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            status,
            headers,
            body,
            version,
            seen,
        }
    }

    /// The first response header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every response header called `name` (case-insensitive), e.g. all `set-cookie` lines.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of request header `name` as the backend saw it.
    pub fn saw(&self, name: &str) -> Option<&str> {
        self.seen
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection, for admin endpoints: `(status, body)`.
pub fn get_text(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut client = Client::new(addr).with_host(addr.to_string());
    let reply = client.get(path, &[("connection", "close")])?;
    Ok((reply.status, reply.text()))
}
