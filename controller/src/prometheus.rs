//! I/O: Prometheus's HTTP API for the metric analysis — instant queries (`POST
//! /api/v1/query`), each with a timeout and retried on transport errors, timeouts, 429 and
//! 5xx. Whatever is not a successful answer becomes an [`Answer::Error`] carrying what went
//! wrong, never a value: the analysis treats it as "no verdict".
//!
//! Plain `http://` only (an in-cluster Prometheus Service, or a local proxy in front of one):
//! the client is hyper-util's, already in the dependency tree through kube, without TLS.

use std::{collections::BTreeMap, time::Duration};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, header, Method, Request, StatusCode, Uri};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
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

/// A `--prometheus-url` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--prometheus-url {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// A Prometheus server's HTTP API.
#[derive(Clone)]
pub struct Prometheus {
    /// The base URL without a trailing `/` (it may carry a path prefix).
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
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
    /// A client of the Prometheus at `url` (`http://host:port[/prefix]`), with the default
    /// timeout, attempts and backoff.
    pub fn new(url: &str) -> Result<Self, UrlError> {
        let invalid = |reason: &str| UrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| invalid(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported; use the in-cluster http:// Service of Prometheus \
                     or a local proxy",
                ))
            }
            _ => return Err(invalid("give an http:// URL, e.g. http://prometheus:9090")),
        }
        if uri.authority().is_none() {
            return Err(invalid("no host; e.g. http://prometheus:9090"));
        }
        if uri.query().is_some() {
            return Err(invalid("remove the query string"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DEFAULT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            client,
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
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/api/v1/query", self.base))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
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
    fn only_http_urls_with_a_host_are_accepted() {
        assert_eq!(
            Prometheus::new("http://prometheus:9090/")
                .expect("valid")
                .url(),
            "http://prometheus:9090"
        );
        assert_eq!(
            Prometheus::new("http://127.0.0.1:9090/prom")
                .expect("valid")
                .url(),
            "http://127.0.0.1:9090/prom"
        );
        for bad in [
            "prometheus:9090",
            "https://p:9090",
            "http://p:9090/?x=1",
            "",
            "ftp://p",
        ] {
            assert!(Prometheus::new(bad).is_err(), "{bad:?} was accepted");
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, received)
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
        let prometheus = Prometheus::new(&url).expect("valid").with_retries(
            Duration::from_secs(2),
            3,
            Duration::from_millis(10),
        );
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
        let prometheus = Prometheus::new(&url).expect("valid").with_retries(
            Duration::from_secs(2),
            3,
            Duration::from_millis(10),
        );
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
        let prometheus = Prometheus::new(&url).expect("valid").with_retries(
            Duration::from_secs(2),
            2,
            Duration::from_millis(10),
        );
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
        let prometheus = Prometheus::new(&format!("http://127.0.0.1:{port}"))
            .expect("valid")
            .with_retries(Duration::from_secs(1), 2, Duration::from_millis(10));
        let Answer::Error(message) = prometheus.query("up").await else {
            panic!("an unreachable Prometheus gave values");
        };
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.contains("2 attempts"), "{message}");
    }
}
