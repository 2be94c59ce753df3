//! Watch streams: one JSON event per line, flushed per event, over a chunked HTTP/1.1 body.
//!
//! - `resourceVersion=N`: replay history after N, then live events; N below the compaction
//!   floor gets an in-stream `ERROR` event with a 410 `Expired` Status (never an HTTP 410);
//! - no resourceVersion or `0`: synthetic ADDED events for the current state first;
//! - `sendInitialEvents=true` (watch-list): the same, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end: "true"`;
//! - `allowWatchBookmarks=true`: periodic BOOKMARKs carrying the global RV;
//! - label-selector transitions turn MODIFIED into ADDED/DELETED for that watch;
//! - the stream ends at `timeoutSeconds`, on `close_watches()`, on shutdown, or when the
//!   watcher falls too far behind (the client then re-watches from its last RV).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{
    errors::ApiError,
    registry::ResourceType,
    render::{self, Shape},
    selectors::{FieldSelector, LabelSelector},
    store::{with_type_meta, EventType, StoredEvent, Subscription},
    Shared,
};

/// A parsed watch request.
pub struct WatchRequest {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Full objects, `PartialObjectMetadata`, or one-row Tables (`kubectl get -w`).
    pub shape: Shape,
}

impl WatchRequest {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        ns_ok && self.labels.matches_object(obj) && self.fields.matches(obj)
    }

    fn render(&self, obj: &Value) -> Value {
        let full = with_type_meta(&self.rt, obj.clone());
        match self.shape {
            Shape::Full => full,
            Shape::Metadata => render::partial_metadata(&full),
            Shape::Table => {
                let rv = full
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                render::table(&self.rt, &[full], json!({"resourceVersion": rv}))
            }
        }
    }

    fn line(&self, type_: &str, obj: &Value) -> Bytes {
        let mut s = json!({"type": type_, "object": self.render(obj)}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (kind, api_version) = match self.shape {
            Shape::Full => (self.rt.kind.clone(), self.rt.api_version()),
            Shape::Metadata => ("PartialObjectMetadata".into(), "meta.k8s.io/v1".into()),
            Shape::Table => ("Table".into(), "meta.k8s.io/v1".into()),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let mut s = json!({"type": "BOOKMARK", "object": {
            "kind": kind, "apiVersion": api_version, "metadata": metadata}})
        .to_string();
        s.push('\n');
        Bytes::from(s)
    }

    /// The line for a stored event as this watch sees it, with selector transitions.
    fn event_line(&self, e: &StoredEvent) -> Option<Bytes> {
        if e.key != self.rt.key() {
            return None;
        }
        let now = self.matches(&e.object);
        let type_ = match e.type_ {
            EventType::Modified => {
                let before = e.previous.as_deref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
            other if now => other.as_str(),
            _ => return None,
        };
        Some(self.line(type_, &e.object))
    }
}

fn error_line(err: &ApiError) -> Bytes {
    let mut s = json!({"type": "ERROR", "object": err.to_status()}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Starts a watch; the returned body streams until one of the end conditions.
pub fn start(shared: Arc<Shared>, req: WatchRequest) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let subscription = {
        let state = shared
            .state
            .lock()
            .expect("invariant: state lock not poisoned");
        let rv = req
            .resource_version
            .as_deref()
            .filter(|rv| !rv.is_empty() && *rv != "0");
        match (req.send_initial_events, rv) {
            (false, Some(rv)) => match rv.parse::<u64>() {
                Err(_) => {
                    let err = ApiError::bad_request(format!("invalid resource version: {rv}"));
                    initial.push(error_line(&err));
                    None
                }
                Ok(rv) => match state.watch_from(&req.rt.key(), rv) {
                    Ok((replay, sub)) => {
                        initial.extend(replay.iter().filter_map(|e| req.event_line(e)));
                        Some(sub)
                    }
                    Err(err) => {
                        initial.push(error_line(&err));
                        None
                    }
                },
            },
            _ => {
                let (objects, rv, sub) = state.snapshot(&req.rt.key());
                initial.extend(
                    objects
                        .iter()
                        .filter(|o| req.matches(o))
                        .map(|o| req.line("ADDED", o)),
                );
                if req.send_initial_events {
                    initial.push(req.bookmark(rv, true));
                }
                Some(sub)
            }
        }
    };
    // Subscribed now, not in the task: a close_watches() right after this returns must count.
    let close = shared.controls.close_watches.subscribe();
    tokio::spawn(run(shared, req, initial, subscription, close, tx));
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<Bytes, Infallible>(bytes), rx))
    }))
}

async fn run(
    shared: Arc<Shared>,
    req: WatchRequest,
    initial: Vec<Bytes>,
    subscription: Option<Subscription>,
    mut close: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let Some(mut events) = subscription else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);
    let mut bookmarks = tokio::time::interval(shared.config.bookmark_interval);
    bookmarks.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(e) => {
                    if let Some(line) = req.event_line(&e) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                // Too slow: end the stream like an overloaded apiserver would.
                Err(_) => return,
            },
            _ = bookmarks.tick(), if req.bookmarks => {
                // Drain under the lock so the bookmark never gets ahead of an undelivered event.
                let (rv, pending) = {
                    let state = shared.state.lock().expect("invariant: state lock not poisoned");
                    let mut pending = Vec::new();
                    loop {
                        match events.try_recv() {
                            Ok(e) => pending.push(e),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    (state.current_rv(), pending)
                };
                for e in pending {
                    if let Some(line) = req.event_line(&e) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.send(req.bookmark(rv, false)).await.is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = close.changed() => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
