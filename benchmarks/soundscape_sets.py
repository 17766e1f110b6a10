"""The soundscape comparison on a second set of soundscapes from the same world: how far does a
4-soundscape test set decide "fused against BioLingual"?

Issue 18 asks the product's readout (`fused`) to reach BioLingual's class-wise mAP on the demo
world's soundscapes; `songsight demo` scores 4 of them (60 s each), and `songsight evaluate`
now gives the paired interval over species beside the figures (`soundscape_vs_original`). This
script renders ``--n`` more soundscapes for each demo folder from the world's own generator,
unchanged (`songsight.sim.calls.render_soundscape`), on a random stream of their own
(``--stream``), so they are neither the test soundscapes nor used for any choice; scores them
with the demo's models (`songsight evaluate --tasks alignment`, its defaults), and prints beside
each other, per seed, BioLingual's, fused's and the distilled encoder's class-wise mAP and fused
minus BioLingual with its paired interval, on the demo's test soundscapes and on the new set.

    python benchmarks/soundscape_sets.py DEMO_0 DEMO_1 DEMO_2 --n 8
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from harness.machine import load

METHODS = ("original", "fused", "distilled")


def render_set(demo: Path, n: int, stream: str) -> Path:
    """``n`` soundscapes of ``demo``'s world on ``stream``, and their manifest, in
    ``demo/<stream>/``; returns the manifest (paths relative to it, as the world's own)."""
    from songsight.sim.calls import render_soundscape
    from songsight.sim.export import write_wav
    from songsight.sim.rng import item_rng
    from songsight.sim.world import load_world

    world = load_world(demo / "world" / "world.json")
    cfg, folder = world.config, demo / stream
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        audio, events = render_soundscape(world, item_rng(cfg.seed, stream, i), cfg.soundscape_s)
        write_wav(folder / f"soundscape_{i:03d}.wav", audio, cfg.sample_rate_hz)
        rows += [
            {
                "path": f"soundscape_{i:03d}.wav",
                "start_s": f"{a:.3f}",
                "end_s": f"{b:.3f}",
                "label": lab,
            }  # fmt: skip
            for a, b, lab in events
        ]
    manifest = folder / "soundscapes.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "start_s", "end_s", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def summary(alignment: dict) -> str:
    scores, versus = alignment.get("soundscape", {}), alignment.get("soundscape_vs_original", {})
    maps = " / ".join(f"{100 * scores[m]['map']:.1f}" if m in scores else "–" for m in METHODS)
    d = versus.get("fused")
    vs = f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] over {d['n']} species" if d else "–"  # fmt: skip
    windows = scores.get("original", {}).get("n_windows")
    return f"BioLingual / fused / distilled {maps}; fused − BioLingual {vs}; {windows} windows"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demos", nargs="+", type=Path, help="folders written by songsight demo")
    p.add_argument("--n", type=int, default=8, help="soundscapes to render per world")
    p.add_argument("--stream", default="soundscapes_extra", help="their random stream's name")
    args = p.parse_args(argv)

    from songsight.eval.tasks import run_evaluation

    for demo in args.demos:
        test = json.loads((demo / "results.json").read_text())
        manifest = render_set(demo, args.n, args.stream)
        models = demo / "models"
        res = run_evaluation(
            demo / "world", manifest.with_name("results.json"), audio_model=str(models / "student"),
            image_model=str(models / "teacher"), distilled=str(models / "distilled" / "best"),
            soundscapes=str(manifest), tasks=["alignment"], device="cpu",
            seed=json.loads((demo / "world" / "world.json").read_text())["config"]["seed"],
        )  # fmt: skip
        print(f"{demo}  ({load()})")
        print(f"  the demo's test soundscapes:  {summary(test.get('alignment', {}))}")
        print(f"  {args.n} more, stream {args.stream!r}: {summary(res.get('alignment', {}))}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
