"""Reads the SmolLM2 GGUF (llama architecture): hyper-parameters, tokenizer fields, chat template and the raw
weight blocks, and undoes llama.cpp's rotary row permutation of attn_q / attn_k.

Every weight stays as the GGUF stores it (Q4_1 / Q8_0 blocks, F32 norms); `dequantized` gives the float32
matrix through gguf's own reference dequantizer, `q4_1_blocks` / `q8_0_blocks` split the raw blocks into
their fields for the int4 graph. Row order of the raw blocks is the Hugging Face order (after un-permuting).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

Q4_1 = GGMLQuantizationType.Q4_1
Q8_0 = GGMLQuantizationType.Q8_0
F32 = GGMLQuantizationType.F32
BLOCK = 32  # weights per Q4_1 / Q8_0 block, along a row (the input dimension)


@dataclasses.dataclass(frozen=True)
class Config:
    num_layers: int
    d_model: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    norm_eps: float
    context_length: int
    vocab_size: int


@dataclasses.dataclass
class Tensor:
    name: str
    qtype: GGMLQuantizationType
    rows: int  # output features (N)
    cols: int  # input features (K)
    raw: np.ndarray  # uint8 [rows, bytes per row] for quantized types, float32 [rows, cols] (or [cols]) for F32


@dataclasses.dataclass
class TokenizerFields:
    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_space_prefix: bool


@dataclasses.dataclass
class GGUFModel:
    path: Path
    sha256: str
    config: Config
    tokenizer: TokenizerFields
    chat_template: str
    tensors: dict[str, Tensor]
    type_counts: dict[str, int]

    def dequantized(self, name: str) -> np.ndarray:
        """float32 [rows, cols] (or [cols] for a norm) through gguf's reference dequantizer."""
        t = self.tensors[name]
        if t.qtype == F32:
            return np.asarray(t.raw, np.float32)
        w = dequantize(t.raw, t.qtype)
        return np.asarray(w, np.float32).reshape(t.rows, t.cols)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf's `permute` (rotary rows interleaved per head) along axis 0:
    transformers' `reverse_permute_weights`: reshape(n_head, dim, 2, ...).swapaxes(2, 1). Works on any
    per-row data (float rows or raw quantized block rows), since it only reorders rows."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def load(path: Path) -> GGUFModel:
    r = GGUFReader(str(path))

    def field(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF, got {arch!r}")
    d_model = int(field("llama.embedding_length"))
    heads = int(field("llama.attention.head_count"))
    tokens = list(field("tokenizer.ggml.tokens"))
    cfg = Config(
        num_layers=int(field("llama.block_count")),
        d_model=d_model,
        ffn=int(field("llama.feed_forward_length")),
        num_heads=heads,
        num_kv_heads=int(field("llama.attention.head_count_kv", heads)),
        head_dim=int(field("llama.rope.dimension_count", d_model // heads)),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        context_length=int(field("llama.context_length")),
        vocab_size=int(field("llama.vocab_size", len(tokens))),
    )
    if cfg.head_dim * cfg.num_heads != cfg.d_model or cfg.vocab_size != len(tokens):
        raise ValueError(f"unexpected shapes in {cfg}")
    tok = TokenizerFields(
        model=field("tokenizer.ggml.model"),
        pre=field("tokenizer.ggml.pre", "default"),
        tokens=tokens,
        token_types=[int(x) for x in field("tokenizer.ggml.token_type")],
        merges=list(field("tokenizer.ggml.merges")),
        bos_id=field("tokenizer.ggml.bos_token_id"),
        eos_id=int(field("tokenizer.ggml.eos_token_id")),
        unk_id=field("tokenizer.ggml.unknown_token_id"),
        pad_id=field("tokenizer.ggml.padding_token_id"),
        add_bos=bool(field("tokenizer.ggml.add_bos_token", False)),
        add_space_prefix=bool(field("tokenizer.ggml.add_space_prefix", False)),
    )

    tensors: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for t in r.tensors:
        qtype = GGMLQuantizationType(int(t.tensor_type))
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        shape = [int(x) for x in t.shape]  # ggml order: ne0 = row length (input features) first
        cols, rows = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)
        raw = np.array(t.data)  # copy out of the memory map
        if qtype not in (Q4_1, Q8_0, F32):
            raise ValueError(f"{t.name}: unsupported tensor type {qtype.name}")
        if ".attn_q." in t.name:
            raw = unpermute_rows(raw, cfg.num_heads)
        elif ".attn_k." in t.name:
            raw = unpermute_rows(raw, cfg.num_kv_heads)
        tensors[t.name] = Tensor(t.name, qtype, rows, cols, raw)
    if "output.weight" in tensors:
        raise ValueError("this importer expects tied embeddings (no output.weight)")
    return GGUFModel(path, sha256_file(path), cfg, tok, str(field("tokenizer.chat_template")), tensors, counts)


def q4_1_blocks(t: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows -> (d float32 [N, nb], m float32 [N, nb], q uint8 [N, nb, 32] in weight order 0..31).
    ggml block: fp16 d, fp16 m, 16 bytes qs; weight j = d * (qs[j] & 15) + m, weight j+16 = d * (qs[j] >> 4) + m."""
    assert t.qtype == Q4_1 and t.cols % BLOCK == 0
    nb = t.cols // BLOCK
    b = t.raw.reshape(t.rows, nb, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint8)
    return d, m, q


def q8_0_blocks(t: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows -> (d float32 [N, nb], q int8 [N, nb, 32]); weight = d * q."""
    assert t.qtype == Q8_0 and t.cols % BLOCK == 0
    nb = t.cols // BLOCK
    b = t.raw.reshape(t.rows, nb, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = b[..., 2:34].copy().view(np.int8)
    return d, q
