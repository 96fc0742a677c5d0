//! One seed's verdict: the run, the checkers, counters of rare events, and on failure the
//! report a person reads: invariant, evidence, seed, options, fault plan, trace file and one
//! command that replays exactly this run.

use crate::checks::{check, Violation};
use crate::history::{json_lines, trace_hash, Entry, Ev, HostChange, Manner};
use crate::workers::orchsim::Orchsim;
use crate::workers::Worker;
use crate::world::faults::FaultPlan;
use crate::world::hosts::Host;
use crate::world::{self, Options};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The worker under test ([`crate::workers::Worker::name`]).
    pub worker: String,
    pub scenario: String,
    pub seed: u64,
    pub options: Options,
    pub plan: FaultPlan,
    pub trace_hash: String,
    pub sim_ms: u64,
    pub violations: Vec<Violation>,
    /// How often each rare event happened (so a green run shows what it exercised).
    pub counters: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    pub history: Vec<Entry>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn replay_command(options: &Options, seed: u64) -> String {
    match options.known_bug {
        None => format!("cargo run --release -- replay --scenario {} --seed {seed}", options.scenario),
        Some(b) => format!("cargo run --release -- replay --scenario {} --seed {seed} --known-bug {}", options.scenario, b.name()),
    }
}

/// The command that shrinks this seed's fault plan to the faults its failure needs.
pub fn shrink_command(options: &Options, seed: u64) -> String {
    replay_command(options, seed).replacen(" replay ", " shrink ", 1)
}

/// Every counter a verdict reports, so a summary shows what did *not* happen too.
pub const COUNTERS: [&str; 34] = [
    "requests",
    "hostile requests",
    "clients hung up mid-turn",
    "half-closed or slow requests",
    "duplicate deliveries sent",
    "409 in flight",
    "503 retry later",
    "replays served",
    "commits",
    "commits rejected by fence",
    "lease lost while working",
    "cancels",
    "turns overtaken by a cancel",
    "copilot calls in a latency spike",
    "copilot replies off the contract",
    "copilot calls failed or timed out",
    "copilot rate limits and late answers",
    "fields corrected",
    "turns after the end",
    "submissions",
    "duplicate submissions de-duplicated",
    "submissions delivered by a relay",
    "sink outages (deliveries refused)",
    "sink 5xx",
    "sink acks lost or late",
    "no-signal hand-offs",
    "turn limits reached",
    "redis partitions",
    "client links cut",
    "redis clock jumps",
    "worker clock skews",
    "worker crashes",
    "redis crashes",
    "redis writes lost in crashes",
];

