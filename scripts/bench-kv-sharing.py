#!/usr/bin/env python3
"""What the KV cache copy costs a decode step: the graph alone, GroupQueryAttention in its concat mode (past in,
a new present out, as the engine runs it) against past and present bound to one buffer (IO binding, ONNX Runtime's
"past_present_share_buffer": the op writes only the new position). Same graph, same inputs; the logits must be
bit-identical. CPU time per step, 1 row, interleaved rounds, at several past lengths.

    .venv/bench/bin/python scripts/bench-kv-sharing.py [--model DIR] [--variant int4-fast] [--threads 1]
        [--capacity 2048] [--pasts 60,500,1500]

Why it matters: in concat mode ONNX Runtime's CPU kernel zeroes the whole present buffer and copies every past
position into it on every step, so the step grows with the context far faster than attention's arithmetic.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from decode_feeds import decode_feeds
from ort_session import engine_session

DEFAULT_MODEL = Path.home() / ".cache" / "tiergate" / "models" / "smollm2-135m-instruct-q4_1"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--variant", default="int4-fast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=2048, help="positions of the shared buffer")
    parser.add_argument("--pasts", default="60,500,1500")
    args = parser.parse_args()
    manifest = json.loads((args.model / "manifest.json").read_text())
    io = manifest["io"]
    graph = next(f for f in manifest["files"] if f["kind"] == "model" and f["variant"] == args.variant)
    session = engine_session(args.model / graph["path"], args.threads)
    past_names = {io["past_key"].format(layer=i): io["present_key"].format(layer=i)
                  for i in range(manifest["num_layers"])}
    past_names.update({io["past_value"].format(layer=i): io["present_value"].format(layer=i)
                       for i in range(manifest["num_layers"])})
    print(f"{args.variant}, {args.threads} thread(s), shared buffer of {args.capacity} positions")
    print(f"{'past':>6}{'concat ms':>11}{'shared ms':>11}{'shared/concat':>15}  logits")
    for past in (int(p) for p in args.pasts.split(",")):
        feeds = decode_feeds(past, 1, manifest, args.model, args.variant)
        binding = session.io_binding()
        for name, value in feeds.items():
            if name in past_names:
                shape = list(value.shape)
                shape[2] = args.capacity
                buffer = np.zeros(shape, np.float32)
                buffer[:, :, :past] = value
                shared = ort.OrtValue.ortvalue_from_numpy(buffer)
                binding.bind_ortvalue_input(name, shared)
                binding.bind_ortvalue_output(past_names[name], shared)
            else:
                binding.bind_cpu_input(name, value)
        binding.bind_output(io["logits"])
        concat = lambda: session.run([io["logits"]], feeds)[0]  # noqa: E731
        # Every call writes the same new position into the buffer: the same step each time.
        shared_step = lambda: session.run_with_iobinding(binding)  # noqa: E731
        expected = concat()
        shared_step()
        same = np.array_equal(expected, binding.copy_outputs_to_cpu()[-1])
        times = {"concat": [], "shared": []}
        for _ in range(4):
            for name, step in (("concat", concat), ("shared", shared_step)):
                step()
                started = time.process_time()
                for _ in range(10):
                    step()
                times[name].append((time.process_time() - started) / 10 * 1e3)
        c, s = (statistics.median(times[k]) for k in ("concat", "shared"))
        print(f"{past:>6}{c:>11.1f}{s:>11.1f}{s / c:>14.2f}x  {'identical' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
