//! The workflow machine: pure, no I/O, no clock.
//!
//! `step(state, event)` is a transducer: it returns the next state plus the commands the
//! caller should carry out, or an explicit `Rejected`. The whole transition table is the one
//! `match` in [`step`]; every (step, event) pair is either a transition or a named rejection.
//! Workflows are data ([`Workflow`]); [`MACHINE_VERSION`] is part of every idempotency key so
//! a changed machine never replays answers computed by an older one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever the transition table changes meaning.
pub const MACHINE_VERSION: u32 = 1;
/// Consecutive `NoSignal` events tolerated in a non-terminal step; the next one leaves the
/// loop for `needs_human`.
pub const NO_SIGNAL_STREAK_MAX: u32 = 3;
/// Turns after which a conversation that has not finished is handed to a human.
pub const TURNS_MAX: u32 = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Gathering,
    Confirming,
    Succeeded,
    Cancelled,
    NeedsHuman,
}

impl Step {
    pub const ALL: [Step; 5] = [Step::Gathering, Step::Confirming, Step::Succeeded, Step::Cancelled, Step::NeedsHuman];

    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Succeeded | Step::Cancelled | Step::NeedsHuman)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Gathering => "gathering",
            Step::Confirming => "confirming",
            Step::Succeeded => "succeeded",
            Step::Cancelled => "cancelled",
            Step::NeedsHuman => "needs_human",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    High,
    Medium,
    Low,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FieldExtracted { field: String, value: String, confidence: Confidence },
    Confirmed,
    Declined,
    NoSignal,
}

/// A workflow definition: data, not code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    pub name: &'static str,
    pub version: u32,
    pub required: &'static [&'static str],
}

pub const WORKFLOWS: &[Workflow] = &[
    Workflow { name: "lead", version: 1, required: &["email", "phone", "company"] },
    Workflow { name: "payment", version: 1, required: &["payment_method", "amount"] },
    // Ten fields: the concurrency tests drive one turn per field at once.
    Workflow {
        name: "profile",
        version: 1,
        required: &["name", "email", "phone", "company", "title", "country", "city", "street", "zip", "language"],
    },
];

pub fn workflow(name: &str) -> Option<&'static Workflow> {
    WORKFLOWS.iter().find(|w| w.name == name)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowState {
    pub workflow: String,
    pub step: Step,
    pub collected_data: BTreeMap<String, String>,
    /// Number of commits this conversation has seen; the store's commit sets it.
    pub version: u64,
    pub no_signal_streak: u32,
    #[serde(default)]
    pub turns: u32,
}

impl WorkflowState {
    pub fn new(workflow: &Workflow) -> Self {
        Self {
            workflow: workflow.name.to_string(),
            step: Step::Gathering,
            collected_data: BTreeMap::new(),
            version: 0,
            no_signal_streak: 0,
            turns: 0,
        }
    }

    /// Required fields not yet collected, in the workflow's order.
    pub fn missing(&self) -> Vec<&'static str> {
        match workflow(&self.workflow) {
            Some(w) => w.required.iter().copied().filter(|f| !self.collected_data.contains_key(*f)).collect(),
            None => Vec::new(),
        }
    }
}

/// What the caller should do after a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Ask the user for the next missing field.
    AskFor { field: String },
    /// A medium-confidence value: ask the user to state it plainly; nothing is stored.
    ConfirmValue { field: String, value: String },
    /// All fields collected: ask the user to confirm submission.
    ConfirmSubmission,
    /// Submit the collected data to the effects sink (exactly once per conversation).
    Submit,
    /// Hand the conversation to a human.
    Handoff,
    /// The user cancelled.
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: WorkflowState,
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("conversation is finished ({0:?}); no event changes it")]
    Terminal(Step),
    #[error("field {0:?} is not part of this workflow")]
    UnknownField(String),
    #[error("nothing to confirm while gathering")]
    NothingToConfirm,
    #[error("unknown workflow {0:?}")]
    UnknownWorkflow(String),
}

