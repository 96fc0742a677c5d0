//! Seeds that once failed, kept so they run forever after (proptest-regression style):
//! `tests/regressions/<scenario>.txt`, one `scenario seed # what failed` per line. `orchsim
//! explore` appends every failing seed it finds; `tests/seeds.rs` runs each line as a named test
//! (`regressions::<scenario>::seed_<n>`) that must pass. Commit the files.

use crate::report::Verdict;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One kept seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    pub scenario: String,
    pub seed: u64,
    /// What failed when it was found (the text after `#`).
    pub note: String,
    /// Where it is kept, as `file:line`.
    pub at: String,
}

/// `<workspace>/tests/regressions`.
pub fn default_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join("tests").join("regressions")
}

const HEADER: &str = "# Seeds that once failed: tests/seeds.rs runs each line as a test that must pass.\n\
# One `scenario seed # what failed` per line; `orchsim explore` appends the failing seeds it finds.\n";

/// Every kept seed in `dir`'s `*.txt` files, in file and line order (a missing directory holds
/// none). A line that is not `scenario seed [# note]` is an error naming its file and line.
pub fn load(dir: &Path) -> Result<Vec<Regression>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "txt")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let at = format!("{}:{}", f.display(), i + 1);
            let (body, note) = match line.split_once('#') {
                Some((b, n)) => (b.trim(), n.trim().to_string()),
                None => (line.trim(), String::new()),
            };
            if body.is_empty() {
                continue;
            }
            let mut words = body.split_whitespace();
            let (Some(scenario), Some(seed), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("{at}: expected `scenario seed # note`, found {line:?}"));
            };
            let seed = seed.parse::<u64>().map_err(|_| format!("{at}: {seed:?} is not a seed (a whole number)"))?;
            out.push(Regression { scenario: scenario.to_string(), seed, note, at });
        }
    }
    Ok(out)
}

/// Appends each failing verdict's `scenario seed # invariants` to `<dir>/<scenario>.txt` unless
/// that scenario and seed are already kept there; returns how many lines were added.
pub fn append(dir: &Path, failures: &[Verdict], found_with: Option<&str>) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut kept: BTreeSet<(String, u64)> = match load(dir) {
        Ok(all) => all.into_iter().map(|r| (r.scenario, r.seed)).collect(),
        Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    };
    let mut added = 0;
    for v in failures {
        if !kept.insert((v.scenario.clone(), v.seed)) {
            continue;
        }
        let path = dir.join(format!("{}.txt", v.scenario));
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if new {
            f.write_all(HEADER.as_bytes())?;
        }
        let mut invariants: Vec<&str> = v.violations.iter().map(|x| x.invariant.name()).collect();
        invariants.dedup();
        let how = found_with.map(|w| format!(" (found with {w})")).unwrap_or_default();
        writeln!(f, "{} {} # {}{how}", v.scenario, v.seed, invariants.join(", "))?;
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_seeds_read_back_and_a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("orchsim-regressions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("calm.txt"), "# comment\n\ncalm 17 # lost-data\ncalm 18\n").unwrap();
        let got = load(&dir).unwrap();
        assert_eq!(
            got.iter().map(|r| (r.scenario.as_str(), r.seed, r.note.as_str())).collect::<Vec<_>>(),
            vec![("calm", 17, "lost-data"), ("calm", 18, "")]
        );
        assert!(got[0].at.ends_with("calm.txt:3"), "{}", got[0].at);
        std::fs::write(dir.join("links.txt"), "links seventeen\n").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.contains("links.txt:1") && err.contains("not a seed"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).unwrap(), vec![], "no directory, no seeds");
    }
}
