"""Writes models/<model>/reference.json: what Python onnxruntime computes on the fp32 graph for a fixed set of
prompts (in-domain and out-of-domain). The Rust engine's parity test compares against it."""
from __future__ import annotations

import sys

import onnxruntime as ort
from tokenizers import Tokenizer

from common import CONFIGS, ORT_VERSION, render_prompt, write_json
from runtime import MAX_NEW_TOKENS, generate, session

CASES = {
    "edge": ["turn on the kitchen lights", "what is 7 plus 5", "convert 3 kilometers to meters",
             "what day comes after friday", "hello", "what is tiergate",
             "write an essay about the causes of the first world war",
             "write a python function that reverses a linked list"],
    "regional": ["turn on the kitchen lights", "what is 45 plus 38", "which is bigger, 412 or 389",
                 "what is a router", "how do i reset the router", "what is tiergate",
                 "what is 6 times 7 plus 12",
                 "write an essay about the causes of the first world war",
                 "write a python function that reverses a linked list"],
}


def main(name: str) -> None:
    assert ort.__version__ == ORT_VERSION, f"reference needs onnxruntime {ORT_VERSION}, have {ort.__version__}"
    cfg = CONFIGS[name]
    tok = Tokenizer.from_file(str(cfg.out_dir / "tokenizer.json"))
    sess = session(cfg.out_dir / "model.onnx")
    cases = []
    for prompt in CASES[name]:
        gen = generate(sess, cfg, tok, prompt, MAX_NEW_TOKENS)
        cases.append({
            "prompt": prompt,
            "rendered": render_prompt(prompt),
            "input_ids": gen.prompt_ids,
            "first_step_logits": [float(x) for x in gen.first_step_logits],
            "greedy_tokens": gen.tokens,
            "greedy_text": gen.text,
        })
        print(f"  {prompt!r} -> {gen.text!r} (confidence {gen.confidence:.3f})")
    write_json(cfg.out_dir / "reference.json", {"onnxruntime_version": ort.__version__, "variant": "fp32",
                                                "cases": cases})


if __name__ == "__main__":
    main(sys.argv[1])
