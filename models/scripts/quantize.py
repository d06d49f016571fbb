"""Makes the int8 variant of a model with onnxruntime's dynamic quantization (weights of MatMul nodes to int8,
activations quantized per call)."""
from __future__ import annotations

import sys

from onnxruntime.quantization import QuantType, quantize_dynamic

from common import CONFIGS


def main(name: str) -> None:
    cfg = CONFIGS[name]
    src, dst = cfg.out_dir / "model.onnx", cfg.out_dir / "model.int8.onnx"
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                     per_channel=False)
    print(f"{name}: wrote {dst} ({dst.stat().st_size} bytes, fp32 {src.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
