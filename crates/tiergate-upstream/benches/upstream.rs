//! Costs on the request path of an upstream call that are ours rather than the network's:
//! SSE parsing of a streamed answer, picking an endpoint, and the link-health bookkeeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tiergate_router::health::{LinkHealth, LinkHealthConfig};
use tiergate_upstream::balance;
use tiergate_upstream::sse::SseParser;

/// A 500-token OpenAI stream, as the provider sends it.
fn openai_stream() -> Vec<u8> {
    let mut out = String::new();
    for i in 0..500 {
        out += &format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\
             \"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\
             \"finish_reason\":null}}]}}\n\n"
        );
    }
    out += "data: [DONE]\n\n";
    out.into_bytes()
}

fn sse(c: &mut Criterion) {
    let stream = openai_stream();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    // Frames of about one TLS record each.
    group.bench_function("openai_stream_500_chunks", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut events = 0;
            for frame in stream.chunks(1400) {
                events += parser.feed(frame).unwrap().len();
            }
            assert_eq!(events, 501);
        });
    });
    group.finish();
}

fn balance(c: &mut Criterion) {
    let loads: Vec<Option<f64>> = (0..8).map(|i| Some(f64::from(i) + 1.0)).collect();
    let mut rng = StdRng::seed_from_u64(1);
    c.bench_function("balance/p2c_choose_of_8", |b| {
        b.iter(|| balance::choose(&loads, &mut rng));
    });
}

fn link_health(c: &mut Criterion) {
    let mut link = LinkHealth::new(LinkHealthConfig::default());
    let now = Instant::now();
    c.bench_function("link_health/acquire_and_record", |b| {
        b.iter(|| {
            assert!(link.try_acquire(now));
            link.record_success(Duration::from_millis(20), now);
        });
    });
}

criterion_group!(benches, sse, balance, link_health);
criterion_main!(benches);
