//! I/O: Prometheus's HTTP API for the metric analysis — instant queries (`POST
//! /api/v1/query`), each with a timeout and retried on transport errors, timeouts, 429 and
//! 5xx. Whatever is not a successful answer becomes an [`Answer::Error`] carrying what went
//! wrong, never a value: the analysis treats it as "no verdict".
//!
//! `http://` or `https://` (rustls; the system's CAs plus an optional CA file), with an
//! optional bearer token read from a file at every query (a projected ServiceAccount token
//! rotates) and extra headers (a tenant header for Thanos, Mimir or Cortex). The client is
//! hyper-util's with hyper-rustls, both already in the dependency tree through kube.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Bytes,
    header::{self, HeaderName, HeaderValue},
    Method, Request, StatusCode, Uri,
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    ClientConfig, RootCertStore,
};
use serde::Deserialize;
use tracing::debug;

use crate::analysis::{Answer, Query};

/// How long one attempt of a query may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per query.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The pause after the first failed attempt; it doubles after each further one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(250);
/// Answers larger than this are refused (an instant query of one value is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Where the analysis' Prometheus is and how to reach it: the `--prometheus-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `http(s)://host:port[/prefix]`.
    pub url: String,
    /// A PEM file of CA certificates trusted for `https://`, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// A file whose content is sent as `Authorization: Bearer <token>`; read at every query.
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers, each `Name: value` (e.g. `X-Scope-OrgID: team-a`).
    pub headers: Vec<String>,
}

impl Endpoint {
    /// Just a URL: no CA file, token or headers.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// `--prometheus-*` settings that cannot be used; each names its flag and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--prometheus-url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("--prometheus-ca-file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("--prometheus-bearer-token-file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },
    #[error("--prometheus-header {header:?}: {reason}")]
    Header { header: String, reason: String },
}

/// A Prometheus server's HTTP API.
#[derive(Clone)]
pub struct Prometheus {
    /// The base URL without a trailing `/` (it may carry a path prefix).
    base: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    bearer_token_file: Option<PathBuf>,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .field("bearer_token_file", &self.bearer_token_file)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
}

impl Failure {
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }

    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
}

