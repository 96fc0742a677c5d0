//! The model: reads a user's message the way an LLM does, with the context it was given. A bare
//! value is the field that was asked for; "sure"/"ok"/"yes please" confirm only when something
//! is being confirmed; hedged statements ("I think it's …", "probably …") are medium confidence,
//! guesses ("maybe …", "not sure, …?") low; corrections ("actually my phone is …") replace a
//! field; "no"/"cancel" decline. Field names come the way people say them ("e-mail", "phone
//! number", "payment method", "the amount"). Written for the harness from the contract: it
//! shares no code with the orchestrator's scripted stand-in.

use super::reader::Seen;
use serde_json::{json, Value};

/// Spoken names → the workflow's field names.
const SYNONYMS: &[(&str, &str)] = &[
    ("e-mail", "email"),
    ("email address", "email"),
    ("mail", "email"),
    ("phone number", "phone"),
    ("number", "phone"),
    ("mobile", "phone"),
    ("company name", "company"),
    ("employer", "company"),
    ("payment method", "payment_method"),
    ("card", "payment_method"),
    ("the amount", "amount"),
    ("sum", "amount"),
];

const CONFIRMS: &[&str] = &["yes", "yes please", "sure", "ok", "okay", "confirm", "sounds good", "go ahead", "correct", "yep"];
const DECLINES: &[&str] = &["no", "cancel", "no, cancel that", "stop", "never mind", "nope", "please cancel"];
const HEDGES: &[&str] = &["i think it's ", "i think it is ", "probably ", "i believe it's "];
const GUESSES: &[&str] = &["maybe ", "not sure, maybe ", "perhaps "];
const CORRECTIONS: &[&str] = &["actually ", "sorry, ", "correction: ", "oops, "];
/// What people say while thinking: never an answer.
const FILLERS: &[&str] = &["hmm", "uh", "um", "well", "huh", "what", "what?", "hm", "erm", "hello", "hi"];

fn field_name(spoken: &str) -> String {
    let s = spoken.trim().trim_start_matches("my ").trim_start_matches("the ").trim();
    SYNONYMS.iter().find(|(k, _)| *k == s).map(|(_, f)| f.to_string()).unwrap_or_else(|| s.replace(' ', "_"))
}

/// `<field> is <value>` or `<field>: <value>`.
fn statement(s: &str) -> Option<(String, String)> {
    let (f, v) = s.split_once(" is ").or_else(|| s.split_once(": "))?;
    let (f, v) = (f.trim(), v.trim().trim_end_matches(['.', '!']));
    (!f.is_empty() && !v.is_empty() && f.split(' ').count() <= 3).then(|| (field_name(f), v.to_string()))
}

fn provide(field: &str, value: &str, confidence: &str) -> Value {
    json!({"intent": "provide", "fields": {field: value}, "confidence": confidence})
}

/// The payload the model extracts from `seen.query`, given the context; `None` when it finds
/// nothing to extract. `original` keeps the user's capitalisation for values.
pub fn interpret(seen: &Seen) -> Option<Value> {
    let original = seen.query.trim();
    let q = original.to_lowercase();
    let q = q.trim_end_matches(['.', '!']);
    if DECLINES.contains(&q) {
        return Some(json!({"intent": "decline", "confidence": "high"}));
    }
    if CONFIRMS.contains(&q) {
        // "Sure" means yes only to a question; while gathering it answers nothing.
        return (seen.step == "confirming").then(|| json!({"intent": "confirm", "confidence": "high"}));
    }
    let asked = seen.missing.first().cloned();
    // Values keep the user's spelling: `part` is a slice of the lower-cased message, cut from
    // the original at the same offsets (when lower-casing kept the length, as for ASCII).
    let lower_all = original.to_lowercase();
    let value_of = |part: &str| {
        let at = lower_all.find(part).unwrap_or(0);
        let v = if lower_all.len() == original.len() { &original[at..at + part.len()] } else { part };
        v.trim().trim_end_matches(['.', '!', '?']).to_string()
    };
    for (prefixes, confidence) in [(CORRECTIONS, "high"), (HEDGES, "medium"), (GUESSES, "low")] {
        if let Some(rest) = prefixes.iter().find_map(|p| q.strip_prefix(p)) {
            let rest = rest.trim_end_matches('?');
            return match statement(rest) {
                Some((f, _)) => Some(provide(
                    &f,
                    &value_of(rest.split_once(" is ").or_else(|| rest.split_once(": ")).map(|x| x.1).unwrap_or(rest)),
                    confidence,
                )),
                None => asked.map(|f| provide(&f, &value_of(rest), confidence)),
            };
        }
    }
    if let Some((f, _)) = statement(&q) {
        let rest = q.split_once(" is ").or_else(|| q.split_once(": ")).map(|x| x.1).unwrap_or(&q);
        return Some(provide(&f, &value_of(rest), "high"));
    }
    // A bare value answers the question that was asked, if it looks like an answer to it.
    let digits = q.chars().filter(char::is_ascii_digit).count();
    let plausible = |field: &str| match field {
        "email" => q.contains('@') && !q.contains(' '),
        "phone" => digits >= 7,
        "amount" => digits >= 1,
        _ => !FILLERS.contains(&q) && !q.contains(',') && q.len() >= 2,
    };
    match asked {
        Some(f) if plausible(&f) => Some(provide(&f, &value_of(q), "high")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(step: &str, missing: &[&str], query: &str) -> Seen {
        Seen {
            step: step.into(),
            missing: missing.iter().map(|s| s.to_string()).collect(),
            collected: Default::default(),
            query: query.into(),
        }
    }

    fn check(step: &str, missing: &[&str], query: &str, expected: Option<Value>) {
        assert_eq!(interpret(&seen(step, missing, query)), expected, "{step} {missing:?} {query:?}");
    }

    #[test]
    fn the_model_reads_messages_the_way_people_write_them() {
        let g = "gathering";
        check(g, &["email"], "my e-mail is Ada@Example.com", Some(provide("email", "Ada@Example.com", "high")));
        check(g, &["phone"], "Phone number: +1 555 0100", Some(provide("phone", "+1 555 0100", "high")));
        check(g, &["phone"], "+1 555 0100", Some(provide("phone", "+1 555 0100", "high")));
        check(g, &["company", "phone"], "I think it's ACME Ltd", Some(provide("company", "ACME Ltd", "medium")));
        check(g, &["company"], "maybe phone is 123?", Some(provide("phone", "123", "low")));
        check(g, &["company"], "actually my phone is 555 0199", Some(provide("phone", "555 0199", "high")));
        check(g, &["email"], "sure", None);
        check("confirming", &[], "Yes please", Some(json!({"intent": "confirm", "confidence": "high"})));
        check(g, &["email"], "no, cancel that", Some(json!({"intent": "decline", "confidence": "high"})));
        check(g, &["email"], "hmm, let me think about it", None);
        check(g, &["company"], "hmm", None);
        check(g, &["email"], "ACME", None);
        check(g, &["company"], "ACME", Some(provide("company", "ACME", "high")));
        check(g, &["payment_method"], "the payment method is Visa", Some(provide("payment_method", "Visa", "high")));
    }
}
