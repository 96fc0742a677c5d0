//! The timeline page of a failing run, opened in headless Chromium (Debian's `chromium`,
//! installed by `.ci/run`): the page's script must have drawn a lane per host, the fault windows
//! and the violation marker. `--dump-dom` prints the document after the page has loaded and its
//! script has run, so what is checked is what a person would see drawn, not the file's text.
//! Without Chromium the tests say so and pass, except under `CI=true`, where they fail.

use scenarios::html::model;
use scenarios::report::{html_file, run_seed, write_trace, Verdict};
use scenarios::KnownBug;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chromium is missing; .ci/run installs it (apt-get install chromium)");
        eprintln!("chromium not found: the timeline page is not opened (install Debian's `chromium` to run this)");
    }
    found
}

/// The document after the page's script ran, and how long Chromium took to give it.
fn rendered(browser: &str, page: &Path) -> (String, f64) {
    let start = Instant::now();
    let out = Command::new("timeout")
        .args(["180", browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), start.elapsed().as_secs_f64())
}

fn check_drawn(v: &Verdict, dom: &str) {
    let m = model(v);
    assert_eq!(dom.matches("class=\"lane\"").count(), m.lanes.len(), "one lane per host: {:?}", m.lanes);
    for lane in &m.lanes {
        assert!(dom.contains(&format!("data-lane=\"{lane}\"")), "lane {lane} drawn");
    }
    assert!(dom.contains(&format!("data-drawn=\"{}\"", m.items.len())), "the script drew all {} items", m.items.len());
    for i in 0..m.violations.len() {
        assert!(dom.contains(&format!("id=\"violation-{i}\"")), "violation marker {i} drawn");
    }
}

/// A seed of `scenario` that fails with `bug` and whose run had fault windows.
fn failing_with_faults(scenario: &str, bug: KnownBug) -> Verdict {
    let sc = scenarios::find(scenario).unwrap();
    (0..200)
        .map(|seed| sc.run_with_bug(seed, Some(bug)))
        .find(|v| !v.passed() && model(v).items.iter().any(|i| i.kind == "fault"))
        .unwrap_or_else(|| panic!("no failing {scenario} seed with faults under {bug:?} in 200"))
}

#[test]
fn a_failing_known_bug_seed_writes_a_page_that_chromium_draws_with_lanes_faults_and_the_violation() {
    let v = failing_with_faults("partitions", KnownBug::NoFencing);
    write_trace(&v).unwrap();
    let page = html_file(&format!("{}-seed-{}", v.scenario, v.seed));
    assert!(page.exists(), "a failing run writes its page beside the trace");
    let Some(browser) = chromium() else { return };
    let (dom, secs) = rendered(browser, &page);
    check_drawn(&v, &dom);
    assert!(!v.violations.is_empty());
    assert!(dom.contains("class=\"fault crash\"") || dom.contains("class=\"fault link\""), "a fault window is shaded");
    eprintln!(
        "{}: {} history entries, {} bytes, opened and drawn by headless chromium in {secs:.2} s",
        page.display(),
        v.history.len(),
        std::fs::metadata(&page).unwrap().len()
    );
}

#[test]
fn a_run_of_ten_thousand_history_entries_still_draws() {
    // A swarm world with many conversations per user: the longest runs a user meets.
    let sc = scenarios::find("swarm").unwrap();
    let mut options = sc.options(3);
    let mut v = run_seed(&options, 3);
    while v.history.len() < 10_000 {
        let t = &mut options.topology;
        for knob in [&mut t.conversations_per_user, &mut t.users_per_client, &mut t.clients] {
            if *knob < 16 {
                *knob = (*knob * 2).min(16);
                break;
            }
        }
        v = run_seed(&options, 3);
    }
    let dir = std::env::temp_dir().join(format!("orchsim-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("big.html");
    std::fs::write(&page, scenarios::html::page(&v)).unwrap();
    let Some(browser) = chromium() else { return };
    let (dom, secs) = rendered(browser, &page);
    check_drawn(&v, &dom);
    eprintln!(
        "{} history entries: page {} bytes, opened and drawn by headless chromium in {secs:.2} s",
        v.history.len(),
        std::fs::metadata(&page).unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
