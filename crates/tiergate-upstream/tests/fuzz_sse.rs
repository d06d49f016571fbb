//! Property-based fuzzing (stable toolchain, proptest) of the SSE parser that reads a cloud
//! provider's stream. Properties: no input panics; the only error is `SseTooLarge`; and the
//! events do not depend on how the network split the bytes (the parser's whole contract: bytes
//! arrive split anywhere, inside a line, between `\r` and `\n`, inside a UTF-8 character).
//!
//! `make test` runs a few hundred cases; `scripts/fuzz.sh` runs many more (PROPTEST_CASES).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tiergate_upstream::sse::{SseEvent, SseParser};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Stream-like bytes: SSE lines (data, event, comments, id, retry, odd fields, multi-byte
/// text) joined by any of the three line ends, or plain noise.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        ".{0,12}".prop_map(|t| format!("data: {t}")),
        ".{0,12}".prop_map(|t| format!("data:{t}")),
        Just("data".to_owned()),
        Just("data: [DONE]".to_owned()),
        "[a-z]{0,6}".prop_map(|t| format!("event: {t}")),
        ".{0,8}".prop_map(|t| format!(":{t}")),
        Just("id: 7".to_owned()),
        Just("retry: 100".to_owned()),
        Just(String::new()),
        Just("é€😀".to_owned()),
        "[a-z:]{0,8}",
    ];
    let end = prop::sample::select(&["\n", "\r\n", "\r"][..]);
    prop_oneof![
        3 => prop::collection::vec((line, end), 0..16).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
                .collect()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => prop::collection::vec(
            prop::sample::select(&[b'\r', b'\n', b':', b' ', b'd', b'a', b't', 0xC3, 0xA9][..]),
            0..64
        ),
    ]
}

/// Feeds `chunks` in order; the events, and whether a chunk was refused as too large.
fn run(limit: usize, chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
    let mut parser = SseParser::with_limit(limit);
    let mut events = Vec::new();
    for chunk in chunks {
        match parser.feed(chunk) {
            Ok(more) => events.extend(more),
            Err(error) => {
                assert_eq!(error.limit, limit);
                return (events, true);
            }
        }
    }
    (events, false)
}

/// `bytes` cut at the given points (sorted, deduplicated, within bounds).
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&bytes[start..point]);
        start = point;
    }
    chunks.push(&bytes[start..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1000)))]

    #[test]
    fn events_do_not_depend_on_how_the_bytes_were_split(
        bytes in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        limit in prop_oneof![Just(SseParser::DEFAULT_LIMIT), 1usize..48],
    ) {
        let (whole, whole_too_large) = run(limit, &[&bytes]);
        let (pieces, pieces_too_large) = run(limit, &split(&bytes, &cuts));
        prop_assert_eq!(whole_too_large, pieces_too_large);
        if !whole_too_large {
            prop_assert_eq!(whole, pieces);
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events(bytes in stream()) {
        let (whole, _) = run(SseParser::DEFAULT_LIMIT, &[&bytes]);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let (pieces, _) = run(SseParser::DEFAULT_LIMIT, &singles);
        prop_assert_eq!(whole, pieces);
    }
}
