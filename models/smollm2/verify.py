"""Checks an imported model folder with Python onnxruntime (the runtime version the Rust engine loads):

(a) int4 exactness: every Q4_1 weight as the int4 graph holds it (MatMulNBits blob / scales / zero points +
    block offsets), dequantized in numpy exactly as the kernel reads it, against gguf's reference
    dequantizer; the same for the 8-bit embedding; plus ONNX Runtime itself fed the identity matrix through
    the same int4 subgraphs (its output is the effective weight matrix); and every embedding row of each
    variant (fp32's float32 table, the quantized variants' Q8_0 tables) as embedding_rows.py reads it at the
    manifest's `embedding` offsets;
(b) greedy decoding with the KV cache of chat prompts (template rendered like transformers does) with both
    variants;
(c) int4 vs fp32 logits over the prompt positions (max abs diff, top-1 agreement);
(d) KV-cache decoding vs full recomputation, and a left-padded batch vs single sequences;
(e) with models/smollm2/reference.json (transformers, float32, same GGUF): chat renders and ids, greedy
    generations, first-step top-20 logits, prompt NLLs;
(f) the opt-in int4-fast graph (int8 activations) against its parity budget (FAST_BUDGET);
plus the tokenizer (round trips; the reference's tokenizations) and decode speed.
Every graph is fed as the engine feeds it: every graph takes inputs_embeds, the rows of its manifest
`embedding` entry (embedding_rows.token_feeds), so the checks exercise that entry as written.
Exits non-zero when (a) or the coherence check (the France answer names Paris) fails for int4 or fp32. The opt-in
int4-fast graph's quality depends on the CPU's int8 kernels: when it misses its own coherence check (CLEAR_CHECK) or
(f), it is reported as left out (`left_out` in import-report.json) and the importer drops it from the folder instead
of failing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

import graph
from embedding_rows import embedding_entry, embedding_rows, model_entry, token_feeds
from gguf_source import F32, Q4_1, GGUFModel

PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy."]
PARIS_PROMPT = 0
# The approximate variants' coherence check. Not the France prompt: its first step is a near-tie in the exact model
# (top-2 logit gap 0.08, "The" over "L"), which int8 activations may break either way, and llama.cpp on the same GGUF
# breaks it too ("L'Étoile, la Marseillaise, ..."). This one's first step is clear (gap ~2.5).
CLEAR_CHECK = ("What is the capital of Japan?", "tokyo")
GREEDY_TOKENS = 32
SPEED_TOKENS = 64
TOKENIZER_SAMPLES = [
    "<|im_start|>user\nhi<|im_end|>\n",
    "12345",
    "naïve café 日本語 🤖",
    "   leading spaces",
    "line one\nline two\n\n\nend",
    "Hello, world! It's 2024-05-17; x=3.14e-2.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "\ttabs\tand  double  spaces ",
]
EXACT_TOL = 1e-6
# int4-fast parity budget, decoding with the KV cache teacher-forced along the reference's (transformers float32)
# greedy tokens, 5 prompts x 64 steps: the top-1 token must equal the reference's at every step where the
# reference is clear (top-2 gap >= clear_gap), and overall on at least top1_min of the steps. llama.cpp on the
# same GGUF, measured the same way: 310 / 320 = 0.969 overall, 245 / 245 clear (docs/benchmarks.md).
FAST_BUDGET = {"clear_gap": 0.5, "top1_min": 0.96}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- runtime
class Runner:
    """One variant's graph of the model folder `out`, fed through its manifest entry (token_feeds)."""

    def __init__(self, out: Path, manifest: dict, variant: str, threads: int = 2, file: str | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        path = out / (file or model_entry(manifest, variant)["path"])
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        self.out, self.manifest, self.variant = out, manifest, variant
        self.layers, self.kv_heads, self.head_dim = manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"]

    def empty_past(self, batch: int = 1) -> dict:
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(self.layers) for k in ("key", "value")}

    def run(self, ids, mask, positions, past, keep: int = 0):
        """keep: logits_to_keep (0: every position's logits)."""
        feeds = {**token_feeds(self.out, self.manifest, self.variant, ids, keep),
                 "attention_mask": np.asarray(mask, np.int64), "position_ids": np.asarray(positions, np.int64), **past}
        outs = dict(zip(self.names, self.sess.run(self.names, feeds)))
        present = {f"past_key_values.{i}.{k}": outs[f"present.{i}.{k}"]
                   for i in range(self.layers) for k in ("key", "value")}
        return outs["logits"], present

    def full(self, ids: list[int]) -> np.ndarray:
        """Logits [s, vocab] of one sequence, no cache."""
        a = np.array([ids])
        return self.run(a, np.ones_like(a), np.arange(len(ids))[None], self.empty_past())[0][0]

    def greedy(self, ids: list[int], n: int, eos: int | None):
        """Greedy decoding with the KV cache: (new tokens, prefill logits [s, vocab], per-step logits, seconds of
        the decode steps)."""
        a = np.array([ids])
        logits, past = self.run(a, np.ones_like(a), np.arange(len(ids))[None], self.empty_past())
        prefill = logits[0]
        step = prefill[-1]
        tokens, steps = [], []
        total = len(ids)
        t0 = time.perf_counter()
        for _ in range(n):
            nxt = int(np.argmax(step))
            tokens.append(nxt)
            steps.append(step)
            if nxt == eos or len(tokens) == n:
                break
            total += 1
            logits, past = self.run([[nxt]], np.ones((1, total)), [[total - 1]], past)
            step = logits[0, -1]
        return tokens, prefill, steps, time.perf_counter() - t0


