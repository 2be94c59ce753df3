//! `higress-canary-demo` (run by `cargo xtask demo`): the seed's stories played end to end on
//! one machine, for a newcomer to see the whole system work.
//!
//! It starts the sandbox (fake API server, simulated workloads, a real Envoy running the
//! plugin from `dist/plugin.wasm`) and the real controller loop in-process, applies the seed
//! app, and plays each story of [`story::STORIES`] under continuous traffic through the
//! gateway: a canary release (10% → 30% → all) and an A/B release (only `user-agent: android`,
//! then all), approving each paused step; then an automatic release judged by metric analysis
//! (a real Prometheus scrapes the gateway) whose version answers 500 to 20% of requests, so
//! the analysis rolls it back. A live view shows the state; at the end a summary table judges
//! every step (observed share of the new version against the configured one, 99.9% Wilson
//! interval) and the rollback, and `report.html` charts the run. Exit status: 0 if every check
//! matched and no request failed other than the faulty version's 500s, 1 if not, 2 if the
//! demo could not run.
//!
//! Pure parts ([`judge`], [`report`], [`view`]'s rendering, [`story`]'s expectations) are
//! separate from the I/O ([`play`], [`monitor`], [`traffic`]). This is a tool: it may depend
//! on the controller and the sandbox; nothing may depend on it.

mod board;
mod explore;
mod judge;
mod monitor;
mod play;
mod report;
mod story;
mod traffic;
mod view;

use std::{
    fs,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use higress_canary::{metrics::Metrics, render::PluginRef, Settings};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use sandbox::{
    cluster::{Cluster, ClusterConfig},
    prometheus::Prometheus,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    board::Board,
    play::{Director, Pace, NAMESPACE},
    story::{Source, Story, CHART_GROUPS, CLIENTS, STORIES},
    traffic::{Log, Traffic},
    view::Screen,
};

#[derive(Debug, Parser)]
#[command(
    name = "higress-canary-demo",
    about = "Play the seed's canary and A/B releases on a local sandbox, with a live view, a \
             verdict per step and an HTML report"
)]
struct Cli {
    /// Wait for Enter before approving each step (default: approve after --step-seconds).
    #[arg(long)]
    interactive: bool,
    /// Keep the sandbox running after the stories, until Ctrl-C, and print commands to
    /// explore it.
    #[arg(long)]
    keep: bool,
    /// How long each step (and each finished release) is watched before moving on.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    step_seconds: u64,
    /// Where the report, the logs and the kubeconfig go [default: <workspace>/target/demo].
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The seed scenarios: `../shared/scenarios` next to the workspace, else the controller's
/// copies.
fn scenarios(root: &Path) -> Result<(PathBuf, Option<String>)> {
    let shared = root.join("../shared/scenarios");
    if shared.join("demo-app.yaml").is_file() {
        return Ok((shared, None));
    }
    let copies = root.join("controller/tests/fixtures");
    ensure!(
        copies.join("demo-app.yaml").is_file(),
        "no seed scenarios in {} nor in {}",
        shared.display(),
        copies.display()
    );
    let note = format!(
        "{} is absent: using the controller's copies of the seed scenarios in {}",
        shared.display(),
        copies.display()
    );
    Ok((copies, Some(note)))
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A story's Rollout: a seed scenario's, or one of the demo's own.
fn story_yaml(scenario_dir: &Path, story: &Story) -> Result<String> {
    match story.source {
        Source::Seed => read(scenario_dir, story.rollout_file),
        Source::Demo(yaml) => Ok(yaml.to_owned()),
    }
}

/// Logs of the controller and the sandbox go to a file, so the screen stays readable.
fn log_to_file(path: &Path) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}

/// Ctrl-C, or SIGTERM from a test or a process manager.
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

/// Enter presses on stdin, for `--interactive`. The reader thread ends with the process.
fn enter_presses() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.is_err() || tx.send(()).is_err() {
                break;
            }
        }
    });
    rx
}

struct Controller {
    stop: oneshot::Sender<()>,
    task: JoinHandle<higress_canary::Result<()>>,
}

