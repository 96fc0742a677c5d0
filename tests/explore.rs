//! The explore engine as a user meets it: a determinism mismatch names where the two runs part,
//! exploration that runs for a time (and stops on Ctrl-C) prints its summary, and the failing
//! seeds it finds are kept in a regressions file that the seeded tests run.

use scenarios::explore::{explore, explore_worker, Explore};
use scenarios::history::Entry;
use scenarios::report::first_divergence;
use scenarios::workers::orchsim::Orchsim;
use scenarios::workers::{Deploy, Deployment, Reports, Serving, Worker, WorkerHost};
use scenarios::{find, KnownBug, Scenario};
use sim::redis_model::{Model, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// orchsim, except that every other deployment starts its workers 150 ms late: a system whose
/// runs of one seed differ, as one reading the wall clock or a global counter would.
struct Drifting {
    deployments: AtomicU64,
}

struct DriftingDeployment {
    inner: Box<dyn Deployment>,
    late: bool,
}

impl Worker for Drifting {
    fn name(&self) -> String {
        "drifting".into()
    }
    fn deploy(&self, run: &Deploy) -> Box<dyn Deployment> {
        let late = self.deployments.fetch_add(1, Ordering::SeqCst) % 2 == 1;
        Box::new(DriftingDeployment { inner: Orchsim { bug: None }.deploy(run), late })
    }
}

impl Deployment for DriftingDeployment {
    fn reports(&self) -> Reports {
        self.inner.reports()
    }
    fn serve(&self, host: WorkerHost) -> Serving {
        let serving = self.inner.serve(host);
        let late = self.late;
        Box::pin(async move {
            if late {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            serving.await
        })
    }
    fn applied_writes(&self, writes: &[Write]) -> Vec<Entry> {
        self.inner.applied_writes(writes)
    }
    fn conversation(&self, redis: Option<&mut Model>, redis_now_ms: u64, cid: &str) -> Option<scenarios::contract::Conversation> {
        self.inner.conversation(redis, redis_now_ms, cid)
    }
    fn effects_pending(&self, redis: Option<&mut Model>, redis_now_ms: u64) -> bool {
        self.inner.effects_pending(redis, redis_now_ms)
    }
}

#[test]
fn a_determinism_mismatch_prints_the_first_diverging_entry() {
    let cfg = Explore { only: find("calm"), recheck_every: 1, ..Explore::seeds(1) };
    let mut report = Vec::new();
    let ok = explore_worker(&Drifting { deployments: AtomicU64::new(0) }, &cfg, &mut report);
    let report = String::from_utf8(report).unwrap();
    assert!(!ok, "a nondeterministic seed fails the exploration:\n{report}");
    assert!(report.contains("NONDETERMINISTIC calm seed 0: trace hash"), "{report}");
    let at = report.find("first divergence at history entry #").unwrap_or_else(|| panic!("no divergence named:\n{report}"));
    let lines: Vec<&str> = report[at..].lines().take(3).collect();
    assert!(lines[1].trim_start().starts_with("first run:") && lines[2].trim_start().starts_with("second run:"), "{report}");
    // Both entries are shown with their simulated times, and they differ.
    assert!(lines[1].contains(" ms ") && lines[2].contains(" ms "), "{report}");
    assert_ne!(lines[1].split_once(':').unwrap().1.trim(), lines[2].split_once(':').unwrap().1.trim());
}

#[test]
fn first_divergence_finds_the_first_differing_entry_or_the_end_of_the_shorter_run() {
    let v = find("calm").unwrap().run(1);
    let h = &v.history;
    assert_eq!(first_divergence(h, h), None);
    let mut other = h.clone();
    other[5].t_ms += 1;
    let d = first_divergence(h, &other).unwrap();
    assert!(d.starts_with("first divergence at history entry #5 "), "{d}");
    let d = first_divergence(h, &h[..7]).unwrap();
    assert!(d.contains("#7 ") && d.contains("(history ends after 7 entries)"), "{d}");
}

#[test]
fn exploring_for_a_time_keeps_failing_seeds_in_a_regressions_file_the_seeded_tests_run() {
    let dir = std::env::temp_dir().join(format!("orchsim-explore-regressions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bug = KnownBug::NoFencing;
    let cfg = Explore {
        only: find("partitions"),
        first_seed: 7,
        jobs: 2,
        duration: Some(Duration::from_secs(3)),
        regressions: Some(dir.clone()),
        found_with: Some(format!("known bug {}", bug.name())),
        ..Explore::seeds(0)
    };
    let mut report = Vec::new();
    let ok = explore(&cfg, &|sc: &Scenario, seed| sc.run_with_bug(seed, Some(bug)), &mut report);
    let report = String::from_utf8(report).unwrap();
    assert!(!ok, "the known bug is found within three seconds:\n{report}");
    assert!(report.contains("time up after "), "{report}");
    assert!(report.contains("failing seeds appended to"), "{report}");
    let kept = scenarios::regressions::load(&dir).unwrap();
    assert!(!kept.is_empty());
    for r in &kept {
        assert_eq!(r.scenario, "partitions");
        assert!(r.note.contains("fenced") && r.note.contains("known bug no_fencing"), "{r:?}");
        // Fresh seeds from the sequence, not 0, 1, 2, …
        assert!(r.seed > 1_000_000, "{r:?}");
        // What the seeded tests do with a kept seed: run it on orchsim, where it must pass.
        let v = find(&r.scenario).unwrap().run(r.seed);
        assert!(v.passed(), "{}", scenarios::report::failure_report(&v, None));
    }
    // Finding a kept seed failing again adds no second line for it.
    let again = find("partitions").unwrap().run_with_bug(kept[0].seed, Some(bug));
    assert!(!again.passed(), "the kept seed still fails with the bug");
    assert_eq!(scenarios::regressions::append(&dir, &[again], None).unwrap(), 0);
    assert_eq!(scenarios::regressions::load(&dir).unwrap(), kept);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI: `explore --for` prints its summary when the time is up, and on Ctrl-C (SIGINT) after
/// the seeds in flight.
#[test]
fn explore_for_prints_its_summary_on_time_and_on_ctrl_c() {
    let bin = env!("CARGO_BIN_EXE_orchsim");
    let out = std::process::Command::new(bin)
        .args(["explore", "--for", "2s", "--scenario", "calm", "--jobs", "1", "--no-regressions"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("time up after ") && stdout.contains("0 violations"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("progress: ") && !stderr.contains('\r'), "progress as lines when stderr is not a terminal: {stderr:?}");

    let child = std::process::Command::new(bin)
        .args(["explore", "--for", "10m", "--scenario", "calm", "--jobs", "1", "--no-regressions"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped (interrupted) after ") && stdout.contains("determinism:"), "{stdout}");
}