def render_chat(template: str, messages: list[dict]) -> str:
    """The GGUF's Jinja chat template rendered as transformers' apply_chat_template does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- checks
def check_dequant(model: GGUFModel, accuracy_level: int) -> dict:
    worst, n = 0.0, 0
    for name, t in model.tensors.items():
        if t.qtype != Q4_1:
            continue
        diff = float(np.abs(graph.Int4Linear([t]).dequantize_as_ort() - model.dequantized(name)).max())
        worst, n = max(worst, diff), n + 1
    planes = graph.Q8Planes(model.tensors["token_embd.weight"])
    emb_diff = float(np.abs(planes.dequantize_as_ort() - model.dequantized("token_embd.weight")).max())
    table = graph.Q8Table(model.tensors["token_embd.weight"])  # the int4-fast graph's 8-bit form of the same table
    emb_diff = max(emb_diff, float(np.abs(table.dequantize_as_ort() - model.dequantized("token_embd.weight")).max()))
    norms = sum(1 for t in model.tensors.values() if t.qtype == F32)

    # ONNX Runtime itself, through the same int4 subgraph the model uses (fused q/k/v of the first and last
    # layers, and ffn_down, K = 1536).
    probes = {}
    last = model.config.num_layers - 1
    for label, names in {
        "blk.0.qkv": [f"blk.0.attn_{x}.weight" for x in "qkv"],
        f"blk.{last}.qkv": [f"blk.{last}.attn_{x}.weight" for x in "qkv"],
        f"blk.{last}.ffn_down": [f"blk.{last}.ffn_down.weight"],
    }.items():
        lin = graph.Int4Linear([model.tensors[x] for x in names])
        sess = ort.InferenceSession(graph.linear_probe(lin, accuracy_level).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, {"A": np.eye(lin.k, dtype=np.float32)[None]})[0][0].T  # [N, K]
        ref = np.concatenate([model.dequantized(x) for x in names])
        probes[label] = float(np.abs(got - ref).max())
    return {"q4_1_tensors": n, "q4_1_max_abs_diff": worst, "q8_0_embedding_max_abs_diff": emb_diff,
            "f32_norms_copied": norms, "ort_identity_probe_max_abs_diff": probes}


def check_embedding_rows(out: Path, manifest: dict, model: GGUFModel, chunk: int = 8192) -> dict:
    """Every row of each variant's embedding table, read at the manifest's offsets (embedding_rows), against gguf's
    dequantized token_embd: variant -> max abs diff (0.0 when the entry and the file are right)."""
    want = model.dequantized("token_embd.weight")
    out_diffs = {}
    for f in manifest["files"]:
        if f["kind"] != "model" or embedding_entry(manifest, f["variant"]) is None:
            continue
        worst = 0.0
        for start in range(0, want.shape[0], chunk):
            ids = np.arange(start, min(start + chunk, want.shape[0]))
            worst = max(worst, float(np.abs(embedding_rows(out, manifest, f["variant"], ids) - want[ids]).max()))
        out_diffs[f["variant"]] = worst
    return out_diffs


def check_tokenizer(tok: Tokenizer, reference: Path | None) -> dict:
    out = {"samples": [], "round_trip_ok": True}
    for s in TOKENIZER_SAMPLES:
        ids = tok.encode(s, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        out["samples"].append({"text": s, "ids": ids})
        if back != s:
            out["round_trip_ok"] = False
            log(f"tokenizer round trip differs: {s!r} -> {back!r}")
    if reference and reference.exists():
        ref = json.loads(reference.read_text(encoding="utf-8"))
        entries = ref.get("tokenizer", []) if isinstance(ref, dict) else []
        if isinstance(entries, dict):
            entries = entries.get("cases", entries.get("samples", []))
        compared, mismatches = 0, []
        for e in entries:
            text = e.get("text", e.get("input"))
            want = e.get("ids", e.get("input_ids"))
            if text is None or want is None:
                continue
            got = tok.encode(text, add_special_tokens=False).ids
            compared += 1
            if got != list(want):
                mismatches.append({"text": text, "want": list(want), "got": got})
        out["reference"] = {"path": str(reference), "compared": compared, "mismatches": mismatches}
    return out


def first_diff_summary(a: np.ndarray, b: np.ndarray) -> dict:
    """int4 vs fp32 logits [positions, vocab]."""
    d = a - b
    centered = d - d.mean(-1, keepdims=True)
    return {"positions": int(a.shape[0]), "max_abs_diff": float(np.abs(d).max()),
            "max_abs_diff_last_position": float(np.abs(d[-1]).max()),
            "max_abs_diff_mean_removed": float(np.abs(centered).max()),
            "top1_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1)))}


def check_cache_and_batch(r: Runner, prompts: list[list[int]], generated: list[int], steps: list[np.ndarray]) -> dict:
    # (d1) cached decode vs one full pass over prompt + generated tokens
    seq = prompts[0] + generated
    full = r.full(seq)[len(prompts[0]) - 1: len(seq) - 1]
    cached = np.stack(steps[: full.shape[0]])
    kv = {"steps": int(cached.shape[0]), "max_abs_diff": float(np.abs(full - cached).max()),
          "top1_agreement": float(np.mean(full.argmax(-1) == cached.argmax(-1)))}
    # (d2) as the engine batches: each prompt prefilled alone, the caches left-padded to one length, then two
    # decode steps of all rows together, vs each sequence alone. (A left-padded multi-row prefill is not part of
    # the contract: GroupQueryAttention takes a prompt's rotary positions from its first position_id.)
    pasts, nxt = [], []
    for p in prompts:
        logits, past = r.run(np.array([p]), np.ones((1, len(p)), np.int64), np.arange(len(p))[None], r.empty_past())
        pasts.append(past)
        nxt.append(int(logits[0, -1].argmax()))
    width = max(len(p) for p in prompts)
    past = {k: np.concatenate([np.pad(pp[k], ((0, 0), (0, 0), (width - len(p), 0), (0, 0)))
                               for pp, p in zip(pasts, prompts)]) for k in pasts[0]}
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], np.int64)
    pos = np.array([[len(p)] for p in prompts], np.int64)
    batched = []
    for _ in range(2):
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], 1)
        logits, past = r.run(np.array(nxt)[:, None], mask, pos, past)
        batched.append(logits[:, -1])
        nxt = [int(t) for t in logits[:, -1].argmax(-1)]
        pos = pos + 1
    diffs = []
    for i, p in enumerate(prompts):
        first, second = int(np.argmax(r.full(p)[-1])), int(batched[0][i].argmax())
        alone = r.full(p + [first, second])
        diffs.append(float(np.abs(alone[len(p)] - batched[0][i]).max()))
        diffs.append(float(np.abs(alone[len(p) + 1] - batched[1][i]).max()))
    # (d3) logits_to_keep = 1, as the engine prefills a prompt it does not score: one row, the last of every
    # position's (up to the lm_head kernel's one-row summation order)
    a = np.array([prompts[0]])
    kept = r.run(a, np.ones_like(a), np.arange(a.shape[1])[None], r.empty_past(), keep=1)[0]
    every = r.full(prompts[0])
    keep = {"shape": list(kept.shape), "max_abs_diff": float(np.abs(kept[0, -1] - every[-1]).max()),
            "same_top1": bool(kept[0, -1].argmax() == every[-1].argmax())}
    return {"kv_cache_vs_full": kv, "left_padded_batch_vs_single_max_abs_diff": max(diffs), "logits_to_keep_1": keep}


def check_reference(ref: dict, template: str, tok: Tokenizer, runners: dict, eos: int) -> tuple[dict, list[str]]:
    """Against transformers' float32 run of the same GGUF (models/smollm2/reference.json): chat renders and
    their ids, greedy generations with the KV cache (tokens; first-step top-20 logits), prompt NLLs."""
    out, failures = {}, []
    renders = ref.get("chat_renders", [])
    bad = []
    for c in renders:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(template).render(messages=c["messages"],
                                                add_generation_prompt=c["add_generation_prompt"])
        if text != c["text"] or tok.encode(text, add_special_tokens=False).ids != c["ids"]:
            bad.append(c["text"])
    out["chat_renders"] = {"compared": len(renders), "mismatches": bad}
    if bad:
        failures.append(f"chat template render / ids differ from transformers on {len(bad)} cases")
    for v, r in runners.items():
        cases = []
        for case in ref.get("greedy", []):
            ids = case["prompt_ids"]
            tokens, prefill, _, _ = r.greedy(ids, case["n_tokens"], eos)
            want = case["tokens"]
            same = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), min(len(tokens), len(want)))
            top = np.array([t[1] for t in case["first_step_top"]], np.float32)
            mine = prefill[-1][[t[0] for t in case["first_step_top"]]]
            gap = case["step_top2_gap"][same] if same < len(case["step_top2_gap"]) else None
            cases.append({"prompt": case["messages"][-1]["content"], "tokens": len(want), "identical": tokens == want,
                          "matching_prefix": same, "reference_top2_gap_at_divergence": gap,
                          "first_step_top20_max_abs_diff": float(np.abs(mine - top).max())})
        nll = []
        for case in ref.get("prompt_nll", {}).get("cases", []):
            ids = case["prompt_ids"]
            logits = r.full(ids).astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            mean = float(-np.mean([logp[i - 1, ids[i]] for i in range(1, len(ids))]))
            nll.append(abs(mean - case["mean_nll"]))
        out[v] = {"greedy": cases, "prompt_nll_max_abs_diff": max(nll) if nll else None}
    return out, failures


def teacher_forced(r: Runner, ids: list[int], tokens: list[int]) -> np.ndarray:
    """Last-position logits [len(tokens), vocab]: the prompt's, then one cached decode step per given token."""
    a = np.array([ids])
    logits, past = r.run(a, np.ones_like(a), np.arange(len(ids))[None], r.empty_past())
    rows, total = [logits[0, -1]], len(ids)
    for t in tokens[:-1]:
        total += 1
        logits, past = r.run([[t]], np.ones((1, total)), [[total - 1]], past)
        rows.append(logits[0, -1])
    return np.array(rows)


