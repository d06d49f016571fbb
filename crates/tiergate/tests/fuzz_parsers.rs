//! Property-based fuzzing (stable toolchain, proptest) of two parsers of untrusted or
//! operator-written input:
//! - the gRPC request conversion: protobuf bytes as a client sends them, decoded by prost and
//!   validated by `tiergate_api::wire::request_from_pb`, plus the `grpc-timeout` header;
//! - the config loader: TOML files and `TIERGATE__…` overrides built from the real section and
//!   key names with odd values, loaded by `config::load` and `Config::validate`.
//!
//! Properties: no input panics; refusals use the documented error type (`NodeError::
//! InvalidArgument`, `ConfigError`); what is accepted can be used without panicking (a
//! request's deadline, a config's request deadlines). `make test` runs a few hundred cases;
//! `scripts/fuzz.sh` runs many more (PROPTEST_CASES). Inputs that once failed are kept as plain
//! tests at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use prost::Message as _;
use tiergate::config::{Config, ConfigError};
use tiergate::grpc::grpc_timeout;
use tiergate::node::{Input, Limits, NodeError};
use tiergate_api::wire::{request_from_pb, request_to_pb};
use tiergate_proto::v1 as pb;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// --- gRPC ---

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "",
                " ",
                "user",
                "system",
                "assistant",
                "developer",
                "tool",
                "hi"
            ][..]
        )
        .prop_map(str::to_owned),
        ".{0,12}",
    ]
}

fn generate_request() -> impl Strategy<Value = pb::GenerateRequest> {
    let messages = prop::collection::vec(
        (text(), text()).prop_map(|(role, content)| pb::ChatMessage { role, content }),
        0..4,
    );
    let params = prop::option::of(
        (
            prop_oneof![Just(0u32), 1u32..600, any::<u32>()],
            prop::option::of(prop_oneof![-1.0f32..3.0, any::<f32>()]),
            prop::option::of(any::<u32>()),
            prop::option::of(prop_oneof![-0.5f32..1.5, any::<f32>()]),
            prop::option::of(any::<u64>()),
            prop::collection::vec(text(), 0..6),
            prop::option::of(prop_oneof![0u32..=21, any::<u32>()]),
        )
            .prop_map(
                |(max_new_tokens, temperature, top_k, top_p, seed, stop, top_logprobs)| {
                    pb::GenerationParams {
                        max_new_tokens,
                        temperature,
                        top_k,
                        top_p,
                        seed,
                        stop,
                        top_logprobs,
                    }
                },
            ),
    );
    let forwarding = prop::option::of(
        (
            any::<u32>(),
            prop::collection::vec(-1i32..5, 0..4),
            prop::collection::vec(text(), 0..3),
        )
            .prop_map(|(hop_count, tiers_tried, via)| pb::ForwardingInfo {
                hop_count,
                tiers_tried,
                via,
            }),
    );
    (
        text(),
        messages,
        params,
        -1i32..6,
        forwarding,
        text(),
        text(),
    )
        .prop_map(
            |(prompt, messages, params, tier_constraint, forwarding, model, request_id)| {
                pb::GenerateRequest {
                    prompt,
                    messages,
                    params,
                    tier_constraint,
                    forwarding,
                    model,
                    request_id,
                }
            },
        )
}

/// Raw protobuf bytes: a valid encoding with some bytes changed, or noise.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        (
            generate_request(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)
        )
            .prop_map(|(request, edits)| {
                let mut bytes = request.encode_to_vec();
                for (index, byte) in edits {
                    if !bytes.is_empty() {
                        let at = index.index(bytes.len());
                        bytes[at] = byte;
                    }
                }
                bytes
            }),
    ]
}

fn timeout() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of(prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..1_000_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
    ])
}

