//! Routing cost per request: feature extraction + complexity score + policy, for a short
//! command and a long multi-part prompt. `cargo bench -p tiergate-router --bench decide`
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tiergate_router::{
    Forwarding, NodeView, PromptFeatures, RouterConfig, Signals, Tier, TierConstraint,
    UpstreamView, decide,
};

const SHORT: &str = "turn on the kitchen lights";

fn long_prompt() -> String {
    let paragraph = "A store sells 3 kinds of fruit. Apples cost $2 each, pears cost $3 and \
        plums cost $1.50. If Maria buys twice as many apples as pears, and 4 more plums than \
        apples, then spends $41 in total, how many of each did she buy? Explain step by step, \
        then compare with the case where pears cost $2.50.\n- show the equations\n- check it\n";
    paragraph.repeat(8) // about 2,700 characters, 480 words
}

fn bench(c: &mut Criterion) {
    let config = RouterConfig::default();
    let node = NodeView {
        local_tier: Tier::Edge,
        local_variant: None,
        local_cpu: None,
        upstreams: vec![
            UpstreamView {
                tier: Tier::Regional,
                available: true,
            },
            UpstreamView {
                tier: Tier::Cloud,
                available: true,
            },
        ],
    };
    let forwarding = Forwarding::default();
    let long = long_prompt();
    for (name, prompt) in [("short", SHORT), ("long", long.as_str())] {
        c.bench_function(&format!("features/{name}"), |b| {
            b.iter(|| PromptFeatures::extract(black_box(prompt)))
        });
        c.bench_function(&format!("features+decide/{name}"), |b| {
            b.iter(|| {
                let signals = Signals::from_prompt(black_box(prompt));
                decide(&config, &signals, &node, TierConstraint::None, &forwarding)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
