"""The two decoder graphs in jax: parameter init and a full-sequence forward pass.

The ONNX export (export_onnx.py) builds the same computation op by op; the pipeline checks that both give the
same logits. Attention masking uses the Optimum convention: attention_mask [batch, total_len] (1 = real token),
combined with a causal mask; masked scores are replaced by a large negative value.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from common import ModelConfig

MASK_VALUE = -1e9
GELU_C = math.sqrt(2.0 / math.pi)


def init_params(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
    std = 0.02
    proj_std = std / math.sqrt(2 * cfg.num_layers)  # GPT-2's scaled init of residual projections
    p: dict[str, np.ndarray] = {}

    def normal(shape, s=std):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    if cfg.architecture == "gpt2":
        p["wte"] = normal((cfg.vocab_size, d))
        p["wpe"] = normal((cfg.context_length, d), 0.01)
        for i in range(cfg.num_layers):
            pre = f"h{i}."
            p[pre + "ln1_g"], p[pre + "ln1_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
            for n in ("q", "k", "v"):
                p[pre + n + "_w"], p[pre + n + "_b"] = normal((d, d)), np.zeros(d, np.float32)
            p[pre + "o_w"], p[pre + "o_b"] = normal((d, d), proj_std), np.zeros(d, np.float32)
            p[pre + "ln2_g"], p[pre + "ln2_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
            p[pre + "fc_w"], p[pre + "fc_b"] = normal((d, f)), np.zeros(f, np.float32)
            p[pre + "proj_w"], p[pre + "proj_b"] = normal((f, d), proj_std), np.zeros(d, np.float32)
        p["lnf_g"], p["lnf_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
    else:
        p["embed"] = normal((cfg.vocab_size, d))
        for i in range(cfg.num_layers):
            pre = f"l{i}."
            p[pre + "in_norm"] = np.ones(d, np.float32)
            p[pre + "q_w"] = normal((d, cfg.num_heads * hd))
            p[pre + "k_w"] = normal((d, cfg.num_kv_heads * hd))
            p[pre + "v_w"] = normal((d, cfg.num_kv_heads * hd))
            p[pre + "o_w"] = normal((cfg.num_heads * hd, d), proj_std)
            p[pre + "post_norm"] = np.ones(d, np.float32)
            p[pre + "gate_w"], p[pre + "up_w"] = normal((d, f)), normal((d, f))
            p[pre + "down_w"] = normal((f, d), proj_std)
        p["final_norm"] = np.ones(d, np.float32)
        p["lm_head"] = normal((d, cfg.vocab_size))
    return p


def param_count(params) -> int:
    return int(sum(np.prod(v.shape) for v in params.values()))


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * g + b


def rms_norm(x, g, eps):
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def gelu_tanh(x):  # GPT-2's gelu_new
    return 0.5 * x * (1.0 + jnp.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def attention_bias(attention_mask):
    """[b, s] mask -> boolean [b, 1, s, s] of allowed (query, key) pairs (causal and not padding)."""
    s = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((s, s), bool))
    return causal[None, None] & (attention_mask[:, None, None, :] > 0)


def rope_cos_sin(position_ids, head_dim, theta):
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq  # [b, s, hd/2]
    emb = jnp.concatenate([freqs, freqs], -1)
    return jnp.cos(emb)[:, None], jnp.sin(emb)[:, None]  # [b, 1, s, hd]


def rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], -1)


def attend(q, k, v, allowed, cfg: ModelConfig):
    """q [b, h, s, hd], k/v [b, kvh, s, hd] -> [b, s, h*hd]; kv heads shared by h/kvh query heads each."""
    b, h, s, hd = q.shape
    rep = h // cfg.num_kv_heads
    q = q.reshape(b, cfg.num_kv_heads, rep, s, hd)
    scores = jnp.einsum("bgrqd,bgkd->bgrqk", q, k) / math.sqrt(hd)
    scores = jnp.where(allowed[:, :, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bgrqk,bgkd->bgrqd", probs, v).reshape(b, h, s, hd)
    return out.transpose(0, 2, 1, 3).reshape(b, s, h * hd)


def split_heads(x, n, hd):
    b, s, _ = x.shape
    return x.reshape(b, s, n, hd).transpose(0, 2, 1, 3)


def forward(params, cfg: ModelConfig, input_ids, attention_mask, position_ids):
    """Full-sequence logits [b, s, vocab] (no KV cache)."""
    allowed = attention_bias(attention_mask)
    hd, h, kvh = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    if cfg.architecture == "gpt2":
        x = params["wte"][input_ids] + params["wpe"][position_ids]
        for i in range(cfg.num_layers):
            pre = f"h{i}."
            y = layer_norm(x, params[pre + "ln1_g"], params[pre + "ln1_b"], cfg.norm_eps)
            q = split_heads(y @ params[pre + "q_w"] + params[pre + "q_b"], h, hd)
            k = split_heads(y @ params[pre + "k_w"] + params[pre + "k_b"], h, hd)
            v = split_heads(y @ params[pre + "v_w"] + params[pre + "v_b"], h, hd)
            x = x + attend(q, k, v, allowed, cfg) @ params[pre + "o_w"] + params[pre + "o_b"]
            y = layer_norm(x, params[pre + "ln2_g"], params[pre + "ln2_b"], cfg.norm_eps)
            y = gelu_tanh(y @ params[pre + "fc_w"] + params[pre + "fc_b"])
            x = x + y @ params[pre + "proj_w"] + params[pre + "proj_b"]
        x = layer_norm(x, params["lnf_g"], params["lnf_b"], cfg.norm_eps)
        return x @ params["wte"].T
    cos, sin = rope_cos_sin(position_ids, hd, cfg.rope_theta)
    x = params["embed"][input_ids]
    for i in range(cfg.num_layers):
        pre = f"l{i}."
        y = rms_norm(x, params[pre + "in_norm"], cfg.norm_eps)
        q = split_heads(y @ params[pre + "q_w"], h, hd)
        k = split_heads(y @ params[pre + "k_w"], kvh, hd)
        v = split_heads(y @ params[pre + "v_w"], kvh, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        x = x + attend(q, k, v, allowed, cfg) @ params[pre + "o_w"]
        y = rms_norm(x, params[pre + "post_norm"], cfg.norm_eps)
        y = jax.nn.silu(y @ params[pre + "gate_w"]) * (y @ params[pre + "up_w"])
        x = x + y @ params[pre + "down_w"]
    x = rms_norm(x, params["final_norm"], cfg.norm_eps)
    return x @ params["lm_head"]
