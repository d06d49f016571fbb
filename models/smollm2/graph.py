"""Builds the SmolLM2 decoder as an ONNX graph (opset 17 + com.microsoft v1 contrib ops of ONNX Runtime) with the
Hugging Face Optimum decoder-with-past IO the Rust engine expects:

inputs  inputs_embeds float32 [b, s, hidden] (no input_ids: every variant takes its tokens as embedding rows),
        attention_mask [b, past + s], position_ids [b, s] (int64),
        logits_to_keep int64 [1] (the last k positions' logits; 0: every position's, as Hugging Face's argument),
        past_key_values.{i}.key / .value float32 [b, kv_heads, past, head_dim]
outputs logits float32 [b, min(k, s) or s, vocab], present.{i}.key / .value float32 [b, kv_heads, past + s, head_dim]

Every graph takes its tokens as embedding rows: the caller reads each token's row of the tied embedding (the
lm_head's own initializers, EMBEDDING_TABLES) from the weights file at the byte offsets the manifest's `embedding`
entry gives (embedding_rows.py) and feeds inputs_embeds: the float32 values themselves (fp32), float32(q) * d from
the Q8_0 table (int4, int4-fast). A lookup inside the graph kept the whole table's file pages resident in the
process: GatherBlockQuantized ~33 MB RSS (int4), Gather on the fp32 [vocab, d] table ~108 MB (581 against 689 MB
after 300 decode steps, Python onnxruntime); rows read with pread stay in the page cache. The logits are
bit-identical to the lookup's.

Hugging Face Llama semantics: RMSNorm, rotary (rotate_half layout) on position_ids, grouped-query attention
(query head h reads kv head h // (heads / kv_heads)), SiLU-gated MLP, final norm, lm_head tied to the
embedding. The mask is causal over absolute positions (past + s) and drops every key whose
attention_mask is 0, so left-padded batches decode like single sequences.

Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one kernel), fused q/k/v projection,
attention, fused gate/up projection, SiLU (ORT fuses x * sigmoid(x)), down projection. Attention (default
"gqa"): one com.microsoft.GroupQueryAttention on the packed q/k/v (rotary inside from position_ids and cos/sin
tables computed like transformers' float32 ones, positions < context_length; causal over absolute positions;
padding keys masked through attention_bias; present = past + new written by the op): 833 nodes instead of
1432 (int4). Its one limit: a multi-row prompt (batch > 1 and sequence > 1) must not be left-padded (the op
takes a prompt's rotary positions from its first position_id); the engine prefills one row at a time.
"plain": RotaryEmbedding + attention in ONNX ops (MatMul, Where on the boolean mask, Softmax, Concat for
present). `build(fused=False)` gives the plain model in standard ONNX ops only (its RMSNorm in the
Pow/ReduceMean/Add/Sqrt/Div/Mul form ORT fuses into SimplifiedLayerNormalization); all agree with
transformers to ~3e-5 in the logits.

Two weight back-ends share one graph body:
- fp32: every weight dequantized from the GGUF (gguf's reference dequantizer); plain MatMul, and the tied
  embedding is one [vocab, d] float32 initializer read by Gemm transB=1 (lm_head) and, outside the graph, by the
  caller for inputs_embeds.
- int4: the GGUF's own Q4_1 blocks in com.microsoft.MatMulNBits (bits 4, block 32), no re-quantization.
  Q4_1 is w = d * q + m per block of 32 along the input; MatMulNBits computes (q - zero_point) * scale.
  With scale = d and the zero point z = round(-m / d) (0..15, per block) the kernel yields d * (q - z), and the
  rest of the offset, m' = m + z * d, is added through an exact identity: sum_k (d (q_k - z) + m') a_k =
  sum_k d (q_k - z) a_k + m' * sum_k a_k, i.e. a second, small fp32 MatMul of the input's block sums [.., K/32]
  with M'^T [K/32, N]. The int4 values and d are the GGUF's (fp16 -> fp32 is exact), and so is the sum; a block
  with d = 0 needs no special case (zero point 0, it is all m). The zero point centres the kernel's weights on
  the block's own zero, which matters with int8 activations (Int4Linear).
  The Q8_0 tied embedding stays 8 bits per weight, as two 4-bit planes (see Q8Planes) read by MatMulNBits
  (lm_head) and, outside the graph, by the caller for inputs_embeds; with int8 activations in the lm_head
  (level 4) as one 8-bit tensor instead (Q8Table), the same integer products in one pass.
  accuracy_level 0 keeps activations in fp32, so the int4 graph computes what the fp32 graph computes
  (same weights) up to float summation order; `accuracy` may set level 4 (int8 activations) per projection
  kind (PROJECTIONS), which the opt-in int4-fast graph does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gguf_source import BLOCK, GGUFModel, q4_1_blocks, q8_0_blocks

OPSET = 17
MS_DOMAIN = "com.microsoft"
MASK_VALUE = -3.4028234663852886e38  # float32 lowest, like transformers' additive mask minimum
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
KEPT = "logits_sequence_length"  # min(logits_to_keep, s), or s when logits_to_keep is 0
LOGITS_TO_KEEP = "logits_to_keep"


class GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def op(self, op_type: str, inputs: list[str], name_hint: str = "", domain: str = "", **attrs) -> str:
        self._n += 1
        out = f"/{name_hint or op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out.lstrip("/") + "_node", domain=domain,
                                           **attrs))
        return out

    def op_to(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output + "_node", **attrs))
        return output

    def ops_n(self, op_type: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        self._n += 1
        outs = [f"/{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type.lower()}_{self._n}_node", **attrs))
        return outs

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype) -> str:
        key = (repr(value), np.dtype(dtype).str)
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
            self._consts[key] = name
        return self._consts[key]

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def f32(self, value) -> str:
        return self.const(value, np.float32)


# ---------------------------------------------------------------------------------------------- weights
def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 values 0..15 [..., 32] -> MatMulNBits blob [..., 16]: element 2i in the low nibble of byte i,
    element 2i+1 in the high nibble (ContribOperators.md, MatMulNBits input B)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(blob: np.ndarray) -> np.ndarray:
    """Inverse of pack_nibbles, as the kernel reads B."""
    out = np.empty(blob.shape[:-1] + (blob.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = blob & 0x0F
    out[..., 1::2] = blob >> 4
    return out


class Int4Linear:
    """MatMulNBits tensors for one (possibly row-concatenated) Q4_1 weight [N, K]."""

    def __init__(self, tensors):
        parts = [q4_1_blocks(t) for t in tensors]
        self.d = np.concatenate([p[0] for p in parts])  # scales [N, nb]
        m = np.concatenate([p[1] for p in parts])  # the GGUF's block offsets [N, nb]
        self.blob = pack_nibbles(np.concatenate([p[2] for p in parts]))  # [N, nb, 16]
        self.n, self.nb = self.d.shape
        self.k = self.nb * BLOCK
        # Each block's zero point is the level nearest its zero weight, zp = round(-m / d) in 0..15, and the offset
        # the rest, m + zp * d: d * (q - zp) + (m + zp * d) = d * q + m, the same weights (zp * d and the sum are
        # exact in float32 for fp16 d and m of this file's magnitudes; verify.py's dequant check measures it). It
        # matters with int8 activations (accuracy level 4): the kernel's product then sees the quantized input, the
        # offset term the exact one, and the error of the product grows with its weights' distance from 0; with
        # zero point 0 every weight d * q is >= 0 (mean ~7.5 d), centred they are ~w. Measured on the AVX2 CPU:
        # int8 activations everywhere 294/320 teacher-forced top-1 with zero point 0 (docs/benchmarks.md).
        zp = np.where(self.d != 0, np.clip(np.round(-m / np.where(self.d != 0, self.d, 1)), 0, 15), 0)
        self.m = (m + zp.astype(np.float32) * self.d).astype(np.float32)  # offsets left after the zero points
        zp = np.pad(zp.astype(np.uint8), ((0, 0), (0, self.nb % 2)))  # each row to whole bytes
        self.zero_points = pack_nibbles(zp)  # [N, ceil(nb / 2)], 2 blocks a byte, as the kernel reads them

    def dequantize_as_ort(self) -> np.ndarray:
        """What the graph multiplies by: (q - zero_point) * scale from the MatMulNBits tensors (nibble order,
        packed zero points) plus the block offset m of the block-sum MatMul; float32 [N, K]."""
        q = unpack_nibbles(self.blob).astype(np.float32)
        zp = unpack_nibbles(self.zero_points)[:, : self.nb].astype(np.float32)
        w = (q - zp[..., None]) * self.d[..., None] + self.m[..., None]
        return w.reshape(self.n, self.k)


class Q8Planes:
    """The Q8_0 tied embedding as two 4-bit planes of the same int8 values, so the fast fp32-activation int4
    kernel serves the lm_head with the weights exact: q = 16 * hi + lo with hi = q >> 4 in -8..7 (stored as
    hi + 8, read with the default zero point 8, scale 16 d) and lo = q & 15 in 0..15 (zero point 0, scale d);
    d * q = 16 d * hi + d * lo exactly in float32 (both products and their sum are representable)."""

    def __init__(self, t):
        self.d, q = q8_0_blocks(t)  # [vocab, nb], int8 [vocab, nb, 32]
        q16 = q.astype(np.int16)
        self.hi_blob = pack_nibbles(((q16 >> 4) + 8).astype(np.uint8))  # [vocab, nb, 16]
        self.lo_blob = pack_nibbles((q16 & 15).astype(np.uint8))
        self.hi_scales = self.d * np.float32(16.0)
        self.n, self.nb = self.d.shape
        self.lo_zero_points = np.zeros((self.n, (self.nb + 1) // 2), np.uint8)  # MatMulNBits: packed 4-bit zeros

    def dequantize_as_ort(self) -> np.ndarray:
        """(hi - 8) * 16 d + (lo - 0) * d from the stored planes, float32 [vocab, nb * 32]."""
        hi = unpack_nibbles(self.hi_blob).astype(np.float32) - 8.0
        lo = unpack_nibbles(self.lo_blob).astype(np.float32)
        w = hi * self.hi_scales[..., None] + lo * self.d[..., None]
        return w.reshape(self.n, self.nb * BLOCK)


class Q8Table:
    """The Q8_0 tied embedding as one 8-bit MatMulNBits tensor: q + 128 as uint8 (the default 8-bit zero point
    is 128), scale d; d * q exactly. Only for int8 activations (accuracy_level 4):
    ONNX Runtime 1.31 has no fast 8-bit kernel with fp32 activations (it dequantizes the whole table per call,
    ~0.6 s). With int8 activations one 8-bit product is the same integer dot product as the two 4-bit planes'
    (16 d hi + d lo) summed, in one pass over the table instead of two: -10% CPU per int4-fast decode step
    (AVX2 EPYC, docs/benchmarks.md)."""

    def __init__(self, t):
        self.d, q = q8_0_blocks(t)  # [vocab, nb], int8 [vocab, nb, 32]
        self.blob = (q.astype(np.int16) + 128).astype(np.uint8)  # [vocab, nb, 32]
        self.n, self.nb = self.d.shape

    def dequantize_as_ort(self) -> np.ndarray:
        """(q8 - 128) * d from the stored table, float32 [vocab, nb * 32]."""
        w = (self.blob.astype(np.float32) - 128.0) * self.d[..., None]
        return w.reshape(self.n, self.nb * BLOCK)


# Where a graph's token embedding rows are: the initializers of the lm_head's table, by the encoding of the
# manifest's `embedding` entry (manifest.embedding_table writes their byte offsets in the weights file;
# embedding_rows.py reads rows from them). f32: the fp32 graph's [vocab, hidden] float32 table itself. Q8_0:
# scales are d [vocab, hidden / 32] float32 (the low plane's, scale d).
EMBEDDING_TABLES = {
    "f32": {"table": "embed_tokens.weight"},  # the float32 values, row r at r * hidden * 4
    "q8_0_nibble_planes": {"high": "embed_tokens.q8_high", "low": "embed_tokens.q8_low",
                           "scales": "lm_head.low.scales"},  # Q8Planes: q = 16 * (high - 8) + low
    "q8_0_offset_128": {"codes": "embed_tokens.q8", "scales": "lm_head.scales"},  # Q8Table: q = code - 128
}


def block_sums(g: GraphBuilder, x: str, nb: int) -> str:
    """[b, s, nb * 32] -> [b, s, nb]: the sum of each block of 32 inputs (for the Q4_1 offsets m)."""
    blocks = g.op("Reshape", [x, g.i64([0, 0, nb, BLOCK])], "blocks")
    return g.op("ReduceSum", [blocks, g.i64([-1])], "block_sums", keepdims=0)


def int4_linear(g: GraphBuilder, x: str, lin: Int4Linear, label: str, accuracy_level: int) -> str:
    """x [b, s, K] -> [b, s, N]: MatMulNBits (d * q) + block sums of x times the block offsets m."""
    main = g.op("MatMulNBits", [x, g.weight(label + ".qweight", lin.blob), g.weight(label + ".scales", lin.d),
                                g.weight(label + ".zero_points", lin.zero_points)], label, domain=MS_DOMAIN,
                K=lin.k, N=lin.n, bits=4, block_size=BLOCK, accuracy_level=accuracy_level)
    offset = g.op("MatMul", [block_sums(g, x, lin.nb), g.weight(label + ".block_offsets_t", lin.m.T)],
                  label + "_offset")
    return g.op("Add", [main, offset], label + "_q4_1")


PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")


def accuracy_levels(spec: int | dict[str, int]) -> dict[str, int]:
    """MatMulNBits accuracy_level per projection kind (PROJECTIONS): one int for all, or a partial dict
    (missing kinds get 0, fp32 activations)."""
    if isinstance(spec, int):
        return {kind: spec for kind in PROJECTIONS}
    unknown = set(spec) - set(PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown projection kinds {sorted(unknown)}")
    return {kind: spec.get(kind, 0) for kind in PROJECTIONS}


class Weights:
    """Maps GGUF tensors to graph initializers and emits the linear layers of one back-end."""

    def __init__(self, g: GraphBuilder, model: GGUFModel, variant: str, accuracy: int | dict[str, int]):
        self.g, self.model, self.variant = g, model, variant
        self.levels = accuracy_levels(accuracy)

    def norm(self, name: str) -> str:
        return self.g.weight(name, self.model.dequantized(name).astype(np.float32))

    def linear(self, x: str, names: list[str], label: str) -> str:
        """x [b, s, K] times the row-concatenation of the named weights ([N, K] each) -> [b, s, sum N]."""
        g = self.g
        if self.variant == "fp32":
            w = np.concatenate([self.model.dequantized(n) for n in names])
            return g.op("MatMul", [x, g.weight(label + ".weight_t", w.T)], label)
        level = self.levels[label.rsplit(".", 1)[-1]]
        return int4_linear(g, x, Int4Linear([self.model.tensors[n] for n in names]), label, level)

    token_input = "inputs_embeds"  # every variant: rows of EMBEDDING_TABLES read by the caller

    def embedding_and_lm_head(self):
        """Returns (embeddings [b, s, d], function(x [b, s, d]) -> logits [b, s, vocab]); the embeddings are the
        graph input inputs_embeds itself (no lookup in the graph), the lm_head reads the table its rows come from."""
        g, t = self.g, self.model.tensors["token_embd.weight"]
        vocab, d = t.rows, t.cols
        if self.variant == "fp32":
            table = g.weight(EMBEDDING_TABLES["f32"]["table"], self.model.dequantized("token_embd.weight"))

            def lm_head(x):  # tied: Gemm with transB reads the [vocab, d] initializer the caller's rows come from
                flat = g.op("Reshape", [x, g.i64([-1, d])])
                logits = g.op("Gemm", [flat, table], "lm_head", transB=1)
                shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [x]), g.i64([0]), g.i64([2])]),
                                        g.i64([vocab])], axis=0)
                return g.op_to("Reshape", [logits, shape], "logits")
            return self.token_input, lm_head

        # Quantized: the lm_head's Q8_0 table initializers (EMBEDDING_TABLES) hold the rows.
        if self.levels["lm_head"] == 4:
            return self.token_input, self.q8_lm_head()
        planes = Q8Planes(t)
        names = EMBEDDING_TABLES["q8_0_nibble_planes"]
        hi_blob, lo_blob = g.weight(names["high"], planes.hi_blob), g.weight(names["low"], planes.lo_blob)

        def lm_head(x):
            hi = g.op("MatMulNBits", [x, hi_blob, g.weight("lm_head.high.scales", planes.hi_scales)], "lm_head_high",
                      domain=MS_DOMAIN, K=d, N=vocab, bits=4, block_size=BLOCK, accuracy_level=self.levels["lm_head"])
            lo = g.op("MatMulNBits", [x, lo_blob, g.weight(names["scales"], planes.d),
                                      g.weight("lm_head.low.zero_points", planes.lo_zero_points)], "lm_head_low",
                      domain=MS_DOMAIN, K=d, N=vocab, bits=4, block_size=BLOCK, accuracy_level=self.levels["lm_head"])
            return g.op_to("Add", [hi, lo], "logits")
        return self.token_input, lm_head

    def q8_lm_head(self):
        """With int8 activations: the lm_head on the Q8_0 table as one 8-bit tensor (Q8Table)."""
        g, table = self.g, Q8Table(self.model.tensors["token_embd.weight"])
        names = EMBEDDING_TABLES["q8_0_offset_128"]
        d = table.nb * BLOCK
        blob = g.weight(names["codes"], table.blob)

        def lm_head(x):
            return g.op_to("MatMulNBits", [x, blob, g.weight(names["scales"], table.d)], "logits", domain=MS_DOMAIN,
                           K=d, N=table.n, bits=8, block_size=BLOCK, accuracy_level=4)
        return lm_head


# ---------------------------------------------------------------------------------------------- graph body
def rms_norm(g: GraphBuilder, x: str, scale: str, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * w, in the Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul form that
    ONNX Runtime fuses into SimplifiedLayerNormalization (checked for 1.31.1)."""
    ms = g.op("ReduceMean", [g.op("Pow", [x, g.f32(2.0)])], "rms_mean", axes=[-1], keepdims=1)
    return g.op("Mul", [g.op("Div", [x, g.op("Sqrt", [g.op("Add", [ms, g.f32(eps)])])]), scale], "rms_norm")


