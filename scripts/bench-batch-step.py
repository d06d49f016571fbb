#!/usr/bin/env python3
"""Cost of one decode step by batch size: the graph alone in Python onnxruntime (no engine).

Shows what continuous batching can gain on a graph: with fp32 weights a step of 8 rows costs little
more than a step of 1 (the weights are read once per step either way); with the int4 graph's
MatMulNBits at accuracy_level 0 a step of 2 or more rows goes through a dequantize-then-GEMM path that
costs about 3x a one-row step.

    .venv/bench/bin/python scripts/bench-batch-step.py [--model DIR] [--threads 1] [--past 60]
        [--variant int4-fast] [--profile]

--profile runs ONNX Runtime's profiler instead of the timer and prints, per operator (MatMulNBits per
projection), the milliseconds one step spends in it at each batch size: where a batched step's cost grows.
"""

import argparse
import collections
import json
import os
import re
import time
from pathlib import Path

from decode_feeds import decode_feeds
from ort_session import engine_session

DEFAULT_MODEL = Path.home() / ".cache" / "tiergate" / "models" / "smollm2-135m-instruct-q4_1"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--past", type=int, default=60)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--variant", help="only this graph of the manifest")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    manifest = json.loads((args.model / "manifest.json").read_text())
    io = manifest["io"]
    if not args.profile:
        print(f"{'variant':<8}{'batch':>6}{'ms/step':>10}{'rows/s':>9}")
    for file in manifest["files"]:
        if file["kind"] != "model" or args.variant not in (None, file["variant"]):
            continue
        if args.profile:
            profile(args, manifest, file)
            continue
        session = make_session(args, file)
        for batch in (1, 2, 3, 4, 8):
            feeds = decode_feeds(args.past, batch, manifest, args.model, file["variant"])
            session.run([io["logits"]], feeds)
            started = time.perf_counter()
            for _ in range(args.steps):
                session.run([io["logits"]], feeds)
            step = (time.perf_counter() - started) / args.steps
            print(f"{file['variant']:<8}{batch:>6}{step * 1e3:>10.1f}{batch / step:>9.1f}", flush=True)


def make_session(args, file, profile_prefix=None):
    return engine_session(args.model / file["path"], args.threads, profile_prefix=profile_prefix)


PROJECTION = re.compile(r"(qkv_proj|q_proj|k_proj|v_proj|o_proj|gate_up_proj|down_proj|logits)")


def profile(args, manifest, file):
    """Per-operator milliseconds of one step at 1, 4 and 8 rows, from ONNX Runtime's profiler."""
    per_batch = {}
    for batch in (1, 4, 8):
        session = make_session(args, file, f"/tmp/tiergate-batch-profile-{os.getpid()}")
        feeds = decode_feeds(args.past, batch, manifest, args.model, file["variant"])
        for _ in range(3):
            session.run([manifest["io"]["logits"]], feeds)
        for _ in range(args.steps):
            session.run([manifest["io"]["logits"]], feeds)
        trace = session.end_profiling()
        with open(trace) as events:
            events = json.load(events)
        os.remove(trace)
        runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
        spent = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                op = e["args"].get("op_name", "?")
                if op == "MatMulNBits":
                    projection = PROJECTION.search(e["name"])
                    op += ":" + (projection.group(1) if projection else "other")
                spent[op] += e["dur"]
        per_batch[batch] = {op: us / runs / 1e3 for op, us in spent.items()}
    print(f"{file['variant']}, {args.threads} thread(s), past {args.past}: ms per step in each operator")
    print(f"{'operator':<34}{'1 row':>8}{'4 rows':>8}{'8 rows':>8}{'8/1':>6}")
    for op in sorted(per_batch[8], key=lambda op: -per_batch[8][op])[:16]:
        one = per_batch[1].get(op, 0.0)
        ratio = per_batch[8][op] / one if one else float("nan")
        print(f"{op:<34}{one:>8.2f}{per_batch[4].get(op, 0.0):>8.2f}{per_batch[8][op]:>8.2f}{ratio:>6.1f}")
    print(f"{'total':<34}" + "".join(f"{sum(per_batch[b].values()):>8.2f}" for b in (1, 4, 8)))


if __name__ == "__main__":
    main()
