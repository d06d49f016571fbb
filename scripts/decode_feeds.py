"""Inputs of one SmolLM2-135M decode step with a made-up KV cache, shared by the graph-alone benchmarks
(bench-graph-step.py, bench-spinning.py): one new token after `past` cached positions."""

import numpy as np

LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64  # SmolLM2-135M


def decode_feeds(past):
    rng = np.random.default_rng(0)
    feeds = {"input_ids": np.full((1, 1), 5, np.int64), "attention_mask": np.ones((1, past + 1), np.int64),
             "position_ids": np.full((1, 1), past, np.int64)}
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                (1, KV_HEADS, past, HEAD_DIM), dtype=np.float32)
    return feeds