def rotate(g: GraphBuilder, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin (Hugging Face Llama layout: halves, not interleaved)."""
    x1, x2 = g.ops_n("Split", [x], 2, axis=-1)
    rotated = g.op("Concat", [g.op("Neg", [x2]), x1], "rotate_half", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "rope")


def attention_mask_graph(g: GraphBuilder, tokens: str) -> str:
    """Boolean [b, 1, 1, s, total]: key position <= query position (absolute, past + i) and key not padding.
    tokens: the token input (inputs_embeds [b, s, d]; dims 0 and 1 are read)."""
    s = g.op("Gather", [g.op("Shape", [tokens]), g.i64(1)], "seq_len", axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.i64(1)], "total_len", axis=0)
    past = g.op("Sub", [total, s], "past_len")
    key_pos = g.op("Range", [g.i64(0), total, g.i64(1)], "key_pos")
    query_pos = g.op("Range", [past, total, g.i64(1)], "query_pos")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [key_pos, g.i64([0])]),
                                  g.op("Unsqueeze", [query_pos, g.i64([1])])], "causal")  # [s, total]
    not_pad = g.op("Greater", ["attention_mask", g.i64(0)], "not_pad")  # [b, total]
    return g.op("And", [causal, g.op("Unsqueeze", [not_pad, g.i64([1, 2, 3])])], "allowed")


def rope_tables(cfg, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin [positions, head_dim / 2] as transformers' LlamaRotaryEmbedding computes them in float32:
    inv_freq = 1 / theta^(2i / d), freqs = position * inv_freq (a float32 product), then cos / sin."""
    hd = cfg.head_dim
    inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32, like torch
    return np.cos(freqs.astype(np.float64)).astype(np.float32), np.sin(freqs.astype(np.float64)).astype(np.float32)


def gqa_inputs(g: GraphBuilder, tokens: str) -> tuple[str, str, str]:
    """The per-graph inputs of GroupQueryAttention derived from the engine's IO: seqlens_k [b] int32 (every row
    holds total - 1 cached + new keys, left padding included), total_sequence_length (int32 scalar) and an
    additive attention_bias [b, 1, s, total] that is 0 on real keys and float32 lowest on padding (the op
    applies the causal part itself, over absolute positions). tokens: the token input (inputs_embeds [b, s, d]);
    batch and sequence length are its dims 0 and 1."""
    ids_shape = g.op("Shape", [tokens])
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.i64(1)], "total_len", axis=0)  # scalar
    total_i32 = g.op("Cast", [total], "total_i32", to=TensorProto.INT32)
    batch = g.op("Slice", [ids_shape, g.i64([0]), g.i64([1])], "batch")
    seqlens_k = g.op("Expand", [g.op("Sub", [total_i32, g.const(1, np.int32)]), batch], "seqlens_k")
    not_pad = g.op("Greater", ["attention_mask", g.i64(0)], "not_pad")  # [b, total]
    bias = g.op("Where", [not_pad, g.f32(0.0), g.f32(MASK_VALUE)], "pad_bias")
    bias = g.op("Unsqueeze", [bias, g.i64([1, 2])])  # [b, 1, 1, total]
    shape = g.op("Concat", [batch, g.i64([1]), g.op("Slice", [ids_shape, g.i64([1]), g.i64([2])]),
                            g.op("Unsqueeze", [total, g.i64([0])])], axis=0)
    return seqlens_k, total_i32, g.op("Expand", [bias, shape], "attention_bias")


