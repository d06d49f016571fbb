//! The model directory contract: `manifest.json` (identity, shapes, graph IO names, special
//! tokens, chat template, files with sha256). Loading checks every listed file's size and hash.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::EngineError;

pub const MANIFEST_FILE: &str = "manifest.json";
const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Learned position embeddings; the graph takes `position_ids`.
    Gpt2,
    /// Rotary positions (from `position_ids` when the graph has them) and grouped-query attention.
    Llama,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
        }
    }
}

/// Which of the manifest's model graphs to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelVariant {
    #[default]
    Fp32,
    /// Dynamically quantized weights (onnxruntime `quantize_dynamic`).
    Int8,
    /// 4-bit block-quantized weights (ONNX Runtime `MatMulNBits`), e.g. a GGUF's own Q4 blocks.
    Int4,
    /// The int4 weights with int8 activations (`MatMulNBits` accuracy level 4, llama.cpp's
    /// scheme): faster, not bit-close to fp32; opt-in, the importer checks it against a parity
    /// budget and leaves it out on a CPU where it misses.
    #[serde(rename = "int4-fast")]
    Int4Fast,
}

impl ModelVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Int4Fast => "int4-fast",
        }
    }
}

impl std::fmt::Display for ModelVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ModelVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "int8" => Ok(Self::Int8),
            "int4" => Ok(Self::Int4),
            "int4-fast" => Ok(Self::Int4Fast),
            other => Err(format!(
                "unknown model variant `{other}` (expected fp32, int8, int4 or int4-fast)"
            )),
        }
    }
}

/// Graph input/output names. Per-layer names contain `{layer}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoNames {
    pub input_ids: String,
    /// The input of a graph that takes its tokens as embedding rows the engine reads itself
    /// (a model file entry with an [`EmbeddingTable`]); such a graph has no `input_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_embeds: Option<String>,
    pub attention_mask: String,
    pub position_ids: Option<String>,
    /// An int64 `[1]` input: the graph returns the logits of that many last positions (0: all).
    /// The engine asks for one row when it needs no prompt score, so a prefill skips the
    /// lm_head on every other position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_to_keep: Option<String>,
    pub logits: String,
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    pub eos: String,
    #[serde(default)]
    pub pad: Option<String>,
    #[serde(default)]
    pub bos: Option<String>,
}

/// The model's chat template: Jinja source as Hugging Face tokenizer configs and GGUF files
/// carry it (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatTemplate {
    pub jinja: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Model,
    /// A graph's external weights (ONNX external data), loaded by ONNX Runtime beside the graph.
    Weights,
    Tokenizer,
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub kind: FileKind,
    #[serde(default)]
    pub variant: Option<ModelVariant>,
    pub sha256: String,
    pub bytes: u64,
    /// A model graph that takes `io.inputs_embeds`: where its token embedding rows are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingTable>,
}

/// Where a graph's token embedding rows are, for a graph that takes `io.inputs_embeds`: a table
/// of `vocab` rows of `hidden` values inside one of the variant's weights files, at byte
/// offsets; float32, or Q8_0 (int8 values in blocks of 32, a float32 scale `d` per block, the
/// value `q * d`, scales row-major `[vocab, hidden / 32]` little-endian float32 at `scales`).
/// The engine reads a token's row with one positioned read per part, so the table stays in the
/// page cache, not in the process's resident memory: a lookup inside the graph kept the whole
/// table mapped (SmolLM2: ~33 MB resident with the int4 graphs, ~108 MB with fp32;
/// docs/benchmarks.md "Memory (RSS)").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", deny_unknown_fields)]
pub enum EmbeddingTable {
    /// Little-endian float32 values, `hidden * 4` bytes per row from `table`. The fp32 graph's
    /// lm_head reads the same table.
    #[serde(rename = "f32")]
    F32 { weights: String, table: u64 },
    /// Two planes of 4-bit values, `hidden / 2` bytes per row each (column `2i` in the low
    /// nibble of byte `i`, `2i + 1` in the high one): `q = 16 * (high - 8) + low`. The int4
    /// graph's lm_head reads the same planes.
    #[serde(rename = "q8_0_nibble_planes")]
    NibblePlanes {
        weights: String,
        high: u64,
        low: u64,
        scales: u64,
    },
    /// One byte per value, `hidden` bytes per row: `q = code - 128`. The int4-fast graph's
    /// 8-bit lm_head reads the same codes.
    #[serde(rename = "q8_0_offset_128")]
    Offset128 {
        weights: String,
        codes: u64,
        scales: u64,
    },
}

impl EmbeddingTable {
    /// The weights file (relative to the model directory) the table is in.
    pub fn weights(&self) -> &str {
        match self {
            Self::F32 { weights, .. }
            | Self::NibblePlanes { weights, .. }
            | Self::Offset128 { weights, .. } => weights,
        }
    }
}

/// How a graph takes its KV cache (`kv_cache` in the manifest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheLayout {
    /// Past in, a new present (past and new positions) out: what every graph of the contract does.
    #[default]
    Concat,
    /// The graph's attention (com.microsoft `GroupQueryAttention`) also writes the new positions
    /// into the past tensor itself when past and present are bound to one buffer with room for
    /// them, instead of copying the whole cache into a new present every run.
    SharedBuffer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub name: String,
    pub version: String,
    pub architecture: Architecture,
    pub context_length: usize,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub io: IoNames,
    /// Absent in older manifests: `concat`, which every graph supports.
    #[serde(default)]
    pub kv_cache: KvCacheLayout,
    pub special_tokens: SpecialTokens,
    pub chat_template: ChatTemplate,
    pub files: Vec<FileEntry>,
    /// Free-form provenance of a trained model (corpus, seed, steps); not interpreted.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Free-form provenance of an imported model (package, hashes, importer); not interpreted.
    #[serde(default)]
    pub source: serde_json::Value,
}

