"""Evaluates one model with Python onnxruntime and writes models/<model>/eval.json:
- held-out in-domain accuracy (exact match of the greedy answer), overall and per category, fp32 and int8;
- AUROC of in-domain (held-out) vs out-of-domain prompts for two signals: confidence (mean top-1 probability of the
  first 8 generated tokens, higher = in-domain) and prompt NLL (mean, lower = in-domain);
- file size and single-thread decode speed, fp32 vs int8;
- for regional: the prompts of the regional-only categories, and how edge and regional handle them.
Per-prompt details go to models/.work/<model>/eval_details.jsonl."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from tokenizers import Tokenizer

from common import CONFIGS, WORK_DIR, ModelConfig, read_json, write_json
from runtime import CONFIDENCE_WINDOW, generate, session

MAX_NEW_EVAL = 48  # long enough for every answer in the corpus
EDGE_CATEGORIES = {"device", "units", "arithmetic", "time", "greeting", "faq"}
SPEED_PROMPTS = 16


def load_jsonl(path):
    return [json.loads(line) for line in path.open()]


def auroc(positive: list[float], negative: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def threshold_table(in_scores, out_scores, thresholds):
    return [{"threshold": t, "in_domain_accepted": round(float(np.mean(np.asarray(in_scores) >= t)), 3),
             "out_of_domain_accepted": round(float(np.mean(np.asarray(out_scores) >= t)), 3)} for t in thresholds]


def run_set(sess, cfg, tok, rows, max_new):
    out = []
    for r in rows:
        g = generate(sess, cfg, tok, r["prompt"], max_new)
        rec = {**r, "output": g.text.strip(), "confidence": round(g.confidence, 4),
               "min_confidence": round(g.min_confidence, 4),
               "prompt_nll": round(g.prompt_nll, 4), "new_tokens": len(g.tokens)}
        if "answer" in r:
            rec["correct"] = rec["output"] == r["answer"]
        out.append(rec)
    return out


def accuracy(recs) -> dict:
    by_cat: dict[str, list[bool]] = {}
    for r in recs:
        by_cat.setdefault(r["category"], []).append(r["correct"])
    right, wrong = [r for r in recs if r["correct"]], [r for r in recs if not r["correct"]]
    # does the confidence tell a right in-domain answer from a wrong one?
    calibration = {f"auroc_{key}_correct_vs_wrong": round(auroc([r[key] for r in right], [r[key] for r in wrong]), 4)
                   for key in ("confidence", "min_confidence")} if right and wrong else {}
    return {"count": len(recs), "accuracy": round(float(np.mean([r["correct"] for r in recs])), 4), **calibration,
            "by_category": {c: {"count": len(v), "accuracy": round(float(np.mean(v)), 4)}
                            for c, v in sorted(by_cat.items())}}


def decode_speeds(cfg, tok, files: dict[str, str], prompts) -> dict[str, dict]:
    """Single-thread greedy decode with KV cache: new tokens per second (prefill included), best of 5 rounds.
    The variants alternate within each round, so load from other jobs on the machine hits both alike."""
    sessions = {v: session(cfg.out_dir / f) for v, f in files.items()}
    best: dict[str, float] = {}
    for _ in range(5):
        for v, sess in sessions.items():
            n, start = 0, time.perf_counter()
            for p in prompts:
                n += len(generate(sess, cfg, tok, p, 24).tokens)
            best[v] = max(best.get(v, 0.0), n / (time.perf_counter() - start))
    return {v: {"tokens_per_second": round(r, 1), "prompts": len(prompts), "threads": 1} for v, r in best.items()}


def separation(in_recs, ood_recs) -> dict:
    conf_in, conf_out = [r["confidence"] for r in in_recs], [r["confidence"] for r in ood_recs]
    nll_in, nll_out = [r["prompt_nll"] for r in in_recs], [r["prompt_nll"] for r in ood_recs]
    by_source = {}
    for src in sorted({r["source"] for r in ood_recs}):
        sub = [r for r in ood_recs if r["source"] == src]
        by_source[src] = {"count": len(sub),
                          "auroc_confidence": round(auroc(conf_in, [r["confidence"] for r in sub]), 4),
                          "auroc_prompt_nll": round(auroc([-x for x in nll_in], [-r["prompt_nll"] for r in sub]), 4),
                          "mean_confidence": round(float(np.mean([r["confidence"] for r in sub])), 4),
                          "mean_prompt_nll": round(float(np.mean([r["prompt_nll"] for r in sub])), 4)}
    return {
        "in_domain_count": len(in_recs), "out_of_domain_count": len(ood_recs),
        "auroc_confidence": round(auroc(conf_in, conf_out), 4),
        "auroc_prompt_nll": round(auroc([-x for x in nll_in], [-x for x in nll_out]), 4),
        "auroc_min_confidence": round(auroc([r["min_confidence"] for r in in_recs],
                                            [r["min_confidence"] for r in ood_recs]), 4),
        "in_domain_mean_confidence": round(float(np.mean(conf_in)), 4),
        "out_of_domain_mean_confidence": round(float(np.mean(conf_out)), 4),
        "in_domain_mean_prompt_nll": round(float(np.mean(nll_in)), 4),
        "out_of_domain_mean_prompt_nll": round(float(np.mean(nll_out)), 4),
        "confidence_thresholds": threshold_table(conf_in, conf_out, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]),
        "by_source": by_source,
    }


def evaluate_variant(cfg: ModelConfig, tok, file: str, heldout, ood) -> tuple[dict, list, list]:
    sess = session(cfg.out_dir / file)
    held = run_set(sess, cfg, tok, heldout, MAX_NEW_EVAL)
    probes = run_set(sess, cfg, tok, ood, CONFIDENCE_WINDOW)
    result = {"file": file, "bytes": (cfg.out_dir / file).stat().st_size, "heldout": accuracy(held),
              "separation": separation(held, probes)}
    return result, held, probes


def escalation_examples(regional_held, edge_cfg) -> dict:
    """Regional-only held-out prompts: how the edge and the regional model answer them."""
    rows = [r for r in regional_held if r["category"] not in EDGE_CATEGORIES]
    edge_tok = Tokenizer.from_file(str(edge_cfg.out_dir / "tokenizer.json"))
    edge_recs = run_set(session(edge_cfg.out_dir / "model.onnx"), edge_cfg, edge_tok, rows, MAX_NEW_EVAL)
    by_prompt = {r["prompt"]: r for r in regional_held}
    pairs = [{"prompt": e["prompt"], "category": e["category"], "expected": e["answer"],
              "edge_output": e["output"], "edge_confidence": e["confidence"], "edge_correct": e["correct"],
              "regional_output": by_prompt[e["prompt"]]["output"],
              "regional_confidence": by_prompt[e["prompt"]]["confidence"],
              "regional_correct": by_prompt[e["prompt"]]["correct"]} for e in edge_recs]
    return {
        "count": len(pairs),
        "edge_accuracy": round(float(np.mean([p["edge_correct"] for p in pairs])), 4),
        "regional_accuracy": round(float(np.mean([p["regional_correct"] for p in pairs])), 4),
        "edge_mean_confidence": round(float(np.mean([p["edge_confidence"] for p in pairs])), 4),
        "regional_mean_confidence": round(float(np.mean([p["regional_confidence"] for p in pairs])), 4),
        # up to 3 per category, the ones the edge is least sure about first (what the router escalates)
        "examples": [p for c in sorted({p["category"] for p in pairs})
                     for p in sorted((p for p in pairs if p["category"] == c and p["regional_correct"]
                                      and not p["edge_correct"]), key=lambda p: p["edge_confidence"])[:3]],
    }


def main(name: str) -> None:
    cfg = CONFIGS[name]
    tok = Tokenizer.from_file(str(cfg.out_dir / "tokenizer.json"))
    heldout = load_jsonl(cfg.work_dir / "heldout.jsonl")
    ood = load_jsonl(WORK_DIR / "ood.jsonl")
    report = {"model": cfg.manifest_name, "variants": {}}
    details = []
    files = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    speeds = decode_speeds(cfg, tok, files, [r["prompt"] for r in heldout[:SPEED_PROMPTS]])
    for variant, file in files.items():
        result, held, probes = evaluate_variant(cfg, tok, file, heldout, ood)
        result["decode"] = speeds[variant]
        report["variants"][variant] = result
        details += [{"variant": variant, "set": "heldout", **r} for r in held]
        details += [{"variant": variant, "set": "ood", **r} for r in probes]
        print(f"{name} {variant}: held-out accuracy {result['heldout']['accuracy']:.3f}, "
              f"AUROC confidence {result['separation']['auroc_confidence']:.3f}, "
              f"AUROC prompt NLL {result['separation']['auroc_prompt_nll']:.3f}, "
              f"{result['decode']['tokens_per_second']} tok/s, {result['bytes']} bytes", flush=True)
        if variant == "fp32":
            fp32_held = held
    regional_held = CONFIGS["regional"].work_dir / "heldout.jsonl"
    if name == "edge" and regional_held.exists():
        rows = [r for r in load_jsonl(regional_held) if r["category"] not in EDGE_CATEGORIES]
        recs = run_set(session(cfg.out_dir / "model.onnx"), cfg, tok, rows, MAX_NEW_EVAL)
        sep = separation(fp32_held, [{**r, "source": r["category"]} for r in recs])
        report["escalation_set"] = {
            "about": "fp32; in-domain held-out vs the regional model's own categories (long arithmetic, "
                     "comparisons, definitions, how-to), which the edge should escalate",
            "edge_accuracy": round(float(np.mean([r["correct"] for r in recs])), 4),
            **{k: v for k, v in sep.items() if k != "confidence_thresholds"}}
        print(f"edge on regional-only prompts: accuracy {report['escalation_set']['edge_accuracy']:.3f}, AUROC "
              f"confidence {sep['auroc_confidence']:.3f}, min confidence {sep['auroc_min_confidence']:.3f}, "
              f"prompt NLL {sep['auroc_prompt_nll']:.3f}")
    if name == "regional" and (CONFIGS["edge"].out_dir / "model.onnx").exists():
        report["escalation"] = escalation_examples(fp32_held, CONFIGS["edge"])
        e = report["escalation"]
        print(f"regional-only prompts: edge accuracy {e['edge_accuracy']:.3f} (confidence "
              f"{e['edge_mean_confidence']:.3f}), regional accuracy {e['regional_accuracy']:.3f}")
    verify = cfg.work_dir / "verify.json"
    if verify.exists():
        report["parity"] = read_json(verify)
    report["definitions"] = {
        "accuracy": "exact match of the greedy answer (up to 48 new tokens, without special tokens) on held-out "
                    "in-domain prompts whose value combinations (and for half of them the template) never occur "
                    "in training",
        "confidence": f"mean top-1 probability of the first {CONFIDENCE_WINDOW} generated tokens (greedy, EOS included)",
        "min_confidence": "lowest top-1 probability over the whole greedy answer",
        "prompt_nll": "mean negative log-likelihood of the rendered prompt tokens 1..n-1",
        "auroc": "probability that an in-domain held-out prompt scores as more in-domain than an out-of-domain probe",
        "decode": "Python onnxruntime 1.31.1, CPUExecutionProvider, 1 intra-op thread, greedy with KV cache, "
                  "prefill included, best of 5 rounds with the variants alternating",
    }
    write_json(cfg.out_dir / "eval.json", report)
    with (cfg.work_dir / "eval_details.jsonl").open("w") as f:
        for d in details:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
