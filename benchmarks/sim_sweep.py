"""How the methods' ranking moves with the simulated world's knobs (docs/simulation.md).

Runs the whole demo pipeline (world -> pretrained stand-ins -> distillation -> evaluation) once
per setting and prints one Markdown table: audio-to-image mAP per method, and the distilled
model's mAP on seen and held-out species. Knobs swept: the student's caption noise (share of
wrong-species captions in its pretraining set) and how many species distillation sees
(held-out fraction). Nothing is tuned to make a method win: the table is what comes out.

    python benchmarks/sim_sweep.py --quick --seeds 0 1 2 --out /tmp/sweep   # 12-species worlds, ~10 min

Each setting pretrains its own stand-ins (the shipped ones fit only seed 0's unmodified worlds),
so a default-world sweep costs ~15-25 min per setting and seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from songsight.eval.audio_to_image import RETRIEVAL_METHODS as METHODS

SETTINGS = [
    ("default", {}),
    ("student captions 30% wrong", {"call_wrong_rate": 0.30}),
    ("student captions 60% generic", {"call_generic_rate": 0.60}),
    ("distil on 50% of species", {"held_out_fraction": 0.5}),
    ("noisier calls (SNR -10..10 dB)", {"snr_db_range": (-10.0, 10.0)}),
]


SHORT = {
    "cascade_top1": "casc1",
    "cascade_weighted": "cascW",
    "map_ridge": "ridge",
    "map_procrustes": "procr",
    "map_mlp": "mlp",
    "distilled": "DIST",
}


def summarise(per_seed: list[dict]) -> tuple[list[str], str]:
    """Mean (and spread over seeds) of each column, and the learned methods ranked by mean mAP."""
    cols = [*METHODS, "distilled seen", "distilled held-out"]
    cells = []
    for col in cols:
        vals = np.array([r[col] for r in per_seed], float) * 100
        cell = f"{np.nanmean(vals):.1f}"
        if len(vals) > 1:
            cell += f" ± {np.nanstd(vals, ddof=1):.1f}"
        cells.append(cell)
    means = {m: np.nanmean([r[m] for r in per_seed]) for m in SHORT}
    ranking = " > ".join(SHORT[m] for m in sorted(means, key=means.get, reverse=True))
    return cells, ranking


def run_setting(out: Path, seed: int, quick: bool, overrides: dict) -> dict:
    from songsight.sim.demo import run_demo

    res = run_demo(out, seed=seed, quick=quick, world_overrides=overrides)
    a2i = res["retrieval"]["audio_to_image"]
    sub = res["retrieval"].get("audio_to_image_by_subset", {})
    row = {m: a2i.get(m, {}).get("map", float("nan")) for m in METHODS}
    row["distilled seen"] = sub.get("seen", {}).get("distilled", {}).get("map", float("nan"))
    row["distilled held-out"] = sub.get("heldout", {}).get("distilled", {}).get("map", float("nan"))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="sim-sweep")
    ap.add_argument("--quick", action="store_true", help="12-species worlds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one world per seed")
    ap.add_argument("--only", nargs="+", type=int, default=None, help="setting numbers to run")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    picked = args.only if args.only is not None else range(len(SETTINGS))
    for i in picked:
        name, overrides = SETTINGS[i]
        t0 = time.perf_counter()
        per_seed = [
            run_setting(out / f"s{i}-seed{seed}", seed, args.quick, overrides)
            for seed in args.seeds
        ]
        raw[name] = per_seed
        cells, ranking = summarise(per_seed)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {ranking} |")
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    head = (
        "| setting | " + " | ".join(METHODS) + " | distilled seen | distilled held-out | ranking |"
    )
    table = "\n".join([head, "|" + "---|" * (len(METHODS) + 4), *rows])
    seeds = ", ".join(map(str, args.seeds))
    caption = (
        f"Audio-to-image mAP (%), mean ± s.d. over seeds {seeds}, "
        f"{'quick (12-species)' if args.quick else 'default (60-species)'} worlds. Ranking: "
        + ", ".join(f"{v} = {k}" for k, v in SHORT.items())
    )
    print(f"{caption}\n\n{table}")
    (out / "sweep.md").write_text(f"{caption}\n\n{table}\n")
    (out / "sweep.json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
