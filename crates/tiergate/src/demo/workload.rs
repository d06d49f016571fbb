//! The prompts the demo sends to the edge.

use tiergate_proto::v1 as pb;

/// One prompt of the demo workload.
#[derive(Debug, Clone, Copy)]
pub struct DemoPrompt {
    pub kind: &'static str,
    pub prompt: &'static str,
    pub constraint: pb::TierConstraint,
}

/// Prompts whose route does not depend on the model: one complex by its text alone, and two
/// pinned to the edge by the client.
const ESSAY: DemoPrompt = DemoPrompt {
    kind: "open-ended",
    prompt: "Write a detailed essay comparing the economic policies of the Roman Republic and the early Roman Empire, step by step, with examples.",
    constraint: pb::TierConstraint::Unspecified,
};
const UNLOCK: DemoPrompt = DemoPrompt {
    kind: "privacy",
    prompt: "unlock the front door",
    constraint: pb::TierConstraint::EdgeOnly,
};
const MEDICAL: DemoPrompt = DemoPrompt {
    kind: "privacy",
    prompt: "summarise my medical history for the doctor",
    constraint: pb::TierConstraint::EdgeOnly,
};

/// The toy models' workload: in-domain, harder, open-ended and privacy-pinned prompts.
pub const TOY_WORKLOAD: &[DemoPrompt] = &[
    DemoPrompt {
        kind: "in-domain",
        prompt: "turn on the kitchen lights",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "what is 12 plus 7",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "convert 5 kilometers to meters",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "in-domain",
        prompt: "hello",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "which one is heavier, a mouse or a horse",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "Rosa had 18 apples and found 4 more. how many apples does Rosa have now",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "what is 17 times 23 minus 45",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "tell me what a volcano is",
        constraint: pb::TierConstraint::Unspecified,
    },
    ESSAY,
    DemoPrompt {
        kind: "open-ended",
        prompt: "Prove that there are infinitely many prime numbers, then explain how the proof generalises.",
        constraint: pb::TierConstraint::Unspecified,
    },
    UNLOCK,
    MEDICAL,
];

/// The real edge model's workload (SmolLM2-135M-Instruct): questions its calibrated gate keeps
/// (models/smollm2/calibration.jsonl), ones it escalates, ones that go up on their text alone,
/// and privacy-pinned ones.
pub const REAL_WORKLOAD: &[DemoPrompt] = &[
    DemoPrompt {
        kind: "easy",
        prompt: "What is the capital of Japan?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "easy",
        prompt: "What is the chemical symbol for gold?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "easy",
        prompt: "What is the opposite of \"big\"?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "easy",
        prompt: "Who was the first person to walk on the Moon?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "What is 47 times 86?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "What is the square root of 169?",
        constraint: pb::TierConstraint::Unspecified,
    },
    DemoPrompt {
        kind: "harder",
        prompt: "In what year did the Battle of Hastings take place?",
        constraint: pb::TierConstraint::Unspecified,
    },
    ESSAY,
    DemoPrompt {
        kind: "open-ended",
        prompt: "Compare the CAP theorem trade-offs of Cassandra and PostgreSQL, then explain which suits a bank's ledger and why.",
        constraint: pb::TierConstraint::Unspecified,
    },
    UNLOCK,
    MEDICAL,
];