fn counters(h: &[Entry]) -> BTreeMap<&'static str, u64> {
    let mut c: BTreeMap<&'static str, u64> = COUNTERS.iter().map(|k| (*k, 0)).collect();
    // Applied cancels (the commits with no idempotency key), by the fence each took: a turn
    // under the fence just below lost its lease to that cancel, not to a fault.
    let cancels: std::collections::BTreeSet<(&str, u64)> = h
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::ModelCommit { cid, fence, idem_key, .. } if idem_key.is_empty() => Some((cid.as_str(), *fence)),
            _ => None,
        })
        .collect();
    let overtaken = |cid: &str, fence: u64| cancels.contains(&(cid, fence + 1));
    // Per conversation, the data of its last applied commit: a commit that changes a field
    // already there is a correction.
    let mut data: BTreeMap<&str, &serde_json::Value> = BTreeMap::new();
    let mut add = |k: &'static str, n: u64| *c.entry(k).or_default() += n;
    for e in h {
        if let Ev::ModelCommit { cid, record, .. } = &e.ev {
            let now = &record["state"]["collectedData"];
            if let (Some(before), Some(after)) = (data.get(cid.as_str()).and_then(|d| d.as_object()), now.as_object()) {
                add("fields corrected", after.iter().filter(|(f, v)| before.get(*f).is_some_and(|b| b != *v)).count() as u64);
            }
            data.insert(cid, now);
        }
        match &e.ev {
            Ev::CopilotReply { misbehaviour: Some(m), .. } if m == "rate limited" || m == "answers after the deadline" => {
                add("copilot rate limits and late answers", 1)
            }
            Ev::Transition { from, .. } if from.is_terminal() => add("turns after the end", 1),
            Ev::Submitted { relayed: true, .. } => add("submissions delivered by a relay", 1),
            Ev::NoResponse { reason, .. } if reason.starts_with("hung up") => add("clients hung up mid-turn", 1),
            Ev::Invoke { manner: Some(Manner::HalfClosed | Manner::Slow { .. }), .. } => add("half-closed or slow requests", 1),
            Ev::ModelCommit { record, .. }
                if record["state"]["step"] == "needs_human"
                    && record["state"]["turns"].as_u64() == Some(u64::from(crate::contract::TURNS_MAX)) =>
            {
                add("turn limits reached", 1)
            }
            _ => {}
        }
        match &e.ev {
            Ev::Invoke { duplicate: true, .. } => add("duplicate deliveries sent", 1),
            Ev::Invoke { expect: Some(_), .. } => add("hostile requests", 1),
            Ev::Invoke { .. } => add("requests", 1),
            Ev::Response { status: 409, body, .. } if body["error"] == "cancelled" => {}
            Ev::Response { status: 409, .. } => add("409 in flight", 1),
            Ev::Response { status: 503, .. } => add("503 retry later", 1),
            Ev::Replayed { .. } => add("replays served", 1),
            Ev::LeaseLost { cid, fence, .. } | Ev::CommitRejected { cid, fence, .. } if overtaken(cid, *fence) => {
                add("turns overtaken by a cancel", 1)
            }
            Ev::LeaseLost { .. } => add("lease lost while working", 1),
            Ev::CommitRejected { .. } => add("commits rejected by fence", 1),
            Ev::ModelCommit { idem_key, .. } => {
                add("commits", 1);
                if idem_key.is_empty() {
                    add("cancels", 1);
                }
            }
            Ev::CopilotReply { spike, misbehaviour, .. } if *spike || misbehaviour.is_some() => {
                if *spike {
                    add("copilot calls in a latency spike", 1);
                }
                if misbehaviour.is_some() {
                    add("copilot replies off the contract", 1);
                }
            }
            Ev::CopilotCalled { ok: false, .. } => add("copilot calls failed or timed out", 1),
            Ev::SinkReceived { fault: Some(f), .. } if f == "down" => add("sink outages (deliveries refused)", 1),
            Ev::SinkReceived { fault: Some(f), .. } if f == "5xx" => add("sink 5xx", 1),
            Ev::SinkReceived { fault: Some(f), accepted, .. } if f == "ack lost" || f == "ack after the deadline" => {
                add("sink acks lost or late", 1);
                add(if *accepted { "submissions" } else { "duplicate submissions de-duplicated" }, 1);
            }
            Ev::SinkReceived { accepted: false, .. } => add("duplicate submissions de-duplicated", 1),
            Ev::SinkReceived { accepted: true, .. } => add("submissions", 1),
            Ev::Transition { from, to: crate::contract::Step::NeedsHuman, .. } if !from.is_terminal() => add("no-signal hand-offs", 1),
            Ev::HostFault { change, .. } if change.broken_link().and_then(Host::parse) == Some(Host::Redis) => add("redis partitions", 1),
            Ev::HostFault { change, .. } if matches!(change.broken_link().and_then(Host::parse), Some(Host::Worker(_))) => {
                add("client links cut", 1)
            }
            Ev::HostFault { host, change: HostChange::Crashed } => {
                add(if Host::parse(host) == Some(Host::Redis) { "redis crashes" } else { "worker crashes" }, 1)
            }
            Ev::RedisClockJumped { .. } => add("redis clock jumps", 1),
            Ev::RedisLostWrites { lost, .. } => add("redis writes lost in crashes", *lost),
            Ev::HostFault { change: HostChange::ClockSkewed, .. } => add("worker clock skews", 1),
            _ => {}
        }
    }
    c
}

/// Runs one seed with these options and checks it (orchsim's orchestrator, with
/// `options.known_bug` if any).
pub fn run_seed(options: &Options, seed: u64) -> Verdict {
    let plan = world::generate_plan(options, seed);
    run_plan(options, &plan, seed)
}

