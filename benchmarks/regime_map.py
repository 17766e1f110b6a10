"""The regime map: where distillation overtakes the zero-shot cascade, and where it does not.

Two axes, in generated worlds (docs/simulation.md), every point the whole demo pipeline with
`songsight distill`'s defaults and `songsight evaluate`:

- how good the student's own zero-shot is: the number of pretraining calls per species its
  stand-in learns from (the world's ``pretrain_calls``; fewer calls, a weaker BioLingual);
- how many labelled clips per species distillation gets (a subsample of the world's training
  clips; with fewer than 3 per species no validation split can be carved and the run says so).

Prints one Markdown table (audio-to-image mAP, mean ± s.d. over seeds, the readout each run
answers with and its paired difference with the cascade) and writes a figure (mAP against
clips per species, one panel per student level, and the answered readout's gain over the
cascade against the untouched student's headroom: its linear probe's accuracy minus its own
zero-shot top-1 on the distilled species). Nothing is tuned per point; the world generator is
the demo's.

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
    recorded = res["retrieval"].get("recorded_readout") or {}
    row["readout"] = recorded.get("answers_as") or recorded.get("method") or "fused"
    row["readout chosen"] = not str(recorded.get("chosen_on") or "").startswith("nothing")
    # What a user gets: the readout the run answers with, against the cascade, query by query.
    versus = res["retrieval"].get("audio_to_image_vs_cascade", {}).get(row["readout"], {})
    row["gain"] = versus.get("diff", 0.0)
    row["gain_ci"] = [versus.get("ci_low", 0.0), versus.get("ci_high", 0.0)]
    probe = res.get("discriminability", {}).get("original", {}).get("probe_accuracy")
    zero = res.get("alignment", {}).get("focal_by_subset", {}).get("seen", {}).get("original", {})
    row["headroom"] = (
        (probe - zero["top1"]) if probe is not None and "top1" in zero else float("nan")
    )
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
        + " | student headroom | readout answered with | answered − cascade |",
        "|" + "---|" * (len(cols) + 5),
    ]
    for key, rows in raw.items():
        calls, clips = key.split("/")
        gain = [r["gain"] for r in rows]
        chosen = ", ".join(
            sorted({f"{r['readout']}{'' if r['readout chosen'] else ' (default)'}" for r in rows})
        )
        lines.append(
            f"| {calls} | {clips} | "
            + " | ".join(cell([r[c] for r in rows]) for c in cols)
            + f" | {cell([r['headroom'] for r in rows])} | {chosen} | {cell(gain)} |"
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

    n = len(args.pretrain_calls)
    fig = Figure(figsize=(4.2 * (n + 1), 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    for ax, calls in zip(axes[:n], args.pretrain_calls, strict=True):
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
    ax = axes[n]  # the answered readout's gain against the student's headroom, every run
    for calls, marker in zip(args.pretrain_calls, "os^v", strict=False):
        for c in args.clips:
            rows = raw[f"{calls}/{c}"]
            ax.scatter([r["headroom"] * 100 for r in rows], [r["gain"] * 100 for r in rows],
                       marker=marker, s=12 + 6 * c, alpha=0.7,
                       label=f"{calls} calls" if c == args.clips[-1] else None)  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("student headroom: linear probe − zero-shot, distilled species (points)")
    ax.set_ylabel("answered readout − cascade (mAP points)")
    ax.set_title("marker size: clips per species", fontsize=9)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
