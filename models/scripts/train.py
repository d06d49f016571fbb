"""Trains one model with jax on its corpus (next-token loss over prompt and answer, padding masked) and saves
the weights to models/.work/<model>/params.npz. AdamW, linear warmup then cosine decay, gradient clipping."""
from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from common import CONFIGS, PAD, ModelConfig, render_example, write_json
from model import forward, init_params, param_count

BUCKET = 8  # sequences are padded to a multiple of this, so only a few shapes get compiled


def encode_corpus(cfg: ModelConfig, tok: Tokenizer) -> dict[int, np.ndarray]:
    rows = [json.loads(line) for line in (cfg.work_dir / "train.jsonl").open()]
    pad = tok.token_to_id(PAD)
    by_len: dict[int, list[list[int]]] = {}
    for r in rows:
        ids = tok.encode(render_example(r["prompt"], r["answer"]), add_special_tokens=False).ids
        assert len(ids) <= cfg.context_length, len(ids)
        length = -(-len(ids) // BUCKET) * BUCKET
        by_len.setdefault(length, []).append(ids + [pad] * (length - len(ids)))
    return {k: np.array(v, np.int32) for k, v in sorted(by_len.items())}


def make_step(cfg: ModelConfig, pad_id: int):
    b1, b2, eps = 0.9, 0.95, 1e-8

    def loss_fn(params, batch):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        mask = (inputs != pad_id).astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        logits = forward(params, cfg, inputs, mask, positions)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        weight = (targets != pad_id).astype(jnp.float32)
        return (nll * weight).sum() / weight.sum()

    def lr_at(step):
        warm = step / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        cos = 0.1 + 0.9 * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
        return cfg.learning_rate * jnp.where(step < cfg.warmup_steps, warm, cos)

    @jax.jit
    def step_fn(params, m, v, step, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        scale = jnp.minimum(1.0, 1.0 / (norm + 1e-6))
        lr = lr_at(step)
        t = step + 1
        new_p, new_m, new_v = {}, {}, {}
        for k in params:
            g = grads[k] * scale
            new_m[k] = b1 * m[k] + (1 - b1) * g
            new_v[k] = b2 * v[k] + (1 - b2) * g * g
            mh = new_m[k] / (1 - b1 ** t)
            vh = new_v[k] / (1 - b2 ** t)
            decay = cfg.weight_decay if params[k].ndim == 2 else 0.0  # no decay on norms and biases
            new_p[k] = params[k] - lr * (mh / (jnp.sqrt(vh) + eps) + decay * params[k])
        return new_p, new_m, new_v, loss

    return step_fn


def main(name: str) -> None:
    cfg = CONFIGS[name]
    tok = Tokenizer.from_file(str(cfg.out_dir / "tokenizer.json"))
    buckets = encode_corpus(cfg, tok)
    lengths = list(buckets)
    weights = np.array([len(buckets[k]) for k in lengths], np.float64)
    weights /= weights.sum()
    rng = np.random.default_rng(cfg.seed)
    params = {k: jnp.asarray(v) for k, v in init_params(cfg, cfg.seed).items()}
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(p) for k, p in params.items()}
    step_fn = make_step(cfg, tok.token_to_id(PAD))
    n_params = param_count(params)
    print(f"{name}: {n_params} parameters, {sum(len(b) for b in buckets.values())} examples, "
          f"buckets {dict((k, len(b)) for k, b in buckets.items())}", flush=True)
    start, losses = time.time(), []
    for step in range(cfg.steps):
        length = lengths[rng.choice(len(lengths), p=weights)]
        rows = buckets[length]
        batch = rows[rng.integers(0, len(rows), cfg.batch_size)]
        params, m, v, loss = step_fn(params, m, v, jnp.asarray(step, jnp.float32), jnp.asarray(batch))
        losses.append(float(loss))
        if step % 100 == 0 or step == cfg.steps - 1:
            print(f"  step {step:5d}  loss {np.mean(losses[-100:]):.4f}  {time.time() - start:6.1f}s", flush=True)
    elapsed = time.time() - start
    np.savez(cfg.work_dir / "params.npz", **{k: np.asarray(p, np.float32) for k, p in params.items()})
    write_json(cfg.work_dir / "training.json", {
        "parameters": n_params, "steps": cfg.steps, "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate, "warmup_steps": cfg.warmup_steps, "weight_decay": cfg.weight_decay,
        "seed": cfg.seed, "final_loss": round(float(np.mean(losses[-100:])), 4),
        "train_seconds": round(elapsed, 1), "examples": int(sum(len(b) for b in buckets.values())),
        "jax_version": jax.__version__,
    })
    print(f"{name}: trained {cfg.steps} steps in {elapsed:.0f}s, final loss {np.mean(losses[-100:]):.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
