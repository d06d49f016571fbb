"""Writes a trained model as an ONNX graph (opset 17) with the Hugging Face Optimum decoder-with-past IO.

Inputs: input_ids [b, s], attention_mask [b, past + s], position_ids [b, s] (int64),
past_key_values.N.key/value [b, kv_heads, past, head_dim] (float32).
Outputs: logits [b, s, vocab], present.N.key/value [b, kv_heads, past + s, head_dim].
The graph is built op by op with onnx.helper and mirrors model.forward exactly.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import CONFIGS, OPSET, ModelConfig
from model import GELU_C, MASK_VALUE

BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


class GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def op(self, op_type: str, inputs: list[str], name_hint: str = "", **attrs) -> str:
        self._n += 1
        out = f"/{name_hint or op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out.lstrip("/") + "_node", **attrs))
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


def layer_norm(g: GraphBuilder, x: str, scale: str, bias: str, eps: float) -> str:
    return g.op("LayerNormalization", [x, scale, bias], "layer_norm", axis=-1, epsilon=eps)


def rms_norm(g: GraphBuilder, x: str, scale: str, eps: float) -> str:
    ms = g.op("ReduceMean", [g.op("Mul", [x, x])], "rms_mean", axes=[-1], keepdims=1)
    return g.op("Mul", [g.op("Div", [x, g.op("Sqrt", [g.op("Add", [ms, g.f32(eps)])])]), scale], "rms_norm")


def gelu_tanh(g: GraphBuilder, x: str) -> str:
    cube = g.op("Mul", [g.op("Mul", [x, x]), x])
    inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, g.f32(0.044715)])]), g.f32(GELU_C)])
    return g.op("Mul", [g.op("Mul", [x, g.f32(0.5)]), g.op("Add", [g.op("Tanh", [inner]), g.f32(1.0)])], "gelu")


def rotate(g: GraphBuilder, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin (the Hugging Face Llama rotary layout: halves, not interleaved)."""
    x1, x2 = g.ops_n("Split", [x], 2, axis=-1)
    rotated = g.op("Concat", [g.op("Neg", [x2]), x1], "rotate_half", axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "rope")


def attention_mask_graph(g: GraphBuilder, rank5: bool) -> str:
    """Boolean [b, 1, s, total] (or [b, 1, 1, s, total]): causal over absolute positions and not padding."""
    s = g.op("Gather", [g.op("Shape", ["input_ids"]), g.i64(1)], "seq_len", axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.i64(1)], "total_len", axis=0)
    past = g.op("Sub", [total, s], "past_len")
    key_pos = g.op("Range", [g.i64(0), total, g.i64(1)], "key_pos")
    query_pos = g.op("Range", [past, total, g.i64(1)], "query_pos")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [key_pos, g.i64([0])]),
                                  g.op("Unsqueeze", [query_pos, g.i64([1])])], "causal")  # [s, total]
    not_pad = g.op("Greater", ["attention_mask", g.i64(0)], "not_pad")  # [b, total]
    axes = [1, 2, 3] if rank5 else [1, 2]
    return g.op("And", [causal, g.op("Unsqueeze", [not_pad, g.i64(axes)])], "allowed")


def attention_core(g: GraphBuilder, q: str, present_k: str, present_v: str, allowed: str, hd: int, grouped: bool):
    """Scaled dot-product attention with the past already concatenated; grouped: q has a rep axis."""
    k_t = g.op("Transpose", [present_k], "k_t", perm=[0, 1, 3, 2])
    v = present_v
    if grouped:
        k_t = g.op("Unsqueeze", [k_t, g.i64([2])])
        v = g.op("Unsqueeze", [v, g.i64([2])])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.f32(1.0 / math.sqrt(hd))], "scores")
    scores = g.op("Where", [allowed, scores, g.f32(MASK_VALUE)], "masked_scores")
    probs = g.op("Softmax", [scores], "probs", axis=-1)
    return g.op("MatMul", [probs, v], "context")


