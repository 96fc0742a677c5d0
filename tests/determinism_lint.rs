//! Determinism is a property of the code: this test reads our sources and fails on the
//! constructs that make a seed nondeterministic on a simulated path — `HashMap`/`HashSet`
//! (iteration order), the wall clock (`std::time::{SystemTime, Instant}`), OS randomness
//! (`thread_rng`, `rand::random`, `rand::rng`), and any `select!` that is not `biased`.
//! The allowed exceptions are named: the production clock and the production binary.

use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &["orchestrator/src", "sim/src", "scenarios/src"];
/// Files that may touch the wall clock or OS entropy: never on a simulated path.
const ALLOWED: &[(&str, &str)] = &[
    ("orchestrator/src/clock.rs", "SystemTime"),
    ("orchestrator/src/main.rs", "rand::random"),
    // Seeds per second, measured around whole runs.
    ("scenarios/src/explore.rs", "std::time::Instant"),
];
const FORBIDDEN: &[&str] =
    &["HashMap", "HashSet", "SystemTime", "std::time::Instant", "thread_rng", "rand::random", "rand::rng", "OsRng", "getrandom"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn violations(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for r in ROOTS {
        let mut files = Vec::new();
        rust_files(&root.join(r), &mut files);
        files.sort();
        for f in files {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&f).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for pat in FORBIDDEN {
                    if code.contains(pat) && !ALLOWED.contains(&(rel.as_str(), *pat)) {
                        found.push(format!("{rel}:{}: {pat}: {}", i + 1, line.trim()));
                    }
                }
                if code.contains("select!") && !lines.iter().skip(i + 1).take(3).any(|l| l.trim() == "biased;") {
                    found.push(format!("{rel}:{}: select! without `biased;`", i + 1));
                }
            }
        }
    }
    found
}

#[test]
fn no_hashmap_wall_clock_os_randomness_or_unbiased_select_in_our_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = violations(root);
    assert!(found.is_empty(), "nondeterminism on simulated paths:\n{}", found.join("\n"));
}

#[test]
fn the_lint_fires_on_a_file_that_breaks_the_rules() {
    let dir = std::env::temp_dir().join(format!("orchsim-lint-{}", std::process::id()));
    let src = dir.join("sim/src");
    std::fs::create_dir_all(&src).unwrap();
    for r in ROOTS {
        std::fs::create_dir_all(dir.join(r)).unwrap();
    }
    std::fs::write(src.join("bad.rs"), "use std::collections::HashMap;\nfn f() { let t = std::time::SystemTime::now(); }\nasync fn g() { tokio::select! {\n _ = a => {}\n } }\n").unwrap();
    let found = violations(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 3, "{found:?}");
}
