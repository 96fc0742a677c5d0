//! Copilot-side pitfalls: what the orchestrator sends or reads, changed on the way.

use super::KnownBug;
use orchestrator::copilot::{Copilot, CopilotError, CopilotReply, CopilotRequest};

pub struct BuggyCopilot<C> {
    pub inner: C,
    pub bug: Option<KnownBug>,
}

impl<C: Copilot> Copilot for BuggyCopilot<C> {
    async fn reply(&self, req: &CopilotRequest) -> Result<CopilotReply, CopilotError> {
        let mangled;
        let req = match self.bug {
            Some(KnownBug::ContextPrefixWithoutSpaces) => {
                // A prefix assembled by concatenation, its first separators forgotten.
                mangled = CopilotRequest { text: req.text.replacen(' ', "", 3), ..req.clone() };
                &mangled
            }
            _ => req,
        };
        let mut reply = self.inner.reply(req).await?;
        if self.bug == Some(KnownBug::ConfidenceIgnored) {
            if let Some(p) = reply.extracted_payload.as_mut().and_then(|p| p.as_object_mut()) {
                if p.contains_key("confidence") {
                    p.insert("confidence".into(), "high".into());
                }
            }
        }
        Ok(reply)
    }
}
