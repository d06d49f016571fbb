"""ONNX Runtime helpers shared by verification, reference and evaluation: sessions, KV-cache greedy decoding
and per-token confidence, exactly as the Rust engine is expected to do it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from common import EOS, ModelConfig, render_prompt

MAX_NEW_TOKENS = 24
CONFIDENCE_WINDOW = 8


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def empty_past(cfg: ModelConfig, batch: int = 1) -> dict[str, np.ndarray]:
    z = np.zeros((batch, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
    return {f"past_key_values.{i}.{k}": z for i in range(cfg.num_layers) for k in ("key", "value")}


def run(sess, cfg: ModelConfig, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: dict):
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(names, feeds)))
    present = {f"past_key_values.{i}.{k}": outs[f"present.{i}.{k}"]
               for i in range(cfg.num_layers) for k in ("key", "value")}
    return outs["logits"], present


def full_logits(sess, cfg: ModelConfig, ids: list[int]) -> np.ndarray:
    """Logits [s, vocab] of one sequence without cache."""
    a = np.array([ids], np.int64)
    logits, _ = run(sess, cfg, a, np.ones_like(a), np.arange(len(ids), dtype=np.int64)[None], empty_past(cfg))
    return logits[0]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclasses.dataclass
class Generation:
    prompt_ids: list[int]
    first_step_logits: np.ndarray
    tokens: list[int]  # new tokens, EOS included when produced
    top1_probs: list[float]  # probability of each chosen token
    prompt_nll: float  # mean NLL of prompt tokens 1..n-1 given their prefix
    text: str

    @property
    def confidence(self) -> float:
        """Mean top-1 probability over the first CONFIDENCE_WINDOW generated tokens."""
        return float(np.mean(self.top1_probs[:CONFIDENCE_WINDOW]))

    @property
    def min_confidence(self) -> float:
        """Lowest top-1 probability over the whole answer (catches one unsure token, e.g. a digit of a sum)."""
        return float(min(self.top1_probs))


def generate(sess, cfg: ModelConfig, tok: Tokenizer, prompt: str, max_new: int = MAX_NEW_TOKENS) -> Generation:
    eos = tok.token_to_id(EOS)
    ids = tok.encode(render_prompt(prompt), add_special_tokens=False).ids
    ids = ids[-(cfg.context_length - max_new):]  # keep the end of over-long prompts (only OOD probes hit this)
    a = np.array([ids], np.int64)
    logits, past = run(sess, cfg, a, np.ones_like(a), np.arange(len(ids), dtype=np.int64)[None], empty_past(cfg))
    logp = np.log(softmax(logits[0].astype(np.float64)))
    prompt_nll = float(-np.mean([logp[i - 1, ids[i]] for i in range(1, len(ids))]))
    first = logits[0, -1].copy()
    step_logits = first
    tokens, probs = [], []
    total = len(ids)
    for _ in range(max_new):
        p = softmax(step_logits.astype(np.float64))
        nxt = int(np.argmax(step_logits))
        tokens.append(nxt)
        probs.append(float(p[nxt]))
        if nxt == eos:
            break
        total += 1
        logits, past = run(sess, cfg, np.array([[nxt]], np.int64), np.ones((1, total), np.int64),
                           np.array([[total - 1]], np.int64), past)
        step_logits = logits[0, -1]
    text = tok.decode(tokens, skip_special_tokens=True)
    return Generation(ids, first, tokens, probs, prompt_nll, text)
