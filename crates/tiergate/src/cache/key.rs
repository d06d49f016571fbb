//! The cache key: a SHA-256 over a canonical encoding of the node's own validated request, so
//! that two requests share a key exactly when they must get the same answer. The prompt never
//! leaves this file except hashed: keys are never logged or used as labels.

use sha2::{Digest, Sha256};

use crate::node::{Input, NodeRequest, Role};

/// Bumped whenever the encoding below changes, so that old files simply miss.
const KEY_VERSION: &[u8] = b"tiergate-cache-key-v1";

/// A request's key in one tenant's keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

/// Whether the same request always gets the same answer: greedy decoding (no temperature, or
/// 0), or sampling from a fixed seed.
pub fn is_deterministic(request: &NodeRequest) -> bool {
    let greedy = request.sampling.temperature.is_none_or(|t| t == 0.0);
    greedy || request.sampling.seed.is_some()
}

impl CacheKey {
    /// The key of `request` in `tenant`'s keyspace (empty without `[[tenants]]`). Every field
    /// that can change the answer is in it: the input (role by role, or raw text), the token
    /// budget, every sampling parameter, the stop sequences and the tier constraint (a request
    /// pinned to the local model must never get a cloud answer). Each field is tagged and
    /// length-prefixed so that no two different requests encode alike.
    pub fn of(tenant: &str, request: &NodeRequest) -> CacheKey {
        let mut encoder = Encoder(Sha256::new());
        encoder.bytes(b"version", KEY_VERSION);
        encoder.bytes(b"tenant", tenant.as_bytes());
        match &request.input {
            Input::Text(text) => encoder.bytes(b"text", text.as_bytes()),
            Input::Chat(messages) => {
                encoder.u64(b"chat", messages.len() as u64);
                for message in messages {
                    let role: &[u8] = match message.role {
                        Role::System => b"system",
                        Role::User => b"user",
                        Role::Assistant => b"assistant",
                    };
                    encoder.bytes(b"role", role);
                    encoder.bytes(b"content", message.content.as_bytes());
                }
            }
        }
        let sampling = &request.sampling;
        encoder.u64(b"max_new_tokens", u64::from(sampling.max_new_tokens));
        // Unset and 0 both mean greedy: the same answer, the same key.
        let temperature = sampling.temperature.filter(|t| *t != 0.0);
        encoder.option(b"temperature", temperature.map(|t| u64::from(t.to_bits())));
        encoder.option(b"top_k", sampling.top_k.map(u64::from));
        encoder.option(b"top_p", sampling.top_p.map(|p| u64::from(p.to_bits())));
        encoder.option(b"seed", sampling.seed);
        encoder.u64(b"stop", sampling.stop.len() as u64);
        for stop in &sampling.stop {
            encoder.bytes(b"stop_sequence", stop.as_bytes());
        }
        let constraint = serde_json::to_string(&request.constraint).unwrap_or_default();
        encoder.bytes(b"constraint", constraint.as_bytes());
        CacheKey(encoder.0.finalize().into())
    }
}

struct Encoder(Sha256);

impl Encoder {
    fn bytes(&mut self, tag: &[u8], value: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    fn u64(&mut self, tag: &[u8], value: u64) {
        self.bytes(tag, &value.to_le_bytes());
    }

    fn option(&mut self, tag: &[u8], value: Option<u64>) {
        match value {
            Some(value) => self.u64(tag, value),
            None => self.bytes(tag, b"none"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use tiergate_router::tier::TierConstraint;

    use super::*;
    use crate::node::{Forwarding, Message, Sampling};

    fn request() -> NodeRequest {
        NodeRequest {
            input: Input::Chat(vec![
                Message {
                    role: Role::System,
                    content: "Be brief.".into(),
                },
                Message {
                    role: Role::User,
                    content: "What is the capital of France?".into(),
                },
            ]),
            sampling: Sampling {
                max_new_tokens: 32,
                ..Sampling::default()
            },
            constraint: TierConstraint::None,
            forwarding: Forwarding::default(),
            deadline: Instant::now() + Duration::from_secs(5),
            arrived: Instant::now(),
            request_id: "a".into(),
            tenant: None,
            trace: tiergate_upstream::TraceContext::fresh(),
        }
    }

    #[test]
    fn the_same_request_gets_the_same_key_whatever_travels_with_it() {
        let a = request();
        let mut b = request();
        // Neither the request id, the deadline nor the path so far change the answer.
        b.request_id = "b".into();
        b.deadline += Duration::from_secs(3);
        b.forwarding.hop_count = 1;
        assert_eq!(CacheKey::of("", &a), CacheKey::of("", &b));
        // Unset temperature and 0 are both greedy.
        b.sampling.temperature = Some(0.0);
        assert_eq!(CacheKey::of("", &a), CacheKey::of("", &b));
    }

    #[test]
    fn any_change_that_can_change_the_answer_changes_the_key() {
        let base = CacheKey::of("", &request());
        type Change = Box<dyn Fn(&mut NodeRequest)>;
        let changes: Vec<Change> = vec![
            Box::new(|r| r.sampling.max_new_tokens = 33),
            Box::new(|r| r.sampling.temperature = Some(0.7)),
            Box::new(|r| r.sampling.top_k = Some(40)),
            Box::new(|r| r.sampling.top_p = Some(0.9)),
            Box::new(|r| r.sampling.seed = Some(7)),
            Box::new(|r| r.sampling.stop = vec!["\n".into()]),
            Box::new(|r| r.constraint = TierConstraint::EdgeOnly),
            Box::new(|r| {
                if let Input::Chat(m) = &mut r.input {
                    m[1].content.push('!');
                }
            }),
            Box::new(|r| {
                if let Input::Chat(m) = &mut r.input {
                    m[0].role = Role::User;
                }
            }),
            // The same words as raw text are another request (no chat template).
            Box::new(|r| r.input = Input::Text("What is the capital of France?".into())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = request();
            change(&mut changed);
            assert_ne!(CacheKey::of("", &changed), base, "change {i}");
        }
        assert_ne!(CacheKey::of("tenant-a", &request()), base);
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = request();
        let mut b = request();
        a.input = Input::Chat(vec![
            Message {
                role: Role::User,
                content: "ab".into(),
            },
            Message {
                role: Role::User,
                content: "c".into(),
            },
        ]);
        b.input = Input::Chat(vec![
            Message {
                role: Role::User,
                content: "a".into(),
            },
            Message {
                role: Role::User,
                content: "bc".into(),
            },
        ]);
        assert_ne!(CacheKey::of("", &a), CacheKey::of("", &b));
    }

    #[test]
    fn only_greedy_or_seeded_requests_are_deterministic() {
        let mut r = request();
        assert!(is_deterministic(&r));
        r.sampling.temperature = Some(0.0);
        assert!(is_deterministic(&r));
        r.sampling.temperature = Some(0.8);
        assert!(!is_deterministic(&r));
        r.sampling.seed = Some(1);
        assert!(is_deterministic(&r));
    }
}
