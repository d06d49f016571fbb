//! `engine.variant`: a graph the manifest names, or `auto`, which picks the fastest graph the
//! manifest lists for this CPU within the node's memory budget.
//!
//! Why the CPU decides: ONNX Runtime's one-row kernel for 4-bit weights with fp32 activations
//! (`MatMulNBits`, accuracy level 0, what the exact int4 graph uses) is fast with AVX-512 and
//! slow without it. Measured on SmolLM2-135M (docs/benchmarks.md): with AVX-512 an int4 decode
//! step took 45 ms against fp32's 71 ms; on an AVX2-only EPYC int4 took 248-375 ms against
//! fp32's 127 ms (the AVX2 kernel widens every weight to fp32 before its FMA). There the graph
//! with int8 activations (`int4-fast`, accuracy level 4: how llama.cpp computes the same Q4_1
//! weights) decodes at llama.cpp's speed, 2-2.5x fp32, and stays ahead of fp32 at 8 batched
//! streams, in a third of the memory. Its answers are as faithful as llama.cpp's (teacher-forced
//! top-1 against fp32 309/320 each) but not bit-close to the exact graphs, so its confidence
//! differs: the router takes the gate calibrated on it (`router.confidence_by_variant`). With
//! AVX-512 (VNNI) int4-fast is faster than int4 too (1.25-1.8x its decode), but its answers there
//! are not AVX2's: the gate calibrated on AVX2 keeps 17% wrong answers on them (budget 10%;
//! docs/benchmarks.md, Run R). So with AVX-512 a node's `auto` runs int4-fast only when its router
//! has a gate calibrated on this CPU's int8 kernels (`router.confidence_by_cpu.<kernels>.int4-fast`,
//! crate::cpu::Int8Kernels), and int4 otherwise; `tiergate generate`, which gates nothing, runs
//! int4-fast (`EngineConfig::int4_fast_with_avx512`).
//! fp32 and int4 compute the same function (logits within ~3e-4); the fp32 graph costs ~3x the
//! memory, hence the budget check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cpu::CpuKind;
use crate::manifest::{FileKind, Manifest, ModelVariant};

/// The fp32 graph's resident memory over the bytes of its files, measured on SmolLM2 (739-752
/// MB for 539 MB: 1.37-1.39x; docs/benchmarks.md "Memory (RSS)").
const FP32_RESIDENT_OVER_FILES: f64 = 1.4;
/// On top of that: a long prompt's prefill peak (+230 MB for 892 tokens with the int4 graph, in
/// chunks of 128) and the node's own servers.
const PEAK_MARGIN_MB: f64 = 256.0;

/// What `engine.variant` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariantChoice {
    /// The fastest graph on this CPU that fits the memory budget (see the module docs).
    Auto,
    /// This graph, or the load fails when the manifest does not list it.
    Named(ModelVariant),
}

/// fp32, as before `auto` existed: a config without the key keeps its graph.
impl Default for VariantChoice {
    fn default() -> Self {
        VariantChoice::Named(ModelVariant::Fp32)
    }
}

impl VariantChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            VariantChoice::Auto => "auto",
            VariantChoice::Named(variant) => variant.as_str(),
        }
    }
}

impl From<ModelVariant> for VariantChoice {
    fn from(variant: ModelVariant) -> Self {
        VariantChoice::Named(variant)
    }
}

impl fmt::Display for VariantChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VariantChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(VariantChoice::Auto),
            other => other.parse().map(VariantChoice::Named).map_err(|_| {
                format!(
                    "unknown model variant `{other}` (expected auto, fp32, int8, int4 or int4-fast)"
                )
            }),
        }
    }
}

impl Serialize for VariantChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for VariantChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The graph to load, and why (for the load's log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVariant {
    pub variant: ModelVariant,
    pub reason: String,
}

