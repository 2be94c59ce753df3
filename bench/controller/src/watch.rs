//! One object, watched: every version the benchmark's watch saw, with the instant it arrived.
//! The arrival times date the controller's writes (its status write, its WasmPlugin write)
//! without asking anything of the controller.

use std::{
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use futures::StreamExt;
use kube::{
    api::{Api, DynamicObject},
    runtime::{watcher, WatchStreamExt},
};
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

type History = Arc<Mutex<Vec<(Instant, Value)>>>;

pub struct Watched {
    what: String,
    history: History,
    changed: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Watched {
    /// Watches the object `name` of `api` from now on.
    pub fn start(api: Api<DynamicObject>, name: &str) -> Self {
        let history: History = Arc::default();
        let (tx, changed) = watch::channel(0);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let recorded = history.clone();
        let task = tokio::spawn(async move {
            let mut objects = pin!(watcher(api, config).default_backoff().applied_objects());
            while let Some(object) = objects.next().await {
                let Ok(object) = object else { continue };
                let Ok(value) = serde_json::to_value(&object) else {
                    continue;
                };
                let mut history = recorded.lock().unwrap_or_else(PoisonError::into_inner);
                history.push((Instant::now(), value));
                tx.send_replace(history.len());
            }
        });
        Self {
            what: name.to_owned(),
            history,
            changed,
            task,
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Value)>> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest version seen.
    pub fn latest(&self) -> Option<Value> {
        self.history().last().map(|(_, v)| v.clone())
    }

    /// Waits until the latest version satisfies `pred`, and returns it.
    pub async fn until(
        &self,
        what: &str,
        patience: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut changed = self.changed.clone();
        loop {
            if let Some(latest) = self.latest().filter(|v| pred(v)) {
                return Ok(latest);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("{}: the watch ended", self.what),
                Err(_) => {
                    // The status says where a Rollout is; a WasmPlugin has only its spec.
                    let latest = self.latest().map(|v| match v.get("status") {
                        Some(status) if !status.is_null() => status.clone(),
                        _ => v.get("spec").cloned().unwrap_or_default(),
                    });
                    let mut text = serde_json::to_string(&latest).unwrap_or_default();
                    text.truncate(1_000);
                    bail!(
                        "{}: no {what} within {patience:?}; last seen: {text}",
                        self.what
                    );
                }
            }
        }
    }

    /// When the first version arriving after `since` that satisfies `pred` arrived.
    pub fn first_after(&self, since: Instant, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        self.history()
            .iter()
            .find(|(at, v)| *at >= since && pred(v))
            .map(|(at, _)| *at)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}
