"""Prints the figures of models/*/eval.json and manifest.json as the markdown tables of docs/models.md."""
from __future__ import annotations

from common import CONFIGS, read_json


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    evals = {n: read_json(c.out_dir / "eval.json") for n, c in CONFIGS.items()}
    manifests = {n: read_json(c.out_dir / "manifest.json") for n, c in CONFIGS.items()}

    print("| | edge | regional |\n| --- | --- | --- |")
    rows = [
        ("graph", lambda n, c, m: f"{c.architecture}"),
        ("parameters", lambda n, c, m: f"{m['training']['parameters']:,}"),
        ("layers x d_model", lambda n, c, m: f"{c.num_layers} x {c.d_model}"),
        ("heads / kv heads x head_dim", lambda n, c, m: f"{c.num_heads} / {c.num_kv_heads} x {c.head_dim}"),
        ("MLP", lambda n, c, m: f"{'GELU' if c.architecture == 'gpt2' else 'SwiGLU'} {c.d_ff}"),
        ("vocab / context", lambda n, c, m: f"{c.vocab_size} / {c.context_length}"),
        ("training", lambda n, c, m: f"{c.steps} steps x {c.batch_size}, lr {c.learning_rate}, seed {c.seed}"),
        ("training time", lambda n, c, m: f"{m['training']['train_seconds']:.0f} s (jax {m['training']['jax_version']}, CPU)"),
        ("final training loss", lambda n, c, m: f"{m['training']['final_loss']}"),
    ]
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f(n, CONFIGS[n], manifests[n]) for n in CONFIGS) + " |")
    print()

    print("| model | variant | file | held-out accuracy | AUROC confidence | AUROC prompt NLL | "
          "decode tokens/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for n, e in evals.items():
        for v, r in e["variants"].items():
            s = r["separation"]
            print(f"| {n} | {v} | {r['bytes'] / 1e6:.2f} MB | {pct(r['heldout']['accuracy'])} "
                  f"({r['heldout']['count']}) | {s['auroc_confidence']:.3f} | {s['auroc_prompt_nll']:.4f} | "
                  f"{r['decode']['tokens_per_second']:.0f} |")
    print()

    cats = sorted({c for e in evals.values() for c in e["variants"]["fp32"]["heldout"]["by_category"]})
    print("| held-out category | edge fp32 | edge int8 | regional fp32 | regional int8 |\n| --- | --- | --- | --- | --- |")
    for cat in cats:
        cells = []
        for n in CONFIGS:
            for v in ("fp32", "int8"):
                b = evals[n]["variants"][v]["heldout"]["by_category"].get(cat)
                cells.append(f"{pct(b['accuracy'])} ({b['count']})" if b else "-")
        print(f"| {cat} | " + " | ".join(cells) + " |")
    print()

    print("| fp32 | mean confidence in / out | mean prompt NLL in / out | "
          "accepted at confidence >= 0.8 in / out | >= 0.9 in / out |\n| --- | --- | --- | --- | --- |")
    for n, e in evals.items():
        s = e["variants"]["fp32"]["separation"]
        t = {x["threshold"]: x for x in s["confidence_thresholds"]}
        print(f"| {n} | {s['in_domain_mean_confidence']:.3f} / {s['out_of_domain_mean_confidence']:.3f} | "
              f"{s['in_domain_mean_prompt_nll']:.2f} / {s['out_of_domain_mean_prompt_nll']:.2f} | "
              f"{pct(t[0.8]['in_domain_accepted'])} / {pct(t[0.8]['out_of_domain_accepted'])} | "
              f"{pct(t[0.9]['in_domain_accepted'])} / {pct(t[0.9]['out_of_domain_accepted'])} |")
    print()

    print("| out-of-domain source (fp32) | edge AUROC conf. | edge AUROC NLL | regional AUROC conf. | "
          "regional AUROC NLL |\n| --- | --- | --- | --- | --- |")
    for src in evals["edge"]["variants"]["fp32"]["separation"]["by_source"]:
        cells = []
        for n in CONFIGS:
            b = evals[n]["variants"]["fp32"]["separation"]["by_source"][src]
            cells += [f"{b['auroc_confidence']:.3f}", f"{b['auroc_prompt_nll']:.4f}"]
        print(f"| {src} ({b['count']}) | " + " | ".join(cells) + " |")
    print()

    esc = evals["regional"].get("escalation")
    if esc:
        print(f"Regional-only held-out prompts ({esc['count']}): edge accuracy {pct(esc['edge_accuracy'])} "
              f"(mean confidence {esc['edge_mean_confidence']:.3f}), regional accuracy "
              f"{pct(esc['regional_accuracy'])} (mean confidence {esc['regional_mean_confidence']:.3f}).\n")
        print("| prompt | edge answer (confidence) | regional answer (confidence) |\n| --- | --- | --- |")
        for p in esc["examples"]:
            print(f"| {p['prompt']} | {p['edge_output']} ({p['edge_confidence']:.2f}) | "
                  f"{p['regional_output']} ({p['regional_confidence']:.2f}) |")

    print()
    print("| parity (max abs logit difference) | edge | regional |\n| --- | --- | --- |")
    for key, label in [("max_abs_diff_jax_vs_onnxruntime", "jax forward vs onnxruntime"),
                       ("max_abs_diff_kv_cache_vs_full", "KV-cache steps vs full recompute"),
                       ("max_abs_diff_left_padded_vs_unpadded", "left-padded batch vs unpadded")]:
        print(f"| {label} | " + " | ".join(f"{evals[n].get('parity', {}).get(key, float('nan')):.1e}"
                                          for n in CONFIGS) + " |")


if __name__ == "__main__":
    main()
