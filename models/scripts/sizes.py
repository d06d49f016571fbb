"""Prints the committed artifact sizes and fails if they exceed the 40 MB budget."""
from __future__ import annotations

import sys

from common import CONFIGS, read_json

BUDGET_BYTES = 40_000_000


def main() -> None:
    total = 0
    for name, cfg in CONFIGS.items():
        manifest = read_json(cfg.out_dir / "manifest.json")
        for f in manifest["files"]:
            total += f["bytes"]
            print(f"  {name}/{f['path']}: {f['bytes'] / 1e6:.2f} MB")
        for extra in ("manifest.json", "reference.json", "eval.json"):
            p = cfg.out_dir / extra
            if p.exists():
                total += p.stat().st_size
    print(f"total committed model artifacts: {total / 1e6:.2f} MB (budget {BUDGET_BYTES / 1e6:.1f} MB)")
    if total > BUDGET_BYTES:
        sys.exit("model artifacts exceed the size budget")


if __name__ == "__main__":
    main()