/// The transition table. Every (step, event) pair is listed.
pub fn step(state: &WorkflowState, event: &Event) -> Result<Transition, Rejected> {
    let wf = workflow(&state.workflow).ok_or_else(|| Rejected::UnknownWorkflow(state.workflow.clone()))?;
    use Step::*;
    match (state.step, event) {
        (Succeeded | Cancelled | NeedsHuman, _) => Err(Rejected::Terminal(state.step)),

        (Gathering | Confirming, Event::FieldExtracted { field, .. }) if !wf.required.contains(&field.as_str()) => {
            Err(Rejected::UnknownField(field.clone()))
        }
        (Gathering | Confirming, Event::FieldExtracted { field, value, confidence: Confidence::Medium }) => {
            Ok(Transition { state: state.clone(), commands: vec![Command::ConfirmValue { field: field.clone(), value: value.clone() }] })
        }
        (Gathering | Confirming, Event::FieldExtracted { field, value, confidence: Confidence::High }) => {
            let mut next = state.clone();
            next.collected_data.insert(field.clone(), value.clone());
            next.no_signal_streak = 0;
            Ok(after_progress(next))
        }
        (Gathering, Event::Confirmed) => Err(Rejected::NothingToConfirm),
        (Confirming, Event::Confirmed) => {
            let mut next = state.clone();
            next.step = Succeeded;
            next.no_signal_streak = 0;
            Ok(Transition { state: next, commands: vec![Command::Submit] })
        }
        (Gathering | Confirming, Event::Declined) => {
            let mut next = state.clone();
            next.step = Cancelled;
            next.no_signal_streak = 0;
            Ok(Transition { state: next, commands: vec![Command::Cancel] })
        }
        // Confidence guard: only `high` sets a field; `low` is no signal at all.
        (Gathering | Confirming, Event::NoSignal | Event::FieldExtracted { confidence: Confidence::Low, .. }) => {
            let mut next = state.clone();
            next.no_signal_streak += 1;
            if next.no_signal_streak > NO_SIGNAL_STREAK_MAX {
                next.step = NeedsHuman;
                Ok(Transition { state: next, commands: vec![Command::Handoff] })
            } else {
                let commands = prompt(&next);
                Ok(Transition { state: next, commands })
            }
        }
    }
}

fn after_progress(mut next: WorkflowState) -> Transition {
    if next.missing().is_empty() {
        next.step = Step::Confirming;
        Transition { state: next, commands: vec![Command::ConfirmSubmission] }
    } else {
        let commands = prompt(&next);
        Transition { state: next, commands }
    }
}

fn prompt(state: &WorkflowState) -> Vec<Command> {
    match state.step {
        Step::Confirming => vec![Command::ConfirmSubmission],
        _ => state.missing().first().map(|f| vec![Command::AskFor { field: f.to_string() }]).unwrap_or_default(),
    }
}

/// The result of one user turn: all its events applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutcome {
    pub state: WorkflowState,
    pub commands: Vec<Command>,
    pub rejected: Vec<Rejected>,
}

/// Applies one turn's events (none at all counts as one `NoSignal`), then the turn limit.
/// The version is left alone: the store's commit owns it.
pub fn apply_turn(state: &WorkflowState, events: &[Event]) -> TurnOutcome {
    let mut cur = state.clone();
    cur.turns = cur.turns.saturating_add(1);
    let mut commands = Vec::new();
    let mut rejected = Vec::new();
    let no_signal = [Event::NoSignal];
    let events = if events.is_empty() { &no_signal[..] } else { events };
    for ev in events {
        match step(&cur, ev) {
            Ok(t) => {
                cur = t.state;
                commands.extend(t.commands);
            }
            Err(r) => rejected.push(r),
        }
    }
    if !cur.step.is_terminal() && cur.turns >= TURNS_MAX {
        cur.step = Step::NeedsHuman;
        commands.push(Command::Handoff);
    }
    TurnOutcome { state: cur, commands, rejected }
}