impl Manifest {
    /// Reads and checks `<dir>/manifest.json` (structure only; see [`Manifest::verify_files`]).
    pub fn load(dir: &Path) -> Result<Manifest, EngineError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::ModelFileMissing {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| EngineError::ManifestInvalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        manifest
            .validate()
            .map_err(|reason| EngineError::ManifestInvalid { path, reason })?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} is not supported (expected {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        for (field, value) in [
            ("context_length", self.context_length),
            ("num_layers", self.num_layers),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(format!("{field} must be positive"));
            }
        }
        if self.context_length < 2 {
            return Err("context_length must be at least 2".into());
        }
        let io = &self.io;
        let mut plain = vec![
            ("io.input_ids", &io.input_ids),
            ("io.attention_mask", &io.attention_mask),
            ("io.logits", &io.logits),
        ];
        if let Some(position_ids) = &io.position_ids {
            plain.push(("io.position_ids", position_ids));
        }
        for (field, name) in plain {
            if name.is_empty() {
                return Err(format!("{field} is empty"));
            }
        }
        for (field, pattern) in [
            ("io.past_key", &io.past_key),
            ("io.past_value", &io.past_value),
            ("io.present_key", &io.present_key),
            ("io.present_value", &io.present_value),
        ] {
            if !pattern.contains("{layer}") {
                return Err(format!("{field} `{pattern}` must contain {{layer}}"));
            }
        }
        if self.chat_template.jinja.trim().is_empty() {
            return Err("chat_template.jinja is empty".into());
        }
        for file in &self.files {
            let relative = Path::new(&file.path);
            let plain_relative = relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if file.path.is_empty() || !plain_relative {
                return Err(format!(
                    "file path `{}` must be relative to the model directory",
                    file.path
                ));
            }
            if file.sha256.len() != 64 || hex::decode(&file.sha256).is_err() {
                return Err(format!("file `{}` has a malformed sha256", file.path));
            }
            if file.kind == FileKind::Model && file.variant.is_none() {
                return Err(format!("model file `{}` names no variant", file.path));
            }
            if let Some(table) = &file.embedding {
                self.validate_embedding(file, table)?;
            }
        }
        let tokenizers = self.files_of(FileKind::Tokenizer).count();
        if tokenizers != 1 {
            return Err(format!(
                "expected exactly one tokenizer file, found {tokenizers}"
            ));
        }
        if self.files_of(FileKind::Model).next().is_none() {
            return Err("no model file listed".into());
        }
        Ok(())
    }

    /// A graph reading embedding rows needs the input to feed them to, and the rows must be in
    /// one of its own weights files (so they are hash-checked with it).
    fn validate_embedding(&self, model: &FileEntry, table: &EmbeddingTable) -> Result<(), String> {
        if model.kind != FileKind::Model {
            return Err(format!(
                "file `{}` has an embedding table but is no model graph",
                model.path
            ));
        }
        if self.io.inputs_embeds.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "model file `{}` takes embedding rows but io.inputs_embeds is not set",
                model.path
            ));
        }
        let weights = self.files_of(FileKind::Weights).any(|f| {
            f.path == table.weights() && (f.variant.is_none() || f.variant == model.variant)
        });
        if !weights {
            return Err(format!(
                "the embedding table of `{}` is in `{}`, which is not a weights file of its variant",
                model.path,
                table.weights()
            ));
        }
        Ok(())
    }

    fn files_of(&self, kind: FileKind) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.kind == kind)
    }

    pub fn model_file(&self, variant: ModelVariant) -> Option<&FileEntry> {
        self.files_of(FileKind::Model)
            .find(|f| f.variant == Some(variant))
    }

    pub fn tokenizer_file(&self) -> Option<&FileEntry> {
        self.files_of(FileKind::Tokenizer).next()
    }

    /// Checks the size and sha256 of every listed file.
    pub fn verify_files(&self, dir: &Path) -> Result<(), EngineError> {
        self.verify(dir, self.files.iter())
    }

    /// Checks the files one variant loads: its graph, its weights and the tokenizer (not the
    /// other variants' files, which can be hundreds of MB each).
    pub fn verify_variant(&self, dir: &Path, variant: ModelVariant) -> Result<(), EngineError> {
        let used = self
            .files
            .iter()
            .filter(|f| f.variant.is_none() || f.variant == Some(variant));
        self.verify(dir, used)
    }

    fn verify<'a>(
        &self,
        dir: &Path,
        files: impl Iterator<Item = &'a FileEntry>,
    ) -> Result<(), EngineError> {
        for file in files {
            verify_file(&dir.join(&file.path), file)?;
        }
        Ok(())
    }

    pub fn layer_name(pattern: &str, layer: usize) -> String {
        pattern.replace("{layer}", &layer.to_string())
    }
}

fn verify_file(path: &Path, entry: &FileEntry) -> Result<(), EngineError> {
    let missing = |e: std::io::Error| EngineError::ModelFileMissing {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(missing)?;
    // A size mismatch (a truncated download, a replaced file) is said as such, before hashing.
    let actual_bytes = file.metadata().map_err(missing)?.len();
    if actual_bytes != entry.bytes {
        return Err(EngineError::SizeMismatch {
            path: PathBuf::from(path),
            expected: entry.bytes,
            actual: actual_bytes,
        });
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(missing)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(EngineError::HashMismatch {
            path: PathBuf::from(path),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    Ok(())
}