def check_fast_budget(ref: dict, r: Runner) -> tuple[dict, list[str]]:
    """(f) FAST_BUDGET against the reference's greedy runs."""
    agree = clear_agree = clear_n = steps = 0
    for case in ref.get("greedy", []):
        want = np.array(case["tokens"])
        top = teacher_forced(r, case["prompt_ids"], case["tokens"]).argmax(-1)
        clear = np.array(case["step_top2_gap"][: len(want)]) >= FAST_BUDGET["clear_gap"]
        agree += int((top == want).sum())
        clear_agree += int((top == want)[clear].sum())
        clear_n += int(clear.sum())
        steps += len(want)
    out = {"budget": FAST_BUDGET, "steps": steps, "top1_agree": agree, "clear_steps": clear_n,
           "clear_agree": clear_agree}
    failures = []
    if steps == 0:
        failures.append("int4-fast: no reference runs to check the parity budget against")
    elif clear_agree < clear_n or agree < FAST_BUDGET["top1_min"] * steps:
        failures.append(f"int4-fast outside its parity budget: top-1 {agree}/{steps}, clear {clear_agree}/{clear_n}")
    return out, failures


def speed(r: Runner, ids: list[int], n: int) -> float:
    """Decode tokens/s: n greedy steps with the KV cache after the prompt (EOS ignored)."""
    a = np.array([ids])
    logits, past = r.run(a, np.ones_like(a), np.arange(len(ids))[None], r.empty_past())
    total = len(ids)
    t0 = time.perf_counter()
    for _ in range(n):
        total += 1
        logits, past = r.run([[int(np.argmax(logits[0, -1]))]], np.ones((1, total)), [[total - 1]], past)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--accuracy-level", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import gguf_source
    model = gguf_source.load(args.gguf)
    return verify(args.model_dir, model, args.accuracy_level, args.reference, args.threads)[0]


