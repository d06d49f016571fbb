"""Writes tokenizer.json (Hugging Face `tokenizers` format, loadable by the Rust tokenizers 0.22 crate) from the
GGUF's byte-level BPE: tokens, merges, token types and special tokens, shaped like SmolLM2's own
tokenizer.json (llama.cpp pre-tokenizer `smollm`: single digits, then the GPT-2 byte-level regex)."""
from __future__ import annotations

import json
from pathlib import Path

from gguf_source import TokenizerFields

CONTROL, USER_DEFINED = 3, 4


def tokenizer_json(tok: TokenizerFields) -> dict:
    if tok.model != "gpt2":
        raise ValueError(f"expected a byte-level BPE (tokenizer.ggml.model gpt2), got {tok.model!r}")
    if tok.pre not in ("smollm", "starcoder"):
        raise ValueError(f"pre-tokenizer {tok.pre!r} is not the SmolLM / StarCoder one this importer writes")
    if tok.add_bos or tok.add_space_prefix:
        raise ValueError("add_bos / add_space_prefix are not expected for SmolLM2")
    vocab = {t: i for i, t in enumerate(tok.tokens)}
    if len(vocab) != len(tok.tokens):
        raise ValueError("duplicate tokens in the GGUF vocabulary")
    merges = []
    for line in tok.merges:
        a, b = line.split(" ")
        merges.append([a, b])
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": tok.token_types[i] == CONTROL}
        for i, t in enumerate(tok.tokens) if tok.token_types[i] in (CONTROL, USER_DEFINED)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            byte_level,
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write(tok: TokenizerFields, path: Path) -> None:
    path.write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
