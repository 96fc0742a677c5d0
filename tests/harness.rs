//! The harness itself: determinism over many seeds, and a failure that prints a command which
//! reproduces the same run.

use scenarios::checks::{Invariant, Violation};
use scenarios::find;
use scenarios::report::{failure_report, run_file, run_plan, write_trace_named, Verdict};

/// Same seed, same trace hash: every seed is run twice, the second time on another thread
/// (so per-thread randomness such as std's `RandomState` would show).
#[test]
fn same_seed_twice_gives_the_same_trace_hash_over_many_seeds() {
    let seeds: u64 = std::env::var("SIM_DETERMINISM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let sc = find("swarm").unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..seeds {
        let first = sc.run(seed);
        let second = std::thread::spawn(move || find("swarm").unwrap().run(seed)).join().unwrap();
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} is not deterministic");
        assert!(!first.history.is_empty());
        distinct.insert(first.trace_hash);
    }
    // Different seeds explore different runs (a constant hash would make this test vacuous).
    assert!(distinct.len() as u64 > seeds * 9 / 10, "only {} distinct traces in {seeds} seeds", distinct.len());
}

/// A deliberately broken checker (it calls any replayed answer a violation) makes a seed fail;
/// the report names one command, and running that command reproduces the same trace hash.
#[test]
fn a_failing_seed_prints_a_command_that_reproduces_its_trace() {
    let sc = find("duplicates").unwrap();
    let broken = |v: &Verdict| -> Vec<Violation> {
        let n = v.counters.get("replays served").copied().unwrap_or(0);
        if n > 0 {
            vec![Violation { invariant: Invariant::Never, at_ms: 0, evidence: format!("test-only: no replays; {n} replays served") }]
        } else {
            vec![]
        }
    };
    let mut failing = None;
    for seed in 0..50 {
        let mut v = sc.run(seed);
        v.violations = broken(&v);
        if !v.violations.is_empty() {
            failing = Some(v);
            break;
        }
    }
    let v = failing.expect("the broken checker fired on no seed in 50");
    let report = failure_report(&v, None);
    let cmd = report.lines().find_map(|l| l.strip_prefix("reproduce: ")).expect("report has a reproduce line").to_string();
    assert_eq!(cmd, format!("cargo run --release -- replay --scenario duplicates --seed {}", v.seed));
    assert!(report.contains("test-only: no replays") && report.contains(&v.trace_hash));

    // Run exactly the arguments of that command with the binary cargo built for this test.
    let args: Vec<&str> = cmd.split_once(" -- ").unwrap().1.split(' ').collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchsim")).args(&args).arg("--quiet").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hash =
        stdout.lines().find_map(|l| l.split_once("trace hash ").map(|(_, h)| h.trim().to_string())).expect("replay prints the trace hash");
    assert_eq!(hash, v.trace_hash, "the replay command did not reproduce the run:\n{stdout}");
}

/// A crash must not make a run depend on what the process ran before. turmoil drops a crashed
/// host's tasks in an order that follows tokio's process-wide task ids; the world therefore
/// powers a host off (cut off first, so its dying sockets send nothing). Here the global task
/// id counter is moved on by 1..=3 between runs of the same crash seeds: the traces must agree.
/// (Without the power-off, seeds 14, 44 and 53 of these differ.)
#[test]
fn a_crash_seed_gives_the_same_trace_whatever_ran_before_it() {
    let sc = find("crashes").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut crashed = 0;
    for seed in 0..60 {
        let first = sc.run(seed);
        crashed += first.counters.get("worker crashes").copied().unwrap_or(0);
        for shift in 1..=3 {
            for _ in 0..shift {
                rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            }
            assert_eq!(sc.run(seed).trace_hash, first.trace_hash, "crashes seed {seed} changed after {shift} unrelated tasks");
        }
    }
    assert!(crashed > 0, "no worker crashed in 60 seeds: the test proves nothing");
}

