"""Inputs of one decode step with a made-up KV cache, shared by the graph-alone benchmarks
(bench-graph-step.py, bench-spinning.py, bench-batch-step.py): one new token per row after `past` cached
positions. Names and shapes from the model's manifest when given, else SmolLM2-135M's."""

import numpy as np

LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64  # SmolLM2-135M
SMOLLM2_IO = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
              "past_key": "past_key_values.{layer}.key", "past_value": "past_key_values.{layer}.value"}


def decode_feeds(past, batch=1, manifest=None):
    io = manifest["io"] if manifest else SMOLLM2_IO
    layers, heads, dim = ((manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"])
                          if manifest else (LAYERS, KV_HEADS, HEAD_DIM))
    rng = np.random.default_rng(0)
    feeds = {io["input_ids"]: np.full((batch, 1), 5, np.int64),
             io["attention_mask"]: np.ones((batch, past + 1), np.int64),
             io["position_ids"]: np.full((batch, 1), past, np.int64)}
    for layer in range(layers):
        for pattern in (io["past_key"], io["past_value"]):
            feeds[pattern.format(layer=layer)] = rng.standard_normal((batch, heads, past, dim), dtype=np.float32)
    return feeds
