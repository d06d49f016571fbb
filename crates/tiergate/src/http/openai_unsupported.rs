//! OpenAI request fields tiergate cannot honour. Each is refused with a 400 that names it when
//! it asks for something (a JSON schema, echoed prompts, several candidates, penalties...), and
//! accepted when it carries its neutral value, which is what SDKs often send by default. Fields
//! that do not change the answer (`user`, `metadata`, `store`, `service_tier`) are ignored.

use serde_json::Value;

use crate::node::NodeError;

/// A field and the test that says its value asks for nothing.
struct Unsupported {
    name: &'static str,
    neutral: fn(&Value) -> bool,
    why: &'static str,
}

fn is_false(value: &Value) -> bool {
    value == &Value::Bool(false)
}

fn is_zero(value: &Value) -> bool {
    value.as_f64() == Some(0.0)
}

fn is_one(value: &Value) -> bool {
    value.as_u64() == Some(1)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn is_text_format(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("text")
}

fn is_no_tool_choice(value: &Value) -> bool {
    value.as_str() == Some("none")
}

fn is_text_only(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|m| m.iter().all(|m| m.as_str() == Some("text")))
}

const UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        name: "response_format",
        neutral: is_text_format,
        why: "only {\"type\": \"text\"}; JSON modes and schemas are not enforced",
    },
    Unsupported {
        name: "echo",
        neutral: is_false,
        why: "the prompt is not echoed",
    },
    Unsupported {
        name: "best_of",
        neutral: is_one,
        why: "one candidate is generated per request",
    },
    Unsupported {
        name: "suffix",
        neutral: is_empty,
        why: "insertion (text after the completion) is not supported",
    },
    Unsupported {
        name: "logit_bias",
        neutral: is_empty,
        why: "token biases are not applied",
    },
    Unsupported {
        name: "presence_penalty",
        neutral: is_zero,
        why: "penalties are not applied",
    },
    Unsupported {
        name: "frequency_penalty",
        neutral: is_zero,
        why: "penalties are not applied",
    },
    Unsupported {
        name: "tool_choice",
        neutral: is_no_tool_choice,
        why: "tools are not supported",
    },
    Unsupported {
        name: "functions",
        neutral: is_empty,
        why: "functions are not supported",
    },
    Unsupported {
        name: "function_call",
        neutral: |v| v.as_str() == Some("none"),
        why: "functions are not supported",
    },
    Unsupported {
        name: "modalities",
        neutral: is_text_only,
        why: "only text is generated",
    },
    Unsupported {
        name: "audio",
        neutral: |_| false,
        why: "only text is generated",
    },
    Unsupported {
        name: "prediction",
        neutral: |_| false,
        why: "predicted outputs are not supported",
    },
];

/// Refuses the first field of `body` (a JSON object) that asks for what tiergate cannot do.
/// `null` counts as absent.
pub fn refuse_unsupported(body: &Value) -> Result<(), NodeError> {
    for field in UNSUPPORTED {
        if let Some(value) = body.get(field.name)
            && !value.is_null()
            && !(field.neutral)(value)
        {
            return Err(NodeError::InvalidArgument(format!(
                "`{}` = {value} is not supported: {}",
                field.name, field.why
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn fields_that_ask_for_something_are_refused_by_name() {
        for (field, value) in [
            ("response_format", json!({"type": "json_object"})),
            ("echo", json!(true)),
            ("best_of", json!(2)),
            ("suffix", json!("end")),
            ("logit_bias", json!({"50256": -100})),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("tool_choice", json!("auto")),
            ("modalities", json!(["text", "audio"])),
            ("audio", json!({"voice": "alloy"})),
        ] {
            let err = refuse_unsupported(&json!({ field: value })).unwrap_err();
            assert!(matches!(err, NodeError::InvalidArgument(_)), "{field}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn neutral_values_and_harmless_fields_are_accepted() {
        let body = json!({
            "response_format": {"type": "text"},
            "echo": false,
            "best_of": 1,
            "suffix": "",
            "logit_bias": {},
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "tool_choice": "none",
            "modalities": ["text"],
            "prediction": null,
            "user": "alice",
            "metadata": {"k": "v"},
            "store": false,
            "service_tier": "auto",
        });
        refuse_unsupported(&body).unwrap();
    }
}