/// Resolves `choice` against the graphs `manifest` lists. `memory_budget_mb` is the node's
/// resident budget (`[device] memory_budget_mb`), if any; `int4_fast_with_avx512` whether
/// int4-fast may run with AVX-512 (a node: when its router has a gate calibrated on int4-fast's
/// answers on this CPU's int8 kernels). A named variant is returned as is (the load then fails
/// clearly when the manifest lacks it).
pub fn resolve_variant(
    choice: VariantChoice,
    manifest: &Manifest,
    cpu: CpuKind,
    memory_budget_mb: Option<u64>,
    int4_fast_with_avx512: bool,
) -> ResolvedVariant {
    let named = |variant: ModelVariant, reason: &str| ResolvedVariant {
        variant,
        reason: reason.to_owned(),
    };
    if let VariantChoice::Named(variant) = choice {
        return named(variant, "configured");
    }
    let listed = |variant: ModelVariant| manifest.model_file(variant).is_some();
    if cpu == CpuKind::X86WithoutAvx512 && listed(ModelVariant::Int4Fast) {
        return named(
            ModelVariant::Int4Fast,
            "auto: int4-fast on x86-64 without AVX-512 (int8 activations, as llama.cpp; the fastest graph here)",
        );
    }
    if cpu == CpuKind::X86Avx512 && listed(ModelVariant::Int4Fast) && int4_fast_with_avx512 {
        return named(
            ModelVariant::Int4Fast,
            "auto: int4-fast on x86-64 with AVX-512 (the fastest graph here; allowed: a gate calibrated on this CPU kind, or nothing gated)",
        );
    }
    let fp32_fits = match (memory_budget_mb, fp32_peak_mb(manifest)) {
        (Some(budget), Some(needed)) => needed <= budget as f64,
        _ => true,
    };
    let prefer_fp32 = cpu == CpuKind::X86WithoutAvx512 && fp32_fits;
    let order = if prefer_fp32 {
        [ModelVariant::Fp32, ModelVariant::Int4]
    } else {
        [ModelVariant::Int4, ModelVariant::Fp32]
    };
    let why = match (cpu, prefer_fp32) {
        (CpuKind::X86WithoutAvx512, true) => {
            "auto: fp32 first on x86-64 without AVX-512 (no int4-fast graph), where the int4 one-row kernel is slower"
        }
        (CpuKind::X86WithoutAvx512, false) => {
            "auto: int4 first, the fp32 graph would not fit the memory budget"
        }
        (CpuKind::X86Avx512, _) => {
            "auto: int4 first on x86-64 with AVX-512 (int4-fast is not listed, or has no gate calibrated on this CPU kind)"
        }
        (CpuKind::Other, _) => {
            "auto: int4 first (the smaller graph; speed not measured on this CPU)"
        }
    };
    if let Some(variant) = order.into_iter().find(|v| listed(*v)) {
        return named(variant, why);
    }
    // Neither exact graph: whatever the manifest lists first (the load verifies it).
    let first = manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Model)
        .find_map(|f| f.variant)
        .unwrap_or(ModelVariant::Fp32);
    named(
        first,
        "auto: the manifest lists neither int4 nor fp32; its first graph",
    )
}

