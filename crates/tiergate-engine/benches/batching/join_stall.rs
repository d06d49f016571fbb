//! The stall a long prompt causes: three streams decoding on one worker, then a prompt of about
//! N tokens joins. Every token's arrival is timed by the task reading its stream; the figure is
//! the longest gap between two tokens of a running stream while the long prompt was prefilled
//! (from its submission to its `Started` event), next to the streams' usual gap before it came.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use tiergate_engine::{Engine, GenerationEvent, GenerationRequest, Prompt, SamplingParams};

const RUNNING: [&str; 3] = [
    "Write a short story about a lighthouse keeper.",
    "Describe the water cycle in detail.",
    "Give advice to a new gardener.",
];

/// A running stream's first tokens, whose gaps include the other streams' prefills.
const JOINING_TOKENS: usize = 2;

pub struct Stall {
    pub prompt_tokens: usize,
    /// A running stream's mean gap between two tokens before the long prompt came (once all three
    /// decode together), the median of the three: read per stream over its span, so a burst of
    /// tokens read at once (the reading task not scheduled) does not count as gaps of 0.
    pub usual_gap: Duration,
    /// Longest gap between two tokens of a running stream while the long prompt was prefilled.
    pub longest_gap: Duration,
    /// Running-stream tokens that arrived while the long prompt was prefilled.
    pub tokens_meanwhile: usize,
    /// From submitting the long prompt to its first token.
    pub time_to_first_token: Duration,
}

/// Tokens every running stream has before the long prompt is submitted: well past the joins.
const DECODING_TOKENS: usize = 12;

/// Token arrival times of one running stream; `seen` counts its tokens as they come.
async fn arrivals(engine: Engine, prompt: &str, seen: Arc<AtomicUsize>) -> Vec<Instant> {
    let request = GenerationRequest::new(Prompt::user(prompt), SamplingParams::greedy(160));
    let mut stream = engine.generate_stream(request).expect("generate");
    let mut times = Vec::new();
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            GenerationEvent::Token(_) => {
                times.push(Instant::now());
                seen.fetch_add(1, Ordering::SeqCst);
            }
            GenerationEvent::Finished(_) => break,
            GenerationEvent::Started { .. } => {}
        }
    }
    times
}

/// Generations the engine must batch for the measurement: the running streams and the long
/// prompt.
pub const MAX_BATCH: usize = RUNNING.len() + 1;

/// `engine` must have one worker with `max_batch` >= `MAX_BATCH`.
pub fn measure(runtime: &tokio::runtime::Runtime, engine: &Engine, tokens: usize) -> Stall {
    let text = "The quick brown fox jumps over the lazy dog near the river bank. ";
    let length = |copies: usize| {
        let prompt = Prompt::user(text.repeat(copies));
        engine.tokenize(&prompt).expect("tokenize").len()
    };
    let (per_copy, template) = (length(2) - length(1), 2 * length(1) - length(2));
    let copies = tokens.saturating_sub(template) / per_copy.max(1);
    let long_prompt = Prompt::user(text.repeat(copies.max(1)));
    let prompt_tokens = engine.tokenize(&long_prompt).expect("tokenize").len();
    runtime.block_on(async {
        let counts: Vec<Arc<AtomicUsize>> = RUNNING.iter().map(|_| Arc::default()).collect();
        let running: Vec<_> = RUNNING
            .iter()
            .zip(&counts)
            .map(|(prompt, seen)| tokio::spawn(arrivals(engine.clone(), prompt, Arc::clone(seen))))
            .collect();
        // Wait until the three streams decode together, each well past its join.
        while counts
            .iter()
            .any(|seen| seen.load(Ordering::SeqCst) < DECODING_TOKENS)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let submitted = Instant::now();
        let request = GenerationRequest::new(long_prompt, SamplingParams::greedy(1));
        let mut long = engine.generate_stream(request).expect("generate");
        let mut started = None;
        let mut first_token = None;
        while let Some(event) = long.next().await {
            match event.expect("event") {
                GenerationEvent::Started { .. } => started = Some(Instant::now()),
                GenerationEvent::Token(_) => first_token = first_token.or(Some(Instant::now())),
                GenerationEvent::Finished(_) => break,
            }
        }
        let started = started.expect("the long prompt started");
        let streams: Vec<Vec<Instant>> = join_all(running)
            .await
            .into_iter()
            .map(|times| times.expect("stream task"))
            .collect();
        assert!(
            streams
                .iter()
                .any(|times| times.last().is_some_and(|&t| t > started)),
            "a running answer outlasts the long prompt's prefill"
        );
        let mut usual = Vec::new();
        let mut longest_gap = Duration::ZERO;
        let mut tokens_meanwhile = 0;
        for times in &streams {
            let before: Vec<Instant> = times.iter().copied().filter(|&t| t <= submitted).collect();
            assert!(
                before.len() > JOINING_TOKENS + 2,
                "{} tokens before the long prompt",
                before.len()
            );
            let decoding = &before[JOINING_TOKENS..];
            let span = decoding[decoding.len() - 1] - decoding[0];
            usual.push(span / (decoding.len() - 1) as u32);
            for pair in times.windows(2) {
                if pair[1] > submitted && pair[0] < started {
                    longest_gap = longest_gap.max(pair[1] - pair[0]);
                }
            }
            tokens_meanwhile += times
                .iter()
                .filter(|&&t| t > submitted && t < started)
                .count();
        }
        usual.sort();
        Stall {
            prompt_tokens,
            usual_gap: usual[usual.len() / 2],
            longest_gap,
            tokens_meanwhile,
            time_to_first_token: first_token.unwrap_or(started) - submitted,
        }
    })
}

fn modes(budget: usize, pair: &(Stall, Stall)) -> [(String, &Stall); 2] {
    [
        (format!("prefill {budget} per step"), &pair.0),
        ("whole prompt first".to_string(), &pair.1),
    ]
}

/// Both measurements (with the budget, whole prompt first) as JSON.
pub fn json(budget: usize, pair: &(Stall, Stall)) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = modes(budget, pair)
        .into_iter()
        .map(|(mode, s)| {
            serde_json::json!({
                "mode": mode,
                "prompt_tokens": s.prompt_tokens,
                "usual_gap_ms": s.usual_gap.as_secs_f64() * 1e3,
                "longest_gap_ms": s.longest_gap.as_secs_f64() * 1e3,
                "tokens_meanwhile": s.tokens_meanwhile,
                "time_to_first_token_ms": s.time_to_first_token.as_secs_f64() * 1e3,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// Both measurements as text, with their ratio.
pub fn write_text(
    out: &mut dyn Write,
    budget: usize,
    pair: &(Stall, Stall),
) -> std::io::Result<()> {
    writeln!(
        out,
        "a {}-token prompt joins three decoding streams:",
        pair.0.prompt_tokens
    )?;
    for (mode, s) in modes(budget, pair) {
        writeln!(
            out,
            "  {mode}: longest gap between two tokens of a running stream {:.0} ms (usual {:.0} \
             ms), {} running tokens meanwhile, the long prompt's first token after {:.0} ms",
            s.longest_gap.as_secs_f64() * 1e3,
            s.usual_gap.as_secs_f64() * 1e3,
            s.tokens_meanwhile,
            s.time_to_first_token.as_secs_f64() * 1e3,
        )?;
    }
    let ratio = pair.1.longest_gap.as_secs_f64() / pair.0.longest_gap.as_secs_f64().max(1e-9);
    writeln!(
        out,
        "  longest gap, whole prompt first / with the budget: {ratio:.1}x"
    )
}
