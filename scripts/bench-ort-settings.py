#!/usr/bin/env python3
"""What a second intra-op thread and ONNX Runtime's session settings do to one decode step, the graph
alone (no engine), each setting interleaved with the others so that all see the same moments.

    .venv/import/bin/python scripts/bench-ort-settings.py steps GRAPH.onnx [--rounds 6] [--seconds 2]
        [--setting 'NAME=KEY=VALUE[;KEY=VALUE...]' ...]
    .venv/import/bin/python scripts/bench-ort-settings.py products

(.venv/import, made by `make real-model`, has onnxruntime 1.31.1 and onnx, which `products` needs.)

`steps`: decode steps/s (one row, 60 cached positions) under the node's settings (2 intra-op threads,
spinning bounded to 20 us, CPU arena off), the same with 1 thread, and each --setting on top of the node's
(the key `threads` sets the thread count). Ratios are against the node's settings, medians of the rounds.
`products`: one MatMulNBits node alone (4-bit weights, block 32, int8 activations, one row) at the
shapes of SmolLM2-135M's projections, at 1 and 2 threads: how much each product gains from a second
thread (weights hot in cache, best of 7 interleaved rounds).
"""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from decode_feeds import graph_decode_feeds
from ort_session import engine_options

NODE_SETTINGS = {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "20"}
# (name, K, N) of SmolLM2-135M's products; the lm_head is two such planes.
PROJECTIONS = [("q/k/v", 576, 960), ("o", 576, 576), ("gate/up", 576, 3072), ("down", 1536, 576),
               ("lm_head plane", 576, 49152)]


def session_options(threads, entries):
    return engine_options(threads, {**NODE_SETTINGS, **entries})


def parse_setting(text):
    name, _, rest = text.partition("=")
    entries = dict(item.split("=", 1) for item in rest.split(";") if item)
    return name, entries


def steps(args):
    chosen = {"node settings": {}, "1 thread": {"threads": "1"}}
    chosen.update(parse_setting(text) for text in args.setting)
    sessions = {}
    for name, entries in chosen.items():
        entries = dict(entries)
        threads = int(entries.pop("threads", "2"))
        sessions[name] = ort.InferenceSession(args.graph, session_options(threads, entries),
                                              providers=["CPUExecutionProvider"])
    feeds = graph_decode_feeds(60, args.graph, next(iter(sessions.values())))
    rates = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            session.run(["logits"], feeds)
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < args.seconds:
                session.run(["logits"], feeds)
                n += 1
            rates[name].append(n / (time.perf_counter() - started))
    reference = statistics.median(rates["node settings"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<24}{median:8.1f} steps/s {median / reference:6.3f}x   rounds "
              f"{[round(v, 1) for v in values]}")


def product_session(k, n, threads, block=32):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = k // block
    weights = numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), "B")
    scales = numpy_helper.from_array((rng.random(n * blocks) * 0.01).astype(np.float32), "S")
    zero_points = numpy_helper.from_array(rng.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8), "Z")
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft", K=k, N=n,
                            bits=4, block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "product", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
                              [weights, scales, zero_points])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # what ONNX Runtime 1.31 reads
    return ort.InferenceSession(model.SerializeToString(), session_options(threads, {}),
                                providers=["CPUExecutionProvider"])


def products(_args):
    for name, k, n in PROJECTIONS:
        x = np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)
        sessions = {threads: product_session(k, n, threads) for threads in (1, 2)}
        runs = 300 if n < 10000 else 40
        best = {}
        for _ in range(7):
            for threads, session in sessions.items():
                for _ in range(20):
                    session.run(None, {"A": x})
                started = time.perf_counter()
                for _ in range(runs):
                    session.run(None, {"A": x})
                elapsed = (time.perf_counter() - started) / runs * 1e6
                best[threads] = min(best.get(threads, elapsed), elapsed)
        print(f"{name:<14} {k:>5} x {n:<6} 1 thread {best[1]:7.1f} us   2 threads {best[2]:7.1f} us   "
              f"{best[1] / best[2]:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    steps_parser = modes.add_parser("steps")
    steps_parser.add_argument("graph")
    steps_parser.add_argument("--rounds", type=int, default=6)
    steps_parser.add_argument("--seconds", type=float, default=2.0)
    steps_parser.add_argument("--setting", action="append", default=[])
    modes.add_parser("products")
    args = parser.parse_args()
    {"steps": steps, "products": products}[args.mode](args)


if __name__ == "__main__":
    main()
