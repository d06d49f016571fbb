//! The node's use of the privacy guard (`crate::privacy`): before routing, a request whose text
//! holds personal data is pinned to this node, or gets a redacted copy for the tiers above.

use tiergate_router::tier::TierConstraint;

use super::{Input, Message, NodeError, NodeRequest};
use crate::metrics::NodeMetrics;
use crate::privacy::{PrivacyAction, PrivacyConfig};

/// Checks every turn of `request`. With `pin`, a finding turns the constraint into edge-only (a
/// request that insists on the cloud is refused rather than sent); with `redact`, returns the
/// input to forward in place of the original.
pub(super) fn guard(
    config: &PrivacyConfig,
    request: &mut NodeRequest,
    metrics: &NodeMetrics,
) -> Result<Option<Input>, NodeError> {
    if config.detectors.is_empty() {
        return Ok(None);
    }
    let found = match &request.input {
        Input::Text(text) => config.detect(text),
        Input::Chat(messages) => {
            let mut found = Vec::new();
            for message in messages {
                for detector in config.detect(&message.content) {
                    if !found.contains(&detector) {
                        found.push(detector);
                    }
                }
            }
            found
        }
    };
    if found.is_empty() {
        return Ok(None);
    }
    let action = match config.action {
        PrivacyAction::Pin => "pin",
        PrivacyAction::Redact => "redact",
    };
    for detector in &found {
        metrics
            .privacy_detections
            .with_label_values(&[detector.as_str(), action])
            .inc();
    }
    match config.action {
        PrivacyAction::Pin => {
            if request.constraint == TierConstraint::AtLeastCloud {
                let kinds: Vec<&str> = found.iter().map(|d| d.as_str()).collect();
                return Err(NodeError::InvalidArgument(format!(
                    "the request holds personal data ({}), which this node does not send upstream, \
                     but its tier constraint asks for the cloud",
                    kinds.join(", ")
                )));
            }
            request.constraint = TierConstraint::EdgeOnly;
            Ok(None)
        }
        PrivacyAction::Redact => Ok(Some(match &request.input {
            Input::Text(text) => Input::Text(config.redact(text)),
            Input::Chat(messages) => Input::Chat(
                messages
                    .iter()
                    .map(|m| Message {
                        role: m.role,
                        content: config.redact(&m.content),
                    })
                    .collect(),
            ),
        })),
    }
}