fn check_request(
    request: pb::GenerateRequest,
    timeout: Option<Duration>,
) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let now = Instant::now();
    match request_from_pb(request, &limits, timeout, now) {
        Ok(converted) => {
            let s = &converted.sampling;
            prop_assert!(s.max_new_tokens >= 1 && s.max_new_tokens <= limits.max_new_tokens);
            prop_assert!(s.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
            prop_assert!(s.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
            prop_assert!(
                s.logprobs
                    .is_none_or(|k| k <= tiergate_api::MAX_TOP_LOGPROBS)
            );
            prop_assert!(converted.deadline <= now + limits.max_timeout);
            if let Input::Chat(messages) = &converted.input {
                prop_assert!(messages.len() <= limits.max_messages);
            }
            // What a node forwards up converts back to the same request.
            let again = request_from_pb(request_to_pb(&converted), &limits, timeout, now);
            prop_assert!(again.is_ok(), "forwarded form refused: {:?}", again.err());
        }
        Err(NodeError::InvalidArgument(message)) => prop_assert!(!message.is_empty()),
        Err(other) => {
            return Err(TestCaseError::fail(format!(
                "not INVALID_ARGUMENT: {other:?}"
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn grpc_requests_never_panic(request in generate_request(), timeout in timeout()) {
        check_request(request, timeout)?;
    }

    #[test]
    fn grpc_wire_bytes_never_panic(bytes in wire_bytes(), timeout in timeout()) {
        // prost refuses malformed bytes (tonic answers INTERNAL before our code runs).
        if let Ok(request) = pb::GenerateRequest::decode(bytes.as_slice()) {
            check_request(request, timeout)?;
        }
    }

    #[test]
    fn grpc_timeout_header_never_panics(value in prop::collection::vec(any::<u8>(), 0..12)) {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(value.as_slice()) {
            metadata.insert("grpc-timeout", value);
        }
        let _ = grpc_timeout(&metadata);
    }
}

// --- config ---

const SECTIONS: &[(&str, &[&str])] = &[
    ("node", &["name", "tier", "routed_model"]),
    ("server", &["grpc_listen", "http_listen", "tls"]),
    (
        "limits",
        &[
            "max_new_tokens",
            "default_max_new_tokens",
            "default_timeout",
            "max_timeout",
            "max_body_bytes",
            "max_messages",
            "max_stop_sequences",
        ],
    ),
    (
        "engine",
        &[
            "model_dir",
            "variant",
            "workers",
            "max_batch",
            "graph_optimization",
        ],
    ),
    (
        "router",
        &[
            "local_max_complexity",
            "cloud_min_complexity",
            "max_hops",
            "confidence",
        ],
    ),
    (
        "budget",
        &["local_reserve", "upstream_reserve", "upstream_share"],
    ),
    ("retry", &["ratio", "min_per_second", "window"]),
    ("hedge", &["regional", "cloud"]),
    (
        "cache",
        &["enabled", "ttl", "max_entries", "max_bytes", "mode"],
    ),
    ("model_trust", &["trusted_keys", "integrity_check_interval"]),
    ("upstreams", &["regional", "cloud"]),
];

const DURATIONS: &[&str] = &[
    "0s",
    "1ms",
    "250ms",
    "30s",
    "1.5s",
    "5m",
    "1h",
    "p95",
    "off",
    "-1s",
    "1e3s",
    "s",
    "",
    ".s",
    "18446744073709551615s",
    "10000000000000000000s",
    "99999999999999999999h",
    "1000000000000h",
];

fn value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        prop::sample::select(DURATIONS).prop_map(|s| toml::Value::String(s.to_owned())),
        prop::sample::select(
            &[
                "edge",
                "regional",
                "cloud",
                "fp32",
                "int4",
                "all",
                "offline",
                "always",
                "127.0.0.1:0",
                "http://127.0.0.1:1",
                "x"
            ][..]
        )
        .prop_map(|s| toml::Value::String(s.to_owned())),
        any::<i64>().prop_map(toml::Value::Integer),
        (-2i64..1000).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        (-1.0f64..2.0).prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        ".{0,8}".prop_map(toml::Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..3)
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// A config table over the real sections and keys (and the odd unknown one).
fn config_table() -> impl Strategy<Value = toml::Table> {
    let entry = (
        prop::sample::select(SECTIONS),
        any::<prop::sample::Index>(),
        "[a-z_]{1,8}",
        prop::bool::weighted(0.1),
        value(),
    )
        .prop_map(|((section, keys), index, odd, use_odd, value)| {
            let key = if use_odd {
                odd
            } else {
                keys[index.index(keys.len())].to_owned()
            };
            (section.to_owned(), key, value)
        });
    prop::collection::vec(entry, 0..6).prop_map(|entries| {
        let mut table = toml::Table::new();
        for (section, key, value) in entries {
            let inner = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = inner {
                inner.insert(key, value);
            }
        }
        table
    })
}

fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    let var = prop_oneof![
        prop::sample::select(SECTIONS).prop_map(|(s, keys)| format!(
            "TIERGATE__{}__{}",
            s.to_uppercase(),
            keys[0].to_uppercase()
        )),
        "TIERGATE__[A-Z_]{0,12}",
    ];
    let raw = prop_oneof![
        prop::sample::select(DURATIONS).prop_map(str::to_owned),
        ".{0,10}",
        "\\[.{0,6}\\]",
    ];
    prop::collection::vec((var, raw), 0..3)
}

/// A config file: the table rendered as TOML, sometimes cut short or with noise spliced in.
fn config_file() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => config_table().prop_map(|t| toml::to_string(&t).unwrap_or_default()),
        1 => (config_table(), any::<prop::sample::Index>(), ".{0,6}").prop_map(|(t, at, noise)| {
            let mut text = toml::to_string(&t).unwrap_or_default();
            let mut cut = at.index(text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.insert_str(cut, &noise);
            text
        }),
    ]
}

fn load_config(text: &str, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let config: Config = tiergate::config::load(Some(file.path()), env)?;
    config.validate()?;
    Ok(config)
}

/// A config that loads is used without panicking: every request computes its deadline from
/// `[limits]` (HTTP with no timeout, gRPC with the longest one a client can send).
fn check_config(result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    match result {
        Ok(config) => {
            let now = Instant::now();
            let _ = config.limits.deadline(now, None);
            let _ = config
                .limits
                .deadline(now, Some(Duration::from_secs(99_999_999 * 3600)));
        }
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(384)))]

    #[test]
    fn config_files_never_panic(text in config_file(), env in env_overrides()) {
        check_config(load_config(&text, env))?;
    }

    #[test]
    fn config_bytes_never_panic(text in ".{0,64}") {
        check_config(load_config(&text, Vec::new()))?;
    }
}

/// Durations as an operator might type them, typos and absurd sizes included.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(DURATIONS).prop_map(str::to_owned),
        (
            "[0-9]{1,21}(\\.[0-9]{0,3})?",
            prop::sample::select(&["ms", "s", "m", "h", ""][..])
        )
            .prop_map(|(n, unit)| format!("{n}{unit}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(384)))]

    /// `[limits]` alone, where the request deadline comes from: the generic property above
    /// rarely sets both timeouts at once.
    #[test]
    fn config_limits_timeouts_never_panic(default in duration_text(), max in duration_text()) {
        let text = format!("[limits]\ndefault_timeout = \"{default}\"\nmax_timeout = \"{max}\"\n");
        check_config(load_config(&text, Vec::new()))?;
    }
}

// --- regressions: inputs that once failed, kept as plain tests ---

/// Both timeouts beyond what an `Instant` can hold: the config loaded and every HTTP request
/// then panicked computing its deadline (`now + timeout`). Durations are now bounded where
/// they are parsed.
#[test]
fn regression_absurd_timeouts_are_refused_not_a_panic() {
    let text = "[limits]\ndefault_timeout = \"10000000000000000000s\"\nmax_timeout = \"10000000000000000000s\"\n";
    let result = load_config(text, Vec::new());
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("limits.default_timeout") && message.contains("longer than 10 years"),
        "{message}"
    );
    check_config(result).unwrap();
}