def build_graph(cfg: ModelConfig, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = GraphBuilder()
    d, hd, h, kvh = cfg.d_model, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    for k, v in params.items():
        g.weight(k, v.astype(np.float32))
    llama = cfg.architecture == "llama"
    allowed = attention_mask_graph(g, rank5=llama)

    if llama:
        x = g.op("Gather", ["embed", "input_ids"], "embed_tokens", axis=0)
        inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT), g.i64([-1])])
        freqs = g.op("Mul", [pos, g.weight("rope_inv_freq", inv_freq.astype(np.float32))], "freqs")
        emb = g.op("Concat", [freqs, freqs], axis=-1)
        cos = g.op("Unsqueeze", [g.op("Cos", [emb]), g.i64([1])], "cos")  # [b, 1, s, hd]
        sin = g.op("Unsqueeze", [g.op("Sin", [emb]), g.i64([1])], "sin")
        cos_q = g.op("Unsqueeze", [cos, g.i64([1])])  # [b, 1, 1, s, hd] for the grouped query layout
        sin_q = g.op("Unsqueeze", [sin, g.i64([1])])
    else:
        x = g.op("Add", [g.op("Gather", ["wte", "input_ids"], axis=0), g.op("Gather", ["wpe", "position_ids"], axis=0)],
                 "embeddings")

    for i in range(cfg.num_layers):
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        pres_k, pres_v = f"present.{i}.key", f"present.{i}.value"
        if llama:
            pre = f"l{i}."
            y = rms_norm(g, x, pre + "in_norm", cfg.norm_eps)
            q = g.op("MatMul", [y, pre + "q_w"], "q_proj")
            q = g.op("Transpose", [g.op("Reshape", [q, g.i64([0, 0, kvh, h // kvh, hd])])], perm=[0, 2, 3, 1, 4])
            q = rotate(g, q, cos_q, sin_q)  # [b, kvh, rep, s, hd]
            k = g.op("MatMul", [y, pre + "k_w"], "k_proj")
            k = g.op("Transpose", [g.op("Reshape", [k, g.i64([0, 0, kvh, hd])])], perm=[0, 2, 1, 3])
            k = rotate(g, k, cos, sin)
            v = g.op("MatMul", [y, pre + "v_w"], "v_proj")
            v = g.op("Transpose", [g.op("Reshape", [v, g.i64([0, 0, kvh, hd])])], perm=[0, 2, 1, 3])
            g.op_to("Concat", [past_k, k], pres_k, axis=2)
            g.op_to("Concat", [past_v, v], pres_v, axis=2)
            ctx = attention_core(g, q, pres_k, pres_v, allowed, hd, grouped=True)  # [b, kvh, rep, s, hd]
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2, 4]), g.i64([0, 0, h * hd])])
            x = g.op("Add", [x, g.op("MatMul", [ctx, pre + "o_w"], "o_proj")], "residual")
            y = rms_norm(g, x, pre + "post_norm", cfg.norm_eps)
            gate = g.op("MatMul", [y, pre + "gate_w"], "gate_proj")
            gate = g.op("Mul", [gate, g.op("Sigmoid", [gate])], "silu")
            up = g.op("MatMul", [y, pre + "up_w"], "up_proj")
            x = g.op("Add", [x, g.op("MatMul", [g.op("Mul", [gate, up]), pre + "down_w"], "down_proj")], "residual")
        else:
            pre = f"h{i}."
            y = layer_norm(g, x, pre + "ln1_g", pre + "ln1_b", cfg.norm_eps)
            heads = []
            for n in ("q", "k", "v"):
                t = g.op("Add", [g.op("MatMul", [y, pre + n + "_w"], n + "_proj"), pre + n + "_b"])
                heads.append(g.op("Transpose", [g.op("Reshape", [t, g.i64([0, 0, h, hd])])], perm=[0, 2, 1, 3]))
            q, k, v = heads
            g.op_to("Concat", [past_k, k], pres_k, axis=2)
            g.op_to("Concat", [past_v, v], pres_v, axis=2)
            ctx = attention_core(g, q, pres_k, pres_v, allowed, hd, grouped=False)
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.i64([0, 0, d])])
            attn = g.op("Add", [g.op("MatMul", [ctx, pre + "o_w"], "o_proj"), pre + "o_b"])
            x = g.op("Add", [x, attn], "residual")
            y = layer_norm(g, x, pre + "ln2_g", pre + "ln2_b", cfg.norm_eps)
            y = gelu_tanh(g, g.op("Add", [g.op("MatMul", [y, pre + "fc_w"], "fc"), pre + "fc_b"]))
            y = g.op("Add", [g.op("MatMul", [y, pre + "proj_w"], "proj"), pre + "proj_b"])
            x = g.op("Add", [x, y], "residual")

    if llama:
        x = rms_norm(g, x, "final_norm", cfg.norm_eps)
        g.op_to("MatMul", [x, "lm_head"], "logits")
    else:
        x = layer_norm(g, x, "lnf_g", "lnf_b", cfg.norm_eps)
        g.op_to("MatMul", [x, g.op("Transpose", ["wte"], "lm_head_tied", perm=[1, 0])], "logits")

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, SEQ]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, TOTAL]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [BATCH, SEQ]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, SEQ, cfg.vocab_size])]
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        [BATCH, kvh, PAST, hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         [BATCH, kvh, TOTAL, hd]))
    graph = helper.make_graph(g.nodes, f"tiergate_{cfg.name}", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tiergate-models", producer_version="1")
    model.ir_version = 8  # readable by every ONNX Runtime of the last years
    onnx.checker.check_model(model, full_check=True)
    return model


def load_params(cfg: ModelConfig) -> dict[str, np.ndarray]:
    with np.load(cfg.work_dir / "params.npz") as f:
        return {k: f[k] for k in f.files}


def main(name: str) -> None:
    cfg = CONFIGS[name]
    model = build_graph(cfg, load_params(cfg))
    path = cfg.out_dir / "model.onnx"
    onnx.save_model(model, str(path))
    print(f"{name}: wrote {path} ({path.stat().st_size} bytes, {len(model.graph.node)} nodes)")


if __name__ == "__main__":
    main(sys.argv[1])
