"""The method against the cascade on several seeds of the simulated world, from finished demos.

Reads each ``songsight demo --seed N --out DIR``'s ``results.json`` and checkpoint and prints
one Markdown table (a column per seed) of what issue 18 asks to check: every readout's mAP,
the paired difference with the cascade (95% bootstrap interval over the same queries), seen
and held-out species, zero-shot top-1, the soundscape class-wise mAP, where the raw embedding
lands, the untouched student's headroom, and the readout the checkpoint recorded with its rank
among the readouts on the test split. Every figure is read from the files, none typed.

    python benchmarks/seeds.py /work/demo-s0 /work/demo-s1 /work/demo-s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

READOUTS = ("distilled", "distilled_proto", "fused")


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def paired(d: dict | None) -> str:
    if not d:
        return "–"
    return f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def _interpolated(best: dict) -> str:
    """How far from the starting point to that step the kept weights are, when the run kept an
    interpolation of the two (`songsight.distill.interpolation`)."""
    a = best.get("interpolation")
    return "" if a is None else f" (x{a:g} of the way from step 0)"


def column(folder: Path) -> dict[str, str]:
    res = json.loads((folder / "results.json").read_text())
    meta = json.loads(
        (folder / "models" / "distilled" / "best" / "songsight_distilled.json").read_text()
    )
    last = folder / "models" / "distilled" / "last" / "songsight_distilled.json"
    steps_run = json.loads(last.read_text()).get("step") if last.is_file() else None
    ret, al = res["retrieval"], res.get("alignment", {})
    a2i, sub = ret["audio_to_image"], ret.get("audio_to_image_by_subset", {})
    vs, vs_sub = ret.get("audio_to_image_vs_cascade", {}), ret.get("audio_to_image_vs_cascade_by_subset", {})  # fmt: skip
    rec = ret.get("recorded_readout") or {}
    answered = rec.get("answers_as") or rec.get("method")
    ranked = sorted(READOUTS, key=lambda m: -a2i[m]["map"])
    best = ranked[0]
    seen_focal = al.get("focal_by_subset", {}).get("seen", {})
    probe = res.get("discriminability", {}).get("original", {}).get("probe_accuracy")
    init = meta["head"]["init"]
    land = (ret.get("distilled_landing") or {}).get("seen", {})
    row = {
        "cascade top-1": pct(a2i["cascade_top1"]["map"]),
        **{m: pct(a2i[m]["map"]) for m in READOUTS},
        "oracle": pct(a2i["oracle"]["map"]),
        **{f"{m} − cascade (paired)": paired(vs.get(m)) for m in READOUTS},
        "seen: cascade / distilled / distilled_proto / fused": " / ".join(
            pct(sub.get("seen", {}).get(m, {}).get("map")) for m in ("cascade_top1", *READOUTS)
        ),
        "seen: raw distilled − cascade (paired)": paired(vs_sub.get("seen", {}).get("distilled")),
        "held-out: cascade / fused": " / ".join(
            pct(sub.get("heldout", {}).get(m, {}).get("map")) for m in ("cascade_top1", "fused")
        ),
        "held-out: fused − cascade (paired)": paired(vs_sub.get("heldout", {}).get("fused")),
        "zero-shot top-1, seen: student / distilled": " / ".join(
            pct(seen_focal.get(m, {}).get("top1")) for m in ("original", "distilled")
        ),
        "student headroom: probe − zero-shot (seen)": pct(
            None
            if probe is None or "original" not in seen_focal
            else probe - seen_focal["original"]["top1"]
        ),  # fmt: skip
        "soundscape class-wise mAP: BioLingual / fused / distilled": " / ".join(
            pct(al.get("soundscape", {}).get(m, {}).get("map"))
            for m in ("original", "fused", "distilled")
        ),
        "soundscape: fused − BioLingual (paired over species)": paired(
            al.get("soundscape_vs_original", {}).get("fused")
        ),
        "raw embedding, seen: cos to its text / photo centroid": (
            f"{land['cos_text']:.2f} / {land.get('cos_photos', float('nan')):.2f}" if land else "–"
        ),
        "head start (validation)": (
            f"{init.get('start')} ({', '.join(f'{k} {v:.3f}' for k, v in (init.get('candidates') or {}).items())})"
            if isinstance(init, dict)
            else str(init)
        ),  # fmt: skip
        "readout recorded (validation)": (
            f"{rec.get('method')}"
            + (
                f" {rec.get('fusion_gate')} {rec.get('fusion_weight')}"
                if rec.get("method") == "fused"
                else ""
            )
        ),  # fmt: skip
        "recorded readout − best readout (test)": (
            f"{100 * (a2i[answered]['map'] - a2i[best]['map']):+.1f} (best: {best})"
            if answered in a2i
            else "–"
        ),
        "best step of steps run": f"{meta['best'].get('step')} of {steps_run}"
        + _interpolated(meta["best"]),
    }
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demos", nargs="+", type=Path, help="finished `songsight demo` folders")
    ap.add_argument("--names", nargs="*", help="column names (default: the folders' names)")
    args = ap.parse_args(argv)
    cols = [column(d) for d in args.demos]
    names = args.names or [d.name for d in args.demos]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in cols[0]:
        lines.append(f"| {key} | " + " | ".join(c.get(key, "–") for c in cols) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
