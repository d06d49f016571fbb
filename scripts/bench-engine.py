#!/usr/bin/env python3
"""Engine decode speed: tiergate's Rust engine vs a plain Python onnxruntime loop, same run.

Both decode greedily, with the KV cache, the same prompts (the model's reference.json cases,
rendered with the manifest's chat template) on one intra-op thread with all graph optimisations,
until <|end|>, --max-new-tokens, or the context end. The Rust side goes through the engine's
public API (queue, worker thread, confidence, detokenization) via
`cargo bench -p tiergate-engine --bench engine`; the Python side is the bare loop
(session.run, numpy argmax). Prints both and the ratio.

Needs onnxruntime, numpy and tokenizers (models/requirements.txt; `.venv/models` has them):
    .venv/models/bin/python scripts/bench-engine.py [--model models/edge] [--variant fp32]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def run_rust(args):
    command = [
        "cargo", "bench", "--quiet", "-p", "tiergate-engine", "--bench", "engine", "--",
        "--json", "--model", str(Path(args.model).resolve()), "--variant", args.variant,
        "--repeat", str(args.repeat), "--max-new-tokens", str(args.max_new_tokens),
    ]
    done = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class PythonDecoder:
    def __init__(self, model_dir, variant):
        manifest = json.loads((model_dir / "manifest.json").read_text())
        self.manifest = manifest
        model_file = next(f["path"] for f in manifest["files"]
                          if f["kind"] == "model" and f["variant"] == variant)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_dir / model_file), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.eos = self.tokenizer.token_to_id(manifest["special_tokens"]["eos"])
        io = manifest["io"]
        layers = range(manifest["num_layers"])
        self.io = io
        self.past_names = [(io["past_key"].format(layer=i), io["past_value"].format(layer=i))
                           for i in layers]
        self.present_names = [(io["present_key"].format(layer=i),
                               io["present_value"].format(layer=i)) for i in layers]
        self.output_names = [io["logits"]] + [n for pair in self.present_names for n in pair]
        self.empty = np.zeros((1, manifest["num_kv_heads"], 0, manifest["head_dim"]),
                              dtype=np.float32)

    def render(self, prompt):
        template = self.manifest["chat_template"]
        return (template["message"].replace("{role}", "user").replace("{content}", prompt)
                + template["generation_prompt"])

    def _run(self, ids, past, past_len):
        seq = len(ids)
        feeds = {
            self.io["input_ids"]: np.array([ids], dtype=np.int64),
            self.io["attention_mask"]: np.ones((1, past_len + seq), dtype=np.int64),
        }
        if self.io.get("position_ids"):
            feeds[self.io["position_ids"]] = np.arange(past_len, past_len + seq,
                                                       dtype=np.int64)[None, :]
        for (key_name, value_name), (key, value) in zip(self.past_names, past):
            feeds[key_name] = key
            feeds[value_name] = value
        outputs = self.session.run(self.output_names, feeds)
        presents = list(zip(outputs[1::2], outputs[2::2]))
        return outputs[0], presents

    def generate(self, prompt, max_new_tokens):
        ids = self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids
        context = self.manifest["context_length"]
        started = time.perf_counter()
        logits, past = self._run(ids, [(self.empty, self.empty)] * len(self.past_names), 0)
        token = int(np.argmax(logits[0, -1]))
        prefill = time.perf_counter() - started
        tokens = [token]
        decode_started = time.perf_counter()
        while (token != self.eos and len(tokens) < max_new_tokens
               and len(ids) + len(tokens) < context):
            logits, past = self._run([token], past, len(ids) + len(tokens) - 1)
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
        decode = time.perf_counter() - decode_started
        return tokens, prefill, decode


def run_python(args):
    model_dir = Path(args.model).resolve()
    decoder = PythonDecoder(model_dir, args.variant)
    prompts = [c["prompt"] for c in json.loads((model_dir / "reference.json").read_text())["cases"]]
    prefill_ms, decode_tokens, decode_seconds, generations = [], 0, 0.0, 0
    for repetition in range(args.repeat + 1):  # the first pass warms up
        for prompt in prompts:
            tokens, prefill, decode = decoder.generate(prompt, args.max_new_tokens)
            if repetition == 0:
                continue
            prefill_ms.append(prefill * 1e3)
            decode_tokens += len(tokens) - 1
            decode_seconds += decode
            generations += 1
    return {
        "implementation": f"python onnxruntime {ort.__version__}",
        "generations": generations,
        "decode_tokens": decode_tokens,
        "decode_seconds": decode_seconds,
        "decode_tokens_per_second": decode_tokens / decode_seconds,
        "prefill_ms_median": statistics.median(prefill_ms),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "edge"))
    parser.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if "ORT_DYLIB_PATH" not in os.environ:
        default = ROOT / ".tools/onnxruntime/libonnxruntime.so.1.31.1"
        if default.is_file():
            os.environ["ORT_DYLIB_PATH"] = str(default)

    rust = run_rust(args)
    python = run_python(args)
    if rust["decode_tokens"] != python["decode_tokens"]:
        print(f"warning: decoded token counts differ (rust {rust['decode_tokens']}, "
              f"python {python['decode_tokens']})", file=sys.stderr)

    print(f"model {rust['model']} ({rust['variant']}), {rust['generations']} generations, "
          f"{rust['decode_tokens']} decode tokens each side, 1 intra-op thread")
    print(f"{'':28}{'decode tokens/s':>16}{'prefill median ms':>19}")
    for result in (rust, python):
        print(f"{result['implementation']:28}{result['decode_tokens_per_second']:>16.0f}"
              f"{result['prefill_ms_median']:>19.3f}")
    print(f"decode speed ratio rust/python: "
          f"{rust['decode_tokens_per_second'] / python['decode_tokens_per_second']:.2f}x; "
          f"prefill latency ratio python/rust: "
          f"{python['prefill_ms_median'] / rust['prefill_ms_median']:.2f}x")
    print(f"engine time outside session.run: {rust['outside_session_run_share'] * 100:.1f}%")


if __name__ == "__main__":
    main()
