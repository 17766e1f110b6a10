"""fp32 vs int8 on the simulated world: every method's audio-to-image mAP side by side.

Reads two ``songsight evaluate --out`` files of the same world, one run with ``--precision
fp32`` and one with ``--precision int8``, and prints one table: mAP (%) of each method with its
95% bootstrap interval, the int8 - fp32 difference in points and whether it is within the
issue's target (1 point). The commands that make the two files are in benchmarks/README.md.

    python benchmarks/int8_world.py FP32/results.json INT8/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGET_POINTS = 1.0


def table(fp32: dict, int8: dict) -> list[str]:
    a, b = fp32["retrieval"], int8["retrieval"]
    precisions = [r["provenance"]["audio_model"].get("precision") for r in (fp32, int8)]
    lines = [
        f"audio-to-image mAP (%), {precisions[0]} vs {precisions[1]} (95% bootstrap CI)",
        "| Method | fp32 mAP | int8 mAP | int8 - fp32 | within 1 point |",
        "|---|---:|---:|---:|:---:|",
    ]
    for method in a["methods"]:
        if method not in a["audio_to_image"] or method not in b["audio_to_image"]:
            lines.append(f"| {method} | n/a | n/a | | |")
            continue
        cells = []
        for r in (a, b):
            ci = r["audio_to_image_ci"][method]["map"]
            cells.append(
                f"{100 * ci['mean']:.1f} [{100 * ci['ci_low']:.1f}, {100 * ci['ci_high']:.1f}]"
            )
        delta = 100 * (b["audio_to_image"][method]["map"] - a["audio_to_image"][method]["map"])
        ok = "yes" if abs(delta) <= TARGET_POINTS else "NO"
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {delta:+.2f} | {ok} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", type=Path)
    p.add_argument("int8", type=Path)
    args = p.parse_args(argv)
    fp32, int8 = (json.loads(f.read_text()) for f in (args.fp32, args.int8))
    print("\n".join(table(fp32, int8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
