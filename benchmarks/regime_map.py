"""The regime map: where distillation overtakes the zero-shot cascade, and where it does not.

Two axes, in generated worlds (docs/simulation.md), every point the whole demo pipeline with
`songsight distill`'s defaults and `songsight evaluate`:

- how good the student's own zero-shot is: the number of pretraining calls per species its
  stand-in learns from (the world's ``pretrain_calls``; fewer calls, a weaker BioLingual);
- how many labelled clips per species distillation gets (a subsample of the world's training
  clips; with fewer than 3 per species no validation split can be carved and the run says so).

Prints one Markdown table (audio-to-image mAP, mean ± s.d. over seeds, and which songsight
method beats the cascade) and writes a figure (mAP against clips per species, one panel per
student level). Nothing is tuned per point; the world generator is the demo's.

    python benchmarks/regime_map.py --seeds 0 1 2 --out /tmp/regime --figure docs/regime_map.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from harness.machine import load_average

METHODS = ("cascade_top1", "distilled", "distilled_proto", "fused", "oracle")
SONGSIGHT = ("distilled", "distilled_proto", "fused")


def run_point(out: Path, seed: int, pretrain_calls: int, clips: int, species: int) -> dict:
    from songsight.sim.demo import run_demo

    res = run_demo(
        out,
        seed=seed,
        quick=True,
        species=species,
        world_overrides={"pretrain_calls": pretrain_calls, "ssw_clips_train": 16},
        clips_per_species=clips,
    )
    a2i = res["retrieval"]["audio_to_image"]
    sub = res["retrieval"].get("audio_to_image_by_subset", {})
    pre = json.loads((out / "models" / "student" / "pretrain.json").read_text())
    row = {m: a2i.get(m, {}).get("map", float("nan")) for m in METHODS}
    for m in ("cascade_top1", "fused"):
        row[f"{m} held-out"] = sub.get("heldout", {}).get(m, {}).get("map", float("nan"))
    row["student zero-shot"] = (pre.get("ssw_test") or {}).get("zero_shot_acc", float("nan"))
    row["readout"] = json.loads(
        (out / "models" / "distilled" / "best" / "songsight_distilled.json").read_text()
    )["readout"]["method"]
    return row


def cell(vals) -> str:
    vals = np.asarray(vals, float) * 100
    return f"{np.nanmean(vals):.1f}" + (
        f" ± {np.nanstd(vals, ddof=1):.1f}" if len(vals) > 1 else ""
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="regime-map")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pretrain-calls", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--clips", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--species", type=int, default=12)
    ap.add_argument("--figure", default=None, help="write the figure here (PNG)")
    ap.add_argument("--table-only", action="store_true", help="reuse OUT/regime.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw: dict = {}
    if args.table_only:  # redraw the table and figure from a finished run
        raw = json.loads((out / "regime.json").read_text())
    for calls in [] if args.table_only else args.pretrain_calls:
        for clips in args.clips:
            t0 = time.perf_counter()
            raw[f"{calls}/{clips}"] = [
                run_point(out / f"calls{calls}-seed{seed}", seed, calls, clips, args.species)
                for seed in args.seeds
            ]
            print(
                f"# {calls} pretraining calls, {clips} clips/species: "
                f"{time.perf_counter() - t0:.0f} s, load {load_average():.1f}",
                file=sys.stderr,
                flush=True,
            )
            (out / "regime.json").write_text(json.dumps(raw, indent=1))
    cols = ["student zero-shot", *METHODS, "cascade_top1 held-out", "fused held-out"]
    lines = [
        "| pretraining calls / species | distillation clips / species | "
        + " | ".join(cols)
        + " | readout chosen on validation | chosen − cascade |",
        "|" + "---|" * (len(cols) + 4),
    ]
    for key, rows in raw.items():
        calls, clips = key.split("/")
        # What a user gets: the readout the run's own validation chose, against the cascade.
        gain = [r[r["readout"]] - r["cascade_top1"] for r in rows]
        chosen = ", ".join(sorted({r["readout"] for r in rows}))
        lines.append(
            f"| {calls} | {clips} | "
            + " | ".join(cell([r[c] for r in rows]) for c in cols)
            + f" | {chosen} | {cell(gain)} |"
        )
    seeds = ", ".join(map(str, args.seeds))
    caption = (
        f"Audio-to-image mAP (%), mean ± s.d. over seeds {seeds}, {args.species}-species worlds "
        "(quick recipe, 16 training clips per species of which distillation takes the first n)."
    )
    table = "\n".join(lines)
    print(f"{caption}\n\n{table}")
    (out / "regime.md").write_text(f"{caption}\n\n{table}\n")
    if args.figure:
        plot(raw, args, Path(args.figure))
    return 0


def plot(raw: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(args.pretrain_calls), 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(args.pretrain_calls), sharey=True, squeeze=False)[0]
    for ax, calls in zip(axes, args.pretrain_calls, strict=True):
        for m in ("cascade_top1", "distilled", "distilled_proto", "fused"):
            means = [np.mean([r[m] for r in raw[f"{calls}/{c}"]]) * 100 for c in args.clips]
            sds = [np.std([r[m] for r in raw[f"{calls}/{c}"]]) * 100 for c in args.clips]
            ax.errorbar(args.clips, means, yerr=sds, marker="o", capsize=3, label=m)
        zs = np.mean([r["student zero-shot"] for r in raw[f"{calls}/{args.clips[0]}"]]) * 100
        ax.set_title(f"{calls} pretraining calls/species (student zero-shot {zs:.0f}%)", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.clips, [str(c) for c in args.clips])
        ax.set_xlabel("labelled clips per species for distillation")
    axes[0].set_ylabel("audio-to-image mAP (%)")
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
