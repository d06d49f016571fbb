#!/usr/bin/env python3
"""CPU time of one decode step of ONNX graphs alone (no engine), interleaved so that every graph sees the
same moment of a shared machine: 1 row, `--past` cached positions, median of 4 rounds of 10 steps.
CPU time (not wall time) because the 2-core machine is shared; with 1 intra-op thread it is the step's work.
Each graph gets its token as it takes it (decode_feeds.graph_decode_feeds): input_ids, or inputs_embeds (token 5's
row through the manifest beside the graph, a zero row for a graph no manifest lists).

    .venv/bench/bin/python scripts/bench-graph-step.py [--threads 1] [--past 60] GRAPH.onnx [GRAPH.onnx ...]
"""

import argparse
import statistics
import time


from decode_feeds import graph_decode_feeds
from ort_session import engine_session


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--past", type=int, default=60)
    args = parser.parse_args()
    sessions = {}
    for path in args.graphs:
        sessions[path] = engine_session(path, args.threads)
    # Per graph: a SmolLM2 graph takes inputs_embeds (token 5's row from its folder's manifest); older or toy graphs input_ids.
    feeds = {path: graph_decode_feeds(args.past, path, session) for path, session in sessions.items()}
    rounds = {path: [] for path in sessions}
    for _ in range(4):
        for path, session in sessions.items():
            session.run(["logits"], feeds[path])
            started = time.process_time()
            for _ in range(10):
                session.run(["logits"], feeds[path])
            rounds[path].append((time.process_time() - started) / 10 * 1e3)
    for path, times in rounds.items():
        print(f"{path}: {statistics.median(times):.1f} ms CPU per step (rounds {[round(t, 1) for t in times]})")


if __name__ == "__main__":
    main()