/// The reply text the orchestrator shows for a turn's commands.
pub fn reply_text(outcome: &TurnOutcome) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in &outcome.commands {
        parts.push(match c {
            Command::AskFor { field } => format!("What is your {field}?"),
            Command::ConfirmValue { field, value } => format!("Did you mean {field} = {value}? Please state it plainly."),
            Command::ConfirmSubmission => "Shall I submit? (yes/no)".to_string(),
            Command::Submit => "Submitted. Thank you!".to_string(),
            Command::Handoff => "A human will take over from here.".to_string(),
            Command::Cancel => "Cancelled.".to_string(),
        });
    }
    if parts.is_empty() {
        if outcome.state.step.is_terminal() {
            parts.push(format!("This conversation is {}.", outcome.state.step.as_str()));
        } else {
            parts.push("Sorry, I did not get that.".to_string());
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(step: Step) -> WorkflowState {
        let mut s = WorkflowState::new(workflow("lead").unwrap());
        s.step = step;
        if step == Step::Confirming {
            for f in ["email", "phone", "company"] {
                s.collected_data.insert(f.into(), "v".into());
            }
        }
        s
    }

    fn events() -> Vec<Event> {
        let mut v = vec![Event::Confirmed, Event::Declined, Event::NoSignal];
        for c in [Confidence::High, Confidence::Medium, Confidence::Low] {
            v.push(Event::FieldExtracted { field: "email".into(), value: "a@b".into(), confidence: c });
            v.push(Event::FieldExtracted { field: "shoe_size".into(), value: "9".into(), confidence: c });
        }
        v
    }

    /// Machine coverage: every (step, event) pair is a transition or an explicit rejection,
    /// and what each one does is checked here, in one table.
    #[test]
    fn machine_coverage_every_step_event_pair_is_transition_or_explicit_rejection() {
        let mut seen = 0;
        for s in Step::ALL {
            for e in events() {
                let state = st(s);
                let r = step(&state, &e);
                seen += 1;
                match (s.is_terminal(), &e, &r) {
                    (true, _, Err(Rejected::Terminal(t))) => assert_eq!(*t, s),
                    (true, _, other) => panic!("terminal {s:?} + {e:?} gave {other:?}"),
                    (false, Event::FieldExtracted { field, .. }, Err(Rejected::UnknownField(f))) if field == "shoe_size" => {
                        assert_eq!(f, field)
                    }
                    (false, Event::FieldExtracted { confidence: Confidence::High, .. }, Ok(t)) => {
                        assert_eq!(t.state.collected_data.get("email").map(String::as_str), Some("a@b"));
                        assert_eq!(t.state.no_signal_streak, 0);
                    }
                    (false, Event::FieldExtracted { confidence: Confidence::Medium, .. }, Ok(t)) => {
                        assert_eq!(t.state, state, "medium confidence must not change state");
                        assert!(matches!(t.commands[..], [Command::ConfirmValue { .. }]));
                    }
                    (false, Event::FieldExtracted { confidence: Confidence::Low, .. }, Ok(t)) | (false, Event::NoSignal, Ok(t)) => {
                        assert_eq!(t.state.collected_data, state.collected_data);
                        assert_eq!(t.state.no_signal_streak, state.no_signal_streak + 1);
                        assert_eq!(t.state.step, s);
                    }
                    (false, Event::Confirmed, Err(Rejected::NothingToConfirm)) => assert_eq!(s, Step::Gathering),
                    (false, Event::Confirmed, Ok(t)) => {
                        assert_eq!(s, Step::Confirming);
                        assert_eq!(t.state.step, Step::Succeeded);
                        assert_eq!(t.commands, vec![Command::Submit]);
                    }
                    (false, Event::Declined, Ok(t)) => assert_eq!(t.state.step, Step::Cancelled),
                    (_, _, other) => panic!("unexpected: {s:?} + {e:?} -> {other:?}"),
                }
            }
        }
        assert_eq!(seen, Step::ALL.len() * events().len());
    }

    #[test]
    fn low_confidence_never_transitions() {
        for s in [Step::Gathering, Step::Confirming] {
            let mut state = st(s);
            for i in 0..NO_SIGNAL_STREAK_MAX {
                let ev = Event::FieldExtracted { field: "email".into(), value: format!("x{i}"), confidence: Confidence::Low };
                let t = step(&state, &ev).unwrap();
                assert_eq!(t.state.step, s);
                assert_eq!(t.state.collected_data, state.collected_data);
                state = t.state;
            }
        }
    }

    #[test]
    fn four_no_signal_turns_lead_to_needs_human() {
        let mut state = st(Step::Gathering);
        for turn in 1..=4 {
            state = apply_turn(&state, &[]).state;
            if turn <= NO_SIGNAL_STREAK_MAX {
                assert_eq!(state.step, Step::Gathering, "turn {turn}");
                assert!(state.no_signal_streak <= NO_SIGNAL_STREAK_MAX);
            }
        }
        assert_eq!(state.step, Step::NeedsHuman);
    }

    #[test]
    fn turn_limit_bounds_every_conversation() {
        let mut state = st(Step::Gathering);
        let medium = Event::FieldExtracted { field: "email".into(), value: "?".into(), confidence: Confidence::Medium };
        for _ in 0..TURNS_MAX {
            state = apply_turn(&state, std::slice::from_ref(&medium)).state;
        }
        assert_eq!(state.step, Step::NeedsHuman);
    }

    #[test]
    fn lead_workflow_reaches_succeeded() {
        let mut state = st(Step::Gathering);
        for f in ["email", "phone", "company"] {
            let ev = Event::FieldExtracted { field: f.into(), value: "v".into(), confidence: Confidence::High };
            state = apply_turn(&state, &[ev]).state;
        }
        assert_eq!(state.step, Step::Confirming);
        let out = apply_turn(&state, &[Event::Confirmed]);
        assert_eq!(out.state.step, Step::Succeeded);
        assert!(out.commands.contains(&Command::Submit));
    }
}
