#!/usr/bin/env python3
"""A running node's resident memory through a workload, as docs/benchmarks.md "Memory (RSS)" measures it:
40 sampled requests answered at the edge (temperature 1.2, a seed each, up to 96 tokens), then one prompt of
~1,200 tokens, each stage followed by half a second at rest (the worker trims its heap after 100 ms idle).

    target/release/tiergate serve -c EDGE.toml &      # deploy/edge.toml with model_dir set
    python3 scripts/node-rss.py $! http://127.0.0.1:8080

Prints RSS, its anonymous and file parts and the peak (VmHWM) from /proc/PID/status, in decimal MB as
crates/tiergate-engine/examples/memory.rs does.
"""

import json
import sys
import time
import urllib.request

TOPICS = ["the sea", "a mountain", "bread", "the moon", "a bicycle", "rain", "a library", "coffee"]


def status(pid):
    fields = {line.split(":")[0]: line.split(":")[1].strip() for line in open(f"/proc/{pid}/status")}
    mb = lambda key: int(fields[key].split()[0]) * 1024 / 1e6  # the kernel's kB are KiB
    return (f"RSS {mb('VmRSS'):6.1f} MB (anonymous {mb('RssAnon'):6.1f}, file {mb('RssFile'):5.1f}), "
            f"peak {mb('VmHWM'):6.1f}")


def ask(base, prompt, seed, max_tokens, temperature):
    body = json.dumps({"model": "tiergate", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": temperature, "seed": seed}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", body, {
        "content-type": "application/json", "x-tiergate-tier-constraint": "edge_only"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def main():
    pid, base = int(sys.argv[1]), sys.argv[2].rstrip("/")
    print(f"{'ready':<34}{status(pid)}")
    for i in range(40):
        ask(base, f"Write a few sentences about {TOPICS[i % len(TOPICS)]}.", i, 96, 1.2)
    print(f"{'after 40 sampled requests':<34}{status(pid)}")
    time.sleep(0.5)
    print(f"{'  at rest (0.5 s)':<34}{status(pid)}")
    text = " ".join(f"Sentence {i} says that the number {i} follows {i - 1}." for i in range(1, 75))
    answer = ask(base, "Summarise this text: " + text, 99, 16, 0.0)
    print(f"{'after a ' + str(answer['usage']['prompt_tokens']) + '-token prompt':<34}{status(pid)}")
    time.sleep(0.5)
    print(f"{'  at rest (0.5 s)':<34}{status(pid)}")


if __name__ == "__main__":
    main()
