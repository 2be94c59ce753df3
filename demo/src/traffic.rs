//! Continuous traffic through the gateway: one keep-alive connection per [`Client`], every
//! answer recorded with its time, so the live view, the verdicts and the chart all read the
//! same log.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use sandbox::{gateway::http, sim::server::POD_NAME_HEADER};
use tokio::{sync::watch, task::JoinHandle};

use crate::story::Client;

/// Pause between two requests of one connection: a few hundred requests per second per
/// connection, enough for tight intervals within seconds while leaving CPU to Envoy.
const PACE: Duration = Duration::from_millis(4);

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Since the demo started.
    pub at: Duration,
    /// Index into the clients the traffic was started with.
    pub client: usize,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200, with the body: the tag of the image of the pod that answered.
    Version(String),
    /// A status other than 200 from a pod (named in the answer's pod-name header), with the
    /// body.
    Rejected {
        status: u16,
        pod: String,
        body: String,
    },
    /// Anything else: a status other than 200 from the gateway itself, or a connection
    /// error.
    Failed(String),
}

impl Answer {
    pub fn failed(&self) -> bool {
        !matches!(self, Answer::Version(_))
    }

    /// Why it failed, in a few words; empty for a version.
    pub fn describe(&self) -> String {
        match self {
            Answer::Version(_) => String::new(),
            Answer::Rejected { status, pod, body } => format!("{status} {body:?} from pod {pod}"),
            Answer::Failed(why) => why.clone(),
        }
    }
}

impl Sample {
    pub fn version(&self) -> Option<&str> {
        match &self.answer {
            Answer::Version(v) => Some(v),
            Answer::Rejected { .. } | Answer::Failed(_) => None,
        }
    }
}

/// The answers so far, in time order (per connection; connections interleave).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Sample>>>);

impl Log {
    pub fn lock(&self) -> MutexGuard<'_, Vec<Sample>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, sample: Sample) {
        self.lock().push(sample);
    }
}

/// Running traffic; [`Traffic::stop`] ends it.
pub struct Traffic {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts one connection per client, each sending `GET /version` with its `user-agent`.
    pub fn start(gateway: SocketAddr, clients: &[Client], started: Instant, log: Log) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = clients
            .iter()
            .enumerate()
            .map(|(index, client)| {
                let log = log.clone();
                let stopped = stopped.clone();
                let user_agent = client.user_agent;
                tokio::spawn(async move {
                    let mut connection: Option<http::Client> = None;
                    while !*stopped.borrow() {
                        let answer = request(gateway, &mut connection, user_agent).await;
                        log.push(Sample {
                            at: started.elapsed(),
                            client: index,
                            answer,
                        });
                        tokio::time::sleep(PACE).await;
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One request on the connection, opening it first if needed; a failed connection is
/// dropped so the next request opens a new one, as any HTTP client would.
async fn request(
    gateway: SocketAddr,
    connection: &mut Option<http::Client>,
    user_agent: &str,
) -> Answer {
    let client = match connection {
        Some(client) => client,
        None => match http::Client::connect(gateway).await {
            Ok(client) => connection.insert(client),
            Err(e) => return Answer::Failed(format!("connect: {e}")),
        },
    };
    match client.get("/version", &[("user-agent", user_agent)]).await {
        Ok(reply) if reply.status == 200 => Answer::Version(reply.text()),
        Ok(reply) => match reply.header(POD_NAME_HEADER) {
            Some(pod) => Answer::Rejected {
                status: reply.status,
                pod: pod.to_owned(),
                body: reply.text(),
            },
            None => Answer::Failed(format!("{} {:?}", reply.status, reply.text())),
        },
        Err(e) => {
            *connection = None;
            Answer::Failed(format!("request: {e}"))
        }
    }
}