/// Runs an explicit plan (a shrunk one, or one read from a file) on orchsim's orchestrator.
pub fn run_plan(options: &Options, plan: &FaultPlan, seed: u64) -> Verdict {
    run_plan_with(&Orchsim { bug: options.known_bug }, options, plan, seed)
}

/// Runs `worker` in the world of `options` under `plan`, and checks the run.
pub fn run_plan_with(worker: &dyn Worker, options: &Options, plan: &FaultPlan, seed: u64) -> Verdict {
    let out = world::run_worker(worker, options, plan, seed);
    let violations = check(&out);
    Verdict {
        worker: worker.name(),
        scenario: options.scenario.clone(),
        seed,
        options: options.clone(),
        plan: plan.clone(),
        trace_hash: trace_hash(&out.history),
        sim_ms: out.sim_ms,
        counters: counters(&out.history),
        violations,
        history: out.history,
    }
}

/// Where traces go: `$CARGO_TARGET_DIR/orchsim/`, else `<workspace>/target/orchsim/`.
pub fn trace_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("orchsim"),
        None => {
            let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            crate_dir.parent().unwrap_or(crate_dir).join("target").join("orchsim")
        }
    }
}

/// A path as a person should read it: relative to the current directory when it lies under
/// it (`target/orchsim/calm-seed-3.trace.jsonl`), else as it is.
pub fn shown(path: &std::path::Path) -> String {
    let rel = std::env::current_dir().ok().and_then(|cwd| path.strip_prefix(&cwd).ok().map(std::path::Path::to_path_buf));
    rel.unwrap_or_else(|| path.to_path_buf()).display().to_string()
}

/// Writes the trace (JSON lines) and the run's options and plan; returns the trace path.
pub fn write_trace(v: &Verdict) -> std::io::Result<PathBuf> {
    write_trace_named(v, &format!("{}-seed-{}", v.scenario, v.seed))
}

/// The path of the `.run.json` that [`write_trace_named`] writes next to the trace.
pub fn run_file(base: &str) -> PathBuf {
    trace_dir().join(format!("{base}.run.json"))
}

/// As [`write_trace`], under the file name stem `base` (a shrunk run gets its own). A failing
/// run also gets its timeline page, `<base>.html` ([`crate::html`]).
pub fn write_trace_named(v: &Verdict, base: &str) -> std::io::Result<PathBuf> {
    let dir = trace_dir();
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join(format!("{base}.trace.jsonl"));
    std::fs::write(&trace, json_lines(&v.history))?;
    crate::runner::RunFile::of(v).write(&run_file(base))?;
    if !v.passed() {
        write_html(v, base)?;
    }
    Ok(trace)
}

/// The path of the timeline page [`write_html`] writes next to the trace.
pub fn html_file(base: &str) -> PathBuf {
    trace_dir().join(format!("{base}.html"))
}

/// Writes the run's timeline page ([`crate::html::page`]) as `<base>.html`; returns its path.
pub fn write_html(v: &Verdict, base: &str) -> std::io::Result<PathBuf> {
    let path = html_file(base);
    std::fs::create_dir_all(trace_dir())?;
    std::fs::write(&path, crate::html::page(v))?;
    Ok(path)
}