/// Resident memory the fp32 graph would take at its peak, from the bytes of the files it loads.
fn fp32_peak_mb(manifest: &Manifest) -> Option<f64> {
    let model = manifest.model_file(ModelVariant::Fp32)?;
    // The graph's external weights sit beside it as `<graph>.data`.
    let weights = format!("{}.data", model.path);
    let bytes: u64 = manifest
        .files
        .iter()
        .filter(|f| f.path == model.path || f.path == weights || f.kind == FileKind::Tokenizer)
        .map(|f| f.bytes)
        .sum();
    Some(bytes as f64 * FP32_RESIDENT_OVER_FILES / (1024.0 * 1024.0) + PEAK_MARGIN_MB)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn manifest(variants: &[(&str, ModelVariant, u64)]) -> Manifest {
        let mut files = vec![serde_json::json!({
            "path": "tokenizer.json", "kind": "tokenizer", "sha256": "0".repeat(64), "bytes": 2_000_000
        })];
        for (path, variant, bytes) in variants {
            files.push(serde_json::json!({
                "path": path, "kind": "model", "variant": variant.as_str(),
                "sha256": "0".repeat(64), "bytes": 400_000
            }));
            files.push(serde_json::json!({
                "path": format!("{path}.data"), "kind": "weights", "variant": variant.as_str(),
                "sha256": "0".repeat(64), "bytes": bytes
            }));
        }
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "name": "m", "version": "1", "architecture": "llama",
            "context_length": 2048, "num_layers": 30, "num_kv_heads": 3, "head_dim": 64,
            "vocab_size": 49152,
            "io": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "logits": "logits", "past_key": "past.{layer}.key", "past_value": "past.{layer}.value",
                   "present_key": "present.{layer}.key", "present_value": "present.{layer}.value"},
            "special_tokens": {"eos": "<|im_end|>"},
            "chat_template": {"jinja": "{{ messages }}"},
            "files": files
        }))
        .expect("manifest")
    }

    /// SmolLM2's exact graphs: fp32 539 MB, int4 127 MB (as imported where int4-fast misses its
    /// parity budget).
    fn smollm2() -> Manifest {
        manifest(&[
            ("model.int4.onnx", ModelVariant::Int4, 127_000_000),
            ("model.onnx", ModelVariant::Fp32, 539_000_000),
        ])
    }

    /// SmolLM2 as imported on an AVX2 CPU: int4-fast (119 MB) beside the exact graphs.
    fn smollm2_with_int4_fast() -> Manifest {
        manifest(&[
            ("model.int4.onnx", ModelVariant::Int4, 127_000_000),
            ("model.int4-fast.onnx", ModelVariant::Int4Fast, 119_000_000),
            ("model.onnx", ModelVariant::Fp32, 539_000_000),
        ])
    }

    fn pick(
        choice: VariantChoice,
        m: &Manifest,
        cpu: CpuKind,
        budget: Option<u64>,
    ) -> ModelVariant {
        resolve_variant(choice, m, cpu, budget, false).variant
    }

    #[test]
    fn auto_runs_int4_fast_without_avx512_when_listed_and_int4_elsewhere() {
        let m = smollm2_with_int4_fast();
        for budget in [None, Some(512)] {
            let resolved = resolve_variant(
                VariantChoice::Auto,
                &m,
                CpuKind::X86WithoutAvx512,
                budget,
                false,
            );
            assert_eq!(resolved.variant, ModelVariant::Int4Fast);
            assert!(
                resolved.reason.contains("int8 activations"),
                "{}",
                resolved.reason
            );
        }
        // With AVX-512 the gate calibrated on AVX2's answers does not hold, off x86 int4-fast was
        // not measured since it changed: the exact int4 there, listed or not.
        for m in [m.clone(), smollm2()] {
            for cpu in [CpuKind::X86Avx512, CpuKind::Other] {
                assert_eq!(pick(VariantChoice::Auto, &m, cpu, None), ModelVariant::Int4);
            }
        }
        // With AVX-512 and a gate calibrated on this CPU's answers: int4-fast, the faster graph;
        // off x86 the gate changes nothing; and it cannot conjure a graph the import left out.
        let gated = |m: &Manifest, cpu| resolve_variant(VariantChoice::Auto, m, cpu, None, true);
        let resolved = gated(&m, CpuKind::X86Avx512);
        assert_eq!(resolved.variant, ModelVariant::Int4Fast);
        assert!(
            resolved.reason.contains("calibrated"),
            "{}",
            resolved.reason
        );
        assert_eq!(gated(&m, CpuKind::Other).variant, ModelVariant::Int4);
        assert_eq!(
            gated(&smollm2(), CpuKind::X86Avx512).variant,
            ModelVariant::Int4
        );
    }

    #[test]
    fn auto_runs_fp32_without_avx512_when_the_import_left_int4_fast_out() {
        assert_eq!(
            pick(
                VariantChoice::Auto,
                &smollm2(),
                CpuKind::X86WithoutAvx512,
                None
            ),
            ModelVariant::Fp32
        );
    }

    #[test]
    fn auto_keeps_int4_when_fp32_would_not_fit_the_memory_budget() {
        let m = smollm2();
        // fp32: (539 + 0.4 + 2) MB of files x 1.4 + 256 = ~979 MiB.
        assert_eq!(
            pick(
                VariantChoice::Auto,
                &m,
                CpuKind::X86WithoutAvx512,
                Some(900)
            ),
            ModelVariant::Int4
        );
        assert_eq!(
            pick(
                VariantChoice::Auto,
                &m,
                CpuKind::X86WithoutAvx512,
                Some(2048)
            ),
            ModelVariant::Fp32
        );
    }

    #[test]
    fn auto_takes_what_the_manifest_lists() {
        let int4_only = manifest(&[("model.int4.onnx", ModelVariant::Int4, 127_000_000)]);
        assert_eq!(
            pick(
                VariantChoice::Auto,
                &int4_only,
                CpuKind::X86WithoutAvx512,
                None
            ),
            ModelVariant::Int4
        );
        let toy = manifest(&[
            ("model.onnx", ModelVariant::Fp32, 4_000_000),
            ("model.int8.onnx", ModelVariant::Int8, 1_000_000),
        ]);
        assert_eq!(
            pick(VariantChoice::Auto, &toy, CpuKind::X86Avx512, None),
            ModelVariant::Fp32
        );
        let int8_only = manifest(&[("model.int8.onnx", ModelVariant::Int8, 1_000_000)]);
        assert_eq!(
            pick(VariantChoice::Auto, &int8_only, CpuKind::X86Avx512, None),
            ModelVariant::Int8
        );
    }

    #[test]
    fn a_named_variant_or_the_default_is_never_second_guessed() {
        let m = smollm2();
        let int4 = VariantChoice::Named(ModelVariant::Int4);
        assert_eq!(
            pick(int4, &m, CpuKind::X86WithoutAvx512, None),
            ModelVariant::Int4
        );
        let default = VariantChoice::default();
        assert_eq!(
            pick(default, &m, CpuKind::X86Avx512, None),
            ModelVariant::Fp32
        );
    }

    #[test]
    fn the_config_spells_it_auto_or_a_variant_name() {
        assert_eq!("auto".parse(), Ok(VariantChoice::Auto));
        assert_eq!(
            "int4-fast".parse(),
            Ok(VariantChoice::Named(ModelVariant::Int4Fast))
        );
        let error = "fastest".parse::<VariantChoice>().unwrap_err();
        assert!(error.contains("expected auto, fp32"), "{error}");
    }
}
