"""Inputs of one decode step with a made-up KV cache, shared by the graph-alone benchmarks
(bench-graph-step.py, bench-spinning.py, bench-batch-step.py, bench-kv-sharing.py, bench-ort-settings.py): one new
token (id 5) per row after `past` cached positions. Names and shapes from the model's manifest when given, else
SmolLM2-135M's.

The token goes in as the graph takes it: `input_ids`, or `inputs_embeds` for a graph that takes embedding rows (every
SmolLM2 graph: fp32 since importer version 7, int4 and int4-fast since 6): token 5's real row, read at the
manifest's `embedding` offsets by models/smollm2/embedding_rows.py, when the model folder and variant are known; a
zero row otherwise."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models" / "smollm2"))
from embedding_rows import token_feeds  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM, HIDDEN = 30, 3, 64, 576  # SmolLM2-135M
TOKEN = 5
SMOLLM2_IO = {"input_ids": "input_ids", "inputs_embeds": "inputs_embeds", "logits_to_keep": "logits_to_keep",
              "attention_mask": "attention_mask",
              "position_ids": "position_ids", "past_key": "past_key_values.{layer}.key",
              "past_value": "past_key_values.{layer}.value"}


def decode_feeds(past, batch=1, manifest=None, model_dir=None, variant=None, session=None):
    """Feeds of one decode step. With manifest, model_dir and variant: the token through the variant's manifest
    entry (embedding_rows.token_feeds). Without them, the token inputs `session`'s graph lists: input_ids, and
    inputs_embeds as a zero row of its hidden size; input_ids when no session is given."""
    io = {**SMOLLM2_IO, **manifest["io"]} if manifest else SMOLLM2_IO
    layers, heads, dim = ((manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"])
                          if manifest else (LAYERS, KV_HEADS, HEAD_DIM))
    ids = np.full((batch, 1), TOKEN, np.int64)
    if manifest is not None and model_dir is not None and variant is not None:
        feeds = token_feeds(model_dir, manifest, variant, ids, keep=1)
    else:  # what the session's graph lists (input_ids without a session)
        inputs = {i.name: i for i in session.get_inputs()} if session else {io["input_ids"]: None}
        feeds = {io["input_ids"]: ids} if io["input_ids"] in inputs else {}
        if io["inputs_embeds"] in inputs:
            hidden = inputs[io["inputs_embeds"]].shape[2]
            feeds[io["inputs_embeds"]] = np.zeros((batch, 1, hidden if isinstance(hidden, int) else HIDDEN),
                                                  np.float32)
        if io["logits_to_keep"] in inputs:
            feeds[io["logits_to_keep"]] = np.array([1], np.int64)
    feeds.update({io["attention_mask"]: np.ones((batch, past + 1), np.int64),
                  io["position_ids"]: np.full((batch, 1), past, np.int64)})
    rng = np.random.default_rng(0)
    for layer in range(layers):
        for pattern in (io["past_key"], io["past_value"]):
            feeds[pattern.format(layer=layer)] = rng.standard_normal((batch, heads, past, dim), dtype=np.float32)
    return feeds


def graph_decode_feeds(past, graph, session, batch=1):
    """decode_feeds for the graph file `graph` (opened as `session`): through the manifest of its folder when that
    lists it as a model file (a graph taking inputs_embeds then gets token 5's real row), else by its session."""
    graph = Path(graph).resolve()
    manifest_path = graph.parent / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        variant = next((f.get("variant") for f in manifest["files"]
                        if f["kind"] == "model" and f["path"] == graph.name), None)
        if variant is not None:
            return decode_feeds(past, batch, manifest, graph.parent, variant)
    return decode_feeds(past, batch, session=session)
