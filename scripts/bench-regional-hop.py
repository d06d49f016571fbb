#!/usr/bin/env python3
"""What a whole answer costs over the regional hop, asked for as a stream and gathered
(`[upstreams.regional] stream_whole_answers = true`, the default) against one unary call
(`false`), side by side in one run, with the regional node asked directly as the anchor.

Starts one regional node (the toy model, or `--model`; every local attempt committing) and two edge nodes
that send every request to it, one per setting; then sends the same non-streamed chat
completion round-robin to the regional node and to both edges, one request at a time, and
prints a Markdown table: median and p90 latency, the answer's tokens, and each edge's
median as a ratio to the other and to the regional node alone. 127.0.0.1 only.

    scripts/bench-regional-hop.py [--bin target/debug/tiergate] [--rounds 300] [--max-tokens 32]
        [--model models/edge] [--variant VARIANT]   (the regional node's model; the edges keep the toy)

Needs ORT_DYLIB_PATH (as `make` sets it) and a built binary.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every local attempt of the regional node commits; every edge request goes to the regional tier.
REGIONAL_ROUTER = (
    "[router]\nlocal_max_complexity = 1.0\n"
    "[router.confidence]\nmin_mean_top1 = 0.0\nmin_token_top1 = 0.0\n"
)
EDGE_ROUTER = "[router]\nlocal_max_complexity = 0.0\ncloud_min_complexity = 1.0\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, folder, name, toml):
        self.name = name
        self.http, self.grpc = free_port(), free_port()
        config = folder / f"{name}.toml"
        config.write_text(toml)
        env = dict(
            os.environ,
            TIERGATE__SERVER__HTTP_LISTEN=f'"127.0.0.1:{self.http}"',
            TIERGATE__SERVER__GRPC_LISTEN=f'"127.0.0.1:{self.grpc}"',
            RUST_LOG="warn",
        )
        self.log = open(folder / f"{name}.log", "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, limit=60.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"{self.name} was not ready within {limit} s")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=15)

    def ask(self, body):
        """One non-streamed chat completion: (seconds, completion tokens, tier)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/v1/chat/completions",
            data=body,
            headers={"content-type": "application/json"},
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        elapsed = time.perf_counter() - started
        return elapsed, answer["usage"]["completion_tokens"], answer["tiergate"]["tier"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=str(ROOT / "target/debug/tiergate"))
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="models/edge", help="the regional node's model folder")
    parser.add_argument("--variant", help="the regional node's graph (the engine's default if unset)")
    args = parser.parse_args()
    if "ORT_DYLIB_PATH" not in os.environ:
        sys.exit("set ORT_DYLIB_PATH (make sets it; see the Makefile)")

    folder = Path(tempfile.mkdtemp(prefix="bench-regional-hop-"))
    base = '[engine]\nmodel_dir = "models/edge"\n'
    regional_engine = f'[engine]\nmodel_dir = "{args.model}"\n'
    if args.variant:
        regional_engine += f'variant = "{args.variant}"\n'
    regional = Node(
        args.bin, folder, "regional",
        '[node]\nname = "regional-1"\ntier = "regional"\n' + regional_engine + REGIONAL_ROUTER,
    )
    regional.wait_ready()
    edges = {}
    for gathered in (True, False):
        name = "edge-streamed" if gathered else "edge-unary"
        edges[name] = Node(
            args.bin, folder, name,
            f'[node]\nname = "{name}"\ntier = "edge"\n' + base
            + f'[upstreams.regional]\nendpoints = ["http://127.0.0.1:{regional.grpc}"]\n'
            + f"stream_whole_answers = {'true' if gathered else 'false'}\n"
            + EDGE_ROUTER,
        )
    try:
        for edge in edges.values():
            edge.wait_ready()
        body = json.dumps({
            "model": "tiergate",
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about the sea and its tides."}],
        }).encode()
        targets = {"regional (direct)": regional, **edges}
        times = {name: [] for name in targets}
        tokens = {name: set() for name in targets}
        for node in targets.values():  # warm-up: connections, first runs
            for _ in range(5):
                node.ask(body)
        for _ in range(args.rounds):
            for name, node in targets.items():
                elapsed, count, tier = node.ask(body)
                if tier != "regional":
                    sys.exit(f"{name} answered from {tier}, not the regional tier")
                times[name].append(elapsed)
                tokens[name].add(count)
    finally:
        for node in [*edges.values(), regional]:
            node.stop()

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"rounds {args.rounds}, max_tokens {args.max_tokens}, binary {args.bin}, "
        f"regional model {args.model} {args.variant or ''}\n"
    )
    print("| asked | median ms | p90 ms | tokens | / unary edge | / regional direct |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in times.items():
        p90 = statistics.quantiles(t, n=10)[-1]
        print(
            f"| {name} | {median[name] * 1e3:.2f} | {p90 * 1e3:.2f} | "
            f"{','.join(map(str, sorted(tokens[name])))} | "
            f"{median[name] / median['edge-unary']:.3f} | "
            f"{median[name] / median['regional (direct)']:.3f} |"
        )


if __name__ == "__main__":
    main()