def verify(out: Path, model: GGUFModel, accuracy_level: int, reference: Path | None, threads: int = 2,
           files: dict[str, str] | None = None) -> tuple[int, dict[str, list[str]]]:
    """files: variant -> graph file (default: the importer's three). Returns the exit code and, per approximate
    variant that failed its own checks, the reasons to leave it out."""
    files = files or {"int4": "model.int4.onnx", "fp32": "model.onnx", "int4-fast": "model.int4-fast.onnx"}
    report: dict = {}
    failures: list[str] = []
    left_out: dict[str, list[str]] = {}  # approximate variant -> why it is not fit on this CPU

    t0 = time.time()
    report["dequant"] = dq = check_dequant(model, accuracy_level)
    log(f"(a) dequant: {dq['q4_1_tensors']} Q4_1 tensors max abs diff {dq['q4_1_max_abs_diff']:.3g}, "
        f"Q8_0 embedding {dq['q8_0_embedding_max_abs_diff']:.3g}, ORT identity probes "
        f"{dq['ort_identity_probe_max_abs_diff']} ({time.time() - t0:.1f}s)")
    worst = max(dq["q4_1_max_abs_diff"], dq["q8_0_embedding_max_abs_diff"],
                *dq["ort_identity_probe_max_abs_diff"].values())
    if not worst <= EXACT_TOL:
        failures.append(f"dequant max abs diff {worst} > {EXACT_TOL}")

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    t0 = time.time()
    report["embedding_rows_max_abs_diff"] = er = check_embedding_rows(out, manifest, model)
    log(f"(a) embedding rows at the manifest's offsets vs gguf's token_embd: {er} ({time.time() - t0:.1f}s)")
    if not er or not max(er.values()) <= EXACT_TOL:
        failures.append(f"embedding rows at the manifest's offsets differ from the GGUF's: {er}")

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    report["tokenizer"] = tk = check_tokenizer(tok, reference)
    if not tk["round_trip_ok"]:
        failures.append("tokenizer round trip")
    if "reference" in tk:
        ref = tk["reference"]
        log(f"tokenizer vs {ref['path']}: {ref['compared']} compared, {len(ref['mismatches'])} mismatches")
        if ref["mismatches"]:
            failures.append(f"tokenizer differs from reference on {len(ref['mismatches'])} strings")

    eos = model.tokenizer.eos_id
    prompts = [tok.encode(render_chat(model.chat_template, [{"role": "user", "content": p}]),
                          add_special_tokens=False).ids for p in PROMPTS]
    runners = {v: Runner(out, manifest, v, threads, files[v])
               for v in ("fp32", "int4")}  # the exact variants: every check below
    fast = {v: Runner(out, manifest, v, threads, f)
            for v, f in files.items() if v not in runners}  # approximate: CLEAR_CHECK, (f), speed
    report["greedy"], prefill, steps, gens = {}, {}, {}, {}
    for v, r in {**runners, **fast}.items():
        report["greedy"][v] = []
        for i, (p, ids) in enumerate(zip(PROMPTS, prompts)):
            tokens, pre, st, _ = r.greedy(ids, GREEDY_TOKENS, eos)
            text = tok.decode(tokens, skip_special_tokens=True)
            report["greedy"][v].append({"prompt": p, "text": text, "tokens": tokens})
            prefill[(v, i)], steps[(v, i)], gens[(v, i)] = pre, st, tokens
            log(f"(b) {v} greedy: {p!r} -> {text!r}")
        if v not in fast and "paris" not in report["greedy"][v][PARIS_PROMPT]["text"].lower():
            failures.append(f"{v}: the France answer does not mention Paris")
    clear_ids = tok.encode(render_chat(model.chat_template, [{"role": "user", "content": CLEAR_CHECK[0]}]),
                           add_special_tokens=False).ids
    for v, r in fast.items():
        text = tok.decode(r.greedy(clear_ids, GREEDY_TOKENS, eos)[0], skip_special_tokens=True)
        report["greedy"][v].append({"prompt": CLEAR_CHECK[0], "text": text})
        log(f"(b) {v} greedy: {CLEAR_CHECK[0]!r} -> {text!r}")
        if CLEAR_CHECK[1] not in text.lower():
            left_out.setdefault(v, []).append(f"{v}: the answer to {CLEAR_CHECK[0]!r} does not mention "
                                              f"{CLEAR_CHECK[1].title()}")

    pre_fp32 = np.concatenate([prefill[("fp32", i)] for i in range(len(PROMPTS))])
    pre_int4 = np.concatenate([prefill[("int4", i)] for i in range(len(PROMPTS))])
    report["int4_vs_fp32"] = c = first_diff_summary(pre_int4, pre_fp32)
    log(f"(c) int4 vs fp32 logits over {c['positions']} prompt positions: max abs diff {c['max_abs_diff']:.4g} "
        f"(last position {c['max_abs_diff_last_position']:.4g}, with the mean shift removed "
        f"{c['max_abs_diff_mean_removed']:.4g}), top-1 agreement {c['top1_agreement']:.4f}")

    report["cache"] = {}
    for v, r in runners.items():
        report["cache"][v] = d = check_cache_and_batch(r, prompts, gens[(v, 0)], steps[(v, 0)])
        log(f"(d) {v}: KV cache vs full recompute over {d['kv_cache_vs_full']['steps']} steps: max abs diff "
            f"{d['kv_cache_vs_full']['max_abs_diff']:.3g}, top-1 agreement {d['kv_cache_vs_full']['top1_agreement']}; "
            f"left-padded batch vs single: max abs diff {d['left_padded_batch_vs_single_max_abs_diff']:.3g}; "
            f"logits_to_keep 1: {d['logits_to_keep_1']}")
        kept = d["logits_to_keep_1"]
        if kept["shape"] != [1, 1, manifest["vocab_size"]] or not kept["same_top1"] or not kept["max_abs_diff"] <= 1e-3:
            failures.append(f"{v}: logits_to_keep 1 does not give the last position's logits alone: {kept}")

    if reference and reference.exists():
        ref = json.loads(reference.read_text(encoding="utf-8"))
        report["vs_transformers"], fails = check_reference(ref, model.chat_template, tok, runners, eos)
        failures += fails
        vt = report["vs_transformers"]
        log(f"(e) vs transformers ({reference.name}): chat renders {vt['chat_renders']['compared']} compared, "
            f"{len(vt['chat_renders']['mismatches'])} differ")
        for v in runners:
            for c in vt[v]["greedy"]:
                log(f"(e) {v} greedy {c['prompt'][:40]!r}: {'identical' if c['identical'] else 'differs'} "
                    f"({c['matching_prefix']}/{c['tokens']} tokens match; reference top-2 gap there "
                    f"{c['reference_top2_gap_at_divergence']}), first-step top-20 logits max abs diff "
                    f"{c['first_step_top20_max_abs_diff']:.3g}")
            log(f"(e) {v} prompt NLL max abs diff {vt[v]['prompt_nll_max_abs_diff']:.3g}")

    if reference and reference.exists() and "int4-fast" in fast:
        report["int4_fast_budget"], fails = check_fast_budget(json.loads(reference.read_text(encoding="utf-8")),
                                                              fast["int4-fast"])
        if fails:
            left_out.setdefault("int4-fast", []).extend(fails)
        fb = report["int4_fast_budget"]
        log(f"(f) int4-fast teacher-forced top-1: {fb['top1_agree']}/{fb['steps']} (budget >= "
            f"{FAST_BUDGET['top1_min']}), clear steps {fb['clear_agree']}/{fb['clear_steps']} (budget all)")

    report["speed_tokens_per_s"] = {}
    for v, r in {**runners, **fast}.items():
        report["speed_tokens_per_s"][v] = tps = speed(r, prompts[PARIS_PROMPT], SPEED_TOKENS)
        log(f"speed {v}: {tps:.1f} tokens/s ({SPEED_TOKENS} tokens, {threads} threads, one run)")

    report["failures"] = failures
    report["left_out"] = left_out
    (out / "import-report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    for v, reasons in left_out.items():
        log(f"LEFT OUT (opt-in {v} is not fit on this CPU): {'; '.join(reasons)}")
    for f in failures:
        log(f"FAILED: {f}")
    return (1 if failures else 0), left_out


if __name__ == "__main__":
    sys.exit(main())
