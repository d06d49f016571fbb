"""Turns the SmolLM2-135M-Instruct GGUF into a tiergate model folder, without torch:
tokenizer.json, model.onnx (fp32), model.int4.onnx (the GGUF's Q4_1 blocks in MatMulNBits), manifest.json,
then runs verify.py's checks on it (import-report.json). Run by scripts/import-real-model.sh.

Usage: import_gguf.py --gguf FILE --wheel-sha256 HEX --out DIR [--reference models/smollm2/reference.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import onnx

import gguf_source
import graph
import manifest
import tokenizer
import verify

# MatMulNBits accuracy_level of the int4 graph: 0 keeps the activations in fp32 (the int4 graph then matches the
# fp32 one to ~1e-4 in the logits); 4 would quantize them to int8 per block of 32 (like llama.cpp's q8
# activations): faster, but prefill and cached decode then differ by up to ~3 in the logits (README.md).
ACCURACY_LEVEL = 0
# The opt-in "int4-fast" graph: int8 activations (accuracy_level 4, per block of 32 like llama.cpp's q8 activations)
# in every MatMulNBits, llama.cpp's own scheme and about its speed (docs/benchmarks.md). Its accuracy rests on the
# zero points graph.Int4Linear centres on each block's weights: with zero point 0 the same graph scored 294/320
# teacher-forced top-1 (llama.cpp 309/320), with them 309/320 (AVX2 CPU). verify.py checks it against a parity
# budget (FAST_BUDGET) on every import and leaves it out on a CPU where it misses.
FAST_ACCURACY = 4
# (variant, file, MatMulNBits accuracy levels); weights go to FILE.data beside the graph (external data):
# ONNX Runtime then reads them per tensor and frees what it prepacked, instead of keeping the whole parsed
# protobuf on the heap (int4 process RSS ~36 MB lower, measured with Python onnxruntime).
VARIANTS = (("int4", "model.int4.onnx", ACCURACY_LEVEL), ("fp32", "model.onnx", ACCURACY_LEVEL),
            ("int4-fast", "model.int4-fast.onnx", FAST_ACCURACY))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--wheel-sha256", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    model = gguf_source.load(args.gguf)
    verify.log(f"read {args.gguf.name}: {model.config}, tensor types {model.type_counts} ({time.time() - t0:.1f}s)")

    tokenizer.write(model.tokenizer, out / "tokenizer.json")
    for variant, file, accuracy in VARIANTS:
        t1 = time.time()
        m = graph.build(model, "fp32" if variant == "fp32" else "int4", accuracy)
        onnx.checker.check_model(m, full_check=True)
        onnx.save_model(m, str(out / file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=file + ".data", size_threshold=1024)
        os.chmod(out / (file + ".data"), 0o644)  # onnx creates it 0600; readable like the other files
        verify.log(f"wrote {file}: {(out / file).stat().st_size} bytes, {len(m.graph.node)} nodes "
                   f"({time.time() - t1:.1f}s)")
        del m

    int4_note = (f"the GGUF's own Q4_1 blocks, no re-quantization: com.microsoft.MatMulNBits bits=4 block_size=32 "
                 f"accuracy_level={ACCURACY_LEVEL}, scale=d, zero point round(-m/d) per block, plus the offsets left "
                 f"(m + zero point * d) as an fp32 MatMul of the input's 32-wide block sums; the Q8_0 tied embedding kept 8-bit as two exact 4-bit planes "
                 f"(MatMulNBits lm_head); the graph takes inputs_embeds, rows the engine reads from those planes "
                 f"(the model entry's `embedding`)")
    embedding_note = "q8"
    fast_note = ("int4 with int8 activations (MatMulNBits accuracy_level 4) in every product, like llama.cpp's q8 "
                 "activations; same weights as int4, the Q8_0 tied embedding as one 8-bit tensor (MatMulNBits bits=8 "
                 "lm_head; the graph takes inputs_embeds, rows the engine reads from that tensor, the model entry's "
                 "`embedding`); opt-in, checked against a parity budget")
    notes = {"int4": int4_note, "int4-fast": fast_note}
    manifest.write(out, model, args.wheel_sha256, [(v, f) for v, f, _ in VARIANTS], notes, embedding_note)
    verify.log(f"wrote manifest.json ({time.time() - t0:.1f}s so far)")
    code, left_out = verify.verify(out, model, ACCURACY_LEVEL, args.reference, args.threads,
                                   {v: f for v, f, _ in VARIANTS})
    if code == 0 and left_out:
        # An opt-in variant this CPU runs badly is not offered: its files go and the manifest no longer lists it,
        # so a node configured for it refuses to start with "variant not in manifest" instead of answering badly.
        kept = [(v, f) for v, f, _ in VARIANTS if v not in left_out]
        for v, f, _ in VARIANTS:
            if v in left_out:
                (out / f).unlink()
                (out / (f + ".data")).unlink()
        kept_notes = {v: n for v, n in notes.items() if v not in left_out}
        kept_notes["left_out"] = "; ".join(r for reasons in left_out.values() for r in reasons)
        manifest.write(out, model, args.wheel_sha256, kept, kept_notes, embedding_note)
        verify.log(f"rewrote manifest.json without {sorted(left_out)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
