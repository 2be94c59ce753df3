//! A minimal HTTP/1.1 client over tokio, for Envoy's admin API and for tests.
//!
//! Only what talking to Envoy needs: GET, fixed-length and chunked bodies, keep-alive.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A GET on a fresh connection that is closed afterwards.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let mut client = Client::connect(addr).await?;
    client.get(path, headers).await
}

/// A keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    /// The server said `Connection: close` (Envoy does when it drains a listener): the next
    /// request needs a new connection, as any HTTP/1.1 client would open.
    closed: bool,
}

impl Client {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream: BufReader::new(stream),
            closed: false,
        })
    }

    /// Sends a GET and reads the response; `Host` defaults to the peer address.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        if self.closed {
            *self = Self::connect(self.addr).await?;
        }
        let mut request = format!("GET {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("host: {}\r\n", self.addr));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let response = tokio::time::timeout(TIMEOUT, async {
            self.stream.get_mut().write_all(request.as_bytes()).await?;
            read_response(&mut self.stream).await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
        self.closed = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(response)
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

async fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    let mut head_bytes = status_line.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(invalid("connection closed inside the response head"));
        }
        head_bytes += line.len();
        if head_bytes > MAX_HEAD_BYTES {
            return Err(invalid("response head too large"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        // No body.
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            line.clear();
            reader.read_line(&mut line).await?;
        }
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else {
        reader.read_to_end(&mut body).await?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
