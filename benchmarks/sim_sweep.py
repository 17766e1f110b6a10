"""How the methods' ranking moves with the simulated world's knobs (docs/simulation.md).

Runs the whole demo pipeline (world -> pretrained stand-ins -> distillation -> evaluation) once
per setting and prints one Markdown table: audio-to-image mAP per method, and the distilled
model's mAP on seen and held-out species. Knobs swept: the student's caption noise (share of
wrong-species captions in its pretraining set) and how many species distillation sees
(held-out fraction). Nothing is tuned to make a method win: the table is what comes out.

    python benchmarks/sim_sweep.py --quick --out /tmp/sweep      # 12-species worlds, a few minutes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = (
    "chance",
    "cascade_top1",
    "cascade_weighted",
    "map_ridge",
    "map_procrustes",
    "map_mlp",
    "distilled",
    "oracle",
)

SETTINGS = [
    ("default", {}),
    ("student captions 30% wrong", {"call_wrong_rate": 0.30}),
    ("student captions 60% generic", {"call_generic_rate": 0.60}),
    ("distil on 50% of species", {"held_out_fraction": 0.5}),
    ("noisier calls (SNR -10..10 dB)", {"snr_db_range": (-10.0, 10.0)}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="sim-sweep")
    ap.add_argument("--quick", action="store_true", help="12-species worlds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from songsight.sim.demo import run_demo

    rows = []
    for i, (name, overrides) in enumerate(SETTINGS):
        res = run_demo(
            Path(args.out) / f"s{i}", seed=args.seed, quick=args.quick, world_overrides=overrides
        )
        a2i = res["retrieval"]["audio_to_image"]
        sub = res["retrieval"].get("audio_to_image_by_subset", {})
        seen = sub.get("seen", {}).get("distilled", {}).get("map", float("nan"))
        held = sub.get("heldout", {}).get("distilled", {}).get("map", float("nan"))
        rows.append((name, [a2i.get(m, {}).get("map", float("nan")) for m in METHODS], seen, held))
    head = "| setting | " + " | ".join(METHODS) + " | distilled seen | distilled held-out |"
    lines = [head, "|" + "---|" * (len(METHODS) + 3)]
    for name, vals, seen, held in rows:
        cells = " | ".join(f"{100 * v:.1f}" for v in [*vals, seen, held])
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines)
    print(
        f"audio-to-image mAP (%), seed {args.seed}, {'quick' if args.quick else 'default'} worlds\n"
    )
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.md").write_text(table + "\n")
    (Path(args.out) / "sweep.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