def build(model: GGUFModel, variant: str, accuracy: int | dict[str, int] = 0, fused: bool = True,
          attention: str = "gqa") -> onnx.ModelProto:
    """fused: rotary as com.microsoft.RotaryEmbedding and residual + RMSNorm as
    com.microsoft.SkipSimplifiedLayerNormalization (fewer nodes per layer); otherwise plain ONNX ops only
    (RMSNorm still fused by ORT into SimplifiedLayerNormalization).
    attention "gqa" (needs fused): one com.microsoft.GroupQueryAttention per layer on the packed q/k/v,
    rotary inside the op, present = past + new written by the op; "plain": the attention in ONNX ops."""
    cfg = model.config
    d, hd, h, kvh = cfg.d_model, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    gqa = fused and attention == "gqa"
    g = GraphBuilder()
    w = Weights(g, model, variant, accuracy)
    if gqa:
        seqlens_k, total_i32, attention_bias = gqa_inputs(g, w.token_input)
    else:
        allowed = attention_mask_graph(g, w.token_input)

    x, lm_head = w.embedding_and_lm_head()
    if fused:
        cos_t, sin_t = rope_tables(cfg, cfg.context_length)
        cos_cache, sin_cache = g.weight("rope_cos_cache", cos_t), g.weight("rope_sin_cache", sin_t)

        def rope(t: str, heads: int) -> str:  # [b, s, heads * hd] in, same out
            return g.op("RotaryEmbedding", [t, "position_ids", cos_cache, sin_cache], "rope", domain=MS_DOMAIN,
                        interleaved=0, num_heads=heads)
    else:
        inv_freq = (1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT), g.i64([-1])])
        freqs = g.op("Mul", [pos, g.weight("rope_inv_freq", inv_freq)], "freqs")  # [b, s, hd/2]
        emb = g.op("Concat", [freqs, freqs], axis=-1)
        cos = g.op("Unsqueeze", [g.op("Cos", [emb]), g.i64([1])], "cos")  # [b, 1, s, hd]
        sin = g.op("Unsqueeze", [g.op("Sin", [emb]), g.i64([1])], "sin")
        cos_q = g.op("Unsqueeze", [cos, g.i64([1])])  # [b, 1, 1, s, hd] for the grouped query layout
        sin_q = g.op("Unsqueeze", [sin, g.i64([1])])
    rep = h // kvh
    splits_ffn = g.i64([cfg.ffn, cfg.ffn])

    def residual_norm(x: str, delta: str | None, norm: str) -> tuple[str, str]:
        """(x + delta, RMSNorm(x + delta)); delta None: (x, RMSNorm(x))."""
        if delta is not None and fused:
            g._n += 1
            outs = [f"/skip_norm_{g._n}", "", "", f"/residual_{g._n}"]
            g.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [delta, x, w.norm(norm)], outs,
                                            name=f"skip_norm_{g._n}_node", domain=MS_DOMAIN, epsilon=cfg.norm_eps))
            return outs[3], outs[0]
        if delta is not None:
            x = g.op("Add", [x, delta], "residual")
        return x, rms_norm(g, x, w.norm(norm), cfg.norm_eps)

    def plain_attention(qkv: str, i: int) -> str:
        """Attention in ONNX ops: present = Concat(past, new), scores masked by `allowed`."""
        q, k, v = g.ops_n("Split", [qkv, g.i64([h * hd, kvh * hd, kvh * hd])], 3, axis=-1)
        if fused:
            q, k = rope(q, h), rope(k, kvh)
        q = g.op("Transpose", [g.op("Reshape", [q, g.i64([0, 0, kvh, rep, hd])])], perm=[0, 2, 3, 1, 4])
        k = g.op("Transpose", [g.op("Reshape", [k, g.i64([0, 0, kvh, hd])])], perm=[0, 2, 1, 3])
        if not fused:
            q = rotate(g, q, cos_q, sin_q)  # [b, kvh, rep, s, hd]
            k = rotate(g, k, cos, sin)  # [b, kvh, s, hd]
        v = g.op("Transpose", [g.op("Reshape", [v, g.i64([0, 0, kvh, hd])])], perm=[0, 2, 1, 3])
        pres_k = g.op_to("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        pres_v = g.op_to("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        k_t = g.op("Unsqueeze", [g.op("Transpose", [pres_k], "k_t", perm=[0, 1, 3, 2]), g.i64([2])])
        scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.f32(1.0 / np.sqrt(hd))], "scores")
        scores = g.op("Where", [allowed, scores, g.f32(MASK_VALUE)], "masked_scores")
        probs = g.op("Softmax", [scores], "probs", axis=-1)
        ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [pres_v, g.i64([2])])], "context")  # [b, kvh, rep, s, hd]
        return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2, 4]), g.i64([0, 0, h * hd])])

    def gqa_attention(qkv: str, i: int) -> str:
        """One GroupQueryAttention on the packed q/k/v: rotary inside, present = past + new written by the op."""
        ctx = f"/attention_{i}"
        g.nodes.append(helper.make_node(
            "GroupQueryAttention", [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k,
                                    total_i32, cos_cache, sin_cache, "position_ids", attention_bias],
            [ctx, f"present.{i}.key", f"present.{i}.value"], name=f"attention_{i}_node", domain=MS_DOMAIN,
            num_heads=h, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0))
        return ctx

    attend = gqa_attention if gqa else plain_attention
    delta = None
    for i in range(cfg.num_layers):
        p = f"blk.{i}."
        x, y = residual_norm(x, delta, p + "attn_norm.weight")
        qkv = w.linear(y, [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], f"layers.{i}.qkv_proj")
        x, y = residual_norm(x, w.linear(attend(qkv, i), [p + "attn_output.weight"], f"layers.{i}.o_proj"),
                             p + "ffn_norm.weight")
        gate, up = g.ops_n("Split", [w.linear(y, [p + "ffn_gate.weight", p + "ffn_up.weight"],
                                              f"layers.{i}.gate_up_proj"), splits_ffn], 2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])], "silu"), up])
        delta = w.linear(act, [p + "ffn_down.weight"], f"layers.{i}.down_proj")

    _, x = residual_norm(x, delta, "output_norm.weight")
    # Only the last logits_to_keep positions reach the lm_head (0: all): a prefill that needs no prompt score
    # skips 49,152 x 576 products and a vocabulary-wide row per position. Slice clamps -k below -s to 0.
    lm_head(g.op("Slice", [x, g.op("Neg", [LOGITS_TO_KEEP]), g.i64([2**62]), g.i64([1])], "kept_positions"))

    inputs = [
        helper.make_tensor_value_info(w.token_input, TensorProto.FLOAT, [BATCH, SEQ, d]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, TOTAL]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [BATCH, SEQ]),
        helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, KEPT, cfg.vocab_size])]
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        [BATCH, kvh, PAST, hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         [BATCH, kvh, TOTAL, hd]))
    graph = helper.make_graph(g.nodes, f"smollm2_135m_instruct_{variant}", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    if fused or variant != "fp32":
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    m = helper.make_model(graph, opset_imports=opsets, producer_name="tiergate-models/smollm2",
                          producer_version="1")
    m.ir_version = 8
    m.doc_string = f"SmolLM2-135M-Instruct from GGUF ({variant})"
    return m


def linear_probe(lin: Int4Linear, accuracy_level: int) -> onnx.ModelProto:
    """One int4 linear exactly as the model emits it (`int4_linear`), as a graph A [1, n, K] -> Y [1, n, N]:
    fed the identity matrix, ORT's output is the effective weight matrix transposed."""
    g = GraphBuilder()
    g.op_to("Identity", [int4_linear(g, "A", lin, "probe", accuracy_level)], "Y")
    graph = helper.make_graph(g.nodes, "probe", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, "n", lin.k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "n", lin.n])], g.initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    m.ir_version = 8
    return m
