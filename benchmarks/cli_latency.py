"""How long the things a user waits on at the keyboard take: `songsight --help`, the simulated
world's cached stand-ins, a cached demo rerun. Each figure is printed beside the load average.

The tests check what keeps these short (no heavy import before parsing, a cached call that
does no work); this script says how short, on this machine, now. No thresholds: read the
figures with the load average beside them.

    python benchmarks/cli_latency.py                    # --help and the quick world's stand-ins, ~1 min
    python benchmarks/cli_latency.py --quick            # --help only
    python benchmarks/cli_latency.py --demo songsight-demo   # also a cached rerun of a finished quick demo
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.machine import load
from harness.report import work_folder, write_json
from harness.timing import slope_s


def songsight_cmd() -> list[str]:
    """The console script beside this interpreter, else ``python -m songsight.cli``."""
    script = Path(sys.executable).with_name("songsight")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "songsight.cli"]


def time_help(repeats: int) -> dict:
    """Wall seconds of ``songsight --help`` in a fresh process, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([*songsight_cmd(), "--help"], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"songsight --help failed:\n{proc.stderr[-2000:]}")
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}


def time_stand_ins(work: Path) -> dict:
    """The quick world's stand-ins: first call (unpacked from the shipped assets), then the
    cached call a demo rerun makes; and the cost of one rendered 10 s clip."""
    from songsight.sim.calls import render_call
    from songsight.sim.export import export_world
    from songsight.sim.pretrain import pretrain_stand_ins
    from songsight.sim.rng import item_rng
    from songsight.sim.world import WorldConfig, build_world

    world = build_world(WorldConfig.quick(seed=0))
    world_dir = work / "quick-world"
    if not (world_dir / "world.json").is_file():
        export_world(world, world_dir, workers=min(2, os.cpu_count() or 1))
    models = work / "models"
    t0 = time.perf_counter()
    first = pretrain_stand_ins(world_dir, models, seed=0, quick=True)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = pretrain_stand_ins(world_dir, models, seed=0, quick=True)
    cached_s = time.perf_counter() - t0

    def render(n: int) -> None:
        for i in range(n):
            render_call(world, i % world.config.n_species, item_rng(0, "cli_latency", i), 10.0)

    render(1)  # untimed: the world's noise bank is built on the first clip
    per_clip_s, fixed_s = slope_s(render, 2, 6, repeats=2)
    return {
        "first_s": first_s,
        "first_sources": first["sources"],
        "cached_s": cached_s,
        "cached_sources": cached["sources"],
        "render_clip_s": per_clip_s,
        "render_fixed_s": fixed_s,
    }


def time_demo_rerun(demo_dir: Path) -> dict:
    """A rerun of a finished ``songsight demo --quick`` in ``demo_dir``: every step cached."""
    from contextlib import redirect_stdout

    from songsight.sim.demo import run_demo

    if not (demo_dir / "results.json").is_file():
        raise SystemExit(f"{demo_dir} holds no finished demo: run `songsight demo --quick` first")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        run_demo(demo_dir, quick=True)
    return {"cached_rerun_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="--help runs (default 5)")
    p.add_argument("--quick", action="store_true", help="--help only, 3 runs")
    p.add_argument("--demo", default=None, help="a folder holding a finished quick demo")
    p.add_argument("--work-dir", help="keep the quick world and stand-ins here (reused)")
    p.add_argument("--out", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {}

    h = results["help"] = time_help(3 if args.quick else args.repeats)
    print(
        f"songsight --help: median {h['median_s']:.2f} s, min {h['min_s']:.2f} s over "
        f"{len(h['runs_s'])} runs ({' '.join(songsight_cmd())})  ({load()})",
        flush=True,
    )
    if not args.quick:
        with work_folder(args.work_dir, "songsight-cli-latency-") as work:
            s = results["stand_ins"] = time_stand_ins(work)
        print(
            f"quick world stand-ins: first call {s['first_s']:.1f} s ({s['first_sources']}), "
            f"cached call {s['cached_s']:.2f} s ({s['cached_sources']})  ({load()})\n"
            f"simulated 10 s clip: {s['render_clip_s']:.2f} s each "
            f"(slope between 2 and 6 clips; {s['render_fixed_s']:.2f} s fixed)  ({load()})",
            flush=True,
        )
    if args.demo:
        d = results["demo"] = time_demo_rerun(Path(args.demo))
        print(f"cached demo rerun: {d['cached_rerun_s']:.1f} s  ({load()})", flush=True)
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
