#!/usr/bin/env python3
"""Decode steps/s of ONNX graphs under ONNX Runtime's intra-op spin settings, on a quiet box and beside
busy processes, interleaved so that every setting sees the same moments; plus the CPU each setting burns
while the node is idle between requests.

    .venv/bench/bin/python scripts/bench-spinning.py [--busy 0,1,2] [--spin-us 20,50] GRAPH.onnx [...]

Settings: 1 intra-op thread; 2 threads with spinning off; on with ONNX Runtime's own spin (2^20 polls);
on with `session.intra_op.spin_duration_us` = each of --spin-us. A busy process is a Python loop that
counts its iterations, so the table also shows how much work the settings leave to the rest of the box
(relative to 2 threads without spinning).
"""

import argparse
import multiprocessing
import statistics
import time


from decode_feeds import graph_decode_feeds
from ort_session import engine_session

PAST = 60
ROUND_SECONDS = 1.5


def settings(spin_durations):
    """Name -> (intra-op threads, session config entries)."""
    out = {
        "1 thread": (1, {}),
        "2, spin off": (2, {"session.intra_op.allow_spinning": "0"}),
        "2, spin (ORT's own)": (2, {"session.intra_op.allow_spinning": "1"}),
    }
    for us in spin_durations:
        out[f"2, spin {us} us"] = (2, {"session.intra_op.allow_spinning": "1",
                                       "session.intra_op.spin_duration_us": str(us)})
    return out


def open_session(path, threads, entries):
    return engine_session(path, threads, entries)


def busy_loop(counter, stop):
    while not stop.value:
        n = 0
        for _ in range(10000):
            n += 1
        with counter.get_lock():
            counter.value += 1


def steps_per_second(sessions, feeds, busy, rounds):
    counter, stop = multiprocessing.Value("q", 0), multiprocessing.Value("b", 0)
    workers = [multiprocessing.Process(target=busy_loop, args=(counter, stop)) for _ in range(busy)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    steps = {name: [] for name in sessions}
    others = {name: [] for name in sessions}
    try:
        for _ in range(rounds):
            for name, session in sessions.items():
                session.run(["logits"], feeds)
                count_before, started, n = counter.value, time.perf_counter(), 0
                while time.perf_counter() - started < ROUND_SECONDS:
                    session.run(["logits"], feeds)
                    n += 1
                elapsed = time.perf_counter() - started
                steps[name].append(n / elapsed)
                others[name].append((counter.value - count_before) / elapsed)
    finally:
        stop.value = 1
        for worker in workers:
            worker.join()
    return ({name: statistics.median(v) for name, v in steps.items()},
            {name: statistics.median(v) for name, v in others.items()})


def idle_cpu_ms(session, feeds):
    """Process CPU time per (one step + 200 ms idle), minus the step's own: what spinning burns idle."""
    for _ in range(3):
        session.run(["logits"], feeds)
    total = during = 0.0
    for _ in range(10):
        before = time.process_time()
        session.run(["logits"], feeds)
        after_run = time.process_time()
        time.sleep(0.2)
        total += time.process_time() - before
        during += after_run - before
    return (total - during) / 10 * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+")
    parser.add_argument("--busy", default="0,1,2", help="busy processes beside the decode, per table")
    parser.add_argument("--spin-us", default="20,50", help="bounded spin lengths to compare")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    chosen = settings([int(us) for us in args.spin_us.split(",") if us])
    for path in args.graphs:
        sessions = {name: open_session(path, threads, entries) for name, (threads, entries) in chosen.items()}
        feeds = graph_decode_feeds(PAST, path, next(iter(sessions.values())))
        idle = {name: idle_cpu_ms(session, feeds) for name, session in sessions.items()}
        print(f"\n{path}: decode steps/s, median of {args.rounds} interleaved rounds of {ROUND_SECONDS} s "
              f"({PAST} cached positions); idle = CPU ms burnt in the 200 ms after a step")
        results = {busy: steps_per_second(sessions, feeds, busy, args.rounds)
                   for busy in (int(b) for b in args.busy.split(","))}
        header = f"{'setting':<22}{'idle ms':>8}"
        for busy in results:
            header += f"{f'{busy} busy: steps/s':>20}{'others':>8}"
        print(header)
        for name in sessions:
            line = f"{name:<22}{idle[name]:>8.1f}"
            for steps, others in results.values():
                reference = others["2, spin off"]
                share = f"{others[name] / reference:.2f}x" if reference else "-"
                line += f"{steps[name]:>20.1f}{share:>8}"
            print(line)


if __name__ == "__main__":
    main()