impl Controller {
    fn start(
        cluster: &Cluster,
        plugin: PluginRef,
        metrics: Arc<Metrics>,
        prometheus_url: String,
    ) -> Self {
        let settings = Settings {
            plugin,
            metrics,
            prometheus: Some(higress_canary::prometheus::Endpoint::url(prometheus_url)),
            ..Settings::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(higress_canary::run(
            cluster.api.client(),
            settings,
            async move {
                let _ = stopped.await;
            },
        ));
        Self { stop, task }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the controller did not stop within 30 s")?
            .context("the controller task panicked")?
            .context("the controller failed")
    }
}

async fn run(cli: Cli) -> Result<bool> {
    let started = Instant::now();
    let root = workspace();
    let out_dir = cli
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("target/demo"));
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let log_path = out_dir.join("controller.log");
    log_to_file(&log_path)?;
    let wasm = Cluster::local_plugin_wasm();
    ensure!(
        wasm.is_file(),
        "no plugin at {}: run `cargo xtask demo` (or `cargo xtask wasm` first)",
        wasm.display()
    );
    let (scenario_dir, note) = scenarios(&root)?;

    let tty = std::io::stdout().is_terminal();
    let board = Board::new(started);
    let log = Log::default();
    let screen = Screen::start(
        board.clone(),
        log.clone(),
        CLIENTS,
        tty,
        log_path.display().to_string(),
    );
    board.event(format!(
        "higress-canary demo: controller and sandbox logs go to {}",
        log_path.display()
    ));
    if let Some(note) = note {
        board.event(note);
    }
    let enter = cli.interactive.then(enter_presses);
    let outcome = tokio::select! {
        outcome = play_all(&cli, &board, &log, &out_dir, &scenario_dir, &wasm, enter) => outcome,
        signal = shutdown_signal() => {
            signal?;
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    screen.stop().await;
    let (passed, summary, running) = outcome?;
    print!("{summary}");
    if let Some(running) = running {
        println!("{}", running.explore);
        shutdown_signal().await?;
        println!("stopping the controller and the sandbox");
        running.controller.stop().await?;
        drop(running.prometheus);
        drop(running.cluster);
    }
    Ok(passed)
}

/// The sandbox and controller left running by `--keep`.
struct Running {
    cluster: Cluster,
    prometheus: Prometheus,
    controller: Controller,
    explore: String,
}

async fn play_all(
    cli: &Cli,
    board: &Board,
    log: &Log,
    out_dir: &Path,
    scenario_dir: &Path,
    wasm: &Path,
    enter: Option<mpsc::UnboundedReceiver<()>>,
) -> Result<(bool, String, Option<Running>)> {
    board.activity(
        "starting the sandbox: API server, workload simulator, Envoy",
        None,
    );
    let mut config = ClusterConfig::default();
    config.gateway.oci_wasm = Some(wasm.to_path_buf());
    let cluster = Cluster::start(config)
        .await
        .context("starting the sandbox")?;
    let kubeconfig = out_dir.join("kubeconfig");
    cluster
        .api
        .write_kubeconfig(&kubeconfig)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    board.event(format!(
        "sandbox up: API server {}, gateway http://{}, Envoy admin http://{}",
        cluster.api.url(),
        cluster.gateway.listener_addr(),
        cluster.gateway.admin_addr()
    ));

    board.activity(
        "starting Prometheus, scraping the gateway's metrics every second",
        None,
    );
    let prometheus = Prometheus::start(&[cluster.gateway.admin_addr()])
        .await
        .context("starting Prometheus for the metric analysis")?;
    prometheus
        .wait_scraped(Duration::from_secs(30))
        .await
        .context("waiting for Prometheus to scrape the gateway")?;
    board.event(format!(
        "Prometheus up at {}, scraping http://{}/stats/prometheus every second",
        prometheus.url(),
        cluster.gateway.admin_addr()
    ));

    let metrics = Arc::new(Metrics::default());
    let plugin = PluginRef {
        url: format!("file://{}", wasm.display()),
        ..PluginRef::default()
    };
    let controller = Controller::start(&cluster, plugin.clone(), metrics.clone(), prometheus.url());
    board.activity("waiting for the controller to be ready", None);
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !metrics.is_ready() {
        ensure!(
            Instant::now() < ready_by,
            "the controller did not become ready within 30 s (see its log)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    board.event(format!(
        "controller running (in-process, as `higress-canary run --prometheus-url {}`)",
        prometheus.url()
    ));

    let mut director = Director::new(
        &cluster,
        board.clone(),
        log.clone(),
        Pace {
            step: Duration::from_secs(cli.step_seconds),
        },
        enter,
    );
    director.install_plugin(&plugin).await?;
    director
        .apply(&read(scenario_dir, "demo-app.yaml")?)
        .await?;
    let first = story::parse_rollout(&read(scenario_dir, STORIES[0].rollout_file)?)?;
    let start_version = current_tag(&cluster, &first).await?;
    director.wait_served(&start_version).await?;

    let started = board.lock().started;
    let traffic = Traffic::start(
        cluster.gateway.listener_addr(),
        CLIENTS,
        started,
        log.clone(),
    );
    board.event(format!(
        "traffic: one keep-alive connection per client ({}), continuously",
        CLIENTS
            .iter()
            .map(|c| format!("user-agent: {}", c.user_agent))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (stop_monitor, monitor) =
        monitor::start(cluster.api.client(), NAMESPACE, board.clone(), CLIENTS);
    let mut played = Ok(());
    for (index, story) in STORIES.iter().enumerate() {
        played = match story_yaml(scenario_dir, story) {
            Ok(yaml) => director.play(index, story, &yaml).await,
            Err(e) => Err(e),
        };
        if played.is_err() {
            break;
        }
    }
    traffic.stop().await;
    let _ = stop_monitor.send(true);
    let _ = monitor.await;
    played?;
    let (passed, summary) = conclude(board, log, &director, out_dir)?;
    if !cli.keep {
        controller.stop().await?;
        return Ok((passed, summary, None));
    }
    let last = STORIES
        .last()
        .context("invariant: there is at least one story")?;
    let rollout = story::parse_rollout(&story_yaml(scenario_dir, last)?)?;
    // The app serves the last version that was not rolled back; the next image to try comes
    // after the last one released (a rolled-back one included).
    let explore = explore_commands(
        &cluster,
        &rollout,
        &kubeconfig,
        director.version(),
        last.new_version,
    )
    .await?;
    Ok((
        passed,
        summary,
        Some(Running {
            cluster,
            prometheus,
            controller,
            explore,
        }),
    ))
}

/// Judges every window, writes the report and returns whether all passed, with the summary.
fn conclude(
    board: &Board,
    log: &Log,
    director: &Director<'_>,
    out_dir: &Path,
) -> Result<(bool, String)> {
    let duration = board.elapsed();
    let samples = log.lock().clone();
    let pods = board.lock().pod_versions.clone();
    let checks = judge::judge(&director.windows, &samples, &pods);
    let faulty = story::faulty_versions();
    let failures = judge::failures(&samples, &pods, &faulty);
    let passed = checks.iter().all(judge::Check::matched) && failures.genuine.is_empty();
    let titles: Vec<&str> = STORIES.iter().map(|s| s.title).collect();
    let names: Vec<&str> = CLIENTS.iter().map(|c| c.name).collect();
    let mut summary = format!(
        "\nsummary: each step's share of the new version, configured vs observed (99.9% Wilson \
         interval; ok when the configured share lies inside, from at least {} answers)\n\n",
        judge::MIN_REQUESTS
    );
    summary.push_str(&judge::summary_table(
        &titles,
        &director.windows,
        &checks,
        &names,
    ));
    for window in &director.windows {
        if let Some(requirement) = &window.requirement {
            summary.push_str(&format!(
                "\n{} {}: {} ({})",
                titles.get(window.story).copied().unwrap_or("?"),
                window.step,
                requirement.found,
                if requirement.met {
                    "as required"
                } else {
                    "NOT as required"
                }
            ));
        }
    }
    summary.push_str(&format!(
        "\n{} requests through the gateway in {:.0}s, {} failed",
        samples.len(),
        duration.as_secs_f64(),
        failures.genuine.len()
    ));
    if !failures.expected.is_empty() {
        summary.push_str(&format!(
            " (besides {} expected 500s from {}, released to fail them)",
            failures.expected.len(),
            faulty.join(", ")
        ));
    }
    summary.push('\n');
    for failure in failures.genuine.iter().take(10) {
        summary.push_str(&format!(
            "  failed at {:.1}s ({}): {}\n",
            failure.at.as_secs_f64(),
            CLIENTS[failure.client].name,
            failure.answer.describe()
        ));
    }
    let configured = board.lock().configured.clone();
    let page = report::html(&report::Input {
        stories: &director.stories,
        windows: &director.windows,
        checks: &checks,
        clients: CLIENTS,
        groups: CHART_GROUPS,
        samples: &samples,
        configured: &configured,
        duration,
        failures: failures.genuine.len(),
        expected_failures: failures.expected.len(),
        passed,
    });
    let report_path = out_dir.join("report.html");
    fs::write(&report_path, page).with_context(|| format!("writing {}", report_path.display()))?;
    summary.push_str(&format!("report: {}\n", report_path.display()));
    summary.push_str(if passed {
        "PASS: every step matched its configuration, every release ended as required, and no \
         request failed unexpectedly\n"
    } else {
        "FAIL: see the rows not marked ok above, and any failed requests\n"
    });
    Ok((passed, summary))
}

/// The Deployment the Rollout governs (its name and the object, read now).
async fn governed_deployment(
    cluster: &Cluster,
    rollout: &higress_canary::crd::Rollout,
) -> Result<(String, Deployment)> {
    let name = rollout
        .spec
        .object_ref
        .workload_ref
        .as_ref()
        .map(|w| w.name.clone())
        .context("the Rollout names no Deployment")?;
    let deployment = Api::<Deployment>::namespaced(cluster.api.client(), NAMESPACE)
        .get(&name)
        .await?;
    Ok((name, deployment))
}

/// The image tag the Rollout's Deployment runs now.
async fn current_tag(cluster: &Cluster, rollout: &higress_canary::crd::Rollout) -> Result<String> {
    let (_, deployment) = governed_deployment(cluster, rollout).await?;
    let image = deployment
        .spec
        .template
        .spec
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .context("the Deployment has no container image")?;
    Ok(image
        .rsplit_once(':')
        .map_or(image.as_str(), |(_, tag)| tag)
        .to_owned())
}

async fn explore_commands(
    cluster: &Cluster,
    rollout: &higress_canary::crd::Rollout,
    kubeconfig: &Path,
    version: &str,
    last_released: &str,
) -> Result<String> {
    let root = workspace();
    let kubectl = std::env::var_os("KUBECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/kubectl"));
    // `cargo xtask demo` builds the CLI next to this binary.
    let cli = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("higress-canary")))
        .filter(|path| path.is_file())
        .map_or_else(
            || "cargo run -q -p higress-canary --".to_owned(),
            |path| path.display().to_string(),
        );
    let canary = rollout.spec.strategy.canary.as_ref();
    let match_header = canary
        .and_then(|c| c.steps.iter().flat_map(|s| &s.matches).next())
        .and_then(|m| m.headers.first())
        .map(|h| (h.name.clone(), h.value.clone()));
    let override_header = canary
        .and_then(|c| c.higress.as_ref())
        .and_then(|h| h.r#override.as_ref())
        .map(|o| {
            o.header
                .clone()
                .unwrap_or_else(|| canary_core::config::DEFAULT_OVERRIDE_HEADER.to_owned())
        });
    let (deployment_name, deployment) = governed_deployment(cluster, rollout).await?;
    let drop_template_annotation = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .filter(|a| a.contains_key(sandbox::sim::ERROR_RATE_ANNOTATION))
        .map(|_| sandbox::sim::ERROR_RATE_ANNOTATION.to_owned());
    let container = deployment
        .spec
        .template
        .spec
        .and_then(|s| s.containers.into_iter().next())
        .context("the Deployment has no container")?;
    let automatic = canary
        .is_some_and(|c| !c.steps.is_empty() && c.steps.iter().all(|s| s.pause.duration.is_some()));
    let image = container.image.unwrap_or_default();
    let base = image.rsplit_once(':').map_or(image.as_str(), |(b, _)| b);
    let next = last_released
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok())
        .map_or_else(|| "next".to_owned(), |n| format!("v{}", n + 1));
    let kubeconfig = fs::canonicalize(kubeconfig).unwrap_or_else(|_| kubeconfig.to_path_buf());
    Ok(explore::commands(&explore::Explore {
        kubeconfig: kubeconfig.display().to_string(),
        kubectl: kubectl.display().to_string(),
        cli,
        gateway: cluster.gateway.listener_addr().to_string(),
        version: version.to_owned(),
        rollout: rollout.metadata.name.clone().unwrap_or_default(),
        deployment: deployment_name,
        container: container.name,
        image: base.to_owned(),
        next_version: next,
        match_header,
        override_header,
        automatic,
        drop_template_annotation,
    }))
}
