"""Writes models/<model>/manifest.json (format: the shared model-directory contract) with sha256 and sizes."""
from __future__ import annotations

import hashlib
import json
import sys

from common import (CHAT_TEMPLATE_JINJA, CONFIGS, EOS, PAD, SPECIAL_TOKENS, read_json,
                    write_json)

VERSION = "1.0.0"
FILES = [("model.onnx", "model", "fp32"), ("model.int8.onnx", "model", "int8"), ("tokenizer.json", "tokenizer", None)]


def sha256(path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(name: str) -> None:
    cfg = CONFIGS[name]
    files = []
    for path, kind, variant in FILES:
        p = cfg.out_dir / path
        entry = {"path": path, "kind": kind}
        if variant:
            entry["variant"] = variant
        entry |= {"sha256": sha256(p), "bytes": p.stat().st_size}
        files.append(entry)
    training = read_json(cfg.work_dir / "training.json")
    corpus_counts: dict[str, int] = {}
    for line in (cfg.work_dir / "train.jsonl").open():
        c = json.loads(line)["category"]
        corpus_counts[c] = corpus_counts.get(c, 0) + 1
    manifest = {
        "schema_version": 1,
        "name": cfg.manifest_name,
        "version": VERSION,
        "architecture": cfg.architecture,
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
        "special_tokens": {"eos": EOS, "pad": PAD, "bos": None},
        "chat_template": {"jinja": CHAT_TEMPLATE_JINJA},
        "files": files,
        "training": {
            "made_by": "models/make-models.sh (models/scripts/*.py)",
            "corpus": {"generator": "models/scripts/corpus.py", "seed": cfg.seed, "examples_by_category": corpus_counts},
            "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab_size": cfg.vocab_size,
                          "special_token_ids": {s: i for i, s in enumerate(SPECIAL_TOKENS)}},
            "model": {"d_model": cfg.d_model, "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                      "d_ff": cfg.d_ff, "norm_eps": cfg.norm_eps,
                      **({"rope_theta": cfg.rope_theta} if cfg.architecture == "llama" else {})},
            **training,
        },
    }
    write_json(cfg.out_dir / "manifest.json", manifest)
    print(f"{name}: wrote manifest ({', '.join(f['path'] + ' ' + str(f['bytes']) for f in files)})")


if __name__ == "__main__":
    main(sys.argv[1])