/// The failure report: what broke, the evidence, and how to get it back.
pub fn failure_report(v: &Verdict, trace: Option<&std::path::Path>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "INVARIANT VIOLATED in scenario {:?}, seed {} ({})", v.scenario, v.seed, v.worker);
    for x in v.violations.iter().take(10) {
        let _ = writeln!(s, "  [{}] at {} ms: {}", x.invariant, x.at_ms, x.evidence);
    }
    if v.violations.len() > 10 {
        let _ = writeln!(s, "  ... and {} more", v.violations.len() - 10);
    }
    let _ = writeln!(s, "options: {}", serde_json::to_string(&v.options).unwrap_or_default());
    let _ = writeln!(s, "fault plan: {}", serde_json::to_string(&v.plan).unwrap_or_default());
    let _ = writeln!(s, "trace hash: {}", v.trace_hash);
    if let Some(t) = trace {
        let _ = writeln!(s, "trace: {}", shown(t));
        if let Some(page) = t.to_str().and_then(|t| t.strip_suffix(".trace.jsonl")).map(|b| PathBuf::from(format!("{b}.html"))) {
            if page.exists() {
                let _ = writeln!(s, "timeline page: {}", shown(&page));
            }
        }
    }
    if !v.worker.starts_with("orchsim") {
        // A worker of the user's own: replayed through the library.
        match trace.and_then(|t| t.to_str()).and_then(|t| t.strip_suffix(".trace.jsonl")) {
            Some(base) => {
                let _ = writeln!(
                    s,
                    "reproduce: scenarios::runner::replay_file(&your_worker, \"{}.run.json\")",
                    shown(std::path::Path::new(base))
                );
                let _ = writeln!(s, "shrink the fault plan: scenarios::runner::shrink(&your_worker, &verdict)");
            }
            None => {
                let _ = writeln!(s, "reproduce: scenarios::runner::run_seed(&your_worker, {:?}, {})", v.scenario, v.seed);
            }
        }
    } else if world::generate_plan(&v.options, v.seed) == v.plan {
        let _ = writeln!(s, "reproduce: {}", replay_command(&v.options, v.seed));
        if !v.plan.faults.is_empty() {
            let _ = writeln!(s, "shrink the fault plan: {}", shrink_command(&v.options, v.seed));
        }
    } else {
        // An explicit plan (a shrunk one): the seed alone would regenerate the full plan.
        match trace.and_then(|t| t.to_str()).and_then(|t| t.strip_suffix(".trace.jsonl")) {
            Some(base) => {
                let _ = writeln!(s, "reproduce: cargo run --release -- replay --run {}.run.json", shown(std::path::Path::new(base)));
            }
            None => {
                let _ = writeln!(s, "reproduce: write this run (options, plan, seed) to a .run.json and `replay --run` it");
            }
        }
    }
    s
}

fn short(cid: &str) -> &str {
    &cid[..cid.len().min(8)]
}

