#!/usr/bin/env python3
"""Cost of one decode step by batch size: the graph alone in Python onnxruntime (no engine).

Shows what continuous batching can gain on a graph: with fp32 weights a step of 8 rows costs little
more than a step of 1 (the weights are read once per step either way); with the int4 graph's
MatMulNBits at accuracy_level 0 a step of 2 or more rows goes through a dequantize-then-GEMM path that
costs about 3x a one-row step.

    .venv/bench/bin/python scripts/bench-batch-step.py [--model DIR] [--threads 1] [--past 60]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_MODEL = Path.home() / ".cache" / "tiergate" / "models" / "smollm2-135m-instruct-q4_1"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--past", type=int, default=60)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    manifest = json.loads((args.model / "manifest.json").read_text())
    io = manifest["io"]
    heads, dim = manifest["num_kv_heads"], manifest["head_dim"]
    print(f"{'variant':<8}{'batch':>6}{'ms/step':>10}{'rows/s':>9}")
    for file in manifest["files"]:
        if file["kind"] != "model":
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(args.model / file["path"]), options,
                                       providers=["CPUExecutionProvider"])
        for batch in (1, 2, 4, 8):
            feeds = {
                io["input_ids"]: np.full((batch, 1), 5, np.int64),
                io["attention_mask"]: np.ones((batch, args.past + 1), np.int64),
                io["position_ids"]: np.full((batch, 1), args.past, np.int64),
            }
            rng = np.random.default_rng(0)
            for layer in range(manifest["num_layers"]):
                for pattern in (io["past_key"], io["past_value"]):
                    feeds[pattern.format(layer=layer)] = rng.standard_normal(
                        (batch, heads, args.past, dim), dtype=np.float32)
            session.run([io["logits"]], feeds)
            started = time.perf_counter()
            for _ in range(args.steps):
                session.run([io["logits"]], feeds)
            step = (time.perf_counter() - started) / args.steps
            print(f"{file['variant']:<8}{batch:>6}{step * 1e3:>10.1f}{batch / step:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
