#!/usr/bin/env python3
"""Does a node serve within a memory limit, and at what speed? RSS counts every resident page, the
clean file pages the kernel can drop and read back (library code run once at load, the weights file's
pages) as much as the anonymous memory it cannot; a memory cgroup's limit is what an edge device (or a
container) really imposes. This starts `tiergate serve` in a fresh memory cgroup per limit, the page cache
dropped first so that the cgroup is charged for every page the node touches, and runs scripts/node-rss.py's
workload: 40 sampled requests answered at the edge, then a ~1,200-token prompt. Limits are tried in turn,
alternated with an unlimited run in the same round, and each reports its decode rate against that run's.

    sudo python3 scripts/node-memory-limit.py --bin target/release/tiergate --config EDGE.toml \\
        --limits 0,179,160 [--rounds 2]          # MB; 0 = no limit

Linux, root (cgroup v1 `memory` or v2 with the memory controller); swap off, or a limit on it too.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error

HERE = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("node_rss", HERE / "node-rss.py")
node_rss = importlib.util.module_from_spec(spec)
spec.loader.exec_module(node_rss)

V1 = pathlib.Path("/sys/fs/cgroup/memory")
V2 = pathlib.Path("/sys/fs/cgroup")


class Cgroup:
    """A memory cgroup of this script's own, removed on close."""

    def __init__(self, name, limit_mb):
        self.v1 = V1.is_dir()
        self.path = (V1 if self.v1 else V2) / name
        self.path.mkdir()
        if limit_mb:
            limit = str(limit_mb * 1_000_000)
            if self.v1:
                (self.path / "memory.limit_in_bytes").write_text(limit)
            else:
                (self.path / "memory.max").write_text(limit)
                (self.path / "memory.swap.max").write_text("0")

    def read(self, v1_name, v2_name):
        return (self.path / (v1_name if self.v1 else v2_name)).read_text()

    def peak_mb(self):
        return int(self.read("memory.max_usage_in_bytes", "memory.peak")) / 1e6

    def _stat(self):
        return {k: int(v) for k, v in (line.split() for line in self.read("memory.stat", "memory.stat").splitlines())}

    def major_faults(self):
        return self._stat()["total_pgmajfault" if self.v1 else "pgmajfault"]

    def charged_mb(self):
        """(anonymous, page cache) MB charged to the group now."""
        stat = self._stat()
        anon, cache = ("total_rss", "total_cache") if self.v1 else ("anon", "file")
        return stat[anon] / 1e6, stat[cache] / 1e6

    def oom_kills(self):
        text = self.read("memory.oom_control", "memory.events")
        return int(dict(line.split() for line in text.splitlines()).get("oom_kill", 0))

    def close(self):
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_once(args, limit_mb, label):
    drop_page_cache()
    group = Cgroup(f"tiergate-limit-{os.getpid()}-{label}", limit_mb)
    env = dict(os.environ, TIERGATE__SERVER__HTTP_LISTEN='"127.0.0.1:0"',
               TIERGATE__SERVER__GRPC_LISTEN='"127.0.0.1:0"', TIERGATE_LOG="error")
    # The shell joins the cgroup first, so the node is charged from its first page on.
    node = subprocess.Popen(
        ["sh", "-c", f'echo $$ > "{group.path}/cgroup.procs" && exec "$0" serve -c "$1"', args.bin, args.config],
        stdout=subprocess.PIPE, env=env, text=True)
    result = {"limit": limit_mb, "served": 0, "tokens": 0}
    try:
        ready = None
        for line in node.stdout:
            if '"listening"' in line:
                ready = json.loads(line)
                break
        if ready is None:
            result["outcome"] = f"did not start (exit {node.wait()})"
            return result
        base = "http://" + ready["http"]
        started = time.monotonic()
        for i in range(40):
            answer = node_rss.ask(base, f"Write a few sentences about {node_rss.TOPICS[i % 8]}.", i, 96, 1.2)
            result["served"] += 1
            result["tokens"] += answer["usage"]["completion_tokens"]
            if time.monotonic() - started > args.patience:
                break  # thrashing: the rate so far says enough
        result["seconds"] = time.monotonic() - started
        result["charged_short"] = group.charged_mb()
        result["faults_short"] = group.major_faults()
        if result["served"] < 40 or not args.long_prompt:
            result["long"] = "not tried"
            result["peak"] = group.peak_mb()
            result["outcome"] = "too slow" if result["served"] < 40 else "alive"
            return result
        text = " ".join(f"Sentence {i} says that the number {i} follows {i - 1}." for i in range(1, 75))
        try:
            node_rss.ask(base, "Summarise this text: " + text, 99, 16, 0.0)
            result["long"] = "answered"
        except urllib.error.HTTPError as err:
            result["long"] = f"HTTP {err.code}: {err.read()[:160].decode(errors='replace')}"
        except Exception as err:  # the node was OOM-killed mid-answer
            result["long"] = f"failed ({type(err).__name__})"
        result["peak"] = group.peak_mb()
        result["outcome"] = "alive" if node.poll() is None else f"exited ({node.returncode})"
    except Exception as err:
        result["outcome"] = f"failed: {err}"
    finally:
        result["oom_kills"] = group.oom_kills()
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
        node.wait()
        group.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/release/tiergate")
    parser.add_argument("--config", required=True)
    parser.add_argument("--limits", default="0,179", help="MB, comma-separated; 0 = no limit")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--long-prompt", type=int, default=1, help="0: skip the long prompt")
    parser.add_argument("--patience", type=float, default=120.0,
                        help="seconds after which a run stops asking (a limit that thrashes)")
    args = parser.parse_args()
    limits = [int(x) for x in args.limits.split(",")]
    print(f"machine: {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    print("| round | limit MB | served | tok/s | vs unlimited | anon / cache MB after the requests | major faults | "
          "1,192-token prompt | peak MB | OOM kills |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        baseline = None
        for n, limit in enumerate(limits):
            r = run_once(args, limit, f"{round_}-{n}")
            rate = r["tokens"] / r["seconds"] if r.get("seconds") else 0.0
            if limit == 0 and baseline is None:
                baseline = rate
            ratio = f"{rate / baseline:.2f}x" if baseline and rate else "-"
            print(f"| {round_} | {limit or 'none'} | {r['served']}/40 | {rate:.1f} | {ratio} | "
                  f"{'%.1f / %.1f' % r['charged_short'] if 'charged_short' in r else '-'} | {r.get('faults_short', '-')} | {r.get('long', '-')} | "
                  f"{r.get('peak', 0):.1f} | {r['oom_kills']} ({r['outcome']}) |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