/// One event as a line a person can scan; the JSON trace keeps every field.
pub fn describe(ev: &Ev) -> String {
    match ev {
        Ev::Invoke { req, user, worker, op, cid, key, query, duplicate, manner, .. } => format!(
            "#{req} {user} -> {worker} {op}{} key={} {}{}{}",
            cid.as_deref().map(|c| format!(" c={}", short(c))).unwrap_or_default(),
            key.as_deref().unwrap_or("-"),
            query.as_deref().map(|q| format!("{q:?}")).unwrap_or_default(),
            if *duplicate { " (duplicate)" } else { "" },
            match manner {
                Some(crate::history::Manner::HungUp { after_ms }) => format!(" (hangs up after {after_ms} ms)"),
                Some(crate::history::Manner::HalfClosed) => " (half-closes)".to_string(),
                Some(crate::history::Manner::Slow { send_ms }) => format!(" (sends over {send_ms} ms)"),
                None => String::new(),
            }
        ),
        Ev::Response { req, status, body, .. } => {
            let st = &body["workflowState"];
            if st.is_object() {
                format!(
                    "#{req} <- {status} step={} v{} data={} {}",
                    st["step"].as_str().unwrap_or("?"),
                    st["version"],
                    st["collectedData"],
                    if body["replayed"] == true { "(replayed)" } else { "" }
                )
            } else {
                format!("#{req} <- {status} {body}")
            }
        }
        Ev::NoResponse { req, reason } => format!("#{req} <- no answer: {reason}"),
        Ev::LeaseTaken { worker, cid, fence, version, .. } => format!("{worker} lease c={} fence={fence} (loaded v{version})", short(cid)),
        Ev::LeaseLost { worker, cid, fence } => format!("{worker} LEASE LOST c={} fence={fence}", short(cid)),
        Ev::CopilotCalled { worker, cid, fence, ok } => {
            format!("{worker} copilot c={} fence={fence} {}", short(cid), if *ok { "ok" } else { "FAILED" })
        }
        Ev::Transition { worker, cid, fence, from, to, events, .. } => {
            let evs: Vec<String> = events
                .iter()
                .map(|x| match (&x.field, &x.confidence) {
                    (Some(f), Some(c)) => format!("{f}={}({c:?})", x.value.as_deref().unwrap_or("")),
                    _ => x.kind.clone(),
                })
                .collect();
            format!("{worker} c={} fence={fence} {} -> {} on [{}]", short(cid), from.as_str(), to.as_str(), evs.join(", "))
        }
        Ev::Committed { worker, cid, fence, version, .. } => format!("{worker} committed c={} fence={fence} v{version}", short(cid)),
        Ev::CancelCommitted { worker, cid, fence, version, .. } => {
            format!("{worker} cancelled c={} fence={fence} v{version} (took it over)", short(cid))
        }
        Ev::CommitRejected { worker, cid, fence } => format!("{worker} COMMIT REJECTED c={} fence={fence}", short(cid)),
        Ev::Released { worker, cid, fence, released } => {
            format!("{worker} gave up c={} fence={fence}, lease {}", short(cid), if *released { "released" } else { "left to lapse" })
        }
        Ev::Replayed { worker, cid, version, idem_key, .. } => format!("{worker} replay c={} v{version} {idem_key}", short(cid)),
        Ev::Submitted { worker, cid, duplicate, .. } => {
            format!("{worker} submitted c={}{}", short(cid), if *duplicate { " (sink had it)" } else { "" })
        }
        Ev::ModelCommit { cid, fence, version, record, .. } => format!(
            "redis applied commit c={} fence={fence} v{version} step={}",
            short(cid),
            record["state"]["step"].as_str().unwrap_or("?")
        ),
        Ev::CopilotReply { cid, latency_ms, spike, misbehaviour, payload } => format!(
            "copilot c={} {latency_ms} ms{}{} {payload}",
            short(cid),
            if *spike { " (SPIKE)" } else { "" },
            misbehaviour.as_deref().map(|m| format!(" (MISBEHAVES: {m})")).unwrap_or_default()
        ),
        Ev::CopilotSawForeignData { cid, user, field, value } => format!("copilot c={} for {user} SAW {field}={value}", short(cid)),
        Ev::CopilotBadContext { cid, error, .. } => format!("copilot c={} BAD CONTEXT: {error}", short(cid)),
        Ev::SinkReceived { cid, accepted, fault, .. } => format!(
            "sink c={} {}{}",
            short(cid),
            if *accepted {
                "accepted"
            } else if fault.as_deref().is_some_and(|f| f == "down" || f == "5xx") {
                "refused"
            } else {
                "duplicate ignored"
            },
            fault.as_deref().map(|f| format!(" (SINK FAULT: {f})")).unwrap_or_default()
        ),
        Ev::HostFault { host, change } => format!("FAULT {host} {change}"),
        Ev::RedisClockJumped { delta_ms, offset_ms } => format!("FAULT redis clock jumped {delta_ms:+} ms (now {offset_ms:+} ms off)"),
        Ev::RedisLostWrites { lost, durability } => format!("FAULT redis crash LOST {lost} applied writes ({durability:?})"),
    }
}

/// Where two runs of one seed part: the first history entry that differs (index, simulated
/// time, both entries), or `None` if the histories are equal.
pub fn first_divergence(a: &[Entry], b: &[Entry]) -> Option<String> {
    let i = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))?;
    let side = |h: &[Entry]| match h.get(i) {
        Some(e) => format!("{} ms  {}", e.t_ms, describe(&e.ev)),
        None => format!("(history ends after {} entries)", h.len()),
    };
    let t = [a.get(i), b.get(i)].into_iter().flatten().map(|e| e.t_ms).min().unwrap_or(0);
    Some(format!("first divergence at history entry #{i} (t = {t} ms):\n      first run:  {}\n      second run: {}", side(a), side(b)))
}

/// A readable timeline of a run, one line per event.
pub fn timeline(h: &[Entry]) -> String {
    let mut s = String::new();
    for e in h {
        let _ = writeln!(s, "{:>8} ms  {}", e.t_ms, describe(&e.ev));
    }
    s
}
