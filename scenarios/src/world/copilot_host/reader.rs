//! How the fake model reads a request: the context prefix, parsed here on its own terms from the
//! contract (`[WORKFLOW_CONTEXT] step=<s> constraints=[a,b] collectedData={json} <query>`), not
//! with the orchestrator's parser. A prefix this reader cannot follow is the orchestrator's bug.

use serde_json::{Map, Value};

/// What the model learns from the prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub step: String,
    /// The fields still to collect, in the order the workflow asks for them.
    pub missing: Vec<String>,
    pub collected: Map<String, Value>,
    pub query: String,
}

const STEPS: [&str; 5] = ["gathering", "confirming", "succeeded", "cancelled", "needs_human"];

pub fn read(text: &str) -> Result<Seen, String> {
    let rest = text.strip_prefix("[WORKFLOW_CONTEXT] ").ok_or("no `[WORKFLOW_CONTEXT] ` tag followed by a space")?;
    let rest = rest.strip_prefix("step=").ok_or("no `step=`")?;
    let (step, rest) = rest.split_once(' ').ok_or("nothing after the step")?;
    if !STEPS.contains(&step) {
        return Err(format!("unknown step {step:?}"));
    }
    let rest = rest.strip_prefix("constraints=[").ok_or("no `constraints=[`")?;
    let (list, rest) = rest.split_once("] ").ok_or("constraints not closed by `] `")?;
    let missing: Vec<String> = list.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
    if missing.iter().any(|f| !f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')) {
        return Err(format!("constraints are not field names: {list:?}"));
    }
    let rest = rest.strip_prefix("collectedData=").ok_or("no `collectedData=`")?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let collected = match values.next() {
        Some(Ok(Value::Object(m))) if m.values().all(Value::is_string) => m,
        Some(Ok(other)) => return Err(format!("collectedData is not an object of strings: {other}")),
        Some(Err(e)) => return Err(format!("collectedData is not JSON: {e}")),
        None => return Err("no collectedData".into()),
    };
    let rest = &rest[values.byte_offset()..];
    let query = rest.strip_prefix(' ').ok_or("no space before the query")?;
    Ok(Seen { step: step.into(), missing, collected, query: query.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_contract_describes_and_nothing_else() {
        let s = read(r#"[WORKFLOW_CONTEXT] step=gathering constraints=[phone,company] collectedData={"email":"a b] c"} my phone is 5"#)
            .unwrap();
        assert_eq!((s.step.as_str(), s.missing.len(), s.query.as_str()), ("gathering", 2, "my phone is 5"));
        assert_eq!(s.collected["email"], "a b] c");
        let s = read("[WORKFLOW_CONTEXT] step=confirming constraints=[] collectedData={} yes").unwrap();
        assert!(s.missing.is_empty());
        for bad in [
            "[WORKFLOW_CONTEXT]step=gathering constraints=[] collectedData={} q",
            "[WORKFLOW_CONTEXT] step=flying constraints=[] collectedData={} q",
            "[WORKFLOW_CONTEXT] step=gathering constraints=[a collectedData={} q",
            "[WORKFLOW_CONTEXT] step=gathering constraints=[] collectedData={\"a\":1} q",
            "[WORKFLOW_CONTEXT] step=gathering constraints=[] collectedData={}q",
            "hello",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