/// The faults reach the protocol's hard paths: leases lapse under working turns, stale
/// commits are refused by the fence, clocks are off, client links drop answers, workers and
/// Redis crash and come back. Counted over the first seeds of `partitions`, `crashes`, `clocks`
/// and `links`, with every invariant holding.
#[test]
fn partitions_clock_jumps_and_crashes_reach_lease_loss_and_fence_rejection() {
    let mut total = std::collections::BTreeMap::<&str, u64>::new();
    for (name, seeds) in [("partitions", 0..60u64), ("crashes", 0..20u64), ("clocks", 0..10u64), ("links", 0..10u64)] {
        let sc = find(name).unwrap();
        for seed in seeds {
            let v = sc.run(seed);
            assert!(v.passed(), "{name} seed {seed}: {:?}", v.violations);
            for (k, n) in &v.counters {
                *total.entry(k).or_default() += n;
            }
        }
    }
    for must in [
        "lease lost while working",
        "commits rejected by fence",
        "redis partitions",
        "client links cut",
        "redis clock jumps",
        "worker crashes",
        "redis crashes",
    ] {
        assert!(total.get(must).copied().unwrap_or(0) > 0, "{must}: never happened: {total:?}");
    }
}

/// Shrinking on real runs: a test-only failure ("a lease was lost while working") found on a
/// seed with several faults shrinks to fewer faults that still fail, and the shrunk run, written
/// to its file, replays with the binary to the same trace hash.
#[test]
fn a_failing_plan_shrinks_to_fewer_faults_and_the_shrunk_run_replays_from_its_file() {
    let sc = find("partitions").unwrap();
    let lost = |v: &Verdict| v.counters.get("lease lost while working").copied().unwrap_or(0) > 0;
    let (seed, v) = (0..50u64)
        .map(|s| (s, sc.run(s)))
        .find(|(_, v)| lost(v) && v.plan.faults.len() >= 4)
        .expect("no partitions seed in 50 lost a lease with 4 or more faults");
    let shrunk = v.plan.shrink(|p| lost(&run_plan(&v.options, p, seed)));
    assert!(shrunk.plan.faults.len() < v.plan.faults.len(), "nothing shrunk: {:?}", shrunk.plan);
    let small = run_plan(&v.options, &shrunk.plan, seed);
    assert!(lost(&small), "the shrunk plan no longer fails");

    let base = format!("test-shrunk-partitions-{seed}");
    write_trace_named(&small, &base).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchsim"))
        .args(["replay", "--quiet", "--run"])
        .arg(run_file(&base))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&serde_json::to_string(&shrunk.plan).unwrap()), "replay used another plan:\n{stdout}");
    let hash = stdout.lines().find_map(|l| l.split_once("trace hash ").map(|(_, h)| h.trim().to_string())).expect("replay prints the hash");
    assert_eq!(hash, small.trace_hash, "the shrunk run did not replay from its file:\n{stdout}");
}