impl Prometheus {
    /// A client of the Prometheus at `endpoint`, with the default timeout, attempts and
    /// backoff. Checks everything it can before the first query: the URL, the CA file, that
    /// the token file is readable, the headers.
    pub fn new(endpoint: &Endpoint) -> Result<Self, ConfigError> {
        let url = endpoint.url.as_str();
        let invalid = |reason: &str| ConfigError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| invalid(&format!("not a URL ({e})")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(invalid(
                    "give an http:// or https:// URL, e.g. http://prometheus:9090",
                ))
            }
        };
        if uri.authority().is_none() {
            return Err(invalid("no host; e.g. http://prometheus:9090"));
        }
        if uri.query().is_some() {
            return Err(invalid("remove the query string"));
        }
        let tls = tls_config(url, endpoint.ca_file.as_deref(), https)?;
        if let Some(path) = &endpoint.bearer_token_file {
            read_token(path).map_err(|reason| ConfigError::TokenFile {
                path: path.clone(),
                reason,
            })?;
        }
        let headers = endpoint
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;

        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(DEFAULT_TIMEOUT));
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            client,
            bearer_token_file: endpoint.bearer_token_file.clone(),
            headers: Arc::new(headers),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// The same client with another per-attempt timeout, number of attempts and first backoff.
    pub fn with_retries(mut self, timeout: Duration, attempts: u32, backoff: Duration) -> Self {
        self.timeout = timeout;
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Runs every query at once; the answers by [`Query::id`].
    pub async fn answer(&self, queries: &[Query]) -> BTreeMap<String, Answer> {
        let answers =
            futures::future::join_all(queries.iter().map(|q| self.query(&q.promql))).await;
        queries.iter().map(|q| q.id.clone()).zip(answers).collect()
    }

    /// One instant query, with retries.
    pub async fn query(&self, promql: &str) -> Answer {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match tokio::time::timeout(self.timeout, self.attempt(promql)).await {
                Ok(Ok(values)) => return Answer::Values(values),
                Ok(Err(failure)) => {
                    if !failure.retry {
                        return Answer::Error(format!(
                            "Prometheus at {}: {}",
                            self.base, failure.message
                        ));
                    }
                    last = failure.message;
                }
                Err(_) => last = format!("no answer within {:?}", self.timeout),
            }
            debug!(prometheus = %self.base, attempt, error = %last, "Prometheus query failed");
            if attempt < self.attempts {
                tokio::time::sleep(self.backoff * 2u32.saturating_pow(attempt - 1)).await;
            }
        }
        Answer::Error(format!(
            "Prometheus at {}: {last} ({} attempts)",
            self.base, self.attempts
        ))
    }

    async fn attempt(&self, promql: &str) -> Result<Vec<f64>, Failure> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/api/v1/query", self.base))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        for (name, value) in self.headers.iter() {
            request = request.header(name, value);
        }
        if let Some(path) = &self.bearer_token_file {
            // Read every time: a projected token is replaced on disk before it expires.
            let token = read_token(path).map_err(|reason| {
                Failure::permanent(format!("bearer token file {}: {reason}", path.display()))
            })?;
            let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                Failure::permanent(format!(
                    "bearer token file {}: the token is not a valid header value",
                    path.display()
                ))
            })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(format!("building the request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Failure::transient(error_chain(&e)))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::transient(format!("reading the answer: {e}")))?
            .to_bytes();
        let retry = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let parsed: Result<ApiResponse, _> = serde_json::from_slice(&bytes);
        match parsed {
            Ok(api) if api.status == "success" && status.is_success() => {
                api.values().map_err(Failure::permanent)
            }
            Ok(api) => {
                let message = format!(
                    "HTTP {}: {} ({})",
                    status.as_u16(),
                    api.error.unwrap_or_default(),
                    api.error_type.unwrap_or_default()
                );
                // Prometheus reports its own query timeouts as 503 `timeout`.
                Err(Failure { message, retry })
            }
            Err(e) => Err(Failure {
                message: format!(
                    "HTTP {}: not a Prometheus API answer ({e}): {:?}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
                retry,
            }),
        }
    }
}

/// The TLS settings: the system's CAs plus those of `ca_file`. For `https://` there must be
/// at least one (a minimal image has no system CAs: give the CA file).
fn tls_config(url: &str, ca_file: Option<&Path>, https: bool) -> Result<ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped, as a browser would.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let ca_error = |reason: String| ConfigError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(format!("cannot read it ({e})")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(ca_error(
                "no certificate in it; give a PEM file with BEGIN CERTIFICATE blocks".to_owned(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_error(format!("a certificate cannot be used ({e})")))?;
        }
    }
    if https && roots.is_empty() {
        return Err(no_roots(url));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Url {
            url: url.to_owned(),
            reason: format!("TLS setup failed ({e})"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn no_roots(url: &str) -> ConfigError {
    ConfigError::Url {
        url: url.to_owned(),
        reason: "https:// but this system has no CA certificates; give the CA that signed \
                 Prometheus's certificate with --prometheus-ca-file"
            .to_owned(),
    }
}

/// The token in `path`, trimmed; an error in words if there is none.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err("it is empty".to_owned());
    }
    Ok(token.to_owned())
}

/// `Name: value` as a header.
fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let invalid = |reason: &str| ConfigError::Header {
        header: header.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| invalid("give `Name: value`, e.g. `X-Scope-OrgID: team-a`"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|_| invalid("not a valid header name"))?;
    let mut value =
        HeaderValue::try_from(value.trim()).map_err(|_| invalid("not a valid header value"))?;
    if name == header::AUTHORIZATION {
        value.set_sensitive(true);
    }
    Ok((name, value))
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `/api/v1/query`'s answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorSample>),
    /// `[unix time, "value"]`.
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    value: (f64, String),
}

impl ApiResponse {
    fn values(self) -> Result<Vec<f64>, String> {
        let parse = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("the value {s:?} is not a number"))
        };
        match self.data {
            Some(QueryData::Vector(samples)) => samples.iter().map(|s| parse(&s.value.1)).collect(),
            Some(QueryData::Scalar((_, value))) => Ok(vec![parse(&value)?]),
            Some(QueryData::Matrix(_)) => Err(
                "the query returned a range vector; give an instant query (no [range] at the \
                 end)"
                    .to_owned(),
            ),
            Some(QueryData::String(_)) => Err("the query returned a string".to_owned()),
            None => Err("the answer has no data".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(json: &str) -> Result<Vec<f64>, String> {
        serde_json::from_str::<ApiResponse>(json)
            .map_err(|e| e.to_string())?
            .values()
    }

    #[test]
    fn vector_scalar_and_nan_answers_parse() {
        assert_eq!(
            values(
                r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"rollout":"ns/name","version":"canary"},"value":[1795708992.737,"0.8986939639957642"]}]}}"#
            ),
            Ok(vec![0.8986939639957642])
        );
        assert_eq!(
            values(r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#),
            Ok(vec![])
        );
        let nan = values(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
        )
        .expect("NaN parses");
        assert!(nan[0].is_nan());
        assert_eq!(
            values(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#),
            Ok(vec![f64::INFINITY])
        );
        assert!(
            values(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .is_err_and(|e| e.contains("range vector"))
        );
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        assert_eq!(
            Prometheus::new(&Endpoint::url("http://prometheus:9090/"))
                .expect("valid")
                .url(),
            "http://prometheus:9090"
        );
        assert_eq!(
            Prometheus::new(&Endpoint::url("http://127.0.0.1:9090/prom"))
                .expect("valid")
                .url(),
            "http://127.0.0.1:9090/prom"
        );
        for bad in ["prometheus:9090", "http://p:9090/?x=1", "", "ftp://p"] {
            assert!(
                Prometheus::new(&Endpoint::url(bad)).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    /// A stand-in Prometheus answering `answers` in turn (the last one again and again);
    /// returns its URL and the queries it received.
    async fn fake(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let received = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = received.clone();
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::post(move |body: String| {
                let log = log.clone();
                let answers = answers.clone();
                async move {
                    let query = form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "query")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let n = {
                        let mut log = log.lock().expect("the log");
                        log.push(query);
                        log.len()
                    };
                    let (status, body) = answers[(n - 1).min(answers.len() - 1)];
                    (
                        StatusCode::from_u16(status).expect("a status"),
                        body.to_owned(),
                    )
                }
            }),
        );
        (serve(app).await, received)
    }

    /// Serves `app` on a free loopback port in the background; its URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    const OK: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.5"]}]}}"#;

    #[tokio::test]
    async fn queries_are_form_posts_and_overloaded_answers_are_retried() {
        let (url, received) = fake(vec![
            (
                503,
                r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#,
            ),
            (200, OK),
        ])
        .await;
        let prometheus = Prometheus::new(&Endpoint::url(&url))
            .expect("valid")
            .with_retries(Duration::from_secs(2), 3, Duration::from_millis(10));
        let query = r#"sum(rate(x{rollout="default/demo"}[30s]))"#;
        assert_eq!(prometheus.query(query).await, Answer::Values(vec![0.5]));
        assert_eq!(*received.lock().expect("log"), [query, query]);
    }

    #[tokio::test]
    async fn a_bad_query_is_an_error_at_once_and_never_a_value() {
        let (url, received) = fake(vec![(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        )])
        .await;
        let prometheus = Prometheus::new(&Endpoint::url(&url))
            .expect("valid")
            .with_retries(Duration::from_secs(2), 3, Duration::from_millis(10));
        let Answer::Error(message) = prometheus.query("sum(").await else {
            panic!("a bad query gave values");
        };
        assert!(
            message.contains("HTTP 400: parse error at char 5 (bad_data)"),
            "{message}"
        );
        assert_eq!(received.lock().expect("log").len(), 1, "not retried");

        // Not Prometheus at all (a proxy's error page): an error after the retries.
        let (url, _) = fake(vec![(502, "<html>Bad Gateway</html>")]).await;
        let prometheus = Prometheus::new(&Endpoint::url(&url))
            .expect("valid")
            .with_retries(Duration::from_secs(2), 2, Duration::from_millis(10));
        let Answer::Error(message) = prometheus.query("up").await else {
            panic!("an error page gave values");
        };
        assert!(message.contains("not a Prometheus API answer"), "{message}");
        assert!(message.contains("(2 attempts)"), "{message}");
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_an_error_after_the_retries() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let prometheus = Prometheus::new(&Endpoint::url(format!("http://127.0.0.1:{port}")))
            .expect("valid")
            .with_retries(Duration::from_secs(1), 2, Duration::from_millis(10));
        let Answer::Error(message) = prometheus.query("up").await else {
            panic!("an unreachable Prometheus gave values");
        };
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("2 attempts"), "{message}");
    }

    #[tokio::test]
    async fn the_bearer_token_is_read_at_every_query_and_headers_are_sent() {
        use std::sync::{Arc, Mutex};
        type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let log = log.clone();
                async move {
                    let get = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    log.lock()
                        .expect("the log")
                        .push((get("authorization"), get("x-scope-orgid")));
                    OK
                }
            }),
        );
        let url = serve(app).await;

        let dir = tempfile::tempdir().expect("a temporary directory");
        let token = dir.path().join("token");
        std::fs::write(&token, "first\n").expect("the token file");
        let endpoint = Endpoint {
            bearer_token_file: Some(token.clone()),
            headers: vec!["X-Scope-OrgID: team-a".to_owned()],
            ..Endpoint::url(&url)
        };
        let prometheus = Prometheus::new(&endpoint).expect("valid").with_retries(
            Duration::from_secs(2),
            3,
            Duration::from_millis(10),
        );
        assert_eq!(prometheus.query("up").await, Answer::Values(vec![0.5]));
        // Rotated on disk: the next query sends the new one.
        std::fs::write(&token, "second").expect("the token file");
        assert_eq!(prometheus.query("up").await, Answer::Values(vec![0.5]));
        let team = Some("team-a".to_owned());
        assert_eq!(
            *seen.lock().expect("the log"),
            [
                (Some("Bearer first".to_owned()), team.clone()),
                (Some("Bearer second".to_owned()), team),
            ]
        );
        assert!(
            !format!("{prometheus:?}").contains("team-a"),
            "header values are not logged"
        );

        // Gone after the start: an error naming the file, not retried.
        std::fs::remove_file(&token).expect("removing the token");
        let Answer::Error(message) = prometheus.query("up").await else {
            panic!("a query without its token gave values");
        };
        assert!(message.contains("bearer token file"), "{message}");
        assert_eq!(
            seen.lock().expect("the log").len(),
            2,
            "sent without a token"
        );

        // Checked at the start: a missing token file, a header without a colon.
        assert!(matches!(
            Prometheus::new(&endpoint),
            Err(ConfigError::TokenFile { .. })
        ));
        let bad_header = Endpoint {
            headers: vec!["X-Scope-OrgID team-a".to_owned()],
            ..Endpoint::url(&url)
        };
        let error = Prometheus::new(&bad_header).expect_err("a header without a colon");
        assert!(
            error
                .to_string()
                .starts_with("--prometheus-header \"X-Scope-OrgID team-a\": give `Name: value`"),
            "{error}"
        );
    }
}
