//! What the demo knows right now, shared between the director (what it is doing), the monitor
//! (what the cluster looks like) and the screen (which draws it).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// The shared state; cheap to clone.
#[derive(Clone)]
pub struct Board(Arc<Mutex<State>>);

#[derive(Debug, Clone)]
pub struct State {
    pub started: Instant,
    pub story: Option<StoryState>,
    pub activity: Activity,
    pub world: World,
    /// Messages not yet printed by the screen, with their time.
    pub events: Vec<(Duration, String)>,
    /// What the gateway is configured to send to the new version, per client, whenever it
    /// changed (for the report's chart).
    pub configured: Vec<ConfigPoint>,
    /// The image tag of every pod seen so far, by pod name (never forgotten: answers are
    /// attributed to a version after the pod is gone).
    pub pod_versions: BTreeMap<String, String>,
}

/// The story being played.
#[derive(Debug, Clone, PartialEq)]
pub struct StoryState {
    pub index: usize,
    pub count: usize,
    pub title: String,
    pub rollout: String,
    pub from_version: String,
    pub new_version: String,
}

/// What the director is doing, since when, and until when if it knows.
#[derive(Debug, Clone)]
pub struct Activity {
    pub text: String,
    pub since: Instant,
    pub deadline: Option<Instant>,
}

/// The cluster as the monitor last read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    pub rollout: Option<RolloutView>,
    /// Per version (image tag): (ready, all) pods.
    pub pods: BTreeMap<String, (u32, u32)>,
    /// The last read failed (shown, not fatal: the director's own reads decide).
    pub error: Option<String>,
}

/// One Rollout, as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub name: String,
    pub phase: String,
    /// (current, count), during a release.
    pub step: Option<(i32, usize)>,
    pub state: String,
    /// The routing the controller asks of the gateway right now: "weight 10%", "-".
    pub config: String,
    /// The latest metric analysis run, when the Rollout has one.
    pub analysis: Option<AnalysisView>,
}

/// The latest analysis run of a Rollout, as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisView {
    /// `step 1 Failing, 1 failed run in a row; 412 canary responses`.
    pub summary: String,
    /// Per check: `success-rate 80.1% (threshold >= 95%) Fail`.
    pub checks: Vec<String>,
}

/// From `at` on, the configured share of the new version per client.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigPoint {
    pub at: Duration,
    pub story: usize,
    pub expected: Vec<f64>,
}

impl Board {
    pub fn new(started: Instant) -> Self {
        Self(Arc::new(Mutex::new(State {
            started,
            story: None,
            activity: Activity {
                text: "starting".to_owned(),
                since: started,
                deadline: None,
            },
            world: World::default(),
            events: Vec::new(),
            configured: Vec::new(),
            pod_versions: BTreeMap::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time since the demo started.
    pub fn elapsed(&self) -> Duration {
        self.lock().started.elapsed()
    }

    /// A message for the screen's log.
    pub fn event(&self, text: impl Into<String>) {
        let mut state = self.lock();
        let at = state.started.elapsed();
        state.events.push((at, text.into()));
    }

    pub fn activity(&self, text: impl Into<String>, deadline: Option<Instant>) {
        self.lock().activity = Activity {
            text: text.into(),
            since: Instant::now(),
            deadline,
        };
    }

    pub fn set_story(&self, story: StoryState) {
        self.lock().story = Some(story);
    }

    /// The cluster as just read; its pods are remembered by name.
    pub fn set_world(&self, world: World, pods: impl IntoIterator<Item = (String, String)>) {
        let mut state = self.lock();
        state.world = world;
        state.pod_versions.extend(pods);
    }

    /// Records the configured shares, as read at `at`, if they changed.
    pub fn configured(&self, at: Duration, story: usize, expected: Vec<f64>) {
        let mut state = self.lock();
        let unchanged = state
            .configured
            .last()
            .is_some_and(|p| p.story == story && p.expected == expected);
        if !unchanged {
            state.configured.push(ConfigPoint {
                at,
                story,
                expected,
            });
        }
    }
}