/// A run file edited into options that cannot make a run is refused with every problem named,
/// and one that is not a run file at all says so: exit status 2, nothing run, no panic.
#[test]
fn a_run_file_with_impossible_options_is_refused_with_its_problems() {
    let v = find("calm").unwrap().run(0);
    let base = "test-bad-options";
    write_trace_named(&v, base).unwrap();
    let path = run_file(base);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["options"]["topology"]["workers"] = 0.into();
    json["options"]["network"]["net_latency_ms"] = serde_json::json!([9, 2]);
    std::fs::write(&path, json.to_string()).unwrap();
    let replay =
        |p: &std::path::Path| std::process::Command::new(env!("CARGO_BIN_EXE_orchsim")).args(["replay", "--run"]).arg(p).output().unwrap();
    let out = replay(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("workers") && stderr.contains("net_latency_ms (9, 2)"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::write(&path, "{\"scenario\": 3}").unwrap();
    let out = replay(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a run file"));
}

/// `lossy-redis` is what a user reads before choosing Redis's durability: under `appendfsync
/// everysec` or a failover to a lagging replica, a crash loses acknowledged writes, and the
/// harness says so — an acknowledged field missing from the final state, or a fence counter that
/// went backwards so a later lease reused a fence — and cuts the fault plan down to the crash
/// that did it.
#[test]
fn lossy_redis_reports_lost_acknowledged_data_and_shrinks_to_the_crash() {
    use scenarios::checks::Invariant;
    use scenarios::world::faults::Fault;
    let sc = find("lossy-redis").unwrap();
    assert!(!sc.in_default, "lossy-redis shows a setting's losses; it is not part of the default set");
    let loses = |v: &Verdict| v.violations.iter().any(|x| x.invariant == Invariant::LostData || x.invariant == Invariant::FencedWriter);
    let v = (0..30).map(|seed| sc.run(seed)).find(loses).expect("no lossy-redis seed in 30 lost an acknowledged write");
    assert!(v.counters["redis writes lost in crashes"] > 0, "a loss was reported without a lost write: {:?}", v.violations);
    let report = failure_report(&v, None);
    assert!(report.contains("reproduce: cargo run --release -- replay --scenario lossy-redis"), "{report}");

    let shrunk = v.plan.shrink(|p| loses(&run_plan(&v.options, p, v.seed)));
    assert!(loses(&run_plan(&v.options, &shrunk.plan, v.seed)), "the shrunk plan no longer loses anything");
    assert!(shrunk.plan.faults.len() <= v.plan.faults.len());
    assert!(
        shrunk.plan.faults.iter().any(|(_, f)| matches!(f, Fault::RedisCrash { .. })),
        "a loss without a Redis crash: {:?}",
        shrunk.plan
    );
    // The same seed under `appendfsync always` (the default) loses nothing.
    let mut safe = v.options.clone();
    safe.topology.redis_durability = sim::redis_model::Durability::FsyncAlways;
    let kept = run_plan(&safe, &v.plan, v.seed);
    assert!(kept.passed(), "the same crashes under appendfsync always: {:?}", kept.violations);
}

/// Every expectation names a counter the report keeps (a misspelt one would never be reached,
/// or never fire), and over the default seeds every `sometimes` is reached and every `never`
/// stays at zero.
#[test]
fn every_scenario_meets_its_expectations_over_its_default_seeds() {
    let seeds: u64 = std::env::var("SIM_EXPECTATION_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    for sc in scenarios::SCENARIOS {
        for c in sc.sometimes.iter().chain(sc.never) {
            assert!(scenarios::report::COUNTERS.contains(c), "scenario {}: no counter named {c:?}", sc.name);
        }
    }
    for sc in scenarios::default_set() {
        let mut totals: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for seed in 0..seeds {
            let v = sc.run(seed);
            assert!(sc.never_reached(&v).is_empty(), "{} seed {seed}: {:?}", sc.name, sc.never_reached(&v));
            for (k, n) in &v.counters {
                *totals.entry(k).or_default() += n;
            }
        }
        let unmet = sc.unmet_sometimes(&totals);
        assert!(unmet.is_empty(), "{}: not reached in {seeds} seeds: {unmet:?}", sc.name);
    }
}

/// A scenario's expectations can fail: a `never` counter reached becomes a violation of that
/// seed, and a `sometimes` counter nobody reached is reported unmet.
#[test]
fn expectations_fire_when_broken() {
    let sc = find("duplicates").unwrap();
    let mut v = sc.run(0);
    v.counters.insert("503 retry later", 2);
    let broken = sc.never_reached(&v);
    assert!(broken.iter().any(|x| x.invariant == Invariant::Never && x.evidence.contains("503 retry later")), "{broken:?}");
    let nothing = std::collections::BTreeMap::new();
    assert_eq!(sc.unmet_sometimes(&nothing), sc.sometimes.to_vec());
}

/// A world in which nothing works is not a pass: with no worker to answer, no conversation is
/// ever created, and the progress check says which users got nothing done.
#[test]
fn a_run_in_which_nothing_works_fails_on_progress() {
    use scenarios::workers::{Deploy, Deployment, Serving, Worker, WorkerHost};
    /// A worker whose hosts never listen: every request is refused.
    struct Mute;
    impl Worker for Mute {
        fn name(&self) -> String {
            "mute".into()
        }
        fn deploy(&self, _: &Deploy) -> Box<dyn Deployment> {
            Box::new(Mute)
        }
    }
    impl Deployment for Mute {
        fn serve(&self, _: WorkerHost) -> Serving {
            Box::pin(std::future::pending())
        }
        fn applied_writes(&self, _: &[sim::redis_model::Write]) -> Vec<scenarios::history::Entry> {
            Vec::new()
        }
        fn conversation(&self, _: Option<&mut sim::redis_model::Model>, _: u64, _: &str) -> Option<scenarios::contract::Conversation> {
            None
        }
        fn effects_pending(&self, _: Option<&mut sim::redis_model::Model>, _: u64) -> bool {
            false
        }
    }
    let v = find("calm").unwrap().run_worker(&Mute, 0);
    assert!(
        v.violations.iter().any(|x| x.invariant == Invariant::Progress && x.evidence.contains("set out to create")),
        "{:?}",
        v.violations
    );
}

/// Regression, found by the attackers: `swarm` seed 11 sends a JSON array as a request body
/// (`["yes"]` or `["lead"]`), which serde's derived `Deserialize` took as the object (a turn
/// applied, a conversation created). The contract says 400; bodies must be JSON objects.
/// (Checked: with the object check in `http::parse_body` removed, this seed fails on invariant 13.)
#[test]
fn regression_swarm_seed_11_a_json_array_body_is_a_400() {
    let v = find("swarm").unwrap().run(11);
    let arrays =
        v.history.iter().filter(|e| matches!(&e.ev, scenarios::history::Ev::Invoke { expect: Some(x), .. } if x == &vec![400])).count();
    assert!(arrays > 0, "seed 11 no longer sends malformed requests: the regression test lost its teeth");
    assert!(v.passed(), "{:?}", v.violations);
}

/// Found by the hang-up users: a turn whose client closed the connection before the answer was
/// dropped with its request handler — after it had taken the lease — so the lease and the key's
/// in-flight marker stayed until the TTL (the same key answered 409 meanwhile) and the turn's
/// work was lost (invariant 14). Turns now run detached from their connection.
/// (Checked: with `http::serve`'s `half_close(true)` and `detached` removed, this seed fails.)
#[test]
fn regression_calm_seed_109_a_turn_whose_client_hangs_up_still_ends() {
    let v = find("calm").unwrap().run(109);
    let hung_up = v
        .history
        .iter()
        .filter(|e| matches!(&e.ev, scenarios::history::Ev::NoResponse { reason, .. } if reason.starts_with("hung up")))
        .count();
    assert!(hung_up > 0, "seed 109 no longer hangs up mid-turn: the regression test lost its teeth");
    assert!(v.passed(), "{:?}", v.violations);
}

/// Found by the same users: a request whose client half-closed its connection after sending
/// it (`nc -N`, HTTP/1.0 clients) got no answer at all — hyper took the end of the request
/// stream for a hang-up (invariant 8). Half-closed requests are now answered.
/// Found at calm seed 11; as the world grew (the outbox relay, the sink host) schedules moved
/// and the seeds that half-close moved with them, so the test keeps the seeds that did, and
/// needs at least one of them to half-close still. (Checked: with `half_close(false)` each of
/// 10, 14, 21, 55 failed on invariant 8 when it was added.)
#[test]
fn regression_calm_seeds_that_half_close_get_their_answers() {
    use scenarios::history::{Ev, Manner};
    let mut seen = 0;
    for seed in [10, 11, 14, 21, 55] {
        let v = find("calm").unwrap().run(seed);
        let half_closed: Vec<u64> = v
            .history
            .iter()
            .filter_map(|e| match &e.ev {
                Ev::Invoke { req, manner: Some(Manner::HalfClosed), .. } => Some(*req),
                _ => None,
            })
            .collect();
        seen += half_closed.len();
        let answered = v.history.iter().filter(|e| matches!(&e.ev, Ev::Response { req, .. } if half_closed.contains(req))).count();
        assert_eq!(answered, half_closed.len(), "seed {seed}: {:?}", v.violations);
        assert!(v.passed(), "seed {seed}: {:?}", v.violations);
    }
    assert!(seen > 0, "none of these seeds half-closes a request any more: the regression test lost its teeth");
}

/// Found by the embedded world (worker clock skew): a turn waited 12.5 s for a busy lease
/// although the acquire deadline is 1.5 s, because the deadline was measured on the worker's
/// wall clock, which had stepped back (invariant 8); and the lease it waited for was one that
/// had lapsed and come back to life, since `MemStore` kept a lapsed holder on commit and the
/// clock's step back made it valid again. The deadline is a monotonic duration now, and a
/// released holder is dropped whether or not it had lapsed (unit tests in `orchestrator`,
/// which fail without the fixes). Found under the user rates of commit 679be77; the rates have
/// changed since, so this seed now keeps only its clock steps back (asserted), not the exact
/// schedule that exposed the bugs.
#[test]
fn regression_embedded_seed_6508_a_clock_stepping_back_stretches_no_deadline_and_revives_no_lease() {
    let v = find("embedded").unwrap().run(6508);
    let backward =
        v.plan.faults.iter().any(|(_, f)| matches!(f, scenarios::world::faults::Fault::WorkerClockSkew { jump_ms, .. } if *jump_ms < 0));
    assert!(backward, "seed 6508 no longer steps the worker's clock back: the regression test lost its teeth");
    assert!(v.passed(), "{:?}", v.violations);
}

/// Cancel against a slow Copilot, in the simulation (issue 11): every user presses cancel
/// part way, while every Copilot call takes 3 s (a latency spike over the whole run, under the
/// lease TTL so leases hold), on a world of millisecond resolution. Each cancel that found a turn holding the lease answers within
/// 100 ms of simulated time, that turn never commits, and every invariant holds. Seeded: the
/// same seeds give the same runs.
#[test]
fn a_cancel_answers_at_once_while_a_turn_waits_three_seconds_on_copilot() {
    use scenarios::history::Ev;
    use scenarios::world::faults::{Fault, FaultPlan};
    let sc = find("calm").unwrap();
    let mut overtaken = 0;
    for seed in 0..6 {
        let mut o = sc.options(seed);
        o.workload.cancel_pct = 100;
        // A millisecond's resolution (the default tick is 10-20 ms, a hop per tick), and a
        // network of 1-2 ms a hop, as on one rack.
        o.network.tick_ms = 1;
        o.network.net_latency_ms = (1, 2);
        o.orchestrator.lease_ttl_ms = 6_000;
        o.orchestrator.lease_extend_every_ms = 2_000;
        let plan = FaultPlan { faults: vec![(0, Fault::CopilotLatencySpike { duration_ms: o.faults.heal_at_ms, latency_ms: 3_000 })] };
        let v = run_plan(&o, &plan, seed);
        assert_eq!(v.violations, vec![], "seed {seed}");
        let h = &v.history;
        // The lease each turn held, while it held it: (cid, fence) → taken at.
        for (i, e) in h.iter().enumerate() {
            let Ev::Invoke { req, op, cid: Some(cid), .. } = &e.ev else { continue };
            if op != "cancel" {
                continue;
            }
            let answered = h[i..].iter().find_map(|a| match &a.ev {
                Ev::Response { req: r, status: 200, body, .. } if r == req && body["result"] == "cancelled" => Some(a.t_ms),
                _ => None,
            });
            let Some(answered) = answered else { continue };
            // Turns of this conversation holding the lease when the cancel was sent.
            let holders: Vec<u64> = h[..i]
                .iter()
                .filter_map(|x| match &x.ev {
                    Ev::LeaseTaken { cid: c, fence, .. } if c == cid => Some(*fence),
                    _ => None,
                })
                .filter(|f| {
                    !h[..i].iter().any(|x| {
                        matches!(&x.ev, Ev::Committed { cid: c, fence, .. } | Ev::Released { cid: c, fence, .. } if c == cid && fence == f)
                    })
                })
                .collect();
            if holders.is_empty() {
                continue;
            }
            overtaken += 1;
            let took = answered - e.t_ms;
            if took > 100 && std::env::var("DBG").is_ok() {
                for x in h.iter().filter(|x| x.t_ms >= e.t_ms.saturating_sub(50) && x.t_ms <= answered + 10) {
                    eprintln!("{} {:?}", x.t_ms, x.ev);
                }
            }
            assert!(
                took <= 100,
                "seed {seed}: cancel #{req} on {cid} took {took} ms of simulated time while fence {holders:?} held the lease"
            );
            for f in &holders {
                let committed = h.iter().any(|x| matches!(&x.ev, Ev::Committed { cid: c, fence, .. } if c == cid && fence == f));
                assert!(!committed, "seed {seed}: the turn under fence {f} committed after cancel #{req} on {cid}");
            }
        }
    }
    assert!(overtaken >= 3, "only {overtaken} cancels met a turn holding the lease: the test shows nothing");
    eprintln!("{overtaken} cancels overtook a turn waiting on a 3 s Copilot call, each answered within 100 ms");
}

/// Found by `explore --seeds 10000` (links seed 8401): a turn's body was lost when its client's
/// link was cut while sending it, and the server answered 408 once the body deadline passed —
/// the right answer, which invariant 8 took for the server's fault. A 408 is now excused, as a
/// missing answer is, when the request's link was cut or its worker down meanwhile.
#[test]
fn regression_links_seed_8401_a_body_lost_to_a_link_cut_is_a_408() {
    let v = find("links").unwrap().run(8401);
    let timed_out = v.history.iter().filter(|e| matches!(&e.ev, scenarios::history::Ev::Response { status: 408, .. })).count();
    assert!(timed_out > 0, "seed 8401 no longer loses a body to a link cut: the regression test lost its teeth");
    assert!(v.passed(), "{:?}", v.violations);
}
