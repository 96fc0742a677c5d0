//! Copilot reply → machine events.
//!
//! The structured `extractedPayload` comes first; when it is missing, a JSON object embedded
//! in the message text is tried as a fallback (models often answer that way). Anything
//! missing, malformed, unknown or oversized becomes `NoSignal`: never a panic, never a guess.

use crate::copilot::CopilotReply;
use crate::workflow::{Confidence, Event, Workflow};
use serde_json::Value;

/// Longest field value accepted from Copilot.
pub const FIELD_VALUE_BYTES_MAX: usize = 256;
/// Most fields one reply may carry.
pub const FIELDS_PER_REPLY_MAX: usize = 8;
/// Longest payload text the fallback scans.
pub const FALLBACK_TEXT_BYTES_MAX: usize = 16 * 1024;

pub fn extract(reply: &CopilotReply, wf: &Workflow) -> Vec<Event> {
    let payload = match &reply.extracted_payload {
        Some(p) if !p.is_null() => Some(p.clone()),
        _ => fallback_payload(reply),
    };
    match payload {
        Some(p) => from_payload(&p, wf).unwrap_or_else(|| vec![Event::NoSignal]),
        None => vec![Event::NoSignal],
    }
}

fn fallback_payload(reply: &CopilotReply) -> Option<Value> {
    reply.activities.iter().filter(|a| a.kind == "message").find_map(|a| {
        let text = &a.text;
        if text.len() > FALLBACK_TEXT_BYTES_MAX {
            return None;
        }
        let start = text.find('{')?;
        let end = text.rfind('}')?;
        if end <= start {
            return None;
        }
        serde_json::from_str::<Value>(&text[start..=end]).ok().filter(|v| v.get("intent").is_some())
    })
}

fn from_payload(p: &Value, wf: &Workflow) -> Option<Vec<Event>> {
    let obj = p.as_object()?;
    let confidence = match obj.get("confidence")?.as_str()? {
        "high" => Confidence::High,
        "medium" => Confidence::Medium,
        "low" => Confidence::Low,
        _ => return None,
    };
    match obj.get("intent")?.as_str()? {
        "provide" => {
            let fields = obj.get("fields")?.as_object()?;
            if fields.is_empty() || fields.len() > FIELDS_PER_REPLY_MAX {
                return None;
            }
            let mut events = Vec::new();
            for (name, v) in fields {
                if !wf.required.contains(&name.as_str()) {
                    return None;
                }
                let value = match v {
                    Value::String(s) => s.trim().to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                if value.is_empty() || value.len() > FIELD_VALUE_BYTES_MAX {
                    return None;
                }
                events.push(Event::FieldExtracted { field: name.clone(), value, confidence });
            }
            Some(events)
        }
        // A yes or no that the model is not sure of is no signal: it must never submit or
        // cancel on a guess.
        "confirm" if confidence == Confidence::High => Some(vec![Event::Confirmed]),
        "decline" if confidence == Confidence::High => Some(vec![Event::Declined]),
        "confirm" | "decline" | "other" => Some(vec![Event::NoSignal]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copilot::{Activity, CopilotReply};
    use crate::workflow::workflow;

    fn reply(payload: Option<Value>, text: &str) -> CopilotReply {
        CopilotReply { activities: vec![Activity { kind: "message".into(), text: text.into() }], extracted_payload: payload }
    }

    fn check(payload: Option<Value>, text: &str, expected: Vec<Event>) {
        let got = extract(&reply(payload.clone(), text), workflow("lead").unwrap());
        assert_eq!(got, expected, "payload {payload:?} text {text:?}");
    }

    fn field(f: &str, v: &str, c: Confidence) -> Event {
        Event::FieldExtracted { field: f.into(), value: v.into(), confidence: c }
    }

    #[test]
    fn structured_payload_is_read_first() {
        use serde_json::json;
        check(
            Some(json!({"intent":"provide","fields":{"email":"a@b.c"},"confidence":"high"})),
            "",
            vec![field("email", "a@b.c", Confidence::High)],
        );
        check(
            Some(json!({"intent":"provide","fields":{"email":"a@b.c"},"confidence":"medium"})),
            "",
            vec![field("email", "a@b.c", Confidence::Medium)],
        );
        check(Some(json!({"intent":"confirm","confidence":"high"})), "", vec![Event::Confirmed]);
        check(Some(json!({"intent":"decline","confidence":"high"})), "", vec![Event::Declined]);
        check(Some(json!({"intent":"confirm","confidence":"medium"})), "", vec![Event::NoSignal]);
        check(Some(json!({"intent":"other","confidence":"high"})), "", vec![Event::NoSignal]);
    }

    #[test]
    fn missing_malformed_unknown_or_oversized_payload_is_no_signal() {
        use serde_json::json;
        let big = "x".repeat(FIELD_VALUE_BYTES_MAX + 1);
        for p in [
            None,
            Some(json!(null)),
            Some(json!("provide")),
            Some(json!([1, 2])),
            Some(json!({})),
            Some(json!({"intent":"provide","confidence":"high"})),
            Some(json!({"intent":"provide","fields":{},"confidence":"high"})),
            Some(json!({"intent":"provide","fields":{"email":"a"},"confidence":"certain"})),
            Some(json!({"intent":"provide","fields":{"email":{"x":1}},"confidence":"high"})),
            Some(json!({"intent":"provide","fields":{"shoe":"9"},"confidence":"high"})),
            Some(json!({"intent":"provide","fields":{"email":big},"confidence":"high"})),
            Some(json!({"intent":"dance","confidence":"high"})),
            Some(json!({"intent":7,"confidence":"high"})),
        ] {
            check(p, "no json here", vec![Event::NoSignal]);
        }
    }

    #[test]
    fn fallback_reads_json_in_message_text() {
        check(
            None,
            "Sure! {\"intent\":\"provide\",\"fields\":{\"phone\":\"123\"},\"confidence\":\"high\"}",
            vec![field("phone", "123", Confidence::High)],
        );
        check(None, "{ not json }", vec![Event::NoSignal]);
        check(None, "} backwards {", vec![Event::NoSignal]);
    }
}
